//! Logging to stderr (journald reads it under systemd): human text, with
//! colours only when stderr is a terminal (never ANSI escapes in the
//! journal), or one flat JSON object per line with `CONVEYOR_LOG_FORMAT=json`
//! for log shippers. `CONVEYOR_LOG` is the filter (`info`, `conveyor=debug`).
//!
//! A JSON line carries `timestamp`, `level`, `message`, the event's fields
//! and the fields of every span it happened in, all at the top level: so
//! each line of a job has the job's `id`, `queue` and `attempt` even when a
//! handler logs inside a span of its own.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::Config;

/// Whether [`init`] chose JSON, for [`effective_config`].
static JSON: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber. `default_level` applies when
/// `CONVEYOR_LOG` is unset: the daemon logs `info`, the CLI only `warn`.
pub(crate) fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_env("CONVEYOR_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("CONVEYOR_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    JSON.store(json, Ordering::Relaxed);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if json {
        // Span fields are kept as JSON text, which FlatJson merges per line.
        builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .try_init()
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    if let Err(e) = installed {
        eprintln!("conveyor: logging not initialised: {e}");
    }
}

/// Logs the effective configuration (file, environment and command line
/// combined; secrets masked) in one line: as TOML in one JSON field, or with
/// its newlines escaped in text.
pub(crate) fn effective_config(config: &Config) {
    let toml = config.masked_toml();
    if JSON.load(Ordering::Relaxed) {
        tracing::info!(config = %toml, "effective configuration");
        return;
    }
    // A person reads the text: a line that says what runs, and the whole
    // configuration (multi-line TOML, no escapes) at debug level.
    let queues: Vec<String> = config
        .queues
        .iter()
        .map(|(name, q)| format!("{name} ({}, {})", q.handler, q.concurrency))
        .collect();
    tracing::info!(
        file = %config.file.as_deref().map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
        redis = %config.redis.target(),
        queues = %queues.join(", "),
        schedules = config.schedules.len(),
        "effective configuration (the whole of it at CONVEYOR_LOG=debug)"
    );
    tracing::debug!("effective configuration:\n{toml}");
}

/// Reports the error that ends the process, on stderr: `conveyor: <error>`
/// for a person, or one JSON line like every other when logs are JSON, so a
/// log shipper sees why the daemon stopped. Written directly rather than
/// through the log filter, so that no filter can hide it.
pub(crate) fn fatal(error: &str) {
    if JSON.load(Ordering::Relaxed) {
        let line = serde_json::json!({
            "timestamp": crate::clock::now_rfc3339(),
            "level": "ERROR",
            "message": "exiting",
            "error": error,
        });
        eprintln!("{line}");
    } else {
        eprintln!("conveyor: {error}");
    }
}

/// One JSON object per event, span fields flattened into it.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Line::default();
        line.set("timestamp", Value::String(crate::clock::now_rfc3339()));
        line.set("level", Value::String(event.metadata().level().to_string()));
        line.set("message", Value::Null);
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    // JsonFields wrote them; "{}" when the span has none.
                    if let Ok(serde_json::Value::Object(map)) =
                        serde_json::from_str::<Value>(fields.as_str())
                    {
                        for (k, v) in map {
                            line.set(&k, v);
                        }
                    }
                }
                innermost = Some(span.name());
            }
            if let Some(name) = innermost {
                line.set("span", Value::String(name.to_owned()));
            }
        }
        // The event's own fields win over a span's of the same name.
        event.record(&mut line);
        line.fields.retain(|(_, v)| !v.is_null());
        let mut out = String::from("{");
        for (i, (k, v)) in line.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::String(k.clone()).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
        writeln!(writer, "{out}")
    }
}

/// The fields of one line, in order, each name once.
#[derive(Default)]
struct Line {
    fields: Vec<(String, Value)>,
}

impl Line {
    fn set(&mut self, name: &str, value: Value) {
        match self.fields.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name.to_owned(), value)),
        }
    }
}

impl Visit for Line {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field.name(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn json_lines(log: impl FnOnce()) -> Vec<serde_json::Map<String, Value>> {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn span_fields_are_on_every_line_even_in_nested_spans() {
        let lines = json_lines(|| {
            let job = tracing::info_span!("job", id = "j1", queue = "email", attempt = 2);
            let _job = job.enter();
            tracing::warn!(error = "refused", "failed");
            let smtp = tracing::info_span!("smtp", host = "mx");
            let _smtp = smtp.enter();
            tracing::info!(ms = 12u64, "sent");
        });
        assert_eq!(lines.len(), 2);
        for line in &lines {
            assert_eq!(line["id"], "j1");
            assert_eq!(line["queue"], "email");
            assert_eq!(line["attempt"], 2);
            assert!(line["timestamp"].is_string());
        }
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["message"], "failed");
        assert_eq!(lines[0]["error"], "refused");
        assert_eq!(lines[0]["span"], "job");
        assert_eq!(lines[1]["host"], "mx");
        assert_eq!(lines[1]["ms"], 12);
        assert_eq!(lines[1]["span"], "smtp");
    }

    #[test]
    fn an_event_field_wins_over_a_span_field_of_the_same_name() {
        let lines = json_lines(|| {
            let _s = tracing::info_span!("job", queue = "a").entered();
            tracing::info!(queue = "b", "moved");
        });
        assert_eq!(lines[0]["queue"], "b");
        let keys: Vec<&String> = lines[0].keys().collect();
        assert_eq!(keys.iter().filter(|k| **k == "queue").count(), 1);
    }

    #[test]
    fn multi_line_values_stay_on_one_line() {
        let lines = json_lines(|| tracing::info!(config = %"[redis]\nurl = \"x\"\n", "cfg"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["config"], "[redis]\nurl = \"x\"\n");
    }
}

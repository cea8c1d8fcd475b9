//! Logging to stderr (journald reads it under systemd): human text, with
//! colours only when stderr is a terminal (never ANSI escapes in the
//! journal), or one flat JSON object per line with `CONVEYOR_LOG_FORMAT=json`
//! for log shippers. `CONVEYOR_LOG` is the filter (`info`, `conveyor=debug`).
//!
//! A JSON line carries `timestamp`, `level`, `message`, the event's fields
//! and the fields of every span it happened in, all at the top level: so
//! each line of a job has the job's `id`, `queue` and `attempt` even when a
//! handler logs inside a span of its own.
//!
//! Neither format lets what it logs forge a line: job ids, worker errors,
//! a worker's stderr and a remote server's answer are text from outside.
//! In text every control character of a value or of the message (newline,
//! carriage return, ESC, every other C0 and C1 control, DEL, and the
//! Unicode line and paragraph separators) is written escaped (`\n`,
//! `\x1b`, `\u{9b}`) by [`TextFields`], the one place every field and
//! message passes through; JSON escapes C0 by its own rules, and
//! [`FlatJson`] escapes the rest (`\u007f`, `\u009b`, `\u2028`).

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
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
            .fmt_fields(TextFields)
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
pub(crate) fn effective_config(config: &Config, registry: &crate::handlers::Registry) {
    let toml = registry.masked_toml(config);
    if JSON.load(Ordering::Relaxed) {
        tracing::info!(config = %toml, "effective configuration");
        return;
    }
    // A person reads the text: a line that says what runs, and the whole
    // configuration at debug level, a line of TOML per log line (a newline
    // inside one would be escaped).
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
    for line in toml.lines().filter(|l| !l.is_empty()) {
        tracing::debug!("effective configuration: {line}");
    }
}

/// Reports the error that ends the process, on stderr: `conveyor: <error>`
/// for a person, or one JSON line like every other when logs are JSON, so a
/// log shipper sees why the daemon stopped. Written directly rather than
/// through the log filter, so that no filter can hide it. In text its
/// newlines stay (a configuration error quotes the file's lines), every
/// other control character is escaped.
pub(crate) fn fatal(error: &str) {
    if JSON.load(Ordering::Relaxed) {
        let line = serde_json::json!({
            "timestamp": crate::clock::now_rfc3339(),
            "level": "ERROR",
            "message": "exiting",
            "error": error,
        });
        eprintln!("{}", json_line(line.to_string()));
    } else {
        let mut shown = String::with_capacity(error.len());
        for line in error.split_inclusive('\n') {
            let (text, newline) = match line.strip_suffix('\n') {
                Some(text) => (text, "\n"),
                None => (line, ""),
            };
            // Writing into a String does not fail.
            let _ = Escaped(&mut shown).write_str(text);
            shown.push_str(newline);
        }
        eprintln!("conveyor: {shown}");
    }
}

/// `text` with its control characters escaped as the text logs write them,
/// for what a command prints of text from outside (an event's job id or
/// error) on a terminal.
pub(crate) fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(is_escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    // Writing into a String does not fail.
    let _ = Escaped(&mut out).write_str(text);
    std::borrow::Cow::Owned(out)
}

/// Whether `c` is written escaped: the C0 and C1 controls and DEL (the
/// Unicode category Cc), and the line and paragraph separators some
/// viewers break lines at.
fn is_escaped(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// A writer that passes text on with every [`is_escaped`] character
/// written as an escape: `\n`, `\r`, `\t`, `\x1b` (C0 and DEL), `\u{9b}`
/// (C1 and the separators). A backslash itself stays as it is: the escapes
/// keep a line from being forged, they are not meant to be undone.
struct Escaped<W>(W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(is_escaped) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if (c as u32) < 0x80 => write!(self.0, "\\x{:02x}", c as u32)?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// The text format's fields, as tracing-subscriber's default writes them
/// (the message, then `name=value`, `name="text"` for a string), with
/// every value and the message written through [`Escaped`]. Spans' fields
/// are formatted by it too, so a job's id is escaped on every line of the
/// job.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // A `log` record's metadata, already in the line's prefix.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let ansi = self.writer.has_ansi_escapes();
        let w = &mut self.writer;
        self.result = (|| {
            w.write_str(separator)?;
            if name != "message" {
                let name = name.strip_prefix("r#").unwrap_or(name);
                if ansi {
                    // Italic name, dimmed `=`, as the default fields.
                    write!(w, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
                } else {
                    write!(w, "{name}=")?;
                }
            }
            write!(Escaped(&mut *w), "{value:?}")
        })();
    }
}

/// A serialized JSON line with the characters JSON leaves as they are but
/// a terminal may act on (DEL, C1, the line separators) escaped as
/// `\u00XX`. Outside strings a JSON text is ASCII without controls, so
/// each one found is inside a string, where the escape means the same.
fn json_line(mut line: String) -> String {
    if !line.contains(|c: char| is_escaped(c) && (c as u32) >= 0x7f) {
        return line;
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.drain(..) {
        if is_escaped(c) && (c as u32) >= 0x7f {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
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
        writeln!(writer, "{}", json_line(out))
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

    fn text_lines(log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .fmt_fields(TextFields)
            .with_target(false)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8")
    }

    /// Text a job, a worker or a remote server could send: a forged line
    /// after a newline, a carriage return, a terminal escape, C1's CSI, DEL.
    const HOSTILE: &str =
        "nope\n1999-12-31T23:59:59.999999Z ERROR forged\r\x1b[2J\u{9b}31m\x7f\u{2028}end";

    #[test]
    fn text_escapes_control_characters_in_every_field_span_and_message() {
        let text = text_lines(|| {
            let _job = tracing::info_span!("job", id = %HOSTILE, queue = "q").entered();
            tracing::warn!(error = %HOSTILE, line = HOSTILE, debug = ?HOSTILE, "failed: {HOSTILE}");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            !text.contains(|c: char| is_escaped(c) && c != '\n'),
            "{text:?}"
        );
        assert!(text.ends_with("end\"\n"), "{text:?}");
        // Each of the five places shows the escapes, the text around them kept.
        let escaped =
            "nope\\n1999-12-31T23:59:59.999999Z ERROR forged\\r\\x1b[2J\\u{9b}31m\\x7f\\u{2028}end";
        assert_eq!(text.matches(escaped).count(), 3, "{text}");
        assert!(text.contains(&format!("failed: {escaped}")), "{text}");
        assert!(
            text.contains(&format!("job{{id={escaped} queue=\"q\"}}")),
            "{text}"
        );
        assert!(text.contains("error=nope"), "{text}");
        // A Debug-formatted string was escaped by Debug; nothing is left raw.
        assert!(text.contains("line=\"nope\\n1999"), "{text}");
    }

    #[test]
    fn plain_text_is_written_as_the_default_format_writes_it() {
        let text = text_lines(
            || tracing::info!(n = 3u64, ok = true, name = "a b", who = %"x", "started é"),
        );
        let line = text.trim_end();
        assert!(
            line.ends_with("INFO started é n=3 ok=true name=\"a b\" who=x"),
            "{line}"
        );
    }

    #[test]
    fn json_escapes_what_a_terminal_would_act_on() {
        let lines = json_lines(|| tracing::warn!(error = %HOSTILE, "{HOSTILE}"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["error"], HOSTILE, "the value is kept exactly");
        assert_eq!(lines[0]["message"], HOSTILE);
        let raw = json_line(serde_json::json!({ "e": HOSTILE }).to_string());
        assert!(!raw.contains(is_escaped), "{raw:?}");
        assert!(
            raw.contains("\\u001b[2J\\u009b31m\\u007f\\u2028end"),
            "{raw}"
        );
    }

    #[test]
    fn multi_line_values_stay_on_one_line() {
        let lines = json_lines(|| tracing::info!(config = %"[redis]\nurl = \"x\"\n", "cfg"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["config"], "[redis]\nurl = \"x\"\n");
    }
}

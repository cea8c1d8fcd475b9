//! `conveyor enqueue`: one job from an argument or stdin, or many from an
//! NDJSON file, pipelined. Every line of a file is checked before anything is
//! enqueued, so a bad line loses nothing and enqueues nothing.

use std::io::{BufWriter, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::{InputError, UsageError, connect, load_config};
use crate::api::EnqueueOptions;
use crate::api::enqueue::{Announcer, digest};
use crate::broker::admin::{Enqueued, NewJob};
use crate::broker::{Broker, QueueKeys};

use crate::clock::{now_ms, now_rfc3339};
use crate::envelope::{add_trace, check_size, new_envelope_json, new_id};

/// The node `conveyor enqueue`'s events name: this process.
fn node() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("cli-{host}-{}", std::process::id())
}

/// The options of the jobs `args` asks for.
fn options(args: &Args) -> EnqueueOptions {
    EnqueueOptions {
        delay: None,
        max_attempts: args.max_attempts,
        unique_for: args.unique_for,
        unique_key: args.unique_key.clone(),
        traceparent: args.traceparent.clone(),
        tracestate: args.traceparent.as_ref().and(args.tracestate.clone()),
    }
}

/// Jobs per pipeline when loading a file.
const CHUNK: usize = 2000;
/// Bad lines listed before giving up on a file.
const MAX_REPORTED: usize = 10;

/// Options of `conveyor enqueue`.
#[derive(Debug, clap::Args)]
#[command(
    group(clap::ArgGroup::new("input").required(true).args(["payload", "file"])),
    override_usage = "conveyor enqueue <QUEUE> <PAYLOAD | - | --file FILE> [OPTIONS]"
)]
pub(crate) struct Args {
    /// The queue's name.
    #[arg(add = super::completions::queue_names())]
    pub(crate) queue: String,
    /// The payload as JSON, or `-` to read one JSON document from stdin.
    pub(crate) payload: Option<String>,
    /// Enqueue every line of an NDJSON file as a job (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// Run no earlier than this from now: `30s`, `5m`, `2h`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "at")]
    pub(crate) delay: Option<Duration>,
    /// Run no earlier than this time: RFC 3339 (`2026-11-24T10:00:00Z`) or Unix seconds.
    #[arg(long, value_name = "TIME")]
    pub(crate) at: Option<String>,
    /// Attempts before the job is dead, overriding the queue's setting.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_attempts: Option<u32>,
    /// Do not enqueue if an equal job was enqueued within this long and has
    /// not finished: `10m`, `1h`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) unique_for: Option<Duration>,
    /// What makes jobs equal for --unique-for [default: a digest of the payload].
    #[arg(long, value_name = "KEY", requires = "unique_for")]
    pub(crate) unique_key: Option<String>,
    /// Enqueue to a queue this configuration does not list (a daemon with
    /// another configuration runs it).
    #[arg(long)]
    pub(crate) unconfigured: bool,
    /// Print no job ids.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// The producer's span (W3C trace context,
    /// `00-<trace id>-<span id>-<flags>`): the job's first attempt is its
    /// child in the traces.
    #[arg(long, value_name = "TRACEPARENT", env = "TRACEPARENT", value_parser = traceparent)]
    pub(crate) traceparent: Option<String>,
    /// The W3C tracestate that goes with --traceparent.
    #[arg(long, value_name = "TRACESTATE", env = "TRACESTATE")]
    pub(crate) tracestate: Option<String>,
}

/// A `--traceparent` (or `TRACEPARENT`) the daemon can read.
fn traceparent(value: &str) -> Result<String, String> {
    crate::traces::check_traceparent(value.trim())?;
    Ok(value.trim().to_owned())
}

/// Enqueues and prints the id of each job enqueued.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let due_ms = due_time(&args)?;
    if let Some(ttl) = args.unique_for {
        crate::config::bounds::duration("--unique-for", ttl, &crate::config::bounds::UNIQUE_FOR)
            .map_err(|e| UsageError(e.to_string()))?;
    }
    if args.file.is_some() && args.unique_key.is_some() {
        return Err(UsageError(
            "--unique-key names one job; with --file each job's key is its payload's digest".into(),
        )
        .into());
    }
    let max_bytes = config
        .queues
        .get(&args.queue)
        .map(|q| q.max_payload_bytes)
        .unwrap_or(1 << 20);
    if !config.queues.is_empty() && !config.queues.contains_key(&args.queue) && !args.unconfigured {
        return Err(UsageError(format!(
            "queue {:?} is not in the configuration (configured: {}), so no daemon of it would \
             run the job; --unconfigured enqueues it to {} anyway",
            args.queue,
            config.queues.keys().cloned().collect::<Vec<_>>().join(", "),
            config.queue_key(&args.queue)
        ))
        .into());
    }
    // Payloads borrow from the text read: validated once, copied once (into
    // their envelope).
    let text = read_input(&args)?;
    let limit = Limit {
        max_bytes,
        envelope: envelope_overhead(&args),
    };
    let payloads = match &args.file {
        None => vec![
            check_payload(text.trim(), limit)
                .map_err(|e| InputError(format!("invalid payload: {e}")))?,
        ],
        Some(path) => payloads_of(path, &text, limit)?,
    };
    let mut announcer = Announcer::new(&config, &args.queue, node());
    let broker = connect(&config).await?;
    let keys = QueueKeys::new(&args.queue, &config.queue_key(&args.queue), "cli");
    if args.file.is_some() {
        return load_file(&broker, &keys, payloads, &args, due_ms, &mut announcer).await;
    }
    let now = now_rfc3339();
    let jobs: Vec<NewJob> = payloads
        .into_iter()
        .map(|payload| announcer.job(payload, &options(&args), due_ms, &now))
        .collect();
    let outcome = broker.enqueue(&keys, &jobs, &announcer.sink).await?;
    match outcome.first() {
        Some(Enqueued::Duplicate { holder }) => {
            eprintln!(
                "conveyor: not enqueued: job {holder} holds the unique lock {:?}",
                jobs[0]
                    .unique
                    .as_ref()
                    .map(|(k, _)| k.as_str())
                    .unwrap_or_default()
            );
        }
        _ if !args.quiet => println!("{}", jobs[0].id),
        _ => {}
    }
    Ok(())
}

/// A chunk that was sent, with what became of each job.
type Sent = (Vec<NewJob>, Vec<Enqueued>);

/// Enqueues the lines of a file in pipelined chunks, each built just before
/// it is sent (one timestamp per chunk).
async fn load_file(
    broker: &Broker,
    keys: &QueueKeys,
    payloads: Vec<&RawValue>,
    args: &Args,
    due_ms: Option<i64>,
    announcer: &mut Announcer,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(payloads.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} jobs {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let (mut queued, mut duplicates) = (0u64, 0u64);
    // One chunk on the wire while the next is built: Redis and this process
    // work at the same time, and chunks still land in file order.
    let mut payloads = payloads.into_iter();
    let mut in_flight: Option<tokio::task::JoinHandle<anyhow::Result<Sent>>> = None;
    let options = options(args);
    loop {
        let now = now_rfc3339();
        let chunk: Vec<NewJob> = payloads
            .by_ref()
            .take(CHUNK)
            .map(|payload| announcer.job(payload, &options, due_ms, &now))
            .collect();
        if let Some(sent) = in_flight.take() {
            let (jobs, outcomes) = sent.await??;
            for (job, outcome) in jobs.iter().zip(outcomes) {
                match outcome {
                    Enqueued::Queued => {
                        queued += 1;
                        if !args.quiet {
                            writeln!(out, "{}", job.id)?;
                        }
                    }
                    Enqueued::Duplicate { .. } => duplicates += 1,
                }
            }
            if let Some(bar) = &bar {
                bar.inc(jobs.len() as u64);
            }
        }
        if chunk.is_empty() {
            break;
        }
        let (broker, keys, sink) = (broker.clone(), keys.clone(), announcer.sink.clone());
        in_flight = Some(tokio::spawn(async move {
            let outcomes = broker.enqueue(&keys, &chunk, &sink).await?;
            Ok((chunk, outcomes))
        }));
    }
    out.flush()?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "conveyor: enqueued {queued} jobs to {} in {secs:.2}s ({:.0} jobs/s){}",
        keys.list,
        queued as f64 / secs.max(1e-9),
        if duplicates > 0 {
            format!("; {duplicates} duplicates skipped")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// When the job is due, if later than now.
fn due_time(args: &Args) -> anyhow::Result<Option<i64>> {
    if let Some(delay) = args.delay {
        let due = i64::try_from(delay.as_millis())
            .ok()
            .and_then(|ms| now_ms().checked_add(ms))
            .ok_or_else(|| {
                UsageError(format!(
                    "--delay {}: too long",
                    humantime::format_duration(delay)
                ))
            })?;
        return Ok((!delay.is_zero()).then_some(due));
    }
    let Some(at) = &args.at else { return Ok(None) };
    let ms = if let Ok(secs) = at.parse::<i64>() {
        secs.checked_mul(1000)
            .ok_or_else(|| UsageError(format!("--at {at}: out of range")))?
    } else {
        at.parse::<jiff::Timestamp>()
            .map_err(|e| {
                UsageError(format!(
                    "--at {at:?}: not an RFC 3339 time or Unix seconds ({e})"
                ))
            })?
            .as_millisecond()
    };
    Ok((ms > now_ms()).then_some(ms))
}

/// The payload argument, stdin (`-`), or the file's text.
fn read_input(args: &Args) -> anyhow::Result<String> {
    let (source, from_stdin) = match (&args.payload, &args.file) {
        (Some(p), None) if p == "-" => ("stdin".to_owned(), true),
        (Some(p), None) => return Ok(p.clone()),
        (None, Some(f)) if f == Path::new("-") => ("stdin".to_owned(), true),
        (None, Some(f)) => (f.display().to_string(), false),
        _ => unreachable!("clap's input group allows exactly one"),
    };
    let mut text = String::new();
    let read = match (from_stdin, &args.file) {
        (true, _) => std::io::stdin().read_to_string(&mut text),
        (false, Some(f)) => {
            std::fs::File::open(f).and_then(|mut file| file.read_to_string(&mut text))
        }
        (false, None) => unreachable!("a payload argument returned above"),
    };
    read.map_err(|e| InputError(format!("cannot read {source}: {e}")))?;
    Ok(text)
}

/// The payloads of an NDJSON text, one per non-blank line; every bad line
/// reported, and then nothing is enqueued.
fn payloads_of<'a>(path: &Path, text: &'a str, limit: Limit) -> anyhow::Result<Vec<&'a RawValue>> {
    let mut payloads = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match check_payload(line, limit) {
            Ok(p) => payloads.push(p),
            Err(e) => bad.push(format!("  line {}: {e}", n + 1)),
        }
    }
    if !bad.is_empty() {
        let more = bad.len().saturating_sub(MAX_REPORTED);
        bad.truncate(MAX_REPORTED);
        if more > 0 {
            bad.push(format!("  ... and {more} more"));
        }
        return Err(InputError(format!(
            "{}: {} bad line{}; nothing was enqueued\n{}",
            path.display(),
            bad.len().min(MAX_REPORTED) + more,
            if bad.len() + more == 1 { "" } else { "s" },
            bad.join("\n")
        ))
        .into());
    }
    if payloads.is_empty() {
        return Err(InputError(format!("{}: no jobs in the file", path.display())).into());
    }
    Ok(payloads)
}

/// What a job of this command may weigh: the queue's `max_payload_bytes`,
/// and the bytes its envelope adds to a payload.
#[derive(Debug, Clone, Copy)]
struct Limit {
    max_bytes: usize,
    envelope: usize,
}

/// The bytes this command's envelope adds around a payload: its id, time,
/// attempts and unique key (a digest is 64 characters, like every other).
fn envelope_overhead(args: &Args) -> usize {
    let key = args
        .unique_for
        .map(|_| args.unique_key.clone().unwrap_or_else(|| digest("")));
    let zero = RawValue::from_string("0".into()).expect("0 is JSON");
    let mut envelope = new_envelope_json(
        &new_id(),
        &zero,
        args.max_attempts,
        &now_rfc3339(),
        key.as_deref(),
    );
    if let Some(traceparent) = &args.traceparent {
        add_trace(&mut envelope, traceparent, args.tracestate.as_deref());
    }
    envelope.len() - 1
}

/// A payload the daemon will run: JSON, within the size rule the daemon
/// applies to what it takes (`envelope::check_size`), envelope included.
fn check_payload(text: &str, limit: Limit) -> Result<&RawValue, String> {
    check_size(text.len() + limit.envelope, text.len(), limit.max_bytes)
        .map_err(|e| e.to_string())?;
    serde_json::from_str::<&RawValue>(text).map_err(|e| format!("not JSON: {e}"))
}

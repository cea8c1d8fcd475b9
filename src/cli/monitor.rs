//! `conveyor monitor`: follow lifecycle events live, optionally replaying
//! what the stream kept first. Warns when a node's `seq` jumps (events were
//! missed); exits cleanly on Ctrl-C.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use super::{UsageError, connect, load_config};
use crate::broker::Broker;
use crate::broker::keys;
use crate::clock::now_ms;
use crate::event::{Event, EventType};
use crate::logging::escaped;

/// Stream entries read per round trip when replaying.
const PAGE: usize = 1000;

/// Options of `conveyor monitor`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only events of this queue (repeatable).
    #[arg(long = "queue", short = 'q', value_name = "Q", add = super::completions::queue_names())]
    pub(crate) queues: Vec<String>,
    /// Only events of this type (repeatable); `job.*` for a family.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    pub(crate) types: Vec<String>,
    /// Print the events as published, one JSON object per line.
    #[arg(long)]
    pub(crate) json: bool,
    /// First replay what the stream kept after this stream id, or from this
    /// long ago (`5m`, `1h`).
    #[arg(long, value_name = "ID|DURATION")]
    pub(crate) since: Option<String>,
}

/// Follows events until Ctrl-C or SIGTERM.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let broker = connect(&config).await?;
    broker.follow_failovers();
    let channel = config.events.channel.clone();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    // Subscribe before replaying, so nothing falls between the two; the
    // overlap is removed by (node, seq).
    let mut subscription = broker.subscribe(&channel).await?;
    let mut printer = Printer::new(&args);
    if let Some(since) = &args.since {
        replay(&broker, &keys::event_stream(&channel), since, &mut printer).await?;
    }
    loop {
        tokio::select! {
            _ = signals.next() => return Ok(()),
            message = subscription.next() => match message {
                Some(bytes) => printer.show(&bytes)?,
                None => {
                    eprintln!("conveyor: connection to Redis lost; resubscribing (events meanwhile are missed)");
                    subscription = loop {
                        tokio::select! {
                            _ = signals.next() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        if let Ok(s) = broker.subscribe(&channel).await {
                            eprintln!("conveyor: following events again");
                            break s;
                        }
                    };
                }
            },
        }
    }
}

async fn replay(
    broker: &Broker,
    stream: &str,
    since: &str,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let mut after = if since
        .split('-')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    {
        since.to_owned()
    } else {
        let ago = humantime::parse_duration(since).map_err(|_| {
            UsageError(format!(
                "--since {since:?}: give a stream id (1700000000000-0) or a duration (5m)"
            ))
        })?;
        let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        format!("{}-0", now_ms().saturating_sub(ago).max(0))
    };
    loop {
        let page = broker.replay(stream, &after, PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = last.clone();
        for (_, events) in &page {
            for event in events {
                printer.show(event.as_bytes())?;
            }
        }
        if page.len() < PAGE {
            return Ok(());
        }
    }
}

/// Filters, de-duplicates, notices gaps, prints.
struct Printer {
    queues: Vec<String>,
    types: Vec<String>,
    json: bool,
    last_seq: HashMap<String, u64>,
}

impl Printer {
    fn new(args: &Args) -> Self {
        Self {
            queues: args.queues.clone(),
            types: args.types.clone(),
            json: args.json,
            last_seq: HashMap::new(),
        }
    }

    fn show(&mut self, raw: &[u8]) -> anyhow::Result<()> {
        let Ok(event) = serde_json::from_slice::<Event>(raw) else {
            eprintln!(
                "conveyor: skipped a message that is not an event: {}",
                escaped(&String::from_utf8_lossy(raw))
            );
            return Ok(());
        };
        if let Some(&last) = self.last_seq.get(&event.node) {
            if event.seq <= last {
                return Ok(()); // seen already (replay and live overlap)
            }
            if event.seq > last + 1 {
                eprintln!(
                    "conveyor: missed {} event(s) from node {} (seq {} to {})",
                    event.seq - last - 1,
                    event.node,
                    last + 1,
                    event.seq - 1
                );
            }
        }
        self.last_seq.insert(event.node.clone(), event.seq);
        if !self.wanted(&event) {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if self.json {
            out.write_all(raw)?;
            out.write_all(b"\n")?;
        } else {
            writeln!(out, "{}", human(&event))?;
        }
        out.flush()?;
        Ok(())
    }

    fn wanted(&self, event: &Event) -> bool {
        let queue_ok = self.queues.is_empty()
            || event
                .queue
                .as_ref()
                .is_some_and(|q| self.queues.contains(q));
        let name = event.kind.as_str();
        let type_ok = self.types.is_empty()
            || self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => t == name,
            });
        queue_ok && type_ok
    }
}

/// `10:04:05.123  email  job.failed  <id>  #2  31ms  error: ... (retry at 10:04:20)`
/// One line per event; its text from outside (ids, errors, names) with
/// its control characters escaped, so that no event can forge a line or
/// steer the terminal.
fn human(e: &Event) -> String {
    use console::style;
    let time =
        e.at.split('T')
            .nth(1)
            .unwrap_or(&e.at)
            .trim_end_matches('Z');
    let kind = format!("{:<14}", e.kind.as_str());
    let kind = match e.kind {
        EventType::Succeeded => style(kind).green(),
        EventType::Failed => style(kind).yellow(),
        EventType::Dead => style(kind).red().bold(),
        EventType::Recovered => style(kind).magenta(),
        EventType::Started => style(kind).dim(),
        EventType::Enqueued => style(kind).cyan(),
        _ => style(kind).blue(),
    };
    let time = escaped(time);
    let queue = escaped(e.queue.as_deref().unwrap_or("-"));
    let mut line = format!("{time}  {queue:<12} {kind}");
    match &e.id {
        Some(id) => line.push_str(&format!(" {}", escaped(id))),
        None => line.push_str(&format!(" {}", escaped(&e.node))),
    }
    if let Some(a) = e.attempt.filter(|a| *a > 0) {
        line.push_str(&format!("  #{a}"));
    }
    if let Some(ms) = e.duration_ms {
        line.push_str(&format!("  {ms}ms"));
    }
    if let Some(reason) = &e.reason {
        line.push_str(&format!("  ({})", escaped(reason)));
    }
    if let Some(err) = &e.error {
        line.push_str(&format!("  error: {}", style(escaped(err)).red()));
    }
    if let Some(at) = &e.retry_at {
        let at = at.split('T').nth(1).unwrap_or(at).trim_end_matches('Z');
        line.push_str(&format!("  retry at {}", escaped(at)));
    }
    line
}

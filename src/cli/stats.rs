//! `conveyor stats`: per queue what waits, runs, is scheduled and is dead,
//! the counters, the rate over the last minute and the oldest waiting job's
//! age; the live nodes. `--watch` refreshes in place like `top`.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use super::{UsageError, connect, load_config};
use crate::api::{Client, Overview};
use crate::clock::age;

/// Options of `conveyor stats`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// One JSON object per snapshot, one per line.
    #[arg(long)]
    pub(crate) json: bool,
    /// Refresh until Ctrl-C.
    #[arg(long, short = 'w')]
    pub(crate) watch: bool,
    /// How often --watch refreshes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) interval: Duration,
}

/// Prints one snapshot, or refreshes until interrupted.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    if args.interval < Duration::from_millis(100) {
        return Err(UsageError("--interval must be at least 100ms".into()).into());
    }
    let config = load_config(config_path)?;
    let client = Client::with_broker(connect(&config).await?, &config, "cli");
    if !args.watch {
        return print(&client.overview().await?, args.json, false);
    }
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let in_place = !args.json && std::io::stdout().is_terminal();
    loop {
        print(&client.overview().await?, args.json, in_place)?;
        tokio::select! {
            _ = signals.next() => return Ok(()),
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
}

fn print(s: &Overview, json: bool, in_place: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(s)?)?;
        out.flush()?;
        return Ok(());
    }
    if in_place {
        // Home and clear, like top.
        write!(out, "\x1b[H\x1b[2J")?;
        writeln!(out, "conveyor stats  {}  (Ctrl-C to quit)\n", s.at)?;
    }
    if s.queues.is_empty() {
        writeln!(out, "no queues configured")?;
    } else {
        writeln!(
            out,
            "{:<16} {:>9} {:>7} {:>9} {:>9} {:>7} {:>11} {:>9} {:>8} {:>10}  state",
            "queue",
            "waiting",
            "held",
            "in_flight",
            "scheduled",
            "dead",
            "processed",
            "failed",
            "per_min",
            "oldest"
        )?;
        for q in &s.queues {
            let c = &q.counts;
            writeln!(
                out,
                "{:<16} {:>9} {:>7} {:>9} {:>9} {:>7} {:>11} {:>9} {:>8} {:>10}  {}",
                q.name,
                c.waiting,
                c.held,
                c.in_flight,
                c.scheduled,
                c.dead,
                c.processed,
                c.failed,
                q.rate_1m,
                q.oldest_age_s.map(age).unwrap_or_else(|| "-".into()),
                if c.paused { "paused" } else { "running" }
            )?;
        }
    }
    writeln!(out)?;
    if s.nodes.is_empty() {
        writeln!(out, "no live nodes")?;
    } else {
        writeln!(
            out,
            "{:<32} {:<16} {:>7} {:>8} {:>9} {:>5} {:>8}  queues",
            "node", "host", "pid", "version", "uptime", "busy", "dropped"
        )?;
        for n in &s.nodes {
            writeln!(
                out,
                "{:<32} {:<16} {:>7} {:>8} {:>9} {:>5} {:>8}  {}",
                n.id,
                n.info.host,
                n.info.pid,
                n.info.version,
                n.uptime_s
                    .map(|u| age(u as f64))
                    .unwrap_or_else(|| "-".into()),
                n.info.busy,
                n.info.events_dropped,
                n.info.queues.join(",")
            )?;
        }
    }
    if !in_place && !json {
        out.flush()?;
    }
    Ok(())
}

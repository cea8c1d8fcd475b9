//! `conveyor stats`: per queue what waits, runs, is scheduled and is dead,
//! the counters, the rate over the last minute and the oldest waiting job's
//! age; the live nodes. `--watch` refreshes in place like `top`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use serde::Serialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use super::{UsageError, connect, load_config};
use crate::broker::admin::QueueCounts;
use crate::broker::{Broker, QueueKeys};
use crate::clock::{now_ms, now_rfc3339};
use crate::config::Config;
use crate::envelope::parse_item;

/// Options of `conveyor stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object per snapshot, one per line.
    #[arg(long)]
    pub json: bool,
    /// Refresh until Ctrl-C.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// How often --watch refreshes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

#[derive(Serialize)]
struct QueueRow {
    name: String,
    key: String,
    #[serde(flatten)]
    counts: QueueCounts,
    /// Runs finished in the last minute, over all live nodes.
    rate_1m: u64,
    /// Age of the oldest waiting job, when its envelope says when it was made.
    oldest_age_s: Option<f64>,
}

#[derive(Serialize)]
struct NodeRow {
    id: String,
    host: String,
    pid: String,
    version: String,
    started_at: String,
    uptime_s: Option<u64>,
    queues: String,
    busy: u64,
    events_dropped: u64,
}

#[derive(Serialize)]
struct Snapshot {
    at: String,
    queues: Vec<QueueRow>,
    nodes: Vec<NodeRow>,
}

/// Prints one snapshot, or refreshes until interrupted.
pub async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    if args.interval < Duration::from_millis(100) {
        return Err(UsageError("--interval must be at least 100ms".into()).into());
    }
    let config = load_config(config_path)?;
    let broker = connect(&config).await?;
    if !args.watch {
        return print(&snapshot(&broker, &config).await?, args.json, false);
    }
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let in_place = !args.json && std::io::stdout().is_terminal();
    loop {
        print(&snapshot(&broker, &config).await?, args.json, in_place)?;
        tokio::select! {
            _ = signals.next() => return Ok(()),
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
}

async fn snapshot(broker: &Broker, config: &Config) -> anyhow::Result<Snapshot> {
    let keys: Vec<QueueKeys> = config
        .queues
        .keys()
        .map(|name| QueueKeys::new(name, &config.queue_key(name), "cli"))
        .collect();
    let counts = broker.queue_counts(&keys).await?;
    let node_ids: Vec<String> = counts
        .iter()
        .flat_map(|c| c.nodes.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let infos = broker.node_infos(&node_ids).await?;
    let live: Vec<(String, BTreeMap<String, String>)> = node_ids
        .into_iter()
        .zip(infos)
        .filter_map(|(id, info)| info.map(|i| (id, i.into_iter().collect())))
        .collect();
    let now = now_ms();
    let queues = keys
        .iter()
        .zip(counts)
        .map(|(k, mut c)| {
            let rate_1m = live
                .iter()
                .filter_map(|(_, info)| {
                    info.get(&format!("rate_1m:{}", k.name))?
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            let oldest_age_s = c.head.take().and_then(|item| {
                let created = parse_item(&item, usize::MAX).ok()?.envelope.created_at?;
                let at = created.parse::<jiff::Timestamp>().ok()?;
                Some(((now - at.as_millisecond()).max(0) as f64) / 1000.0)
            });
            QueueRow {
                name: k.name.clone(),
                key: k.list.clone(),
                counts: c,
                rate_1m,
                oldest_age_s,
            }
        })
        .collect();
    let nodes = live
        .into_iter()
        .map(|(id, info)| {
            let get = |k: &str| info.get(k).cloned().unwrap_or_default();
            let number = |k: &str| info.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            let uptime_s = info
                .get("started_at")
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                .map(|t| ((now - t.as_millisecond()).max(0) / 1000) as u64);
            NodeRow {
                host: get("host"),
                pid: get("pid"),
                version: get("version"),
                started_at: get("started_at"),
                uptime_s,
                queues: get("queues"),
                busy: number("busy"),
                events_dropped: number("events_dropped"),
                id,
            }
        })
        .collect();
    Ok(Snapshot {
        at: now_rfc3339(),
        queues,
        nodes,
    })
}

fn print(s: &Snapshot, json: bool, in_place: bool) -> anyhow::Result<()> {
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
            "{:<16} {:>9} {:>9} {:>9} {:>7} {:>11} {:>9} {:>8} {:>10}  state",
            "queue",
            "waiting",
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
                "{:<16} {:>9} {:>9} {:>9} {:>7} {:>11} {:>9} {:>8} {:>10}  {}",
                q.name,
                c.waiting,
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
                n.host,
                n.pid,
                n.version,
                n.uptime_s
                    .map(|u| age(u as f64))
                    .unwrap_or_else(|| "-".into()),
                n.busy,
                n.events_dropped,
                n.queues
            )?;
        }
    }
    if !in_place && !json {
        out.flush()?;
    }
    Ok(())
}

/// `42s`, `3m05s`, `2h10m`, `3d04h`.
fn age(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{secs:.0}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_like_uptime() {
        assert_eq!(age(4.2), "4s");
        assert_eq!(age(185.0), "3m05s");
        assert_eq!(age(7800.0), "2h10m");
        assert_eq!(age(273_600.0), "3d04h");
    }
}

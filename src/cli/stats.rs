//! `conveyor stats`: per queue, what waits, runs, is scheduled and is dead,
//! and the counters since the queue began.

use std::path::Path;

use serde::Serialize;

use super::{connect, load_config};
use crate::broker::QueueKeys;
use crate::broker::admin::QueueCounts;
use crate::job::now_rfc3339;

/// Options of `conveyor stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct QueueRow<'a> {
    name: &'a str,
    key: &'a str,
    #[serde(flatten)]
    counts: &'a QueueCounts,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    at: String,
    queues: Vec<QueueRow<'a>>,
}

/// Prints one snapshot of the configured queues.
pub async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let keys: Vec<QueueKeys> = config
        .queues
        .keys()
        .map(|name| QueueKeys::new(name, &config.queue_key(name), "cli"))
        .collect();
    let broker = connect(&config).await?;
    let counts = broker.queue_counts(&keys).await?;
    let rows: Vec<QueueRow<'_>> = keys
        .iter()
        .zip(&counts)
        .map(|(k, c)| QueueRow {
            name: &k.name,
            key: &k.list,
            counts: c,
        })
        .collect();
    if args.json {
        let snapshot = Snapshot {
            at: now_rfc3339(),
            queues: rows,
        };
        println!("{}", serde_json::to_string(&snapshot)?);
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("conveyor: no queues configured");
        return Ok(());
    }
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>7} {:>11} {:>9}",
        "queue", "waiting", "in_flight", "scheduled", "dead", "processed", "failed"
    );
    for r in &rows {
        let c = r.counts;
        println!(
            "{:<16} {:>9} {:>9} {:>9} {:>7} {:>11} {:>9}",
            r.name, c.waiting, c.in_flight, c.scheduled, c.dead, c.processed, c.failed
        );
    }
    Ok(())
}

//! `conveyor schedules`: each schedule's queue, expression, last tick (from
//! Redis) and next tick.

use std::path::Path;

use jiff::Timestamp;

use super::{connect, load_config};
use crate::broker::QueueKeys;
use crate::broker::queue::QueueStore;
use crate::config::Config;

/// Options of `conveyor schedules`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object per schedule and line.
    #[arg(long)]
    pub json: bool,
}

/// What is known of one schedule.
#[derive(Debug, serde::Serialize)]
struct Row {
    name: String,
    queue: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    every: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    /// Unix seconds.
    last_tick: Option<i64>,
    last_tick_at: Option<String>,
    /// Unix seconds.
    next_tick: Option<i64>,
    next_tick_at: Option<String>,
}

/// Prints every configured schedule.
pub async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    if config.schedules.is_empty() {
        if !args.json {
            println!("no schedules configured: add a [schedules.<name>] table");
        }
        return Ok(());
    }
    let broker = connect(&config).await?;
    let now = Timestamp::now();
    let mut rows = Vec::new();
    for (name, schedule) in &config.schedules {
        let spec = schedule
            .spec()
            .map_err(|e| crate::config::ConfigError::Invalid(e.at(name)))?;
        let store = store(&config, broker.clone(), &schedule.queue);
        let last = store.last_tick(name).await?;
        let next = spec.next_after(now);
        let zone = schedule.cron.as_ref().map(|_| {
            schedule
                .timezone
                .clone()
                .unwrap_or_else(|| "UTC".to_owned())
        });
        rows.push(Row {
            name: name.clone(),
            queue: schedule.queue.clone(),
            cron: schedule.cron.clone(),
            every: schedule.every.map(|d| crate::config::human(d).to_string()),
            last_tick: last,
            last_tick_at: last.and_then(|t| at(t, zone.as_deref())),
            next_tick: next.map(|t| t.as_second()),
            next_tick_at: next.and_then(|t| at(t.as_second(), zone.as_deref())),
            timezone: zone,
        });
    }
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!(
        "{:<20} {:<12} {:<28} {:<26} {:<26}",
        "SCHEDULE", "QUEUE", "WHEN", "LAST TICK", "NEXT TICK"
    );
    for row in rows {
        let when = match (&row.cron, &row.every) {
            (Some(cron), _) => format!("{cron} ({})", row.timezone.as_deref().unwrap_or("UTC")),
            (None, Some(every)) => format!("every {every}"),
            (None, None) => String::new(),
        };
        println!(
            "{:<20} {:<12} {:<28} {:<26} {:<26}",
            row.name,
            row.queue,
            when,
            row.last_tick_at.as_deref().unwrap_or("-"),
            row.next_tick_at.as_deref().unwrap_or("never"),
        );
    }
    Ok(())
}

fn store(config: &Config, broker: crate::broker::Broker, queue: &str) -> QueueStore {
    let keys = QueueKeys::new(queue, &config.queue_key(queue), "cli");
    let cap = config.queues.get(queue).map_or(1, |q| q.dead_max_jobs);
    QueueStore::new(broker, keys, cap)
}

/// A tick as the schedule's local time with its offset (UTC for intervals).
fn at(seconds: i64, zone: Option<&str>) -> Option<String> {
    let t = Timestamp::from_second(seconds).ok()?;
    let tz = jiff::tz::TimeZone::get(zone.unwrap_or("UTC")).ok()?;
    Some(
        t.to_zoned_datetime(tz)
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    )
}

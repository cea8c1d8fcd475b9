//! `conveyor schedules`: each schedule's queue, expression, last tick (from
//! Redis) and next tick.

use std::path::Path;

use super::{connect, load_config};
use crate::api::Client;

/// Options of `conveyor schedules`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// One JSON object per schedule and line.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Prints every configured schedule.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    if config.schedules.is_empty() {
        if !args.json {
            println!("no schedules configured: add a [schedules.<name>] table");
        }
        return Ok(());
    }
    // Every expression parses, or this is a configuration error.
    for (name, schedule) in &config.schedules {
        schedule
            .spec()
            .map_err(|e| crate::config::ConfigError::Invalid(e.at(name)))?;
    }
    let client = Client::with_broker(connect(&config).await?, &config, "cli");
    let rows = client.schedules().await?;
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

//! `conveyor cancel <queue> <id>`: a waiting or scheduled job goes to the
//! dead letter list with `last_error` "cancelled"; a running one is stopped
//! by its daemon (an exec process group is killed, an http request dropped)
//! and ends the same way.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{InputError, connect, load_config};
use crate::broker::admin::Found;
use crate::broker::events::EventSink;
use crate::broker::{Broker, QueueKeys};
use crate::clock::now_rfc3339;
use crate::envelope::parse_item;
use crate::event::{Draft, EventType};

/// Options of `conveyor cancel`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue's name.
    pub queue: String,
    /// The job's id.
    pub id: String,
    /// How long to wait for a running job's daemon to stop it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// Cancels the job; says what it was doing.
pub async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let keys = QueueKeys::new(&args.queue, &config.queue_key(&args.queue), "cli");
    let dead_cap = config
        .queues
        .get(&args.queue)
        .map_or(10_000, |q| q.dead_max_jobs);
    let broker = connect(&config).await?;
    let sink = EventSink::new(&config.events.channel, config.events.stream_maxlen);
    let node = format!(
        "cli-{}-{}",
        hostname::get().map_or_else(|_| "host".into(), |h| h.to_string_lossy().into_owned()),
        std::process::id()
    );
    // A job may move between looks (taken, promoted): look again.
    for _ in 0..5 {
        let Some(found) = broker.find_job(&keys, &args.id).await? else {
            return Err(InputError(format!(
                "no job {} waiting, scheduled or running in queue {}",
                args.id, args.queue
            ))
            .into());
        };
        let (item, was) = match &found {
            Found::Waiting(item) => (item, "waiting"),
            Found::Scheduled(item) => (item, "scheduled"),
            Found::Running(node) => {
                return stop_running(&broker, &keys, &args, node).await;
            }
        };
        let parsed = parse_item(item, usize::MAX)
            .map_err(|e| anyhow::anyhow!("the job's item cannot be read: {e}"))?;
        let mut envelope = parsed.envelope;
        envelope.set_error("cancelled");
        envelope.died_at = Some(now_rfc3339());
        let unique = envelope.unique_key.clone();
        let moved = broker
            .cancel_waiting(
                &keys,
                &found,
                &envelope.to_json(),
                dead_cap,
                unique.as_deref().map(|k| (k, args.id.as_str())),
            )
            .await?;
        if moved {
            let now = now_rfc3339();
            let attempt = envelope.attempt;
            let event = Draft::job(
                EventType::Cancelled,
                args.queue.as_str(),
                args.id.as_str(),
                attempt,
            )
            .reason(was)
            .to_json(&node, &now, 1);
            broker.announce(&sink, &event).await?;
            println!(
                "{}: cancelled (it was {was}); in the dead letter list",
                args.id
            );
            return Ok(());
        }
    }
    Err(anyhow::anyhow!("job {} kept moving; try again", args.id))
}

/// Asks the daemons to stop a running job and waits until it is no longer
/// in flight.
async fn stop_running(
    broker: &Broker,
    keys: &QueueKeys,
    args: &Args,
    node: &str,
) -> anyhow::Result<()> {
    broker.request_cancel(keys, &args.id, true).await?;
    let deadline = Instant::now() + args.wait;
    let ended = loop {
        match broker.find_job(keys, &args.id).await? {
            Some(Found::Running(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(Found::Running(_)) => break false,
            _ => break true,
        }
    };
    broker.request_cancel(keys, &args.id, false).await?;
    if !ended {
        return Err(anyhow::anyhow!(
            "job {} still runs on node {node} after {}: is that daemon of a version without \
             cancel, or stuck?",
            args.id,
            humantime::format_duration(args.wait)
        ));
    }
    let cancelled = broker
        .dead_entries(keys, 0, 100)
        .await?
        .iter()
        .filter_map(|entry| parse_item(entry, usize::MAX).ok())
        .any(|p| p.envelope.id == args.id && p.envelope.last_error.as_deref() == Some("cancelled"));
    if cancelled {
        println!(
            "{}: cancelled (it was running on {node}); in the dead letter list",
            args.id
        );
        Ok(())
    } else {
        Err(InputError(format!(
            "job {} ended on its own before the cancel reached it",
            args.id
        ))
        .into())
    }
}

//! `conveyor pause <queue>` and `conveyor resume <queue>`: every daemon
//! stops taking the queue's jobs within a second (running ones finish), and
//! starts again.

use std::path::Path;

use super::{UsageError, connect, load_config};
use crate::broker::QueueKeys;
use crate::broker::events::EventSink;
use crate::clock::now_rfc3339;
use crate::event::{Draft, EventType};

/// Options of `conveyor pause` and `conveyor resume`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue's name.
    pub queue: String,
    /// A queue this configuration does not list (a daemon with another
    /// configuration runs it).
    #[arg(long)]
    pub unconfigured: bool,
}

/// Pauses (`true`) or resumes the queue; says what changed.
pub async fn run(config_path: Option<&Path>, args: Args, pause: bool) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    if !args.unconfigured && !config.queues.contains_key(&args.queue) {
        return Err(UsageError(format!(
            "no queue {:?} in the configuration (configured: {}); --unconfigured for one that \
             another configuration runs",
            args.queue,
            config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    let keys = QueueKeys::new(&args.queue, &config.queue_key(&args.queue), "cli");
    let broker = connect(&config).await?;
    let sink = EventSink::new(&config.events.channel, config.events.stream_maxlen);
    let now = now_rfc3339();
    let (kind, done, already) = match pause {
        true => (EventType::QueuePaused, "paused", "was paused already"),
        false => (EventType::QueueResumed, "resumed", "was not paused"),
    };
    let node = format!(
        "cli-{}-{}",
        hostname::get().map_or_else(|_| "host".into(), |h| h.to_string_lossy().into_owned()),
        std::process::id()
    );
    let event = Draft::queue(kind, args.queue.as_str()).to_json(&node, &now, 1);
    let changed = broker
        .set_paused(&keys, pause, &now, &sink, Some(&event))
        .await?;
    match changed {
        true => println!("{}: {done}", args.queue),
        false => println!("{}: {already}", args.queue),
    }
    Ok(())
}

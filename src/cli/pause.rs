//! `conveyor pause <queue>` and `conveyor resume <queue>`: every daemon
//! stops taking the queue's jobs within a second (running ones finish), and
//! starts again.

use std::path::Path;

use super::{UsageError, connect, load_config};
use crate::api::Client;

/// Options of `conveyor pause` and `conveyor resume`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The queue's name.
    #[arg(add = super::completions::queue_names())]
    pub(crate) queue: String,
    /// A queue this configuration does not list (a daemon with another
    /// configuration runs it).
    #[arg(long)]
    pub(crate) unconfigured: bool,
}

/// Pauses (`true`) or resumes the queue; says what changed.
pub(crate) async fn run(config_path: Option<&Path>, args: Args, pause: bool) -> anyhow::Result<()> {
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
    let client = Client::with_broker(connect(&config).await?, &config, "cli");
    let changed = match pause {
        true => client.pause(&args.queue).await?,
        false => client.resume(&args.queue).await?,
    };
    let said = match (pause, changed) {
        (true, true) => "paused",
        (true, false) => "was paused already",
        (false, true) => "resumed",
        (false, false) => "was not paused",
    };
    println!("{}: {said}", args.queue);
    Ok(())
}

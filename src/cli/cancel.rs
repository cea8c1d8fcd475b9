//! `conveyor cancel <queue> <id>`: a waiting or scheduled job goes to the
//! dead letter list with `last_error` "cancelled"; a running one is stopped
//! by its daemon (an exec process group is killed, an http request dropped)
//! and ends the same way.

use std::path::Path;
use std::time::Duration;

use super::{connect, load_config};
use crate::api::{Cancelled, Client};

/// Options of `conveyor cancel`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The queue's name.
    #[arg(add = super::completions::queue_names())]
    pub(crate) queue: String,
    /// The job's id.
    pub(crate) id: String,
    /// How long to wait for a running job's daemon to stop it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) wait: Duration,
}

/// Cancels the job; says what it was doing.
pub(crate) async fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let client = Client::with_broker(connect(&config).await?, &config, "cli");
    match client.cancel(&args.queue, &args.id, args.wait).await? {
        Cancelled::Running(node) => println!(
            "{}: cancelled (it was running on {node}); in the dead letter list",
            args.id
        ),
        was => println!(
            "{}: cancelled (it was {}); in the dead letter list",
            args.id,
            was.as_str()
        ),
    }
    Ok(())
}

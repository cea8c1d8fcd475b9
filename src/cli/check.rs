//! `conveyor check`: validate the configuration, build every queue's handler
//! and reach Redis, saying which step failed.

use std::path::Path;

use super::{connect, load_config};
use crate::broker::Broker;
use crate::handlers::{HandlerContext, Registry};

/// Options of `conveyor check`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the checks in order; the first failure decides the exit code.
pub async fn run(config_path: Option<&Path>, _args: Args) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let registry = Registry::builtin();
    let broker = Broker::new(&config.redis)?;
    for (name, q) in &config.queues {
        registry.build(&HandlerContext {
            queue: name,
            queue_config: q,
            config: &config,
            broker: &broker,
        })?;
    }
    println!(
        "config: ok ({} queue{}: {})",
        config.queues.len(),
        if config.queues.len() == 1 { "" } else { "s" },
        config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    connect(&config).await?;
    println!("redis: ok ({})", broker.url());
    Ok(())
}

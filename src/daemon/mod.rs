//! The daemon: a supervisor that starts one processor per queue and the
//! background components (scheduler, reaper, heartbeat, writer,
//! systemd watchdog), and stages the shutdown in one place.
//!
//! [`run_with`] is the daemon's life, one part per file: `wiring.rs` builds
//! the node (nothing runs yet but the web server), `startup.rs` waits for
//! Redis, lists the node in its queues and starts the components,
//! `running.rs` answers quiet and reload, and `stop.rs` stages the
//! shutdown, each step with the reason for its place. Each component is a
//! struct whose `run(self, stop)` owns the stop control of its stage
//! (`stages.rs`), the way mini-redis hands its shutdown signal over. What
//! is due and how long to wait go by one `Clock` (`crate::clock`), which
//! the unit tests move by hand.

use std::time::Duration;

use crate::broker::BrokerError;
use crate::config::{Config, ConfigError};
use crate::handlers::Registry;
use crate::shutdown::Shutdown;

mod flows;
mod heartbeat;
mod isolation;
mod notify;
mod pause;
mod periodic;
mod processor;
mod queues;
mod ratelimit;
mod reaper;
mod reload;
mod retry;
mod running;
mod scheduler;
mod stages;
mod startup;
mod stop;
#[cfg(test)]
mod testing;
mod throughput;
mod watchdog;
mod wiring;
mod writer;

use wiring::Wiring;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis failed in a way retrying cannot fix.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// This daemon's identity: `<host>-<pid>-<random>`, unique per start.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node id used in keys and events.
    pub id: String,
    /// The host name.
    pub host: String,
    /// When it started (RFC 3339).
    pub started_at: String,
}

impl Node {
    /// A fresh identity for this process.
    pub fn new() -> Self {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        let safe: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            id: format!("{safe}-{}-{:04x}", std::process::id(), fastrand::u16(..)),
            host,
            started_at: crate::clock::now_rfc3339(),
        }
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// BLMOVE's block time plus the longest a Redis reply may take: a fetcher
/// call older than twice this is stuck (see `Processor::fetch_call_age`).
pub(crate) fn stuck_fetch_threshold(config: &Config) -> Duration {
    (processor::BLOCK + config.redis.response_timeout) * 2
}

/// Re-reads the configuration for `systemctl reload` (SIGHUP): the same
/// file, environment and command-line overrides as at start.
pub type Reloader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Runs the daemon until `shutdown.terminate`, then shuts down gracefully.
///
/// Waits for Redis if it is unreachable at start (logging why), so a daemon
/// started before Redis comes up by itself once Redis does. Returns an error
/// only for a configuration that cannot work.
pub async fn run(
    config: Config,
    registry: &Registry,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    run_with(Node::new(), config, registry, shutdown, None).await
}

/// [`run`] with a given identity (tests use it to know the node id).
pub async fn run_as(
    node: Node,
    config: Config,
    registry: &Registry,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    run_with(node, config, registry, shutdown, None).await
}

/// [`run_as`] that applies a configuration `reloader` reads on each
/// `shutdown.reload` (SIGHUP): queues added, removed or changed and the
/// schedules, without dropping or rerunning a job.
pub async fn run_with(
    node: Node,
    config: Config,
    registry: &Registry,
    shutdown: Shutdown,
    reloader: Option<Reloader>,
) -> Result<(), DaemonError> {
    let wired = Wiring::new(node, config, registry).await?;
    let Some(mut running) = wired.start(&shutdown).await? else {
        return Ok(());
    };
    running.serve(registry, &shutdown, reloader.as_ref()).await;
    running.stop(&shutdown).await;
    Ok(())
}

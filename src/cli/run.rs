//! `conveyor run`: the daemon.

use std::path::Path;

use super::{UsageError, load_config};
use crate::config::{Config, ConfigError};
use crate::daemon;
use crate::handlers::Registry;
use crate::shutdown::Shutdown;

/// Options of `conveyor run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Run only this queue (repeatable); every configured queue by default.
    #[arg(long = "queue", short = 'q', value_name = "Q", add = super::completions::queue_names())]
    pub(crate) queues: Vec<String>,
    /// Override the concurrency of every queue run.
    #[arg(long, value_name = "N")]
    pub(crate) concurrency: Option<u32>,
}

/// Runs the daemon until SIGTERM or SIGINT, on a runtime of the configured
/// number of threads. SIGHUP reads the configuration again (with the same
/// --queue and --concurrency) and applies it.
pub(crate) fn run(
    config_path: Option<&Path>,
    args: Args,
    registry: &Registry,
) -> anyhow::Result<()> {
    if args.concurrency.is_some_and(|n| n == 0 || n > 10_000) {
        return Err(UsageError("--concurrency must be between 1 and 10000".into()).into());
    }
    let config = narrow(load_config(config_path)?, &args).map_err(UsageError)?;
    crate::logging::effective_config(&config, registry);
    // Before any worker, connection or listener: they all count against it.
    crate::limits::raise_open_files_limit();
    // What `systemctl reload` reads: the file found at start, again.
    let file = config.file.clone();
    let reloader: daemon::Reloader = Box::new(move || {
        let config = Config::load(file.as_deref())?;
        narrow(config, &args).map_err(ConfigError::Invalid)
    });
    super::runtime(Some(config.daemon.threads))?.block_on(async {
        let shutdown = Shutdown::new();
        let _signals = shutdown.listen_for_signals()?;
        daemon::run_with(
            daemon::Node::new(),
            config,
            registry,
            shutdown,
            Some(reloader),
        )
        .await?;
        Ok(())
    })
}

/// The configuration as the command line narrows it: only the --queue
/// queues (and their schedules), at --concurrency.
fn narrow(mut config: Config, args: &Args) -> Result<Config, String> {
    if !args.queues.is_empty() {
        for q in &args.queues {
            if !config.queues.contains_key(q) {
                let known: Vec<&str> = config.queues.keys().map(String::as_str).collect();
                return Err(format!(
                    "--queue {q}: no such queue in the configuration (configured: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        config.queues.retain(|name, _| args.queues.contains(name));
        // A daemon runs the schedules of the queues it runs.
        let queues = &config.queues;
        config
            .schedules
            .retain(|_, s| queues.contains_key(&s.queue));
    }
    if let Some(n) = args.concurrency {
        for q in config.queues.values_mut() {
            q.concurrency = n;
        }
    }
    Ok(config)
}

//! The command line: one module per subcommand, each an `Args` and a `run`.
//! Errors are `anyhow` here and only here; [`exit_code`] reads the typed
//! error underneath to pick the sysexits code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::broker::BrokerError;
use crate::config::{Config, ConfigError};
use crate::daemon::DaemonError;
use crate::handlers::{CheckError, Registry};

pub(crate) mod cancel;
pub(crate) mod check;
pub(crate) mod completions;
pub(crate) mod dead;
pub(crate) mod enqueue;
pub(crate) mod flow;
pub(crate) mod groups;
pub(crate) mod monitor;
pub(crate) mod pause;
pub(crate) mod pipe;
pub(crate) mod results;
pub(crate) mod run;
pub(crate) mod schedules;
pub(crate) mod stats;
pub(crate) mod status;
pub(crate) mod web;

/// EX_USAGE: the command was used wrongly.
pub(crate) const EX_USAGE: u8 = 64;
/// EX_DATAERR: the input data was bad.
pub(crate) const EX_DATAERR: u8 = 65;
/// EX_UNAVAILABLE: Redis or SMTP could not be reached.
pub(crate) const EX_UNAVAILABLE: u8 = 69;
/// EX_NOPERM: Redis refused the credentials or a permission.
pub(crate) const EX_NOPERM: u8 = 77;
/// EX_SOFTWARE: an internal error.
pub(crate) const EX_SOFTWARE: u8 = 70;
/// EX_OSERR: the operating system refused something.
pub(crate) const EX_OSERR: u8 = 71;
/// EX_IOERR: input/output failed.
pub(crate) const EX_IOERR: u8 = 74;
/// EX_CONFIG: the configuration is unusable.
pub(crate) const EX_CONFIG: u8 = 78;

/// The top-level help: the commands in the groups a newcomer looks for.
const HELP: &str = "\
{about-with-newline}
{usage-heading} {usage}

Run the daemon:
  run          Take jobs from the configured queues and run them
  check        Validate the configuration; reach Redis and what each queue needs
Jobs:
  enqueue      Enqueue a job (prints its id), or many from an NDJSON file
  status       Show a tracked job's state and result
  results      A tracked queue's recent results and failures, newest first
  dead         List, retry or purge dead jobs
  flow         Submit a flow (jobs with dependencies), show one, list them
Watch:
  stats        Queues, counters and live nodes (--watch to follow)
  monitor      Follow lifecycle events as they happen
  schedules    Each schedule's last and next tick
  web          The dashboard, /metrics and the web API, without workers
Steer:
  pause        Stop every daemon taking a queue's jobs (running ones finish)
  resume       Let the daemons take a paused queue's jobs again
  cancel       End a waiting, scheduled or running job as dead
Set up:
  completions  Completion scripts for bash, zsh, fish, elvish, PowerShell

Options:
{options}

`conveyor <command> --help` tells more about each. The configuration is
--config FILE, else $CONVEYOR_CONFIG, /etc/conveyor/conveyor.toml or
config/conveyor.toml, whichever exists first.
";

/// conveyor: a Redis-backed background job worker.
#[derive(Debug, Parser)]
#[command(name = "conveyor", version, about, max_term_width = 100, help_template = HELP)]
pub(crate) struct Cli {
    /// Configuration file [default: $CONVEYOR_CONFIG, /etc/conveyor/conveyor.toml,
    /// config/conveyor.toml, whichever exists first]
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: take jobs from the configured queues and run them.
    Run(run::Args),
    /// Enqueue a job (prints its id), or many from an NDJSON file.
    Enqueue(enqueue::Args),
    /// Inspect, retry or purge dead jobs.
    Dead(dead::Args),
    /// Follow lifecycle events.
    Monitor(monitor::Args),
    /// Show queues, counters and live nodes.
    Stats(stats::Args),
    /// Show a tracked job's status record.
    Status(status::Args),
    /// List a tracked queue's recent results and failures, newest first.
    Results(results::Args),
    /// List a queue's groups, busiest first: jobs waiting, held and running.
    Groups(groups::Args),
    /// Submit a flow, show one, or list the recent ones.
    Flow(flow::Args),
    /// Stop every daemon taking a queue's jobs (running ones finish).
    Pause(pause::Args),
    /// Let the daemons take a paused queue's jobs again.
    Resume(pause::Args),
    /// End a waiting, scheduled or running job as dead, reason "cancelled".
    Cancel(cancel::Args),
    /// Validate the configuration, reach Redis and the SMTP server.
    Check(check::Args),
    /// Show each schedule's last and next tick.
    Schedules(schedules::Args),
    /// Serve the dashboard, /metrics and the web API, without workers.
    Web(web::Args),
    /// Print a completion script for a shell.
    Completions(completions::Args),
    /// Write the man pages into a directory.
    #[command(hide = true)]
    Manpages(completions::ManArgs),
}

impl Command {
    /// The daemon logs what it does; the other commands only warnings.
    pub(crate) fn default_log_level(&self) -> &'static str {
        if self.is_daemon() { "info" } else { "warn" }
    }

    /// Whether it serves until stopped (`run`, `web`) rather than prints
    /// what was asked for.
    pub(crate) fn is_daemon(&self) -> bool {
        matches!(self, Command::Run(_) | Command::Web(_))
    }
}

/// Runs a parsed command line with the handlers of `registry`. The daemon
/// sizes its runtime from its configuration; the other commands run on one
/// of the machine's size.
pub(crate) fn execute(cli: Cli, registry: &Registry) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Run(args) => run::run(config, args, registry),
        Command::Enqueue(args) => block_on(enqueue::run(config, args)),
        Command::Dead(args) => block_on(dead::run(config, args)),
        Command::Monitor(args) => block_on(monitor::run(config, args)),
        Command::Stats(args) => block_on(stats::run(config, args)),
        Command::Status(args) => block_on(status::run(config, args)),
        Command::Results(args) => block_on(results::run(config, args)),
        Command::Groups(args) => block_on(groups::run(config, args)),
        Command::Flow(args) => block_on(flow::run(config, args)),
        Command::Pause(args) => block_on(pause::run(config, args, true)),
        Command::Resume(args) => block_on(pause::run(config, args, false)),
        Command::Cancel(args) => block_on(cancel::run(config, args)),
        Command::Check(args) => block_on(check::run(config, args, registry)),
        Command::Schedules(args) => block_on(schedules::run(config, args)),
        Command::Web(args) => block_on(web::run(config, args)),
        Command::Completions(args) => completions::run(args),
        Command::Manpages(args) => completions::manpages(args),
    }
}

fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    runtime(None)?.block_on(command)
}

/// An async runtime of `threads` worker threads (the machine's cores when
/// `None`).
fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| OsError(format!("cannot start the async runtime: {e}")).into())
}

/// The command was used wrongly (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// The operating system refused something (exit 71).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct OsError(pub String);

/// The input data was bad (exit 65).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InputError(pub String);

/// The sysexits code for an error, from the typed error inside it.
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return EX_USAGE;
        }
        if cause.is::<InputError>() {
            return EX_DATAERR;
        }
        if cause.is::<OsError>() {
            return EX_OSERR;
        }
        if cause.is::<ConfigError>() {
            return EX_CONFIG;
        }
        if let Some(e) = cause.downcast_ref::<crate::api::ApiError>() {
            return match e {
                crate::api::ApiError::NotFound(_)
                | crate::api::ApiError::Refused(_)
                | crate::api::ApiError::Invalid(_) => EX_DATAERR,
                crate::api::ApiError::Unfinished(_) => EX_SOFTWARE,
                crate::api::ApiError::Broker(b) => broker_code(b),
            };
        }
        if let Some(e) = cause.downcast_ref::<DaemonError>() {
            return match e {
                DaemonError::Config(_) => EX_CONFIG,
                DaemonError::Broker(b) if b.is_denied() => EX_NOPERM,
                DaemonError::Broker(b) if b.is_unavailable() => EX_UNAVAILABLE,
                DaemonError::Broker(_) => EX_SOFTWARE,
            };
        }
        if let Some(e) = cause.downcast_ref::<CheckError>() {
            return match e {
                CheckError::Unavailable(_) => EX_UNAVAILABLE,
                CheckError::Config(_) | CheckError::Refused(_) => EX_CONFIG,
            };
        }
        if let Some(e) = cause.downcast_ref::<BrokerError>() {
            return broker_code(e);
        }
    }
    EX_SOFTWARE
}

fn broker_code(e: &BrokerError) -> u8 {
    match e {
        BrokerError::BadUrl { .. } => EX_CONFIG,
        e if e.is_denied() => EX_NOPERM,
        e if e.is_unavailable() => EX_UNAVAILABLE,
        _ => EX_SOFTWARE,
    }
}

/// Loads the configuration for a command.
pub(crate) fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// A broker for a command, after a PING that says precisely why Redis is
/// unreachable if it is.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<crate::broker::Broker> {
    let broker = crate::broker::Broker::new(&config.redis)?;
    broker.ping().await?;
    broker.standalone().await?;
    Ok(broker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_follow_sysexits() {
        let code = |e: anyhow::Error| exit_code(&e);
        assert_eq!(code(UsageError("x".into()).into()), 64);
        assert_eq!(code(InputError("x".into()).into()), 65);
        assert_eq!(code(OsError("x".into()).into()), 71);
        assert_eq!(code(ConfigError::Invalid("x".into()).into()), 78);
        let unreachable = BrokerError::Unreachable {
            url: "redis://h".into(),
            reason: "refused".into(),
        };
        assert_eq!(
            code(anyhow::Error::from(unreachable).context("enqueue")),
            69
        );
        assert_eq!(code(CheckError::Unavailable("x".into()).into()), 69);
        assert_eq!(code(CheckError::Refused("x".into()).into()), 78);
        assert_eq!(
            code(CheckError::Config(ConfigError::Invalid("x".into())).into()),
            78
        );
    }
}

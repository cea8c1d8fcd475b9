//! conveyor: a Redis-backed background job worker that never loses a job.
//!
//! Producers `RPUSH` JSON onto `jobs:<queue>`; the daemon takes each job into
//! its own in-flight list, runs it through a handler, and records the outcome
//! (done, retry later, dead letter) in the same atomic step that releases it.
//!
//! # Your own handlers in Rust
//!
//! The crate is a library as well as the `conveyor` binary. A program that
//! registers its handlers and hands over to [`main_with`] is the whole
//! `conveyor` command line (`run`, `enqueue`, `check`, `stats`, ...) with
//! those handlers known by name:
//!
//! ```no_run
//! use conveyor::{async_trait, Handler, HandlerError, Job, Registry};
//!
//! struct Resize;
//!
//! #[async_trait]
//! impl Handler for Resize {
//!     async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
//!         let p: serde_json::Value = job.payload_as()?;   // malformed: permanent
//!         if p.get("width").is_none() {
//!             return Err(HandlerError::permanent("missing width"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let mut registry = Registry::builtin();
//!     registry.register_handler("resize", Resize);
//!     conveyor::main_with(registry)     // the whole CLI: run, enqueue, check, stats, ...
//! }
//! ```
//!
//! A queue with `handler = "resize"` then runs it. A handler can keep a
//! result ([`Job::set_result`]), ask for the next attempt's delay
//! ([`HandlerError::retry_in`]), and learn its deadline and cancellation
//! ([`Job::deadline`], [`Job::cancelled`]). A handler with options reads
//! its own table (`[queues.<q>.<handler>]`) in a factory given to
//! [`Registry::register`]; `examples/custom_handler.rs` has both kinds.
//!
//! The library API is that and no more: the handler trait and what a
//! handler sees ([`Handler`], [`Job`], [`HandlerError`], and in
//! [`handlers`] the [`HandlerContext`](handlers::HandlerContext) of a
//! factory, its [`HandlerStore`](handlers::HandlerStore), its
//! [`RateLimitKey`](handlers::RateLimitKey) and
//! [`CheckError`](handlers::CheckError)), the [`Registry`] of handlers by
//! name, [`main_with`], the daemon entry [`daemon::run`] with its
//! [`config::Config`] and [`shutdown::Shutdown`], the typed client of a
//! deployment's keys [`api::Client`] (enqueue, read, administer), and the
//! wire formats of jobs and events, [`envelope`] and [`event`]. Everything
//! else is the daemon's own and may change in any release.
//!
//! # Reading the code
//!
//! - `broker`: the only code that talks to Redis; `broker::keys` names
//!   every key and `src/broker/lua/` holds one script per atomic operation.
//! - [`daemon`]: the supervisor, its components (processor, scheduler,
//!   reaper, heartbeat, writer, watchdog) and the shutdown order, written
//!   in one place.
//! - [`handlers`]: the handler trait, the registry (the table of contents
//!   of job kinds: [`Registry::builtin`]) and one folder per built-in
//!   handler, which holds all of that handler.
//! - `job`, [`envelope`], `clock`: the job a handler sees, the wire
//!   format of list items, and time as Redis and events write it.
//! - [`config`]: the one configuration, its defaults and its rules.
//! - `cli`: one module per subcommand, and the exit codes.

pub mod api;
pub(crate) mod broker;
pub(crate) mod cli;
pub(crate) mod clock;
pub mod config;
pub mod daemon;
pub(crate) mod duration;
pub mod envelope;
pub mod event;
pub(crate) mod flow;
pub mod handlers;
pub(crate) mod job;
pub(crate) mod limits;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod schedule;
pub mod shutdown;
pub(crate) mod template_value;
pub(crate) mod traces;
pub(crate) mod web;

pub use async_trait::async_trait;
pub use handlers::{Handler, Registry};
pub use job::{HandlerError, Job};
/// The OpenTelemetry API [`Job::trace_context`] speaks, at the version this
/// crate builds with: a Rust handler's spans are children of the job's.
pub use opentelemetry;

use std::process::ExitCode;

/// The `conveyor` command line with the handlers of `registry`: parses the
/// arguments, sets up logging, runs the command and maps its error to a
/// sysexits code (64 usage, 65 bad input, 69 unavailable, 78 config); a
/// command whose stdout its reader closed exits 141 quietly. The `conveyor` binary is `main_with(Registry::builtin())`.
pub fn main_with(registry: Registry) -> ExitCode {
    use clap::Parser as _;
    // The same binary supervises each exec worker (handlers/exec/supervisor.rs).
    if let Some(code) = handlers::exec::supervisor::main_if_asked() {
        return code;
    }
    // Not dumpable: a process of the same user (an exec worker running as
    // the daemon's user, say) cannot read this one's environment or memory
    // through /proc, nor trace it, and a crash leaves no core holding the
    // secrets it read.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("conveyor: cannot protect the process's memory from other processes: {e}");
        return ExitCode::from(cli::EX_OSERR);
    }
    // A shell asking for completions (`COMPLETE=bash conveyor -- ...`):
    // answered here, and the process exits.
    cli::completions::answer_if_asked();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap picks colours by terminal; --help and --version are not errors.
            let printed = e.print();
            return match (e.use_stderr(), printed) {
                (false, Err(e)) if cli::pipe::is_epipe(&e) => {
                    ExitCode::from(cli::pipe::EX_CLOSED_PIPE)
                }
                (_, Err(_)) => ExitCode::from(cli::EX_IOERR),
                (true, Ok(())) => ExitCode::from(cli::EX_USAGE),
                (false, Ok(())) => ExitCode::SUCCESS,
            };
        }
    };
    logging::init(cli.command.default_log_level());
    // A handler's panic is caught and fails its job; say so in one log line
    // rather than a backtrace on stderr. A command's println! on a closed
    // stdout ends the command quietly (cli::pipe).
    let prints = !cli.command.is_daemon();
    std::panic::set_hook(Box::new(move |info| {
        if prints && cli::pipe::is_closed_stdout_panic(info) {
            cli::pipe::exit();
        }
        tracing::error!(panic = %info, "panicked")
    }));
    match cli::execute(cli, &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli::pipe::is_closed_stdout(&e) => ExitCode::from(cli::pipe::EX_CLOSED_PIPE),
        Err(e) => {
            logging::fatal(&format!("{e:#}"));
            ExitCode::from(cli::exit_code(&e))
        }
    }
}

//! conveyor: a Redis-backed background job worker that never loses a job.
//!
//! Producers `RPUSH` JSON onto `jobs:<queue>`; the daemon takes each job into
//! its own in-flight list, runs it through a handler, and records the outcome
//! (done, retry later, dead letter) in the same atomic step that releases it.
//! The contract (keys, job format, events, CLI, config) is DESIGN.md.
//!
//! Read these first:
//! - [`broker`]: the only code that talks to Redis; [`broker::keys`] names
//!   every key and `src/broker/lua/` holds one script per atomic operation.
//! - [`daemon`]: the supervisor, its components (processor, scheduler,
//!   reaper, heartbeat, writer, watchdog) and the shutdown order, written
//!   in one place.
//! - [`event`]: the lifecycle event wire format.
//! - [`job`]: list items, envelopes and backoff.
//! - [`handlers`]: the handler trait, its error classes and the registry.
//! - [`config`]: the one configuration, its defaults and its rules.
//! - [`cli`]: one module per subcommand; `main.rs` maps errors to exit codes.

pub mod broker;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod event;
pub mod handlers;
pub mod job;
pub mod logging;
pub mod shutdown;

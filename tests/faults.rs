//! The fault-injection suite: the real `conveyor` binary, as a separate
//! process against a private redis-server, under load and repeated faults.
//! Each scenario prints one line of figures (jobs enqueued, completed,
//! duplicated, dead, lost, time to recover) and asserts that none is lost.
//!
//!     cargo test --test faults                      # CI sizes, a few minutes on 2 cores
//!     CONVEYOR_SOAK=1 cargo test --test faults      # sizes and repetitions x10 (N>1: xN)
//!     cargo test --test faults 2>&1 | grep '^faults:'   # just the figures
//!
//! # How jobs are counted
//!
//! A job is *completed* when a handler ran it to success. The jobs are
//! envelopes with known ids whose `fault` payload carries
//! `"record": "<file>"`: on success the handler appends the job's id to that
//! file (one `write` of one line, `O_APPEND`) just before it returns. The
//! file is the completion record because it survives everything these
//! scenarios do: a SIGKILLed daemon has already written its line (or has not
//! finished the run), and Redis going away or stalling does not touch it.
//! The alternatives lose records exactly when it matters: pub/sub (the
//! `publish` handler, lifecycle events) drops messages while the test's
//! subscriber is disconnected, which is every Redis outage; events and
//! status records are published after the outcome and from a buffer, so a
//! SIGKILL between the two loses them; `{K}:stats` counts outcomes, not
//! which jobs, and never counts a run whose outcome the kill prevented.
//!
//! At the end the suite waits (with a deadline) until nothing is waiting,
//! scheduled or in flight, then accounts for every enqueued id from what
//! survives: the completion file (an id listed n times ran to success n
//! times: n-1 *duplicated*), the dead letter list (*dead*, by id), and the
//! queue, scheduled set and every in-flight list (*waiting*, by id). *Lost*
//! is an id in none of them, and must be 0. *Time to recover* is defined per
//! scenario next to its code and in docs/reliability.md.
//!
//! Scenarios run one at a time (a lock), so that their timings are not
//! each other's noise on a 2-core machine.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

#[path = "faults/crash.rs"]
mod crash;
#[path = "faults/failover.rs"]
mod failover;
#[path = "faults/flows.rs"]
mod flows;
#[path = "faults/handlers.rs"]
mod handlers;
#[path = "faults/harness.rs"]
mod harness;
#[path = "faults/hostile.rs"]
mod hostile;
#[path = "faults/memory.rs"]
mod memory;
#[path = "faults/orphans.rs"]
mod orphans;
#[path = "faults/outage.rs"]
mod outage;
#[path = "faults/parse.rs"]
mod parse;
#[path = "faults/shutdown.rs"]
mod shutdown;
#[path = "faults/web_flood.rs"]
mod web_flood;

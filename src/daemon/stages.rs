//! The shutdown's stages: the control each one trips, and the time each is
//! given. The order they come in is `stop.rs`'s; the parts that build and
//! run the node hold these without knowing that order.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// After the drain, how long requeueing and the final sweep may keep
/// retrying against an unreachable Redis before the daemon exits anyway
/// (the jobs then stay in flight, and a reaper returns them).
pub(super) const FINAL_GRACE: Duration = Duration::from_secs(5);

/// The least time handlers get to let go of what they hold (worker
/// processes to exit once their input is closed), even after a drain that
/// took all of `shutdown_timeout`.
pub(super) const HANDLER_GRACE: Duration = Duration::from_secs(1);

/// How long open web requests may finish once the daemon has stopped.
pub(super) const WEB_GRACE: Duration = Duration::from_secs(2);

/// The node's stop controls, one per stage, in the order `stop.rs`
/// trips them (the web server's is its own: [`super::wiring::Web`]).
#[derive(Default)]
pub(super) struct Stops {
    /// The fetchers (each queue's is a child): no job is taken after it.
    /// Quiet (SIGTSTP) trips it too.
    pub(super) fetching: CancellationToken,
    /// The running jobs of a drain that ran out of time: each goes back to
    /// the head of its queue (each queue's is a child).
    pub(super) abandon: CancellationToken,
    /// Requeueing and the writer stop retrying against an unreachable
    /// Redis, [`FINAL_GRACE`] after the drain.
    pub(super) give_up: CancellationToken,
    /// The scheduler, the reaper, the pause watch and the schedules.
    pub(super) background: CancellationToken,
    /// The heartbeat, and the systemd watchdog with it.
    pub(super) heartbeat: CancellationToken,
    /// The writer, which flushes what it still holds.
    pub(super) writer: CancellationToken,
}

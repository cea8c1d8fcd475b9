//! Process limits the daemon sets for itself, and gives back to its
//! workers.

use std::sync::OnceLock;

/// The soft limit on open files the process started with, once
/// [`raise_open_files_limit`] raised it: what workers get back.
static STARTED_WITH: OnceLock<u64> = OnceLock::new();

/// Raises the soft limit on open files to the hard limit, as Go's runtime
/// does: the soft limit's usual 1,024 is a default kept for programs that
/// use `select()`, which conveyor does not, and a daemon running hundreds
/// of workers beside a web port needs more. `conveyor run` and `conveyor
/// web` call it first. What it did is logged; a failure (a sandbox that
/// forbids it) leaves the limit as it was. Exec workers get the limit the
/// process started with back (their supervisor sets it), as Go's children
/// do: their programs may use `select()`.
pub(crate) fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (current, maximum) else {
        return;
    };
    if soft >= hard {
        tracing::debug!(limit = soft, "open files: the soft limit is the hard limit");
        return;
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            // Set once: a second call finds the limit raised and returns above.
            let _first = STARTED_WITH.set(soft);
            tracing::info!(from = soft, to = hard, "open files: soft limit raised")
        }
        Err(e) => tracing::warn!(
            limit = soft,
            error = %e,
            "open files: the soft limit could not be raised to the hard limit ({hard})"
        ),
    }
}

/// The soft limit on open files to give a worker: the one the process
/// started with, if it raised its own.
pub(crate) fn workers_open_files_limit() -> Option<u64> {
    STARTED_WITH.get().copied()
}

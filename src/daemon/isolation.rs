//! Suspects run alone. A job whose daemon died while running it (its
//! `deliveries` is above 0) may be the poison that killed it, or an innocent
//! job that happened to run beside the poison. Run beside others again, an
//! innocent job would be blamed for every crash the poison causes and
//! quarantined with it. Run alone, a crash blames only the job that caused
//! it: after `max_deliveries` solo crashes it is surely poison.
//!
//! Normal jobs pay two atomic operations; suspects close the node to new
//! jobs (fetchers pause, jobs taken but not started are given back), wait for
//! the running ones to finish, and run one at a time.
//!
//! "Alone" means alone in the in-flight list, which is what a reaper blames:
//! a second suspect that merely waits for its turn there dies with the node
//! as surely as the one running. So the fetcher that takes a suspect marks
//! it [`Pending`] before it takes anything else, and fetchers take nothing
//! while a suspect is pending or running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Mutex, MutexGuard, Notify};

/// The node-wide gate between normal jobs and suspects.
#[derive(Debug, Default)]
pub(crate) struct Isolation {
    closed: AtomicBool,
    /// Suspects taken and not yet finished (see [`Pending`]).
    pending: AtomicUsize,
    running: AtomicUsize,
    idle: Notify,
    opened: Notify,
    turn: Mutex<()>,
}

/// A normal job's right to run; dropping it ends the run.
pub(crate) struct Entered<'a>(&'a Isolation);

/// A suspect taken by a fetcher and not yet finished: while one exists, no
/// fetcher takes another job. Dropped when the suspect's processing ends,
/// however it ends (run, given back, requeued, dead-lettered).
pub(crate) struct Pending(Arc<Isolation>);

/// A suspect's hold on the node; dropping it opens the node again.
pub(crate) struct Isolated<'a> {
    gate: &'a Isolation,
    _turn: MutexGuard<'a, ()>,
}

impl Isolation {
    /// Lets a normal job start, unless a suspect holds the node or waits for it.
    pub(crate) fn try_enter(&self) -> Option<Entered<'_>> {
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        // Either this sees `closed`, or `isolate` sees this job running.
        if self.closed.load(Ordering::SeqCst) {
            self.leave();
            return None;
        }
        Some(Entered(self))
    }

    fn leave(&self) {
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Returns once no suspect holds the node or is pending (at once when
    /// none is).
    pub(crate) async fn open(&self) {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if !self.closed.load(Ordering::SeqCst) && self.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            opened.await;
        }
    }

    /// Marks a suspect just taken, before its fetcher takes anything else.
    pub(crate) fn pending(self: &Arc<Self>) -> Pending {
        self.pending.fetch_add(1, Ordering::SeqCst);
        Pending(self.clone())
    }

    /// Closes the node to new jobs, waits until no normal job runs, and keeps
    /// it closed until the returned hold is dropped. One suspect at a time.
    pub(crate) async fn isolate(&self) -> Isolated<'_> {
        let turn = self.turn.lock().await;
        self.closed.store(true, Ordering::SeqCst);
        let hold = Isolated {
            gate: self,
            _turn: turn,
        };
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.running.load(Ordering::SeqCst) == 0 {
                return hold;
            }
            idle.await;
        }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.opened.notify_waiters();
        }
    }
}

impl Drop for Isolated<'_> {
    fn drop(&mut self) {
        self.gate.closed.store(false, Ordering::SeqCst);
        self.gate.opened.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_suspect_waits_for_running_jobs_and_keeps_others_out() {
        let gate = Arc::new(Isolation::default());
        let running = gate.try_enter().expect("open at first");
        let g = gate.clone();
        let suspect = tokio::spawn(async move {
            let _hold = g.isolate().await;
            // While the suspect runs, nothing else may start.
            assert!(g.try_enter().is_none());
        });
        // The suspect closes the node at once but cannot run yet.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !gate.closed.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("closed");
        assert!(
            gate.try_enter().is_none(),
            "no new job while a suspect waits"
        );
        assert!(!suspect.is_finished());
        drop(running);
        tokio::time::timeout(Duration::from_secs(5), suspect)
            .await
            .expect("the suspect runs once the node is idle")
            .expect("no panic");
        tokio::time::timeout(Duration::from_secs(5), gate.open())
            .await
            .expect("open again");
        assert!(gate.try_enter().is_some());
    }

    #[tokio::test]
    async fn nothing_is_taken_while_a_suspect_is_pending() {
        let gate = Arc::new(Isolation::default());
        let pending = gate.pending();
        let g = gate.clone();
        let fetcher = tokio::spawn(async move { g.open().await });
        tokio::task::yield_now().await;
        assert!(
            !fetcher.is_finished(),
            "a fetcher waits while a suspect is pending"
        );
        drop(pending);
        tokio::time::timeout(Duration::from_secs(5), fetcher)
            .await
            .expect("open once the suspect is done")
            .expect("no panic");
    }
}

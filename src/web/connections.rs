//! The web server's open connections, at most a cap, each either idle
//! (waiting for a request, or in the middle of receiving one) or answering.
//!
//! At the cap, a new connection closes the one idle longest, as nginx
//! reuses its keep-alive connections: a flood of connections that send
//! nothing (or half a request) only ever displaces itself, and a client
//! that sends its request at once, such as a health check, is answered.
//! When every connection is answering a request, the accept loop waits for
//! one to end, and new connections wait in the kernel's backlog, costing
//! the daemon no descriptor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The open connections.
pub(super) struct Connections {
    cap: usize,
    open: Mutex<Open>,
    /// A connection closed or went idle.
    freed: Notify,
}

#[derive(Default)]
struct Open {
    next: u64,
    all: HashMap<u64, Entry>,
    /// Connections closed to make room, ever.
    displaced: u64,
    /// When that was last logged.
    said: Option<Instant>,
}

/// How often making room is logged, at most.
const SAY_EVERY: Duration = Duration::from_secs(60);

struct Entry {
    /// Requests being answered.
    answering: usize,
    /// Since when it answers none.
    idle_since: Instant,
    /// Closes it at once.
    close: CancellationToken,
    /// Told to close; it still holds its descriptor until its task ends.
    closing: bool,
}

impl Connections {
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: Mutex::new(Open::default()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // A panic while holding the lock leaves counts that are still
        // counts: go on with them.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes room for one more connection and registers it: below the cap
    /// at once; at the cap by closing the connection idle longest, or, when
    /// every one is answering, once one ends or goes idle.
    pub(super) async fn admit(self: &Arc<Self>) -> Slot {
        loop {
            {
                let mut open = self.lock();
                if open.all.len() < self.cap {
                    let id = open.next;
                    open.next += 1;
                    let close = CancellationToken::new();
                    open.all.insert(
                        id,
                        Entry {
                            answering: 0,
                            idle_since: Instant::now(),
                            close: close.clone(),
                            closing: false,
                        },
                    );
                    return Slot {
                        connections: self.clone(),
                        id,
                        close,
                    };
                }
                let pending = open.all.values().any(|e| e.closing);
                if !pending {
                    let oldest = open
                        .all
                        .values_mut()
                        .filter(|e| e.answering == 0)
                        .min_by_key(|e| e.idle_since);
                    if let Some(entry) = oldest {
                        entry.closing = true;
                        entry.close.cancel();
                        open.displaced += 1;
                        if open.said.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                            open.said = Some(Instant::now());
                            tracing::warn!(
                                cap = self.cap,
                                closed = open.displaced,
                                "web: {} connections open, the most: the one idle longest is \
                                 closed for each new one ({} so far)",
                                self.cap,
                                open.displaced
                            );
                        }
                    }
                }
            }
            // `notify_one` keeps a wake-up for a waiter that comes late.
            self.freed.notified().await;
        }
    }

    /// Connections open now, and closed to make room so far.
    #[cfg(test)]
    fn counts(&self) -> (usize, u64) {
        let open = self.lock();
        (open.all.len(), open.displaced)
    }

    fn answering(self: &Arc<Self>, id: u64) -> Answering {
        if let Some(entry) = self.lock().all.get_mut(&id) {
            entry.answering += 1;
        }
        Answering {
            connections: self.clone(),
            id,
        }
    }
}

/// A registered connection; unregistered when dropped.
pub(super) struct Slot {
    connections: Arc<Connections>,
    id: u64,
    close: CancellationToken,
}

impl Slot {
    /// Fires when the connection is to be closed at once.
    pub(super) fn close(&self) -> &CancellationToken {
        &self.close
    }

    /// Marks a request as being answered until the returned guard drops
    /// (with the answer's body, so that a long answer such as an event
    /// stream is never taken for an idle connection).
    pub(super) fn answering(&self) -> Answering {
        self.connections.answering(self.id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().all.remove(&self.id);
        self.connections.freed.notify_one();
    }
}

/// A request being answered.
pub(super) struct Answering {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(entry) = self.connections.lock().all.get_mut(&self.id) {
            entry.answering = entry.answering.saturating_sub(1);
            if entry.answering == 0 {
                entry.idle_since = Instant::now();
            }
        }
        self.connections.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_longest_makes_room() {
        let connections = Connections::new(3);
        let first = connections.admit().await;
        let second = connections.admit().await;
        let third = connections.admit().await;
        let _busy = first.answering();
        // The first answers a request: the second, idle longest, goes.
        let admitted = {
            let c = connections.clone();
            tokio::spawn(async move { c.admit().await })
        };
        tokio::time::timeout(Duration::from_secs(5), second.close().cancelled())
            .await
            .expect("the idle connection is told to close");
        assert!(!first.close().is_cancelled() && !third.close().is_cancelled());
        // It holds its descriptor until its task ends.
        assert!(!admitted.is_finished());
        drop(second);
        let fourth = tokio::time::timeout(Duration::from_secs(5), admitted)
            .await
            .expect("room once it closed")
            .expect("admitted");
        assert_eq!(connections.counts(), (3, 1));
        drop((third, fourth));
    }

    #[tokio::test]
    async fn when_every_connection_answers_a_new_one_waits() {
        let connections = Connections::new(2);
        let first = connections.admit().await;
        let second = connections.admit().await;
        let busy = (first.answering(), second.answering());
        let admitted = {
            let c = connections.clone();
            tokio::spawn(async move { c.admit().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!admitted.is_finished(), "no room while both answer");
        assert!(!first.close().is_cancelled() && !second.close().is_cancelled());
        // The second's answer ends: it is idle, and makes room.
        drop(busy.1);
        tokio::time::timeout(Duration::from_secs(5), second.close().cancelled())
            .await
            .expect("the connection gone idle is told to close");
        drop(second);
        let third = tokio::time::timeout(Duration::from_secs(5), admitted)
            .await
            .expect("room")
            .expect("admitted");
        assert!(!first.close().is_cancelled());
        drop((busy.0, first, third));
        assert_eq!(connections.counts(), (0, 1));
    }
}

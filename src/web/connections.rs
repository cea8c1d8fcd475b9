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
//!
//! A connection told to close holds its descriptor until its task has run,
//! so the cap counts it until then; an eighth of the cap is left for such
//! connections, so that a new one need not wait for each to be gone.

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
    /// Of those, told to close.
    closing: usize,
    /// Connections closed to make room, ever.
    displaced: u64,
    /// When that was last logged.
    said: Option<Instant>,
}

/// How often making room is logged, at most.
const SAY_EVERY: Duration = Duration::from_secs(60);

/// A connection this new is not closed to make room: its task has not
/// read it yet. A burst of accepts from the backlog would otherwise cycle
/// through the whole cap before any of their tasks ran, closing a health
/// check unread (seen with the release build under a flood). It also
/// bounds how fast a flood churns: the cap's worth of connections per
/// grace, 560 a second at the cap of 32.
const GRACE: Duration = Duration::from_millis(50);

struct Entry {
    /// Requests being answered.
    answering: usize,
    /// A whole request arrived with the connection and is not yet being
    /// answered: not idle.
    request_in: bool,
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

    /// Connections told to close that may still be open.
    fn margin(&self) -> usize {
        (self.cap / 8).max(1)
    }

    /// Makes room for one more connection and registers it: below the cap
    /// at once; at the cap by closing the connection idle longest, or, when
    /// every one is answering (or has its request in), once one ends or
    /// goes idle. `request_in`: a whole request arrived with it.
    pub(super) async fn admit(self: &Arc<Self>, request_in: bool) -> Slot {
        loop {
            let mut wait = None;
            {
                let mut open = self.lock();
                loop {
                    let live = open.all.len() - open.closing;
                    if open.all.len() < self.cap && live < self.cap - self.margin() {
                        return self.register(&mut open, request_in);
                    }
                    if live < self.cap - self.margin() || open.closing >= self.margin() {
                        break;
                    }
                    match self.displace(&mut open) {
                        Ok(()) => {}
                        Err(until) => {
                            wait = until;
                            break;
                        }
                    }
                }
            }
            // `notify_one` keeps a wake-up for a waiter that comes late.
            match wait {
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep(until) => {}
                        () = self.freed.notified() => {}
                    }
                }
                None => self.freed.notified().await,
            }
        }
    }

    fn register(self: &Arc<Self>, open: &mut Open, request_in: bool) -> Slot {
        let id = open.next;
        open.next += 1;
        let close = CancellationToken::new();
        let entry = Entry {
            answering: 0,
            request_in,
            idle_since: Instant::now(),
            close: close.clone(),
            closing: false,
        };
        open.all.insert(id, entry);
        Slot {
            connections: self.clone(),
            id,
            close,
        }
    }

    /// Tells the connection idle longest to close. If none may be closed:
    /// how long until the oldest idle one is past its [`GRACE`], or None if
    /// every one is answering a request (or has one in).
    fn displace(&self, open: &mut Open) -> Result<(), Option<Duration>> {
        let oldest = open
            .all
            .values_mut()
            .filter(|e| e.answering == 0 && !e.request_in && !e.closing)
            .min_by_key(|e| e.idle_since);
        let Some(entry) = oldest else {
            return Err(None);
        };
        let idle = entry.idle_since.elapsed();
        if idle < GRACE {
            return Err(Some(GRACE - idle));
        }
        entry.closing = true;
        entry.close.cancel();
        open.closing += 1;
        open.displaced += 1;
        if open.said.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
            open.said = Some(Instant::now());
            tracing::warn!(
                cap = self.cap,
                closed = open.displaced,
                "web: at the most connections: the one idle longest is closed for each new one"
            );
        }
        Ok(())
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
            entry.request_in = false;
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

    /// Whether a request is being answered on it now.
    pub(super) fn is_answering(&self) -> bool {
        let open = self.connections.lock();
        open.all.get(&self.id).is_some_and(|e| e.answering > 0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        if open.all.remove(&self.id).is_some_and(|e| e.closing) {
            open.closing -= 1;
        }
        drop(open);
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

    /// Three descriptors: two connections open and one closing.
    const CAP: usize = 3;

    async fn admitted(connections: &Arc<Connections>) -> Slot {
        tokio::time::timeout(Duration::from_secs(5), connections.admit(false))
            .await
            .expect("admitted")
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_longest_makes_room() {
        let connections = Connections::new(CAP);
        let first = admitted(&connections).await;
        let second = admitted(&connections).await;
        let _busy = first.answering();
        // The first answers a request: the second, idle longest, goes.
        let third = admitted(&connections).await;
        assert!(second.close().is_cancelled());
        assert!(!first.close().is_cancelled() && !third.close().is_cancelled());
        // It holds its descriptor until its task ends: the next waits.
        let next = {
            let c = connections.clone();
            tokio::spawn(async move { admitted(&c).await })
        };
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        assert_eq!(connections.counts(), (3, 1));
        drop(second);
        let fourth = next.await.expect("admitted");
        assert!(third.close().is_cancelled(), "the third was idle longest");
        assert!(!first.close().is_cancelled());
        drop(third);
        assert_eq!(connections.counts(), (2, 2));
        drop(fourth);
    }

    #[tokio::test]
    async fn a_new_connection_has_its_grace_and_one_with_its_request_in_is_kept() {
        let connections = Connections::new(CAP);
        let request_in = tokio::time::timeout(Duration::from_secs(5), connections.admit(true))
            .await
            .expect("admitted");
        let fresh = admitted(&connections).await;
        let next = {
            let c = connections.clone();
            tokio::spawn(async move { admitted(&c).await })
        };
        tokio::time::sleep(GRACE / 5).await;
        assert!(!next.is_finished(), "the fresh one is within its grace");
        assert!(!fresh.close().is_cancelled());
        drop(fresh);
        let third = next.await.expect("admitted once the fresh one was closed");
        assert!(
            !request_in.close().is_cancelled(),
            "a connection with its request in is not idle"
        );
        // Its request answered, it is idle like any other.
        drop(request_in.answering());
        drop(third);
    }

    #[tokio::test]
    async fn when_every_connection_answers_a_new_one_waits() {
        let connections = Connections::new(CAP);
        let first = admitted(&connections).await;
        let second = admitted(&connections).await;
        let busy = (first.answering(), second.answering());
        let next = {
            let c = connections.clone();
            tokio::spawn(async move { admitted(&c).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!next.is_finished(), "no room while both answer");
        assert!(!first.close().is_cancelled() && !second.close().is_cancelled());
        // The second's answer ends: it is idle, and makes room.
        drop(busy.1);
        let third = next.await.expect("admitted");
        assert!(second.close().is_cancelled());
        assert!(!first.close().is_cancelled());
        drop((busy.0, first, second, third));
        assert_eq!(connections.counts(), (0, 1));
    }
}

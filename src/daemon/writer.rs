//! The writer: every job outcome, lifecycle event and status record of the
//! node goes to Redis through here, as one pipeline per round trip holding
//! whatever is ready: one `finish.lua` call per queue for the outcomes, then
//! the events and status records. A busy daemon pays a fraction of a round
//! trip per job; an idle one writes at once. A slot waits for its own
//! outcome to be recorded, so an ack is never later than the flush after
//! the outcome is known, and the slots bound how many are pending.
//!
//! Outcomes are never dropped: a flush Redis refused is retried with backoff
//! (new outcomes join it) until it goes through, or the shutdown's grace
//! runs out. Events are a live feed, not a ledger: emitting never waits, a
//! full queue drops the event and counts it (heartbeat, stats, logs), and a
//! flush that failed drops its events. `seq` is given here, in the order
//! events are published (two slots emitting at once must not publish 6
//! before 5); an event dropped before it got here still leaves a gap, since
//! the next one that gets through carries the count of those skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::retry::Retry;
use crate::broker::Broker;
use crate::broker::events::{EventSink, StatusUpdate};
use crate::broker::queue::{Outcome, QueueStore};
use crate::broker::writes::QueueOutcomes;
use crate::event::{Draft, Event};
use crate::job::now_rfc3339;

/// Events and status updates waiting to be written, at most.
const EVENT_CAPACITY: usize = 16_384;
/// Most events in one flush.
const EVENT_BATCH: usize = 2_000;
/// Least time between two "events dropped" warnings.
const WARN_EVERY: Duration = Duration::from_secs(10);

enum Note {
    /// An event, stamped but for `seq`, and how many were dropped before it.
    Event(Event, u64),
    Status(StatusUpdate),
}

struct Request {
    queue: usize,
    item: Bytes,
    outcome: Outcome,
    reply: oneshot::Sender<Recorded>,
}

/// What became of an outcome sent to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Recorded, the job out of flight in the same step.
    Yes,
    /// Not recorded: the job was no longer in flight here.
    NotInFlight,
    /// Not recorded by this flush, after an earlier one failed: that one may
    /// have gone through before its reply was lost.
    AfterRetry,
    /// Not recorded: Redis stayed unreachable to the end of the shutdown.
    GaveUp,
}

/// The daemon's handle for emitting events; cheap to clone.
#[derive(Clone)]
pub(crate) struct Events {
    shared: Arc<EventShared>,
}

struct EventShared {
    tx: mpsc::Sender<Note>,
    node: String,
    /// Events dropped since the last one queued.
    skipped: AtomicU64,
    /// Events and updates dropped, ever.
    dropped: AtomicU64,
}

impl Events {
    /// Stamps and queues an event; never waits.
    pub(crate) fn emit(&self, draft: Draft) {
        let event = draft.stamp(&self.shared.node, now_rfc3339(), 0);
        let skipped = self.shared.skipped.swap(0, Ordering::Relaxed);
        if self
            .shared
            .tx
            .try_send(Note::Event(event, skipped))
            .is_err()
        {
            self.shared
                .skipped
                .fetch_add(skipped + 1, Ordering::Relaxed);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a status record update; never waits.
    pub(crate) fn status(&self, update: StatusUpdate) {
        if self.shared.tx.try_send(Note::Status(update)).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events and updates dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// The processors' handle for recording outcomes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Outcomes {
    tx: mpsc::UnboundedSender<Request>,
}

impl Outcomes {
    /// Records a job's outcome (queue by its index in the writer's stores),
    /// waiting for the flush that carries it.
    pub(crate) async fn record(&self, queue: usize, item: Bytes, outcome: Outcome) -> Recorded {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            queue,
            item,
            outcome,
            reply,
        };
        if self.tx.send(request).is_err() {
            return Recorded::GaveUp;
        }
        answer.await.unwrap_or(Recorded::GaveUp)
    }
}

/// Writes everything the daemon records or publishes.
pub(crate) struct Writer {
    broker: Broker,
    sink: EventSink,
    stores: Vec<QueueStore>,
    outcomes: mpsc::UnboundedReceiver<Request>,
    notes: mpsc::Receiver<Note>,
    events: Events,
    /// The last `seq` given.
    seq: u64,
}

/// The writer and its two handles.
pub(crate) fn writer(
    node: &str,
    broker: Broker,
    sink: EventSink,
    stores: Vec<QueueStore>,
) -> (Writer, Outcomes, Events) {
    with_capacity(node, broker, sink, stores, EVENT_CAPACITY)
}

fn with_capacity(
    node: &str,
    broker: Broker,
    sink: EventSink,
    stores: Vec<QueueStore>,
    capacity: usize,
) -> (Writer, Outcomes, Events) {
    let (tx, notes) = mpsc::channel(capacity);
    let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
    let events = Events {
        shared: Arc::new(EventShared {
            tx,
            node: node.to_owned(),
            skipped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }),
    };
    let writer = Writer {
        broker,
        sink,
        stores,
        outcomes,
        notes,
        events: events.clone(),
        seq: 0,
    };
    (writer, Outcomes { tx: outcomes_tx }, events)
}

impl Writer {
    /// Writes until `stop`, then flushes what is left. Retries failed
    /// outcome writes until `give_up`; the slots waiting on them are told.
    pub(crate) async fn run(mut self, stop: CancellationToken, give_up: CancellationToken) {
        let mut pending: Vec<Request> = Vec::new();
        let mut notes: Vec<Note> = Vec::new();
        let mut retry = Retry::new("recording job outcomes");
        let mut events_failing = false;
        let mut warned = (Instant::now(), 0u64);
        loop {
            if pending.is_empty() && notes.is_empty() {
                tokio::select! {
                    biased;
                    request = self.outcomes.recv() => match request {
                        Some(r) => pending.push(r),
                        None => break,
                    },
                    note = self.notes.recv() => match note {
                        Some(n) => notes.push(n),
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
            // Group commit: let the slots that are ready to run finish
            // their jobs first, so one flush carries all their outcomes. An
            // idle daemon has nothing else to run and loses nothing.
            tokio::task::yield_now().await;
            while let Ok(r) = self.outcomes.try_recv() {
                pending.push(r);
            }
            while notes.len() < EVENT_BATCH {
                match self.notes.try_recv() {
                    Ok(n) => notes.push(n),
                    Err(_) => break,
                }
            }
            let retrying = retry.failures() > 0;
            match self.flush(&pending, &notes).await {
                Ok(flags) => {
                    retry.succeeded();
                    if events_failing && !notes.is_empty() {
                        tracing::info!("publishing events works again");
                        events_failing = false;
                    }
                    for (request, recorded) in pending.drain(..).zip(flags) {
                        let answer = match (recorded, retrying) {
                            (true, _) => Recorded::Yes,
                            (false, false) => Recorded::NotInFlight,
                            (false, true) => Recorded::AfterRetry,
                        };
                        // A slot that stopped waiting (its task ended) needs no answer.
                        let _ignored = request.reply.send(answer);
                    }
                    notes.clear();
                }
                Err(e) => {
                    // The events may or may not have gone out; they are not
                    // sent twice. The outcomes stay for the next try.
                    if !notes.is_empty() {
                        self.events
                            .shared
                            .dropped
                            .fetch_add(notes.len() as u64, Ordering::Relaxed);
                        if !events_failing {
                            tracing::warn!(error = %e, "publishing events failed; dropping them until Redis answers");
                        }
                        events_failing = true;
                        notes.clear();
                    }
                    if pending.is_empty() {
                        continue;
                    }
                    if !retry.wait(&e, &give_up).await {
                        tracing::error!(
                            jobs = pending.len(),
                            "Redis unreachable at exit: outcomes not recorded; the jobs stay in flight \
                             and will be recovered by a reaper"
                        );
                        for request in pending.drain(..) {
                            let _ignored = request.reply.send(Recorded::GaveUp);
                        }
                    }
                }
            }
            let dropped = self.events.dropped();
            if dropped > warned.1 && warned.0.elapsed() >= WARN_EVERY {
                tracing::warn!(
                    dropped,
                    "events dropped: Redis could not take them as fast as they came"
                );
                warned = (Instant::now(), dropped);
            }
        }
        // Stopped: the processors are done; publish what is left, once.
        while let Ok(n) = self.notes.try_recv() {
            notes.push(n);
        }
        for chunk in notes.chunks(EVENT_BATCH) {
            if let Err(e) = self.flush(&[], chunk).await {
                tracing::warn!(error = %e, events = chunk.len(), "last events not published");
            }
        }
    }

    /// One round trip. Returns, per pending request, whether it was recorded.
    async fn flush(
        &mut self,
        pending: &[Request],
        notes: &[Note],
    ) -> Result<Vec<bool>, crate::broker::BrokerError> {
        let mut per_queue: Vec<Vec<usize>> = vec![Vec::new(); self.stores.len()];
        for (i, r) in pending.iter().enumerate() {
            per_queue[r.queue].push(i);
        }
        let groups: Vec<QueueOutcomes<'_>> = per_queue
            .iter()
            .enumerate()
            .filter(|(_, idx)| !idx.is_empty())
            .map(|(q, idx)| QueueOutcomes {
                store: &self.stores[q],
                entries: idx
                    .iter()
                    .map(|&i| (pending[i].item.as_ref(), &pending[i].outcome))
                    .collect(),
            })
            .collect();
        let mut events = Vec::new();
        let mut statuses = Vec::new();
        for n in notes {
            match n {
                Note::Event(event, skipped) => {
                    self.seq += 1 + skipped;
                    let mut event = event.clone();
                    event.seq = self.seq;
                    match serde_json::to_string(&event) {
                        Ok(json) => events.push(json),
                        Err(e) => tracing::error!(error = %e, "an event did not serialize"),
                    }
                }
                Note::Status(s) => statuses.push(s.clone()),
            }
        }
        let results = self
            .broker
            .write_batch(&groups, &self.sink, &events, &statuses)
            .await?;
        let mut flags = vec![false; pending.len()];
        let queues = per_queue.iter().filter(|idx| !idx.is_empty());
        for (idx, result) in queues.zip(results) {
            for (&i, recorded) in idx.iter().zip(result) {
                flags[i] = recorded;
            }
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisConfig;
    use crate::event::EventType;

    #[tokio::test]
    async fn a_full_event_queue_drops_and_counts_instead_of_waiting() {
        let broker = Broker::new(&RedisConfig::default()).expect("no I/O");
        let (mut writer, _outcomes, events) =
            with_capacity("n1", broker, EventSink::new("c", 0), Vec::new(), 2);
        for _ in 0..5 {
            events.emit(Draft::node(EventType::NodeStarted));
        }
        assert_eq!(events.dropped(), 3);
        let mut skips = Vec::new();
        while let Ok(Note::Event(_, skipped)) = writer.notes.try_recv() {
            skips.push(skipped);
        }
        assert_eq!(skips, [0, 0]);
        // The next event that gets through carries the three dropped, so
        // its seq leaves a gap of three: subscribers see what they missed.
        events.emit(Draft::node(EventType::NodeStopped));
        match writer.notes.try_recv() {
            Ok(Note::Event(e, skipped)) => {
                assert_eq!((e.kind, skipped), (EventType::NodeStopped, 3));
            }
            _ => panic!("the next event is queued"),
        }
    }
}

//! The publisher: lifecycle events and job status records leave the daemon
//! through one bounded queue and go to Redis in pipelines, as many per round
//! trip as are ready, so events cost a fraction of a round trip per job.
//!
//! Emitting never waits: if Redis is slow and the queue is full, the event
//! is dropped and counted (the count is in the node's heartbeat hash, shown
//! by `conveyor stats`, and logged). Each event's `seq` is taken when it is
//! emitted, so a dropped one shows up as a gap to subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::broker::events::{EventSink, StatusUpdate};
use crate::event::Draft;
use crate::job::now_rfc3339;

/// Events and status updates waiting for the publisher, at most.
const CAPACITY: usize = 16_384;
/// Most items in one pipeline.
const BATCH: usize = 1_000;
/// Least time between two "events dropped" warnings.
const WARN_EVERY: Duration = Duration::from_secs(10);

enum Outgoing {
    Event(String),
    Status(StatusUpdate),
}

/// The daemon's handle for emitting events; cheap to clone.
#[derive(Clone)]
pub(crate) struct Events {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Outgoing>,
    node: String,
    seq: AtomicU64,
    dropped: AtomicU64,
}

impl Events {
    /// The handle, and the publisher that drains it into `sink`.
    pub(crate) fn new(node: &str, broker: Broker, sink: EventSink) -> (Self, Publisher) {
        Self::with_capacity(node, broker, sink, CAPACITY)
    }

    fn with_capacity(
        node: &str,
        broker: Broker,
        sink: EventSink,
        capacity: usize,
    ) -> (Self, Publisher) {
        let (tx, rx) = mpsc::channel(capacity);
        let events = Self {
            shared: Arc::new(Shared {
                tx,
                node: node.to_owned(),
                seq: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        };
        let publisher = Publisher {
            rx,
            broker,
            sink,
            events: events.clone(),
        };
        (events, publisher)
    }

    /// Stamps and queues an event; never waits.
    pub(crate) fn emit(&self, draft: Draft) {
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let event = draft.stamp(&self.shared.node, now_rfc3339(), seq);
        match serde_json::to_string(&event) {
            Ok(json) => self.send(Outgoing::Event(json)),
            Err(e) => tracing::error!(error = %e, "an event did not serialize"),
        }
    }

    /// Queues a status record update; never waits.
    pub(crate) fn status(&self, update: StatusUpdate) {
        self.send(Outgoing::Status(update));
    }

    fn send(&self, item: Outgoing) {
        if self.shared.tx.try_send(item).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events and updates dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Drains the queue into Redis.
pub(crate) struct Publisher {
    rx: mpsc::Receiver<Outgoing>,
    broker: Broker,
    sink: EventSink,
    events: Events,
}

impl Publisher {
    /// Publishes until `stop`, then flushes what is queued (one try) and returns.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut failing = false;
        let mut warned = (Instant::now(), 0u64);
        loop {
            let first = tokio::select! {
                biased;
                item = self.rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
                _ = stop.cancelled() => break,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            self.flush(batch, &mut failing).await;
            let dropped = self.events.dropped();
            if dropped > warned.1 && warned.0.elapsed() >= WARN_EVERY {
                tracing::warn!(
                    dropped,
                    "events dropped: Redis could not take them as fast as they came"
                );
                warned = (Instant::now(), dropped);
            }
        }
        let mut rest = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            rest.push(item);
        }
        while !rest.is_empty() {
            let chunk: Vec<Outgoing> = rest.drain(..rest.len().min(BATCH)).collect();
            self.flush(chunk, &mut failing).await;
        }
    }

    async fn flush(&self, batch: Vec<Outgoing>, failing: &mut bool) {
        let n = batch.len() as u64;
        let (mut events, mut statuses) = (Vec::new(), Vec::new());
        for item in batch {
            match item {
                Outgoing::Event(e) => events.push(e),
                Outgoing::Status(s) => statuses.push(s),
            }
        }
        match self
            .broker
            .publish_batch(&self.sink, &events, &statuses)
            .await
        {
            Ok(()) if *failing => {
                tracing::info!("publishing events works again");
                *failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                // Events are a live feed, not a ledger: a batch Redis would
                // not take is dropped and counted rather than held back.
                self.events.shared.dropped.fetch_add(n, Ordering::Relaxed);
                if !*failing {
                    tracing::warn!(error = %e, "publishing events failed; dropping them until Redis answers");
                }
                *failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisConfig;
    use crate::event::EventType;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let broker = Broker::new(&RedisConfig::default()).expect("no I/O");
        let (events, mut publisher) =
            Events::with_capacity("n1", broker, EventSink::new("c", 0), 2);
        for _ in 0..5 {
            events.emit(Draft::node(EventType::NodeStarted));
        }
        assert_eq!(events.dropped(), 3);
        let mut seqs = Vec::new();
        while let Ok(Outgoing::Event(json)) = publisher.rx.try_recv() {
            let e: crate::event::Event = serde_json::from_str(&json).expect("json");
            seqs.push(e.seq);
        }
        // The dropped ones still took their numbers: subscribers see the gap.
        assert_eq!(seqs, [1, 2]);
        events.emit(Draft::node(EventType::NodeStopped));
        match publisher.rx.try_recv() {
            Ok(Outgoing::Event(json)) => assert!(json.contains("\"seq\":6"), "{json}"),
            _ => panic!("the next event is queued"),
        }
    }
}

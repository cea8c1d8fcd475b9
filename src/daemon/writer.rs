//! The writer: every job outcome, lifecycle event and status record of the
//! node goes to Redis through here, as one pipeline per round trip holding
//! whatever is ready: one `finish.lua` call per queue for the outcomes, then
//! the events and status records. A busy daemon pays a fraction of a round
//! trip per job; an idle one writes outcomes at once. A slot waits for its
//! own outcome to be recorded, so an ack is never later than the flush after
//! the outcome is known, and the slots bound how many are pending. Events
//! on their own wait a little for outcomes to go with (see [`LINGER`]).
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
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::retry::Retry;
use crate::broker::events::{EventSink, StatusUpdate};
use crate::broker::history::Sample;
use crate::broker::queue::{Outcome, QueueStore};
use crate::broker::writes::{Lane, Notices, QueueOutcomes};
use crate::broker::{Broker, BrokerError};
use crate::clock::{Clock, now_ms, rfc3339_ms};
use crate::event::{Draft, EventBatch, Packed, Stamp};

/// Events and status updates waiting to be written, at most.
const EVENT_CAPACITY: usize = 16_384;
/// Most events in one flush.
const EVENT_BATCH: usize = 2_000;
/// Flushes under way at once. Two, so that outcomes that come in while a
/// flush is under way need not wait for it (119k vs 109k jobs/s with
/// outcome events, medians of 5). Each flush is started before the next is
/// prepared, so Redis runs them in order (see [`Writer::run`]).
const IN_FLIGHT: usize = 2;
/// Least outcomes that start a flush while another is under way.
const SECOND_FLUSH_LEAST: usize = 16;
/// Longest that events wait for outcomes to travel with when nothing else
/// is ready. Outcome events are emitted once their outcome is recorded, so
/// on a busy daemon they would otherwise take a round trip of their own
/// just before the next outcomes come: that cost a fifth of the throughput
/// on one thread (169k vs 218k jobs/s, medians of 15), and nothing once
/// they waited. An idle daemon's events go out this much later.
const LINGER: Duration = Duration::from_millis(1);
/// How often a writer asks whether anyone subscribes to the events channel,
/// at most, while it writes (not with every flush: that was one command of
/// every flush, a third of a command per job at 8 slots).
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// Most events kept for a subscriber who may have come since the last
/// look: with more, the next flush looks.
const HELD_MAX: usize = 10_000;
/// Least time between two "events dropped" warnings.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// An event, when it happened (ms since the epoch), and how many were
/// dropped before it.
struct Note(Packed, i64, u64);

struct Request {
    /// The job's queue (a reload may add queues, so it travels with each).
    store: QueueStore,
    item: Bytes,
    outcome: Outcome,
    /// The job's status record, written in the step that records the
    /// outcome (and only if it does).
    status: Option<StatusUpdate>,
    /// Its history buckets, counted with the outcome.
    sample: Sample,
    reply: oneshot::Sender<Recorded>,
    /// Flushes that carried it and failed.
    failed_flushes: u32,
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
    /// Status records that tell no outcome ("running", "waiting" at
    /// enqueue), apart from events: a flush takes them all, so one is never
    /// written after the outcome that follows it.
    statuses: mpsc::Sender<StatusUpdate>,
    node: String,
    /// Events dropped since the last one queued.
    skipped: AtomicU64,
    /// Events and updates dropped, ever.
    dropped: AtomicU64,
}

impl Events {
    /// Queues an event; never waits. The writer stamps it and writes it
    /// straight into the text of its flush.
    pub(crate) fn emit(&self, draft: Draft<'_>) {
        let at = now_ms();
        let skipped = self.shared.skipped.swap(0, Ordering::Relaxed);
        if self
            .shared
            .tx
            .try_send(Note(draft.pack(), at, skipped))
            .is_err()
        {
            self.shared
                .skipped
                .fetch_add(skipped + 1, Ordering::Relaxed);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a status record update that tells no outcome (outcomes carry
    /// their own); never waits.
    pub(crate) fn status(&self, update: StatusUpdate) {
        if self.shared.statuses.try_send(update).is_err() {
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
    /// Records the outcome of a job of `store`'s queue, and its status
    /// record with it, waiting for the flush that carries them.
    pub(crate) async fn record(
        &self,
        store: &QueueStore,
        item: Bytes,
        outcome: Outcome,
        status: Option<StatusUpdate>,
        sample: Sample,
    ) -> Recorded {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            store: store.clone(),
            item,
            outcome,
            status,
            sample,
            reply,
            failed_flushes: 0,
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
    outcomes: mpsc::UnboundedReceiver<Request>,
    notes: mpsc::Receiver<Note>,
    statuses: mpsc::Receiver<StatusUpdate>,
    events: Events,
    /// The last `seq` given.
    seq: u64,
    /// The last event time written, and the stamp of that millisecond.
    stamp: (i64, Stamp),
    /// The connection of the flushes under way; replaced after a failure.
    lane: Option<Lane>,
    /// Whether anyone subscribed to the events channel at the last look.
    /// While nobody does, events only go to the replay stream (Redis would
    /// drop them) and are kept in `held` until the next look, at most
    /// [`LOOK_EVERY`] later: if someone has come since, they are published
    /// at the head of the next flush, so a new subscriber misses nothing
    /// that happened after it came.
    heard: bool,
    /// When the last look was sent.
    looked: Instant,
    /// Events of flushes sent unheard since the last look.
    held: EventBatch,
    /// Events of a flush sent unheard, to publish with the next.
    republish: EventBatch,
    /// Flushes under way whose events went unpublished: until they land,
    /// new events are not published either (they would overtake those).
    unheard_in_flight: usize,
    /// Outcomes of flushes that failed, to send again.
    retried: Vec<Request>,
    retry: Retry,
    /// Whether the last flush with events failed (logged once per outage).
    events_failing: bool,
}

/// The writer and its two handles.
/// Its retries against an unreachable Redis go by `clock`.
pub(crate) fn writer(
    node: &str,
    broker: Broker,
    sink: EventSink,
    clock: &Clock,
) -> (Writer, Outcomes, Events) {
    with_capacity(node, broker, sink, EVENT_CAPACITY, clock)
}

fn with_capacity(
    node: &str,
    broker: Broker,
    sink: EventSink,
    capacity: usize,
    clock: &Clock,
) -> (Writer, Outcomes, Events) {
    let (tx, notes) = mpsc::channel(capacity);
    let (statuses_tx, statuses) = mpsc::channel(capacity);
    let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
    let events = Events {
        shared: Arc::new(EventShared {
            tx,
            statuses: statuses_tx,
            node: node.to_owned(),
            skipped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }),
    };
    let writer = Writer {
        broker,
        sink,
        outcomes,
        notes,
        statuses,
        events: events.clone(),
        seq: 0,
        stamp: (i64::MIN, Stamp::new(node, "")),
        lane: None,
        heard: false,
        looked: Instant::now() - LOOK_EVERY,
        held: EventBatch::default(),
        republish: EventBatch::default(),
        unheard_in_flight: 0,
        retried: Vec::new(),
        retry: Retry::new("recording job outcomes", clock),
        events_failing: false,
    };
    (writer, Outcomes { tx: outcomes_tx }, events)
}

/// One flush on its way: what it carries and, once landed, what Redis said.
struct Flight {
    requests: Vec<Request>,
    /// How many events it carried.
    events: usize,
    /// Its events, if it was sent while nobody listened.
    unheard: EventBatch,
    /// Per request, whether it was recorded; and the channel's subscribers,
    /// if it asked.
    result: Result<(Vec<bool>, Option<u64>), BrokerError>,
}

impl Flight {
    /// What it learnt of the subscribers: `None` if it failed, `Some(None)`
    /// if it did not ask, else how many subscribed when it ran.
    fn subscribers(&self) -> Option<Option<u64>> {
        self.result.as_ref().ok().map(|&(_, n)| n)
    }
}

/// A flush ready to go: owned, so it can be in flight while the next one is
/// prepared.
struct Prepared {
    broker: Broker,
    lane: Option<Lane>,
    sink: EventSink,
    requests: Vec<Request>,
    events: EventBatch,
    republish: EventBatch,
    heard: bool,
    statuses: Vec<StatusUpdate>,
    /// Whether to ask how many subscribe.
    ask: bool,
}

impl Prepared {
    /// One round trip. Answers, per request, whether it was recorded.
    async fn send(self) -> Flight {
        // Grouped by queue, with each group's requests: a node runs a
        // handful of queues, so a scan finds the group.
        let mut groups: Vec<QueueOutcomes<'_>> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (i, r) in self.requests.iter().enumerate() {
            let entry = (r.item.as_ref(), &r.outcome, r.status.as_ref(), r.sample);
            match groups.iter().position(|g| g.store.same_as(&r.store)) {
                Some(g) => {
                    groups[g].entries.push(entry);
                    members[g].push(i);
                }
                None => {
                    groups.push(QueueOutcomes {
                        store: &r.store,
                        entries: vec![entry],
                    });
                    members.push(vec![i]);
                }
            }
        }
        let result = match &self.lane {
            Some(lane) => {
                self.broker
                    .write_batch(
                        lane,
                        &groups,
                        &self.sink,
                        &Notices {
                            republish: &self.republish,
                            events: &self.events,
                            heard: self.heard,
                            statuses: &self.statuses,
                            ask: self.ask,
                        },
                    )
                    .await
            }
            None => Err(BrokerError::Unreachable {
                url: self.broker.url(),
                reason: "no connection for writing".into(),
            }),
        }
        .map(|written| {
            let mut flags = vec![false; self.requests.len()];
            for (idx, result) in members.iter().zip(written.recorded) {
                for (&i, recorded) in idx.iter().zip(result) {
                    flags[i] = recorded;
                }
            }
            (flags, written.subscribers)
        });
        drop(groups);
        Flight {
            events: self.events.len() + self.republish.len(),
            unheard: if self.heard {
                EventBatch::default()
            } else {
                self.events
            },
            requests: self.requests,
            result,
        }
    }
}

impl Writer {
    /// Writes until `stop`, then flushes what is left. Retries failed
    /// outcome writes until `give_up`; the slots waiting on them are told.
    ///
    /// Up to [`IN_FLIGHT`] flushes are under way at once, on one lane. A
    /// flush's pipeline reaches the connection when its future is first
    /// polled, so each is polled at once: one polled later than the next
    /// would publish its events after the next's (seq out of order).
    pub(crate) async fn run(mut self, stop: CancellationToken, give_up: CancellationToken) {
        let mut pending: Vec<Request> = Vec::new();
        let mut notes: Vec<Note> = Vec::new();
        let mut statuses: Vec<StatusUpdate> = Vec::new();
        let mut flights = FuturesOrdered::new();
        let mut warned = (Instant::now(), 0u64);
        // Until when events alone may wait for outcomes.
        let mut linger: Option<tokio::time::Instant> = None;
        loop {
            // A second flush starts while one is under way only for enough
            // outcomes: a few at a time would cost Redis a round trip each
            // for little (jobs are taken ahead of the slots, so a worker
            // does not wait for its last outcome to be written).
            let second = flights.len() < IN_FLIGHT;
            if second && !flights.is_empty() {
                while let Ok(r) = self.outcomes.try_recv() {
                    pending.push(r);
                }
            }
            let room = flights.is_empty()
                || (second && pending.len() + self.retried.len() >= SECOND_FLUSH_LEAST);
            let no_outcomes = pending.is_empty() && self.retried.is_empty();
            let idle =
                no_outcomes && notes.is_empty() && statuses.is_empty() && self.republish.is_empty();
            // Events alone wait for the flush under way, then up to LINGER
            // for outcomes, and go with whatever came meanwhile: a round
            // trip of their own would cost more than writing them.
            let lingering = if !idle && no_outcomes && flights.is_empty() {
                let now = tokio::time::Instant::now();
                let until = *linger.get_or_insert(now + LINGER);
                (now < until).then_some(until)
            } else {
                linger = None;
                None
            };
            let hold = no_outcomes && (!flights.is_empty() || lingering.is_some());
            // Events sent unheard are kept for a subscriber who may have
            // come since; the next look, at most LOOK_EVERY later, tells.
            let look = (!self.held.is_empty() && flights.is_empty())
                .then(|| tokio::time::Instant::from_std(self.looked + LOOK_EVERY));
            if !room || idle || hold {
                tokio::select! {
                    biased;
                    Some(flight) = flights.next(), if !flights.is_empty() => {
                        self.land(flight, &give_up).await;
                        continue;
                    }
                    request = self.outcomes.recv(), if second => match request {
                        Some(r) => {
                            pending.push(r);
                            if !room {
                                // Look again: enough for a second flush?
                                continue;
                            }
                        }
                        None => break,
                    },
                    // Look again: events that come alone linger.
                    note = self.notes.recv(), if room && !hold => match note {
                        Some(n) => {
                            notes.push(n);
                            continue;
                        }
                        None => break,
                    },
                    status = self.statuses.recv(), if room && !hold => match status {
                        Some(s) => {
                            statuses.push(s);
                            continue;
                        }
                        None => break,
                    },
                    () = async {
                        if let Some(until) = lingering {
                            tokio::time::sleep_until(until).await;
                        }
                    }, if lingering.is_some() => continue,
                    // A flush of its own, to look.
                    () = async {
                        if let Some(at) = look {
                            tokio::time::sleep_until(at).await;
                        }
                    }, if look.is_some() && !hold => {}
                    _ = stop.cancelled(), if flights.is_empty() && self.retried.is_empty() => break,
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
            // All of them: a job's "running" was queued before its outcome
            // came, so it goes in this flush, ahead of the outcome, or in
            // an earlier one.
            while let Ok(s) = self.statuses.try_recv() {
                statuses.push(s);
            }
            let mut requests = std::mem::take(&mut self.retried);
            requests.append(&mut pending);
            // A lane to a master that is no longer the master is replaced.
            if self.lane.as_ref().is_none_or(Lane::is_stale) {
                self.lane = self.broker.lane().await.ok();
            }
            let prepared = self.prepare(
                requests,
                std::mem::take(&mut notes),
                std::mem::take(&mut statuses),
            );
            flights.push_back(prepared.send());
            // Start it now (and land whatever is done meanwhile).
            while let Poll::Ready(Some(flight)) = futures::poll!(flights.next()) {
                self.land(flight, &give_up).await;
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
        // Stopped: the processors are done; land what is under way and
        // publish what is left, once.
        while let Some(flight) = flights.next().await {
            self.heard_by(flight.subscribers(), flight.unheard);
            if let Ok((flags, _)) = &flight.result {
                answer(flight.requests, flags);
            }
        }
        while let Ok(n) = self.notes.try_recv() {
            notes.push(n);
        }
        while let Ok(s) = self.statuses.try_recv() {
            statuses.push(s);
        }
        if self.lane.as_ref().is_none_or(Lane::is_stale) {
            self.lane = self.broker.lane().await.ok();
        }
        while !notes.is_empty()
            || !statuses.is_empty()
            || !self.republish.is_empty()
            || !self.held.is_empty()
        {
            // Each of these looks: nothing held is left behind unasked.
            self.looked = Instant::now() - LOOK_EVERY;
            let chunk: Vec<Note> = notes.drain(..notes.len().min(EVENT_BATCH)).collect();
            let flight = self
                .prepare(Vec::new(), chunk, std::mem::take(&mut statuses))
                .send()
                .await;
            self.heard_by(flight.subscribers(), flight.unheard);
            if let Err(e) = flight.result {
                tracing::warn!(error = %e, events = flight.events, "last events not published");
                break;
            }
        }
    }

    /// Takes in what became of a flush: answers its slots, or keeps its
    /// outcomes to send again (waiting with backoff while Redis is down).
    async fn land(&mut self, flight: Flight, give_up: &CancellationToken) {
        self.heard_by(flight.subscribers(), flight.unheard);
        match flight.result {
            Ok((flags, _)) => {
                self.retry.succeeded();
                if self.events_failing && flight.events > 0 {
                    tracing::info!("publishing events works again");
                    self.events_failing = false;
                }
                answer(flight.requests, &flags);
            }
            Err(e) => {
                // A new connection for what follows.
                self.lane = None;
                // The events may or may not have gone out; they are not
                // sent twice. The outcomes go again.
                if flight.events > 0 {
                    self.events
                        .shared
                        .dropped
                        .fetch_add(flight.events as u64, Ordering::Relaxed);
                    if !self.events_failing {
                        tracing::warn!(error = %e, "publishing events failed; dropping them until Redis answers");
                    }
                    self.events_failing = true;
                }
                self.retried
                    .extend(flight.requests.into_iter().map(|mut r| {
                        r.failed_flushes += 1;
                        r
                    }));
                if !self.retried.is_empty() && !self.retry.wait(&e, give_up).await {
                    tracing::error!(
                        jobs = self.retried.len(),
                        "Redis unreachable at exit: outcomes not recorded; the jobs stay in \
                         flight and will be recovered by a reaper"
                    );
                    for request in self.retried.drain(..) {
                        let _unheard = request.reply.send(Recorded::GaveUp);
                    }
                }
            }
        }
    }

    /// Takes in what a flush learnt of the subscribers (see
    /// [`Flight::subscribers`]) with the events it sent unpublished: if
    /// anyone subscribed, those and the ones held since the last look go
    /// out with the next flush; if nobody did, they are dropped (they are
    /// in the replay stream); if it did not ask, they wait for the next
    /// look, or go out with the next flush if someone listened at the last.
    fn heard_by(&mut self, subscribers: Option<Option<u64>>, unheard: EventBatch) {
        if !unheard.is_empty() {
            self.unheard_in_flight -= 1;
        }
        match subscribers {
            None => {}
            Some(None) if self.heard => self.republish.append(unheard),
            Some(None) => self.held.append(unheard),
            Some(Some(n)) => {
                self.heard = n > 0;
                let held = std::mem::take(&mut self.held);
                if self.heard {
                    self.republish.append(held);
                    self.republish.append(unheard);
                }
            }
        }
    }

    /// Numbers the events (in the order they will be published) and packs
    /// everything into an owned flush.
    fn prepare(
        &mut self,
        requests: Vec<Request>,
        notes: Vec<Note>,
        statuses: Vec<StatusUpdate>,
    ) -> Prepared {
        let mut events = EventBatch::default();
        for Note(event, at, skipped) in notes {
            self.seq += 1 + skipped;
            if self.stamp.0 != at {
                let node = &self.events.shared.node;
                self.stamp = (at, Stamp::new(node, &rfc3339_ms(at)));
            }
            events.push(&event.draft(), &self.stamp.1, self.seq);
        }
        // Published now only if no earlier events still wait for a look.
        let heard = self.heard && self.unheard_in_flight == 0 && self.held.is_empty();
        if !heard && !events.is_empty() {
            self.unheard_in_flight += 1;
        }
        let ask = self.looked.elapsed() >= LOOK_EVERY || self.held.len() >= HELD_MAX;
        if ask {
            self.looked = Instant::now();
        }
        Prepared {
            broker: self.broker.clone(),
            lane: self.lane.clone(),
            sink: self.sink.clone(),
            requests,
            events,
            republish: std::mem::take(&mut self.republish),
            heard,
            statuses,
            ask,
        }
    }
}

/// Tells each slot what became of its outcome.
fn answer(requests: Vec<Request>, flags: &[bool]) {
    for (request, &recorded) in requests.into_iter().zip(flags) {
        let answer = match (recorded, request.failed_flushes) {
            (true, _) => Recorded::Yes,
            (false, 0) => Recorded::NotInFlight,
            (false, _) => Recorded::AfterRetry,
        };
        // A slot that stopped waiting (its task ended) needs no answer.
        let _unheard = request.reply.send(answer);
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
            with_capacity("n1", broker, EventSink::new("c", 0), 2, &Clock::system());
        for _ in 0..5 {
            events.emit(Draft::node(EventType::NodeStarted));
        }
        assert_eq!(events.dropped(), 3);
        let mut skips = Vec::new();
        while let Ok(Note(_, _, skipped)) = writer.notes.try_recv() {
            skips.push(skipped);
        }
        assert_eq!(skips, [0, 0]);
        // The next event that gets through carries the three dropped, so
        // its seq leaves a gap of three: subscribers see what they missed.
        events.emit(Draft::node(EventType::NodeStopped));
        match writer.notes.try_recv() {
            Ok(Note(e, _, skipped)) => {
                let mut batch = EventBatch::default();
                batch.push(&e.draft(), &Stamp::new("n1", "t"), 9);
                let e = batch.iter().collect::<String>();
                assert!(e.contains(r#""type":"node.stopped""#), "{e}");
                assert_eq!(skipped, 3);
            }
            _ => panic!("the next event is queued"),
        }
    }
}

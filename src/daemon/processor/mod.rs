//! The processor of one queue: a fetcher that takes a worker slot before it
//! takes a job, and `concurrency` slot tasks that run jobs and record their
//! outcomes.
//!
//! While the queue has a backlog, the fetcher moves a batch of up to the free
//! places in flight in one Lua call: ahead of the slots, so that a worker
//! that finishes a job finds the next one here rather than waiting a round
//! trip for it. When the queue is empty it blocks in `BLMOVE` for one job,
//! holding a free slot for it, so an idle daemon reacts at once and takes
//! nothing another could run sooner. Either way every job is parked in this
//! node's in-flight list before anything else happens to it, and leaves it
//! only in the script that records its outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::flows::FlowEnds;
use super::isolation::{Isolation, Pending};
use super::ratelimit::RateLimiter;
use super::retry::Retry;
use super::throughput::Throughput;
use super::writer::{Events, Outcomes};
use crate::broker::BrokerError;
use crate::broker::queue::{Fetcher, Move, QueueStore, RecoverTo, Recovered, Taken};
use crate::clock::{Clock, now_ms};
use crate::config::QueueConfig;
use crate::envelope::parse_item;
use crate::event::{Draft, EventType};
use crate::handlers::Handler;
use crate::job::JobState;
use crate::metrics::{Metrics, QueueMetrics};
use crate::traces::Traces;

mod run;

/// How soon a queue at its `limit` or its groups' limits looks again for
/// room when none of its jobs here ends first (another node's jobs end
/// without telling this one).
const LIMIT_POLL: Duration = Duration::from_millis(50);
/// Most jobs taken in one Lua call.
const MAX_BATCH: usize = 500;

/// How much work, at the handlers' recent pace, a processor takes ahead of
/// its free slots while its queue has a backlog: enough that a slot that
/// finishes a job finds the next one here instead of waiting a Redis round
/// trip for it, and that takes come in batches, not one job at a time. Jobs
/// that take longer than this per slot are not taken ahead at all: another
/// node may have a free slot for them sooner.
const AHEAD_WINDOW: Duration = Duration::from_millis(5);
/// Most jobs taken ahead of the slots: the queue's concurrency, and at least
/// this many, so that a few slots of short jobs are fed in batches too.
const AHEAD_LEAST: usize = 32;

/// How long one `BLMOVE` blocks. Short enough that a fetcher notices a stop
/// within a second without cancelling a pop halfway; the wait costs Redis
/// nothing and a job pushed meanwhile is delivered at once.
pub(crate) const BLOCK: Duration = Duration::from_secs(1);
/// How long a blocking pop being cut short may go on before its `CLIENT
/// UNBLOCK` is sent again.
const UNBLOCK_AGAIN: Duration = Duration::from_millis(20);

/// How often the fetcher looks for orphans in its in-flight list even when
/// no fetch has failed. A fetch that timed out while Redis was stalled can
/// still run when Redis resumes, after the reconcile that followed the
/// failure (commands queued on different connections run in no set order),
/// and leave jobs in flight that no slot holds; nothing else would ever
/// return them while this node lives. One LRANGE per queue per period.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// A taken job on its way to a slot task, with its reservation.
struct Work {
    item: Bytes,
    /// Its entry in [`Processor::held`].
    held: usize,
    /// Without a slot when taken ahead of the slots (from a backlog): the
    /// slot task waits for one.
    reserved: Reservation,
    /// For a suspect (`lua/take.lua`'s verdict): keeps fetchers from
    /// taking anything until it is done.
    suspect: Option<Pending>,
}

/// What a job holds from before it is taken: one of the places in flight
/// (`concurrency` plus the most taken ahead, see [`AHEAD_LEAST`]; let go of
/// when its outcome is recorded) and, unless it is taken ahead of the
/// slots, one of the `concurrency` slots (let go of when its handler is
/// done; a job taken ahead waits for one in its slot task). So at most
/// `concurrency` handlers run, and the places bound how many jobs of the
/// queue are in this node's in-flight list.
struct Reservation {
    slot: Option<OwnedSemaphorePermit>,
    flight: OwnedSemaphorePermit,
}

/// A job's hold on one of the queue's `concurrency` slots, counted in
/// [`Processor::busy`]. It is let go of as soon as the handler is done, so
/// that the fetcher takes the next job while this one's outcome is being
/// written: a worker (an exec process, an SMTP connection) does not wait a
/// Redis round trip between jobs. The slot task goes on to record the
/// outcome; there are twice as many slot tasks as slots for that, and as
/// many places in flight (see [`Reservation`]).
pub(super) struct Busy<'a> {
    processor: &'a Processor,
    since: Instant,
    _permit: OwnedSemaphorePermit,
}

impl<'a> Busy<'a> {
    fn new(processor: &'a Processor, permit: OwnedSemaphorePermit) -> Self {
        processor.running.fetch_add(1, Ordering::Relaxed);
        Self {
            processor,
            since: Instant::now(),
            _permit: permit,
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let p = self.processor;
        p.running.fetch_sub(1, Ordering::Relaxed);
        // The mean time a slot is held, weighing the last eight jobs most.
        let took = (self.since.elapsed().as_nanos() as u64).max(1);
        let mean = p.slot_mean_ns.load(Ordering::Relaxed);
        let mean = match mean {
            0 => took,
            _ => mean - mean / 8 + took / 8,
        };
        p.slot_mean_ns.store(mean, Ordering::Relaxed);
    }
}

/// Runs the jobs of one queue.
pub(crate) struct Processor {
    name: Arc<str>,
    store: QueueStore,
    config: QueueConfig,
    handler: Arc<dyn Handler>,
    slots: Arc<Semaphore>,
    /// Places in this node's in-flight list: twice the slots.
    flight: Arc<Semaphore>,
    /// Jobs being run right now (the fetcher's held slot is not one).
    running: AtomicUsize,
    /// How long a job holds its slot, on average lately (ns; 0 before the
    /// first): how many to take ahead of the slots goes by it.
    slot_mean_ns: AtomicU64,
    /// Jobs taken ahead of the slots, waiting for one.
    waiting: AtomicUsize,
    /// Told when a job taken ahead gets its slot and at most `wake_at`
    /// are left waiting.
    started: Notify,
    /// See `started`: what the fetcher waits for.
    wake_at: AtomicUsize,
    /// A job of a queue with a `limit` or a `group` left this node's
    /// in-flight list: room its limits may give again. The fetcher of a
    /// queue at its limits takes again then, not only every
    /// [`LIMIT_POLL`]: a job ending here is the usual way room comes back,
    /// and a fixed wait left the slots idle most of it.
    ended: Notify,
    /// Jobs finished with since start, whatever their outcome: the "jobs
    /// handled" of `systemctl status`.
    handled: AtomicU64,
    /// Every item this processor has taken and not yet finished. A fetch
    /// whose reply was lost (Redis killed or stalled mid-call) may still have
    /// moved jobs into the in-flight list; after such a failure the fetcher
    /// compares the list with this and requeues what nobody holds. A short
    /// critical section: one insert per batch, one remove per job.
    held: Mutex<Slab<Bytes>>,
    /// Woken when this processor schedules a job, so the scheduler learns of
    /// an earlier due time without polling faster.
    scheduler: Arc<Notify>,
    /// When the fetcher's current Redis call began (ms since the epoch), 0
    /// when it is not in one. A fetcher waiting for a free slot is healthy; one
    /// inside a call far longer than any timeout allows is stuck.
    call_started_ms: AtomicU64,
    /// The queue's rate limit, if it has one.
    rate_limit: Option<RateLimiter>,
    /// The node-wide gate that lets suspects run alone.
    isolation: Arc<Isolation>,
    /// Lifecycle events and status records.
    events: Events,
    /// Where outcomes are recorded.
    outcomes: Outcomes,
    /// Runs finished in the last minute.
    completions: Throughput,
    /// This queue's counters on `/metrics`.
    pub(crate) metrics: QueueMetrics,
    /// Tripped at the very end of a shutdown: stop retrying outcome writes
    /// against an unreachable Redis (the jobs stay in flight for a reaper).
    give_up: CancellationToken,
    /// Whether the queue is paused (`conveyor pause`): the fetcher takes
    /// nothing while it is.
    paused: tokio::sync::watch::Sender<bool>,
    /// When a failed job's retry is due, and the backoff against an
    /// unreachable Redis, go by it.
    pub(super) clock: Clock,
    /// The running jobs `conveyor cancel` can stop, by id.
    cancels: Mutex<HashMap<String, CancellationToken>>,
    /// Each attempt's span, when tracing is on.
    traces: Option<Arc<Traces>>,
    /// Where the ends of flow nodes go once recorded.
    flows: FlowEnds,
}

/// A running job's registration for `conveyor cancel`, withdrawn on drop.
pub(super) struct Cancellable<'a> {
    processor: &'a Processor,
    id: String,
    /// Cancelled when the job is to stop.
    pub(super) token: CancellationToken,
}

impl Drop for Cancellable<'_> {
    fn drop(&mut self) {
        let mut cancels = self
            .processor
            .cancels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cancels.remove(&self.id);
    }
}

/// What every processor of a node shares.
#[derive(Clone)]
pub(crate) struct NodeShared {
    /// Wakes the scheduler.
    pub(crate) scheduler: Arc<Notify>,
    /// Lets suspects run alone.
    pub(crate) isolation: Arc<Isolation>,
    /// Lifecycle events and status records.
    pub(crate) events: Events,
    /// Where outcomes are recorded.
    pub(crate) outcomes: Outcomes,
    /// Ends outcome retries at the very end of a shutdown.
    pub(crate) give_up: CancellationToken,
    /// The counters of `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// The node's clock.
    pub(crate) clock: Clock,
    /// The node's tracer; `None` when tracing is off.
    pub(crate) traces: Option<Arc<Traces>>,
    /// Where the ends of flow nodes go once recorded.
    pub(crate) flows: FlowEnds,
}

impl Processor {
    pub(crate) fn new(
        name: &str,
        store: QueueStore,
        config: QueueConfig,
        handler: Arc<dyn Handler>,
        shared: NodeShared,
    ) -> Self {
        let NodeShared {
            scheduler,
            isolation,
            events,
            outcomes,
            give_up,
            metrics,
            clock,
            traces,
            flows,
        } = shared;
        let slots = Arc::new(Semaphore::new(config.concurrency as usize));
        let flight = Arc::new(Semaphore::new(places(config.concurrency)));
        let rate_limit = config
            .rate_limit
            .clone()
            .map(|limit| RateLimiter::new(limit, handler.clone()));
        Self {
            name: name.into(),
            store,
            config,
            handler,
            slots,
            flight,
            running: AtomicUsize::new(0),
            slot_mean_ns: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            started: Notify::new(),
            ended: Notify::new(),
            wake_at: AtomicUsize::new(0),
            handled: AtomicU64::new(0),
            held: Mutex::new(Slab::new()),
            call_started_ms: AtomicU64::new(0),
            rate_limit,
            scheduler,
            isolation,
            events,
            outcomes,
            completions: Throughput::default(),
            metrics: metrics.queue(name),
            give_up,
            paused: tokio::sync::watch::Sender::new(false),
            cancels: Mutex::new(HashMap::new()),
            flows,
            clock,
            traces,
        }
    }

    /// Registers a running job so that `conveyor cancel` can stop it.
    pub(super) fn cancellable(&self, id: &str) -> Cancellable<'_> {
        let token = CancellationToken::new();
        let mut cancels = self.cancels.lock().unwrap_or_else(PoisonError::into_inner);
        cancels.insert(id.to_owned(), token.clone());
        Cancellable {
            processor: self,
            id: id.to_owned(),
            token,
        }
    }

    /// Stops those of `ids` that run here.
    pub(crate) fn cancel_running(&self, ids: &[String]) {
        let cancels = self.cancels.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if let Some(token) = cancels.get(id) {
                tracing::info!(queue = %self.name, %id, "cancel asked; stopping the job");
                token.cancel();
            }
        }
    }

    /// Pauses or resumes taking jobs.
    pub(crate) fn set_paused(&self, paused: bool) {
        let changed = self
            .paused
            .send_if_modified(|p| std::mem::replace(p, paused) != paused);
        if changed {
            match paused {
                true => tracing::info!(queue = %self.name, "queue paused: taking no new jobs"),
                false => tracing::info!(queue = %self.name, "queue resumed"),
            }
        }
    }

    /// Whether the queue is paused.
    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// The queue's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The queue's slots.
    pub(crate) fn concurrency(&self) -> u32 {
        self.config.concurrency
    }

    /// The largest payload this queue runs (`envelope::check_size`); a
    /// larger item is dead-lettered whole, or beyond the envelope's
    /// allowance as the first bytes and size its stand-in keeps.
    pub(crate) fn max_payload_bytes(&self) -> usize {
        self.config.max_payload_bytes
    }

    /// The queue's store.
    pub(crate) fn store(&self) -> &QueueStore {
        &self.store
    }

    /// Jobs being run right now.
    pub(crate) fn busy(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Runs of this queue's jobs finished here in the last minute.
    pub(crate) fn last_minute(&self) -> u64 {
        self.completions.last_minute()
    }

    /// Jobs finished with since start, whatever their outcome.
    pub(crate) fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// How long the fetcher has been inside its current Redis call, if it is
    /// in one. Every call is bounded by the block time plus the response
    /// timeout, so a much longer one means the fetch loop is stuck.
    pub(crate) fn fetch_call_age(&self) -> Option<Duration> {
        let started = self.call_started_ms.load(Ordering::Relaxed);
        (started != 0)
            .then(|| Duration::from_millis(now_ms().saturating_sub(started as i64) as u64))
    }

    /// Makes the fetcher look as if its current Redis call began `ago`.
    #[cfg(test)]
    pub(crate) fn pretend_fetch_call_since(&self, ago: Duration) {
        let started = now_ms() - ago.as_millis() as i64;
        self.call_started_ms
            .store(started as u64, Ordering::Relaxed);
    }

    /// Runs one fetcher Redis call, noting when it began.
    async fn in_call<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        self.call_started_ms
            .store(now_ms() as u64, Ordering::Relaxed);
        let result = call.await;
        self.call_started_ms.store(0, Ordering::Relaxed);
        result
    }

    /// Fetches and runs jobs until `stop_fetching`, then finishes the jobs it
    /// holds. Running jobs are abandoned (requeued at the head) on `abandon`.
    /// Returns when the fetcher has stopped and every slot is idle.
    pub(crate) async fn run(
        self: Arc<Self>,
        stop_fetching: CancellationToken,
        abandon: CancellationToken,
    ) {
        // One task per place in flight: a job waiting for a slot, running
        // or having its outcome recorded.
        let places = places(self.config.concurrency);
        let (tx, rx) = async_channel::bounded::<Work>(places);
        let fetcher = tokio::spawn(self.clone().fetch(tx, stop_fetching));
        let mut slots = JoinSet::new();
        let slot = |slots: &mut JoinSet<()>| {
            slots.spawn(self.clone().slot(rx.clone(), abandon.clone()));
        };
        for _ in 0..places {
            slot(&mut slots);
        }
        while let Some(ended) = slots.join_next().await {
            if let Err(e) = ended {
                // A job's panic is caught around the handler; this is a bug in
                // the slot itself. Replace the slot so capacity is not lost (a
                // replacement ends at once if the channel is closed and empty).
                tracing::error!(queue = %self.name, error = %e, "worker slot crashed; replacing it");
                slot(&mut slots);
            }
        }
        if let Err(e) = fetcher.await {
            tracing::error!(queue = %self.name, error = %e, "fetcher crashed");
        }
    }

    async fn fetch(self: Arc<Self>, tx: async_channel::Sender<Work>, stop: CancellationToken) {
        let mut fetcher: Option<Fetcher> = None;
        let mut backlog = true;
        let mut suspect = false;
        let mut reconciled = Instant::now();
        let mut retry = Retry::new("fetching jobs", &self.clock);
        // A queue without `group` (now) takes from its list alone: jobs an
        // earlier configuration sorted into groups go back to its head first.
        let mut ungrouped = self.store.group().is_some();
        let mut undebounced = self.store.debounce().is_some();
        loop {
            if !undebounced {
                match self.in_call(self.store.undebounce()).await {
                    Ok(moved) => {
                        undebounced = true;
                        if moved > 0 {
                            tracing::info!(queue = %self.name, moved, "the queue has no debounce now: its ready and debounced jobs are back at its head");
                        }
                    }
                    Err(e) => {
                        if !retry.wait(&e, &stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if !ungrouped {
                match self.in_call(self.store.ungroup()).await {
                    Ok(moved) => {
                        ungrouped = true;
                        if moved > 0 {
                            tracing::info!(queue = %self.name, moved, "the queue has no group now: the jobs its groups held are back at its head");
                        }
                    }
                    Err(e) => {
                        if !retry.wait(&e, &stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if suspect || reconciled.elapsed() >= RECONCILE_EVERY {
                match self.in_call(self.reconcile()).await {
                    Ok(_) => {
                        suspect = false;
                        reconciled = Instant::now();
                    }
                    Err(e) => {
                        if !retry.wait(&e, &stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            // Nothing is taken while a suspect has the node to itself, nor
            // while the queue is paused.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.isolation.open() => {}
            }
            let mut paused = self.paused.subscribe();
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = paused.wait_for(|p| !*p) => {}
            }
            // From a backlog, jobs are taken ahead of the slots, as many
            // as the slots run in AHEAD_WINDOW, and again once half of
            // those have started. Otherwise a slot first, then a job: a job
            // that may arrive at any time is not taken before this node
            // can run it.
            let ahead = if backlog { self.ahead() } else { 0 };
            if ahead > 0 {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    () = self.until_waiting(ahead / 2) => {}
                }
            }
            // A place in flight first, and a slot unless taken ahead.
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                reserved = self.reserve(ahead == 0) => reserved,
            };
            // Paused while it waited for a slot: wait for the resume.
            if self.is_paused() {
                drop(first);
                continue;
            }
            let mut permits = vec![first];
            let taken = if backlog {
                let most = match ahead {
                    0 => MAX_BATCH,
                    _ => (self.slots.available_permits() + ahead)
                        .saturating_sub(self.waiting.load(Ordering::Relaxed))
                        .clamp(1, MAX_BATCH),
                };
                while permits.len() < most {
                    match self.try_reserve(ahead == 0) {
                        Some(reserved) => permits.push(reserved),
                        None => break,
                    }
                }
                let max_payload_bytes = self.config.max_payload_bytes;
                let limit = self.config.limit;
                self.in_call(self.store.take(permits.len(), max_payload_bytes, limit))
                    .await
                    .inspect(|taken| {
                        backlog = taken.limited || taken.items.len() == permits.len();
                    })
            } else {
                self.in_call(self.blocking_pop(&mut fetcher, &stop))
                    .await
                    .inspect(|taken| {
                        // After a job arrives there may be more behind it.
                        backlog = taken.limited || !taken.items.is_empty();
                    })
            };
            match taken {
                Ok(Taken {
                    items,
                    suspect,
                    limited,
                    debounced,
                }) => {
                    retry.succeeded();
                    for id in &debounced {
                        self.emit(EventType::Debounced, |kind| {
                            Draft::job(kind, &*self.name, id, 0)
                        });
                    }
                    let items: Vec<Bytes> = items.into_iter().map(Bytes::from).collect();
                    let keys: Vec<usize> = {
                        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                        items.iter().map(|item| held.insert(item.clone())).collect()
                    };
                    let ahead = permits.iter().filter(|r| r.slot.is_none()).count();
                    // Only the taken ones: the permits of the rest go back.
                    let ahead = ahead.min(items.len());
                    self.waiting.fetch_add(ahead, Ordering::Relaxed);
                    for ((item, held), reserved) in items.into_iter().zip(keys).zip(permits) {
                        // Marked before the next take, so that nothing joins
                        // a suspect in the in-flight list (it comes alone).
                        let pending = suspect.then(|| self.isolation.pending());
                        let work = Work {
                            item,
                            held,
                            reserved,
                            suspect: pending,
                        };
                        if tx.send(work).await.is_err() {
                            // Only if every slot is gone; the shutdown sweep requeues the job.
                            tracing::error!(queue = %self.name, "no worker slot left to run a taken job");
                        }
                    }
                    // At the queue's limits: look again when a job ends
                    // here, or shortly (jobs end on any node).
                    if limited {
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => break,
                            () = self.ended.notified() => {}
                            () = tokio::time::sleep(LIMIT_POLL) => {}
                        }
                    }
                }
                Err(e) => {
                    fetcher = None;
                    suspect = true;
                    drop(permits);
                    if !retry.wait(&e, &stop).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!(queue = %self.name, "fetcher stopped");
    }

    /// Requeues, at the head of the queue, items in this node's in-flight
    /// list that no slot holds: jobs a failed fetch moved without our seeing
    /// them, even long after the failure (see [`RECONCILE_EVERY`]). Only the
    /// fetcher adds to the list (or a stale call of its own, whose items
    /// nobody holds), and it is here, so the list
    /// can only shrink meanwhile; an item finished between the two snapshots
    /// looks orphaned but its requeue finds it gone and does nothing.
    async fn reconcile(&self) -> Result<usize, BrokerError> {
        let listed = self.store.own_inflight().await?;
        let held: Vec<Bytes> = {
            let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.iter().map(|(_, item)| item.clone()).collect()
        };
        let mut unclaimed: HashMap<&[u8], usize> = HashMap::new();
        for item in &held {
            *unclaimed.entry(item.as_ref()).or_default() += 1;
        }
        let orphans: Vec<Vec<u8>> = listed
            .into_iter()
            .filter(|item| match unclaimed.get_mut(item.as_slice()) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .collect();
        let requeued = self.requeue_leftovers(orphans, "orphaned").await?;
        if requeued > 0 {
            tracing::warn!(queue = %self.name, requeued, "requeued jobs a failed fetch had left in flight unseen");
        }
        Ok(requeued)
    }

    /// The last step of a shutdown for this queue: everything still in this
    /// node's in-flight list (a job popped as fetching stopped, an outcome
    /// Redis would not take) goes back to the head of the queue.
    pub(crate) async fn sweep(&self) {
        let mut retry = Retry::new("requeueing in-flight jobs at shutdown", &self.clock);
        loop {
            let result = async {
                let left = self.store.own_inflight().await?;
                if left.is_empty() {
                    return Ok::<_, BrokerError>(true);
                }
                let requeued = self.requeue_leftovers(left, "shutdown").await?;
                tracing::info!(queue = %self.name, requeued, "requeued in-flight jobs at the head of the queue");
                Ok(false)
            }
            .await;
            match result {
                Ok(true) => return,
                Ok(false) => retry.succeeded(),
                Err(e) => {
                    if !retry.wait(&e, &self.give_up).await {
                        tracing::error!(queue = %self.name, "Redis unreachable: in-flight jobs stay for a reaper to recover");
                        return;
                    }
                }
            }
        }
    }

    /// Moves items (oldest first) of this node's in-flight list back to the
    /// head of the queue in their order. A raw payload goes back wrapped in
    /// an envelope, so the id of its `job.recovered` event is the one it
    /// keeps. Returns how many moved.
    async fn requeue_leftovers(
        &self,
        items: Vec<Vec<u8>>,
        reason: &str,
    ) -> Result<usize, BrokerError> {
        let mut moves = Vec::with_capacity(items.len());
        let mut ids = Vec::with_capacity(items.len());
        for item in items.into_iter().rev() {
            // Read under the queue's limit: an oversized raw payload goes
            // back as it came, not wrapped in an envelope, so it is still
            // dead-lettered with its original bytes and size.
            let (replacement, id) = match parse_item(&item, self.config.max_payload_bytes) {
                Ok(p) if p.was_raw => (p.envelope.to_json().into_bytes(), Some((p.envelope.id, 0))),
                Ok(p) => (item.clone(), Some((p.envelope.id, p.envelope.attempt))),
                Err(_) => (item.clone(), None),
            };
            let status = id
                .as_ref()
                .and_then(|(id, attempt)| self.status(id, JobState::Waiting, *attempt, Vec::new));
            ids.push(id);
            moves.push(Move {
                item,
                to: RecoverTo::Queue,
                replacement,
                status,
                flow: None,
            });
        }
        let done = self.store.recover(&self.store.keys().node, &moves).await?;
        let mut requeued = 0;
        for (result, id) in done.into_iter().zip(ids) {
            if result == Recovered::Requeued {
                requeued += 1;
                self.metrics.recovered(1);
                if let Some((id, attempt)) = id {
                    self.emit(EventType::Recovered, |kind| {
                        Draft::job(kind, &*self.name, &id, attempt).reason(reason)
                    });
                }
            }
        }
        Ok(requeued)
    }

    /// One blocking fetch (see [`Fetcher`]). A stop cuts the wait short
    /// through `CLIENT UNBLOCK` rather than by dropping the call, so a job
    /// taken at that instant is still seen (and run).
    async fn blocking_pop(
        &self,
        fetcher: &mut Option<Fetcher>,
        stop: &CancellationToken,
    ) -> Result<Taken, BrokerError> {
        let f = match fetcher {
            Some(f) => f,
            None => fetcher.insert(self.store.fetcher(BLOCK).await?),
        };
        let client_id = f.client_id();
        let mut paused = self.paused.subscribe();
        let pop = f.next(self.config.max_payload_bytes, self.config.limit);
        tokio::pin!(pop);
        tokio::select! {
            biased;
            result = &mut pop => result,
            _ = async { paused.wait_for(|p| *p).await.map(drop) }, if !self.is_paused() => {
                // Paused while waiting: the pop ends now, not at its block
                // time. A job it moved just then still runs (it was taken
                // before the pause was seen).
                self.cut_short(client_id, pop).await
            }
            _ = stop.cancelled() => self.cut_short(client_id, pop).await,
        }
    }

    /// Ends blocking pop `pop` of connection `client_id` now. `CLIENT
    /// UNBLOCK` goes over another connection, so it may reach Redis before
    /// the pop itself does and find nothing to end: it is sent again every
    /// [`UNBLOCK_AGAIN`] until the pop ends.
    async fn cut_short(
        &self,
        client_id: u64,
        mut pop: std::pin::Pin<&mut impl Future<Output = Result<Taken, BrokerError>>>,
    ) -> Result<Taken, BrokerError> {
        let list = &self.store.keys().list;
        loop {
            if let Err(e) = self.store.broker().unblock(client_id, list).await {
                tracing::debug!(error = %e, "could not cut a blocking pop short; it ends within its block time");
                return pop.await;
            }
            tokio::select! {
                biased;
                result = &mut pop => return result,
                () = tokio::time::sleep(UNBLOCK_AGAIN) => {}
            }
        }
    }

    /// Runs the jobs the fetcher hands over, one at a time, until the
    /// fetcher stops and nothing is left.
    async fn slot(self: Arc<Self>, rx: async_channel::Receiver<Work>, abandon: CancellationToken) {
        let closed = "the processor's semaphores are never closed";
        while let Ok(work) = rx.recv().await {
            let Work {
                item,
                held,
                reserved: Reservation { slot, flight },
                suspect,
            } = work;
            let slot = match slot {
                Some(slot) => Some(slot),
                None => {
                    // Taken ahead: it waits for a slot. Such jobs are short
                    // (see AHEAD_WINDOW), so they run even if the queue is
                    // paused or the node begins to stop meanwhile, as the
                    // jobs taken before; only if the running ones had to be
                    // abandoned does one stay in flight unstarted, for the
                    // shutdown's sweep to put back.
                    let slot = tokio::select! {
                        biased;
                        _ = abandon.cancelled() => None,
                        slot = self.slots.clone().acquire_owned() => Some(slot.expect(closed)),
                    };
                    let left = self.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
                    if left <= self.wake_at.load(Ordering::Relaxed) {
                        self.started.notify_one();
                    }
                    slot.filter(|_| !abandon.is_cancelled())
                }
            };
            if let Some(slot) = slot {
                let busy = Busy::new(&self, slot);
                self.process(item, suspect.is_some(), busy, &abandon).await;
                self.handled.fetch_add(1, Ordering::Relaxed);
            }
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(held);
            drop(flight);
            if self.config.limit.is_some() || self.config.group.is_some() {
                self.ended.notify_one();
            }
            drop(suspect);
        }
    }

    /// Waits for a slot if `with_slot`, then for a place in flight.
    async fn reserve(&self, with_slot: bool) -> Reservation {
        let closed = "the processor's semaphores are never closed";
        let slot = match with_slot {
            true => Some(self.slots.clone().acquire_owned().await.expect(closed)),
            false => None,
        };
        let flight = self.flight.clone().acquire_owned().await.expect(closed);
        Reservation { slot, flight }
    }

    /// A place in flight and, if `with_slot`, a slot, if free now.
    fn try_reserve(&self, with_slot: bool) -> Option<Reservation> {
        let slot = match with_slot {
            true => Some(self.slots.clone().try_acquire_owned().ok()?),
            false => None,
        };
        let flight = self.flight.clone().try_acquire_owned().ok()?;
        Some(Reservation { slot, flight })
    }

    /// How many jobs to take ahead of the slots now: as many as they run
    /// in [`AHEAD_WINDOW`] at their recent pace, bounded; none before a job
    /// has run.
    fn ahead(&self) -> usize {
        let mean = self.slot_mean_ns.load(Ordering::Relaxed);
        if mean == 0 {
            return 0;
        }
        let n = u128::from(self.config.concurrency) * AHEAD_WINDOW.as_nanos() / u128::from(mean);
        (n as usize).min(most_ahead(self.config.concurrency))
    }

    /// Returns once at most `n` jobs taken ahead wait for a slot.
    async fn until_waiting(&self, n: usize) {
        self.wake_at.store(n, Ordering::Relaxed);
        loop {
            let started = self.started.notified();
            if self.waiting.load(Ordering::Relaxed) <= n {
                return;
            }
            started.await;
        }
    }
}

/// The most jobs a processor of `concurrency` slots takes ahead of them.
fn most_ahead(concurrency: u32) -> usize {
    (concurrency as usize).max(AHEAD_LEAST)
}

/// A processor's places in flight: its slots and the most taken ahead.
fn places(concurrency: u32) -> usize {
    concurrency as usize + most_ahead(concurrency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::daemon::testing;

    /// Takes one millisecond.
    struct Brief;

    #[async_trait::async_trait]
    impl crate::handlers::Handler for Brief {
        async fn handle(&self, _job: &crate::Job) -> Result<(), crate::job::HandlerError> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(())
        }
    }

    /// From a backlog of short jobs, a queue of 2 slots takes jobs ahead of
    /// them (more in flight at once than the 2 running and 2 being
    /// recorded that taking only for free slots allowed), and never more
    /// than its places in flight (2 + 32); every job runs.
    #[tokio::test]
    async fn short_jobs_are_taken_ahead_of_the_slots_within_the_places() {
        use redis::AsyncCommands as _;
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let mut config = testing::config(&redis, "mail");
        config.queues.get_mut("mail").expect("queue").concurrency = 2;
        let clock = Clock::system();
        let (processor, writer) =
            testing::processor_with(&config, "mail", "node-1", &clock, Arc::new(Brief));
        let keys = processor.store().keys().clone();
        let jobs: Vec<String> = (0..600).map(|i| testing::job(&format!("j{i}"))).collect();
        let _: () = conn.rpush(&keys.list, &jobs).await.expect("RPUSH");
        let (stop_writer, stop_fetching) = (CancellationToken::new(), CancellationToken::new());
        let writer = tokio::spawn(writer.run(stop_writer.clone(), CancellationToken::new()));
        let run = tokio::spawn(
            processor
                .clone()
                .run(stop_fetching.clone(), CancellationToken::new()),
        );
        let mut most_in_flight = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (waiting, in_flight): (usize, usize) = redis::pipe()
                .llen(&keys.list)
                .llen(&keys.inflight)
                .query_async(&mut conn)
                .await
                .expect("LLEN");
            most_in_flight = most_in_flight.max(in_flight);
            if waiting == 0 && in_flight == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{waiting} waiting, {in_flight} in flight"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(processor.handled(), 600);
        assert!(
            most_in_flight > 4,
            "taken ahead: at most {most_in_flight} in flight"
        );
        assert!(
            most_in_flight <= places(2),
            "{most_in_flight} in flight, more than the places"
        );
        stop_fetching.cancel();
        run.await.expect("the processor stops");
        stop_writer.cancel();
        writer.await.expect("the writer stops");
    }

    /// A `CLIENT UNBLOCK` that reaches Redis before the pop it is to end
    /// (here: the pop is held back 100 ms) still ends it, well before its
    /// block time; sent once, it found nothing and the pop blocked a second.
    #[tokio::test]
    async fn a_pop_cut_short_ends_even_when_the_unblock_reaches_redis_first() {
        let redis = TestRedis::start();
        let config = testing::config(&redis, "mail");
        let processor = testing::processor(&config, "mail", "node-1", &Clock::system());
        let mut fetcher = processor.store().fetcher(BLOCK).await.expect("fetcher");
        let client_id = fetcher.client_id();
        let pop = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            fetcher.next(1 << 20, None).await
        };
        tokio::pin!(pop);
        let started = Instant::now();
        let taken = processor.cut_short(client_id, pop).await.expect("no error");
        assert!(taken.items.is_empty());
        assert!(
            started.elapsed() < BLOCK / 2,
            "the pop blocked on: {:?}",
            started.elapsed()
        );
    }
}

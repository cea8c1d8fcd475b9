//! The processor of one queue: a fetcher that takes a worker slot before it
//! takes a job, and `concurrency` slot tasks that run jobs and record their
//! outcomes.
//!
//! The fetcher moves a batch of up to the free slots in one Lua call while
//! the queue has a backlog, and blocks in `BLMOVE` when it is empty, so an
//! idle daemon reacts at once and a busy one pays a fraction of a round trip
//! per job. Either way every job is parked in this node's in-flight list
//! before anything else happens to it, and leaves it only in the script that
//! records its outcome.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use slab::Slab;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::isolation::Isolation;
use super::ratelimit::RateLimiter;
use super::retry::Retry;
use crate::broker::BrokerError;
use crate::broker::queue::{Fetcher, Outcome, QueueStore, RecoverTo};
use crate::config::{QueueConfig, human};
use crate::handlers::{Handler, HandlerError};
use crate::job::{Envelope, Job, Malformed, backoff_delay, now_ms, now_rfc3339, parse_item};

/// Most jobs taken in one Lua call.
const MAX_BATCH: usize = 100;

/// How long one `BLMOVE` blocks. Short enough that a fetcher notices a stop
/// within a second without cancelling a pop halfway; the wait costs Redis
/// nothing and a job pushed meanwhile is delivered at once.
pub(crate) const BLOCK: Duration = Duration::from_secs(1);

/// A taken job on its way to a slot, with the slot's permit.
struct Work {
    item: Bytes,
    /// Its entry in [`Processor::held`].
    held: usize,
    _permit: OwnedSemaphorePermit,
}

/// Runs the jobs of one queue.
pub(crate) struct Processor {
    name: Arc<str>,
    store: QueueStore,
    config: QueueConfig,
    handler: Arc<dyn Handler>,
    slots: Arc<Semaphore>,
    /// Jobs being run right now (the fetcher's held slot is not one).
    running: AtomicUsize,
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
    /// Tripped at the very end of a shutdown: stop retrying outcome writes
    /// against an unreachable Redis (the jobs stay in flight for a reaper).
    give_up: CancellationToken,
}

impl Processor {
    pub(crate) fn new(
        name: &str,
        store: QueueStore,
        config: QueueConfig,
        handler: Arc<dyn Handler>,
        scheduler: Arc<Notify>,
        isolation: Arc<Isolation>,
        give_up: CancellationToken,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.concurrency as usize));
        let rate_limit = config.rate_limit.clone().map(RateLimiter::new);
        Self {
            name: name.into(),
            store,
            config,
            handler,
            slots,
            running: AtomicUsize::new(0),
            handled: AtomicU64::new(0),
            held: Mutex::new(Slab::new()),
            call_started_ms: AtomicU64::new(0),
            rate_limit,
            scheduler,
            isolation,
            give_up,
        }
    }

    /// The queue's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The queue's store.
    pub(crate) fn store(&self) -> &QueueStore {
        &self.store
    }

    /// Jobs being run right now.
    pub(crate) fn busy(&self) -> usize {
        self.running.load(Ordering::Relaxed)
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
        let concurrency = self.config.concurrency as usize;
        let (tx, rx) = async_channel::bounded::<Work>(concurrency);
        let fetcher = tokio::spawn(self.clone().fetch(tx, stop_fetching));
        let mut slots = JoinSet::new();
        for _ in 0..concurrency {
            slots.spawn(self.clone().slot(rx.clone(), abandon.clone()));
        }
        while let Some(ended) = slots.join_next().await {
            if let Err(e) = ended {
                // A job's panic is caught around the handler; this is a bug in
                // the slot itself. Replace the slot so capacity is not lost (a
                // replacement ends at once if the channel is closed and empty).
                tracing::error!(queue = %self.name, error = %e, "worker slot crashed; replacing it");
                slots.spawn(self.clone().slot(rx.clone(), abandon.clone()));
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
        let mut retry = Retry::new("fetching jobs");
        loop {
            if suspect {
                match self.in_call(self.reconcile()).await {
                    Ok(_) => suspect = false,
                    Err(e) => {
                        if !retry.wait(&e, &stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            // Nothing is taken while a suspect has the node to itself.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.isolation.open() => {}
            }
            // A slot first, then a job: a job is never taken that no slot can run.
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                permit = self.slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
            };
            let mut permits = vec![first];
            let taken = if backlog {
                while permits.len() < MAX_BATCH {
                    match self.slots.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => break,
                    }
                }
                self.in_call(self.store.take(permits.len()))
                    .await
                    .inspect(|items| {
                        backlog = items.len() == permits.len();
                    })
            } else {
                self.in_call(self.blocking_pop(&mut fetcher, &stop))
                    .await
                    .map(|item| {
                        // After a job arrives there may be more behind it.
                        backlog = item.is_some();
                        item.into_iter().collect()
                    })
            };
            match taken {
                Ok(items) => {
                    retry.succeeded();
                    let items: Vec<Bytes> = items.into_iter().map(Bytes::from).collect();
                    let keys: Vec<usize> = {
                        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                        items.iter().map(|item| held.insert(item.clone())).collect()
                    };
                    for ((item, held), permit) in items.into_iter().zip(keys).zip(permits) {
                        let work = Work {
                            item,
                            held,
                            _permit: permit,
                        };
                        if tx.send(work).await.is_err() {
                            // Only if every slot is gone; the shutdown sweep requeues the job.
                            tracing::error!(queue = %self.name, "no worker slot left to run a taken job");
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
    /// them. Only the fetcher adds to the list, and it is here, so the list
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
        let mut orphans = Vec::new();
        for item in listed.iter().rev() {
            match unclaimed.get_mut(item.as_slice()) {
                Some(n) if *n > 0 => *n -= 1,
                _ => orphans.push((item.clone(), RecoverTo::Queue, item.clone())),
            }
        }
        if orphans.is_empty() {
            return Ok(0);
        }
        let (requeued, _) = self
            .store
            .recover(&self.store.keys().node, &orphans)
            .await?;
        if requeued > 0 {
            tracing::warn!(queue = %self.name, requeued, "requeued jobs a failed fetch had left in flight unseen");
        }
        Ok(requeued as usize)
    }

    /// One `BLMOVE`. A stop cuts the wait short through `CLIENT UNBLOCK`
    /// rather than by dropping the call, so a job moved at that instant is
    /// still seen (and run).
    async fn blocking_pop(
        &self,
        fetcher: &mut Option<Fetcher>,
        stop: &CancellationToken,
    ) -> Result<Option<Vec<u8>>, BrokerError> {
        let f = match fetcher {
            Some(f) => f,
            None => fetcher.insert(self.store.fetcher(BLOCK).await?),
        };
        let client_id = f.client_id();
        let pop = f.next();
        tokio::pin!(pop);
        tokio::select! {
            biased;
            result = &mut pop => result,
            _ = stop.cancelled() => {
                if let Err(e) = self.store.broker().unblock(client_id).await {
                    tracing::debug!(error = %e, "could not cut a blocking pop short; it ends within its block time");
                }
                pop.await
            }
        }
    }

    async fn slot(self: Arc<Self>, rx: async_channel::Receiver<Work>, abandon: CancellationToken) {
        while let Ok(work) = rx.recv().await {
            self.running.fetch_add(1, Ordering::Relaxed);
            self.process(work.item, &abandon).await;
            self.running.fetch_sub(1, Ordering::Relaxed);
            self.handled.fetch_add(1, Ordering::Relaxed);
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(work.held);
        }
    }

    async fn process(&self, item: Bytes, abandon: &CancellationToken) {
        match parse_item(&item, self.config.max_payload_bytes) {
            Ok(parsed) => {
                let job = Job::new(self.name.clone(), item, parsed);
                let span = tracing::info_span!("job", id = %job.id(), queue = %self.name, attempt = job.attempt());
                self.run_job(job, abandon).instrument(span).await;
            }
            Err(malformed) => self.dead_letter_malformed(item, malformed).await,
        }
    }

    async fn run_job(&self, job: Job, abandon: &CancellationToken) {
        let max_attempts = job.max_attempts(self.config.max_attempts);
        if job.envelope().attempt >= max_attempts {
            let reason = format!(
                "no attempts left: {} of {max_attempts} already made",
                job.envelope().attempt
            );
            tracing::warn!(error = %reason, "dead-lettered without running");
            return self
                .record(job.item(), self.dead(&job, &reason, false))
                .await;
        }
        let timeout = job
            .envelope()
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.timeout);
        if let Some(wait) = self.over_rate_limit(&job).await {
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "over the rate limit; scheduled for when a slot frees"
            );
            let outcome = Outcome::Snooze {
                envelope: job.envelope().to_json(),
                due_ms: now_ms() + wait.as_millis() as i64,
            };
            self.record(job.item(), outcome).await;
            self.scheduler.notify_one();
            return;
        }
        let suspect = !job.was_raw() && job.envelope().deliveries > 0;
        let (_entered, _isolated);
        if suspect {
            tracing::info!(
                deliveries = job.envelope().deliveries,
                "its daemon died while running it: running it alone"
            );
            tokio::select! {
                hold = self.isolation.isolate() => _isolated = hold,
                _ = abandon.cancelled() => return self.record(job.item(), Outcome::Requeue).await,
            }
        } else {
            match self.isolation.try_enter() {
                Some(entered) => _entered = entered,
                None => {
                    tracing::debug!("a suspect has the node to itself; job given back");
                    return self.record(job.item(), Outcome::GiveBack).await;
                }
            }
        }
        let started = Instant::now();
        let run = AssertUnwindSafe(self.handler.handle(&job)).catch_unwind();
        let result = tokio::select! {
            biased;
            result = tokio::time::timeout(timeout, run) => result,
            _ = abandon.cancelled() => {
                tracing::info!("still running at the end of the shutdown timeout; requeued at the head of its queue");
                return self.record(job.item(), Outcome::Requeue).await;
            }
        };
        let elapsed = started.elapsed();
        let error = match result {
            Ok(Ok(Ok(()))) => {
                tracing::debug!(ms = elapsed.as_millis() as u64, "succeeded");
                let outcome = Outcome::Succeeded {
                    id: job.id().to_owned(),
                    unique_key: job.envelope().unique_key.clone(),
                };
                return self.record(job.item(), outcome).await;
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(panic)) => {
                HandlerError::transient(format!("handler panicked: {}", panic_message(&*panic)))
            }
            Err(_elapsed) => HandlerError::transient(format!("timed out after {}", human(timeout))),
        };
        let outcome = if error.is_permanent() {
            tracing::warn!(%error, "failed permanently; dead-lettered");
            self.dead(&job, &error.to_string(), true)
        } else if job.attempt() >= max_attempts {
            let reason = format!(
                "{error} (attempt {} of {max_attempts}, none left)",
                job.attempt()
            );
            tracing::warn!(error = %reason, "failed; no attempts left, dead-lettered");
            self.dead(&job, &reason, true)
        } else {
            let delay = backoff_delay(&self.config.backoff, job.attempt());
            tracing::warn!(%error, retry_in = %human(Duration::from_millis(delay.as_millis() as u64)), "failed; will retry");
            Outcome::Retry {
                envelope: job.failed_envelope(&error.to_string()).to_json(),
                due_ms: now_ms() + delay.as_millis() as i64,
            }
        };
        let scheduled = matches!(outcome, Outcome::Retry { .. });
        self.record(job.item(), outcome).await;
        if scheduled {
            self.scheduler.notify_one();
        }
    }

    /// How long the job must wait for its queue's rate limit; `None` if it
    /// may start now. Retries while Redis is unreachable: a limit that
    /// protects a provider is not skipped because Redis blinked.
    async fn over_rate_limit(&self, job: &Job) -> Option<Duration> {
        let limiter = self.rate_limit.as_ref()?;
        let mut retry = Retry::new("checking the rate limit");
        loop {
            match limiter.check(&self.store, job).await {
                Ok(wait) => {
                    retry.succeeded();
                    return wait;
                }
                Err(e) => {
                    if !retry.wait(&e, &self.give_up).await {
                        return None;
                    }
                }
            }
        }
    }

    fn dead(&self, job: &Job, error: &str, count_attempt: bool) -> Outcome {
        let mut env = if count_attempt {
            job.failed_envelope(error)
        } else {
            let mut env = job.envelope().clone();
            env.set_error(error);
            env
        };
        env.died_at = Some(now_rfc3339());
        Outcome::Dead {
            envelope: env.to_json(),
            id: job.id().to_owned(),
            unique_key: job.envelope().unique_key.clone(),
        }
    }

    async fn dead_letter_malformed(&self, item: Bytes, malformed: Malformed) {
        let mut env = Envelope::for_malformed(&item);
        env.set_error(&malformed.to_string());
        env.died_at = Some(now_rfc3339());
        tracing::warn!(queue = %self.name, id = %env.id, error = %malformed, "malformed item dead-lettered");
        let outcome = Outcome::Dead {
            envelope: env.to_json(),
            id: env.id.clone(),
            unique_key: None,
        };
        self.record(&item, outcome).await;
    }

    /// Records an outcome, retrying while Redis is unreachable: a job must
    /// not stay in flight because an ack failed. Gives up only at the end of
    /// a shutdown; the job then stays in flight and a reaper returns it.
    async fn record(&self, item: &[u8], outcome: Outcome) {
        let mut retry = Retry::new("recording a job outcome");
        loop {
            match self.store.record(item, &outcome).await {
                Ok(true) => return retry.succeeded(),
                Ok(false) if retry.failures() > 0 => {
                    // The earlier try may have gone through before its reply was lost.
                    tracing::debug!("outcome already recorded, or the job was recovered meanwhile");
                    return retry.succeeded();
                }
                Ok(false) => {
                    tracing::warn!(
                        "the job was no longer in flight here (a reaper recovered it while it ran); \
                         its outcome here is not recorded"
                    );
                    return;
                }
                Err(e) => {
                    if !retry.wait(&e, &self.give_up).await {
                        tracing::error!(
                            "Redis unreachable at exit: outcome not recorded; the job stays in flight \
                             and will be recovered by a reaper"
                        );
                        return;
                    }
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

//! Running one job: attempts, rate limit, isolation, the handler under its
//! timeout with panics caught, and the outcome recorded in one atomic step,
//! followed by its lifecycle events and status record.
//!
//! Outcome events are emitted only once the outcome is recorded: a node that
//! lost its job to a reaper publishes nothing for it.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Busy, Processor};
use crate::broker::events::StatusUpdate;
use crate::broker::history::Sample;
use crate::broker::queue::Outcome;
use crate::clock::{now_rfc3339, rfc3339_ms};
use crate::config::EventLevel;
use crate::daemon::retry::Retry;
use crate::daemon::writer::Recorded;
use crate::duration::human;
use crate::envelope::{Envelope, Malformed, read_job};
use crate::event::{Draft, EventType};
use crate::job::HandlerError;
use crate::job::Job;
use crate::job::JobState;
use crate::traces::Attempt;

/// How a run that failed went.
struct Run {
    took: Duration,
    /// Its history buckets.
    sample: Sample,
    max_attempts: u32,
}

impl Processor {
    /// Reads a taken item and runs it (alone if `suspect`: `lua/take.lua`
    /// said so), or dead-letters it if it cannot be read.
    pub(super) async fn process(
        &self,
        item: Bytes,
        suspect: bool,
        busy: Busy<'_>,
        abandon: &CancellationToken,
    ) {
        match read_job(&item, self.config.max_payload_bytes) {
            Ok(parsed) => {
                let job = Job::new(self.name.clone(), item, parsed);
                // trace_id and span_id are filled in when the attempt's
                // trace span starts (tracing on); unset, no line shows them.
                let span = tracing::info_span!(
                    "job",
                    id = %job.id(),
                    queue = %self.name,
                    attempt = job.attempt(),
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty,
                );
                self.run_job(job, suspect, busy, abandon)
                    .instrument(span)
                    .await;
            }
            Err(malformed) => {
                drop(busy);
                self.dead_letter_malformed(item, malformed).await
            }
        }
    }

    /// Runs the job's handler while it holds `busy`, then records the outcome.
    async fn run_job(
        &self,
        mut job: Job,
        suspect: bool,
        busy: Busy<'_>,
        abandon: &CancellationToken,
    ) {
        let max_attempts = job.max_attempts(self.config.max_attempts);
        if job.envelope().attempt >= max_attempts {
            let reason = format!(
                "no attempts left: {} of {max_attempts} already made",
                job.envelope().attempt
            );
            tracing::warn!(error = %reason, "dead-lettered without running");
            let outcome = self.dead(&job, &reason, false);
            let attempt = job.envelope().attempt;
            let status = self.dead_status(&job, &reason, attempt);
            if self
                .record(job.item_bytes(), outcome, status, Sample::NONE)
                .await
            {
                self.died(&job, &reason, "attempts", attempt);
            }
            return;
        }
        if let Some(wait) = self.over_rate_limit(&job).await {
            let due_ms = self.due_in(wait);
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "over the rate limit; scheduled for when a slot frees"
            );
            let outcome = Outcome::Snooze {
                envelope: job.envelope().to_json(),
                due_ms,
            };
            let status = self.status(
                job.id(),
                JobState::Scheduled,
                job.envelope().attempt,
                || vec![("due_at", rfc3339_ms(due_ms))],
            );
            self.record(job.item_bytes(), outcome, status, Sample::NONE)
                .await;
            self.scheduler.notify_one();
            return;
        }
        let (_entered, _isolated);
        if suspect {
            tracing::info!(
                deliveries = job.envelope().deliveries,
                "its daemon died while running it: running it alone"
            );
            tokio::select! {
                hold = self.isolation.isolate() => _isolated = hold,
                _ = abandon.cancelled() => return self.requeue(&job).await,
            }
        } else {
            match self.isolation.try_enter() {
                Some(entered) => _entered = entered,
                None => {
                    tracing::debug!("a suspect has the node to itself; job given back");
                    self.record(job.item_bytes(), Outcome::GiveBack, None, Sample::NONE)
                        .await;
                    return;
                }
            }
        }

        let timeout = job.timeout(self.config.timeout);
        job.start_run(timeout);
        let waited = job.waited(self.clock.now_ms());
        if let Some(waited) = waited {
            self.metrics.started(waited);
        }
        // Tracing off: this branch is all the job pays.
        let attempt = match &self.traces {
            Some(traces) => traces.attempt(&self.name, &mut job),
            None => Attempt::OFF,
        };
        self.emit(EventType::Started, |kind| {
            Draft::job(kind, &*self.name, job.id(), job.attempt()).in_flow(job.flow())
        });
        if let Some(running) = self.status(job.id(), JobState::Running, job.attempt(), || {
            vec![("started_at", now_rfc3339())]
        }) {
            self.events.status(running);
        }
        let started = Instant::now();
        let cancel = self.cancellable(job.id());
        let run = AssertUnwindSafe(self.handler.handle(&job)).catch_unwind();
        let result = tokio::select! {
            biased;
            result = tokio::time::timeout(timeout, run) => result,
            _ = abandon.cancelled() => {
                job.cancel();
                tracing::info!("interrupted by the shutdown; requeued at the head of its queue");
                attempt.end("interrupted", None);
                return self.requeue(&job).await;
            }
            _ = cancel.token.cancelled() => {
                job.cancel();
                drop(busy);
                attempt.end("cancelled", Some("cancelled"));
                let sample = Sample::of(waited, Some(started.elapsed()));
                return self.cancelled(&job, sample).await;
            }
        };
        drop(cancel);
        let took = started.elapsed();
        drop(busy);
        let sample = Sample::of(waited, Some(took));
        let error = match result {
            Ok(Ok(Ok(()))) => {
                attempt.end("succeeded", None);
                return self.succeed(&job, took, sample).await;
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(panic)) => {
                HandlerError::transient(format!("handler panicked: {}", panic_message(&*panic)))
            }
            Err(_elapsed) => {
                job.cancel();
                HandlerError::transient(format!("timed out after {}", human(timeout)))
            }
        };
        let run = Run {
            took,
            sample,
            max_attempts,
        };
        self.fail(&job, error, &run, &attempt).await;
    }

    async fn succeed(&self, job: &Job, took: Duration, sample: Sample) {
        self.metrics.succeeded(took);
        let took = took.as_millis() as u64;
        tracing::debug!(ms = took, "succeeded");
        self.completions.record();
        let unique_key = job.envelope().unique_key.clone();
        let result = job.take_result();
        let outcome = Outcome::Succeeded {
            id: unique_key
                .as_ref()
                .map_or_else(String::new, |_| job.id().to_owned()),
            unique_key,
            flow: flow_end(job, "succeeded", job.attempt(), result.as_deref()),
        };
        let status = self.status(job.id(), JobState::Succeeded, job.attempt(), || {
            let mut fields = vec![("finished_at", now_rfc3339())];
            if let Some(result) = result {
                fields.push(("result", String::from(Box::<str>::from(result))));
            }
            fields
        });
        if self.record(job.item_bytes(), outcome, status, sample).await {
            self.emit(EventType::Succeeded, |kind| {
                Draft::job(kind, &*self.name, job.id(), job.attempt())
                    .in_flow(job.flow())
                    .took(took)
            });
        }
    }

    async fn fail(&self, job: &Job, error: HandlerError, run: &Run, attempt: &Attempt) {
        let &Run {
            took,
            sample,
            max_attempts,
        } = run;
        let last = error.is_permanent() || job.attempt() >= max_attempts;
        self.metrics.failed(took, !last);
        let took = took.as_millis() as u64;
        self.completions.record();
        let message = error.to_string();
        attempt.end(if last { "dead" } else { "retrying" }, Some(&message));
        let failed = |kind| {
            Draft::job(kind, &*self.name, job.id(), job.attempt())
                .in_flow(job.flow())
                .took(took)
                .error(message.clone())
        };
        if last {
            let (reason, why) = if error.is_permanent() {
                tracing::warn!(error = %message, "failed permanently; dead-lettered");
                (message.clone(), "permanent")
            } else {
                let reason = format!(
                    "{message} (attempt {} of {max_attempts}, none left)",
                    job.attempt()
                );
                tracing::warn!(error = %reason, "failed; no attempts left, dead-lettered");
                (reason, "attempts")
            };
            let status = self.dead_status(job, &reason, job.attempt());
            if self
                .record(
                    job.item_bytes(),
                    self.dead(job, &reason, true),
                    status,
                    sample,
                )
                .await
            {
                self.emit(EventType::Failed, failed);
                self.died(job, &reason, why, job.attempt());
            }
            return;
        }
        let delay = error.delay(&self.config.backoff, job.attempt());
        if let Some(asked) = error.cut_delay() {
            tracing::warn!(
                asked = %human(asked),
                "the handler asked for a longer wait than 7 days, the longest; retried in 7 days"
            );
        }
        let due_ms = self.due_in(delay);
        tracing::warn!(
            error = %message,
            retry_in = %human(Duration::from_millis(delay.as_millis() as u64)),
            "failed; will retry"
        );
        let outcome = Outcome::Retry {
            envelope: job.failed_envelope(&message).to_json(),
            due_ms,
        };
        let retry_at = rfc3339_ms(due_ms);
        let status = self.status(job.id(), JobState::Retrying, job.attempt(), || {
            vec![
                ("last_error", message.clone()),
                ("due_at", retry_at.clone()),
            ]
        });
        if self.record(job.item_bytes(), outcome, status, sample).await {
            self.emit(EventType::Failed, |kind| failed(kind).retry_at(retry_at));
        }
        self.scheduler.notify_one();
    }

    /// Puts an interrupted job back at the head of its queue. A raw payload
    /// goes back wrapped in the envelope whose id its events used.
    async fn requeue(&self, job: &Job) {
        let replacement = job.was_raw().then(|| job.envelope().to_json());
        let status = self.status(
            job.id(),
            JobState::Waiting,
            job.envelope().attempt,
            Vec::new,
        );
        if self
            .record(
                job.item_bytes(),
                Outcome::Requeue { replacement },
                status,
                Sample::NONE,
            )
            .await
        {
            self.metrics.recovered(1);
            self.emit(EventType::Recovered, |kind| {
                Draft::job(kind, &*self.name, job.id(), job.attempt())
                    .in_flow(job.flow())
                    .reason("shutdown")
            });
        }
    }

    /// `conveyor cancel` stopped the job: dead, its reason "cancelled".
    async fn cancelled(&self, job: &Job, sample: Sample) {
        tracing::info!("cancelled while running; dead-lettered");
        let reason = "cancelled";
        let status = self.dead_status(job, reason, job.attempt());
        if self
            .record(
                job.item_bytes(),
                self.dead(job, reason, true),
                status,
                sample,
            )
            .await
        {
            self.emit(EventType::Cancelled, |kind| {
                Draft::job(kind, &*self.name, job.id(), job.attempt())
                    .in_flow(job.flow())
                    .reason(JobState::Running.as_str())
            });
            self.died(job, reason, "cancelled", job.attempt());
        }
        let keys = self.store.keys();
        if let Err(e) = self
            .store
            .broker()
            .request_cancel(keys, job.id(), false)
            .await
        {
            tracing::debug!(error = %e, "could not clear the cancel request; conveyor cancel clears it");
        }
    }

    fn died(&self, job: &Job, error: &str, reason: &str, attempt: u32) {
        self.metrics.dead();
        self.emit(EventType::Dead, |kind| {
            Draft::job(kind, &*self.name, job.id(), attempt)
                .in_flow(job.flow())
                .error(error)
                .reason(reason)
        });
    }

    /// The status record of a job that died of `error`.
    pub(crate) fn dead_status(&self, job: &Job, error: &str, attempt: u32) -> Option<StatusUpdate> {
        self.status(job.id(), JobState::Dead, attempt, || {
            vec![
                ("last_error", error.to_owned()),
                ("finished_at", now_rfc3339()),
            ]
        })
    }

    /// How long the job must wait for its queue's rate limit; `None` if it
    /// may start now. Retries while Redis is unreachable: a limit that
    /// protects a provider is not skipped because Redis blinked.
    async fn over_rate_limit(&self, job: &Job) -> Option<Duration> {
        let limiter = self.rate_limit.as_ref()?;
        let mut retry = Retry::new("checking the rate limit", &self.clock);
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
        let ended = if error == "cancelled" {
            "cancelled"
        } else {
            "dead"
        };
        Outcome::Dead {
            flow: flow_end(job, ended, env.attempt, None),
            envelope: env.to_json(),
            id: job.id().to_owned(),
            unique_key: job.envelope().unique_key.clone(),
        }
    }

    /// Dead-letters an item that cannot run, under its own id when it
    /// names one (an envelope too large), keeping its bytes or, for an item
    /// too large to read, the first bytes and size its stand-in holds.
    async fn dead_letter_malformed(&self, item: Bytes, malformed: Malformed) {
        let env = Envelope::dead_letter(&item, &malformed, now_rfc3339());
        let error = malformed.to_string();
        tracing::warn!(queue = %self.name, id = %env.id, error = %malformed, "malformed item dead-lettered");
        let status = self.status(&env.id, JobState::Dead, env.attempt, || {
            vec![
                ("last_error", error.clone()),
                ("finished_at", now_rfc3339()),
            ]
        });
        let outcome = Outcome::Dead {
            envelope: env.to_json(),
            id: env.id.clone(),
            unique_key: None,
            flow: None,
        };
        if self.record(item, outcome, status, Sample::NONE).await {
            self.metrics.dead();
            self.emit(EventType::Dead, |kind| {
                Draft::job(kind, &*self.name, &env.id, 0)
                    .error(error)
                    .reason("malformed")
            });
        }
    }

    /// Records an outcome through the writer, which retries while Redis is
    /// unreachable (a job must not stay in flight because an ack failed)
    /// and gives up only at the end of a shutdown; the job then stays in
    /// flight and a reaper returns it. Returns whether this run's outcome
    /// was recorded (and counted in the queue's history with `sample`).
    pub(super) async fn record(
        &self,
        item: Bytes,
        outcome: Outcome,
        status: Option<StatusUpdate>,
        sample: Sample,
    ) -> bool {
        let flow = match &outcome {
            Outcome::Succeeded {
                flow: Some(end), ..
            }
            | Outcome::Dead {
                flow: Some(end), ..
            } => Some(end.clone()),
            _ => None,
        };
        match self
            .outcomes
            .record(&self.store, item, outcome, status, sample)
            .await
        {
            Recorded::Yes => {
                if let Some(end) = flow {
                    // Its flow takes it now; were this lost, the end is
                    // kept with the outcome for the flows' next look.
                    self.flows.ended(&self.name, end);
                }
                true
            }
            Recorded::NotInFlight => {
                tracing::warn!(
                    "the job was no longer in flight here (a reaper recovered it while it ran); \
                     its outcome here is not recorded"
                );
                false
            }
            Recorded::AfterRetry => {
                // The earlier try may have gone through before its reply was
                // lost; its events are then lost with it.
                tracing::debug!("outcome already recorded, or the job was recovered meanwhile");
                false
            }
            Recorded::GaveUp => false,
        }
    }

    /// Emits an event of this kind, drafted only if the queue's `events`
    /// level lets it through.
    pub(crate) fn emit<'a>(&self, kind: EventType, draft: impl FnOnce(EventType) -> Draft<'a>) {
        match self.config.events {
            EventLevel::Off => {}
            EventLevel::Outcomes if !kind.is_outcome() => {}
            _ => self.events.emit(draft(kind)),
        }
    }

    /// The job's new status record, if the queue keeps them: `state` and
    /// `fields`, with the queue, attempt, node and time.
    pub(crate) fn status(
        &self,
        id: &str,
        state: JobState,
        attempt: u32,
        fields: impl FnOnce() -> Vec<(&'static str, String)>,
    ) -> Option<StatusUpdate> {
        if !self.config.track {
            return None;
        }
        let mut fields = fields();
        fields.extend([
            ("queue", self.name.to_string()),
            ("state", state.as_str().to_owned()),
            ("attempt", attempt.to_string()),
            ("node", self.store.keys().node.clone()),
            ("updated_at", now_rfc3339()),
        ]);
        Some(StatusUpdate {
            id: id.to_owned(),
            fields,
            ttl: self.config.track_ttl,
        })
    }

    /// The time `delay` from now on the node's clock, in ms since the
    /// epoch, as `{K}:scheduled` scores it; saturating, though the delays it
    /// is given are bounded (the configuration's and
    /// [`crate::job::MAX_RETRY_IN`]).
    fn due_in(&self, delay: Duration) -> i64 {
        let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        self.clock.now_ms().saturating_add(delay)
    }
}

/// A flow node's end as its queue keeps it for the flow; `None` for a
/// job outside a flow.
fn flow_end(job: &Job, status: &str, attempt: u32, result: Option<&RawValue>) -> Option<String> {
    let (fid, name) = (job.flow()?, job.flow_node()?);
    let add = match status {
        "succeeded" => job.take_flow_add(),
        _ => None,
    };
    let end = crate::flow::node_end(fid, name, status, attempt, result, add.as_deref());
    Some(end)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use redis::AsyncCommands as _;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::clock::Clock;
    use crate::daemon::testing;
    use crate::handlers::Handler;

    /// Fails every run, asking to be tried again in a minute.
    struct Later;

    #[async_trait]
    impl Handler for Later {
        async fn handle(&self, _job: &Job) -> Result<(), crate::job::HandlerError> {
            Err(crate::job::HandlerError::transient("busy").retry_in(Duration::from_secs(60)))
        }
    }

    #[tokio::test]
    async fn a_failed_jobs_next_attempt_is_due_by_the_clock() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        // An hour behind the wall clock: a due time read from the wall
        // clock could not pass for one read from this.
        let clock = Clock::manual(crate::clock::now_ms() - 3_600_000);
        let config = testing::config(&redis, "mail");
        let (processor, writer) =
            testing::processor_with(&config, "mail", "node-1", &clock, Arc::new(Later));
        let keys = processor.store().keys().clone();
        let _: () = conn
            .rpush(&keys.list, testing::job("j1"))
            .await
            .expect("RPUSH");
        let (stop_writer, stop_fetching) = (CancellationToken::new(), CancellationToken::new());
        let writer = tokio::spawn(writer.run(stop_writer.clone(), CancellationToken::new()));
        let run = tokio::spawn(
            processor
                .clone()
                .run(stop_fetching.clone(), CancellationToken::new()),
        );

        testing::wait_until("the failed job is scheduled", || {
            let mut conn = conn.clone();
            let scheduled = keys.scheduled.clone();
            async move { conn.zcard::<_, usize>(&scheduled).await.expect("ZCARD") == 1 }
        })
        .await;
        let due: Vec<(String, i64)> = conn
            .zrange_withscores(&keys.scheduled, 0, -1)
            .await
            .expect("ZRANGE");
        assert_eq!(due[0].1, clock.now_ms() + 60_000);

        stop_fetching.cancel();
        run.await.expect("the processor stops");
        stop_writer.cancel();
        writer.await.expect("the writer stops");
    }
}

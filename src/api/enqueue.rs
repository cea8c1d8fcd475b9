//! Enqueueing, typed: a payload that serializes, the options of
//! `conveyor enqueue`, and the `job.enqueued` event and status record that
//! go out with each job, written here once for the command line and the
//! library's [`Client::enqueue`].

use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};

use super::{ApiError, Client, DEFAULT_MAX_PAYLOAD_BYTES};
use crate::broker::QueueKeys;
use crate::broker::admin::{self, NewJob};
use crate::broker::events::{EventSink, StatusUpdate};
use crate::clock::{now_ms, now_rfc3339};
use crate::config::bounds::{UNIQUE_FOR, duration};
use crate::config::{Config, EventLevel};
use crate::envelope::{add_trace, check_size, new_envelope_json, new_id};
use crate::event::{Draft, EventType};
use crate::job::JobState;

/// How a job is enqueued; the default is now, with the queue's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// Run no earlier than this from now (`conveyor enqueue --delay`).
    pub delay: Option<Duration>,
    /// Attempts before the job is dead, overriding the queue's setting.
    pub max_attempts: Option<u32>,
    /// Do not enqueue if an equal job was enqueued within this long and
    /// has not finished (1s to a year,
    /// [`bounds::UNIQUE_FOR`](crate::config::bounds::UNIQUE_FOR)).
    pub unique_for: Option<Duration>,
    /// What makes jobs equal for `unique_for`; by default a digest of the
    /// payload's JSON.
    pub unique_key: Option<String>,
    /// The producer's span as a W3C `traceparent`
    /// (`00-<trace id>-<span id>-<flags>`): the job's first attempt is its
    /// child in the traces (DESIGN section 15).
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with `traceparent`.
    pub tracestate: Option<String>,
}

/// What became of a job given to [`Client::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Waiting, or scheduled when it had a delay.
    Queued {
        /// The new job's id.
        id: String,
    },
    /// Not enqueued: another job holds the unique lock.
    Duplicate {
        /// That job's id.
        holder: String,
    },
}

impl Client {
    /// Enqueues one job of `payload` (anything that serializes to JSON) to
    /// `queue`, as `conveyor enqueue` does: the same envelope, size rule,
    /// `job.enqueued` event and status record. A queue this configuration
    /// does not list goes to `<key_prefix><queue>`.
    ///
    /// ```no_run
    /// # async fn example(config: conveyor::config::Config) -> Result<(), conveyor::api::ApiError> {
    /// use conveyor::api::{Client, EnqueueOptions};
    /// let client = Client::new(&config, "my-app")?;
    /// let later = EnqueueOptions { delay: Some(std::time::Duration::from_secs(60)), ..Default::default() };
    /// client.enqueue("email", &serde_json::json!({"to": "a@example.com"}), &later).await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        payload: &T,
        options: &EnqueueOptions,
    ) -> Result<Enqueued, ApiError> {
        let invalid = |e: String| ApiError::Invalid(e);
        let payload = serde_json::value::to_raw_value(payload)
            .map_err(|e| invalid(format!("the payload does not serialize: {e}")))?;
        if let Some(ttl) = options.unique_for {
            duration("unique_for", ttl, &UNIQUE_FOR).map_err(|e| invalid(e.to_string()))?;
        }
        if options.max_attempts == Some(0) {
            return Err(invalid("max_attempts must be at least 1".into()));
        }
        if let Some(traceparent) = &options.traceparent {
            crate::traces::check_traceparent(traceparent).map_err(invalid)?;
        }
        let due_ms = match options.delay {
            None => None,
            Some(delay) if delay.is_zero() => None,
            Some(delay) => Some(
                i64::try_from(delay.as_millis())
                    .ok()
                    .and_then(|ms| now_ms().checked_add(ms))
                    .ok_or_else(|| invalid(format!("delay {delay:?}: too long")))?,
            ),
        };
        let config = self.config();
        let max = config
            .queues
            .get(queue)
            .map_or(DEFAULT_MAX_PAYLOAD_BYTES, |q| q.max_payload_bytes);
        let keys = QueueKeys::new(queue, &config.queue_key(queue), &self.actor);
        let mut announcer = Announcer::new(&config, queue, self.actor.clone());
        let job = announcer.job(&payload, options, due_ms, &now_rfc3339());
        check_size(job.envelope.len(), payload.get().len(), max)
            .map_err(|e| invalid(e.to_string()))?;
        let outcome = self.broker.enqueue(&keys, &[job], &self.sink).await?;
        Ok(match outcome.into_iter().next() {
            Some(admin::Enqueued::Duplicate { holder }) => Enqueued::Duplicate { holder },
            _ => Enqueued::Queued {
                id: announcer.last_id,
            },
        })
    }
}

/// Turns jobs into `job.enqueued` events (and status records, for a
/// tracked queue) from one process, which numbers its events like a node
/// does. A unique job found to be a duplicate is not announced; its number
/// is then skipped.
pub(crate) struct Announcer {
    pub(crate) sink: EventSink,
    level: EventLevel,
    track: Option<Duration>,
    queue: String,
    node: String,
    seq: u64,
    /// The id of the job made last.
    last_id: String,
}

impl Announcer {
    /// The announcer of `queue`'s jobs, whose events name `node`.
    pub(crate) fn new(config: &Config, queue: &str, node: String) -> Self {
        let q = config.queues.get(queue);
        Self {
            sink: EventSink::new(&config.events.channel, config.events.stream_maxlen),
            level: q.map(|q| q.events).unwrap_or(EventLevel::All),
            track: q.filter(|q| q.track).map(|q| q.track_ttl),
            queue: queue.to_owned(),
            node,
            seq: 0,
            last_id: String::new(),
        }
    }

    /// A job for `payload`, with its event and status record.
    pub(crate) fn job(
        &mut self,
        payload: &RawValue,
        options: &EnqueueOptions,
        due_ms: Option<i64>,
        now: &str,
    ) -> NewJob {
        let unique = options.unique_for.map(|ttl| {
            let key = options
                .unique_key
                .clone()
                .unwrap_or_else(|| digest(payload.get()));
            (key, ttl)
        });
        let id = new_id();
        let mut envelope = new_envelope_json(
            &id,
            payload,
            options.max_attempts,
            now,
            unique.as_ref().map(|(k, _)| k.as_str()),
        );
        if let Some(traceparent) = &options.traceparent {
            add_trace(&mut envelope, traceparent, options.tracestate.as_deref());
        }
        self.last_id.clone_from(&id);
        let mut job = NewJob {
            id,
            envelope,
            due_ms,
            unique,
            event: None,
            status: None,
        };
        if self.level != EventLevel::Off {
            self.seq += 1;
            let event = Draft::job(EventType::Enqueued, &self.queue, &job.id, 0);
            job.event = Some(event.to_json(&self.node, now, self.seq));
        }
        if let Some(ttl) = self.track {
            let state = if due_ms.is_some() {
                JobState::Scheduled
            } else {
                JobState::Waiting
            };
            job.status = Some(StatusUpdate {
                id: job.id.clone(),
                fields: vec![
                    ("queue", self.queue.clone()),
                    ("state", state.as_str().to_owned()),
                    ("attempt", "0".to_owned()),
                    ("enqueued_at", now.to_owned()),
                    ("updated_at", now.to_owned()),
                ],
                ttl,
            });
        }
        job
    }
}

/// SHA-256 of the payload's text, hex: the default unique key.
pub(crate) fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

//! What conveyor knows and what can be done to it, typed: the one read API
//! (queues, counts, nodes, dead, scheduled and running jobs, schedules)
//! and the one admin API (retry, purge, run now, pause, resume, cancel) that
//! the command line, the dashboard and `/metrics` all use.
//!
//! ```no_run
//! # async fn example(config: conveyor::config::Config) -> Result<(), conveyor::api::ApiError> {
//! let client = conveyor::api::Client::new(&config, "my-tool")?;
//! for q in client.overview().await?.queues {
//!     println!("{}: {} waiting, paused: {}", q.name, q.counts.waiting, q.counts.paused);
//! }
//! client.pause("email").await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::broker::admin::Found;
use crate::broker::events::{EventSink, StatusUpdate};
use crate::broker::view::{Bounds, Store, Viewed};
use crate::broker::{Broker, QueueKeys};
use crate::clock::{now_ms, now_rfc3339, rfc3339_ms};
use crate::config::Config;
use crate::envelope::{Envelope, Head, glimpse, parse_item};
use crate::event::{Draft, EventType};
use crate::job::JobState;

mod dead;
pub(crate) mod enqueue;
mod flows;
mod groups;
mod history;
mod job;
mod node;
mod results;
mod scale;

pub use crate::broker::BrokerError;
pub use crate::broker::admin::{GroupCounts, Groups, QueueCounts};
pub use dead::RetriedAll;
pub use enqueue::{EnqueueOptions, Enqueued};
pub use flows::{FlowCancelled, FlowSummary, FlowView, MAX_FLOWS, NodeView as FlowNode};
pub use groups::{GroupList, MAX_GROUPS};
pub use history::{History, Point, Range};
pub use job::JobView;
pub use node::{NodeInfo, QueueLoad};
pub use results::{Ended, MAX_RESULTS, Results};
pub use scale::Scale;

/// `max_payload_bytes` of a queue this configuration does not list.
const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such job where it was looked for (exit 65).
    #[error("{0}")]
    NotFound(String),
    /// The job could not be acted on (it kept moving, or its daemon did
    /// not stop it in time).
    #[error("{0}")]
    Unfinished(String),
    /// The job cannot be acted on this way (a dead job that kept only the
    /// first bytes of an item too large to run cannot be retried).
    #[error("{0}")]
    Refused(String),
    /// What was asked is not valid (a payload that does not serialize or
    /// is too large, an option out of its bounds).
    #[error("{0}")]
    Invalid(String),
    /// Redis failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A client of conveyor's keys in Redis, for one configuration.
#[derive(Clone)]
pub struct Client {
    broker: Broker,
    /// Replaced by [`Client::set_config`] (a daemon's reload).
    config: Arc<RwLock<Arc<Config>>>,
    sink: EventSink,
    /// Who acts, as events name it (`node`).
    actor: String,
}

/// What `conveyor stats` shows: every configured queue and the live nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When it was read (RFC 3339).
    pub at: String,
    /// The configured queues, by name.
    pub queues: Vec<QueueView>,
    /// The nodes alive now.
    pub nodes: Vec<NodeView>,
}

/// One queue's sizes, counters, rate and oldest job.
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    /// The queue's name.
    pub name: String,
    /// Its list's key.
    pub key: String,
    /// Sizes and counters.
    #[serde(flatten)]
    pub counts: QueueCounts,
    /// Runs finished in the last minute, over all live nodes.
    pub rate_1m: u64,
    /// Age of the oldest waiting job, when its envelope says when it was made.
    pub oldest_age_s: Option<f64>,
}

/// One live node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// The node's id.
    pub id: String,
    /// What its heartbeat says.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Seconds since it started.
    pub uptime_s: Option<u64>,
}

/// A job in a dead letter list.
#[derive(Debug, Clone, Serialize)]
pub struct DeadJob {
    /// Its id (`-` for an entry that cannot be read).
    pub id: String,
    /// Attempts made.
    pub attempt: u32,
    /// When it died (RFC 3339).
    pub died_at: Option<String>,
    /// Why.
    pub last_error: Option<String>,
    /// The payload as the producer wrote it (or the whole entry when it
    /// cannot be read); only its first bytes when `truncated`.
    pub payload: String,
    /// The size in bytes of what `payload` shows: the payload, the item
    /// that could not be read, or the entry.
    pub size: u64,
    /// Whether `payload` holds only the first bytes: the item was too
    /// large to read, or the entry too large to show whole.
    pub truncated: bool,
}

/// A job due later.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledJob {
    /// Its id.
    pub id: String,
    /// When it is due (RFC 3339).
    pub due_at: String,
    /// Attempts made.
    pub attempt: u32,
    /// The last failure's reason, for a retry.
    pub last_error: Option<String>,
    /// The payload as the producer wrote it; its first bytes when `truncated`.
    pub payload: String,
    /// Whether `payload` holds only the first bytes (a job too large to run).
    pub truncated: bool,
}

/// A job some node runs now.
#[derive(Debug, Clone, Serialize)]
pub struct RunningJob {
    /// Its id.
    pub id: String,
    /// The node that took it.
    pub node: String,
    /// Attempts made before this run.
    pub attempt: u32,
    /// The payload as the producer wrote it; its first bytes when `truncated`.
    pub payload: String,
    /// Whether `payload` holds only the first bytes.
    pub truncated: bool,
}

/// A schedule's definition, last tick and next tick.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    /// The schedule's name.
    pub name: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// Its cron expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Its interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The cron expression's time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The last tick enqueued, Unix seconds.
    pub last_tick: Option<i64>,
    /// The same in the schedule's time zone.
    pub last_tick_at: Option<String>,
    /// The next tick, Unix seconds.
    pub next_tick: Option<i64>,
    /// The same in the schedule's time zone.
    pub next_tick_at: Option<String>,
}

/// Where a cancelled job was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// In its queue.
    Waiting,
    /// In the scheduled set.
    Scheduled,
    /// Running on this node, which stopped it.
    Running(String),
}

impl Cancelled {
    /// `waiting`, `scheduled` or `running`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cancelled::Waiting => JobState::Waiting.as_str(),
            Cancelled::Scheduled => JobState::Scheduled.as_str(),
            Cancelled::Running(_) => JobState::Running.as_str(),
        }
    }
}

impl Client {
    /// A client for `config`'s Redis and queues; `actor` names who acts in
    /// the events it publishes (`cli`, `web`). Connects on first use.
    pub fn new(config: &Config, actor: &str) -> Result<Self, ApiError> {
        Ok(Self::with_broker(
            Broker::new(&config.redis)?,
            config,
            actor,
        ))
    }

    /// A client over an existing broker.
    pub(crate) fn with_broker(broker: Broker, config: &Config, actor: &str) -> Self {
        let host: String =
            hostname::get().map_or_else(|_| "host".into(), |h| h.to_string_lossy().into());
        Self {
            broker,
            sink: EventSink::new(&config.events.channel, config.events.stream_maxlen),
            config: Arc::new(RwLock::new(Arc::new(config.clone()))),
            actor: format!("{actor}-{host}-{}", std::process::id()),
        }
    }

    /// The broker underneath.
    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The configuration it reads now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads `config`'s queues and schedules from now on (every clone of
    /// this client does); the Redis connection stays as it is.
    pub(crate) fn set_config(&self, config: &Config) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config.clone());
    }

    /// Whether `name` is a configured queue.
    pub fn is_configured(&self, name: &str) -> bool {
        self.config().queues.contains_key(name)
    }

    fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(queue, &self.config().queue_key(queue), "api")
    }

    /// The queue's `max_payload_bytes` (1 MiB for one not configured).
    fn max_payload_bytes(&self, queue: &str) -> usize {
        self.config()
            .queues
            .get(queue)
            .map_or(DEFAULT_MAX_PAYLOAD_BYTES, |q| q.max_payload_bytes)
    }

    /// The most jobs of one of the queue's groups in flight, if limited.
    fn group_limit(&self, queue: &str) -> Option<u32> {
        self.config()
            .queues
            .get(queue)
            .and_then(|q| q.group.as_ref())
            .and_then(|g| g.limit)
    }

    /// How the queue's items are read: whole when the queue could run
    /// them, else their first bytes.
    fn bounds(&self, queue: &str) -> Bounds {
        Bounds::for_queue(self.max_payload_bytes(queue))
    }

    /// Every configured queue and the live nodes, in three round trips.
    pub async fn overview(&self) -> Result<Overview, ApiError> {
        let names: Vec<String> = self.config().queues.keys().cloned().collect();
        let keys: Vec<QueueKeys> = names.iter().map(|n| self.keys(n)).collect();
        let bounds: Vec<Bounds> = names.iter().map(|n| self.bounds(n)).collect();
        let limits: Vec<Option<u32>> = names.iter().map(|n| self.group_limit(n)).collect();
        let counts = self.broker.queue_counts(&keys, &bounds, &limits).await?;
        let node_ids: Vec<String> = counts
            .iter()
            .flat_map(|c| c.nodes.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let infos = self.broker.node_infos(&node_ids).await?;
        let now = now_ms();
        let nodes: Vec<NodeView> = node_ids
            .into_iter()
            .zip(infos)
            .filter_map(|(id, fields)| {
                let info = NodeInfo::from_fields(&fields?);
                let uptime_s = info
                    .started_at
                    .parse::<jiff::Timestamp>()
                    .ok()
                    .map(|t| ((now - t.as_millisecond()).max(0) / 1000) as u64);
                Some(NodeView { id, info, uptime_s })
            })
            .collect();
        let queues = keys
            .iter()
            .zip(counts)
            .map(|(k, mut counts)| {
                let rate_1m = nodes
                    .iter()
                    .filter_map(|n| n.info.load.get(&k.name))
                    .map(|l| l.rate_1m)
                    .sum();
                // The list's head, and with groups the heads of the first
                // groups, which hold the jobs sorted out of the list before.
                let head = counts
                    .head
                    .take()
                    .and_then(|item| envelope_of(&item)?.created_at);
                let oldest_age_s = head
                    .iter()
                    .chain(&counts.group_heads)
                    .filter_map(|at| at.parse::<jiff::Timestamp>().ok())
                    .map(|at| at.as_millisecond())
                    .min()
                    .map(|at| ((now - at).max(0) as f64) / 1000.0);
                QueueView {
                    name: k.name.clone(),
                    key: k.list.clone(),
                    counts,
                    rate_1m,
                    oldest_age_s,
                }
            })
            .collect();
        Ok(Overview {
            at: now_rfc3339(),
            queues,
            nodes,
        })
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), ApiError> {
        Ok(self.broker.ping().await?)
    }

    /// The first `limit` scheduled jobs of `queue`, soonest first.
    pub async fn scheduled_jobs(
        &self,
        queue: &str,
        limit: u64,
    ) -> Result<Vec<ScheduledJob>, ApiError> {
        let items = self
            .broker
            .scheduled_entries(&self.keys(queue), limit, self.bounds(queue))
            .await?;
        Ok(items
            .into_iter()
            .map(|item| {
                let job = dead::job_of(&item);
                ScheduledJob {
                    id: job.id,
                    due_at: rfc3339_ms(item.score.unwrap_or(0)),
                    attempt: job.attempt,
                    last_error: job.last_error,
                    payload: job.payload,
                    truncated: job.truncated,
                }
            })
            .collect())
    }

    /// Up to `limit` jobs of `queue` that live nodes run now.
    pub async fn running_jobs(&self, queue: &str, limit: u64) -> Result<Vec<RunningJob>, ApiError> {
        let items = self
            .broker
            .inflight_entries(&self.keys(queue), limit, self.bounds(queue))
            .await?;
        Ok(items
            .into_iter()
            .map(|(node, item)| {
                let job = dead::job_of(&item);
                RunningJob {
                    id: job.id,
                    node,
                    attempt: job.attempt,
                    payload: job.payload,
                    truncated: job.truncated,
                }
            })
            .collect())
    }

    /// Every configured schedule with its last tick and next.
    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, ApiError> {
        use crate::broker::queue::QueueStore;
        let now = jiff::Timestamp::now();
        let mut rows = Vec::new();
        let config = self.config();
        for (name, schedule) in &config.schedules {
            // The configuration was validated: the expression parses.
            let Ok(spec) = schedule.spec() else { continue };
            let store = QueueStore::new(self.broker.clone(), self.keys(&schedule.queue), 1);
            let last = store.last_tick(name).await?;
            let next = spec.next_after(now);
            let zone = schedule
                .cron
                .as_ref()
                .map(|_| schedule.timezone.clone().unwrap_or_else(|| "UTC".into()));
            rows.push(ScheduleView {
                name: name.clone(),
                queue: schedule.queue.clone(),
                cron: schedule.cron.clone(),
                every: schedule
                    .every
                    .map(|d| crate::duration::human(d).to_string()),
                last_tick: last,
                last_tick_at: last.and_then(|t| local_time(t, zone.as_deref())),
                next_tick: next.map(|t| t.as_second()),
                next_tick_at: next.and_then(|t| local_time(t.as_second(), zone.as_deref())),
                timezone: zone,
            });
        }
        Ok(rows)
    }

    /// Stops every daemon taking `queue`'s jobs; false if it was paused.
    pub async fn pause(&self, queue: &str) -> Result<bool, ApiError> {
        self.set_paused(queue, true).await
    }

    /// Lets the daemons take `queue`'s jobs again; false if it was not paused.
    pub async fn resume(&self, queue: &str) -> Result<bool, ApiError> {
        self.set_paused(queue, false).await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, ApiError> {
        let kind = match paused {
            true => EventType::QueuePaused,
            false => EventType::QueueResumed,
        };
        let now = now_rfc3339();
        let event = Draft::queue(kind, queue).to_json(&self.actor, &now, 1);
        Ok(self
            .broker
            .set_paused(&self.keys(queue), paused, &now, &self.sink, Some(&event))
            .await?)
    }

    /// Moves the scheduled job `id` to the head of its queue: it runs next.
    pub async fn run_now(&self, queue: &str, id: &str) -> Result<(), ApiError> {
        let keys = self.keys(queue);
        let missing = || ApiError::NotFound(format!("no scheduled job {id} in queue {queue}"));
        // Promotion may move it between the look and the move: look again.
        for _ in 0..3 {
            let Some(seen) = self.broker.search(&keys.scheduled, Store::Zset, id).await? else {
                return Err(missing());
            };
            let reread =
                self.broker
                    .reread(&keys.scheduled, Store::Zset, &seen, self.bounds(queue));
            let Some(item) = reread.await? else { continue };
            if self.broker.run_now(&keys, &item).await? {
                return Ok(());
            }
        }
        Err(missing())
    }

    /// Ends the job `id` as dead with the reason "cancelled": a waiting or
    /// scheduled one at once; a running one by asking its daemon to stop it
    /// and waiting up to `wait` for it to be gone.
    pub async fn cancel(
        &self,
        queue: &str,
        id: &str,
        wait: Duration,
    ) -> Result<Cancelled, ApiError> {
        self.cancel_with(queue, id, Some(wait))
            .await
            .map(|(was, _)| was)
    }

    /// [`Client::cancel`], and the flow node's end kept for its flow when
    /// it was waiting or scheduled. With `wait` `None`, a running job is
    /// only asked to stop (its daemon ends it as cancelled when it sees
    /// the request).
    pub(crate) async fn cancel_with(
        &self,
        queue: &str,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<(Cancelled, Option<String>), ApiError> {
        let keys = self.keys(queue);
        let dead_cap = self
            .config()
            .queues
            .get(queue)
            .map_or(10_000, |q| q.dead_max_jobs);
        // A job may move between looks (taken, promoted): look again.
        for _ in 0..5 {
            let Some(found) = self.broker.find_job(&keys, id).await? else {
                return Err(ApiError::NotFound(format!(
                    "no job {id} waiting, scheduled or running in queue {queue}"
                )));
            };
            let (seen, was, key, store) = match &found {
                Found::Waiting(item) => (item, Cancelled::Waiting, &keys.list, Store::List),
                // Held in its group: waiting, as far as its producer knows.
                Found::Held(list, item) => (item, Cancelled::Waiting, list, Store::List),
                Found::Scheduled(item) => {
                    (item, Cancelled::Scheduled, &keys.scheduled, Store::Zset)
                }
                Found::Running(node) => {
                    let Some(wait) = wait else {
                        self.broker.request_cancel(&keys, id, true).await?;
                        return Ok((Cancelled::Running(node.clone()), None));
                    };
                    let stopped = self.stop_running(&keys, id, node, wait).await?;
                    return Ok((stopped, None));
                }
            };
            // Whole if the queue could run it; else its first bytes.
            let reread = self.broker.reread(key, store, seen, self.bounds(queue));
            let Some(item) = reread.await? else { continue };
            let mut envelope = match item.is_whole() {
                true => match parse_item(&item.bytes, usize::MAX) {
                    Ok(parsed) => parsed.envelope,
                    Err(e) => {
                        return Err(ApiError::Unfinished(format!(
                            "the job's item cannot be read: {e}"
                        )));
                    }
                },
                // Too large to run: its dead letter keeps its first bytes.
                false => {
                    let mut env = Envelope::new(crate::envelope::null_payload());
                    id.clone_into(&mut env.id);
                    env.head = Some(Head::new(&item.bytes, item.size));
                    env
                }
            };
            let found = match found {
                Found::Held(list, _) => Found::Held(list, item),
                Found::Waiting(_) => Found::Waiting(item),
                _ => Found::Scheduled(item),
            };
            envelope.set_error("cancelled");
            envelope.died_at = Some(now_rfc3339());
            let unique = envelope.unique_key.clone();
            let node = crate::flow::node_of(&envelope);
            let flow = node.as_ref().map(|(fid, name)| {
                crate::flow::node_end(fid, name, "cancelled", envelope.attempt, None, None)
            });
            let moved = self
                .broker
                .cancel_waiting(
                    &keys,
                    &found,
                    &envelope.to_json(),
                    dead_cap,
                    unique.as_deref().map(|k| (k, id)),
                    flow.as_deref(),
                )
                .await?;
            if moved {
                let now = now_rfc3339();
                if let Some(status) = self.cancelled_status(queue, id, envelope.attempt, &now) {
                    self.broker.record_ended(&keys, &status).await?;
                }
                let event = Draft::job(EventType::Cancelled, queue, id, envelope.attempt)
                    .reason(was.as_str())
                    .in_flow(node.as_ref().map(|(fid, _)| fid.as_str()))
                    .to_json(&self.actor, &now, 1);
                self.broker.announce(&self.sink, &event).await?;
                return Ok((was, flow));
            }
        }
        Err(ApiError::Unfinished(format!(
            "job {id} kept moving; try again"
        )))
    }

    /// The status record of a waiting or scheduled job just cancelled, if
    /// its queue tracks jobs: dead, as its dead letter says.
    fn cancelled_status(
        &self,
        queue: &str,
        id: &str,
        attempt: u32,
        now: &str,
    ) -> Option<StatusUpdate> {
        let config = self.config();
        let q = config.queues.get(queue).filter(|q| q.track)?;
        Some(StatusUpdate {
            id: id.to_owned(),
            fields: vec![
                ("queue", queue.to_owned()),
                ("state", JobState::Dead.as_str().to_owned()),
                ("attempt", attempt.to_string()),
                ("last_error", "cancelled".to_owned()),
                ("finished_at", now.to_owned()),
                ("updated_at", now.to_owned()),
            ],
            ttl: q.track_ttl,
        })
    }

    /// Asks the daemons to stop a running job and waits until it is no
    /// longer in flight.
    async fn stop_running(
        &self,
        keys: &QueueKeys,
        id: &str,
        node: &str,
        wait: Duration,
    ) -> Result<Cancelled, ApiError> {
        self.broker.request_cancel(keys, id, true).await?;
        // Saturating: `wait` comes from a command line.
        let now = Instant::now();
        let deadline = now
            .checked_add(wait)
            .unwrap_or(now + Duration::from_secs(86_400));
        let ended = loop {
            match self.broker.find_job(keys, id).await? {
                Some(Found::Running(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(Found::Running(_)) => break false,
                _ => break true,
            }
        };
        self.broker.request_cancel(keys, id, false).await?;
        if !ended {
            return Err(ApiError::Unfinished(format!(
                "job {id} still runs on node {node} after {}: is that daemon of a version \
                 without cancel, or stuck?",
                humantime::format_duration(wait)
            )));
        }
        let cancelled = match self.broker.search(&keys.dead, Store::List, id).await? {
            Some(seen) => {
                let bounds = self.bounds(&keys.name);
                let entry = self.broker.reread(&keys.dead, Store::List, &seen, bounds);
                entry
                    .await?
                    .and_then(|e| envelope_of(&e))
                    .is_some_and(|e| e.last_error.as_deref() == Some("cancelled"))
            }
            None => false,
        };
        match cancelled {
            true => Ok(Cancelled::Running(node.to_owned())),
            false => Err(ApiError::NotFound(format!(
                "job {id} ended on its own before the cancel reached it"
            ))),
        }
    }
}

/// The envelope of a stored item, whole or as far as its first bytes show it.
fn envelope_of(item: &Viewed) -> Option<Envelope> {
    match item.is_whole() {
        true => parse_item(&item.bytes, usize::MAX).ok().map(|p| p.envelope),
        false => glimpse(&item.bytes),
    }
}

/// A tick as the schedule's local time with its offset (UTC for intervals).
fn local_time(seconds: i64, zone: Option<&str>) -> Option<String> {
    let t = jiff::Timestamp::from_second(seconds).ok()?;
    let tz = jiff::tz::TimeZone::get(zone.unwrap_or("UTC")).ok()?;
    Some(
        t.to_zoned_datetime(tz)
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    )
}

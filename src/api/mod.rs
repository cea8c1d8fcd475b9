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
use crate::broker::events::EventSink;
use crate::broker::{Broker, BrokerError, QueueKeys};
use crate::clock::{now_ms, now_rfc3339, rfc3339_ms};
use crate::config::Config;
use crate::envelope::{Envelope, parse_item};
use crate::event::{Draft, EventType};

mod node;

pub use crate::broker::admin::QueueCounts;
pub use node::{NodeInfo, QueueLoad};

/// Dead entries read per round trip when searching or moving.
const PAGE: u64 = 500;

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
    /// cannot be read).
    pub payload: String,
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
    /// The payload as the producer wrote it.
    pub payload: String,
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
    /// The payload as the producer wrote it.
    pub payload: String,
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
            Cancelled::Waiting => "waiting",
            Cancelled::Scheduled => "scheduled",
            Cancelled::Running(_) => "running",
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
    pub fn with_broker(broker: Broker, config: &Config, actor: &str) -> Self {
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
    pub fn broker(&self) -> &Broker {
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
    pub fn set_config(&self, config: &Config) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config.clone());
    }

    /// Whether `name` is a configured queue.
    pub fn is_configured(&self, name: &str) -> bool {
        self.config().queues.contains_key(name)
    }

    fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(queue, &self.config().queue_key(queue), "api")
    }

    /// Every configured queue and the live nodes, in three round trips.
    pub async fn overview(&self) -> Result<Overview, ApiError> {
        let keys: Vec<QueueKeys> = self.config().queues.keys().map(|n| self.keys(n)).collect();
        let counts = self.broker.queue_counts(&keys).await?;
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
                let oldest_age_s = counts.head.take().and_then(|item| {
                    let created = parse_item(&item, usize::MAX).ok()?.envelope.created_at?;
                    let at = created.parse::<jiff::Timestamp>().ok()?;
                    Some(((now - at.as_millisecond()).max(0) as f64) / 1000.0)
                });
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

    /// Dead jobs of `queue`, newest first, from `start`.
    pub async fn dead_jobs(
        &self,
        queue: &str,
        start: u64,
        limit: u64,
    ) -> Result<Vec<DeadJob>, ApiError> {
        let entries = self
            .broker
            .dead_entries(&self.keys(queue), start, limit)
            .await?;
        Ok(entries.iter().map(|e| dead_job(e)).collect())
    }

    /// The first `limit` scheduled jobs of `queue`, soonest first.
    pub async fn scheduled_jobs(
        &self,
        queue: &str,
        limit: u64,
    ) -> Result<Vec<ScheduledJob>, ApiError> {
        let items = self
            .broker
            .scheduled_entries(&self.keys(queue), limit)
            .await?;
        Ok(items
            .into_iter()
            .map(|(item, due)| {
                let job = dead_job(&item);
                ScheduledJob {
                    id: job.id,
                    due_at: rfc3339_ms(due),
                    attempt: job.attempt,
                    last_error: job.last_error,
                    payload: job.payload,
                }
            })
            .collect())
    }

    /// Up to `limit` jobs of `queue` that live nodes run now.
    pub async fn running_jobs(&self, queue: &str, limit: u64) -> Result<Vec<RunningJob>, ApiError> {
        let items = self
            .broker
            .inflight_entries(&self.keys(queue), limit)
            .await?;
        Ok(items
            .into_iter()
            .map(|(node, item)| {
                let job = dead_job(&item);
                RunningJob {
                    id: job.id,
                    node,
                    attempt: job.attempt,
                    payload: job.payload,
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
                every: schedule.every.map(|d| crate::config::human(d).to_string()),
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

    /// Moves the dead job `id` back to its queue for a new round of attempts.
    pub async fn retry_dead(&self, queue: &str, id: &str) -> Result<(), ApiError> {
        let keys = self.keys(queue);
        let entry = self.find_dead(&keys, id).await?;
        let moved = self
            .broker
            .dead_retry(&keys, &[(entry.clone(), retried_item(&entry))])
            .await?;
        match moved {
            0 => Err(ApiError::NotFound(format!(
                "no dead job with id {id} in {}",
                keys.dead
            ))),
            _ => Ok(()),
        }
    }

    /// Moves every dead job present when it starts back to its queue,
    /// oldest first; jobs that die again meanwhile are not moved twice.
    /// How many it moved.
    pub async fn retry_all_dead(&self, queue: &str) -> Result<u64, ApiError> {
        let keys = self.keys(queue);
        let total = self.broker.dead_len(&keys).await?;
        let (mut seen, mut moved) = (0, 0);
        while seen < total {
            // The oldest entries are at the tail; new deaths arrive at the head.
            let len = self.broker.dead_len(&keys).await?;
            if len == 0 {
                break;
            }
            let want = PAGE.min(total - seen).min(len);
            let page = self.broker.dead_entries(&keys, len - want, want).await?;
            let moves: Vec<_> = page
                .iter()
                .rev()
                .map(|e| (e.clone(), retried_item(e)))
                .collect();
            moved += self.broker.dead_retry(&keys, &moves).await?;
            seen += want;
        }
        Ok(moved)
    }

    /// Deletes the dead job `id` for good.
    pub async fn purge_dead(&self, queue: &str, id: &str) -> Result<(), ApiError> {
        let keys = self.keys(queue);
        let entry = self.find_dead(&keys, id).await?;
        match self.broker.dead_remove(&keys, &entry).await? {
            true => Ok(()),
            false => Err(ApiError::NotFound(format!(
                "no dead job with id {id} in {}",
                keys.dead
            ))),
        }
    }

    /// Deletes every dead job of `queue`; how many there were.
    pub async fn purge_all_dead(&self, queue: &str) -> Result<u64, ApiError> {
        Ok(self.broker.dead_clear(&self.keys(queue)).await?)
    }

    /// Moves the scheduled job `id` to the head of its queue: it runs next.
    pub async fn run_now(&self, queue: &str, id: &str) -> Result<(), ApiError> {
        let keys = self.keys(queue);
        let missing = || ApiError::NotFound(format!("no scheduled job {id} in queue {queue}"));
        // Promotion may move it between the look and the move: look again.
        for _ in 0..3 {
            let Some(item) = self.broker.find_scheduled(&keys, id).await? else {
                return Err(missing());
            };
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
            let (item, was) = match &found {
                Found::Waiting(item) => (item, Cancelled::Waiting),
                Found::Scheduled(item) => (item, Cancelled::Scheduled),
                Found::Running(node) => return self.stop_running(&keys, id, node, wait).await,
            };
            let mut envelope = match parse_item(item, usize::MAX) {
                Ok(parsed) => parsed.envelope,
                Err(e) => {
                    return Err(ApiError::Unfinished(format!(
                        "the job's item cannot be read: {e}"
                    )));
                }
            };
            envelope.set_error("cancelled");
            envelope.died_at = Some(now_rfc3339());
            let unique = envelope.unique_key.clone();
            let moved = self
                .broker
                .cancel_waiting(
                    &keys,
                    &found,
                    &envelope.to_json(),
                    dead_cap,
                    unique.as_deref().map(|k| (k, id)),
                )
                .await?;
            if moved {
                let now = now_rfc3339();
                let event = Draft::job(EventType::Cancelled, queue, id, envelope.attempt)
                    .reason(was.as_str())
                    .to_json(&self.actor, &now, 1);
                self.broker.announce(&self.sink, &event).await?;
                return Ok(was);
            }
        }
        Err(ApiError::Unfinished(format!(
            "job {id} kept moving; try again"
        )))
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
        let cancelled = self
            .broker
            .dead_entries(keys, 0, 100)
            .await?
            .iter()
            .filter_map(|entry| parse_item(entry, usize::MAX).ok())
            .any(|p| p.envelope.id == id && p.envelope.last_error.as_deref() == Some("cancelled"));
        match cancelled {
            true => Ok(Cancelled::Running(node.to_owned())),
            false => Err(ApiError::NotFound(format!(
                "job {id} ended on its own before the cancel reached it"
            ))),
        }
    }

    /// The stored entry of the dead job `id`.
    async fn find_dead(&self, keys: &QueueKeys, id: &str) -> Result<Vec<u8>, ApiError> {
        let mut start = 0;
        loop {
            let page = self.broker.dead_entries(keys, start, PAGE).await?;
            if let Some(entry) = page
                .iter()
                .find(|e| parse_item(e, usize::MAX).is_ok_and(|p| p.envelope.id == id))
            {
                return Ok(entry.clone());
            }
            if (page.len() as u64) < PAGE {
                return Err(ApiError::NotFound(format!(
                    "no dead job with id {id} in {}",
                    keys.dead
                )));
            }
            start += PAGE;
        }
    }
}

/// A stored item as a job to show; an unreadable one as its text.
fn dead_job(entry: &[u8]) -> DeadJob {
    match parse_item(entry, usize::MAX) {
        Ok(p) => {
            let env = p.envelope;
            let payload = match &env.raw {
                Some(raw) => String::from_utf8_lossy(&raw.to_bytes()).into_owned(),
                None => env.payload.get().to_owned(),
            };
            DeadJob {
                id: env.id,
                attempt: env.attempt,
                died_at: env.died_at,
                last_error: env.last_error,
                payload,
            }
        }
        Err(e) => DeadJob {
            id: "-".into(),
            attempt: 0,
            died_at: None,
            last_error: Some(format!("unreadable entry: {e}")),
            payload: String::from_utf8_lossy(entry).into_owned(),
        },
    }
}

/// What to enqueue for a dead entry: the original bytes of an item that was
/// never a valid job, else the envelope with a fresh set of attempts.
fn retried_item(entry: &[u8]) -> Vec<u8> {
    match parse_item(entry, usize::MAX) {
        Ok(p) => match p.envelope.raw {
            Some(raw) => raw.to_bytes(),
            None => {
                let mut env: Envelope = p.envelope;
                env.attempt = 0;
                env.deliveries = 0;
                env.died_at = None;
                env.to_json().into_bytes()
            }
        },
        Err(_) => entry.to_vec(),
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

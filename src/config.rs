//! Configuration: one TOML file, parsed once, overridden by the environment,
//! validated, and never consulted through an `unwrap` afterwards.
//!
//! Every default lives in this file, in the `default_*` functions beside the
//! field it fills. Every duration and number has bounds ([`bounds`], named
//! in the field's doc comment), so that a configuration `check` accepts can
//! never overflow a time later. Every rule that ties two settings together
//! is checked in [`Config::validate`], next to a comment that says why it
//! holds; so is every name that would collide with conveyor's own keys.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::duration::human;

pub mod bounds;
mod tracing;

pub use tracing::TracingConfig;

/// Where `conveyor` looks for its configuration when `--config` is not given:
/// `$CONVEYOR_CONFIG`, then the service's path, then the example in a checkout.
pub const DEFAULT_PATHS: &[&str] = &["/etc/conveyor/conveyor.toml", "config/conveyor.toml"];

/// The user's own configuration: `$XDG_CONFIG_HOME/conveyor/conveyor.toml`,
/// or `~/.config/conveyor/conveyor.toml`.
fn user_config() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|home| Path::new(&home).join(".config"))
        })?;
    Some(base.join("conveyor").join("conveyor.toml"))
}

/// Crash deliveries after which a job is quarantined as poison. A job that
/// takes its daemon down this many times would otherwise loop forever.
pub const DEFAULT_MAX_DELIVERIES: u32 = 3;

/// The whole configuration of a daemon or a CLI invocation.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach Redis.
    #[serde(default)]
    pub redis: RedisConfig,
    /// Timing of the daemon's background components.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Where lifecycle events go.
    #[serde(default)]
    pub events: EventsConfig,
    /// The queues, by name; the name is the table's name.
    #[serde(
        default,
        deserialize_with = "queues::deserialize",
        serialize_with = "queues::serialize"
    )]
    pub queues: BTreeMap<String, QueueConfig>,
    /// Periodic jobs, by name.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleConfig>,
    /// The dashboard, `/metrics` and the web API.
    #[serde(default)]
    pub web: WebConfig,
    /// Where traces go (off unless an endpoint is set).
    #[serde(default)]
    pub tracing: TracingConfig,
    /// Flows: how long their state stays, how large they may be.
    #[serde(default)]
    pub flows: FlowsConfig,
    /// The top-level tables that are not conveyor's own: each the
    /// node-wide settings of the handler it is named after (`[email]`,
    /// `[exec]`), read and checked by that handler
    /// ([`crate::handlers::HandlerContext::settings`]); a table no
    /// registered handler owns is refused when the handlers are built.
    #[serde(skip)]
    pub handlers: BTreeMap<String, toml::Table>,
    /// Variables a handler reads as if they were in the environment, before
    /// the environment itself ([`Config::env`]): a program that embeds the
    /// daemon (and the tests) sets them here.
    #[serde(skip)]
    pub env_overrides: BTreeMap<String, String>,
    /// The directory relative paths are relative to: the config file's, or
    /// the working directory when there is no file.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The file it was read from, if any.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// `[schedules.<name>]`: a job enqueued on `queue` at each tick of `cron`
/// (in `timezone`) or `every` interval.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The queue the jobs go to: a configured queue's name.
    pub queue: String,
    /// A five-field cron expression; or `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed interval of whole seconds; or `cron`. 1s to a year
    /// ([`bounds::EVERY`]).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
    /// The IANA time zone of `cron` (UTC when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The payload of each job.
    #[serde(default = "default_schedule_payload")]
    pub payload: serde_json::Value,
    /// Overrides the queue's `max_attempts` for these jobs
    /// ([`bounds::MAX_ATTEMPTS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// A tick is skipped while the job of an earlier tick is still waiting or
    /// running, for at most this long (the lock's lifetime). 1s to a year
    /// ([`bounds::UNIQUE_FOR`]).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub unique_for: Option<Duration>,
}

impl ScheduleConfig {
    /// When it ticks, or what is wrong with how it says so.
    pub(crate) fn spec(&self) -> Result<crate::schedule::Spec, ScheduleError> {
        use crate::schedule::Spec;
        let at = |field: &'static str| {
            move |message: String| ScheduleError {
                field: Some(field),
                message,
            }
        };
        match (&self.cron, self.every) {
            (Some(cron), None) => {
                Spec::cron(cron, self.timezone.as_deref().unwrap_or("UTC")).map_err(at("cron"))
            }
            (None, Some(_)) if self.timezone.is_some() => Err(at("timezone")(
                "applies to cron only; an interval ticks the same in every zone".into(),
            )),
            (None, Some(every)) => Spec::every(every).map_err(at("every")),
            (cron, every) => Err(ScheduleError {
                field: None,
                message: match (cron, every) {
                    (Some(_), Some(_)) => "give cron or every, not both".into(),
                    _ => "give cron = \"0 3 * * *\" (five fields) or every = \"5m\"".into(),
                },
            }),
        }
    }
}

/// What is wrong with a schedule, and in which of its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduleError {
    /// The setting, if the fault is in one.
    pub(crate) field: Option<&'static str>,
    /// What is wrong.
    pub(crate) message: String,
}

impl ScheduleError {
    /// The message, naming schedule `name` and the setting.
    pub(crate) fn at(&self, name: &str) -> String {
        match self.field {
            Some(field) => format!("schedules.{name}.{field}: {}", self.message),
            None => format!("schedules.{name}: {}", self.message),
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://`, `rediss://` (TLS) or `redis+unix://` URL. `REDIS_URL` overrides it.
    #[serde(default = "default_redis_url")]
    pub url: MaskedUrl,
    /// Connections kept for short commands; blocking pops have their own.
    /// 1 to 1024 ([`bounds::POOL_SIZE`]).
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Prefix of a queue's list when its table sets no `key`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// How long one command may take before it counts as failed (and is
    /// retried). Blocking pops get their block time on top of this. 10ms
    /// to 1h ([`bounds::RESPONSE_TIMEOUT`]).
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// `rediss://`: trust this CA (PEM) instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `rediss://` with mutual TLS: this client's certificate (PEM), with `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// The key of `client_cert` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Where `url` came from when not from the file (`REDIS_URL`), for errors.
    #[serde(skip)]
    pub url_from: Option<&'static str>,
    /// From `REDIS_PASSWORD`, `REDIS_PASSWORD_FILE` or the systemd credential
    /// `redis_password`; it overrides a password in the URL.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Instead of `url`: the master that these sentinels watch, followed
    /// through failovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelConfig>,
    /// Instead of `url`: a Redis Cluster, found from some of its nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `[redis] sentinel = { master = "mymaster", nodes = ["redis://10.0.0.1:26379"] }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels know the master by (`sentinel monitor <name> ...`).
    pub master: String,
    /// The sentinels: `redis://host:26379`, or `rediss://` when they and
    /// the master speak TLS. A password in these URLs is the sentinels' own
    /// (`requirepass` in sentinel.conf); the master's comes from
    /// `REDIS_PASSWORD` and its kin.
    pub nodes: Vec<MaskedUrl>,
    /// The ACL user on the master, if not `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The database number on the master: 0 to 65535 ([`bounds::DB`]).
    #[serde(default)]
    pub db: i64,
}

/// `[redis] cluster = { nodes = ["redis://10.0.0.1:7000", ...] }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Some of the cluster's nodes (any will do; the rest are found from
    /// them): `redis://host:port`, or `rediss://` for TLS.
    pub nodes: Vec<MaskedUrl>,
    /// The ACL user, if not `default`; its password comes from
    /// `REDIS_PASSWORD` and its kin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// How long running jobs may finish after SIGTERM before they are put back.
    /// The systemd unit's `TimeoutStopSec` must exceed it (see systemd/conveyor.service).
    /// 0 to 24h ([`bounds::SHUTDOWN_TIMEOUT`]).
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often the node's heartbeat key is refreshed; also the reaper's period.
    /// 100ms to 1h ([`bounds::HEARTBEAT_INTERVAL`]).
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// TTL of the heartbeat key: a node silent this long is dead and its
    /// in-flight jobs are recovered. Must exceed 2 x `heartbeat_interval`;
    /// at most 24h ([`bounds::NODE_TTL`]).
    #[serde(default = "default_node_ttl", with = "humantime_serde")]
    pub node_ttl: Duration,
    /// Crash deliveries after which a job is dead-lettered as poison. 1 to
    /// 1000 ([`bounds::MAX_DELIVERIES`]).
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u32,
    /// Threads that run the daemon's tasks. One keeps up with Redis (a job
    /// costs the daemon less CPU than it costs Redis), and more add the cost
    /// of handing work between them; raise it for handlers that compute.
    /// 1 to 256 ([`bounds::THREADS`]).
    #[serde(default = "default_threads")]
    pub threads: usize,
}

/// `[flows]` (DESIGN section 13).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsConfig {
    /// How long a flow's state (document, each node's status, attempt,
    /// result, times) stays readable once it ended: 1s to 366d.
    #[serde(default = "default_flow_ttl", with = "humantime_serde")]
    pub flow_ttl: Duration,
    /// Most nodes a flow may have: 1 to 100,000; a larger document is
    /// refused whole.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            flow_ttl: default_flow_ttl(),
            max_nodes: default_max_nodes(),
        }
    }
}

fn default_flow_ttl() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn default_max_nodes() -> usize {
    10_000
}

/// `[web]`: the dashboard, `/metrics`, `/healthz`, `/readyz` and the web API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Where to listen (`127.0.0.1:9740`); unset, no web server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// From `CONVEYOR_WEB_TOKEN`, the file named by `CONVEYOR_WEB_TOKEN_FILE`,
    /// or `$CREDENTIALS_DIRECTORY/web_token`. Required for a listen address
    /// that is not loopback; when set, every route but `/healthz` and
    /// `/readyz` asks for it.
    #[serde(skip)]
    pub token: Option<Secret>,
}

/// `[events]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Pub/sub channel of lifecycle events, and the key of their replay
    /// stream: no queue's key, nor another key conveyor keeps
    /// (checked at load by the key names' own rules).
    #[serde(default = "default_events_channel")]
    pub channel: String,
    /// Approximate length of the replay stream; 0 turns the stream off. At
    /// most 100,000,000 ([`bounds::STREAM_MAXLEN`]).
    #[serde(default = "default_stream_maxlen")]
    pub stream_maxlen: u64,
}

/// Which lifecycle events a queue publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    /// Every transition, `job.started` included.
    All,
    /// Outcomes only: no `job.started`.
    Outcomes,
    /// Nothing for this queue.
    Off,
}

/// `backoff = { base = "15s", max = "1h" }`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the first retry; it doubles with every attempt. From
    /// 1ms, at most `max` ([`bounds::BACKOFF`]).
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub base: Duration,
    /// Ceiling of the delay: at most 7 days ([`bounds::BACKOFF`]).
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
}

impl Backoff {
    /// Delay before retrying after failed run number `attempt` (1-based):
    /// `base * 2^(attempt-1)` capped at `max`, then "equal jitter" (a random
    /// point in its upper half) so that jobs that failed together do not all
    /// come back together, while each still waits at least half its delay.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exp = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        let full = self.base.saturating_mul(exp).min(self.max);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// `rate_limit = { limit = 10, window = "60s" }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Jobs allowed to start within any one window: 1 to 1,000,000
    /// ([`bounds::RATE_LIMIT`]).
    pub limit: u32,
    /// Length of the sliding window: 1ms to 7 days ([`bounds::RATE_WINDOW`]).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Optional key whose value keys a separate window each: a top-level
    /// payload field, or a key the queue's handler defines
    /// ([`crate::handlers::Handler::rate_limit_key`]).
    #[serde(default)]
    pub key: Option<String>,
}

/// `group = { key = "tenant", limit = 2 }` (DESIGN section 14): jobs grouped
/// by a top-level field of their payload and served in turn.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The payload's top-level field whose value names a job's group (a
    /// job without it is in the group `""`): 1 to 128 bytes.
    pub key: String,
    /// At most this many jobs of one group in flight at once across all
    /// daemons: 1 to 1,000,000 ([`bounds::LIMIT`]); unset, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// One job of a group at a time, in push order, a retrying job holding
    /// its group (`limit` is then 1, or unset).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
}

impl Group {
    /// The most jobs of one group in flight at once, 0 for no limit: 1 for
    /// an ordered group.
    pub fn per_group(&self) -> u32 {
        match self.ordered {
            true => 1,
            false => self.limit.unwrap_or(0),
        }
    }
}

/// Which payload a debounced burst runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The first arrival's job.
    First,
    /// The last arrival's job.
    #[default]
    Last,
    /// A job whose payload is a JSON array of every arrival's payload, in
    /// order.
    All,
}

impl Keep {
    /// The name the configuration and `lua/take.lua` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::First => "first",
            Keep::Last => "last",
            Keep::All => "all",
        }
    }
}

/// `debounce = { key = "user_id", window = "5s", max_wait = "1m", keep =
/// "last" }` (DESIGN section 14): jobs with the same value of a payload
/// field, arriving within `window` of each other, run as one job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Debounce {
    /// The payload's top-level field whose value names a burst (a job
    /// without it runs at once): 1 to 128 bytes.
    pub key: String,
    /// A burst runs this long after its last arrival: 1ms to 7 days
    /// ([`bounds::DEBOUNCE`]).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// ...but never later than this after its first: from `window` to 7
    /// days; 10 times `window` (at most 7 days) when unset.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<Duration>,
    /// Which payload the burst runs with.
    #[serde(default)]
    pub keep: Keep,
}

impl Debounce {
    /// `max_wait`, or its default.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
            .unwrap_or_else(|| (self.window * 10).min(*bounds::DEBOUNCE.end()))
    }
}

/// `[queues.<name>]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Name of the handler in the registry ([`crate::handlers::Registry`]).
    pub handler: String,
    /// The Redis list; `<key_prefix><name>` when unset. Neither another
    /// queue's nor in conveyor's own names
    /// (checked at load by the key names' own rules), nor the events channel.
    #[serde(default)]
    pub key: Option<String>,
    /// Jobs of this queue running at once on one daemon: 1 to 10,000
    /// ([`bounds::CONCURRENCY`]).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Attempts before a failing job is dead; a job's envelope may override
    /// it. 1 to 1,000,000 ([`bounds::MAX_ATTEMPTS`]).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Retry delays.
    #[serde(default = "default_backoff")]
    pub backoff: Backoff,
    /// Longest one run of the handler may take; it then fails (transiently).
    /// 1ms to 7 days ([`bounds::TIMEOUT`]).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Which lifecycle events to publish.
    #[serde(default = "default_event_level")]
    pub events: EventLevel,
    /// Jobs whose payload is larger are dead-lettered; list items larger
    /// than this plus 64 KiB (the envelope's room) are dead-lettered
    /// unread. 1 to 512 MiB ([`bounds::MAX_PAYLOAD_BYTES`]).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Sliding-window limit on job starts.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// At most this many of the queue's jobs in flight at once across all
    /// daemons (DESIGN section 14), counted in Redis from the nodes'
    /// in-flight lists: a dead daemon's share comes back when its jobs are
    /// recovered. 1 to 1,000,000 ([`bounds::LIMIT`]); unset, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Jobs grouped by a payload field and served in turn, each group
    /// within its own limit (DESIGN section 14); unset, one line for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    /// Jobs with the same value of a payload field, arriving close
    /// together, run as one (DESIGN section 14); unset, each runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<Debounce>,
    /// Length cap of the dead letter list; the oldest entries go first. 1
    /// to 10,000,000 ([`bounds::DEAD_MAX_JOBS`]).
    #[serde(default = "default_dead_max_jobs")]
    pub dead_max_jobs: u32,
    /// Keep a status record `conveyor:job:<id>` for each job.
    #[serde(default)]
    pub track: bool,
    /// How long a status record outlives the job's last transition. 1s to
    /// a year ([`bounds::TRACK_TTL`]).
    #[serde(default = "default_track_ttl", with = "humantime_serde")]
    pub track_ttl: Duration,
    /// Count the queue's outcomes, waiting and run times per minute and
    /// per day in Redis, for `/api/history` and the dashboard's charts
    /// (DESIGN section 10.1). On by default.
    #[serde(default = "default_history")]
    pub history: bool,
    /// The handler's own options: the table named after the handler inside
    /// the queue's (`[queues.thumbs.exec]`), read by the handler itself.
    #[serde(skip)]
    pub options: Option<toml::Table>,
}

fn default_redis_url() -> MaskedUrl {
    MaskedUrl("redis://127.0.0.1:6379/0".into())
}
fn default_pool_size() -> u32 {
    16
}
fn default_key_prefix() -> String {
    "jobs:".into()
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(25)
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_node_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_max_deliveries() -> u32 {
    DEFAULT_MAX_DELIVERIES
}
fn default_threads() -> usize {
    1
}
fn default_events_channel() -> String {
    "conveyor:events".into()
}
fn default_stream_maxlen() -> u64 {
    10_000
}
fn default_concurrency() -> u32 {
    10
}
fn default_max_attempts() -> u32 {
    25
}
fn default_backoff_base() -> Duration {
    Duration::from_secs(15)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(3600)
}
fn default_backoff() -> Backoff {
    Backoff {
        base: default_backoff_base(),
        max: default_backoff_max(),
    }
}
fn default_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_event_level() -> EventLevel {
    EventLevel::All
}
fn default_max_payload_bytes() -> usize {
    1024 * 1024
}
fn default_dead_max_jobs() -> u32 {
    10_000
}
fn default_schedule_payload() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}
fn default_history() -> bool {
    true
}

fn default_track_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl RedisConfig {
    /// Whether the URL (or the sentinels' or the cluster's) ask for TLS.
    pub(crate) fn is_tls(&self) -> bool {
        let tls = |nodes: &[MaskedUrl]| nodes.iter().any(|n| n.expose().starts_with("rediss://"));
        match (&self.sentinel, &self.cluster) {
            (Some(s), _) => tls(&s.nodes),
            (None, Some(c)) => tls(&c.nodes),
            (None, None) => self.url.expose().starts_with("rediss://"),
        }
    }

    /// What the configuration points at, for messages: the URL, or the
    /// sentinels and the master's name; passwords masked.
    pub(crate) fn target(&self) -> String {
        if let Some(c) = &self.cluster {
            let nodes: Vec<String> = c.nodes.iter().map(MaskedUrl::masked).collect();
            return format!("cluster of {}", nodes.join(", "));
        }
        match &self.sentinel {
            Some(s) => s.describe(),
            None => match self.url_from {
                Some(var) => format!("{} (from {var})", self.url.masked()),
                None => self.url.masked(),
            },
        }
    }

    /// Exactly one of `url`, `sentinel` and `cluster`, each of them a
    /// setting that can work.
    fn validate_target(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let (name, nodes) = match (&self.sentinel, &self.cluster) {
            (None, None) => return Ok(()),
            (Some(_), Some(_)) => {
                return invalid("give one of redis.sentinel and redis.cluster, not both".into());
            }
            (Some(s), None) => ("sentinel", &s.nodes),
            (None, Some(c)) => ("cluster", &c.nodes),
        };
        if let Some(var) = self.url_from {
            return invalid(format!(
                "{var} is set but redis.{name} is configured: give one of them"
            ));
        }
        if self.url != default_redis_url() {
            return invalid(format!(
                "give one of redis.url and redis.{name}, not both: with {name}, conveyor finds \
                 the servers through the nodes it lists"
            ));
        }
        if let Some(s) = &self.sentinel {
            if s.master.trim().is_empty() {
                return invalid(
                    "redis.sentinel.master must name the master the sentinels watch".into(),
                );
            }
        }
        let Some(first) = nodes.first() else {
            return invalid(format!("redis.{name}.nodes must list at least one node"));
        };
        let tls = first.expose().starts_with("rediss://");
        for node in nodes {
            let scheme = node.expose().split("://").next().unwrap_or_default();
            if !matches!(scheme, "redis" | "rediss") || !node.expose().contains("://") {
                return invalid(format!(
                    "redis.{name}.nodes: {} is not a redis:// or rediss:// URL",
                    node.masked()
                ));
            }
            if (scheme == "rediss") != tls {
                return invalid(format!(
                    "redis.{name}.nodes: either all use TLS (rediss://) or none"
                ));
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let set = [
            ("ca_file", &self.ca_file),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ];
        if let Some((name, _)) = set
            .iter()
            .find(|(_, v)| v.is_some())
            .filter(|_| !self.is_tls())
        {
            return Err(ConfigError::Invalid(format!(
                "redis.{name} applies to TLS: the URL must begin with rediss://, not {}",
                self.target()
            )));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(ConfigError::Invalid(
                "redis.client_cert and redis.client_key go together (mutual TLS)".into(),
            ));
        }
        Ok(())
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: default_redis_url(),
            pool_size: default_pool_size(),
            key_prefix: default_key_prefix(),
            response_timeout: default_response_timeout(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            url_from: None,
            password: None,
            sentinel: None,
            cluster: None,
        }
    }
}

impl SentinelConfig {
    /// The master's name and the sentinels, passwords masked.
    pub(crate) fn describe(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(MaskedUrl::masked).collect();
        format!("master {:?} of sentinels {}", self.master, nodes.join(", "))
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: default_shutdown_timeout(),
            heartbeat_interval: default_heartbeat_interval(),
            node_ttl: default_node_ttl(),
            max_deliveries: default_max_deliveries(),
            threads: default_threads(),
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            channel: default_events_channel(),
            stream_maxlen: default_stream_maxlen(),
        }
    }
}

/// A URL that may carry a password (`redis://:pw@host`); it prints, logs and
/// serializes with the password replaced by `***`. [`MaskedUrl::expose`] is the
/// one way to the clear text, for the client that needs it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct MaskedUrl(String);

impl MaskedUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the URL carries a password.
    pub(crate) fn has_password(&self) -> bool {
        self.masked() != self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn masked(&self) -> String {
        mask_url(&self.0)
    }

    /// The text the mask hides, for scrubbing it from other messages.
    pub(crate) fn hidden(&self) -> Vec<&str> {
        password_spans(&self.0)
            .into_iter()
            .map(|span| &self.0[span])
            .collect()
    }
}

impl fmt::Display for MaskedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for MaskedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl Serialize for MaskedUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// Replaces the password of `scheme://user:password@host...` with `***`,
/// and the value of a `pass` or `password` query parameter, the form
/// redis-rs takes for unix sockets (`redis+unix:///run/redis.sock?pass=...`).
///
/// A password written unencoded may hold any character, `/`, `?`, `#`, `@`
/// and `&` included, so the mask errs on the side of hiding: the userinfo
/// ends at the last `@`, and a query password runs to the end of the URL.
pub(crate) fn mask_url(url: &str) -> String {
    let mut shown = url.to_owned();
    // From the end, so that the first span's offsets still hold.
    for span in password_spans(url).into_iter().rev() {
        shown.replace_range(span, "***");
    }
    shown
}

/// Where a URL holds passwords: the userinfo's, then a query's (which
/// runs to the end of the URL).
fn password_spans(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans: Vec<_> = userinfo_password(url).into_iter().collect();
    if let Some(query) = query_password(url) {
        if spans.last().is_none_or(|s| s.end <= query.start) {
            spans.push(query);
        }
    }
    spans
}

/// `scheme://user:<this>@host`: the userinfo ends at the last `@`.
fn userinfo_password(url: &str) -> Option<std::ops::Range<usize>> {
    let scheme_end = url.find("://")? + 3;
    let rest = &url[scheme_end..];
    let at = rest.rfind('@')?;
    let colon = rest[..at].find(':')?;
    // A '/', '?' or '#' before the colon: not a userinfo, but an '@'
    // further on, in a path or a query.
    if rest[..colon].contains(['/', '?', '#']) {
        return None;
    }
    Some(scheme_end + colon + 1..scheme_end + at)
}

/// `?pass=<this>` or `?password=<this>`, to the end of the URL.
fn query_password(url: &str) -> Option<std::ops::Range<usize>> {
    let mut at = url.find('?')? + 1;
    while at < url.len() {
        let param = &url[at..];
        for key in ["pass=", "password="] {
            if param.starts_with(key) {
                return Some(at + key.len()..url.len());
            }
        }
        at += param.find('&')? + 1;
    }
    None
}

/// A secret string: never printed, logged or serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The clear text, for the library that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a configuration cannot be used. The CLI exits 78 (EX_CONFIG) on any of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a source: it would print twice).
        reason: std::io::Error,
    },
    /// No file was given and none of the usual places has one.
    #[error(
        "no configuration file found (looked for {}): give --config FILE, or set CONVEYOR_CONFIG",
        searched.join(", ")
    )]
    NotFound {
        /// The places looked at, in order.
        searched: Vec<String>,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The settings contradict each other or are out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Finds, reads, parses, overrides from the environment and validates the
    /// configuration. With no `path`, the first of `$CONVEYOR_CONFIG` and
    /// [`DEFAULT_PATHS`] that exists is read; if none does, that is an
    /// error naming the places looked at.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(path) => path.to_path_buf(),
            None => Self::find()?,
        };
        let mut config = Self::from_file(&path)?;
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// The file `load` reads when given none: `$CONVEYOR_CONFIG`, else the
    /// first of [`DEFAULT_PATHS`] and the user's own
    /// (`$XDG_CONFIG_HOME/conveyor/conveyor.toml`, by default under
    /// `~/.config`; `scripts/run-local` links it to the local run's) that
    /// exists.
    pub(crate) fn find() -> Result<PathBuf, ConfigError> {
        if let Some(path) = std::env::var_os("CONVEYOR_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let places: Vec<PathBuf> = DEFAULT_PATHS
            .iter()
            .map(PathBuf::from)
            .chain(user_config())
            .collect();
        places
            .iter()
            .find(|p| p.exists())
            .cloned()
            .ok_or_else(|| ConfigError::NotFound {
                searched: std::iter::once("$CONVEYOR_CONFIG (unset)".to_owned())
                    .chain(places.iter().map(|p| p.display().to_string()))
                    .collect(),
            })
    }

    /// Parses a file without environment overrides or validation.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        let mut config = Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        // Relative paths are relative to the file, not to wherever the daemon
        // happens to be started from; to the file a link leads to, not to
        // the link (the user's configuration links to the local run's).
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let base = real.parent().unwrap_or(Path::new("."));
        config.dir = base.to_owned();
        config.file = Some(path.to_owned());
        let redis = &mut config.redis;
        let files = [
            &mut redis.ca_file,
            &mut redis.client_cert,
            &mut redis.client_key,
        ];
        for path in files.into_iter().flatten() {
            *path = base.join(&path);
        }
        Ok(config)
    }

    /// Parses TOML text; the error is the parser's message, pointing at the
    /// line. The tables that are not conveyor's own ([`CORE_TABLES`]) are
    /// kept whole in [`Config::handlers`], for the handlers they are named
    /// after to read.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        use serde::Deserialize as _;
        let shown = |mut e: toml::de::Error| {
            e.set_input(Some(text));
            e.to_string().trim_end().to_owned()
        };
        let root = toml::de::DeTable::parse(text).map_err(shown)?;
        let span = root.span();
        let mut table = root.into_inner();
        let theirs: Vec<_> = table
            .keys()
            .filter(|k| !CORE_TABLES.contains(&k.get_ref().as_ref()))
            .cloned()
            .collect();
        let mut handlers = BTreeMap::new();
        for key in theirs {
            let Some(value) = table.remove(&key) else {
                continue;
            };
            let name = key.get_ref().to_string();
            let section = toml::Table::deserialize(toml::de::ValueDeserializer::from(value))
                .map_err(|e| {
                    format!(
                        "{}\n({name}: a top-level key that is not conveyor's own is the table \
                         of a handler's settings, such as [email])",
                        shown(e)
                    )
                })?;
            handlers.insert(name, section);
        }
        if let Some(queues) = table.get("queues") {
            queues::check_lines(queues)
                .map_err(|(name, e)| format!("{}\n(in [queues.{name}])", shown(e)))?;
        }
        let core = toml::de::Deserializer::from(toml::Spanned::new(span, table));
        let mut config = Self::deserialize(core).map_err(shown)?;
        config.handlers = handlers;
        Ok(config)
    }

    /// The variable `name`, from [`Config::env_overrides`] or else the
    /// environment: what a handler reads its own overrides and secrets from.
    pub fn env(&self, name: &str) -> Option<String> {
        match self.env_overrides.get(name) {
            Some(value) => Some(value.clone()),
            None => std::env::var(name).ok(),
        }
    }

    /// Applies `REDIS_URL`, `CONVEYOR_WEB_LISTEN`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_SERVICE_NAME`, and the Redis and web
    /// token sources (a handler applies its own, [`Config::env`]).
    /// `env` looks a variable up; tests pass their own.
    pub(crate) fn apply_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(url) = env("REDIS_URL").filter(|s| !s.is_empty()) {
            self.redis.url = MaskedUrl(url);
            self.redis.url_from = Some("REDIS_URL");
        }
        self.redis.password = secret(&env, "REDIS_PASSWORD", "redis_password")?;
        self.web.token = secret(&env, "CONVEYOR_WEB_TOKEN", "web_token")?;
        self.tracing.apply_env(&env);
        if let Some(listen) = env("CONVEYOR_WEB_LISTEN") {
            self.web.listen = match listen.trim() {
                "" => None,
                addr => Some(addr.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "CONVEYOR_WEB_LISTEN={addr:?} is not an address and port such as \
                         127.0.0.1:9740 (empty for no web server)"
                    ))
                })?),
            };
        }
        Ok(())
    }

    /// Checks the bounds of every setting ([`bounds`]), the rules between
    /// settings, and that no name collides with conveyor's own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        // First: the rules below add and multiply values within them.
        bounds::check(self)?;
        let d = &self.daemon;
        // A node refreshes its key every heartbeat_interval; the key must
        // survive one missed refresh, or a busy but healthy node is declared
        // dead and its running jobs are handed to someone else.
        if d.node_ttl <= d.heartbeat_interval * 2 {
            return invalid(format!(
                "daemon.node_ttl ({}) must exceed 2 x daemon.heartbeat_interval ({})",
                human(d.node_ttl),
                human(d.heartbeat_interval)
            ));
        }
        self.redis.validate_target()?;
        self.redis.validate_tls()?;
        let f = &self.flows;
        if !(Duration::from_secs(1)..=Duration::from_secs(366 * 86_400)).contains(&f.flow_ttl) {
            return invalid(format!(
                "flows.flow_ttl ({}) must be 1s to 366d",
                human(f.flow_ttl)
            ));
        }
        if !(1..=100_000).contains(&f.max_nodes) {
            return invalid(format!(
                "flows.max_nodes ({}) must be 1 to 100000",
                f.max_nodes
            ));
        }
        self.tracing.validate()?;
        let channel = &self.events.channel;
        if channel.is_empty() {
            return invalid("events.channel must not be empty".into());
        }
        // The channel's replay stream is a key of the same name.
        if let Some(taken) = crate::broker::keys::refused_as_events_channel(channel) {
            return invalid(format!(
                "events.channel {channel:?} names its replay stream, which would be among the \
                 keys that {taken}: choose another name"
            ));
        }
        if let Some(listen) = self.web.listen {
            // Anyone who reaches the port could pause queues and purge jobs.
            if !listen.ip().is_loopback() && self.web.token.is_none() {
                return invalid(format!(
                    "web.listen {listen} is reachable from other machines: set a token in \
                     CONVEYOR_WEB_TOKEN, CONVEYOR_WEB_TOKEN_FILE or the credential web_token, \
                     or listen on 127.0.0.1"
                ));
            }
            if self
                .web
                .token
                .as_ref()
                .is_some_and(|t| t.expose().len() < 16)
            {
                return invalid("the web token must be at least 16 characters long".into());
            }
        }
        let mut keys = BTreeSet::new();
        for (name, q) in &self.queues {
            let at = |field: &str| format!("queues.{name}.{field}");
            check_name(name)
                .map_err(|e| ConfigError::Invalid(format!("queue name {name:?} {e}")))?;
            let key = self.queue_key(name);
            check_name(&key).map_err(|e| ConfigError::Invalid(format!("{} {e}", at("key"))))?;
            if !keys.insert(key.clone()) {
                return invalid(format!("two queues use the Redis list {key:?}"));
            }
            let from = match q.key {
                Some(_) => String::new(),
                None => " (redis.key_prefix and the queue's name)".to_owned(),
            };
            if let Some(taken) = crate::broker::keys::refused_as_queue(&key) {
                return invalid(format!(
                    "{} {key:?}{from} is among the keys that {taken}: choose another key",
                    at("key")
                ));
            }
            if key == *channel {
                return invalid(format!(
                    "{} {key:?}{from} is the events channel's, whose replay stream is a key \
                     of that name: choose another key or events.channel",
                    at("key")
                ));
            }
            if q.backoff.base > q.backoff.max {
                return invalid(format!(
                    "{} ({}) must not be above backoff.max ({})",
                    at("backoff.base"),
                    human(q.backoff.base),
                    human(q.backoff.max)
                ));
            }
        }
        for (name, schedule) in &self.schedules {
            let at = |field: &'static str, message: String| {
                ConfigError::Invalid(
                    ScheduleError {
                        field: Some(field),
                        message,
                    }
                    .at(name),
                )
            };
            check_name(name)
                .map_err(|e| ConfigError::Invalid(format!("schedule name {name:?} {e}")))?;
            if !self.queues.contains_key(&schedule.queue) {
                return Err(at(
                    "queue",
                    format!("no queue {:?} in the configuration", schedule.queue),
                ));
            }
            schedule
                .spec()
                .map_err(|e| ConfigError::Invalid(e.at(name)))?;
        }
        Ok(())
    }

    /// The Redis list of queue `name`, whether configured or not.
    pub fn queue_key(&self, name: &str) -> String {
        match self.queues.get(name).and_then(|q| q.key.clone()) {
            Some(key) => key,
            None => format!("{}{name}", self.redis.key_prefix),
        }
    }

    /// The effective configuration as TOML, secrets masked, for the startup
    /// log: the handlers' tables after conveyor's own, each masked by
    /// `mask` (given the handler's name and its table) after passwords in
    /// URLs.
    pub(crate) fn masked_toml_with(&self, mask: &dyn Fn(&str, &mut toml::Table)) -> String {
        let mut shown = self.clone();
        shown.handlers.clear();
        for q in shown.queues.values_mut() {
            if let Some(options) = q.options.as_mut() {
                let mut value = toml::Value::Table(std::mem::take(options));
                mask_urls(&mut value);
                if let toml::Value::Table(mut table) = value {
                    mask(&q.handler, &mut table);
                    *options = table;
                }
            }
        }
        let mut text = toml::to_string(&shown).unwrap_or_else(|e| format!("<unprintable: {e}>"));
        for (name, settings) in &self.handlers {
            let mut shown = toml::Value::Table(settings.clone());
            mask_urls(&mut shown);
            if let toml::Value::Table(table) = &mut shown {
                mask(name, table);
            }
            let mut one = toml::Table::new();
            one.insert(name.clone(), shown);
            text.push('\n');
            text.push_str(&toml::to_string(&one).unwrap_or_else(|e| format!("<unprintable: {e}>")));
        }
        text
    }
}

/// The top-level tables that are conveyor's own; any other is a handler's.
pub const CORE_TABLES: &[&str] = &[
    "redis",
    "daemon",
    "events",
    "web",
    "queues",
    "schedules",
    "tracing",
    "flows",
];

/// The `[queues]` table: each queue's table less the one named after its
/// handler, which becomes [`QueueConfig::options`] for the handler to read.
mod queues {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    use super::{QueueConfig, mask_urls};

    /// Settings of every queue that are tables themselves, not a handler's.
    const OWN_TABLES: &[&str] = &["backoff", "rate_limit", "group", "debounce"];

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, QueueConfig>, D::Error> {
        let tables = BTreeMap::<String, toml::Table>::deserialize(d)?;
        tables
            .into_iter()
            .map(|(name, table)| {
                queue(&name, table)
                    .map(|q| (name.clone(), q))
                    .map_err(|e| D::Error::custom(format!("queues.{name}: {e}")))
            })
            .collect()
    }

    /// Reads each queue's own settings where they stand in the file, so
    /// that a mistake in one (an unknown key, a wrong type) is reported at
    /// its line; [`deserialize`] reads the queues as plain tables, which
    /// know no lines. The handler's tables and `channel` are left to it.
    pub(super) fn check_lines(
        queues: &toml::Spanned<toml::de::DeValue<'_>>,
    ) -> Result<(), (String, toml::de::Error)> {
        let Some(queues) = queues.get_ref().as_table() else {
            return Ok(());
        };
        for (name, queue) in queues {
            let Some(table) = queue.get_ref().as_table() else {
                continue;
            };
            let handler = table.get("handler").and_then(|h| h.get_ref().as_str());
            let mut own = toml::de::DeTable::new();
            for (key, value) in table {
                let name: &str = key.get_ref();
                if name != "channel"
                    && Some(name) != handler
                    && (!value.get_ref().is_table() || OWN_TABLES.contains(&name))
                {
                    own.insert(key.clone(), value.clone());
                }
            }
            let own = toml::Spanned::new(queue.span(), toml::de::DeValue::Table(own));
            QueueConfig::deserialize(toml::de::ValueDeserializer::from(own))
                .map_err(|e| (name.get_ref().to_string(), e))?;
        }
        Ok(())
    }

    fn queue(name: &str, mut table: toml::Table) -> Result<QueueConfig, String> {
        let handler = table
            .get("handler")
            .and_then(|h| h.as_str())
            .map(str::to_owned);
        let mut options = match &handler {
            Some(h) => match table.remove(h) {
                Some(toml::Value::Table(options)) => Some(options),
                Some(_) => return Err(format!("{h} must be a table of the {h} handler's options")),
                None => None,
            },
            None => None,
        };
        // `channel` predates handler tables (the publish handler's) and is
        // still accepted beside the queue's settings: it is an option of
        // the queue's handler, which refuses it if it has no such option.
        if let Some(channel) = table.remove("channel") {
            let h = handler.as_deref().unwrap_or("handler");
            let options = options.get_or_insert_with(toml::Table::new);
            if options.contains_key("channel") {
                return Err(format!("channel is given twice: here and in {h}"));
            }
            options.insert("channel".into(), channel);
        }
        if let Some((other, _)) = table
            .iter()
            .find(|(k, v)| v.is_table() && !OWN_TABLES.contains(&k.as_str()))
        {
            return Err(format!(
                "[queues.{name}.{other}] holds options of the {other:?} handler, but this \
                 queue's handler is {:?}",
                handler.as_deref().unwrap_or("not set")
            ));
        }
        let mut q = QueueConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| e.to_string().trim_end().to_owned())?;
        q.options = options;
        Ok(q)
    }

    /// Each queue's table with its handler's options back in, as the file
    /// has them.
    pub(super) fn serialize<S: Serializer>(
        queues: &BTreeMap<String, QueueConfig>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut out = BTreeMap::new();
        for (name, q) in queues {
            let mut table = toml::Table::try_from(q).map_err(S::Error::custom)?;
            if let Some(options) = &q.options {
                let mut shown = toml::Value::Table(options.clone());
                mask_urls(&mut shown);
                table.insert(q.handler.clone(), shown);
            }
            out.insert(name, table);
        }
        out.serialize(s)
    }
}

/// A handler's table as the startup log shows it before the handler masks
/// its own secrets ([`crate::handlers::Registry::mask_secrets`]): passwords
/// in URLs masked, wherever they are.
fn mask_urls(value: &mut toml::Value) {
    match value {
        toml::Value::String(s) if s.contains("://") => *s = mask_url(s),
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| mask_urls(v)),
        toml::Value::Array(items) => items.iter_mut().for_each(mask_urls),
        _ => {}
    }
}

/// Queue names and keys end up inside `{...}` hash tags and log lines.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 200 {
        return Err("must be 1 to 200 characters long");
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        return Err("must not contain whitespace, control characters or braces");
    }
    Ok(())
}

/// A password from, in order: the variable `var`, the file `<var>_FILE`
/// names, `$CREDENTIALS_DIRECTORY/<credential>` (systemd's `LoadCredential=`).
/// A trailing newline in a file is not part of it, and an empty file means no
/// password, as an empty variable does: the service unit needs its
/// credential file to exist even when the password is unused.
/// `env` looks a variable up.
pub(crate) fn secret(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
    credential: &str,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(pw) = env(var).filter(|s| !s.is_empty()) {
        return Ok(Some(Secret(pw)));
    }
    let file = env(&format!("{var}_FILE"))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("CREDENTIALS_DIRECTORY")
                .map(|dir| Path::new(&dir).join(credential))
                .filter(|p| p.exists())
        });
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(&file).map_err(|reason| ConfigError::Read {
        path: file.clone(),
        reason,
    })?;
    let password = text.trim_end_matches(['\r', '\n']);
    Ok((!password.is_empty()).then(|| Secret(password.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::from_toml(text).expect("parses")
    }

    #[test]
    fn defaults_match_the_design() {
        let c = parse("[queues.q]\nhandler = \"noop\"\n");
        let q = &c.queues["q"];
        assert_eq!(c.redis.url.expose(), "redis://127.0.0.1:6379/0");
        assert_eq!(c.daemon.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(c.daemon.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.daemon.node_ttl, Duration::from_secs(30));
        assert_eq!(c.daemon.threads, 1);
        assert_eq!(q.max_attempts, 25);
        assert_eq!(q.backoff.base, Duration::from_secs(15));
        assert_eq!(q.backoff.max, Duration::from_secs(3600));
        assert_eq!(q.max_payload_bytes, 1 << 20);
        assert_eq!(q.dead_max_jobs, 10_000);
        assert_eq!(c.queue_key("q"), "jobs:q");
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml("[daemon]\nshutdown_timout = \"1s\"\n").unwrap_err();
        assert!(err.contains("shutdown_timout"), "{err}");
        let err =
            Config::from_toml("[queues.q]\nhandler = \"noop\"\nconcurency = 3\n").unwrap_err();
        assert!(err.contains("concurency"), "{err}");
    }

    /// A mistake in a queue's table is reported at its own line, not at
    /// the first queue's header.
    #[test]
    fn a_queues_mistake_points_at_its_line() {
        let first = "[queues.email]\nhandler = \"noop\"\n\n[queues.hash]\nhandler = \"noop\"\n";
        let err = Config::from_toml(&format!("{first}concurency = 4\n")).unwrap_err();
        assert!(
            err.contains("line 6")
                && err.contains("concurency = 4")
                && err.contains("[queues.hash]"),
            "{err}"
        );
        assert!(!err.contains("line 1,"), "{err}");
        let err = Config::from_toml(&format!("{first}concurrency = \"four\"\n")).unwrap_err();
        assert!(
            err.contains("line 6") && err.contains("expected u32"),
            "{err}"
        );
        let err = Config::from_toml(&format!("{first}backoff = {{ bse = \"1s\" }}\n")).unwrap_err();
        assert!(err.contains("line 6") && err.contains("bse"), "{err}");
    }

    #[test]
    fn exactly_one_redis_target() {
        let nodes = r#"nodes = ["redis://:s3cret@10.0.0.1:26379", "redis://10.0.0.2:26379"]"#;
        let sentinel = format!("[redis]\nsentinel = {{ master = \"mymaster\", {nodes} }}\n");
        let c = parse(&sentinel);
        c.validate().expect("a sentinel table alone is valid");
        assert_eq!(
            c.redis.target(),
            "master \"mymaster\" of sentinels redis://:***@10.0.0.1:26379, redis://10.0.0.2:26379"
        );
        assert!(
            !c.masked_toml_with(&|_, _| {}).contains("s3cret"),
            "{}",
            c.masked_toml_with(&|_, _| {})
        );

        let both = sentinel.replace("[redis]\n", "[redis]\nurl = \"redis://10.0.0.9/0\"\n");
        let err = parse(&both).validate().unwrap_err().to_string();
        assert!(err.contains("one of redis.url and redis.sentinel"), "{err}");

        let mut c = parse(&sentinel);
        c.apply_env(|name| (name == "REDIS_URL").then(|| "redis://10.0.0.9/0".into()))
            .expect("env");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("REDIS_URL is set but redis.sentinel"), "{err}");

        for (bad, says) in [
            (
                r#"{ master = "", nodes = ["redis://a:26379"] }"#,
                "must name the master",
            ),
            (r#"{ master = "m", nodes = [] }"#, "at least one node"),
            (
                r#"{ master = "m", nodes = ["a:26379"] }"#,
                "is not a redis:// or rediss:// URL",
            ),
            (
                r#"{ master = "m", nodes = ["redis://a:26379", "rediss://b:26379"] }"#,
                "either all use TLS",
            ),
        ] {
            let err = parse(&format!("[redis]\nsentinel = {bad}\n"))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let cluster =
            parse("[redis]\ncluster = { nodes = [\"redis://:pw@a:7000\", \"redis://b:7000\"] }\n");
        cluster.validate().expect("a cluster table alone is valid");
        assert_eq!(
            cluster.redis.target(),
            "cluster of redis://:***@a:7000, redis://b:7000"
        );
        let err = parse("[redis]\ncluster = { nodes = [] }\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis.cluster.nodes must list at least one node"),
            "{err}"
        );
        let both = format!("{sentinel}cluster = {{ nodes = [\"redis://a:7000\"] }}\n");
        let err = parse(&both).validate().unwrap_err().to_string();
        assert!(
            err.contains("one of redis.sentinel and redis.cluster"),
            "{err}"
        );
        let err =
            Config::from_toml("[redis]\nsentinel = { master = \"m\", nodes = [], port = 1 }\n")
                .unwrap_err();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn node_ttl_must_exceed_two_heartbeats() {
        let c = parse("[daemon]\nheartbeat_interval = \"5s\"\nnode_ttl = \"10s\"\n");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("node_ttl"), "{err}");
        parse("[daemon]\nheartbeat_interval = \"5s\"\nnode_ttl = \"11s\"\n")
            .validate()
            .expect("11s > 2 x 5s");
    }

    #[test]
    fn a_handler_table_becomes_its_options() {
        let c = parse(
            "[queues.t]\nhandler = \"exec\"\nconcurrency = 2\n[queues.t.exec]\ncommand = [\"w\"]\n",
        );
        let options = c.queues["t"].options.as_ref().expect("options");
        assert_eq!(options["command"].as_array().map(Vec::len), Some(1));
        assert_eq!(c.queues["t"].concurrency, 2);
        let back = Config::from_toml(&c.masked_toml_with(&|_, _| {}))
            .expect("the effective config parses");
        assert_eq!(back.queues["t"].options, c.queues["t"].options);
    }

    #[test]
    fn publish_keeps_its_channel_beside_the_queue_settings() {
        let c = parse("[queues.o]\nhandler = \"publish\"\nchannel = \"orders\"\n");
        let options = c.queues["o"].options.as_ref().expect("options");
        assert_eq!(options["channel"].as_str(), Some("orders"));
        let err = Config::from_toml(
            "[queues.o]\nhandler = \"publish\"\nchannel = \"a\"\npublish = { channel = \"b\" }\n",
        )
        .unwrap_err();
        assert!(err.contains("channel is given twice"), "{err}");
    }

    #[test]
    fn options_of_another_handler_and_misplaced_settings_are_refused() {
        // `channel` beside the queue's settings is its handler's option,
        // which a handler without it refuses when it is built.
        let c = parse("[queues.o]\nhandler = \"noop\"\nchannel = \"x\"\n");
        let options = c.queues["o"].options.as_ref().expect("options");
        assert_eq!(options["channel"].as_str(), Some("x"));
        let err =
            Config::from_toml("[queues.o]\nhandler = \"noop\"\n[queues.o.exec]\ncommand = []\n")
                .unwrap_err();
        assert!(
            err.contains("[queues.o.exec] holds options of the \"exec\" handler, but this queue's handler is \"noop\""),
            "{err}"
        );
        let err = Config::from_toml("[queues.o]\nhandler = \"exec\"\nexec = 3\n").unwrap_err();
        assert!(err.contains("exec must be a table"), "{err}");
    }

    #[test]
    fn schedules_are_read_and_checked() {
        let c = parse(
            "[queues.r]\nhandler = \"noop\"\n[schedules.n]\nqueue = \"r\"\ncron = \"0 3 * * *\"\n\
             timezone = \"Europe/Paris\"\npayload = { kind = \"nightly\", n = [1, 2] }\nunique_for = \"1h\"\n",
        );
        c.validate().expect("valid");
        let n = &c.schedules["n"];
        assert_eq!(
            n.payload,
            serde_json::json!({"kind": "nightly", "n": [1, 2]})
        );
        assert_eq!(n.unique_for, Some(Duration::from_secs(3600)));
        assert_eq!(
            n.spec().expect("a spec").describe(),
            "0 3 * * * (Europe/Paris)"
        );
        let back = Config::from_toml(&c.masked_toml_with(&|_, _| {}))
            .expect("the effective config parses");
        assert_eq!(back.schedules["n"].payload, n.payload);
        let empty =
            parse("[queues.r]\nhandler = \"noop\"\n[schedules.e]\nqueue = \"r\"\nevery = \"1m\"\n");
        assert_eq!(empty.schedules["e"].payload, serde_json::json!({}));
        let err = parse("[queues.r]\nhandler = \"noop\"\n[schedules.e]\nqueue = \"r\"\nevery = \"1m\"\nmax_attempts = 0\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("schedules.e.max_attempts must be between 1 and 1000000 (it is 0)"),
            "{err}"
        );
    }

    #[test]
    fn every_duration_and_number_is_bounded_before_a_rule_uses_it() {
        let huge = "\"500000000000y\"";
        let q = "[queues.q]\nhandler = \"noop\"\n";
        for (toml, says) in [
            // 2 x heartbeat_interval would overflow in the rule after it.
            (
                format!("[daemon]\nheartbeat_interval = {huge}\n"),
                "daemon.heartbeat_interval",
            ),
            (format!("[daemon]\nnode_ttl = {huge}\n"), "daemon.node_ttl"),
            (
                format!("[daemon]\nshutdown_timeout = {huge}\n"),
                "daemon.shutdown_timeout",
            ),
            (
                "[daemon]\nmax_deliveries = 0\n".into(),
                "daemon.max_deliveries",
            ),
            ("[daemon]\nthreads = 257\n".into(), "daemon.threads"),
            ("[redis]\npool_size = 0\n".into(), "redis.pool_size"),
            (
                format!("[redis]\nresponse_timeout = {huge}\n"),
                "redis.response_timeout",
            ),
            (
                "[redis]\nsentinel = { master = \"m\", nodes = [\"redis://a:1\"], db = -1 }\n"
                    .into(),
                "redis.sentinel.db",
            ),
            (
                "[events]\nstream_maxlen = 100000001\n".into(),
                "events.stream_maxlen",
            ),
            (format!("{q}timeout = {huge}\n"), "queues.q.timeout"),
            (
                format!("{q}backoff = {{ base = \"1s\", max = {huge} }}\n"),
                "queues.q.backoff.max",
            ),
            (
                format!("{q}backoff = {{ base = \"0s\", max = \"1s\" }}\n"),
                "queues.q.backoff.base",
            ),
            (format!("{q}concurrency = 0\n"), "queues.q.concurrency"),
            (
                format!("{q}max_attempts = 4000000000\n"),
                "queues.q.max_attempts",
            ),
            (
                format!("{q}max_payload_bytes = 0\n"),
                "queues.q.max_payload_bytes",
            ),
            (format!("{q}dead_max_jobs = 0\n"), "queues.q.dead_max_jobs"),
            (format!("{q}track_ttl = \"0s\"\n"), "queues.q.track_ttl"),
            (format!("{q}limit = 0\n"), "queues.q.limit"),
            (format!("{q}limit = 1000001\n"), "queues.q.limit"),
            (
                format!("{q}group = {{ key = \"tenant\", limit = 0 }}\n"),
                "queues.q.group.limit",
            ),
            (
                format!("{q}rate_limit = {{ limit = 0, window = \"1s\" }}\n"),
                "queues.q.rate_limit.limit",
            ),
            (
                format!("{q}rate_limit = {{ limit = 1, window = {huge} }}\n"),
                "queues.q.rate_limit.window",
            ),
            (
                format!("{q}[schedules.s]\nqueue = \"q\"\nevery = \"1m\"\nmax_attempts = 0\n"),
                "schedules.s.max_attempts",
            ),
            (
                format!("{q}[schedules.s]\nqueue = \"q\"\nevery = \"1m\"\nunique_for = {huge}\n"),
                "schedules.s.unique_for",
            ),
        ] {
            let err = parse(&toml).validate().unwrap_err().to_string();
            assert!(
                err.contains(&format!("{says} must be between")),
                "{toml}: {err}"
            );
        }
        // A group's key: 1 to 128 bytes; an ordered group's limit is 1.
        let long = "k".repeat(129);
        for (toml, says) in [
            (
                format!("{q}group = {{ key = \"\" }}\n"),
                "must be 1 to 128 bytes",
            ),
            (
                format!("{q}group = {{ key = \"{long}\" }}\n"),
                "must be 1 to 128 bytes",
            ),
            (
                format!("{q}group = {{ key = \"order\", limit = 2, ordered = true }}\n"),
                "an ordered group runs one job at a time",
            ),
        ] {
            let err = parse(&toml).validate().unwrap_err().to_string();
            assert!(err.contains("queues.q.group."), "{toml}: {err}");
            assert!(err.contains(says), "{toml}: {err}");
        }
        let ordered = parse(&format!(
            "{q}group = {{ key = \"order\", ordered = true }}\n"
        ));
        ordered
            .validate()
            .expect("an ordered group without a limit is valid");
        assert_eq!(
            ordered.queues["q"].group.as_ref().map(Group::per_group),
            Some(1)
        );
        let grouped = parse(&format!("{q}group = {{ key = \"tenant\", limit = 2 }}\n"));
        grouped
            .validate()
            .expect("a group of a key and a limit is valid");
        let group = grouped.queues["q"].group.clone().expect("the group");
        assert_eq!((group.key.as_str(), group.limit), ("tenant", Some(2)));
        // A debounce: its window bounded, its longest wait at least it.
        for (toml, says) in [
            (
                format!("{q}debounce = {{ key = \"u\", window = \"0s\" }}\n"),
                "queues.q.debounce.window must be between",
            ),
            (
                format!("{q}debounce = {{ key = \"u\", window = \"5s\", max_wait = \"1s\" }}\n"),
                "queues.q.debounce.max_wait: must be at least the window",
            ),
            (
                format!("{q}debounce = {{ key = \"\", window = \"5s\" }}\n"),
                "queues.q.debounce.key: must be 1 to 128 bytes",
            ),
        ] {
            let err = parse(&toml).validate().unwrap_err().to_string();
            assert!(err.contains(says), "{toml}: {err}");
        }
        let debounced = parse(&format!(
            "{q}debounce = {{ key = \"u\", window = \"5s\" }}\n"
        ));
        debounced
            .validate()
            .expect("a debounce of a key and a window is valid");
        let d = debounced.queues["q"]
            .debounce
            .clone()
            .expect("the debounce");
        assert_eq!(
            (d.keep, d.max_wait()),
            (Keep::Last, Duration::from_secs(50))
        );
        let keep = Config::from_toml(&format!(
            "{q}debounce = {{ key = \"u\", window = \"5s\", keep = \"newest\" }}\n"
        ));
        assert!(keep.is_err(), "keep is first, last or all");
        let unknown = Config::from_toml(&format!("{q}group = {{ key = \"t\", weight = 2 }}\n"));
        assert!(unknown.is_err(), "an unknown field of group is refused");
        let err = parse(&format!("{q}backoff = {{ base = \"2s\", max = \"1s\" }}\n"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("queues.q.backoff.base (2s) must not be above backoff.max (1s)"),
            "{err}"
        );
        // The largest values are valid.
        parse(&format!(
            "[daemon]\nheartbeat_interval = \"1h\"\nnode_ttl = \"1day\"\nshutdown_timeout = \"1day\"\n\
             {q}timeout = \"7days\"\nbackoff = {{ base = \"7days\", max = \"7days\" }}\n\
             max_attempts = 1000000\ntrack_ttl = \"1y\"\n\
             [schedules.s]\nqueue = \"q\"\nevery = \"1y\"\nunique_for = \"1y\"\n"
        ))
        .validate()
        .expect("the bounds are in");
    }

    #[test]
    fn names_that_collide_with_conveyors_own_keys_are_refused() {
        let q = "[queues.q]\nhandler = \"noop\"\n";
        for (toml, says) in [
            (
                format!("{q}key = \"conveyor:events\"\n"),
                "queues.q.key \"conveyor:events\" is among",
            ),
            (
                format!("{q}key = \"conveyor:job:x\"\n"),
                "queues.q.key \"conveyor:job:x\" is among",
            ),
            (
                format!("{q}key = \"cache:x\"\n"),
                "queues.q.key \"cache:x\" is among",
            ),
            (
                format!("[redis]\nkey_prefix = \"conveyor:\"\n{q}"),
                "queues.q.key \"conveyor:q\" (redis.key_prefix and the queue's name) is among",
            ),
            (
                format!("[events]\nchannel = \"custom:list\"\n{q}key = \"custom:list\"\n"),
                "is the events channel's",
            ),
            (
                format!("[events]\nchannel = \"conveyor:node:n\"\n{q}"),
                "events.channel \"conveyor:node:n\"",
            ),
            (
                format!("[events]\nchannel = \"conveyor:flows\"\n{q}"),
                "events.channel \"conveyor:flows\"",
            ),
            (
                format!("[events]\nchannel = \"cache:x\"\n{q}"),
                "events.channel \"cache:x\"",
            ),
            (
                format!("[events]\nchannel = \"{{jobs:q}}:dead\"\n{q}"),
                "events.channel \"{jobs:q}:dead\"",
            ),
        ] {
            let err = parse(&toml).validate().unwrap_err().to_string();
            assert!(err.contains(says), "{toml}: {err}");
        }
        parse(&format!(
            "[events]\nchannel = \"conveyor:events:staging\"\n{q}key = \"app:q\"\n"
        ))
        .validate()
        .expect("free names");
    }

    #[test]
    fn two_queues_on_one_list_are_refused() {
        let c = parse(
            "[queues.a]\nhandler = \"noop\"\n[queues.b]\nhandler = \"noop\"\nkey = \"jobs:a\"\n",
        );
        assert!(c.validate().unwrap_err().to_string().contains("jobs:a"));
    }

    #[test]
    fn durations_are_human_strings() {
        let c = parse(
            "[queues.q]\nhandler = \"noop\"\ntimeout = \"250ms\"\nbackoff = { base = \"1s\", max = \"5m\" }\n",
        );
        let q = &c.queues["q"];
        assert_eq!(q.timeout, Duration::from_millis(250));
        assert_eq!(q.backoff.max, Duration::from_secs(300));
        assert!(Config::from_toml("[daemon]\nnode_ttl = 30\n").is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = parse("[redis]\nurl = \"redis://file:1/0\"\n");
        c.apply_env(|k| match k {
            "REDIS_URL" => Some("redis://env:2/0".into()),
            _ => None,
        })
        .expect("applies");
        assert_eq!(c.redis.url.expose(), "redis://env:2/0");
    }

    #[test]
    fn password_file_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("smtp_password"), "s3cret\n").expect("write");
        let creds = dir.path().to_string_lossy().into_owned();
        let env = |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| creds.clone());
        let found = secret(&env, "CONVEYOR_SMTP_PASSWORD", "smtp_password").expect("reads");
        assert_eq!(found.as_ref().map(Secret::expose), Some("s3cret"));
    }

    #[test]
    fn an_empty_credential_file_means_no_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("smtp_password"), "\n").expect("write");
        let creds = dir.path().to_string_lossy().into_owned();
        let env = |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| creds.clone());
        let found = secret(&env, "CONVEYOR_SMTP_PASSWORD", "smtp_password").expect("reads");
        assert!(found.is_none());
    }

    #[test]
    fn the_web_listen_address_and_its_token_rule() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut c = parse("[web]\nlisten = \"127.0.0.1:9740\"\n");
        c.apply_env(env(&[("CONVEYOR_WEB_LISTEN", "")]))
            .expect("empty turns it off");
        assert_eq!(c.web.listen, None);
        c.apply_env(env(&[("CONVEYOR_WEB_LISTEN", "[::1]:0")]))
            .expect("an address");
        assert_eq!(c.web.listen, Some("[::1]:0".parse().expect("addr")));
        c.validate().expect("loopback needs no token");
        let bad = c.apply_env(env(&[("CONVEYOR_WEB_LISTEN", "localhost:80")]));
        assert!(bad.is_err_and(|e| e.to_string().contains("CONVEYOR_WEB_LISTEN")));
        let mut c = parse("[web]\nlisten = \"0.0.0.0:9740\"\n");
        let refused = c.validate().expect_err("needs a token");
        assert!(
            refused.to_string().contains("CONVEYOR_WEB_TOKEN"),
            "{refused}"
        );
        c.apply_env(env(&[("CONVEYOR_WEB_TOKEN", "0123456789abcdef")]))
            .expect("env");
        c.validate().expect("with a token");
        assert!(!format!("{c:?}{}", c.masked_toml_with(&|_, _| {})).contains("0123456789abcdef"));
    }

    #[test]
    fn secrets_never_print() {
        let mut c = parse("[redis]\nurl = \"redis://user:topsecret@h:6379/0\"\n");
        c.redis.password = Some(Secret::new("hunter2"));
        let shown = format!("{c:?}\n{}\n{}", c.masked_toml_with(&|_, _| {}), c.redis.url);
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://user:***@h:6379/0"), "{shown}");
    }

    #[test]
    fn mask_url_handles_the_shapes() {
        assert_eq!(mask_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(mask_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            mask_url("smtp://u@h?tls=starttls"),
            "smtp://u@h?tls=starttls"
        );
        assert_eq!(
            mask_url("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
        assert_eq!(mask_url("redis://u:p@ss@h/0"), "redis://u:***@h/0");
        assert_eq!(
            mask_url("redis+unix:///r.sock?db=1&pass=pw&user=u#x"),
            "redis+unix:///r.sock?db=1&pass=***"
        );
        assert_eq!(
            mask_url("redis://:pw@h/0?password=pw"),
            "redis://:***@h/0?password=***"
        );
    }

    #[test]
    fn mask_url_hides_any_password_text() {
        for pw in [
            "a/b", "a?b", "a#b", "a@b", "a&b", "a:b", "/?#@&:", "é€ ", "a%2Fb",
        ] {
            for url in [
                format!("redis://user:{pw}@h:6379/0"),
                format!("rediss://:{pw}@h/0?protocol=resp3"),
                format!("redis+unix:///r.sock?db=1&pass={pw}"),
                format!("redis+unix:///r.sock?password={pw}&db=2"),
            ] {
                let shown = mask_url(&url);
                let rest = shown.replace("***", "");
                assert!(!rest.contains(pw), "{url} shown as {shown}");
                assert!(shown.contains("***"), "{url} shown as {shown}");
                // What the mask hid, to scrub from other messages.
                let masked = MaskedUrl::new(url.clone());
                assert!(
                    masked.hidden().iter().any(|h| h.contains(pw)),
                    "{url}: {:?}",
                    masked.hidden()
                );
            }
        }
    }

    #[test]
    fn redis_tls_files_are_relative_to_the_config_file_and_need_rediss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("conveyor.toml");
        let text = "[redis]\nurl = \"rediss://h:6380/0\"\nca_file = \"ca.pem\"\n\
                    client_cert = \"c.pem\"\nclient_key = \"/k.pem\"\n";
        std::fs::write(&path, text).expect("write");
        let c = Config::from_file(&path).expect("parses");
        assert_eq!(c.redis.ca_file, Some(dir.path().join("ca.pem")));
        assert_eq!(c.redis.client_cert, Some(dir.path().join("c.pem")));
        assert_eq!(c.redis.client_key, Some(PathBuf::from("/k.pem")));
        c.redis.validate_tls().expect("valid");
        let plain = parse("[redis]\nurl = \"redis://h/0\"\nca_file = \"ca.pem\"\n");
        let err = plain.redis.validate_tls().unwrap_err().to_string();
        assert!(
            err.contains("redis.ca_file") && err.contains("rediss://"),
            "{err}"
        );
        let half = parse("[redis]\nurl = \"rediss://h/0\"\nclient_cert = \"c.pem\"\n");
        let err = half.redis.validate_tls().unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn passwords_in_handler_urls_are_masked_in_the_startup_log() {
        let c = parse(
            "[queues.hooks]\nhandler = \"http\"\n[queues.hooks.http]\n\
             url = \"https://user:url-secret@h/x\"\n\
             [email]\nsmtp_url = \"smtp://mailer:section-secret@h:25\"\n",
        );
        let masked_by_the_handler = std::cell::Cell::new(0);
        let shown = c.masked_toml_with(&|_, table| {
            masked_by_the_handler.set(masked_by_the_handler.get() + 1);
            table.insert("masked".into(), true.into());
        });
        assert!(
            !shown.contains("url-secret") && !shown.contains("section-secret"),
            "{shown}"
        );
        assert!(shown.contains("https://user:***@h/x"), "{shown}");
        assert_eq!(
            masked_by_the_handler.get(),
            2,
            "the options and the section"
        );
        assert_eq!(shown.matches("masked = true").count(), 2, "{shown}");
    }

    #[test]
    fn redis_password_comes_from_its_channels() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("redis_password"), "from/credential\n").expect("write");
        let creds = dir.path().to_str().expect("utf-8").to_owned();
        let mut c = parse("[queues.q]\nhandler = \"noop\"\n");
        c.apply_env(|k| (k == "CREDENTIALS_DIRECTORY").then(|| creds.clone()))
            .expect("applies");
        assert_eq!(
            c.redis.password.as_ref().map(Secret::expose),
            Some("from/credential")
        );
        c.apply_env(|k| match k {
            "REDIS_PASSWORD" => Some("from-env".into()),
            "CREDENTIALS_DIRECTORY" => Some(creds.clone()),
            _ => None,
        })
        .expect("applies");
        assert_eq!(
            c.redis.password.as_ref().map(Secret::expose),
            Some("from-env")
        );
        assert!(!format!("{:?}{}", c.redis, c.masked_toml_with(&|_, _| {})).contains("from-env"));
    }

    #[test]
    fn tables_that_are_not_conveyors_are_kept_for_the_handlers() {
        let c = parse(
            "[email]\ntransport = \"smtp\"\n[exec]\nuser = \"w\"\n[queues.q]\nhandler = \"noop\"\n",
        );
        assert_eq!(c.handlers["email"]["transport"].as_str(), Some("smtp"));
        assert_eq!(c.handlers["exec"]["user"].as_str(), Some("w"));
        assert!(!c.handlers.contains_key("queues"));
        // A key that is not a table is no handler's: refused, with its line.
        let err = Config::from_toml("[redis]\n[queues.q]\nhandler = \"noop\"\n[web]\n").map(|_| ());
        assert!(err.is_ok());
        let err = Config::from_toml("stray = 1\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("stray"), "{err}");
        // Errors in conveyor's own tables still point at the line.
        let err = Config::from_toml("[email]\n\n[daemon]\nshutdown_timout = \"1s\"\n").unwrap_err();
        assert!(
            err.contains("line 4") && err.contains("shutdown_timout"),
            "{err}"
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(
                d1 >= Duration::from_secs(5) && d1 <= Duration::from_secs(10),
                "{d1:?}"
            );
            let d3 = b.delay(3);
            assert!(
                d3 >= Duration::from_secs(20) && d3 <= Duration::from_secs(40),
                "{d3:?}"
            );
            let d50 = b.delay(u32::MAX);
            assert!(
                d50 >= Duration::from_secs(30) && d50 <= Duration::from_secs(60),
                "{d50:?}"
            );
        }
    }
}

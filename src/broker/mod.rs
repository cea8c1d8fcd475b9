//! The broker: the only code that talks to Redis.
//!
//! Short commands go through a bb8 pool of multiplexed connections. Blocking
//! pops get a dedicated connection each ([`queue::Fetcher`]), because a
//! blocking command on a multiplexed connection stalls everything else on
//! it, and because redis-rs's response timeout would cut a long block short.
//!
//! A connection that failed at the transport level is marked broken and the
//! pool drops it on its next checkout, so a Redis restart heals by itself
//! without a PING before every command.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8_redis::bb8;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo as _, Pipeline, RedisError, RedisFuture,
    Value,
};

use crate::config::RedisConfig;
use target::Target;

pub(crate) mod admin;
mod cluster;
pub(crate) mod events;
#[cfg(test)]
pub(crate) mod fixture;
pub(crate) mod flows;
pub(crate) mod history;
pub(crate) mod keys;
pub(crate) mod nodes;
mod probe;
pub(crate) mod queue;
pub(crate) mod results;
mod scripts;
mod server;
pub(crate) mod stats;
pub(crate) mod store;
mod target;
pub(crate) mod ticks;
pub(crate) mod view;
pub(crate) mod writes;

pub(crate) use keys::QueueKeys;

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The URL cannot be used.
    #[error("invalid Redis URL {url}: {reason}")]
    BadUrl {
        /// The URL, password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable {
        /// The URL, password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// Redis refused the credentials, or the user lacks a permission
    /// (`WRONGPASS`, `NOAUTH`, `NOPERM`). Retrying will not help until an
    /// operator acts; the CLI exits 77 (EX_NOPERM).
    #[error("Redis at {url} refused: {reason}")]
    Denied {
        /// The URL, password masked.
        url: String,
        /// Redis's words.
        reason: String,
    },
    /// A command failed. Not the error's source: its text is already in
    /// this one's, and a chain would print it twice.
    #[error("Redis: {0}")]
    Redis(RedisError),
    /// A reply did not have the expected shape.
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
}

impl From<RedisError> for BrokerError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<redis::ParsingError> for BrokerError {
    fn from(e: redis::ParsingError) -> Self {
        Self::Protocol(e.to_string())
    }
}

impl BrokerError {
    /// Whether Redis could not be reached (as opposed to refusing a command).
    /// The CLI exits 69 (EX_UNAVAILABLE) on these.
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Redis(e) => is_transport_error(e),
            Self::BadUrl { .. } | Self::Protocol(_) | Self::Denied { .. } => false,
        }
    }

    /// Whether Redis refused the credentials or a permission.
    pub(crate) fn is_denied(&self) -> bool {
        match self {
            Self::Denied { .. } => true,
            Self::Redis(e) => is_denial(e),
            _ => false,
        }
    }
}

/// Why a `maxmemory-policy` may lose jobs, if it may: any policy but
/// `noeviction` lets Redis evict keys, queued jobs among them.
pub(crate) fn eviction_risk(policy: &str) -> Option<String> {
    (policy != "noeviction").then(|| {
        format!(
            "maxmemory-policy is {policy}: when memory runs out Redis may evict queued jobs; \
             set maxmemory-policy noeviction"
        )
    })
}

/// Whether Redis refused the credentials or a permission.
pub(crate) fn is_denial(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOPERM" | "WRONGPASS" | "NOAUTH"))
}

/// Whether an error means the connection itself is unusable.
fn is_transport_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Where the configured Redis is: a client for the URL (the password from
/// its own channel overriding the URL's, and for `rediss://` the CA and
/// client certificate files), or the sentinels that name the master.
fn target(config: &RedisConfig) -> Result<Target, BrokerError> {
    let bad = |reason: String| BrokerError::BadUrl {
        url: config.target(),
        reason,
    };
    let certificates = certificates(config).map_err(bad)?;
    if let Some(sentinel) = &config.sentinel {
        return target::Master::new(config, sentinel, certificates)
            .map(Target::Sentinel)
            .map_err(|e| bad(mask_secret(&e.to_string(), config)));
    }
    if let Some(cluster) = &config.cluster {
        return cluster::Cluster::new(config, cluster, certificates)
            .map(Target::Cluster)
            .map_err(|e| bad(mask_secret(&e.to_string(), config)));
    }
    let mut info = config.url.expose().into_connection_info().map_err(|e| {
        // redis-rs's words, never the URL itself: it may hold the password.
        let mut reason = mask_secret(&e.to_string(), config);
        if !config.url.expose().contains("://") {
            reason.push_str(
                " (a Redis URL begins with its scheme: redis://127.0.0.1:6379/0, \
                     rediss:// for TLS, or redis+unix:///run/redis/redis.sock)",
            );
        }
        if config.url.has_password() {
            reason.push_str(
                " (a password holding / ? # @ or spaces must be percent-encoded in the URL; \
                     better, give it in REDIS_PASSWORD or REDIS_PASSWORD_FILE)",
            );
        }
        bad(reason)
    })?;
    if let Some(password) = &config.password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    let client = match certificates {
        None => Client::open(info),
        Some(certificates) => Client::build_with_tls(info, certificates),
    };
    client
        .map(Target::Fixed)
        .map_err(|e| bad(mask_secret(&e.to_string(), config)))
}

/// The CA and client certificate the configuration names, read.
fn certificates(config: &RedisConfig) -> Result<Option<redis::TlsCertificates>, String> {
    if config.ca_file.is_none() && config.client_cert.is_none() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let root_cert = config.ca_file.as_deref().map(read).transpose()?;
    let client_tls = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// `text` with any password the configuration holds replaced by `***`.
fn mask_secret(text: &str, config: &RedisConfig) -> String {
    let mut text = text.replace(config.url.expose(), &config.url.masked());
    let sentinels = config
        .sentinel
        .iter()
        .flat_map(|s| &s.nodes)
        .chain(config.cluster.iter().flat_map(|c| &c.nodes));
    for node in sentinels.clone() {
        text = text.replace(node.expose(), &node.masked());
    }
    let password = config.password.iter().map(|p| p.expose());
    let hidden = sentinels.flat_map(|n| n.hidden());
    for secret in password.chain(config.url.hidden()).chain(hidden) {
        if !secret.is_empty() {
            text = text.replace(secret, "***");
        }
    }
    text
}

/// A handle on Redis; cheap to clone.
#[derive(Clone)]
pub(crate) struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    target: Arc<Target>,
    pool: bb8::Pool<Manager>,
    /// What `target` is, passwords masked, for messages.
    label: String,
    response_timeout: Duration,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("redis", &self.inner.label)
            .finish()
    }
}

impl Broker {
    /// A broker for the configured Redis. Connects lazily: this does no I/O,
    /// but must run inside a tokio runtime (the pool starts a reaper task).
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, BrokerError> {
        let target = Arc::new(target(config)?);
        let timeout = config.response_timeout;
        let manager = Manager {
            target: target.clone(),
            connect: timeout,
            response: timeout,
        };
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size)
            // Broken connections are found by `has_broken`, not by a PING per checkout.
            .test_on_check_out(false)
            .connection_timeout(timeout.max(Duration::from_secs(1)))
            .build_unchecked(manager);
        Ok(Self {
            inner: Arc::new(Inner {
                target,
                pool,
                label: config.target(),
                response_timeout: timeout,
            }),
        })
    }

    /// The URL (or the sentinels and the master's name), passwords masked,
    /// for messages.
    pub(crate) fn url(&self) -> String {
        self.inner.label.clone()
    }

    /// With Sentinel, follows the sentinels' `+switch-master` announcements
    /// in a task of its own for as long as the broker lives, so that a
    /// failover is followed at once (connection errors and `READONLY` are
    /// followed anyway). Nothing to do for a fixed address.
    pub(crate) fn follow_failovers(&self) {
        if let Target::Sentinel(_) = &*self.inner.target {
            tokio::spawn(target::watch_switches(Arc::downgrade(&self.inner.target)));
        }
    }

    /// Connects and PINGs on a fresh connection, to report precisely why
    /// Redis is unreachable.
    pub(crate) async fn ping(&self) -> Result<(), BrokerError> {
        let timeout = self.inner.response_timeout.max(Duration::from_secs(1));
        let unreachable = |e: RedisError| match is_denial(&e) {
            true => BrokerError::Denied {
                url: self.url(),
                reason: e.to_string(),
            },
            false => BrokerError::Unreachable {
                url: self.url(),
                reason: e.to_string(),
            },
        };
        let mut conn = Conn::open(&self.inner.target, timeout, timeout)
            .await
            .map_err(unreachable)?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unreachable)?;
        if pong != "PONG" {
            return Err(BrokerError::Protocol(format!("PING answered {pong:?}")));
        }
        Ok(())
    }

    /// Redis's `maxmemory-policy`, if this user may read it (managed
    /// services often refuse or rename `CONFIG`).
    pub(crate) async fn maxmemory_policy(&self) -> Option<String> {
        let mut conn = self.conn().await.ok()?;
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await
            .ok()?;
        reply.into_iter().nth(1)
    }

    /// A pooled connection for short commands.
    pub(crate) async fn conn(&self) -> Result<Conn, BrokerError> {
        loop {
            let pooled = self.inner.pool.get().await.map_err(|e| match e {
                bb8::RunError::User(e) => BrokerError::Redis(e),
                bb8::RunError::TimedOut => BrokerError::Unreachable {
                    url: self.url(),
                    reason: "no connection could be made in time".into(),
                },
            })?;
            // One to a master that is no longer the master goes back to be
            // dropped (`has_broken`), and another is taken.
            if !pooled.is_stale() {
                // A multiplexed connection is shared, not owned: take a
                // handle on it and give the slot back at once.
                return Ok(pooled.clone());
            }
        }
    }

    /// A dedicated connection whose replies may take `block` longer than
    /// usual, for blocking pops.
    pub(crate) async fn dedicated(&self, block: Duration) -> Result<Conn, BrokerError> {
        let t = self.inner.response_timeout;
        Conn::open(&self.inner.target, t, t + block)
            .await
            .map_err(|e| BrokerError::Unreachable {
                url: self.url(),
                reason: e.to_string(),
            })
    }

    /// Ends the blocking command of connection `client_id` as if its block
    /// time had run out. Atomic on the server: the command either already
    /// moved a job (and returns it) or returns nothing.
    /// `key` is the key it blocks on: in a cluster, the node that holds
    /// it is the one that knows the connection.
    pub(crate) async fn unblock(&self, client_id: u64, key: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(client_id);
        conn.query_at::<u8>(key, &cmd).await?;
        Ok(())
    }

    /// A pub/sub connection to the current master (any node of a cluster:
    /// a PUBLISH reaches them all), and a future that resolves when that is
    /// no longer the master.
    async fn pubsub(
        &self,
    ) -> Result<
        (
            redis::aio::PubSub,
            impl Future<Output = ()> + Send + 'static,
        ),
        BrokerError,
    > {
        let target = &self.inner.target;
        let unreachable = |e: RedisError| BrokerError::Unreachable {
            url: self.url(),
            reason: e.to_string(),
        };
        let generation = target.generation();
        let mut last = None;
        for client in target.clients().await.map_err(unreachable)? {
            match client.get_async_pubsub().await {
                Ok(pubsub) => return Ok((pubsub, target.ended(generation))),
                Err(e) => last = Some(e),
            }
        }
        target.lost(generation);
        Err(last.map_or_else(
            || BrokerError::Protocol("no node to subscribe on".into()),
            unreachable,
        ))
    }

    /// Whether this broker talks to a Redis Cluster: then a script touches
    /// one slot only, and status records and events are written in steps
    /// of their own.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(&*self.inner.target, Target::Cluster(_))
    }

    /// With Sentinel, the address of the master the sentinels name.
    pub(crate) async fn master_address(&self) -> Option<String> {
        match &*self.inner.target {
            Target::Fixed(_) | Target::Cluster(_) => None,
            Target::Sentinel(_) => {
                let (client, _) = self.inner.target.client().await.ok()?;
                Some(client.get_connection_info().addr().to_string())
            }
        }
    }

    /// Publishes `message` on `channel`; returns how many subscribers got it.
    pub(crate) async fn publish(&self, channel: &str, message: &[u8]) -> Result<u64, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .query_async(&mut conn)
            .await?)
    }
}

fn connection_config(connect: Duration, response: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(response))
}

/// A multiplexed connection that remembers a transport failure, so the
/// pool replaces it instead of handing it out again, and the generation of
/// the master it was made to (see [`target`]).
#[derive(Clone)]
pub(crate) struct Conn {
    inner: Link,
    state: Arc<ConnState>,
}

/// One server's connection, or a cluster's.
#[derive(Clone)]
enum Link {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

struct ConnState {
    broken: AtomicBool,
    target: Arc<Target>,
    generation: u64,
}

impl Conn {
    /// A new connection to the target's current master (or its cluster)
    /// whose requests time out after `connect` and `response`.
    async fn open(
        target: &Arc<Target>,
        connect: Duration,
        response: Duration,
    ) -> Result<Self, RedisError> {
        let (inner, generation) = match &**target {
            Target::Cluster(cluster) => {
                let conn = cluster.connect(connect, response).await?;
                (Link::Cluster(conn), 0)
            }
            _ => {
                let (client, generation) = target.client().await?;
                let config = connection_config(connect, response);
                match client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(inner) => (Link::Single(inner), generation),
                    Err(e) => {
                        target.lost(generation);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Self {
            inner,
            state: Arc::new(ConnState {
                broken: AtomicBool::new(false),
                target: target.clone(),
                generation,
            }),
        })
    }

    /// Whether it must not be used again: it failed, or the master it
    /// reaches is no longer the master.
    pub(crate) fn is_stale(&self) -> bool {
        self.state.broken.load(Ordering::Relaxed)
            || self.state.target.generation() != self.state.generation
    }

    /// Runs `cmd` where `key` lives: on a cluster, the primary that holds
    /// `key` (for commands without a key that are about one, such as
    /// `CLIENT ID` of a connection that will block on `key`).
    pub(crate) async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> Result<T, RedisError> {
        let value = match &mut self.inner {
            Link::Single(_) => return cmd.query_async(self).await,
            Link::Cluster(c) => {
                let result = c.route_command(cmd.clone(), cluster::owner_of(key)).await;
                self.note(&result);
                result?
            }
        };
        Ok(redis::from_redis_value(value)?)
    }

    /// Sends `pipeline` where `key` lives and reads `replies` replies:
    /// fewer than its commands when some are silenced (`CLIENT REPLY OFF`).
    /// On a cluster the whole pipeline goes to the primary that holds `key`.
    pub(crate) async fn pipeline_at(
        &mut self,
        key: &str,
        pipeline: Pipeline,
        replies: usize,
    ) -> Result<Vec<Value>, RedisError> {
        let result = match &mut self.inner {
            Link::Single(c) => c.req_packed_commands(&pipeline, 0, replies).await,
            Link::Cluster(c) => {
                c.route_pipeline(pipeline, 0, replies, cluster::primary_of_key(key))
                    .await
            }
        };
        self.note(&result);
        if let Ok(values) = &result {
            if target::holds_readonly(values) {
                self.broke();
            }
        }
        result
    }

    fn broke(&self) {
        self.state.broken.store(true, Ordering::Relaxed);
        self.state.target.lost(self.state.generation);
    }

    fn note<T>(&self, result: &Result<T, RedisError>) {
        if let Err(e) = result {
            if is_transport_error(e) || target::is_readonly(e) {
                self.broke();
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = match &mut self.inner {
                Link::Single(c) => c.req_packed_command(cmd).await,
                Link::Cluster(c) => c.req_packed_command(cmd).await,
            };
            self.note(&result);
            if let Ok(value) = &result {
                if target::holds_readonly(std::slice::from_ref(value)) {
                    self.broke();
                }
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = match &mut self.inner {
                Link::Single(c) => c.req_packed_commands(pipeline, offset, count).await,
                Link::Cluster(c) => cluster::query_runs(c, pipeline, offset, count).await,
            };
            self.note(&result);
            if let Ok(values) = &result {
                if target::holds_readonly(values) {
                    self.broke();
                }
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

struct Manager {
    target: Arc<Target>,
    connect: Duration,
    response: Duration,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        Conn::open(&self.target, self.connect, self.response).await
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.is_stale()
    }
}

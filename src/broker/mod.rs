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

use crate::config::{MaskedUrl, RedisConfig};

pub mod admin;
pub mod cache;
pub mod events;
pub mod keys;
pub mod nodes;
mod probe;
pub mod queue;
mod scripts;
pub mod sent;
pub mod ticks;
pub mod writes;

pub use keys::QueueKeys;

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
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Redis(e) => is_transport_error(e),
            Self::BadUrl { .. } | Self::Protocol(_) | Self::Denied { .. } => false,
        }
    }

    /// Whether Redis refused the credentials or a permission.
    pub fn is_denied(&self) -> bool {
        match self {
            Self::Denied { .. } => true,
            Self::Redis(e) => is_denial(e),
            _ => false,
        }
    }
}

/// Why a `maxmemory-policy` may lose jobs, if it may: any policy but
/// `noeviction` lets Redis evict keys, queued jobs among them.
pub fn eviction_risk(policy: &str) -> Option<String> {
    (policy != "noeviction").then(|| {
        format!(
            "maxmemory-policy is {policy}: when memory runs out Redis may evict queued jobs; \
             set maxmemory-policy noeviction"
        )
    })
}

/// Whether Redis refused the credentials or a permission.
pub fn is_denial(e: &RedisError) -> bool {
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

/// The client for the configured Redis: the URL, the password from its own
/// channel (overriding the URL's), and for `rediss://` the CA and client
/// certificate files.
fn client(config: &RedisConfig) -> Result<Client, BrokerError> {
    let bad = |reason: String| BrokerError::BadUrl {
        url: match config.url_from {
            Some(var) => format!("{} (from {var})", config.url.masked()),
            None => config.url.masked(),
        },
        reason,
    };
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
    if config.ca_file.is_none() && config.client_cert.is_none() {
        return Client::open(info).map_err(|e| bad(mask_secret(&e.to_string(), config)));
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))
    };
    let root_cert = config.ca_file.as_deref().map(read).transpose()?;
    let client_tls = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    Client::build_with_tls(info, certificates).map_err(|e| bad(mask_secret(&e.to_string(), config)))
}

/// `text` with any password the configuration holds replaced by `***`.
fn mask_secret(text: &str, config: &RedisConfig) -> String {
    let mut text = text.replace(config.url.expose(), &config.url.masked());
    let password = config.password.iter().map(|p| p.expose());
    for secret in password.chain(config.url.hidden()) {
        if !secret.is_empty() {
            text = text.replace(secret, "***");
        }
    }
    text
}

/// A handle on Redis; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    pool: bb8::Pool<Manager>,
    url: MaskedUrl,
    response_timeout: Duration,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl Broker {
    /// A broker for the configured Redis. Connects lazily: this does no I/O,
    /// but must run inside a tokio runtime (the pool starts a reaper task).
    pub fn new(config: &RedisConfig) -> Result<Self, BrokerError> {
        let client = client(config)?;
        let timeout = config.response_timeout;
        let manager = Manager {
            client: client.clone(),
            config: connection_config(timeout, timeout),
        };
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size)
            // Broken connections are found by `has_broken`, not by a PING per checkout.
            .test_on_check_out(false)
            .connection_timeout(timeout.max(Duration::from_secs(1)))
            .build_unchecked(manager);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                pool,
                url: config.url.clone(),
                response_timeout: timeout,
            }),
        })
    }

    /// The URL, password masked, for messages.
    pub fn url(&self) -> String {
        self.inner.url.masked()
    }

    /// Connects and PINGs on a fresh connection, to report precisely why
    /// Redis is unreachable.
    pub async fn ping(&self) -> Result<(), BrokerError> {
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
        let mut conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&connection_config(timeout, timeout))
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
    pub async fn maxmemory_policy(&self) -> Option<String> {
        let mut conn = self.conn().await.ok()?;
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await
            .ok()?;
        reply.into_iter().nth(1)
    }

    /// Refuses a Redis Sentinel or a Cluster node given as the plain `url`,
    /// which would otherwise answer PING and then fail every job command.
    pub async fn standalone(&self) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let info: String = match redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
        {
            Ok(info) => info,
            // A least-privilege user may not run INFO; then we cannot tell.
            Err(e) if is_denial(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mode = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_mode:"))
            .map(str::trim);
        let reason = match mode {
            Some("sentinel") => {
                "this is a Redis Sentinel, not a Redis: give the address of the master it \
                 watches (SENTINEL get-master-addr-by-name <master>); conveyor does not \
                 follow Sentinel failovers yet"
            }
            Some("cluster") => {
                "this is a node of a Redis Cluster, which conveyor does not support yet: \
                 give a standalone Redis"
            }
            _ => return Ok(()),
        };
        Err(BrokerError::BadUrl {
            url: self.url(),
            reason: reason.into(),
        })
    }

    /// A pooled connection for short commands.
    pub(crate) async fn conn(&self) -> Result<Conn, BrokerError> {
        let pooled = self.inner.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => BrokerError::Redis(e),
            bb8::RunError::TimedOut => BrokerError::Unreachable {
                url: self.url(),
                reason: "no connection could be made in time".into(),
            },
        })?;
        // A multiplexed connection is shared, not owned: take a handle on it
        // and give the slot back at once.
        Ok(pooled.clone())
    }

    /// A dedicated connection whose replies may take `block` longer than
    /// usual, for blocking pops.
    pub(crate) async fn dedicated(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, BrokerError> {
        let t = self.inner.response_timeout;
        self.inner
            .client
            .get_multiplexed_async_connection_with_config(&connection_config(t, t + block))
            .await
            .map_err(|e| BrokerError::Unreachable {
                url: self.url(),
                reason: e.to_string(),
            })
    }

    /// Ends the blocking command of connection `client_id` as if its block
    /// time had run out. Atomic on the server: the command either already
    /// moved a job (and returns it) or returns nothing.
    pub async fn unblock(&self, client_id: u64) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(client_id)
            .query_async::<u8>(&mut conn)
            .await?;
        Ok(())
    }

    /// The client, for dedicated connections (SUBSCRIBE).
    fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Publishes `message` on `channel`; returns how many subscribers got it.
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<u64, BrokerError> {
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

/// A pooled multiplexed connection that remembers a transport failure, so
/// the pool replaces it instead of handing it out again.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl Conn {
    fn note<T>(&self, result: &Result<T, RedisError>) {
        if let Err(e) = result {
            if is_transport_error(e) {
                self.broken.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
            self.note(&result);
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
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

struct Manager {
    client: Client,
    config: AsyncConnectionConfig,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Conn {
            inner,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

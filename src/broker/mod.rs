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
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::config::{MaskedUrl, RedisConfig};

pub mod admin;
pub mod cache;
pub mod events;
pub mod keys;
pub mod nodes;
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
    /// A command failed.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    /// A reply did not have the expected shape.
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
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
            Self::BadUrl { .. } | Self::Protocol(_) => false,
        }
    }
}

/// Whether an error means the connection itself is unusable.
fn is_transport_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
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
        let client = Client::open(config.url.expose()).map_err(|e| {
            let mut reason = e.to_string();
            if !config.url.expose().contains("://") {
                reason.push_str(
                    " (a Redis URL begins with its scheme: redis://127.0.0.1:6379/0, \
                     rediss:// for TLS, or redis+unix:///run/redis/redis.sock)",
                );
            }
            BrokerError::BadUrl {
                url: match config.url_from {
                    Some(var) => format!("{} (from {var})", config.url.masked()),
                    None => config.url.masked(),
                },
                reason,
            }
        })?;
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
        let unreachable = |reason: String| BrokerError::Unreachable {
            url: self.url(),
            reason,
        };
        let mut conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&connection_config(timeout, timeout))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if pong != "PONG" {
            return Err(BrokerError::Protocol(format!("PING answered {pong:?}")));
        }
        Ok(())
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

//! Where connections go: one Redis at a fixed address, or the master that a
//! set of sentinels names, found again after a failover.
//!
//! redis-rs's Sentinel client finds the master when asked and never again,
//! so following a failover is ours. Every connection remembers the
//! *generation* of the master it was made to. A transport error or
//! `READONLY` on it (the old master is gone, or now a replica), or a
//! sentinel's `+switch-master` announcement, ends that generation: the pool
//! drops the connections of older generations, and the next connect asks
//! the sentinels again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use futures::StreamExt as _;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, IntoConnectionInfo as _, RedisError, TlsCertificates, TlsMode, Value};

use crate::config::{RedisConfig, SentinelConfig};

/// The sentinels' channel that announces a new master:
/// `<name> <old ip> <old port> <new ip> <new port>`.
const SWITCH_MASTER: &str = "+switch-master";

/// Where connections go.
#[allow(clippy::large_enum_variant)] // one per broker, behind an `Arc`
pub(crate) enum Target {
    /// One Redis at a fixed address.
    Fixed(Client),
    /// The master the sentinels name.
    Sentinel(Master),
    /// A Redis Cluster.
    Cluster(super::cluster::Cluster),
}

impl Target {
    /// A client for the current master, and its generation; for a
    /// cluster, one of its listed nodes.
    pub(crate) async fn client(&self) -> Result<(Client, u64), RedisError> {
        match self {
            Self::Fixed(client) => Ok((client.clone(), 0)),
            Self::Sentinel(master) => master.client().await,
            Self::Cluster(cluster) => Ok((cluster.node_clients()?.remove(0), 0)),
        }
    }

    /// Clients for a connection of its own (SUBSCRIBE, PING), to try in
    /// order: the master, or each listed node of a cluster (a PUBLISH
    /// reaches every node).
    pub(crate) async fn clients(&self) -> Result<Vec<Client>, RedisError> {
        match self {
            Self::Fixed(client) => Ok(vec![client.clone()]),
            Self::Sentinel(master) => Ok(vec![master.client().await?.0]),
            Self::Cluster(cluster) => cluster.node_clients(),
        }
    }

    /// The current generation; connections of older ones are stale.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Self::Fixed(_) | Self::Cluster(_) => 0,
            Self::Sentinel(master) => master.generation.load(Ordering::Acquire),
        }
    }

    /// A connection of `generation` failed in a way a failover explains.
    pub(crate) fn lost(&self, generation: u64) {
        if let Self::Sentinel(master) = self {
            master.end(generation, None);
        }
    }

    /// Resolves once `generation` has ended (never, for a fixed address):
    /// for a long-lived connection that makes no requests to fail, such as
    /// a subscription.
    pub(crate) fn ended(&self, generation: u64) -> impl Future<Output = ()> + Send + 'static {
        let changes = match self {
            Self::Fixed(_) | Self::Cluster(_) => None,
            Self::Sentinel(master) => Some(master.changes.subscribe()),
        };
        async move {
            match changes {
                Some(mut changes) => {
                    // An error means the master is gone: ended too.
                    let _changed = changes.wait_for(|g| *g != generation).await;
                }
                None => std::future::pending().await,
            }
        }
    }
}

/// Whether a failed command tells that this is not (or no longer) the
/// master: a connection of an older generation, or `READONLY` from a
/// master demoted to a replica.
pub(crate) fn is_readonly(e: &RedisError) -> bool {
    e.code() == Some("READONLY")
}

/// Whether a reply (of a pipeline, which carries errors as values) holds a
/// `READONLY` error.
pub(crate) fn holds_readonly(values: &[Value]) -> bool {
    values
        .iter()
        .any(|v| matches!(v, Value::ServerError(e) if e.code() == "READONLY"))
}

/// The master of a Sentinel deployment.
pub(crate) struct Master {
    name: String,
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The master found last, and the generation it was found in.
    current: Mutex<Option<(Client, u64)>>,
    generation: AtomicU64,
    /// Tells the generation's changes to those waiting on one.
    changes: tokio::sync::watch::Sender<u64>,
    /// The last master's address, to log a change once.
    address: Mutex<String>,
    /// Bound on one search (sentinels, then the master's ROLE).
    timeout: Duration,
}

impl Master {
    /// The sentinels of `sentinel`; the master's password from `config`'s
    /// channels, TLS (with `certificates`) when the sentinels' URLs are
    /// `rediss://`. No I/O.
    pub(crate) fn new(
        config: &RedisConfig,
        sentinel: &SentinelConfig,
        certificates: Option<TlsCertificates>,
    ) -> Result<Self, RedisError> {
        let mut addresses = Vec::new();
        let mut auth = None;
        for node in &sentinel.nodes {
            let info = node.expose().into_connection_info()?;
            let settings = info.redis_settings();
            if auth.is_none() && settings.password().is_some() {
                auth = Some((
                    settings.username().map(str::to_owned),
                    settings.password().map(str::to_owned),
                ));
            }
            addresses.push(info.addr().clone());
        }
        let mut builder =
            SentinelClientBuilder::new(addresses, &sentinel.master, SentinelServerType::Master)?
                .set_client_to_redis_db(sentinel.db);
        if let Some(username) = &sentinel.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &config.password {
            builder = builder.set_client_to_redis_password(password.expose());
        }
        if let Some((username, password)) = auth {
            if let Some(username) = username {
                builder = builder.set_client_to_sentinel_username(username);
            }
            if let Some(password) = password {
                builder = builder.set_client_to_sentinel_password(password);
            }
        }
        if config.is_tls() {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certificates) = certificates {
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        Ok(Self {
            name: sentinel.master.clone(),
            sentinels: tokio::sync::Mutex::new(builder.build()?),
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
            address: Mutex::new(String::new()),
            timeout: config.response_timeout.max(Duration::from_secs(2)) * 2,
        })
    }

    fn cached(&self) -> Option<(Client, u64)> {
        let generation = self.generation.load(Ordering::Acquire);
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.clone().filter(|(_, g)| *g == generation)
    }

    /// The master found last, or a new search: the sentinels name it and it
    /// answers ROLE as a master.
    async fn client(&self) -> Result<(Client, u64), RedisError> {
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let mut sentinels = self.sentinels.lock().await;
        // Another connect may have searched while this one waited.
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let found = tokio::time::timeout(self.timeout, sentinels.async_get_client())
            .await
            .map_err(|_| {
                RedisError::from((
                    redis::ErrorKind::Io,
                    "the sentinels did not name a reachable master in time",
                ))
            })?;
        let client = match found {
            Ok(client) => client,
            Err(e) => return Err(self.explain(e, &mut sentinels).await),
        };
        let address = client.get_connection_info().addr().to_string();
        {
            let mut last = self.address.lock().unwrap_or_else(|e| e.into_inner());
            if *last != address {
                tracing::info!(master = %self.name, %address, "Redis master found through the sentinels");
                *last = address;
            }
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((client.clone(), generation));
        Ok((client, generation))
    }

    /// `e`, a failed search, in words that say whose fault it is: redis-rs
    /// reports a password refused by a sentinel and one refused by the
    /// master alike.
    async fn explain(&self, e: RedisError, sentinels: &mut SentinelClient) -> RedisError {
        use redis::ErrorKind::{AuthenticationFailed, MasterNameNotFoundBySentinel};
        match e.kind() {
            MasterNameNotFoundBySentinel => RedisError::from((
                MasterNameNotFoundBySentinel,
                "no sentinel watches a master by that name",
                format!(
                    "{:?} is not among the names of `sentinel monitor <name> ...` in their \
                     configuration",
                    self.name
                ),
            )),
            AuthenticationFailed => {
                let sentinel =
                    tokio::time::timeout(self.timeout, sentinels.async_get_sentinel_client())
                        .await
                        .ok()
                        .and_then(Result::ok);
                RedisError::from((
                    AuthenticationFailed,
                    match sentinel {
                        Some(_) => {
                            "the master refused the credentials (its password comes from \
                             REDIS_PASSWORD, REDIS_PASSWORD_FILE or the credential \
                             redis_password; its user from redis.sentinel.username)"
                        }
                        None => "the sentinels refused the credentials given in their URLs",
                    },
                ))
            }
            _ => e,
        }
    }

    /// Ends `generation` (if it is still the current one): its connections
    /// are stale and the next connect searches again.
    fn end(&self, generation: u64, why: Option<&str>) {
        let next = generation + 1;
        if self
            .generation
            .compare_exchange(generation, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.changes.send_replace(next);
            match why {
                Some(why) => tracing::info!(master = %self.name, "{why}"),
                None => tracing::debug!(
                    master = %self.name,
                    "a connection to the Redis master failed; asking the sentinels again"
                ),
            }
        }
    }

    /// A client for a sentinel that answers.
    async fn sentinel_client(&self) -> Result<Client, RedisError> {
        let mut sentinels = self.sentinels.lock().await;
        tokio::time::timeout(self.timeout, sentinels.async_get_sentinel_client())
            .await
            .map_err(|_| RedisError::from((redis::ErrorKind::Io, "no sentinel answered in time")))?
    }
}

/// Follows the sentinels' `+switch-master` announcements for as long as
/// `target` lives, ending the current generation when our master moves: a
/// failover is then followed at once, not at the next failed command.
pub(crate) async fn watch_switches(target: Weak<Target>) {
    const RETRY: Duration = Duration::from_secs(1);
    const LOOK: Duration = Duration::from_secs(5);
    loop {
        let Some(strong) = target.upgrade() else {
            return;
        };
        let Target::Sentinel(master) = &*strong else {
            return;
        };
        let subscribed = async {
            let client = master.sentinel_client().await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(SWITCH_MASTER).await?;
            Ok::<_, RedisError>(pubsub)
        }
        .await;
        let name = master.name.clone();
        drop(strong);
        match subscribed {
            Ok(mut pubsub) => {
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        m = messages.next() => m,
                        () = tokio::time::sleep(LOOK) => {
                            if target.strong_count() == 0 {
                                return;
                            }
                            continue;
                        }
                    };
                    let Some(message) = message else { break };
                    let text: String = message.get_payload().unwrap_or_default();
                    let mut words = text.split(' ');
                    if words.next() != Some(name.as_str()) {
                        continue;
                    }
                    let Some(strong) = target.upgrade() else {
                        return;
                    };
                    if let Target::Sentinel(master) = &*strong {
                        let words: Vec<&str> = words.collect();
                        let why = match words.as_slice() {
                            [old_ip, old_port, new_ip, new_port] => format!(
                                "the sentinels moved the Redis master from {old_ip}:{old_port} \
                                 to {new_ip}:{new_port}; reconnecting"
                            ),
                            _ => "the sentinels moved the Redis master; reconnecting".into(),
                        };
                        master.end(strong.generation(), Some(&why));
                    }
                }
                tracing::debug!(master = %name, "lost the sentinel's announcements; subscribing again");
            }
            Err(e) => {
                tracing::debug!(master = %name, error = %e, "cannot follow the sentinels' announcements yet");
            }
        }
        tokio::time::sleep(RETRY).await;
        if target.strong_count() == 0 {
            return;
        }
    }
}

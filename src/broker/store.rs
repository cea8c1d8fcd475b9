//! What a handler keeps in Redis, through [`HandlerStore`]: keys of its own
//! under its queue's slot (`{K}:<name>`, beside the queue's keys, so that a
//! Lua script or a Cluster slot move treats them with the queue), and
//! entries of the shared response cache (`cache:<sha256 hex of a name>`,
//! which applications read directly). The email handler's sent markers
//! (`{K}:sent:<id>`) and the http handler's cached responses are kept this
//! way; a handler from the library keeps its state the same way.

use std::sync::Arc;
use std::time::Duration;

use super::{Broker, BrokerError, keys};

/// A queue's own subkeys, which a handler's names may not start with (as
/// their first `:`-separated part): conveyor's keys of the queue, and those
/// the queue's groups and flows are to use.
const RESERVED: &[&str] = &[
    "inflight",
    "nodes",
    "scheduled",
    "dead",
    "stats",
    "ratelimit",
    "paused",
    "cancel",
    "unique",
    "schedule",
    "group",
    "groups",
    "held",
    "debounce",
    "limit",
    "flow",
    "flows",
];

/// The longest name of a key a handler keeps.
const MAX_NAME: usize = 512;

/// Redis state of one queue's handler. Cheap to clone; every call is one
/// round trip.
#[derive(Clone)]
pub struct HandlerStore {
    broker: Broker,
    list: Arc<str>,
}

/// Why a [`HandlerStore`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name cannot be a key of the handler's: a bug of the handler's,
    /// not something a retry cures.
    #[error("{0}")]
    Name(String),
    /// Redis did not answer as it should; a retry may.
    #[error(transparent)]
    Redis(#[from] BrokerError),
}

/// A failed call fails the job: as transient when Redis failed (a retry
/// may work), as permanent for a name that cannot be a key.
impl From<StoreError> for crate::job::HandlerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Name(_) => Self::permanent(e.to_string()),
            StoreError::Redis(_) => Self::transient(e.to_string()),
        }
    }
}

impl HandlerStore {
    pub(crate) fn new(broker: Broker, list: &str) -> Self {
        Self {
            broker,
            list: list.into(),
        }
    }

    /// The key of `name`, once the name is checked.
    fn key(&self, name: &str) -> Result<String, StoreError> {
        let bad = |why: &str| Err(StoreError::Name(format!("key name {name:?}: {why}")));
        if name.is_empty() || name.len() > MAX_NAME {
            return bad(&format!("must be 1 to {MAX_NAME} bytes"));
        }
        if name.contains(['{', '}']) || name.chars().any(char::is_control) {
            return bad("holds braces or control characters");
        }
        let first = name.split(':').next().unwrap_or(name);
        if RESERVED.contains(&first) {
            return bad("is among the queue's own keys");
        }
        Ok(keys::handler_key(&self.list, name))
    }

    /// Whether `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        self.exists_key(self.key(name)?).await
    }

    /// The value of `name`, if it exists.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_key(self.key(name)?).await
    }

    /// Sets `name` to `value`, for `ttl` (for good when `None`).
    pub async fn set(
        &self,
        name: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.set_key(self.key(name)?, value, ttl).await
    }

    /// Adds `by` to the integer at `name` (0 if it does not exist); the new
    /// value.
    pub async fn increment(&self, name: &str, by: i64) -> Result<i64, StoreError> {
        let key = self.key(name)?;
        let mut conn = self.broker.conn().await?;
        Ok(redis::cmd("INCRBY")
            .arg(key)
            .arg(by)
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::from)?)
    }

    /// Deletes `name`; whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let key = self.key(name)?;
        let mut conn = self.broker.conn().await?;
        let gone: u8 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::from)?;
        Ok(gone == 1)
    }

    /// Whether the shared response cache holds an entry for `name` (at
    /// `cache:<sha256 hex of name>`).
    pub async fn cached(&self, name: &str) -> Result<bool, StoreError> {
        self.exists_key(keys::cache(name)).await
    }

    /// The shared response cache's entry for `name`, if any.
    pub async fn cache_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_key(keys::cache(name)).await
    }

    /// Keeps `value` as the shared response cache's entry for `name`, for
    /// `ttl`.
    pub async fn cache(&self, name: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.set_key(keys::cache(name), value, Some(ttl)).await
    }

    /// Publishes `message` on the pub/sub channel `channel`; how many
    /// subscribers received it.
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<u64, StoreError> {
        Ok(self.broker.publish(channel, message).await?)
    }

    async fn exists_key(&self, key: String) -> Result<bool, StoreError> {
        let mut conn = self.broker.conn().await?;
        let exists: u8 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::from)?;
        Ok(exists == 1)
    }

    async fn get_key(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.broker.conn().await?;
        Ok(redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(BrokerError::from)?)
    }

    async fn set_key(
        &self,
        key: String,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let mut conn = self.broker.conn().await?;
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value);
        if let Some(ttl) = ttl {
            // PX takes whole milliseconds, at least one.
            set.arg("PX")
                .arg(ttl.as_millis().clamp(1, i64::MAX as u128) as i64);
        }
        set.query_async::<()>(&mut conn)
            .await
            .map_err(BrokerError::from)?;
        Ok(())
    }
}

impl std::fmt::Debug for HandlerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerStore")
            .field("queue", &self.list)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> HandlerStore {
        // A broker connects on first use (a runtime, no Redis): formatting
        // keys needs no server.
        let broker = Broker::new(&crate::config::RedisConfig::default()).expect("broker");
        HandlerStore::new(broker, "jobs:q")
    }

    #[tokio::test]
    async fn a_name_is_a_key_under_the_queues_slot() {
        let s = store();
        assert_eq!(s.key("sent:j1").unwrap(), "{jobs:q}:sent:j1");
        assert_eq!(s.key("count").unwrap(), "{jobs:q}:count");
    }

    #[tokio::test]
    async fn names_of_the_queues_own_keys_and_odd_names_are_refused() {
        let s = store();
        for name in [
            "dead",
            "inflight:n1",
            "stats",
            "unique:k",
            "group:a",
            "scheduled",
        ] {
            assert!(matches!(s.key(name), Err(StoreError::Name(_))), "{name}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        for name in ["", "a{b}", "line\nbreak", long.as_str()] {
            assert!(matches!(s.key(name), Err(StoreError::Name(_))), "{name:?}");
        }
    }
}

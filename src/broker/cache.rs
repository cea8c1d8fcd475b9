//! The `http` handler's API response cache: `cache:<sha256 hex of the URL>`
//! holds a GET's 2xx body for the queue's `cache_ttl`, and a job whose entry
//! exists is done without a request. Applications read the key directly.

use std::time::Duration;

use super::{Broker, BrokerError, keys};

impl Broker {
    /// Whether the response of `url` is cached.
    pub async fn is_cached(&self, url: &str) -> Result<bool, BrokerError> {
        let mut conn = self.conn().await?;
        let exists: u8 = redis::cmd("EXISTS")
            .arg(keys::cache(url))
            .query_async(&mut conn)
            .await?;
        Ok(exists == 1)
    }

    /// Caches `body` as the response of `url` for `ttl`.
    pub async fn cache(&self, url: &str, body: &[u8], ttl: Duration) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(keys::cache(url))
            .arg(body)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

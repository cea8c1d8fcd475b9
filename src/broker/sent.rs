//! Sent markers: `{K}:sent:<id>` records that a job's side effect (an email
//! accepted by the mail server) already happened, so that a retry of the same
//! job skips it instead of repeating it. The marker expires on its own; it
//! only has to outlive the job's retries.

use std::time::Duration;

use super::{Broker, BrokerError, keys};
use crate::clock::now_rfc3339;

impl Broker {
    /// Whether job `id` of queue list `list` is marked as sent.
    pub async fn is_sent(&self, list: &str, id: &str) -> Result<bool, BrokerError> {
        let mut conn = self.conn().await?;
        let exists: u8 = redis::cmd("EXISTS")
            .arg(keys::sent(list, id))
            .query_async(&mut conn)
            .await?;
        Ok(exists == 1)
    }

    /// Marks job `id` of queue list `list` as sent, for `ttl`. The value is
    /// the time of marking, for a person reading Redis.
    pub async fn mark_sent(&self, list: &str, id: &str, ttl: Duration) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(keys::sent(list, id))
            .arg(now_rfc3339())
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

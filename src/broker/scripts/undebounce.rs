//! `lua/undebounce.lua`: a queue that no longer has `debounce` puts its
//! ready jobs and pending bursts back at the head of its list. Returns
//! `{moved, bursts left}`.

use redis::ScriptInvocation;

use crate::broker::QueueKeys;

script!("undebounce.lua");

/// One call of `lua/undebounce.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the queue list, KEYS[2] the ready list, KEYS[3] the bursts;
    /// ARGV[1] and ARGV[2] the bursts' prefixes.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[3] the most bursts to release.
    pub(crate) most: usize,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let k = self.keys;
        let mut inv = SCRIPT.key(&k.list);
        inv.key(&k.ready)
            .key(&k.bursts)
            .arg(k.burst_prefix())
            .arg(k.burst_all_prefix())
            .arg(self.most);
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    /// The ready jobs first, then every burst's job or all its arrivals,
    /// ahead of the queue's; nothing of the debounce left.
    #[tokio::test]
    async fn puts_ready_jobs_and_bursts_back_ahead_of_the_queue() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.rpush(&k.list, &["new"]).await.unwrap();
        let _: () = conn.rpush(&k.ready, &["r1", "r2"]).await.unwrap();
        let _: () = conn
            .hset(format!("{}a", k.burst_prefix()), "item", "a-last")
            .await
            .unwrap();
        let _: () = conn
            .hset(format!("{}b", k.burst_prefix()), "item", "b1")
            .await
            .unwrap();
        let _: () = conn
            .rpush(format!("{}b", k.burst_all_prefix()), &["b1", "b2"])
            .await
            .unwrap();
        let _: () = conn
            .zadd_multiple(&k.bursts, &[(1, "a"), (2, "b")])
            .await
            .unwrap();
        let (moved, left): (u64, u64) = Call { keys: &k, most: 10 }
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((moved, left), (5, 0));
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["r1", "r2", "a-last", "b1", "b2", "new"]);
        let keys: Vec<String> = conn.keys("{jobs:q}:group*").await.unwrap();
        assert!(keys.is_empty(), "{keys:?}");
    }
}

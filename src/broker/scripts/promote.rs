//! `lua/promote.lua`: moves scheduled jobs that are due to the tail of their
//! queue. Returns `{moved, due time in ms of the next scheduled job or -1}`.

use redis::ScriptInvocation;

use crate::broker::QueueKeys;

script!("promote.lua");

/// One call of `promote.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the scheduled set, KEYS[2] the queue list.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[1] now, in ms since the epoch.
    pub(crate) now_ms: i64,
    /// ARGV[2] the most jobs to move.
    pub(crate) most: usize,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(&self.keys.scheduled);
        inv.key(&self.keys.list).arg(self.now_ms).arg(self.most);
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    #[tokio::test]
    async fn moves_due_jobs_in_due_order_up_to_the_limit() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.rpush(&k.list, "w").await.unwrap();
        let due = [(300, "c"), (100, "a"), (200, "b"), (900, "later")];
        let _: () = conn.zadd_multiple(&k.scheduled, &due).await.unwrap();
        let call = Call {
            keys: &k,
            now_ms: 500,
            most: 2,
        };
        let (moved, next): (u64, f64) = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!((moved, next), (2, 300.0));
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["w", "a", "b"]);
        let (moved, next): (u64, f64) = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!((moved, next), (1, 900.0));
        let (moved, next): (u64, f64) = Call {
            now_ms: 1000,
            ..call
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!((moved, next), (1, -1.0));
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["w", "a", "b", "c", "later"]);
        let card: u64 = conn.zcard(&k.scheduled).await.unwrap();
        assert_eq!(card, 0);
    }
}

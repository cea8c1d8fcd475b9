//! `lua/run_now.lua`: moves a scheduled job to the head of its queue, if it
//! is still scheduled. Returns 1 when moved, 0 when no longer scheduled.

use redis::ScriptInvocation;

use crate::broker::QueueKeys;

script!("run_now.lua");

/// One call of `run_now.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the scheduled set, KEYS[2] the queue list.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[1] the item as scheduled.
    pub(crate) item: &'a [u8],
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(&self.keys.scheduled);
        inv.key(&self.keys.list).arg(self.item);
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    #[tokio::test]
    async fn moves_a_scheduled_job_to_the_head_once() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.rpush(&k.list, "w").await.unwrap();
        let _: () = conn
            .zadd_multiple(&k.scheduled, &[(5, "s"), (6, "t")])
            .await
            .unwrap();
        let call = Call {
            keys: &k,
            item: b"s",
        };
        let moved: u8 = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(moved, 1);
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["s", "w"]);
        let scheduled: Vec<String> = conn.zrange(&k.scheduled, 0, -1).await.unwrap();
        assert_eq!(scheduled, ["t"]);
        let moved: u8 = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(moved, 0);
        let len: u64 = conn.llen(&k.list).await.unwrap();
        assert_eq!(len, 2);
    }
}

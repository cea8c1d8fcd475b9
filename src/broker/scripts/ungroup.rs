//! `lua/ungroup.lua`: a queue that no longer has `group` puts its groups'
//! jobs back at the head of its list, in order. Returns `{moved, groups
//! left}`.

use redis::ScriptInvocation;

use crate::broker::QueueKeys;

script!("ungroup.lua");

/// One call of `lua/ungroup.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the queue list, KEYS[2] the groups by turn, KEYS[3] the
    /// ordered groups' retry times, KEYS[4] the round's place, ARGV[1] the
    /// groups' lists' prefix.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[2] the most jobs to move.
    pub(crate) most: usize,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(&self.keys.list);
        inv.key(&self.keys.groups)
            .key(&self.keys.group_due)
            .key(&self.keys.group_next)
            .arg(self.keys.group_prefix())
            .arg(self.most);
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    /// Moved in parts or at once, the groups' jobs end up ahead of the
    /// queue's, in their groups' turns and their own order.
    #[tokio::test]
    async fn puts_the_groups_jobs_back_ahead_of_the_queue_in_order() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        for most in [2, 100] {
            let _: () = conn.del(&k.list).await.unwrap();
            let _: () = conn.rpush(&k.list, &["new"]).await.unwrap();
            let _: () = conn.rpush(k.group("a"), &["a1", "a2", "a3"]).await.unwrap();
            let _: () = conn.rpush(k.group("b"), &["b1", "b2"]).await.unwrap();
            let _: () = conn
                .zadd_multiple(&k.groups, &[(2, "a"), (1, "b"), (3, "stale")])
                .await
                .unwrap();
            let mut calls = 0;
            loop {
                let (moved, left): (u64, u64) = Call { keys: &k, most }
                    .invocation()
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                assert!(moved as usize <= most);
                calls += 1;
                if left == 0 {
                    break;
                }
                assert!(calls < 10, "it ends");
            }
            let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
            assert_eq!(list, ["b1", "b2", "a1", "a2", "a3", "new"], "by {most}");
            let keys: Vec<String> = conn.keys("{jobs:q}:*").await.unwrap();
            assert!(keys.is_empty(), "{keys:?}");
        }
    }
}

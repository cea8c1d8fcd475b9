//! `lua/cancel.lua`: moves a waiting or scheduled job to the dead letter
//! list, if it is still there, releasing its unique lock if it holds it.
//! Returns 1 when moved, 0 when it was no longer there.

use redis::ScriptInvocation;

use crate::broker::QueueKeys;
use crate::broker::view::Store;

script!("cancel.lua");

/// One call of `cancel.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[2] the dead letter list; KEYS[3] the lock is one of these.
    pub(crate) keys: &'a QueueKeys,
    /// Where the job waits: KEYS[1] the queue list, a group's list or the
    /// scheduled set.
    pub(crate) source: &'a str,
    /// ARGV[1] whether `source` is a list or a sorted set.
    pub(crate) store: Store,
    /// ARGV[2] the item as it waits.
    pub(crate) item: &'a [u8],
    /// ARGV[3] the dead entry.
    pub(crate) dead_entry: &'a str,
    /// ARGV[4] the dead letter list's length cap.
    pub(crate) dead_cap: u32,
    /// The job's unique key and id: KEYS[3] its lock (the dead letter list
    /// again for none) and ARGV[5] the id that must hold it ('' for none).
    pub(crate) unique: Option<(&'a str, &'a str)>,
    /// ARGV[6] a flow node's end, kept in KEYS[4] the queue's ends of flow
    /// jobs when it is moved.
    pub(crate) flow: Option<&'a str>,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let k = self.keys;
        let mut inv = SCRIPT.key(self.source);
        inv.key(&k.dead);
        match self.unique {
            Some((key, _)) => inv.key(k.unique(key)),
            None => inv.key(&k.dead),
        };
        inv.key(&k.flows_ended);
        inv.arg(self.store.as_str())
            .arg(self.item)
            .arg(self.dead_entry)
            .arg(self.dead_cap)
            .arg(self.unique.map_or("", |(_, id)| id))
            .arg(self.flow.unwrap_or(""));
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    #[tokio::test]
    async fn moves_a_waiting_job_to_the_dead_list_and_releases_its_lock() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.rpush(&k.list, &["a", "job", "b"]).await.unwrap();
        let _: () = conn.rpush(&k.dead, &["d1", "d2"]).await.unwrap();
        let _: () = conn.set(k.unique("u"), "j1").await.unwrap();
        let call = Call {
            keys: &k,
            source: &k.list,
            store: Store::List,
            item: b"job",
            dead_entry: "job-cancelled",
            dead_cap: 2,
            unique: Some(("u", "j1")),
            flow: Some("end"),
        };
        let moved: u8 = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(moved, 1);
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["a", "b"]);
        let dead: Vec<String> = conn.lrange(&k.dead, 0, -1).await.unwrap();
        assert_eq!(dead, ["job-cancelled", "d1"]);
        let ends: Vec<String> = conn.lrange(&k.flows_ended, 0, -1).await.unwrap();
        assert_eq!(ends, ["end"]);
        let lock: bool = conn.exists(k.unique("u")).await.unwrap();
        assert!(!lock);
        // Gone already: nothing moved.
        let moved: u8 = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(moved, 0);
        let dead: Vec<String> = conn.lrange(&k.dead, 0, -1).await.unwrap();
        assert_eq!(dead, ["job-cancelled", "d1"]);
    }

    #[tokio::test]
    async fn moves_a_scheduled_job_and_keeps_a_lock_another_job_holds() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn
            .zadd_multiple(&k.scheduled, &[(5, "job"), (6, "t")])
            .await
            .unwrap();
        let _: () = conn.set(k.unique("u"), "other").await.unwrap();
        let moved: u8 = Call {
            keys: &k,
            source: &k.scheduled,
            store: Store::Zset,
            item: b"job",
            dead_entry: "job-cancelled",
            dead_cap: 10,
            unique: Some(("u", "j1")),
            flow: None,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(moved, 1);
        let scheduled: Vec<String> = conn.zrange(&k.scheduled, 0, -1).await.unwrap();
        assert_eq!(scheduled, ["t"]);
        let dead: Vec<String> = conn.lrange(&k.dead, 0, -1).await.unwrap();
        assert_eq!(dead, ["job-cancelled"]);
        let lock: String = conn.get(k.unique("u")).await.unwrap();
        assert_eq!(lock, "other");
    }
}

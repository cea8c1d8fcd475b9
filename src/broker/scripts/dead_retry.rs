//! `lua/dead_retry.lua`: moves dead jobs back to the tail of their queue
//! for a new round. Returns how many were moved.

use redis::ScriptInvocation;

use crate::broker::QueueKeys;

script!("dead_retry.lua");

/// One call of `dead_retry.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the dead letter list, KEYS[2] the queue list.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[1..] pairs: the dead entry as stored, and the item to enqueue.
    pub(crate) moves: &'a [(Vec<u8>, Vec<u8>)],
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(&self.keys.dead);
        inv.key(&self.keys.list);
        for (entry, item) in self.moves {
            inv.arg(entry).arg(item);
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    #[tokio::test]
    async fn moves_the_entries_still_there_to_the_tail() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = QueueKeys::new("q", "jobs:q", "n1");
        let _: () = conn.rpush(&k.dead, &["d1", "d2", "d3"]).await.unwrap();
        let _: () = conn.rpush(&k.list, "w").await.unwrap();
        let pair = |entry: &str, item: &str| (entry.as_bytes().to_vec(), item.as_bytes().to_vec());
        let moves = [pair("d3", "j3"), pair("gone", "jx"), pair("d1", "j1")];
        let moved: u64 = Call {
            keys: &k,
            moves: &moves,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(moved, 2);
        let dead: Vec<String> = conn.lrange(&k.dead, 0, -1).await.unwrap();
        assert_eq!(dead, ["d2"]);
        let list: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(list, ["w", "j3", "j1"]);
    }
}

//! `lua/take.lua`: moves up to N waiting jobs into a node's in-flight list
//! at once, a stand-in in the place of an item too large to read, a suspect
//! only ever alone. Returns `{suspect, item...}` (read as
//! [`Taken`](crate::broker::queue::Taken)).

use redis::ScriptInvocation;

use crate::broker::QueueKeys;
use crate::envelope::{HEAD_BYTES, item_limit, new_id};

script!("take.lua", stand_in);

/// One call of `take.lua`: the batched take and the blocking fetch's second
/// half.
pub(crate) struct Call<'a> {
    /// KEYS[1] the queue list, KEYS[2] this node's in-flight list.
    pub(crate) keys: &'a QueueKeys,
    /// ARGV[1] the most jobs to move.
    pub(crate) most: usize,
    /// How long a payload of the queue may be: ARGV[2], the largest item
    /// handed out whole, is [`item_limit`] of it.
    pub(crate) max_payload_bytes: usize,
}

impl Call<'_> {
    /// The invocation; ARGV[3] is [`HEAD_BYTES`] and ARGV[4] a new job id.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(&self.keys.list);
        inv.key(&self.keys.inflight)
            .arg(self.most)
            .arg(item_limit(self.max_payload_bytes))
            .arg(HEAD_BYTES)
            .arg(new_id());
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::broker::queue::Taken;
    use crate::envelope::{ENVELOPE_ALLOWANCE, parse_item};

    fn keys() -> QueueKeys {
        QueueKeys::new("q", "jobs:q", "n1")
    }

    #[tokio::test]
    async fn takes_a_batch_in_order_and_leaves_the_rest() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let _: () = conn.rpush(&k.list, &["a", "b", "c"]).await.unwrap();
        let call = Call {
            keys: &k,
            most: 2,
            max_payload_bytes: 1024,
        };
        let taken: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(taken.items, [b"a".to_vec(), b"b".to_vec()]);
        assert!(!taken.suspect);
        let left: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(left, ["c"]);
        let inflight: Vec<String> = conn.lrange(&k.inflight, 0, -1).await.unwrap();
        assert_eq!(inflight, ["a", "b"]);
        // An empty queue: nothing moved, nothing written.
        let _: () = conn.del(&k.list).await.unwrap();
        let taken: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(taken, Taken::default());
        let inflight: u64 = conn.llen(&k.inflight).await.unwrap();
        assert_eq!(inflight, 2);
    }

    #[tokio::test]
    async fn a_suspect_is_taken_alone_and_stops_a_batch() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let suspect = r#"{"id":"s","payload":{},"attempt":1,"deliveries":1}"#;
        let _: () = conn.rpush(&k.list, &["a", suspect, "b"]).await.unwrap();
        let call = Call {
            keys: &k,
            most: 10,
            max_payload_bytes: 1024,
        };
        let first: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!((first.items, first.suspect), (vec![b"a".to_vec()], false));
        let second: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(second.items, [suspect.as_bytes().to_vec()]);
        assert!(second.suspect);
        let inflight: Vec<String> = conn.lrange(&k.inflight, 0, -1).await.unwrap();
        assert_eq!(inflight, ["a", suspect]);
        let left: Vec<String> = conn.lrange(&k.list, 0, -1).await.unwrap();
        assert_eq!(left, ["b"]);
    }

    #[tokio::test]
    async fn an_item_too_large_goes_in_flight_as_its_stand_in() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let k = keys();
        let big = format!(
            r#"{{"id":"big","payload":"{}"}}"#,
            "x".repeat(ENVELOPE_ALLOWANCE)
        );
        let _: () = conn.rpush(&k.list, &[big.as_str(), "small"]).await.unwrap();
        let call = Call {
            keys: &k,
            most: 10,
            max_payload_bytes: 0,
        };
        let taken: Taken = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(taken.items.len(), 2);
        assert_eq!(taken.items[1], b"small");
        let stand_in = parse_item(&taken.items[0], usize::MAX).unwrap().envelope;
        assert_eq!(stand_in.id, "big");
        let head = stand_in.head.expect("a stand-in keeps the item's head");
        assert_eq!(head.size, big.len() as u64);
        let inflight: Vec<Vec<u8>> = conn.lrange(&k.inflight, 0, -1).await.unwrap();
        assert_eq!(inflight, taken.items);
        let left: u64 = conn.llen(&k.list).await.unwrap();
        assert_eq!(left, 0);
    }
}

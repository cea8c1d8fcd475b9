//! `lua/shrink.lua`: reads the first N items of a dead node's in-flight
//! list for the reaper, first replacing there each item too large to read
//! by its stand-in. Returns the items, oldest first.

use redis::ScriptInvocation;

use crate::envelope::{HEAD_BYTES, item_limit, new_id};

script!("shrink.lua", "stand_in.lua");

/// One call of `shrink.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the in-flight list.
    pub(crate) inflight: &'a str,
    /// ARGV[1] the most items to read.
    pub(crate) most: usize,
    /// How long a payload of the queue may be: ARGV[2], the largest item
    /// handed out whole, is [`item_limit`] of it.
    pub(crate) max_payload_bytes: usize,
}

impl Call<'_> {
    /// The invocation; ARGV[3] is [`HEAD_BYTES`] and ARGV[4] a new job id.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(self.inflight);
        inv.arg(self.most)
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
    use crate::envelope::{ENVELOPE_ALLOWANCE, parse_item};

    #[tokio::test]
    async fn reads_items_and_leaves_stand_ins_in_place_of_large_ones() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let inflight = "{jobs:q}:inflight:gone";
        let big = format!(
            r#"{{"id":"big","payload":"{}"}}"#,
            "x".repeat(ENVELOPE_ALLOWANCE)
        );
        let _: () = conn
            .rpush(inflight, &["a", big.as_str(), "b", "c"])
            .await
            .unwrap();
        let call = Call {
            inflight,
            most: 3,
            max_payload_bytes: 0,
        };
        let items: Vec<Vec<u8>> = call.invocation().invoke_async(&mut conn).await.unwrap();
        // The stand-in went to the tail, after the items read.
        assert_eq!(items, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        let list: Vec<Vec<u8>> = conn.lrange(inflight, 0, -1).await.unwrap();
        assert_eq!(&list[..3], &items[..]);
        assert_eq!(list.len(), 4);
        let stand_in = parse_item(&list[3], usize::MAX).unwrap().envelope;
        assert_eq!(stand_in.id, "big");
        assert_eq!(stand_in.head.unwrap().size, big.len() as u64);
        // Read again, the stand-in comes too; nothing else changes.
        let again: Vec<Vec<u8>> = Call { most: 10, ..call }
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(again, list);
        let unchanged: Vec<Vec<u8>> = conn.lrange(inflight, 0, -1).await.unwrap();
        assert_eq!(unchanged, list);
    }
}

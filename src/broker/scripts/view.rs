//! `lua/view.lua`: reads items of a list or a sorted set without carrying a
//! large one whole. Returns three values per item: its size, its bytes
//! (whole or first) and its score ('' in a list).

use redis::ScriptInvocation;

script!("view.lua");

/// First bytes read of an item larger than a view's bound: room for every
/// field conveyor writes before a payload (an id of 200 characters, even
/// escaped) and a glimpse of the payload.
pub(crate) const VIEW_HEAD: usize = 4096;

/// What holds the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// A list, read from its head.
    List,
    /// A sorted set, read by rank, lowest score first.
    Zset,
}

/// How much of each item a view reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// An item up to this many bytes is read whole.
    pub(crate) whole: usize,
    /// Of a larger one, this many first bytes.
    pub(crate) head: usize,
}

/// One item as a view read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Viewed {
    /// Its index in the list (its rank in a sorted set) when it was read.
    pub(crate) index: u64,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// All of it, or its first bytes.
    pub(crate) bytes: Vec<u8>,
    /// Its score, in a sorted set (conveyor's are times in ms).
    pub(crate) score: Option<i64>,
}

/// One call of `view.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the list or sorted set.
    pub(crate) key: &'a str,
    /// ARGV[1] what `key` is.
    pub(crate) store: Store,
    /// ARGV[2] the first index.
    pub(crate) first: u64,
    /// ARGV[3] the most items.
    pub(crate) most: u64,
    /// ARGV[4] the largest item read whole, ARGV[5] the first bytes read of
    /// a larger one.
    pub(crate) bounds: Bounds,
    /// ARGV[6] the byte budget of the call.
    pub(crate) budget: usize,
    /// ARGV[7] '' or the prefix of an item after which to stop.
    pub(crate) prefix: &'a str,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.key(self.key);
        inv.arg(self.store.as_str())
            .arg(self.first)
            .arg(self.most)
            .arg(self.bounds.whole)
            .arg(self.bounds.head)
            .arg(self.budget)
            .arg(self.prefix);
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    type Row = (u64, Vec<u8>, String);

    #[tokio::test]
    async fn reads_whole_items_and_the_head_of_a_large_one_and_touches_nothing() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let _: () = conn
            .rpush("l", &["aa", "bbbbbb", "cc", "dd"])
            .await
            .unwrap();
        let call = Call {
            key: "l",
            store: Store::List,
            first: 0,
            most: 10,
            bounds: Bounds { whole: 4, head: 2 },
            budget: 1 << 20,
            prefix: "",
        };
        let rows: Vec<Row> = call.invocation().invoke_async(&mut conn).await.unwrap();
        // It stops after the item larger than the bound.
        assert_eq!(
            rows,
            [
                (2, b"aa".to_vec(), String::new()),
                (6, b"bb".to_vec(), String::new())
            ]
        );
        let rows: Vec<Row> = Call { first: 2, ..call }
            .invocation()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        // A prefix ends the read at the first item that has it; a budget
        // after the item that spends it.
        let rows: Vec<Row> = Call {
            prefix: "c",
            first: 2,
            ..call
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(rows, [(2, b"cc".to_vec(), String::new())]);
        let rows: Vec<Row> = Call {
            budget: 1,
            first: 2,
            ..call
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(rows.len(), 1);
        let list: Vec<String> = conn.lrange("l", 0, -1).await.unwrap();
        assert_eq!(list, ["aa", "bbbbbb", "cc", "dd"]);
    }

    #[tokio::test]
    async fn reads_a_sorted_set_by_rank_with_scores() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let _: () = conn
            .zadd_multiple("z", &[(20, "late"), (10, "soon")])
            .await
            .unwrap();
        let call = Call {
            key: "z",
            store: Store::Zset,
            first: 0,
            most: 5,
            bounds: Bounds {
                whole: 100,
                head: 10,
            },
            budget: 1 << 20,
            prefix: "",
        };
        let rows: Vec<Row> = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(
            rows,
            [
                (4, b"soon".to_vec(), "10".to_owned()),
                (4, b"late".to_vec(), "20".to_owned())
            ]
        );
        let card: u64 = conn.zcard("z").await.unwrap();
        assert_eq!(card, 2);
    }
}

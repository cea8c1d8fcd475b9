//! `lua/remove_at.lua`: removes one item of a list or sorted set by its
//! index, if it is still the item the caller saw there, and pushes what
//! takes its place, the item never crossing the wire. Returns 1 when the
//! item was removed, 0 when it was no longer there.

use redis::ScriptInvocation;

use super::view::{Store, VIEW_HEAD, Viewed};

script!("remove_at.lua");

/// What takes a removed item's place.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Then<'a> {
    /// Nothing: the item is deleted.
    Nothing,
    /// `item` goes to the head of list `key`, cut to `cap` entries (0: no cap).
    PushHead {
        /// The list.
        key: &'a str,
        /// What to push.
        item: &'a [u8],
        /// The list's length cap, 0 for none.
        cap: u32,
    },
    /// `item` goes to the tail of list `key`.
    PushTail {
        /// The list.
        key: &'a str,
        /// What to push.
        item: &'a [u8],
    },
    /// The item itself goes to the head of list `key`, never read here.
    MoveHead {
        /// The list.
        key: &'a str,
    },
}

/// One call of `remove_at.lua`.
pub(crate) struct Call<'a> {
    /// KEYS[1] the list or sorted set.
    pub(crate) key: &'a str,
    /// ARGV[1] what `key` is.
    pub(crate) store: Store,
    /// The item as it was read: ARGV[2] its index, ARGV[3] its size,
    /// ARGV[4] its first bytes (at most [`VIEW_HEAD`]).
    pub(crate) seen: &'a Viewed,
    /// What takes its place: KEYS[2] where (`key` again for nothing),
    /// ARGV[5] the replacement, ARGV[6] how it goes there, ARGV[7] the
    /// list's cap.
    pub(crate) then: Then<'a>,
    /// KEYS[3] a unique lock to release (`key` again for none) and ARGV[8]
    /// the job id that must hold it ('' for none).
    pub(crate) lock: Option<(&'a str, &'a str)>,
}

impl Call<'_> {
    /// The invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let key = self.key;
        let (target, item, end, cap): (&str, &[u8], &str, u32) = match self.then {
            Then::Nothing => (key, b"", "head", 0),
            Then::PushHead { key, item, cap } => (key, item, "head", cap),
            Then::PushTail { key, item } => (key, item, "tail", 0),
            Then::MoveHead { key } => (key, b"", "move", 0),
        };
        let seen = self.seen;
        let first = &seen.bytes[..seen.bytes.len().min(VIEW_HEAD)];
        let mut inv = SCRIPT.key(key);
        inv.key(target)
            .key(self.lock.map_or(key, |(k, _)| k))
            .arg(self.store.as_str())
            .arg(seen.index)
            .arg(seen.size)
            .arg(first)
            .arg(item)
            .arg(end)
            .arg(cap)
            .arg(self.lock.map_or("", |(_, id)| id));
        inv
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;

    fn seen(index: u64, item: &str) -> Viewed {
        Viewed {
            index,
            size: item.len() as u64,
            bytes: item.as_bytes()[..item.len().min(2)].to_vec(),
            score: None,
        }
    }

    #[tokio::test]
    async fn removes_the_item_seen_pushes_its_replacement_and_releases_the_lock() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let _: () = conn
            .rpush("{q}:dead", &["one", "two", "three"])
            .await
            .unwrap();
        let _: () = conn.rpush("q", "waiting").await.unwrap();
        let _: () = conn.set("{q}:unique:u", "j2").await.unwrap();
        let item = seen(1, "two");
        let call = Call {
            key: "{q}:dead",
            store: Store::List,
            seen: &item,
            then: Then::PushTail {
                key: "q",
                item: b"again",
            },
            lock: Some(("{q}:unique:u", "j2")),
        };
        let removed: u8 = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(removed, 1);
        let dead: Vec<String> = conn.lrange("{q}:dead", 0, -1).await.unwrap();
        assert_eq!(dead, ["one", "three"]);
        let queue: Vec<String> = conn.lrange("q", 0, -1).await.unwrap();
        assert_eq!(queue, ["waiting", "again"]);
        let lock: Option<String> = conn.get("{q}:unique:u").await.unwrap();
        assert_eq!(lock, None);
        // Not there any more (another item holds its place): nothing done.
        let removed: u8 = call.invocation().invoke_async(&mut conn).await.unwrap();
        assert_eq!(removed, 0);
        let dead: Vec<String> = conn.lrange("{q}:dead", 0, -1).await.unwrap();
        assert_eq!(dead, ["one", "three"]);
        let queue: u64 = conn.llen("q").await.unwrap();
        assert_eq!(queue, 2);
    }

    #[tokio::test]
    async fn pushes_at_the_head_with_a_cap_or_moves_the_item_itself() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let _: () = conn.rpush("q", &["a", "b"]).await.unwrap();
        let _: () = conn.rpush("{q}:dead", &["d1", "d2"]).await.unwrap();
        let _: () = conn.set("{q}:unique:u", "other").await.unwrap();
        let item = seen(0, "a");
        let removed: u8 = Call {
            key: "q",
            store: Store::List,
            seen: &item,
            then: Then::PushHead {
                key: "{q}:dead",
                item: b"a-dead",
                cap: 2,
            },
            lock: Some(("{q}:unique:u", "j1")),
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(removed, 1);
        let dead: Vec<String> = conn.lrange("{q}:dead", 0, -1).await.unwrap();
        assert_eq!(dead, ["a-dead", "d1"]);
        // Held by another job: kept.
        let lock: String = conn.get("{q}:unique:u").await.unwrap();
        assert_eq!(lock, "other");
        let _: () = conn.zadd("{q}:scheduled", "later", 5).await.unwrap();
        let item = seen(0, "later");
        let removed: u8 = Call {
            key: "{q}:scheduled",
            store: Store::Zset,
            seen: &item,
            then: Then::MoveHead { key: "q" },
            lock: None,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(removed, 1);
        let queue: Vec<String> = conn.lrange("q", 0, -1).await.unwrap();
        assert_eq!(queue, ["later", "b"]);
        let card: u64 = conn.zcard("{q}:scheduled").await.unwrap();
        assert_eq!(card, 0);
        // Nothing: the item is deleted.
        let item = seen(1, "b");
        let removed: u8 = Call {
            key: "q",
            store: Store::List,
            seen: &item,
            then: Then::Nothing,
            lock: None,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await
        .unwrap();
        assert_eq!(removed, 1);
        let queue: Vec<String> = conn.lrange("q", 0, -1).await.unwrap();
        assert_eq!(queue, ["later"]);
    }
}

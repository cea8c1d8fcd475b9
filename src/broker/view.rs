//! Reading stored items without carrying a large one. Every admin read of a
//! queue's lists (waiting, scheduled, in flight, dead) goes through
//! `lua/view.lua`, which returns an item whole only up to a bound, and else
//! its first bytes with its size; `lua/remove_at.lua` acts on an item by
//! its place, so that one too large to read is never sent back either. A
//! dead list written by an earlier version may hold entries of 100 MB:
//! `conveyor dead`, `cancel` and the dashboard read a few KiB of each.

pub(crate) use super::scripts::remove_at::Then;
pub(crate) use super::scripts::view::{Bounds, Store, VIEW_HEAD, Viewed};
use super::scripts::{remove_at, view};
use super::{Broker, BrokerError};
use crate::envelope::item_limit;

/// Bytes of items one script call reads at most (it reads at least one).
const BUDGET: usize = 8 << 20;

impl Store {
    /// Its name in a script's ARGV.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Store::List => "list",
            Store::Zset => "zset",
        }
    }
}

impl Bounds {
    /// Whole, every item a queue of `max_payload_bytes` would run (and
    /// every dead entry written for one); of a larger one, [`VIEW_HEAD`].
    pub(crate) fn for_queue(max_payload_bytes: usize) -> Self {
        Self {
            whole: item_limit(max_payload_bytes),
            head: VIEW_HEAD,
        }
    }

    /// Only the first [`VIEW_HEAD`] bytes of each item: enough to find an
    /// id, for searches.
    pub(crate) fn heads() -> Self {
        Self {
            whole: VIEW_HEAD,
            head: VIEW_HEAD,
        }
    }
}

impl Viewed {
    /// Whether `bytes` is all of the item.
    pub(crate) fn is_whole(&self) -> bool {
        self.bytes.len() as u64 == self.size
    }
}

impl Broker {
    /// Up to `count` items of `key` from index `start`, read within
    /// `bounds`; fewer only where the list or set ends.
    pub(crate) async fn view(
        &self,
        key: &str,
        store: Store,
        start: u64,
        count: u64,
        bounds: Bounds,
    ) -> Result<Vec<Viewed>, BrokerError> {
        self.view_until(key, store, start, count, bounds, "").await
    }

    /// [`Broker::view`], ending early after an item that begins with
    /// `prefix` (unless it is empty): what a search reads.
    pub(crate) async fn view_until(
        &self,
        key: &str,
        store: Store,
        start: u64,
        count: u64,
        bounds: Bounds,
        prefix: &str,
    ) -> Result<Vec<Viewed>, BrokerError> {
        let mut out: Vec<Viewed> = Vec::new();
        let mut conn = self.conn().await?;
        while (out.len() as u64) < count {
            let from = start + out.len() as u64;
            let call = view::Call {
                key,
                store,
                first: from,
                most: count - out.len() as u64,
                bounds,
                budget: BUDGET,
                prefix,
            };
            let flat: Vec<redis::Value> = call.invocation().invoke_async(&mut conn).await?;
            if flat.is_empty() {
                break;
            }
            let found = !prefix.is_empty()
                && flat
                    .get(flat.len().saturating_sub(2))
                    .is_some_and(|b| matches!(b, redis::Value::BulkString(b) if b.starts_with(prefix.as_bytes())));
            let mut values = flat.into_iter();
            let mut index = from;
            while let (Some(size), Some(bytes), Some(score)) =
                (values.next(), values.next(), values.next())
            {
                let score: String = redis::from_redis_value(score)?;
                out.push(Viewed {
                    index,
                    size: redis::from_redis_value(size)?,
                    bytes: redis::from_redis_value(bytes)?,
                    score: score.parse::<f64>().ok().map(|s| s as i64),
                });
                index += 1;
            }
            if found {
                break;
            }
        }
        Ok(out)
    }

    /// Removes the item `seen` from `key` if it is still where it was read
    /// (the same size and first bytes there), does `then`, and releases
    /// the unique lock `lock` (its key and the id that must hold it).
    /// Whether the item was still there.
    pub(crate) async fn remove_at(
        &self,
        key: &str,
        store: Store,
        seen: &Viewed,
        then: Then<'_>,
        lock: Option<(&str, &str)>,
    ) -> Result<bool, BrokerError> {
        let call = remove_at::Call {
            key,
            store,
            seen,
            then,
            lock,
        };
        let mut conn = self.conn().await?;
        let removed: u8 = call.invocation().invoke_async(&mut conn).await?;
        Ok(removed == 1)
    }
}

//! One queue's operations as the daemon performs them: taking jobs, recording
//! outcomes, promoting scheduled jobs and recovering a dead node's jobs.
//! Every operation that moves a job between keys is one Lua script.

use std::sync::Arc;
use std::time::Duration;

use redis::{FromRedisValue, Value};

use super::events::StatusUpdate;
pub(crate) use super::scripts::recover::{Move, RecoverTo};
use super::scripts::{promote, ratelimit, recover, shrink, take, undebounce, ungroup};
use super::{Broker, BrokerError, Conn, QueueKeys};
use crate::config::{Debounce, Group};

/// The most jobs one round trip of [`QueueStore::ungroup`] moves.
const UNGROUP_MOST: usize = 10_000;

/// What one take moved into this node's in-flight list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    /// The items, oldest first; a stand-in in the place of an item too
    /// large to read.
    pub(crate) items: Vec<Vec<u8>>,
    /// Whether the one item taken is a suspect, to be run alone:
    /// `lua/take.lua`'s verdict, the only definition of a suspect.
    pub(crate) suspect: bool,
    /// Whether the queue's global limit left room for fewer jobs than
    /// were asked for while more wait: take again once jobs end.
    pub(crate) limited: bool,
    /// The ids of the jobs that joined a burst of a queue with `debounce`
    /// (empty for a raw payload), for their `job.debounced` events.
    pub(crate) debounced: Vec<String>,
}

impl FromRedisValue for Taken {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        let mut values: Vec<Value> = FromRedisValue::from_redis_value(v)?;
        if values.is_empty() {
            return Err("take.lua returns its verdict first".into());
        }
        let verdict: i64 = FromRedisValue::from_redis_value(values.remove(0))?;
        let mut debounced = Vec::new();
        if verdict & 4 != 0 {
            let count: usize = match values.pop() {
                Some(v) => FromRedisValue::from_redis_value(v)?,
                None => return Err("take.lua counts the ids it adds".into()),
            };
            let Some(at) = values.len().checked_sub(count) else {
                return Err("take.lua returned fewer ids than it counted".into());
            };
            debounced = values
                .split_off(at)
                .into_iter()
                .map(FromRedisValue::from_redis_value)
                .collect::<Result<_, _>>()?;
        }
        let items = values
            .into_iter()
            .map(FromRedisValue::from_redis_value)
            .collect::<Result<_, _>>()?;
        Ok(Taken {
            items,
            suspect: verdict & 3 == 1,
            limited: verdict & 3 == 2,
            debounced,
        })
    }
}

/// How a job's run ended, as recorded in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done. Releases the job's unique lock, if it holds one.
    Succeeded {
        /// The job id (owner of the unique lock); only read to release
        /// one, so left empty without.
        id: String,
        /// The unique lock's key, if any.
        unique_key: Option<String>,
        /// A flow's node: its end ([`crate::broker::flows::NodeEnd`] as
        /// JSON), kept for its flow in the step that records the outcome.
        flow: Option<String>,
    },
    /// Failed with attempts left: run `envelope` again at `due_ms`.
    Retry {
        /// The next envelope.
        envelope: String,
        /// When, in ms since the epoch.
        due_ms: i64,
    },
    /// Cannot succeed: park `envelope` in the dead letter list.
    Dead {
        /// The dead envelope.
        envelope: String,
        /// The job id (owner of the unique lock).
        id: String,
        /// The unique lock's key, if any.
        unique_key: Option<String>,
        /// A flow's node: its end, as for `Succeeded`.
        flow: Option<String>,
    },
    /// Not finished here (shutdown): back to the head of the queue, counted
    /// as recovered; unchanged, or as `replacement` (a raw payload wrapped in
    /// the envelope whose id its events used).
    Requeue {
        /// What to push instead of the item.
        replacement: Option<String>,
    },
    /// Taken but not started (a suspect needs the node to itself): back to
    /// the head of the queue, unchanged, not counted.
    GiveBack,
    /// May not start yet (rate limit): run `envelope` at `due_ms`, no attempt spent.
    Snooze {
        /// The envelope, attempt unchanged.
        envelope: String,
        /// When, in ms since the epoch.
        due_ms: i64,
    },
}

/// What became of one job a recovery tried to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovered {
    /// Back at the head of its queue.
    Requeued,
    /// In the dead letter list.
    Dead,
    /// No longer there to move.
    Gone,
}

/// One queue, from one node's point of view.
#[derive(Clone, Debug)]
pub(crate) struct QueueStore {
    broker: Broker,
    keys: Arc<QueueKeys>,
    dead_cap: u32,
    history: bool,
    group: Option<Arc<Group>>,
    debounce: Option<Arc<Debounce>>,
}

impl QueueStore {
    /// The store of one queue; `dead_cap` bounds its dead letter list. It
    /// keeps the queue's history (see [`QueueStore::without_history`]).
    pub(crate) fn new(broker: Broker, keys: QueueKeys, dead_cap: u32) -> Self {
        Self {
            broker,
            keys: Arc::new(keys),
            dead_cap,
            history: true,
            group: None,
            debounce: None,
        }
    }

    /// The same store, for a queue whose jobs are grouped and served in
    /// turn (`lua/take.lua`); `None` for one line.
    pub(crate) fn with_group(mut self, group: Option<Group>) -> Self {
        self.group = group.map(Arc::new);
        self
    }

    /// The same store, for a queue whose jobs are debounced
    /// (`lua/take.lua`); `None` for none.
    pub(crate) fn with_debounce(mut self, debounce: Option<Debounce>) -> Self {
        self.debounce = debounce.map(Arc::new);
        self
    }

    /// The queue's debounce, if it has one.
    pub(crate) fn debounce(&self) -> Option<&Debounce> {
        self.debounce.as_deref()
    }

    /// The queue's grouping, if its jobs are grouped.
    pub(crate) fn group(&self) -> Option<&Group> {
        self.group.as_deref()
    }

    /// The same store, counting no outcome in the queue's history.
    pub(crate) fn without_history(mut self) -> Self {
        self.history = false;
        self
    }

    /// Whether outcomes recorded here are counted in the queue's history.
    pub(crate) fn keeps_history(&self) -> bool {
        self.history
    }

    /// Whether `other` is this very store (a clone of it), not merely one
    /// of the same queue.
    pub(crate) fn same_as(&self, other: &QueueStore) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys)
    }

    /// The queue's keys.
    pub(crate) fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    /// The dead letter list's length cap.
    pub(crate) fn dead_cap(&self) -> u32 {
        self.dead_cap
    }

    /// The broker this store uses.
    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Moves up to `max` waiting jobs into this node's in-flight list; an
    /// item larger than the queue's payloads may be (`max_payload_bytes`
    /// and the envelope's allowance) goes there as its stand-in, read by no
    /// one (see `lua/take.lua`).
    /// With a global `limit`, no more than it leaves of the queue's jobs
    /// in flight on every node.
    pub(crate) async fn take(
        &self,
        max: usize,
        max_payload_bytes: usize,
        limit: Option<u32>,
    ) -> Result<Taken, BrokerError> {
        let mut conn = self.broker.conn().await?;
        let call = take::Call {
            keys: &self.keys,
            most: max,
            max_payload_bytes,
            limit,
            group: self.group(),
            now_ms: crate::clock::now_ms(),
            debounce: self.debounce(),
        };
        Ok(call.invocation().invoke_async(&mut conn).await?)
    }

    /// Puts the jobs a group holds back at the head of the queue, when the
    /// queue no longer has `group` (`lua/ungroup.lua`), a bounded part per
    /// round trip; how many moved.
    pub(crate) async fn ungroup(&self) -> Result<u64, BrokerError> {
        let call = ungroup::Call {
            keys: &self.keys,
            most: UNGROUP_MOST,
        };
        self.drain(call.invocation()).await
    }

    /// Puts a debounce's ready jobs and pending bursts back at the head of
    /// the queue, when the queue no longer has `debounce`
    /// (`lua/undebounce.lua`); how many jobs moved.
    pub(crate) async fn undebounce(&self) -> Result<u64, BrokerError> {
        let call = undebounce::Call {
            keys: &self.keys,
            most: UNGROUP_MOST,
        };
        self.drain(call.invocation()).await
    }

    /// Runs a script answering `{moved, left}` until nothing is left; how
    /// many moved in all.
    async fn drain(
        &self,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Result<u64, BrokerError> {
        let mut conn = self.broker.conn().await?;
        let mut moved = 0;
        loop {
            let (n, left): (u64, u64) = invocation.invoke_async(&mut conn).await?;
            moved += n;
            if left == 0 {
                return Ok(moved);
            }
        }
    }

    /// A dedicated connection for blocking fetches of at most `block` each.
    pub(crate) async fn fetcher(&self, block: Duration) -> Result<Fetcher, BrokerError> {
        let mut conn = self.broker.dedicated(block).await?;
        // Named for CLIENT LIST; its id lets a stop cut a pop short.
        let name = format!("conveyor:{}:{}", self.keys.node, self.keys.name);
        // On a cluster, asked of the node that holds the queue, the one
        // the pops block on.
        let list = &self.keys.list;
        let mut setname = redis::cmd("CLIENT");
        setname.arg("SETNAME").arg(&name);
        conn.query_at::<()>(list, &setname).await?;
        let mut id = redis::cmd("CLIENT");
        id.arg("ID");
        let client_id: u64 = conn.query_at(list, &id).await?;
        // The fetch sends take.lua by its hash (see `Fetcher::next`): loaded
        // here, on the server this connection talks to. After a restart of
        // Redis this connection breaks and its successor loads it again.
        take::SCRIPT.load_async(&mut conn).await?;
        Ok(Fetcher {
            conn,
            client_id,
            keys: self.keys.clone(),
            group: self.group.clone(),
            debounce: self.debounce.clone(),
            block,
        })
    }

    /// Moves up to `limit` due jobs to the queue. Returns how many moved and
    /// when the next scheduled job is due (ms since the epoch), if any.
    pub(crate) async fn promote(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<(u64, Option<i64>), BrokerError> {
        let mut conn = self.broker.conn().await?;
        let call = promote::Call {
            keys: &self.keys,
            now_ms,
            most: limit,
        };
        let (moved, next): (u64, f64) = call.invocation().invoke_async(&mut conn).await?;
        Ok((moved, (next >= 0.0).then_some(next as i64)))
    }

    /// Asks the sliding window whether a job may start now; logs the start
    /// if so. Returns `None` when allowed, else how long until a slot frees.
    pub(crate) async fn rate_check(
        &self,
        key: Option<&str>,
        now_ms: i64,
        window: Duration,
        limit: u32,
        member: &str,
    ) -> Result<Option<Duration>, BrokerError> {
        let mut conn = self.broker.conn().await?;
        let call = ratelimit::Call {
            log: &self.keys.ratelimit_for(key),
            now_ms,
            window,
            limit,
            member,
        };
        let wait_ms: i64 = call.invocation().invoke_async(&mut conn).await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)))
    }

    /// The nodes that may hold an in-flight list of this queue.
    pub(crate) async fn nodes(&self) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.broker.conn().await?;
        Ok(redis::cmd("SMEMBERS")
            .arg(&self.keys.nodes)
            .query_async(&mut conn)
            .await?)
    }

    /// This node's whole in-flight list, oldest first. Bounded by the
    /// processor's places in flight (its concurrency and the most it takes
    /// ahead of its slots).
    pub(crate) async fn own_inflight(&self) -> Result<Vec<Vec<u8>>, BrokerError> {
        let mut conn = self.broker.conn().await?;
        Ok(redis::cmd("LRANGE")
            .arg(&self.keys.inflight)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?)
    }

    /// Up to `limit` items of a dead node's in-flight list, oldest first,
    /// each item too large to read first replaced there by its stand-in
    /// (earlier versions parked such items in flight; see `lua/shrink.lua`).
    pub(crate) async fn inflight_items(
        &self,
        node: &str,
        limit: usize,
        max_payload_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, BrokerError> {
        let mut conn = self.broker.conn().await?;
        let call = shrink::Call {
            inflight: &self.keys.inflight_of(node),
            most: limit,
            max_payload_bytes,
        };
        Ok(call.invocation().invoke_async(&mut conn).await?)
    }

    /// Moves jobs out of a node's in-flight list, listed newest first, and
    /// writes their status records in the same step. Returns, per move,
    /// whether it happened (another reaper, or the job's own outcome, may
    /// have won).
    pub(crate) async fn recover(
        &self,
        node: &str,
        moves: &[Move],
    ) -> Result<Vec<Recovered>, BrokerError> {
        // On a cluster a status record lives in another slot: written after.
        let cluster = self.broker.is_cluster();
        let call = recover::Call {
            keys: &self.keys,
            node,
            dead_cap: self.dead_cap,
            results_cap: super::results::CAP,
            group: self.group(),
            moves,
            records: !cluster,
        };
        let mut conn = self.broker.conn().await?;
        let codes: Vec<u8> = call.invocation().invoke_async(&mut conn).await?;
        let recovered: Vec<Recovered> = codes
            .into_iter()
            .map(|c| match c {
                1 => Recovered::Requeued,
                2 => Recovered::Dead,
                _ => Recovered::Gone,
            })
            .collect();
        if cluster {
            let statuses: Vec<StatusUpdate> = moves
                .iter()
                .zip(&recovered)
                .filter(|(_, r)| !matches!(r, Recovered::Gone))
                .filter_map(|(m, _)| m.status.clone())
                .collect();
            if !statuses.is_empty() {
                let mut pipe = redis::pipe();
                super::events::add_statuses(&mut pipe, &statuses);
                pipe.query_async::<()>(&mut conn).await?;
            }
        }
        Ok(recovered)
    }

    /// Forgets a node whose in-flight list is empty (and its running
    /// counts of groups); keeps it listed otherwise.
    pub(crate) async fn forget_node_if_idle(&self, node: &str) -> Result<bool, BrokerError> {
        let mut conn = self.broker.conn().await?;
        let len: u64 = redis::cmd("LLEN")
            .arg(self.keys.inflight_of(node))
            .query_async(&mut conn)
            .await?;
        if len > 0 {
            return Ok(false);
        }
        let _removed: (u64, u64) = redis::pipe()
            .cmd("SREM")
            .arg(&self.keys.nodes)
            .arg(node)
            .cmd("DEL")
            .arg(self.keys.running_of(node))
            .query_async(&mut conn)
            .await?;
        Ok(true)
    }
}

/// A dedicated connection that waits for jobs with `BLMOVE`.
///
/// `BLMOVE` replies with the item it moved, whole: a 100 MB item pushed to
/// an idle queue would be read into memory before anything could look at
/// its size. So the fetch only waits with it: `BLMOVE K K LEFT LEFT` leaves
/// the queue as it was (the head goes back where it came from) and its
/// reply is switched off (`CLIENT REPLY OFF`); `lua/take.lua`, sent in the
/// same round trip right behind it, takes the job, or its stand-in. A job
/// still reaches an idle daemon the moment it is pushed, in one round trip,
/// and a job sits in no list of this node until the script took it.
pub(crate) struct Fetcher {
    conn: Conn,
    client_id: u64,
    keys: Arc<QueueKeys>,
    group: Option<Arc<Group>>,
    debounce: Option<Arc<Debounce>>,
    block: Duration,
}

impl Fetcher {
    /// The server's id of this connection, for [`Broker::unblock`].
    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Waits up to the block time for a job and parks it in this node's
    /// in-flight list (as its stand-in if it is too large to read for a
    /// queue of `max_payload_bytes`). Empty when none came.
    ///
    /// Do not drop this future to stop waiting: if Redis took a job just
    /// then, it would sit in the in-flight list unseen. Cut the wait short
    /// with [`Broker::unblock`] and let the future finish instead.
    pub(crate) async fn next(
        &mut self,
        max_payload_bytes: usize,
        limit: Option<u32>,
    ) -> Result<Taken, BrokerError> {
        if self.conn.is_stale() {
            // The master it waits on is gone or demoted: a new fetcher
            // connects to the new one.
            return Err(BrokerError::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the Redis master changed; reconnecting",
            ))));
        }
        let list = &self.keys.list;
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT").arg("REPLY").arg("OFF");
        pipe.cmd("BLMOVE")
            .arg(list)
            .arg(list)
            .arg("LEFT")
            .arg("LEFT")
            .arg(self.block.as_secs_f64());
        pipe.cmd("CLIENT").arg("REPLY").arg("ON");
        let take = take::Call {
            keys: &self.keys,
            most: 1,
            max_payload_bytes,
            limit,
            group: self.group.as_deref(),
            now_ms: crate::clock::now_ms(),
            debounce: self.debounce.as_deref(),
        };
        pipe.invoke_script(&take.invocation());
        // Four commands, two replies: REPLY ON's and the script's.
        let mut replies = self.conn.pipeline_at(list, pipe, 2).await?.into_iter();
        match (replies.next(), replies.next()) {
            (Some(_ok), Some(Value::ServerError(e))) => Err(BrokerError::Redis(e.into())),
            (Some(_ok), Some(taken)) => Ok(Taken::from_redis_value(taken)?),
            _ => Err(BrokerError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a blocking fetch got fewer replies than it asked for",
            )))),
        }
    }
}

#[cfg(test)]
mod tests;

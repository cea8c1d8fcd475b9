//! Operations of the command line: enqueueing, the dead letter list, counters.

use std::collections::HashMap;

use redis::{Pipeline, Value};

use super::events::{EventSink, StatusUpdate};
pub(crate) use super::scripts::enqueue_unique::{Enqueued, NewJob};
pub use super::scripts::groups::{GroupCounts, Groups};
use super::scripts::{cancel, dead_retry, enqueue_unique, groups, publish_if_heard, run_now, view};
use super::stats::Stat;
use super::view::{Bounds, Store, Then, Viewed};
use super::{Broker, BrokerError, QueueKeys};
use crate::event::EventBatch;

/// A queue's size and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Jobs waiting: in the list, or sorted into their group (a queue with
    /// `group`) for its turn.
    pub waiting: u64,
    /// Jobs of a group that runs as many as its limit allows, waiting for
    /// one of them to end, and bursts of debounced jobs waiting out their
    /// window, each to run as one job (DESIGN section 14).
    pub held: u64,
    /// Jobs taken by some node and not finished.
    pub in_flight: u64,
    /// Jobs due later (delayed, retries, rate-limited).
    pub scheduled: u64,
    /// Jobs in the dead letter list now.
    pub dead: u64,
    /// Handler runs that ended (success or failure), ever.
    pub processed: u64,
    /// Handler runs that failed, ever.
    pub failed: u64,
    /// Failures that were scheduled for another attempt, ever.
    pub retried: u64,
    /// Jobs dead-lettered, ever.
    pub died: u64,
    /// Jobs put back by crash recovery or shutdown, ever.
    pub recovered: u64,
    /// Nodes listed as possibly holding in-flight jobs of this queue.
    #[serde(skip)]
    pub(crate) nodes: Vec<String>,
    /// The item at the head of the queue (the oldest waiting), if any, as
    /// far as the bounds of [`Broker::queue_counts`] read it.
    #[serde(skip)]
    pub(crate) head: Option<Viewed>,
    /// A queue with groups: when the head jobs of its first groups were
    /// made (see [`groups::HEADS_MOST`]); older than the list's head.
    #[serde(skip)]
    pub(crate) group_heads: Vec<String>,
    /// Whether the queue is paused (`conveyor pause`).
    pub paused: bool,
}

impl Broker {
    /// Enqueues jobs in one pipeline (the caller bounds the batch). Plain
    /// jobs go out as one `RPUSH` per run of consecutive ones. Each job's
    /// event and status record go out just before it is pushed, so no
    /// daemon can report it started before it was reported enqueued; a
    /// unique job's are written by its script, and only if it was enqueued.
    pub(crate) async fn enqueue(
        &self,
        q: &QueueKeys,
        jobs: &[NewJob],
        sink: &EventSink,
    ) -> Result<Vec<Enqueued>, BrokerError> {
        // On a cluster a script touches the queue's slot only, so a unique
        // job's event and status record are written after it (and only if
        // it was enqueued), and events are published whether or not anyone
        // listens (a subscriber may be on any node).
        let cluster = self.is_cluster();
        let mut pipe = redis::pipe();
        if jobs.iter().any(|j| j.unique.is_some()) {
            pipe.load_script(&enqueue_unique::SCRIPT).ignore();
        }
        add_plain_announcements(&mut pipe, jobs, sink, cluster);
        let writes = add_writes(&mut pipe, q, jobs, sink, cluster);
        let mut conn = self.conn().await?;
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for (write, reply) in writes.iter().zip(replies) {
            match write {
                Write::Push(n) => out.extend(std::iter::repeat_n(Enqueued::Queued, *n)),
                Write::Schedule => out.push(Enqueued::Queued),
                Write::Unique => out.push(enqueue_unique::verdict(reply)?),
            }
        }
        if cluster {
            // The announcements of the unique jobs that were enqueued.
            let enqueued = jobs
                .iter()
                .zip(&out)
                .filter(|(j, e)| j.unique.is_some() && matches!(e, Enqueued::Queued))
                .map(|(j, _)| j);
            let mut events = EventBatch::default();
            let mut statuses = Vec::new();
            for job in enqueued {
                if let Some(event) = job.event.as_deref() {
                    events.push_json(event);
                }
                statuses.extend(job.status.clone());
            }
            if !events.is_empty() || !statuses.is_empty() {
                let mut pipe = redis::pipe();
                super::events::add_statuses(&mut pipe, &statuses);
                super::events::add_publish(&mut pipe, sink, &events);
                super::events::add_stream(&mut pipe, sink, &events);
                pipe.query_async::<()>(&mut conn).await?;
            }
        }
        Ok(out)
    }

    /// The dead letter list's length.
    pub(crate) async fn dead_len(&self, q: &QueueKeys) -> Result<u64, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("LLEN")
            .arg(&q.dead)
            .query_async(&mut conn)
            .await?)
    }

    /// Moves dead entries back to the queue: `(entry as stored, item to push)`.
    pub(crate) async fn dead_retry(
        &self,
        q: &QueueKeys,
        moves: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<u64, BrokerError> {
        if moves.is_empty() {
            return Ok(0);
        }
        let call = dead_retry::Call { keys: q, moves };
        let mut conn = self.conn().await?;
        Ok(call.invocation().invoke_async(&mut conn).await?)
    }

    /// Deletes the whole dead letter list; returns how many entries it held.
    pub(crate) async fn dead_clear(&self, q: &QueueKeys) -> Result<u64, BrokerError> {
        let mut conn = self.conn().await?;
        let (len, _deleted): (u64, u64) = redis::pipe()
            .atomic()
            .cmd("LLEN")
            .arg(&q.dead)
            .cmd("DEL")
            .arg(&q.dead)
            .query_async(&mut conn)
            .await?;
        Ok(len)
    }

    /// Pauses (`true`) or resumes a queue: sets or deletes `{K}:paused` and
    /// announces it with `event` (already numbered, JSON). Whether it
    /// changed anything.
    pub(crate) async fn set_paused(
        &self,
        q: &QueueKeys,
        paused: bool,
        since: &str,
        sink: &EventSink,
        event: Option<&str>,
    ) -> Result<bool, BrokerError> {
        let mut pipe = redis::pipe();
        match paused {
            true => pipe.cmd("SET").arg(&q.paused).arg(since).arg("NX"),
            false => pipe.cmd("DEL").arg(&q.paused),
        };
        let mut conn = self.conn().await?;
        let changed: Value = pipe.query_async::<Vec<Value>>(&mut conn).await?.remove(0);
        let changed = !matches!(changed, Value::Nil | Value::Int(0));
        if let Some(event) = event.filter(|_| changed) {
            self.announce(sink, event).await?;
        }
        Ok(changed)
    }

    /// For each of `queues`: whether it is paused, and the ids of running
    /// jobs `conveyor cancel` asks to stop; one round trip (one per slot on
    /// a cluster).
    pub(crate) async fn steering(
        &self,
        queues: &[&QueueKeys],
    ) -> Result<Vec<(bool, Vec<String>)>, BrokerError> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in queues {
            pipe.cmd("EXISTS").arg(&q.paused);
            pipe.cmd("SMEMBERS").arg(&q.cancel);
        }
        let mut conn = self.conn().await?;
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut out = Vec::with_capacity(queues.len());
        let mut replies = replies.into_iter();
        while let (Some(paused), Some(cancel)) = (replies.next(), replies.next()) {
            out.push((
                redis::from_redis_value(paused)?,
                redis::from_redis_value(cancel)?,
            ));
        }
        Ok(out)
    }

    /// Sizes and counters of each queue, in two round trips; the jobs of a
    /// queue's groups (`group_limits`: each queue's limit per group) count
    /// as waiting, or as held while their group is at its limit. The stats
    /// hash may hold only counters; the item at the head of each queue is
    /// read within that queue's `heads` bounds (`lua/view.lua`).
    pub(crate) async fn queue_counts(
        &self,
        queues: &[QueueKeys],
        heads: &[Bounds],
        group_limits: &[Option<u32>],
    ) -> Result<Vec<QueueCounts>, BrokerError> {
        // An empty pipeline is an empty command to Redis.
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.load_script(&view::SCRIPT).ignore();
        pipe.load_script(&groups::SCRIPT).ignore();
        for ((q, head), limit) in queues.iter().zip(heads).zip(group_limits) {
            let limit = *limit;
            pipe.cmd("LLEN").arg(&q.list);
            pipe.cmd("ZCARD").arg(&q.scheduled);
            pipe.cmd("LLEN").arg(&q.dead);
            pipe.cmd("HGETALL").arg(&q.stats);
            pipe.cmd("SMEMBERS").arg(&q.nodes);
            let call = view::Call {
                key: &q.list,
                store: Store::List,
                first: 0,
                most: 1,
                bounds: *head,
                budget: head.whole,
                prefix: "",
            };
            pipe.invoke_script(&call.invocation());
            pipe.cmd("EXISTS").arg(&q.paused);
            let call = groups::Call {
                keys: q,
                most: 0,
                limit,
                heads: groups::HEADS_MOST,
            };
            pipe.invoke_script(&call.invocation());
            pipe.cmd("LLEN").arg(&q.ready);
            pipe.cmd("ZCARD").arg(&q.bursts);
        }
        let mut conn = self.conn().await?;
        type Row = (
            u64,
            u64,
            u64,
            HashMap<String, u64>,
            Vec<String>,
            Vec<(u64, Vec<u8>, String)>,
            bool,
            Groups,
            u64,
            u64,
        );
        let rows: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut counts = Vec::with_capacity(queues.len());
        let mut rows = rows.into_iter();
        for _ in queues {
            let row: Vec<Value> = rows.by_ref().take(10).collect();
            let (waiting, scheduled, dead, stats, nodes, head, paused, groups, ready, bursts): Row =
                redis::from_redis_value(Value::Array(row))?;
            let get = |s: Stat| stats.get(s.field()).copied().unwrap_or(0);
            counts.push(QueueCounts {
                waiting: waiting + groups.waiting + ready,
                held: groups.held + bursts,
                in_flight: 0,
                scheduled,
                dead,
                processed: get(Stat::Processed),
                failed: get(Stat::Failed),
                retried: get(Stat::Retried),
                died: get(Stat::Dead),
                recovered: get(Stat::Recovered),
                nodes,
                head: head.into_iter().next().map(|(size, bytes, _)| Viewed {
                    index: 0,
                    size,
                    bytes,
                    score: None,
                }),
                group_heads: groups.created,
                paused,
            });
        }
        let mut pipe = redis::pipe();
        let mut any = false;
        for (q, c) in queues.iter().zip(&counts) {
            for n in &c.nodes {
                pipe.cmd("LLEN").arg(q.inflight_of(n));
                any = true;
            }
        }
        if any {
            let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
            let mut lens = lens.into_iter();
            for c in &mut counts {
                c.in_flight = lens.by_ref().take(c.nodes.len()).sum();
            }
        }
        Ok(counts)
    }

    /// The queue's groups, the `most` busiest first, and their totals; a
    /// group with `limit` jobs in flight holds its jobs.
    pub(crate) async fn groups(
        &self,
        q: &QueueKeys,
        most: usize,
        limit: Option<u32>,
    ) -> Result<Groups, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(groups::Call {
            keys: q,
            most,
            limit,
            heads: 0,
        }
        .invocation()
        .invoke_async(&mut conn)
        .await?)
    }

    /// How many of the queue's scheduled jobs are due at `now_ms` (their
    /// score at or before it): jobs a scheduler moves to the queue within
    /// a second, which a reading of the queue alone does not see yet.
    pub(crate) async fn scheduled_due(
        &self,
        q: &QueueKeys,
        now_ms: i64,
    ) -> Result<u64, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("ZCOUNT")
            .arg(&q.scheduled)
            .arg("-inf")
            .arg(now_ms)
            .query_async(&mut conn)
            .await?)
    }
}

/// Where `conveyor cancel` found a job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    /// In the queue list, as this item (its first bytes if it is large).
    Waiting(Viewed),
    /// In the list of its group (this key), held for its turn, as this
    /// item (its first bytes if it is large).
    Held(String, Viewed),
    /// In the scheduled set, as this item (its first bytes if it is large).
    Scheduled(Viewed),
    /// In the in-flight list of this node: a daemon runs it.
    Running(String),
}

/// Items read per round trip while looking for a job: at most their first
/// 4 KiB each (see [`Bounds::heads`]). The first look is shorter: the job
/// looked for is often near the head (a recent death), and each item a look
/// passes costs Redis a copy of it.
const SEARCH_CHUNKS: [u64; 2] = [100, 1000];

/// The most groups a look for a job goes through, in their turns' order.
const SEARCH_GROUPS: usize = 1000;

/// Whether `item` (whole, or its first bytes) is the job `id`.
fn names(item: &Viewed, id: &str) -> bool {
    match item.is_whole() {
        true => {
            crate::envelope::parse_item(&item.bytes, usize::MAX).is_ok_and(|p| p.envelope.id == id)
        }
        false => crate::envelope::glimpse(&item.bytes).is_some_and(|e| e.id == id),
    }
}

impl Broker {
    /// Where the job with id `id` is: waiting, held in a group (the first
    /// [`SEARCH_GROUPS`] of them), scheduled or running; `None` when in
    /// none of them. Each list is looked through a thousand items a
    /// round trip, reading at most the first 4 KiB of each.
    pub(crate) async fn find_job(
        &self,
        q: &QueueKeys,
        id: &str,
    ) -> Result<Option<Found>, BrokerError> {
        if let Some(item) = self.search(&q.list, Store::List, id).await? {
            return Ok(Some(Found::Waiting(item)));
        }
        if let Some(item) = self.search(&q.scheduled, Store::Zset, id).await? {
            return Ok(Some(Found::Scheduled(item)));
        }
        for node in self.queue_nodes(q).await? {
            if self
                .search(&q.inflight_of(&node), Store::List, id)
                .await?
                .is_some()
            {
                return Ok(Some(Found::Running(node)));
            }
        }
        // After the in-flight lists: an ordered group's running job is
        // also at the head of its group's list.
        for group in self.group_names(q).await? {
            let list = q.group(&group);
            if let Some(item) = self.search(&list, Store::List, id).await? {
                return Ok(Some(Found::Held(list, item)));
            }
        }
        Ok(None)
    }

    /// The first [`SEARCH_GROUPS`] groups holding jobs of `q`, in their
    /// turns' order.
    pub(crate) async fn group_names(&self, q: &QueueKeys) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("ZRANGE")
            .arg(&q.groups)
            .arg(0)
            .arg(SEARCH_GROUPS - 1)
            .query_async(&mut conn)
            .await?)
    }

    /// The nodes that may hold an in-flight list of `q`.
    pub(crate) async fn queue_nodes(&self, q: &QueueKeys) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("SMEMBERS")
            .arg(&q.nodes)
            .query_async(&mut conn)
            .await?)
    }

    /// The first item of `key` that is the job `id`, as far as
    /// [`Bounds::heads`] reads it.
    pub(crate) async fn search(
        &self,
        key: &str,
        store: Store,
        id: &str,
    ) -> Result<Option<Viewed>, BrokerError> {
        // Stops at the item that begins as conveyor writes the job's.
        let prefix = format!("{{\"id\":{}", serde_json::Value::from(id));
        let (mut start, mut chunk) = (0, SEARCH_CHUNKS[0]);
        loop {
            let items = self
                .view_until(key, store, start, chunk, Bounds::heads(), &prefix)
                .await?;
            let last = (items.len() as u64) < chunk;
            if let Some(item) = items.into_iter().find(|i| names(i, id)) {
                return Ok(Some(item));
            }
            if last {
                return Ok(None);
            }
            start += chunk;
            chunk = SEARCH_CHUNKS[1];
        }
    }

    /// `item` read again within `bounds`, if it is still at its place:
    /// whole when it fits them.
    pub(crate) async fn reread(
        &self,
        key: &str,
        store: Store,
        item: &Viewed,
        bounds: Bounds,
    ) -> Result<Option<Viewed>, BrokerError> {
        if item.is_whole() {
            return Ok(Some(item.clone()));
        }
        let again = self.view(key, store, item.index, 1, bounds).await?;
        Ok(again.into_iter().next().filter(|a| {
            a.size == item.size
                && a.bytes
                    .starts_with(&item.bytes[..a.bytes.len().min(item.bytes.len())])
        }))
    }

    /// Moves a waiting or scheduled job (`found`) to the dead letter list as
    /// `dead_entry`, releasing its unique lock; false if it was no longer
    /// there. An item read only in part is moved by its place.
    pub(crate) async fn cancel_waiting(
        &self,
        q: &QueueKeys,
        found: &Found,
        dead_entry: &str,
        dead_cap: u32,
        unique: Option<(&str, &str)>,
        flow: Option<&str>,
    ) -> Result<bool, BrokerError> {
        let (source, seen, store) = match found {
            Found::Waiting(item) => (&q.list, item, Store::List),
            Found::Held(list, item) => (list, item, Store::List),
            Found::Scheduled(item) => (&q.scheduled, item, Store::Zset),
            Found::Running(_) => return Ok(false),
        };
        if !seen.is_whole() {
            let lock = unique.map(|(key, _)| q.unique(key));
            let then = Then::PushHead {
                key: &q.dead,
                item: dead_entry.as_bytes(),
                cap: dead_cap,
            };
            let lock = lock.as_deref().zip(unique.map(|(_, id)| id));
            return self.remove_at(source, store, seen, then, lock).await;
        }
        let call = cancel::Call {
            keys: q,
            source,
            store,
            item: &seen.bytes,
            dead_entry,
            dead_cap,
            unique,
            flow,
        };
        let mut conn = self.conn().await?;
        let moved: u8 = call.invocation().invoke_async(&mut conn).await?;
        Ok(moved == 1)
    }

    /// Asks the daemons to stop the running job `id` (they look four times
    /// a second), or withdraws the request.
    pub(crate) async fn request_cancel(
        &self,
        q: &QueueKeys,
        id: &str,
        on: bool,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd(if on { "SADD" } else { "SREM" });
        cmd.arg(&q.cancel).arg(id);
        cmd.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Publishes (and keeps in the replay stream) one event, already JSON.
    pub(crate) async fn announce(&self, sink: &EventSink, event: &str) -> Result<(), BrokerError> {
        let mut events = EventBatch::default();
        events.push_json(event);
        let mut pipe = redis::pipe();
        super::events::add_publish(&mut pipe, sink, &events);
        super::events::add_stream(&mut pipe, sink, &events);
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

impl Broker {
    /// The first `limit` scheduled items, soonest first, read within
    /// `bounds`, each with its due time (ms) as its score.
    pub(crate) async fn scheduled_entries(
        &self,
        q: &QueueKeys,
        limit: u64,
        bounds: Bounds,
    ) -> Result<Vec<Viewed>, BrokerError> {
        self.view(&q.scheduled, Store::Zset, 0, limit, bounds).await
    }

    /// Up to `limit` in-flight items of the queue, read within `bounds`,
    /// with the node holding each.
    pub(crate) async fn inflight_entries(
        &self,
        q: &QueueKeys,
        limit: u64,
        bounds: Bounds,
    ) -> Result<Vec<(String, Viewed)>, BrokerError> {
        let nodes: Vec<String> = {
            let mut conn = self.conn().await?;
            redis::cmd("SMEMBERS")
                .arg(&q.nodes)
                .query_async(&mut conn)
                .await?
        };
        let mut out = Vec::new();
        for node in nodes {
            let left = limit.saturating_sub(out.len() as u64);
            if left == 0 {
                break;
            }
            let items = self
                .view(&q.inflight_of(&node), Store::List, 0, left, bounds)
                .await?;
            out.extend(items.into_iter().map(|i| (node.clone(), i)));
        }
        Ok(out)
    }

    /// Moves a scheduled item to the head of its queue; false if it was no
    /// longer scheduled. An item read only in part moves by its place.
    pub(crate) async fn run_now(&self, q: &QueueKeys, seen: &Viewed) -> Result<bool, BrokerError> {
        if !seen.is_whole() {
            let then = Then::MoveHead { key: &q.list };
            return self
                .remove_at(&q.scheduled, Store::Zset, seen, then, None)
                .await;
        }
        let call = run_now::Call {
            keys: q,
            item: &seen.bytes,
        };
        let mut conn = self.conn().await?;
        let moved: u8 = call.invocation().invoke_async(&mut conn).await?;
        Ok(moved == 1)
    }
}

/// One write of [`Broker::enqueue`]'s pipeline, by the reply it gets.
enum Write {
    /// An `RPUSH` of this many consecutive plain jobs.
    Push(usize),
    /// A `ZADD` of a job due later.
    Schedule,
    /// An `enqueue_unique.lua` call.
    Unique,
}

/// Adds the events and status records of every job not unique, in one
/// call, so each precedes its push (a unique job's script writes its own,
/// and only if it is enqueued). Events are published only if anyone
/// listens (checked as they are published), but on a `cluster`; the
/// replay stream gets them all the same.
fn add_plain_announcements(pipe: &mut Pipeline, jobs: &[NewJob], sink: &EventSink, cluster: bool) {
    let plain: Vec<&NewJob> = jobs.iter().filter(|j| j.unique.is_none()).collect();
    let mut events = EventBatch::default();
    for event in plain.iter().filter_map(|j| j.event.as_deref()) {
        events.push_json(event);
    }
    let statuses: Vec<StatusUpdate> = plain.iter().filter_map(|j| j.status.clone()).collect();
    if cluster {
        super::events::add_publish(pipe, sink, &events);
    } else {
        if !events.is_empty() {
            pipe.load_script(&publish_if_heard::SCRIPT).ignore();
        }
        super::events::add_publish_if_heard(pipe, sink, &events);
    }
    super::events::add_stream(pipe, sink, &events);
    super::events::add_statuses(pipe, &statuses);
}

/// Adds the writes of `jobs` in order: a unique job by its script, a job
/// due later by `ZADD`, and each run of consecutive plain jobs by one
/// `RPUSH`. The script announces a unique job but on a `cluster`.
fn add_writes(
    pipe: &mut Pipeline,
    q: &QueueKeys,
    jobs: &[NewJob],
    sink: &EventSink,
    cluster: bool,
) -> Vec<Write> {
    let mut writes = Vec::new();
    let mut i = 0;
    while i < jobs.len() {
        let job = &jobs[i];
        if let Some((key, ttl)) = &job.unique {
            let call = enqueue_unique::Call {
                keys: q,
                job,
                lock: (key, *ttl),
                sink,
                announce: !cluster,
            };
            pipe.invoke_script(&call.invocation());
            writes.push(Write::Unique);
            i += 1;
        } else if let Some(due) = job.due_ms {
            pipe.cmd("ZADD")
                .arg(&q.scheduled)
                .arg(due)
                .arg(&job.envelope);
            writes.push(Write::Schedule);
            i += 1;
        } else {
            let run = jobs[i..]
                .iter()
                .take_while(|j| j.unique.is_none() && j.due_ms.is_none())
                .count();
            let cmd = pipe.cmd("RPUSH").arg(&q.list);
            for j in &jobs[i..i + run] {
                cmd.arg(&j.envelope);
            }
            writes.push(Write::Push(run));
            i += run;
        }
    }
    writes
}

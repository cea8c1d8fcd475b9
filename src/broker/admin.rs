//! Operations of the command line: enqueueing, the dead letter list, counters.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use super::events::{EventSink, StatusUpdate};
use super::{Broker, BrokerError, QueueKeys, keys, scripts};
use crate::event::EventBatch;

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id (also stored in a unique lock).
    pub id: String,
    /// The envelope JSON.
    pub envelope: String,
    /// Run no earlier than this (ms since the epoch); `None` for now.
    pub due_ms: Option<i64>,
    /// Enqueue only if no other job holds this lock; hold it this long.
    pub unique: Option<(String, Duration)>,
    /// Its `job.enqueued` event, published before the job can be taken.
    pub event: Option<String>,
    /// Its first status record, written before the job can be taken.
    pub status: Option<StatusUpdate>,
}

/// What became of one enqueued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Waiting or scheduled.
    Queued,
    /// Not enqueued: another job holds the unique lock.
    Duplicate {
        /// That job's id.
        holder: String,
    },
}

/// A queue's size and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Jobs waiting in the list.
    pub waiting: u64,
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
    pub nodes: Vec<String>,
    /// The item at the head of the queue (the oldest waiting), if any.
    #[serde(skip)]
    pub head: Option<Vec<u8>>,
    /// Whether the queue is paused (`conveyor pause`).
    pub paused: bool,
}

impl Broker {
    /// Enqueues jobs in one pipeline (the caller bounds the batch). Plain
    /// jobs go out as one `RPUSH` per run of consecutive ones. Each job's
    /// event and status record go out just before it is pushed, so no
    /// daemon can report it started before it was reported enqueued; a
    /// unique job's are written by its script, and only if it was enqueued.
    pub async fn enqueue(
        &self,
        q: &QueueKeys,
        jobs: &[NewJob],
        sink: &EventSink,
    ) -> Result<Vec<Enqueued>, BrokerError> {
        enum Op {
            Push(usize),
            Other,
        }
        let mut pipe = redis::pipe();
        let mut ops = Vec::new();
        let mut i = 0;
        // On a cluster a script touches the queue's slot only, so a unique
        // job's event and status record are written after it (and only if
        // it was enqueued), and events are published whether or not anyone
        // listens (a subscriber may be on any node).
        let cluster = self.is_cluster();
        if jobs.iter().any(|j| j.unique.is_some()) {
            pipe.load_script(&scripts::ENQUEUE_UNIQUE).ignore();
        }
        // The events and status records of every job not unique go first, in
        // one call, so each precedes its push; a unique job's script writes
        // its own, and only if it is enqueued.
        let plain: Vec<&NewJob> = jobs.iter().filter(|j| j.unique.is_none()).collect();
        let mut events = EventBatch::default();
        for event in plain.iter().filter_map(|j| j.event.as_deref()) {
            events.push_json(event);
        }
        let statuses: Vec<StatusUpdate> = plain.iter().filter_map(|j| j.status.clone()).collect();
        // Published only if anyone listens (checked as they are published);
        // the replay stream gets them all the same.
        if cluster {
            super::events::add_publish(&mut pipe, sink, &events);
        } else {
            if !events.is_empty() {
                pipe.load_script(&scripts::PUBLISH_IF_HEARD).ignore();
            }
            super::events::add_publish_if_heard(&mut pipe, sink, &events);
        }
        super::events::add_stream(&mut pipe, sink, &events);
        super::events::add_statuses(&mut pipe, &statuses);
        while i < jobs.len() {
            let job = &jobs[i];
            if let Some((key, ttl)) = &job.unique {
                let stream = sink.stream.as_ref();
                let mut inv = scripts::ENQUEUE_UNIQUE.key(&q.list);
                inv.key(&q.scheduled).key(q.unique(key));
                if !cluster {
                    inv.key(stream.map(|(k, _)| k.as_str()).unwrap_or(&sink.channel))
                        .key(keys::job(&job.id));
                }
                inv.arg(&job.envelope)
                    .arg(&job.id)
                    .arg(job.due_ms.unwrap_or(0))
                    .arg(ttl.as_millis().max(1) as u64)
                    .arg(if job.event.is_some() && !cluster {
                        sink.channel.as_str()
                    } else {
                        ""
                    })
                    .arg(job.event.as_deref().unwrap_or(""))
                    .arg(stream.map(|(_, n)| *n).unwrap_or(0));
                match job.status.as_ref().filter(|_| !cluster) {
                    Some(s) => {
                        inv.arg(s.ttl.as_millis().max(1) as u64);
                        for (k, v) in &s.fields {
                            inv.arg(*k).arg(v);
                        }
                    }
                    None => {
                        inv.arg(0);
                    }
                }
                pipe.invoke_script(&inv);
                ops.push(Op::Other);
                i += 1;
            } else if let Some(due) = job.due_ms {
                pipe.cmd("ZADD")
                    .arg(&q.scheduled)
                    .arg(due)
                    .arg(&job.envelope);
                ops.push(Op::Other);
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
                ops.push(Op::Push(run));
                i += run;
            }
        }
        let mut conn = self.conn().await?;
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for (op, reply) in ops.iter().zip(replies) {
            match op {
                Op::Push(n) => out.extend(std::iter::repeat_n(Enqueued::Queued, *n)),
                Op::Other => out.push(match reply {
                    Value::Array(v) if v.len() == 2 => {
                        let (ok, holder): (i64, String) = redis::from_redis_value(Value::Array(v))?;
                        if ok == 1 {
                            Enqueued::Queued
                        } else {
                            Enqueued::Duplicate { holder }
                        }
                    }
                    _ => Enqueued::Queued,
                }),
            }
        }
        if cluster {
            // The announcements of the unique jobs that were enqueued.
            let mut events = EventBatch::default();
            let mut statuses = Vec::new();
            let enqueued = jobs
                .iter()
                .zip(&out)
                .filter(|(j, e)| j.unique.is_some() && matches!(e, Enqueued::Queued));
            for (job, _) in enqueued {
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

    /// Dead entries `start..start+count`, newest first.
    pub async fn dead_entries(
        &self,
        q: &QueueKeys,
        start: u64,
        count: u64,
    ) -> Result<Vec<Vec<u8>>, BrokerError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        Ok(redis::cmd("LRANGE")
            .arg(&q.dead)
            .arg(start)
            .arg(start + count - 1)
            .query_async(&mut conn)
            .await?)
    }

    /// The dead letter list's length.
    pub async fn dead_len(&self, q: &QueueKeys) -> Result<u64, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("LLEN")
            .arg(&q.dead)
            .query_async(&mut conn)
            .await?)
    }

    /// Moves dead entries back to the queue: `(entry as stored, item to push)`.
    pub async fn dead_retry(
        &self,
        q: &QueueKeys,
        moves: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<u64, BrokerError> {
        if moves.is_empty() {
            return Ok(0);
        }
        let mut inv = scripts::DEAD_RETRY.key(&q.dead);
        inv.key(&q.list);
        for (entry, item) in moves {
            inv.arg(entry).arg(item);
        }
        let mut conn = self.conn().await?;
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Deletes one dead entry; false if it was already gone.
    pub async fn dead_remove(&self, q: &QueueKeys, entry: &[u8]) -> Result<bool, BrokerError> {
        let mut conn = self.conn().await?;
        let removed: u64 = redis::cmd("LREM")
            .arg(&q.dead)
            .arg(1)
            .arg(entry)
            .query_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// Deletes the whole dead letter list; returns how many entries it held.
    pub async fn dead_clear(&self, q: &QueueKeys) -> Result<u64, BrokerError> {
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
    pub async fn set_paused(
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
    pub async fn steering(
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

    /// Sizes and counters of each queue, in two round trips.
    /// The stats hash may hold only counters; `LINDEX` reads one item.
    pub async fn queue_counts(
        &self,
        queues: &[QueueKeys],
    ) -> Result<Vec<QueueCounts>, BrokerError> {
        // An empty pipeline is an empty command to Redis.
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in queues {
            pipe.cmd("LLEN").arg(&q.list);
            pipe.cmd("ZCARD").arg(&q.scheduled);
            pipe.cmd("LLEN").arg(&q.dead);
            pipe.cmd("HGETALL").arg(&q.stats);
            pipe.cmd("SMEMBERS").arg(&q.nodes);
            pipe.cmd("LINDEX").arg(&q.list).arg(0);
            pipe.cmd("EXISTS").arg(&q.paused);
        }
        let mut conn = self.conn().await?;
        type Row = (
            u64,
            u64,
            u64,
            HashMap<String, u64>,
            Vec<String>,
            Option<Vec<u8>>,
            bool,
        );
        let rows: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut counts = Vec::with_capacity(queues.len());
        let mut rows = rows.into_iter();
        for _ in queues {
            let row: Vec<Value> = rows.by_ref().take(7).collect();
            let (waiting, scheduled, dead, stats, nodes, head, paused): Row =
                redis::from_redis_value(Value::Array(row))?;
            let get = |k: &str| stats.get(k).copied().unwrap_or(0);
            counts.push(QueueCounts {
                waiting,
                in_flight: 0,
                scheduled,
                dead,
                processed: get("processed"),
                failed: get("failed"),
                retried: get("retried"),
                died: get("dead"),
                recovered: get("recovered"),
                nodes,
                head,
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
}

/// Where `conveyor cancel` found a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// In the queue list, as this item.
    Waiting(Vec<u8>),
    /// In the scheduled set, as this item.
    Scheduled(Vec<u8>),
    /// In the in-flight list of this node: a daemon runs it.
    Running(String),
}

/// Items read per round trip while looking for a job.
const SEARCH_CHUNK: isize = 1000;

impl Broker {
    /// Where the job with id `id` is: waiting, scheduled or running; `None`
    /// when in none of them. A waiting job is looked for through the whole
    /// list, a thousand items a round trip.
    pub async fn find_job(&self, q: &QueueKeys, id: &str) -> Result<Option<Found>, BrokerError> {
        let mut conn = self.conn().await?;
        let has_id = |item: &[u8]| {
            crate::envelope::parse_item(item, usize::MAX).is_ok_and(|p| p.envelope.id == id)
        };
        let mut start = 0;
        loop {
            let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&q.list)
                .arg(start)
                .arg(start + SEARCH_CHUNK - 1)
                .query_async(&mut conn)
                .await?;
            if let Some(item) = items.iter().find(|i| has_id(i)) {
                return Ok(Some(Found::Waiting(item.clone())));
            }
            if (items.len() as isize) < SEARCH_CHUNK {
                break;
            }
            start += SEARCH_CHUNK;
        }
        let scheduled: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(&q.scheduled)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if let Some(item) = scheduled.into_iter().find(|i| has_id(i)) {
            return Ok(Some(Found::Scheduled(item)));
        }
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&q.nodes)
            .query_async(&mut conn)
            .await?;
        for node in nodes {
            let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(q.inflight_of(&node))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
            if items.iter().any(|i| has_id(i)) {
                return Ok(Some(Found::Running(node)));
            }
        }
        Ok(None)
    }

    /// Moves a waiting or scheduled job (`found`) to the dead letter list as
    /// `dead_entry`, releasing its unique lock; false if it was no longer
    /// there.
    pub async fn cancel_waiting(
        &self,
        q: &QueueKeys,
        found: &Found,
        dead_entry: &str,
        dead_cap: u32,
        unique: Option<(&str, &str)>,
    ) -> Result<bool, BrokerError> {
        let (source, kind, item) = match found {
            Found::Waiting(item) => (&q.list, "list", item),
            Found::Scheduled(item) => (&q.scheduled, "zset", item),
            Found::Running(_) => return Ok(false),
        };
        let lock = unique.map(|(key, _)| q.unique(key));
        let mut conn = self.conn().await?;
        let moved: u8 = scripts::CANCEL
            .key(source)
            .key(&q.dead)
            .key(lock.as_deref().unwrap_or(&q.dead))
            .arg(kind)
            .arg(item)
            .arg(dead_entry)
            .arg(dead_cap)
            .arg(unique.map_or("", |(_, id)| id))
            .invoke_async(&mut conn)
            .await?;
        Ok(moved == 1)
    }

    /// Asks the daemons to stop the running job `id` (they look four times
    /// a second), or withdraws the request.
    pub async fn request_cancel(
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
    pub async fn announce(&self, sink: &EventSink, event: &str) -> Result<(), BrokerError> {
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
    /// The first `limit` scheduled items with their due time (ms), soonest first.
    pub async fn scheduled_entries(
        &self,
        q: &QueueKeys,
        limit: u64,
    ) -> Result<Vec<(Vec<u8>, i64)>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let items: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(&q.scheduled)
            .arg(0)
            .arg(limit - 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(items.into_iter().map(|(i, s)| (i, s as i64)).collect())
    }

    /// Up to `limit` in-flight items of the queue, with the node holding each.
    pub async fn inflight_entries(
        &self,
        q: &QueueKeys,
        limit: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, BrokerError> {
        let mut conn = self.conn().await?;
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&q.nodes)
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        for node in nodes {
            let left = limit.saturating_sub(out.len() as u64);
            if left == 0 {
                break;
            }
            let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(q.inflight_of(&node))
                .arg(0)
                .arg(left - 1)
                .query_async(&mut conn)
                .await?;
            out.extend(items.into_iter().map(|i| (node.clone(), i)));
        }
        Ok(out)
    }

    /// The scheduled item of the job `id`, if it is scheduled.
    pub async fn find_scheduled(
        &self,
        q: &QueueKeys,
        id: &str,
    ) -> Result<Option<Vec<u8>>, BrokerError> {
        let mut conn = self.conn().await?;
        let scheduled: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(&q.scheduled)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        Ok(scheduled.into_iter().find(|item| {
            crate::envelope::parse_item(item, usize::MAX).is_ok_and(|p| p.envelope.id == id)
        }))
    }

    /// Moves a scheduled item to the head of its queue; false if it was no
    /// longer scheduled.
    pub async fn run_now(&self, q: &QueueKeys, item: &[u8]) -> Result<bool, BrokerError> {
        let mut conn = self.conn().await?;
        let moved: u8 = scripts::RUN_NOW
            .key(&q.scheduled)
            .key(&q.list)
            .arg(item)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved == 1)
    }
}

//! The node's writes in bulk: many jobs' outcomes (one `finish.lua` call per
//! queue), lifecycle events and status records, in one pipeline per round
//! trip.

use redis::{ErrorKind, Pipeline, ServerErrorKind, Value};

use super::events::{EventSink, StatusUpdate};
use super::queue::{Outcome, QueueStore};
use super::{Broker, BrokerError, scripts};

/// Most outcomes in one script call, so that no call keeps Redis busy long.
const MAX_PER_CALL: usize = 500;

/// One connection for a writer's flushes, so that Redis runs them in the
/// order they were sent: an event never overtakes the outcome it reports,
/// nor an earlier event. A writer keeps its lane until a flush fails.
#[derive(Clone)]
pub struct Lane {
    conn: super::Conn,
}

/// Outcomes of one queue, each with the item as it was taken.
pub struct QueueOutcomes<'a> {
    /// The queue.
    pub store: &'a QueueStore,
    /// `(item, outcome)` pairs.
    pub entries: Vec<(&'a [u8], &'a Outcome)>,
}

impl Broker {
    /// A lane for a writer's flushes.
    pub async fn lane(&self) -> Result<Lane, BrokerError> {
        Ok(Lane {
            conn: self.conn().await?,
        })
    }

    /// Records outcomes and publishes events and status records in one
    /// round trip. Returns, per queue and entry, whether the outcome was
    /// recorded (false: the job was no longer in flight here).
    ///
    /// Events come after the outcomes in the pipeline, so an event is never
    /// published before the outcome it reports is recorded.
    pub async fn write_batch(
        &self,
        lane: &Lane,
        outcomes: &[QueueOutcomes<'_>],
        sink: &EventSink,
        events: &[String],
        statuses: &[StatusUpdate],
    ) -> Result<Vec<Vec<bool>>, BrokerError> {
        let mut pipe = redis::pipe();
        let calls = add_outcomes(&mut pipe, outcomes);
        super::events::add_events(&mut pipe, sink, events, statuses);
        let mut conn = lane.conn.clone();
        let replies = match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(replies) => replies,
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Redis restarted and lost its scripts (both: nothing in the
                // failed pipeline ran but the status records, which are
                // idempotent). Load them and send it all again.
                scripts::FINISH
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await?;
                scripts::PUBLISH
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await?;
                pipe.query_async::<Vec<Value>>(&mut conn).await?
            }
            Err(e) => return Err(e.into()),
        };
        // Replies: one array of flags per script call, in order.
        let mut replies = replies.into_iter();
        let mut results = Vec::with_capacity(outcomes.len());
        for n in calls {
            let mut flags = Vec::new();
            for _ in 0..n {
                let reply = replies
                    .next()
                    .ok_or_else(|| BrokerError::Protocol("missing reply of finish.lua".into()))?;
                let part: Vec<u8> = redis::from_redis_value(reply)?;
                flags.extend(part.into_iter().map(|f| f == 1));
            }
            results.push(flags);
        }
        Ok(results)
    }
}

/// Adds the script calls; returns how many calls each queue got.
fn add_outcomes(pipe: &mut Pipeline, outcomes: &[QueueOutcomes<'_>]) -> Vec<usize> {
    let mut calls = Vec::with_capacity(outcomes.len());
    for q in outcomes {
        let chunks: Vec<_> = q.entries.chunks(MAX_PER_CALL).collect();
        calls.push(chunks.len());
        for chunk in chunks {
            add_finish(pipe, q.store, chunk);
        }
    }
    calls
}

fn add_finish(pipe: &mut Pipeline, store: &QueueStore, entries: &[(&[u8], &Outcome)]) {
    let k = store.keys();
    let mut inv = scripts::FINISH.key(&k.inflight);
    inv.key(&k.list)
        .key(&k.scheduled)
        .key(&k.dead)
        .key(&k.stats)
        .arg(store.dead_cap());
    // A job's unique lock is named by its index in KEYS; five fixed keys
    // come first.
    let mut locks: Vec<&str> = Vec::new();
    for (_, outcome) in entries {
        if let Outcome::Succeeded {
            unique_key: Some(u),
            ..
        }
        | Outcome::Dead {
            unique_key: Some(u),
            ..
        } = outcome
        {
            if !locks.contains(&u.as_str()) {
                locks.push(u);
            }
        }
    }
    let lock_index = |key: &Option<String>| {
        key.as_deref()
            .and_then(|u| locks.iter().position(|l| *l == u))
            .map_or(0, |at| at + 6)
    };
    for (item, outcome) in entries {
        inv.arg(match outcome {
            Outcome::Succeeded { .. } => "ok",
            Outcome::Retry { .. } => "retry",
            Outcome::Dead { .. } => "dead",
            Outcome::Snooze { .. } => "snooze",
            Outcome::Requeue { .. } | Outcome::GiveBack => "requeue",
        })
        .arg(*item);
        match outcome {
            Outcome::Succeeded { id, unique_key } => {
                inv.arg("").arg(lock_index(unique_key)).arg(id)
            }
            Outcome::Retry { envelope, due_ms } | Outcome::Snooze { envelope, due_ms } => {
                inv.arg(envelope).arg(due_ms).arg("")
            }
            Outcome::Dead {
                envelope,
                id,
                unique_key,
            } => inv.arg(envelope).arg(lock_index(unique_key)).arg(id),
            Outcome::Requeue { replacement } => {
                inv.arg(replacement.as_deref().unwrap_or("")).arg(1).arg("")
            }
            Outcome::GiveBack => inv.arg("").arg(0).arg(""),
        };
    }
    for lock in &locks {
        inv.key(k.unique(lock));
    }
    pipe.invoke_script(&inv);
}

//! The node's writes in bulk: many jobs' outcomes (one `finish.lua` call per
//! queue), lifecycle events and status records, in one pipeline per round
//! trip.

use redis::{Pipeline, ServerErrorKind, Value};

use super::events::{EventSink, StatusUpdate};
use super::history::Stamp;
use super::queue::QueueStore;
use super::scripts::finish;
pub(crate) use super::scripts::finish::Entry;
use super::{Broker, BrokerError};
use crate::event::EventBatch;

/// Most outcomes in one script call, so that no call keeps Redis busy long.
const MAX_PER_CALL: usize = 500;

/// One connection for a writer's flushes, so that Redis runs them in the
/// order they were sent: an event never overtakes the outcome it reports,
/// nor an earlier event. A writer keeps its lane until a flush fails.
#[derive(Clone)]
pub(crate) struct Lane {
    conn: super::Conn,
}

/// What a batch did.
#[derive(Debug)]
pub(crate) struct Written {
    /// Per queue and entry, whether the outcome was recorded (false: the job
    /// was no longer in flight here).
    pub(crate) recorded: Vec<Vec<bool>>,
    /// How many subscribe to the events channel; `None` when the batch did
    /// not ask.
    pub(crate) subscribers: Option<u64>,
}

/// The events and status records of a batch.
#[derive(Clone, Copy)]
pub(crate) struct Notices<'a> {
    /// Events of an earlier batch to publish now (already in the replay
    /// stream).
    pub(crate) republish: &'a EventBatch,
    /// New events: they go to the replay stream, and are published too if
    /// `heard`.
    pub(crate) events: &'a EventBatch,
    /// Whether anyone subscribed at the last look; while nobody does, Redis
    /// would drop what is published.
    pub(crate) heard: bool,
    /// Status record updates that tell no outcome (those go with theirs).
    pub(crate) statuses: &'a [StatusUpdate],
    /// Whether to ask how many subscribe to the events channel.
    pub(crate) ask: bool,
}

/// Outcomes of one queue, each with the item as it was taken.
pub(crate) struct QueueOutcomes<'a> {
    /// The queue.
    pub(crate) store: &'a QueueStore,
    /// Outcomes with their items and status records.
    pub(crate) entries: Vec<Entry<'a>>,
}

impl Lane {
    /// Whether its connection failed or reaches a master that is no longer
    /// the master (after a Sentinel failover): then take a new lane.
    pub(crate) fn is_stale(&self) -> bool {
        self.conn.is_stale()
    }
}

impl Broker {
    /// A lane for a writer's flushes, on a server that has the outcome
    /// script: its first flush (and the first after a failover or a restart,
    /// which take a new lane) then records its outcomes in the same round
    /// trip as the events that report them, where a script the server did
    /// not have would be sent again after those events.
    pub(crate) async fn lane(&self) -> Result<Lane, BrokerError> {
        let mut conn = self.conn().await?;
        finish::SCRIPT
            .prepare_invoke()
            .load_async(&mut conn)
            .await?;
        Ok(Lane { conn })
    }

    /// Records outcomes and publishes events and status records in one
    /// round trip.
    ///
    /// Events come after the outcomes in the pipeline, so an event is never
    /// published before the outcome it reports is recorded.
    ///
    /// See [`Notices`] for how events are published. The answer says how
    /// many subscribe to the events channel now.
    pub(crate) async fn write_batch(
        &self,
        lane: &Lane,
        outcomes: &[QueueOutcomes<'_>],
        sink: &EventSink,
        notices: &Notices<'_>,
    ) -> Result<Written, BrokerError> {
        let Notices {
            republish,
            events,
            heard,
            statuses,
            ask,
        } = *notices;
        // Each script call covers one chunk of one queue's outcomes.
        let chunks: Vec<(usize, &[Entry<'_>])> = outcomes
            .iter()
            .enumerate()
            .flat_map(|(q, o)| o.entries.chunks(MAX_PER_CALL).map(move |c| (q, c)))
            .collect();
        let mut pipe = redis::pipe();
        // Every reply in place, errors included, so that what went through is
        // known when something did not.
        pipe.ignore_errors();
        // Status records that tell no outcome first: a job's "running" must
        // not land after its outcome's record.
        super::events::add_statuses(&mut pipe, statuses);
        for (q, chunk) in &chunks {
            add_finish(&mut pipe, outcomes[*q].store, chunk);
        }
        super::events::add_publish(&mut pipe, sink, republish);
        if heard {
            super::events::add_publish(&mut pipe, sink, events);
        }
        super::events::add_stream(&mut pipe, sink, events);
        if ask {
            super::events::add_subscriber_count(&mut pipe, sink);
        }
        let mut conn = lane.conn.clone();
        let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        if replies.len() != chunks.len() + usize::from(ask) {
            return Err(BrokerError::Protocol(format!(
                "{} replies to a batch of {} script calls and {} counts",
                replies.len(),
                chunks.len(),
                usize::from(ask)
            )));
        }
        let lost_script = |v: &Value| matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript));
        if replies.iter().any(lost_script) {
            // Redis restarted and lost its scripts; the calls that needed
            // them did nothing. Load them and send those calls again (the
            // rest, events included, went through).
            finish::SCRIPT
                .prepare_invoke()
                .load_async(&mut conn)
                .await?;
            let mut again = redis::pipe();
            again.ignore_errors();
            let mut redo = Vec::new();
            for (i, (q, chunk)) in chunks.iter().enumerate() {
                if lost_script(&replies[i]) {
                    add_finish(&mut again, outcomes[*q].store, chunk);
                    redo.push(i);
                }
            }
            let answers: Vec<Value> = again.query_async(&mut conn).await?;
            for (i, answer) in redo.into_iter().zip(answers) {
                replies[i] = answer;
            }
        }
        let count = match ask {
            true => replies.pop(),
            false => None,
        };
        let mut recorded: Vec<Vec<bool>> = vec![Vec::new(); outcomes.len()];
        for ((q, _), reply) in chunks.iter().zip(replies) {
            let flags: Vec<u8> = redis::from_redis_value(reply.extract_error()?)?;
            recorded[*q].extend(flags.into_iter().map(|f| f == 1));
        }
        let subscribers = match count {
            Some(count) => Some(super::events::subscribers(count.extract_error()?)?),
            None => None,
        };
        Ok(Written {
            recorded,
            subscribers,
        })
    }
}

/// Adds one `finish.lua` call. On a cluster a status record lives in
/// another slot than the queue, so it is written in a step of its own,
/// right after the outcome.
fn add_finish(pipe: &mut Pipeline, store: &QueueStore, entries: &[Entry<'_>]) {
    let cluster = store.broker().is_cluster();
    let stamp = store
        .keeps_history()
        .then(|| Stamp::at(store.keys(), crate::clock::now_ms()));
    finish::Call {
        keys: store.keys(),
        dead_cap: store.dead_cap(),
        results_cap: super::results::CAP,
        history: stamp.as_ref(),
        group: store.group(),
        entries,
        records: !cluster,
    }
    .add_to(pipe);
    if cluster {
        let statuses: Vec<StatusUpdate> = entries.iter().filter_map(|e| e.2.cloned()).collect();
        super::events::add_statuses(pipe, &statuses);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::config::{MaskedUrl, RedisConfig};

    /// A new lane has the outcome script loaded, so that no flush's
    /// outcomes are sent again after its events.
    #[tokio::test]
    async fn a_new_lane_finds_the_outcome_script_loaded() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let config = RedisConfig {
            url: MaskedUrl::new(redis.url()),
            ..RedisConfig::default()
        };
        let broker = Broker::new(&config).unwrap();
        let exists = |conn: &mut redis::aio::MultiplexedConnection| {
            let mut conn = conn.clone();
            async move {
                let found: Vec<bool> = redis::cmd("SCRIPT")
                    .arg("EXISTS")
                    .arg(finish::SCRIPT.get_hash())
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                found[0]
            }
        };
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists(&mut conn).await);
        let _lane = broker.lane().await.unwrap();
        assert!(exists(&mut conn).await);
    }
}

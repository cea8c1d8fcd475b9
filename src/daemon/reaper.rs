//! The reaper: finds nodes whose heartbeat expired and returns their
//! in-flight jobs to the head of the queue, counting the lost run in
//! `deliveries`. A job lost `max_deliveries` times is poison (it takes its
//! daemon down every time) and goes to the dead letter list instead.
//!
//! Nodes are found through each queue's `{K}:nodes` set, never by SCAN.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::processor::Processor;
use super::queues::Processors;
use crate::broker::queue::{Move, RecoverTo, Recovered};
use crate::broker::{Broker, BrokerError};
use crate::clock::{Clock, now_rfc3339};
use crate::envelope::{Envelope, parse_item};
use crate::event::{Draft, EventType};
use crate::job::JobState;

/// Most jobs moved per script call.
const BATCH: usize = 100;

/// Recovers jobs of dead nodes.
pub(crate) struct Reaper {
    pub(crate) broker: Broker,
    pub(crate) processors: Processors,
    pub(crate) node: String,
    pub(crate) max_deliveries: u32,
    pub(crate) interval: Duration,
    /// When to look goes by it.
    pub(crate) clock: Clock,
}

/// One recovered job: what to move, where, and what to say about it.
struct Recovery {
    moved: Move,
    event: Draft<'static>,
}

impl Reaper {
    /// Looks every `interval` (with jitter, so that peers started together
    /// do not all look at the same moment), until `stop`. The supervisor
    /// makes the first look itself, before any job is taken.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            let pause = self.interval.mul_f64(0.8 + fastrand::f64() * 0.4);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.clock.sleep(pause) => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "reaper: looking for dead nodes failed; will look again");
            }
        }
    }

    /// One look at every queue.
    pub(crate) async fn sweep(&self) -> Result<(), BrokerError> {
        for p in self.processors.snapshot() {
            let p = &*p;
            let others: Vec<String> = p
                .store()
                .nodes()
                .await?
                .into_iter()
                .filter(|n| *n != self.node)
                .collect();
            let alive = self.broker.nodes_alive(&others).await?;
            for (node, alive) in others.iter().zip(alive) {
                if !alive {
                    self.recover_node(p, node).await?;
                }
            }
        }
        Ok(())
    }

    async fn recover_node(&self, p: &Processor, node: &str) -> Result<(), BrokerError> {
        let store = p.store();
        let queue = &store.keys().name;
        loop {
            let items = store
                .inflight_items(node, BATCH, p.max_payload_bytes())
                .await?;
            if items.is_empty() {
                store.forget_node_if_idle(node).await?;
                return Ok(());
            }
            // Newest first, so pushing each to the head restores their order.
            let recoveries: Vec<Recovery> = items
                .into_iter()
                .rev()
                .map(|item| self.recovery_of(p, item))
                .collect();
            let (moves, events): (Vec<Move>, Vec<Draft<'static>>) =
                recoveries.into_iter().map(|r| (r.moved, r.event)).unzip();
            let results = store.recover(node, &moves).await?;
            let (mut requeued, mut dead) = (0, 0);
            for (result, event) in results.into_iter().zip(events) {
                match result {
                    Recovered::Requeued => requeued += 1,
                    Recovered::Dead => dead += 1,
                    Recovered::Gone => continue,
                }
                p.emit(event.kind, |_| event);
            }
            p.metrics.recovered(requeued);
            for _ in 0..dead {
                p.metrics.dead();
            }
            tracing::info!(%queue, %node, requeued, dead, "recovered in-flight jobs of a dead node");
        }
    }

    /// An item over the queue's limit is dead-lettered here with its
    /// original bytes, as the node that took it would have done; wrapping it
    /// in an envelope to count the delivery would change the bytes kept.
    fn recovery_of(&self, p: &Processor, item: Vec<u8>) -> Recovery {
        let queue = &p.store().keys().name;
        let (to, env, event, status, flow) = match parse_item(&item, p.max_payload_bytes()) {
            Ok(parsed) => {
                let mut env = parsed.envelope;
                env.deliveries = env.deliveries.saturating_add(1);
                if env.deliveries >= self.max_deliveries {
                    let error = format!(
                        "poison: its daemon died {} times while running it",
                        env.deliveries
                    );
                    env.set_error(&error);
                    env.died_at = Some(now_rfc3339());
                    tracing::warn!(%queue, id = %env.id, deliveries = env.deliveries, "quarantined a poison job in the dead letter list");
                    let status = p.status(&env.id, JobState::Dead, env.attempt, || {
                        vec![
                            ("last_error", error.clone()),
                            ("finished_at", now_rfc3339()),
                        ]
                    });
                    let event = Draft::job(
                        EventType::Dead,
                        queue.to_owned(),
                        env.id.clone(),
                        env.attempt,
                    )
                    .error(error)
                    .reason("poison");
                    let node = crate::flow::node_of(&env);
                    let flow = node.as_ref().map(|(fid, name)| {
                        crate::flow::node_end(fid, name, "dead", env.attempt, None, None)
                    });
                    let mut event = event;
                    event.flow = node.map(|(fid, _)| fid.into());
                    (RecoverTo::Dead, env, event, status, flow)
                } else {
                    let event = Draft::job(
                        EventType::Recovered,
                        queue.to_owned(),
                        env.id.clone(),
                        env.attempt,
                    )
                    .reason("crash");
                    let status = p.status(&env.id, JobState::Waiting, env.attempt, Vec::new);
                    (RecoverTo::Queue, env, event, status, None)
                }
            }
            Err(malformed) => {
                let env = Envelope::dead_letter(&item, &malformed, now_rfc3339());
                let error = malformed.to_string();
                let event = Draft::job(EventType::Dead, queue.to_owned(), env.id.clone(), 0)
                    .error(error)
                    .reason("malformed");
                (RecoverTo::Dead, env, event, None, None)
            }
        };
        Recovery {
            moved: Move {
                item,
                to,
                replacement: env.to_json().into_bytes(),
                status,
                flow,
            },
            event,
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::clock::Clock;
    use crate::daemon::testing;

    #[tokio::test]
    async fn the_reaper_looks_once_its_interval_has_passed_on_its_clock() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let clock = Clock::manual_from_now();
        let config = testing::config(&redis, "mail");
        let processor = testing::processor(&config, "mail", "node-1", &clock);
        let keys = processor.store().keys().clone();
        // A node listed in the queue, with a job in flight and no heartbeat.
        let dead = keys.inflight_of("dead-node");
        let _: () = conn.sadd(&keys.nodes, "dead-node").await.expect("SADD");
        let _: () = conn.lpush(&dead, testing::job("j1")).await.expect("LPUSH");
        let stop = CancellationToken::new();
        let reaper = Reaper {
            broker: processor.store().broker().clone(),
            processors: Processors::of(vec![processor]),
            node: "node-1".into(),
            max_deliveries: 3,
            interval: Duration::from_secs(60),
            clock: clock.clone(),
        };
        let task = tokio::spawn(reaper.run(stop.clone()));

        // The first look is the supervisor's: the reaper waits an interval.
        clock.asleep(1).await;
        let held: usize = conn.llen(&dead).await.expect("LLEN");
        assert_eq!(held, 1, "looked before its interval");

        // 60 s with up to 20% jitter: 72 s is past any interval.
        clock.advance(Duration::from_secs(72));
        clock.asleep(2).await;
        let held: usize = conn.llen(&dead).await.expect("LLEN");
        let waiting: Vec<String> = conn.lrange(&keys.list, 0, -1).await.expect("LRANGE");
        assert_eq!(held, 0, "the dead node's job is still in flight");
        assert_eq!(
            waiting.len(),
            1,
            "the dead node's job is not back in the queue"
        );
        let envelope: serde_json::Value = serde_json::from_str(&waiting[0]).expect("JSON");
        assert_eq!(envelope["deliveries"], 1, "the lost run is not counted");

        stop.cancel();
        task.await.expect("the reaper stops");
    }
}

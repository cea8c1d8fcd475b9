//! The reaper: finds nodes whose heartbeat expired and returns their
//! in-flight jobs to the head of the queue, counting the lost run in
//! `deliveries`. A job lost `max_deliveries` times is poison (it takes its
//! daemon down every time) and goes to the dead letter list instead.
//!
//! Nodes are found through each queue's `{K}:nodes` set, never by SCAN.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::queue::{QueueStore, RecoverTo};
use crate::broker::{Broker, BrokerError};
use crate::job::{Envelope, now_rfc3339, parse_item};

/// Most jobs moved per script call.
const BATCH: usize = 100;

/// Recovers jobs of dead nodes.
pub(crate) struct Reaper {
    pub(crate) broker: Broker,
    pub(crate) stores: Vec<QueueStore>,
    pub(crate) node: String,
    pub(crate) max_deliveries: u32,
    pub(crate) interval: Duration,
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
                _ = tokio::time::sleep(pause) => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "reaper: looking for dead nodes failed; will look again");
            }
        }
    }

    /// One look at every queue.
    pub(crate) async fn sweep(&self) -> Result<(), BrokerError> {
        for store in &self.stores {
            let others: Vec<String> = store
                .nodes()
                .await?
                .into_iter()
                .filter(|n| *n != self.node)
                .collect();
            let alive = self.broker.nodes_alive(&others).await?;
            for (node, alive) in others.iter().zip(alive) {
                if !alive {
                    self.recover_node(store, node).await?;
                }
            }
        }
        Ok(())
    }

    async fn recover_node(&self, store: &QueueStore, node: &str) -> Result<(), BrokerError> {
        let queue = &store.keys().name;
        loop {
            let items = store.inflight_items(node, BATCH).await?;
            if items.is_empty() {
                store.forget_node_if_idle(node).await?;
                return Ok(());
            }
            // Newest first, so pushing each to the head restores their order.
            let moves: Vec<_> = items
                .iter()
                .rev()
                .map(|item| self.recovery_of(queue, item))
                .collect();
            let (requeued, dead) = store.recover(node, &moves).await?;
            tracing::info!(%queue, %node, requeued, dead, "recovered in-flight jobs of a dead node");
        }
    }

    fn recovery_of(&self, queue: &str, item: &[u8]) -> (Vec<u8>, RecoverTo, Vec<u8>) {
        let (to, env) = match parse_item(item, usize::MAX) {
            Ok(parsed) => {
                let mut env = parsed.envelope;
                env.deliveries = env.deliveries.saturating_add(1);
                if env.deliveries >= self.max_deliveries {
                    env.set_error(&format!(
                        "poison: its daemon died {} times while running it",
                        env.deliveries
                    ));
                    env.died_at = Some(now_rfc3339());
                    tracing::warn!(%queue, id = %env.id, deliveries = env.deliveries, "quarantined a poison job in the dead letter list");
                    (RecoverTo::Dead, env)
                } else {
                    (RecoverTo::Queue, env)
                }
            }
            Err(malformed) => {
                let mut env = Envelope::for_malformed(item);
                env.set_error(&malformed.to_string());
                env.died_at = Some(now_rfc3339());
                (RecoverTo::Dead, env)
            }
        };
        (item.to_vec(), to, env.to_json().into_bytes())
    }
}

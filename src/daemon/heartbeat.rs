//! The heartbeat: keeps `conveyor:node:<node>` alive (host, pid, version,
//! start time, queues, busy slots, events dropped, and per queue its
//! concurrency, busy slots and rate over the last minute) and this node
//! listed in each queue's `{K}:nodes` set. It stops last in a shutdown, so that no peer mistakes a
//! draining node for a dead one and takes its running jobs.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Node;
use super::processor::Processor;
use super::queues::Processors;
use super::writer::Events;
use crate::api::{NodeInfo, QueueLoad};
use crate::broker::{Broker, BrokerError, QueueKeys};

/// Refreshes this node's liveness.
#[derive(Clone)]
pub(crate) struct Heartbeat {
    pub(crate) broker: Broker,
    pub(crate) node: Node,
    pub(crate) processors: Processors,
    pub(crate) events: Events,
    pub(crate) interval: Duration,
    pub(crate) ttl: Duration,
    /// A fetcher inside one Redis call longer than this is stuck.
    pub(crate) stuck_after: Duration,
}

impl Heartbeat {
    /// Beats every `interval` until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            match self.beat().await {
                Ok(()) if failing => {
                    tracing::info!("heartbeat works again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "heartbeat failed; peers will recover this node's jobs if it stays silent for node_ttl");
                    }
                    failing = true;
                }
            }
        }
    }

    /// One beat: the node's key, and the node listed in every queue it runs
    /// (a queue a reload adds is listed by a beat before its first job).
    pub(crate) async fn beat(&self) -> Result<(), BrokerError> {
        let processors = self.processors.snapshot();
        let stuck = stuck_queues(&processors, self.stuck_after);
        if !stuck.is_empty() {
            tracing::error!(queues = %stuck.join(","), "fetcher stuck in a Redis call");
        }
        let keys: Vec<&QueueKeys> = processors.iter().map(|p| p.store().keys()).collect();
        // Per queue, for `conveyor stats`: jobs running, and runs finished
        // in the last minute (summed over nodes it is the queue's rate);
        // for `/api/scale`: the queue's slots here.
        let info = NodeInfo {
            host: self.node.host.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.node.started_at.clone(),
            queues: processors.iter().map(|p| p.name().to_owned()).collect(),
            busy: processors.iter().map(|p| p.busy() as u64).sum(),
            events_dropped: self.events.dropped(),
            load: processors
                .iter()
                .map(|p| {
                    let load = QueueLoad {
                        concurrency: u64::from(p.concurrency()),
                        busy: p.busy() as u64,
                        rate_1m: p.last_minute(),
                    };
                    (p.name().to_owned(), load)
                })
                .collect(),
        };
        let fields = info.to_fields();
        self.broker
            .heartbeat(&self.node.id, &fields, self.ttl, &keys)
            .await
    }
}

/// The queues whose fetcher has been inside one Redis call longer than
/// `after`. Shared by the heartbeat (which logs them) and the systemd
/// watchdog (which stops petting), so both mean the same by "stuck".
pub(crate) fn stuck_queues(processors: &[Arc<Processor>], after: Duration) -> Vec<&str> {
    processors
        .iter()
        .filter(|p| p.fetch_call_age().is_some_and(|age| age > after))
        .map(|p| p.name())
        .collect()
}

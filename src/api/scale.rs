//! What an autoscaler reads of a queue: its demand (jobs waiting, jobs
//! scheduled and already due, jobs in flight on any node) and the slots the
//! live nodes give it. `GET /api/scale?queue=Q` answers it for KEDA's
//! `metrics-api` scaler (docs/kubernetes.md).
//!
//! A list-length scaler sees only the waiting jobs: not the due ones the
//! scheduler is about to move into the list, nor the running ones, so it
//! scales workers away under a long job. Demand counts all three.

use serde::Serialize;

use super::{ApiError, Client, NodeInfo};
use crate::broker::view::Bounds;
use crate::clock::now_ms;

/// One queue's demand and capacity, as `GET /api/scale` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scale {
    /// The queue's name.
    pub queue: String,
    /// Jobs in the queue's list (and, with groups, sorted into a group
    /// that has room).
    pub waiting: u64,
    /// Jobs held back by the queue's `group` limits or `debounce`: not
    /// demand, as more slots would not run them sooner (the limits count
    /// across every node).
    pub held: u64,
    /// Jobs in the scheduled set whose due time has come: the scheduler
    /// moves them to the list within a second.
    pub scheduled_due: u64,
    /// Jobs taken by some node and not finished (running, or recovered
    /// soon from a node that died), over every node's in-flight list.
    pub in_flight: u64,
    /// `waiting + scheduled_due + in_flight`: the slots the queue could
    /// use now. What a `ScaledObject` scales on.
    pub demand: u64,
    /// Slots the live nodes that run the queue give it, summed.
    pub concurrency: u64,
    /// Live nodes that run the queue.
    pub nodes: u64,
    /// `demand / concurrency`; `null` when no live node runs the queue.
    /// Above 1, jobs wait for a slot.
    pub load: Option<f64>,
    /// Whether the queue is paused (its demand is counted all the same).
    pub paused: bool,
}

impl Scale {
    /// The answer from what was read: the queue's counts, and each live
    /// node's heartbeat (a node that does not run the queue adds nothing).
    /// A node of an earlier version writes no concurrency: it counts with
    /// `configured`, the queue's concurrency in this configuration.
    #[allow(clippy::too_many_arguments)] // each a count read, named at the one call
    fn of(
        queue: &str,
        waiting: u64,
        held: u64,
        scheduled_due: u64,
        in_flight: u64,
        paused: bool,
        nodes: &[NodeInfo],
        configured: u32,
    ) -> Self {
        let slots: Vec<u64> = nodes
            .iter()
            .filter(|n| n.queues.iter().any(|q| q == queue))
            .map(|n| match n.load.get(queue).map_or(0, |l| l.concurrency) {
                0 => u64::from(configured),
                said => said,
            })
            .collect();
        let demand = waiting + scheduled_due + in_flight;
        let concurrency: u64 = slots.iter().sum();
        Self {
            queue: queue.to_owned(),
            waiting,
            held,
            scheduled_due,
            in_flight,
            demand,
            concurrency,
            nodes: slots.len() as u64,
            load: (concurrency > 0).then(|| demand as f64 / concurrency as f64),
            paused,
        }
    }
}

impl Client {
    /// `queue`'s demand and the slots live nodes give it, in four round
    /// trips: the counts `conveyor stats` reads (the queue's keys, in its
    /// slot on a cluster), the due scheduled jobs, the in-flight lists, and
    /// the nodes' heartbeat hashes (each its own key).
    pub async fn scale(&self, queue: &str) -> Result<Scale, ApiError> {
        let Some(configured) = self.config().queues.get(queue).map(|q| q.concurrency) else {
            return Err(ApiError::NotFound(format!(
                "no queue {queue:?} in the configuration"
            )));
        };
        let keys = self.keys(queue);
        let counts = self
            .broker
            .queue_counts(
                std::slice::from_ref(&keys),
                &[Bounds::heads()],
                &[self.group_limit(queue)],
            )
            .await?
            .pop()
            .unwrap_or_default();
        let due = self.broker.scheduled_due(&keys, now_ms()).await?;
        let nodes: Vec<NodeInfo> = self
            .broker
            .node_infos(&counts.nodes)
            .await?
            .into_iter()
            .flatten()
            .map(|fields| NodeInfo::from_fields(&fields))
            .collect();
        Ok(Scale::of(
            queue,
            counts.waiting,
            counts.held,
            due,
            counts.in_flight,
            counts.paused,
            &nodes,
            configured,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::QueueLoad;

    fn node(queues: &[&str], concurrency: &[(&str, u64)]) -> NodeInfo {
        let mut info = NodeInfo {
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            ..NodeInfo::default()
        };
        for (q, c) in concurrency {
            let load = QueueLoad {
                concurrency: *c,
                ..QueueLoad::default()
            };
            info.load.insert((*q).to_owned(), load);
        }
        info
    }

    #[test]
    fn the_slots_of_the_nodes_that_run_the_queue_add_up() {
        let nodes = [
            node(&["q", "other"], &[("q", 4), ("other", 50)]),
            node(&["q"], &[("q", 3)]),
            node(&["other"], &[("other", 9)]),
        ];
        let s = Scale::of("q", 10, 0, 2, 7, false, &nodes, 1);
        assert_eq!(s.demand, 19);
        assert_eq!(s.concurrency, 7);
        assert_eq!(s.nodes, 2);
        assert_eq!(s.load, Some(19.0 / 7.0));
    }

    #[test]
    fn a_node_that_does_not_say_its_concurrency_counts_the_configured_one() {
        let nodes = [node(&["q"], &[]), node(&["q"], &[("q", 0)])];
        let s = Scale::of("q", 1, 0, 0, 0, false, &nodes, 5);
        assert_eq!(s.concurrency, 10);
        assert_eq!(s.nodes, 2);
    }

    #[test]
    fn no_node_no_load() {
        let s = Scale::of("q", 3, 0, 1, 0, true, &[], 5);
        assert_eq!(s.demand, 4);
        assert_eq!(s.concurrency, 0);
        assert_eq!(s.load, None);
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["load"], serde_json::Value::Null);
        assert_eq!(json["paused"], true);
    }
}

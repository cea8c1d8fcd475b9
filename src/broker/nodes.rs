//! Node liveness: the heartbeat hash `conveyor:node:<node>` with a TTL, and
//! each queue's `{K}:nodes` set that tells reapers where in-flight lists are.

use std::collections::HashMap;
use std::time::Duration;

use super::{Broker, BrokerError, QueueKeys, keys};

impl Broker {
    /// Refreshes a node's heartbeat: writes `fields`, sets the TTL, and
    /// (re)lists the node in each queue's `{K}:nodes` set, in one round trip.
    /// The daemon beats once before it takes any job, so a node that dies
    /// right after its first pop is still found by reapers.
    pub(crate) async fn heartbeat(
        &self,
        node: &str,
        fields: &[(String, String)],
        ttl: Duration,
        queues: &[&QueueKeys],
    ) -> Result<(), BrokerError> {
        let key = keys::node(node);
        // The key first: a reaper that sees the set entry must see the node alive.
        let mut pipe = redis::pipe();
        pipe.cmd("HSET").arg(&key).arg(fields).ignore();
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl.as_millis() as u64)
            .ignore();
        for q in queues {
            pipe.cmd("SADD").arg(&q.nodes).arg(node).ignore();
        }
        let mut conn = self.conn().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Whether each node's heartbeat key still exists.
    pub(crate) async fn nodes_alive(&self, nodes: &[String]) -> Result<Vec<bool>, BrokerError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.cmd("EXISTS").arg(keys::node(n));
        }
        let mut conn = self.conn().await?;
        let alive: Vec<u8> = pipe.query_async(&mut conn).await?;
        Ok(alive.into_iter().map(|n| n == 1).collect())
    }

    /// Deletes a node's heartbeat key (last step of a clean shutdown).
    pub(crate) async fn remove_node(&self, node: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        redis::cmd("DEL")
            .arg(keys::node(node))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The heartbeat hashes of `nodes`; `None` for a node that is gone.
    pub(crate) async fn node_infos(
        &self,
        nodes: &[String],
    ) -> Result<Vec<Option<HashMap<String, String>>>, BrokerError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.cmd("HGETALL").arg(keys::node(n));
        }
        let mut conn = self.conn().await?;
        let infos: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(infos
            .into_iter()
            .map(|h| (!h.is_empty()).then_some(h))
            .collect())
    }
}

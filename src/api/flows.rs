//! Flows through the library and the command line (DESIGN section 13):
//! submit a document, read a flow, list the recent ones.

use serde::Serialize;

use super::{ApiError, Client};
pub use crate::broker::flows::{FlowSummary, FlowView, NodeView};
use crate::broker::keys;
use crate::clock::now_rfc3339;
use crate::event::{Draft, EventType};
use crate::flow::Spec;

/// Most flows [`Client::flows`] lists.
pub const MAX_FLOWS: u64 = 1_000;

impl Client {
    /// Checks a flow document against this configuration (its queues, its
    /// `[flows] max_nodes`), gives it an id if it has none, and submits
    /// it: a daemon stores it and releases its first nodes. Returns the
    /// flow id. A document that cannot be a flow is refused here
    /// ([`ApiError::Invalid`]) and nothing is submitted.
    pub async fn submit_flow(&self, document: &str) -> Result<String, ApiError> {
        let (named, doc) = {
            let config = self.config();
            let limit = |queue: &str| config.queues.get(queue).map(|q| q.max_payload_bytes);
            crate::flow::read_submitted(document, &limit, config.flows.max_nodes)
                .map_err(|e| ApiError::Invalid(e.0))?
        };
        let fid = doc.id;
        let mut conn = self.broker.conn().await?;
        redis::cmd("RPUSH")
            .arg(keys::FLOWS)
            .arg(&named)
            .query_async::<()>(&mut conn)
            .await
            .map_err(crate::broker::BrokerError::from)?;
        Ok(fid)
    }

    /// Flow `fid` with each node's status, attempt and result.
    pub async fn flow(&self, fid: &str) -> Result<FlowView, ApiError> {
        self.broker.flow_view(fid).await?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "no flow {fid:?}: never stored, or it ended more than [flows] flow_ttl ago"
            ))
        })
    }

    /// The newest `limit` flows (at most [`MAX_FLOWS`]), newest first,
    /// without their nodes; those gone past their lifetime left out.
    pub async fn flows(&self, limit: u64) -> Result<Vec<FlowSummary>, ApiError> {
        let limit = limit.clamp(1, MAX_FLOWS) as isize;
        let ids = self.broker.recent_flows(limit).await?;
        Ok(self.broker.flow_summaries(&ids).await?)
    }
}

/// What [`Client::cancel_flow`] did.
#[derive(Debug, Clone, Serialize)]
pub struct FlowCancelled {
    /// The flow.
    pub flow: String,
    /// Nodes that ended `cancelled` without running (pending, or released
    /// and not yet in their queue), with what needed them.
    pub pending: usize,
    /// Nodes cancelled in their queues (waiting or scheduled).
    pub waiting: usize,
    /// Nodes running (or that ended meanwhile) whose daemons were asked to
    /// stop them.
    pub running: usize,
    /// The flow's status, if the cancel ended it.
    pub finished: Option<String>,
}

impl Client {
    /// Cancels flow `fid`: its nodes not yet in their queues end
    /// `cancelled`, waiting and scheduled ones are cancelled in their
    /// queues, and running ones are asked to stop (section 10). The flow
    /// ends `cancelled` once the last of them ended.
    pub async fn cancel_flow(&self, fid: &str) -> Result<FlowCancelled, ApiError> {
        let now = now_rfc3339();
        let ttl = self.config().flows.flow_ttl;
        let settled = self.broker.cancel_flow(fid, &now, ttl).await?;
        if settled.unknown {
            return Err(ApiError::NotFound(format!("no flow {fid:?} stored")));
        }
        if settled.ended {
            return Err(ApiError::Refused(format!("flow {fid} has ended already")));
        }
        let ends = self.cancel_nodes(fid, &settled.cancel).await?;
        if let Some(status) = &settled.finished {
            let event = Draft::flow(EventType::FlowFinished, fid)
                .status(status.as_str())
                .to_json(&self.actor, &now, 1);
            self.broker.announce(&self.sink, &event).await?;
        }
        Ok(FlowCancelled {
            flow: fid.to_owned(),
            pending: settled.settled.len(),
            waiting: ends.len(),
            running: settled.cancel.len() - ends.len(),
            finished: settled.finished,
        })
    }

    /// Cancels the nodes of a cancelled flow in their queues, as `conveyor
    /// cancel` does: waiting and scheduled ones at once (their ends are
    /// returned, queue and end, for their flow), running ones by asking
    /// their daemon. A node that ended meanwhile is left: its end is on its
    /// way.
    pub(crate) async fn cancel_nodes(
        &self,
        fid: &str,
        nodes: &[(String, String)],
    ) -> Result<Vec<(String, String)>, ApiError> {
        let mut ends = Vec::new();
        for (name, spec) in nodes {
            let Ok(spec) = serde_json::from_str::<Spec>(spec) else {
                tracing::warn!(flow = %fid, node = %name, "flows: a stored node is not readable; not cancelled");
                continue;
            };
            let id = format!("{fid}:{name}");
            match self.cancel_with(&spec.queue, &id, None).await {
                Ok((_, Some(end))) => ends.push((spec.queue, end)),
                Ok((_, None)) | Err(ApiError::NotFound(_)) => {}
                Err(ApiError::Broker(e)) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(flow = %fid, node = %name, error = %e, "flows: a node of a cancelled flow could not be cancelled; it runs to its end");
                }
            }
        }
        Ok(ends)
    }
}

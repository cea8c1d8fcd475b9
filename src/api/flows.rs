//! Flows through the library and the command line (DESIGN section 13):
//! submit a document, read a flow, list the recent ones.

use super::{ApiError, Client};
pub use crate::broker::flows::{FlowView, NodeView};
use crate::broker::keys;

/// Most flows [`Client::flows`] lists.
pub const MAX_FLOWS: u64 = 1_000;

impl Client {
    /// Checks a flow document against this configuration (its queues, its
    /// `[flows] max_nodes`), gives it an id if it has none, and submits
    /// it: a daemon stores it and releases its first nodes. Returns the
    /// flow id. A document that cannot be a flow is refused here
    /// ([`ApiError::Invalid`]) and nothing is submitted.
    pub async fn submit_flow(&self, document: &str) -> Result<String, ApiError> {
        let (named, fid) = crate::flow::with_id(document).map_err(|e| ApiError::Invalid(e.0))?;
        {
            let config = self.config();
            let known = |queue: &str| config.queues.contains_key(queue);
            crate::flow::read(&named, &known, config.flows.max_nodes)
                .map_err(|e| ApiError::Invalid(e.0))?;
        }
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

    /// The newest `limit` flows (at most [`MAX_FLOWS`]), newest first; those
    /// gone past their lifetime left out.
    pub async fn flows(&self, limit: u64) -> Result<Vec<FlowView>, ApiError> {
        let limit = limit.clamp(1, MAX_FLOWS) as isize;
        let ids = self.broker.recent_flows(limit).await?;
        let mut out = Vec::with_capacity(ids.len());
        for fid in ids {
            if let Some(view) = self.broker.flow_view(&fid).await? {
                out.push(view);
            }
        }
        Ok(out)
    }
}

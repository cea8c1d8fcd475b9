//! A queue's groups (DESIGN section 14): `conveyor groups Q`,
//! `GET /api/groups?queue=Q` and [`Client::groups`].

use super::{ApiError, Client};
use crate::broker::admin::Groups;

/// The most groups one listing shows.
pub const MAX_GROUPS: u64 = 10_000;

/// A queue's groups, busiest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupList {
    /// The queue's name.
    pub queue: String,
    /// The payload field that names a job's group; `None` when the queue
    /// has no `group` (its jobs wait in one line).
    pub key: Option<String>,
    /// The most jobs of one group in flight at once, if limited.
    pub limit: Option<u32>,
    /// The totals and the busiest groups.
    #[serde(flatten)]
    pub groups: Groups,
}

impl Client {
    /// The `limit` (1 to [`MAX_GROUPS`]) busiest groups of `queue` (most
    /// jobs held, then most running), with the totals of all.
    pub async fn groups(&self, queue: &str, limit: u64) -> Result<GroupList, ApiError> {
        let Some(group) = self.config().queues.get(queue).map(|q| q.group.clone()) else {
            return Err(ApiError::NotFound(format!(
                "no queue {queue:?} in the configuration"
            )));
        };
        if !(1..=MAX_GROUPS).contains(&limit) {
            return Err(ApiError::Invalid(format!(
                "limit {limit}: from 1 to {MAX_GROUPS}"
            )));
        }
        let groups = self
            .broker
            .groups(&self.keys(queue), limit as usize, self.group_limit(queue))
            .await?;
        Ok(GroupList {
            queue: queue.to_owned(),
            limit: group.as_ref().and_then(|g| g.limit),
            key: group.map(|g| g.key),
            groups,
        })
    }
}

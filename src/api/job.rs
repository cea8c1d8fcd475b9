//! One job, wherever it is: `conveyor status ID`, `GET /api/jobs/<id>`
//! and the dashboard's `/jobs/<id>`. Its place is looked up in its queue's
//! lists (waiting, scheduled, in flight on each node, dead), its status
//! record read if its queue tracks jobs, and its events found in the
//! newest entries of the replay stream.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ApiError, Client};
use crate::broker::QueueKeys;
use crate::broker::view::{Store, Viewed};
use crate::job::JobState;

/// Replay stream entries looked through for a job's events, newest first
/// (an entry holds the events of one write: often many).
const EVENT_ENTRIES: usize = 5_000;

/// Entries read per round trip.
const EVENT_PAGE: usize = 500;

/// What is known of one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Its id.
    pub id: String,
    /// Its queue, if it was found or its record names it.
    pub queue: Option<String>,
    /// Where it is now: `waiting`, `scheduled`, `running` or `dead` (found
    /// there), or its record's state when it is in no list (`succeeded`);
    /// `unknown` when neither tells.
    pub state: String,
    /// The node running it, when it runs.
    pub node: Option<String>,
    /// The item as it is stored (its envelope, or the raw payload), parsed;
    /// `None` when it is in no list or too large to read whole.
    pub envelope: Option<serde_json::Value>,
    /// The stored item's size in bytes, when it was found.
    pub size: Option<u64>,
    /// Its status record, field by field (`track = true`).
    pub record: BTreeMap<String, String>,
    /// Its events still in the replay stream, oldest first.
    pub events: Vec<serde_json::Value>,
}

impl JobView {
    /// Whether anything at all is known of the job.
    pub fn is_known(&self) -> bool {
        self.queue.is_some() || !self.record.is_empty() || !self.events.is_empty()
    }
}

impl Client {
    /// What is known of job `id`: see [`JobView`]. Its queue is the one its
    /// record names, or else the first configured queue that holds it.
    pub async fn job(&self, id: &str) -> Result<JobView, ApiError> {
        let record: BTreeMap<String, String> =
            self.broker.job_status(id).await?.into_iter().collect();
        let config = self.config();
        let queues: Vec<String> = match record.get("queue") {
            Some(q) if config.queues.contains_key(q) => vec![q.clone()],
            _ => config.queues.keys().cloned().collect(),
        };
        let mut view = JobView {
            id: id.to_owned(),
            queue: None,
            state: record
                .get("state")
                .cloned()
                .unwrap_or_else(|| "unknown".to_owned()),
            node: None,
            envelope: None,
            size: None,
            record,
            // The events are a help, not the answer: a user whose ACL
            // lacks XREVRANGE still sees where the job is.
            events: self.job_events(id).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not read the job's events from the replay stream");
                Vec::new()
            }),
        };
        for queue in queues {
            if let Some((state, node, item)) = self.locate(&self.keys(&queue), id).await? {
                view.state = state.as_str().to_owned();
                view.node = node;
                view.size = Some(item.size);
                view.envelope = item
                    .is_whole()
                    .then(|| serde_json::from_slice(&item.bytes).ok())
                    .flatten();
                view.queue = Some(queue);
                return Ok(view);
            }
        }
        view.queue = view.record.get("queue").cloned();
        if view.state == JobState::Running.as_str() {
            // Its record says running, yet no node holds it: it ended
            // between the two reads, or its node died and is not reaped.
            view.state = "unknown".to_owned();
        }
        Ok(view)
    }

    /// The job's place in `q` and its item, read whole within the queue's
    /// bounds: waiting (or held in its group), scheduled, running on a
    /// node, or dead.
    async fn locate(
        &self,
        q: &QueueKeys,
        id: &str,
    ) -> Result<Option<(JobState, Option<String>, Viewed)>, ApiError> {
        let mut places = vec![
            (q.list.clone(), Store::List, JobState::Waiting, None),
            (q.scheduled.clone(), Store::Zset, JobState::Scheduled, None),
        ];
        for node in self.broker.queue_nodes(q).await? {
            places.push((
                q.inflight_of(&node),
                Store::List,
                JobState::Running,
                Some(node),
            ));
        }
        // Held in its group's list, for its turn: after the in-flight lists,
        // as an ordered group's running job is also at the head of its list.
        for group in self.broker.group_names(q).await? {
            places.push((q.group(&group), Store::List, JobState::Waiting, None));
        }
        places.push((q.dead.clone(), Store::List, JobState::Dead, None));
        for (key, store, state, node) in places {
            let Some(seen) = self.broker.search(&key, store, id).await? else {
                continue;
            };
            let bounds = self.bounds(&q.name);
            // Gone between the two reads: it moved on; look further.
            if let Some(item) = self.broker.reread(&key, store, &seen, bounds).await? {
                return Ok(Some((state, node, item)));
            }
        }
        Ok(None)
    }

    /// The job's events in the newest [`EVENT_ENTRIES`] entries of the
    /// replay stream, oldest first; none when replay is off.
    async fn job_events(&self, id: &str) -> Result<Vec<serde_json::Value>, ApiError> {
        let Some((stream, _)) = &self.sink.stream else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        let mut before: Option<String> = None;
        let mut read = 0;
        while read < EVENT_ENTRIES {
            let entries = self
                .broker
                .stream_before(stream, before.as_deref(), EVENT_PAGE)
                .await?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            before = Some(last.clone());
            read += entries.len();
            // Newest first here: each entry's events are reversed, and the
            // whole turned around at the end.
            for (_, events) in entries {
                for line in events.into_iter().rev() {
                    if !line.contains(id) {
                        continue;
                    }
                    if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                        if event.get("id").and_then(|v| v.as_str()) == Some(id) {
                            found.push(event);
                        }
                    }
                }
            }
        }
        found.reverse();
        Ok(found)
    }
}

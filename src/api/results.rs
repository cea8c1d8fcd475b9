//! A queue's recent results: its tracked jobs that succeeded or died,
//! newest first, each with its result or its last error, read from the
//! queue's results list and the jobs' status records. `conveyor results`,
//! `GET /api/results` and the dashboard's results page show the same.

use serde::Serialize;

use super::{ApiError, Client};
use crate::broker::results::Record;
use crate::job::JobState;

/// Most jobs one read returns: the results list keeps no more.
pub const MAX_RESULTS: u64 = crate::broker::results::CAP as u64;

/// What `conveyor results --json` prints and `GET /api/results` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The queue's name.
    pub queue: String,
    /// Whether the queue sets `track = true`; without it nothing is listed.
    pub tracked: bool,
    /// Only dead jobs were asked for.
    pub failed_only: bool,
    /// The jobs, newest first.
    pub jobs: Vec<Ended>,
    /// Jobs of the list whose status record had expired (`track_ttl`):
    /// read, and not shown.
    pub expired: u64,
}

/// A tracked job that ended.
#[derive(Debug, Clone, Serialize)]
pub struct Ended {
    /// Its id.
    pub id: String,
    /// `succeeded` or `dead`.
    pub state: String,
    /// The attempt it ended on (0 for a job that never ran: malformed).
    pub attempt: u64,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// What its handler returned, as the JSON it is (a text that is not
    /// JSON as a string).
    pub result: Option<serde_json::Value>,
    /// Why it died.
    pub last_error: Option<String>,
    /// The node that ran it last.
    pub node: Option<String>,
}

impl Ended {
    fn of(id: String, mut record: Record) -> Self {
        let state = record.remove("state").unwrap_or_default();
        let result = record
            .remove("result")
            .map(|r| serde_json::from_str(&r).unwrap_or(serde_json::Value::String(r)));
        Self {
            id,
            state,
            attempt: record
                .get("attempt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            finished_at: record.remove("finished_at"),
            result,
            last_error: record.remove("last_error"),
            node: record.remove("node"),
        }
    }
}

impl Client {
    /// The newest `limit` (1 to [`MAX_RESULTS`]) tracked jobs of `queue`
    /// that succeeded or died, or only the dead ones (`failed_only`). A job
    /// whose record no longer tells an end (retried from the dead letter
    /// list, running again) is left out until it ends again.
    pub async fn results(
        &self,
        queue: &str,
        failed_only: bool,
        limit: u64,
    ) -> Result<Results, ApiError> {
        let Some(tracked) = self.config().queues.get(queue).map(|q| q.track) else {
            return Err(ApiError::NotFound(format!(
                "no queue {queue:?} in the configuration"
            )));
        };
        if !(1..=MAX_RESULTS).contains(&limit) {
            return Err(ApiError::Invalid(format!(
                "limit {limit}: from 1 to {MAX_RESULTS} (the results list keeps no more)"
            )));
        }
        let keep = |r: &Record| match r.get("state").and_then(|s| JobState::named(s)) {
            Some(JobState::Dead) => true,
            Some(JobState::Succeeded) => !failed_only,
            _ => false,
        };
        let listed = self
            .broker
            .results(&self.keys(queue), limit as usize, keep)
            .await?;
        Ok(Results {
            queue: queue.to_owned(),
            tracked,
            failed_only,
            jobs: listed
                .jobs
                .into_iter()
                .map(|(id, r)| Ended::of(id, r))
                .collect(),
            expired: listed.expired,
        })
    }
}

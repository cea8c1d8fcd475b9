//! A queue's history, or all queues' (DESIGN section 10.1): per minute for
//! the last hour or day, per day for the last 30, how many jobs succeeded,
//! failed (retried or dead) and died, and the p50 and p95 of their waiting
//! and run times. `GET /api/history` answers it; the dashboard draws it.
//!
//! The daemons count each outcome in the step that records it
//! (`broker/history.rs`), so the figures hold across daemons and crashes;
//! percentiles are exact to within a histogram bucket, and all queues'
//! come from their histograms added up.

use serde::Serialize;

use super::{ApiError, Client};
pub use crate::broker::history::Range;
use crate::broker::history::Row;
use crate::clock::{now_ms, rfc3339_ms};

/// What `GET /api/history` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// The queue; `None` for all queues.
    pub queue: Option<String>,
    /// `1h`, `24h` or `30d`.
    pub range: Range,
    /// The length of one interval: 60 or 86,400 seconds.
    pub step_seconds: u64,
    /// The intervals, oldest first, the last one still counting.
    pub points: Vec<Point>,
}

/// One interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// When it starts (RFC 3339, UTC).
    pub at: String,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs that failed: retried, or dead.
    pub failed: u64,
    /// Jobs that died: failed for good, cancelled while running, malformed
    /// or out of attempts.
    pub dead: u64,
    /// Waiting time (push to the start of the first run) of the jobs
    /// counted here, p50, in ms; `None` when none had one.
    pub wait_p50_ms: Option<f64>,
    /// Waiting time, p95, in ms.
    pub wait_p95_ms: Option<f64>,
    /// Run time of the runs counted here, p50, in ms; `None` without runs.
    pub run_p50_ms: Option<f64>,
    /// Run time, p95, in ms.
    pub run_p95_ms: Option<f64>,
}

impl Point {
    fn of(at_ms: i64, row: &Row) -> Self {
        Self {
            at: rfc3339_ms(at_ms),
            succeeded: row.succeeded(),
            failed: row.failed(),
            dead: row.dead(),
            wait_p50_ms: row.wait_ms(0.5),
            wait_p95_ms: row.wait_ms(0.95),
            run_p50_ms: row.run_ms(0.5),
            run_p95_ms: row.run_ms(0.95),
        }
    }
}

impl Client {
    /// The history of `queue` (all configured queues when `None`) over
    /// `range`, in one round trip.
    pub async fn history(&self, queue: Option<&str>, range: Range) -> Result<History, ApiError> {
        let names: Vec<String> = match queue {
            Some(q) if self.is_configured(q) => vec![q.to_owned()],
            Some(q) => {
                return Err(ApiError::NotFound(format!(
                    "no queue {q:?} in the configuration"
                )));
            }
            None => self.config().queues.keys().cloned().collect(),
        };
        let keys: Vec<_> = names.iter().map(|n| self.keys(n)).collect();
        let now = now_ms();
        let rows = self.broker.history(&keys, range, now).await?;
        let first = range.first_ms(now);
        let step = range.step_ms();
        Ok(History {
            queue: queue.map(str::to_owned),
            range,
            step_seconds: (step / 1000) as u64,
            points: rows
                .iter()
                .enumerate()
                .map(|(i, row)| Point::of(first + i as i64 * step, row))
                .collect(),
        })
    }

    /// Each configured queue's jobs that succeeded and failed since it
    /// began (its stats counters), in one round trip: what the dashboard's
    /// live chart samples every second.
    pub(crate) async fn outcome_counters(&self) -> Result<Vec<(String, u64, u64)>, ApiError> {
        let names: Vec<String> = self.config().queues.keys().cloned().collect();
        let keys: Vec<_> = names.iter().map(|n| self.keys(n)).collect();
        let counts = self.broker.outcome_counters(&keys).await?;
        Ok(names
            .into_iter()
            .zip(counts)
            .map(|(name, (processed, failed))| (name, processed.saturating_sub(failed), failed))
            .collect())
    }

    /// The p95 of `queue`'s waiting time over the last `minutes` minutes
    /// (the one under way included), in ms; `None` if no job started.
    pub async fn recent_wait_p95(
        &self,
        queue: &str,
        minutes: usize,
    ) -> Result<Option<f64>, ApiError> {
        let rows = self
            .broker
            .history(&[self.keys(queue)], Range::Hour, now_ms())
            .await?;
        let mut recent = Row::default();
        for row in rows.iter().rev().take(minutes) {
            recent.add(row);
        }
        Ok(recent.wait_ms(0.95))
    }
}

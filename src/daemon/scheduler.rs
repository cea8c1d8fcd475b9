//! The scheduler: moves delayed jobs and retries that are due from
//! `{K}:scheduled` to the tail of their queue, in bounded batches.
//!
//! It sleeps until the earliest due time it knows of, at most a second (a
//! producer or another node may schedule something sooner), and is woken
//! early when this node schedules a job itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::queues::Processors;
use super::retry::Retry;
use crate::clock::now_ms;

/// Most jobs promoted per queue in one script call.
const BATCH: usize = 500;
/// Longest sleep between looks.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Promotes due jobs of every queue of this node.
pub(crate) struct Scheduler {
    /// The queues of this node (a reload changes them).
    pub(crate) processors: Processors,
    pub(crate) wake: Arc<Notify>,
}

impl Scheduler {
    /// Runs until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut retry = Retry::new("promoting scheduled jobs");
        while !stop.is_cancelled() {
            let mut next_due: Option<i64> = None;
            let mut more = false;
            let mut failure = None;
            for processor in self.processors.snapshot() {
                let store = processor.store();
                match store.promote(now_ms(), BATCH).await {
                    Ok((moved, next)) => {
                        if moved > 0 {
                            tracing::debug!(queue = %store.keys().name, moved, "promoted due jobs");
                        }
                        more |= moved as usize == BATCH;
                        next_due = match (next_due, next) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                if !retry.wait(&e, &stop).await {
                    break;
                }
                continue;
            }
            retry.succeeded();
            if more {
                continue;
            }
            let sleep = next_due
                .map(|due| Duration::from_millis((due - now_ms()).clamp(1, 1000) as u64))
                .unwrap_or(MAX_SLEEP);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

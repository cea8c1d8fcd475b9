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
use crate::clock::Clock;

/// Most jobs promoted per queue in one script call.
const BATCH: usize = 500;
/// Longest sleep between looks.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Promotes due jobs of every queue of this node.
pub(crate) struct Scheduler {
    /// The queues of this node (a reload changes them).
    pub(crate) processors: Processors,
    pub(crate) wake: Arc<Notify>,
    /// What is due, and how long to sleep, go by it.
    pub(crate) clock: Clock,
}

impl Scheduler {
    /// Runs until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut retry = Retry::new("promoting scheduled jobs", &self.clock);
        while !stop.is_cancelled() {
            let mut next_due: Option<i64> = None;
            let mut more = false;
            let mut failure = None;
            for processor in self.processors.snapshot() {
                let store = processor.store();
                match store.promote(self.clock.now_ms(), BATCH).await {
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
                .map(|due| Duration::from_millis((due - self.clock.now_ms()).clamp(1, 1000) as u64))
                .unwrap_or(MAX_SLEEP);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.clock.sleep(sleep) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands as _;

    use super::*;
    use crate::broker::fixture::TestRedis;
    use crate::daemon::testing;

    #[tokio::test]
    async fn a_delayed_job_is_promoted_when_the_clock_reaches_its_due_time_and_not_before() {
        let redis = TestRedis::start();
        let mut conn = redis.conn().await;
        let clock = Clock::manual_from_now();
        let config = testing::config(&redis, "mail");
        let processor = testing::processor(&config, "mail", "node-1", &clock);
        let keys = processor.store().keys().clone();
        let due = clock.now_ms() + 60_000;
        let _: () = conn
            .zadd(&keys.scheduled, testing::job("j1"), due)
            .await
            .expect("ZADD");
        let stop = CancellationToken::new();
        let scheduler = Scheduler {
            processors: Processors::of(vec![processor]),
            wake: Arc::default(),
            clock: clock.clone(),
        };
        let task = tokio::spawn(scheduler.run(stop.clone()));

        // Each look ends in a sleep: after one, the look is done.
        clock.asleep(1).await;
        clock.advance(Duration::from_millis(59_999));
        clock.asleep(2).await;
        let waiting: usize = conn.llen(&keys.list).await.expect("LLEN");
        assert_eq!(waiting, 0, "promoted a millisecond early");

        clock.advance(Duration::from_millis(1));
        clock.asleep(3).await;
        let waiting: usize = conn.llen(&keys.list).await.expect("LLEN");
        let scheduled: usize = conn.zcard(&keys.scheduled).await.expect("ZCARD");
        assert_eq!((waiting, scheduled), (1, 0), "not promoted when due");

        stop.cancel();
        task.await.expect("the scheduler stops");
    }
}

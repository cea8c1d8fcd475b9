//! The shutdown, staged in this one place: [`Running::stop`] is the order,
//! each step with the reason for its place. The controls it trips, one per
//! stage, and the time each stage is given are in `stages.rs`; a component
//! owns the control of its stage (it runs as `run(self, stop)`) and knows
//! nothing of the order.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::notify;
use super::running::Running;
use super::stages::{FINAL_GRACE, HANDLER_GRACE};
use crate::duration::human;
use crate::event::{Draft, EventType};
use crate::shutdown::Shutdown;

/// How long a stop may outlast `shutdown_timeout`: `FINAL_GRACE` for
/// requeueing, then removing the heartbeat, with room to spare. systemd is
/// told (`EXTEND_TIMEOUT_USEC`), so that a `TimeoutStopSec` left below
/// `shutdown_timeout` + this does not SIGKILL a drain halfway.
const STOP_SLACK: Duration = Duration::from_secs(20);

impl Running {
    /// Stops the node, in the only order that loses nothing: each step says
    /// why it comes where it does.
    pub(super) async fn stop(mut self, shutdown: &Shutdown) {
        let stopping_since = Instant::now();
        let timeout = self.config.daemon.shutdown_timeout;
        self.announce_stopping();
        // 1. Stop taking jobs, so the set of jobs to drain only shrinks.
        self.stops.fetching.cancel();
        // 2. Drain: running jobs get `shutdown_timeout` (a second SIGINT cuts it
        //    short). The heartbeat keeps beating meanwhile, so no peer declares
        //    this node dead and hands its running jobs to someone else.
        let cut_short = tokio::select! {
            _ = self.queues.join() => None,
            _ = tokio::time::sleep(timeout) => Some(format!("the shutdown timeout ({}) is over", human(timeout))),
            _ = shutdown.hurry.cancelled() => Some("second SIGINT".to_owned()),
        };
        // 3. Requeue stragglers at the head of their queue: they were
        //    interrupted, not failed, and run first on the next node.
        if let Some(why) = cut_short {
            tracing::warn!(
                jobs = self.queues.busy(),
                "{why}: requeueing the jobs still running at the head of their queues"
            );
            self.stops.abandon.cancel();
        }
        let give_up_timer = give_up_after(FINAL_GRACE, self.stops.give_up.clone());
        self.queues.join().await;
        // 4. Sweep: anything still in this node's in-flight lists (a job popped
        //    just as fetching stopped, an outcome Redis would not take) goes back
        //    to the head of its queue too. After this nothing is held here.
        self.queues.sweep().await;
        give_up_timer.abort();
        // 5. Handlers let go of what they hold (worker processes finish and
        //    exit): no job runs any more. They get what is left of
        //    `shutdown_timeout`, and at least a moment to exit on their own.
        let left = timeout
            .saturating_sub(stopping_since.elapsed())
            .max(HANDLER_GRACE);
        self.queues.shut_handlers(left).await;
        //    The last jobs' spans go to the collector now that no job runs
        //    (bounded by the export timeout: a collector away costs nothing).
        if let Some(traces) = &self.traces {
            traces.stop().await;
        }
        // 6. Background components: nothing left for them to do on this node.
        self.stops.background.cancel();
        join_all(&mut self.background).await;
        self.periodic.stop().await;
        // 7. Heartbeat: once the node key is gone, peers may reap this node, and
        //    there is nothing left to reap. The systemd watchdog stops with it,
        //    so that the whole drain is watched.
        self.stops.heartbeat.cancel();
        joined("heartbeat task", self.heartbeat_task).await;
        joined("watchdog task", self.watchdog_task).await;
        if let Err(e) = self.broker.remove_node(&self.node.id).await {
            tracing::warn!(error = %e, "could not remove the node's heartbeat key; it expires by itself");
        }
        self.queues.unlist().await;
        // 8. Events last, so that node.stopped follows every job event.
        self.events.emit(Draft::node(EventType::NodeStopped));
        self.stops.writer.cancel();
        joined("writer", self.writer_task).await;
        // 9. The web server: /healthz answered until the very end.
        self.web.stop().await;
        tracing::info!(node = %self.node.id, "stopped");
    }

    /// Says that the node stops: to peers (`node.stopping`), to the log, and
    /// to systemd, with how long the stop may take.
    fn announce_stopping(&self) {
        let busy = self.queues.busy();
        let timeout = self.config.daemon.shutdown_timeout;
        self.events.emit(Draft::node(EventType::NodeStopping));
        tracing::info!(
            running = busy,
            timeout = %human(timeout),
            "shutting down: taking no new jobs, letting running jobs finish"
        );
        notify::stopping(
            &format!("stopping: letting the running jobs ({busy}) finish"),
            timeout + STOP_SLACK,
        );
    }
}

/// Trips `give_up` after `grace`, unless aborted first.
fn give_up_after(grace: Duration, give_up: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        give_up.cancel();
    })
}

/// Waits for a task; logs it if it failed (panicked).
async fn joined(what: &str, task: tokio::task::JoinHandle<()>) {
    if let Err(e) = task.await {
        tracing::error!(error = %e, "{what} failed");
    }
}

async fn join_all<T: 'static>(set: &mut JoinSet<T>) {
    while let Some(ended) = set.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "a daemon task failed");
        }
    }
}

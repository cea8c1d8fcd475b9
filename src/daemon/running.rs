//! The node at work, from the moment it runs until a shutdown begins:
//! quiet (SIGTSTP) stops the fetching, reload (SIGHUP) applies the
//! configuration again. The shutdown itself is [`Running::stop`].

use tokio::task::{JoinHandle, JoinSet};

use super::heartbeat::Heartbeat;
use super::queues::Queues;
use super::reload::{self, Periodics};
use super::stages::Stops;
use super::wiring::Web;
use super::writer::Events;
use super::{Node, Reloader};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::Config;
use crate::handlers::Registry;
use crate::shutdown::Shutdown;

/// A started node: its parts, and the tasks of its components.
pub(super) struct Running {
    pub(super) node: Node,
    /// As started, then as the last reload left it (`[daemon]` never changes).
    pub(super) config: Config,
    pub(super) broker: Broker,
    pub(super) clock: Clock,
    pub(super) queues: Queues,
    pub(super) events: Events,
    /// For registering the node in the queues a reload adds.
    pub(super) heartbeat: Heartbeat,
    /// The schedules, which a reload restarts.
    pub(super) periodic: Periodics,
    pub(super) web: Web,
    pub(super) stops: Stops,
    /// The scheduler, the reaper and the pause watch.
    pub(super) background: JoinSet<()>,
    pub(super) heartbeat_task: JoinHandle<()>,
    pub(super) watchdog_task: JoinHandle<()>,
    pub(super) writer_task: JoinHandle<()>,
    /// The tracer, flushed once no job runs.
    pub(super) traces: Option<std::sync::Arc<crate::traces::Traces>>,
}

impl Running {
    /// Runs until `shutdown.terminate`, answering quiet and reload.
    pub(super) async fn serve(
        &mut self,
        registry: &Registry,
        shutdown: &Shutdown,
        reloader: Option<&Reloader>,
    ) {
        let mut quieted = false;
        loop {
            tokio::select! {
                _ = shutdown.terminate.cancelled() => return,
                _ = shutdown.quiet.cancelled(), if !quieted => {
                    quieted = true;
                    self.stops.fetching.cancel();
                    if !shutdown.terminate.is_cancelled() {
                        tracing::info!("quiet: no new jobs will be taken; running jobs finish");
                    }
                }
                _ = shutdown.reload.notified() => self.reload(registry, shutdown, reloader).await,
            }
        }
    }

    async fn reload(
        &mut self,
        registry: &Registry,
        shutdown: &Shutdown,
        reloader: Option<&Reloader>,
    ) {
        let context = reload::Context {
            registry,
            broker: &self.broker,
            heartbeat: &self.heartbeat,
            events: &self.events,
            stop_background: &self.stops.background,
            terminate: &shutdown.terminate,
            clock: &self.clock,
        };
        reload::reload(
            &mut self.config,
            reloader,
            &mut self.queues,
            &mut self.periodic,
            &context,
        )
        .await;
        // The dashboard shows the queues and schedules now run.
        self.web.show(&self.config);
    }
}

//! Start-up, in order: wait for Redis, start the writer, list the node in
//! every queue, announce it, return the jobs of nodes that died, then take
//! jobs and start the background components. A shutdown that comes before
//! the node is listed ends the start there, with nothing taken.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::flows::Driver;
use super::heartbeat::Heartbeat;
use super::queues::Queues;
use super::reaper::Reaper;
use super::reload::{self, Periodics};
use super::retry::Retry;
use super::running::Running;
use super::scheduler::Scheduler;
use super::stages::FINAL_GRACE;
use super::watchdog::Watchdog;
use super::wiring::Wiring;
use super::{DaemonError, notify, pause, stuck_fetch_threshold};
use crate::broker::{Broker, BrokerError, eviction_risk};
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::event::{Draft, EventType};
use crate::shutdown::Shutdown;

impl Wiring {
    /// Starts the node. `None` if a shutdown began before the node was
    /// listed in its queues (the reason is logged and told to systemd).
    /// Waits for Redis as long as it takes; fails only for a Redis URL that
    /// cannot work.
    pub(super) async fn start(self, shutdown: &Shutdown) -> Result<Option<Running>, DaemonError> {
        if !connect(&self.broker, &shutdown.terminate, &self.clock).await? {
            return Ok(None);
        }
        let heartbeat = self.heartbeat();
        let reaper = self.reaper();
        let Self {
            node,
            config,
            broker,
            clock,
            mut queues,
            writer,
            events,
            wake_scheduler,
            web,
            stops,
            traces,
            flow_ends,
        } = self;
        let writer_task = tokio::spawn(writer.run(stops.writer.clone(), stops.give_up.clone()));
        // Listed as alive in every queue before the first job is taken.
        if !reload::register(&heartbeat, &shutdown.terminate, &clock).await {
            notify::stopping("stopped before the node was registered", FINAL_GRACE);
            return Ok(None);
        }
        // Announced before anything it does: recoveries, then jobs.
        events.emit(Draft::node(EventType::NodeStarted));
        // Jobs of nodes that died before this one started run first.
        if let Err(e) = reaper.sweep().await {
            tracing::warn!(error = %e, "reaper: first look for dead nodes failed; will look again");
        }
        // A queue paused before the start is not taken from at all.
        if let Err(e) = pause::look(&broker, &queues.processors()).await {
            tracing::warn!(error = %e, "could not read which queues are paused; will look again");
        }
        queues.launch();
        let mut background = spawn_background(
            &queues,
            &broker,
            wake_scheduler,
            reaper,
            &clock,
            &stops.background,
        );
        background.spawn(
            Driver {
                broker: broker.clone(),
                client: crate::api::Client::with_broker(broker.clone(), &config, &node.id),
                events: events.clone(),
                queues: Driver::queues_of(&config, &node.id),
                limits: config
                    .queues
                    .iter()
                    .map(|(name, q)| (name.clone(), q.max_payload_bytes))
                    .collect(),
                ttl: config.flows.flow_ttl,
                max_nodes: config.flows.max_nodes,
                ends: flow_ends,
            }
            .run(stops.background.clone()),
        );
        let periodic = Periodics::start(&config, &queues, &events, &stops.background, &clock);
        let watchdog = Watchdog {
            processors: queues.processors(),
            stuck_after: stuck_fetch_threshold(&config),
            timeout: notify::watchdog_timeout(),
            shutdown: shutdown.clone(),
        };
        let heartbeat_task = tokio::spawn(heartbeat.clone().run(stops.heartbeat.clone()));
        tracing::info!(node = %node.id, "running");
        notify::ready("running");
        let watchdog_task = tokio::spawn(watchdog.run(stops.heartbeat.clone()));
        Ok(Some(Running {
            node,
            config,
            broker,
            clock,
            queues,
            events,
            heartbeat,
            periodic,
            web,
            stops,
            background,
            heartbeat_task,
            watchdog_task,
            writer_task,
            traces,
        }))
    }

    /// Keeps the node alive and listed in every queue it runs.
    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            broker: self.broker.clone(),
            node: self.node.clone(),
            processors: self.queues.processors(),
            events: self.events.clone(),
            interval: self.config.daemon.heartbeat_interval,
            ttl: self.config.daemon.node_ttl,
            stuck_after: stuck_fetch_threshold(&self.config),
        }
    }

    /// Returns the jobs of dead nodes; looks as often as the heartbeat beats.
    fn reaper(&self) -> Reaper {
        Reaper {
            broker: self.broker.clone(),
            processors: self.queues.processors(),
            node: self.node.id.clone(),
            max_deliveries: self.config.daemon.max_deliveries,
            interval: self.config.daemon.heartbeat_interval,
            clock: self.clock.clone(),
        }
    }
}

/// Starts the scheduler, the reaper and the pause watch, which `stop`
/// stops.
fn spawn_background(
    queues: &Queues,
    broker: &Broker,
    wake_scheduler: Arc<Notify>,
    reaper: Reaper,
    clock: &Clock,
    stop: &CancellationToken,
) -> JoinSet<()> {
    let mut background = JoinSet::new();
    let watch = pause::Watch {
        broker: broker.clone(),
        processors: queues.processors(),
    };
    background.spawn(watch.run(stop.clone()));
    let scheduler = Scheduler {
        processors: queues.processors(),
        wake: wake_scheduler,
        clock: clock.clone(),
    };
    background.spawn(scheduler.run(stop.clone()));
    background.spawn(reaper.run(stop.clone()));
    background
}

/// Waits for Redis; false if `cancel` fired first (logged and told to
/// systemd). An error only for a URL that cannot work.
async fn connect(
    broker: &Broker,
    cancel: &CancellationToken,
    clock: &Clock,
) -> Result<bool, DaemonError> {
    if !wait_for_redis(broker, cancel, clock).await {
        tracing::info!("stopped before Redis was reachable");
        notify::stopping("stopped before Redis was reachable", FINAL_GRACE);
        return Ok(false);
    }
    match broker.standalone().await {
        Err(e @ BrokerError::BadUrl { .. }) => Err(ConfigError::Invalid(e.to_string()).into()),
        // Anything else is Redis being briefly unwell: the workers' retries handle it.
        Err(e) => {
            tracing::debug!(error = %e, "the server's mode could not be read");
            Ok(true)
        }
        Ok(()) => Ok(true),
    }
}

/// Pings until Redis answers. False if `cancel` fired first.
async fn wait_for_redis(broker: &Broker, cancel: &CancellationToken, clock: &Clock) -> bool {
    let mut retry = Retry::new("connecting to Redis", clock);
    loop {
        match broker.ping().await {
            Ok(()) => {
                retry.succeeded();
                if let Some(risk) = broker
                    .maxmemory_policy()
                    .await
                    .as_deref()
                    .and_then(eviction_risk)
                {
                    tracing::warn!("{risk}");
                }
                return true;
            }
            Err(e) => {
                // A refusal is logged by the retry, as what it is.
                if retry.failures() == 0 && !e.is_denied() {
                    tracing::warn!(error = %e, "Redis is not reachable yet; waiting for it");
                    notify::status(&format!("waiting for Redis: {e}"));
                }
                if !retry.wait(&e, cancel).await {
                    return false;
                }
            }
        }
    }
}

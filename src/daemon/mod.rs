//! The daemon: a supervisor that starts one processor per queue and the
//! background components (scheduler, reaper, heartbeat, writer,
//! systemd watchdog), and stages the shutdown in one place ([`run_as`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::events::EventSink;
use crate::broker::{Broker, BrokerError, eviction_risk};
use crate::config::{Config, ConfigError};
use crate::duration::human;
use crate::event::{Draft, EventType};
use crate::handlers::Registry;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

mod heartbeat;
mod isolation;
mod notify;
mod pause;
mod periodic;
mod processor;
mod queues;
mod ratelimit;
mod reaper;
mod reload;
mod retry;
mod scheduler;
mod throughput;
mod watchdog;
mod writer;

use heartbeat::Heartbeat;
use processor::NodeShared;
use queues::Queues;
use reaper::Reaper;
use retry::Retry;
use scheduler::Scheduler;
use watchdog::Watchdog;

/// After the drain, how long requeueing and the final sweep may keep
/// retrying against an unreachable Redis before the daemon exits anyway
/// (the jobs then stay in flight, and a reaper returns them).
const FINAL_GRACE: Duration = Duration::from_secs(5);

/// The least time handlers get to let go of what they hold (worker
/// processes to exit once their input is closed), even after a drain that
/// took all of `shutdown_timeout`.
const HANDLER_GRACE: Duration = Duration::from_secs(1);

/// How long open web requests may finish once the daemon has stopped.
const WEB_GRACE: Duration = Duration::from_secs(2);

/// How long a stop may outlast `shutdown_timeout`: `FINAL_GRACE` for
/// requeueing, then removing the heartbeat, with room to spare. systemd is
/// told (`EXTEND_TIMEOUT_USEC`), so that a `TimeoutStopSec` left below
/// `shutdown_timeout` + this does not SIGKILL a drain halfway.
const STOP_SLACK: Duration = Duration::from_secs(20);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis failed in a way retrying cannot fix.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// This daemon's identity: `<host>-<pid>-<random>`, unique per start.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node id used in keys and events.
    pub id: String,
    /// The host name.
    pub host: String,
    /// When it started (RFC 3339).
    pub started_at: String,
}

impl Node {
    /// A fresh identity for this process.
    pub fn new() -> Self {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into());
        let safe: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            id: format!("{safe}-{}-{:04x}", std::process::id(), fastrand::u16(..)),
            host,
            started_at: crate::clock::now_rfc3339(),
        }
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// BLMOVE's block time plus the longest a Redis reply may take: a fetcher
/// call older than twice this is stuck (see `Processor::fetch_call_age`).
pub(crate) fn stuck_fetch_threshold(config: &Config) -> Duration {
    (processor::BLOCK + config.redis.response_timeout) * 2
}

/// Re-reads the configuration for `systemctl reload` (SIGHUP): the same
/// file, environment and command-line overrides as at start.
pub type Reloader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Runs the daemon until `shutdown.terminate`, then shuts down gracefully.
///
/// Waits for Redis if it is unreachable at start (logging why), so a daemon
/// started before Redis comes up by itself once Redis does. Returns an error
/// only for a configuration that cannot work.
pub async fn run(
    config: Config,
    registry: &Registry,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    run_with(Node::new(), config, registry, shutdown, None).await
}

/// [`run`] with a given identity (tests use it to know the node id).
pub async fn run_as(
    node: Node,
    config: Config,
    registry: &Registry,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    run_with(node, config, registry, shutdown, None).await
}

/// [`run_as`] that applies a configuration `reloader` reads on each
/// `shutdown.reload` (SIGHUP): queues added, removed or changed and the
/// schedules, without dropping or rerunning a job.
pub async fn run_with(
    node: Node,
    config: Config,
    registry: &Registry,
    shutdown: Shutdown,
    reloader: Option<Reloader>,
) -> Result<(), DaemonError> {
    if config.queues.is_empty() {
        return Err(ConfigError::Invalid(
            "no queues configured: add a [queues.<name>] table".into(),
        )
        .into());
    }
    let broker = Broker::new(&config.redis).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    broker.follow_failovers();
    let built = registry.build_all_with(&config, &broker)?;
    let wake_scheduler = Arc::new(Notify::new());
    let give_up = CancellationToken::new();
    let sink = EventSink::new(&config.events.channel, config.events.stream_maxlen);
    let (writer, outcomes, events) = writer::writer(&node.id, broker.clone(), sink);
    let metrics = Arc::new(Metrics::new());
    {
        let events = events.clone();
        metrics.count_dropped_events(move || events.dropped());
    }
    // The web server answers /healthz (and /readyz with 503) while Redis
    // is still awaited; it stops when this function returns, however.
    let stop_web = CancellationToken::new();
    let _stop_web_on_return = stop_web.clone().drop_guard();
    let (web_task, web_client) = match config.web.listen {
        Some(addr) => {
            let listener = crate::web::bind(addr).await?;
            let client = crate::api::Client::with_broker(broker.clone(), &config, "web");
            let serve = crate::web::serve(
                listener,
                client.clone(),
                Some(metrics.clone()),
                stop_web.clone(),
            );
            (Some(tokio::spawn(serve)), Some(client))
        }
        None => (None, None),
    };
    let stop_fetching = CancellationToken::new();
    let abandon = CancellationToken::new();
    let shared = NodeShared {
        scheduler: wake_scheduler.clone(),
        isolation: Arc::new(isolation::Isolation::default()),
        events: events.clone(),
        outcomes,
        give_up: give_up.clone(),
        metrics: metrics.clone(),
    };
    let mut queues = Queues::new(
        broker.clone(),
        &node.id,
        shared,
        stop_fetching.clone(),
        abandon.clone(),
    );
    for (name, handler) in config.queues.keys().zip(built) {
        queues.add(name, &config, handler).await;
    }
    let slots: u32 = config.queues.values().map(|q| q.concurrency).sum();
    tracing::info!(
        node = %node.id,
        redis = %broker.url(),
        queues = %queues.names().join(","),
        slots,
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "starting"
    );
    notify::status(&format!("connecting to Redis at {}", broker.url()));

    if !wait_for_redis(&broker, &shutdown.terminate).await {
        tracing::info!("stopped before Redis was reachable");
        notify::stopping("stopped before Redis was reachable", FINAL_GRACE);
        return Ok(());
    }
    match broker.standalone().await {
        Err(e @ BrokerError::BadUrl { .. }) => {
            return Err(ConfigError::Invalid(e.to_string()).into());
        }
        // Anything else is Redis being briefly unwell: the workers' retries handle it.
        Err(e) => tracing::debug!(error = %e, "the server's mode could not be read"),
        Ok(()) => {}
    }
    let stop_writer = CancellationToken::new();
    let writer_task = tokio::spawn(writer.run(stop_writer.clone(), give_up.clone()));
    let heartbeat = Heartbeat {
        broker: broker.clone(),
        node: node.clone(),
        processors: queues.processors(),
        events: events.clone(),
        interval: config.daemon.heartbeat_interval,
        ttl: config.daemon.node_ttl,
        stuck_after: stuck_fetch_threshold(&config),
    };
    // Listed as alive in every queue before the first job is taken.
    if !reload::register(&heartbeat, &shutdown.terminate).await {
        notify::stopping("stopped before the node was registered", FINAL_GRACE);
        return Ok(());
    }

    // Announced before anything it does: recoveries, then jobs.
    events.emit(Draft::node(EventType::NodeStarted));
    let stop_background = CancellationToken::new();
    let stop_heartbeat = CancellationToken::new();
    // Jobs of nodes that died before this one started run first.
    let reaper = Reaper {
        broker: broker.clone(),
        processors: queues.processors(),
        node: node.id.clone(),
        max_deliveries: config.daemon.max_deliveries,
        interval: config.daemon.heartbeat_interval,
    };
    if let Err(e) = reaper.sweep().await {
        tracing::warn!(error = %e, "reaper: first look for dead nodes failed; will look again");
    }
    // A queue paused before the start is not taken from at all.
    if let Err(e) = pause::look(&broker, &queues.processors()).await {
        tracing::warn!(error = %e, "could not read which queues are paused; will look again");
    }
    queues.launch();
    let mut background = JoinSet::new();
    background.spawn(pause::watch(
        broker.clone(),
        queues.processors(),
        stop_background.clone(),
    ));
    background.spawn(
        Scheduler {
            processors: queues.processors(),
            wake: wake_scheduler,
        }
        .run(stop_background.clone()),
    );
    background.spawn(reaper.run(stop_background.clone()));
    let mut periodic = reload::Periodics::start(&config, &queues, &events, &stop_background);
    let watchdog = Watchdog {
        processors: queues.processors(),
        stuck_after: stuck_fetch_threshold(&config),
        timeout: notify::watchdog_timeout(),
        shutdown: shutdown.clone(),
    };
    let heartbeat_task = tokio::spawn(heartbeat.clone().run(stop_heartbeat.clone()));
    tracing::info!(node = %node.id, "running");
    notify::ready("running");
    let watchdog_task = tokio::spawn(watchdog.run(stop_heartbeat.clone()));

    let mut config = config;
    let mut quieted = false;
    loop {
        tokio::select! {
            _ = shutdown.terminate.cancelled() => break,
            _ = shutdown.quiet.cancelled(), if !quieted => {
                quieted = true;
                stop_fetching.cancel();
                if !shutdown.terminate.is_cancelled() {
                    tracing::info!("quiet: no new jobs will be taken; running jobs finish");
                }
            }
            _ = shutdown.reload.notified() => {
                let context = reload::Context {
                    registry,
                    broker: &broker,
                    heartbeat: &heartbeat,
                    events: &events,
                    stop_background: &stop_background,
                    terminate: &shutdown.terminate,
                };
                reload::reload(&mut config, reloader.as_ref(), &mut queues, &mut periodic, &context).await;
                // The dashboard shows the queues and schedules now run.
                if let Some(client) = &web_client {
                    client.set_config(&config);
                }
            }
        }
    }
    // The shutdown, in order. Each step says why it comes where it does.
    let stopping_since = std::time::Instant::now();
    let busy = queues.busy();
    events.emit(Draft::node(EventType::NodeStopping));
    tracing::info!(
        running = busy,
        timeout = %human(config.daemon.shutdown_timeout),
        "shutting down: taking no new jobs, letting running jobs finish"
    );
    notify::stopping(
        &format!("stopping: letting the running jobs ({busy}) finish"),
        config.daemon.shutdown_timeout + STOP_SLACK,
    );
    // 1. Stop taking jobs, so the set of jobs to drain only shrinks.
    stop_fetching.cancel();
    // 2. Drain: running jobs get `shutdown_timeout` (a second SIGINT cuts it
    //    short). The heartbeat keeps beating meanwhile, so no peer declares
    //    this node dead and hands its running jobs to someone else.
    let drained = tokio::select! {
        _ = queues.join() => true,
        _ = tokio::time::sleep(config.daemon.shutdown_timeout) => false,
        _ = shutdown.hurry.cancelled() => false,
    };
    // 3. Requeue stragglers at the head of their queue: they were
    //    interrupted, not failed, and run first on the next node.
    if !drained {
        tracing::warn!(
            jobs = queues.busy(),
            "drain incomplete; requeueing unfinished jobs at the head of their queues"
        );
        abandon.cancel();
    }
    let give_up_timer = {
        let give_up = give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FINAL_GRACE).await;
            give_up.cancel();
        })
    };
    queues.join().await;
    // 4. Sweep: anything still in this node's in-flight lists (a job popped
    //    just as fetching stopped, an outcome Redis would not take) goes back
    //    to the head of its queue too. After this nothing is held here.
    queues.sweep().await;
    give_up_timer.abort();
    // 5. Handlers let go of what they hold (worker processes finish and
    //    exit): no job runs any more. They get what is left of
    //    `shutdown_timeout`, and at least a moment to exit on their own.
    let left = config
        .daemon
        .shutdown_timeout
        .saturating_sub(stopping_since.elapsed())
        .max(HANDLER_GRACE);
    queues.shut_handlers(left).await;
    // 6. Background components: nothing left for them to do on this node.
    stop_background.cancel();
    join_all(&mut background).await;
    periodic.stop().await;
    // 7. Heartbeat: once the node key is gone, peers may reap this node, and
    //    there is nothing left to reap. The systemd watchdog stops with it,
    //    so that the whole drain is watched.
    stop_heartbeat.cancel();
    if let Err(e) = heartbeat_task.await {
        tracing::error!(error = %e, "heartbeat task failed");
    }
    if let Err(e) = watchdog_task.await {
        tracing::error!(error = %e, "watchdog task failed");
    }
    if let Err(e) = broker.remove_node(&node.id).await {
        tracing::warn!(error = %e, "could not remove the node's heartbeat key; it expires by itself");
    }
    queues.unlist().await;
    // 8. Events last, so that node.stopped follows every job event.
    events.emit(Draft::node(EventType::NodeStopped));
    stop_writer.cancel();
    if let Err(e) = writer_task.await {
        tracing::error!(error = %e, "writer failed");
    }
    // 9. The web server: /healthz answered until the very end.
    stop_web.cancel();
    if let Some(task) = web_task {
        if tokio::time::timeout(WEB_GRACE, task).await.is_err() {
            tracing::warn!("web: requests still open at exit were cut short");
        }
    }
    tracing::info!(node = %node.id, "stopped");
    Ok(())
}

/// Pings until Redis answers. False if `cancel` fired first.
async fn wait_for_redis(broker: &Broker, cancel: &CancellationToken) -> bool {
    let mut retry = Retry::new("connecting to Redis");
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

async fn join_all<T: 'static>(set: &mut JoinSet<T>) {
    while let Some(ended) = set.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "a daemon task failed");
        }
    }
}

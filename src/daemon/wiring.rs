//! Wiring: what a node is made of, built and connected before Redis is
//! awaited. Nothing runs yet but the web server, so that `/healthz` answers
//! (and `/readyz` says 503) while the daemon waits for Redis; the queues'
//! handlers are built and started, so a configuration that cannot work
//! fails here, before anything is taken.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::isolation::Isolation;
use super::processor::NodeShared;
use super::queues::Queues;
use super::stages::{Stops, WEB_GRACE};
use super::writer::{self, Events, Writer};
use super::{DaemonError, Node, flows, notify};
use crate::api::Client;
use crate::broker::Broker;
use crate::broker::events::EventSink;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::handlers::Registry;
use crate::metrics::Metrics;
use crate::traces::Traces;

/// A node wired together, not started: [`Wiring::start`] starts it.
pub(super) struct Wiring {
    pub(super) node: Node,
    pub(super) config: Config,
    pub(super) broker: Broker,
    /// What every component goes by for what is due and how long to wait.
    pub(super) clock: Clock,
    pub(super) queues: Queues,
    /// Not running yet: it is started once Redis answers.
    pub(super) writer: Writer,
    pub(super) events: Events,
    /// Wakes the scheduler when this node schedules a job itself.
    pub(super) wake_scheduler: Arc<Notify>,
    pub(super) web: Web,
    pub(super) stops: Stops,
    /// The tracer, flushed once the last job has run.
    pub(super) traces: Option<Arc<Traces>>,
    /// The flows' end of what the processors hand over.
    pub(super) flow_ends: tokio::sync::mpsc::Receiver<flows::Ended>,
}

impl Wiring {
    /// Builds the node of `config` with the handlers of `registry`. Fails
    /// only for a configuration that cannot work: no queue, a bad Redis
    /// URL, a handler that cannot be built, a web address not free.
    pub(super) async fn new(
        node: Node,
        config: Config,
        registry: &Registry,
    ) -> Result<Self, DaemonError> {
        if config.queues.is_empty() {
            return Err(ConfigError::Invalid(
                "no queues configured: add a [queues.<name>] table".into(),
            )
            .into());
        }
        let broker = Broker::new(&config.redis).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        broker.follow_failovers();
        let handlers = registry.build_all_with(&config, &broker)?;
        let clock = Clock::system();
        let wake_scheduler = Arc::new(Notify::new());
        let stops = Stops::default();
        let sink = EventSink::new(&config.events.channel, config.events.stream_maxlen);
        let (writer, outcomes, events) = writer::writer(&node.id, broker.clone(), sink, &clock);
        let metrics = Arc::new(Metrics::new());
        {
            let events = events.clone();
            metrics.count_dropped_events(move || events.dropped());
        }
        let traces = Traces::start(&config.tracing)
            .map_err(ConfigError::Invalid)?
            .map(Arc::new);
        if let Some(traces) = &traces {
            let dropped = traces.dropped();
            metrics.count_dropped_spans(move || dropped.get());
        }
        let web = Web::start(&config, &broker, &metrics).await?;
        let (flows, flow_ends) = flows::channel();
        let shared = NodeShared {
            flows,
            scheduler: wake_scheduler.clone(),
            isolation: Arc::new(Isolation::default()),
            events: events.clone(),
            outcomes,
            give_up: stops.give_up.clone(),
            metrics,
            clock: clock.clone(),
            traces: traces.clone(),
        };
        let mut queues = Queues::new(
            broker.clone(),
            &node.id,
            shared,
            stops.fetching.clone(),
            stops.abandon.clone(),
        );
        for (name, handler) in config.queues.keys().zip(handlers) {
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
        Ok(Self {
            node,
            config,
            broker,
            clock,
            queues,
            writer,
            events,
            wake_scheduler,
            web,
            stops,
            traces,
            flow_ends,
        })
    }
}

/// The web server (`[web] listen`), if one is configured. It stops last in
/// a shutdown, so that `/healthz` is answered until the very end, and in
/// any case when the daemon returns (an error, a stop before Redis came).
pub(super) struct Web {
    task: Option<JoinHandle<()>>,
    /// What it serves from; a reload shows it the new configuration.
    client: Option<Client>,
    stop: DropGuard,
}

impl Web {
    async fn start(
        config: &Config,
        broker: &Broker,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, DaemonError> {
        let stop = CancellationToken::new();
        let (task, client) = match config.web.listen {
            Some(addr) => {
                let listener = crate::web::bind(addr).await?;
                let client = Client::with_broker(broker.clone(), config, "web");
                let serve = crate::web::serve(
                    listener,
                    client.clone(),
                    Some(metrics.clone()),
                    stop.clone(),
                );
                (Some(tokio::spawn(serve)), Some(client))
            }
            None => (None, None),
        };
        Ok(Self {
            task,
            client,
            stop: stop.drop_guard(),
        })
    }

    /// The dashboard shows the queues and schedules of `config` from now.
    pub(super) fn show(&self, config: &Config) {
        if let Some(client) = &self.client {
            client.set_config(config);
        }
    }

    /// Stops it; requests still open get [`WEB_GRACE`] to finish.
    pub(super) async fn stop(self) {
        self.stop.disarm().cancel();
        if let Some(task) = self.task {
            if tokio::time::timeout(WEB_GRACE, task).await.is_err() {
                tracing::warn!("web: requests still open at exit were cut short");
            }
        }
    }
}

//! The queues a node runs, which a reload changes: each one's processor,
//! handler, settings, the task running it and the controls that stop it.
//!
//! A queue is stopped by stopping its fetcher and waiting for its running
//! jobs to finish (none is cut short, so none runs twice), then putting back
//! whatever its in-flight list still holds; only then may a queue of the
//! same list start again on this node, since both would share the node's
//! in-flight list.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::processor::{NodeShared, Processor};
use crate::broker::queue::QueueStore;
use crate::broker::{Broker, QueueKeys};
use crate::config::{Config, QueueConfig};
use crate::handlers::{Built, Handler};

/// The node's processors as the background components see them (the
/// heartbeat, reaper, scheduler and watchdog read them at each tick).
#[derive(Clone, Default)]
pub(crate) struct Processors(Arc<RwLock<Vec<Arc<Processor>>>>);

impl Processors {
    /// A set of these processors.
    #[cfg(test)]
    pub(crate) fn of(processors: Vec<Arc<Processor>>) -> Self {
        Self(Arc::new(RwLock::new(processors)))
    }

    /// The processors now.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Processor>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, processors: Vec<Arc<Processor>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = processors;
    }
}

/// One queue of the node.
struct Queue {
    processor: Arc<Processor>,
    handler: Arc<dyn Handler>,
    /// What it was built from, to tell whether a reload changes it.
    settings: QueueConfig,
    /// The node-wide settings tables its handler read, for a reload to
    /// see them change.
    handler_settings: BTreeMap<String, toml::Table>,
    /// Stops this queue's fetcher (a child of the node's).
    stop_fetching: CancellationToken,
    /// Its task, once launched.
    task: Option<JoinHandle<()>>,
}

/// The queues of the node.
pub(crate) struct Queues {
    broker: Broker,
    node: String,
    shared: NodeShared,
    queues: BTreeMap<String, Queue>,
    processors: Processors,
    /// The node's fetch stop and abandon, parents of each queue's.
    stop_fetching: CancellationToken,
    abandon: CancellationToken,
}

impl Queues {
    pub(crate) fn new(
        broker: Broker,
        node: &str,
        shared: NodeShared,
        stop_fetching: CancellationToken,
        abandon: CancellationToken,
    ) -> Self {
        Self {
            broker,
            node: node.to_owned(),
            shared,
            queues: BTreeMap::new(),
            processors: Processors::default(),
            stop_fetching,
            abandon,
        }
    }

    /// The processors, for the background components.
    pub(crate) fn processors(&self) -> Processors {
        self.processors.clone()
    }

    /// The processors now.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Processor>> {
        self.processors.snapshot()
    }

    /// The names of the queues run.
    pub(crate) fn names(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    /// Adds queue `name`, ready to be launched; its handler is started.
    pub(crate) async fn add(&mut self, name: &str, config: &Config, built: Built) {
        let Built {
            handler,
            settings: handler_settings,
        } = built;
        let settings = config.queues[name].clone();
        let keys = QueueKeys::new(name, &config.queue_key(name), &self.node);
        let mut store = QueueStore::new(self.broker.clone(), keys, settings.dead_max_jobs);
        if !settings.history {
            store = store.without_history();
        }
        store = store
            .with_group(settings.group.clone())
            .with_debounce(settings.debounce.clone());
        handler.start().await;
        let processor = Arc::new(Processor::new(
            name,
            store,
            settings.clone(),
            handler.clone(),
            self.shared.clone(),
        ));
        self.queues.insert(
            name.to_owned(),
            Queue {
                processor,
                handler,
                settings,
                handler_settings,
                stop_fetching: self.stop_fetching.child_token(),
                task: None,
            },
        );
        self.publish();
    }

    /// Starts the queues added and not yet running.
    pub(crate) fn launch(&mut self) {
        for queue in self.queues.values_mut().filter(|q| q.task.is_none()) {
            queue.task =
                Some(tokio::spawn(queue.processor.clone().run(
                    queue.stop_fetching.clone(),
                    self.abandon.child_token(),
                )));
        }
    }

    /// Whether queue `name` would be built differently from `config`.
    pub(crate) fn changed(&self, name: &str, config: &Config) -> bool {
        match (self.queues.get(name), config.queues.get(name)) {
            (Some(running), Some(wanted)) => {
                running.settings != *wanted
                    || running.handler_settings.iter().any(|(table, read)| {
                        config.handlers.get(table).unwrap_or(&toml::Table::new()) != read
                    })
            }
            _ => false,
        }
    }

    /// Stops queue `name` taking jobs; [`Queues::retire`] then waits for it.
    pub(crate) fn stop(&self, name: &str) {
        if let Some(queue) = self.queues.get(name) {
            queue.stop_fetching.cancel();
        }
    }

    /// Retires queue `name`, stopped with [`Queues::stop`]: its running jobs
    /// finish, what its in-flight list still holds goes back to the head of
    /// the queue, and its handler lets go of what it holds. Dropped before
    /// it ends, the queue stays, stopped, for the shutdown to drain.
    pub(crate) async fn retire(&mut self, name: &str, handler_grace: Duration) {
        let Some(queue) = self.queues.get_mut(name) else {
            return;
        };
        if let Some(task) = queue.task.as_mut() {
            if let Err(e) = task.await {
                tracing::error!(queue = %name, error = %e, "queue task failed");
            }
            queue.task = None;
        }
        queue.processor.sweep().await;
        queue.handler.shutdown(handler_grace).await;
        if let Err(e) = queue
            .processor
            .store()
            .forget_node_if_idle(&self.node)
            .await
        {
            tracing::debug!(queue = %name, error = %e, "could not unlist the node");
        }
        self.queues.remove(name);
        self.publish();
    }

    /// Waits for every queue's task (the node's fetching stopped, or its
    /// running jobs abandoned).
    pub(crate) async fn join(&mut self) {
        for (name, queue) in &mut self.queues {
            if let Some(task) = queue.task.take() {
                if let Err(e) = task.await {
                    tracing::error!(queue = %name, error = %e, "queue task failed");
                }
            }
        }
    }

    /// Puts back what every in-flight list still holds.
    pub(crate) async fn sweep(&self) {
        for queue in self.queues.values() {
            queue.processor.sweep().await;
        }
    }

    /// Every handler lets go of what it holds, within `within`.
    pub(crate) async fn shut_handlers(&self, within: Duration) {
        futures::future::join_all(self.queues.values().map(|q| q.handler.shutdown(within))).await;
    }

    /// Unlists the node from every queue it no longer holds jobs of.
    pub(crate) async fn unlist(&self) {
        for queue in self.queues.values() {
            if let Err(e) = queue
                .processor
                .store()
                .forget_node_if_idle(&self.node)
                .await
            {
                tracing::debug!(error = %e, "could not unlist the node");
            }
        }
    }

    /// Jobs running now, over all queues.
    pub(crate) fn busy(&self) -> usize {
        self.queues.values().map(|q| q.processor.busy()).sum()
    }

    fn publish(&self) {
        self.processors
            .set(self.queues.values().map(|q| q.processor.clone()).collect());
    }
}

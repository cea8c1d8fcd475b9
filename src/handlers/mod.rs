//! Handlers: what a job does once it is taken.
//!
//! A handler is one async method that returns success, a transient error
//! (retry with backoff) or a permanent error (dead letter at once): the error
//! carries the retry decision. The [`Registry`] is the table of contents of
//! job kinds; a queue names its handler, and an unknown name is a
//! configuration error found at start-up, not at the first job.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::broker::Broker;
use crate::config::{Config, ConfigError, QueueConfig};
use crate::job::Job;

pub mod email;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod noop;
pub mod publish;

/// Runs jobs of one kind.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one job. Runs under the queue's timeout; a panic fails the job only.
    async fn handle(&self, job: &Job) -> Result<(), HandlerError>;
}

/// A failed run, and whether running it again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: a timeout, a refused connection, a 4xx reply.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: a malformed payload, an invalid address, a 5xx reply.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(msg: impl Into<String>) -> Self {
        Self::Transient(msg.into())
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(msg: impl Into<String>) -> Self {
        Self::Permanent(msg.into())
    }

    /// Whether the job goes straight to the dead letter list.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

/// What a handler factory may look at when it builds a queue's handler.
#[derive(Clone, Copy)]
pub struct HandlerContext<'a> {
    /// The queue's name.
    pub queue: &'a str,
    /// The queue's settings.
    pub queue_config: &'a QueueConfig,
    /// The whole configuration (`[email]` and the like).
    pub config: &'a Config,
    /// Redis, for handlers that publish or record.
    pub broker: &'a Broker,
}

/// Builds a queue's handler from its configuration, or says what is wrong with it.
pub type Factory =
    Arc<dyn Fn(&HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> + Send + Sync>;

/// Handler names and how to build each.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl Registry {
    /// A registry with no handlers, for tests that bring their own.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in handlers: `email`, `noop`, `publish` (and `fault` in test builds).
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        r.register("email", email::Email::build);
        r.register("noop", |_| Ok(Arc::new(noop::Noop)));
        r.register("publish", publish::Publish::build);
        #[cfg(feature = "fault-injection")]
        r.register("fault", |_| Ok(Arc::new(fault::Fault)));
        r
    }

    /// Adds (or replaces) a handler kind.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(&HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError>
        + Send
        + Sync
        + 'static,
    ) -> &mut Self {
        self.factories.insert(name.to_owned(), Arc::new(factory));
        self
    }

    /// Adds a handler that needs no configuration.
    pub fn register_handler(&mut self, name: &str, handler: impl Handler) -> &mut Self {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        self.register(name, move |_| Ok(handler.clone()))
    }

    /// The known names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// Builds the handler a queue names.
    pub fn build(&self, ctx: &HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> {
        let name = &ctx.queue_config.handler;
        let factory = self.factories.get(name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "queues.{}.handler: unknown handler {name:?} (known: {})",
                ctx.queue,
                self.names().join(", ")
            ))
        })?;
        factory(ctx)
    }
}

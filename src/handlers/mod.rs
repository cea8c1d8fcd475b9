//! Handlers: what a job does once it is taken.
//!
//! A handler is one async method that returns success, a transient error
//! (retry with backoff, or after the delay it asks for) or a permanent error
//! (dead letter at once): the error carries the retry decision. The
//! [`Registry`] is the table of contents of job kinds; a queue names its
//! handler, and an unknown name is a configuration error found at start-up,
//! not at the first job.
//!
//! A handler owns its configuration: the table named after it inside the
//! queue's table (`[queues.thumbs.exec]`) reaches its factory untouched
//! through [`HandlerContext::options`], and the factory reads and validates
//! it. `conveyor check` builds every queue's handler and asks each to
//! [`Handler::check`] what it depends on.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::broker::Broker;
pub use crate::broker::store::{HandlerStore, StoreError};
use crate::config::{Config, ConfigError, QueueConfig};
pub use crate::job::{HandlerError, Job};

pub(crate) mod email;
pub mod exec;
#[cfg(feature = "fault-injection")]
pub(crate) mod fault;
pub(crate) mod http;
pub(crate) mod noop;
pub(crate) mod publish;

/// Runs jobs of one kind.
///
/// Only [`Handler::handle`] is required. The daemon calls
/// [`Handler::start`] once before the first job and [`Handler::shutdown`]
/// once after the last; `conveyor check` calls [`Handler::check`].
///
/// ```
/// use conveyor::{async_trait, Handler, HandlerError, Job};
/// use conveyor::envelope::parse_item;
///
/// struct Resize;
///
/// #[async_trait]
/// impl Handler for Resize {
///     async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
///         let p: serde_json::Value = job.payload_as()?;   // malformed: permanent
///         let Some(width) = p.get("width") else {
///             return Err(HandlerError::permanent("missing width"));
///         };
///         job.set_result(&serde_json::json!({ "resized_to": width }))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // A job as the daemon hands it over, from the item a producer pushed.
/// let job = |item: &'static [u8]| {
///     Job::new("images".into(), item, parse_item(item, 1 << 20).expect("JSON"))
/// };
/// assert!(Resize.handle(&job(br#"{"width": 640}"#)).await.is_ok());
/// let error = Resize.handle(&job(br#"{"height": 480}"#)).await.unwrap_err();
/// assert!(error.is_permanent());
/// assert_eq!(error.message(), "missing width");
/// # }
/// ```
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one job. Runs under the queue's timeout (the job's
    /// [`Job::deadline`]); a panic fails the job only. A result is kept
    /// with [`Job::set_result`].
    async fn handle(&self, job: &Job) -> Result<(), HandlerError>;

    /// Proves that what the handler needs is there (a server it talks to,
    /// a directory it writes to), saying what it found through `report`,
    /// one line each. Building the handler has checked its settings
    /// already; this is for the world outside.
    async fn check(&self, report: &mut (dyn FnMut(String) + Send)) -> Result<(), CheckError> {
        let _ = report;
        Ok(())
    }

    /// Gets ready before the first job (the `exec` handler starts its
    /// worker processes here). Failing to is logged by the handler; jobs
    /// then fail as transient until it works.
    async fn start(&self) {}

    /// Lets go of what the handler holds once no job of its queue runs any
    /// more (processes, connections), taking at most `within`.
    async fn shutdown(&self, within: Duration) {
        let _ = within;
    }

    /// The rate-limit window a job counts against, for a `rate_limit.key`
    /// the handler defines itself (a shard of a field, say); `None` for a
    /// key it does not define, which is then read from the payload: the
    /// domain of an address field for `<field>_domain` (`to_domain`), else
    /// a top-level field.
    fn rate_limit_key(&self, key: &str, payload: &serde_json::Value) -> Option<RateLimitKey> {
        let _ = (key, payload);
        None
    }
}

/// A job's window of a rate limit keyed by a handler's own key
/// ([`Handler::rate_limit_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The window of this value.
    Value(String),
    /// The job has no value for the key: the queue-wide window.
    Missing,
}

/// Why a handler's [`Handler::check`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The settings cannot work: fix the configuration (the CLI exits 78).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A server refused our settings for good, such as our credentials:
    /// fix the configuration (exit 78).
    #[error("{0}")]
    Refused(String),
    /// Something the handler needs cannot be reached or used now (exit 69).
    #[error("{0}")]
    Unavailable(String),
}

/// What a handler factory may look at when it builds a queue's handler.
pub struct HandlerContext<'a> {
    queue: &'a str,
    queue_config: &'a QueueConfig,
    config: &'a Config,
    broker: &'a Broker,
    /// The node-wide settings tables read, as read: a reload that changes
    /// one of them rebuilds the queue.
    read: RefCell<BTreeMap<String, toml::Table>>,
}

/// A queue's handler, built, with the node-wide settings it read.
pub(crate) struct Built {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) settings: BTreeMap<String, toml::Table>,
}

impl<'a> HandlerContext<'a> {
    fn new(
        queue: &'a str,
        queue_config: &'a QueueConfig,
        config: &'a Config,
        broker: &'a Broker,
    ) -> Self {
        Self {
            queue,
            queue_config,
            config,
            broker,
            read: RefCell::default(),
        }
    }

    /// The queue's name.
    pub fn queue(&self) -> &'a str {
        self.queue
    }

    /// The settings every queue has (concurrency, timeout, ...).
    pub fn queue_config(&self) -> &'a QueueConfig {
        self.queue_config
    }

    /// The whole configuration (`[email]` and the like).
    pub fn config(&self) -> &'a Config {
        self.config
    }

    /// Redis state of the queue's handler: keys of its own under the
    /// queue's slot, the shared response cache, and publishing.
    pub fn store(&self) -> HandlerStore {
        HandlerStore::new(self.broker.clone(), &self.config.queue_key(self.queue))
    }

    /// Where this handler's options are written: `queues.<queue>.<handler>`.
    pub fn options_path(&self) -> String {
        format!("queues.{}.{}", self.queue, self.queue_config.handler)
    }

    /// The handler's options table read as `T` (give `T`
    /// `#[serde(deny_unknown_fields)]`); a missing table reads as an empty
    /// one. Errors name the table.
    pub fn options<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let table = self.queue_config.options.clone().unwrap_or_default();
        T::deserialize(toml::Value::Table(table)).map_err(|e| {
            ConfigError::Invalid(format!(
                "{}: {}",
                self.options_path(),
                e.to_string().trim_end()
            ))
        })
    }

    /// The handler's node-wide settings, the top-level table named after
    /// it (`[tally]` for a handler registered as `tally`), read as `T`
    /// (give `T` `#[serde(deny_unknown_fields)]`); a missing table reads as
    /// an empty one. Errors name the table. Every queue of the handler
    /// reads the same table, and a reload that changes it rebuilds them.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        self.settings_of(&self.queue_config.handler)
    }

    /// The top-level table `[table]`, read as `T`, as
    /// [`HandlerContext::settings`] does: for a handler whose settings keep
    /// their name under another registration (the email handler reads
    /// `[email]` whatever name it is registered as).
    pub fn settings_of<T: DeserializeOwned>(&self, table: &str) -> Result<T, ConfigError> {
        let read = self.config.handlers.get(table).cloned().unwrap_or_default();
        self.read
            .borrow_mut()
            .insert(table.to_owned(), read.clone());
        T::deserialize(toml::Value::Table(read))
            .map_err(|e| ConfigError::Invalid(format!("{table}: {}", e.to_string().trim_end())))
    }

    /// A variable of the environment (or of the configuration's
    /// [`Config::env_overrides`]): where a handler reads its own overrides
    /// and secrets.
    pub fn env(&self, name: &str) -> Option<String> {
        self.config.env(name)
    }

    /// For handlers that take no options: an error if the queue gives some.
    pub fn no_options(&self) -> Result<(), ConfigError> {
        match &self.queue_config.options {
            Some(table) if !table.is_empty() => Err(ConfigError::Invalid(format!(
                "queues.{}: the {} handler takes no options (given: {})",
                self.queue,
                self.queue_config.handler,
                table.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            _ => Ok(()),
        }
    }
}

/// Builds a queue's handler from its configuration, or says what is wrong with it.
pub type Factory =
    Arc<dyn Fn(&HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> + Send + Sync>;

/// Hides the secrets a handler's table may hold (its node-wide settings,
/// or a queue's options) when the configuration is printed.
pub(crate) type Masker = Arc<dyn Fn(&mut toml::Table) + Send + Sync>;

/// Handler names and how to build each.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
    maskers: BTreeMap<String, Masker>,
}

impl Registry {
    /// A registry with no handlers, for tests that bring their own.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in handlers: `email`, `exec`, `http`, `noop`, `publish`
    /// (and `fault` in test builds).
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        r.register("email", email::Email::build);
        r.register("exec", exec::build);
        r.register("http", http::build);
        r.mask_secrets("http", http::mask_secrets);
        r.register("noop", |ctx| {
            ctx.no_options()?;
            Ok(Arc::new(noop::Noop))
        });
        r.register("publish", publish::Publish::build);
        #[cfg(feature = "fault-injection")]
        r.register("fault", |_| Ok(Arc::new(fault::Fault)));
        r
    }

    /// Adds (or replaces) a handler kind whose factory reads the queue's
    /// settings and options.
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

    /// How handler `name` is built, if it is registered: a handler of one's
    /// own can wrap a built-in one (`registry.factory("email")`).
    pub fn factory(&self, name: &str) -> Option<Factory> {
        self.factories.get(name).cloned()
    }

    /// Adds a handler that takes no options; every queue naming it shares it.
    pub fn register_handler(&mut self, name: &str, handler: impl Handler) -> &mut Self {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        self.register(name, move |ctx| {
            ctx.no_options()?;
            Ok(handler.clone())
        })
    }

    /// Hides the secrets of handler `name`'s tables (a queue's options, its
    /// node-wide settings) in the effective configuration printed at start,
    /// besides passwords in URLs, which are always masked.
    pub fn mask_secrets(
        &mut self,
        name: &str,
        mask: impl Fn(&mut toml::Table) + Send + Sync + 'static,
    ) -> &mut Self {
        self.maskers.insert(name.to_owned(), Arc::new(mask));
        self
    }

    /// The effective configuration as TOML for the startup log, every
    /// secret masked: passwords in URLs, and what each handler masks.
    pub fn masked_toml(&self, config: &Config) -> String {
        config.masked_toml_with(&|name, table| {
            if let Some(mask) = self.maskers.get(name) {
                mask(table);
            }
        })
    }

    /// The known names, sorted.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// Builds every configured queue's handler, in the order of the
    /// queues: what the daemon does at start, without running anything.
    /// The first queue whose handler cannot be built decides the error.
    pub fn build_all(&self, config: &Config) -> Result<Vec<Arc<dyn Handler>>, ConfigError> {
        let broker = Broker::new(&config.redis).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let built = self.build_all_with(config, &broker)?;
        Ok(built.into_iter().map(|b| b.handler).collect())
    }

    pub(crate) fn build_all_with(
        &self,
        config: &Config,
        broker: &Broker,
    ) -> Result<Vec<Built>, ConfigError> {
        self.check_settings(config)?;
        config
            .queues
            .iter()
            .map(|(name, q)| self.build(HandlerContext::new(name, q, config, broker)))
            .collect()
    }

    /// Refuses a top-level table that is neither conveyor's own nor named
    /// after a handler of this registry (a typo such as `[emial]`).
    pub(crate) fn check_settings(&self, config: &Config) -> Result<(), ConfigError> {
        match config
            .handlers
            .keys()
            .find(|name| !self.factories.contains_key(name.as_str()))
        {
            Some(name) => Err(ConfigError::Invalid(format!(
                "[{name}] is not a table of the configuration (those are {}), nor the \
                 settings of a handler (known: {})",
                crate::config::CORE_TABLES.join(", "),
                self.names().join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// Builds the handler of queue `name` of `config`.
    pub(crate) fn build_one(
        &self,
        config: &Config,
        broker: &Broker,
        name: &str,
    ) -> Result<Built, ConfigError> {
        let queue_config = config.queues.get(name).ok_or_else(|| {
            ConfigError::Invalid(format!("no queue {name:?} in the configuration"))
        })?;
        self.build(HandlerContext::new(name, queue_config, config, broker))
    }

    fn build(&self, ctx: HandlerContext<'_>) -> Result<Built, ConfigError> {
        let name = &ctx.queue_config.handler;
        let factory = self.factories.get(name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "queues.{}.handler: unknown handler {name:?} (known: {})",
                ctx.queue,
                self.names().join(", ")
            ))
        })?;
        let handler = factory(&ctx)?;
        Ok(Built {
            handler,
            settings: ctx.read.into_inner(),
        })
    }
}

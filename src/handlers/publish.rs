//! `publish`: publishes each job's payload, byte for byte, on the queue's
//! `channel`, so a plain subscriber of that channel sees exactly what the
//! producer enqueued (the order events of the design flow this way).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Handler, HandlerContext, HandlerError, HandlerStore};
use crate::config::ConfigError;
use crate::job::Job;

/// Publishes payloads on one channel.
pub(crate) struct Publish {
    store: HandlerStore,
    channel: String,
}

/// `[queues.<q>.publish]`, or `channel` in the queue's table.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    channel: Option<String>,
}

impl Publish {
    /// Builds the handler of a queue; its `channel` is required.
    pub(crate) fn build(ctx: &HandlerContext<'_>) -> Result<Arc<dyn Handler>, ConfigError> {
        let options: Options = ctx.options()?;
        let channel = match options.channel {
            Some(c) if !c.is_empty() => c,
            Some(_) => {
                return Err(ConfigError::Invalid(format!(
                    "queues.{}.channel must not be empty",
                    ctx.queue()
                )));
            }
            None => {
                return Err(ConfigError::Invalid(format!(
                    "queues.{}.channel is required by the publish handler",
                    ctx.queue()
                )));
            }
        };
        // Payloads published there would read as conveyor's own events.
        if channel == ctx.config().events.channel {
            return Err(ConfigError::Invalid(format!(
                "queues.{}.channel {channel:?} is the events channel: jobs' payloads would be \
                 published among conveyor's lifecycle events; choose another channel",
                ctx.queue()
            )));
        }
        Ok(Arc::new(Self {
            store: ctx.store(),
            channel,
        }))
    }
}

#[async_trait]
impl Handler for Publish {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        self.store
            .publish(&self.channel, job.payload().get().as_bytes())
            .await
            .map(|_receivers| ())
            .map_err(|e| HandlerError::transient(format!("publish on {}: {e}", self.channel)))
    }
}

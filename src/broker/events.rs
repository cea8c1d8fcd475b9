//! Lifecycle events and job status records: published in batches, replayed
//! from the capped stream, followed by subscribers.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt as _};

use redis::{RedisWrite, ToRedisArgs};

use super::{Broker, BrokerError, keys};
use crate::event::Numbered;

/// Where events go.
#[derive(Debug, Clone)]
pub struct EventSink {
    /// The pub/sub channel.
    pub channel: String,
    /// The replay stream (its key is the channel's name) and its
    /// approximate length; `None` when replay is off.
    pub stream: Option<(String, u64)>,
}

impl EventSink {
    /// The sink of the `[events]` configuration.
    pub fn new(channel: &str, stream_maxlen: u64) -> Self {
        Self {
            channel: channel.to_owned(),
            stream: (stream_maxlen > 0).then(|| (keys::event_stream(channel), stream_maxlen)),
        }
    }
}

/// New fields of a job's status record `conveyor:job:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The job.
    pub id: String,
    /// Fields to set.
    pub fields: Vec<(&'static str, String)>,
    /// How long the record lives after this update.
    pub ttl: Duration,
}

impl Broker {
    /// Up to `count` stream entries after `after` (exclusive; a stream id,
    /// or `ms-0` for a time): `(entry id, its events in order)`. An entry
    /// holds the events of one write, up to 16.
    pub async fn replay(
        &self,
        stream: &str,
        after: &str,
        count: usize,
    ) -> Result<Vec<(String, Vec<String>)>, BrokerError> {
        let mut conn = self.conn().await?;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let events = fields
                    .into_iter()
                    .filter(|(k, _)| k == "event")
                    .map(|(_, event)| event)
                    .collect();
                (id, events)
            })
            .collect())
    }

    /// Follows a channel on a dedicated connection. The stream ends when the
    /// connection is lost.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
        let mut pubsub =
            self.client()
                .get_async_pubsub()
                .await
                .map_err(|e| BrokerError::Unreachable {
                    url: self.url(),
                    reason: e.to_string(),
                })?;
        pubsub.subscribe(channel).await?;
        Ok(Subscription(Box::pin(
            pubsub
                .into_on_message()
                .map(|msg| msg.get_payload_bytes().to_vec()),
        )))
    }

    /// A job's status record; empty when there is none.
    pub async fn job_status(&self, id: &str) -> Result<HashMap<String, String>, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("HGETALL")
            .arg(keys::job(id))
            .query_async(&mut conn)
            .await?)
    }
}

/// Messages of a subscribed channel.
pub struct Subscription(Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>);

impl Subscription {
    /// The next message; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        self.0.next().await
    }
}

/// Most events in one replay stream entry (the field `event` repeated).
/// One XADD per event was most of what an event cost Redis.
const EVENTS_PER_ENTRY: usize = 16;

/// A numbered event is written into the command as it goes, without being
/// put together first.
impl ToRedisArgs for Numbered {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut arg = out.writer_for_next_arg();
        // Writing into memory cannot fail.
        let _in_memory = self.write_to(&mut arg);
    }
}

/// Adds a PUBLISH of each event (no replies).
pub(crate) fn add_publish(
    pipe: &mut redis::Pipeline,
    sink: &EventSink,
    events: &[impl ToRedisArgs],
) {
    for e in events {
        pipe.cmd("PUBLISH").arg(&sink.channel).arg(e).ignore();
    }
}

/// Adds one `publish_if_heard.lua` call (no reply): the events are
/// published only if anyone subscribes when it runs. For a writer that
/// must publish before its next step and cannot learn first whether anyone
/// listens; it costs Redis each event twice over.
pub(crate) fn add_publish_if_heard(
    pipe: &mut redis::Pipeline,
    sink: &EventSink,
    events: &[impl AsRef<str>],
) {
    if events.is_empty() {
        return;
    }
    let mut inv = super::scripts::PUBLISH_IF_HEARD.prepare_invoke();
    inv.arg(&sink.channel);
    for e in events {
        inv.arg(e.as_ref());
    }
    pipe.invoke_script(&inv).ignore();
}

/// Appends events to the replay stream, if there is one, up to
/// [`EVENTS_PER_ENTRY`] per entry, trimmed so the stream keeps about
/// `stream_maxlen` events (no replies).
pub(crate) fn add_stream(
    pipe: &mut redis::Pipeline,
    sink: &EventSink,
    events: &[impl ToRedisArgs],
) {
    let Some((stream, keep)) = &sink.stream else {
        return;
    };
    for entry in events.chunks(EVENTS_PER_ENTRY) {
        let entries = keep.div_ceil(entry.len() as u64);
        let cmd = pipe.cmd("XADD");
        cmd.arg(stream).arg("MAXLEN").arg("~").arg(entries).arg("*");
        for e in entry {
            cmd.arg("event").arg(e);
        }
        cmd.ignore();
    }
}

/// Adds status record updates (no replies).
pub(crate) fn add_statuses(pipe: &mut redis::Pipeline, statuses: &[StatusUpdate]) {
    for s in statuses {
        let key = keys::job(&s.id);
        pipe.cmd("HSET").arg(&key).arg(&s.fields).ignore();
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(s.ttl.as_millis() as u64)
            .ignore();
    }
}

/// Adds a count of the channel's subscribers to a pipeline (one reply).
pub(crate) fn add_subscriber_count(pipe: &mut redis::Pipeline, sink: &EventSink) {
    pipe.cmd("PUBSUB").arg("NUMSUB").arg(&sink.channel);
}

/// Reads the reply of [`add_subscriber_count`].
pub(crate) fn subscribers(reply: redis::Value) -> Result<u64, BrokerError> {
    let counts: Vec<(String, u64)> = redis::from_redis_value(reply)?;
    Ok(counts.first().map_or(0, |(_, n)| *n))
}

//! Lifecycle events and job status records: published in batches, replayed
//! from the capped stream, followed by subscribers.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt as _};

use super::{Broker, BrokerError, keys};
use crate::event::EventBatch;

/// Where events go.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    /// The pub/sub channel.
    pub(crate) channel: String,
    /// The replay stream (its key is the channel's name) and its
    /// approximate length; `None` when replay is off.
    pub(crate) stream: Option<(String, u64)>,
}

impl EventSink {
    /// The sink of the `[events]` configuration.
    pub(crate) fn new(channel: &str, stream_maxlen: u64) -> Self {
        Self {
            channel: channel.to_owned(),
            stream: (stream_maxlen > 0).then(|| (keys::event_stream(channel), stream_maxlen)),
        }
    }
}

/// New fields of a job's status record `conveyor:job:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusUpdate {
    /// The job.
    pub(crate) id: String,
    /// Fields to set.
    pub(crate) fields: Vec<(&'static str, String)>,
    /// How long the record lives after this update.
    pub(crate) ttl: Duration,
}

impl Broker {
    /// Up to `count` stream entries after `after` (exclusive; a stream id,
    /// or `ms-0` for a time): `(entry id, its events in order)`. An entry
    /// holds events of one write, one per line of its field `events`.
    pub(crate) async fn replay(
        &self,
        stream: &str,
        after: &str,
        count: usize,
    ) -> Result<Vec<(String, Vec<String>)>, BrokerError> {
        self.entries("XRANGE", stream, &format!("({after}"), "+", count)
            .await
    }

    /// The newest `count` entries after `after` (exclusive), newest first.
    pub(crate) async fn stream_tail(
        &self,
        stream: &str,
        after: &str,
        count: usize,
    ) -> Result<Vec<(String, Vec<String>)>, BrokerError> {
        self.entries("XREVRANGE", stream, "+", &format!("({after}"), count)
            .await
    }

    /// Up to `count` entries older than `before` (exclusive; from the
    /// newest when `None`), newest first.
    pub(crate) async fn stream_before(
        &self,
        stream: &str,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, Vec<String>)>, BrokerError> {
        let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        self.entries("XREVRANGE", stream, &end, "-", count).await
    }

    /// `XRANGE` or `XREVRANGE` from `start` to `end`, as `(id, events)`.
    async fn entries(
        &self,
        command: &str,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<(String, Vec<String>)>, BrokerError> {
        let mut conn = self.conn().await?;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd(command)
            .arg(stream)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(entries.into_iter().map(entry_events).collect())
    }

    /// The id of the stream's newest entry; `0-0` when it is empty.
    pub(crate) async fn stream_last_id(&self, stream: &str) -> Result<String, BrokerError> {
        let mut conn = self.conn().await?;
        let last: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(last
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }

    /// Follows a channel on a dedicated connection. The stream ends when the
    /// connection is lost, or (with Sentinel) when its server is no longer
    /// the master.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<Subscription, BrokerError> {
        let (mut pubsub, ended) = self.pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(Subscription(Box::pin(
            pubsub
                .into_on_message()
                .map(|msg| msg.get_payload_bytes().to_vec())
                .take_until(ended),
        )))
    }

    /// A job's status record; empty when there is none.
    pub(crate) async fn job_status(
        &self,
        id: &str,
    ) -> Result<HashMap<String, String>, BrokerError> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("HGETALL")
            .arg(keys::job(id))
            .query_async(&mut conn)
            .await?)
    }
}

/// An entry's events, in order: one per line of its field `events` (a
/// field `event` per event in entries of earlier versions).
fn entry_events((id, fields): (String, Vec<(String, String)>)) -> (String, Vec<String>) {
    let events = fields
        .into_iter()
        .flat_map(|(k, v)| match k.as_str() {
            "events" => v.lines().map(str::to_owned).collect(),
            "event" => vec![v],
            _ => Vec::new(),
        })
        .collect();
    (id, events)
}

/// How long [`StreamReader::next`] waits for a new entry.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// Follows a stream as it grows, on a connection of its own (`XREAD BLOCK`).
pub(crate) struct StreamReader {
    conn: super::Conn,
    stream: String,
    after: String,
}

impl Broker {
    /// A reader of `stream`'s entries after `after` (exclusive).
    pub(crate) async fn stream_reader(
        &self,
        stream: &str,
        after: &str,
    ) -> Result<StreamReader, BrokerError> {
        Ok(StreamReader {
            conn: self.dedicated(READ_BLOCK).await?,
            stream: stream.to_owned(),
            after: after.to_owned(),
        })
    }
}

impl StreamReader {
    /// Up to `count` entries after the last one read: the id of the last,
    /// and their events, one JSON object a line. Waits up to a second for
    /// one; `None` when none came.
    pub(crate) async fn next(
        &mut self,
        count: usize,
    ) -> Result<Option<(String, String)>, BrokerError> {
        type Reply = Option<Vec<(String, Vec<(String, Vec<(String, String)>)>)>>;
        let reply: Reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(&self.after)
            .query_async(&mut self.conn)
            .await?;
        let mut events = String::new();
        let mut last = None;
        for (id, fields) in reply.into_iter().flatten().flat_map(|(_, entries)| entries) {
            for (field, value) in fields {
                if field == "events" || field == "event" {
                    if !events.is_empty() {
                        events.push('\n');
                    }
                    events.push_str(value.trim_end_matches('\n'));
                }
            }
            last = Some(id);
        }
        Ok(last.map(|id| {
            self.after.clone_from(&id);
            (id, events)
        }))
    }
}

/// Messages of a subscribed channel.
pub(crate) struct Subscription(Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>);

impl Subscription {
    /// The next message; `None` once the connection is gone.
    pub(crate) async fn next(&mut self) -> Option<Vec<u8>> {
        self.0.next().await
    }
}

/// Most events in one replay stream entry, written as lines of one field
/// `events`. An entry per event, or a field per event, was most of what an
/// event cost Redis (per event, all told: 1.6 µs one per entry, 0.44 µs 16
/// fields per entry, 0.16 µs 64 lines in one field).
const EVENTS_PER_ENTRY: usize = 64;

/// Adds a PUBLISH of each event (no replies).
pub(crate) fn add_publish(pipe: &mut redis::Pipeline, sink: &EventSink, events: &EventBatch) {
    for e in events.iter() {
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
    events: &EventBatch,
) {
    if events.is_empty() {
        return;
    }
    let call = super::scripts::publish_if_heard::Call {
        channel: &sink.channel,
        events,
    };
    pipe.invoke_script(&call.invocation()).ignore();
}

/// Appends events to the replay stream, if there is one (no replies): in
/// entries of up to [`EVENTS_PER_ENTRY`] events as even as they come,
/// trimmed so that the stream keeps about `stream_maxlen` events.
pub(crate) fn add_stream(pipe: &mut redis::Pipeline, sink: &EventSink, events: &EventBatch) {
    let Some((stream, keep)) = &sink.stream else {
        return;
    };
    let n = events.len();
    if n == 0 {
        return;
    }
    let per_entry = n.div_ceil(n.div_ceil(EVENTS_PER_ENTRY));
    let entries = keep.div_ceil(per_entry as u64);
    for from in (0..n).step_by(per_entry) {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(entries)
            .arg("*")
            .arg("events")
            .arg(events.lines(from, (from + per_entry).min(n)))
            .ignore();
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

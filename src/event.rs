//! The lifecycle event wire format: one JSON object per transition,
//! published on the events channel (and appended to the replay stream).
//!
//! Common fields: `type`, `queue`, `id`, `attempt`, `node`, `at` (RFC 3339,
//! ms), `seq` (grows by one with each event a node publishes, so a
//! subscriber can tell it missed some); `duration_ms` on outcomes; `error`,
//! `retry_at` and `reason` where they apply. Never payloads, addresses or
//! secrets: only ids, counts, times and error texts.

use std::borrow::Cow;

use arrayvec::ArrayString;
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A job was enqueued by `conveyor enqueue`.
    #[serde(rename = "job.enqueued")]
    Enqueued,
    /// A handler run began.
    #[serde(rename = "job.started")]
    Started,
    /// A handler run succeeded.
    #[serde(rename = "job.succeeded")]
    Succeeded,
    /// A handler run failed (`retry_at` when it will be retried).
    #[serde(rename = "job.failed")]
    Failed,
    /// A job was dead-lettered.
    #[serde(rename = "job.dead")]
    Dead,
    /// A job went back to its queue: its daemon died (`reason: crash`) or
    /// shut down before it finished (`reason: shutdown`).
    #[serde(rename = "job.recovered")]
    Recovered,
    /// A daemon started working.
    #[serde(rename = "node.started")]
    NodeStarted,
    /// A daemon began shutting down.
    #[serde(rename = "node.stopping")]
    NodeStopping,
    /// A daemon finished shutting down.
    #[serde(rename = "node.stopped")]
    NodeStopped,
    /// `conveyor cancel`: a job ended as dead, `reason` what it was doing
    /// (`waiting`, `scheduled`, `running`).
    #[serde(rename = "job.cancelled")]
    Cancelled,
    /// `conveyor pause`: no daemon takes the queue's jobs until resumed.
    #[serde(rename = "queue.paused")]
    QueuePaused,
    /// `conveyor resume`: the daemons take the queue's jobs again.
    #[serde(rename = "queue.resumed")]
    QueueResumed,
    /// A job pushed to a queue with `debounce` joined a burst of jobs that
    /// run as one (its id is empty for a raw payload, which has none).
    #[serde(rename = "job.debounced")]
    Debounced,
    /// A flow was stored and its first nodes released (`flow`).
    #[serde(rename = "flow.submitted")]
    FlowSubmitted,
    /// Every node of a flow ended (`flow`, `status`: `succeeded`,
    /// `failed` or `cancelled`).
    #[serde(rename = "flow.finished")]
    FlowFinished,
    /// A flow's node ended without running: a parent it needed did not
    /// succeed (`flow`, `id`, `queue`).
    #[serde(rename = "job.skipped")]
    Skipped,
    /// A type this version does not know (from a newer publisher).
    #[serde(other)]
    Unknown,
}

impl EventType {
    /// The wire name, e.g. `job.succeeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Enqueued => "job.enqueued",
            EventType::Started => "job.started",
            EventType::Succeeded => "job.succeeded",
            EventType::Failed => "job.failed",
            EventType::Dead => "job.dead",
            EventType::Recovered => "job.recovered",
            EventType::NodeStarted => "node.started",
            EventType::NodeStopping => "node.stopping",
            EventType::NodeStopped => "node.stopped",
            EventType::Cancelled => "job.cancelled",
            EventType::QueuePaused => "queue.paused",
            EventType::QueueResumed => "queue.resumed",
            EventType::Debounced => "job.debounced",
            EventType::FlowSubmitted => "flow.submitted",
            EventType::FlowFinished => "flow.finished",
            EventType::Skipped => "job.skipped",
            EventType::Unknown => "unknown",
        }
    }

    /// Whether this is an outcome (what `events = "outcomes"` keeps).
    pub fn is_outcome(self) -> bool {
        !matches!(self, EventType::Started)
    }
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The queue's name (job events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The job's id (job events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The run's number, 1 on the first (job events; 0 before any run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The publishing node (a daemon, or `cli-<host>-<pid>`).
    pub node: String,
    /// When, RFC 3339 with milliseconds.
    pub at: String,
    /// The publisher's sequence number.
    pub seq: u64,
    /// How long the run took (outcomes of a run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed or died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it will run again (`job.failed` with attempts left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// Why it was recovered (`crash`, `shutdown`) or died (`poison`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The schedule whose tick enqueued it (`job.enqueued`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The flow (flow events, and events of a flow's jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// How a flow ended (`flow.finished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// An event before the publisher stamps it with `node`, `at` and `seq`. It
/// borrows what it can: a daemon writes one per transition, and copying the
/// queue's name and the job's id only to write them out once was a fair part
/// of what an event cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Draft<'a> {
    /// What happened.
    pub(crate) kind: EventType,
    /// The queue.
    pub(crate) queue: Option<Cow<'a, str>>,
    /// The job.
    pub(crate) id: Option<Cow<'a, str>>,
    /// The run's number.
    pub(crate) attempt: Option<u32>,
    /// The run's length.
    pub(crate) duration_ms: Option<u64>,
    /// The failure.
    pub(crate) error: Option<Cow<'a, str>>,
    /// The next run.
    pub(crate) retry_at: Option<Cow<'a, str>>,
    /// The reason.
    pub(crate) reason: Option<Cow<'a, str>>,
    /// The schedule.
    pub(crate) schedule: Option<Cow<'a, str>>,
    /// The flow.
    pub(crate) flow: Option<Cow<'a, str>>,
    /// How a flow ended.
    pub(crate) status: Option<Cow<'a, str>>,
}

impl<'a> Draft<'a> {
    /// A job event.
    pub(crate) fn job(
        kind: EventType,
        queue: impl Into<Cow<'a, str>>,
        id: impl Into<Cow<'a, str>>,
        attempt: u32,
    ) -> Self {
        Self {
            kind,
            queue: Some(queue.into()),
            id: Some(id.into()),
            attempt: Some(attempt),
            ..Self::node(kind)
        }
    }

    /// A queue's event (no job).
    pub(crate) fn queue(kind: EventType, queue: impl Into<Cow<'a, str>>) -> Self {
        Self {
            queue: Some(queue.into()),
            ..Self::node(kind)
        }
    }

    /// A node event.
    pub(crate) fn node(kind: EventType) -> Self {
        Self {
            kind,
            queue: None,
            id: None,
            attempt: None,
            duration_ms: None,
            error: None,
            retry_at: None,
            reason: None,
            schedule: None,
            flow: None,
            status: None,
        }
    }

    /// A flow's event.
    pub(crate) fn flow(kind: EventType, flow: impl Into<Cow<'a, str>>) -> Self {
        Self {
            flow: Some(flow.into()),
            ..Self::node(kind)
        }
    }

    /// Adds the flow of a flow's job, if it is one.
    pub(crate) fn in_flow(mut self, flow: Option<&'a str>) -> Self {
        self.flow = flow.map(Cow::Borrowed);
        self
    }

    /// Adds how a flow ended.
    pub(crate) fn status(mut self, status: impl Into<Cow<'a, str>>) -> Self {
        self.status = Some(status.into());
        self
    }

    /// Adds the run's length.
    pub(crate) fn took(mut self, ms: u64) -> Self {
        self.duration_ms = Some(ms);
        self
    }

    /// Adds the failure.
    pub(crate) fn error(mut self, error: impl Into<Cow<'a, str>>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// Adds the next run's time.
    pub(crate) fn retry_at(mut self, at: impl Into<Cow<'a, str>>) -> Self {
        self.retry_at = Some(at.into());
        self
    }

    /// Adds the reason.
    pub(crate) fn reason(mut self, reason: impl Into<Cow<'a, str>>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Adds the schedule that enqueued the job.
    pub(crate) fn schedule(mut self, name: impl Into<Cow<'a, str>>) -> Self {
        self.schedule = Some(name.into());
        self
    }

    /// The draft owning all it holds, to keep.
    pub(crate) fn into_owned(self) -> Draft<'static> {
        let own = |s: Option<Cow<'a, str>>| s.map(|s| Cow::Owned(s.into_owned()));
        Draft {
            kind: self.kind,
            queue: own(self.queue),
            id: own(self.id),
            attempt: self.attempt,
            duration_ms: self.duration_ms,
            error: own(self.error),
            retry_at: own(self.retry_at),
            reason: own(self.reason),
            schedule: own(self.schedule),
            flow: own(self.flow),
            status: own(self.status),
        }
    }

    /// The stamped event as JSON: the same bytes as serializing
    /// [`Draft::stamp`]'s event.
    pub(crate) fn to_json(&self, node: &str, at: &str, seq: u64) -> String {
        let mut json = String::with_capacity(256);
        self.write_json(&mut json, &Stamp::new(node, at), seq);
        json
    }

    /// Appends the stamped event as JSON.
    pub(crate) fn write_json(&self, out: &mut String, stamp: &Stamp, seq: u64) {
        write_json(
            out,
            Fields {
                kind: self.kind,
                queue: self.queue.as_deref(),
                id: self.id.as_deref(),
                attempt: self.attempt,
                stamp,
                seq,
                duration_ms: self.duration_ms,
                error: self.error.as_deref(),
                retry_at: self.retry_at.as_deref(),
                reason: self.reason.as_deref(),
                schedule: self.schedule.as_deref(),
                flow: self.flow.as_deref(),
                status: self.status.as_deref(),
            },
        );
    }

    /// The draft packed to travel to the publisher: without allocating when
    /// it holds no more than a queue and an id that fit inline, which is
    /// nearly always (started, succeeded, node events).
    pub(crate) fn pack(&self) -> Packed {
        let queue = self.queue.as_deref().unwrap_or("");
        let id = self.id.as_deref().unwrap_or("");
        let plain = self.error.is_none()
            && self.retry_at.is_none()
            && self.reason.is_none()
            && self.schedule.is_none()
            && self.flow.is_none()
            && self.status.is_none();
        if plain && queue.len() + id.len() <= INLINE {
            let mut text = ArrayString::new();
            text.push_str(queue);
            text.push_str(id);
            return Packed::Inline {
                kind: self.kind,
                queue: self.queue.is_some().then_some(queue.len()),
                id: self.id.is_some(),
                attempt: self.attempt,
                duration_ms: self.duration_ms,
                text,
            };
        }
        Packed::Boxed(Box::new(self.clone().into_owned()))
    }

    /// Stamps the draft.
    #[cfg(test)]
    pub(crate) fn stamp(self, node: &str, at: String, seq: u64) -> Event {
        let own = |s: Option<Cow<'a, str>>| s.map(Cow::into_owned);
        Event {
            kind: self.kind,
            queue: own(self.queue),
            id: own(self.id),
            attempt: self.attempt,
            node: node.to_owned(),
            at,
            seq,
            duration_ms: self.duration_ms,
            error: own(self.error),
            retry_at: own(self.retry_at),
            reason: own(self.reason),
            schedule: own(self.schedule),
            flow: own(self.flow),
            status: own(self.status),
        }
    }
}

/// Who published an event and when, written out once for all the events of
/// a node in one millisecond: `,"node":…,"at":…,"seq":`, between an event's
/// job fields and its number.
#[derive(Debug, Clone)]
pub(crate) struct Stamp(String);

impl Stamp {
    /// The stamp of events published by `node` at `at`.
    pub(crate) fn new(node: &str, at: &str) -> Self {
        let mut text = String::with_capacity(node.len() + at.len() + 24);
        text.push_str(",\"node\":");
        push_json_str(&mut text, node);
        text.push_str(",\"at\":");
        push_json_str(&mut text, at);
        text.push_str(",\"seq\":");
        Self(text)
    }
}

/// An event's fields, borrowed, in wire order.
struct Fields<'a> {
    kind: EventType,
    queue: Option<&'a str>,
    id: Option<&'a str>,
    attempt: Option<u32>,
    stamp: &'a Stamp,
    seq: u64,
    duration_ms: Option<u64>,
    error: Option<&'a str>,
    retry_at: Option<&'a str>,
    reason: Option<&'a str>,
    schedule: Option<&'a str>,
    flow: Option<&'a str>,
    status: Option<&'a str>,
}

/// Writes an event. A daemon writes one per transition: the names are
/// written with their punctuation in one piece each, and strings that need
/// no escaping (ids, names, times) are copied as they are.
fn write_json(out: &mut String, f: Fields<'_>) {
    out.push_str("{\"type\":\"");
    out.push_str(f.kind.as_str());
    out.push('"');
    string_field(out, ",\"queue\":", f.queue);
    string_field(out, ",\"id\":", f.id);
    number_field(out, ",\"attempt\":", f.attempt.map(u64::from));
    out.push_str(&f.stamp.0);
    out.push_str(itoa::Buffer::new().format(f.seq));
    number_field(out, ",\"duration_ms\":", f.duration_ms);
    string_field(out, ",\"error\":", f.error);
    string_field(out, ",\"retry_at\":", f.retry_at);
    string_field(out, ",\"reason\":", f.reason);
    string_field(out, ",\"schedule\":", f.schedule);
    string_field(out, ",\"flow\":", f.flow);
    string_field(out, ",\"status\":", f.status);
    out.push('}');
}

/// `name` (with its quotes, colon and leading comma) and the string, if any.
#[inline]
fn string_field(out: &mut String, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        out.push_str(name);
        push_json_str(out, value);
    }
}

/// `name` (as for [`string_field`]) and the number, if any.
#[inline]
fn number_field(out: &mut String, name: &str, value: Option<u64>) {
    if let Some(value) = value {
        out.push_str(name);
        out.push_str(itoa::Buffer::new().format(value));
    }
}

/// Most bytes of queue name and id a [`Packed`] draft holds inline.
const INLINE: usize = 80;

/// A draft on its way to the publisher, who numbers and writes it (see
/// [`Draft::pack`]).
#[derive(Debug, Clone)]
pub(crate) enum Packed {
    /// A queue and an id, one after the other in `text`, and numbers.
    Inline {
        /// What happened.
        kind: EventType,
        /// The queue name's length, if there is one.
        queue: Option<usize>,
        /// Whether the rest of `text` is an id.
        id: bool,
        /// The run's number.
        attempt: Option<u32>,
        /// The run's length.
        duration_ms: Option<u64>,
        /// The queue's name and the id.
        text: ArrayString<INLINE>,
    },
    /// Anything else.
    Boxed(Box<Draft<'static>>),
}

impl Packed {
    /// The draft again, borrowing from here.
    pub(crate) fn draft(&self) -> Draft<'_> {
        match self {
            Packed::Inline {
                kind,
                queue,
                id,
                attempt,
                duration_ms,
                text,
            } => {
                let (q, rest) = text.split_at(queue.unwrap_or(0));
                Draft {
                    queue: queue.map(|_| Cow::Borrowed(q)),
                    id: id.then_some(Cow::Borrowed(rest)),
                    attempt: *attempt,
                    duration_ms: *duration_ms,
                    ..Draft::node(*kind)
                }
            }
            Packed::Boxed(draft) => Draft::clone(draft),
        }
    }
}

/// Numbered events in the order they are published, written one after
/// another, each ending in a newline: a replay stream entry's text is a run
/// of them as it stands, and each one's own bytes are what is published.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventBatch {
    text: String,
    /// Where each event ends (at its newline).
    ends: Vec<usize>,
}

impl EventBatch {
    /// Adds an event, stamped.
    pub(crate) fn push(&mut self, draft: &Draft<'_>, stamp: &Stamp, seq: u64) {
        if self.text.is_empty() {
            // Events are about the same size: one allocation for a batch.
            self.text.reserve(256 * 64);
        }
        draft.write_json(&mut self.text, stamp, seq);
        self.end_event();
    }

    /// Adds an event written whole.
    pub(crate) fn push_json(&mut self, json: &str) {
        self.text.push_str(json);
        self.end_event();
    }

    fn end_event(&mut self) {
        self.ends.push(self.text.len());
        self.text.push('\n');
    }

    /// Adds another batch's events after these.
    pub(crate) fn append(&mut self, other: EventBatch) {
        if self.text.is_empty() {
            *self = other;
            return;
        }
        let offset = self.text.len();
        self.text.push_str(&other.text);
        self.ends
            .extend(other.ends.into_iter().map(|end| end + offset));
    }

    /// How many events it holds.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds none.
    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each event's JSON, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|&end| end + 1));
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.text[start..end])
    }

    /// Events `from..to` as lines, each ending in a newline.
    pub(crate) fn lines(&self, from: usize, to: usize) -> &str {
        let start = if from == 0 {
            0
        } else {
            self.ends[from - 1] + 1
        };
        &self.text[start..=self.ends[to - 1]]
    }
}

/// A JSON string: copied as it is when nothing in it needs escaping (ids,
/// names, times), else escaped by serde_json.
fn push_json_str(out: &mut String, s: &str) {
    if needs_escape(s.as_bytes()) {
        match serde_json::to_string(s) {
            Ok(escaped) => out.push_str(&escaped),
            Err(_) => out.push_str("\"\""),
        }
    } else {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Whether a JSON string needs escapes: a control character, `"` or `\\`.
/// Eight bytes at a time (a byte-wise check was most of an event's cost).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // Nonzero iff a byte of x is below n (for n up to 128).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let is = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        if below(x, 0x20) | is(x, b'"') | is(x, b'\\') != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_the_design_says() {
        let e = Draft::job(EventType::Failed, "email", "j1", 2)
            .took(15)
            .error("451 try later")
            .retry_at("2026-11-24T10:00:00.000Z")
            .stamp("n1", "2026-11-24T09:59:45.000Z".into(), 7);
        let v: serde_json::Value = serde_json::to_value(&e).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "type": "job.failed", "queue": "email", "id": "j1", "attempt": 2,
                "node": "n1", "at": "2026-11-24T09:59:45.000Z", "seq": 7,
                "duration_ms": 15, "error": "451 try later",
                "retry_at": "2026-11-24T10:00:00.000Z"
            })
        );
        let back: Event = serde_json::from_value(v).expect("parses back");
        assert_eq!(back, e);
    }

    #[test]
    fn written_json_is_what_serde_writes() {
        let drafts = [
            Draft::node(EventType::NodeStarted),
            Draft::job(EventType::Started, "email", "01a2b3", 1),
            Draft::job(EventType::Failed, "q\"uote", "id\\with\nescapes", 7)
                .took(12)
                .error("451 \"try\" later\t\u{1}é")
                .retry_at("2026-11-24T10:00:00.000Z"),
            Draft::job(EventType::Recovered, "q", "j", 0).reason("crash"),
            Draft::job(EventType::Succeeded, "q", "long-".repeat(20), 3).took(1),
        ];
        for d in drafts {
            let direct = d.to_json("node-1", "2026-11-24T09:59:45.000Z", 42);
            let mut batch = EventBatch::default();
            let stamp = Stamp::new("node-1", "2026-11-24T09:59:45.000Z");
            batch.push(&d.pack().draft(), &stamp, 42);
            assert_eq!(batch.iter().collect::<Vec<_>>(), [direct.as_str()]);
            let serde =
                serde_json::to_string(&d.stamp("node-1", "2026-11-24T09:59:45.000Z".into(), 42))
                    .expect("json");
            assert_eq!(direct, serde);
        }
    }

    #[test]
    fn a_batch_is_lines_of_events_that_can_be_taken_apart() {
        let mut batch = EventBatch::default();
        let draft = Draft::job(EventType::Started, "q", "j\n1", 1);
        for seq in [7, 8] {
            batch.push(&draft, &Stamp::new("n", "t"), seq);
        }
        let mut more = EventBatch::default();
        more.push_json(r#"{"seq":9}"#);
        batch.append(more);
        assert_eq!(batch.len(), 3);
        let events: Vec<&str> = batch.iter().collect();
        assert!(events[0].contains(r#""id":"j\n1""#) && events[0].contains(r#""seq":7"#));
        assert!(events[1].contains(r#""seq":8"#));
        assert_eq!(events[2], r#"{"seq":9}"#);
        assert_eq!(
            batch.lines(0, 3),
            format!("{}\n{}\n{}\n", events[0], events[1], events[2])
        );
        assert_eq!(batch.lines(1, 2), format!("{}\n", events[1]));
        assert_eq!(batch.lines(2, 3).lines().collect::<Vec<_>>(), [events[2]]);
    }

    #[test]
    fn strings_are_escaped_exactly_when_json_needs_it() {
        for b in 0..=255u8 {
            let c = char::from(b);
            for at in [0, 3, 7, 8, 15, 20] {
                let mut s = "x".repeat(21);
                s.replace_range(at..=at, c.encode_utf8(&mut [0; 4]));
                let mut out = String::new();
                push_json_str(&mut out, &s);
                assert_eq!(
                    out,
                    serde_json::to_string(&s).expect("json"),
                    "{b:#x} at {at}"
                );
                let needs = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(needs_escape(s.as_bytes()), needs, "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn node_events_carry_no_job_fields_and_unknown_types_parse() {
        let e = Draft::node(EventType::NodeStarted).stamp("n1", "t".into(), 1);
        let text = serde_json::to_string(&e).expect("json");
        assert_eq!(
            text,
            r#"{"type":"node.started","node":"n1","at":"t","seq":1}"#
        );
        let future: Event =
            serde_json::from_str(r#"{"type":"job.exploded","node":"n","at":"t","seq":3}"#)
                .expect("tolerant");
        assert_eq!(future.kind, EventType::Unknown);
        assert!(!EventType::Started.is_outcome() && EventType::Dead.is_outcome());
    }
}

//! The job as a handler sees it, and how a handler's run can fail.
//!
//! A [`Job`] is one run of one taken item: its id, queue, attempt and
//! payload, the deadline of this run, a cancellation the daemon trips when
//! the run must stop, and a place for the run's result. A [`HandlerError`]
//! carries the retry decision (transient or permanent) and, optionally, how
//! long to wait before the next attempt.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::config::Backoff;
use crate::envelope::{Envelope, Parsed};

mod state;
pub(crate) use state::JobState;

/// Largest result a run may keep, in bytes of JSON text.
pub(crate) const MAX_RESULT_BYTES: usize = 64 * 1024;

/// Largest `flow_add` a flow's node may return, in bytes of JSON text.
pub(crate) const MAX_FLOW_ADD_BYTES: usize = 8 * 1024 * 1024;

/// The deadline of a job built outside a daemon (tests); the daemon sets
/// each run's from its timeout.
const UNSET_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest run a job's own `timeout_ms` may ask for: the longest a
/// queue's `timeout` may be.
const MAX_TIMEOUT: Duration = *crate::config::bounds::TIMEOUT.end();

/// The longest delay before a next attempt that a handler may ask for
/// ([`HandlerError::retry_in`]: a worker's `retry_in_ms`, a server's
/// `Retry-After`): 7 days. A longer ask is cut to it, and the cut logged.
pub(crate) const MAX_RETRY_IN: Duration = *crate::config::bounds::BACKOFF.end();

/// A job taken from a queue, as the daemon runs it and a handler sees it.
#[derive(Debug)]
pub struct Job {
    queue: Arc<str>,
    /// The item exactly as it sits in the in-flight list: the outcome script
    /// removes it by value, so it must never be re-encoded.
    item: bytes::Bytes,
    envelope: Envelope,
    was_raw: bool,
    /// When the daemon took it (made this job of it).
    taken: Instant,
    deadline: Instant,
    /// Made on first use: most runs are never cancelled, nor asked.
    cancel: OnceLock<CancellationToken>,
    result: Mutex<Option<Box<RawValue>>>,
    /// This run's span, when tracing is on.
    trace: Option<opentelemetry::Context>,
    /// The flow it is a node of, if any.
    flow: Option<Box<str>>,
    /// The nodes a flow's node adds to its flow (its result's `flow_add`).
    flow_add: Mutex<Option<Box<RawValue>>>,
}

impl Job {
    /// A job from an item that parsed.
    pub fn new(queue: Arc<str>, item: impl Into<bytes::Bytes>, parsed: Parsed) -> Self {
        let taken = Instant::now();
        // Fields past the envelope's own are rare: one look when there are.
        let flow = match parsed.envelope.extra.is_empty() {
            true => None,
            false => parsed
                .envelope
                .extra_text("flow")
                .map(String::into_boxed_str),
        };
        Self {
            flow,
            flow_add: Mutex::new(None),
            queue,
            item: item.into(),
            envelope: parsed.envelope,
            was_raw: parsed.was_raw,
            taken,
            deadline: taken + UNSET_TIMEOUT,
            cancel: OnceLock::new(),
            result: Mutex::new(None),
            trace: None,
        }
    }

    /// The job's id; made up when the item was a raw payload.
    pub fn id(&self) -> &str {
        &self.envelope.id
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The number of this run: 1 on the first.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt.saturating_add(1)
    }

    /// The payload's JSON text, exactly as the producer wrote it.
    pub fn payload(&self) -> &RawValue {
        &self.envelope.payload
    }

    /// The flow this job is a node of (DESIGN section 13), if it is one.
    pub fn flow(&self) -> Option<&str> {
        self.flow.as_deref()
    }

    /// A flow node's name in its flow (its id is `<flow>:<name>`).
    pub fn flow_node(&self) -> Option<&str> {
        let flow = self.flow.as_deref()?;
        self.id().strip_prefix(flow)?.strip_prefix(':')
    }

    /// A flow node's parents, as a JSON object by name:
    /// `{"<name>": {"status": "succeeded" | "dead" | "skipped" |
    /// "cancelled", "result": <its result, if any>}}`; `None` for a job
    /// outside a flow (`{}` for a node that waits for nothing).
    pub fn parents(&self) -> Option<&RawValue> {
        self.flow.as_ref()?;
        self.envelope
            .extra
            .iter()
            .find(|(k, _)| k == "parents")
            .map(|(_, v)| &**v)
    }

    /// The payload read as `T`; a mismatch is a permanent error, since
    /// retrying will not change the payload.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_str(self.envelope.payload.get())
            .map_err(|e| HandlerError::permanent(format!("malformed payload: {e}")))
    }

    /// When this run's timeout expires. The daemon stops waiting for the
    /// handler then (and fails the run as transient); work the handler
    /// started elsewhere should end by then too.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Completes once the daemon no longer wants this run: its timeout
    /// expired, the daemon is abandoning it at the end of a shutdown, or the
    /// job was cancelled. The handler's own future is dropped at that point;
    /// this is for work it handed to other tasks or processes.
    pub async fn cancelled(&self) {
        self.cancel
            .get_or_init(CancellationToken::new)
            .cancelled()
            .await
    }

    /// Whether [`Job::cancelled`] has completed.
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .get()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Keeps `result` as this run's result: a queue that tracks its jobs
    /// (`track = true`) stores it in the job's status record when the run
    /// succeeds. A result of more than 64 KiB of JSON is a
    /// permanent error (so is one that does not serialize).
    pub fn set_result<T: Serialize + ?Sized>(&self, result: &T) -> Result<(), HandlerError> {
        let json = serde_json::value::to_raw_value(result)
            .map_err(|e| HandlerError::permanent(format!("the result is not JSON: {e}")))?;
        self.set_result_json(json)
    }

    /// [`Job::set_result`] for a result that is JSON text already.
    ///
    /// A flow's node may add nodes to its flow with a result that is an
    /// object with `flow_add` (DESIGN section 13): that field, up to 8 MiB,
    /// is taken out for the flow, and the rest is the result.
    pub fn set_result_json(&self, json: Box<RawValue>) -> Result<(), HandlerError> {
        let (json, add) = match self.flow.is_some() && json.get().contains("\"flow_add\"") {
            true => crate::flow::split_add(json).map_err(HandlerError::permanent)?,
            false => (Some(json), None),
        };
        if let Some(add) = &add {
            if add.get().len() > MAX_FLOW_ADD_BYTES {
                return Err(HandlerError::permanent(format!(
                    "the result's flow_add is {} bytes of JSON, more than the {MAX_FLOW_ADD_BYTES} taken",
                    add.get().len()
                )));
            }
        }
        *self.flow_add.lock().unwrap_or_else(PoisonError::into_inner) = add;
        let Some(json) = json else {
            *self.result.lock().unwrap_or_else(PoisonError::into_inner) = None;
            return Ok(());
        };
        if json.get().len() > MAX_RESULT_BYTES {
            return Err(HandlerError::permanent(format!(
                "the result is {} bytes of JSON, more than the {MAX_RESULT_BYTES} kept",
                json.get().len()
            )));
        }
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(json);
        Ok(())
    }

    /// This run's span as an OpenTelemetry context, when the daemon traces
    /// (`[tracing]`): a Rust handler starts its own spans with it as their
    /// parent (`tracer.start_with_context(name, cx)`), so they are children
    /// of the job's. `None` when tracing is off.
    pub fn trace_context(&self) -> Option<&opentelemetry::Context> {
        self.trace.as_ref()
    }

    /// The W3C `traceparent` of this run's span, to pass on to a service
    /// the handler calls (the http handler sends it as a header, the exec
    /// handler in its request); `None` when tracing is off.
    pub fn traceparent(&self) -> Option<String> {
        use opentelemetry::trace::TraceContextExt as _;
        let cx = self.trace.as_ref()?;
        let span = cx.span();
        let ids = span.span_context();
        Some(format!(
            "00-{}-{}-{:02x}",
            ids.trace_id(),
            ids.span_id(),
            ids.trace_flags().to_u8()
        ))
    }

    /// The W3C `tracestate` that goes with [`Job::traceparent`], if the
    /// producer's trace has one.
    pub fn tracestate(&self) -> Option<String> {
        use opentelemetry::trace::TraceContextExt as _;
        let cx = self.trace.as_ref()?;
        let state = cx.span().span_context().trace_state().header();
        (!state.is_empty()).then_some(state)
    }

    /// Gives this run its span.
    pub(crate) fn set_trace(&mut self, cx: opentelemetry::Context) {
        self.trace = Some(cx);
    }

    /// The nodes this flow node adds to its flow, taken out of the job.
    pub(crate) fn take_flow_add(&self) -> Option<Box<RawValue>> {
        self.flow_add
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The result set so far, taken out of the job.
    pub(crate) fn take_result(&self) -> Option<Box<RawValue>> {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Sets the deadline of the run about to start. Saturating: a
    /// producer's `timeout_ms` is only bounded by [`Job::timeout`], and no
    /// value may make the daemon panic.
    pub(crate) fn start_run(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.deadline = now
            .checked_add(timeout)
            .or_else(|| now.checked_add(MAX_TIMEOUT))
            .unwrap_or(now);
    }

    /// How long its first run waited to start: since the envelope's
    /// `created_at` (push time, as producers and `conveyor enqueue` write
    /// it), or since the daemon took it when it has none (a raw payload).
    /// `None` for a later attempt, whose wait is its backoff.
    pub(crate) fn waited(&self, now_ms: i64) -> Option<Duration> {
        if self.envelope.attempt > 0 {
            return None;
        }
        let pushed = self
            .envelope
            .created_at
            .as_deref()
            .and_then(|at| at.parse::<jiff::Timestamp>().ok());
        Some(match pushed {
            Some(at) => Duration::from_millis(
                u64::try_from(now_ms.saturating_sub(at.as_millisecond())).unwrap_or(0),
            ),
            None => self.taken.elapsed(),
        })
    }

    /// Tells whoever watches [`Job::cancelled`] that the run is over.
    pub(crate) fn cancel(&self) {
        self.cancel.get_or_init(CancellationToken::new).cancel();
    }

    /// The envelope (made up for a raw payload).
    pub(crate) fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The item bytes as taken, shared (no copy).
    pub(crate) fn item_bytes(&self) -> bytes::Bytes {
        self.item.clone()
    }

    /// Whether the item was a raw payload.
    pub(crate) fn was_raw(&self) -> bool {
        self.was_raw
    }

    /// Attempts allowed: the envelope's own limit, else the queue's.
    pub(crate) fn max_attempts(&self, queue_default: u32) -> u32 {
        self.envelope.max_attempts.unwrap_or(queue_default)
    }

    /// How long this job's runs may take: the envelope's own limit (at most
    /// the configuration's longest, 7 days), else the queue's.
    pub(crate) fn timeout(&self, queue_default: Duration) -> Duration {
        self.envelope
            .timeout_ms
            .map(|ms| Duration::from_millis(ms).min(MAX_TIMEOUT))
            .unwrap_or(queue_default)
    }

    /// The envelope to write back after this run failed: attempt counted, error kept.
    pub(crate) fn failed_envelope(&self, error: &str) -> Envelope {
        let mut env = self.envelope.clone();
        env.attempt = self.attempt();
        env.set_error(error);
        env
    }
}

/// A failed run, whether running it again may help, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    message: String,
    permanent: bool,
    retry_in: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying: a timeout, a refused connection, a 4xx
    /// SMTP reply. The job runs again after the queue's backoff.
    pub fn transient(msg: impl Into<String>) -> Self {
        Self {
            message: msg.into(),
            permanent: false,
            retry_in: None,
        }
    }

    /// A failure that retrying cannot fix: a malformed payload, an invalid
    /// address. The job goes to the dead letter list at once.
    pub fn permanent(msg: impl Into<String>) -> Self {
        Self {
            message: msg.into(),
            permanent: true,
            retry_in: None,
        }
    }

    /// Asks for the next attempt after `delay` instead of the queue's
    /// backoff (a server's `Retry-After`, a worker's `retry_in_ms`): the
    /// handler knows when what it waits for comes back, so the delay is
    /// honoured as asked, whatever the queue's `backoff.max`, up to
    /// 7 days (a longer ask is cut to it). A permanent
    /// error ignores it.
    pub fn retry_in(mut self, delay: Duration) -> Self {
        self.retry_in = Some(delay);
        self
    }

    /// Whether the job goes straight to the dead letter list.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The delay asked for with [`HandlerError::retry_in`].
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_in
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The delay before the attempt after failed run number `attempt`:
    /// the one asked for, up to [`MAX_RETRY_IN`], else the queue's backoff.
    pub(crate) fn delay(&self, backoff: &Backoff, attempt: u32) -> Duration {
        match self.retry_in {
            Some(asked) => asked.min(MAX_RETRY_IN),
            None => backoff.delay(attempt),
        }
    }

    /// The delay asked for, if it is longer than [`MAX_RETRY_IN`] and so cut.
    pub(crate) fn cut_delay(&self) -> Option<Duration> {
        self.retry_in.filter(|asked| *asked > MAX_RETRY_IN)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::parse_item;

    fn job(item: &str) -> Job {
        let parsed = parse_item(item.as_bytes(), 1 << 20).expect("parses");
        Job::new("q".into(), item.as_bytes().to_vec(), parsed)
    }

    #[test]
    fn results_are_kept_up_to_the_limit() {
        let j = job(r#"{"a":1}"#);
        assert!(j.take_result().is_none());
        j.set_result(&serde_json::json!({"width": 640}))
            .expect("small");
        assert_eq!(
            j.take_result().map(|r| r.get().to_owned()).as_deref(),
            Some(r#"{"width":640}"#)
        );
        let big = "x".repeat(MAX_RESULT_BYTES);
        let err = j.set_result(&big).unwrap_err();
        assert!(
            err.is_permanent() && err.message().contains("65538 bytes"),
            "{err}"
        );
        assert!(j.take_result().is_none(), "a refused result is not kept");
    }

    #[test]
    fn an_asked_delay_is_honoured_whatever_the_backoff_up_to_seven_days() {
        let backoff = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        let asked = HandlerError::transient("busy").retry_in(Duration::from_millis(1500));
        assert_eq!(asked.delay(&backoff, 7), Duration::from_millis(1500));
        assert_eq!(asked.cut_delay(), None);
        // Above the queue's backoff.max: as asked.
        let long = HandlerError::transient("busy").retry_in(Duration::from_secs(3600));
        assert_eq!(long.delay(&backoff, 1), Duration::from_secs(3600));
        let week = HandlerError::transient("busy").retry_in(MAX_RETRY_IN);
        assert_eq!(week.delay(&backoff, 1), MAX_RETRY_IN);
        assert_eq!(week.cut_delay(), None);
        // Beyond 7 days (up to what no clock holds): cut, and said so.
        for beyond in [MAX_RETRY_IN + Duration::from_millis(1), Duration::MAX] {
            let too_long = HandlerError::transient("busy").retry_in(beyond);
            assert_eq!(too_long.delay(&backoff, 1), MAX_RETRY_IN);
            assert_eq!(too_long.cut_delay(), Some(beyond));
        }
        let plain = HandlerError::transient("busy").delay(&backoff, 1);
        assert!(plain >= Duration::from_secs(5) && plain <= Duration::from_secs(10));
    }

    #[test]
    fn a_producers_timeout_of_any_size_runs_without_a_panic() {
        for ms in [1, 1000, u64::MAX] {
            let mut j = job(&format!(
                r#"{{"id":"t","payload":{{}},"attempt":0,"timeout_ms":{ms}}}"#
            ));
            let timeout = j.timeout(Duration::from_secs(30));
            assert_eq!(timeout, Duration::from_millis(ms).min(MAX_TIMEOUT));
            let before = Instant::now();
            j.start_run(timeout);
            assert!(j.deadline() >= before + timeout, "{ms}");
        }
        // Beyond what an Instant holds: as far as the longest timeout.
        let mut j = job("{}");
        let before = Instant::now();
        j.start_run(Duration::MAX);
        assert!(j.deadline() >= before + MAX_TIMEOUT);
    }

    #[tokio::test]
    async fn cancellation_is_seen_by_the_handler() {
        let j = Arc::new(job("1"));
        let waiting = j.clone();
        let waiter = tokio::spawn(async move { waiting.cancelled().await });
        tokio::task::yield_now().await;
        assert!(!j.is_cancelled());
        j.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .expect("the waiter ends");
        assert!(j.is_cancelled());
    }
}

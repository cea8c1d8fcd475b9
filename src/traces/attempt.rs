//! One span per attempt, `process <queue>`, of kind consumer, with the
//! messaging conventions. The first attempt's span is the child of the
//! producer's (the envelope's `traceparent` and `tracestate`); a retry's
//! starts a trace of its own, linked to the producer's span, so that a job
//! retried for a day does not stretch the request that enqueued it.

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{Link, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::Traces;
use crate::job::Job;

/// An attempt's span, to end with its outcome; nothing when tracing is off.
pub(crate) struct Attempt(Option<Context>);

impl Attempt {
    /// No span: tracing is off.
    pub(crate) const OFF: Attempt = Attempt(None);

    /// Ends the span with `outcome` (`succeeded`, `retrying`, `dead`,
    /// `cancelled`, `interrupted`) and, for a failure, its error, which
    /// makes the span's status an error.
    pub(crate) fn end(&self, outcome: &'static str, error: Option<&str>) {
        let Some(cx) = &self.0 else { return };
        let span = cx.span();
        span.set_attribute(KeyValue::new("messaging.conveyor.outcome", outcome));
        match error {
            Some(error) => {
                span.set_attribute(KeyValue::new("messaging.conveyor.error", error.to_owned()));
                span.set_status(Status::error(error.to_owned()));
            }
            None if outcome == "succeeded" => span.set_status(Status::Ok),
            None => {}
        }
        span.end();
    }
}

impl Traces {
    /// Starts the span of `job`'s run on `queue` and gives the job its
    /// context (for the handler to pass on), and the job's log lines its
    /// `trace_id` and `span_id`.
    pub(crate) fn attempt(&self, queue: &str, job: &mut Job) -> Attempt {
        let producer = producer(job);
        let mut builder = self
            .tracer
            .span_builder(format!("process {queue}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "conveyor"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", queue.to_owned()),
                KeyValue::new("messaging.message.id", job.id().to_owned()),
                KeyValue::new("messaging.conveyor.attempt", i64::from(job.attempt())),
            ]);
        let parent = match producer {
            Some(producer) if job.attempt() > 1 => {
                let link = Link::with_context(producer.span().span_context().clone());
                builder = builder.with_links(vec![link]);
                Context::new()
            }
            Some(producer) => producer,
            None => Context::new(),
        };
        let span = builder.start_with_context(&self.tracer, &parent);
        let cx = Context::new().with_span(span);
        let ids = cx.span().span_context().clone();
        let current = tracing::Span::current();
        current.record("trace_id", tracing::field::display(ids.trace_id()));
        current.record("span_id", tracing::field::display(ids.span_id()));
        job.set_trace(cx.clone());
        Attempt(Some(cx))
    }
}

/// The producer's span from the envelope, if it names a valid one.
fn producer(job: &Job) -> Option<Context> {
    let envelope = job.envelope();
    let traceparent = envelope.extra_text("traceparent")?;
    let tracestate = envelope.extra_text("tracestate");
    let fields = Fields {
        traceparent: &traceparent,
        tracestate: tracestate.as_deref(),
    };
    let cx = TraceContextPropagator::new().extract(&fields);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The envelope's trace fields, as the propagator reads headers.
struct Fields<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

//! Traces (DESIGN section 15): a span per attempt, exported over OTLP/HTTP
//! (protobuf) to the collector `[tracing]` names.
//!
//! With no endpoint there is no [`Traces`] at all: a processor holds
//! `None` and its job path pays one branch (no span built, no context
//! made). With one, each attempt's span ends in a bounded queue
//! (`export.rs`) that one task sends in batches; a collector slow or away
//! makes spans drop (counted in `conveyor_spans_dropped_total`), never a
//! job wait.

use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::TracingConfig;
use transport::Transport;

mod attempt;
mod export;
mod transport;

pub(crate) use attempt::Attempt;
pub(crate) use export::Dropped;

/// How long one export may take, connection included; a slower collector
/// gets its spans dropped rather than a queue that grows.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks a producer's W3C `traceparent` (and `tracestate`) as the
/// daemon will read it: a version-00 header naming a valid span.
pub(crate) fn check_traceparent(traceparent: &str) -> Result<(), String> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    let headers =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&headers);
    if cx.span().span_context().is_valid() {
        Ok(())
    } else {
        Err(format!(
            "traceparent {traceparent:?} is not a W3C trace context such as \
             00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ))
    }
}

/// The node's tracer and its export task.
pub(crate) struct Traces {
    tracer: SdkTracer,
    /// Kept for the tracer's life (the tracer holds it too).
    _provider: SdkTracerProvider,
    dropped: Dropped,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Traces {
    /// The tracer of `config`, its export task started on the current
    /// runtime; `None` when tracing is off.
    pub(crate) fn start(config: &TracingConfig) -> Result<Option<Self>, String> {
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let transport = Transport::new(EXPORT_TIMEOUT)?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(transport)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("traces: the OTLP exporter for {url} cannot be built: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let dropped = Dropped::default();
        let (queue, spans) = export::SpanQueue::new(dropped.clone());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let stop = CancellationToken::new();
        let task = tokio::spawn(export::export(
            spans,
            exporter,
            dropped.clone(),
            stop.clone(),
        ));
        tracing::info!(
            endpoint = %url,
            service = %config.service_name,
            sample_ratio = config.sample_ratio,
            "traces: exporting spans over OTLP/HTTP"
        );
        Ok(Some(Self {
            tracer: provider.tracer("conveyor"),
            _provider: provider,
            dropped,
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// The spans dropped so far (queue full, or export failed).
    pub(crate) fn dropped(&self) -> Dropped {
        self.dropped.clone()
    }

    /// Sends the spans still queued (within the export timeout) and stops
    /// the export task: the last jobs' spans are not lost to a shutdown.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if tokio::time::timeout(EXPORT_TIMEOUT * 2, task)
                .await
                .is_err()
            {
                tracing::warn!("traces: spans still queued at exit were dropped");
            }
        }
    }
}

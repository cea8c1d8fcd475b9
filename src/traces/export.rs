//! The bounded span queue between the jobs and the collector. Ending a span
//! puts it in the queue with one `try_send`: a full queue drops it (and
//! counts it) rather than wait, so a slow or unreachable collector never
//! slows a job. One task takes batches off the queue and exports them,
//! each export bounded by a timeout; a batch that fails is dropped and
//! counted too, never retried (the jobs' spans keep coming).
//!
//! The SDK's own batch processor counts the spans it drops only in a
//! private field it logs at shutdown, and not the spans of failed exports;
//! `conveyor_spans_dropped_total` needs both, hence this queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Spans waiting for export at most: about 2 MiB of spans at their size.
pub(super) const QUEUE: usize = 2048;
/// Spans sent in one request at most.
const BATCH: usize = 512;
/// How long a span may wait for a fuller batch.
const LINGER: Duration = Duration::from_millis(500);

/// The spans dropped so far, for `conveyor_spans_dropped_total`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dropped(Arc<AtomicU64>);

impl Dropped {
    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The count so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The SDK's span processor: each ended span into the queue, or dropped.
#[derive(Debug)]
pub(super) struct SpanQueue {
    spans: mpsc::Sender<SpanData>,
    dropped: Dropped,
}

impl SpanQueue {
    /// The queue, and its receiving end for [`export`].
    pub(super) fn new(dropped: Dropped) -> (Self, mpsc::Receiver<SpanData>) {
        let (spans, receiver) = mpsc::channel(QUEUE);
        (Self { spans, dropped }, receiver)
    }
}

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.dropped.add(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Exports what the queue holds until `stop`, then what is left (once,
/// within the exporter's timeout) and returns.
pub(super) async fn export<E: SpanExporter>(
    mut queue: mpsc::Receiver<SpanData>,
    exporter: E,
    dropped: Dropped,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let first = tokio::select! {
            span = queue.recv() => span,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = Vec::new();
        batch.push(first);
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                span = queue.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                _ = &mut linger => break,
                _ = stop.cancelled() => break,
            }
        }
        failing = send(&exporter, batch, &dropped, failing).await;
    }
    queue.close();
    let mut rest = Vec::new();
    while let Ok(span) = queue.try_recv() {
        rest.push(span);
    }
    for batch in rest.chunks(BATCH) {
        send(&exporter, batch.to_vec(), &dropped, failing).await;
    }
}

/// Sends one batch; returns whether it failed. A failure is logged when
/// exports start failing, not for every batch after it.
async fn send<E: SpanExporter>(
    exporter: &E,
    batch: Vec<SpanData>,
    dropped: &Dropped,
    failing: bool,
) -> bool {
    let n = batch.len();
    match exporter.export(batch).await {
        Ok(()) => {
            if failing {
                tracing::info!("traces: the collector takes spans again");
            }
            false
        }
        Err(e) => {
            dropped.add(n);
            if !failing {
                tracing::warn!(error = %e, spans = n, "traces: export failed; spans dropped until it works again");
            }
            true
        }
    }
}

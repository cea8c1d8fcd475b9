//! `/metrics`: this daemon's own counters and run durations, kept in memory
//! (one atomic add per job), and the queues' gauges read from Redis at each
//! scrape, in the Prometheus text format. Names as DESIGN section 10:
//!
//! - `conveyor_jobs_total{queue,outcome}`: outcomes recorded by this
//!   daemon: `succeeded`, `failed` (every failed run), `retried`, `dead`,
//!   `recovered` (put back by a shutdown or a reaper).
//! - `conveyor_job_duration_seconds{queue}`: handler runs, as a histogram.
//! - `conveyor_job_wait_seconds{queue}`: push to the start of a first run,
//!   as a histogram.
//! - `conveyor_queue_jobs{queue,state}`, `conveyor_queue_oldest_seconds{queue}`,
//!   `conveyor_queue_paused{queue}`, `conveyor_nodes`: from Redis.
//! - `conveyor_events_dropped_total`: events this daemon could not publish.
//! - `conveyor_spans_dropped_total`: trace spans this daemon dropped (its
//!   export queue full, or the collector failing); shown when tracing is on.
//! - `conveyor_redis_up`: whether Redis answered the scrape (the daemon's
//!   counters are served either way).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::api::Overview;

/// Bounds of the duration histogram's buckets, in seconds: a millisecond
/// to five minutes, for handlers from no-ops to long exports.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Bounds of the waiting-time histogram's buckets, in seconds: a
/// millisecond to a day, for queues that keep up and queues that lag.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// The outcomes `conveyor_jobs_total` counts.
const OUTCOMES: [&str; 5] = ["succeeded", "failed", "retried", "dead", "recovered"];

/// The counters of one daemon.
pub(crate) struct Metrics {
    jobs: IntCounterVec,
    duration: HistogramVec,
    wait: HistogramVec,
    events_dropped: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
    spans_dropped: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

/// One queue's counters, resolved once: recording is an atomic add.
#[derive(Clone)]
pub(crate) struct QueueMetrics {
    succeeded: IntCounter,
    failed: IntCounter,
    retried: IntCounter,
    dead: IntCounter,
    recovered: IntCounter,
    duration: Histogram,
    wait: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty counters.
    pub(crate) fn new() -> Self {
        let jobs = IntCounterVec::new(
            Opts::new(
                "conveyor_jobs_total",
                "Job outcomes recorded by this daemon.",
            ),
            &["queue", "outcome"],
        )
        .expect("the metric's name and labels are valid");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "conveyor_job_duration_seconds",
                "How long handler runs took on this daemon.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["queue"],
        )
        .expect("the metric's name and labels are valid");
        let wait = HistogramVec::new(
            HistogramOpts::new(
                "conveyor_job_wait_seconds",
                "How long jobs waited from push to the start of their first run, on this daemon.",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
            &["queue"],
        )
        .expect("the metric's name and labels are valid");
        Self {
            jobs,
            duration,
            wait,
            events_dropped: OnceLock::new(),
            spans_dropped: OnceLock::new(),
        }
    }

    /// Queue `name`'s counters, all shown (at zero) from now on.
    pub(crate) fn queue(&self, name: &str) -> QueueMetrics {
        let counter = |outcome| self.jobs.with_label_values(&[name, outcome]);
        QueueMetrics {
            succeeded: counter(OUTCOMES[0]),
            failed: counter(OUTCOMES[1]),
            retried: counter(OUTCOMES[2]),
            dead: counter(OUTCOMES[3]),
            recovered: counter(OUTCOMES[4]),
            duration: self.duration.with_label_values(&[name]),
            wait: self.wait.with_label_values(&[name]),
        }
    }

    /// Where `conveyor_events_dropped_total` is read from (set once).
    pub(crate) fn count_dropped_events(&self, read: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.events_dropped.set(Box::new(read));
    }

    /// Where `conveyor_spans_dropped_total` is read from (set once, when
    /// tracing is on).
    pub(crate) fn count_dropped_spans(&self, read: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.spans_dropped.set(Box::new(read));
    }

    fn families(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.jobs.collect();
        families.extend(self.duration.collect());
        families.extend(self.wait.collect());
        if let Some(read) = self.events_dropped.get() {
            let dropped = IntCounter::new(
                "conveyor_events_dropped_total",
                "Events and status updates this daemon dropped (Redis too slow or away).",
            )
            .expect("the metric's name is valid");
            dropped.inc_by(read());
            families.extend(dropped.collect());
        }
        if let Some(read) = self.spans_dropped.get() {
            let dropped = IntCounter::new(
                "conveyor_spans_dropped_total",
                "Trace spans this daemon dropped (its export queue full, or the collector failing).",
            )
            .expect("the metric's name is valid");
            dropped.inc_by(read());
            families.extend(dropped.collect());
        }
        families
    }
}

impl QueueMetrics {
    /// A first run that starts after waiting `waited`.
    pub(crate) fn started(&self, waited: Duration) {
        self.wait.observe(waited.as_secs_f64());
    }

    /// A run that succeeded after `took`.
    pub(crate) fn succeeded(&self, took: Duration) {
        self.succeeded.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A run that failed after `took`; it will be retried (`true`) or not.
    pub(crate) fn failed(&self, took: Duration, retried: bool) {
        self.failed.inc();
        if retried {
            self.retried.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    /// A job dead-lettered.
    pub(crate) fn dead(&self) {
        self.dead.inc();
    }

    /// Jobs put back in their queue (a shutdown, a reaper).
    pub(crate) fn recovered(&self, n: u64) {
        self.recovered.inc_by(n);
    }
}

/// The text of `/metrics`: this daemon's counters (`None` for `conveyor
/// web` alone), `conveyor_redis_up`, and the gauges of `overview` (`None`
/// while Redis does not answer: the counters are still served).
pub(crate) fn render(daemon: Option<&Metrics>, overview: Option<&Overview>) -> String {
    let mut families = daemon.map(Metrics::families).unwrap_or_default();
    let up = IntGauge::new(
        "conveyor_redis_up",
        "1 when Redis answered this scrape's questions, else 0.",
    )
    .expect("the metric's name is valid");
    up.set(i64::from(overview.is_some()));
    families.extend(up.collect());
    if let Some(overview) = overview {
        families.extend(gauges(overview));
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("encoding into memory cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// The content type of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn gauges(overview: &Overview) -> Vec<prometheus::proto::MetricFamily> {
    let registry = Registry::new();
    let jobs = IntGaugeVec::new(
        Opts::new(
            "conveyor_queue_jobs",
            "Jobs of a queue in each state, from Redis.",
        ),
        &["queue", "state"],
    )
    .expect("valid");
    let oldest = prometheus::GaugeVec::new(
        Opts::new(
            "conveyor_queue_oldest_seconds",
            "Age of the oldest waiting job of a queue (0 when none waits).",
        ),
        &["queue"],
    )
    .expect("valid");
    let paused = IntGaugeVec::new(
        Opts::new("conveyor_queue_paused", "1 while a queue is paused."),
        &["queue"],
    )
    .expect("valid");
    let nodes = IntGauge::new("conveyor_nodes", "Live nodes running any queue.").expect("valid");
    for q in &overview.queues {
        let c = &q.counts;
        for (state, n) in [
            ("waiting", c.waiting),
            ("held", c.held),
            ("scheduled", c.scheduled),
            ("inflight", c.in_flight),
            ("dead", c.dead),
        ] {
            jobs.with_label_values(&[q.name.as_str(), state])
                .set(n as i64);
        }
        oldest
            .with_label_values(&[q.name.as_str()])
            .set(q.oldest_age_s.unwrap_or(0.0));
        paused
            .with_label_values(&[q.name.as_str()])
            .set(i64::from(c.paused));
    }
    nodes.set(overview.nodes.len() as i64);
    let collectors: [Box<dyn Collector>; 4] = [
        Box::new(jobs),
        Box::new(oldest),
        Box::new(paused),
        Box::new(nodes),
    ];
    for c in collectors {
        registry.register(c).expect("names are distinct");
    }
    registry.gather()
}

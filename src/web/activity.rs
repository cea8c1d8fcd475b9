//! The dashboard's charts: the live one (jobs a second over the last ten
//! minutes, from [`super::live`]) and the history's, for a day a minute at
//! a time or for 30 days a day at a time (`/api/history`'s figures): jobs
//! that succeeded and failed, and the p50 and p95 of waiting and run times.
//! `?chart=<queue>` picks one queue (all by default), `?range=` the span.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use super::Web;
use super::chart::{Series, Tip, svg};
use crate::api::{History, Range};

/// How long a history read serves the page's refreshes.
const HISTORY_FRESH: Duration = Duration::from_secs(10);

/// The span a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    Live,
    History(Range),
}

impl Span {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("24h") => Span::History(Range::Day),
            Some("30d") => Span::History(Range::Month),
            _ => Span::Live,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Span::Live => "live",
            Span::History(r) => r.as_str(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Span::Live => "Live, 10 min",
            Span::History(Range::Month) => "30 days",
            Span::History(_) => "24 hours",
        }
    }
}

/// The charts' part of the page.
#[derive(Serialize)]
pub(super) struct Activity {
    /// Which span and queue are shown, and the links to the others.
    spans: Vec<Link>,
    queues: Vec<Link>,
    charts: Vec<ChartView>,
    /// Why the history could not be read, if it could not.
    error: Option<String>,
}

#[derive(Serialize)]
struct Link {
    label: String,
    href: String,
    current: bool,
}

#[derive(Serialize)]
struct ChartView {
    title: String,
    /// The picture, every text in it escaped by [`svg`].
    svg: String,
    /// Class and label of each line.
    legend: Vec<(&'static str, &'static str)>,
}

/// The last history read, for the refreshes of the next few seconds.
#[derive(Default)]
pub(super) struct Cache(Mutex<Option<Read>>);

/// A history read: for which queue and range, and when.
struct Read {
    queue: Option<String>,
    range: Range,
    at: Instant,
    history: History,
}

/// The charts of `range` for `queue` (a configured one; else all queues),
/// with links that keep the page's other choices (`live`).
pub(super) async fn activity(
    web: &Web,
    names: &[String],
    queue: Option<&str>,
    range: Option<&str>,
    live: bool,
) -> Activity {
    let queue = queue.filter(|q| names.iter().any(|n| n == q));
    let span = Span::parse(range);
    let href = |q: Option<&str>, s: Span| {
        let mut href = format!("/?range={}", s.as_str());
        if let Some(q) = q {
            href.push_str("&chart=");
            href.push_str(&utf8_percent_encode(q, NON_ALPHANUMERIC).to_string());
        }
        if !live {
            href.push_str("&live=0");
        }
        href + "#activity"
    };
    let spans = [
        Span::Live,
        Span::History(Range::Day),
        Span::History(Range::Month),
    ]
    .into_iter()
    .map(|s| Link {
        label: s.label().into(),
        href: href(queue, s),
        current: s == span,
    })
    .collect();
    let queues = std::iter::once(None)
        .chain(names.iter().map(|n| Some(n.as_str())))
        .map(|q| Link {
            label: q.unwrap_or("all queues").to_owned(),
            href: href(q, span),
            current: q == queue,
        })
        .collect();
    let (charts, error) = match span {
        Span::Live => (live_charts(web, queue), None),
        Span::History(range) => match history(web, queue, range).await {
            Ok(h) => (history_charts(&h), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
    };
    Activity {
        spans,
        queues,
        charts,
        error,
    }
}

fn live_charts(web: &Web, queue: Option<&str>) -> Vec<ChartView> {
    let now = crate::clock::now_ms() / 1000;
    let (ok, failed) = web.live.series(queue, now);
    let n = ok.len();
    let first_ms = (now + 1 - n as i64) * 1000;
    let at = |i: usize| first_ms + i as i64 * 1000;
    let ticks = vec![
        (0, "10 min ago".to_owned()),
        (n / 2, "5 min ago".to_owned()),
        (n - 1, "now".to_owned()),
    ];
    let lines = [
        Line::new("succeeded", "/s", &ok),
        Line::new("failed", "/s", &failed),
    ];
    let tips = tips(n, 10, &at, "%H:%M:%S", &lines, Fold::Mean);
    vec![ChartView {
        title: "Jobs per second".into(),
        svg: svg(
            "jobs that succeeded and failed each second over the last 10 minutes",
            &[
                Series {
                    class: "ok",
                    values: ok,
                },
                Series {
                    class: "failed",
                    values: failed,
                },
            ],
            "/s",
            &ticks,
            &tips,
        ),
        legend: vec![("ok", "succeeded"), ("failed", "failed")],
    }]
}

/// How a tooltip sums up its span's values.
#[derive(Clone, Copy)]
enum Fold {
    /// The total: jobs.
    Sum,
    /// The mean: rates.
    Mean,
    /// The highest: percentiles.
    Max,
}

/// One line of a chart, as a tooltip names it.
struct Line<'a> {
    name: &'static str,
    unit: &'static str,
    values: &'a [Option<f64>],
}

impl<'a> Line<'a> {
    fn new(name: &'static str, unit: &'static str, values: &'a [Option<f64>]) -> Self {
        Self { name, unit, values }
    }
}

/// Tooltips over spans of `width` intervals, aligned on the clock: the
/// span's times (UTC, `format`) and each line's values folded.
fn tips(
    n: usize,
    width: usize,
    at: &dyn Fn(usize) -> i64,
    format: &str,
    lines: &[Line<'_>],
    fold: Fold,
) -> Vec<Tip> {
    let step_ms = if n > 1 { at(1) - at(0) } else { 1 };
    let span_ms = step_ms * width as i64;
    let mut out = Vec::new();
    let mut from = 0;
    while from < n {
        // The span ends where the clock reaches a multiple of its width.
        let mut to = from + 1;
        while to < n && at(to).rem_euclid(span_ms) != 0 {
            to += 1;
        }
        let when = |ms: i64| {
            jiff::Timestamp::from_millisecond(ms)
                .map(|t| t.strftime(format).to_string())
                .unwrap_or_default()
        };
        let mut text = match width {
            1 => when(at(from)),
            _ => format!("{}–{}", when(at(from)), when(at(to - 1) + step_ms)),
        };
        text.push_str(" UTC");
        for line in lines {
            let values: Vec<f64> = line.values[from..to].iter().flatten().copied().collect();
            let folded = match (values.is_empty(), fold) {
                (true, _) => None,
                (false, Fold::Sum) => Some(values.iter().sum::<f64>()),
                (false, Fold::Mean) => Some(values.iter().sum::<f64>() / values.len() as f64),
                (false, Fold::Max) => values.iter().copied().reduce(f64::max),
            };
            let shown = match folded {
                None => "-".to_owned(),
                Some(v) if matches!(fold, Fold::Sum) => format!("{v:.0}"),
                Some(v) if v >= 100.0 => format!("{v:.0}{}", line.unit),
                Some(v) => format!("{v:.2}{}", line.unit),
            };
            text.push_str(&format!("\n{}: {shown}", line.name));
        }
        out.push(Tip { from, to, text });
        from = to;
    }
    out
}

fn history_charts(h: &History) -> Vec<ChartView> {
    let step_ms = h.step_seconds as i64 * 1000;
    let first_ms = h
        .points
        .first()
        .and_then(|p| p.at.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_millisecond());
    let at = |i: usize| first_ms + i as i64 * step_ms;
    let n = h.points.len();
    let month = h.range == Range::Month;
    let (per, from, to) = match month {
        true => ("day", "30 days ago", "today"),
        false => ("minute", "24 h ago", "now"),
    };
    // Ticks every 3 hours or every 7 days, clear of the ends.
    let (every_ms, format, room) = match month {
        true => (7 * 86_400_000, "%b %d", 2),
        false => (3 * 3_600_000, "%H:%M", 60),
    };
    let mut ticks = vec![(0, from.to_owned())];
    for i in room..n.saturating_sub(room) {
        if at(i).rem_euclid(every_ms) == 0 {
            let label = jiff::Timestamp::from_millisecond(at(i))
                .map(|t| t.strftime(format).to_string())
                .unwrap_or_default();
            ticks.push((i, label));
        }
    }
    ticks.push((n.saturating_sub(1), to.to_owned()));
    // Tooltips per day, or per quarter of an hour.
    let (width, tip_format) = match month {
        true => (1, "%b %d"),
        false => (15, "%H:%M"),
    };
    let count = |f: fn(&crate::api::Point) -> u64| -> Vec<Option<f64>> {
        h.points.iter().map(|p| Some(f(p) as f64)).collect()
    };
    let secs = |f: fn(&crate::api::Point) -> Option<f64>| -> Vec<Option<f64>> {
        h.points
            .iter()
            .map(|p| f(p).map(|ms| ms / 1000.0))
            .collect()
    };
    let (ok, failed, dead) = (
        count(|p| p.succeeded),
        count(|p| p.failed),
        count(|p| p.dead),
    );
    let jobs_tips = tips(
        n,
        width,
        &at,
        tip_format,
        &[
            Line::new("succeeded", "", &ok),
            Line::new("failed", "", &failed),
            Line::new("dead", "", &dead),
        ],
        Fold::Sum,
    );
    let times = |title: &str, what: &str, p50: Vec<Option<f64>>, p95: Vec<Option<f64>>| {
        let tips = tips(
            n,
            width,
            &at,
            tip_format,
            &[
                Line::new("p50, highest", " s", &p50),
                Line::new("p95, highest", " s", &p95),
            ],
            Fold::Max,
        );
        ChartView {
            title: title.into(),
            svg: svg(
                &format!("{what} per {per}, p50 and p95, since {from}"),
                &[
                    Series {
                        class: "p50",
                        values: p50,
                    },
                    Series {
                        class: "p95",
                        values: p95,
                    },
                ],
                "s",
                &ticks,
                &tips,
            ),
            legend: vec![("p50", "p50"), ("p95", "p95")],
        }
    };
    vec![
        ChartView {
            title: format!("Jobs per {per}"),
            svg: svg(
                &format!("jobs that succeeded and failed per {per}, since {from}"),
                &[
                    Series {
                        class: "ok",
                        values: ok,
                    },
                    Series {
                        class: "failed",
                        values: failed,
                    },
                ],
                "",
                &ticks,
                &jobs_tips,
            ),
            legend: vec![("ok", "succeeded"), ("failed", "failed")],
        },
        times(
            "Waiting time",
            "waiting time",
            secs(|p| p.wait_p50_ms),
            secs(|p| p.wait_p95_ms),
        ),
        times(
            "Run time",
            "run time",
            secs(|p| p.run_p50_ms),
            secs(|p| p.run_p95_ms),
        ),
    ]
}

/// The history of `queue` over `range`, read at most every
/// [`HISTORY_FRESH`] for the same choice.
async fn history(
    web: &Web,
    queue: Option<&str>,
    range: Range,
) -> Result<History, crate::api::ApiError> {
    let lock = || {
        web.history_cache
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    };
    if let Some(read) = lock().as_ref() {
        let fresh = read.at.elapsed() < HISTORY_FRESH;
        if fresh && read.queue.as_deref() == queue && read.range == range {
            return Ok(read.history.clone());
        }
    }
    let history = web.client.history(queue, range).await?;
    *lock() = Some(Read {
        queue: queue.map(str::to_owned),
        range,
        at: Instant::now(),
        history: history.clone(),
    });
    Ok(history)
}

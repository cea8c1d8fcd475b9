//! The dashboard: one page rendered on the server from the read API, with
//! every value HTML-escaped by the template engine (payloads are shown as
//! text, whatever they hold). Its script (no inline script: the content
//! security policy forbids it) refreshes the page's content every two
//! seconds and appends live events with `textContent`; `?live=0` leaves
//! both off. The assets are compiled into the binary.

use std::sync::LazyLock;

use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use super::Web;
use super::activity::{Activity, activity};
use crate::api::{DeadJob, ScheduleView};
use crate::clock::age;
use crate::template_value::from_json;

const TEMPLATE: &str = include_str!("assets/dashboard.html");
const CONTENT: &str = include_str!("assets/content.html");
const CONFIRM: &str = include_str!("assets/confirm.html");
const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");
const ICON: &str = include_str!("assets/icon.svg");

/// Longest payload shown, in characters.
const PAYLOAD_CHARS: usize = 2000;

/// Jobs of each list shown per queue.
const SHOWN: u64 = 20;

/// The minutes over which the queues' table shows the waiting time's p95.
const WAIT_MINUTES: usize = 5;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A `.html` name turns HTML escaping on for every value.
    env.add_template("dashboard.html", TEMPLATE)
        .expect("the dashboard template parses");
    env.add_template("content.html", CONTENT)
        .expect("the dashboard template parses");
    env.add_template("confirm.html", CONFIRM)
        .expect("the confirmation template parses");
    env
});

/// `?live=0`: no refreshing, no event stream (headless browsers, slow links);
/// `?partial=1`: the content alone, for the refresh; `?done=&sig=`: what
/// the last action did, shown only with this server's signature.
#[derive(Deserialize, Default)]
pub(super) struct PageQuery {
    live: Option<String>,
    partial: Option<String>,
    /// The charts' queue (all when unset) and span (`live`, `24h`, `30d`).
    chart: Option<String>,
    range: Option<String>,
    done: Option<String>,
    sig: Option<String>,
}

impl PageQuery {
    /// Whether only the content is asked for (the page's refresh).
    pub(super) fn is_partial(&self) -> bool {
        self.partial.as_deref() == Some("1")
    }
}

#[derive(Serialize)]
struct Page {
    at: String,
    redis: String,
    logout: bool,
    live: bool,
    done: Option<String>,
    error: Option<String>,
    queues: Vec<QueueRow>,
    nodes: Vec<NodeRow>,
    schedules: Vec<ScheduleView>,
    activity: Option<Activity>,
    /// The recent flows, failed ones first.
    flows: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct QueueRow {
    name: String,
    /// The name as a URL path segment.
    path: String,
    paused: bool,
    waiting: u64,
    scheduled: u64,
    in_flight: u64,
    /// Jobs of groups at their limit, held until one of theirs ends.
    held: u64,
    /// The queue's global limit on jobs in flight, if it has one.
    limit: Option<u32>,
    /// The payload field that groups the queue's jobs, if any.
    group_key: Option<String>,
    /// The most jobs of one group in flight, if limited.
    group_limit: Option<u32>,
    /// The busiest groups.
    groups: Vec<crate::api::GroupCounts>,
    /// How many groups there are beyond those shown.
    more_groups: u64,
    dead: u64,
    processed: u64,
    failed: u64,
    rate_1m: u64,
    oldest: String,
    /// The p95 of the waiting time over the last 5 minutes.
    wait_p95: String,
    running_jobs: Vec<JobRow>,
    scheduled_jobs: Vec<JobRow>,
    dead_jobs: Vec<JobRow>,
}

#[derive(Serialize)]
struct JobRow {
    id: String,
    /// The id as a query string value.
    query: String,
    attempt: u32,
    /// When it died, is due, or which node runs it.
    when: String,
    error: String,
    payload: String,
}

#[derive(Serialize)]
struct NodeRow {
    id: String,
    host: String,
    version: String,
    uptime: String,
    busy: u64,
    queues: String,
}

pub(super) async fn dashboard(web: &Web, q: &PageQuery) -> Response {
    let page = match read(web).await {
        Ok(page) => page,
        Err(e) => Page {
            at: crate::clock::now_rfc3339(),
            redis: web.client.broker().url(),
            logout: web.auth.required(),
            live: true,
            done: None,
            error: Some(e.to_string()),
            queues: Vec::new(),
            nodes: Vec::new(),
            schedules: Vec::new(),
            activity: None,
            flows: Vec::new(),
        },
    };
    let live = q.live.as_deref() != Some("0");
    let names: Vec<String> = page.queues.iter().map(|q| q.name.clone()).collect();
    let activity = match page.error {
        None => Some(activity(web, &names, q.chart.as_deref(), q.range.as_deref(), live).await),
        Some(_) => None,
    };
    let page = Page {
        live,
        activity,
        done: web.notices.verified(q.done.as_deref(), q.sig.as_deref()),
        ..page
    };
    let name = match q.is_partial() {
        true => "content.html",
        false => "dashboard.html",
    };
    let context = serde_json::to_value(&page).map(|page| from_json(&page));
    let rendered = match context {
        Ok(context) => TEMPLATES
            .get_template(name)
            .and_then(|t| t.render(context))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match rendered {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "web: the dashboard could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

async fn read(web: &Web) -> Result<Page, crate::api::ApiError> {
    let c = &web.client;
    let overview = c.overview().await?;
    let mut queues = Vec::new();
    for q in overview.queues {
        let counts = &q.counts;
        let running_jobs = match counts.in_flight {
            0 => Vec::new(),
            _ => c.running_jobs(&q.name, SHOWN).await?,
        };
        let scheduled_jobs = match counts.scheduled {
            0 => Vec::new(),
            _ => c.scheduled_jobs(&q.name, SHOWN).await?,
        };
        let dead_jobs = match counts.dead {
            0 => Vec::new(),
            _ => c.dead_jobs(&q.name, 0, SHOWN).await?,
        };
        let config = c.config().queues.get(&q.name).cloned();
        let group = config.as_ref().and_then(|q| q.group.as_ref());
        let groups = match (group, counts.held) {
            (None, 0) => None,
            // Jobs an earlier configuration grouped, until a daemon
            // puts them back: shown too.
            _ => Some(c.groups(&q.name, SHOWN).await?),
        };
        queues.push(QueueRow {
            path: utf8_percent_encode(&q.name, NON_ALPHANUMERIC).to_string(),
            paused: counts.paused,
            waiting: counts.waiting,
            scheduled: counts.scheduled,
            in_flight: counts.in_flight,
            held: counts.held,
            limit: config.as_ref().and_then(|q| q.limit),
            group_key: group.map(|g| g.key.clone()),
            group_limit: group.and_then(|g| g.limit),
            more_groups: groups
                .as_ref()
                .map_or(0, |g| g.groups.count - g.groups.groups.len() as u64),
            groups: groups.map(|g| g.groups.groups).unwrap_or_default(),
            dead: counts.dead,
            processed: counts.processed,
            failed: counts.failed,
            rate_1m: q.rate_1m,
            oldest: q.oldest_age_s.map_or_else(|| "-".into(), age),
            wait_p95: c
                .recent_wait_p95(&q.name, WAIT_MINUTES)
                .await?
                .map_or_else(|| "-".into(), wait_text),
            running_jobs: running_jobs
                .into_iter()
                .map(|j| row(j.id, j.attempt, j.node, None, j.payload))
                .collect(),
            scheduled_jobs: scheduled_jobs
                .into_iter()
                .map(|j| row(j.id, j.attempt, j.due_at, j.last_error, j.payload))
                .collect(),
            dead_jobs: dead_jobs.into_iter().map(dead_row).collect(),
            name: q.name,
        });
    }
    let nodes = overview
        .nodes
        .into_iter()
        .map(|n| NodeRow {
            uptime: n.uptime_s.map_or_else(|| "-".into(), |s| age(s as f64)),
            host: n.info.host,
            version: n.info.version,
            busy: n.info.busy,
            queues: n.info.queues.join(", "),
            id: n.id,
        })
        .collect();
    Ok(Page {
        at: overview.at,
        redis: c.broker().url(),
        logout: web.auth.required(),
        live: true,
        done: None,
        error: None,
        queues,
        nodes,
        schedules: c.schedules().await?,
        activity: None,
        flows: super::flows::rows(c.flows(super::flows::LISTED).await?),
    })
}

/// A waiting time in ms as the queues' table shows it: `12ms`, `3.4s`,
/// `2m05s`.
fn wait_text(ms: f64) -> String {
    match ms {
        ..1_000.0 => format!("{ms:.0}ms"),
        ..10_000.0 => format!("{:.1}s", ms / 1000.0),
        _ => age(ms / 1000.0),
    }
}

/// A dead job's row. One that kept only the first bytes of its item (too
/// large to read) says so, with the item's size.
fn dead_row(j: DeadJob) -> JobRow {
    let (truncated, size) = (j.truncated, j.size);
    let mut row = row(
        j.id,
        j.attempt,
        j.died_at.unwrap_or_default(),
        j.last_error,
        j.payload,
    );
    if truncated {
        row.payload
            .push_str(&format!(" [first bytes of {size} bytes]"));
    }
    row
}

fn row(id: String, attempt: u32, when: String, error: Option<String>, payload: String) -> JobRow {
    let payload = match payload.char_indices().nth(PAYLOAD_CHARS) {
        Some((cut, _)) => format!("{} …", &payload[..cut]),
        None => payload,
    };
    JobRow {
        query: utf8_percent_encode(&id, NON_ALPHANUMERIC).to_string(),
        id,
        attempt,
        when,
        error: error.unwrap_or_default(),
        payload,
    }
}

/// "Purge all N dead jobs of Q?": what the dashboard's Purge all leads to,
/// since a purge cannot be undone. Its button posts the purge.
pub(super) async fn confirm_purge(web: &Web, queue: &str) -> Response {
    let dead = match web.client.overview().await {
        Ok(overview) => overview
            .queues
            .iter()
            .find(|q| q.name == queue)
            .map(|q| q.counts.dead),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let Some(dead) = dead else {
        // The name is not echoed: it came in the URL, from anyone.
        return (StatusCode::NOT_FOUND, "no such queue is configured").into_response();
    };
    let context = minijinja::context! {
        queue => queue,
        path => utf8_percent_encode(queue, NON_ALPHANUMERIC).to_string(),
        dead => dead,
    };
    match TEMPLATES
        .get_template("confirm.html")
        .and_then(|t| t.render(context))
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The login form: one password field for the token.
pub(super) fn login(wrong: bool, status: StatusCode) -> Response {
    let said = match wrong {
        true => r#"<p class="error" role="alert">That is not the token.</p>"#,
        false => "",
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>conveyor: sign in</title><link rel="icon" href="/assets/icon.svg" type="image/svg+xml"><link rel="stylesheet" href="/assets/dashboard.css"></head>
<body><main class="login"><h1>conveyor</h1>{said}
<form method="post" action="/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form></main></body></html>
"#
    );
    (status, Html(html)).into_response()
}

pub(super) async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub(super) async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// The icon, also at `/favicon.ico`, where browsers look for it unasked.
pub(super) async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, kind), (CACHE_CONTROL, "public, max-age=300")],
        body,
    )
        .into_response()
}

//! The web server of `[web] listen`: the dashboard (`/`), `/metrics`,
//! `/healthz`, `/readyz`, and the web API (`/api/stats`, `/api/events`,
//! the queues' jobs and the actions), all on [`crate::api`]. `conveyor run`
//! serves it beside the workers; `conveyor web` serves it alone.
//!
//! Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the dashboard, or its login form |
//! | `POST /login`, `POST /logout` | the dashboard's session |
//! | `GET /healthz` | 200 while the process runs (no token) |
//! | `GET /readyz` | 200 while Redis answers, else 503 (no token) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /api/stats` | the JSON of `conveyor stats --json` |
//! | `GET /api/events` | lifecycle events as server-sent events (one JSON a line of each message's data) |
//! | `GET /api/schedules` | the JSON of `conveyor schedules --json`, as one array |
//! | `GET /api/results` | `?queue=Q&failed=1&limit=N`: the JSON of `conveyor results Q --json` |
//! | `GET /api/groups` | `?queue=Q&limit=N`: the JSON of `conveyor groups Q --json` |
//! | `GET /api/scale` | `?queue=Q`: the queue's demand and slots, for an autoscaler (KEDA) |
//! | `GET /api/history` | `?queue=Q&range=1h\|24h\|30d`: counts and percentiles per minute or day |
//! | `GET /results/{q}` | a tracked queue's recent results and failures (`?failed=1`) |
//! | `GET /api/jobs/{id}` | what is known of one job: `conveyor status ID --json`'s view |
//! | `GET /jobs/{id}`, `GET /jobs?id=` | a job's page; the search box's target |
//! | `GET /api/flows` | the recent flows: `conveyor flow list --json`'s, as one array |
//! | `GET /api/flows/{fid}` | one flow with its nodes: `conveyor flow show FID --json`'s view |
//! | `GET /flows/{fid}` | a flow's page: its graph and its nodes |
//! | `GET /api/queues/{q}/dead`, `scheduled`, `running` | a queue's jobs (`?limit=`) |
//! | `POST /api/queues/{q}/pause`, `resume` | pause, resume |
//! | `POST /api/queues/{q}/dead/retry`, `dead/purge` | `?id=ID` or `?all=1` |
//! | `GET /confirm/purge/{q}` | the page that asks before the dashboard purges a dead list |
//! | `POST /api/queues/{q}/scheduled/run` | `?id=ID`: run a scheduled job now |
//! | `POST /api/queues/{q}/cancel` | `?id=ID`: cancel a waiting, scheduled or running job |
//!
//! The port cannot starve the daemon (DESIGN section 16): requests must
//! arrive whole within a deadline and connections are capped
//! (`server.rs`, `connections.rs`) by what the open files limit leaves
//! after the jobs' share (`descriptors.rs`).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, Client};
use crate::broker::events::EventSink;
use crate::job::JobState;
use crate::metrics::Metrics;

mod activity;
mod auth;
mod chart;
mod connections;
mod descriptors;
mod events;
mod flows;
mod groups;
mod job;
mod live;
mod notice;
mod page;
mod results;
mod scale;
mod server;

use auth::Auth;
pub(crate) use server::bind;

/// Jobs of each list the dashboard and the API show at most by default.
const DEFAULT_LIMIT: u64 = 20;

/// How long `/readyz` waits for Redis.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What every request handler shares.
#[derive(Clone)]
struct Web {
    client: Client,
    metrics: Option<Arc<Metrics>>,
    auth: Auth,
    channel: String,
    /// The replay stream's key, if it is on.
    stream: Option<String>,
    streams: Arc<AtomicUsize>,
    /// Event streams open at once, at most (each holds a Redis connection).
    max_streams: usize,
    notices: notice::Notices,
    /// What the queues did each second of the last ten minutes.
    live: Arc<live::Live>,
    history_cache: Arc<activity::Cache>,
    stop: CancellationToken,
}

/// Serves until `stop`, then lets open requests end (event streams and
/// connections waiting for a request end at once). The token and the events' channel are `client`'s
/// configuration's, and so are the queues whose jobs keep their share of
/// the open files limit (see [`descriptors`]). `metrics` are the daemon's
/// counters (`None` for `conveyor web`).
pub(crate) async fn serve(
    listener: TcpListener,
    client: Client,
    metrics: Option<Arc<Metrics>>,
    stop: CancellationToken,
) {
    let budget = descriptors::Budget::new(&client.config(), descriptors::soft_limit());
    let web = Web {
        auth: Auth::new(client.config().web.token.clone()),
        channel: client.config().events.channel.clone(),
        stream: EventSink::new(
            &client.config().events.channel,
            client.config().events.stream_maxlen,
        )
        .stream
        .map(|(key, _)| key),
        client,
        metrics,
        streams: Arc::new(AtomicUsize::new(0)),
        max_streams: budget.streams,
        notices: notice::Notices::new(),
        live: Arc::new(live::Live::default()),
        history_cache: Arc::new(activity::Cache::default()),
        stop: stop.clone(),
    };
    tokio::spawn(live::sample(
        web.live.clone(),
        web.client.clone(),
        stop.clone(),
    ));
    let app = router(web);
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    tracing::info!(%addr, "web: dashboard and /metrics at http://{addr}/");
    budget.log();
    let connections = connections::Connections::new(budget.connections);
    server::run(listener, app, connections, stop).await;
}

fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/assets/dashboard.css", get(page::css))
        .route("/assets/dashboard.js", get(page::js))
        .route("/assets/icon.svg", get(page::icon))
        .route("/favicon.ico", get(page::icon))
        .route("/confirm/purge/{queue}", get(confirm_purge))
        .route("/results/{queue}", get(results::page))
        .route("/jobs", get(job::search))
        .route("/jobs/{id}", get(job::page))
        .route("/flows/{fid}", get(flows::page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/stats", get(stats))
        .route("/api/events", get(events::events))
        .route("/api/schedules", get(schedules))
        .route("/api/results", get(results::api))
        .route("/api/groups", get(groups::api))
        .route("/api/jobs/{id}", get(job::api))
        .route("/api/flows", get(flows::api_list))
        .route("/api/flows/{fid}", get(flows::api_one))
        .route("/api/scale", get(scale::api))
        .route("/api/history", get(history))
        .route("/api/queues/{queue}/{name}", get(jobs).post(queue_action))
        .route("/api/queues/{queue}/{list}/{action}", post(list_action))
        .layer(axum::middleware::map_response(secure))
        .with_state(web)
}

/// Headers on every answer: no sniffing, no framing, no inline script,
/// no caching of pages that show jobs.
async fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A refusal or failure, as JSON `{"error": ...}` with its status.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 });
        (self.0, axum::Json(body)).into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        match &e {
            ApiError::NotFound(_) => Failure(StatusCode::NOT_FOUND, e.to_string()),
            ApiError::Invalid(_) => Failure(StatusCode::BAD_REQUEST, e.to_string()),
            ApiError::Unfinished(_) | ApiError::Refused(_) => {
                Failure(StatusCode::CONFLICT, e.to_string())
            }
            ApiError::Broker(b) if b.is_unavailable() => {
                Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            ApiError::Broker(_) => Failure(StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }
}

fn unauthorized() -> Failure {
    Failure(
        StatusCode::UNAUTHORIZED,
        "a token is required: Authorization: Bearer <token>".into(),
    )
}

impl Web {
    fn admit(&self, headers: &HeaderMap) -> Result<(), Failure> {
        match self.auth.admits(headers) {
            true => Ok(()),
            false => Err(unauthorized()),
        }
    }

    /// Admits an action: the token, the same origin, a configured queue.
    fn admit_action(&self, headers: &HeaderMap, queue: &str) -> Result<(), Failure> {
        self.admit(headers)?;
        if !self.auth.same_origin(headers) {
            return Err(Failure(
                StatusCode::FORBIDDEN,
                "refused: the request comes from another origin".into(),
            ));
        }
        self.configured(queue)
    }

    fn configured(&self, queue: &str) -> Result<(), Failure> {
        match self.client.is_configured(queue) {
            true => Ok(()),
            false => Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no queue {queue:?} in the configuration"),
            )),
        }
    }
}

async fn readyz(State(web): State<Web>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, web.client.ping()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Redis does not answer: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis does not answer: no reply within 2s\n",
        )
            .into_response(),
    }
}

async fn metrics(State(web): State<Web>, headers: HeaderMap) -> Result<Response, Failure> {
    web.admit(&headers)?;
    let overview = match web.client.overview().await {
        Ok(overview) => Some(overview),
        Err(e) => {
            tracing::debug!(error = %e, "web: /metrics without Redis's gauges");
            None
        }
    };
    let text = crate::metrics::render(web.metrics.as_deref(), overview.as_ref());
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

async fn stats(State(web): State<Web>, headers: HeaderMap) -> Result<Response, Failure> {
    web.admit(&headers)?;
    Ok(axum::Json(web.client.overview().await?).into_response())
}

async fn schedules(State(web): State<Web>, headers: HeaderMap) -> Result<Response, Failure> {
    web.admit(&headers)?;
    Ok(axum::Json(web.client.schedules().await?).into_response())
}

/// `?queue=&range=`.
#[derive(Deserialize)]
struct HistoryQuery {
    queue: Option<String>,
    range: Option<String>,
}

/// `GET /api/history`: one queue's, or all queues' (no `queue`), over the
/// last hour (the default), day or 30 days.
async fn history(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    let range = q.range.as_deref().unwrap_or("1h");
    let Some(range) = crate::api::Range::parse(range) else {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "range must be 1h, 24h or 30d".into(),
        ));
    };
    let queue = q.queue.as_deref().filter(|q| !q.is_empty());
    if let Some(queue) = queue {
        web.configured(queue)?;
    }
    Ok(axum::Json(web.client.history(queue, range).await?).into_response())
}

#[derive(Deserialize)]
struct Listing {
    limit: Option<u64>,
}

async fn jobs(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((queue, list)): Path<(String, String)>,
    Query(q): Query<Listing>,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    web.configured(&queue)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(1000);
    let c = &web.client;
    Ok(match JobState::named(&list) {
        Some(JobState::Dead) => axum::Json(c.dead_jobs(&queue, 0, limit).await?).into_response(),
        Some(JobState::Scheduled) => {
            axum::Json(c.scheduled_jobs(&queue, limit).await?).into_response()
        }
        Some(JobState::Running) => axum::Json(c.running_jobs(&queue, limit).await?).into_response(),
        _ => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                "lists are dead, scheduled and running".into(),
            ));
        }
    })
}

/// The target of an action: one job, or all.
#[derive(Deserialize, Default)]
struct Target {
    id: Option<String>,
    all: Option<String>,
}

impl Target {
    fn all(&self) -> bool {
        matches!(self.all.as_deref(), Some("1" | "true" | "yes"))
    }

    fn id(&self) -> Result<&str, Failure> {
        self.id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Failure(StatusCode::BAD_REQUEST, "give ?id=<job id>".into()))
    }
}

/// An action's answer: JSON for a program, back to the dashboard for a
/// browser's form (which asks for HTML), with what it did signed so that
/// the page shows only what this server wrote.
fn done(web: &Web, headers: &HeaderMap, queue: &str, said: String) -> Response {
    let wants_html = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        let to = format!(
            "/{}#queue-{}",
            web.notices.query(&said),
            percent_encoding::utf8_percent_encode(queue, percent_encoding::NON_ALPHANUMERIC)
        );
        return (StatusCode::SEE_OTHER, [(LOCATION, to)]).into_response();
    }
    axum::Json(serde_json::json!({ "ok": true, "queue": queue, "done": said })).into_response()
}

/// `POST /api/queues/<q>/pause`, `resume` and `cancel`.
async fn queue_action(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((queue, action)): Path<(String, String)>,
    Query(target): Query<Target>,
) -> Result<Response, Failure> {
    act(&web, &headers, &queue, &action, &target).await
}

/// `POST /api/queues/<q>/dead/retry`, `dead/purge` and `scheduled/run`.
async fn list_action(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((queue, list, action)): Path<(String, String, String)>,
    Query(target): Query<Target>,
) -> Result<Response, Failure> {
    act(&web, &headers, &queue, &format!("{list}/{action}"), &target).await
}

/// How long a cancel waits for a running job's daemon to stop it.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Does `action` on `queue`: the token, the same origin and a configured
/// queue first; then what it did, as a sentence.
async fn act(
    web: &Web,
    headers: &HeaderMap,
    queue: &str,
    action: &str,
    target: &Target,
) -> Result<Response, Failure> {
    web.admit_action(headers, queue)?;
    let c = &web.client;
    let said = match action {
        "pause" => match c.pause(queue).await? {
            true => format!("{queue}: paused"),
            false => format!("{queue}: was paused already"),
        },
        "resume" => match c.resume(queue).await? {
            true => format!("{queue}: resumed"),
            false => format!("{queue}: was not paused"),
        },
        "cancel" => {
            let id = target.id()?;
            let was = c.cancel(queue, id, CANCEL_WAIT).await?;
            format!("{id}: cancelled (it was {})", was.as_str())
        }
        "dead/retry" if target.all() => {
            let n = c.retry_all_dead(queue).await?;
            format!("{queue}: {n} dead jobs back in the queue")
        }
        "dead/retry" => {
            let id = target.id()?;
            c.retry_dead(queue, id).await?;
            format!("{id}: back in the queue")
        }
        "dead/purge" if target.all() => {
            let n = c.purge_all_dead(queue).await?;
            let jobs = if n == 1 { "job" } else { "jobs" };
            format!("{queue}: {n} dead {jobs} purged")
        }
        "dead/purge" => {
            let id = target.id()?;
            c.purge_dead(queue, id).await?;
            format!("{id}: purged")
        }
        "scheduled/run" => {
            let id = target.id()?;
            c.run_now(queue, id).await?;
            format!("{id}: runs next")
        }
        _ => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no action {action:?}"),
            ));
        }
    };
    Ok(done(web, headers, queue, said))
}

async fn dashboard(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<page::PageQuery>,
) -> Response {
    if !web.auth.admits(&headers) && q.is_partial() {
        // The page's refresh after the session ended: the script reloads
        // the page, which then shows the login form.
        return unauthorized().into_response();
    }
    if let Some(refused) = page_refused(&web, &headers) {
        return refused;
    }
    page::dashboard(&web, &q).await
}

/// `GET /confirm/purge/<q>`: the question the dashboard's Purge all asks.
async fn confirm_purge(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(queue): Path<String>,
) -> Response {
    if let Some(refused) = page_refused(&web, &headers) {
        return refused;
    }
    page::confirm_purge(&web, &queue).await
}

/// What a page answers someone it does not admit: the login form, or with
/// no token set, a refusal (a name that is not loopback: a rebound name).
/// The `?queue=` an API read needs: a 400 when it is missing or empty.
fn queue_param(queue: Option<&str>) -> Result<&str, Failure> {
    queue
        .filter(|q| !q.is_empty())
        .ok_or_else(|| Failure(StatusCode::BAD_REQUEST, "give ?queue=<queue name>".into()))
}

fn page_refused(web: &Web, headers: &HeaderMap) -> Option<Response> {
    if web.auth.admits(headers) {
        return None;
    }
    if !web.auth.required() {
        return Some(
            Failure(
                StatusCode::FORBIDDEN,
                "this dashboard answers to a loopback address only".into(),
            )
            .into_response(),
        );
    }
    Some(page::login(false, StatusCode::OK))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !web.auth.same_origin(&headers) {
        return Failure(
            StatusCode::FORBIDDEN,
            "refused: the request comes from another origin".into(),
        )
        .into_response();
    }
    let Some(session) = web.auth.session(std::time::SystemTime::now()) else {
        return (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response();
    };
    if !web.auth.is_token(&form.token) {
        tracing::warn!("web: a login with a wrong token");
        return page::login(true, StatusCode::UNAUTHORIZED);
    }
    let cookie = auth::session_cookie(&session, auth::over_https(&headers));
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, "/".to_owned()), (SET_COOKIE, cookie)],
    )
        .into_response()
}

async fn logout(State(web): State<Web>, headers: HeaderMap) -> Response {
    if !web.auth.same_origin(&headers) {
        return Failure(
            StatusCode::FORBIDDEN,
            "refused: the request comes from another origin".into(),
        )
        .into_response();
    }
    let cookie = auth::ended_cookie(auth::over_https(&headers));
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, "/".to_owned()), (SET_COOKIE, cookie)],
    )
        .into_response()
}

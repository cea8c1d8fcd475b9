//! One job: `GET /api/jobs/<id>` (what `conveyor status ID --json` tells,
//! as [`crate::api::JobView`]) and the dashboard's page `GET /jobs/<id>`,
//! rendered on the server with every value HTML-escaped: payloads, results
//! and errors come from producers, workers and remote servers. `GET
//! /jobs?id=` is the dashboard's search box: it leads to the job's page.

use std::sync::LazyLock;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::Environment;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::{Failure, Web, page_refused};
use crate::api::JobView;
use crate::template_value::from_json;

const PAGE: &str = include_str!("assets/job.html");

/// Longest stored item or event detail shown on the page, in characters.
const SHOWN_CHARS: usize = 10_000;

/// Longest id accepted: ids are short; a longer one is nobody's.
const MAX_ID: usize = 256;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A `.html` name turns HTML escaping on for every value.
    env.add_template("job.html", PAGE)
        .expect("the job template parses");
    env
});

/// `GET /api/jobs/<id>`.
pub(super) async fn api(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    if id.len() > MAX_ID {
        return Err(Failure(StatusCode::BAD_REQUEST, "id too long".into()));
    }
    let view = web.client.job(&id).await?;
    if !view.is_known() {
        // The id is not echoed: it came in the URL, from anyone.
        return Err(Failure(
            StatusCode::NOT_FOUND,
            "no such job is known".into(),
        ));
    }
    Ok(axum::Json(view).into_response())
}

/// `?id=` of the search box.
#[derive(Deserialize)]
pub(super) struct Search {
    id: Option<String>,
}

/// `GET /jobs?id=`: to the job's page (the dashboard when no id is given).
pub(super) async fn search(Query(search): Query<Search>) -> Redirect {
    match search
        .id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        Some(id) => Redirect::to(&format!(
            "/jobs/{}",
            utf8_percent_encode(id, NON_ALPHANUMERIC)
        )),
        None => Redirect::to("/"),
    }
}

/// `GET /jobs/<id>`.
pub(super) async fn page(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = page_refused(&web, &headers) {
        return refused;
    }
    if id.len() > MAX_ID {
        return (StatusCode::BAD_REQUEST, "id too long").into_response();
    }
    let view = match web.client.job(&id).await {
        Ok(view) => view,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let status = match view.is_known() {
        true => StatusCode::OK,
        false => StatusCode::NOT_FOUND,
    };
    match TEMPLATES
        .get_template("job.html")
        .and_then(|t| t.render(from_json(&context(&view))))
    {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "web: the job page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// What the page shows of the view.
fn context(view: &JobView) -> serde_json::Value {
    let record: Vec<serde_json::Value> = view
        .record
        .iter()
        .filter(|(name, _)| name.as_str() != "queue")
        .map(|(name, value)| serde_json::json!({ "name": name, "value": cut(value) }))
        .collect();
    let events: Vec<serde_json::Value> = view
        .events
        .iter()
        .map(|e| {
            let text = |field: &str| {
                e.get(field).map_or_else(String::new, |v| {
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                })
            };
            let detail = ["error", "reason", "duration_ms", "retry_at"]
                .iter()
                .filter(|f| e.get(**f).is_some_and(|v| !v.is_null()))
                .map(|f| format!("{f}: {}", text(f)))
                .collect::<Vec<_>>()
                .join("\n");
            serde_json::json!({
                "at": text("at"),
                "type": text("type"),
                "attempt": text("attempt"),
                "node": text("node"),
                "detail": cut(&detail),
            })
        })
        .collect();
    let stored = view
        .envelope
        .as_ref()
        .and_then(|v| serde_json::to_string_pretty(v).ok())
        .map(|s| cut(&s));
    serde_json::json!({
        "id": view.id,
        "id_path": utf8_percent_encode(&view.id, NON_ALPHANUMERIC).to_string(),
        "known": view.is_known(),
        "queue": view.queue,
        "path": view.queue.as_deref().map(|q| utf8_percent_encode(q, NON_ALPHANUMERIC).to_string()),
        "state": view.state,
        "node": view.node,
        "record": record,
        "stored": stored,
        "size": view.size,
        "events": events,
    })
}

/// At most [`SHOWN_CHARS`] characters of `text`.
fn cut(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{} …", &text[..end]),
        None => text.to_owned(),
    }
}

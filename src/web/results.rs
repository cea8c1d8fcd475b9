//! A tracked queue's recent results: `GET /api/results?queue=Q&failed=1&limit=N`
//! (the JSON of `conveyor results Q --json`) and the dashboard's page
//! `GET /results/<q>` (`?failed=1`, `?limit=N`), rendered on the server
//! with every value HTML-escaped: results and errors come from workers and
//! remote servers, and are shown as text whatever they hold.

use std::sync::LazyLock;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use super::{DEFAULT_LIMIT, Failure, Web, page_refused, queue_param};
use crate::api::{ApiError, Ended, MAX_RESULTS};
use crate::template_value::from_json;

const PAGE: &str = include_str!("assets/results.html");

/// Jobs the page shows when its URL does not say.
const PAGE_LIMIT: u64 = 100;

/// Longest result or error shown on the page, in characters.
const SHOWN_CHARS: usize = 2000;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A `.html` name turns HTML escaping on for every value.
    env.add_template("results.html", PAGE)
        .expect("the results template parses");
    env
});

/// `?queue=` (the API only), `?failed=1`, `?limit=`.
#[derive(Deserialize, Default)]
pub(super) struct Asked {
    queue: Option<String>,
    failed: Option<String>,
    limit: Option<u64>,
}

impl Asked {
    fn failed(&self) -> bool {
        matches!(self.failed.as_deref(), Some("1" | "true" | "yes"))
    }

    /// The limit asked for, within what the list keeps.
    fn limit(&self, default: u64) -> u64 {
        self.limit.unwrap_or(default).clamp(1, MAX_RESULTS)
    }
}

/// `GET /api/results`.
pub(super) async fn api(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(asked): Query<Asked>,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    let queue = queue_param(asked.queue.as_deref())?;
    web.configured(queue)?;
    let limit = asked.limit(DEFAULT_LIMIT);
    let results = web.client.results(queue, asked.failed(), limit).await?;
    Ok(axum::Json(results).into_response())
}

#[derive(Serialize)]
struct Row {
    id: String,
    state: String,
    attempt: u64,
    finished_at: Option<String>,
    /// The result (as JSON text) or the last error, cut.
    said: String,
}

impl Row {
    fn of(job: Ended) -> Self {
        let said = match (job.last_error, job.result) {
            (Some(error), _) => error,
            (None, Some(result)) => result.to_string(),
            (None, None) => String::new(),
        };
        let said = match said.char_indices().nth(SHOWN_CHARS) {
            Some((cut, _)) => format!("{} …", &said[..cut]),
            None => said,
        };
        Self {
            id: job.id,
            state: job.state,
            attempt: job.attempt,
            finished_at: job.finished_at,
            said,
        }
    }
}

/// `GET /results/<q>`.
pub(super) async fn page(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    Query(asked): Query<Asked>,
) -> Response {
    if let Some(refused) = page_refused(&web, &headers) {
        return refused;
    }
    let failed = asked.failed();
    let results = match web
        .client
        .results(&queue, failed, asked.limit(PAGE_LIMIT))
        .await
    {
        Ok(results) => results,
        // The name is not echoed: it came in the URL, from anyone.
        Err(ApiError::NotFound(_)) => {
            return (StatusCode::NOT_FOUND, "no such queue is configured").into_response();
        }
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let jobs: Vec<Row> = results.jobs.into_iter().map(Row::of).collect();
    let context = serde_json::json!({
        "path": utf8_percent_encode(&queue, NON_ALPHANUMERIC).to_string(),
        "queue": queue,
        "tracked": results.tracked,
        "failed": failed,
        "expired": results.expired,
        "jobs": jobs,
    });
    match TEMPLATES
        .get_template("results.html")
        .and_then(|t| t.render(from_json(&context)))
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "web: the results page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

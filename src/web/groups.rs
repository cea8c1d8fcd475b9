//! A queue's groups: `GET /api/groups?queue=Q&limit=N`, the JSON of
//! `conveyor groups Q --json`.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{DEFAULT_LIMIT, Failure, Web, queue_param};
use crate::api::MAX_GROUPS;

/// `?queue=`, `?limit=`.
#[derive(Deserialize, Default)]
pub(super) struct Asked {
    queue: Option<String>,
    limit: Option<u64>,
}

/// `GET /api/groups`.
pub(super) async fn api(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(asked): Query<Asked>,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    let queue = queue_param(asked.queue.as_deref())?;
    web.configured(queue)?;
    let limit = asked.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_GROUPS);
    let groups = web.client.groups(queue, limit).await?;
    Ok(axum::Json(groups).into_response())
}

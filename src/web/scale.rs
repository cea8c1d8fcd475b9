//! `GET /api/scale?queue=Q`: a queue's demand and the slots live nodes give
//! it ([`crate::api::Scale`]), the JSON KEDA's `metrics-api` scaler reads
//! (docs/kubernetes.md). It asks for the token like every `/api/` read.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Failure, Web, queue_param};
use crate::api::ApiError;

/// `?queue=`.
#[derive(Deserialize, Default)]
pub(super) struct Asked {
    queue: Option<String>,
}

/// `GET /api/scale`.
pub(super) async fn api(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(asked): Query<Asked>,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    let queue = queue_param(asked.queue.as_deref())?;
    match web.client.scale(queue).await {
        Ok(scale) => Ok(axum::Json(scale).into_response()),
        // The name is not echoed: it came in the URL, from anyone.
        Err(ApiError::NotFound(_)) => Err(Failure(
            StatusCode::NOT_FOUND,
            "no such queue is configured".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

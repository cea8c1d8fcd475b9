//! Flows on the dashboard (DESIGN section 13): `GET /api/flows` (the
//! recent ones, as `conveyor flow list --json`), `GET /api/flows/<fid>`
//! (as `conveyor flow show --json`), and the page `GET /flows/<fid>`: the
//! flow's graph drawn on the server as SVG (no script), each node in its
//! state's colour, and its nodes' table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::{Failure, Web, page_refused};
use crate::api::{ApiError, FlowSummary, FlowView};
use crate::template_value::from_json;

const PAGE: &str = include_str!("assets/flow.html");

/// Flows the dashboard and `/api/flows` list.
pub(super) const LISTED: u64 = 20;

/// Most nodes a graph draws; a larger flow shows its table only.
const DRAWN: usize = 400;

/// Longest result shown in the nodes' table, in characters.
const RESULT_CHARS: usize = 200;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A `.html` name turns HTML escaping on for every value.
    env.add_template("flow.html", PAGE)
        .expect("the flow template parses");
    env
});

/// `GET /api/flows`.
pub(super) async fn api_list(
    State(web): State<Web>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    Ok(axum::Json(web.client.flows(LISTED).await?).into_response())
}

/// `GET /api/flows/<fid>`.
pub(super) async fn api_one(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(fid): Path<String>,
) -> Result<Response, Failure> {
    web.admit(&headers)?;
    if !crate::flow::valid_name(&fid) {
        return Err(Failure(StatusCode::NOT_FOUND, "no such flow".into()));
    }
    match web.client.flow(&fid).await {
        Ok(view) => Ok(axum::Json(view).into_response()),
        // The id is not echoed: it came in the URL, from anyone.
        Err(ApiError::NotFound(_)) => Err(Failure(StatusCode::NOT_FOUND, "no such flow".into())),
        Err(e) => Err(e.into()),
    }
}

/// `GET /flows/<fid>`.
pub(super) async fn page(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(fid): Path<String>,
) -> Response {
    if let Some(refused) = page_refused(&web, &headers) {
        return refused;
    }
    let view = match crate::flow::valid_name(&fid) {
        false => None,
        true => match web.client.flow(&fid).await {
            Ok(view) => Some(view),
            Err(ApiError::NotFound(_)) => None,
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        },
    };
    let status = match view {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    };
    let context = match &view {
        Some(view) => context(view),
        None => serde_json::json!({ "known": false }),
    };
    match TEMPLATES
        .get_template("flow.html")
        .and_then(|t| t.render(from_json(&context)))
    {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "web: the flow page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// The dashboard's rows: failed and cancelled flows first, then running,
/// then succeeded, newest first within each.
pub(super) fn rows(mut flows: Vec<FlowSummary>) -> Vec<serde_json::Value> {
    let rank = |status: &str| match status {
        "failed" | "cancelled" => 0,
        "running" => 1,
        _ => 2,
    };
    flows.sort_by_key(|f| rank(&f.status));
    flows
        .into_iter()
        .map(|f| {
            let percent = match f.total {
                0 => 100,
                t => f.ended * 100 / t,
            };
            serde_json::json!({
                "flow": f.flow.clone(),
                // Flow ids are [A-Za-z0-9_.-]: a path segment as they are.
                "path": f.flow,
                "status": f.status,
                "ended": f.ended,
                "total": f.total,
                "percent": percent,
                "problems": f.dead + f.skipped + f.cancelled,
                "created_at": f.created_at,
            })
        })
        .collect()
}

/// What the page shows of the view.
fn context(view: &FlowView) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = view
        .nodes
        .iter()
        .map(|n| {
            let id = format!("{}:{}", view.flow, n.name);
            let result = n.result.as_ref().map_or(String::new(), |r| {
                crate::cli::results::cut(r.get(), RESULT_CHARS)
            });
            serde_json::json!({
                "name": n.name,
                "id_path": utf8_percent_encode(&id, NON_ALPHANUMERIC).to_string(),
                "queue": n.queue,
                "status": n.status,
                "after": n.after.join(", "),
                "attempt": n.attempt,
                "ended_at": n.ended_at,
                "result": result,
            })
        })
        .collect();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for n in &view.nodes {
        *counts.entry(n.status.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    serde_json::json!({
        "known": true,
        "flow": view.flow,
        "status": view.status,
        "on_failure": view.on_failure,
        "created_at": view.created_at,
        "ended_at": view.ended_at,
        "total": view.total,
        "ended": view.ended,
        "counts": counts.join(", "),
        "graph": graph(view),
        "drawn": DRAWN,
        "nodes": nodes,
    })
}

/// Node boxes and gaps of the graph, in SVG units.
const BOX_W: usize = 150;
const BOX_H: usize = 24;
const GAP_X: usize = 40;
const GAP_Y: usize = 10;

/// The flow's graph as SVG: a column per depth (the longest chain of
/// parents before a node), a box per node in its state's class with its
/// name and state as its title, a line per edge. `None` for a flow of more
/// than [`DRAWN`] nodes, or none.
fn graph(view: &FlowView) -> Option<String> {
    if view.nodes.is_empty() || view.nodes.len() > DRAWN {
        return None;
    }
    let index: BTreeMap<&str, usize> = view
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    // Depths in Kahn's order (a stored flow has no cycle).
    let mut left: Vec<usize> = view.nodes.iter().map(|n| n.after.len()).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); view.nodes.len()];
    for (i, n) in view.nodes.iter().enumerate() {
        for p in &n.after {
            match index.get(p.as_str()) {
                Some(&p) => children[p].push(i),
                None => left[i] -= 1,
            }
        }
    }
    let mut depth = vec![0usize; view.nodes.len()];
    let mut ready: Vec<usize> = (0..view.nodes.len()).filter(|&i| left[i] == 0).collect();
    while let Some(i) = ready.pop() {
        for &c in &children[i] {
            depth[c] = depth[c].max(depth[i] + 1);
            left[c] -= 1;
            if left[c] == 0 {
                ready.push(c);
            }
        }
    }
    let columns = depth.iter().max().copied().unwrap_or(0) + 1;
    let mut row_in_column = vec![0usize; columns];
    let mut at = vec![(0usize, 0usize); view.nodes.len()];
    for (i, d) in depth.iter().enumerate() {
        at[i] = (
            *d * (BOX_W + GAP_X) + GAP_Y,
            row_in_column[*d] * (BOX_H + GAP_Y) + GAP_Y,
        );
        row_in_column[*d] += 1;
    }
    let width = columns * (BOX_W + GAP_X) - GAP_X + 2 * GAP_Y;
    let rows = row_in_column.iter().max().copied().unwrap_or(1);
    let height = rows * (BOX_H + GAP_Y) + GAP_Y;
    let mut svg = String::with_capacity(view.nodes.len() * 200);
    let _ = write!(
        svg,
        r#"<svg class="flow" id="graph" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="the flow's nodes and what they wait for">"#
    );
    for (i, kids) in children.iter().enumerate() {
        for &c in kids {
            let (x1, y1) = (at[i].0 + BOX_W, at[i].1 + BOX_H / 2);
            let (x2, y2) = (at[c].0, at[c].1 + BOX_H / 2);
            let _ = write!(
                svg,
                r#"<line class="edge" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}"/>"#
            );
        }
    }
    for (i, n) in view.nodes.iter().enumerate() {
        let (x, y) = at[i];
        let name = escape(&n.name);
        let shown: String = name.chars().take(20).collect();
        let status = escape(&n.status);
        let _ = write!(
            svg,
            r#"<g class="node {status}" data-node="{name}"><title>{name}: {status}</title><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4"/><text x="{}" y="{}">{shown}</text></g>"#,
            x + 6,
            y + 16
        );
    }
    svg.push_str("</svg>");
    Some(svg)
}

/// Text for SVG markup (node names are `[A-Za-z0-9_.-]`; escaped anyway).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

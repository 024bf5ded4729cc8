//! The metadata API, facing the VMs:
//!
//! - `GET /metadata/v1/{key}`: 204 while the plan is not ready, 200 with the plan once
//!   it is. With `?wait=SECONDS&after=GENERATION` the request is held until the plan's
//!   generation passes `after` (answered at once then) or the wait runs out (204).
//! - `PUT /metadata/v1/{key}/nodes/{node}/status` with `Authorization: Bearer <node
//!   token>`: the agent's report.
//!
//! Unknown keys get 404, as fast as known ones: lookups go through an in-memory map,
//! never the database, and a key that is not shaped like one is refused before it.

pub mod hub;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use shoal_protocol::contract::{self, GENERATION_HEADER, MAX_STATUS_BYTES, PUBLISHED_HEADER};
use shoal_protocol::{NodeStatus, Phase};

pub use self::hub::{NodeKey, PlanDoc, PlanHub};
use crate::keys::{constant_time_eq, is_secret_shaped};
use crate::metrics::Metrics;

/// The longest a long-poll is held.
pub const MAX_WAIT: Duration = Duration::from_secs(contract::MAX_WAIT_SECS);

/// Where the metadata API hands the reports it accepted (the engine). A report is
/// answered 204 only once the sink has it recorded.
pub trait StatusSink: Send + Sync + std::fmt::Debug {
    /// Records `node`'s report; the error is logged, never shown to the agent.
    fn report<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// What the metadata router needs, and nothing more.
#[derive(Debug, Clone)]
pub struct MetadataState {
    /// The plans served, and who may report.
    pub hub: Arc<PlanHub>,
    /// Where accepted reports go.
    pub sink: Arc<dyn StatusSink>,
    /// Request counters.
    pub metrics: Arc<Metrics>,
}

/// The metadata router.
pub fn router(state: MetadataState) -> Router {
    Router::new()
        .route(contract::PLAN_ROUTE, get(get_plan))
        .route(contract::STATUS_ROUTE, put(put_status))
        .layer(DefaultBodyLimit::max(MAX_STATUS_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track_metadata,
        ))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct PollQuery {
    wait: Option<u64>,
    after: Option<u64>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "unknown cluster key")
}

async fn get_plan(
    State(state): State<MetadataState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "wait and after must be whole numbers",
        );
    };
    if !is_secret_shaped(&key) {
        return not_found();
    }
    let Some(entry) = state.hub.entry(&key) else {
        return not_found();
    };
    let after = q.after.unwrap_or(0);
    let wait = Duration::from_secs(q.wait.unwrap_or(0)).min(MAX_WAIT);
    let mut rx = entry.plan.subscribe();
    let newer = |p: &Option<PlanDoc>| p.as_ref().is_some_and(|d| d.generation > after);
    let doc = if newer(&rx.borrow()) || wait.is_zero() {
        rx.borrow().clone()
    } else {
        let waited = match tokio::time::timeout(wait, rx.wait_for(newer)).await {
            Ok(Ok(d)) => Some(d.clone()),
            // Timed out, or the cluster went away while we waited.
            _ => None,
        };
        waited.unwrap_or_else(|| rx.borrow().clone())
    };
    match doc {
        Some(d) if d.generation > after => {
            let etag = format!("\"g{}\"", d.generation);
            let unchanged = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
            let mut resp = if unchanged {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    d.bytes,
                )
                    .into_response()
            };
            let h = resp.headers_mut();
            insert_generation(h, d.generation);
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&d.published_ms.to_string()) {
                h.insert(PUBLISHED_HEADER, v);
            }
            resp
        }
        other => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            insert_generation(resp.headers_mut(), other.map_or(0, |d| d.generation));
            resp
        }
    }
}

fn insert_generation(h: &mut HeaderMap, generation: u64) {
    if let Ok(v) = HeaderValue::from_str(&generation.to_string()) {
        h.insert(GENERATION_HEADER, v);
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn put_status(
    State(state): State<MetadataState>,
    Path((key, node)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_secret_shaped(&key) {
        return not_found();
    }
    let Some(entry) = state.hub.entry(&key) else {
        return not_found();
    };
    let Some(token) = entry.token(&node) else {
        return error(StatusCode::NOT_FOUND, "unknown node");
    };
    let authorized =
        bearer(&headers).is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "a node may write only its own status, with its own token",
        );
    }
    let status: NodeStatus = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("malformed status: {e}")),
    };
    if let Err(e) = status.validate() {
        return error(StatusCode::BAD_REQUEST, &format!("invalid status: {e}"));
    }
    // Only the coordinator knows a VM is pending or running, or a node lost.
    if matches!(
        status.phase,
        Phase::Pending | Phase::VmRunning | Phase::Lost
    ) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "invalid status: phase {} is the coordinator's to set, not an agent's",
                status.phase
            ),
        );
    }
    match state.sink.report(&entry.cluster, &node, &status).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(cluster = %entry.cluster, %node, error = %e, "recording a status failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not record the status",
            )
        }
    }
}

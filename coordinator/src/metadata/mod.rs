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
    // What the answer needs of the request's headers, taken now: a held long-poll
    // keeps nothing else of them (each held poll is one of thousands).
    let gzip_ok = accepts_gzip(&headers);
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    drop(headers);
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
            // Each representation has its own strong ETag; either one means the
            // client holds this generation.
            let plain = format!("\"g{}\"", d.generation);
            let zipped = format!("\"g{}.gz\"", d.generation);
            let unchanged = if_none_match.as_deref().is_some_and(|v| {
                v.split(',')
                    .map(str::trim)
                    .any(|t| t == plain || t == zipped || t == "*")
            });
            let gzip = d.gzip.clone().filter(|_| gzip_ok);
            let etag = if gzip.is_some() { zipped } else { plain };
            let mut resp = if unchanged {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                match gzip {
                    Some(body) => (
                        StatusCode::OK,
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CONTENT_ENCODING, "gzip"),
                        ],
                        body,
                    )
                        .into_response(),
                    None => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        d.bytes,
                    )
                        .into_response(),
                }
            };
            let h = resp.headers_mut();
            h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
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

/// Whether the request's `Accept-Encoding` takes gzip (named, not refused with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !refused
        })
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

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;

    #[derive(Debug)]
    struct Nowhere;

    impl StatusSink for Nowhere {
        fn report<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a NodeStatus,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }

    const KEY: &str = "5a0c1e9f4b7d2a86c3e1f09d8b6a4c2e7f1d3b5a9c8e0f2d4b6a8c0e1f3d5b7a";

    /// A router serving `plan` as generation 3.
    fn serving(plan: &[u8]) -> Router {
        let hub = Arc::new(PlanHub::default());
        hub.register(KEY, "c", vec![]);
        hub.publish(KEY, 3, Bytes::copy_from_slice(plan));
        router(MetadataState {
            hub,
            sink: Arc::new(Nowhere),
            metrics: Arc::default(),
        })
    }

    async fn get(r: &Router, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = axum::http::Request::get(contract::plan_path(KEY));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = r
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (parts.status, parts.headers, bytes.to_vec())
    }

    fn big_plan() -> Vec<u8> {
        let nodes: Vec<_> = (0..200)
            .map(|i| serde_json::json!({ "id": format!("node-{i}"), "index": i, "address": format!("10.0.{}.{}", i / 250, i % 250) }))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "schema": 1, "generation": 3, "nodes": nodes }))
            .expect("json")
    }

    #[tokio::test]
    async fn a_plan_is_gzipped_for_clients_that_take_it_and_the_same_bytes_come_out() {
        let plan = big_plan();
        let r = serving(&plan);
        let (status, h, body) = get(&r, &[("accept-encoding", "gzip")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(h[header::ETAG], "\"g3.gz\"");
        assert_eq!(h[header::VARY], "accept-encoding");
        assert!(
            body.len() * 4 < plan.len(),
            "{} of {}",
            body.len(),
            plan.len()
        );
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body.as_slice())
            .read_to_end(&mut out)
            .expect("gzip");
        assert_eq!(out, plan);

        // Not asked for, or refused with q=0: the JSON as it is.
        for asked in [&[][..], &[("accept-encoding", "gzip;q=0, identity")][..]] {
            let (status, h, body) = get(&r, asked).await;
            assert_eq!(status, StatusCode::OK);
            assert!(h.get(header::CONTENT_ENCODING).is_none(), "{asked:?}");
            assert_eq!(h[header::ETAG], "\"g3\"");
            assert_eq!(body, plan);
        }
        // Either representation's tag means the client has this generation.
        for tag in ["\"g3\"", "\"g3.gz\""] {
            let (status, _, body) =
                get(&r, &[("accept-encoding", "gzip"), ("if-none-match", tag)]).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "{tag}");
            assert!(body.is_empty());
        }
        let (status, _, _) = get(&r, &[("if-none-match", "\"g2\"")]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_small_plan_is_served_as_it_is() {
        let plan = br#"{"schema":1,"generation":3,"nodes":[]}"#;
        let (status, h, body) = get(&serving(plan), &[("accept-encoding", "gzip")]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(body, plan);
    }
}

//! The operator API: JSON over HTTP on loopback, every call with
//! `Authorization: Bearer <token>` (the token file in the state directory).
//!
//! - `GET /v1/clusters` · `POST /v1/clusters` · `GET /v1/clusters/{name}` ·
//!   `DELETE /v1/clusters/{name}` · `GET /v1/clusters/{name}/user-data?node=ID` ·
//!   `GET /v1/health` · `GET /v1/openapi.json` (this API's OpenAPI 3.0 document,
//!   `coordinator/openapi.json`) · `GET /metrics` (Prometheus text format, see
//!   [`crate::metrics`]).
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a fitting status.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shoal_protocol::{ContainerStatus, NodeFailure, Phase, PhaseTiming};

use crate::engine::{CreateRequest, Engine, EngineError};
use crate::keys::constant_time_eq;
use crate::store::{now_ms, ClusterRow, ClusterState, NodeRow};

/// Largest request body the operator API takes (a blueprint is a few KiB).
pub const MAX_BODY: usize = 256 << 10;

/// A cluster as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// State.
    pub state: ClusterState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Plan generation.
    pub generation: u64,
    /// The base URL agents use.
    pub metadata_url: String,
    /// Node count.
    pub node_count: u32,
    /// Blueprint name.
    pub blueprint: String,
    /// Overlay range.
    pub overlay: String,
    /// When it was requested (ms since the epoch).
    pub created_ms: u64,
    /// Milliseconds from request to AVAILABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_available_ms: Option<u64>,
    /// Where everything the cluster owns at its provider can be found (cloud
    /// providers: the tag or resource group), so a FAILED cluster's leftovers can be
    /// checked by hand; `delete` finds them the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<String>,
    /// Nodes (in `show`; empty in `list`).
    #[serde(default)]
    pub nodes: Vec<NodeView>,
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Index.
    pub index: u32,
    /// Provider's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Private address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
    /// Phase.
    pub phase: Phase,
    /// Failure, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeFailure>,
    /// Milliseconds since the node was requested.
    pub elapsed_ms: u64,
    /// Containers as the agent reported them.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
    /// Phase timings the agent reported.
    #[serde(default)]
    pub timings: Vec<PhaseTiming>,
    /// When the VM was requested and seen running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ms: Option<u64>,
    /// When the provider reported the VM running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_ms: Option<u64>,
    /// Provider facts: the local provider's `netns`, `docker_socket`, log paths.
    #[serde(flatten)]
    pub details: BTreeMap<String, String>,
}

impl ClusterView {
    /// Builds the view of a stored cluster.
    pub fn new(c: &ClusterRow, nodes: &[NodeRow]) -> ClusterView {
        let blueprint = serde_json::from_str::<serde_json::Value>(&c.blueprint)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(String::from))
            .unwrap_or_default();
        let now = now_ms();
        ClusterView {
            name: c.name.clone(),
            provider: c.provider.clone(),
            state: c.state,
            reason: c.reason.clone(),
            generation: c.generation,
            metadata_url: c.metadata_url.clone(),
            node_count: c.node_count,
            blueprint,
            overlay: c.overlay.clone(),
            created_ms: c.created_ms,
            time_to_available_ms: c.available_ms.map(|a| a.saturating_sub(c.created_ms)),
            resources: None,
            nodes: nodes
                .iter()
                .map(|n| NodeView {
                    id: n.id.clone(),
                    index: n.index,
                    instance_id: n.instance_id.clone(),
                    private_ip: n.private_ip,
                    phase: n.phase,
                    error: n.status.as_ref().and_then(|s| s.error.clone()),
                    elapsed_ms: now.saturating_sub(n.requested_ms.unwrap_or(c.created_ms)),
                    containers: n
                        .status
                        .as_ref()
                        .map(|s| s.containers.clone())
                        .unwrap_or_default(),
                    timings: n
                        .status
                        .as_ref()
                        .map(|s| s.timings.clone())
                        .unwrap_or_default(),
                    requested_ms: n.requested_ms,
                    running_ms: n.running_ms,
                    details: n.details.clone(),
                })
                .collect(),
        }
    }
}

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let (status, code) = match &e {
            EngineError::BadRequest(_) | EngineError::Blueprint(_) => {
                (StatusCode::BAD_REQUEST, "bad-request")
            }
            EngineError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            EngineError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            EngineError::Store(crate::store::StoreError::Exists(_)) => {
                (StatusCode::CONFLICT, "exists")
            }
            EngineError::ProviderUnavailable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "provider-unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

/// Shared state of the operator API.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The operator token.
    pub token: Arc<String>,
}

/// The operator router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/clusters", get(list).post(create))
        .route("/v1/clusters/{name}", get(show).delete(delete))
        .route("/v1/clusters/{name}/user-data", get(user_data))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn auth(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes()));
    if !ok {
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "missing or wrong bearer token (the CLI reads it from <state-dir>/token or SHOAL_TOKEN)".into(),
        }
        .into_response();
    }
    next.run(req).await
}

async fn health(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let providers: BTreeMap<String, serde_json::Value> = s
        .engine
        .providers()
        .into_iter()
        .map(|(name, why)| {
            (
                name,
                match why {
                    None => serde_json::json!({"available": true}),
                    Some(w) => serde_json::json!({"available": false, "why": w}),
                },
            )
        })
        .collect();
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "providers": providers,
        "advertise_url": s.engine.advertise_url(),
    }))
}

/// The OpenAPI document of this API, kept true by `tests/openapi/run` (schemathesis
/// against a live coordinator) and by the unit tests below.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let text = s
        .engine
        .metrics
        .render(&s.engine)
        .map_err(EngineError::from)?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

async fn list(State(s): State<ApiState>) -> Result<Json<Vec<ClusterView>>, ApiError> {
    let clusters = s.engine.store.clusters().map_err(EngineError::from)?;
    Ok(Json(
        clusters
            .iter()
            .map(|c| {
                let mut v = ClusterView::new(c, &[]);
                v.nodes.clear();
                v
            })
            .collect(),
    ))
}

async fn create(
    State(s): State<ApiState>,
    body: Result<Json<CreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad-request",
        message: e.body_text(),
    })?;
    let row = s.engine.create(req)?;
    let nodes = s.engine.store.nodes(&row.name).map_err(EngineError::from)?;
    let mut v = ClusterView::new(&row, &nodes);
    v.resources = s.engine.footprint(&row);
    Ok((StatusCode::ACCEPTED, Json(v)))
}

fn view(s: &ApiState, name: &str) -> Result<ClusterView, ApiError> {
    let c = s
        .engine
        .store
        .cluster(name)
        .map_err(EngineError::from)?
        .ok_or_else(|| EngineError::NotFound(name.to_string()))?;
    let nodes = s.engine.store.nodes(name).map_err(EngineError::from)?;
    let mut v = ClusterView::new(&c, &nodes);
    v.resources = s.engine.footprint(&c);
    Ok(v)
}

async fn show(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    view(&s, &name).map(Json)
}

async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    s.engine.delete(&name)?;
    Ok((StatusCode::ACCEPTED, Json(view(&s, &name)?)))
}

#[derive(Debug, Deserialize)]
struct UserDataQuery {
    node: Option<String>,
}

async fn user_data(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<UserDataQuery>,
) -> Result<Response, ApiError> {
    let node = q.node.unwrap_or_else(|| "node-0".to_string());
    let doc = s.engine.user_data(&name, &node)?;
    Ok((
        [(header::CONTENT_TYPE, "text/cloud-config; charset=utf-8")],
        doc,
    )
        .into_response())
}

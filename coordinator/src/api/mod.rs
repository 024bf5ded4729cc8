//! The operator API: JSON over HTTP on loopback, every call with
//! `Authorization: Bearer <token>` (the token file in the state directory).
//!
//! - `GET /v1/clusters` · `POST /v1/clusters` · `GET /v1/clusters/{name}` ·
//!   `DELETE /v1/clusters/{name}` · `POST /v1/clusters/{name}/scale` ·
//!   `POST /v1/clusters/{name}/repair` · `POST /v1/clusters/{name}/nodes/{node}/reboot`
//!   · `GET /v1/clusters/{name}/user-data?node=ID` ·
//!   `GET /v1/health` · `GET /v1/openapi.json` (this API's OpenAPI 3.0 document,
//!   `coordinator/openapi.json`) · `GET /metrics` (Prometheus text format, see
//!   [`crate::metrics`]).
//!
//! Errors are `{"error": {"code": "...", "message": "..."}}` with a fitting status.
//!
//! The two documents a person reads in a browser, `GET /v1/openapi.json` and
//! `GET /metrics`, also take a web console session ([`BrowserSession`]), so the
//! console can link to them; every other route, and every write, takes only the token.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::engine::{CreateRequest, Engine, EngineError, RepairRequest, ScaleRequest};
use crate::keys::constant_time_eq;
use crate::view::ClusterView;

/// Largest request body the operator API takes (a blueprint is a few KiB).
pub const MAX_BODY: usize = 256 << 10;

/// What `serve` writes for the CLI: where the operator API is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiInfo {
    /// Base URL of the operator API.
    pub url: String,
    /// Base URL of the metadata API.
    pub metadata_url: String,
    /// The server's pid.
    pub pid: u32,
    /// The CA certificate clients of an `https` URL must trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code (`not-found`, `exists`, …).
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// What went wrong, for a person.
    pub fn message(&self) -> &str {
        &self.message
    }
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
            EngineError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *code),
            EngineError::Provider(crate::providers::ProviderError::Unsupported { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unsupported")
            }
            EngineError::Store(crate::store::StoreError::Exists(_)) => {
                (StatusCode::CONFLICT, "exists")
            }
            EngineError::ProviderUnavailable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "provider-unavailable")
            }
            EngineError::Provider(crate::providers::ProviderError::ImagesMissing(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "images-missing")
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

/// A browser's session that may stand in for the token on [`SESSION_READABLE`] routes:
/// the web console's sessions, when `serve` mounts the console.
pub trait BrowserSession: Send + Sync + std::fmt::Debug {
    /// Whether the request's cookies hold a valid session.
    fn valid(&self, headers: &HeaderMap) -> bool;
}

/// The routes a [`BrowserSession`] may read (`GET` only): the documents the console
/// links to. Nothing a session reads here changes state, and no write takes a cookie,
/// so no cross-site request can act through one.
pub const SESSION_READABLE: &[&str] = &["/v1/openapi.json", "/metrics"];

/// Shared state of the operator API.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The operator token.
    pub token: Arc<String>,
    /// Browser sessions accepted on [`SESSION_READABLE`] routes (none: token only).
    pub browser: Option<Arc<dyn BrowserSession>>,
}

/// The operator router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/clusters", get(list).post(create))
        .route("/v1/clusters/{name}", get(show).delete(delete))
        .route("/v1/clusters/{name}/scale", post(scale))
        .route("/v1/clusters/{name}/repair", post(repair))
        .route("/v1/clusters/{name}/nodes/{node}/reboot", post(reboot))
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
    let ok = ok
        || ((req.method() == Method::GET || req.method() == Method::HEAD)
            && SESSION_READABLE.contains(&req.uri().path())
            && state
                .browser
                .as_ref()
                .is_some_and(|b| b.valid(req.headers())));
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
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let snap = s.engine.metrics_snapshot().await?;
    let text = s.engine.metrics().render(&snap);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

async fn list(State(s): State<ApiState>) -> Result<Json<Vec<ClusterView>>, ApiError> {
    let clusters = s.engine.clusters().await?;
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

fn bad_request(message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad-request",
        message,
    }
}

type JsonBody = Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>;

/// A request body that is a JSON object of type `T`: 413 for an oversized body, 400
/// for anything else that is not one.
fn object_body<T: serde::de::DeserializeOwned>(body: JsonBody) -> Result<T, ApiError> {
    let Json(value) = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too-large",
            message: e.body_text(),
        },
        _ => bad_request(e.body_text()),
    })?;
    // serde reads a struct from a JSON array too (fields by position); the document
    // says objects, and a positional body is a client bug best refused.
    if !value.is_object() {
        return Err(bad_request("the body must be a JSON object".into()));
    }
    if value.get("params").is_some_and(|p| !p.is_object()) {
        return Err(bad_request("params must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| bad_request(format!("invalid request: {e}")))
}

async fn create(
    State(s): State<ApiState>,
    body: JsonBody,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let req: CreateRequest = object_body(body)?;
    let (row, nodes) = s.engine.create(req).await?;
    let mut v = ClusterView::new(&row, &nodes);
    v.resources = s.engine.footprint(&row);
    Ok((StatusCode::ACCEPTED, Json(v)))
}

async fn view(s: &ApiState, name: &str) -> Result<ClusterView, ApiError> {
    cluster_view(&s.engine, name).await
}

/// A cluster as `GET /v1/clusters/{name}` shows it (and the console's cluster page):
/// with its changes and state events, its footprint and its VMs' live details.
pub async fn cluster_view(engine: &Engine, name: &str) -> Result<ClusterView, ApiError> {
    // Two reads, so the history is read first: the state and nodes read after it are
    // at least as new. Read the other way round, a change could show as done beside
    // the UPDATING state it had just left, and `scale --wait`, which waits for the
    // change, would print a cluster still UPDATING.
    let history = engine.history(name).await?;
    let (c, nodes) = engine.cluster(name).await?;
    let mut v = ClusterView::with_history(&c, &nodes, &history);
    v.resources = engine.footprint(&c);
    engine.add_live_details(&c, &mut v);
    Ok(v)
}

/// 202 with the cluster as it is now.
async fn accepted(s: &ApiState, name: &str) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(view(s, name).await?)))
}

async fn scale(
    State(s): State<ApiState>,
    name: PathResult<String>,
    body: JsonBody,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let (name, req): (String, ScaleRequest) = (path_or_400(name)?, object_body(body)?);
    s.engine.scale(&name, req).await?;
    accepted(&s, &name).await
}

async fn repair(
    State(s): State<ApiState>,
    name: PathResult<String>,
    body: JsonBody,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let (name, req): (String, RepairRequest) = (path_or_400(name)?, object_body(body)?);
    s.engine.repair(&name, req).await?;
    accepted(&s, &name).await
}

async fn reboot(
    State(s): State<ApiState>,
    path: PathResult<(String, String)>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let (name, node) = path_or_400(path)?;
    s.engine.reboot(&name, &node).await?;
    accepted(&s, &name).await
}

type PathResult<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

/// Axum answers a path it cannot decode in plain text; this API answers in JSON.
fn path_or_400<T>(p: PathResult<T>) -> Result<T, ApiError> {
    p.map(|Path(v)| v).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad-request",
        message: e.body_text(),
    })
}

async fn show(
    State(s): State<ApiState>,
    name: PathResult<String>,
) -> Result<Json<ClusterView>, ApiError> {
    view(&s, &path_or_400(name)?).await.map(Json)
}

async fn delete(
    State(s): State<ApiState>,
    name: PathResult<String>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let name = path_or_400(name)?;
    let (c, nodes) = s.engine.delete(&name).await?;
    let mut v = ClusterView::new(&c, &nodes);
    v.resources = s.engine.footprint(&c);
    Ok((StatusCode::ACCEPTED, Json(v)))
}

#[derive(Debug, Deserialize)]
struct UserDataQuery {
    node: Option<String>,
}

async fn user_data(
    State(s): State<ApiState>,
    name: PathResult<String>,
    query: Result<Query<UserDataQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let name = path_or_400(name)?;
    let Query(q) = query.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad-request",
        message: e.body_text(),
    })?;
    let node = q.node.unwrap_or_else(|| "node-0".to_string());
    let doc = s.engine.user_data(&name, &node).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/cloud-config; charset=utf-8")],
        doc,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineSettings;
    use crate::providers::registry::Registry;
    use crate::store::{ClusterState, SqliteStore};

    /// The routes `router` serves, by path and method: the document must list exactly
    /// these (schemathesis, in tests/openapi/run, checks the answers against it).
    const ROUTES: &[(&str, &[&str])] = &[
        ("/v1/health", &["get"]),
        ("/v1/openapi.json", &["get"]),
        ("/metrics", &["get"]),
        ("/v1/clusters", &["get", "post"]),
        ("/v1/clusters/{name}", &["get", "delete"]),
        ("/v1/clusters/{name}/scale", &["post"]),
        ("/v1/clusters/{name}/repair", &["post"]),
        ("/v1/clusters/{name}/nodes/{node}/reboot", &["post"]),
        ("/v1/clusters/{name}/user-data", &["get"]),
    ];

    fn doc() -> serde_json::Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
    }

    #[test]
    fn the_document_lists_every_route_and_nothing_else() {
        let d = doc();
        assert_eq!(d["openapi"], "3.0.3");
        let paths = d["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), ROUTES.len(), "{:?}", paths.keys());
        for (path, methods) in ROUTES {
            let item = paths
                .get(*path)
                .and_then(|p| p.as_object())
                .unwrap_or_else(|| panic!("{path} is not documented"));
            let documented: Vec<&str> = item
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "parameters")
                .collect();
            assert_eq!(documented.len(), methods.len(), "{path}: {documented:?}");
            for m in *methods {
                let op = &item[*m];
                assert!(op["operationId"].is_string(), "{m} {path}");
                assert!(op["responses"]["401"].is_object(), "{m} {path} lacks 401");
            }
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let d = doc();
        let text = OPENAPI_JSON;
        for r in text.split("\"$ref\": \"#/components/").skip(1) {
            let target = r.split('"').next().expect("ref");
            let mut node = &d["components"];
            for part in target.split('/') {
                node = &node[part];
            }
            assert!(node.is_object(), "dangling $ref {target}");
        }
    }

    /// Every required property of `schema` is in `v`, and every key of `v` is
    /// documented (or the schema takes any string property, like Node's details).
    fn matches_schema(d: &serde_json::Value, schema: &str, v: &serde_json::Value) {
        let schema = &d["components"]["schemas"][schema];
        for req in schema["required"].as_array().into_iter().flatten() {
            let k = req.as_str().expect("name");
            assert!(v.get(k).is_some(), "{k} is required but not serialised");
        }
        let free = schema["additionalProperties"].is_object();
        for k in v.as_object().expect("object").keys() {
            assert!(
                schema["properties"].get(k).is_some() || free,
                "{k} is serialised but not documented"
            );
        }
    }

    #[test]
    fn the_cluster_schema_matches_what_the_api_serialises() {
        use crate::store::{ChangeRow, ChangeSpec, ClusterEvent, GenerationRow, History, NodeRow};
        let d = doc();
        let mut c = crate::store::conformance::cluster("demo");
        c.auto_repair_secs = Some(60);
        let mut n = NodeRow::requested("node-0".into(), 0, "server".into(), "t".into(), 1);
        n.private_ip = Some("10.0.0.9".parse().expect("ip"));
        n.generation = 2;
        n.converged_ms = Some(3);
        n.last_seen_ms = Some(4);
        n.leaving = true;
        n.incarnation = 1;
        n.details.insert("netns".into(), "x".into());
        let h = History {
            changes: vec![ChangeRow {
                id: 2,
                kind: crate::store::ChangeKind::Scale,
                spec: ChangeSpec {
                    summary: "workers 1 → 2".into(),
                    group: Some("workers".into()),
                    add: vec!["node-1".into()],
                    remove: vec!["node-0".into()],
                    repair: vec!["node-0".into()],
                },
                asked_ms: 1,
                step: "done".into(),
                generation: Some(2),
                published_ms: Some(2),
                done_ms: Some(3),
                outcome: Some(Err("why".into())),
            }],
            generations: vec![GenerationRow {
                generation: 2,
                published_ms: 2,
                change: Some(2),
                converged: vec![("node-0".into(), 3)],
            }],
            events: vec![ClusterEvent {
                at_ms: 1,
                state: ClusterState::Degraded,
                reason: Some("node-0 lost".into()),
            }],
        };
        let view = ClusterView::with_history(&c, &[n], &h);
        let v = serde_json::to_value(&view).expect("json");
        matches_schema(&d, "Cluster", &v);
        matches_schema(&d, "Node", &v["nodes"][0]);
        matches_schema(&d, "Change", &v["changes"][0]);
        matches_schema(&d, "Convergence", &v["changes"][0]["converged"][0]);
        matches_schema(&d, "ClusterEvent", &v["events"][0]);
        let states: Vec<&str> = d["components"]["schemas"]["ClusterState"]["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        assert_eq!(
            states,
            ClusterState::ALL.map(|s| s.as_str()).to_vec(),
            "every state is documented"
        );
        let phases: Vec<&str> = d["components"]["schemas"]["Phase"]["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        assert_eq!(
            phases,
            shoal_protocol::Phase::ALL.map(|p| p.as_str()).to_vec()
        );
    }

    async fn serve() -> (String, String) {
        let engine = Engine::new(
            Arc::new(SqliteStore::in_memory().expect("store")),
            Registry::default(),
            EngineSettings::default(),
        )
        .await
        .expect("engine");
        let token = crate::keys::random_secret();
        let app = router(ApiState {
            engine,
            token: Arc::new(token.clone()),
            browser: None,
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        (url, token)
    }

    #[tokio::test]
    async fn the_document_and_metrics_are_served_behind_the_token() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (url, token) = serve().await;
        let http = reqwest::Client::new();
        let r = http
            .get(format!("{url}/v1/openapi.json"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{url}/v1/openapi.json"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), OPENAPI_JSON);
        let r = http
            .get(format!("{url}/metrics"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            crate::metrics::CONTENT_TYPE
        );
        assert!(r
            .text()
            .await
            .expect("body")
            .contains("shoal_clusters{state=\"AVAILABLE\"} 0"));
    }

    #[tokio::test]
    async fn positional_bodies_and_bad_paths_get_json_400s() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (url, token) = serve().await;
        let http = reqwest::Client::new();
        for body in [
            serde_json::json!(["demo", "local", 1]),
            serde_json::json!({"name": "demo", "provider": "local", "nodes": 1, "params": [null]}),
        ] {
            let r = http
                .post(format!("{url}/v1/clusters"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 400, "{body}");
            let v: serde_json::Value = r.json().await.expect("json error");
            assert_eq!(v["error"]["code"], "bad-request");
        }
        let r = http
            .get(format!("{url}/v1/clusters/%FF"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}

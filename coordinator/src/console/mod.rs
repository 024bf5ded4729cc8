//! The web console: clusters at a glance, created, watched and deleted from a
//! browser, on the operator listener beside the API.
//!
//! Server-rendered HTML ([`pages`]) with one small script and stylesheet embedded in
//! the binary, no build step and nothing loaded from elsewhere; pages work without the
//! script, which only keeps them live ([`live`]: server-sent events) and moves focus
//! and announcements for screen readers. Login exchanges the operator token for a
//! session cookie; every write is checked for its origin and the session's CSRF token
//! ([`session`]). Forms arrive url-encoded or, with an uploaded blueprint, as
//! multipart ([`form`]).
//!
//! The console reaches the engine through the calls the API makes (`clusters`,
//! `cluster`, `create`, `delete`, `providers`) and `changes`, the counter its event
//! streams wait on. docs/console.md describes it; `tests/tests/console.rs` drives it in
//! a real Chromium.

pub mod form;
pub mod live;
pub mod pages;
pub mod session;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use self::form::Fields;
use self::live::Rendered;
use self::pages::{Action, Chrome, CreateValues, Nav};
use self::session::{Session, Sessions};
use crate::api::{cluster_view, ApiError, BrowserSession, MAX_BODY};
use crate::engine::{CreateRequest, Engine, RepairRequest, ScaleRequest};
use crate::providers::ProviderParams;
use crate::store::now_ms;
use crate::view::timeline::Timeline;
use crate::view::ClusterView;

/// What every console response carries. The policy allows the console's own script,
/// style and images and nothing else (no inline script or style, no other origin), no
/// framing by any page (clickjacking), and forms that post only to the console.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's state: the engine and the sessions.
#[derive(Debug, Clone)]
pub struct ConsoleState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The sessions.
    pub sessions: Arc<Sessions>,
}

impl BrowserSession for Sessions {
    fn valid(&self, headers: &HeaderMap) -> bool {
        self.find(headers).is_some()
    }
}

/// The console's routes: `/console/…`, and `/` leading there.
pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/session", get(session_check))
        .route("/console/assets/{file}", get(asset))
        // Browsers ask every page's origin for one, the API's documents included.
        .route("/favicon.ico", get(|| asset(Path("icon.svg".to_string()))))
        .route("/console/", get(list))
        .route("/console/events", get(list_events))
        .route("/console/new", get(new_form))
        .route("/console/clusters", post(create))
        .route("/console/clusters/{name}", get(cluster))
        .route("/console/clusters/{name}/events", get(cluster_events))
        .route("/console/clusters/{name}/timeline.svg", get(timeline_svg))
        .route("/console/clusters/{name}/{action}", get(confirm).post(act))
        .layer(middleware::from_fn(security_headers))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages hold cluster details and the CSRF token: keep them out of caches.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn to_login() -> Response {
    Redirect::to("/console/login").into_response()
}

fn chrome<'a>(title: &'a str, session: Option<&'a Session>) -> Chrome<'a> {
    Chrome {
        title,
        csrf: session.map(|s| s.csrf.as_str()),
        nav: if session.is_some() {
            Nav::Clusters
        } else {
            Nav::None
        },
    }
}

fn error_page(
    session: Option<&Session>,
    status: StatusCode,
    heading: &str,
    message: &str,
) -> Response {
    let back = if session.is_some() {
        ("/console/", "Back to the clusters")
    } else {
        ("/console/login", "Log in")
    };
    html(
        status,
        pages::error(&chrome(heading, session), heading, message, back),
    )
}

fn engine_error(session: &Session, e: ApiError) -> Response {
    error_page(Some(session), e.status(), "That did not work", e.message())
}

/// A request's session. Without one, a page (`Authed<false>`, [`PageSession`]) leads
/// to the login page, and an event stream (`Authed<true>`, [`StreamSession`]) is
/// answered `401`, which the page's script takes as its cue to go there.
struct Authed<const STREAM: bool>(Session);

/// The session of a page.
type PageSession = Authed<false>;
/// The session of an event stream.
type StreamSession = Authed<true>;

impl<const STREAM: bool> FromRequestParts<ConsoleState> for Authed<STREAM> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        s.sessions.find(&parts.headers).map(Authed).ok_or_else(|| {
            if STREAM {
                StatusCode::UNAUTHORIZED.into_response()
            } else {
                to_login()
            }
        })
    }
}

/// A write that passed the checks every write passes, in order: a session (else
/// 401), a form body (else 400), its origin and the session's CSRF token (else 403).
struct Write {
    session: Session,
    fields: Fields,
}

impl FromRequest<ConsoleState> for Write {
    type Rejection = Response;

    async fn from_request(req: Request, s: &ConsoleState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let Some(session) = s.sessions.find(&parts.headers) else {
            return Err(error_page(
                None,
                StatusCode::UNAUTHORIZED,
                "Not logged in",
                "This change needs a console session: log in with the operator token, then try again.",
            ));
        };
        let body = Bytes::from_request(Request::from_parts(parts.clone(), body), s)
            .await
            .map_err(IntoResponse::into_response)?;
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let fields = Fields::parse(ct, &body).map_err(|e| {
            error_page(
                Some(&session),
                StatusCode::BAD_REQUEST,
                "Not a form",
                &e.to_string(),
            )
        })?;
        if let Err(e) = s
            .sessions
            .check_write(&parts.headers, &session, fields.text("csrf"))
        {
            tracing::warn!(error = %e, "console write refused");
            return Err(error_page(
                Some(&session),
                StatusCode::FORBIDDEN,
                "Refused",
                &e.to_string(),
            ));
        }
        Ok(Write { session, fields })
    }
}

async fn login_page(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    if s.sessions.find(&headers).is_some() {
        return Redirect::to("/console/").into_response();
    }
    html(StatusCode::OK, pages::login(None))
}

async fn login(
    State(s): State<ConsoleState>,
    peer: Result<ConnectInfo<SocketAddr>, axum::extract::rejection::ExtensionRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = session::check_origin(&headers, s.sessions.secure()) {
        return error_page(None, StatusCode::FORBIDDEN, "Refused", &e.to_string());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let token = Fields::parse(ct, &body)
        .ok()
        .and_then(|f| f.text("token").map(str::to_string))
        .unwrap_or_default();
    match s.sessions.login(&token) {
        Some(l) => {
            tracing::info!(source = ?peer.as_ref().ok().map(|p| p.0.ip()), "console login");
            let cookie = s.sessions.set_cookie(&l);
            let mut resp = Redirect::to("/console/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        None => {
            tracing::warn!(source = ?peer.as_ref().ok().map(|p| p.0.ip()), "console login refused: wrong token");
            html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("That is not the operator token.")),
            )
        }
    }
}

async fn logout(State(s): State<ConsoleState>, w: Write) -> Response {
    s.sessions.logout(&w.session);
    let mut resp = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&s.sessions.clear_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `204` with a valid session, `401` without: how a page's script tells a broken
/// event stream from an ended session.
async fn session_check(State(s): State<ConsoleState>, headers: HeaderMap) -> StatusCode {
    if s.sessions.find(&headers).is_some() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    let (ct, body) = match file.as_str() {
        "console.css" => ("text/css; charset=utf-8", pages::CSS),
        "console.js" => ("text/javascript; charset=utf-8", pages::JS),
        "icon.svg" => ("image/svg+xml", pages::ICON),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            // Pages name assets with the version (`?v=`), so a new build is fetched anew.
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

fn list_view(rows: &[crate::store::ClusterRow]) -> Vec<ClusterView> {
    rows.iter().map(|c| ClusterView::new(c, &[])).collect()
}

async fn list(State(s): State<ConsoleState>, Authed(session): PageSession) -> Response {
    match s.engine.clusters().await {
        Ok(rows) => html(
            StatusCode::OK,
            pages::clusters_page(&session.csrf, &list_view(&rows)),
        ),
        Err(e) => engine_error(&session, e.into()),
    }
}

async fn list_events(State(s): State<ConsoleState>, Authed(session): StreamSession) -> Response {
    let engine = s.engine.clone();
    let render: live::Render = Box::new(move || {
        let engine = engine.clone();
        Box::pin(async move {
            let html = match engine.clusters().await {
                Ok(rows) => pages::clusters_fragment(&list_view(&rows)),
                Err(e) => format!(r#"<p class="error">{}</p>"#, pages::esc(&e.to_string())),
            };
            Rendered {
                regions: vec![("clusters", html)],
                ticking: false,
            }
        })
    });
    live::stream(s.engine.changes(), s.sessions.clone(), session, render).into_response()
}

#[derive(Debug, Deserialize)]
struct ClusterQuery {
    created: Option<String>,
}

async fn cluster(
    State(s): State<ConsoleState>,
    Authed(session): PageSession,
    Path(name): Path<String>,
    query: Result<Query<ClusterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match cluster_view(&s.engine, &name).await {
        Ok(v) => {
            let t = Timeline::from_view(&v, now_ms());
            let notice = query.ok().and_then(|q| q.0.created).map(|_| {
                format!(
                    "{} was requested; this page follows it as it boots.",
                    v.name
                )
            });
            html(
                StatusCode::OK,
                pages::cluster_page(&session.csrf, &v, &t, notice.as_deref()),
            )
        }
        Err(e) => engine_error(&session, e),
    }
}

async fn cluster_events(
    State(s): State<ConsoleState>,
    Authed(session): StreamSession,
    Path(name): Path<String>,
) -> Response {
    let engine = s.engine.clone();
    let render: live::Render = Box::new(move || {
        let engine = engine.clone();
        let name = name.clone();
        Box::pin(async move {
            match cluster_view(&engine, &name).await {
                Ok(v) => {
                    let t = Timeline::from_view(&v, now_ms());
                    let settling = v.nodes.iter().any(|n| {
                        !matches!(
                            n.phase,
                            shoal_protocol::Phase::Ready | shoal_protocol::Phase::Failed
                        )
                    });
                    Rendered {
                        regions: vec![
                            ("summary", pages::summary_fragment(&v)),
                            ("actions", pages::actions_fragment(&v)),
                            ("nodes", pages::nodes_fragment(&v)),
                            ("timeline", pages::timeline_fragment(&t)),
                        ],
                        ticking: pages::in_flight(v.state)
                            || (settling && v.state != crate::store::ClusterState::Deleted),
                    }
                }
                Err(e) => Rendered {
                    regions: vec![(
                        "summary",
                        format!(r#"<p class="error">{}</p>"#, pages::esc(e.message())),
                    )],
                    ticking: false,
                },
            }
        })
    });
    live::stream(s.engine.changes(), s.sessions.clone(), session, render).into_response()
}

async fn timeline_svg(
    State(s): State<ConsoleState>,
    Authed(session): PageSession,
    Path(name): Path<String>,
) -> Response {
    match cluster_view(&s.engine, &name).await {
        Ok(v) => {
            let svg = Timeline::from_view(&v, now_ms()).render_svg();
            let disposition = format!("inline; filename=\"{}-timeline.svg\"", v.name);
            let mut resp = ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response();
            if let Ok(d) = HeaderValue::from_str(&disposition) {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, d);
            }
            resp
        }
        Err(e) => engine_error(&session, e),
    }
}

async fn new_form(State(s): State<ConsoleState>, Authed(session): PageSession) -> Response {
    html(
        StatusCode::OK,
        pages::create_page(
            &session.csrf,
            &s.engine.providers(),
            &crate::blueprint::built_in_names(),
            &CreateValues::default(),
            None,
        ),
    )
}

/// The create form's fields as typed, and the request they make (or why they make
/// none).
fn create_request(f: &Fields) -> (CreateValues, Result<CreateRequest, String>) {
    let get = |k: &str| f.text(k).unwrap_or("").to_string();
    let values = CreateValues {
        name: get("name"),
        provider: get("provider"),
        nodes: get("nodes"),
        blueprint: get("blueprint"),
        region: get("region"),
        image: get("image"),
        instance_type: get("instance_type"),
        credential: get("credential"),
        operator_cidr: get("operator_cidr"),
        extra: get("extra"),
    };
    let req = (|| {
        let nodes: u32 = values
            .nodes
            .parse()
            .map_err(|_| format!("Nodes must be a whole number, not {:?}.", values.nodes))?;
        if values.provider.is_empty() {
            return Err("Choose a provider.".to_string());
        }
        let file = f.file("blueprint_file");
        let (blueprint, blueprint_toml) = match (values.blueprint.as_str(), file) {
            (pages::UPLOAD, None) => {
                return Err("“A blueprint file” is chosen, but no file was given.".into())
            }
            (pages::UPLOAD, Some(file)) => {
                let text = String::from_utf8(file.value.clone()).map_err(|_| {
                    format!(
                        "The blueprint file {:?} is not UTF-8 text.",
                        file.filename.as_deref().unwrap_or("")
                    )
                })?;
                (None, Some(text))
            }
            ("", _) => return Err("Choose a blueprint.".into()),
            (name, Some(file)) => {
                return Err(format!(
                    "The built-in blueprint {name:?} is chosen and a file ({:?}) was given too: choose “a blueprint file” to use the file.",
                    file.filename.as_deref().unwrap_or("")
                ))
            }
            (name, None) => (Some(name.to_string()), None),
        };
        let mut extra = std::collections::BTreeMap::new();
        for line in values
            .extra
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("Other settings: {line:?} is not key=value."));
            };
            extra.insert(k.trim().to_string(), v.trim().to_string());
        }
        let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
        Ok(CreateRequest {
            name: values.name.clone(),
            provider: values.provider.clone(),
            nodes,
            blueprint,
            blueprint_toml,
            params: ProviderParams {
                region: opt(&values.region),
                image: opt(&values.image),
                instance_type: opt(&values.instance_type),
                credential: opt(&values.credential),
                operator_cidr: opt(&values.operator_cidr),
                extra,
                ..ProviderParams::default()
            },
            // The form offers no auto-repair delay: `shoal cluster repair` (or the
            // API) replaces lost nodes of clusters created here.
            auto_repair_secs: None,
        })
    })();
    (values, req)
}

async fn create(State(s): State<ConsoleState>, w: Write) -> Response {
    let Write { session, fields } = w;
    let (values, req) = create_request(&fields);
    let refused = |status: StatusCode, message: &str| {
        html(
            status,
            pages::create_page(
                &session.csrf,
                &s.engine.providers(),
                &crate::blueprint::built_in_names(),
                &values,
                Some(message),
            ),
        )
    };
    let req = match req {
        Ok(r) => r,
        Err(m) => return refused(StatusCode::BAD_REQUEST, &m),
    };
    match s.engine.create(req).await {
        Ok((row, _)) => {
            Redirect::to(&format!("/console/clusters/{}?created=1", row.name)).into_response()
        }
        Err(e) => {
            let e = ApiError::from(e);
            refused(e.status(), e.message())
        }
    }
}

async fn confirm(
    State(s): State<ConsoleState>,
    Authed(session): PageSession,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return error_page(
            Some(&session),
            StatusCode::NOT_FOUND,
            "No such page",
            &format!("A cluster has no action {action:?}."),
        );
    };
    match cluster_view(&s.engine, &name).await {
        Ok(v) if !action.applies(v.state) => error_page(
            Some(&session),
            StatusCode::CONFLICT,
            "Not now",
            &format!(
                "{} is {}: it cannot be asked to {} now.",
                v.name,
                v.state,
                action.as_str()
            ),
        ),
        Ok(v) => html(
            StatusCode::OK,
            pages::confirm_page(&session.csrf, &v, action),
        ),
        Err(e) => engine_error(&session, e),
    }
}

/// The scale form as the engine's request: a group's new size, or the nodes ticked.
fn scale_request(fields: &Fields) -> Result<ScaleRequest, String> {
    let remove: Vec<String> = fields.all("remove").into_iter().map(String::from).collect();
    let nodes = match fields.non_empty("nodes") {
        None => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            format!("The number of nodes must be a whole number from 0, not {v:?}.")
        })?),
    };
    match (nodes, remove.is_empty()) {
        (None, true) => {
            Err("Give the group's new number of nodes, or tick nodes to take out.".into())
        }
        (Some(_), false) => {
            Err("Give a number of nodes or tick nodes to take out, not both.".into())
        }
        (nodes, _) => Ok(ScaleRequest {
            // Taking nodes out names them; the group is theirs.
            group: if remove.is_empty() {
                fields.non_empty("group").map(String::from)
            } else {
                None
            },
            nodes,
            remove,
        }),
    }
}

async fn act(
    State(s): State<ConsoleState>,
    Path((name, action)): Path<(String, String)>,
    w: Write,
) -> Response {
    let session = w.session;
    let Some(action) = Action::parse(&action) else {
        return error_page(
            Some(&session),
            StatusCode::NOT_FOUND,
            "No such action",
            &format!("A cluster has no action {action:?}."),
        );
    };
    let result = match action {
        Action::Scale => match scale_request(&w.fields) {
            Ok(req) => s.engine.scale(&name, req).await,
            Err(message) => {
                return error_page(
                    Some(&session),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Not a scale",
                    &message,
                )
            }
        },
        Action::Repair => {
            let nodes = w.fields.all("node").into_iter().map(String::from).collect();
            s.engine.repair(&name, RepairRequest { nodes }).await
        }
        Action::Delete => s.engine.delete(&name).await,
    };
    match result {
        Ok((row, _)) => Redirect::to(&format!("/console/clusters/{}", row.name)).into_response(),
        Err(e) => engine_error(&session, e.into()),
    }
}

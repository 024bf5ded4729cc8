//! The console over HTTP, as `serve` mounts it (merged with the API's router):
//! login, the cookie, what a session opens and what it does not, the checks on every
//! write, logout, and an event stream following a real creation. No root needed: the
//! provider is AWS's, with no credentials, so a creation is accepted and fails in the
//! background (which is a real life cycle for the stream to follow).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap as ReqHeaders, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::redirect::Policy;

use super::*;
use crate::api::ApiState;
use crate::console::session::SessionSettings;
use crate::engine::EngineSettings;
use crate::providers::aws::{AwsProvider, Env};
use crate::providers::registry::Registry;
use crate::store::SqliteStore;

struct Console {
    url: String,
    token: String,
    http: reqwest::Client,
    engine: Arc<Engine>,
}

async fn start() -> Console {
    start_with(SessionSettings::default()).await
}

async fn start_with(settings: SessionSettings) -> Console {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let aws = AwsProvider::with_env(Env::Fixed(BTreeMap::new()));
    let engine = Engine::new(
        Arc::new(SqliteStore::in_memory().expect("store")),
        Registry::new(vec![Arc::new(aws)], BTreeMap::new()),
        EngineSettings {
            advertise_url: Some("https://127.0.0.1:9".into()),
            ..EngineSettings::default()
        },
    )
    .await
    .expect("engine");
    let token = crate::keys::random_secret();
    let sessions = Arc::new(Sessions::new(&token, false, settings));
    let app = crate::api::router(ApiState {
        engine: engine.clone(),
        token: Arc::new(token.clone()),
        browser: Some(sessions.clone()),
    })
    .merge(router(ConsoleState {
        engine: engine.clone(),
        sessions,
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Console {
        url,
        token,
        http: reqwest::Client::builder()
            .redirect(Policy::none())
            .build()
            .expect("client"),
        engine,
    }
}

/// A logged-in browser: its cookie and the CSRF token its pages carry.
struct Browser {
    cookie: String,
    csrf: String,
}

impl Console {
    fn form(&self, path: &str, origin: Option<&str>, body: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        if let Some(o) = origin {
            r = r.header(ORIGIN, o);
        }
        r
    }

    async fn login(&self) -> Browser {
        let body = format!("token={}", self.token);
        let r = self
            .form("/console/login", Some(&self.url), &body)
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()[LOCATION], "/console/");
        let set = r.headers()[SET_COOKIE].to_str().expect("ascii").to_string();
        let cookie = set.split(';').next().expect("pair").to_string();
        let page = self.get("/console/", Some(&cookie)).await;
        assert_eq!(page.status(), 200);
        let html = page.text().await.expect("page");
        let csrf = html
            .split(r#"name="csrf" value=""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a CSRF field in the page")
            .to_string();
        Browser { cookie, csrf }
    }

    /// Posts the create form as a browser does: multipart, with a file part (empty
    /// when no file was chosen).
    async fn multipart(
        &self,
        b: &Browser,
        fields: &[(&str, &str)],
        file: Option<(&str, &str)>,
    ) -> reqwest::Response {
        let boundary = "----shoalTestBoundary";
        let mut body = String::new();
        for (k, v) in [("csrf", b.csrf.as_str())].iter().chain(fields) {
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
            ));
        }
        let (filename, content) = file.unwrap_or(("", ""));
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"blueprint_file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n"
        ));
        self.http
            .post(format!("{}/console/clusters", self.url))
            .header(COOKIE, &b.cookie)
            .header(ORIGIN, &self.url)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .expect("create")
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(format!("{}{path}", self.url));
        if let Some(c) = cookie {
            r = r.header(COOKIE, c);
        }
        r.send().await.expect("get")
    }
}

fn header<'h>(h: &'h ReqHeaders, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn pages_need_a_session_and_carry_the_security_headers() {
    let c = start().await;
    for path in [
        "/",
        "/console",
        "/console/",
        "/console/new",
        "/console/clusters/x",
    ] {
        let r = c.get(path, None).await;
        assert_eq!(r.status(), 303, "{path}");
        let to = header(r.headers(), "location");
        assert!(
            to == "/console/login" || to == "/console/",
            "{path} -> {to}"
        );
    }
    for path in [
        "/console/events",
        "/console/clusters/x/events",
        "/console/session",
    ] {
        assert_eq!(c.get(path, None).await.status(), 401, "{path}");
    }
    let r = c.get("/console/login", None).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let csp = header(&h, "content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{csp} lacks {part}");
    }
    assert_eq!(header(&h, "x-frame-options"), "DENY");
    assert_eq!(header(&h, "x-content-type-options"), "nosniff");
    assert_eq!(header(&h, "cache-control"), "no-store");
    let html = r.text().await.expect("page");
    assert!(html.contains(r#"<input id="token" name="token" type="password""#));
    // Nothing is loaded from elsewhere: every src and href is the console's own.
    for attr in ["src=\"", "href=\""] {
        for v in html.split(attr).skip(1) {
            let v = v.split('"').next().unwrap_or("");
            assert!(v.starts_with('/') || v.starts_with('#'), "{attr}{v}");
        }
    }
    let r = c.get("/console/assets/console.js", None).await;
    assert_eq!(r.status(), 200);
    assert!(header(r.headers(), "content-type").starts_with("text/javascript"));
    assert_eq!(c.get("/console/assets/other.js", None).await.status(), 404);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_right_one_opens_a_session() {
    let c = start().await;
    for wrong in ["", "nope", &c.token[..63], &crate::keys::random_secret()] {
        let r = c
            .form("/console/login", Some(&c.url), &format!("token={wrong}"))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), 401, "{wrong:?}");
        assert!(r.headers().get(SET_COOKIE).is_none());
        assert!(r
            .text()
            .await
            .expect("page")
            .contains("That is not the operator token"));
    }
    // The right token from another site's form: refused before it is looked at.
    let r = c
        .form(
            "/console/login",
            Some("http://evil.example"),
            &format!("token={}", c.token),
        )
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 403);
    assert!(r.headers().get(SET_COOKIE).is_none());

    let r = c
        .form(
            "/console/login",
            Some(&c.url),
            &format!("token={}", c.token),
        )
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303);
    let set = header(r.headers(), "set-cookie").to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(part), "{set} lacks {part}");
    }
    assert!(!set.contains(&c.token), "the cookie is not the token");
    let b = c.login().await;
    assert_eq!(
        c.get("/console/session", Some(&b.cookie)).await.status(),
        204
    );
    // Logged in, the login page leads to the clusters.
    let r = c.get("/console/login", Some(&b.cookie)).await;
    assert_eq!(r.status(), 303);
}

#[tokio::test]
async fn a_session_opens_the_documents_but_no_other_api_route() {
    let c = start().await;
    let b = c.login().await;
    for path in ["/metrics", "/v1/openapi.json"] {
        assert_eq!(c.get(path, None).await.status(), 401, "{path}");
        assert_eq!(c.get(path, Some(&b.cookie)).await.status(), 200, "{path}");
    }
    for path in ["/v1/clusters", "/v1/health", "/v1/clusters/x"] {
        assert_eq!(c.get(path, Some(&b.cookie)).await.status(), 401, "{path}");
    }
    let r = c
        .http
        .post(format!("{}/v1/clusters", c.url))
        .header(COOKIE, &b.cookie)
        .header(ORIGIN, &c.url)
        .json(&serde_json::json!({"name": "x", "provider": "aws", "nodes": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401, "the API takes no write from a cookie");
    // The bearer token still opens everything, as before.
    let r = c
        .http
        .get(format!("{}/v1/clusters", c.url))
        .bearer_auth(&c.token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn writes_need_the_session_its_csrf_token_and_their_own_origin() {
    let c = start().await;
    let b = c.login().await;
    let with = |cookie: Option<&str>, origin: Option<&str>, body: String| {
        let mut r = c.form("/console/clusters/ghost/delete", origin, &body);
        if let Some(k) = cookie {
            r = r.header(COOKIE, k.to_string());
        }
        r.send()
    };
    let good = format!("csrf={}", b.csrf);
    // No session.
    let r = with(None, Some(&c.url), good.clone()).await.expect("post");
    assert_eq!(r.status(), 401);
    // A session, but no token, another session's token, a wrong one.
    let other = c.login().await;
    for body in [
        String::new(),
        format!("csrf={}", other.csrf),
        format!("csrf={}", crate::keys::random_secret()),
    ] {
        let r = with(Some(&b.cookie), Some(&c.url), body.clone())
            .await
            .expect("post");
        assert_eq!(r.status(), 403, "{body}");
        assert!(r.text().await.expect("page").contains("session token"));
    }
    // The right token from another origin, or with no origin at all.
    for origin in [Some("http://evil.example"), None] {
        let r = with(Some(&b.cookie), origin, good.clone())
            .await
            .expect("post");
        assert_eq!(r.status(), 403, "{origin:?}");
    }
    // All checks passed: the engine answers (there is no such cluster).
    let r = with(Some(&b.cookie), Some(&c.url), good)
        .await
        .expect("post");
    assert_eq!(r.status(), 404);
    // A body that is no form at all.
    let r = c
        .http
        .post(format!("{}/console/clusters", c.url))
        .header(COOKIE, &b.cookie)
        .header(ORIGIN, &c.url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn logout_ends_the_session_everywhere() {
    let c = start().await;
    let b = c.login().await;
    let r = c
        .form("/console/logout", Some(&c.url), &format!("csrf={}", b.csrf))
        .header(COOKIE, &b.cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 303);
    assert!(header(r.headers(), "set-cookie").contains("Max-Age=0"));
    assert_eq!(c.get("/console/", Some(&b.cookie)).await.status(), 303);
    assert_eq!(c.get("/metrics", Some(&b.cookie)).await.status(), 401);
    assert_eq!(
        c.get("/console/session", Some(&b.cookie)).await.status(),
        401
    );
}

/// Reads server-sent events until one of `event` whose data contains `needle`.
async fn event_with(
    r: &mut reqwest::Response,
    buf: &mut String,
    event: &str,
    needle: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("");
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n");
            if name == event && data.contains(needle) {
                return data;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, r.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {event} event with {needle:?}; left: {buf}"))
            .expect("stream")
            .expect("the stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_event_stream_follows_a_creation_from_the_form() {
    let c = start().await;
    let b = c.login().await;
    let mut stream = c.get("/console/events", Some(&b.cookie)).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(
        header(stream.headers(), "content-type"),
        "text/event-stream"
    );
    let mut buf = String::new();
    event_with(&mut stream, &mut buf, "update", "No clusters yet").await;

    // The create form, as a browser sends it (multipart, no file chosen).
    let r = c
        .multipart(
            &b,
            &[
                ("name", "live"),
                ("provider", "aws"),
                ("nodes", "1"),
                ("blueprint", "demo"),
                ("region", "us-east-1"),
                ("extra", "endpoint-url=http://127.0.0.1:9"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
    assert_eq!(
        header(r.headers(), "location"),
        "/console/clusters/live?created=1"
    );
    // The list follows it without being asked: recorded, then FAILED (the provider
    // refuses a cluster without a machine image), with the provider's reason. The
    // states in between may come in the same update (changes are coalesced).
    let failed = event_with(&mut stream, &mut buf, "update", r#"data-state=\"FAILED\""#).await;
    assert!(failed.contains(r#"data-name=\"live\""#), "{failed}");
    assert!(failed.contains("no machine image"), "{failed}");
    let (row, _) = c.engine.cluster("live").await.expect("recorded");
    assert_eq!(row.params.region.as_deref(), Some("us-east-1"));
    assert_eq!(
        row.params.extra.get("endpoint-url").map(String::as_str),
        Some("http://127.0.0.1:9")
    );

    // Its page's stream carries the summary, nodes and timeline.
    let mut page = c
        .get("/console/clusters/live/events", Some(&b.cookie))
        .await;
    let mut pbuf = String::new();
    let data = event_with(&mut page, &mut pbuf, "update", "FAILED").await;
    let v: serde_json::Value = serde_json::from_str(&data).expect("json");
    for k in ["summary", "actions", "nodes", "timeline"] {
        assert!(v[k].is_string(), "{k} missing: {data}");
    }
    assert!(v["timeline"].as_str().unwrap_or("").contains("<svg"));
}

#[tokio::test]
async fn a_refused_creation_shows_the_form_again_with_the_reason() {
    let c = start().await;
    let b = c.login().await;
    for (fields, why) in [
        (
            "name=Bad_Name&provider=aws&nodes=1&blueprint=demo",
            "Bad_Name",
        ),
        (
            "name=ok&provider=aws&nodes=1&blueprint=upload",
            "no file was given",
        ),
        (
            "name=ok&provider=aws&nodes=two&blueprint=demo",
            "whole number",
        ),
        (
            "name=ok&provider=aws&nodes=1&blueprint=demo&extra=novalue",
            "not key=value",
        ),
        ("name=ok&provider=gcp&nodes=1&blueprint=demo", "gcp"),
    ] {
        let r = c
            .form(
                "/console/clusters",
                Some(&c.url),
                &format!("csrf={}&{fields}", b.csrf),
            )
            .header(COOKIE, &b.cookie)
            .send()
            .await
            .expect("create");
        assert!(r.status().is_client_error(), "{fields}: {}", r.status());
        let html = r.text().await.expect("page");
        assert!(html.contains(r#"role="alert""#), "{fields}: {html}");
        assert!(html.contains(why), "{fields}: no {why:?} in the page");
    }
    assert!(c.engine.clusters().await.expect("list").is_empty());
}

#[tokio::test]
async fn an_open_stream_says_when_its_session_ends() {
    let c = start_with(SessionSettings {
        idle: Duration::from_secs(2),
        ..SessionSettings::default()
    })
    .await;
    let b = c.login().await;
    let mut stream = c.get("/console/events", Some(&b.cookie)).await;
    let mut buf = String::new();
    event_with(&mut stream, &mut buf, "update", "No clusters yet").await;
    // Nothing changes; the session ends after 2 s idle, and the stream says so.
    let started = tokio::time::Instant::now();
    event_with(&mut stream, &mut buf, "session-ended", "").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        c.get("/console/events", Some(&b.cookie)).await.status(),
        401
    );
}

#[tokio::test]
async fn an_uploaded_blueprint_is_parsed_and_used() {
    let c = start().await;
    let b = c.login().await;
    let form = [
        ("name", "mine"),
        ("provider", "aws"),
        ("nodes", "2"),
        ("blueprint", "upload"),
        ("region", "us-east-1"),
    ];
    // Not a blueprint: the parser's reason, nothing recorded.
    let r = c
        .multipart(&b, &form, Some(("bad.toml", "name = \"x\"\nbogus = 1\n")))
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("page").contains("bogus"));
    assert!(c.engine.clusters().await.expect("list").is_empty());
    // A blueprint: used as uploaded (its line breaks and quotes intact).
    let toml = "name = \"uploaded\"\r\n\r\n[[group]]\nname = \"all\"\ncount = \"rest\"\n[[group.container]]\nname = \"app\"\nimage = \"busybox:1\"\n";
    let r = c.multipart(&b, &form, Some(("mine.toml", toml))).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
    let (row, nodes) = c.engine.cluster("mine").await.expect("recorded");
    assert_eq!(row.blueprint.name, "uploaded");
    assert_eq!(row.blueprint.images(), vec!["busybox:1".to_string()]);
    assert_eq!(nodes.len(), 2);
    // A built-in chosen with a file given too: which one was meant is not guessed.
    let r = c
        .multipart(
            &b,
            &[
                ("name", "two"),
                ("provider", "aws"),
                ("nodes", "1"),
                ("blueprint", "demo"),
            ],
            Some(("mine.toml", toml)),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("page").contains("choose"));
}

#[test]
fn the_scale_form_becomes_the_engines_request_or_says_what_is_wrong() {
    let form = |body: &str| {
        Fields::parse(Some("application/x-www-form-urlencoded"), body.as_bytes()).expect("form")
    };
    let r = scale_request(&form("group=workers&nodes=4")).expect("a size");
    assert_eq!(
        (r.group.as_deref(), r.nodes, r.remove.len()),
        (Some("workers"), Some(4), 0)
    );
    // Ticked nodes name their group: the selected one is not sent.
    let r =
        scale_request(&form("group=workers&nodes=&remove=node-2&remove=node-3")).expect("removals");
    assert_eq!(
        (r.group, r.nodes, r.remove),
        (None, None, vec!["node-2".to_string(), "node-3".into()])
    );
    for (body, says) in [
        ("group=workers&nodes=", "Give the group's new number"),
        ("group=workers&nodes=-1", "whole number"),
        ("group=workers&nodes=two", "whole number"),
        ("group=workers&nodes=3&remove=node-1", "not both"),
    ] {
        let e = scale_request(&form(body)).expect_err(body);
        assert!(e.contains(says), "{body}: {e}");
    }
}

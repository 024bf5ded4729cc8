//! The metadata and operator listeners against hostile clients, over real sockets on
//! loopback: TLS with the coordinator's CA, oversized bodies, malformed JSON, path
//! tricks, the per-source rate limit, slow clients (slowloris) and connection floods.
//! No privileges needed: the engine has no provider, the store is in memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal::api::{self, ApiState};
use shoal::engine::{Engine, EngineSettings};
use shoal::metadata;
use shoal::providers::registry::Registry;
use shoal::providers::ProviderParams;
use shoal::server::listener::{self, Limits};
use shoal::store::{ClusterRow, ClusterState, NodeRow, SqliteStore, Store};
use shoal::tls::Ca;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Fixture {
    md: SocketAddr,
    api: SocketAddr,
    key: String,
    token: String,
    operator_token: String,
    ca_pem: String,
    _stop: watch::Sender<bool>,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn row(key: &str) -> ClusterRow {
    ClusterRow {
        name: "lab".into(),
        uid: "0123456789ab".into(),
        provider: "local".into(),
        state: ClusterState::Creating,
        reason: None,
        key: key.into(),
        generation: 0,
        plan: None,
        blueprint: shoal::store::conformance::cluster("lab").blueprint,
        params: ProviderParams::default(),
        metadata_url: "https://127.0.0.1:8787".into(),
        node_count: 1,
        overlay: "10.240.0.0/16".parse().expect("overlay"),
        vni: 7,
        domain: "shoal.internal".into(),
        created_ms: 1,
        updated_ms: 1,
        available_ms: None,
        ready_nodes: 0,
        next_index: 1,
        auto_repair_secs: None,
        change: Some(1),
    }
}

async fn fixture(limits: Limits, metadata_tls: bool) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("shoal-listeners-{}", shoal::keys::random_hex(6)));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = Ca::load_or_create(&dir).expect("ca");
    let tls = ca.server_config(&["127.0.0.1".into()]).expect("tls");
    let store = Arc::new(SqliteStore::in_memory().expect("store"));
    let key = shoal::keys::random_secret();
    let token = shoal::keys::random_secret();
    store
        .insert_cluster(
            &row(&key),
            &[NodeRow::requested(
                "node-0".into(),
                0,
                "all".into(),
                token.clone(),
                1,
            )],
        )
        .await
        .expect("insert");
    let engine = Engine::new(store, Registry::default(), EngineSettings::default())
        .await
        .expect("engine");
    let operator_token = shoal::keys::random_secret();
    let (stop_tx, stop_rx) = watch::channel(false);
    let md_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let md = md_l.local_addr().expect("addr");
    let api = api_l.local_addr().expect("addr");
    let md_app = listener::defend(metadata::router(engine.metadata_state()), &limits);
    let api_app = listener::defend(
        api::router(ApiState {
            engine,
            token: Arc::new(operator_token.clone()),
            browser: None,
        }),
        &Limits {
            rate_per_sec: 0.0,
            ..limits.clone()
        },
    );
    tokio::spawn(listener::serve_metadata(
        md_l,
        metadata_tls.then(|| tls.clone()),
        md_app,
        limits.clone(),
        stop_rx.clone(),
        Default::default(),
    ));
    tokio::spawn(listener::serve(api_l, Some(tls), api_app, limits, stop_rx));
    Fixture {
        md,
        api,
        key,
        token,
        operator_token,
        ca_pem: ca.cert_pem().to_string(),
        _stop: stop_tx,
        dir,
    }
}

fn client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("pem")])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn generous() -> Limits {
    Limits {
        rate_per_sec: 1000.0,
        burst: 1000.0,
        ..Limits::default()
    }
}

#[tokio::test]
async fn tls_with_the_coordinators_ca_only() {
    let f = fixture(generous(), true).await;
    let http = client(&f.ca_pem);
    let url = format!("https://{}/metadata/v1/{}", f.md, f.key);
    let r = http.get(&url).send().await.expect("TLS with the CA");
    assert_eq!(r.status(), 204, "known key, no plan yet");
    // A client that trusts another CA refuses the server.
    let other_dir = f.dir.join("other");
    std::fs::create_dir_all(&other_dir).expect("dir");
    let other = Ca::load_or_create(&other_dir).expect("other ca");
    let e = client(other.cert_pem())
        .get(&url)
        .send()
        .await
        .expect_err("a stranger CA must not be trusted");
    assert!(e.is_connect(), "{e:?}");
    // Plain HTTP on the TLS port gets nothing served.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/metadata/v1/{}", f.md, f.key))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.status() != 204),
        "{plain:?}"
    );
    // The operator API over TLS too, with its token.
    let r = http
        .get(format!("https://{}/v1/clusters", f.api))
        .bearer_auth(&f.operator_token)
        .send()
        .await
        .expect("operator API");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn bad_bodies_and_path_tricks_are_refused_cleanly() {
    let f = fixture(generous(), true).await;
    let http = client(&f.ca_pem);
    let status_url =
        |key: &str, node: &str| format!("https://{}/metadata/v1/{key}/nodes/{node}/status", f.md);
    let put = |url: String, body: Vec<u8>| {
        http.put(url)
            .bearer_auth(&f.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let good = br#"{"phase":"agent-started","generation":0}"#.to_vec();
    assert_eq!(
        put(status_url(&f.key, "node-0"), good.clone())
            .await
            .expect("put")
            .status(),
        204
    );
    // Over 64 KiB: 413, whatever the token.
    let mut big = br#"{"phase":"agent-started","generation":0,"x":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 << 10));
    big.extend(b"\"}");
    assert_eq!(
        put(status_url(&f.key, "node-0"), big)
            .await
            .expect("put")
            .status(),
        413
    );
    // Malformed JSON, wrong types, an unknown phase: 400, with a message.
    for body in [
        &b"{not json"[..],
        br#"{"phase":"ready","generation":"one"}"#,
        br#"{"phase":"exploded","generation":1}"#,
        b"",
        &[0xff, 0xfe, 0x00][..],
    ] {
        let r = put(status_url(&f.key, "node-0"), body.to_vec())
            .await
            .expect("put");
        assert_eq!(r.status(), 400, "{:?}", String::from_utf8_lossy(body));
        let text = r.text().await.expect("body");
        assert!(
            text.contains("malformed status") || text.contains("invalid status"),
            "{text}"
        );
    }
    // Path tricks in node ids and keys: 404, never a crash or another node's record.
    for node in [
        "..",
        "%2e%2e",
        "..%2fnode-0",
        "node-0%2f..%2f..",
        "%00",
        "node-0%20",
    ] {
        let r = put(status_url(&f.key, node), good.clone())
            .await
            .expect("put");
        assert_eq!(r.status(), 404, "node {node}");
    }
    for key in [
        "..",
        "%2e%2e%2f%2e%2e",
        &format!("{}%2f..", f.key),
        &f.key.to_uppercase(),
    ] {
        let r = http
            .get(format!("https://{}/metadata/v1/{key}", f.md))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "key {key}");
    }
    // Long-poll parameters that are not numbers: 400.
    let r = http
        .get(format!("https://{}/metadata/v1/{}?wait=-1", f.md, f.key))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);

    // The operator API: malformed JSON and unknown fields are 400; names with path
    // tricks are not found.
    let post = |body: &'static str| {
        http.post(format!("https://{}/v1/clusters", f.api))
            .bearer_auth(&f.operator_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in [
        "{",
        r#"{"name":"x","provider":"local","nodes":"3"}"#,
        r#"{"name":"x","provider":"local","nodes":3,"evil":true}"#,
    ] {
        let r = post(body).await.expect("post");
        assert_eq!(r.status(), 400, "{body}");
    }
    let r = post(r#"{"name":"../etc","provider":"local","nodes":1}"#)
        .await
        .expect("post");
    assert_eq!(r.status(), 400, "a cluster name with a path in it");
    for name in ["..", "%2e%2e", "lab%2f..%2f..", "lab%00"] {
        let r = http
            .get(format!("https://{}/v1/clusters/{name}", f.api))
            .bearer_auth(&f.operator_token)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "name {name}");
        let r = http
            .get(format!(
                "https://{}/v1/clusters/lab/user-data?node={name}",
                f.api
            ))
            .bearer_auth(&f.operator_token)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "node {name}");
    }
    // Over the operator API's 256 KiB limit: 413.
    let big = format!(
        r#"{{"name":"x","provider":"local","nodes":1,"blueprint_toml":"{}"}}"#,
        "#".repeat(300 << 10)
    );
    let r = http
        .post(format!("https://{}/v1/clusters", f.api))
        .bearer_auth(&f.operator_token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn a_flooding_source_gets_429_with_retry_after() {
    let f = fixture(
        Limits {
            rate_per_sec: 2.0,
            burst: 5.0,
            ..Limits::default()
        },
        true,
    )
    .await;
    let http = client(&f.ca_pem);
    let url = format!("https://{}/metadata/v1/{}", f.md, f.key);
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..12 {
        let r = http.get(&url).send().await.expect("get");
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
        codes.push(r.status().as_u16());
    }
    assert_eq!(&codes[..5], &[204; 5], "{codes:?}");
    assert!(
        codes[5..].iter().filter(|c| **c == 429).count() >= 6,
        "{codes:?}"
    );
    assert!(
        retry_after.is_some_and(|s| (1..=2).contains(&s)),
        "{retry_after:?}"
    );
    // After waiting as told, requests pass again.
    tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
    assert_eq!(http.get(&url).send().await.expect("get").status(), 204);
}

/// Reads until the server closes the connection; returns how long it took.
async fn time_to_close(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_capped_per_source() {
    let limits = Limits {
        handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        max_conns_per_source: 4,
        other_timeout: Duration::from_secs(2),
        ..generous()
    };
    // Plain HTTP listener for the header tests (the same code path after TLS).
    let f = fixture(limits.clone(), false).await;
    // Slowloris: half a request head, then silence. Closed after the header timeout.
    let mut s = TcpStream::connect(f.md).await.expect("connect");
    s.write_all(b"GET /metadata/v1/x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .expect("write");
    let t = time_to_close(s, Duration::from_secs(8)).await;
    assert!(
        t.is_some_and(|t| t < Duration::from_secs(4)),
        "slow headers not cut: {t:?}"
    );
    // Headers over the 16 KiB cap: 431, and the connection is closed.
    let mut s = TcpStream::connect(f.md).await.expect("connect");
    let huge = format!(
        "GET /metadata/v1/x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20 << 10)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A body that never finishes: the request deadline answers 408 or closes.
    let mut s = TcpStream::connect(f.md).await.expect("connect");
    let head = format!(
        "PUT /metadata/v1/{}/nodes/node-0/status HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        f.key, f.token
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let t = time_to_close(s, Duration::from_secs(10)).await;
    assert!(
        t.is_some_and(|t| t < Duration::from_secs(6)),
        "slow body not cut: {t:?}"
    );
    // TLS: a client that connects and never says hello is dropped after the handshake
    // deadline.
    let s = TcpStream::connect(f.api).await.expect("connect");
    let t = time_to_close(s, Duration::from_secs(8)).await;
    assert!(
        t.is_some_and(|t| t < Duration::from_secs(4)),
        "silent TLS client kept: {t:?}"
    );

    // Connection flood from one source: beyond the cap, connections are closed at once
    // while the first ones stay open.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(f.md).await.expect("connect");
        s.write_all(b"GET /metadata/v1/x HTTP/1.1\r\n")
            .await
            .expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let extra = TcpStream::connect(f.md).await.expect("connect");
    let t = time_to_close(extra, Duration::from_millis(500)).await;
    assert!(t.is_some(), "a fifth connection from one source was kept");
    // Once they are gone, the source is served again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::Client::new()
        .get(format!("http://{}/metadata/v1/{}", f.md, f.key))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 204);
}

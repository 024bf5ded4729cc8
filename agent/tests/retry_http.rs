//! The metadata client's retries against a scripted server: what is retried (connection
//! errors, 429, 5xx), after how long (`Retry-After`), and what is not (other answers).
//! No privileges needed.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{config, respond, send_plan, Request, Server};
use shoal_agent::client::{FetchError, Fetched, MetadataClient};
use shoal_protocol::{NodeStatus, Phase};

fn client(url: &str) -> MetadataClient {
    // As the agent's main does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    MetadataClient::new(&config(url, 900)).expect("client")
}

fn report() -> NodeStatus {
    NodeStatus {
        phase: Phase::AgentStarted,
        generation: 0,
        timings: vec![],
        error: None,
        containers: vec![],
        agent_version: "test".into(),
        boot: None,
        peer_drains: vec![],
        recipes: vec![],
        disks: vec![],
    }
}

/// Answers the first `n` plan requests with `status` and `Retry-After: after`, then with
/// a plan.
fn failing_then_plan(n: usize, status: &'static str, after: &'static str) -> Server {
    let seen = AtomicUsize::new(0);
    Server::start(move |req: &Request, s| {
        if req.is_plan() && seen.fetch_add(1, Ordering::SeqCst) < n {
            respond(
                s,
                status,
                &[("Retry-After", after)],
                b"{\"error\":\"busy\"}",
            )
        } else {
            send_plan(s, 1)
        }
    })
}

#[tokio::test]
async fn two_503s_with_retry_after_then_the_plan() {
    let server = failing_then_plan(2, "503 Service Unavailable", "1");
    let start = Instant::now();
    let got = client(&server.url())
        .wait_for_plan(0, Some(Duration::from_secs(30)), None)
        .await
        .expect("a plan after the 503s");
    let took = start.elapsed();
    assert!(
        matches!(got, Fetched::Plan(ref p) if p.generation == 1),
        "{got:?}"
    );
    assert_eq!(server.count(Request::is_plan), 3);
    // Without Retry-After the backoff would have retried after ~0.25 s and ~0.5 s.
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let seen = AtomicUsize::new(0);
    let server = Server::start(move |req, s| {
        if req.is_status() && seen.fetch_add(1, Ordering::SeqCst) == 0 {
            respond(s, "429 Too Many Requests", &[("Retry-After", "1")], b"")
        } else {
            respond(s, "204 No Content", &[], b"")
        }
    });
    let start = Instant::now();
    client(&server.url())
        .report_with(&report(), 3, None)
        .await
        .expect("delivered after the 429");
    let took = start.elapsed();
    assert_eq!(server.count(Request::is_status), 2);
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // The report carried the node's token.
    let auth = server.requests()[0]
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone());
    assert_eq!(auth.as_deref(), Some("Bearer node-token-7c4f9e2a1b8d"));
}

#[tokio::test]
async fn final_answers_are_not_retried() {
    for (status, code) in [
        ("404 Not Found", 404),
        ("401 Unauthorized", 401),
        ("400 Bad Request", 400),
    ] {
        let server = Server::start(move |_, s| respond(s, status, &[], b"{\"error\":\"no\"}"));
        let c = client(&server.url());
        match c
            .wait_for_plan(0, Some(Duration::from_secs(30)), None)
            .await
        {
            Err(FetchError::Refused { status, body, .. }) => {
                assert_eq!(status, code);
                assert!(body.contains("no"), "{body}");
            }
            other => panic!("{status}: expected Refused, got {other:?}"),
        }
        match c.report_with(&report(), 5, None).await {
            Err(FetchError::Refused { status, .. }) => assert_eq!(status, code),
            other => panic!("{status}: expected Refused, got {other:?}"),
        }
        assert_eq!(server.count(Request::is_plan), 1, "{status}");
        assert_eq!(server.count(Request::is_status), 1, "{status}");
    }
}

#[tokio::test]
async fn server_errors_are_retried_until_the_deadline_or_the_attempt_limit() {
    let server = Server::start(|_, s| respond(s, "500 Internal Server Error", &[], b"oops"));
    let c = client(&server.url());
    let start = Instant::now();
    let e = c
        .wait_for_plan(0, Some(Duration::from_secs(2)), None)
        .await
        .expect_err("only 500s");
    let took = start.elapsed();
    assert!(matches!(e, FetchError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP 500"), "{e}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        server.count(Request::is_plan) >= 3,
        "{:?}",
        server.requests()
    );
    let e = c
        .report_with(&report(), 3, None)
        .await
        .expect_err("only 500s");
    assert!(matches!(e, FetchError::Unreachable { .. }), "{e:?}");
    assert_eq!(server.count(Request::is_status), 3);
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_gives_up_at_once() {
    let server = failing_then_plan(usize::MAX, "503 Service Unavailable", "120");
    let start = Instant::now();
    let e = client(&server.url())
        .wait_for_plan(0, Some(Duration::from_secs(5)), None)
        .await
        .expect_err("the server asks for more than the deadline leaves");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(e.to_string().contains("Retry-After: 120"), "{e}");
    assert_eq!(server.count(Request::is_plan), 1);
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_server_is_up() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the port again");
        Server::on(listener, |_, s| send_plan(s, 4))
    });
    let start = Instant::now();
    let got = client(&url)
        .wait_for_plan(0, Some(Duration::from_secs(20)), None)
        .await
        .expect("a plan once the server is up");
    assert!(
        matches!(got, Fetched::Plan(ref p) if p.generation == 4),
        "{got:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(700),
        "{:?}",
        start.elapsed()
    );
    let server = starter.join().expect("server thread");
    assert_eq!(server.count(Request::is_plan), 1);
}

#[tokio::test]
async fn the_deadline_counts_from_the_coordinators_last_answer() {
    // A coordinator whose plan is not ready yet: it holds each long-poll for what the
    // agent asked (at most 1 s here) and answers 204, five times, then serves the plan.
    let seen = AtomicUsize::new(0);
    let server = Server::start(move |req, s| {
        if seen.fetch_add(1, Ordering::SeqCst) < 5 {
            let wait: u64 = req.param("wait").and_then(|w| w.parse().ok()).unwrap_or(0);
            std::thread::sleep(Duration::from_secs(wait.min(1)));
            respond(s, "204 No Content", &[], b"")
        } else {
            send_plan(s, 2)
        }
    });
    let start = Instant::now();
    let got = client(&server.url())
        .wait_for_plan(0, Some(Duration::from_secs(3)), None)
        .await
        .expect("answers keep the agent waiting");
    assert!(
        matches!(got, Fetched::Plan(ref p) if p.generation == 2),
        "{got:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // The agent asked the coordinator to answer before its deadline, leaving time for
    // the answer to come back.
    for req in server.requests() {
        assert_eq!(req.param("wait"), Some("1"), "{req:?}");
    }
}

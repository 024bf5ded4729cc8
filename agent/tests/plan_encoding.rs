//! Gzipped plans: the agent asks for them, inflates them within the plan size limit,
//! and refuses what does not inflate, inflates too far, or comes in an encoding it did
//! not ask for, each as an invalid plan (reported `plan-invalid`, nothing changed).
//! A scripted server; no privileges needed.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::{config, plan_json, respond, Server};
use shoal_agent::client::{Fetched, MetadataClient};
use shoal_protocol::{PlanError, MAX_PLAN_BYTES};

fn client(url: &str) -> MetadataClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    MetadataClient::new(&config(url, 900)).expect("client")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// A server answering every plan request with `body` under `encoding`.
fn serving(body: Vec<u8>, encoding: &'static str) -> Server {
    Server::start(move |_, s| {
        respond(
            s,
            "200 OK",
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", encoding),
                (shoal_protocol::contract::GENERATION_HEADER, "4"),
            ],
            &body,
        )
    })
}

async fn fetch(server: &Server) -> Fetched {
    client(&server.url())
        .wait_for_plan(0, Some(Duration::from_secs(20)), None)
        .await
        .expect("an answer")
}

#[tokio::test]
async fn a_gzipped_plan_is_asked_for_and_inflated() {
    let server = serving(gzip(&plan_json(4)), "gzip");
    match fetch(&server).await {
        Fetched::Plan(p) => assert_eq!(p.generation, 4),
        other => panic!("expected the plan, got {other:?}"),
    }
    let asked = server.requests();
    let accept = asked[0]
        .headers
        .iter()
        .find(|(k, _)| k == "accept-encoding")
        .map(|(_, v)| v.as_str());
    assert_eq!(accept, Some("gzip"));
}

#[tokio::test]
async fn a_small_body_that_inflates_past_the_limit_is_refused_as_too_large() {
    // 64 KiB of gzip that would inflate to 64 MiB.
    let bomb = gzip(&vec![b' '; 16 * MAX_PLAN_BYTES]);
    assert!(bomb.len() < 128 << 10, "{}", bomb.len());
    let server = serving(bomb, "gzip");
    match fetch(&server).await {
        Fetched::Invalid {
            generation,
            error: PlanError::TooLarge { limit, .. },
        } => {
            assert_eq!(generation, 4);
            assert_eq!(limit, MAX_PLAN_BYTES);
        }
        other => panic!("expected too large, got {other:?}"),
    }
}

#[tokio::test]
async fn a_body_that_does_not_inflate_or_an_encoding_not_asked_for_is_an_invalid_plan() {
    let mut broken = gzip(&plan_json(4));
    let mid = broken.len() / 2;
    broken[mid] ^= 0xff;
    for (body, encoding, says) in [
        (broken, "gzip", "does not inflate"),
        (plan_json(4), "br", "encoding the agent did not ask for: br"),
    ] {
        let server = serving(body, encoding);
        match fetch(&server).await {
            Fetched::Invalid { generation, error } => {
                assert_eq!(generation, 4);
                assert!(error.to_string().contains(says), "{encoding}: {error}");
            }
            other => panic!("{encoding}: expected an invalid plan, got {other:?}"),
        }
    }
}

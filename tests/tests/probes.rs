//! Readiness probes end to end on the local provider (real `shoal`, `shoal-agent`, a
//! dockerd per VM, the demo image): a cluster is AVAILABLE when its probes pass, FAILED
//! with `probe-failed` and what the probe said when one does not pass in time, and a
//! blueprint with a bad probe is refused before anything is made. Privileged: run
//! through `scripts/test` as root.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::{http_request, require_privileges};

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "docker"];

fn nodes(v: &Value) -> Vec<Value> {
    v["nodes"].as_array().cloned().unwrap_or_default()
}

/// The demo server's command in a blueprint.
const SERVER: &str = r#"["shoal-demo", "server"]"#;

/// Writes a one-group blueprint (every node) running `command` with `ready`.
fn blueprint(dir: &std::path::Path, name: &str, command: &str, ready: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"name = "{name}"
[[group]]
name = "all"
count = "rest"
[[group.container]]
name = "server"
image = "shoal/demo:1"
command = {command}
ports = [{{ container = 8080 }}]
ready = {ready}
"#
        ),
    )
    .expect("write blueprint");
    path.display().to_string()
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_passing_probe_makes_the_cluster_available_once_the_service_answers() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    // The demo blueprint's probes: the server serves HTTP; the server lists each agent.
    c.shoal_ok(&["cluster", "create", "ok", "--nodes", "3", "--wait"]);
    let v = c.show("ok");
    assert_eq!(v["state"], "AVAILABLE");
    // At AVAILABLE every agent is already registered with the server: asked at once,
    // from this machine, through the port node-0 publishes.
    let ns = nodes(&v);
    let ip = ns[0]["private_ip"].as_str().expect("ip");
    let (status, body) = http_request("GET", &format!("http://{ip}:8080/cgi-bin/agents"), &[], "")
        .expect("GET agents");
    assert_eq!(status, 200, "{body}");
    for n in &ns {
        let id = n["id"].as_str().expect("id");
        assert!(
            body.contains(&format!("agent-{id}.ok.shoal.internal ")),
            "agent of {id} not registered at AVAILABLE: {body}"
        );
    }
    // Probing is a phase of every node, between containers and ready.
    for n in &ns {
        let phases: Vec<&str> = n["timings"]
            .as_array()
            .expect("timings")
            .iter()
            .filter_map(|t| t["phase"].as_str())
            .collect();
        let at = |p: &str| phases.iter().position(|x| *x == p);
        assert!(
            at("containers") < at("probing")
                && at("probing") < at("ready")
                && at("containers").is_some(),
            "{phases:?}"
        );
    }
    let timeline = c.shoal_ok(&["cluster", "timeline", "ok"]);
    assert!(timeline.contains("probing"), "{timeline}");
    c.shoal_ok(&["cluster", "delete", "ok", "--wait"]);
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_probe_that_never_passes_fails_the_cluster_with_its_output_within_its_deadline() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let dir = c.blueprint_dir();
    let server = SERVER;
    let cases = [
        (
            "pexec",
            blueprint(
                &dir,
                "pexec",
                server,
                r#"{ exec = ["sh", "-c", "echo still warming up; exit 3"], interval = 0.2, deadline = 3 }"#,
            ),
            vec![
                "probe-failed",
                "exec sh -c",
                "still warming up",
                "exited with 3",
                "within 3.0 s",
            ],
        ),
        (
            "ptcp",
            blueprint(
                &dir,
                "ptcp",
                server,
                "{ tcp = 9, interval = 0.2, deadline = 3 }",
            ),
            vec!["probe-failed", "tcp 9", "Connection refused"],
        ),
        (
            "phttp",
            blueprint(
                &dir,
                "phttp",
                server,
                r#"{ http = "http://localhost:8080/", body = "no such text", interval = 0.2, deadline = 3 }"#,
            ),
            vec![
                "probe-failed",
                "does not contain \"no such text\"",
                "hello from",
            ],
        ),
        (
            "pjson",
            blueprint(
                &dir,
                "pjson",
                server,
                r#"{ http = "http://localhost:8080/", json = { "/beans/0/NumLiveDataNodes" = "${count:server}" }, interval = 0.2, deadline = 3 }"#,
            ),
            vec!["probe-failed", "the answer is not JSON"],
        ),
        (
            // A container that exits while it is probed is caught at once, with its
            // exit code and log, not when the probe's deadline passes.
            "pexit",
            blueprint(
                &dir,
                "pexit",
                r#"["sh", "-c", "echo giving up; exit 4"]"#,
                "{ tcp = 8080, interval = 0.2, deadline = 120 }",
            ),
            vec!["container-failed", "exited with code 4", "giving up"],
        ),
    ];
    for (name, path, expected) in cases {
        let t0 = Instant::now();
        let out = c.shoal(&[
            "cluster",
            "create",
            name,
            "--nodes",
            "2",
            "--blueprint",
            &path,
            "--wait",
        ]);
        let took = t0.elapsed();
        assert!(!out.status.success(), "{name}: create --wait succeeded");
        let v = c.show(name);
        assert_eq!(v["state"], "FAILED", "{name}: {v:#}");
        let reason = v["reason"].as_str().unwrap_or_default().to_string();
        for want in &expected {
            assert!(
                reason.contains(want),
                "{name}: {want:?} not in the reason: {reason}"
            );
        }
        // FAILED within the deadline (3 s) plus the boot (seconds on a loaded machine),
        // and for the exiting container well before its 120 s deadline.
        assert!(
            took < Duration::from_secs(60),
            "{name}: FAILED after {took:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected[0]),
            "{name}: --wait did not say why: {stderr}"
        );
        c.shoal_ok(&["cluster", "delete", name, "--wait"]);
    }
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_blueprint_with_a_bad_probe_is_refused_at_create_and_nothing_is_made() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let dir = c.blueprint_dir();
    let server = SERVER;
    for (name, ready, message) in [
        ("bkind", "{ grpc = 50051 }", "unknown field `grpc`"),
        ("bport", "{ tcp = 0 }", "port 0"),
        ("bcmd", "{ exec = [] }", "the command is empty"),
        (
            "bdead",
            "{ tcp = 8080, deadline = 0 }",
            "ready.deadline must be more than 0",
        ),
        (
            "bref",
            r#"{ http = "http://${fqdn:nope}:8080/" }"#,
            "${fqdn:nope} names no container",
        ),
    ] {
        let path = blueprint(&dir, name, server, ready);
        let out = c.shoal(&[
            "cluster",
            "create",
            name,
            "--nodes",
            "2",
            "--blueprint",
            &path,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(
            stderr.contains(message),
            "{name}: {message:?} not in: {stderr}"
        );
        // And through the operator API, where the CLI does not check first.
        let toml = std::fs::read_to_string(&path).expect("read");
        let body = serde_json::json!({
            "name": name, "provider": "local", "nodes": 2, "blueprint_toml": toml,
        })
        .to_string();
        let token = c.token();
        let auth = format!("Bearer {token}");
        let (status, answer) = http_request(
            "POST",
            &format!("{}/v1/clusters", c.api_url()),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .expect("POST");
        assert_eq!(status, 400, "{name}: {answer}");
        assert!(answer.contains(message), "{name}: {answer}");
    }
    let list: Value =
        serde_json::from_str(&c.shoal_ok(&["cluster", "list", "--json"])).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list:#}");
    let left = c.leftovers(true);
    assert!(left.is_empty(), "made: {left:#?}");
}

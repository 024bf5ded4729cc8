//! The `sim` provider and `shoal-agent-sim` (bench/agent-sim), against a real
//! `shoal serve`: a 200-node cluster whose VMs are records and whose agents are
//! simulated, speaking the real metadata protocol over TLS, each from its own loopback
//! source address. What `bench/run --only agents` does at 1,000 and 10,000 agents, at a
//! size CI runs in seconds. Needs neither root nor Docker.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::coordinator::{bin, TestCoordinator};

const NODES: usize = 200;

/// The demo blueprint's groups, with an overlay with room for 1,000 nodes.
const BLUEPRINT: &str = include_str!("../../bench/agent-sim/simdemo.toml");

#[test]
fn simulated_agents_bring_a_sim_cluster_up_follow_a_scale_down_and_stop_at_delete() {
    let c =
        TestCoordinator::start_with(&["--enable-sim-provider", "--metadata-listen", "127.0.0.1:0"]);
    let bp = c.state_dir.join("simdemo.toml");
    std::fs::write(&bp, BLUEPRINT).expect("blueprint");
    let bp = bp.to_string_lossy().into_owned();
    let nodes = NODES.to_string();
    c.shoal_ok(&[
        "cluster",
        "create",
        "s",
        "--provider",
        "sim",
        "--nodes",
        &nodes,
        "--blueprint",
        &bp,
    ]);
    // The VMs are records: the plan is published without any VM booting, and every
    // node's agent configuration is where the sim provider says.
    c.wait_plan("s", Duration::from_secs(60));
    let agents = c.state_dir.join("sim").join("agents");
    let written = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()).count())
            .unwrap_or(0)
    };
    let cluster_dir = std::fs::read_dir(&agents)
        .expect("sim agents directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .expect("the cluster's agents directory");
    assert_eq!(written(&cluster_dir), NODES);

    // A /16 of loopback sources of this test's own.
    let sources = format!("127.{}.0.0/16", 100 + std::process::id() % 100);
    let mut sim = Command::new(bin("shoal-agent-sim"))
        .arg("--agents")
        .arg(&agents)
        .args(["--sources", &sources, "--seconds", "600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start shoal-agent-sim (cargo build --workspace --bins builds it)");
    let mut to_sim = sim.stdin.take().expect("sim stdin");
    let mut from_sim = BufReader::new(sim.stdout.take().expect("sim stdout"));
    let mut stats = |to: &mut std::process::ChildStdin| -> Value {
        writeln!(to, "stats").expect("ask for stats");
        let mut line = String::new();
        from_sim.read_line(&mut line).expect("stats line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stats {line:?}: {e}"))
    };

    let v = c.wait_state("s", "AVAILABLE", Duration::from_secs(180));
    let shown = v["nodes"].as_array().expect("nodes");
    assert_eq!(shown.len(), NODES);
    assert!(
        shown.iter().all(|n| n["phase"] == "ready"),
        "every node ready: {v:#}"
    );
    let s = stats(&mut to_sim);
    assert_eq!(s["agents"], NODES, "{s}");
    assert_eq!(s["ready"], NODES, "{s}");

    // A scale down: the leaving node drains (the simulated hook succeeds), then its
    // record goes and every other agent gets the plan without it.
    c.shoal_ok(&["cluster", "scale", "s", "--remove", "node-199", "--wait"]);
    let v = c.show("s");
    assert_eq!(v["state"], "AVAILABLE");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(NODES - 1));
    assert!(!cluster_dir.join("node-199.json").exists());
    let generation = v["generation"].as_u64().expect("generation");
    let s = stats(&mut to_sim);
    assert_eq!(s["left"], 1, "{s}");
    assert_eq!(s["ready"], NODES - 1, "{s}");
    // Every agent got the plan without node-199, node-199's own agent included (it
    // learns from it that it is gone).
    let delivered = &s["delivery_ms"][generation.to_string()];
    assert_eq!(delivered["count"], NODES, "{s}");
    assert!(delivered["p99"].as_f64().is_some(), "{s}");
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    assert!(
        s["report_ms"]["count"].as_u64() > Some(NODES as u64 * 5),
        "{s}"
    );

    // Deleted: every simulated agent finds its cluster gone (404) and stops, so the
    // simulator ends by itself, with standard input still open.
    c.shoal_ok(&["cluster", "delete", "s", "--wait"]);
    assert!(!cluster_dir.exists());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = sim.try_wait().expect("sim status") {
            break st;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let s = stats(&mut to_sim);
            let _ = sim.kill();
            panic!("the simulated agents did not stop after the delete: {s}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "shoal-agent-sim: {status}");
    let mut last = String::new();
    from_sim.read_line(&mut last).expect("final stats");
    let s: Value = serde_json::from_str(&last).expect("final stats JSON");
    assert_eq!(s["left"], NODES, "{s}");
    drop(to_sim);
}

#[test]
fn the_sim_provider_is_refused_unless_serve_enables_it() {
    let c = TestCoordinator::start_with(&["--metadata-listen", "127.0.0.1:0"]);
    let out = c.shoal(&[
        "cluster",
        "create",
        "s",
        "--provider",
        "sim",
        "--nodes",
        "2",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--enable-sim-provider"), "{err}");
    assert!(c.state_dir.join("sim").read_dir().is_err(), "nothing made");
    let list = c.shoal_ok(&["cluster", "list", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&list).expect("list"),
        serde_json::json!([])
    );
}

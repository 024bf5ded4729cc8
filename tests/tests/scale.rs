//! Scaling a running local cluster, end to end (issue #14): the real `shoal` and
//! `shoal-agent`, one namespace and one dockerd per VM, the demo blueprint. What an
//! operator would check: containers on the nodes that stay are the same containers
//! (same ids, never restarted), new nodes and old ones reach each other by FQDN, removed
//! nodes are drained first and then gone from every FDB and hosts file, and refusals
//! change nothing. Privileged: run through `scripts/test` as root.

use std::time::Duration;

use serde_json::Value;
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::require_privileges;
use shoal_e2e::vm::{container_starts as containers, fdb_peers, nodes, stdout, wait_until};

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "docker", "bridge"];
const BOOT: Duration = Duration::from_secs(180);

/// Every container FQDN of the cluster, from `show`.
fn fqdns(v: &Value) -> Vec<String> {
    nodes(v)
        .iter()
        .flat_map(|n| n["containers"].as_array().cloned().unwrap_or_default())
        .filter_map(|k| k["hostname"].as_str().map(String::from))
        .collect()
}

/// The `/etc/hosts` a container sees.
fn hosts_of(c: &TestCoordinator, node: &Value, container: &str) -> String {
    stdout(&c.docker(node, &["exec", container, "cat", "/etc/hosts"]))
}

/// Runs `shoal cluster scale ARGS --wait --json` and returns the cluster it printed.
fn scale(c: &TestCoordinator, args: &[&str]) -> Value {
    let mut all = vec!["cluster", "scale"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--wait", "--json"]);
    serde_json::from_str(&c.shoal_ok(&all)).expect("scale --json is JSON")
}

/// The node's agent container reaches `fqdn` (one ping over the overlay).
fn reaches(c: &TestCoordinator, node: &Value, fqdn: &str) -> bool {
    let id = node["id"].as_str().unwrap_or("");
    c.docker(
        node,
        &["exec", &format!("agent-{id}"), "ping", "-c1", "-W2", fqdn],
    )
    .status
    .success()
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn demo_cluster_scales_3_to_5_to_2_without_touching_what_stays() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    c.shoal_ok(&["cluster", "create", "sc", "--nodes", "3", "--wait"]);
    let v1 = c.wait_state("sc", "AVAILABLE", BOOT);
    let before = containers(&c, &v1);

    // Up: 2 workers → 4.
    let v2 = scale(&c, &["sc", "--nodes", "4"]);
    assert_eq!(v2["state"], "AVAILABLE", "{v2:#}");
    assert_eq!(v2["generation"], 2, "one new generation: {v2:#}");
    let ns = nodes(&v2);
    let ids: Vec<&str> = ns.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["node-0", "node-1", "node-2", "node-3", "node-4"]);
    let after_up = containers(&c, &v2);
    for (id, seen) in &before {
        assert_eq!(
            &after_up[id], seen,
            "{id}'s containers changed (id, start time or restarts) when nodes joined"
        );
    }
    // The change is on record: asked, published, each node converged to it.
    let change = &v2["changes"][1];
    assert_eq!(change["kind"], "scale");
    assert_eq!(change["summary"], "workers 2 → 4");
    assert_eq!(change["outcome"], "done");
    assert_eq!(change["added"], serde_json::json!(["node-3", "node-4"]));
    assert_eq!(change["converged"].as_array().map(Vec::len), Some(5));
    // New and old reach each other by FQDN, both ways; every FDB lists every peer.
    let n0 = &ns[0];
    let n4 = &ns[4];
    assert!(reaches(&c, n4, "agent-node-0.sc.shoal.internal"));
    assert!(reaches(&c, n4, "server-node-0.sc.shoal.internal"));
    assert!(reaches(&c, n0, "agent-node-4.sc.shoal.internal"));
    let ips: Vec<String> = ns
        .iter()
        .filter_map(|n| n["private_ip"].as_str().map(String::from))
        .collect();
    for n in &ns {
        let mut peers: Vec<String> = ips
            .iter()
            .filter(|ip| **ip != n["private_ip"])
            .cloned()
            .collect();
        peers.sort();
        assert_eq!(fdb_peers(n), peers, "FDB of {}", n["id"]);
    }
    let all = fqdns(&v2);
    assert_eq!(all.len(), 6);
    let hosts = hosts_of(&c, n0, "server-node-0");
    for f in &all {
        assert!(
            hosts.contains(f.as_str()),
            "{f} missing from the server's hosts: {hosts}"
        );
    }
    // The new workers registered with the server.
    wait_until(
        "the new agents' registrations",
        Duration::from_secs(60),
        || {
            let list = stdout(&c.docker(
                n0,
                &[
                    "exec",
                    "server-node-0",
                    "wget",
                    "-qO-",
                    "http://localhost:8080/cgi-bin/agents",
                ],
            ));
            (list.contains("agent-node-3.sc") && list.contains("agent-node-4.sc")).then_some(())
        },
    );

    // Down: 4 workers → 1; the newest go, each drained first.
    let v3 = scale(&c, &["sc", "--nodes", "1"]);
    assert_eq!(v3["state"], "AVAILABLE", "{v3:#}");
    let ns = nodes(&v3);
    let ids: Vec<&str> = ns.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["node-0", "node-1"]);
    // Two generations: the plan that marks them leaving (their drain), then the one
    // without them.
    assert_eq!(v3["generation"], 4, "{v3:#}");
    let change = &v3["changes"][2];
    assert_eq!(change["summary"], "workers 4 → 1");
    assert_eq!(
        change["removed"],
        serde_json::json!(["node-4", "node-3", "node-2"])
    );
    let after_down = containers(&c, &v3);
    for id in ["node-0", "node-1"] {
        assert_eq!(
            after_down[id], before[id],
            "{id}'s containers changed through the scales"
        );
    }
    // The removed nodes: namespaces gone, out of every FDB and hosts file, and their
    // agents drained (deregistered from the server) before they went.
    let gone: Vec<Value> = nodes(&v2).into_iter().skip(2).collect();
    for g in &gone {
        let netns = g["netns"].as_str().expect("netns");
        assert!(
            !std::path::Path::new("/run/netns").join(netns).exists(),
            "{netns} is left"
        );
    }
    let left_ips: Vec<String> = ns
        .iter()
        .filter_map(|n| n["private_ip"].as_str().map(String::from))
        .collect();
    for n in &ns {
        let peers = fdb_peers(n);
        assert_eq!(peers.len(), 1, "FDB of {}: {peers:?}", n["id"]);
        assert!(left_ips.contains(&peers[0]));
        for k in n["containers"].as_array().into_iter().flatten() {
            let name = k["hostname"]
                .as_str()
                .unwrap_or("")
                .split('.')
                .next()
                .unwrap_or("");
            let hosts = hosts_of(&c, n, name);
            for removed in ["node-2", "node-3", "node-4"] {
                assert!(
                    !hosts.contains(&format!("agent-{removed}")),
                    "{removed} still in {name}'s hosts: {hosts}"
                );
            }
        }
    }
    let list = stdout(&c.docker(
        &ns[0],
        &[
            "exec",
            "server-node-0",
            "wget",
            "-qO-",
            "http://localhost:8080/cgi-bin/agents",
        ],
    ));
    for removed in ["node-2", "node-3", "node-4"] {
        assert!(
            !list.contains(&format!("agent-{removed}.")),
            "agent-{removed} was not drained: {list}"
        );
    }
    assert!(list.contains("agent-node-1.sc"), "{list}");
    // The leases of the removed VMs are free again.
    let leases = std::fs::read_to_string(c.state_dir.join("local/leases.json")).expect("leases");
    for removed in ["node-2", "node-3", "node-4"] {
        assert!(!leases.contains(&format!("/{removed}\"")), "{leases}");
    }

    c.shoal_ok(&["cluster", "delete", "sc", "--wait"]);
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// A blueprint whose workers may be 1 to 3.
const BOUNDED: &str = r#"
name = "bounded"
[[group]]
name = "server"
count = 1
[[group.container]]
name = "server"
image = "shoal/demo:1"
command = ["shoal-demo", "server"]
[[group]]
name = "workers"
count = "rest"
min = 1
max = 3
[[group.container]]
name = "agent"
image = "shoal/demo:1"
command = ["shoal-demo", "agent"]
env = { DEMO_SERVER = "${fqdn:server}" }
"#;

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn refused_scales_say_why_and_change_nothing() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let bp = c.state_dir.join("bounded.toml");
    std::fs::write(&bp, BOUNDED).expect("blueprint");
    let bp = bp.to_str().expect("utf-8").to_string();
    c.shoal_ok(&[
        "cluster",
        "create",
        "rf",
        "--nodes",
        "3",
        "--blueprint",
        &bp,
        "--wait",
    ]);
    let before = c.show("rf");
    // Exit 4: refused by the coordinator (docs/cli-exit-codes.md), with the HTTP code
    // and why.
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--nodes", "0"], "HTTP 422", "may have 1 to 3 node(s)"),
        (&["--nodes", "4"], "HTTP 422", "may have 1 to 3 node(s)"),
        (
            &["--group", "nope", "--nodes", "2"],
            "HTTP 422",
            "has no group \"nope\"",
        ),
        (
            &["--remove", "node-9"],
            "HTTP 422",
            "has no node \"node-9\"",
        ),
        (
            &["--remove", "node-0"],
            "HTTP 422",
            "group server may not have fewer than 1",
        ),
        (
            &["--remove", "node-1", "node-2"],
            "HTTP 422",
            "group workers may not have fewer than 1",
        ),
    ];
    for (args, status, why) in cases {
        let mut all = vec!["cluster", "scale", "rf"];
        all.extend_from_slice(args);
        let out = c.shoal(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert!(err.contains(status) && err.contains(why), "{args:?}: {err}");
    }
    // Usage errors are the CLI's own (exit 2): neither a size nor nodes to remove, or
    // both.
    assert_eq!(c.shoal(&["cluster", "scale", "rf"]).status.code(), Some(2));
    assert_eq!(
        c.shoal(&["cluster", "scale", "rf", "--nodes", "2", "--remove", "node-1"])
            .status
            .code(),
        Some(2)
    );
    // A cluster that is not AVAILABLE (still being created): 409.
    c.shoal_ok(&[
        "cluster",
        "create",
        "young",
        "--nodes",
        "2",
        "--blueprint",
        &bp,
    ]);
    let out = c.shoal(&["cluster", "scale", "young", "--nodes", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("HTTP 409") && (err.contains("is CREATING") || err.contains("is REQUESTED")),
        "{err}"
    );
    // Nothing changed: no new generation, change, node or state.
    let after = c.show("rf");
    for k in ["state", "generation", "node_count", "changes", "events"] {
        assert_eq!(after[k], before[k], "{k} changed");
    }
    assert_eq!(nodes(&after).len(), 3);
    // A scale to the current size is no change at all.
    let out = c.shoal_ok(&["cluster", "scale", "rf", "--nodes", "2", "--json"]);
    let same: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(same["generation"], before["generation"]);
    assert_eq!(same["changes"], before["changes"]);
    c.wait_state("young", "AVAILABLE", BOOT);
}

/// A blueprint whose workers are drained by the server's node: the hook records the
/// leaving agent's FQDN there, unless told to refuse.
const DRAINED_BY_SERVER: &str = r#"
name = "drained-by-server"
[[group]]
name = "server"
count = 1
[[group.container]]
name = "server"
image = "shoal/demo:1"
command = ["shoal-demo", "server"]
[[group]]
name = "workers"
count = "rest"
drain = { group = "server", container = "server", exec = ["sh", "-c", "test ! -e /tmp/refuse && echo \"$0\" >>/tmp/drained", "${leaving:agent}"], timeout = "30s" }
[[group.container]]
name = "agent"
image = "shoal/demo:1"
command = ["shoal-demo", "agent"]
env = { DEMO_SERVER = "${fqdn:server}" }
"#;

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_drain_hook_run_by_another_groups_node_keeps_the_node_when_it_fails() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    // Refused at create, naming what is wrong, and nothing made.
    let bad = c.state_dir.join("bad.toml");
    std::fs::write(
        &bad,
        DRAINED_BY_SERVER.replace(
            "group = \"server\", container",
            "group = \"nope\", container",
        ),
    )
    .expect("blueprint");
    let out = c.shoal(&[
        "cluster",
        "create",
        "bad",
        "--nodes",
        "2",
        "--blueprint",
        bad.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("drain group \"nope\" is not a group of this blueprint"),
        "{err}"
    );
    assert!(!c.shoal(&["cluster", "show", "bad"]).status.success());

    let bp = c.state_dir.join("drained.toml");
    std::fs::write(&bp, DRAINED_BY_SERVER).expect("blueprint");
    let bp = bp.to_str().expect("utf-8").to_string();
    c.shoal_ok(&[
        "cluster",
        "create",
        "dh",
        "--nodes",
        "3",
        "--blueprint",
        &bp,
        "--wait",
    ]);
    let v1 = c.wait_state("dh", "AVAILABLE", BOOT);
    let before = containers(&c, &v1);
    let n0 = &nodes(&v1)[0];

    // The hook fails: the scale fails saying so, node-2 stays, nothing restarted.
    assert!(c
        .docker(n0, &["exec", "server-node-0", "touch", "/tmp/refuse"])
        .status
        .success());
    let out = c.shoal(&["cluster", "scale", "dh", "--remove", "node-2", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = c.wait_state("dh", "AVAILABLE", BOOT);
    let change = &v2["changes"][1];
    assert_eq!(change["outcome"], "failed", "{change:#}");
    let why = change["reason"].as_str().unwrap_or("");
    assert!(
        why.contains("node-2: its drain hook on node-0 failed")
            && why.contains("exited with code 1")
            && why.contains("the nodes stay"),
        "{why}"
    );
    let ns: Vec<Value> = nodes(&v2);
    assert_eq!(ns.len(), 3);
    assert!(ns.iter().all(|n| n["leaving"].is_null()), "{v2:#}");
    assert_eq!(
        containers(&c, &v2),
        before,
        "a failed drain restarted something"
    );

    // Allowed again: another scale finishes the job, the hook ran on node-0 for node-2.
    assert!(c
        .docker(n0, &["exec", "server-node-0", "rm", "/tmp/refuse"])
        .status
        .success());
    let v3 = scale(&c, &["dh", "--remove", "node-2"]);
    assert_eq!(v3["state"], "AVAILABLE", "{v3:#}");
    let left_ids: Vec<String> = nodes(&v3)
        .iter()
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    assert_eq!(left_ids, ["node-0", "node-1"]);
    let drained = stdout(&c.docker(n0, &["exec", "server-node-0", "cat", "/tmp/drained"]));
    assert_eq!(drained, "agent-node-2.dh.shoal.internal\n");
    let netns = nodes(&v1)[2]["netns"].as_str().expect("netns").to_string();
    assert!(!std::path::Path::new("/run/netns").join(&netns).exists());
    let after = containers(&c, &v3);
    for id in ["node-0", "node-1"] {
        assert_eq!(after[id], before[id], "{id}'s containers changed");
    }

    c.shoal_ok(&["cluster", "delete", "dh", "--wait"]);
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

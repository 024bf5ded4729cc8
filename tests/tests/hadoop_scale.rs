//! Scaling a real Hadoop cluster on the local provider (issue #14): the `hadoop`
//! blueprint, a master and one worker; two workers added (HDFS reports their DataNodes
//! live), then the first worker removed, decommissioned by the NameNode before its VM
//! goes. Checked the way an operator would: the NameNode's JMX, `hdfs fsck`, a file
//! read back, and the master's containers, which neither scale may restart.
//! Privileged: run through `scripts/test` as root; the image is built (or taken from
//! its cache) first.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::coordinator::{hadoop_image_dir, TestCoordinator};
use shoal_e2e::hadoop::{exec, get_json, md5, namenode_state, wait_until, TOOLS};
use shoal_e2e::require_privileges;
use shoal_e2e::vm::{container_starts, nodes};

/// Runs `shoal cluster scale ARGS --wait --json` and returns the cluster it printed.
fn scale(c: &TestCoordinator, args: &[&str]) -> Value {
    let mut all = vec!["cluster", "scale"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--wait", "--json"]);
    serde_json::from_str(&c.shoal_ok(&all)).expect("scale --json is JSON")
}

/// The NameNode's word on DataNode `fqdn`: its admin state (`In Service`,
/// `Decommission In Progress`, `Decommissioned`) if it is live, `None` if it is not.
fn admin_state(master_ip: &str, fqdn: &str) -> Option<String> {
    let (_, live) = namenode_state(master_ip);
    live.iter()
        .find(|(k, _)| k.starts_with(&format!("{fqdn}:")) || k.as_str() == fqdn)
        .map(|(_, v)| v["adminState"].as_str().unwrap_or("?").to_string())
}

/// `hdfs fsck /`'s summary line called `what` (e.g. `Missing blocks`), its value.
fn fsck_figure(report: &str, what: &str) -> String {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(what)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {what:?} in fsck's report:\n{report}"))
}

#[test]
#[ignore = "needs root, dockerd, iproute2, debootstrap and a JDK (the hadoop image)"]
fn hadoop_cluster_gains_two_workers_and_decommissions_one_without_losing_a_block() {
    require_privileges(TOOLS);
    let images = hadoop_image_dir();
    let c = TestCoordinator::start_with_images(&images, &[]);
    let create = [
        "cluster",
        "create",
        "hs",
        "--nodes",
        "2",
        "--blueprint",
        "hadoop",
        "--wait",
    ];
    let out = c.shoal(&create);
    assert!(
        out.status.success(),
        "create --wait failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log_text()
    );
    let v1 = c.show("hs");
    let ns = nodes(&v1);
    let master_ip = ns[0]["private_ip"].as_str().expect("ip").to_string();
    let master = |v: &Value| container_starts(&c, v)["node-0"].clone();
    let master_before = master(&v1);
    assert_eq!(
        master_before.lines().count(),
        3,
        "namenode, secondarynamenode, spark-master: {master_before}"
    );

    // --- a file with replication 2, 8 blocks, written while one DataNode holds it -----
    let put = exec(
        &c,
        &ns[1],
        "datanode-node-1",
        "head -c 8000000 /dev/urandom >/tmp/f && shoal-hadoop hdfs dfs -D dfs.replication=2 -D dfs.blocksize=1048576 -put /tmp/f /kept.bin && md5sum </tmp/f",
    );
    assert_eq!(md5(&put).len(), 32, "{put}");

    // --- up: 1 worker → 3 ---------------------------------------------------------------
    let t_up = Instant::now();
    let v2 = scale(&c, &["hs", "--group", "workers", "--nodes", "3"]);
    let up_s = t_up.elapsed().as_secs_f64();
    assert_eq!(v2["state"], "AVAILABLE", "{v2:#}");
    let ns2 = nodes(&v2);
    let ids: Vec<&str> = ns2.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["node-0", "node-1", "node-2", "node-3"]);
    // Each new worker came with its own two data disks: two loop devices a worker.
    for n in &ns2[1..] {
        assert_eq!(n["disks"].as_array().map_or(0, Vec::len), 2, "{n:#}");
    }
    let state = c.state_dir.display().to_string();
    let attached = shoal_e2e::vm::loop_devices_under(&state);
    assert_eq!(attached.len(), 6, "{attached:#?}");
    assert_eq!(
        master(&v2),
        master_before,
        "the master's containers changed (id, start time or restarts) when workers joined"
    );
    // HDFS reports the new DataNodes live (and Spark the new workers).
    let mut live_after = 0.0;
    wait_until("3 live DataNodes", Duration::from_secs(120), || {
        let (state, live) = namenode_state(&master_ip);
        live_after = t_up.elapsed().as_secs_f64();
        let all = ["node-1", "node-2", "node-3"].iter().all(|id| {
            live.keys()
                .any(|k| k.starts_with(&format!("datanode-{id}.")))
        });
        (!(all && state["NumLiveDataNodes"] == 3)).then(|| format!("{state} {live:?}"))
    });
    eprintln!("scale 1 → 3 workers: AVAILABLE after {up_s:.1} s, 3 DataNodes live after {live_after:.1} s");
    wait_until("3 Spark workers", Duration::from_secs(120), || {
        let spark = get_json(&format!("http://{master_ip}:8080/json/"));
        (spark["aliveworkers"] != 3).then(|| format!("{spark}"))
    });
    // The file's blocks got their second replica on a new DataNode.
    wait_until(
        "every block with 2 replicas",
        Duration::from_secs(120),
        || {
            let report = exec(
                &c,
                &ns2[0],
                "namenode-node-0",
                "shoal-hadoop hdfs fsck / 2>/dev/null",
            );
            let under = fsck_figure(&report, "Under-replicated blocks");
            (!under.starts_with("0 ")).then_some(under)
        },
    );

    // --- down: node-1 (which holds a replica of every block) removed ---------------------
    // Watched meanwhile, as an operator would: the NameNode's word on node-1, and
    // node-1's VM (its namespace). HDFS must call it Decommissioned while the VM is
    // still there.
    let fqdn1 = "datanode-node-1.hs.shoal.internal";
    let netns1 = Path::new("/run/netns").join(ns2[1]["netns"].as_str().expect("netns"));
    let t_down = Instant::now();
    let (v3, seen) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen: Vec<(f64, String)> = Vec::new();
            while netns1.exists() {
                let state = admin_state(&master_ip, fqdn1).unwrap_or_else(|| "not live".into());
                if seen.last().map(|(_, s)| s) != Some(&state) {
                    seen.push((t_down.elapsed().as_secs_f64(), state));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen.push((t_down.elapsed().as_secs_f64(), "VM gone".into()));
            seen
        });
        let v3 = scale(&c, &["hs", "--remove", "node-1"]);
        (v3, watcher.join().expect("watcher"))
    });
    eprintln!("node-1 as seen while it was removed (s, state): {seen:?}");
    assert_eq!(v3["state"], "AVAILABLE", "{v3:#}");
    let ns3 = nodes(&v3);
    let ids: Vec<&str> = ns3.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["node-0", "node-2", "node-3"]);
    // node-1's disks went with its VM.
    let node1_dir = shoal_e2e::vm::vm_dir(&ns2[1]).display().to_string();
    let left = shoal_e2e::vm::loop_devices_left_under(&node1_dir);
    assert!(left.is_empty(), "node-1's loop devices left: {left:?}");
    assert_eq!(shoal_e2e::vm::loop_devices_under(&state).len(), 4);
    let states: Vec<&str> = seen.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states.first(), Some(&"In Service"), "{seen:?}");
    let decommissioned = states
        .iter()
        .position(|s| *s == "Decommissioned")
        .unwrap_or_else(|| panic!("node-1 was never seen Decommissioned: {seen:?}"));
    assert_eq!(
        states.last(),
        Some(&"VM gone"),
        "the VM went after HDFS said Decommissioned: {seen:?}"
    );
    assert!(
        decommissioned < states.len() - 1,
        "Decommissioned came before the VM went: {seen:?}"
    );
    eprintln!(
        "decommission of 8 MB (8 blocks): Decommissioned after {:.1} s, VM gone after {:.1} s, AVAILABLE after {:.1} s",
        seen[decommissioned].0,
        seen[seen.len() - 1].0,
        t_down.elapsed().as_secs_f64()
    );
    assert_eq!(
        master(&v3),
        master_before,
        "the master's containers changed through the scales"
    );

    // --- no block lost: fsck HEALTHY, nothing missing or under-replicated, same bytes ---
    let report = exec(
        &c,
        &ns3[0],
        "namenode-node-0",
        "shoal-hadoop hdfs fsck / 2>/dev/null",
    );
    assert!(report.contains("is HEALTHY"), "{report}");
    // (fsck names missing blocks only when there are some: a CORRUPT status.)
    assert!(
        fsck_figure(&report, "Missing replicas").starts_with("0 "),
        "{report}"
    );
    assert_eq!(fsck_figure(&report, "Corrupt blocks"), "0", "{report}");
    assert!(
        fsck_figure(&report, "Under-replicated blocks").starts_with("0 "),
        "{report}"
    );
    assert_eq!(
        fsck_figure(&report, "Total blocks (validated)")
            .split_whitespace()
            .next(),
        Some("8"),
        "{report}"
    );
    let got = exec(
        &c,
        &ns3[1],
        "datanode-node-2",
        "shoal-hadoop hdfs dfs -cat /kept.bin | md5sum",
    );
    assert_eq!(md5(&got), md5(&put), "written {put}, read {got}");
    // Until the NameNode declares the gone DataNode dead (30 s without a heartbeat) it
    // counts it live: still Decommissioned, never back in service (its replicas would
    // count again, and good ones be deleted as excess).
    wait_until("node-1 declared dead", Duration::from_secs(90), || {
        let (state, _) = namenode_state(&master_ip);
        let s1 = admin_state(&master_ip, fqdn1);
        if let Some(s1) = &s1 {
            assert_eq!(
                s1, "Decommissioned",
                "node-1 went back in service while counted live"
            );
        }
        (s1.is_some() || state["NumLiveDataNodes"] != 2).then(|| format!("{state}"))
    });
    // Then, node-1 out of the plan (and so of the host entries), the NameNode's
    // exclude file lets its name in again (a repair would reuse it).
    wait_until(
        "node-1 off the exclude list",
        Duration::from_secs(60),
        || {
            let list = exec(&c, &ns3[0], "namenode-node-0", "cat /data/dfs.exclude");
            list.contains(fqdn1).then_some(list)
        },
    );
    let report = exec(
        &c,
        &ns3[0],
        "namenode-node-0",
        "shoal-hadoop hdfs fsck / 2>/dev/null",
    );
    assert!(
        report.contains("is HEALTHY"),
        "after node-1 was let in again: {report}"
    );
    assert!(
        fsck_figure(&report, "Under-replicated blocks").starts_with("0 "),
        "{report}"
    );

    c.shoal_ok(&["cluster", "delete", "hs", "--wait"]);
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:#?}");
    let loops = shoal_e2e::vm::loop_devices_left_under(&state);
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
}

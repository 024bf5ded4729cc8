//! Node liveness and repair on a local cluster, end to end (issue #15): the real
//! `shoal serve` with a short liveness timeout, the real agents under each VM's init,
//! one namespace and one dockerd per VM. What an operator would check: a node whose
//! agent is frozen (SIGSTOP) is shown `lost` with reason `agent-silent` and the cluster
//! DEGRADED within the timeout; it is AVAILABLE again once the agent is back; `repair`
//! replaces a lost node (same node id, a new VM incarnation) and auto-repair does it
//! alone; delete after a crashed dockerd leaves nothing behind. Privileged: run
//! through `scripts/test` as root.

use std::io::BufRead;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::require_privileges;
use shoal_e2e::vm::{entered_since, nodes, now_ms, vm_dir, wait_until};

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "docker", "bridge"];
const BOOT: Duration = Duration::from_secs(240);
/// The liveness settings these tests serve with: a report every second, lost after 4 s
/// of silence.
const SERVE: &[&str] = &["--report-interval", "1", "--lost-after", "4"];
/// The documented bound for being marked lost: the timeout, plus one sweep (a quarter
/// of it) and a report interval of slack for a loaded machine.
const LOST_BOUND: Duration = Duration::from_secs(4 + 1 + 1 + 4);

/// Sends `sig` (`STOP`, `CONT`, `KILL`) to `pid`, as an operator would with kill(1).
fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// The pid a node's VM directory names in `file` (`agent.pid`, `dockerd.pid`).
fn pid_of(node: &Value, file: &str) -> i32 {
    let text = std::fs::read_to_string(vm_dir(node).join(file)).expect("pid file");
    text.trim().parse().expect("a pid")
}

fn node<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("{id} missing from {v:#}"))
}

/// Waits until `show` satisfies `f`; returns it and how long it took.
fn wait_show(
    c: &TestCoordinator,
    name: &str,
    what: &str,
    limit: Duration,
    f: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let t = Instant::now();
    let v = wait_until(what, limit, || {
        let v = c.show(name);
        f(&v).then_some(v)
    });
    (v, t.elapsed())
}

/// `/metrics` as an operator scrapes it.
fn metrics_text(c: &TestCoordinator) -> String {
    let body = std::process::Command::new("curl")
        .args(["-sf", "-H"])
        .arg(format!("Authorization: Bearer {}", c.token()))
        .arg(format!("{}/metrics", c.api_url()))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&body.stdout).into_owned()
}

fn metric(c: &TestCoordinator, name: &str) -> f64 {
    let text = metrics_text(c);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// A coordinator serving with [`SERVE`] and a cluster `name` of `nodes` nodes, once
/// AVAILABLE (its `show --json`).
fn available_cluster(name: &str, nodes: &str) -> (TestCoordinator, Value) {
    require_privileges(TOOLS);
    let c = TestCoordinator::start_with(SERVE);
    c.shoal_ok(&["cluster", "create", name, "--nodes", nodes, "--wait"]);
    let v = c.wait_state(name, "AVAILABLE", BOOT);
    (c, v)
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_silent_node_is_lost_then_back_and_repair_replaces_it() {
    let (c, v) = available_cluster("lv", "3");
    let n2 = node(&v, "node-2").clone();
    let lost_before = metric(&c, "shoal_nodes_lost_total");

    // Frozen, not dead: its init sees nothing wrong, only the coordinator can tell.
    let agent = pid_of(&n2, "agent.pid");
    signal(agent, "STOP");
    let (v, took) = wait_show(&c, "lv", "node-2 lost", LOST_BOUND, |v| {
        node(v, "node-2")["phase"] == "lost"
    });
    eprintln!(
        "node-2 marked lost {:.1}s after its agent froze",
        took.as_secs_f64()
    );
    assert_eq!(v["state"], "DEGRADED", "{v:#}");
    let lost = node(&v, "node-2");
    assert_eq!(lost["error"]["reason"], "agent-silent", "{lost:#}");
    assert_eq!(node(&v, "node-0")["phase"], "ready");
    assert_eq!(metric(&c, "shoal_nodes_lost_total"), lost_before + 1.0);
    assert_eq!(metric(&c, "shoal_clusters{state=\"DEGRADED\"}"), 1.0);
    assert_eq!(metric(&c, "shoal_nodes{phase=\"lost\"}"), 1.0);
    let text = c.shoal_ok(&["cluster", "show", "lv"]);
    assert!(text.contains("DEGRADED") && text.contains("lost"), "{text}");

    // Back: its next report makes it ready and the cluster AVAILABLE, nothing replaced.
    signal(agent, "CONT");
    let (back, took) = wait_show(
        &c,
        "lv",
        "lv AVAILABLE again",
        Duration::from_secs(10),
        |v| v["state"] == "AVAILABLE",
    );
    eprintln!(
        "AVAILABLE again {:.1}s after the agent resumed",
        took.as_secs_f64()
    );
    assert_eq!(node(&back, "node-2")["phase"], "ready");
    assert_eq!(node(&back, "node-2")["incarnation"], n2["incarnation"]);

    // Lost again, then repaired: a new VM for the same node id and index.
    signal(agent, "STOP");
    wait_show(&c, "lv", "node-2 lost again", LOST_BOUND, |v| {
        node(v, "node-2")["phase"] == "lost"
    });
    let t = Instant::now();
    let out: Value =
        serde_json::from_str(&c.shoal_ok(&["cluster", "repair", "lv", "--wait", "--json"]))
            .expect("repair --json is JSON");
    eprintln!("repair: AVAILABLE after {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(out["state"], "AVAILABLE", "{out:#}");
    let ids: Vec<String> = nodes(&out)
        .iter()
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids, ["node-0", "node-1", "node-2"]);
    let fresh = node(&out, "node-2");
    assert_eq!(fresh["index"], n2["index"]);
    assert_eq!(fresh["phase"], "ready");
    assert!(
        fresh["incarnation"].as_u64() > n2["incarnation"].as_u64(),
        "a new VM: {fresh:#}"
    );
    // The frozen agent went with its old VM.
    assert!(
        std::fs::read_to_string(format!("/proc/{agent}/stat")).map_or(true, |s| s.contains(") Z ")),
        "the old VM's frozen agent {agent} still runs"
    );
    // The others were left alone.
    for id in ["node-0", "node-1"] {
        assert_eq!(node(&out, id)["incarnation"], node(&v, id)["incarnation"]);
    }
    c.shoal_ok(&["cluster", "delete", "lv", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

/// The sum of a metric's samples whose labels start with `labels` (`route="status"`).
fn metric_sum(c: &TestCoordinator, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}");
    metrics_text(c)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn resident_agents_send_liveness_reports_on_the_connection_they_keep() {
    let (c, v) = available_cluster("kc", "2");
    // Let the boot's reports and first polls settle.
    std::thread::sleep(Duration::from_secs(2));
    let conns = metric(&c, "shoal_metadata_connections_total");
    let reports = metric_sum(&c, "shoal_metadata_requests_total", "route=\"status\"");
    std::thread::sleep(Duration::from_secs(8));
    let new_conns = metric(&c, "shoal_metadata_connections_total") - conns;
    let new_reports = metric_sum(&c, "shoal_metadata_requests_total", "route=\"status\"") - reports;
    // What the agents say of the polls they gave up on (a cause of new connections).
    let dropped: Vec<String> = nodes(&v)
        .iter()
        .filter_map(|n| std::fs::read_to_string(n["agent_log"].as_str()?).ok())
        .flat_map(|log| {
            log.lines()
                .filter(|l| l.contains("long-poll did not end"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    eprintln!(
        "in 8 s: {new_reports} status reports, {new_conns} new connections, {} polls dropped",
        dropped.len()
    );
    // A report a second from each of the two agents: at least half of them on a loaded
    // machine. Dropping the long-poll to report (as agents did) made each one a new TLS
    // connection; now a poll ends when the report is due and the report reuses its
    // connection. A few new ones are allowed: hyper's pool, asked for a connection
    // before the poll's has gone back to it (a busy machine), opens another (CI here
    // saw 2 for 16 reports; 3 for 79 under a busy loop per core). Three reports in four
    // must reuse one.
    assert!(new_reports >= 8.0, "{new_reports} liveness reports in 8 s");
    assert!(
        new_conns <= new_reports / 4.0,
        "{new_conns} new connections for {new_reports} liveness reports: agents do not keep \
         theirs; polls dropped: {dropped:#?}"
    );
    c.shoal_ok(&["cluster", "delete", "kc", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn auto_repair_replaces_a_lost_node_alone() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start_with(SERVE);
    c.shoal_ok(&[
        "cluster",
        "create",
        "ar",
        "--nodes",
        "2",
        "--auto-repair",
        "2s",
        "--wait",
    ]);
    let v = c.wait_state("ar", "AVAILABLE", BOOT);
    let n0 = node(&v, "node-0").clone();
    let n1 = node(&v, "node-1").clone();
    let agent = pid_of(&n1, "agent.pid");
    signal(agent, "STOP");
    wait_show(&c, "ar", "node-1 lost", LOST_BOUND, |v| {
        node(v, "node-1")["phase"] == "lost"
    });
    let (v, took) = wait_show(&c, "ar", "node-1 replaced", BOOT, |v| {
        v["state"] == "AVAILABLE"
            && node(v, "node-1")["incarnation"].as_u64() > n1["incarnation"].as_u64()
    });
    eprintln!(
        "auto-repair: AVAILABLE {:.1}s after the node was lost",
        took.as_secs_f64()
    );
    assert_eq!(node(&v, "node-1")["phase"], "ready");
    assert_eq!(node(&v, "node-0")["incarnation"], n0["incarnation"]);
    let repair = v["changes"]
        .as_array()
        .and_then(|cs| cs.iter().find(|ch| ch["kind"] == "repair"))
        .unwrap_or_else(|| panic!("no repair on record: {v:#}"));
    assert_eq!(repair["outcome"], "done", "{repair:#}");
    c.shoal_ok(&["cluster", "delete", "ar", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn delete_after_a_dockerd_crash_leaves_nothing() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    c.shoal_ok(&["cluster", "create", "dc", "--nodes", "2", "--wait"]);
    let v = c.wait_state("dc", "AVAILABLE", BOOT);
    let n1 = node(&v, "node-1").clone();
    let dir = vm_dir(&n1);
    // The VM's init must not restart dockerd meanwhile: freeze it, as a crashed unit
    // systemd has given up on would be.
    let init = pid_of(&n1, "init.pid");
    signal(init, "STOP");
    let dockerd = pid_of(&n1, "dockerd.pid");
    // containerd goes with dockerd (its parent-death signal); the shims and the
    // containers' processes stay.
    signal(dockerd, "KILL");
    let ids: Vec<String> = std::fs::read_dir(dir.join("docker/containers"))
        .expect("containers dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!ids.is_empty(), "the node had containers");
    let orphans = container_processes(&ids);
    assert!(
        !orphans.is_empty(),
        "the containers' processes should outlive their dockerd"
    );
    c.shoal_ok(&["cluster", "delete", "dc", "--wait"]);
    assert_eq!(
        container_processes(&ids),
        Vec::<i32>::new(),
        "container processes left"
    );
    assert_eq!(c.leftovers(true), Vec::<String>::new());
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let uid_links: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter(|l| l.contains(&format!("{}-", c.prefix)) && !l.contains("-vpc"))
        .map(String::from)
        .collect();
    assert_eq!(uid_links, Vec::<String>::new(), "links left");
}

/// Live processes in a cgroup named after one of the container ids.
fn container_processes(ids: &[String]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.contains(") Z ") && ids.iter().any(|id| cg.contains(id.as_str()))
        })
        .collect()
}

/// The live pid `file` names, once it is not `old`.
fn new_pid(node: &Value, file: &str, old: i32, limit: Duration) -> (i32, Duration) {
    let t = Instant::now();
    let pid = wait_until(&format!("{file} restarted"), limit, || {
        let pid: i32 = std::fs::read_to_string(vm_dir(node).join(file))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (pid != old && !stat.contains(") Z ")).then_some(pid)
    });
    (pid, t.elapsed())
}

/// Each container of a node as `name hostname address state`, sorted.
fn container_lines(n: &Value) -> Vec<String> {
    let mut out: Vec<String> = n["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| {
            format!(
                "{} {} {} {}",
                k["name"], k["hostname"], k["address"], k["state"]
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_vm_restarts_its_agent_and_dockerd_and_comes_back_from_a_reboot() {
    let (c, v) = available_cluster("sv", "2");
    let n1 = node(&v, "node-1").clone();
    let before = container_lines(&n1);
    assert!(!before.is_empty(), "{n1:#}");

    // The agent killed: its init starts it again, it converges and reports.
    let since = now_ms();
    let agent = pid_of(&n1, "agent.pid");
    signal(agent, "KILL");
    let (_, took) = new_pid(&n1, "agent.pid", agent, Duration::from_secs(5));
    eprintln!("agent back {:.2}s after SIGKILL", took.as_secs_f64());
    let (v, _) = wait_show(
        &c,
        "sv",
        "sv AVAILABLE after the agent's restart",
        Duration::from_secs(60),
        |v| v["state"] == "AVAILABLE" && entered_since(v, "DEGRADED", since),
    );
    let restarts = node(&v, "node-1")["restarts"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(restarts.contains("agent 1"), "restarts: {restarts:?}");
    let text = c.shoal_ok(&["cluster", "show", "sv"]);
    assert!(text.contains("agent 1"), "{text}");

    // dockerd killed: the node is unhealthy (dockerd-down) and the cluster DEGRADED
    // while it is down; started again by the init, the node's containers are back and
    // the cluster AVAILABLE.
    let dockerd = pid_of(&n1, "dockerd.pid");
    let since = now_ms();
    signal(dockerd, "KILL");
    let (_, took) = new_pid(&n1, "dockerd.pid", dockerd, Duration::from_secs(5));
    eprintln!("dockerd back {:.2}s after SIGKILL", took.as_secs_f64());
    let (v, _) = wait_show(
        &c,
        "sv",
        "node-1's containers running again",
        Duration::from_secs(60),
        |v| {
            v["state"] == "AVAILABLE"
                && fault_then_available(v, since, &["node-1 unhealthy", "dockerd-down"]).is_some()
                && node(v, "node-1")["restarts"]
                    .as_str()
                    .is_some_and(|r| r.contains("dockerd 1"))
                && c.docker(node(v, "node-1"), &["ps", "-q"])
                    .stdout
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
                    == before.len()
        },
    );
    assert_eq!(container_lines(node(&v, "node-1")), before);
    let (down, up) = fault_then_available(&v, since, &["dockerd-down"]).expect("seen");
    eprintln!(
        "cluster DEGRADED {} ms after dockerd's SIGKILL, AVAILABLE {} ms later",
        down.saturating_sub(since),
        up.saturating_sub(down)
    );
    let reason = v["events"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["at_ms"] == down))
        .and_then(|e| e["reason"].as_str())
        .unwrap_or("")
        .to_string();
    assert!(
        reason.contains("ping"),
        "the message says what failed: {reason}"
    );

    // A reboot: every process gone, the overlay's links cleared, booted again.
    let agent = pid_of(&n1, "agent.pid");
    let since = now_ms();
    let asked = Instant::now();
    c.shoal_ok(&["cluster", "reboot", "sv", "--node", "node-1"]);
    // The bound documented in docs/lifecycle.md: the VM's processes killed, dockerd
    // started and answering (its own restore of the killed containers), the agent.
    new_pid(&n1, "agent.pid", agent, Duration::from_secs(15));
    eprintln!(
        "agent started {:.2}s after the reboot was asked",
        asked.elapsed().as_secs_f64()
    );
    let (v, _) = wait_show(
        &c,
        "sv",
        "sv AVAILABLE after the reboot",
        Duration::from_secs(120),
        |v| v["state"] == "AVAILABLE" && entered_since(v, "DEGRADED", since),
    );
    eprintln!(
        "AVAILABLE {:.2}s after the reboot was asked",
        asked.elapsed().as_secs_f64()
    );
    let after = node(&v, "node-1");
    assert_eq!(after["incarnation"], n1["incarnation"], "the same VM");
    // The new boot's dockerd came up at its first start (a stale /run made it wait
    // 15 s for a containerd that was not there, exit, and be restarted).
    let restarts = after["restarts"].as_str().unwrap_or("");
    assert!(
        restarts.contains("dockerd 0"),
        "restarts since the reboot: {restarts}"
    );
    assert_eq!(
        container_lines(after),
        before,
        "same containers, same addresses"
    );
    // The other node reaches the rebooted one's containers over the rebuilt overlay.
    let host = node(&v, "node-1")["containers"][0]["hostname"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let n0 = node(&v, "node-0");
    let ok = c
        .docker(n0, &["exec", "agent-node-0", "ping", "-c1", "-W2", &host])
        .status
        .success();
    assert!(ok, "node-0 cannot reach {host} after node-1's reboot");
    c.shoal_ok(&["cluster", "delete", "sv", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

/// The DEGRADED the cluster entered after `since_ms` for a reason containing each of
/// `needles`, and the AVAILABLE that followed it: `(degraded_at_ms, available_at_ms)`.
fn fault_then_available(v: &Value, since_ms: u64, needles: &[&str]) -> Option<(u64, u64)> {
    let events = v["events"].as_array()?;
    let (i, degraded) = events.iter().enumerate().find(|(_, e)| {
        e["state"] == "DEGRADED"
            && e["at_ms"].as_u64().is_some_and(|t| t >= since_ms)
            && e["reason"]
                .as_str()
                .is_some_and(|r| needles.iter().all(|n| r.contains(n)))
    })?;
    let available = events[i + 1..].iter().find(|e| e["state"] == "AVAILABLE")?;
    Some((degraded["at_ms"].as_u64()?, available["at_ms"].as_u64()?))
}

/// The documented bound for an overlay device or FDB entry put back (docs/lifecycle.md).
const NETWORK_BOUND: Duration = Duration::from_secs(2);

/// Whether the node's namespace has the link `name`.
fn has_link(n: &Value, name: &str) -> bool {
    shoal_e2e::vm::in_ns(n, "ip")
        .args(["link", "show", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether `from`'s first container reaches `to`'s first container by its FQDN.
fn reaches(c: &TestCoordinator, from: &Value, to: &Value) -> bool {
    // Docker names a container after its FQDN's first label.
    let fqdn = |n: &Value| {
        n["containers"][0]["hostname"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let (container, host) = (fqdn(from), fqdn(to));
    let container = container.split('.').next().unwrap_or("");
    let out = c.docker(from, &["exec", container, "ping", "-c1", "-W2", &host]);
    if !out.status.success() {
        eprintln!(
            "{container} → {host}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// Runs `command` in node `n`'s namespace (of cluster `name`) (the fault), then checks what an operator
/// would: `healed` holds within [`NETWORK_BOUND`], and the cluster's record shows it
/// DEGRADED for a reason with every one of `needles`, then AVAILABLE. Returns the
/// cluster then.
fn break_and_heal(
    c: &TestCoordinator,
    name: &str,
    n: &Value,
    command: &[&str],
    healed: impl Fn() -> bool,
    needles: &[&str],
) -> Value {
    let since = now_ms();
    let t = Instant::now();
    let ok = shoal_e2e::vm::in_ns(n, command[0])
        .args(&command[1..])
        .status()
        .expect("run the fault's command");
    assert!(ok.success(), "{command:?}");
    let took = wait_until(&format!("healed after {command:?}"), NETWORK_BOUND, || {
        healed().then(|| t.elapsed())
    });
    let (v, _) = wait_show(
        c,
        name,
        &format!("DEGRADED ({needles:?}) then AVAILABLE"),
        Duration::from_secs(10),
        |v| fault_then_available(v, since, needles).is_some(),
    );
    let (down, up) = fault_then_available(&v, since, needles).expect("seen");
    eprintln!(
        "{command:?}: healed {:.3}s after, cluster DEGRADED {} ms after, AVAILABLE {} ms later",
        took.as_secs_f64(),
        down.saturating_sub(since),
        up.saturating_sub(down)
    );
    assert_eq!(v["state"], "AVAILABLE", "{v:#}");
    v
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_removed_vxlan_device_bridge_or_fdb_entry_is_put_back_at_once() {
    let (c, v) = available_cluster("nw", "2");
    let n0 = node(&v, "node-0").clone();
    let n1 = node(&v, "node-1").clone();
    let peer = n0["private_ip"].as_str().expect("private_ip").to_string();
    assert!(reaches(&c, &n0, &n1) && reaches(&c, &n1, &n0), "overlay up");
    let before = container_lines(&n1);

    // The VXLAN device deleted, as an operator's `ip link del` would.
    let v = break_and_heal(
        &c,
        "nw",
        &n1,
        &["ip", "link", "del", "shoal-vx"],
        || has_link(&n1, "shoal-vx") && shoal_e2e::vm::fdb_peers(&n1) == [peer.clone()],
        &["node-1 unhealthy", "network-device-missing", "shoal-vx"],
    );
    assert!(
        reaches(&c, &n0, &n1) && reaches(&c, &n1, &n0),
        "overlay rebuilt"
    );
    assert_eq!(
        container_lines(node(&v, "node-1")),
        before,
        "no container touched"
    );
    let timeline = c.shoal_ok(&["cluster", "timeline", "nw"]);
    assert!(
        timeline.contains("network-device-missing"),
        "the timeline shows the fault:\n{timeline}"
    );

    // One FDB entry removed: the node-0 peer's, which node-1 needs to reach it.
    let fdb_del = [
        "bridge",
        "fdb",
        "del",
        "00:00:00:00:00:00",
        "dev",
        "shoal-vx",
        "dst",
        &peer,
    ];
    break_and_heal(
        &c,
        "nw",
        &n1,
        &fdb_del,
        || shoal_e2e::vm::fdb_peers(&n1) == [peer.clone()],
        &["node-1 unhealthy", "network-device-missing", "FDB", &peer],
    );
    assert!(reaches(&c, &n1, &n0), "node-1 reaches node-0 again");

    // The bridge deleted: Docker's network loses its device (and the containers their
    // links), so the agent makes the network, the VXLAN device and its entries again.
    let v = break_and_heal(
        &c,
        "nw",
        &n1,
        &["ip", "link", "del", "shoal0"],
        || {
            has_link(&n1, "shoal0")
                && has_link(&n1, "shoal-vx")
                && shoal_e2e::vm::fdb_peers(&n1) == [peer.clone()]
        },
        &["node-1 unhealthy", "network-device-missing", "shoal0"],
    );
    let n1 = node(&v, "node-1").clone();
    assert!(
        reaches(&c, &n0, &n1) && reaches(&c, &n1, &n0),
        "overlay rebuilt with its bridge"
    );
    assert_eq!(
        container_lines(&n1),
        before,
        "the same containers, names and addresses"
    );
    c.shoal_ok(&["cluster", "delete", "nw", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

/// Deletes `shoal-vx` and at once holds its UDP port (4789) for `argv[1]` seconds, so
/// the agent can create the device again but not set it up (EADDRINUSE): the fault it
/// cannot put right until the port is free. Prints `held` once the port is taken.
const HOLD_VXLAN_PORT: &str = r#"
import socket, subprocess, sys, time
subprocess.run(["ip", "link", "del", "shoal-vx"], check=True)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = time.time() + 2
while True:
    try:
        s.bind(("0.0.0.0", 4789))
        break
    except OSError:
        if time.time() > deadline:
            sys.exit(3)
        time.sleep(0.001)
print("held", flush=True)
time.sleep(float(sys.argv[1]))
"#;

#[test]
#[ignore = "needs root, dockerd, iproute2, python3"]
fn an_overlay_that_cannot_be_put_back_is_retried_with_backoff_not_in_a_loop() {
    let (c, v) = available_cluster("bo", "2");
    let n1 = node(&v, "node-1").clone();
    let log_path = std::path::PathBuf::from(n1["agent_log"].as_str().expect("agent_log"));
    let failed_before = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .matches("putting the node right failed")
        .count();
    let since = now_ms();
    let hold = Duration::from_secs(8);
    // The agent may win the race for the port (it puts the device back in ~0.1 s):
    // then try again.
    let mut holder = None;
    for _ in 0..5 {
        let mut out = shoal_e2e::vm::in_ns(&n1, "python3")
            .args(["-c", HOLD_VXLAN_PORT, &hold.as_secs().to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(out.stdout.take().expect("stdout"));
        let _ = reader.read_line(&mut line);
        if line.trim() == "held" {
            holder = Some(out);
            break;
        }
        let _ = out.wait();
        wait_show(
            &c,
            "bo",
            "AVAILABLE before trying again",
            Duration::from_secs(10),
            |v| v["state"] == "AVAILABLE",
        );
    }
    let mut holder = holder.expect("the port was never held before the agent took it");
    let t = Instant::now();
    let (v, _) = wait_show(
        &c,
        "bo",
        "node-1 unhealthy, the rebuild failing",
        Duration::from_secs(5),
        |v| {
            node(v, "node-1")["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("putting it right failed"))
        },
    );
    let n = node(&v, "node-1");
    assert_eq!(n["phase"], "unhealthy", "{n:#}");
    assert_eq!(n["error"]["reason"], "network-device-missing", "{n:#}");
    assert_eq!(v["state"], "DEGRADED");
    let _ = holder.wait();
    let held = t.elapsed();
    // Free again: the next try (at most the backoff's step later) puts it back.
    let (v, took) = wait_show(
        &c,
        "bo",
        "AVAILABLE once the port is free",
        Duration::from_secs(20),
        |v| v["state"] == "AVAILABLE" && fault_then_available(v, since, &["shoal-vx"]).is_some(),
    );
    assert_eq!(node(&v, "node-1")["phase"], "ready");
    let tries = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .matches("putting the node right failed")
        .count()
        - failed_before;
    eprintln!(
        "{tries} failed rebuilds in {:.1}s while the port was held, AVAILABLE {:.1}s after it was freed",
        held.as_secs_f64(),
        took.as_secs_f64()
    );
    // 1 s doubling: 1 + 2 + 4 s covers 8 s in four tries; a loop would make hundreds.
    assert!(
        (2..=6).contains(&tries),
        "{tries} failed rebuilds in {held:?}"
    );
    assert!(reaches(&c, &n1, node(&v, "node-0")), "overlay rebuilt");
    c.shoal_ok(&["cluster", "delete", "bo", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

/// The documented bound for a ready node whose probe keeps failing to be seen
/// `unhealthy` (docs/lifecycle.md): the demo server's probe is tried every second once
/// the node is ready (its 0.05 s interval bounded to 1 s) and called failing at the
/// third failure in a row, so about 3 s; the rest is slack for a loaded machine.
const PROBE_BOUND: Duration = Duration::from_secs(8);

/// The bound for a hung service (docs/lifecycle.md): three tries, each running into
/// the demo server probe's 10 s timeout, the first within a second; with slack.
const HUNG_BOUND: Duration = Duration::from_secs(45);

/// The demo server's container on node `n` (Docker's name for it).
fn server_container(n: &Value) -> String {
    n["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|k| k["name"] == "server"))
        .and_then(|k| k["hostname"].as_str())
        .and_then(|h| h.split('.').next())
        .unwrap_or_else(|| panic!("no server container on {n:#}"))
        .to_string()
}

/// `ID STARTED_AT RESTART_COUNT` of container `name` on node `n`.
fn started(c: &TestCoordinator, n: &Value, name: &str) -> String {
    let out = c.docker(
        n,
        &[
            "inspect",
            "--format",
            "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}",
            name,
        ],
    );
    shoal_e2e::vm::stdout(&out).trim().to_string()
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn a_service_that_stops_answering_makes_its_node_unhealthy_until_it_answers() {
    let (c, v) = available_cluster("pf", "2");
    let n0 = node(&v, "node-0").clone();
    let server = server_container(&n0);
    let was = started(&c, &n0, &server);
    let www = "/var/lib/shoal-demo/www";

    // The server's page taken away: httpd runs on and answers, but not what the probe
    // wants (`body = "hello from"`). Nothing exits; only the probe can tell.
    let since = now_ms();
    let t = Instant::now();
    let out = c.docker(
        &n0,
        &[
            "exec",
            &server,
            "mv",
            &format!("{www}/index.html"),
            &format!("{www}/off.html"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let (v, took) = wait_show(
        &c,
        "pf",
        "node-0 unhealthy (probe-failed)",
        PROBE_BOUND,
        |v| node(v, "node-0")["phase"] == "unhealthy",
    );
    eprintln!(
        "page removed: node-0 unhealthy {:.2}s after, seen in {:.2}s",
        t.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    let n = node(&v, "node-0");
    assert_eq!(n["error"]["reason"], "probe-failed", "{n:#}");
    let message = n["error"]["message"].as_str().unwrap_or("").to_string();
    for needle in [
        server.as_str(),
        "http http://localhost:8080/",
        "failed 3 tries in a row after the node was ready",
        "last try: GET http://",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from {message}"
        );
    }
    assert_eq!(v["state"], "DEGRADED", "{v:#}");
    assert_eq!(node(&v, "node-1")["phase"], "ready");
    let text = c.shoal_ok(&["cluster", "show", "pf"]);
    assert!(
        text.contains("DEGRADED") && text.contains("probe-failed"),
        "{text}"
    );
    // Left running, not restarted: the agent reports, the blueprint's restart policy
    // is the only one to restart anything.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(started(&c, &n0, &server), was, "the server was restarted");
    assert_eq!(
        c.show("pf")["state"],
        "DEGRADED",
        "it stays so while failing"
    );

    // The page back: the next try passes, the node is ready, the cluster AVAILABLE.
    let t = Instant::now();
    let out = c.docker(
        &n0,
        &[
            "exec",
            &server,
            "mv",
            &format!("{www}/off.html"),
            &format!("{www}/index.html"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let (v, took) = wait_show(
        &c,
        "pf",
        "pf AVAILABLE again",
        Duration::from_secs(5),
        |v| v["state"] == "AVAILABLE",
    );
    eprintln!("page back: AVAILABLE in {:.2}s", took.as_secs_f64());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(node(&v, "node-0")["phase"], "ready");
    let (down, up) =
        fault_then_available(&v, since, &["node-0 unhealthy", "probe-failed", &server])
            .expect("the record has the DEGRADED and the AVAILABLE");
    eprintln!(
        "cluster DEGRADED {} ms after the page went, AVAILABLE {} ms later",
        down.saturating_sub(since),
        up.saturating_sub(down)
    );
    assert_eq!(started(&c, &n0, &server), was, "the server was restarted");

    // httpd frozen (SIGSTOP): the kernel still accepts connections, nothing answers.
    // Each try runs into the probe's 10 s timeout: failing at the third.
    let pid = shoal_e2e::vm::stdout(&c.docker(&n0, &["exec", &server, "pidof", "httpd"]))
        .trim()
        .to_string();
    assert!(!pid.is_empty(), "httpd runs in {server}");
    let since = now_ms();
    let out = c.docker(&n0, &["exec", &server, "kill", "-STOP", &pid]);
    assert!(out.status.success(), "{out:?}");
    let (v, took) = wait_show(&c, "pf", "node-0 unhealthy (hung)", HUNG_BOUND, |v| {
        node(v, "node-0")["phase"] == "unhealthy"
    });
    eprintln!(
        "httpd frozen: node-0 unhealthy in {:.1}s",
        took.as_secs_f64()
    );
    let message = node(&v, "node-0")["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.contains("last try: no answer within 10000 ms"),
        "{message}"
    );
    let out = c.docker(&n0, &["exec", &server, "kill", "-CONT", &pid]);
    assert!(out.status.success(), "{out:?}");
    let (_, took) = wait_show(
        &c,
        "pf",
        "pf AVAILABLE after SIGCONT",
        Duration::from_secs(15),
        |v| {
            v["state"] == "AVAILABLE"
                && fault_then_available(v, since, &["probe-failed", "no answer"]).is_some()
        },
    );
    eprintln!("httpd resumed: AVAILABLE in {:.1}s", took.as_secs_f64());
    assert_eq!(started(&c, &n0, &server), was, "the server was restarted");

    // httpd killed: the container exits (its script ends with httpd), and Docker's
    // restart policy starts it again. That is container-exited, not probe-failed.
    let since = now_ms();
    let out = c.docker(&n0, &["exec", &server, "killall", "httpd"]);
    assert!(out.status.success(), "{out:?}");
    let (v, _) = wait_show(
        &c,
        "pf",
        "DEGRADED (container-exited) then AVAILABLE",
        Duration::from_secs(30),
        |v| {
            v["state"] == "AVAILABLE"
                && fault_then_available(
                    v,
                    since,
                    &["node-0 unhealthy", "container-exited", &server],
                )
                .is_some()
        },
    );
    let (down, up) = fault_then_available(&v, since, &["container-exited"]).expect("seen");
    eprintln!(
        "httpd killed: DEGRADED {} ms after, AVAILABLE {} ms later",
        down.saturating_sub(since),
        up.saturating_sub(down)
    );
    let probe_failed = v["events"].as_array().is_some_and(|es| {
        es.iter().any(|e| {
            e["at_ms"].as_u64().is_some_and(|t| t >= since)
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("probe-failed"))
        })
    });
    assert!(
        !probe_failed,
        "an exit reported as probe-failed: {:#}",
        v["events"]
    );
    assert_ne!(
        started(&c, &n0, &server),
        was,
        "it exited and started again"
    );
    assert_eq!(node(&v, "node-0")["phase"], "ready");
    c.shoal_ok(&["cluster", "delete", "pf", "--wait"]);
    assert_eq!(c.leftovers(true), Vec::<String>::new());
}

//! End to end on the local provider: the real `shoal` and `shoal-agent` binaries, one
//! network namespace and one dockerd per VM, the demo image. Privileged: run through
//! `scripts/test` as root (`cargo test -p shoal-e2e -- --include-ignored`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::coordinator::{bin, image_dir, TestCoordinator};
use shoal_e2e::vm::{container_ids, fdb_peers, in_ns, nodes, stdout};
use shoal_e2e::{require_privileges, TestNetns};

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "docker", "curl", "bridge"];
const BOOT: Duration = Duration::from_secs(120);

/// The cluster key, as the node's agent received it (the API never shows it).
fn cluster_key(c: &TestCoordinator, node: &Value) -> String {
    let log = PathBuf::from(node["agent_log"].as_str().expect("agent_log"));
    let cfg = log.with_file_name("agent.json");
    let v: Value = serde_json::from_slice(&std::fs::read(cfg).expect("agent.json")).expect("json");
    let _ = c;
    v["cluster_key"].as_str().expect("key").to_string()
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn two_node_cluster_boots_reports_and_deletes_without_a_trace() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let out = c.shoal(&["cluster", "create", "pair", "--nodes", "2", "--wait"]);
    assert!(
        out.status.success(),
        "create --wait failed: {}\n{}\n{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr),
        c.log_text()
    );
    // --wait showed per-node progress: a line per phase change it saw (a phase shorter
    // than its poll, such as plan-received with a quick dockerd, may go unseen), each
    // node's ready, the cluster's AVAILABLE.
    let progress = String::from_utf8_lossy(&out.stderr);
    for node in ["node-0", "node-1"] {
        assert!(
            progress
                .lines()
                .any(|l| l.contains(node) && l.trim_end().ends_with("ready")),
            "no ready line for {node}: {progress}"
        );
    }
    assert!(progress.contains("AVAILABLE"), "{progress}");

    let v = c.show("pair");
    assert_eq!(v["state"], "AVAILABLE");
    // TLS by default: the metadata URL is https, and every agent got the CA.
    assert_eq!(v["metadata_url"], format!("https://{}:8787", c.gateway));
    let ca = std::fs::read_to_string(c.state_dir.join("ca.pem")).expect("ca.pem");
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(
            PathBuf::from(nodes(&v)[0]["agent_log"].as_str().expect("log"))
                .with_file_name("agent.json"),
        )
        .expect("agent.json"),
    )
    .expect("json");
    assert_eq!(cfg["ca_cert_pem"].as_str(), Some(ca.as_str()));
    let ns = nodes(&v);
    assert_eq!(ns.len(), 2);
    for n in &ns {
        assert_eq!(n["phase"], "ready", "{n:#}");
        assert!(n["private_ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.214.")));
        let netns = n["netns"].as_str().expect("netns listed");
        assert!(std::path::Path::new("/run/netns").join(netns).exists());
        let sock = n["docker_socket"].as_str().expect("docker socket listed");
        assert!(std::path::Path::new(sock).exists());
        // Phase timings reach the coordinator.
        let phases: Vec<&str> = n["timings"]
            .as_array()
            .expect("timings")
            .iter()
            .filter_map(|t| t["phase"].as_str())
            .collect();
        for p in [
            "agent-started",
            "plan-received",
            "network",
            "images",
            "containers",
            "ready",
        ] {
            assert!(phases.contains(&p), "{p} missing from {phases:?}");
        }
    }
    let list: Value =
        serde_json::from_str(&c.shoal_ok(&["cluster", "list", "--json"])).expect("json");
    assert_eq!(list[0]["name"], "pair");

    let out = c.shoal(&["cluster", "delete", "pair", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.show("pair")["state"], "DELETED");
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:#?}");
    // Deleting again is safe.
    c.shoal_ok(&["cluster", "delete", "pair", "--wait"]);
    // The VPC (its namespace and the host's link) goes when the coordinator stops with
    // no local cluster left.
    let mut c = c;
    c.stop("TERM");
    let left = c.leftovers(false);
    assert!(
        left.is_empty(),
        "left behind after the coordinator stopped: {left:#?}"
    );
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn metadata_api_refuses_strangers_and_long_polls() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let md = format!("https://{}:8787", c.gateway);
    let ca = c.state_dir.join("ca.pem");
    let ca = ca.to_str().expect("path");
    let curl = |args: &[&str]| -> (String, String) {
        let out = Command::new("curl")
            .args([
                "-s",
                "--cacert",
                ca,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{time_total}",
            ])
            .args(args)
            .output()
            .expect("curl");
        let text = stdout(&out);
        let mut parts = text.split(' ');
        (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        )
    };
    // Unknown keys: well-formed or not, 404.
    let unknown = "0".repeat(64);
    assert_eq!(curl(&[&format!("{md}/metadata/v1/{unknown}")]).0, "404");
    assert_eq!(curl(&[&format!("{md}/metadata/v1/not-a-key")]).0, "404");
    // Operator API without (or with a wrong) token: 401.
    let api = c.api_url();
    assert_eq!(curl(&[&format!("{api}/v1/clusters")]).0, "401");
    assert_eq!(
        curl(&[
            "-H",
            "Authorization: Bearer wrong",
            &format!("{api}/v1/clusters")
        ])
        .0,
        "401"
    );

    // A long-poll started before the plan exists is answered with the plan.
    c.shoal_ok(&["cluster", "create", "lp", "--nodes", "1"]);
    let start = Instant::now();
    let node = loop {
        let v = c.show("lp");
        let n = nodes(&v).remove(0);
        if n["agent_log"].is_string()
            && PathBuf::from(n["agent_log"].as_str().unwrap_or_default())
                .with_file_name("agent.json")
                .exists()
        {
            break n;
        }
        assert!(start.elapsed() < BOOT, "VM never appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    let key = cluster_key(&c, &node);
    let out = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            ca,
            "-D",
            "-",
            &format!("{md}/metadata/v1/{key}?wait=50&after=0"),
        ])
        .output()
        .expect("curl");
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let plan = shoal_protocol::Plan::from_json(body.as_bytes()).expect("a valid plan");
    assert_eq!(plan.cluster, "lp");
    assert!(plan.generation >= 1);
    // Held: a poll for a newer generation waits for its whole `wait`, then 204.
    let (code, secs) = curl(&[&format!(
        "{md}/metadata/v1/{key}?wait=1&after={}",
        plan.generation
    )]);
    assert_eq!(code, "204");
    let secs: f64 = secs.parse().expect("time");
    assert!(secs >= 0.9, "the long-poll was not held ({secs}s)");
    // Status writes need the node's own token.
    let put = |token: &str| {
        curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"phase":"ready","generation":1}"#,
            &format!("{md}/metadata/v1/{key}/nodes/node-0/status"),
        ])
        .0
    };
    assert_eq!(put(&"f".repeat(64)), "401");
    c.wait_state("lp", "AVAILABLE", BOOT);
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn demo_cluster_runs_across_three_vms() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    let out = c.shoal(&[
        "cluster",
        "create",
        "demo",
        "--nodes",
        "3",
        "--blueprint",
        "demo",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log_text()
    );
    let v = c.show("demo");
    let ns = nodes(&v);
    let ips: Vec<String> = ns
        .iter()
        .map(|n| n["private_ip"].as_str().expect("ip").to_string())
        .collect();

    // Every container runs at its planned address.
    let mut agents = Vec::new();
    for n in &ns {
        for k in n["containers"].as_array().expect("containers") {
            assert_eq!(k["state"], "running", "{k:#}");
            let name = k["hostname"]
                .as_str()
                .expect("fqdn")
                .split('.')
                .next()
                .expect("label");
            let inspect = c.docker(
                n,
                &[
                    "inspect",
                    "-f",
                    "{{.NetworkSettings.Networks.shoal.IPAddress}}",
                    name,
                ],
            );
            assert_eq!(
                stdout(&inspect).trim(),
                k["address"].as_str().expect("address")
            );
            if k["name"] == "agent" {
                agents.push((
                    k["hostname"].as_str().unwrap_or_default().to_string(),
                    k["address"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        // The overlay: one replication entry per peer, nothing else.
        let mut peers: Vec<String> = ips
            .iter()
            .filter(|ip| **ip != n["private_ip"])
            .cloned()
            .collect();
        peers.sort();
        assert_eq!(fdb_peers(n), peers, "FDB of {}", n["id"]);
    }
    assert_eq!(agents.len(), 3);

    // Every agent registered with the server (on node-0) under its own overlay address:
    // container traffic crosses VMs by FQDN, without NAT.
    let n0 = &ns[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    let registered = loop {
        let out = c.docker(
            n0,
            &[
                "exec",
                "server-node-0",
                "wget",
                "-qO-",
                "http://localhost:8080/cgi-bin/agents",
            ],
        );
        let text = stdout(&out);
        if agents.iter().all(|(fqdn, _)| text.contains(fqdn.as_str())) || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (fqdn, addr) in &agents {
        assert!(
            registered.lines().any(|l| l == format!("{fqdn} {addr}")),
            "{fqdn} not registered from {addr}: {registered}"
        );
    }

    // node-0 reaches node-2 by FQDN.
    let out = c.docker(
        n0,
        &[
            "exec",
            "agent-node-0",
            "ping",
            "-c1",
            "-W2",
            "agent-node-2.demo.shoal.internal",
        ],
    );
    assert!(out.status.success(), "{}", stdout(&out));
    // A container reaches the coordinator (egress through Docker's masquerade): the
    // metadata listener answers. busybox's wget offers no cipher suite rustls accepts,
    // so the answer is the listener's TLS alert (a 404 if a future busybox gets there).
    let out = c.docker(
        &ns[2],
        &[
            "exec",
            "agent-node-2",
            "sh",
            "-c",
            &format!(
                "timeout 5 wget --no-check-certificate -qO- https://{}:8787/metadata/v1/x 2>&1",
                c.gateway
            ),
        ],
    );
    let answer = stdout(&out);
    assert!(
        answer.contains("404") || answer.contains("TLS error from peer"),
        "{answer}"
    );

    // A second agent run with no plan change changes nothing.
    let before: Vec<(String, Vec<String>)> = ns
        .iter()
        .map(|n| (container_ids(&c, n), fdb_peers(n)))
        .collect();
    let n1 = &ns[1];
    let cfg = PathBuf::from(n1["agent_log"].as_str().expect("log")).with_file_name("agent.json");
    let out = in_ns(n1, bin("shoal-agent").to_str().expect("path"))
        .args(["run", "--once", "--config"])
        .arg(&cfg)
        .arg("--docker-host")
        .arg(format!(
            "unix://{}",
            n1["docker_socket"].as_str().expect("sock")
        ))
        .arg("--image-dir")
        .arg(image_dir())
        .arg("--state-dir")
        .arg(cfg.with_file_name("agent-state"))
        .output()
        .expect("agent --once");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<(String, Vec<String>)> = ns
        .iter()
        .map(|n| (container_ids(&c, n), fdb_peers(n)))
        .collect();
    assert_eq!(
        before, after,
        "a rerun with the same plan changed something"
    );

    // Delete removes every container, network, VXLAN device and namespace.
    c.shoal_ok(&["cluster", "delete", "demo", "--wait"]);
    let left = c.leftovers(true);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// The command line of a running process, to start it again identically.
fn cmdline(pid: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn respawn(args: &[String], log: &std::path::Path) {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .expect("log");
    let f2 = f.try_clone().expect("log");
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdout(f)
        .stderr(f2)
        .spawn()
        .expect("respawn");
    // Reap it whenever it ends (it outlives the test's checks).
    std::thread::spawn(move || child.wait());
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn agent_and_dockerd_restarts_converge_back() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start();
    c.shoal_ok(&["cluster", "create", "heal", "--nodes", "2"]);
    // Kill node-1's agent mid-setup (as soon as it has a plan), then start it again.
    let start = Instant::now();
    let n1 = loop {
        let v = c.show("heal");
        let n = nodes(&v).remove(1);
        if matches!(
            n["phase"].as_str(),
            Some("plan-received" | "network" | "images" | "containers" | "probing")
        ) {
            break n;
        }
        assert!(start.elapsed() < BOOT, "node-1 never started: {v:#}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let dir = PathBuf::from(n1["agent_log"].as_str().expect("log"))
        .parent()
        .expect("dir")
        .to_path_buf();
    let pid = std::fs::read_to_string(dir.join("agent.pid"))
        .expect("pid")
        .trim()
        .to_string();
    let args = cmdline(&pid);
    assert!(args.iter().any(|a| a.ends_with("shoal-agent")), "{args:?}");
    run_kill("KILL", &pid);
    // nsenter exec'd the agent: start it again inside the VM's namespace.
    let mut again = vec![
        "nsenter".to_string(),
        format!("--net=/run/netns/{}", n1["netns"].as_str().expect("ns")),
        "--".to_string(),
    ];
    again.extend(args);
    respawn(&again, &dir.join("agent.log"));
    let v = c.wait_state("heal", "AVAILABLE", BOOT);
    let n1 = nodes(&v).remove(1);
    let n0 = nodes(&v).remove(0);
    let ids_before = container_ids(&c, &n1);

    // Restart node-1's dockerd: containers and overlay come back, the agent notices.
    let dpid = std::fs::read_to_string(dir.join("dockerd.pid"))
        .expect("dockerd pid")
        .trim()
        .to_string();
    let dargs = cmdline(&dpid);
    assert!(dargs.iter().any(|a| a == "dockerd"), "{dargs:?}");
    let log_before = std::fs::read_to_string(dir.join("agent.log"))
        .expect("agent log")
        .len();
    run_kill("TERM", &dpid);
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{dpid}")).exists()
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut nsenter = vec![
        "nsenter".to_string(),
        format!("--net=/run/netns/{}", n1["netns"].as_str().expect("ns")),
        "--".to_string(),
    ];
    nsenter.extend(dargs);
    respawn(&nsenter, &dir.join("dockerd.log"));
    let t = Instant::now();
    loop {
        let ping = c.docker(
            &n0,
            &[
                "exec",
                "agent-node-0",
                "ping",
                "-c1",
                "-W1",
                "agent-node-1.heal.shoal.internal",
            ],
        );
        let running = stdout(&c.docker(&n1, &["ps", "-q", "--no-trunc"]));
        if ping.status.success() && running == ids_before && fdb_peers(&n1).len() == 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "node-1 did not come back after a dockerd restart: running {running:?} (before {ids_before:?}), fdb {:?}",
            fdb_peers(&n1)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The agent noticed the restart and converged again (it may still be at it).
    let t = Instant::now();
    while c.show("heal")["nodes"][1]["phase"] != "ready" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "node-1 did not report ready again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("agent.log")).expect("agent log");
    assert!(
        log[log_before..].contains("converging again"),
        "the agent did not notice the restart"
    );
}

fn run_kill(signal: &str, pid: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// A one-shot metadata server that serves `plan` and records status reports.
fn fake_metadata(plan: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let resp = if line.starts_with("GET") {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nshoal-generation: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{plan}",
                    plan.len()
                )
            } else {
                if let Ok(mut v) = r.lock() {
                    v.push(String::from_utf8_lossy(&body).into_owned());
                }
                "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_string()
            };
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (format!("http://10.99.{}.1:{port}", port % 200), reports)
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn an_invalid_plan_changes_nothing_and_is_reported() {
    require_privileges(TOOLS);
    // A VM namespace joined to this host by a veth, with its own dockerd.
    let ns = TestNetns::new("inv");
    let (plan_url_guess, reports) = {
        // Two nodes whose slices overlap: the agent must refuse before touching anything.
        let plan = serde_json::json!({
            "schema": 1, "cluster": "bad", "generation": 1, "domain": "shoal.internal",
            "network": {"overlay": "10.240.0.0/16", "vni": 9},
            "nodes": [
                {"id": "node-0", "index": 0, "private_ip": "10.98.0.2", "slice": "10.240.0.0/22", "gateway": "10.240.0.1",
                 "containers": [{"name": "agent", "hostname": "agent-node-0.bad.shoal.internal", "image": "shoal/demo:1", "address": "10.240.0.2"}]},
                {"id": "node-1", "index": 1, "private_ip": "10.98.0.3", "slice": "10.240.1.0/24", "gateway": "10.240.1.1"}
            ]
        });
        fake_metadata(plan.to_string())
    };
    let port = plan_url_guess.rsplit(':').next().expect("port").to_string();
    let host_if = shoal_e2e::unique_name("vi");
    shoal_e2e::run(Command::new("ip").args([
        "link",
        "add",
        &host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]));
    shoal_e2e::run(Command::new("ip").args(["addr", "add", "10.98.0.1/24", "dev", &host_if]));
    shoal_e2e::run(Command::new("ip").args(["link", "set", &host_if, "up"]));
    ns.ip(&["addr", "add", "10.98.0.2/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let dockerd = shoal_e2e::dockerd::TestDockerd::start(&ns);

    let dir = std::env::temp_dir().join(shoal_e2e::unique_name("inv"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("agent.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "metadata_url": format!("http://10.98.0.1:{port}"),
            "cluster_key": "a".repeat(64),
            "node_id": "node-0",
            "node_token": "b".repeat(64),
            "deadline_secs": 30
        })
        .to_string(),
    )
    .expect("config");
    let links_before = ns.ip(&["-o", "link"]);
    let out = ns
        .command(bin("shoal-agent").to_str().expect("path"))
        .args(["run", "--once", "--config"])
        .arg(&cfg)
        .arg("--docker-host")
        .arg(dockerd.host())
        .arg("--image-dir")
        .arg(image_dir())
        .output()
        .expect("agent");
    let links_after = ns.ip(&["-o", "link"]);
    let _ = Command::new("ip").args(["link", "del", &host_if]).status();
    assert_eq!(
        out.status.code(),
        Some(5),
        "exit code: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(links_after, links_before, "the VM's links changed");
    assert!(!dockerd
        .docker(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .any(|l| l == "shoal"));
    assert!(dockerd.docker(&["ps", "-aq"]).trim().is_empty());
    let reports = reports.lock().expect("reports").clone();
    let failed = reports
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r).ok())
        .find(|r| r["phase"] == "failed")
        .expect("a failed report");
    assert_eq!(failed["error"]["reason"], "plan-invalid");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("overlaps"),
        "{failed:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root, dockerd, iproute2, cloud-init"]
fn cli_refuses_bad_input_clearly_and_records_nothing() {
    require_privileges(&["ip", "nsenter", "dockerd", "cloud-init"]);
    let c = TestCoordinator::start();
    // Exit codes from docs/cli-exit-codes.md: 4 refused by the coordinator, 2 a bad
    // argument.
    let cases: &[(&[&str], &str, i32)] = &[
        (
            &["cluster", "create", "Bad_Name", "--nodes", "1"],
            "cluster name",
            4,
        ),
        (
            &["cluster", "create", "x", "--provider", "gcp"],
            "unknown provider",
            4,
        ),
        (
            &["cluster", "create", "x", "--blueprint", "/nonexistent.toml"],
            "neither a built-in blueprint",
            2,
        ),
        (&["cluster", "show", "nope"], "no cluster named \"nope\"", 4),
        (&["user-data", "nope"], "no cluster named \"nope\"", 4),
    ];
    for (args, expect, code) in cases {
        let out = c.shoal(args);
        assert_eq!(out.status.code(), Some(*code), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // Usage errors are clap's, exit 2.
    let out = c.shoal(&["cluster", "create", "x", "--nodes", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let list: Value =
        serde_json::from_str(&c.shoal_ok(&["cluster", "list", "--json"])).expect("json");
    assert_eq!(
        list,
        Value::Array(vec![]),
        "a refused request recorded a cluster"
    );

    // user-data of a real cluster passes `cloud-init schema`; an unknown node is refused.
    c.shoal_ok(&["cluster", "create", "ud", "--nodes", "2"]);
    let out = c.shoal(&["user-data", "ud", "--node", "node-9"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("its nodes are node-0, node-1"));
    let doc = c.shoal_ok(&["user-data", "ud", "--node", "node-1"]);
    let file = c.state_dir.join("ud-node-1.yaml");
    std::fs::write(&file, &doc).expect("write");
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .expect("cloud-init");
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_state("ud", "AVAILABLE", BOOT);
}

//! Secrets never reach a log: a full local cluster (create, status, refused requests,
//! user-data, delete) with the coordinator and the agents logging at debug level, then
//! every log is searched for the cluster key, each node token, the operator token and
//! the CA private key. Privileged: run through `scripts/test` as root.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::coordinator::TestCoordinator;
use shoal_e2e::require_privileges;

const TOOLS: &[&str] = &["ip", "nsenter", "dockerd", "docker", "curl"];

/// The base64 lines of a PEM private key's body.
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs root, dockerd, iproute2"]
fn no_secret_appears_in_any_log_of_a_full_run() {
    require_privileges(TOOLS);
    let c = TestCoordinator::start_with_env(
        &[],
        &[("RUST_LOG", "debug"), ("SHOAL_AGENT_LOG", "debug")],
    );
    c.shoal_ok(&["cluster", "create", "hush", "--nodes", "2", "--wait"]);
    let v = c.show("hush");
    assert_eq!(v["state"], "AVAILABLE");
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 2);

    // The secrets, from where they legitimately live.
    let mut secrets: Vec<(String, String)> = vec![("operator token".into(), c.token())];
    let mut logs: Vec<(String, std::fs::File)> = Vec::new();
    let mut key = String::new();
    let mut tokens = Vec::new();
    for n in &nodes {
        let dir = PathBuf::from(n["agent_log"].as_str().expect("agent_log"))
            .parent()
            .expect("vm dir")
            .to_path_buf();
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(dir.join("agent.json")).expect("agent.json"))
                .expect("json");
        key = cfg["cluster_key"].as_str().expect("key").to_string();
        let token = cfg["node_token"].as_str().expect("token").to_string();
        secrets.push((format!("{} token", n["id"]), token.clone()));
        tokens.push(token);
        // Opened now: deletion removes the VM directory, and an open file stays readable.
        for f in ["agent.log", "dockerd.log"] {
            logs.push((
                format!("{} {f}", n["id"]),
                std::fs::File::open(dir.join(f)).expect("log"),
            ));
        }
    }
    secrets.push(("cluster key".into(), key.clone()));
    let ca_key = std::fs::read_to_string(c.state_dir.join("ca-key.pem")).expect("ca-key.pem");
    for (i, line) in pem_body_lines(&ca_key).into_iter().enumerate() {
        secrets.push((format!("CA private key line {i}"), line));
    }
    assert!(secrets.len() >= 6, "{}", secrets.len());

    // Requests that are refused: their handling must not log what they carried.
    let md = format!("https://{}:8787", c.gateway);
    let ca = c.state_dir.join("ca.pem");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .arg("-s")
            .arg("--cacert")
            .arg(&ca)
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = r#"{"phase":"ready","generation":1}"#;
    // node-1's token on node-0's status: 401.
    let wrong = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {}", tokens[1]),
        "-H",
        "Content-Type: application/json",
        "-d",
        status,
        &format!("{md}/metadata/v1/{key}/nodes/node-0/status"),
    ]);
    assert_eq!(wrong, "401");
    // Malformed status with the right token: 400.
    let bad = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {}", tokens[0]),
        "-H",
        "Content-Type: application/json",
        "-d",
        "{nope",
        &format!("{md}/metadata/v1/{key}/nodes/node-0/status"),
    ]);
    assert_eq!(bad, "400");
    // The key with a suffix: 404.
    assert_eq!(curl(&[&format!("{md}/metadata/v1/{key}x")]), "404");
    // The operator API with a token that is almost right: 401.
    let almost = format!("{}0", c.token());
    assert_eq!(
        curl(&[
            "-H",
            &format!("Authorization: Bearer {almost}"),
            &format!("{}/v1/clusters", c.api_url()),
        ]),
        "401"
    );
    // user-data holds the key and a token (it is the VM's own document): fine on
    // stdout, never in the server's log.
    let ud = c.shoal_ok(&["user-data", "hush", "--node", "node-1"]);
    assert!(ud.contains(&key));

    c.shoal_ok(&["cluster", "delete", "hush", "--wait"]);
    // Let the last lines land.
    std::thread::sleep(Duration::from_millis(300));

    let mut texts = vec![("coordinator log".to_string(), c.log_text())];
    for (name, mut f) in logs {
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_to_string(&mut s).expect("read log");
        texts.push((name, s));
    }
    // The logs are real debug logs, so the search means something.
    assert!(
        texts[0].1.contains("DEBUG"),
        "coordinator log has no debug lines"
    );
    assert!(
        texts[1].1.contains("DEBUG") && texts[1].1.contains("node converged"),
        "agent log has no debug lines: {}",
        texts[1].1
    );
    // Whole secrets, and their first and last 16 characters (a truncated or split
    // secret is still a leak; 16 hex digits do not occur by chance).
    let mut found = Vec::new();
    for (name, text) in &texts {
        for (what, secret) in &secrets {
            let n = secret.len();
            let pieces = [
                &secret[..],
                &secret[..16.min(n)],
                &secret[n.saturating_sub(16)..],
            ];
            if pieces.iter().any(|p| text.contains(p)) {
                found.push(format!("{what} in {name}"));
            }
        }
    }
    assert!(found.is_empty(), "secrets in logs: {found:#?}");
    let total: usize = texts.iter().map(|(_, t)| t.len()).sum();
    eprintln!(
        "searched {} logs ({total} bytes) for {} secrets: none found",
        texts.len(),
        secrets.len()
    );
}

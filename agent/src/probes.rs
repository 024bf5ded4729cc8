//! Readiness probes: what must answer before the node's containers count as ready.
//!
//! Each container with a probe ([`ProbePlan`]) is probed on its own, all at once, from
//! the moment its containers phase ends: every `interval_ms` a try (bounded by
//! `timeout_ms`) of
//!
//! - `tcp`: a connection to the container's address (overlay) or to 127.0.0.1 (host
//!   network) on the port;
//! - `http`: a GET of the URL, where the host `localhost` (or 127.0.0.1) means the
//!   container itself and a container FQDN (or short name) of the plan that container,
//!   both reached at their planned address; 2xx, and every `json` condition and the
//!   `body` text must hold;
//! - `exec`: the command, run inside the container through the Docker API, must exit 0.
//!
//! Before each try the container is inspected: one that stopped or restarted fails the
//! node at once with `container-failed`, its exit code and its log. A probe that has not
//! passed by `deadline_ms` fails the node with `probe-failed` and what its last try
//! said.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::Docker;
use futures_util::StreamExt;
use shoal_protocol::{reason, ContainerPlan, NetworkMode, Plan, ProbeKind, ProbePlan};

use crate::containers::{self, ContainerError};
use crate::docker::message as engine_message;

/// Most bytes of an answer (HTTP body, command output) read per try.
const MAX_ANSWER: usize = 1 << 20;
/// Most bytes of a try's outcome quoted in an error (status messages are capped at
/// 4 KiB, and the message also names the container and the probe).
const MAX_QUOTE: usize = 1500;
/// Most characters of a probe's description quoted in an error.
const MAX_PROBE_TEXT: usize = 300;

/// What [`wait_ready`] saw, container by container (Docker names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Containers whose probe passed: name, tries, time from the first try.
    pub passed: Vec<(String, u32, Duration)>,
}

/// Why the node's containers are not ready.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe did not pass within its deadline.
    #[error("container {container}: readiness probe {probe} did not pass within {:.1} s ({tries} tries); last try: {last}", deadline.as_secs_f64())]
    Failed {
        /// The Docker container name.
        container: String,
        /// The probe, as written in the plan (shortened).
        probe: String,
        /// Its deadline.
        deadline: Duration,
        /// Tries made.
        tries: u32,
        /// What the last try said (shortened).
        last: String,
    },
    /// Once the node was ready, the probe failed as many tries in a row as its
    /// failure threshold ([`crate::liveness`]).
    #[error("container {container}: readiness probe {probe} failed {tries} tries in a row after the node was ready; last try: {last}")]
    Failing {
        /// The Docker container name.
        container: String,
        /// The probe, as written in the plan (shortened).
        probe: String,
        /// Failed tries in a row.
        tries: u32,
        /// What the last try said (shortened).
        last: String,
    },
    /// The container exited, restarted or vanished while it was probed.
    #[error(transparent)]
    Container(#[from] ContainerError),
}

impl ProbeError {
    /// The stable reason code reported to the coordinator.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Failed { .. } | ProbeError::Failing { .. } => reason::PROBE_FAILED,
            ProbeError::Container(e) => e.reason(),
        }
    }
}

/// Whether node `node_id` has any container with a probe.
pub fn has_probes(plan: &Plan, node_id: &str) -> bool {
    plan.node(node_id)
        .is_some_and(|n| n.containers.iter().any(|c| c.ready.is_some()))
}

/// Tries every probe of node `node_id`'s containers until each has passed; the first
/// failure (a probe past its deadline, a container that stopped) ends the wait.
pub async fn wait_ready(
    docker: &Docker,
    plan: &Plan,
    node_id: &str,
) -> Result<ProbeReport, ProbeError> {
    let Some(node) = plan.node(node_id) else {
        return Ok(ProbeReport::default());
    };
    let http = http_client();
    let probed = node
        .containers
        .iter()
        .filter_map(|c| c.ready.as_ref().map(|p| (c, p)))
        .map(|(c, p)| probe_until_ready(docker, &http, plan, node.private_ip, c, p));
    let passed = futures_util::future::try_join_all(probed).await?;
    Ok(ProbeReport { passed })
}

/// One try of probe `p` of container `c` (of node `node_ip`), bounded by the probe's
/// timeout: `Ok` when it passed, else what it saw. The try a ready node's liveness
/// makes ([`crate::liveness`]).
pub(crate) async fn try_bounded(
    docker: &Docker,
    http: &reqwest::Client,
    plan: &Plan,
    node_ip: Ipv4Addr,
    c: &ContainerPlan,
    p: &ProbePlan,
) -> Result<(), String> {
    let timeout = Duration::from_millis(p.timeout_ms);
    let target = container_ip(c, node_ip);
    match tokio::time::timeout(timeout, try_once(docker, http, plan, target, c, p)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// The error a ready node reports when probe `p` of `container` failed `tries` in a
/// row, the last saying `last`; shortened like [`ProbeError::Failed`].
pub(crate) fn failing(container: &str, p: &ProbePlan, tries: u32, last: &str) -> ProbeError {
    ProbeError::Failing {
        container: container.to_string(),
        probe: shorten(&p.to_string(), MAX_PROBE_TEXT),
        tries,
        last: shorten(last, MAX_QUOTE),
    }
}

pub(crate) fn http_client() -> reqwest::Client {
    // The agent's binary installs its crypto provider at start; a library user (a test)
    // may not have, and the client is built with TLS support even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

async fn probe_until_ready(
    docker: &Docker,
    http: &reqwest::Client,
    plan: &Plan,
    node_ip: Ipv4Addr,
    c: &ContainerPlan,
    p: &ProbePlan,
) -> Result<(String, u32, Duration), ProbeError> {
    let name = c.docker_name().to_string();
    let start = Instant::now();
    let deadline = Duration::from_millis(p.deadline_ms);
    let interval = Duration::from_millis(p.interval_ms);
    let timeout = Duration::from_millis(p.timeout_ms);
    let target = container_ip(c, node_ip);
    let mut baseline = None;
    let mut tries = 0u32;
    // What the last try that ran its course said: a try the deadline cuts short says
    // only that it was cut, and the operator needs the probe's own answer.
    let mut answered: Option<String> = None;
    loop {
        let begun = Instant::now();
        containers::check_up(docker, &name, &mut baseline).await?;
        tries += 1;
        let budget = timeout.min(
            deadline
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(1)),
        );
        let outcome =
            match tokio::time::timeout(budget, try_once(docker, http, plan, target, c, p)).await {
                Ok(r) => {
                    if let Err(e) = &r {
                        answered = Some(e.clone());
                    }
                    r
                }
                Err(_) if budget < timeout => Err(answered
                    .clone()
                    .unwrap_or_else(|| format!("no answer within {} ms", budget.as_millis()))),
                Err(_) => {
                    let e = format!("no answer within {} ms", budget.as_millis());
                    answered = Some(e.clone());
                    Err(e)
                }
            };
        match outcome {
            Ok(()) => {
                let took = start.elapsed();
                tracing::info!(container = %name, probe = %p, tries, took_ms = took.as_millis() as u64, "readiness probe passed");
                return Ok((name, tries, took));
            }
            Err(last) => {
                let next = begun + interval;
                if next.saturating_duration_since(start) >= deadline {
                    // The probe may have kept the container from exiting being seen.
                    containers::check_up(docker, &name, &mut baseline).await?;
                    tracing::warn!(container = %name, probe = %p, tries, %last, "readiness probe failed");
                    return Err(ProbeError::Failed {
                        container: name,
                        probe: shorten(&p.to_string(), MAX_PROBE_TEXT),
                        deadline,
                        tries,
                        last: shorten(&last, MAX_QUOTE),
                    });
                }
                tracing::debug!(container = %name, tries, %last, "readiness probe not passing yet");
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }
}

/// Where container `c` is reached from its node: its overlay address, or the node's
/// loopback for a host-network container.
fn container_ip(c: &ContainerPlan, node_ip: Ipv4Addr) -> Ipv4Addr {
    match (c.network, c.address) {
        (NetworkMode::Overlay, Some(ip)) => ip,
        (NetworkMode::Overlay, None) => node_ip,
        (NetworkMode::Host, _) => Ipv4Addr::LOCALHOST,
    }
}

/// One try: `Ok` when it passed, else what it saw.
async fn try_once(
    docker: &Docker,
    http: &reqwest::Client,
    plan: &Plan,
    target: Ipv4Addr,
    c: &ContainerPlan,
    p: &ProbePlan,
) -> Result<(), String> {
    match p.kind() {
        Some(ProbeKind::Tcp(port)) => tcp(SocketAddr::new(IpAddr::V4(target), port)).await,
        Some(ProbeKind::Http(url)) => {
            let url = http_target(url, plan, target, c)?;
            http_get(http, url, &p.json, p.body.as_deref()).await
        }
        Some(ProbeKind::Exec(cmd)) => exec(docker, c.docker_name(), cmd).await,
        None => Err("the probe names no kind (tcp, http or exec)".to_string()),
    }
}

async fn tcp(addr: SocketAddr) -> Result<(), String> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|e| format!("connecting to {addr}: {e}"))
}

/// The URL to request and the `Host` header to send: the URL's host mapped to the
/// planned address of the container it names.
fn http_target(
    url: &str,
    plan: &Plan,
    target: Ipv4Addr,
    c: &ContainerPlan,
) -> Result<(reqwest::Url, Option<String>), String> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let mapped = if host == "localhost" || host == "127.0.0.1" || host == c.hostname {
        Some(target)
    } else {
        plan.host_entries()
            .into_iter()
            .find(|(fqdn, _)| *fqdn == host || fqdn.split('.').next() == Some(host.as_str()))
            .map(|(_, ip)| ip)
    };
    let Some(ip) = mapped else {
        return Ok((parsed, None));
    };
    let host_header = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    parsed
        .set_host(Some(&ip.to_string()))
        .map_err(|e| format!("{url:?}: {e}"))?;
    Ok((parsed, Some(host_header)))
}

async fn http_get(
    http: &reqwest::Client,
    (url, host): (reqwest::Url, Option<String>),
    json: &BTreeMap<String, String>,
    body_text: Option<&str>,
) -> Result<(), String> {
    let mut req = http.get(url.clone());
    if let Some(h) = host {
        req = req.header(reqwest::header::HOST, h);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: reading the answer: {}", error_chain(&e)))?
    {
        let room = MAX_ANSWER.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(format!(
            "GET {url}: {status}: {}",
            shorten(text.trim(), 500)
        ));
    }
    if let Some(want) = body_text {
        if !text.contains(want) {
            return Err(format!(
                "GET {url}: the answer does not contain {want:?}: {}",
                shorten(text.trim(), 500)
            ));
        }
    }
    if json.is_empty() {
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "GET {url}: the answer is not JSON ({e}): {}",
            shorten(text.trim(), 300)
        )
    })?;
    let mismatches = json_mismatches(&value, json);
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(format!("GET {url}: {}", mismatches.join("; ")))
    }
}

/// The conditions of `json` that `value` breaks, described.
pub fn json_mismatches(value: &serde_json::Value, json: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (pointer, want) in json {
        match value.pointer(pointer) {
            None => out.push(format!("{pointer} is absent, expected {want}")),
            Some(got) => {
                let got = match got {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if got != *want {
                    out.push(format!(
                        "{pointer} is {}, expected {want}",
                        shorten(&got, 100)
                    ));
                }
            }
        }
    }
    out
}

/// Runs `cmd` in container `name`; passes when it exits 0.
async fn exec(docker: &Docker, name: &str, cmd: &[String]) -> Result<(), String> {
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(cmd.to_vec()),
        ..Default::default()
    };
    let created = docker
        .create_exec(name, config)
        .await
        .map_err(|e| format!("docker exec {}: {}", cmd.join(" "), engine_message(&e)))?;
    let mut output = String::new();
    match docker
        .start_exec(&created.id, None::<StartExecOptions>)
        .await
        .map_err(|e| format!("docker exec {}: {}", cmd.join(" "), engine_message(&e)))?
    {
        StartExecResults::Attached {
            output: mut stream, ..
        } => {
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                if output.len() < MAX_ANSWER {
                    output.push_str(&chunk.to_string());
                }
            }
        }
        StartExecResults::Detached => {}
    }
    let inspected = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| format!("docker exec {}: {}", cmd.join(" "), engine_message(&e)))?;
    match inspected.exit_code {
        Some(0) => Ok(()),
        code => Err(format!(
            "`{}` exited with {}: {}",
            cmd.join(" "),
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "no exit code".into()),
            match output.trim() {
                "" => "(no output)",
                text => text,
            }
        )),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// At most `max` bytes of `text` (its end cut, at a character boundary, marked `…`).
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_protocol::{NetworkPlan, NodePlan, SCHEMA_VERSION};

    use super::*;

    fn plan() -> Plan {
        let c = |name: &str, node: &str, ip: &str| ContainerPlan {
            name: name.into(),
            hostname: format!("{name}-{node}.h.shoal.internal"),
            image: "shoal/hadoop:1".into(),
            network: NetworkMode::Overlay,
            address: Some(ip.parse().expect("ip")),
            command: vec![],
            env: BTreeMap::new(),
            volumes: vec![],
            ports: vec![],
            registry_auth: None,
            ready: None,
            data_disks: None,
        };
        Plan {
            schema: SCHEMA_VERSION,
            cluster: "h".into(),
            generation: 1,
            domain: "shoal.internal".into(),
            network: NetworkPlan {
                overlay: "10.240.0.0/16".parse().expect("cidr"),
                vni: 1,
                port: 4789,
                mtu: None,
            },
            nodes: vec![
                NodePlan {
                    id: "node-0".into(),
                    index: 0,
                    private_ip: "10.213.0.10".parse().expect("ip"),
                    instance_id: None,
                    slice: "10.240.1.0/24".parse().expect("cidr"),
                    gateway: "10.240.1.1".parse().expect("ip"),
                    containers: vec![c("namenode", "node-0", "10.240.1.2")],
                    leaving: false,
                    drain: None,
                    peer_drains: vec![],
                    recipes: vec![],
                    disks: vec![],
                },
                NodePlan {
                    id: "node-1".into(),
                    index: 1,
                    private_ip: "10.213.0.11".parse().expect("ip"),
                    instance_id: None,
                    slice: "10.240.2.0/24".parse().expect("cidr"),
                    gateway: "10.240.2.1".parse().expect("ip"),
                    containers: vec![c("datanode", "node-1", "10.240.2.2")],
                    leaving: false,
                    drain: None,
                    peer_drains: vec![],
                    recipes: vec![],
                    disks: vec![],
                },
            ],
            liveness: None,
        }
    }

    #[test]
    fn http_hosts_map_to_planned_addresses() {
        let p = plan();
        let nn = &p.nodes[0].containers[0];
        let target = container_ip(nn, p.nodes[0].private_ip);
        assert_eq!(target, Ipv4Addr::new(10, 240, 1, 2));
        let (url, host) =
            http_target("http://localhost:50070/jmx?qry=a:b=c", &p, target, nn).expect("url");
        assert_eq!(url.as_str(), "http://10.240.1.2:50070/jmx?qry=a:b=c");
        assert_eq!(host.as_deref(), Some("localhost:50070"));
        let (url, host) = http_target(
            "http://datanode-node-1.h.shoal.internal:50075/",
            &p,
            target,
            nn,
        )
        .expect("url");
        assert_eq!(url.as_str(), "http://10.240.2.2:50075/");
        assert_eq!(
            host.as_deref(),
            Some("datanode-node-1.h.shoal.internal:50075")
        );
        let (url, _) = http_target("http://datanode-node-1/x", &p, target, nn).expect("url");
        assert_eq!(url.as_str(), "http://10.240.2.2/x");
        // Any other host is left to the resolver.
        let (url, host) = http_target("http://example.com/", &p, target, nn).expect("url");
        assert_eq!((url.as_str(), host), ("http://example.com/", None));
    }

    #[test]
    fn host_network_containers_are_probed_on_loopback() {
        let mut p = plan();
        p.nodes[0].containers[0].network = NetworkMode::Host;
        p.nodes[0].containers[0].address = None;
        assert_eq!(
            container_ip(&p.nodes[0].containers[0], p.nodes[0].private_ip),
            Ipv4Addr::LOCALHOST
        );
    }

    #[test]
    fn json_conditions_compare_strings_numbers_and_booleans() {
        let v: serde_json::Value = serde_json::json!({
            "beans": [{"FSState": "Operational", "NumLiveDataNodes": 2, "Up": true}]
        });
        let mut want = BTreeMap::new();
        want.insert("/beans/0/FSState".to_string(), "Operational".to_string());
        want.insert("/beans/0/NumLiveDataNodes".to_string(), "2".to_string());
        want.insert("/beans/0/Up".to_string(), "true".to_string());
        assert!(json_mismatches(&v, &want).is_empty());
        want.insert("/beans/0/NumLiveDataNodes".to_string(), "3".to_string());
        want.insert("/beans/1/X".to_string(), "1".to_string());
        assert_eq!(
            json_mismatches(&v, &want),
            [
                "/beans/0/NumLiveDataNodes is 2, expected 3",
                "/beans/1/X is absent, expected 1"
            ]
        );
    }

    #[test]
    fn failures_are_short_enough_for_a_status_report() {
        let e = ProbeError::Failed {
            container: "c".repeat(63),
            probe: shorten(&"x".repeat(5000), MAX_PROBE_TEXT),
            deadline: Duration::from_secs(300),
            tries: 600,
            last: shorten(&"é".repeat(5000), MAX_QUOTE),
        };
        let text = e.to_string();
        assert!(text.len() < 4096, "{}", text.len());
        assert_eq!(e.reason(), reason::PROBE_FAILED);
        let probe = ProbePlan {
            tcp: None,
            http: Some(format!("http://localhost:8080/{}", "x".repeat(5000))),
            exec: None,
            json: BTreeMap::new(),
            body: None,
            interval_ms: 50,
            timeout_ms: 10_000,
            deadline_ms: 300_000,
            live_interval_ms: None,
            failure_threshold: None,
        };
        let e = failing(&"c".repeat(63), &probe, 3, &"é".repeat(5000));
        let text = e.to_string();
        assert!(text.len() < 4096, "{}", text.len());
        assert!(
            text.contains("failed 3 tries in a row after the node was ready; last try: éé"),
            "{text}"
        );
        assert_eq!(e.reason(), reason::PROBE_FAILED);
    }
}

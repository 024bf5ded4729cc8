//! Running the node's planned containers through the Docker API, and nothing else.
//!
//! Every container Shoal makes carries four labels: [`LABEL_CLUSTER`], [`LABEL_NODE`],
//! [`LABEL_CONTAINER`] and [`LABEL_SPEC`], a hash of everything the container was
//! created from. [`converge`] keeps a container whose labels still match the plan
//! (starting it if it stopped), replaces one whose spec changed, creates missing ones,
//! and removes containers of the cluster the plan no longer lists for this node.
//! Started containers must then stay running for a moment: one that exits at once is
//! reported with its exit code and the end of its log. A container with a readiness
//! probe is only waited for until it runs: its probe (the `probes` module) is the
//! readiness signal, and [`check_up`] catches it exiting meanwhile.
//!
//! What derives from the peers stays out of the spec: every container's `/etc/hosts`
//! is a file of the agent's ([`hosts_file`], in the hosts directory), bind-mounted over
//! the one Docker would write, and rewritten in place when the cluster's containers
//! change. A node joining or leaving changes those files and restarts nothing; Docker
//! never regenerates them (a container restarted by its policy keeps the current
//! list).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointIpamConfig,
    EndpointSettings, HostConfig, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde::Serialize;
use shoal_protocol::{
    reason, ContainerPlan, ContainerStatus, DiskReport, NetworkMode, NodePlan, Plan,
};

use crate::docker::{self, is_not_found, ErrorKind};

/// Label: the cluster a container belongs to.
pub const LABEL_CLUSTER: &str = "io.shoal.cluster";
/// Label: the node (plan id) a container was created for.
pub const LABEL_NODE: &str = "io.shoal.node";
/// Label: the container's name within its node.
pub const LABEL_CONTAINER: &str = "io.shoal.container";
/// Label: hash of the container's planned spec; a different hash means "replace".
pub const LABEL_SPEC: &str = "io.shoal.spec";
/// The Docker network overlay containers are attached to (made by the overlay module).
pub const OVERLAY_NETWORK: &str = "shoal";

/// Bumped when the way a spec becomes a container changes, so agents of a new version
/// replace containers made by older ones. 2: host entries left out of the spec, the
/// hosts file bind-mounted instead.
const SPEC_FORMAT: u32 = 2;
/// Seconds a container is given to stop before it is killed, when it is replaced.
const REPLACE_STOP_SECS: i32 = 10;
/// Seconds a container is given to stop before it is killed, by [`remove_all`].
const REMOVE_ALL_STOP_SECS: i32 = 5;
/// How long a started container may take to be running.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a started container must stay up (without a restart) to count as running:
/// a command that exits at once is caught, even though the restart policy revives it.
const SETTLE: Duration = Duration::from_secs(1);
/// How long a container that restarted during [`SETTLE`] is watched for its next exit.
const RESTART_PROBE: Duration = Duration::from_secs(3);
/// Interval between inspections of a starting container.
const POLL: Duration = Duration::from_millis(100);
/// Log lines quoted when a container fails.
const LOG_TAIL_LINES: &str = "20";
/// Most bytes of log quoted in an error (status messages are capped at 4 KiB).
const LOG_TAIL_BYTES: usize = 1500;

/// What [`converge`] did. Every list holds Docker container names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainersReport {
    /// The node's containers as they are now.
    pub statuses: Vec<ContainerStatus>,
    /// Created because they did not exist.
    pub created: Vec<String>,
    /// Already matching the plan (started if they were stopped).
    pub kept: Vec<String>,
    /// Removed and created again because their spec changed.
    pub replaced: Vec<String>,
    /// Removed because the plan no longer lists them for this node.
    pub removed: Vec<String>,
    /// Containers whose `/etc/hosts` was rewritten (peers came or went).
    pub hosts_updated: Vec<String>,
    /// Kept containers that were stopped and were started again.
    pub started: Vec<String>,
}

impl ContainersReport {
    /// Whether the convergence changed anything on the node.
    pub fn changed(&self) -> bool {
        !(self.created.is_empty()
            && self.replaced.is_empty()
            && self.removed.is_empty()
            && self.hosts_updated.is_empty()
            && self.started.is_empty())
    }
}

/// Why the node's containers could not be converged.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The plan has no such node.
    #[error("node {node} is not in the plan of cluster {cluster}")]
    NodeNotInPlan {
        /// The node id.
        node: String,
        /// The cluster.
        cluster: String,
    },
    /// The engine did not answer.
    #[error("cannot reach the Docker engine while handling {target}: {message}")]
    Unreachable {
        /// The container (or cluster) being handled.
        target: String,
        /// The client's error.
        message: String,
    },
    /// The engine refused an operation.
    #[error("cannot {action} container {container}: {message}")]
    Engine {
        /// What was attempted (`create`, `start`, `remove`, …).
        action: &'static str,
        /// The Docker container name.
        container: String,
        /// The engine's message.
        message: String,
    },
    /// The container stopped (or keeps restarting) right after it was started.
    #[error("container {container} exited with code {exit_code} right after it started (state {state}); last log lines: {logs}")]
    Exited {
        /// The Docker container name.
        container: String,
        /// Its exit code (-1 when the engine did not keep it).
        exit_code: i64,
        /// Docker's state (`exited`, `restarting`, …).
        state: String,
        /// The end of its log.
        logs: String,
    },
    /// A container's hosts file could not be written.
    #[error("cannot write the hosts file {path} of container {container}: {source}")]
    HostsFile {
        /// The Docker container name.
        container: String,
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The container did not reach `running` in time.
    #[error(
        "container {container} is not running {waited:?} after it was started (state {state})"
    )]
    NotRunning {
        /// The Docker container name.
        container: String,
        /// Docker's state.
        state: String,
        /// How long it was waited for.
        waited: Duration,
    },
}

impl ContainerError {
    /// The stable reason code reported to the coordinator.
    pub fn reason(&self) -> &'static str {
        match self {
            ContainerError::NodeNotInPlan { .. } => reason::NODE_NOT_IN_PLAN,
            ContainerError::Unreachable { .. } => reason::DOCKER_UNREACHABLE,
            _ => reason::CONTAINER_FAILED,
        }
    }
}

fn engine_error(action: &'static str, container: &str, e: BollardError) -> ContainerError {
    if ErrorKind::of(&e) == ErrorKind::Unreachable {
        ContainerError::Unreachable {
            target: container.to_string(),
            message: docker::message(&e),
        }
    } else {
        ContainerError::Engine {
            action,
            container: container.to_string(),
            message: docker::message(&e),
        }
    }
}

/// The lines Docker puts at the top of every container's `/etc/hosts`.
const HOSTS_HEADER: &str = "127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
";

/// The `/etc/hosts` of container `c`: Docker's usual header, then every container of
/// the cluster, one line each, `ADDRESS FQDN SHORT`: overlay containers at their
/// overlay address, host-network ones at their node's address.
///
/// `hostname -f` looks the short hostname up and prints the first matching line's
/// first name: each short name is on one line only, after its FQDN, so every container
/// (`c` included) resolves to its FQDN.
pub fn hosts_file(plan: &Plan, c: &ContainerPlan) -> String {
    let _ = c;
    let mut out = String::from(HOSTS_HEADER);
    out.push_str(&format!(
        "# every container of cluster {}, written by shoal-agent from its plan\n",
        plan.cluster
    ));
    for (fqdn, ip) in plan.host_entries() {
        let short = fqdn.split('.').next().unwrap_or(&fqdn);
        if short == fqdn {
            out.push_str(&format!("{ip}\t{fqdn}\n"));
        } else {
            out.push_str(&format!("{ip}\t{fqdn} {short}\n"));
        }
    }
    out
}

/// Where container `c`'s hosts file lives in `hosts_dir`.
pub fn hosts_path(hosts_dir: &Path, c: &ContainerPlan) -> PathBuf {
    hosts_dir.join(c.docker_name())
}

/// Makes `c`'s hosts file hold `content`; returns whether it had to be written. The
/// file is rewritten in place (a bind mount follows the file, not its name, so a
/// rename would leave the container the old one).
fn write_hosts(hosts_dir: &Path, c: &ContainerPlan, content: &str) -> Result<bool, ContainerError> {
    let path = hosts_path(hosts_dir, c);
    if std::fs::read(&path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok(false);
    }
    let fail = |source| ContainerError::HostsFile {
        container: c.docker_name().to_string(),
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(hosts_dir).map_err(fail)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(fail)?;
    f.write_all(content.as_bytes()).map_err(fail)?;
    Ok(true)
}

/// What the spec hash covers: the container's plan (without its registry
/// credentials and its readiness probe, which change nothing of the container itself).
/// Nothing derived from the peers is in it.
#[derive(Serialize)]
struct SpecInput<'a> {
    format: u32,
    container: &'a ContainerPlan,
}

/// The [`LABEL_SPEC`] value of container `c`: FNV-1a (64 bits) over the canonical JSON of
/// its plan. Stable across runs and agent restarts (struct fields serialize in
/// declaration order, the environment is a sorted map). Credentials are left out: a
/// label is readable by anyone who can inspect the container. The rest of the plan
/// (other nodes, their addresses) is left out too, so peers coming and going replace
/// nothing.
pub fn spec_hash(plan: &Plan, c: &ContainerPlan) -> String {
    let _ = plan;
    let mut container = c.clone();
    container.registry_auth = None;
    container.ready = None;
    let input = SpecInput {
        format: SPEC_FORMAT,
        container: &container,
    };
    // Serializing plain structs, strings and maps cannot fail.
    let bytes = serde_json::to_vec(&input).unwrap_or_default();
    format!("fnv1a64-{:016x}", fnv1a64(&bytes))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The labels container `c` of node `node_id` is created with.
pub fn labels(plan: &Plan, node_id: &str, c: &ContainerPlan) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_CLUSTER.to_string(), plan.cluster.clone()),
        (LABEL_NODE.to_string(), node_id.to_string()),
        (LABEL_CONTAINER.to_string(), c.name.clone()),
        (LABEL_SPEC.to_string(), spec_hash(plan, c)),
    ])
}

/// The create request for container `c`, whose hosts file lives in `hosts_dir`.
fn create_body(
    plan: &Plan,
    node_id: &str,
    c: &ContainerPlan,
    hosts_dir: &Path,
) -> ContainerCreateBody {
    let (short, domain) = match c.hostname.split_once('.') {
        Some((short, domain)) => (short.to_string(), Some(domain.to_string())),
        None => (c.hostname.clone(), None),
    };
    let env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut binds: Vec<String> = c
        .volumes
        .iter()
        .map(|v| {
            let mode = if v.read_only { "ro" } else { "rw" };
            format!("{}:{}:{mode}", v.source, v.target)
        })
        .collect();
    // Docker writes no /etc/hosts of its own over a bind mount there.
    binds.push(format!(
        "{}:/etc/hosts:rw",
        hosts_path(hosts_dir, c).display()
    ));
    let mut host_config = HostConfig {
        binds: Some(binds),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    let mut body = ContainerCreateBody {
        image: Some(c.image.clone()),
        cmd: (!c.command.is_empty()).then(|| c.command.clone()),
        env: Some(env),
        hostname: Some(short),
        domainname: domain,
        labels: Some(labels(plan, node_id, c)),
        ..Default::default()
    };
    match c.network {
        NetworkMode::Overlay => {
            host_config.network_mode = Some(OVERLAY_NETWORK.to_string());
            body.networking_config = Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    OVERLAY_NETWORK.to_string(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: c.address.map(|a| a.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            });
            if !c.ports.is_empty() {
                let mut bindings = HashMap::new();
                let mut exposed = Vec::new();
                for p in &c.ports {
                    let key = format!("{}/{}", p.container, p.protocol.as_str());
                    exposed.push(key.clone());
                    bindings.insert(
                        key,
                        Some(vec![PortBinding {
                            host_ip: None,
                            host_port: Some(p.host.unwrap_or(p.container).to_string()),
                        }]),
                    );
                }
                host_config.port_bindings = Some(bindings);
                body.exposed_ports = Some(exposed);
            }
        }
        // On the host's stack a container's ports are the host's: nothing to publish.
        NetworkMode::Host => host_config.network_mode = Some("host".to_string()),
    }
    body.host_config = Some(host_config);
    body
}

fn label<'a>(info: &'a ContainerInspectResponse, key: &str) -> Option<&'a str> {
    info.config
        .as_ref()?
        .labels
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn state_of(info: &ContainerInspectResponse) -> String {
    info.state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn is_running(info: &ContainerInspectResponse) -> bool {
    info.state
        .as_ref()
        .is_some_and(|s| s.status == Some(ContainerStateStatusEnum::RUNNING))
}

/// Inspects a container by name: `None` when it does not exist.
async fn inspect(
    docker: &Docker,
    name: &str,
) -> Result<Option<ContainerInspectResponse>, ContainerError> {
    match docker.inspect_container(name, None).await {
        Ok(info) => Ok(Some(info)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(engine_error("inspect", name, e)),
    }
}

/// Stops (giving it `stop_secs` before the kill) and removes a container.
async fn remove(docker: &Docker, name: &str, stop_secs: i32) -> Result<(), ContainerError> {
    let stop = StopContainerOptionsBuilder::default().t(stop_secs).build();
    match docker.stop_container(name, Some(stop)).await {
        Ok(()) => {}
        Err(e) => match ErrorKind::of(&e) {
            // Already stopped, or already gone.
            ErrorKind::NotModified | ErrorKind::NotFound => {}
            ErrorKind::Unreachable => return Err(engine_error("stop", name, e)),
            // A stop that fails is settled by the forced removal below.
            ErrorKind::Refused => {
                tracing::warn!(container = %name, "stop failed: {}", docker::message(&e))
            }
        },
    }
    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(name, Some(rm)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(engine_error("remove", name, e)),
    }
}

/// Restarts the node's running containers that bind-mount its data disks
/// (`data_disks`) but do not see them: at a VM's boot the engine starts them again
/// (their restart policy) before the agent mounts the disks, and each then holds the
/// empty directory under a mount point, not the disk. A new start binds the disk. What
/// a container sees is read from its mount table (`/proc/PID/mountinfo`: the device at
/// `DIR/N` against disk N's). A container not running is left to [`converge`], whose
/// start binds the disks too. Returns the containers restarted.
pub async fn restart_disk_users(
    docker: &Docker,
    plan: &Plan,
    node_id: &str,
    disks: &[DiskReport],
) -> Result<Vec<String>, ContainerError> {
    let node = node_of(plan, node_id)?;
    let mut restarted = Vec::new();
    for c in &node.containers {
        let Some(dir) = c.data_disks.as_deref() else {
            continue;
        };
        let name = c.docker_name();
        let Some(state) = inspect(docker, name).await?.and_then(|i| i.state) else {
            continue;
        };
        if state.running != Some(true) {
            continue;
        }
        let mounts = state
            .pid
            .filter(|p| *p > 0)
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/mountinfo")).ok())
            .unwrap_or_default();
        let stale: Vec<String> = disks
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("{}/{}", dir.trim_end_matches('/'), i + 1), d))
            .filter(|(target, d)| !sees_device(&mounts, target, &d.device))
            .map(|(target, _)| target)
            .collect();
        if stale.is_empty() {
            continue;
        }
        tracing::info!(container = %name, ?stale, "restarting it: it was started before its node's data disks were mounted");
        let opts = RestartContainerOptionsBuilder::default()
            .t(REPLACE_STOP_SECS)
            .build();
        docker
            .restart_container(name, Some(opts))
            .await
            .map_err(|e| engine_error("restart", name, e))?;
        restarted.push(name.to_string());
    }
    Ok(restarted)
}

/// Whether a mount table (`/proc/PID/mountinfo`) has `device`'s file system mounted at
/// `target` (the topmost mount there).
fn sees_device(mountinfo: &str, target: &str, device: &str) -> bool {
    let Ok(st) = nix::sys::stat::stat(device) else {
        return false;
    };
    let want = format!(
        "{}:{}",
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev)
    );
    mountinfo
        .lines()
        .rev()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&target)).then(|| f.get(2).copied())?
        })
        .next()
        .is_some_and(|dev| dev == want)
}

async fn create_and_start(
    docker: &Docker,
    plan: &Plan,
    node_id: &str,
    c: &ContainerPlan,
    hosts_dir: &Path,
) -> Result<(), ContainerError> {
    let name = c.docker_name();
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    docker
        .create_container(Some(options), create_body(plan, node_id, c, hosts_dir))
        .await
        .map_err(|e| engine_error("create", name, e))?;
    docker
        .start_container(name, None)
        .await
        .map_err(|e| engine_error("start", name, e))
}

/// Containers of `cluster` on this engine: (Docker name, labels).
async fn cluster_containers(
    docker: &Docker,
    cluster: &str,
) -> Result<Vec<(String, HashMap<String, String>)>, ContainerError> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_CLUSTER}={cluster}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| engine_error("list", &format!("of cluster {cluster}"), e))?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            // Docker lists names with a leading slash.
            let name = c.names?.first()?.trim_start_matches('/').to_string();
            Some((name, c.labels.unwrap_or_default()))
        })
        .collect())
}

/// The last lines of a container's log, shortened for an error message.
async fn log_tail(docker: &Docker, name: &str) -> String {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(LOG_TAIL_LINES)
        .build();
    let mut stream = docker.logs(name, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&chunk.to_string());
    }
    tail(&text)
}

/// Whether a container has stopped, or waits to be restarted by its policy.
fn has_stopped(info: &ContainerInspectResponse) -> bool {
    info.state.as_ref().is_some_and(|s| {
        s.restarting == Some(true)
            || matches!(
                s.status,
                Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
            )
    })
}

/// The error for a container found stopped (or waiting for its restart) by `info`.
async fn exited(docker: &Docker, name: &str, info: &ContainerInspectResponse) -> ContainerError {
    // While it is down (or waiting for its restart) Docker keeps the exit code.
    ContainerError::Exited {
        container: name.to_string(),
        exit_code: info.state.as_ref().and_then(|s| s.exit_code).unwrap_or(-1),
        state: state_of(info),
        logs: log_tail(docker, name).await,
    }
}

/// Container `name` as Docker has it now: its id and whether it runs (not stopped,
/// not waiting for its restart); `None` when there is no such container.
pub async fn current(
    docker: &Docker,
    name: &str,
) -> Result<Option<(String, bool)>, ContainerError> {
    Ok(inspect(docker, name)
        .await?
        .map(|info| (info.id.clone().unwrap_or_default(), !has_stopped(&info))))
}

/// Checks that a container still runs and has not restarted since the first call
/// (whose restart count `baseline` records): the watch kept over a container while its
/// readiness probe is tried.
pub async fn check_up(
    docker: &Docker,
    name: &str,
    baseline: &mut Option<i64>,
) -> Result<(), ContainerError> {
    let info = inspect(docker, name)
        .await?
        .ok_or_else(|| ContainerError::Engine {
            action: "probe",
            container: name.to_string(),
            message: "it disappeared while its readiness probe was tried".to_string(),
        })?;
    if has_stopped(&info) {
        return Err(exited(docker, name, &info).await);
    }
    let restarts = info.restart_count.unwrap_or(0);
    let base = *baseline.get_or_insert(restarts);
    if restarts != base {
        return Err(ContainerError::Exited {
            container: name.to_string(),
            exit_code: -1,
            state: format!(
                "restarted {} times while its readiness probe was tried",
                restarts - base
            ),
            logs: log_tail(docker, name).await,
        });
    }
    Ok(())
}

/// Waits until a just-started container is running and has stayed up for `settle`
/// without a restart.
async fn wait_running(
    docker: &Docker,
    name: &str,
    started: Instant,
    settle: Duration,
) -> Result<(), ContainerError> {
    let mut baseline: Option<i64> = None;
    let mut restart_seen: Option<Instant> = None;
    loop {
        let info = inspect(docker, name)
            .await?
            .ok_or_else(|| ContainerError::Engine {
                action: "wait for",
                container: name.to_string(),
                message: "it disappeared right after it was started".to_string(),
            })?;
        let restarts = info.restart_count.unwrap_or(0);
        let base = *baseline.get_or_insert(restarts);
        if has_stopped(&info) {
            return Err(exited(docker, name, &info).await);
        }
        if restarts != base {
            // It died and its restart policy revived it, which resets the exit code:
            // watch a little longer to catch the next exit and read its code.
            let seen = *restart_seen.get_or_insert_with(Instant::now);
            if seen.elapsed() >= RESTART_PROBE {
                return Err(ContainerError::Exited {
                    container: name.to_string(),
                    exit_code: -1,
                    state: format!("restarted {} times", restarts - base),
                    logs: log_tail(docker, name).await,
                });
            }
        } else if is_running(&info) && started.elapsed() >= settle {
            return Ok(());
        }
        if started.elapsed() >= START_TIMEOUT {
            return Err(ContainerError::NotRunning {
                container: name.to_string(),
                state: state_of(&info),
                waited: START_TIMEOUT,
            });
        }
        // While it runs undisturbed, wake exactly when the settle period ends rather
        // than up to a whole poll interval after it.
        let wait = if restart_seen.is_none() && is_running(&info) {
            POLL.min(settle.saturating_sub(started.elapsed()))
        } else {
            POLL
        };
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

fn node_of<'a>(plan: &'a Plan, node_id: &str) -> Result<&'a NodePlan, ContainerError> {
    plan.node(node_id)
        .ok_or_else(|| ContainerError::NodeNotInPlan {
            node: node_id.to_string(),
            cluster: plan.cluster.clone(),
        })
}

/// What [`converge_one`] did to a container.
enum Action {
    Kept,
    Started,
    Replaced,
    Created,
}

/// Brings one container in line with the plan: keeps it when its labels match
/// (starting it if stopped), replaces it when its spec changed, creates it when
/// missing. Returns what was done and when it was started, if it was.
async fn converge_one(
    docker: &Docker,
    plan: &Plan,
    node_id: &str,
    c: &ContainerPlan,
    hosts_dir: &Path,
) -> Result<(Action, Option<Instant>), ContainerError> {
    let name = c.docker_name();
    let want = labels(plan, node_id, c);
    match inspect(docker, name).await? {
        Some(info)
            if [LABEL_CLUSTER, LABEL_NODE, LABEL_SPEC]
                .iter()
                .all(|k| label(&info, k) == want.get(*k).map(String::as_str)) =>
        {
            if is_running(&info) {
                return Ok((Action::Kept, None));
            }
            tracing::info!(container = %name, state = %state_of(&info), "starting a stopped container");
            docker
                .start_container(name, None)
                .await
                .map_err(|e| engine_error("start", name, e))?;
            Ok((Action::Started, Some(Instant::now())))
        }
        Some(_) => {
            tracing::info!(container = %name, "replacing a container whose spec changed");
            remove(docker, name, REPLACE_STOP_SECS).await?;
            create_and_start(docker, plan, node_id, c, hosts_dir).await?;
            Ok((Action::Replaced, Some(Instant::now())))
        }
        None => {
            tracing::info!(container = %name, image = %c.image, "creating container");
            create_and_start(docker, plan, node_id, c, hosts_dir).await?;
            Ok((Action::Created, Some(Instant::now())))
        }
    }
}

/// Brings node `node_id`'s containers in line with the plan: removes the cluster's
/// containers the plan no longer lists for this node (first, so their addresses and
/// ports are free), keeps matching ones (starting them if stopped), replaces changed
/// ones, creates missing ones (all of them concurrently), then waits until every
/// started container runs.
pub async fn converge(
    docker: &Docker,
    plan: &Plan,
    node_id: &str,
    hosts_dir: &Path,
) -> Result<ContainersReport, ContainerError> {
    let node = node_of(plan, node_id)?;
    let mut report = ContainersReport::default();

    let planned: HashSet<&str> = node.containers.iter().map(|c| c.docker_name()).collect();
    for (name, _) in cluster_containers(docker, &plan.cluster).await? {
        if !planned.contains(name.as_str()) {
            tracing::info!(container = %name, "removing a container the plan no longer lists");
            remove(docker, &name, REPLACE_STOP_SECS).await?;
            let _ = std::fs::remove_file(hosts_dir.join(&name));
            report.removed.push(name);
        }
    }
    // The hosts files first: a container about to be created mounts its own, and the
    // running ones see the cluster's current list at once.
    for c in &node.containers {
        if write_hosts(hosts_dir, c, &hosts_file(plan, c))? {
            report.hosts_updated.push(c.docker_name().to_string());
        }
    }

    // Each container is brought in line on its own, all at once: Docker's create and
    // start (a shim, a network endpoint) dominate a node's convergence and overlap
    // well. Outcomes are read back in plan order.
    let outcomes = futures_util::future::join_all(
        node.containers
            .iter()
            .map(|c| converge_one(docker, plan, node_id, c, hosts_dir)),
    )
    .await;
    let mut started: Vec<(&str, Instant, Duration)> = Vec::new();
    let mut first_error = None;
    for (c, outcome) in node.containers.iter().zip(outcomes) {
        let name = c.docker_name();
        match outcome {
            Ok((action, start)) => {
                let list = match action {
                    Action::Kept => &mut report.kept,
                    Action::Started => &mut report.started,
                    Action::Replaced => &mut report.replaced,
                    Action::Created => &mut report.created,
                };
                list.push(name.to_string());
                if let Some(at) = start {
                    // With a probe, running is enough here: the probe says when it is
                    // ready, and watches for an exit meanwhile.
                    let settle = if c.ready.is_some() {
                        Duration::ZERO
                    } else {
                        SETTLE
                    };
                    started.push((name, at, settle));
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Started together, checked one after the other: the settle periods overlap.
    for (name, at, settle) in started {
        wait_running(docker, name, at, settle).await?;
    }
    report.statuses = statuses(docker, plan, node_id).await;
    Ok(report)
}

/// What a command run in a container ([`exec`]) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Its exit code; `None` if it was still running at the timeout.
    pub exit_code: Option<i64>,
    /// The end of what it wrote (stdout and stderr), for messages.
    pub output: String,
}

/// Runs `cmd` in the running container `name` (`docker exec`), and waits for it to
/// end, at most `timeout`.
pub async fn exec(
    docker: &Docker,
    name: &str,
    cmd: &[String],
    timeout: Duration,
) -> Result<ExecOutcome, ContainerError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            name,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| engine_error("exec in", name, e))?;
    let started = docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| engine_error("exec in", name, e))?;
    let mut text = String::new();
    let read = async {
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&chunk.to_string());
                // Keep only the end: a chatty command cannot grow this without bound.
                if text.len() > 4 * LOG_TAIL_BYTES {
                    let mut cut = text.len() - LOG_TAIL_BYTES;
                    while !text.is_char_boundary(cut) {
                        cut += 1;
                    }
                    text.drain(..cut);
                }
            }
        }
    };
    if tokio::time::timeout(timeout, read).await.is_err() {
        return Ok(ExecOutcome {
            exit_code: None,
            output: tail(&text),
        });
    }
    let info = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| engine_error("inspect an exec in", name, e))?;
    Ok(ExecOutcome {
        exit_code: info.exit_code,
        output: tail(&text),
    })
}

/// The last [`LOG_TAIL_BYTES`] of `text`, trimmed, `(none)` when empty.
fn tail(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(none)".to_string();
    }
    if text.len() <= LOG_TAIL_BYTES {
        return text.to_string();
    }
    let mut start = text.len() - LOG_TAIL_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// The node's planned containers as the engine sees them: state `missing` when absent,
/// `unknown` when the engine cannot say; the address is the one Docker gave on the
/// overlay network.
pub async fn statuses(docker: &Docker, plan: &Plan, node_id: &str) -> Vec<ContainerStatus> {
    let Some(node) = plan.node(node_id) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(node.containers.len());
    for c in &node.containers {
        let (state, address) = match docker.inspect_container(c.docker_name(), None).await {
            Ok(info) => {
                let address = info
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .and_then(|n| n.get(OVERLAY_NETWORK))
                    .and_then(|e| e.ip_address.as_deref())
                    .and_then(|ip| ip.parse().ok());
                (state_of(&info), address)
            }
            Err(e) if is_not_found(&e) => ("missing".to_string(), None),
            Err(_) => ("unknown".to_string(), None),
        };
        out.push(ContainerStatus {
            name: c.name.clone(),
            hostname: c.hostname.clone(),
            address,
            state,
        });
    }
    out
}

/// Removes every container of `cluster` on this engine (each gets
/// [`REMOVE_ALL_STOP_SECS`] to stop, then is killed), and their hosts files. Returns
/// their names. Tries them all and reports the first failure.
pub async fn remove_all(
    docker: &Docker,
    cluster: &str,
    hosts_dir: &Path,
) -> Result<Vec<String>, ContainerError> {
    let mut removed = Vec::new();
    let mut first_error = None;
    for (name, _) in cluster_containers(docker, cluster).await? {
        match remove(docker, &name, REMOVE_ALL_STOP_SECS).await {
            Ok(()) => {
                let _ = std::fs::remove_file(hosts_dir.join(&name));
                removed.push(name);
            }
            Err(e) => {
                tracing::warn!(container = %name, "cannot remove: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_protocol::{NetworkPlan, RegistryAuth, SCHEMA_VERSION};

    use super::*;

    #[test]
    fn a_container_sees_a_disk_only_if_its_device_is_the_topmost_mount_there() {
        // /dev/null stands in for the disk: a device node whose numbers are 1:3.
        let mountinfo = "\
            22 1 0:21 / / rw - overlay overlay rw\n\
            30 22 254:1 /vm/root/hadoopfs/fs1 /data/1 rw - ext4 /dev/vda rw\n\
            31 22 254:1 /vm/root/hadoopfs/fs2 /data/2 rw - ext4 /dev/vda rw\n\
            32 31 1:3 / /data/2 rw - ext4 /dev/loop3 rw\n";
        // The empty mount point of the VM's own disk (a start before the mount).
        assert!(!sees_device(mountinfo, "/data/1", "/dev/null"));
        // The disk, mounted over it.
        assert!(sees_device(mountinfo, "/data/2", "/dev/null"));
        assert!(!sees_device(mountinfo, "/data/3", "/dev/null"));
        assert!(!sees_device(mountinfo, "/data/2", "/nonexistent/device"));
    }

    fn container(name: &str, ip: &str) -> ContainerPlan {
        ContainerPlan {
            name: name.into(),
            hostname: format!("{name}-node-0.demo.shoal.internal"),
            image: "shoal/demo:1".into(),
            network: NetworkMode::Overlay,
            address: Some(ip.parse().expect("ip")),
            command: vec!["/usr/local/bin/shoal-demo".into(), name.into()],
            env: BTreeMap::new(),
            volumes: vec![],
            ports: vec![],
            registry_auth: None,
            ready: None,
            data_disks: None,
        }
    }

    fn plan() -> Plan {
        Plan {
            schema: SCHEMA_VERSION,
            cluster: "demo".into(),
            generation: 1,
            domain: "shoal.internal".into(),
            network: NetworkPlan {
                overlay: "10.240.0.0/16".parse().expect("cidr"),
                vni: 42,
                port: 4789,
                mtu: None,
            },
            nodes: vec![NodePlan {
                id: "node-0".into(),
                index: 0,
                private_ip: "10.213.0.10".parse().expect("ip"),
                instance_id: None,
                slice: "10.240.1.0/24".parse().expect("cidr"),
                gateway: "10.240.1.1".parse().expect("ip"),
                containers: vec![
                    container("server", "10.240.1.2"),
                    container("agent", "10.240.1.3"),
                ],
                leaving: false,
                drain: None,
                peer_drains: vec![],
                recipes: vec![],
                disks: vec![],
            }],
            liveness: None,
        }
    }

    #[test]
    fn spec_hash_is_stable_and_tracks_what_matters() {
        let p = plan();
        let c = &p.nodes[0].containers[0];
        let h = spec_hash(&p, c);
        assert_eq!(h, spec_hash(&p.clone(), &c.clone()));
        assert!(
            h.starts_with("fnv1a64-") && h.len() == "fnv1a64-".len() + 16,
            "{h}"
        );

        let mut env = p.clone();
        env.nodes[0].containers[0]
            .env
            .insert("A".into(), "1".into());
        assert_ne!(spec_hash(&env, &env.nodes[0].containers[0]), h);

        // Peers are not part of a container's spec: another container moving, or a node
        // joining, replaces nothing.
        let mut hosts = p.clone();
        hosts.nodes[0].containers[1].address = Some("10.240.1.9".parse().expect("ip"));
        let mut joined = hosts.nodes[0].clone();
        joined.id = "node-1".into();
        joined.index = 1;
        joined.private_ip = "10.213.0.11".parse().expect("ip");
        hosts.nodes.push(joined);
        assert_eq!(spec_hash(&hosts, &hosts.nodes[0].containers[0]), h);

        // A new generation alone, new credentials or a new readiness probe (its
        // expected DataNode count follows the cluster's size) change nothing.
        let mut same = p.clone();
        same.generation = 7;
        same.nodes[0].containers[0].ready = Some(shoal_protocol::ProbePlan {
            tcp: Some(8080),
            http: None,
            exec: None,
            json: BTreeMap::new(),
            body: None,
            interval_ms: 100,
            timeout_ms: 100,
            deadline_ms: 1000,
            live_interval_ms: None,
            failure_threshold: None,
        });
        same.nodes[0].containers[0].registry_auth = Some(RegistryAuth {
            server: "r.example.com".into(),
            username: "u".into(),
            password: "secret".into(),
        });
        assert_eq!(spec_hash(&same, &same.nodes[0].containers[0]), h);
    }

    #[test]
    fn the_hosts_file_lists_every_container_once_after_dockers_header() {
        let mut p = plan();
        p.nodes[0].containers[1].network = NetworkMode::Host;
        p.nodes[0].containers[1].address = None;
        let hosts = hosts_file(&p, &p.nodes[0].containers[0]);
        let lines: Vec<&str> = hosts.lines().collect();
        assert_eq!(lines[0], "127.0.0.1\tlocalhost");
        assert_eq!(
            &lines[lines.len() - 2..],
            [
                "10.240.1.2\tserver-node-0.demo.shoal.internal server-node-0",
                // A host-network container is at its node's address.
                "10.213.0.10\tagent-node-0.demo.shoal.internal agent-node-0",
            ]
        );
        // Each short name on one line only, so `hostname -f` finds the FQDN.
        assert_eq!(hosts.matches(" server-node-0\n").count(), 1);
        // The same for every container of the cluster.
        assert_eq!(hosts, hosts_file(&p, &p.nodes[0].containers[1]));
    }

    #[test]
    fn a_hosts_file_is_rewritten_in_place_only_when_it_changes() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("shoal-hosts-{}", std::process::id()));
        let p = plan();
        let c = &p.nodes[0].containers[0];
        assert!(write_hosts(&dir, c, "a\n").expect("write"));
        let inode = std::fs::metadata(hosts_path(&dir, c)).expect("stat").ino();
        assert!(!write_hosts(&dir, c, "a\n").expect("same"));
        assert!(write_hosts(&dir, c, "a much longer line\n").expect("longer"));
        assert!(write_hosts(&dir, c, "b\n").expect("shorter"));
        let meta = std::fs::metadata(hosts_path(&dir, c)).expect("stat");
        assert_eq!(meta.ino(), inode, "the file was replaced, not rewritten");
        assert_eq!(
            std::fs::read_to_string(hosts_path(&dir, c)).expect("read"),
            "b\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_host_mode_container_is_on_the_hosts_network() {
        let mut p = plan();
        p.nodes[0].containers[0].network = NetworkMode::Host;
        p.nodes[0].containers[0].address = None;
        let body = create_body(&p, "node-0", &p.nodes[0].containers[0], Path::new("/h"));
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert!(body.networking_config.is_none());
    }

    #[test]
    fn create_body_sets_names_address_and_policy() {
        let p = plan();
        let body = create_body(&p, "node-0", &p.nodes[0].containers[0], Path::new("/h"));
        assert_eq!(body.hostname.as_deref(), Some("server-node-0"));
        assert_eq!(body.domainname.as_deref(), Some("demo.shoal.internal"));
        let hc = body.host_config.expect("host config");
        assert_eq!(
            hc.binds.as_deref(),
            Some(&["/h/server-node-0:/etc/hosts:rw".to_string()][..])
        );
        assert!(
            hc.extra_hosts.is_none(),
            "peers are not in the container's config"
        );
        assert_eq!(hc.network_mode.as_deref(), Some(OVERLAY_NETWORK));
        assert_eq!(
            hc.restart_policy.and_then(|r| r.name),
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        let ep = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .and_then(|mut e| e.remove(OVERLAY_NETWORK))
            .expect("endpoint");
        assert_eq!(
            ep.ipam_config.and_then(|i| i.ipv4_address).as_deref(),
            Some("10.240.1.2")
        );
        let labels = body.labels.expect("labels");
        assert_eq!(labels.get(LABEL_CLUSTER).map(String::as_str), Some("demo"));
        assert_eq!(
            labels.get(LABEL_CONTAINER).map(String::as_str),
            Some("server")
        );
    }
}

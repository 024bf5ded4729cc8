//! The contract between the Shoal coordinator and its agents.
//!
//! The coordinator serves a [`Plan`] on its metadata endpoint; every agent fetches it,
//! validates the whole of it with [`Plan::from_json`] before it touches the host, and
//! reports its progress as a [`NodeStatus`]. This crate does no I/O.
//!
//! Compatibility rules: unknown fields are ignored (a newer coordinator may add some),
//! a larger [`SCHEMA_VERSION`] is refused, and every value is checked.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub mod backoff;
pub mod contract;
mod validate;

pub use validate::{is_dns_label, is_dns_name, PlanError};

/// The plan schema this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
pub use contract::{MAX_PLAN_BYTES, MAX_STATUS_BYTES};
/// The IANA port for VXLAN.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Bytes a VXLAN encapsulation adds over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Most nodes a cluster (and so a plan) may have: the one limit the coordinator, its
/// CLI and the agents all enforce.
pub const MAX_NODES: usize = 1000;
/// Most containers one node may run.
pub const MAX_CONTAINERS_PER_NODE: usize = 64;

/// Everything an agent needs to converge its node, and the whole cluster's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Schema version, [`SCHEMA_VERSION`] for this crate.
    pub schema: u32,
    /// Cluster name (an RFC 1123 label).
    pub cluster: String,
    /// Increases every time the plan changes; agents long-poll for a larger one.
    pub generation: u64,
    /// DNS domain under which containers are named: `<container>-<node>.<cluster>.<domain>`.
    pub domain: String,
    /// The overlay network shared by every node.
    pub network: NetworkPlan,
    /// Every node of the cluster, in index order.
    pub nodes: Vec<NodePlan>,
    /// How often a resident agent reports when nothing changes, so the coordinator can
    /// tell a silent node from a quiet one. Absent: the agent reports on changes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<LivenessPlan>,
}

/// The liveness contract: a resident agent sends a report (its latest, again) at
/// least every `report_secs` seconds; the coordinator marks a node `lost` after a
/// silence several times longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessPlan {
    /// Seconds between reports when nothing changes (1 to [`MAX_REPORT_SECS`]).
    pub report_secs: u32,
}

/// The longest interval between liveness reports a plan may ask for.
pub const MAX_REPORT_SECS: u32 = 3600;

/// The cluster-wide overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// The overlay range every node's bridge network spans (e.g. `10.240.0.0/16`).
    pub overlay: Ipv4Net,
    /// VXLAN network identifier (1 to 16,777,215).
    pub vni: u32,
    /// UDP port of the VXLAN tunnel.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Overlay MTU; when absent the agent uses its underlay MTU minus [`VXLAN_OVERHEAD`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

fn default_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

/// How a container is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// On the cluster overlay with its own planned address.
    #[default]
    Overlay,
    /// On the VM's own network stack (for clouds where UDP 4789 is closed).
    Host,
}

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Node id, an RFC 1123 label unique in the cluster (e.g. `node-0`).
    pub id: String,
    /// Position of the node in the cluster, unique.
    pub index: u32,
    /// The VM's private (underlay) address: VXLAN `local` and its peers' FDB destination.
    pub private_ip: Ipv4Addr,
    /// The cloud's instance id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// This node's slice of the overlay, from which its containers get their addresses.
    pub slice: Ipv4Net,
    /// This node's own address on the overlay bridge, inside its slice.
    pub gateway: Ipv4Addr,
    /// Containers to run on this node.
    #[serde(default)]
    pub containers: Vec<ContainerPlan>,
    /// The node is being removed (a scale down): it keeps running and stays every
    /// peer's peer until the coordinator removes it from the plan; first it runs its
    /// [`NodePlan::drain`], if it has one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// What a leaving node runs before its VM is removed (its host group's drain hook),
    /// when the hook runs on the leaving node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainPlan>,
    /// Drain hooks this node runs on behalf of leaving nodes (a hook whose blueprint
    /// names another group, e.g. HDFS decommissioning on the NameNode's node for a
    /// leaving DataNode). Each result goes back in [`NodeStatus::peer_drains`]. An agent
    /// older than this field ignores it: the drain then times out and the scale fails
    /// with the node kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_drains: Vec<PeerDrainPlan>,
    /// The operator's scripts this node runs as root (its host group's recipes), in
    /// order. An agent older than this field ignores it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<RecipePlan>,
    /// Data disks attached to this VM, in order: the agent mounts the first at
    /// `/hadoopfs/fs1`, and so on. An agent older than this field ignores it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskPlan>,
}

/// A data disk of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// How the agent finds it, stable across boots: `loop:PATH` (the local provider: a
    /// loop device whose backing file is PATH), `/dev/NAME` (an EBS device name; the
    /// agent also tries its `xvd` alias and the NVMe device whose serial names it), or
    /// `lun:N` (an Azure data disk's LUN).
    pub id: String,
    /// Its size in GiB, as requested.
    pub size_gb: u32,
}

/// Most data disks one node may have.
pub const MAX_DISKS: usize = 24;
/// Where the agent mounts data disk N (1-based): `/hadoopfs/fsN` under its mount root.
pub fn disk_mount_point(n: usize) -> String {
    format!("/hadoopfs/fs{n}")
}

/// When a recipe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipeWhen {
    /// After the network and images, before the containers start; a failure fails the
    /// node ([`reason::RECIPE_FAILED`]) and no container is started.
    PreContainers,
    /// Once the node is ready; a failure is reported but leaves the node ready.
    PostReady,
}

impl RecipeWhen {
    /// The wire name, e.g. `pre-containers`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecipeWhen::PreContainers => "pre-containers",
            RecipeWhen::PostReady => "post-ready",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<RecipeWhen> {
        [RecipeWhen::PreContainers, RecipeWhen::PostReady]
            .into_iter()
            .find(|w| w.as_str() == s)
    }
}

impl std::fmt::Display for RecipeWhen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A recipe: a shell script (`/bin/sh -c`) the agent runs as root on the VM, once per
/// plan generation (a marker in the agent's state directory), or at every boot as well
/// when [`RecipePlan::every_boot`] says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipePlan {
    /// Name (an RFC 1123 label), unique on the node.
    pub name: String,
    /// When it runs.
    pub when: RecipeWhen,
    /// The script's text (at most [`MAX_RECIPE_BYTES`]).
    pub script: String,
    /// How long it may run before its process group is killed and it counts as failed.
    pub timeout_secs: u64,
    /// Run again at every boot of the node (every start of its agent), not only once
    /// per plan generation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub every_boot: bool,
}

/// Most recipes one node may run.
pub const MAX_RECIPES: usize = 16;
/// Longest script a recipe may carry, in bytes.
pub const MAX_RECIPE_BYTES: usize = 64 << 10;
/// The longest a recipe may be given to run.
pub const MAX_RECIPE_SECS: u64 = 24 * 3600;
/// Most bytes of a recipe's output a [`RecipeReport`] carries (its end).
pub const MAX_RECIPE_OUTPUT: usize = 2048;

/// A drain hook run on one node for another, leaving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDrainPlan {
    /// The leaving node the hook drains (a node of the plan marked leaving).
    pub node: String,
    /// The hook; its container is one of the node that runs it.
    #[serde(flatten)]
    pub hook: DrainPlan,
}

/// A drain hook: a command run in one of a leaving node's containers (`docker exec`),
/// which exits 0 once the node's share of the work is elsewhere (e.g. HDFS has
/// re-replicated a decommissioned DataNode's blocks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainPlan {
    /// The container (its name within the node) the command runs in.
    pub container: String,
    /// The command and its arguments.
    pub exec: Vec<String>,
    /// How long it may run before the drain counts as failed, in seconds.
    pub timeout_secs: u64,
}

/// The longest a drain hook may be given.
pub const MAX_DRAIN_SECS: u64 = 24 * 3600;

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPlan {
    /// Name within the node (RFC 1123 label); the Docker container is named after the
    /// first label of [`ContainerPlan::hostname`].
    pub name: String,
    /// Fully qualified name, unique in the cluster.
    pub hostname: String,
    /// Image reference.
    pub image: String,
    /// How it is attached.
    #[serde(default)]
    pub network: NetworkMode,
    /// Overlay address (required for [`NetworkMode::Overlay`], absent for host mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Command (arguments after the image's entrypoint); empty keeps the image's own.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Bind mounts from the VM.
    #[serde(default)]
    pub volumes: Vec<VolumePlan>,
    /// Ports published on the VM.
    #[serde(default)]
    pub ports: Vec<PortPlan>,
    /// Credentials for pulling the image, when it is neither present nor baked in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// What must answer before the container counts as ready; without one, a container
    /// is ready once it has stayed running for a moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ProbePlan>,
    /// An absolute directory of the container under which the node's data disks are
    /// bind-mounted, one per disk: `DIR/1` is `/hadoopfs/fs1`, and so on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disks: Option<String>,
}

/// A readiness probe: exactly one of [`ProbePlan::tcp`], [`ProbePlan::http`] and
/// [`ProbePlan::exec`], tried every `interval_ms` (each try bounded by `timeout_ms`)
/// until it passes or `deadline_ms` have passed since the container was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePlan {
    /// A TCP port of the container that must accept a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// An `http://` URL that must answer 2xx (and match [`ProbePlan::json`] and
    /// [`ProbePlan::body`]). The host `localhost` names the container itself; a
    /// container FQDN of the plan, that container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A command run inside the container (no shell) that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// For `http`: JSON pointers (RFC 6901) into the answer and the value each must
    /// have (a string, or the text of a number or boolean).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub json: BTreeMap<String, String>,
    /// For `http`: text the answer must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Milliseconds between the starts of two tries.
    pub interval_ms: u64,
    /// Milliseconds one try may take.
    pub timeout_ms: u64,
    /// Milliseconds after the container's start by which the probe must have passed.
    pub deadline_ms: u64,
    /// Once the node is ready, milliseconds between the starts of two tries that keep
    /// checking the container (its liveness); `0` stops checking once it is ready.
    /// Absent: [`ProbePlan::interval_ms`] bounded to
    /// [`MIN_LIVE_INTERVAL_MS`]..=[`MAX_DEFAULT_LIVE_INTERVAL_MS`] (readiness tries
    /// are quick so that a start is seen at once; kept up for the container's whole
    /// life they would be busy work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_interval_ms: Option<u64>,
    /// Once the node is ready, failed tries in a row that make it `unhealthy`
    /// (`probe-failed`), so that one slow answer does not flap the node. Absent:
    /// [`DEFAULT_FAILURE_THRESHOLD`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

/// The shortest gap between two liveness tries a probe gets by default.
pub const MIN_LIVE_INTERVAL_MS: u64 = 1_000;
/// The longest gap between two liveness tries a probe gets by default (a longer
/// [`ProbePlan::interval_ms`] is cut to it; [`ProbePlan::live_interval_ms`] may say more).
pub const MAX_DEFAULT_LIVE_INTERVAL_MS: u64 = 10_000;
/// Failed liveness tries in a row that make a ready node unhealthy, by default.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// The most failed liveness tries in a row a probe may ask for.
pub const MAX_FAILURE_THRESHOLD: u32 = 1_000;

/// What a probe checks, borrowed from a valid [`ProbePlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind<'a> {
    /// A TCP connection to this port.
    Tcp(u16),
    /// An HTTP GET of this URL.
    Http(&'a str),
    /// This command, inside the container.
    Exec(&'a [String]),
}

impl ProbePlan {
    /// What the probe checks; `None` unless exactly one kind is given (a plan that
    /// passed validation always has one).
    pub fn kind(&self) -> Option<ProbeKind<'_>> {
        match (self.tcp, self.http.as_deref(), self.exec.as_deref()) {
            (Some(port), None, None) => Some(ProbeKind::Tcp(port)),
            (None, Some(url), None) => Some(ProbeKind::Http(url)),
            (None, None, Some(cmd)) => Some(ProbeKind::Exec(cmd)),
            _ => None,
        }
    }

    /// The gap between two liveness tries once the node is ready; `None` when the
    /// probe asks not to be tried after ready.
    pub fn live_interval(&self) -> Option<std::time::Duration> {
        let ms = match self.live_interval_ms {
            Some(0) => return None,
            Some(ms) => ms,
            None => self
                .interval_ms
                .clamp(MIN_LIVE_INTERVAL_MS, MAX_DEFAULT_LIVE_INTERVAL_MS),
        };
        Some(std::time::Duration::from_millis(ms))
    }

    /// Failed liveness tries in a row that make the node unhealthy.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(DEFAULT_FAILURE_THRESHOLD)
    }

    /// Checks the probe's rules; `field` names it in errors.
    pub fn validate(&self, field: &str) -> Result<(), PlanError> {
        validate::probe(self, field)
    }
}

impl std::fmt::Display for ProbePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind() {
            Some(ProbeKind::Tcp(port)) => write!(f, "tcp {port}"),
            Some(ProbeKind::Http(url)) => write!(f, "http {url}"),
            Some(ProbeKind::Exec(cmd)) => write!(f, "exec {}", cmd.join(" ")),
            None => f.write_str("(invalid probe)"),
        }
    }
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePlan {
    /// Absolute path on the VM.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPlan {
    /// Port inside the container.
    pub container: u16,
    /// Port on the VM; the same as `container` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    /// `tcp` or `udp`.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// Transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl PortProtocol {
    /// The name Docker uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// Registry credentials. Never logged: `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    /// Registry host, e.g. `registry.example.com`.
    pub server: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Plan {
    /// Parses and validates a plan document: the one way an agent should read a plan.
    pub fn from_json(bytes: &[u8]) -> Result<Plan, PlanError> {
        if bytes.len() > MAX_PLAN_BYTES {
            return Err(PlanError::TooLarge {
                size: bytes.len(),
                limit: MAX_PLAN_BYTES,
            });
        }
        let plan: Plan =
            serde_json::from_slice(bytes).map_err(|e| PlanError::Malformed(e.to_string()))?;
        plan.validate()?;
        Ok(plan)
    }

    /// Checks every rule of the plan; see the crate documentation.
    pub fn validate(&self) -> Result<(), PlanError> {
        validate::plan(self)
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node whose private address is `ip`.
    pub fn node_by_ip(&self, ip: Ipv4Addr) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.private_ip == ip)
    }

    /// The private addresses of every node but `id`: the VXLAN replication list.
    pub fn peers_of(&self, id: &str) -> Vec<Ipv4Addr> {
        self.nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| n.private_ip)
            .collect()
    }

    /// Host entries (`hostname`, address) for every container in the cluster: overlay
    /// containers at their overlay address, host-mode ones at their node's address.
    pub fn host_entries(&self) -> Vec<(String, Ipv4Addr)> {
        let mut out = Vec::new();
        for node in &self.nodes {
            for c in &node.containers {
                let ip = match c.network {
                    NetworkMode::Overlay => c.address.unwrap_or(node.private_ip),
                    NetworkMode::Host => node.private_ip,
                };
                out.push((c.hostname.clone(), ip));
            }
        }
        out
    }

    /// Whether any container of this node uses the overlay (else no overlay is built).
    pub fn node_uses_overlay(&self, id: &str) -> bool {
        self.node(id).is_some_and(|n| {
            n.containers
                .iter()
                .any(|c| c.network == NetworkMode::Overlay)
        })
    }

    /// Every image the plan names for node `id`, deduplicated, in plan order.
    pub fn images_for(&self, id: &str) -> Vec<String> {
        let mut seen = HashSet::new();
        self.node(id)
            .map(|n| {
                n.containers
                    .iter()
                    .filter(|c| seen.insert(c.image.clone()))
                    .map(|c| c.image.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl ContainerPlan {
    /// The Docker container name: the first label of the hostname (`<container>-<node>`).
    pub fn docker_name(&self) -> &str {
        self.hostname.split('.').next().unwrap_or(&self.name)
    }
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The VM is requested but its agent has not reported.
    Pending,
    /// The VM runs (the provider reports it).
    VmRunning,
    /// The agent runs and polls for the plan.
    AgentStarted,
    /// The agent holds a valid plan.
    PlanReceived,
    /// The overlay network is being wired.
    Network,
    /// Images are being loaded or pulled.
    Images,
    /// Containers are being created and started.
    Containers,
    /// Containers run; their readiness probes are being tried.
    Probing,
    /// The node matches the plan.
    Ready,
    /// A leaving node runs its drain hook.
    Draining,
    /// A leaving node's drain hook succeeded: it may be removed.
    Drained,
    /// The node had converged and something broke (a container stopped, the Docker
    /// engine went away, an overlay device was removed); see [`NodeStatus::error`].
    /// The agent is putting it right.
    Unhealthy,
    /// Set by the coordinator: the agent has been silent for longer than the liveness
    /// timeout (reason [`reason::AGENT_SILENT`]).
    Lost,
    /// The node failed; see [`NodeStatus::error`].
    Failed,
}

impl Phase {
    /// The wire name, e.g. `plan-received`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::VmRunning => "vm-running",
            Phase::AgentStarted => "agent-started",
            Phase::PlanReceived => "plan-received",
            Phase::Network => "network",
            Phase::Images => "images",
            Phase::Containers => "containers",
            Phase::Probing => "probing",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Drained => "drained",
            Phase::Unhealthy => "unhealthy",
            Phase::Lost => "lost",
            Phase::Failed => "failed",
        }
    }

    /// Every phase, in the order of a node's life ([`Phase::Failed`] last).
    pub const ALL: [Phase; 14] = [
        Phase::Pending,
        Phase::VmRunning,
        Phase::AgentStarted,
        Phase::PlanReceived,
        Phase::Network,
        Phase::Images,
        Phase::Containers,
        Phase::Probing,
        Phase::Ready,
        Phase::Draining,
        Phase::Drained,
        Phase::Unhealthy,
        Phase::Lost,
        Phase::Failed,
    ];

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Phase> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable reason codes an agent reports with [`Phase::Failed`].
pub mod reason {
    /// The plan failed validation; nothing on the host was changed.
    pub const PLAN_INVALID: &str = "plan-invalid";
    /// The plan does not list this node.
    pub const NODE_NOT_IN_PLAN: &str = "node-not-in-plan";
    /// The Docker engine could not be reached.
    pub const DOCKER_UNREACHABLE: &str = "docker-unreachable";
    /// Wiring the overlay failed (rolled back).
    pub const NETWORK_FAILED: &str = "network-failed";
    /// An image could neither be loaded nor pulled.
    pub const IMAGE_FAILED: &str = "image-failed";
    /// A container could not be created or did not stay running.
    pub const CONTAINER_FAILED: &str = "container-failed";
    /// A container's readiness probe did not pass within its deadline, or (with
    /// [`crate::Phase::Unhealthy`]) failed its failure threshold of tries in a row once
    /// the node was ready; the message quotes its last try.
    pub const PROBE_FAILED: &str = "probe-failed";
    /// The agent's configuration is unusable.
    pub const CONFIG_INVALID: &str = "config-invalid";
    /// A leaving node's drain hook exited non-zero, or ran past its timeout; the
    /// message carries its exit code and the end of its output.
    pub const DRAIN_FAILED: &str = "drain-failed";
    /// A pre-containers recipe exited non-zero, ran past its timeout or could not be
    /// started; the message names it, with its exit status and the end of its output.
    /// No container was started.
    pub const RECIPE_FAILED: &str = "recipe-failed";
    /// A data disk could not be found, formatted or mounted; the message names the
    /// disk and its device. What this convergence mounted was unmounted again, and no
    /// container was started.
    pub const DISK_FAILED: &str = "disk-failed";
    /// The Docker engine stopped answering after the node had converged (a daemon
    /// crash or restart); the agent converges the node again once it is back.
    pub const DOCKERD_DOWN: &str = "dockerd-down";
    /// A planned container stopped running after the node had converged (it exited,
    /// or was removed); the message names it, with its exit code.
    pub const CONTAINER_EXITED: &str = "container-exited";
    /// Part of the overlay disappeared after the node had converged: the bridge
    /// `shoal0`, the VXLAN device `shoal-vx`, or a peer's FDB entry (the message says
    /// which); the agent rebuilds it.
    pub const NETWORK_DEVICE_MISSING: &str = "network-device-missing";
    /// Set by the coordinator, never sent by an agent: no report arrived within the
    /// liveness timeout (the agent, its VM or the network between is down).
    pub const AGENT_SILENT: &str = "agent-silent";
}

/// A phase's timing, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    /// The phase.
    pub phase: Phase,
    /// When it began.
    pub started_ms: u64,
    /// How long it took (absent while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Why a node failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFailure {
    /// A stable code from [`reason`].
    pub reason: String,
    /// What happened, for a person.
    pub message: String,
}

/// A container as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Planned name.
    pub name: String,
    /// FQDN.
    pub hostname: String,
    /// Overlay address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Docker's state (`running`, `exited`, …).
    pub state: String,
}

/// What an agent reports with `PUT /metadata/v1/{key}/nodes/{node}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Current phase.
    pub phase: Phase,
    /// Generation of the plan being applied (0 before a plan is held).
    #[serde(default)]
    pub generation: u64,
    /// Timings of the phases so far in this boot.
    #[serde(default)]
    pub timings: Vec<PhaseTiming>,
    /// Set with [`Phase::Failed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeFailure>,
    /// Containers of this node.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
    /// The agent's version.
    #[serde(default)]
    pub agent_version: String,
    /// The OS's own boot (kernel, systemd, cloud-init), as the agent read it on a real
    /// VM. Absent where the node has no boot of its own (the local provider's
    /// namespaces) and from agents older than this field; a coordinator older than it
    /// ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootReport>,
    /// Outcomes of the drain hooks this node ran for leaving nodes of the plan it
    /// reports on ([`NodePlan::peer_drains`]), one per leaving node (at most
    /// [`MAX_PEER_DRAINS`]); absent from agents older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_drains: Vec<PeerDrainReport>,
    /// How this node's recipes ended ([`NodePlan::recipes`]), the latest run of each
    /// (at most [`MAX_RECIPES`]); absent from agents older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<RecipeReport>,
    /// This node's data disks as the agent mounted them (at most [`MAX_DISKS`]);
    /// absent from agents older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskReport>,
}

/// A data disk as the agent found and mounted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    /// Its id in the plan.
    pub id: String,
    /// The block device it was found as (`/dev/loop3`, `/dev/nvme1n1`).
    pub device: String,
    /// Where it is mounted on the VM (`/hadoopfs/fs1`).
    pub mount: String,
    /// Its filesystem (`ext4`).
    pub fs_type: String,
    /// Whether this agent formatted it (it was blank); a disk holding a filesystem is
    /// never formatted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub formatted: bool,
}

/// How a recipe's latest run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeReport {
    /// The recipe's name.
    pub name: String,
    /// When it ran.
    pub when: RecipeWhen,
    /// The plan generation it ran for.
    pub generation: u64,
    /// Its exit status; absent when it was killed at its timeout, or could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether it exited 0 within its timeout.
    pub ok: bool,
    /// When it started, in milliseconds since the Unix epoch (the VM's clock, like
    /// [`PhaseTiming::started_ms`]).
    pub started_ms: u64,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// The end of what it printed (stdout and stderr together, at most
    /// [`MAX_RECIPE_OUTPUT`] bytes), or why it did not run to its end.
    #[serde(default)]
    pub output: String,
}

/// Most [`PeerDrainReport`]s one status may carry.
pub const MAX_PEER_DRAINS: usize = 64;
/// Most bytes of a hook's output a [`PeerDrainReport`] carries (its end).
pub const MAX_DRAIN_OUTPUT: usize = 2048;

/// How a drain hook run for another node ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDrainReport {
    /// The leaving node it drained.
    pub node: String,
    /// The plan generation the hook was run for.
    pub generation: u64,
    /// Whether it exited 0 within its timeout.
    pub ok: bool,
    /// What it printed (its end), or why it failed (exit code, timeout).
    #[serde(default)]
    pub message: String,
}

/// Most stages a [`BootReport`] may list.
pub const MAX_BOOT_STAGES: usize = 32;
/// Most cloud-init errors a [`BootReport`] may carry.
pub const MAX_CLOUD_INIT_ERRORS: usize = 8;

/// A VM's own boot, read from its kernel (`/proc/uptime`), systemd (the manager's and
/// units' timestamps) and cloud-init (`/run/cloud-init/status.json`, `result.json`).
/// Times are milliseconds since the Unix epoch on the VM's clock, like
/// [`PhaseTiming::started_ms`], so they line up with the agent's phases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    /// When the kernel started: the VM's clock minus its uptime.
    pub kernel_start_ms: u64,
    /// The spans of the boot, in order of their start.
    #[serde(default)]
    pub stages: Vec<BootStage>,
    /// cloud-init's outcome, once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitOutcome>,
    /// The systemd unit the agent runs in (from its cgroup), when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_unit: Option<String>,
}

/// One span of a VM's boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootStage {
    /// Who measured it: `kernel`, `systemd` or `cloud-init` (a string, not an enum, so
    /// that a newer agent's new source does not make an older coordinator refuse the
    /// whole report).
    pub source: String,
    /// What it is: `kernel`, `initrd`, `userspace`, a unit (`docker.service`), a
    /// cloud-init stage (`init-local`, `init`, `modules-config`, `modules-final`).
    pub name: String,
    /// When it began.
    pub started_ms: u64,
    /// How long it took (absent while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// What cloud-init says of its run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInitOutcome {
    /// `running` (a stage is under way), `done` (finished, no errors) or `error`.
    pub status: String,
    /// The datasource it used, e.g. `DataSourceNoCloud [seed=/dev/vdb][dsmode=net]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasource: Option<String>,
    /// Its errors, verbatim (at most [`MAX_CLOUD_INIT_ERRORS`]).
    #[serde(default)]
    pub errors: Vec<String>,
}

impl NodeStatus {
    /// Checks the bounds a coordinator enforces on a report.
    pub fn validate(&self) -> Result<(), PlanError> {
        validate::status(self)
    }
}

#[cfg(test)]
mod tests;

/// Where the agent's configuration lives on a VM (written by cloud-init, mode 0600).
pub const AGENT_CONFIG_PATH: &str = "/etc/shoal/agent.json";
/// Where baked container image tarballs live on a VM image.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/shoal/images";
/// How long an agent without a plan keeps trying to reach the coordinator before it
/// gives up.
pub const DEFAULT_AGENT_DEADLINE_SECS: u64 = 900;

/// The agent's configuration, as the user-data writes it to [`AGENT_CONFIG_PATH`].
/// `Debug` hides the secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of the coordinator's metadata listener, e.g. `https://10.213.0.1:8787`.
    pub metadata_url: String,
    /// The cluster's secret key (64 hex digits).
    pub cluster_key: String,
    /// This node's id in the plan.
    pub node_id: String,
    /// Bearer token for this node's status writes.
    pub node_token: String,
    /// PEM certificate of the coordinator's CA; the agent trusts only it when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_pem: Option<String>,
    /// Until it has a plan, the agent exits with a reason once the coordinator has not
    /// answered for this many seconds (a request in flight does not carry it past).
    #[serde(default = "default_deadline")]
    pub deadline_secs: u64,
}

fn default_deadline() -> u64 {
    DEFAULT_AGENT_DEADLINE_SECS
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("metadata_url", &self.metadata_url)
            .field("cluster_key", &"<redacted>")
            .field("node_id", &self.node_id)
            .field("node_token", &"<redacted>")
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|_| "<pem>"))
            .field("deadline_secs", &self.deadline_secs)
            .finish()
    }
}

/// The registry host of an image reference: its first component when that names a host
/// (holds a `.` or a `:`, or is `localhost`), else Docker Hub, `docker.io`.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// The file name under which an image's `docker save` tarball is baked into a VM image's
/// image directory: every character outside `[A-Za-z0-9._-]` of the reference becomes
/// `_`, then `.tar` (`shoal/demo:1` → `shoal_demo_1.tar`). The baker, the local provider
/// and the agent all use this one rule.
pub fn image_tarball_name(image: &str) -> String {
    let mut s: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.push_str(".tar");
    s
}

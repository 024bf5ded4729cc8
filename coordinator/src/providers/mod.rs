//! Cloud providers: one trait, implemented by `local` (network namespaces on this
//! machine), `qemu` (real VMs on this machine, booted through cloud-init), `aws` (EC2
//! Query API) and `azure` (Azure Resource Manager); and `sim`, a test provider that
//! records VMs without making them (load tests; off unless `serve` enables it).
//!
//! A provider creates a cluster's VMs with the user-data the engine rendered for each
//! node, describes them, and deletes everything the cluster owns. Every call must be
//! safe to repeat: creation is idempotent (EC2 `ClientToken`, deterministic Azure and
//! namespace names), and deletion finds what the cluster owns by its tags or names, so
//! it works even after a coordinator crash lost track of a half-made creation.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub mod aws;
pub mod azure;
pub mod local;
pub mod preflight;
pub mod qemu;
pub mod registry;
pub mod retry;
pub mod sim;

/// The cluster a provider call is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRef {
    /// Cluster name (RFC 1123 label).
    pub name: String,
    /// A random id (12 hex digits) fixed at creation: it keeps the resources of a
    /// deleted cluster apart from those of a new one with the same name. Used in tags,
    /// idempotency tokens and resource names.
    pub uid: String,
}

impl ClusterRef {
    /// `<name>-<uid>`: the value of the `shoal:cluster` tag and the stem of resource names.
    pub fn tag(&self) -> String {
        format!("{}-{}", self.name, self.uid)
    }
}

/// Provider settings of one cluster, from the command line or a template file; stored
/// with the cluster so the reconciler can resume with the same ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderParams {
    /// Region (`--region`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Machine image: an AMI id, an Azure marketplace reference or image id (`--image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Instance type or VM size (`--instance-type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Name of a stored credential (`--credential`, Azure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Ports the blueprint publishes, to open to the operator.
    #[serde(default)]
    pub exposed_ports: Vec<u16>,
    /// The operator's address range allowed on exposed ports (e.g. `203.0.113.7/32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_cidr: Option<String>,
    /// Anything else a provider takes (`--set key=value`): existing VPC or subnet
    /// ids, an endpoint override, a profile.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// The node detail in which a provider lists the ids of a node's data disks, one a
/// line (see [`shoal_protocol::DiskPlan::id`]); the engine puts them in the plan.
pub const DISKS_DETAIL: &str = "disk_ids";

/// One VM to create.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    /// Node id in the plan (`node-0`, …).
    pub node_id: String,
    /// Node index.
    pub index: u32,
    /// How many times the node's VM was replaced (repair): 0 for its first VM. A new
    /// incarnation is a new VM (part of EC2's client token, for instance), the same
    /// incarnation the same VM.
    pub incarnation: u32,
    /// Rendered user-data, possibly gzip-compressed (see `userdata`); providers encode
    /// it as their API wants (base64 for EC2 and Azure).
    pub user_data: Vec<u8>,
    /// The data disks to attach (the node's group's), if any; a provider that attaches
    /// them lists their ids in the node's `disk_ids` detail
    /// ([`DISKS_DETAIL`]).
    pub disks: Option<crate::blueprint::DiskSpec>,
}

/// The ids of a node's `count` data disks where the provider names them by a fixed
/// scheme (EBS device names, Azure LUNs), so they need not survive in the node's
/// details; empty for a provider that reports them (local) or attaches none.
pub fn fixed_disk_ids(provider: &str, count: u32) -> Vec<String> {
    match provider {
        "aws" => aws::device_names(count),
        "azure" => (0..count).map(|lun| format!("lun:{lun}")).collect(),
        _ => Vec::new(),
    }
}

/// A VM's life as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Being created.
    Pending,
    /// Running.
    Running,
    /// Stopping, stopped, or being deleted.
    Stopped,
    /// Gone.
    Terminated,
    /// The provider reports a failure.
    Failed,
}

impl VmState {
    /// The displayed name (`pending`, `running`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            VmState::Pending => "pending",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Terminated => "terminated",
            VmState::Failed => "failed",
        }
    }
}

/// A VM as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id (from the request, or read back from the VM's tags).
    pub node_id: String,
    /// The provider's id of the VM.
    pub instance_id: String,
    /// Private address, once assigned.
    pub private_ip: Option<Ipv4Addr>,
    /// State.
    pub state: VmState,
    /// Provider-specific facts worth showing (local: namespace and Docker socket).
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

/// A provider's failure. `Api` carries the cloud's own code and message verbatim.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The cloud refused a call.
    #[error("{provider} {operation} failed: {code}: {message}")]
    Api {
        /// `aws`, `azure`, `local`.
        provider: &'static str,
        /// The API operation, e.g. `RunInstances`.
        operation: String,
        /// The cloud's error code, e.g. `AuthFailure`.
        code: String,
        /// The cloud's message.
        message: String,
    },
    /// A required setting or credential is missing or wrong.
    #[error("{provider}: {message}")]
    Config {
        /// Provider.
        provider: &'static str,
        /// What is missing and how to give it.
        message: String,
    },
    /// The endpoint could not be reached, or kept failing until the deadline.
    #[error("{provider}: {message}")]
    Unavailable {
        /// Provider.
        provider: &'static str,
        /// What failed, with the endpoint.
        message: String,
    },
    /// Setting up a local VM failed.
    #[error("local: {0}")]
    Local(String),
    /// Setting up a qemu VM failed.
    #[error("qemu: {0}")]
    Qemu(String),
    /// The provider cannot do this.
    #[error("the {provider} provider does not support {what}")]
    Unsupported {
        /// Provider.
        provider: &'static str,
        /// What was asked.
        what: String,
    },
    /// Images the blueprint names cannot be had where the VMs run (the local provider's
    /// image directory): each with the command that makes it.
    #[error("{0}")]
    ImagesMissing(String),
}

/// What every provider does. Methods return boxed futures so the engine can hold
/// `Arc<dyn Provider>`.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// `local`, `aws` or `azure`.
    fn name(&self) -> &'static str;

    /// The most data disks it attaches to one VM (0: it attaches none); a blueprint
    /// asking for more is refused at create.
    fn max_disks(&self) -> u32 {
        0
    }

    /// The largest user-data (after any compression) the provider's API accepts.
    fn user_data_limit(&self) -> Option<usize> {
        None
    }

    /// An address of this machine the provider's VMs reach the coordinator at (the
    /// local VPC gateway): the metadata listener's default address, and a name in its
    /// certificate.
    fn gateway(&self) -> Option<std::net::IpAddr> {
        None
    }

    /// Releases what the provider holds for the coordinator's lifetime, when the
    /// coordinator stops (the local VPC, once no local VM is left).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Checks, before any VM is made, that every image of the blueprint can be had
    /// where the VMs run; the local provider requires each to be baked in its image
    /// directory (building the demo image there at first need). Clouds take images
    /// from the VM image or a registry, which only the VM can try.
    fn check_images<'a>(
        &'a self,
        _images: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    /// The metadata base URL this provider's VMs reach the coordinator at, when the
    /// provider knows it (the local provider's VPC gateway); clouds use the
    /// coordinator's `--advertise-url`.
    fn metadata_url(&self) -> Option<String> {
        None
    }

    /// Told once the metadata listener is bound: the URL it serves at on this machine
    /// (`scheme://address:port`, loopback for a wildcard address). Only a provider
    /// whose VMs run here and have no address of their own to reach it at uses it.
    fn metadata_listening(&self, _url: &str) {}

    /// Where an operator finds everything the cluster owns at this provider, in a few
    /// words (`show` prints it, so a FAILED cluster's leftovers can be found by hand):
    /// the tag every resource carries, the resource group. No I/O.
    fn footprint(&self, _cluster: &ClusterRef, _params: &ProviderParams) -> Option<String> {
        None
    }

    /// Creates the VMs (idempotently: a repeated call with the same cluster and nodes
    /// creates nothing twice) and returns them as far as known.
    fn create_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
        nodes: &'a [NodeRequest],
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>>;

    /// Describes the cluster's VMs.
    fn describe_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>>;

    /// Deletes the VMs of these nodes and what only they used (network interfaces,
    /// disks, public addresses), and waits until they are gone; the rest of the cluster
    /// is untouched. Safe to repeat; a node without a VM is no error. Scale downs and
    /// repairs need it: a provider without it cannot do either.
    fn delete_nodes<'a>(
        &'a self,
        _cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
        _nodes: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let provider = self.name();
        Box::pin(async move {
            Err(ProviderError::Unsupported {
                provider,
                what: "removing single nodes (scale down, repair)".into(),
            })
        })
    }

    /// Restarts the VM of a node (its OS boots again; its disks stay).
    fn reboot_node<'a>(
        &'a self,
        _cluster: &'a ClusterRef,
        _params: &'a ProviderParams,
        _node: &'a str,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let provider = self.name();
        Box::pin(async move {
            Err(ProviderError::Unsupported {
                provider,
                what: "rebooting a VM".into(),
            })
        })
    }

    /// Facts about a node's VM that change while it runs and are cheap to read (the
    /// local provider: its supervisor's restart counts), for `show`. No cloud call.
    fn live_details(&self, _cluster: &ClusterRef, _node: &str) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Deletes everything the cluster owns and waits until it is gone. Safe to repeat.
    fn delete_cluster<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
}

//! The cluster as operators see it: [`ClusterView`] and [`NodeView`], built from the
//! store's rows, shared by the operator API (which serves them), the CLI (which prints
//! them) and the renderings of a cluster's boot ([`timeline`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use shoal_protocol::{ContainerStatus, NodeFailure, Phase, PhaseTiming};

use crate::store::{now_ms, ClusterRow, ClusterState, NodeRow};

pub mod timeline;

/// A cluster as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// State.
    pub state: ClusterState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Plan generation.
    pub generation: u64,
    /// The base URL agents use.
    pub metadata_url: String,
    /// Node count.
    pub node_count: u32,
    /// Blueprint name.
    pub blueprint: String,
    /// Overlay range.
    pub overlay: String,
    /// The images the blueprint names: what the VMs load from their image, or pull.
    #[serde(default)]
    pub images: Vec<String>,
    /// When it was requested (ms since the epoch).
    pub created_ms: u64,
    /// Milliseconds from request to AVAILABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_available_ms: Option<u64>,
    /// Where everything the cluster owns at its provider can be found (cloud
    /// providers: the tag or resource group), so a FAILED cluster's leftovers can be
    /// checked by hand; `delete` finds them the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<String>,
    /// Nodes (in `show`; empty in `list`).
    #[serde(default)]
    pub nodes: Vec<NodeView>,
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Index.
    pub index: u32,
    /// Provider's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Private address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
    /// Phase.
    pub phase: Phase,
    /// Failure, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NodeFailure>,
    /// Milliseconds since the node was requested.
    pub elapsed_ms: u64,
    /// Containers as the agent reported them.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
    /// Phase timings the agent reported.
    #[serde(default)]
    pub timings: Vec<PhaseTiming>,
    /// When the VM was requested and seen running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ms: Option<u64>,
    /// When the provider reported the VM running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_ms: Option<u64>,
    /// The OS's own boot (kernel, systemd, cloud-init) as the agent read it on a real
    /// VM; absent on the local provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<shoal_protocol::BootReport>,
    /// Provider facts: the local provider's `netns`, `docker_socket`, log paths.
    #[serde(flatten)]
    pub details: BTreeMap<String, String>,
}

impl ClusterView {
    /// Builds the view of a stored cluster.
    pub fn new(c: &ClusterRow, nodes: &[NodeRow]) -> ClusterView {
        let now = now_ms();
        ClusterView {
            name: c.name.clone(),
            provider: c.provider.clone(),
            state: c.state,
            reason: c.reason.clone(),
            generation: c.generation,
            metadata_url: c.metadata_url.clone(),
            node_count: c.node_count,
            blueprint: c.blueprint.name.clone(),
            overlay: c.overlay.to_string(),
            images: c.blueprint.images(),
            created_ms: c.created_ms,
            time_to_available_ms: c.available_ms.map(|a| a.saturating_sub(c.created_ms)),
            resources: None,
            nodes: nodes
                .iter()
                .map(|n| NodeView {
                    id: n.id.clone(),
                    index: n.index,
                    instance_id: n.instance_id.clone(),
                    private_ip: n.private_ip,
                    phase: n.phase,
                    error: n.status.as_ref().and_then(|s| s.error.clone()),
                    elapsed_ms: now.saturating_sub(n.requested_ms.unwrap_or(c.created_ms)),
                    containers: n
                        .status
                        .as_ref()
                        .map(|s| s.containers.clone())
                        .unwrap_or_default(),
                    timings: n
                        .status
                        .as_ref()
                        .map(|s| s.timings.clone())
                        .unwrap_or_default(),
                    requested_ms: n.requested_ms,
                    running_ms: n.running_ms,
                    boot: n.status.as_ref().and_then(|s| s.boot.clone()),
                    details: n.details.clone(),
                })
                .collect(),
        }
    }
}

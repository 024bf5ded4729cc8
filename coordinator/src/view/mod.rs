//! The cluster as operators see it: [`ClusterView`] and [`NodeView`], built from the
//! store's rows, shared by the operator API (which serves them), the CLI (which prints
//! them) and the renderings of a cluster's boot ([`timeline`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use shoal_protocol::{ContainerStatus, NodeFailure, Phase, PhaseTiming};

use crate::store::{now_ms, ChangeKind, ClusterEvent, ClusterRow, ClusterState, History, NodeRow};

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
    /// Replace a node lost for longer than this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_repair_secs: Option<u64>,
    /// Nodes (in `show`; empty in `list`).
    #[serde(default)]
    pub nodes: Vec<NodeView>,
    /// Every change (creation, scales, repairs): when it was asked for, the generation
    /// that carried it, when each node converged to it (in `show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<ChangeView>,
    /// The states the cluster entered, oldest first (in `show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<ClusterEvent>,
}

/// A change as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    /// 1, 2, … (1 is the creation).
    pub id: u64,
    /// `create`, `scale` or `repair`.
    pub kind: ChangeKind,
    /// What it asked for.
    pub summary: String,
    /// When it was asked for (ms since the epoch).
    pub asked_ms: u64,
    /// `running`, `done` or `failed`.
    pub outcome: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How far it got, while it runs.
    pub step: String,
    /// Nodes added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// Nodes removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Nodes given new VMs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
    /// The plan generation that carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// When that plan was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_ms: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_ms: Option<u64>,
    /// When each node first reported ready on that generation, by node index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub converged: Vec<Convergence>,
}

/// When a node converged to a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Convergence {
    /// The node.
    pub node: String,
    /// When it first reported ready on the generation (ms since the epoch).
    pub at_ms: u64,
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
    /// Its host group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Phase.
    pub phase: Phase,
    /// The plan generation of its last report.
    #[serde(default)]
    pub generation: u64,
    /// When it first reported ready on that generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged_ms: Option<u64>,
    /// When its agent last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// Being removed by a scale down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// How many times its VM was replaced.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u32,
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
    /// How its recipes' latest runs ended, as its agent reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<shoal_protocol::RecipeReport>,
    /// Its data disks as its agent mounted them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<shoal_protocol::DiskReport>,
    /// Provider facts: the local provider's `netns`, `docker_socket`, log paths.
    #[serde(flatten)]
    pub details: BTreeMap<String, String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ClusterView {
    /// The view of a stored cluster with its record of changes and events.
    pub fn with_history(c: &ClusterRow, nodes: &[NodeRow], h: &History) -> ClusterView {
        let mut v = ClusterView::new(c, nodes);
        v.events = h.events.clone();
        v.changes = h
            .changes
            .iter()
            .map(|ch| {
                let converged = ch
                    .generation
                    .and_then(|g| h.generations.iter().find(|r| r.generation == g))
                    .map(|r| {
                        r.converged
                            .iter()
                            .map(|(node, at)| Convergence {
                                node: node.clone(),
                                at_ms: *at,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let (outcome, reason) = match &ch.outcome {
                    None => ("running", None),
                    Some(Ok(())) => ("done", None),
                    Some(Err(why)) => ("failed", Some(why.clone())),
                };
                ChangeView {
                    id: ch.id,
                    kind: ch.kind,
                    summary: ch.spec.summary.clone(),
                    asked_ms: ch.asked_ms,
                    outcome: outcome.to_string(),
                    reason,
                    step: ch.step.clone(),
                    added: ch.spec.add.clone(),
                    removed: ch.spec.remove.clone(),
                    repaired: ch.spec.repair.clone(),
                    generation: ch.generation,
                    published_ms: ch.published_ms,
                    done_ms: ch.done_ms,
                    converged,
                }
            })
            .collect();
        v
    }

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
            auto_repair_secs: c.auto_repair_secs,
            changes: vec![],
            events: vec![],
            nodes: nodes
                .iter()
                .map(|n| NodeView {
                    id: n.id.clone(),
                    index: n.index,
                    instance_id: n.instance_id.clone(),
                    private_ip: n.private_ip,
                    group: n.group.clone(),
                    phase: n.phase,
                    generation: n.generation,
                    converged_ms: n.converged_ms,
                    last_seen_ms: n.last_seen_ms,
                    leaving: n.leaving,
                    incarnation: n.incarnation,
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
                    recipes: n
                        .status
                        .as_ref()
                        .map(|s| s.recipes.clone())
                        .unwrap_or_default(),
                    disks: n
                        .status
                        .as_ref()
                        .map(|s| s.disks.clone())
                        .unwrap_or_default(),
                    details: n.details.clone(),
                })
                .collect(),
        }
    }
}

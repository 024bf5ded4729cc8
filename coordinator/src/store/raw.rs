//! What every SQL backend shares: rows as the database holds them (text and
//! integers), parsed into the typed rows in one place, and the decisions a transition
//! makes from what it read, so SQLite and PostgreSQL cannot drift apart.

use std::collections::BTreeMap;

use shoal_protocol::{NodeStatus, Phase, Plan};

use super::{ClusterRow, ClusterState, NodeRow, ReportOutcome, StoreError, StoredPlan};

/// A cluster row as a database holds it: its JSON columns are parsed in
/// [`RawCluster::parse`], so a corrupt one is reported by name.
pub(super) struct RawCluster {
    pub name: String,
    pub uid: String,
    pub provider: String,
    pub state: String,
    pub reason: Option<String>,
    pub key: String,
    pub generation: u64,
    pub plan: Option<String>,
    pub blueprint: String,
    pub params: String,
    pub metadata_url: String,
    pub node_count: u32,
    pub overlay: String,
    pub vni: u32,
    pub domain: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub available_ms: Option<u64>,
    pub ready_nodes: u32,
    pub next_index: u32,
    pub auto_repair_secs: Option<u64>,
    pub change: Option<u64>,
}

impl RawCluster {
    pub fn parse(self) -> Result<ClusterRow, StoreError> {
        let bad = |what: &str| StoreError::Corrupt(format!("{what} of cluster {}", self.name));
        let plan = match &self.plan {
            Some(json) => {
                let plan: Plan = serde_json::from_str(json).map_err(|_| bad("the plan"))?;
                Some(StoredPlan {
                    plan,
                    json: json.clone().into_bytes().into(),
                })
            }
            None => None,
        };
        Ok(ClusterRow {
            state: ClusterState::parse(&self.state).ok_or_else(|| bad("the state"))?,
            blueprint: serde_json::from_str(&self.blueprint).map_err(|_| bad("the blueprint"))?,
            params: serde_json::from_str(&self.params).map_err(|_| bad("the parameters"))?,
            overlay: self.overlay.parse().map_err(|_| bad("the overlay"))?,
            plan,
            name: self.name,
            uid: self.uid,
            provider: self.provider,
            reason: self.reason,
            key: self.key,
            generation: self.generation,
            metadata_url: self.metadata_url,
            node_count: self.node_count,
            vni: self.vni,
            domain: self.domain,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            available_ms: self.available_ms,
            ready_nodes: self.ready_nodes,
            next_index: self.next_index,
            auto_repair_secs: self.auto_repair_secs,
            change: self.change,
        })
    }
}

/// A node row as a database holds it.
pub(super) struct RawNode {
    pub id: String,
    pub index: u32,
    pub group: String,
    pub token: String,
    pub incarnation: u32,
    pub leaving: bool,
    pub instance_id: Option<String>,
    pub private_ip: Option<String>,
    pub details: String,
    pub phase: String,
    pub status: Option<String>,
    pub generation: u64,
    pub converged_ms: Option<u64>,
    pub last_seen_ms: Option<u64>,
    pub lost_ms: Option<u64>,
    pub requested_ms: Option<u64>,
    pub running_ms: Option<u64>,
    pub updated_ms: u64,
}

impl RawNode {
    /// The typed row; `cluster` names it in errors.
    pub fn parse(self, cluster: &str) -> Result<NodeRow, StoreError> {
        let bad = |what: &str| StoreError::Corrupt(format!("{what} of node {cluster}/{}", self.id));
        Ok(NodeRow {
            private_ip: match &self.private_ip {
                Some(s) => Some(s.parse().map_err(|_| bad("the private address"))?),
                None => None,
            },
            details: serde_json::from_str::<BTreeMap<String, String>>(&self.details)
                .map_err(|_| bad("the details"))?,
            phase: Phase::parse(&self.phase).ok_or_else(|| bad("the phase"))?,
            status: match &self.status {
                Some(s) => Some(serde_json::from_str(s).map_err(|_| bad("the status"))?),
                None => None,
            },
            id: self.id,
            index: self.index,
            group: self.group,
            token: self.token,
            incarnation: self.incarnation,
            leaving: self.leaving,
            generation: self.generation,
            converged_ms: self.converged_ms,
            last_seen_ms: self.last_seen_ms,
            lost_ms: self.lost_ms,
            instance_id: self.instance_id,
            requested_ms: self.requested_ms,
            running_ms: self.running_ms,
            updated_ms: self.updated_ms,
        })
    }
}

/// Parses a stored cluster state.
pub(super) fn parse_state(s: &str) -> Result<ClusterState, StoreError> {
    ClusterState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("cluster state {s:?}")))
}

/// The state an AVAILABLE or DEGRADED cluster should be in, given its counts.
pub(super) fn health(generation: i64, ready: i64, nodes: i64) -> ClusterState {
    if generation > 0 && ready >= nodes {
        ClusterState::Available
    } else {
        ClusterState::Degraded
    }
}

/// Where a report moves a cluster in `state` with these counts (after the report), if
/// anywhere: only AVAILABLE ⇄ DEGRADED follow health.
pub(super) fn health_moves(
    state: ClusterState,
    generation: i64,
    ready: i64,
    nodes: i64,
) -> Option<ClusterState> {
    if !matches!(state, ClusterState::Available | ClusterState::Degraded) {
        return None;
    }
    let want = health(generation, ready, nodes);
    (want != state).then_some(want)
}

/// What a report that is not a liveness report changes.
pub(super) struct ReportStep {
    /// The report's generation.
    pub generation: i64,
    /// It says `ready`.
    pub is_ready: bool,
    /// It is the node's first `ready` on that generation (a convergence to record).
    pub first_ready: bool,
    /// How the cluster's count of nodes ready on its plan moves (-1, 0, +1).
    pub ready_delta: i64,
}

impl ReportStep {
    /// From the node's stored phase and generation and the cluster's generation.
    pub fn new(old_phase: &str, old_gen: i64, cluster_gen: i64, status: &NodeStatus) -> Self {
        let generation = status.generation as i64;
        let is_ready = status.phase == Phase::Ready;
        let was_ready = old_phase == Phase::Ready.as_str();
        let was_good = was_ready && old_gen == cluster_gen;
        let good = is_ready && generation == cluster_gen;
        ReportStep {
            generation,
            is_ready,
            first_ready: is_ready && !(was_ready && old_gen == generation),
            ready_delta: match (was_good, good) {
                (false, true) => 1,
                (true, false) => -1,
                _ => 0,
            },
        }
    }
}

/// The status a node marked lost gets: its last one (or an empty one) with phase
/// `lost` and the silence as its error.
pub(super) fn lost_status(
    stored: Option<&str>,
    generation: i64,
    message: &str,
    node: &str,
) -> Result<NodeStatus, StoreError> {
    let mut st: NodeStatus = match stored {
        Some(s) => {
            serde_json::from_str(s).map_err(|_| StoreError::Corrupt(format!("status of {node}")))?
        }
        None => NodeStatus {
            phase: Phase::Lost,
            generation: generation.max(0) as u64,
            timings: vec![],
            error: None,
            containers: vec![],
            agent_version: String::new(),
            boot: None,
            peer_drains: vec![],
            recipes: vec![],
            disks: vec![],
        },
    };
    st.phase = Phase::Lost;
    st.error = Some(shoal_protocol::NodeFailure {
        reason: shoal_protocol::reason::AGENT_SILENT.to_string(),
        message: message.to_string(),
    });
    Ok(st)
}

/// Whether moving to `to` ends the change in flight (of stored kind `kind`), and how.
pub(super) fn transition_ends_change<'r>(
    kind: Option<&str>,
    to: ClusterState,
    reason: Option<&'r str>,
) -> Option<Result<(), &'r str>> {
    let creating = kind == Some(super::ChangeKind::Create.as_str());
    match to {
        ClusterState::Available if creating => Some(Ok(())),
        ClusterState::Failed if creating => Some(Err(reason.unwrap_or("failed"))),
        ClusterState::Deleting | ClusterState::Deleted => Some(Err("the cluster was deleted")),
        _ => None,
    }
}

/// A node a change adds must take an index the cluster has not given yet.
pub(super) fn check_new_index(n: &NodeRow, next_index: i64) -> Result<(), StoreError> {
    if i64::from(n.index) < next_index {
        return Err(StoreError::Invalid(format!(
            "node {} has index {}, below the cluster's next index {next_index}",
            n.id, n.index
        )));
    }
    Ok(())
}

/// Why a change ended DEGRADED: the first nodes not ready, as (id, phase).
pub(super) fn not_ready_reason(nodes: &[(String, String)]) -> String {
    let names: Vec<String> = nodes
        .iter()
        .map(|(id, phase)| format!("{id} ({phase})"))
        .collect();
    format!("not every node is ready: {}", names.join(", "))
}

/// A report's outcome from the counts a backend read (and moved) in its transaction.
pub(super) fn outcome(
    state: ClusterState,
    generation: i64,
    ready: i64,
    nodes: i64,
    moved: Option<ClusterState>,
    changed: bool,
) -> ReportOutcome {
    ReportOutcome {
        state,
        generation: generation.max(0) as u64,
        ready: ready.max(0) as u32,
        nodes: nodes.max(0) as u32,
        moved,
        changed,
    }
}

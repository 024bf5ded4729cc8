//! Cluster state: the [`Store`] trait every backend implements, and the typed rows that
//! go in and out of it. [`sqlite::SqliteStore`] is the embedded default;
//! [`conformance`] is the suite any implementation must pass.
//!
//! Rules every implementation keeps:
//! - Every call is one transaction; a call that returned `Ok` is durable (on disk, or
//!   wherever the backend keeps it safe).
//! - The store owns the plan's generation: [`Store::publish_plan`] assigns it in the
//!   same transaction that writes the plan, so the document served and the generation
//!   stored never disagree.
//! - State changes are compare-and-set ([`Store::transition`]), so two tasks (or two
//!   coordinators) racing on one cluster cannot undo each other's transition.
//! - Values are typed (blueprint, overlay, plan, params); how they are serialised is
//!   the backend's business, and happens in one place in it.
//! - The store holds secrets (cluster keys, node tokens): `Debug` of a row hides them,
//!   and a backend's files are readable by their owner only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use shoal_protocol::{NodeStatus, Phase, Plan};

use crate::blueprint::Blueprint;
use crate::providers::{ClusterRef, ProviderParams};

pub mod conformance;
pub mod sqlite;

pub use sqlite::SqliteStore;

/// A cluster's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ClusterState {
    /// Recorded, nothing made yet.
    Requested,
    /// VMs being made, agents converging.
    Creating,
    /// Every node reported ready.
    Available,
    /// Creation failed; see the reason. `delete` removes what was made.
    Failed,
    /// Being deleted.
    Deleting,
    /// Gone.
    Deleted,
}

impl ClusterState {
    /// Every state, in the order of a cluster's life.
    pub const ALL: [ClusterState; 6] = [
        ClusterState::Requested,
        ClusterState::Creating,
        ClusterState::Available,
        ClusterState::Failed,
        ClusterState::Deleting,
        ClusterState::Deleted,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Requested => "REQUESTED",
            ClusterState::Creating => "CREATING",
            ClusterState::Available => "AVAILABLE",
            ClusterState::Failed => "FAILED",
            ClusterState::Deleting => "DELETING",
            ClusterState::Deleted => "DELETED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<ClusterState> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plan as stored: the typed plan and the exact JSON document the store holds, which
/// is what the metadata API serves (its generation is the plan's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPlan {
    /// The plan; `plan.generation` is the stored generation.
    pub plan: Plan,
    /// Its JSON, as stored.
    pub json: Bytes,
}

impl StoredPlan {
    /// The plan's generation.
    pub fn generation(&self) -> u64 {
        self.plan.generation
    }
}

/// A stored cluster. `Debug` hides the key.
#[derive(Clone, PartialEq)]
pub struct ClusterRow {
    /// Name.
    pub name: String,
    /// Random id fixed at creation.
    pub uid: String,
    /// Provider name.
    pub provider: String,
    /// State.
    pub state: ClusterState,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// The secret metadata key.
    pub key: String,
    /// Plan generation (0: no plan yet). Assigned by the store.
    pub generation: u64,
    /// The plan, once published.
    pub plan: Option<StoredPlan>,
    /// The blueprint.
    pub blueprint: Blueprint,
    /// Provider parameters.
    pub params: ProviderParams,
    /// Base URL agents use.
    pub metadata_url: String,
    /// Number of nodes.
    pub node_count: u32,
    /// Overlay range.
    pub overlay: Ipv4Net,
    /// VXLAN id.
    pub vni: u32,
    /// DNS domain.
    pub domain: String,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// When it became AVAILABLE.
    pub available_ms: Option<u64>,
}

impl std::fmt::Debug for ClusterRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRow")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("provider", &self.provider)
            .field("state", &self.state)
            .field("generation", &self.generation)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClusterRow {
    /// The provider's handle on this cluster.
    pub fn cluster_ref(&self) -> ClusterRef {
        ClusterRef {
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// A stored node. `Debug` hides the token.
#[derive(Clone, PartialEq)]
pub struct NodeRow {
    /// Node id.
    pub id: String,
    /// Index.
    pub index: u32,
    /// The node's status-write token.
    pub token: String,
    /// Provider's id of the VM.
    pub instance_id: Option<String>,
    /// Private address.
    pub private_ip: Option<Ipv4Addr>,
    /// Provider facts (local: netns, docker socket).
    pub details: BTreeMap<String, String>,
    /// Current phase.
    pub phase: Phase,
    /// The agent's last report.
    pub status: Option<NodeStatus>,
    /// When the VM was requested.
    pub requested_ms: Option<u64>,
    /// When the provider reported it running.
    pub running_ms: Option<u64>,
    /// Last change.
    pub updated_ms: u64,
}

impl std::fmt::Debug for NodeRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRow")
            .field("id", &self.id)
            .field("phase", &self.phase)
            .field("private_ip", &self.private_ip)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What a provider reported of one node's VM ([`Store::set_node_vm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    /// Node id.
    pub node_id: String,
    /// The provider's id of the VM.
    pub instance_id: String,
    /// Private address, once known (an unknown one keeps the stored address).
    pub private_ip: Option<Ipv4Addr>,
    /// Provider facts worth showing.
    pub details: BTreeMap<String, String>,
    /// The VM runs: a pending node becomes `vm-running`, and the time is recorded once.
    pub running: bool,
}

/// How busy a store has been since it opened: transactions committed and the calls in
/// them, so `/metrics` and the benchmarks can show how many writes share a commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed (each one durable write to disk).
    pub commits: u64,
    /// Calls that wrote.
    pub writes: u64,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused.
    #[error("state store: {context}: {message}")]
    Database {
        /// What was being done.
        context: &'static str,
        /// The database's own message.
        message: String,
    },
    /// Preparing the state directory failed.
    #[error("state store: {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A cluster of that name exists.
    #[error("a cluster named {0:?} already exists (delete it first, or pick another name)")]
    Exists(String),
    /// No cluster (or node) of that name.
    #[error("state store: no cluster {0:?}")]
    NotFound(String),
    /// A stored value is unreadable.
    #[error("state store: corrupt value in {0}")]
    Corrupt(String),
    /// A value could not be serialised for storing.
    #[error("state store: cannot serialise {what}: {message}")]
    Serialise {
        /// Which value.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The store's worker is gone (it panicked, or the store was closed).
    #[error("state store: the database worker stopped")]
    Closed,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A store call's future.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Cluster state, wherever it is kept. Methods return boxed futures so the engine can
/// hold `Arc<dyn Store>`; none blocks an async worker.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records a new cluster and its nodes in one transaction. A DELETED cluster of the
    /// same name is replaced; any other is [`StoreError::Exists`].
    fn insert_cluster<'a>(&'a self, c: &'a ClusterRow, nodes: &'a [NodeRow])
        -> StoreFuture<'a, ()>;

    /// One cluster.
    fn cluster<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ClusterRow>>;

    /// Every cluster, by name.
    fn clusters(&self) -> StoreFuture<'_, Vec<ClusterRow>>;

    /// A cluster's nodes, by index.
    fn nodes<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Vec<NodeRow>>;

    /// Moves a cluster to `to`, with `reason` (cleared when `None`), if its state is one
    /// of `from`; returns whether it did. Becoming AVAILABLE records the time once.
    fn transition<'a>(
        &'a self,
        name: &'a str,
        from: &'a [ClusterState],
        to: ClusterState,
        reason: Option<&'a str>,
    ) -> StoreFuture<'a, bool>;

    /// Records what the provider reported of a node's VM.
    fn set_node_vm<'a>(&'a self, cluster: &'a str, vm: &'a VmRecord) -> StoreFuture<'a, ()>;

    /// Stores `plan` as the cluster's next generation, assigning `plan.generation` (the
    /// stored generation plus one) in the same transaction; returns it as stored.
    fn publish_plan<'a>(&'a self, cluster: &'a str, plan: Plan) -> StoreFuture<'a, StoredPlan>;

    /// Records an agent's report (its phase becomes the node's).
    fn set_node_status<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> StoreFuture<'a, ()>;

    /// Commits and writes so far.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

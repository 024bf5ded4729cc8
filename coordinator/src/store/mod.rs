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
//! - Every change of a running cluster (a scale, a repair) is a [`ChangeRow`]: begun
//!   in one transaction with everything it asks for ([`Store::begin_change`]), moved
//!   through steps ([`Store::change_step`]), ended with its outcome
//!   ([`Store::finish_change`]). A restarted coordinator resumes it from its step.
//! - Health follows the agents' reports in the same transaction that records them: a
//!   cluster AVAILABLE or DEGRADED is AVAILABLE exactly when every node reported
//!   `ready` on the current plan ([`Store::record_report`], [`Store::mark_lost`]).
//!   The store keeps the count of such nodes per cluster, so a report costs the same
//!   in a cluster of ten nodes and of ten thousand.
//! - Every state a cluster enters is kept as a [`ClusterEvent`] (the latest
//!   [`MAX_EVENTS`]), so a brief DEGRADED is on record after it is over.
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
pub mod pg;
mod raw;
pub mod sqlite;

pub use pg::PgStore;
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
    /// A change runs: a scale or a repair (AVAILABLE again when every node is ready on
    /// the new plan).
    Updating,
    /// A node is lost, unhealthy or failed; see the reason (AVAILABLE again once every
    /// node reports ready).
    Degraded,
    /// Creation failed; see the reason. `delete` removes what was made.
    Failed,
    /// Being deleted.
    Deleting,
    /// Gone.
    Deleted,
}

impl ClusterState {
    /// Every state, in the order of a cluster's life.
    pub const ALL: [ClusterState; 8] = [
        ClusterState::Requested,
        ClusterState::Creating,
        ClusterState::Available,
        ClusterState::Updating,
        ClusterState::Degraded,
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
            ClusterState::Updating => "UPDATING",
            ClusterState::Degraded => "DEGRADED",
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
    /// Nodes that reported `ready` on the current plan (kept by the store).
    pub ready_nodes: u32,
    /// The index the next node added will get (indexes are never reused).
    pub next_index: u32,
    /// Repair a node lost for longer than this many seconds (`--auto-repair`).
    pub auto_repair_secs: Option<u64>,
    /// The change in flight, if any.
    pub change: Option<u64>,
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
    /// Its host group.
    pub group: String,
    /// The node's status-write token.
    pub token: String,
    /// How many times its VM was replaced (repair): part of the provider's idempotency
    /// key, so a replacement is a new VM.
    pub incarnation: u32,
    /// Being removed by a scale down.
    pub leaving: bool,
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
    /// The plan generation of that report.
    pub generation: u64,
    /// When it first reported `ready` on that generation.
    pub converged_ms: Option<u64>,
    /// When its agent last reported (liveness).
    pub last_seen_ms: Option<u64>,
    /// When it was marked lost.
    pub lost_ms: Option<u64>,
    /// When the VM was requested.
    pub requested_ms: Option<u64>,
    /// When the provider reported it running.
    pub running_ms: Option<u64>,
    /// Last change.
    pub updated_ms: u64,
}

impl NodeRow {
    /// A node as recorded when it is asked for: pending, no VM yet.
    pub fn requested(id: String, index: u32, group: String, token: String, now: u64) -> NodeRow {
        NodeRow {
            id,
            index,
            group,
            token,
            incarnation: 0,
            leaving: false,
            instance_id: None,
            private_ip: None,
            details: BTreeMap::new(),
            phase: Phase::Pending,
            status: None,
            generation: 0,
            converged_ms: None,
            last_seen_ms: None,
            lost_ms: None,
            requested_ms: Some(now),
            running_ms: None,
            updated_ms: now,
        }
    }
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

/// What a change of a running cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// The creation (change 1 of every cluster).
    Create,
    /// Nodes added or removed.
    Scale,
    /// Nodes given new VMs.
    Repair,
}

impl ChangeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Scale => "scale",
            ChangeKind::Repair => "repair",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<ChangeKind> {
        [ChangeKind::Create, ChangeKind::Scale, ChangeKind::Repair]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// What a change asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSpec {
    /// For a person: `workers 2 → 4`, `repair node-1`.
    pub summary: String,
    /// The host group resized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Nodes added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// Nodes removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Nodes given new VMs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repair: Vec<String>,
}

/// A change of a cluster, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    /// 1, 2, … per cluster (1 is the creation).
    pub id: u64,
    /// What kind.
    pub kind: ChangeKind,
    /// What it asks for.
    pub spec: ChangeSpec,
    /// When it was asked for.
    pub asked_ms: u64,
    /// How far it got (the engine's step names); a restart resumes from here.
    pub step: String,
    /// The plan generation that carries it, once published.
    pub generation: Option<u64>,
    /// When that plan was published.
    pub published_ms: Option<u64>,
    /// When it ended.
    pub done_ms: Option<u64>,
    /// `None` while it runs; `Some(Ok)` done, `Some(Err(why))` failed.
    pub outcome: Option<Result<(), String>>,
}

/// A change to begin ([`Store::begin_change`]).
#[derive(Debug, Clone)]
pub struct NewChange {
    /// What kind.
    pub kind: ChangeKind,
    /// What it asks for.
    pub spec: ChangeSpec,
    /// When it was asked for.
    pub asked_ms: u64,
    /// Nodes to add (pending, no VM); their indexes must be at least the cluster's
    /// `next_index`, which moves past them.
    pub add: Vec<NodeRow>,
    /// Nodes to mark leaving.
    pub leaving: Vec<String>,
    /// Nodes to give a new VM, with their new token: each becomes pending, its VM facts
    /// and reports forgotten, its incarnation one more.
    pub replace: Vec<(String, String)>,
}

/// A published generation and when each node converged to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRow {
    /// The generation.
    pub generation: u64,
    /// When it was published.
    pub published_ms: u64,
    /// The change it carried, if any.
    pub change: Option<u64>,
    /// (node, when it first reported ready on it), by node index.
    pub converged: Vec<(String, u64)>,
}

/// A state a cluster entered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// When.
    pub at_ms: u64,
    /// The state entered.
    pub state: ClusterState,
    /// Why, when there is a reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A cluster's record of changes: what [`Store::history`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Every change, oldest first.
    pub changes: Vec<ChangeRow>,
    /// Every published generation kept, oldest first.
    pub generations: Vec<GenerationRow>,
    /// The states it entered, oldest first (the latest [`MAX_EVENTS`]).
    pub events: Vec<ClusterEvent>,
}

/// The most events kept per cluster.
pub const MAX_EVENTS: u64 = 500;
/// How many past generations keep their per-node convergence times.
pub const KEPT_GENERATIONS: u64 = 50;

/// What recording a report did: the cluster's state and counts after it, in the same
/// transaction, so the engine needs no further read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    /// The cluster's state after the report.
    pub state: ClusterState,
    /// Its plan generation.
    pub generation: u64,
    /// Nodes ready on that generation.
    pub ready: u32,
    /// Nodes.
    pub nodes: u32,
    /// The state the report moved the cluster to (AVAILABLE ⇄ DEGRADED), if it did.
    pub moved: Option<ClusterState>,
    /// False when the report was the one already stored (a liveness report): only the
    /// node's last-seen time was written, nothing a view shows.
    pub changed: bool,
}

impl ReportOutcome {
    /// Every node is ready on the current plan.
    pub fn all_ready(&self) -> bool {
        self.generation > 0 && self.ready >= self.nodes
    }
}

/// A node whose agent has been silent ([`Store::silent_nodes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentNode {
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub node: String,
    /// When it last reported.
    pub last_seen_ms: u64,
}

/// A report's fingerprint (FNV-1a, 64 bits, over its JSON; as an `i64` for SQL): the
/// same report sent again, as resident agents do to show they are alive, has the same
/// one, so a store can record just the time it was seen.
pub fn status_fingerprint(json: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Why a cluster in AVAILABLE or DEGRADED is DEGRADED, from the report that made it so.
pub fn degraded_reason(node: &str, status: &NodeStatus) -> String {
    match &status.error {
        Some(e) => format!("{node} {}: {}: {}", status.phase, e.reason, e.message),
        None => format!("{node} {}", status.phase),
    }
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
    /// A call asked for something the store's rules forbid (a bug in the caller).
    #[error("state store: {0}")]
    Invalid(String),
    /// A value could not be serialised for storing.
    #[error("state store: cannot serialise {what}: {message}")]
    Serialise {
        /// Which value.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The database was made by a newer Shoal.
    #[error("state store: the database's schema is version {found}, newer than this shoal understands ({supported}): upgrade shoal, or point it at another database")]
    SchemaTooNew {
        /// The version found.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The store's worker is gone (it panicked, or the store was closed).
    #[error("state store: the database worker stopped")]
    Closed,
}

/// Which store a coordinator keeps its state in (`serve --store`). `Debug` shows no
/// password.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// SQLite in the state directory (the default).
    Sqlite,
    /// A PostgreSQL database, shared by every coordinator pointed at it.
    Postgres(Box<pg::DbUrl>),
}

impl StoreChoice {
    /// `None` or `sqlite`: SQLite; a `postgres://` URL: that database.
    pub fn parse(s: Option<&str>) -> Result<StoreChoice, StoreError> {
        match s.map(str::trim) {
            None | Some("") | Some("sqlite") => Ok(StoreChoice::Sqlite),
            Some(url) if pg::DbUrl::is_postgres(url) => {
                Ok(StoreChoice::Postgres(Box::new(pg::DbUrl::parse(url)?)))
            }
            Some(_) => Err(StoreError::Invalid(
                "--store takes `sqlite` or a postgres://USER:PASSWORD@HOST:PORT/DATABASE URL (better given in SHOAL_STORE_URL, which ps does not show)".into(),
            )),
        }
    }

    /// Opens the store (SQLite in `state_dir`).
    pub async fn open(
        &self,
        state_dir: &std::path::Path,
    ) -> Result<std::sync::Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreChoice::Sqlite => std::sync::Arc::new(SqliteStore::open(state_dir)?),
            StoreChoice::Postgres(url) => std::sync::Arc::new(PgStore::open(url).await?),
        })
    }
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
    /// Records a new cluster and its nodes in one transaction, with its creation as
    /// change 1 (in flight) and its first event. A DELETED cluster of the same name is
    /// replaced; any other is [`StoreError::Exists`].
    fn insert_cluster<'a>(&'a self, c: &'a ClusterRow, nodes: &'a [NodeRow])
        -> StoreFuture<'a, ()>;

    /// One cluster.
    fn cluster<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ClusterRow>>;

    /// Every cluster, by name.
    fn clusters(&self) -> StoreFuture<'_, Vec<ClusterRow>>;

    /// A cluster's nodes, by index.
    fn nodes<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Vec<NodeRow>>;

    /// Moves a cluster to `to`, with `reason` (cleared when `None`), if its state is one
    /// of `from`; returns whether it did, and records the event. Becoming AVAILABLE
    /// records the time once; leaving creation (to AVAILABLE or FAILED) ends the
    /// creation's change.
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
    /// stored generation plus one) in the same transaction; records the generation (and
    /// on the change in flight, if any, that it carries it); returns it as stored. No
    /// node is ready on the new generation yet.
    fn publish_plan<'a>(&'a self, cluster: &'a str, plan: Plan) -> StoreFuture<'a, StoredPlan>;

    /// Records an agent's report, its liveness and, when it is `ready` on a generation
    /// for the first time, when it converged; a cluster AVAILABLE or DEGRADED becomes
    /// AVAILABLE when every node is ready on the current plan, DEGRADED (with
    /// [`degraded_reason`]) otherwise. Returns the cluster's state and counts. A report
    /// identical to the one stored (an agent's liveness report: [`status_fingerprint`]
    /// says) writes only the time it was seen.
    fn record_report<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> StoreFuture<'a, ReportOutcome>;

    /// Nodes of clusters AVAILABLE, DEGRADED or UPDATING whose agent has reported, but
    /// not since `before_ms`, and that are not lost or leaving: at most `limit`.
    fn silent_nodes(&self, before_ms: u64, limit: usize) -> StoreFuture<'_, Vec<SilentNode>>;

    /// Marks a node lost (reason [`shoal_protocol::reason::AGENT_SILENT`], `message`) if
    /// it has still not reported since `before_ms` (compare-and-set); an AVAILABLE
    /// cluster becomes DEGRADED. `None` if the node reported meanwhile or is gone.
    fn mark_lost<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        before_ms: u64,
        message: &'a str,
    ) -> StoreFuture<'a, Option<ReportOutcome>>;

    /// Nodes lost for longer than their cluster's auto-repair delay, in DEGRADED
    /// clusters with no change in flight, as (cluster, node).
    fn due_repairs(&self, now_ms: u64) -> StoreFuture<'_, Vec<(String, String)>>;

    /// Begins a change if the cluster's state is one of `from` and no change is in
    /// flight: the cluster becomes UPDATING, the change is recorded (its id returned),
    /// and its nodes added, marked leaving or reset for a new VM, all in one
    /// transaction. `None` (nothing changed) if the state did not match.
    fn begin_change<'a>(
        &'a self,
        cluster: &'a str,
        from: &'a [ClusterState],
        change: &'a NewChange,
    ) -> StoreFuture<'a, Option<u64>>;

    /// Records how far change `id` got.
    fn change_step<'a>(&'a self, cluster: &'a str, id: u64, step: &'a str) -> StoreFuture<'a, ()>;

    /// Marks nodes leaving, or no longer leaving.
    fn set_leaving<'a>(
        &'a self,
        cluster: &'a str,
        nodes: &'a [String],
        leaving: bool,
    ) -> StoreFuture<'a, ()>;

    /// Removes nodes (and their convergence times); absent ones are ignored.
    fn remove_nodes<'a>(&'a self, cluster: &'a str, nodes: &'a [String]) -> StoreFuture<'a, ()>;

    /// Ends change `id` with its outcome; an UPDATING cluster becomes AVAILABLE if every
    /// node is ready on the current plan, else DEGRADED (with the failure, if any, as
    /// reason). Returns the cluster's state after it.
    fn finish_change<'a>(
        &'a self,
        cluster: &'a str,
        id: u64,
        outcome: Result<(), &'a str>,
    ) -> StoreFuture<'a, ClusterState>;

    /// The changes, generations and state events of a cluster.
    fn history<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, History>;

    /// Commits and writes so far.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// What other coordinators on the same database change, as they commit it. `None`
    /// for a store that only this process writes (SQLite).
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        None
    }

    /// Takes, or renews, the lease to drive provisioning for `ttl_ms`, for `holder`
    /// (compare-and-set: only when it is free, expired or already `holder`'s); returns
    /// the lease as it stands after the call, whoever holds it. `None` for a store
    /// that only this process uses: it always leads.
    fn lease<'a>(&'a self, holder: &'a str, ttl_ms: u64) -> StoreFuture<'a, Option<Lease>> {
        let _ = (holder, ttl_ms);
        Box::pin(async { Ok(None) })
    }
}

/// A change another coordinator committed ([`Store::notices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// This cluster changed.
    Cluster(String),
    /// Notices may have been missed (the listener connected again): check every
    /// cluster.
    Resync,
}

/// Who drives provisioning, until when ([`Store::lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The coordinator holding it.
    pub holder: String,
    /// When it expires unless renewed (the database's clock, milliseconds since the
    /// epoch).
    pub expires_ms: u64,
    /// The database's clock when it was read.
    pub now_ms: u64,
    /// Since when `holder` has held it.
    pub since_ms: u64,
}

//! The cluster life cycle: REQUESTED → CREATING → AVAILABLE or FAILED; AVAILABLE ⇄
//! UPDATING (a scale or a repair, [`change`]) and AVAILABLE ⇄ DEGRADED (a node lost or
//! unhealthy, kept by the store from the reports); DELETING → DELETED. Every transition
//! is written to the store before anything is done about it, so a restarted coordinator
//! resumes where it stopped ([`Engine::reconcile`]); every provider call is idempotent,
//! so resuming never makes a VM twice.
//!
//! The engine owns the store, the plans being served ([`PlanHub`]), the providers and
//! the tasks driving clusters; the listeners reach it only through its methods and
//! through the narrow [`MetadataState`] it hands the metadata router.

pub mod change;
pub mod changes;
mod error;
pub mod lead;
mod liveness;
pub mod planner;
pub mod request;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use shoal_protocol::{
    AgentConfig, LivenessPlan, NodeStatus, Phase, Plan, DEFAULT_AGENT_DEADLINE_SECS,
};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use self::changes::Watched;
pub use self::error::EngineError;
use self::planner::PlannedNode;
pub use self::request::{
    dry_run_plan, validate_request, CreateRequest, RepairRequest, ScaleRequest, ValidRequest,
};
use crate::keys;
use crate::metadata::{MetadataState, NodeKey, PlanHub, StatusSink};
use crate::metrics::{Metrics, Snapshot};
use crate::providers::registry::Registry;
use crate::providers::{NodeInfo, Provider, ProviderError, VmState};
use crate::store::{
    now_ms, ClusterRow, ClusterState, NodeRow, Store, StoreError, StoredPlan, VmRecord,
};
use crate::userdata;

/// How long listing the VMs of a failed creation may take: the provider may be what
/// failed, and the cluster should go FAILED soon.
const LEFTOVER_DESCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// States a creation is in flight in.
const CREATING: &[ClusterState] = &[ClusterState::Requested, ClusterState::Creating];
/// States from which every node's `ready` makes a cluster AVAILABLE (a FAILED one
/// recovers when its agents get there after all).
const SETTLING: &[ClusterState] = &[ClusterState::Creating, ClusterState::Failed];
/// States a deletion may start from: all but DELETED.
const DELETABLE: &[ClusterState] = &[
    ClusterState::Requested,
    ClusterState::Creating,
    ClusterState::Available,
    ClusterState::Updating,
    ClusterState::Degraded,
    ClusterState::Failed,
    ClusterState::Deleting,
];

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Metadata base URL for providers that do not know one (clouds).
    pub advertise_url: Option<String>,
    /// PEM of the metadata listener's CA, sent to agents.
    pub ca_cert_pem: Option<String>,
    /// How long a creation may take before the cluster is FAILED.
    pub create_timeout: Duration,
    /// How long agents keep trying to reach the coordinator.
    pub agent_deadline_secs: u64,
    /// How often resident agents report when nothing changes (the plan's liveness
    /// contract); `None`: only on changes, and no node is ever marked lost.
    pub report_secs: Option<u32>,
    /// The silence after which a node is marked lost.
    pub lost_after: Duration,
}

/// Default seconds between liveness reports.
pub const DEFAULT_REPORT_SECS: u32 = 5;
/// Default silence before a node is lost: four report intervals.
pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(20);

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            advertise_url: None,
            ca_cert_pem: None,
            create_timeout: Duration::from_secs(900),
            agent_deadline_secs: DEFAULT_AGENT_DEADLINE_SECS,
            report_secs: Some(DEFAULT_REPORT_SECS),
            lost_after: DEFAULT_LOST_AFTER,
        }
    }
}

/// What a change in flight waits for, per cluster: the generation on which every node
/// was last seen ready, and a nudge on every report that may end a drain.
#[derive(Debug)]
struct Signals {
    ready: watch::Sender<u64>,
    nudge: Notify,
}

/// The engine: store, served plans, providers, and the tasks driving clusters.
#[derive(Debug)]
pub struct Engine {
    store: Arc<dyn Store>,
    /// The same store as `store`, typed so its change counter can be subscribed to.
    watched: Arc<Watched>,
    hub: Arc<PlanHub>,
    metrics: Arc<Metrics>,
    providers: Registry,
    settings: EngineSettings,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    signals: Mutex<HashMap<String, Arc<Signals>>>,
    /// When this engine started: nobody is marked lost before it has had time to hear
    /// from every agent.
    started: Instant,
    /// This coordinator's id in the store's lease.
    instance: String,
    /// It holds the lease: it drives provisioning ([`lead`]).
    leading: std::sync::atomic::AtomicBool,
}

/// `host-pid-random`: tells coordinators apart in the lease and in `doctor`.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{}", std::process::id(), keys::random_hex(3))
}

fn node_keys(nodes: &[NodeRow]) -> Vec<NodeKey> {
    nodes
        .iter()
        .map(|n| NodeKey {
            node: n.id.clone(),
            token: n.token.clone(),
        })
        .collect()
}

impl Engine {
    /// Builds an engine over `store` and starts serving the plans of every cluster not
    /// DELETED.
    pub async fn new(
        store: Arc<dyn Store>,
        providers: Registry,
        settings: EngineSettings,
    ) -> Result<Arc<Engine>, StoreError> {
        let hub = Arc::new(PlanHub::default());
        for c in store.clusters().await? {
            if c.state == ClusterState::Deleted {
                continue;
            }
            let nodes = store.nodes(&c.name).await?;
            hub.register(&c.key, &c.name, node_keys(&nodes));
            if let Some(plan) = &c.plan {
                hub.publish(&c.key, plan.generation(), plan.json.clone());
            }
        }
        let watched = Arc::new(Watched::new(store));
        Ok(Arc::new(Engine {
            store: watched.clone(),
            watched,
            hub,
            metrics: Arc::default(),
            providers,
            settings,
            tasks: Mutex::new(HashMap::new()),
            signals: Mutex::new(HashMap::new()),
            started: Instant::now(),
            instance: instance_id(),
            // Until `start_leading` asks the store: a store without a lease is led by
            // its only user.
            leading: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    fn signals(&self, cluster: &str) -> Arc<Signals> {
        let mut map = match self.signals.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(cluster.to_string())
            .or_insert_with(|| {
                Arc::new(Signals {
                    ready: watch::channel(0).0,
                    nudge: Notify::new(),
                })
            })
            .clone()
    }

    /// The liveness contract agents are given in the plan.
    fn liveness(&self) -> Option<LivenessPlan> {
        self.settings
            .report_secs
            .map(|report_secs| LivenessPlan { report_secs })
    }

    /// What the metadata router needs: the plans, where reports go, the counters.
    pub fn metadata_state(self: &Arc<Self>) -> MetadataState {
        MetadataState {
            hub: self.hub.clone(),
            sink: self.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// A counter that moves whenever the state of some cluster or node changed: wait on
    /// it (`changed().await`), then read what you show. Many writes between two waits
    /// are seen as one change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.watched.subscribe()
    }

    /// The coordinator's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The gauges `/metrics` reads at scrape time: clusters by state, nodes by phase,
    /// long-polls held, the store's commits.
    pub async fn metrics_snapshot(&self) -> Result<Snapshot, EngineError> {
        let mut snap = Snapshot {
            long_polls: self.hub.waiting(),
            store: self.store.stats(),
            ..Snapshot::default()
        };
        for c in self.store.clusters().await? {
            snap.count_cluster(c.state);
            if c.state == ClusterState::Deleted {
                continue;
            }
            for n in self.store.nodes(&c.name).await? {
                snap.count_node(n.phase);
            }
        }
        Ok(snap)
    }

    fn provider(&self, name: &str) -> Result<Arc<dyn Provider>, EngineError> {
        self.providers
            .get(name)
            .map_err(|u| EngineError::ProviderUnavailable {
                name: u.name,
                why: u.why,
            })
    }

    /// Every cluster, by name.
    pub async fn clusters(&self) -> Result<Vec<ClusterRow>, EngineError> {
        Ok(self.store.clusters().await?)
    }

    /// One cluster and its nodes.
    pub async fn cluster(&self, name: &str) -> Result<(ClusterRow, Vec<NodeRow>), EngineError> {
        let c = self
            .store
            .cluster(name)
            .await?
            .ok_or_else(|| EngineError::NotFound(name.to_string()))?;
        let nodes = self.store.nodes(name).await?;
        Ok((c, nodes))
    }

    /// A cluster's changes, generations and state events.
    pub async fn history(&self, name: &str) -> Result<crate::store::History, EngineError> {
        Ok(self.store.history(name).await?)
    }

    /// Adds to a cluster's view what its provider knows of each VM right now (the local
    /// provider: restarts of each VM's dockerd and agent). No cloud call.
    pub fn add_live_details(&self, c: &ClusterRow, v: &mut crate::view::ClusterView) {
        let Ok(provider) = self.provider(&c.provider) else {
            return;
        };
        let cref = c.cluster_ref();
        for n in &mut v.nodes {
            n.details.extend(provider.live_details(&cref, &n.id));
        }
    }

    /// Reboots a node's VM: its OS starts again and its agent converges it at boot.
    pub async fn reboot(&self, name: &str, node: &str) -> Result<(), EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        if !nodes.iter().any(|n| n.id == node) {
            return Err(EngineError::Unprocessable {
                code: "unknown-node",
                message: format!(
                    "cluster {name} has no node {node:?} (its nodes are {})",
                    nodes
                        .iter()
                        .map(|n| n.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if matches!(c.state, ClusterState::Deleting | ClusterState::Deleted) {
            return Err(EngineError::Conflict(format!(
                "cluster {name} is {}",
                c.state
            )));
        }
        let provider = self.provider(&c.provider)?;
        tracing::info!(cluster = %name, %node, "rebooting a VM");
        self.metrics
            .provider_call(
                provider.name(),
                "reboot_node",
                provider.reboot_node(&c.cluster_ref(), &c.params, node),
            )
            .await?;
        Ok(())
    }

    /// Records a new cluster and starts creating it.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateRequest,
    ) -> Result<(ClusterRow, Vec<NodeRow>), EngineError> {
        let ValidRequest { blueprint, overlay } = validate_request(&req)?;
        let provider = self.provider(&req.provider)?;
        let metadata_url = provider
            .metadata_url()
            .or_else(|| self.settings.advertise_url.clone())
            .ok_or_else(|| {
                EngineError::BadRequest(format!(
                    "the {} provider's VMs need to reach this coordinator: start `shoal serve` with --advertise-url URL",
                    provider.name()
                ))
            })?;
        if blueprint.max_disks() > provider.max_disks() {
            return Err(EngineError::BadRequest(format!(
                "the blueprint asks for {} data disk(s) per node; the {} provider attaches {}",
                blueprint.max_disks(),
                provider.name(),
                match provider.max_disks() {
                    0 => "none".to_string(),
                    n => format!("at most {n}"),
                }
            )));
        }
        // Before anything is recorded: a VM that cannot get its images fails minutes later.
        provider.check_images(&blueprint.images()).await?;
        let mut params = req.params.clone();
        params.exposed_ports = blueprint.exposed_ports();
        let now = now_ms();
        let row = ClusterRow {
            name: req.name.clone(),
            uid: keys::random_hex(6),
            provider: provider.name().to_string(),
            state: ClusterState::Requested,
            reason: None,
            key: keys::random_secret(),
            generation: 0,
            plan: None,
            domain: blueprint.domain.clone(),
            blueprint,
            params,
            metadata_url,
            node_count: req.nodes,
            overlay,
            vni: rand::random_range(1..=0x00ff_ffff),
            created_ms: now,
            updated_ms: now,
            available_ms: None,
            ready_nodes: 0,
            next_index: req.nodes,
            auto_repair_secs: req.auto_repair_secs,
            change: Some(1),
        };
        let groups: Vec<String> = row
            .blueprint
            .assign(req.nodes)?
            .iter()
            .map(|g| g.name.clone())
            .collect();
        let nodes: Vec<NodeRow> = groups
            .into_iter()
            .enumerate()
            .map(|(i, group)| {
                NodeRow::requested(
                    format!("node-{i}"),
                    i as u32,
                    group,
                    keys::random_secret(),
                    now,
                )
            })
            .collect();
        self.store.insert_cluster(&row, &nodes).await?;
        self.hub.register(&row.key, &row.name, node_keys(&nodes));
        tracing::info!(cluster = %row.name, provider = %row.provider, nodes = req.nodes, "cluster requested");
        self.spawn_create(&row.name);
        Ok((row, nodes))
    }

    fn spawn_task(&self, name: &str, task: JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            if let Some(old) = tasks.insert(name.to_string(), task) {
                old.abort();
            }
        }
    }

    fn spawn_create(self: &Arc<Self>, name: &str) {
        // A follower records requests; the leader hears of them and drives them.
        if !self.leads() {
            return;
        }
        let engine = self.clone();
        let n = name.to_string();
        let task = tokio::spawn(async move {
            let timeout = engine.settings.create_timeout;
            let result = match tokio::time::timeout(timeout, engine.drive_create(&n)).await {
                Ok(r) => r,
                Err(_) => Err(EngineError::Timeout(format!(
                    "the provider did not deliver every VM within {}s",
                    timeout.as_secs()
                ))),
            };
            if let Err(e) = result {
                if !matches!(e, EngineError::Provider(ProviderError::Config { .. })) {
                    engine.record_leftovers(&n).await;
                }
                engine.fail(&n, &e.to_string()).await;
            }
        });
        self.spawn_task(name, task);
        self.spawn_watchdog(name, None);
    }

    /// Fails the cluster if it is still being created after the creation timeout: its
    /// agents never all reported ready. `why` replaces the list of stuck nodes.
    fn spawn_watchdog(self: &Arc<Self>, name: &str, why: Option<&'static str>) {
        if !self.leads() {
            return;
        }
        let engine = self.clone();
        let n = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(engine.settings.create_timeout).await;
            if !engine.leads() {
                return;
            }
            let Ok(Some(c)) = engine.store.cluster(&n).await else {
                return;
            };
            if !CREATING.contains(&c.state) {
                return;
            }
            let reason = match why {
                Some(w) => w.to_string(),
                None => {
                    let stuck = engine
                        .store
                        .nodes(&n)
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|n| n.phase != Phase::Ready)
                        .map(|n| format!("{} ({})", n.id, n.phase))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!(
                        "not every node was ready within {}s: {stuck}",
                        engine.settings.create_timeout.as_secs()
                    )
                }
            };
            engine.fail(&n, &reason).await;
        });
    }

    async fn fail(&self, name: &str, reason: &str) {
        tracing::warn!(cluster = %name, %reason, "cluster failed");
        if let Err(e) = self
            .store
            .transition(name, CREATING, ClusterState::Failed, Some(reason))
            .await
        {
            tracing::error!(cluster = %name, error = %e, "cannot record the failure");
        }
    }

    async fn drive_create(self: &Arc<Self>, name: &str) -> Result<(), EngineError> {
        let Some(c) = self.store.cluster(name).await? else {
            return Ok(());
        };
        if !CREATING.contains(&c.state) {
            return Ok(());
        }
        crate::fault::point("recorded");
        if !self
            .store
            .transition(name, CREATING, ClusterState::Creating, None)
            .await?
        {
            return Ok(());
        }
        let all: Vec<String> = self
            .store
            .nodes(name)
            .await?
            .into_iter()
            .map(|n| n.id)
            .collect();
        self.create_vms(name, &all, "vms-created").await?;
        self.publish_plan(name).await?;
        crate::fault::point("plan-published");
        Ok(())
    }

    fn agent_config(&self, c: &ClusterRow, n: &NodeRow) -> AgentConfig {
        AgentConfig {
            metadata_url: c.metadata_url.clone(),
            cluster_key: c.key.clone(),
            node_id: n.id.clone(),
            node_token: n.token.clone(),
            ca_cert_pem: self.settings.ca_cert_pem.clone(),
            deadline_secs: self.settings.agent_deadline_secs,
        }
    }

    async fn record_vms(&self, name: &str, infos: &[NodeInfo]) -> Result<(), EngineError> {
        for info in infos {
            let mut details = info.details.clone();
            details.insert("vm-state".into(), info.state.as_str().into());
            let vm = VmRecord {
                node_id: info.node_id.clone(),
                instance_id: info.instance_id.clone(),
                private_ip: info.private_ip,
                details,
                running: info.state == VmState::Running,
            };
            self.store.set_node_vm(name, &vm).await?;
        }
        Ok(())
    }

    /// After a failed creation, records the VMs that exist (a provider reports only
    /// complete creations), so `show` lists them, with their state, beside the
    /// failure; `delete` removes them with everything else the cluster owns. Best
    /// effort and bounded: the provider may be what failed.
    async fn record_leftovers(&self, name: &str) {
        let Ok(Some(c)) = self.store.cluster(name).await else {
            return;
        };
        let Ok(provider) = self.provider(&c.provider) else {
            return;
        };
        let cref = c.cluster_ref();
        let described = tokio::time::timeout(
            LEFTOVER_DESCRIBE_TIMEOUT,
            self.metrics.provider_call(
                provider.name(),
                "describe_nodes",
                provider.describe_nodes(&cref, &c.params),
            ),
        )
        .await;
        match described {
            Ok(Ok(infos)) => {
                let left: Vec<NodeInfo> = infos
                    .into_iter()
                    .filter(|i| i.state != VmState::Terminated)
                    .collect();
                if let Err(e) = self.record_vms(name, &left).await {
                    tracing::warn!(cluster = %name, error = %e, "cannot record the VMs left by a failed creation");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(cluster = %name, error = %e, "cannot list the VMs left by a failed creation; `shoal cluster delete` still finds them");
            }
            Err(_) => {
                tracing::warn!(cluster = %name, "listing the VMs left by a failed creation timed out; `shoal cluster delete` still finds them");
            }
        }
    }

    /// Where the operator finds what a cluster owns at its provider (`show`).
    pub fn footprint(&self, c: &ClusterRow) -> Option<String> {
        self.providers
            .get(&c.provider)
            .ok()
            .and_then(|p| p.footprint(&c.cluster_ref(), &c.params))
    }

    /// The plan of the stored nodes (generation 0: the store assigns it).
    fn plan_for(&self, c: &ClusterRow, nodes: &[NodeRow]) -> Result<Plan, EngineError> {
        // A node without a VM (a repair that could not make one) is nobody's peer.
        let mut planned = layout(c, nodes);
        planned.retain(|p| !p.private_ip.is_unspecified());
        Ok(planner::build(
            &c.name,
            &c.blueprint,
            c.overlay,
            c.vni,
            &planned,
            self.liveness(),
        )?)
    }

    /// Builds the plan from the stored nodes; the store assigns its generation, and the
    /// hub serves exactly what was stored.
    async fn publish_plan(&self, name: &str) -> Result<StoredPlan, EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        let plan = self.plan_for(&c, &nodes)?;
        self.publish(&c, plan).await
    }

    async fn publish(&self, c: &ClusterRow, plan: Plan) -> Result<StoredPlan, EngineError> {
        let stored = self.store.publish_plan(&c.name, plan).await?;
        self.hub
            .publish(&c.key, stored.generation(), stored.json.clone());
        tracing::info!(cluster = %c.name, generation = stored.generation(), nodes = stored.plan.nodes.len(), "plan ready");
        Ok(stored)
    }

    /// Publishes the plan of the stored nodes unless the plan served already is that
    /// plan (a change resumed after a crash publishes nothing twice); returns the
    /// generation in force.
    async fn publish_if_changed(&self, name: &str) -> Result<u64, EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        let plan = self.plan_for(&c, &nodes)?;
        if let Some(current) = &c.plan {
            let mut served = current.plan.clone();
            served.generation = 0;
            if served == plan {
                return Ok(current.generation());
            }
        }
        Ok(self.publish(&c, plan).await?.generation())
    }

    /// Records an agent's report and moves the cluster on. Constant work per report:
    /// the store returns the cluster's counts with the write.
    pub async fn on_status(
        &self,
        cluster: &str,
        node: &str,
        status: &NodeStatus,
    ) -> Result<(), EngineError> {
        let outcome = self.store.record_report(cluster, node, status).await?;
        if let Some(moved) = outcome.moved {
            tracing::info!(cluster = %cluster, %node, phase = %status.phase, state = %moved, "cluster health changed");
        }
        match outcome.state {
            ClusterState::Creating | ClusterState::Failed => {
                if status.phase == Phase::Failed && outcome.state == ClusterState::Creating {
                    let (code, message) = status
                        .error
                        .as_ref()
                        .map(|e| (e.reason.as_str(), e.message.as_str()))
                        .unwrap_or(("unknown", "no reason given"));
                    self.fail(cluster, &format!("{node}: {code}: {message}"))
                        .await;
                    return Ok(());
                }
                if outcome.all_ready() {
                    if let Some(c) = self.store.cluster(cluster).await? {
                        self.settle(&c).await?;
                    }
                }
            }
            ClusterState::Updating => {
                let signals = self.signals(cluster);
                if outcome.all_ready() {
                    signals.ready.send_replace(outcome.generation);
                }
                if matches!(status.phase, Phase::Drained | Phase::Failed | Phase::Lost)
                    || !status.peer_drains.is_empty()
                {
                    signals.nudge.notify_waiters();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Marks the cluster AVAILABLE when every node reported `ready` on the current
    /// plan; returns whether it is. Run when a report makes every node ready, and by
    /// [`Engine::reconcile`]: a crash may fall between the last report and this
    /// transition, and agents that are ready do not report again.
    async fn settle(&self, c: &ClusterRow) -> Result<bool, EngineError> {
        if !SETTLING.contains(&c.state) {
            return Ok(c.state == ClusterState::Available);
        }
        let all_ready = c.generation > 0 && c.ready_nodes >= c.node_count;
        if !all_ready {
            return Ok(false);
        }
        crate::fault::point("all-ready");
        if self
            .store
            .transition(&c.name, SETTLING, ClusterState::Available, None)
            .await?
        {
            let elapsed_ms = now_ms().saturating_sub(c.created_ms);
            self.metrics.observe_available(elapsed_ms as f64 / 1000.0);
            tracing::info!(cluster = %c.name, elapsed_ms, "cluster available");
        }
        Ok(true)
    }

    /// Starts deleting a cluster (again, if a previous deletion did not finish).
    pub async fn delete(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<(ClusterRow, Vec<NodeRow>), EngineError> {
        let (c, _) = self.cluster(name).await?;
        if c.state != ClusterState::Deleted
            && self
                .store
                .transition(name, DELETABLE, ClusterState::Deleting, None)
                .await?
        {
            self.spawn_delete(name);
        }
        self.cluster(name).await
    }

    fn spawn_delete(self: &Arc<Self>, name: &str) {
        if !self.leads() {
            return;
        }
        let engine = self.clone();
        let n = name.to_string();
        // A creation still in flight is aborted, and deletion starts once it has
        // stopped: an abort takes effect at the task's next await, and until then it
        // may still be starting a VM's process that a deletion running beside it would
        // miss. Deletion then finds what it made by tags and names.
        let previous = self.tasks.lock().ok().and_then(|mut t| t.remove(name));
        if let Some(p) = &previous {
            p.abort();
        }
        let task = tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            if let Err(e) = engine.drive_delete(&n).await {
                tracing::warn!(cluster = %n, error = %e, "deletion failed; `shoal cluster delete` retries it");
                let _ = engine
                    .store
                    .transition(
                        &n,
                        &[ClusterState::Deleting],
                        ClusterState::Deleting,
                        Some(&format!("deletion failed, retry it: {e}")),
                    )
                    .await;
            }
        });
        self.spawn_task(name, task);
    }

    async fn drive_delete(&self, name: &str) -> Result<(), EngineError> {
        let Some(c) = self.store.cluster(name).await? else {
            return Ok(());
        };
        let provider = self.provider(&c.provider)?;
        let cref = c.cluster_ref();
        crate::fault::point("deleting");
        self.metrics
            .provider_call(
                provider.name(),
                "delete_cluster",
                provider.delete_cluster(&cref, &c.params),
            )
            .await?;
        self.hub.remove(&c.key);
        self.store
            .transition(name, &[ClusterState::Deleting], ClusterState::Deleted, None)
            .await?;
        tracing::info!(cluster = %name, "cluster deleted");
        Ok(())
    }

    /// Resumes every cluster in flight: after a restart, creations continue and
    /// deletions finish.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), EngineError> {
        if !self.leads() {
            return Ok(());
        }
        for c in self.store.clusters().await? {
            self.resume(&c, true).await;
        }
        Ok(())
    }

    /// Resumes `c` if it is in flight; `restarted`: nobody drove it for a while (a
    /// restart, a takeover), so a creation awaiting only reports gets a watchdog.
    async fn resume(self: &Arc<Self>, c: &ClusterRow, restarted: bool) {
        if self.drives(&c.name) {
            return;
        }
        match c.state {
            ClusterState::Requested | ClusterState::Creating => {
                tracing::info!(cluster = %c.name, "resuming creation");
                if c.plan.is_some() {
                    // VMs and plan exist: only the agents' reports are awaited.
                    // They may all be in already, the crash having come before
                    // the cluster was marked AVAILABLE.
                    match self.settle(c).await {
                        Ok(true) => {}
                        Ok(false) if restarted => self.spawn_watchdog(
                            &c.name,
                            Some("not every node was ready in time after a coordinator restart"),
                        ),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(cluster = %c.name, error = %e, "cannot settle a cluster")
                        }
                    }
                } else {
                    self.spawn_create(&c.name);
                }
            }
            ClusterState::Deleting => {
                tracing::info!(cluster = %c.name, "resuming deletion");
                self.spawn_delete(&c.name);
            }
            ClusterState::Updating => {
                tracing::info!(cluster = %c.name, change = ?c.change, "resuming a change");
                self.spawn_change(&c.name);
            }
            _ => {}
        }
    }

    /// The user-data of one node, as its VM received it.
    pub async fn user_data(&self, name: &str, node: &str) -> Result<String, EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        let n = nodes.iter().find(|n| n.id == node).ok_or_else(|| {
            EngineError::NotFound(format!(
                "{name}/{node} (its nodes are {})",
                nodes
                    .iter()
                    .map(|n| n.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(userdata::render(&self.agent_config(&c, n)))
    }

    /// The metadata URL cloud VMs are told (`shoal serve --advertise-url`).
    pub fn advertise_url(&self) -> Option<&str> {
        self.settings.advertise_url.as_deref()
    }

    /// Names of the providers, usable or not, with why not.
    pub fn providers(&self) -> Vec<(String, Option<String>)> {
        self.providers.list()
    }

    /// Lets the providers release what they hold (the coordinator is stopping).
    pub async fn shutdown(&self) {
        self.providers.shutdown().await;
    }
}

/// The stored nodes as the planner takes them. Nodes recorded before groups were stored
/// (an older coordinator's) get the group a creation would have given their position.
fn layout(c: &ClusterRow, nodes: &[NodeRow]) -> Vec<PlannedNode> {
    let assigned: Vec<String> = c
        .blueprint
        .assign(nodes.len() as u32)
        .map(|g| g.iter().map(|g| g.name.clone()).collect())
        .unwrap_or_default();
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| PlannedNode {
            private_ip: n.private_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            id: n.id.clone(),
            index: n.index,
            group: if n.group.is_empty() {
                assigned.get(i).cloned().unwrap_or_default()
            } else {
                n.group.clone()
            },
            leaving: n.leaving,
            instance_id: n.instance_id.clone(),
            disk_ids: match n.details.get(crate::providers::DISKS_DETAIL) {
                Some(d) => d
                    .split('\n')
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
                None => {
                    let group = if n.group.is_empty() {
                        assigned.get(i).map(String::as_str).unwrap_or_default()
                    } else {
                        n.group.as_str()
                    };
                    let count = c
                        .blueprint
                        .group(group)
                        .and_then(|g| g.disks)
                        .map_or(0, |d| d.count);
                    crate::providers::fixed_disk_ids(&c.provider, count)
                }
            },
        })
        .collect()
}

impl StatusSink for Engine {
    fn report<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.on_status(cluster, node, status)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::providers::local::{LocalProvider, LocalSettings};
    use crate::providers::ProviderParams;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn an_image_missing_from_the_local_image_dir_is_refused_before_anything_is_recorded() {
        let dir = std::env::temp_dir().join(format!("shoal-engine-{}", keys::random_hex(4)));
        let local = LocalProvider::new(LocalSettings {
            dir: dir.join("local"),
            prefix: "tx".into(),
            vpc: "10.250.0.0/24".parse().expect("vpc"),
            agent_bin: "/nonexistent/shoal-agent".into(),
            init_bin: "/nonexistent/shoal".into(),
            image_dir: dir.join("images"),
            metadata_port: 8787,
            metadata_scheme: "https".into(),
            shared_images: false,
        })
        .expect("provider");
        let engine = Engine::new(
            Arc::new(SqliteStore::in_memory().expect("store")),
            Registry::new(vec![Arc::new(local)], BTreeMap::new()),
            EngineSettings::default(),
        )
        .await
        .expect("engine");
        let toml = r#"
name = "nope"
[[group]]
name = "all"
count = "rest"
[[group.container]]
name = "app"
image = "registry.example.com/app:1"
"#;
        let e = engine
            .create(CreateRequest {
                name: "x".into(),
                provider: "local".into(),
                nodes: 2,
                blueprint: None,
                blueprint_toml: Some(toml.into()),
                params: ProviderParams::default(),
                auto_repair_secs: None,
            })
            .await
            .expect_err("an image the VMs cannot get");
        assert!(
            matches!(&e, EngineError::Provider(ProviderError::ImagesMissing(m)) if m.contains("registry.example.com/app:1") && m.contains("registry.example.com_app_1.tar")),
            "{e:?}"
        );
        assert!(engine.clusters().await.expect("list").is_empty());
        assert!(!dir.join("local").exists(), "the provider made something");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

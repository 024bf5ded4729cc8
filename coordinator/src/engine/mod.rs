//! The cluster life cycle: REQUESTED → CREATING → AVAILABLE or FAILED; DELETING →
//! DELETED. Every transition is written to the store before anything is done about it,
//! so a restarted coordinator resumes where it stopped ([`Engine::reconcile`]); every
//! provider call is idempotent, so resuming never makes a VM twice.
//!
//! The engine owns the store, the plans being served ([`PlanHub`]), the providers and
//! the tasks driving clusters; the listeners reach it only through its methods and
//! through the narrow [`MetadataState`] it hands the metadata router.

pub mod changes;
mod error;
pub mod planner;
pub mod request;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use shoal_protocol::{AgentConfig, NodeStatus, Phase, DEFAULT_AGENT_DEADLINE_SECS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::changes::Watched;
pub use self::error::EngineError;
use self::planner::PlannedNode;
pub use self::request::{dry_run_plan, validate_request, CreateRequest, ValidRequest};
use crate::keys;
use crate::metadata::{MetadataState, NodeKey, PlanHub, StatusSink};
use crate::metrics::{Metrics, Snapshot};
use crate::providers::registry::Registry;
use crate::providers::{NodeInfo, NodeRequest, Provider, ProviderError, VmState};
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
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            advertise_url: None,
            ca_cert_pem: None,
            create_timeout: Duration::from_secs(900),
            agent_deadline_secs: DEFAULT_AGENT_DEADLINE_SECS,
        }
    }
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
        }))
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
        };
        let nodes: Vec<NodeRow> = (0..req.nodes)
            .map(|i| NodeRow {
                id: format!("node-{i}"),
                index: i,
                token: keys::random_secret(),
                instance_id: None,
                private_ip: None,
                details: Default::default(),
                phase: Phase::Pending,
                status: None,
                requested_ms: Some(now),
                running_ms: None,
                updated_ms: now,
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
        let engine = self.clone();
        let n = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(engine.settings.create_timeout).await;
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
        let provider = self.provider(&c.provider)?;
        let cref = c.cluster_ref();
        let nodes = self.store.nodes(name).await?;
        let mut requests = Vec::with_capacity(nodes.len());
        for n in &nodes {
            let cfg = self.agent_config(&c, n);
            requests.push(NodeRequest {
                node_id: n.id.clone(),
                index: n.index,
                user_data: userdata::render_for(provider.name(), &cfg, provider.user_data_limit())?,
            });
        }
        let infos = self
            .metrics
            .provider_call(
                provider.name(),
                "create_nodes",
                provider.create_nodes(&cref, &c.params, &requests),
            )
            .await?;
        crate::fault::point("vms-created");
        self.record_vms(name, &infos).await?;
        // Clouds assign private addresses a little after the call: describe until all are known.
        let mut delay = Duration::from_millis(200);
        loop {
            let nodes = self.store.nodes(name).await?;
            if nodes.iter().all(|n| n.private_ip.is_some()) {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            let infos = self
                .metrics
                .provider_call(
                    provider.name(),
                    "describe_nodes",
                    provider.describe_nodes(&cref, &c.params),
                )
                .await?;
            self.record_vms(name, &infos).await?;
        }
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

    /// Builds the plan from the stored nodes; the store assigns its generation, and the
    /// hub serves exactly what was stored.
    async fn publish_plan(&self, name: &str) -> Result<StoredPlan, EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        let planned: Vec<PlannedNode> = nodes
            .into_iter()
            .map(|n| PlannedNode {
                private_ip: n.private_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                id: n.id,
                index: n.index,
                instance_id: n.instance_id,
            })
            .collect();
        let plan = planner::build(&c.name, &c.blueprint, c.overlay, c.vni, &planned)?;
        let stored = self.store.publish_plan(name, plan).await?;
        self.hub
            .publish(&c.key, stored.generation(), stored.json.clone());
        tracing::info!(cluster = %name, generation = stored.generation(), "plan ready");
        Ok(stored)
    }

    /// Records an agent's report and moves the cluster on.
    pub async fn on_status(
        &self,
        cluster: &str,
        node: &str,
        status: &NodeStatus,
    ) -> Result<(), EngineError> {
        self.store.set_node_status(cluster, node, status).await?;
        let Some(c) = self.store.cluster(cluster).await? else {
            return Ok(());
        };
        if !SETTLING.contains(&c.state) {
            return Ok(());
        }
        if status.phase == Phase::Failed && c.state == ClusterState::Creating {
            let (code, message) = status
                .error
                .as_ref()
                .map(|e| (e.reason.as_str(), e.message.as_str()))
                .unwrap_or(("unknown", "no reason given"));
            self.fail(cluster, &format!("{node}: {code}: {message}"))
                .await;
            return Ok(());
        }
        self.settle(&c).await?;
        Ok(())
    }

    /// Marks the cluster AVAILABLE when every node reported `ready` on the current
    /// plan; returns whether it is. Run on every report, and by [`Engine::reconcile`]:
    /// a crash may fall between the last report and this transition, and agents that
    /// are ready do not report again.
    async fn settle(&self, c: &ClusterRow) -> Result<bool, EngineError> {
        if !SETTLING.contains(&c.state) {
            return Ok(c.state == ClusterState::Available);
        }
        let nodes = self.store.nodes(&c.name).await?;
        let all_ready = c.generation > 0
            && nodes.iter().all(|n| {
                n.phase == Phase::Ready
                    && n.status
                        .as_ref()
                        .is_some_and(|s| s.generation == c.generation)
            });
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
        let engine = self.clone();
        let n = name.to_string();
        // Replacing the task aborts a creation still in flight: deletion finds what it
        // made by tags and names, so nothing it started is left behind.
        let task = tokio::spawn(async move {
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
        for c in self.store.clusters().await? {
            match c.state {
                ClusterState::Requested | ClusterState::Creating => {
                    tracing::info!(cluster = %c.name, "resuming creation");
                    if c.plan.is_some() {
                        // VMs and plan exist: only the agents' reports are awaited.
                        // They may all be in already, the crash having come before
                        // the cluster was marked AVAILABLE.
                        if self.settle(&c).await? {
                            continue;
                        }
                        self.spawn_watchdog(
                            &c.name,
                            Some("not every node was ready in time after a coordinator restart"),
                        );
                    } else {
                        self.spawn_create(&c.name);
                    }
                }
                ClusterState::Deleting => {
                    tracing::info!(cluster = %c.name, "resuming deletion");
                    self.spawn_delete(&c.name);
                }
                _ => {}
            }
        }
        Ok(())
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
            image_dir: dir.join("images"),
            metadata_port: 8787,
            metadata_scheme: "https".into(),
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

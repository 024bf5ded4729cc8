//! The cluster life cycle: REQUESTED → CREATING → AVAILABLE or FAILED; DELETING →
//! DELETED. Every transition is written to the store before anything is done about it,
//! so a restarted coordinator resumes where it stopped ([`Engine::reconcile`]); every
//! provider call is idempotent, so resuming never makes a VM twice.

pub mod planner;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use shoal_protocol::{is_dns_label, AgentConfig, NodeStatus, Phase, DEFAULT_AGENT_DEADLINE_SECS};
use tokio::task::JoinHandle;

use self::planner::{PlannedNode, PlannerError};
use crate::blueprint::{Blueprint, BlueprintError};
use crate::keys;
use crate::metadata::Hub;
use crate::providers::{NodeInfo, NodeRequest, Provider, ProviderError, ProviderParams, VmState};
use crate::store::{now_ms, ClusterRow, ClusterState, NodeRow, Store, StoreError};
use crate::userdata::{self, UserDataError};

/// Most nodes one cluster may have.
pub const MAX_NODES: u32 = 1000;

/// How long listing the VMs of a failed creation may take: the provider may be what
/// failed, and the cluster should go FAILED soon.
const LEFTOVER_DESCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What `POST /v1/clusters` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Cluster name.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// Node count.
    pub nodes: u32,
    /// A built-in blueprint's name (default `demo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blueprint: Option<String>,
    /// A blueprint's TOML text (instead of a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blueprint_toml: Option<String>,
    /// Provider settings.
    #[serde(default)]
    pub params: ProviderParams,
}

/// A creation request that passed [`validate_request`].
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// The blueprint, parsed and checked.
    pub blueprint: Blueprint,
    /// The overlay range.
    pub overlay: Ipv4Net,
}

/// Placeholder underlay addresses for the dry-run plan of [`validate_request`]: the
/// first of these ranges that does not meet the overlay.
const DRY_RUN_UNDERLAYS: [&str; 2] = ["100.64.0.0/10", "198.18.0.0/15"];

/// Checks a creation request without touching any state: name, node count, blueprint
/// (built-in or uploaded), and a dry run of the planner with placeholder addresses, so
/// a request that could never be planned (an overlay too small for the node count, a
/// reference that does not resolve) is refused before any VM is made. Pure: the fuzz
/// target `create_request` runs it.
pub fn validate_request(req: &CreateRequest) -> Result<ValidRequest, EngineError> {
    if !is_dns_label(&req.name) || req.name.len() > 40 {
        return Err(EngineError::BadRequest(format!(
            "cluster name {:?} must be 1 to 40 of a-z, 0-9 and '-', not starting or ending with '-'",
            req.name
        )));
    }
    if req.nodes == 0 || req.nodes > MAX_NODES {
        return Err(EngineError::BadRequest(format!(
            "--nodes must be between 1 and {MAX_NODES}, not {}",
            req.nodes
        )));
    }
    let blueprint = match (&req.blueprint, &req.blueprint_toml) {
        (Some(_), Some(_)) => {
            return Err(EngineError::BadRequest(
                "give a blueprint name or its text, not both".into(),
            ))
        }
        (_, Some(text)) => Blueprint::parse("(uploaded)", text)?,
        (name, None) => {
            let name = name
                .as_deref()
                .unwrap_or(crate::blueprint::DEFAULT_BLUEPRINT);
            Blueprint::built_in(name).ok_or_else(|| {
                EngineError::BadRequest(format!(
                    "no built-in blueprint {name:?} (built-in: demo, ambari); upload a file instead"
                ))
            })??
        }
    };
    blueprint.assign(req.nodes)?;
    let overlay: Ipv4Net = match blueprint.overlay {
        Some(o) => o,
        None => planner::DEFAULT_OVERLAY
            .parse()
            .map_err(|_| EngineError::BadRequest("bad default overlay".into()))?,
    };
    // A request the planner refuses is the operator's to fix (400), not a fault.
    dry_run_plan(&req.name, &blueprint, overlay, req.nodes).map_err(|e| match e {
        EngineError::Planner(p) => EngineError::BadRequest(format!(
            "the blueprint cannot be planned for {} node(s): {p}",
            req.nodes
        )),
        other => other,
    })?;
    Ok(ValidRequest { blueprint, overlay })
}

/// Builds the plan of `nodes` nodes with placeholder addresses outside the overlay.
pub fn dry_run_plan(
    cluster: &str,
    blueprint: &Blueprint,
    overlay: Ipv4Net,
    nodes: u32,
) -> Result<shoal_protocol::Plan, EngineError> {
    let underlay = DRY_RUN_UNDERLAYS
        .iter()
        .filter_map(|r| r.parse::<Ipv4Net>().ok())
        .find(|u| !u.contains(&overlay.network()) && !overlay.contains(&u.network()))
        .ok_or_else(|| EngineError::BadRequest(format!("overlay {overlay} is too large")))?;
    let planned: Vec<PlannedNode> = underlay
        .hosts()
        .take(nodes as usize)
        .enumerate()
        .map(|(i, ip)| PlannedNode {
            id: format!("node-{i}"),
            index: i as u32,
            private_ip: ip,
            instance_id: None,
        })
        .collect();
    Ok(planner::build(cluster, blueprint, overlay, 1, &planned)?)
}

/// An engine failure, shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad request.
    #[error("{0}")]
    BadRequest(String),
    /// No such cluster.
    #[error("no cluster named {0:?}")]
    NotFound(String),
    /// Conflicts with the cluster's state.
    #[error("{0}")]
    Conflict(String),
    /// The provider is not usable here.
    #[error("provider {name} is not available: {why}")]
    ProviderUnavailable {
        /// Provider.
        name: String,
        /// Why.
        why: String,
    },
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Provider.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// User-data.
    #[error(transparent)]
    UserData(#[from] UserDataError),
    /// Blueprint.
    #[error(transparent)]
    Blueprint(#[from] BlueprintError),
    /// Planning.
    #[error(transparent)]
    Planner(#[from] PlannerError),
    /// Timed out.
    #[error("{0}")]
    Timeout(String),
}

/// The engine: store, served plans, providers, and the tasks driving clusters.
#[derive(Debug)]
pub struct Engine {
    /// The store.
    pub store: Arc<Store>,
    /// Plans being served.
    pub hub: Arc<Hub>,
    /// Counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    unavailable: BTreeMap<String, String>,
    settings: EngineSettings,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Engine {
    /// Builds an engine; `unavailable` names providers that cannot run here, and why.
    pub fn new(
        store: Arc<Store>,
        providers: Vec<Arc<dyn Provider>>,
        unavailable: BTreeMap<String, String>,
        settings: EngineSettings,
    ) -> Result<Arc<Engine>, StoreError> {
        let hub = Arc::new(Hub::default());
        for c in store.clusters()? {
            if c.state == ClusterState::Deleted {
                continue;
            }
            hub.register(&c.key, &c.name);
            if let Some(plan) = &c.plan {
                hub.publish(&c.key, c.generation, Bytes::from(plan.clone()));
            }
        }
        Ok(Arc::new(Engine {
            store,
            hub,
            metrics: Arc::default(),
            providers: providers
                .into_iter()
                .map(|p| (p.name().to_string(), p))
                .collect(),
            unavailable,
            settings,
            tasks: Mutex::new(HashMap::new()),
        }))
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Result<Arc<dyn Provider>, EngineError> {
        if let Some(p) = self.providers.get(name) {
            return Ok(p.clone());
        }
        Err(EngineError::ProviderUnavailable {
            name: name.to_string(),
            why: self.unavailable.get(name).cloned().unwrap_or_else(|| {
                format!(
                    "unknown provider (known: {})",
                    self.providers
                        .keys()
                        .chain(self.unavailable.keys())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
        })
    }

    /// Records a new cluster and starts creating it.
    pub fn create(self: &Arc<Self>, req: CreateRequest) -> Result<ClusterRow, EngineError> {
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
            blueprint: serde_json::to_string(&blueprint)
                .map_err(|e| EngineError::BadRequest(e.to_string()))?,
            params,
            metadata_url,
            node_count: req.nodes,
            overlay: overlay.to_string(),
            vni: rand::random_range(1..=0x00ff_ffff),
            domain: blueprint.domain.clone(),
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
                details: BTreeMap::new(),
                phase: Phase::Pending,
                status: None,
                requested_ms: Some(now),
                running_ms: None,
                updated_ms: now,
            })
            .collect();
        self.store.insert_cluster(&row, &nodes)?;
        self.hub.register(&row.key, &row.name);
        tracing::info!(cluster = %row.name, provider = %row.provider, nodes = req.nodes, "cluster requested");
        self.spawn_create(&row.name);
        Ok(row)
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
                engine.fail(&n, &e.to_string());
            }
        });
        self.spawn_task(name, task);
        // The watchdog: agents that never report ready fail the cluster in the end.
        let engine = self.clone();
        let n = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(engine.settings.create_timeout).await;
            if let Ok(Some(c)) = engine.store.cluster(&n) {
                if matches!(c.state, ClusterState::Creating | ClusterState::Requested) {
                    let stuck = engine
                        .store
                        .nodes(&n)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|n| n.phase != Phase::Ready)
                        .map(|n| format!("{} ({})", n.id, n.phase))
                        .collect::<Vec<_>>()
                        .join(", ");
                    engine.fail(
                        &n,
                        &format!(
                            "not every node was ready within {}s: {stuck}",
                            engine.settings.create_timeout.as_secs()
                        ),
                    );
                }
            }
        });
    }

    fn fail(&self, name: &str, reason: &str) {
        tracing::warn!(cluster = %name, %reason, "cluster failed");
        if let Ok(Some(c)) = self.store.cluster(name) {
            if matches!(c.state, ClusterState::Requested | ClusterState::Creating) {
                if let Err(e) = self
                    .store
                    .set_state(name, ClusterState::Failed, Some(reason))
                {
                    tracing::error!(cluster = %name, error = %e, "cannot record the failure");
                }
            }
        }
    }

    async fn drive_create(self: &Arc<Self>, name: &str) -> Result<(), EngineError> {
        let Some(c) = self.store.cluster(name)? else {
            return Ok(());
        };
        if !matches!(c.state, ClusterState::Requested | ClusterState::Creating) {
            return Ok(());
        }
        crate::fault::point("recorded");
        self.store.set_state(name, ClusterState::Creating, None)?;
        let provider = self.provider(&c.provider)?;
        let cref = c.cluster_ref();
        let nodes = self.store.nodes(name)?;
        let mut requests = Vec::with_capacity(nodes.len());
        for n in &nodes {
            let cfg = AgentConfig {
                metadata_url: c.metadata_url.clone(),
                cluster_key: c.key.clone(),
                node_id: n.id.clone(),
                node_token: n.token.clone(),
                ca_cert_pem: self.settings.ca_cert_pem.clone(),
                deadline_secs: self.settings.agent_deadline_secs,
            };
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
        self.record_vms(name, &infos)?;
        // Clouds assign private addresses a little after the call: describe until all are known.
        let mut delay = Duration::from_millis(200);
        loop {
            let nodes = self.store.nodes(name)?;
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
            self.record_vms(name, &infos)?;
        }
        self.publish_plan(name)?;
        crate::fault::point("plan-published");
        Ok(())
    }

    fn record_vms(&self, name: &str, infos: &[NodeInfo]) -> Result<(), EngineError> {
        for info in infos {
            let mut details = info.details.clone();
            details.insert("vm-state".into(), info.state.as_str().into());
            self.store.set_node_vm(
                name,
                &info.node_id,
                &info.instance_id,
                info.private_ip,
                &details,
                info.state == VmState::Running,
            )?;
        }
        Ok(())
    }

    /// After a failed creation, records the VMs that exist (a provider reports only
    /// complete creations), so `show` lists them, with their state, beside the
    /// failure; `delete` removes them with everything else the cluster owns. Best
    /// effort and bounded: the provider may be what failed.
    async fn record_leftovers(&self, name: &str) {
        let Ok(Some(c)) = self.store.cluster(name) else {
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
                if let Err(e) = self.record_vms(name, &left) {
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
            .and_then(|p| p.footprint(&c.cluster_ref(), &c.params))
    }

    /// Builds the plan from the stored nodes and serves it under the next generation.
    fn publish_plan(&self, name: &str) -> Result<u64, EngineError> {
        let c = self
            .store
            .cluster(name)?
            .ok_or_else(|| EngineError::NotFound(name.to_string()))?;
        let blueprint: Blueprint = serde_json::from_str(&c.blueprint)
            .map_err(|_| StoreError::Corrupt(format!("blueprint of {name}")))?;
        let overlay: Ipv4Net = c
            .overlay
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("overlay of {name}")))?;
        let planned: Vec<PlannedNode> = self
            .store
            .nodes(name)?
            .into_iter()
            .map(|n| PlannedNode {
                private_ip: n.private_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                id: n.id,
                index: n.index,
                instance_id: n.instance_id,
            })
            .collect();
        let mut plan = planner::build(&c.name, &blueprint, overlay, c.vni, &planned)?;
        plan.generation = c.generation + 1;
        let json = serde_json::to_string(&plan)
            .map_err(|e| EngineError::BadRequest(format!("serialising the plan: {e}")))?;
        let generation = self.store.set_plan(name, &json)?;
        self.hub.publish(&c.key, generation, Bytes::from(json));
        tracing::info!(cluster = %name, generation, "plan ready");
        Ok(generation)
    }

    /// Records an agent's report and moves the cluster on.
    pub fn on_status(
        &self,
        cluster: &str,
        node: &str,
        status: &NodeStatus,
    ) -> Result<(), EngineError> {
        self.store.set_node_status(cluster, node, status)?;
        let Some(c) = self.store.cluster(cluster)? else {
            return Ok(());
        };
        if !matches!(c.state, ClusterState::Creating | ClusterState::Failed) {
            return Ok(());
        }
        if status.phase == Phase::Failed && c.state == ClusterState::Creating {
            let (code, message) = status
                .error
                .as_ref()
                .map(|e| (e.reason.as_str(), e.message.as_str()))
                .unwrap_or(("unknown", "no reason given"));
            self.fail(cluster, &format!("{node}: {code}: {message}"));
            return Ok(());
        }
        self.settle(cluster)?;
        Ok(())
    }

    /// Marks the cluster AVAILABLE when every node reported `ready` on the current
    /// plan; returns whether it is. Run on every report, and by [`Engine::reconcile`]:
    /// a crash may fall between the last report and this transition, and agents that
    /// are ready do not report again.
    fn settle(&self, cluster: &str) -> Result<bool, EngineError> {
        let Some(c) = self.store.cluster(cluster)? else {
            return Ok(false);
        };
        if !matches!(c.state, ClusterState::Creating | ClusterState::Failed) {
            return Ok(c.state == ClusterState::Available);
        }
        let nodes = self.store.nodes(cluster)?;
        let all_ready = c.generation > 0
            && nodes.iter().all(|n| {
                n.phase == Phase::Ready
                    && n.status
                        .as_ref()
                        .is_some_and(|s| s.generation == c.generation)
            });
        if all_ready {
            crate::fault::point("all-ready");
            self.store
                .set_state(cluster, ClusterState::Available, None)?;
            let elapsed_ms = now_ms().saturating_sub(c.created_ms);
            self.metrics.observe_available(elapsed_ms as f64 / 1000.0);
            tracing::info!(cluster = %cluster, elapsed_ms, "cluster available");
        }
        Ok(all_ready)
    }

    /// Starts deleting a cluster (again, if a previous deletion did not finish).
    pub fn delete(self: &Arc<Self>, name: &str) -> Result<ClusterRow, EngineError> {
        let c = self
            .store
            .cluster(name)?
            .ok_or_else(|| EngineError::NotFound(name.to_string()))?;
        if c.state == ClusterState::Deleted {
            return Ok(c);
        }
        self.store.set_state(name, ClusterState::Deleting, None)?;
        self.spawn_delete(name);
        Ok(self.store.cluster(name)?.unwrap_or(c))
    }

    fn spawn_delete(self: &Arc<Self>, name: &str) {
        let engine = self.clone();
        let n = name.to_string();
        // Replacing the task aborts a creation still in flight: deletion finds what it
        // made by tags and names, so nothing it started is left behind.
        let task = tokio::spawn(async move {
            if let Err(e) = engine.drive_delete(&n).await {
                tracing::warn!(cluster = %n, error = %e, "deletion failed; `shoal cluster delete` retries it");
                let _ = engine.store.set_state(
                    &n,
                    ClusterState::Deleting,
                    Some(&format!("deletion failed, retry it: {e}")),
                );
            }
        });
        self.spawn_task(name, task);
    }

    async fn drive_delete(&self, name: &str) -> Result<(), EngineError> {
        let Some(c) = self.store.cluster(name)? else {
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
        self.store.set_state(name, ClusterState::Deleted, None)?;
        tracing::info!(cluster = %name, "cluster deleted");
        Ok(())
    }

    /// Resumes every cluster in flight: after a restart, creations continue and
    /// deletions finish.
    pub fn reconcile(self: &Arc<Self>) -> Result<(), EngineError> {
        for c in self.store.clusters()? {
            match c.state {
                ClusterState::Requested | ClusterState::Creating => {
                    tracing::info!(cluster = %c.name, "resuming creation");
                    if c.plan.is_some() {
                        // VMs and plan exist: only the agents' reports are awaited.
                        // They may all be in already, the crash having come before
                        // the cluster was marked AVAILABLE.
                        if self.settle(&c.name)? {
                            continue;
                        }
                        self.spawn_watchdog_only(&c.name);
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

    fn spawn_watchdog_only(self: &Arc<Self>, name: &str) {
        let engine = self.clone();
        let n = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(engine.settings.create_timeout).await;
            if let Ok(Some(c)) = engine.store.cluster(&n) {
                if c.state == ClusterState::Creating {
                    engine.fail(
                        &n,
                        "not every node was ready in time after a coordinator restart",
                    );
                }
            }
        });
    }

    /// The user-data of one node, as its VM received it.
    pub fn user_data(&self, name: &str, node: &str) -> Result<String, EngineError> {
        let c = self
            .store
            .cluster(name)?
            .ok_or_else(|| EngineError::NotFound(name.to_string()))?;
        let nodes = self.store.nodes(name)?;
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
        Ok(userdata::render(&AgentConfig {
            metadata_url: c.metadata_url.clone(),
            cluster_key: c.key.clone(),
            node_id: n.id.clone(),
            node_token: n.token.clone(),
            ca_cert_pem: self.settings.ca_cert_pem.clone(),
            deadline_secs: self.settings.agent_deadline_secs,
        }))
    }

    /// The metadata URL cloud VMs are told (`shoal serve --advertise-url`).
    pub fn advertise_url(&self) -> Option<&str> {
        self.settings.advertise_url.as_deref()
    }

    /// Names of the providers, usable or not, with why not.
    pub fn providers(&self) -> Vec<(String, Option<String>)> {
        self.providers
            .keys()
            .map(|k| (k.clone(), None))
            .chain(
                self.unavailable
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone()))),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(nodes: u32, toml: Option<&str>) -> CreateRequest {
        CreateRequest {
            name: "lab".into(),
            provider: "local".into(),
            nodes,
            blueprint: None,
            blueprint_toml: toml.map(String::from),
            params: ProviderParams::default(),
        }
    }

    #[test]
    fn requests_that_could_never_be_planned_are_refused_up_front() {
        assert!(validate_request(&request(3, None)).is_ok());
        // An overlay with no room for the nodes used to be accepted, its VMs made, and
        // the cluster failed only when the plan was built.
        let small = r#"
name = "small"
overlay = "10.77.0.0/24"
[[group]]
name = "all"
count = "rest"
[[group.container]]
name = "c"
image = "busybox:1"
"#;
        let e = validate_request(&request(2, Some(small))).expect_err("too small");
        assert!(e.to_string().contains("room for"), "{e}");
        assert!(matches!(e, EngineError::BadRequest(_)), "{e:?}");
        // The default overlay (a /16) has room for 255 nodes.
        let e = validate_request(&request(999, None)).expect_err("999 nodes");
        assert!(matches!(e, EngineError::BadRequest(_)), "{e:?}");
        // Found by the create_request fuzz target: an overlay with host bits set was
        // accepted, and the plan made from it refused by every agent.
        let host_bits = small.replace("10.77.0.0/24", "10.77.0.5/22");
        let e = validate_request(&request(2, Some(&host_bits))).expect_err("host bits");
        assert!(e.to_string().contains("host bits"), "{e}");
        assert!(validate_request(&request(0, None)).is_err());
        let mut bad = request(1, None);
        bad.name = "../etc".into();
        assert!(validate_request(&bad).is_err());
    }
}

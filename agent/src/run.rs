//! The boot sequence and the resident loop.
//!
//! 1. Read the configuration; report `agent-started`.
//! 2. Long-poll the plan until one is ready. Until then the configured deadline
//!    (`deadline_secs`) runs from the coordinator's last answer (a 204 at the end of a
//!    long-poll is one): past it, even with a request in flight, the agent exits
//!    [`exit::UNREACHABLE`] with what could not be reached.
//! 3. Validate the whole plan and find this node before touching anything; a bad plan
//!    is reported (`plan-invalid`) and the agent waits for a newer one.
//! 4. Converge: network (overlay), images, containers, then the containers' readiness
//!    probes (`probing`); each phase reported with its timing; `ready` at the end, or
//!    `failed` with a stable reason code.
//! 5. Stay resident: converge again on every newer plan, on Docker events that show
//!    something of the cluster was lost (a container died, a daemon restarted), and
//!    after a failure (with backoff); keep trying the containers' readiness probes
//!    ([`crate::liveness`]) and report the node `unhealthy` while one keeps failing.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use shoal_protocol::{
    reason, AgentConfig, ContainerStatus, NodeFailure, NodeStatus, Phase, PhaseTiming, Plan,
    RecipeWhen,
};
use tokio::sync::mpsc;

use crate::client::{FetchError, Fetched, MetadataClient, QUIET_SLACK};
use crate::peer_drain::PeerDrains;
use crate::recipes::Recipes;
use crate::{
    boot_milestones, config, containers, disks, docker, images, liveness, netns, netwatch, overlay,
    probes, retry,
};

/// Exit codes of `shoal-agent run`, documented in docs/agent-exit-codes.md.
pub mod exit {
    /// Clean stop (SIGTERM), or `--once` and the node converged.
    pub const OK: i32 = 0;
    /// Bad command line, or the configuration file is missing or invalid.
    pub const CONFIG: i32 = 2;
    /// The coordinator could not be reached (or kept failing) until the deadline.
    pub const UNREACHABLE: i32 = 3;
    /// The coordinator refused the agent (unknown cluster key: 404; bad node token:
    /// 401/403), or answered with a redirect, which the agent never follows.
    pub const REFUSED: i32 = 4;
    /// The plan failed validation, or does not list this node; nothing was changed
    /// (`--once` only: a resident agent waits for a newer plan).
    pub const PLAN_INVALID: i32 = 5;
    /// The Docker engine could not be reached at boot within its deadline.
    pub const DOCKER: i32 = 6;
    /// Converging the node failed (network, images or containers) (`--once` only: a
    /// resident agent reports it and retries with backoff).
    pub const CONVERGE: i32 = 7;
}

/// Where the agent keeps its own files on a VM.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shoal/agent";

/// Options of `shoal-agent run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Configuration file.
    pub config: PathBuf,
    /// Docker endpoint (`unix:///var/run/docker.sock`).
    pub docker_host: String,
    /// Baked image tarballs.
    pub image_dir: PathBuf,
    /// Converge once and exit instead of staying resident.
    pub once: bool,
    /// The agent's own files on the VM (the containers' hosts files).
    pub state_dir: PathBuf,
    /// Where data disks' mount points are made (`/` on a VM).
    pub mount_root: PathBuf,
}

/// Tries of one status report before it is left to the redelivery (about 1 s).
const REPORT_ATTEMPTS: u32 = 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a convergence failed, or what broke on a converged node: the stable reason and
/// the message.
#[derive(Debug, Clone)]
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }
}

struct Agent {
    cfg: AgentConfig,
    opts: RunOptions,
    client: MetadataClient,
    timings: Vec<PhaseTiming>,
    docker: Option<Docker>,
    converged_once: bool,
    /// The generation this process last brought the node to (ready, or drained), if it
    /// did: later convergences report only what they change.
    converged: Option<u64>,
    /// The generation on which this node's drain hook succeeded.
    drained: Option<u64>,
    /// The drain hooks this node runs for leaving nodes.
    peer: PeerDrains,
    /// The operator's recipes: their outcomes, and the post-ready ones running.
    recipes: Recipes,
    /// The plan being converged to (for the recipes' reports).
    plan: Option<Plan>,
    /// The data disks as last mounted.
    disks: Vec<shoal_protocol::DiskReport>,
    /// The latest report made (delivered or not): sent again as the liveness report.
    latest: Option<NodeStatus>,
    /// The latest report the coordinator did not receive (it was down or overloaded):
    /// sent again with backoff until it is, since the coordinator learns a node is
    /// ready only from its report.
    undelivered: Option<NodeStatus>,
    /// Attempts at delivering `undelivered` so far.
    redeliveries: u32,
    /// The OS's own boot, as last read ([`boot_milestones`]); sent with every report.
    boot: tokio::sync::watch::Receiver<Option<shoal_protocol::BootReport>>,
    /// When the coordinator last received a report: the plan's liveness contract
    /// (`liveness.report_secs`) counts from there.
    delivered_at: tokio::time::Instant,
    /// The configured deadline (`deadline_secs`) while the node has no valid plan: no
    /// request carries the agent further than that past the coordinator's last answer.
    /// `None` once a plan is held: a resident agent keeps trying.
    deadline: Option<Duration>,
    /// What broke on the converged node (reported `unhealthy`) and is being put right:
    /// cleared by the next successful convergence.
    fault: Option<Failure>,
    /// The Docker engine stopped answering after the node converged; nothing is
    /// converged until it is back.
    docker_down: bool,
    /// When the overlay was last rebuilt after a fault, and how many faults in a row
    /// came back within [`REFAULT_WINDOW`] of their rebuild: a device that will not
    /// stay is then rebuilt with backoff, not in a loop.
    net_repaired: Option<tokio::time::Instant>,
    net_refaults: u32,
    /// The containers' probes kept up once the node is ready.
    live: liveness::Liveness,
}

/// A network fault this soon after the previous rebuild counts as the same fault again.
const REFAULT_WINDOW: Duration = Duration::from_secs(2);
/// Network faults in a row rebuilt at once before backoff sets in.
const REFAULTS_AT_ONCE: u32 = 2;
/// How long after its due time a liveness report goes out without waiting any longer
/// for the long-poll to end (see [`crate::client::MetadataClient::wait_for_plan`]): one
/// report interval, at least this. Dropping the poll costs a new connection and TLS
/// handshake, so it is for a poll that hangs (a connection silently gone), not for a
/// coordinator that answers late because it is busy: new handshakes would only add to
/// its load. The node is marked lost after several intervals, so a report this late
/// still counts.
const LIVENESS_GRACE: Duration = Duration::from_secs(3);

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.cfg.node_id)
            .finish()
    }
}

impl Agent {
    /// Closes the running phase's timing and opens `phase`'s.
    fn enter(&mut self, phase: Phase) {
        let now = now_ms();
        if let Some(last) = self.timings.last_mut() {
            if last.duration_ms.is_none() {
                last.duration_ms = Some(now.saturating_sub(last.started_ms));
            }
        }
        // Ready and failed are moments, not spans.
        let duration_ms = matches!(phase, Phase::Ready | Phase::Failed).then_some(0);
        self.timings.push(PhaseTiming {
            phase,
            started_ms: now,
            duration_ms,
        });
        if self.timings.len() > 48 {
            self.timings.drain(..self.timings.len() - 48);
        }
    }

    async fn report(
        &mut self,
        phase: Phase,
        generation: u64,
        error: Option<NodeFailure>,
        containers: Vec<ContainerStatus>,
    ) {
        self.enter(phase);
        let status = NodeStatus {
            phase,
            generation,
            timings: self.timings.clone(),
            error,
            containers,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot: self.boot.borrow_and_update().clone(),
            peer_drains: self.peer.reports(),
            recipes: self.recipes.reports(self.plan.as_ref(), &self.cfg.node_id),
            disks: self.disks.clone(),
        };
        self.deliver(status).await;
    }

    /// Sends the latest report again with the newest boot report and drain outcomes:
    /// the OS's boot goes on (cloud-init's last stage, systemd's end) after the agent
    /// reported ready, and a hook run for a leaving node may end at any time.
    async fn resend_with_boot(&mut self) {
        let Some(mut status) = self.latest.clone() else {
            return;
        };
        status.boot = self.boot.borrow_and_update().clone();
        status.peer_drains = self.peer.reports();
        status.recipes = self.recipes.reports(self.plan.as_ref(), &self.cfg.node_id);
        self.deliver(status).await;
    }

    async fn deliver(&mut self, status: NodeStatus) {
        let phase = status.phase;
        self.latest = Some(status.clone());
        // A few quick tries only: the node's convergence does not wait for the
        // coordinator, and an undelivered report is sent again later (the latest one).
        match self
            .client
            .report_with(&status, REPORT_ATTEMPTS, self.deadline)
            .await
        {
            Ok(()) => {
                self.undelivered = None;
                self.redeliveries = 0;
                self.delivered_at = tokio::time::Instant::now();
            }
            Err(e @ FetchError::Unreachable { .. }) => {
                tracing::warn!(%phase, error = %e, "status report not delivered; it will be sent again");
                // A newer report replaces an older one: only the latest state matters.
                self.undelivered = Some(status);
                self.redeliveries = 0;
            }
            Err(e) => {
                // Refused (401, 404, 400) or redirected: sending it again would be
                // answered the same way.
                tracing::warn!(%phase, error = %e, "status report refused");
                self.undelivered = None;
            }
        }
    }

    /// When to try delivering the undelivered report again.
    fn redeliver_at(&self) -> Option<Duration> {
        self.undelivered
            .as_ref()
            .map(|_| retry::delay(&retry::COORDINATOR, self.redeliveries + 1))
    }

    /// When the liveness report is due under `plan`'s contract: `report_secs` after the
    /// last report delivered, if there is a report to repeat and none waiting to be
    /// delivered (its redelivery shows liveness as well).
    fn liveness_at(&self, plan: Option<&Plan>) -> Option<tokio::time::Instant> {
        let every = plan?.liveness.as_ref()?.report_secs;
        if self.undelivered.is_some() || self.latest.is_none() || every == 0 {
            return None;
        }
        Some(self.delivered_at + Duration::from_secs(u64::from(every)))
    }

    /// Sends the latest report again (the liveness report): the coordinator records
    /// only when it saw it. One try: the next is due an interval later anyway.
    async fn send_liveness(&mut self) {
        let Some(status) = self.latest.clone() else {
            return;
        };
        match self.client.report_with(&status, 1, self.deadline).await {
            Ok(()) => self.delivered_at = tokio::time::Instant::now(),
            Err(e @ FetchError::Unreachable { .. }) => {
                tracing::warn!(error = %e, "liveness report not delivered; it will be sent again");
                self.undelivered = Some(status);
                self.redeliveries = 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "liveness report refused");
                // Not again at once: a refusal would be repeated every loop.
                self.delivered_at = tokio::time::Instant::now();
            }
        }
    }

    /// One more try at the undelivered report.
    async fn redeliver(&mut self) {
        let Some(status) = self.undelivered.clone() else {
            return;
        };
        self.redeliveries = self.redeliveries.saturating_add(1);
        match self.client.report_with(&status, 1, self.deadline).await {
            Ok(()) => {
                tracing::info!(phase = %status.phase, attempts = self.redeliveries, "status report delivered after all");
                self.undelivered = None;
                self.redeliveries = 0;
                self.delivered_at = tokio::time::Instant::now();
            }
            Err(FetchError::Unreachable { .. }) => {}
            Err(e) => {
                tracing::warn!(phase = %status.phase, error = %e, "status report refused");
                self.undelivered = None;
            }
        }
    }

    /// Reports the converged node `unhealthy` with what broke; it stays so until a
    /// convergence succeeds. The containers' last known states are kept in the report.
    async fn report_fault(&mut self, fault: Failure, generation: u64) {
        // What broke is put right first; the probes are tried again once it is.
        self.live.stop();
        tracing::warn!(reason = fault.reason, message = %fault.message, "the node is unhealthy; converging again");
        let error = NodeFailure {
            reason: fault.reason.to_string(),
            message: fault.message.clone(),
        };
        let containers = self
            .latest
            .as_ref()
            .map(|l| l.containers.clone())
            .unwrap_or_default();
        self.fault = Some(fault);
        self.report(Phase::Unhealthy, generation, Some(error), containers)
            .await;
    }

    /// Reports what the liveness probes say of a converged node whose verdict changed:
    /// `unhealthy` (`probe-failed`) while a container's probe keeps failing, `ready`
    /// once every one passes.
    async fn report_liveness(&mut self, generation: u64) {
        let containers = self
            .latest
            .as_ref()
            .map(|l| l.containers.clone())
            .unwrap_or_default();
        match self.live.verdict() {
            Some((container, message)) => {
                tracing::warn!(%container, %message, "the node is unhealthy: a probe keeps failing");
                let error = NodeFailure {
                    reason: reason::PROBE_FAILED.to_string(),
                    message: message.to_string(),
                };
                self.report(Phase::Unhealthy, generation, Some(error), containers)
                    .await;
            }
            None => {
                tracing::info!("every probe passes again; the node is ready");
                self.report(Phase::Ready, generation, None, containers)
                    .await;
            }
        }
    }

    /// Whether Docker's `die` event `exit` is a planned container of this node exiting
    /// on its own (not one the agent replaced or removed: that container is gone, or a
    /// new one has its name): the fault to report.
    async fn exited(&mut self, plan: &Plan, exit: &Exit) -> Option<Failure> {
        let planned = plan
            .node(&self.cfg.node_id)?
            .containers
            .iter()
            .any(|c| c.docker_name() == exit.name);
        if !planned {
            return None;
        }
        let docker = self.docker.clone()?;
        let (id, running) = containers::current(&docker, &exit.name).await.ok()??;
        (id == exit.id).then(|| {
            Failure::new(
                reason::CONTAINER_EXITED,
                format!(
                    "container {} exited with code {} after the node was ready{}",
                    exit.name,
                    exit.code,
                    if running {
                        " (its restart policy started it again)"
                    } else {
                        "; starting it again"
                    }
                ),
            )
        })
    }

    /// Reads the overlay back after a netlink notification: the fault, if part of it is
    /// missing.
    async fn check_overlay(&self, plan: &Plan) -> Option<Failure> {
        if !plan.node_uses_overlay(&self.cfg.node_id) {
            return None;
        }
        let (conn, handle) = match netns::connect() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open netlink to check the overlay");
                return None;
            }
        };
        let task = tokio::spawn(conn);
        let checked = overlay::check(&handle, plan, &self.cfg.node_id).await;
        task.abort();
        match checked {
            Ok(None) => None,
            Ok(Some(what)) => Some(Failure::new(reason::NETWORK_DEVICE_MISSING, what)),
            Err(e) => Some(Failure::new(
                reason::NETWORK_DEVICE_MISSING,
                format!("the overlay cannot be read back: {e}"),
            )),
        }
    }

    async fn docker(&mut self) -> Result<Docker, Failure> {
        if let Some(d) = &self.docker {
            if d.ping().await.is_ok() {
                return Ok(d.clone());
            }
        }
        let host = self.opts.docker_host.clone();
        let policy = retry::Policy::new("connecting to Docker", retry::DOCKER);
        let connected = retry::run(&policy, || async {
            docker::connect(&host).await.map_err(|e| match e {
                // A malformed endpoint stays malformed.
                docker::DockerError::BadHost(_) => retry::Attempt::Fail(e),
                docker::DockerError::Unreachable { .. } => retry::Attempt::retry(e),
            })
        })
        .await;
        match connected {
            Ok(d) => {
                self.docker = Some(d.clone());
                Ok(d)
            }
            Err(e) => Err(Failure::new(reason::DOCKER_UNREACHABLE, e.to_string())),
        }
    }

    /// Where the containers' hosts files live.
    fn hosts_dir(&self) -> PathBuf {
        self.opts.state_dir.join("hosts")
    }

    /// Brings the node to the plan. Nothing is changed before the plan is known valid
    /// and lists this node. `loud` reports each phase as it starts (a first
    /// convergence); otherwise only the outcome is reported.
    async fn converge(&mut self, plan: &Plan, loud: bool) -> Result<Converged, Failure> {
        let node_id = self.cfg.node_id.clone();
        if plan.node(&node_id).is_none() {
            return Err(Failure::new(
                reason::NODE_NOT_IN_PLAN,
                format!(
                    "the plan (generation {}) does not list node {node_id}",
                    plan.generation
                ),
            ));
        }
        let g = plan.generation;
        let docker = self.docker().await?;
        let mut changed = false;

        if loud {
            self.report(Phase::Network, g, None, vec![]).await;
        }
        if plan.node_uses_overlay(&node_id) {
            let (conn, handle) = netns::connect().map_err(|e| {
                Failure::new(reason::NETWORK_FAILED, format!("opening netlink: {e}"))
            })?;
            let task = tokio::spawn(conn);
            let r = overlay::converge(&docker, &handle, plan, &node_id).await;
            task.abort();
            let report = r.map_err(|e| Failure::new(e.reason(), e.to_string()))?;
            if report.changed {
                tracing::info!(?report, "overlay converged");
            }
            changed |= report.changed;
        }

        if loud {
            self.report(Phase::Images, g, None, vec![]).await;
        }
        let wanted = images::wanted(plan, &node_id);
        let report = images::ensure(&docker, &wanted, &self.opts.image_dir)
            .await
            .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
        if !report.loaded.is_empty() || !report.pulled.is_empty() {
            tracing::info!(?report, "images present");
            changed = true;
        }

        // The data disks, mounted before the recipes (which may use them) and the
        // containers (which bind-mount them).
        let mut plan = std::borrow::Cow::Borrowed(plan);
        if let Some(node) = plan.node(&node_id).filter(|n| !n.disks.is_empty()) {
            let mounted = disks::converge(node, &self.opts.mount_root)
                .await
                .map_err(|e| Failure::new(reason::DISK_FAILED, e.to_string()))?;
            let count = mounted.disks.len();
            if mounted.mounted_now > 0 {
                // A boot: what the engine restarted on its own may hold the empty
                // mount points.
                let restarted =
                    containers::restart_disk_users(&docker, &plan, &node_id, &mounted.disks)
                        .await
                        .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
                changed |= !restarted.is_empty();
            }
            self.disks = mounted.disks;
            let root = self.opts.mount_root.clone();
            if let Some(n) = plan.to_mut().nodes.iter_mut().find(|n| n.id == node_id) {
                for c in &mut n.containers {
                    if let Some(dir) = c.data_disks.clone() {
                        c.volumes.extend(disks::volumes(&root, count, &dir));
                    }
                }
            }
        }
        let plan: &Plan = &plan;

        // The operator's own steps come before the containers: a failure leaves them
        // unstarted.
        if let Err(r) = self
            .recipes
            .run_due(plan, &node_id, RecipeWhen::PreContainers)
            .await
        {
            return Err(Failure::new(
                reason::RECIPE_FAILED,
                format!(
                    "recipe {} ({}) {}: {}",
                    r.name,
                    r.when,
                    match r.exit_code {
                        Some(code) => format!("exited with code {code}"),
                        None => "did not run to its end (timeout, or it could not start)".into(),
                    },
                    r.output
                ),
            ));
        }

        if loud {
            self.report(Phase::Containers, g, None, vec![]).await;
        }
        let report = containers::converge(&docker, plan, &node_id, &self.hosts_dir())
            .await
            .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
        if report.changed() {
            tracing::info!(
                created = ?report.created,
                replaced = ?report.replaced,
                removed = ?report.removed,
                started = ?report.started,
                hosts_updated = ?report.hosts_updated,
                "containers converged"
            );
            changed = true;
        }
        // Only a container that (re)started may not answer yet: peers joining or
        // leaving (FDB entries, hosts files) leave a ready node's services as they were.
        let restarted =
            !(report.created.is_empty() && report.replaced.is_empty() && report.started.is_empty());
        if !probes::has_probes(plan, &node_id) || !(loud || restarted) {
            return Ok(Converged {
                statuses: report.statuses,
                changed,
                probed: false,
            });
        }

        // Probed on a first convergence and whenever a container (re)started; a
        // reconvergence that restarted nothing leaves a ready node ready.
        self.report(Phase::Probing, g, None, report.statuses).await;
        let probed = probes::wait_ready(&docker, plan, &node_id)
            .await
            .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
        tracing::info!(?probed, "readiness probes passed");
        Ok(Converged {
            statuses: containers::statuses(&docker, plan, &node_id).await,
            changed,
            probed: true,
        })
    }

    /// Runs this node's drain hook when the plan marks it leaving with one (once per
    /// generation); returns whether the node is drained.
    async fn drain(&mut self, plan: &Plan) -> Result<bool, Failure> {
        let Some(node) = plan.node(&self.cfg.node_id) else {
            return Ok(false);
        };
        let Some(d) = node.drain.as_ref().filter(|_| node.leaving) else {
            return Ok(false);
        };
        let g = plan.generation;
        if self.drained == Some(g) {
            return Ok(true);
        }
        let name = node
            .containers
            .iter()
            .find(|c| c.name == d.container)
            .map(|c| c.docker_name().to_string())
            .unwrap_or_else(|| d.container.clone());
        self.report(Phase::Draining, g, None, vec![]).await;
        tracing::info!(container = %name, command = ?d.exec, timeout_secs = d.timeout_secs, "draining the node");
        let docker = self.docker().await?;
        let started = std::time::Instant::now();
        let out = containers::exec(&docker, &name, &d.exec, Duration::from_secs(d.timeout_secs))
            .await
            .map_err(|e| Failure::new(reason::DRAIN_FAILED, e.to_string()))?;
        let command = d.exec.join(" ");
        match out.exit_code {
            Some(0) => {
                tracing::info!(ms = started.elapsed().as_millis() as u64, output = %out.output, "drained");
                self.drained = Some(g);
                Ok(true)
            }
            Some(code) => Err(Failure::new(
                reason::DRAIN_FAILED,
                format!(
                    "`{command}` in {name} exited with code {code}: {}",
                    out.output
                ),
            )),
            None => Err(Failure::new(
                reason::DRAIN_FAILED,
                format!(
                    "`{command}` in {name} did not finish within {}s: {}",
                    d.timeout_secs, out.output
                ),
            )),
        }
    }

    /// Starts the drain hooks `plan` gives this node for leaving nodes; reports when the
    /// outcomes to report changed.
    async fn start_peer_drains(&mut self, plan: &Plan) {
        let forgot = self.peer.forget(plan, &self.cfg.node_id);
        let wanted = plan
            .node(&self.cfg.node_id)
            .is_some_and(|n| !n.peer_drains.is_empty());
        if wanted {
            // The node just converged, so Docker answers; if it no longer does, the
            // next convergence starts the hooks.
            if let Ok(docker) = self.docker().await {
                self.peer.start(&docker, plan, &self.cfg.node_id);
            }
        }
        if forgot {
            self.resend_with_boot().await;
        }
    }

    /// Whether the latest report says the node is ready.
    fn is_ready(&self) -> bool {
        self.latest
            .as_ref()
            .is_some_and(|l| l.phase == Phase::Ready)
    }

    /// Starts the post-ready recipes due, if the node is ready (not leaving).
    fn start_post_ready(&mut self, plan: &Plan) {
        if self
            .latest
            .as_ref()
            .is_some_and(|l| l.phase == Phase::Ready)
        {
            self.recipes.start_post_ready(plan, &self.cfg.node_id);
        }
    }

    /// `--once`: runs the post-ready recipes due and reports their outcomes before the
    /// agent exits.
    async fn run_post_ready_inline(&mut self, plan: &Plan) {
        if !self.is_ready() {
            return;
        }
        // Post-ready recipes report their failures; they do not fail the run.
        let _ = self
            .recipes
            .run_due(plan, &self.cfg.node_id, RecipeWhen::PostReady)
            .await;
        self.resend_with_boot().await;
    }

    /// Converges and reports the outcome: the first convergence of this process phase
    /// by phase; later ones only when they changed something, or the generation or the
    /// node's phase changed (a convergence that finds everything in place says nothing,
    /// so the node never looks un-ready for it).
    async fn converge_and_report(&mut self, plan: &Plan) -> Result<(), Failure> {
        // Probes tried while the node changes would fail for the change, not the
        // service: paused until it is converged.
        self.live.stop();
        let loud = self.converged.is_none() || self.opts.once;
        let result = match self.converge(plan, loud).await {
            Ok(c) => self.drain(plan).await.map(|drained| (c, drained)),
            Err(f) => Err(f),
        };
        match result {
            Ok((c, drained)) => {
                self.converged_once = true;
                if let Some(fault) = self.fault.take() {
                    tracing::info!(reason = fault.reason, "the node is whole again");
                    if fault.reason == reason::NETWORK_DEVICE_MISSING {
                        self.net_repaired = Some(tokio::time::Instant::now());
                    }
                }
                if !drained && !self.opts.once {
                    if let Some(docker) = self.docker.clone() {
                        self.live.start(&docker, plan, &self.cfg.node_id, c.probed);
                    }
                }
                // A probe failing before the convergence, whose container it left
                // running, still fails.
                let still_failing = self
                    .live
                    .verdict()
                    .filter(|_| !drained)
                    .map(|(_, message)| NodeFailure {
                        reason: reason::PROBE_FAILED.to_string(),
                        message: message.to_string(),
                    });
                let phase = match (drained, &still_failing) {
                    (true, _) => Phase::Drained,
                    (false, Some(_)) => Phase::Unhealthy,
                    (false, None) => Phase::Ready,
                };
                let unchanged = !c.changed
                    && self.converged == Some(plan.generation)
                    && self.latest.as_ref().is_some_and(|l| {
                        l.phase == phase
                            && l.generation == plan.generation
                            && l.error == still_failing
                    });
                self.converged = Some(plan.generation);
                if !unchanged {
                    self.report(phase, plan.generation, still_failing, c.statuses)
                        .await;
                    tracing::info!(generation = plan.generation, %phase, "node converged");
                }
                Ok(())
            }
            Err(f) if self.fault.is_some() => {
                // A converged node that broke and cannot be put right yet: still the
                // fault's reason (the cause), with why the repair failed.
                let fault = self.fault.clone().unwrap_or_else(|| f.clone());
                tracing::error!(reason = fault.reason, error = %f.message, "putting the node right failed; it is tried again with backoff");
                let error = NodeFailure {
                    reason: fault.reason.to_string(),
                    message: format!(
                        "{}; putting it right failed ({}: {}), tried again with backoff",
                        fault.message, f.reason, f.message
                    ),
                };
                self.report(Phase::Unhealthy, plan.generation, Some(error), vec![])
                    .await;
                Err(f)
            }
            Err(f) => {
                tracing::error!(reason = f.reason, message = %f.message, "convergence failed");
                let error = NodeFailure {
                    reason: f.reason.to_string(),
                    message: f.message.clone(),
                };
                self.report(Phase::Failed, plan.generation, Some(error), vec![])
                    .await;
                Err(f)
            }
        }
    }
}

/// What a convergence did.
#[derive(Debug)]
struct Converged {
    statuses: Vec<ContainerStatus>,
    changed: bool,
    /// Every readiness probe was run and passed.
    probed: bool,
}

/// What the Docker watch tells the resident loop.
#[derive(Debug)]
enum DockerSignal {
    /// Something of the cluster was lost (a container died, the network went); for a
    /// container that died, which and how.
    Changed(Option<Exit>),
    /// The engine went away: its event stream ended and it does not answer a ping
    /// (the message says how each failed).
    Down(String),
    /// The engine answers again after [`DockerSignal::Down`].
    Back,
}

/// A container's `die` event.
#[derive(Debug)]
struct Exit {
    /// Its id.
    id: String,
    /// Its Docker name.
    name: String,
    /// Its exit code, as Docker gives it.
    code: String,
}

/// Watches Docker for events that mean part of the cluster was lost, and for the engine
/// itself going away and coming back (a daemon crash, and its restart by the VM's init
/// or systemd). A daemon not up yet when the watch begins (at boot) signals nothing.
fn watch_docker(docker_host: String, cluster: String, tx: mpsc::Sender<DockerSignal>) {
    tokio::spawn(async move {
        // Set once a stream that was up broke: the reconnection then signals `Back`. A
        // first connection that fails (dockerd still starting at boot, while the first
        // convergence waits for it anyway) signals nothing.
        let mut lost = false;
        let mut tries = 0u32;
        loop {
            let d = match docker::connect(&docker_host).await {
                Ok(d) => d,
                Err(_) => {
                    // A unix socket that refuses costs next to nothing to try: retry
                    // fast (200 ms doubling to 1 s), so a restarted engine is seen at
                    // once.
                    tries = tries.saturating_add(1);
                    let ms = 100u64.saturating_mul(1 << tries.min(4)).min(1000);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    continue;
                }
            };
            tries = 0;
            if lost {
                tracing::info!("the Docker engine answers again");
                if tx.send(DockerSignal::Back).await.is_err() {
                    return;
                }
            }
            let filters = std::collections::HashMap::from([
                ("type", vec!["container", "network"]),
                ("event", vec!["die", "destroy", "oom"]),
            ]);
            let opts = bollard::query_parameters::EventsOptionsBuilder::new()
                .filters(&filters)
                .build();
            let mut events = d.events(Some(opts));
            let ended = loop {
                match events.next().await {
                    Some(Ok(ev)) => {
                        let died = ev.action.as_deref() == Some("die");
                        let (id, attrs) = ev
                            .actor
                            .map(|a| (a.id.unwrap_or_default(), a.attributes.unwrap_or_default()))
                            .unwrap_or_default();
                        let ours = attrs.get("io.shoal.cluster") == Some(&cluster)
                            || attrs.get("name").map(String::as_str) == Some("shoal");
                        if ours {
                            let exit = died.then(|| Exit {
                                id,
                                name: attrs.get("name").cloned().unwrap_or_default(),
                                code: attrs
                                    .get("exitCode")
                                    .cloned()
                                    .unwrap_or_else(|| "unknown".to_string()),
                            });
                            let _ = tx.try_send(DockerSignal::Changed(exit));
                        }
                    }
                    Some(Err(e)) => break docker::message(&e),
                    None => break "the engine closed it".to_string(),
                }
            };
            match d.ping().await {
                Ok(_) => {
                    // The engine is up: the stream alone broke. Converge in case an
                    // event was missed meanwhile.
                    tracing::info!(error = %ended, "the Docker event stream broke; reconnecting");
                    let _ = tx.try_send(DockerSignal::Changed(None));
                }
                Err(e) => {
                    let why = format!(
                        "the Docker engine at {docker_host} went away: its event stream ended ({ended}) and it does not answer a ping ({})",
                        docker::message(&e)
                    );
                    tracing::warn!("{why}");
                    lost = true;
                    if tx.send(DockerSignal::Down(why)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// Runs the agent; returns the process exit code.
pub async fn run(opts: RunOptions) -> i32 {
    let cfg = match config::load(&opts.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("shoal-agent: {e}");
            return exit::CONFIG;
        }
    };
    let client = match MetadataClient::new(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-agent: {e}");
            return exit::CONFIG;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal-agent: cannot handle SIGTERM: {e}");
            return exit::CONFIG;
        }
    };
    let deadline = Duration::from_secs(cfg.deadline_secs);
    tracing::info!(node = %cfg.node_id, coordinator = %client.base(), "agent starting");
    let (peer, mut peer_rx) = PeerDrains::new();
    let (live, mut live_rx) = liveness::Liveness::new();
    let (recipes, mut recipe_rx) = Recipes::load(&opts.state_dir);
    let mut agent = Agent {
        cfg,
        opts,
        client,
        timings: Vec::new(),
        docker: None,
        converged_once: false,
        converged: None,
        drained: None,
        peer,
        recipes,
        plan: None,
        disks: Vec::new(),
        latest: None,
        undelivered: None,
        redeliveries: 0,
        boot: boot_milestones::watch(boot_milestones::Sources::default()),
        delivered_at: tokio::time::Instant::now(),
        deadline: Some(deadline),
        fault: None,
        docker_down: false,
        net_repaired: None,
        net_refaults: 0,
        live,
    };
    let mut boot_open = true;
    agent.report(Phase::AgentStarted, 0, None, vec![]).await;

    let (ev_tx, mut ev_rx) = mpsc::channel::<DockerSignal>(4);
    let (net_tx, mut net_rx) = mpsc::channel::<netwatch::Touched>(4);
    let mut watching = false;
    let mut current: Option<Plan> = None;
    let mut after = 0u64;
    let mut failures = 0u32;
    let mut retry_at: Option<tokio::time::Instant> = None;
    // The long-poll outlives the loop's other wake-ups (a Docker event, a netlink
    // notification, a probe's result): dropping it would close its connection, and the
    // next poll or report would cost a new one and its TLS handshake. A new poll starts
    // only once the last one has ended.
    let mut poll: Option<BoxFuture<'static, Result<Fetched, FetchError>>> = None;

    loop {
        let limit = agent.deadline;
        let retry_sleep = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let redeliver_in = agent.redeliver_at();
        let redeliver_sleep = async {
            match redeliver_in {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        // The long-poll ends when the liveness report is due, and the report goes out
        // on the connection it leaves idle. Should the poll not end by then (its answer
        // late, the coordinator retried), the report goes out anyway a little later, and
        // the poll is dropped: it holds no state, `after` says where it was.
        let liveness_at = agent.liveness_at(current.as_ref());
        let held = match poll.take() {
            Some(p) => p,
            None => {
                let client = agent.client.clone();
                let quiet_at = liveness_at.map(|t| t.into_std());
                Box::pin(async move { client.wait_for_plan(after, limit, quiet_at).await })
            }
        };
        let poll_ref = poll.insert(held);
        let liveness_sleep = async {
            match liveness_at {
                Some(t) => {
                    let every = current
                        .as_ref()
                        .and_then(|p| p.liveness.as_ref())
                        .map_or(0, |l| l.report_secs);
                    tokio::time::sleep_until(
                        t + LIVENESS_GRACE.max(Duration::from_secs(u64::from(every))),
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        };
        let mut reconverge = false;
        tokio::select! {
            fetched = poll_ref => {
                // The poll has ended, whatever it says: the next pass starts another.
                poll = None;
                match fetched {
                    Err(e @ FetchError::Unreachable { .. }) => {
                        tracing::error!("{e}");
                        eprintln!("shoal-agent: {e}");
                        return exit::UNREACHABLE;
                    }
                    Err(e @ (FetchError::Refused { .. } | FetchError::Redirected { .. })) => {
                        tracing::error!("{e}");
                        eprintln!("shoal-agent: {e}");
                        return exit::REFUSED;
                    }
                    // The poll was asked to end when the report was due; another report
                    // since (a fault, the late-poll fallback below) may have put it off.
                    Ok(Fetched::Quiet) if liveness_at.is_some_and(|t| t <= tokio::time::Instant::now() + QUIET_SLACK) => {
                        agent.send_liveness().await
                    }
                    Ok(Fetched::Quiet) => {}
                    Ok(Fetched::Invalid { generation, error }) => {
                        tracing::error!(generation, %error, "the plan is invalid; nothing was changed");
                        after = generation.max(after);
                        let f = NodeFailure { reason: reason::PLAN_INVALID.into(), message: error.to_string() };
                        agent.report(Phase::Failed, generation, Some(f), vec![]).await;
                        if agent.opts.once {
                            return exit::PLAN_INVALID;
                        }
                    }
                    Ok(Fetched::Plan(plan)) => {
                        tracing::info!(generation = plan.generation, "plan received");
                        after = plan.generation;
                        // From the first plan on, the agent keeps trying for ever.
                        agent.deadline = None;
                        // A node that has converged applies a new plan quietly: it reports
                        // its outcome only.
                        if agent.converged.is_none() {
                            agent.report(Phase::PlanReceived, plan.generation, None, vec![]).await;
                        }
                        if !watching && !agent.opts.once {
                            watch_docker(agent.opts.docker_host.clone(), plan.cluster.clone(), ev_tx.clone());
                            if let Err(e) = netwatch::spawn(net_tx.clone()) {
                                tracing::warn!(error = %e, "cannot watch netlink: overlay faults are found only at the next convergence");
                            }
                            watching = true;
                        }
                        agent.plan = Some(plan.clone());
                        current = Some(plan);
                        failures = 0;
                        reconverge = true;
                    }
                }
            }
            Some(signal) = ev_rx.recv(), if current.is_some() => {
                let mut signals = vec![signal];
                if !matches!(signals[0], DockerSignal::Down(_)) {
                    // Let a burst of events (a daemon's restart, its containers
                    // restarting) settle first. A Down is reported at once.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                while let Ok(more) = ev_rx.try_recv() {
                    signals.push(more);
                }
                for signal in signals {
                    match signal {
                        DockerSignal::Down(why) => {
                            agent.docker_down = true;
                            agent.live.stop();
                            if agent.converged.is_some() {
                                let g = current.as_ref().map_or(0, |p| p.generation);
                                agent.report_fault(Failure::new(reason::DOCKERD_DOWN, why), g).await;
                            }
                        }
                        DockerSignal::Back => {
                            tracing::info!("the Docker engine is back; converging again");
                            agent.docker_down = false;
                            reconverge = true;
                        }
                        DockerSignal::Changed(exit) => {
                            tracing::info!(?exit, "Docker reported a change to the cluster's containers; converging again");
                            reconverge = true;
                            let Some(plan) = current.as_ref().filter(|_| agent.converged.is_some() && !agent.docker_down) else {
                                continue;
                            };
                            let Some(exit) = exit else { continue };
                            if let Some(fault) = agent.exited(plan, &exit).await {
                                let g = plan.generation;
                                agent.report_fault(fault, g).await;
                            }
                        }
                    }
                }
            }
            Some(touched) = net_rx.recv(), if agent.converged.is_some() && retry_at.is_none() && !agent.docker_down => {
                // A removal notifies in a burst (a device's FDB entries, then the
                // device): read the overlay back once it is over.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while net_rx.try_recv().is_ok() {}
                if let Some(plan) = current.as_ref() {
                    if let Some(fault) = agent.check_overlay(plan).await {
                        tracing::info!(?touched, "netlink: the overlay changed");
                        let g = plan.generation;
                        let again = agent.net_repaired.is_some_and(|t| t.elapsed() < REFAULT_WINDOW);
                        agent.net_refaults = if again { agent.net_refaults + 1 } else { 0 };
                        agent.report_fault(fault, g).await;
                        if agent.net_refaults < REFAULTS_AT_ONCE {
                            reconverge = true;
                        } else {
                            // Put back and gone again, repeatedly: something on the VM
                            // removes it. Rebuild with backoff, not in a loop.
                            let d = retry::delay(&retry::RECONVERGE, agent.net_refaults - REFAULTS_AT_ONCE + 1);
                            tracing::warn!(delay_ms = d.as_millis() as u64, refaults = agent.net_refaults, "the overlay keeps breaking; rebuilding it after a delay");
                            retry_at = Some(tokio::time::Instant::now() + d);
                        }
                    }
                }
            }
            () = retry_sleep => {
                reconverge = true;
            }
            () = redeliver_sleep => {
                agent.redeliver().await;
            }
            changed = agent.boot.changed(), if boot_open => match changed {
                Ok(()) => agent.resend_with_boot().await,
                // The boot is complete (or there is none to read): nothing more comes.
                Err(_) => boot_open = false,
            },
            () = liveness_sleep => {
                tracing::info!("the long-poll did not end when the liveness report was due: dropping it");
                poll = None;
                agent.send_liveness().await;
            }
            Some(signal) = live_rx.recv() => {
                // Another fault is being put right (its convergence restarts the probes
                // and reports what they say), or the loop waits to converge again.
                let quiet = agent.fault.is_some() || agent.docker_down || retry_at.is_some();
                if agent.live.accept(signal) && !quiet && agent.converged.is_some() {
                    if let Some(g) = current.as_ref().map(|p| p.generation) {
                        agent.report_liveness(g).await;
                    }
                }
            }
            Some(r) = recipe_rx.recv() => {
                agent.recipes.finished(r);
                agent.resend_with_boot().await;
            }
            Some(r) = peer_rx.recv() => {
                agent.peer.finished(r);
                agent.resend_with_boot().await;
                // A newer plan may have asked for the hook again while it ran.
                if let Some(plan) = current.clone() {
                    agent.start_peer_drains(&plan).await;
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping (containers keep running)");
                return exit::OK;
            }
        }
        if !reconverge {
            continue;
        }
        retry_at = None;
        if agent.docker_down {
            // With the engine down there is nothing to converge against: its return
            // (`DockerSignal::Back`) converges.
            continue;
        }
        let Some(plan) = current.clone() else {
            continue;
        };
        match agent.converge_and_report(&plan).await {
            Ok(()) => {
                failures = 0;
                agent.start_peer_drains(&plan).await;
                if agent.opts.once {
                    agent.run_post_ready_inline(&plan).await;
                    return exit::OK;
                }
                agent.start_post_ready(&plan);
            }
            Err(f) => {
                if agent.opts.once {
                    return match f.reason {
                        reason::NODE_NOT_IN_PLAN => exit::PLAN_INVALID,
                        reason::DOCKER_UNREACHABLE => exit::DOCKER,
                        _ => exit::CONVERGE,
                    };
                }
                if f.reason == reason::DOCKER_UNREACHABLE && !agent.converged_once {
                    eprintln!("shoal-agent: {}", f.message);
                    return exit::DOCKER;
                }
                failures += 1;
                let d = retry::delay(&retry::RECONVERGE, failures);
                tracing::info!(
                    delay_ms = d.as_millis() as u64,
                    "converging again after a delay"
                );
                retry_at = Some(tokio::time::Instant::now() + d);
            }
        }
    }
}

//! Changes of a running cluster: a **scale** adds nodes to a host group or removes
//! nodes from it, a **repair** gives nodes new VMs under the same id and index. Each is
//! begun in one store transaction with everything it asks for (the cluster becomes
//! UPDATING, the new nodes are recorded, the leaving ones marked), then driven through
//! steps, each recorded before the next begins, so a coordinator killed anywhere
//! resumes from the last step ([`Engine::reconcile`]) and every provider call it
//! repeats is idempotent: no VM is made twice, none is left behind.
//!
//! Scale up: VMs for the new nodes (their user-data, as at creation), then one new plan
//! generation; the cluster is AVAILABLE again when every node is ready on it. Existing
//! nodes only add FDB and host entries: their containers keep running.
//!
//! Scale down: the group's drain hook first (a plan that marks the nodes leaving, each
//! running its hook and reporting `drained`), then their VMs deleted, then a plan
//! without them (peers drop their FDB and host entries).
//!
//! A change that fails says which nodes and why ([`Store::finish_change`]), and leaves
//! the cluster usable: VMs of a scale up that could not all be made are deleted again
//! (the plan never had them); a drain that fails un-marks the nodes; nodes that could
//! not be removed stay marked leaving, and the next scale removes them.
//!
//! [`Store::finish_change`]: crate::store::Store::finish_change

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::{Phase, MAX_NODES};
use tokio::time::Instant;

use super::request::{self, RepairRequest, ScaleRequest};
use super::{node_keys, Engine, EngineError};
use crate::keys;
use crate::providers::NodeRequest;
use crate::store::{
    now_ms, ChangeKind, ChangeRow, ChangeSpec, ClusterRow, ClusterState, NewChange, NodeRow,
};
use crate::userdata;

/// States a scale may start from: a degraded cluster may be scaled (to take out a
/// broken node, or finish a scale that failed).
pub const SCALABLE: &[ClusterState] = &[ClusterState::Available, ClusterState::Degraded];
/// States a repair may start from (FAILED only once a plan exists).
pub const REPAIRABLE: &[ClusterState] = &[
    ClusterState::Available,
    ClusterState::Degraded,
    ClusterState::Failed,
];

/// The steps of a change, as recorded (`ChangeRow::step`).
mod step {
    /// Begun: nothing done yet.
    pub const RECORDED: &str = "recorded";
    /// Scale: the new nodes' VMs exist. Repair: the new VMs exist.
    pub const VMS_CREATED: &str = "vms-created";
    /// Scale: the leaving nodes are drained.
    pub const DRAINED: &str = "drained";
    /// Scale: the leaving nodes' VMs are gone. Repair: the old VMs are gone.
    pub const VMS_DELETED: &str = "vms-deleted";
    /// The plan carrying the change is served; waiting for every node to be ready.
    pub const PUBLISHED: &str = "published";
}

/// How long after a drain hook's own timeout its node may take to report.
const DRAIN_GRACE: Duration = Duration::from_secs(60);

fn unprocessable(code: &'static str, message: String) -> EngineError {
    EngineError::Unprocessable { code, message }
}

fn ids(nodes: &[NodeRow]) -> String {
    nodes
        .iter()
        .map(|n| n.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Engine {
    /// Resizes a host group, or removes given nodes; the change runs in the background
    /// (the cluster is UPDATING until it ends). A scale that changes nothing is no
    /// change: the cluster is returned as it is.
    pub async fn scale(
        self: &Arc<Self>,
        name: &str,
        req: ScaleRequest,
    ) -> Result<(ClusterRow, Vec<NodeRow>), EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        if !SCALABLE.contains(&c.state) || c.change.is_some() {
            return Err(EngineError::Conflict(format!(
                "cluster {name} is {}: only an AVAILABLE or DEGRADED cluster with no change in flight can be scaled",
                c.state
            )));
        }
        let layout = super::layout(&c, &nodes);
        let group_of = |id: &str| {
            layout
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.group.clone())
                .unwrap_or_default()
        };
        // Nodes a failed scale could not remove are removed by this one.
        let mut remove: Vec<String> = nodes
            .iter()
            .filter(|n| n.leaving)
            .map(|n| n.id.clone())
            .collect();
        let mut add: Vec<NodeRow> = Vec::new();
        let now = now_ms();
        let summary;
        let mut group_name = None;
        match (req.nodes, req.remove.is_empty()) {
            (None, true) => {
                return Err(EngineError::BadRequest(
                    "give the group's new size (nodes, with group) or the nodes to remove".into(),
                ))
            }
            (Some(_), false) => {
                return Err(EngineError::BadRequest(
                    "give nodes or remove, not both".into(),
                ))
            }
            (Some(want), true) => {
                let g = match &req.group {
                    Some(g) => c.blueprint.group(g).ok_or_else(|| {
                        unprocessable(
                            "unknown-group",
                            format!(
                                "blueprint {} has no group {g:?} (its groups: {})",
                                c.blueprint.name,
                                c.blueprint
                                    .groups
                                    .iter()
                                    .map(|g| g.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?,
                    None => c.blueprint.default_scale_group().ok_or_else(|| {
                        unprocessable(
                            "unknown-group",
                            format!(
                                "blueprint {} has no single group to resize: give the group",
                                c.blueprint.name
                            ),
                        )
                    })?,
                };
                let (min, max) = g.bounds();
                if want < min || want > max {
                    return Err(unprocessable(
                        "out-of-bounds",
                        format!(
                            "group {} may have {min} to {max} node(s) (blueprint {}), not {want}",
                            g.name, c.blueprint.name
                        ),
                    ));
                }
                let members: Vec<&NodeRow> = nodes
                    .iter()
                    .filter(|n| !n.leaving && group_of(&n.id) == g.name)
                    .collect();
                let have = members.len() as u32;
                if want > have {
                    for i in 0..(want - have) {
                        let index = c.next_index + i;
                        add.push(NodeRow::requested(
                            format!("node-{index}"),
                            index,
                            g.name.clone(),
                            keys::random_secret(),
                            now,
                        ));
                    }
                } else {
                    // The newest nodes go first.
                    for n in members.iter().rev().take((have - want) as usize) {
                        remove.push(n.id.clone());
                    }
                }
                summary = format!("{} {have} → {want}", g.name);
                group_name = Some(g.name.clone());
            }
            (None, false) => {
                if req.group.is_some() {
                    return Err(EngineError::BadRequest(
                        "group goes with nodes (a new size), not with remove".into(),
                    ));
                }
                for id in &req.remove {
                    if !nodes.iter().any(|n| &n.id == id) {
                        return Err(unprocessable(
                            "unknown-node",
                            format!(
                                "cluster {name} has no node {id:?} (its nodes are {})",
                                ids(&nodes)
                            ),
                        ));
                    }
                    if !remove.contains(id) {
                        remove.push(id.clone());
                    }
                }
                summary = format!("remove {}", req.remove.join(", "));
            }
        }
        // Every group stays within its bounds, and the cluster keeps a node.
        for g in &c.blueprint.groups {
            let left = nodes
                .iter()
                .filter(|n| group_of(&n.id) == g.name && !remove.contains(&n.id))
                .count()
                + add.iter().filter(|n| n.group == g.name).count();
            let (min, max) = g.bounds();
            let before = nodes.iter().filter(|n| group_of(&n.id) == g.name).count();
            if (left as u32) < min && left < before {
                return Err(unprocessable(
                    "out-of-bounds",
                    format!(
                        "group {} may not have fewer than {min} node(s) (blueprint {}): removing {} leaves {left}",
                        g.name,
                        c.blueprint.name,
                        remove.join(", ")
                    ),
                ));
            }
            if (left as u32) > max && left > before {
                return Err(unprocessable(
                    "out-of-bounds",
                    format!("group {} may not have more than {max} node(s)", g.name),
                ));
            }
        }
        let remaining = nodes.len() + add.len() - remove.len();
        if remaining == 0 {
            return Err(unprocessable(
                "out-of-bounds",
                format!("a cluster keeps at least one node: delete {name} instead"),
            ));
        }
        if remaining > MAX_NODES {
            return Err(unprocessable(
                "out-of-bounds",
                format!("a cluster has at most {MAX_NODES} nodes, not {remaining}"),
            ));
        }
        if add.is_empty() && remove.is_empty() {
            tracing::info!(cluster = %name, %summary, "scale changes nothing");
            return Ok((c, nodes));
        }
        // The cluster as it would be must be plannable (room in the overlay).
        let after: Vec<(String, u32, String)> = layout
            .iter()
            .filter(|p| !remove.contains(&p.id))
            .map(|p| (p.id.clone(), p.index, p.group.clone()))
            .chain(add.iter().map(|n| (n.id.clone(), n.index, n.group.clone())))
            .collect();
        request::dry_run(name, &c.blueprint, c.overlay, &after).map_err(|e| {
            unprocessable(
                "out-of-bounds",
                format!("the cluster cannot be planned after this scale: {e}"),
            )
        })?;
        let change = NewChange {
            kind: ChangeKind::Scale,
            spec: ChangeSpec {
                summary: summary.clone(),
                group: group_name,
                add: add.iter().map(|n| n.id.clone()).collect(),
                remove: remove.clone(),
                repair: vec![],
            },
            asked_ms: now,
            leaving: remove.clone(),
            add,
            replace: vec![],
        };
        let Some(id) = self.store.begin_change(name, SCALABLE, &change).await? else {
            return Err(EngineError::Conflict(format!(
                "cluster {name} changed state meanwhile: look at it again"
            )));
        };
        crate::fault::point("scale-recorded");
        self.signals(name).ready.send_replace(0);
        self.register_nodes(name).await?;
        tracing::info!(cluster = %name, change = id, %summary, add = ?change.spec.add, remove = ?change.spec.remove, "scale requested");
        self.spawn_change(name);
        self.cluster(name).await
    }

    /// Gives nodes new VMs under the same ids and indexes; the change runs in the
    /// background (UPDATING until it ends).
    pub async fn repair(
        self: &Arc<Self>,
        name: &str,
        req: RepairRequest,
    ) -> Result<(ClusterRow, Vec<NodeRow>), EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        if !REPAIRABLE.contains(&c.state) || c.change.is_some() || c.generation == 0 {
            return Err(EngineError::Conflict(format!(
                "cluster {name} is {}{}: a repair needs an AVAILABLE, DEGRADED or FAILED cluster that has a plan and no change in flight",
                c.state,
                if c.generation == 0 { ", with no plan yet" } else { "" }
            )));
        }
        let chosen: Vec<&NodeRow> = if req.nodes.is_empty() {
            nodes.iter().filter(|n| needs_repair(n)).collect()
        } else {
            let mut out = Vec::new();
            for id in &req.nodes {
                let n = nodes.iter().find(|n| &n.id == id).ok_or_else(|| {
                    unprocessable(
                        "unknown-node",
                        format!(
                            "cluster {name} has no node {id:?} (its nodes are {})",
                            ids(&nodes)
                        ),
                    )
                })?;
                if n.leaving {
                    return Err(unprocessable(
                        "unknown-node",
                        format!("node {id} is being removed: scale again instead"),
                    ));
                }
                if !out.iter().any(|o: &&NodeRow| o.id == n.id) {
                    out.push(n);
                }
            }
            out
        };
        if chosen.is_empty() {
            return Err(unprocessable(
                "nothing-to-repair",
                format!("no node of {name} is lost or failed: name the nodes to replace"),
            ));
        }
        let spec = ChangeSpec {
            summary: format!(
                "repair {}",
                chosen
                    .iter()
                    .map(|n| n.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            repair: chosen.iter().map(|n| n.id.clone()).collect(),
            ..ChangeSpec::default()
        };
        let change = NewChange {
            kind: ChangeKind::Repair,
            replace: chosen
                .iter()
                .map(|n| (n.id.clone(), keys::random_secret()))
                .collect(),
            spec,
            asked_ms: now_ms(),
            add: vec![],
            leaving: vec![],
        };
        let Some(id) = self.store.begin_change(name, REPAIRABLE, &change).await? else {
            return Err(EngineError::Conflict(format!(
                "cluster {name} changed state meanwhile: look at it again"
            )));
        };
        crate::fault::point("repair-recorded");
        self.signals(name).ready.send_replace(0);
        // The old VMs' tokens stop working now: a lost node that comes back cannot
        // report over its replacement.
        self.register_nodes(name).await?;
        tracing::info!(cluster = %name, change = id, nodes = ?change.spec.repair, "repair requested");
        self.spawn_change(name);
        self.cluster(name).await
    }

    /// Lets exactly the stored nodes report, with their current tokens.
    async fn register_nodes(&self, name: &str) -> Result<(), EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        self.hub.register(&c.key, &c.name, node_keys(&nodes));
        Ok(())
    }

    /// Drives the change in flight of `name` in the background.
    pub(super) fn spawn_change(self: &Arc<Self>, name: &str) {
        if !self.leads() {
            return;
        }
        let engine = self.clone();
        let n = name.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = engine.drive_change(&n).await {
                // Nobody else drives it: end it, so the cluster does not stay UPDATING.
                tracing::warn!(cluster = %n, error = %e, "change failed");
                if let Ok(Some(c)) = engine.store.cluster(&n).await {
                    if let Some(id) = c.change {
                        let why = e.to_string();
                        if let Err(e) = engine.finish(&n, id, Err(&why)).await {
                            tracing::error!(cluster = %n, error = %e, "cannot record the failed change");
                        }
                    }
                }
            }
        });
        self.spawn_task(name, task);
    }

    async fn drive_change(self: &Arc<Self>, name: &str) -> Result<(), EngineError> {
        let Some(c) = self.store.cluster(name).await? else {
            return Ok(());
        };
        let Some(id) = c.change.filter(|_| c.state == ClusterState::Updating) else {
            return Ok(());
        };
        let history = self.store.history(name).await?;
        let Some(ch) = history.changes.into_iter().find(|ch| ch.id == id) else {
            return Err(EngineError::Store(crate::store::StoreError::Corrupt(
                format!("change {id} of cluster {name}"),
            )));
        };
        match ch.kind {
            ChangeKind::Scale => self.drive_scale(name, &ch).await,
            ChangeKind::Repair => self.drive_repair(name, &ch).await,
            ChangeKind::Create => Ok(()),
        }
    }

    async fn step(&self, name: &str, id: u64, step: &str) -> Result<(), EngineError> {
        self.store.change_step(name, id, step).await?;
        Ok(())
    }

    async fn finish(
        &self,
        name: &str,
        id: u64,
        outcome: Result<(), &str>,
    ) -> Result<(), EngineError> {
        let state = self.store.finish_change(name, id, outcome).await?;
        match outcome {
            Ok(()) => tracing::info!(cluster = %name, change = id, %state, "change done"),
            Err(why) => tracing::warn!(cluster = %name, change = id, %state, %why, "change failed"),
        }
        self.metrics.record_change(outcome.is_ok());
        Ok(())
    }

    async fn drive_scale(self: &Arc<Self>, name: &str, ch: &ChangeRow) -> Result<(), EngineError> {
        let (id, spec) = (ch.id, &ch.spec);
        let mut at = ch.step.as_str();
        if at == step::RECORDED {
            if !spec.add.is_empty() {
                if let Err(e) = self.create_vms(name, &spec.add, "scale-vms-created").await {
                    let why = format!("adding {}: {e}", spec.add.join(", "));
                    return self.undo_additions(name, id, &spec.add, &why).await;
                }
            }
            self.step(name, id, step::VMS_CREATED).await?;
            at = step::VMS_CREATED;
        }
        if at == step::VMS_CREATED {
            if let Err(why) = self.drain(name, &spec.remove).await? {
                self.store.set_leaving(name, &spec.remove, false).await?;
                self.publish_if_changed(name).await?;
                let why = format!("draining {}: {why}; the nodes stay", spec.remove.join(", "));
                return self.finish(name, id, Err(&why)).await;
            }
            self.step(name, id, step::DRAINED).await?;
            at = step::DRAINED;
        }
        if at == step::DRAINED {
            if !spec.remove.is_empty() {
                if let Err(e) = self.delete_vms(name, &spec.remove).await? {
                    let why = format!(
                        "removing {}: {e}; they stay marked leaving: scale again to retry",
                        spec.remove.join(", ")
                    );
                    return self.finish(name, id, Err(&why)).await;
                }
                crate::fault::point("scale-vms-deleted");
                self.store.remove_nodes(name, &spec.remove).await?;
                self.register_nodes(name).await?;
            }
            self.step(name, id, step::VMS_DELETED).await?;
            at = step::VMS_DELETED;
        }
        if at == step::VMS_DELETED {
            self.publish_if_changed(name).await?;
            crate::fault::point("scale-plan-published");
            self.step(name, id, step::PUBLISHED).await?;
        }
        self.settle_change(name, id).await
    }

    async fn drive_repair(self: &Arc<Self>, name: &str, ch: &ChangeRow) -> Result<(), EngineError> {
        let (id, spec) = (ch.id, &ch.spec);
        let mut at = ch.step.as_str();
        if at == step::RECORDED {
            if let Err(e) = self.delete_vms(name, &spec.repair).await? {
                let why = format!("removing the old VMs of {}: {e}", spec.repair.join(", "));
                return self.finish(name, id, Err(&why)).await;
            }
            crate::fault::point("repair-vms-deleted");
            self.step(name, id, step::VMS_DELETED).await?;
            at = step::VMS_DELETED;
        }
        if at == step::VMS_DELETED {
            if let Err(e) = self
                .create_vms(name, &spec.repair, "repair-vms-created")
                .await
            {
                let why = format!(
                    "making new VMs for {}: {e}; repair again to retry",
                    spec.repair.join(", ")
                );
                return self.finish(name, id, Err(&why)).await;
            }
            self.step(name, id, step::VMS_CREATED).await?;
            at = step::VMS_CREATED;
        }
        if at == step::VMS_CREATED {
            // A new generation even when the plan reads the same (a cloud may give the
            // new VM the old one's address and id): the repair is a change of its own,
            // each node's convergence to it on record. Once: a change resumed after the
            // publication carries its generation already.
            if ch.generation.is_none() {
                self.publish_plan(name).await?;
            }
            crate::fault::point("repair-plan-published");
            self.step(name, id, step::PUBLISHED).await?;
        }
        self.settle_change(name, id).await
    }

    /// Waits until every node is ready on the plan in force (or the creation timeout
    /// passes), then ends the change.
    async fn settle_change(&self, name: &str, id: u64) -> Result<(), EngineError> {
        let timeout = self.settings.create_timeout;
        let ready = self.wait_ready(name, timeout).await?;
        crate::fault::point("change-settled");
        if ready {
            return self.finish(name, id, Ok(())).await;
        }
        let nodes = self.store.nodes(name).await?;
        let generation = self.store.cluster(name).await?.map_or(0, |c| c.generation);
        let stuck: Vec<String> = nodes
            .iter()
            .filter(|n| !(n.phase == Phase::Ready && n.generation == generation))
            .map(|n| match n.status.as_ref().and_then(|s| s.error.as_ref()) {
                Some(e) => format!("{} ({}: {}: {})", n.id, n.phase, e.reason, e.message),
                None => format!("{} ({})", n.id, n.phase),
            })
            .collect();
        let why = format!(
            "not every node was ready on generation {generation} within {}s: {}",
            timeout.as_secs(),
            stuck.join(", ")
        );
        self.finish(name, id, Err(&why)).await
    }

    /// Whether every node of `name` reports ready on its current plan, waiting for it
    /// up to `timeout`.
    async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<bool, EngineError> {
        let mut rx = self.signals(name).ready.subscribe();
        // Reports that came before this wait are in the store's counts.
        let Some(c) = self.store.cluster(name).await? else {
            return Ok(false);
        };
        if c.generation > 0 && c.ready_nodes >= c.node_count {
            return Ok(true);
        }
        let generation = c.generation;
        let waited = tokio::time::timeout(timeout, rx.wait_for(|g| *g >= generation)).await;
        Ok(matches!(waited, Ok(Ok(_))))
    }

    /// Runs the drain hooks of the leaving nodes `ids`: publishes the plan that marks
    /// them leaving (each hook with the node that runs it: the leaving node, or its
    /// group's drain group's node) and waits until every hook reports success on it.
    /// `Ok(Err(why))` when a hook failed or timed out, or has no node to run it.
    async fn drain(&self, name: &str, ids: &[String]) -> Result<Result<(), String>, EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        let layout = super::layout(&c, &nodes);
        let mut hooked = Vec::new();
        let mut longest = Duration::ZERO;
        for p in layout.iter().filter(|p| ids.contains(&p.id)) {
            let Some(d) = c.blueprint.group(&p.group).and_then(|g| g.drain.as_ref()) else {
                continue;
            };
            let runner = match &d.group {
                None => p.id.clone(),
                Some(g) => match super::planner::drain_runner(&layout, g) {
                    Some(r) => r.id.clone(),
                    None => {
                        return Ok(Err(format!(
                        "{}: group {g}, which runs its drain hook, has no node that is not leaving",
                        p.id
                    )))
                    }
                },
            };
            hooked.push(Hooked {
                node: p.id.clone(),
                runner,
            });
            longest = longest.max(Duration::from_secs(d.timeout.0));
        }
        if hooked.is_empty() {
            return Ok(Ok(()));
        }
        let generation = self.publish_if_changed(name).await?;
        crate::fault::point("drain-started");
        tracing::info!(cluster = %name, nodes = ?hooked, generation, "draining");
        self.wait_drained(name, &hooked, generation, longest + DRAIN_GRACE)
            .await
    }

    async fn wait_drained(
        &self,
        name: &str,
        hooked: &[Hooked],
        generation: u64,
        timeout: Duration,
    ) -> Result<Result<(), String>, EngineError> {
        let signals = self.signals(name);
        let deadline = Instant::now() + timeout;
        loop {
            let nudged = signals.nudge.notified();
            tokio::pin!(nudged);
            nudged.as_mut().enable();
            let nodes = self.store.nodes(name).await?;
            let mut pending = Vec::new();
            for h in hooked {
                if !nodes.iter().any(|n| n.id == h.node) {
                    continue;
                }
                match drain_outcome(&nodes, h, generation) {
                    DrainOutcome::Done => {}
                    DrainOutcome::Failed(why) => return Ok(Err(why)),
                    DrainOutcome::Pending(what) => pending.push(what),
                }
            }
            if pending.is_empty() {
                return Ok(Ok(()));
            }
            if Instant::now() >= deadline {
                return Ok(Err(format!(
                    "not drained within {}s: {}",
                    timeout.as_secs(),
                    pending.join(", ")
                )));
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), nudged).await;
        }
    }

    /// Gives the nodes `ids` their VMs (idempotently) and waits until each has a
    /// private address; `fault` names the crash point between the provider's answer and
    /// its record.
    pub(super) async fn create_vms(
        &self,
        name: &str,
        ids: &[String],
        fault: &str,
    ) -> Result<(), EngineError> {
        let (c, nodes) = self.cluster(name).await?;
        let provider = self.provider(&c.provider)?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut requests = Vec::with_capacity(ids.len());
        for n in nodes.iter().filter(|n| wanted.contains(n.id.as_str())) {
            let cfg = self.agent_config(&c, n);
            requests.push(NodeRequest {
                node_id: n.id.clone(),
                index: n.index,
                incarnation: n.incarnation,
                user_data: userdata::render_for(provider.name(), &cfg, provider.user_data_limit())?,
                disks: c.blueprint.group(&n.group).and_then(|g| g.disks),
            });
        }
        let cref = c.cluster_ref();
        let infos = self
            .metrics
            .provider_call(
                provider.name(),
                "create_nodes",
                provider.create_nodes(&cref, &c.params, &requests),
            )
            .await?;
        crate::fault::point(fault);
        self.record_vms(name, &infos).await?;
        // Clouds assign private addresses a little after the call: describe until all
        // are known.
        let mut delay = Duration::from_millis(200);
        let deadline = Instant::now() + self.settings.create_timeout;
        loop {
            let nodes = self.store.nodes(name).await?;
            if nodes
                .iter()
                .filter(|n| wanted.contains(n.id.as_str()))
                .all(|n| n.private_ip.is_some())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Timeout(format!(
                    "the provider gave no private address within {}s",
                    self.settings.create_timeout.as_secs()
                )));
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
            let infos: Vec<_> = infos
                .into_iter()
                .filter(|i| wanted.contains(i.node_id.as_str()))
                .collect();
            self.record_vms(name, &infos).await?;
        }
    }

    /// Deletes the VMs of nodes `ids` at the cluster's provider; the provider's failure
    /// is the inner error (the caller decides what it means for the change).
    async fn delete_vms(
        &self,
        name: &str,
        ids: &[String],
    ) -> Result<Result<(), crate::providers::ProviderError>, EngineError> {
        let (c, _) = self.cluster(name).await?;
        let provider = self.provider(&c.provider)?;
        Ok(self
            .metrics
            .provider_call(
                provider.name(),
                "delete_nodes",
                provider.delete_nodes(&c.cluster_ref(), &c.params, ids),
            )
            .await)
    }

    /// A scale up whose VMs could not all be made: deletes what was made and forgets the
    /// new nodes (no plan had them), or, if that fails too, keeps them marked leaving
    /// for the next scale to remove.
    async fn undo_additions(
        &self,
        name: &str,
        id: u64,
        add: &[String],
        why: &str,
    ) -> Result<(), EngineError> {
        match self.delete_vms(name, add).await? {
            Ok(()) => {
                self.store.remove_nodes(name, add).await?;
                self.register_nodes(name).await?;
                let why = format!("{why}; the new nodes were removed again, nothing else changed");
                self.finish(name, id, Err(&why)).await
            }
            Err(e) => {
                self.store.set_leaving(name, add, true).await?;
                let why = format!(
                    "{why}; removing what was made failed too ({e}): scale again to remove it"
                );
                self.finish(name, id, Err(&why)).await
            }
        }
    }
}

/// A leaving node with a drain hook, and the node that runs it (itself, or a node of
/// the hook's group).
#[derive(Debug)]
struct Hooked {
    node: String,
    runner: String,
}

enum DrainOutcome {
    Done,
    Failed(String),
    Pending(String),
}

/// Where `h`'s hook stands on plan `generation`, by the reports of its runner.
fn drain_outcome(nodes: &[NodeRow], h: &Hooked, generation: u64) -> DrainOutcome {
    let Some(r) = nodes.iter().find(|n| n.id == h.runner) else {
        return DrainOutcome::Failed(format!("{}: its drain node {} is gone", h.node, h.runner));
    };
    let current = r.generation >= generation;
    let error = r.status.as_ref().and_then(|s| s.error.as_ref());
    let failed = |why: String| DrainOutcome::Failed(why);
    let lost_or_failed = match r.phase {
        Phase::Lost => true,
        Phase::Failed => current,
        _ => false,
    };
    if lost_or_failed {
        return failed(
            error
                .map(|e| format!("{}: {}: {}", r.id, e.reason, e.message))
                .unwrap_or_else(|| format!("{} {}", r.id, r.phase)),
        );
    }
    if h.runner == h.node {
        return if r.phase == Phase::Drained && current {
            DrainOutcome::Done
        } else {
            DrainOutcome::Pending(format!("{} ({})", r.id, r.phase))
        };
    }
    let report = r.status.as_ref().and_then(|s| {
        s.peer_drains
            .iter()
            .find(|d| d.node == h.node && d.generation >= generation)
    });
    match report {
        Some(d) if d.ok => DrainOutcome::Done,
        Some(d) => failed(format!(
            "{}: its drain hook on {} failed: {}",
            h.node, r.id, d.message
        )),
        None => DrainOutcome::Pending(format!("{} (its hook runs on {})", h.node, r.id)),
    }
}

/// A node a repair without `--node` replaces: lost, failed, or left without a VM by a
/// repair that failed.
fn needs_repair(n: &NodeRow) -> bool {
    !n.leaving
        && (matches!(n.phase, Phase::Lost | Phase::Failed)
            || (n.phase == Phase::Pending && n.private_ip.is_none()))
}

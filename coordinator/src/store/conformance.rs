//! The conformance suite every [`Store`] implementation must pass: each backend's tests
//! call [`run`] with a factory of fresh, empty stores. The checks are what the engine
//! relies on: one transaction per call, the store owning the plan's generation,
//! compare-and-set transitions, a deleted name reusable, typed values round-tripping,
//! and concurrent writers not losing each other's writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use shoal_protocol::{NetworkPlan, NodeStatus, Phase, Plan};

use super::{
    ChangeKind, ChangeSpec, ClusterRow, ClusterState, NewChange, NodeRow, Store, StoreError,
    VmRecord,
};
use crate::blueprint::Blueprint;
use crate::providers::ProviderParams;

/// A fresh, empty store.
pub type Factory<'a> = dyn Fn() -> Box<dyn Store> + 'a;

/// A scratch directory for a backend's files, unique to this call.
pub fn scratch_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shoal-store-{what}-{}", crate::keys::random_hex(4)))
}

/// A cluster row as the engine records it at creation.
pub fn cluster(name: &str) -> ClusterRow {
    let blueprint = match Blueprint::built_in("demo") {
        Some(Ok(b)) => b,
        other => panic!("the demo blueprint does not load: {other:?}"),
    };
    ClusterRow {
        name: name.into(),
        uid: "0123456789ab".into(),
        provider: "local".into(),
        state: ClusterState::Requested,
        reason: None,
        key: crate::keys::random_secret(),
        generation: 0,
        plan: None,
        domain: blueprint.domain.clone(),
        blueprint,
        params: ProviderParams {
            region: Some("r1".into()),
            extra: BTreeMap::from([("vpc-id".into(), "vpc-1".into())]),
            ..ProviderParams::default()
        },
        metadata_url: "https://10.213.0.1:8787".into(),
        node_count: 2,
        overlay: "10.240.0.0/16".parse().expect("overlay"),
        vni: 7,
        created_ms: 1,
        updated_ms: 1,
        available_ms: None,
        ready_nodes: 0,
        next_index: 2,
        auto_repair_secs: None,
        change: Some(1),
    }
}

/// A cluster row for `nodes` nodes.
pub fn cluster_of(name: &str, nodes: u32) -> ClusterRow {
    ClusterRow {
        node_count: nodes,
        next_index: nodes,
        ..cluster(name)
    }
}

/// A node row as the engine records it at creation.
pub fn node(i: u32) -> NodeRow {
    NodeRow::requested(
        format!("node-{i}"),
        i,
        "workers".into(),
        crate::keys::random_secret(),
        1,
    )
}

/// An agent's report.
pub fn status(phase: Phase, generation: u64) -> NodeStatus {
    NodeStatus {
        phase,
        generation,
        timings: vec![],
        error: None,
        containers: vec![],
        agent_version: "test".into(),
        boot: None,
        peer_drains: vec![],
        recipes: vec![],
        disks: vec![],
    }
}

pub fn plan(cluster: &str) -> Plan {
    Plan {
        schema: shoal_protocol::SCHEMA_VERSION,
        cluster: cluster.into(),
        generation: 0,
        domain: "shoal.internal".into(),
        network: NetworkPlan {
            overlay: "10.240.0.0/16".parse().expect("overlay"),
            vni: 7,
            port: shoal_protocol::DEFAULT_VXLAN_PORT,
            mtu: None,
        },
        nodes: vec![],
        liveness: None,
    }
}

/// Runs every check, each against a fresh store from `fresh`.
pub async fn run(fresh: &Factory<'_>) {
    life_cycle_is_recorded(fresh().as_ref()).await;
    typed_values_round_trip(fresh().as_ref()).await;
    the_store_owns_the_generation(fresh().into()).await;
    transitions_are_compare_and_set(fresh().as_ref()).await;
    a_deleted_name_can_be_reused(fresh().as_ref()).await;
    a_failed_call_changes_nothing(fresh().as_ref()).await;
    concurrent_reports_are_all_kept(fresh().into()).await;
    reports_keep_health_and_counts(fresh().as_ref()).await;
    liveness_is_compare_and_set(fresh().as_ref()).await;
    changes_are_recorded_and_ended(fresh().as_ref()).await;
    debug_output_hides_secrets();
}

async fn life_cycle_is_recorded(s: &dyn Store) {
    s.insert_cluster(&cluster("demo"), &[node(0), node(1)])
        .await
        .expect("insert");
    assert!(matches!(
        s.insert_cluster(&cluster("demo"), &[node(0)]).await,
        Err(StoreError::Exists(_))
    ));
    let vm = VmRecord {
        node_id: "node-1".into(),
        instance_id: "i-1".into(),
        private_ip: Some("10.213.0.11".parse().expect("ip")),
        details: BTreeMap::from([("netns".into(), "ns1".into())]),
        running: true,
    };
    s.set_node_vm("demo", &vm).await.expect("vm");
    // A later report without an address keeps the known one.
    s.set_node_vm(
        "demo",
        &VmRecord {
            private_ip: None,
            ..vm.clone()
        },
    )
    .await
    .expect("vm again");
    let nodes = s.nodes("demo").await.expect("nodes");
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].phase, Phase::Pending);
    assert_eq!(nodes[1].phase, Phase::VmRunning);
    assert_eq!(nodes[1].private_ip, vm.private_ip);
    assert_eq!(nodes[1].instance_id.as_deref(), Some("i-1"));
    assert_eq!(nodes[1].details, vm.details);
    assert!(nodes[1].running_ms.is_some());
    s.record_report("demo", "node-1", &status(Phase::Ready, 1))
        .await
        .expect("status");
    assert!(matches!(
        s.record_report("demo", "node-9", &status(Phase::Ready, 1))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let nodes = s.nodes("demo").await.expect("nodes");
    assert_eq!(nodes[1].phase, Phase::Ready);
    assert_eq!(nodes[1].status, Some(status(Phase::Ready, 1)));
    assert!(s
        .transition(
            "demo",
            &[ClusterState::Requested],
            ClusterState::Available,
            None
        )
        .await
        .expect("state"));
    let c = s.cluster("demo").await.expect("read").expect("exists");
    assert_eq!(c.state, ClusterState::Available);
    assert!(c.available_ms.is_some());
    assert!(s.cluster("nope").await.expect("read").is_none());
    assert_eq!(s.clusters().await.expect("list").len(), 1);
    assert!(s.nodes("nope").await.expect("nodes").is_empty());
}

async fn typed_values_round_trip(s: &dyn Store) {
    let c = cluster_of("typed", 1);
    s.insert_cluster(&c, &[node(0)]).await.expect("insert");
    let back = s.cluster("typed").await.expect("read").expect("exists");
    assert_eq!(back, c, "every column comes back as it went in");
}

async fn the_store_owns_the_generation(s: Arc<dyn Store>) {
    s.insert_cluster(&cluster("gen"), &[node(0)])
        .await
        .expect("insert");
    // Whatever generation the caller wrote, the store assigns the next one.
    let mut p = plan("gen");
    p.generation = 41;
    let first = s.publish_plan("gen", p).await.expect("publish");
    assert_eq!(first.generation(), 1);
    // Publishes racing each other get distinct generations, and each stored document
    // carries the generation it was stored under.
    let publishes = (0..8).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.publish_plan("gen", plan("gen")).await })
    });
    let mut gens = Vec::new();
    for p in futures_util::future::join_all(publishes).await {
        let p = p.expect("task").expect("publish");
        let served: Plan = serde_json::from_slice(&p.json).expect("stored JSON is a plan");
        assert_eq!(
            served.generation,
            p.generation(),
            "body and generation agree"
        );
        gens.push(p.generation());
    }
    gens.sort_unstable();
    assert_eq!(gens, (2..=9).collect::<Vec<u64>>());
    let c = s.cluster("gen").await.expect("read").expect("exists");
    assert_eq!(c.generation, 9);
    let stored = c.plan.expect("a plan");
    assert_eq!(stored.generation(), 9);
    assert!(matches!(
        s.publish_plan("nope", plan("nope")).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn transitions_are_compare_and_set(s: &dyn Store) {
    s.insert_cluster(&cluster("cas"), &[node(0)])
        .await
        .expect("insert");
    let creating = [ClusterState::Requested, ClusterState::Creating];
    assert!(s
        .transition("cas", &creating, ClusterState::Failed, Some("boom"))
        .await
        .expect("fail"));
    // A second task's transition from the old state does not undo the first's.
    assert!(!s
        .transition("cas", &creating, ClusterState::Available, None)
        .await
        .expect("late"));
    let c = s.cluster("cas").await.expect("read").expect("exists");
    assert_eq!(c.state, ClusterState::Failed);
    assert_eq!(c.reason.as_deref(), Some("boom"));
    assert!(c.available_ms.is_none());
    // Leaving FAILED clears the reason unless a new one is given.
    assert!(s
        .transition("cas", &[ClusterState::Failed], ClusterState::Deleting, None)
        .await
        .expect("delete"));
    let c = s.cluster("cas").await.expect("read").expect("exists");
    assert_eq!((c.state, c.reason), (ClusterState::Deleting, None));
    assert!(matches!(
        s.transition("nope", &creating, ClusterState::Failed, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_deleted_name_can_be_reused(s: &dyn Store) {
    s.insert_cluster(&cluster("again"), &[node(0)])
        .await
        .expect("insert");
    s.transition(
        "again",
        &[ClusterState::Requested],
        ClusterState::Deleted,
        None,
    )
    .await
    .expect("state");
    let second = cluster("again");
    s.insert_cluster(&second, &[node(0), node(1)])
        .await
        .expect("reinsert");
    assert_eq!(s.nodes("again").await.expect("nodes").len(), 2);
    let c = s.cluster("again").await.expect("read").expect("exists");
    assert_eq!(
        c.key, second.key,
        "the new cluster replaced the deleted one"
    );
}

async fn a_failed_call_changes_nothing(s: &dyn Store) {
    s.insert_cluster(&cluster("one"), &[node(0)])
        .await
        .expect("insert");
    // Two nodes with one id: the second insert fails, and the first must not remain.
    let e = s.insert_cluster(&cluster("two"), &[node(0), node(0)]).await;
    assert!(e.is_err(), "duplicate node ids were stored");
    assert!(s.cluster("two").await.expect("read").is_none());
    assert!(s.nodes("two").await.expect("nodes").is_empty());
    assert_eq!(s.clusters().await.expect("list").len(), 1);
}

async fn concurrent_reports_are_all_kept(s: Arc<dyn Store>) {
    let nodes: Vec<NodeRow> = (0..64).map(node).collect();
    s.insert_cluster(&cluster_of("many", 64), &nodes)
        .await
        .expect("insert");
    let writes = (0..64u64).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            s.record_report("many", &format!("node-{i}"), &status(Phase::Ready, i))
                .await
        })
    });
    for w in futures_util::future::join_all(writes).await {
        w.expect("task").expect("write");
    }
    let nodes = s.nodes("many").await.expect("nodes");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n.phase, Phase::Ready, "{}", n.id);
        assert_eq!(n.status.as_ref().map(|s| s.generation), Some(i as u64));
    }
}

/// Moves a fresh cluster to `to` through REQUESTED.
async fn force_state(s: &dyn Store, name: &str, to: ClusterState) {
    assert!(s
        .transition(name, &ClusterState::ALL, to, None)
        .await
        .expect("state"));
}

async fn reports_keep_health_and_counts(s: &dyn Store) {
    s.insert_cluster(&cluster_of("health", 2), &[node(0), node(1)])
        .await
        .expect("insert");
    force_state(s, "health", ClusterState::Creating).await;
    let gen = s
        .publish_plan("health", plan("health"))
        .await
        .expect("plan")
        .generation();
    let first = s
        .record_report("health", "node-0", &status(Phase::Ready, gen))
        .await
        .expect("report");
    assert_eq!((first.ready, first.nodes, first.moved), (1, 2, None));
    assert!(!first.all_ready());
    // A report on an older generation does not count.
    let stale = s
        .record_report("health", "node-1", &status(Phase::Ready, gen - 1))
        .await
        .expect("report");
    assert_eq!(stale.ready, 1);
    let both = s
        .record_report("health", "node-1", &status(Phase::Ready, gen))
        .await
        .expect("report");
    assert!(both.all_ready());
    assert_eq!(
        both.state,
        ClusterState::Creating,
        "creation is settled by the engine"
    );
    // Reporting ready again changes no count.
    let again = s
        .record_report("health", "node-1", &status(Phase::Ready, gen))
        .await
        .expect("report");
    assert_eq!(again.ready, 2);
    force_state(s, "health", ClusterState::Available).await;
    let mut sick = status(Phase::Unhealthy, gen);
    sick.error = Some(shoal_protocol::NodeFailure {
        reason: "network-device-missing".into(),
        message: "shoal-vx was deleted".into(),
    });
    let down = s
        .record_report("health", "node-1", &sick)
        .await
        .expect("report");
    assert_eq!(down.moved, Some(ClusterState::Degraded));
    let c = s.cluster("health").await.expect("read").expect("exists");
    assert_eq!(c.state, ClusterState::Degraded);
    let reason = c.reason.unwrap_or_default();
    assert!(
        reason.contains("node-1 unhealthy") && reason.contains("shoal-vx was deleted"),
        "{reason}"
    );
    let up = s
        .record_report("health", "node-1", &status(Phase::Ready, gen))
        .await
        .expect("report");
    assert_eq!(up.moved, Some(ClusterState::Available));
    let c = s.cluster("health").await.expect("read").expect("exists");
    assert_eq!(
        (c.state, c.reason, c.ready_nodes),
        (ClusterState::Available, None, 2)
    );
    // A new generation: nobody is ready on it yet.
    let next = s
        .publish_plan("health", plan("health"))
        .await
        .expect("plan");
    let c = s.cluster("health").await.expect("read").expect("exists");
    assert_eq!(c.ready_nodes, 0);
    let h = s.history("health").await.expect("history");
    let states: Vec<ClusterState> = h.events.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            ClusterState::Requested,
            ClusterState::Creating,
            ClusterState::Available,
            ClusterState::Degraded,
            ClusterState::Available
        ]
    );
    assert!(h.events[3].reason.is_some() && h.events[4].reason.is_none());
    // Each node converged once to the first generation, none yet to the next.
    assert_eq!(h.generations.len(), 2);
    let converged: Vec<&str> = h.generations[0]
        .converged
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(converged, ["node-0", "node-1"]);
    assert!(h.generations[1].converged.is_empty());
    assert_eq!(h.generations[1].generation, next.generation());
    // The creation was change 1, and became AVAILABLE: done.
    assert_eq!(h.changes.len(), 1);
    assert_eq!(h.changes[0].kind, ChangeKind::Create);
    assert_eq!(h.changes[0].outcome, Some(Ok(())));
    assert_eq!(h.changes[0].generation, Some(gen));
}

async fn liveness_is_compare_and_set(s: &dyn Store) {
    let c = ClusterRow {
        auto_repair_secs: Some(0),
        ..cluster_of("live", 2)
    };
    s.insert_cluster(&c, &[node(0), node(1)])
        .await
        .expect("insert");
    force_state(s, "live", ClusterState::Creating).await;
    let gen = s
        .publish_plan("live", plan("live"))
        .await
        .expect("plan")
        .generation();
    for n in ["node-0", "node-1"] {
        s.record_report("live", n, &status(Phase::Ready, gen))
            .await
            .expect("report");
    }
    force_state(s, "live", ClusterState::Available).await;
    // The same report again (a liveness report) moves the node's last-seen time.
    let seen = s.nodes("live").await.expect("nodes")[0].last_seen_ms;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let again = s
        .record_report("live", "node-0", &status(Phase::Ready, gen))
        .await
        .expect("report");
    assert_eq!((again.ready, again.moved), (2, None));
    assert!(s.nodes("live").await.expect("nodes")[0].last_seen_ms > seen);
    let later = super::now_ms() + 60_000;
    let silent = s.silent_nodes(later, 10).await.expect("silent");
    assert_eq!(silent.len(), 2, "{silent:?}");
    assert!(s.silent_nodes(0, 10).await.expect("silent").is_empty());
    assert_eq!(s.silent_nodes(later, 1).await.expect("silent").len(), 1);
    // Not silent since long enough: not marked.
    assert!(s
        .mark_lost("live", "node-1", 0, "quiet")
        .await
        .expect("mark")
        .is_none());
    let lost = s
        .mark_lost("live", "node-1", later, "no report for 60 s")
        .await
        .expect("mark")
        .expect("marked");
    assert_eq!((lost.moved, lost.ready), (Some(ClusterState::Degraded), 1));
    let n1 = &s.nodes("live").await.expect("nodes")[1];
    assert_eq!(n1.phase, Phase::Lost);
    assert!(n1.lost_ms.is_some());
    let e = n1
        .status
        .as_ref()
        .and_then(|s| s.error.clone())
        .expect("error");
    assert_eq!(e.reason, "agent-silent");
    assert_eq!(e.message, "no report for 60 s");
    // Marked once; a lost node is not silent again.
    assert!(s
        .mark_lost("live", "node-1", later, "again")
        .await
        .expect("mark")
        .is_none());
    assert_eq!(s.silent_nodes(later, 10).await.expect("silent").len(), 1);
    // Auto-repair after 0 s: due at once, while DEGRADED with no change in flight.
    assert_eq!(
        s.due_repairs(later).await.expect("due"),
        [("live".to_string(), "node-1".to_string())]
    );
    // Its report, even the same one it last sent, brings it back.
    let back = s
        .record_report("live", "node-1", &status(Phase::Ready, gen))
        .await
        .expect("report");
    assert_eq!(back.moved, Some(ClusterState::Available));
    assert!(s.due_repairs(later).await.expect("due").is_empty());
    assert!(s.nodes("live").await.expect("nodes")[1].lost_ms.is_none());
}

async fn changes_are_recorded_and_ended(s: &dyn Store) {
    s.insert_cluster(&cluster_of("grow", 2), &[node(0), node(1)])
        .await
        .expect("insert");
    force_state(s, "grow", ClusterState::Creating).await;
    let gen = s
        .publish_plan("grow", plan("grow"))
        .await
        .expect("plan")
        .generation();
    for n in ["node-0", "node-1"] {
        s.record_report("grow", n, &status(Phase::Ready, gen))
            .await
            .expect("report");
    }
    force_state(s, "grow", ClusterState::Available).await;
    let scale = NewChange {
        kind: ChangeKind::Scale,
        spec: ChangeSpec {
            summary: "workers 2 → 3".into(),
            group: Some("workers".into()),
            add: vec!["node-2".into()],
            ..ChangeSpec::default()
        },
        asked_ms: 5,
        add: vec![node(2)],
        leaving: vec!["node-1".into()],
        replace: vec![],
    };
    // Only from the states given.
    assert!(s
        .begin_change("grow", &[ClusterState::Degraded], &scale)
        .await
        .expect("begin")
        .is_none());
    let id = s
        .begin_change("grow", &[ClusterState::Available], &scale)
        .await
        .expect("begin")
        .expect("begun");
    assert_eq!(id, 2);
    let c = s.cluster("grow").await.expect("read").expect("exists");
    assert_eq!(
        (c.state, c.change, c.node_count, c.next_index),
        (ClusterState::Updating, Some(2), 3, 3)
    );
    // One change at a time.
    assert!(s
        .begin_change("grow", &[ClusterState::Updating], &scale)
        .await
        .expect("begin")
        .is_none());
    let nodes = s.nodes("grow").await.expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert!(nodes[1].leaving);
    assert_eq!(
        (nodes[2].phase, nodes[2].group.as_str()),
        (Phase::Pending, "workers")
    );
    s.change_step("grow", id, "vms-created")
        .await
        .expect("step");
    let next = s
        .publish_plan("grow", plan("grow"))
        .await
        .expect("plan")
        .generation();
    for n in ["node-0", "node-1", "node-2"] {
        s.record_report("grow", n, &status(Phase::Ready, next))
            .await
            .expect("report");
    }
    s.remove_nodes("grow", &["node-1".into(), "node-9".into()])
        .await
        .expect("remove");
    let c = s.cluster("grow").await.expect("read").expect("exists");
    assert_eq!((c.node_count, c.ready_nodes), (2, 2));
    assert_eq!(
        s.finish_change("grow", id, Ok(())).await.expect("finish"),
        ClusterState::Available
    );
    let c = s.cluster("grow").await.expect("read").expect("exists");
    assert_eq!((c.state, c.change), (ClusterState::Available, None));

    // A repair: the node gets a new token and incarnation and is pending again; the
    // cluster is DEGRADED when the change ends with it not ready.
    let repair = NewChange {
        kind: ChangeKind::Repair,
        spec: ChangeSpec {
            summary: "repair node-2".into(),
            repair: vec!["node-2".into()],
            ..ChangeSpec::default()
        },
        asked_ms: 6,
        add: vec![],
        leaving: vec![],
        replace: vec![("node-2".into(), "t".repeat(64))],
    };
    let rid = s
        .begin_change("grow", &[ClusterState::Available], &repair)
        .await
        .expect("begin")
        .expect("begun");
    let n2 = s.nodes("grow").await.expect("nodes").remove(1);
    assert_eq!(
        (
            n2.id.as_str(),
            n2.phase,
            n2.incarnation,
            n2.token.len(),
            n2.private_ip
        ),
        ("node-2", Phase::Pending, 1, 64, None)
    );
    assert_eq!(n2.token, "t".repeat(64));
    assert_eq!(
        s.finish_change("grow", rid, Err("node-2: the VM did not start"))
            .await
            .expect("finish"),
        ClusterState::Degraded
    );
    let c = s.cluster("grow").await.expect("read").expect("exists");
    assert_eq!(c.reason.as_deref(), Some("node-2: the VM did not start"));
    let h = s.history("grow").await.expect("history");
    let kinds: Vec<(ChangeKind, &str)> = h
        .changes
        .iter()
        .map(|c| (c.kind, c.step.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Create, "done"),
            (ChangeKind::Scale, "done"),
            (ChangeKind::Repair, "done")
        ]
    );
    assert_eq!(h.changes[1].generation, Some(next));
    assert_eq!(h.changes[1].asked_ms, 5);
    assert_eq!(h.changes[1].spec.add, ["node-2"]);
    assert_eq!(
        h.changes[2].outcome,
        Some(Err("node-2: the VM did not start".to_string()))
    );

    // A node whose index is below the next one is refused, and nothing is recorded.
    let bad = NewChange {
        add: vec![node(1)],
        leaving: vec![],
        ..scale
    };
    let c = s.cluster("grow").await.expect("read").expect("exists");
    assert!(matches!(
        s.begin_change("grow", &[ClusterState::Degraded], &bad)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let after = s.cluster("grow").await.expect("read").expect("exists");
    assert_eq!(
        (after.state, after.change, after.node_count),
        (c.state, None, 2)
    );
    assert_eq!(s.history("grow").await.expect("history").changes.len(), 3);
}

fn debug_output_hides_secrets() {
    let c = cluster("demo");
    let n = node(0);
    assert!(!format!("{c:?}").contains(&c.key));
    assert!(!format!("{n:?}").contains(&n.token));
}

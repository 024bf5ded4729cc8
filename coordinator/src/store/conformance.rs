//! The conformance suite every [`Store`] implementation must pass: each backend's tests
//! call [`run`] with a factory of fresh, empty stores. The checks are what the engine
//! relies on: one transaction per call, the store owning the plan's generation,
//! compare-and-set transitions, a deleted name reusable, typed values round-tripping,
//! and concurrent writers not losing each other's writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use shoal_protocol::{NetworkPlan, NodeStatus, Phase, Plan};

use super::{ClusterRow, ClusterState, NodeRow, Store, StoreError, VmRecord};
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
    }
}

/// A node row as the engine records it at creation.
pub fn node(i: u32) -> NodeRow {
    NodeRow {
        id: format!("node-{i}"),
        index: i,
        token: crate::keys::random_secret(),
        instance_id: None,
        private_ip: None,
        details: BTreeMap::new(),
        phase: Phase::Pending,
        status: None,
        requested_ms: Some(1),
        running_ms: None,
        updated_ms: 1,
    }
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
    }
}

fn plan(cluster: &str) -> Plan {
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
    s.set_node_status("demo", "node-1", &status(Phase::Ready, 1))
        .await
        .expect("status");
    assert!(matches!(
        s.set_node_status("demo", "node-9", &status(Phase::Ready, 1))
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
    let c = cluster("typed");
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
    s.insert_cluster(&cluster("many"), &nodes)
        .await
        .expect("insert");
    let writes = (0..64u64).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            s.set_node_status("many", &format!("node-{i}"), &status(Phase::Ready, i))
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

fn debug_output_hides_secrets() {
    let c = cluster("demo");
    let n = node(0);
    assert!(!format!("{c:?}").contains(&c.key));
    assert!(!format!("{n:?}").contains(&n.token));
}

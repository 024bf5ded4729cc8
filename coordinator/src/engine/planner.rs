//! Turns a blueprint and the nodes a provider made into the plan agents obey.
//!
//! Addressing: node `i` (by index) gets the `(i+1)`-th /24 of the overlay as its slice
//! (the first /24 stays unused, so `x.y.0.0` is never a gateway), its gateway is the
//! slice's `.1`, and its containers take `.2`, `.3`, … in blueprint order. Slices follow
//! the index, never the position in the list, and indexes are never reused: adding or
//! removing nodes moves no other node's containers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use shoal_protocol::{
    ContainerPlan, DrainPlan, LivenessPlan, NetworkMode, NetworkPlan, NodePlan, Plan, PlanError,
    RegistryAuth, VolumePlan, DEFAULT_VXLAN_PORT, SCHEMA_VERSION,
};

use crate::blueprint::{expand, parse_volume, registry_of, Blueprint, BlueprintError};

/// The default overlay.
pub const DEFAULT_OVERLAY: &str = "10.240.0.0/16";

/// A node as the provider reported it.
#[derive(Debug, Clone)]
pub struct PlannedNode {
    /// Node id.
    pub id: String,
    /// Index.
    pub index: u32,
    /// Its host group.
    pub group: String,
    /// Being removed (it runs its group's drain hook).
    pub leaving: bool,
    /// Private address.
    pub private_ip: Ipv4Addr,
    /// Provider's id.
    pub instance_id: Option<String>,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// The blueprint does not fit.
    #[error(transparent)]
    Blueprint(#[from] BlueprintError),
    /// The overlay has too few /24 slices.
    #[error("overlay {overlay} has room for {room} nodes (one /24 each, the first left unused), the cluster needs {nodes}")]
    OverlayTooSmall {
        /// Overlay.
        overlay: Ipv4Net,
        /// Slices available.
        room: usize,
        /// Slices needed (the highest node index plus one).
        nodes: usize,
    },
    /// A node names a group the blueprint does not have.
    #[error("node {node} belongs to group {group:?}, which the blueprint does not have")]
    UnknownGroup {
        /// Node.
        node: String,
        /// Its group.
        group: String,
    },
    /// An environment reference did not resolve.
    #[error("container {container}: {message}")]
    Template {
        /// Container.
        container: String,
        /// What failed.
        message: String,
    },
    /// The result failed the agent's own validation (a bug, or bad addresses from the
    /// provider, such as private addresses inside the overlay).
    #[error("the plan would be invalid: {0}")]
    Invalid(#[from] PlanError),
}

/// The FQDN of container `container` on node `node`.
pub fn fqdn(container: &str, node: &str, cluster: &str, domain: &str) -> String {
    format!("{container}-{node}.{cluster}.{domain}")
}

/// Builds the plan (generation 0: the store assigns the real one).
pub fn build(
    cluster: &str,
    blueprint: &Blueprint,
    overlay: Ipv4Net,
    vni: u32,
    nodes: &[PlannedNode],
    liveness: Option<LivenessPlan>,
) -> Result<Plan, PlannerError> {
    let mut nodes: Vec<&PlannedNode> = nodes.iter().collect();
    nodes.sort_by_key(|n| n.index);
    let mut groups = Vec::with_capacity(nodes.len());
    for n in &nodes {
        groups.push(
            blueprint
                .group(&n.group)
                .ok_or_else(|| PlannerError::UnknownGroup {
                    node: n.id.clone(),
                    group: n.group.clone(),
                })?,
        );
    }
    let room = overlay
        .subnets(24)
        .map(|s| s.count().saturating_sub(1))
        .unwrap_or(0);
    let needed = nodes.last().map_or(0, |n| n.index as usize + 1);
    if needed > room {
        return Err(PlannerError::OverlayTooSmall {
            overlay,
            room,
            nodes: needed,
        });
    }
    let slice_of =
        |index: u32| -> Option<Ipv4Net> { overlay.subnets(24).ok()?.nth(index as usize + 1) };
    let mut slices = Vec::with_capacity(nodes.len());
    for n in &nodes {
        slices.push(slice_of(n.index).ok_or(PlannerError::OverlayTooSmall {
            overlay,
            room,
            nodes: needed,
        })?);
    }
    let domain = &blueprint.domain;

    // First pass: names, so ${fqdn:NAME} can resolve to the lowest-index container.
    let mut first_fqdn: BTreeMap<&str, String> = BTreeMap::new();
    for (node, group) in nodes.iter().zip(&groups) {
        for c in &group.containers {
            first_fqdn
                .entry(c.name.as_str())
                .or_insert_with(|| fqdn(&c.name, &node.id, cluster, domain));
        }
    }

    let mut out = Vec::with_capacity(nodes.len());
    for ((node, group), slice) in nodes.iter().zip(&groups).zip(&slices) {
        let mut hosts = slice.hosts();
        let gateway = hosts.next().unwrap_or(slice.network());
        let mut containers = Vec::with_capacity(group.containers.len());
        for c in &group.containers {
            let mut env = BTreeMap::new();
            for (k, v) in &c.env {
                let value = expand(v, cluster, domain, |name| first_fqdn.get(name).cloned())
                    .map_err(|message| PlannerError::Template {
                        container: c.name.clone(),
                        message,
                    })?;
                env.insert(k.clone(), value);
            }
            let mut volumes = Vec::with_capacity(c.volumes.len());
            for v in &c.volumes {
                let (source, target, read_only) =
                    parse_volume(v).map_err(|message| PlannerError::Template {
                        container: c.name.clone(),
                        message,
                    })?;
                volumes.push(VolumePlan {
                    source,
                    target,
                    read_only,
                });
            }
            let address = match c.network {
                NetworkMode::Overlay => hosts.next(),
                NetworkMode::Host => None,
            };
            containers.push(ContainerPlan {
                name: c.name.clone(),
                hostname: fqdn(&c.name, &node.id, cluster, domain),
                image: c.image.clone(),
                network: c.network,
                address,
                command: c.command.clone(),
                env,
                volumes,
                ports: c.ports.clone(),
                registry_auth: blueprint
                    .registries
                    .iter()
                    .find(|r| r.server == registry_of(&c.image))
                    .map(|r| RegistryAuth {
                        server: r.server.clone(),
                        username: r.username.clone(),
                        password: r.password.clone(),
                    }),
            });
        }
        let drain = group
            .drain
            .as_ref()
            .filter(|_| node.leaving)
            .map(|d| DrainPlan {
                container: d.container.clone(),
                exec: d.exec.clone(),
                timeout_secs: d.timeout.0,
            });
        out.push(NodePlan {
            id: node.id.clone(),
            index: node.index,
            private_ip: node.private_ip,
            instance_id: node.instance_id.clone(),
            slice: *slice,
            gateway,
            containers,
            leaving: node.leaving,
            drain,
        });
    }
    let plan = Plan {
        schema: SCHEMA_VERSION,
        cluster: cluster.to_string(),
        generation: 0,
        domain: domain.clone(),
        network: NetworkPlan {
            overlay,
            vni,
            port: DEFAULT_VXLAN_PORT,
            mtu: None,
        },
        nodes: out,
        liveness,
    };
    plan.validate()?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::load;

    fn nodes(n: u32) -> Vec<PlannedNode> {
        (0..n)
            .map(|i| PlannedNode {
                id: format!("node-{i}"),
                index: i,
                group: if i == 0 { "server" } else { "workers" }.into(),
                leaving: false,
                private_ip: Ipv4Addr::new(10, 213, 0, 10 + i as u8),
                instance_id: None,
            })
            .collect()
    }

    #[test]
    fn demo_plan_for_three_nodes() {
        let bp = load("demo").expect("demo");
        let plan = build(
            "demo",
            &bp,
            DEFAULT_OVERLAY.parse().expect("cidr"),
            42,
            &nodes(3),
            None,
        )
        .expect("plan");
        assert_eq!(plan.nodes.len(), 3);
        let n0 = &plan.nodes[0];
        assert_eq!(n0.slice.to_string(), "10.240.1.0/24");
        assert_eq!(n0.gateway.to_string(), "10.240.1.1");
        assert_eq!(n0.containers[0].name, "server");
        assert_eq!(n0.containers[0].address, Some(Ipv4Addr::new(10, 240, 1, 2)));
        assert_eq!(
            n0.containers[0].hostname,
            "server-node-0.demo.shoal.internal"
        );
        let agent2 = &plan.nodes[2].containers[0];
        assert_eq!(agent2.name, "agent");
        assert_eq!(agent2.address, Some(Ipv4Addr::new(10, 240, 3, 2)));
        assert_eq!(
            agent2.env.get("DEMO_SERVER").map(String::as_str),
            Some("server-node-0.demo.shoal.internal")
        );
    }

    #[test]
    fn registry_credentials_reach_the_containers_of_that_registry() {
        let text = r#"
name = "x"
[[registry]]
server = "r.example.com"
username = "u"
password = "p"
[[group]]
name = "a"
count = "rest"
[[group.container]]
name = "private"
image = "r.example.com/team/app:1"
[[group.container]]
name = "public"
image = "busybox:1"
"#;
        let bp = Blueprint::parse("t", text).expect("valid");
        let mut ns = nodes(2);
        for n in &mut ns {
            n.group = "a".into();
        }
        let plan = build(
            "x",
            &bp,
            DEFAULT_OVERLAY.parse().expect("cidr"),
            1,
            &ns,
            None,
        )
        .expect("plan");
        let c = &plan.nodes[1].containers;
        assert_eq!(
            c[0].registry_auth.as_ref().map(|a| a.username.as_str()),
            Some("u")
        );
        assert!(c[1].registry_auth.is_none());
    }

    #[test]
    fn too_many_nodes_for_the_overlay_is_an_error() {
        let bp = load("demo").expect("demo");
        let err = build(
            "demo",
            &bp,
            "10.240.0.0/23".parse().expect("cidr"),
            1,
            &nodes(3),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("room for 1 nodes"), "{err}");
    }

    #[test]
    fn private_addresses_inside_the_overlay_are_caught() {
        let bp = load("demo").expect("demo");
        let mut ns = nodes(2);
        ns[1].private_ip = Ipv4Addr::new(10, 240, 9, 9);
        let err = build(
            "demo",
            &bp,
            DEFAULT_OVERLAY.parse().expect("cidr"),
            1,
            &ns,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, PlannerError::Invalid(_)), "{err}");
    }

    #[test]
    fn slices_follow_the_index_so_removing_a_node_moves_no_other() {
        let bp = load("demo").expect("demo");
        let overlay = DEFAULT_OVERLAY.parse().expect("cidr");
        let all = build("demo", &bp, overlay, 1, &nodes(4), None).expect("plan");
        let mut fewer = nodes(4);
        fewer.remove(1);
        let some = build("demo", &bp, overlay, 1, &fewer, None).expect("plan");
        for n in &some.nodes {
            let before = all.node(&n.id).expect("was planned");
            assert_eq!(n, before, "{} moved when node-1 left", n.id);
        }
        // A node of a group the blueprint lacks is refused by name.
        let mut stray = nodes(2);
        stray[1].group = "nope".into();
        let e = build("demo", &bp, overlay, 1, &stray, None).unwrap_err();
        assert!(
            e.to_string().contains("node-1 belongs to group \"nope\""),
            "{e}"
        );
    }

    #[test]
    fn a_leaving_node_carries_its_groups_drain_hook() {
        let text = r#"
name = "x"
[[group]]
name = "server"
count = 1
[[group.container]]
name = "s"
image = "i"
[[group]]
name = "workers"
count = "rest"
drain = { container = "w", exec = ["drain-me"], timeout = "5m" }
[[group.container]]
name = "w"
image = "i"
"#;
        let bp = Blueprint::parse("t", text).expect("valid");
        let mut ns = nodes(3);
        ns[2].leaving = true;
        let plan = build(
            "x",
            &bp,
            DEFAULT_OVERLAY.parse().expect("cidr"),
            1,
            &ns,
            Some(LivenessPlan { report_secs: 5 }),
        )
        .expect("plan");
        assert!(!plan.nodes[1].leaving && plan.nodes[1].drain.is_none());
        let d = plan.nodes[2].drain.as_ref().expect("drain");
        assert_eq!((d.container.as_str(), d.timeout_secs), ("w", 300));
        assert_eq!(plan.liveness, Some(LivenessPlan { report_secs: 5 }));
    }
}

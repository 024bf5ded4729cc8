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
    ContainerPlan, DiskPlan, DrainPlan, LivenessPlan, NetworkMode, NetworkPlan, NodePlan,
    PeerDrainPlan, Plan, PlanError, RegistryAuth, VolumePlan, DEFAULT_VXLAN_PORT, SCHEMA_VERSION,
};

use crate::blueprint::{
    expand, parse_volume, registry_of, Blueprint, BlueprintError, DrainSpec, HostGroup, Template,
};

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
    /// The ids its provider gave its data disks, in order (see
    /// [`shoal_protocol::DiskPlan::id`]); empty while unknown (a dry run).
    pub disk_ids: Vec<String>,
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
    /// The provider reported another number of data disks than the group asks for.
    #[error("node {node}: its provider attached {have} data disk(s), its group asks for {want}")]
    Disks {
        /// Node.
        node: String,
        /// Disks the provider reported.
        have: usize,
        /// Disks of the group.
        want: usize,
    },
    /// The plan would be larger than agents read (recipes' scripts repeated on many
    /// nodes, mostly).
    #[error("the plan would be {size} bytes, over the {limit}-byte limit agents read (large recipe scripts on many nodes?)")]
    TooLarge {
        /// Its size as JSON.
        size: usize,
        /// [`shoal_protocol::MAX_PLAN_BYTES`].
        limit: usize,
    },
}

/// The FQDN of container `container` on node `node`.
pub fn fqdn(container: &str, node: &str, cluster: &str, domain: &str) -> String {
    format!("{container}-{node}.{cluster}.{domain}")
}

/// The node that runs the drain hooks a blueprint gives to group `group` for leaving
/// nodes of other groups: the group's lowest-index node that is not leaving itself.
pub fn drain_runner<'a>(
    nodes: impl IntoIterator<Item = &'a PlannedNode>,
    group: &str,
) -> Option<&'a PlannedNode> {
    nodes
        .into_iter()
        .filter(|n| n.group == group && !n.leaving)
        .min_by_key(|n| n.index)
}

/// Leaving node `node`'s drain hook `d`, its `${leaving:NAME}` naming `node`'s
/// containers.
fn drain_plan(
    d: &DrainSpec,
    node: &PlannedNode,
    cluster: &str,
    domain: &str,
    resolve: impl Fn(&Template) -> Option<String>,
) -> Result<DrainPlan, PlannerError> {
    let resolve = |t: &Template| match t {
        Template::Leaving(name) => Some(fqdn(name, &node.id, cluster, domain)),
        t => resolve(t),
    };
    let mut exec = Vec::with_capacity(d.exec.len());
    for arg in &d.exec {
        exec.push(expand(arg, cluster, domain, resolve).map_err(|message| {
            PlannerError::Template {
                container: d.container.clone(),
                message,
            }
        })?);
    }
    Ok(DrainPlan {
        container: d.container.clone(),
        exec,
        timeout_secs: d.timeout.0,
    })
}

/// Node `node`'s data disks in `group`: the ids its provider gave them (placeholders in
/// a dry run, before the provider made them).
fn disks_of(group: &HostGroup, node: &PlannedNode) -> Result<Vec<DiskPlan>, PlannerError> {
    let Some(spec) = group.disks else {
        return Ok(Vec::new());
    };
    let count = spec.count as usize;
    let ids: Vec<String> = if node.disk_ids.is_empty() {
        (1..=count).map(|i| format!("lun:{i}")).collect()
    } else {
        node.disk_ids.clone()
    };
    if ids.len() != count {
        return Err(PlannerError::Disks {
            node: node.id.clone(),
            have: ids.len(),
            want: count,
        });
    }
    Ok(ids
        .into_iter()
        .map(|id| DiskPlan {
            id,
            size_gb: spec.size_gb,
        })
        .collect())
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

    // First pass: names, so ${fqdn:NAME} can resolve to the lowest-index container and
    // ${count:NAME} to how many there are.
    let mut first_fqdn: BTreeMap<&str, String> = BTreeMap::new();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (node, group) in nodes.iter().zip(&groups) {
        for c in &group.containers {
            first_fqdn
                .entry(c.name.as_str())
                .or_insert_with(|| fqdn(&c.name, &node.id, cluster, domain));
            *count.entry(c.name.as_str()).or_default() += 1;
        }
    }
    let resolve = |t: &Template| match t {
        Template::Fqdn(name) => first_fqdn.get(name.as_str()).cloned(),
        Template::Count(name) => Some(count.get(name.as_str()).copied().unwrap_or(0).to_string()),
        Template::Cluster | Template::Domain | Template::Leaving(_) => None,
    };

    let mut out = Vec::with_capacity(nodes.len());
    for ((node, group), slice) in nodes.iter().zip(&groups).zip(&slices) {
        let mut hosts = slice.hosts();
        let gateway = hosts.next().unwrap_or(slice.network());
        let mut containers = Vec::with_capacity(group.containers.len());
        for c in &group.containers {
            let template_error = |message| PlannerError::Template {
                container: c.name.clone(),
                message,
            };
            let mut env = BTreeMap::new();
            for (k, v) in &c.env {
                let value = expand(v, cluster, domain, resolve).map_err(template_error)?;
                env.insert(k.clone(), value);
            }
            let ready = c
                .ready
                .as_ref()
                .map(|p| p.to_plan(|v| expand(v, cluster, domain, resolve)))
                .transpose()
                .map_err(template_error)?;
            let mut volumes = Vec::with_capacity(c.volumes.len());
            for v in &c.volumes {
                let (source, target, read_only) = parse_volume(v).map_err(template_error)?;
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
                ready,
                data_disks: c.data_disks.clone(),
            });
        }
        // A hook run by another group's node goes into that node's plan below.
        let drain = match group.drain.as_ref().filter(|_| node.leaving) {
            Some(d) if d.group.is_none() => Some(drain_plan(d, node, cluster, domain, resolve)?),
            _ => None,
        };
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
            peer_drains: Vec::new(),
            recipes: group.recipes.iter().filter_map(|r| r.to_plan()).collect(),
            disks: disks_of(group, node)?,
        });
    }
    for (node, group) in nodes.iter().zip(&groups) {
        let Some((d, runs_in)) = group
            .drain
            .as_ref()
            .filter(|_| node.leaving)
            .and_then(|d| Some((d, d.group.as_deref()?)))
        else {
            continue;
        };
        // No node to run it: the engine says so and fails the scale.
        let Some(runner) = drain_runner(nodes.iter().copied(), runs_in) else {
            continue;
        };
        let hook = drain_plan(d, node, cluster, domain, resolve)?;
        if let Some(n) = out.iter_mut().find(|n| n.id == runner.id) {
            n.peer_drains.push(PeerDrainPlan {
                node: node.id.clone(),
                hook,
            });
        }
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
    let size = serde_json::to_vec(&plan).map_or(0, |v| v.len());
    if size > shoal_protocol::MAX_PLAN_BYTES {
        return Err(PlannerError::TooLarge {
            size,
            limit: shoal_protocol::MAX_PLAN_BYTES,
        });
    }
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
                disk_ids: Vec::new(),
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

    #[test]
    fn a_hook_of_another_group_runs_on_that_groups_first_node() {
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
drain = { group = "server", container = "s", exec = ["retire", "${leaving:w}", "${cluster}"], timeout = "5m" }
[[group.container]]
name = "w"
image = "i"
"#;
        let bp = Blueprint::parse("t", text).expect("valid");
        let mut ns = nodes(4);
        ns[2].leaving = true;
        ns[3].leaving = true;
        let overlay = DEFAULT_OVERLAY.parse().expect("cidr");
        let plan = build("x", &bp, overlay, 1, &ns, None).expect("plan");
        // The leaving nodes run nothing themselves: node-0 (the server) drains both.
        assert!(plan.nodes[1..]
            .iter()
            .all(|n| n.drain.is_none() && n.peer_drains.is_empty()));
        let on: Vec<(&str, &str, &[String])> = plan.nodes[0]
            .peer_drains
            .iter()
            .map(|d| {
                (
                    d.node.as_str(),
                    d.hook.container.as_str(),
                    d.hook.exec.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            on,
            [
                (
                    "node-2",
                    "s",
                    &[
                        "retire".to_string(),
                        "w-node-2.x.shoal.internal".into(),
                        "x".into()
                    ][..]
                ),
                (
                    "node-3",
                    "s",
                    &[
                        "retire".to_string(),
                        "w-node-3.x.shoal.internal".into(),
                        "x".into()
                    ][..]
                ),
            ]
        );
        assert_eq!(plan.nodes[0].peer_drains[0].hook.timeout_secs, 300);
        // The same plan read back by an agent passes its validation, and one that asks
        // a node to drain a node that is not leaving does not.
        let mut bad = plan.clone();
        bad.nodes[0].peer_drains[0].node = "node-1".into();
        let e = bad.validate().expect_err("node-1 is not leaving");
        assert!(
            e.to_string()
                .contains("not another node of the plan marked leaving"),
            "{e}"
        );
        let mut bad = plan.clone();
        bad.nodes[0].peer_drains[0].hook.container = "w".into();
        assert!(bad.validate().is_err(), "w is no container of node-0");
        // With no server left to run it, no hook is planned (the engine refuses the drain).
        ns[0].leaving = true;
        let plan = build("x", &bp, overlay, 1, &ns, None).expect("plan");
        assert!(plan.nodes.iter().all(|n| n.peer_drains.is_empty()));
    }
}

//! What an operator asks for when creating a cluster, and the checks it passes before
//! anything is recorded or made.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use shoal_protocol::{is_dns_label, MAX_NODES};

use super::error::EngineError;
use super::planner::{self, PlannedNode};
use crate::blueprint::Blueprint;
use crate::providers::ProviderParams;

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
    /// Replace a node on its own once it has been lost for this many seconds
    /// (`--auto-repair`); absent: only `repair` replaces nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_repair_secs: Option<u64>,
}

/// The longest auto-repair delay accepted (a week).
pub const MAX_AUTO_REPAIR_SECS: u64 = 7 * 24 * 3600;

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
    if req.nodes == 0 || req.nodes as usize > MAX_NODES {
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
                    "no built-in blueprint {name:?} (built-in: {}); upload a file instead",
                    crate::blueprint::built_in_names().join(", ")
                ))
            })??
        }
    };
    if let Some(secs) = req.auto_repair_secs {
        if secs == 0 || secs > MAX_AUTO_REPAIR_SECS {
            return Err(EngineError::BadRequest(format!(
                "--auto-repair must be between 1 s and {} days, not {secs} s",
                MAX_AUTO_REPAIR_SECS / 86400
            )));
        }
    }
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

/// Builds the plan of `nodes` nodes, laid on the blueprint's groups as a creation lays
/// them, with placeholder addresses outside the overlay.
pub fn dry_run_plan(
    cluster: &str,
    blueprint: &Blueprint,
    overlay: Ipv4Net,
    nodes: u32,
) -> Result<shoal_protocol::Plan, EngineError> {
    let layout: Vec<(String, u32, String)> = blueprint
        .assign(nodes)?
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("node-{i}"), i as u32, g.name.clone()))
        .collect();
    dry_run(cluster, blueprint, overlay, &layout)
}

/// Builds the plan of the nodes `(id, index, group)` with placeholder addresses outside
/// the overlay: whether such a cluster could be planned at all.
pub fn dry_run(
    cluster: &str,
    blueprint: &Blueprint,
    overlay: Ipv4Net,
    layout: &[(String, u32, String)],
) -> Result<shoal_protocol::Plan, EngineError> {
    let underlay = DRY_RUN_UNDERLAYS
        .iter()
        .filter_map(|r| r.parse::<Ipv4Net>().ok())
        .find(|u| !u.contains(&overlay.network()) && !overlay.contains(&u.network()))
        .ok_or_else(|| EngineError::BadRequest(format!("overlay {overlay} is too large")))?;
    let planned: Vec<PlannedNode> = underlay
        .hosts()
        .zip(layout)
        .map(|(ip, (id, index, group))| PlannedNode {
            id: id.clone(),
            index: *index,
            group: group.clone(),
            leaving: false,
            private_ip: ip,
            instance_id: None,
            disk_ids: Vec::new(),
        })
        .collect();
    Ok(planner::build(
        cluster, blueprint, overlay, 1, &planned, None,
    )?)
}

/// What `POST /v1/clusters/{name}/scale` takes: a group's new size, or nodes to remove.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The host group to resize (default: the blueprint's "rest" group, or its only
    /// group that can change size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The group's new number of nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// Nodes to take out, by id (instead of `nodes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// What `POST /v1/clusters/{name}/repair` takes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairRequest {
    /// Nodes to give new VMs (default: every node lost or failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
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
            auto_repair_secs: None,
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

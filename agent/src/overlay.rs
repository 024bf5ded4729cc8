//! The cluster overlay on one VM: a Docker bridge network `shoal` (bridge device
//! `shoal0`) joined to every other node's through the VXLAN device `shoal-vx`, whose FDB
//! holds one all-zeros entry per peer (head-end replication: clouds have no multicast).
//! See docs/network.md.
//!
//! [`converge`] is idempotent: it compares what exists with the plan and changes only
//! the difference, and a second call with the same plan changes nothing. If a step fails
//! part-way it undoes what that call created before returning the error, so the node
//! is never left half-wired. The VM's primary NIC is only read (its index, address and
//! MTU), never changed.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use bollard::errors::Error as BollardError;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest, NetworkInspect};
use bollard::query_parameters::RemoveContainerOptions;
use bollard::Docker;
use ipnet::Ipv4Net;
use rtnetlink::Handle;
use shoal_protocol::{reason, Plan};

pub use shoal_protocol::VXLAN_OVERHEAD;

use crate::docker::{is_not_found, ErrorKind};
use crate::netlink::{self, Link, NetlinkError, VxlanParams};

/// The Docker network every overlay container joins.
pub const NETWORK_NAME: &str = "shoal";
/// The Linux bridge Docker creates for [`NETWORK_NAME`].
pub const BRIDGE_NAME: &str = "shoal0";
/// The VXLAN device enslaved to [`BRIDGE_NAME`].
pub const VXLAN_NAME: &str = "shoal-vx";
/// Label carrying the cluster name on the Docker network.
pub const CLUSTER_LABEL: &str = "io.shoal.cluster";
/// Docker bridge driver option naming the bridge device.
const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// Docker bridge driver option setting the MTU of the containers' interfaces.
const OPT_MTU: &str = "com.docker.network.driver.mtu";
/// The smallest MTU IPv4 allows.
const MIN_MTU: u32 = 68;

/// A failure to wire the overlay. Every variant names the interface, address or
/// network involved.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The plan does not list this node.
    #[error("node {node} is not in the plan")]
    NodeNotInPlan {
        /// Node id.
        node: String,
    },
    /// The node's private address is on no interface: the underlay cannot be found.
    #[error("cannot find the underlay interface holding {address}: {source}")]
    Underlay {
        /// The node's private address.
        address: Ipv4Addr,
        /// Cause.
        source: NetlinkError,
    },
    /// The overlay MTU does not fit the underlay.
    #[error(
        "overlay MTU {mtu} does not fit underlay {underlay} (MTU {underlay_mtu}, VXLAN \
         needs {VXLAN_OVERHEAD} bytes; the overlay MTU must be {MIN_MTU} to {max})",
        max = underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    )]
    Mtu {
        /// Requested (or derived) overlay MTU.
        mtu: u32,
        /// Underlay interface.
        underlay: String,
        /// Its MTU.
        underlay_mtu: u32,
    },
    /// A netlink operation failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Docker refused an operation on the network.
    #[error("Docker network {network}: cannot {action}: {source}")]
    Docker {
        /// Network name.
        network: String,
        /// What was being done.
        action: String,
        /// Docker's answer.
        source: BollardError,
    },
    /// The Docker engine could not be reached.
    #[error(
        "Docker network {network}: cannot {action}, the Docker engine is unreachable: {source}"
    )]
    DockerUnreachable {
        /// Network name.
        network: String,
        /// What was being done.
        action: String,
        /// Cause.
        source: BollardError,
    },
    /// Docker created the network but its bridge device is not there.
    #[error("Docker network {network} exists but its bridge {bridge} does not")]
    BridgeMissing {
        /// Network name.
        network: String,
        /// Bridge device name.
        bridge: String,
    },
    /// A step failed and undoing it failed too: the node may be half-wired.
    #[error("{error}; undoing this call's changes also failed: {}", rollback.join("; "))]
    Rollback {
        /// The original failure.
        error: Box<OverlayError>,
        /// What could not be undone.
        rollback: Vec<String>,
    },
    /// Teardown could not remove everything; each failure is listed.
    #[error("overlay teardown incomplete: {}", join(errors))]
    Teardown {
        /// Every failure, in order.
        errors: Vec<OverlayError>,
    },
}

fn join(errors: &[OverlayError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl OverlayError {
    /// The stable reason code the agent reports for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            OverlayError::DockerUnreachable { .. } => reason::DOCKER_UNREACHABLE,
            OverlayError::Rollback { error, .. } => error.reason(),
            OverlayError::Teardown { errors }
                if !errors.is_empty()
                    && errors
                        .iter()
                        .all(|e| e.reason() == reason::DOCKER_UNREACHABLE) =>
            {
                reason::DOCKER_UNREACHABLE
            }
            _ => reason::NETWORK_FAILED,
        }
    }

    fn with_rollback(self, rollback: Vec<String>) -> OverlayError {
        if rollback.is_empty() {
            self
        } else {
            OverlayError::Rollback {
                error: Box::new(self),
                rollback,
            }
        }
    }
}

/// Words a Docker API error on the network: [`OverlayError::DockerUnreachable`] when the
/// engine did not answer, else [`OverlayError::Docker`].
fn docker_error(action: &str, source: BollardError) -> OverlayError {
    let network = NETWORK_NAME.to_string();
    let action = action.to_string();
    if ErrorKind::of(&source) == ErrorKind::Unreachable {
        OverlayError::DockerUnreachable {
            network,
            action,
            source,
        }
    } else {
        OverlayError::Docker {
            network,
            action,
            source,
        }
    }
}

/// What [`converge`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OverlayReport {
    /// Whether anything changed (false on a rerun with the same plan).
    pub changed: bool,
    /// The Docker network was created (or recreated with new settings).
    pub network_created: bool,
    /// `shoal-vx` was created (or recreated with new settings).
    pub vxlan_created: bool,
    /// Peers whose FDB entry was added.
    pub fdb_added: Vec<Ipv4Addr>,
    /// Peers whose FDB entry was removed.
    pub fdb_removed: Vec<Ipv4Addr>,
    /// The overlay MTU in force.
    pub mtu: u32,
}

/// What [`converge_link`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkReport {
    /// Whether anything changed.
    pub changed: bool,
    /// The VXLAN device was created (or recreated with new settings).
    pub vxlan_created: bool,
    /// Peers whose FDB entry was added, sorted.
    pub fdb_added: Vec<Ipv4Addr>,
    /// Peers whose FDB entry was removed, sorted.
    pub fdb_removed: Vec<Ipv4Addr>,
    /// The MTU of the VXLAN device.
    pub mtu: u32,
}

/// The VXLAN device one node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name ([`VXLAN_NAME`] in production).
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// The node's private address (the tunnel's source).
    pub local: Ipv4Addr,
    /// The underlay interface the tunnel runs over (holds `local`).
    pub underlay: String,
    /// The overlay MTU; `None` means the underlay's MTU minus [`VXLAN_OVERHEAD`].
    pub mtu: Option<u32>,
}

/// The overlay MTU: the planned one, or the underlay's minus the VXLAN overhead. Either
/// must leave room for the encapsulation on `underlay`.
pub fn overlay_mtu(planned: Option<u32>, underlay: &Link) -> Result<u32, OverlayError> {
    let max = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
    let mtu = planned.unwrap_or(max);
    if mtu < MIN_MTU || mtu > max {
        return Err(OverlayError::Mtu {
            mtu,
            underlay: underlay.name.clone(),
            underlay_mtu: underlay.mtu,
        });
    }
    Ok(mtu)
}

/// The netlink half of the overlay: makes `spec.name` a VXLAN device with exactly the
/// spec's settings, enslaved to `bridge` and up (the bridge too), whose FDB holds one
/// all-zeros entry per address of `peers` and no other. The bridge must exist.
///
/// A device with other settings is deleted and recreated; a wrong MTU is corrected in
/// place. On failure, whatever this call created is removed again (a new device, FDB
/// entries it added) and entries it removed are put back.
pub async fn converge_link(
    handle: &Handle,
    spec: &VxlanSpec,
    bridge: &str,
    peers: &[Ipv4Addr],
) -> Result<LinkReport, OverlayError> {
    let underlay = netlink::link_by_name(handle, &spec.underlay)
        .await?
        .ok_or_else(|| NetlinkError::NotFound {
            name: spec.underlay.clone(),
        })?;
    let mtu = overlay_mtu(spec.mtu, &underlay)?;
    let bridge_link = netlink::link_by_name(handle, bridge)
        .await?
        .ok_or_else(|| NetlinkError::NotFound {
            name: bridge.to_string(),
        })?;
    let params = VxlanParams {
        name: spec.name.clone(),
        vni: spec.vni,
        port: spec.port,
        local: spec.local,
        dev: underlay.index,
    };

    let mut report = LinkReport {
        mtu,
        ..LinkReport::default()
    };
    let vxlan = match netlink::link_by_name(handle, &spec.name).await? {
        Some(link) if params.matches(&link) => link,
        existing => {
            if let Some(stale) = existing {
                tracing::info!(
                    device = %stale.name,
                    "VXLAN device has other settings: recreating it"
                );
                netlink::delete_link(handle, &stale).await?;
            }
            let link = netlink::create_vxlan(handle, &params).await?;
            tracing::info!(
                device = %link.name,
                vni = spec.vni,
                local = %spec.local,
                underlay = %underlay.name,
                "created VXLAN device"
            );
            report.vxlan_created = true;
            report.changed = true;
            link
        }
    };

    match finish_link(handle, &vxlan, &bridge_link, mtu, peers, &mut report).await {
        Ok(()) => Ok(report),
        Err(error) => {
            let mut rollback = Vec::new();
            if report.vxlan_created {
                // Deleting the new device also drops every FDB entry added to it.
                if let Err(e) = netlink::delete_link(handle, &vxlan).await {
                    rollback.push(e.to_string());
                }
            }
            Err(error.with_rollback(rollback))
        }
    }
}

/// The steps after the device exists; any failure makes [`converge_link`] roll back.
async fn finish_link(
    handle: &Handle,
    vxlan: &Link,
    bridge: &Link,
    mtu: u32,
    peers: &[Ipv4Addr],
    report: &mut LinkReport,
) -> Result<(), OverlayError> {
    if vxlan.mtu != mtu {
        netlink::set_mtu(handle, vxlan, mtu).await?;
        report.changed = true;
    }
    // Docker may leave its bridge down until a container attaches; the overlay needs it
    // up so the node's own gateway address answers across the tunnel.
    if !bridge.up {
        netlink::set_up(handle, bridge).await?;
        report.changed = true;
    }
    if vxlan.controller != Some(bridge.index) || !vxlan.up {
        netlink::enslave_up(handle, vxlan, bridge).await?;
        report.changed = true;
    }
    let (added, removed) = sync_fdb(handle, vxlan, peers, !report.vxlan_created).await?;
    report.changed |= !added.is_empty() || !removed.is_empty();
    report.fdb_added = added;
    report.fdb_removed = removed;
    Ok(())
}

/// Makes `vxlan`'s all-zeros entries exactly `peers`: adds the missing ones first (so
/// continuing peers never lose a path), then removes the stale ones. If `undo` and a
/// step fails, the entries changed so far are restored.
async fn sync_fdb(
    handle: &Handle,
    vxlan: &Link,
    peers: &[Ipv4Addr],
    undo: bool,
) -> Result<(Vec<Ipv4Addr>, Vec<Ipv4Addr>), OverlayError> {
    let wanted: BTreeSet<Ipv4Addr> = peers.iter().copied().collect();
    let present: BTreeSet<Ipv4Addr> = netlink::fdb_zero_entries(handle, vxlan)
        .await?
        .into_iter()
        .collect();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut outcome = Ok(());
    for dst in wanted.difference(&present) {
        if let Err(e) = netlink::fdb_add_zero(handle, vxlan, *dst).await {
            outcome = Err(e);
            break;
        }
        added.push(*dst);
    }
    if outcome.is_ok() {
        for dst in present.difference(&wanted) {
            match netlink::fdb_del_zero(handle, vxlan, *dst).await {
                // Already gone (removed concurrently): the goal is reached.
                Ok(()) | Err(NetlinkError::FdbNotFound { .. }) => removed.push(*dst),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    match outcome {
        Ok(()) => {
            for dst in &added {
                tracing::info!(device = %vxlan.name, %dst, "added FDB entry for peer");
            }
            for dst in &removed {
                tracing::info!(device = %vxlan.name, %dst, "removed FDB entry of former peer");
            }
            Ok((added, removed))
        }
        Err(error) => {
            let mut rollback = Vec::new();
            if undo {
                for dst in &added {
                    if let Err(e) = netlink::fdb_del_zero(handle, vxlan, *dst).await {
                        rollback.push(e.to_string());
                    }
                }
                for dst in &removed {
                    if let Err(e) = netlink::fdb_add_zero(handle, vxlan, *dst).await {
                        rollback.push(e.to_string());
                    }
                }
            }
            Err(OverlayError::from(error).with_rollback(rollback))
        }
    }
}

/// The Docker network one node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Cluster name (labels the network).
    pub cluster: String,
    /// The whole overlay range.
    pub subnet: Ipv4Net,
    /// This node's slice, from which Docker hands out container addresses.
    pub ip_range: Ipv4Net,
    /// This node's gateway address (Docker puts it on the bridge).
    pub gateway: Ipv4Addr,
    /// MTU of the containers' interfaces.
    pub mtu: u32,
}

impl NetworkSpec {
    /// The `POST /networks/create` body.
    pub fn create_request(&self) -> NetworkCreateRequest {
        NetworkCreateRequest {
            name: NETWORK_NAME.to_string(),
            driver: Some("bridge".to_string()),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(vec![IpamConfig {
                    subnet: Some(self.subnet.to_string()),
                    ip_range: Some(self.ip_range.to_string()),
                    gateway: Some(self.gateway.to_string()),
                    auxiliary_addresses: None,
                }]),
                options: None,
            }),
            options: Some(HashMap::from([
                (OPT_BRIDGE_NAME.to_string(), BRIDGE_NAME.to_string()),
                (OPT_MTU.to_string(), self.mtu.to_string()),
            ])),
            labels: Some(HashMap::from([(
                CLUSTER_LABEL.to_string(),
                self.cluster.clone(),
            )])),
            ..NetworkCreateRequest::default()
        }
    }

    /// Whether an existing network has exactly these settings. Addresses are compared
    /// parsed, so Docker's spelling of them does not matter.
    pub fn matches(&self, network: &NetworkInspect) -> bool {
        let option = |key: &str| {
            network
                .options
                .as_ref()
                .and_then(|o| o.get(key))
                .map(String::as_str)
        };
        let label = network
            .labels
            .as_ref()
            .and_then(|l| l.get(CLUSTER_LABEL))
            .map(String::as_str);
        let ipam_ok = match network.ipam.as_ref().and_then(|i| i.config.as_deref()) {
            Some([config]) => {
                parsed::<Ipv4Net>(&config.subnet) == Some(self.subnet)
                    && parsed::<Ipv4Net>(&config.ip_range) == Some(self.ip_range)
                    && parsed::<Ipv4Addr>(&config.gateway) == Some(self.gateway)
            }
            _ => false,
        };
        network.driver.as_deref() == Some("bridge")
            && option(OPT_BRIDGE_NAME) == Some(BRIDGE_NAME)
            && option(OPT_MTU).and_then(|m| m.parse::<u32>().ok()) == Some(self.mtu)
            && label == Some(self.cluster.as_str())
            && ipam_ok
    }
}

fn parsed<T: std::str::FromStr>(value: &Option<String>) -> Option<T> {
    value.as_deref().and_then(|v| v.parse().ok())
}

/// Makes the Docker network [`NETWORK_NAME`] match `spec`. Returns whether it was
/// (re)created. A network with other settings (or any, with `recreate`) is removed,
/// after force-removing the containers attached to it (the container step recreates
/// them), and created anew.
pub async fn ensure_network(
    docker: &Docker,
    spec: &NetworkSpec,
    recreate: bool,
) -> Result<bool, OverlayError> {
    match docker.inspect_network(NETWORK_NAME, None).await {
        Ok(existing) if spec.matches(&existing) && !recreate => return Ok(false),
        Ok(existing) => {
            tracing::info!(network = NETWORK_NAME, "recreating the Docker network");
            let containers: Vec<String> = existing
                .containers
                .unwrap_or_default()
                .into_keys()
                .collect();
            for id in containers {
                let options = RemoveContainerOptions {
                    force: true,
                    ..RemoveContainerOptions::default()
                };
                match docker.remove_container(&id, Some(options)).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(docker_error(&format!("remove its container {id}"), e)),
                }
            }
            match docker.remove_network(NETWORK_NAME).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(docker_error("remove it", e)),
            }
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(docker_error("inspect it", e)),
    }
    docker
        .create_network(spec.create_request())
        .await
        .map_err(|e| docker_error("create it", e))?;
    tracing::info!(
        network = NETWORK_NAME,
        subnet = %spec.subnet,
        ip_range = %spec.ip_range,
        gateway = %spec.gateway,
        mtu = spec.mtu,
        "created Docker network"
    );
    Ok(true)
}

/// This node's entry in the plan and the underlay interface holding its private address.
async fn node_and_underlay<'p>(
    handle: &Handle,
    plan: &'p Plan,
    node_id: &str,
) -> Result<(&'p shoal_protocol::NodePlan, Link), OverlayError> {
    let node = plan
        .node(node_id)
        .ok_or_else(|| OverlayError::NodeNotInPlan {
            node: node_id.to_string(),
        })?;
    let underlay = netlink::link_by_address(handle, node.private_ip)
        .await
        .map_err(|source| OverlayError::Underlay {
            address: node.private_ip,
            source,
        })?;
    Ok((node, underlay))
}

/// Converges this node's overlay to the plan: the Docker network `shoal` (its bridge
/// `shoal0`), the VXLAN device `shoal-vx` on the underlay interface that holds the
/// node's private address, and one FDB entry per peer. `handle` must act on the node's
/// network namespace (see [`crate::netns`]).
///
/// Idempotent; on failure, what this call created is removed again (see the module
/// documentation).
pub async fn converge(
    docker: &Docker,
    handle: &Handle,
    plan: &Plan,
    node_id: &str,
) -> Result<OverlayReport, OverlayError> {
    let (node, underlay) = node_and_underlay(handle, plan, node_id).await?;
    let mtu = overlay_mtu(plan.network.mtu, &underlay)?;
    let network = NetworkSpec {
        cluster: plan.cluster.clone(),
        subnet: plan.network.overlay,
        ip_range: node.slice,
        gateway: node.gateway,
        mtu,
    };
    let mut network_created = ensure_network(docker, &network, false).await?;
    if !network_created && netlink::link_by_name(handle, BRIDGE_NAME).await?.is_none() {
        // The network is there but its bridge is gone (deleted by hand, or lost): Docker
        // only makes the device when it creates the network, so recreate it.
        tracing::warn!(
            bridge = BRIDGE_NAME,
            "bridge of the Docker network is missing"
        );
        network_created = ensure_network(docker, &network, true).await?;
    }

    let spec = VxlanSpec {
        name: VXLAN_NAME.to_string(),
        vni: plan.network.vni,
        port: plan.network.port,
        local: node.private_ip,
        underlay: underlay.name.clone(),
        mtu: Some(mtu),
    };
    let linked = match netlink::link_by_name(handle, BRIDGE_NAME).await {
        Ok(Some(_)) => converge_link(handle, &spec, BRIDGE_NAME, &plan.peers_of(node_id)).await,
        Ok(None) => Err(OverlayError::BridgeMissing {
            network: NETWORK_NAME.to_string(),
            bridge: BRIDGE_NAME.to_string(),
        }),
        Err(e) => Err(e.into()),
    };
    match linked {
        Ok(link) => Ok(OverlayReport {
            changed: network_created || link.changed,
            network_created,
            vxlan_created: link.vxlan_created,
            fdb_added: link.fdb_added,
            fdb_removed: link.fdb_removed,
            mtu,
        }),
        Err(error) => {
            let mut rollback = Vec::new();
            if network_created {
                if let Err(e) = docker.remove_network(NETWORK_NAME).await {
                    rollback.push(docker_error("remove it", e).to_string());
                }
            }
            Err(error.with_rollback(rollback))
        }
    }
}

/// Whether this node's overlay is still as [`converge`] left it, read from the kernel
/// only (no Docker call, so it is cheap enough to run on every netlink notification):
/// `None` when it is, else what is missing or changed, naming the device (and the peer
/// of a missing FDB entry). The resident agent reports that as
/// `network-device-missing` and converges again.
pub async fn check(
    handle: &Handle,
    plan: &Plan,
    node_id: &str,
) -> Result<Option<String>, OverlayError> {
    let (node, underlay) = node_and_underlay(handle, plan, node_id).await?;
    let Some(bridge) = netlink::link_by_name(handle, BRIDGE_NAME).await? else {
        return Ok(Some(format!("the bridge {BRIDGE_NAME} was removed")));
    };
    if !bridge.up {
        return Ok(Some(format!("the bridge {BRIDGE_NAME} was set down")));
    }
    let Some(vxlan) = netlink::link_by_name(handle, VXLAN_NAME).await? else {
        return Ok(Some(format!("the VXLAN device {VXLAN_NAME} was removed")));
    };
    let params = VxlanParams {
        name: VXLAN_NAME.to_string(),
        vni: plan.network.vni,
        port: plan.network.port,
        local: node.private_ip,
        dev: underlay.index,
    };
    if !params.matches(&vxlan) {
        return Ok(Some(format!(
            "the VXLAN device {VXLAN_NAME} was replaced by one with other settings"
        )));
    }
    if vxlan.controller != Some(bridge.index) {
        return Ok(Some(format!(
            "the VXLAN device {VXLAN_NAME} was taken off the bridge {BRIDGE_NAME}"
        )));
    }
    if !vxlan.up {
        return Ok(Some(format!("the VXLAN device {VXLAN_NAME} was set down")));
    }
    let present: BTreeSet<Ipv4Addr> = netlink::fdb_zero_entries(handle, &vxlan)
        .await?
        .into_iter()
        .collect();
    let missing: Vec<String> = plan
        .peers_of(node_id)
        .into_iter()
        .filter(|p| !present.contains(p))
        .map(|p| p.to_string())
        .collect();
    if !missing.is_empty() {
        let entries = if missing.len() == 1 {
            "entry"
        } else {
            "entries"
        };
        return Ok(Some(format!(
            "the FDB {entries} of {VXLAN_NAME} for {} removed",
            missing.join(", ") + if missing.len() == 1 { " was" } else { " were" }
        )));
    }
    Ok(None)
}

/// Removes the overlay from this node: `shoal-vx`, then the Docker network (which fails
/// while containers are still attached to it: remove them first). Every step is tried;
/// the failures are returned together. Absent pieces are not an error, so teardown is
/// safe to repeat.
pub async fn teardown(docker: &Docker, handle: &Handle) -> Result<(), OverlayError> {
    let mut errors = Vec::new();
    match netlink::link_by_name(handle, VXLAN_NAME).await {
        Ok(Some(link)) => match netlink::delete_link(handle, &link).await {
            Ok(()) | Err(NetlinkError::NotFound { .. }) => {}
            Err(e) => errors.push(e.into()),
        },
        Ok(None) => {}
        Err(e) => errors.push(e.into()),
    }
    match docker.remove_network(NETWORK_NAME).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => errors.push(docker_error("remove it", e)),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(OverlayError::Teardown { errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        NetworkSpec {
            cluster: "demo".into(),
            subnet: "10.240.0.0/16".parse().expect("cidr"),
            ip_range: "10.240.1.0/24".parse().expect("cidr"),
            gateway: Ipv4Addr::new(10, 240, 1, 1),
            mtu: 1450,
        }
    }

    /// What Docker 20.10 answers for the network `create_request` made.
    fn as_docker_reports_it(spec: &NetworkSpec) -> NetworkInspect {
        let request = spec.create_request();
        NetworkInspect {
            name: Some(request.name),
            driver: request.driver,
            ipam: request.ipam,
            options: request.options,
            labels: request.labels,
            ..NetworkInspect::default()
        }
    }

    #[test]
    fn the_network_request_carries_the_plan() {
        let request = spec().create_request();
        assert_eq!(request.name, "shoal");
        assert_eq!(request.driver.as_deref(), Some("bridge"));
        let options = request.options.expect("options");
        assert_eq!(options[OPT_BRIDGE_NAME], "shoal0");
        assert_eq!(options[OPT_MTU], "1450");
        assert_eq!(request.labels.expect("labels")[CLUSTER_LABEL], "demo");
        let config = &request.ipam.expect("ipam").config.expect("config")[0];
        assert_eq!(config.subnet.as_deref(), Some("10.240.0.0/16"));
        assert_eq!(config.ip_range.as_deref(), Some("10.240.1.0/24"));
        assert_eq!(config.gateway.as_deref(), Some("10.240.1.1"));
    }

    #[test]
    fn a_network_matches_only_with_every_setting_equal() {
        let good = as_docker_reports_it(&spec());
        assert!(spec().matches(&good));
        let changes: Vec<fn(&mut NetworkSpec)> = vec![
            |s| s.cluster = "other".into(),
            |s| s.subnet = "10.241.0.0/16".parse().expect("cidr"),
            |s| s.ip_range = "10.240.2.0/24".parse().expect("cidr"),
            |s| s.gateway = Ipv4Addr::new(10, 240, 1, 254),
            |s| s.mtu = 1400,
        ];
        for change in changes {
            let mut other = spec();
            change(&mut other);
            assert!(!other.matches(&good), "{other:?} should not match");
        }
        let mut renamed_bridge = good.clone();
        renamed_bridge
            .options
            .as_mut()
            .expect("options")
            .insert(OPT_BRIDGE_NAME.into(), "br-x".into());
        assert!(!spec().matches(&renamed_bridge));
        let mut macvlan = good;
        macvlan.driver = Some("macvlan".into());
        assert!(!spec().matches(&macvlan));
    }

    fn eth0(mtu: u32) -> Link {
        Link {
            index: 2,
            name: "eth0".into(),
            mtu,
            up: true,
            controller: None,
            kind: None,
            vxlan: None,
        }
    }

    #[test]
    fn the_mtu_leaves_room_for_vxlan() {
        assert_eq!(overlay_mtu(None, &eth0(1500)).expect("fits"), 1450);
        assert_eq!(overlay_mtu(None, &eth0(9001)).expect("fits"), 8951);
        assert_eq!(overlay_mtu(Some(1400), &eth0(1500)).expect("fits"), 1400);
        let too_big = overlay_mtu(Some(1480), &eth0(1500)).expect_err("too big");
        assert!(too_big.to_string().contains("eth0"), "{too_big}");
        assert_eq!(too_big.reason(), reason::NETWORK_FAILED);
        assert!(overlay_mtu(None, &eth0(100)).is_err());
    }

    #[test]
    fn reasons_are_stable() {
        let unreachable = docker_error(
            "inspect it",
            BollardError::SocketNotFoundError("/run/docker.sock".into()),
        );
        assert_eq!(unreachable.reason(), reason::DOCKER_UNREACHABLE);
        let refused = docker_error(
            "create it",
            BollardError::DockerResponseServerError {
                status_code: 409,
                message: "conflict".into(),
            },
        );
        assert_eq!(refused.reason(), reason::NETWORK_FAILED);
        assert!(
            refused.to_string().contains("Docker network shoal"),
            "{refused}"
        );
        let rolled = refused.with_rollback(vec!["x".into()]);
        assert_eq!(rolled.reason(), reason::NETWORK_FAILED);
        let teardown = OverlayError::Teardown {
            errors: vec![unreachable],
        };
        assert_eq!(teardown.reason(), reason::DOCKER_UNREACHABLE);
    }
}

//! Watching the overlay's devices through the kernel's own notifications.
//!
//! A netlink socket that joins the link and neighbour multicast groups (`RTNLGRP_LINK`,
//! `RTNLGRP_NEIGH`) is told of every link created, changed or removed and of every FDB
//! entry added or removed in the namespace, by anyone. [`spawn`] keeps one open in the
//! VM's namespace and signals the resident loop whenever a notification concerns the
//! overlay (the bridge, the VXLAN device, or an all-zeros FDB entry); the loop then
//! reads the overlay back ([`crate::overlay::check`]) and converges only if something
//! is missing. A signal is a hint, not a verdict: the agent's own changes (a new
//! device, a former peer's entry removed) notify too, and the check finds nothing wrong
//! with them, so they never make the node look unhealthy.

use futures_util::StreamExt;
use rtnetlink::constants::{RTMGRP_LINK, RTMGRP_NEIGH};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use tokio::sync::mpsc;

use crate::netlink::ZERO_MAC;
use crate::netns::{self, NetnsError};
use crate::overlay::{BRIDGE_NAME, VXLAN_NAME};

/// What a notification says about the overlay, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// A link of the overlay was removed (its name).
    LinkRemoved(String),
    /// A link of the overlay was created or changed (its name).
    LinkChanged(String),
    /// An all-zeros FDB entry was removed (the index of its device).
    FdbRemoved(u32),
}

/// Whether `message` concerns the overlay: a link named [`BRIDGE_NAME`] or
/// [`VXLAN_NAME`] created, changed or removed, or an all-zeros bridge FDB entry removed.
pub fn touches_overlay(message: &RouteNetlinkMessage) -> Option<Touched> {
    let overlay_name = |m: &LinkMessage| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) if n == BRIDGE_NAME || n == VXLAN_NAME => Some(n.clone()),
            _ => None,
        })
    };
    let zero_entry = |m: &NeighbourMessage| {
        m.header.family == AddressFamily::Bridge
            && m.attributes.iter().any(
                |a| matches!(a, NeighbourAttribute::LinkLayerAddress(mac) if mac[..] == ZERO_MAC),
            )
    };
    match message {
        RouteNetlinkMessage::DelLink(m) => overlay_name(m).map(Touched::LinkRemoved),
        RouteNetlinkMessage::NewLink(m) => overlay_name(m).map(Touched::LinkChanged),
        RouteNetlinkMessage::DelNeighbour(m) if zero_entry(m) => {
            Some(Touched::FdbRemoved(m.header.ifindex))
        }
        _ => None,
    }
}

/// Starts watching the current namespace's links and neighbours; every notification
/// that [`touches_overlay`] is sent on `tx` (dropped when a signal is already waiting:
/// one is enough to make the loop check everything). Ends when `tx` is closed or the
/// socket fails, which is logged.
pub fn spawn(tx: mpsc::Sender<Touched>) -> Result<(), NetnsError> {
    let (connection, mut notifications) = netns::subscribe(RTMGRP_LINK | RTMGRP_NEIGH)?;
    tokio::spawn(async move {
        let driver = tokio::spawn(connection);
        while let Some((message, _)) = notifications.next().await {
            let NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(inner),
                ..
            } = message
            else {
                continue;
            };
            if let Some(touched) = touches_overlay(&inner) {
                match tx.try_send(touched) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
        driver.abort();
        tracing::warn!(
            "the netlink watch ended: overlay faults are found only at the next convergence"
        );
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::neighbour::NeighbourAddress;
    use std::net::Ipv4Addr;

    fn link(name: &str) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m
    }

    fn fdb(mac: [u8; 6]) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = 9;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                Ipv4Addr::new(192, 0, 2, 2),
            )));
        m
    }

    #[test]
    fn only_the_overlays_devices_and_replication_entries_count() {
        assert_eq!(
            touches_overlay(&RouteNetlinkMessage::DelLink(link("shoal-vx"))),
            Some(Touched::LinkRemoved("shoal-vx".into()))
        );
        assert_eq!(
            touches_overlay(&RouteNetlinkMessage::NewLink(link("shoal0"))),
            Some(Touched::LinkChanged("shoal0".into()))
        );
        assert_eq!(
            touches_overlay(&RouteNetlinkMessage::DelLink(link("veth1234"))),
            None
        );
        assert_eq!(
            touches_overlay(&RouteNetlinkMessage::DelNeighbour(fdb(ZERO_MAC))),
            Some(Touched::FdbRemoved(9))
        );
        // A container's MAC ageing out of the bridge is no fault.
        assert_eq!(
            touches_overlay(&RouteNetlinkMessage::DelNeighbour(fdb([
                2, 66, 10, 0, 0, 2
            ]))),
            None
        );
        // Entries added are the agent's own doing, or harmless.
        assert_eq!(
            touches_overlay(&RouteNetlinkMessage::NewNeighbour(fdb(ZERO_MAC))),
            None
        );
    }
}

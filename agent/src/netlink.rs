//! A thin, typed layer over rtnetlink for the overlay: links, the VXLAN device, and the
//! VXLAN device's forwarding database (FDB).
//!
//! Every write asks the kernel for an acknowledgement and waits for it, so a function
//! that returns `Ok` has really changed the kernel's state. Kernel refusals become
//! [`NetlinkError`]s that name the interface (and the address) involved: "exists" and
//! "not found" get variants of their own, since callers act on them.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::StreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

/// The link-layer address of a VXLAN "default destination" entry: frames for any MAC
/// the device does not know are sent to every such entry's `dst` (head-end replication).
pub const ZERO_MAC: [u8; 6] = [0; 6];

/// A failed netlink operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Creating a link whose name is taken.
    #[error("interface {name} already exists")]
    Exists {
        /// Interface name.
        name: String,
    },
    /// The interface does not exist (any more).
    #[error("interface {name} not found")]
    NotFound {
        /// Interface name (or `#index` when only the index is known).
        name: String,
    },
    /// No interface carries this IPv4 address.
    #[error("no interface holds the address {address}")]
    NoLinkWithAddress {
        /// The address looked for.
        address: Ipv4Addr,
    },
    /// Removing an FDB entry that is not there.
    #[error("FDB entry 00:00:00:00:00:00 dst {dst} not found on {name}")]
    FdbNotFound {
        /// VXLAN device name.
        name: String,
        /// Peer address.
        dst: Ipv4Addr,
    },
    /// The kernel refused a request.
    #[error("{name}: cannot {action}: {source}")]
    Kernel {
        /// What was being done, e.g. `create VXLAN device`.
        action: String,
        /// Interface name.
        name: String,
        /// The kernel's errno.
        source: io::Error,
    },
    /// The request could not be exchanged at all (connection closed, odd answer).
    #[error("{name}: netlink request to {action} failed: {detail}")]
    Request {
        /// What was being done.
        action: String,
        /// Interface name.
        name: String,
        /// What went wrong.
        detail: String,
    },
}

/// What one exchange can fail with, before the caller adds its context.
enum Failure {
    Errno(io::Error),
    Other(String),
}

impl Failure {
    /// Adds the action and interface to a failure; EEXIST and ENODEV get variants of
    /// their own.
    fn on(self, action: &str, name: &str) -> NetlinkError {
        match self {
            Failure::Errno(e) if e.raw_os_error() == Some(libc_errno::EEXIST) => {
                NetlinkError::Exists {
                    name: name.to_string(),
                }
            }
            Failure::Errno(e) if e.raw_os_error() == Some(libc_errno::ENODEV) => {
                NetlinkError::NotFound {
                    name: name.to_string(),
                }
            }
            Failure::Errno(source) => NetlinkError::Kernel {
                action: action.to_string(),
                name: name.to_string(),
                source,
            },
            Failure::Other(detail) => NetlinkError::Request {
                action: action.to_string(),
                name: name.to_string(),
                detail,
            },
        }
    }
}

/// The errno values this module tells apart (stable Linux ABI numbers, taken from nix so
/// no libc dependency is added).
mod libc_errno {
    use nix::errno::Errno;
    pub const EEXIST: i32 = Errno::EEXIST as i32;
    pub const ENODEV: i32 = Errno::ENODEV as i32;
    pub const ENOENT: i32 = Errno::ENOENT as i32;
}

/// Sends one request and collects the answers until the kernel's final message: the
/// ACK for a write (the connection consumes it and ends the stream), `DONE` for a dump.
async fn exchange(
    handle: &Handle,
    message: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, Failure> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = flags;
    let mut handle = handle.clone();
    let mut answers = handle
        .request(request)
        .map_err(|e| Failure::Other(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(answer) = answers.next().await {
        match answer.payload {
            NetlinkPayload::InnerMessage(inner) => out.push(inner),
            NetlinkPayload::Error(err) => {
                // `code: None` is an ACK (only forwarded if the connection asks for it).
                if let Some(code) = err.code {
                    return Err(Failure::Errno(io::Error::from_raw_os_error(
                        code.get().abs(),
                    )));
                }
            }
            NetlinkPayload::Overrun(_) => {
                return Err(Failure::Other(
                    "the kernel's answer overran the socket buffer".to_string(),
                ))
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A write: waits for the kernel's ACK.
async fn write(
    handle: &Handle,
    message: RouteNetlinkMessage,
    extra_flags: u16,
) -> Result<(), Failure> {
    exchange(handle, message, NLM_F_REQUEST | NLM_F_ACK | extra_flags)
        .await
        .map(drop)
}

/// A network interface, as far as the overlay cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the bridge (or other controller) it is enslaved to.
    pub controller: Option<u32>,
    /// Link kind (`vxlan`, `bridge`, `veth`, …); `None` for plain devices.
    pub kind: Option<String>,
    /// VXLAN settings, for a VXLAN device.
    pub vxlan: Option<VxlanInfo>,
}

/// The settings of an existing VXLAN device, as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    /// VNI.
    pub vni: Option<u32>,
    /// UDP destination port.
    pub port: Option<u16>,
    /// Local (source) address.
    pub local: Option<Ipv4Addr>,
    /// Index of the underlay device.
    pub dev: Option<u32>,
    /// Whether source-address learning is on.
    pub learning: Option<bool>,
}

impl Link {
    fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mtu: 0,
            up: message.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
            vxlan: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(data)) => {
                                link.vxlan = Some(VxlanInfo::from_attributes(data));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

impl VxlanInfo {
    fn from_attributes(data: &[InfoVxlan]) -> VxlanInfo {
        let mut info = VxlanInfo::default();
        for attribute in data {
            match attribute {
                InfoVxlan::Id(vni) => info.vni = Some(*vni),
                InfoVxlan::Port(port) => info.port = Some(*port),
                InfoVxlan::Local(local) => info.local = Some(*local),
                InfoVxlan::Link(dev) => info.dev = Some(*dev),
                InfoVxlan::Learning(learning) => info.learning = Some(*learning),
                _ => {}
            }
        }
        info
    }
}

fn links_of(answers: Vec<RouteNetlinkMessage>) -> Vec<Link> {
    answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
            _ => None,
        })
        .collect()
}

/// The interface named `name`, or `None` if there is none.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>, NetlinkError> {
    let request = LinkUnspec::new_with_name(name).build();
    match exchange(handle, RouteNetlinkMessage::GetLink(request), NLM_F_REQUEST).await {
        Ok(answers) => Ok(links_of(answers).into_iter().next()),
        Err(Failure::Errno(e)) if e.raw_os_error() == Some(libc_errno::ENODEV) => Ok(None),
        Err(failure) => Err(failure.on("look up interface", name)),
    }
}

/// The interface with index `index`, or `None` if there is none.
pub async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<Link>, NetlinkError> {
    let request = LinkUnspec::new_with_index(index).build();
    match exchange(handle, RouteNetlinkMessage::GetLink(request), NLM_F_REQUEST).await {
        Ok(answers) => Ok(links_of(answers).into_iter().next()),
        Err(Failure::Errno(e)) if e.raw_os_error() == Some(libc_errno::ENODEV) => Ok(None),
        Err(failure) => Err(failure.on("look up interface", &format!("#{index}"))),
    }
}

/// The interface that holds the IPv4 address `address` (the VM's underlay NIC when given
/// its private address).
pub async fn link_by_address(handle: &Handle, address: Ipv4Addr) -> Result<Link, NetlinkError> {
    let what = address.to_string();
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet;
    let answers = exchange(
        handle,
        RouteNetlinkMessage::GetAddress(request),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .await
    .map_err(|f| f.on("list addresses to find its interface", &what))?;
    let wanted = IpAddr::V4(address);
    let index = answers.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewAddress(a)
            if a.attributes.iter().any(|attr| {
                matches!(attr, AddressAttribute::Address(ip) | AddressAttribute::Local(ip)
                    if *ip == wanted)
            }) =>
        {
            Some(a.header.index)
        }
        _ => None,
    });
    let index = index.ok_or(NetlinkError::NoLinkWithAddress { address })?;
    link_by_index(handle, index)
        .await?
        .ok_or(NetlinkError::NoLinkWithAddress { address })
}

/// What a VXLAN device is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanParams {
    /// Device name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Local (source) address: the VM's private address.
    pub local: Ipv4Addr,
    /// Index of the underlay device the tunnel runs over.
    pub dev: u32,
}

impl VxlanParams {
    /// Whether an existing device's settings match these (learning must be off).
    pub fn matches(&self, link: &Link) -> bool {
        let Some(info) = &link.vxlan else {
            return false;
        };
        link.kind.as_deref() == Some("vxlan")
            && info.vni == Some(self.vni)
            && info.port == Some(self.port)
            && info.local == Some(self.local)
            && info.dev == Some(self.dev)
            && info.learning == Some(false)
    }
}

/// Creates a VXLAN device (down, not enslaved) and returns it. Fails with
/// [`NetlinkError::Exists`] if the name is taken.
pub async fn create_vxlan(handle: &Handle, params: &VxlanParams) -> Result<Link, NetlinkError> {
    let message = LinkVxlan::new(&params.name, params.vni)
        .port(params.port)
        .learning(false)
        .local(params.local)
        .dev(params.dev)
        .build();
    write(
        handle,
        RouteNetlinkMessage::NewLink(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    .map_err(|f| f.on("create VXLAN device", &params.name))?;
    link_by_name(handle, &params.name)
        .await?
        .ok_or_else(|| NetlinkError::NotFound {
            name: params.name.clone(),
        })
}

/// Sets the MTU of `link`.
pub async fn set_mtu(handle: &Handle, link: &Link, mtu: u32) -> Result<(), NetlinkError> {
    let message = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
    write(handle, RouteNetlinkMessage::SetLink(message), 0)
        .await
        .map_err(|f| f.on(&format!("set MTU {mtu}"), &link.name))
}

/// Enslaves `link` to `bridge` and sets it up.
pub async fn enslave_up(handle: &Handle, link: &Link, bridge: &Link) -> Result<(), NetlinkError> {
    let message = LinkUnspec::new_with_index(link.index)
        .controller(bridge.index)
        .up()
        .build();
    let action = format!("enslave it to {} and set it up", bridge.name);
    write(handle, RouteNetlinkMessage::SetLink(message), 0)
        .await
        // ENODEV may concern either device here: keep the kernel's words and both names.
        .map_err(|f| match f {
            Failure::Errno(source) => NetlinkError::Kernel {
                action,
                name: link.name.clone(),
                source,
            },
            other => other.on(&action, &link.name),
        })
}

/// Sets `link` administratively up.
pub async fn set_up(handle: &Handle, link: &Link) -> Result<(), NetlinkError> {
    let message = LinkUnspec::new_with_index(link.index).up().build();
    write(handle, RouteNetlinkMessage::SetLink(message), 0)
        .await
        .map_err(|f| f.on("set it up", &link.name))
}

/// Deletes `link`.
pub async fn delete_link(handle: &Handle, link: &Link) -> Result<(), NetlinkError> {
    let mut message = LinkMessage::default();
    message.header.index = link.index;
    write(handle, RouteNetlinkMessage::DelLink(message), 0)
        .await
        .map_err(|f| f.on("delete it", &link.name))
}

/// The all-zeros FDB entry `00:00:00:00:00:00 dst <dst>` of a VXLAN device, in its own
/// table (`NTF_SELF`, "Own" here; without it the message would address the bridge's
/// table instead).
fn zero_fdb_entry(vxlan: &Link, dst: Ipv4Addr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = vxlan.index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(ZERO_MAC.to_vec()));
    message
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    message
}

/// The destinations of the all-zeros entries in `vxlan`'s own FDB, sorted.
pub async fn fdb_zero_entries(
    handle: &Handle,
    vxlan: &Link,
) -> Result<Vec<Ipv4Addr>, NetlinkError> {
    let mut request = NeighbourMessage::default();
    request.header.family = AddressFamily::Bridge;
    // The kernel ignores the index of a bare neighbour header in a bridge FDB dump (it
    // dumps every device), so the entries are filtered here.
    let answers = exchange(
        handle,
        RouteNetlinkMessage::GetNeighbour(request),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .await
    .map_err(|f| f.on("list the FDB", &vxlan.name))?;
    let mut out: Vec<Ipv4Addr> = answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n)
                if n.header.ifindex == vxlan.index
                    && n.header.flags.contains(NeighbourFlags::Own)
                    && n.attributes.iter().any(is_zero_mac) =>
            {
                n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(dst) => ipv4_of(dst),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn is_zero_mac(attribute: &NeighbourAttribute) -> bool {
    matches!(attribute, NeighbourAttribute::LinkLayerAddress(mac) if mac[..] == ZERO_MAC)
}

/// In a bridge-family message the kernel's 4-byte `NDA_DST` is not decoded as IPv4.
fn ipv4_of(address: &NeighbourAddress) -> Option<Ipv4Addr> {
    match address {
        NeighbourAddress::Inet(ip) => Some(*ip),
        NeighbourAddress::Other(bytes) => <[u8; 4]>::try_from(bytes.as_slice())
            .ok()
            .map(Ipv4Addr::from),
        _ => None,
    }
}

/// Appends `00:00:00:00:00:00 dst <dst>` to `vxlan`'s own FDB. `APPEND` lets several
/// all-zeros entries coexist (`EXCL` would refuse the second, `REPLACE` overwrite the
/// first); appending an entry that is already there changes nothing.
pub async fn fdb_add_zero(
    handle: &Handle,
    vxlan: &Link,
    dst: Ipv4Addr,
) -> Result<(), NetlinkError> {
    write(
        handle,
        RouteNetlinkMessage::NewNeighbour(zero_fdb_entry(vxlan, dst)),
        NLM_F_CREATE | NLM_F_APPEND,
    )
    .await
    .map_err(|f| {
        let action = format!("add FDB entry 00:00:00:00:00:00 dst {dst}");
        match f {
            // EEXIST here concerns the entry, not the interface.
            Failure::Errno(source) => NetlinkError::Kernel {
                action,
                name: vxlan.name.clone(),
                source,
            },
            other => other.on(&action, &vxlan.name),
        }
    })
}

/// Removes `00:00:00:00:00:00 dst <dst>` from `vxlan`'s own FDB, leaving the other
/// all-zeros entries alone.
pub async fn fdb_del_zero(
    handle: &Handle,
    vxlan: &Link,
    dst: Ipv4Addr,
) -> Result<(), NetlinkError> {
    match write(
        handle,
        RouteNetlinkMessage::DelNeighbour(zero_fdb_entry(vxlan, dst)),
        0,
    )
    .await
    {
        Ok(()) => Ok(()),
        Err(Failure::Errno(e)) if e.raw_os_error() == Some(libc_errno::ENOENT) => {
            Err(NetlinkError::FdbNotFound {
                name: vxlan.name.clone(),
                dst,
            })
        }
        Err(f) => Err(f.on(
            &format!("remove FDB entry 00:00:00:00:00:00 dst {dst}"),
            &vxlan.name,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan_link(info: VxlanInfo) -> Link {
        Link {
            index: 7,
            name: "shoal-vx".into(),
            mtu: 1450,
            up: true,
            controller: None,
            kind: Some("vxlan".into()),
            vxlan: Some(info),
        }
    }

    fn params() -> VxlanParams {
        VxlanParams {
            name: "shoal-vx".into(),
            vni: 42,
            port: 4789,
            local: Ipv4Addr::new(192, 0, 2, 1),
            dev: 2,
        }
    }

    #[test]
    fn vxlan_settings_must_all_match() {
        let good = VxlanInfo {
            vni: Some(42),
            port: Some(4789),
            local: Some(Ipv4Addr::new(192, 0, 2, 1)),
            dev: Some(2),
            learning: Some(false),
        };
        assert!(params().matches(&vxlan_link(good.clone())));
        for bad in [
            VxlanInfo {
                vni: Some(43),
                ..good.clone()
            },
            VxlanInfo {
                port: Some(8472),
                ..good.clone()
            },
            VxlanInfo {
                local: Some(Ipv4Addr::new(192, 0, 2, 9)),
                ..good.clone()
            },
            VxlanInfo {
                dev: Some(3),
                ..good.clone()
            },
            VxlanInfo {
                learning: Some(true),
                ..good.clone()
            },
        ] {
            assert!(!params().matches(&vxlan_link(bad.clone())), "{bad:?}");
        }
        let mut not_vxlan = vxlan_link(good);
        not_vxlan.kind = Some("bridge".into());
        assert!(!params().matches(&not_vxlan));
    }

    #[test]
    fn the_fdb_entry_is_the_vxlan_devices_own_all_zeros_entry() {
        let entry = zero_fdb_entry(
            &vxlan_link(VxlanInfo::default()),
            Ipv4Addr::new(192, 0, 2, 2),
        );
        assert_eq!(entry.header.family, AddressFamily::Bridge);
        assert_eq!(entry.header.ifindex, 7);
        assert_eq!(entry.header.state, NeighbourState::Permanent);
        assert!(entry.header.flags.contains(NeighbourFlags::Own));
        assert!(entry
            .attributes
            .contains(&NeighbourAttribute::LinkLayerAddress(vec![0; 6])));
        assert!(entry.attributes.contains(&NeighbourAttribute::Destination(
            NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 2))
        )));
    }

    #[test]
    fn bridge_family_destinations_decode_as_ipv4() {
        assert_eq!(
            ipv4_of(&NeighbourAddress::Other(vec![192, 0, 2, 3])),
            Some(Ipv4Addr::new(192, 0, 2, 3))
        );
        assert_eq!(ipv4_of(&NeighbourAddress::Other(vec![0; 16])), None);
    }

    #[test]
    fn errors_name_the_interface() {
        let exists = Failure::Errno(io::Error::from_raw_os_error(libc_errno::EEXIST))
            .on("create VXLAN device", "shoal-vx");
        assert!(matches!(exists, NetlinkError::Exists { .. }));
        assert_eq!(exists.to_string(), "interface shoal-vx already exists");
        let missing =
            Failure::Errno(io::Error::from_raw_os_error(libc_errno::ENODEV)).on("set up", "shoal0");
        assert_eq!(missing.to_string(), "interface shoal0 not found");
        let other = Failure::Errno(io::Error::from_raw_os_error(95))
            .on("enslave it to br0 and set it up", "shoal-vx");
        assert!(
            other
                .to_string()
                .starts_with("shoal-vx: cannot enslave it to br0 and set it up: "),
            "{other}"
        );
    }
}

//! Permanent neighbours (ARP and NDP entries) and bridge FDB entries on vxlan devices
//! (`bridge fdb … self permanent dst IP`), including `append` for several destinations.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::link::format_mac;
use crate::netlink::{Netlink, collect_dump, has_errno};

/// A permanent neighbour entry: `ip` is at `mac` on link `ifindex`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// A forwarding-database entry on a vxlan (or bridge port) device: frames for `mac` go to
/// the remote tunnel endpoint `dst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}

/// How an FDB entry is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdbMode {
    /// Replace the entry for this MAC (one destination).
    Replace,
    /// Add one more destination for this MAC (`bridge fdb append`), e.g. for the all-zero MAC.
    Append,
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

fn neighbour_message(family: AddressFamily, ifindex: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m
}

fn neighbour_address(ip: IpAddr) -> (AddressFamily, NeighbourAddress) {
    match ip {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    }
}

fn neighbour_msg(n: &Neighbour) -> NeighbourMessage {
    let (family, addr) = neighbour_address(n.ip);
    let mut m = neighbour_message(family, n.ifindex);
    m.attributes.push(NeighbourAttribute::Destination(addr));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
    m
}

fn fdb_msg(e: &FdbEntry) -> NeighbourMessage {
    let mut m = neighbour_message(AddressFamily::Bridge, e.ifindex);
    m.header.flags = NeighbourFlags::Own;
    if !e.permanent {
        // `bridge fdb … dynamic`: vxlan accepts only PERMANENT or REACHABLE (NOARP is EINVAL).
        m.header.state = NeighbourState::Reachable;
    }
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    if let Some(dst) = e.dst {
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(dst).1));
    }
    m
}

impl Netlink {
    /// Installs or replaces a permanent neighbour entry.
    pub async fn replace_neighbour(&self, n: &Neighbour) -> Result<()> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request_acked(RouteNetlinkMessage::NewNeighbour(neighbour_msg(n)), flags)
            .await
            .map_err(|e| {
                self.err(
                    "replacing neighbour",
                    format!(
                        "{} lladdr {} on link #{}",
                        n.ip,
                        format_mac(&n.mac),
                        n.ifindex
                    ),
                    e,
                )
            })
    }

    /// Deletes the neighbour entry for `ip` on link `ifindex`; a missing entry (or link) is
    /// fine.
    pub async fn delete_neighbour(&self, ifindex: u32, ip: impl Into<IpAddr>) -> Result<bool> {
        let ip = ip.into();
        let (family, addr) = neighbour_address(ip);
        let mut m = neighbour_message(family, ifindex);
        m.attributes.push(NeighbourAttribute::Destination(addr));
        match self
            .request_acked(
                RouteNetlinkMessage::DelNeighbour(m),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(self.err("deleting neighbour", format!("{ip} on link #{ifindex}"), e)),
        }
    }

    /// Permanent neighbour entries of both families on link `ifindex`.
    pub async fn list_neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>> {
        let mut msgs = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            msgs.extend(
                collect_dump(
                    self.handle
                        .neighbours()
                        .get()
                        .set_address_family(family)
                        .execute(),
                )
                .await
                .map_err(|e| self.err("listing neighbours of", format!("link #{ifindex}"), e))?,
            );
        }
        let mut out = Vec::new();
        for m in msgs {
            if m.header.ifindex != ifindex || m.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                        ip = Some(IpAddr::V4(*v))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                        ip = Some(IpAddr::V6(*v))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push(Neighbour { ifindex, ip, mac });
            }
        }
        Ok(out)
    }

    /// Writes an FDB entry on the device itself (`self`), replacing or appending.
    pub async fn add_fdb(&self, e: &FdbEntry, mode: FdbMode) -> Result<()> {
        let flags = NLM_F_REQUEST
            | NLM_F_ACK
            | NLM_F_CREATE
            | match mode {
                FdbMode::Replace => NLM_F_REPLACE,
                FdbMode::Append => NLM_F_APPEND,
            };
        match self
            .request_acked(RouteNetlinkMessage::NewNeighbour(fdb_msg(e)), flags)
            .await
        {
            Ok(()) => Ok(()),
            // Appending a destination that is already there.
            Err(err) if mode == FdbMode::Append && has_errno(&err, libc::EEXIST) => Ok(()),
            Err(err) => Err(self.err("adding fdb entry", describe_fdb(e), err)),
        }
    }

    /// Deletes an FDB entry (the one with `e.dst` when set); a missing entry (or link) is fine.
    pub async fn delete_fdb(&self, e: &FdbEntry) -> Result<bool> {
        match self
            .request_acked(
                RouteNetlinkMessage::DelNeighbour(fdb_msg(e)),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(err) if is_gone(&err) => Ok(false),
            Err(err) => Err(self.err("deleting fdb entry", describe_fdb(e), err)),
        }
    }

    /// FDB entries of link `ifindex` that have a remote destination (vxlan entries).
    pub async fn list_fdb(&self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let msgs = collect_dump(
            self.handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute(),
        )
        .await
        .map_err(|e| self.err("listing fdb of", format!("link #{ifindex}"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.ifindex != ifindex {
                continue;
            }
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                        dst = Some(IpAddr::V4(*v))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                        dst = Some(IpAddr::V6(*v))
                    }
                    // AF_BRIDGE dumps carry the address family of the remote only
                    // implicitly, so netlink-packet-route leaves it as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                        dst = raw_ip(raw)
                    }
                    _ => {}
                }
            }
            if let (Some(mac), Some(_)) = (mac, dst) {
                out.push(FdbEntry {
                    ifindex,
                    mac,
                    dst,
                    permanent: m.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }
}

/// A delete found nothing: no such entry (ENOENT), or no such link (ENODEV), whose entries
/// went with it.
fn is_gone(e: &rtnetlink::Error) -> bool {
    has_errno(e, libc::ENOENT) || has_errno(e, libc::ENODEV)
}

fn raw_ip(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => <[u8; 4]>::try_from(raw).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(raw).ok().map(IpAddr::from),
        _ => None,
    }
}

fn describe_fdb(e: &FdbEntry) -> String {
    match e.dst {
        Some(d) => format!("{} dst {d} on link #{}", format_mac(&e.mac), e.ifindex),
        None => format!("{} on link #{}", format_mac(&e.mac), e.ifindex),
    }
}

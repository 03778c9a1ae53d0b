//! What the udp backend does to each packet between the TUN and the wire: Flannel's format,
//! one inner IPv4 packet per datagram and nothing added, with stricter checks than Flannel's
//! (only leased peers, only their own inner sources, only local destinations) and the TTL
//! decremented in both directions as Flannel's proxy does.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::table::{TableCell, TableReader};
use crate::engine::packet::{self, DropReason, Ipv4Info};
use crate::engine::{Control, Destination, Inbound, Opened, Outbound, Refusal, Sender, Transform};

/// The udp backend's transform: peers from the published [`super::table::PeerTable`].
pub struct UdpTransform {
    pub table: Arc<TableCell>,
    /// The UDP port every peer listens on.
    pub port: u16,
}

impl Transform for UdpTransform {
    type Outbound = UdpOutbound;
    type Inbound = UdpInbound;

    fn outbound(&self) -> UdpOutbound {
        UdpOutbound {
            table: self.table.reader(),
            port: self.port,
        }
    }

    fn inbound(&self) -> UdpInbound {
        UdpInbound {
            table: self.table.reader(),
        }
    }
}

/// TUN → UDP: the peer that holds the destination, at the common port.
pub struct UdpOutbound {
    table: TableReader,
    port: u16,
}

impl Outbound for UdpOutbound {
    type Peer = ();

    fn route(
        &mut self,
        pkt: &mut [u8],
        ip: &Ipv4Info,
        _ctl: &mut Control<'_>,
    ) -> Result<Destination<()>, Refusal> {
        let table = self.table.get();
        if !table.in_network(ip.dst) {
            return Err(Refusal::Drop(DropReason::OutsideNetwork));
        }
        if table.is_local(ip.dst) {
            return Err(Refusal::Drop(DropReason::NotLocal));
        }
        let Some(peer) = table.peer_for(ip.dst) else {
            // From the TUN's own address, `<local subnet>.0`.
            let from = table
                .local
                .map(|l| l.network())
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            return Err(Refusal::Unreachable { from });
        };
        packet::decrement_ttl(pkt).map_err(Refusal::Drop)?;
        Ok(Destination {
            to: SocketAddr::V4(SocketAddrV4::new(peer, self.port)),
            peer: (),
        })
    }
}

/// UDP → TUN: datagrams from leased peers, checked.
pub struct UdpInbound {
    table: TableReader,
}

impl Inbound for UdpInbound {
    type Sender<'a> = UdpSender<'a>;

    fn sender(&mut self, from: SocketAddr) -> Result<UdpSender<'_>, DropReason> {
        // Flannel's udp backend is IPv4 only, on the underlay too.
        let SocketAddr::V4(from) = from else {
            return Err(DropReason::UnknownPeer);
        };
        let table = self.table.get();
        let allowed = table.subnets_of(*from.ip());
        if allowed.is_empty() {
            return Err(DropReason::UnknownPeer);
        }
        Ok(UdpSender {
            allowed,
            local: table.local,
        })
    }
}

/// One peer's datagrams: the subnets it leases, which its inner sources must lie in.
pub struct UdpSender<'a> {
    allowed: &'a [Ipv4Net],
    local: Option<Ipv4Net>,
}

impl Sender for UdpSender<'_> {
    fn open(&mut self, datagram: &mut [u8], _ctl: &mut Control<'_>) -> Result<Opened, DropReason> {
        let ip = check_received(datagram, self.allowed, self.local)?;
        Ok(Opened::Packet {
            inner: 0..datagram.len(),
            ip,
        })
    }
}

/// The checks on one received datagram, then the TTL decrement. Not its size: one bigger
/// than our MTU (from a node whose MTU is larger) is delivered, and the engine counts it
/// (`rx_over_mtu_packets`), as kernel VXLAN delivers it and the kernel answers with ICMP
/// fragmentation needed or fragments it.
fn check_received(
    dgram: &mut [u8],
    allowed: &[Ipv4Net],
    local: Option<Ipv4Net>,
) -> Result<Ipv4Info, DropReason> {
    let ip = packet::parse_ipv4(dgram, true)?;
    if !allowed.iter().any(|s| s.contains(&ip.src)) {
        return Err(DropReason::SpoofedSource);
    }
    if !local.is_some_and(|l| l.contains(&ip.dst)) {
        return Err(DropReason::NotLocal);
    }
    packet::decrement_ttl(dgram)?;
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::udp::table::PeerTable;
    use crate::engine::packet::layout::ip;

    /// An IPv4/UDP header from `src` to `dst` with a valid checksum.
    fn datagram(src: [u8; 4], dst: [u8; 4]) -> [u8; 28] {
        let mut p = [0u8; 28];
        p[ip::VERSION_IHL] = 0x45;
        p[ip::TOTAL_LEN..ip::TOTAL_LEN + 2].copy_from_slice(&28u16.to_be_bytes());
        p[ip::TTL] = 64;
        p[ip::PROTOCOL] = 17;
        p[ip::SRC..ip::SRC + 4].copy_from_slice(&src);
        p[ip::DST..ip::DST + 4].copy_from_slice(&dst);
        let c = packet::checksum(&p[..ip::MIN_HEADER_LEN]);
        p[ip::CHECKSUM..ip::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn received_datagrams_are_checked_in_order() {
        let allowed = ["10.5.2.0/24".parse().unwrap()];
        let local = Some("10.5.1.0/24".parse().unwrap());
        let p = datagram([10, 5, 2, 7], [10, 5, 1, 9]);
        let mut ok = p;
        assert!(check_received(&mut ok, &allowed, local).is_ok());
        assert_eq!(ok[ip::TTL], 63);
        // The size is not checked here: a packet bigger than our MTU (its node's MTU is
        // larger) is delivered and counted by the engine.
        let mut big = vec![0u8; 9000];
        big[..28].copy_from_slice(&p);
        big[ip::TOTAL_LEN..ip::TOTAL_LEN + 2].copy_from_slice(&9000u16.to_be_bytes());
        big[ip::CHECKSUM..ip::CHECKSUM + 2].fill(0);
        let c = packet::checksum(&big[..ip::MIN_HEADER_LEN]);
        big[ip::CHECKSUM..ip::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
        assert!(check_received(&mut big, &allowed, local).is_ok());
        assert_eq!(big[ip::TTL], 63);
        let mut spoof = datagram([10, 5, 3, 7], [10, 5, 1, 9]);
        assert_eq!(
            check_received(&mut spoof, &allowed, local),
            Err(DropReason::SpoofedSource)
        );
        assert_eq!(
            check_received(&mut p.clone(), &allowed, None),
            Err(DropReason::NotLocal)
        );
        assert_eq!(
            check_received(&mut [0x45, 0], &allowed, local),
            Err(DropReason::Truncated)
        );
    }

    fn transform() -> UdpTransform {
        let table = TableCell::new(PeerTable::new(
            "10.5.0.0/16".parse().unwrap(),
            Some("10.5.1.0/24".parse().unwrap()),
            [(
                "10.5.2.0/24".parse().unwrap(),
                Ipv4Addr::new(172, 31, 0, 12),
            )],
        ));
        UdpTransform { table, port: 8285 }
    }

    #[test]
    fn outbound_routes_to_the_peer_holding_the_destination() {
        let t = transform();
        let mut out = t.outbound();
        let sock =
            crate::engine::sys::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false)
                .unwrap();
        let mut ctl = Control::new(&sock);
        let mut route = |dst: [u8; 4]| {
            let mut p = datagram([10, 5, 1, 9], dst);
            let info = packet::parse_ipv4(&p, true).unwrap();
            let r = out.route(&mut p, &info, &mut ctl);
            (r, p[ip::TTL])
        };
        assert_eq!(
            route([10, 5, 2, 7]),
            (
                Ok(Destination {
                    to: "172.31.0.12:8285".parse().unwrap(),
                    peer: ()
                }),
                63
            )
        );
        assert_eq!(
            route([10, 5, 9, 7]).0,
            Err(Refusal::Unreachable {
                from: Ipv4Addr::new(10, 5, 1, 0)
            })
        );
        assert_eq!(
            route([10, 5, 1, 7]).0,
            Err(Refusal::Drop(DropReason::NotLocal))
        );
        assert_eq!(
            route([10, 6, 0, 1]).0,
            Err(Refusal::Drop(DropReason::OutsideNetwork))
        );
    }

    #[test]
    fn inbound_takes_only_leased_peers() {
        let t = transform();
        let mut inb = t.inbound();
        assert_eq!(
            inb.sender("172.31.0.99:8285".parse().unwrap()).err(),
            Some(DropReason::UnknownPeer)
        );
        let sock =
            crate::engine::sys::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false)
                .unwrap();
        let mut ctl = Control::new(&sock);
        let mut sender = inb.sender("172.31.0.12:8285".parse().unwrap()).unwrap();
        let mut p = datagram([10, 5, 2, 7], [10, 5, 1, 9]);
        let opened = sender.open(&mut p, &mut ctl).unwrap();
        assert!(matches!(opened, Opened::Packet { inner, .. } if inner == (0..28)));
    }
}

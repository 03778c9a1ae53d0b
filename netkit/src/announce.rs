//! Announcing an address's MAC to the neighbours on a link: a gratuitous ARP (request and
//! reply, as netavark sends them) for IPv4, an unsolicited neighbour advertisement with the
//! override flag for IPv6 (RFC 4861 7.2.6). Sent as whole Ethernet frames on an AF_PACKET
//! socket of the calling thread's namespace (enter one with [`crate::Netns::enter`]); neither
//! needs an address of the sender's to be usable yet, nor a route.
//!
//! A Linux neighbour takes either as an update of an entry it already has (it creates none
//! unless `arp_accept` / `accept_untracked_na` say so): an address handed out again is mapped
//! to the new MAC at once instead of after the old entry ages out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const BROADCAST: [u8; 6] = [0xff; 6];
/// ff02::1, all nodes on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// 33:33 and the low 32 bits of ff02::1.
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// ICMPv6 neighbour advertisement.
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// The NA's override flag: the receiver replaces the MAC it has for the target.
const NA_FLAG_OVERRIDE: u8 = 0x20;
/// The target link-layer address option.
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// The shortest Ethernet frame without its FCS; ARP frames are padded to it.
const ETH_MIN_FRAME: usize = 60;

/// A gratuitous ARP announcing `ip` at `mac`: a broadcast request (sender and target
/// address both `ip`, target MAC zero), or a broadcast reply (target MAC `mac` too: Linux
/// counts a reply as gratuitous only then), padded to the minimum frame size.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr, reply: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_MIN_FRAME);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]);
    let op = if reply { ARPOP_REPLY } else { ARPOP_REQUEST };
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&if reply { mac } else { [0; 6] });
    f.extend_from_slice(&ip.octets());
    f.resize(ETH_MIN_FRAME, 0);
    f
}

/// An unsolicited neighbour advertisement of `ip` at `mac` to all nodes: from `ip`, hop
/// limit 255, override set, solicited and router clear, with the target link-layer address.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[ND_NEIGHBOR_ADVERT, 0, 0, 0]);
    icmp.extend_from_slice(&[NA_FLAG_OVERRIDE, 0, 0, 0]);
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[ND_OPT_TARGET_LL_ADDR, 1]);
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(ip, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&ALL_NODES_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
    // The payload is 32 bytes: the length always fits.
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // next header ICMPv6, hop limit 255 (RFC 4861 7.1.2)
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&ALL_NODES.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) from `src` to `dst`.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + msg.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(msg);
    !ones_complement_sum(&pseudo)
}

fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The frames announcing `ip` at `mac`, with their EtherType and destination MAC.
fn frames(mac: [u8; 6], ip: IpAddr) -> Vec<(u16, [u8; 6], Vec<u8>)> {
    match ip {
        IpAddr::V4(v4) => vec![
            (ETH_P_ARP, BROADCAST, gratuitous_arp(mac, v4, false)),
            (ETH_P_ARP, BROADCAST, gratuitous_arp(mac, v4, true)),
        ],
        IpAddr::V6(v6) => vec![(ETH_P_IPV6, ALL_NODES_MAC, unsolicited_na(mac, v6))],
    }
}

/// Announces every address of `ips` at `mac` out of link `ifindex` (`ifname` names it in
/// errors) in the calling thread's namespace: a gratuitous ARP request and reply per IPv4
/// address, an unsolicited neighbour advertisement per IPv6 address. Every frame is tried;
/// the first failure is returned, naming the link and the address.
pub fn announce(ifindex: u32, ifname: &str, mac: [u8; 6], ips: &[IpAddr]) -> Result<()> {
    let ifindex_c = libc::c_int::try_from(ifindex).map_err(|_| {
        Error::Invalid(format!(
            "link {ifname}: index {ifindex} out of range for AF_PACKET"
        ))
    })?;
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io(
            "opening AF_PACKET socket to announce addresses on",
            ifname,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a new socket nothing else owns; OwnedFd closes it on every path.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut first_error = None;
    for ip in ips {
        for (proto, dst, frame) in frames(mac, *ip) {
            if let Err(e) = send(&sock, ifindex_c, proto, dst, &frame) {
                first_error.get_or_insert(Error::io(
                    "announcing",
                    format!("{ip} at {} on {ifname}", crate::format_mac(&mac)),
                    e,
                ));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn send(
    sock: &OwnedFd,
    ifindex: libc::c_int,
    proto: u16,
    dst: [u8; 6],
    frame: &[u8],
) -> std::io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value to fill in.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::c_ushort;
    addr.sll_protocol = proto.to_be();
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&dst);
    // SAFETY: `frame` is valid for `frame.len()` bytes and `addr` is a sockaddr_ll of the
    // size passed; both outlive the call.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn gratuitous_arp_request_and_reply() {
        let ip = Ipv4Addr::new(10, 244, 7, 60);
        let req = gratuitous_arp(MAC, ip, false);
        assert_eq!(req.len(), 60);
        assert_eq!(&req[0..6], &BROADCAST);
        assert_eq!(&req[6..12], &MAC);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(&req[14..22], &[0, 1, 0x08, 0, 6, 4, 0, 1]);
        assert_eq!(&req[22..28], &MAC, "sender MAC");
        assert_eq!(&req[28..32], &ip.octets(), "sender IP");
        assert_eq!(&req[32..38], &[0; 6], "target MAC of a request");
        assert_eq!(&req[38..42], &ip.octets(), "target IP is the sender's");
        assert!(req[42..].iter().all(|b| *b == 0), "padding");

        let rep = gratuitous_arp(MAC, ip, true);
        assert_eq!(&rep[20..22], &[0, 2], "reply");
        assert_eq!(
            &rep[32..38],
            &MAC,
            "a gratuitous reply's target MAC is the sender's"
        );
    }

    #[test]
    fn unsolicited_na_has_override_and_a_valid_checksum() {
        let ip: Ipv6Addr = "fd00:244:7::60".parse().unwrap();
        let f = unsolicited_na(MAC, ip);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[0..6], &ALL_NODES_MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32, "payload length");
        assert_eq!((f[20], f[21]), (58, 255), "ICMPv6, hop limit 255");
        assert_eq!(&f[22..38], &ip.octets(), "source");
        assert_eq!(&f[38..54], &ALL_NODES.octets(), "destination");
        let icmp = &f[54..];
        assert_eq!((icmp[0], icmp[1]), (136, 0));
        assert_eq!(icmp[4], 0x20, "override only: not solicited, not a router");
        assert_eq!(&icmp[8..24], &ip.octets(), "target");
        assert_eq!(&icmp[24..26], &[2, 1], "target link-layer address option");
        assert_eq!(&icmp[26..32], &MAC);
        // A message with a right checksum sums (with the pseudo-header) to 0xffff.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip.octets());
        pseudo.extend_from_slice(&ALL_NODES.octets());
        pseudo.extend_from_slice(&32u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        assert_eq!(ones_complement_sum(&pseudo), 0xffff);
    }

    #[test]
    fn checksum_of_a_known_message() {
        // RFC 1071's example words: 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement).
        assert_eq!(
            ones_complement_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }
}

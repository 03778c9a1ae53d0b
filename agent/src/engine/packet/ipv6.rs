//! IPv6 headers: what an IPv6-carrying backend (wireguard) needs to route and check an inner
//! packet. Only the fixed header is read: TCP/IPv6 is segmented and coalesced only right
//! after it (as the kernel's TSO6 hands it over), anything with extension headers passes as
//! it is.

use std::net::Ipv6Addr;

use super::DropReason;
use super::layout::{be16, ip6};

/// What the data path needs from an IPv6 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Info {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
}

/// Parses and checks the fixed IPv6 header. `pkt` must hold exactly the packet (payload
/// length + 40 == `pkt.len()`); jumbograms (payload length 0) are refused.
pub fn parse_ipv6(pkt: &[u8]) -> Result<Ipv6Info, DropReason> {
    let Some(&first) = pkt.first() else {
        return Err(DropReason::Truncated);
    };
    if first >> 4 != 6 {
        return Err(DropReason::NotIp);
    }
    if pkt.len() < ip6::HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let payload = be16(pkt, ip6::PAYLOAD_LEN) as usize;
    if ip6::HEADER_LEN + payload > pkt.len() {
        return Err(DropReason::Truncated);
    }
    if payload == 0 && pkt.len() > ip6::HEADER_LEN || ip6::HEADER_LEN + payload != pkt.len() {
        return Err(DropReason::Malformed);
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&pkt[at..at + 16]);
        Ipv6Addr::from(a)
    };
    Ok(Ipv6Info {
        src: addr(ip6::SRC),
        dst: addr(ip6::DST),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal IPv6 packet with `payload` bytes of payload (next header 59: none).
    pub fn v6_packet(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; ip6::HEADER_LEN];
        p[0] = 0x60;
        p[ip6::PAYLOAD_LEN..ip6::PAYLOAD_LEN + 2]
            .copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[ip6::NEXT_HEADER] = 59;
        p[ip6::HOP_LIMIT] = 64;
        p[ip6::SRC..ip6::SRC + 16].copy_from_slice(&src.octets());
        p[ip6::DST..ip6::DST + 16].copy_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parse_checks_version_and_lengths() {
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let good = v6_packet(a, b, b"hello");
        assert_eq!(parse_ipv6(&good), Ok(Ipv6Info { src: a, dst: b }));
        assert_eq!(parse_ipv6(&[]), Err(DropReason::Truncated));
        assert_eq!(parse_ipv6(&good[..30]), Err(DropReason::Truncated));
        assert_eq!(parse_ipv6(&good[..42]), Err(DropReason::Truncated));
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(parse_ipv6(&longer), Err(DropReason::Malformed));
        let mut v4 = good.clone();
        v4[0] = 0x45;
        assert_eq!(parse_ipv6(&v4), Err(DropReason::NotIp));
        let mut jumbo = good.clone();
        jumbo[ip6::PAYLOAD_LEN..ip6::PAYLOAD_LEN + 2].copy_from_slice(&[0, 0]);
        assert_eq!(parse_ipv6(&jumbo), Err(DropReason::Malformed));
        assert!(parse_ipv6(&v6_packet(a, b, b"")).is_ok());
    }
}

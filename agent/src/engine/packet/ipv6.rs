//! IPv6 headers: what an IPv6-carrying backend (wireguard) needs to route and check an inner
//! packet. Routing and checks read the fixed header; segmentation also walks the extension
//! headers a TCP super-packet may carry before its TCP header ([`tcp_offset6`]). Coalescing
//! takes TCP right after the fixed header only; anything else passes as it is.

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

/// Where the TCP header of a TCP/IPv6 packet starts: right after the fixed header, or after
/// the extension headers a TCP socket may send with (hop-by-hop and destination options,
/// e.g. `IPV6_HOPOPTS` / `IPV6_DSTOPTS`; a routing header with no segments left, so the
/// destination address is the final one the TCP checksum covers). The kernel's TSO6 hands
/// super-packets over with them in front of every segment's TCP header. `None`: not TCP, or
/// behind a header the segments cannot simply repeat (fragment, a routing header still
/// under way, ESP, AH, anything truncated).
pub fn tcp_offset6(pkt: &[u8]) -> Option<usize> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const DEST_OPTIONS: u8 = 60;
    let mut next = *pkt.get(ip6::NEXT_HEADER)?;
    let mut at = ip6::HEADER_LEN;
    loop {
        match next {
            6 => return (pkt.len() >= at).then_some(at),
            HOP_BY_HOP | DEST_OPTIONS | ROUTING => {
                let ext = pkt.get(at..at + 8)?;
                // Hop-by-hop may only come first (RFC 8200 4.1).
                if next == HOP_BY_HOP && at != ip6::HEADER_LEN {
                    return None;
                }
                // Segments left (byte 3) 0: the fixed header's destination is final.
                if next == ROUTING && ext[3] != 0 {
                    return None;
                }
                next = ext[0];
                at += (ext[1] as usize + 1) * 8;
            }
            _ => return None,
        }
    }
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

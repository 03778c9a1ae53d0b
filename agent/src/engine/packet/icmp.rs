//! ICMP "destination net unreachable" (and ICMPv6 "no route to destination"), written back
//! into the TUN for destinations no peer holds.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum::{checksum, fold, pseudo_header6, sum};
use super::ipv4::{parse_ipv4, set_ipv4_checksum};
use super::ipv6::parse_ipv6;
use super::layout::{be16, icmp, ip, ip6, put16, put32};

/// The TOS of ICMP errors: internetwork control, as Linux sends them.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// The TTL of the errors we originate.
const ERROR_TTL: u8 = 64;
/// Version 4, a 20-byte header.
const VERSION_IHL_NO_OPTIONS: u8 = 0x45;

/// Writes into `out` an ICMP "destination net unreachable" from `src` about `orig`, ready
/// to be written into the TUN; returns its length, or `None` where RFC 1812 says to stay
/// silent (an ICMP error about an ICMP error, a non-first fragment, a bad header).
pub fn icmp_net_unreachable(orig: &[u8], src: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let info = parse_ipv4(orig, false).ok()?;
    let frag_offset = be16(orig, ip::FLAGS_FRAGMENT) & ip::FRAGMENT_OFFSET_MASK;
    if frag_offset != 0 {
        return None;
    }
    if info.proto == ip::PROTO_ICMP {
        let t = *orig.get(info.header_len + icmp::TYPE)?;
        // Only queries (echo, timestamp, ...) may trigger an error.
        if !matches!(
            t,
            icmp::ECHO_REPLY | icmp::ECHO_REQUEST | icmp::TIMESTAMP | icmp::TIMESTAMP_REPLY
        ) {
            return None;
        }
    }
    // The original header and the first 8 bytes of its payload (RFC 792).
    let quoted = (info.header_len + 8).min(orig.len());
    let len = ip::MIN_HEADER_LEN + icmp::HEADER_LEN + quoted;
    if out.len() < len {
        return None;
    }
    let out = &mut out[..len];
    out[ip::VERSION_IHL] = VERSION_IHL_NO_OPTIONS;
    out[ip::TOS] = TOS_INTERNETWORK_CONTROL;
    put16(out, ip::TOTAL_LEN, len as u16);
    put32(out, ip::ID, 0); // and flags/fragment offset
    out[ip::TTL] = ERROR_TTL;
    out[ip::PROTOCOL] = ip::PROTO_ICMP;
    out[ip::SRC..ip::SRC + 4].copy_from_slice(&src.octets());
    out[ip::DST..ip::DST + 4].copy_from_slice(&info.src.octets());
    set_ipv4_checksum(&mut out[..ip::MIN_HEADER_LEN]);
    let msg = &mut out[ip::MIN_HEADER_LEN..];
    msg[icmp::TYPE] = icmp::DEST_UNREACHABLE;
    msg[icmp::CODE] = icmp::NET_UNREACHABLE;
    put16(msg, icmp::CHECKSUM, 0);
    put32(msg, icmp::REST, 0);
    msg[icmp::HEADER_LEN..].copy_from_slice(&orig[..quoted]);
    let c = checksum(msg);
    put16(msg, icmp::CHECKSUM, c);
    Some(len)
}

/// ICMPv6's next-header number.
const PROTO_ICMPV6: u8 = 58;
/// ICMPv6 destination unreachable (RFC 4443 §3.1), code 0: no route to destination.
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_NO_ROUTE: u8 = 0;
/// ICMPv6 types below this are errors, which never trigger an error.
const ICMPV6_FIRST_INFO: u8 = 128;

/// Writes into `out` an ICMPv6 "destination unreachable: no route" from `src` about
/// `orig`, quoting as much of it as `out` holds; returns its length, or `None` where RFC 4443
/// §2.4 says to stay silent (an error about an error, a multicast destination, an
/// unspecified or multicast source, a bad header).
pub fn icmp6_no_route(orig: &[u8], src: Ipv6Addr, out: &mut [u8]) -> Option<usize> {
    let info = parse_ipv6(orig).ok()?;
    if info.dst.is_multicast() || info.src.is_multicast() || info.src.is_unspecified() {
        return None;
    }
    if orig[ip6::NEXT_HEADER] == PROTO_ICMPV6
        && *orig.get(ip6::HEADER_LEN + icmp::TYPE)? < ICMPV6_FIRST_INFO
    {
        return None;
    }
    let head = ip6::HEADER_LEN + icmp::HEADER_LEN;
    let quoted = out.len().checked_sub(head)?.min(orig.len());
    let len = head + quoted;
    let out = &mut out[..len];
    out[..ip6::HEADER_LEN].fill(0);
    out[0] = 0x60;
    put16(out, ip6::PAYLOAD_LEN, (len - ip6::HEADER_LEN) as u16);
    out[ip6::NEXT_HEADER] = PROTO_ICMPV6;
    out[ip6::HOP_LIMIT] = ERROR_TTL;
    out[ip6::SRC..ip6::SRC + 16].copy_from_slice(&src.octets());
    out[ip6::DST..ip6::DST + 16].copy_from_slice(&info.src.octets());
    let (msg_len, pseudo) = (
        len - ip6::HEADER_LEN,
        pseudo_header6(
            &src.octets(),
            &info.src.octets(),
            PROTO_ICMPV6,
            len - ip6::HEADER_LEN,
        ),
    );
    let msg = &mut out[ip6::HEADER_LEN..];
    msg[icmp::TYPE] = ICMPV6_DEST_UNREACHABLE;
    msg[icmp::CODE] = ICMPV6_NO_ROUTE;
    put16(msg, icmp::CHECKSUM, 0);
    put32(msg, icmp::REST, 0);
    msg[icmp::HEADER_LEN..].copy_from_slice(&orig[..quoted]);
    debug_assert_eq!(msg.len(), msg_len);
    let c = !fold(pseudo + sum(0, msg));
    put16(msg, icmp::CHECKSUM, c);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{SRC6, tcp_packet, tcp6_packet};
    use super::*;
    use crate::engine::packet::layout::tcp;

    #[test]
    fn icmp6_no_route_quotes_the_packet_and_checks_out() {
        let orig = tcp6_packet(1, tcp::ACK, &[9; 300], 64);
        let from: Ipv6Addr = "fd00:5:0:1::".parse().unwrap();
        let mut out = [0u8; 128];
        let n = icmp6_no_route(&orig, from, &mut out).unwrap();
        assert_eq!(n, 128);
        let p = &out[..n];
        let ip = parse_ipv6(p).unwrap();
        assert_eq!((ip.src, ip.dst), (from, Ipv6Addr::from(SRC6)));
        assert_eq!((p[6], p[40], p[41]), (58, 1, 0));
        let pseudo = pseudo_header6(&from.octets(), &SRC6, 58, n - 40);
        assert_eq!(fold(pseudo + sum(0, &p[40..])), 0xffff);
        assert_eq!(&p[48..], &orig[..80]);
        // A short packet is quoted whole; never an error about an error, nor to multicast.
        let small = tcp6_packet(1, tcp::ACK, b"x", 64);
        let mut big = [0u8; 1280];
        assert_eq!(
            icmp6_no_route(&small, from, &mut big),
            Some(48 + small.len())
        );
        let mut err = [0u8; 128];
        assert_eq!(icmp6_no_route(p, from, &mut err), None);
        let mut mcast = orig.clone();
        mcast[24] = 0xff;
        assert_eq!(icmp6_no_route(&mcast, from, &mut err), None);
    }

    #[test]
    fn icmp_unreachable_quotes_the_packet_and_checks_out() {
        let orig = tcp_packet(1, tcp::ACK, b"hello world", 64);
        let mut out = [0u8; 128];
        let n = icmp_net_unreachable(&orig, Ipv4Addr::new(10, 5, 1, 0), &mut out).unwrap();
        let p = &out[..n];
        let ip = parse_ipv4(p, true).unwrap();
        assert_eq!(
            (ip.proto, ip.src, ip.dst),
            (1, Ipv4Addr::new(10, 5, 1, 0), Ipv4Addr::new(10, 5, 1, 2))
        );
        assert_eq!((p[20], p[21]), (3, 0));
        assert_eq!(checksum(&p[20..]), 0);
        assert_eq!(&p[28..], &orig[..28]);
        // Never an error about an error.
        let mut err = [0u8; 128];
        let n2 = icmp_net_unreachable(p, Ipv4Addr::new(1, 1, 1, 1), &mut err);
        assert_eq!(n2, None);
    }
}

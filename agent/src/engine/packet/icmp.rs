//! ICMP "destination net unreachable", written back into the TUN for destinations no peer
//! holds.

use std::net::Ipv4Addr;

use super::checksum::checksum;
use super::ipv4::{parse_ipv4, set_ipv4_checksum};
use super::layout::{be16, icmp, ip, put16, put32};

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

#[cfg(test)]
mod tests {
    use super::super::test_util::tcp_packet;
    use super::*;
    use crate::engine::packet::layout::tcp;

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

//! IPv4 headers: parsing with every check the data path relies on, the TTL decrement and the
//! header checksum.

use std::net::Ipv4Addr;

use super::DropReason;
use super::checksum::{fold, header_checksum};
use super::layout::{addr, be16, ip, put16};

/// The largest IPv4 packet.
pub const MAX_IP_PACKET: usize = 65535;

/// What the data path needs from an IPv4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Header length in bytes.
    pub header_len: usize,
    /// The total length field.
    pub total_len: usize,
    pub proto: u8,
    pub ttl: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Parses and checks an IPv4 header. `pkt` must hold exactly the packet (`total_len ==
/// pkt.len()`), as a UDP payload or a TUN read does; `verify_checksum` for untrusted input.
pub fn parse_ipv4(pkt: &[u8], verify_checksum: bool) -> Result<Ipv4Info, DropReason> {
    let Some(&first) = pkt.first() else {
        return Err(DropReason::Truncated);
    };
    match first >> 4 {
        4 => {}
        6 => return Err(DropReason::Ipv6),
        _ => return Err(DropReason::NotIp),
    }
    if pkt.len() < ip::MIN_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let header_len = header_len(first);
    if header_len < ip::MIN_HEADER_LEN {
        return Err(DropReason::Malformed);
    }
    if header_len > pkt.len() {
        return Err(DropReason::Truncated);
    }
    let total_len = be16(pkt, ip::TOTAL_LEN) as usize;
    if total_len > pkt.len() {
        return Err(DropReason::Truncated);
    }
    if total_len < header_len || total_len != pkt.len() {
        return Err(DropReason::Malformed);
    }
    if verify_checksum && header_checksum(&pkt[..header_len]) != 0 {
        return Err(DropReason::Malformed);
    }
    Ok(Ipv4Info {
        header_len,
        total_len,
        proto: pkt[ip::PROTOCOL],
        ttl: pkt[ip::TTL],
        src: Ipv4Addr::from(addr(pkt, ip::SRC)),
        dst: Ipv4Addr::from(addr(pkt, ip::DST)),
    })
}

/// The header length in bytes, from the version/IHL byte.
pub(super) fn header_len(version_ihl: u8) -> usize {
    ((version_ihl & 0x0f) as usize) * 4
}

/// Decrements the TTL of an IPv4 packet with an incremental checksum update (RFC 1624), as
/// Flannel's proxy does in both directions. Fails when the TTL reaches 0.
pub fn decrement_ttl(pkt: &mut [u8]) -> Result<(), DropReason> {
    if pkt.len() < ip::MIN_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    if pkt[ip::TTL] <= 1 {
        return Err(DropReason::TtlExpired);
    }
    pkt[ip::TTL] -= 1;
    // The TTL is the high byte of word 4: the word drops by 0x0100, so the checksum rises.
    let c = !be16(pkt, ip::CHECKSUM);
    let c = fold(c as u64 + 0xfeff); // + ~0x0100
    put16(pkt, ip::CHECKSUM, !c);
    Ok(())
}

/// Recomputes the IPv4 header checksum of `hdr` (the whole header, options included).
pub(super) fn set_ipv4_checksum(hdr: &mut [u8]) {
    put16(hdr, ip::CHECKSUM, 0);
    let c = header_checksum(hdr);
    put16(hdr, ip::CHECKSUM, c);
}

#[cfg(test)]
mod tests {
    use super::super::checksum::checksum;
    use super::super::test_util::tcp_packet;
    use super::*;
    use crate::engine::packet::layout::tcp;

    #[test]
    fn parse_rejects_every_kind_of_bad_header() {
        let good = tcp_packet(1, tcp::ACK, b"hello", 64);
        assert!(parse_ipv4(&good, true).is_ok());
        assert_eq!(parse_ipv4(&[], true), Err(DropReason::Truncated));
        assert_eq!(parse_ipv4(&good[..10], true), Err(DropReason::Truncated));
        assert_eq!(parse_ipv4(&good[..30], true), Err(DropReason::Truncated));
        let mut v6 = good.clone();
        v6[0] = 0x60;
        assert_eq!(parse_ipv4(&v6, true), Err(DropReason::Ipv6));
        assert_eq!(parse_ipv4(&[0x10; 40], true), Err(DropReason::NotIp));
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        assert_eq!(parse_ipv4(&short_ihl, true), Err(DropReason::Malformed));
        let mut bad_sum = good.clone();
        bad_sum[ip::CHECKSUM] ^= 0xff;
        assert_eq!(parse_ipv4(&bad_sum, true), Err(DropReason::Malformed));
        assert!(parse_ipv4(&bad_sum, false).is_ok());
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(parse_ipv4(&trailing, true), Err(DropReason::Malformed));
    }

    #[test]
    fn ttl_decrement_keeps_the_header_checksum_valid() {
        for ttl in [2u8, 64, 255] {
            let mut p = tcp_packet(1, tcp::ACK, b"x", ttl);
            decrement_ttl(&mut p).unwrap();
            assert_eq!(p[ip::TTL], ttl - 1);
            assert_eq!(checksum(&p[..ip::MIN_HEADER_LEN]), 0, "ttl {ttl}");
        }
        let mut p = tcp_packet(1, tcp::ACK, b"x", 1);
        assert_eq!(decrement_ttl(&mut p), Err(DropReason::TtlExpired));
    }
}

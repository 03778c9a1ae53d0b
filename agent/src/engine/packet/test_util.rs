//! Packets and runs through the packet functions, for the tests of this module.

use super::DropReason;
use super::checksum::{checksum, fold, pseudo_header, pseudo_header6, sum};
use super::coalesce::Coalescer;
use super::ipv4::{parse_ipv4, set_ipv4_checksum};
use super::ipv6::{parse_ipv6, tcp_offset6};
use super::layout::{addr, ip, ip6, put16, put32, tcp};
use super::segment::{
    MAX_SEGMENT_HEADER, MAX_SEGMENTS, SegmentPlan, segment_headers, segment_headers6,
};
use super::vnet::VNET_HDR_LEN;

/// Runs `packets` (laid out in one buffer, as a receive batch is) through a coalescer;
/// returns each TUN write as (virtio-net header, whole packet).
pub fn coalesce(packets: &[Vec<u8>]) -> Vec<([u8; VNET_HDR_LEN], Vec<u8>)> {
    let buf: Vec<u8> = packets.concat();
    let mut written = Vec::new();
    let mut sink = |h: &[u8; VNET_HDR_LEN], parts: &[&[u8]]| written.push((*h, parts.concat()));
    let mut c = Coalescer::new();
    let mut at = 0;
    for p in packets {
        if let Ok(info) = parse_ipv4(p, true) {
            c.push(&buf, at..at + p.len(), &info, &mut sink);
        } else if parse_ipv6(p).is_ok() {
            c.push6(&buf, at..at + p.len(), &mut sink);
        }
        at += p.len();
    }
    c.flush(&buf, &mut sink);
    written
}

/// The segments of `pkt` back to back, as they go on the wire.
pub fn segment_tcp4(pkt: &[u8], gso_size: usize) -> Result<(SegmentPlan, Vec<u8>), DropReason> {
    segment_with(pkt, gso_size, segment_headers)
}

/// [`segment_tcp4`] for TCP/IPv6.
pub fn segment_tcp6(pkt: &[u8], gso_size: usize) -> Result<(SegmentPlan, Vec<u8>), DropReason> {
    segment_with(pkt, gso_size, segment_headers6)
}

type SegmentFn = fn(&[u8], usize, &mut [u8]) -> Result<SegmentPlan, DropReason>;

fn segment_with(
    pkt: &[u8],
    gso_size: usize,
    segment: SegmentFn,
) -> Result<(SegmentPlan, Vec<u8>), DropReason> {
    let mut headers = vec![0u8; MAX_SEGMENTS * MAX_SEGMENT_HEADER];
    let plan = segment(pkt, gso_size, &mut headers)?;
    let hl = plan.header_len;
    let mut out = Vec::with_capacity(plan.total_len());
    for i in 0..plan.count {
        out.extend_from_slice(&headers[i * hl..(i + 1) * hl]);
        out.extend_from_slice(&pkt[plan.payload(i)]);
    }
    Ok((plan, out))
}

/// A TCP/IPv4 packet from 10.5.1.2 to 10.5.2.3 with `payload` and valid checksums.
pub fn tcp_packet(seq: u32, flags: u8, payload: &[u8], ttl: u8) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 32 + payload.len()];
    p[ip::VERSION_IHL] = 0x45;
    let total = p.len() as u16;
    put16(&mut p, ip::TOTAL_LEN, total);
    put16(&mut p, ip::ID, 0x1234);
    p[ip::FLAGS_FRAGMENT] = ip::DONT_FRAGMENT;
    p[ip::TTL] = ttl;
    p[ip::PROTOCOL] = ip::PROTO_TCP;
    p[ip::SRC..ip::SRC + 4].copy_from_slice(&[10, 5, 1, 2]);
    p[ip::DST..ip::DST + 4].copy_from_slice(&[10, 5, 2, 3]);
    set_ipv4_checksum(&mut p[..20]);
    let seg = &mut p[20..];
    put16(seg, tcp::PORTS, 40000);
    put16(seg, tcp::PORTS + 2, 5201);
    put32(seg, tcp::SEQ, seq);
    put32(seg, tcp::ACK_NUM, 777);
    seg[tcp::DATA_OFFSET] = 8 << 4;
    seg[tcp::FLAGS] = flags;
    put16(seg, tcp::WINDOW, 500);
    // NOP NOP timestamp option.
    seg[20..24].copy_from_slice(&[1, 1, 8, 10]);
    put32(seg, 24, 0xabcdef01);
    put32(seg, 28, 0x01020304);
    seg[32..].copy_from_slice(payload);
    let c =
        !fold(pseudo_header([10, 5, 1, 2], [10, 5, 2, 3], ip::PROTO_TCP, seg.len()) + sum(0, seg));
    put16(seg, tcp::CHECKSUM, c);
    p
}

/// The source and destination of [`tcp6_packet`].
pub const SRC6: [u8; 16] = [0xfd, 0, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const DST6: [u8; 16] = [0xfd, 0, 0, 5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];

/// A TCP/IPv6 packet from fd00:5:1::2 to fd00:5:2::3 with `payload`, the same TCP header as
/// [`tcp_packet`]'s (timestamps) and a valid checksum.
pub fn tcp6_packet(seq: u32, flags: u8, payload: &[u8], hop_limit: u8) -> Vec<u8> {
    let v4 = tcp_packet(seq, flags, payload, 64);
    let mut p = vec![0u8; ip6::HEADER_LEN];
    p[0] = 0x60;
    put16(&mut p, ip6::PAYLOAD_LEN, (v4.len() - 20) as u16);
    p[ip6::NEXT_HEADER] = ip::PROTO_TCP;
    p[ip6::HOP_LIMIT] = hop_limit;
    p[ip6::SRC..ip6::SRC + 16].copy_from_slice(&SRC6);
    p[ip6::DST..ip6::DST + 16].copy_from_slice(&DST6);
    p.extend_from_slice(&v4[20..]);
    let seg = &mut p[ip6::HEADER_LEN..];
    put16(seg, tcp::CHECKSUM, 0);
    let c = !fold(pseudo_header6(&SRC6, &DST6, ip::PROTO_TCP, seg.len()) + sum(0, seg));
    put16(seg, tcp::CHECKSUM, c);
    p
}

/// `pkt` (an IPv6 packet) with an extension header of type `kind` and `len` bytes (a
/// multiple of 8) put in front of what follows the fixed header: options padding for
/// hop-by-hop and destination options, a routing header with `segments_left`.
pub fn with_ext6(pkt: &[u8], kind: u8, len: usize, segments_left: u8) -> Vec<u8> {
    assert!(len >= 8 && len.is_multiple_of(8));
    let mut ext = vec![0u8; len];
    ext[0] = pkt[ip6::NEXT_HEADER];
    ext[1] = (len / 8 - 1) as u8;
    if kind == 43 {
        ext[3] = segments_left;
    } else {
        // One PadN option over the rest.
        ext[2] = 1;
        ext[3] = (len - 4) as u8;
    }
    let mut p = pkt[..ip6::HEADER_LEN].to_vec();
    p[ip6::NEXT_HEADER] = kind;
    put16(
        &mut p,
        ip6::PAYLOAD_LEN,
        (pkt.len() - ip6::HEADER_LEN + len) as u16,
    );
    p.extend_from_slice(&ext);
    p.extend_from_slice(&pkt[ip6::HEADER_LEN..]);
    p
}

/// Whether a TCP/IPv6 packet (extension headers allowed) checks out.
pub fn tcp6_ok(pkt: &[u8]) -> bool {
    let Some(at) = tcp_offset6(pkt) else {
        return false;
    };
    let seg = &pkt[at..];
    parse_ipv6(pkt).is_ok()
        && fold(
            pseudo_header6(
                &pkt[ip6::SRC..ip6::SRC + 16],
                &pkt[ip6::DST..ip6::DST + 16],
                ip::PROTO_TCP,
                seg.len(),
            ) + sum(0, seg),
        ) == 0xffff
}

/// Whether an option-less IPv4 header and its TCP segment both check out.
pub fn tcp_ok(pkt: &[u8]) -> bool {
    let src = addr(pkt, ip::SRC);
    let dst = addr(pkt, ip::DST);
    checksum(&pkt[..20]) == 0
        && fold(pseudo_header(src, dst, ip::PROTO_TCP, pkt.len() - 20) + sum(0, &pkt[20..]))
            == 0xffff
}

/// xorshift64: deterministic randomness without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

//! Segmentation: one TCP/IPv4 or TCP/IPv6 super-packet from the TUN into MTU-sized packets,
//! as the kernel's TSO would, with the payload left in place.

use super::DropReason;
use super::checksum::{fold, pseudo_header, pseudo_header6, sum};
use super::ipv4::{parse_ipv4, set_ipv4_checksum};
use super::ipv6::{parse_ipv6, tcp_offset6};
use super::layout::{addr, be16, be32, ip, ip6, put16, put32, tcp};

/// How a TCP/IPv4 super-packet splits: `count` segments, each `header_len` bytes of header
/// followed by a chunk of at most `gso_size` payload bytes (only the last may be shorter).
/// Headers come from [`segment_headers`]; payload chunks stay where they are in the
/// super-packet, so the sender can gather both without copying the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    pub count: usize,
    pub header_len: usize,
    pub gso_size: usize,
    pub payload_len: usize,
}

impl SegmentPlan {
    /// Byte range of segment `i`'s payload inside the super-packet.
    pub fn payload(&self, i: usize) -> std::ops::Range<usize> {
        let start = self.header_len + (i * self.gso_size).min(self.payload_len);
        let end = self.header_len + ((i + 1) * self.gso_size).min(self.payload_len);
        start..end
    }

    /// Size of every segment but the last (what UDP_SEGMENT is told).
    pub fn stride(&self) -> usize {
        self.header_len + self.gso_size.min(self.payload_len)
    }

    /// All segments together.
    pub fn total_len(&self) -> usize {
        self.payload_len + self.count * self.header_len
    }
}

/// The most segments one super-packet may split into: 64 KiB at a 128-byte MSS.
pub const MAX_SEGMENTS: usize = 512;

/// The longest IPv4 + TCP header, options included (60 + 60): the room one segment's header
/// takes in a header buffer at most.
pub const MAX_SEGMENT_HEADER: usize = 120;

/// The split of a TCP super-packet whose TCP header starts at `ihl` into segments of
/// `gso_size` payload bytes, checked against the TCP header and a header buffer of
/// `headers_len` bytes (the same for both families).
fn plan_segments(
    pkt: &[u8],
    ihl: usize,
    gso_size: usize,
    headers_len: usize,
) -> Result<SegmentPlan, DropReason> {
    if pkt.len() < ihl + tcp::MIN_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let thl = tcp_header_len(pkt[ihl + tcp::DATA_OFFSET]);
    if thl < tcp::MIN_HEADER_LEN || ihl + thl > pkt.len() {
        return Err(DropReason::Malformed);
    }
    let hl = ihl + thl;
    // The per-read header and sealing arenas are sized for this much header per segment.
    if hl > MAX_SEGMENT_HEADER {
        return Err(DropReason::Oversize);
    }
    let payload_len = pkt.len() - hl;
    let count = payload_len.div_ceil(gso_size).max(1);
    if count > MAX_SEGMENTS {
        return Err(DropReason::Malformed);
    }
    if headers_len < count * hl {
        return Err(DropReason::Oversize);
    }
    Ok(SegmentPlan {
        count,
        header_len: hl,
        gso_size,
        payload_len,
    })
}

/// Plans the split of a TCP/IPv4 super-packet (`pkt`, the IP packet after its virtio-net
/// header) into segments of `gso_size` payload bytes, like the kernel's TSO, and writes each
/// segment's header to `headers` (`header_len` bytes apart): IP ids counting up, sequence
/// numbers advanced, FIN/PSH only on the last segment, CWR only on the first, full IP and
/// TCP checksums (over the payload in place).
pub fn segment_headers(
    pkt: &[u8],
    gso_size: usize,
    headers: &mut [u8],
) -> Result<SegmentPlan, DropReason> {
    let info = parse_ipv4(pkt, false)?;
    if info.proto != ip::PROTO_TCP || gso_size == 0 {
        return Err(DropReason::Malformed);
    }
    let ihl = info.header_len;
    let plan = plan_segments(pkt, ihl, gso_size, headers.len())?;
    let (hl, thl, count) = (plan.header_len, plan.header_len - ihl, plan.count);
    let id = be16(pkt, ip::ID);
    let seq = be32(pkt, ihl + tcp::SEQ);
    let flags = pkt[ihl + tcp::FLAGS];
    let src = addr(pkt, ip::SRC);
    let dst = addr(pkt, ip::DST);
    for i in 0..count {
        let chunk = &pkt[plan.payload(i)];
        let h = &mut headers[i * hl..(i + 1) * hl];
        h.copy_from_slice(&pkt[..hl]);
        put16(h, ip::TOTAL_LEN, (hl + chunk.len()) as u16);
        put16(h, ip::ID, id.wrapping_add(i as u16));
        set_ipv4_checksum(&mut h[..ihl]);
        let seg = &mut h[ihl..];
        put32(seg, tcp::SEQ, seq.wrapping_add((i * gso_size) as u32));
        seg[tcp::FLAGS] = segment_flags(flags, i, count);
        put16(seg, tcp::CHECKSUM, 0);
        let len = thl + chunk.len();
        let c = !fold(pseudo_header(src, dst, ip::PROTO_TCP, len) + sum(0, seg) + sum(0, chunk));
        put16(seg, tcp::CHECKSUM, c);
    }
    Ok(plan)
}

/// [`segment_headers`] for a TCP/IPv6 super-packet (VIRTIO_NET_HDR_GSO_TCPV6): the TCP
/// header follows the fixed IPv6 header or the extension headers [`tcp_offset6`] accepts,
/// repeated in every segment as the kernel's GSO does; each segment gets its payload
/// length, sequence number, flags and full TCP checksum over the IPv6 pseudo-header.
pub fn segment_headers6(
    pkt: &[u8],
    gso_size: usize,
    headers: &mut [u8],
) -> Result<SegmentPlan, DropReason> {
    parse_ipv6(pkt)?;
    let Some(ihl) = tcp_offset6(pkt).filter(|_| gso_size > 0) else {
        return Err(DropReason::Malformed);
    };
    let plan = plan_segments(pkt, ihl, gso_size, headers.len())?;
    let (hl, thl, count) = (plan.header_len, plan.header_len - ihl, plan.count);
    let seq = be32(pkt, ihl + tcp::SEQ);
    let flags = pkt[ihl + tcp::FLAGS];
    let addrs = pseudo_header6(
        &pkt[ip6::SRC..ip6::SRC + 16],
        &pkt[ip6::DST..ip6::DST + 16],
        0,
        0,
    );
    for i in 0..count {
        let chunk = &pkt[plan.payload(i)];
        let h = &mut headers[i * hl..(i + 1) * hl];
        h.copy_from_slice(&pkt[..hl]);
        let len = thl + chunk.len();
        put16(
            h,
            ip6::PAYLOAD_LEN,
            (hl - ip6::HEADER_LEN + chunk.len()) as u16,
        );
        let seg = &mut h[ihl..];
        put32(seg, tcp::SEQ, seq.wrapping_add((i * gso_size) as u32));
        seg[tcp::FLAGS] = segment_flags(flags, i, count);
        put16(seg, tcp::CHECKSUM, 0);
        let pseudo = addrs + ip::PROTO_TCP as u64 + len as u64;
        let c = !fold(pseudo + sum(0, seg) + sum(0, chunk));
        put16(seg, tcp::CHECKSUM, c);
    }
    Ok(plan)
}

/// The flags of segment `i` of `count`: FIN and PSH only on the last, CWR only on the first.
fn segment_flags(flags: u8, i: usize, count: usize) -> u8 {
    let mut f = flags;
    if i + 1 < count {
        f &= !(tcp::FIN | tcp::PSH);
    }
    if i > 0 {
        f &= !tcp::CWR;
    }
    f
}

/// The TCP header length in bytes, from the data offset byte.
pub(super) fn tcp_header_len(data_offset: u8) -> usize {
    ((data_offset >> 4) as usize) * 4
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{
        Rng, coalesce, segment_tcp4, segment_tcp6, tcp_ok, tcp_packet, tcp6_ok, tcp6_packet,
        with_ext6,
    };
    use super::super::vnet::{GSO_TCPV4, GSO_TCPV6, VNET_F_NEEDS_CSUM, VnetHdr, complete_checksum};
    use super::super::{MAX_COALESCE, checksum};
    use super::*;

    #[test]
    fn segmentation_then_coalescing_gives_back_the_stream() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let sup = tcp_packet(1000, tcp::ACK | tcp::PSH, &payload, 64);
        let (segs, out) = segment_tcp4(&sup, 1400).unwrap();
        assert_eq!(segs.count, 8);
        assert_eq!(segs.stride(), 52 + 1400);
        assert_eq!(segs.total_len(), 10_000 + 8 * 52);
        assert_eq!(out.len(), segs.total_len());
        let mut packets = Vec::new();
        for i in 0..segs.count {
            let start = i * segs.stride();
            let end = (start + segs.stride()).min(segs.total_len());
            let p = &out[start..end];
            assert!(tcp_ok(p), "segment {i} checksums");
            assert_eq!(be32(p, 20 + tcp::SEQ), 1000 + (i as u32) * 1400);
            assert_eq!(p[20 + tcp::FLAGS] & tcp::PSH != 0, i == segs.count - 1);
            packets.push(p.to_vec());
        }
        let written = coalesce(&packets);
        assert_eq!(written.len(), 1);
        let (h, p) = &written[0];
        let h = VnetHdr::parse(h).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (GSO_TCPV4, 1400, 52));
        assert_eq!(&p[52..], &payload[..]);
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(p[20 + tcp::FLAGS] & tcp::PSH, tcp::PSH);
        // Completing the partial checksum like the kernel gives a valid packet.
        let mut full = p.clone();
        complete_checksum(&mut full, &h).unwrap();
        assert!(tcp_ok(&full));
    }

    #[test]
    fn random_super_packets_segment_and_coalesce_back_with_valid_checksums() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for case in 0..1500 {
            let len = rng.below(20_000) + 1;
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let gso = 64 + rng.below(1400);
            let flags = tcp::ACK | if rng.below(2) == 0 { tcp::PSH } else { 0 };
            let seq = rng.next() as u32;
            let sup = tcp_packet(seq, flags, &payload, 2 + rng.below(250) as u8);
            let Ok((plan, wire)) = segment_tcp4(&sup, gso) else {
                assert!(len.div_ceil(gso) > MAX_SEGMENTS, "case {case}");
                continue;
            };
            let mut segments = Vec::new();
            for i in 0..plan.count {
                let start = i * plan.stride();
                let p = wire[start..(start + plan.stride()).min(wire.len())].to_vec();
                assert!(tcp_ok(&p), "case {case} segment {i}");
                assert_eq!(be32(&p, 20 + tcp::SEQ), seq.wrapping_add((i * gso) as u32));
                segments.push(p);
            }
            let mut got = Vec::new();
            for (h, p) in coalesce(&segments) {
                let h = VnetHdr::parse(&h).unwrap();
                let mut p = p.clone();
                assert_eq!(checksum(&p[..20]), 0, "case {case}");
                if h.flags & VNET_F_NEEDS_CSUM != 0 {
                    complete_checksum(&mut p, &h).unwrap();
                    assert!(p.len() - 52 <= MAX_COALESCE * h.gso_size as usize);
                }
                assert!(tcp_ok(&p), "case {case}");
                got.extend_from_slice(&p[52..]);
            }
            assert!(got == payload, "case {case}: payload changed");
        }
    }

    #[test]
    fn random_ipv6_super_packets_segment_and_coalesce_back_with_valid_checksums() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // 40 bytes of IPv6 and 32 of TCP (timestamps).
        let hl = 72;
        for case in 0..800 {
            let len = rng.below(20_000) + 1;
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let gso = 64 + rng.below(1400);
            let flags = tcp::ACK | if rng.below(2) == 0 { tcp::PSH } else { 0 };
            let seq = rng.next() as u32;
            let sup = tcp6_packet(seq, flags, &payload, 2 + rng.below(250) as u8);
            let Ok((plan, wire)) = segment_tcp6(&sup, gso) else {
                assert!(len.div_ceil(gso) > MAX_SEGMENTS, "case {case}");
                continue;
            };
            assert_eq!(plan.header_len, hl);
            let mut segments = Vec::new();
            for i in 0..plan.count {
                let start = i * plan.stride();
                let p = wire[start..(start + plan.stride()).min(wire.len())].to_vec();
                assert!(tcp6_ok(&p), "case {case} segment {i}");
                assert_eq!(be32(&p, 40 + tcp::SEQ), seq.wrapping_add((i * gso) as u32));
                assert_eq!(
                    p[40 + tcp::FLAGS] & tcp::PSH != 0,
                    i + 1 == plan.count && flags & tcp::PSH != 0
                );
                segments.push(p);
            }
            let mut got = Vec::new();
            for (h, p) in coalesce(&segments) {
                let h = VnetHdr::parse(&h).unwrap();
                let mut p = p.clone();
                if h.flags & VNET_F_NEEDS_CSUM != 0 {
                    assert_eq!(
                        (h.gso_type, h.csum_start, h.hdr_len),
                        (GSO_TCPV6, 40, hl as u16)
                    );
                    complete_checksum(&mut p, &h).unwrap();
                }
                assert!(tcp6_ok(&p), "case {case}");
                got.extend_from_slice(&p[hl..]);
            }
            assert!(got == payload, "case {case}: payload changed");
        }
    }

    #[test]
    fn ipv6_segmentation_refuses_what_it_cannot_cut() {
        let mut headers = vec![0u8; MAX_SEGMENTS * MAX_SEGMENT_HEADER];
        let good = tcp6_packet(1, tcp::ACK, &[7; 3000], 64);
        assert!(segment_headers6(&good, 1000, &mut headers).is_ok());
        assert_eq!(
            segment_headers6(&good, 0, &mut headers),
            Err(DropReason::Malformed)
        );
        let mut udp = good.clone();
        udp[6] = 17;
        assert_eq!(
            segment_headers6(&udp, 1000, &mut headers),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            segment_headers6(&good[..50], 1000, &mut headers),
            Err(DropReason::Truncated)
        );
        let v4 = tcp_packet(1, tcp::ACK, &[7; 3000], 64);
        assert_eq!(
            segment_headers6(&v4, 1000, &mut headers),
            Err(DropReason::NotIp)
        );
        assert_eq!(
            segment_headers6(&good, 1000, &mut headers[..100]),
            Err(DropReason::Oversize)
        );
    }

    /// A TCP socket with `IPV6_HOPOPTS` or `IPV6_DSTOPTS` set gets super-packets whose
    /// extension headers come before the TCP header; they were dropped whole, so such a
    /// flow stalled.
    #[test]
    fn ipv6_super_packets_behind_extension_headers_segment_with_them_repeated() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
        let plain = tcp6_packet(77, tcp::ACK | tcp::PSH, &payload, 64);
        let dst_opts = with_ext6(&plain, 60, 16, 0);
        let behind_both = with_ext6(&dst_opts, 0, 8, 0);
        let routed_to_the_end = with_ext6(&plain, 43, 24, 0);
        for (name, sup, ext_len) in [
            ("destination options", &dst_opts, 16),
            ("hop-by-hop + destination options", &behind_both, 24),
            ("routing header, no segments left", &routed_to_the_end, 24),
        ] {
            assert!(tcp6_ok(sup), "{name}: test packet");
            let (plan, wire) = segment_tcp6(sup, 1200).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(plan.count, 5, "{name}");
            assert_eq!(plan.header_len, 40 + ext_len + 32, "{name}");
            let mut got = Vec::new();
            for i in 0..plan.count {
                let start = i * plan.stride();
                let end = (start + plan.stride()).min(plan.total_len());
                let seg = &wire[start..end];
                assert!(tcp6_ok(seg), "{name}: segment {i} does not check out");
                assert_eq!(&seg[40..40 + ext_len], &sup[40..40 + ext_len], "{name}");
                got.extend_from_slice(&seg[plan.header_len..]);
            }
            assert!(got == payload, "{name}: payload changed");
        }
    }

    #[test]
    fn ipv6_segmentation_refuses_extension_headers_it_cannot_repeat() {
        let mut headers = vec![0u8; MAX_SEGMENTS * MAX_SEGMENT_HEADER];
        let plain = tcp6_packet(1, tcp::ACK, &[7; 3000], 64);
        let refused = [
            ("routing header under way", with_ext6(&plain, 43, 24, 1)),
            (
                "hop-by-hop not first",
                with_ext6(&with_ext6(&plain, 0, 8, 0), 60, 8, 0),
            ),
        ];
        for (name, pkt) in refused {
            assert_eq!(
                segment_headers6(&pkt, 1000, &mut headers),
                Err(DropReason::Malformed),
                "{name}"
            );
        }
        let mut fragment = with_ext6(&plain, 60, 8, 0);
        fragment[40] = 44;
        assert_eq!(
            segment_headers6(&fragment, 1000, &mut headers),
            Err(DropReason::Malformed)
        );
        // More header per segment than the send arenas hold for each.
        let long = with_ext6(&plain, 60, 56, 0);
        assert_eq!(
            segment_headers6(&long, 1000, &mut headers),
            Err(DropReason::Oversize)
        );
        let truncated = &with_ext6(&plain, 60, 8, 0)[..44];
        assert!(segment_headers6(truncated, 1000, &mut headers).is_err());
    }

    #[test]
    fn ipv4_and_ipv6_flows_coalesce_apart() {
        let (a1, a2) = (
            tcp_packet(0, tcp::ACK, &[1; 100], 64),
            tcp_packet(100, tcp::ACK, &[2; 100], 64),
        );
        let (b1, b2) = (
            tcp6_packet(0, tcp::ACK, &[3; 100], 64),
            tcp6_packet(100, tcp::ACK, &[4; 100], 64),
        );
        // A hop limit that differs ends an IPv6 super-packet, as in Linux GRO.
        let b3 = tcp6_packet(200, tcp::ACK, &[5; 100], 63);
        let written: Vec<(u8, usize)> = coalesce(&[a1.clone(), b1.clone(), a2, b2, b3.clone()])
            .into_iter()
            .map(|(h, p)| (h[1], p.len()))
            .collect();
        assert_eq!(
            written,
            vec![
                (GSO_TCPV6, b1.len() + 100),
                (GSO_TCPV4, a1.len() + 100),
                (0, b3.len())
            ]
        );
    }
}

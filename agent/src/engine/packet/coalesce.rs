//! Coalescing: consecutive segments of one TCP flow (IPv4 or IPv6) into one super-packet for
//! the TUN, as the kernel's GRO would, with the payloads gathered from the receive buffer.

use super::checksum::{fold, pseudo_header, pseudo_header6};
use super::ipv4::{Ipv4Info, MAX_IP_PACKET, set_ipv4_checksum};
use super::layout::{addr, be16, be32, ip, ip6, put16, tcp};
use super::segment::tcp_header_len;
use super::vnet::{GSO_TCPV4, GSO_TCPV6, PLAIN, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr};

/// How many flows can be coalesced at once (several iperf3 streams interleave).
const SLOTS: usize = 8;
/// Segments per super-packet at most (one iovec each when written).
pub const MAX_COALESCE: usize = 64;
/// Coalesced IPv4 packets have no IP options, so their TCP header starts here.
const TCP_AT: usize = ip::MIN_HEADER_LEN;
/// Coalesced IPv6 packets have no extension headers.
const TCP_AT6: usize = ip6::HEADER_LEN;
/// The longest IP + TCP header of a coalesced packet (IPv6 40 + 60).
const MAX_HEAD: usize = TCP_AT6 + 60;

/// A flow: IPv4 addresses sit in the first 4 bytes of `src`/`dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    ports: u32,
}

/// One super-packet being built: the first segment's header, and where each segment's
/// payload lies in the receive buffer (nothing is copied until the gather write).
struct Slot {
    head: [u8; MAX_HEAD],
    header_len: usize,
    /// Where the TCP header starts (after the IPv4 or IPv6 header).
    tcp_at: usize,
    key: Option<FlowKey>,
    /// Payload bytes per segment (the first segment's).
    gso_size: usize,
    parts: Vec<(usize, usize)>,
    total_len: usize,
    next_seq: u32,
    /// No more segments may join (a short or PSH segment ended it, or it is full).
    closed: bool,
    /// Order of opening, to flush the oldest when all slots are busy.
    age: u64,
}

/// Coalesces received TCP/IPv4 and TCP/IPv6 segments into super-packets written with a virtio-net GSO
/// header; everything else passes through unchanged. Packets are given as ranges of one
/// buffer that stays unchanged until [`Coalescer::flush`]. Nothing is allocated after `new`.
pub struct Coalescer {
    slots: Vec<Slot>,
    clock: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

/// What [`Coalescer`] hands to the TUN writer: a virtio-net header and one IP packet in
/// pieces (write them with one gather write).
pub trait TunSink {
    fn write(&mut self, hdr: &[u8; VNET_HDR_LEN], parts: &[&[u8]]);
}

impl<F: FnMut(&[u8; VNET_HDR_LEN], &[&[u8]])> TunSink for F {
    fn write(&mut self, hdr: &[u8; VNET_HDR_LEN], parts: &[&[u8]]) {
        self(hdr, parts)
    }
}

/// The fields of a segment that decide whether it can join a super-packet.
struct TcpSeg {
    key: FlowKey,
    tcp_at: usize,
    header_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

fn tcp_segment(pkt: &[u8], info: &Ipv4Info) -> Option<TcpSeg> {
    if info.proto != ip::PROTO_TCP || info.header_len != TCP_AT {
        return None;
    }
    // Fragments and packets with MF set never coalesce.
    if be16(pkt, ip::FLAGS_FRAGMENT) & ip::MORE_FRAGMENTS_AND_OFFSET_MASK != 0 {
        return None;
    }
    let mut key = FlowKey {
        v6: false,
        src: [0; 16],
        dst: [0; 16],
        ports: 0,
    };
    key.src[..4].copy_from_slice(&addr(pkt, ip::SRC));
    key.dst[..4].copy_from_slice(&addr(pkt, ip::DST));
    tcp_part(pkt, TCP_AT, key)
}

/// An IPv6 packet (its fixed header checked by the caller) as a TCP segment, if it is one
/// right after the fixed header.
fn tcp_segment6(pkt: &[u8]) -> Option<TcpSeg> {
    if pkt.len() < TCP_AT6 || pkt[ip6::NEXT_HEADER] != ip::PROTO_TCP {
        return None;
    }
    let mut key = FlowKey {
        v6: true,
        src: [0; 16],
        dst: [0; 16],
        ports: 0,
    };
    key.src.copy_from_slice(&pkt[ip6::SRC..ip6::SRC + 16]);
    key.dst.copy_from_slice(&pkt[ip6::DST..ip6::DST + 16]);
    tcp_part(pkt, TCP_AT6, key)
}

/// The TCP header at `tcp_at` of `pkt`, for the flow `key` (ports still to fill).
fn tcp_part(pkt: &[u8], tcp_at: usize, mut key: FlowKey) -> Option<TcpSeg> {
    let seg = pkt.get(tcp_at..)?;
    if seg.len() < tcp::MIN_HEADER_LEN {
        return None;
    }
    let thl = tcp_header_len(seg[tcp::DATA_OFFSET]);
    if thl < tcp::MIN_HEADER_LEN || thl > seg.len() {
        return None;
    }
    key.ports = be32(seg, tcp::PORTS);
    Some(TcpSeg {
        key,
        tcp_at,
        header_len: tcp_at + thl,
        seq: be32(seg, tcp::SEQ),
        flags: seg[tcp::FLAGS],
        payload: seg.len() - thl,
    })
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    head: [0; MAX_HEAD],
                    header_len: 0,
                    tcp_at: TCP_AT,
                    key: None,
                    gso_size: 0,
                    parts: Vec::with_capacity(MAX_COALESCE),
                    total_len: 0,
                    next_seq: 0,
                    closed: false,
                    age: 0,
                })
                .collect(),
            clock: 0,
        }
    }

    /// Takes one checked IPv4 packet, `buf[at]` (`info` is its parsed header). Packets of
    /// one flow leave in order; different flows may be reordered against each other.
    pub fn push(
        &mut self,
        buf: &[u8],
        at: std::ops::Range<usize>,
        info: &Ipv4Info,
        sink: &mut impl TunSink,
    ) {
        let pkt = &buf[at.clone()];
        match tcp_segment(pkt, info) {
            Some(seg) => self.push_segment(buf, at, seg, sink),
            None => {
                // A TCP packet that cannot join (a fragment, IP options) may belong to a flow
                // whose segments wait in a slot: those go first, or it would overtake them.
                if info.proto == ip::PROTO_TCP {
                    self.flush(buf, sink);
                }
                sink.write(&PLAIN, &[pkt])
            }
        }
    }

    /// [`Coalescer::push`] for an IPv6 packet whose fixed header was checked
    /// (`parse_ipv6`).
    pub fn push6(&mut self, buf: &[u8], at: std::ops::Range<usize>, sink: &mut impl TunSink) {
        let pkt = &buf[at.clone()];
        match tcp_segment6(pkt) {
            Some(seg) => self.push_segment(buf, at, seg, sink),
            None => {
                // TCP behind extension headers (hop-by-hop, routing, fragment, destination
                // options) keeps its flow's order too.
                if matches!(pkt.get(ip6::NEXT_HEADER), Some(0 | 6 | 43 | 44 | 60)) {
                    self.flush(buf, sink);
                }
                sink.write(&PLAIN, &[pkt])
            }
        }
    }

    fn push_segment(
        &mut self,
        buf: &[u8],
        at: std::ops::Range<usize>,
        seg: TcpSeg,
        sink: &mut impl TunSink,
    ) {
        let pkt = &buf[at.clone()];
        let found = self.slots.iter().position(|s| s.key == Some(seg.key));
        if let Some(i) = found {
            if self.can_append(i, pkt, &seg) {
                let s = &mut self.slots[i];
                s.parts.push((at.start + seg.header_len, at.end));
                s.total_len += seg.payload;
                s.next_seq = seg.seq.wrapping_add(seg.payload as u32);
                if seg.flags & tcp::PSH != 0 {
                    s.head[s.tcp_at + tcp::FLAGS] |= tcp::PSH;
                    s.closed = true;
                }
                if seg.payload < s.gso_size || s.parts.len() == MAX_COALESCE {
                    s.closed = true;
                }
                return;
            }
            self.flush_slot(i, buf, sink);
        }
        let plain_data = seg.flags & !(tcp::ACK | tcp::PSH) == 0 && seg.payload > 0;
        if !plain_data || seg.header_len > MAX_HEAD {
            sink.write(&PLAIN, &[pkt]);
            return;
        }
        let i = match self.slots.iter().position(|s| s.key.is_none()) {
            Some(i) => i,
            None => {
                let oldest = (0..self.slots.len())
                    .min_by_key(|&i| self.slots[i].age)
                    .unwrap_or(0);
                self.flush_slot(oldest, buf, sink);
                oldest
            }
        };
        self.clock += 1;
        let s = &mut self.slots[i];
        s.head[..seg.header_len].copy_from_slice(&pkt[..seg.header_len]);
        s.header_len = seg.header_len;
        s.tcp_at = seg.tcp_at;
        s.key = Some(seg.key);
        s.gso_size = seg.payload;
        s.parts.clear();
        s.parts.push((at.start + seg.header_len, at.end));
        s.total_len = pkt.len();
        s.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        s.closed = seg.flags & tcp::PSH != 0;
        s.age = self.clock;
    }

    fn can_append(&self, i: usize, pkt: &[u8], seg: &TcpSeg) -> bool {
        let s = &self.slots[i];
        if s.closed
            || seg.seq != s.next_seq
            || seg.header_len != s.header_len
            || seg.payload == 0
            || seg.payload > s.gso_size
            || s.total_len + seg.payload > MAX_IP_PACKET
            || seg.flags & !(tcp::ACK | tcp::PSH) != 0
        {
            return false;
        }
        let first = &s.head[..s.header_len];
        let t = s.tcp_at;
        // From the ack number through the data offset, then the window, then the urgent
        // pointer and the options.
        let ack_to_offset = t + tcp::ACK_NUM..t + tcp::FLAGS;
        let flags = t + tcp::FLAGS;
        let window = t + tcp::WINDOW..t + tcp::CHECKSUM;
        let urgent_and_options = t + tcp::URGENT..s.header_len;
        // IPv4: same TOS and DF. IPv6: same traffic class and flow label (the first word)
        // and hop limit. Then the TCP header equal after the sequence number except flags
        // (PSH) and checksum: ack, window, options (timestamps) — as Linux GRO requires.
        let same_ip = if seg.key.v6 {
            first[..4] == pkt[..4] && first[ip6::HOP_LIMIT] == pkt[ip6::HOP_LIMIT]
        } else {
            let df = |p: &[u8]| p[ip::FLAGS_FRAGMENT] & ip::DONT_FRAGMENT;
            first[ip::TOS] == pkt[ip::TOS] && df(first) == df(pkt)
        };
        same_ip
            && first[ack_to_offset.clone()] == pkt[ack_to_offset]
            && (first[flags] & !tcp::PSH) == (pkt[flags] & !tcp::PSH)
            && first[window.clone()] == pkt[window]
            && first[urgent_and_options.clone()] == pkt[urgent_and_options]
    }

    fn flush_slot(&mut self, i: usize, buf: &[u8], sink: &mut impl TunSink) {
        let s = &mut self.slots[i];
        if s.key.take().is_none() {
            return;
        }
        let hl = s.header_len;
        if s.parts.len() == 1 {
            // Untouched: its own header and checksums are still right.
            let (start, end) = s.parts[0];
            sink.write(&PLAIN, &[&buf[start - hl..end]]);
            return;
        }
        let t = s.tcp_at;
        let head = &mut s.head[..hl];
        let tcp_len = s.total_len - t;
        // NEEDS_CSUM: the field holds the pseudo-header sum, the kernel completes it.
        let (gso_type, pseudo) = if t == TCP_AT6 {
            put16(head, ip6::PAYLOAD_LEN, tcp_len as u16);
            let (src, dst) = (
                &head[ip6::SRC..ip6::SRC + 16],
                &head[ip6::DST..ip6::DST + 16],
            );
            (GSO_TCPV6, pseudo_header6(src, dst, ip::PROTO_TCP, tcp_len))
        } else {
            put16(head, ip::TOTAL_LEN, s.total_len as u16);
            set_ipv4_checksum(&mut head[..TCP_AT]);
            let (src, dst) = (addr(head, ip::SRC), addr(head, ip::DST));
            (GSO_TCPV4, pseudo_header(src, dst, ip::PROTO_TCP, tcp_len))
        };
        put16(head, t + tcp::CHECKSUM, fold(pseudo));
        let hdr = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type,
            hdr_len: hl as u16,
            gso_size: s.gso_size as u16,
            csum_start: t as u16,
            csum_offset: tcp::CHECKSUM as u16,
        };
        let mut parts: [&[u8]; MAX_COALESCE + 1] = [&[]; MAX_COALESCE + 1];
        parts[0] = head;
        for (p, &(start, end)) in parts[1..].iter_mut().zip(&s.parts) {
            *p = &buf[start..end];
        }
        sink.write(&hdr.to_bytes(), &parts[..s.parts.len() + 1]);
    }

    /// Writes out every super-packet in progress (at the end of each receive batch, before
    /// the buffer is reused).
    pub fn flush(&mut self, buf: &[u8], sink: &mut impl TunSink) {
        let mut order: [(u64, usize); SLOTS] = [(u64::MAX, 0); SLOTS];
        for (i, s) in self.slots.iter().enumerate() {
            if s.key.is_some() {
                order[i] = (s.age, i);
            }
        }
        order.sort_unstable();
        for (age, i) in order {
            if age != u64::MAX {
                self.flush_slot(i, buf, sink);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{coalesce, tcp_packet};
    use super::super::vnet::GSO_NONE;
    use super::*;

    #[test]
    fn a_tcp_packet_that_cannot_join_does_not_overtake_its_flows_held_segments() {
        let a1 = tcp_packet(0, tcp::ACK, &[1; 100], 64);
        let a2 = tcp_packet(100, tcp::ACK, &[2; 100], 64);
        // The next segment of the flow as a first fragment (MF set): it passes through.
        let mut frag = tcp_packet(200, tcp::ACK, &[3; 100], 64);
        frag[ip::FLAGS_FRAGMENT] = 0x20;
        set_ipv4_checksum(&mut frag[..20]);
        let written: Vec<(u8, usize)> = coalesce(&[a1.clone(), a2, frag.clone()])
            .into_iter()
            .map(|(h, p)| (h[1], p.len()))
            .collect();
        assert_eq!(
            written,
            vec![(GSO_TCPV4, a1.len() + 100), (GSO_NONE, frag.len())],
            "the held segments first, then the fragment"
        );
    }

    #[test]
    fn coalescer_keeps_flows_apart_and_passes_other_packets() {
        let a1 = tcp_packet(0, tcp::ACK, &[1; 100], 64);
        let a2 = tcp_packet(100, tcp::ACK, &[2; 100], 64);
        let gap = tcp_packet(300, tcp::ACK, &[3; 100], 64);
        let syn = tcp_packet(0, tcp::SYN, &[], 64);
        let written: Vec<(u8, usize)> = coalesce(&[a1.clone(), a2, gap.clone(), syn.clone()])
            .into_iter()
            .map(|(h, p)| (h[1], p.len()))
            .collect();
        // a1+a2 coalesced (flushed when the gap arrived), then the gap alone (flushed by the
        // SYN), then the SYN, which never coalesces.
        assert_eq!(
            written,
            vec![
                (GSO_TCPV4, a1.len() + 100),
                (GSO_NONE, gap.len()),
                (GSO_NONE, syn.len())
            ]
        );
    }
}

//! The udp backend's packet logic as pure functions over byte slices: IPv4 header checks,
//! TTL decrement, ICMP "net unreachable", virtio-net headers, TCP segmentation of the TUN's
//! super-packets and coalescing of received segments back into super-packets. No I/O and no
//! allocation here, so every function can be unit-tested and fuzzed on its own.

use std::net::Ipv4Addr;

/// Size of `struct virtio_net_hdr` in front of every TUN packet (IFF_VNET_HDR).
pub const VNET_HDR_LEN: usize = twill_netkit::tun::VNET_HDR_LEN;
/// The largest IPv4 packet.
pub const MAX_IP_PACKET: usize = 65535;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// Why a packet was not forwarded. Each reason has its own counter in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// A datagram from an address that holds no current lease.
    UnknownPeer,
    /// The inner source is outside the sending peer's leased subnet.
    SpoofedSource,
    /// The inner destination is not in this node's subnet (received) or is (sent): never
    /// reflect a packet back out.
    NotLocal,
    /// Shorter than its headers say.
    Truncated,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// IPv6 (the overlay is IPv4 only, like Flannel's udp backend).
    Ipv6,
    /// A bad header: length fields, header checksum, a GSO header we cannot handle.
    Malformed,
    /// Bigger than the TUN MTU.
    Oversize,
    /// The inner TTL ran out.
    TtlExpired,
    /// No peer holds the destination (an ICMP net unreachable went back).
    NoRoute,
    /// The destination is outside the overlay network.
    OutsideNetwork,
}

impl Drop {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [Drop; 11] = [
        Drop::UnknownPeer,
        Drop::SpoofedSource,
        Drop::NotLocal,
        Drop::Truncated,
        Drop::NotIp,
        Drop::Ipv6,
        Drop::Malformed,
        Drop::Oversize,
        Drop::TtlExpired,
        Drop::NoRoute,
        Drop::OutsideNetwork,
    ];

    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Drop::UnknownPeer => "unknown_peer",
            Drop::SpoofedSource => "spoofed_source",
            Drop::NotLocal => "not_local",
            Drop::Truncated => "truncated",
            Drop::NotIp => "not_ip",
            Drop::Ipv6 => "ipv6",
            Drop::Malformed => "malformed",
            Drop::Oversize => "oversize",
            Drop::TtlExpired => "ttl_expired",
            Drop::NoRoute => "no_route",
            Drop::OutsideNetwork => "outside_network",
        }
    }

    /// Index into a counter array ordered like [`Drop::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Checksums (RFC 1071), summed 32 bits at a time into a 64-bit accumulator.

/// Adds `data` to a running ones'-complement sum. `data` must start at an even offset of the
/// checksummed region (every caller passes whole headers or payloads that follow them).
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u16::from_be_bytes([rest[0], rest[1]]) as u64;
        rest = &rest[2..];
    }
    if let [b] = rest {
        acc += (*b as u64) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// The IPv4 pseudo-header sum for a transport segment of `len` bytes.
fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    sum(0, &src) + sum(0, &dst) + proto as u64 + len as u64
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Recomputes the IPv4 header checksum of `hdr` (the whole header, options included).
fn set_ipv4_checksum(hdr: &mut [u8]) {
    put16(hdr, 10, 0);
    let c = checksum(hdr);
    put16(hdr, 10, c);
}

// ---------------------------------------------------------------------------------------------
// IPv4 headers.

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
pub fn parse_ipv4(pkt: &[u8], verify_checksum: bool) -> Result<Ipv4Info, Drop> {
    let Some(&first) = pkt.first() else {
        return Err(Drop::Truncated);
    };
    match first >> 4 {
        4 => {}
        6 => return Err(Drop::Ipv6),
        _ => return Err(Drop::NotIp),
    }
    if pkt.len() < 20 {
        return Err(Drop::Truncated);
    }
    let header_len = ((first & 0x0f) as usize) * 4;
    if header_len < 20 {
        return Err(Drop::Malformed);
    }
    if header_len > pkt.len() {
        return Err(Drop::Truncated);
    }
    let total_len = be16(pkt, 2) as usize;
    if total_len > pkt.len() {
        return Err(Drop::Truncated);
    }
    if total_len < header_len || total_len != pkt.len() {
        return Err(Drop::Malformed);
    }
    if verify_checksum && checksum(&pkt[..header_len]) != 0 {
        return Err(Drop::Malformed);
    }
    Ok(Ipv4Info {
        header_len,
        total_len,
        proto: pkt[9],
        ttl: pkt[8],
        src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
    })
}

/// Decrements the TTL of an IPv4 packet with an incremental checksum update (RFC 1624), as
/// Flannel's proxy does in both directions. Fails when the TTL reaches 0.
pub fn decrement_ttl(pkt: &mut [u8]) -> Result<(), Drop> {
    if pkt.len() < 20 {
        return Err(Drop::Truncated);
    }
    if pkt[8] <= 1 {
        return Err(Drop::TtlExpired);
    }
    pkt[8] -= 1;
    // The TTL is the high byte of word 4: the word drops by 0x0100, so the checksum rises.
    let c = !be16(pkt, 10);
    let c = fold(c as u64 + 0xfeff); // + ~0x0100
    put16(pkt, 10, !c);
    Ok(())
}

/// Writes into `out` an ICMP "destination net unreachable" from `src` about `orig`, ready
/// to be written into the TUN; returns its length, or `None` where RFC 1812 says to stay
/// silent (an ICMP error about an ICMP error, a non-first fragment, a bad header).
pub fn icmp_net_unreachable(orig: &[u8], src: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let info = parse_ipv4(orig, false).ok()?;
    let frag_offset = be16(orig, 6) & 0x1fff;
    if frag_offset != 0 {
        return None;
    }
    if info.proto == PROTO_ICMP {
        let t = *orig.get(info.header_len)?;
        // Only queries (echo, timestamp, ...) may trigger an error.
        if !matches!(t, 0 | 8 | 13 | 14) {
            return None;
        }
    }
    let quoted = (info.header_len + 8).min(orig.len());
    let len = 20 + 8 + quoted;
    if out.len() < len {
        return None;
    }
    let out = &mut out[..len];
    out[0] = 0x45;
    out[1] = 0xc0; // Internetwork control, as Linux sends ICMP errors.
    put16(out, 2, len as u16);
    put32(out, 4, 0);
    out[8] = 64;
    out[9] = PROTO_ICMP;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&info.src.octets());
    set_ipv4_checksum(&mut out[..20]);
    let icmp = &mut out[20..];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 0; // net unreachable
    put16(icmp, 2, 0);
    put32(icmp, 4, 0);
    icmp[8..].copy_from_slice(&orig[..quoted]);
    let c = checksum(icmp);
    put16(icmp, 2, c);
    Some(len)
}

// ---------------------------------------------------------------------------------------------
// virtio-net headers (little endian, as the TUN uses them on x86 and arm64).

/// `struct virtio_net_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

pub const VNET_F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_ECN: u8 = 0x80;

impl VnetHdr {
    /// Reads the header at the start of `b` (callers check the length).
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// The header as bytes.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Completes a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM on a packet
/// without GSO): the field holds the pseudo-header sum; the sum runs from `csum_start`.
pub fn complete_checksum(pkt: &mut [u8], hdr: &VnetHdr) -> Result<(), Drop> {
    let start = hdr.csum_start as usize;
    let field = start + hdr.csum_offset as usize;
    if start >= pkt.len() || field + 2 > pkt.len() {
        return Err(Drop::Malformed);
    }
    let c = !fold(sum(0, &pkt[start..]));
    put16(pkt, field, c);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Segmentation: one TCP/IPv4 super-packet from the TUN into MTU-sized packets.

/// Where segmentation put its output: `count` packets back to back from the start of the
/// output buffer, each `stride` bytes except the last, `len` bytes in all. That layout is
/// what UDP_SEGMENT sends as one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub stride: usize,
    pub len: usize,
}

/// Splits a TCP/IPv4 super-packet (`pkt`, the IP packet after its virtio-net header) into
/// segments of `gso_size` payload bytes, like the kernel's TSO: IP ids counting up, sequence
/// numbers advanced, FIN/PSH only on the last segment, CWR only on the first, full IP and
/// TCP checksums. Writes them to `out` and says where.
pub fn segment_tcp4(pkt: &[u8], gso_size: usize, out: &mut [u8]) -> Result<Segments, Drop> {
    let ip = parse_ipv4(pkt, false)?;
    if ip.proto != PROTO_TCP || gso_size == 0 {
        return Err(Drop::Malformed);
    }
    let ihl = ip.header_len;
    if pkt.len() < ihl + 20 {
        return Err(Drop::Truncated);
    }
    let thl = ((pkt[ihl + 12] >> 4) as usize) * 4;
    if thl < 20 || ihl + thl > pkt.len() {
        return Err(Drop::Malformed);
    }
    let hl = ihl + thl;
    let payload = &pkt[hl..];
    let count = payload.len().div_ceil(gso_size).max(1);
    let stride = hl + gso_size.min(payload.len());
    let len = payload.len() + count * hl;
    if out.len() < len {
        return Err(Drop::Oversize);
    }
    let id = be16(pkt, 4);
    let seq = be32(pkt, ihl + 4);
    let flags = pkt[ihl + 13];
    let src: [u8; 4] = [pkt[12], pkt[13], pkt[14], pkt[15]];
    let dst: [u8; 4] = [pkt[16], pkt[17], pkt[18], pkt[19]];
    let mut at = 0;
    for i in 0..count {
        let chunk =
            &payload[(i * gso_size).min(payload.len())..((i + 1) * gso_size).min(payload.len())];
        let seg = &mut out[at..at + hl + chunk.len()];
        seg[..hl].copy_from_slice(&pkt[..hl]);
        seg[hl..].copy_from_slice(chunk);
        put16(seg, 2, (hl + chunk.len()) as u16);
        put16(seg, 4, id.wrapping_add(i as u16));
        set_ipv4_checksum(&mut seg[..ihl]);
        let tcp = &mut seg[ihl..];
        put32(tcp, 4, seq.wrapping_add((i * gso_size) as u32));
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        tcp[13] = f;
        put16(tcp, 16, 0);
        let c = !fold(pseudo_header(src, dst, PROTO_TCP, tcp.len()) + sum(0, tcp));
        put16(tcp, 16, c);
        at += hl + chunk.len();
    }
    Ok(Segments { count, stride, len })
}

// ---------------------------------------------------------------------------------------------
// Coalescing: consecutive segments of one TCP flow into one super-packet for the TUN.

/// How many flows can be coalesced at once (several iperf3 streams interleave).
const SLOTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    src: [u8; 4],
    dst: [u8; 4],
    ports: u32,
}

/// One super-packet being built.
struct Slot {
    /// The IP packet so far (header of the first segment, payloads appended).
    buf: Box<[u8]>,
    len: usize,
    key: Option<FlowKey>,
    header_len: usize,
    /// Payload bytes per segment (the first segment's).
    gso_size: usize,
    segments: usize,
    next_seq: u32,
    /// No more segments may join (a short or PSH segment ended it).
    closed: bool,
    /// Order of opening, to flush the oldest when all slots are busy.
    age: u64,
}

/// Coalesces received TCP/IPv4 segments into super-packets written with a virtio-net GSO
/// header; everything else passes through unchanged. Buffers are allocated once.
pub struct Coalescer {
    slots: Vec<Slot>,
    clock: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

/// What [`Coalescer`] hands to the TUN writer: a virtio-net header and one IP packet.
pub trait TunSink {
    fn write(&mut self, hdr: &[u8; VNET_HDR_LEN], pkt: &[u8]);
}

impl<F: FnMut(&[u8; VNET_HDR_LEN], &[u8])> TunSink for F {
    fn write(&mut self, hdr: &[u8; VNET_HDR_LEN], pkt: &[u8]) {
        self(hdr, pkt)
    }
}

const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// The fields of a segment that decide whether it can join a super-packet.
struct TcpSeg {
    key: FlowKey,
    header_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

fn tcp_segment(pkt: &[u8], ip: &Ipv4Info) -> Option<TcpSeg> {
    if ip.proto != PROTO_TCP || ip.header_len != 20 {
        return None;
    }
    // Fragments and packets with MF set never coalesce.
    if be16(pkt, 6) & 0x3fff != 0 {
        return None;
    }
    let tcp = pkt.get(20..)?;
    if tcp.len() < 20 {
        return None;
    }
    let thl = ((tcp[12] >> 4) as usize) * 4;
    if thl < 20 || thl > tcp.len() {
        return None;
    }
    Some(TcpSeg {
        key: FlowKey {
            src: [pkt[12], pkt[13], pkt[14], pkt[15]],
            dst: [pkt[16], pkt[17], pkt[18], pkt[19]],
            ports: be32(tcp, 0),
        },
        header_len: 20 + thl,
        seq: be32(tcp, 4),
        flags: tcp[13],
        payload: tcp.len() - thl,
    })
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    buf: vec![0u8; MAX_IP_PACKET].into_boxed_slice(),
                    len: 0,
                    key: None,
                    header_len: 0,
                    gso_size: 0,
                    segments: 0,
                    next_seq: 0,
                    closed: false,
                    age: 0,
                })
                .collect(),
            clock: 0,
        }
    }

    /// Takes one checked IPv4 packet (`ip` is its parsed header). Packets of one flow leave
    /// in order; different flows may be reordered against each other.
    pub fn push(&mut self, pkt: &[u8], ip: &Ipv4Info, sink: &mut impl TunSink) {
        let Some(seg) = tcp_segment(pkt, ip) else {
            sink.write(&PLAIN, pkt);
            return;
        };
        let found = self.slots.iter().position(|s| s.key == Some(seg.key));
        if let Some(i) = found {
            if self.can_append(i, pkt, &seg) {
                self.append(i, pkt, &seg);
                return;
            }
            self.flush_slot(i, sink);
        }
        let plain_data = seg.flags & !(TCP_ACK | TCP_PSH) == 0 && seg.payload > 0;
        if !plain_data {
            sink.write(&PLAIN, pkt);
            return;
        }
        let i = match self.slots.iter().position(|s| s.key.is_none()) {
            Some(i) => i,
            None => {
                let oldest = (0..self.slots.len())
                    .min_by_key(|&i| self.slots[i].age)
                    .unwrap_or(0);
                self.flush_slot(oldest, sink);
                oldest
            }
        };
        self.clock += 1;
        let s = &mut self.slots[i];
        s.buf[..pkt.len()].copy_from_slice(pkt);
        s.len = pkt.len();
        s.key = Some(seg.key);
        s.header_len = seg.header_len;
        s.gso_size = seg.payload;
        s.segments = 1;
        s.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        s.closed = seg.flags & TCP_PSH != 0;
        s.age = self.clock;
    }

    fn can_append(&self, i: usize, pkt: &[u8], seg: &TcpSeg) -> bool {
        let s = &self.slots[i];
        if s.closed
            || seg.seq != s.next_seq
            || seg.header_len != s.header_len
            || seg.payload == 0
            || seg.payload > s.gso_size
            || s.len + seg.payload > MAX_IP_PACKET
            || seg.flags & !(TCP_ACK | TCP_PSH) != 0
        {
            return false;
        }
        let first = &s.buf[..s.header_len];
        // Same TOS and DF; the TCP header equal after the sequence number except flags
        // (PSH) and checksum: ack, window, options (timestamps) — as Linux GRO requires.
        first[1] == pkt[1]
            && first[6] & 0x40 == pkt[6] & 0x40
            && first[28..33] == pkt[28..33]
            && (first[33] & !TCP_PSH) == (pkt[33] & !TCP_PSH)
            && first[34..36] == pkt[34..36]
            && first[38..s.header_len] == pkt[38..s.header_len]
    }

    fn append(&mut self, i: usize, pkt: &[u8], seg: &TcpSeg) {
        let s = &mut self.slots[i];
        let data = &pkt[seg.header_len..];
        s.buf[s.len..s.len + data.len()].copy_from_slice(data);
        s.len += data.len();
        s.segments += 1;
        s.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        if seg.flags & TCP_PSH != 0 {
            s.buf[33] |= TCP_PSH;
            s.closed = true;
        }
        if seg.payload < s.gso_size {
            s.closed = true;
        }
    }

    fn flush_slot(&mut self, i: usize, sink: &mut impl TunSink) {
        let s = &mut self.slots[i];
        if s.key.take().is_none() {
            return;
        }
        let pkt = &mut s.buf[..s.len];
        if s.segments == 1 {
            // Untouched: its own checksums are still right.
            sink.write(&PLAIN, pkt);
            return;
        }
        put16(pkt, 2, s.len as u16);
        set_ipv4_checksum(&mut pkt[..20]);
        let src = [pkt[12], pkt[13], pkt[14], pkt[15]];
        let dst = [pkt[16], pkt[17], pkt[18], pkt[19]];
        // NEEDS_CSUM: the field holds the pseudo-header sum, the kernel completes it.
        let partial = fold(pseudo_header(src, dst, PROTO_TCP, s.len - 20));
        put16(pkt, 36, partial);
        let hdr = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: s.header_len as u16,
            gso_size: s.gso_size as u16,
            csum_start: 20,
            csum_offset: 16,
        };
        sink.write(&hdr.to_bytes(), pkt);
    }

    /// Writes out every super-packet in progress (at the end of each receive batch).
    pub fn flush(&mut self, sink: &mut impl TunSink) {
        let mut order: [(u64, usize); SLOTS] = [(u64::MAX, 0); SLOTS];
        for (i, s) in self.slots.iter().enumerate() {
            if s.key.is_some() {
                order[i] = (s.age, i);
            }
        }
        order.sort_unstable();
        for (age, i) in order {
            if age != u64::MAX {
                self.flush_slot(i, sink);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP_SYN: u8 = 0x02;

    /// A TCP/IPv4 packet with `payload`, valid checksums.
    pub fn tcp_packet(seq: u32, flags: u8, payload: &[u8], ttl: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32 + payload.len()];
        p[0] = 0x45;
        let total = p.len() as u16;
        put16(&mut p, 2, total);
        put16(&mut p, 4, 0x1234);
        p[6] = 0x40;
        p[8] = ttl;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 5, 1, 2]);
        p[16..20].copy_from_slice(&[10, 5, 2, 3]);
        set_ipv4_checksum(&mut p[..20]);
        let tcp = &mut p[20..];
        put16(tcp, 0, 40000);
        put16(tcp, 2, 5201);
        put32(tcp, 4, seq);
        put32(tcp, 8, 777);
        tcp[12] = 8 << 4;
        tcp[13] = flags;
        put16(tcp, 14, 500);
        // NOP NOP timestamp option.
        tcp[20..24].copy_from_slice(&[1, 1, 8, 10]);
        put32(tcp, 24, 0xabcdef01);
        put32(tcp, 28, 0x01020304);
        tcp[32..].copy_from_slice(payload);
        let c =
            !fold(pseudo_header([10, 5, 1, 2], [10, 5, 2, 3], PROTO_TCP, tcp.len()) + sum(0, tcp));
        put16(tcp, 16, c);
        p
    }

    fn tcp_ok(pkt: &[u8]) -> bool {
        let src = [pkt[12], pkt[13], pkt[14], pkt[15]];
        let dst = [pkt[16], pkt[17], pkt[18], pkt[19]];
        checksum(&pkt[..20]) == 0
            && fold(pseudo_header(src, dst, PROTO_TCP, pkt.len() - 20) + sum(0, &pkt[20..]))
                == 0xffff
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        // Odd lengths pad with a zero byte.
        assert_eq!(fold(sum(0, &[0xab])), 0xab00);
        assert_eq!(
            fold(sum(0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])),
            fold(sum(0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0]))
        );
    }

    #[test]
    fn parse_rejects_every_kind_of_bad_header() {
        let good = tcp_packet(1, TCP_ACK, b"hello", 64);
        assert!(parse_ipv4(&good, true).is_ok());
        assert_eq!(parse_ipv4(&[], true), Err(Drop::Truncated));
        assert_eq!(parse_ipv4(&good[..10], true), Err(Drop::Truncated));
        assert_eq!(parse_ipv4(&good[..30], true), Err(Drop::Truncated));
        let mut v6 = good.clone();
        v6[0] = 0x60;
        assert_eq!(parse_ipv4(&v6, true), Err(Drop::Ipv6));
        assert_eq!(parse_ipv4(&[0x10; 40], true), Err(Drop::NotIp));
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        assert_eq!(parse_ipv4(&short_ihl, true), Err(Drop::Malformed));
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 0xff;
        assert_eq!(parse_ipv4(&bad_sum, true), Err(Drop::Malformed));
        assert!(parse_ipv4(&bad_sum, false).is_ok());
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(parse_ipv4(&trailing, true), Err(Drop::Malformed));
    }

    #[test]
    fn ttl_decrement_keeps_the_header_checksum_valid() {
        for ttl in [2u8, 64, 255] {
            let mut p = tcp_packet(1, TCP_ACK, b"x", ttl);
            decrement_ttl(&mut p).unwrap();
            assert_eq!(p[8], ttl - 1);
            assert_eq!(checksum(&p[..20]), 0, "ttl {ttl}");
        }
        let mut p = tcp_packet(1, TCP_ACK, b"x", 1);
        assert_eq!(decrement_ttl(&mut p), Err(Drop::TtlExpired));
    }

    #[test]
    fn icmp_unreachable_quotes_the_packet_and_checks_out() {
        let orig = tcp_packet(1, TCP_ACK, b"hello world", 64);
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

    #[test]
    fn segmentation_then_coalescing_gives_back_the_stream() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let sup = tcp_packet(1000, TCP_ACK | TCP_PSH, &payload, 64);
        let mut out = vec![0u8; 70_000];
        let segs = segment_tcp4(&sup, 1400, &mut out).unwrap();
        assert_eq!(segs.count, 8);
        assert_eq!(segs.stride, 52 + 1400);
        assert_eq!(segs.len, 10_000 + 8 * 52);
        let mut packets = Vec::new();
        for i in 0..segs.count {
            let start = i * segs.stride;
            let end = (start + segs.stride).min(segs.len);
            let p = &out[start..end];
            assert!(tcp_ok(p), "segment {i} checksums");
            assert_eq!(be32(p, 24), 1000 + (i as u32) * 1400);
            assert_eq!(p[33] & TCP_PSH != 0, i == segs.count - 1);
            packets.push(p.to_vec());
        }
        let mut c = Coalescer::new();
        let mut written: Vec<([u8; VNET_HDR_LEN], Vec<u8>)> = Vec::new();
        let mut sink = |h: &[u8; VNET_HDR_LEN], p: &[u8]| written.push((*h, p.to_vec()));
        for p in &packets {
            let ip = parse_ipv4(p, true).unwrap();
            c.push(p, &ip, &mut sink);
        }
        c.flush(&mut sink);
        assert_eq!(written.len(), 1);
        let (h, p) = &written[0];
        let h = VnetHdr::parse(h).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (GSO_TCPV4, 1400, 52));
        assert_eq!(&p[52..], &payload[..]);
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(p[33] & TCP_PSH, TCP_PSH);
        // Completing the partial checksum like the kernel gives a valid packet.
        let mut full = p.clone();
        complete_checksum(&mut full, &h).unwrap();
        assert!(tcp_ok(&full));
    }

    #[test]
    fn coalescer_keeps_flows_apart_and_passes_other_packets() {
        let a1 = tcp_packet(0, TCP_ACK, &[1; 100], 64);
        let a2 = tcp_packet(100, TCP_ACK, &[2; 100], 64);
        let gap = tcp_packet(300, TCP_ACK, &[3; 100], 64);
        let syn = tcp_packet(0, TCP_SYN, &[], 64);
        let mut written = Vec::new();
        let mut sink = |h: &[u8; VNET_HDR_LEN], p: &[u8]| written.push((h[1], p.len()));
        let mut c = Coalescer::new();
        for p in [&a1, &a2, &gap, &syn] {
            let ip = parse_ipv4(p, true).unwrap();
            c.push(p, &ip, &mut sink);
        }
        c.flush(&mut sink);
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

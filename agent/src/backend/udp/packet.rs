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
///
/// The hot loop of the sender (one pass over every payload byte), so it sums native-endian
/// 64-bit words into a 128-bit accumulator (add-with-carry, no per-word folding) and swaps
/// bytes once at the end: the ones'-complement sum does not care about byte order
/// (RFC 1071 §2(B)).
pub fn sum(acc: u64, data: &[u8]) -> u64 {
    let word = |c: &[u8]| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let (mut a, mut b, mut c, mut d) = (0u128, 0u128, 0u128, 0u128);
    let mut blocks = data.chunks_exact(32);
    for x in &mut blocks {
        a += word(&x[0..8]) as u128;
        b += word(&x[8..16]) as u128;
        c += word(&x[16..24]) as u128;
        d += word(&x[24..32]) as u128;
    }
    let mut wide = a + b + c + d;
    let mut words = blocks.remainder().chunks_exact(8);
    for x in &mut words {
        wide += word(x) as u128;
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut pad = [0u8; 8];
        pad[..rest.len()].copy_from_slice(rest);
        wide += u64::from_ne_bytes(pad) as u128;
    }
    while wide > 0xffff {
        wide = (wide & 0xffff) + (wide >> 16);
    }
    let native = wide as u16;
    let be = if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    };
    acc + be as u64
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

/// Plans the split of a TCP/IPv4 super-packet (`pkt`, the IP packet after its virtio-net
/// header) into segments of `gso_size` payload bytes, like the kernel's TSO, and writes each
/// segment's header to `headers` (`header_len` bytes apart): IP ids counting up, sequence
/// numbers advanced, FIN/PSH only on the last segment, CWR only on the first, full IP and
/// TCP checksums (over the payload in place).
pub fn segment_headers(
    pkt: &[u8],
    gso_size: usize,
    headers: &mut [u8],
) -> Result<SegmentPlan, Drop> {
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
    let payload_len = pkt.len() - hl;
    let count = payload_len.div_ceil(gso_size).max(1);
    if count > MAX_SEGMENTS {
        return Err(Drop::Malformed);
    }
    if headers.len() < count * hl {
        return Err(Drop::Oversize);
    }
    let plan = SegmentPlan {
        count,
        header_len: hl,
        gso_size,
        payload_len,
    };
    let id = be16(pkt, 4);
    let seq = be32(pkt, ihl + 4);
    let flags = pkt[ihl + 13];
    let src: [u8; 4] = [pkt[12], pkt[13], pkt[14], pkt[15]];
    let dst: [u8; 4] = [pkt[16], pkt[17], pkt[18], pkt[19]];
    for i in 0..count {
        let chunk = &pkt[plan.payload(i)];
        let h = &mut headers[i * hl..(i + 1) * hl];
        h.copy_from_slice(&pkt[..hl]);
        put16(h, 2, (hl + chunk.len()) as u16);
        put16(h, 4, id.wrapping_add(i as u16));
        set_ipv4_checksum(&mut h[..ihl]);
        let tcp = &mut h[ihl..];
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
        let len = thl + chunk.len();
        let c = !fold(pseudo_header(src, dst, PROTO_TCP, len) + sum(0, tcp) + sum(0, chunk));
        put16(tcp, 16, c);
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// Coalescing: consecutive segments of one TCP flow into one super-packet for the TUN.

/// How many flows can be coalesced at once (several iperf3 streams interleave).
const SLOTS: usize = 8;
/// Segments per super-packet at most (one iovec each when written).
pub const MAX_COALESCE: usize = 64;
/// The longest IPv4 + TCP header (coalesced packets have no IP options: 20 + 60).
const MAX_HEAD: usize = 80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    src: [u8; 4],
    dst: [u8; 4],
    ports: u32,
}

/// One super-packet being built: the first segment's header, and where each segment's
/// payload lies in the receive buffer (nothing is copied until the gather write).
struct Slot {
    head: [u8; MAX_HEAD],
    header_len: usize,
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

/// Coalesces received TCP/IPv4 segments into super-packets written with a virtio-net GSO
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
                    head: [0; MAX_HEAD],
                    header_len: 0,
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

    /// Takes one checked IPv4 packet, `buf[at]` (`ip` is its parsed header). Packets of one
    /// flow leave in order; different flows may be reordered against each other.
    pub fn push(
        &mut self,
        buf: &[u8],
        at: std::ops::Range<usize>,
        ip: &Ipv4Info,
        sink: &mut impl TunSink,
    ) {
        let pkt = &buf[at.clone()];
        let Some(seg) = tcp_segment(pkt, ip) else {
            sink.write(&PLAIN, &[pkt]);
            return;
        };
        let found = self.slots.iter().position(|s| s.key == Some(seg.key));
        if let Some(i) = found {
            if self.can_append(i, pkt, &seg) {
                let s = &mut self.slots[i];
                s.parts.push((at.start + seg.header_len, at.end));
                s.total_len += seg.payload;
                s.next_seq = seg.seq.wrapping_add(seg.payload as u32);
                if seg.flags & TCP_PSH != 0 {
                    s.head[33] |= TCP_PSH;
                    s.closed = true;
                }
                if seg.payload < s.gso_size || s.parts.len() == MAX_COALESCE {
                    s.closed = true;
                }
                return;
            }
            self.flush_slot(i, buf, sink);
        }
        let plain_data = seg.flags & !(TCP_ACK | TCP_PSH) == 0 && seg.payload > 0;
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
        s.key = Some(seg.key);
        s.gso_size = seg.payload;
        s.parts.clear();
        s.parts.push((at.start + seg.header_len, at.end));
        s.total_len = pkt.len();
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
            || s.total_len + seg.payload > MAX_IP_PACKET
            || seg.flags & !(TCP_ACK | TCP_PSH) != 0
        {
            return false;
        }
        let first = &s.head[..s.header_len];
        // Same TOS and DF; the TCP header equal after the sequence number except flags
        // (PSH) and checksum: ack, window, options (timestamps) — as Linux GRO requires.
        first[1] == pkt[1]
            && first[6] & 0x40 == pkt[6] & 0x40
            && first[28..33] == pkt[28..33]
            && (first[33] & !TCP_PSH) == (pkt[33] & !TCP_PSH)
            && first[34..36] == pkt[34..36]
            && first[38..s.header_len] == pkt[38..s.header_len]
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
        let head = &mut s.head[..hl];
        put16(head, 2, s.total_len as u16);
        set_ipv4_checksum(&mut head[..20]);
        let src = [head[12], head[13], head[14], head[15]];
        let dst = [head[16], head[17], head[18], head[19]];
        // NEEDS_CSUM: the field holds the pseudo-header sum, the kernel completes it.
        let partial = fold(pseudo_header(src, dst, PROTO_TCP, s.total_len - 20));
        put16(head, 36, partial);
        let hdr = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: hl as u16,
            gso_size: s.gso_size as u16,
            csum_start: 20,
            csum_offset: 16,
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
    use super::*;

    /// Runs `packets` (laid out in one buffer, as a receive batch is) through a coalescer;
    /// returns each TUN write as (virtio-net header, whole packet).
    pub fn coalesce(packets: &[Vec<u8>]) -> Vec<([u8; VNET_HDR_LEN], Vec<u8>)> {
        let buf: Vec<u8> = packets.concat();
        let mut written = Vec::new();
        let mut sink = |h: &[u8; VNET_HDR_LEN], parts: &[&[u8]]| written.push((*h, parts.concat()));
        let mut c = Coalescer::new();
        let mut at = 0;
        for p in packets {
            if let Ok(ip) = parse_ipv4(p, true) {
                c.push(&buf, at..at + p.len(), &ip, &mut sink);
            }
            at += p.len();
        }
        c.flush(&buf, &mut sink);
        written
    }

    /// The segments of `pkt` back to back, as they go on the wire.
    pub fn segment_tcp4(pkt: &[u8], gso_size: usize) -> Result<(SegmentPlan, Vec<u8>), Drop> {
        let mut headers = vec![0u8; MAX_SEGMENTS * 120];
        let plan = segment_headers(pkt, gso_size, &mut headers)?;
        let hl = plan.header_len;
        let mut out = Vec::with_capacity(plan.total_len());
        for i in 0..plan.count {
            out.extend_from_slice(&headers[i * hl..(i + 1) * hl]);
            out.extend_from_slice(&pkt[plan.payload(i)]);
        }
        Ok((plan, out))
    }

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

    /// RFC 1071 the plain way: big-endian 16-bit words.
    fn naive_sum(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for w in data.chunks(2) {
            acc += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u64;
        }
        fold(acc)
    }

    #[test]
    fn fast_sum_agrees_with_the_plain_one_at_every_length() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in (0..200).chain([1400, 1447, 2999, 3000]) {
            assert_eq!(
                fold(sum(0, &data[..len])),
                naive_sum(&data[..len]),
                "len {len}"
            );
        }
        let ones = vec![0xffu8; 65535];
        assert_eq!(fold(sum(0, &ones)), naive_sum(&ones));
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
            assert_eq!(be32(p, 24), 1000 + (i as u32) * 1400);
            assert_eq!(p[33] & TCP_PSH != 0, i == segs.count - 1);
            packets.push(p.to_vec());
        }
        let written = coalesce(&packets);
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

    /// xorshift64: deterministic randomness without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn random_super_packets_segment_and_coalesce_back_with_valid_checksums() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for case in 0..1500 {
            let len = rng.below(20_000) + 1;
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let gso = 64 + rng.below(1400);
            let flags = TCP_ACK | if rng.below(2) == 0 { TCP_PSH } else { 0 };
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
                assert_eq!(be32(&p, 24), seq.wrapping_add((i * gso) as u32));
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
    fn garbage_never_panics_any_packet_function() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let valid = tcp_packet(7, TCP_ACK, &[5; 3000], 64);
        let mut headers = vec![0u8; MAX_SEGMENTS * 120];
        let mut icmp = [0u8; 128];
        for _ in 0..30_000 {
            // Half mutations of a valid packet, half random bytes of random length.
            let mut p = if rng.below(2) == 0 {
                let mut p = valid[..rng.below(valid.len() + 1)].to_vec();
                for _ in 0..1 + rng.below(4) {
                    if !p.is_empty() {
                        let i = rng.below(p.len());
                        p[i] = rng.next() as u8;
                    }
                }
                p
            } else {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            };
            let _ = parse_ipv4(&p, true);
            let _ = icmp_net_unreachable(&p, Ipv4Addr::new(10, 0, 0, 0), &mut icmp);
            let _ = segment_headers(&p, rng.below(3000), &mut headers);
            if let Some(h) = VnetHdr::parse(&p) {
                let _ = complete_checksum(&mut p.clone(), &h);
            }
            let _ = coalesce(&[p.clone(), p.clone()]);
            let _ = decrement_ttl(&mut p);
        }
    }
}

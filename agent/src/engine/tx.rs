//! TUN → UDP: reads carry virtio-net headers, so the kernel hands over 64 KiB TCP
//! super-packets; the transform picks each one's peer, its segments leave with one sendmmsg
//! and UDP_SEGMENT, gathering headers from an arena and payloads from the read buffer.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::EngineConfig;
use super::icmp_budget::IcmpBudget;
use super::packet::{
    self, DropReason, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, MAX_IP_PACKET, MAX_SEGMENT_HEADER,
    MAX_SEGMENTS, PLAIN, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr,
};
use super::poll::sleep_until_writable;
use super::stats::{LocalCounts, Stats};
use super::sys::{self, BATCH, IovScratch, SendBatch, UdpSocket};
use super::trains::{Part, SendQueue};
use super::transform::{Control, Destination, Outbound, Refusal, SealJob};
use super::worker::Round;

/// TUN reads that may be pending in one send batch.
const READ_SLOTS: usize = 8;
const READ_SLOT: usize = VNET_HDR_LEN + MAX_IP_PACKET;
/// TUN reads per round before the other direction gets its turn (4, to serve ACKs sooner,
/// measured no better: docs/benchmarks.md, "Fewer TUN reads per round").
const TUN_READS_PER_ROUND: usize = 64;
/// Headers of the segments of one super-packet at most.
const MAX_PACKET_HEADERS: usize = MAX_SEGMENTS * MAX_SEGMENT_HEADER;
const HEADER_ARENA: usize = 4 * MAX_PACKET_HEADERS;
/// Pieces one read may queue at most: a header and a payload per segment, or the packet.
const PARTS_PER_READ: usize = 2 * MAX_SEGMENTS + 1;

/// Where one piece of an inner datagram lies before it is queued: in a read slot or in the
/// header arena.
#[derive(Clone, Copy, Debug)]
enum Piece {
    Read { off: usize, len: usize },
    Header { off: usize, len: usize },
}

impl From<Piece> for Part {
    fn from(p: Piece) -> Part {
        match p {
            Piece::Read { off, len } => Part::Read { off, len },
            Piece::Header { off, len } => Part::Header { off, len },
        }
    }
}

/// The sealed datagrams of one super-packet at most, for a transform that adds `overhead`
/// bytes to each: every header, the whole payload and the overhead per segment.
const fn sealed_per_read(overhead: usize) -> usize {
    MAX_IP_PACKET + MAX_SEGMENTS * (MAX_SEGMENT_HEADER + overhead)
}

/// The TUN → UDP half of one worker.
pub(super) struct TxWorker<O: Outbound> {
    pub(super) tun: File,
    sock: Arc<UdpSocket>,
    outbound: O,
    pub(super) stats: Arc<Stats>,
    pub(super) stop: Arc<AtomicBool>,
    cfg: EngineConfig,
    /// TUN reads, one slot each; payloads are sent from here without copying.
    reads: Box<[u8]>,
    reads_used: usize,
    headers: Box<[u8]>,
    headers_used: usize,
    /// Datagrams a transform wrapped (empty for a transform that adds nothing).
    sealed: Box<[u8]>,
    sealed_used: usize,
    /// The datagrams of the current read waiting to be sealed (all for one peer; offsets in
    /// `sealed`).
    jobs: Vec<SealJob>,
    jobs_dest: Option<Destination<O::Peer>>,
    queue: SendQueue<O::Peer>,
    iovs: IovScratch,
    icmp_budget: IcmpBudget,
    pub(super) local: LocalCounts,
}

/// The bytes `p` names in the worker's buffers (a free function: the batch being built
/// holds the worker's iovec scratch mutably meanwhile).
fn piece<'a>(reads: &'a [u8], headers: &'a [u8], sealed: &'a [u8], p: Part) -> &'a [u8] {
    match p {
        Part::Read { off, len } => &reads[off..off + len],
        Part::Header { off, len } => &headers[off..off + len],
        Part::Sealed { off, len } => &sealed[off..off + len],
    }
}

impl<O: Outbound> TxWorker<O> {
    /// Bytes the transform adds to each datagram.
    const OVERHEAD: usize = O::HEADER_LEN + O::TRAILER_LEN;

    pub(super) fn new(
        tun: File,
        sock: Arc<UdpSocket>,
        outbound: O,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
        cfg: EngineConfig,
    ) -> TxWorker<O> {
        let sealed_arena = if Self::OVERHEAD == 0 {
            0
        } else {
            2 * sealed_per_read(Self::OVERHEAD)
        };
        TxWorker {
            tun,
            sock,
            outbound,
            stats,
            stop,
            cfg,
            reads: vec![0u8; READ_SLOTS * READ_SLOT].into_boxed_slice(),
            reads_used: 0,
            headers: vec![0u8; HEADER_ARENA].into_boxed_slice(),
            headers_used: 0,
            sealed: vec![0u8; sealed_arena].into_boxed_slice(),
            sealed_used: 0,
            jobs: Vec::with_capacity(if Self::OVERHEAD == 0 { 0 } else { MAX_SEGMENTS }),
            jobs_dest: None,
            queue: SendQueue::with_capacity(
                READ_SLOTS * PARTS_PER_READ,
                READ_SLOTS * 16,
                cfg.offloads,
            ),
            iovs: IovScratch::with_capacity(READ_SLOTS * PARTS_PER_READ),
            icmp_budget: IcmpBudget::new(Instant::now()),
            local: LocalCounts::default(),
        }
    }

    /// Whether the buffers may not hold another read's datagrams.
    fn full(&self) -> bool {
        self.reads_used == READ_SLOTS
            || HEADER_ARENA - self.headers_used < MAX_PACKET_HEADERS
            || (Self::OVERHEAD != 0
                && self.sealed.len() - self.sealed_used < sealed_per_read(Self::OVERHEAD))
    }

    /// Reads what the TUN has (up to a few batches) and sends it.
    pub(super) fn round(&mut self) -> Round {
        let mut got = 0;
        for _ in 0..TUN_READS_PER_ROUND {
            if self.full() {
                self.send_all();
            }
            let slot = self.reads_used * READ_SLOT;
            let n = match (&self.tun).read(&mut self.reads[slot..slot + READ_SLOT]) {
                // The other end is gone (a TUN queue never reads empty; a stand-in may).
                Ok(0) => {
                    self.local.flush(&self.stats);
                    tracing::warn!("TUN queue closed: data-path thread ends");
                    return Round::Gone;
                }
                Ok(n) => n,
                Err(e) if sys::would_block(&e) => break,
                Err(e) => {
                    self.local.io_errors += 1;
                    if sys::queue_gone(&e) {
                        self.local.flush(&self.stats);
                        tracing::warn!(error = %e, "TUN queue closed: data-path thread ends");
                        return Round::Gone;
                    }
                    tracing::debug!(error = %e, "reading the TUN device");
                    break;
                }
            };
            got += 1;
            self.local.tun_reads += 1;
            if self.handle(slot, n) {
                self.reads_used += 1;
            }
            self.seal_jobs();
        }
        self.send_all();
        if got > 0 {
            Round::Busy(got)
        } else {
            Round::Idle
        }
    }

    /// Timers of the transform.
    pub(super) fn housekeeping(&mut self) {
        self.outbound.housekeeping(&mut Control::new(&self.sock));
    }

    /// One TUN read at `slot`: checks, the transform's routing, segmentation, queued for
    /// sending. Returns whether the slot is now in use by queued messages.
    fn handle(&mut self, slot: usize, n: usize) -> bool {
        if n < VNET_HDR_LEN {
            self.local.count_drop(DropReason::Truncated, 1);
            return false;
        }
        let Some(hdr) = VnetHdr::parse(&self.reads[slot..slot + n]) else {
            return false;
        };
        let pkt_off = slot + VNET_HDR_LEN;
        let pkt = &mut self.reads[pkt_off..slot + n];
        if pkt.first().is_some_and(|b| b >> 4 == 6) {
            return self.handle_v6(pkt_off, slot + n, &hdr);
        }
        let ip = match packet::parse_ipv4(pkt, false) {
            Ok(ip) => ip,
            Err(why) => {
                self.local.count_drop(why, 1);
                return false;
            }
        };
        let dest = match self.outbound.route(pkt, &ip, &mut Control::new(&self.sock)) {
            Ok(d) => d,
            Err(why) => {
                self.refuse(pkt_off, slot + n, why);
                return false;
            }
        };
        match hdr.gso_type & !GSO_ECN {
            GSO_NONE => {
                if hdr.flags & VNET_F_NEEDS_CSUM != 0
                    && let Err(why) = packet::complete_checksum(pkt, &hdr)
                {
                    self.local.count_drop(why, 1);
                    return false;
                }
                if pkt.len() > self.cfg.mtu {
                    self.local.count_drop(DropReason::Oversize, 1);
                    return false;
                }
                let len = pkt.len();
                self.queue(&dest, &[Piece::Read { off: pkt_off, len }]);
                self.local.tx_packets += 1;
                self.local.tx_bytes += len as u64;
                true
            }
            GSO_TCPV4 => {
                let headers = &mut self.headers[self.headers_used..];
                let plan = packet::segment_headers(pkt, hdr.gso_size as usize, headers);
                self.queue_segments(&dest, pkt_off, plan)
            }
            _ => {
                self.local.count_drop(DropReason::Malformed, 1);
                false
            }
        }
    }

    /// Counts a refused packet (`reads[start..end]`) and, for a destination nobody holds,
    /// writes an ICMP or ICMPv6 error back into the TUN (rate-limited).
    fn refuse(&mut self, start: usize, end: usize, why: Refusal) {
        let reason = match why {
            Refusal::Drop(why) => why,
            Refusal::Unreachable { .. } | Refusal::Unreachable6 { .. } => DropReason::NoRoute,
        };
        self.local.count_drop(reason, 1);
        if reason != DropReason::NoRoute || !self.icmp_budget.take(Instant::now()) {
            return;
        }
        let pkt = &self.reads[start..end];
        // IPv4 quotes the header and 8 bytes (RFC 792); IPv6 as much as fits (RFC 4443).
        let mut icmp = [0u8; 512];
        let len = match why {
            Refusal::Unreachable { from } => {
                packet::icmp_net_unreachable(pkt, from, &mut icmp[..128])
            }
            Refusal::Unreachable6 { from } => packet::icmp6_no_route(pkt, from, &mut icmp),
            Refusal::Drop(_) => None,
        };
        if let Some(len) = len
            && sys::write_packet(&self.tun, &PLAIN, &[&icmp[..len]]).is_ok()
        {
            self.local.icmp_unreachable += 1;
        }
    }

    /// Queues the segments of the super-packet at `reads[pkt_off..]` that `plan` describes
    /// (their headers just written to the header arena).
    fn queue_segments(
        &mut self,
        dest: &Destination<O::Peer>,
        pkt_off: usize,
        plan: Result<packet::SegmentPlan, DropReason>,
    ) -> bool {
        let plan = match plan {
            Ok(p) => p,
            Err(why) => {
                self.local.count_drop(why, 1);
                return false;
            }
        };
        if plan.stride() > self.cfg.mtu {
            self.local
                .count_drop(DropReason::Oversize, plan.count as u64);
            return false;
        }
        let hl = plan.header_len;
        for j in 0..plan.count {
            let r = plan.payload(j);
            let header = Piece::Header {
                off: self.headers_used + j * hl,
                len: hl,
            };
            let payload = Piece::Read {
                off: pkt_off + r.start,
                len: r.len(),
            };
            self.queue(dest, &[header, payload]);
        }
        self.headers_used += plan.count * hl;
        self.local.tx_packets += plan.count as u64;
        self.local.tx_bytes += plan.total_len() as u64;
        true
    }

    /// One IPv6 read (`reads[start..end]`): a plain packet or a TCP/IPv6 super-packet; the
    /// transform routes it or refuses it (no ICMPv6 errors).
    fn handle_v6(&mut self, start: usize, end: usize, hdr: &VnetHdr) -> bool {
        let pkt = &mut self.reads[start..end];
        let ip = match packet::parse_ipv6(pkt) {
            Ok(ip) => ip,
            Err(why) => {
                self.local.count_drop(why, 1);
                return false;
            }
        };
        let dest = match self
            .outbound
            .route_v6(pkt, &ip, &mut Control::new(&self.sock))
        {
            Ok(d) => d,
            Err(why) => {
                self.refuse(start, end, why);
                return false;
            }
        };
        match hdr.gso_type & !GSO_ECN {
            GSO_NONE => {}
            GSO_TCPV6 => {
                let headers = &mut self.headers[self.headers_used..];
                let plan = packet::segment_headers6(pkt, hdr.gso_size as usize, headers);
                return self.queue_segments(&dest, start, plan);
            }
            _ => {
                self.local.count_drop(DropReason::Malformed, 1);
                return false;
            }
        }
        if hdr.flags & VNET_F_NEEDS_CSUM != 0
            && let Err(why) = packet::complete_checksum(pkt, hdr)
        {
            self.local.count_drop(why, 1);
            return false;
        }
        let len = pkt.len();
        if len > self.cfg.mtu {
            self.local.count_drop(DropReason::Oversize, 1);
            return false;
        }
        self.queue(&dest, &[Piece::Read { off: start, len }]);
        self.local.tx_packets += 1;
        self.local.tx_bytes += len as u64;
        true
    }

    /// Queues one datagram, gathered from `pieces`: as it is, or sealed by the transform
    /// into the sealed arena when it adds bytes (decided at compile time).
    fn queue(&mut self, dest: &Destination<O::Peer>, pieces: &[Piece]) {
        if Self::OVERHEAD == 0 {
            self.queue
                .push(dest.to, dest.peer, pieces.iter().map(|&p| Part::from(p)));
            return;
        }
        let inner_len: usize = pieces
            .iter()
            .map(|p| match *p {
                Piece::Read { len, .. } | Piece::Header { len, .. } => len,
            })
            .sum();
        let off = self.sealed_used;
        let room = Self::OVERHEAD + inner_len;
        // `full()` keeps room for a whole read's datagrams before every read.
        let Some(datagram) = self.sealed.get_mut(off..off + room) else {
            self.local.count_drop(DropReason::Oversize, 1);
            return;
        };
        let mut at = O::HEADER_LEN;
        for p in pieces {
            let from = match *p {
                Piece::Read { off, len } => &self.reads[off..off + len],
                Piece::Header { off, len } => &self.headers[off..off + len],
            };
            datagram[at..at + from.len()].copy_from_slice(from);
            at += from.len();
        }
        self.jobs_dest = Some(*dest);
        self.jobs.push(SealJob {
            off,
            inner_len,
            room,
            sealed: Err(DropReason::NoSession),
        });
        self.sealed_used += room;
    }

    /// Seals the datagrams the last read queued (one peer's, in one batch the transform may
    /// spread over threads) and queues them for sending in order.
    fn seal_jobs(&mut self) {
        if Self::OVERHEAD == 0 || self.jobs.is_empty() {
            return;
        }
        let Some(dest) = self.jobs_dest.take() else {
            self.jobs.clear();
            return;
        };
        let mut ctl = Control::new(&self.sock);
        let arena = &mut self.sealed[..self.sealed_used];
        self.outbound
            .seal_batch(dest.peer, arena, &mut self.jobs, &mut ctl);
        for j in self.jobs.drain(..) {
            match j.sealed {
                Ok(len) if len <= j.room => {
                    self.queue
                        .push(dest.to, dest.peer, [Part::Sealed { off: j.off, len }]);
                }
                Ok(_) => self.local.count_drop(DropReason::Oversize, 1),
                Err(why) => self.local.count_drop(why, 1),
            }
        }
    }

    /// Sends every queued message with sendmmsg (gathering headers and payloads), waiting
    /// while the socket buffer is full. What the kernel took of sealed datagrams is reported
    /// to the transform (`Outbound::sent`); what it refused is not.
    fn send_all(&mut self) {
        let msgs = self.queue.msgs();
        let mut start = 0;
        let mut gso_failed = false;
        while start < msgs.len() {
            let count = (msgs.len() - start).min(BATCH);
            let mut batch = SendBatch::new(&mut self.iovs);
            for m in &msgs[start..start + count] {
                let pieces = self
                    .queue
                    .parts(m)
                    .iter()
                    .map(|p| piece(&self.reads, &self.headers, &self.sealed, *p));
                batch.push(m.dst, m.segment(), pieces);
            }
            match self.sock.send_batch(&batch) {
                Ok(sent) => {
                    self.local.udp_send_calls += 1;
                    if Self::OVERHEAD != 0 {
                        for m in &msgs[start..start + sent.min(count)] {
                            self.outbound.sent(m.peer, m.bytes);
                        }
                    }
                    start += sent.max(1);
                }
                Err(e) if sys::would_block(&e) => {
                    sleep_until_writable(self.sock.as_fd());
                    if self.stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Err(e) if msgs[start].count > 1 && sys::gso_refused(&e) => {
                    // The kernel or the route cannot take UDP GSO (an IPsec'd route, a
                    // device with a smaller MTU on the way to this peer, no checksum
                    // offload): send this train's datagrams one by one, and no more trains.
                    if self.queue.trains() {
                        tracing::warn!(error = %e, peer = %msgs[start].dst, "a UDP GSO send failed: sending one datagram per message from now on");
                    }
                    let m = &msgs[start];
                    for d in self.queue.datagrams(m) {
                        let mut one = SendBatch::new(&mut self.iovs);
                        one.push(
                            m.dst,
                            0,
                            d.iter()
                                .map(|p| piece(&self.reads, &self.headers, &self.sealed, *p)),
                        );
                        match self.sock.send_batch(&one) {
                            Ok(n) if n > 0 && Self::OVERHEAD != 0 => {
                                let len = d.iter().map(Part::len).sum();
                                self.outbound.sent(m.peer, len);
                            }
                            Ok(_) => {}
                            Err(_) => self.local.io_errors += 1,
                        }
                    }
                    gso_failed = true;
                    start += 1;
                }
                Err(e) => {
                    // This message cannot go (e.g. no route to that peer): skip it.
                    tracing::debug!(error = %e, peer = %msgs[start].dst, "sending to a peer");
                    self.local.io_errors += 1;
                    start += 1;
                }
            }
        }
        if gso_failed {
            self.queue.stop_trains();
        }
        self.queue.clear();
        self.reads_used = 0;
        self.headers_used = 0;
        self.sealed_used = 0;
    }
}

//! UDP → TUN: the socket has UDP_GRO, so one recvmmsg slot receives many datagrams; the
//! transform opens each one in place, and the TCP segments among them are coalesced into
//! few gather writes to the TUN.

use std::fs::File;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::EngineConfig;
use super::packet::{Coalescer, DropReason, Ipv4Info, PLAIN, TunSink, VNET_HDR_LEN};
use super::stats::{LocalCounts, Stats};
use super::sys::{self, BATCH, RecvMeta, UdpSocket};
use super::transform::{Control, Inbound, Opened, Sender};
use super::worker::Round;

/// Bytes per receive slot: a whole GRO receive (64 KiB of datagrams).
const RECV_SLOT: usize = 65536;

/// What an opened packet is, for writing it to the TUN.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// IPv4 (its parsed header), may be coalesced.
    V4(Ipv4Info),
    /// IPv6 (its fixed header checked by the transform), may be coalesced.
    V6,
    /// Bigger than the TUN MTU: written on its own, never in a super-packet (whose segments
    /// must fit the MTU). The kernel takes it (a TUN write has no MTU check) and, forwarding
    /// it, answers with ICMP fragmentation needed / packet too big or fragments it, as it
    /// does behind kernel VXLAN or WireGuard.
    OverMtu,
}

/// How often a data path repeats its warning that peers send packets over its MTU.
pub(super) const MTU_WARNING_EVERY: Duration = Duration::from_secs(600);

/// A warning that is due at most once every `every`: the first time at once.
pub(super) struct RateLimitedWarning {
    every: Duration,
    last: Option<Instant>,
}

impl RateLimitedWarning {
    pub(super) fn new(every: Duration) -> RateLimitedWarning {
        RateLimitedWarning { every, last: None }
    }

    /// Whether to warn at `now` (and if so, the next one waits `every` from now).
    pub(super) fn due(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The UDP → TUN half of one worker.
pub(super) struct RxWorker<I: Inbound> {
    tun: File,
    pub(super) sock: Arc<UdpSocket>,
    inbound: I,
    pub(super) stats: Arc<Stats>,
    cfg: EngineConfig,
    bufs: Box<[u8]>,
    /// The opened packets of one batch: (start, end, kind) in `bufs`.
    pending: Vec<(usize, usize, Kind)>,
    /// The datagrams of one receive slot (ranges within it), and what opening each gave.
    datagrams: Vec<Range<usize>>,
    opened: Vec<Result<Opened, DropReason>>,
    coalescer: Coalescer,
    pub(super) local: LocalCounts,
}

/// Writes coalesced packets into the TUN and counts them.
struct TunWriter<'a> {
    tun: &'a File,
    local: &'a mut LocalCounts,
    gone: bool,
}

impl TunSink for TunWriter<'_> {
    fn write(&mut self, hdr: &[u8; VNET_HDR_LEN], parts: &[&[u8]]) {
        match sys::write_packet(self.tun, hdr, parts) {
            Ok(()) => self.local.tun_writes += 1,
            Err(e) => {
                self.local.io_errors += 1;
                if sys::queue_gone(&e) {
                    self.gone = true;
                }
                tracing::debug!(error = %e, "writing to the TUN device");
            }
        }
    }
}

impl<I: Inbound> RxWorker<I> {
    pub(super) fn new(
        tun: File,
        sock: Arc<UdpSocket>,
        inbound: I,
        stats: Arc<Stats>,
        cfg: EngineConfig,
    ) -> RxWorker<I> {
        RxWorker {
            tun,
            sock,
            inbound,
            stats,
            cfg,
            bufs: vec![0u8; BATCH * RECV_SLOT].into_boxed_slice(),
            pending: Vec::with_capacity(BATCH * 64),
            datagrams: Vec::with_capacity(64),
            opened: Vec::with_capacity(64),
            coalescer: Coalescer::new(),
            local: LocalCounts::default(),
        }
    }

    /// One recvmmsg and what it brought, opened and coalesced into the TUN.
    pub(super) fn round(&mut self) -> Round {
        let mut meta = [RecvMeta::default(); BATCH];
        let n = match self.sock.recv_batch(&mut self.bufs, &mut meta) {
            Ok(n) => n,
            Err(e) => {
                if !sys::would_block(&e) {
                    self.local.io_errors += 1;
                    tracing::debug!(error = %e, "receiving from the UDP socket");
                }
                return Round::Idle;
            }
        };
        self.local.udp_recv_calls += 1;
        // Open every datagram in place, then coalesce the packets they carried.
        self.pending.clear();
        let mut ctl = Control::new(&self.sock);
        // A peer whose packets were over our MTU in this receive, and a packet's size.
        let mut too_big: Option<(SocketAddr, usize)> = None;
        let mtu = self.cfg.mtu;
        for (i, m) in meta[..n].iter().enumerate() {
            let len = m.len;
            let seg = m.gro_segment.unwrap_or(len).max(1);
            if len == 0 {
                self.local.count_drop(DropReason::Truncated, 1);
                continue;
            }
            let mut sender = match self.inbound.sender(m.from) {
                Ok(s) => s,
                Err(why) => {
                    self.local.count_drop(why, len.div_ceil(seg) as u64);
                    continue;
                }
            };
            let base = i * RECV_SLOT;
            self.datagrams.clear();
            let mut at = 0;
            while at < len {
                let next = (at + seg).min(len);
                self.datagrams.push(at..next);
                at = next;
            }
            self.opened.clear();
            sender.open_batch(
                &mut self.bufs[base..base + len],
                &self.datagrams,
                &mut self.opened,
                &mut ctl,
            );
            debug_assert_eq!(self.opened.len(), self.datagrams.len(), "one outcome each");
            for (r, outcome) in self.datagrams.iter().zip(self.opened.drain(..)) {
                let at = base + r.start;
                let (inner, kind) = match outcome {
                    Ok(Opened::Packet { inner, ip }) => (inner, Kind::V4(ip)),
                    Ok(Opened::Packet6 { inner }) => (inner, Kind::V6),
                    Ok(Opened::Consumed) => continue,
                    Err(why) => {
                        self.local.count_drop(why, 1);
                        continue;
                    }
                };
                let kind = if inner.len() > mtu {
                    too_big = Some((m.from, inner.len()));
                    self.local.rx_over_mtu_packets += 1;
                    Kind::OverMtu
                } else {
                    kind
                };
                self.local.rx_packets += 1;
                self.local.rx_bytes += inner.len() as u64;
                self.pending.push((at + inner.start, at + inner.end, kind));
            }
        }
        if let Some((from, len)) = too_big {
            self.over_mtu(from, len);
        }
        let mut sink = TunWriter {
            tun: &self.tun,
            local: &mut self.local,
            gone: false,
        };
        if self.cfg.offloads {
            for (start, end, kind) in &self.pending {
                match kind {
                    Kind::V4(ip) => self.coalescer.push(&self.bufs, *start..*end, ip, &mut sink),
                    Kind::V6 => self.coalescer.push6(&self.bufs, *start..*end, &mut sink),
                    Kind::OverMtu => {
                        // After what the coalescer holds, so a flow keeps its order.
                        self.coalescer.flush(&self.bufs, &mut sink);
                        sink.write(&PLAIN, &[&self.bufs[*start..*end]]);
                    }
                }
            }
            self.coalescer.flush(&self.bufs, &mut sink);
        } else {
            for (start, end, _) in &self.pending {
                sink.write(&PLAIN, &[&self.bufs[*start..*end]]);
            }
        }
        if sink.gone {
            tracing::warn!("TUN queue closed: data-path thread ends");
            self.local.flush(&self.stats);
            return Round::Gone;
        }
        Round::Busy(self.pending.len().max(1))
    }

    /// Says that `from` sends packets bigger than our MTU (delivered all the same; one of
    /// `len` bytes), at most once every [`MTU_WARNING_EVERY`] for all workers of the data
    /// path (the nodes' MTUs differ, which only the operator can fix): one clock read and
    /// one uncontended lock per receive that had such.
    #[cold]
    pub(super) fn over_mtu(&mut self, from: SocketAddr, len: usize) {
        let due = self
            .stats
            .mtu_warning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .due(Instant::now());
        if due {
            tracing::warn!(
                data_path = self.cfg.name,
                peer = %from,
                packet_bytes = len,
                mtu = self.cfg.mtu,
                "a peer sends packets bigger than this node's MTU: they are delivered, and the \
                 kernel answers with ICMP fragmentation needed (packet too big) or fragments \
                 them (counted in rx_over_mtu_packets). The nodes' MTUs differ: set the same \
                 Backend.MTU, or the same underlay MTU, on every node (repeated at most every \
                 10 minutes)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtu_warning_is_due_at_once_then_at_most_once_a_period() {
        let t0 = Instant::now();
        let mut w = RateLimitedWarning::new(Duration::from_secs(600));
        assert!(w.due(t0), "the first time at once");
        assert!(!w.due(t0));
        assert!(!w.due(t0 + Duration::from_secs(599)));
        assert!(w.due(t0 + Duration::from_secs(600)), "again after a period");
        assert!(!w.due(t0 + Duration::from_secs(601)));
    }
}

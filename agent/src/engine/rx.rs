//! UDP → TUN: the socket has UDP_GRO, so one recvmmsg slot receives many datagrams; the
//! transform opens each one in place, and the TCP segments among them are coalesced into
//! few gather writes to the TUN.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use super::EngineConfig;
use super::packet::{Coalescer, DropReason, Ipv4Info, PLAIN, TunSink, VNET_HDR_LEN};
use super::stats::{LocalCounts, Stats};
use super::sys::{self, BATCH, RecvMeta, UdpSocket};
use super::transform::{Control, Inbound, Opened, Sender};
use super::worker::Round;

/// Bytes per receive slot: a whole GRO receive (64 KiB of datagrams).
const RECV_SLOT: usize = 65536;

/// The UDP → TUN half of one worker.
pub(super) struct RxWorker<I: Inbound> {
    tun: File,
    pub(super) sock: Arc<UdpSocket>,
    inbound: I,
    pub(super) stats: Arc<Stats>,
    cfg: EngineConfig,
    bufs: Box<[u8]>,
    /// The opened packets of one batch: (start, end, header) in `bufs`; no header for an
    /// IPv6 packet (whose fixed header the transform checked).
    pending: Vec<(usize, usize, Option<Ipv4Info>)>,
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
                match outcome {
                    Ok(Opened::Packet { inner, ip }) => {
                        self.local.rx_packets += 1;
                        self.local.rx_bytes += inner.len() as u64;
                        self.pending
                            .push((at + inner.start, at + inner.end, Some(ip)));
                    }
                    Ok(Opened::Packet6 { inner }) => {
                        self.local.rx_packets += 1;
                        self.local.rx_bytes += inner.len() as u64;
                        self.pending.push((at + inner.start, at + inner.end, None));
                    }
                    Ok(Opened::Consumed) => {}
                    Err(why) => self.local.count_drop(why, 1),
                }
            }
        }
        let mut sink = TunWriter {
            tun: &self.tun,
            local: &mut self.local,
            gone: false,
        };
        if self.cfg.offloads {
            for (start, end, ip) in &self.pending {
                match ip {
                    Some(ip) => self.coalescer.push(&self.bufs, *start..*end, ip, &mut sink),
                    None => self.coalescer.push6(&self.bufs, *start..*end, &mut sink),
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
}

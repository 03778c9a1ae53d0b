//! Counters of the udp data path. Threads count into plain locals and add them to the shared
//! atomics once per batch, so counting costs no shared cache line per packet.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::packet::Drop;

/// Shared counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tun_reads: AtomicU64,
    pub tun_writes: AtomicU64,
    pub udp_send_calls: AtomicU64,
    pub udp_recv_calls: AtomicU64,
    pub icmp_unreachable: AtomicU64,
    pub io_errors: AtomicU64,
    pub drops: [AtomicU64; Drop::ALL.len()],
}

/// One thread's counts since its last flush.
#[derive(Debug, Default)]
pub struct Local {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tun_reads: u64,
    pub tun_writes: u64,
    pub udp_send_calls: u64,
    pub udp_recv_calls: u64,
    pub icmp_unreachable: u64,
    pub io_errors: u64,
    pub drops: [u64; Drop::ALL.len()],
}

impl Local {
    pub fn drop(&mut self, why: Drop, n: u64) {
        self.drops[why.index()] += n;
    }

    /// Adds the counts to `to` and zeroes them.
    pub fn flush(&mut self, to: &Stats) {
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v != 0 {
                a.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        };
        add(&to.tx_packets, &mut self.tx_packets);
        add(&to.tx_bytes, &mut self.tx_bytes);
        add(&to.rx_packets, &mut self.rx_packets);
        add(&to.rx_bytes, &mut self.rx_bytes);
        add(&to.tun_reads, &mut self.tun_reads);
        add(&to.tun_writes, &mut self.tun_writes);
        add(&to.udp_send_calls, &mut self.udp_send_calls);
        add(&to.udp_recv_calls, &mut self.udp_recv_calls);
        add(&to.icmp_unreachable, &mut self.icmp_unreachable);
        add(&to.io_errors, &mut self.io_errors);
        for (a, v) in to.drops.iter().zip(self.drops.iter_mut()) {
            add(a, v);
        }
    }
}

impl Stats {
    /// The drop count for one reason.
    pub fn dropped(&self, why: Drop) -> u64 {
        self.drops[why.index()].load(Ordering::Relaxed)
    }

    /// Appends the OpenMetrics lines for the data path.
    pub fn render(&self, s: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "twilld_udp_tx_packets",
                "Inner packets sent to peers.",
                &self.tx_packets,
            ),
            (
                "twilld_udp_tx_bytes",
                "Inner bytes sent to peers.",
                &self.tx_bytes,
            ),
            (
                "twilld_udp_rx_packets",
                "Inner packets received from peers and delivered.",
                &self.rx_packets,
            ),
            (
                "twilld_udp_rx_bytes",
                "Inner bytes received from peers and delivered.",
                &self.rx_bytes,
            ),
            (
                "twilld_udp_tun_reads",
                "Reads from the TUN device (one may carry a 64 KiB super-packet).",
                &self.tun_reads,
            ),
            (
                "twilld_udp_tun_writes",
                "Writes to the TUN device (one may carry many coalesced segments).",
                &self.tun_writes,
            ),
            (
                "twilld_udp_send_calls",
                "sendmmsg calls.",
                &self.udp_send_calls,
            ),
            (
                "twilld_udp_recv_calls",
                "recvmmsg calls that returned data.",
                &self.udp_recv_calls,
            ),
            (
                "twilld_udp_icmp_unreachable",
                "ICMP net unreachable written back for destinations without a peer.",
                &self.icmp_unreachable,
            ),
            (
                "twilld_udp_io_errors",
                "Failed reads and writes on the TUN device or the UDP socket.",
                &self.io_errors,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {}",
                v.load(Ordering::Relaxed)
            );
        }
        let name = "twilld_udp_dropped_packets";
        let _ = writeln!(
            s,
            "# HELP {name} Packets the udp data path dropped, by reason.\n# TYPE {name} counter"
        );
        for why in Drop::ALL {
            let _ = writeln!(
                s,
                "{name}_total{{reason=\"{}\"}} {}",
                why.label(),
                self.dropped(why)
            );
        }
    }
}

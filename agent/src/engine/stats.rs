//! Counters of a data path. Threads count into plain locals and add them to the shared
//! atomics once per batch, so counting costs no shared cache line per packet.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::packet::DropReason;
use super::rx::{MTU_WARNING_EVERY, RateLimitedWarning};

/// Renders a backend's own `/metrics` lines.
pub type ExtraLines = Box<dyn Fn(&mut String) + Send + Sync>;

/// Shared counters, read by `/metrics`.
pub struct Stats {
    /// The backend's name in the metric names (`twilld_<backend>_...`).
    backend: &'static str,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Received inner packets bigger than the TUN MTU, delivered all the same (also in
    /// `rx_packets`): the sending node's MTU is larger.
    pub rx_over_mtu_packets: AtomicU64,
    pub tun_reads: AtomicU64,
    pub tun_writes: AtomicU64,
    pub udp_send_calls: AtomicU64,
    pub udp_recv_calls: AtomicU64,
    pub icmp_unreachable: AtomicU64,
    pub io_errors: AtomicU64,
    pub drops: [AtomicU64; DropReason::ALL.len()],
    /// The warning that peers send packets over our MTU, rate-limited for the whole data
    /// path: every worker sees such packets, and one line per period is what the operator
    /// needs (one per worker repeated the same news N times).
    pub(super) mtu_warning: Mutex<RateLimitedWarning>,
    /// More lines a backend renders after the counters (wireguard: its peers).
    pub extra: std::sync::OnceLock<ExtraLines>,
}

/// One thread's counts since its last flush.
#[derive(Debug, Default)]
pub struct LocalCounts {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_over_mtu_packets: u64,
    pub tun_reads: u64,
    pub tun_writes: u64,
    pub udp_send_calls: u64,
    pub udp_recv_calls: u64,
    pub icmp_unreachable: u64,
    pub io_errors: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl LocalCounts {
    /// Counts `n` packets dropped for `why`.
    pub fn count_drop(&mut self, why: DropReason, n: u64) {
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
        add(&to.rx_over_mtu_packets, &mut self.rx_over_mtu_packets);
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
    /// Zeroed counters of the data path of `backend` (as named in the metrics).
    pub fn new(backend: &'static str) -> Stats {
        Stats {
            backend,
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            rx_over_mtu_packets: AtomicU64::new(0),
            tun_reads: AtomicU64::new(0),
            tun_writes: AtomicU64::new(0),
            udp_send_calls: AtomicU64::new(0),
            udp_recv_calls: AtomicU64::new(0),
            icmp_unreachable: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            mtu_warning: Mutex::new(RateLimitedWarning::new(MTU_WARNING_EVERY)),
            extra: std::sync::OnceLock::new(),
        }
    }

    /// The drop count for one reason.
    pub fn dropped(&self, why: DropReason) -> u64 {
        self.drops[why.index()].load(Ordering::Relaxed)
    }

    /// Appends the OpenMetrics lines for the data path.
    pub fn render(&self, s: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "tx_packets",
                "Inner packets sent to peers.",
                &self.tx_packets,
            ),
            ("tx_bytes", "Inner bytes sent to peers.", &self.tx_bytes),
            (
                "rx_packets",
                "Inner packets received from peers and delivered.",
                &self.rx_packets,
            ),
            (
                "rx_bytes",
                "Inner bytes received from peers and delivered.",
                &self.rx_bytes,
            ),
            (
                "rx_over_mtu_packets",
                "Inner packets received from peers bigger than the TUN MTU, delivered all the \
                 same (the kernel answers with ICMP fragmentation needed or fragments them): the \
                 sending node's MTU is larger.",
                &self.rx_over_mtu_packets,
            ),
            (
                "tun_reads",
                "Reads from the TUN device (one may carry a 64 KiB super-packet).",
                &self.tun_reads,
            ),
            (
                "tun_writes",
                "Writes to the TUN device (one may carry many coalesced segments).",
                &self.tun_writes,
            ),
            ("send_calls", "sendmmsg calls.", &self.udp_send_calls),
            (
                "recv_calls",
                "recvmmsg calls that returned data.",
                &self.udp_recv_calls,
            ),
            (
                "icmp_unreachable",
                "ICMP net unreachable written back for destinations without a peer.",
                &self.icmp_unreachable,
            ),
            (
                "io_errors",
                "Failed reads and writes on the TUN device or the UDP socket.",
                &self.io_errors,
            ),
        ];
        let backend = self.backend;
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP twilld_{backend}_{name} {help}\n# TYPE twilld_{backend}_{name} counter"
            );
            if name.ends_with("_bytes") {
                let _ = writeln!(s, "# UNIT twilld_{backend}_{name} bytes");
            }
            let _ = writeln!(
                s,
                "twilld_{backend}_{name}_total {}",
                v.load(Ordering::Relaxed)
            );
        }
        let name = format!("twilld_{backend}_dropped_packets");
        let _ = writeln!(
            s,
            "# HELP {name} Packets the {backend} data path dropped, by reason.\n# TYPE {name} counter"
        );
        for why in DropReason::ALL {
            let _ = writeln!(
                s,
                "{name}_total{{reason=\"{}\"}} {}",
                why.label(),
                self.dropped(why)
            );
        }
        if let Some(extra) = self.extra.get() {
            extra(s);
        }
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_under_the_backends_name() {
        let stats = Stats::new("udp");
        let mut local = LocalCounts {
            tx_packets: 3,
            udp_send_calls: 1,
            ..LocalCounts::default()
        };
        local.count_drop(DropReason::NoRoute, 2);
        local.flush(&stats);
        assert_eq!(local.tx_packets, 0, "flushed counts start again at zero");
        let mut s = String::new();
        stats.render(&mut s);
        for line in [
            "# HELP twilld_udp_tx_packets Inner packets sent to peers.",
            "# TYPE twilld_udp_tx_packets counter",
            "twilld_udp_tx_packets_total 3",
            "twilld_udp_send_calls_total 1",
            "# HELP twilld_udp_dropped_packets Packets the udp data path dropped, by reason.",
            "twilld_udp_dropped_packets_total{reason=\"no_route\"} 2",
            "twilld_udp_dropped_packets_total{reason=\"unknown_peer\"} 0",
        ] {
            assert!(s.lines().any(|l| l == line), "{line} missing in:\n{s}");
        }
    }
}

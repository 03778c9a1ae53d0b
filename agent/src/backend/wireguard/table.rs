//! The wireguard data path's view of the peers: one immutable snapshot per change, published
//! by the control plane and picked up by the data-path threads with one atomic load per batch
//! (the udp backend's scheme). Each peer carries its WireGuard state machine (boringtun's
//! `Tunn`: handshake, sessions, timers, replay windows) behind a mutex that only its own
//! packets take; a peer that leaves the table takes its sessions with it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::lease::Subnets;
use boringtun::noise::Tunn;

/// Drops counted against one peer (datagrams that named it but were refused).
#[derive(Debug, Default)]
pub struct PeerDrops {
    /// Failed authentication (bad tag) on one of its sessions.
    pub unauthenticated: AtomicU64,
    /// Counters seen before or too old.
    pub replays: AtomicU64,
    /// Decrypted, but the inner source is outside its AllowedIPs.
    pub spoofed: AtomicU64,
}

impl PeerDrops {
    pub fn total(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
            + self.replays.load(Ordering::Relaxed)
            + self.spoofed.load(Ordering::Relaxed)
    }
}

/// Bytes of WireGuard messages to and from one peer, as kernel WireGuard and wireguard-go
/// count `wg show`'s transfer: whole messages (header, ciphertext and tag; handshakes and
/// keepalives too, cookie replies not), without the UDP and IP headers around them.
/// boringtun's own counters hold inner bytes only, which differ from a kernel node's figures
/// by the 32 bytes and padding of every message (twice the bytes of a bare ACK).
#[derive(Debug, Default)]
pub struct Transfer {
    tx: AtomicU64,
    rx: AtomicU64,
}

impl Transfer {
    pub fn sent(&self, bytes: usize) {
        self.tx.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.rx.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// (sent, received).
    pub fn get(&self) -> (u64, u64) {
        (
            self.tx.load(Ordering::Relaxed),
            self.rx.load(Ordering::Relaxed),
        )
    }
}

/// One peer: a node holding a current wireguard lease.
pub struct Peer {
    /// Our index for its sessions (boringtun puts it in the upper 24 bits of the receiver
    /// index of every message addressed to us).
    pub index: u32,
    pub public_key: [u8; 32],
    /// What its lease names as its endpoint: its PublicIP (or PublicIPv6) and Port.
    pub leased_endpoint: SocketAddr,
    /// Where its datagrams go now: the leased endpoint until an authenticated message comes
    /// from elsewhere — another port of one of its own addresses, or an address no lease
    /// names (a NAT rewrote them; see `roam`) — as WireGuard roams. Read once per send
    /// batch (and per authenticated receive), written only when it moves.
    current_endpoint: RwLock<SocketAddr>,
    /// Times the endpoint moved (for /metrics).
    pub roams: AtomicU64,
    /// Its AllowedIPs: the subnets it leases that this device carries.
    pub allowed: Subnets,
    pub keepalive: u16,
    pub psk: bool,
    /// Another address its datagrams may come from: in a one-device mode its other public
    /// address (the two ends of an `auto` pair may pick different families, and each
    /// answers from the family it picked).
    pub alt_source: Option<IpAddr>,
    /// Shared with the peer that replaces this one when its lease changes (see
    /// [`Peer::successor`]): sessions, counters and the handshake replay guard live on.
    tunn: Arc<Mutex<Tunn>>,
    pub drops: Arc<PeerDrops>,
    /// Shared with its successor, as `drops`.
    pub transfer: Arc<Transfer>,
    /// When its last handshake completed, in nanoseconds since the epoch (0: none yet): kept
    /// after boringtun drops an idle peer's expired session.
    last_handshake: AtomicU64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("index", &self.index)
            .field("endpoint", &self.endpoint())
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Peer {
    pub fn new(
        index: u32,
        public_key: [u8; 32],
        endpoint: SocketAddr,
        allowed: Subnets,
        keepalive: u16,
        psk: bool,
        tunn: Tunn,
    ) -> Peer {
        Peer {
            index,
            public_key,
            leased_endpoint: endpoint,
            current_endpoint: RwLock::new(endpoint),
            roams: AtomicU64::new(0),
            allowed,
            keepalive,
            psk,
            alt_source: None,
            tunn: Arc::new(Mutex::new(tunn)),
            drops: Arc::default(),
            transfer: Arc::default(),
            last_handshake: AtomicU64::new(0),
        }
    }

    /// This peer after its lease changed (another PublicIP or Port, other subnets, another
    /// alternative address): the same key, index and boringtun state, so its sessions keep
    /// working and a handshake initiation captured earlier is still refused as old (a fresh
    /// `Tunn` would take it once and roam the endpoint to wherever it came from). Kernel
    /// WireGuard updates a peer in place the same way.
    pub fn successor(&self, endpoint: SocketAddr, allowed: Subnets, alt: Option<IpAddr>) -> Peer {
        Peer {
            index: self.index,
            public_key: self.public_key,
            leased_endpoint: endpoint,
            current_endpoint: RwLock::new(endpoint),
            roams: AtomicU64::new(self.roams.load(Ordering::Relaxed)),
            allowed,
            keepalive: self.keepalive,
            psk: self.psk,
            alt_source: None,
            tunn: self.tunn.clone(),
            drops: self.drops.clone(),
            transfer: self.transfer.clone(),
            last_handshake: AtomicU64::new(self.last_handshake.load(Ordering::Relaxed)),
        }
        .with_alt_source(alt)
    }

    /// The wall-clock time (since the epoch) of its last completed handshake, from `since`
    /// (boringtun's "time since the handshake", `None` once its session expired) at `now`:
    /// an idle peer keeps reporting its last one, as wireguard-go does, instead of "never".
    pub fn last_handshake(
        &self,
        since: Option<std::time::Duration>,
        now: std::time::Duration,
    ) -> Option<std::time::Duration> {
        if let Some(d) = since {
            let at = now.saturating_sub(d);
            self.last_handshake
                .store(at.as_nanos() as u64, Ordering::Relaxed);
            return Some(at);
        }
        match self.last_handshake.load(Ordering::Relaxed) {
            0 => None,
            n => Some(std::time::Duration::from_nanos(n)),
        }
    }

    /// The peer, also taking datagrams from `ip`.
    pub fn with_alt_source(mut self, ip: Option<IpAddr>) -> Peer {
        self.alt_source = ip.map(|ip| ip.to_canonical());
        self
    }

    /// Its WireGuard state. A thread that panicked while holding it left nothing
    /// half-written that matters more than stopping the data path would.
    pub fn tunn(&self) -> MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `other` describes the same peer, so its sessions can be kept.
    pub fn same_as(&self, key: &[u8; 32], endpoint: SocketAddr, allowed: Subnets) -> bool {
        &self.public_key == key && self.leased_endpoint == endpoint && self.allowed == allowed
    }

    /// Where its datagrams go now.
    pub fn endpoint(&self) -> SocketAddr {
        *self
            .current_endpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// After an authenticated message from `from`: sends go there from now on — if it is
    /// another port of one of the peer's own addresses, or an address no lease names
    /// (`Origin::Unleased`, as through a NAT that rewrites addresses; the caller lets those
    /// in only when roaming there is allowed). Another node's leased address stays refused:
    /// one node's messages must not move another node's endpoint. Returns the endpoint it
    /// left when it moved.
    pub fn roam(&self, from: SocketAddr, origin: Origin) -> Option<SocketAddr> {
        let from = canonical(from);
        let allowed = match origin {
            Origin::Leased => self.owns(from.ip()),
            Origin::Unleased => true,
        };
        if !allowed || self.endpoint() == from {
            return None;
        }
        let mut cur = self
            .current_endpoint
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *cur, from);
        if old == from {
            // Another thread moved it here first.
            return None;
        }
        self.roams.fetch_add(1, Ordering::Relaxed);
        Some(old)
    }

    /// Whether `ip` is one of the addresses its lease names.
    fn owns(&self, ip: IpAddr) -> bool {
        ip == self.leased_endpoint.ip().to_canonical() || Some(ip) == self.alt_source
    }

    /// Whether `src`, the inner source of a packet it sent, lies in its AllowedIPs.
    pub fn allows(&self, src: IpAddr) -> bool {
        match src {
            IpAddr::V4(a) => self.allowed.v4.is_some_and(|n| n.contains(&a)),
            IpAddr::V6(a) => self.allowed.v6.is_some_and(|n| n.contains(&a)),
        }
    }
}

/// `addr` with a v4-mapped address as IPv4, as endpoints are kept.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Where a datagram came from, as the leases see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An address some node's lease names (its PublicIP or PublicIPv6).
    Leased,
    /// An address no lease names.
    Unleased,
}

/// One immutable snapshot of the peers.
#[derive(Debug, Default)]
pub struct WgTable {
    /// The overlay networks this device carries (IPv4, IPv6 or both).
    pub network: Subnets,
    /// This node's subnets of those families.
    pub local: Subnets,
    pub peers: Vec<Arc<Peer>>,
    /// IPv4 subnet network address → position in `peers`.
    by_subnet: HashMap<u32, usize>,
    /// Distinct IPv4 subnet prefix lengths, longest first.
    prefix_lens: Vec<u8>,
    /// The same for IPv6 subnets.
    by_subnet6: HashMap<u128, usize>,
    prefix_lens6: Vec<u8>,
    by_index: HashMap<u32, usize>,
    by_key: HashMap<[u8; 32], usize>,
    /// Public IPs that hold a lease: datagrams from anywhere else are dropped unopened.
    sources: HashSet<IpAddr>,
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

impl WgTable {
    pub fn new(network: Subnets, local: Subnets, peers: Vec<Arc<Peer>>) -> WgTable {
        let mut t = WgTable {
            network,
            local,
            ..WgTable::default()
        };
        for (i, p) in peers.iter().enumerate() {
            if let Some(s) = p.allowed.v4 {
                t.by_subnet.insert(u32::from(s.network()), i);
                if !t.prefix_lens.contains(&s.prefix_len()) {
                    t.prefix_lens.push(s.prefix_len());
                }
            }
            if let Some(s) = p.allowed.v6 {
                t.by_subnet6.insert(u128::from(s.network()), i);
                if !t.prefix_lens6.contains(&s.prefix_len()) {
                    t.prefix_lens6.push(s.prefix_len());
                }
            }
            t.by_index.insert(p.index, i);
            t.by_key.insert(p.public_key, i);
            t.sources.insert(p.leased_endpoint.ip().to_canonical());
            if let Some(ip) = p.alt_source {
                t.sources.insert(ip);
            }
        }
        t.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        t.prefix_lens6.sort_unstable_by(|a, b| b.cmp(a));
        t.peers = peers;
        t
    }

    /// The position of the peer whose AllowedIPs hold `dst`.
    pub fn peer_for(&self, dst: Ipv4Addr) -> Option<usize> {
        let d = u32::from(dst);
        self.prefix_lens
            .iter()
            .find_map(|&l| self.by_subnet.get(&(d & mask(l))).copied())
            .filter(|&i| self.peers[i].allowed.v4.is_some_and(|s| s.contains(&dst)))
    }

    /// [`WgTable::peer_for`] for IPv6.
    pub fn peer_for6(&self, dst: Ipv6Addr) -> Option<usize> {
        let d = u128::from(dst);
        self.prefix_lens6
            .iter()
            .find_map(|&l| self.by_subnet6.get(&(d & mask6(l))).copied())
            .filter(|&i| self.peers[i].allowed.v6.is_some_and(|s| s.contains(&dst)))
    }

    /// The peer our index `index` belongs to.
    pub fn by_index(&self, index: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&index).map(|&i| &self.peers[i])
    }

    /// The peer with public key `key`.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key).map(|&i| &self.peers[i])
    }

    /// Whether `ip` is a leased peer's public IP (either family; v4-mapped is IPv4).
    pub fn is_source(&self, ip: IpAddr) -> bool {
        self.sources.contains(&ip.to_canonical())
    }

    /// Whether a datagram from `ip` comes from a leased address.
    pub fn origin(&self, ip: IpAddr) -> Origin {
        if self.is_source(ip) {
            Origin::Leased
        } else {
            Origin::Unleased
        }
    }

    pub fn is_local(&self, dst: Ipv4Addr) -> bool {
        self.local.v4.is_some_and(|l| l.contains(&dst))
    }

    pub fn in_network(&self, dst: Ipv4Addr) -> bool {
        self.network.v4.is_some_and(|n| n.contains(&dst))
    }

    pub fn is_local6(&self, dst: Ipv6Addr) -> bool {
        self.local.v6.is_some_and(|l| l.contains(&dst))
    }

    pub fn in_network6(&self, dst: Ipv6Addr) -> bool {
        self.network.v6.is_some_and(|n| n.contains(&dst))
    }
}

/// Where the control plane publishes tables.
#[derive(Debug, Default)]
pub struct TableCell {
    generation: AtomicU64,
    current: Mutex<Arc<WgTable>>,
}

impl TableCell {
    pub fn new() -> Arc<TableCell> {
        Arc::new(TableCell {
            generation: AtomicU64::new(1),
            current: Mutex::new(Arc::new(WgTable::default())),
        })
    }

    /// Replaces the table; readers see it at their next batch.
    pub fn publish(&self, table: WgTable) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *cur = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current table.
    pub fn load(&self) -> Arc<WgTable> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A reader for one data-path thread.
    pub fn reader(self: &Arc<TableCell>) -> TableReader {
        TableReader {
            cell: self.clone(),
            generation: 0,
            table: Arc::new(WgTable::default()),
        }
    }
}

/// A data-path thread's cached table.
pub struct TableReader {
    cell: Arc<TableCell>,
    generation: u64,
    table: Arc<WgTable>,
}

impl TableReader {
    /// The newest table (one atomic load when nothing changed).
    pub fn refresh(&mut self) -> &WgTable {
        let g = self.cell.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.table = self.cell.load();
            self.generation = g;
        }
        &self.table
    }

    /// The table of the last refresh (positions found in it stay valid).
    pub fn current(&self) -> &WgTable {
        &self.table
    }
}

/// Appends the per-peer OpenMetrics lines of every device's table: last handshake, bytes,
/// drops, roams (a node on two devices is two peers, told apart by their subnets).
pub fn render_peers(tables: &[Arc<WgTable>], s: &mut String) {
    use std::fmt::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // (name, type, unit, help): a unit is also the name's last word, as OpenMetrics requires.
    let gauges: [(&str, &str, Option<&str>, &str); 5] = [
        (
            "peer_last_handshake_seconds",
            "gauge",
            Some("seconds"),
            "Unix time of the peer's last completed handshake (0: none yet).",
        ),
        (
            "peer_tx_bytes",
            "counter",
            Some("bytes"),
            "Bytes of WireGuard messages sent to the peer (as wg show's transfer).",
        ),
        (
            "peer_rx_bytes",
            "counter",
            Some("bytes"),
            "Bytes of authenticated WireGuard messages received from the peer (as wg show's transfer).",
        ),
        (
            "peer_dropped_packets",
            "counter",
            None,
            "Datagrams that named the peer but were refused, by reason.",
        ),
        (
            "peer_roams",
            "counter",
            None,
            "Times its endpoint moved to where its authenticated messages came from.",
        ),
    ];
    let stats: Vec<_> = tables
        .iter()
        .flat_map(|t| t.peers.iter())
        .map(|p| (p, p.tunn().stats().0, p.transfer.get()))
        .collect();
    for (name, kind, unit, help) in gauges {
        let full = format!("twilld_wireguard_{name}");
        let _ = writeln!(s, "# HELP {full} {help}\n# TYPE {full} {kind}");
        if let Some(unit) = unit {
            let _ = writeln!(s, "# UNIT {full} {unit}");
        }
        let suffix = if kind == "counter" { "_total" } else { "" };
        for (p, since, (tx, rx)) in &stats {
            let labels = format!(
                "peer=\"{}\",subnet=\"{}\"",
                super::config::format_key(&p.public_key),
                p.allowed
            );
            match name {
                "peer_last_handshake_seconds" => {
                    let at = p.last_handshake(*since, now).map_or(0, |t| t.as_secs());
                    let _ = writeln!(s, "{full}{{{labels}}} {at}");
                }
                "peer_tx_bytes" => {
                    let _ = writeln!(s, "{full}{suffix}{{{labels}}} {tx}");
                }
                "peer_rx_bytes" => {
                    let _ = writeln!(s, "{full}{suffix}{{{labels}}} {rx}");
                }
                "peer_roams" => {
                    let n = p.roams.load(Ordering::Relaxed);
                    let _ = writeln!(s, "{full}{suffix}{{{labels}}} {n}");
                }
                _ => {
                    for (reason, v) in [
                        ("unauthenticated", &p.drops.unauthenticated),
                        ("replay", &p.drops.replays),
                        ("spoofed_source", &p.drops.spoofed),
                    ] {
                        let _ = writeln!(
                            s,
                            "{full}{suffix}{{{labels},reason=\"{reason}\"}} {}",
                            v.load(Ordering::Relaxed)
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use boringtun::x25519::{PublicKey, StaticSecret};

    use super::*;

    fn peer(index: u32, endpoint: &str, v4: Option<&str>, v6: Option<&str>) -> Peer {
        let me = StaticSecret::from([1u8; 32]);
        let other = PublicKey::from(&StaticSecret::from([index as u8 + 1; 32]));
        let tunn = Tunn::new(me, other, None, None, index, None);
        Peer::new(
            index,
            *other.as_bytes(),
            endpoint.parse().unwrap(),
            Subnets {
                v4: v4.map(|s| s.parse().unwrap()),
                v6: v6.map(|s| s.parse().unwrap()),
            },
            0,
            false,
            tunn,
        )
    }

    #[test]
    fn an_idle_peer_keeps_its_last_handshake_after_the_session_expires() {
        use std::time::Duration;
        let p = peer(1, "172.31.0.12:51820", Some("10.5.2.0/24"), None);
        let s = Duration::from_secs;
        assert_eq!(p.last_handshake(None, s(1000)), None, "none yet");
        assert_eq!(p.last_handshake(Some(s(5)), s(1000)), Some(s(995)));
        // Three idle minutes later boringtun has dropped the session: still 995, not "never".
        assert_eq!(p.last_handshake(None, s(1200)), Some(s(995)));
        assert_eq!(p.last_handshake(Some(s(1)), s(1300)), Some(s(1299)));
    }

    #[test]
    fn both_families_route_by_longest_prefix_and_sources_include_alternates() {
        let a = peer(
            1,
            "172.31.0.12:51820",
            Some("10.5.2.0/24"),
            Some("fd00:5:0:2::/64"),
        )
        .with_alt_source(Some("fd31::12".parse().unwrap()));
        let b = peer(2, "[fd31::13]:51821", None, Some("fd00:5:0:3::/64"));
        let c = peer(3, "[::ffff:172.31.0.14]:51820", Some("10.5.128.0/20"), None);
        let t = WgTable::new(
            Subnets {
                v4: Some("10.5.0.0/16".parse().unwrap()),
                v6: Some("fd00:5::/32".parse().unwrap()),
            },
            Subnets::default(),
            vec![Arc::new(a), Arc::new(b), Arc::new(c)],
        );
        assert_eq!(t.peer_for("10.5.2.9".parse().unwrap()), Some(0));
        assert_eq!(t.peer_for("10.5.130.1".parse().unwrap()), Some(2));
        assert_eq!(t.peer_for("10.5.3.1".parse().unwrap()), None);
        assert_eq!(t.peer_for6("fd00:5:0:2::9".parse().unwrap()), Some(0));
        assert_eq!(t.peer_for6("fd00:5:0:3::1".parse().unwrap()), Some(1));
        assert_eq!(t.peer_for6("fd00:5:0:4::1".parse().unwrap()), None);
        for ip in ["172.31.0.12", "fd31::12", "fd31::13", "172.31.0.14"] {
            assert!(t.is_source(ip.parse().unwrap()), "{ip}");
        }
        assert!(!t.is_source("172.31.0.13".parse().unwrap()));
        assert_eq!(
            t.origin("::ffff:172.31.0.12".parse().unwrap()),
            Origin::Leased
        );
        assert_eq!(t.origin("198.51.100.7".parse().unwrap()), Origin::Unleased);
        assert!(t.peers[0].allows("fd00:5:0:2::1".parse().unwrap()));
        assert!(!t.peers[1].allows("10.5.2.1".parse().unwrap()));
    }

    #[test]
    fn a_peer_roams_to_its_own_addresses_and_unleased_ones_never_to_another_nodes() {
        let p = peer(1, "172.31.0.12:51820", Some("10.5.2.0/24"), None)
            .with_alt_source(Some("fd31::12".parse().unwrap()));
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(p.endpoint(), at("172.31.0.12:51820"));
        assert_eq!(
            p.roam(at("172.31.0.12:51820"), Origin::Leased),
            None,
            "where it already is"
        );
        // Another node's address: never.
        assert_eq!(p.roam(at("172.31.0.13:51820"), Origin::Leased), None);
        assert_eq!(p.endpoint(), at("172.31.0.12:51820"));
        // A NAT's port, then its other family's address (a v4-mapped source is the same).
        assert_eq!(
            p.roam(at("[::ffff:172.31.0.12]:40001"), Origin::Leased),
            Some(at("172.31.0.12:51820"))
        );
        assert_eq!(p.endpoint(), at("172.31.0.12:40001"));
        assert_eq!(
            p.roam(at("[fd31::12]:51820"), Origin::Leased),
            Some(at("172.31.0.12:40001"))
        );
        assert_eq!(p.endpoint(), at("[fd31::12]:51820"));
        // An address no lease names (a NAT that rewrites addresses), when the caller lets
        // it in; then back to the lease's own address.
        assert_eq!(
            p.roam(at("198.51.100.7:40002"), Origin::Unleased),
            Some(at("[fd31::12]:51820"))
        );
        assert_eq!(p.endpoint(), at("198.51.100.7:40002"));
        assert_eq!(
            p.roam(at("172.31.0.12:51820"), Origin::Leased),
            Some(at("198.51.100.7:40002"))
        );
        // What the lease says is still what decides whether it is the same peer.
        assert!(p.same_as(&p.public_key, at("172.31.0.12:51820"), p.allowed));
        // Each move is counted for /metrics.
        assert_eq!(p.roams.load(Ordering::Relaxed), 4);
        let table = WgTable::new(Subnets::default(), Subnets::default(), vec![Arc::new(p)]);
        let mut page = String::new();
        render_peers(&[Arc::new(table)], &mut page);
        assert!(
            page.lines().any(|l| {
                l.starts_with("twilld_wireguard_peer_roams_total{peer=") && l.ends_with(" 4")
            }),
            "{page}"
        );
    }
}

//! wireguard: Flannel's wireguard backend on the wire and in etcd — device `flannel-wg` with
//! `<subnet>.0/32` (and in separate mode `flannel-wg-v6` with `<v6 subnet>::/128`), one
//! route per overlay network to its device, peers chosen by AllowedIPs, the key in
//! `/run/flannel/wgkey`, leases with `{"PublicKey","Port"}` in `BackendData` (and
//! `BackendV6Data`) — but in user space on the TUN engine ([`crate::engine`]), so it needs no
//! kernel module and keeps the udp backend's offloads (TSO super-packets segmented, one
//! transport message per segment, UDP GSO out, GRO in, coalesced TUN writes; for inner IPv4
//! and IPv6 alike). The protocol is boringtun's `noise` module.
//!
//! - `config.rs`: the `Backend` fields; `lease_data.rs`: `BackendData`; `key.rs`: the key file.
//! - `plan.rs`: which devices each `Mode` runs and which endpoint a peer gets.
//! - `device.rs`: one device (TUN, engine, timers, UAPI, peers); this file runs one or two.
//! - `table.rs`: the published peer table (each peer's `Tunn`); `transform.rs`: per packet.
//! - `timers.rs`: the thread that runs WireGuard's timers (handshake retries, keepalives).
//! - `uapi.rs`: WireGuard's cross-platform UAPI socket, so `wg show` works.

pub mod aead;
pub mod config;
mod device;
pub mod key;
mod lease_data;
pub mod plan;
pub mod spread;
pub mod table;
mod timers;
pub mod transform;
pub mod uapi;
pub mod unleased;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use twill_netkit::Netlink;

use super::{ApplyErrors, Backend, Peers, UdpOptions, Underlay};
use crate::engine::Stats;
use crate::lease::{LeaseRecord, Subnets};
use crate::netconf::{BackendType, NetworkConfig};
use config::{Mode, OVERHEAD, WireguardConfig};
use device::{PeerSpec, Shared, WgDevice};
use key::NodeKey;
pub use lease_data::WireguardLease;
pub use plan::{DEVICE, DEVICE_V6};
use table::TableCell;

/// Where the key lives unless `WIREGUARD_KEY_FILE` says otherwise (Flannel's).
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// Where UAPI sockets live (wireguard-go's and boringtun's directory, which `wg` reads).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";
/// How long a wireguard worker keeps polling after bulk traffic stops, unless configured
/// otherwise: not at all, as udp. Polling 300 µs moved no more on either machine measured
/// and cost 8–12% more CPU per GB (A/B in docs/benchmarks.md, tenth session).
pub const DEFAULT_BUSY_POLL: std::time::Duration = std::time::Duration::ZERO;
/// Handshakes per second, over all peers of a device, before the cookie mechanism answers
/// them (each is counted twice: once before the initiator is looked up, once by its peer's
/// state).
const HANDSHAKES_PER_SECOND: u64 = 2 * 100;
/// The smallest MTU a link may have and keep IPv6 (RFC 8200).
const IPV6_MIN_MTU: u32 = 1280;

/// Node-local settings of the wireguard backend (flags), besides the network config.
#[derive(Clone, Debug)]
pub struct WireguardOptions {
    /// The private key file.
    pub key_file: PathBuf,
    /// The directory of the UAPI sockets `flannel-wg.sock` (and `flannel-wg-v6.sock`).
    pub socket_dir: PathBuf,
    /// Whether a peer's endpoint may move to an address no lease names (a NAT that
    /// rewrites addresses), as kernel WireGuard's does, behind a cookie and a handshake
    /// budget; otherwise such datagrams are dropped before any crypto.
    pub roam_unleased: bool,
    /// Seals and opens transport data: ring's ChaCha20-Poly1305 or intel-ipsec-mb's.
    pub aead: aead::Aead,
    /// Workers, busy polling, offloads: the TUN engine's flags (shared with udp).
    pub engine: UdpOptions,
    /// `--public-ipv6` was given: the IPv6 address is announced in Mode auto over an IPv4
    /// overlay too, as Flannel announces it only then.
    pub public_ipv6_given: bool,
}

/// The wireguard backend: one device per family (separate mode) or one for both.
pub struct Wireguard {
    underlay: Underlay,
    /// The overlay networks that are on (`EnableIPv4` / `EnableIPv6`).
    network: Subnets,
    cfg: WireguardConfig,
    mtu_override: Option<u32>,
    opts: WireguardOptions,
    key: Option<Arc<NodeKey>>,
    local: Subnets,
    /// One stats block for all devices; its peer lines come from every device's table.
    stats: Arc<Stats>,
    tables: Arc<std::sync::Mutex<Vec<Arc<TableCell>>>>,
    devices: Vec<WgDevice>,
}

impl Wireguard {
    pub fn new(config: &NetworkConfig, underlay: Underlay, opts: WireguardOptions) -> Wireguard {
        let stats = Arc::new(Stats::new("wireguard"));
        let tables: Arc<std::sync::Mutex<Vec<Arc<TableCell>>>> = Arc::default();
        let tables_of = tables.clone();
        let aead = opts.aead.describe();
        let _ = stats.extra.set(Box::new(move |s| {
            aead::render_info(&aead, s);
            let cells = tables_of.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let loaded: Vec<_> = cells.iter().map(|c| c.load()).collect();
            table::render_peers(&loaded, s)
        }));
        Wireguard {
            underlay,
            network: Subnets {
                v4: config.enable_ipv4.then_some(config.network),
                v6: config.ipv6.map(|c| c.network),
            },
            cfg: config.backend.wireguard.clone().unwrap_or(WireguardConfig {
                listen_port: config::DEFAULT_LISTEN_PORT,
                listen_port_v6: config::DEFAULT_LISTEN_PORT_V6,
                psk: None,
                persistent_keepalive: 0,
                mode: Mode::Separate,
            }),
            mtu_override: config.backend.mtu,
            opts,
            key: None,
            local: Subnets::default(),
            stats,
            tables,
            devices: Vec::new(),
        }
    }

    fn workers(&self) -> usize {
        match self.opts.engine.workers {
            0 => (std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                / 2)
            .clamp(1, 4),
            n => n,
        }
    }

    fn shared(&self) -> Shared {
        Shared {
            mtu: self.mtu(),
            workers: self.workers(),
            psk: self.cfg.psk,
            keepalive: self.cfg.persistent_keepalive,
            roam_unleased: self.opts.roam_unleased,
            aead: self.opts.aead,
        }
    }

    /// This node's IPv4 underlay address, if it has one.
    fn local_v4(&self) -> Option<Ipv4Addr> {
        Some(self.underlay.public_ip).filter(|ip| !ip.is_unspecified())
    }

    /// The devices this node runs, checked against its underlay addresses.
    fn plan(&self) -> Result<Vec<plan::DevicePlan>, twill_netkit::Error> {
        let has_v4 = self.local_v4().is_some();
        let has_v6 = self.underlay.public_ipv6.is_some();
        let plans = plan::devices(
            &self.cfg,
            self.network.v4.is_some(),
            self.network.v6.is_some(),
            has_v4,
            has_v6,
        );
        for p in &plans {
            let missing = match p.underlay {
                plan::Underlay::V4 if !has_v4 => Some(("IPv4", "--public-ip")),
                plan::Underlay::V6 if !has_v6 => Some(("IPv6", "--public-ipv6")),
                _ => None,
            };
            if let Some((family, flag)) = missing {
                return Err(twill_netkit::Error::Invalid(format!(
                    "wireguard Mode {} needs an {family} underlay address for {} but {} has none: pass {flag}",
                    self.cfg.mode.as_str(),
                    p.name,
                    self.underlay.link.name
                )));
            }
            // The kernel turns IPv6 off on a smaller device, and adding its address then
            // fails with a bare EINVAL.
            if p.v6 && self.mtu() < IPV6_MIN_MTU {
                let outer = match self.mtu_override {
                    Some(m) => format!("Backend.MTU {m}"),
                    None => format!(
                        "the MTU {} of {}",
                        self.underlay.link.mtu, self.underlay.link.name
                    ),
                };
                return Err(twill_netkit::Error::Invalid(format!(
                    "wireguard device {} carries IPv6 but would get MTU {} ({outer} less {OVERHEAD}), below the 1280 IPv6 needs: an underlay that carries at least {} bytes (Backend.MTU) or no IPv6",
                    p.name,
                    self.mtu(),
                    IPV6_MIN_MTU + OVERHEAD
                )));
            }
        }
        Ok(plans)
    }

    /// The overlay networks its devices carry (each under a fail-closed route).
    pub fn overlay_networks(&self) -> Vec<ipnet::IpNet> {
        self.network.nets().collect()
    }

    /// The peers of each device, from the leases: in separate mode `flannel-wg` gets each
    /// lease's IPv4 subnet at `PublicIP:BackendData.Port` and `flannel-wg-v6` its IPv6
    /// subnet at `[PublicIPv6]:BackendV6Data.Port`; the one device of the other modes gets
    /// both subnets of a node at the endpoint its mode picks.
    fn peer_specs(&self, peers: &Peers, errors: &mut ApplyErrors) -> Vec<Vec<PeerSpec>> {
        let own_key = self.key.as_ref().map(|k| *k.public.as_bytes());
        // With each subnet's revision: of two leases with one key for a family (a node that
        // changed its public IP keeps its key; its old lease lives out its TTL), the newest
        // is the node.
        let v4 = super::by_v4_revised(peers, self.network.v4.unwrap_or_default(), self.local.v4);
        let v6 = super::by_v6_revised(peers, self.network.v6, self.local.v6);
        let v4 = without_overlaps(v4, self.local.v4, errors);
        let v6 = without_overlaps(v6, self.local.v6, errors);
        let wg4 = v4.into_iter().filter_map(|(s, (r, rev))| {
            let wg = r
                .wireguard
                .filter(|_| r.backend == BackendType::Wireguard)?;
            Some((wg, r, Subnets::from(s), rev))
        });
        let wg6 = v6.into_iter().filter_map(|(s, (r, rev))| {
            let wg = r
                .wireguard6
                .filter(|_| r.backend == BackendType::Wireguard)?;
            let subnets = Subnets {
                v4: None,
                v6: Some(s),
            };
            Some((wg, r, subnets, rev))
        });
        let candidates = if self.network.v4.is_some() {
            newest_per_key(wg4.collect(), errors)
        } else {
            Vec::new()
        };
        let candidates6 = newest_per_key(wg6.collect(), errors);
        let mut out = Vec::new();
        for d in &self.devices {
            // Per public key: the subnets it holds that this device carries and its lease.
            let mut merged: std::collections::BTreeMap<[u8; 32], (Subnets, &LeaseRecord)> =
                std::collections::BTreeMap::new();
            let mine = candidates
                .iter()
                .filter(|_| d.plan.v4)
                .chain(candidates6.iter().filter(|_| d.plan.v6));
            for (wg, record, subnets) in mine {
                let at = subnets.to_string();
                if Some(wg.public_key) == own_key {
                    errors.push(format!(
                        "lease {at} carries this node's own wireguard public key: skipped"
                    ));
                    continue;
                }
                // A node's IPv4 and IPv6 subnets merge into one peer; a key that shows up
                // for a family twice belongs to two leases.
                let e = merged
                    .entry(wg.public_key)
                    .or_insert((Subnets::default(), record));
                if (subnets.v4.is_some() && e.0.v4.is_some())
                    || (subnets.v6.is_some() && e.0.v6.is_some())
                {
                    errors.push(format!(
                        "lease {at} reuses another lease's wireguard public key: skipped"
                    ));
                    continue;
                }
                e.0.v4 = e.0.v4.or(subnets.v4);
                e.0.v6 = e.0.v6.or(subnets.v6);
            }
            let mut specs = Vec::with_capacity(merged.len());
            for (public_key, (allowed, record)) in merged {
                match self.endpoint(d.plan.underlay, allowed, record) {
                    Some(endpoint) => specs.push(PeerSpec {
                        public_key,
                        endpoint,
                        allowed,
                        alt_source: self.alt_source(endpoint, record),
                    }),
                    // e.g. Mode ipv6 and a lease without PublicIPv6.
                    None => errors.push(format!(
                        "lease {allowed} has no public address {} can reach in Mode {}: skipped",
                        d.plan.name,
                        self.cfg.mode.as_str()
                    )),
                }
            }
            out.push(specs);
        }
        out
    }

    /// In a one-device mode, the lease's public address of the other family than
    /// `endpoint`'s: `auto` on two nodes may pick different families (a public IPv4 on one
    /// side only), and each answers from the family it picked.
    fn alt_source(&self, endpoint: SocketAddr, record: &LeaseRecord) -> Option<IpAddr> {
        if self.cfg.mode == Mode::Separate {
            return None;
        }
        match endpoint {
            SocketAddr::V4(_) => record.public_ipv6.map(IpAddr::V6),
            SocketAddr::V6(_) => {
                Some(IpAddr::V4(record.public_ip)).filter(|ip| !ip.is_unspecified())
            }
        }
    }

    /// Where a device on `family` reaches the node of `record` (which holds `allowed`).
    fn endpoint(
        &self,
        family: plan::Underlay,
        allowed: Subnets,
        record: &LeaseRecord,
    ) -> Option<SocketAddr> {
        let peer_v4 = Some(record.public_ip).filter(|ip| !ip.is_unspecified());
        let ip = match (self.cfg.mode, family) {
            (Mode::Separate, plan::Underlay::V4) => peer_v4.map(Into::into),
            (Mode::Separate, _) => record.public_ipv6.map(Into::into),
            (mode, _) => plan::endpoint_ip(
                mode,
                peer_v4,
                record.public_ipv6,
                self.local_v4(),
                self.underlay.public_ipv6,
            ),
        }?;
        // The port its device listens on: BackendData's for flannel-wg (a Flannel node in a
        // one-device mode announces a BackendV6Data port it does not listen on), then
        // BackendV6Data's, then our own (a lease from before Flannel announced ports).
        let port = if self.cfg.mode == Mode::Separate && allowed.v4.is_none() {
            record
                .wireguard6
                .and_then(|w| w.port)
                .unwrap_or(self.cfg.listen_port_v6)
        } else {
            record
                .wireguard
                .and_then(|w| w.port)
                .or(record.wireguard6.and_then(|w| w.port))
                .unwrap_or(self.cfg.listen_port)
        };
        Some(SocketAddr::new(ip, port))
    }
}

impl Backend for Wireguard {
    fn kind(&self) -> BackendType {
        BackendType::Wireguard
    }
    fn data_path_stats(&self) -> Option<Arc<Stats>> {
        Some(self.stats.clone())
    }
    /// The device MTU: the outer MTU (configured, else the underlay's) less 80, as Flannel
    /// (80 covers the IPv6 outer header, so one MTU fits both families).
    fn mtu(&self) -> u32 {
        self.mtu_override
            .unwrap_or(self.underlay.link.mtu)
            .saturating_sub(OVERHEAD)
    }
    fn record(&self) -> LeaseRecord {
        let key = |port| {
            self.key.as_ref().map(|k| WireguardLease {
                public_key: *k.public.as_bytes(),
                port: Some(port),
            })
        };
        let v4 = self.network.v4.is_some();
        let v6 = self.network.v6.is_some();
        LeaseRecord {
            wireguard: if v4 { key(self.cfg.listen_port) } else { None },
            wireguard6: if v6 {
                key(plan::v6_data_port(&self.cfg))
            } else {
                None
            },
            // Also where only the endpoints are IPv6: Mode ipv6 over an IPv4 overlay, where
            // peers find our endpoint nowhere else. In Mode auto over an IPv4 overlay only
            // when `--public-ipv6` names it, as Flannel (which sets it only then): an address
            // found on the link would move every tunnel of a dual-stack cloud node to IPv6,
            // where the port may not be open.
            public_ipv6: self.underlay.public_ipv6.filter(|_| {
                v6 || self.cfg.mode == Mode::Ipv6
                    || (self.cfg.mode == Mode::Auto && self.opts.public_ipv6_given)
            }),
            ..LeaseRecord::new(
                if v4 {
                    self.underlay.public_ip
                } else {
                    Ipv4Addr::UNSPECIFIED
                },
                BackendType::Wireguard,
            )
        }
    }
    async fn init(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        let key = key::load_or_create(&self.opts.key_file).map_err(|e| {
            twill_netkit::Error::io(
                "loading the wireguard key from",
                e.path.display().to_string(),
                std::io::Error::other(e.why),
            )
        })?;
        let key = Arc::new(key);
        self.key = Some(key.clone());
        let plans = self.plan()?;
        let (shared, opts) = (self.shared(), self.opts.engine.clone());
        self.devices.clear();
        for p in plans {
            // The link's own addresses: `--public-ip` may name a NAT's outside address.
            let bind = device::bind_address(
                p.underlay,
                p.port,
                self.underlay.bind_ip(),
                self.underlay.bind_ipv6(),
            );
            let mut d = WgDevice::new(p, bind, self.network, key.clone());
            d.start(nl, &shared, &opts, &self.stats).await?;
            d.serve_uapi(&self.opts.socket_dir);
            self.devices.push(d);
        }
        *self.tables.lock().unwrap_or_else(|p| p.into_inner()) =
            self.devices.iter().map(|d| d.table.clone()).collect();
        Ok(())
    }
    async fn set_local_subnet(
        &mut self,
        nl: &Netlink,
        subnet: Subnets,
    ) -> twill_netkit::Result<()> {
        self.local = subnet;
        for d in &mut self.devices {
            d.set_local(nl, subnet).await?;
        }
        Ok(())
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        let mut errors = ApplyErrors::default();
        let specs = self.peer_specs(peers, &mut errors);
        let (shared, opts) = (self.shared(), self.opts.engine.clone());
        for (d, want) in self.devices.iter_mut().zip(specs) {
            d.apply(nl, &want, &shared, &opts, &self.stats, &mut errors)
                .await;
        }
        errors
    }
}

/// `twilld status`'s wireguard part: per peer the last handshake and bytes, from this node's
/// UAPI socket in `socket_dir` (nothing when the node runs no wireguard device).
pub fn print_status(socket_dir: &std::path::Path) {
    for device in [DEVICE, DEVICE_V6] {
        print_device_status(socket_dir, device);
    }
}

fn print_device_status(socket_dir: &std::path::Path, device: &str) {
    let Ok(text) = uapi::query(socket_dir, device) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "wireguard peers of {device} (drops per peer: /metrics twilld_wireguard_peer_dropped_packets_total):"
    );
    println!(
        "  {:<46} {:<22} {:<18} {:>14} {:>14} {:>14}",
        "PUBLIC KEY", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX BYTES", "TX BYTES"
    );
    for p in uapi::parse_get(&text) {
        let handshake = if p.last_handshake == 0 {
            "never".to_string()
        } else {
            format!("{}s ago", now.saturating_sub(p.last_handshake))
        };
        println!(
            "  {:<46} {:<22} {:<18} {:>14} {:>14} {:>14}",
            p.public_key, p.endpoint, p.allowed_ip, handshake, p.rx_bytes, p.tx_bytes
        );
    }
}

/// One family's leased subnets without those that overlap this node's own (`local`) or hold
/// another lease's subnet, each named in `errors`. Such a lease is never a real node's
/// (leases are allocated without overlaps), and as a peer its AllowedIPs would make its key
/// the source of other nodes' pod addresses, or of ours: kernel WireGuard gives an address
/// to one peer only, and the data path takes from a peer every inner source its AllowedIPs
/// hold. Of a lease inside another, the inner one stays (the outer one is skipped).
fn without_overlaps<N, R>(
    leases: std::collections::BTreeMap<N, R>,
    local: Option<N>,
    errors: &mut ApplyErrors,
) -> std::collections::BTreeMap<N, R>
where
    N: Copy + Ord + std::fmt::Display + Into<ipnet::IpNet>,
{
    let overlap =
        |a: ipnet::IpNet, b: ipnet::IpNet| a.contains(&b.network()) || b.contains(&a.network());
    // Subnets nest or are apart: in address order a subnet that holds any other holds the
    // one right after it. One sort, not a comparison of every pair (thousands of nodes).
    let mut sorted: Vec<ipnet::IpNet> = leases.keys().map(|&s| s.into().trunc()).collect();
    sorted.sort_by_key(|n| (n.network(), n.prefix_len()));
    let holds: std::collections::BTreeMap<ipnet::IpNet, ipnet::IpNet> = sorted
        .windows(2)
        .filter(|w| w[0] != w[1] && w[0].contains(&w[1].network()))
        .map(|w| (w[0], w[1]))
        .collect();
    leases
        .into_iter()
        .filter(|(s, _)| {
            let net: ipnet::IpNet = (*s).into();
            if let Some(l) = local.filter(|&l| overlap(net, l.into())) {
                errors.push(format!(
                    "lease {s} overlaps this node's subnet {l}: skipped"
                ));
                return false;
            }
            if let Some(o) = holds.get(&net.trunc()) {
                errors.push(format!(
                    "lease {s} holds another lease's subnet {o}: skipped"
                ));
                return false;
            }
            true
        })
        .collect()
}

/// One family's wireguard leases (with their revisions), one per public key: the newest;
/// each older one is named in `errors`.
fn newest_per_key<'a>(
    leases: Vec<(WireguardLease, &'a LeaseRecord, Subnets, i64)>,
    errors: &mut ApplyErrors,
) -> Vec<(WireguardLease, &'a LeaseRecord, Subnets)> {
    let mut by_key: std::collections::BTreeMap<
        [u8; 32],
        (WireguardLease, &LeaseRecord, Subnets, i64),
    > = std::collections::BTreeMap::new();
    for lease in leases {
        match by_key.entry(lease.0.public_key) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(lease);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let older = if lease.3 > o.get().3 {
                    o.insert(lease).2
                } else {
                    lease.2
                };
                errors.push(format!(
                    "lease {older} reuses a newer lease's wireguard public key: skipped"
                ));
            }
        }
    }
    by_key
        .into_values()
        .map(|(wg, record, subnets, _)| (wg, record, subnets))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Which peers each device gets from the leases, per Mode (no kernel: devices are only
    //! planned, never started).
    use std::net::Ipv6Addr;

    use boringtun::x25519::{PublicKey, StaticSecret};

    use super::*;
    use crate::backend::Peer as LeasePeer;

    fn node_key(seed: u8) -> NodeKey {
        let private = StaticSecret::from([seed; 32]);
        NodeKey {
            public: PublicKey::from(&private),
            private,
        }
    }

    /// A node (h1: 172.31.0.11, fd31::11) with `config`'s devices planned.
    fn backend(config: &str) -> Wireguard {
        let config = NetworkConfig::parse(config).unwrap();
        let underlay = Underlay {
            link: twill_netkit::Link {
                index: 2,
                name: "eth0".into(),
                kind: None,
                mtu: 1500,
                mac: vec![2, 0, 0, 0, 0, 1],
                up: true,
                controller: None,
                vxlan: None,
            },
            public_ip: Ipv4Addr::new(172, 31, 0, 11),
            net: "172.31.0.11/24".parse().unwrap(),
            public_ipv6: Some("fd31::11".parse().unwrap()),
            net6: Some("fd31::11/64".parse().unwrap()),
        };
        let opts = WireguardOptions {
            key_file: "/nonexistent".into(),
            socket_dir: "/nonexistent".into(),
            roam_unleased: true,
            aead: aead::Aead::Ring,
            engine: UdpOptions {
                device: DEVICE.into(),
                workers: 1,
                busy_poll: std::time::Duration::ZERO,
                offloads: true,
                crypto_helper: false,
            },
            public_ipv6_given: false,
        };
        let mut wg = Wireguard::new(&config, underlay, opts);
        let key = Arc::new(node_key(1));
        wg.key = Some(key.clone());
        wg.local = Subnets {
            v4: wg.network.v4.map(|_| "10.61.1.0/24".parse().unwrap()),
            v6: wg.network.v6.map(|_| "fd00:61:0:1::/64".parse().unwrap()),
        };
        for p in wg.plan().unwrap() {
            let bind = device::bind_address(p.underlay, p.port, wg.underlay.public_ip, None);
            wg.devices
                .push(WgDevice::new(p, bind, wg.network, key.clone()));
        }
        wg
    }

    /// Node 2's dual-stack lease as a Flannel node in separate mode writes it (same key in
    /// both data, ListenPortV6 in BackendV6Data); `v6` false: an IPv4-only lease.
    fn peers(v6: bool) -> Peers {
        let key = *PublicKey::from(&StaticSecret::from([2u8; 32])).as_bytes();
        let record = LeaseRecord {
            wireguard: Some(WireguardLease {
                public_key: key,
                port: Some(51820),
            }),
            wireguard6: v6.then_some(WireguardLease {
                public_key: key,
                port: Some(51821),
            }),
            public_ipv6: v6.then(|| "fd31::12".parse::<Ipv6Addr>().unwrap()),
            ..LeaseRecord::new(Ipv4Addr::new(172, 31, 0, 12), BackendType::Wireguard)
        };
        let subnets = Subnets {
            v4: Some("10.61.2.0/24".parse().unwrap()),
            v6: v6.then(|| "fd00:61:0:2::/64".parse().unwrap()),
        };
        let mut p = Peers::new();
        p.insert(
            subnets.key(),
            LeasePeer {
                subnets,
                record,
                mod_revision: 5,
            },
        );
        p
    }

    fn specs(wg: &Wireguard, peers: &Peers) -> (Vec<Vec<(String, String)>>, ApplyErrors) {
        let mut errors = ApplyErrors::default();
        let out = wg
            .peer_specs(peers, &mut errors)
            .into_iter()
            .map(|d| {
                d.into_iter()
                    .map(|s| (s.endpoint.to_string(), s.allowed.to_string()))
                    .collect()
            })
            .collect();
        (out, errors)
    }

    const DUAL: &str = r#""Network":"10.61.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:61::/48""#;

    fn config(extra: &str) -> String {
        format!(r#"{{{DUAL},"Backend":{{"Type":"wireguard"{extra}}}}}"#)
    }

    #[test]
    fn the_links_addresses_are_bound_and_the_public_ones_advertised() {
        let mut wg = backend(&config(""));
        // `--public-ip` / `--public-ipv6` naming a NAT's outside addresses.
        wg.underlay.public_ip = Ipv4Addr::new(203, 0, 113, 7);
        wg.underlay.public_ipv6 = Some("2001:db8::7".parse().unwrap());
        assert_eq!(wg.underlay.bind_ip(), Ipv4Addr::new(172, 31, 0, 11));
        assert_eq!(
            wg.underlay.bind_ipv6(),
            Some("fd31::11".parse::<Ipv6Addr>().unwrap())
        );
        let r = wg.record();
        assert_eq!(r.public_ip, Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(r.public_ipv6, Some("2001:db8::7".parse().unwrap()));
        // A link without an address of a family: the public one is all there is.
        wg.underlay.net = Default::default();
        wg.underlay.net6 = None;
        assert_eq!(wg.underlay.bind_ip(), Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(
            wg.underlay.bind_ipv6(),
            Some("2001:db8::7".parse::<Ipv6Addr>().unwrap())
        );
    }

    #[test]
    fn of_two_leases_with_one_key_the_newest_is_the_peer() {
        // Before: the lease of the lower subnet won, whatever its age. A node whose public
        // IP changed keeps its key and leases anew while the old lease lives out its TTL:
        // about half the time every peer used the dead endpoint.
        let wg = backend(&config(""));
        let mut all = peers(false);
        let old = all.values().next().unwrap().clone();
        let mut moved = old.clone();
        moved.subnets.v4 = Some("10.61.9.0/24".parse().unwrap());
        moved.record.public_ip = Ipv4Addr::new(172, 31, 0, 99);
        moved.mod_revision = 9;
        all.insert(moved.subnets.key(), moved);
        let (out, errors) = specs(&wg, &all);
        assert_eq!(
            out[0],
            [("172.31.0.99:51820".to_string(), "10.61.9.0/24".to_string())]
        );
        assert!(
            format!("{errors:?}").contains("10.61.2.0/24 reuses a newer lease"),
            "{errors:?}"
        );
        // The other way round: the lower subnet is the newer lease.
        let mut all = peers(false);
        let mut stale = old;
        stale.subnets.v4 = Some("10.61.9.0/24".parse().unwrap());
        stale.record.public_ip = Ipv4Addr::new(172, 31, 0, 99);
        stale.mod_revision = 2;
        all.insert(stale.subnets.key(), stale);
        let (out, _) = specs(&wg, &all);
        assert_eq!(
            out[0],
            [("172.31.0.12:51820".to_string(), "10.61.2.0/24".to_string())]
        );
    }

    #[test]
    fn a_lease_over_this_nodes_or_another_leases_subnet_is_no_peer() {
        // Before: a lease for 10.61.0.0/16 (a botched `etcdctl put`, a hostile writer) became
        // a peer whose AllowedIPs held every pod address, this node's own pods and other
        // nodes' included, and the data path took those inner sources from it; kernel
        // WireGuard gives an address to one peer only.
        let wg = backend(&config(""));
        let base = peers(true);
        let node2 = base.values().next().unwrap().clone();
        let lease = |v4: &str, v6: &str, seed: u8| {
            let mut p = node2.clone();
            let key = *PublicKey::from(&StaticSecret::from([seed; 32])).as_bytes();
            p.subnets = Subnets {
                v4: Some(v4.parse().unwrap()),
                v6: Some(v6.parse().unwrap()),
            };
            p.record.wireguard = p.record.wireguard.map(|w| WireguardLease {
                public_key: key,
                ..w
            });
            p.record.wireguard6 = p.record.wireguard6.map(|w| WireguardLease {
                public_key: key,
                ..w
            });
            p.record.public_ip = Ipv4Addr::new(172, 31, 0, seed);
            p.record.public_ipv6 = Some(format!("fd31::{seed}").parse().unwrap());
            p
        };
        for (bad4, bad6, why) in [
            // The whole network: over this node's subnet (and node 2's).
            ("10.61.0.0/16", "fd00:61::/48", "this node's subnet"),
            // Over node 2's subnet alone.
            ("10.61.2.0/23", "fd00:61:0:2::/63", "another lease's subnet"),
            // Inside this node's own subnet (10.61.1.0/24, fd00:61:0:1::/64).
            (
                "10.61.1.128/25",
                "fd00:61:0:1:8000::/65",
                "this node's subnet",
            ),
        ] {
            let mut all = base.clone();
            let evil = lease(bad4, bad6, 9);
            all.insert(evil.subnets.key(), evil);
            let (out, errors) = specs(&wg, &all);
            assert_eq!(
                out,
                [
                    vec![("172.31.0.12:51820".into(), "10.61.2.0/24".into())],
                    vec![("[fd31::12]:51821".into(), "fd00:61:0:2::/64".into())]
                ],
                "{bad4}"
            );
            let text = format!("{errors:?}");
            assert!(
                text.contains(&format!("lease {bad4}"))
                    && text.contains(&format!("lease {bad6}"))
                    && text.contains(why),
                "{bad4}: {text}"
            );
        }
        // Nested three deep: both outer ones skipped, the innermost kept (found in one sort).
        let mut all = base.clone();
        for (v4, v6, seed) in [
            ("10.61.16.0/20", "fd00:61:0:10::/60", 4),
            ("10.61.16.0/22", "fd00:61:0:10::/62", 5),
            ("10.61.18.0/24", "fd00:61:0:12::/64", 6),
        ] {
            let l = lease(v4, v6, seed);
            all.insert(l.subnets.key(), l);
        }
        let (out, errors) = specs(&wg, &all);
        let text = format!("{errors:?}");
        assert!(
            text.contains("lease 10.61.16.0/20") && text.contains("lease 10.61.16.0/22"),
            "{text}"
        );
        assert!(!text.contains("lease 10.61.18.0/24"), "{text}");
        assert_eq!(out[0].len(), 2, "node 2 and the innermost lease");
        // A lease of another size that overlaps nobody (SubnetLen changed) is still a peer.
        let mut all = base.clone();
        let odd = lease("10.61.4.0/23", "fd00:61:0:4::/63", 3);
        all.insert(odd.subnets.key(), odd);
        let (out, errors) = specs(&wg, &all);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out[0].len(), 2);
        assert_eq!(out[1].len(), 2);
    }

    #[test]
    fn separate_mode_gives_each_family_its_device_endpoint_and_port() {
        let wg = backend(&config(""));
        let (out, errors) = specs(&wg, &peers(true));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            out,
            [
                vec![("172.31.0.12:51820".into(), "10.61.2.0/24".into())],
                vec![("[fd31::12]:51821".into(), "fd00:61:0:2::/64".into())]
            ]
        );
        let mut errors = ApplyErrors::default();
        let all = wg.peer_specs(&peers(true), &mut errors);
        assert!(all.iter().flatten().all(|s| s.alt_source.is_none()));
        // The lease: the same key in both, ListenPortV6 for flannel-wg-v6, PublicIPv6.
        let r = wg.record();
        assert_eq!(r.wireguard.unwrap().port, Some(51820));
        assert_eq!(r.wireguard6.unwrap().port, Some(51821));
        assert_eq!(
            r.wireguard.unwrap().public_key,
            r.wireguard6.unwrap().public_key
        );
        assert_eq!(r.public_ipv6, Some("fd31::11".parse().unwrap()));
    }

    #[test]
    fn one_device_modes_merge_a_nodes_subnets_and_use_its_listen_port() {
        for (mode, endpoint) in [
            ("auto", "172.31.0.12:51820"),
            ("ipv4", "172.31.0.12:51820"),
            // A Flannel peer announces 51821 in BackendV6Data but listens on 51820.
            ("ipv6", "[fd31::12]:51820"),
        ] {
            let wg = backend(&config(&format!(r#","Mode":"{mode}""#)));
            let (out, errors) = specs(&wg, &peers(true));
            assert!(errors.is_empty(), "{mode}: {errors:?}");
            assert_eq!(
                out,
                [vec![(
                    endpoint.to_string(),
                    "10.61.2.0/24+fd00:61:0:2::/64".to_string()
                )]],
                "{mode}"
            );
            assert_eq!(wg.record().wireguard6.unwrap().port, Some(51820), "{mode}");
            // Datagrams from its other public address are taken too.
            let mut errors = ApplyErrors::default();
            let alt = wg.peer_specs(&peers(true), &mut errors)[0][0].alt_source;
            let other: IpAddr = if endpoint.starts_with('[') {
                "172.31.0.12".parse().unwrap()
            } else {
                "fd31::12".parse().unwrap()
            };
            assert_eq!(alt, Some(other), "{mode}");
        }
        // An IPv4-only lease: Mode ipv6 cannot reach it and says so.
        let wg = backend(&config(r#","Mode":"ipv6""#));
        let (out, errors) = specs(&wg, &peers(false));
        assert_eq!(out, [Vec::<(String, String)>::new()]);
        assert!(errors.0[0].contains("Mode ipv6"), "{errors:?}");
        let wg = backend(&config(r#","Mode":"auto""#));
        let (out, _) = specs(&wg, &peers(false));
        assert_eq!(
            out,
            [vec![("172.31.0.12:51820".into(), "10.61.2.0/24".into())]]
        );
    }

    #[test]
    fn an_ipv4_overlay_over_ipv6_endpoints_announces_public_ipv6() {
        // Before: PublicIPv6 went into the lease only with EnableIPv6, so in Mode ipv6 (and
        // auto) over an IPv4-only overlay no node could be reached ("no public address
        // flannel-wg can reach in Mode ipv6") although each had the address its device binds.
        for (mode, given) in [("ipv6", false), ("auto", true)] {
            let mut wg = backend(&format!(
                r#"{{"Network":"10.61.0.0/16","Backend":{{"Type":"wireguard","Mode":"{mode}"}}}}"#
            ));
            wg.opts.public_ipv6_given = given;
            let r = wg.record();
            assert_eq!(r.public_ipv6, Some("fd31::11".parse().unwrap()), "{mode}");
            assert!(
                r.wireguard6.is_none(),
                "{mode}: no BackendV6Data without IPv6 subnets"
            );
        }
        // Mode auto with only an address found on the link: not announced, as Flannel (an
        // upgrade must not move a dual-stack node's tunnels to IPv6).
        let wg =
            backend(r#"{"Network":"10.61.0.0/16","Backend":{"Type":"wireguard","Mode":"auto"}}"#);
        assert_eq!(wg.record().public_ipv6, None);
        let wg =
            backend(r#"{"Network":"10.61.0.0/16","Backend":{"Type":"wireguard","Mode":"ipv6"}}"#);
        let mut all = peers(false);
        for p in all.values_mut() {
            p.record.public_ipv6 = Some("fd31::12".parse().unwrap());
        }
        let (out, errors) = specs(&wg, &all);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            out,
            [vec![("[fd31::12]:51820".into(), "10.61.2.0/24".into())]]
        );
        // Separate mode reaches IPv4 subnets over IPv4 only: nothing more to announce.
        let wg = backend(r#"{"Network":"10.61.0.0/16","Backend":{"Type":"wireguard"}}"#);
        assert_eq!(wg.record().public_ipv6, None);
    }

    #[test]
    fn a_mode_without_its_underlay_address_is_an_error_naming_the_flag() {
        for (extra, flag) in [
            (r#","Mode":"ipv6""#, "--public-ipv6"),
            ("", "--public-ipv6"),
        ] {
            let mut wg = backend(&config(extra));
            wg.underlay.public_ipv6 = None;
            let e = wg.plan().unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains("eth0"), "{extra}: {e}");
        }
        // auto falls back to the family the node has.
        let mut wg = backend(&config(r#","Mode":"auto""#));
        wg.underlay.public_ipv6 = None;
        assert_eq!(wg.plan().unwrap()[0].underlay, plan::Underlay::V4);
    }

    #[test]
    fn a_device_carrying_ipv6_below_1280_is_refused_naming_the_mtu() {
        // Before: the kernel turns IPv6 off on a device under 1280 bytes, and twilld stopped
        // with a bare "Invalid argument" adding the IPv6 address.
        for (extra, mode_devices) in [("", 2), (r#","Mode":"auto""#, 1)] {
            let mut wg = backend(&config(extra));
            wg.mtu_override = Some(1300);
            let e = wg.plan().unwrap_err().to_string();
            assert!(
                e.contains("Backend.MTU 1300") && e.contains("1360") && e.contains("1280"),
                "{extra}: {e}"
            );
            // From the underlay's MTU: named with its link.
            wg.mtu_override = None;
            wg.underlay.link.mtu = 1340;
            let e = wg.plan().unwrap_err().to_string();
            assert!(e.contains("eth0") && e.contains("1340"), "{extra}: {e}");
            wg.underlay.link.mtu = 1360;
            assert_eq!(wg.plan().unwrap().len(), mode_devices, "{extra}");
        }
        // IPv4 alone gets by with less.
        let mut wg = backend(r#"{"Network":"10.61.0.0/16","Backend":{"Type":"wireguard"}}"#);
        wg.mtu_override = Some(1300);
        assert_eq!(wg.plan().unwrap().len(), 1);
    }

    #[test]
    fn ipv6_only_runs_flannel_wg_v6_and_writes_no_backend_data() {
        let wg = backend(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:61::/48","Backend":{"Type":"wireguard"}}"#,
        );
        assert_eq!(wg.devices.len(), 1);
        assert_eq!(wg.devices[0].plan.name, DEVICE_V6);
        let r = wg.record();
        assert_eq!(r.public_ip, Ipv4Addr::UNSPECIFIED);
        assert!(r.wireguard.is_none());
        assert_eq!(r.wireguard6.unwrap().port, Some(51821));
        let (out, errors) = specs(&wg, &peers(true));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            out,
            [vec![("[fd31::12]:51821".into(), "fd00:61:0:2::/64".into())]]
        );
    }

    #[test]
    fn a_wireguard_nodes_metrics_are_valid_openmetrics() {
        // Before: `# TYPE twilld_wireguard_aead_info gauge`, a family named with the info
        // suffix; now the info family `twilld_wireguard_aead` with the same sample name.
        let wg = backend(&config(""));
        // Node 2 IPv4-only, node 3 dual-stack: in separate mode each device has the peers of
        // its family, so node 3 is a peer on both (told apart by their subnets).
        let peer = |i: u8, endpoint: &str, allowed: Subnets| {
            let other = PublicKey::from(&StaticSecret::from([i; 32]));
            let tunn = boringtun::noise::Tunn::new(
                StaticSecret::from([1; 32]),
                other,
                None,
                None,
                u32::from(i),
                None,
            );
            let p = table::Peer::new(
                u32::from(i),
                *other.as_bytes(),
                endpoint.parse().unwrap(),
                allowed,
                0,
                false,
                tunn,
            );
            p.roams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Arc::new(p)
        };
        let v4 = |s: &str| Subnets {
            v4: Some(s.parse().unwrap()),
            v6: None,
        };
        let v6 = |s: &str| Subnets {
            v4: None,
            v6: Some(s.parse().unwrap()),
        };
        assert_eq!(wg.devices.len(), 2);
        wg.devices[0].table.publish(table::WgTable::new(
            wg.network,
            wg.local,
            vec![
                peer(2, "172.31.0.12:51820", v4("10.61.2.0/24")),
                peer(3, "172.31.0.13:51820", v4("10.61.3.0/24")),
            ],
        ));
        wg.devices[1].table.publish(table::WgTable::new(
            wg.network,
            wg.local,
            vec![peer(3, "[fd31::13]:51821", v6("fd00:61:0:3::/64"))],
        ));
        *wg.tables.lock().unwrap() = wg.devices.iter().map(|d| d.table.clone()).collect();
        let metrics = crate::metrics::Metrics::default();
        let _ = metrics.data_path.set(wg.data_path_stats().unwrap());
        let text = metrics.render();
        assert_eq!(crate::metrics::check_openmetrics(&text), Ok(()), "{text}");
        for line in [
            "# TYPE twilld_wireguard_aead info",
            "twilld_wireguard_aead_info{aead=\"ring\"} 1",
            "# UNIT twilld_wireguard_peer_tx_bytes bytes",
            "# UNIT twilld_wireguard_peer_last_handshake_seconds seconds",
            "twilld_wireguard_tx_packets_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("twilld_wireguard_peer_roams_total{"))
                .count(),
            3,
            "three peers on two devices:\n{text}"
        );
    }
}

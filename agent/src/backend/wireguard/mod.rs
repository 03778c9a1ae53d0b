//! wireguard: Flannel's wireguard backend on the wire and in etcd — device `flannel-wg` with
//! `<subnet>.0/32`, one link-scope route for the whole network, peers chosen by AllowedIPs,
//! the key in `/run/flannel/wgkey`, leases with `{"PublicKey","Port"}` — but in user space
//! on the TUN engine ([`crate::engine`]), so it needs no kernel module and keeps the udp
//! backend's offloads (TSO super-packets segmented, one transport message per segment, UDP
//! GSO out, GRO in, coalesced TUN writes). The protocol is boringtun's `noise` module.
//!
//! - `config.rs`: the `Backend` fields; `lease_data.rs`: `BackendData`; `key.rs`: the key file.
//! - `table.rs`: the published peer table (each peer's `Tunn`); `transform.rs`: per packet.
//! - `timers.rs`: the thread that runs WireGuard's timers (handshake retries, keepalives).
//! - `uapi.rs`: WireGuard's cross-platform UAPI socket, so `wg show` works.

pub mod config;
pub mod key;
mod lease_data;
pub mod table;
mod timers;
pub mod transform;
pub mod uapi;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::PublicKey;
use ipnet::Ipv4Net;
use twill_netkit::{Link, Netlink};

use super::{ApplyErrors, Backend, Peers, UdpOptions, Underlay, routes};
use crate::engine::device::{self, TunSpec};
use crate::engine::{Engine, EngineConfig, Stats};
use crate::lease::{LeaseRecord, Subnets};
use crate::netconf::{BackendType, NetworkConfig};
use config::{OVERHEAD, WireguardConfig};
use key::NodeKey;
pub use lease_data::WireguardLease;
use table::{Peer, TableCell, WgTable};
use transform::WgTransform;

/// The device's name (Flannel's).
pub const DEVICE: &str = "flannel-wg";
/// Where the key lives unless `WIREGUARD_KEY_FILE` says otherwise (Flannel's).
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// Where UAPI sockets live (wireguard-go's and boringtun's directory, which `wg` reads).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";
/// How long a wireguard worker keeps polling after bulk traffic stops, unless configured
/// otherwise: sealing and opening keep it busy enough that a short poll saves wake-ups (A/B
/// in docs/benchmarks.md: 300 µs a little ahead of 0, within 10%).
pub const DEFAULT_BUSY_POLL: std::time::Duration = std::time::Duration::from_micros(300);
/// Handshakes per second, over all peers, before the cookie mechanism answers them (each
/// is counted twice: once before the initiator is looked up, once by its peer's state).
const HANDSHAKES_PER_SECOND: u64 = 2 * 100;

/// Node-local settings of the wireguard backend (flags), besides the network config.
#[derive(Clone, Debug)]
pub struct WireguardOptions {
    /// The private key file.
    pub key_file: PathBuf,
    /// The directory of the UAPI socket `flannel-wg.sock`.
    pub socket_dir: PathBuf,
    /// Workers, busy polling, offloads: the TUN engine's flags (shared with udp).
    pub engine: UdpOptions,
}

/// The wireguard backend.
pub struct Wireguard {
    underlay: Underlay,
    network: Ipv4Net,
    cfg: WireguardConfig,
    mtu_override: Option<u32>,
    opts: WireguardOptions,
    key: Option<Arc<NodeKey>>,
    limiter: Option<Arc<RateLimiter>>,
    device: Option<Link>,
    local: Option<Ipv4Net>,
    table: Arc<TableCell>,
    stats: Arc<Stats>,
    engine: Option<Engine>,
    timers: Option<timers::TimerThread>,
    uapi: Option<uapi::UapiServer>,
    /// The current peers by public key, kept across applies so sessions survive.
    peers: BTreeMap<[u8; 32], Arc<Peer>>,
    next_index: AtomicU32,
}

impl Wireguard {
    pub fn new(config: &NetworkConfig, underlay: Underlay, opts: WireguardOptions) -> Wireguard {
        let table = TableCell::new();
        let stats = Arc::new(Stats::new("wireguard"));
        let peers_of = table.clone();
        let _ = stats
            .extra
            .set(Box::new(move |s| table::render_peers(&peers_of.load(), s)));
        Wireguard {
            underlay,
            network: config.network,
            cfg: config.backend.wireguard.clone().unwrap_or(WireguardConfig {
                listen_port: config::DEFAULT_LISTEN_PORT,
                listen_port_v6: config::DEFAULT_LISTEN_PORT_V6,
                psk: None,
                persistent_keepalive: 0,
                mode: config::Mode::Separate,
            }),
            mtu_override: config.backend.mtu,
            opts,
            key: None,
            limiter: None,
            device: None,
            local: None,
            table,
            stats,
            engine: None,
            timers: None,
            uapi: None,
            peers: BTreeMap::new(),
            next_index: AtomicU32::new(1),
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

    fn publish(&self) {
        self.table.publish(WgTable::new(
            self.network,
            self.local,
            self.peers.values().cloned().collect(),
        ));
    }

    fn stop(&mut self) {
        self.timers = None;
        self.engine = None;
        self.device = None;
    }

    /// (Re-)creates the device, starts the engine and the timers.
    async fn start(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        self.stop();
        let (Some(key), Some(limiter)) = (self.key.clone(), self.limiter.clone()) else {
            return Ok(());
        };
        let spec = TunSpec {
            name: DEVICE.to_string(),
            queues: self.workers(),
            offloads: self.opts.engine.offloads,
            mtu: self.mtu(),
            network: self.network,
        };
        let (tun, dev) = device::create(nl, &spec, None).await?;
        tracing::info!(
            device = %dev.name,
            queues = tun.queues().len(),
            offloads = format!("{:#x}", tun.offloads()),
            mtu = self.mtu(),
            port = self.cfg.listen_port,
            "wireguard data path: TUN ready"
        );
        let cfg = EngineConfig {
            bind: SocketAddrV4::new(self.underlay.public_ip, self.cfg.listen_port),
            mtu: self.mtu() as usize,
            offloads: self.opts.engine.offloads,
            busy_poll: self.opts.engine.busy_poll,
            name: "wg",
        };
        let transform = WgTransform {
            table: self.table.clone(),
            key,
            limiter: limiter.clone(),
            mtu: self.mtu() as usize,
        };
        let engine =
            Engine::start(tun.into_queues(), cfg, &transform, &self.stats).map_err(|e| {
                twill_netkit::Error::io("starting the wireguard data path on", dev.name.clone(), e)
            })?;
        if let Some(sock) = engine.control_socket() {
            self.timers = Some(timers::TimerThread::start(
                self.table.clone(),
                limiter,
                sock,
            ));
        }
        self.engine = Some(engine);
        self.device = Some(dev);
        Ok(())
    }

    async fn configure_address(&self, nl: &Netlink) -> twill_netkit::Result<()> {
        let (Some(dev), Some(subnet)) = (&self.device, self.local) else {
            return Ok(());
        };
        super::set_subnet_address(nl, dev.index, subnet).await
    }

    /// The peer for one lease, reusing the current one (and its sessions) when nothing
    /// about it changed.
    fn peer_for(
        &self,
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        wg: &WireguardLease,
    ) -> Option<Arc<Peer>> {
        let key = self.key.as_ref()?;
        let endpoint = SocketAddrV4::new(public_ip, wg.port.unwrap_or(self.cfg.listen_port));
        if let Some(p) = self.peers.get(&wg.public_key)
            && p.same_as(&wg.public_key, endpoint, subnet)
        {
            return Some(p.clone());
        }
        // 24 bits: boringtun shifts the index left by 8 for its session numbers.
        let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let keepalive = self.cfg.persistent_keepalive;
        let tunn = Tunn::new(
            key.private.clone(),
            PublicKey::from(wg.public_key),
            self.cfg.psk,
            (keepalive > 0).then_some(keepalive),
            index,
            self.limiter.clone(),
        );
        Some(Arc::new(Peer::new(
            index,
            wg.public_key,
            endpoint,
            subnet,
            keepalive,
            self.cfg.psk.is_some(),
            tunn,
        )))
    }

    fn uapi_state(&self) -> uapi::DeviceState {
        uapi::DeviceState {
            key: self.key.clone(),
            listen_port: self.cfg.listen_port,
            table: self.table.clone(),
        }
    }
}

impl Backend for Wireguard {
    fn kind(&self) -> BackendType {
        BackendType::Wireguard
    }
    fn data_path_stats(&self) -> Option<Arc<Stats>> {
        Some(self.stats.clone())
    }
    /// The device MTU: the outer MTU (configured, else the underlay's) less 80, as Flannel.
    fn mtu(&self) -> u32 {
        self.mtu_override
            .unwrap_or(self.underlay.link.mtu)
            .saturating_sub(OVERHEAD)
    }
    fn record(&self) -> LeaseRecord {
        LeaseRecord {
            wireguard: self.key.as_ref().map(|k| WireguardLease {
                public_key: *k.public.as_bytes(),
                port: Some(self.cfg.listen_port),
            }),
            ..LeaseRecord::new(self.underlay.public_ip, BackendType::Wireguard)
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
        self.limiter = Some(Arc::new(RateLimiter::new(
            &key.public,
            HANDSHAKES_PER_SECOND,
        )));
        self.key = Some(Arc::new(key));
        self.start(nl).await?;
        match uapi::UapiServer::start(&self.opts.socket_dir, DEVICE, self.uapi_state()) {
            Ok(s) => self.uapi = Some(s),
            // `wg show` not working is no reason to stop the overlay.
            Err(e) => {
                tracing::warn!(error = %e, "wireguard UAPI socket not served: `wg show` will not see {DEVICE}")
            }
        }
        Ok(())
    }
    async fn set_local_subnet(
        &mut self,
        nl: &Netlink,
        subnet: Subnets,
    ) -> twill_netkit::Result<()> {
        self.local = subnet.v4;
        self.configure_address(nl).await?;
        self.publish();
        Ok(())
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        let mut errors = ApplyErrors::default();
        if !device::data_path_alive(nl, self.device.as_ref(), self.engine.as_ref()).await {
            tracing::warn!(
                device = DEVICE,
                "wireguard TUN device or data path gone: re-creating it"
            );
            if let Err(e) = self.start(nl).await {
                errors.push(e);
                return errors;
            }
            if let Err(e) = self.configure_address(nl).await {
                errors.push(e);
            }
        }
        let own_key = self.key.as_ref().map(|k| *k.public.as_bytes());
        let mut next = BTreeMap::new();
        for (subnet, record) in super::by_v4(peers, self.network, self.local) {
            if record.backend != BackendType::Wireguard {
                continue;
            }
            let Some(wg) = &record.wireguard else {
                continue;
            };
            if Some(wg.public_key) == own_key {
                errors.push(format!(
                    "lease {subnet} carries this node's own wireguard public key: skipped"
                ));
                continue;
            }
            if next.contains_key(&wg.public_key) {
                errors.push(format!(
                    "lease {subnet} reuses another lease's wireguard public key: skipped"
                ));
                continue;
            }
            if let Some(p) = self.peer_for(subnet, record.public_ip, wg) {
                next.insert(wg.public_key, p);
            }
        }
        let added = next.keys().filter(|k| !self.peers.contains_key(*k)).count();
        let removed = self.peers.keys().filter(|k| !next.contains_key(*k)).count();
        if added + removed > 0 {
            tracing::info!(
                peers = next.len(),
                added,
                removed,
                "wireguard peers changed"
            );
        }
        self.peers = next;
        self.publish();
        if let Some(dev) = &self.device {
            let route = device::network_route(self.network, dev);
            routes::reconcile(nl, self.network, &[route], &mut errors).await;
        }
        errors
    }
}

/// `twilld status`'s wireguard part: per peer the last handshake and bytes, from this node's
/// UAPI socket in `socket_dir` (nothing when the node runs no wireguard device).
pub fn print_status(socket_dir: &std::path::Path) {
    let Ok(text) = uapi::query(socket_dir, DEVICE) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "wireguard peers of {DEVICE} (drops per peer: /metrics twilld_wireguard_peer_dropped_packets_total):"
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

//! One WireGuard device of the backend (`flannel-wg` or `flannel-wg-v6`): its TUN, the
//! engine's workers on its UDP port, the timer thread, the UAPI socket and its peers. The
//! backend runs one or two of them (see `plan.rs`); they share the node's key.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::PublicKey;
use ipnet::IpNet;
use twill_netkit::{Link, Netlink, Route};

use super::aead::Aead;
use super::key::NodeKey;
use super::plan::{DevicePlan, Underlay as Family};
use super::table::{Peer, TableCell, WgTable};
use super::transform::WgTransform;
use super::unleased::{self, UnleasedGate};
use super::{HANDSHAKES_PER_SECOND, timers, uapi};
use crate::backend::{ApplyErrors, UdpOptions, routes};
use crate::engine::device::{self, TunSpec};
use crate::engine::{Engine, EngineConfig, Stats};
use crate::lease::Subnets;

/// What a device needs to know about a peer to configure it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: [u8; 32],
    pub endpoint: SocketAddr,
    pub allowed: Subnets,
    /// Another address its datagrams may come from (its other public address).
    pub alt_source: Option<IpAddr>,
}

/// Settings every device of the node shares.
#[derive(Clone, Copy, Debug)]
pub struct Shared {
    pub mtu: u32,
    pub workers: usize,
    pub psk: Option<[u8; 32]>,
    pub keepalive: u16,
    /// Whether peers may roam to addresses no lease names (`--wireguard-roaming any`).
    pub roam_unleased: bool,
    /// Seals and opens transport data (`--wireguard-aead`).
    pub aead: Aead,
}

/// One running (or about to run) device.
pub struct WgDevice {
    pub plan: DevicePlan,
    /// The UDP address its workers bind.
    bind: SocketAddr,
    /// The overlay networks it carries.
    network: Subnets,
    local: Subnets,
    key: Arc<NodeKey>,
    limiter: Arc<RateLimiter>,
    pub table: Arc<TableCell>,
    link: Option<Link>,
    engine: Option<Engine>,
    timers: Option<timers::TimerThread>,
    uapi: Option<uapi::UapiServer>,
    /// The current peers by public key, kept across applies so sessions survive.
    peers: BTreeMap<[u8; 32], Arc<Peer>>,
    next_index: AtomicU32,
}

/// The address a device of `family` binds on a node with these public addresses.
pub fn bind_address(
    family: Family,
    port: u16,
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
) -> SocketAddr {
    match family {
        Family::V4 => SocketAddr::new(IpAddr::V4(public_ip), port),
        Family::V6 => SocketAddr::new(
            IpAddr::V6(public_ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            port,
        ),
        // Dual-stack: one socket on :: takes both families (v4-mapped for IPv4 peers).
        Family::Both => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    }
}

impl WgDevice {
    pub fn new(plan: DevicePlan, bind: SocketAddr, network: Subnets, key: Arc<NodeKey>) -> Self {
        let network = Subnets {
            v4: network.v4.filter(|_| plan.v4),
            v6: network.v6.filter(|_| plan.v6),
        };
        WgDevice {
            plan,
            bind,
            network,
            local: Subnets::default(),
            limiter: Arc::new(RateLimiter::new(&key.public, HANDSHAKES_PER_SECOND)),
            key,
            table: TableCell::new(),
            link: None,
            engine: None,
            timers: None,
            uapi: None,
            peers: BTreeMap::new(),
            next_index: AtomicU32::new(1),
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
        self.link = None;
    }

    /// (Re-)creates the TUN, starts the engine on it and the timers.
    pub async fn start(
        &mut self,
        nl: &Netlink,
        shared: &Shared,
        opts: &UdpOptions,
        stats: &Arc<Stats>,
    ) -> twill_netkit::Result<()> {
        self.stop();
        let spec = TunSpec {
            name: self.plan.name.to_string(),
            queues: shared.workers,
            offloads: opts.offloads,
            mtu: shared.mtu,
            network: self.network.v4.unwrap_or_default(),
            ipv6: self.plan.v6,
        };
        // A device of another kind under the name — a kernel WireGuard `flannel-wg` that a
        // killed flanneld left (it removes its device only when it stops cleanly) — would
        // keep twilld from starting on a node moving from Flannel. Flannel recreates whatever
        // holds the name; so does twilld. A TUN is left alone: another process's TUN of
        // that name fails the create below, naming it.
        if let Some(old) = nl.link_by_name(&spec.name).await?
            && old.kind.as_deref() != Some("tun")
        {
            tracing::warn!(
                device = %spec.name,
                kind = old.kind.as_deref().unwrap_or("unknown"),
                "a device of another kind holds the name (a kernel WireGuard device flanneld left?): recreating it as twilld's TUN"
            );
            nl.remove_link(&spec.name).await?;
        }
        let (tun, dev) = device::create(nl, &spec, None).await?;
        tracing::info!(
            device = %dev.name,
            queues = tun.queues().len(),
            offloads = format!("{:#x}", tun.offloads()),
            mtu = shared.mtu,
            bind = %self.bind,
            "wireguard data path: TUN ready"
        );
        let cfg = EngineConfig {
            bind: self.bind,
            mtu: shared.mtu as usize,
            offloads: opts.offloads,
            busy_poll: opts.busy_poll,
            crypto_helper: opts.crypto_helper,
            name: if self.plan.v6 && !self.plan.v4 {
                "wg6"
            } else {
                "wg"
            },
        };
        let transform = WgTransform {
            table: self.table.clone(),
            key: self.key.clone(),
            limiter: self.limiter.clone(),
            unleased: shared
                .roam_unleased
                .then(|| Arc::new(UnleasedGate::new(self.limiter.clone(), unleased::LIMITS))),
            aead: shared.aead,
        };
        let engine = Engine::start(tun.into_queues(), cfg, &transform, stats).map_err(|e| {
            twill_netkit::Error::io("starting the wireguard data path on", dev.name.clone(), e)
        })?;
        if let Some(sock) = engine.control_socket() {
            self.timers = Some(timers::TimerThread::start(
                self.table.clone(),
                self.limiter.clone(),
                sock,
            ));
        }
        self.engine = Some(engine);
        self.link = Some(dev);
        self.configure_address(nl).await?;
        self.fail_closed(nl).await
    }

    /// Puts an `unreachable` route under each overlay network the device carries, above the
    /// device's own route. While the device is there its route wins; when it is gone (twilld
    /// stopped, restarting or rebuilding the data path) pod traffic to other nodes is refused
    /// instead of following the default route out unencrypted. Kept on purpose when twilld
    /// stops: Flannel's kernel device outlives flanneld the same way.
    async fn fail_closed(&self, nl: &Netlink) -> twill_netkit::Result<()> {
        for n in self.network.nets() {
            nl.replace_route(
                &Route::new(n)
                    .unreachable()
                    .metric(routes::FAIL_CLOSED_METRIC),
            )
            .await?;
        }
        Ok(())
    }

    /// Serves `<dir>/<device>.sock` for `wg show` (a failure is only logged).
    pub fn serve_uapi(&mut self, dir: &Path) {
        let state = uapi::DeviceState {
            key: Some(self.key.clone()),
            listen_port: self.plan.port,
            table: self.table.clone(),
        };
        match uapi::UapiServer::start(dir, self.plan.name, state) {
            Ok(s) => self.uapi = Some(s),
            // `wg show` not working is no reason to stop the overlay.
            Err(e) => {
                tracing::warn!(error = %e, "wireguard UAPI socket not served: `wg show` will not see {}", self.plan.name)
            }
        }
    }

    /// Takes the node's subnets (only the families this device carries count).
    pub async fn set_local(&mut self, nl: &Netlink, local: Subnets) -> twill_netkit::Result<()> {
        self.local = Subnets {
            v4: local.v4.filter(|_| self.plan.v4),
            v6: local.v6.filter(|_| self.plan.v6),
        };
        self.publish();
        self.configure_address(nl).await
    }

    /// `<subnet>.0/32` and `<v6 subnet base>/128`, as Flannel.
    async fn configure_address(&self, nl: &Netlink) -> twill_netkit::Result<()> {
        let Some(dev) = &self.link else {
            return Ok(());
        };
        if let Some(s) = self.local.v4 {
            crate::backend::set_subnet_address(nl, dev.index, s).await?;
        }
        if let Some(s) = self.local.v6 {
            crate::backend::set_subnet_address6(nl, dev.index, s).await?;
        }
        Ok(())
    }

    /// The peer for `spec`: the current one when nothing about it changed, its successor
    /// (same sessions) when only its lease's addresses or subnets did; a new one otherwise.
    fn peer_for(&self, spec: &PeerSpec, shared: &Shared) -> Arc<Peer> {
        if let Some(p) = self.peers.get(&spec.public_key) {
            if p.same_as(&spec.public_key, spec.endpoint, spec.allowed)
                && p.alt_source == spec.alt_source.map(|ip| ip.to_canonical())
            {
                return p.clone();
            }
            return Arc::new(p.successor(spec.endpoint, spec.allowed, spec.alt_source));
        }
        // 24 bits: boringtun shifts the index left by 8 for its session numbers.
        let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.key.private.clone(),
            PublicKey::from(spec.public_key),
            shared.psk,
            (shared.keepalive > 0).then_some(shared.keepalive),
            index,
            Some(self.limiter.clone()),
        );
        Arc::new(
            Peer::new(
                index,
                spec.public_key,
                spec.endpoint,
                spec.allowed,
                shared.keepalive,
                shared.psk.is_some(),
                tunn,
            )
            .with_alt_source(spec.alt_source),
        )
    }

    /// Makes the data path whole again if its TUN or a worker died, then installs exactly
    /// `want` as peers and reconciles the route of each carried network to the device.
    pub async fn apply(
        &mut self,
        nl: &Netlink,
        want: &[PeerSpec],
        shared: &Shared,
        opts: &UdpOptions,
        stats: &Arc<Stats>,
        errors: &mut ApplyErrors,
    ) {
        if !device::data_path_alive(nl, self.link.as_ref(), self.engine.as_ref()).await {
            tracing::warn!(
                device = self.plan.name,
                "wireguard TUN device or data path gone: re-creating it"
            );
            if let Err(e) = self.start(nl, shared, opts, stats).await {
                errors.push(e);
                return;
            }
        } else if let Some(dev) = &self.link
            && let Err(e) = device::set_up_if_down(nl, dev, "wireguard").await
        {
            errors.push(e);
        }
        // Every round, not only after a (re-)start: an address flushed by hand (or removed
        // with the device set down, as IPv6 ones are) comes back. Without it traffic from
        // this host leaves from the underlay address, which no peer allows.
        if let Err(e) = self.configure_address(nl).await {
            errors.push(e);
        }
        let next: BTreeMap<[u8; 32], Arc<Peer>> = want
            .iter()
            .map(|s| (s.public_key, self.peer_for(s, shared)))
            .collect();
        let added = next.keys().filter(|k| !self.peers.contains_key(*k)).count();
        let removed = self.peers.keys().filter(|k| !next.contains_key(*k)).count();
        if added + removed > 0 {
            tracing::info!(
                device = self.plan.name,
                peers = next.len(),
                added,
                removed,
                "wireguard peers changed"
            );
        }
        self.peers = next;
        self.publish();
        if let Some(dev) = &self.link {
            let networks: Vec<IpNet> = self.network.nets().collect();
            let wanted: Vec<_> = networks
                .iter()
                .map(|n| device::network_route(*n, dev))
                .collect();
            routes::reconcile_all(nl, &networks, &wanted, errors).await;
        }
    }
}

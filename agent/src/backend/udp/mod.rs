//! udp: Flannel's udp backend on the wire — TUN `flannel0` with `<subnet>.0/32`, one route for
//! the whole network to it, UDP port 8285, each datagram one inner IPv4 packet, MTU − 28 —
//! with a data path built for speed (batched syscalls, multi-queue TUN, TSO/GSO/GRO) and
//! stricter checks (only leased peers, only their own inner sources, only local
//! destinations). The data path is the TUN engine ([`crate::engine`]) with the udp
//! [`transform::UdpTransform`]; the control plane here only creates the device, starts the
//! engine and publishes peer tables.

pub mod table;
pub mod transform;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnet::Ipv4Net;
use twill_netkit::{Link, Netlink};

use super::{ApplyErrors, Backend, Peers, Underlay, routes};
use crate::engine::device::{self, TunSpec};
use crate::engine::{Engine, EngineConfig, Stats};
use crate::lease::{LeaseRecord, Subnets};
use crate::netconf::{BackendType, NetworkConfig};
use table::{PeerTable, TableCell};
use transform::UdpTransform;

/// Outer IPv4 (20) + UDP (8).
pub const UDP_OVERHEAD: u32 = 28;

/// The TUN device's name unless configured otherwise (Flannel's).
pub const DEFAULT_DEVICE: &str = "flannel0";

/// How long a udp worker keeps polling after bulk traffic stops, unless configured
/// otherwise: not at all. Three A/B pairs of `twill-lab bench` (docs/benchmarks.md) found
/// that 300 µs moved no more (0.86–0.95× the reference forwarder either way) and cost
/// 13–18% more CPU per GB.
pub const DEFAULT_BUSY_POLL: std::time::Duration = std::time::Duration::ZERO;

/// Settings of the udp backend that are node-local (flags, with their defaults in `cli`), not
/// part of the network config.
#[derive(Clone, Debug)]
pub struct UdpOptions {
    /// The TUN device name.
    pub device: String,
    /// Data-path workers (TUN queues); 0 = one per two CPUs, 1 to 4.
    pub workers: usize,
    /// How long a worker keeps polling after bulk traffic stops before it sleeps.
    pub busy_poll: std::time::Duration,
    /// TUN offloads, UDP GSO/GRO and TCP coalescing; off: one packet per syscall slot.
    pub offloads: bool,
    /// A helper thread per worker for the transform's batches (wireguard's crypto; udp has
    /// none to spread, so it keeps this off).
    pub crypto_helper: bool,
}

/// The udp backend.
pub struct Udp {
    underlay: Underlay,
    network: Ipv4Net,
    port: u16,
    mtu_override: Option<u32>,
    opts: UdpOptions,
    device: Option<Link>,
    local: Option<Ipv4Net>,
    table: Arc<TableCell>,
    stats: Arc<Stats>,
    engine: Option<Engine>,
    /// The peers of the last apply, to rebuild the table when the local subnet changes.
    peers: Vec<(Ipv4Net, Ipv4Addr)>,
}

impl Udp {
    pub fn new(config: &NetworkConfig, underlay: Underlay, opts: UdpOptions) -> Udp {
        Udp {
            underlay,
            network: config.network,
            port: config.backend.port,
            mtu_override: config.backend.mtu,
            opts,
            device: None,
            local: None,
            table: TableCell::new(PeerTable::default()),
            stats: Arc::new(Stats::new("udp")),
            engine: None,
            peers: Vec::new(),
        }
    }

    fn workers(&self) -> usize {
        match self.opts.workers {
            // Half the CPUs: each worker also carries the kernel's share of its packets, and
            // the containers need the rest.
            0 => (std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                / 2)
            .clamp(1, 4),
            n => n,
        }
    }

    fn publish(&self) {
        self.table.publish(PeerTable::new(
            self.network,
            self.local,
            self.peers.iter().copied(),
        ));
    }

    /// Stops the data path (its queues close, so the device goes away with them).
    fn stop(&mut self) {
        self.engine = None;
        self.device = None;
    }

    /// The overlay TUN as this node's udp backend has it.
    fn tun_spec(&self) -> TunSpec {
        TunSpec {
            name: self.opts.device.clone(),
            queues: self.workers(),
            offloads: self.opts.offloads,
            mtu: self.mtu(),
            network: self.network,
            ipv6: false,
        }
    }

    /// (Re-)creates the device and starts the engine on its queues. The address follows
    /// the lease ([`Self::configure_address`]) and the route is reconciled in `apply`.
    async fn start(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        self.stop();
        let (tun, dev) = device::create(nl, &self.tun_spec(), None).await?;
        tracing::info!(
            device = %dev.name,
            queues = tun.queues().len(),
            offloads = format!("{:#x}", tun.offloads()),
            mtu = self.mtu(),
            "udp data path: TUN ready"
        );
        let cfg = EngineConfig {
            bind: SocketAddrV4::new(self.underlay.bind_ip(), self.port).into(),
            mtu: self.mtu() as usize,
            offloads: self.opts.offloads,
            busy_poll: self.opts.busy_poll,
            name: "udp",
            crypto_helper: self.opts.crypto_helper,
        };
        let transform = UdpTransform {
            table: self.table.clone(),
            port: self.port,
        };
        let engine =
            Engine::start(tun.into_queues(), cfg, &transform, &self.stats).map_err(|e| {
                twill_netkit::Error::io("starting the udp data path on", dev.name.clone(), e)
            })?;
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
}

impl Backend for Udp {
    fn kind(&self) -> BackendType {
        BackendType::Udp
    }
    fn data_path_stats(&self) -> Option<Arc<Stats>> {
        Some(self.stats.clone())
    }
    fn mtu(&self) -> u32 {
        self.mtu_override
            .unwrap_or(self.underlay.link.mtu.saturating_sub(UDP_OVERHEAD))
    }
    fn record(&self) -> LeaseRecord {
        LeaseRecord::new(self.underlay.public_ip, BackendType::Udp)
    }
    async fn init(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        self.start(nl).await
    }
    async fn set_local_subnet(
        &mut self,
        nl: &Netlink,
        subnet: Subnets,
    ) -> twill_netkit::Result<()> {
        // udp is IPv4-only: the config refuses EnableIPv6 with it.
        self.local = subnet.v4;
        self.configure_address(nl).await?;
        self.publish();
        Ok(())
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        let mut errors = ApplyErrors::default();
        // Level-triggered: a deleted device or a dead data path is rebuilt.
        if !device::data_path_alive(nl, self.device.as_ref(), self.engine.as_ref()).await {
            tracing::warn!(device = %self.opts.device, "udp TUN device or data path gone: re-creating it");
            if let Err(e) = self.start(nl).await {
                errors.push(e);
                return errors;
            }
        } else if let Some(dev) = &self.device
            && let Err(e) = device::set_up_if_down(nl, dev, "udp").await
        {
            errors.push(e);
        }
        // Every round, not only after a (re-)start: an address removed by hand comes back.
        if let Err(e) = self.configure_address(nl).await {
            errors.push(e);
        }
        self.peers = super::by_v4(peers, self.network, self.local)
            .into_iter()
            .filter(|(_, r)| r.backend == BackendType::Udp)
            .map(|(s, r)| (s, r.public_ip))
            .collect();
        self.publish();
        if let Some(dev) = &self.device {
            let route = device::network_route(self.network.into(), dev);
            routes::reconcile(nl, self.network, &[route], &mut errors).await;
        }
        errors
    }
}

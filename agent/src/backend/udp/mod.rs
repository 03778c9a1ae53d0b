//! udp: Flannel's udp backend on the wire — TUN `flannel0` with `<subnet>.0/32`, one route for
//! the whole network to it, UDP port 8285, each datagram one inner IPv4 packet, MTU − 28 —
//! with a data path built for speed (batched syscalls, multi-queue TUN, TSO/GSO/GRO) and
//! stricter checks (only leased peers, only their own inner sources, only local
//! destinations). The control plane here only creates the device and publishes peer tables;
//! the packets never touch the async runtime.

pub mod datapath;
pub mod packet;
pub mod stats;
pub mod table;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnet::Ipv4Net;
use twill_netkit::tun::offload::{CSUM, TSO4, TSO6};
use twill_netkit::tun::{Tun, TunOptions};
use twill_netkit::{Link, Netlink, Route, Scope};

use super::{ApplyErrors, Backend, Peers, Underlay, routes};
use crate::lease::LeaseRecord;
use crate::netconf::{BackendType, NetworkConfig};
use datapath::{Datapath, DatapathConfig};
use stats::Stats;
use table::{PeerTable, TableCell};

/// Outer IPv4 (20) + UDP (8).
pub const UDP_OVERHEAD: u32 = 28;

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
    datapath: Option<Datapath>,
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
            stats: Arc::new(Stats::default()),
            datapath: None,
            peers: Vec::new(),
        }
    }

    /// The data path's counters (for `/metrics`).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    fn workers(&self) -> usize {
        match self.opts.workers {
            // Half the CPUs: each worker also carries the kernel's share of its packets, and
            // the containers need the rest (one worker beat two on 2 vCPUs).
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
        self.datapath = None;
        self.device = None;
    }

    async fn start(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        self.stop();
        let mut opts = TunOptions::offloaded(&self.opts.device, self.workers());
        // TCP segmentation only: the data path segments TCP itself and would have to drop
        // UDP GSO (USO) super-packets.
        opts.offload_candidates = if self.opts.offloads {
            vec![CSUM | TSO4 | TSO6, CSUM | TSO4, CSUM, 0]
        } else {
            vec![0]
        };
        let tun = Tun::create(&opts)?;
        let dev = nl.require_link(tun.name()).await?;
        nl.set_mtu(dev.index, self.mtu()).await?;
        // The ICMP errors the data path writes back come from the device's own address,
        // which the kernel would drop as a martian source without this. Not fatal: in a
        // container with a read-only /proc/sys only those replies are lost.
        let key = format!("net/ipv4/conf/{}/accept_local", dev.name);
        if let Err(e) = twill_netkit::sysctl::ensure(&key, "1") {
            tracing::warn!(error = %e, "cannot set {key}=1: ICMP net unreachable replies for unknown destinations will be dropped by the kernel");
        }
        // The overlay is IPv4 only: without this the kernel sends router solicitations and
        // MLD reports into the TUN, which the data path can only drop.
        let _ =
            twill_netkit::sysctl::ensure(&format!("net/ipv6/conf/{}/disable_ipv6", dev.name), "1");
        nl.set_up(dev.index).await?;
        tracing::info!(
            device = %dev.name,
            queues = tun.queues().len(),
            offloads = format!("{:#x}", tun.offloads()),
            mtu = self.mtu(),
            "udp data path: TUN ready"
        );
        let cfg = DatapathConfig {
            bind: SocketAddrV4::new(self.underlay.public_ip, self.port),
            mtu: self.mtu() as usize,
            offloads: self.opts.offloads,
        };
        let dp = Datapath::start(
            tun.into_queues(),
            cfg,
            self.opts.busy_poll,
            &self.table,
            &self.stats,
        )
        .map_err(|e| {
            twill_netkit::Error::io("starting the udp data path on", dev.name.clone(), e)
        })?;
        self.datapath = Some(dp);
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
    fn mtu(&self) -> u32 {
        self.mtu_override
            .unwrap_or(self.underlay.link.mtu.saturating_sub(UDP_OVERHEAD))
    }
    fn record(&self) -> LeaseRecord {
        LeaseRecord {
            public_ip: self.underlay.public_ip,
            backend: BackendType::Udp,
            vtep_mac: None,
            vni: None,
        }
    }
    async fn init(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        self.start(nl).await
    }
    async fn set_local_subnet(
        &mut self,
        nl: &Netlink,
        subnet: Ipv4Net,
    ) -> twill_netkit::Result<()> {
        self.local = Some(subnet);
        self.configure_address(nl).await?;
        self.publish();
        Ok(())
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        let mut errors = ApplyErrors::default();
        // Level-triggered: a deleted device or a dead data path is rebuilt.
        let present = match &self.device {
            Some(d) => {
                matches!(nl.link_by_index(d.index).await, Ok(Some(ref l)) if l.name == d.name)
            }
            None => false,
        };
        let healthy = self.datapath.as_ref().is_some_and(Datapath::healthy);
        if !present || !healthy {
            tracing::warn!(device = %self.opts.device, "udp TUN device or data path gone: re-creating it");
            if let Err(e) = self.start(nl).await {
                errors.push(e);
                return errors;
            }
            if let Err(e) = self.configure_address(nl).await {
                errors.push(e);
            }
        }
        self.peers = peers
            .iter()
            .filter(|(s, r)| Some(**s) != self.local && r.backend == BackendType::Udp)
            .map(|(s, r)| (*s, r.public_ip))
            .collect();
        self.publish();
        if let Some(dev) = &self.device {
            let route = Route::new(self.network).dev(dev.index).scope(Scope::Link);
            routes::reconcile(nl, self.network, &[route], &mut errors).await;
        }
        errors
    }
}

//! Backends: how packets reach other nodes' subnets. One small trait, one file per backend,
//! one factory that reads `Backend.Type` (after netavark's driver trait). Every `apply` is
//! level-triggered: it makes the kernel match the full peer set, however it looked before.

mod hostgw;
mod routes;
pub mod udp;
mod vxlan;
pub mod wireguard;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use twill_netkit::{Link, Netlink};

use crate::lease::LeaseRecord;
use crate::netconf::{BackendType, NetworkConfig};

pub use hostgw::HostGw;
pub use udp::{Udp, UdpOptions};
pub use vxlan::Vxlan;
pub use wireguard::{Wireguard, WireguardOptions};

/// The node's underlay: the interface peers are reached through.
#[derive(Clone, Debug)]
pub struct Underlay {
    pub link: Link,
    pub public_ip: Ipv4Addr,
    /// The address and prefix on the link that holds `public_ip` (for the same-L2 test).
    pub net: Ipv4Net,
}

impl Underlay {
    /// Whether `ip` is directly reachable on the underlay's L2 subnet.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        self.net.trunc().contains(&ip)
    }
}

/// Gives device `index` exactly one IPv4 address, `<subnet>.0/32` (the VTEP's or the TUN's,
/// as Flannel does), removing any other IPv4 address a previous lease left.
pub(crate) async fn set_subnet_address(
    nl: &Netlink,
    index: u32,
    subnet: Ipv4Net,
) -> twill_netkit::Result<()> {
    let want = ipnet::IpNet::V4(Ipv4Net::new(subnet.network(), 32).unwrap_or(subnet));
    for a in nl.list_addresses(index).await? {
        if a.addr().is_ipv4() && a != want {
            nl.delete_address(index, a).await?;
        }
    }
    nl.ensure_address(index, want).await
}

/// The peers: every other node's subnet and what its lease says.
pub type Peers = BTreeMap<Ipv4Net, LeaseRecord>;

/// Errors from one apply: per-object messages, collected rather than stopping at the first.
#[derive(Debug, Default)]
pub struct ApplyErrors(pub Vec<String>);

impl ApplyErrors {
    pub fn push(&mut self, e: impl std::fmt::Display) {
        self.0.push(e.to_string());
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What every backend does. Only used inside twilld (through [`AnyBackend`], on one task),
/// so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// The backend's type, as written in leases.
    fn kind(&self) -> BackendType;
    /// The MTU containers should use (subnet.env's FLANNEL_MTU).
    fn mtu(&self) -> u32;
    /// This node's lease value.
    fn record(&self) -> LeaseRecord;
    /// The counters of a user-space data path (TUN engine), for `/metrics`.
    fn data_path_stats(&self) -> Option<std::sync::Arc<crate::engine::Stats>> {
        None
    }
    /// Creates what does not depend on the subnet (e.g. the VTEP), keeping compatible
    /// existing devices so a restart does not disturb traffic.
    async fn init(&mut self, nl: &Netlink) -> twill_netkit::Result<()>;
    /// Configures the local subnet once leased (or re-leased).
    async fn set_local_subnet(&mut self, nl: &Netlink, subnet: Ipv4Net)
    -> twill_netkit::Result<()>;
    /// Makes the kernel match `peers`.
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors;
}

/// The backend chosen by the network config.
pub enum AnyBackend {
    HostGw(HostGw),
    Vxlan(Vxlan),
    Udp(Udp),
    Wireguard(Wireguard),
}

/// Builds the backend for `config`.
pub fn create(
    config: &NetworkConfig,
    underlay: Underlay,
    udp: UdpOptions,
    wg: WireguardOptions,
) -> AnyBackend {
    match config.backend.kind {
        BackendType::HostGw => AnyBackend::HostGw(HostGw::new(config, underlay)),
        BackendType::Vxlan => AnyBackend::Vxlan(Vxlan::new(config, underlay)),
        BackendType::Udp => AnyBackend::Udp(Udp::new(config, underlay, udp)),
        BackendType::Wireguard => AnyBackend::Wireguard(Wireguard::new(config, underlay, wg)),
    }
}

impl Backend for AnyBackend {
    fn kind(&self) -> BackendType {
        match self {
            AnyBackend::HostGw(b) => b.kind(),
            AnyBackend::Vxlan(b) => b.kind(),
            AnyBackend::Udp(b) => b.kind(),
            AnyBackend::Wireguard(b) => b.kind(),
        }
    }
    fn mtu(&self) -> u32 {
        match self {
            AnyBackend::HostGw(b) => b.mtu(),
            AnyBackend::Vxlan(b) => b.mtu(),
            AnyBackend::Udp(b) => b.mtu(),
            AnyBackend::Wireguard(b) => b.mtu(),
        }
    }
    fn data_path_stats(&self) -> Option<std::sync::Arc<crate::engine::Stats>> {
        match self {
            AnyBackend::HostGw(b) => b.data_path_stats(),
            AnyBackend::Vxlan(b) => b.data_path_stats(),
            AnyBackend::Udp(b) => b.data_path_stats(),
            AnyBackend::Wireguard(b) => b.data_path_stats(),
        }
    }
    fn record(&self) -> LeaseRecord {
        match self {
            AnyBackend::HostGw(b) => b.record(),
            AnyBackend::Vxlan(b) => b.record(),
            AnyBackend::Udp(b) => b.record(),
            AnyBackend::Wireguard(b) => b.record(),
        }
    }
    async fn init(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        match self {
            AnyBackend::HostGw(b) => b.init(nl).await,
            AnyBackend::Vxlan(b) => b.init(nl).await,
            AnyBackend::Udp(b) => b.init(nl).await,
            AnyBackend::Wireguard(b) => b.init(nl).await,
        }
    }
    async fn set_local_subnet(
        &mut self,
        nl: &Netlink,
        subnet: Ipv4Net,
    ) -> twill_netkit::Result<()> {
        match self {
            AnyBackend::HostGw(b) => b.set_local_subnet(nl, subnet).await,
            AnyBackend::Vxlan(b) => b.set_local_subnet(nl, subnet).await,
            AnyBackend::Udp(b) => b.set_local_subnet(nl, subnet).await,
            AnyBackend::Wireguard(b) => b.set_local_subnet(nl, subnet).await,
        }
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        match self {
            AnyBackend::HostGw(b) => b.apply(nl, peers).await,
            AnyBackend::Vxlan(b) => b.apply(nl, peers).await,
            AnyBackend::Udp(b) => b.apply(nl, peers).await,
            AnyBackend::Wireguard(b) => b.apply(nl, peers).await,
        }
    }
}

//! Backends: how packets reach other nodes' subnets. One small trait, one file per backend,
//! one factory that reads `Backend.Type` (after netavark's driver trait). Every `apply` is
//! level-triggered: it makes the kernel match the full peer set, however it looked before.

mod earlier_setup;
mod hostgw;
mod routes;
pub mod udp;
mod vxlan;
pub mod wireguard;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use twill_netkit::{Link, Netlink};

use crate::lease::{LeaseRecord, Subnets};
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
    /// The address and prefix on the link that holds `public_ip` (part of the on-link test).
    pub net: Ipv4Net,
    /// The IPv6 public address (`--public-ipv6`, else the link's first global one), if any.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The IPv6 address and prefix on the link (part of the on-link test).
    pub net6: Option<Ipv6Net>,
}

impl Underlay {
    /// The IPv4 address the user-space backends bind: the link's own, which `public_ip`
    /// need not be (`--public-ip` may name a NAT's outside address that peers reach this
    /// node at, as Flannel allows; its udp backend binds the interface's address too).
    pub fn bind_ip(&self) -> Ipv4Addr {
        Some(self.net.addr())
            .filter(|a| !a.is_unspecified())
            .unwrap_or(self.public_ip)
    }

    /// [`Underlay::bind_ip`] for IPv6.
    pub fn bind_ipv6(&self) -> Option<Ipv6Addr> {
        self.net6.map(|n| n.addr()).or(self.public_ipv6)
    }
}

#[cfg(test)]
impl Underlay {
    /// A test node's underlay: eth0 (index 2, MTU 1500, up) holding 172.31.0.11 and fd31::b,
    /// on links of `prefix` and `prefix6` bits.
    pub(crate) fn for_tests(prefix: u8, prefix6: u8) -> Underlay {
        Underlay {
            link: Link {
                index: 2,
                name: "eth0".into(),
                kind: None,
                mtu: 1500,
                mac: Vec::new(),
                up: true,
                controller: None,
                vxlan: None,
            },
            public_ip: "172.31.0.11".parse().unwrap(),
            net: format!("172.31.0.11/{prefix}").parse().unwrap(),
            public_ipv6: Some("fd31::b".parse().unwrap()),
            net6: Some(format!("fd31::b/{prefix6}").parse().unwrap()),
        }
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
    let mut present = false;
    for a in nl.list_addresses(index).await? {
        if a == want {
            present = true;
        } else if a.addr().is_ipv4() {
            nl.delete_address(index, a).await?;
        }
    }
    // Checked on every reconcile: a dump, and a write only when the address is missing.
    if present {
        return Ok(());
    }
    nl.ensure_address(index, want).await
}

/// One lease key of another node (or an older key of ours): its subnets and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnets: Subnets,
    pub record: LeaseRecord,
    /// When the key was last written: of two keys naming one subnet, the newer wins.
    pub mod_revision: i64,
}

/// The peers, keyed by their etcd key. Two keys may name the same IPv4 subnet (a node
/// moving to dual stack writes a new key while the old one lives out its TTL): a subnet's
/// kernel entries exist while any key names it. Backends program [`by_v4`] / [`by_v6`].
pub type Peers = BTreeMap<String, Peer>;

/// Keeps, per subnet, the record of the newest key naming it.
fn newest<'a, N: Ord>(out: &mut BTreeMap<N, (&'a LeaseRecord, i64)>, subnet: N, peer: &'a Peer) {
    let e = out
        .entry(subnet)
        .or_insert((&peer.record, peer.mod_revision));
    if peer.mod_revision > e.1 {
        *e = (&peer.record, peer.mod_revision);
    }
}

/// The IPv4 subnets to route: inside `network`, not `local`, from leases with an IPv4
/// public address; one record per subnet.
pub fn by_v4(
    peers: &Peers,
    network: Ipv4Net,
    local: Option<Ipv4Net>,
) -> BTreeMap<Ipv4Net, &LeaseRecord> {
    without_revisions(by_v4_revised(peers, network, local))
}

/// [`by_v4`] with each record's etcd revision (the newest key's), for a backend that must
/// also tell leases apart by age on another field (wireguard: by public key).
pub fn by_v4_revised(
    peers: &Peers,
    network: Ipv4Net,
    local: Option<Ipv4Net>,
) -> BTreeMap<Ipv4Net, (&LeaseRecord, i64)> {
    let mut out = BTreeMap::new();
    for p in peers.values() {
        if let Some(s) = p.subnets.v4
            && Some(s) != local
            && network.contains(&s)
            && !p.record.public_ip.is_unspecified()
        {
            newest(&mut out, s, p);
        }
    }
    out
}

/// The IPv6 subnets to route (none when IPv6 is off): inside `network`, not `local`, from
/// leases with a `PublicIPv6`; one record per subnet.
pub fn by_v6(
    peers: &Peers,
    network: Option<Ipv6Net>,
    local: Option<Ipv6Net>,
) -> BTreeMap<Ipv6Net, &LeaseRecord> {
    without_revisions(by_v6_revised(peers, network, local))
}

/// [`by_v6`] with each record's etcd revision, as [`by_v4_revised`].
pub fn by_v6_revised(
    peers: &Peers,
    network: Option<Ipv6Net>,
    local: Option<Ipv6Net>,
) -> BTreeMap<Ipv6Net, (&LeaseRecord, i64)> {
    let mut out = BTreeMap::new();
    let Some(network) = network else {
        return BTreeMap::new();
    };
    for p in peers.values() {
        if let Some(s) = p.subnets.v6
            && Some(s) != local
            && network.contains(&s)
            && p.record.public_ipv6.is_some()
        {
            newest(&mut out, s, p);
        }
    }
    out
}

/// How many other nodes are routed to: leases with a subnet [`by_v4`] or [`by_v6`] takes (in
/// that family's network, not `local`, with that family's public address), less those that
/// name this node (`own`'s public address: an older key or a reservation of its own). A node
/// with both families, or with two keys for a while, counts once. What `ready … peers=` and
/// `twilld_peers` say: counting every key counted leases outside the network, never routed.
pub fn routed_peers(
    peers: &Peers,
    network: Option<Ipv4Net>,
    network6: Option<Ipv6Net>,
    local: Subnets,
    own: &LeaseRecord,
) -> usize {
    let v4 = network
        .map(|n| by_v4(peers, n, local.v4))
        .unwrap_or_default();
    let v6 = by_v6(peers, network6, local.v6);
    let ours = |r: &LeaseRecord| match network {
        Some(_) => r.public_ip == own.public_ip && !own.public_ip.is_unspecified(),
        None => r.public_ipv6.is_some() && r.public_ipv6 == own.public_ipv6,
    };
    let mut nodes = std::collections::BTreeSet::new();
    for p in peers.values().filter(|p| !ours(&p.record)) {
        let routed4 = p.subnets.v4.filter(|s| v4.contains_key(s));
        let routed6 = p.subnets.v6.filter(|s| v6.contains_key(s));
        if let Some(id) = routed4
            .map(ipnet::IpNet::V4)
            .or(routed6.map(ipnet::IpNet::V6))
        {
            nodes.insert(id);
        }
    }
    nodes.len()
}

/// Why a lease is never routed for being outside the network of one of its families (a
/// family the network does not have is not a reason), or `None`.
pub fn outside_network(
    subnets: Subnets,
    network: Option<Ipv4Net>,
    network6: Option<Ipv6Net>,
) -> Option<String> {
    if let (Some(s), Some(n)) = (subnets.v4, network)
        && !n.contains(&s)
    {
        return Some(format!("{s} is outside the Network {n}"));
    }
    if let (Some(s), Some(n)) = (subnets.v6, network6)
        && !n.contains(&s)
    {
        return Some(format!("{s} is outside the IPv6Network {n}"));
    }
    None
}

fn without_revisions<N: Ord, R>(revised: BTreeMap<N, (R, i64)>) -> BTreeMap<N, R> {
    revised.into_iter().map(|(s, (r, _))| (s, r)).collect()
}

/// The local end of a VTEP for IPv6: `<subnet base>/128` (Flannel's).
pub(crate) async fn set_subnet_address6(
    nl: &Netlink,
    index: u32,
    subnet: Ipv6Net,
) -> twill_netkit::Result<()> {
    let want = ipnet::IpNet::V6(Ipv6Net::new(subnet.network(), 128).unwrap_or(subnet));
    let mut present = false;
    for a in nl.list_addresses(index).await? {
        // Link-local addresses are the kernel's; only global ones are ours to replace.
        if a == want {
            present = true;
        } else if let ipnet::IpNet::V6(v6) = a
            && (v6.addr().segments()[0] & 0xffc0) != 0xfe80
        {
            nl.delete_address(index, a).await?;
        }
    }
    if present {
        return Ok(());
    }
    nl.ensure_address(index, want).await
}

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
    /// Configures the local subnets once leased (or re-leased).
    async fn set_local_subnet(&mut self, nl: &Netlink, subnet: Subnets)
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

/// Removes what an earlier setup of this node left and `backend`, built for `config`, does not
/// use: twill's routes outside today's networks and other vxlan devices. Run before `init`.
pub async fn remove_earlier_setup(nl: &Netlink, config: &NetworkConfig, backend: &AnyBackend) {
    let networks = hostgw::networks(
        config.network,
        config.enable_ipv4,
        config.ipv6.map(|c| c.network),
    );
    let keep = match backend {
        AnyBackend::Vxlan(v) => v.device_names(),
        _ => Vec::new(),
    };
    earlier_setup::remove(nl, &networks, &keep).await
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
        let keep = match self {
            AnyBackend::Wireguard(b) => b.overlay_networks(),
            _ => Vec::new(),
        };
        routes::remove_stale_fail_closed(nl, &keep).await;
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
        subnet: Subnets,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(
        key: &str,
        v4: Option<&str>,
        v6: Option<&str>,
        ip: &str,
        ip6: Option<&str>,
    ) -> (String, Peer) {
        let mut record = LeaseRecord::new(ip.parse().unwrap(), BackendType::HostGw);
        record.public_ipv6 = ip6.map(|a| a.parse().unwrap());
        let p = Peer {
            subnets: Subnets {
                v4: v4.map(|s| s.parse().unwrap()),
                v6: v6.map(|s| s.parse().unwrap()),
            },
            record,
            mod_revision: 1,
        };
        (key.to_string(), p)
    }

    #[test]
    fn routed_peers_are_the_other_nodes_a_backend_routes_to() {
        let own = {
            let mut r = LeaseRecord::new("172.31.0.11".parse().unwrap(), BackendType::HostGw);
            r.public_ipv6 = Some("fd31::11".parse().unwrap());
            r
        };
        let peers: Peers = [
            // Ours.
            peer(
                "a",
                Some("10.5.1.0/24"),
                Some("fd00:5:0:1::/64"),
                "172.31.0.11",
                Some("fd31::11"),
            ),
            // A dual-stack node, and its older IPv4-only key: one node.
            peer(
                "b",
                Some("10.5.2.0/24"),
                Some("fd00:5:0:2::/64"),
                "172.31.0.12",
                Some("fd31::12"),
            ),
            peer("b-old", Some("10.5.2.0/24"), None, "172.31.0.12", None),
            // IPv6 only (Flannel's `0.0.0.0-0&…` key).
            peer(
                "c",
                None,
                Some("fd00:5:0:3::/64"),
                "0.0.0.0",
                Some("fd31::13"),
            ),
            // Outside both networks.
            peer(
                "d",
                Some("10.99.4.0/24"),
                Some("fd00:99::/64"),
                "172.31.0.14",
                Some("fd31::14"),
            ),
            // A reservation for this node's own public IP, not the subnet it holds.
            peer("e", Some("10.5.7.0/24"), None, "172.31.0.11", None),
        ]
        .into_iter()
        .collect();
        let local = Subnets {
            v4: Some("10.5.1.0/24".parse().unwrap()),
            v6: Some("fd00:5:0:1::/64".parse().unwrap()),
        };
        let (n4, n6) = ("10.5.0.0/16".parse().ok(), "fd00:5::/48".parse().ok());
        assert_eq!(routed_peers(&peers, n4, n6, local, &own), 2, "b and c");
        assert_eq!(
            routed_peers(&peers, n4, None, local, &own),
            1,
            "IPv4 only: b"
        );
        assert_eq!(
            routed_peers(&peers, None, n6, local, &own),
            2,
            "IPv6 only (nodes told by their IPv6 address): b and c"
        );
        assert_eq!(
            outside_network(peers["d"].subnets, n4, n6).as_deref(),
            Some("10.99.4.0/24 is outside the Network 10.5.0.0/16")
        );
        assert_eq!(
            outside_network(peers["d"].subnets, None, n6).as_deref(),
            Some("fd00:99::/64 is outside the IPv6Network fd00:5::/48")
        );
        assert_eq!(outside_network(peers["c"].subnets, n4, None), None);
    }
}

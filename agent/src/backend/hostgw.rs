//! host-gw: a route to each peer's subnet via the peer's public IP on the underlay link, for
//! each family (IPv6: via the peer's `PublicIPv6`). Needs L2 adjacency: a peer on another
//! subnet is reported, not routed (Flannel's rule).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_netkit::{Netlink, Route};

use super::{ApplyErrors, Backend, Peers, Underlay, routes};
use crate::lease::{LeaseRecord, Subnets};
use crate::netconf::{BackendType, NetworkConfig};

/// The host-gw backend.
pub struct HostGw {
    underlay: Underlay,
    network: Ipv4Net,
    enable_ipv4: bool,
    network6: Option<Ipv6Net>,
    mtu_override: Option<u32>,
    local: Subnets,
}

impl HostGw {
    pub fn new(config: &NetworkConfig, underlay: Underlay) -> HostGw {
        HostGw {
            underlay,
            network: config.network,
            enable_ipv4: config.enable_ipv4,
            network6: config.ipv6.map(|c| c.network),
            mtu_override: config.backend.mtu,
            local: Subnets::default(),
        }
    }
}

/// The host-gw route to a peer, or why there can be none.
pub fn direct_route(
    underlay: &Underlay,
    subnet: Ipv4Net,
    peer: &LeaseRecord,
) -> Result<Route, String> {
    if !underlay.on_link(peer.public_ip) {
        return Err(format!(
            "peer {subnet} at {} is not on this node's L2 subnet {} ({}): host-gw needs direct reachability",
            peer.public_ip,
            underlay.net.trunc(),
            underlay.link.name
        ));
    }
    Ok(Route::new(subnet)
        .via(peer.public_ip)
        .dev(underlay.link.index))
}

/// [`direct_route`] for IPv6: via the peer's `PublicIPv6`.
pub fn direct_route6(
    underlay: &Underlay,
    subnet: Ipv6Net,
    peer: &LeaseRecord,
) -> Result<Route, String> {
    let Some(gw) = peer.public_ipv6 else {
        return Err(format!("peer {subnet} has no PublicIPv6"));
    };
    if !underlay.on_link6(gw) {
        return Err(format!(
            "peer {subnet} at {gw} is not on this node's IPv6 L2 subnet {} ({}): host-gw needs direct reachability",
            underlay
                .net6
                .map_or_else(|| "(none)".to_string(), |n| n.trunc().to_string()),
            underlay.link.name
        ));
    }
    Ok(Route::new(subnet)
        .via(IpAddr::V6(gw))
        .dev(underlay.link.index))
}

/// The overlay networks whose twill routes a backend reconciles.
pub(crate) fn networks(
    network: Ipv4Net,
    enable_ipv4: bool,
    network6: Option<Ipv6Net>,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    if enable_ipv4 {
        out.push(IpNet::V4(network));
    }
    out.extend(network6.map(IpNet::V6));
    out
}

fn behind_nat(public: &str, iface: &str) -> twill_netkit::Error {
    twill_netkit::Error::Invalid(format!(
        "the public IP {public} differs from the interface's address {iface}: that is a NAT, \
         which host-gw cannot route through (peers route to the public IP on their own link); \
         use vxlan, or drop --public-ip"
    ))
}

impl Backend for HostGw {
    fn kind(&self) -> BackendType {
        BackendType::HostGw
    }
    fn mtu(&self) -> u32 {
        self.mtu_override.unwrap_or(self.underlay.link.mtu)
    }
    fn record(&self) -> LeaseRecord {
        LeaseRecord {
            public_ipv6: self.network6.and(self.underlay.public_ipv6),
            ..LeaseRecord::new(
                if self.enable_ipv4 {
                    self.underlay.public_ip
                } else {
                    std::net::Ipv4Addr::UNSPECIFIED
                },
                BackendType::HostGw,
            )
        }
    }
    async fn init(&mut self, _nl: &Netlink) -> twill_netkit::Result<()> {
        // Peers route this node's subnet via its PublicIP on their own L2: an address behind
        // a NAT is not on it, and every peer would blackhole the subnet. Flannel refuses too.
        let u = &self.underlay;
        if self.enable_ipv4 && u.public_ip != u.net.addr() {
            return Err(behind_nat(
                &u.public_ip.to_string(),
                &u.net.addr().to_string(),
            ));
        }
        if self.network6.is_some()
            && let (Some(public), Some(net)) = (u.public_ipv6, u.net6)
            && public != net.addr()
        {
            return Err(behind_nat(&public.to_string(), &net.addr().to_string()));
        }
        Ok(())
    }
    async fn set_local_subnet(
        &mut self,
        _nl: &Netlink,
        subnet: Subnets,
    ) -> twill_netkit::Result<()> {
        self.local = subnet;
        Ok(())
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        let mut errors = ApplyErrors::default();
        let mut desired = Vec::new();
        for (subnet, rec) in super::by_v4(peers, self.network, self.local.v4) {
            if rec.backend != BackendType::HostGw {
                continue;
            }
            match direct_route(&self.underlay, subnet, rec) {
                Ok(r) => desired.push(r),
                Err(e) => errors.push(e),
            }
        }
        for (subnet, rec) in super::by_v6(peers, self.network6, self.local.v6) {
            if rec.backend != BackendType::HostGw {
                continue;
            }
            match direct_route6(&self.underlay, subnet, rec) {
                Ok(r) => desired.push(r),
                Err(e) => errors.push(e),
            }
        }
        let nets = networks(self.network, self.enable_ipv4, self.network6);
        routes::reconcile_all(nl, &nets, &desired, &mut errors).await;
        errors
    }
}

//! host-gw: a route to each peer's subnet via the peer's public IP on the underlay link, for
//! each family (IPv6: via the peer's `PublicIPv6`). Needs L2 adjacency: a peer on another
//! subnet is reported, not routed (Flannel's rule).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_netkit::{Netlink, RTPROT_TWILL, Route};

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

/// Where the underlay reaches hosts directly, as the kernel sees it: the prefix of its own
/// address and every route via the link without a gateway. The address alone is not enough:
/// a DHCPv6 address is a /128 whose on-link /64 comes from a router advertisement as such a
/// route (an IPv4 /32 may come with one too), and the kernel accepts a route via any address
/// in them, as Flannel relies on.
#[derive(Clone, Debug, Default)]
pub struct OnLink {
    link: String,
    nets: Vec<IpNet>,
}

impl OnLink {
    /// From the underlay's addresses and the main table's `routes`.
    pub fn of(underlay: &Underlay, routes: &[Route]) -> OnLink {
        let mut nets = Vec::new();
        // No IPv4 address on the link (IPv6-only, or only `--public-ip`): `net` is 0.0.0.0/0.
        if !underlay.public_ip.is_unspecified() && !underlay.net.addr().is_unspecified() {
            nets.push(IpNet::V4(underlay.net.trunc()));
        }
        nets.extend(underlay.net6.map(|n| IpNet::V6(n.trunc())));
        for r in routes {
            // A default route without a gateway would make every address "on link": keep
            // to what is really connected. twill's own routes all have gateways or other
            // devices, and are skipped anyway.
            if r.oif == Some(underlay.link.index)
                && r.gateway.is_none()
                && r.dst.prefix_len() > 0
                && r.protocol != RTPROT_TWILL
                && !nets.contains(&r.dst.trunc())
            {
                nets.push(r.dst.trunc());
            }
        }
        OnLink {
            link: underlay.link.name.clone(),
            nets,
        }
    }

    /// [`OnLink::of`] with the kernel's routes.
    pub async fn read(nl: &Netlink, underlay: &Underlay) -> twill_netkit::Result<OnLink> {
        Ok(OnLink::of(underlay, &nl.list_routes(None).await?))
    }

    /// Whether `ip` is reached directly on the underlay link.
    pub fn contains(&self, ip: IpAddr) -> bool {
        !ip.is_unspecified() && self.nets.iter().any(|n| n.contains(&ip))
    }

    fn describe(&self, v4: bool) -> String {
        let nets: Vec<String> = self
            .nets
            .iter()
            .filter(|n| n.addr().is_ipv4() == v4)
            .map(ToString::to_string)
            .collect();
        if nets.is_empty() {
            "(none)".to_string()
        } else {
            nets.join(", ")
        }
    }
}

/// The host-gw route to a peer, or why there can be none.
pub fn direct_route(
    underlay: &Underlay,
    on_link: &OnLink,
    subnet: Ipv4Net,
    peer: &LeaseRecord,
) -> Result<Route, String> {
    if !on_link.contains(IpAddr::V4(peer.public_ip)) {
        return Err(format!(
            "peer {subnet} at {} is not on this node's L2 subnet {} ({}): host-gw needs direct reachability",
            peer.public_ip,
            on_link.describe(true),
            on_link.link
        ));
    }
    Ok(Route::new(subnet)
        .via(peer.public_ip)
        .dev(underlay.link.index))
}

/// [`direct_route`] for IPv6: via the peer's `PublicIPv6`.
pub fn direct_route6(
    underlay: &Underlay,
    on_link: &OnLink,
    subnet: Ipv6Net,
    peer: &LeaseRecord,
) -> Result<Route, String> {
    let Some(gw) = peer.public_ipv6 else {
        return Err(format!("peer {subnet} has no PublicIPv6"));
    };
    if !on_link.contains(IpAddr::V6(gw)) {
        return Err(format!(
            "peer {subnet} at {gw} is not on this node's IPv6 L2 subnet {} ({}): host-gw needs direct reachability",
            on_link.describe(false),
            on_link.link
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
        // One dump for both the on-link test and the reconcile. Without the kernel's routes,
        // peers reached through an on-link route would look unreachable and lose theirs:
        // this round changes nothing.
        let table = match nl.list_routes(None).await {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                return errors;
            }
        };
        let on_link = OnLink::of(&self.underlay, &table);
        for (subnet, rec) in super::by_v4(peers, self.network, self.local.v4) {
            if rec.backend != BackendType::HostGw {
                continue;
            }
            match direct_route(&self.underlay, &on_link, subnet, rec) {
                Ok(r) => desired.push(r),
                Err(e) => errors.push(e),
            }
        }
        for (subnet, rec) in super::by_v6(peers, self.network6, self.local.v6) {
            if rec.backend != BackendType::HostGw {
                continue;
            }
            match direct_route6(&self.underlay, &on_link, subnet, rec) {
                Ok(r) => desired.push(r),
                Err(e) => errors.push(e),
            }
        }
        let nets = networks(self.network, self.enable_ipv4, self.network6);
        routes::reconcile_listed(nl, &nets, &table, &desired, &mut errors).await;
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay() -> Underlay {
        Underlay::for_tests(32, 128)
    }

    fn route(dst: &str, gw: Option<&str>, oif: u32, protocol: u8) -> Route {
        let mut r = Route::new(dst.parse::<IpNet>().unwrap()).dev(oif);
        if let Some(g) = gw {
            r = r.via(g.parse::<IpAddr>().unwrap());
        }
        r.protocol = protocol;
        r
    }

    #[test]
    fn on_link_takes_the_links_connected_routes_not_gateways_defaults_or_other_links() {
        let u = underlay();
        let routes = [
            route("fd31::/64", None, 2, 9),
            route("172.31.0.0/24", None, 2, 4),
            route("0.0.0.0/0", None, 2, 4),
            route("192.168.5.0/24", Some("172.31.0.1"), 2, 4),
            route("10.9.0.0/16", None, 3, 4),
            route("10.5.2.0/24", None, 2, RTPROT_TWILL),
        ];
        let o = OnLink::of(&u, &routes);
        for (ip, want) in [
            ("172.31.0.11", true),
            ("172.31.0.12", true),
            ("fd31::c", true),
            ("192.168.5.9", false),
            ("10.9.0.1", false),
            ("10.5.2.1", false),
            ("8.8.8.8", false),
            ("0.0.0.0", false),
        ] {
            assert_eq!(o.contains(ip.parse().unwrap()), want, "{ip}");
        }
        let no_ipv4 = Underlay {
            net: Ipv4Net::default(),
            ..underlay()
        };
        assert!(!OnLink::of(&no_ipv4, &[]).contains("8.8.8.8".parse().unwrap()));
        let only_addresses = OnLink::of(&u, &[]);
        assert!(!only_addresses.contains("fd31::c".parse().unwrap()));
        assert!(only_addresses.contains("fd31::b".parse().unwrap()));
    }
}

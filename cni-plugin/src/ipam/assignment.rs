//! What an ADD got from IPAM (built-in or delegated), in both families: the addresses with
//! their gateways, the routes and DNS, and what follows from them (default routes, the
//! bridge's gateway addresses).

use std::net::IpAddr;

use ipnet::IpNet;
use twill_netkit::subnet_env::SubnetEnv;

use super::builtin::Range;
use crate::config::Dns;
use crate::result::{AddResult, RouteSpec};

/// The addresses an ADD got (the built-in IPAM gives IPv4 first, at most one per family),
/// and what came with them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub ips: Vec<Assigned>,
    pub routes: Vec<RouteSpec>,
    pub dns: Dns,
}

/// One address with its prefix length and its family's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub ip: IpNet,
    pub gateway: Option<IpAddr>,
}

/// The built-in IPAM's ranges: the node's IPv4 subnet, then its IPv6 subnet (each family the
/// subnet file has), the first address of each the gateway; the index names the range's
/// round-robin marker as host-local numbers them for Flannel's `ranges` list.
pub fn builtin_ranges(se: &SubnetEnv) -> Vec<Range> {
    let mut ranges = Vec::new();
    if let (Some(p), Some(gw)) = (se.ipv4, se.gateway()) {
        ranges.push(Range {
            subnet: p.subnet.into(),
            gateway: gw.into(),
            index: ranges.len(),
        });
    }
    if let (Some(p), Some(gw)) = (se.ipv6, se.gateway_v6()) {
        ranges.push(Range {
            subnet: p.subnet.into(),
            gateway: gw.into(),
            index: ranges.len(),
        });
    }
    ranges
}

impl Assignment {
    /// The built-in IPAM's answer: `ips[i]` from `ranges[i]`, and the pod network of each
    /// family via its gateway (as Flannel's CNI plugin hands host-local `FLANNEL_NETWORK`
    /// and `FLANNEL_IPV6_NETWORK`).
    pub fn from_builtin(se: &SubnetEnv, ranges: &[Range], ips: &[IpAddr]) -> Assignment {
        let ips = ranges
            .iter()
            .zip(ips)
            .map(|(r, ip)| Assigned {
                ip: IpNet::new(*ip, r.subnet.prefix_len()).unwrap_or(r.subnet),
                gateway: Some(r.gateway),
            })
            .collect();
        let mut routes = Vec::new();
        if let Some(p) = se.ipv4 {
            routes.push(RouteSpec::new(
                p.network.into(),
                se.gateway().map(IpAddr::V4),
            ));
        }
        if let Some(p) = se.ipv6 {
            routes.push(RouteSpec::new(
                p.network.into(),
                se.gateway_v6().map(IpAddr::V6),
            ));
        }
        Assignment {
            ips,
            routes,
            dns: Dns::default(),
        }
    }

    /// A delegated IPAM plugin's answer, every address of both families.
    pub fn from_result(r: AddResult) -> Assignment {
        Assignment {
            ips: r
                .ips
                .iter()
                .map(|i| Assigned {
                    ip: i.address,
                    gateway: i.gateway,
                })
                .collect(),
            routes: r.routes,
            dns: r.dns,
        }
    }

    /// Gives an address without a gateway its subnet's first address, as the reference
    /// bridge does when it is the gateway (an IPAM plugin may leave the gateway out: the
    /// static plugin given bare addresses). Not when that is the address itself or lies
    /// outside its prefix (a /32): a gateway there would clash or be unreachable.
    pub fn default_gateways(&mut self) {
        for a in self.ips.iter_mut().filter(|a| a.gateway.is_none()) {
            let first = match a.ip.network() {
                IpAddr::V4(n) => u32::from(n)
                    .checked_add(1)
                    .map(|v| IpAddr::from(v.to_be_bytes())),
                IpAddr::V6(n) => u128::from(n)
                    .checked_add(1)
                    .map(|v| IpAddr::from(v.to_be_bytes())),
            };
            a.gateway = first.filter(|g| a.ip.contains(g) && *g != a.ip.addr());
        }
    }

    /// The gateway of each family that has one (first address of the family wins): the one
    /// routes without a gateway of their own go via, as in the reference `ConfigureIface`.
    pub fn gateways(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for gw in self.ips.iter().filter_map(|a| a.gateway) {
            if !out.iter().any(|g| g.is_ipv4() == gw.is_ipv4()) {
                out.push(gw);
            }
        }
        out
    }

    /// A default route via the gateway of each family unless IPAM gave one of that family.
    /// A default route IPAM puts into another table (policy routing) does not count: the
    /// main table would be left without one.
    pub fn add_default_routes(&mut self) {
        for gw in self.gateways() {
            let has_default = self.routes.iter().any(|r| {
                r.dst.prefix_len() == 0
                    && r.dst.addr().is_ipv4() == gw.is_ipv4()
                    && r.in_main_table()
            });
            if !has_default {
                let dst = match gw {
                    IpAddr::V4(_) => IpNet::V4(Default::default()),
                    IpAddr::V6(_) => IpNet::V6(Default::default()),
                };
                self.routes.push(RouteSpec::new(dst, Some(gw)));
            }
        }
    }

    /// Every address's gateway on the bridge, with that address's prefix length, as the
    /// reference bridge adds them: a container with addresses in two subnets of a family
    /// needs the gateway of each on the bridge to reach beyond the second.
    pub fn bridge_addresses(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        for a in &self.ips {
            if let Some(gw) = a.gateway
                && let Ok(net) = IpNet::new(gw, a.ip.prefix_len())
                && !out.contains(&net)
            {
                out.push(net);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const DUAL: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:244::/32\nFLANNEL_IPV6_SUBNET=fd00:244:7::1/64\nFLANNEL_MTU=1450\n";

    #[test]
    fn ranges_follow_the_subnet_file() {
        let dual = SubnetEnv::parse(DUAL).unwrap();
        let r = builtin_ranges(&dual);
        assert_eq!(
            r.iter()
                .map(|r| (r.subnet, r.gateway, r.index))
                .collect::<Vec<_>>(),
            [
                (net("10.244.7.0/24"), ip("10.244.7.1"), 0),
                (net("fd00:244:7::/64"), ip("fd00:244:7::1"), 1)
            ]
        );
        let v6 = SubnetEnv::parse(
            "FLANNEL_IPV6_NETWORK=fd00:245::/32\nFLANNEL_IPV6_SUBNET=fd00:245:3::1/64\nFLANNEL_MTU=1450\n",
        )
        .unwrap();
        let r = builtin_ranges(&v6);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].subnet, r[0].index), (net("fd00:245:3::/64"), 0));
    }

    #[test]
    fn both_families_get_routes_defaults_and_bridge_addresses() {
        let se = SubnetEnv::parse(DUAL).unwrap();
        let ranges = builtin_ranges(&se);
        let mut a =
            Assignment::from_builtin(&se, &ranges, &[ip("10.244.7.5"), ip("fd00:244:7::5")]);
        a.add_default_routes();
        let routes: Vec<(IpNet, Option<IpAddr>)> = a.routes.iter().map(|r| (r.dst, r.gw)).collect();
        assert_eq!(
            routes,
            [
                (net("10.244.0.0/16"), Some(ip("10.244.7.1"))),
                (net("fd00:244::/32"), Some(ip("fd00:244:7::1"))),
                (net("0.0.0.0/0"), Some(ip("10.244.7.1"))),
                (net("::/0"), Some(ip("fd00:244:7::1"))),
            ]
        );
        assert_eq!(
            a.bridge_addresses(),
            [net("10.244.7.1/24"), net("fd00:244:7::1/64")]
        );
        // A default of one family from IPAM does not stop the other's.
        let mut d = Assignment {
            routes: vec![RouteSpec::new(net("::/0"), None)],
            ..a.clone()
        };
        d.add_default_routes();
        assert_eq!(
            d.routes.iter().filter(|r| r.dst.prefix_len() == 0).count(),
            2,
            "{:?}",
            d.routes
        );
    }

    #[test]
    fn a_default_route_in_another_table_leaves_the_main_one_to_add() {
        let se = SubnetEnv::parse(DUAL).unwrap();
        let ranges = builtin_ranges(&se);
        let mut a = Assignment::from_builtin(&se, &ranges, &[ip("10.244.7.5")]);
        a.routes = vec![RouteSpec {
            table: Some(100),
            ..RouteSpec::new(net("0.0.0.0/0"), Some(ip("10.244.7.1")))
        }];
        a.add_default_routes();
        assert!(
            a.routes
                .iter()
                .any(|r| r.dst == net("0.0.0.0/0") && r.in_main_table()),
            "{:?}",
            a.routes
        );
    }

    #[test]
    fn every_gateway_goes_on_the_bridge_once() {
        let assigned = |ip: &str, gw: &str| Assigned {
            ip: net(ip),
            gateway: Some(self::ip(gw)),
        };
        let a = Assignment {
            ips: vec![
                assigned("10.95.1.5/24", "10.95.1.1"),
                assigned("10.95.1.6/24", "10.95.1.1"),
                assigned("10.95.2.5/24", "10.95.2.1"),
                assigned("fd00:95:2::5/64", "fd00:95:2::1"),
            ],
            ..Assignment::default()
        };
        assert_eq!(
            a.bridge_addresses(),
            [
                net("10.95.1.1/24"),
                net("10.95.2.1/24"),
                net("fd00:95:2::1/64")
            ]
        );
        assert_eq!(a.gateways(), [ip("10.95.1.1"), ip("fd00:95:2::1")]);
    }
}

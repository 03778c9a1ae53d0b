//! Finding the underlay interface and public IPs, in flanneld's order: `--iface` (names or
//! addresses, first that exists wins), then `--iface-regex`, then `--iface-can-reach` (the
//! interface of the kernel's route to that address, whose source address is the preferred
//! public one); with none of them the default route's interface (IPv4's, else IPv6's).
//! `--public-ip` or the interface's first IPv4 address; `--public-ipv6` or its first global
//! IPv6 address. The interface address (what udp and wireguard bind, vxlan's `local`) is
//! chosen apart from the public one (`iface_net`). Which families the network needs is
//! checked once the config is known ([`check_families`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_netkit::{Link, Netlink, RouteGet};

use crate::backend::Underlay;
use crate::netconf::NetworkConfig;

/// Whether an IPv6 address can be a public one (not link-local, loopback or unspecified).
fn global6(ip: Ipv6Addr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified() && (ip.segments()[0] & 0xffc0) != 0xfe80
}

/// A link's IPv4 addresses and global IPv6 addresses.
async fn addrs(nl: &Netlink, index: u32) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in nl.list_addresses(index).await.unwrap_or_default() {
        match a {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) if global6(n.addr()) => v6.push(n),
            IpNet::V6(_) => {}
        }
    }
    (v4, v6)
}

/// Which flag chose the underlay interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChosenBy {
    /// One of `--iface`'s names or addresses.
    Iface,
    /// One of `--iface-regex`'s expressions.
    IfaceRegex,
    /// `--iface-can-reach` with this address.
    CanReach(IpAddr),
    /// None was given: the default route's interface.
    DefaultRoute,
}

/// The interface address of one family, as flanneld's `IfaceAddr` (what udp and wireguard
/// bind and vxlan's `local`), with its prefix on the link: the first of `wants` that is on
/// the link (in find's order: --public-ip, the --iface address, the route's source). A
/// route's source that is not on the link (`ip route add … dev eth1 src <eth0's address>`)
/// is the kernel's own address all the same and the one it sends from, so it is the
/// interface address as it is flanneld's, as a host prefix (it says nothing about what
/// the link reaches). Else the link's first address.
fn iface_net<N: Copy, A: Copy + PartialEq>(
    have: &[N],
    wants: &[Option<A>],
    route_src: Option<A>,
    addr: impl Fn(&N) -> A,
    host: impl Fn(A) -> N,
) -> Option<N> {
    wants
        .iter()
        .flatten()
        .find_map(|&w| have.iter().find(|n| addr(n) == w).copied())
        .or(route_src.map(host))
        .or(have.first().copied())
}

/// Resolves the underlay from the flags, in flanneld's order: each `--iface`, then each
/// `--iface-regex`, then `--iface-can-reach`; the default route's interface only when none of
/// them is given. Also says which of them chose.
pub async fn find(
    nl: &Netlink,
    ifaces: &[String],
    iface_regex: &[regex::Regex],
    can_reach: Option<IpAddr>,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> anyhow::Result<(Underlay, ChosenBy)> {
    let mut chosen: Option<Link> = None;
    let mut by = ChosenBy::DefaultRoute;
    // The source address of the route to --iface-can-reach's address, when that chose.
    let mut route_src: Option<IpAddr> = None;
    // Why each flag given found nothing, in the order tried.
    let mut misses: Vec<String> = Vec::new();
    if !ifaces.is_empty() {
        chosen = by_name_or_address(nl, ifaces).await?;
        by = ChosenBy::Iface;
        if chosen.is_none() {
            misses.push(format!(
                "none of --iface {} exists with an IPv4 or global IPv6 address in this network namespace",
                ifaces.join(",")
            ));
        }
    }
    if chosen.is_none() && !iface_regex.is_empty() {
        chosen = by_regex(nl, iface_regex).await?;
        by = ChosenBy::IfaceRegex;
        if chosen.is_none() {
            let list: Vec<&str> = iface_regex.iter().map(|r| r.as_str()).collect();
            misses.push(format!(
                "no interface with an IPv4 or global IPv6 address matches --iface-regex {} in this network namespace",
                list.join(",")
            ));
        }
    }
    if chosen.is_none()
        && let Some(target) = can_reach
    {
        match by_route(nl, target).await? {
            Ok((link, src)) => {
                tracing::info!(iface = %link.name, target = %target, src = ?src, "--iface-can-reach: the route to the target goes out of this interface");
                chosen = Some(link);
                by = ChosenBy::CanReach(target);
                route_src = src;
            }
            Err(why) => misses.push(why),
        }
    }
    if ifaces.is_empty() && iface_regex.is_empty() && can_reach.is_none() {
        chosen = by_default_route(nl).await?;
    }
    let Some(link) = chosen else {
        if misses.is_empty() {
            anyhow::bail!(
                "no default route to pick the underlay interface from: pass --iface NAME, --iface IP or --iface-can-reach IP"
            );
        }
        if misses.len() == 1 {
            anyhow::bail!("{}", misses[0]);
        }
        anyhow::bail!(
            "no underlay interface: {} (tried in that order, as flanneld does)",
            misses.join("; ")
        );
    };
    let (v4, v6) = addrs(nl, link.index).await;
    // An --iface given as an address, and the source of the route to --iface-can-reach's
    // address: the interface address of their family when on the link.
    let iface_ip = |f: fn(&IpAddr) -> bool| {
        ifaces
            .iter()
            .filter_map(|i| i.parse::<IpAddr>().ok())
            .find(f)
    };
    let iface4 = match iface_ip(IpAddr::is_ipv4) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let iface6 = match iface_ip(IpAddr::is_ipv6) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    let src4 = match route_src {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let src6 = match route_src {
        Some(IpAddr::V6(a)) if global6(a) => Some(a),
        _ => None,
    };
    let net = iface_net(
        &v4,
        &[public_ip, iface4, src4],
        src4,
        |n| n.addr(),
        |a| Ipv4Net::new(a, 32).unwrap_or_default(),
    );
    let net6 = iface_net(
        &v6,
        &[public_ipv6, iface6, src6],
        src6,
        |n| n.addr(),
        |a| Ipv6Net::new(a, 128).unwrap_or_default(),
    );
    let bound = [
        net.map(|n| IpAddr::V4(n.addr())),
        net6.map(|n| IpAddr::V6(n.addr())),
    ];
    let on_link = |a: IpAddr| match a {
        IpAddr::V4(a) => v4.iter().any(|n| n.addr() == a),
        IpAddr::V6(a) => v6.iter().any(|n| n.addr() == a),
    };
    for src in [src4.map(IpAddr::V4), src6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
    {
        if bound.contains(&Some(src)) && !on_link(src) {
            tracing::info!(iface = %link.name, src = %src, "--iface-can-reach: the route's source is another interface's address; sending from and binding it all the same, as flanneld does");
        }
    }
    let underlay = Underlay {
        // Else the interface address: the route's source when --iface-can-reach chose.
        public_ip: public_ip
            .or(net.map(|n| n.addr()))
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        net: net.unwrap_or_default(),
        public_ipv6: public_ipv6.or(net6.map(|n| n.addr())),
        net6,
        link,
    };
    Ok((underlay, by))
}

/// The first of `ifaces` (names or addresses) that exists with an IPv4 or global IPv6
/// address.
async fn by_name_or_address(nl: &Netlink, ifaces: &[String]) -> anyhow::Result<Option<Link>> {
    for want in ifaces {
        if let Ok(ip) = want.parse::<IpAddr>() {
            for l in nl.list_links().await? {
                let (v4, v6) = addrs(nl, l.index).await;
                let has = match ip {
                    IpAddr::V4(ip) => v4.iter().any(|n| n.addr() == ip),
                    IpAddr::V6(ip) => v6.iter().any(|n| n.addr() == ip),
                };
                if has {
                    return Ok(Some(l));
                }
            }
        } else if let Some(l) = nl.link_by_name(want).await? {
            let (v4, v6) = addrs(nl, l.index).await;
            if v4.is_empty() && v6.is_empty() {
                tracing::warn!(iface = %want, "interface has no IPv4 or global IPv6 address: trying the next --iface");
            } else {
                return Ok(Some(l));
            }
        }
    }
    Ok(None)
}

/// The interface of the default route with an address: IPv4's first, then IPv6's (an
/// IPv6-only node has only that).
async fn by_default_route(nl: &Netlink) -> anyhow::Result<Option<Link>> {
    let routes = nl.list_routes(None).await?;
    let mut defaults: Vec<_> = routes.iter().filter(|r| r.dst.prefix_len() == 0).collect();
    defaults.sort_by_key(|r| r.dst.addr().is_ipv6());
    for r in defaults {
        if let Some(oif) = r.oif
            && let Some(l) = nl.link_by_index(oif).await?
        {
            let (v4, v6) = addrs(nl, l.index).await;
            if !v4.is_empty() || !v6.is_empty() {
                return Ok(Some(l));
            }
        }
    }
    Ok(None)
}

/// `--iface-can-reach`, as flanneld's `GetInterfaceBySpecificIPRouting`: the interface the
/// kernel's route to `target` goes out of (RTM_GETROUTE, `ip route get`) and the route's
/// source address. Why there is none is the inner error (a failed netlink request the outer).
async fn by_route(
    nl: &Netlink,
    target: IpAddr,
) -> anyhow::Result<Result<(Link, Option<IpAddr>), String>> {
    let flag = format!("--iface-can-reach {target}");
    let route = match nl.route_get(target).await? {
        RouteGet::Out(route) => route,
        RouteGet::Local => {
            return Ok(Err(format!(
                "{flag}: {target} is an address of this node, so no interface leads to it: give the address of a peer or gateway"
            )));
        }
        RouteGet::Refused(why) => {
            return Ok(Err(format!(
                "{flag}: the kernel has {why} to {target} in this network namespace (`ip route get {target}` says the same)"
            )));
        }
    };
    let link = match route.oif {
        Some(oif) => nl.link_by_index(oif).await?,
        None => None,
    };
    let Some(link) = link else {
        return Ok(Err(format!(
            "{flag}: the route to {target} names no interface that exists"
        )));
    };
    Ok(Ok((link, route.src)))
}

/// The first interface with an address that one of `regexes` matches, as Flannel's
/// `--iface-regex`: per expression, first against every interface's addresses, then against
/// the names.
async fn by_regex(nl: &Netlink, regexes: &[regex::Regex]) -> anyhow::Result<Option<Link>> {
    let mut links = Vec::new();
    for l in nl.list_links().await? {
        let (v4, v6) = addrs(nl, l.index).await;
        if v4.is_empty() && v6.is_empty() {
            continue;
        }
        let ips: Vec<String> = v4
            .iter()
            .map(|n| n.addr().to_string())
            .chain(v6.iter().map(|n| n.addr().to_string()))
            .collect();
        links.push((l, ips));
    }
    for re in regexes {
        let by_ip = links
            .iter()
            .find(|(_, ips)| ips.iter().any(|ip| re.is_match(ip)));
        let by_name = || links.iter().find(|(l, _)| re.is_match(&l.name));
        if let Some((l, _)) = by_ip.or_else(by_name) {
            return Ok(Some(l.clone()));
        }
    }
    Ok(None)
}

/// Checks that the underlay has a public address for every family the network leases, and,
/// when `--iface-can-reach` chose the interface, that its address is of a family the network
/// leases when it leases IPv4 only (flanneld would take an IPv6 route's source address for
/// its IPv4 public IP). When another flag chose, that address is not looked at, as flanneld
/// does not.
pub fn check_families(
    underlay: &Underlay,
    config: &NetworkConfig,
    chosen_by: ChosenBy,
) -> anyhow::Result<()> {
    if let ChosenBy::CanReach(target @ IpAddr::V6(_)) = chosen_by
        && config.ipv6.is_none()
    {
        anyhow::bail!(
            "--iface-can-reach {target} is an IPv6 address but the network leases IPv4 subnets only (no \"EnableIPv6\"): give an IPv4 address the underlay interface reaches, or set \"EnableIPv6\": true"
        );
    }
    if config.enable_ipv4 && underlay.public_ip.is_unspecified() {
        anyhow::bail!(
            "the network leases IPv4 subnets but {} has no IPv4 address: pass --public-ip or another --iface (or set \"EnableIPv4\": false for an IPv6-only network)",
            underlay.link.name
        );
    }
    if config.ipv6.is_some() && underlay.public_ipv6.is_none() {
        anyhow::bail!(
            "the network has EnableIPv6 but {} has no global IPv6 address: pass --public-ipv6 or another --iface",
            underlay.link.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_iface_can_reach_address_needs_ipv6_in_the_network_when_it_chose() {
        let underlay = Underlay::for_tests(24, 64);
        let v4 = NetworkConfig::parse(r#"{"Network": "10.5.0.0/16"}"#).unwrap();
        let dual = NetworkConfig::parse(
            r#"{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48",
                "Backend": {"Type": "vxlan"}}"#,
        )
        .unwrap();
        let v6 = ChosenBy::CanReach("fd31::1".parse().unwrap());
        let e = check_families(&underlay, &v4, v6).unwrap_err();
        let said = e.to_string();
        assert!(
            said.starts_with("--iface-can-reach fd31::1 is an IPv6 address")
                && said.contains("IPv4 subnets only"),
            "{said}"
        );
        check_families(&underlay, &dual, v6).unwrap();
        let v4_target = ChosenBy::CanReach("172.31.0.1".parse().unwrap());
        check_families(&underlay, &v4, v4_target).unwrap();
        // --iface, --iface-regex or the default route chose: the address is not looked at.
        for by in [
            ChosenBy::Iface,
            ChosenBy::IfaceRegex,
            ChosenBy::DefaultRoute,
        ] {
            check_families(&underlay, &v4, by).unwrap();
        }
    }

    #[test]
    fn the_interface_address_is_the_first_wanted_on_the_link_else_the_routes_source() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let ip = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        let have = [net("10.99.0.5/24"), net("10.99.1.5/24")];
        let pick = |wants: &[Option<Ipv4Addr>], src: Option<Ipv4Addr>| {
            iface_net(
                &have,
                wants,
                src,
                |n| n.addr(),
                |a| Ipv4Net::new(a, 32).unwrap(),
            )
        };
        // The route's source on the link.
        assert_eq!(
            pick(&[None, None, ip("10.99.1.5")], ip("10.99.1.5")),
            Some(net("10.99.1.5/24"))
        );
        // A --public-ip behind a NAT: the route's source, not the link's first.
        assert_eq!(
            pick(&[ip("203.0.113.7"), None, ip("10.99.1.5")], ip("10.99.1.5")),
            Some(net("10.99.1.5/24"))
        );
        // A --public-ip on the link wins over the route's source.
        assert_eq!(
            pick(&[ip("10.99.0.5"), None, ip("10.99.1.5")], ip("10.99.1.5")),
            Some(net("10.99.0.5/24"))
        );
        // The route's source on another link: it all the same, as a host prefix.
        assert_eq!(
            pick(&[None, None, ip("10.98.0.5")], ip("10.98.0.5")),
            Some(net("10.98.0.5/32"))
        );
        assert_eq!(
            pick(&[ip("203.0.113.7"), None, ip("10.98.0.5")], ip("10.98.0.5")),
            Some(net("10.98.0.5/32"))
        );
        // Nothing wanted on the link and no route: the first.
        assert_eq!(pick(&[ip("203.0.113.7"), None, None], None), Some(have[0]));
        assert_eq!(
            iface_net(
                &[],
                &[ip("203.0.113.7")],
                None,
                |n: &Ipv4Net| n.addr(),
                |a| { Ipv4Net::new(a, 32).unwrap() }
            ),
            None
        );
    }
}

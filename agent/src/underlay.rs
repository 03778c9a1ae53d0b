//! Finding the underlay interface and public IPs: `--iface` (names or addresses, first that
//! exists wins), else the default route's interface (IPv4's, else IPv6's); `--public-ip` or the
//! interface's first IPv4 address; `--public-ipv6` or its first global IPv6 address. Which
//! families the network needs is checked once the config is known ([`check_families`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_netkit::{Link, Netlink};

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

/// The address among `have` that is `want`, else the first.
fn pick<N: Copy, A: PartialEq>(have: &[N], want: Option<A>, addr: impl Fn(&N) -> A) -> Option<N> {
    want.and_then(|w| have.iter().find(|n| addr(n) == w).copied())
        .or(have.first().copied())
}

/// Resolves the underlay from the flags.
pub async fn find(
    nl: &Netlink,
    ifaces: &[String],
    iface_regex: &[regex::Regex],
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> anyhow::Result<Underlay> {
    let mut chosen: Option<Link> = None;
    if ifaces.is_empty() && !iface_regex.is_empty() {
        chosen = Some(by_regex(nl, iface_regex).await?);
    }
    for want in ifaces {
        if let Ok(ip) = want.parse::<IpAddr>() {
            for l in nl.list_links().await? {
                let (v4, v6) = addrs(nl, l.index).await;
                let has = match ip {
                    IpAddr::V4(ip) => v4.iter().any(|n| n.addr() == ip),
                    IpAddr::V6(ip) => v6.iter().any(|n| n.addr() == ip),
                };
                if has {
                    chosen = Some(l);
                    break;
                }
            }
        } else if let Some(l) = nl.link_by_name(want).await? {
            let (v4, v6) = addrs(nl, l.index).await;
            if v4.is_empty() && v6.is_empty() {
                tracing::warn!(iface = %want, "interface has no IPv4 or global IPv6 address: trying the next --iface");
            } else {
                chosen = Some(l);
            }
        }
        if chosen.is_some() {
            break;
        }
    }
    if chosen.is_none() && ifaces.is_empty() && iface_regex.is_empty() {
        let routes = nl.list_routes(None).await?;
        // The IPv4 default route first, then IPv6's (an IPv6-only node has only that).
        let mut defaults: Vec<_> = routes.iter().filter(|r| r.dst.prefix_len() == 0).collect();
        defaults.sort_by_key(|r| r.dst.addr().is_ipv6());
        for r in defaults {
            if let Some(oif) = r.oif
                && let Some(l) = nl.link_by_index(oif).await?
            {
                let (v4, v6) = addrs(nl, l.index).await;
                if !v4.is_empty() || !v6.is_empty() {
                    chosen = Some(l);
                    break;
                }
            }
        }
    }
    let Some(link) = chosen else {
        if ifaces.is_empty() {
            anyhow::bail!(
                "no default route to pick the underlay interface from: pass --iface NAME or --iface IP"
            );
        }
        anyhow::bail!(
            "none of --iface {} exists with an IPv4 or global IPv6 address in this network namespace",
            ifaces.join(",")
        );
    };
    let (v4, v6) = addrs(nl, link.index).await;
    // An --iface given as an address is the preferred public address of its family.
    let iface_ip = |f: fn(&IpAddr) -> bool| {
        ifaces
            .iter()
            .filter_map(|i| i.parse::<IpAddr>().ok())
            .find(f)
    };
    let want4 = public_ip.or(iface_ip(IpAddr::is_ipv4).and_then(|a| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }));
    let want6 = public_ipv6.or(iface_ip(IpAddr::is_ipv6).and_then(|a| match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }));
    let net = pick(&v4, want4, |n| n.addr());
    let net6 = pick(&v6, want6, |n| n.addr());
    Ok(Underlay {
        public_ip: public_ip
            .or(net.map(|n| n.addr()))
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        net: net.unwrap_or_default(),
        public_ipv6: public_ipv6.or(net6.map(|n| n.addr())),
        net6,
        link,
    })
}

/// The first interface with an address that one of `regexes` matches, as Flannel's
/// `--iface-regex`: per expression, first against every interface's addresses, then against
/// the names.
async fn by_regex(nl: &Netlink, regexes: &[regex::Regex]) -> anyhow::Result<Link> {
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
            return Ok(l.clone());
        }
    }
    let list: Vec<&str> = regexes.iter().map(|r| r.as_str()).collect();
    anyhow::bail!(
        "no interface with an IPv4 or global IPv6 address matches --iface-regex {} in this network namespace",
        list.join(",")
    )
}

/// Checks that the underlay has a public address for every family the network leases.
pub fn check_families(underlay: &Underlay, config: &NetworkConfig) -> anyhow::Result<()> {
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

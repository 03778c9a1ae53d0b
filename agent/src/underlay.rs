//! Finding the underlay interface and public IP: `--iface` (names or addresses, first that
//! exists wins), else the default route's interface; `--public-ip` or the interface's first
//! IPv4 address.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use twill_netkit::Netlink;

use crate::backend::Underlay;

async fn v4_addrs(nl: &Netlink, index: u32) -> Vec<Ipv4Net> {
    nl.list_addresses(index)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| match a {
            IpNet::V4(v) => Some(v),
            _ => None,
        })
        .collect()
}

/// Resolves the underlay from the flags.
pub async fn find(
    nl: &Netlink,
    ifaces: &[String],
    public_ip: Option<Ipv4Addr>,
) -> anyhow::Result<Underlay> {
    let mut chosen = None;
    for want in ifaces {
        if let Ok(ip) = want.parse::<Ipv4Addr>() {
            for l in nl.list_links().await? {
                if let Some(net) = v4_addrs(nl, l.index)
                    .await
                    .into_iter()
                    .find(|n| n.addr() == ip)
                {
                    chosen = Some((l, net));
                    break;
                }
            }
        } else if let Some(l) = nl.link_by_name(want).await? {
            let addrs = v4_addrs(nl, l.index).await;
            let net = match public_ip {
                Some(p) => addrs
                    .iter()
                    .find(|n| n.addr() == p)
                    .or(addrs.first())
                    .copied(),
                None => addrs.first().copied(),
            };
            match net {
                Some(net) => chosen = Some((l, net)),
                None => {
                    tracing::warn!(iface = %want, "interface has no IPv4 address: trying the next --iface")
                }
            }
        }
        if chosen.is_some() {
            break;
        }
    }
    if chosen.is_none() && ifaces.is_empty() {
        let routes = nl.list_routes(None).await?;
        if let Some(oif) = routes
            .iter()
            .find(|r| r.dst.prefix_len() == 0)
            .and_then(|r| r.oif)
            && let Some(l) = nl.link_by_index(oif).await?
            && let Some(net) = v4_addrs(nl, l.index).await.first().copied()
        {
            chosen = Some((l, net));
        }
    }
    let Some((link, net)) = chosen else {
        if ifaces.is_empty() {
            anyhow::bail!(
                "no default route to pick the underlay interface from: pass --iface NAME or --iface IP"
            );
        }
        anyhow::bail!(
            "none of --iface {} exists with an IPv4 address in this network namespace",
            ifaces.join(",")
        );
    };
    let public = public_ip.unwrap_or(net.addr());
    Ok(Underlay {
        link,
        public_ip: public,
        net,
    })
}

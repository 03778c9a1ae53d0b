//! Reconciling twill's own routes (protocol RTPROT_TWILL, destination inside the overlay
//! network) to a desired set: missing ones added, changed ones replaced, stale ones removed.

use std::collections::{HashMap, HashSet};

use ipnet::{IpNet, Ipv4Net};
use twill_netkit::{Netlink, RTPROT_TWILL, Route};

use super::ApplyErrors;

/// The metric of the wireguard backend's fail-closed `unreachable` routes under its overlay
/// networks: above the device's routes (IPv4 0, IPv6 1024).
pub const FAIL_CLOSED_METRIC: u32 = 1_000_000;

/// Removes twill's fail-closed routes for networks not in `keep`: left by a wireguard setup
/// whose `Network` changed, or by wireguard before a switch to another backend, they would
/// refuse that range for good. A failure is only logged: it never stops the backend.
pub async fn remove_stale_fail_closed(nl: &Netlink, keep: &[IpNet]) {
    let routes = match nl.list_unreachable_routes(Some(RTPROT_TWILL)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "listing fail-closed routes");
            return;
        }
    };
    for r in routes {
        if r.metric == Some(FAIL_CLOSED_METRIC) && !keep.contains(&r.dst) {
            match nl.delete_route(&r).await {
                Ok(_) => {
                    tracing::info!(network = %r.dst, "removed a fail-closed route of an earlier setup")
                }
                Err(e) => {
                    tracing::warn!(error = %e, network = %r.dst, "removing a stale fail-closed route")
                }
            }
        }
    }
}

fn same(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.gateway == b.gateway && a.oif == b.oif && a.onlink == b.onlink
}

/// Makes twill's routes inside `network` exactly `desired`.
pub async fn reconcile(
    nl: &Netlink,
    network: Ipv4Net,
    desired: &[Route],
    errors: &mut ApplyErrors,
) {
    reconcile_all(nl, &[IpNet::V4(network)], desired, errors).await
}

/// Makes twill's routes inside any of `networks` (both families) exactly `desired`. One dump,
/// then writes only for what differs (maps, not nested scans: thousands of peers are normal).
pub async fn reconcile_all(
    nl: &Netlink,
    networks: &[IpNet],
    desired: &[Route],
    errors: &mut ApplyErrors,
) {
    let current = match nl.list_routes(Some(RTPROT_TWILL)).await {
        Ok(r) => r,
        Err(e) => {
            errors.push(e);
            return;
        }
    };
    reconcile_listed(nl, networks, &current, desired, errors).await
}

/// [`reconcile_all`] from routes already dumped (`current`: the main table's, of any
/// protocol), for a caller that needed the dump itself.
pub async fn reconcile_listed(
    nl: &Netlink,
    networks: &[IpNet],
    current: &[Route],
    desired: &[Route],
    errors: &mut ApplyErrors,
) {
    let ours: HashMap<IpNet, &Route> = current
        .iter()
        .filter(|r| r.protocol == RTPROT_TWILL)
        .filter(|r| networks.iter().any(|n| n.contains(&r.dst)))
        .map(|r| (r.dst, r))
        .collect();
    let wanted: HashSet<IpNet> = desired.iter().map(|d| d.dst).collect();
    for (dst, r) in &ours {
        if !wanted.contains(dst) {
            match nl.delete_route(r).await {
                Ok(true) => tracing::info!(route = %dst, "removed stale route"),
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    for d in desired {
        if ours.get(&d.dst).is_some_and(|r| same(d, r)) {
            continue;
        }
        match nl.replace_route(d).await {
            Ok(()) => tracing::debug!(route = %d.dst, gateway = ?d.gateway, "installed route"),
            Err(e) => errors.push(e),
        }
    }
}

//! Reconciling twill's own routes (protocol RTPROT_TWILL, destination inside the overlay
//! network) to a desired set: missing ones added, changed ones replaced, stale ones removed.

use std::collections::{HashMap, HashSet};

use ipnet::{IpNet, Ipv4Net};
use twill_netkit::{Netlink, RTPROT_TWILL, Route};

use super::ApplyErrors;

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
    let ours: HashMap<IpNet, &Route> = current
        .iter()
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

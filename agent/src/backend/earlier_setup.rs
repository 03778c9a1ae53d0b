//! What an earlier setup of this node left that the current one does not use: twill's routes
//! outside today's overlay networks (a changed `Network`, a family turned off) and vxlan
//! devices of another VNI, family or backend. Removed once at start, before the backend
//! builds its own; a failure is logged and never stops the agent.

use ipnet::IpNet;
use twill_netkit::{Netlink, RTPROT_TWILL};

/// Whether a twill route to `dst` belongs to none of `networks`.
pub(crate) fn route_is_stale(dst: &IpNet, networks: &[IpNet]) -> bool {
    !networks.iter().any(|n| n.contains(dst))
}

/// Whether a link is a VTEP of Flannel's naming (`flannel.<VNI>`, `flannel-v6.<VNI>`) that
/// the current backend does not use (`keep`).
pub(crate) fn device_is_stale(name: &str, kind: Option<&str>, keep: &[String]) -> bool {
    let vni = name
        .strip_prefix("flannel-v6.")
        .or_else(|| name.strip_prefix("flannel."));
    kind == Some("vxlan")
        && vni.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        && !keep.iter().any(|k| k == name)
}

/// Removes twill's unicast routes outside `networks` and the VTEPs not in `keep_devices`.
pub(crate) async fn remove(nl: &Netlink, networks: &[IpNet], keep_devices: &[String]) {
    match nl.list_links().await {
        Ok(links) => {
            for l in links {
                if !device_is_stale(&l.name, l.kind.as_deref(), keep_devices) {
                    continue;
                }
                match nl.delete_link(l.index).await {
                    Ok(()) => {
                        tracing::info!(device = %l.name, "removed a vxlan device of an earlier setup")
                    }
                    Err(e) => {
                        tracing::warn!(device = %l.name, error = %e, "removing a vxlan device of an earlier setup")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing links to find an earlier setup's devices"),
    }
    // After the devices: their routes went with them.
    let routes = match nl.list_routes(Some(RTPROT_TWILL)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "listing twill's routes to find an earlier setup's");
            return;
        }
    };
    for r in routes.iter().filter(|r| route_is_stale(&r.dst, networks)) {
        match nl.delete_route(r).await {
            Ok(_) => tracing::info!(route = %r.dst, "removed a route outside today's networks"),
            Err(e) => {
                tracing::warn!(route = %r.dst, error = %e, "removing a route of an earlier setup")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_outside_every_network_are_stale() {
        let nets: Vec<IpNet> = vec![
            "10.5.0.0/16".parse().unwrap(),
            "fd00:5::/48".parse().unwrap(),
        ];
        for (dst, stale) in [
            ("10.5.3.0/24", false),
            ("10.5.0.0/16", false),
            ("fd00:5:0:3::/64", false),
            ("10.6.3.0/24", true),
            ("10.0.0.0/8", true),
            ("fd00:6:0:3::/64", true),
        ] {
            assert_eq!(route_is_stale(&dst.parse().unwrap(), &nets), stale, "{dst}");
        }
        assert!(route_is_stale(&"10.5.3.0/24".parse().unwrap(), &[]));
    }

    #[test]
    fn only_unused_vteps_of_flannels_naming_are_stale() {
        let keep = vec!["flannel.1".to_string()];
        for (name, kind, stale) in [
            ("flannel.1", Some("vxlan"), false),
            ("flannel.2", Some("vxlan"), true),
            ("flannel-v6.1", Some("vxlan"), true),
            ("flannel.2", Some("dummy"), false),
            ("flannel.", Some("vxlan"), false),
            ("flannel.x", Some("vxlan"), false),
            ("flannel-wg", None, false),
            ("vxlan0", Some("vxlan"), false),
        ] {
            assert_eq!(device_is_stale(name, kind, &keep), stale, "{name}");
        }
    }
}

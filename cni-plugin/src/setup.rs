//! The kernel side of an attachment: the bridge and host veth in the runtime's namespace, the
//! container end inside the container's namespace.

use std::net::IpAddr;

use ipnet::IpNet;
use twill_netkit::{Link, Netlink, Netns, Route, Scope, sysctl};

use crate::error::{CniError, CniResult, INTERNAL, INVALID_CONFIG};
use crate::result::{RouteSpec, SCOPE_GLOBAL, SCOPE_HOST, SCOPE_LINK};

/// The kernel's "static" route protocol (what `ip route add` uses) for container routes.
const RTPROT_STATIC: u8 = 4;

/// What the host side needs.
pub struct HostPlan<'a> {
    pub bridge: &'a str,
    /// The gateway addresses on the bridge (one per family, with the subnet's prefix).
    pub bridge_addrs: Vec<IpNet>,
    pub mtu: u32,
    /// Hairpin on the host veth's port; ADD sets it once the container's addresses are
    /// announced (the bridge would send the announcements back to the container).
    pub hairpin: bool,
    pub host_veth: String,
    /// The host veth's alias naming the attachment ([`host_veth_marker`]).
    pub marker: String,
    pub tmp_peer: String,
}

/// Host veth name for an attachment: `veth` + 8 hex digits of a hash of (id, ifname), so
/// DEL can find it again without the container's namespace.
pub fn host_veth_name(container_id: &str, ifname: &str, salt: u32) -> String {
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain([0])
        .chain(ifname.bytes())
        .chain(salt.to_le_bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:08x}", (h >> 32) as u32 ^ h as u32)
}

/// What a veth's container end is called until it is renamed to CNI_IFNAME: `tw` and 8 hex
/// digits, random (parallel ADDs create their peers at the same time).
pub fn tmp_peer_name(random: u32) -> String {
    format!("tw{random:08x}")
}

fn is_tmp_peer_name(name: &str) -> bool {
    name.len() == 10
        && name.starts_with("tw")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The alias ADD gives the host veth, naming the attachment it belongs to: DEL removes a
/// host veth it cannot reach from the container's side only when it carries this. Its name
/// alone proves nothing: `veth<8 hex>` is the space the reference bridge fills at random. An
/// ID too long for the 255 bytes of an alias is shortened to its start and a 64-bit hash of
/// the whole.
pub fn host_veth_marker(container_id: &str, ifname: &str) -> String {
    const PREFIX: &str = "twill-cni";
    let full = format!("{PREFIX} {ifname} {container_id}");
    if full.len() <= 255 {
        return full;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Container IDs are ASCII (env checks them), so any byte offset is a char boundary.
    let keep = 255 - (PREFIX.len() + 1 + ifname.len() + 1 + 1 + 16);
    let start = container_id.get(..keep).unwrap_or(container_id);
    format!("{PREFIX} {ifname} {start}~{h:016x}")
}

/// The host end of an attachment as DEL finds it: its index and its peer's (IFLA_LINK, an
/// index in the container's namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPair {
    pub host_index: u32,
    pub peer_index: u32,
}

/// The veth called `name` in this namespace and the index of its peer, if it is a veth
/// with a peer.
pub async fn host_veth_pair(nl: &Netlink, name: &str) -> twill_netkit::Result<Option<HostPair>> {
    let Some(link) = nl.link_by_name(name).await? else {
        return Ok(None);
    };
    if link.kind.as_deref() != Some("veth") {
        return Ok(None);
    }
    let peer = nl.link_detail(link.index).await?.and_then(|d| d.peer_index);
    Ok(peer.map(|peer_index| HostPair {
        host_index: link.index,
        peer_index,
    }))
}

/// DEL inside the container: removes `ifname`, which takes the host end with it. Without
/// `ifname`, the pair an interrupted ADD of this attachment left under its temporary name
/// `tw<8 hex>`: the one whose peer is `host` (this attachment's host veth, found by its
/// name), checked both ways. Any other `tw<8 hex>` is left alone: it may be the half-done
/// ADD of another attachment of the same container (Multus gives each its own ifname).
pub async fn remove_container_side(
    nl: &Netlink,
    ifname: &str,
    host: Option<HostPair>,
) -> twill_netkit::Result<()> {
    if nl.remove_link(ifname).await? {
        return Ok(());
    }
    let Some(host) = host else {
        return Ok(());
    };
    let Some(tmp) = nl.link_by_index(host.peer_index).await? else {
        return Ok(());
    };
    if tmp.kind.as_deref() != Some("veth") || !is_tmp_peer_name(&tmp.name) {
        return Ok(());
    }
    let back = nl.link_detail(tmp.index).await?.and_then(|d| d.peer_index);
    if back == Some(host.host_index) {
        match nl.delete_link(tmp.index).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// DEL on the host: removes the veth called `name` only when it carries `marker` (ADD's
/// alias for this attachment). Without the container's namespace the pair cannot be seen
/// from the container's end, and a veth of that name without the marker may be anyone's
/// (another container's whose name collides, a veth twill never made). Returns whether it
/// removed one.
pub async fn remove_host_veth_if_ours(
    nl: &Netlink,
    name: &str,
    marker: &str,
) -> twill_netkit::Result<bool> {
    let Some(link) = nl.link_by_name(name).await? else {
        return Ok(false);
    };
    let alias = nl.link_detail(link.index).await?.and_then(|d| d.alias);
    if link.kind.as_deref() != Some("veth") || alias.as_deref() != Some(marker) {
        return Ok(false);
    }
    match nl.delete_link(link.index).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Fails when the host veth name is taken already: the name is a hash of (container ID,
/// ifname) in the `veth<8 hex>` space the reference bridge fills at random, so such a link
/// belongs to someone else, and a failed ADD must not remove it.
pub async fn ensure_host_veth_free(nl: &Netlink, name: &str) -> CniResult<()> {
    if nl.link_by_name(name).await?.is_some() {
        return Err(CniError::new(
            INTERNAL,
            format!(
                "host veth name {name} is taken in netns {} by a link this ADD did not create (another attachment's, or one left by an ADD whose DEL never came)",
                nl.netns()
            ),
        ));
    }
    Ok(())
}

/// The MTU of the link holding the default route, if any.
pub async fn default_route_mtu(nl: &Netlink) -> Option<u32> {
    let routes = nl.list_routes(None).await.ok()?;
    let oif = routes.iter().find(|r| r.dst.prefix_len() == 0)?.oif?;
    nl.link_by_index(oif).await.ok()??.mtu.into()
}

/// Bridge (created if needed, gateway address added, MTU, up), then the veth pair with the
/// container end born in `ctr` under a temporary name, marked, attached and up (hairpin is
/// set later, see [`HostPlan::hairpin`]).
pub async fn host_side(nl: &Netlink, plan: &HostPlan<'_>, ctr: &Netns) -> CniResult<(Link, Link)> {
    // A fixed MAC for a bridge twill creates: one that follows its lowest port would make
    // every result (and every container's neighbour entry for the gateway) go stale when a
    // veth with a lower MAC joins; the reference plugin and netavark fix the address too. A
    // bridge someone else created keeps its address.
    let mac = bridge_mac();
    let bridge = nl
        .ensure_bridge_with_mac(plan.bridge, Some(plan.mtu), Some(mac))
        .await
        .map_err(bridge_error)?;
    if plan.bridge_addrs.iter().any(|a| a.addr().is_ipv6()) {
        // A router for its containers: it must not take router advertisements itself.
        ipv6_sysctls(plan.bridge, nl, &ROUTER_IPV6)?;
    }
    for addr in &plan.bridge_addrs {
        nl.ensure_address(bridge.index, *addr).await?;
    }
    let veth = nl
        .create_veth(&plan.host_veth, &plan.tmp_peer, ctr, Some(plan.mtu))
        .await?;
    // First thing after creating it (the kernel takes no alias in the creating request):
    // from here on DEL can tell this veth is the attachment's without the container.
    nl.set_alias(veth.index, &plan.marker).await?;
    nl.set_controller(veth.index, bridge.index).await?;
    // Hairpin (`plan.hairpin`) comes last, after the container has announced its addresses:
    // with it the bridge would send the container its own neighbour advertisement back, and
    // the kernel would log that someone else "advertised our address".
    nl.set_up(veth.index).await?;
    let veth = nl.require_link(&plan.host_veth).await?;
    // A bridge whose address was never set took the lowest MAC of its ports when the veth
    // joined: the result must name the MAC it has now, not the one read before. Only the ADD
    // that created the bridge (with the MAC it chose) spares the second look.
    let bridge = if bridge.mac == mac {
        bridge
    } else {
        nl.require_link(plan.bridge).await?
    };
    Ok((bridge, veth))
}

/// A random locally administered unicast MAC.
fn bridge_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    twill_netkit::random::fill(&mut mac);
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac
}

/// netkit refuses a bridge name only when the name itself is unusable or taken by a link
/// of another kind: the configuration's `bridge` cannot work on this host (code 7).
fn bridge_error(e: twill_netkit::Error) -> CniError {
    match e {
        twill_netkit::Error::Invalid(msg) => {
            CniError::new(INVALID_CONFIG, format!("bridge: {msg}"))
        }
        other => CniError::from(other),
    }
}

/// Enables forwarding of the families in `gateways` in the runtime's namespace (a bridge
/// with a gateway routes).
pub fn enable_forwarding(gateways: &[IpAddr]) -> CniResult<()> {
    let keys = [
        (true, "net.ipv4.ip_forward"),
        (false, "net/ipv6/conf/all/forwarding"),
    ];
    for (v4, key) in keys {
        if gateways.iter().any(|g| g.is_ipv4() == v4) {
            sysctl::ensure(key, "1").map_err(|e| CniError::new(INTERNAL, e.to_string()))?;
        }
    }
    Ok(())
}

/// IPv6 on the bridge: enabled, and deaf to router advertisements (it is the router).
const ROUTER_IPV6: [(&str, &str); 2] = [("disable_ipv6", "0"), ("accept_ra", "0")];

/// IPv6 on a container interface: enabled; deaf to router advertisements (addresses and
/// routes come from IPAM: a stray RA on the bridge must not add a default route or a SLAAC
/// address); no duplicate address detection, also for the link-local address, which would
/// be tentative for a second after the link comes up — and with hairpin on the bridge port
/// the container's own neighbour solicitations come back to it (the reference bridge
/// plugin turns DAD off for the same reason).
/// `ndisc_notify`: the kernel sends an unsolicited neighbour advertisement per address when
/// the interface's MAC is set, which ADD uses to tell the other containers on the bridge
/// (see `commands::announce_addresses`).
const CONTAINER_IPV6: [(&str, &str); 4] = [
    ("disable_ipv6", "0"),
    ("accept_ra", "0"),
    ("accept_dad", "0"),
    ("ndisc_notify", "1"),
];

/// Sets the per-interface IPv6 `keys` of `ifname` in the calling thread's namespace.
fn ipv6_sysctls(ifname: &str, nl: &Netlink, keys: &[(&str, &str)]) -> CniResult<()> {
    for &(key, value) in keys {
        sysctl::ensure(&sysctl::conf_key("ipv6", ifname, key), value)
            .map_err(|e| CniError::new(INTERNAL, format!("in netns {}: {e}", nl.netns())))?;
    }
    Ok(())
}

/// Whether the kernel has IPv6 for `ifname` in the calling thread's namespace (booted with
/// `ipv6.disable=1` it has not).
fn has_ipv6(ifname: &str) -> bool {
    std::path::Path::new("/proc/sys")
        .join(sysctl::conf_key("ipv6", ifname, "accept_ra"))
        .exists()
}

/// Renames the temporary container end to `ifname`, ignores router advertisements on it
/// (set before the link is up, so none is ever taken), adds the addresses and routes, sets it
/// up. A global route without `gw` goes via the gateway of its family when there is one, as
/// the reference plugins install IPAM routes (podman's default network has
/// `{"dst": "0.0.0.0/0"}`); a link or host route stays on the link, where the reference
/// would hand the kernel a gateway it refuses on such a route. IPv6 addresses come without
/// DAD (netkit adds them `nodad`), so the container is reachable over IPv6 as soon as ADD
/// returns.
pub async fn container_side(
    nl: &Netlink,
    tmp: &str,
    ifname: &str,
    addrs: &[IpNet],
    gateways: &[IpAddr],
    routes: &[RouteSpec],
) -> CniResult<Link> {
    let link = nl.require_link(tmp).await?;
    nl.rename(link.index, ifname).await?;
    if addrs.iter().any(|a| a.addr().is_ipv6()) {
        ipv6_sysctls(ifname, nl, &CONTAINER_IPV6)?;
    } else if has_ipv6(ifname) {
        // An IPv4-only attachment must not pick up IPv6 from a stray RA either.
        ipv6_sysctls(ifname, nl, &[("accept_ra", "0")])?;
    }
    if addrs.iter().any(|a| a.addr().is_ipv4()) {
        // A gratuitous ARP per address when the MAC is set (see `CONTAINER_IPV6`), as
        // netavark sets it.
        sysctl::ensure(&sysctl::conf_key("ipv4", ifname, "arp_notify"), "1")
            .map_err(|e| CniError::new(INTERNAL, format!("in netns {}: {e}", nl.netns())))?;
    }
    let named = |e: twill_netkit::Error| e.naming_link(link.index, ifname);
    for addr in addrs {
        nl.ensure_address(link.index, *addr).await.map_err(named)?;
    }
    nl.set_up(link.index).await.map_err(named)?;
    for r in routes.iter().filter(|r| !is_prefix_route(r, addrs)) {
        let family_gw = gateways
            .iter()
            .copied()
            .find(|g| g.is_ipv4() == r.dst.addr().is_ipv4())
            .filter(|_| r.is_global());
        let route = container_route(r, link.index, r.gw.or(family_gw));
        // Next to another attachment's routes to the same destination, as the reference
        // plugins add them: a second attachment of the network in this namespace gets its
        // routes too (IPv4 puts the newer first, IPv6 makes one multipath route), and they
        // outlive the first attachment's DEL, which takes only the first one's routes along.
        nl.add_route_ecmp(&route)
            .await
            .map_err(|e| route_error(e, &route, ifname))?;
    }
    Ok(nl.require_link(ifname).await?)
}

/// Whether `r` is what the kernel made when one of `addrs` was added: the route to the
/// address's own subnet on the link (its prefix route, metric 0 for IPv4, 256 for IPv6). IPAM
/// configurations list it (`{"dst": "10.5.1.0/24"}`), and routes go in without NLM_F_EXCL:
/// an IPv4 copy would sit in front of the kernel's with the same metric and, given the
/// family's gateway, send the container's own subnet through the bridge's address. IPv6 would
/// keep a second, never used route at metric 1024. The result still lists it, and CHECK finds
/// the kernel's. Decided from the addresses alone: no look at the kernel's routes per ADD.
fn is_prefix_route(r: &RouteSpec, addrs: &[IpNet]) -> bool {
    let kernel_metric = if r.dst.addr().is_ipv4() { 0 } else { 256 };
    r.gw.is_none()
        && r.in_main_table()
        && r.scope.is_none_or(|s| s == SCOPE_GLOBAL || s == SCOPE_LINK)
        && r.priority.is_none_or(|p| p == kernel_metric)
        // The kernel makes no prefix route for a /32 or /128.
        && addrs
            .iter()
            .any(|a| a.prefix_len() < a.max_prefix_len() && a.trunc() == r.dst)
}

/// A container route the kernel refused, with the interface named and, for the refusal an
/// IPAM configuration causes most, what to change.
fn route_error(e: twill_netkit::Error, route: &Route, ifname: &str) -> CniError {
    let hint = match (e.errno(), route.gateway) {
        (Some(libc::ENETUNREACH), Some(gw)) => format!(
            ": no address on {ifname} has a subnet holding the gateway {gw}; the route's gw must lie in a subnet of the container's addresses (check the IPAM routes)"
        ),
        _ => String::new(),
    };
    let e = e.naming_link(route.oif.unwrap_or_default(), ifname);
    CniError::new(INTERNAL, format!("{e}{hint}"))
}

/// The kernel route for `r` out of link `index`: the CNI 1.1 fields the reference
/// `ConfigureIface` applies (`priority`, `table`, `scope`) are applied; `mtu` and `advmss`
/// only travel in the result, as there.
fn container_route(r: &RouteSpec, index: u32, gw: Option<IpAddr>) -> Route {
    let mut route = Route::new(r.dst).dev(index).protocol(RTPROT_STATIC);
    if let Some(gw) = gw {
        route = route.via(gw);
    }
    if let Some(p) = r.priority {
        route = route.metric(p);
    }
    if !r.in_main_table()
        && let Some(t) = r.table
    {
        route.table = t;
    }
    route.scope = match r.scope {
        Some(SCOPE_LINK) => Scope::Link,
        Some(SCOPE_HOST) => Scope::Host,
        Some(SCOPE_GLOBAL) | None => Scope::Universe,
        Some(other) => Scope::Other(other),
    };
    route
}

/// Fails if `ifname` already exists in the container (the spec makes that an error).
pub async fn ensure_absent(nl: &Netlink, ifname: &str) -> CniResult<()> {
    if nl.link_by_name(ifname).await?.is_some() {
        return Err(CniError::new(
            INTERNAL,
            format!("interface {ifname} already exists in netns {}", nl.netns()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_to_an_addresss_own_subnet_is_the_kernels() {
        let route = |json: &str| -> RouteSpec {
            crate::result::AddResult::from_json(&serde_json::json!({
                "cniVersion": "1.1.0", "routes": [serde_json::from_str::<serde_json::Value>(json).unwrap()]
            }))
            .unwrap()
            .routes
            .remove(0)
        };
        let addrs: Vec<IpNet> = vec![
            "10.5.1.2/24".parse().unwrap(),
            "fd00:5:1::2/64".parse().unwrap(),
            "10.7.0.1/32".parse().unwrap(),
        ];
        for (json, kernels) in [
            (r#"{"dst": "10.5.1.0/24"}"#, true),
            (r#"{"dst": "10.5.1.0/24", "priority": 0}"#, true),
            (r#"{"dst": "10.5.1.0/24", "scope": 253}"#, true),
            (r#"{"dst": "fd00:5:1::/64"}"#, true),
            (r#"{"dst": "fd00:5:1::/64", "priority": 256}"#, true),
            (r#"{"dst": "10.5.1.0/24", "gw": "10.5.1.1"}"#, false),
            (r#"{"dst": "10.5.1.0/24", "priority": 5}"#, false),
            (r#"{"dst": "10.5.1.0/24", "table": 100}"#, false),
            (r#"{"dst": "fd00:5:1::/64", "priority": 1024}"#, false),
            (r#"{"dst": "10.5.0.0/16"}"#, false),
            // No prefix route for a /32.
            (r#"{"dst": "10.7.0.1/32"}"#, false),
        ] {
            assert_eq!(is_prefix_route(&route(json), &addrs), kernels, "{json}");
        }
    }

    #[test]
    fn the_marker_names_the_attachment_and_fits_an_alias() {
        assert_eq!(host_veth_marker("abc", "eth0"), "twill-cni eth0 abc");
        assert_ne!(
            host_veth_marker("abc", "eth0"),
            host_veth_marker("abc", "net1")
        );
        let long = "a".repeat(255);
        let mut other = long.clone();
        other.replace_range(254.., "b");
        let (m1, m2) = (
            host_veth_marker(&long, "eth0"),
            host_veth_marker(&other, "eth0"),
        );
        assert!(m1.len() <= 255 && m2.len() <= 255, "{m1}");
        assert_ne!(
            m1, m2,
            "IDs differing past the kept start differ by the hash"
        );
        assert_eq!(m1, host_veth_marker(&long, "eth0"), "stable");
        let longest_ifname = host_veth_marker(&long, "abcdefghijklmno");
        assert!(longest_ifname.len() <= 255);
    }
}

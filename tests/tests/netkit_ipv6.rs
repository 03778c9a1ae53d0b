//! netkit over IPv6: two namespaces joined by a veth "underlay" with IPv6 addresses (usable at
//! once: no DAD), a `flannel-v6.1` vxlan device in each with an IPv6 local address, IPv6
//! neighbours, FDB entries with IPv6 destinations and onlink IPv6 routes — the vxlan-over-IPv6
//! pattern twilld programs — then `ping -6` through the tunnel. Kernel state is checked with
//! `ip -j` / `bridge -j`, independently of netkit.

use std::net::{IpAddr, Ipv6Addr};

use twill_netkit::ipnet::IpNet;
use twill_netkit::{
    Error, FdbEntry, FdbMode, Neighbour, Netlink, Netns, RTPROT_TWILL, Route, VxlanSpec, sysctl,
};
use twill_tests::{NsScope, bridge_json, ip_json, preconditions, run};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

const MAC_A: [u8; 6] = [0x0a, 0, 0, 0, 0x06, 0x0a];
const MAC_B: [u8; 6] = [0x0a, 0, 0, 0, 0x06, 0x0b];

/// One side: underlay address, vxlan device with a fixed MAC, its /128 overlay address, and
/// the peer's neighbour + FDB + route.
struct Side {
    underlay: &'static str,
    overlay: &'static str,
    subnet: &'static str,
    mac: [u8; 6],
}

const A: Side = Side {
    underlay: "fd00:99::1",
    overlay: "fd10:0:1::",
    subnet: "fd10:0:1::/64",
    mac: MAC_A,
};
const B: Side = Side {
    underlay: "fd00:99::2",
    overlay: "fd10:0:2::",
    subnet: "fd10:0:2::/64",
    mac: MAC_B,
};

fn program(ns: &Netns, me: &'static Side, peer: &'static Side) -> Vec<Route> {
    let ifname = "flannel-v6.1";
    ns.enter(|| sysctl::write(&sysctl::conf_key("ipv6", "all", "forwarding"), "1"))
        .unwrap()
        .unwrap();
    ns.run(move |nl: Netlink| async move {
        let under = nl.require_link("under0").await?;
        nl.ensure_address(under.index, net(&format!("{}/64", me.underlay)))
            .await?;
        nl.set_up(under.index).await?;
        let mut spec = VxlanSpec::new(ifname, 1);
        spec.local = Some(IpAddr::V6(v6(me.underlay)));
        spec.underlay = Some(under.index);
        spec.mac = Some(me.mac);
        let vx = nl.ensure_vxlan(&spec).await?;
        nl.ensure_address(vx.index, net(&format!("{}/128", me.overlay)))
            .await?;
        nl.replace_neighbour(&Neighbour {
            ifindex: vx.index,
            ip: IpAddr::V6(v6(peer.overlay)),
            mac: peer.mac,
        })
        .await?;
        nl.add_fdb(
            &FdbEntry {
                ifindex: vx.index,
                mac: peer.mac,
                dst: Some(IpAddr::V6(v6(peer.underlay))),
                permanent: true,
            },
            FdbMode::Replace,
        )
        .await?;
        nl.replace_route(
            &Route::new(net(peer.subnet))
                .via(v6(peer.overlay))
                .dev(vx.index)
                .onlink(),
        )
        .await?;
        nl.list_routes(Some(RTPROT_TWILL)).await
    })
    .unwrap()
}

#[test]
fn vxlan_over_ipv6_carries_ping() {
    if !preconditions("vxlan_over_ipv6_carries_ping", &["ip", "bridge", "ping"]) {
        return;
    }
    let scope = NsScope::new("v6x");
    let a = scope.create("a");
    let b = scope.create("b");
    a.run(|nl: Netlink| {
        let b = Netns::open(&scope.name("b"));
        async move {
            let b = b?;
            nl.create_veth("under0", "under0", &b, None).await?;
            Ok::<_, Error>(())
        }
    })
    .unwrap();
    let routes_a = program(&a, &A, &B);
    program(&b, &B, &A);

    // netkit reads back what it wrote, in both families' dumps.
    assert!(
        routes_a
            .iter()
            .any(|r| r.dst == net(B.subnet) && r.gateway == Some(v6(B.overlay).into()) && r.onlink),
        "{routes_a:?}"
    );
    // nodad: the underlay address is usable right away, not tentative.
    let addrs = ip_json(&scope.name("a"), &["-6", "addr", "show", "dev", "under0"]);
    let info = addrs[0]["addr_info"].as_array().unwrap();
    let ours = info
        .iter()
        .find(|i| i["local"] == A.underlay)
        .unwrap_or_else(|| panic!("{info:?}"));
    assert!(ours.get("tentative").is_none(), "{ours}");
    assert_eq!(ours["nodad"], true, "{ours}");
    // The vxlan device has the IPv6 local address; neighbour and FDB hold IPv6 endpoints.
    let link = ip_json(&scope.name("a"), &["-d", "link", "show", "flannel-v6.1"]);
    assert_eq!(link[0]["linkinfo"]["info_data"]["local6"], A.underlay);
    let neigh = ip_json(
        &scope.name("a"),
        &["-6", "neigh", "show", "dev", "flannel-v6.1"],
    );
    assert_eq!(neigh[0]["dst"], B.overlay);
    let fdb = bridge_json(&scope.name("a"), &["fdb", "show", "dev", "flannel-v6.1"]);
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "0a:00:00:00:06:0b" && e["dst"] == B.underlay),
        "{fdb}"
    );
    let listed = a
        .run(|nl: Netlink| async move {
            let vx = nl.require_link("flannel-v6.1").await?;
            Ok::<_, Error>((
                nl.list_neighbours(vx.index).await?,
                nl.list_fdb(vx.index).await?,
            ))
        })
        .unwrap();
    assert!(listed.0.iter().any(|n| n.ip == IpAddr::V6(v6(B.overlay))));
    assert!(
        listed
            .1
            .iter()
            .any(|f| f.dst == Some(IpAddr::V6(v6(B.underlay))))
    );

    // Traffic through the tunnel, both ways, from the overlay addresses.
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            &scope.name("a"),
            "ping",
            "-6",
            "-c",
            "2",
            "-W",
            "2",
            "-I",
            A.overlay,
            B.overlay,
        ],
    );
    assert!(out.contains("2 received"), "{out}");

    // Deleting by an IPv6 address works and says whether it existed.
    let gone = a
        .run(|nl: Netlink| async move {
            let vx = nl.require_link("flannel-v6.1").await?;
            let first = nl.delete_neighbour(vx.index, v6(B.overlay)).await?;
            let second = nl.delete_neighbour(vx.index, v6(B.overlay)).await?;
            let route = Route::new(net(B.subnet))
                .via(v6(B.overlay))
                .dev(vx.index)
                .onlink();
            Ok::<_, Error>((first, second, nl.delete_route(&route).await?))
        })
        .unwrap();
    assert_eq!(gone, (true, false, true));
}

#[test]
fn a_route_mixing_families_is_refused_with_the_route_named() {
    if !preconditions("a_route_mixing_families_is_refused", &["ip"]) {
        return;
    }
    let scope = NsScope::new("v6m");
    let ns = scope.create("a");
    let err = ns
        .run(|nl: Netlink| async move {
            let lo = nl.require_link("lo").await?;
            nl.replace_route(
                &Route::new(net("fd10::/64"))
                    .via(IpAddr::from([10, 0, 0, 1]))
                    .dev(lo.index),
            )
            .await
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fd10::/64 via 10.0.0.1") && err.contains("family"),
        "{err}"
    );
}

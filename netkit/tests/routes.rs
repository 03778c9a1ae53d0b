//! Routes next to routes to the same destination, and multipath routes as listed, in a
//! namespace of the test's own.

mod common;

use std::net::IpAddr;

use common::{TestNs, root_or_skip};
use ipnet::IpNet;
use twill_netkit::{Route, RouteGet};

fn net(s: &str) -> IpNet {
    s.parse().expect("test network")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Two links of one subnet, each with a default route of each family via the same gateway:
/// both stay (IPv4 lists the newer first, IPv6 makes one multipath route, listed as one
/// route per next hop), the very same route again is no error, and removing one link leaves
/// the other's routes. Before, netkit could only add a route when none to that destination
/// and metric was there ("first one wins"), and listed a multipath route without device or
/// gateway.
#[test]
fn routes_to_one_destination_over_two_links_live_side_by_side() {
    if !root_or_skip("routes_to_one_destination_over_two_links_live_side_by_side") {
        return;
    }
    let a = TestNs::new("ecmpa");
    let b = TestNs::new("ecmpb");
    let peer_ns = &b.ns;
    let (added, again, both, links, after) =
        a.ns.run(|nl| async move {
            let mut links = Vec::new();
            for (name, peer, v4, v6) in [
                ("v0", "p0", "10.77.0.2/24", "fd00:77::2/64"),
                ("v1", "p1", "10.77.0.3/24", "fd00:77::3/64"),
            ] {
                let l = nl.create_veth(name, peer, peer_ns, None).await?;
                nl.ensure_address(l.index, net(v4)).await?;
                nl.ensure_address(l.index, net(v6)).await?;
                nl.set_up(l.index).await?;
                links.push(l.index);
            }
            let defaults = |index: u32| {
                [
                    Route::new(net("0.0.0.0/0")).via(ip("10.77.0.1")).dev(index),
                    Route::new(net("::/0")).via(ip("fd00:77::1")).dev(index),
                ]
            };
            let mut added = Vec::new();
            for &index in &links {
                for r in defaults(index) {
                    added.push(nl.add_route_ecmp(&r).await?);
                }
            }
            let mut again = Vec::new();
            for r in defaults(links[0]) {
                again.push(nl.add_route_ecmp(&r).await?);
            }
            let listed = |routes: Vec<Route>| -> Vec<(IpNet, Option<IpAddr>, Option<u32>)> {
                routes
                    .into_iter()
                    .filter(|r| r.dst.prefix_len() == 0)
                    .map(|r| (r.dst, r.gateway, r.oif))
                    .collect()
            };
            let both = listed(nl.list_routes(None).await?);
            nl.delete_link(links[0]).await?;
            let after = listed(nl.list_routes(None).await?);
            Ok::<_, twill_netkit::Error>((added, again, both, links, after))
        })
        .expect("setting up the links and routes");
    assert_eq!(added, [true; 4], "each link's routes are added");
    assert_eq!(again, [false; 2], "the very same route again is no error");
    let (v0, v1) = (Some(links[0]), Some(links[1]));
    let (gw4, gw6) = (Some(ip("10.77.0.1")), Some(ip("fd00:77::1")));
    let (any4, any6) = (net("0.0.0.0/0"), net("::/0"));
    assert_eq!(
        both,
        [
            (any4, gw4, v1),
            (any4, gw4, v0),
            (any6, gw6, v0),
            (any6, gw6, v1),
        ],
        "IPv4: the newer first; IPv6: one multipath route, one entry per next hop"
    );
    assert_eq!(after, [(any4, gw4, v1), (any6, gw6, v1)]);
}

/// `ip -n NS ARGS…`, panicking with stderr on failure.
fn ip_in(ns: &str, args: &[&str]) {
    let out = std::process::Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip -n {ns} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `route_get` as `ip route get` answers: out of a device with its source, one of the
/// namespace's own addresses, or refused and why. Before, an IPv6 subnet-router anycast
/// address of a local prefix (`anycast … dev lo` with forwarding on) was a route out of
/// `lo`, and every EINVAL was "a blackhole route", also a `blackhole` rule's.
#[test]
fn route_get_tells_out_local_and_each_refusal_apart() {
    if !root_or_skip("route_get_tells_out_local_and_each_refusal_apart") {
        return;
    }
    let t = TestNs::new("rget");
    let name = t.name().to_string();
    for args in [
        &["link", "add", "v0", "type", "veth", "peer", "name", "v0p"][..],
        &["addr", "add", "10.61.0.5/24", "dev", "v0"],
        &["addr", "add", "fd61::5/64", "dev", "v0", "nodad"],
        &["link", "set", "v0p", "up"],
        &["link", "set", "v0", "up"],
        &["route", "add", "blackhole", "10.66.0.0/16"],
        &["route", "add", "prohibit", "10.67.0.0/16"],
        &["route", "add", "unreachable", "10.68.0.0/16"],
        &["-6", "route", "add", "blackhole", "fd66::/64"],
        &["rule", "add", "to", "10.72.0.0/16", "blackhole"],
        &["rule", "add", "to", "10.73.0.0/16", "prohibit"],
    ] {
        ip_in(&name, args);
    }
    // With forwarding on, the kernel answers fd61:: (the subnet-router anycast address of
    // fd61::/64) itself.
    t.ns.enter(|| twill_netkit::sysctl::ensure("net/ipv6/conf/all/forwarding", "1"))
        .expect("entering the namespace")
        .expect("IPv6 forwarding on");
    let targets = [
        "10.61.0.9",
        "fd61::9",
        "10.61.0.5",
        "fd61::5",
        "fd61::",
        "10.66.0.1",
        "fd66::1",
        "10.67.0.1",
        "10.68.0.1",
        "10.55.0.1",
        "fd55::1",
        "10.72.0.1",
        "10.73.0.1",
    ];
    let (v0, got) =
        t.ns.run(|nl| async move {
            let v0 = nl.require_link("v0").await?.index;
            let mut got = Vec::new();
            for target in targets {
                got.push(nl.route_get(ip(target)).await?);
            }
            Ok::<_, twill_netkit::Error>((v0, got))
        })
        .expect("looking up the routes");
    for (i, src) in [(0, "10.61.0.5"), (1, "fd61::5")] {
        match &got[i] {
            RouteGet::Out(r) => assert_eq!((r.oif, r.src), (Some(v0), Some(ip(src)))),
            other => panic!("{}: {other:?}", targets[i]),
        }
    }
    let refused = |why: &'static str| RouteGet::Refused(why);
    let rest: Vec<(&str, RouteGet)> = targets[2..]
        .iter()
        .copied()
        .zip(got[2..].to_vec())
        .collect();
    assert_eq!(
        rest,
        [
            ("10.61.0.5", RouteGet::Local),
            ("fd61::5", RouteGet::Local),
            ("fd61::", RouteGet::Local),
            ("10.66.0.1", refused("a blackhole route")),
            ("fd66::1", refused("a blackhole route")),
            ("10.67.0.1", refused("a prohibit route or rule")),
            ("10.68.0.1", refused("an unreachable route")),
            ("10.55.0.1", refused("no route")),
            ("fd55::1", refused("no route")),
            (
                "10.72.0.1",
                refused(
                    "no route it will use (the lookup fails with EINVAL, as for a blackhole rule)"
                )
            ),
            ("10.73.0.1", refused("a prohibit route or rule")),
        ]
    );
}

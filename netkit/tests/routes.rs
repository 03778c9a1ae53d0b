//! Routes next to routes to the same destination, and multipath routes as listed, in a
//! namespace of the test's own.

mod common;

use std::net::IpAddr;

use common::{TestNs, root_or_skip};
use ipnet::IpNet;
use twill_netkit::Route;

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

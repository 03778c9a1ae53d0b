//! netkit: addresses, routes (with twill's protocol number), permanent neighbours and FDB
//! entries, checked through netkit dumps and `ip -j` / `bridge -j`.

use std::net::{IpAddr, Ipv4Addr};

use twill_netkit::ipnet::{IpNet, Ipv4Net};
use twill_netkit::{
    Error, FdbEntry, FdbMode, Neighbour, Netlink, RTPROT_TWILL, Route, Scope, VxlanSpec, parse_mac,
};
use twill_tests::{NsScope, bridge_json, ip_json, preconditions};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn addresses_ensure_replace_delete_flush() {
    if !preconditions("addresses_ensure_replace_delete_flush", &["ip"]) {
        return;
    }
    let scope = NsScope::new("l3a");
    let ns = scope.create("a");
    let listed = ns
        .run(|nl: Netlink| async move {
            let br = nl.ensure_bridge("cni0", None).await?;
            nl.ensure_address(br.index, net("10.244.1.1/24")).await?;
            nl.ensure_address(br.index, net("10.244.1.1/24")).await?; // idempotent
            nl.replace_address(br.index, net("10.244.9.1/24")).await?;
            nl.replace_address(br.index, net("10.244.9.1/24")).await?;
            let listed = nl.list_addresses(br.index).await?;
            Ok::<_, Error>(listed)
        })
        .unwrap();
    let v4: Vec<IpNet> = listed.into_iter().filter(|a| a.addr().is_ipv4()).collect();
    assert_eq!(v4, vec![net("10.244.1.1/24"), net("10.244.9.1/24")]);
    let j = ip_json(&scope.name("a"), &["addr", "show", "dev", "cni0"]);
    let addrs: Vec<String> = j[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(addrs, vec!["10.244.1.1/24", "10.244.9.1/24"]);

    let after = ns
        .run(|nl: Netlink| async move {
            let br = nl.require_link("cni0").await?;
            nl.delete_address(br.index, net("10.244.9.1/24")).await?;
            nl.delete_address(br.index, net("10.244.9.1/24")).await?; // missing is fine
            let one = nl.list_addresses(br.index).await?;
            nl.flush_addresses(br.index).await?;
            let none = nl.list_addresses(br.index).await?;
            Ok::<_, Error>((one, none))
        })
        .unwrap();
    assert_eq!(
        after
            .0
            .iter()
            .filter(|a| a.addr().is_ipv4())
            .collect::<Vec<_>>(),
        vec![&net("10.244.1.1/24")]
    );
    assert!(after.1.iter().all(|a| !a.addr().is_ipv4()), "{:?}", after.1);

    let err = ns
        .run(|nl: Netlink| async move { nl.ensure_address(999_999, net("10.0.0.1/24")).await })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adding address 10.0.0.1/24 to link #999999")
            && err.contains(&scope.name("a")),
        "{err}"
    );
}

#[test]
fn routes_replace_list_delete_with_twill_protocol() {
    if !preconditions("routes_replace_list_delete_with_twill_protocol", &["ip"]) {
        return;
    }
    let scope = NsScope::new("l3r");
    let ns = scope.create("a");
    let dst: Ipv4Net = "10.244.2.0/24".parse().unwrap();
    let (ours, all) = ns
        .run(move |nl: Netlink| async move {
            let br = nl.ensure_bridge("under0", None).await?;
            nl.ensure_address(br.index, net("192.168.7.1/24")).await?;
            let via = Route::new(dst)
                .via(Ipv4Addr::new(192, 168, 7, 2))
                .dev(br.index);
            nl.replace_route(&via).await?;
            nl.replace_route(&via).await?; // idempotent
            // Onlink via an address outside any local prefix (the vxlan pattern).
            let onlink = Route::new(
                "10.244.3.0/24"
                    .parse::<twill_netkit::ipnet::IpNet>()
                    .unwrap(),
            )
            .via(Ipv4Addr::new(10, 244, 3, 0))
            .dev(br.index)
            .onlink();
            nl.replace_route(&onlink).await?;
            let link_scope = Route::new(
                "10.244.0.0/16"
                    .parse::<twill_netkit::ipnet::IpNet>()
                    .unwrap(),
            )
            .dev(br.index)
            .scope(Scope::Link);
            nl.replace_route(&link_scope).await?;
            // Replacing the route to dst with a new gateway changes it in place.
            nl.replace_route(
                &Route::new(dst)
                    .via(Ipv4Addr::new(192, 168, 7, 3))
                    .dev(br.index),
            )
            .await?;
            Ok::<_, Error>((
                nl.list_routes(Some(RTPROT_TWILL)).await?,
                nl.list_routes(None).await?,
            ))
        })
        .unwrap();
    assert_eq!(ours.len(), 3, "{ours:?}");
    let r = ours.iter().find(|r| r.dst == dst.into()).unwrap();
    assert_eq!(r.gateway, Some(IpAddr::from(Ipv4Addr::new(192, 168, 7, 3))));
    assert!(
        ours.iter()
            .any(|r| r.onlink && r.gateway == Some(IpAddr::from(Ipv4Addr::new(10, 244, 3, 0))))
    );
    assert!(
        ours.iter()
            .any(|r| r.scope == Scope::Link && r.gateway.is_none())
    );
    assert!(
        all.len() > ours.len(),
        "the kernel's own prefix route is listed too"
    );

    let j = ip_json(
        &scope.name("a"),
        &["route", "show", "proto", &RTPROT_TWILL.to_string()],
    );
    let arr = j.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    let onl = arr.iter().find(|r| r["dst"] == "10.244.3.0/24").unwrap();
    assert!(
        onl["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "onlink")
    );
    assert_eq!(
        arr.iter().find(|r| r["dst"] == "10.244.0.0/16").unwrap()["scope"],
        "link"
    );
    assert_eq!(
        arr.iter().find(|r| r["dst"] == "10.244.2.0/24").unwrap()["gateway"],
        "192.168.7.3"
    );

    let (first, second, left) = ns
        .run(move |nl: Netlink| async move {
            let r = Route::new(dst);
            let first = nl.delete_route(&r).await?;
            let second = nl.delete_route(&r).await?;
            Ok::<_, Error>((
                first,
                second,
                nl.list_routes(Some(RTPROT_TWILL)).await?.len(),
            ))
        })
        .unwrap();
    assert!(first && !second, "deleting a missing route is a no-op");
    assert_eq!(left, 2);

    // A gateway that is not reachable is refused with the route named.
    let err = ns
        .run(move |nl: Netlink| async move {
            nl.replace_route(&Route::new(dst).via(Ipv4Addr::new(172, 16, 0, 1)))
                .await
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("replacing route 10.244.2.0/24 via 172.16.0.1")
            && err.contains(&scope.name("a")),
        "{err}"
    );
}

#[test]
fn neighbours_and_fdb_entries() {
    if !preconditions("neighbours_and_fdb_entries", &["ip", "bridge"]) {
        return;
    }
    let scope = NsScope::new("l3n");
    let ns = scope.create("a");
    let mac_a = parse_mac("0a:00:00:00:00:0a").unwrap();
    let mac_b = parse_mac("0a:00:00:00:00:0b").unwrap();
    let zero = [0u8; 6];
    let (neigh, fdb) = ns
        .run(move |nl: Netlink| async move {
            let br = nl.ensure_bridge("under0", None).await?;
            nl.ensure_address(br.index, net("192.168.8.1/24")).await?;
            let mut spec = VxlanSpec::new("flannel.1", 1);
            spec.local = Some(IpAddr::from(Ipv4Addr::new(192, 168, 8, 1)));
            spec.underlay = Some(br.index);
            let vx = nl.ensure_vxlan(&spec).await?;

            let n = Neighbour {
                ifindex: vx.index,
                ip: Ipv4Addr::new(10, 244, 5, 0).into(),
                mac: mac_a,
            };
            nl.replace_neighbour(&n).await?;
            nl.replace_neighbour(&n).await?;
            // Replace changes the MAC in place.
            nl.replace_neighbour(&Neighbour {
                mac: mac_b,
                ..n.clone()
            })
            .await?;

            let e = FdbEntry {
                ifindex: vx.index,
                mac: mac_b,
                dst: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 8, 2))),
                permanent: true,
            };
            nl.add_fdb(&e, FdbMode::Replace).await?;
            nl.add_fdb(&e, FdbMode::Replace).await?;
            for last in [2u8, 3, 3] {
                let z = FdbEntry {
                    mac: zero,
                    dst: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 8, last))),
                    ..e.clone()
                };
                nl.add_fdb(&z, FdbMode::Append).await?;
            }
            Ok::<_, Error>((
                nl.list_neighbours(vx.index).await?,
                nl.list_fdb(vx.index).await?,
            ))
        })
        .unwrap();
    assert_eq!(neigh.len(), 1);
    assert_eq!(neigh[0].mac, mac_b);
    assert_eq!(fdb.iter().filter(|e| e.mac == mac_b).count(), 1);
    assert_eq!(
        fdb.iter().filter(|e| e.mac == zero).count(),
        2,
        "append adds, twice is once: {fdb:?}"
    );

    let nj = ip_json(&scope.name("a"), &["neigh", "show", "dev", "flannel.1"]);
    assert_eq!(nj[0]["dst"], "10.244.5.0");
    assert_eq!(nj[0]["lladdr"], "0a:00:00:00:00:0b");
    assert!(
        nj[0]["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "PERMANENT")
    );
    let fj = bridge_json(&scope.name("a"), &["fdb", "show", "dev", "flannel.1"]);
    let e = fj
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == "0a:00:00:00:00:0b")
        .unwrap();
    assert_eq!(e["dst"], "192.168.8.2");
    assert_eq!(e["state"], "permanent");
    assert!(e["flags"].as_array().unwrap().iter().any(|f| f == "self"));

    let (n_del, n_again, f_del, f_again, left) = ns
        .run(move |nl: Netlink| async move {
            let vx = nl.require_link("flannel.1").await?;
            let n_del = nl
                .delete_neighbour(vx.index, Ipv4Addr::new(10, 244, 5, 0))
                .await?;
            let n_again = nl
                .delete_neighbour(vx.index, Ipv4Addr::new(10, 244, 5, 0))
                .await?;
            let e = FdbEntry {
                ifindex: vx.index,
                mac: mac_b,
                dst: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 8, 2))),
                permanent: true,
            };
            let f_del = nl.delete_fdb(&e).await?;
            let f_again = nl.delete_fdb(&e).await?;
            Ok::<_, Error>((n_del, n_again, f_del, f_again, nl.list_fdb(vx.index).await?))
        })
        .unwrap();
    assert!(n_del && !n_again);
    assert!(f_del && !f_again);
    assert!(left.iter().all(|e| e.mac == zero));
}

#[test]
fn a_closed_connection_fails_requests_and_reopens_in_the_same_namespace() {
    if !preconditions(
        "a_closed_connection_fails_requests_and_reopens_in_the_same_namespace",
        &["ip"],
    ) {
        return;
    }
    let scope = NsScope::new("l3c");
    let ns = scope.create("a");
    ns.run(|mut nl: Netlink| async move {
        nl.ensure_bridge("cni0", None).await?;
        assert!(!nl.reopen_if_closed()?, "an open connection is kept");
        nl.close();
        while !nl.is_closed() {
            tokio::task::yield_now().await;
        }
        assert!(nl.list_links().await.is_err(), "requests fail once closed");
        assert!(nl.reopen_if_closed()?);
        let names: Vec<String> = nl.list_links().await?.into_iter().map(|l| l.name).collect();
        assert!(names.contains(&"cni0".to_string()), "{names:?}");
        Ok::<_, Error>(())
    })
    .unwrap();
}

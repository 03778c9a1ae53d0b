//! netkit: bridges, veth pairs, vxlan devices and per-link settings, checked through both
//! netkit's own dumps and `ip -j -d link`.

use std::net::Ipv4Addr;

use twill_netkit::{Error, Netlink, VxlanSpec, format_mac, parse_mac};
use twill_tests::{NsScope, ip_json, ip_link, preconditions};

#[test]
fn bridge_ensure_is_idempotent_and_sets_mtu() {
    if !preconditions("bridge_ensure_is_idempotent_and_sets_mtu", &["ip"]) {
        return;
    }
    let scope = NsScope::new("lk1");
    let ns = scope.create("a");
    let (first, second) = ns
        .run(|nl: Netlink| async move {
            let a = nl.ensure_bridge("cni0", Some(1400)).await?;
            let b = nl.ensure_bridge("cni0", Some(1400)).await?;
            Ok::<_, Error>((a, b))
        })
        .unwrap();
    assert_eq!(first.index, second.index);
    assert_eq!(first.kind.as_deref(), Some("bridge"));
    assert!(first.up);
    let j = ip_link(&scope.name("a"), "cni0");
    assert_eq!(j["mtu"], 1400);
    assert_eq!(j["linkinfo"]["info_kind"], "bridge");
    assert!(j["flags"].as_array().unwrap().iter().any(|f| f == "UP"));

    // A later ensure with another MTU changes it in place.
    ns.run(|nl: Netlink| async move { nl.ensure_bridge("cni0", Some(1300)).await })
        .unwrap();
    assert_eq!(ip_link(&scope.name("a"), "cni0")["mtu"], 1300);

    // A non-bridge with that name is refused, naming the link and namespace.
    let err = ns
        .run(|nl: Netlink| async move { nl.ensure_bridge("lo", None).await })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lo") && err.contains("not a bridge") && err.contains(&scope.name("a")),
        "{err}"
    );
}

#[test]
fn veth_peer_is_born_in_the_other_namespace_and_settings_apply() {
    if !preconditions(
        "veth_peer_is_born_in_the_other_namespace_and_settings_apply",
        &["ip"],
    ) {
        return;
    }
    let scope = NsScope::new("lk2");
    let host = scope.create("host");
    let ctr = scope.create("ctr");
    let ctr_ref = &ctr;
    let host_end = host
        .run(|nl: Netlink| async move {
            let br = nl.ensure_bridge("cni0", None).await?;
            // The peer's name exists in the host too: no collision, it is born elsewhere.
            let v = nl
                .create_veth("veth0abc", "eth0tmp", ctr_ref, Some(1450))
                .await?;
            nl.set_controller(v.index, br.index).await?;
            nl.set_hairpin(v.index, true).await?;
            nl.set_up(v.index).await?;
            nl.require_link("veth0abc").await
        })
        .unwrap();
    assert_eq!(host_end.mtu, 1450);
    assert!(host_end.controller.is_some());
    let hj = ip_link(&scope.name("host"), "veth0abc");
    assert_eq!(hj["master"], "cni0");
    assert_eq!(hj["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert!(
        ip_json(&scope.name("host"), &["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] != "eth0tmp")
    );

    // Container side: rename (down first), MAC, MTU, up, and look-ups by name and index.
    let mac = parse_mac("02:42:ac:11:00:02").unwrap();
    let link = ctr
        .run(|nl: Netlink| async move {
            let l = nl.require_link("eth0tmp").await?;
            nl.set_down(l.index).await?;
            nl.rename(l.index, "eth0").await?;
            nl.set_mac(l.index, mac).await?;
            nl.set_mtu(l.index, 1400).await?;
            nl.set_up(l.index).await?;
            let by_index = nl.link_by_index(l.index).await?.unwrap();
            let by_name = nl.require_link("eth0").await?;
            assert_eq!(by_index, by_name);
            assert!(nl.link_by_name("eth0tmp").await?.is_none());
            Ok::<_, Error>(by_name)
        })
        .unwrap();
    assert_eq!(link.mtu, 1400);
    assert_eq!(format_mac(&link.mac), "02:42:ac:11:00:02");
    let cj = ip_link(&scope.name("ctr"), "eth0");
    assert_eq!(cj["address"], "02:42:ac:11:00:02");
    assert_eq!(cj["mtu"], 1400);
    assert_eq!(cj["linkinfo"]["info_kind"], "veth");

    // Detach from the bridge, then delete: both ends disappear.
    host.run(|nl: Netlink| async move {
        let v = nl.require_link("veth0abc").await?;
        nl.set_nocontroller(v.index).await?;
        assert!(nl.require_link("veth0abc").await?.controller.is_none());
        assert!(nl.remove_link("veth0abc").await?);
        assert!(
            !nl.remove_link("veth0abc").await?,
            "second remove is a no-op"
        );
        Ok::<_, Error>(())
    })
    .unwrap();
    let left = ip_json(&scope.name("ctr"), &["link", "show"]);
    assert_eq!(left.as_array().unwrap().len(), 1, "only lo is left: {left}");
}

#[test]
fn move_to_netns_and_duplicate_errors() {
    if !preconditions("move_to_netns_and_duplicate_errors", &["ip"]) {
        return;
    }
    let scope = NsScope::new("lk3");
    let a = scope.create("a");
    let b = scope.create("b");
    let a_ref = &a;
    let b_ref = &b;
    let err = a
        .run(|nl: Netlink| async move {
            nl.create_veth("va", "vb", a_ref, None).await?;
            let va = nl.require_link("va").await?;
            nl.move_to_netns(va.index, b_ref).await?;
            assert!(nl.link_by_name("va").await?.is_none());
            // vb is still here; a second veth called vb in this namespace collides.
            nl.create_veth("vb", "other", b_ref, None).await.map(|_| ())
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(err.is_exists(), "{msg}");
    assert!(
        msg.contains("creating veth vb")
            && msg.contains(&scope.name("a"))
            && msg.contains("File exists"),
        "{msg}"
    );
    assert_eq!(ip_link(&scope.name("b"), "va")["ifname"], "va");

    let err = a
        .run(|nl: Netlink| async move { nl.require_link("nope0").await.map(|_| ()) })
        .unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(
        err.to_string(),
        format!("link nope0 not found in netns {}", scope.name("a"))
    );

    let err = a
        .run(|nl: Netlink| async move { nl.link_by_name("much-too-long-name0").await.map(|_| ()) })
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid interface name"), "{err}");
}

#[test]
fn vxlan_is_created_as_specified_and_kept_when_compatible() {
    if !preconditions(
        "vxlan_is_created_as_specified_and_kept_when_compatible",
        &["ip"],
    ) {
        return;
    }
    let scope = NsScope::new("lk4");
    let ns = scope.create("a");
    let (first, second, replaced) = ns
        .run(|nl: Netlink| async move {
            let br = nl.ensure_bridge("under0", None).await?;
            nl.ensure_address(br.index, "192.168.50.1/24".parse().unwrap())
                .await?;
            let mut spec = VxlanSpec::new("flannel.1", 1);
            spec.local = Some(Ipv4Addr::new(192, 168, 50, 1).into());
            spec.underlay = Some(br.index);
            spec.mtu = Some(1450);
            spec.mac = Some(parse_mac("0a:58:0a:f4:01:00").unwrap());
            let first = nl.ensure_vxlan(&spec).await?;
            let second = nl.ensure_vxlan(&spec).await?;
            spec.port = 4789;
            let replaced = nl.ensure_vxlan(&spec).await?;
            spec.port = 8472;
            nl.ensure_vxlan(&spec).await?;
            Ok::<_, Error>((first, second, replaced))
        })
        .unwrap();
    assert_eq!(first.index, second.index, "a compatible device is kept");
    assert_ne!(
        first.index, replaced.index,
        "an incompatible device is replaced"
    );
    let v = first.vxlan.unwrap();
    assert_eq!((v.vni, v.port, v.learning), (1, 8472, false));
    assert_eq!(v.local, Some(Ipv4Addr::new(192, 168, 50, 1).into()));

    let j = ip_link(&scope.name("a"), "flannel.1");
    let d = &j["linkinfo"]["info_data"];
    assert_eq!(j["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(d["id"], 1);
    assert_eq!(d["port"], 8472);
    assert_eq!(d["local"], "192.168.50.1");
    assert_eq!(d["link"], "under0");
    assert_eq!(d["learning"], false);
    assert_eq!(j["mtu"], 1450);
    assert_eq!(j["address"], "0a:58:0a:f4:01:00");
    assert!(j["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
}

/// `ports_of` lists a bridge's ports and nothing else: not the bridge, not a link that is
/// another bridge's port or no port at all.
#[test]
fn ports_of_lists_the_ports_of_one_bridge() {
    if !preconditions("ports_of_lists_the_ports_of_one_bridge", &["ip"]) {
        return;
    }
    let scope = NsScope::new("lkports");
    let ns = scope.create("a");
    let ns_ref = &ns;
    let (ports, other, empty) = ns
        .run(|nl: Netlink| async move {
            let br = nl.ensure_bridge("br0", None).await?;
            let br1 = nl.ensure_bridge("br1", None).await?;
            let mut made = Vec::new();
            for (name, peer) in [("pa", "pa2"), ("pb", "pb2"), ("pc", "pc2"), ("pd", "pd2")] {
                made.push(nl.create_veth(name, peer, ns_ref, None).await?);
            }
            nl.set_controller(made[0].index, br.index).await?;
            nl.set_controller(made[1].index, br.index).await?;
            nl.set_controller(made[2].index, br1.index).await?;
            let empty = nl.ensure_bridge("br2", None).await?;
            Ok::<_, Error>((
                nl.ports_of(br.index).await?,
                nl.ports_of(br1.index).await?,
                nl.ports_of(empty.index).await?,
            ))
        })
        .unwrap();
    let names = |v: &[twill_netkit::Link]| {
        let mut n: Vec<String> = v.iter().map(|l| l.name.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&ports), ["pa", "pb"]);
    assert_eq!(names(&other), ["pc"]);
    assert!(empty.is_empty(), "{empty:?}");
}

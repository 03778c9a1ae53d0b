//! Link details (alias, veth peer, bridge port state), waiting for a bridge port to forward,
//! and the kernel's address announcements as a neighbour's kernel takes them; in namespaces of the
//! test's own.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestNs, root_or_skip};
use twill_netkit::PortState;

/// `ip -n NS ARGS…`, panicking with stderr on failure; stdout.
fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn alias_peer_and_a_port_that_forwards_once_its_peer_is_up() {
    if !root_or_skip("alias_peer_and_a_port_that_forwards_once_its_peer_is_up") {
        return;
    }
    let host = TestNs::new("ldhost");
    let ctr = TestNs::new("ldctr");
    let peer_ns = &ctr.ns;
    let (veth, detail, before) = host
        .ns
        .run(|nl| async move {
            let br = nl.ensure_bridge("ldbr0", None).await?;
            let veth = nl.create_veth("ldv0", "ldp0", peer_ns, None).await?;
            nl.set_alias(veth.index, "twill-cni eth0 abc").await?;
            nl.set_controller(veth.index, br.index).await?;
            nl.set_up(veth.index).await?;
            let detail = nl.link_detail(veth.index).await?;
            // The peer is down: no carrier, the port cannot forward.
            let before = nl
                .wait_port_enabled(veth.index, Duration::from_millis(50))
                .await?;
            Ok::<_, twill_netkit::Error>((veth, detail, before))
        })
        .expect("setting up the bridge port");
    let detail = detail.expect("the link exists");
    assert_eq!(detail.alias.as_deref(), Some("twill-cni eth0 abc"));
    assert_eq!(detail.port_state, Some(PortState::Disabled));
    assert_eq!(
        before,
        PortState::Disabled,
        "a port without carrier left Disabled"
    );

    let (peer, back) = ctr
        .ns
        .run(|nl| async move {
            let p = nl.require_link("ldp0").await?;
            nl.set_up(p.index).await?;
            let back = nl.link_detail(p.index).await?.and_then(|d| d.peer_index);
            Ok::<_, twill_netkit::Error>((p, back))
        })
        .expect("setting the peer up");
    assert_eq!(detail.peer_index, Some(peer.index), "IFLA_LINK is the peer");
    assert_eq!(back, Some(veth.index), "and the other way round");
    assert_eq!(
        peer.kind.as_deref(),
        Some("veth"),
        "the peer is the other end"
    );

    let index = veth.index;
    let (after, not_a_port) = host
        .ns
        .run(|nl| async move {
            let after = nl.wait_port_enabled(index, Duration::from_secs(2)).await?;
            let br = nl.require_link("ldbr0").await?;
            let not_a_port = nl
                .wait_port_enabled(br.index, Duration::from_millis(10))
                .await;
            Ok::<_, twill_netkit::Error>((after, not_a_port))
        })
        .expect("waiting for the port");
    assert_eq!(
        after,
        PortState::Forwarding,
        "without STP the port forwards once its peer is up"
    );
    let e = not_a_port.expect_err("a bridge is no bridge port");
    assert!(e.to_string().contains("not a bridge port"), "{e}");

    let too_long = "x".repeat(256);
    let refused = host
        .ns
        .run(|nl| async move { Ok::<_, twill_netkit::Error>(nl.set_alias(index, &too_long).await) })
        .expect("netlink");
    assert!(refused.is_err());
}

/// On a bridge with STP on, a port whose peer is up goes Listening/Learning and forwards only
/// after twice the forward delay (15 s each by default). The wait ends as soon as the port
/// leaves Disabled and says so. Before, it waited for Forwarding: the whole timeout (every
/// ADD onto such a bridge sat out its 1 s and printed a warning).
#[test]
fn the_wait_ends_at_once_on_a_bridge_with_stp() {
    if !root_or_skip("the_wait_ends_at_once_on_a_bridge_with_stp") {
        return;
    }
    let host = TestNs::new("ldstph");
    let ctr = TestNs::new("ldstpc");
    ip(
        host.name(),
        &["link", "add", "stpbr0", "type", "bridge", "stp_state", "1"],
    );
    let peer_ns = &ctr.ns;
    let veth = host
        .ns
        .run(|nl| async move {
            let br = nl.ensure_bridge("stpbr0", None).await?;
            let veth = nl.create_veth("stpv0", "stpp0", peer_ns, None).await?;
            nl.set_controller(veth.index, br.index).await?;
            nl.set_up(veth.index).await?;
            Ok::<_, twill_netkit::Error>(veth)
        })
        .expect("setting up the bridge port");
    ctr.ns
        .run(|nl| async move {
            let p = nl.require_link("stpp0").await?;
            nl.set_up(p.index).await
        })
        .expect("setting the peer up");
    let index = veth.index;
    let started = std::time::Instant::now();
    let state = host
        .ns
        .run(|nl| async move { nl.wait_port_enabled(index, Duration::from_secs(10)).await })
        .expect("waiting for the port");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the wait took {took:?} (timeout 10 s) for a port in {state:?}"
    );
    assert!(
        matches!(
            state,
            PortState::Listening | PortState::Learning | PortState::Blocking
        ),
        "an STP bridge's port with its peer up is {state:?}"
    );
}

/// A neighbour's entries (REACHABLE, an old MAC) for both families take the MAC the kernel
/// announces (gratuitous ARP, unsolicited neighbour advertisement) when a link with
/// `arp_notify` and `ndisc_notify` on has its MAC set again, to the same value: what the CNI
/// plugin's ADD relies on.
#[test]
fn a_neighbour_takes_the_announced_mac() {
    if !root_or_skip("a_neighbour_takes_the_announced_mac") {
        return;
    }
    let a = TestNs::new("anna");
    let b = TestNs::new("annb");
    let peer_ns = &b.ns;
    a.ns.run(|nl| async move {
        let v = nl.create_veth("anv0", "anv1", peer_ns, None).await?;
        nl.set_up(v.index).await
    })
    .expect("creating the pair");
    let (an, bn) = (a.name(), b.name());
    ip(an, &["addr", "add", "10.9.0.1/24", "dev", "anv0"]);
    ip(an, &["addr", "add", "fd09::1/64", "dev", "anv0", "nodad"]);
    ip(bn, &["link", "set", "anv1", "up"]);
    ip(bn, &["addr", "add", "10.9.0.2/24", "dev", "anv1"]);
    ip(bn, &["addr", "add", "fd09::2/64", "dev", "anv1", "nodad"]);
    let old = "02:00:00:00:00:01";
    for ipaddr in ["10.9.0.2", "fd09::2"] {
        ip(
            an,
            &[
                "neigh",
                "replace",
                ipaddr,
                "lladdr",
                old,
                "dev",
                "anv0",
                "nud",
                "reachable",
            ],
        );
    }
    let link =
        b.ns.run(|nl| async move { nl.require_link("anv1").await })
            .expect("the announcing link");
    let mac: [u8; 6] = link.mac.as_slice().try_into().expect("an Ethernet MAC");
    b.ns.enter(|| {
        for (family, key) in [("ipv4", "arp_notify"), ("ipv6", "ndisc_notify")] {
            twill_netkit::sysctl::ensure(&twill_netkit::sysctl::conf_key(family, "anv1", key), "1")
                .expect("the notify sysctl");
        }
    })
    .expect("entering b");
    let index = link.index;
    b.ns.run(|nl| async move { nl.set_mac(index, mac).await })
        .expect("setting the same MAC");
    let want = twill_netkit::format_mac(&mac);
    for ipaddr in ["10.9.0.2", "fd09::2"] {
        let mut seen = String::new();
        for _ in 0..100 {
            seen = ip(an, &["neigh", "show", ipaddr, "dev", "anv0"]);
            if seen.contains(&want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            seen.contains(&want),
            "{ipaddr}: still {seen:?}, announced {want}"
        );
    }
}

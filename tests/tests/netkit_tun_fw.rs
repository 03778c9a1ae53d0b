//! netkit: TUN devices (plain, multi-queue with vnet headers and offloads) and nftables
//! whole-table replacement, inside test namespaces.

use std::io::{Read, Write};

use twill_netkit::firewall::{self, Chain, Family, Hook, Rule, Table};
use twill_netkit::tun::{Tun, TunOptions, offload};
use twill_netkit::{Netlink, Route};
use twill_tests::{NsScope, ip_link, preconditions, run};

#[test]
fn plain_tun_carries_raw_ip_packets() {
    if !preconditions("plain_tun_carries_raw_ip_packets", &["ip"]) {
        return;
    }
    let scope = NsScope::new("tun1");
    let ns = scope.create("a");
    let tun = ns
        .enter(|| Tun::create(&TunOptions::plain("flannel0")))
        .unwrap()
        .unwrap();
    assert_eq!(tun.name(), "flannel0");
    assert_eq!(tun.offloads(), 0);
    let j = ip_link(&scope.name("a"), "flannel0");
    assert_eq!(j["linkinfo"]["info_kind"], "tun");
    assert_eq!(j["linkinfo"]["info_data"]["type"], "tun");
    assert_eq!(j["linkinfo"]["info_data"]["pi"], false);

    // Route a prefix into the TUN and read what the kernel hands us: one raw IPv4 packet.
    ns.run(|nl: Netlink| async move {
        let l = nl.require_link("flannel0").await?;
        nl.ensure_address(l.index, "10.244.1.0/32".parse().unwrap())
            .await?;
        nl.set_up(l.index).await?;
        nl.replace_route(
            &Route::new(
                "10.244.0.0/16"
                    .parse::<twill_netkit::ipnet::Ipv4Net>()
                    .unwrap(),
            )
            .dev(l.index),
        )
        .await
    })
    .unwrap();
    let sent = ns
        .enter(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"hello", "10.244.7.7:9999").unwrap()
        })
        .unwrap();
    assert_eq!(sent, 5);
    let mut q = &tun.queues()[0];
    let mut buf = [0u8; 2048];
    // Skip anything else the kernel sent first (e.g. IPv6 router solicitations are not IPv4).
    let pkt = loop {
        let n = q.read(&mut buf).unwrap();
        if n >= 20 && buf[0] >> 4 == 4 && buf[9] == 17 {
            break &buf[..n];
        }
    };
    assert_eq!(&pkt[16..20], &[10, 244, 7, 7]);
    assert_eq!(&pkt[pkt.len() - 5..], b"hello");
    // Writing a packet back is accepted.
    q.write_all(pkt).unwrap();

    drop(tun);
    let left = run("ip", &["-n", &scope.name("a"), "link", "show"]);
    assert!(
        !left.contains("flannel0"),
        "closing every queue removes the device: {left}"
    );
}

#[test]
fn multi_queue_tun_with_vnet_header_gets_offloads() {
    if !preconditions("multi_queue_tun_with_vnet_header_gets_offloads", &["ip"]) {
        return;
    }
    let scope = NsScope::new("tun2");
    let ns = scope.create("a");
    let tun = ns
        .enter(|| Tun::create(&TunOptions::offloaded("twtun0", 2)))
        .unwrap()
        .unwrap();
    assert_eq!(tun.queues().len(), 2);
    assert!(tun.vnet_hdr());
    let want = offload::CSUM | offload::TSO4 | offload::TSO6;
    assert_eq!(
        tun.offloads() & want,
        want,
        "offloads {:#x}",
        tun.offloads()
    );
    let j = ip_link(&scope.name("a"), "twtun0");
    assert_eq!(j["linkinfo"]["info_data"]["multi_queue"], true);
    assert_eq!(j["linkinfo"]["info_data"]["vnet_hdr"], true);

    let err = ns
        .enter(|| {
            let mut o = TunOptions::plain("twtun1");
            o.queues = 2;
            Tun::create(&o)
        })
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("need multi_queue"), "{err}");
}

fn masq_table(network: &str) -> Table {
    Table {
        family: Family::Inet,
        name: "twill".into(),
        chains: vec![
            Chain {
                name: "postrouting".into(),
                hook: Some(Hook {
                    kind: "nat",
                    hook: "postrouting",
                    priority: 100,
                    policy: "accept",
                }),
                rules: vec![
                    Rule::new(
                        format!("ip saddr {network} ip daddr {network} return"),
                        "twill: inside the overlay",
                    ),
                    Rule::new(
                        format!(
                            "ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random"
                        ),
                        "twill: masquerade",
                    ),
                ],
            },
            Chain {
                name: "forward".into(),
                hook: Some(Hook::filter_forward()),
                rules: vec![Rule::new(
                    format!("ip saddr {network} accept"),
                    "twill forward",
                )],
            },
        ],
    }
}

#[test]
fn firewall_table_is_replaced_whole_and_removed() {
    if !preconditions("firewall_table_is_replaced_whole_and_removed", &["nft"]) {
        return;
    }
    let scope = NsScope::new("fw1");
    let ns = scope.create("a");
    masq_table("10.244.0.0/16").apply_in(&ns).unwrap();
    masq_table("10.244.0.0/16").apply_in(&ns).unwrap(); // idempotent
    let listed = ns
        .enter(|| firewall::list_table(Family::Inet, "twill"))
        .unwrap()
        .unwrap();
    assert_eq!(
        listed.matches("masquerade fully-random").count(),
        1,
        "{listed}"
    );
    assert!(listed.contains("10.244.0.0/16"));
    let nft_list = run(
        "ip",
        &[
            "netns",
            "exec",
            &scope.name("a"),
            "nft",
            "list",
            "table",
            "inet",
            "twill",
        ],
    );
    assert!(
        nft_list.contains("comment \"twill: masquerade\""),
        "{nft_list}"
    );

    // A new desired state replaces the old one completely.
    masq_table("10.50.0.0/16").apply_in(&ns).unwrap();
    let listed = ns
        .enter(|| firewall::list_table(Family::Inet, "twill"))
        .unwrap()
        .unwrap();
    assert!(
        listed.contains("10.50.0.0/16") && !listed.contains("10.244.0.0/16"),
        "{listed}"
    );

    // A bad rule fails the whole batch and leaves the previous table in place.
    let mut bad = masq_table("10.60.0.0/16");
    bad.chains[1]
        .rules
        .push(Rule::new("ip saddr nonsense accept", "bad"));
    let err = bad.apply_in(&ns).unwrap_err().to_string();
    assert!(
        err.contains("applying nftables batch") && err.contains(&scope.name("a")),
        "{err}"
    );
    let listed = ns
        .enter(|| firewall::list_table(Family::Inet, "twill"))
        .unwrap()
        .unwrap();
    assert!(
        listed.contains("10.50.0.0/16") && !listed.contains("10.60.0.0/16"),
        "{listed}"
    );

    ns.enter(|| firewall::remove_table(Family::Inet, "twill"))
        .unwrap()
        .unwrap();
    ns.enter(|| firewall::remove_table(Family::Inet, "twill"))
        .unwrap()
        .unwrap();
    let tables = run(
        "ip",
        &["netns", "exec", &scope.name("a"), "nft", "list", "tables"],
    );
    assert!(!tables.contains("twill"), "{tables}");
}

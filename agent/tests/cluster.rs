//! twilld end to end: real etcd, hosts as namespaces, containers attached with twill.

mod common;

use common::AgentLab;
use twill_tests::preconditions;

const TOOLS: &[&str] = &["ip", "ping", "etcd", "etcdctl", "nft"];

fn three_by_two(prefix: &str, config: &str, extra: &[&str]) -> AgentLab {
    let mut lab = AgentLab::new(prefix, 3, config);
    for h in 1..=3 {
        lab.start_agent(h, extra);
    }
    let subnets: std::collections::HashSet<_> = (1..=3)
        .map(|h| lab.wait_subnet(h).ipv4.unwrap().subnet)
        .collect();
    assert_eq!(subnets.len(), 3, "three agents, three distinct subnets");
    for h in 1..=3 {
        lab.add_container(h);
        lab.add_container(h);
    }
    lab
}

#[test]
fn host_gw_all_pairs_ping() {
    if !preconditions("host_gw_all_pairs_ping", TOOLS) {
        return;
    }
    let lab = three_by_two(
        "twa-hg",
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#,
        &[],
    );
    lab.eventually("all pairs reachable over host-gw", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    // Each host routes the two other subnets via the peers' underlay addresses.
    let routes = lab.twill_routes(1);
    assert_eq!(routes.len(), 2, "{routes:?}");
    for r in &routes {
        assert!(
            r["gateway"].as_str().unwrap().starts_with("172.31.0."),
            "{r}"
        );
        assert_eq!(r["dev"], "eth0");
    }
    // Leases look like Flannel's.
    let env = lab.wait_subnet(1);
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        env.ipv4.unwrap().subnet.network(),
        env.ipv4.unwrap().subnet.prefix_len()
    );
    let value = lab.etcdctl(&["get", &key, "--print-value-only"]);
    assert_eq!(
        value.trim(),
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
            lab.cluster.host(1).ip
        )
    );
    assert_eq!(env.mtu, 1500);
    let text = std::fs::read_to_string(lab.subnet_file(1)).unwrap();
    assert_eq!(
        text,
        format!(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n",
            env.gateway().unwrap()
        )
    );
}

#[test]
fn vxlan_all_pairs_ping_and_restart_keeps_everything() {
    if !preconditions("vxlan_all_pairs_ping_and_restart_keeps_everything", TOOLS) {
        return;
    }
    let mut lab = three_by_two(
        "twa-vx",
        r#"{"Network":"10.6.0.0/16","Backend":{"Type":"vxlan"}}"#,
        &[],
    );
    lab.eventually("all pairs reachable over vxlan", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    let h1 = lab.cluster.host(1).name.clone();
    let link = twill_tests::ip_link(&h1, "flannel.1");
    let d = &link["linkinfo"]["info_data"];
    assert_eq!(
        (
            d["id"].as_u64(),
            d["port"].as_u64(),
            d["learning"].as_bool()
        ),
        (Some(1), Some(8472), Some(false))
    );
    assert_eq!(link["mtu"], 1450);
    assert_eq!(lab.wait_subnet(1).mtu, 1450);
    let neigh = twill_tests::ip_json(&h1, &["neigh", "show", "dev", "flannel.1"]);
    assert_eq!(neigh.as_array().unwrap().len(), 2, "{neigh}");
    let fdb = twill_tests::bridge_json(&h1, &["fdb", "show", "dev", "flannel.1"]);
    assert_eq!(
        fdb.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["dst"].is_string())
            .count(),
        2,
        "{fdb}"
    );
    let routes_before = lab.twill_routes(1);
    assert!(routes_before.iter().all(|r| {
        r["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "onlink"))
    }));

    // kill -9 and restart: same subnet, same VTEP, same routes; traffic never stops.
    let subnet = lab.wait_subnet(1).ipv4.unwrap().subnet;
    let ifindex = link["ifindex"].clone();
    lab.kill_agent(1);
    assert!(
        lab.ping(0, &lab.containers[2].ip.clone()),
        "data plane survives the agent's death"
    );
    lab.start_agent(1, &[]);
    lab.eventually("agent 1 ready again", 20, || {
        lab.log(1).matches("ready").count() >= 2
    });
    assert_eq!(lab.wait_subnet(1).ipv4.unwrap().subnet, subnet);
    assert_eq!(
        twill_tests::ip_link(&h1, "flannel.1")["ifindex"],
        ifindex,
        "the VTEP was kept, not recreated"
    );
    assert_eq!(lab.twill_routes(1), routes_before);
    assert!(lab.unreachable_pairs().is_empty());

    // SIGTERM: clean exit, data plane left in place.
    let status = lab.stop_agent(1);
    assert!(status.success(), "{status:?}\n{}", lab.log(1));
    assert_eq!(lab.twill_routes(1), routes_before);
}

#[test]
fn vxlan_with_a_public_ip_that_is_not_local_sends_from_the_links_address() {
    if !preconditions(
        "vxlan_with_a_public_ip_that_is_not_local_sends_from_the_links_address",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-pub",
        1,
        r#"{"Network":"10.8.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    lab.start_agent(1, &["--public-ip", common::NAT_OUTSIDE]);
    lab.wait_subnet(1);
    // The lease advertises the outside address; the VTEP sends from the link's, as
    // Flannel's (a VTEP bound to an address the host does not hold sends nothing usable).
    lab.assert_advertised(common::NAT_OUTSIDE);
    let ns = &lab.cluster.host(1).name;
    lab.eventually("flannel.1 exists", 10, || {
        twill_tests::ns_exec_ok(ns, &["ip", "link", "show", "flannel.1"])
    });
    let link = twill_tests::ip_link(ns, "flannel.1");
    assert_eq!(
        link["linkinfo"]["info_data"]["local"],
        lab.cluster.host(1).ip.to_string(),
        "{link}"
    );
}

#[test]
fn vxlan_direct_routing_uses_host_routes_on_the_same_l2() {
    if !preconditions(
        "vxlan_direct_routing_uses_host_routes_on_the_same_l2",
        TOOLS,
    ) {
        return;
    }
    let lab = three_by_two(
        "twa-dr",
        r#"{"Network":"10.7.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
        &[],
    );
    lab.eventually("all pairs reachable with DirectRouting", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    let routes = lab.twill_routes(2);
    assert_eq!(routes.len(), 2);
    assert!(routes.iter().all(|r| r["dev"] == "eth0"), "{routes:?}");
}

#[test]
fn expired_lease_removes_routes_and_hand_deleted_route_comes_back() {
    if !preconditions(
        "expired_lease_removes_routes_and_hand_deleted_route_comes_back",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-ex",
        3,
        // Leases below .200, where the test writes a corrupt value while agents run.
        r#"{"Network":"10.8.0.0/16","SubnetMax":"10.8.199.0","Backend":{"Type":"host-gw"}}"#,
    );
    for h in 1..=3 {
        lab.start_agent(h, &["--subnet-lease-ttl", "4"]);
    }
    let s3 = lab.wait_subnet(3).ipv4.unwrap().subnet;
    lab.wait_subnet(1);
    lab.wait_subnet(2);
    lab.eventually("h1 routes both peers", 15, || {
        lab.twill_routes(1).len() == 2
    });

    // A route deleted by hand comes back on the next reconcile.
    let h1 = lab.cluster.host(1).name.clone();
    twill_tests::run("ip", &["-n", &h1, "route", "del", &s3.to_string()]);
    lab.eventually("the deleted route is restored", 10, || {
        lab.twill_routes(1).len() == 2
    });

    // A corrupt value is skipped with a log line naming its key.
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.8.200.0-24",
        "garbage",
    ]);
    lab.eventually("the corrupt lease is logged", 10, || {
        lab.log(1).contains("10.8.200.0-24")
    });
    assert_eq!(lab.twill_routes(1).len(), 2);

    // Renewal keeps leases alive well past the TTL...
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(lab.twill_routes(1).len(), 2, "leases are renewed");
    // ...until an agent stops: its lease expires and the others remove its route.
    lab.kill_agent(3);
    lab.eventually("h3's route is removed after its lease expires", 20, || {
        lab.twill_routes(1)
            .iter()
            .all(|r| r["dst"] != s3.to_string())
    });
}

#[test]
fn a_full_network_is_reported_and_agents_never_share_a_subnet() {
    if !preconditions(
        "a_full_network_is_reported_and_agents_never_share_a_subnet",
        TOOLS,
    ) {
        return;
    }
    // Two subnets (10.9.0.64/26 and 10.9.0.128/26 after skipping the first), three agents
    // started at the same instant.
    let mut lab = AgentLab::new(
        "twa-fu",
        3,
        r#"{"Network":"10.9.0.0/24","SubnetLen":26,"SubnetMax":"10.9.0.128","Backend":{"Type":"host-gw"}}"#,
    );
    for h in 1..=3 {
        lab.start_agent(h, &[]);
    }
    let p = |h| lab.subnet_file(h).exists();
    lab.eventually("two agents lease a subnet", 20, || {
        (1..=3).filter(|h| p(*h)).count() == 2
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let winners: Vec<usize> = (1..=3).filter(|h| p(*h)).collect();
    assert_eq!(winners.len(), 2);
    let subnets: std::collections::HashSet<_> = winners
        .iter()
        .map(|h| lab.wait_subnet(*h).ipv4.unwrap().subnet)
        .collect();
    assert_eq!(subnets.len(), 2, "never the same subnet twice");
    let loser = (1..=3).find(|h| !p(*h)).unwrap();
    lab.eventually("the third agent says the network is full", 10, || {
        lab.log(loser)
            .contains("no free IPv4 subnet in 10.9.0.0/24")
    });
}

#[test]
fn flannel_leases_are_programmed_and_etcd_outage_keeps_traffic() {
    if !preconditions(
        "flannel_leases_are_programmed_and_etcd_outage_keeps_traffic",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-fl",
        2,
        r#"{"Network":"10.10.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    // A Flannel node's lease, exactly as flanneld writes it.
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.10.77.0-24",
        r#"{"PublicIP":"172.31.0.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
    ]);
    lab.start_agent(1, &["--subnet-lease-ttl", "6"]);
    lab.start_agent(2, &["--subnet-lease-ttl", "6"]);
    lab.wait_subnet(1);
    lab.wait_subnet(2);
    let h1 = lab.cluster.host(1).name.clone();
    lab.eventually("the Flannel peer is programmed", 15, || {
        let neigh = twill_tests::ip_json(&h1, &["neigh", "show", "dev", "flannel.1"]);
        neigh
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["dst"] == "10.10.77.0" && n["lladdr"] == "c6:d2:32:6f:8f:44")
    });
    let fdb = twill_tests::bridge_json(&h1, &["fdb", "show", "dev", "flannel.1"]);
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "c6:d2:32:6f:8f:44" && e["dst"] == "172.31.0.99"),
        "{fdb}"
    );
    assert!(
        lab.twill_routes(1)
            .iter()
            .any(|r| r["dst"] == "10.10.77.0/24" && r["gateway"] == "10.10.77.0")
    );
    // What we write has Flannel's shape.
    let env = lab.wait_subnet(1);
    let key = format!(
        "/coreos.com/network/subnets/{}-24",
        env.ipv4.unwrap().subnet.network()
    );
    let v: serde_json::Value =
        serde_json::from_str(lab.etcdctl(&["get", &key, "--print-value-only"]).trim()).unwrap();
    assert_eq!(v["BackendType"], "vxlan");
    assert_eq!(v["BackendData"]["VNI"], 1);
    assert!(v["PublicIPv6"].is_null());
    assert!(twill_netkit::parse_mac(v["BackendData"]["VtepMAC"].as_str().unwrap()).is_some());

    lab.add_container(1);
    lab.add_container(2);
    lab.eventually("containers reach each other", 15, || {
        lab.unreachable_pairs().is_empty()
    });

    // etcd down for longer than the lease TTL: traffic keeps flowing, nothing is flushed.
    lab.etcd.stop();
    for _ in 0..8 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert!(
            lab.unreachable_pairs().is_empty(),
            "traffic stopped while etcd was down"
        );
    }
    lab.etcd.start().unwrap();
    lab.etcd.wait_healthy().unwrap();
    // The agents reconnect; our lease was lost with the outage and is re-acquired (same subnet).
    lab.eventually("h1 holds its subnet again in etcd", 30, || {
        let out = lab.etcdctl(&["get", &key, "--print-value-only"]);
        out.contains("vxlan")
    });
    assert_eq!(
        lab.wait_subnet(1).ipv4.unwrap().subnet,
        env.ipv4.unwrap().subnet
    );
    assert!(lab.unreachable_pairs().is_empty());
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    if !preconditions(
        "etcd_over_tls_with_client_certificates",
        &["ip", "ping", "etcd", "etcdctl", "openssl"],
    ) {
        return;
    }
    let mut lab = AgentLab::new_tls(
        "twa-tls",
        3,
        r#"{"Network":"10.11.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    assert!(lab.endpoint().starts_with("https://"));
    lab.start_agent(1, &[]);
    lab.start_agent(2, &[]);
    lab.wait_subnet(1);
    lab.wait_subnet(2);
    lab.add_container(1);
    lab.add_container(2);
    lab.eventually("containers reach each other with etcd over TLS", 15, || {
        lab.unreachable_pairs().is_empty()
    });

    // h3 trusts the wrong CA (the client certificate, which signed nothing): one line says
    // TLS failed and which flags to check, without the client library's structures.
    let good = lab.tls_args.clone();
    lab.tls_args = good
        .iter()
        .map(|a| a.replace("ca.crt", "client.crt"))
        .collect();
    lab.start_agent(3, &[]);
    lab.tls_args = good;
    lab.eventually("h3 says why it cannot talk to etcd", 20, || {
        lab.log(3).contains("TLS: ")
    });
    let log = lab.log(3);
    let line = log.lines().find(|l| l.contains("TLS: ")).unwrap_or("");
    assert!(line.contains("check --etcd-cafile"), "{line}");
    assert!(!line.contains("tonic::"), "{line}");
    assert!(!lab.subnet_file(3).exists());
}

#[test]
fn healthz_metrics_and_status() {
    if !preconditions("healthz_metrics_and_status", TOOLS) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-hz",
        2,
        r#"{"Network":"10.12.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    lab.start_agent(1, &["--healthz-ip", "127.0.0.1", "--healthz-port", "10270"]);
    lab.start_agent(2, &[]);
    let env = lab.wait_subnet(1);
    lab.wait_subnet(2);
    let get = |path: &str| lab.http_get(1, 10270, path);
    lab.eventually("healthz says ok", 15, || {
        get("/healthz").starts_with("HTTP/1.1 200")
    });
    // Liveness, for the DaemonSet's livenessProbe (readiness stays /healthz).
    let live = get("/livez");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let m = get("/metrics");
    assert!(m.contains("application/openmetrics-text"), "{m}");
    assert!(
        m.contains(&format!(
            "twilld_lease_info{{subnet=\"{}\"}} 1",
            env.ipv4.unwrap().subnet
        )),
        "{m}"
    );
    assert!(m.contains("twilld_peers 1"), "{m}");
    assert!(m.contains("twilld_reconcile_runs_total"), "{m}");
    assert!(m.contains("twilld_etcd_reachable 1"), "{m}");
    assert!(
        m.contains("# TYPE twilld_etcd_operation_errors counter"),
        "{m}"
    );
    assert!(m.trim_end().ends_with("# EOF"), "{m}");

    // `twilld status` prints our lease (marked) and the peer.
    let text = lab.twilld_status(1, &[]);
    assert!(
        text.contains(&format!("* {}", env.ipv4.unwrap().subnet)),
        "{text}"
    );
    assert!(text.contains(&lab.cluster.host(2).ip.to_string()), "{text}");
    assert!(text.contains("host-gw"), "{text}");

    // Bad flags: exit 2 with the flag named.
    let out = std::process::Command::new(common::TWILLD)
        .args(["--subnet-lease-renew-margin", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--subnet-lease-renew-margin"));
}

#[test]
fn reservations_foreign_peers_and_masquerade_with_both_firewalls() {
    if !preconditions(
        "reservations_foreign_peers_and_masquerade_with_both_firewalls",
        &["ip", "ping", "etcd", "etcdctl", "nft", "iptables-save"],
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-rs",
        2,
        r#"{"Network":"10.13.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    // A reservation for h1 (a key without an etcd lease) and a peer that is not on our L2.
    let h1_ip = lab.cluster.host(1).ip;
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.13.50.0-24",
        &format!(r#"{{"PublicIP":"{h1_ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#),
    ]);
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.13.60.0-24",
        r#"{"PublicIP":"192.168.99.9","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    lab.start_agent(1, &["--ip-masq"]);
    lab.start_agent(2, &["--ip-masq", "--firewall-backend", "iptables"]);
    assert_eq!(
        lab.wait_subnet(1).ipv4.unwrap().subnet.to_string(),
        "10.13.50.0/24",
        "the reservation is used"
    );
    lab.wait_subnet(2);
    let json = lab.etcdctl(&[
        "get",
        "/coreos.com/network/subnets/10.13.50.0-24",
        "-w",
        "json",
    ]);
    assert!(
        !json.contains("\"lease\""),
        "the reservation was not converted into a leased key: {json}"
    );
    lab.eventually("the off-L2 peer is reported", 10, || {
        lab.log(1)
            .contains("192.168.99.9 is not on this node's L2 subnet")
    });
    assert!(
        lab.twill_routes(1)
            .iter()
            .all(|r| r["dst"] != "10.13.60.0/24")
    );
    assert!(
        std::fs::read_to_string(lab.subnet_file(1))
            .unwrap()
            .contains("FLANNEL_IPMASQ=true")
    );

    // Pods reach the outside (the underlay bridge's address) only through twilld's masquerade:
    // with FLANNEL_IPMASQ=true the CNI plugin adds none, and the underlay has no route back
    // to pod addresses.
    lab.add_container(1);
    lab.add_container(2);
    let outside = lab.cluster.underlay_ip().to_string();
    lab.eventually("pods on both hosts reach the outside", 15, || {
        lab.ping(0, &outside) && lab.ping(1, &outside)
    });
    let h1 = lab.cluster.host(1).name.clone();
    let h2 = lab.cluster.host(2).name.clone();
    let nft = twill_tests::run(
        "ip",
        &[
            "netns", "exec", &h1, "nft", "list", "table", "inet", "twill",
        ],
    );
    assert!(nft.contains("masquerade fully-random"), "{nft}");
    let ipt = twill_tests::run("ip", &["netns", "exec", &h2, "iptables-save"]);
    assert!(
        ipt.contains("-A POSTROUTING -j TWILL-POSTRTG")
            && ipt.contains("-A TWILL-POSTRTG -s 10.13.0.0/16 ! -d 224.0.0.0/4"),
        "{ipt}"
    );
    assert!(ipt.contains("-A FORWARD -j TWILL-FWD"), "{ipt}");
    assert!(
        twill_tests::run("ip", &["netns", "exec", &h1, "nft", "list", "tables"])
            .lines()
            .all(|l| !l.contains("twill-cni"))
    );
    // Re-applying (every reconcile) does not duplicate anything.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let ipt = twill_tests::run("ip", &["netns", "exec", &h2, "iptables-save"]);
    assert_eq!(
        ipt.matches("-A POSTROUTING -j TWILL-POSTRTG").count(),
        1,
        "{ipt}"
    );
    assert_eq!(
        ipt.matches("twilld: pods to the outside").count(),
        1,
        "{ipt}"
    );
}

#[test]
fn a_changed_firewall_backend_leaves_no_masquerade_of_the_other_behind() {
    if !preconditions(
        "a_changed_firewall_backend_leaves_no_masquerade_of_the_other_behind",
        &["ip", "etcd", "etcdctl", "nft", "iptables-save"],
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-fb",
        1,
        r#"{"Network":"10.19.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    let h1 = lab.cluster.host(1).name.clone();
    let iptables_save = || twill_tests::run("ip", &["netns", "exec", &h1, "iptables-save"]);
    let nft_tables = || twill_tests::run("ip", &["netns", "exec", &h1, "nft", "list", "tables"]);
    lab.start_agent(1, &["--ip-masq", "--firewall-backend", "iptables"]);
    lab.wait_subnet(1);
    lab.eventually("iptables masquerades", 15, || {
        iptables_save().contains("-A TWILL-POSTRTG -s 10.19.0.0/16 ! -d 224.0.0.0/4")
    });
    lab.stop_agent(1);
    // The same node moved to nftables: the iptables masquerade of the earlier run must go, or
    // it keeps masquerading whatever this run's --ip-masq says.
    lab.start_agent(1, &["--firewall-backend", "nftables"]);
    lab.eventually(
        "nftables holds the rules and iptables' nat chain is gone",
        15,
        || nft_tables().contains("table inet twill") && !iptables_save().contains("TWILL-POSTRTG"),
    );
    lab.stop_agent(1);
    lab.start_agent(1, &["--ip-masq", "--firewall-backend", "nftables"]);
    lab.eventually("nftables masquerades", 15, || {
        twill_tests::run(
            "ip",
            &[
                "netns", "exec", &h1, "nft", "list", "table", "inet", "twill",
            ],
        )
        .contains("masquerade fully-random")
    });
    lab.stop_agent(1);
    // And back to iptables without --ip-masq: the nftables table must go too.
    lab.start_agent(1, &["--firewall-backend", "iptables"]);
    lab.eventually(
        "iptables holds the rules and the nftables table is gone",
        15,
        || {
            iptables_save().contains("-A TWILL-FWD -s 10.19.0.0/16")
                && !nft_tables().contains("table inet twill")
        },
    );
    let ipt = iptables_save();
    assert!(!ipt.contains("MASQUERADE"), "{ipt}");
}

#[test]
fn agents_started_at_the_same_instant_never_share_a_subnet_repeatedly() {
    if !preconditions(
        "agents_started_at_the_same_instant_never_share_a_subnet_repeatedly",
        TOOLS,
    ) {
        return;
    }
    // Exactly three subnets for three agents: every race must end with all three distinct.
    let mut lab = AgentLab::new(
        "twa-rc",
        3,
        r#"{"Network":"10.14.0.0/24","SubnetLen":26,"SubnetMin":"10.14.0.0","SubnetMax":"10.14.0.128","Backend":{"Type":"host-gw"}}"#,
    );
    for round in 0..4 {
        for h in 1..=3 {
            let _ = std::fs::remove_file(lab.subnet_file(h));
        }
        lab.etcdctl(&["del", "--prefix", "/coreos.com/network/subnets/"]);
        for h in 1..=3 {
            lab.start_agent(h, &[]);
        }
        let subnets: std::collections::HashSet<_> = (1..=3)
            .map(|h| lab.wait_subnet(h).ipv4.unwrap().subnet)
            .collect();
        assert_eq!(
            subnets.len(),
            3,
            "round {round}: two agents share a subnet: {subnets:?}"
        );
        for h in 1..=3 {
            lab.kill_agent(h);
        }
    }
}

/// The etcd lease a key is bound to (0: none), read with etcdctl.
fn lease_of(lab: &AgentLab, key: &str) -> Option<u64> {
    let json = lab.etcdctl(&["get", key, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("etcdctl's JSON");
    v["kvs"]
        .as_array()
        .and_then(|kvs| kvs.first())
        .map(|kv| kv["lease"].as_u64().unwrap_or(0))
}

#[test]
fn a_lease_made_a_reservation_with_etcdctl_stays_one() {
    if !preconditions("a_lease_made_a_reservation_with_etcdctl_stays_one", TOOLS) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-mr",
        1,
        r#"{"Network":"10.21.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    lab.start_agent(1, &[]);
    let s = lab.wait_subnet(1).ipv4.unwrap().subnet;
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        s.network(),
        s.prefix_len()
    );
    lab.eventually("the key is bound to a lease", 10, || {
        lease_of(&lab, &key).is_some_and(|l| l != 0)
    });
    // Flannel's Documentation/reservations.md: put the value again without `--lease`.
    let value = lab.etcdctl(&["get", &key, "--print-value-only"]);
    lab.etcdctl(&["put", &key, value.trim()]);
    // Several reconciles later (1 s apart) it is still a reservation, not bound again.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(lease_of(&lab, &key), Some(0), "{}", lab.log(1));
    assert_eq!(
        lab.etcdctl(&["lease", "list"]).trim(),
        "found 0 leases",
        "the store lease it left is revoked"
    );
}

#[test]
fn a_renewal_that_fails_while_etcd_is_unreachable_is_retried_before_the_lease_expires() {
    if !preconditions(
        "a_renewal_that_fails_while_etcd_is_unreachable_is_retried_before_the_lease_expires",
        TOOLS,
    ) {
        return;
    }
    use std::time::{Duration, Instant};
    let until = |t: Instant| std::thread::sleep(t.saturating_duration_since(Instant::now()));
    let mut lab = AgentLab::new(
        "twa-rn",
        2,
        r#"{"Network":"10.14.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    // TTL 130 s with a one-minute margin: the renewal is due 70 s after the lease is taken.
    lab.start_agent(
        1,
        &[
            "--subnet-lease-ttl",
            "130",
            "--subnet-lease-renew-margin",
            "1",
        ],
    );
    let s1 = lab.wait_subnet(1).ipv4.unwrap().subnet;
    let leased = Instant::now();
    lab.start_agent(2, &[]);
    lab.wait_subnet(2);
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        s1.network(),
        s1.prefix_len()
    );
    let lease = lease_of(&lab, &key).expect("h1's key");
    assert_ne!(lease, 0);

    // h1 cannot reach etcd from 60 s to 95 s: the renewal at 70 s fails. Before the fix the
    // retry came one renewal interval later (140 s), after the lease expired at 130 s. The
    // connections are reset, not dropped: a dropped keepalive stays in the socket's send queue
    // and reaches etcd when the path opens again, renewing the lease behind the agent's back.
    let endpoint = lab.endpoint();
    let hostport = endpoint.trim_start_matches("http://");
    let (ip, port) = hostport.rsplit_once(':').expect("host:port");
    let h1 = lab.cluster.host(1).name.clone();
    let nft = |args: &[&str]| {
        let mut all = vec!["netns", "exec", h1.as_str(), "nft"];
        all.extend_from_slice(args);
        twill_tests::run("ip", &all);
    };
    until(leased + Duration::from_secs(60));
    nft(&["add", "table", "inet", "twt_cut"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "twt_cut",
        "out",
        "{ type filter hook output priority 0; }",
    ]);
    nft(&[
        "add", "rule", "inet", "twt_cut", "out", "ip", "daddr", ip, "tcp", "dport", port, "reject",
        "with", "tcp", "reset",
    ]);
    until(leased + Duration::from_secs(95));
    nft(&["delete", "table", "inet", "twt_cut"]);
    // Past the lease's first expiry: the key is still there, bound to the same lease.
    until(leased + Duration::from_secs(145));
    assert_eq!(
        lease_of(&lab, &key),
        Some(lease),
        "h1 kept its lease:\n{}",
        lab.log(1)
    );
    assert!(
        lab.log(1)
            .contains(&format!("renewing the lease of {s1} failed; retrying in")),
        "the renewal did fail while etcd was cut off:\n{}",
        lab.log(1)
    );
    assert!(
        !lab.log(2).contains("removed stale route"),
        "h2 never dropped h1's route:\n{}",
        lab.log(2)
    );
    assert!(
        lab.twill_routes(2)
            .iter()
            .any(|r| r["dst"] == s1.to_string())
    );
    assert!(
        lab.log(1).contains("etcd answers again after"),
        "the log says when etcd is back:
{}",
        lab.log(1)
    );
}

#[test]
fn a_corrupt_value_never_cuts_a_live_node_off_and_its_owner_writes_it_back() {
    if !preconditions(
        "a_corrupt_value_never_cuts_a_live_node_off_and_its_owner_writes_it_back",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-cv",
        2,
        r#"{"Network":"10.15.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    lab.start_agent(1, &[]);
    lab.start_agent(2, &[]);
    lab.wait_subnet(1);
    let s2 = lab.wait_subnet(2).ipv4.unwrap().subnet;
    lab.add_container(1);
    lab.add_container(2);
    lab.eventually("both containers reach each other", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        s2.network(),
        s2.prefix_len()
    );
    let good = lab.etcdctl(&["get", &key, "--print-value-only"]);

    // 100 KB of garbage over h2's live key with a plain put (which also detaches it from its
    // etcd lease): h1 keeps h2's route and names the key, h2 writes its value back.
    let garbage = "#".repeat(100_000);
    lab.etcdctl(&["put", &key, &garbage]);
    lab.eventually("h2 writes its value back", 10, || {
        lab.etcdctl(&["get", &key, "--print-value-only"]) == good
            && lease_of(&lab, &key).is_some_and(|l| l != 0)
    });
    lab.eventually("h1 names the corrupt key", 10, || lab.log(1).contains(&key));
    assert!(lab.unreachable_pairs().is_empty());
    assert!(
        !lab.log(1).contains("removed stale route"),
        "h1 never dropped h2's route:\n{}",
        lab.log(1)
    );
    for h in 1..=2 {
        let longest = lab.log(h).lines().map(str::len).max().unwrap_or(0);
        assert!(
            longest < 2000,
            "h{h} quoted the value whole: a {longest}-byte log line"
        );
    }

    // h2 restarts while its own value is corrupt: same subnet, containers still reachable.
    lab.stop_agent(2);
    lab.etcdctl(&["put", &key, "garbage"]);
    lab.start_agent(2, &[]);
    lab.eventually("h2 takes its key back", 20, || {
        lab.etcdctl(&["get", &key, "--print-value-only"]) == good
    });
    assert_eq!(
        lab.wait_subnet(2).ipv4.unwrap().subnet,
        s2,
        "h2 kept its subnet"
    );
    assert!(lab.unreachable_pairs().is_empty());
}

#[test]
fn nftables_mode_accepts_pod_traffic_past_an_iptables_forward_drop_policy() {
    if !preconditions(
        "nftables_mode_accepts_pod_traffic_past_an_iptables_forward_drop_policy",
        &[
            "ip",
            "ping",
            "etcd",
            "etcdctl",
            "nft",
            "iptables",
            "iptables-save",
        ],
    ) {
        return;
    }
    // Docker sets iptables' FORWARD policy to DROP. With nftables, twill's own forward accept
    // does not override a drop in another table: the accept must reach iptables too.
    let mut lab = AgentLab::new(
        "twa-fd",
        2,
        r#"{"Network":"10.17.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    for h in 1..=2 {
        let host = lab.cluster.host(h).name.clone();
        twill_tests::run(
            "ip",
            &["netns", "exec", &host, "iptables", "-P", "FORWARD", "DROP"],
        );
        lab.start_agent(h, &["--firewall-backend", "nftables"]);
        lab.wait_subnet(h);
        lab.add_container(h);
    }
    lab.eventually("pods on both hosts reach each other", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    let h1 = lab.cluster.host(1).name.clone();
    let ipt = twill_tests::run("ip", &["netns", "exec", &h1, "iptables-save"]);
    assert!(
        ipt.contains(":FORWARD DROP")
            && ipt.contains("-A FORWARD -j TWILL-FWD")
            && ipt.contains("-A TWILL-FWD -s 10.17.0.0/16 "),
        "{ipt}"
    );
    assert!(
        !ipt.contains("TWILL-POSTRTG"),
        "nat stays in nftables: {ipt}"
    );
    let nft = twill_tests::run(
        "ip",
        &[
            "netns", "exec", &h1, "nft", "list", "table", "inet", "twill",
        ],
    );
    assert!(nft.contains("ip saddr 10.17.0.0/16 accept"), "{nft}");
}

#[test]
fn a_changed_network_or_backend_removes_the_earlier_routes_and_devices() {
    if !preconditions(
        "a_changed_network_or_backend_removes_the_earlier_routes_and_devices",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-es",
        2,
        r#"{"Network":"10.18.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    let h1 = lab.cluster.host(1).name.clone();
    let phase = |lab: &mut AgentLab, config: &str, network: &str| {
        for h in 1..=2 {
            lab.stop_agent(h);
        }
        lab.etcdctl(&["put", "/coreos.com/network/config", config]);
        for h in 1..=2 {
            lab.start_agent(h, &[]);
        }
        let prefix = network.trim_end_matches("0.0/16");
        lab.eventually(&format!("agents lease in {network}"), 20, || {
            (1..=2).all(|h| {
                lab.wait_subnet(h)
                    .ipv4
                    .is_some_and(|p| p.subnet.to_string().starts_with(prefix))
            })
        });
        lab.eventually(&format!("h1 routes only inside {network}"), 20, || {
            let routes = lab.twill_routes(1);
            !routes.is_empty()
                && routes
                    .iter()
                    .all(|r| r["dst"].as_str().is_some_and(|d| d.starts_with(prefix)))
        });
    };
    for h in 1..=2 {
        lab.start_agent(h, &[]);
    }
    lab.eventually("a host-gw route to h2", 20, || {
        !lab.twill_routes(1).is_empty()
    });
    // Another Network and backend: host-gw's routes via eth0 in the old one must go.
    phase(
        &mut lab,
        r#"{"Network":"10.19.0.0/16","Backend":{"Type":"vxlan"}}"#,
        "10.19.0.0/16",
    );
    assert_eq!(
        twill_tests::ip_link(&h1, "flannel.1")["ifname"],
        "flannel.1"
    );
    // And back to host-gw: the VTEP and its routes must go.
    phase(
        &mut lab,
        r#"{"Network":"10.20.0.0/16","Backend":{"Type":"host-gw"}}"#,
        "10.20.0.0/16",
    );
    let links = twill_tests::ip_json(&h1, &["link", "show"]);
    assert!(
        links
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] != "flannel.1"),
        "{links}"
    );
}

#[test]
fn host_gw_refuses_a_public_ip_behind_nat() {
    if !preconditions("host_gw_refuses_a_public_ip_behind_nat", TOOLS) {
        return;
    }
    // Peers would route this node's subnet via an address that is not on their link.
    let mut lab = AgentLab::new(
        "twa-hgn",
        1,
        r#"{"Network":"10.21.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    lab.start_agent(1, &["--public-ip", common::NAT_OUTSIDE]);
    assert!(
        lab.agent_exits_within(1, std::time::Duration::from_secs(15)),
        "{}",
        lab.log(1)
    );
    let log = lab.log(1);
    assert!(
        log.contains(&format!(
            "the public IP {} differs from the interface's address {}",
            common::NAT_OUTSIDE,
            lab.cluster.host(1).ip
        )) && log.contains("use vxlan"),
        "{log}"
    );
}

#[test]
fn an_unreadable_subnet_file_is_said_not_silently_dropped() {
    if !preconditions(
        "an_unreadable_subnet_file_is_said_not_silently_dropped",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-sfb",
        1,
        r#"{"Network":"10.22.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    let file = lab.subnet_file(1);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "FLANNEL_SUBNET=not-a-subnet\n").unwrap();
    lab.start_agent(1, &[]);
    lab.eventually("a subnet is leased", 15, || {
        lab.log(1).contains("leased new subnets")
    });
    assert!(
        lab.log(1)
            .contains("the subnet file of an earlier run does not read"),
        "{}",
        lab.log(1)
    );
}

#[test]
fn a_vxlan_device_set_down_or_changed_by_hand_is_repaired() {
    if !preconditions(
        "a_vxlan_device_set_down_or_changed_by_hand_is_repaired",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-vd",
        2,
        r#"{"Network":"10.23.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    for h in 1..=2 {
        lab.start_agent(h, &[]);
        lab.wait_subnet(h);
        lab.add_container(h);
    }
    lab.eventually("both pods reachable over vxlan", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    let h1 = lab.cluster.host(1).name.clone();
    let own = format!("{}/32", lab.wait_subnet(1).ipv4.unwrap().subnet.network());
    let state = |lab: &AgentLab| {
        let link = twill_tests::ip_link(&h1, "flannel.1");
        let addrs = twill_tests::ip_json(&h1, &["-4", "addr", "show", "dev", "flannel.1"]);
        let has_addr = addrs.to_string().contains(own.split('/').next().unwrap());
        (
            link["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            link["mtu"].as_u64(),
            has_addr,
            lab.twill_routes(1).len(),
        )
    };
    assert_eq!(state(&lab), (true, Some(1450), true, 1));

    // Down: the kernel drops its routes and neighbours and refuses new routes via it.
    twill_tests::run("ip", &["-n", &h1, "link", "set", "flannel.1", "down"]);
    lab.eventually(
        "the VTEP set down is set up again, its route back",
        10,
        || state(&lab) == (true, Some(1450), true, 1),
    );
    lab.eventually("pods reachable again", 10, || {
        lab.unreachable_pairs().is_empty()
    });

    // Its address flushed, its MTU and MAC changed by hand (peers send to the lease's MAC).
    let mac = twill_tests::ip_link(&h1, "flannel.1")["address"].clone();
    twill_tests::run("ip", &["-n", &h1, "addr", "flush", "dev", "flannel.1"]);
    twill_tests::run(
        "ip",
        &["-n", &h1, "link", "set", "flannel.1", "mtu", "1300"],
    );
    twill_tests::run(
        "ip",
        &[
            "-n",
            &h1,
            "link",
            "set",
            "flannel.1",
            "address",
            "0e:99:00:00:00:01",
        ],
    );
    lab.eventually("the VTEP's address, MTU and MAC are restored", 10, || {
        state(&lab) == (true, Some(1450), true, 1)
            && twill_tests::ip_link(&h1, "flannel.1")["address"] == mac
    });
    lab.eventually("pods reachable after the repair", 10, || {
        lab.unreachable_pairs().is_empty()
    });
}

#[test]
fn vxlan_gbp_and_learning_are_set_on_the_device_as_flannel_sets_them() {
    // Before: Backend.GBP and Backend.Learning were ignored. A Flannel node with GBP sends
    // packets with the policy extension, which a device without it drops (kube-proxy's
    // marked traffic among them), and a device made without GBP was kept when it was asked.
    if !preconditions(
        "vxlan_gbp_and_learning_are_set_on_the_device_as_flannel_sets_them",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-gbp",
        2,
        r#"{"Network":"10.9.0.0/16","Backend":{"Type":"vxlan","GBP":true,"Learning":true}}"#,
    );
    let h1 = lab.cluster.host(1).name.clone();
    // A device of an earlier run without GBP: replaced, not kept.
    twill_tests::run(
        "ip",
        &[
            "-n",
            &h1,
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "nolearning",
        ],
    );
    for h in 1..=2 {
        lab.start_agent(h, &[]);
    }
    for h in 1..=2 {
        lab.wait_subnet(h);
        lab.add_container(h);
    }
    lab.eventually(
        "both containers reach each other over GBP devices",
        20,
        || lab.unreachable_pairs().is_empty(),
    );
    for h in 1..=2 {
        let name = lab.cluster.host(h).name.clone();
        let link = twill_tests::ip_json(&name, &["-d", "link", "show", "flannel.1"]);
        let data = &link[0]["linkinfo"]["info_data"];
        assert_eq!(data["gbp"], true, "host {h}: {data}");
        assert_eq!(data["learning"], true, "host {h}: {data}");
    }
    // What the device learns is the kernel's: reconciles (every second here) leave it.
    twill_tests::run(
        "bridge",
        &[
            "-n",
            &h1,
            "fdb",
            "add",
            "02:00:00:00:00:42",
            "dev",
            "flannel.1",
            "dst",
            "172.31.0.99",
            "dynamic",
        ],
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let fdb = twill_tests::run("bridge", &["-n", &h1, "fdb", "show", "dev", "flannel.1"]);
    assert!(
        fdb.contains("02:00:00:00:00:42"),
        "a learned entry was removed by a reconcile: {fdb}"
    );
}

//! twilld with IPv6 end to end: dual-stack and IPv6-only networks over host-gw and vxlan on
//! real etcd, hosts as namespaces on a dual-stack underlay, containers as namespaces wired to
//! a `cni0` bridge by hand (the CNI plugin's dual-stack support is tested in its own crate).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::AgentLab;
use twill_netkit::subnet_env::{SubnetEnv, first_v4, first_v6};
use twill_tests::{ip_json, preconditions, run};

const TOOLS: &[&str] = &["ip", "ping", "etcd", "etcdctl", "nft", "bridge"];

/// A container: its namespace and addresses.
struct Ctr {
    ns: String,
    v4: Option<String>,
    v6: Option<String>,
}

/// `ip -n NS ARGS…`.
fn ip(ns: &str, args: &[&str]) {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full);
}

/// Gives host `h` a `cni0` bridge with the gateways of its subnets (what the CNI plugin
/// does), and IPv4 forwarding (twilld turns on IPv6 forwarding itself).
fn host_bridge(lab: &AgentLab, h: usize, env: &SubnetEnv) {
    let ns = lab.cluster.host(h).name.clone();
    ip(&ns, &["link", "add", "cni0", "type", "bridge"]);
    if let Some(p) = env.ipv4 {
        let gw = format!("{}/{}", first_v4(p.subnet), p.subnet.prefix_len());
        ip(&ns, &["addr", "add", &gw, "dev", "cni0"]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
    }
    if let Some(p) = env.ipv6 {
        let gw = format!("{}/{}", first_v6(p.subnet), p.subnet.prefix_len());
        ip(&ns, &["-6", "addr", "add", &gw, "dev", "cni0", "nodad"]);
    }
    ip(&ns, &["link", "set", "cni0", "up"]);
}

/// Container `k` on host `h`: addresses `.10+k` / `::10+k` in the host's subnets.
fn container(lab: &AgentLab, h: usize, k: u32, env: &SubnetEnv) -> Ctr {
    let suffix = format!("h{h}c{k}");
    let netns = lab.cluster.extra_netns(&suffix).expect("container netns");
    let ns = netns.label().to_string();
    let host = lab.cluster.host(h).name.clone();
    let port = format!("v{suffix}");
    ip(
        &host,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    );
    ip(&host, &["link", "set", &port, "master", "cni0", "up"]);
    let mut c = Ctr {
        ns: ns.clone(),
        v4: None,
        v6: None,
    };
    if let Some(p) = env.ipv4 {
        let a = std::net::Ipv4Addr::from(u32::from(p.subnet.network()) + 10 + k);
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{a}/{}", p.subnet.prefix_len()),
                "dev",
                "eth0",
            ],
        );
        c.v4 = Some(a.to_string());
    }
    if let Some(p) = env.ipv6 {
        let a = std::net::Ipv6Addr::from(u128::from(p.subnet.network()) + 10 + u128::from(k));
        let cidr = format!("{a}/{}", p.subnet.prefix_len());
        ip(&ns, &["-6", "addr", "add", &cidr, "dev", "eth0", "nodad"]);
        c.v6 = Some(a.to_string());
    }
    ip(&ns, &["link", "set", "eth0", "up"]);
    if let Some(p) = env.ipv4 {
        ip(
            &ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &first_v4(p.subnet).to_string(),
            ],
        );
    }
    if let Some(p) = env.ipv6 {
        ip(
            &ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &first_v6(p.subnet).to_string(),
            ],
        );
    }
    std::mem::forget(netns); // removed with the cluster (same prefix)
    c
}

fn ping(from: &Ctr, to: &str) -> bool {
    twill_tests::ns_exec_ok(&from.ns, &["ping", "-c1", "-W1", to])
}

/// Pairs that do not reach each other, per family: `(from, to, family)`.
fn unreachable(ctrs: &[Ctr]) -> Vec<(usize, usize, &'static str)> {
    let mut bad = Vec::new();
    for (a, from) in ctrs.iter().enumerate() {
        for (b, to) in ctrs.iter().enumerate() {
            if a == b {
                continue;
            }
            if let Some(t) = &to.v4
                && !ping(from, t)
            {
                bad.push((a, b, "v4"));
            }
            // A container without IPv6 (on an IPv4-only node) is not asked to reach IPv6.
            if let Some(t) = &to.v6
                && from.v6.is_some()
                && !ping(from, t)
            {
                bad.push((a, b, "v6"));
            }
        }
    }
    bad
}

/// 3 hosts running twilld with `config`, 2 containers each.
fn three_by_two(
    prefix: &str,
    config: &str,
    extra: &[&str],
) -> (AgentLab, Vec<SubnetEnv>, Vec<Ctr>) {
    let mut lab = AgentLab::new(prefix, 3, config);
    for h in 1..=3 {
        lab.start_agent(h, extra);
    }
    let envs: Vec<SubnetEnv> = (1..=3).map(|h| lab.wait_subnet(h)).collect();
    let v4: HashSet<_> = envs
        .iter()
        .filter_map(|e| e.ipv4.map(|p| p.subnet))
        .collect();
    let v6: HashSet<_> = envs
        .iter()
        .filter_map(|e| e.ipv6.map(|p| p.subnet))
        .collect();
    assert!(v4.len() == 3 || v4.is_empty(), "{envs:?}");
    assert_eq!(
        v6.len(),
        3,
        "three agents, three distinct IPv6 subnets: {envs:?}"
    );
    let mut ctrs = Vec::new();
    for h in 1..=3 {
        host_bridge(&lab, h, &envs[h - 1]);
        for k in 0..2 {
            ctrs.push(container(&lab, h, k, &envs[h - 1]));
        }
    }
    (lab, envs, ctrs)
}

fn routes(lab: &AgentLab, h: usize, family: &str) -> Vec<serde_json::Value> {
    ip_json(
        &lab.cluster.host(h).name,
        &[family, "route", "show", "proto", "116"],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
}

fn all_pairs(lab: &AgentLab, ctrs: &[Ctr], what: &str) {
    lab.eventually(what, 30, || unreachable(ctrs).is_empty());
}

/// The agents lease below 10.41.200.0 (`SubnetMax`): a test writes another node's lease at
/// 10.41.250.0 while they run, which a random pick must never hold.
const DUAL_HG: &str = r#"{"Network":"10.41.0.0/16","SubnetMax":"10.41.199.0","EnableIPv6":true,"IPv6Network":"fd00:41::/48","Backend":{"Type":"host-gw"}}"#;

#[test]
fn dual_stack_host_gw_all_pairs_and_restart_keeps_both_subnets() {
    if !preconditions(
        "dual_stack_host_gw_all_pairs_and_restart_keeps_both_subnets",
        TOOLS,
    ) {
        return;
    }
    let http = ["--healthz-ip", "127.0.0.1", "--healthz-port", "10270"];
    let (mut lab, envs, ctrs) = three_by_two("twa-6hg", DUAL_HG, &http);
    all_pairs(
        &lab,
        &ctrs,
        "all pairs reachable over host-gw, both families",
    );
    // IPv6 routes go via the peers' IPv6 underlay addresses.
    let r6 = routes(&lab, 1, "-6");
    assert_eq!(r6.len(), 2, "{r6:?}");
    for r in &r6 {
        assert!(r["gateway"].as_str().unwrap().starts_with("fd31::"), "{r}");
        assert_eq!(r["dev"], "eth0");
    }
    assert_eq!(routes(&lab, 1, "-4").len(), 2);
    // The key and value are Flannel's, byte for byte.
    let env = &envs[0];
    let (s4, s6) = (env.ipv4.unwrap().subnet, env.ipv6.unwrap().subnet);
    let key = format!(
        "/coreos.com/network/subnets/{}-{}&{}-{}",
        s4.network(),
        s4.prefix_len(),
        s6.network(),
        s6.prefix_len()
    );
    let value = lab.etcdctl(&["get", &key, "--print-value-only"]);
    assert_eq!(
        value.trim(),
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"host-gw"}}"#,
            lab.cluster.host(1).ip,
            lab.cluster.host(1).ip6
        )
    );
    let text = std::fs::read_to_string(lab.subnet_file(1)).unwrap();
    assert_eq!(
        text,
        format!(
            "FLANNEL_NETWORK=10.41.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_IPV6_NETWORK=fd00:41::/48\nFLANNEL_IPV6_SUBNET={}/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n",
            first_v4(s4),
            first_v6(s6)
        )
    );
    let h1 = lab.cluster.host(1).name.clone();
    assert_eq!(
        run(
            "ip",
            &[
                "netns",
                "exec",
                &h1,
                "sysctl",
                "-n",
                "net.ipv6.conf.all.forwarding"
            ]
        )
        .trim(),
        "1"
    );
    // /metrics shows both subnets.
    lab.eventually("metrics", 10, || {
        lab.http_get(1, 10270, "/metrics").contains(&format!(
            "twilld_lease_info{{subnet=\"{s4}\",ipv6_subnet=\"{s6}\"}} 1"
        ))
    });

    // kill -9 and restart: the same subnets of both families, from the lease by public IP.
    lab.kill_agent(1);
    std::fs::remove_file(lab.subnet_file(1)).unwrap();
    lab.start_agent(1, &http);
    let again = lab.wait_subnet(1);
    assert_eq!((again.ipv4, again.ipv6), (env.ipv4, env.ipv6));
    all_pairs(&lab, &ctrs, "all pairs reachable after the restart");
    let keys = lab.etcdctl(&[
        "get",
        "--prefix",
        "/coreos.com/network/subnets/",
        "--keys-only",
    ]);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 3, "{keys}");
}

#[test]
fn dual_stack_vxlan_all_pairs_and_a_flannel_lease_for_both_families() {
    if !preconditions(
        "dual_stack_vxlan_all_pairs_and_a_flannel_lease_for_both_families",
        TOOLS,
    ) {
        return;
    }
    // Below the subnets of the Flannel lease written mid-run (10.42.200.0, fd00:42:0:c8::).
    let config = r#"{"Network":"10.42.0.0/16","SubnetMax":"10.42.199.0","EnableIPv6":true,"IPv6Network":"fd00:42::/48","IPv6SubnetMax":"fd00:42:0:c7::","Backend":{"Type":"vxlan"}}"#;
    let (lab, envs, ctrs) = three_by_two("twa-6vx", config, &[]);
    all_pairs(&lab, &ctrs, "all pairs reachable over vxlan, both families");
    let h1 = lab.cluster.host(1).name.clone();
    // Forwarding is on now; router advertisements on the underlay must still be taken.
    let accept_ra = twill_tests::run(
        "ip",
        &[
            "netns",
            "exec",
            &h1,
            "sysctl",
            "-n",
            "net.ipv6.conf.eth0.accept_ra",
        ],
    );
    assert_eq!(accept_ra.trim(), "2", "accept_ra on the underlay");
    let link = twill_tests::ip_link(&h1, "flannel-v6.1");
    let d = &link["linkinfo"]["info_data"];
    assert_eq!(
        d["local6"].as_str(),
        Some(lab.cluster.host(1).ip6.to_string().as_str()),
        "{link}"
    );
    assert_eq!(
        (d["id"].as_u64(), d["port"].as_u64()),
        (Some(1), Some(8472))
    );
    assert_eq!(link["mtu"], 1430, "underlay − 70");
    assert_eq!(envs[0].mtu, 1430, "one MTU that fits both devices");
    let s6 = envs[0].ipv6.unwrap().subnet;
    let addrs = ip_json(
        &h1,
        &[
            "-6",
            "addr",
            "show",
            "dev",
            "flannel-v6.1",
            "scope",
            "global",
        ],
    );
    assert_eq!(
        addrs[0]["addr_info"][0]["local"].as_str(),
        Some(s6.network().to_string().as_str()),
        "{addrs}"
    );
    assert_eq!(addrs[0]["addr_info"][0]["prefixlen"], 128);

    // A Flannel dual-stack node's lease: both halves programmed, then both removed.
    let key = "/coreos.com/network/subnets/10.42.200.0-24&fd00:42:0:c8::-64";
    let value = r#"{"PublicIP":"172.31.0.200","PublicIPv6":"fd31::200","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:11:22:33:44:55"},"BackendV6Data":{"VNI":1,"VtepMAC":"6e:11:22:33:44:66"}}"#;
    lab.etcdctl(&["put", key, value]);
    let programmed = |h: &str| {
        let n4 = ip_json(h, &["neigh", "show", "dev", "flannel.1"]).to_string();
        let n6 = ip_json(h, &["-6", "neigh", "show", "dev", "flannel-v6.1"]).to_string();
        let f4 = twill_tests::bridge_json(h, &["fdb", "show", "dev", "flannel.1"]).to_string();
        let f6 = twill_tests::bridge_json(h, &["fdb", "show", "dev", "flannel-v6.1"]).to_string();
        let r4 = ip_json(h, &["route", "show", "10.42.200.0/24"]).to_string();
        let r6 = ip_json(h, &["-6", "route", "show", "fd00:42:0:c8::/64"]).to_string();
        [
            n4.contains("10.42.200.0") && n4.contains("6e:11:22:33:44:55"),
            n6.contains("fd00:42:0:c8::") && n6.contains("6e:11:22:33:44:66"),
            f4.contains("172.31.0.200"),
            f6.contains("fd31::200"),
            r4.contains("10.42.200.0"),
            r6.contains("fd00:42:0:c8::"),
        ]
    };
    lab.eventually("the Flannel lease programmed for both families", 15, || {
        programmed(&h1).iter().all(|x| *x)
    });
    lab.etcdctl(&["del", key]);
    lab.eventually("the Flannel lease removed for both families", 15, || {
        programmed(&h1).iter().all(|x| !*x)
    });
    assert!(unreachable(&ctrs).is_empty());
}

#[test]
fn ipv6_only_host_gw_and_vxlan_all_pairs() {
    if !preconditions("ipv6_only_host_gw_and_vxlan_all_pairs", TOOLS) {
        return;
    }
    for (prefix, kind) in [("twa-6o-hg", "host-gw"), ("twa-6o-vx", "vxlan")] {
        let config = format!(
            r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:43::/48","Backend":{{"Type":"{kind}"}}}}"#
        );
        let (lab, envs, ctrs) = three_by_two(prefix, &config, &[]);
        assert!(envs.iter().all(|e| e.ipv4.is_none()), "{envs:?}");
        all_pairs(
            &lab,
            &ctrs,
            &format!("all pairs reachable over {kind}, IPv6 only"),
        );
        // Keys a Flannel node skips, none of them colliding.
        let keys = lab.etcdctl(&[
            "get",
            "--prefix",
            "/coreos.com/network/subnets/",
            "--keys-only",
        ]);
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        for k in &keys {
            let last = k.rsplit('/').next().unwrap();
            assert!(!last.contains('&') && !last.contains('.'), "{k}");
            let v = lab.etcdctl(&["get", k, "--print-value-only"]);
            assert!(
                v.starts_with(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd31::"#),
                "{v}"
            );
        }
        assert!(routes(&lab, 1, "-4").is_empty());
        assert_eq!(routes(&lab, 1, "-6").len(), 2);
        if kind == "vxlan" {
            let h1 = lab.cluster.host(1).name.clone();
            assert!(!twill_tests::ns_exec_ok(
                &h1,
                &["ip", "link", "show", "flannel.1"]
            ));
        }
    }
}

#[test]
fn an_ipv4_only_peer_among_dual_stack_nodes_still_works() {
    if !preconditions(
        "an_ipv4_only_peer_among_dual_stack_nodes_still_works",
        TOOLS,
    ) {
        return;
    }
    // Hosts 1 and 2 run twilld dual-stack; host 3 is an IPv4-only node (an older twill or a
    // Flannel without EnableIPv6): its lease is written by hand and it routes by hand.
    let mut lab = AgentLab::new("twa-6mix", 3, DUAL_HG);
    lab.start_agent(1, &[]);
    lab.start_agent(2, &[]);
    let envs: Vec<SubnetEnv> = (1..=2).map(|h| lab.wait_subnet(h)).collect();
    let h3 = lab.cluster.host(3).name.clone();
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.41.250.0-24",
        &format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
            lab.cluster.host(3).ip
        ),
    ]);
    let env3 = SubnetEnv {
        ipv4: Some(twill_netkit::subnet_env::SubnetPair {
            network: "10.41.0.0/16".parse().unwrap(),
            subnet: "10.41.250.0/24".parse().unwrap(),
        }),
        ipv6: None,
        mtu: 1500,
        ipmasq: false,
    };
    for (h, env) in [(1, &envs[0]), (2, &envs[1])] {
        let peer = lab.cluster.host(h).ip.to_string();
        let subnet = env.ipv4.unwrap().subnet.to_string();
        ip(&h3, &["route", "add", &subnet, "via", &peer]);
    }
    let mut ctrs = Vec::new();
    for (h, env) in [(1, &envs[0]), (2, &envs[1]), (3, &env3)] {
        host_bridge(&lab, h, env);
        ctrs.push(container(&lab, h, 0, env));
    }
    all_pairs(
        &lab,
        &ctrs,
        "IPv4 between all three, IPv6 between the dual-stack two",
    );
    assert_eq!(routes(&lab, 1, "-4").len(), 2);
    assert_eq!(routes(&lab, 1, "-6").len(), 1);
}

#[test]
fn ipv6_masquerade_to_an_address_outside_the_network() {
    if !preconditions("ipv6_masquerade_to_an_address_outside_the_network", TOOLS) {
        return;
    }
    let mut lab = AgentLab::new("twa-6mq", 1, DUAL_HG);
    lab.start_agent(1, &["--ip-masq"]);
    let env = lab.wait_subnet(1);
    host_bridge(&lab, 1, &env);
    let c = container(&lab, 1, 0, &env);
    // The underlay namespace has no route back to the pod subnets: only a masqueraded echo
    // request (source = the host's underlay address) gets an answer.
    let outside6 = lab.cluster.underlay_ip6().to_string();
    let outside4 = lab.cluster.underlay_ip().to_string();
    lab.eventually(
        "pods reach the outside over IPv6 and IPv4, masqueraded",
        15,
        || ping(&c, &outside6) && ping(&c, &outside4),
    );
    let h1 = lab.cluster.host(1).name.clone();
    let table = run(
        "ip",
        &[
            "netns", "exec", &h1, "nft", "list", "table", "inet", "twill",
        ],
    );
    assert!(
        table.contains("ip6 saddr fd00:41::/48 ip6 daddr != ff00::/8 masquerade fully-random"),
        "{table}"
    );
    assert!(table.contains("ip saddr 10.41.0.0/16"), "{table}");
}

#[test]
fn two_keys_for_one_ipv4_subnet_keep_its_route_until_both_are_gone() {
    if !preconditions(
        "two_keys_for_one_ipv4_subnet_keep_its_route_until_both_are_gone",
        TOOLS,
    ) {
        return;
    }
    // An IPv4-only twill node next to a node moving to dual stack: its old key and its new
    // one name the same IPv4 subnet. Deleting either must leave the route.
    let mut lab = AgentLab::new(
        "twa-6two",
        1,
        // Above the subnet the test writes as another node's (10.44.14.0).
        r#"{"Network":"10.44.0.0/16","SubnetMin":"10.44.15.0","Backend":{"Type":"host-gw"}}"#,
    );
    lab.start_agent(1, &[]);
    lab.wait_subnet(1);
    let value = r#"{"PublicIP":"172.31.0.77","PublicIPv6":null,"BackendType":"host-gw"}"#;
    let value6 = r#"{"PublicIP":"172.31.0.77","PublicIPv6":"fd31::77","BackendType":"host-gw"}"#;
    let old = "/coreos.com/network/subnets/10.44.14.0-24";
    let new = "/coreos.com/network/subnets/10.44.14.0-24&fd00:44:0:e::-64";
    let has_route = || {
        routes(&lab, 1, "-4")
            .iter()
            .any(|r| r["dst"] == "10.44.14.0/24")
    };
    lab.etcdctl(&["put", old, value]);
    lab.etcdctl(&["put", new, value6]);
    lab.eventually("the route", 10, has_route);
    lab.etcdctl(&["del", old]);
    // Two reconciles (1 s apart) pass: the route must still be there.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        has_route(),
        "deleting one key removed the route the other still holds"
    );
    lab.etcdctl(&["put", old, value]);
    std::thread::sleep(Duration::from_secs(1));
    lab.etcdctl(&["del", new]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        has_route(),
        "deleting the dual-stack key removed the route the old key holds"
    );
    lab.etcdctl(&["del", old]);
    lab.eventually("the route gone with the last key", 10, || !has_route());
}

#[test]
fn a_create_is_refused_when_any_key_was_created_after_the_snapshot() {
    use twill_agent::etcd_store::{EtcdOptions, EtcdStore};
    use twill_agent::lease::{LeaseRecord, Subnets};
    use twill_agent::lease_store::LeaseStore;
    use twill_agent::netconf::BackendType;
    if !preconditions(
        "a_create_is_refused_when_any_key_was_created_after_the_snapshot",
        &["etcd"],
    ) {
        return;
    }
    let etcd = twill_testbed::Etcd::start_local().expect("etcd");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EtcdStore::connect(&EtcdOptions {
            endpoints: vec![etcd.endpoint()],
            prefix: "/coreos.com/network".into(),
            ..EtcdOptions::default()
        })
        .await
        .expect("connecting");
        let record = LeaseRecord::new("192.0.2.1".parse().unwrap(), BackendType::HostGw);
        let key = |a: &str, b: &str| Subnets {
            v4: Some(a.parse().unwrap()),
            v6: Some(b.parse().unwrap()),
        };
        let lease = store.grant(60).await.unwrap();
        let since = store.snapshot().await.unwrap().revision;
        let theirs = key("10.9.1.0/24", "fd00:9:0:1::/64");
        assert!(
            store
                .create_lease(theirs, &record, lease, since)
                .await
                .unwrap()
        );
        // Same IPv6 subnet under another key, picked from the old snapshot: refused.
        let ours = key("10.9.2.0/24", "fd00:9:0:1::/64");
        assert!(
            !store
                .create_lease(ours, &record, lease, since)
                .await
                .unwrap()
        );
        // Picked again from a fresh snapshot: allowed.
        let since = store.snapshot().await.unwrap().revision;
        let ours = key("10.9.2.0/24", "fd00:9:0:2::/64");
        assert!(
            store
                .create_lease(ours, &record, lease, since)
                .await
                .unwrap()
        );
        // An existing key is never created over.
        let since = store.snapshot().await.unwrap().revision;
        assert!(
            !store
                .create_lease(ours, &record, lease, since)
                .await
                .unwrap()
        );
    });
}

#[test]
fn ipv6_without_an_ipv6_address_is_refused_and_public_ipv6_is_announced() {
    if !preconditions(
        "ipv6_without_an_ipv6_address_is_refused_and_public_ipv6_is_announced",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new("twa-6pub", 1, DUAL_HG);
    let h1 = lab.cluster.host(1).name.clone();
    ip(
        &h1,
        &["-6", "addr", "flush", "dev", "eth0", "scope", "global"],
    );
    lab.start_agent(1, &[]);
    let mut agent = lab.agents[0].take().unwrap();
    let status = agent.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", lab.log(1));
    assert!(
        lab.log(1)
            .contains("has no global IPv6 address: pass --public-ipv6"),
        "{}",
        lab.log(1)
    );
    // --public-ipv6 is what the lease announces (FLANNELD_PUBLIC_IPV6 works the same way).
    lab.start_agent(1, &["--public-ipv6", "fd31::77"]);
    let env = lab.wait_subnet(1);
    let s4 = env.ipv4.unwrap().subnet;
    let s6 = env.ipv6.unwrap().subnet;
    let key = format!(
        "/coreos.com/network/subnets/{}-{}&{}-{}",
        s4.network(),
        s4.prefix_len(),
        s6.network(),
        s6.prefix_len()
    );
    let value = lab.etcdctl(&["get", &key, "--print-value-only"]);
    assert!(value.contains(r#""PublicIPv6":"fd31::77""#), "{value}");
}

#[test]
fn vxlan_direct_routing_routes_ipv6_peers_on_the_segment_directly() {
    if !preconditions(
        "vxlan_direct_routing_routes_ipv6_peers_on_the_segment_directly",
        TOOLS,
    ) {
        return;
    }
    let config = r#"{"Network":"10.45.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:45::/48","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let mut lab = AgentLab::new("twa-6dr", 2, config);
    lab.start_agent(1, &[]);
    lab.start_agent(2, &[]);
    let envs: Vec<SubnetEnv> = (1..=2).map(|h| lab.wait_subnet(h)).collect();
    let mut ctrs = Vec::new();
    for h in 1..=2 {
        host_bridge(&lab, h, &envs[h - 1]);
        ctrs.push(container(&lab, h, 0, &envs[h - 1]));
    }
    all_pairs(&lab, &ctrs, "both families over direct routes");
    let r6 = routes(&lab, 1, "-6");
    assert_eq!(r6.len(), 1, "{r6:?}");
    assert_eq!(r6[0]["gateway"], lab.cluster.host(2).ip6.to_string());
    assert_eq!(r6[0]["dev"], "eth0");
}

#[test]
fn host_gw_routes_peers_on_an_on_link_prefix_of_a_dhcpv6_address() {
    if !preconditions(
        "host_gw_routes_peers_on_an_on_link_prefix_of_a_dhcpv6_address",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new(
        "twa-6dh",
        2,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:44::/48","Backend":{"Type":"host-gw"}}"#,
    );
    // What DHCPv6 and a router advertisement leave: the address as a /128, its /64 as an
    // on-link route. The kernel routes via any address of that /64, as Flannel's host-gw uses.
    let net6 = lab.cluster.underlay_net6().to_string();
    for h in 1..=2 {
        let host = lab.cluster.host(h);
        let (ns, a) = (host.name.clone(), host.ip6);
        ip(
            &ns,
            &["-6", "addr", "del", &format!("{a}/64"), "dev", "eth0"],
        );
        ip(
            &ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        ip(
            &ns,
            &[
                "-6", "route", "replace", &net6, "dev", "eth0", "proto", "ra",
            ],
        );
    }
    for h in 1..=2 {
        lab.start_agent(h, &[]);
    }
    let envs: Vec<SubnetEnv> = (1..=2).map(|h| lab.wait_subnet(h)).collect();
    let mut ctrs = Vec::new();
    for h in 1..=2 {
        host_bridge(&lab, h, &envs[h - 1]);
        ctrs.push(container(&lab, h, 0, &envs[h - 1]));
    }
    all_pairs(
        &lab,
        &ctrs,
        "both pods reachable over host-gw via the on-link /64",
    );
    let r = routes(&lab, 1, "-6");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        r[0]["gateway"],
        lab.cluster.host(2).ip6.to_string(),
        "{r:?}"
    );
    assert!(!lab.log(1).contains("not on this node's"), "{}", lab.log(1));
}

#[test]
fn an_ipv6_vtep_set_down_and_up_by_hand_gets_its_address_back() {
    if !preconditions(
        "an_ipv6_vtep_set_down_and_up_by_hand_gets_its_address_back",
        TOOLS,
    ) {
        return;
    }
    let config = r#"{"Network":"10.46.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:46::/48","Backend":{"Type":"vxlan"}}"#;
    let mut lab = AgentLab::new("twa-6vd", 2, config);
    for h in 1..=2 {
        lab.start_agent(h, &[]);
    }
    let envs: Vec<SubnetEnv> = (1..=2).map(|h| lab.wait_subnet(h)).collect();
    let mut ctrs = Vec::new();
    for h in 1..=2 {
        host_bridge(&lab, h, &envs[h - 1]);
        ctrs.push(container(&lab, h, 0, &envs[h - 1]));
    }
    all_pairs(&lab, &ctrs, "both families over vxlan");
    let h1 = lab.cluster.host(1).name.clone();
    let own = format!("\"{}\"", envs[0].ipv6.unwrap().subnet.network());
    let has_address = || {
        ip_json(&h1, &["-6", "addr", "show", "dev", "flannel-v6.1"])
            .to_string()
            .contains(&own)
    };
    assert!(has_address());
    // Without keep_addr_on_down the kernel drops the VTEP's /128 on the way down, and the
    // routes and neighbours with it; the next reconcile must bring back all of them.
    ip(&h1, &["link", "set", "flannel-v6.1", "down"]);
    ip(&h1, &["link", "set", "flannel-v6.1", "up"]);
    lab.eventually("the IPv6 VTEP's address is back", 10, has_address);
    all_pairs(
        &lab,
        &ctrs,
        "both families over vxlan after the VTEP came back",
    );
    assert_eq!(routes(&lab, 1, "-6").len(), 1);
}

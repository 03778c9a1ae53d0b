//! The `twill` binary on dual-stack and IPv6-only subnet files, driven as runtimes drive it:
//! results per CNI version, CHECK of both families, IPv6 reachable the moment ADD returns,
//! parallel ADDs, requested addresses, bad IPv6 input, IPv6 masquerade and a delegated
//! host-local with two ranges. Hosts and containers are namespaces made by the test.

mod common;

use std::collections::HashSet;

use common::{
    Node, add_veth_pair, global_addrs, has_masq_table, ip_files, masq_table, neigh_mac, read_in,
};
use serde_json::{Value, json};
use twill_netkit::Netns;
use twill_tests::cni::reference_plugin_installed;
use twill_tests::{ns_exec_ok, preconditions, run};

/// Flannel's dual-stack subnet file (as twilld and flanneld write it).
const DUAL: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:244::/32\nFLANNEL_IPV6_SUBNET=fd00:244:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
/// An IPv6-only network's subnet file.
const V6_ONLY: &str = "FLANNEL_IPV6_NETWORK=fd00:245::/32\nFLANNEL_IPV6_SUBNET=fd00:245:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

/// The address part of `ips[i].address` of a result.
fn addr_of(r: &Value, i: usize) -> String {
    r["ips"][i]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[{i}] in {r}"))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// The result with what differs per run replaced: MACs, the host veth's name, the netns path.
fn normalized(mut r: Value) -> Value {
    if let Some(ifs) = r.get_mut("interfaces").and_then(Value::as_array_mut) {
        for i in ifs {
            i["mac"] = json!("MAC");
            if i["name"].as_str().is_some_and(|n| n.starts_with("veth")) {
                i["name"] = json!("VETH");
            }
            if i.get("sandbox").is_some() {
                i["sandbox"] = json!("NETNS");
            }
        }
    }
    r
}

/// Dual-stack ADD in every CNI version twill speaks: the whole result, golden; then the
/// kernel, the store and CHECK of both families, and DEL.
#[test]
fn dual_stack_results_per_version_check_and_del() {
    if !preconditions(
        "dual_stack_results_per_version_check_and_del",
        &["ip", "nft"],
    ) {
        return;
    }
    let node = Node::new("v6c1", DUAL);
    let ifaces = |mtu: bool| {
        let m = |v: Value| {
            let mut v = v;
            if mtu {
                v["mtu"] = json!(1450);
            }
            v
        };
        json!([
            m(json!({"name": "cni0", "mac": "MAC"})),
            m(json!({"name": "VETH", "mac": "MAC"})),
            m(json!({"name": "eth0", "mac": "MAC", "sandbox": "NETNS"})),
        ])
    };
    let routes = json!([
        {"dst": "10.244.0.0/16", "gw": "10.244.7.1"},
        {"dst": "fd00:244::/32", "gw": "fd00:244:7::1"},
        {"dst": "0.0.0.0/0", "gw": "10.244.7.1"},
        {"dst": "::/0", "gw": "fd00:244:7::1"},
    ]);
    // Addresses are handed out round robin: the i-th ADD gets .(i+2) and ::(i+2).
    let versions = [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ];
    let mut results = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let (_c, p) = node.ctr(&format!("c{i}"));
        let r = node.add(&format!("ver{i}"), &p, &node.conf(v));
        let (a4, a6) = (
            format!("10.244.7.{}/24", i + 2),
            format!("fd00:244:7::{}/64", i + 2),
        );
        let want = match *v {
            "0.1.0" | "0.2.0" => json!({
                "cniVersion": v,
                "ip4": {"ip": a4, "gateway": "10.244.7.1", "routes": [
                    {"dst": "10.244.0.0/16", "gw": "10.244.7.1"},
                    {"dst": "0.0.0.0/0", "gw": "10.244.7.1"}]},
                "ip6": {"ip": a6, "gateway": "fd00:244:7::1", "routes": [
                    {"dst": "fd00:244::/32", "gw": "fd00:244:7::1"},
                    {"dst": "::/0", "gw": "fd00:244:7::1"}]},
                "dns": {},
            }),
            "0.3.0" | "0.3.1" | "0.4.0" => json!({
                "cniVersion": v,
                "interfaces": ifaces(false),
                "ips": [
                    {"address": a4, "version": "4", "gateway": "10.244.7.1", "interface": 2},
                    {"address": a6, "version": "6", "gateway": "fd00:244:7::1", "interface": 2},
                ],
                "routes": routes,
                "dns": {},
            }),
            _ => json!({
                "cniVersion": v,
                "interfaces": ifaces(*v == "1.1.0"),
                "ips": [
                    {"address": a4, "gateway": "10.244.7.1", "interface": 2},
                    {"address": a6, "gateway": "fd00:244:7::1", "interface": 2},
                ],
                "routes": routes,
                "dns": {},
            }),
        };
        assert_eq!(normalized(r.clone()), want, "{v}: {r}");
        if !matches!(*v, "0.1.0" | "0.2.0") {
            let violations = twill_tests::cni::spec_violations(&r, v, "eth0", &p);
            assert!(violations.is_empty(), "{v}: {violations:?}");
        }
        results.push((p, r));
    }

    // The kernel: both addresses (no DAD pending), both default routes, RAs ignored in the
    // container and on the bridge, both gateways on the bridge, forwarding for both.
    let host = node.scope.name("host");
    let c = node.scope.name("c5");
    let addrs = twill_tests::ip_json(&c, &["addr", "show", "dev", "eth0"]);
    let info = addrs[0]["addr_info"].as_array().unwrap();
    let global = global_addrs(&addrs);
    assert_eq!(global, ["10.244.7.7/24", "fd00:244:7::7/64"], "{addrs}");
    assert!(
        info.iter().all(|a| a.get("tentative").is_none()),
        "no address waits for DAD: {addrs}"
    );
    let defaults = twill_tests::ip_json(&c, &["-6", "route", "show", "default"]);
    assert_eq!(defaults[0]["gateway"], "fd00:244:7::1", "{defaults}");
    assert_eq!(read_in(&c, "/proc/sys/net/ipv6/conf/eth0/accept_ra"), "0");
    assert_eq!(
        read_in(&host, "/proc/sys/net/ipv6/conf/cni0/accept_ra"),
        "0"
    );
    assert_eq!(
        read_in(&host, "/proc/sys/net/ipv6/conf/all/forwarding"),
        "1"
    );
    assert_eq!(read_in(&host, "/proc/sys/net/ipv4/ip_forward"), "1");
    let br = twill_tests::ip_json(&host, &["addr", "show", "dev", "cni0"]);
    let br_addrs: HashSet<String> = global_addrs(&br).into_iter().collect();
    assert_eq!(
        br_addrs,
        HashSet::from(["10.244.7.1/24".to_string(), "fd00:244:7::1/64".to_string()])
    );

    // The store: host-local's layout, one file per address, one marker per range.
    let dir = node.ipam_dir();
    assert_eq!(
        std::fs::read_to_string(dir.join("fd00:244:7::7")).unwrap(),
        "ver5\r\neth0"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "10.244.7.8"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
        "fd00:244:7::8"
    );
    assert_eq!(ip_files(&dir).len(), 14);

    // Masquerade: one inet table, a rule per family.
    let nft = masq_table(&host);
    assert!(
        nft.contains("ip saddr 10.244.7.0/24 ip daddr != 10.244.0.0/16")
            && nft.contains("ip6 saddr fd00:244:7::/64 ip6 daddr != fd00:244::/32"),
        "{nft}"
    );

    // CHECK of both families with the 1.0.0 result; each family's loss is noticed.
    let (p, r) = &results[5];
    let mut check = node.conf("1.0.0");
    check["prevResult"] = r.clone();
    let (ok, out) = node.cni("CHECK", "ver5", p, "eth0", &check, &[]);
    assert!(ok, "{out}");
    run("ip", &["-n", &c, "-6", "route", "del", "default"]);
    let (ok, out) = node.cni("CHECK", "ver5", p, "eth0", &check, &[]);
    assert!(
        !ok && out["msg"].as_str().unwrap().contains("route to ::/0"),
        "{out}"
    );
    run(
        "ip",
        &["-n", &c, "addr", "del", "fd00:244:7::7/64", "dev", "eth0"],
    );
    let (ok, out) = node.cni("CHECK", "ver5", p, "eth0", &check, &[]);
    assert!(
        !ok && out["msg"].as_str().unwrap().contains("fd00:244:7::7/64"),
        "{out}"
    );
    // A prevResult whose v6 address is not reserved (someone's edited cache) is refused.
    let (p6, r6) = &results[6];
    let mut forged = node.conf("1.1.0");
    forged["prevResult"] = r6.clone();
    std::fs::remove_file(dir.join("fd00:244:7::8")).unwrap();
    let (ok, out) = node.cni("CHECK", "ver6", p6, "eth0", &forged, &[]);
    assert!(
        !ok && out["msg"].as_str().unwrap().contains("no IPAM reservation"),
        "{out}"
    );

    // DEL of every container leaves no reservation, no veth and no masquerade table.
    for (i, (p, r)) in results.iter().enumerate() {
        let mut del = node.conf(versions[i]);
        if versions[i] >= "0.4.0" {
            del["prevResult"] = r.clone();
        }
        let (ok, out) = node.cni("DEL", &format!("ver{i}"), p, "eth0", &del, &[]);
        assert!(ok, "DEL ver{i}: {out}");
    }
    assert!(ip_files(&dir).is_empty(), "{:?}", ip_files(&dir));
    assert!(
        twill_tests::ip_json(&host, &["link", "show", "master", "cni0"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(!has_masq_table(&host));
}

/// No DAD delay: right after ADD returns, a container answers over IPv6 and reaches its
/// gateway; no sleeping, no retries (ping waits at most 1 s for its one echo).
#[test]
fn v6_reachable_as_soon_as_add_returns() {
    if !preconditions("v6_reachable_as_soon_as_add_returns", &["ip", "ping"]) {
        return;
    }
    let node = Node::new("v6c2", DUAL);
    let conf = node.conf("1.1.0");
    let (_a, pa) = node.ctr("a");
    let (_b, pb) = node.ctr("b");
    let ra = node.add("ra", &pa, &conf);
    let a = node.scope.name("a");
    assert!(
        ns_exec_ok(&a, &["ping", "-6", "-c1", "-W1", "fd00:244:7::1"]),
        "a cannot ping its v6 gateway right after ADD"
    );
    let rb = node.add("rb", &pb, &conf);
    let b6 = addr_of(&rb, 1);
    assert!(
        ns_exec_ok(&a, &["ping", "-6", "-c1", "-W1", &b6]),
        "a cannot ping b at {b6} right after b's ADD"
    );
    let b = node.scope.name("b");
    let a6 = addr_of(&ra, 1);
    assert!(
        ns_exec_ok(&b, &["ping", "-6", "-c1", "-W1", &a6]),
        "b cannot ping a at {a6}"
    );
    // And over IPv4 as before.
    assert!(ns_exec_ok(&b, &["ping", "-c1", "-W1", &addr_of(&ra, 0)]));
}

/// An IPv6-only subnet file: one v6 range (its marker is `last_reserved_ip.0`, as host-local
/// numbers a single range), no IPv4 anywhere, DEL leaves nothing.
#[test]
fn ipv6_only_subnet_file() {
    if !preconditions("ipv6_only_subnet_file", &["ip", "ping", "nft"]) {
        return;
    }
    let node = Node::new("v6c3", V6_ONLY);
    let (_c, p) = node.ctr("c");
    let r = node.add("only6", &p, &node.conf("1.0.0"));
    assert_eq!(
        r["ips"],
        json!([{"address": "fd00:245:3::2/64", "gateway": "fd00:245:3::1", "interface": 2}]),
        "{r}"
    );
    assert_eq!(
        r["routes"],
        json!([
            {"dst": "fd00:245::/32", "gw": "fd00:245:3::1"},
            {"dst": "::/0", "gw": "fd00:245:3::1"},
        ])
    );
    let c = node.scope.name("c");
    assert!(
        twill_tests::ip_json(&c, &["-4", "addr", "show", "dev", "eth0"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["addr_info"].as_array().is_none_or(Vec::is_empty)),
        "no IPv4 address in an IPv6-only network"
    );
    assert!(ns_exec_ok(
        &c,
        &["ping", "-6", "-c1", "-W1", "fd00:245:3::1"]
    ));
    let host = node.scope.name("host");
    let nft = masq_table(&host);
    assert!(
        nft.contains("ip6 saddr fd00:245:3::/64") && !nft.contains("ip saddr"),
        "{nft}"
    );
    assert_eq!(
        std::fs::read_to_string(node.ipam_dir().join("last_reserved_ip.0")).unwrap(),
        "fd00:245:3::2"
    );
    // 0.2.0: only ip6.
    let (_d, pd) = node.ctr("d");
    let old = node.add("old6", &pd, &node.conf("0.2.0"));
    assert!(
        old.get("ip4").is_none() && old["ip6"]["ip"] == "fd00:245:3::3/64",
        "{old}"
    );
    // An IPv4 request on an IPv6-only network is refused.
    let (_e, pe) = node.ctr("e");
    let (ok, v) = node.cni(
        "ADD",
        "v4req",
        &pe,
        "eth0",
        &node.conf("1.0.0"),
        &[("CNI_ARGS", "IP=10.1.2.3")],
    );
    assert!(!ok && v["code"] == 7, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("no IPv4 range"), "{v}");

    for (id, p) in [("only6", &p), ("old6", &pd)] {
        assert!(node.cni("DEL", id, p, "eth0", &node.conf("1.0.0"), &[]).0);
    }
    assert!(ip_files(&node.ipam_dir()).is_empty());
    assert!(!has_masq_table(&host));
}

/// 50 parallel dual-stack ADDs: 100 distinct addresses, and 50 DELs leave nothing.
#[test]
fn fifty_parallel_dual_stack_adds() {
    if !preconditions("fifty_parallel_dual_stack_adds", &["ip"]) {
        return;
    }
    let node = Node::new("v6c4", DUAL);
    let conf = node.conf("1.0.0");
    let ctrs: Vec<(Netns, String)> = (0..50).map(|i| node.ctr(&format!("p{i}"))).collect();
    let results = node.parallel_adds(&ctrs, &conf);
    let mut ips = HashSet::new();
    for (ok, r) in &results {
        assert!(ok, "{r}");
        assert_eq!(r["ips"].as_array().unwrap().len(), 2, "{r}");
        ips.insert(addr_of(r, 0));
        ips.insert(addr_of(r, 1));
    }
    assert_eq!(ips.len(), 100, "distinct addresses");
    assert_eq!(ip_files(&node.ipam_dir()).len(), 100);
    node.parallel_dels(&ctrs, &conf);
    assert!(ip_files(&node.ipam_dir()).is_empty());
    let host = node.scope.name("host");
    assert!(
        twill_tests::ip_json(&host, &["link", "show", "master", "cni0"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// `IP=` and runtimeConfig `ips` with IPv6 addresses; bad IPv6 input gets a clear error with
/// the spec's code and reserves nothing.
#[test]
fn requested_v6_addresses_and_bad_v6_input() {
    if !preconditions("requested_v6_addresses_and_bad_v6_input", &["ip"]) {
        return;
    }
    let node = Node::new("v6c5", DUAL);
    let conf = node.conf("1.0.0");
    let (_a, pa) = node.ctr("a");
    let (ok, r) = node.cni(
        "ADD",
        "qa",
        &pa,
        "eth0",
        &conf,
        &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.7.77,fd00:244:7::77")],
    );
    assert!(ok, "{r}");
    assert_eq!(
        (addr_of(&r, 0), addr_of(&r, 1)),
        ("10.244.7.77".into(), "fd00:244:7::77".into())
    );
    // Only a v6 address asked for: the v4 one is allocated as usual.
    let (_b, pb) = node.ctr("b");
    let (ok, r) = node.cni(
        "ADD",
        "qb",
        &pb,
        "eth0",
        &conf,
        &[("CNI_ARGS", "IP=fd00:244:7::abcd")],
    );
    assert!(ok, "{r}");
    assert_eq!(addr_of(&r, 1), "fd00:244:7::abcd");
    assert!(addr_of(&r, 0).starts_with("10.244.7."), "{r}");
    // runtimeConfig ips (podman --ip / --ip6).
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["10.244.7.78/24", "fd00:244:7::78/64"]});
    let (_c, pc) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "qc", &pc, "eth0", &rc, &[]);
    assert!(ok, "{r}");
    assert_eq!(addr_of(&r, 1), "fd00:244:7::78");
    let c = node.scope.name("c");
    assert!(
        run("ip", &["-n", &c, "-6", "addr", "show", "dev", "eth0"]).contains("fd00:244:7::78/64")
    );
    let held = ip_files(&node.ipam_dir()).len();

    let (_d, pd) = node.ctr("d");
    let cases: [(&str, Value, u64, &str); 6] = [
        (
            "IP=fd00:244:7::zz",
            conf.clone(),
            4,
            "\"fd00:244:7::zz\" is not an IPv4 or IPv6 address",
        ),
        (
            "IP=fd00:244:7::5,fd00:244:7::6",
            conf.clone(),
            4,
            "more than one address of a family",
        ),
        (
            "IP=fd00:999::5",
            conf.clone(),
            7,
            "requested IP fd00:999::5 is not usable in range fd00:244:7::/64",
        ),
        (
            "IP=fd00:244:7::1",
            conf.clone(),
            7,
            "requested IP fd00:244:7::1 is not usable",
        ),
        (
            "IP=fd00:244:7::77",
            conf.clone(),
            999,
            "fd00:244:7::77 is already allocated",
        ),
        (
            "",
            {
                let mut bad = conf.clone();
                bad["runtimeConfig"] = json!({"ips": ["fd00::/64/x"]});
                bad
            },
            7,
            "invalid runtimeConfig.ips entry",
        ),
    ];
    for (args, c, code, want) in cases {
        let (ok, v) = node.cni("ADD", "qd", &pd, "eth0", &c, &[("CNI_ARGS", args)]);
        assert!(!ok, "{args}: {v}");
        assert_eq!(v["code"], code, "{args}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(want), "{args}: {v}");
    }
    assert_eq!(
        ip_files(&node.ipam_dir()).len(),
        held,
        "failed ADDs reserve nothing"
    );
    let d = node.scope.name("d");
    assert_eq!(
        twill_tests::ip_json(&d, &["link", "show"])
            .as_array()
            .unwrap()
            .len(),
        1,
        "only lo in the container after failed ADDs"
    );
}

/// IPv6 masquerade, really: a container reaches an "outside" IPv6 address that has no route
/// back to the pod network, behind the host's own address.
#[test]
fn v6_masquerade_reaches_the_outside() {
    if !preconditions(
        "v6_masquerade_reaches_the_outside",
        &["ip", "ping", "nft", "conntrack"],
    ) {
        return;
    }
    let node = Node::new("v6c6", DUAL);
    let host = node.scope.name("host");
    let outside = node.scope.name("out");
    node.scope.create("out");
    add_veth_pair(&host, "up0", "up0", &outside);
    for (ns, addr) in [(&host, "2001:db8:1::1/64"), (&outside, "2001:db8:1::2/64")] {
        run(
            "ip",
            &["-n", ns, "addr", "add", addr, "dev", "up0", "nodad"],
        );
        run("ip", &["-n", ns, "link", "set", "up0", "up"]);
    }
    let (_a, pa) = node.ctr("a");
    let r = node.add("ma", &pa, &node.conf("1.0.0"));
    let a = node.scope.name("a");
    assert!(
        ns_exec_ok(&a, &["ping", "-6", "-c1", "-W2", "2001:db8:1::2"]),
        "the container cannot reach the outside over IPv6"
    );
    let ct = run(
        "ip",
        &[
            "netns",
            "exec",
            &host,
            "conntrack",
            "-L",
            "-f",
            "ipv6",
            "-p",
            "icmpv6",
        ],
    );
    let a6 = addr_of(&r, 1);
    assert!(
        ct.lines()
            .any(|l| l.contains(&format!("src={a6} dst=2001:db8:1::2"))
                && l.contains("src=2001:db8:1::2 dst=2001:db8:1::1")),
        "no masqueraded IPv6 flow in conntrack: {ct}"
    );
    assert!(
        !ns_exec_ok(&outside, &["ping", "-6", "-c1", "-W1", &a6]),
        "the outside must not have a route to the containers (the test would prove nothing)"
    );
    assert!(
        node.cni("DEL", "ma", &pa, "eth0", &node.conf("1.0.0"), &[])
            .0
    );
}

/// A delegated host-local with two ranges (what Flannel's own CNI plugin configures): both
/// addresses applied to the container, the v6 routes via the v6 gateway, DEL releases both.
#[test]
fn delegated_host_local_with_two_ranges() {
    if !preconditions("delegated_host_local_with_two_ranges", &["ip", "ping"]) {
        return;
    }
    if !reference_plugin_installed("host-local") {
        return;
    }
    let node = Node::new("v6c7", DUAL);
    let hl = node.dir.path().join("hl");
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("hl2");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "fd00:98::/48"}],
        "dataDir": hl,
    });
    let (_a, pa) = node.ctr("a");
    let (_b, pb) = node.ctr("b");
    let ra = node.add("ha", &pa, &conf);
    let rb = node.add("hb", &pb, &conf);
    assert_eq!(addr_of(&ra, 1), "fd00:99::2", "{ra}");
    assert_eq!(ra["ips"][1]["gateway"], "fd00:99::1");
    let a = node.scope.name("a");
    let routes = twill_tests::ip_json(&a, &["-6", "route", "show"]);
    let via: HashSet<(String, String)> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            Some((
                r["dst"].as_str()?.to_string(),
                r["gateway"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert!(
        via.contains(&("default".into(), "fd00:99::1".into())),
        "{routes}"
    );
    assert!(
        via.contains(&("fd00:98::/48".into(), "fd00:99::1".into())),
        "{routes}"
    );
    assert!(ns_exec_ok(
        &a,
        &["ping", "-6", "-c1", "-W1", &addr_of(&rb, 1)]
    ));
    assert!(ns_exec_ok(&a, &["ping", "-6", "-c1", "-W1", "fd00:99::1"]));
    let mut check = conf.clone();
    check["prevResult"] = ra.clone();
    let (ok, out) = node.cni("CHECK", "ha", &pa, "eth0", &check, &[]);
    assert!(ok, "{out}");
    for (id, p) in [("ha", &pa), ("hb", &pb)] {
        assert!(node.cni("DEL", id, p, "eth0", &conf, &[]).0);
    }
    assert!(ip_files(&hl.join("hl2")).is_empty());
}

/// A twill from before dual stack applied an `ip` table and recorded its script: the next
/// change of the masquerade state replaces it with the `inet` table, so no `ip` rule is
/// left behind next to the new one.
#[test]
fn an_ip_table_from_before_dual_stack_is_replaced() {
    if !preconditions(
        "an_ip_table_from_before_dual_stack_is_replaced",
        &["ip", "nft"],
    ) {
        return;
    }
    let node = Node::new("v6c8", DUAL);
    let host = node.scope.name("host");
    let conf = node.conf("1.0.0");
    let (_a, pa) = node.ctr("a");
    node.add("old", &pa, &conf);
    // What the older twill left: its ip table, and its script in the state file.
    let old_table = "table ip twill-cni-twnet {\n  chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n    ip saddr 10.244.7.0/24 ip daddr != 10.244.0.0/16 masquerade\n  }\n}\n";
    let script = node.dir.path().join("old.nft");
    std::fs::write(&script, old_table).unwrap();
    run(
        "ip",
        &[
            "netns",
            "exec",
            &host,
            "nft",
            "-f",
            script.to_str().unwrap(),
        ],
    );
    let state_file = node.dir.path().join("twill-cni/twnet/masq.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["applied"] = json!(old_table);
    std::fs::write(&state_file, state.to_string()).unwrap();

    let (_b, pb) = node.ctr("b");
    node.add("new", &pb, &conf);
    assert!(
        !ns_exec_ok(&host, &["nft", "list", "table", "ip", "twill-cni-twnet"]),
        "the old ip table is gone"
    );
    let nft = masq_table(&host);
    assert!(nft.contains("ip6 saddr fd00:244:7::/64"), "{nft}");
    for (id, p) in [("old", &pa), ("new", &pb)] {
        assert!(node.cni("DEL", id, p, "eth0", &conf, &[]).0);
    }
    assert!(!has_masq_table(&host));
}

/// Sends one router advertisement out of `bridge` in `host` to all nodes: router lifetime
/// 1800 s and an autonomous prefix 2001:db8:99::/64, what a stray router on the bridge would
/// announce. The kernel fills in the ICMPv6 checksum and the link-local source.
fn send_router_advertisement(host: &Netns, bridge: &str) {
    let ifindex = twill_tests::ip_link(&host_name(host), bridge)["ifindex"]
        .as_u64()
        .unwrap() as u32;
    let mut ra = vec![134u8, 0, 0, 0, 64, 0];
    ra.extend_from_slice(&1800u16.to_be_bytes()); // router lifetime
    ra.extend_from_slice(&[0; 8]); // reachable time, retrans timer
    ra.extend_from_slice(&[3, 4, 64, 0xc0]); // prefix information: on-link, autonomous
    ra.extend_from_slice(&86400u32.to_be_bytes());
    ra.extend_from_slice(&14400u32.to_be_bytes());
    ra.extend_from_slice(&[0; 4]);
    ra.extend_from_slice(
        &"2001:db8:99::"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    host.enter(move || {
        // SAFETY: socket(2) with constant arguments; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) };
        assert!(
            fd >= 0,
            "raw ICMPv6 socket: {}",
            std::io::Error::last_os_error()
        );
        let set = |opt: libc::c_int, value: libc::c_int| {
            // SAFETY: `value` lives across the call and its size is the one passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IPV6,
                    opt,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(
                rc,
                0,
                "setsockopt {opt}: {}",
                std::io::Error::last_os_error()
            );
        };
        // RFC 4861: a router advertisement has hop limit 255 or is dropped.
        set(libc::IPV6_MULTICAST_HOPS, 255);
        set(libc::IPV6_MULTICAST_IF, ifindex as libc::c_int);
        // SAFETY: an all-zero sockaddr_in6 is a valid value of the C struct.
        let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        dst.sin6_addr.s6_addr = "ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        dst.sin6_scope_id = ifindex;
        // SAFETY: the buffer and the address live across the call, their sizes are passed.
        let sent = unsafe {
            libc::sendto(
                fd,
                ra.as_ptr().cast(),
                ra.len(),
                0,
                (&dst as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: `fd` is the descriptor opened above, closed once.
        unsafe { libc::close(fd) };
        assert_eq!(sent, ra.len() as isize, "sending the RA: {err}");
    })
    .unwrap();
}

/// The namespace name behind a `Netns` opened from /var/run/netns.
fn host_name(ns: &Netns) -> String {
    ns.path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Global or link addresses of `dev` in `ns` that `ip` shows, with their flags.
fn v6_addrs(ns: &str, dev: &str) -> Vec<Value> {
    twill_tests::ip_json(ns, &["-6", "addr", "show", "dev", dev])
        .as_array()
        .and_then(|l| l.first())
        .and_then(|l| l["addr_info"].as_array().cloned())
        .unwrap_or_default()
}

/// A router advertisement on the bridge changes nothing in a twill container (accept_ra=0 from
/// before the link was up), while a container that accepts RAs takes its prefix — so the RA
/// was a valid one and the test proves something.
#[test]
fn router_advertisements_are_ignored_in_the_container() {
    if !preconditions(
        "router_advertisements_are_ignored_in_the_container",
        &["ip", "sh"],
    ) {
        return;
    }
    let node = Node::new("v6c9", DUAL);
    let conf = node.conf("1.0.0");
    let (_a, pa) = node.ctr("a");
    let (_b, pb) = node.ctr("b");
    node.add("ours", &pa, &conf);
    node.add("ctl", &pb, &conf);
    let (ours, ctl, host) = (
        node.scope.name("a"),
        node.scope.name("b"),
        node.scope.name("host"),
    );
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ctl,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/eth0/accept_ra",
        ],
    );
    // The RA's source is the bridge's link-local address: wait until DAD made it usable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !v6_addrs(&host, "cni0")
        .iter()
        .any(|a| a["scope"] == "link" && a.get("tentative").is_none())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge has no usable link-local address: {:?}",
            v6_addrs(&host, "cni0")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let from_ra = |ns: &str| {
        v6_addrs(ns, "eth0").iter().any(|a| {
            a["local"]
                .as_str()
                .is_some_and(|l| l.starts_with("2001:db8:99:"))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !from_ra(&ctl) {
        assert!(
            std::time::Instant::now() < deadline,
            "the control container never took the RA's prefix: the RA is not valid"
        );
        send_router_advertisement(&node.host, "cni0");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        !from_ra(&ours),
        "a twill container took a SLAAC address: {:?}",
        v6_addrs(&ours, "eth0")
    );
    let routes = twill_tests::ip_json(&ours, &["-6", "route", "show"]);
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["protocol"] != "ra"),
        "a twill container took a route from the RA: {routes}"
    );
}

/// GC (1.1.0) releases both addresses of every attachment it is not told to keep, and DEL
/// after the namespace is gone releases both families too.
#[test]
fn gc_and_del_without_netns_release_both_families() {
    if !preconditions("gc_and_del_without_netns_release_both_families", &["ip"]) {
        return;
    }
    let node = Node::new("v6c10", DUAL);
    let conf = node.conf("1.1.0");
    let mut paths = Vec::new();
    for i in 0..3 {
        let (_ns, p) = node.ctr(&format!("c{i}"));
        node.add(&format!("g{i}"), &p, &conf);
        paths.push(p);
    }
    assert_eq!(ip_files(&node.ipam_dir()).len(), 6);
    Netns::delete(&node.scope.name("c2")).unwrap();
    let (ok, v) = node.cni("DEL", "g2", "", "eth0", &conf, &[]);
    assert!(ok, "{v}");
    assert_eq!(ip_files(&node.ipam_dir()).len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g0", "ifname": "eth0"}]);
    let (ok, v) = node.cni("GC", "", "", "eth0", &gc, &[]);
    assert!(ok, "{v}");
    assert_eq!(ip_files(&node.ipam_dir()), ["10.244.7.2", "fd00:244:7::2"]);
    assert!(node.cni("DEL", "g0", &paths[0], "eth0", &conf, &[]).0);
    assert!(ip_files(&node.ipam_dir()).is_empty());
}

/// Both addresses of a container that takes over a deleted one's (B's addresses, a new
/// MAC) are reachable from another container on the bridge at once: ADD announces the IPv4
/// address with a gratuitous ARP and the IPv6 one with an unsolicited neighbour
/// advertisement (override set), once the bridge port forwards. Before, A's entries still
/// held B's MAC for up to ~45 s.
#[test]
fn a_reused_dual_stack_address_is_reachable_from_other_containers_at_once() {
    if !preconditions(
        "a_reused_dual_stack_address_is_reachable_from_other_containers_at_once",
        &["ip", "ping"],
    ) {
        return;
    }
    let node = Node::new("dsgarp", DUAL);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let args = [("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.7.60,fd00:244:7::60")];
    let (_a, pa) = node.ctr("a");
    node.add("a", &pa, &conf);
    let a = node.scope.name("a");
    let (_b, pb) = node.ctr("b");
    let (ok, rb) = node.cni("ADD", "b", &pb, "eth0", &conf, &args);
    assert!(ok, "{rb}");
    let mac_b = rb["interfaces"][2]["mac"].as_str().unwrap().to_string();
    for ip in ["10.244.7.60", "fd00:244:7::60"] {
        assert!(
            ns_exec_ok(&a, &["ping", "-c1", "-W2", ip]),
            "A to B at {ip}"
        );
        assert_eq!(neigh_mac(&a, ip, "eth0"), mac_b, "{ip}");
    }
    assert!(node.cni("DEL", "b", &pb, "eth0", &conf, &args).0);

    let (_c, pc) = node.ctr("c");
    let (ok, rc) = node.cni("ADD", "c", &pc, "eth0", &conf, &args);
    assert!(ok, "{rc}");
    let mac_c = rc["interfaces"][2]["mac"].as_str().unwrap().to_string();
    // Hairpin is still set: ADD turns it on after the announcement.
    let veth_c = rc["interfaces"][1]["name"].as_str().unwrap();
    let port = twill_tests::bridge_json(
        &node.scope.name("host"),
        &["-d", "link", "show", "dev", veth_c],
    );
    assert_eq!(port[0]["hairpin"], true, "{port}");
    for ip in ["10.244.7.60", "fd00:244:7::60"] {
        assert!(
            ns_exec_ok(&a, &["ping", "-c1", "-W2", ip]),
            "A cannot reach the reused {ip}: its neighbour entry holds {} (B was {mac_b}, C is {mac_c})",
            neigh_mac(&a, ip, "eth0")
        );
        assert_eq!(neigh_mac(&a, ip, "eth0"), mac_c, "{ip}");
    }
    assert!(node.cni("DEL", "c", &pc, "eth0", &conf, &args).0);
    assert!(node.cni("DEL", "a", &pa, "eth0", &conf, &[]).0);
}

//! The `twill` binary driven the way runtimes drive it: env vars, config on stdin, result or
//! error JSON on stdout. Hosts and containers are namespaces made by the test.

mod common;

use std::collections::HashSet;

use common::{
    Node, TWILL, add_veth_pair, cni_in, global_addrs, has_masq_table, ip_files, link_exists,
    masq_table, neigh_mac, read_in,
};
use serde_json::{Value, json};
use twill_netkit::Netns;
use twill_tests::cni::{reference_plugin_installed, run_plugin};
use twill_tests::{ns_exec_ok, preconditions, run};

/// The node's IPv4 subnet file.
const V4: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

#[test]
fn add_check_del_and_two_containers_ping() {
    if !preconditions(
        "add_check_del_and_two_containers_ping",
        &["ip", "ping", "nft"],
    ) {
        return;
    }
    let node = Node::new("cni1", V4);
    let conf = node.conf("1.0.0");
    let (_c1, p1) = node.ctr("c1");
    let (_c2, p2) = node.ctr("c2");
    let (ok, r1) = node.cni("ADD", "ctr1", &p1, "eth0", &conf, &[]);
    assert!(ok, "{r1}");
    let (ok, r2) = node.cni("ADD", "ctr2", &p2, "eth0", &conf, &[]);
    assert!(ok, "{r2}");

    assert_eq!(r1["cniVersion"], "1.0.0");
    let ifs = r1["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3);
    assert_eq!(ifs[0]["name"], "cni0");
    assert!(ifs[1]["name"].as_str().unwrap().starts_with("veth"));
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], p1.as_str());
    assert_eq!(r1["ips"][0]["interface"], 2);
    assert_eq!(r1["ips"][0]["gateway"], "10.244.7.1");
    assert!(
        r1["ips"][0].get("version").is_none(),
        "1.0.0 has no ips[].version"
    );
    assert!(ifs[2].get("mtu").is_none(), "interface mtu is 1.1 only");
    let ip1 = r1["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let ip2 = r2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(ip1, ip2);
    let routes: HashSet<String> = r1["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        routes,
        HashSet::from(["10.244.0.0/16".to_string(), "0.0.0.0/0".to_string()])
    );

    // The kernel agrees: MTU, address, routes, bridge, forwarding, masquerade.
    let c1 = node.scope.name("c1");
    let link = twill_tests::ip_link(&c1, "eth0");
    assert_eq!(link["mtu"], 1450);
    let host = node.scope.name("host");
    assert_eq!(twill_tests::ip_link(&host, "cni0")["mtu"], 1450);
    assert_eq!(read_in(&host, "/proc/sys/net/ipv4/ip_forward"), "1");
    // An IPv4-only attachment must not take an IPv6 address or route from a stray RA.
    assert_eq!(read_in(&c1, "/proc/sys/net/ipv6/conf/eth0/accept_ra"), "0");
    let nft = masq_table(&host);
    assert!(
        nft.contains("ip saddr 10.244.7.0/24 ip daddr != 10.244.0.0/16")
            && nft.contains("masquerade"),
        "{nft}"
    );
    assert!(
        ns_exec_ok(&c1, &["ping", "-c1", "-W2", &ip2]),
        "c1 cannot ping c2 at {ip2}"
    );
    assert!(
        ns_exec_ok(&c1, &["ping", "-c1", "-W2", "10.244.7.1"]),
        "c1 cannot ping the gateway"
    );

    // The IPAM store looks like host-local's.
    let f = std::fs::read_to_string(node.ipam_dir().join(&ip1)).unwrap();
    assert_eq!(f, "ctr1\r\neth0");
    assert!(node.ipam_dir().join("last_reserved_ip.0").exists());

    // CHECK with the result as prevResult.
    let mut check = conf.clone();
    check["prevResult"] = r1.clone();
    let (ok, out) = node.cni("CHECK", "ctr1", &p1, "eth0", &check, &[]);
    assert!(ok, "{out}");
    // CHECK notices a removed address.
    run("ip", &["-n", &c1, "addr", "flush", "dev", "eth0"]);
    let (ok, out) = node.cni("CHECK", "ctr1", &p1, "eth0", &check, &[]);
    assert!(
        !ok && out["msg"].as_str().unwrap().contains("missing"),
        "{out}"
    );

    // DEL twice, then nothing of ctr1 is left.
    let mut del = conf.clone();
    del["prevResult"] = r1.clone();
    assert!(node.cni("DEL", "ctr1", &p1, "eth0", &del, &[]).0);
    assert!(node.cni("DEL", "ctr1", &p1, "eth0", &del, &[]).0);
    assert_eq!(ip_files(&node.ipam_dir()), vec![ip2.clone()]);
    assert!(
        twill_tests::ip_json(&c1, &["link", "show"])
            .as_array()
            .unwrap()
            .len()
            == 1
    );
    // A flushed ruleset is repaired by CHECK.
    run("ip", &["netns", "exec", &host, "nft", "flush", "ruleset"]);
    let mut check2 = conf.clone();
    check2["prevResult"] = r2.clone();
    let (ok, out) = node.cni("CHECK", "ctr2", &p2, "eth0", &check2, &[]);
    assert!(ok, "{out}");
    let nft = masq_table(&host);
    assert!(nft.contains("masquerade"), "{nft}");

    // A released address is not handed out again at once.
    let (_c3, p3) = node.ctr("c3");
    let (ok, r3) = node.cni("ADD", "ctr3", &p3, "eth0", &conf, &[]);
    assert!(ok, "{r3}");
    assert_ne!(
        r3["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap(),
        ip1
    );
}

#[test]
fn version_probe_and_result_shapes() {
    if !preconditions("version_probe_and_result_shapes", &["ip"]) {
        return;
    }
    // podman's probe: dummy env, only cniVersion on stdin.
    for stdin in [
        json!({"cniVersion": "1.0.0"}),
        json!({"cniVersion": "9.9.9"}),
        json!("garbage"),
    ] {
        let (ok, v) = cni_in(
            None,
            "VERSION",
            "dummy",
            "dummy",
            "dummy",
            &stdin,
            &[("CNI_PATH", "dummy")],
        );
        assert!(ok, "{v}");
        let sv: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(
            sv,
            vec![
                "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"
            ]
        );
    }
    let node = Node::new("cni2", V4);
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let (_c, p) = node.ctr(&format!("v{i}"));
        let (ok, r) = node.cni(
            "ADD",
            &format!("ver{i}"),
            &p,
            "eth0",
            &node.conf(version),
            &[],
        );
        assert!(ok, "{version}: {r}");
        assert_eq!(r["cniVersion"], *version);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            version.starts_with("0."),
            "{version}: {r}"
        );
        assert_eq!(
            r["interfaces"][2].get("mtu").is_some(),
            *version == "1.1.0",
            "{version}: {r}"
        );
        assert!(r["dns"].is_object());
    }
    // A `cniVersions` list is the runtime's to pick from: the answer is in the version asked
    // (libcni up to 1.1 refuses a result in another one).
    let mut conf = node.conf("1.0.0");
    conf["cniVersions"] = json!(["1.0.0", "1.1.0", "2.0.0"]);
    let (_c, p) = node.ctr("v9");
    let (ok, r) = node.cni("ADD", "ver9", &p, "eth0", &conf, &[]);
    assert!(ok && r["cniVersion"] == "1.0.0", "{r}");
    // Commands the version does not have are refused, as the reference plugins' skel does.
    for (version, command) in [("0.3.1", "CHECK"), ("1.0.0", "STATUS"), ("1.0.0", "GC")] {
        let mut conf = node.conf(version);
        conf["prevResult"] = r.clone();
        let (ok, e) = node.cni(command, "ver9", &p, "eth0", &conf, &[]);
        assert!(!ok, "{version} {command}: {e}");
        assert_eq!(e["code"], 1, "{version} {command}: {e}");
        assert!(
            e["msg"]
                .as_str()
                .is_some_and(|m| m.contains("does not allow")),
            "{e}"
        );
    }
}

#[test]
fn error_codes() {
    if !preconditions("error_codes", &["ip"]) {
        return;
    }
    let node = Node::new("cni3", V4);
    let (_c, p) = node.ctr("c");
    let code = |ok: bool, v: &Value| -> u64 {
        assert!(!ok, "expected failure: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v["code"].as_u64().unwrap()
    };
    // Missing required keys: invalid network configuration (7), as the spec's table says.
    for key in ["name", "type", "cniVersion"] {
        let mut conf = node.conf("1.0.0");
        conf.as_object_mut().unwrap().remove(key);
        let (ok, v) = node.cni("ADD", "c1", &p, "eth0", &conf, &[]);
        assert_eq!(code(ok, &v), 7, "without {key}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(key), "{v}");
    }
    // Bad JSON (6), bad version (1), bad container id (4), unknown command (4).
    let (ok, v) = cni_in(Some(&node.host), "ADD", "c1", &p, "eth0", &json!("{"), &[]);
    assert_eq!(code(ok, &v), 6);
    let mut bad = node.conf("0.0.9");
    let (ok, v) = node.cni("ADD", "c1", &p, "eth0", &bad, &[]);
    assert_eq!(code(ok, &v), 1);
    bad = node.conf("1.0.0");
    let (ok, v) = node.cni("ADD", "../../etc", &p, "eth0", &bad, &[]);
    assert_eq!(code(ok, &v), 4);
    let (ok, v) = node.cni("FROB", "c1", &p, "eth0", &bad, &[]);
    assert_eq!(code(ok, &v), 4);
    // Missing netns (3).
    let (ok, v) = node.cni("ADD", "c1", "/var/run/netns/twt-nope", "eth0", &bad, &[]);
    assert_eq!(code(ok, &v), 3);
    // Bad type for a key names the key (6).
    let mut typed = node.conf("1.0.0");
    typed["mtu"] = json!("big");
    let (ok, v) = node.cni("ADD", "c1", &p, "eth0", &typed, &[]);
    assert_eq!(code(ok, &v), 6);
    assert!(v["msg"].as_str().unwrap().contains("mtu"), "{v}");
    // No subnet file yet: try again later (11) for ADD, not available (50) for STATUS.
    let mut nofile = node.conf("1.1.0");
    nofile["subnetFile"] = json!("/nonexistent/subnet.env");
    let (ok, v) = node.cni("ADD", "c1", &p, "eth0", &nofile, &[]);
    assert_eq!(code(ok, &v), 11);
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/subnet.env")
    );
    let (ok, v) = node.cni("STATUS", "", "", "", &nofile, &[]);
    assert_eq!(code(ok, &v), 50);
    let (ok, v) = node.cni("STATUS", "", "", "", &node.conf("1.1.0"), &[]);
    assert!(ok, "{v}");
    // An interface that already exists in the container is an error, and nothing is allocated.
    run(
        "ip",
        &[
            "-n",
            &node.scope.name("c"),
            "link",
            "add",
            "eth0",
            "type",
            "bridge",
        ],
    );
    let (ok, v) = node.cni("ADD", "c1", &p, "eth0", &node.conf("1.0.0"), &[]);
    assert!(
        !ok && v["msg"].as_str().unwrap().contains("already exists"),
        "{v}"
    );
    assert!(ip_files(&node.ipam_dir()).is_empty());
}

#[test]
fn add_failing_half_way_leaves_nothing_behind() {
    if !preconditions("add_failing_half_way_leaves_nothing_behind", &["ip"]) {
        return;
    }
    let node = Node::new("cni4", V4);
    let (_c, p) = node.ctr("c");
    // The bridge name is taken by a non-bridge: ADD fails after the IP was allocated.
    node.add_non_bridge("notbr");
    let mut conf = node.conf("1.0.0");
    conf["bridge"] = json!("notbr");
    let (ok, v) = node.cni("ADD", "c1", &p, "eth0", &conf, &[]);
    assert!(
        !ok && v["msg"].as_str().unwrap().contains("not a bridge"),
        "{v}"
    );
    assert!(ip_files(&node.ipam_dir()).is_empty(), "the IP was released");
    let links = twill_tests::ip_json(&node.scope.name("host"), &["link", "show"]);
    assert!(
        links
            .as_array()
            .unwrap()
            .iter()
            .all(|l| !l["ifname"].as_str().unwrap().starts_with("veth")),
        "{links}"
    );
    assert_eq!(
        twill_tests::ip_json(&node.scope.name("c"), &["link", "show"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Netns::run hands the closure's error back as it is: the code a step inside the namespace
/// chose reaches the runtime (it used to be squeezed through netkit's error into 999).
#[test]
fn an_error_code_from_inside_a_namespace_reaches_the_result() {
    if !preconditions(
        "an_error_code_from_inside_a_namespace_reaches_the_result",
        &["ip"],
    ) {
        return;
    }
    let node = Node::new("cni11", V4);
    let (_c, p) = node.ctr("c");
    node.add_non_bridge("notbr");
    let mut conf = node.conf("1.0.0");
    conf["bridge"] = json!("notbr");
    let (ok, v) = node.cni("ADD", "c1", &p, "eth0", &conf, &[]);
    assert!(!ok, "{v}");
    assert_eq!(
        v["code"], 7,
        "a bridge name taken by a veth is a config error: {v}"
    );
    let msg = v["msg"].as_str().unwrap();
    assert!(msg.contains("notbr") && msg.contains("not a bridge"), "{v}");
}

/// The last kernel step fails (a route via a gateway the container cannot reach) after the
/// address was leased and the veth pair made: the rollback releases the address in the
/// delegated plugin and removes the veth pair.
#[test]
fn add_failing_at_the_last_step_leaves_nothing_behind() {
    if !preconditions(
        "add_failing_at_the_last_step_leaves_nothing_behind",
        &["ip"],
    ) {
        return;
    }
    if !reference_plugin_installed("host-local") {
        return;
    }
    let node = Node::new("cni12", V4);
    let (_c, p) = node.ctr("c");
    let hl_dir = node.dir.path().join("hl");
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("hlnet");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.99.0.0/24"}]],
        "routes": [{"dst": "10.98.0.0/16", "gw": "192.0.2.1"}],
        "dataDir": hl_dir,
    });
    let (ok, v) = node.cni("ADD", "c1", &p, "eth0", &conf, &[]);
    assert!(!ok, "a route via an unreachable gateway must fail: {v}");
    assert!(v["msg"].as_str().unwrap().contains("10.98.0.0/16"), "{v}");

    assert!(
        ip_files(&hl_dir.join("hlnet")).is_empty(),
        "host-local got its DEL and released the address"
    );
    let host_links = twill_tests::ip_json(&node.scope.name("host"), &["link", "show"]);
    let names: Vec<&str> = host_links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("veth") && !n.starts_with("tw")),
        "the veth pair is gone: {names:?}"
    );
    let ctr_links = twill_tests::ip_json(&node.scope.name("c"), &["link", "show"]);
    assert_eq!(
        ctr_links.as_array().unwrap().len(),
        1,
        "only lo: {ctr_links}"
    );
}

#[test]
fn del_after_netns_is_gone_and_gc() {
    if !preconditions("del_after_netns_is_gone_and_gc", &["ip"]) {
        return;
    }
    let node = Node::new("cni5", V4);
    let conf = node.conf("1.1.0");
    let mut paths = Vec::new();
    for i in 0..3 {
        let (_ns, p) = node.ctr(&format!("c{i}"));
        let (ok, r) = node.cni("ADD", &format!("ctr{i}"), &p, "eth0", &conf, &[]);
        assert!(ok, "{r}");
        paths.push(p);
    }
    // A second attachment of one container.
    let (ok, r) = node.cni("ADD", "ctr0", &paths[0], "eth1", &conf, &[]);
    assert!(ok, "{r}");
    // Duplicate ADD for an existing attachment is an error, never a second IP.
    let (ok, _) = node.cni("ADD", "ctr0", &paths[0], "eth1", &conf, &[]);
    assert!(!ok);
    assert_eq!(ip_files(&node.ipam_dir()).len(), 4);

    // The node "rebooted": ctr1's netns is gone. DEL still releases; so does an empty CNI_NETNS.
    Netns::delete(&node.scope.name("c1")).unwrap();
    assert!(node.cni("DEL", "ctr1", &paths[1], "eth0", &conf, &[]).0);
    assert!(node.cni("DEL", "ctr1", "", "eth0", &conf, &[]).0);
    assert_eq!(ip_files(&node.ipam_dir()).len(), 3);

    // GC keeps only the valid attachments.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr0", "ifname": "eth0"}]);
    let (ok, v) = node.cni("GC", "", "", "", &gc, &[]);
    assert!(ok, "{v}");
    let left = ip_files(&node.ipam_dir());
    assert_eq!(left.len(), 1);
    let owner = std::fs::read_to_string(node.ipam_dir().join(&left[0])).unwrap();
    assert_eq!(owner, "ctr0\r\neth0");
}

#[test]
fn requested_ip_and_delegated_host_local() {
    if !preconditions("requested_ip_and_delegated_host_local", &["ip"]) {
        return;
    }
    let node = Node::new("cni6", V4);
    let (_a, pa) = node.ctr("a");
    let (ok, r) = node.cni(
        "ADD",
        "ca",
        &pa,
        "eth0",
        &node.conf("1.0.0"),
        &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.7.77")],
    );
    assert!(ok, "{r}");
    assert_eq!(r["ips"][0]["address"], "10.244.7.77/24");
    let mut rc = node.conf("1.0.0");
    rc["runtimeConfig"] = json!({"ips": ["10.244.7.78/24"]});
    let (_b, pb) = node.ctr("b");
    let (ok, r) = node.cni("ADD", "cb", &pb, "eth0", &rc, &[]);
    assert!(ok && r["ips"][0]["address"] == "10.244.7.78/24", "{r}");

    // Delegated IPAM: Debian's reference host-local.
    if !reference_plugin_installed("host-local") {
        return;
    }
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("hlnet");
    conf["bridge"] = json!("cni1");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.99.0.0/24"}]],
        "routes": [{"dst": "10.98.0.0/16"}],
        "dataDir": node.dir.path().join("hl"),
    });
    let (_c, pc) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "cc", &pc, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    assert_eq!(r["ips"][0]["address"], "10.99.0.2/24");
    assert_eq!(r["ips"][0]["gateway"], "10.99.0.1");
    let addr = twill_tests::ip_json(
        &node.scope.name("c"),
        &["-4", "addr", "show", "dev", "eth0"],
    );
    assert_eq!(addr[0]["addr_info"][0]["local"], "10.99.0.2");
    assert!(node.dir.path().join("hl/hlnet/10.99.0.2").exists());
    // CHECK asks host-local too: a lost reservation fails it (the spec's delegation rule).
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    let (ok, e) = node.cni("CHECK", "cc", &pc, "eth0", &check, &[]);
    assert!(ok, "{e}");
    std::fs::rename(
        node.dir.path().join("hl/hlnet/10.99.0.2"),
        node.dir.path().join("hl/moved"),
    )
    .unwrap();
    let (ok, e) = node.cni("CHECK", "cc", &pc, "eth0", &check, &[]);
    assert!(!ok, "CHECK passed without host-local's reservation: {e}");
    std::fs::rename(
        node.dir.path().join("hl/moved"),
        node.dir.path().join("hl/hlnet/10.99.0.2"),
    )
    .unwrap();
    assert!(node.cni("DEL", "cc", &pc, "eth0", &conf, &[]).0);
    assert!(!node.dir.path().join("hl/hlnet/10.99.0.2").exists());
}

#[test]
fn a_delegated_ipam_add_with_an_unreadable_result_is_released() {
    // Before: an IPAM plugin that exited 0 but printed something that is not a result (a
    // log line before it) kept the address it had reserved: nothing called its DEL.
    let name = "a_delegated_ipam_add_with_an_unreadable_result_is_released";
    if !preconditions(name, &["ip"]) {
        return;
    }
    let node = Node::new("cnijunk", V4);
    let bin = node.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = node.dir.path().join("junkipam.log");
    let script = bin.join("junkipam");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID\" >> {}\n\
             [ \"$CNI_COMMAND\" = ADD ] && echo 'reserved 10.97.0.5' && \
             echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.97.0.5/24\"}}]}}'\n\
             exit 0\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("junknet");
    conf["bridge"] = json!("cni2");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({"type": "junkipam"});
    let (_j, pj) = node.ctr("j");
    let path = bin.display().to_string();
    let (ok, r) = node.cni("ADD", "cj", &pj, "eth0", &conf, &[("CNI_PATH", &path)]);
    assert!(!ok, "{r}");
    assert!(r["msg"].as_str().unwrap_or("").contains("decoding"), "{r}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "ADD cj\nDEL cj\n",
        "the reservation is released"
    );
}

#[test]
fn fifty_parallel_adds_get_distinct_ips_and_dels_leave_nothing() {
    if !preconditions(
        "fifty_parallel_adds_get_distinct_ips_and_dels_leave_nothing",
        &["ip"],
    ) {
        return;
    }
    let node = Node::new("cni7", V4);
    let conf = node.conf("1.0.0");
    let ctrs: Vec<(Netns, String)> = (0..50).map(|i| node.ctr(&format!("p{i}"))).collect();
    let results = node.parallel_adds(&ctrs, &conf);
    let mut ips = HashSet::new();
    for (ok, r) in &results {
        assert!(ok, "{r}");
        ips.insert(r["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.len(), 50, "distinct addresses");
    assert_eq!(ip_files(&node.ipam_dir()).len(), 50);
    let host = node.scope.name("host");
    assert_eq!(
        twill_tests::ip_json(&host, &["link", "show", "master", "cni0"])
            .as_array()
            .unwrap()
            .len(),
        50
    );

    node.parallel_dels(&ctrs, &conf);
    assert!(ip_files(&node.ipam_dir()).is_empty());
    assert!(
        twill_tests::ip_json(&host, &["link", "show", "master", "cni0"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn chained_with_reference_portmap() {
    if !preconditions("chained_with_reference_portmap", &["ip", "nft", "iptables"]) {
        return;
    }
    if !reference_plugin_installed("portmap") {
        return;
    }
    let node = Node::new("cni8", V4);
    let (_c, p) = node.ctr("c");
    let conf = node.conf("1.0.0");
    let (ok, r) = node.cni("ADD", "pm1", &p, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    // portmap gets twill's result as prevResult, as libcni would pass it.
    let pm = json!({
        "cniVersion": "1.0.0", "name": "twnet", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": r,
    });
    let (ok, chained, text) = reference(&node, "portmap", "ADD", "pm1", &p, &pm);
    assert!(ok, "portmap: {text}");
    assert_eq!(
        chained["ips"], r["ips"],
        "portmap passes twill's result through"
    );
    let rules = run(
        "ip",
        &[
            "netns",
            "exec",
            &node.scope.name("host"),
            "iptables-save",
            "-t",
            "nat",
        ],
    );
    assert!(rules.contains("18080"), "{rules}");
}

/// Runs one reference plugin in the node's host namespace.
fn reference(
    node: &Node,
    plugin: &str,
    cmd: &str,
    id: &str,
    netns: &str,
    conf: &Value,
) -> (bool, Value, String) {
    let bin = format!("/usr/lib/cni/{plugin}");
    let (ok, out, err) = run_plugin(&bin, Some(&node.host), cmd, id, netns, "eth0", conf, &[]);
    (
        ok,
        serde_json::from_str(&out).unwrap_or(Value::Null),
        format!("{out} {err}"),
    )
}

#[test]
fn chained_with_reference_tuning_bandwidth_firewall() {
    if !preconditions(
        "chained_with_reference_tuning_bandwidth_firewall",
        &["ip", "iptables", "tc"],
    ) {
        return;
    }
    if !reference_plugin_installed("bandwidth") {
        return;
    }
    let node = Node::new("cni9", V4);
    let (_c, p) = node.ctr("c");
    let conf = node.conf("1.0.0");
    let (ok, mut prev) = node.cni("ADD", "ch1", &p, "eth0", &conf, &[]);
    assert!(ok, "{prev}");
    let first = prev.clone();
    let chain = [
        (
            "tuning",
            json!({"sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}}),
        ),
        (
            "bandwidth",
            json!({"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000}),
        ),
        ("firewall", json!({"backend": "iptables"})),
    ];
    let mut confs = Vec::new();
    for (plugin, extra) in &chain {
        let mut c =
            json!({"cniVersion": "1.0.0", "name": "twnet", "type": plugin, "prevResult": prev});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let (ok, out, text) = reference(&node, plugin, "ADD", "ch1", &p, &c);
        assert!(ok, "{plugin} ADD: {text}");
        assert_eq!(
            out["ips"], first["ips"],
            "{plugin} passes twill's result through"
        );
        prev = out;
        confs.push((plugin, c));
    }
    let ctr = node.scope.name("c");
    assert_eq!(read_in(&ctr, "/proc/sys/net/ipv4/conf/eth0/rp_filter"), "2");
    let host = node.scope.name("host");
    let veth = first["interfaces"][1]["name"].as_str().unwrap().to_string();
    assert!(
        run("tc", &["-n", &host, "qdisc", "show", "dev", &veth]).contains("tbf"),
        "bandwidth shaped the host veth"
    );
    assert!(
        run(
            "ip",
            &["netns", "exec", &host, "iptables-save", "-t", "filter"]
        )
        .contains("CNI-FORWARD")
    );

    // DEL in reverse order, each with the final result as prevResult; twill last.
    for (plugin, mut c) in confs.into_iter().rev() {
        c["prevResult"] = prev.clone();
        let (ok, _, text) = reference(&node, plugin, "DEL", "ch1", &p, &c);
        assert!(ok, "{plugin} DEL: {text}");
    }
    let mut del = conf.clone();
    del["prevResult"] = prev;
    assert!(node.cni("DEL", "ch1", &p, "eth0", &del, &[]).0);
    assert!(ip_files(&node.ipam_dir()).is_empty());
}

/// Creates an "outside" namespace linked to the node's host namespace: host `up0`
/// 198.51.100.1/24, outside `up0` 198.51.100.2/24. The outside has no route back to any
/// container subnet, so only masqueraded traffic gets answers.
fn add_outside(node: &Node) -> String {
    let outside = node.scope.name("out");
    node.scope.create("out");
    let host = node.scope.name("host");
    add_veth_pair(&host, "up0", "up0", &outside);
    for (ns, addr) in [(&host, "198.51.100.1/24"), (&outside, "198.51.100.2/24")] {
        run("ip", &["-n", ns, "addr", "add", addr, "dev", "up0"]);
        run("ip", &["-n", ns, "link", "set", "up0", "up"]);
    }
    outside
}

/// The usual bridge + host-local conflist entry with only the type changed: ADD, CHECK and
/// DEL work with ipMasq true, the subnet comes from host-local's answer, a ping to an
/// outside address leaves behind the host's own address, and the last DEL on the subnet
/// takes its rule (and the table) away.
#[test]
fn host_local_with_ip_masq_masquerades_and_del_leaves_no_rule() {
    if !preconditions(
        "host_local_with_ip_masq_masquerades_and_del_leaves_no_rule",
        &["ip", "ping", "nft", "conntrack"],
    ) {
        return;
    }
    if !reference_plugin_installed("host-local") {
        return;
    }
    let node = Node::new("cni13", V4);
    let outside = add_outside(&node);
    let host = node.scope.name("host");
    let hl_dir = node.dir.path().join("hl");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "hlmasq",
        "type": "twill",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": true,
        "stateDir": node.dir.path().join("state"),
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.99.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": hl_dir,
        },
    });
    let (_a, pa) = node.ctr("a");
    let (_b, pb) = node.ctr("b");
    let (ok, ra) = node.cni("ADD", "ma", &pa, "eth0", &conf, &[]);
    assert!(ok, "ADD with host-local and ipMasq: {ra}");
    let (ok, rb) = node.cni("ADD", "mb", &pb, "eth0", &conf, &[]);
    assert!(ok, "{rb}");
    let table = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &host, "nft", "list", "table", "inet"])
            .arg("twill-cni-hlmasq")
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let rules = table().expect("the masquerade table exists after ADD");
    assert_eq!(
        rules.matches("masquerade").count(),
        1,
        "one rule for the subnet, not one per container: {rules}"
    );
    assert!(
        rules.contains("ip saddr 10.99.0.0/24 ip daddr != 10.99.0.0/24"),
        "{rules}"
    );

    let mut check = conf.clone();
    check["prevResult"] = ra.clone();
    let (ok, out) = node.cni("CHECK", "ma", &pa, "eth0", &check, &[]);
    assert!(ok, "CHECK: {out}");

    // Masqueraded behind the host's underlay address: the outside answers although it has
    // no route to 10.99.0.0/24, and conntrack shows the translation.
    let a = node.scope.name("a");
    assert!(
        ns_exec_ok(&a, &["ping", "-c1", "-W2", "198.51.100.2"]),
        "the container cannot reach the outside"
    );
    let ct = run(
        "ip",
        &["netns", "exec", &host, "conntrack", "-L", "-p", "icmp"],
    );
    assert!(
        ct.lines()
            .any(|l| l.contains("src=10.99.0.2 dst=198.51.100.2")
                && l.contains("src=198.51.100.2 dst=198.51.100.1")),
        "no masqueraded flow in conntrack: {ct}"
    );
    assert!(
        !ns_exec_ok(&outside, &["ping", "-c1", "-W1", "10.99.0.2"]),
        "the outside must not have a route to the containers (the test would prove nothing)"
    );

    // DEL of one container keeps the rule, DEL of the last removes the table.
    for (id, p, r) in [("ma", &pa, &ra), ("mb", &pb, &rb)] {
        let mut del = conf.clone();
        del["prevResult"] = r.clone();
        let (ok, out) = node.cni("DEL", id, p, "eth0", &del, &[]);
        assert!(ok, "DEL {id}: {out}");
        if id == "ma" {
            assert!(table().is_some(), "mb still needs the rule");
        }
    }
    assert!(
        table().is_none(),
        "no rule left that matches nothing: {:?}",
        table()
    );
    assert!(ip_files(&hl_dir.join("hlmasq")).is_empty());
    let hl_files: Vec<String> = std::fs::read_dir(hl_dir.join("hlmasq"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        hl_files
            .iter()
            .all(|f| f == "lock" || f.starts_with("last_reserved_ip")),
        "only host-local's own files in its directory: {hl_files:?}"
    );
    // DEL again (and after the state is gone) still succeeds.
    assert!(node.cni("DEL", "mb", &pb, "eth0", &conf, &[]).0);
}

/// The bridge twill creates has a MAC of its own: two results name the same one and the
/// kernel agrees, also after a port with a lower MAC joined (a bridge whose address was
/// never set follows its lowest port). A bridge made by someone else keeps its address.
#[test]
fn bridge_mac_is_fixed_and_results_stay_true() {
    if !preconditions("bridge_mac_is_fixed_and_results_stay_true", &["ip"]) {
        return;
    }
    let node = Node::new("cni14", V4);
    let conf = node.conf("1.0.0");
    let host = node.scope.name("host");
    let assign_type = |dev: &str| read_in(&host, &format!("/sys/class/net/{dev}/addr_assign_type"));
    let mut macs = Vec::new();
    for i in 0..2 {
        let (_c, p) = node.ctr(&format!("m{i}"));
        let (ok, r) = node.cni("ADD", &format!("mac{i}"), &p, "eth0", &conf, &[]);
        assert!(ok, "{r}");
        macs.push(r["interfaces"][0]["mac"].as_str().unwrap().to_string());
        // A port with a very low MAC: an unset bridge address would follow it.
        let veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
        let low = format!("02:00:00:00:00:0{}", i + 1);
        run(
            "ip",
            &["-n", &host, "link", "set", "dev", &veth, "address", &low],
        );
    }
    let kernel = twill_tests::ip_link(&host, "cni0")["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(macs[0], macs[1], "two results, one bridge MAC");
    assert_eq!(macs[1], kernel, "the results say what the kernel has");
    assert_eq!(
        assign_type("cni0"),
        "3",
        "NET_ADDR_SET: twill set the address"
    );

    // A bridge created by someone else keeps its address (twill does not set one).
    run("ip", &["-n", &host, "link", "add", "br9", "type", "bridge"]);
    let before = assign_type("br9");
    let mut other = node.conf("1.0.0");
    other["name"] = json!("othernet");
    other["bridge"] = json!("br9");
    let (_c, p) = node.ctr("m9");
    let (ok, r) = node.cni("ADD", "mac9", &p, "eth0", &other, &[]);
    assert!(ok, "{r}");
    assert_ne!(before, "3");
    assert_eq!(assign_type("br9"), before, "twill left br9's address alone");
}

/// twill's masquerade state is not in the IPAM store: after the last DEL the store holds
/// only the reference layout's files, and an older twill's `masq.nft` there is moved out
/// on the next ADD (the containers it covered keep their masquerade).
#[test]
fn state_lives_outside_the_ipam_store_and_is_migrated() {
    if !preconditions(
        "state_lives_outside_the_ipam_store_and_is_migrated",
        &["ip", "nft"],
    ) {
        return;
    }
    let node = Node::new("cni15", V4);
    let conf = node.conf("1.0.0"); // FLANNEL_IPMASQ=false: twill masquerades
    let host = node.scope.name("host");
    let has_table = || has_masq_table(&host);
    let store_files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(node.ipam_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_err())
            .collect();
        v.sort();
        v
    };
    let (_a, pa) = node.ctr("a");
    let (ok, r) = node.cni("ADD", "sa", &pa, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    assert!(has_table());
    assert_eq!(store_files(), ["last_reserved_ip.0", "lock"]);
    assert!(node.dir.path().join("twill-cni/twnet/masq.json").exists());
    assert!(node.cni("DEL", "sa", &pa, "eth0", &conf, &[]).0);
    assert_eq!(store_files(), ["last_reserved_ip.0", "lock"]);
    assert!(ip_files(&node.ipam_dir()).is_empty());
    assert!(!has_table(), "the last DEL took the rule away");

    // An older twill's layout: a reservation and masq.nft in the store, the table applied,
    // no state of the new kind.
    std::fs::write(node.ipam_dir().join("10.244.7.50"), "old1\r\neth0").unwrap();
    std::fs::write(
        node.ipam_dir().join("masq.nft"),
        "table ip twill-cni-twnet {}\n",
    )
    .unwrap();
    let (_b, pb) = node.ctr("b");
    let (ok, r) = node.cni("ADD", "sb", &pb, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    assert_eq!(
        store_files(),
        ["last_reserved_ip.0", "lock"],
        "masq.nft moved out"
    );
    // The old container still needs the rule after the new one is gone.
    assert!(node.cni("DEL", "sb", &pb, "eth0", &conf, &[]).0);
    assert!(has_table(), "old1 was migrated and still holds the rule");
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0"); // GC came in 1.1.0
    gc["cni.dev/valid-attachments"] = json!([]);
    let (ok, v) = node.cni("GC", "", "", "", &gc, &[]);
    assert!(ok, "{v}");
    assert!(!has_table(), "GC forgot old1 and its rule went");
    assert_eq!(store_files(), ["last_reserved_ip.0", "lock"]);
}

/// The devices of the routes to `dst` of `family` (`-4`/`-6`) in namespace `ns`, in the order
/// the kernel lists them, the next hops of a multipath route included.
fn route_devs(ns: &str, family: &str, dst: &str) -> Vec<String> {
    let routes = twill_tests::ip_json(ns, &[family, "route", "show", dst]);
    let mut devs = Vec::new();
    for r in routes.as_array().cloned().unwrap_or_default() {
        if let Some(d) = r["dev"].as_str() {
            devs.push(d.to_string());
        }
        for hop in r["nexthops"].as_array().cloned().unwrap_or_default() {
            devs.push(hop["dev"].as_str().unwrap_or("").to_string());
        }
    }
    devs
}

/// Two attachments of the network in one container (Multus, a runtime giving a container two
/// interfaces on one network): the second gets the routes its result lists too, next to the
/// first one's, as the reference bridge + host-local add them (`RouteAddEcmp`, no
/// NLM_F_EXCL): IPv4 lists the newer route first, and it takes the traffic; IPv6 makes one
/// multipath route of the two. Each attachment keeps its own when the other goes. The same
/// steps with the reference plugins in a container next to it leave the same routes. Before,
/// the second got none ("first one wins"), and after DEL of the first the container had
/// neither a default nor an overlay route while eth1 was still attached.
#[test]
fn a_second_attachment_gets_its_routes_and_keeps_them_when_the_first_goes() {
    if !preconditions(
        "a_second_attachment_gets_its_routes_and_keeps_them_when_the_first_goes",
        &["ip"],
    ) {
        return;
    }
    if !reference_plugin_installed("bridge") || !reference_plugin_installed("host-local") {
        return;
    }
    const DUAL: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:244::/32\nFLANNEL_IPV6_SUBNET=fd00:244:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    let node = Node::new("cni2a", DUAL);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    // The reference on the same routes, in a subnet and bridge of its own.
    let reference = json!({
        "cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
        "isGateway": true, "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.246.7.0/24"}], [{"subnet": "fd00:246:7::/64"}]],
            "routes": [
                {"dst": "10.246.0.0/16"}, {"dst": "0.0.0.0/0"},
                {"dst": "fd00:246::/32"}, {"dst": "::/0"}
            ],
            "dataDir": node.dir.path().join("refipam")
        }
    });
    let bridge = format!("{}/bridge", twill_tests::cni::REFERENCE_DIR);
    let (_t, pt) = node.ctr("t");
    let (_r, pr) = node.ctr("r");
    let (t, r) = (node.scope.name("t"), node.scope.name("r"));
    let twill = |cmd: &str, ifname: &str| -> Value {
        let (ok, out) = node.cni(cmd, "k1", &pt, ifname, &conf, &[]);
        assert!(ok, "twill {cmd} {ifname}: {out}");
        out
    };
    let refer = |cmd: &str, ifname: &str| {
        let (ok, out, err) = run_plugin(
            &bridge,
            Some(&node.host),
            cmd,
            "k1",
            &pr,
            ifname,
            &reference,
            &[],
        );
        assert!(ok, "reference {cmd} {ifname}: {out} / {err}");
    };
    // The devices of the routes to each destination, sorted; the IPv4 default's in the
    // kernel's order (the first takes the traffic).
    let devs = |ns: &str, overlay4: &str, overlay6: &str| -> Vec<Vec<String>> {
        let mut all = vec![route_devs(ns, "-4", "default")];
        for (family, dst) in [("-4", overlay4), ("-6", "default"), ("-6", overlay6)] {
            let mut d = route_devs(ns, family, dst);
            d.sort();
            all.push(d);
        }
        all
    };
    let twill_devs = || devs(&t, "10.244.0.0/16", "fd00:244::/32");
    let ref_devs = || devs(&r, "10.246.0.0/16", "fd00:246::/32");
    let check = |ifname: &str, r: &Value| {
        let mut check = conf.clone();
        check["prevResult"] = r.clone();
        let (ok, out) = node.cni("CHECK", "k1", &pt, ifname, &check, &[]);
        assert!(ok, "CHECK {ifname}: {out}");
    };
    let all = |v: &[&str]| -> Vec<Vec<String>> {
        let mut sorted: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        sorted.sort();
        vec![
            v.iter().map(|s| s.to_string()).collect(),
            sorted.clone(),
            sorted.clone(),
            sorted,
        ]
    };
    let steps: [(&str, &str, &[&str]); 4] = [
        ("ADD", "eth0", &["eth0"]),
        ("ADD", "eth1", &["eth1", "eth0"]),
        ("DEL", "eth0", &["eth1"]),
        ("ADD", "eth0", &["eth0", "eth1"]),
    ];
    let mut results = std::collections::HashMap::new();
    for (cmd, ifname, want) in steps {
        results.insert(ifname, twill(cmd, ifname));
        refer(cmd, ifname);
        let got = twill_devs();
        assert_eq!(
            got,
            ref_devs(),
            "twill and the reference after {cmd} {ifname}"
        );
        assert_eq!(got, all(want), "after {cmd} {ifname}");
        if cmd == "ADD" {
            for (ifname, r) in &results {
                check(ifname, r);
            }
        }
    }
    // And the first attachment keeps its routes when the second goes.
    twill("DEL", "eth1");
    refer("DEL", "eth1");
    assert_eq!(twill_devs(), ref_devs(), "after DEL eth1");
    assert_eq!(twill_devs(), all(&["eth0"]));
    check("eth0", &results["eth0"]);
    twill("DEL", "eth0");
    refer("DEL", "eth0");
}

/// `systemctl restart nftables` (`flush ruleset`) drops twill's table; the next ADD on a
/// subnet already masqueraded must put it back, not trust that it was applied before.
#[test]
fn an_add_after_the_ruleset_was_flushed_restores_masquerade() {
    if !preconditions(
        "an_add_after_the_ruleset_was_flushed_restores_masquerade",
        &["ip", "nft"],
    ) {
        return;
    }
    let node = Node::new("cni16", V4);
    let conf = node.conf("1.0.0"); // FLANNEL_IPMASQ=false: twill masquerades
    let host = node.scope.name("host");
    let has_table = || has_masq_table(&host);
    let (_a, pa) = node.ctr("a");
    assert!(node.cni("ADD", "fa", &pa, "eth0", &conf, &[]).0);
    assert!(has_table());
    assert!(ns_exec_ok(&host, &["nft", "flush", "ruleset"]));
    assert!(!has_table());
    let (_b, pb) = node.ctr("b");
    let (ok, r) = node.cni("ADD", "fb", &pb, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    assert!(has_table(), "the second ADD restored the table");
}

/// `IP=` is the built-in IPAM's to read only: the reference static plugin takes several
/// addresses of a family there, and twill must pass them through untouched.
#[test]
fn ip_args_reach_a_delegated_static_ipam_untouched() {
    if !preconditions("ip_args_reach_a_delegated_static_ipam_untouched", &["ip"]) {
        return;
    }
    if !reference_plugin_installed("static") {
        return;
    }
    let node = Node::new("cnist", V4);
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("stnet");
    conf["bridge"] = json!("cni7");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({"type": "static"});
    let args = [("CNI_ARGS", "IgnoreUnknown=1;IP=10.97.0.5/24,10.97.0.6/24")];
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "st", &p, "eth0", &conf, &args);
    assert!(ok, "{r}");
    let ips: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .collect();
    assert_eq!(ips, ["10.97.0.5/24", "10.97.0.6/24"], "{r}");
    assert!(node.cni("DEL", "st", &p, "eth0", &conf, &args).0);
}

/// An IPAM result without a gateway (the reference static plugin given only addresses): as
/// the reference bridge, the gateway is the subnet's first address, and it goes on the bridge
/// and into the default route. Before, the container got no default route and the bridge no
/// address: nothing outside the bridge was reachable.
#[test]
fn a_delegated_result_without_gateway_gets_the_subnets_first_address() {
    if !preconditions(
        "a_delegated_result_without_gateway_gets_the_subnets_first_address",
        &["ip", "ping"],
    ) {
        return;
    }
    if !reference_plugin_installed("static") {
        return;
    }
    let node = Node::new("cnigw", V4);
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("gwnet");
    conf["bridge"] = json!("cni9");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({"type": "static", "addresses": [{"address": "10.96.0.5/24"}]});
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "gw", &p, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.96.0.1", "{r}");
    let host = node.scope.name("host");
    let br = twill_tests::ip_json(&host, &["-4", "addr", "show", "dev", "cni9"]);
    assert_eq!(br[0]["addr_info"][0]["local"], "10.96.0.1", "{br}");
    let c = node.scope.name("c");
    let default = twill_tests::ip_json(&c, &["route", "show", "default"]);
    assert_eq!(default[0]["gateway"], "10.96.0.1", "{default}");
    assert!(ns_exec_ok(&c, &["ping", "-c1", "-W2", "10.96.0.1"]));
    assert!(node.cni("DEL", "gw", &p, "eth0", &conf, &[]).0);
}

/// `"isGateway": false` means no gateway on the bridge. Before, the default of
/// `isDefaultGateway` (true) turned it back on: the bridge got the gateway address, the host
/// forwarding, the container a default route.
#[test]
fn is_gateway_false_is_not_overridden_by_the_default_of_is_default_gateway() {
    if !preconditions(
        "is_gateway_false_is_not_overridden_by_the_default_of_is_default_gateway",
        &["ip"],
    ) {
        return;
    }
    let node = Node::new("cnisg", V4);
    let mut conf = node.conf("1.0.0");
    conf["isGateway"] = json!(false);
    conf["ipMasq"] = json!(false);
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "sg", &p, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    let host = node.scope.name("host");
    let br = twill_tests::ip_json(&host, &["-4", "addr", "show", "dev", "cni0"]);
    let addrs = br
        .as_array()
        .and_then(|a| a.first())
        .and_then(|l| l["addr_info"].as_array().cloned())
        .unwrap_or_default();
    assert!(addrs.is_empty(), "no gateway on the bridge: {br}");
    assert_eq!(read_in(&host, "/proc/sys/net/ipv4/ip_forward"), "0");
    let c = node.scope.name("c");
    let default = twill_tests::ip_json(&c, &["route", "show", "default"]);
    assert_eq!(default, json!([]), "no default route: {default}");
    assert!(
        r["routes"]
            .as_array()
            .is_none_or(|rs| rs.iter().all(|r| r["dst"] != "0.0.0.0/0")),
        "{r}"
    );
    assert!(node.cni("DEL", "sg", &p, "eth0", &conf, &[]).0);
}

/// CHECK looks at the host side too, as the reference bridge does: a host veth that is no
/// longer a port of the bridge (the bridge was deleted and re-created, or someone ran
/// `ip link set … nomaster`) leaves the container cut off. Before, CHECK passed.
#[test]
fn check_fails_when_the_host_veth_left_the_bridge() {
    if !preconditions("check_fails_when_the_host_veth_left_the_bridge", &["ip"]) {
        return;
    }
    let node = Node::new("cnick", V4);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "ck", &p, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    let (ok, e) = node.cni("CHECK", "ck", &p, "eth0", &check, &[]);
    assert!(ok, "{e}");
    let veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let host = node.scope.name("host");
    run("ip", &["-n", &host, "link", "set", &veth, "nomaster"]);
    let (ok, e) = node.cni("CHECK", "ck", &p, "eth0", &check, &[]);
    assert!(!ok, "CHECK passed with {veth} off the bridge");
    assert!(e["msg"].as_str().unwrap().contains(&veth), "{e}");
    run("ip", &["-n", &host, "link", "del", &veth]);
    let (ok, e) = node.cni("CHECK", "ck", &p, "eth0", &check, &[]);
    assert!(!ok, "CHECK passed without the host veth: {e}");
    assert!(node.cni("DEL", "ck", &p, "eth0", &conf, &[]).0);
}

/// `"mtu": 0` is "not set" to the reference bridge (Go's zero value) and "automatic" to
/// Calico's conflists: a conflist that says so must work, with the MTU twill would pick
/// without the key (here FLANNEL_MTU). Before, ADD failed with code 7.
#[test]
fn mtu_zero_means_not_set() {
    if !preconditions("mtu_zero_means_not_set", &["ip"]) {
        return;
    }
    let node = Node::new("cnimtu", V4);
    let mut conf = node.conf("1.1.0");
    conf["mtu"] = json!(0);
    conf["ipMasq"] = json!(false);
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "mz", &p, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    assert_eq!(r["interfaces"][2]["mtu"], 1450, "{r}");
    let link = twill_tests::ip_link(&node.scope.name("c"), "eth0");
    assert_eq!(link["mtu"], 1450);
    assert!(node.cni("DEL", "mz", &p, "eth0", &conf, &[]).0);
}

/// Someone else's veth pair under the host veth name twill gives (`id`, eth0): its peer
/// `eth0` in namespace `o` of the node, held by the handle returned with the name.
fn someone_elses_veth(node: &Node, id: &str) -> (Netns, String) {
    let taken = twill_cni::setup::host_veth_name(id, "eth0", 0);
    let (other, _) = node.ctr("o");
    add_veth_pair(
        &node.scope.name("host"),
        &taken,
        "eth0",
        &node.scope.name("o"),
    );
    (other, taken)
}

/// Host veth names are a 32-bit hash of (container ID, ifname), in the `veth<8 hex>` space the
/// reference bridge fills at random: another attachment's veth can hold the name. Before, the
/// ADD that met it (EEXIST) deleted that veth in its rollback, and the runtime's DEL after the
/// failed ADD deleted it again by name: an unrelated container lost its network. Now ADD
/// leaves it alone, and DEL removes by name only when it cannot look in the container's
/// namespace; a crash's leftover (the peer still under its temporary name) still goes.
#[test]
fn a_veth_that_is_not_ours_survives_add_rollback_and_del() {
    if !preconditions(
        "a_veth_that_is_not_ours_survives_add_rollback_and_del",
        &["ip"],
    ) {
        return;
    }
    let node = Node::new("cniown", V4);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let host = node.scope.name("host");
    // Someone else's veth pair under the name ADD will want, its peer in a namespace of its own.
    let (_o, taken) = someone_elses_veth(&node, "clash");
    let other = node.scope.name("o");
    let (_c, p) = node.ctr("c");
    let (ok, e) = node.cni("ADD", "clash", &p, "eth0", &conf, &[]);
    assert!(!ok, "{e}");
    assert!(e["msg"].as_str().unwrap().contains(&taken), "{e}");
    assert!(link_exists(&host, &taken), "the failed ADD deleted {taken}");
    assert!(
        ip_files(&node.ipam_dir()).is_empty(),
        "the address was released"
    );
    assert!(node.cni("DEL", "clash", &p, "eth0", &conf, &[]).0);
    assert!(link_exists(&host, &taken), "DEL deleted {taken}");
    assert!(link_exists(&other, "eth0"));

    // An ADD killed after creating its pair: the peer is still `tw<8 hex>` in the container.
    // DEL with the namespace removes the pair.
    let crashed = twill_cni::setup::host_veth_name("crashed", "eth0", 0);
    let (_d, pd) = node.ctr("d");
    let d = node.scope.name("d");
    add_veth_pair(&host, &crashed, "tw0badf00d", &d);
    assert!(node.cni("DEL", "crashed", &pd, "eth0", &conf, &[]).0);
    assert!(
        !link_exists(&host, &crashed),
        "the leftover host veth stayed"
    );
    assert!(!link_exists(&d, "tw0badf00d"));
}

/// A container that takes over an address (`podman restart` with `--ip`: DEL, then ADD with
/// the same IP and a new MAC) is reachable from the host at once. Before, the host's
/// neighbour entry still held the old container's MAC (REACHABLE for up to ~45 s, then
/// seconds of probing): the host, port forwards into the container and traffic from other
/// nodes (routed by the host onto the bridge) went nowhere.
#[test]
fn a_reused_address_is_reachable_from_the_host_at_once() {
    if !preconditions(
        "a_reused_address_is_reachable_from_the_host_at_once",
        &["ip", "ping"],
    ) {
        return;
    }
    let node = Node::new("cniarp", V4);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let args = [("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.7.50")];
    let host = node.scope.name("host");
    // Another container keeps the bridge's carrier up: losing it flushes the bridge's
    // neighbour table, which would hide the stale entry.
    let (_k, pk) = node.ctr("k");
    assert!(node.cni("ADD", "keep", &pk, "eth0", &conf, &[]).0);
    let (_a, pa) = node.ctr("a");
    let (ok, r1) = node.cni("ADD", "old", &pa, "eth0", &conf, &args);
    assert!(ok, "{r1}");
    assert!(ns_exec_ok(&host, &["ping", "-c1", "-W2", "10.244.7.50"]));
    assert_eq!(
        neigh_mac(&host, "10.244.7.50", "cni0"),
        r1["interfaces"][2]["mac"].as_str().unwrap()
    );
    assert!(node.cni("DEL", "old", &pa, "eth0", &conf, &args).0);

    let (_b, pb) = node.ctr("b");
    let (ok, r2) = node.cni("ADD", "new", &pb, "eth0", &conf, &args);
    assert!(ok, "{r2}");
    assert!(
        ns_exec_ok(&host, &["ping", "-c1", "-W1", "10.244.7.50"]),
        "the host sent to the old MAC {}",
        neigh_mac(&host, "10.244.7.50", "cni0")
    );
    assert_eq!(
        neigh_mac(&host, "10.244.7.50", "cni0"),
        r2["interfaces"][2]["mac"].as_str().unwrap()
    );
    assert!(node.cni("DEL", "new", &pb, "eth0", &conf, &args).0);
    assert!(node.cni("DEL", "keep", &pk, "eth0", &conf, &[]).0);
}

/// A stand-in IPAM plugin `name` in the node's dir that prints `result` on ADD and succeeds
/// silently at everything else; returns the CNI_PATH that finds it.
fn fake_ipam(node: &Node, name: &str, result: &Value) -> String {
    let bin = node.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] && cat <<'RESULT'\n{result}\nRESULT\nexit 0\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin.display().to_string()
}

/// The routes of the container's `table` with destination `dst`.
fn routes_to(ns: &str, table: &str, dst: &str) -> Vec<Value> {
    family_routes_to(ns, "-4", table, dst)
}

/// The IPv6 routes of the container's main table to `dst`.
fn routes6_to(ns: &str, dst: &str) -> Vec<Value> {
    family_routes_to(ns, "-6", "main", dst)
}

/// The routes of one family (`-4`, `-6`) of the container's `table` to `dst`.
fn family_routes_to(ns: &str, family: &str, table: &str, dst: &str) -> Vec<Value> {
    twill_tests::ip_json(ns, &[family, "route", "show", "table", table])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["dst"] == dst)
        .collect()
}

/// CNI 1.1 route fields from an IPAM result: `priority`, `table` and `scope` are applied to
/// the container's routes as the reference `ConfigureIface` applies them, and all five (with
/// `mtu` and `advmss`) reach the ADD result as the reference bridge passes the IPAM routes
/// on. A link-scope route gets no gateway (the kernel refuses a gateway on one). Before, the
/// fields were dropped from both.
#[test]
fn cni_1_1_route_fields_from_ipam_are_applied_and_passed_on() {
    let name = "cni_1_1_route_fields_from_ipam_are_applied_and_passed_on";
    if !preconditions(name, &["ip"]) {
        return;
    }
    let node = Node::new("cnirtf", V4);
    let routes = json!([
        {"dst": "10.94.0.0/16", "priority": 50, "mtu": 1400, "advmss": 1360},
        {"dst": "10.93.0.0/16", "table": 100},
        {"dst": "10.92.0.0/16", "scope": 253},
    ]);
    let path = fake_ipam(
        &node,
        "rtipam",
        &json!({"cniVersion": "1.1.0",
                "ips": [{"address": "10.95.0.5/24", "gateway": "10.95.0.1"}],
                "routes": routes}),
    );
    let mut conf = node.conf("1.1.0");
    conf["name"] = json!("rtnet");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({"type": "rtipam"});
    let env = [("CNI_PATH", path.as_str())];
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "rt", &p, "eth0", &conf, &env);
    assert!(ok, "{r}");
    for want in routes.as_array().unwrap() {
        assert!(
            r["routes"].as_array().unwrap().contains(want),
            "{want} in the result: {r}"
        );
    }
    let c = node.scope.name("c");
    let metric = routes_to(&c, "main", "10.94.0.0/16");
    assert_eq!(metric.len(), 1, "{metric:?}");
    assert_eq!(metric[0]["metric"], 50, "{metric:?}");
    assert_eq!(metric[0]["gateway"], "10.95.0.1", "{metric:?}");
    assert!(routes_to(&c, "main", "10.93.0.0/16").is_empty());
    let table = routes_to(&c, "100", "10.93.0.0/16");
    assert_eq!(table.len(), 1, "in table 100: {table:?}");
    let link = routes_to(&c, "main", "10.92.0.0/16");
    assert_eq!(link.len(), 1, "{link:?}");
    assert_eq!(link[0]["scope"], "link", "{link:?}");
    assert!(link[0].get("gateway").is_none(), "{link:?}");
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    let (ok, e) = node.cni("CHECK", "rt", &p, "eth0", &check, &env);
    assert!(ok, "{e}");
    assert!(node.cni("DEL", "rt", &p, "eth0", &conf, &env).0);
}

/// Several gateways of one family in the IPAM result (two IPv4 and two IPv6 subnets) all go
/// on the bridge, as the reference bridge adds every gateway; the container's second
/// subnet of each family would otherwise have no gateway to reach. Before, only the first
/// gateway of each family did.
#[test]
fn every_gateway_of_a_family_goes_on_the_bridge() {
    if !preconditions(
        "every_gateway_of_a_family_goes_on_the_bridge",
        &["ip", "ping"],
    ) {
        return;
    }
    let node = Node::new("cnigws", V4);
    let path = fake_ipam(
        &node,
        "gwsipam",
        &json!({"cniVersion": "1.0.0", "ips": [
            {"address": "10.95.1.5/24", "gateway": "10.95.1.1"},
            {"address": "10.95.2.5/24", "gateway": "10.95.2.1"},
            {"address": "fd00:95:1::5/64", "gateway": "fd00:95:1::1"},
            {"address": "fd00:95:2::5/64", "gateway": "fd00:95:2::1"},
        ]}),
    );
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("gwsnet");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({"type": "gwsipam"});
    let env = [("CNI_PATH", path.as_str())];
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "gws", &p, "eth0", &conf, &env);
    assert!(ok, "{r}");
    let host = node.scope.name("host");
    let br = twill_tests::ip_json(&host, &["addr", "show", "dev", "cni0"]);
    let on_bridge: HashSet<String> = global_addrs(&br).into_iter().collect();
    let want: HashSet<String> = [
        "10.95.1.1/24",
        "10.95.2.1/24",
        "fd00:95:1::1/64",
        "fd00:95:2::1/64",
    ]
    .map(String::from)
    .into();
    assert_eq!(on_bridge, want, "{br}");
    let c = node.scope.name("c");
    for gw in ["10.95.2.1", "fd00:95:2::1"] {
        assert!(
            ns_exec_ok(&c, &["ping", "-c3", "-i0.2", "-W2", "-I", "eth0", gw]),
            "the second gateway {gw} answers"
        );
    }
    assert!(node.cni("DEL", "gws", &p, "eth0", &conf, &env).0);
}

/// `"dns": {}` in the network configuration sets nothing, so the result carries the IPAM
/// plugin's DNS, as the reference bridge does (it takes the configuration's only when a
/// field is set). Before, the empty object replaced the IPAM plugin's.
#[test]
fn an_empty_dns_in_the_config_keeps_the_ipam_plugins_dns() {
    let name = "an_empty_dns_in_the_config_keeps_the_ipam_plugins_dns";
    if !preconditions(name, &["ip"]) {
        return;
    }
    let node = Node::new("cnidns", V4);
    let ipam_dns = json!({"nameservers": ["10.95.0.53"], "search": ["svc.example"]});
    let path = fake_ipam(
        &node,
        "dnsipam",
        &json!({"cniVersion": "1.0.0",
                "ips": [{"address": "10.95.0.5/24", "gateway": "10.95.0.1"}],
                "dns": ipam_dns}),
    );
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("dnsnet");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({"type": "dnsipam"});
    conf["dns"] = json!({});
    let env = [("CNI_PATH", path.as_str())];
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "dn", &p, "eth0", &conf, &env);
    assert!(ok, "{r}");
    assert_eq!(r["dns"], ipam_dns, "{r}");
    assert!(node.cni("DEL", "dn", &p, "eth0", &conf, &env).0);
    // A configuration that sets DNS still wins.
    conf["dns"] = json!({"domain": "conf.example"});
    let (_d, pd) = node.ctr("d");
    let (ok, r) = node.cni("ADD", "dn2", &pd, "eth0", &conf, &env);
    assert!(ok, "{r}");
    assert_eq!(r["dns"], json!({"domain": "conf.example"}), "{r}");
    assert!(node.cni("DEL", "dn2", &pd, "eth0", &conf, &env).0);
}

/// An empty `IP=` in CNI_ARGS asks for nothing, as host-local reads it (its `ip.IP` takes an
/// empty value as no address): the next free address is assigned. Before, ADD failed with
/// code 4.
#[test]
fn an_empty_ip_arg_is_ignored() {
    if !preconditions("an_empty_ip_arg_is_ignored", &["ip"]) {
        return;
    }
    let node = Node::new("cniemp", V4);
    let (_c, p) = node.ctr("c");
    let conf = node.conf("1.0.0");
    let env = [("CNI_ARGS", "IgnoreUnknown=1;IP=;K8S_POD_NAME=x")];
    let (ok, r) = node.cni("ADD", "em", &p, "eth0", &conf, &env);
    assert!(ok, "{r}");
    let addr = r["ips"][0]["address"].as_str().unwrap_or_default();
    assert!(addr.starts_with("10.244.7."), "{r}");
    assert!(node.cni("DEL", "em", &p, "eth0", &conf, &env).0);
}

/// An address handed out again (container B deleted, C gets B's address with a new MAC) is
/// reachable from the other containers on the bridge at once. Before, their neighbour
/// entries still held B's MAC (REACHABLE for up to ~45 s, then seconds of probing) and their
/// traffic to the address went nowhere: the kernel's gratuitous ARP at link up (when there is
/// one) is dropped by the bridge port, which is not forwarding yet. Now ADD waits for the
/// port to forward and the container announces its addresses.
#[test]
fn a_reused_address_is_reachable_from_other_containers_at_once() {
    if !preconditions(
        "a_reused_address_is_reachable_from_other_containers_at_once",
        &["ip", "ping"],
    ) {
        return;
    }
    let node = Node::new("cnigarp", V4);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let args = [("CNI_ARGS", "IgnoreUnknown=1;IP=10.244.7.60")];
    let (_a, pa) = node.ctr("a");
    let (ok, ra) = node.cni("ADD", "a", &pa, "eth0", &conf, &[]);
    assert!(ok, "{ra}");
    let a = node.scope.name("a");

    let (_b, pb) = node.ctr("b");
    let (ok, rb) = node.cni("ADD", "b", &pb, "eth0", &conf, &args);
    assert!(ok, "{rb}");
    let mac_b = rb["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert!(ns_exec_ok(&a, &["ping", "-c1", "-W2", "10.244.7.60"]));
    assert_eq!(neigh_mac(&a, "10.244.7.60", "eth0"), mac_b);
    assert!(node.cni("DEL", "b", &pb, "eth0", &conf, &args).0);

    let (_c, pc) = node.ctr("c");
    let (ok, rc) = node.cni("ADD", "c", &pc, "eth0", &conf, &args);
    assert!(ok, "{rc}");
    let mac_c = rc["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert_ne!(mac_b, mac_c);
    assert!(
        ns_exec_ok(&a, &["ping", "-c1", "-W2", "10.244.7.60"]),
        "A cannot reach the reused address: its neighbour entry holds {} (B was {mac_b}, C is {mac_c})",
        neigh_mac(&a, "10.244.7.60", "eth0")
    );
    assert_eq!(neigh_mac(&a, "10.244.7.60", "eth0"), mac_c);
    assert!(node.cni("DEL", "c", &pc, "eth0", &conf, &args).0);
    assert!(node.cni("DEL", "a", &pa, "eth0", &conf, &[]).0);
}

/// DEL without a usable CNI_NETNS (the path gone, or empty) removed the host veth by its
/// name: a veth of that name that is not the attachment's (the name is a hash in the space
/// the reference bridge fills at random; the attachment's own pair died with its namespace)
/// was deleted, cutting off whatever it belonged to. Now only a veth carrying ADD's marker
/// for this attachment goes; its own veth in a namespace whose path is gone while a process
/// still holds it is still removed.
#[test]
fn del_without_the_netns_leaves_a_veth_of_its_name_that_is_not_ours() {
    if !preconditions(
        "del_without_the_netns_leaves_a_veth_of_its_name_that_is_not_ours",
        &["ip"],
    ) {
        return;
    }
    let node = Node::new("cnidelns", V4);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let host = node.scope.name("host");
    let (_o, taken) = someone_elses_veth(&node, "gone");
    let other = node.scope.name("o");
    let missing = format!("/var/run/netns/{}", node.scope.name("never"));
    assert!(node.cni("DEL", "gone", &missing, "eth0", &conf, &[]).0);
    assert!(
        link_exists(&host, &taken),
        "DEL with a missing netns deleted {taken}"
    );
    assert!(node.cni("DEL", "gone", "", "eth0", &conf, &[]).0);
    assert!(
        link_exists(&host, &taken),
        "DEL with an empty CNI_NETNS deleted {taken}"
    );
    assert!(link_exists(&other, "eth0"));

    // The attachment's own pair, its namespace's path gone but the namespace held (here by
    // the test's handle): DEL removes it by the host end.
    let (held, ph) = node.ctr("h");
    let (ok, r) = node.cni("ADD", "held", &ph, "eth0", &conf, &[]);
    assert!(ok, "{r}");
    let own = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    Netns::delete(&node.scope.name("h")).unwrap();
    assert!(node.cni("DEL", "held", &ph, "eth0", &conf, &[]).0);
    assert!(!link_exists(&host, &own), "its own host veth {own} stayed");
    drop(held);
    assert!(ip_files(&node.ipam_dir()).is_empty());
}

/// DEL of an attachment whose CNI_IFNAME is missing in the container removed every
/// `tw<8 hex>` veth there: the pair of another attachment of the same container whose ADD
/// was half way (Multus gives each attachment its own ifname; the container end is renamed
/// last) was cut off. Now DEL takes only the temporary pair whose host end is its own.
#[test]
fn del_of_a_missing_interface_leaves_another_attachments_pair_alone() {
    if !preconditions(
        "del_of_a_missing_interface_leaves_another_attachments_pair_alone",
        &["ip"],
    ) {
        return;
    }
    let node = Node::new("cnidelif", V4);
    let mut conf1 = node.conf("1.0.0");
    conf1["ipMasq"] = json!(false);
    let mut conf2 = conf1.clone();
    conf2["name"] = json!("twnet2");
    let host = node.scope.name("host");
    let (_c, pc) = node.ctr("c");
    let c = node.scope.name("c");
    let (ok, r) = node.cni("ADD", "pod", &pc, "eth0", &conf1, &[]);
    assert!(ok, "{r}");
    let eth0_host = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    // The second network's ADD for net1 is half way: its pair is still under the temporary
    // name in the container.
    let net1_host = twill_cni::setup::host_veth_name("pod", "net1", 0);
    add_veth_pair(&host, &net1_host, "tw0c0ffee0", &c);
    // eth0 is gone from the container (removed by hand, which took its host end along).
    run("ip", &["-n", &c, "link", "del", "eth0"]);
    assert!(!link_exists(&host, &eth0_host));

    assert!(node.cni("DEL", "pod", &pc, "eth0", &conf1, &[]).0);
    assert!(
        link_exists(&c, "tw0c0ffee0"),
        "DEL of eth0 removed net1's half-done pair"
    );
    assert!(link_exists(&host, &net1_host));

    // net1's own DEL removes its pair.
    assert!(node.cni("DEL", "pod", &pc, "net1", &conf2, &[]).0);
    assert!(!link_exists(&c, "tw0c0ffee0"));
    assert!(!link_exists(&host, &net1_host));
}

/// An ADD onto a bridge with STP on (a user's bridge, or `stp_state 1` set on cni0) succeeds
/// without a warning. Its port goes Listening/Learning and forwards only after twice the
/// forward delay (15 s each by default); an announcement before that is dropped, and nothing
/// is wrong. Before, ADD waited for Forwarding: every such ADD sat out the whole 1 s and
/// printed "bridge port … was not forwarding after 1s" on stderr, which podman shows.
#[test]
fn an_add_onto_a_bridge_with_stp_warns_of_nothing() {
    if !preconditions("an_add_onto_a_bridge_with_stp_warns_of_nothing", &["ip"]) {
        return;
    }
    let node = Node::new("cnistp", V4);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let host = node.scope.name("host");
    run(
        "ip",
        &[
            "-n",
            &host,
            "link",
            "add",
            "cni0",
            "type",
            "bridge",
            "stp_state",
            "1",
        ],
    );
    let (_c, p) = node.ctr("c");
    let (ok, out, err) = run_plugin(
        TWILL,
        Some(&node.host),
        "ADD",
        "stp",
        &p,
        "eth0",
        &conf,
        &[],
    );
    assert!(ok, "ADD failed: {out} {err}");
    assert!(
        !err.contains("warning"),
        "ADD onto an STP bridge warned: {err}"
    );
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let veth = r["interfaces"][1]["name"].as_str().unwrap_or_default();
    let br = twill_tests::ip_link(&host, "cni0");
    assert_eq!(br["linkinfo"]["info_data"]["stp_state"], 1, "{br}");
    let port = twill_tests::ip_link(&host, veth);
    let state = port["linkinfo"]["info_slave_data"]["state"].clone();
    assert!(
        state == "listening" || state == "learning" || state == "blocking",
        "the STP bridge's port is {state} right after ADD: {port}"
    );
    assert!(node.cni("DEL", "stp", &p, "eth0", &conf, &[]).0);
}

/// CHECK finds the attachment in prevResult as the reference bridge does (CNI_IFNAME with
/// CNI_NETNS as its sandbox, the bridge, the host veth) and compares what prevResult gives
/// with the kernel: MACs of all three, addresses, routes. Before, each of these passed with
/// exit code 0: with no interface of that name and sandbox nothing was checked, and a
/// prevResult that was no object read as an empty result.
#[test]
fn check_refuses_a_prev_result_that_does_not_describe_the_attachment() {
    if !preconditions(
        "check_refuses_a_prev_result_that_does_not_describe_the_attachment",
        &["ip"],
    ) {
        return;
    }
    let node = Node::new("cnickp", V4);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let (_c, p) = node.ctr("c");
    let (ok, r0) = node.cni("ADD", "k1", &p, "eth0", &conf, &[]);
    assert!(ok, "{r0}");
    let (ok, r1) = node.cni("ADD", "k1", &p, "eth1", &conf, &[]);
    assert!(ok, "{r1}");
    let check = |ifname: &str, prev: Value| {
        let mut c = conf.clone();
        c["prevResult"] = prev;
        node.cni("CHECK", "k1", &p, ifname, &c, &[])
    };
    let (ok, out) = check("eth0", r0.clone());
    assert!(ok, "{out}");
    let (ok, out) = check("eth1", r1.clone());
    assert!(ok, "{out}");

    let edited = |edit: &dyn Fn(&mut Value)| {
        let mut v = r0.clone();
        edit(&mut v);
        v
    };
    let mac = |i: usize| r0["interfaces"][i]["mac"].as_str().unwrap().to_string();
    let veth = r0["interfaces"][1]["name"].as_str().unwrap().to_string();
    let cases: Vec<(&str, Value, u64, Vec<String>)> = vec![
        (
            "another container MAC",
            edited(&|v| v["interfaces"][2]["mac"] = json!("02:00:00:00:00:01")),
            999,
            vec!["eth0".into(), mac(2), "02:00:00:00:00:01".into()],
        ),
        (
            "another host veth MAC",
            edited(&|v| v["interfaces"][1]["mac"] = json!("02:00:00:00:00:02")),
            999,
            vec![veth.clone(), mac(1), "02:00:00:00:00:02".into()],
        ),
        (
            "another bridge MAC",
            edited(&|v| v["interfaces"][0]["mac"] = json!("02:00:00:00:00:03")),
            999,
            vec!["cni0".into(), mac(0), "02:00:00:00:00:03".into()],
        ),
        (
            "another sandbox",
            edited(&|v| v["interfaces"][2]["sandbox"] = json!("/var/run/netns/other")),
            7,
            vec!["/var/run/netns/other".into(), p.clone()],
        ),
        (
            "another name",
            edited(&|v| v["interfaces"][2]["name"] = json!("eth5")),
            7,
            vec!["eth0".into(), "eth5".into()],
        ),
        (
            "eth1's result",
            r1.clone(),
            7,
            vec!["eth0".into(), "eth1".into()],
        ),
        (
            "an address on the bridge",
            edited(&|v| v["ips"][0]["interface"] = json!(0)),
            7,
            vec!["ips[0]".into(), "cni0".into()],
        ),
        (
            "an address on no interface",
            edited(&|v| v["ips"][0]["interface"] = json!(7)),
            6,
            vec!["ips[0].interface".into()],
        ),
        (
            "an empty object",
            json!({}),
            7,
            vec!["eth0".into(), "no interfaces".into()],
        ),
        (
            "an array",
            json!([]),
            6,
            vec!["prevResult".into(), "an array".into()],
        ),
        (
            "a string",
            json!("string"),
            6,
            vec!["prevResult".into(), "a string".into()],
        ),
        (
            "interfaces that are no array",
            json!({"interfaces": "eth0"}),
            6,
            vec!["interfaces".into()],
        ),
    ];
    for (what, prev, code, words) in cases {
        let (ok, out) = check("eth0", prev);
        assert!(!ok, "CHECK passed with {what}: {out}");
        assert_eq!(out["code"], code, "{what}: {out}");
        let msg = out["msg"].as_str().unwrap();
        for w in words {
            assert!(msg.contains(&w), "{what}: {msg:?} does not name {w:?}");
        }
    }
    // The kernel side moving away from a true prevResult fails too.
    let c = node.scope.name("c");
    run(
        "ip",
        &[
            "-n",
            &c,
            "link",
            "set",
            "eth0",
            "address",
            "02:00:00:00:00:04",
        ],
    );
    let (ok, out) = check("eth0", r0.clone());
    assert!(!ok && out["code"] == 999, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("02:00:00:00:00:04"),
        "{out}"
    );
    assert!(node.cni("DEL", "k1", &p, "eth0", &conf, &[]).0);
    assert!(node.cni("DEL", "k1", &p, "eth1", &conf, &[]).0);
}

/// `FLANNEL_IPMASQ=True` (a hand-written file, another tool's) is read as Flannel's CNI
/// plugin reads it: anything but `true` is false. The ADD works, its result alone on stdout,
/// and a warning on stderr tells the operator. Before, every ADD on the node failed with
/// code 7 ("expected true or false").
#[test]
fn flannel_ipmasq_true_is_read_as_flannels_plugin_reads_it() {
    if !preconditions(
        "flannel_ipmasq_true_is_read_as_flannels_plugin_reads_it",
        &["ip", "nft"],
    ) {
        return;
    }
    let node = Node::new("cnimqt", &V4.replace("IPMASQ=false", "IPMASQ=True"));
    let conf = node.conf("1.0.0");
    let (_c, p) = node.ctr("c");
    let (ok, out, err) = run_plugin(TWILL, Some(&node.host), "ADD", "mq", &p, "eth0", &conf, &[]);
    assert!(ok, "{out} / {err}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["ips"][0]["gateway"], "10.244.7.1", "{r}");
    assert!(
        err.contains("warning")
            && err.contains("FLANNEL_IPMASQ=True")
            && err.contains("read as false"),
        "{err}"
    );
    // False: the agent does not masquerade, so the plugin does (ipMasq's default).
    let host = node.scope.name("host");
    assert!(has_masq_table(&host));
    assert!(node.cni("DEL", "mq", &p, "eth0", &conf, &[]).0);
    assert!(!has_masq_table(&host));
}

/// Failures name what the runtime knows: the interface by CNI_IFNAME and the netns by its
/// path. Before, a container route the kernel refused read `… dev #2 in netns …`, and a
/// missing netns `… not found in netns -`.
#[test]
fn errors_name_the_interface_and_the_netns() {
    if !preconditions("errors_name_the_interface_and_the_netns", &["ip"]) {
        return;
    }
    if !reference_plugin_installed("static") {
        return;
    }
    let node = Node::new("cnierr", V4);
    let mut conf = node.conf("1.0.0");
    conf["name"] = json!("errnet");
    conf["ipMasq"] = json!(false);
    // A gateway in no subnet of the container's: the kernel refuses the route.
    conf["ipam"] = json!({
        "type": "static",
        "addresses": [{"address": "10.95.0.5/24"}],
        "routes": [{"dst": "10.94.0.0/16", "gw": "10.93.0.1"}]
    });
    let (_c, p) = node.ctr("c");
    let (ok, out) = node.cni("ADD", "er", &p, "net1", &conf, &[]);
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(!ok, "{out}");
    assert!(
        msg.contains("10.94.0.0/16 via 10.93.0.1 dev net1") && msg.contains(&p),
        "{msg}"
    );
    assert!(!msg.contains('#'), "an index instead of a name: {msg}");
    assert!(!link_exists(&node.scope.name("c"), "net1"), "rolled back");

    let gone = format!("/var/run/netns/{}", node.scope.name("gone"));
    let mut check = node.conf("1.0.0");
    check["prevResult"] = json!({});
    for (cmd, conf) in [("ADD", node.conf("1.0.0")), ("CHECK", check)] {
        let (ok, out) = node.cni(cmd, "er", &gone, "eth0", &conf, &[]);
        let msg = out["msg"].as_str().unwrap_or_default();
        assert!(!ok && out["code"] == 3, "{cmd}: {out}");
        assert!(
            msg.contains(&gone) && msg.contains("does not exist"),
            "{cmd}: {msg}"
        );
        assert!(!msg.contains("netns -"), "{cmd}: {msg}");
    }
}

/// A bridge twill did not create, whose address was never set, follows the lowest MAC of its
/// ports. ADD names the MAC it has once the veth joined, and CHECK does not compare a MAC that
/// drifts whenever a port with a lower one joins; once the bridge's address is set, it does.
/// Before, the result named the MAC from before the veth joined and CHECK failed with 999
/// right after ADD, and again for every attachment when a lower port joined.
#[test]
fn check_passes_on_a_bridge_whose_mac_follows_its_ports() {
    let name = "check_passes_on_a_bridge_whose_mac_follows_its_ports";
    if !preconditions(name, &["ip"]) {
        return;
    }
    let node = Node::new("cnibrx", V4);
    let host = node.scope.name("host");
    run("ip", &["-n", &host, "link", "add", "brx", "type", "bridge"]);
    let mut conf = node.conf("1.0.0");
    conf["bridge"] = json!("brx");
    conf["ipMasq"] = json!(false);
    let bridge_mac = || {
        twill_tests::ip_link(&host, "brx")["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let check = |id: &str, p: &str, r: &Value| {
        let mut c = conf.clone();
        c["prevResult"] = r.clone();
        node.cni("CHECK", id, p, "eth0", &c, &[])
    };
    let (_c1, p1) = node.ctr("c1");
    let r1 = node.add("b1", &p1, &conf);
    assert_eq!(
        r1["interfaces"][0]["mac"].as_str().unwrap(),
        bridge_mac(),
        "the result names the bridge's MAC as it is after ADD"
    );
    let (ok, out) = check("b1", &p1, &r1);
    assert!(ok, "CHECK right after ADD: {out}");
    let (_c2, p2) = node.ctr("c2");
    let r2 = node.add("b2", &p2, &conf);
    // A port with a very low MAC: the bridge takes it.
    let veth2 = r2["interfaces"][1]["name"].as_str().unwrap().to_string();
    run(
        "ip",
        &[
            "-n",
            &host,
            "link",
            "set",
            "dev",
            &veth2,
            "address",
            "02:00:00:00:00:01",
        ],
    );
    assert_eq!(bridge_mac(), "02:00:00:00:00:01", "brx follows its ports");
    let mut r2_now = r2.clone();
    r2_now["interfaces"][1]["mac"] = json!("02:00:00:00:00:01");
    for (id, p, r) in [("b1", &p1, &r1), ("b2", &p2, &r2_now)] {
        let (ok, out) = check(id, p, r);
        assert!(ok, "CHECK {id} after a lower port joined: {out}");
    }
    // Set by hand, the address no longer drifts, and a stale one in prevResult is found.
    run(
        "ip",
        &[
            "-n",
            &host,
            "link",
            "set",
            "dev",
            "brx",
            "address",
            "02:00:00:00:00:09",
        ],
    );
    let (ok, out) = check("b1", &p1, &r1);
    assert!(!ok && out["code"] == 999, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(
        msg.contains("brx") && msg.contains("02:00:00:00:00:09"),
        "{msg}"
    );
    assert!(node.cni("DEL", "b1", &p1, "eth0", &conf, &[]).0);
    assert!(node.cni("DEL", "b2", &p2, "eth0", &conf, &[]).0);
}

/// A second attachment of a network in one netns made by a twill whose ADD gave only the first
/// one its routes ("first one wins") has no routes of its own: CHECK takes the first one's as
/// the reference's ValidateExpectedRoute does (it never looks at the device). A route out of
/// the attachment's own interface still has to match, and no route at all fails. Before, CHECK
/// of such an attachment failed with 999 after an upgrade.
#[test]
fn check_lets_another_interfaces_route_stand_in_when_the_attachment_has_none() {
    let name = "check_lets_another_interfaces_route_stand_in_when_the_attachment_has_none";
    if !preconditions(name, &["ip"]) {
        return;
    }
    let node = Node::new("cnirto", V4);
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let (_c, p) = node.ctr("c");
    let c = node.scope.name("c");
    let (ok, r0) = node.cni("ADD", "k1", &p, "eth0", &conf, &[]);
    assert!(ok, "{r0}");
    let (ok, r1) = node.cni("ADD", "k1", &p, "eth1", &conf, &[]);
    assert!(ok, "{r1}");
    let check = |ifname: &str, prev: &Value| {
        let mut cf = conf.clone();
        cf["prevResult"] = prev.clone();
        node.cni("CHECK", "k1", &p, ifname, &cf, &[])
    };
    let dsts: Vec<String> = r1["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap().to_string())
        .collect();
    assert!(dsts.iter().any(|d| d == "0.0.0.0/0"), "{r1}");
    // eth1 as the old ADD left it: without routes.
    for dst in &dsts {
        run("ip", &["-n", &c, "route", "del", dst, "dev", "eth1"]);
    }
    let (ok, out) = check("eth1", &r1);
    assert!(ok, "eth0's routes stand in for eth1's: {out}");
    // A route out of eth1 itself must be the one prevResult lists.
    run(
        "ip",
        &[
            "-n",
            &c,
            "route",
            "add",
            "default",
            "via",
            "10.244.7.9",
            "dev",
            "eth1",
            "metric",
            "7",
        ],
    );
    let (ok, out) = check("eth1", &r1);
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(
        !ok && msg.contains("route to 0.0.0.0/0 via 10.244.7.1 dev eth1")
            && msg.contains("via 10.244.7.9 dev eth1 metric 7"),
        "{out}"
    );
    run("ip", &["-n", &c, "route", "del", "default", "dev", "eth1"]);
    // No route at all to a destination fails, saying so.
    for dst in &dsts {
        run("ip", &["-n", &c, "route", "del", dst, "dev", "eth0"]);
    }
    let (ok, out) = check("eth1", &r1);
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(
        !ok && out["code"] == 999 && msg.contains("no route to"),
        "{out}"
    );
    assert!(node.cni("DEL", "k1", &p, "eth0", &conf, &[]).0);
    assert!(node.cni("DEL", "k1", &p, "eth1", &conf, &[]).0);
}

/// `"priority": 0` in an IPAM route: the kernel reports no metric for an IPv4 route of metric
/// 0 and makes 1024 of an IPv6 route's 0, and CHECK passes: a result's `priority` 0 is read as
/// not given (as the reference types read it), in ADD and in CHECK's prevResult alike. A guard:
/// it passed before too.
#[test]
fn a_route_with_priority_0_passes_check() {
    let name = "a_route_with_priority_0_passes_check";
    if !preconditions(name, &["ip"]) {
        return;
    }
    let node = Node::new("cnipr0", V4);
    let path = fake_ipam(
        &node,
        "pr0ipam",
        &json!({"cniVersion": "1.1.0",
                "ips": [{"address": "10.96.0.5/24", "gateway": "10.96.0.1"},
                        {"address": "fd00:96::5/64", "gateway": "fd00:96::1"}],
                "routes": [{"dst": "10.97.0.0/16", "priority": 0},
                           {"dst": "fd00:97::/32", "priority": 0}]}),
    );
    let mut conf = node.conf("1.1.0");
    conf["name"] = json!("pr0net");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({"type": "pr0ipam"});
    let env = [("CNI_PATH", path.as_str())];
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "pr0", &p, "eth0", &conf, &env);
    assert!(ok, "{r}");
    let c = node.scope.name("c");
    let v4 = routes_to(&c, "main", "10.97.0.0/16");
    assert_eq!(v4.len(), 1, "{v4:?}");
    assert!(
        v4[0].get("metric").is_none(),
        "metric 0 is not reported: {v4:?}"
    );
    let v6 = routes6_to(&c, "fd00:97::/32");
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert_eq!(v6[0]["metric"], 1024, "{v6:?}");
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    let (ok, out) = node.cni("CHECK", "pr0", &p, "eth0", &check, &env);
    assert!(ok, "{out}");
    assert!(node.cni("DEL", "pr0", &p, "eth0", &conf, &env).0);
}

/// An IPAM route without `gw` to the container's own subnet is the route the kernel made when
/// the address was added: it is not added again. Routes go in without NLM_F_EXCL, so before,
/// an IPv4 copy went in front of the kernel's (same metric) via the family's gateway, and the
/// container reached its own subnet through the bridge's address; IPv6 got a second route at
/// metric 1024. The result still lists the route, and CHECK finds the kernel's.
#[test]
fn a_route_to_the_containers_own_subnet_is_left_to_the_kernel() {
    let name = "a_route_to_the_containers_own_subnet_is_left_to_the_kernel";
    if !preconditions(name, &["ip"]) {
        return;
    }
    let node = Node::new("cnicon", V4);
    let routes = json!([{"dst": "10.5.1.0/24"}, {"dst": "fd00:5:1::/64"}, {"dst": "10.6.0.0/16"}]);
    let path = fake_ipam(
        &node,
        "conipam",
        &json!({"cniVersion": "1.1.0",
                "ips": [{"address": "10.5.1.2/24", "gateway": "10.5.1.1"},
                        {"address": "fd00:5:1::2/64", "gateway": "fd00:5:1::1"}],
                "routes": routes}),
    );
    let mut conf = node.conf("1.1.0");
    conf["name"] = json!("connet");
    conf["ipMasq"] = json!(false);
    conf["ipam"] = json!({"type": "conipam"});
    let env = [("CNI_PATH", path.as_str())];
    let (_c, p) = node.ctr("c");
    let (ok, r) = node.cni("ADD", "con", &p, "eth0", &conf, &env);
    assert!(ok, "{r}");
    for want in routes.as_array().unwrap() {
        assert!(
            r["routes"].as_array().unwrap().contains(want),
            "{want} in the result: {r}"
        );
    }
    let c = node.scope.name("c");
    let v4 = routes_to(&c, "main", "10.5.1.0/24");
    assert_eq!(v4.len(), 1, "the kernel's alone: {v4:?}");
    assert_eq!(v4[0]["protocol"], "kernel", "{v4:?}");
    let v6 = routes6_to(&c, "fd00:5:1::/64");
    assert_eq!(v6.len(), 1, "the kernel's alone: {v6:?}");
    assert_eq!(v6[0]["protocol"], "kernel", "{v6:?}");
    let other = routes_to(&c, "main", "10.6.0.0/16");
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0]["gateway"], "10.5.1.1", "{other:?}");
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    let (ok, out) = node.cni("CHECK", "con", &p, "eth0", &check, &env);
    assert!(ok, "{out}");
    assert!(node.cni("DEL", "con", &p, "eth0", &conf, &env).0);
}

/// CHECK's messages about the host side say what to do: the host veth off the bridge names
/// where it is and how to attach it again; a deleted bridge and a host veth that is another
/// pair's say to DEL and ADD the attachment again. Before, they said only what was wrong.
#[test]
fn check_of_the_host_side_says_what_to_do() {
    let name = "check_of_the_host_side_says_what_to_do";
    if !preconditions(name, &["ip"]) {
        return;
    }
    let node = Node::new("cnichm", V4);
    let host = node.scope.name("host");
    let mut conf = node.conf("1.0.0");
    conf["ipMasq"] = json!(false);
    let (_c, p) = node.ctr("c");
    let r = node.add("hm", &p, &conf);
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    let checked = || node.cni("CHECK", "hm", &p, "eth0", &check, &[]);
    let veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    run(
        "ip",
        &["-n", &host, "link", "add", "brother", "type", "bridge"],
    );
    run(
        "ip",
        &["-n", &host, "link", "set", &veth, "master", "brother"],
    );
    let (ok, out) = checked();
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(
        !ok && msg.contains("port of brother")
            && msg.contains(&format!("ip link set {veth} master cni0"))
            && msg.contains("DEL and ADD hm eth0 again"),
        "{out}"
    );
    run("ip", &["-n", &host, "link", "set", &veth, "master", "cni0"]);
    let (ok, out) = checked();
    assert!(ok, "{out}");
    // Another pair under the host veth's name.
    // A link that is up cannot be renamed.
    run("ip", &["-n", &host, "link", "set", &veth, "down"]);
    run(
        "ip",
        &["-n", &host, "link", "set", &veth, "name", "vethaside"],
    );
    run(
        "ip",
        &[
            "-n", &host, "link", "add", &veth, "master", "cni0", "type", "veth", "peer", "name",
            "vethpeer",
        ],
    );
    let (ok, out) = checked();
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(
        !ok && msg.contains("not the peer of eth0")
            && msg.contains("two different veth pairs")
            && msg.contains("DEL and ADD hm eth0 again"),
        "{out}"
    );
    run("ip", &["-n", &host, "link", "del", &veth]);
    run(
        "ip",
        &["-n", &host, "link", "set", "vethaside", "name", &veth],
    );
    run("ip", &["-n", &host, "link", "set", &veth, "up"]);
    run("ip", &["-n", &host, "link", "del", "cni0"]);
    let (ok, out) = checked();
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(
        !ok && msg.contains("bridge cni0 not found") && msg.contains("DEL and ADD hm eth0 again"),
        "{out}"
    );
    assert!(node.cni("DEL", "hm", &p, "eth0", &conf, &[]).0);
}

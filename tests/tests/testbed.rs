//! The test bed itself: clusters of host namespaces on an underlay, cleanup on drop and after
//! panics, sweeping a crashed run's leftovers, and the etcd fixtures.

use std::path::Path;
use std::process::{Command, Stdio};

use twill_netkit::Netns;
use twill_testbed::{
    Cluster, Etcd, EtcdCluster, NETWORK_CONFIG_KEY, namespaces_with_prefix, pids_in_netns, wait_for,
};
use twill_tests::{ip_json, ns_exec_ok, preconditions, run};

#[test]
fn hosts_reach_each_other_over_the_underlay_and_vanish_on_drop() {
    if !preconditions(
        "hosts_reach_each_other_over_the_underlay_and_vanish_on_drop",
        &["ip", "ping"],
    ) {
        return;
    }
    let prefix = "twt-tb1";
    let cluster = Cluster::builder(prefix).hosts(3).build().unwrap();
    assert_eq!(cluster.hosts.len(), 3);
    assert_eq!(
        namespaces_with_prefix(prefix).unwrap().len(),
        4,
        "underlay + 3 hosts"
    );
    for h in &cluster.hosts {
        let addrs = ip_json(&h.name, &["-4", "addr", "show", "dev", "eth0"]);
        assert_eq!(addrs[0]["addr_info"][0]["local"], h.ip.to_string());
        let addrs6 = ip_json(
            &h.name,
            &["-6", "addr", "show", "dev", "eth0", "scope", "global"],
        );
        assert_eq!(addrs6[0]["addr_info"][0]["local"], h.ip6.to_string());
    }
    let h1 = &cluster.host(1).name;
    for peer in [cluster.host(2), cluster.host(3)] {
        assert!(
            ns_exec_ok(h1, &["ping", "-c1", "-W2", &peer.ip.to_string()]),
            "{h1} cannot ping {}",
            peer.ip
        );
        // The IPv6 underlay works at once (no DAD wait).
        assert!(
            ns_exec_ok(h1, &["ping", "-6", "-c1", "-W2", &peer.ip6.to_string()]),
            "{h1} cannot ping {}",
            peer.ip6
        );
    }
    let underlay_links = ip_json(&format!("{prefix}-ul"), &["link", "show", "master", "br0"]);
    assert_eq!(underlay_links.as_array().unwrap().len(), 3);
    drop(cluster);
    assert!(namespaces_with_prefix(prefix).unwrap().is_empty());
}

#[test]
fn a_panicking_test_still_cleans_up() {
    if !preconditions("a_panicking_test_still_cleans_up", &[]) {
        return;
    }
    let prefix = "twt-tb2";
    let result = std::panic::catch_unwind(|| {
        let _cluster = Cluster::builder(prefix).hosts(2).build().unwrap();
        assert_eq!(namespaces_with_prefix(prefix).unwrap().len(), 3);
        panic!("simulated test failure");
    });
    assert!(result.is_err());
    assert!(namespaces_with_prefix(prefix).unwrap().is_empty());
}

#[test]
fn leftovers_of_a_killed_run_are_swept_with_their_processes() {
    if !preconditions(
        "leftovers_of_a_killed_run_are_swept_with_their_processes",
        &["sleep"],
    ) {
        return;
    }
    let prefix = "twt-tb3";
    // What a SIGKILLed run leaves: a namespace of ours with a process still inside.
    let stale = Netns::create(&format!("{prefix}-h1")).unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("600").stdout(Stdio::null());
    stale.prepare_command(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    assert_eq!(
        pids_in_netns(&format!("{prefix}-h1")),
        vec![child.id() as i32]
    );
    drop(stale);

    let cluster = Cluster::builder(prefix).hosts(1).build().unwrap();
    // The sleeper was killed by the sweep; reap it.
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(pids_in_netns(&cluster.host(1).name).is_empty());
    drop(cluster);
    assert!(namespaces_with_prefix(prefix).unwrap().is_empty());
}

fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let mut full = vec!["--endpoints", endpoint];
    full.extend_from_slice(args);
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(&full)
        .output()
        .expect("running etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn local_etcd_serves_survives_restart_and_is_removed_on_drop() {
    if !preconditions(
        "local_etcd_serves_survives_restart_and_is_removed_on_drop",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let mut etcd = Etcd::start_local().unwrap();
    let ep = etcd.endpoint();
    assert!(ep.starts_with("http://127.0.0.1:"));
    etcdctl(
        &ep,
        &[
            "put",
            "/coreos.com/network/config",
            r#"{"Network":"10.5.0.0/16"}"#,
        ],
    );
    assert!(etcdctl(&ep, &["get", "/coreos.com/network/config"]).contains("10.5.0.0/16"));

    // Stop and start again: same data, same endpoint.
    let pid = etcd.pid().unwrap();
    etcd.stop();
    assert!(!etcd.is_healthy());
    assert!(wait_for(std::time::Duration::from_secs(5), || !Path::new(
        &format!("/proc/{pid}")
    )
    .exists()));
    etcd.start().unwrap();
    etcd.wait_healthy().unwrap();
    assert!(etcdctl(&ep, &["get", "/coreos.com/network/config"]).contains("10.5.0.0/16"));

    let pid = etcd.pid().unwrap();
    let data = etcd.data_dir();
    assert!(data.exists());
    drop(etcd);
    assert!(!data.exists(), "data dir removed");
    assert!(
        wait_for(std::time::Duration::from_secs(5), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "etcd {pid} still running"
    );
}

#[test]
fn etcd_runs_inside_a_lab_namespace() {
    if !preconditions(
        "etcd_runs_inside_a_lab_namespace",
        &["etcd", "etcdctl", "ip"],
    ) {
        return;
    }
    let cluster = Cluster::builder("twt-tb4").hosts(2).build().unwrap();
    let h1 = cluster.host(1);
    let etcd = Etcd::start_in(&h1.netns, h1.ip, true).unwrap();
    assert_eq!(etcd.endpoint(), format!("http://{}:2379", h1.ip));
    assert_eq!(pids_in_netns(&h1.name), vec![etcd.pid().unwrap() as i32]);
    // Another host reaches it over the underlay.
    let h2 = &cluster.host(2).name;
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            h2,
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            &etcd.endpoint(),
            "put",
            "k",
            "v",
        ],
    );
    assert_eq!(out.trim(), "OK");
    // The fixture's own client: puts through the JSON gateway, reads with etcdctl, both from
    // inside the namespace.
    etcd.put_network_config(r#"{"Network":"10.6.0.0/16"}"#)
        .unwrap();
    let config = etcd
        .etcdctl(&["get", NETWORK_CONFIG_KEY, "--print-value-only"])
        .unwrap();
    assert_eq!(config.trim(), r#"{"Network":"10.6.0.0/16"}"#);
    assert_eq!(
        etcd.etcdctl(&["get", "k", "--print-value-only"])
            .unwrap()
            .trim(),
        "v"
    );
}

#[test]
fn three_member_etcd_cluster() {
    if !preconditions("three_member_etcd_cluster", &["etcd", "etcdctl"]) {
        return;
    }
    let mut cluster = EtcdCluster::start_local(3).unwrap();
    let eps = cluster.endpoints();
    let members = etcdctl(&eps, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    etcdctl(&eps, &["put", "k", "v"]);
    // One member down: the other two keep quorum.
    cluster.members[0].stop();
    let ep1 = cluster.members[1].endpoint();
    assert!(etcdctl(&ep1, &["get", "k"]).contains('v'));
}

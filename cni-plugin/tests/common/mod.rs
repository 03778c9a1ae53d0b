//! What the `twill` binary tests share: a simulated node (host namespace, subnet file, IPAM
//! dir) that runs the plugin as runtimes do, and small readers of what a namespace holds.
//! Each test file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tempfile::TempDir;
use twill_netkit::Netns;
use twill_tests::cni::run_plugin;
use twill_tests::{NsScope, ns_exec_ok, run};

pub const TWILL: &str = env!("CARGO_BIN_EXE_twill");

/// One simulated node: a host namespace with a subnet file and an IPAM dir.
pub struct Node {
    pub scope: NsScope,
    pub host: Netns,
    pub dir: TempDir,
}

impl Node {
    /// A node whose subnet file says `subnet_env`.
    pub fn new(tag: &str, subnet_env: &str) -> Node {
        let scope = NsScope::new(tag);
        let host = scope.create("host");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("subnet.env"), subnet_env).unwrap();
        Node { scope, host, dir }
    }

    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "twnet",
            "type": "twill",
            "subnetFile": self.dir.path().join("subnet.env"),
            "dataDir": self.dir.path().join("ipam"),
        })
    }

    /// Creates a link named `name` in the host namespace that is not a bridge (a veth).
    pub fn add_non_bridge(&self, name: &str) {
        let peer = format!("{name}2");
        let host = self.scope.name("host");
        run(
            "ip",
            &[
                "-n", &host, "link", "add", name, "type", "veth", "peer", "name", &peer,
            ],
        );
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam").join("twnet")
    }

    pub fn ctr(&self, name: &str) -> (Netns, String) {
        let ns = self.scope.create(name);
        let path = ns.path().display().to_string();
        (ns, path)
    }

    /// Runs the plugin inside the host namespace; returns (exit ok, parsed stdout).
    pub fn cni(
        &self,
        cmd: &str,
        id: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> (bool, Value) {
        cni_in(Some(&self.host), cmd, id, netns, ifname, conf, extra)
    }

    /// ADD of `eth0`, which must succeed; returns the result.
    pub fn add(&self, id: &str, netns: &str, conf: &Value) -> Value {
        let (ok, r) = self.cni("ADD", id, netns, "eth0", conf, &[]);
        assert!(ok, "ADD {id}: {r}");
        r
    }

    /// ADD of `eth0` as `par<i>` into every container of `ctrs` at once; the results in order.
    pub fn parallel_adds(&self, ctrs: &[(Netns, String)], conf: &Value) -> Vec<(bool, Value)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = ctrs
                .iter()
                .enumerate()
                .map(|(i, (_, p))| {
                    s.spawn(move || self.cni("ADD", &format!("par{i}"), p, "eth0", conf, &[]))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// DEL of every `par<i>` of [`Node::parallel_adds`] at once; each must succeed.
    pub fn parallel_dels(&self, ctrs: &[(Netns, String)], conf: &Value) {
        std::thread::scope(|s| {
            for (i, (_, p)) in ctrs.iter().enumerate() {
                s.spawn(move || {
                    assert!(self.cni("DEL", &format!("par{i}"), p, "eth0", conf, &[]).0)
                });
            }
        });
    }
}

/// Runs the plugin, in `host` when given; returns (exit ok, stdout parsed, Null when empty).
pub fn cni_in(
    host: Option<&Netns>,
    cmd: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    conf: &Value,
    extra: &[(&str, &str)],
) -> (bool, Value) {
    let (ok, text, _) = run_plugin(TWILL, host, cmd, id, netns, ifname, conf, extra);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout not JSON ({e}): {text}"))
    };
    (ok, v)
}

/// A /proc or /sys file as namespace `ns` sees it (`ip netns exec` remounts /sys), trimmed.
pub fn read_in(ns: &str, path: &str) -> String {
    run("ip", &["netns", "exec", ns, "cat", path])
        .trim()
        .to_string()
}

/// The reservation files of a store (named by an address of either family), sorted.
pub fn ip_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether namespace `ns` has a link called `name`.
pub fn link_exists(ns: &str, name: &str) -> bool {
    twill_tests::ip_json(ns, &["link", "show"])
        .as_array()
        .is_some_and(|ls| ls.iter().any(|l| l["ifname"] == name))
}

/// The MAC namespace `ns` has for `ip` on `dev` (empty when it has none).
pub fn neigh_mac(ns: &str, ip: &str, dev: &str) -> String {
    let n = twill_tests::ip_json(ns, &["neigh", "show", ip, "dev", dev]);
    n[0]["lladdr"].as_str().unwrap_or_default().to_string()
}

/// The global addresses (`addr/prefixlen`) of the first link of `ip -j addr show` output.
pub fn global_addrs(addrs: &Value) -> Vec<String> {
    addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Creates a veth pair in namespace `ns`: `name` there, `peer` moved into `peer_ns`.
pub fn add_veth_pair(ns: &str, name: &str, peer: &str, peer_ns: &str) {
    run(
        "ip",
        &[
            "-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns,
        ],
    );
}

/// `nft list table inet twill-cni-twnet` in namespace `ns` (panics when it is not there).
pub fn masq_table(ns: &str) -> String {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            "inet",
            "twill-cni-twnet",
        ],
    )
}

/// Whether namespace `ns` has the `inet twill-cni-twnet` table.
pub fn has_masq_table(ns: &str) -> bool {
    ns_exec_ok(ns, &["nft", "list", "table", "inet", "twill-cni-twnet"])
}

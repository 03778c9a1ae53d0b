//! A runtime that follows the CNI spec to the letter (twill_tests::spec_driver) drives the
//! same conflist (bridge + host-local, ipMasq, as a user's reference network) once with
//! `"type": "bridge"` (the reference plugin) and once with `"type": "twill"`, each in a host
//! namespace of its own, and the verdicts (success or the error code) must agree scenario by
//! scenario. Every successful ADD result is checked against the spec's rules and the kernel.
//! Where they differ on purpose the difference is listed here and explained in docs/cni.md.

use std::path::Path;

use serde_json::{Value, json};
use tempfile::TempDir;
use twill_tests::cni::{
    PluginOutput, REFERENCE_DIR, reference_plugin_installed, reservations, spec_violations,
};
use twill_tests::spec_driver::{Attachment, SpecDriver};
use twill_tests::{NsScope, ip_json, preconditions, run};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

/// A scenario's name and what the plugin answered ("ok", "error <code>", …).
type Row = (&'static str, String);

fn verdict(out: &PluginOutput) -> String {
    match out.code() {
        None => "ok".to_string(),
        Some(code) => format!("error {code}"),
    }
}

/// The conflist; `dual` adds an IPv6 range and default route (host-local with two ranges, as
/// Flannel's own CNI plugin configures a dual-stack node).
fn network(plugin: &str, name: &str, versions: &[&str], data_dir: &Path, dual: bool) -> Value {
    let mut net = json!({
        "cniVersion": versions[0],
        "name": name,
        "plugins": [{
            "type": plugin,
            "bridge": "spec0",
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "routes": [{"dst": "0.0.0.0/0"}],
                "ranges": [[{"subnet": "10.93.0.0/24", "gateway": "10.93.0.1"}]],
                "dataDir": data_dir,
            },
        }],
    });
    if versions.len() > 1 {
        net["cniVersions"] = json!(versions);
    }
    if dual {
        let ipam = &mut net["plugins"][0]["ipam"];
        ipam["ranges"] = json!([
            [{"subnet": "10.93.0.0/24", "gateway": "10.93.0.1"}],
            [{"subnet": "fd00:93::/64", "gateway": "fd00:93::1"}],
        ]);
        ipam["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    }
    net
}

/// Checks a successful ADD against the spec and against the container's kernel state.
fn check_result(plugin: &str, out: &PluginOutput, version: &str, ctr_ns: &str, netns: &str) {
    let result = out.json();
    let bad = spec_violations(&result, version, "eth0", netns);
    assert!(
        bad.is_empty(),
        "{plugin}'s ADD result breaks the spec: {bad:?}\n{result}"
    );
    let link = &ip_json(ctr_ns, &["addr", "show", "dev", "eth0"])[0];
    for ip in result["ips"].as_array().unwrap() {
        let addr = ip["address"].as_str().unwrap();
        let iface = &result["interfaces"][ip["interface"].as_u64().unwrap() as usize];
        assert_eq!(
            link["address"], iface["mac"],
            "{plugin}: the result's MAC is eth0's"
        );
        let (local, len) = addr.split_once('/').unwrap();
        assert!(
            link["addr_info"].as_array().unwrap().iter().any(|a| {
                a["local"] == local
                    && a["prefixlen"].as_u64().map(|n| n.to_string()).as_deref() == Some(len)
            }),
            "{plugin}: {addr} is not on eth0: {link}"
        );
    }
}

/// Runs every scenario for one plugin on the conflist `versions` gives; returns the rows.
fn verdicts(tag: &str, plugin: &str, binary: &str, versions: &[&str], dual: bool) -> Vec<Row> {
    let scope = NsScope::new(tag);
    let host = scope.create("host");
    let dir = TempDir::new().unwrap();
    let name = format!("twt-{tag}");
    let twill_state = Path::new("/run/twill-cni").join(&name);
    let _ = std::fs::remove_dir_all(&twill_state);
    let store = dir.path().join("ipam").join(&name);
    let driver = SpecDriver {
        binary: binary.to_string(),
        host: &host,
        cni_path: REFERENCE_DIR.to_string(),
        network: network(plugin, &name, versions, &dir.path().join("ipam"), dual),
    };
    let ctr = |suffix: &str| {
        let ns = scope.create(suffix);
        (ns.path().display().to_string(), scope.name(suffix), ns)
    };
    let mut rows: Vec<Row> = Vec::new();
    let Some(version) = driver.negotiate() else {
        // A runtime skips the network; an ADD sent anyway says why.
        rows.push(("version negotiated", "none".into()));
        let (p, _, _ns) = ctr("v");
        let at = Attachment {
            container_id: "specv",
            netns: Some(&p),
            ifname: "eth0",
        };
        rows.push(("ADD anyway", verdict(&driver.add(versions[0], at))));
        return rows;
    };
    rows.push(("version negotiated", version.clone()));

    // ADD, CHECK, DEL with prevResult, then DEL repeated with and without what it had.
    let (p1, n1, _c1) = ctr("c1");
    let a1 = Attachment {
        container_id: "spec1",
        netns: Some(&p1),
        ifname: "eth0",
    };
    let add = driver.add(&version, a1);
    rows.push(("ADD", verdict(&add)));
    if add.ok {
        check_result(plugin, &add, &version, &n1, &p1);
        let families = add.json()["ips"].as_array().map_or(0, Vec::len);
        rows.push(("addresses in the result", families.to_string()));
    }
    let prev = add.json();
    rows.push(("CHECK", verdict(&driver.check(&version, a1, &prev))));
    rows.push(("DEL", verdict(&driver.del(&version, a1, Some(&prev)))));
    rows.push((
        "DEL repeated",
        verdict(&driver.del(&version, a1, Some(&prev))),
    ));
    let bare = Attachment { netns: None, ..a1 };
    rows.push((
        "DEL repeated, no prevResult, no CNI_NETNS",
        verdict(&driver.del(&version, bare, None)),
    ));
    rows.push(("reservations after DEL", reservations(&store).to_string()));

    // CHECK after the container's veth end was deleted by hand.
    let (p2, n2, _c2) = ctr("c2");
    let a2 = Attachment {
        container_id: "spec2",
        netns: Some(&p2),
        ifname: "eth0",
    };
    let add = driver.add(&version, a2);
    assert!(add.ok, "{plugin}: {add:?}");
    run("ip", &["-n", &n2, "link", "del", "eth0"]);
    let prev = add.json();
    rows.push((
        "CHECK after veth deleted",
        verdict(&driver.check(&version, a2, &prev)),
    ));
    rows.push((
        "DEL after veth deleted",
        verdict(&driver.del(&version, a2, Some(&prev))),
    ));

    // A network without `name`.
    let mut nameless = driver.network.clone();
    nameless.as_object_mut().unwrap().remove("name");
    let no_name = SpecDriver {
        network: nameless,
        binary: driver.binary.clone(),
        cni_path: driver.cni_path.clone(),
        host: &host,
    };
    let (p3, _, _c3) = ctr("c3");
    let a3 = Attachment {
        container_id: "spec3",
        netns: Some(&p3),
        ifname: "eth0",
    };
    let add = no_name.add(&version, a3);
    rows.push(("ADD without name", verdict(&add)));
    if add.ok {
        no_name.del(&version, a3, Some(&add.json()));
    }

    // ADD without CNI_NETNS.
    let a4 = Attachment {
        container_id: "spec4",
        netns: None,
        ifname: "eth0",
    };
    let add = driver.add(&version, a4);
    rows.push(("ADD without CNI_NETNS", verdict(&add)));
    if add.ok {
        driver.del(&version, a4, None);
    }

    // STATUS and GC exist from 1.1.0 on; a runtime does not send them to older plugins.
    if version == "1.1.0" {
        rows.push(("STATUS", verdict(&driver.status(&version))));
        let (pk, _, _ck) = ctr("keep");
        let (pd, _, _cd) = ctr("drop");
        let keep = Attachment {
            container_id: "speckeep",
            netns: Some(&pk),
            ifname: "eth0",
        };
        let drop = Attachment {
            container_id: "specdrop",
            netns: Some(&pd),
            ifname: "eth0",
        };
        let kept = driver.add(&version, keep);
        assert!(
            kept.ok && driver.add(&version, drop).ok,
            "{plugin}: {kept:?}"
        );
        rows.push(("GC", verdict(&driver.gc(&version, &[("speckeep", "eth0")]))));
        rows.push(("reservations after GC", reservations(&store).to_string()));
        driver.del(&version, keep, Some(&kept.json()));
        driver.del(&version, drop, None);
    } else {
        rows.push(("STATUS", "not sent".into()));
        rows.push(("GC", "not sent".into()));
        rows.push(("reservations after GC", "not sent".into()));
    }
    let _ = std::fs::remove_dir_all(&twill_state);
    rows
}

/// Prints the table and asserts twill's rows equal the reference's except `differences`
/// (scenario, twill's verdict, the reference's).
fn compare(
    tag: &str,
    versions: &[&str],
    dual: bool,
    differences: &[(&str, &str, &str)],
) -> Vec<Row> {
    let reference = verdicts(
        &format!("{tag}r"),
        "bridge",
        &format!("{REFERENCE_DIR}/bridge"),
        versions,
        dual,
    );
    let twill = verdicts(&format!("{tag}t"), "twill", TWILL, versions, dual);
    let mut table = format!(
        "conflist versions {versions:?}\n| scenario | twill | reference bridge |\n|---|---|---|\n"
    );
    for ((scenario, t), (_, r)) in twill.iter().zip(&reference) {
        table.push_str(&format!("| {scenario} | {t} | {r} |\n"));
    }
    eprintln!("{table}");
    assert_eq!(
        twill.iter().map(|r| r.0).collect::<Vec<_>>(),
        reference.iter().map(|r| r.0).collect::<Vec<_>>(),
        "same scenarios\n{table}"
    );
    for ((scenario, t), (_, r)) in twill.iter().zip(&reference) {
        match differences.iter().find(|d| d.0 == *scenario) {
            Some((_, want_t, want_r)) => assert!(
                t == want_t && r == want_r,
                "{scenario}: twill {t}, reference {r}; expected the documented {want_t} / {want_r}\n{table}"
            ),
            None => assert_eq!(t, r, "{scenario}: twill against the reference\n{table}"),
        }
    }
    twill
}

fn ready(test: &str) -> bool {
    preconditions(test, &["ip", "nft", "iptables"])
        && reference_plugin_installed("bridge")
        && reference_plugin_installed("host-local")
}

#[test]
fn spec_driver_1_0_0_same_verdicts_as_the_reference_bridge() {
    if !ready("spec_driver_1_0_0_same_verdicts_as_the_reference_bridge") {
        return;
    }
    let rows = compare("sd10", &["1.0.0"], false, &[]);
    assert!(
        rows.contains(&("addresses in the result", "1".to_string())),
        "{rows:?}"
    );
}

/// The same with host-local's two ranges (IPv4 and IPv6): both plugins give two addresses
/// and agree on every verdict.
#[test]
fn spec_driver_dual_stack_same_verdicts_as_the_reference_bridge() {
    if !ready("spec_driver_dual_stack_same_verdicts_as_the_reference_bridge") {
        return;
    }
    let rows = compare("sd6", &["1.0.0"], true, &[]);
    assert!(
        rows.contains(&("addresses in the result", "2".to_string())),
        "{rows:?}"
    );
}

/// The conflist offers 1.1.0 and 1.0.0: the reference plugin (containernetworking-plugins
/// 1.1.1) stops at 1.0.0, so the driver speaks 1.0.0 with it and sends no STATUS or GC. twill
/// speaks 1.1.0 and passes requests to the same host-local in 1.0.0 (it refused 1.1.0 with
/// code 1 before, failing every ADD where the reference plugin worked).
#[test]
fn spec_driver_1_1_0_negotiated_same_verdicts_as_the_reference_bridge() {
    if !ready("spec_driver_1_1_0_negotiated_same_verdicts_as_the_reference_bridge") {
        return;
    }
    let _ = compare(
        "sd11",
        &["1.1.0", "1.0.0"],
        false,
        &[
            ("version negotiated", "1.1.0", "1.0.0"),
            ("STATUS", "ok", "not sent"),
            ("GC", "ok", "not sent"),
            // host-local 1.1.1 predates GC: twill forgets its own state for the dropped
            // attachment but sends no GC to it, so its address stays reserved.
            ("reservations after GC", "2", "not sent"),
        ],
    );
}

/// A conflist that offers only 1.1.0: the reference plugin cannot take it (code 1), twill can.
#[test]
fn spec_driver_1_1_0_only_twill_speaks_it() {
    if !ready("spec_driver_1_1_0_only_twill_speaks_it") {
        return;
    }
    let reference = verdicts(
        "sd11or",
        "bridge",
        &format!("{REFERENCE_DIR}/bridge"),
        &["1.1.0"],
        false,
    );
    assert_eq!(
        reference,
        vec![
            ("version negotiated", "none".to_string()),
            ("ADD anyway", "error 1".to_string())
        ]
    );
    let twill = verdicts("sd11ot", "twill", TWILL, &["1.1.0"], false);
    assert_eq!(twill[0].1, "1.1.0", "{twill:?}");
    assert_eq!(twill[1], ("ADD", "ok".to_string()), "{twill:?}");
}

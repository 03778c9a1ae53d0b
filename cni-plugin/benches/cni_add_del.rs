//! CNI speed, side by side in one run: twill vs Debian's reference `bridge` + `host-local`
//! with an equivalent config (bridge, gateway, default route, MTU 1450, hairpin, ipMasq), once
//! IPv4-only and once dual-stack (twill from a dual-stack subnet file, the reference with two
//! host-local ranges).
//!
//! `sudo cargo bench -p twill-cni --bench cni_add_del [-- --seq N --par M --family ipv4|dual|both]`
//! Prints median and p95 of ADD and DEL over N sequential ADD+DEL pairs, then the latency of M
//! parallel ADDs, and twill's ratio to the reference, per family. One container of each plugin
//! stays attached for the whole run, as on a node that has pods: the timed ADDs and DELs are
//! the usual ones, not the node's first and last (twill applies or removes its masquerade
//! table only then). Runs entirely inside namespaces it creates (`twb-*`), removed at the end.
//! `TWILL_BENCH_TWILL=PATH` times another build of twill (an A/B of two commits in one go).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_netkit::Netns;

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

/// The twill binary to time: this build's, or `TWILL_BENCH_TWILL`'s.
fn twill_binary() -> String {
    std::env::var("TWILL_BENCH_TWILL").unwrap_or_else(|_| TWILL.to_string())
}
const REF_DIR: &str = "/usr/lib/cni";

struct Plugin {
    label: &'static str,
    binary: String,
    conf: Value,
}

fn invoke(host: &Netns, p: &Plugin, cmd: &str, id: &str, netns: &str) -> Duration {
    let mut c = Command::new(&p.binary);
    c.env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REF_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    host.prepare_command(&mut c).expect("entering host netns");
    let start = Instant::now();
    let mut child = c.spawn().expect("spawning plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(p.conf.to_string().as_bytes())
        .expect("writing config");
    let out = child.wait_with_output().expect("waiting for plugin");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{} {cmd} {id}: {} {}",
        p.label,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    (p(0.5), p(0.95))
}

fn arg(name: &str, default: usize) -> usize {
    twill_tests::bench_arg(name, &default.to_string())
        .parse()
        .unwrap_or(default)
}

struct Cleanup(&'static str);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = twill_testbed::sweep(self.0);
    }
}

/// One side-by-side comparison: twill and the reference on equivalent configs.
struct Scenario {
    title: &'static str,
    plugins: [Plugin; 2],
}

/// The IPv4-only pair (twill over a v4 subnet file, the reference with one range).
fn ipv4_scenario(dir: &Path) -> Scenario {
    std::fs::write(
        dir.join("subnet-v4.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .expect("subnet.env");
    Scenario {
        title: "IPv4",
        plugins: [
            Plugin {
                label: "twill",
                binary: twill_binary(),
                conf: json!({
                    "cniVersion": "1.0.0", "name": "twbench", "type": "twill",
                    "subnetFile": dir.join("subnet-v4.env"),
                    "dataDir": dir.join("twill-ipam"),
                }),
            },
            Plugin {
                label: "reference bridge+host-local",
                binary: format!("{REF_DIR}/bridge"),
                conf: json!({
                    "cniVersion": "1.0.0", "name": "refbench", "type": "bridge",
                    "bridge": "cni1", "isGateway": true, "isDefaultGateway": true,
                    "ipMasq": true, "hairpinMode": true, "mtu": 1450,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.245.7.0/24"}]],
                        "routes": [{"dst": "10.245.0.0/16"}],
                        "dataDir": dir.join("ref-ipam"),
                    },
                }),
            },
        ],
    }
}

/// The dual-stack pair: twill over a dual-stack subnet file, the reference with two ranges
/// and a route per family (what Flannel's own CNI plugin hands host-local).
fn dual_scenario(dir: &Path) -> Scenario {
    std::fs::write(
        dir.join("subnet-dual.env"),
        "FLANNEL_NETWORK=10.246.0.0/16\nFLANNEL_SUBNET=10.246.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:246::/32\nFLANNEL_IPV6_SUBNET=fd00:246:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .expect("subnet.env");
    Scenario {
        title: "dual stack",
        plugins: [
            Plugin {
                label: "twill",
                binary: twill_binary(),
                conf: json!({
                    "cniVersion": "1.0.0", "name": "twbench6", "type": "twill",
                    "bridge": "cni2",
                    "subnetFile": dir.join("subnet-dual.env"),
                    "dataDir": dir.join("twill-ipam"),
                }),
            },
            Plugin {
                label: "reference bridge+host-local",
                binary: format!("{REF_DIR}/bridge"),
                conf: json!({
                    "cniVersion": "1.0.0", "name": "refbench6", "type": "bridge",
                    "bridge": "cni3", "isGateway": true, "isDefaultGateway": true,
                    "ipMasq": true, "hairpinMode": true, "mtu": 1450,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.247.7.0/24"}], [{"subnet": "fd00:247:7::/64"}]],
                        "routes": [{"dst": "10.247.0.0/16"}, {"dst": "fd00:247::/32"}],
                        "dataDir": dir.join("ref-ipam"),
                    },
                }),
            },
        ],
    }
}

/// (ADD p50, DEL p50, parallel ADD p50, parallel wall in s) of one plugin.
type Row = (f64, f64, f64, f64);

fn measure(
    host: &Netns,
    p: &Plugin,
    resident: &str,
    paths: &[String],
    seq: usize,
    par: usize,
) -> Row {
    // Warm-up: creates the bridge, chains, directories; the resident container stays.
    invoke(host, p, "ADD", "resident", resident);
    invoke(host, p, "ADD", "warm", &paths[0]);
    invoke(host, p, "DEL", "warm", &paths[0]);
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for i in 0..seq {
        let id = format!("seq{i}");
        adds.push(invoke(host, p, "ADD", &id, &paths[0]));
        dels.push(invoke(host, p, "DEL", &id, &paths[0]));
    }
    let wall = Instant::now();
    let par_adds: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = paths
            .iter()
            .enumerate()
            .take(par)
            .map(|(i, path)| s.spawn(move || invoke(host, p, "ADD", &format!("par{i}"), path)))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let wall = wall.elapsed();
    for (i, path) in paths.iter().enumerate().take(par) {
        invoke(host, p, "DEL", &format!("par{i}"), path);
    }
    invoke(host, p, "DEL", "resident", resident);
    let (a50, a95) = stats(adds);
    let (d50, d95) = stats(dels);
    let (pa50, _) = stats(par_adds);
    println!(
        "{:<30} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>12.2} {:>12.1}",
        p.label,
        a50,
        a95,
        d50,
        d95,
        pa50,
        wall.as_secs_f64() * 1000.0
    );
    (a50, d50, pa50, wall.as_secs_f64())
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("cni_add_del: needs root (it creates network namespaces)");
        std::process::exit(1);
    }
    for p in ["bridge", "host-local"] {
        if !Path::new(REF_DIR).join(p).exists() {
            eprintln!(
                "cni_add_del: {REF_DIR}/{p} missing: apt-get install containernetworking-plugins"
            );
            std::process::exit(1);
        }
    }
    let seq = arg("--seq", 200);
    let par = arg("--par", 50);
    let family = twill_tests::bench_arg("--family", "both");
    let prefix = "twb-cni";
    twill_testbed::sweep(prefix).expect("sweeping");
    let _cleanup = Cleanup(prefix);
    let host = Netns::create(&format!("{prefix}-host")).expect("host netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut scenarios = Vec::new();
    if family == "ipv4" || family == "both" {
        scenarios.push(ipv4_scenario(dir.path()));
    }
    if family == "dual" || family == "both" {
        scenarios.push(dual_scenario(dir.path()));
    }
    if scenarios.is_empty() {
        eprintln!("cni_add_del: --family must be ipv4, dual or both, not {family:?}");
        std::process::exit(2);
    }
    // Container namespaces are made once, outside the timed part.
    let ctrs: Vec<Netns> = (0..par.max(1))
        .map(|i| Netns::create(&format!("{prefix}-c{i}")).expect("container netns"))
        .collect();
    let paths: Vec<String> = ctrs
        .iter()
        .map(|n| n.path().display().to_string())
        .collect();
    let resident_ns = Netns::create(&format!("{prefix}-resident")).expect("container netns");
    let resident = resident_ns.path().display().to_string();

    let mut ratios = Vec::new();
    for sc in &scenarios {
        println!(
            "\nCNI ADD/DEL, {}: {seq} sequential pairs and {par} parallel ADDs, medians/p95 in ms",
            sc.title
        );
        println!(
            "{:<30} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
            "plugin", "ADD p50", "ADD p95", "DEL p50", "DEL p95", "par ADD p50", "par wall"
        );
        let t = measure(&host, &sc.plugins[0], &resident, &paths, seq, par);
        let r = measure(&host, &sc.plugins[1], &resident, &paths, seq, par);
        let line = format!(
            "ratio twill/reference ({}): ADD p50 {:.2}x, DEL p50 {:.2}x, parallel ADD p50 {:.2}x, parallel wall {:.2}x (target: ADD p50 <= 0.5x)",
            sc.title,
            t.0 / r.0,
            t.1 / r.1,
            t.2 / r.2,
            t.3 / r.3
        );
        println!("{line}");
        ratios.push(line);
    }
    if ratios.len() > 1 {
        println!("\nside by side:");
        for line in &ratios {
            println!("  {line}");
        }
    }
}

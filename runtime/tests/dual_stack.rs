//! twill-run on a dual-stack twill network: `inspect` lists both addresses, the container's
//! `/etc/hosts` names both, and containers reach each other over IPv6 right after `run -d`.
//! The image is built from Debian's busybox-static; the host is a namespace of the test's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use twill_netkit::Netns;
use twill_tests::{NsScope, in_ci, preconditions};

const RUN: &str = env!("CARGO_BIN_EXE_twill-run");

/// A twill-run store in a temp dir, run inside `host`.
struct Rt {
    dir: tempfile::TempDir,
    host: Netns,
    cni_path: String,
}

impl Rt {
    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(RUN);
        c.arg("--root")
            .arg(self.dir.path().join("store"))
            .arg("--cni-conf-dir")
            .arg(self.dir.path().join("net.d"))
            .arg("--cni-path")
            .arg(&self.cni_path)
            .args(args);
        self.host.prepare_command(&mut c).unwrap();
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "twill-run {args:?}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("store/containers")) {
            for e in rd.flatten() {
                let _ = self.run(&["rm", "-f", &e.file_name().to_string_lossy()]);
            }
        }
    }
}

/// A minimal busybox image tarball.
fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("bbroot");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static must be installed");
    for c in ["sh", "cat", "sleep", "ping", "ip"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    let tar = dir.join("busybox.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
    b.append_dir_all(".", &root).unwrap();
    b.finish().unwrap();
    tar
}

#[test]
fn inspect_and_hosts_show_both_families() {
    if !preconditions("inspect_and_hosts_show_both_families", &["ip"]) {
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        assert!(!in_ci(), "CI must install busybox-static");
        eprintln!("skipping: no /bin/busybox");
        return;
    }
    // The twill binary sits next to twill-run when the workspace is built.
    let twill = Path::new(RUN).parent().unwrap().join("twill");
    if !twill.exists() {
        assert!(
            !in_ci(),
            "the twill binary must be built (cargo test --workspace)"
        );
        eprintln!("skipping: {} not built", twill.display());
        return;
    }
    let scope = NsScope::new("rt6");
    let rt = Rt {
        dir: tempfile::tempdir().unwrap(),
        host: scope.create("host"),
        cni_path: twill.parent().unwrap().display().to_string(),
    };
    let subnet = rt.dir.path().join("subnet.env");
    std::fs::write(
        &subnet,
        "FLANNEL_NETWORK=10.31.0.0/16\nFLANNEL_SUBNET=10.31.5.1/24\nFLANNEL_IPV6_NETWORK=fd00:31::/32\nFLANNEL_IPV6_SUBNET=fd00:31:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    std::fs::create_dir_all(rt.dir.path().join("net.d")).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "tw6",
        "plugins": [{"type": "twill", "subnetFile": subnet, "dataDir": rt.dir.path().join("ipam")}],
    });
    std::fs::write(
        rt.dir.path().join("net.d/10-twill.conflist"),
        conflist.to_string(),
    )
    .unwrap();
    let tar = busybox_tar(rt.dir.path());
    rt.ok(&["import", tar.to_str().unwrap(), "busybox"]);

    rt.ok(&["run", "-d", "--name", "a", "busybox", "sleep", "100"]);
    let ia: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "a"])).unwrap();
    let ips: Vec<&str> = ia["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ips, ["10.31.5.2", "fd00:31:5::2"], "{ia}");
    let hosts = rt.ok(&["exec", "a", "cat", "/etc/hosts"]);
    assert!(
        hosts.lines().any(|l| l.starts_with("fd00:31:5::2\t")),
        "/etc/hosts names the IPv6 address: {hosts}"
    );
    rt.ok(&["run", "-d", "--name", "b", "busybox", "sleep", "100"]);
    let ping = rt.run(&["exec", "b", "ping", "-6", "-c1", "-W1", "fd00:31:5::2"]);
    assert!(
        ping.status.success(),
        "b cannot ping a over IPv6: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    rt.ok(&["rm", "-f", "a"]);
    rt.ok(&["rm", "-f", "b"]);
    let left: Vec<String> = std::fs::read_dir(rt.dir.path().join("ipam/tw6"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(left.is_empty(), "CNI DEL released both families: {left:?}");
}

/// `-p` publishes on both families, as portmap does for a dual-stack result: the port answers
/// at the host's IPv4 and at its IPv6 underlay address, from another namespace.
#[test]
fn published_ports_answer_over_ipv6_too() {
    if !preconditions("published_ports_answer_over_ipv6_too", &["ip", "ip6tables"]) {
        return;
    }
    let twill = Path::new(RUN).parent().unwrap().join("twill");
    let portmap = Path::new("/usr/lib/cni/portmap");
    if !twill.exists() || !portmap.exists() || !Path::new("/bin/busybox").exists() {
        assert!(
            !in_ci(),
            "CI builds twill and installs containernetworking-plugins and busybox-static"
        );
        eprintln!("skipping: twill, portmap or busybox missing");
        return;
    }
    let cluster = twill_testbed::Cluster::builder("twt-rt6p")
        .hosts(1)
        .build()
        .unwrap();
    let rt = Rt {
        dir: tempfile::tempdir().unwrap(),
        host: Netns::open(&cluster.host(1).name).unwrap(),
        cni_path: format!("{}:/usr/lib/cni", twill.parent().unwrap().display()),
    };
    let subnet = rt.dir.path().join("subnet.env");
    std::fs::write(
        &subnet,
        "FLANNEL_NETWORK=10.32.0.0/16\nFLANNEL_SUBNET=10.32.5.1/24\nFLANNEL_IPV6_NETWORK=fd00:32::/32\nFLANNEL_IPV6_SUBNET=fd00:32:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    std::fs::create_dir_all(rt.dir.path().join("net.d")).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "tw6p",
        "plugins": [
            {"type": "twill", "subnetFile": subnet, "dataDir": rt.dir.path().join("ipam")},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ],
    });
    std::fs::write(
        rt.dir.path().join("net.d/10-twill.conflist"),
        conflist.to_string(),
    )
    .unwrap();
    let tar = busybox_tar(rt.dir.path());
    rt.ok(&["import", tar.to_str().unwrap(), "busybox"]);
    rt.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "18086:8080",
        "busybox",
        "sh",
        "-c",
        "busybox nc -ll -p 8080 -e echo hello-over-both",
    ]);
    let ask = |addr: &str| -> String {
        let mut got = String::new();
        for _ in 0..20 {
            let mut c = Command::new("/bin/busybox");
            c.args(["nc", "-w", "2", addr, "18086"])
                .stdin(std::process::Stdio::null());
            cluster.underlay.prepare_command(&mut c).unwrap();
            got = String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned();
            if got.contains("hello-over-both") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        got
    };
    let v4 = ask(&cluster.host(1).ip.to_string());
    assert!(v4.contains("hello-over-both"), "over IPv4: {v4:?}");
    let v6 = ask(&cluster.host(1).ip6.to_string());
    assert!(v6.contains("hello-over-both"), "over IPv6: {v6:?}");
    rt.ok(&["rm", "-f", "web"]);
}

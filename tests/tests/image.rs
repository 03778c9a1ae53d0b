//! The DaemonSet's image: built offline with scripts/build-image (podman, no base image),
//! twilld started from its root file system inside a lab host with `--ip-masq` as
//! deploy/kube-twill.yml passes it, programming masquerade with the image's own `nft`; a
//! container on that host then reaches an address outside the cluster network behind the
//! host's underlay address, as on a Flannel node.
//!
//! This machine's sandbox refuses setrlimit, so `podman run` (crun) cannot start containers
//! here: the image is exported and twilld runs chrooted into its root file system, in a
//! mount namespace of its own with /proc, /sys and /dev (what a runtime gives a container),
//! inside the host's namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use twill_testbed::{Cluster, Etcd, wait_for, wait_for_subnet};
use twill_tests::podman::{output_ok, podman};
use twill_tests::{KillOnDrop, ns_exec_ok, preconditions, run};

const TAG: &str = "localhost/twill-test:image-test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn image_builds_offline_and_its_twilld_masquerades_like_flannel() {
    if !preconditions(
        "image_builds_offline_and_its_twilld_masquerades_like_flannel",
        &[
            "podman", "nft", "ip", "ping", "unshare", "chroot", "tar", "etcd",
        ],
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("storage");
    // The workspace's debug binaries (built by `cargo test --workspace` anyway).
    let mut build = Command::new(repo().join("scripts/build-image"));
    build
        .args(["--profile", "debug", "--tag", TAG, "--"])
        .arg("--root")
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(twill_tests::podman::runroot(&store))
        .arg("--tmpdir")
        .arg(store.join("tmp"))
        .args(["--storage-driver", "vfs"]);
    output_ok(&mut build, "scripts/build-image");

    // Export the image's root file system.
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let ctr = output_ok(
        podman(&store).args(["create", TAG, "--version"]),
        "podman create",
    );
    let tar = work.path().join("image.tar");
    output_ok(
        podman(&store)
            .args(["export", "-o"])
            .arg(&tar)
            .arg(ctr.trim()),
        "podman export",
    );
    output_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&rootfs),
        "extracting the image",
    );
    output_ok(podman(&store).args(["rm", ctr.trim()]), "podman rm");
    for f in [
        "twilld",
        "twill",
        "cp",
        "bin/busybox",
        "usr/sbin/nft",
        "usr/sbin/iptables",
        "usr/sbin/iptables-restore",
        "usr/sbin/ip6tables",
        "usr/sbin/ip6tables-restore",
    ] {
        assert!(rootfs.join(f).is_file(), "{f} missing in the image");
    }
    // The image's iptables runs from its own root, with the nf_tables backend.
    let version = output_ok(
        Command::new("chroot")
            .arg(&rootfs)
            .args(["/usr/sbin/iptables", "--version"]),
        "the image's iptables --version",
    );
    assert!(version.contains("nf_tables"), "{version}");
    // The manifest's init containers, run with the image's busybox: each file lands whole
    // under its name, with no temporary file left, also over a file that is being executed.
    install_like_the_init_containers(&rootfs);

    // One lab host, etcd on the underlay.
    let cluster = Cluster::builder("twt-img").hosts(1).build().unwrap();
    let etcd = Etcd::start_in(&cluster.underlay, cluster.underlay_ip(), true).unwrap();
    let accepted = wait_for(Duration::from_secs(20), || {
        etcd.put_network_config(r#"{"Network":"10.57.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .is_ok()
    });
    assert!(accepted, "etcd: {}", etcd.log_tail());
    let host = cluster.host(1);

    // A FORWARD policy of DROP, as Docker sets it: only twilld's TWILL-FWD, written with the
    // image's iptables, lets the container's traffic out below.
    output_ok(
        Command::new("ip").args([
            "netns", "exec", &host.name, "iptables", "-P", "FORWARD", "DROP",
        ]),
        "iptables -P FORWARD DROP in the lab host",
    );

    // twilld from the image, with the DaemonSet's --ip-masq; PATH inside is the image's.
    let log = std::fs::File::create(work.path().join("twilld.log")).unwrap();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && mount --rbind /dev "$0/dev" && exec chroot "$0" /twilld "$@""#)
        .arg(&rootfs)
        .args([
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--iface",
            "eth0",
            "--ip-masq",
            "--subnet-file",
            "/run/flannel/subnet.env",
        ])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    host.netns.prepare_command(&mut c).unwrap();
    let _agent = KillOnDrop(c.spawn().unwrap());
    let subnet_file = rootfs.join("run/flannel/subnet.env");
    let se = wait_for_subnet(&subnet_file, Duration::from_secs(30)).unwrap_or_else(|e| {
        panic!(
            "{e}; twilld log:\n{}",
            std::fs::read_to_string(work.path().join("twilld.log")).unwrap_or_default()
        )
    });
    assert!(se.ipmasq, "twilld --ip-masq writes FLANNEL_IPMASQ=true");
    let masq_ready = wait_for(Duration::from_secs(20), || {
        ns_exec_ok(&host.name, &["nft", "list", "table", "inet", "twill"])
    });
    assert!(
        masq_ready,
        "twilld from the image programmed no nftables table; log:\n{}",
        std::fs::read_to_string(work.path().join("twilld.log")).unwrap_or_default()
    );

    // A container on that host, attached by the image's CNI plugin (ipMasq left to twilld as
    // FLANNEL_IPMASQ=true says), pings etcd's underlay address, which has no route back to
    // the pod network: only masquerade behind the host's eth0 address gets the answer.
    let ctr_ns = cluster.extra_netns("c1").unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "twill", "type": "twill",
        "subnetFile": subnet_file,
        "dataDir": work.path().join("ipam"),
    });
    let mut add = Command::new(rootfs.join("twill"));
    add.env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "img1")
        .env("CNI_NETNS", ctr_ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    host.netns.prepare_command(&mut add).unwrap();
    let mut child = add.spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        conf.to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "CNI ADD: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ctr_name = format!("{}-c1", cluster.prefix());
    let outside = cluster.underlay_ip().to_string();
    assert!(
        ns_exec_ok(&ctr_name, &["ping", "-c1", "-W2", &outside]),
        "the container cannot reach {outside} outside the cluster network"
    );
    let rules = run(
        "ip",
        &[
            "netns", "exec", &host.name, "nft", "list", "table", "inet", "twill",
        ],
    );
    assert!(rules.contains("masquerade"), "{rules}");
    let fwd = run(
        "ip",
        &["netns", "exec", &host.name, "iptables", "-S", "TWILL-FWD"],
    );
    assert!(fwd.contains("10.57.0.0/16"), "{fwd}");
    let log = std::fs::read_to_string(work.path().join("twilld.log")).unwrap_or_default();
    assert!(!log.contains("neither iptables"), "{log}");
    output_ok(podman(&store).args(["rmi", "-f", TAG]), "podman rmi");
}

/// Runs the init containers' commands of deploy/kube-twill.yml chrooted into the image's root,
/// over a `twill` that is being executed (a CNI call during a rollout).
fn install_like_the_init_containers(rootfs: &Path) {
    let text = std::fs::read_to_string(repo().join("deploy/kube-twill.yml")).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let conf = cm["data"]["cni-conf.json"].as_str().unwrap();
    std::fs::create_dir_all(rootfs.join("etc/twill")).unwrap();
    std::fs::write(rootfs.join("etc/twill/cni-conf.json"), conf).unwrap();
    let bin = rootfs.join("opt/cni/bin");
    let netd = rootfs.join("etc/cni/net.d");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&netd).unwrap();
    // The installed plugin, running: writing to it fails ETXTBSY, a rename over it does not.
    std::fs::copy(rootfs.join("bin/busybox"), bin.join("twill")).unwrap();
    let running = KillOnDrop(
        std::os::unix::process::CommandExt::arg0(&mut Command::new(bin.join("twill")), "sleep")
            .arg("30")
            .spawn()
            .unwrap(),
    );
    let exe = format!("/proc/{}/exe", running.0.id());
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_link(&exe)
            .is_ok_and(|p| p.ends_with("opt/cni/bin/twill"))),
        "the stand-in plugin did not start"
    );
    for init in ds["spec"]["template"]["spec"]["initContainers"]
        .as_sequence()
        .unwrap()
    {
        let argv: Vec<&str> = init["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        output_ok(
            Command::new("chroot").arg(rootfs).args(&argv),
            &format!("init container {}", init["name"].as_str().unwrap_or("?")),
        );
    }
    drop(running);
    assert_eq!(
        std::fs::read(bin.join("twill")).unwrap(),
        std::fs::read(rootfs.join("twill")).unwrap(),
        "the plugin is not installed whole"
    );
    assert_eq!(
        std::fs::read_to_string(netd.join("10-twill.conflist")).unwrap(),
        conf
    );
    for dir in [&bin, &netd] {
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{}: {names:?}", dir.display());
    }
    for dir in ["opt", "etc/cni", "etc/twill"] {
        std::fs::remove_dir_all(rootfs.join(dir)).unwrap();
    }
}

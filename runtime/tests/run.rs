//! twill-run end to end: real namespaces, overlayfs, cgroups, and the real twill CNI plugin
//! on a test-bed host. The image is built from Debian's busybox-static.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use twill_netkit::Netns;
use twill_testbed::Cluster;
use twill_tests::{busybox_present, in_ci, preconditions};

mod common;

use common::{signal, stop_all};

const RUN: &str = env!("CARGO_BIN_EXE_twill-run");

struct Rt {
    dir: tempfile::TempDir,
    host: Option<Netns>,
    cni_conf: PathBuf,
    cni_path: String,
}

fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("bbroot");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static must be installed");
    for c in [
        "sh", "ls", "cat", "echo", "ps", "hostname", "sleep", "true", "ping", "ip", "ipcs",
        "ipcmk", "mount", "id", "touch", "wc", "head", "date", "ln", "grep", "nc", "dd",
        "readlink", "tr",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    let tar = dir.join("busybox.tar");
    let f = std::fs::File::create(&tar).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", &root).unwrap();
    b.finish().unwrap();
    tar
}

impl Rt {
    fn new() -> Rt {
        let dir = tempfile::tempdir().unwrap();
        let tar = busybox_tar(dir.path());
        let rt = Rt {
            cni_conf: dir.path().join("net.d"),
            dir,
            host: None,
            cni_path: String::new(),
        };
        let out = rt.run(&["import", tar.to_str().unwrap(), "busybox"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rt
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// `twill-run` on this store and CNI configuration, with `args`.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(RUN);
        c.arg("--root")
            .arg(self.root())
            .arg("--cni-conf-dir")
            .arg(&self.cni_conf);
        if !self.cni_path.is_empty() {
            c.arg("--cni-path").arg(&self.cni_path);
        }
        c.args(args);
        if let Some(h) = &self.host {
            h.prepare_command(&mut c).unwrap();
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
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
        if let Ok(rd) = std::fs::read_dir(self.root().join("containers")) {
            for e in rd.flatten() {
                let _ = self.run(&["rm", "-f", &e.file_name().to_string_lossy()]);
            }
        }
    }
}

fn no_leftovers(rt: &Rt, id_prefix: &str) {
    assert!(
        std::fs::read_dir(rt.root().join("containers"))
            .unwrap()
            .next()
            .is_none(),
        "container dirs left"
    );
    no_leftovers_of(id_prefix);
    for c in ["memory", "pids", "cpu"] {
        let d = Path::new("/sys/fs/cgroup").join(c).join("twill");
        if let Ok(rd) = std::fs::read_dir(&d) {
            assert!(
                !rd.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir())
                    && e.file_name().to_string_lossy().starts_with(id_prefix)),
                "cgroup left in {}",
                d.display()
            );
        }
    }
}

/// The directory of an image's layer `index` (lowest first), as `inspect` lists them.
fn layer_dir(rt: &Rt, image: &str, index: usize) -> PathBuf {
    let img: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", image])).unwrap();
    let diff = img["layers"][index].as_str().unwrap();
    rt.root()
        .join("layers")
        .join(diff.trim_start_matches("sha256:"))
        .join("diff")
}

/// A docker-archive of the busybox rootfs whose config exposes 8080/tcp and serves on it.
fn exposing_image(rt: &Rt) -> PathBuf {
    use twill_runtime::image::digest::Digest;
    let layer = std::fs::read(rt.dir.path().join("busybox.tar")).unwrap();
    let diff = Digest::of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "os": "linux",
        "config": {
            "ExposedPorts": {"8080/tcp": {}},
            "Cmd": ["sh", "-c", "nc -ll -p 8080 -e echo hello-from-p"]
        },
        "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]}
    }))
    .unwrap();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let layer_name = format!("{}.tar", diff.hex());
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": null, "Layers": [layer_name]}
    ]))
    .unwrap();
    let path = rt.dir.path().join("expo.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, data) in [
        (layer_name, layer),
        (config_name, config),
        ("manifest.json".to_string(), manifest),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
    path
}

/// No netns or cgroup of the container with this ID prefix is left.
fn no_leftovers_of(id_prefix: &str) {
    assert!(
        !Netns::list()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("twr-") && id_prefix.starts_with(&n[4..])),
        "netns left"
    );
}

/// What `nc IP PORT` run in `ns` reads, tried up to 20 times until it holds `want`.
fn nc_from(ns: &Netns, ip: &str, port: &str, want: &str) -> String {
    let mut got = String::new();
    for _ in 0..20 {
        let mut c = Command::new("/bin/busybox");
        c.args(["nc", "-w", "2", ip, port])
            .stdin(std::process::Stdio::null());
        ns.prepare_command(&mut c).unwrap();
        got = String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned();
        if got.contains(want) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    got
}

const TOOLS: &[&str] = &["ip"];

fn pre(name: &str) -> bool {
    preconditions(name, TOOLS) && busybox_present(name)
}

#[test]
fn namespaces_isolate_the_container() {
    if !pre("namespaces_isolate_the_container") {
        return;
    }
    let rt = Rt::new();
    let out = rt.ok(&["run", "--rm", "--net", "none", "--hostname", "box1", "busybox", "sh", "-c", "echo pid=$$; echo others=$(ps -o comm | grep -vxE 'COMMAND|sh|exe|ps|grep'); hostname; echo -; ip -o link | wc -l; cat /proc/1/cmdline | head -c 2; grep -c ' / ' /proc/mounts; cat /etc/hostname"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1", "{out}");
    // Only the shell's own processes are visible. They are filtered rather than counted: when
    // ps reads /proc the pipeline's other child may not have started, or be mid-exec (busybox
    // runs applets through /proc/self/exe, so its name is briefly "exe").
    assert_eq!(
        lines[1].trim(),
        "others=",
        "ps sees processes besides the shell's own: {out}"
    );
    assert_eq!(lines[2], "box1");
    assert_eq!(lines[4].trim(), "1", "only lo: {out}");
    assert_eq!(lines.last().unwrap().trim(), "box1");
    // Every namespace kind differs from the host's (so IPC objects, mounts, … are private).
    let kinds = ["ipc", "uts", "mnt", "net", "pid", "cgroup"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}; "))
        .collect();
    let out = rt.ok(&[
        "run", "--rm", "--net", "none", "busybox", "sh", "-c", &script,
    ]);
    for (k, inside) in kinds.iter().zip(out.lines()) {
        let host = std::fs::read_link(format!("/proc/self/ns/{k}")).unwrap();
        assert_ne!(
            inside,
            host.to_string_lossy(),
            "{k} namespace is shared with the host"
        );
    }
    // Docker's default open-files limit (within the host's hard limit).
    let nofile = rt.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "ulimit -n",
    ]);
    assert!(nofile.trim().parse::<u64>().unwrap() >= 1024, "{nofile}");
    // Masked and read-only paths.
    let out = rt.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "cat /proc/kcore | wc -c; echo 1 > /proc/sys/kernel/domainname && echo writable || echo ro",
    ]);
    assert!(out.starts_with('0') && out.contains("ro"), "{out}");
}

#[test]
fn layers_volumes_and_commit() {
    if !pre("layers_volumes_and_commit") {
        return;
    }
    let rt = Rt::new();
    let hostdir = rt.dir.path().join("hostvol");
    std::fs::create_dir_all(&hostdir).unwrap();
    let vol = format!("{}:/data", hostdir.display());
    let ro = format!("{}:/ro:ro", hostdir.display());
    let id = rt.ok(&["run", "-d", "--name", "l1", "--net", "none", "-v", &vol, "-v", &ro, "-v", "/anon", "busybox", "sh", "-c", "echo new > /newfile; echo v > /data/x; echo a > /anon/y; echo h >> /etc/hosts; touch /ro/z 2>/dev/null && echo rw || echo ro-ok; sleep 100"]);
    let id = id.trim().to_string();
    let cdir = rt.root().join("containers").join(&id);
    twill_testbed::wait_for(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(cdir.join("log"))
            .unwrap_or_default()
            .contains("-ok")
    });
    assert!(
        cdir.join("upper/newfile").exists(),
        "a file written in the container lands in upper"
    );
    for layer in std::fs::read_dir(rt.root().join("layers")).unwrap() {
        assert!(
            !layer.unwrap().path().join("diff/newfile").exists(),
            "the image is untouched"
        );
    }
    assert_eq!(std::fs::read_to_string(hostdir.join("x")).unwrap(), "v\n");
    twill_testbed::wait_for(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(cdir.join("log"))
            .unwrap_or_default()
            .contains("ro-ok")
    });
    assert!(
        std::fs::read_to_string(cdir.join("log"))
            .unwrap()
            .contains("ro-ok"),
        "the :ro volume is read-only"
    );
    let inspect: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "l1"])).unwrap();
    assert_eq!(inspect["status"], "running");
    let anon = inspect["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["target"] == "/anon")
        .unwrap()["source"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        anon.starts_with(rt.root().join("volumes").to_str().unwrap()) && anon.ends_with("/_data")
    );

    rt.ok(&["commit", "l1", "snap"]);
    let snap = rt.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "snap",
        "sh",
        "-c",
        "cat /newfile; grep -cx h /etc/hosts; ls /anon 2>/dev/null | wc -l",
    ]);
    let l: Vec<&str> = snap.lines().collect();
    assert_eq!(l[0], "new", "committed change is in the new image");
    assert_eq!(
        l[1].trim(),
        "0",
        "the init layer's /etc/hosts change is not committed: {snap}"
    );
    assert_eq!(l[2].trim(), "0", "volume contents are not committed");
    assert!(rt.ok(&["images"]).contains("snap"));

    rt.ok(&["rm", "-f", "l1"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(&anon).join("y")).unwrap(),
        "a\n",
        "volumes persist after rm"
    );
    no_leftovers(&rt, &id[..12]);
}

#[test]
fn cgroup_limits_and_exec() {
    if !pre("cgroup_limits_and_exec") {
        return;
    }
    let rt = Rt::new();
    let out = rt.run(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--memory",
        "16m",
        "busybox",
        "sh",
        "-c",
        "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "OOM kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = rt.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--pids-limit",
        "5",
        "busybox",
        "sh",
        "-c",
        // The forks happen in a subshell and PID 1 prints its errors with builtins only:
        // a pipeline here raced PID 1's own fork of `head` against the subshell's sleeps,
        // and when PID 1 lost, the shell itself exited with "can't fork".
        "(for i in 1 2 3 4 5 6 7 8; do sleep 5 & done) 2>/tmp/err; while read -r l; do echo \"$l\"; done </tmp/err; true",
    ]);
    assert!(
        out.to_lowercase().contains("fork") || out.contains("resource"),
        "fork must fail: {out:?}"
    );

    let id = rt
        .ok(&[
            "run", "-d", "--name", "e1", "--net", "none", "--cpus", "0.5", "busybox", "sleep",
            "100",
        ])
        .trim()
        .to_string();
    let ps = rt.ok(&["exec", "e1", "ps", "-o", "pid,comm"]);
    assert!(
        ps.lines().any(|l| l.trim() == "1 sleep"),
        "exec sees the container's PID namespace: {ps}"
    );
    assert_eq!(rt.ok(&["exec", "e1", "hostname"]).trim(), &id[..12]);
    let quota = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/twill/{id}/cpu.cfs_quota_us"))
        .unwrap_or_default();
    if Path::new("/sys/fs/cgroup/cpu/twill").exists() {
        assert_eq!(quota.trim(), "50000");
    }
    let out = rt.run(&["exec", "e1", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let st = rt.ok(&["stop", "-t", "1", "e1"]);
    assert_eq!(st.trim(), "e1");
    assert!(rt.ok(&["ps", "-a"]).contains("exited(137)"));
    rt.ok(&["rm", "e1"]);
    no_leftovers(&rt, &id[..12]);
}

#[test]
fn failed_start_leaves_nothing() {
    if !pre("failed_start_leaves_nothing") {
        return;
    }
    let rt = Rt::new();
    let out = rt.run(&["run", "--net", "none", "busybox", "/no/such/binary"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/no/such/binary"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_dir(rt.root().join("containers"))
            .unwrap()
            .next()
            .is_none()
    );
    let out = rt.run(&[
        "run",
        "--net",
        "bridge",
        "--network",
        "nope",
        "busybox",
        "true",
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert!(
        std::fs::read_dir(rt.root().join("containers"))
            .unwrap()
            .next()
            .is_none()
    );
    for bad in [
        vec!["run", "--memory", "lots", "busybox"],
        vec!["run", "-p", "80", "busybox"],
        vec!["run", "--net", "weird", "busybox"],
        vec!["run", "-v", "rel:path", "busybox"],
    ] {
        let out = rt.run(&bad);
        assert!(!out.status.success(), "{bad:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    let out = rt.run(&["run", "nosuchimage"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"));
}

#[test]
fn network_modes_with_the_twill_plugin() {
    if !pre("network_modes_with_the_twill_plugin") {
        return;
    }
    // The twill binary sits next to twill-run when the workspace is built (cargo test --workspace).
    let twill = Path::new(RUN).parent().unwrap().join("twill");
    if !twill.exists() {
        assert!(
            !in_ci(),
            "the twill binary must be built (cargo test --workspace builds it)"
        );
        eprintln!("skipping: {} not built", twill.display());
        return;
    }
    let cluster = Cluster::builder("twt-rtn").hosts(1).build().unwrap();
    let mut rt = Rt::new();
    std::fs::create_dir_all(&rt.cni_conf).unwrap();
    let subnet = rt.dir.path().join("subnet.env");
    std::fs::write(&subnet, "FLANNEL_NETWORK=10.30.0.0/16\nFLANNEL_SUBNET=10.30.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "twnet",
        "plugins": [
            {"type": "twill", "subnetFile": subnet, "dataDir": rt.dir.path().join("ipam")},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(rt.cni_conf.join("10-twill.conflist"), conflist.to_string()).unwrap();
    rt.cni_path = format!("{}:/usr/lib/cni", twill.parent().unwrap().display());
    rt.host = Some(Netns::open(&cluster.host(1).name).unwrap());

    let host_ip = cluster.host(1).ip.to_string();
    // On the host's underlay address only (portmap's hostIP). Before: refused.
    let on_host_ip = format!("{host_ip}:18083:8080");
    let a = rt
        .ok(&[
            "run",
            "-d",
            "--name",
            "a",
            "-p",
            "18081:8080",
            // Before: "bad host port: invalid digit found in string", and "expected
            // HOSTPORT:CTRPORT" for a container port alone.
            "-p",
            "0.0.0.0:18082:8080",
            "-p",
            "8080",
            "-p",
            &on_host_ip,
            "busybox",
            "sh",
            "-c",
            "nc -ll -p 8080 -e echo hello-from-a",
        ])
        .trim()
        .to_string();
    let b = rt
        .ok(&[
            "run",
            "-d",
            "--name",
            "b",
            "--network",
            "twnet",
            "busybox",
            "sleep",
            "100",
        ])
        .trim()
        .to_string();
    let ia: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "a"])).unwrap();
    let ip_a = ia["ips"][0].as_str().unwrap().to_string();
    assert!(ip_a.starts_with("10.30.5."), "{ia}");
    assert_eq!(ia["cni_result"]["interfaces"][2]["name"], "eth0");
    let ping = rt.run(&["exec", "b", "ping", "-c1", "-W2", &ip_a]);
    assert!(
        ping.status.success(),
        "b cannot ping a: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // The published port answers from the host's underlay address (another namespace).
    let probe = cluster.extra_netns("probe").unwrap();
    let _ = probe;
    let got = nc_from(&cluster.underlay, &host_ip, "18081", "hello-from-a");
    assert!(
        got.contains("hello-from-a"),
        "-p 18081:8080 did not answer from the underlay: {got:?}"
    );
    let got = nc_from(&cluster.underlay, &host_ip, "18082", "hello-from-a");
    assert!(
        got.contains("hello-from-a"),
        "-p 0.0.0.0:18082:8080 did not answer from the underlay: {got:?}"
    );
    let picked = ia["ports"][2]["host_port"].as_u64().unwrap_or(0);
    assert!(
        picked != 0 && ia["ports"][2]["container_port"] == 8080,
        "{ia}"
    );
    let got = nc_from(
        &cluster.underlay,
        &host_ip,
        &picked.to_string(),
        "hello-from-a",
    );
    assert!(
        got.contains("hello-from-a"),
        "-p 8080 did not answer on the host port it was given ({picked}): {got:?}"
    );

    assert_eq!(ia["ports"][3]["host_ip"], host_ip.as_str(), "{ia}");
    let got = nc_from(&cluster.underlay, &host_ip, "18083", "hello-from-a");
    assert!(
        got.contains("hello-from-a"),
        "-p {on_host_ip} did not answer on {host_ip}: {got:?}"
    );

    // -P publishes what the image exposes, on a free host port, through the same portmap.
    let archive = exposing_image(&rt);
    rt.ok(&["load", archive.to_str().unwrap(), "--name", "expo"]);
    let p = rt
        .ok(&["run", "-d", "-P", "--name", "p", "expo"])
        .trim()
        .to_string();
    let ip: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "p"])).unwrap();
    let ports = ip["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ip}");
    assert_eq!(ports[0]["container_port"], 8080);
    let host_port = ports[0]["host_port"].as_u64().unwrap().to_string();
    let got = nc_from(&cluster.underlay, &host_ip, &host_port, "hello-from-p");
    assert!(
        got.contains("hello-from-p"),
        "-P did not publish the image's 8080/tcp on {host_port}: {got:?}"
    );
    rt.ok(&["rm", "-f", "p"]);
    no_leftovers_of(&p[..12]);

    // container:ID shares a's network; host shares the host's.
    let shared = rt.ok(&[
        "run",
        "--rm",
        "--net",
        "container:a",
        "busybox",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(shared.contains(&ip_a), "{shared}");
    // --network takes the same modes as --net (before: `no CNI network "host"`).
    let host = rt.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(host.contains(&host_ip), "{host}");
    let none = rt.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ip",
        "-o",
        "link",
        "show",
    ]);
    assert!(none.contains(" lo:") && !none.contains("eth0"), "{none}");
    // `ps` shows where a container in another's network has its addresses, not a copy of
    // them (before: a's address, still shown once a stopped and the address was released).
    let d = rt
        .ok(&[
            "run",
            "-d",
            "--name",
            "d",
            "--network",
            "container:a",
            "busybox",
            "sleep",
            "100",
        ])
        .trim()
        .to_string();
    let row = |ps: &str| {
        ps.lines()
            .find(|l| l.starts_with(&d[..12]))
            .unwrap_or_default()
            .to_string()
    };
    let ps = rt.ok(&["ps"]);
    assert!(row(&ps).ends_with(" container:a"), "{ps}");
    rt.ok(&["stop", "-t", "1", "a"]);
    let ps = rt.ok(&["ps", "-a"]);
    assert!(!row(&ps).contains(&ip_a), "{ps}");
    rt.ok(&["rm", "-f", "d"]);

    rt.ok(&["rm", "-f", "a"]);
    rt.ok(&["rm", "-f", "b"]);
    let ipam: Vec<_> = std::fs::read_dir(rt.dir.path().join("ipam/twnet"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
        .collect();
    assert!(ipam.is_empty(), "CNI DEL released the addresses");
    no_leftovers(&rt, &a[..12]);
    no_leftovers(&rt, &b[..12]);
    rt.host = None;
    drop(rt);
}

#[test]
fn env_without_a_value_and_import_from_stdin_as_docker() {
    if !pre("env_without_a_value_and_import_from_stdin_as_docker") {
        return;
    }
    let rt = Rt::new();
    // Before: `-e FOO` alone was dropped, whatever FOO was in the caller's environment.
    let out = rt
        .command(&[
            "run",
            "--rm",
            "--net",
            "none",
            "-e",
            "FOO",
            "-e",
            "TWILL_TEST_UNSET",
            "busybox",
            "sh",
            "-c",
            "echo \"foo=$FOO unset=${TWILL_TEST_UNSET-none}\"",
        ])
        .env("FOO", "x")
        .env_remove("TWILL_TEST_UNSET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "foo=x unset=none\n");
    // Before: `-: /: no such file or directory`.
    let tar = std::fs::File::open(rt.dir.path().join("busybox.tar")).unwrap();
    let out = rt
        .command(&["import", "-", "fromstdin"])
        .stdin(tar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rt.ok(&["images"]).contains("fromstdin"));
    let staged: Vec<_> = std::fs::read_dir(rt.root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("stdin-"))
        .collect();
    assert!(staged.is_empty(), "the copy of stdin was left: {staged:?}");
    // Before: `/nonexistent/x.tar: /: no such file or directory`.
    let out = rt.run(&["import", "/nonexistent/x.tar", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("/nonexistent/x.tar: no such archive: the file does not exist"),
        "{err}"
    );
}

#[test]
fn userns_maps_root_to_an_unprivileged_range() {
    if !pre("userns_maps_root_to_an_unprivileged_range") {
        return;
    }
    let rt = Rt::new();
    // Root inside, the range outside; the image looks root-owned and root can write to it.
    let out = rt.ok(&[
        "run", "--rm", "--net", "none", "--userns", "busybox", "sh", "-c",
        "id -u; cat /proc/self/uid_map; ls -ln /bin/busybox; echo x > /etc/made-inside && ls -ln /etc/made-inside; hostname",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    // The hostname defaults to the ID's first 12 digits: what the leftover check looks for.
    let rm_id = lines.get(4).copied().unwrap_or_default().to_string();
    assert_eq!(rm_id.len(), 12, "{out}");
    assert_eq!(lines[0], "0", "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"],
        "{out}"
    );
    let owner = |l: &str| {
        l.split_whitespace()
            .skip(2)
            .take(2)
            .collect::<Vec<_>>()
            .join(":")
    };
    assert_eq!(
        owner(lines[2]),
        "0:0",
        "image files are root's inside: {out}"
    );
    assert_eq!(
        owner(lines[3]),
        "0:0",
        "files written inside are root's: {out}"
    );

    // A custom range; the host sees the container's processes and files as that range.
    let id = rt.ok(&[
        "run",
        "-d",
        "--net",
        "none",
        "--userns=300000:1000",
        "busybox",
        "sh",
        "-c",
        "touch /root/mine; sleep 100",
    ]);
    let id = id.trim().to_string();
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", &id])).unwrap();
    assert_eq!(st["userns"], "300000:1000");
    let pid = st["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some("300000"),
        "{uid_line}"
    );
    let upper = rt
        .root()
        .join("containers")
        .join(&id)
        .join("upper/root/mine");
    assert!(twill_testbed::wait_for(
        std::time::Duration::from_secs(5),
        || upper.exists()
    ));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&upper).unwrap().uid(), 300000);
    assert_eq!(
        std::fs::metadata(layer_dir(&rt, "busybox", 0).join("bin/busybox"))
            .unwrap()
            .uid(),
        0,
        "the image on disk is untouched"
    );
    // exec joins the user namespace too.
    let out = rt.ok(&["exec", &id, "sh", "-c", "id -u; cat /proc/self/uid_map"]);
    assert!(out.starts_with("0\n") && out.contains("300000"), "{out}");
    // commit stores the file as the container saw it: root's.
    rt.ok(&["stop", &id]);
    rt.ok(&["commit", &id, "userns-img"]);
    let layer = layer_dir(&rt, "userns-img", 1).join("root/mine");
    assert_eq!(std::fs::metadata(&layer).unwrap().uid(), 0);
    rt.ok(&["rm", &id]);

    // Bad ranges are refused with a clear message.
    let out = rt.run(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--userns=0:10",
        "busybox",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HOSTID 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // By ID: other runtimes on this machine may have containers of their own.
    no_leftovers(&rt, &rm_id);
    no_leftovers(&rt, &id[..12]);
}

#[test]
fn a_user_is_told_twill_run_needs_root() {
    use std::os::unix::process::CommandExt;
    // Becoming nobody takes root; as a user the plain command shows the same.
    let mut c = std::process::Command::new(RUN);
    if nix::unistd::geteuid().is_root() {
        c.uid(65534).gid(65534);
    }
    let out = c
        .args(["--root", "/nonexistent/twill-user-test", "ps"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().next(),
        Some(
            "twill-run: twill-run needs root (it creates namespaces, mounts and cgroups); run it with sudo"
        )
    );
}

/// A CNI plugin that only logs: `$dir/log` gets "COMMAND ID" per call; ADD waits while
/// `$dir/slow` exists (after writing its PID to `$dir/adding`, and with `$dir/forks` after
/// starting a `sleep 3131` of its own whose PID goes to `$dir/child`); with `$dir/daemon`,
/// ADD leaves a `sleep 3232` running (its PID in `$dir/daemon.pid`) as a plugin that starts
/// a daemon does. DEL fails while `$dir/faildel` exists, and once when `$dir/faildel-once`
/// does; it hangs while `$dir/slowdel` exists (`sleep 3030`). Returns the conf dir's network
/// and the plugin's directory.
fn logging_plugin(rt: &mut Rt) -> PathBuf {
    let dir = rt.dir.path().join("fakecni");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let script = format!(
        r#"#!/bin/sh
cat > /dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID" >> {d}/log
case "$CNI_COMMAND" in
ADD)
    if [ -e {d}/daemon ]; then sleep 3232 > /dev/null 2>&1 & echo $! > {d}/daemon.pid; fi
    if [ -e {d}/slow ]; then
        if [ -e {d}/forks ]; then sleep 3131 > /dev/null 2>&1 & echo $! > {d}/child; fi
        echo $$ > {d}/adding; exec sleep 30
    fi
    echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.31.0.5/24"}}]}}' ;;
DEL)
    if [ -e {d}/slowdel ]; then exec sleep 3030; fi
    if [ -e {d}/faildel ]; then echo '{{"code":11,"msg":"DEL refused"}}'; exit 1; fi
    if rm {d}/faildel-once 2> /dev/null; then echo '{{"code":11,"msg":"DEL refused once"}}'; exit 1; fi ;;
VERSION)
    echo '{{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}}' ;;
esac
"#
    );
    let plugin = dir.join("fakenet");
    std::fs::write(&plugin, script).unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&rt.cni_conf).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "fakenet", "plugins": [{"type": "fakenet"}]
    });
    std::fs::write(rt.cni_conf.join("10-fake.conflist"), conflist.to_string()).unwrap();
    rt.cni_path = d.to_string();
    dir
}

fn id_of(rt: &Rt, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", name])).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn a_failed_network_release_is_retried_by_rm() {
    // Before: when the container exited, a failed CNI DEL was printed (to nobody, with -d)
    // and the network forgotten, so rm never ran DEL again: the address stayed reserved.
    if !pre("a_failed_network_release_is_retried_by_rm") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("faildel"), "").unwrap();
    rt.run(&["run", "--name", "relfail", "busybox", "true"]);
    let id = id_of(&rt, "relfail");
    std::fs::remove_file(fake.join("faildel")).unwrap();
    rt.ok(&["rm", "relfail"]);
    let log = std::fs::read_to_string(fake.join("log")).unwrap();
    let dels = log.lines().filter(|l| *l == format!("DEL {id}")).count();
    assert_eq!(dels, 2, "DEL at exit (refused), then at rm: {log}");
    no_leftovers_of(&id);
}

#[test]
fn rm_after_twill_run_was_killed_during_cni_add_releases_the_network() {
    // Before: the network's name and namespace were saved only after ADD returned, so a
    // twill-run killed during ADD left a state without them: rm skipped DEL and the
    // namespace (and the veth and address it holds) stayed.
    if !pre("rm_after_twill_run_was_killed_during_cni_add_releases_the_network") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("slow"), "").unwrap();
    let mut c = Command::new(RUN);
    c.arg("--root")
        .arg(rt.root())
        .arg("--cni-conf-dir")
        .arg(&rt.cni_conf)
        .arg("--cni-path")
        .arg(&rt.cni_path)
        .args(["run", "--name", "killed", "busybox", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let adding = fake.join("adding");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !adding.exists() || std::fs::read_to_string(&adding).unwrap().trim().is_empty() {
        assert!(std::time::Instant::now() < deadline, "ADD never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    // The plugin, orphaned, sleeps on: end it by its PID.
    let plugin_pid = std::fs::read_to_string(&adding).unwrap();
    let _ = Command::new("kill")
        .args(["-KILL", plugin_pid.trim()])
        .status();
    std::fs::remove_file(fake.join("slow")).unwrap();
    let id = id_of(&rt, "killed");
    rt.ok(&["rm", "-f", "killed"]);
    let log = std::fs::read_to_string(fake.join("log")).unwrap();
    assert!(log.contains(&format!("DEL {id}")), "rm ran DEL: {log}");
    no_leftovers_of(&id);
}

#[test]
fn capabilities_follow_docker_root_gets_the_default_set_a_user_none() {
    // Before: every process got Docker's default set as inheritable too (CVE-2022-24769),
    // and the permitted set was never lowered (its capset came first and failed unseen).
    if !pre("capabilities_follow_docker_root_gets_the_default_set_a_user_none") {
        return;
    }
    let rt = Rt::new();
    let caps = |user: &str| {
        let mut args = vec!["run", "--rm", "--net", "none"];
        if !user.is_empty() {
            args.extend(["--user", user]);
        }
        args.extend(["busybox", "grep", "^Cap", "/proc/self/status"]);
        rt.ok(&args)
    };
    // chown, dac_override, fowner, fsetid, kill, setgid, setuid, setpcap, net_bind_service,
    // net_raw, sys_chroot, mknod, audit_write, setfcap.
    let docker = "00000000a80425fb";
    let root = caps("");
    for want in [
        "CapInh:\t0000000000000000".to_string(),
        format!("CapPrm:\t{docker}"),
        format!("CapEff:\t{docker}"),
        format!("CapBnd:\t{docker}"),
    ] {
        assert!(root.contains(&want), "root, {want}:\n{root}");
    }
    let user = caps("1000:1000");
    for want in [
        "CapInh:\t0000000000000000".to_string(),
        "CapPrm:\t0000000000000000".to_string(),
        "CapEff:\t0000000000000000".to_string(),
        format!("CapBnd:\t{docker}"),
    ] {
        assert!(user.contains(&want), "user 1000, {want}:\n{user}");
    }
}

#[test]
fn a_volume_under_an_image_link_stays_inside_the_container() {
    // Before: the volume's target was joined to the root without resolving the image's
    // links, so `/lnk -> /<host dir>` made twill-run create the host directory, bind the
    // volume there (lost at pivot_root) and run the container without it.
    if !pre("a_volume_under_an_image_link_stays_inside_the_container") {
        return;
    }
    let rt = Rt::new();
    let host_target = rt.dir.path().join("host-target");
    let root = rt.dir.path().join("bbroot");
    std::os::unix::fs::symlink(&host_target, root.join("lnk")).unwrap();
    let tar = rt.dir.path().join("lnk.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", &root).unwrap();
    b.finish().unwrap();
    rt.ok(&["import", tar.to_str().unwrap(), "lnkimg"]);
    let vol = rt.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("marker"), "in the volume\n").unwrap();
    let spec = format!("{}:/lnk/sub", vol.display());
    let out = rt.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "-v",
        &spec,
        "lnkimg",
        "cat",
        "/lnk/sub/marker",
    ]);
    assert_eq!(out, "in the volume\n");
    assert!(
        !host_target.exists(),
        "{} was made on the host",
        host_target.display()
    );
}

#[test]
fn a_reused_pid_is_never_signalled_or_joined() {
    // Before: a container that exited while nobody watched (its monitor killed, a reboot)
    // kept `running` and its PID in the state; once the PID was reused, rm -f and stop
    // signalled the unrelated process and exec joined its namespaces.
    if !pre("a_reused_pid_is_never_signalled_or_joined") {
        return;
    }
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "reuse", "--net", "none", "busybox", "sleep", "1000",
    ]);
    let id = id_of(&rt, "reuse");
    let state_file = rt.root().join("containers").join(&id).join("state.json");
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rt.ok(&["inspect", "reuse"]).contains("\"running\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the exit was never recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A host process now holds the PID the state names, and nothing watches.
    let mut other = Command::new("sleep").arg("100").spawn().unwrap();
    st["status"] = serde_json::json!("running");
    st["pid"] = serde_json::json!(other.id());
    st["monitor_pid"] = serde_json::json!(other.id());
    std::fs::write(&state_file, st.to_string()).unwrap();

    let out = rt.run(&["exec", "reuse", "true"]);
    assert!(
        !out.status.success(),
        "exec joined another process's namespaces"
    );
    // Nor does another container join its network through the stale PID.
    let out = rt.run(&["run", "--rm", "--net", "container:reuse", "busybox", "true"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not running"),
        "--net container: joined another process's network: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.ok(&["rm", "-f", "reuse"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let still = other.try_wait().unwrap().is_none();
    let _ = other.kill();
    let _ = other.wait();
    assert!(still, "rm -f signalled an unrelated process");
}

#[test]
fn anonymous_volumes_go_with_rm_dash_v_and_with_dash_dash_rm() {
    // Before: every anonymous volume stayed for good (postgres's VOLUME with --rm, a failed
    // start), and there was no rm -v.
    if !pre("anonymous_volumes_go_with_rm_dash_v_and_with_dash_dash_rm") {
        return;
    }
    let rt = Rt::new();
    let volumes = || -> usize {
        std::fs::read_dir(rt.root().join("volumes"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    rt.ok(&[
        "run", "--rm", "--net", "none", "-v", "/data", "busybox", "true",
    ]);
    assert_eq!(volumes(), 0, "--rm took its anonymous volume");
    for (flags, left) in [(&["-f"][..], 1), (&["-f", "-v"], 1)] {
        rt.ok(&[
            "run", "-d", "--name", "vol", "--net", "none", "-v", "/data", "busybox", "sleep", "100",
        ]);
        assert_eq!(volumes(), left + usize::from(flags.len() == 2));
        let mut args = vec!["rm"];
        args.extend_from_slice(flags);
        args.push("vol");
        rt.ok(&args);
        assert_eq!(volumes(), left, "after rm {flags:?}");
    }
}

#[test]
fn rm_dash_f_and_stop_of_a_dash_dash_rm_container_succeed() {
    // Before: the monitor of a `--rm` container removed it while `rm -f` (or `stop`) waited
    // for the exit to be recorded, and they failed with "no such container".
    if !pre("rm_dash_f_and_stop_of_a_dash_dash_rm_container_succeed") {
        return;
    }
    let rt = Rt::new();
    for cmd in [&["rm", "-f"][..], &["stop", "-t", "0"]] {
        let id = rt
            .ok(&[
                "run", "-d", "--rm", "--net", "none", "-v", "/data", "busybox", "sleep", "100",
            ])
            .trim()
            .to_string();
        let mut args = cmd.to_vec();
        args.push(&id);
        let out = rt.run(&args);
        assert!(
            out.status.success(),
            "{cmd:?} of a --rm container: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        twill_testbed::wait_for(std::time::Duration::from_secs(10), || {
            std::fs::read_dir(rt.root().join("containers")).is_ok_and(|mut d| d.next().is_none())
        });
        no_leftovers(&rt, &id[..12]);
        assert!(!rt.ok(&["ps", "-a"]).contains(&id[..12]), "{cmd:?}");
    }
}

#[test]
fn signals_to_a_foreground_run_reach_the_container() {
    // Before: `kill`/`timeout`/a service manager's SIGTERM killed twill-run itself; the
    // container kept running with nobody to record its exit or release its cgroup.
    if !pre("signals_to_a_foreground_run_reach_the_container") {
        return;
    }
    use std::io::BufRead;
    let rt = Rt::new();
    let mut child = Command::new(RUN)
        .arg("--root")
        .arg(rt.root())
        .args([
            "run",
            "--name",
            "sig",
            "--net",
            "none",
            "busybox",
            "sh",
            "-c",
            "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // twill-run catches SIGTERM once its container runs: wait for that (SigCgt in
    // /proc/PID/status), not for a fixed while, which a loaded machine may outlast.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !common::catches(child.id(), libc::SIGTERM) {
        assert!(
            std::time::Instant::now() < deadline,
            "twill-run never caught SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = common::wait_or_kill(
        &mut child,
        std::time::Duration::from_secs(10),
        "twill-run did not end after SIGTERM",
    );
    assert_eq!(
        status.code(),
        Some(7),
        "the container's exit code, not twill-run's death: {status:?}"
    );
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "sig"])).unwrap();
    assert_eq!(st["status"], "exited", "{st}");
    assert_eq!(st["exit_code"], 7, "{st}");
}

#[test]
fn a_command_that_cannot_run_exits_126_or_127_as_docker() {
    // Before: `run` exited 125 (twill-run's own failure) for both, and exec 127 for both;
    // scripts test for 127 "not found" and 126 "not executable".
    if !pre("a_command_that_cannot_run_exits_126_or_127_as_docker") {
        return;
    }
    let rt = Rt::new();
    for (mode, cmd, want) in [
        (None, "nosuch", 127),
        (None, "/etc", 126),
        (Some("-d"), "nosuch", 127),
        (Some("-d"), "/etc", 126),
    ] {
        let mut args = vec!["run", "--net", "none"];
        args.extend(mode);
        args.extend(["busybox", cmd]);
        let out = rt.run(&args);
        assert_eq!(
            out.status.code(),
            Some(want),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains(cmd));
        assert!(
            std::fs::read_dir(rt.root().join("containers"))
                .unwrap()
                .next()
                .is_none(),
            "{args:?} left a container"
        );
    }
    let out = rt.run(&[
        "run",
        "--net",
        "none",
        "--user",
        "nobody-here",
        "busybox",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125), "twill-run's own failure");
    rt.ok(&[
        "run", "-d", "--name", "x", "--net", "none", "busybox", "sleep", "100",
    ]);
    for (cmd, want) in [("nosuch", 127), ("/etc", 126)] {
        let out = rt.run(&["exec", "x", cmd]);
        assert_eq!(out.status.code(), Some(want), "exec {cmd}");
    }
}

#[test]
fn memory_sizes_read_as_docker_reads_them() {
    // Before: `--memory 64mb` / `512MiB` / `1.5g` were refused, and a huge size panicked
    // with "attempt to multiply with overflow".
    if !pre("memory_sizes_read_as_docker_reads_them") {
        return;
    }
    let rt = Rt::new();
    for (size, want) in [
        ("64mb", 64u64 << 20),
        ("512MiB", 512 << 20),
        ("1.5g", 3 << 29),
        ("100000k", 100_000 << 10),
        ("16777216", 16 << 20),
    ] {
        let name = format!("m{want}");
        rt.ok(&[
            "run", "-d", "--name", &name, "--net", "none", "--memory", size, "busybox", "sleep",
            "100",
        ]);
        let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", &name])).unwrap();
        assert_eq!(st["limits"]["memory_bytes"], want, "--memory {size}");
        rt.ok(&["rm", "-f", &name]);
    }
    for bad in [
        "99999999999g",
        "18446744073709551615",
        "lots",
        "12x",
        "m",
        "1..2g",
    ] {
        let out = rt.run(&[
            "run", "--rm", "--net", "none", "--memory", bad, "busybox", "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "--memory {bad}: {err}");
        assert!(
            err.contains("--memory") && !err.contains("panicked"),
            "{err}"
        );
    }
}

#[test]
fn a_bad_volume_after_an_anonymous_one_leaves_no_volume() {
    // Before: `-v /data -v rel:path` made /data's volume, then failed on the second -v and
    // left the volume behind, listed by no container.
    if !pre("a_bad_volume_after_an_anonymous_one_leaves_no_volume") {
        return;
    }
    let rt = Rt::new();
    for bad in ["rel:path", "/nonexistent-host-dir-twill:/x", "a:b:c:d"] {
        let out = rt.run(&[
            "run", "--rm", "--net", "none", "-v", "/data", "-v", bad, "busybox", "true",
        ]);
        assert_eq!(out.status.code(), Some(125), "-v {bad}");
        assert_eq!(
            std::fs::read_dir(rt.root().join("volumes"))
                .unwrap()
                .count(),
            0,
            "-v {bad} left a volume"
        );
        assert!(
            std::fs::read_dir(rt.root().join("containers"))
                .unwrap()
                .next()
                .is_none()
        );
    }
}

#[test]
fn a_dash_dash_rm_container_whose_network_release_fails_is_kept_for_rm() {
    // Before: `run --rm` removed the state even when CNI DEL failed, so nothing could ever
    // release the address, and twill-run exited 125 instead of with the command's code.
    if !pre("a_dash_dash_rm_container_whose_network_release_fails_is_kept_for_rm") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("faildel"), "").unwrap();
    let out = rt.run(&[
        "run", "--rm", "--name", "keep", "-v", "/data", "busybox", "sh", "-c", "exit 3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "the command's exit code: {err}");
    assert!(err.contains("rm tries again"), "{err}");
    assert!(!err.contains("network: network:"), "said once: {err}");
    let id = id_of(&rt, "keep");
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "keep"])).unwrap();
    assert_eq!(st["status"], "exited");
    assert_eq!(
        st["network_name"], "fakenet",
        "the network to release is recorded"
    );
    std::fs::remove_file(fake.join("faildel")).unwrap();
    rt.ok(&["rm", "keep"]);
    let log = std::fs::read_to_string(fake.join("log")).unwrap();
    let dels = log.lines().filter(|l| *l == format!("DEL {id}")).count();
    assert_eq!(dels, 2, "DEL at exit (refused), then at rm: {log}");
    no_leftovers(&rt, &id[..12]);
    assert_eq!(
        std::fs::read_dir(rt.root().join("volumes"))
            .unwrap()
            .count(),
        0,
        "rm of a --rm container takes its anonymous volume"
    );
    // And when the release works, --rm removes everything at once, as before.
    rt.ok(&["run", "--rm", "-v", "/data", "busybox", "true"]);
    assert!(
        std::fs::read_dir(rt.root().join("containers"))
            .unwrap()
            .next()
            .is_none()
    );
    assert_eq!(
        std::fs::read_dir(rt.root().join("volumes"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn pids_limit_minus_one_or_zero_means_no_limit_as_docker() {
    // Before: `--pids-limit -1` (the documented "unlimited") was refused as an unknown
    // option, and `--pids-limit 0` wrote pids.max=0, so the container could not fork.
    if !pre("pids_limit_minus_one_or_zero_means_no_limit_as_docker") {
        return;
    }
    let rt = Rt::new();
    for n in ["-1", "0"] {
        let name = format!("p{n}");
        let out = rt.ok(&[
            "run",
            "--name",
            &name,
            "--net",
            "none",
            "--pids-limit",
            n,
            "busybox",
            "sh",
            "-c",
            "sleep 0 & wait $! && echo forked",
        ]);
        assert_eq!(out.trim(), "forked", "--pids-limit {n}");
        let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", &name])).unwrap();
        assert!(st["limits"]["pids"].is_null(), "--pids-limit {n}: {st}");
        rt.ok(&["rm", &name]);
    }
    let st = rt.ok(&[
        "run",
        "-d",
        "--name",
        "p5",
        "--net",
        "none",
        "--pids-limit",
        "5",
        "busybox",
        "sleep",
        "100",
    ]);
    assert!(!st.is_empty());
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "p5"])).unwrap();
    assert_eq!(st["limits"]["pids"], 5);
}

#[test]
fn container_names_follow_docker_rules_and_empty_means_none() {
    // Before: `--name ""` made a container named "" (blank in ps, matched by `stop ""`) and
    // names with spaces or slashes were taken as they came.
    if !pre("container_names_follow_docker_rules_and_empty_means_none") {
        return;
    }
    let rt = Rt::new();
    for bad in ["a b", "x/y", "-dash", ".dot", "tab\tname"] {
        let out = rt.run(&[
            "run",
            &format!("--name={bad}"),
            "--net",
            "none",
            "busybox",
            "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "--name {bad:?}: {err}");
        assert!(err.contains("invalid container name"), "{err}");
    }
    assert!(
        std::fs::read_dir(rt.root().join("containers"))
            .unwrap()
            .next()
            .is_none()
    );
    let id = rt
        .ok(&[
            "run", "-d", "--name", "", "--net", "none", "busybox", "sleep", "100",
        ])
        .trim()
        .to_string();
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", &id])).unwrap();
    assert_eq!(st["name"], &id[..12], "a generated name");
    rt.ok(&[
        "run",
        "-d",
        "--name",
        "Web_1.a-b",
        "--net",
        "none",
        "busybox",
        "sleep",
        "100",
    ]);
    rt.ok(&["rm", "-f", "Web_1.a-b"]);
}

#[test]
fn ps_rm_and_stop_take_docker_s_options_and_several_containers() {
    // Before: `ps -a` / `ps -q` were unknown options (ps listed every container), and `rm`
    // and `stop` took one container, so `rm -f $(twill-run ps -aq)` failed.
    if !pre("ps_rm_and_stop_take_docker_s_options_and_several_containers") {
        return;
    }
    let rt = Rt::new();
    for n in ["r1", "r2"] {
        rt.ok(&[
            "run", "-d", "--name", n, "--net", "none", "busybox", "sleep", "100",
        ]);
    }
    rt.ok(&["run", "--name", "done", "--net", "none", "busybox", "true"]);
    let ids: Vec<String> = ["r1", "r2", "done"]
        .iter()
        .map(|n| id_of(&rt, n)[..12].to_string())
        .collect();
    let ps = rt.ok(&["ps"]);
    assert!(ps.contains("r1") && ps.contains("r2"), "{ps}");
    assert!(
        !ps.contains("done"),
        "ps lists running containers only: {ps}"
    );
    assert!(rt.ok(&["ps", "-a"]).contains("done"));
    let mut all: Vec<String> = rt.ok(&["ps", "-aq"]).lines().map(String::from).collect();
    all.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(all, want, "ps -aq: the short IDs");
    assert_eq!(rt.ok(&["ps", "-q"]).lines().count(), 2);

    let out = rt.ok(&["stop", "-t", "0", "r1", "r2"]);
    assert_eq!(out, "r1\nr2\n");
    assert_eq!(rt.ok(&["ps", "-q"]), "");
    rt.ok(&[
        "run", "-d", "--name", "r3", "--net", "none", "busybox", "sleep", "100",
    ]);
    // One that does not exist is reported; the others are still removed.
    let mut args = vec!["rm", "-f", "nosuch"];
    let all = rt.ok(&["ps", "-aq"]);
    args.extend(all.lines());
    let out = rt.run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("nosuch"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    assert_eq!(rt.ok(&["ps", "-aq"]), "", "every container was removed");
}

#[test]
fn a_name_is_checked_and_taken_under_one_lock() {
    // Before: the check that a name is free and the first save of the new container were
    // not under one lock, so two `run --name X` at the same time could both take X. With the
    // store's names lock held here, a run must wait before it creates anything.
    if !pre("a_name_is_checked_and_taken_under_one_lock") {
        return;
    }
    let rt = Rt::new();
    let lock_path = rt.root().join("names.lock");
    let held = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let held = nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let mut run = Command::new(RUN)
        .arg("--root")
        .arg(rt.root())
        .args([
            "run", "-d", "--name", "once", "--net", "none", "busybox", "sleep", "100",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let made = std::fs::read_dir(rt.root().join("containers"))
        .unwrap()
        .count();
    let waiting = run.try_wait().unwrap().is_none();
    drop(held);
    let out = run.wait_with_output().unwrap();
    assert_eq!(
        (made, waiting),
        (0, true),
        "a run made its container while the names lock was held"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = rt.run(&[
        "run", "-d", "--name", "once", "--net", "none", "busybox", "true",
    ]);
    assert_eq!(again.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in use"));
}

#[test]
fn a_signal_before_the_proxy_is_in_place_is_held_and_passed_on() {
    // Before: a foreground run caught SIGTERM only once its proxy was installed, after the
    // container had started; a SIGTERM earlier (while the container was made) killed
    // twill-run and left the container running with its cgroup (and network) held and
    // nobody to record its exit. The test seam TWILL_RUN_TEST_PAUSE_BEFORE_PROXY holds
    // twill-run in that window, its container running, until the test creates the file.
    // Also: the container's processes, `run`'s and `exec`'s, start with no signal blocked,
    // even when twill-run was given a mask.
    if !pre("a_signal_before_the_proxy_is_in_place_is_held_and_passed_on") {
        return;
    }
    use std::io::BufRead;
    let rt = Rt::new();
    let go = rt.dir.path().join("go");
    let mut cmd = Command::new(RUN);
    cmd.arg("--root")
        .arg(rt.root())
        .env("TWILL_RUN_TEST_PAUSE_BEFORE_PROXY", &go)
        .args([
            "run",
            "--rm",
            "--name",
            "early",
            "--net",
            "none",
            "busybox",
            "sh",
            "-c",
            "trap 'exit 7' TERM; grep SigBlk /proc/1/status; echo ready; \
             while true; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped());
    let mut child = common::with_blocked_signals(&mut cmd).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        lines.push(line);
    }
    // The container prints before twill-run records it running (it saves the state once
    // its process has started): under load `ps` may not list it yet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let id = loop {
        let id = rt.ok(&["ps", "-q"]).trim().to_string();
        if !id.is_empty() || std::time::Instant::now() > deadline {
            break id;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(id.len(), 12, "the running container's short ID: {id:?}");
    // exec, given the same mask, must not pass it on either.
    let mut exec = Command::new(RUN);
    exec.arg("--root").arg(rt.root()).args([
        "exec",
        "early",
        "grep",
        "SigBlk",
        "/proc/self/status",
    ]);
    let exec_out = common::with_blocked_signals(&mut exec).output().unwrap();
    // Still in the window: the proxy is not installed, the signal must be held.
    // SAFETY: kill(2) on the PID of our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::write(&go, "").unwrap();
    let status = common::wait_or_kill(
        &mut child,
        std::time::Duration::from_secs(20),
        "twill-run did not end after the held SIGTERM was passed on",
    );
    assert_eq!(
        status.code(),
        Some(7),
        "the container's exit code, not twill-run's death by the early SIGTERM: {status:?}"
    );
    assert_eq!(lines[1], "ready\n");
    assert_eq!(
        lines[0], "SigBlk:\t0000000000000000\n",
        "the container's PID 1 starts with no signal blocked"
    );
    assert_eq!(
        String::from_utf8_lossy(&exec_out.stdout),
        "SigBlk:\t0000000000000000\n",
        "an exec'd process starts with no signal blocked: {}",
        String::from_utf8_lossy(&exec_out.stderr)
    );
    // --rm: nothing of the container is left (directory, cgroups, netns).
    no_leftovers(&rt, &id);
    assert_eq!(rt.ok(&["ps", "-aq"]), "");
}

#[test]
fn exec_passes_signals_on_to_its_process_and_exits_with_its_status() {
    // Before: a SIGTERM to `twill-run exec` (`timeout`, `kill`, a service manager) killed
    // exec itself; the process it ran went on in the container, and exec's status said exec
    // died of a signal instead of how its process ended. As runc's exec, it is passed on.
    if !pre("exec_passes_signals_on_to_its_process_and_exits_with_its_status") {
        return;
    }
    use std::io::BufRead;
    use std::process::Stdio;
    let within = std::time::Duration::from_secs(10);
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "ex", "--net", "none", "busybox", "sleep", "1000",
    ]);
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "ex"])).unwrap();
    let init = st["pid"].as_i64().unwrap() as i32;

    // Killed by it: 128+15, and the process is gone.
    let mut exec = rt
        .command(&["exec", "ex", "sleep", "4343"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sleeper = common::wait_for_process(&["sleep", "4343"], within);
    common::sigterm_once_caught(&exec);
    let status = common::wait_or_kill(&mut exec, within, "exec did not end after SIGTERM");
    assert_eq!(
        status.code(),
        Some(143),
        "the exec'd process's death by SIGTERM, not exec's own: {status:?}"
    );
    assert!(
        !common::runs(sleeper, &["sleep", "4343"]),
        "the exec'd process still runs after its exec was sent SIGTERM"
    );

    // Handled by it: its own exit code.
    let mut exec = rt
        .command(&[
            "exec",
            "ex",
            "sh",
            "-c",
            "trap 'exit 9' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(exec.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    common::sigterm_once_caught(&exec);
    let status = common::wait_or_kill(&mut exec, within, "exec did not end after SIGTERM");
    assert_eq!(status.code(), Some(9), "the trap's exit code: {status:?}");

    // The container's PID 1 got none of it.
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "ex"])).unwrap();
    assert_eq!(st["status"], "running", "{st}");
    assert!(
        common::runs(init, &["sleep", "1000"]),
        "PID 1 was signalled"
    );
    rt.ok(&["exec", "ex", "true"]);
}

/// A process the fake plugin started and wrote the PID of to a file (`logging_plugin`),
/// killed on drop if it still runs `argv`: a twill-run that fails a test may leave it behind.
struct PluginProcess {
    pid_file: PathBuf,
    argv: &'static [&'static str],
}

/// The slow plugin itself, once its ADD waits (`exec sleep 30`).
fn slow_plugin(fake: &Path) -> PluginProcess {
    PluginProcess {
        pid_file: fake.join("adding"),
        argv: &["sleep", "30"],
    }
}

impl PluginProcess {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn runs(&self) -> bool {
        self.pid().is_some_and(|p| common::runs(p, self.argv))
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.pid().filter(|p| common::runs(*p, self.argv)) {
            // SAFETY: kill(2) on the PID of a process this test had started, checked above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// After a start that gave up on the slow plugin: the plugin was killed, ADD was followed by
/// one DEL, and nothing of the container is left. Returns the container's ID.
fn gave_up_and_undone(rt: &Rt, fake: &Path, plugin: &PluginProcess) -> String {
    let log = std::fs::read_to_string(fake.join("log")).unwrap();
    let id = log
        .lines()
        .find_map(|l| l.strip_prefix("ADD "))
        .unwrap_or_else(|| panic!("no ADD: {log}"))
        .to_string();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [format!("ADD {id}"), format!("DEL {id}")],
        "one ADD, then one DEL to undo it"
    );
    assert!(plugin.pid().is_some(), "the plugin wrote its PID");
    assert!(!plugin.runs(), "the plugin given up on still runs");
    no_leftovers(rt, &id[..12]);
    assert_eq!(rt.ok(&["ps", "-aq"]), "");
    id
}

#[test]
fn a_cni_plugin_that_never_answers_times_out_and_the_start_is_undone() {
    // Before: twill-run waited for a CNI plugin for ever; its signals held during the start,
    // only SIGKILL ended it, leaving the container's state, netns and cgroup for `rm -f`.
    if !pre("a_cni_plugin_that_never_answers_times_out_and_the_start_is_undone") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("slow"), "").unwrap();
    for (how, limit) in [("env", "1s"), ("flag", "1.5s")] {
        let _ = std::fs::remove_file(fake.join("log"));
        let _ = std::fs::remove_file(fake.join("adding"));
        let plugin = slow_plugin(&fake);
        let args = ["run", "--name", "hung", "busybox", "true"];
        let mut c = match how {
            "env" => {
                let mut c = rt.command(&args);
                c.env("TWILL_RUN_CNI_TIMEOUT", limit);
                c
            }
            _ => rt.command(&[&["--cni-timeout", "1500ms"][..], &args].concat()),
        };
        let t0 = std::time::Instant::now();
        let mut child = c
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = common::wait_or_kill(
            &mut child,
            std::time::Duration::from_secs(20),
            "twill-run hung on a CNI plugin that never answers",
        );
        let took = t0.elapsed();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(125), "{how}: {stderr}");
        let id = gave_up_and_undone(&rt, &fake, &plugin);
        for part in [
            "CNI ADD of container",
            &id[..12],
            "\"fakenet\"",
            &fake.join("fakenet").display().to_string(),
            &format!("did not finish within {limit}"),
            "--cni-timeout",
        ] {
            assert!(stderr.contains(part), "{how}: {part:?} not in: {stderr}");
        }
        assert!(
            took < std::time::Duration::from_secs(12),
            "{how}: the timeout, a DEL and the cleanup took {took:?}"
        );
    }
}

#[test]
fn a_sigint_or_sigterm_during_cni_add_ends_the_start_and_undoes_it() {
    // Before: the start held SIGINT and SIGTERM for the container it was making, so while a
    // CNI plugin hung, Ctrl-C or `kill` did nothing; only SIGKILL ended twill-run.
    if !pre("a_sigint_or_sigterm_during_cni_add_ends_the_start_and_undoes_it") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("slow"), "").unwrap();
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let _ = std::fs::remove_file(fake.join("log"));
        let _ = std::fs::remove_file(fake.join("adding"));
        let plugin = slow_plugin(&fake);
        // The timeout far away: the signal, not the limit, must end the start.
        let mut child = rt
            .command(&["run", "--name", "intr", "busybox", "true"])
            .env("TWILL_RUN_CNI_TIMEOUT", "10m")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while plugin.pid().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ADD never started");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = common::wait_or_kill(
            &mut child,
            std::time::Duration::from_secs(15),
            &format!("{name} did not end a start waiting for a CNI plugin"),
        );
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(128 + signal), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {name}")) && stderr.contains("CNI ADD"),
            "{name}: {stderr}"
        );
        gave_up_and_undone(&rt, &fake, &plugin);
    }
}

/// The PID of the parent of process `pid` (/proc/PID/stat's fourth field, after the
/// parenthesised command name, which may hold spaces).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_sigint_or_sigterm_to_a_detached_start_during_cni_add_ends_the_start_and_undoes_it() {
    // Before: the monitor of `run -d` held no signals while it started the container, so a
    // SIGINT or SIGTERM sent to it while a CNI plugin ran killed it: the container's state
    // and netns (and the plugin's reservation, with no DEL) were left for `rm -f`, and
    // `run -d` said only "the monitor died".
    if !pre("a_sigint_or_sigterm_to_a_detached_start_during_cni_add_ends_the_start_and_undoes_it") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("slow"), "").unwrap();
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let _ = std::fs::remove_file(fake.join("log"));
        let _ = std::fs::remove_file(fake.join("adding"));
        let plugin = slow_plugin(&fake);
        // The timeout far away: the signal, not the limit, must end the start.
        let mut child = rt
            .command(&["run", "-d", "--name", "dintr", "busybox", "true"])
            .env("TWILL_RUN_CNI_TIMEOUT", "10m")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let monitor = loop {
            // The plugin's parent is the monitor, which `run -d` (our child) forked.
            if let Some(m) = plugin.pid().and_then(parent_of)
                && parent_of(m) == Some(child.id() as i32)
            {
                break m;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ADD never started under the monitor of run -d");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        // SAFETY: kill(2) on our child's child, which waits for the plugin: not yet reaped.
        assert_eq!(unsafe { libc::kill(monitor, signal) }, 0);
        let status = common::wait_or_kill(
            &mut child,
            std::time::Duration::from_secs(15),
            &format!("{name} to the monitor did not end a detached start"),
        );
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(125), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {name}")) && stderr.contains("CNI ADD"),
            "{name}: {stderr}"
        );
        gave_up_and_undone(&rt, &fake, &plugin);
    }
    // Once the container runs, the monitor passes them on to it, as a foreground run does,
    // and records how it ended.
    std::fs::remove_file(fake.join("slow")).unwrap();
    rt.ok(&[
        "run",
        "-d",
        "--name",
        "dterm",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "dterm"])).unwrap();
    let monitor = st["monitor_pid"].as_i64().unwrap() as i32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !rt.ok(&["logs", "dterm"]).contains("ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the monitor `run -d` started for this test's container, whose
    // state (just read) says it still waits for it.
    assert_eq!(unsafe { libc::kill(monitor, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "dterm"])).unwrap();
        if st["status"] == "exited" {
            assert_eq!(st["exit_code"], 7, "the trap's exit code: {st}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM to the monitor did not reach the container: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_del_that_fails_in_a_cleanup_is_recorded_and_retried_until_it_succeeds() {
    // Before: when DEL failed after a failed start, or in `rm`, the container's state and
    // netns were removed all the same: the address the plugin had reserved stayed so, with no
    // record left to call DEL from again.
    if !pre("a_del_that_fails_in_a_cleanup_is_recorded_and_retried_until_it_succeeds") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    let dels = |id: &str| {
        std::fs::read_to_string(fake.join("log"))
            .unwrap()
            .lines()
            .filter(|l| *l == format!("DEL {id}"))
            .count()
    };
    let record = |id: &str| rt.root().join("pending-del").join(format!("{id}.json"));

    // A failed start whose DEL fails once: recorded, and the next run retries it.
    std::fs::write(fake.join("faildel-once"), "").unwrap();
    let out = rt.run(&["run", "--name", "nocmd", "busybox", "/no/such/binary"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    let log = std::fs::read_to_string(fake.join("log")).unwrap();
    let id = log
        .lines()
        .find_map(|l| l.strip_prefix("ADD "))
        .unwrap_or_else(|| panic!("no ADD: {log}"))
        .to_string();
    for part in [
        "DEL failed",
        "DEL refused once",
        "the address stays reserved",
        "twill-run will retry",
        &format!("twill-run rm {}", &id[..12]),
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
    assert!(record(&id).exists(), "no record of the failed DEL: {err}");
    assert_eq!(rt.ok(&["ps", "-aq"]), "", "the container itself is gone");
    no_leftovers_of(&id);
    rt.ok(&["run", "--rm", "--net", "none", "busybox", "true"]);
    assert_eq!(
        dels(&id),
        2,
        "DEL at the cleanup (refused), then at the next run"
    );
    assert!(
        !record(&id).exists(),
        "the record outlived the DEL that worked"
    );

    // An rm whose DEL fails: recorded; a run that retries in vain says so and goes on; `rm
    // ID` retries it again.
    std::fs::write(fake.join("faildel"), "").unwrap();
    rt.run(&["run", "--name", "keep", "-v", "/data", "busybox", "true"]);
    let id = id_of(&rt, "keep");
    let out = rt.run(&["rm", "-v", "keep"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    for part in [
        "DEL refused",
        "the address stays reserved",
        "twill-run will retry",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
    assert!(record(&id).exists(), "no record of the failed DEL: {err}");
    assert_eq!(rt.ok(&["ps", "-aq"]), "");
    assert_eq!(
        std::fs::read_dir(rt.root().join("volumes"))
            .unwrap()
            .count(),
        0,
        "rm -v whose DEL failed left the anonymous volume behind"
    );
    let out = rt.run(&["run", "--rm", "--net", "none", "busybox", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&id[..12]) && err.contains("the address stays reserved"),
        "{err}"
    );
    assert!(
        record(&id).exists(),
        "a DEL that failed again lost its record"
    );
    std::fs::remove_file(fake.join("faildel")).unwrap();
    assert_eq!(rt.ok(&["rm", &id[..12]]).trim(), &id[..12]);
    assert!(
        !record(&id).exists(),
        "the record outlived the DEL that worked"
    );
    assert_eq!(dels(&id), 4, "DEL at exit, at rm, at run, at rm ID");
    no_leftovers(&rt, &id[..12]);
}

#[test]
fn a_plugin_killed_on_timeout_takes_its_own_children_along_and_a_daemon_it_leaves_is_spared() {
    // Before: a plugin given up on was killed by its PID alone; what it had started itself
    // (an IPAM plugin it delegated to, a client it ran) went on running, orphaned.
    if !pre(
        "a_plugin_killed_on_timeout_takes_its_own_children_along_and_a_daemon_it_leaves_is_spared",
    ) {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);

    // An ADD that succeeds and leaves a process running: it is the plugin's, not ours to end.
    std::fs::write(fake.join("daemon"), "").unwrap();
    let daemon = PluginProcess {
        pid_file: fake.join("daemon.pid"),
        argv: &["sleep", "3232"],
    };
    rt.ok(&["run", "--rm", "--name", "withd", "busybox", "true"]);
    assert!(
        daemon.runs(),
        "the process a successful plugin left was killed"
    );
    drop(daemon);
    std::fs::remove_file(fake.join("daemon")).unwrap();

    // An ADD that hangs after starting a child: killed on timeout, with its child.
    std::fs::write(fake.join("slow"), "").unwrap();
    std::fs::write(fake.join("forks"), "").unwrap();
    let _ = std::fs::remove_file(fake.join("log"));
    let plugin = slow_plugin(&fake);
    let child = PluginProcess {
        pid_file: fake.join("child"),
        argv: &["sleep", "3131"],
    };
    let out = rt.run(&[
        "--cni-timeout",
        "1s",
        "run",
        "--name",
        "grp",
        "busybox",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("did not finish within 1s"), "{err}");
    assert!(child.pid().is_some(), "the plugin wrote its child's PID");
    assert!(
        !child.runs(),
        "the plugin's own child still runs after the plugin was killed on timeout"
    );
    gave_up_and_undone(&rt, &fake, &plugin);
}

/// A shell script that counts each SIGINT it gets in `/ints/NAME` and ends two seconds after
/// the first (time for more copies to come).
fn sigint_counter(name: &str) -> String {
    format!(
        "trap 'echo int >> /ints/{name}; t=1' INT; echo ready; \
         while [ -z \"$t\" ]; do sleep 0.05; done; \
         n=0; while [ $n -lt 40 ]; do sleep 0.05; n=$((n+1)); done"
    )
}

#[test]
fn a_ctrl_c_at_the_terminal_reaches_the_container_s_process_once() {
    // Before: `exec`'s command line, the process that joins the container and the exec'd
    // process share the terminal's foreground process group, so a Ctrl-C reached all three
    // from the kernel, and each proxy passed its copy on as well: the exec'd process got it
    // two or three times (a foreground run's PID 1 twice), and a program that quits at once
    // on a second Ctrl-C skipped its graceful shutdown. A SIGINT sent to twill-run alone
    // (kill(2): `kill`, `timeout`) is still passed on, once.
    //
    // Now, as with runc, the container's processes have a session of their own: the Ctrl-C
    // reaches twill-run alone, which passes it on. The copies would come within
    // microseconds, and a shell merges those that come before it runs its trap into one:
    // the proxies are stopped while the Ctrl-C is typed, so a copy that reached the command
    // directly is counted first (none must), and continued a while later, so the copy they
    // pass on comes after and is counted too.
    if !pre("a_ctrl_c_at_the_terminal_reaches_the_container_s_process_once") {
        return;
    }
    let within = std::time::Duration::from_secs(10);
    let rt = Rt::new();
    let ints = rt.dir.path().join("ints");
    std::fs::create_dir_all(&ints).unwrap();
    let volume = format!("{}:/ints", ints.display());
    rt.ok(&[
        "run", "-d", "--name", "tty", "--net", "none", "-v", &volume, "busybox", "sleep", "1000",
    ]);
    let count = |name: &str| {
        std::fs::read_to_string(ints.join(name))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let wait_for_count = |name: &str| {
        let deadline = std::time::Instant::now() + within;
        while count(name) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no SIGINT came"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    // With the proxies stopped, a copy could only come straight from the terminal. They are
    // continued before that is checked, so a failure leaves no stopped process behind.
    let continue_and_check = |proxies: &[u32], name: &str| {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let direct = count(name);
        for &pid in proxies.iter().rev() {
            signal(pid, libc::SIGCONT);
        }
        assert_eq!(
            direct, 0,
            "{name}: the Ctrl-C reached the container's process directly"
        );
    };

    // `exec`: Ctrl-C at the terminal, or SIGINT to twill-run's PID.
    for (name, ctrl_c) in [("exec-ctrl-c", true), ("exec-kill", false)] {
        let mut term = common::Terminal::open();
        let mut exec =
            term.spawn(&mut rt.command(&["exec", "tty", "sh", "-c", &sigint_counter(name)]));
        term.wait_for("ready", within);
        // Both hops pass signals on (a signal held before would be passed on whoever sent
        // it): twill-run and the process that joined the container, its one child.
        common::wait_until_caught(exec.id(), libc::SIGINT, "twill-run exec", within);
        let joined = match common::children_of(exec.id())[..] {
            [one] => one,
            ref other => panic!("twill-run exec has children {other:?}, not one"),
        };
        common::wait_until_caught(joined, libc::SIGINT, "the process in the container", within);
        if ctrl_c {
            stop_all(&[exec.id(), joined]);
            term.type_keys(b"\x03");
            continue_and_check(&[exec.id(), joined], name);
            wait_for_count(name);
        } else {
            signal(exec.id(), libc::SIGINT);
        }
        let status = common::wait_or_kill(&mut exec, within, "exec did not end after SIGINT");
        assert_eq!(status.code(), Some(0), "{name}: {}", term.output());
        assert_eq!(count(name), 1, "{name}: SIGINTs the exec'd process got");
    }

    // A foreground `run`: its PID 1 is in twill-run's process group too.
    let mut term = common::Terminal::open();
    let mut run = term.spawn(&mut rt.command(&[
        "run",
        "--rm",
        "--net",
        "none",
        "-v",
        &volume,
        "busybox",
        "sh",
        "-c",
        &sigint_counter("run-ctrl-c"),
    ]));
    term.wait_for("ready", within);
    common::wait_until_caught(run.id(), libc::SIGINT, "twill-run run", within);
    stop_all(&[run.id()]);
    term.type_keys(b"\x03");
    continue_and_check(&[run.id()], "run-ctrl-c");
    wait_for_count("run-ctrl-c");
    let status = common::wait_or_kill(&mut run, within, "run did not end after Ctrl-C");
    assert_eq!(status.code(), Some(0), "{}", term.output());
    assert_eq!(count("run-ctrl-c"), 1, "SIGINTs the container's PID 1 got");
}

/// The DEL calls the fake plugin logged for container `id`.
fn dels_of(fake: &Path, id: &str) -> usize {
    std::fs::read_to_string(fake.join("log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == format!("DEL {id}"))
        .count()
}

fn pending_record(rt: &Rt, id: &str) -> PathBuf {
    rt.root().join("pending-del").join(format!("{id}.json"))
}

#[test]
fn run_retries_a_recorded_del_now_and_then_with_a_short_timeout_and_rm_always() {
    // Before: every `run` called every recorded DEL again, first and with the full
    // --cni-timeout: a plugin whose DEL hangs cost each later run a timeout (a minute by
    // default) per plugin per record, for ever.
    if !pre("run_retries_a_recorded_del_now_and_then_with_a_short_timeout_and_rm_always") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("slowdel"), "").unwrap();
    // Its DEL hangs at its exit (the state is kept) and at rm (recorded).
    rt.run(&[
        "--cni-timeout",
        "1s",
        "run",
        "--name",
        "hang",
        "busybox",
        "true",
    ]);
    let id = id_of(&rt, "hang");
    let out = rt.run(&["--cni-timeout", "1s", "rm", "hang"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(pending_record(&rt, &id).exists(), "not recorded: {err}");
    assert_eq!(dels_of(&fake, &id), 2, "DEL at exit and at rm");

    // The next run retries it at once, giving the plugin 5 s, not --cni-timeout's minute.
    let started = std::time::Instant::now();
    let out = rt.run(&["run", "--rm", "--net", "none", "busybox", "true"]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        dels_of(&fake, &id),
        3,
        "the first run after it retried it: {err}"
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "run waited {took:?}: {err}"
    );
    for part in [
        "did not finish within 5s",
        &format!("`twill-run rm {}` gives it --cni-timeout", &id[..12]),
        "retries it in 60 s at the earliest",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }

    // The run after that leaves it alone: its back-off has a minute to go.
    let out = rt.run(&["run", "--rm", "--net", "none", "busybox", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        dels_of(&fake, &id),
        3,
        "the second run called the hung DEL again within its back-off: {err}"
    );
    assert!(!err.contains(&id[..12]), "{err}");

    // rm retries it whatever the back-off, with --cni-timeout.
    let out = rt.run(&["--cni-timeout", "1s", "rm", &id[..12]]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("did not finish within 1s"), "{err}");
    assert_eq!(dels_of(&fake, &id), 4, "rm retried it: {err}");
    std::fs::remove_file(fake.join("slowdel")).unwrap();
    assert_eq!(rt.ok(&["rm", &id[..12]]).trim(), &id[..12]);
    assert!(!pending_record(&rt, &id).exists());
    // The retries' lock goes with the record.
    assert!(!pending_record(&rt, &id).with_extension("lock").exists());
    no_leftovers_of(&id);
}

#[test]
fn rm_of_a_name_a_new_container_took_still_reports_the_old_record_s_failure() {
    // Before: `rm web` took the recorded DEL of an earlier container named web for its own
    // and kept quiet about its failure, then removed the new web: the record's error was
    // never printed.
    if !pre("rm_of_a_name_a_new_container_took_still_reports_the_old_record_s_failure") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("faildel"), "").unwrap();
    rt.run(&["run", "--name", "web", "busybox", "true"]);
    let old = id_of(&rt, "web");
    rt.run(&["rm", "web"]);
    assert!(pending_record(&rt, &old).exists());
    rt.ok(&["run", "--name", "web", "--net", "none", "busybox", "true"]);
    let new = id_of(&rt, "web");
    let out = rt.run(&["rm", "web"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the new web was removed: {err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web\n");
    assert!(
        err.contains(&format!("DEL of container {}", &old[..12])) && err.contains("failed again"),
        "the old web's DEL failed again unreported: {err:?}"
    );
    assert!(rt.ok(&["ps", "-aq"]).is_empty(), "{new} is left");
    // `rm` of the name, now nobody's, is the record's again: its failure is rm's error.
    let out = rt.run(&["rm", "web"]);
    assert_eq!(out.status.code(), Some(125));
    std::fs::remove_file(fake.join("faildel")).unwrap();
    assert_eq!(rt.ok(&["rm", "web"]).trim(), "web");
    assert!(!pending_record(&rt, &old).exists());
    no_leftovers_of(&old);
}

#[test]
fn a_record_a_crash_left_unrenamed_is_taken_when_whole_and_removed_when_not() {
    // Before: only `<id>.json` was read; a crash while a record was written (or rewritten)
    // left `<id>.json.tmp`, never looked at: a whole record's DEL was lost, and half a one
    // stayed for ever.
    if !pre("a_record_a_crash_left_unrenamed_is_taken_when_whole_and_removed_when_not") {
        return;
    }
    let mut rt = Rt::new();
    let fake = logging_plugin(&mut rt);
    std::fs::write(fake.join("faildel"), "").unwrap();
    rt.run(&["run", "--name", "crash", "busybox", "true"]);
    let id = id_of(&rt, "crash");
    rt.run(&["rm", "crash"]);
    let record = pending_record(&rt, &id);
    let dir = record.parent().unwrap().to_path_buf();
    let tmp = |name: &str| dir.join(format!("{name}.json.tmp"));
    let age = |path: &Path, secs: u64| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(secs))
            .unwrap();
    };
    // A whole record the crash left before its rename.
    std::fs::rename(&record, tmp(&id)).unwrap();
    age(&tmp(&id), 600);
    // Half a record, old; and one being written right now (young), which is left alone.
    std::fs::write(tmp("half"), "{\"container_id\": \"ha").unwrap();
    age(&tmp("half"), 600);
    std::fs::write(tmp("young"), "{").unwrap();
    std::fs::remove_file(fake.join("faildel")).unwrap();

    let out = rt.run(&["run", "--rm", "--net", "none", "busybox", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        dels_of(&fake, &id),
        3,
        "the crashed record's DEL was not retried: {err}"
    );
    assert!(!tmp(&id).exists() && !record.exists(), "{err}");
    assert!(!tmp("half").exists(), "half a record is left");
    assert!(tmp("young").exists(), "a record being written was removed");
    std::fs::remove_file(tmp("young")).unwrap();
    no_leftovers_of(&id);
}

#[test]
fn a_signal_to_the_whole_process_group_reaches_the_container_s_process_once() {
    // Before: the container's PID 1, and `exec`'s joining process and command, were in the
    // process group of `twill-run run`/`exec`, so a signal to that whole group (`kill -INT
    // -PGID`, `timeout` without --foreground, a service manager's KillMode=control-group)
    // reached them directly and was passed on by twill-run as well (a process's kill(2) is
    // always passed on): PID 1 got it twice, an exec'd command two or three times. As
    // runc's, they now have a session of their own: only twill-run gets it, and passes it
    // on once.
    //
    // The copies would come within microseconds, and a shell merges those that come before
    // it runs its trap into one: the proxies are stopped while the group is signalled, so a
    // copy that reached the command directly is counted first (none must), and continued a
    // while later, so the copy they pass on comes after and is counted too.
    if !pre("a_signal_to_the_whole_process_group_reaches_the_container_s_process_once") {
        return;
    }
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let within = std::time::Duration::from_secs(10);
    let rt = Rt::new();
    let ints = rt.dir.path().join("ints");
    std::fs::create_dir_all(&ints).unwrap();
    let volume = format!("{}:/ints", ints.display());
    rt.ok(&[
        "run", "-d", "--name", "grp", "--net", "none", "-v", &volume, "busybox", "sleep", "1000",
    ]);
    let count = |name: &str| {
        std::fs::read_to_string(ints.join(name))
            .unwrap_or_default()
            .lines()
            .count()
    };
    // Started as a shell starts a job (or `timeout` its command): leading a group of its own.
    let spawn = |args: &[&str]| {
        let mut child = rt
            .command(args)
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "{args:?}");
        child
    };
    let signal_group_of = |proxies: &[u32], name: &str| {
        stop_all(proxies);
        // SAFETY: kill(2) of the process group our child leads.
        assert_eq!(unsafe { libc::kill(-(proxies[0] as i32), libc::SIGINT) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(500));
        // Continued before the check, so a failure leaves no stopped process behind.
        let direct = count(name);
        for &pid in proxies.iter().rev() {
            signal(pid, libc::SIGCONT);
        }
        assert_eq!(
            direct, 0,
            "{name}: the group's SIGINT reached the command directly"
        );
    };

    let mut exec = spawn(&["exec", "grp", "sh", "-c", &sigint_counter("exec-group")]);
    common::wait_until_caught(exec.id(), libc::SIGINT, "twill-run exec", within);
    let joined = match common::children_of(exec.id())[..] {
        [one] => one,
        ref other => panic!("twill-run exec has children {other:?}, not one"),
    };
    common::wait_until_caught(joined, libc::SIGINT, "the process in the container", within);
    signal_group_of(&[exec.id(), joined], "exec-group");
    let status = common::wait_or_kill(&mut exec, within, "exec did not end after SIGINT");
    assert_eq!(status.code(), Some(0));
    assert_eq!(count("exec-group"), 1, "SIGINTs the exec'd process got");

    let mut run = spawn(&[
        "run",
        "--rm",
        "--net",
        "none",
        "-v",
        &volume,
        "busybox",
        "sh",
        "-c",
        &sigint_counter("run-group"),
    ]);
    common::wait_until_caught(run.id(), libc::SIGINT, "twill-run run", within);
    signal_group_of(&[run.id()], "run-group");
    let status = common::wait_or_kill(&mut run, within, "run did not end after SIGINT");
    assert_eq!(status.code(), Some(0));
    assert_eq!(count("run-group"), 1, "SIGINTs the container's PID 1 got");
}

#[test]
fn exec_takes_user_workdir_env_and_detach_as_docker_exec_does() {
    // Before: `exec` took only -i; -u, -w, -e and -d were refused as unknown options.
    if !pre("exec_takes_user_workdir_env_and_detach_as_docker_exec_does") {
        return;
    }
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "ux", "--net", "none", "-e", "KEEP=run", "-w", "/tmp", "busybox",
        "sleep", "1000",
    ]);
    rt.ok(&[
        "exec",
        "ux",
        "sh",
        "-c",
        "echo app:x:1000:1000::/home/app:/bin/sh >> /etc/passwd; \
         echo grp:x:2000: >> /etc/group; mkdir -p /home/app; busybox chown app /home/app",
    ]);
    let who = ["sh", "-c", "id -u; id -g; echo $HOME; pwd"];
    let exec = |opts: &[&str]| rt.ok(&[&["exec"], opts, &["ux"], &who[..]].concat());
    // The container's user and working directory, unless told otherwise.
    assert_eq!(exec(&[]), "0\n0\n/root\n/tmp\n");
    // Names and numbers, resolved in the container's /etc/passwd and /etc/group, as run -u.
    assert_eq!(exec(&["-u", "app"]), "1000\n1000\n/home/app\n/tmp\n");
    assert_eq!(
        exec(&["--user", "app:grp"]),
        "1000\n2000\n/home/app\n/tmp\n"
    );
    assert_eq!(exec(&["-u", "4242:7"]), "4242\n7\n/\n/tmp\n");
    assert_eq!(exec(&["-w", "/home/app"]), "0\n0\n/root\n/home/app\n");
    assert_eq!(
        exec(&["--workdir", "/", "-u", "app"]),
        "1000\n1000\n/home/app\n/\n"
    );
    // Errors say what failed on which object; a process that cannot start gives 126.
    for (opts, code, says) in [
        (&["-u", "nobody"][..], 126, "user \"nobody\""),
        (&["-u", "app:nogroup"][..], 126, "group \"nogroup\""),
        (&["-w", "/nope"][..], 126, "working directory /nope"),
        (
            &["-w", "relative"][..],
            125,
            "exec -w relative: the working directory must be an absolute path",
        ),
    ] {
        let out = rt.run(&[&["exec"], opts, &["ux", "true"]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{opts:?}: {err}");
        assert!(err.contains(says), "{opts:?}: {err}");
    }

    // -e K=V over the container's, -e K from the caller's environment (left out when unset).
    let out = rt
        .command(&[
            "exec",
            "-e",
            "A=1",
            "--env",
            "TWT_FROM_CALLER",
            "-e",
            "TWT_UNSET_HERE",
            "-e",
            "KEEP=exec",
            "ux",
            "sh",
            "-c",
            "echo $A $TWT_FROM_CALLER ${TWT_UNSET_HERE-unset} $KEEP",
        ])
        .env("TWT_FROM_CALLER", "caller")
        .env_remove("TWT_UNSET_HERE")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1 caller unset exec\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        rt.ok(&["exec", "ux", "sh", "-c", "echo $KEEP"]),
        "run\n",
        "-e of one exec stays with it"
    );

    // -d: back at once, printing nothing, the command running on.
    let started = std::time::Instant::now();
    let out = rt.run(&[
        "exec",
        "-d",
        "-u",
        "app",
        "ux",
        "sh",
        "-c",
        "sleep 2; id -u > /home/app/detached",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "exec -d waited for its command: {:?}",
        started.elapsed()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while rt.run(&["exec", "ux", "cat", "/home/app/detached"]).stdout != b"1000\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the detached command never wrote its file"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A command that cannot start is still reported, with docker's exit codes.
    let out = rt.run(&["exec", "-d", "ux", "no-such-command"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert!(
        err.contains("no-such-command") && err.contains("ux"),
        "{err}"
    );
    let out = rt.run(&["exec", "-d", "-u", "nobody", "ux", "true"]);
    assert_eq!(out.status.code(), Some(126));
}

#[test]
fn dash_t_gives_the_process_a_pty_for_exec_run_and_run_dash_d() {
    // Before: `run` and `exec` had no -t; a program that needs a terminal (a shell's
    // prompt, `top`, a password prompt) had none.
    if !pre("dash_t_gives_the_process_a_pty_for_exec_run_and_run_dash_d") {
        return;
    }
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "tt", "--net", "none", "busybox", "sleep", "1000",
    ]);
    // No terminal on this side: -t still gives one, as `docker exec -t` (its output is the
    // terminal's, lines ending in \r\n).
    let out = rt.ok(&["exec", "-t", "tt", "busybox", "tty"]);
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("\r\n"),
        "{out:?}"
    );
    let out = rt.run(&["exec", "tt", "busybox", "tty"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not a tty\n");
    // The command's exit code, and what it wrote on stderr too.
    let out = rt.run(&["exec", "--tty", "tt", "sh", "-c", "echo oops >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "oops\r\n");
    // The caller's input with -i -t must come from a terminal (see
    // dash_i_dash_t_needs_a_terminal_on_stdin_as_docker).
    // run -t: the container's PID 1 on a pty, its output copied here.
    let out = rt.ok(&[
        "run", "--rm", "-t", "--net", "none", "busybox", "busybox", "tty",
    ]);
    assert_eq!(out, "/dev/pts/0\r\n");
    // run -d -t: the pty's output goes to the log.
    rt.ok(&[
        "run",
        "-d",
        "-t",
        "--name",
        "tl",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "busybox tty; echo logged",
    ]);
    assert_eq!(rt.ok(&["logs", "-f", "tl"]), "/dev/pts/0\r\nlogged\r\n");
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "tl"])).unwrap();
    assert_eq!(st["exit_code"], 0, "{st}");
}

#[test]
fn the_command_s_stdio_is_given_to_its_user_as_runc_gives_it() {
    // Before: the pty's slave stayed root's (mode 0620), and so did the pipes and the log the
    // command writes to: run as another user, a program that opens its terminal by name
    // (`$(tty)`, `screen`) or its output as /dev/stdout or /proc/self/fd/1 got
    // "Permission denied". As runc's fixStdioPermissions, each now belongs to the user the
    // command runs as; /dev/null, and the caller's own terminal, are left alone.
    if !pre("the_command_s_stdio_is_given_to_its_user_as_runc_gives_it") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let within = std::time::Duration::from_secs(10);
    let rt = Rt::new();
    let by_name = "echo reopened > $(busybox tty) && busybox stat -c owner=%u $(busybox tty)";
    // 1000:1000, not 1000 alone: a uid with no passwd entry runs in group 0 (as Docker's),
    // which may open the pty as its group.
    let out = rt.ok(&[
        "run",
        "--rm",
        "-t",
        "--net",
        "none",
        "-u",
        "1000:1000",
        "busybox",
        "sh",
        "-c",
        by_name,
    ]);
    assert_eq!(out, "reopened\r\nowner=1000\r\n", "run -t");
    rt.ok(&[
        "run", "-d", "--name", "own", "--net", "none", "busybox", "sleep", "1000",
    ]);
    rt.ok(&[
        "exec",
        "own",
        "sh",
        "-c",
        "echo app:x:1000:1000::/:/bin/sh >> /etc/passwd",
    ]);
    let out = rt.ok(&["exec", "-t", "-u", "app", "own", "sh", "-c", by_name]);
    assert_eq!(out, "reopened\r\nowner=1000\r\n", "exec -t");
    // Without -t: twill-run's stdout, a pipe here, and the log of run -d.
    let through_proc = "echo reopened > /proc/self/fd/1";
    let out = rt.ok(&["exec", "-u", "app", "own", "sh", "-c", through_proc]);
    assert_eq!(out, "reopened\n", "exec");
    let out = rt.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "-u",
        "1000:1000",
        "busybox",
        "sh",
        "-c",
        through_proc,
    ]);
    assert_eq!(out, "reopened\n", "run");
    rt.ok(&[
        "run",
        "-d",
        "--name",
        "ownlog",
        "--net",
        "none",
        "-u",
        "1000:1000",
        "busybox",
        "sh",
        "-c",
        through_proc,
    ]);
    assert_eq!(rt.ok(&["logs", "-f", "ownlog"]), "reopened\n", "run -d");
    // The caller's terminal, the stdio of a run without -t, stays the caller's.
    let mut term = common::Terminal::open();
    let mut run = term.spawn(&mut rt.command(&[
        "run", "--rm", "--net", "none", "-u", "1000", "busybox", "echo", "done",
    ]));
    let status = common::wait_or_kill(&mut run, within, "run on a terminal did not end");
    assert!(status.success(), "{}", term.output());
    let md = std::fs::metadata(term.path()).unwrap();
    assert_eq!(md.uid(), 0, "the caller's terminal was given away");
    // The null device too (stdin of a run without -i, of exec -d).
    rt.ok(&["exec", "-d", "-u", "app", "own", "true"]);
    assert_eq!(std::fs::metadata("/dev/null").unwrap().uid(), 0);
}

#[test]
fn exec_dash_it_puts_the_terminal_in_raw_mode_and_passes_keys_and_its_size_on() {
    // Before: no -t. Now, as `docker exec -it`: the caller's terminal in raw mode while the
    // command runs (a Ctrl-C is a key for the container's terminal, which interrupts the
    // command's foreground job, not twill-run), its size given to the pty and followed when
    // it changes, the terminal restored at the end.
    if !pre("exec_dash_it_puts_the_terminal_in_raw_mode_and_passes_keys_and_its_size_on") {
        return;
    }
    let within = std::time::Duration::from_secs(10);
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "it", "--net", "none", "busybox", "sleep", "1000",
    ]);
    let mut term = common::Terminal::open();
    term.set_size(30, 100);
    let mut exec = term.spawn(&mut rt.command(&["exec", "-it", "it", "sh"]));
    let deadline = std::time::Instant::now() + within;
    while !term.is_raw() {
        assert!(
            std::time::Instant::now() < deadline,
            "the terminal never went raw: {}",
            term.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    term.type_keys(b"busybox stty size\r");
    term.wait_for("30 100", within);
    // Resized: twill-run gets SIGWINCH and resizes the pty (asked again until it has).
    term.set_size(40, 120);
    let deadline = std::time::Instant::now() + within;
    while !term.output().contains("40 120") {
        assert!(
            std::time::Instant::now() < deadline,
            "the pty never took the new size: {}",
            term.output()
        );
        term.type_keys(b"busybox stty size\r");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    term.type_keys(b"sleep 4711\r");
    common::wait_for_process(&["sleep", "4711"], within);
    term.type_keys(b"\x03");
    term.type_keys(b"echo after-$?\r");
    term.wait_for("after-130", within);
    term.type_keys(b"exit 3\r");
    let status = common::wait_or_kill(&mut exec, within, "exec -it did not end after exit");
    assert_eq!(status.code(), Some(3), "{}", term.output());
    assert!(!term.is_raw(), "the terminal was left in raw mode");

    // `run -it` the same way: the container's PID 1 on the pty, its exit code run's.
    let mut term = common::Terminal::open();
    let mut run =
        term.spawn(&mut rt.command(&["run", "--rm", "-i", "-t", "--net", "none", "busybox", "sh"]));
    term.wait_for("# ", within);
    assert!(term.is_raw(), "run -it left the terminal cooked");
    term.type_keys(b"busybox tty; exit 4\r");
    let status = common::wait_or_kill(&mut run, within, "run -it did not end after exit");
    assert_eq!(status.code(), Some(4), "{}", term.output());
    assert!(
        term.output().contains("/dev/pts/0\r\n"),
        "{}",
        term.output()
    );
    assert!(!term.is_raw(), "the terminal was left in raw mode");
}

#[test]
fn logs_dash_f_follows_until_the_main_process_ends() {
    // Before: `logs` printed what the log held and returned; no -f.
    if !pre("logs_dash_f_follows_until_the_main_process_ends") {
        return;
    }
    let rt = Rt::new();
    rt.ok(&[
        "run",
        "-d",
        "--name",
        "lf",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo one; sleep 1; echo two >&2; sleep 1; echo three",
    ]);
    let started = std::time::Instant::now();
    let out = rt.run(&["logs", "-f", "lf"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\nthree\n");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "logs -f returned before the container ended: {:?}",
        started.elapsed()
    );
    assert_eq!(rt.ok(&["logs", "--follow", "lf"]), "one\ntwo\nthree\n");

    // Ctrl-C (SIGINT) stops it sooner.
    rt.ok(&[
        "run", "-d", "--name", "long", "--net", "none", "busybox", "sleep", "1000",
    ]);
    let mut follow = rt.command(&["logs", "-f", "long"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs -f ended while its container runs"
    );
    signal(follow.id(), libc::SIGINT);
    let status = common::wait_or_kill(
        &mut follow,
        std::time::Duration::from_secs(5),
        "logs -f did not end on SIGINT",
    );
    assert!(!status.success());
}

#[test]
fn dash_t_sets_term_xterm_unless_it_is_set_as_docker() {
    // Before: `run -t` and `exec -t` left TERM unset (`TERM=`); docker and podman give a
    // process on a pty TERM=xterm unless the image or -e set TERM. As docker's, it is not
    // the container's own: an exec without -t does not get it.
    if !pre("dash_t_sets_term_xterm_unless_it_is_set_as_docker") {
        return;
    }
    let rt = Rt::new();
    let term = ["sh", "-c", "echo TERM=$TERM"];
    let run = |opts: &[&str]| {
        rt.ok(&[
            &["run", "--rm", "--net", "none"],
            opts,
            &["busybox"],
            &term[..],
        ]
        .concat())
    };
    assert_eq!(run(&["-t"]), "TERM=xterm\r\n");
    assert_eq!(run(&["-t", "-e", "TERM=vt100"]), "TERM=vt100\r\n");
    assert_eq!(run(&[]), "TERM=\n");
    rt.ok(&[
        "run", "-d", "-t", "--name", "te", "--net", "none", "busybox", "sleep", "1000",
    ]);
    let exec = |opts: &[&str]| rt.ok(&[&["exec"], opts, &["te"], &term[..]].concat());
    assert_eq!(exec(&["-t"]), "TERM=xterm\r\n");
    assert_eq!(exec(&["-t", "-e", "TERM=screen"]), "TERM=screen\r\n");
    assert_eq!(
        exec(&[]),
        "TERM=\n",
        "TERM went into the container's environment"
    );
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", "te"])).unwrap();
    assert!(!st["env"].to_string().contains("TERM"), "{st}");
}

#[test]
fn an_environment_variable_without_a_name_is_refused_as_podman_refuses_it() {
    // Before: `-e =bad` put "=bad" into the environment, and `-e ''` was dropped silently.
    if !pre("an_environment_variable_without_a_name_is_refused_as_podman_refuses_it") {
        return;
    }
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "en", "--net", "none", "busybox", "sleep", "1000",
    ]);
    for bad in ["=bad", ""] {
        for cmd in [
            &["run", "--rm", "--net", "none", "-e", bad, "busybox", "env"][..],
            &["exec", "-e", bad, "en", "env"][..],
        ] {
            let out = rt.run(cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(125), "{cmd:?}: {err}");
            assert!(
                err.contains(&format!("invalid environment variable: {bad:?}")),
                "{cmd:?}: {err}"
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{cmd:?}");
        }
    }
    // Nothing was made by the refused runs.
    let ps = rt.ok(&["ps", "-aq"]);
    assert_eq!(ps.lines().count(), 1, "{ps}");
}

#[test]
fn an_empty_user_or_group_part_is_none_as_with_runc() {
    // Before: `-u app:` failed (`group "" is not in the image's /etc/group`) and `-u :grp`
    // too ("no user"). runc's GetExecUser (podman exec -u app:) reads an empty part as none:
    // `app:` is app with its groups, `:grp` root with that group.
    if !pre("an_empty_user_or_group_part_is_none_as_with_runc") {
        return;
    }
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "eu", "--net", "none", "busybox", "sleep", "1000",
    ]);
    rt.ok(&[
        "exec",
        "eu",
        "sh",
        "-c",
        "echo root:x:0:0::/root:/bin/sh > /etc/passwd; \
         echo app:x:1000:1000::/home/app:/bin/sh >> /etc/passwd; \
         echo grp:x:2000:app > /etc/group",
    ]);
    let id = ["sh", "-c", "id -u; id -g; id -G; echo $HOME"];
    let exec = |user: &str| rt.ok(&[&["exec", "-u", user, "eu"], &id[..]].concat());
    assert_eq!(exec("app:"), "1000\n1000\n1000 2000\n/home/app\n");
    assert_eq!(exec("app:"), exec("app"));
    assert_eq!(exec(":grp"), "0\n2000\n2000\n/root\n");
    assert_eq!(exec(":"), "0\n0\n0\n/root\n");
    // run -u too (no passwd in this image: numbers only).
    let out = rt.ok(&[
        "run", "--rm", "--net", "none", "-u", "4242:", "busybox", "id", "-u",
    ]);
    assert_eq!(out, "4242\n");
}

#[test]
fn dash_i_dash_t_needs_a_terminal_on_stdin_as_docker() {
    // Before: `printf 'echo x\n' | twill-run exec -it c sh` could hang for ever: the
    // end-of-file character sent while the pty was still canonical was read as a plain key
    // once the shell had made it raw. docker refuses: "the input device is not a TTY", exit 1.
    // -t alone (output only) and -d -i -t need no terminal.
    if !pre("dash_i_dash_t_needs_a_terminal_on_stdin_as_docker") {
        return;
    }
    let within = std::time::Duration::from_secs(20);
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "nt", "--net", "none", "busybox", "sleep", "1000",
    ]);
    for cmd in [
        &["exec", "-it", "nt", "sh"][..],
        &["exec", "-i", "-t", "nt", "sh"][..],
        &["run", "--rm", "-it", "--net", "none", "busybox", "sh"][..],
    ] {
        let mut c = rt.command(cmd);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(b"echo x\n");
        }
        let status = common::wait_or_kill(&mut child, within, "exec -it on a pipe hung");
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(1), "{cmd:?}: {err}");
        assert!(
            err.contains("the input device is not a TTY"),
            "{cmd:?}: {err}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{cmd:?}");
    }
    assert_eq!(
        rt.ok(&["ps", "-aq"]).lines().count(),
        1,
        "run -it made a container"
    );
    // -t alone on a pipe: its output, as before.
    assert_eq!(rt.ok(&["exec", "-t", "nt", "echo", "out"]), "out\r\n");
    // -d -i -t: nobody's keys are read.
    rt.ok(&["exec", "-d", "-i", "-t", "nt", "true"]);
    rt.ok(&[
        "run", "-d", "-i", "-t", "--name", "nt2", "--net", "none", "busybox", "true",
    ]);
}

fn status_of(rt: &Rt, name: &str) -> String {
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["inspect", name])).unwrap();
    st["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn run_dash_d_dash_i_keeps_the_container_s_stdin_open_as_docker() {
    // Before: `run -d -i` gave the container /dev/null as stdin: a shell read EOF and the
    // container exited at once. As `docker run -di busybox sh`: stdin is an open pipe (its
    // write end held by the monitor, never written), so it runs until stopped.
    if !pre("run_dash_d_dash_i_keeps_the_container_s_stdin_open_as_docker") {
        return;
    }
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "-i", "--name", "di", "--net", "none", "busybox", "sh",
    ]);
    rt.ok(&[
        "run",
        "-d",
        "--interactive",
        "--name",
        "dc",
        "--net",
        "none",
        "busybox",
        "cat",
    ]);
    // Without -i: /dev/null, as before.
    rt.ok(&[
        "run", "-d", "--name", "dn", "--net", "none", "busybox", "sh",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(status_of(&rt, "di"), "running");
    assert_eq!(status_of(&rt, "dc"), "running");
    assert_eq!(status_of(&rt, "dn"), "exited");
    // Its stdin is a pipe, not /dev/null.
    let fd0 = rt.ok(&["exec", "di", "readlink", "/proc/1/fd/0"]);
    assert!(fd0.starts_with("pipe:"), "{fd0}");
    rt.ok(&["stop", "-t", "1", "di"]);
    assert_eq!(status_of(&rt, "di"), "exited");
    rt.ok(&["rm", "-f", "dc"]);
    assert!(rt.run(&["inspect", "dc"]).status.code() != Some(0));
}

#[test]
fn exec_dash_t_says_why_a_command_cannot_start_on_stderr() {
    // Before: with -t the start error was written to the pty, so it came out on stdout;
    // podman prints it on stderr. The exit codes stay docker's (127, 126).
    if !pre("exec_dash_t_says_why_a_command_cannot_start_on_stderr") {
        return;
    }
    let rt = Rt::new();
    rt.ok(&[
        "run", "-d", "--name", "xe", "--net", "none", "busybox", "sleep", "1000",
    ]);
    for (cmd, code, says) in [
        (
            &["exec", "-t", "xe", "no-such-command"][..],
            127,
            "no-such-command",
        ),
        (
            &["exec", "-t", "-u", "nobody", "xe", "true"][..],
            126,
            "user \"nobody\"",
        ),
        (
            &["exec", "xe", "no-such-command"][..],
            127,
            "no-such-command",
        ),
    ] {
        let out = rt.run(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{cmd:?}: {err}");
        assert!(err.contains(says) && err.contains("xe"), "{cmd:?}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{cmd:?}");
    }
}

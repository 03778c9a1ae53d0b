//! podman with twill-oci as its runtime on real networks: podman's own default CNI network
//! (bridge, host-local, portmap, firewall, tuning), and twill as podman's CNI plugin on two lab
//! hosts whose twilld agents connect them over vxlan.
//!
//! podman runs inside a network namespace the test made (its process enters it before exec):
//! the bridges, veths and firewall rules of its networks live there, never in the root
//! namespace. Its store, run state and containers.conf are under a temporary directory; the
//! networks have names of the test's own, so libcni's machine-wide cache
//! (`/var/lib/cni/results/<net>-*`) and host-local's `/var/lib/cni/networks/<net>` are keyed by
//! them and removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use twill_netkit::Netns;
use twill_testbed::{Cluster, Etcd, TwilldCommand, wait_for, wait_for_subnet};
use twill_tests::cni::{REFERENCE_DIR, remove_network_state};
use twill_tests::podman::{ULIMITS, build_busybox_image, output_ok, podman};
use twill_tests::{KillOnDrop, NsScope, busybox_present, in_ci, preconditions};

const OCI: &str = env!("CARGO_BIN_EXE_twill-oci");
const IMAGE: &str = "localhost/bb";

/// A workspace binary next to twill-oci (`cargo test --workspace` builds them all).
fn sibling(name: &str) -> Option<PathBuf> {
    let p = Path::new(OCI).parent()?.join(name);
    if p.exists() {
        return Some(p);
    }
    assert!(
        !in_ci(),
        "{} must be built (cargo test --workspace builds it)",
        p.display()
    );
    eprintln!("skipping: {} not built", p.display());
    None
}

fn ready(test: &str, tools: &[&str]) -> bool {
    preconditions(test, tools) && busybox_present(test)
}

/// One podman "node": a private store and CNI configuration, every command run inside `host`
/// with twill-oci as the runtime.
struct Node {
    dir: TempDir,
    host: Netns,
    /// Networks whose machine-wide CNI state is removed on drop.
    nets: Vec<String>,
}

impl Node {
    /// `plugin_dirs`: where podman looks for CNI plugins; `default_net`: the name and subnet of
    /// podman's default network (named per test so its state is the test's alone).
    fn new(host: Netns, plugin_dirs: &[PathBuf], default_net: (&str, &str)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("cni");
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = {plugin_dirs:?}\n\
                 network_config_dir = {conf_dir:?}\ndefault_network = {:?}\n\
                 default_subnet = {:?}\n",
                default_net.0, default_net.1
            ),
        )
        .unwrap();
        let node = Node {
            dir,
            host,
            nets: vec![default_net.0.to_string()],
        };
        node.remove_machine_state();
        build_busybox_image(&node.store(), &node.dir.path().join("ctx"), IMAGE);
        node
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni")
    }

    fn cmd(&self) -> Command {
        let mut c = podman(&self.store());
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .stdin(Stdio::null());
        self.host.prepare_command(&mut c).unwrap();
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        output_ok(self.cmd().args(args), &format!("podman {args:?}"))
    }

    /// `podman run` with twill-oci and the ulimits this machine needs.
    fn run_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.cmd();
        c.args(["run", "--runtime", OCI]).args(ULIMITS).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_cmd(args).output().unwrap()
    }

    fn run_ok(&self, args: &[&str]) -> String {
        output_ok(&mut self.run_cmd(args), &format!("podman run {args:?}"))
    }

    fn address(&self, name: &str, net: &str) -> String {
        let inspect: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        inspect[0]["NetworkSettings"]["Networks"][net]["IPAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("no address for {name} on {net}: {inspect}"))
            .to_string()
    }

    fn veths(&self) -> usize {
        let out = self
            .cmd_in_host("ip", &["-j", "link", "show", "type", "veth"])
            .stdout;
        serde_json::from_slice::<Value>(&out)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    fn cmd_in_host(&self, cmd: &str, args: &[&str]) -> Output {
        let mut c = Command::new(cmd);
        c.args(args);
        self.host.prepare_command(&mut c).unwrap();
        c.output().unwrap()
    }

    fn remove_machine_state(&self) {
        for net in &self.nets {
            remove_network_state(net);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Containers first: their CNI DEL needs the namespaces that still exist.
        let _ = self.cmd().args(["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd().args(["rmi", "-af"]).output();
        let _ = std::fs::remove_dir_all(twill_tests::podman::runroot(&self.store()));
        self.remove_machine_state();
    }
}

#[test]
fn podman_default_cni_network_with_twill_oci() {
    let name = "podman_default_cni_network_with_twill_oci";
    if !ready(name, &["podman", "conmon", "iptables"]) {
        return;
    }
    let scope = NsScope::new("ocid");
    let net = format!("{}-net", scope.prefix());
    let node = Node::new(
        scope.create("host"),
        &[PathBuf::from(REFERENCE_DIR)],
        (&net, "10.89.77.0/24"),
    );
    node.run_ok(&["-d", "--name", "a", IMAGE, "sleep", "300"]);
    let a = node.address("a", &net);
    assert!(a.starts_with("10.89.77."), "{a}");
    // A second container reaches the first over podman's bridge, and exec works on the
    // network-joined container.
    let o = node.run(&["--rm", IMAGE, "ping", "-c1", "-W2", &a]);
    assert!(
        o.status.success(),
        "ping {a}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let eth0 = node.ok(&["exec", "a", "ip", "-4", "addr", "show", "eth0"]);
    assert!(eth0.contains(&a), "{eth0}");
    assert_eq!(node.veths(), 1, "the --rm container's veth is gone");
    node.ok(&["rm", "-f", "-t", "0", "a"]);
    assert_eq!(node.veths(), 0, "podman rm leaves no veth behind");
}

#[test]
fn podman_with_twill_oci_and_twill_cni_across_two_vxlan_hosts() {
    let name = "podman_with_twill_oci_and_twill_cni_across_two_vxlan_hosts";
    if !ready(name, &["podman", "conmon", "etcd", "nft"]) {
        return;
    }
    let (Some(twilld), Some(twill)) = (sibling("twilld"), sibling("twill")) else {
        return;
    };
    let cluster = Cluster::builder("twt-ocic").hosts(2).build().unwrap();
    let etcd = Etcd::start_in(&cluster.underlay, cluster.underlay_ip(), true).unwrap();
    let accepted = wait_for(Duration::from_secs(20), || {
        etcd.put_network_config(r#"{"Network":"10.58.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .is_ok()
    });
    assert!(accepted, "etcd: {}", etcd.log_tail());

    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(&twill, plugins.join("twill")).unwrap();
    let plugin_dirs = [plugins, PathBuf::from(REFERENCE_DIR)];
    let net = format!("{}-net", cluster.prefix());
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    for n in 1..=2 {
        let host = cluster.host(n);
        let subnet_file = work.path().join(format!("h{n}/subnet.env"));
        let log = work.path().join(format!("h{n}/twilld.log"));
        let agent = TwilldCommand::new(&twilld, etcd.endpoint(), &subnet_file, &log)
            .spawn_in(&host.netns)
            .unwrap();
        agents.push(KillOnDrop(agent));
        wait_for_subnet(&subnet_file, Duration::from_secs(30)).unwrap_or_else(|e| {
            panic!(
                "{e}; twilld log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let node = Node::new(
            Netns::open(&host.name).unwrap(),
            &plugin_dirs,
            (&format!("{net}-d{n}"), &format!("10.89.{}.0/24", 80 + n)),
        );
        let conflist = json!({
            "cniVersion": "1.0.0", "name": net,
            "plugins": [
                {"type": "twill", "subnetFile": subnet_file,
                 "dataDir": work.path().join(format!("h{n}/ipam"))},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(
            node.conf_dir().join("10-twill.conflist"),
            conflist.to_string(),
        )
        .unwrap();
        nodes.push(node);
    }
    for node in &mut nodes {
        node.nets.push(net.clone());
    }

    // A server on host 1, a client on host 2: the answer crosses the vxlan overlay.
    let underlay_veths = nodes[0].veths();
    nodes[0].run_ok(&[
        "-d",
        "--name",
        "srv",
        "--network",
        &net,
        IMAGE,
        "sh",
        "-c",
        "nc -ll -p 8080 -e echo hello-from-host-1",
    ]);
    let srv = nodes[0].address("srv", &net);
    assert!(srv.starts_with("10.58."), "{srv}");
    let mut got = String::new();
    let answered = wait_for(Duration::from_secs(20), || {
        let o = nodes[1].run(&[
            "--rm",
            "--network",
            &net,
            IMAGE,
            "sh",
            "-c",
            &format!("ping -c1 -W2 {srv} >/dev/null && nc -w 2 {srv} 8080"),
        ]);
        got = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o.status.success() && got.contains("hello-from-host-1")
    });
    assert!(answered, "host 2's container did not reach {srv}: {got}");
    // Both containers of each host were set up by twill-oci and the twill plugin.
    let inspect: Value = serde_json::from_str(&nodes[0].ok(&["inspect", "srv"])).unwrap();
    assert_eq!(
        inspect[0]["OCIRuntime"], OCI,
        "{}",
        inspect[0]["OCIRuntime"]
    );
    nodes[0].ok(&["rm", "-f", "-t", "0", "srv"]);
    assert_eq!(
        nodes[0].veths(),
        underlay_veths,
        "podman rm leaves no veth behind"
    );
    drop(nodes);
    drop(agents);
}

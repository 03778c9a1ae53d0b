//! podman 4.3 on its CNI backend, end to end, with the conflist `podman network create`
//! writes (bridge + host-local with ipMasq, then portmap, firewall, tuning) once as it is and
//! once with only the first plugin's `"type"` changed to `"twill"`: both must give the same
//! verdicts (containers start, reach each other and the gateway, are masqueraded, and stop/rm
//! leave no reservation, veth or rule behind; a parallel burst of starts has no error).
//!
//! podman runs inside a network namespace of the test's own (its process enters it before
//! exec), so the bridge, veths and rules live there; its store, run and tmp state and the
//! containers.conf naming the plugin and config dirs are under a temporary directory. The
//! machine-wide paths that stay are keyed by the test's network name (host-local's
//! `/var/lib/cni/networks/<net>`, twill's `/run/twill-cni/<net>`, libcni's cache
//! `/var/lib/cni/results/<net>-*`) and are removed at the end.
//!
//! On this machine (and CI's) `podman run` needs runc (crun refuses the hybrid cgroup layout)
//! and explicit nofile/nproc ulimits (raising the defaults is refused).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;
use twill_netkit::Netns;
use twill_tests::cni::{
    REFERENCE_DIR, reference_plugin_installed, remove_network_state, reservations,
};
use twill_tests::podman::{ULIMITS, output_ok, podman};
use twill_tests::{NsScope, ip_json, preconditions, run};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");
const IMAGE: &str = "localhost/twill-bb:1";
const BURST: usize = 10;

/// podman with a private store and CNI setup, run inside the namespace `host`.
struct Podman {
    scope: NsScope,
    host: Netns,
    dir: TempDir,
    net: String,
    subnet_prefix: String,
}

impl Podman {
    fn new(tag: &str, third_octet: u8) -> Podman {
        let scope = NsScope::new(tag);
        let host = scope.create("host");
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::os::unix::fs::symlink(TWILL, plugins.join("twill")).unwrap();
        for entry in std::fs::read_dir(REFERENCE_DIR).unwrap().flatten() {
            std::os::unix::fs::symlink(entry.path(), plugins.join(entry.file_name())).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("cni")).unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{:?}]\n\
                 network_config_dir = {:?}\n[engine]\nruntime = \"runc\"\n",
                plugins,
                dir.path().join("cni")
            ),
        )
        .unwrap();
        let p = Podman {
            net: format!("twt-{tag}"),
            subnet_prefix: format!("10.91.{third_octet}"),
            scope,
            host,
            dir,
        };
        p.remove_machine_state();
        p
    }

    fn cmd(&self) -> Command {
        let mut c = podman(&self.dir.path().join("store"));
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"));
        self.host.prepare_command(&mut c).unwrap();
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        output_ok(self.cmd().args(args), &format!("podman {args:?}"))
    }

    /// Imports a busybox root file system as the image (no registry here).
    fn import_image(&self) {
        let root = self.dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "ping", "ip", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let tar = self.dir.path().join("rootfs.tar");
        run(
            "tar",
            &[
                "-C",
                &root.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                ".",
            ],
        );
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// `podman network create`'s conflist with the first plugin's type set to `plugin`.
    fn create_network(&self, plugin: &str) -> Value {
        let subnet = format!("{}.0/24", self.subnet_prefix);
        self.ok(&["network", "create", "--subnet", &subnet, &self.net]);
        let path = self
            .dir
            .path()
            .join("cni")
            .join(format!("{}.conflist", self.net));
        let mut conf: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(conf["plugins"][0]["type"], "bridge", "{conf}");
        assert_eq!(conf["plugins"][0]["ipMasq"], true, "{conf}");
        conf["plugins"][0]["type"] = Value::from(plugin);
        std::fs::write(&path, serde_json::to_string_pretty(&conf).unwrap()).unwrap();
        conf
    }

    fn start(&self, name: &str) -> Result<(), String> {
        let mut c = self.cmd();
        c.args(["run", "-d", "--name", name, "--network", &self.net])
            .args(ULIMITS)
            .args([IMAGE, "sleep", "1000"]);
        let out = c.output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn address(&self, name: &str) -> String {
        let inspect: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        inspect[0]["NetworkSettings"]["Networks"][&self.net]["IPAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("no address for {name}: {inspect}"))
            .to_string()
    }

    fn pings(&self, from: &str, to: &str) -> bool {
        self.cmd()
            .args(["exec", from, "ping", "-c1", "-W2", to])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn host_local_dir(&self) -> PathBuf {
        Path::new("/var/lib/cni/networks").join(&self.net)
    }

    fn twill_state_dir(&self) -> PathBuf {
        Path::new("/run/twill-cni").join(&self.net)
    }

    /// Addresses host-local still holds for the network.
    fn reservations(&self) -> usize {
        reservations(&self.host_local_dir())
    }

    /// Attachments twill's masquerade record still holds (0 for the reference plugin).
    fn twill_attachments(&self) -> usize {
        std::fs::read_to_string(self.twill_state_dir().join("masq.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["attachments"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    fn veths(&self) -> usize {
        ip_json(&self.scope.name("host"), &["link", "show", "type", "veth"])
            .as_array()
            .map_or(0, Vec::len)
    }

    /// Masquerade rules in the namespace (nft lists twill's table and iptables-nft's rules).
    fn masquerade_rules(&self) -> usize {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.scope.name("host"),
                "nft",
                "list",
                "ruleset",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .matches("masquerade")
            .count()
    }

    fn remove_machine_state(&self) {
        remove_network_state(&self.net);
        let _ = std::fs::remove_dir_all(self.twill_state_dir());
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their DEL needs the namespace), then what the network left.
        let _ = self.cmd().args(["rm", "-af", "-t", "0"]).output();
        self.remove_machine_state();
    }
}

/// What a user sees of one network under podman.
#[derive(Debug, PartialEq, Eq)]
struct Verdicts {
    both_started: Result<(), String>,
    a_reaches_b: bool,
    b_reaches_a: bool,
    a_reaches_gateway: bool,
    masquerade_rules_while_running: bool,
    reservations_while_running: usize,
    reservations_after_stop: usize,
    veths_after_rm: usize,
    masquerade_rules_after_rm: usize,
    burst_errors: Vec<String>,
    reservations_during_burst: usize,
    reservations_after_burst: usize,
    veths_after_burst: usize,
}

/// The verdicts and the attachments twill's state records while two containers run and
/// after they stopped.
fn verdicts(tag: &str, third_octet: u8, plugin: &str) -> (Verdicts, (usize, usize)) {
    let p = Podman::new(tag, third_octet);
    p.import_image();
    p.create_network(plugin);
    let both_started = p.start("a").and_then(|()| p.start("b"));
    if let Err(e) = &both_started {
        panic!("{plugin}: podman run failed: {e}");
    }
    let (ip_a, ip_b) = (p.address("a"), p.address("b"));
    let gateway = format!("{}.1", p.subnet_prefix);
    let v_running = (
        p.pings("a", &ip_b),
        p.pings("b", &ip_a),
        p.pings("a", &gateway),
        p.masquerade_rules() > 0,
        p.reservations(),
    );
    let attachments_running = p.twill_attachments();
    p.ok(&["stop", "-t", "0", "a", "b"]);
    let (reservations_after_stop, attachments_after_stop) =
        (p.reservations(), p.twill_attachments());
    p.ok(&["rm", "a", "b"]);
    let after_rm = (p.veths(), p.masquerade_rules());

    let burst_errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..BURST)
            .map(|i| {
                let p = &p;
                s.spawn(move || p.start(&format!("burst{i}")))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap().err())
            .collect()
    });
    let reservations_during_burst = p.reservations();
    p.ok(&["rm", "-af", "-t", "0"]);
    let verdicts = Verdicts {
        both_started,
        a_reaches_b: v_running.0,
        b_reaches_a: v_running.1,
        a_reaches_gateway: v_running.2,
        masquerade_rules_while_running: v_running.3,
        reservations_while_running: v_running.4,
        reservations_after_stop,
        veths_after_rm: after_rm.0,
        masquerade_rules_after_rm: after_rm.1,
        burst_errors,
        reservations_during_burst,
        reservations_after_burst: p.reservations(),
        veths_after_burst: p.veths(),
    };
    (verdicts, (attachments_running, attachments_after_stop))
}

#[test]
fn podman_conflist_differing_only_in_type_gives_the_reference_verdicts() {
    if !preconditions(
        "podman_conflist_differing_only_in_type_gives_the_reference_verdicts",
        &["podman", "runc", "ip", "nft", "iptables", "tar"],
    ) {
        return;
    }
    if !reference_plugin_installed("bridge") {
        return;
    }
    let (reference, _) = verdicts("pm-ref", 31, "bridge");
    let (twill, twill_attachments) = verdicts("pm-twill", 32, "twill");
    eprintln!("reference bridge: {reference:#?}\ntwill: {twill:#?}");
    let expected = Verdicts {
        both_started: Ok(()),
        a_reaches_b: true,
        b_reaches_a: true,
        a_reaches_gateway: true,
        masquerade_rules_while_running: true,
        reservations_while_running: 2,
        reservations_after_stop: 0,
        veths_after_rm: 0,
        masquerade_rules_after_rm: 0,
        burst_errors: Vec::new(),
        reservations_during_burst: BURST,
        reservations_after_burst: 0,
        veths_after_burst: 0,
    };
    assert_eq!(reference, expected, "the reference bridge under podman");
    assert_eq!(
        twill, reference,
        "twill under podman, against the reference"
    );
    assert_eq!(
        twill_attachments,
        (2, 0),
        "twill's masquerade record: two attachments while a and b run, none after stop"
    );
}

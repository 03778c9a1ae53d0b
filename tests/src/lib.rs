//! Helpers shared by the integration tests of every crate: precondition checks that fail
//! loudly in CI, `NsScope` (a test's own namespaces, removed on drop), and `ip -j` /
//! `bridge -j` readers for checking kernel state independently of netkit.

use std::process::Command;

pub mod cni;
pub mod podman;
pub mod spec_driver;

use serde_json::Value;

/// True when running under CI (`CI=true`), where missing preconditions are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns false (after printing why) when the test cannot run here; panics in CI instead.
#[must_use]
pub fn preconditions(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for t in tools {
        if !tool_exists(t) {
            missing.push(format!("the `{t}` command"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if in_ci() {
        panic!("{msg} (CI=true: preconditions must hold)");
    }
    eprintln!("skipping {msg}");
    false
}

fn tool_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Runs a command and returns stdout, panicking with stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command inside a named namespace (`ip netns exec`) and returns whether it succeeded.
pub fn ns_exec_ok(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `ip -n NS -j ARGS…` parsed as JSON (an empty answer is an empty array).
pub fn ip_json(ns: &str, args: &[&str]) -> Value {
    let mut full = vec!["-n", ns, "-j"];
    full.extend_from_slice(args);
    parse_json(&run("ip", &full))
}

/// `ip -n NS -j -d link show DEV` for one link.
pub fn ip_link(ns: &str, dev: &str) -> Value {
    ip_json(ns, &["-d", "link", "show", "dev", dev])[0].clone()
}

/// `bridge -n NS -j ARGS…` parsed as JSON.
pub fn bridge_json(ns: &str, args: &[&str]) -> Value {
    let mut full = vec!["-n", ns, "-j"];
    full.extend_from_slice(args);
    parse_json(&run("bridge", &full))
}

fn parse_json(s: &str) -> Value {
    if s.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(s).unwrap_or_else(|e| panic!("parsing JSON {s:?}: {e}"))
}

/// A benchmark's option `name VALUE` from the command line (`cargo bench ... -- name VALUE`),
/// or `default`.
pub fn bench_arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// True when a named namespace with this name exists.
pub fn netns_exists(name: &str) -> bool {
    twill_netkit::Netns::exists(name)
}

/// A set of namespaces named `twt-<tag>-…`, swept before use (leftovers of a killed run) and
/// removed on drop, also when the test panics.
pub struct NsScope {
    prefix: String,
}

impl NsScope {
    /// A scope for one test; `tag` must be unique among tests.
    pub fn new(tag: &str) -> NsScope {
        let prefix = format!("twt-{tag}");
        twill_testbed::sweep(&prefix).expect("sweeping leftovers");
        NsScope { prefix }
    }

    /// The full namespace name for `suffix`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// The scope's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates namespace `<prefix>-<suffix>` with `lo` up.
    pub fn create(&self, suffix: &str) -> twill_netkit::Netns {
        let ns = twill_netkit::Netns::create(&self.name(suffix)).expect("creating netns");
        ns.run(|nl| async move {
            let lo = nl.require_link("lo").await?;
            nl.set_up(lo.index).await
        })
        .expect("setting lo up");
        ns
    }
}

impl Drop for NsScope {
    fn drop(&mut self) {
        if let Err(e) = twill_testbed::sweep(&self.prefix) {
            eprintln!("cleaning up {}-*: {e}", self.prefix);
        }
    }
}

/// A process the test started, killed and reaped when the guard drops (also on a panic).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether /bin/busybox (Debian's busybox-static, the tests' container userland) is there;
/// false with a one-line reason outside CI, a panic in CI.
#[must_use]
pub fn busybox_present(test: &str) -> bool {
    if std::path::Path::new("/bin/busybox").exists() {
        return true;
    }
    assert!(!in_ci(), "CI must install busybox-static");
    eprintln!("skipping {test}: no /bin/busybox");
    false
}

//! CNI plugin binaries driven the way runtimes drive them (a clean environment, the config on
//! stdin, the result or error on stdout), and a check of an ADD result against the spec's
//! rules (spec 1.0.0 / 1.1.0 "Success" section).

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::Value;
use twill_netkit::Netns;

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// What one plugin execution gave back.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    /// The exit status was 0.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOutput {
    /// stdout parsed as JSON (`Null` when empty); panics when it is not JSON, which no
    /// runtime accepts.
    pub fn json(&self) -> Value {
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {} / stderr {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The spec's error code on a failure (libcni reads it from stdout).
    pub fn code(&self) -> Option<u64> {
        if self.ok {
            return None;
        }
        self.json()["code"].as_u64()
    }
}

/// Runs `binary` with exactly `env` (plus `PATH`) and `stdin`, inside `host` when given.
pub fn exec_plugin(
    binary: &str,
    host: Option<&Netns>,
    env: &[(&str, &str)],
    stdin: &str,
) -> PluginOutput {
    let mut c = Command::new(binary);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(h) = host {
        h.prepare_command(&mut c)
            .unwrap_or_else(|e| panic!("entering the host namespace for {binary}: {e}"));
    }
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .unwrap_or_else(|e| panic!("writing the config to {binary}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {binary}: {e}"));
    PluginOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a plugin with every `CNI_*` variable set (`CNI_PATH` = the reference plugins) and
/// `extra` on top; returns (success, stdout, stderr).
#[allow(clippy::too_many_arguments)]
pub fn run_plugin(
    binary: &str,
    host: Option<&Netns>,
    cmd: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    conf: &Value,
    extra: &[(&str, &str)],
) -> (bool, String, String) {
    let mut env = vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", REFERENCE_DIR),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v));
    }
    let out = exec_plugin(binary, host, &env, &conf.to_string());
    (out.ok, out.stdout, out.stderr)
}

/// Checks an ADD result against the spec: the version echoed, every interface named,
/// MACs well formed, the container interface in `netns`, every `ips[].interface` an index
/// of a container interface, addresses in CIDR form with the gateway inside their subnet,
/// routes with a CIDR `dst` and an address `gw`. Returns every violation found.
pub fn spec_violations(result: &Value, version: &str, ifname: &str, netns: &str) -> Vec<String> {
    let mut bad = Vec::new();
    if result["cniVersion"] != version {
        bad.push(format!(
            "cniVersion {} is not the requested {version}",
            result["cniVersion"]
        ));
    }
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    for (i, iface) in ifaces.iter().enumerate() {
        if iface["name"].as_str().is_none_or(str::is_empty) {
            bad.push(format!("interfaces[{i}] has no name"));
        }
        if let Some(mac) = iface.get("mac").and_then(Value::as_str)
            && !is_mac(mac)
        {
            bad.push(format!("interfaces[{i}].mac {mac:?} is not a MAC address"));
        }
    }
    let in_container = |i: &Value| i["name"] == ifname && i["sandbox"] == netns;
    if !ifaces.iter().any(in_container) {
        bad.push(format!("no interface {ifname} with sandbox {netns}"));
    }
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    if ips.is_empty() {
        bad.push("no ips".to_string());
    }
    for (i, ip) in ips.iter().enumerate() {
        if version.starts_with("1.") && ip.get("version").is_some() {
            bad.push(format!("ips[{i}].version is gone since 1.0.0"));
        }
        let Some(net) = ip["address"].as_str().and_then(|a| a.parse::<IpNet>().ok()) else {
            bad.push(format!("ips[{i}].address {} is not CIDR", ip["address"]));
            continue;
        };
        if let Some(v) = ip.get("version") {
            let family = if net.addr().is_ipv4() { "4" } else { "6" };
            if v != family {
                bad.push(format!("ips[{i}].version {v} but {net} is IPv{family}"));
            }
        }
        if let Some(gw) = ip.get("gateway") {
            match gw.as_str().and_then(|g| g.parse::<IpAddr>().ok()) {
                Some(g) if net.contains(&g) => {}
                _ => bad.push(format!("ips[{i}].gateway {gw} is not an address in {net}")),
            }
        }
        if let Some(idx) = ip.get("interface") {
            match idx.as_u64().and_then(|n| ifaces.get(n as usize)) {
                Some(iface) if in_container(iface) => {}
                _ => bad.push(format!(
                    "ips[{i}].interface {idx} is not the index of {ifname} in {netns}"
                )),
            }
        }
    }
    for (i, route) in result["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if route["dst"]
            .as_str()
            .and_then(|d| d.parse::<IpNet>().ok())
            .is_none()
        {
            bad.push(format!("routes[{i}].dst {} is not CIDR", route["dst"]));
        }
        if let Some(gw) = route.get("gw")
            && gw.as_str().and_then(|g| g.parse::<IpAddr>().ok()).is_none()
        {
            bad.push(format!("routes[{i}].gw {gw} is not an address"));
        }
    }
    if let Some(dns) = result.get("dns")
        && !dns.is_object()
    {
        bad.push(format!("dns {dns} is not an object"));
    }
    bad
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Whether Debian's reference plugin `name` is installed (CI must have them all).
pub fn reference_plugin_installed(name: &str) -> bool {
    let there = std::path::Path::new(REFERENCE_DIR).join(name).exists();
    assert!(
        there || !crate::in_ci(),
        "CI must install containernetworking-plugins ({name} is missing)"
    );
    there
}

/// How many addresses a host-local style store directory holds (files named by an address).
pub fn reservations(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
            .count()
    })
}

/// Removes what the CNI network `net` left machine-wide: host-local's store
/// (`/var/lib/cni/networks/<net>`) and libcni's cached results (`/var/lib/cni/results/<net>-*`).
pub fn remove_network_state(net: &str) {
    let _ = std::fs::remove_dir_all(std::path::Path::new("/var/lib/cni/networks").join(net));
    if let Ok(d) = std::fs::read_dir("/var/lib/cni/results") {
        let prefix = format!("{net}-");
        for e in d.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

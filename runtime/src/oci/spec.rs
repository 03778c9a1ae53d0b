//! The parts of the OCI runtime-spec `config.json` (1.0–1.2) twill-oci reads. Fields twill-oci
//! cannot honour are refused by `check` with a clear error instead of being ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::userns::{IdMaps, IdRange};

/// The container's user namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserNs {
    /// None of its own: the runtime's.
    Host,
    /// A new one with these maps.
    New(IdMaps),
    /// The one at this path (its maps are its own; mappings in config.json are not used).
    Join(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub oci_version: String,
    pub process: Option<Process>,
    pub root: Option<Root>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub linux: Linux,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    // Read only to be refused when set (see `Spec::check`).
    #[serde(default)]
    pub apparmor_profile: String,
    #[serde(default)]
    pub selinux_label: String,
    pub io_priority: Option<serde_json::Value>,
    pub scheduler: Option<serde_json::Value>,
}

impl Process {
    /// As runc: a relative cwd is refused (relative to what would depend on where the
    /// runtime happened to be); empty means `/`.
    pub fn check_cwd(&self) -> Result<()> {
        if !self.cwd.is_empty() && !self.cwd.starts_with('/') {
            return Err(RuntimeError::Invalid(format!(
                "process.cwd {:?} must be an absolute path",
                self.cwd
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    pub umask: Option<u32>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Root {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
    // Idmapped mounts (runtime-spec 1.2): read only to be refused (see `Spec::check`).
    #[serde(default)]
    pub uid_mappings: Vec<serde_json::Value>,
    #[serde(default)]
    pub gid_mappings: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default)]
    pub prestart: Vec<Hook>,
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    pub create_container: Vec<Hook>,
    #[serde(default)]
    pub start_container: Vec<Hook>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Hook {
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub timeout: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub uid_mappings: Vec<IdRange>,
    #[serde(default)]
    pub gid_mappings: Vec<IdRange>,
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    pub resources: Option<Resources>,
    pub cgroups_path: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub devices: Vec<Device>,
    pub seccomp: Option<serde_json::Value>,
    pub rootfs_propagation: Option<String>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    // Read only to be refused when set (see `Spec::check`).
    #[serde(default)]
    pub mount_label: String,
    pub personality: Option<serde_json::Value>,
    pub intel_rdt: Option<serde_json::Value>,
    pub time_offsets: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    pub file_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub memory: Option<Memory>,
    pub cpu: Option<Cpu>,
    pub pids: Option<Pids>,
    #[serde(default)]
    pub devices: Vec<DeviceRule>,
    #[serde(rename = "blockIO")]
    pub block_io: Option<BlockIo>,
    // Read only to be refused (see `Resources::unsupported`).
    #[serde(default)]
    pub hugepage_limits: Vec<serde_json::Value>,
    pub unified: Option<BTreeMap<String, String>>,
    pub rdma: Option<serde_json::Value>,
    pub network: Option<serde_json::Value>,
}

/// `linux.resources.blockIO`: weights and throttles per device.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockIo {
    pub weight: Option<u16>,
    pub leaf_weight: Option<u16>,
    #[serde(default)]
    pub weight_device: Vec<WeightDevice>,
    #[serde(default)]
    pub throttle_read_bps_device: Vec<ThrottleDevice>,
    #[serde(default)]
    pub throttle_write_bps_device: Vec<ThrottleDevice>,
    #[serde(default, rename = "throttleReadIOPSDevice")]
    pub throttle_read_iops_device: Vec<ThrottleDevice>,
    #[serde(default, rename = "throttleWriteIOPSDevice")]
    pub throttle_write_iops_device: Vec<ThrottleDevice>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightDevice {
    pub major: i64,
    pub minor: i64,
    pub weight: Option<u16>,
    pub leaf_weight: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ThrottleDevice {
    pub major: i64,
    pub minor: i64,
    pub rate: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub limit: Option<i64>,
    /// Memory + swap, as runc reads it (-1: unlimited).
    pub swap: Option<i64>,
    pub reservation: Option<i64>,
    pub swappiness: Option<u64>,
    // runtime-spec's names are not camelCase here (as `blockIO`): unrenamed, these were
    // never read, so the OOM killer stayed on and a kernelTCP limit was dropped silently.
    #[serde(rename = "disableOOMKiller")]
    pub disable_oom_killer: Option<bool>,
    pub kernel: Option<i64>,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub shares: Option<u64>,
    pub realtime_runtime: Option<i64>,
    pub realtime_period: Option<u64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
    // Read only to be refused (see `Resources::unsupported`).
    pub burst: Option<u64>,
    pub idle: Option<i64>,
}

impl Resources {
    /// The first resource twill-oci does not apply, named as config.json names it.
    pub fn unsupported(&self) -> Option<&'static str> {
        let mem = self.memory.clone().unwrap_or_default();
        let cpu = self.cpu.clone().unwrap_or_default();
        [
            (!self.hugepage_limits.is_empty(), "hugepageLimits"),
            (
                self.unified.as_ref().is_some_and(|u| !u.is_empty()),
                "unified",
            ),
            (self.rdma.is_some(), "rdma"),
            (self.network.is_some(), "network"),
            (
                mem.kernel.is_some() || mem.kernel_tcp.is_some(),
                "memory.kernel/kernelTCP",
            ),
            (
                cpu.realtime_runtime.is_some() || cpu.realtime_period.is_some(),
                "cpu.realtimeRuntime/realtimePeriod",
            ),
            (cpu.burst.is_some() || cpu.idle.is_some(), "cpu.burst/idle"),
        ]
        .into_iter()
        .find_map(|(present, name)| present.then_some(name))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Pids {
    pub limit: i64,
}

/// A device cgroup rule (`linux.resources.devices`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: Option<String>,
}

impl Spec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec> {
        let p = bundle.join("config.json");
        let text =
            std::fs::read_to_string(&p).map_err(|e| RuntimeError::io("reading", p.display(), e))?;
        serde_json::from_str(&text)
            .map_err(|e| RuntimeError::Invalid(format!("parsing {}: {e}", p.display())))
    }

    /// Refuses what twill-oci does not implement, so nothing is ignored silently.
    pub fn check(&self) -> Result<()> {
        let refuse = |what: &str| Err(RuntimeError::Invalid(format!("config.json: {what}")));
        if !(self.oci_version.starts_with("1.") || self.oci_version.is_empty()) {
            return refuse(&format!(
                "ociVersion {} is not supported (1.0 to 1.2 are)",
                self.oci_version
            ));
        }
        let Some(process) = &self.process else {
            return refuse("no process");
        };
        if process.args.is_empty() {
            return refuse("process.args is empty");
        }
        process.check_cwd()?;
        // As runc: setuid(4294967295) would mean "leave it", and kernels refuse IDs past
        // i32::MAX; said at create instead of as the started container's output.
        let user = &process.user;
        if let Some(id) = [user.uid, user.gid]
            .iter()
            .chain(&user.additional_gids)
            .find(|id| **id > i32::MAX as u32)
        {
            return refuse(&format!(
                "process.user: ID {id} is out of range: uids and gids must be in range \
                 0-{}",
                i32::MAX
            ));
        }
        for (set, what) in [
            (
                !process.apparmor_profile.is_empty(),
                "process.apparmorProfile (AppArmor)",
            ),
            (
                !process.selinux_label.is_empty(),
                "process.selinuxLabel (SELinux)",
            ),
            (
                !self.linux.mount_label.is_empty(),
                "linux.mountLabel (SELinux)",
            ),
            (process.io_priority.is_some(), "process.ioPriority"),
            (process.scheduler.is_some(), "process.scheduler"),
            (self.linux.personality.is_some(), "linux.personality"),
            (self.linux.intel_rdt.is_some(), "linux.intelRdt"),
            (self.linux.time_offsets.is_some(), "linux.timeOffsets"),
        ] {
            if set {
                return refuse(&format!("{what} is not supported"));
            }
        }
        if self.root.is_none() {
            return refuse("no root");
        }
        for ns in &self.linux.namespaces {
            match (ns.kind.as_str(), &ns.path) {
                ("pid" | "network" | "ipc" | "uts" | "mount" | "cgroup" | "user", _) => {}
                (other, _) => return refuse(&format!("unknown namespace type {other:?}")),
            }
            if self
                .linux
                .namespaces
                .iter()
                .filter(|n| n.kind == ns.kind)
                .count()
                > 1
            {
                return refuse(&format!("namespace {} is listed twice", ns.kind));
            }
        }
        match self.user_namespace() {
            UserNs::New(maps) => {
                maps.check()?;
                let user = &process.user;
                if maps.uid_to_host(user.uid).is_none() {
                    return refuse(&format!(
                        "process.user.uid {} is not mapped by linux.uidMappings",
                        user.uid
                    ));
                }
                if let Some(g) = std::iter::once(&user.gid)
                    .chain(&user.additional_gids)
                    .find(|g| maps.gid_to_host(**g).is_none())
                {
                    return refuse(&format!(
                        "process.user gid {g} is not mapped by linux.gidMappings"
                    ));
                }
            }
            UserNs::Host
                if !self.linux.uid_mappings.is_empty() || !self.linux.gid_mappings.is_empty() =>
            {
                return refuse(
                    "linux.uidMappings/gidMappings are given but linux.namespaces has no user \
                     namespace",
                );
            }
            _ => {}
        }
        if let Some(m) = self
            .mounts
            .iter()
            .find(|m| !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty())
        {
            return refuse(&format!(
                "mount on {}: uidMappings/gidMappings (idmapped mounts) are not supported",
                m.destination
            ));
        }
        for key in self.linux.sysctl.keys() {
            self.check_sysctl(key)?;
        }
        if !self.linux.namespaces.iter().any(|n| n.kind == "mount") {
            return refuse("a mount namespace is required");
        }
        if let Some(name) = self
            .linux
            .resources
            .as_ref()
            .and_then(Resources::unsupported)
        {
            return refuse(&format!(
                "linux.resources.{name} is not supported yet (memory limit/swap/reservation/\
                 swappiness/disableOOMKiller, cpu quota/period/shares/cpus/mems, pids, devices \
                 and blockIO are)"
            ));
        }
        for r in &process.rlimits {
            rlimit_resource(&r.kind)?;
        }
        // As runc: without a UTS namespace of its own the names would be the host's (runc
        // sets the host's domainname; it was ignored here, silently).
        let has_uts = self.linux.namespaces.iter().any(|n| n.kind == "uts");
        for (name, set) in [
            ("hostname", &self.hostname),
            ("domainname", &self.domainname),
        ] {
            if set.as_deref().is_some_and(|s| !s.is_empty()) && !has_uts {
                return refuse(&format!(
                    "{name} is set but linux.namespaces has no uts namespace: add one or \
                     leave {name} out"
                ));
            }
        }
        if let Some(c) = &process.capabilities {
            for name in c
                .bounding
                .iter()
                .chain(&c.effective)
                .chain(&c.inheritable)
                .chain(&c.permitted)
                .chain(&c.ambient)
            {
                capability(name)?;
            }
        }
        Ok(())
    }

    /// As runc: a sysctl is written only into a namespace of the container's own (never the
    /// host's), so only namespaced ones are allowed, and only with that namespace.
    fn check_sysctl(&self, key: &str) -> Result<()> {
        let has = |kind: &str| self.linux.namespaces.iter().any(|n| n.kind == kind);
        const IPC: &[&str] = &[
            "kernel.msgmax",
            "kernel.msgmnb",
            "kernel.msgmni",
            "kernel.sem",
            "kernel.shmall",
            "kernel.shmmax",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
        ];
        let needs = if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
            "ipc"
        } else if key.starts_with("net.") {
            "network"
        } else if key == "kernel.hostname" || key == "kernel.domainname" {
            "uts"
        } else {
            return Err(RuntimeError::Invalid(format!(
                "config.json: sysctl {key} is not namespaced: it would change the host"
            )));
        };
        if !has(needs) {
            return Err(RuntimeError::Invalid(format!(
                "config.json: sysctl {key} needs a {needs} namespace of the container's own"
            )));
        }
        Ok(())
    }

    /// The container's user namespace.
    pub fn user_namespace(&self) -> UserNs {
        match self.linux.namespaces.iter().find(|n| n.kind == "user") {
            None => UserNs::Host,
            Some(n) => match &n.path {
                Some(p) => UserNs::Join(p.clone()),
                None => UserNs::New(IdMaps {
                    uid: self.linux.uid_mappings.clone(),
                    gid: self.linux.gid_mappings.clone(),
                }),
            },
        }
    }

    /// Whether namespace `kind` is new (listed without a path).
    pub fn new_namespace(&self, kind: &str) -> bool {
        self.linux
            .namespaces
            .iter()
            .any(|n| n.kind == kind && n.path.is_none())
    }
}

/// `RLIMIT_NOFILE` etc. → the resource number.
pub fn rlimit_resource(name: &str) -> Result<i32> {
    let r = match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => {
            return Err(RuntimeError::Invalid(format!(
                "config.json: unknown rlimit {name:?}"
            )));
        }
    };
    Ok(r as i32)
}

/// `CAP_NET_ADMIN` → the capability.
pub fn capability(name: &str) -> Result<caps::Capability> {
    name.parse::<caps::Capability>()
        .map_err(|_| RuntimeError::Invalid(format!("config.json: unknown capability {name:?}")))
}

/// Capability names → a set (names were checked by `Spec::check`; unknown ones are skipped).
pub fn cap_set(names: &[String]) -> caps::CapsHashSet {
    names.iter().filter_map(|n| capability(n).ok()).collect()
}

/// `env` with `overrides` (`KEY=value`, as `exec -e` gives them) applied: an override
/// replaces the variable of its name, as runc does, instead of adding a second one that
/// `getenv` and the PATH lookup would never see. As runc, an override without `=` (or with
/// an empty name) is refused: passed on raw, it is no variable at all.
pub fn override_env(env: &mut Vec<String>, overrides: Vec<String>) -> Result<()> {
    let key = |e: &str| e.split('=').next().unwrap_or("").to_string();
    if let Some(bad) = overrides
        .iter()
        .find(|o| o.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        return Err(RuntimeError::Invalid(format!(
            "invalid environment variable {bad:?}: give it as NAME=value"
        )));
    }
    for o in overrides {
        let k = key(&o);
        env.retain(|e| key(e) != k);
        env.push(o);
    }
    Ok(())
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    fn exec_env_overrides_replace_the_containers_variables() {
        let mut env = vec!["PATH=/bin".to_string(), "FOO=old".into(), "KEEP=1".into()];
        override_env(
            &mut env,
            vec!["FOO=new".into(), "PATH=/opt/bin".into(), "NEW=x".into()],
        )
        .unwrap();
        assert_eq!(env, ["KEEP=1", "FOO=new", "PATH=/opt/bin", "NEW=x"]);
    }

    #[test]
    fn exec_env_overrides_without_a_name_and_equals_sign_are_refused() {
        for bad in ["NOEQ", "=value"] {
            let mut env = vec!["KEEP=1".to_string()];
            let e = override_env(&mut env, vec!["A=".into(), bad.into()]).unwrap_err();
            assert!(
                e.to_string().contains("invalid environment variable"),
                "{e}"
            );
            assert_eq!(env, ["KEEP=1"], "nothing applied when one is refused");
        }
    }

    #[test]
    fn resource_names_are_the_runtime_specs() {
        // The names config-linux.md gives, which camelCase renaming does not produce.
        let r: Resources = serde_json::from_value(serde_json::json!({
            "memory": {"disableOOMKiller": true, "kernelTCP": 1024},
            "blockIO": {"weight": 100, "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 5}],
                        "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 6}]},
            "cpu": {"burst": 10}
        }))
        .unwrap();
        let mem = r.memory.clone().unwrap();
        assert_eq!(mem.disable_oom_killer, Some(true));
        assert_eq!(mem.kernel_tcp, Some(1024));
        let bio = r.block_io.clone().unwrap();
        assert_eq!(bio.throttle_read_iops_device[0].rate, 5);
        assert_eq!(bio.throttle_write_iops_device[0].rate, 6);
        assert_eq!(r.unsupported(), Some("memory.kernel/kernelTCP"));
        let r: Resources = serde_json::from_value(serde_json::json!({"cpu": {"idle": 1}})).unwrap();
        assert_eq!(r.unsupported(), Some("cpu.burst/idle"));
    }
}

//! The lab's state file (`/run/twill-lab/<name>/state.json`), written after every step of
//! `up` so `down` can clean up even after a crash.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Where every lab's state lives.
pub const STATE_ROOT: &str = "/run/twill-lab";

/// The lab `--name` names when not given.
pub const DEFAULT_NAME: &str = "lab";

/// Where the state of lab `name` lives.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(name)
}

/// `--name NAME` as a command the user copies must say it (nothing for the default lab): a
/// hint without it names another lab.
pub fn name_flag(name: &str) -> String {
    if name == DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {name}")
    }
}

/// The labs whose state is on this machine, sorted.
pub fn existing_labs() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(STATE_ROOT) else {
        return Vec::new();
    };
    let mut labs: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join("state.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    labs.sort();
    labs
}

/// The state of lab `name`, or why there is none, naming the labs there are.
pub fn load_lab(name: &str) -> anyhow::Result<LabState> {
    let dir = state_dir(name);
    if !dir.join("state.json").exists() {
        let labs = existing_labs();
        if labs.is_empty() {
            anyhow::bail!(
                "no lab {name}: none is up (start one with `twill-lab up{}`)",
                name_flag(name)
            );
        }
        anyhow::bail!(
            "no lab {name}; the labs up are {} (pick one with --name)",
            labs.join(", ")
        );
    }
    LabState::load(&dir).with_context(|| format!("lab {name}"))
}

/// `up` (or `soak`) refused because a lab of that name exists: nothing was built, and the lab
/// there is someone else's — not one to clean up.
#[derive(Debug)]
pub struct LabExists(pub String);

impl std::fmt::Display for LabExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lab {0} exists: run `twill-lab down --name {0}` first, or pick another --name",
            self.0
        )
    }
}

impl std::error::Error for LabExists {}

/// Claims lab `name`'s state directory, atomically: of two `up`s of one name only one gets
/// it (the other's `Cluster::build` would sweep the first's namespaces).
pub fn claim_state_dir(name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(STATE_ROOT).with_context(|| format!("creating {STATE_ROOT}"))?;
    let dir = state_dir(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(LabExists(name.to_string()).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating {}", dir.display()))),
    }
}

/// Namespace prefix of lab `name`.
pub fn prefix(name: &str) -> String {
    format!("tl-{name}")
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct ContainerState {
    pub name: String,
    /// The first address (IPv4 in a dual-stack lab, IPv6 in an IPv6-only one).
    pub ip: String,
    /// The IPv6 address in a dual-stack lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    pub reachable: Option<bool>,
}

/// What `status` found running on one host now: why its twilld and each of its containers
/// (in the state's order) are down, `None` for what runs.
#[derive(Clone, Debug, Default)]
pub struct HostHealth {
    pub twilld: Option<String>,
    pub containers: Vec<Option<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct HostState {
    pub name: String,
    pub netns: String,
    pub underlay_ip: String,
    pub subnet: Option<String>,
    pub twilld_pid: Option<u32>,
    pub log: PathBuf,
    pub subnet_file: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub run_root: PathBuf,
    pub containers: Vec<ContainerState>,
}

/// One etcd member the lab started.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct EtcdState {
    pub pid: Option<u32>,
    /// Its data and log, removed by `down`; none while the process that started it owns them
    /// (`soak`).
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct LabState {
    pub name: String,
    pub backend: crate::backend::LabBackend,
    #[serde(default)]
    pub ip_family: crate::family::IpFamily,
    pub network: String,
    /// The IPv6 pod network when the lab has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network6: Option<String>,
    /// Client URLs of all members, comma separated (twilld's `--etcd-endpoints`).
    pub etcd_endpoint: String,
    pub etcd: Vec<EtcdState>,
    pub cni_path: String,
    pub hosts: Vec<HostState>,
    /// Built by `bench` for one of its paths: the next bench of that name may replace it (a
    /// crashed bench's leftover); a lab of the user's it refuses to touch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub made_by_bench: bool,
}

impl LabState {
    pub fn load(dir: &Path) -> anyhow::Result<LabState> {
        let text = std::fs::read(dir.join("state.json"))
            .with_context(|| format!("reading {}", dir.join("state.json").display()))?;
        Ok(serde_json::from_slice(&text)?)
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, dir.join("state.json"))?;
        Ok(())
    }

    pub fn host_index(&self, name: &str) -> anyhow::Result<usize> {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .with_context(|| {
                format!(
                    "no host {name} (hosts: {})",
                    self.hosts
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// The table: host, underlay IP, subnet, container, IP (and IPv6 in a dual-stack lab),
    /// and whether the last check found it reachable from all; with `live` (`status`), whether
    /// each host's twilld and each container runs now instead. A host without containers
    /// still has its row: its underlay IP and subnet are what `exec HOST` works with.
    pub fn print_table(&self, live: Option<&[HostHealth]>) {
        let dual = self.ip_family == crate::family::IpFamily::Dual;
        let ip_w = if dual { 14 } else { 20 };
        let mark = |ok: bool| if ok { "✔" } else { "✘" };
        crate::out!("{:<6} {:<14} {:<20} ", "HOST", "UNDERLAY IP", "SUBNET");
        if live.is_some() {
            crate::out!("{:<7} ", "TWILLD");
        }
        crate::out!("{:<10} {:<ip_w$} ", "CONTAINER", "IP");
        if dual {
            crate::out!("{:<22} ", "IPV6");
        }
        crate::outln!(
            "{}",
            if live.is_some() {
                "RUNNING"
            } else {
                "REACHABLE FROM ALL"
            }
        );
        for (hi, h) in self.hosts.iter().enumerate() {
            let health = live.and_then(|l| l.get(hi));
            let rows = h.containers.len().max(1);
            for i in 0..rows {
                let (hn, ul, sn) = if i == 0 {
                    (
                        h.name.as_str(),
                        h.underlay_ip.as_str(),
                        h.subnet.as_deref().unwrap_or("-"),
                    )
                } else {
                    ("", "", "")
                };
                crate::out!("{hn:<6} {ul:<14} {sn:<20} ");
                if let Some(hh) = health {
                    let twilld = if i == 0 {
                        mark(hh.twilld.is_none())
                    } else {
                        ""
                    };
                    crate::out!("{twilld:<7} ");
                }
                let Some(c) = h.containers.get(i) else {
                    crate::outln!("-");
                    continue;
                };
                crate::out!("{:<10} {:<ip_w$} ", c.name, c.ip);
                if dual {
                    crate::out!("{:<22} ", c.ip6.as_deref().unwrap_or("-"));
                }
                let last = match (health, c.reachable) {
                    (Some(hh), _) => mark(hh.containers.get(i).is_some_and(Option::is_none)),
                    (None, Some(r)) => mark(r),
                    (None, None) => "?",
                };
                crate::outln!("{last}");
            }
        }
    }
}

//! The lab's state file (`/run/twill-lab/<name>/state.json`), written after every step of
//! `up` so `down` can clean up even after a crash.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Where the state of lab `name` lives.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from("/run/twill-lab").join(name)
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
    /// reachable from all.
    pub fn print_table(&self) {
        let dual = self.ip_family == crate::family::IpFamily::Dual;
        let ip_w = if dual { 14 } else { 20 };
        print!(
            "{:<6} {:<14} {:<20} {:<10} {:<ip_w$} ",
            "HOST", "UNDERLAY IP", "SUBNET", "CONTAINER", "IP"
        );
        if dual {
            print!("{:<22} ", "IPV6");
        }
        println!("REACHABLE FROM ALL");
        for h in &self.hosts {
            for (i, c) in h.containers.iter().enumerate() {
                let (hn, ul, sn) = if i == 0 {
                    (
                        h.name.as_str(),
                        h.underlay_ip.as_str(),
                        h.subnet.as_deref().unwrap_or("-"),
                    )
                } else {
                    ("", "", "")
                };
                let mark = match c.reachable {
                    Some(true) => "✔",
                    Some(false) => "✘",
                    None => "?",
                };
                print!("{hn:<6} {ul:<14} {sn:<20} {:<10} {:<ip_w$} ", c.name, c.ip);
                if dual {
                    print!("{:<22} ", c.ip6.as_deref().unwrap_or("-"));
                }
                println!("{mark}");
            }
        }
    }
}

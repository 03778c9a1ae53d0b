//! The backend a lab runs: twilld's own backend names, parsed on the command line.

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;
use twill_agent::netconf::BackendType;

/// A backend twilld can run in a lab (`Backend.Type` of the network config). In the lab's
/// state file it is twilld's name (`"host-gw"`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LabBackend {
    /// Routes via the peer's underlay address (hosts on one L2 segment).
    HostGw,
    /// The kernel's VXLAN device (`up`'s default).
    #[default]
    Vxlan,
    /// twilld's own UDP encapsulation over a TUN device.
    Udp,
    /// WireGuard in twilld's user-space TUN data path (device `flannel-wg`).
    Wireguard,
}

impl LabBackend {
    /// Every backend, in the order `bench` measures them.
    pub const ALL: [LabBackend; 4] = [
        LabBackend::HostGw,
        LabBackend::Vxlan,
        LabBackend::Udp,
        LabBackend::Wireguard,
    ];

    /// Whether packets between hosts pass through twilld itself (its TUN data path), so that
    /// a host's twilld being down stops its containers' traffic to other hosts; the kernel
    /// backends' agents only program the kernel, which forwards without them.
    pub fn data_path_in_twilld(self) -> bool {
        matches!(self, LabBackend::Udp | LabBackend::Wireguard)
    }

    /// twilld's name for it (`host-gw`, `vxlan`, `udp`, `wireguard`).
    pub fn as_str(self) -> &'static str {
        BackendType::from(self).as_str()
    }
}

impl From<LabBackend> for BackendType {
    fn from(b: LabBackend) -> BackendType {
        match b {
            LabBackend::HostGw => BackendType::HostGw,
            LabBackend::Vxlan => BackendType::Vxlan,
            LabBackend::Udp => BackendType::Udp,
            LabBackend::Wireguard => BackendType::Wireguard,
        }
    }
}

impl LabBackend {
    /// twilld flags a host of this backend needs besides the lab's own: wireguard's key file
    /// and UAPI socket directory in the host's directory `host_dir`, since every twilld of
    /// the lab runs on one machine (the defaults, /run/flannel/wgkey and /var/run/wireguard,
    /// would be shared).
    pub fn host_flags(self, host_dir: &std::path::Path) -> Vec<String> {
        match self {
            LabBackend::Wireguard => vec![
                "--wireguard-key-file".into(),
                host_dir.join("wgkey").display().to_string(),
                "--wireguard-socket-dir".into(),
                host_dir.join("wireguard").display().to_string(),
            ],
            _ => Vec::new(),
        }
    }
}

impl FromStr for LabBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<LabBackend, String> {
        LabBackend::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| format!("unknown backend {s:?}"))
    }
}

impl fmt::Display for LabBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_keeps_twillds_names() {
        for b in LabBackend::ALL {
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{}\"", b.as_str()));
            assert_eq!(serde_json::from_str::<LabBackend>(&json).unwrap(), b);
        }
    }

    #[test]
    fn the_command_line_names_are_twillds_names() {
        for b in LabBackend::ALL {
            let cli = b.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(cli.as_deref(), Some(b.as_str()));
            assert_eq!(b.as_str().parse::<LabBackend>(), Ok(b));
        }
        assert_eq!(LabBackend::value_variants(), LabBackend::ALL);
        assert!("ipip".parse::<LabBackend>().is_err());
    }

    #[test]
    fn wireguard_hosts_get_their_own_key_and_socket_dir() {
        let flags = LabBackend::Wireguard.host_flags(std::path::Path::new("/run/twill-lab/x/h1"));
        assert_eq!(
            flags,
            [
                "--wireguard-key-file",
                "/run/twill-lab/x/h1/wgkey",
                "--wireguard-socket-dir",
                "/run/twill-lab/x/h1/wireguard"
            ]
        );
        assert!(
            LabBackend::Vxlan
                .host_flags(std::path::Path::new("/x"))
                .is_empty()
        );
    }
}

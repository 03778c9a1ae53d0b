//! What the network benchmark measures: the two-host paths `--backends` names, and the path
//! each report row stands for.

use std::fmt;
use std::str::FromStr;

use super::wg_anchor::Anchor;
use crate::backend::LabBackend;

/// A two-host path the network benchmark can measure: a backend, the TUN relay (a udp
/// lab whose agents `relay` replaces: the ceiling of any TUN-based data path), or an external
/// udp forwarder (`--forwarder CMD` swaps it into a udp lab: a measuring stick with the udp
/// backend's wire format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchPath {
    Backend(LabBackend),
    TunRelay,
    Forwarder,
    /// A wireguard lab whose agents Debian's wireguard-go replaces, set up like Flannel's
    /// device: the user-space anchor twilld's wireguard is measured against.
    WireguardGo,
    /// The same with boringtun-cli.
    Boringtun,
}

impl BenchPath {
    /// Every path, in the order `--backends all` measures them.
    pub const ALL: [BenchPath; 7] = [
        BenchPath::Backend(LabBackend::HostGw),
        BenchPath::Backend(LabBackend::Vxlan),
        BenchPath::Backend(LabBackend::Udp),
        BenchPath::TunRelay,
        BenchPath::Backend(LabBackend::Wireguard),
        BenchPath::WireguardGo,
        BenchPath::Boringtun,
    ];

    /// The name `--backends` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            BenchPath::Backend(b) => b.as_str(),
            BenchPath::TunRelay => "tun-relay",
            BenchPath::Forwarder => "forwarder",
            BenchPath::WireguardGo => "wireguard-go",
            BenchPath::Boringtun => "boringtun",
        }
    }

    /// The user-space WireGuard that takes over the path's lab, if it is an anchor.
    pub fn anchor(self) -> Option<Anchor> {
        match self {
            BenchPath::WireguardGo => Some(Anchor::WireguardGo),
            BenchPath::Boringtun => Some(Anchor::Boringtun),
            _ => None,
        }
    }

    /// The backend the path's lab runs (the relay and a forwarder take over a udp lab, the
    /// user-space WireGuard anchors a wireguard lab).
    pub fn lab_backend(self) -> LabBackend {
        match self {
            BenchPath::Backend(b) => b,
            BenchPath::TunRelay | BenchPath::Forwarder => LabBackend::Udp,
            BenchPath::WireguardGo | BenchPath::Boringtun => LabBackend::Wireguard,
        }
    }

    /// How reports name it (an anchor with the version that ran).
    fn label(self) -> String {
        match self {
            BenchPath::Backend(b) => b.as_str().to_string(),
            BenchPath::TunRelay => "TUN relay".to_string(),
            BenchPath::Forwarder => "forwarder".to_string(),
            BenchPath::WireguardGo | BenchPath::Boringtun => match self.anchor() {
                Some(a) => a.version(),
                None => self.as_str().to_string(),
            },
        }
    }
}

impl FromStr for BenchPath {
    type Err = String;

    fn from_str(s: &str) -> Result<BenchPath, String> {
        BenchPath::ALL
            .into_iter()
            .chain([BenchPath::Forwarder])
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = BenchPath::ALL
                    .iter()
                    .chain(&[BenchPath::Forwarder])
                    .map(|p| p.as_str())
                    .collect();
                format!("unknown path {s:?}: pick from {}", known.join(", "))
            })
    }
}

impl fmt::Display for BenchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of `--backends`: paths separated by commas, or `all`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchSelection(pub Vec<BenchPath>);

impl FromStr for BenchSelection {
    type Err = String;

    fn from_str(s: &str) -> Result<BenchSelection, String> {
        if s == "all" {
            return Ok(BenchSelection(BenchPath::ALL.to_vec()));
        }
        s.split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(BenchSelection)
    }
}

/// The path a report row measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowPath {
    /// Two containers on one host, through the bridge: the physical baseline.
    SameHost,
    /// Containers on two hosts.
    TwoHosts(BenchPath),
    /// Containers on two hosts, over their IPv6 addresses (a dual-stack or IPv6-only lab).
    TwoHostsV6(BenchPath),
}

impl RowPath {
    /// The row's label in tables and charts.
    pub fn label(self) -> String {
        match self {
            RowPath::SameHost => "same host (bridge)".into(),
            RowPath::TwoHosts(p) => format!("two hosts, {}", p.label()),
            RowPath::TwoHostsV6(p) => format!("two hosts, {}, IPv6", p.label()),
        }
    }

    /// Whether the processes of the lab's hosts carry the packets (twilld, or the forwarder
    /// or user-space WireGuard that took over), so their CPU time is counted: not on one
    /// host, and not through the relay, which runs in the bench process. (On the kernel
    /// backends twilld only watches etcd: their figure is about 0.)
    pub fn cpu_counted(self) -> bool {
        match self {
            RowPath::SameHost => false,
            RowPath::TwoHosts(p) | RowPath::TwoHostsV6(p) => p != BenchPath::TunRelay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_from_a_list_or_all_and_name_the_known_ones_otherwise() {
        assert_eq!(
            "udp,tun-relay".parse(),
            Ok(BenchSelection(vec![
                BenchPath::Backend(LabBackend::Udp),
                BenchPath::TunRelay
            ]))
        );
        assert_eq!("all".parse(), Ok(BenchSelection(BenchPath::ALL.to_vec())));
        assert_eq!(
            "vxlan,ipip".parse::<BenchSelection>(),
            Err("unknown path \"ipip\": pick from host-gw, vxlan, udp, tun-relay, wireguard, wireguard-go, boringtun, forwarder".into())
        );
        assert_eq!(BenchPath::TunRelay.lab_backend(), LabBackend::Udp);
        assert_eq!(BenchPath::WireguardGo.lab_backend(), LabBackend::Wireguard);
        assert_eq!(BenchPath::Boringtun.lab_backend(), LabBackend::Wireguard);
        assert_eq!(
            "wireguard,boringtun".parse(),
            Ok(BenchSelection(vec![
                BenchPath::Backend(LabBackend::Wireguard),
                BenchPath::Boringtun
            ]))
        );
        assert_eq!(BenchPath::Boringtun.anchor(), Some(Anchor::Boringtun));
        assert_eq!(BenchPath::TunRelay.anchor(), None);
    }

    #[test]
    fn rows_are_labelled_for_people() {
        assert_eq!(RowPath::SameHost.label(), "same host (bridge)");
        assert_eq!(
            RowPath::TwoHosts(BenchPath::Backend(LabBackend::HostGw)).label(),
            "two hosts, host-gw"
        );
        assert_eq!(
            RowPath::TwoHosts(BenchPath::TunRelay).label(),
            "two hosts, TUN relay"
        );
        assert!(!RowPath::TwoHosts(BenchPath::TunRelay).cpu_counted());
        assert!(RowPath::TwoHosts(BenchPath::Forwarder).cpu_counted());
        assert!(RowPath::TwoHostsV6(BenchPath::WireguardGo).cpu_counted());
        assert_eq!(
            "udp,forwarder".parse(),
            Ok(BenchSelection(vec![
                BenchPath::Backend(LabBackend::Udp),
                BenchPath::Forwarder
            ]))
        );
        assert!(!RowPath::SameHost.cpu_counted());
        assert_eq!(
            RowPath::TwoHostsV6(BenchPath::Backend(LabBackend::Vxlan)).label(),
            "two hosts, vxlan, IPv6"
        );
    }
}

//! Which WireGuard devices a node runs and how peers are reached, per `Backend.Mode`, as
//! Flannel decides it (pkg/backend/wireguard): in `separate` mode one device per family
//! (`flannel-wg` on `ListenPort` over the IPv4 underlay, `flannel-wg-v6` on `ListenPortV6`
//! over the IPv6 underlay); in `auto`, `ipv4` and `ipv6` mode one device `flannel-wg` on
//! `ListenPort` carrying both families, its peers reached over the underlay family the mode
//! names (`auto`: Flannel's `selectPublicEndpoint`). Pure decisions, unit-tested.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::config::{Mode, WireguardConfig};

/// The IPv4 device's name (Flannel's).
pub const DEVICE: &str = "flannel-wg";
/// The IPv6 device's name in separate mode (Flannel's).
pub const DEVICE_V6: &str = "flannel-wg-v6";

/// Which underlay family a device's socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    V4,
    V6,
    /// Both: one dual-stack socket on `[::]` (auto mode on a dual-stack node).
    Both,
}

/// One device to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePlan {
    pub name: &'static str,
    pub port: u16,
    pub underlay: Underlay,
    /// The inner families it carries.
    pub v4: bool,
    pub v6: bool,
}

/// The devices for `cfg.mode` with the network's families on (`v4`: `EnableIPv4`, `v6`:
/// `EnableIPv6`) and the node's underlay addresses (`has_v4`, `has_v6`).
pub fn devices(
    cfg: &WireguardConfig,
    v4: bool,
    v6: bool,
    has_v4: bool,
    has_v6: bool,
) -> Vec<DevicePlan> {
    match cfg.mode {
        Mode::Separate => {
            let mut out = Vec::new();
            if v4 {
                out.push(DevicePlan {
                    name: DEVICE,
                    port: cfg.listen_port,
                    underlay: Underlay::V4,
                    v4: true,
                    v6: false,
                });
            }
            if v6 {
                out.push(DevicePlan {
                    name: DEVICE_V6,
                    port: cfg.listen_port_v6,
                    underlay: Underlay::V6,
                    v4: false,
                    v6: true,
                });
            }
            out
        }
        mode => {
            let underlay = match mode {
                Mode::Ipv4 => Underlay::V4,
                Mode::Ipv6 => Underlay::V6,
                _ => match (has_v4, has_v6) {
                    (true, true) => Underlay::Both,
                    (false, true) => Underlay::V6,
                    _ => Underlay::V4,
                },
            };
            vec![DevicePlan {
                name: DEVICE,
                port: cfg.listen_port,
                underlay,
                v4,
                v6,
            }]
        }
    }
}

/// The port `BackendV6Data` announces: `ListenPortV6` where `flannel-wg-v6` listens
/// (separate mode), else `ListenPort`, where the one device listens. Flannel announces
/// `ListenPortV6` in every mode, so its single-device peers reached over IPv6 get a port
/// nobody listens on; twill announces the port it listens on.
pub fn v6_data_port(cfg: &WireguardConfig) -> u16 {
    match cfg.mode {
        Mode::Separate => cfg.listen_port_v6,
        _ => cfg.listen_port,
    }
}

/// Where a peer of the one device (auto/ipv4/ipv6 mode) is reached: the mode's family, or
/// in auto mode Flannel's choice — IPv4 unless only IPv6 is there, or the peer's IPv4 is
/// private (RFC 1918) while its IPv6 and ours are global (not ULA) — among the families
/// both ends have. `None` when the peer has no address of a usable family.
pub fn endpoint_ip(
    mode: Mode,
    peer_v4: Option<Ipv4Addr>,
    peer_v6: Option<Ipv6Addr>,
    local_v4: Option<Ipv4Addr>,
    local_v6: Option<Ipv6Addr>,
) -> Option<IpAddr> {
    let v4 = peer_v4.filter(|_| local_v4.is_some()).map(IpAddr::V4);
    let v6 = peer_v6.filter(|_| local_v6.is_some()).map(IpAddr::V6);
    match mode {
        Mode::Ipv4 | Mode::Separate => v4,
        Mode::Ipv6 => v6,
        Mode::Auto => match (v4, v6, peer_v4, peer_v6, local_v6) {
            (Some(a), None, ..) | (None, Some(a), ..) => Some(a),
            (None, None, ..) => None,
            (Some(a), Some(_), Some(p4), ..) if !p4.is_private() => Some(a),
            (Some(_), Some(b), _, Some(p6), Some(l6))
                if !p6.is_unique_local() && !l6.is_unique_local() =>
            {
                Some(b)
            }
            (a, ..) => a,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::wireguard::config::{DEFAULT_LISTEN_PORT, DEFAULT_LISTEN_PORT_V6};

    fn cfg(mode: Mode) -> WireguardConfig {
        WireguardConfig {
            listen_port: DEFAULT_LISTEN_PORT,
            listen_port_v6: DEFAULT_LISTEN_PORT_V6,
            psk: None,
            persistent_keepalive: 0,
            mode,
        }
    }

    fn names(d: &[DevicePlan]) -> Vec<(&str, u16, Underlay, bool, bool)> {
        d.iter()
            .map(|d| (d.name, d.port, d.underlay, d.v4, d.v6))
            .collect()
    }

    #[test]
    fn separate_mode_runs_one_device_per_family_on_its_own_port() {
        let c = cfg(Mode::Separate);
        assert_eq!(
            names(&devices(&c, true, true, true, true)),
            [
                ("flannel-wg", 51820, Underlay::V4, true, false),
                ("flannel-wg-v6", 51821, Underlay::V6, false, true)
            ]
        );
        assert_eq!(
            names(&devices(&c, true, false, true, true)),
            [("flannel-wg", 51820, Underlay::V4, true, false)]
        );
        // IPv6-only: only flannel-wg-v6.
        assert_eq!(
            names(&devices(&c, false, true, false, true)),
            [("flannel-wg-v6", 51821, Underlay::V6, false, true)]
        );
        assert_eq!(v6_data_port(&c), 51821);
    }

    #[test]
    fn single_device_modes_carry_both_families_on_listen_port() {
        for (mode, has, underlay) in [
            (Mode::Ipv4, (true, true), Underlay::V4),
            (Mode::Ipv6, (true, true), Underlay::V6),
            (Mode::Auto, (true, true), Underlay::Both),
            (Mode::Auto, (false, true), Underlay::V6),
            (Mode::Auto, (true, false), Underlay::V4),
        ] {
            let c = cfg(mode);
            assert_eq!(
                names(&devices(&c, true, true, has.0, has.1)),
                [("flannel-wg", 51820, underlay, true, true)],
                "{mode:?} {has:?}"
            );
            assert_eq!(v6_data_port(&c), 51820);
        }
    }

    #[test]
    fn auto_mode_picks_endpoints_as_flannel() {
        let ip4 = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        let ip6 = |s: &str| Some(s.parse::<Ipv6Addr>().unwrap());
        let v4 = |s: &str| Some(IpAddr::V4(s.parse().unwrap()));
        let v6 = |s: &str| Some(IpAddr::V6(s.parse().unwrap()));
        let auto = |p4, p6, l4, l6| endpoint_ip(Mode::Auto, p4, p6, l4, l6);
        let (l4, ula, global) = (ip4("172.31.0.11"), ip6("fd31::11"), ip6("2001:db8::11"));
        // Private IPv4 and ULA IPv6 (the lab): IPv4.
        assert_eq!(
            auto(ip4("172.31.0.12"), ip6("fd31::12"), l4, ula),
            v4("172.31.0.12")
        );
        // A public IPv4 always wins.
        assert_eq!(
            auto(ip4("198.51.100.2"), ip6("2001:db8::12"), l4, global),
            v4("198.51.100.2")
        );
        // Private IPv4, global IPv6 on both ends: IPv6.
        assert_eq!(
            auto(ip4("10.0.0.2"), ip6("2001:db8::12"), l4, global),
            v6("2001:db8::12")
        );
        // Only one family on the peer, or on us.
        assert_eq!(auto(None, ip6("fd31::12"), l4, ula), v6("fd31::12"));
        assert_eq!(auto(ip4("10.0.0.2"), None, l4, ula), v4("10.0.0.2"));
        assert_eq!(
            auto(ip4("10.0.0.2"), ip6("fd31::12"), None, ula),
            v6("fd31::12")
        );
        assert_eq!(auto(ip4("10.0.0.2"), None, None, ula), None);
        // The fixed modes take their family or nothing.
        assert_eq!(
            endpoint_ip(Mode::Ipv6, ip4("10.0.0.2"), ip6("fd31::12"), l4, ula),
            v6("fd31::12")
        );
        assert_eq!(
            endpoint_ip(Mode::Ipv6, ip4("10.0.0.2"), None, l4, ula),
            None
        );
        assert_eq!(
            endpoint_ip(Mode::Ipv4, ip4("10.0.0.2"), ip6("fd31::12"), l4, ula),
            v4("10.0.0.2")
        );
    }
}

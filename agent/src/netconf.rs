//! The network configuration at `<prefix>/config`, in Flannel's JSON format, with Flannel's
//! defaults and validation (pkg/subnet/config.go). Keys match case-insensitively, as Go's
//! encoding/json does.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

/// Which backend moves packets between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendType {
    HostGw,
    Vxlan,
    Udp,
    Wireguard,
}

impl BackendType {
    /// The name used in etcd (`BackendType` of a lease, `Backend.Type` of the config).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::HostGw => "host-gw",
            BackendType::Vxlan => "vxlan",
            BackendType::Udp => "udp",
            BackendType::Wireguard => "wireguard",
        }
    }
}

/// `Backend` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub kind: BackendType,
    /// vxlan VNI (default 1).
    pub vni: u32,
    /// UDP port: vxlan 8472, udp 8285 when 0/absent.
    pub port: u16,
    pub direct_routing: bool,
    /// vxlan: the Group Based Policy extension (Flannel's `GBP`), which peers must share.
    pub gbp: bool,
    /// vxlan: the device learns remote MACs from received packets (Flannel's `Learning`).
    pub learning: bool,
    /// Overrides the computed MTU when set (wireguard: the outer MTU, as Flannel's).
    pub mtu: Option<u32>,
    /// The wireguard backend's own fields (`Some` exactly when `kind` is wireguard).
    pub wireguard: Option<crate::backend::wireguard::config::WireguardConfig>,
}

/// A validated network configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `EnableIPv4` (default true). When false (IPv6-only), the four IPv4 fields below hold
    /// Flannel's zero values (`0.0.0.0/0`, 0, `0.0.0.0`) and no IPv4 subnet is leased.
    pub enable_ipv4: bool,
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    /// `EnableIPv6` with its `IPv6*` settings; `None` when IPv6 is off.
    pub ipv6: Option<Ipv6Config>,
    pub backend: BackendConfig,
    /// Set when `Backend` was absent (Flannel then uses udp): worth a warning.
    pub backend_defaulted: bool,
}

/// The IPv6 half of a dual-stack or IPv6-only network (`EnableIPv6: true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network`.
    pub network: Ipv6Net,
    /// `IPv6SubnetLen`: 64 when the network is /62 or shorter, else its prefix + 2.
    pub subnet_len: u8,
    /// `IPv6SubnetMin` (default: the second subnet) and `IPv6SubnetMax` (default: the last).
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    /// Every subnet between IPv6SubnetMin and IPv6SubnetMax, in order (lazily: a /48 of /64s
    /// has 65536).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        let shift = 128 - u32::from(self.subnet_len);
        let (lo, hi) = (
            u128::from(self.subnet_min) >> shift,
            u128::from(self.subnet_max) >> shift,
        );
        (lo..=hi)
            .filter_map(move |i| Ipv6Net::new(Ipv6Addr::from(i << shift), self.subnet_len).ok())
    }

    /// Whether `subnet` is a valid IPv6 lease for this configuration.
    pub fn fits(&self, subnet: Ipv6Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.trunc() == subnet
            && self.network.contains(&subnet)
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }

    /// Parses the `IPv6*` keys (Flannel's `CheckNetworkConfig` rules).
    fn parse(obj: &Map<String, Value>) -> Result<Ipv6Config, ConfigError> {
        let network: Ipv6Net = get_str(obj, "IPv6Network")?
            .ok_or_else(|| err("IPv6Network", "missing (required when EnableIPv6 is true)"))?
            .parse()
            .map_err(|_| err("IPv6Network", "not an IPv6 CIDR"))?;
        let network = network.trunc();
        if network.prefix_len() > 124 {
            return Err(err(
                "IPv6Network",
                format!("{network} is too small (longer than /124)"),
            ));
        }
        let plen = network.prefix_len();
        let subnet_len = match get_u64(obj, "IPv6SubnetLen")? {
            None | Some(0) => {
                if plen <= 62 {
                    64
                } else {
                    plen + 2
                }
            }
            Some(n) if n > 126 => {
                return Err(err("IPv6SubnetLen", format!("{n} is longer than 126")));
            }
            Some(n) if (n as u8) < plen + 2 => {
                return Err(err(
                    "IPv6SubnetLen",
                    format!(
                        "{n} leaves fewer than 4 subnets in {network} (must be at least {})",
                        plen + 2
                    ),
                ));
            }
            Some(n) => n as u8,
        };
        let shift = 128 - u32::from(subnet_len);
        let size = 1u128 << shift;
        let first = u128::from(network.network());
        let last_subnet = u128::from(network.broadcast()) - size + 1;
        let parse_bound = |field: &'static str, default: u128| -> Result<Ipv6Addr, ConfigError> {
            let Some(s) = get_str(obj, field)? else {
                return Ok(Ipv6Addr::from(default));
            };
            let ip: Ipv6Addr = s.parse().map_err(|_| {
                err(
                    field,
                    format!("{} is not an IPv6 address", crate::quote::quote(s)),
                )
            })?;
            if !network.contains(&ip) {
                return Err(err(field, format!("{ip} is outside IPv6Network {network}")));
            }
            if (u128::from(ip) - first) % size != 0 {
                return Err(err(
                    field,
                    format!("{ip} is not aligned to IPv6SubnetLen /{subnet_len}"),
                ));
            }
            Ok(ip)
        };
        let subnet_min = parse_bound("IPv6SubnetMin", first + size)?;
        let subnet_max = parse_bound("IPv6SubnetMax", last_subnet)?;
        if subnet_min > subnet_max {
            return Err(err(
                "IPv6SubnetMin",
                format!("{subnet_min} is above IPv6SubnetMax {subnet_max}"),
            ));
        }
        Ok(Ipv6Config {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
        })
    }
}

fn get_bool(obj: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ConfigError> {
    match get(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(err(
            key,
            format!("expected true or false, got {}", crate::quote::json(other)),
        )),
    }
}

/// Why a configuration was refused; names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("network config: {field}: {why}")]
pub struct ConfigError {
    pub field: &'static str,
    pub why: String,
}

fn err(field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        why: why.into(),
    }
}

/// Case-insensitive key look-up.
pub(crate) fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

pub(crate) fn get_str<'a>(
    obj: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match get(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(err(
            key,
            format!("expected a string, got {}", crate::quote::json(other)),
        )),
    }
}

pub(crate) fn get_u64(
    obj: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<u64>, ConfigError> {
    match get(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            err(
                key,
                format!(
                    "expected a non-negative integer, got {}",
                    crate::quote::json(v)
                ),
            )
        }),
    }
}

impl NetworkConfig {
    /// Parses and validates the JSON text of `<prefix>/config`.
    pub fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| err("(json)", e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err("(json)", "expected a JSON object"))?;
        let enable_ipv4 = get_bool(obj, "EnableIPv4")?.unwrap_or(true);
        let ipv6 = match get_bool(obj, "EnableIPv6")?.unwrap_or(false) {
            true => Some(Ipv6Config::parse(obj)?),
            false => None,
        };
        if !enable_ipv4 && ipv6.is_none() {
            return Err(err(
                "EnableIPv4",
                "false, and EnableIPv6 is not true: the network has no address family",
            ));
        }
        let (network, subnet_len, subnet_min, subnet_max) = if enable_ipv4 {
            Self::parse_ipv4(obj)?
        } else {
            (
                Ipv4Net::default(),
                0,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
            )
        };
        let (backend, backend_defaulted) = match get(obj, "Backend") {
            // Only a config without Backend runs udp (Flannel's parseBackendType). An explicit
            // `null` reaches Flannel as the text "null", whose Type is "": refused there.
            None => (
                BackendConfig {
                    kind: BackendType::Udp,
                    vni: 1,
                    port: 8285,
                    direct_routing: false,
                    gbp: false,
                    learning: false,
                    mtu: None,
                    wireguard: None,
                },
                true,
            ),
            Some(Value::Object(b)) => (parse_backend(b)?, false),
            Some(Value::Null) => {
                return Err(err(
                    "Backend",
                    format!(
                        "null: give an object with a Type ({BACKEND_TYPES}), or leave Backend out for udp"
                    ),
                ));
            }
            Some(other) => {
                return Err(err(
                    "Backend",
                    format!("expected an object, got {}", crate::quote::json(other)),
                ));
            }
        };
        if ipv6.is_some() && backend.kind == BackendType::Udp {
            return Err(err(
                "EnableIPv6",
                "the udp backend carries IPv4 only (as Flannel's): use vxlan or host-gw for IPv6",
            ));
        }
        Ok(NetworkConfig {
            enable_ipv4,
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            ipv6,
            backend,
            backend_defaulted,
        })
    }

    /// `Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`.
    fn parse_ipv4(
        obj: &Map<String, Value>,
    ) -> Result<(Ipv4Net, u8, Ipv4Addr, Ipv4Addr), ConfigError> {
        let network: Ipv4Net = get_str(obj, "Network")?
            .ok_or_else(|| err("Network", "missing"))?
            .parse()
            .map_err(|_| err("Network", "not an IPv4 CIDR"))?;
        let network = network.trunc();
        if network.prefix_len() > 28 {
            return Err(err(
                "Network",
                format!("{network} is too small (longer than /28)"),
            ));
        }
        let subnet_len = match get_u64(obj, "SubnetLen")? {
            None | Some(0) => {
                if network.prefix_len() <= 22 {
                    24
                } else {
                    network.prefix_len() + 2
                }
            }
            Some(n) if n > 30 => return Err(err("SubnetLen", format!("{n} is longer than 30"))),
            Some(n) if (n as u8) < network.prefix_len() + 2 => {
                return Err(err(
                    "SubnetLen",
                    format!(
                        "{n} leaves fewer than 4 subnets in {network} (must be at least {})",
                        network.prefix_len() + 2
                    ),
                ));
            }
            Some(n) => n as u8,
        };
        let size = 1u32 << (32 - subnet_len);
        let first = u32::from(network.network());
        let last_subnet = u32::from(network.broadcast()) - size + 1;
        let parse_bound = |field: &'static str, default: u32| -> Result<Ipv4Addr, ConfigError> {
            let Some(s) = get_str(obj, field)? else {
                return Ok(Ipv4Addr::from(default));
            };
            let ip: Ipv4Addr = s.parse().map_err(|_| {
                err(
                    field,
                    format!("{} is not an IPv4 address", crate::quote::quote(s)),
                )
            })?;
            let v = u32::from(ip);
            if !network.contains(&ip) {
                return Err(err(field, format!("{ip} is outside Network {network}")));
            }
            if (v - first) % size != 0 {
                return Err(err(
                    field,
                    format!("{ip} is not aligned to SubnetLen /{subnet_len}"),
                ));
            }
            Ok(ip)
        };
        // Flannel skips the first subnet by default.
        let subnet_min = parse_bound("SubnetMin", first + size)?;
        let subnet_max = parse_bound("SubnetMax", last_subnet)?;
        if u32::from(subnet_min) > u32::from(subnet_max) {
            return Err(err(
                "SubnetMin",
                format!("{subnet_min} is above SubnetMax {subnet_max}"),
            ));
        }
        Ok((network, subnet_len, subnet_min, subnet_max))
    }

    /// Every subnet between SubnetMin and SubnetMax, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        // IPv6-only: no IPv4 subnets (and a SubnetLen of 0 that must not be shifted by).
        let (lo, size, count) = if self.enable_ipv4 {
            let size = 1u32 << (32 - self.subnet_len);
            let lo = u32::from(self.subnet_min);
            (lo, size, (u32::from(self.subnet_max) - lo) / size + 1)
        } else {
            (0, 0, 0)
        };
        (0..count)
            .filter_map(move |i| Ipv4Net::new(Ipv4Addr::from(lo + i * size), self.subnet_len).ok())
    }

    /// The settings that differ from `other`, each as `Field old → new` (for log lines).
    pub fn differences(&self, other: &NetworkConfig) -> Vec<String> {
        let (a, b) = (&self.backend, &other.backend);
        let opt = |m: Option<u32>| m.map_or_else(|| "auto".to_string(), |m| m.to_string());
        let v6 = |c: &NetworkConfig| {
            c.ipv6.map_or_else(
                || ["off".to_string(), "-".into(), "-".into(), "-".into()],
                |v| {
                    [
                        v.network.to_string(),
                        v.subnet_len.to_string(),
                        v.subnet_min.to_string(),
                        v.subnet_max.to_string(),
                    ]
                },
            )
        };
        let [n6a, l6a, min6a, max6a] = v6(self);
        let [n6b, l6b, min6b, max6b] = v6(other);
        [
            (
                "EnableIPv4",
                self.enable_ipv4.to_string(),
                other.enable_ipv4.to_string(),
            ),
            ("IPv6Network", n6a, n6b),
            ("IPv6SubnetLen", l6a, l6b),
            ("IPv6SubnetMin", min6a, min6b),
            ("IPv6SubnetMax", max6a, max6b),
            (
                "Network",
                self.network.to_string(),
                other.network.to_string(),
            ),
            (
                "SubnetLen",
                self.subnet_len.to_string(),
                other.subnet_len.to_string(),
            ),
            (
                "SubnetMin",
                self.subnet_min.to_string(),
                other.subnet_min.to_string(),
            ),
            (
                "SubnetMax",
                self.subnet_max.to_string(),
                other.subnet_max.to_string(),
            ),
            (
                "Backend.Type",
                a.kind.as_str().into(),
                b.kind.as_str().into(),
            ),
            ("Backend.VNI", a.vni.to_string(), b.vni.to_string()),
            ("Backend.Port", a.port.to_string(), b.port.to_string()),
            (
                "Backend.DirectRouting",
                a.direct_routing.to_string(),
                b.direct_routing.to_string(),
            ),
            ("Backend.GBP", a.gbp.to_string(), b.gbp.to_string()),
            (
                "Backend.Learning",
                a.learning.to_string(),
                b.learning.to_string(),
            ),
            ("Backend.MTU", opt(a.mtu), opt(b.mtu)),
            (
                "Backend (wireguard)",
                a.wireguard
                    .as_ref()
                    .map(|w| w.summary())
                    .unwrap_or_default(),
                b.wireguard
                    .as_ref()
                    .map(|w| w.summary())
                    .unwrap_or_default(),
            ),
        ]
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(field, old, new)| format!("{field} {old} → {new}"))
        .chain(
            self.psk_rotated(other)
                .then(|| "Backend.PSK changed (values not shown)".into()),
        )
        .collect()
    }

    /// Whether both configs set a wireguard PSK and they differ: the summary says only "set",
    /// and a node that kept the old key cannot shake hands with restarted ones.
    fn psk_rotated(&self, other: &NetworkConfig) -> bool {
        let psk = |c: &NetworkConfig| c.backend.wireguard.as_ref().and_then(|w| w.psk);
        matches!((psk(self), psk(other)), (Some(a), Some(b)) if a != b)
    }

    /// Whether `subnet` is a valid lease for this configuration.
    pub fn fits(&self, subnet: Ipv4Net) -> bool {
        self.enable_ipv4
            && subnet.prefix_len() == self.subnet_len
            && self.network.contains(&subnet)
            && u32::from(subnet.network()) >= u32::from(self.subnet_min)
            && u32::from(subnet.network()) <= u32::from(self.subnet_max)
    }
}

/// The backends `Backend.Type` names, for messages.
const BACKEND_TYPES: &str = "host-gw, vxlan, udp or wireguard";

fn parse_backend(b: &Map<String, Value>) -> Result<BackendConfig, ConfigError> {
    // A Backend object without Type is refused, as by Flannel (its Type is "", an unknown
    // backend): running udp instead hid a misspelled key (`Typ`) behind a slow network.
    let Some(kind) = get_str(b, "Type").map_err(|e| err("Backend.Type", e.why))? else {
        // The keys it has show a misspelling (a config is not secret, its values may be).
        let keys: Vec<String> = b.keys().take(8).map(|k| crate::quote::quote(k)).collect();
        let has = match (keys.len(), b.len()) {
            (0, _) => "Backend is empty".to_string(),
            (n, all) if all > n => format!("Backend has {}, …", keys.join(", ")),
            _ => format!("Backend has {}", keys.join(", ")),
        };
        return Err(err(
            "Backend.Type",
            format!(
                "missing ({has}): set \"Type\" to {BACKEND_TYPES}; only a config without Backend runs udp"
            ),
        ));
    };
    // Flannel lowercases the type (`VXLAN` and `Host-GW` run there); so do we.
    let kind = match kind.to_ascii_lowercase().as_str() {
        "host-gw" => BackendType::HostGw,
        "vxlan" => BackendType::Vxlan,
        "udp" => BackendType::Udp,
        "wireguard" => BackendType::Wireguard,
        other => {
            return Err(err(
                "Backend.Type",
                format!(
                    "{} is not supported: use {BACKEND_TYPES}",
                    crate::quote::quote(other)
                ),
            ));
        }
    };
    let vni = get_u64(b, "VNI")?.unwrap_or(1);
    if vni > 0xff_ffff {
        return Err(err("Backend.VNI", format!("{vni} does not fit 24 bits")));
    }
    let port = get_u64(b, "Port")?.unwrap_or(0);
    if port > 65535 {
        return Err(err("Backend.Port", format!("{port} is not a port")));
    }
    let wireguard = match kind {
        BackendType::Wireguard => Some(crate::backend::wireguard::config::parse(b)?),
        _ => None,
    };
    let port = match (port, kind, &wireguard) {
        // Flannel's wireguard listens on ListenPort and ignores Port.
        (_, _, Some(wg)) => wg.listen_port,
        (0, BackendType::Udp, _) => 8285,
        (0, _, _) => 8472,
        (p, _, _) => p as u16,
    };
    let flag = |key: &str, field: &'static str| match get(b, key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(x)) => Ok(*x),
        Some(other) => Err(err(
            field,
            format!("expected true or false, got {}", crate::quote::json(other)),
        )),
    };
    let direct_routing = flag("DirectRouting", "Backend.DirectRouting")?;
    let gbp = flag("GBP", "Backend.GBP")?;
    let learning = flag("Learning", "Backend.Learning")?;
    let mtu = match get_u64(b, "MTU")? {
        None | Some(0) => None,
        Some(m) if (68..=65535).contains(&m) => Some(m as u32),
        Some(m) => {
            return Err(err(
                "Backend.MTU",
                format!("{m} is not between 68 and 65535"),
            ));
        }
    };
    Ok(BackendConfig {
        kind,
        vni: vni as u32,
        port,
        direct_routing,
        gbp,
        learning,
        mtu,
        wireguard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_defaults() {
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(
            c.subnet_min,
            Ipv4Addr::new(10, 5, 1, 0),
            "the first subnet is skipped"
        );
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 5, 255, 0));
        assert_eq!(
            c.backend,
            BackendConfig {
                kind: BackendType::Vxlan,
                vni: 1,
                port: 8472,
                direct_routing: false,
                gbp: false,
                learning: false,
                mtu: None,
                wireguard: None,
            }
        );
        assert_eq!(c.subnets().count(), 255);
        let c = NetworkConfig::parse(r#"{"network":"10.5.0.0/24","backend":{"type":"host-gw"}}"#)
            .unwrap();
        assert_eq!(
            c.subnet_len, 26,
            "prefix+2 for networks longer than /22; keys case-insensitive"
        );
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap();
        assert!(c.backend_defaulted);
        assert_eq!((c.backend.kind, c.backend.port), (BackendType::Udp, 8285));
    }

    #[test]
    fn a_backend_without_type_is_refused_as_by_flannel_and_only_a_missing_one_runs_udp() {
        // Before: a Backend object without Type (or with a misspelled key) silently ran udp.
        for (text, want) in [
            (
                r#"{"Network":"10.30.0.0/16","Backend":{"Typ":"vxlan","VNI":7}}"#,
                r#"network config: Backend.Type: missing (Backend has "Typ", "VNI"): set "Type" to host-gw, vxlan, udp or wireguard; only a config without Backend runs udp"#,
            ),
            (
                r#"{"Network":"10.30.0.0/16","Backend":{}}"#,
                r#"network config: Backend.Type: missing (Backend is empty): set "Type" to host-gw, vxlan, udp or wireguard; only a config without Backend runs udp"#,
            ),
            (
                r#"{"Network":"10.30.0.0/16","Backend":{"Type":null,"Port":8285}}"#,
                r#"network config: Backend.Type: missing (Backend has "Port", "Type"): set "Type" to host-gw, vxlan, udp or wireguard; only a config without Backend runs udp"#,
            ),
            (
                r#"{"Network":"10.30.0.0/16","Backend":{"Type":""}}"#,
                r#"network config: Backend.Type: "" is not supported: use host-gw, vxlan, udp or wireguard"#,
            ),
            (
                r#"{"Network":"10.30.0.0/16","Backend":{"Type":7}}"#,
                "network config: Backend.Type: expected a string, got 7",
            ),
            (
                r#"{"Network":"10.30.0.0/16","Backend":null}"#,
                "network config: Backend: null: give an object with a Type (host-gw, vxlan, udp or wireguard), or leave Backend out for udp",
            ),
        ] {
            let e = NetworkConfig::parse(text).unwrap_err();
            assert_eq!(e.to_string(), want, "{text}");
        }
        // No Backend at all: udp, as with Flannel (twilld warns).
        let c = NetworkConfig::parse(r#"{"Network":"10.30.0.0/16"}"#).unwrap();
        assert!(c.backend_defaulted);
        assert_eq!(c.backend.kind, BackendType::Udp);
        let c =
            NetworkConfig::parse(r#"{"Network":"10.30.0.0/16","backend":{"type":"UDP"}}"#).unwrap();
        assert!(!c.backend_defaulted);
        assert_eq!(c.backend.kind, BackendType::Udp);
    }

    #[test]
    fn a_rotated_wireguard_psk_is_a_change_and_its_values_are_not_shown() {
        let cfg = |psk: &str| {
            NetworkConfig::parse(&format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"wireguard","PSK":"{psk}"}}}}"#
            ))
            .unwrap()
        };
        let (a, b) = (
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "HxQVFhcYGRobHB0eHwABAgMEBQYHCAkKCwwNDg8QERI=",
        );
        let d = cfg(a).differences(&cfg(b));
        assert_eq!(d, ["Backend.PSK changed (values not shown)"]);
        assert!(cfg(a).differences(&cfg(a)).is_empty());
    }

    #[test]
    fn the_backend_type_is_read_in_any_case_as_flannel_does() {
        for (text, kind) in [
            ("VXLAN", BackendType::Vxlan),
            ("Host-GW", BackendType::HostGw),
            ("WireGuard", BackendType::Wireguard),
            ("UDP", BackendType::Udp),
        ] {
            let c = NetworkConfig::parse(&format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{text}"}}}}"#
            ))
            .unwrap();
            assert_eq!(c.backend.kind, kind, "{text}");
        }
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases = [
            ("{", "(json)"),
            ("[]", "(json)"),
            (r#"{"SubnetLen":24}"#, "Network"),
            (r#"{"Network":"banana"}"#, "Network"),
            (r#"{"Network":"10.5.0.0/29"}"#, "Network"),
            (r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#, "SubnetLen"),
            (r#"{"Network":"10.5.0.0/16","SubnetLen":17}"#, "SubnetLen"),
            (r#"{"Network":"10.5.0.0/16","SubnetLen":"24"}"#, "SubnetLen"),
            (
                r#"{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.0.7"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.3.0"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","PSK":"xx"}}"#,
                "Backend.PSK",
            ),
            (
                r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"wireguard","Mode":"dual"}}"#,
                "Backend.Mode",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":99999999}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
                "Backend.Port",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#,
                "Backend.DirectRouting",
            ),
            (r#"{"Network":"10.5.0.0/16","Backend":"vxlan"}"#, "Backend"),
        ];
        for (text, field) in cases {
            let e = NetworkConfig::parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    const V4: &str = r#""Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}"#;

    #[test]
    fn ipv6_defaults_follow_flannel() {
        let c = NetworkConfig::parse(&format!(
            r#"{{{V4},"EnableIPv6":true,"IPv6Network":"fd00:5::/56"}}"#
        ))
        .unwrap();
        assert!(c.enable_ipv4);
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64, "64 when the network is /62 or shorter");
        assert_eq!(v6.subnet_min, "fd00:5:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_max, "fd00:5:0:ff::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnets().count(), 255);
        assert!(v6.fits("fd00:5:0:7::/64".parse().unwrap()));
        assert!(
            !v6.fits("fd00:5::/64".parse().unwrap()),
            "the first is skipped"
        );
        assert!(!v6.fits("fd00:6::/64".parse().unwrap()));
        let c = NetworkConfig::parse(&format!(
            r#"{{{V4},"enableipv6":true,"ipv6network":"fd00:5::/120"}}"#
        ))
        .unwrap();
        assert_eq!(c.ipv6.unwrap().subnet_len, 122, "prefix + 2 beyond /62");
        let c = NetworkConfig::parse(&format!(
            r#"{{{V4},"EnableIPv6":false,"IPv6Network":"junk"}}"#
        ))
        .unwrap();
        assert_eq!(
            c.ipv6, None,
            "IPv6 keys are ignored while EnableIPv6 is off"
        );
        // A huge network: the subnet iterator stays lazy.
        let c = NetworkConfig::parse(&format!(
            r#"{{{V4},"EnableIPv6":true,"IPv6Network":"fd00::/8"}}"#
        ))
        .unwrap();
        assert_eq!(c.ipv6.unwrap().subnets().take(3).count(), 3);
    }

    #[test]
    fn ipv6_only_has_no_ipv4_subnets() {
        let c = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        assert!(!c.enable_ipv4);
        assert_eq!(c.subnets().count(), 0);
        assert!(!c.fits("10.5.1.0/24".parse().unwrap()));
        assert_eq!(c.ipv6.unwrap().subnet_len, 64);
    }

    #[test]
    fn bad_ipv6_configs_name_the_field() {
        let on = r#""EnableIPv6":true"#;
        let cases = [
            (format!(r#"{{{V4},{on}}}"#), "IPv6Network"),
            (format!(r#"{{{V4},{on},"IPv6Network":"10.0.0.0/8"}}"#), "IPv6Network"),
            (format!(r#"{{{V4},{on},"IPv6Network":"fd00::/125"}}"#), "IPv6Network"),
            (
                format!(r#"{{{V4},{on},"IPv6Network":"fd00::/56","IPv6SubnetLen":127}}"#),
                "IPv6SubnetLen",
            ),
            (
                format!(r#"{{{V4},{on},"IPv6Network":"fd00::/56","IPv6SubnetLen":57}}"#),
                "IPv6SubnetLen",
            ),
            (
                format!(r#"{{{V4},{on},"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::"}}"#),
                "IPv6SubnetMin",
            ),
            (
                format!(r#"{{{V4},{on},"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:1::8"}}"#),
                "IPv6SubnetMin",
            ),
            (
                format!(r#"{{{V4},{on},"IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:1::"}}"#),
                "IPv6SubnetMax",
            ),
            (
                format!(r#"{{{V4},{on},"IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:0:3::1"}}"#),
                "IPv6SubnetMax",
            ),
            (
                format!(r#"{{{V4},{on},"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::"}}"#),
                "IPv6SubnetMin",
            ),
            (
                format!(r#"{{{V4},{on},"IPv6Network":"fd00::/56","IPv6SubnetMax":"banana"}}"#),
                "IPv6SubnetMax",
            ),
            (format!(r#"{{{V4},"EnableIPv6":"yes"}}"#), "EnableIPv6"),
            (r#"{"EnableIPv4":false,"Network":"10.5.0.0/16"}"#.to_string(), "EnableIPv4"),
            (
                r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"udp"}}"#.to_string(),
                "EnableIPv6",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}"#.to_string(),
                "EnableIPv6",
            ),
        ];
        for (text, field) in cases {
            let e = NetworkConfig::parse(&text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        let e = NetworkConfig::parse(&format!(
            r#"{{{V4},"EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{{"Type":"udp"}}}}"#
        ))
        .unwrap_err();
        assert!(e.why.contains("udp"), "{e}");
    }

    #[test]
    fn vxlan_gbp_and_learning_are_read_and_their_changes_said() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","GBP":true,"learning":true}}"#,
        )
        .unwrap();
        assert!(c.backend.gbp && c.backend.learning);
        let plain = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert!(!plain.backend.gbp && !plain.backend.learning);
        let e = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","GBP":"yes"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Backend.GBP"), "{e}");
        let changes = plain.differences(&c).join("; ");
        assert!(
            changes.contains("Backend.GBP") && changes.contains("Backend.Learning"),
            "{changes}"
        );
    }
}

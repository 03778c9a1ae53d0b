//! Subnet leases as Flannel stores them: one key per node for both families,
//! `<prefix>/subnets/10.5.34.0-24` or, dual-stack, `10.5.34.0-24&fd00:5:0:22::-64`, and one value
//! `{"PublicIP":…,"PublicIPv6":…|null,"BackendType":…,"BackendData":…,"BackendV6Data":…}`.
//! IPv6-only leases (which Flannel's etcd mode cannot make without collisions) are keyed by the
//! IPv6 subnet alone, `fd00:5:0:22::-64`: a form Flannel's key pattern never matches, so a
//! Flannel node skips it instead of misreading it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Value, json};

use crate::netconf::BackendType;
use crate::quote::quote;

/// The subnets one lease key names: IPv4, IPv6 or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Subnets {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

impl From<Ipv4Net> for Subnets {
    fn from(v4: Ipv4Net) -> Subnets {
        Subnets {
            v4: Some(v4),
            v6: None,
        }
    }
}

impl fmt::Display for Subnets {
    /// `10.5.34.0/24`, `fd00::/64` or `10.5.34.0/24+fd00::/64` (for logs, not keys).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a}+{b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => f.write_str("(none)"),
        }
    }
}

impl Subnets {
    /// Each subnet as an `IpNet`: IPv4 first.
    pub fn nets(&self) -> impl Iterator<Item = ipnet::IpNet> + use<> {
        self.v4
            .map(ipnet::IpNet::V4)
            .into_iter()
            .chain(self.v6.map(ipnet::IpNet::V6))
    }

    /// The key suffix under `subnets/`: `10.5.34.0-24`, `10.5.34.0-24&fd00:5:0:22::-64`
    /// (Flannel's `MakeSubnetKey`: the IPv6 part lower-case and compressed), or the IPv6 part
    /// alone for an IPv6-only lease.
    pub fn key(&self) -> String {
        let v6 = self
            .v6
            .map(|n| format!("{}-{}", n.network(), n.prefix_len()));
        match (self.v4, v6) {
            (Some(a), Some(b)) => format!("{}-{}&{b}", a.network(), a.prefix_len()),
            (Some(a), None) => format!("{}-{}", a.network(), a.prefix_len()),
            (None, Some(b)) => b,
            (None, None) => String::new(),
        }
    }

    /// The subnets of a key (`…/subnets/10.5.34.0-24&fd00::-64`). Refuses anything twill would
    /// not write itself: host bits set, lengths out of range, an IPv6 part that is not in
    /// lower-case compressed form. Flannel's broken IPv6-only form `0.0.0.0-0&<v6>` reads as
    /// IPv6-only (its IPv4 part names no subnet).
    pub fn parse_key(key: &str) -> Option<Subnets> {
        let last = key.rsplit('/').next()?;
        let (v4, v6) = match last.split_once('&') {
            Some((a, b)) => (Some(a), Some(b)),
            None if last.contains(':') => (None, Some(last)),
            None => (Some(last), None),
        };
        let v4 = match v4 {
            None => None,
            Some(text) => {
                let (ip, len) = text.rsplit_once('-')?;
                let ip: Ipv4Addr = ip.parse().ok()?;
                let net = Ipv4Net::new(ip, digits(len)?).ok()?;
                if net.trunc() != net {
                    return None;
                }
                (net.prefix_len() != 0).then_some(net)
            }
        };
        let v6 = match v6 {
            None => None,
            Some(text) => {
                let (ip, len) = text.rsplit_once('-')?;
                let addr: Ipv6Addr = ip.parse().ok()?;
                if addr.to_string() != ip {
                    return None;
                }
                let net = Ipv6Net::new(addr, digits(len)?).ok()?;
                if net.trunc() != net || net.prefix_len() == 0 {
                    return None;
                }
                Some(net)
            }
        };
        (v4.is_some() || v6.is_some()).then_some(Subnets { v4, v6 })
    }
}

/// A prefix length written as plain decimal digits (no sign, no spaces).
fn digits(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The key suffix for an IPv4-only subnet: `10.5.34.0-24`.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    Subnets::from(subnet).key()
}

/// What a lease says about its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `0.0.0.0` in an IPv6-only lease (Flannel's zero value: the field is not optional).
    pub public_ip: Ipv4Addr,
    pub backend: BackendType,
    /// vxlan: the VTEP MAC (`BackendData.VtepMAC`).
    pub vtep_mac: Option<[u8; 6]>,
    pub vni: Option<u32>,
    /// `PublicIPv6` (JSON `null` when unset).
    pub public_ipv6: Option<Ipv6Addr>,
    /// vxlan over IPv6: the MAC of `flannel-v6.<VNI>` and its VNI (`BackendV6Data`).
    pub vtep_mac6: Option<[u8; 6]>,
    pub vni6: Option<u32>,
    /// wireguard: the public key and port (`BackendData`, written when IPv4 is on).
    pub wireguard: Option<crate::backend::wireguard::WireguardLease>,
    /// wireguard over IPv6: the public key and port (`BackendV6Data`, when IPv6 is on).
    pub wireguard6: Option<crate::backend::wireguard::WireguardLease>,
}

/// Why a lease value was skipped.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadLease(pub String);

/// The node a lease value names, read on its own: even a value twill cannot use (a backend it
/// does not know, a newer format) says whose it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
}

impl Claim {
    /// Whose `value` is: from its parsed `record` when that read (no second parse of every
    /// lease), else from the value's `PublicIP` and `PublicIPv6` alone.
    pub fn for_value(value: &[u8], record: &Result<LeaseRecord, BadLease>) -> Claim {
        match record {
            Ok(r) => Claim {
                public_ip: Some(r.public_ip).filter(|a| !a.is_unspecified()),
                public_ipv6: r.public_ipv6,
            },
            Err(_) => Claim::of(value),
        }
    }

    /// The `PublicIP` and `PublicIPv6` of `value` where they read; none for a value that is
    /// not a JSON object.
    pub fn of(value: &[u8]) -> Claim {
        let Ok(v) = serde_json::from_slice::<Value>(value) else {
            return Claim::default();
        };
        let ip = |field: &str| v.get(field).and_then(Value::as_str).map(str::to_string);
        Claim {
            public_ip: ip("PublicIP")
                .and_then(|s| s.parse().ok())
                .filter(|a: &Ipv4Addr| !a.is_unspecified()),
            public_ipv6: ip("PublicIPv6").and_then(|s| s.parse().ok()),
        }
    }
}

impl LeaseRecord {
    /// A value with only the IPv4 public address and the backend (no IPv6, no backend data).
    pub fn new(public_ip: Ipv4Addr, backend: BackendType) -> LeaseRecord {
        LeaseRecord {
            public_ip,
            backend,
            vtep_mac: None,
            vni: None,
            public_ipv6: None,
            vtep_mac6: None,
            vni6: None,
            wireguard: None,
            wireguard6: None,
        }
    }

    /// Parses a lease value. A missing BackendType means udp (Flannel's udp writes none);
    /// an unknown one is refused.
    pub fn parse(value: &[u8]) -> Result<LeaseRecord, BadLease> {
        let v: Value =
            serde_json::from_slice(value).map_err(|e| BadLease(format!("not JSON: {e}")))?;
        let ip = v
            .get("PublicIP")
            .and_then(Value::as_str)
            .ok_or_else(|| BadLease("PublicIP missing".into()))?;
        let public_ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| BadLease(format!("PublicIP {} is not IPv4", quote(ip))))?;
        let backend = match v.get("BackendType").and_then(Value::as_str) {
            None | Some("udp") => BackendType::Udp,
            Some("vxlan") => BackendType::Vxlan,
            Some("host-gw") => BackendType::HostGw,
            Some("wireguard") => BackendType::Wireguard,
            Some(other) => {
                return Err(BadLease(format!(
                    "BackendType {} is not one twill knows",
                    quote(other)
                )));
            }
        };
        let public_ipv6 = match v.get("PublicIPv6") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                s.parse::<Ipv6Addr>()
                    .map_err(|_| BadLease(format!("PublicIPv6 {} is not IPv6", quote(s))))?,
            ),
            Some(other) => {
                return Err(BadLease(format!(
                    "PublicIPv6 {} is not a string",
                    crate::quote::json(other)
                )));
            }
        };
        // Each backend reads only its own BackendData: another backend's fields (a lease
        // rewritten after a backend change) are not its business and never refuse the lease.
        let ((vtep_mac, vni), (vtep_mac6, vni6)) = match backend {
            BackendType::Vxlan => {
                let v4 = vxlan_data(v.get("BackendData"), "BackendData")?;
                let v6 = vxlan_data(v.get("BackendV6Data"), "BackendV6Data")?;
                if v4.0.is_none() && v6.0.is_none() {
                    return Err(BadLease(
                        "vxlan lease without BackendData.VtepMAC or BackendV6Data.VtepMAC".into(),
                    ));
                }
                (v4, v6)
            }
            _ => ((None, None), (None, None)),
        };
        let (wireguard, wireguard6) = match backend {
            BackendType::Wireguard => {
                use crate::backend::wireguard::WireguardLease;
                let data = |field: &str| {
                    v.get(field)
                        .filter(|d| !d.is_null())
                        .map(|d| WireguardLease::parse(Some(d), field))
                        .transpose()
                };
                let (v4, v6) = (data("BackendData")?, data("BackendV6Data")?);
                if v4.is_none() && v6.is_none() {
                    return Err(BadLease(
                        "wireguard lease without BackendData.PublicKey or BackendV6Data.PublicKey"
                            .into(),
                    ));
                }
                (v4, v6)
            }
            _ => (None, None),
        };
        Ok(LeaseRecord {
            public_ip,
            backend,
            vtep_mac,
            vni,
            public_ipv6,
            vtep_mac6,
            vni6,
            wireguard,
            wireguard6,
        })
    }

    /// The value as Flannel writes it (field order included).
    pub fn to_json(&self) -> String {
        // serde_json keeps insertion order only with preserve_order; build the text by hand.
        let v6 = match self.public_ipv6 {
            Some(ip) => format!("\"{ip}\""),
            None => "null".into(),
        };
        let mut s = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":{v6},"BackendType":"{}""#,
            self.public_ip,
            self.backend.as_str()
        );
        if self.backend == BackendType::Vxlan {
            if let Some(mac) = self.vtep_mac {
                s.push_str(&format!(
                    r#","BackendData":{}"#,
                    vxlan_data_json(self.vni, mac)
                ));
            }
            if let Some(mac) = self.vtep_mac6 {
                s.push_str(&format!(
                    r#","BackendV6Data":{}"#,
                    vxlan_data_json(self.vni6, mac)
                ));
            }
        }
        if let Some(wg) = &self.wireguard {
            s.push_str(&format!(r#","BackendData":{}"#, wg.to_json()));
        }
        if let Some(wg) = &self.wireguard6 {
            s.push_str(&format!(r#","BackendV6Data":{}"#, wg.to_json()));
        }
        s.push('}');
        s
    }
}

/// `{"VNI":1,"VtepMAC":"…"}` in Flannel's field order.
fn vxlan_data_json(vni: Option<u32>, mac: [u8; 6]) -> String {
    format!(
        r#"{{"VNI":{},"VtepMAC":{}}}"#,
        vni.unwrap_or(1),
        json!(twill_netkit::format_mac(&mac))
    )
}

/// VXLAN's identifiers are 24 bits wide.
const MAX_VNI: u64 = (1 << 24) - 1;

/// The VtepMAC and VNI of a `BackendData` / `BackendV6Data` object, if any.
fn vxlan_data(
    data: Option<&Value>,
    field: &str,
) -> Result<(Option<[u8; 6]>, Option<u32>), BadLease> {
    let mac = match data.and_then(|d| d.get("VtepMAC")).and_then(Value::as_str) {
        Some(m) => Some(
            twill_netkit::parse_mac(m)
                .ok_or_else(|| BadLease(format!("{field}.VtepMAC {} is not a MAC", quote(m))))?,
        ),
        None => None,
    };
    let vni = match data.and_then(|d| d.get("VNI")) {
        None | Some(Value::Null) => None,
        Some(n) => match n.as_u64() {
            Some(n) if n <= MAX_VNI => Some(n as u32),
            _ => {
                return Err(BadLease(format!(
                    "{field}.VNI {} is not a VNI (an integer from 0 to {MAX_VNI})",
                    crate::quote::json(n)
                )));
            }
        },
    };
    Ok((mac, vni))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_values_round_trip_byte_for_byte() {
        let vx = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let r = LeaseRecord::parse(vx.as_bytes()).unwrap();
        assert_eq!(r.backend, BackendType::Vxlan);
        assert_eq!(r.to_json(), vx);
        let hg = r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}"#;
        assert_eq!(LeaseRecord::parse(hg.as_bytes()).unwrap().to_json(), hg);
        let wg = r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"7xI5ye8tNq8CvhIXzpxERtIMPHYYK9NPvmPVO16A1H0=","Port":51820}}"#;
        let r = LeaseRecord::parse(wg.as_bytes()).unwrap();
        assert_eq!(r.wireguard.map(|w| w.port), Some(Some(51820)));
        assert_eq!(r.to_json(), wg);
        let old = r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"7xI5ye8tNq8CvhIXzpxERtIMPHYYK9NPvmPVO16A1H0="}}"#;
        let r = LeaseRecord::parse(old.as_bytes()).unwrap();
        assert_eq!(
            r.wireguard.map(|w| w.port),
            Some(None),
            "a lease from before Flannel's Port"
        );
        let udp = r#"{"PublicIP":"10.0.0.5","PublicIPv6":null}"#;
        assert_eq!(
            LeaseRecord::parse(udp.as_bytes()).unwrap().backend,
            BackendType::Udp
        );
    }

    #[test]
    fn corrupt_values_are_refused_with_a_reason() {
        for (v, want) in [
            ("garbage", "not JSON"),
            ("{}", "PublicIP missing"),
            (r#"{"PublicIP":"x"}"#, "not IPv4"),
            (r#"{"PublicIP":"10.0.0.1","BackendType":"ipip"}"#, "ipip"),
            (
                r#"{"PublicIP":"10.0.0.1","BackendType":"wireguard"}"#,
                "PublicKey",
            ),
            (
                r#"{"PublicIP":"10.0.0.1","BackendType":"wireguard","BackendData":{"PublicKey":"AAAA"}}"#,
                "32",
            ),
            (
                r#"{"PublicIP":"10.0.0.1","BackendType":"wireguard","BackendData":{"PublicKey":"7xI5ye8tNq8CvhIXzpxERtIMPHYYK9NPvmPVO16A1H0=","Port":99999}}"#,
                "not a port",
            ),
            (
                r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan"}"#,
                "VtepMAC",
            ),
            (
                r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VtepMAC":"zz"}}"#,
                "not a MAC",
            ),
            // Found by fuzzing: a VNI beyond 32 bits was cut to its low bits (here 1).
            (
                r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":4294967297,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
                "BackendData.VNI 4294967297 is not a VNI",
            ),
            (
                r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":"1","VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
                "not a VNI",
            ),
        ] {
            let e = LeaseRecord::parse(v.as_bytes()).unwrap_err();
            assert!(e.0.contains(want), "{v}: {e}");
        }
        let huge = format!(r#"{{"PublicIP":"{}"}}"#, "9".repeat(1 << 20));
        let e = LeaseRecord::parse(huge.as_bytes()).unwrap_err();
        assert!(
            e.0.len() < 200,
            "a 1 MB value is quoted short: {} bytes",
            e.0.len()
        );
    }

    #[test]
    fn other_backends_fields_are_ignored() {
        // Found by fuzzing: vxlan's fields were read from every lease, so a host-gw or
        // wireguard lease carrying a stale or odd VtepMAC was refused, or showed a VTEP.
        for v in [
            r#"{"PublicIP":"10.0.0.1","BackendType":"host-gw","BackendData":{"VtepMAC":"zz","VNI":-1}}"#,
            r#"{"PublicIP":"10.0.0.1","BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44","VNI":1}}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":"wireguard","BackendData":{"PublicKey":"7xI5ye8tNq8CvhIXzpxERtIMPHYYK9NPvmPVO16A1H0=","VtepMAC":"zz"}}"#,
        ] {
            let r = LeaseRecord::parse(v.as_bytes()).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!((r.vtep_mac, r.vni), (None, None), "{v}");
            assert_eq!(
                LeaseRecord::parse(r.to_json().as_bytes()),
                Ok(r.clone()),
                "{v}"
            );
        }
    }

    #[test]
    fn dual_stack_values_round_trip_byte_for_byte() {
        // What Flannel's vxlan writes on a dual-stack node.
        let vx = r#"{"PublicIP":"10.0.0.5","PublicIPv6":"fd00::5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"6a:1b:2c:3d:4e:5f"}}"#;
        let r = LeaseRecord::parse(vx.as_bytes()).unwrap();
        assert_eq!(r.public_ipv6, Some("fd00::5".parse().unwrap()));
        assert_eq!(r.vtep_mac6, Some([0x6a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        assert_eq!(r.vni6, Some(1));
        assert_eq!(r.to_json(), vx);
        let hg = r#"{"PublicIP":"10.0.0.5","PublicIPv6":"fd00::5","BackendType":"host-gw"}"#;
        assert_eq!(LeaseRecord::parse(hg.as_bytes()).unwrap().to_json(), hg);
        // IPv6-only: PublicIP is Flannel's zero value, no BackendData.
        let v6only = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::5","BackendType":"vxlan","BackendV6Data":{"VNI":7,"VtepMAC":"6a:1b:2c:3d:4e:5f"}}"#;
        let r = LeaseRecord::parse(v6only.as_bytes()).unwrap();
        assert_eq!((r.vtep_mac, r.vni6), (None, Some(7)));
        assert_eq!(r.to_json(), v6only);
    }

    #[test]
    fn corrupt_ipv6_fields_are_refused_with_a_reason() {
        for (v, want) in [
            (
                r#"{"PublicIP":"10.0.0.1","PublicIPv6":"10.0.0.1"}"#,
                "not IPv6",
            ),
            (r#"{"PublicIP":"10.0.0.1","PublicIPv6":7}"#, "not a string"),
            (
                r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendV6Data":{"VtepMAC":"nope"}}"#,
                "BackendV6Data.VtepMAC",
            ),
        ] {
            let e = LeaseRecord::parse(v.as_bytes()).unwrap_err();
            assert!(e.0.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn keys() {
        let n: Ipv4Net = "10.5.34.0/24".parse().unwrap();
        let n6: Ipv6Net = "fd00:12:13::/56".parse().unwrap();
        assert_eq!(subnet_key(n), "10.5.34.0-24");
        let dual = Subnets {
            v4: Some("10.12.13.0/24".parse().unwrap()),
            v6: Some(n6),
        };
        assert_eq!(
            dual.key(),
            "10.12.13.0-24&fd00:12:13::-56",
            "Flannel's exact form"
        );
        let v6only = Subnets {
            v4: None,
            v6: Some(n6),
        };
        assert_eq!(v6only.key(), "fd00:12:13::-56");
        for s in [Subnets::from(n), dual, v6only] {
            assert_eq!(
                Subnets::parse_key(&format!("/coreos.com/network/subnets/{}", s.key())),
                Some(s),
                "{s}"
            );
        }
        // Flannel's IPv6-only form names no IPv4 subnet.
        assert_eq!(
            Subnets::parse_key("/x/subnets/0.0.0.0-0&fd00:12:13::-56"),
            Some(v6only)
        );
    }

    #[test]
    fn corrupt_keys_are_refused() {
        for k in [
            "/x/subnets/10.5.34.1-24",
            "/x/subnets/junk",
            "/x/subnets/",
            "/x/subnets/10.5.34.0-33",
            "/x/subnets/10.5.34.0-+24",
            "/x/subnets/10.5.34.0-",
            "/x/subnets/10.5.34.0-24&",
            "/x/subnets/10.5.34.0-24&fd00::-",
            "/x/subnets/10.5.34.0-24&FD00:12:13::-56",
            "/x/subnets/10.5.34.0-24&fd00:12:13:0::-56",
            "/x/subnets/10.5.34.0-24&fd00:12:13::1-56",
            "/x/subnets/10.5.34.0-24&fd00:12:13::-129",
            "/x/subnets/10.5.34.0-24&10.5.35.0-24",
            "/x/subnets/fd00::-0",
            "/x/subnets/0.0.0.0-0",
            "/x/subnets/10.5.34.0-24&fd00::-56&fd01::-56",
        ] {
            assert_eq!(Subnets::parse_key(k), None, "{k}");
        }
    }
}

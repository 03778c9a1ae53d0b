//! Subnet leases as Flannel stores them: key `<prefix>/subnets/10.5.34.0-24`, value
//! `{"PublicIP":…,"PublicIPv6":null,"BackendType":…,"BackendData":…}`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::netconf::BackendType;
use crate::quote::quote;

/// The key suffix for a subnet: `10.5.34.0-24`.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// The subnet of a key (`…/subnets/10.5.34.0-24`); dual-stack keys (`&…`) keep their IPv4 part.
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Net> {
    let last = key.rsplit('/').next()?;
    let v4 = last.split('&').next()?;
    let (ip, len) = v4.rsplit_once('-')?;
    let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.trunc() == net).then_some(net)
}

/// What a lease says about its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub public_ip: Ipv4Addr,
    pub backend: BackendType,
    /// vxlan: the VTEP MAC.
    pub vtep_mac: Option<[u8; 6]>,
    pub vni: Option<u32>,
    /// wireguard: the public key and port.
    pub wireguard: Option<crate::backend::wireguard::WireguardLease>,
}

/// Why a lease value was skipped.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadLease(pub String);

impl LeaseRecord {
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
        let data = v.get("BackendData");
        let vtep_mac = match data.and_then(|d| d.get("VtepMAC")).and_then(Value::as_str) {
            Some(m) => Some(
                twill_netkit::parse_mac(m)
                    .ok_or_else(|| BadLease(format!("VtepMAC {} is not a MAC", quote(m))))?,
            ),
            None => None,
        };
        if backend == BackendType::Vxlan && vtep_mac.is_none() {
            return Err(BadLease("vxlan lease without BackendData.VtepMAC".into()));
        }
        let vni = data
            .and_then(|d| d.get("VNI"))
            .and_then(Value::as_u64)
            .map(|n| n as u32);
        let wireguard = match backend {
            BackendType::Wireguard => Some(crate::backend::wireguard::WireguardLease::parse(data)?),
            _ => None,
        };
        Ok(LeaseRecord {
            public_ip,
            backend,
            vtep_mac,
            vni,
            wireguard,
        })
    }

    /// The value as Flannel writes it (field order included).
    pub fn to_json(&self) -> String {
        // serde_json keeps insertion order only with preserve_order; build the text by hand.
        let mut s = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"{}""#,
            self.public_ip,
            self.backend.as_str()
        );
        if self.backend == BackendType::Vxlan {
            let data = json!({"VNI": self.vni.unwrap_or(1), "VtepMAC": self.vtep_mac.map(|m| twill_netkit::format_mac(&m)).unwrap_or_default()});
            s.push_str(&format!(
                r#","BackendData":{{"VNI":{},"VtepMAC":{}}}"#,
                data["VNI"], data["VtepMAC"]
            ));
        }
        if let Some(wg) = &self.wireguard {
            s.push_str(&format!(r#","BackendData":{}"#, wg.to_json()));
        }
        s.push('}');
        s
    }
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
    fn keys() {
        let n: Ipv4Net = "10.5.34.0/24".parse().unwrap();
        assert_eq!(subnet_key(n), "10.5.34.0-24");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.5.34.0-24"),
            Some(n)
        );
        assert_eq!(
            parse_subnet_key("/x/subnets/10.5.34.0-24&fd00::-56"),
            Some(n)
        );
        assert_eq!(parse_subnet_key("/x/subnets/10.5.34.1-24"), None);
        assert_eq!(parse_subnet_key("/x/subnets/junk"), None);
    }
}

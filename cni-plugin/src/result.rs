//! The ADD result, rendered in the shape of the requested CNI version, and read back from a
//! delegated IPAM plugin or a prevResult.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::config::Dns;
use crate::error::{CniError, CniResult, DECODE};
use crate::version;

/// One interface in the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The container's netns path; None for host interfaces.
    pub sandbox: Option<String>,
}

/// One assigned address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub interface: Option<usize>,
}

/// One route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
}

/// A CNI result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteSpec>,
    pub dns: Dns,
}

impl AddResult {
    /// Renders the result for `cni_version` (0.3.x/0.4.0 keep `ips[].version`; interface MTU
    /// only from 1.1.0).
    pub fn to_json(&self, cni_version: &str) -> Value {
        let old = version::has_ip_version_field(cni_version);
        let new_fields = version::at_least_1_1(cni_version);
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({"name": i.name, "mac": i.mac});
                if let Some(s) = &i.sandbox {
                    v["sandbox"] = json!(s);
                }
                if new_fields && let Some(m) = i.mtu {
                    v["mtu"] = json!(m);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({"address": ip.address.to_string()});
                if old {
                    v["version"] = json!("4");
                }
                if let Some(gw) = ip.gateway {
                    v["gateway"] = json!(gw.to_string());
                }
                if let Some(i) = ip.interface {
                    v["interface"] = json!(i);
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut v = json!({"dst": r.dst.to_string()});
                if let Some(gw) = r.gw {
                    v["gw"] = json!(gw.to_string());
                }
                v
            })
            .collect();
        let mut out = json!({"cniVersion": cni_version});
        if !interfaces.is_empty() {
            out["interfaces"] = json!(interfaces);
        }
        out["ips"] = json!(ips);
        if !routes.is_empty() {
            out["routes"] = json!(routes);
        }
        out["dns"] = serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({}));
        out
    }

    /// Reads a result of any supported version (IPAM plugin output or prevResult). IPv6
    /// entries are ignored: twill's data path is IPv4.
    pub fn from_json(v: &Value) -> CniResult<AddResult> {
        let bad = |what: &str| CniError::new(DECODE, format!("decoding CNI result: {what}"));
        let mut r = AddResult::default();
        if let Some(ifs) = v.get("interfaces").and_then(Value::as_array) {
            for i in ifs {
                r.interfaces.push(Interface {
                    name: i
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    mac: i
                        .get("mac")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                    sandbox: i.get("sandbox").and_then(Value::as_str).map(str::to_string),
                });
            }
        }
        for ip in v.get("ips").and_then(Value::as_array).into_iter().flatten() {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("ips[].address missing"))?;
            if addr.contains(':') {
                continue;
            }
            r.ips.push(IpConfig {
                address: addr
                    .parse()
                    .map_err(|_| bad(&format!("bad address {addr:?}")))?,
                gateway: match ip.get("gateway").and_then(Value::as_str) {
                    Some(g) => Some(g.parse().map_err(|_| bad(&format!("bad gateway {g:?}")))?),
                    None => None,
                },
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize),
            });
        }
        for rt in v
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let dst = rt
                .get("dst")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("routes[].dst missing"))?;
            if dst.contains(':') {
                continue;
            }
            r.routes.push(RouteSpec {
                dst: dst
                    .parse()
                    .map_err(|_| bad(&format!("bad route {dst:?}")))?,
                gw: match rt.get("gw").and_then(Value::as_str) {
                    Some(g) => Some(g.parse().map_err(|_| bad(&format!("bad route gw {g:?}")))?),
                    None => None,
                },
            });
        }
        if let Some(d) = v.get("dns") {
            r.dns = serde_json::from_value(d.clone()).unwrap_or_default();
        }
        Ok(r)
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "0a:58:0a:f4:07:01".into(),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "veth0a1b2c3d".into(),
                    mac: "0a:00:00:00:00:01".into(),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:00:00:00:00:02".into(),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/c1".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.7.2/24".parse().unwrap(),
                gateway: Some("10.244.7.1".parse().unwrap()),
                interface: Some(2),
            }],
            routes: vec![
                RouteSpec {
                    dst: "10.244.0.0/16".parse().unwrap(),
                    gw: Some("10.244.7.1".parse().unwrap()),
                },
                RouteSpec {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("10.244.7.1".parse().unwrap()),
                },
            ],
            dns: Dns::default(),
        }
    }

    const IFACES_NO_MTU: &str = r#"[{"name":"cni0","mac":"0a:58:0a:f4:07:01"},{"name":"veth0a1b2c3d","mac":"0a:00:00:00:00:01"},{"name":"eth0","mac":"0a:00:00:00:00:02","sandbox":"/var/run/netns/c1"}]"#;
    const ROUTES: &str =
        r#"[{"dst":"10.244.0.0/16","gw":"10.244.7.1"},{"dst":"0.0.0.0/0","gw":"10.244.7.1"}]"#;

    #[test]
    fn every_version_has_its_own_shape() {
        let r = sample();
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let want = format!(
                r#"{{"cniVersion":"{v}","interfaces":{IFACES_NO_MTU},"ips":[{{"address":"10.244.7.2/24","version":"4","gateway":"10.244.7.1","interface":2}}],"routes":{ROUTES},"dns":{{}}}}"#
            );
            assert_eq!(
                r.to_json(v),
                serde_json::from_str::<Value>(&want).unwrap(),
                "{v}"
            );
        }
        let want_10 = format!(
            r#"{{"cniVersion":"1.0.0","interfaces":{IFACES_NO_MTU},"ips":[{{"address":"10.244.7.2/24","gateway":"10.244.7.1","interface":2}}],"routes":{ROUTES},"dns":{{}}}}"#
        );
        assert_eq!(
            r.to_json("1.0.0"),
            serde_json::from_str::<Value>(&want_10).unwrap()
        );
        let want_11 = format!(
            r#"{{"cniVersion":"1.1.0","interfaces":[{{"name":"cni0","mac":"0a:58:0a:f4:07:01","mtu":1450}},{{"name":"veth0a1b2c3d","mac":"0a:00:00:00:00:01","mtu":1450}},{{"name":"eth0","mac":"0a:00:00:00:00:02","mtu":1450,"sandbox":"/var/run/netns/c1"}}],"ips":[{{"address":"10.244.7.2/24","gateway":"10.244.7.1","interface":2}}],"routes":{ROUTES},"dns":{{}}}}"#
        );
        assert_eq!(
            r.to_json("1.1.0"),
            serde_json::from_str::<Value>(&want_11).unwrap()
        );
        // What we render, we read back.
        for v in ["0.3.1", "1.0.0", "1.1.0"] {
            let back = AddResult::from_json(&r.to_json(v)).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.routes, r.routes);
        }
    }
}

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

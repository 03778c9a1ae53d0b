//! The ADD result, rendered in the shape of the requested CNI version, and read back from a
//! delegated IPAM plugin or a prevResult. Both address families: 0.3.0 and later carry every
//! address in `ips` (0.3.x/0.4.0 with `version` "4"/"6"), 0.1.0/0.2.0 one `ip4` and one `ip6`
//! object, each with the routes of its family.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

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
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

/// The kernel's main routing table, where a route goes without `table`.
pub const MAIN_TABLE: u32 = 254;

/// One route, with the fields CNI 1.1 added. A result of an older version has none of them,
/// yet an IPAM plugin may send them with any version (the reference types carry them in
/// every version), so they are read from every result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// The path MTU towards `dst`; passed on, not applied (as the reference bridge).
    pub mtu: Option<u32>,
    /// The MSS to advertise to `dst`; passed on, not applied (as the reference bridge).
    pub advmss: Option<u32>,
    /// The route's metric: lower wins.
    pub priority: Option<u32>,
    /// The routing table; the main table without it.
    pub table: Option<u32>,
    /// The scope of the destinations: 0 (global), 200 (site), 253 (link), 254 (host), or
    /// any other 8-bit value.
    pub scope: Option<u8>,
}

/// Route scope global (`RT_SCOPE_UNIVERSE`): beyond the link. The spec names this scope and
/// the two below; any other 8-bit scope is installed as given.
pub const SCOPE_GLOBAL: u8 = 0;
/// Route scope link: destinations on the link itself.
pub const SCOPE_LINK: u8 = 253;
/// Route scope host: destinations on the container itself.
pub const SCOPE_HOST: u8 = 254;

impl RouteSpec {
    /// A route to `dst` (via `gw`) without any of the CNI 1.1 fields.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> RouteSpec {
        RouteSpec {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    /// Whether the route goes into the main table (table 0 means the main table to the
    /// kernel too).
    pub fn in_main_table(&self) -> bool {
        self.table.is_none_or(|t| t == 0 || t == MAIN_TABLE)
    }

    /// Whether the route covers destinations beyond the link (global scope): only such a
    /// route takes its family's gateway when it names none; the kernel refuses a gateway on a
    /// link or host route.
    pub fn is_global(&self) -> bool {
        self.scope.is_none_or(|s| s == SCOPE_GLOBAL)
    }
}

/// A CNI result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteSpec>,
    pub dns: Dns,
}

/// A route as `new_fields` (1.1.0 and later) or an older version has it.
fn route_json(r: &RouteSpec, new_fields: bool) -> Value {
    let mut v = json!({"dst": r.dst.to_string()});
    if let Some(gw) = r.gw {
        v["gw"] = json!(gw.to_string());
    }
    if new_fields {
        let fields = [
            ("mtu", r.mtu),
            ("advmss", r.advmss),
            ("priority", r.priority),
            ("table", r.table),
            ("scope", r.scope.map(u32::from)),
        ];
        for (key, value) in fields {
            if let Some(n) = value {
                v[key] = json!(n);
            }
        }
    }
    v
}

impl AddResult {
    /// Renders the result for `cni_version` (0.1.0/0.2.0: `ip4`/`ip6`; 0.3.x/0.4.0 keep
    /// `ips[].version`; interface MTU only from 1.1.0).
    pub fn to_json(&self, cni_version: &str) -> Value {
        if version::has_ip4_ip6_objects(cni_version) {
            return self.to_json_020(cni_version);
        }
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
                    v["version"] = json!(if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    });
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
            .map(|r| route_json(r, new_fields))
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

    /// 0.1.0/0.2.0: the first address of each family as `ip4`/`ip6` (those versions hold one
    /// per family), each with the routes of its family; no interfaces.
    fn to_json_020(&self, cni_version: &str) -> Value {
        let mut out = json!({"cniVersion": cni_version});
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4) else {
                continue;
            };
            let mut obj = json!({"ip": ip.address.to_string()});
            if let Some(gw) = ip.gateway {
                obj["gateway"] = json!(gw.to_string());
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv4() == v4)
                .map(|r| route_json(r, false))
                .collect();
            if !routes.is_empty() {
                obj["routes"] = json!(routes);
            }
            out[key] = obj;
        }
        out["dns"] = serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({}));
        out
    }

    /// Reads a result of any supported version (IPAM plugin output or prevResult), both
    /// families: `ips` (0.3.0 and later) or `ip4`/`ip6` (0.1.0/0.2.0). A result is a JSON
    /// object, and each key read has the type the spec gives it (null is as good as absent,
    /// as to the reference types): anything else is a decode error naming the key, never a
    /// result with less in it than was sent.
    pub fn from_json(v: &Value) -> CniResult<AddResult> {
        if !v.is_object() {
            return Err(bad(&format!("a result is a JSON object, not {}", kind(v))));
        }
        let mut r = AddResult::default();
        for (n, i) in array(v, "", "interfaces")?.iter().enumerate() {
            let key = format!("interfaces[{n}]");
            if !i.is_object() {
                return Err(bad(&format!("{key} is {}, not an object", kind(i))));
            }
            r.interfaces.push(Interface {
                name: string(i, &key, "name")?.unwrap_or_default().to_string(),
                mac: string(i, &key, "mac")?.unwrap_or_default().to_string(),
                mtu: index(i, &key, "mtu")?
                    .map(|m| {
                        u32::try_from(m)
                            .map_err(|_| bad(&format!("{key}.mtu {m} is not a 32-bit number")))
                    })
                    .transpose()?,
                sandbox: string(i, &key, "sandbox")?.map(str::to_string),
            });
        }
        for (n, ip) in array(v, "", "ips")?.iter().enumerate() {
            let key = format!("ips[{n}]");
            if !ip.is_object() {
                return Err(bad(&format!("{key} is {}, not an object", kind(ip))));
            }
            let address = string(ip, &key, "address")?
                .ok_or_else(|| bad(&format!("{key}.address missing")))?;
            r.ips.push(IpConfig {
                address: parse_net("address", address)?,
                gateway: parse_gw(ip.get("gateway"), "gateway")?,
                interface: index(ip, &key, "interface")?
                    .map(|i| {
                        usize::try_from(i)
                            .map_err(|_| bad(&format!("{key}.interface {i} is too large")))
                    })
                    .transpose()?,
            });
        }
        for rt in array(v, "", "routes")? {
            r.routes.push(parse_route(rt)?);
        }
        // 0.1.0/0.2.0: one object per family, routes inside it.
        for key in ["ip4", "ip6"] {
            let obj = match v.get(key) {
                None | Some(Value::Null) => continue,
                Some(Value::Object(obj)) => obj,
                Some(other) => {
                    return Err(bad(&format!("{key} is {}, not an object", kind(other))));
                }
            };
            r.ips.push(legacy_ip(key, obj)?);
            for rt in array(&v[key], &format!("{key}."), "routes")? {
                r.routes.push(parse_route(rt)?);
            }
        }
        if let Some(d) = v.get("dns") {
            r.dns = serde_json::from_value(d.clone()).unwrap_or_default();
        }
        Ok(r)
    }

    /// The first address of the IPv4 (`v4`) or IPv6 family.
    pub fn first_of_family(&self, v4: bool) -> Option<&IpConfig> {
        self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4)
    }
}

fn bad(what: &str) -> CniError {
    CniError::new(DECODE, format!("decoding CNI result: {what}"))
}

/// What a JSON value is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `obj[key]` as an array (`at` is how the message names `obj`: "" or "ip4."); empty when
/// absent or null.
fn array<'a>(obj: &'a Value, at: &str, key: &str) -> CniResult<&'a [Value]> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(bad(&format!("{at}{key} is {}, not an array", kind(other)))),
    }
}

/// `obj[key]` as a string (`at` names `obj` in the message); None when absent or null.
fn string<'a>(obj: &'a Value, at: &str, key: &str) -> CniResult<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(&format!("{at}.{key} is {}, not a string", kind(other)))),
    }
}

/// `obj[key]` as an unsigned number; None when absent or null.
fn index(obj: &Value, at: &str, key: &str) -> CniResult<Option<u64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(&format!("{at}.{key} is {v}, not a number from 0 up"))),
    }
}

fn parse_net(field: &str, text: &str) -> CniResult<IpNet> {
    text.parse()
        .map_err(|_| bad(&format!("bad {field} {text:?}")))
}

fn parse_gw(v: Option<&Value>, field: &str) -> CniResult<Option<IpAddr>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(g)) => g
            .parse()
            .map(Some)
            .map_err(|_| bad(&format!("bad {field} {g:?}"))),
        Some(other) => Err(bad(&format!("{field} is {}, not a string", kind(other)))),
    }
}

fn parse_route(rt: &Value) -> CniResult<RouteSpec> {
    if !rt.is_object() {
        return Err(bad(&format!("a route is {}, not an object", kind(rt))));
    }
    let dst = string(rt, "routes[]", "dst")?.ok_or_else(|| bad("routes[].dst missing"))?;
    let uint = |key: &str| -> CniResult<Option<u32>> {
        match rt.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    bad(&format!(
                        "route to {dst} has {key} {v}, not an unsigned 32-bit number"
                    ))
                }),
        }
    };
    // Any 8-bit scope, as the reference types take it (`site` is 200).
    let scope = match uint("scope")? {
        None => None,
        Some(s) => Some(u8::try_from(s).map_err(|_| {
            bad(&format!(
                "route to {dst} has scope {s}: a route scope is a number from 0 to 255"
            ))
        })?),
    };
    // 0 is how the reference types leave mtu, advmss and priority out.
    let nonzero = |n: Option<u32>| n.filter(|&n| n != 0);
    let route = RouteSpec {
        dst: parse_net("route", dst)?,
        gw: parse_gw(rt.get("gw"), "route gw")?,
        mtu: nonzero(uint("mtu")?),
        advmss: nonzero(uint("advmss")?),
        priority: nonzero(uint("priority")?),
        table: uint("table")?,
        scope,
    };
    if route
        .gw
        .is_some_and(|g| g.is_ipv4() != route.dst.addr().is_ipv4())
    {
        return Err(bad(&format!(
            "route to {dst} has a gateway of the other family"
        )));
    }
    Ok(route)
}

fn legacy_ip(key: &str, obj: &Map<String, Value>) -> CniResult<IpConfig> {
    let text = obj
        .get("ip")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("{key}.ip missing")))?;
    let address = parse_net(&format!("{key}.ip"), text)?;
    if address.addr().is_ipv4() != (key == "ip4") {
        return Err(bad(&format!("{key}.ip {text:?} is of the other family")));
    }
    Ok(IpConfig {
        address,
        gateway: parse_gw(obj.get("gateway"), &format!("{key}.gateway"))?,
        interface: None,
    })
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
                RouteSpec::new(
                    "10.244.0.0/16".parse().unwrap(),
                    Some("10.244.7.1".parse().unwrap()),
                ),
                RouteSpec::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.244.7.1".parse().unwrap()),
                ),
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

    /// The sample with a second, IPv6 address and its routes.
    fn dual() -> AddResult {
        let mut r = sample();
        r.ips.push(IpConfig {
            address: "fd00:244:7::2/64".parse().unwrap(),
            gateway: Some("fd00:244:7::1".parse().unwrap()),
            interface: Some(2),
        });
        r.routes.insert(
            1,
            RouteSpec::new(
                "fd00:244::/32".parse().unwrap(),
                Some("fd00:244:7::1".parse().unwrap()),
            ),
        );
        r.routes.push(RouteSpec::new(
            "::/0".parse().unwrap(),
            Some("fd00:244:7::1".parse().unwrap()),
        ));
        r
    }

    const ROUTES_DUAL: &str = r#"[{"dst":"10.244.0.0/16","gw":"10.244.7.1"},{"dst":"fd00:244::/32","gw":"fd00:244:7::1"},{"dst":"0.0.0.0/0","gw":"10.244.7.1"},{"dst":"::/0","gw":"fd00:244:7::1"}]"#;

    #[test]
    fn dual_stack_in_every_version() {
        let r = dual();
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let want = format!(
                r#"{{"cniVersion":"{v}","interfaces":{IFACES_NO_MTU},"ips":[{{"address":"10.244.7.2/24","version":"4","gateway":"10.244.7.1","interface":2}},{{"address":"fd00:244:7::2/64","version":"6","gateway":"fd00:244:7::1","interface":2}}],"routes":{ROUTES_DUAL},"dns":{{}}}}"#
            );
            assert_eq!(r.to_json(v), parse(&want), "{v}");
        }
        let ips_10 = r#"[{"address":"10.244.7.2/24","gateway":"10.244.7.1","interface":2},{"address":"fd00:244:7::2/64","gateway":"fd00:244:7::1","interface":2}]"#;
        let want_10 = format!(
            r#"{{"cniVersion":"1.0.0","interfaces":{IFACES_NO_MTU},"ips":{ips_10},"routes":{ROUTES_DUAL},"dns":{{}}}}"#
        );
        assert_eq!(r.to_json("1.0.0"), parse(&want_10));
        let want_11 = format!(
            r#"{{"cniVersion":"1.1.0","interfaces":[{{"name":"cni0","mac":"0a:58:0a:f4:07:01","mtu":1450}},{{"name":"veth0a1b2c3d","mac":"0a:00:00:00:00:01","mtu":1450}},{{"name":"eth0","mac":"0a:00:00:00:00:02","mtu":1450,"sandbox":"/var/run/netns/c1"}}],"ips":{ips_10},"routes":{ROUTES_DUAL},"dns":{{}}}}"#
        );
        assert_eq!(r.to_json("1.1.0"), parse(&want_11));
        for v in ["0.1.0", "0.2.0"] {
            let want = format!(
                r#"{{"cniVersion":"{v}","ip4":{{"ip":"10.244.7.2/24","gateway":"10.244.7.1","routes":[{{"dst":"10.244.0.0/16","gw":"10.244.7.1"}},{{"dst":"0.0.0.0/0","gw":"10.244.7.1"}}]}},"ip6":{{"ip":"fd00:244:7::2/64","gateway":"fd00:244:7::1","routes":[{{"dst":"fd00:244::/32","gw":"fd00:244:7::1"}},{{"dst":"::/0","gw":"fd00:244:7::1"}}]}},"dns":{{}}}}"#
            );
            assert_eq!(r.to_json(v), parse(&want), "{v}");
        }
        // What we render, we read back, in every shape.
        for v in crate::version::SUPPORTED {
            let back = AddResult::from_json(&r.to_json(v)).unwrap();
            let mut want_routes = r.routes.clone();
            let mut got_routes = back.routes.clone();
            want_routes.sort_by_key(|x| x.dst.to_string());
            got_routes.sort_by_key(|x| x.dst.to_string());
            assert_eq!(got_routes, want_routes, "{v}");
            let addrs: Vec<IpNet> = back.ips.iter().map(|i| i.address).collect();
            assert_eq!(addrs, vec![r.ips[0].address, r.ips[1].address], "{v}");
        }
    }

    #[test]
    fn any_eight_bit_route_scope_is_taken_as_the_reference_types_take_it() {
        let r = AddResult::from_json(
            &serde_json::from_str(r#"{"routes":[{"dst":"10.0.0.0/8","scope":200}]}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(r.routes[0].scope, Some(200));
    }

    #[test]
    fn bad_results_are_decode_errors() {
        for bad in [
            r#"{"ips":[{"address":"fd00::zz/64"}]}"#,
            r#"{"ips":[{"address":"fd00::2/64","gateway":"fd00::x"}]}"#,
            r#"{"routes":[{"dst":"::/0","gw":"10.0.0.1"}]}"#,
            r#"{"ip6":{"ip":"10.0.0.2/24"}}"#,
            r#"{"ip4":{"gateway":"10.0.0.1"}}"#,
            r#"{"routes":[{"dst":"10.0.0.0/8","scope":256}]}"#,
            r#"{"routes":[{"dst":"10.0.0.0/8","table":-1}]}"#,
            r#"{"routes":[{"dst":"10.0.0.0/8","priority":"50"}]}"#,
        ] {
            let err = AddResult::from_json(&serde_json::from_str(bad).unwrap()).unwrap_err();
            assert_eq!(err.code, DECODE, "{bad}");
            assert!(
                err.msg.starts_with("decoding CNI result"),
                "{bad}: {}",
                err.msg
            );
        }
    }

    #[test]
    fn cni_1_1_route_fields_are_read_and_rendered_from_1_1_0() {
        let text = r#"{"cniVersion":"1.1.0","ips":[{"address":"10.95.0.5/24"}],"routes":[{"dst":"10.94.0.0/16","gw":"10.95.0.1","mtu":1400,"advmss":1360,"priority":50,"table":100,"scope":0},{"dst":"10.92.0.0/16","scope":253}]}"#;
        let r = AddResult::from_json(&serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(
            r.routes[0],
            RouteSpec {
                mtu: Some(1400),
                advmss: Some(1360),
                priority: Some(50),
                table: Some(100),
                scope: Some(SCOPE_GLOBAL),
                ..RouteSpec::new(
                    "10.94.0.0/16".parse().unwrap(),
                    Some("10.95.0.1".parse().unwrap())
                )
            }
        );
        assert_eq!(r.routes[1].scope, Some(SCOPE_LINK));
        let routes = |v: &str| r.to_json(v)["routes"].clone();
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(
            routes("1.1.0"),
            parse(
                r#"[{"dst":"10.94.0.0/16","gw":"10.95.0.1","mtu":1400,"advmss":1360,"priority":50,"table":100,"scope":0},{"dst":"10.92.0.0/16","scope":253}]"#
            )
        );
        // The fields are 1.1's: an older result has none of them.
        assert_eq!(
            routes("1.0.0"),
            parse(r#"[{"dst":"10.94.0.0/16","gw":"10.95.0.1"},{"dst":"10.92.0.0/16"}]"#)
        );
        assert_eq!(AddResult::from_json(&r.to_json("1.1.0")).unwrap(), r);
    }
}

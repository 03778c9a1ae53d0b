//! The network configuration on stdin: parsing, validation and defaults.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, CniResult, DECODE, INVALID_CONFIG};

/// Default bridge name, as the reference bridge plugin.
pub const DEFAULT_BRIDGE: &str = "cni0";
/// Default IPAM state directory, as host-local.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// Default directory of twill's own state (masquerade), outside the IPAM store. Under /run:
/// what it records (rules, attachments) does not survive a reboot either.
pub const DEFAULT_STATE_DIR: &str = "/run/twill-cni";
/// The state directory's name next to an explicitly configured `dataDir`.
const STATE_DIR_BESIDE_DATA_DIR: &str = "twill-cni";
/// Keys every network configuration must have.
const REQUIRED_KEYS: [&str; 3] = ["cniVersion", "name", "type"];

/// DNS settings, passed through to the result.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether any field is set: the reference bridge lets the configuration's DNS replace
    /// the IPAM plugin's only then.
    pub fn is_set(&self) -> bool {
        !self.nameservers.is_empty()
            || self.domain.as_deref().is_some_and(|d| !d.is_empty())
            || !self.search.is_empty()
            || !self.options.is_empty()
    }
}

/// One attachment named in a GC request.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// `runtimeConfig` capabilities twill reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    /// podman's `--ip`: a list of CIDRs or addresses.
    #[serde(default)]
    pub ips: Vec<String>,
}

/// The network configuration as given (all keys optional except the ones CNI requires).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub cni_versions: Vec<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    pub bridge: Option<String>,
    /// As given; 0 means not set, so read it through [`NetConf::mtu`].
    pub mtu: Option<u32>,
    pub subnet_file: Option<PathBuf>,
    pub is_gateway: Option<bool>,
    pub is_default_gateway: Option<bool>,
    pub ip_masq: Option<bool>,
    pub hairpin_mode: Option<bool>,
    pub data_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub dns: Option<Dns>,
    pub ipam: Option<Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Parses stdin. Malformed JSON or wrong types are decode errors (6), a config that
    /// parses but makes no sense is an invalid-config error (7).
    pub fn parse(stdin: &[u8]) -> CniResult<NetConf> {
        if stdin.iter().all(u8::is_ascii_whitespace) {
            return Err(CniError::new(
                DECODE,
                "no network configuration on stdin: the runtime must pass the network config as JSON",
            ));
        }
        // serde_path_to_error names the offending key ("mtu: invalid type …") or the object a
        // syntax error is in.
        let de = &mut serde_json::Deserializer::from_slice(stdin);
        let value: Value = serde_path_to_error::deserialize(de).map_err(decode_error)?;
        let Some(object) = value.as_object() else {
            return Err(CniError::new(
                DECODE,
                "decoding network configuration: not a JSON object",
            ));
        };
        // A missing required key is an invalid configuration (7), not a decode failure.
        let missing: Vec<&str> = REQUIRED_KEYS
            .into_iter()
            .filter(|k| object.get(*k).is_none_or(Value::is_null))
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!(
                    "invalid network configuration: required key {} missing",
                    missing.join(", ")
                ),
            ));
        }
        let conf: NetConf = serde_path_to_error::deserialize(value).map_err(decode_error)?;
        conf.validate()?;
        Ok(conf)
    }

    fn validate(&self) -> CniResult<()> {
        let name_ok = {
            let b = self.name.as_bytes();
            !b.is_empty()
                && b.len() <= 200
                && b[0].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
        };
        if !name_ok {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!(
                    "invalid network name {:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
                    self.name
                ),
            ));
        }
        if self.plugin_type.is_empty() || self.plugin_type.contains('/') {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!(
                    "invalid type {:?}: must be a plugin binary name without '/'",
                    self.plugin_type
                ),
            ));
        }
        if let Some(b) = &self.bridge {
            let ok = !b.is_empty()
                && b.len() <= twill_netkit::IFNAMSIZ_MAX
                && !b
                    .bytes()
                    .any(|c| c == b'/' || c == b':' || c.is_ascii_whitespace());
            if !ok {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    format!("invalid bridge name {b:?}"),
                ));
            }
        }
        if let Some(m) = self.mtu()
            && !(68..=65535).contains(&m)
        {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!("invalid mtu {m}: must be 68 to 65535"),
            ));
        }
        if let Some(ipam) = &self.ipam {
            if !ipam.is_object() {
                return Err(CniError::new(DECODE, "ipam must be a JSON object"));
            }
            if let Some(t) = ipam.get("type")
                && !t
                    .as_str()
                    .is_some_and(|s| !s.is_empty() && !s.contains('/'))
            {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    format!("invalid ipam.type {t}: must be a plugin binary name without '/'"),
                ));
            }
        }
        Ok(())
    }

    /// The delegated IPAM plugin, when `ipam.type` is set.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str()
    }

    /// The configured MTU. 0 is "not set", as the reference bridge reads it (Go's zero
    /// value) and Calico's conflists write it for "automatic".
    pub fn mtu(&self) -> Option<u32> {
        self.mtu.filter(|m| *m != 0)
    }

    /// Bridge name.
    pub fn bridge(&self) -> &str {
        self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)
    }

    /// The subnet file to read.
    pub fn subnet_file(&self) -> PathBuf {
        self.subnet_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(twill_netkit::subnet_env::DEFAULT_SUBNET_FILE))
    }

    /// The IPAM store's directory for this network.
    pub fn ipam_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
            .join(&self.name)
    }

    /// twill's own state for this network (masquerade): `stateDir`, else `twill-cni` next
    /// to an explicitly set `dataDir`, else under /run; never inside the IPAM store.
    pub fn state_dir(&self) -> PathBuf {
        let base = match (&self.state_dir, &self.data_dir) {
            (Some(s), _) => s.clone(),
            (None, Some(d)) => d
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| p.join(STATE_DIR_BESIDE_DATA_DIR))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            (None, None) => PathBuf::from(DEFAULT_STATE_DIR),
        };
        base.join(&self.name)
    }

    /// isDefaultGateway implies isGateway. Unset, it follows an explicit `isGateway`: with
    /// its own default (true) it would turn `"isGateway": false` back on.
    pub fn is_default_gateway(&self) -> bool {
        self.is_default_gateway
            .unwrap_or(self.is_gateway.unwrap_or(true))
    }

    /// Whether the bridge carries the gateway address.
    pub fn is_gateway(&self) -> bool {
        self.is_gateway.unwrap_or(true) || self.is_default_gateway()
    }

    /// Hairpin mode on the host veth.
    pub fn hairpin(&self) -> bool {
        self.hairpin_mode.unwrap_or(true)
    }

    /// The addresses the runtime asked for via runtimeConfig `ips` (CIDRs or addresses, at
    /// most one per family).
    pub fn runtime_ips(&self) -> CniResult<Vec<IpAddr>> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for entry in &self.runtime_config.ips {
            let ip = parse_ip_or_cidr(entry).ok_or_else(|| {
                CniError::new(
                    INVALID_CONFIG,
                    format!(
                        "invalid runtimeConfig.ips entry {entry:?}: not an IPv4 or IPv6 address"
                    ),
                )
            })?;
            if ips.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    format!(
                        "invalid runtimeConfig.ips {:?}: more than one address of a family",
                        self.runtime_config.ips
                    ),
                ));
            }
            ips.push(ip);
        }
        Ok(ips)
    }

    /// GC's list of attachments to keep (1.1 name, falling back to the 1.1.0 tag's name).
    pub fn gc_keep(&self) -> Vec<Attachment> {
        self.valid_attachments
            .clone()
            .or_else(|| self.attachments.clone())
            .unwrap_or_default()
    }
}

/// An address, or the address of a CIDR (runtimes pass either).
pub fn parse_ip_or_cidr(text: &str) -> Option<IpAddr> {
    if text.contains('/') {
        text.parse::<ipnet::IpNet>().ok().map(|n| n.addr())
    } else {
        text.parse().ok()
    }
}

/// A decode failure (6), naming the key or the object around it when known ("?" stands for
/// a key the parser had not read yet, truncated input, say).
fn decode_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> CniError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let known = path.trim_end_matches('?').trim_end_matches('.');
    let msg = if known.is_empty() {
        format!("decoding network configuration: {inner}")
    } else if path.ends_with('?') {
        format!("decoding network configuration: in {known}: {inner}")
    } else {
        format!("decoding network configuration: key {path}: {inner}")
    };
    CniError::new(DECODE, msg)
}

/// Parses an IPv4 CIDR field of the config, naming it in the error.
pub fn parse_cidr(field: &str, value: &str) -> CniResult<Ipv4Net> {
    value.parse().map_err(|_| {
        CniError::new(
            INVALID_CONFIG,
            format!("invalid {field} {value:?}: not an IPv4 CIDR"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"tw","type":"twill"}"#).unwrap();
        assert_eq!(c.bridge(), "cni0");
        assert!(c.is_gateway() && c.is_default_gateway() && c.hairpin());
        assert_eq!(c.ipam_dir(), PathBuf::from("/var/lib/cni/networks/tw"));
        assert!(c.ipam_type().is_none());
    }

    #[test]
    fn decode_errors_name_only_keys_that_exist() {
        let msg = |b: &[u8]| NetConf::parse(b).err().unwrap().msg;
        let truncated = msg(br#"{"cniVersion":"1.0.0","name":"t","type":"twill""#);
        assert!(!truncated.contains('?'), "{truncated}");
        assert!(
            truncated.starts_with("decoding network configuration: EOF"),
            "{truncated}"
        );
        let inner = msg(br#"{"cniVersion":"1.0.0","name":"t","type":"twill","ipam":{"type":"x","#);
        assert!(inner.contains("in ipam: EOF"), "{inner}");
        let bad_key = msg(br#"{"cniVersion":"1.0.0","name":"t","type":"twill","mtu":"big"}"#);
        assert!(bad_key.contains("key mtu: invalid type"), "{bad_key}");
    }

    #[test]
    fn bad_configs_get_the_right_codes() {
        let cases: [(&[u8], u32, &str); 14] = [
            (b"", DECODE, "no network configuration"),
            (b"{not json", DECODE, "decoding"),
            (b"[1,2]", DECODE, "not a JSON object"),
            (
                br#"{"cniVersion":"1.0.0","name":"tw"}"#,
                INVALID_CONFIG,
                "type",
            ),
            (
                br#"{"cniVersion":"1.0.0","type":"twill"}"#,
                INVALID_CONFIG,
                "name",
            ),
            (
                br#"{"name":"tw","type":"twill"}"#,
                INVALID_CONFIG,
                "cniVersion",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":null,"type":"twill"}"#,
                INVALID_CONFIG,
                "name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"tw","type":"a/b"}"#,
                INVALID_CONFIG,
                "type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"tw","type":"twill","mtu":"big"}"#,
                DECODE,
                "mtu",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"../x","type":"twill"}"#,
                INVALID_CONFIG,
                "network name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"tw","type":"twill","mtu":10}"#,
                INVALID_CONFIG,
                "mtu",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"tw","type":"twill","bridge":"a/b"}"#,
                INVALID_CONFIG,
                "bridge",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"tw","type":"twill","ipam":{"type":"../evil"}}"#,
                INVALID_CONFIG,
                "ipam.type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"tw","type":"twill","ipam":[]}"#,
                DECODE,
                "ipam",
            ),
        ];
        for (input, code, want) in cases {
            let err = NetConf::parse(input).unwrap_err();
            assert_eq!(
                err.code,
                code,
                "{}: {}",
                String::from_utf8_lossy(input),
                err.msg
            );
            assert!(
                err.msg.contains(want),
                "{}: {}",
                String::from_utf8_lossy(input),
                err.msg
            );
        }
    }
}

#[cfg(test)]
mod mutation_tests {
    //! A cheap, deterministic fuzz: thousands of byte-level mutations of valid inputs must
    //! produce an answer or an error, never a panic.
    use super::NetConf;
    use crate::ipam::store::parse_owner;
    use crate::result::AddResult;

    fn mutations(seed: &[u8], rounds: usize, mut f: impl FnMut(&[u8])) {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"{}[]\":,0123456789.-/ \\nulltruefalse\x00\xff";
        for _ in 0..rounds {
            let mut buf = seed.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let pos = (next() as usize) % (buf.len() + 1);
                match next() % 3 {
                    0 if pos < buf.len() => buf[pos] = alphabet[(next() as usize) % alphabet.len()],
                    1 if pos < buf.len() => {
                        buf.remove(pos);
                    }
                    _ => buf.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            f(&buf);
        }
    }

    #[test]
    fn mutated_configs_and_results_never_panic() {
        let conf = br#"{"cniVersion":"1.0.0","name":"tw","type":"twill","mtu":1450,"ipam":{"type":"host-local"},"runtimeConfig":{"ips":["10.1.2.3/24"]},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        mutations(conf, 20_000, |b| {
            if let Ok(c) = NetConf::parse(b) {
                let _ = c.runtime_ips();
                let _ = c.gc_keep();
            }
        });
        let result = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"aa","sandbox":"/x"}],"ips":[{"address":"10.1.2.3/24","gateway":"10.1.2.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"10.1.2.1"}],"dns":{}}"#;
        mutations(result, 20_000, |b| {
            if let Ok(v) = serde_json::from_slice(b) {
                let _ = AddResult::from_json(&v);
            }
        });
        mutations(b"container-1\r\neth0", 5_000, |b| {
            let _ = parse_owner(&String::from_utf8_lossy(b));
        });
        let env = b"FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        mutations(env, 20_000, |b| {
            let _ = twill_netkit::subnet_env::SubnetEnv::parse(&String::from_utf8_lossy(b));
        });
    }
}

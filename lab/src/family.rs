//! Which IP families a lab's pod network has (`up --ip-family`): the network config twilld
//! reads from etcd, and which of a container's addresses each family's checks use.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The pod network's families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpFamily {
    /// IPv4 only (Flannel's default).
    #[default]
    Ipv4,
    /// IPv6 only (`EnableIPv4: false`).
    Ipv6,
    /// Both: every container has an IPv4 and an IPv6 address.
    Dual,
}

/// The lab's IPv6 pod network (a ULA /56: /64 per host).
pub const DEFAULT_NETWORK6: &str = "fd42:244::/56";

impl IpFamily {
    /// Its name on the command line (`dual`).
    pub fn cli_name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    pub fn has_v4(self) -> bool {
        self != IpFamily::Ipv6
    }

    pub fn has_v6(self) -> bool {
        self != IpFamily::Ipv4
    }

    /// The `<prefix>/config` value for `backend` (twilld's name) over these families.
    pub fn network_config(self, network: &str, network6: &str, backend: &str) -> Value {
        let mut config = json!({"Network": network, "Backend": {"Type": backend}});
        if self.has_v6() {
            config["EnableIPv6"] = json!(true);
            config["IPv6Network"] = json!(network6);
        }
        if !self.has_v4() {
            config["EnableIPv4"] = json!(false);
        }
        config
    }
}

/// A container's address of one family among those `twill-run inspect` lists.
pub fn address_of(ips: &[String], v6: bool) -> Option<String> {
    ips.iter()
        .map(|ip| ip.split('/').next().unwrap_or(ip))
        .find(|ip| ip.contains(':') == v6)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_per_family_are_flannels_keys() {
        let c = IpFamily::Ipv4.network_config("10.244.0.0/16", DEFAULT_NETWORK6, "vxlan");
        assert_eq!(
            c,
            json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
        );
        let c = IpFamily::Dual.network_config("10.244.0.0/16", DEFAULT_NETWORK6, "host-gw");
        assert_eq!(c["EnableIPv6"], true);
        assert_eq!(c["IPv6Network"], "fd42:244::/56");
        assert!(c.get("EnableIPv4").is_none());
        let c = IpFamily::Ipv6.network_config("10.244.0.0/16", DEFAULT_NETWORK6, "vxlan");
        assert_eq!(c["EnableIPv4"], false);
        assert_eq!(c["EnableIPv6"], true);
    }

    #[test]
    fn addresses_are_picked_by_family_without_their_prefix() {
        let ips = vec![
            "10.244.1.2/24".to_string(),
            "fd42:244:0:1::2/64".to_string(),
        ];
        assert_eq!(address_of(&ips, false).as_deref(), Some("10.244.1.2"));
        assert_eq!(address_of(&ips, true).as_deref(), Some("fd42:244:0:1::2"));
        assert_eq!(address_of(&ips[..1], true), None);
        assert_eq!(
            address_of(&["10.0.0.1".to_string()], false).as_deref(),
            Some("10.0.0.1")
        );
    }
}

//! The agent's nftables table `ip twill`: forwarding of the pod network accepted, and with
//! `--ip-masq`, Flannel's masquerade rules. Replaced whole on every reconcile.

use ipnet::Ipv4Net;
use twill_netkit::firewall::{Chain, Family, Hook, Rule, Table};

/// The table twilld owns.
pub const TABLE: &str = "twill";

/// The desired table for `network` with this node's `subnet`.
pub fn table(network: Ipv4Net, subnet: Ipv4Net, ip_masq: bool) -> Table {
    let mut post = Vec::new();
    if ip_masq {
        post = vec![
            Rule::new(
                "meta mark & 0x4000 == 0x4000 return",
                "twilld: kube-proxy marked, it masquerades",
            ),
            Rule::new(
                format!("ip saddr {network} ip daddr {network} return"),
                "twilld: inside the overlay",
            ),
            Rule::new(
                format!("ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random"),
                "twilld: pods to the outside",
            ),
            Rule::new(
                format!("ip saddr != {network} ip daddr {subnet} return"),
                "twilld: outside to local pods",
            ),
            Rule::new(
                format!("ip saddr != {network} ip daddr {network} masquerade fully-random"),
                "twilld: outside to remote pods",
            ),
        ];
    }
    Table {
        family: Family::Ip,
        name: TABLE.into(),
        chains: vec![
            Chain {
                name: "postrouting".into(),
                hook: Some(Hook::nat_postrouting()),
                rules: post,
            },
            Chain {
                name: "forward".into(),
                hook: Some(Hook {
                    kind: "filter",
                    hook: "forward",
                    priority: 0,
                    policy: "accept",
                }),
                rules: vec![
                    Rule::new(format!("ip saddr {network} accept"), "twilld forward"),
                    Rule::new(format!("ip daddr {network} accept"), "twilld forward"),
                ],
            },
        ],
    }
}

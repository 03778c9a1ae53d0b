//! Masquerade for containers (`ipMasq`): one nftables table per network, rebuilt whole from
//! the IPAM store under its lock. Rules follow the allocations, never live addresses, so a
//! DEL after the netns is gone still removes them (the reference plugin leaks them there).

use ipnet::Ipv4Net;
use twill_netkit::firewall::{Chain, Family, Hook, Rule, Table};

use crate::error::{CniError, CniResult, INTERNAL};
use crate::ipam::store::Allocation;

/// The table name for network `name`.
pub fn table_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("twill-cni-{clean}")
}

/// Replaces the network's masquerade table with one rule per allocation: traffic from the
/// container to anywhere outside `network` (and not multicast) is masqueraded.
pub fn sync(name: &str, network: Ipv4Net, allocations: &[Allocation]) -> CniResult<()> {
    let rules = allocations
        .iter()
        .map(|a| {
            Rule::new(
                format!(
                    "ip saddr {} ip daddr != {network} ip daddr != 224.0.0.0/4 masquerade",
                    a.ip
                ),
                format!("name: {name} id: {}", a.container_id),
            )
        })
        .collect();
    let table = Table {
        family: Family::Ip,
        name: table_name(name),
        chains: vec![Chain {
            name: "postrouting".into(),
            hook: Some(Hook::nat_postrouting()),
            rules,
        }],
    };
    table.apply().map_err(|e| {
        CniError::new(
            INTERNAL,
            format!("updating masquerade rules of network {name}: {e}"),
        )
    })
}

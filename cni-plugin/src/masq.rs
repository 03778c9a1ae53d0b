//! Masquerade for containers (`ipMasq`): one nftables table per network holding one rule for
//! the node's whole container subnet: traffic from it to anywhere outside the overlay network
//! (and not multicast) is masqueraded.
//!
//! The rule depends only on the subnet file, never on individual containers, so DEL has
//! nothing to tear down and cannot leak rules (the reference plugin leaks per-container rules
//! when the netns is gone, plugins#810), and a steady-state ADD costs no `nft` run: the
//! applied table is remembered in the IPAM directory and re-applied only when it changes.

use std::path::Path;

use ipnet::Ipv4Net;
use twill_netkit::firewall::{Chain, Family, Hook, Rule, Table};

use crate::error::{CniError, CniResult, INTERNAL};

/// File in the IPAM directory holding the last table applied.
const APPLIED_MARKER: &str = "masq.nft";

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

/// The desired table for network `name` with container subnet `subnet` in overlay `network`.
pub fn table(name: &str, subnet: Ipv4Net, network: Ipv4Net) -> Table {
    Table {
        family: Family::Ip,
        name: table_name(name),
        chains: vec![Chain {
            name: "postrouting".into(),
            hook: Some(Hook::nat_postrouting()),
            rules: vec![Rule::new(
                format!(
                    "ip saddr {subnet} ip daddr != {network} ip daddr != 224.0.0.0/4 masquerade"
                ),
                format!("twill-cni: {name}"),
            )],
        }],
    }
}

/// Makes sure the masquerade table is in place; `force` re-applies even when the marker in
/// `ipam_dir` says it already is (CHECK uses that to repair a flushed ruleset).
pub fn ensure(
    name: &str,
    subnet: Ipv4Net,
    network: Ipv4Net,
    ipam_dir: &Path,
    force: bool,
) -> CniResult<()> {
    let t = table(name, subnet, network);
    let script = t
        .render()
        .map_err(|e| CniError::new(INTERNAL, e.to_string()))?;
    let marker = ipam_dir.join(APPLIED_MARKER);
    if !force && std::fs::read_to_string(&marker).is_ok_and(|m| m == script) {
        return Ok(());
    }
    t.apply().map_err(|e| {
        CniError::new(
            INTERNAL,
            format!("installing masquerade rules of network {name}: {e}"),
        )
    })?;
    // Only a cache: failing to write it costs one more nft run next time.
    let _ = std::fs::write(&marker, script);
    Ok(())
}

//! Masquerade for containers (`ipMasq`): one nftables table per network for both families
//! (`inet twill-cni-<name>`) with one rule per container subnet: traffic from the subnet to
//! anywhere outside its excluded network (the overlay network, or the subnet itself) and not
//! multicast is masqueraded. A twill before dual stack kept an `ip` table of the same name;
//! it is removed when the `inet` one first replaces it.
//!
//! Rules are per subnet, never per container, so a steady-state ADD runs no `nft` at all. Which
//! attachment uses which subnet is recorded in twill's own state directory (never in the IPAM
//! store): ADD records its attachment, DEL and GC forget theirs, and when the last attachment
//! of a subnet is gone its rule goes too (the table when no rule is left). Forgetting needs
//! only (container ID, ifname), so DEL cleans up also when the namespace is gone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use twill_netkit::firewall::{self, Chain, Family, Hook, Rule, Table};

use crate::config::Attachment;
use crate::error::{CniError, CniResult, INTERNAL, IO_FAILURE};
use crate::lockfile::lock_exclusive;

/// The state file in `<stateDir>/<name>/`.
const STATE_FILE: &str = "masq.json";
/// Where twill before 0.2 kept the applied table: inside the IPAM store.
const LEGACY_MARKER: &str = "masq.nft";

/// What one masquerade rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MasqRule {
    /// Source subnet (network address, prefix length).
    pub subnet: IpNet,
    /// Destinations that are not masqueraded (of the subnet's family).
    pub excluded: IpNet,
}

impl MasqRule {
    /// A rule for `subnet` (truncated to its network address) excluding `excluded`.
    pub fn new(subnet: IpNet, excluded: IpNet) -> MasqRule {
        MasqRule {
            subnet: subnet.trunc(),
            excluded: excluded.trunc(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
    rule: MasqRule,
}

impl MasqRule {
    /// The nft expression: `ip` or `ip6` matches by the subnet's family.
    fn expr(&self) -> String {
        let (fam, multicast) = match self.subnet {
            IpNet::V4(_) => ("ip", "224.0.0.0/4"),
            IpNet::V6(_) => ("ip6", "ff00::/8"),
        };
        format!(
            "{fam} saddr {} {fam} daddr != {} {fam} daddr != {multicast} masquerade",
            self.subnet, self.excluded
        )
    }
}

impl Recorded {
    /// Whether this records attachment (`id`, `ifname`).
    fn is(&self, id: &str, ifname: &str) -> bool {
        self.container_id == id && self.ifname == ifname
    }
}

/// The state file: who uses which rule, and the script last applied (in this boot).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    boot_id: String,
    attachments: Vec<Recorded>,
    applied: String,
}

/// The table name earlier versions gave network `name`: other characters mapped to `_`, cut
/// at 48, so `pods.v4` and `pods_v4`, or two long names alike at the start, shared a table.
fn legacy_table_name(name: &str) -> String {
    format!("twill-cni-{}", clean(name, 48))
}

fn clean(name: &str, max: usize) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

/// The table name for network `name`: `twill-cni-<name>` when the name fits as it is (as
/// before), else its cleaned start and a hash of the whole name, so no two networks share one.
pub fn table_name(name: &str) -> String {
    if clean(name, usize::MAX) == name && name.len() <= 48 {
        return legacy_table_name(name);
    }
    // FNV-1a: stable across versions and builds (std's hasher is not).
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("twill-cni-{}-{hash:08x}", clean(name, 39))
}

/// The desired table for network `name` with one rule per entry of `rules`.
pub fn table(name: &str, rules: &BTreeSet<MasqRule>) -> Table {
    Table {
        family: Family::Inet,
        name: table_name(name),
        chains: vec![Chain {
            name: "postrouting".into(),
            hook: Some(Hook::nat_postrouting()),
            rules: rules
                .iter()
                .map(|r| Rule::new(r.expr(), format!("twill-cni: {name}")))
                .collect(),
        }],
    }
}

/// Which kernel state the recorded state describes: this boot's ID and the inode of the
/// network namespace the plugin runs in. Rules die with either, and a state directory shared
/// by mistake between namespaces must not make one skip applying its table.
fn boot_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or_default();
    format!("{} {netns}", boot.trim())
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::new(IO_FAILURE, format!("{op} {}: {e}", path.display()))
}

/// The masquerade state of one network, in `<stateDir>/<name>/`.
#[derive(Debug)]
pub struct Masq {
    name: String,
    dir: PathBuf,
}

impl Masq {
    /// The state of network `name` in `dir` (created on first use).
    pub fn new(name: &str, dir: PathBuf) -> Masq {
        Masq {
            name: name.to_string(),
            dir,
        }
    }

    fn load(&self, boot: &str) -> CniResult<State> {
        let path = self.dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<State>(&b).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err("reading", &path, e)),
        };
        // After a reboot the rules and the containers are gone: start over.
        if state.boot_id != boot {
            return Ok(State::default());
        }
        Ok(state)
    }

    fn store(&self, state: &State) -> CniResult<()> {
        let path = self.dir.join(STATE_FILE);
        if state.attachments.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("removing", &path, e)),
            };
        }
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec(state)
            .map_err(|e| CniError::new(INTERNAL, format!("encoding masquerade state: {e}")))?;
        std::fs::write(&tmp, text).map_err(|e| io_err("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming", &tmp, e))
    }

    /// Runs `change` on the state under the lock, then makes the kernel's table match it and
    /// saves it. `force` re-applies even when the last applied script is the same (CHECK
    /// repairs a flushed ruleset with it). The state is saved only after nft succeeded.
    fn update(&self, force: bool, change: impl FnOnce(&mut State) -> bool) -> CniResult<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| io_err("creating state directory", &self.dir, e))?;
        let _lock = lock_exclusive(&self.dir.join("lock"))?;
        let boot = boot_id();
        let mut state = self.load(&boot)?;
        if !change(&mut state) && !force {
            return Ok(());
        }
        state.boot_id = boot;
        let rules: BTreeSet<MasqRule> = state.attachments.iter().map(|a| a.rule).collect();
        let failed = |e: twill_netkit::Error| {
            CniError::new(
                INTERNAL,
                format!("installing masquerade rules of network {}: {e}", self.name),
            )
        };
        let name = table_name(&self.name);
        let legacy = legacy_table_name(&self.name);
        // What a twill before dual stack applied: an `ip` table of the same name.
        if !state.applied.is_empty() && !state.applied.starts_with("table inet ") {
            firewall::remove_table(Family::Ip, &legacy).map_err(failed)?;
        }
        // A table under the name earlier versions gave a name they had to change.
        let mut force = force;
        if legacy != name && state.applied.starts_with(&format!("table inet {legacy}\n")) {
            firewall::remove_table(Family::Inet, &legacy).map_err(failed)?;
            force = true;
        }
        if rules.is_empty() {
            if force || !state.applied.is_empty() {
                firewall::remove_table(Family::Inet, &name).map_err(failed)?;
            }
            state.applied.clear();
        } else {
            let t = table(&self.name, &rules);
            let script = t.render().map_err(failed)?;
            // The ruleset may have been flushed since (`systemctl restart nftables`): an
            // unchanged script is re-applied when the table is gone.
            if force
                || script != state.applied
                || firewall::list_table(Family::Inet, &name).is_err()
            {
                t.apply().map_err(failed)?;
                state.applied = script;
            }
        }
        self.store(&state)
    }

    /// Records that attachment (`id`, `ifname`) needs `rules` (one per family), replacing
    /// what it needed before; applies the table when that changes the rules (or always, with
    /// `force`).
    pub fn record(&self, id: &str, ifname: &str, rules: &[MasqRule], force: bool) -> CniResult<()> {
        self.update(force, |s| {
            let wanted: Vec<Recorded> = rules
                .iter()
                .map(|rule| Recorded {
                    container_id: id.to_string(),
                    ifname: ifname.to_string(),
                    rule: *rule,
                })
                .collect();
            let held: Vec<&Recorded> = s.attachments.iter().filter(|a| a.is(id, ifname)).collect();
            let same = held.len() == wanted.len() && wanted.iter().all(|w| held.contains(&w));
            if same && !s.applied.is_empty() {
                return false;
            }
            s.attachments.retain(|a| !a.is(id, ifname));
            s.attachments.extend(wanted);
            true
        })
    }

    /// Forgets attachment (`id`, `ifname`); a rule no other attachment needs goes with it.
    pub fn forget(&self, id: &str, ifname: &str) -> CniResult<()> {
        if !self.dir.join(STATE_FILE).exists() {
            return Ok(());
        }
        self.update(false, |s| {
            let before = s.attachments.len();
            s.attachments.retain(|a| !a.is(id, ifname));
            s.attachments.len() != before
        })
    }

    /// GC: forgets every attachment not in `keep`.
    pub fn retain(&self, keep: &[Attachment]) -> CniResult<()> {
        if !self.dir.join(STATE_FILE).exists() {
            return Ok(());
        }
        self.update(false, |s| {
            let before = s.attachments.len();
            s.attachments
                .retain(|a| keep.iter().any(|k| a.is(&k.container_id, &k.ifname)));
            s.attachments.len() != before
        })
    }

    /// Moves an older twill's state out of the IPAM store: the table it applied covered the
    /// built-in store's reservations, so each becomes a recorded attachment with `rule`, and
    /// the file in the store is removed. Nothing to do when there is no such file.
    pub fn migrate_legacy(
        &self,
        ipam_dir: &Path,
        rule: Option<MasqRule>,
        attachments: impl FnOnce() -> CniResult<Vec<Attachment>>,
    ) -> CniResult<()> {
        let legacy = ipam_dir.join(LEGACY_MARKER);
        if !legacy.exists() {
            return Ok(());
        }
        // That twill's table was of family `ip`; the `inet` one replaces it.
        firewall::remove_table(Family::Ip, &legacy_table_name(&self.name)).map_err(|e| {
            CniError::new(
                INTERNAL,
                format!(
                    "removing the old masquerade table of network {}: {e}",
                    self.name
                ),
            )
        })?;
        if let Some(rule) = rule {
            let held = attachments()?;
            self.update(false, |s| {
                for a in held {
                    s.attachments.retain(|r| !r.is(&a.container_id, &a.ifname));
                    s.attachments.push(Recorded {
                        container_id: a.container_id,
                        ifname: a.ifname,
                        rule,
                    });
                }
                true
            })?;
        } else {
            // Masquerade was turned off since: the old table must not outlive its marker.
            self.update(true, |_| true)?;
        }
        match std::fs::remove_file(&legacy) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &legacy, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_subnet_sorted() {
        let r = |s: &str, x: &str| MasqRule::new(s.parse().unwrap(), x.parse().unwrap());
        let rules = BTreeSet::from([
            r("10.99.1.7/24", "10.99.1.0/24"),
            r("10.244.7.1/24", "10.244.0.0/16"),
            r("10.99.1.2/24", "10.99.1.0/24"),
        ]);
        assert_eq!(rules.len(), 2, "same subnet, one rule");
        let script = table("net", &rules).render().unwrap();
        let a = script.find("ip saddr 10.244.7.0/24 ip daddr != 10.244.0.0/16");
        let b = script.find("ip saddr 10.99.1.0/24 ip daddr != 10.99.1.0/24");
        assert!(a.is_some() && b.is_some(), "{script}");
        assert!(script.starts_with("table inet twill-cni-net\n"), "{script}");
    }

    #[test]
    fn no_two_network_names_share_a_table() {
        assert_eq!(
            table_name("twnet"),
            "twill-cni-twnet",
            "unchanged where it fits"
        );
        let long_a = format!("{}-a", "x".repeat(60));
        let long_b = format!("{}-b", "x".repeat(60));
        let names = ["pods.v4", "pods_v4", "pods:v4", &long_a, &long_b];
        let tables: BTreeSet<String> = names.iter().map(|n| table_name(n)).collect();
        assert_eq!(tables.len(), names.len(), "{tables:?}");
        assert!(tables.iter().all(|t| t.len() <= 64), "{tables:?}");
        assert_eq!(table_name("pods.v4"), table_name("pods.v4"), "stable");
    }

    #[test]
    fn ipv6_rules_match_ip6_in_the_same_table() {
        let r = |s: &str, x: &str| MasqRule::new(s.parse().unwrap(), x.parse().unwrap());
        let rules = BTreeSet::from([
            r("10.244.7.1/24", "10.244.0.0/16"),
            r("fd00:244:7::1/64", "fd00:244::/32"),
        ]);
        let script = table("net", &rules).render().unwrap();
        assert!(
            script.contains(
                "ip6 saddr fd00:244:7::/64 ip6 daddr != fd00:244::/32 ip6 daddr != ff00::/8 masquerade"
            ),
            "{script}"
        );
        assert!(
            script.contains("ip saddr 10.244.7.0/24 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade"),
            "{script}"
        );
        assert_eq!(
            script.matches("table inet").count(),
            3,
            "one table: {script}"
        );
    }
}

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
                hook: Some(Hook::filter_forward()),
                rules: vec![
                    Rule::new(format!("ip saddr {network} accept"), "twilld forward"),
                    Rule::new(format!("ip daddr {network} accept"), "twilld forward"),
                ],
            },
        ],
    }
}

/// Which firewall tool programs the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FirewallBackend {
    /// nftables when `nft` is installed, else iptables.
    Auto,
    Nftables,
    Iptables,
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Applies the desired rules with the chosen backend.
pub fn apply(
    backend: FirewallBackend,
    network: Ipv4Net,
    subnet: Ipv4Net,
    ip_masq: bool,
) -> Result<(), String> {
    let use_nft = match backend {
        FirewallBackend::Nftables => true,
        FirewallBackend::Iptables => false,
        FirewallBackend::Auto => have("nft") || !have("iptables-restore"),
    };
    if use_nft {
        table(network, subnet, ip_masq)
            .apply()
            .map_err(|e| e.to_string())
    } else {
        iptables::apply(network, subnet, ip_masq)
    }
}

/// The same rules for hosts without nftables: chains of our own (`TWILL-POSTRTG` in nat,
/// `TWILL-FWD` in filter) rewritten whole with `iptables-restore --noflush`, and one jump to
/// each from the built-in chain.
pub mod iptables {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use ipnet::Ipv4Net;

    /// Our nat chain.
    pub const POSTRTG: &str = "TWILL-POSTRTG";
    /// Our filter chain.
    pub const FWD: &str = "TWILL-FWD";

    /// `iptables-restore --noflush` input that replaces the contents of our two chains.
    pub fn render(network: Ipv4Net, subnet: Ipv4Net, ip_masq: bool) -> String {
        let mut s = format!("*nat\n:{POSTRTG} - [0:0]\n-F {POSTRTG}\n");
        if ip_masq {
            let c = |why: &str| format!("-m comment --comment \"twilld: {why}\"");
            s.push_str(&format!(
                "-A {POSTRTG} -m mark --mark 0x4000/0x4000 -j RETURN {}\n",
                c("kube-proxy marked")
            ));
            s.push_str(&format!(
                "-A {POSTRTG} -s {network} -d {network} -j RETURN {}\n",
                c("inside the overlay")
            ));
            s.push_str(&format!(
                "-A {POSTRTG} -s {network} ! -d 224.0.0.0/4 -j MASQUERADE --random-fully {}\n",
                c("pods to the outside")
            ));
            s.push_str(&format!(
                "-A {POSTRTG} ! -s {network} -d {subnet} -j RETURN {}\n",
                c("outside to local pods")
            ));
            s.push_str(&format!(
                "-A {POSTRTG} ! -s {network} -d {network} -j MASQUERADE --random-fully {}\n",
                c("outside to remote pods")
            ));
        }
        s.push_str("COMMIT\n");
        s.push_str(&format!("*filter\n:{FWD} - [0:0]\n-F {FWD}\n"));
        s.push_str(&format!(
            "-A {FWD} -s {network} -j ACCEPT -m comment --comment \"twilld forward\"\n"
        ));
        s.push_str(&format!(
            "-A {FWD} -d {network} -j ACCEPT -m comment --comment \"twilld forward\"\n"
        ));
        s.push_str("COMMIT\n");
        s
    }

    fn ensure_jump(table: &str, from: &str, to: &str) -> Result<(), String> {
        let check = Command::new("iptables")
            .args(["-w", "5", "-t", table, "-C", from, "-j", to])
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running iptables: {e}"))?;
        if check.success() {
            return Ok(());
        }
        let out = Command::new("iptables")
            .args(["-w", "5", "-t", table, "-I", from, "1", "-j", to])
            .output()
            .map_err(|e| format!("running iptables: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "iptables -t {table} -I {from} -j {to}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Rewrites our chains and makes sure the built-in chains jump to them.
    pub fn apply(network: Ipv4Net, subnet: Ipv4Net, ip_masq: bool) -> Result<(), String> {
        let mut child = Command::new("iptables-restore")
            .args(["-w", "5", "--noflush"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running iptables-restore (install iptables or nftables): {e}"))?;
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(render(network, subnet, ip_masq).as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for iptables-restore: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "iptables-restore: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        ensure_jump("nat", "POSTROUTING", POSTRTG)?;
        ensure_jump("filter", "FORWARD", FWD)
    }
}

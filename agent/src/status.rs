//! `twilld status`: this node's lease, the backend and every peer, as a table.

use std::fmt::Write;

use twill_netkit::subnet_env::SubnetEnv;

use crate::cli::Cli;
use crate::etcd_store::EtcdStore;
use crate::lease::Subnets;
use crate::lease_store::{LeaseEntry, LeaseStore, Snapshot};

/// Renders the table for `entries`, marking `own`.
pub fn table(entries: &[LeaseEntry], own: Option<Subnets>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<18} {:<16} {:<8} {:<18} LEASE",
        "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC"
    );
    for e in entries {
        let mark = if Some(e.subnets) == own { "*" } else { " " };
        let subnet = e.subnets.v4.map(|n| n.to_string());
        let lease = if e.lease_id == 0 {
            "reservation".to_string()
        } else {
            format!("{:x}", e.lease_id)
        };
        match &e.record {
            Ok(r) => {
                let mac = r
                    .vtep_mac
                    .map(|m| twill_netkit::format_mac(&m))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    "{mark} {:<18} {:<16} {:<8} {:<18} {lease}",
                    subnet.as_deref().unwrap_or("-"),
                    if r.public_ip.is_unspecified() {
                        "-".to_string()
                    } else {
                        r.public_ip.to_string()
                    },
                    r.backend.as_str(),
                    mac
                );
                // The IPv6 half of the same key, on its own line under the IPv4 one.
                if let Some(v6) = e.subnets.v6 {
                    let mac6 = r
                        .vtep_mac6
                        .map(|m| twill_netkit::format_mac(&m))
                        .unwrap_or_else(|| "-".into());
                    let ip6 = r
                        .public_ipv6
                        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
                    let _ = writeln!(s, "{mark} {v6:<18} {ip6:<16} {:<8} {mac6:<18}", "");
                }
            }
            Err(why) => {
                let _ = writeln!(s, "{mark} {:<18} (skipped: {why})", e.subnets.to_string());
            }
        }
    }
    s
}

/// Runs the subcommand.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let store = EtcdStore::connect(&crate::agent::etcd_options(cli)).await?;
    let Snapshot {
        config,
        leases: entries,
        revision: rev,
    } = store.snapshot().await?;
    let own = SubnetEnv::read(&cli.subnet_file).ok();
    println!(
        "etcd:        {} (prefix {}, revision {rev})",
        cli.etcd_endpoints.join(","),
        cli.etcd_prefix
    );
    println!("config:      {}", config.as_deref().unwrap_or("(missing)"));
    match &own {
        Some(env) => println!(
            "this node:   {} (MTU {}, ip-masq {}) from {}",
            Subnets {
                v4: env.ipv4.map(|p| p.subnet),
                v6: env.ipv6.map(|p| p.subnet),
            },
            env.mtu,
            env.ipmasq,
            cli.subnet_file.display()
        ),
        None => println!(
            "this node:   no subnet file at {}",
            cli.subnet_file.display()
        ),
    }
    print!(
        "{}",
        table(
            &entries,
            own.map(|e| Subnets {
                v4: e.ipv4.map(|p| p.subnet),
                v6: e.ipv6.map(|p| p.subnet),
            })
        )
    );
    crate::backend::wireguard::print_status(&cli.wireguard_socket_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseRecord;

    fn entry(key: &str, value: &str) -> LeaseEntry {
        LeaseEntry {
            subnets: Subnets::parse_key(key).unwrap(),
            key: key.to_string(),
            record: LeaseRecord::parse(value.as_bytes()),
            claim: crate::lease::Claim::of(value.as_bytes()),
            lease_id: 0x2a,
            mod_revision: 1,
        }
    }

    #[test]
    fn both_families_of_a_key_are_shown_and_ours_is_marked() {
        let dual = entry(
            "/x/subnets/10.5.1.0-24&fd00:5:0:1::-64",
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd31::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:74:0a:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:76:00:00:00:01"}}"#,
        );
        let v6only = entry(
            "/x/subnets/fd00:5:0:2::-64",
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd31::2","BackendType":"host-gw"}"#,
        );
        let own = dual.subnets;
        let t = table(&[dual, v6only], Some(own));
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("* 10.5.1.0/24") && lines[1].contains("0e:74:0a:00:00:01"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("* fd00:5:0:1::/64") && lines[2].contains("fd31::1"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("  -") && lines[3].contains("host-gw"),
            "{t}"
        );
        assert!(
            lines[4].starts_with("  fd00:5:0:2::/64") && lines[4].contains("fd31::2"),
            "{t}"
        );
    }
}

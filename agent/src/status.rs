//! `twilld status`: this node's lease, the backend and every peer, as a table.

use std::fmt::Write;

use twill_netkit::subnet_env::SubnetEnv;

use crate::cli::Cli;
use crate::etcd_store::EtcdStore;
use crate::lease_store::{LeaseEntry, LeaseStore, Snapshot};

/// Renders the table for `entries`, marking `own`.
pub fn table(entries: &[LeaseEntry], own: Option<ipnet::Ipv4Net>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<18} {:<16} {:<8} {:<18} LEASE",
        "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC"
    );
    for e in entries {
        let mark = if Some(e.subnet) == own { "*" } else { " " };
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
                    e.subnet.to_string(),
                    r.public_ip.to_string(),
                    r.backend.as_str(),
                    mac
                );
            }
            Err(why) => {
                let _ = writeln!(s, "{mark} {:<18} (skipped: {why})", e.subnet.to_string());
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
            env.subnet,
            env.mtu,
            env.ipmasq,
            cli.subnet_file.display()
        ),
        None => println!(
            "this node:   no subnet file at {}",
            cli.subnet_file.display()
        ),
    }
    print!("{}", table(&entries, own.map(|e| e.subnet)));
    crate::backend::wireguard::print_status(&cli.wireguard_socket_dir);
    Ok(())
}

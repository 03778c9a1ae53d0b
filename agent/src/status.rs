//! `twilld status`: this node's lease, the backend and every peer, as a table; with /metrics
//! on, the data path's drops and packets received over the MTU too.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    if let Some(addr) = metrics_addr(cli) {
        match fetch_metrics(addr).await {
            Ok(text) => print!("{}", data_path_report(&text, addr)),
            Err(e) => println!("data path:   /metrics at {addr} did not answer: {e}"),
        }
    }
    Ok(())
}

/// Where this node's twilld serves /metrics, by the flags (or `TWILLD_*` variables) it runs
/// with: `--metrics-port`, else `--healthz-port`, on `--healthz-ip` (loopback for the
/// unspecified address). `None` when both ports are off.
fn metrics_addr(cli: &Cli) -> Option<SocketAddr> {
    let port = match (cli.metrics_port, cli.healthz_port) {
        (0, 0) => return None,
        (0, p) | (p, _) => p,
    };
    let ip = match cli.healthz_ip {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(SocketAddr::new(ip, port))
}

/// How long reading /metrics may take in all.
const METRICS_TIMEOUT: Duration = Duration::from_secs(3);

/// The body of `GET /metrics` at `addr`.
async fn fetch_metrics(addr: SocketAddr) -> std::io::Result<String> {
    let get = async {
        let mut sock = tokio::net::TcpStream::connect(addr).await?;
        sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut answer = Vec::new();
        sock.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(METRICS_TIMEOUT, get)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!(
            "answered {:?}",
            status.trim()
        )));
    }
    Ok(body.to_string())
}

/// The data path's drop counters in /metrics text: (backend, reason, count) of each
/// `twilld_<backend>_dropped_packets_total{reason="…"}` line.
fn data_path_drops(metrics: &str) -> Vec<(&str, &str, u64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("twilld_")?.split_once('{')?;
            let backend = name.strip_suffix("_dropped_packets_total")?;
            let (labels, value) = rest.split_once("} ")?;
            let reason = labels.strip_prefix("reason=\"")?.strip_suffix('"')?;
            Some((backend, reason, value.trim().parse().ok()?))
        })
        .collect()
}

/// The data path's count of received packets bigger than the TUN MTU (delivered) in
/// /metrics text: (backend, count) of each `twilld_<backend>_rx_over_mtu_packets_total` line.
fn data_path_over_mtu(metrics: &str) -> Vec<(&str, u64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let (name, value) = l.strip_prefix("twilld_")?.split_once(' ')?;
            let backend = name.strip_suffix("_rx_over_mtu_packets_total")?;
            Some((backend, value.trim().parse().ok()?))
        })
        .collect()
}

/// What `twilld status` says about packets over the MTU: only the operator can fix it.
const OVER_MTU_HINT: &str = "received packets bigger than this node's MTU, delivered: the \
     kernel answers with ICMP fragmentation needed or fragments them. The nodes' MTUs differ: \
     set the same Backend.MTU, or the same underlay MTU, on every node";

/// The nonzero drop counters of the data path, and the packets received over the MTU if
/// any (nothing for a backend without a data path).
fn data_path_report(metrics: &str, addr: SocketAddr) -> String {
    let drops = data_path_drops(metrics);
    let over = data_path_over_mtu(metrics);
    let mut s = String::new();
    if drops.is_empty() && over.is_empty() {
        return s;
    }
    let nonzero: Vec<_> = drops.into_iter().filter(|d| d.2 > 0).collect();
    if nonzero.is_empty() {
        let _ = writeln!(s, "data path:   no drops (/metrics at {addr})");
    } else {
        let _ = writeln!(s, "data-path drops (/metrics at {addr}):");
        for (backend, reason, n) in nonzero {
            let _ = writeln!(s, "  {backend:<10} {reason:<18} {n:>12}");
        }
    }
    for (backend, n) in over.into_iter().filter(|o| o.1 > 0) {
        let _ = writeln!(
            s,
            "data path:   {backend} rx_over_mtu_packets {n}: {OVER_MTU_HINT}"
        );
    }
    s
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

    #[test]
    fn the_data_paths_drops_and_packets_over_the_mtu_are_shown_with_what_to_do() {
        let stats = crate::engine::Stats::new("wireguard");
        let mut local = crate::engine::stats::LocalCounts {
            rx_over_mtu_packets: 7,
            ..Default::default()
        };
        local.count_drop(crate::engine::packet::DropReason::Replay, 2);
        local.flush(&stats);
        let mut text = String::new();
        stats.render(&mut text);
        // A peer's line is not the data path's.
        text.push_str(
            "twilld_wireguard_peer_dropped_packets_total{peer=\"k\",subnet=\"s\",reason=\"replay\"} 2\n",
        );
        let addr: SocketAddr = "127.0.0.1:10271".parse().unwrap();
        let t = data_path_report(&text, addr);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert_eq!(lines[0], "data-path drops (/metrics at 127.0.0.1:10271):");
        assert!(
            lines[1].starts_with("  wireguard  replay") && lines[1].ends_with(" 2"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("data path:   wireguard rx_over_mtu_packets 7: received packets bigger than this node's MTU, delivered")
                && lines[2].contains("the kernel answers with ICMP fragmentation needed")
                && lines[2].contains("Backend.MTU"),
            "{t}"
        );
        assert!(!t.contains("mtu_mismatch"), "{t}");

        // Over the MTU without drops.
        let stats = crate::engine::Stats::new("udp");
        let mut local = crate::engine::stats::LocalCounts {
            rx_over_mtu_packets: 1,
            ..Default::default()
        };
        local.flush(&stats);
        let mut text = String::new();
        stats.render(&mut text);
        let t = data_path_report(&text, addr);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert_eq!(
            lines[0],
            "data path:   no drops (/metrics at 127.0.0.1:10271)"
        );
        assert!(
            lines[1].starts_with("data path:   udp rx_over_mtu_packets 1: "),
            "{t}"
        );

        let mut quiet = String::new();
        crate::engine::Stats::new("udp").render(&mut quiet);
        assert_eq!(
            data_path_report(&quiet, addr),
            "data path:   no drops (/metrics at 127.0.0.1:10271)\n"
        );
        assert_eq!(
            data_path_report("twilld_ready 1\n", addr),
            "",
            "no data path"
        );
    }

    #[test]
    fn metrics_are_asked_where_twilld_serves_them() {
        use clap::Parser;
        let addr = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["twilld"], args, &["status"]].concat()).unwrap();
            metrics_addr(&cli).map(|a| a.to_string())
        };
        assert_eq!(addr(&[]), None);
        assert_eq!(
            addr(&["--healthz-port", "8471"]).as_deref(),
            Some("127.0.0.1:8471")
        );
        assert_eq!(
            addr(&["--healthz-port", "8471", "--metrics-port", "9100"]).as_deref(),
            Some("127.0.0.1:9100")
        );
        assert_eq!(
            addr(&["--healthz-ip", "::", "--metrics-port", "9100"]).as_deref(),
            Some("[::1]:9100")
        );
        assert_eq!(
            addr(&["--healthz-ip", "10.0.0.5", "--metrics-port", "9100"]).as_deref(),
            Some("10.0.0.5:9100")
        );
    }
}

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
use crate::netconf::NetworkConfig;

/// Why the lease of `e` is not routed by this node, if it is not: outside the network of
/// `config` (when it reads), or another key of this node's (`own_ip`, its public IP).
fn not_routed(
    e: &LeaseEntry,
    config: Option<&NetworkConfig>,
    own_ip: Option<Ipv4Addr>,
) -> Option<String> {
    if let Some(c) = config
        && let Some(why) = crate::backend::outside_network(
            e.subnets,
            c.enable_ipv4.then_some(c.network),
            c.ipv6.map(|v6| v6.network),
        )
    {
        return Some(format!("not routed: {why}"));
    }
    let ip = e.record.as_ref().ok()?.public_ip;
    (own_ip == Some(ip) && !ip.is_unspecified())
        .then(|| format!("not routed: another key of this node, public IP {ip}"))
}

/// Renders the table for `entries`, marking `own` (`*`) and the leases that are not routed
/// (outside the network of `config`, this node's other keys), each with why.
pub fn table(
    entries: &[LeaseEntry],
    own: Option<Subnets>,
    config: Option<&NetworkConfig>,
) -> String {
    let own_ip = entries
        .iter()
        .find(|e| Some(e.subnets) == own)
        .and_then(|e| e.record.as_ref().ok())
        .map(|r| r.public_ip);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<18} {:<16} {:<8} {:<18} LEASE",
        "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC"
    );
    for e in entries {
        let mark = if Some(e.subnets) == own { "*" } else { " " };
        let subnet = e.subnets.v4.map(|n| n.to_string());
        let mut lease = if e.lease_id == 0 {
            "reservation".to_string()
        } else {
            format!("{:x}", e.lease_id)
        };
        if Some(e.subnets) != own
            && let Some(why) = not_routed(e, config, own_ip)
        {
            let _ = write!(lease, " ({why})");
        }
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
                    // ipnet's Display ignores width: padded as a string, as the IPv4 row.
                    let v6 = v6.to_string();
                    let row = format!("{mark} {v6:<18} {ip6:<16} {:<8} {mac6}", "");
                    let _ = writeln!(s, "{}", row.trim_end());
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
    println!(
        "etcd:        {} (prefix {}, revision {rev})",
        cli.etcd_endpoints.join(","),
        cli.etcd_prefix
    );
    println!("config:      {}", config.as_deref().unwrap_or("(missing)"));
    let parsed = config.as_deref().and_then(|t| NetworkConfig::parse(t).ok());
    let (line, own_subnets) = this_node(&cli.subnet_file);
    println!("this node:   {line}");
    print!("{}", table(&entries, own_subnets, parsed.as_ref()));
    crate::backend::wireguard::print_status(&cli.wireguard_socket_dir);
    if let Some(addr) = metrics_addr(cli) {
        match fetch_metrics(addr).await {
            Ok(text) => print!("{}", data_path_report(&text, addr)),
            Err(e) => println!("data path:   /metrics at {addr} did not answer: {e}"),
        }
    }
    Ok(())
}

/// The `this node:` line for the subnet file at `path`, and the subnets it names (to mark
/// this node's lease). A file that does not read whole (no `FLANNEL_MTU`) still names them, as
/// twilld keeps them at its start; the whole file is what the CNI plugin needs, so that is
/// said.
fn this_node(path: &std::path::Path) -> (String, Option<Subnets>) {
    let file = path.display();
    match SubnetEnv::read(path) {
        Ok(env) => {
            let subnets = Subnets {
                v4: env.ipv4.map(|p| p.subnet),
                v6: env.ipv6.map(|p| p.subnet),
            };
            let line = format!(
                "{subnets} (MTU {}, ip-masq {}) from {file}",
                env.mtu, env.ipmasq
            );
            (line, Some(subnets))
        }
        Err(e) => match std::fs::read_to_string(path) {
            Err(_) => (format!("no subnet file at {file}"), None),
            Ok(text) => {
                let (subnets, _) = crate::agent::subnet_file_subnets(&text);
                let line = format!("{subnets} from {file}, which does not read whole: {e}");
                (line, Some(subnets).filter(|s| *s != Subnets::default()))
            }
        },
    }
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
        let t = table(&[dual, v6only], Some(own), None);
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
    fn ipv6_rows_line_up_with_the_header() {
        // Before: the IPv6 subnet was not padded (ipnet's Display ignores width), so the
        // public IPv6 and the VTEP MAC started wherever the subnet ended.
        let dual = entry(
            "/x/subnets/10.5.1.0-24&fd00:5:0:1::-64",
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd31::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:74:0a:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:76:00:00:00:01"}}"#,
        );
        let t = table(&[dual], None, None);
        let lines: Vec<&str> = t.lines().collect();
        let col = |line: &str, what: &str| {
            line.find(what)
                .unwrap_or_else(|| panic!("{what} missing in {line:?}:\n{t}"))
        };
        assert_eq!(col(lines[2], "fd31::1"), col(lines[0], "PUBLIC IP"), "{t}");
        assert_eq!(col(lines[1], "10.0.0.1"), col(lines[0], "PUBLIC IP"), "{t}");
        assert_eq!(
            col(lines[2], "0e:76:00:00:00:01"),
            col(lines[0], "VTEP MAC"),
            "{t}"
        );
        assert_eq!(lines[2], lines[2].trim_end(), "no trailing blanks");
    }

    #[test]
    fn leases_that_are_not_routed_are_marked_with_why() {
        // Before: listed like peers, with nothing to say they are never routed.
        let value = |ip: &str| format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#);
        let ours = entry("/x/subnets/10.5.1.0-24", &value("10.0.0.1"));
        let peer = entry("/x/subnets/10.5.2.0-24", &value("10.0.0.2"));
        let outside = entry("/x/subnets/10.99.3.0-24", &value("10.0.0.3"));
        let mut reserved = entry("/x/subnets/10.5.7.0-24", &value("10.0.0.1"));
        reserved.lease_id = 0;
        let config =
            NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#)
                .unwrap();
        let own = ours.subnets;
        let t = table(&[ours, peer, outside, reserved], Some(own), Some(&config));
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("* 10.5.1.0/24") && lines[1].ends_with(" 2a"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("  10.5.2.0/24") && lines[2].ends_with(" 2a"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("  10.99.3.0/24")
                && lines[3]
                    .ends_with(" 2a (not routed: 10.99.3.0/24 is outside the Network 10.5.0.0/16)"),
            "{t}"
        );
        assert!(
            lines[4].starts_with("  10.5.7.0/24")
                && lines[4].ends_with(
                    " reservation (not routed: another key of this node, public IP 10.0.0.1)"
                ),
            "{t}"
        );
    }

    #[test]
    fn this_nodes_subnets_are_read_as_twilld_keeps_them() {
        // Before: a subnet file without FLANNEL_MTU was "no subnet file", and our lease
        // went unmarked.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let (line, own) = this_node(&path);
        assert_eq!((line.starts_with("no subnet file at "), own), (true, None));
        std::fs::write(
            &path,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.3.1/24\n",
        )
        .unwrap();
        let (line, own) = this_node(&path);
        assert_eq!(
            own,
            Some(Subnets::from(
                "10.5.3.0/24".parse::<ipnet::Ipv4Net>().unwrap()
            ))
        );
        assert!(
            line.starts_with("10.5.3.0/24 from ")
                && line.contains("does not read whole")
                && line.contains("FLANNEL_MTU"),
            "{line}"
        );
        std::fs::write(
            &path,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let (line, own) = this_node(&path);
        assert!(
            own.is_some() && line.starts_with("10.5.3.0/24 (MTU 1450, ip-masq true) from "),
            "{line}"
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

//! How fast twilld programs many peers, side by side for host-gw and vxlan, in one run:
//! N synthetic leases (default 1000 and 5000) are written to a real etcd, then twilld starts;
//! we time until every peer's route is in the kernel, then the latency from one new lease to
//! its route (p50/p99 over 100 events), and the agent's RSS.
//!
//! `sudo cargo bench -p twill-agent --bench peers [-- --peers 1000,5000 --events 100]`
//! Targets (issue): 5000 peers < 3 s, one event < 50 ms p99, RSS < 40 MB.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use twill_netkit::{Netlink, RTPROT_TWILL};
use twill_testbed::{Cluster, Etcd};
use twill_tests::bench_arg as arg;

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

fn subnet_of(i: u32) -> Ipv4Addr {
    // 10.<hi>.<lo>.0/24, skipping 10.0.0.0 (Flannel skips the first subnet) and the .1 .. .3
    // range the agent itself may take (it leases a random free one; we only count ours).
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + ((i + 16) << 8))
}

fn lease_value(kind: &str, i: u32) -> String {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 1, 0)) + i);
    if kind == "vxlan" {
        let o = ip.octets();
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:74:{:02x}:{:02x}:{:02x}:{:02x}"}}}}"#,
            o[0], o[1], o[2], o[3]
        )
    } else {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#)
    }
}

async fn put_leases(endpoint: &str, kind: &str, range: std::ops::Range<u32>) {
    let mut c = Client::connect([endpoint], None)
        .await
        .expect("connecting to etcd");
    let ids: Vec<u32> = range.collect();
    for chunk in ids.chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| {
                let key = format!("/coreos.com/network/subnets/{}-24", subnet_of(i));
                TxnOp::put(key, lease_value(kind, i), None::<PutOptions>)
            })
            .collect();
        c.txn(Txn::new().and_then(ops))
            .await
            .expect("writing leases");
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
}

struct Run {
    programmed: Duration,
    p50: f64,
    p99: f64,
    rss_mib: f64,
}

fn one(kind: &str, n: u32, events: u32) -> Run {
    let cluster = Cluster::builder("twb-peers")
        .hosts(1)
        .underlay("172.16.0.0/16".parse().unwrap())
        .build()
        .expect("cluster");
    let etcd = Etcd::start_in(&cluster.underlay, cluster.underlay_ip(), true).expect("etcd");
    let ep = etcd.endpoint();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    let config =
        format!(r#"{{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{{"Type":"{kind}"}}}}"#);
    cluster
        .underlay
        .enter(|| {
            rt().block_on(async {
                let mut c = Client::connect([ep.as_str()], None).await.expect("etcd");
                c.put("/coreos.com/network/config", config, None)
                    .await
                    .expect("config");
            });
            rt().block_on(put_leases(&ep, kind, 0..n));
        })
        .expect("underlay");
    let dir = tempfile::tempdir().expect("tempdir");
    let host = cluster.host(1);
    let mut cmd = Command::new(TWILLD);
    cmd.args([
        "--etcd-endpoints",
        &ep,
        "--iface",
        "eth0",
        "--log-level",
        "warn",
    ])
    .arg("--subnet-file")
    .arg(dir.path().join("subnet.env"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    host.netns.prepare_command(&mut cmd).expect("netns");
    let start = Instant::now();
    let mut child: Child = cmd.spawn().expect("twilld");
    let count = || {
        host.netns
            .run(|nl: Netlink| async move {
                Ok::<_, twill_netkit::Error>(nl.list_routes(Some(RTPROT_TWILL)).await?.len())
            })
            .unwrap_or(0)
    };
    while count() < n as usize {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{kind}: not programmed after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let programmed = start.elapsed();
    let mut lat = Vec::new();
    for k in 0..events {
        let i = n + 1000 + k;
        let probe = Ipv4Addr::from(u32::from(subnet_of(i)) + 7);
        // A look-up answer carries no protocol: recognise our route by its gateway.
        let gw = if kind == "vxlan" {
            subnet_of(i)
        } else {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 1, 0)) + i)
        };
        let t0 = Instant::now();
        cluster
            .underlay
            .enter(|| rt().block_on(put_leases(&ep, kind, i..i + 1)))
            .expect("underlay");
        loop {
            let hit = host
                .netns
                .run(|nl: Netlink| async move {
                    Ok::<_, twill_netkit::Error>(
                        nl.lookup_route(probe)
                            .await?
                            .is_some_and(|r| r.gateway == Some(gw.into())),
                    )
                })
                .unwrap_or(false);
            if hit {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{kind}: event {k} not programmed"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        lat.push(t0.elapsed());
    }
    let rss = rss_kib(child.id()) as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    Run {
        programmed,
        p50: pct(&mut lat, 0.5),
        p99: pct(&mut lat, 0.99),
        rss_mib: rss,
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("peers: needs root (it creates network namespaces)");
        std::process::exit(1);
    }
    let sizes: Vec<u32> = arg("--peers", "1000,5000")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let events: u32 = arg("--events", "100").parse().unwrap_or(100);
    println!(
        "twilld with N peer leases: time to program all, new-lease latency over {events} events, RSS"
    );
    println!(
        "{:<8} {:>6} {:>14} {:>10} {:>10} {:>9}",
        "backend", "peers", "programmed", "event p50", "event p99", "RSS"
    );
    for kind in ["host-gw", "vxlan"] {
        for &n in &sizes {
            let r = one(kind, n, events);
            println!(
                "{kind:<8} {n:>6} {:>12.0}ms {:>8.1}ms {:>8.1}ms {:>7.1}MiB",
                r.programmed.as_secs_f64() * 1000.0,
                r.p50,
                r.p99,
                r.rss_mib
            );
        }
    }
}

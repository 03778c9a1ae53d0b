//! The wireguard backend end to end: real etcd, hosts as namespaces, real TUN devices and
//! twilld's user-space WireGuard data path; containers attached with twill; `wg` and
//! Debian's wireguard-go as the other side where a test needs the real thing.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::AgentLab;
use twill_tests::preconditions;

const TOOLS: &[&str] = &["ip", "ping", "etcd", "etcdctl", "nft"];
const METRICS_PORT: u16 = 10271;
const NETWORK: &str = "10.23.0.0/16";
const PORT: u16 = 51820;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn config(backend_extra: &str) -> String {
    format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"wireguard"{backend_extra}}}}}"#)
}

/// Host `h`'s key file and UAPI socket directory (each twilld on this machine has its own).
fn key_file(lab: &AgentLab, h: usize) -> PathBuf {
    lab.dir.path().join(format!("h{h}-wgkey"))
}

fn socket_dir(lab: &AgentLab, h: usize) -> PathBuf {
    lab.dir.path().join(format!("h{h}-wg"))
}

fn start(lab: &mut AgentLab, h: usize) {
    let port = METRICS_PORT.to_string();
    let key = key_file(lab, h).display().to_string();
    let sock = socket_dir(lab, h).display().to_string();
    lab.start_agent(
        h,
        &[
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            &port,
            "--wireguard-key-file",
            &key,
            "--wireguard-socket-dir",
            &sock,
        ],
    );
}

/// A wireguard lab: `twilld` on hosts `1..=agents` of `hosts`, `per_host` containers each.
fn lab(prefix: &str, hosts: usize, agents: usize, per_host: usize, config: &str) -> AgentLab {
    let mut lab = AgentLab::new(prefix, hosts, config);
    for h in 1..=agents {
        start(&mut lab, h);
    }
    for h in 1..=agents {
        lab.wait_subnet(h);
        for _ in 0..per_host {
            lab.add_container(h);
        }
    }
    lab
}

/// The value of the sample `key` in host `h`'s /metrics (None while not published).
fn sample(lab: &AgentLab, h: usize, key: &str) -> Option<u64> {
    let page = lab.http_get(h, METRICS_PORT, "/metrics");
    let prefix = format!("{key} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn dropped(lab: &AgentLab, h: usize, reason: &str) -> u64 {
    sample(
        lab,
        h,
        &format!("twilld_wireguard_dropped_packets_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0)
}

/// Deterministic test data.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `payload` over TCP from container `from` to container `to`; returns what arrived.
fn tcp_transfer(lab: &AgentLab, from: usize, to: usize, payload: &[u8]) -> Vec<u8> {
    let listener = lab.containers[to]
        .netns
        .enter(|| TcpListener::bind("0.0.0.0:5001"))
        .unwrap()
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let dst = format!("{}:5001", lab.containers[to].ip);
    let mut s = lab.containers[from]
        .netns
        .enter(|| TcpStream::connect_timeout(&dst.parse().unwrap(), Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    s.write_all(payload).unwrap();
    drop(s);
    receiver.join().unwrap()
}

fn assert_transfer_intact(lab: &AgentLab, from: usize, to: usize, payload: &[u8], what: &str) {
    assert!(
        tcp_transfer(lab, from, to, payload) == payload,
        "{what} corrupted"
    );
}

/// The public key (base64) of the private key in `file`.
fn public_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap()
        .try_into()
        .unwrap();
    let secret = boringtun::x25519::StaticSecret::from(bytes);
    b64(boringtun::x25519::PublicKey::from(&secret).as_bytes())
}

/// Runs `script` with `sh` in a private mount namespace whose /run is a fresh tmpfs with
/// `/run/wireguard` bound to `dir` (how `wg` and wireguard-go find UAPI sockets), inside
/// network namespace `netns` if given. Returns (success, stdout + stderr).
fn in_wg_dir(netns: Option<&str>, dir: &Path, script: &str) -> (bool, String) {
    let setup = format!(
        "mount -t tmpfs none /run && mkdir -p /run/wireguard && mount --bind {} /run/wireguard && {script}",
        dir.display()
    );
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "unshare", "-m", "sh", "-c", &setup]);
            c
        }
        None => {
            let mut c = Command::new("unshare");
            c.args(["-m", "sh", "-c", &setup]);
            c
        }
    };
    let out = c.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `wg show flannel-wg dump` against host `h`'s twilld: the device line and one per peer.
fn wg_dump(lab: &AgentLab, h: usize) -> Vec<Vec<String>> {
    let (ok, out) = in_wg_dir(None, &socket_dir(lab, h), "wg show flannel-wg dump");
    assert!(ok, "wg show flannel-wg dump on h{h}: {out}");
    out.lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn wireguard_all_pairs_ping_tcp_transfer_psk_and_flannel_layout() {
    if !preconditions(
        "wireguard_all_pairs_ping_tcp_transfer_psk_and_flannel_layout",
        &[TOOLS, &["wg", "unshare"]].concat(),
    ) {
        return;
    }
    let psk = b64(&[0x5a; 32]);
    let lab = lab(
        "twg-ap",
        3,
        3,
        2,
        &config(&format!(r#","PSK":"{psk}""#)),
    );
    lab.eventually("all pairs reachable over wireguard", 30, || {
        lab.unreachable_pairs().is_empty()
    });

    // Flannel's layout: flannel-wg with <subnet>.0/32 and MTU − 80, one link-scope route.
    let env = lab.wait_subnet(1);
    assert_eq!(env.mtu, 1420);
    let h1 = lab.cluster.host(1).name.clone();
    let link = twill_tests::ip_link(&h1, "flannel-wg");
    assert_eq!(link["mtu"], 1420);
    let addrs = twill_tests::ip_json(&h1, &["-4", "addr", "show", "dev", "flannel-wg"]);
    let a = &addrs[0]["addr_info"][0];
    assert_eq!(
        (a["local"].as_str(), a["prefixlen"].as_u64()),
        (Some(env.subnet.network().to_string().as_str()), Some(32)),
        "{addrs}"
    );
    let routes = lab.twill_routes(1);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["dst"], NETWORK);
    assert_eq!(routes[0]["dev"], "flannel-wg");
    assert_eq!(routes[0]["scope"], "link");

    // The key file: base64, mode 0400; the lease in Flannel's format with its public key.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key_file(&lab, 1)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400);
    let public = public_of(&key_file(&lab, 1));
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        env.subnet.network(),
        env.subnet.prefix_len()
    );
    assert_eq!(
        lab.etcdctl(&["get", &key, "--print-value-only"]).trim(),
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":{PORT}}}}}"#,
            lab.cluster.host(1).ip
        )
    );
    assert!(
        !lab.log(1).contains(&std::fs::read_to_string(key_file(&lab, 1)).unwrap()),
        "the private key is never logged"
    );

    // 8 MiB across hosts, byte for byte, both ways.
    let payload = data(8 << 20);
    assert_transfer_intact(&lab, 0, 2, &payload, "h1 → h2");
    assert_transfer_intact(&lab, 5, 1, &payload, "h3 → h1");
    assert_transfer_intact(&lab, 3, 4, &payload, "h2 → h3");

    // `wg show` reads twilld's UAPI socket: both peers, their subnets, endpoints, a
    // handshake, traffic, and the PSK set.
    let dump = wg_dump(&lab, 1);
    assert_eq!(dump[0][1], public, "{dump:?}");
    assert_eq!(dump[0][2], PORT.to_string(), "{dump:?}");
    assert_eq!(dump.len(), 3, "device + 2 peers: {dump:?}");
    for peer in &dump[1..] {
        assert_ne!(peer[1], "(none)", "PSK set: {peer:?}");
        assert!(peer[3].starts_with("10.23."), "{peer:?}");
        assert_ne!(peer[4], "0", "a handshake happened: {peer:?}");
        assert!(peer[5].parse::<u64>().unwrap() > 0, "rx bytes: {peer:?}");
    }
    let counter = |name: &str| sample(&lab, 1, &format!("{name}_total")).unwrap_or(0);
    lab.eventually("the data path's counters published", 5, || {
        counter("twilld_wireguard_tx_packets") > 5000 && counter("twilld_wireguard_rx_packets") > 5000
    });
    assert_eq!(dropped(&lab, 1, "spoofed_source"), 0);
    assert_eq!(dropped(&lab, 1, "unauthenticated"), 0);
}

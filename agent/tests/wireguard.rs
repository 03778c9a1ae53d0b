//! The wireguard backend end to end: real etcd, hosts as namespaces, real TUN devices and
//! twilld's user-space WireGuard data path; containers attached with twill; `wg` and
//! Debian's wireguard-go as the other side where a test needs the real thing.

mod common;

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
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

/// The agents lease below 10.23.200.0 (`SubnetMax`): the tests write other nodes' leases at
/// .200 and .250 while agents run, and a random pick must never be holding one of them.
fn config(backend_extra: &str) -> String {
    format!(
        r#"{{"Network":"{NETWORK}","SubnetMax":"10.23.199.0","Backend":{{"Type":"wireguard"{backend_extra}}}}}"#
    )
}

/// A wireguard lab: `twilld` on hosts `1..=agents` of `hosts`, `per_host` containers each.
fn lab(prefix: &str, hosts: usize, agents: usize, per_host: usize, config: &str) -> AgentLab {
    lab_with_flags(prefix, hosts, agents, per_host, config, |_| &[])
}

/// [`lab`] with host `h`'s twilld given `flags(h)` too.
fn lab_with_flags(
    prefix: &str,
    hosts: usize,
    agents: usize,
    per_host: usize,
    config: &str,
    flags: impl Fn(usize) -> &'static [&'static str],
) -> AgentLab {
    let mut lab = AgentLab::new(prefix, hosts, config);
    for h in 1..=agents {
        lab.start_wireguard_agent_with(h, METRICS_PORT, flags(h));
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

/// `wg show flannel-wg dump` against host `h`'s twilld: the device line and one per peer.
fn wg_dump(lab: &AgentLab, h: usize) -> Vec<Vec<String>> {
    let (ok, out) = common::in_wg_dir(None, &lab.wg_socket_dir(h), "wg show flannel-wg dump");
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
    // Host 3 spreads one flow's crypto over a helper thread (by default only with 4 CPUs or
    // more): the transfers to and from it below go through split batches. Host 2 seals and
    // opens with ring, the others with what twilld picks (intel-ipsec-mb where it runs its
    // AVX-512 code): every pair and the transfers cross the two AEADs.
    let lab = lab_with_flags(
        "twg-ap",
        3,
        3,
        2,
        &config(&format!(r#","PSK":"{psk}""#)),
        |h| match h {
            2 => &["--wireguard-aead", "ring"],
            3 => &["--wireguard-crypto-threads", "2"],
            _ => &[],
        },
    );
    lab.eventually("all pairs reachable over wireguard", 30, || {
        lab.unreachable_pairs().is_empty()
    });

    // Flannel's layout: flannel-wg with <subnet>.0/32 and MTU − 80, one link-scope route;
    // and twill's fail-closed route under it (unreachable, for when the device is gone).
    let env = common::assert_flannel_tun_device(&lab, 1, "flannel-wg", 1420);
    let routes = lab.twill_routes(1);
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(routes[0]["dst"], NETWORK);
    assert_eq!(routes[0]["dev"], "flannel-wg");
    assert_eq!(routes[0]["scope"], "link");
    assert_eq!(routes[1]["dst"], NETWORK);
    assert_eq!(routes[1]["type"], "unreachable");
    assert_eq!(routes[1]["metric"], 1_000_000);

    // The key file: base64, mode 0400; the lease in Flannel's format with its public key.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.wg_key_file(1))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o400);
    let public = common::wg_public_of(&lab.wg_key_file(1));
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        env.ipv4.unwrap().subnet.network(),
        env.ipv4.unwrap().subnet.prefix_len()
    );
    assert_eq!(
        lab.etcdctl(&["get", &key, "--print-value-only"]).trim(),
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":{PORT}}}}}"#,
            lab.cluster.host(1).ip
        )
    );
    assert!(
        !lab.log(1)
            .contains(&std::fs::read_to_string(lab.wg_key_file(1)).unwrap()),
        "the private key is never logged"
    );

    // The AEAD each one runs is logged (and why not intel-ipsec-mb, when not).
    assert!(
        lab.log(2).contains("wireguard transport AEAD aead=ring"),
        "{}",
        lab.log(2)
    );
    let picked = lab.log(1);
    assert!(
        picked.contains("wireguard transport AEAD aead=intel-ipsec-mb")
            || (picked.contains("wireguard transport AEAD aead=ring") && picked.contains("why=")),
        "{picked}"
    );

    // 8 MiB across hosts, byte for byte, both ways.
    let payload = common::test_data(8 << 20);
    common::assert_transfer_intact(&lab, 0, 2, &payload, "h1 → h2");
    common::assert_transfer_intact(&lab, 5, 1, &payload, "h3 → h1");
    common::assert_transfer_intact(&lab, 3, 4, &payload, "h2 → h3");

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
    // The raw answer: `protocol_version` once per peer, as wireguard-go writes it.
    let raw = {
        use std::io::{Read, Write};
        let mut c =
            std::os::unix::net::UnixStream::connect(lab.wg_socket_dir(1).join("flannel-wg.sock"))
                .unwrap();
        c.write_all(b"get=1\n\n").unwrap();
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        text
    };
    assert_eq!(raw.matches("protocol_version=1\n").count(), 2, "{raw}");
    let counter = |name: &str| sample(&lab, 1, &format!("{name}_total")).unwrap_or(0);
    lab.eventually("the data path's counters published", 5, || {
        counter("twilld_wireguard_tx_packets") > 5000
            && counter("twilld_wireguard_rx_packets") > 5000
    });
    assert_eq!(dropped(&lab, 1, "spoofed_source"), 0);
    assert_eq!(dropped(&lab, 1, "unauthenticated"), 0);
    // `twilld status`: the leases, then per peer its last handshake and bytes.
    let text = lab.twilld_status(
        1,
        &[
            "--wireguard-socket-dir",
            lab.wg_socket_dir(1).to_str().unwrap(),
        ],
    );
    assert!(text.contains("wireguard peers of flannel-wg"), "{text}");
    for peer in &dump[1..] {
        let line = text
            .lines()
            .find(|l| l.contains(&peer[0]))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("s ago") && line.contains(&peer[3]), "{line}");
    }
    // Per peer in /metrics: a handshake time, bytes, drops. And the AEAD in use.
    let page = lab.http_get(1, METRICS_PORT, "/metrics");
    assert!(
        page.lines()
            .any(|l| l.starts_with("twilld_wireguard_aead_info{aead=\"") && l.ends_with("\"} 1")),
        "{page}"
    );
    for peer in &dump[1..] {
        let labels = format!("peer=\"{}\",subnet=\"{}\"", peer[0], peer[3]);
        let value = |name: &str| -> u64 {
            let key = format!("{name}{{{labels}}} ");
            page.lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in /metrics:\n{page}"))
        };
        assert!(value("twilld_wireguard_peer_last_handshake_seconds") > 1_700_000_000);
        assert!(value("twilld_wireguard_peer_rx_bytes_total") > 0);
        assert!(page.contains(&format!(
            "twilld_wireguard_peer_dropped_packets_total{{{labels},reason=\"replay\"}} 0"
        )));
    }
}

/// Sends each payload as a UDP datagram `from`:51820 → `to`:51820 through a raw socket in
/// `netns`, so the source can be anything (a peer's address, forged).
fn send_raw(netns: &twill_netkit::Netns, from: Ipv4Addr, to: Ipv4Addr, payloads: &[Vec<u8>]) {
    let packets: Vec<Vec<u8>> = payloads
        .iter()
        .enumerate()
        .map(|(n, payload)| {
            let udp = common::udp_datagram(PORT, payload);
            let mut ip = common::ipv4_header(from, to, 17, udp.len(), 0x7700 + n as u16);
            ip.extend_from_slice(&udp);
            ip
        })
        .collect();
    common::send_ip(netns, to, &packets);
}

/// The UDP payloads of a pcap file of Ethernet frames carrying IPv4/UDP.
fn pcap_udp_payloads(file: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(file).unwrap();
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &b[at + 16..(at + 16 + incl).min(b.len())];
        at += 16 + incl;
        if frame.len() < 14 + 20 + 8 {
            continue;
        }
        let ip = &frame[14..];
        let ihl = (ip[0] & 0xf) as usize * 4;
        let udp = &ip[ihl..];
        let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
        out.push(udp[8..len.min(udp.len())].to_vec());
    }
    out
}

/// A random 32-byte key.
fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut k)
        .unwrap();
    k
}

#[test]
fn wireguard_forgeries_keepalive_flannel_lease_removal_and_restart() {
    if !preconditions(
        "wireguard_forgeries_keepalive_flannel_lease_removal_and_restart",
        &[TOOLS, &["wg", "unshare", "tcpdump", "timeout"]].concat(),
    ) {
        return;
    }
    let mut lab = lab(
        "twg-fk",
        2,
        2,
        1,
        &config(r#","PersistentKeepaliveInterval":1"#),
    );
    lab.eventually("both containers reach each other", 30, || {
        lab.unreachable_pairs().is_empty()
    });
    let (h1, h2) = (
        lab.cluster.host(1).name.clone(),
        lab.cluster.host(2).name.clone(),
    );
    let (ip1, ip2) = (lab.cluster.host(1).ip, lab.cluster.host(2).ip);

    // Keepalives on the wire while nothing else flows: 32-byte transport messages (UDP
    // length 40) from h1, at least two in a few seconds with an interval of 1 s.
    let filter = format!("udp and src host {ip1} and dst port {PORT} and udp[4:2] = 40");
    let out = Command::new("ip")
        .args([
            "netns", "exec", &h2, "timeout", "8", "tcpdump", "-i", "eth0", "-n", "-p", "-c", "2",
            &filter,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no keepalives seen: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // None while traffic flows: WireGuard sends a persistent keepalive only after the
    // interval passes without an authenticated packet (boringtun sent one every interval).
    let mut pinger = lab.containers[0]
        .netns
        .enter(|| {
            Command::new("ping")
                .args(["-q", "-i", "0.2", "-c", "30", &lab.containers[1].ip])
                .stdout(std::process::Stdio::null())
                .spawn()
        })
        .unwrap()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let quiet = Command::new("ip")
        .args([
            "netns", "exec", &h2, "timeout", "3", "tcpdump", "-i", "eth0", "-n", "-p", "-c", "1",
            &filter,
        ])
        .output()
        .unwrap();
    let _ = pinger.kill();
    let _ = pinger.wait();
    assert!(
        !quiet.status.success(),
        "a persistent keepalive went out while traffic flowed: {}",
        String::from_utf8_lossy(&quiet.stdout)
    );

    // Capture a few real transport messages from h2 to h1 to replay them.
    let pcap = lab.dir.path().join("h2-to-h1.pcap");
    let pcap_s = pcap.display().to_string();
    let filter =
        format!("udp and src host {ip2} and dst port {PORT} and udp[8] = 4 and udp[4:2] > 200");
    let mut dump = Command::new("ip")
        .args([
            "netns", "exec", &h1, "timeout", "10", "tcpdump", "-i", "eth0", "-n", "-p", "-c", "4",
            "-w", &pcap_s, &filter,
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let mut ping = Command::new("ping");
    ping.args(["-c", "4", "-i", "0.2", "-s", "300", &lab.containers[0].ip])
        .stdout(Stdio::null());
    lab.containers[1].netns.prepare_command(&mut ping).unwrap();
    assert!(ping.status().unwrap().success());
    assert!(dump.wait().unwrap().success(), "capture");
    let captured = pcap_udp_payloads(&pcap);
    assert_eq!(captured.len(), 4, "captured transport messages");

    let before = |r: &str| dropped(&lab, 1, r);
    let (replay0, unauth0, unknown0) = (
        before("replay"),
        before("unauthenticated"),
        before("unknown_peer"),
    );
    let h2ns = &lab.cluster.host(2).netns;
    // Replays of real messages.
    send_raw(h2ns, ip2, ip1, &captured);
    // A real message with a fresh counter and one flipped bit: fails authentication.
    let mut tampered = captured[0].clone();
    tampered[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let last = tampered.len() - 20;
    tampered[last] ^= 1;
    // A transport message for a session index nobody has, and a junk handshake initiation.
    let mut unknown_index = vec![4, 0, 0, 0, 0xee, 0xee, 0xee, 0xee];
    unknown_index.extend_from_slice(&[0u8; 100]);
    let mut junk_init = vec![1u8, 0, 0, 0];
    junk_init.extend_from_slice(&[0x42; 144]);
    send_raw(
        h2ns,
        ip2,
        ip1,
        &[tampered, unknown_index, junk_init.clone()],
    );
    // From an address that holds no lease: a replayed message is opened (a peer may roam
    // there) and refused as a replay, moving nothing; a handshake that fails its MACs is
    // refused at the cookie gate (with `--wireguard-roaming lease` both would be dropped
    // before any crypto as `unknown_peer`: the transform's unit tests).
    send_raw(
        h2ns,
        Ipv4Addr::new(172, 31, 0, 99),
        ip1,
        &[captured[0].clone(), junk_init],
    );
    lab.eventually("forgeries dropped and counted", 5, || {
        before("replay") >= replay0 + 5 && before("unauthenticated") >= unauth0 + 4
    });
    assert_eq!(before("unknown_peer"), unknown0);
    assert!(
        lab.ping(0, &lab.containers[1].ip),
        "traffic still flows (no endpoint moved)"
    );

    // A lease in Flannel's format from another node (without Port: an older flanneld)
    // becomes a peer at our port; removing it removes the peer.
    let other = b64(&random_key());
    let lease_key = "/coreos.com/network/subnets/10.23.250.0-24";
    lab.etcdctl(&[
        "put",
        lease_key,
        &format!(r#"{{"PublicIP":"172.31.0.77","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{other}"}}}}"#),
    ]);
    let has_other = |lab: &AgentLab| {
        wg_dump(lab, 1).iter().any(|p| {
            p[0] == other && p[2] == format!("172.31.0.77:{PORT}") && p[3] == "10.23.250.0/24"
        })
    };
    lab.eventually("the Flannel lease became a peer", 10, || has_other(&lab));
    lab.etcdctl(&["del", lease_key]);
    lab.eventually("the removed lease's peer is gone", 10, || !has_other(&lab));

    // A restart keeps the key (and so the lease's public key); sessions come back.
    let public = common::wg_public_of(&lab.wg_key_file(1));
    lab.kill_agent(1);
    lab.start_wireguard_agent(1, METRICS_PORT);
    lab.eventually("h1's twilld serves again", 20, || {
        lab.http_get(1, METRICS_PORT, "/healthz").contains("ok")
    });
    assert_eq!(common::wg_public_of(&lab.wg_key_file(1)), public);
    lab.eventually("traffic flows again after the restart", 30, || {
        lab.unreachable_pairs().is_empty()
    });
    assert_eq!(wg_dump(&lab, 1)[0][1], public);
}

#[test]
fn wireguard_a_node_behind_a_port_rewriting_nat_is_reached_where_its_messages_come_from() {
    behind_a_nat(
        "wireguard_a_node_behind_a_port_rewriting_nat_is_reached_where_its_messages_come_from",
        "twg-nat",
        None,
    );
}

#[test]
fn wireguard_a_node_behind_an_address_rewriting_nat_is_reached_there_after_a_cookie() {
    behind_a_nat(
        "wireguard_a_node_behind_an_address_rewriting_nat_is_reached_there_after_a_cookie",
        "twg-nata",
        Some(Ipv4Addr::new(172, 31, 0, 200)),
    );
}

#[test]
fn wireguard_with_a_public_ip_that_is_not_local_binds_the_link_and_is_reached_by_roaming() {
    if !preconditions(
        "wireguard_with_a_public_ip_that_is_not_local_binds_the_link_and_is_reached_by_roaming",
        &[TOOLS, &["wg", "unshare"]].concat(),
    ) {
        return;
    }
    // Host 2's `--public-ip` names an address it does not hold (on the lab's underlay
    // subnet, held by nobody: where a NAT's outside address would be). Its lease says that;
    // it binds its link's address, and host 1 reaches it by roaming to where its
    // authenticated messages come from — an address no lease names, after a cookie.
    let mut lab = AgentLab::new("twg-pub", 2, &config(""));
    lab.start_wireguard_agent(1, METRICS_PORT);
    lab.start_wireguard_agent_with(2, METRICS_PORT, &["--public-ip", common::NAT_OUTSIDE]);
    for h in 1..=2 {
        lab.wait_subnet(h);
        lab.add_container(h);
    }
    let ip2 = lab.cluster.host(2).ip;
    assert!(
        lab.udp_bound(2, &format!("{ip2}:{PORT}")),
        "host 2 binds its link's address"
    );
    reached_both_ways_at(&lab, &format!("{ip2}:{PORT}"));
}

/// Host 2, which only it can open the way to, speaks first: its container reaches host 1's
/// (from an address no lease names its first initiation gets a cookie, its retry 5 s later
/// the handshake); then host 1's reaches host 2's, at `endpoint`, where host 1 now sends.
fn reached_both_ways_at(lab: &AgentLab, endpoint: &str) {
    lab.eventually("host 2's container reaches host 1's", 30, || {
        lab.ping(1, &lab.containers[0].ip)
    });
    assert!(
        lab.ping(0, &lab.containers[1].ip),
        "host 1's container reaches host 2's at {endpoint}"
    );
    let peer2 = wg_dump(lab, 1)
        .into_iter()
        .nth(1)
        .expect("host 1 has host 2 as its peer");
    assert_eq!(peer2[2], endpoint, "{peer2:?}");
}

/// Host 2 sits behind a NAT that rewrites its WireGuard port to NAT_PORT (and its address
/// to `nat_ip`, an address no lease names, when given) and lets in only replies: datagrams
/// addressed to its own port are dropped before conntrack sees them. Its lease still names
/// its own address and PORT, so host 1 reaches it only by roaming to where host 2's
/// authenticated messages come from, as WireGuard does — from an unleased address only
/// after host 2 has returned a cookie.
fn behind_a_nat(name: &str, prefix: &str, nat_ip: Option<Ipv4Addr>) {
    if !preconditions(name, &[TOOLS, &["wg", "unshare"]].concat()) {
        return;
    }
    const NAT_PORT: u16 = 40123;
    let mut lab = AgentLab::new(prefix, 2, &config(""));
    let ip2 = lab.cluster.host(2).ip;
    let seen_as = nat_ip.unwrap_or(ip2);
    if let Some(nat_ip) = nat_ip {
        // The NAT's address answers ARP on the underlay.
        let mut ip = Command::new("ip");
        ip.args(["addr", "add", &format!("{nat_ip}/24"), "dev", "eth0"]);
        lab.cluster.host(2).netns.prepare_command(&mut ip).unwrap();
        assert!(ip.status().unwrap().success(), "adding {nat_ip} on host 2");
    }
    let rules = format!(
        "table ip twill_test_nat {{
            chain not_to_the_port {{ type filter hook prerouting priority raw; udp dport {PORT} drop; }}
            chain rewrite {{ type nat hook postrouting priority srcnat; udp sport {PORT} snat to {seen_as}:{NAT_PORT}; }}
        }}"
    );
    let mut nft = Command::new("nft");
    nft.args(["-f", "-"]).stdin(Stdio::piped());
    lab.cluster.host(2).netns.prepare_command(&mut nft).unwrap();
    let mut child = nft.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "the NAT's rules: {rules}");
    for h in 1..=2 {
        lab.start_wireguard_agent(h, METRICS_PORT);
    }
    for h in 1..=2 {
        lab.wait_subnet(h);
        lab.add_container(h);
    }
    reached_both_ways_at(&lab, &format!("{seen_as}:{NAT_PORT}"));
    let page = lab.http_get(1, METRICS_PORT, "/metrics");
    assert!(
        page.lines()
            .any(|l| l.starts_with("twilld_wireguard_peer_roams_total{") && l.ends_with(" 1")),
        "one roam in /metrics:\n{page}"
    );
    assert!(
        lab.log(1).contains("wireguard peer roamed"),
        "the roam is logged:\n{}",
        lab.log(1)
    );
    let payload = common::test_data(1 << 20);
    common::assert_transfer_intact(
        &lab,
        0,
        1,
        &payload,
        "1 MiB from host 1 to host 2 through the NAT",
    );
}

#[test]
fn wireguard_interop_with_wireguard_go_configured_like_flannel() {
    if !preconditions(
        "wireguard_interop_with_wireguard_go_configured_like_flannel",
        &[TOOLS, &["wg", "wireguard-go", "unshare"]].concat(),
    ) {
        return;
    }
    // h1 runs twilld; h2 runs Debian's wireguard-go, set up with `wg set` and `ip` exactly as
    // Flannel's wireguard backend sets up its device and peers, its lease in Flannel's format.
    let psk = random_key();
    let mut lab = lab(
        "twg-io",
        2,
        1,
        1,
        &config(&format!(r#","PSK":"{}""#, b64(&psk))),
    );
    let env1 = lab.wait_subnet(1);
    let twilld_public = common::wg_public_of(&lab.wg_key_file(1));
    let (ip1, ip2) = (lab.cluster.host(1).ip, lab.cluster.host(2).ip);
    let h2 = lab.cluster.host(2).name.clone();
    let dir = lab.dir.path().join("h2-wggo");
    std::fs::create_dir_all(&dir).unwrap();
    let private = random_key();
    let secret = boringtun::x25519::StaticSecret::from(private);
    let wggo_public = b64(boringtun::x25519::PublicKey::from(&secret).as_bytes());
    std::fs::write(dir.join("key"), b64(&private)).unwrap();
    std::fs::write(dir.join("psk"), b64(&psk)).unwrap();
    let subnet2 = "10.23.200.0/24";
    let script = format!(
        "wireguard-go flannel-wg && \
         wg set flannel-wg private-key {d}/key listen-port {PORT} && \
         ip addr add 10.23.200.0/32 dev flannel-wg && ip link set flannel-wg mtu 1420 up && \
         ip route replace {NETWORK} dev flannel-wg scope link && \
         wg set flannel-wg peer {twilld_public} endpoint {ip1}:{PORT} allowed-ips {s1} preshared-key {d}/psk && \
         wg show flannel-wg dump",
        d = dir.display(),
        s1 = env1.ipv4.unwrap().subnet,
    );
    let (ok, out) = common::in_wg_dir(Some(&h2), &dir, &script);
    assert!(ok, "wireguard-go set up like Flannel: {out}");
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.23.200.0-24",
        &format!(r#"{{"PublicIP":"{ip2}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{wggo_public}","Port":{PORT}}}}}"#),
    ]);
    // A container on h2 behind the wireguard-go device (subnet.env as flanneld writes it).
    let files = lab.files(2);
    std::fs::create_dir_all(files.subnet_file.parent().unwrap()).unwrap();
    std::fs::write(
        &files.subnet_file,
        format!("FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET=10.23.200.1/24\nFLANNEL_MTU=1420\nFLANNEL_IPMASQ=false\n"),
    )
    .unwrap();
    lab.add_container(2);
    let _ = subnet2;
    lab.eventually("twilld ↔ wireguard-go: both ways", 30, || {
        lab.unreachable_pairs().is_empty()
    });
    let payload = common::test_data(4 << 20);
    common::assert_transfer_intact(&lab, 0, 1, &payload, "twilld → wireguard-go");
    common::assert_transfer_intact(&lab, 1, 0, &payload, "wireguard-go → twilld");

    // An inner source outside wireguard-go's AllowedIPs on our side: wireguard-go encrypts it
    // (its own checks are on its receive side), twilld drops and counts it.
    let spoofed0 = dropped(&lab, 1, "spoofed_source");
    twill_tests::run(
        "ip",
        &["-n", &h2, "addr", "add", "10.23.77.1/32", "dev", "lo"],
    );
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h2,
            "ping",
            "-c",
            "3",
            "-W",
            "1",
            "-I",
            "10.23.77.1",
            &lab.containers[0].ip,
        ])
        .stdout(Stdio::null())
        .status();
    lab.eventually("the spoofed inner source dropped and counted", 5, || {
        dropped(&lab, 1, "spoofed_source") >= spoofed0 + 3
    });
}

#[test]
fn wireguard_bad_config_and_bad_key_file_are_named() {
    if !preconditions("wireguard_bad_config_and_bad_key_file_are_named", TOOLS) {
        return;
    }
    let mut lab = AgentLab::new("twg-bc", 1, &config(r#","PSK":"xx""#));
    lab.start_wireguard_agent(1, METRICS_PORT);
    let psk_short = b64(&[1u8; 16]);
    for (cfg, said) in [
        (None, "Backend.PSK: not base64"),
        (
            Some(config(&format!(r#","PSK":"{psk_short}""#))),
            "Backend.PSK: 16 bytes, a key has 32",
        ),
        (
            Some(config(r#","ListenPort":70000"#)),
            "Backend.ListenPort: 70000 is not a port",
        ),
        (
            Some(config(r#","PersistentKeepaliveInterval":"25s""#)),
            "Backend.PersistentKeepaliveInterval",
        ),
        (
            Some(config(r#","Mode":"bogus""#)),
            "Backend.Mode: \"bogus\" is not a mode",
        ),
        (
            Some(config(r#","Mode":"IPv6""#)),
            "Backend.Mode: \"IPv6\" is not a mode",
        ),
        (
            Some(config(r#","ListenPortV6":70000"#)),
            "Backend.ListenPortV6: 70000 is not a port",
        ),
    ] {
        if let Some(cfg) = cfg {
            lab.etcd.put_network_config(&cfg).unwrap();
        }
        lab.eventually(&format!("twilld says {said}"), 10, || {
            lab.log(1).contains(said)
        });
    }
    // A key file that is not a key: twilld stops, naming the file and not its contents.
    lab.kill_agent(1);
    std::fs::write(lab.wg_key_file(1), "c2VjcmV0LWJ1dC1zaG9ydA==").unwrap();
    lab.etcd.put_network_config(&config("")).unwrap();
    lab.start_wireguard_agent(1, METRICS_PORT);
    let exited = lab.agent_exits_within(1, Duration::from_secs(15));
    let log = lab.log(1);
    assert!(exited, "twilld kept running with a bad key file:\n{log}");
    let path = lab.wg_key_file(1).display().to_string();
    assert!(
        log.contains(&path) && log.contains("not a WireGuard key"),
        "{log}"
    );
    assert!(!log.contains("c2VjcmV0"), "{log}");

    // Where intel-ipsec-mb cannot be opened (here: twilld in a mount namespace of its own
    // where the library is an empty file): `ipsec-mb` refuses to start and says why; `auto`
    // runs with ring and logs why not the faster one.
    use std::os::unix::fs::PermissionsExt;
    std::fs::remove_file(lab.wg_key_file(1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("twilld-without-ipsec-mb");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             exec unshare --mount --propagation private sh -c \
             'if [ -e \"$0\" ]; then mount --bind /dev/null \"$0\" || exit 97; fi; exec \"$@\"' \
             {IPSEC_MB_LIBRARY} {} \"$@\"\n",
            common::TWILLD
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    lab.kill_agent(1);
    let before = lab.log(1).len();
    lab.start_wireguard_agent_via(1, &wrapper, METRICS_PORT, &["--wireguard-aead", "ipsec-mb"]);
    let exited = lab.agent_exits_within(1, Duration::from_secs(15));
    let log = lab.log(1)[before..].to_owned();
    assert!(
        exited,
        "twilld ran without the library it was told to use:\n{log}"
    );
    assert!(
        log.contains("--wireguard-aead ipsec-mb: intel-ipsec-mb cannot be used")
            && log.contains("opening intel-ipsec-mb"),
        "{log}"
    );
    lab.kill_agent(1);
    let before = lab.log(1).len();
    lab.start_wireguard_agent_via(1, &wrapper, METRICS_PORT, &[]);
    lab.eventually("twilld falls back to ring and says why", 15, || {
        let log = &lab.log(1)[before..];
        log.contains("wireguard transport AEAD aead=ring")
            && log.contains("why=opening intel-ipsec-mb")
    });
}

/// Where Debian puts the library twilld opens for `--wireguard-aead`.
const IPSEC_MB_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/libIPSec_MB.so.1";

/// `ip route get IP` in `netns`: the route's line, or the error.
fn route_get(netns: &str, ip: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "route", "get", ip])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn wireguard_pod_traffic_is_refused_not_leaked_while_twilld_is_down() {
    // Before: flannel-wg is a TUN that goes with twilld, and with it the overlay's route:
    // pod traffic to other nodes then followed the default route out of eth0, unencrypted.
    if !preconditions(
        "wireguard_pod_traffic_is_refused_not_leaked_while_twilld_is_down",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new("twg-fc", 2, &config(""));
    let ns = lab.cluster.host(1).name.clone();
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The fail-closed route of an earlier setup with another Network: twilld removes it,
    // or that range would be refused for good.
    ip(&[
        "route",
        "add",
        "unreachable",
        "10.99.0.0/16",
        "metric",
        "1000000",
        "proto",
        "116",
    ]);
    for h in 1..=2 {
        lab.start_wireguard_agent_with(h, METRICS_PORT, &[]);
    }
    for h in 1..=2 {
        lab.wait_subnet(h);
        lab.add_container(h);
    }
    let unreachable = ip(&["route", "show", "type", "unreachable"]);
    assert!(!unreachable.contains("10.99.0.0/16"), "{unreachable}");
    assert!(unreachable.contains(NETWORK), "{unreachable}");
    let remote = lab
        .containers
        .iter()
        .find(|c| c.host == 2)
        .expect("a container on host 2")
        .ip
        .clone();
    // Where a leak would go: every real node has a default route.
    ip(&["route", "add", "default", "via", "172.31.0.1"]);
    let up = route_get(&ns, &remote);
    assert!(up.contains("dev flannel-wg"), "{up}");
    lab.stop_agent(1);
    let down = route_get(&ns, &remote);
    assert!(
        !down.contains("via 172.31.0.1") && down.contains("No route to host"),
        "with twilld stopped, {remote} goes: {down}"
    );
    // Back: the device's route wins again.
    lab.start_wireguard_agent_with(1, METRICS_PORT, &[]);
    lab.eventually("the overlay route back", 20, || {
        route_get(&ns, &remote).contains("dev flannel-wg")
    });
}

#[test]
fn wireguard_a_device_set_down_or_stripped_by_hand_is_repaired() {
    // Before: only a deleted device or a dead worker was rebuilt. `ip link set flannel-wg
    // down` (or a network manager taking the device) dropped its route and kept it down, and
    // a flushed address stayed gone (host-to-pod traffic then leaves from the underlay
    // address, outside this node's AllowedIPs on every peer), both until twilld restarted.
    if !preconditions(
        "wireguard_a_device_set_down_or_stripped_by_hand_is_repaired",
        TOOLS,
    ) {
        return;
    }
    let lab = lab("twg-dn", 2, 2, 1, &config(""));
    lab.eventually("both containers reach each other", 30, || {
        lab.unreachable_pairs().is_empty()
    });
    common::assert_tun_device_repaired(&lab, 1, "flannel-wg", NETWORK);
}

#[test]
fn wireguard_a_device_of_another_kind_under_the_name_is_recreated_as_flannel_does() {
    // Before: a `flannel-wg` of another kind (a kernel WireGuard device a killed flanneld
    // left on a node moving to twill; a bridge here, the kernel has no wireguard module)
    // failed twilld's start ("a device of that name exists and is not a TUN device");
    // Flannel deletes whatever holds the name and creates its device.
    if !preconditions(
        "wireguard_a_device_of_another_kind_under_the_name_is_recreated_as_flannel_does",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new("twg-rk", 2, &config(""));
    let h1 = lab.cluster.host(1).name.clone();
    twill_tests::run(
        "ip",
        &["-n", &h1, "link", "add", "flannel-wg", "type", "bridge"],
    );
    for h in 1..=2 {
        lab.start_wireguard_agent_with(h, METRICS_PORT, &[]);
    }
    for h in 1..=2 {
        lab.wait_subnet(h);
        lab.add_container(h);
    }
    lab.eventually("both containers reach each other", 30, || {
        lab.unreachable_pairs().is_empty()
    });
    let link = twill_tests::ip_json(&h1, &["-d", "link", "show", "flannel-wg"]);
    assert_eq!(
        link[0]["linkinfo"]["info_kind"], "tun",
        "flannel-wg is twilld's TUN now: {link}"
    );
}

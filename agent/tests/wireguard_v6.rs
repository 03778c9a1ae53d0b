//! The wireguard backend with IPv6: dual-stack and IPv6-only networks on a dual-stack
//! underlay (the test bed's hosts have `172.31.0.(10+N)` and `fd31::(10+N)`), real etcd,
//! real TUN devices, containers attached with twill; Flannel's device layout per `Mode`
//! (`flannel-wg` + `flannel-wg-v6` in separate mode, one `flannel-wg` otherwise).

mod common;

use std::process::{Command, Stdio};

use base64::Engine as _;
use common::AgentLab;
use twill_tests::preconditions;

const TOOLS: &[&str] = &["ip", "ping", "etcd", "etcdctl", "nft", "wg", "unshare"];
const METRICS_PORT: u16 = 10273;

fn dual(v4: &str, v6: &str, backend_extra: &str) -> String {
    format!(
        r#"{{"Network":"{v4}","EnableIPv6":true,"IPv6Network":"{v6}","Backend":{{"Type":"wireguard"{backend_extra}}}}}"#
    )
}

/// A wireguard lab: `hosts` hosts running twilld with `config`, `per_host` containers each.
fn lab(prefix: &str, hosts: usize, per_host: usize, config: &str) -> AgentLab {
    let mut lab = AgentLab::new(prefix, hosts, config);
    for h in 1..=hosts {
        lab.start_wireguard_agent(h, METRICS_PORT);
    }
    for h in 1..=hosts {
        lab.wait_subnet(h);
        for _ in 0..per_host {
            lab.add_container(h);
        }
    }
    lab
}

/// Pairs `(from, to, family)` of containers that do not reach each other, in each family
/// the containers have.
fn unreachable(lab: &AgentLab) -> Vec<(usize, usize, &'static str)> {
    let mut bad = Vec::new();
    let n = lab.containers.len();
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let to = &lab.containers[b];
            if !to.ip.contains(':') && !lab.ping(a, &to.ip) {
                bad.push((a, b, "v4"));
            }
            if let Some(v6) = &to.ip6
                && !lab.ping(a, v6)
            {
                bad.push((a, b, "v6"));
            }
        }
    }
    bad
}

fn all_pairs(lab: &AgentLab, what: &str) {
    lab.eventually(what, 30, || unreachable(lab).is_empty());
}

/// `wg show <device> dump` against host `h`'s twilld: the device line and one per peer.
fn wg_dump(lab: &AgentLab, h: usize, device: &str) -> Vec<Vec<String>> {
    let (ok, text) = common::in_wg_dir(
        None,
        &lab.wg_socket_dir(h),
        &format!("wg show {device} dump"),
    );
    assert!(ok, "wg show {device} dump on h{h}: {text}");
    text.lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Whether host `h` has a link named `name`.
fn has_link(lab: &AgentLab, h: usize, name: &str) -> bool {
    Command::new("ip")
        .args(["-n", &lab.cluster.host(h).name, "link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The global addresses (`addr/prefixlen`) of `dev` on host `h` in `family` (`-4`/`-6`).
fn addresses(lab: &AgentLab, h: usize, family: &str, dev: &str) -> Vec<String> {
    let v = twill_tests::ip_json(
        &lab.cluster.host(h).name,
        &[family, "addr", "show", "dev", dev, "scope", "global"],
    );
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        // `ip -j` lists an empty object for each address the filter left out.
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
        .collect()
}

/// twill's routes (protocol 116) on host `h` in `family`: (dst, dev).
fn routes(lab: &AgentLab, h: usize, family: &str) -> Vec<(String, String)> {
    twill_tests::ip_json(
        &lab.cluster.host(h).name,
        &[family, "route", "show", "proto", "116"],
    )
    .as_array()
    .into_iter()
    .flatten()
    .filter(|r| r["type"] != "unreachable")
    .map(|r| {
        (
            r["dst"].as_str().unwrap_or("").to_string(),
            r["dev"].as_str().unwrap_or("").to_string(),
        )
    })
    .collect()
}

/// The destinations of host `h`'s fail-closed (`unreachable`) twill routes of `family`.
fn fail_closed(lab: &AgentLab, h: usize, family: &str) -> Vec<String> {
    twill_tests::ip_json(
        &lab.cluster.host(h).name,
        &[
            family,
            "route",
            "show",
            "proto",
            "116",
            "type",
            "unreachable",
        ],
    )
    .as_array()
    .into_iter()
    .flatten()
    .map(|r| r["dst"].as_str().unwrap_or("").to_string())
    .collect()
}

/// The lease value of host `h` (its only key).
fn lease_value(lab: &AgentLab, h: usize) -> serde_json::Value {
    let env = lab.wait_subnet(h);
    let key = match (env.ipv4, env.ipv6) {
        (Some(a), Some(b)) => format!(
            "{}-{}&{}-{}",
            a.subnet.network(),
            a.subnet.prefix_len(),
            b.subnet.network(),
            b.subnet.prefix_len()
        ),
        (None, Some(b)) => format!("{}-{}", b.subnet.network(), b.subnet.prefix_len()),
        (Some(a), None) => format!("{}-{}", a.subnet.network(), a.subnet.prefix_len()),
        (None, None) => panic!("no subnet"),
    };
    let text = lab.etcdctl(&[
        "get",
        &format!("/coreos.com/network/subnets/{key}"),
        "--print-value-only",
    ]);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The value of the sample `key` in host `h`'s /metrics (0 while not published).
fn sample(lab: &AgentLab, h: usize, key: &str) -> u64 {
    let page = lab.http_get(h, METRICS_PORT, "/metrics");
    let prefix = format!("{key} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn dropped(lab: &AgentLab, h: usize, reason: &str) -> u64 {
    let page = lab.http_get(h, METRICS_PORT, "/metrics");
    let key = format!("twilld_wireguard_dropped_packets_total{{reason=\"{reason}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn wireguard_dual_stack_separate_mode_runs_flannel_wg_and_flannel_wg_v6() {
    if !preconditions(
        "wireguard_dual_stack_separate_mode_runs_flannel_wg_and_flannel_wg_v6",
        TOOLS,
    ) {
        return;
    }
    let lab = lab("twg6-sep", 3, 2, &dual("10.61.0.0/16", "fd00:61::/48", ""));
    all_pairs(&lab, "all pairs reachable over wireguard, both families");

    // Flannel's layout: flannel-wg with <subnet>.0/32 and flannel-wg-v6 with <v6 subnet>/128,
    // both MTU − 80, each with the route of its network.
    let env = lab.wait_subnet(1);
    let (s4, s6) = (env.ipv4.unwrap().subnet, env.ipv6.unwrap().subnet);
    assert_eq!(env.mtu, 1420);
    let h1 = lab.cluster.host(1).name.clone();
    for dev in ["flannel-wg", "flannel-wg-v6"] {
        assert_eq!(twill_tests::ip_link(&h1, dev)["mtu"], 1420, "{dev}");
    }
    assert_eq!(
        addresses(&lab, 1, "-4", "flannel-wg"),
        [format!("{}/32", s4.network())]
    );
    assert_eq!(
        addresses(&lab, 1, "-6", "flannel-wg-v6"),
        [format!("{}/128", s6.network())]
    );
    assert!(addresses(&lab, 1, "-6", "flannel-wg").is_empty());
    assert_eq!(
        routes(&lab, 1, "-4"),
        [("10.61.0.0/16".to_string(), "flannel-wg".to_string())]
    );
    assert_eq!(
        routes(&lab, 1, "-6"),
        [("fd00:61::/48".to_string(), "flannel-wg-v6".to_string())]
    );
    // Under each, the route that refuses pod traffic while a device is gone.
    assert_eq!(fail_closed(&lab, 1, "-4"), ["10.61.0.0/16"]);
    assert_eq!(fail_closed(&lab, 1, "-6"), ["fd00:61::/48"]);

    // The lease: one key for both families; BackendV6Data holds the same public key and
    // ListenPortV6, PublicIPv6 the host's IPv6 underlay address.
    let public = common::wg_public_of(&lab.wg_key_file(1));
    let v = lease_value(&lab, 1);
    assert_eq!(
        v,
        serde_json::json!({
            "PublicIP": lab.cluster.host(1).ip.to_string(),
            "PublicIPv6": lab.cluster.host(1).ip6.to_string(),
            "BackendType": "wireguard",
            "BackendData": {"PublicKey": public, "Port": 51820},
            "BackendV6Data": {"PublicKey": public, "Port": 51821},
        })
    );

    // `wg show flannel-wg-v6`: listening on 51821, each peer at [its fd31:: address]:51821
    // with its IPv6 subnet; flannel-wg's peers stay IPv4.
    let dump6 = wg_dump(&lab, 1, "flannel-wg-v6");
    assert_eq!(dump6[0][2], "51821", "{dump6:?}");
    assert_eq!(dump6.len(), 3, "device + 2 peers: {dump6:?}");
    for peer in &dump6[1..] {
        assert!(
            peer[2].starts_with("[fd31::") && peer[2].ends_with("]:51821"),
            "{peer:?}"
        );
        assert!(peer[3].starts_with("fd00:61:"), "{peer:?}");
        assert_ne!(peer[4], "0", "a handshake happened: {peer:?}");
    }
    let dump4 = wg_dump(&lab, 1, "flannel-wg");
    for peer in &dump4[1..] {
        assert!(
            peer[2].starts_with("172.31.0.") && peer[2].ends_with(":51820"),
            "{peer:?}"
        );
        assert!(peer[3].starts_with("10.61."), "{peer:?}");
    }

    // 8 MiB over IPv6 across hosts, byte for byte, both ways; and over IPv4 alongside.
    // IPv6 TCP rides TSO super-packets out of the TUN and coalesced writes into it, as IPv4.
    let payload = common::test_data(8 << 20);
    let to = |c: usize| lab.containers[c].ip6.clone().unwrap();
    let counter = |h: usize, name: &str| sample(&lab, h, &format!("twilld_wireguard_{name}_total"));
    let before = [
        counter(1, "tun_reads"),
        counter(1, "tx_packets"),
        counter(2, "tun_writes"),
        counter(2, "rx_packets"),
    ];
    assert!(
        common::tcp_transfer_to(&lab, 0, 2, &to(2), &payload) == payload,
        "h1 → h2 over IPv6 corrupted"
    );
    lab.eventually("the IPv6 transfer counted", 5, || {
        counter(1, "tx_packets") - before[1] > 6000 && counter(2, "rx_packets") - before[3] > 6000
    });
    let reads = counter(1, "tun_reads") - before[0];
    let sent = counter(1, "tx_packets") - before[1];
    let writes = counter(2, "tun_writes") - before[2];
    let received = counter(2, "rx_packets") - before[3];
    assert!(
        sent > 4 * reads,
        "TSO6: {sent} segments from {reads} TUN reads"
    );
    assert!(
        received > 4 * writes,
        "coalescing: {received} segments in {writes} TUN writes"
    );
    assert!(
        common::tcp_transfer_to(&lab, 5, 1, &to(1), &payload) == payload,
        "h3 → h1 over IPv6 corrupted"
    );
    let ip4 = lab.containers[4].ip.clone();
    assert!(
        common::tcp_transfer_to(&lab, 1, 4, &ip4, &payload) == payload,
        "h1 → h3 over IPv4 corrupted"
    );
    assert_eq!(dropped(&lab, 1, "spoofed_source"), 0);
    assert_eq!(dropped(&lab, 1, "unauthenticated"), 0);

    // An IPv6 destination nobody holds: ICMPv6 "no route" from flannel-wg-v6's address, as
    // IPv4 gets ICMP net unreachable.
    let mut c = Command::new("ping");
    c.args(["-6", "-c1", "-W2", "fd00:61:0:ff00::1"]);
    lab.containers[0].netns.prepare_command(&mut c).unwrap();
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Destination unreachable") && text.contains(&s6.network().to_string()),
        "{text}"
    );
}

#[test]
fn wireguard_ipv6_only_network_runs_flannel_wg_v6_alone() {
    if !preconditions(
        "wireguard_ipv6_only_network_runs_flannel_wg_v6_alone",
        TOOLS,
    ) {
        return;
    }
    let config = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:62::/48","Backend":{"Type":"wireguard"}}"#;
    let lab = lab("twg6-only", 3, 1, config);
    all_pairs(&lab, "all pairs reachable over flannel-wg-v6");
    assert!(!has_link(&lab, 1, "flannel-wg"), "no IPv4 device");
    assert!(has_link(&lab, 1, "flannel-wg-v6"));
    let public = common::wg_public_of(&lab.wg_key_file(1));
    let v = lease_value(&lab, 1);
    assert_eq!(v["PublicIP"], "0.0.0.0", "{v}");
    assert_eq!(v.get("BackendData"), None, "{v}");
    assert_eq!(
        v["BackendV6Data"],
        serde_json::json!({"PublicKey": public, "Port": 51821})
    );
    let payload = common::test_data(2 << 20);
    let dst = lab.containers[2].ip6.clone().unwrap();
    assert!(
        common::tcp_transfer_to(&lab, 0, 2, &dst, &payload) == payload,
        "IPv6-only transfer corrupted"
    );
}

#[test]
fn wireguard_single_device_modes_carry_both_families_on_flannel_wg() {
    if !preconditions(
        "wireguard_single_device_modes_carry_both_families_on_flannel_wg",
        TOOLS,
    ) {
        return;
    }
    // auto: private IPv4 and ULA IPv6 underlay addresses, so IPv4 endpoints (Flannel's
    // choice); ipv6: IPv6 endpoints on ListenPort.
    for (mode, endpoint_prefix) in [("auto", "172.31.0."), ("ipv6", "[fd31::")] {
        let prefix = format!("twg6-{mode}");
        let extra = format!(r#","Mode":"{mode}""#);
        let lab = lab(&prefix, 2, 2, &dual("10.63.0.0/16", "fd00:63::/48", &extra));
        all_pairs(
            &lab,
            &format!("all pairs reachable in Mode {mode}, both families"),
        );
        assert!(
            !has_link(&lab, 1, "flannel-wg-v6"),
            "Mode {mode}: one device"
        );
        let env = lab.wait_subnet(1);
        let (s4, s6) = (env.ipv4.unwrap().subnet, env.ipv6.unwrap().subnet);
        assert_eq!(
            addresses(&lab, 1, "-4", "flannel-wg"),
            [format!("{}/32", s4.network())]
        );
        assert_eq!(
            addresses(&lab, 1, "-6", "flannel-wg"),
            [format!("{}/128", s6.network())]
        );
        assert_eq!(
            routes(&lab, 1, "-6"),
            [("fd00:63::/48".to_string(), "flannel-wg".to_string())]
        );
        // BackendV6Data announces the port flannel-wg listens on (Flannel announces
        // ListenPortV6, where nothing listens in these modes).
        let v = lease_value(&lab, 1);
        assert_eq!(v["BackendV6Data"]["Port"], 51820, "{v}");
        let dump = wg_dump(&lab, 1, "flannel-wg");
        assert_eq!(dump.len(), 2, "device + 1 peer: {dump:?}");
        let peer = &dump[1];
        assert!(
            peer[2].starts_with(endpoint_prefix) && peer[2].ends_with(":51820"),
            "Mode {mode}: {peer:?}"
        );
        let allowed: Vec<&str> = peer[3].split(',').collect();
        assert_eq!(allowed.len(), 2, "both subnets: {peer:?}");
        // TSO super-packets of IPv4 and one-by-one IPv6 packets over either underlay.
        let payload = common::test_data(4 << 20);
        let (ip4, ip6) = (
            lab.containers[2].ip.clone(),
            lab.containers[2].ip6.clone().unwrap(),
        );
        assert!(
            common::tcp_transfer_to(&lab, 0, 2, &ip4, &payload) == payload,
            "Mode {mode}: IPv4 transfer corrupted"
        );
        assert!(
            common::tcp_transfer_to(&lab, 1, 2, &ip6, &payload) == payload,
            "Mode {mode}: IPv6 transfer corrupted"
        );
        assert_eq!(dropped(&lab, 1, "spoofed_source"), 0);
    }
}

#[test]
fn wireguard_interop_over_ipv6_with_wireguard_go_configured_like_flannel() {
    if !preconditions(
        "wireguard_interop_over_ipv6_with_wireguard_go_configured_like_flannel",
        &[TOOLS, &["wireguard-go"]].concat(),
    ) {
        return;
    }
    // An IPv6-only network. h1 runs twilld (flannel-wg-v6 on 51821); h2 runs Debian's
    // wireguard-go as flannel-wg-v6, set up with `wg set` and `ip` as Flannel's separate mode
    // sets up its IPv6 device and peers, with its lease written by hand.
    let config = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:64::/48","Backend":{"Type":"wireguard"}}"#;
    let mut lab = lab("twg6-io", 2, 0, config);
    lab.kill_agent(2);
    let env1 = lab.wait_subnet(1);
    lab.add_container(1);
    let s1 = env1.ipv6.unwrap().subnet;
    let twilld_public = common::wg_public_of(&lab.wg_key_file(1));
    let (ip1, ip2) = (lab.cluster.host(1).ip6, lab.cluster.host(2).ip6);
    let h2 = lab.cluster.host(2).name.clone();
    // h2's own lease (taken by its twilld before it was stopped) is handed over.
    let env2 = lab.wait_subnet(2);
    let s2 = env2.ipv6.unwrap().subnet;
    let dir = lab.dir.path().join("h2-wggo");
    std::fs::create_dir_all(&dir).unwrap();
    let private = common::test_data(32);
    let secret = boringtun::x25519::StaticSecret::from(<[u8; 32]>::try_from(&private[..]).unwrap());
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let wggo_public = b64(boringtun::x25519::PublicKey::from(&secret).as_bytes());
    std::fs::write(dir.join("key"), b64(&private)).unwrap();
    let script = format!(
        "ip link del flannel-wg-v6 2>/dev/null; wireguard-go flannel-wg-v6 && \
         wg set flannel-wg-v6 private-key {d}/key listen-port 51821 && \
         ip -6 addr add {base}/128 dev flannel-wg-v6 nodad && ip link set flannel-wg-v6 mtu 1420 up && \
         ip -6 route replace fd00:64::/48 dev flannel-wg-v6 && \
         wg set flannel-wg-v6 peer {twilld_public} endpoint [{ip1}]:51821 allowed-ips {s1}",
        d = dir.display(),
        base = s2.network(),
    );
    let (ok, out) = common::in_wg_dir(Some(&h2), &dir, &script);
    assert!(ok, "wireguard-go set up like Flannel: {out}");
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        s2.network(),
        s2.prefix_len()
    );
    lab.etcdctl(&[
        "put",
        &key,
        &format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip2}","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{wggo_public}","Port":51821}}}}"#
        ),
    ]);
    // A container on h2 behind the wireguard-go device (h2's subnet.env stays as written).
    lab.add_container(2);
    all_pairs(&lab, "twilld ↔ wireguard-go over IPv6: both ways");
    let payload = common::test_data(4 << 20);
    let (a, b) = (
        lab.containers[0].ip6.clone().unwrap(),
        lab.containers[1].ip6.clone().unwrap(),
    );
    assert!(
        common::tcp_transfer_to(&lab, 0, 1, &b, &payload) == payload,
        "twilld → wireguard-go corrupted"
    );
    assert!(
        common::tcp_transfer_to(&lab, 1, 0, &a, &payload) == payload,
        "wireguard-go → twilld corrupted"
    );
}

/// Host `h`'s kernel counter `name` from /proc/net/snmp6 (its namespace's).
fn snmp6(lab: &AgentLab, h: usize, name: &str) -> u64 {
    lab.cluster
        .host(h)
        .netns
        .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in snmp6"))
}

/// A raw ICMPv6 socket in `netns` (every ICMPv6 message arriving there, from its header on).
fn icmp6_socket(netns: &twill_netkit::Netns) -> std::net::UdpSocket {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd = netns
        .enter(|| {
            // SAFETY: plain socket(2); owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET6,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_ICMPV6,
                )
            };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd is fresh and ours.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .unwrap();
    let sock = std::net::UdpSocket::from(fd);
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    sock
}

/// The first ICMPv6 message (source, message) on `sock` within `secs` that `wanted` takes.
fn icmp6_until(
    sock: &std::net::UdpSocket,
    secs: u64,
    wanted: impl Fn(&[u8]) -> bool,
) -> Option<(std::net::IpAddr, Vec<u8>)> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut buf = vec![0u8; 70_000];
    while std::time::Instant::now() < until {
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && wanted(&buf[..n])
        {
            return Some((from.ip(), buf[..n].to_vec()));
        }
    }
    None
}

/// Runs `args` (`ip …`) in namespace `ns`.
fn ip_in(ns: &str, args: &[&str]) {
    twill_tests::run("ip", &[&["-n", ns][..], args].concat());
}

#[test]
fn an_ipv6_packet_over_the_receivers_mtu_gets_packet_too_big_back_through_the_tunnel() {
    if !preconditions(
        "an_ipv6_packet_over_the_receivers_mtu_gets_packet_too_big_back_through_the_tunnel",
        TOOLS,
    ) {
        return;
    }
    // Nodes whose MTUs differ: h2's twilld starts on a 1500-byte underlay (MTU 1420); then
    // the underlay grows to 1600 bytes and h1's twilld starts (MTU 1520), as when nodes'
    // NICs differ. h2 keeps 1420 (read once at start).
    let mut lab = AgentLab::new("twg6-ptb", 2, &dual("10.65.0.0/16", "fd00:65::/48", ""));
    lab.start_wireguard_agent(2, METRICS_PORT);
    assert_eq!(lab.wait_subnet(2).mtu, 1420);
    let ul = format!("{}-ul", lab.cluster.prefix());
    for port in ["h1", "h2", "br0"] {
        ip_in(&ul, &["link", "set", port, "mtu", "1600"]);
    }
    for h in 1..=2 {
        let name = lab.cluster.host(h).name.clone();
        ip_in(&name, &["link", "set", "eth0", "mtu", "1600"]);
    }
    lab.start_wireguard_agent(1, METRICS_PORT);
    assert_eq!(lab.wait_subnet(1).mtu, 1520);
    lab.add_container(1);
    lab.add_container(2);
    all_pairs(&lab, "both pods reachable over wireguard, both families");
    let (h1, h2) = (
        lab.cluster.host(1).name.clone(),
        lab.cluster.host(2).name.clone(),
    );
    assert_eq!(twill_tests::ip_link(&h1, "flannel-wg-v6")["mtu"], 1520);
    assert_eq!(twill_tests::ip_link(&h2, "flannel-wg-v6")["mtu"], 1420);
    let pod1: std::net::Ipv6Addr = lab.containers[0].ip6.clone().unwrap().parse().unwrap();
    let pod2: std::net::Ipv6Addr = lab.containers[1].ip6.clone().unwrap().parse().unwrap();
    let s2 = lab.wait_subnet(2).ipv6.unwrap().subnet;

    // Pod 1 (h1) pings pod 2 (h2) with 1500-byte IPv6 packets, fragmentation forbidden: they
    // fit h1's MTU, not h2's. h2's twilld delivers them, h2's kernel, forwarding to cni0
    // (MTU 1420), answers with ICMPv6 packet too big, which goes back through the tunnel.
    let icmp = icmp6_socket(&lab.containers[0].netns);
    let over_before = sample(&lab, 2, "twilld_wireguard_rx_over_mtu_packets_total");
    let counters = |lab: &AgentLab| {
        [
            "Ip6InTooBigErrors",
            "Ip6OutNoRoutes",
            "Icmp6OutPktTooBigs",
            "Icmp6OutErrors",
        ]
        .map(|k| format!("{k} {}", snmp6(lab, 2, k)))
        .join(", ")
    };
    let kernel_before = counters(&lab);
    let mut c = Command::new("ping");
    c.args([
        "-6",
        "-c1",
        "-W2",
        "-s",
        "1452",
        "-M",
        "do",
        &pod2.to_string(),
    ]);
    lab.containers[0].netns.prepare_command(&mut c).unwrap();
    let out = c.output().unwrap();
    let ping_text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // Type 2 code 0, quoting our echo request pod 1 → pod 2.
    let got = icmp6_until(&icmp, 5, |m| {
        m.len() >= 48 && m[0] == 2 && m[1] == 0 && m[16..32] == pod1.octets()
    });
    let diagnosis = || {
        format!(
            "ping: {ping_text}\nh2 kernel before: {kernel_before}\nh2 kernel after:  {}\n\
             h2 routes:\n{}\nh2 addresses:\n{}\nh1 dropped spoofed_source {}, h2 rx_over_mtu {}",
            counters(&lab),
            twill_tests::run("ip", &["-n", &h2, "-6", "route", "show", "table", "all"]),
            twill_tests::run("ip", &["-n", &h2, "-6", "addr"]),
            dropped(&lab, 1, "spoofed_source"),
            sample(&lab, 2, "twilld_wireguard_rx_over_mtu_packets_total"),
        )
    };
    let Some((from, msg)) = got else {
        panic!(
            "no ICMPv6 packet too big came back to pod 1\n{}",
            diagnosis()
        );
    };
    eprintln!("{}", diagnosis());
    eprintln!("packet too big from {from}: {:02x?}", &msg[..48]);
    assert_eq!(
        u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]),
        1420,
        "the MTU of h2's link to pod 2"
    );
    assert_eq!(&msg[32..48], &pod2.octets(), "the quoted destination");
    // From h2's flannel-wg-v6 address, <subnet>:: (inside h2's lease, so h1's twilld takes
    // it from that peer), as Flannel's kernel WireGuard device does.
    assert_eq!(from, std::net::IpAddr::V6(s2.network()), "{}", diagnosis());
    assert!(
        ping_text.contains("Packet too big") && ping_text.contains("mtu=1420"),
        "{ping_text}"
    );
    // Pod 1's kernel learned the path MTU.
    let route = twill_tests::run(
        "ip",
        &[
            "-n",
            &lab.containers[0].name,
            "-6",
            "route",
            "get",
            &pod2.to_string(),
        ],
    );
    assert!(route.contains("mtu 1420"), "{route}");
    assert_eq!(
        sample(&lab, 2, "twilld_wireguard_rx_over_mtu_packets_total"),
        over_before + 1
    );
    assert_eq!(dropped(&lab, 1, "spoofed_source"), 0);
    // Within the learned MTU, pings pass.
    let mut c = Command::new("ping");
    c.args([
        "-6",
        "-c1",
        "-W2",
        "-s",
        "1372",
        "-M",
        "do",
        &pod2.to_string(),
    ]);
    lab.containers[0].netns.prepare_command(&mut c).unwrap();
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

//! The udp backend end to end: real etcd, hosts as namespaces, real TUN devices and real
//! twilld data paths; containers attached with twill.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::{AgentLab, ipv4_header, send_ip, set_header_checksum};
use twill_tests::preconditions;

const TOOLS: &[&str] = &["ip", "ping", "etcd", "etcdctl", "nft"];
const METRICS_PORT: u16 = 10269;
/// The agents lease below 10.21.200.0 (`SubnetMax`): a test writes a Flannel node's lease at
/// .250 while agents run, which a random pick must never be holding.
const CONFIG: &str =
    r#"{"Network":"10.21.0.0/16","SubnetMax":"10.21.199.0","Backend":{"Type":"udp"}}"#;
/// The `Network` of [`CONFIG`].
const NETWORK: &str = "10.21.0.0/16";

fn lab(prefix: &str, hosts: usize, per_host: usize) -> AgentLab {
    lab_with(prefix, hosts, per_host, &[])
}

/// A udp lab whose agents get `extra` flags.
fn lab_with(prefix: &str, hosts: usize, per_host: usize, extra: &[&str]) -> AgentLab {
    let mut lab = AgentLab::new(prefix, hosts, CONFIG);
    let port = METRICS_PORT.to_string();
    let mut args = vec!["--healthz-ip", "127.0.0.1", "--healthz-port", &port];
    args.extend_from_slice(extra);
    for h in 1..=hosts {
        lab.start_agent(h, &args);
    }
    for h in 1..=hosts {
        lab.wait_subnet(h);
        for _ in 0..per_host {
            lab.add_container(h);
        }
    }
    lab
}

/// The value of the sample `key` (name and labels) in host `h`'s /metrics, and the page.
fn sample(lab: &AgentLab, h: usize, key: &str) -> (Option<u64>, String) {
    let page = lab.http_get(h, METRICS_PORT, "/metrics");
    let prefix = format!("{key} ");
    let value = page
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok());
    (value, page)
}

/// The value of `twilld_udp_dropped_packets_total{reason="..."}` on host `h`.
fn dropped(lab: &AgentLab, h: usize, reason: &str) -> u64 {
    let key = format!("twilld_udp_dropped_packets_total{{reason=\"{reason}\"}}");
    match sample(lab, h, &key) {
        (Some(v), _) => v,
        (None, page) => panic!("no {key} in /metrics of h{h}:\n{page}"),
    }
}

/// The value of the counter `<name>_total` on host `h` (0 while it is not published yet).
fn metric(lab: &AgentLab, h: usize, name: &str) -> u64 {
    sample(lab, h, &format!("{name}_total")).0.unwrap_or(0)
}

/// An IPv4 packet (UDP inside) from `src` to `dst` with a valid header checksum.
fn inner_packet(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    set_header_checksum(&mut p);
    p
}

/// Sends each payload as a UDP datagram `from`:8285 → `to`:8285 through a raw socket in
/// `netns`: the source can be any address (a peer's, forged), and datagrams over the underlay
/// MTU go out as IP fragments.
fn send_raw(netns: &twill_netkit::Netns, from: Ipv4Addr, to: Ipv4Addr, payloads: &[Vec<u8>]) {
    let mut packets = Vec::new();
    for (n, payload) in payloads.iter().enumerate() {
        let udp = common::udp_datagram(8285, payload);
        // Fragments of at most 1480 bytes (a multiple of 8) fit the 1500-byte underlay.
        let chunks: Vec<&[u8]> = udp.chunks(1480).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let more = if i + 1 < chunks.len() { 0x2000 } else { 0 };
            let mut ip = ipv4_header(from, to, 17, chunk.len(), 0x7700 + n as u16);
            ip[6..8].copy_from_slice(&((more | (i * 1480 / 8)) as u16).to_be_bytes());
            set_header_checksum(&mut ip);
            ip.extend_from_slice(chunk);
            packets.push(ip);
        }
    }
    send_ip(netns, to, &packets);
}

/// An ICMP "fragmentation needed" (next-hop MTU `mtu`) from `router` to `to`, quoting a UDP
/// datagram `to`:8285 → `peer`:8285, as a router on that path (or an attacker) would send.
fn icmp_frag_needed(router: Ipv4Addr, to: Ipv4Addr, peer: Ipv4Addr, mtu: u16) -> Vec<u8> {
    let mut quote = ipv4_header(to, peer, 17, 8 + 1444, 1);
    quote.extend_from_slice(&8285u16.to_be_bytes());
    quote.extend_from_slice(&8285u16.to_be_bytes());
    quote.extend_from_slice(&(8u16 + 1444).to_be_bytes());
    quote.extend_from_slice(&[0, 0]);
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&quote);
    let c = twill_agent::engine::packet::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = ipv4_header(router, to, 1, icmp.len(), 2);
    ip.extend_from_slice(&icmp);
    ip
}

#[test]
fn udp_all_pairs_ping_tcp_transfer_and_flannel_compatible_state() {
    if !preconditions(
        "udp_all_pairs_ping_tcp_transfer_and_flannel_compatible_state",
        TOOLS,
    ) {
        return;
    }
    // Three workers (TUN queues and SO_REUSEPORT sockets) per node, as on a 6-CPU machine:
    // flows spread over queues, and a datagram may arrive at another worker than the one
    // whose queue the flow uses.
    let lab = lab_with("twu-ap", 3, 2, &["--udp-workers", "3"]);
    lab.eventually("all pairs reachable over udp", 20, || {
        lab.unreachable_pairs().is_empty()
    });

    // Flannel's udp layout: flannel0 with <subnet>.0/32 and MTU − 28, one route for the network.
    let env = common::assert_flannel_tun_device(&lab, 1, "flannel0", 1472);
    let h1 = lab.cluster.host(1).name.clone();
    assert!(
        lab.log(1).contains("TUN ready device=flannel0 queues=3"),
        "{}",
        lab.log(1)
    );
    let routes = lab.twill_routes(1);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["dst"], "10.21.0.0/16");
    assert_eq!(routes[0]["dev"], "flannel0");
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        env.ipv4.unwrap().subnet.network(),
        env.ipv4.unwrap().subnet.prefix_len()
    );
    assert_eq!(
        lab.etcdctl(&["get", &key, "--print-value-only"]).trim(),
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"udp"}}"#,
            lab.cluster.host(1).ip
        )
    );

    // A TCP stream across hosts arrives intact, in both directions.
    let payload = common::test_data(8 << 20);
    common::assert_transfer_intact(&lab, 0, 2, &payload, "h1 → h2");
    common::assert_transfer_intact(&lab, 5, 1, &payload, "h3 → h1");
    // Four flows at once both ways between h1 and h2, spread over the queues.
    std::thread::scope(|s| {
        for (from, to) in [(0, 2), (1, 3), (2, 0), (3, 1)] {
            let (lab, payload) = (&lab, &payload);
            s.spawn(move || {
                common::assert_transfer_intact(lab, from, to, payload, &format!("{from} → {to}"))
            });
        }
    });

    // The data path counted the traffic, and a super-packet read became many datagrams.
    let counter = |name: &str| metric(&lab, 1, name);
    lab.eventually("the data path's counters published", 5, || {
        counter("twilld_udp_tx_packets") > 5000 && counter("twilld_udp_rx_packets") > 5000
    });
    assert_eq!(dropped(&lab, 1, "spoofed_source"), 0);

    // A smaller path MTU towards a peer (here a route MTU; a forged ICMP "fragmentation
    // needed" does the same) must not black-hole it: the kernel refuses GSO sends whose
    // segments exceed the path MTU, so the data path sends by the device MTU without DF.
    let h2_ip = lab.cluster.host(2).ip.to_string();
    twill_tests::run(
        "ip",
        &[
            "-n",
            &h1,
            "route",
            "replace",
            &format!("{h2_ip}/32"),
            "dev",
            "eth0",
            "mtu",
            "1400",
        ],
    );
    let errors_before = counter("twilld_udp_io_errors");
    let started = std::time::Instant::now();
    common::assert_transfer_intact(
        &lab,
        0,
        2,
        &common::test_data(2 << 20),
        "h1 → h2 over a smaller path MTU",
    );
    // Before the fix every GSO send failed (EINVAL) and only retransmitted single segments
    // got through: the 2 MiB took minutes.
    assert_eq!(
        counter("twilld_udp_io_errors"),
        errors_before,
        "sends refused"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stalled: {:?}",
        started.elapsed()
    );
    // The same with a forged ICMP "fragmentation needed" for the path to h3, sent from the
    // underlay namespace: the data path ignores it (the kernel would otherwise lower that
    // path's MTU, and the GSO sends to h3 would fail).
    let underlay = twill_netkit::Netns::open(&format!("{}-ul", lab.cluster.prefix())).unwrap();
    let h1_ip = lab.cluster.host(1).ip;
    let forged = icmp_frag_needed(
        lab.cluster.underlay_ip(),
        h1_ip,
        lab.cluster.host(3).ip,
        1300,
    );
    send_ip(&underlay, h1_ip, &[forged]);
    let errors_before = counter("twilld_udp_io_errors");
    common::assert_transfer_intact(
        &lab,
        0,
        4,
        &common::test_data(2 << 20),
        "h1 → h3 after a forged ICMP",
    );
    assert_eq!(
        counter("twilld_udp_io_errors"),
        errors_before,
        "sends refused"
    );

    // Ping's TTL shows both proxies decrementing, like Flannel's: 64 − 1 (h1 kernel) − 1
    // (h1 proxy) − 1 (h2 proxy) − 1 (h2 kernel) = 60.
    let mut c = std::process::Command::new("ping");
    c.args(["-c1", "-W2", &lab.containers[2].ip]);
    lab.containers[0].netns.prepare_command(&mut c).unwrap();
    let out = String::from_utf8_lossy(&c.output().unwrap().stdout).to_string();
    assert!(out.contains("ttl=60"), "{out}");
}

#[test]
fn udp_drops_and_counts_bad_datagrams() {
    if !preconditions("udp_drops_and_counts_bad_datagrams", TOOLS) {
        return;
    }
    let lab = lab("twu-dr", 3, 1);
    lab.eventually("all pairs reachable over udp", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    let h1 = lab.cluster.host(1).ip;
    let h2 = lab.cluster.host(2).ip;
    let s1 = lab.wait_subnet(1).ipv4.unwrap().subnet;
    let s2 = lab.wait_subnet(2).ipv4.unwrap().subnet;
    let s3 = lab.wait_subnet(3).ipv4.unwrap().subnet;
    let in_subnet = |s: ipnet::Ipv4Net, n: u32| Ipv4Addr::from(u32::from(s.network()) + n);
    let reasons = [
        "unknown_peer",
        "spoofed_source",
        "not_local",
        "truncated",
        "not_ip",
        "malformed",
        "ttl_expired",
    ];
    let before: Vec<u64> = reasons.iter().map(|r| dropped(&lab, 1, r)).collect();
    let over_mtu_before = metric(&lab, 1, "twilld_udp_rx_over_mtu_packets");

    // Everything below comes from a raw socket in the underlay namespace, which runs no
    // agent. With its own address and with an address nobody leased, a well-formed packet
    // is refused.
    let underlay = twill_netkit::Netns::open(&format!("{}-ul", lab.cluster.prefix())).unwrap();
    let good = inner_packet(in_subnet(s2, 9), in_subnet(s1, 2), 100);
    send_raw(
        &underlay,
        lab.cluster.underlay_ip(),
        h1,
        std::slice::from_ref(&good),
    );
    send_raw(
        &underlay,
        Ipv4Addr::new(172, 31, 0, 99),
        h1,
        std::slice::from_ref(&good),
    );
    // With peer h2's address forged as the source: each kind of bad datagram once.
    let mut truncated = good.clone();
    truncated[2..4].copy_from_slice(&400u16.to_be_bytes());
    let mut bad_sum = good.clone();
    bad_sum[10] ^= 0x55;
    let ttl1 = {
        let mut p = inner_packet(in_subnet(s2, 9), in_subnet(s1, 2), 100);
        p[8] = 1;
        set_header_checksum(&mut p);
        p
    };
    send_raw(
        &underlay,
        h2,
        h1,
        &[
            inner_packet(in_subnet(s3, 9), in_subnet(s1, 2), 100), // spoofed source
            inner_packet(in_subnet(s2, 9), in_subnet(s3, 2), 100), // not local: no reflection
            truncated,
            b"\x00\x01 not an IP packet".to_vec(),
            // Over our MTU, as from a node whose MTU is larger (fragmented on the way): not a
            // bad one, delivered (the kernel fragments it or answers with ICMP) and counted.
            inner_packet(in_subnet(s2, 9), in_subnet(s1, 2), 1472 + 100),
            bad_sum,
            ttl1,
            Vec::new(),
        ],
    );
    let expect = [2, 1, 1, 2, 1, 1, 1];
    lab.eventually("every bad datagram counted", 10, || {
        reasons
            .iter()
            .zip(before.iter().zip(expect))
            .all(|(r, (b, e))| dropped(&lab, 1, r) >= b + e)
            && metric(&lab, 1, "twilld_udp_rx_over_mtu_packets") > over_mtu_before
    });
    for (r, (b, e)) in reasons.iter().zip(before.iter().zip(expect)) {
        assert_eq!(dropped(&lab, 1, r), b + e, "reason {r}");
    }
    assert_eq!(dropped(&lab, 1, "oversize"), 0);
    assert_eq!(
        metric(&lab, 1, "twilld_udp_rx_over_mtu_packets"),
        over_mtu_before + 1
    );
    // The packet over our MTU shows that the nodes' MTUs differ, which only the operator can
    // fix: logged, saying so, and shown by `twilld status` with the data path's drops.
    let log = lab.log(1);
    assert!(
        log.contains("a peer sends packets bigger than this node's MTU: they are delivered")
            && log.contains(&format!("peer={h2}:8285"))
            && log.contains("mtu=1472")
            && log.contains("Backend.MTU"),
        "{log}"
    );
    let text = lab.twilld_status(
        1,
        &[
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            &METRICS_PORT.to_string(),
        ],
    );
    assert!(!text.contains("mtu_mismatch"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("rx_over_mtu_packets"))
        .unwrap_or_else(|| panic!("no rx_over_mtu_packets in `twilld status`:\n{text}"));
    assert!(
        line.starts_with("data path:   udp rx_over_mtu_packets 1: ")
            && line.contains("delivered")
            && line.contains("Backend.MTU"),
        "{text}"
    );
    assert!(
        text.contains("data-path drops (/metrics at 127.0.0.1:"),
        "{text}"
    );
    // Still healthy after all that.
    assert!(lab.unreachable_pairs().is_empty());
}

/// A raw socket of `proto` (an IPPROTO_* number) in `netns` for `family`, reading with a
/// timeout of 200 ms: it sees every packet of that protocol the namespace receives (ICMP
/// errors too, reassembled packets whole).
fn raw_socket(
    netns: &twill_netkit::Netns,
    family: libc::c_int,
    proto: libc::c_int,
) -> std::fs::File {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd = netns
        .enter(|| {
            // SAFETY: plain socket(2); owned right away.
            let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd is fresh and ours.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .unwrap();
    let sock = std::net::UdpSocket::from(fd);
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::fs::File::from(std::os::fd::OwnedFd::from(sock))
}

/// Reads packets from `f` for up to `secs` seconds until one satisfies `wanted`.
fn read_until(f: &mut std::fs::File, secs: u64, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 70_000];
    while std::time::Instant::now() < until {
        if let Ok(n) = f.read(&mut buf)
            && wanted(&buf[..n])
        {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// An IPv4/UDP packet of `len` bytes `src` → `dst` with IP id `id`, DF set if `df`.
fn udp_inner(src: Ipv4Addr, dst: Ipv4Addr, len: usize, id: u16, df: bool) -> Vec<u8> {
    let mut p = ipv4_header(src, dst, 17, len - 20, id);
    if df {
        p[6] = 0x40;
        set_header_checksum(&mut p);
    }
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&40001u16.to_be_bytes());
    p.extend_from_slice(&((len - 20) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend((28..len).map(|i| i as u8));
    p
}

/// A node whose MTU is larger than ours sends a packet over our MTU: before, twilld dropped
/// it (`mtu_mismatch`, earlier `oversize`), a black hole for path-MTU discovery. Now it is
/// delivered as kernel VXLAN delivers it: with DF set the kernel, forwarding it to the
/// smaller bridge, answers the source pod with ICMP fragmentation needed back through the
/// tunnel; without DF it fragments it and the pod gets it whole.
#[test]
fn a_packet_over_the_mtu_from_a_peer_gets_icmp_frag_needed_back_or_is_fragmented() {
    if !preconditions(
        "a_packet_over_the_mtu_from_a_peer_gets_icmp_frag_needed_back_or_is_fragmented",
        TOOLS,
    ) {
        return;
    }
    let lab = lab("twu-pm", 2, 1);
    lab.eventually("both pods reachable over udp", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    let (h1, h2) = (lab.cluster.host(1).ip, lab.cluster.host(2).ip);
    let pod1: Ipv4Addr = lab.containers[0].ip.parse().unwrap();
    let pod2: Ipv4Addr = lab.containers[1].ip.parse().unwrap();
    let mtu = lab.wait_subnet(1).mtu as usize;
    assert_eq!(mtu, 1472);
    let mut icmp_at_pod2 = raw_socket(&lab.containers[1].netns, libc::AF_INET, libc::IPPROTO_ICMP);
    let mut udp_at_pod1 = raw_socket(&lab.containers[0].netns, libc::AF_INET, libc::IPPROTO_UDP);
    let over_before = metric(&lab, 1, "twilld_udp_rx_over_mtu_packets");
    let underlay = twill_netkit::Netns::open(&format!("{}-ul", lab.cluster.prefix())).unwrap();

    // From pod 2 on h2 to pod 1 on h1, 100 bytes over h1's MTU, DF set, in a datagram from
    // h2's twilld (forged from the underlay, IP-fragmented on the way).
    let len = mtu + 100;
    send_raw(
        &underlay,
        h2,
        h1,
        &[udp_inner(pod2, pod1, len, 0x4d54, true)],
    );
    // ICMP type 3 code 4 quoting our packet, with cni0's MTU as the next hop's: it went h1's
    // kernel → flannel0 → twilld → h2's twilld → pod 2.
    let quotes = |p: &[u8], id: u16| {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let q = &p[ihl + 8..];
        q.len() >= 20 && q[4..6] == id.to_be_bytes() && q[12..16] == pod2.octets()
    };
    let icmp = read_until(&mut icmp_at_pod2, 10, |p| {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        p.len() >= ihl + 28 && p[ihl] == 3 && p[ihl + 1] == 4 && quotes(p, 0x4d54)
    })
    .unwrap_or_else(|| {
        panic!(
            "no ICMP fragmentation needed came back to pod 2; h1's /metrics:\n{}",
            lab.http_get(1, METRICS_PORT, "/metrics")
        )
    });
    let ihl = usize::from(icmp[0] & 0x0f) * 4;
    assert_eq!(
        u16::from_be_bytes([icmp[ihl + 6], icmp[ihl + 7]]),
        1472,
        "the next hop's MTU"
    );

    // Without DF: fragmented by h1's kernel, reassembled by pod 1.
    send_raw(
        &underlay,
        h2,
        h1,
        &[udp_inner(pod2, pod1, len, 0x4d55, false)],
    );
    let got = read_until(&mut udp_at_pod1, 10, |p| {
        p.len() >= 20 && p[4..6] == 0x4d55u16.to_be_bytes()
    })
    .expect("the packet without DF reached pod 1");
    assert_eq!(got.len(), len);
    assert_eq!(&got[28..], &udp_inner(pod2, pod1, len, 0x4d55, false)[28..]);

    // The worker publishes its counts when its burst ends, just after the write that
    // delivered the packet: on a loaded machine the test may ask /metrics first.
    lab.eventually("both packets over the MTU counted", 10, || {
        metric(&lab, 1, "twilld_udp_rx_over_mtu_packets") >= over_before + 2
    });
    assert_eq!(
        metric(&lab, 1, "twilld_udp_rx_over_mtu_packets"),
        over_before + 2
    );
    assert!(lab.unreachable_pairs().is_empty());
}

/// What the receive path relies on: a TUN takes a packet bigger than its MTU (the kernel's
/// tun_get_user has no MTU check), and forwarding it to a smaller link the kernel answers
/// through the TUN with ICMP fragmentation needed (IPv4, DF set) or packet too big (IPv6),
/// or fragments it (IPv4 without DF). Only the kernel here: a TUN in a namespace of its own.
#[test]
fn a_tun_takes_packets_over_its_mtu_and_the_kernel_answers_or_fragments() {
    if !preconditions(
        "a_tun_takes_packets_over_its_mtu_and_the_kernel_answers_or_fragments",
        &["ip"],
    ) {
        return;
    }
    use twill_agent::engine::device::{TunSpec, create};
    use twill_agent::engine::packet::{PLAIN, VNET_HDR_LEN};
    let scope = twill_tests::NsScope::new("tunmtu");
    let ns = scope.create("r");
    let name = scope.name("r");
    let spec = TunSpec {
        name: "tmtu0".into(),
        queues: 1,
        offloads: true,
        mtu: 1400,
        network: "10.77.0.0/16".parse().unwrap(),
        ipv6: true,
    };
    let subnet = "10.77.1.0/24".parse().unwrap();
    let (tun, _link) = ns
        .run(|nl| async move { create(&nl, &spec, Some(subnet)).await })
        .unwrap();
    let mut q = tun.into_queues().remove(0);
    // The pods' side: a link of MTU 1300 to a pod holding 10.77.1.5 and fd77:1::5.
    let pod = scope.create("p");
    let pod_name = scope.name("p");
    for (netns, args) in [
        (
            &name,
            &[
                "link", "add", "v0", "mtu", "1300", "type", "veth", "peer", "name", "v1", "netns",
                &pod_name, "mtu", "1300",
            ][..],
        ),
        (&name, &["addr", "add", "10.77.1.1/24", "dev", "v0"]),
        (
            &name,
            &["-6", "addr", "add", "fd77:1::1/64", "dev", "v0", "nodad"],
        ),
        (&name, &["link", "set", "v0", "up"]),
        (&name, &["-6", "route", "add", "fd77::/16", "dev", "tmtu0"]),
        (&pod_name, &["addr", "add", "10.77.1.5/24", "dev", "v1"]),
        (
            &pod_name,
            &["-6", "addr", "add", "fd77:1::5/64", "dev", "v1", "nodad"],
        ),
        (&pod_name, &["link", "set", "v1", "up"]),
    ] {
        twill_tests::run("ip", &[&["-n", netns.as_str()][..], args].concat());
    }
    ns.enter(|| {
        for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
            twill_netkit::sysctl::ensure(key, "1").unwrap();
        }
    })
    .unwrap();
    let mut udp_at_pod = raw_socket(&pod, libc::AF_INET, libc::IPPROTO_UDP);
    let write = |q: &mut std::fs::File, pkt: &[u8]| {
        let n = q.write(&[&PLAIN[..], pkt].concat());
        assert_eq!(n.ok(), Some(VNET_HDR_LEN + pkt.len()), "the TUN write");
    };
    let read_from_tun = |q: &mut std::fs::File, wanted: &dyn Fn(&[u8]) -> bool| {
        use std::os::fd::AsFd;
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 70_000];
        while std::time::Instant::now() < until {
            if !twill_agent::engine::sys::poll(
                [q.as_fd()],
                twill_agent::engine::sys::Interest::Readable,
                Duration::from_millis(100),
            ) {
                continue;
            }
            let n = q.read(&mut buf).unwrap();
            let p = &buf[VNET_HDR_LEN..n];
            if wanted(p) {
                return p.to_vec();
            }
        }
        panic!("nothing wanted came out of the TUN");
    };
    let (from, to) = (Ipv4Addr::new(10, 77, 2, 9), Ipv4Addr::new(10, 77, 1, 5));

    // IPv4 with DF, 1450 bytes: taken, and ICMP fragmentation needed (MTU 1300) comes out.
    write(&mut q, &udp_inner(from, to, 1450, 0x5151, true));
    let icmp = read_from_tun(&mut q, &|p| {
        p.len() >= 56
            && p[0] == 0x45
            && p[9] == 1
            && p[20] == 3
            && p[21] == 4
            && p[32..34] == 0x5151u16.to_be_bytes()
    });
    assert_eq!(&icmp[16..20], &from.octets());
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1300);

    // IPv4 without DF: taken, fragmented to the pod, which gets it whole.
    write(&mut q, &udp_inner(from, to, 1450, 0x5152, false));
    let got = read_until(&mut udp_at_pod, 5, |p| {
        p.len() >= 20 && p[4..6] == 0x5152u16.to_be_bytes()
    })
    .expect("the packet without DF reached the pod");
    assert_eq!(got.len(), 1450);

    // IPv6, 1450 bytes: taken, refused by forwarding as too big for the pod's link (the
    // kernel's own counter), and ICMPv6 packet too big (MTU 1300) comes out of the TUN
    // towards the source.
    let too_big = || {
        ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap())
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Ip6InTooBigErrors"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = too_big();
    let (from6, to6): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        ("fd77:2::9".parse().unwrap(), "fd77:1::5".parse().unwrap());
    let mut v6 = vec![0u8; 40];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&(1450u16 - 40).to_be_bytes());
    v6[6] = 59; // no next header
    v6[7] = 64;
    v6[8..24].copy_from_slice(&from6.octets());
    v6[24..40].copy_from_slice(&to6.octets());
    v6.resize(1450, 0x66);
    write(&mut q, &v6);
    let t = std::time::Instant::now();
    while too_big() == before {
        assert!(t.elapsed() < Duration::from_secs(5), "not forwarded");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ptb = read_from_tun(&mut q, &|p| {
        p.len() >= 48 && p[0] >> 4 == 6 && p[6] == 58 && p[40] == 2 && p[41] == 0
    });
    assert_eq!(&ptb[24..40], &from6.octets(), "to the source");
    assert_eq!(
        u32::from_be_bytes([ptb[44], ptb[45], ptb[46], ptb[47]]),
        1300,
        "the pod link's MTU"
    );
}

#[test]
fn udp_peer_removal_and_agent_restart() {
    if !preconditions("udp_peer_removal_and_agent_restart", TOOLS) {
        return;
    }
    let mut lab = lab("twu-pr", 3, 1);
    lab.eventually("all pairs reachable over udp", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    let s1 = lab.wait_subnet(1).ipv4.unwrap().subnet;
    let s3 = lab.wait_subnet(3).ipv4.unwrap().subnet;

    // Host 3 leaves: its agent stops and its lease is deleted. Its traffic stops at once,
    // and host 1 answers with ICMP net unreachable instead of sending into the void.
    let status = lab.stop_agent(3);
    assert!(status.success(), "{}", lab.log(3));
    let key = format!(
        "/coreos.com/network/subnets/{}-{}",
        s3.network(),
        s3.prefix_len()
    );
    lab.etcdctl(&["del", &key]);
    let c3 = lab.containers[2].ip.clone();
    lab.eventually("host 3 unreachable from host 1", 10, || !lab.ping(0, &c3));
    let mut c = std::process::Command::new("ping");
    c.args(["-c1", "-W2", &c3]);
    lab.containers[0].netns.prepare_command(&mut c).unwrap();
    let out = String::from_utf8_lossy(&c.output().unwrap().stdout).to_string();
    assert!(
        out.contains("Destination Net Unreachable"),
        "expected ICMP net unreachable: {out}"
    );
    lab.eventually("no_route counted", 5, || dropped(&lab, 1, "no_route") >= 1);
    // A container probing that subnet fast gets at most ~1000 ICMP errors a second (like the
    // kernel's icmp_msgs_per_sec), not one per probe.
    lab.eventually("counters published", 5, || {
        metric(&lab, 1, "twilld_udp_icmp_unreachable") >= 1
    });
    let (icmp_before, no_route_before) = (
        metric(&lab, 1, "twilld_udp_icmp_unreachable"),
        dropped(&lab, 1, "no_route"),
    );
    let probe = lab.containers[0]
        .netns
        .enter(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    // Room for every probe in the TUN's queue (500 by default), so none is lost while the
    // worker is busy elsewhere (a lost probe would never be counted).
    let h1 = lab.cluster.host(1).name.clone();
    twill_tests::run(
        "ip",
        &["-n", &h1, "link", "set", "flannel0", "txqueuelen", "10000"],
    );
    let target = (c3.parse::<Ipv4Addr>().unwrap(), 9);
    for _ in 0..3000 {
        let _ = probe.send_to(b"probe", target);
    }
    lab.eventually("all probes counted", 10, || {
        dropped(&lab, 1, "no_route") >= no_route_before + 3000
    });
    let answered = metric(&lab, 1, "twilld_udp_icmp_unreachable") - icmp_before;
    // The probes may straddle two one-second windows.
    assert!(
        (1..=2000).contains(&answered),
        "{answered} ICMP errors for 3000 probes"
    );
    assert!(
        lab.ping(0, &lab.containers[1].ip.clone()),
        "h1 → h2 unaffected"
    );

    // Agent 1 killed and restarted: the TUN goes with the process, comes back with the
    // same subnet, and traffic flows again — this time without offloads (one packet per
    // syscall slot), talking to a peer that has them.
    lab.kill_agent(1);
    let port = METRICS_PORT.to_string();
    lab.start_agent(
        1,
        &[
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            &port,
            "--udp-offloads=false",
        ],
    );
    lab.eventually("agent 1 ready again", 20, || {
        lab.log(1).matches("ready").count() >= 2
    });
    assert_eq!(lab.wait_subnet(1).ipv4.unwrap().subnet, s1);
    let c2 = lab.containers[1].ip.clone();
    lab.eventually("h1 → h2 after the restart", 10, || lab.ping(0, &c2));
    assert!(lab.ping(1, &lab.containers[0].ip.clone()), "h2 → h1");
    let payload = common::test_data(4 << 20);
    common::assert_transfer_intact(&lab, 0, 1, &payload, "h1 → h2 without offloads on h1");
    common::assert_transfer_intact(&lab, 1, 0, &payload, "h2 → h1 without offloads on h1");
    let log = lab.log(1);
    assert!(
        !log.contains('\x1b'),
        "terminal colour codes in a log file: {log}"
    );
    assert!(
        log.contains("TUN ready device=flannel0 queues=1 offloads=\"0x0\""),
        "offloads still on: {log}"
    );

    // A hand-deleted TUN device is re-created by the next reconcile.
    twill_tests::run("ip", &["-n", &h1, "link", "del", "flannel0"]);
    lab.eventually("flannel0 re-created and traffic back", 15, || {
        lab.ping(0, &c2)
    });
}

#[test]
fn udp_with_a_public_ip_that_is_not_local_binds_the_links_address() {
    if !preconditions(
        "udp_with_a_public_ip_that_is_not_local_binds_the_links_address",
        TOOLS,
    ) {
        return;
    }
    // `--public-ip` names a NAT's outside address (on the lab's underlay subnet, held by no
    // host): advertised in the lease, while the socket binds the link's own address, as
    // Flannel's udp backend binds its interface's. Before, the bind failed and twilld quit.
    let mut lab = AgentLab::new("tud-pub", 1, CONFIG);
    lab.start_agent(1, &["--public-ip", common::NAT_OUTSIDE]);
    lab.wait_subnet(1);
    lab.assert_advertised(common::NAT_OUTSIDE);
    let bound = format!("{}:8285", lab.cluster.host(1).ip);
    lab.eventually("the udp socket is bound to the link's address", 10, || {
        lab.udp_bound(1, &bound)
    });
}

/// Starts twilld on host 1 with `extra`, waits for it to give up and returns its new log
/// lines.
fn failed_start(lab: &mut AgentLab, extra: &[&str]) -> String {
    let seen = lab.log(1).len();
    lab.start_agent(1, extra);
    let mut child = lab.agents[0].take().unwrap();
    let mut status = None;
    lab.eventually("twilld gives up", 20, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success());
    lab.log(1)[seen..].to_string()
}

#[test]
fn udp_startup_errors_say_what_to_fix_once() {
    if !preconditions("udp_startup_errors_say_what_to_fix_once", TOOLS) {
        return;
    }
    let mut lab = AgentLab::new("twu-pt", 1, CONFIG);
    // The TUN name is taken by a device that is not a TUN.
    let log = failed_start(&mut lab, &["--udp-device", "eth0"]);
    assert!(
        log.contains("creating TUN device eth0: a device of that name exists and is not a TUN"),
        "{log}"
    );
    // The UDP port is taken.
    let ip = lab.cluster.host(1).ip;
    let _squatter = lab
        .cluster
        .host(1)
        .netns
        .enter(|| UdpSocket::bind((ip, 8285)))
        .unwrap()
        .unwrap();
    let log = failed_start(&mut lab, &[]);
    let what = format!("binding UDP socket {ip}:8285: Address already in use");
    assert_eq!(log.matches(&what).count(), 1, "said once: {log}");
    assert!(log.contains("another flanneld or twilld"), "{log}");
}

/// A peer that behaves like Flannel's udp proxy: a plain TUN (no virtio-net header, no
/// offloads), one packet per read()/sendto() and per recv()/write(), TTL decremented, routes
/// from a static table. It runs on host `h` instead of twilld.
struct FlannelStylePeer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl FlannelStylePeer {
    fn start(
        lab: &AgentLab,
        h: usize,
        network: ipnet::Ipv4Net,
        subnet: ipnet::Ipv4Net,
        peers: Vec<(ipnet::Ipv4Net, Ipv4Addr)>,
    ) -> FlannelStylePeer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use twill_netkit::tun::{Tun, TunOptions};
        let host = lab.cluster.host(h);
        let tun = host
            .netns
            .enter(|| Tun::create(&TunOptions::plain("flannel0")))
            .unwrap()
            .unwrap();
        let tun_addr = subnet.network();
        host.netns
            .run(move |nl: twill_netkit::Netlink| async move {
                let dev = nl.require_link("flannel0").await?;
                nl.set_mtu(dev.index, 1472).await?;
                nl.ensure_address(
                    dev.index,
                    ipnet::IpNet::V4(ipnet::Ipv4Net::new(tun_addr, 32).unwrap()),
                )
                .await?;
                nl.set_up(dev.index).await?;
                nl.replace_route(&twill_netkit::Route::new(network).dev(dev.index))
                    .await
            })
            .unwrap();
        let sock = host
            .netns
            .enter(|| UdpSocket::bind((host.ip, 8285)))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut queues = tun.into_queues();
        let tun_in = queues.remove(0);
        let tun_out = tun_in.try_clone().unwrap();
        let sock_out = sock.try_clone().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            // TUN → UDP, poll()ed so the thread can stop.
            let mut tun = tun_in;
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&tun),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
                    continue;
                }
                let Ok(n) = tun.read(&mut buf) else { continue };
                let pkt = &mut buf[..n];
                let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
                let Some((_, next_hop)) = peers.iter().find(|(s, _)| s.contains(&dst)) else {
                    continue;
                };
                if flannel_decrement_ttl(pkt) {
                    let _ = sock_out.send_to(pkt, (*next_hop, 8285));
                }
            }
        }));
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut tun = tun_out;
            let mut buf = [0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                if n >= 20 && flannel_decrement_ttl(&mut buf[..n]) {
                    let _ = tun.write(&buf[..n]);
                }
            }
        }));
        FlannelStylePeer { stop, threads }
    }
}

impl Drop for FlannelStylePeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Flannel's TTL handling: decrement, drop at 0, patch the header checksum (RFC 1624).
fn flannel_decrement_ttl(p: &mut [u8]) -> bool {
    p[8] = p[8].wrapping_sub(1);
    if p[8] == 0 {
        return false;
    }
    let old = u16::from_be_bytes([p[10], p[11]]);
    let sum = (!old as u32) + 0xfeff;
    let folded = ((sum & 0xffff) + (sum >> 16)) as u16;
    p[10..12].copy_from_slice(&(!folded).to_be_bytes());
    true
}

#[test]
fn twilld_and_a_flannel_style_udp_peer_exchange_traffic() {
    if !preconditions(
        "twilld_and_a_flannel_style_udp_peer_exchange_traffic",
        TOOLS,
    ) {
        return;
    }
    let mut lab = AgentLab::new("twu-fl", 3, CONFIG);
    let network: ipnet::Ipv4Net = "10.21.0.0/16".parse().unwrap();
    let flannel_subnet: ipnet::Ipv4Net = "10.21.250.0/24".parse().unwrap();
    let flannel_ip = lab.cluster.host(3).ip;
    // Host 3 runs "Flannel": its lease has no BackendType, as Flannel's udp backend writes.
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.21.250.0-24",
        &format!(r#"{{"PublicIP":"{flannel_ip}","PublicIPv6":null}}"#),
    ]);
    let env = twill_netkit::subnet_env::SubnetEnv {
        ipv4: Some(twill_netkit::subnet_env::SubnetPair {
            network,
            subnet: flannel_subnet,
        }),
        ipv6: None,
        mtu: 1472,
        ipmasq: false,
    };
    env.write(&lab.subnet_file(3)).unwrap();
    lab.start_agent(1, &[]);
    lab.start_agent(2, &[]);
    let peers: Vec<_> = [1, 2]
        .iter()
        .map(|&h| {
            (
                lab.wait_subnet(h).ipv4.unwrap().subnet,
                lab.cluster.host(h).ip,
            )
        })
        .collect();
    let _flannel = FlannelStylePeer::start(&lab, 3, network, flannel_subnet, peers);
    for h in 1..=3 {
        lab.add_container(h);
    }
    lab.eventually(
        "all pairs reachable between twilld and the Flannel-style peer",
        20,
        || lab.unreachable_pairs().is_empty(),
    );
    // Bulk TCP both ways: twilld's GSO-sent datagrams arrive one by one at the naive peer,
    // the naive peer's single datagrams go through twilld's GRO receive path.
    let payload = common::test_data(4 << 20);
    common::assert_transfer_intact(&lab, 0, 2, &payload, "twilld → flannel");
    common::assert_transfer_intact(&lab, 2, 1, &payload, "flannel → twilld");
}

/// A flow with an MSS below 128 (`TCP_MAXSEG`, or a peer announcing a tiny MSS) makes
/// super-packets of more segments than the data path cuts; they were dropped whole. The TUN
/// caps its GSO segments, so the kernel cuts those itself.
#[test]
fn a_flow_with_a_tiny_mss_is_carried_not_dropped() {
    if !preconditions("a_flow_with_a_tiny_mss_is_carried_not_dropped", TOOLS) {
        return;
    }
    use std::os::fd::FromRawFd;
    let lab = lab("twu-mss", 2, 1);
    let h1 = lab.cluster.host(1).name.clone();
    let tun = twill_tests::ip_json(&h1, &["-d", "link", "show", "dev", "flannel0"]);
    assert_eq!(tun[0]["gso_max_segs"], 512, "{tun}");
    let dst: std::net::SocketAddr = format!("{}:5002", lab.containers[1].ip).parse().unwrap();
    let receiver = common::tcp_receiver(&lab, 1, "0.0.0.0:5002");
    let payload = common::test_data(4 << 20);
    let mut s = lab.containers[0]
        .netns
        .enter(|| {
            // SAFETY: a fresh socket owned by the TcpStream below; plain setsockopt/connect.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                assert!(fd >= 0);
                let mss: libc::c_int = 88;
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_MAXSEG,
                    &mss as *const _ as *const libc::c_void,
                    std::mem::size_of_val(&mss) as libc::socklen_t,
                );
                let std::net::SocketAddr::V4(v4) = dst else {
                    unreachable!()
                };
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*v4.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                let r = libc::connect(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of_val(&sa) as libc::socklen_t,
                );
                assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
                std::net::TcpStream::from_raw_fd(fd)
            }
        })
        .unwrap();
    s.write_all(&payload).unwrap();
    drop(s);
    assert!(receiver.join().unwrap() == payload, "corrupted");
    assert_eq!(dropped(&lab, 1, "malformed"), 0, "super-packets dropped");
}

/// A UDP GSO send the route cannot take (here: the underlay device's MTU lowered below a
/// segment, as on a VPN or VLAN device on the way to a peer; IPsec gives EIO the same way)
/// goes out as separate datagrams, which IP fragments; before, every train was dropped and
/// bulk TCP to that peer stalled.
#[test]
fn a_refused_udp_gso_send_falls_back_to_one_datagram_per_message() {
    if !preconditions(
        "a_refused_udp_gso_send_falls_back_to_one_datagram_per_message",
        TOOLS,
    ) {
        return;
    }
    let lab = lab("twu-gso", 2, 1);
    let h1 = lab.cluster.host(1).name.clone();
    twill_tests::run(
        "ip",
        &["-n", &h1, "link", "set", "dev", "eth0", "mtu", "1000"],
    );
    let payload = common::test_data(2 << 20);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(common::tcp_transfer(&lab, 0, 1, &payload) == payload);
        });
        let intact = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                // Unblock the transfer so the scope can end: restore the MTU.
                twill_tests::run(
                    "ip",
                    &["-n", &h1, "link", "set", "dev", "eth0", "mtu", "1500"],
                );
                panic!("the transfer stalled: {}", lab.log(1))
            });
        assert!(intact, "corrupted");
    });
    assert!(
        lab.log(1).contains("a UDP GSO send failed"),
        "{}",
        lab.log(1)
    );
}

#[test]
fn a_udp_tun_set_down_or_stripped_by_hand_is_repaired() {
    if !preconditions("a_udp_tun_set_down_or_stripped_by_hand_is_repaired", TOOLS) {
        return;
    }
    let lab = lab("twu-dn", 2, 1);
    lab.eventually("both pods reachable over udp", 20, || {
        lab.unreachable_pairs().is_empty()
    });
    common::assert_tun_device_repaired(&lab, 1, "flannel0", NETWORK);
}

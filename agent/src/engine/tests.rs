//! The engine end to end without root: two engines on 127.0.0.1, each over a SOCK_SEQPACKET
//! socket pair standing in for its TUN queue (one packet per read and write, as a TUN), with
//! a transform that wraps every datagram in a header and a trailer, as an encrypting backend
//! would. Checks the sealing path, segmentation, GRO receives and coalescing together.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::packet::test_util::tcp_packet;
use super::packet::{
    self, DropReason, GSO_NONE, GSO_TCPV4, Ipv4Info, Ipv6Info, PLAIN, VNET_HDR_LEN, VnetHdr,
    layout::tcp,
};
use super::sys::{Interest, poll};
use super::*;

const MAGIC: [u8; 4] = *b"TWL1";

/// Wraps each inner packet as `MAGIC | packet | length (u32, big endian)` and sends it all
/// to one address.
struct Wrapping {
    peer: SocketAddr,
    /// How long routing each packet takes (a stand-in for expensive crypto).
    slow: Duration,
    /// Bytes the engine reported sent (`Outbound::sent`), as a backend counts them.
    sent: Arc<AtomicU64>,
}

impl Wrapping {
    fn to(peer: SocketAddr) -> Wrapping {
        Wrapping {
            peer,
            slow: Duration::ZERO,
            sent: Arc::default(),
        }
    }
}

struct WrapOut {
    peer: SocketAddr,
    slow: Duration,
    sent: Arc<AtomicU64>,
}

struct WrapIn;

struct WrapSender;

impl Transform for Wrapping {
    type Outbound = WrapOut;
    type Inbound = WrapIn;
    fn outbound(&self) -> WrapOut {
        WrapOut {
            peer: self.peer,
            slow: self.slow,
            sent: self.sent.clone(),
        }
    }
    fn inbound(&self) -> WrapIn {
        WrapIn
    }
}

impl Outbound for WrapOut {
    type Peer = u32;
    const HEADER_LEN: usize = 4;
    const TRAILER_LEN: usize = 4;

    fn route(
        &mut self,
        _pkt: &mut [u8],
        _ip: &Ipv4Info,
        _ctl: &mut Control<'_>,
    ) -> Result<Destination<u32>, Refusal> {
        if !self.slow.is_zero() {
            std::thread::sleep(self.slow);
        }
        Ok(Destination {
            to: self.peer,
            peer: 7,
        })
    }

    fn route_v6(
        &mut self,
        _pkt: &mut [u8],
        _ip: &Ipv6Info,
        _ctl: &mut Control<'_>,
    ) -> Result<Destination<u32>, Refusal> {
        Ok(Destination {
            to: self.peer,
            peer: 7,
        })
    }

    fn seal(
        &mut self,
        peer: u32,
        d: &mut [u8],
        inner_len: usize,
        _ctl: &mut Control<'_>,
    ) -> Result<usize, DropReason> {
        assert_eq!(peer, 7, "the peer route() found");
        d[..4].copy_from_slice(&MAGIC);
        d[4 + inner_len..8 + inner_len].copy_from_slice(&(inner_len as u32).to_be_bytes());
        Ok(8 + inner_len)
    }

    fn sent(&mut self, peer: u32, bytes: usize) {
        assert_eq!(peer, 7, "the peer route() found");
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl Inbound for WrapIn {
    type Sender<'a> = WrapSender;
    fn sender(&mut self, _from: SocketAddr) -> Result<WrapSender, DropReason> {
        Ok(WrapSender)
    }
}

impl Sender for WrapSender {
    fn open(&mut self, d: &mut [u8], _ctl: &mut Control<'_>) -> Result<Opened, DropReason> {
        let n = d.len();
        if n < 8 || d[..4] != MAGIC {
            return Err(DropReason::Malformed);
        }
        let inner_len = u32::from_be_bytes([d[n - 4], d[n - 3], d[n - 2], d[n - 1]]) as usize;
        if inner_len != n - 8 {
            return Err(DropReason::Truncated);
        }
        if d[4] >> 4 == 6 {
            packet::parse_ipv6(&d[4..n - 4])?;
            return Ok(Opened::Packet6 { inner: 4..n - 4 });
        }
        let ip = packet::parse_ipv4(&d[4..n - 4], true)?;
        Ok(Opened::Packet {
            inner: 4..n - 4,
            ip,
        })
    }
}

/// A free UDP port on 127.0.0.1 (bound and released; the engine binds it again).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// (the engine's end, the test's end) of a stand-in TUN queue.
fn fake_tun() -> (File, File) {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    (File::from(a), File::from(b))
}

/// A test engine's config: bound to 127.0.0.1:`port`, offloads on, no busy polling.
fn config(port: u16, mtu: usize) -> EngineConfig {
    EngineConfig {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        mtu,
        offloads: true,
        busy_poll: Duration::ZERO,
        name: "test",
        crypto_helper: false,
    }
}

/// Two engines A and B on 127.0.0.1 (MTUs `mtu_a` and `mtu_b`) whose transforms send
/// everything to the other: for each, (the engine, the test's end of its TUN queue, its
/// counters).
#[allow(clippy::type_complexity)]
fn two_engines(
    mtu_a: usize,
    mtu_b: usize,
) -> ((Engine, File, Arc<Stats>), (Engine, File, Arc<Stats>)) {
    let (port_a, port_b) = (free_port(), free_port());
    let addr = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (engine_tun_a, tun_a) = fake_tun();
    let (engine_tun_b, tun_b) = fake_tun();
    let stats_a = Arc::new(Stats::new("test"));
    let stats_b = Arc::new(Stats::new("test"));
    let a = Engine::start(
        vec![engine_tun_a],
        config(port_a, mtu_a),
        &Wrapping::to(addr(port_b)),
        &stats_a,
    )
    .unwrap();
    let b = Engine::start(
        vec![engine_tun_b],
        config(port_b, mtu_b),
        &Wrapping::to(addr(port_a)),
        &stats_b,
    )
    .unwrap();
    ((a, tun_a, stats_a), (b, tun_b, stats_b))
}

fn read_packet(tun: &mut File) -> Vec<u8> {
    assert!(
        poll([tun.as_fd()], Interest::Readable, Duration::from_secs(5)),
        "nothing arrived"
    );
    let mut buf = vec![0u8; 70_000];
    let n = tun.read(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn a_wrapping_transform_carries_plain_and_super_packets_between_two_engines() {
    let ((a, mut tun_a, stats_a), (b, mut tun_b, stats_b)) = two_engines(1500, 1500);

    // One plain packet arrives unchanged, behind a plain virtio-net header.
    let plain = tcp_packet(1, tcp::ACK, b"hello", 64);
    tun_a.write_all(&[&PLAIN[..], &plain].concat()).unwrap();
    let got = read_packet(&mut tun_b);
    assert_eq!(VnetHdr::parse(&got).map(|h| h.gso_type), Some(GSO_NONE));
    assert_eq!(&got[VNET_HDR_LEN..], &plain[..]);

    // A super-packet leaves as three sealed segments; its payload comes back whole and in
    // order (in one coalesced write when the three share a receive batch).
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let sup = tcp_packet(1000, tcp::ACK, &payload, 64);
    let hdr = VnetHdr {
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: 1000,
        ..VnetHdr::default()
    };
    tun_a
        .write_all(&[&hdr.to_bytes()[..], &sup].concat())
        .unwrap();
    let mut received = Vec::new();
    while received.len() < payload.len() {
        let got = read_packet(&mut tun_b);
        let p = &got[VNET_HDR_LEN..];
        let ip = packet::parse_ipv4(p, true).unwrap();
        received.extend_from_slice(&p[ip.header_len + 32..]);
    }
    assert_eq!(received, payload);

    // A TCP/IPv6 super-packet leaves as three segments and comes back whole.
    let sup6 = super::packet::test_util::tcp6_packet(1000, tcp::ACK, &payload, 64);
    let hdr6 = VnetHdr {
        gso_type: packet::GSO_TCPV6,
        hdr_len: 72,
        gso_size: 1000,
        ..VnetHdr::default()
    };
    tun_a
        .write_all(&[&hdr6.to_bytes()[..], &sup6].concat())
        .unwrap();
    let mut received = Vec::new();
    while received.len() < payload.len() {
        let got = read_packet(&mut tun_b);
        let p = &got[VNET_HDR_LEN..];
        packet::parse_ipv6(p).unwrap();
        received.extend_from_slice(&p[72..]);
    }
    assert_eq!(received, payload);

    // Behind a destination options header (a socket with IPV6_DSTOPTS) too: each segment
    // carries the header and arrives as it is (coalescing takes TCP right after the fixed
    // header only).
    let behind = super::packet::test_util::with_ext6(&sup6, 60, 16, 0);
    let hdr_behind = VnetHdr {
        hdr_len: 88,
        ..hdr6
    };
    tun_a
        .write_all(&[&hdr_behind.to_bytes()[..], &behind].concat())
        .unwrap();
    let mut received = Vec::new();
    while received.len() < payload.len() {
        let got = read_packet(&mut tun_b);
        let p = &got[VNET_HDR_LEN..];
        assert!(
            super::packet::test_util::tcp6_ok(p),
            "a segment behind options"
        );
        assert_eq!(&p[40..56], &behind[40..56]);
        received.extend_from_slice(&p[88..]);
    }
    assert_eq!(received, payload);

    // An IPv6 packet (the transform routes it with route_v6) arrives unchanged.
    let mut v6 = vec![0u8; 40];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&5u16.to_be_bytes());
    v6[6] = 59;
    v6[7] = 64;
    v6[8..24].copy_from_slice(&"fd00:5:1::9".parse::<Ipv6Addr>().unwrap().octets());
    v6[24..40].copy_from_slice(&"fd00:5:2::9".parse::<Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(b"hello");
    tun_a.write_all(&[&PLAIN[..], &v6].concat()).unwrap();
    let got = read_packet(&mut tun_b);
    assert_eq!(&got[VNET_HDR_LEN..], &v6[..]);
    drop((a, b));
    let sent = stats_a.tx_packets.load(Ordering::Relaxed);
    let delivered = stats_b.rx_packets.load(Ordering::Relaxed);
    assert_eq!(
        (sent, delivered),
        (11, 11),
        "one plain packet, three segments, three IPv6 segments, three behind options and \
         one IPv6 packet"
    );
}

#[test]
fn an_engine_under_sustained_load_stops_when_dropped() {
    // Before: the stop flag was read only when a round found nothing to do, so dropping an
    // engine whose TUN never ran dry (a flood, a CPU-bound wireguard flow) waited for the
    // flood to end: twilld's shutdown and a data-path rebuild hung.
    let cfg = config(free_port(), 1500);
    let (engine_tun, mut tun) = fake_tun();
    let stats = Arc::new(Stats::new("test"));
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    // Each packet takes the engine a millisecond: the writer always keeps the queue full.
    let slow = Wrapping {
        slow: Duration::from_millis(1),
        ..Wrapping::to(peer)
    };
    let engine = Engine::start(vec![engine_tun], cfg, &slow, &stats).unwrap();
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = flooding.clone();
    let flood = std::thread::spawn(move || {
        // Super-packets: a 60 KB write costs the writer a copy, the engine 41 segments.
        let hdr = VnetHdr {
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1448,
            ..VnetHdr::default()
        };
        let sup = tcp_packet(1, tcp::ACK, &[7u8; 60_000], 64);
        let pkt = [&hdr.to_bytes()[..], &sup].concat();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        // Writes block while the queue is full: the engine never finds it empty.
        while flag.load(Ordering::Relaxed)
            && std::time::Instant::now() < until
            && tun.write_all(&pkt).is_ok()
        {}
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    drop(engine);
    let took = t.elapsed();
    flooding.store(false, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(took < Duration::from_secs(2), "dropping took {took:?}");
}

#[test]
fn a_queue_that_reads_empty_ends_its_thread_instead_of_spinning() {
    // Before: a read of 0 bytes (the other end of a queue closed) counted as a packet too
    // short, and the thread read again at once, for ever, at full CPU.
    let cfg = config(free_port(), 1500);
    let (engine_tun, tun) = fake_tun();
    let stats = Arc::new(Stats::new("test"));
    let wrap = Wrapping::to(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())));
    let engine = Engine::start(vec![engine_tun], cfg, &wrap, &stats).unwrap();
    drop(tun);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while engine.healthy() {
        assert!(
            std::time::Instant::now() < deadline,
            "the thread still runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts an engine that sends everything to `to`, writes `packets` (each behind its virtio-net
/// header) into its TUN and waits until it has read them all. Returns (bytes the engine reported
/// sent to the transform, failed sends).
fn send_through(to: SocketAddr, packets: &[Vec<u8>]) -> (u64, u64) {
    let cfg = config(free_port(), 1500);
    let (engine_tun, mut tun) = fake_tun();
    let stats = Arc::new(Stats::new("test"));
    let wrap = Wrapping::to(to);
    let engine = Engine::start(vec![engine_tun], cfg, &wrap, &stats).unwrap();
    for p in packets {
        tun.write_all(p).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Counters are published when the worker runs dry, after its sends.
    while stats.tun_reads.load(Ordering::Relaxed) < packets.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the packets were not read"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(engine);
    (
        wrap.sent.load(Ordering::Relaxed),
        stats.io_errors.load(Ordering::Relaxed),
    )
}

#[test]
fn only_what_the_kernel_took_is_reported_sent() {
    // Before: wireguard counted a peer's transfer bytes when it sealed its messages, so a
    // send the kernel refused (no route, ENOBUFS, a failed GSO send) still counted.
    let plain = [&PLAIN[..], &tcp_packet(1, tcp::ACK, b"hello", 64)].concat();
    let hdr = VnetHdr {
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: 1000,
        ..VnetHdr::default()
    };
    let sup = [
        &hdr.to_bytes()[..],
        &tcp_packet(1000, tcp::ACK, &[9u8; 3000], 64),
    ]
    .concat();
    let packets = [plain, sup];
    // Three segments of 1052 bytes and a plain packet of 57, each 8 bytes more wrapped.
    let wire = (3 * (1052 + 8) + (57 + 8)) as u64;

    // Port 0: every send fails (EINVAL), the GSO train's too, and then its datagrams one by one.
    let (sent, failed) = send_through(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &packets);
    assert!(failed >= 2, "the sends failed ({failed} errors)");
    assert_eq!(sent, 0, "refused sends reported as sent");
    // The limited broadcast without SO_BROADCAST: refused at once, no GSO retry.
    let (sent, failed) = send_through(SocketAddr::from((Ipv4Addr::BROADCAST, 9)), &packets);
    assert!(failed >= 2, "the sends failed ({failed} errors)");
    assert_eq!(sent, 0, "refused sends reported as sent");

    // A socket that takes them: all of it, whole datagrams as sealed.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (sent, failed) = send_through(sink.local_addr().unwrap(), &packets);
    assert_eq!((sent, failed), (wire, 0));
    sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = 0;
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        got += sink.recv(&mut buf).unwrap() as u64;
    }
    assert_eq!(got, wire, "what was reported is what arrived");
}

#[test]
fn received_packets_over_the_mtu_are_delivered_each_on_its_own_and_counted() {
    // A peer whose MTU is larger sends segments over ours: with UDP GRO they arrive in one
    // receive. Before, each one over the MTU was dropped (`mtu_mismatch`), a black hole for
    // path-MTU discovery. Now each is written to the TUN on its own (never in a super-packet,
    // whose segments must fit the MTU), for the kernel to answer with ICMP fragmentation
    // needed / packet too big or fragment it, and counted in `rx_over_mtu_packets`; packets
    // within the MTU still coalesce.
    use super::packet::test_util::tcp6_packet;
    let ((a, mut tun_a, _stats_a), (b, mut tun_b, stats_b)) = two_engines(1500, 1000);
    let payload: Vec<u8> = (0..4800u32).map(|i| (i * 7) as u8).collect();
    let super_packet = |seq: u32, gso_size: u16, data: &[u8]| {
        let hdr = VnetHdr {
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size,
            ..VnetHdr::default()
        };
        [&hdr.to_bytes()[..], &tcp_packet(seq, tcp::ACK, data, 64)].concat()
    };
    // Segments of 1252 bytes (over B's 1000) but the last, 652: three packets, in order,
    // each plain.
    tun_a
        .write_all(&super_packet(1000, 1200, &payload[..3000]))
        .unwrap();
    for (len, data) in [
        (1252, &payload[..1200]),
        (1252, &payload[1200..2400]),
        (652, &payload[2400..3000]),
    ] {
        let got = read_packet(&mut tun_b);
        assert_eq!(VnetHdr::parse(&got).map(|h| h.gso_type), Some(GSO_NONE));
        let p = &got[VNET_HDR_LEN..];
        assert_eq!(p.len(), len);
        assert_eq!(&p[52..], data);
        assert!(packet::parse_ipv4(p, true).is_ok());
    }
    // The flow goes on with segments within the MTU: coalesced as before (gso_size 900).
    tun_a
        .write_all(&super_packet(4000, 900, &payload[3000..4800]))
        .unwrap();
    let got = read_packet(&mut tun_b);
    let hdr = VnetHdr::parse(&got).unwrap();
    assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 900));
    assert_eq!(&got[VNET_HDR_LEN + 52..], &payload[3000..4800]);
    // IPv6 over the MTU: 1100 bytes, delivered as it is.
    let v6 = tcp6_packet(1, tcp::ACK, &payload[..1028], 64);
    assert_eq!(v6.len(), 1100);
    tun_a.write_all(&[&PLAIN[..], &v6].concat()).unwrap();
    let got = read_packet(&mut tun_b);
    assert_eq!(&got[..VNET_HDR_LEN], &PLAIN[..]);
    assert_eq!(&got[VNET_HDR_LEN..], &v6[..]);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stats_b.rx_over_mtu_packets.load(Ordering::Relaxed) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the packets over the MTU were not counted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !poll(
            [tun_b.as_fd()],
            Interest::Readable,
            Duration::from_millis(200)
        ),
        "nothing else reached the TUN"
    );
    drop((a, b));
    assert_eq!(stats_b.rx_over_mtu_packets.load(Ordering::Relaxed), 3);
    assert_eq!(stats_b.rx_packets.load(Ordering::Relaxed), 6);
    let dropped: u64 = DropReason::ALL.iter().map(|&r| stats_b.dropped(r)).sum();
    assert_eq!(dropped, 0, "nothing dropped");
    let mut text = String::new();
    stats_b.render(&mut text);
    assert!(
        text.lines()
            .any(|l| l == "twilld_test_rx_over_mtu_packets_total 3"),
        "{text}"
    );
}

#[test]
fn the_over_mtu_warning_is_said_once_for_all_workers_of_a_data_path() {
    // Every worker of a data path receives from a peer whose MTU is larger. Each worker had
    // its own rate limit, so a node with N queues logged the same news N times every period.
    let (buf, _guard) = crate::test_log::capture_logs();
    let stats = Arc::new(Stats::new("test"));
    let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 8285));
    let mut workers: Vec<_> = (0..2)
        .map(|_| {
            let sock = sys::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), true);
            rx::RxWorker::new(
                fake_tun().0,
                Arc::new(sock.unwrap()),
                WrapIn,
                stats.clone(),
                config(0, 1000),
            )
        })
        .collect();
    for w in &mut workers {
        w.over_mtu(from, 1400);
        w.over_mtu(from, 1400);
    }
    let said = crate::test_log::logs(&buf);
    assert_eq!(
        said.matches("bigger than this node's MTU").count(),
        1,
        "{said}"
    );
}

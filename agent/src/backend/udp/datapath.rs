//! The udp data path's I/O: per worker one plain OS thread that carries both directions (TUN →
//! UDP and UDP → TUN) over its own TUN queue and SO_REUSEPORT socket, with non-blocking fds
//! (poll only when idle). TUN reads carry virtio-net headers, so the kernel hands over 64 KiB
//! TCP super-packets; their segments leave with one sendmmsg and UDP_SEGMENT, gathering
//! headers from an arena and payloads from the read buffer, consecutive datagrams to one peer
//! sharing a send across reads (segment trains). The socket has UDP_GRO, so one
//! recvmmsg slot receives many datagrams; their TCP segments are coalesced into few gather
//! writes to the TUN. All buffers are allocated at start.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::packet::{
    self, Coalescer, Drop, GSO_ECN, GSO_NONE, GSO_TCPV4, MAX_IP_PACKET, VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN, VnetHdr,
};
use super::stats::{Local, Stats};
use super::table::{TableCell, TableReader};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// The kernel's limit of segments per UDP GSO send.
const UDP_MAX_SEGMENTS: usize = 64;
/// The largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65507;
/// Socket buffers: the default ones lose datagrams at these rates.
const SOCKET_BUFFER: libc::c_int = 16 << 20;
/// Messages per sendmmsg / recvmmsg.
const BATCH: usize = 16;
/// How often idle threads look at the stop flag.
const IDLE_POLL_MS: libc::c_int = 200;

/// What the data path needs to know besides the peers.
#[derive(Clone, Copy, Debug)]
pub struct DatapathConfig {
    /// The UDP address to bind (public IP and port); peers listen on the same port.
    pub bind: SocketAddrV4,
    /// The TUN MTU: the largest inner packet.
    pub mtu: usize,
    /// UDP GSO segment trains, UDP GRO and TCP coalescing (the TUN's offloads are set by
    /// whoever opened it).
    pub offloads: bool,
}

/// Running data-path threads; dropping it stops and joins them.
pub struct Datapath {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Datapath {
    /// Starts one worker thread (both directions) per TUN queue.
    pub fn start(
        queues: Vec<File>,
        cfg: DatapathConfig,
        busy_poll: std::time::Duration,
        table: &Arc<TableCell>,
        stats: &Arc<Stats>,
    ) -> io::Result<Datapath> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut dp = Datapath {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for (i, tun) in queues.into_iter().enumerate() {
            set_nonblocking(tun.as_raw_fd())?;
            let sock = Arc::new(udp_socket(cfg.bind, cfg.offloads).map_err(|e| {
                let hint = if e.kind() == io::ErrorKind::AddrInUse {
                    " (is another flanneld or twilld running on this node? Backend.Port sets the port)"
                } else {
                    ""
                };
                io::Error::new(
                    e.kind(),
                    format!("binding UDP socket {}: {e}{hint}", cfg.bind),
                )
            })?);
            let tun_rx = tun.try_clone()?;
            let tx = TxWorker::new(
                tun,
                sock.clone(),
                table.reader(),
                stats.clone(),
                stop.clone(),
                cfg,
            );
            let rx = RxWorker::new(tun_rx, sock, table.reader(), stats.clone(), cfg);
            dp.threads.push(
                std::thread::Builder::new()
                    .name(format!("udp-{i}"))
                    .spawn(move || run_worker(tx, rx, busy_poll))?,
            );
        }
        Ok(dp)
    }

    /// Whether every thread is still running (a thread ends when its TUN queue dies).
    pub fn healthy(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.threads.iter().all(|t| !t.is_finished())
    }
}

impl std::ops::Drop for Datapath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A non-blocking UDP socket on `bind` with SO_REUSEPORT (one per worker), big buffers and,
/// with `gro`, UDP_GRO.
fn udp_socket(bind: SocketAddrV4, gro: bool) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER)?;
        }
    }
    // Outer packets use the device MTU and never carry DF, like the kernel's VXLAN: a smaller
    // path MTU (a route MTU, or a forged ICMP "fragmentation needed") then cannot make the
    // kernel refuse GSO sends (it rejects segments over the path MTU) and black-hole a peer;
    // a router on a path that really is smaller fragments. OMIT needs Linux 3.15.
    if setsockopt_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_OMIT,
    )
    .is_err()
    {
        setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )?;
    }
    if gro && let Err(e) = setsockopt_int(fd, SOL_UDP, UDP_GRO, 1) {
        tracing::warn!(error = %e, "UDP_GRO unavailable: receiving one datagram per slot");
    }
    let sa = sockaddr(bind);
    // SAFETY: sa is a valid sockaddr_in of the given size.
    let rc = unsafe {
        libc::bind(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Waits until one of `fds` (at most two) is ready for `events` or `timeout_ms` passes (0:
/// only looks). Returns whether one is ready.
fn poll_fds(fds: &[RawFd], events: libc::c_short, timeout_ms: libc::c_int) -> bool {
    let mut p = [libc::pollfd {
        fd: -1,
        events,
        revents: 0,
    }; 2];
    for (slot, fd) in p.iter_mut().zip(fds) {
        slot.fd = *fd;
    }
    // SAFETY: a valid array of pollfds of that length.
    let n = unsafe { libc::poll(p.as_mut_ptr(), fds.len().min(2) as libc::nfds_t, timeout_ms) };
    n > 0
}

/// Waits until one of `fds` is ready for `events` or the idle timeout passes.
fn wait(fds: &[RawFd], events: libc::c_short) {
    poll_fds(fds, events, IDLE_POLL_MS);
}

/// Yields the CPU until one of `fds` has input or `limit` passes; returns whether one has.
/// One look per turn costs a single poll, where trying both directions costs two calls.
fn spin_until_ready(fds: &[RawFd], limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        std::thread::yield_now();
        if poll_fds(fds, libc::POLLIN, 0) {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
    }
}

/// What one round of a direction found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    /// Moved this many packets (TUN reads or datagrams).
    Busy(usize),
    Idle,
    /// The TUN queue is gone: the thread ends.
    Gone,
}

/// TUN reads per round before the other direction gets its turn.
const TUN_READS_PER_ROUND: usize = 64;

/// Packets a busy period must have moved before the thread busy-polls when it runs dry:
/// bulk traffic keeps its thread awake, a trickle (pings) never makes it spin.
const BUSY_POLL_AFTER: usize = 32;

/// Both directions of one queue on one thread: while traffic flows one way, the other way's
/// packets (TCP ACKs) are picked up in the same loop instead of waking a second thread.
///
/// When a busy period runs dry the thread keeps polling (yielding the CPU) for `busy_poll`
/// before it sleeps: on virtual machines a sleeping thread costs its waker an IPI and a halted
/// vCPU a VM exit, which cut single-stream throughput by a quarter here.
fn run_worker(mut tx: TxWorker, mut rx: RxWorker, busy_poll: std::time::Duration) {
    let fds = [tx.tun.as_raw_fd(), rx.sock.as_raw_fd()];
    let mut moved = 0usize;
    let mut busy_rounds = 0u64;
    loop {
        let (t, r) = (tx.round(), rx.round());
        match (t, r) {
            (Round::Gone, _) | (_, Round::Gone) => return,
            (Round::Idle, Round::Idle) => {
                // Counters become visible as soon as a burst ends (a few atomic adds, and
                // none when nothing changed).
                tx.local.flush(&tx.stats);
                rx.local.flush(&rx.stats);
                if moved >= BUSY_POLL_AFTER
                    && !busy_poll.is_zero()
                    && spin_until_ready(&fds, busy_poll)
                {
                    continue;
                }
                moved = 0;
                if tx.stop.load(Ordering::Relaxed) {
                    return;
                }
                wait(&fds, libc::POLLIN);
            }
            (t, r) => {
                let n = |x: Round| if let Round::Busy(n) = x { n } else { 0 };
                moved = moved.saturating_add(n(t) + n(r));
                busy_rounds += 1;
                if busy_rounds.is_multiple_of(256) {
                    // Under sustained load there is no dry round: publish now and then.
                    tx.local.flush(&tx.stats);
                    rx.local.flush(&rx.stats);
                }
            }
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// Whether an error means the TUN queue is gone (device deleted): the thread ends and the
/// control plane re-creates the device.
fn queue_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::EIO) | Some(libc::ENXIO) | Some(libc::EBADF)
    )
}

/// Where one piece of an outgoing datagram lies: in a TUN read slot or in the header arena.
#[derive(Clone, Copy)]
enum Part {
    Read { off: usize, len: usize },
    Header { off: usize, len: usize },
}

impl Part {
    fn len(&self) -> usize {
        match *self {
            Part::Read { len, .. } | Part::Header { len, .. } => len,
        }
    }
}

/// One UDP message to send: `parts` (indices into the parts list) gathered; the kernel splits
/// it into `count` datagrams of `stride` bytes (the last one may be shorter) when it carries
/// more than one.
#[derive(Clone)]
struct OutMsg {
    parts: std::ops::Range<usize>,
    stride: usize,
    count: usize,
    bytes: usize,
    /// Whether another datagram may join: the last one added was a full `stride`.
    open: bool,
    dst: Ipv4Addr,
}

impl OutMsg {
    /// The UDP_SEGMENT size to pass, or 0 for a plain datagram.
    fn segment(&self) -> u16 {
        if self.count > 1 {
            self.stride as u16
        } else {
            0
        }
    }

    /// Whether a datagram of `len` bytes to `dst` can join this message's segment train:
    /// the kernel's UDP GSO takes equal segments (only the last may be shorter), at most 64
    /// of them and 64 KiB in all.
    fn can_take(&self, dst: Ipv4Addr, len: usize) -> bool {
        self.open
            && self.dst == dst
            && len <= self.stride
            && self.count < UDP_MAX_SEGMENTS
            && self.bytes + len <= MAX_UDP_PAYLOAD
    }
}

/// Queues a datagram for `dst` of `len` bytes whose `pieces` end at `parts_end` in the parts
/// list: it joins the last message's segment train when it can, so consecutive inner packets
/// to one peer leave as one UDP GSO send even across TUN reads (a 64 KiB TCP super-packet is
/// ~46 segments, more than one send may carry).
fn enqueue(
    msgs: &mut Vec<OutMsg>,
    trains: bool,
    parts_end: usize,
    pieces: usize,
    dst: Ipv4Addr,
    len: usize,
) {
    if trains
        && let Some(m) = msgs.last_mut()
        && m.can_take(dst, len)
    {
        m.parts.end = parts_end;
        m.count += 1;
        m.bytes += len;
        m.open = len == m.stride;
        return;
    }
    msgs.push(OutMsg {
        parts: parts_end - pieces..parts_end,
        stride: len,
        count: 1,
        bytes: len,
        open: true,
        dst,
    });
}

/// ICMP errors one worker writes per second at most, like the kernel's
/// `net.ipv4.icmp_msgs_per_sec` (1000): a container scanning addresses nobody holds gets
/// answers, not one for every probe.
const ICMP_PER_SECOND: u32 = 1000;

/// The ICMP errors left in the current one-second window.
struct IcmpBudget {
    window: std::time::Instant,
    used: u32,
}

impl IcmpBudget {
    fn new(now: std::time::Instant) -> IcmpBudget {
        IcmpBudget {
            window: now,
            used: 0,
        }
    }

    /// Whether one more ICMP error may go out at `now`.
    fn take(&mut self, now: std::time::Instant) -> bool {
        if now.duration_since(self.window) >= std::time::Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        if self.used < ICMP_PER_SECOND {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

/// TUN reads that may be pending in one send batch.
const READ_SLOTS: usize = 8;
const READ_SLOT: usize = VNET_HDR_LEN + MAX_IP_PACKET;
/// Headers of the segments of one super-packet at most (512 segments of 120 bytes).
const MAX_PACKET_HEADERS: usize = packet::MAX_SEGMENTS * 120;
const HEADER_ARENA: usize = 4 * MAX_PACKET_HEADERS;

/// iovec scratch space. Holds pointers only during one sendmmsg call, so moving it to the
/// worker thread is sound.
struct IovScratch(Vec<libc::iovec>);
// SAFETY: the pointers are rebuilt before every call and never dereferenced outside it.
unsafe impl Send for IovScratch {}

struct TxWorker {
    tun: File,
    sock: Arc<OwnedFd>,
    table: TableReader,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    cfg: DatapathConfig,
    /// TUN reads, one slot each; payloads are sent from here without copying.
    reads: Box<[u8]>,
    reads_used: usize,
    headers: Box<[u8]>,
    headers_used: usize,
    parts: Vec<Part>,
    msgs: Vec<OutMsg>,
    iovs: IovScratch,
    icmp_budget: IcmpBudget,
    local: Local,
}

impl TxWorker {
    fn new(
        tun: File,
        sock: Arc<OwnedFd>,
        table: TableReader,
        stats: Arc<Stats>,
        stop: Arc<AtomicBool>,
        cfg: DatapathConfig,
    ) -> TxWorker {
        TxWorker {
            tun,
            sock,
            table,
            stats,
            stop,
            cfg,
            reads: vec![0u8; READ_SLOTS * READ_SLOT].into_boxed_slice(),
            reads_used: 0,
            headers: vec![0u8; HEADER_ARENA].into_boxed_slice(),
            headers_used: 0,
            parts: Vec::with_capacity(READ_SLOTS * (2 * packet::MAX_SEGMENTS + 1)),
            msgs: Vec::with_capacity(READ_SLOTS * 16),
            iovs: IovScratch(Vec::with_capacity(
                READ_SLOTS * (2 * packet::MAX_SEGMENTS + 1),
            )),
            icmp_budget: IcmpBudget::new(std::time::Instant::now()),
            local: Local::default(),
        }
    }

    /// Reads what the TUN has (up to a few batches) and sends it.
    fn round(&mut self) -> Round {
        let fd = self.tun.as_raw_fd();
        let mut got = 0;
        for _ in 0..TUN_READS_PER_ROUND {
            if self.reads_used == READ_SLOTS
                || HEADER_ARENA - self.headers_used < MAX_PACKET_HEADERS
            {
                self.send_all();
            }
            let slot = self.reads_used * READ_SLOT;
            // SAFETY: reads into our own buffer, within this slot.
            let n = unsafe {
                libc::read(
                    fd,
                    self.reads[slot..].as_mut_ptr() as *mut libc::c_void,
                    READ_SLOT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if would_block(&e) {
                    break;
                }
                self.local.io_errors += 1;
                if queue_gone(&e) {
                    self.local.flush(&self.stats);
                    tracing::warn!(error = %e, "TUN queue closed: data-path thread ends");
                    return Round::Gone;
                }
                tracing::debug!(error = %e, "reading the TUN device");
                break;
            }
            got += 1;
            self.local.tun_reads += 1;
            if self.handle(slot, n as usize) {
                self.reads_used += 1;
            }
        }
        self.send_all();
        if got > 0 {
            Round::Busy(got)
        } else {
            Round::Idle
        }
    }

    /// One TUN read at `slot`: checks, TTL, segmentation, queued for sending. Returns
    /// whether the slot is now in use by queued messages.
    fn handle(&mut self, slot: usize, n: usize) -> bool {
        if n < VNET_HDR_LEN {
            self.local.drop(Drop::Truncated, 1);
            return false;
        }
        let Some(hdr) = VnetHdr::parse(&self.reads[slot..slot + n]) else {
            return false;
        };
        let pkt_off = slot + VNET_HDR_LEN;
        let pkt = &mut self.reads[pkt_off..slot + n];
        let ip = match packet::parse_ipv4(pkt, false) {
            Ok(ip) => ip,
            Err(why) => {
                self.local.drop(why, 1);
                return false;
            }
        };
        let table = self.table.get();
        if !table.in_network(ip.dst) {
            self.local.drop(Drop::OutsideNetwork, 1);
            return false;
        }
        if table.is_local(ip.dst) {
            self.local.drop(Drop::NotLocal, 1);
            return false;
        }
        let Some(peer) = table.peer_for(ip.dst) else {
            self.local.drop(Drop::NoRoute, 1);
            let mut icmp = [0u8; 128];
            // From the TUN's own address, `<local subnet>.0`.
            let src = table
                .local
                .map(|l| l.network())
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            if !self.icmp_budget.take(std::time::Instant::now()) {
                return false;
            }
            if let Some(len) = packet::icmp_net_unreachable(pkt, src, &mut icmp) {
                let hdr = [0u8; VNET_HDR_LEN];
                if write_tun(&self.tun, &hdr, &[&icmp[..len]]).is_ok() {
                    self.local.icmp_unreachable += 1;
                }
            }
            return false;
        };
        if let Err(why) = packet::decrement_ttl(pkt) {
            self.local.drop(why, 1);
            return false;
        }
        match hdr.gso_type & !GSO_ECN {
            GSO_NONE => {
                if hdr.flags & VNET_F_NEEDS_CSUM != 0
                    && let Err(why) = packet::complete_checksum(pkt, &hdr)
                {
                    self.local.drop(why, 1);
                    return false;
                }
                if pkt.len() > self.cfg.mtu {
                    self.local.drop(Drop::Oversize, 1);
                    return false;
                }
                let len = pkt.len();
                self.queue(peer, &[Part::Read { off: pkt_off, len }]);
                self.local.tx_packets += 1;
                self.local.tx_bytes += len as u64;
                true
            }
            GSO_TCPV4 => {
                let headers = &mut self.headers[self.headers_used..];
                let plan = match packet::segment_headers(pkt, hdr.gso_size as usize, headers) {
                    Ok(p) => p,
                    Err(why) => {
                        self.local.drop(why, 1);
                        return false;
                    }
                };
                let stride = plan.stride();
                if stride > self.cfg.mtu {
                    self.local.drop(Drop::Oversize, plan.count as u64);
                    return false;
                }
                let hl = plan.header_len;
                for j in 0..plan.count {
                    let r = plan.payload(j);
                    let header = Part::Header {
                        off: self.headers_used + j * hl,
                        len: hl,
                    };
                    let payload = Part::Read {
                        off: pkt_off + r.start,
                        len: r.len(),
                    };
                    self.queue(peer, &[header, payload]);
                }
                self.headers_used += plan.count * hl;
                self.local.tx_packets += plan.count as u64;
                self.local.tx_bytes += plan.total_len() as u64;
                true
            }
            _ => {
                self.local.drop(Drop::Malformed, 1);
                false
            }
        }
    }

    /// Queues one datagram for `dst`, gathered from `pieces`.
    fn queue(&mut self, dst: Ipv4Addr, pieces: &[Part]) {
        let len = pieces.iter().map(|p| p.len()).sum();
        self.parts.extend_from_slice(pieces);
        let end = self.parts.len();
        enqueue(
            &mut self.msgs,
            self.cfg.offloads,
            end,
            pieces.len(),
            dst,
            len,
        );
    }

    /// Sends every queued message with sendmmsg (gathering headers and payloads), waiting
    /// while the socket buffer is full.
    fn send_all(&mut self) {
        let mut start = 0;
        while start < self.msgs.len() {
            let count = (self.msgs.len() - start).min(BATCH);
            let mut names = [sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH];
            // SAFETY: zeroed mmsghdrs are valid initial values.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            let mut cmsgs = [[0u64; 4]; BATCH];
            let iovs = &mut self.iovs.0;
            iovs.clear();
            for m in &self.msgs[start..start + count] {
                for p in &self.parts[m.parts.clone()] {
                    let (base, off, len) = match *p {
                        Part::Read { off, len } => (self.reads.as_ptr(), off, len),
                        Part::Header { off, len } => (self.headers.as_ptr(), off, len),
                    };
                    iovs.push(libc::iovec {
                        // SAFETY: off + len lies inside that buffer (built by handle()).
                        iov_base: unsafe { base.add(off) } as *mut libc::c_void,
                        iov_len: len,
                    });
                }
            }
            let mut at = 0;
            for (i, m) in self.msgs[start..start + count].iter().enumerate() {
                names[i] = sockaddr(SocketAddrV4::new(m.dst, self.cfg.bind.port()));
                let h = &mut hdrs[i].msg_hdr;
                h.msg_name = &mut names[i] as *mut libc::sockaddr_in as *mut libc::c_void;
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = iovs[at..].as_mut_ptr();
                h.msg_iovlen = m.parts.len();
                at += m.parts.len();
                if m.segment() != 0 {
                    let buf = cmsgs[i].as_mut_ptr() as *mut u8;
                    // SAFETY: the buffer (32 bytes, 8-aligned) holds CMSG_SPACE(2) = 24.
                    unsafe {
                        h.msg_control = buf as *mut libc::c_void;
                        h.msg_controllen = libc::CMSG_SPACE(2) as usize;
                        let c = libc::CMSG_FIRSTHDR(h);
                        (*c).cmsg_level = SOL_UDP;
                        (*c).cmsg_type = UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, m.segment());
                    }
                }
            }
            // SAFETY: hdrs[..count] point at names, iovs, cmsgs and the read/header buffers,
            // all alive and unchanged for the call.
            let rc = unsafe {
                libc::sendmmsg(self.sock.as_raw_fd(), hdrs.as_mut_ptr(), count as u32, 0)
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if would_block(&e) {
                    wait(&[self.sock.as_raw_fd()], libc::POLLOUT);
                    if self.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                // This message cannot go (e.g. no route to that peer): skip it.
                tracing::debug!(error = %e, peer = %self.msgs[start].dst, "sending to a peer");
                self.local.io_errors += 1;
                start += 1;
                continue;
            }
            self.local.udp_send_calls += 1;
            start += (rc as usize).max(1);
        }
        self.msgs.clear();
        self.parts.clear();
        self.reads_used = 0;
        self.headers_used = 0;
    }
}

/// Writes one packet, given in pieces, with a virtio-net header in front: one writev.
fn write_tun(tun: &File, hdr: &[u8; VNET_HDR_LEN], parts: &[&[u8]]) -> io::Result<()> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; packet::MAX_COALESCE + 2];
    iov[0] = libc::iovec {
        iov_base: hdr.as_ptr() as *mut libc::c_void,
        iov_len: hdr.len(),
    };
    let n = parts.len().min(packet::MAX_COALESCE + 1);
    for (v, p) in iov[1..].iter_mut().zip(&parts[..n]) {
        *v = libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        };
    }
    // SAFETY: iovecs over live slices; the kernel only reads them.
    let rc = unsafe { libc::writev(tun.as_raw_fd(), iov.as_ptr(), (n + 1) as libc::c_int) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

struct RxWorker {
    tun: File,
    sock: Arc<OwnedFd>,
    table: TableReader,
    stats: Arc<Stats>,
    cfg: DatapathConfig,
    bufs: Box<[u8]>,
    /// The checked datagrams of one batch: (start, end, header) in `bufs`.
    pending: Vec<(usize, usize, packet::Ipv4Info)>,
    coalescer: Coalescer,
    local: Local,
}

/// Writes coalesced packets into the TUN and counts them.
struct TunWriter<'a> {
    tun: &'a File,
    local: &'a mut Local,
    gone: bool,
}

impl packet::TunSink for TunWriter<'_> {
    fn write(&mut self, hdr: &[u8; VNET_HDR_LEN], parts: &[&[u8]]) {
        match write_tun(self.tun, hdr, parts) {
            Ok(()) => self.local.tun_writes += 1,
            Err(e) => {
                self.local.io_errors += 1;
                if queue_gone(&e) {
                    self.gone = true;
                }
                tracing::debug!(error = %e, "writing to the TUN device");
            }
        }
    }
}

impl RxWorker {
    fn new(
        tun: File,
        sock: Arc<OwnedFd>,
        table: TableReader,
        stats: Arc<Stats>,
        cfg: DatapathConfig,
    ) -> RxWorker {
        RxWorker {
            tun,
            sock,
            table,
            stats,
            cfg,
            bufs: vec![0u8; BATCH * 65536].into_boxed_slice(),
            pending: Vec::with_capacity(BATCH * 64),
            coalescer: Coalescer::new(),
            local: Local::default(),
        }
    }

    /// One recvmmsg and what it brought, checked and coalesced into the TUN.
    fn round(&mut self) -> Round {
        let fd = self.sock.as_raw_fd();
        let slot = self.bufs.len() / BATCH;
        let mut names = [sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH];
        // SAFETY: zeroed iovec/mmsghdr are valid initial values.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut cmsgs = [[0u64; 8]; BATCH];
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                // SAFETY: i * slot + slot <= bufs.len().
                iov_base: unsafe { base.add(i * slot) } as *mut libc::c_void,
                iov_len: slot,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = cmsgs[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = std::mem::size_of_val(&cmsgs[i]);
        }
        // SAFETY: every header points at live buffers owned by this frame or self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if !would_block(&e) {
                self.local.io_errors += 1;
                tracing::debug!(error = %e, "receiving from the UDP socket");
            }
            return Round::Idle;
        }
        self.local.udp_recv_calls += 1;
        // Check every datagram in place (TTL decremented), then coalesce the good ones.
        let table = self.table.get();
        self.pending.clear();
        for (i, h) in hdrs.iter().enumerate().take(n as usize) {
            let len = h.msg_len as usize;
            let seg = gro_segment(&h.msg_hdr).unwrap_or(len).max(1);
            let src = Ipv4Addr::from(u32::from_be(names[i].sin_addr.s_addr));
            if len == 0 {
                self.local.drop(Drop::Truncated, 1);
                continue;
            }
            let allowed = table.subnets_of(src);
            if allowed.is_empty() {
                self.local.drop(Drop::UnknownPeer, len.div_ceil(seg) as u64);
                continue;
            }
            let mut at = i * slot;
            let end = at + len;
            while at < end {
                let next = (at + seg).min(end);
                match check_received(&mut self.bufs[at..next], allowed, table.local, self.cfg.mtu) {
                    Ok(ip) => {
                        self.local.rx_packets += 1;
                        self.local.rx_bytes += (next - at) as u64;
                        self.pending.push((at, next, ip));
                    }
                    Err(why) => self.local.drop(why, 1),
                }
                at = next;
            }
        }
        let mut sink = TunWriter {
            tun: &self.tun,
            local: &mut self.local,
            gone: false,
        };
        if self.cfg.offloads {
            for (start, end, ip) in &self.pending {
                self.coalescer.push(&self.bufs, *start..*end, ip, &mut sink);
            }
            self.coalescer.flush(&self.bufs, &mut sink);
        } else {
            let plain = [0u8; VNET_HDR_LEN];
            for (start, end, _) in &self.pending {
                packet::TunSink::write(&mut sink, &plain, &[&self.bufs[*start..*end]]);
            }
        }
        if sink.gone {
            tracing::warn!("TUN queue closed: data-path thread ends");
            self.local.flush(&self.stats);
            return Round::Gone;
        }
        Round::Busy(self.pending.len().max(1))
    }
}

/// The checks on one received datagram, then the TTL decrement.
fn check_received(
    dgram: &mut [u8],
    allowed: &[ipnet::Ipv4Net],
    local: Option<ipnet::Ipv4Net>,
    mtu: usize,
) -> Result<packet::Ipv4Info, Drop> {
    if dgram.len() > mtu {
        return Err(Drop::Oversize);
    }
    let ip = packet::parse_ipv4(dgram, true)?;
    if !allowed.iter().any(|s| s.contains(&ip.src)) {
        return Err(Drop::SpoofedSource);
    }
    if !local.is_some_and(|l| l.contains(&ip.dst)) {
        return Err(Drop::NotLocal);
    }
    packet::decrement_ttl(dgram)?;
    Ok(ip)
}

/// The segment size of a GRO-coalesced receive, from its UDP_GRO control message.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: walks the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return usize::try_from(v).ok().filter(|&v| v > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds datagrams of the given lengths (two pieces each) for `dst` into a train list.
    fn train(msgs: &mut Vec<OutMsg>, dst: [u8; 4], lens: &[usize]) {
        for &len in lens {
            let end = msgs.last().map_or(0, |m| m.parts.end) + 2;
            enqueue(msgs, true, end, 2, Ipv4Addr::from(dst), len);
        }
    }

    fn shape(msgs: &[OutMsg]) -> Vec<(usize, u16)> {
        msgs.iter().map(|m| (m.count, m.segment())).collect()
    }

    #[test]
    fn segment_trains_span_reads_and_respect_the_gso_limits() {
        // Two super-packets of 46 full segments (1472 bytes): 44 fit in one send (64 KiB),
        // the rest continue across the read boundary instead of leaving as a 2-segment send.
        let mut m = Vec::new();
        train(&mut m, [172, 31, 0, 12], &[1472; 92]);
        assert_eq!(shape(&m), vec![(44, 1472), (44, 1472), (4, 1472)]);
        // Parts stay contiguous and in order.
        assert_eq!(m[0].parts, 0..88);
        assert_eq!(m[1].parts, 88..176);
        assert_eq!(m[2].parts, 176..184);

        // A shorter segment ends a train; a longer one starts a new one; so does a new peer.
        let mut m = Vec::new();
        train(&mut m, [172, 31, 0, 12], &[1472, 1472, 600, 1472]);
        train(&mut m, [172, 31, 0, 13], &[1472]);
        train(&mut m, [172, 31, 0, 13], &[52, 1472]);
        assert_eq!(
            shape(&m),
            vec![(3, 1472), (1, 0), (2, 1472), (1, 0)],
            "{:?}",
            m.iter()
                .map(|x| (x.dst, x.count, x.bytes))
                .collect::<Vec<_>>()
        );

        // Small packets (TCP ACKs) share a send up to the kernel's 64 segments.
        let mut m = Vec::new();
        train(&mut m, [172, 31, 0, 12], &[52; 70]);
        assert_eq!(shape(&m), vec![(64, 52), (6, 52)]);
        assert!(m.iter().all(|x| x.bytes <= MAX_UDP_PAYLOAD));

        // Without offloads every datagram is its own message.
        let mut m = Vec::new();
        for i in 1..=3 {
            enqueue(&mut m, false, 2 * i, 2, Ipv4Addr::new(172, 31, 0, 12), 1472);
        }
        assert_eq!(shape(&m), vec![(1, 0); 3]);
    }

    #[test]
    fn random_datagram_sequences_form_valid_gso_sends() {
        // Whatever the sequence, every message must be one the kernel's UDP GSO accepts
        // (EINVAL would lose the whole message), and the datagrams must stay in order.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for case in 0..500 {
            let mut msgs = Vec::new();
            let mut sent = Vec::new();
            for _ in 0..next(400) {
                let dst = Ipv4Addr::new(172, 31, 0, 10 + next(3) as u8);
                let len = match next(5) {
                    0 => 52,
                    1 | 2 => 1472,
                    3 => 1400,
                    _ => 1 + next(1472) as usize,
                };
                let end = msgs.last().map_or(0, |m: &OutMsg| m.parts.end) + 1;
                enqueue(&mut msgs, true, end, 1, dst, len);
                sent.push((dst, len));
            }
            let mut at = 0;
            for m in &msgs {
                let group = &sent[at..at + m.count];
                assert!(m.count <= UDP_MAX_SEGMENTS, "case {case}");
                assert!(m.bytes <= MAX_UDP_PAYLOAD, "case {case}");
                assert_eq!(m.bytes, group.iter().map(|g| g.1).sum::<usize>());
                assert_eq!(m.parts, at..at + m.count, "case {case}: order");
                assert!(group.iter().all(|g| g.0 == m.dst), "case {case}: one peer");
                let (last, full) = group.split_last().unwrap();
                assert!(full.iter().all(|g| g.1 == m.stride), "case {case}");
                assert!(last.1 <= m.stride, "case {case}");
                assert_eq!(m.segment() != 0, m.count > 1);
                at += m.count;
            }
            assert_eq!(at, sent.len(), "case {case}: every datagram sent once");
        }
    }

    #[test]
    fn icmp_errors_are_limited_per_second() {
        let t0 = std::time::Instant::now();
        let mut b = IcmpBudget::new(t0);
        let sent = (0..5000).filter(|_| b.take(t0)).count();
        assert_eq!(sent, ICMP_PER_SECOND as usize);
        let later = t0 + std::time::Duration::from_millis(999);
        assert!(!b.take(later), "same window");
        let next = t0 + std::time::Duration::from_secs(1);
        assert!(b.take(next), "a new window");
    }

    #[test]
    fn received_datagrams_are_checked_in_order() {
        let allowed = ["10.5.2.0/24".parse().unwrap()];
        let local = Some("10.5.1.0/24".parse().unwrap());
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 5, 2, 7]);
        p[16..20].copy_from_slice(&[10, 5, 1, 9]);
        let c = packet::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let mut ok = p;
        assert!(check_received(&mut ok, &allowed, local, 1472).is_ok());
        assert_eq!(ok[8], 63);
        assert_eq!(
            check_received(&mut p.clone(), &allowed, local, 20),
            Err(Drop::Oversize)
        );
        let mut spoof = p;
        spoof[12..16].copy_from_slice(&[10, 5, 3, 7]);
        let c = {
            spoof[10..12].copy_from_slice(&[0, 0]);
            packet::checksum(&spoof[..20])
        };
        spoof[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            check_received(&mut spoof, &allowed, local, 1472),
            Err(Drop::SpoofedSource)
        );
        assert_eq!(
            check_received(&mut p.clone(), &allowed, None, 1472),
            Err(Drop::NotLocal)
        );
        assert_eq!(
            check_received(&mut [0x45, 0], &allowed, local, 1472),
            Err(Drop::Truncated)
        );
    }
}

//! Every system call of the data path that std does not offer, behind safe wrappers: the UDP
//! socket (options, batched sends with UDP GSO, batched receives with UDP GRO), poll and
//! non-blocking mode. The rest of the engine holds no `unsafe`.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::packet::{MAX_COALESCE, VNET_HDR_LEN};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// IPV6_PMTUDISC_OMIT (Linux 3.15), which the libc crate does not name.
const IPV6_PMTUDISC_OMIT: libc::c_int = 5;

/// Messages per sendmmsg / recvmmsg.
pub const BATCH: usize = 16;
/// Socket buffers: the default ones lose datagrams at the rates of a bulk transfer.
const SOCKET_BUFFER: libc::c_int = 16 << 20;

/// Whether an error only means "not now" (the fd is non-blocking, or a signal came).
pub fn would_block(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// Whether a failed UDP GSO send may go through as separate datagrams: the kernel refuses
/// segmentation on this route (EIO: IPsec, no checksum offload; EINVAL or EMSGSIZE: a
/// segment larger than the route's device takes).
pub fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EMSGSIZE)
    )
}

/// Whether an error means the TUN queue is gone (device deleted): the thread ends and the
/// control plane re-creates the device.
pub fn queue_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::EIO) | Some(libc::ENXIO) | Some(libc::EBADF)
    )
}

/// Makes reads and writes on `fd` fail with EAGAIN instead of blocking.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl(F_GETFL) on a descriptor the caller keeps open (borrowed).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL only changes the file status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What to wait for in [`poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Readable,
    Writable,
}

/// Waits until one of `fds` is ready for `interest` or `timeout` passes (zero: only looks).
/// Returns whether one is ready.
pub fn poll<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    interest: Interest,
    timeout: Duration,
) -> bool {
    let events = match interest {
        Interest::Readable => libc::POLLIN,
        Interest::Writable => libc::POLLOUT,
    };
    let mut p = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    });
    let timeout_ms = timeout.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: a valid array of N pollfds over descriptors borrowed for the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
    n > 0
}

/// Writes one packet, given in pieces, with a virtio-net header in front: one writev (a TUN
/// takes a whole packet per write).
pub fn write_packet(tun: &File, hdr: &[u8; VNET_HDR_LEN], parts: &[&[u8]]) -> io::Result<()> {
    let mut iov = [IoSlice::new(&[]); MAX_COALESCE + 2];
    iov[0] = IoSlice::new(hdr);
    let n = parts.len().min(MAX_COALESCE + 1);
    for (v, p) in iov[1..].iter_mut().zip(&parts[..n]) {
        *v = IoSlice::new(p);
    }
    let mut tun = tun;
    tun.write_vectored(&iov[..n + 1]).map(|_| ())
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
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

/// Room for either family's socket address (a `sockaddr_in` fits in a `sockaddr_in6`).
type RawAddr = libc::sockaddr_in6;

const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

fn sockaddr_v4(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn sockaddr_v6(a: SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: a.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: a.ip().octets(),
        },
        sin6_scope_id: a.scope_id(),
    }
}

/// `a` as the socket address a socket of family `v6` takes: an IPv6 socket (dual-stack)
/// reaches IPv4 peers by their v4-mapped address. Returns the length to pass.
fn to_raw(a: SocketAddr, v6: bool, raw: &mut RawAddr) -> libc::socklen_t {
    match a {
        SocketAddr::V4(a) if !v6 => {
            let sa = sockaddr_v4(a);
            // SAFETY: RawAddr (28 bytes, align 4) has room for a sockaddr_in (16, align 4).
            unsafe { std::ptr::write(raw as *mut RawAddr as *mut libc::sockaddr_in, sa) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V4(a) => {
            *raw = sockaddr_v6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0));
            std::mem::size_of::<RawAddr>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            *raw = sockaddr_v6(a);
            std::mem::size_of::<RawAddr>() as libc::socklen_t
        }
    }
}

/// The address the kernel wrote into `raw`; v4-mapped IPv6 addresses come back as IPv4, so
/// a peer has one address whichever socket it reached.
fn from_raw(raw: &RawAddr) -> SocketAddr {
    if raw.sin6_family == libc::AF_INET as libc::sa_family_t {
        // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) at the start of `raw`.
        let a = unsafe { std::ptr::read(raw as *const RawAddr as *const libc::sockaddr_in) };
        return SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        ));
    }
    let ip = Ipv6Addr::from(raw.sin6_addr.s6_addr);
    let port = u16::from_be(raw.sin6_port);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, raw.sin6_scope_id)),
    }
}

fn empty_raw() -> RawAddr {
    // SAFETY: an all-zero sockaddr_in6 is a valid (unspecified) address.
    unsafe { std::mem::zeroed() }
}

/// A non-blocking UDP socket of one data-path worker.
#[derive(Debug)]
pub struct UdpSocket {
    sock: std::net::UdpSocket,
    /// An AF_INET6 socket (dual-stack when bound to `::`).
    v6: bool,
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl UdpSocket {
    /// A non-blocking UDP socket on `bind` with SO_REUSEPORT (one per worker), big buffers
    /// and, with `gro`, UDP_GRO. An IPv6 socket bound to `::` is dual-stack: it also takes
    /// and reaches IPv4 peers (by v4-mapped addresses, which it hides from its callers).
    pub fn bind(bind: SocketAddr, gro: bool) -> io::Result<UdpSocket> {
        let v6 = bind.is_ipv6();
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let fd = sock.as_fd();
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER)?;
            }
        }
        // Outer packets use the device MTU and never carry DF, like the kernel's VXLAN: a
        // smaller path MTU (a route MTU, or a forged ICMP "fragmentation needed") then cannot
        // make the kernel refuse GSO sends (it rejects segments over the path MTU) and
        // black-hole a peer; a router on a path that really is smaller fragments. OMIT needs
        // Linux 3.15. An IPv6 socket takes the IPv4 option too (for its v4-mapped peers).
        if v6 {
            if setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0).is_err() {
                tracing::debug!("IPV6_V6ONLY stays on: this socket reaches IPv6 peers only");
            }
            if setsockopt_int(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                IPV6_PMTUDISC_OMIT,
            )
            .is_err()
            {
                setsockopt_int(
                    fd,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MTU_DISCOVER,
                    libc::IPV6_PMTUDISC_DONT,
                )?;
            }
        }
        if setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_OMIT,
        )
        .is_err()
            && setsockopt_int(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )
            .is_err()
            && !v6
        {
            return Err(io::Error::last_os_error());
        }
        if gro && let Err(e) = setsockopt_int(fd, SOL_UDP, UDP_GRO, 1) {
            tracing::warn!(error = %e, "UDP_GRO unavailable: receiving one datagram per slot");
        }
        let mut sa = empty_raw();
        let len = to_raw(bind, v6, &mut sa);
        // SAFETY: sa holds a valid socket address of `len` bytes.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const RawAddr as *const libc::sockaddr,
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UdpSocket {
            sock: std::net::UdpSocket::from(sock),
            v6,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Sends one datagram now (for the rare messages of a transform's own, e.g. handshakes).
    pub fn send_to(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        let to = match to {
            SocketAddr::V4(a) if self.v6 => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            other => other,
        };
        self.sock.send_to(datagram, to).map(|_| ())
    }

    /// Sends the messages of `batch` with one sendmmsg; returns how many the kernel took.
    pub fn send_batch(&self, batch: &SendBatch<'_>) -> io::Result<usize> {
        let count = batch.len;
        let mut names = [empty_raw(); BATCH];
        // SAFETY: zeroed mmsghdrs are valid initial values.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut cmsgs = [[0u64; 4]; BATCH];
        for (i, m) in batch.msgs[..count].iter().enumerate() {
            let namelen = to_raw(m.to, self.v6, &mut names[i]);
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut RawAddr as *mut libc::c_void;
            h.msg_namelen = namelen;
            // The kernel does not write through msg_iov on send.
            h.msg_iov = batch.iovs[m.iovs.clone()].as_ptr() as *mut libc::iovec;
            h.msg_iovlen = m.iovs.len();
            if m.segment != 0 {
                let buf = cmsgs[i].as_mut_ptr() as *mut u8;
                // SAFETY: the buffer (32 bytes, 8-aligned) holds CMSG_SPACE(2) = 24; the
                // CMSG_* macros stay within it.
                unsafe {
                    h.msg_control = buf as *mut libc::c_void;
                    h.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, m.segment);
                }
            }
        }
        // SAFETY: hdrs[..count] point at names, cmsgs and the batch's iovecs, which point at
        // slices borrowed by the batch; all alive and unchanged for the call.
        let rc =
            unsafe { libc::sendmmsg(self.sock.as_raw_fd(), hdrs.as_mut_ptr(), count as u32, 0) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Receives up to [`BATCH`] messages without waiting, message `i` into the `i`th of
    /// `BATCH` equal slots of `bufs`; fills `meta[..n]` and returns `n`.
    pub fn recv_batch(&self, bufs: &mut [u8], meta: &mut [RecvMeta; BATCH]) -> io::Result<usize> {
        let slot = bufs.len() / BATCH;
        if slot == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a receive buffer of {} bytes has no room for {BATCH} slots",
                    bufs.len()
                ),
            ));
        }
        let mut names = [empty_raw(); BATCH];
        // SAFETY: a zeroed iovec (null pointer, length 0) is a valid initial value.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: zeroed mmsghdrs (null pointers, zero lengths) are valid initial values.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut cmsgs = [[0u64; 8]; BATCH];
        for (i, chunk) in bufs.chunks_exact_mut(slot).take(BATCH).enumerate() {
            iovs[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr() as *mut libc::c_void,
                iov_len: chunk.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut RawAddr as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<RawAddr>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = cmsgs[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = std::mem::size_of_val(&cmsgs[i]);
        }
        // SAFETY: every header points at live buffers owned by this frame or borrowed
        // mutably from `bufs` (disjoint slots) for the call.
        let n = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, m) in meta.iter_mut().enumerate().take(n) {
            *m = RecvMeta {
                len: hdrs[i].msg_len as usize,
                from: from_raw(&names[i]),
                gro_segment: gro_segment(&hdrs[i].msg_hdr),
            };
        }
        Ok(n)
    }
}

/// What [`UdpSocket::recv_batch`] learnt about one message.
#[derive(Clone, Copy, Debug)]
pub struct RecvMeta {
    /// Bytes received (several datagrams when `gro_segment` is set).
    pub len: usize,
    pub from: SocketAddr,
    /// The datagram size of a GRO-coalesced receive (the last may be shorter).
    pub gro_segment: Option<usize>,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            from: UNSPECIFIED,
            gro_segment: None,
        }
    }
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

/// iovec storage reused by every [`SendBatch`] of one worker, so sending allocates nothing.
pub struct IovScratch(Vec<libc::iovec>);

// SAFETY: the pointers are written by `SendBatch::push` and read only by the sendmmsg of
// the same batch, whose lifetime keeps their targets borrowed; between batches they are
// never dereferenced, so the storage may move to the worker thread.
unsafe impl Send for IovScratch {}

impl IovScratch {
    pub fn with_capacity(iovs: usize) -> IovScratch {
        IovScratch(Vec::with_capacity(iovs))
    }
}

struct BatchMsg {
    to: SocketAddr,
    segment: u16,
    iovs: std::ops::Range<usize>,
}

/// Up to [`BATCH`] messages for one sendmmsg, each gathered from slices that stay borrowed
/// (`'a`) until the batch is gone.
pub struct SendBatch<'a> {
    iovs: &'a mut Vec<libc::iovec>,
    msgs: [BatchMsg; BATCH],
    len: usize,
    _data: PhantomData<&'a [u8]>,
}

impl<'a> SendBatch<'a> {
    /// An empty batch over `scratch`'s storage.
    pub fn new(scratch: &'a mut IovScratch) -> SendBatch<'a> {
        scratch.0.clear();
        SendBatch {
            iovs: &mut scratch.0,
            msgs: std::array::from_fn(|_| BatchMsg {
                to: UNSPECIFIED,
                segment: 0,
                iovs: 0..0,
            }),
            len: 0,
            _data: PhantomData,
        }
    }

    /// Whether another message fits.
    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// Adds a message to `to` gathered from `parts`; with `segment` non-zero the kernel
    /// splits it into datagrams of that size (UDP GSO; the last may be shorter). Ignored
    /// when the batch is full.
    pub fn push(
        &mut self,
        to: SocketAddr,
        segment: u16,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) {
        if self.is_full() {
            return;
        }
        let start = self.iovs.len();
        self.iovs.extend(parts.into_iter().map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        }));
        self.msgs[self.len] = BatchMsg {
            to,
            segment,
            iovs: start..self.iovs.len(),
        };
        self.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_with_a_gso_message_arrives_as_datagrams_on_loopback() {
        gso_batch_arrives(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    }

    #[test]
    fn ipv6_sockets_send_gso_batches_and_dual_stack_ones_hide_mapped_addresses() {
        // Without IPv6 on loopback (a test namespace may lack it) there is nothing to test.
        if std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        }
        gso_batch_arrives(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)));
        // A dual-stack socket on :: talks to an IPv4 socket; both see plain IPv4 addresses.
        let dual = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), false).unwrap();
        let v4 = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false).unwrap();
        let dual_port = dual.local_addr().unwrap().port();
        dual.send_to(v4.local_addr().unwrap(), b"hi").unwrap();
        let mut bufs = vec![0u8; BATCH * 256];
        let mut meta = [RecvMeta::default(); BATCH];
        let mut from = None;
        for _ in 0..100 {
            poll([v4.as_fd()], Interest::Readable, Duration::from_millis(50));
            if let Ok(n) = v4.recv_batch(&mut bufs, &mut meta)
                && n > 0
            {
                from = Some(meta[0].from);
                break;
            }
        }
        assert_eq!(
            from,
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, dual_port)))
        );
        let mut scratch = IovScratch::with_capacity(2);
        let mut batch = SendBatch::new(&mut scratch);
        batch.push(
            SocketAddr::from((Ipv4Addr::LOCALHOST, dual_port)),
            0,
            [&b"back"[..]],
        );
        assert_eq!(v4.send_batch(&batch).unwrap(), 1);
        let mut got = None;
        for _ in 0..100 {
            poll(
                [dual.as_fd()],
                Interest::Readable,
                Duration::from_millis(50),
            );
            if let Ok(n) = dual.recv_batch(&mut bufs, &mut meta)
                && n > 0
            {
                got = Some((meta[0].from, bufs[..meta[0].len].to_vec()));
                break;
            }
        }
        assert_eq!(got, Some((v4.local_addr().unwrap(), b"back".to_vec())));
    }

    fn gso_batch_arrives(local: SocketAddr) {
        let rx = UdpSocket::bind(local, false).unwrap();
        let tx = UdpSocket::bind(local, false).unwrap();
        let to = rx.local_addr().unwrap();
        let (a, b) = ([1u8; 100], [2u8; 100]);
        let mut scratch = IovScratch::with_capacity(8);
        let mut batch = SendBatch::new(&mut scratch);
        // Two datagrams of 100 bytes through UDP GSO, then a plain one in two pieces.
        batch.push(to, 100, [&a[..], &b[..]]);
        batch.push(to, 0, [&a[..10], &b[..5]]);
        assert_eq!(tx.send_batch(&batch).unwrap(), 2);
        let mut bufs = vec![0u8; BATCH * 256];
        let mut meta = [RecvMeta::default(); BATCH];
        let mut got = Vec::new();
        for _ in 0..100 {
            poll([rx.as_fd()], Interest::Readable, Duration::from_millis(50));
            if let Ok(n) = rx.recv_batch(&mut bufs, &mut meta) {
                for (i, m) in meta[..n].iter().enumerate() {
                    got.push(bufs[i * 256..i * 256 + m.len].to_vec());
                    assert_eq!(m.from, tx.local_addr().unwrap());
                }
            }
            if got.len() == 3 {
                break;
            }
        }
        assert_eq!(
            got,
            vec![a.to_vec(), b.to_vec(), [&a[..10], &b[..5]].concat()]
        );
    }
}

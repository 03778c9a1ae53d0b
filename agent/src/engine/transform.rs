//! The part of a TUN data path a backend supplies: what happens to each packet between the
//! TUN and the UDP socket. udp checks and passes packets through unchanged (Flannel's wire
//! format); an encrypting backend (wireguard) would seal and open them here. The engine is
//! generic over these traits, so every backend gets its own monomorphic data path: no
//! dynamic dispatch and nothing boxed per packet.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use super::packet::{DropReason, Ipv4Info, Ipv6Info};
use super::sys::UdpSocket;

/// A backend's per-packet work, handed to [`super::Engine::start`]. Each worker thread gets
/// its own outbound and inbound half, so per-thread state (cached peer tables, nonce
/// counters) needs no lock.
pub trait Transform {
    type Outbound: Outbound;
    type Inbound: Inbound;
    /// The TUN → UDP half of one worker.
    fn outbound(&self) -> Self::Outbound;
    /// The UDP → TUN half of one worker.
    fn inbound(&self) -> Self::Inbound;
}

/// One datagram waiting in the send arena to be sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealJob {
    /// Where the datagram starts in the arena handed to [`Outbound::seal_batch`].
    pub off: usize,
    /// The inner packet's length (it starts `HEADER_LEN` bytes into the datagram).
    pub inner_len: usize,
    /// The datagram's room: `HEADER_LEN + inner_len + TRAILER_LEN`.
    pub room: usize,
    /// The sealed datagram's length, or why it is dropped.
    pub sealed: Result<usize, DropReason>,
}

/// Where an outgoing inner packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination<P> {
    /// The peer's UDP endpoint.
    pub to: SocketAddr,
    /// What [`Outbound::seal`] needs about that peer (udp: nothing; wireguard: which session).
    pub peer: P,
}

/// Why an outgoing inner packet is not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Dropped and counted under the reason.
    Drop(DropReason),
    /// Nobody holds the destination: counted as [`DropReason::NoRoute`], and the engine
    /// writes an ICMP net unreachable from `from` back into the TUN (rate-limited).
    Unreachable { from: Ipv4Addr },
    /// [`Refusal::Unreachable`] for IPv6: an ICMPv6 "no route to destination" from `from`.
    Unreachable6 { from: Ipv6Addr },
}

/// TUN → UDP, for one worker thread.
pub trait Outbound: Send + 'static {
    /// Per-peer state [`Outbound::seal`] uses, found once per inner packet by
    /// [`Outbound::route`] and passed to every datagram cut from it, and to
    /// [`Outbound::sent`] with what the kernel took. Datagrams of different peers never
    /// share a send.
    type Peer: Copy + Send + PartialEq;
    /// Bytes [`Outbound::seal`] puts before each inner packet (wireguard: its 16-byte
    /// message header). With both lengths 0 the engine sends the packets it has without
    /// copying them and never calls `seal`.
    const HEADER_LEN: usize = 0;
    /// Bytes `seal` may put after each inner packet at most (wireguard: padding and tag).
    const TRAILER_LEN: usize = 0;

    /// Picks the peer for one inner packet read from the TUN (`pkt`, its header parsed into
    /// `ip`), before it is segmented; may change the packet's IP header in place (the TTL).
    fn route(
        &mut self,
        pkt: &mut [u8],
        ip: &Ipv4Info,
        ctl: &mut Control<'_>,
    ) -> Result<Destination<Self::Peer>, Refusal>;

    /// [`Outbound::route`] for an IPv6 inner packet (plain or a TCP/IPv6 super-packet). A
    /// backend that carries IPv4 only (udp, as Flannel's) keeps this default: every IPv6
    /// packet is dropped as such.
    fn route_v6(
        &mut self,
        pkt: &mut [u8],
        ip: &Ipv6Info,
        ctl: &mut Control<'_>,
    ) -> Result<Destination<Self::Peer>, Refusal> {
        let _ = (pkt, ip, ctl);
        Err(Refusal::Drop(DropReason::Ipv6))
    }

    /// Turns one inner packet, at `datagram[HEADER_LEN..HEADER_LEN + inner_len]`, into the
    /// datagram to send, in place; `datagram` has room for `TRAILER_LEN` more bytes. Returns
    /// the datagram's length. Only called when `HEADER_LEN + TRAILER_LEN > 0`. `ctl` sends
    /// what the transform must send instead (a handshake while no session exists).
    fn seal(
        &mut self,
        peer: Self::Peer,
        datagram: &mut [u8],
        inner_len: usize,
        ctl: &mut Control<'_>,
    ) -> Result<usize, DropReason> {
        let _ = (peer, datagram, ctl);
        Ok(Self::HEADER_LEN + inner_len)
    }

    /// Seals the datagrams of one inner packet (all for `peer`, in order): job `j`'s datagram
    /// is `arena[j.off..j.off + j.room]`, laid out as for [`Outbound::seal`]; each job's
    /// outcome goes to `j.sealed`. The default seals one after the other.
    fn seal_batch(
        &mut self,
        peer: Self::Peer,
        arena: &mut [u8],
        jobs: &mut [SealJob],
        ctl: &mut Control<'_>,
    ) {
        seal_each(self, peer, arena, jobs, ctl);
    }

    /// Called after the kernel took `bytes` of sealed datagrams for `peer` (whole datagrams
    /// as sealed: a UDP GSO send is taken whole or not at all); never for a send that
    /// failed. Only called when `HEADER_LEN + TRAILER_LEN > 0`. Where a transform counts
    /// what went out to each peer (wireguard's transfer bytes).
    fn sent(&mut self, peer: Self::Peer, bytes: usize) {
        let _ = (peer, bytes);
    }

    /// Called now and then (when the worker goes idle, and every few hundred busy rounds):
    /// room for timers such as rekeying or keepalives.
    fn housekeeping(&mut self, ctl: &mut Control<'_>) {
        let _ = ctl;
    }
}

/// Seals `jobs` one after the other with [`Outbound::seal`]: the default batch, and what a
/// transform falls back to when it cannot batch.
pub fn seal_each<O: Outbound + ?Sized>(
    o: &mut O,
    peer: O::Peer,
    arena: &mut [u8],
    jobs: &mut [SealJob],
    ctl: &mut Control<'_>,
) {
    for j in jobs.iter_mut() {
        j.sealed = match arena.get_mut(j.off..j.off + j.room) {
            Some(datagram) => o.seal(peer, datagram, j.inner_len, ctl),
            None => Err(DropReason::Oversize),
        };
    }
}

/// What one received datagram turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// An inner packet to write into the TUN: `inner` is its place in the datagram.
    Packet { inner: Range<usize>, ip: Ipv4Info },
    /// An inner IPv6 packet (its fixed header checked with `parse_ipv6`); TCP segments are
    /// coalesced like IPv4 ones.
    Packet6 { inner: Range<usize> },
    /// A message of the transform's own (a handshake), already handled.
    Consumed,
}

/// UDP → TUN, for one worker thread.
pub trait Inbound: Send + 'static {
    /// What opening the datagrams of one sender needs, looked up once for all datagrams of
    /// one receive (a GRO receive carries many from one address).
    type Sender<'a>: Sender
    where
        Self: 'a;

    /// The sender at `from`, or why every datagram from it is dropped.
    fn sender(&mut self, from: SocketAddr) -> Result<Self::Sender<'_>, DropReason>;
}

/// Opens the datagrams of one sender.
pub trait Sender {
    /// Checks (udp) or decrypts (wireguard) one datagram in place.
    fn open(&mut self, datagram: &mut [u8], ctl: &mut Control<'_>) -> Result<Opened, DropReason>;

    /// Opens the datagrams of one receive in order: `datagrams` are consecutive ranges of
    /// `buf`; one outcome per datagram is appended to `out`, its `inner` range relative to its
    /// datagram. The default opens one after the other.
    fn open_batch(
        &mut self,
        buf: &mut [u8],
        datagrams: &[Range<usize>],
        out: &mut Vec<Result<Opened, DropReason>>,
        ctl: &mut Control<'_>,
    ) {
        open_each(self, buf, datagrams, out, ctl);
    }
}

/// Opens `datagrams` one after the other with [`Sender::open`]: the default batch, and what a
/// transform falls back to when it cannot batch.
pub fn open_each<S: Sender + ?Sized>(
    s: &mut S,
    buf: &mut [u8],
    datagrams: &[Range<usize>],
    out: &mut Vec<Result<Opened, DropReason>>,
    ctl: &mut Control<'_>,
) {
    for r in datagrams {
        out.push(s.open(&mut buf[r.clone()], ctl));
    }
}

/// A transform's own way out: sends one datagram at once, outside the batches (handshakes,
/// keepalives, cookie replies).
pub struct Control<'a> {
    sock: &'a UdpSocket,
}

impl<'a> Control<'a> {
    pub fn new(sock: &'a UdpSocket) -> Control<'a> {
        Control { sock }
    }

    /// Sends `datagram` to `to` now; a full socket buffer fails with WouldBlock.
    pub fn send_to(&mut self, to: SocketAddr, datagram: &[u8]) -> std::io::Result<()> {
        self.sock.send_to(to, datagram)
    }
}

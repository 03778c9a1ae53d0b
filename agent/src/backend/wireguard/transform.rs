//! What the wireguard backend does to each packet between the TUN and the wire: every inner
//! packet (every segment of a TSO super-packet) is sealed as one WireGuard transport message
//! for the peer whose AllowedIPs hold its destination; every received message is opened by
//! the peer its receiver index names. The protocol — Noise IK handshake, sessions, counters
//! and replay windows, cookies, ChaCha20-Poly1305 — is boringtun's `noise::Tunn`; this file
//! only routes, batches and checks around it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::aead::Aead;
use super::key::NodeKey;
use super::spread;
use super::table::{Origin, Peer, TableCell, TableReader, WgTable, canonical};
use super::unleased::{UnleasedGate, Verdict};
use crate::engine::packet::{self, DropReason};
use crate::engine::transform::{open_each, seal_each};
use crate::engine::{
    Control, Destination, Inbound, Opened, Outbound, Refusal, SealJob, Sender, Transform,
};

/// The transport message header: type 4, receiver index, counter.
pub const HEADER_LEN: usize = 16;
/// The Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// The largest handshake message (initiation), which boringtun needs room for.
const HANDSHAKE_INIT_LEN: usize = 148;
/// Room for a whole GRO receive or TUN read plus what WireGuard adds.
const SCRATCH: usize = 65536 + HEADER_LEN + TAG_LEN;
/// Queued packets flushed after a handshake at most (boringtun queues 256 per peer).
const MAX_FLUSH: usize = 512;

const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESP: u8 = 2;
const MSG_COOKIE_REPLY: u8 = 3;
const MSG_DATA: u8 = 4;

/// The wireguard backend's transform.
pub struct WgTransform {
    pub table: Arc<TableCell>,
    pub key: Arc<NodeKey>,
    /// Shared by every peer's `Tunn`: counts handshakes and answers with cookies under load.
    pub limiter: Arc<RateLimiter>,
    /// Datagrams from addresses no lease names pass here (a cookie first for handshakes),
    /// when peers may roam there; `None` drops them before any crypto.
    pub unleased: Option<Arc<UnleasedGate>>,
    /// Seals and opens transport data.
    pub aead: Aead,
}

impl Transform for WgTransform {
    type Outbound = WgOutbound;
    type Inbound = WgInbound;

    fn outbound(&self) -> WgOutbound {
        WgOutbound {
            table: self.table.reader(),
            plain: vec![0u8; SCRATCH].into_boxed_slice(),
            small: [0u8; HANDSHAKE_INIT_LEN],
            aead: self.aead,
        }
    }

    fn inbound(&self) -> WgInbound {
        WgInbound {
            table: self.table.reader(),
            key: self.key.clone(),
            limiter: self.limiter.clone(),
            unleased: self.unleased.clone(),
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            jobs: Vec::with_capacity(MAX_BATCH),
            aead: self.aead,
        }
    }
}

/// Datagrams of one GRO receive at most (64 KiB of the smallest data messages).
const MAX_BATCH: usize = 65536 / 32;

/// One received data message being opened in place.
struct OpenJob {
    span: Range<usize>,
    /// Its receiver index and plaintext range, or why it failed.
    outcome: Result<(u32, Range<usize>), WireGuardError>,
}

/// The IP packet at the start of a plaintext, without WireGuard's padding: `Ok(None)` for
/// a keepalive (nothing), its length and whether it is IPv6 otherwise (boringtun's own
/// check of a decapsulated packet).
fn inner_packet(plain: &[u8]) -> Result<Option<(usize, bool)>, DropReason> {
    let len = match plain.first().map(|b| b >> 4) {
        None => return Ok(None),
        Some(4) if plain.len() >= 20 => u16::from_be_bytes([plain[2], plain[3]]) as usize,
        Some(6) if plain.len() >= 40 => u16::from_be_bytes([plain[4], plain[5]]) as usize + 40,
        _ => return Err(DropReason::Unauthenticated),
    };
    if len > plain.len() {
        return Err(DropReason::Unauthenticated);
    }
    Ok(Some((len, plain[0] >> 4 == 6)))
}

/// Maps boringtun's refusal of a received message to a drop counter.
fn refusal(e: &WireGuardError) -> DropReason {
    match e {
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => DropReason::Replay,
        _ => DropReason::Unauthenticated,
    }
}

/// A peer a datagram is sealed for: its position in the table of the last refresh (found
/// once per inner packet), and its index, which stays its own across table changes (a
/// table published between sealing and sending moves positions, and a successor keeps the
/// index and the byte counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRef {
    pos: usize,
    index: u32,
}

impl PeerRef {
    fn at(table: &WgTable, pos: usize) -> PeerRef {
        PeerRef {
            pos,
            index: table.peers[pos].index,
        }
    }

    /// The peer in `table` (by position, else by index when the table changed).
    fn find(self, table: &WgTable) -> Option<&Arc<Peer>> {
        match table.peers.get(self.pos) {
            Some(p) if p.index == self.index => Some(p),
            _ => table.by_index(self.index),
        }
    }
}

/// TUN → UDP.
pub struct WgOutbound {
    table: TableReader,
    /// The inner packet, copied out of the datagram boringtun seals it into.
    plain: Box<[u8]>,
    /// Where a handshake initiation goes when the datagram is too small for one.
    small: [u8; HANDSHAKE_INIT_LEN],
    aead: Aead,
}

impl Outbound for WgOutbound {
    type Peer = PeerRef;
    const HEADER_LEN: usize = HEADER_LEN;
    const TRAILER_LEN: usize = TAG_LEN;

    fn route(
        &mut self,
        _pkt: &mut [u8],
        ip: &packet::Ipv4Info,
        _ctl: &mut Control<'_>,
    ) -> Result<Destination<PeerRef>, Refusal> {
        let table = self.table.refresh();
        if !table.in_network(ip.dst) {
            return Err(Refusal::Drop(DropReason::OutsideNetwork));
        }
        if table.is_local(ip.dst) {
            return Err(Refusal::Drop(DropReason::NotLocal));
        }
        let Some(i) = table.peer_for(ip.dst) else {
            let from = table
                .local
                .v4
                .map(|l| l.network())
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            return Err(Refusal::Unreachable { from });
        };
        Ok(Destination {
            to: table.peers[i].endpoint(),
            peer: PeerRef::at(table, i),
        })
    }

    fn route_v6(
        &mut self,
        _pkt: &mut [u8],
        ip: &packet::Ipv6Info,
        _ctl: &mut Control<'_>,
    ) -> Result<Destination<PeerRef>, Refusal> {
        let table = self.table.refresh();
        if !table.in_network6(ip.dst) {
            return Err(Refusal::Drop(DropReason::OutsideNetwork));
        }
        if table.is_local6(ip.dst) {
            return Err(Refusal::Drop(DropReason::NotLocal));
        }
        let Some(i) = table.peer_for6(ip.dst) else {
            // From the device's own address, `<v6 subnet base>`.
            return Err(match table.local.v6 {
                Some(l) => Refusal::Unreachable6 { from: l.network() },
                None => Refusal::Drop(DropReason::NoRoute),
            });
        };
        Ok(Destination {
            to: table.peers[i].endpoint(),
            peer: PeerRef::at(table, i),
        })
    }

    /// With a session, every datagram of the batch is sealed in place under counters reserved
    /// in order, spread over the worker's helper; without one, one by one through `seal`
    /// (boringtun queues them and starts a handshake). The transfer bytes are counted when
    /// the engine reports what the kernel took (`sent`), not here.
    fn seal_batch(
        &mut self,
        peer: PeerRef,
        arena: &mut [u8],
        jobs: &mut [SealJob],
        ctl: &mut Control<'_>,
    ) {
        let Some(p) = self.table.current().peers.get(peer.pos).cloned() else {
            for j in jobs.iter_mut() {
                j.sealed = Err(DropReason::NoRoute);
            }
            return;
        };
        {
            let mut tunn = p.tunn();
            let sent = tunn
                .data_sealer(jobs.len(), self.aead.transport())
                .map(|sealer| {
                    spread::for_each_span(
                        arena,
                        jobs,
                        &|j: &SealJob| j.off..j.off + j.room,
                        &|i, j, datagram| {
                            j.sealed = sealer
                                .seal(i, datagram, j.inner_len)
                                .ok_or(DropReason::Oversize);
                        },
                    );
                    let sealed = jobs.iter().filter(|j| j.sealed.is_ok());
                    (
                        sealed.clone().count(),
                        sealed.map(|j| j.inner_len).sum::<usize>(),
                    )
                });
            if let Some((count, bytes)) = sent {
                // As `encapsulate`: the timers move only when something was sealed.
                if count > 0 {
                    tunn.note_data_sent(bytes);
                }
                return;
            }
        }
        seal_each(self, peer, arena, jobs, ctl);
    }

    fn seal(
        &mut self,
        peer: PeerRef,
        datagram: &mut [u8],
        inner_len: usize,
        ctl: &mut Control<'_>,
    ) -> Result<usize, DropReason> {
        let Some(peer) = self.table.current().peers.get(peer.pos) else {
            return Err(DropReason::NoRoute);
        };
        let plain = &mut self.plain[..inner_len];
        plain.copy_from_slice(&datagram[HEADER_LEN..HEADER_LEN + inner_len]);
        let mut tunn = peer.tunn();
        // Without a session boringtun queues the packet and writes a handshake initiation
        // instead, which needs more room than a small packet's datagram has.
        let small = datagram.len() < HANDSHAKE_INIT_LEN;
        let out: &mut [u8] = if small { &mut self.small } else { datagram };
        let (len, handshake) = match tunn.encapsulate(plain, out) {
            TunnResult::WriteToNetwork(msg) => (msg.len(), msg.first() != Some(&MSG_DATA)),
            _ => return Err(DropReason::NoSession),
        };
        drop(tunn);
        if handshake {
            let msg = if small {
                &self.small[..len]
            } else {
                &datagram[..len]
            };
            if ctl.send_to(peer.endpoint(), msg).is_ok() {
                peer.transfer.sent(len);
            }
            return Err(DropReason::NoSession);
        }
        if small {
            datagram[..len].copy_from_slice(&self.small[..len]);
        }
        // A data message: counted in `sent` once the kernel took it.
        Ok(len)
    }

    /// Counts what the kernel took for `peer` in its transfer bytes (whole messages, as
    /// kernel WireGuard), so a send that failed (no route, ENOBUFS) counts nothing.
    fn sent(&mut self, peer: PeerRef, bytes: usize) {
        if let Some(p) = peer.find(self.table.current()) {
            p.transfer.sent(bytes);
        }
    }
}

/// UDP → TUN.
pub struct WgInbound {
    table: TableReader,
    key: Arc<NodeKey>,
    limiter: Arc<RateLimiter>,
    unleased: Option<Arc<UnleasedGate>>,
    scratch: Box<[u8]>,
    jobs: Vec<OpenJob>,
    aead: Aead,
}

impl Inbound for WgInbound {
    type Sender<'a> = WgSender<'a>;

    fn sender(&mut self, from: SocketAddr) -> Result<WgSender<'_>, DropReason> {
        let table = self.table.refresh();
        // Unless peers may roam to addresses no lease names, only nodes holding a lease get
        // a byte decrypted (or a handshake computed).
        let origin = table.origin(from.ip());
        if origin == Origin::Unleased && self.unleased.is_none() {
            return Err(DropReason::UnknownPeer);
        }
        Ok(WgSender {
            table,
            from,
            origin,
            key: &self.key,
            limiter: &self.limiter,
            unleased: self.unleased.as_deref(),
            scratch: &mut self.scratch,
            jobs: &mut self.jobs,
            aead: self.aead,
        })
    }
}

/// The datagrams of one sender address.
pub struct WgSender<'a> {
    table: &'a WgTable,
    from: SocketAddr,
    origin: Origin,
    key: &'a NodeKey,
    limiter: &'a RateLimiter,
    /// Set when `origin` is unleased (`sender` refuses those otherwise).
    unleased: Option<&'a UnleasedGate>,
    scratch: &'a mut [u8],
    jobs: &'a mut Vec<OpenJob>,
    aead: Aead,
}

/// The receiver index of a message of type `ty` (where it sits differs per type).
fn receiver_index(ty: u8, msg: &[u8]) -> Option<u32> {
    let at = match ty {
        MSG_HANDSHAKE_RESP => 8,
        MSG_COOKIE_REPLY | MSG_DATA => 4,
        _ => return None,
    };
    let b: [u8; 4] = msg.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

impl WgSender<'_> {
    fn src(&self) -> Option<IpAddr> {
        Some(self.from.ip())
    }

    /// A handshake message from an address no lease names: its cookie and the budget of
    /// such handshakes first. `Ok(true)`: go on; `Ok(false)`: a cookie reply went back.
    fn pass_unleased(&mut self, msg: &[u8], ctl: &mut Control<'_>) -> Result<bool, DropReason> {
        let Some(gate) = self.unleased.filter(|_| self.origin == Origin::Unleased) else {
            return Ok(true);
        };
        match gate.check(self.from.ip().to_canonical(), msg, self.scratch) {
            Verdict::Pass => Ok(true),
            Verdict::Cookie(reply) => {
                let _ = ctl.send_to(self.from, reply);
                Ok(false)
            }
            Verdict::Unauthenticated => Err(DropReason::Unauthenticated),
            Verdict::OverBudget => Err(DropReason::HandshakeBudget),
        }
    }

    /// A handshake initiation: MACs and load first (cookies under a flood, and always from
    /// an unleased address), then the initiator's identity, then its Tunn.
    fn handshake_init(&mut self, msg: &[u8], ctl: &mut Control<'_>) -> Result<Opened, DropReason> {
        if !self.pass_unleased(msg, ctl)? {
            return Ok(Opened::Consumed);
        }
        let half = match self.limiter.verify_packet(self.src(), msg, self.scratch) {
            Ok(Packet::HandshakeInit(init)) => {
                parse_handshake_anon(&self.key.private, &self.key.public, &init)
                    .map_err(|e| refusal(&e))?
            }
            Ok(_) => return Err(DropReason::Unauthenticated),
            Err(TunnResult::WriteToNetwork(cookie)) => {
                let _ = ctl.send_to(self.from, cookie);
                return Ok(Opened::Consumed);
            }
            Err(_) => return Err(DropReason::Unauthenticated),
        };
        let peer = self
            .table
            .by_key(&half.peer_static_public)
            .ok_or(DropReason::UnknownPeer)?;
        self.hand_to_peer(peer, msg, ctl)
    }

    /// Hands `msg` to `peer`'s Tunn and does what it says.
    fn hand_to_peer(
        &mut self,
        peer: &Peer,
        msg: &[u8],
        ctl: &mut Control<'_>,
    ) -> Result<Opened, DropReason> {
        let mut tunn = peer.tunn();
        match tunn.decapsulate(self.src(), msg, self.scratch) {
            TunnResult::WriteToNetwork(reply) => {
                // A handshake response or the keepalive that confirms one: to the address the
                // handshake came from. Then what waited for the session. A cookie (sent
                // under load) authenticates nothing; a cookie reply never gets here (Done).
                if reply.first() != Some(&MSG_COOKIE_REPLY) {
                    roam(peer, self.from, self.origin);
                    peer.transfer.received(msg.len());
                    if ctl.send_to(self.from, reply).is_ok() {
                        peer.transfer.sent(reply.len());
                    }
                } else {
                    let _ = ctl.send_to(self.from, reply);
                }
                flush_queued(&mut tunn, peer, self.scratch, ctl);
                Ok(Opened::Consumed)
            }
            TunnResult::Done => Ok(Opened::Consumed),
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                Err(DropReason::Unauthenticated)
            }
            TunnResult::Err(e) => Err(refusal(&e)),
        }
    }

    /// A transport message: decrypted by its session, then checked like udp's datagrams.
    fn data(&mut self, datagram: &mut [u8], ctl: &mut Control<'_>) -> Result<Opened, DropReason> {
        let index = receiver_index(MSG_DATA, datagram).ok_or(DropReason::Truncated)? >> 8;
        let peer = self
            .table
            .by_index(index)
            .ok_or(DropReason::Unauthenticated)?;
        let mut tunn = peer.tunn();
        let wire = datagram.len();
        let opened = tunn.decapsulate(self.src(), datagram, self.scratch);
        if !matches!(opened, TunnResult::Err(_)) {
            roam(peer, self.from, self.origin);
            peer.transfer.received(wire);
        }
        let (len, v6) = match opened {
            TunnResult::WriteToTunnelV4(inner, _) => (inner.len(), false),
            TunnResult::WriteToTunnelV6(inner, _) => (inner.len(), true),
            // A keepalive.
            TunnResult::Done => return Ok(Opened::Consumed),
            TunnResult::WriteToNetwork(reply) => {
                if ctl.send_to(peer.endpoint(), reply).is_ok() {
                    peer.transfer.sent(reply.len());
                }
                flush_queued(&mut tunn, peer, self.scratch, ctl);
                return Ok(Opened::Consumed);
            }
            TunnResult::Err(e) => {
                let why = refusal(&e);
                let counter = match why {
                    DropReason::Replay => &peer.drops.replays,
                    _ => &peer.drops.unauthenticated,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return Err(why);
            }
        };
        drop(tunn);
        // The plaintext is never longer than the message: back into the datagram's place.
        let inner = &mut datagram[..len];
        inner.copy_from_slice(&self.scratch[..len]);
        self.check_inner(peer, datagram, 0..len, v6)
    }

    /// The checks every opened inner packet (`datagram[inner]`) passes, as udp's datagrams:
    /// its header, its source among the peer's AllowedIPs, its destination here. Not its
    /// size: one bigger than our MTU (from a node whose MTU is larger) is delivered, and the
    /// engine counts it (`rx_over_mtu_packets`), as kernel WireGuard delivers it and the
    /// kernel answers with ICMP packet too big or fragments it.
    fn check_inner(
        &self,
        peer: &Peer,
        datagram: &[u8],
        inner: Range<usize>,
        v6: bool,
    ) -> Result<Opened, DropReason> {
        let pkt = &datagram[inner.clone()];
        if v6 {
            let ip = packet::parse_ipv6(pkt)?;
            if !peer.allows(IpAddr::V6(ip.src)) {
                peer.drops.spoofed.fetch_add(1, Ordering::Relaxed);
                return Err(DropReason::SpoofedSource);
            }
            if !self.table.is_local6(ip.dst) {
                return Err(DropReason::NotLocal);
            }
            Ok(Opened::Packet6 { inner })
        } else {
            let ip = packet::parse_ipv4(pkt, true)?;
            if !peer.allows(IpAddr::V4(ip.src)) {
                peer.drops.spoofed.fetch_add(1, Ordering::Relaxed);
                return Err(DropReason::SpoofedSource);
            }
            if !self.table.is_local(ip.dst) {
                return Err(DropReason::NotLocal);
            }
            Ok(Opened::Packet { inner, ip })
        }
    }

    /// The peer whose session every datagram of a receive is a data message for (the usual
    /// GRO receive), when there are enough to spread; `None` sends them one by one.
    fn data_batch_peer(&self, buf: &[u8], datagrams: &[Range<usize>]) -> Option<Arc<Peer>> {
        if datagrams.len() < spread::SPLIT_MIN {
            return None;
        }
        let index_of = |r: &Range<usize>| {
            let d = buf.get(r.clone())?;
            if d.len() < HEADER_LEN + TAG_LEN || d[..4] != [MSG_DATA, 0, 0, 0] {
                return None;
            }
            receiver_index(MSG_DATA, d)
        };
        let first = index_of(&datagrams[0])?;
        if !datagrams[1..].iter().all(|r| index_of(r) == Some(first)) {
            return None;
        }
        self.table.by_index(first >> 8).cloned()
    }

    /// Opens the data messages of one receive, all for `peer`'s session, in place and spread
    /// over the worker's helper; then checks each inner packet in order.
    fn open_data_batch(
        &mut self,
        peer: &Peer,
        buf: &mut [u8],
        datagrams: &[Range<usize>],
        out: &mut Vec<Result<Opened, DropReason>>,
    ) {
        self.jobs.clear();
        self.jobs.extend(datagrams.iter().map(|r| OpenJob {
            span: r.clone(),
            outcome: Err(WireGuardError::InvalidPacket),
        }));
        let mut tunn = peer.tunn();
        {
            let opener = tunn.data_opener(self.aead.transport());
            spread::for_each_span(
                buf,
                self.jobs,
                &|j: &OpenJob| j.span.clone(),
                &|_, j, msg| j.outcome = opener.open(msg),
            );
        }
        let (mut index, mut bytes, mut wire) = (None, 0, 0);
        for j in self.jobs.iter() {
            let checked = match &j.outcome {
                Ok((idx, plain)) => {
                    index = Some(*idx);
                    wire += j.span.len();
                    let datagram = &buf[j.span.clone()];
                    match inner_packet(&datagram[plain.clone()]) {
                        Ok(None) => Ok(Opened::Consumed),
                        Ok(Some((len, v6))) => {
                            bytes += len;
                            self.check_inner(peer, datagram, plain.start..plain.start + len, v6)
                        }
                        Err(why) => {
                            // As boringtun's InvalidPacket on the one-by-one path.
                            peer.drops.unauthenticated.fetch_add(1, Ordering::Relaxed);
                            Err(why)
                        }
                    }
                }
                Err(e) => {
                    let why = refusal(e);
                    let counter = match why {
                        DropReason::Replay => &peer.drops.replays,
                        _ => &peer.drops.unauthenticated,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    Err(why)
                }
            };
            out.push(checked);
        }
        if let Some(idx) = index {
            tunn.note_data_received(idx, bytes);
            peer.transfer.received(wire);
            roam(peer, self.from, self.origin);
        }
    }
}

/// After an authenticated message from `peer` at `from`: its datagrams go there.
fn roam(peer: &Peer, from: SocketAddr, origin: Origin) {
    if let Some(old) = peer.roam(from, origin) {
        let leased = match origin {
            Origin::Leased => "of its lease",
            Origin::Unleased => "that no lease names (a NAT?)",
        };
        tracing::info!(
            peer = %base64::engine::general_purpose::STANDARD.encode(peer.public_key),
            from = %old,
            to = %from,
            "wireguard peer roamed: its authenticated messages come from another port or address {leased}, so ours go there now"
        );
    }
}

/// Sends what `tunn` queued while it had no session (boringtun's "call again with an empty
/// datagram until Done").
fn flush_queued(tunn: &mut Tunn, peer: &Peer, scratch: &mut [u8], ctl: &mut Control<'_>) {
    for _ in 0..MAX_FLUSH {
        match tunn.decapsulate(None, &[], scratch) {
            TunnResult::WriteToNetwork(msg) => {
                if ctl.send_to(peer.endpoint(), msg).is_ok() {
                    peer.transfer.sent(msg.len());
                }
            }
            _ => return,
        }
    }
}

impl Sender for WgSender<'_> {
    fn open_batch(
        &mut self,
        buf: &mut [u8],
        datagrams: &[Range<usize>],
        out: &mut Vec<Result<Opened, DropReason>>,
        ctl: &mut Control<'_>,
    ) {
        if let Some(peer) = self.data_batch_peer(buf, datagrams) {
            self.open_data_batch(&peer, buf, datagrams, out);
            return;
        }
        open_each(self, buf, datagrams, out, ctl);
    }

    fn open(&mut self, datagram: &mut [u8], ctl: &mut Control<'_>) -> Result<Opened, DropReason> {
        // Message types are one byte followed by three reserved zero bytes.
        let ty = match datagram.get(..4) {
            Some(&[t, 0, 0, 0]) => t,
            Some(_) => return Err(DropReason::Unauthenticated),
            None => return Err(DropReason::Truncated),
        };
        match ty {
            MSG_DATA => self.data(datagram, ctl),
            MSG_HANDSHAKE_INIT => self.handshake_init(datagram, ctl),
            MSG_HANDSHAKE_RESP | MSG_COOKIE_REPLY => {
                let index = receiver_index(ty, datagram).ok_or(DropReason::Truncated)? >> 8;
                let table = self.table;
                let peer = table.by_index(index).ok_or(DropReason::Unauthenticated)?;
                // A response from an unleased address pays like an initiation, unless it
                // comes from where we sent ours (a peer that roamed there).
                if ty == MSG_HANDSHAKE_RESP
                    && peer.endpoint() != canonical(self.from)
                    && !self.pass_unleased(datagram, ctl)?
                {
                    return Ok(Opened::Consumed);
                }
                self.hand_to_peer(peer, datagram, ctl)
            }
            _ => Err(DropReason::Unauthenticated),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Two nodes' transforms over loopback sockets, driven by hand: what the engine would do
    //! with each datagram, without a TUN or root.
    use std::net::UdpSocket as StdSocket;

    use std::net::Ipv6Addr;

    use boringtun::x25519::{PublicKey, StaticSecret};

    use super::*;
    use crate::engine::packet::test_util::tcp_packet;
    use crate::engine::sys::UdpSocket;
    use crate::lease::Subnets;

    struct Node {
        transform: WgTransform,
        /// Where the other node sends to us (the test reads it).
        inbox: StdSocket,
        /// What our Control sends from.
        out: UdpSocket,
    }

    fn key(seed: u8) -> NodeKey {
        let private = StaticSecret::from([seed; 32]);
        NodeKey {
            public: PublicKey::from(&private),
            private,
        }
    }

    fn loopback(ip: IpAddr) -> StdSocket {
        let s = StdSocket::bind((ip, 0)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        s
    }

    fn subnets(v4: &str, v6: &str) -> Subnets {
        Subnets {
            v4: Some(v4.parse().unwrap()),
            v6: Some(v6.parse().unwrap()),
        }
    }

    /// Nodes A (10.5.1.0/24, fd00:5:1::/64) and B (10.5.2.0/24, fd00:5:2::/64), each the
    /// other's peer, over loopback sockets on `lo` (127.0.0.1 or ::1).
    fn pair_on(psk: Option<[u8; 32]>, lo: IpAddr) -> (Node, Node) {
        let (ka, kb) = (Arc::new(key(1)), Arc::new(key(2)));
        let (ia, ib) = (loopback(lo), loopback(lo));
        let addr = |s: &StdSocket| s.local_addr().unwrap();
        let net = subnets("10.5.0.0/16", "fd00:5::/32");
        let make = |me: &Arc<NodeKey>,
                    other: &Arc<NodeKey>,
                    local: Subnets,
                    peer_net: Subnets,
                    peer_at,
                    index| {
            let limiter = Arc::new(RateLimiter::new(&me.public, 100));
            let tunn = Tunn::new(
                me.private.clone(),
                other.public,
                psk,
                None,
                index,
                Some(limiter.clone()),
            );
            let peer = Peer::new(
                index,
                *other.public.as_bytes(),
                peer_at,
                peer_net,
                0,
                psk.is_some(),
                tunn,
            );
            let table = TableCell::new();
            table.publish(WgTable::new(net, local, vec![Arc::new(peer)]));
            WgTransform {
                table,
                key: me.clone(),
                limiter,
                unleased: None,
                aead: Aead::Ring,
            }
        };
        let (a_net, b_net) = (
            subnets("10.5.1.0/24", "fd00:5:1::/64"),
            subnets("10.5.2.0/24", "fd00:5:2::/64"),
        );
        let ta = make(&ka, &kb, a_net, b_net, addr(&ib), 7);
        let tb = make(&kb, &ka, b_net, a_net, addr(&ia), 9);
        let bind = || UdpSocket::bind(SocketAddr::new(lo, 0), false).unwrap();
        (
            Node {
                transform: ta,
                inbox: ia,
                out: bind(),
            },
            Node {
                transform: tb,
                inbox: ib,
                out: bind(),
            },
        )
    }

    fn pair(psk: Option<[u8; 32]>) -> (Node, Node) {
        pair_on(psk, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn recv(n: &Node) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        let (len, _) = n.inbox.recv_from(&mut buf).unwrap();
        buf.truncate(len);
        buf
    }

    /// One datagram received on an engine socket (waits up to 2 s).
    fn recv_on(sock: &UdpSocket) -> Vec<u8> {
        let mut meta = [crate::engine::sys::RecvMeta::default(); crate::engine::sys::BATCH];
        let mut bufs = vec![0u8; crate::engine::sys::BATCH * 65536];
        for _ in 0..200 {
            if let Ok(n) = sock.recv_batch(&mut bufs, &mut meta)
                && n > 0
            {
                return bufs[..meta[0].len].to_vec();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("nothing received");
    }

    /// Seals `pkt` as the engine would, and reports it sent as the engine does once the
    /// kernel took it; Err when it went out as a handshake instead.
    fn seal(n: &Node, out: &mut WgOutbound, pkt: &[u8]) -> Result<Vec<u8>, DropReason> {
        let mut ctl = Control::new(&n.out);
        let mut p = pkt.to_vec();
        let dest = if p[0] >> 4 == 6 {
            let ip = packet::parse_ipv6(&p).unwrap();
            out.route_v6(&mut p, &ip, &mut ctl).map_err(|r| match r {
                Refusal::Drop(why) => why,
                _ => DropReason::NoRoute,
            })?
        } else {
            let ip = packet::parse_ipv4(&p, true).unwrap();
            out.route(&mut p, &ip, &mut ctl)
                .map_err(|_| DropReason::NoRoute)?
        };
        let mut d = vec![0u8; HEADER_LEN + p.len() + TAG_LEN];
        d[HEADER_LEN..HEADER_LEN + p.len()].copy_from_slice(&p);
        let len = out.seal(dest.peer, &mut d, p.len(), &mut ctl)?;
        out.sent(dest.peer, len);
        d.truncate(len);
        Ok(d)
    }

    /// Opens `d` as received by `n` from the other node's address.
    fn open(
        n: &Node,
        inb: &mut WgInbound,
        from: SocketAddr,
        d: &mut [u8],
    ) -> Result<Opened, DropReason> {
        let mut ctl = Control::new(&n.out);
        let mut sender = inb.sender(from)?;
        sender.open(d, &mut ctl)
    }

    /// Runs the handshake A → B (A's first packet waits for it and is then delivered).
    fn establish(
        a: &Node,
        b: &Node,
        a_out: &mut WgOutbound,
        a_in: &mut WgInbound,
        b_in: &mut WgInbound,
    ) {
        let (from_a, from_b) = (a.out.local_addr().unwrap(), b.inbox.local_addr().unwrap());
        let pkt = tcp_packet(1, 0x18, &[1; 100], 64);
        assert_eq!(seal(a, a_out, &pkt), Err(DropReason::NoSession));
        let mut init = recv(b);
        assert_eq!(open(b, b_in, from_a, &mut init), Ok(Opened::Consumed));
        let mut resp = recv_on(&a.out);
        assert_eq!(open(a, a_in, from_b, &mut resp), Ok(Opened::Consumed));
        for _ in 0..2 {
            let mut d = recv(b);
            assert!(
                open(b, b_in, from_a, &mut d).is_ok(),
                "keepalive and the queued packet"
            );
        }
    }

    /// A's outbound and inbound and B's inbound, the handshake A → B run over them
    /// ([`establish`]).
    fn established(a: &Node, b: &Node) -> (WgOutbound, WgInbound, WgInbound) {
        let (mut a_out, mut a_in) = (a.transform.outbound(), a.transform.inbound());
        let mut b_in = b.transform.inbound();
        establish(a, b, &mut a_out, &mut a_in, &mut b_in);
        (a_out, a_in, b_in)
    }

    /// The first peer of `n`'s table, as `route` names it.
    fn first_peer(n: &Node) -> PeerRef {
        PeerRef::at(&n.transform.table.load(), 0)
    }

    /// One super-packet's datagrams as the engine lays them in its arena, sealed by
    /// `seal_batch` and reported sent (one GSO send the kernel took); returned back to back
    /// as one GRO receive would bring them.
    fn seal_as_batch(
        a: &Node,
        a_out: &mut WgOutbound,
        pkts: &[Vec<u8>],
        pool: Option<&rayon::ThreadPool>,
    ) -> (Vec<u8>, Vec<Range<usize>>) {
        let (mut arena, mut jobs) = (Vec::new(), Vec::new());
        for p in pkts {
            jobs.push(SealJob {
                off: arena.len(),
                inner_len: p.len(),
                room: HEADER_LEN + p.len() + TAG_LEN,
                sealed: Err(DropReason::NoSession),
            });
            arena.extend_from_slice(&[0; HEADER_LEN]);
            arena.extend_from_slice(p);
            arena.extend_from_slice(&[0; TAG_LEN]);
        }
        let mut ctl = Control::new(&a.out);
        let peer = first_peer(a);
        let mut go = || a_out.seal_batch(peer, &mut arena, &mut jobs, &mut ctl);
        match pool {
            Some(pool) => pool.install(go),
            None => go(),
        }
        let (mut wire, mut ranges) = (Vec::new(), Vec::new());
        for j in &jobs {
            let len = j.sealed.unwrap();
            ranges.push(wire.len()..wire.len() + len);
            wire.extend_from_slice(&arena[j.off..j.off + len]);
        }
        a_out.sent(peer, wire.len());
        (wire, ranges)
    }

    /// Opens one receive with `open_batch`, as the engine does.
    fn open_as_batch(
        b: &Node,
        b_in: &mut WgInbound,
        from: SocketAddr,
        wire: &mut [u8],
        ranges: &[Range<usize>],
        pool: Option<&rayon::ThreadPool>,
    ) -> Vec<Result<Opened, DropReason>> {
        let mut out = Vec::new();
        let mut ctl = Control::new(&b.out);
        let mut sender = b_in.sender(from).unwrap();
        let mut go = || sender.open_batch(wire, ranges, &mut out, &mut ctl);
        match pool {
            Some(pool) => pool.install(go),
            None => go(),
        }
        out
    }

    /// The AEAD pairs to run a test with: ring on both sides, and where intel-ipsec-mb is
    /// here, it on either side and both (the wire is the same, so each opens the other's).
    fn aead_pairs() -> Vec<(Aead, Aead)> {
        let mut pairs = vec![(Aead::Ring, Aead::Ring)];
        if let Some(imb) = Aead::ipsec_mb_for_tests() {
            pairs.extend([(imb, Aead::Ring), (Aead::Ring, imb), (imb, imb)]);
        }
        pairs
    }

    #[test]
    fn batches_seal_with_counters_in_order_and_open_the_same_spread_or_not() {
        for (seals, opens) in aead_pairs() {
            batches_round_trip(seals, opens);
        }
    }

    fn batches_round_trip(seals: Aead, opens: Aead) {
        let (mut a, mut b) = pair(None);
        a.transform.aead = seals;
        b.transform.aead = opens;
        let (mut a_out, _a_in, mut b_in) = established(&a, &b);
        let from_a = a.out.local_addr().unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for spread_over in [None, Some(&pool)] {
            let pkts: Vec<Vec<u8>> = (0..20u32)
                .map(|i| tcp_packet(i, 0x10, &vec![i as u8; 100 + 37 * i as usize], 64))
                .collect();
            let (mut wire, ranges) = seal_as_batch(&a, &mut a_out, &pkts, spread_over);
            let counter = |r: &Range<usize>| {
                u64::from_le_bytes(wire[r.start + 8..r.start + 16].try_into().unwrap())
            };
            assert!(
                ranges
                    .windows(2)
                    .all(|w| counter(&w[1]) == counter(&w[0]) + 1),
                "counters in sending order"
            );
            let replay = wire.clone();
            let opened = open_as_batch(&b, &mut b_in, from_a, &mut wire, &ranges, spread_over);
            assert_eq!(opened.len(), pkts.len());
            for ((r, o), p) in ranges.iter().zip(&opened).zip(&pkts) {
                match o {
                    Ok(Opened::Packet { inner, .. }) => {
                        assert_eq!(&wire[r.start + inner.start..r.start + inner.end], &p[..])
                    }
                    other => panic!("{other:?}"),
                }
            }
            // The same receive again: every datagram a replay. A fresh batch with one bit
            // flipped: only that one fails.
            let mut again = replay;
            let opened = open_as_batch(&b, &mut b_in, from_a, &mut again, &ranges, spread_over);
            assert!(
                opened.iter().all(|o| *o == Err(DropReason::Replay)),
                "{opened:?}"
            );
            let (mut wire, ranges) = seal_as_batch(&a, &mut a_out, &pkts, spread_over);
            wire[ranges[5].start + 40] ^= 1;
            let opened = open_as_batch(&b, &mut b_in, from_a, &mut wire, &ranges, spread_over);
            for (i, o) in opened.iter().enumerate() {
                assert_eq!(o.is_ok(), i != 5, "datagram {i}: {o:?}");
            }
            assert_eq!(opened[5], Err(DropReason::Unauthenticated));
        }
        let peer_a = b.transform.table.load().peers[0].clone();
        assert_eq!(peer_a.drops.replays.load(Ordering::Relaxed), 40);
        assert_eq!(peer_a.drops.unauthenticated.load(Ordering::Relaxed), 2);
        // What `wg show` counts moved with the batches.
        assert!(peer_a.transfer.get().1 > 0, "received bytes recorded");
    }

    /// `tx_bytes` / `rx_bytes` of the UAPI `get` answer (one peer).
    fn transfer_shown(table: &Arc<TableCell>) -> (u64, u64) {
        let state = super::super::uapi::DeviceState {
            key: None,
            listen_port: 51820,
            table: table.clone(),
        };
        let text = super::super::uapi::render_get(&state);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.parse::<u64>().ok())
                .unwrap()
        };
        (field("tx_bytes="), field("rx_bytes="))
    }

    /// `wg show`'s transfer counts whole WireGuard messages on kernel WireGuard and
    /// wireguard-go; boringtun's counters (shown before) hold inner bytes only, 32 bytes a
    /// message short of a kernel node's figures.
    #[test]
    fn wg_show_transfer_counts_whole_messages_as_kernel_wireguard_does() {
        let (a, b) = pair(None);
        let (mut a_out, _a_in, mut b_in) = established(&a, &b);
        let from_a = a.out.local_addr().unwrap();
        let (a_tx, _) = transfer_shown(&a.transform.table);
        let (b_tx, b_rx) = transfer_shown(&b.transform.table);
        assert!(a_tx >= HANDSHAKE_INIT_LEN as u64, "A's initiation counted");
        assert!(
            b_rx >= HANDSHAKE_INIT_LEN as u64,
            "B counted A's initiation"
        );
        assert!(b_tx >= 92, "B's response counted");

        let pkts: Vec<Vec<u8>> = (0..6u32)
            .map(|i| tcp_packet(i, 0x10, &vec![3; 40 + 250 * i as usize], 64))
            .collect();
        let (mut wire, ranges) = seal_as_batch(&a, &mut a_out, &pkts, None);
        let mut one = seal(&a, &mut a_out, &pkts[1]).unwrap();
        let inner: usize = pkts.iter().map(Vec::len).sum::<usize>() + pkts[1].len();
        let messages = wire.len() + one.len();
        assert_eq!(messages, inner + 7 * 32);
        let opened = open_as_batch(&b, &mut b_in, from_a, &mut wire, &ranges, None);
        assert!(opened.iter().all(Result::is_ok), "{opened:?}");
        assert!(open(&b, &mut b_in, from_a, &mut one).is_ok());

        let (a_tx2, _) = transfer_shown(&a.transform.table);
        let (_, b_rx2) = transfer_shown(&b.transform.table);
        assert_eq!(a_tx2 - a_tx, messages as u64, "A's tx_bytes");
        assert_eq!(b_rx2 - b_rx, messages as u64, "B's rx_bytes");
    }

    /// A's table with its one peer (B) moved to `endpoint`, sessions kept (as a lease change
    /// or a roam would).
    fn move_peer(a: &Node, endpoint: SocketAddr) {
        let old = a.transform.table.load().peers[0].clone();
        let next = Arc::new(old.successor(endpoint, old.allowed, None));
        a.transform.table.publish(WgTable::new(
            subnets("10.5.0.0/16", "fd00:5::/32"),
            subnets("10.5.1.0/24", "fd00:5:1::/64"),
            vec![next],
        ));
    }

    #[test]
    fn tx_bytes_count_what_the_kernel_took_not_what_was_sealed() {
        // Before: the batch path counted a peer's transfer bytes when it sealed the
        // messages, so sends the kernel refused (no route to the peer, ENOBUFS, a failed GSO
        // send) still showed in `wg show` and /metrics.
        use crate::engine::packet::{GSO_TCPV4, PLAIN, VnetHdr};
        use crate::engine::{Engine, EngineConfig, Stats};
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        use std::io::Write;

        let (a, b) = pair(None);
        let (_a_out, _a_in, _b_in) = established(&a, &b);
        let hdr = VnetHdr {
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1000,
            ..VnetHdr::default()
        };
        let packets = [
            [&PLAIN[..], &tcp_packet(50, 0x10, b"ack", 64)].concat(),
            [
                &hdr.to_bytes()[..],
                &tcp_packet(1000, 0x10, &[5u8; 3000], 64),
            ]
            .concat(),
        ];
        // Runs A's data path (a TUN stand-in, a socket of its own) over `packets`; returns
        // the engine's counters once every packet was read and its sends done.
        let run = |packets: &[Vec<u8>]| {
            let (ours, theirs) = socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .unwrap();
            let bind = StdSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let cfg = EngineConfig {
                bind,
                mtu: 1420,
                offloads: true,
                busy_poll: std::time::Duration::ZERO,
                name: "wg",
                crypto_helper: false,
            };
            let stats = Arc::new(Stats::new("wireguard"));
            let engine =
                Engine::start(vec![std::fs::File::from(ours)], cfg, &a.transform, &stats).unwrap();
            let mut tun = std::fs::File::from(theirs);
            for p in packets {
                tun.write_all(p).unwrap();
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while stats.tun_reads.load(Ordering::Relaxed) < packets.len() as u64 {
                assert!(std::time::Instant::now() < deadline, "packets not read");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(engine);
            stats
        };
        let tx = || transfer_shown(&a.transform.table).0;

        // B's endpoint where every send fails (port 0: EINVAL, also datagram by datagram
        // after the GSO send).
        move_peer(&a, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let before = tx();
        let stats = run(&packets);
        assert!(
            stats.io_errors.load(Ordering::Relaxed) >= 2,
            "the sends failed"
        );
        assert_eq!(
            stats.tx_packets.load(Ordering::Relaxed),
            4,
            "all four went to be sealed"
        );
        assert_eq!(tx(), before, "messages the kernel refused counted as sent");

        // Back where B listens: what arrives is what counts, whole messages.
        move_peer(&a, b.inbox.local_addr().unwrap());
        let before = tx();
        let stats = run(&packets);
        assert_eq!(stats.io_errors.load(Ordering::Relaxed), 0);
        let arrived: u64 = (0..4).map(|_| recv(&b).len() as u64).sum();
        assert_eq!(arrived, 4 * 32 + 55 + 3 * 1052);
        assert_eq!(tx() - before, arrived, "A's tx_bytes");
    }

    #[test]
    fn a_received_packet_over_the_mtu_is_opened_for_the_engine_to_deliver() {
        // Before: dropped as `mtu_mismatch` (a black hole for path-MTU discovery). Now the
        // transform does not look at the size: a packet bigger than any MTU a node runs with
        // (its node's MTU is larger) opens like any other, IPv4 and IPv6, one by one and in a
        // batch; the engine delivers it on its own and counts it. The other checks still
        // come first: a spoofed one is a spoofed one.
        let (a, b) = pair(None);
        let (mut a_out, _a_in, mut b_in) = established(&a, &b);
        let from_a = a.out.local_addr().unwrap();
        let peer_a = b.transform.table.load().peers[0].clone();

        // 4,052 and 4,040 bytes: over the 1,420 both engines of `pair` would run with.
        let big = tcp_packet(1, 0x10, &[7; 4000], 64);
        let mut d = seal(&a, &mut a_out, &big).unwrap();
        match open(&b, &mut b_in, from_a, &mut d) {
            Ok(Opened::Packet { inner, .. }) => assert_eq!(&d[inner], &big[..]),
            other => panic!("{other:?}"),
        }
        let big6 = v6_packet("fd00:5:1::9", "fd00:5:2::7", 4000);
        let mut d = seal(&a, &mut a_out, &big6).unwrap();
        match open(&b, &mut b_in, from_a, &mut d) {
            Ok(Opened::Packet6 { inner }) => assert_eq!(&d[inner], &big6[..]),
            other => panic!("{other:?}"),
        }
        let mut spoofed = big.clone();
        spoofed[12..16].copy_from_slice(&[10, 5, 9, 9]);
        spoofed[10..12].fill(0);
        let c = packet::checksum(&spoofed[..20]);
        spoofed[10..12].copy_from_slice(&c.to_be_bytes());
        let mut d = seal(&a, &mut a_out, &spoofed).unwrap();
        assert_eq!(
            open(&b, &mut b_in, from_a, &mut d),
            Err(DropReason::SpoofedSource)
        );

        // One GRO receive (the batch path): all of them opened.
        let pkts: Vec<Vec<u8>> = (0..10u32)
            .map(|i| {
                tcp_packet(
                    i,
                    0x10,
                    &[7; 4000][..if i % 2 == 0 { 4000 } else { 400 }],
                    64,
                )
            })
            .collect();
        let (mut wire, ranges) = seal_as_batch(&a, &mut a_out, &pkts, None);
        let opened = open_as_batch(&b, &mut b_in, from_a, &mut wire, &ranges, None);
        for (i, o) in opened.iter().enumerate() {
            match o {
                Ok(Opened::Packet { inner, .. }) => {
                    let at = ranges[i].start;
                    assert_eq!(
                        &wire[at + inner.start..at + inner.end],
                        &pkts[i][..],
                        "datagram {i}"
                    );
                }
                other => panic!("datagram {i}: {other:?}"),
            }
        }
        // Counted against the peer: the spoofed one only.
        assert_eq!(peer_a.drops.total(), 1);
        let mut s = String::new();
        super::super::table::render_peers(&[b.transform.table.load()], &mut s);
        assert!(!s.contains("mtu"), "{s}");
    }

    #[test]
    fn a_peer_whose_lease_changed_keeps_its_sessions_and_refuses_an_old_initiation() {
        let (a, b) = pair(None);
        let (mut a_out, mut a_in) = (a.transform.outbound(), a.transform.inbound());
        let mut b_in = b.transform.inbound();
        let from_a = a.out.local_addr().unwrap();
        let from_b = b.inbox.local_addr().unwrap();
        let pkt = tcp_packet(1, 0x18, &[0xab; 600], 64);
        assert_eq!(seal(&a, &mut a_out, &pkt), Err(DropReason::NoSession));
        let mut init = recv(&b);
        let captured = init.clone();
        assert_eq!(open(&b, &mut b_in, from_a, &mut init), Ok(Opened::Consumed));
        let mut resp = recv_on(&a.out);
        assert_eq!(open(&a, &mut a_in, from_b, &mut resp), Ok(Opened::Consumed));
        for _ in 0..2 {
            let mut m = recv(&b);
            let _ = open(&b, &mut b_in, from_a, &mut m);
        }
        // A's lease on B changes (another Port): B installs A's successor.
        let old = b.transform.table.load().peers[0].clone();
        let moved = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let next = Arc::new(old.successor(moved, old.allowed, None));
        b.transform.table.publish(WgTable::new(
            subnets("10.5.0.0/16", "fd00:5::/32"),
            subnets("10.5.2.0/24", "fd00:5:2::/64"),
            vec![next],
        ));
        let mut b_in = b.transform.inbound();
        // A's packets still open with the session it holds...
        let mut d = seal(&a, &mut a_out, &pkt).unwrap();
        match open(&b, &mut b_in, from_a, &mut d) {
            Ok(Opened::Packet { inner, .. }) => assert_eq!(&d[inner], &pkt[..]),
            other => panic!("the session was lost with the lease change: {other:?}"),
        }
        // ...and the initiation captured before is still refused as old (a fresh Tunn took
        // it once and moved A's endpoint to wherever the replay came from).
        let replayer = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 3), 4444));
        assert!(
            open(&b, &mut b_in, replayer, &mut captured.clone()).is_err(),
            "a replayed initiation was taken"
        );
    }

    #[test]
    fn handshake_then_sealed_packets_open_once_and_only_from_their_peer() {
        let (a, b) = pair(Some([3; 32]));
        let (mut a_out, mut a_in) = (a.transform.outbound(), a.transform.inbound());
        let mut b_in = b.transform.inbound();
        let from_a = a.out.local_addr().unwrap();
        let from_b = b.inbox.local_addr().unwrap();
        let pkt = tcp_packet(1, 0x18, &[0xab; 600], 64);

        // No session: the packet waits, a handshake initiation goes to B.
        assert_eq!(seal(&a, &mut a_out, &pkt), Err(DropReason::NoSession));
        let mut init = recv(&b);
        assert_eq!(init[0], MSG_HANDSHAKE_INIT);
        assert_eq!(open(&b, &mut b_in, from_a, &mut init), Ok(Opened::Consumed));
        // B's response goes back to where the initiation came from: A's own socket.
        let mut resp = recv_on(&a.out);
        assert_eq!(resp.first(), Some(&MSG_HANDSHAKE_RESP));
        assert_eq!(open(&a, &mut a_in, from_b, &mut resp), Ok(Opened::Consumed));
        // A confirmed with a keepalive and flushed the waiting packet to B's endpoint.
        let mut keepalive = recv(&b);
        let mut queued = recv(&b);
        if keepalive.len() > queued.len() {
            std::mem::swap(&mut keepalive, &mut queued);
        }
        assert_eq!(
            open(&b, &mut b_in, from_a, &mut keepalive),
            Ok(Opened::Consumed)
        );
        let replay = queued.clone();
        match open(&b, &mut b_in, from_a, &mut queued) {
            Ok(Opened::Packet { inner, .. }) => assert_eq!(&queued[inner], &pkt[..]),
            other => panic!("{other:?}"),
        }
        // With a session, packets seal in place and open byte for byte.
        let mut d = seal(&a, &mut a_out, &pkt).unwrap();
        assert_eq!(d.len(), pkt.len() + HEADER_LEN + TAG_LEN);
        match open(&b, &mut b_in, from_a, &mut d) {
            Ok(Opened::Packet { inner, .. }) => assert_eq!(&d[inner], &pkt[..]),
            other => panic!("{other:?}"),
        }
        // A replay, a flipped bit, an unleased sender, an inner source outside A's subnet.
        assert_eq!(
            open(&b, &mut b_in, from_a, &mut replay.clone()),
            Err(DropReason::Replay)
        );
        let mut bad = seal(&a, &mut a_out, &pkt).unwrap();
        bad[40] ^= 1;
        assert_eq!(
            open(&b, &mut b_in, from_a, &mut bad),
            Err(DropReason::Unauthenticated)
        );
        let stranger = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 1));
        let mut d = seal(&a, &mut a_out, &pkt).unwrap();
        assert_eq!(
            open(&b, &mut b_in, stranger, &mut d),
            Err(DropReason::UnknownPeer)
        );
        let mut spoofed = pkt.clone();
        spoofed[12..16].copy_from_slice(&[10, 5, 9, 9]);
        spoofed[10..12].fill(0);
        let c = packet::checksum(&spoofed[..20]);
        spoofed[10..12].copy_from_slice(&c.to_be_bytes());
        let mut d = seal(&a, &mut a_out, &spoofed).unwrap();
        assert_eq!(
            open(&b, &mut b_in, from_a, &mut d),
            Err(DropReason::SpoofedSource)
        );
        let peer_a = b.transform.table.load().peers[0].clone();
        assert_eq!(peer_a.drops.replays.load(Ordering::Relaxed), 1);
        assert_eq!(peer_a.drops.spoofed.load(Ordering::Relaxed), 1);
        // Junk of every length never panics.
        for len in 0..200 {
            let mut junk: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            if len >= 4 {
                junk[..4].copy_from_slice(&[(len % 5) as u8, 0, 0, 0]);
            }
            assert!(open(&b, &mut b_in, from_a, &mut junk).is_err() || len < 4);
        }
    }

    /// Where B's engine would send a packet for A's subnet.
    fn destination_of_a(b: &Node, out: &mut WgOutbound) -> SocketAddr {
        let mut p = tcp_packet(1, 0x10, &[1; 10], 64);
        // 10.5.2.3 → 10.5.1.2: swapping the addresses leaves both checksums as they are.
        p[12..20].rotate_left(4);
        let ip = packet::parse_ipv4(&p, true).unwrap();
        let mut ctl = Control::new(&b.out);
        out.route(&mut p, &ip, &mut ctl).unwrap().to
    }

    #[test]
    fn a_peer_roams_to_where_its_authenticated_messages_come_from_and_only_those_move_it() {
        let (a, b) = pair(None);
        let (mut a_out, mut a_in) = (a.transform.outbound(), a.transform.inbound());
        let (mut b_out, mut b_in) = (b.transform.outbound(), b.transform.inbound());
        let peer_a = b.transform.table.load().peers[0].clone();
        let leased = a.inbox.local_addr().unwrap();
        assert_eq!(destination_of_a(&b, &mut b_out), leased);
        // A's messages leave from another port than its lease names (its `out` socket), as
        // through a NAT that rewrites ports: the authenticated handshake moves B's sends.
        let from_a = a.out.local_addr().unwrap();
        assert_ne!(from_a, leased);
        establish(&a, &b, &mut a_out, &mut a_in, &mut b_in);
        assert_eq!(peer_a.endpoint(), from_a);
        assert_eq!(destination_of_a(&b, &mut b_out), from_a);

        // From yet another port: a forged tag, a replay and junk move nothing.
        let elsewhere = SocketAddr::from((Ipv4Addr::LOCALHOST, leased.port() ^ 0x5a5a));
        let pkt = tcp_packet(2, 0x18, &[7; 300], 64);
        let mut good = seal(&a, &mut a_out, &pkt).unwrap();
        let replay = good.clone();
        assert!(open(&b, &mut b_in, from_a, &mut good).is_ok());
        let mut forged = seal(&a, &mut a_out, &pkt).unwrap();
        forged[40] ^= 1;
        assert_eq!(
            open(&b, &mut b_in, elsewhere, &mut forged),
            Err(DropReason::Unauthenticated)
        );
        assert_eq!(
            open(&b, &mut b_in, elsewhere, &mut replay.clone()),
            Err(DropReason::Replay)
        );
        let mut junk = vec![MSG_HANDSHAKE_INIT, 0, 0, 0];
        junk.resize(HANDSHAKE_INIT_LEN, 9);
        assert!(open(&b, &mut b_in, elsewhere, &mut junk).is_err());
        assert_eq!(
            peer_a.endpoint(),
            from_a,
            "only authenticated messages roam"
        );

        // A data message from there does, one by one or as a batch.
        let mut d = seal(&a, &mut a_out, &pkt).unwrap();
        assert!(open(&b, &mut b_in, elsewhere, &mut d).is_ok());
        assert_eq!(peer_a.endpoint(), elsewhere);
        let pkts: Vec<Vec<u8>> = (0..20u32)
            .map(|i| tcp_packet(10 + i, 0x10, &[i as u8; 200], 64))
            .collect();
        let (mut wire, ranges) = seal_as_batch(&a, &mut a_out, &pkts, None);
        let opened = open_as_batch(&b, &mut b_in, from_a, &mut wire, &ranges, None);
        assert!(opened.iter().all(Result::is_ok), "{opened:?}");
        assert_eq!(peer_a.endpoint(), from_a);
        assert_eq!(destination_of_a(&b, &mut b_out), from_a);
    }

    #[test]
    fn a_peer_behind_an_address_rewriting_nat_returns_a_cookie_then_is_answered_there() {
        let (mut a, b) = pair(None);
        // B's messages reach A from an address no lease names (a NAT rewrote it): a socket
        // on 127.0.0.2, so what A sends there can be read.
        let nat = loopback("127.0.0.2".parse().unwrap());
        let from_nat = nat.local_addr().unwrap();
        let from_a = a.out.local_addr().unwrap();
        let init_of_b = || {
            let peer = b.transform.table.load().peers[0].clone();
            let mut buf = vec![0u8; 256];
            match peer.tunn().format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(m) => m.to_vec(),
                other => panic!("no initiation: {other:?}"),
            }
        };
        let recv_nat = || {
            let mut buf = vec![0u8; 2048];
            let (len, _) = nat.recv_from(&mut buf).unwrap();
            buf.truncate(len);
            buf
        };

        // Lease-only roaming: dropped before any crypto.
        let mut a_in = a.transform.inbound();
        assert_eq!(
            open(&a, &mut a_in, from_nat, &mut init_of_b()),
            Err(DropReason::UnknownPeer)
        );

        a.transform.unleased = Some(Arc::new(UnleasedGate::new(
            a.transform.limiter.clone(),
            crate::backend::wireguard::unleased::LIMITS,
        )));
        let (mut a_out, mut a_in) = (a.transform.outbound(), a.transform.inbound());
        let (mut b_out, mut b_in) = (b.transform.outbound(), b.transform.inbound());
        let peer_b = a.transform.table.load().peers[0].clone();
        let leased_b = peer_b.endpoint();
        // The first initiation gets a cookie, not a handshake.
        assert_eq!(
            open(&a, &mut a_in, from_nat, &mut init_of_b()),
            Ok(Opened::Consumed)
        );
        let mut cookie = recv_nat();
        assert_eq!(cookie[0], MSG_COOKIE_REPLY);
        assert_eq!(peer_b.endpoint(), leased_b, "a cookie moves nothing");
        // B takes it (from A's address); its next initiation carries it and is answered
        // where it came from, and A's peer moves there.
        assert_eq!(
            open(&b, &mut b_in, from_a, &mut cookie),
            Ok(Opened::Consumed)
        );
        assert_eq!(
            open(&a, &mut a_in, from_nat, &mut init_of_b()),
            Ok(Opened::Consumed)
        );
        let mut resp = recv_nat();
        assert_eq!(resp[0], MSG_HANDSHAKE_RESP);
        assert_eq!(peer_b.endpoint(), from_nat);
        assert_eq!(peer_b.roams.load(Ordering::Relaxed), 1);
        assert_eq!(open(&b, &mut b_in, from_a, &mut resp), Ok(Opened::Consumed));
        // Its keepalive confirms the session (to where the response came from).
        let mut keepalive = recv_on(&a.out);
        assert!(open(&a, &mut a_in, from_nat, &mut keepalive).is_ok());

        // Data both ways: B's from the NAT's address opens at A; A's goes to that address.
        let pkt = tcp_packet(3, 0x18, &[5; 300], 64);
        // 10.5.2.3 → 10.5.1.2: swapping the addresses leaves both checksums as they are.
        let mut from_b = pkt.clone();
        from_b[12..20].rotate_left(4);
        let mut d = seal(&b, &mut b_out, &from_b).unwrap();
        let forged = {
            let mut f = d.clone();
            f[40] ^= 1;
            f
        };
        assert_eq!(
            open(&a, &mut a_in, from_nat, &mut forged.clone()),
            Err(DropReason::Unauthenticated)
        );
        assert!(matches!(
            open(&a, &mut a_in, from_nat, &mut d),
            Ok(Opened::Packet { .. })
        ));
        let mut back = seal(&a, &mut a_out, &pkt).unwrap();
        let to = {
            let ip = packet::parse_ipv4(&pkt, true).unwrap();
            let mut ctl = Control::new(&a.out);
            a_out.route(&mut pkt.clone(), &ip, &mut ctl).unwrap().to
        };
        assert_eq!(to, from_nat, "A answers where B's messages come from");
        assert!(open(&b, &mut b_in, from_a, &mut back).is_ok());
    }

    #[test]
    fn a_handshake_response_from_an_unleased_address_returns_a_cookie_unless_it_is_the_endpoint() {
        let (mut a, b) = pair(None);
        a.transform.unleased = Some(Arc::new(UnleasedGate::new(
            a.transform.limiter.clone(),
            crate::backend::wireguard::unleased::LIMITS,
        )));
        let (mut a_out, mut a_in) = (a.transform.outbound(), a.transform.inbound());
        let mut b_in = b.transform.inbound();
        let from_a = a.out.local_addr().unwrap();
        let from_b = b.inbox.local_addr().unwrap();
        let nat = loopback("127.0.0.2".parse().unwrap());
        let from_nat = nat.local_addr().unwrap();
        let peer_b = a.transform.table.load().peers[0].clone();
        let pkt = tcp_packet(1, 0x18, &[1; 100], 64);
        // A initiates; B answers.
        assert_eq!(seal(&a, &mut a_out, &pkt), Err(DropReason::NoSession));
        let mut init = recv(&b);
        assert_eq!(open(&b, &mut b_in, from_a, &mut init), Ok(Opened::Consumed));
        let resp = recv_on(&a.out);
        assert_eq!(resp[0], MSG_HANDSHAKE_RESP);
        // The response as if from an address no lease names and not the endpoint: a
        // cookie goes there, and no session comes of it.
        assert_eq!(
            open(&a, &mut a_in, from_nat, &mut resp.clone()),
            Ok(Opened::Consumed)
        );
        let mut buf = vec![0u8; 256];
        let (n, _) = nat.recv_from(&mut buf).unwrap();
        assert_eq!(buf[0], MSG_COOKIE_REPLY, "{:?}", &buf[..n]);
        assert_eq!(seal(&a, &mut a_out, &pkt), Err(DropReason::NoSession));
        assert_eq!(peer_b.endpoint(), from_b);
        // Once B's endpoint is that address (it roamed there), its response passes.
        assert!(peer_b.roam(from_nat, Origin::Unleased).is_some());
        let mut init = {
            let mut t = peer_b.tunn();
            match t.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(m) => m.to_vec(),
                other => panic!("no initiation: {other:?}"),
            }
        };
        assert_eq!(open(&b, &mut b_in, from_a, &mut init), Ok(Opened::Consumed));
        let mut resp = recv_on(&a.out);
        assert_eq!(resp[0], MSG_HANDSHAKE_RESP);
        assert_eq!(
            open(&a, &mut a_in, from_nat, &mut resp),
            Ok(Opened::Consumed)
        );
        assert!(seal(&a, &mut a_out, &pkt).is_ok(), "a session now");
    }

    #[test]
    fn mutated_messages_from_leased_and_unleased_addresses_never_panic_or_get_through() {
        for opens in [Aead::Ring].into_iter().chain(Aead::ipsec_mb_for_tests()) {
            mutated_messages_round(opens);
        }
    }

    fn mutated_messages_round(opens: Aead) {
        use crate::engine::packet::test_util::Rng;
        let (a, mut b) = pair(None);
        b.transform.aead = opens;
        b.transform.unleased = Some(Arc::new(UnleasedGate::new(
            b.transform.limiter.clone(),
            crate::backend::wireguard::unleased::LIMITS,
        )));
        let (mut a_out, _a_in, mut b_in) = established(&a, &b);
        let peer_a = b.transform.table.load().peers[0].clone();
        let endpoint = peer_a.endpoint();
        let from_a = a.out.local_addr().unwrap();
        // Valid messages of each kind to start from: data (a keepalive-sized one too), an
        // initiation from a stranger, a response-shaped and a cookie-shaped message.
        let mut valids: Vec<Vec<u8>> = (0..4u32)
            .map(|i| {
                seal(
                    &a,
                    &mut a_out,
                    &tcp_packet(100 + i, 0x18, &[i as u8; 200], 64),
                )
            })
            .collect::<Result<_, _>>()
            .unwrap();
        let stranger = StaticSecret::from([77u8; 32]);
        let mut t = Tunn::new(stranger, b.transform.key.public, None, None, 3, None);
        let mut buf = vec![0u8; 256];
        if let TunnResult::WriteToNetwork(m) = t.format_handshake_initiation(&mut buf, false) {
            valids.push(m.to_vec());
        }
        let mut resp = vec![MSG_HANDSHAKE_RESP, 0, 0, 0];
        resp.resize(92, 0x11);
        let mut cookie = vec![MSG_COOKIE_REPLY, 0, 0, 0];
        cookie.resize(64, 0x22);
        valids.extend([resp, cookie]);
        let unleased = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 9));
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut ctl = Control::new(&b.out);
        for round in 0..20_000 {
            let valid = &valids[rng.below(valids.len())];
            let mut d = if rng.below(4) == 0 {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                let cut = if rng.below(3) == 0 {
                    rng.below(valid.len() + 1)
                } else {
                    valid.len()
                };
                let mut d = valid[..cut].to_vec();
                for _ in 0..1 + rng.below(3) {
                    if !d.is_empty() {
                        let i = rng.below(d.len());
                        d[i] ^= 1 + rng.below(255) as u8;
                    }
                }
                d
            };
            let from = if round % 2 == 0 { from_a } else { unleased };
            let Ok(mut sender) = b_in.sender(from) else {
                continue;
            };
            let got_through = |o: &Result<Opened, DropReason>| {
                matches!(o, Ok(Opened::Packet { .. } | Opened::Packet6 { .. }))
            };
            if rng.below(2) == 0 {
                let r = sender.open(&mut d, &mut ctl);
                assert!(!got_through(&r), "a mutated message got through: {r:?}");
            } else {
                // The same bytes cut into a GRO receive's datagrams.
                let seg = 1 + rng.below(d.len().max(1));
                let ranges: Vec<Range<usize>> = (0..d.len())
                    .step_by(seg)
                    .map(|s| s..(s + seg).min(d.len()))
                    .collect();
                let mut out = Vec::new();
                sender.open_batch(&mut d, &ranges, &mut out, &mut ctl);
                assert_eq!(out.len(), ranges.len());
                assert!(!out.iter().any(got_through), "{out:?}");
            }
        }
        assert_eq!(
            peer_a.endpoint(),
            endpoint,
            "nothing mutated moved the endpoint"
        );
        // And the session still works.
        let mut d = seal(&a, &mut a_out, &tcp_packet(999, 0x18, &[9; 100], 64)).unwrap();
        assert!(matches!(
            open(&b, &mut b_in, from_a, &mut d),
            Ok(Opened::Packet { .. })
        ));
    }

    /// An IPv6 packet from `src` to `dst` with `len` bytes of payload (no next header).
    fn v6_packet(src: &str, dst: &str, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = 59;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        p.extend((0..len).map(|i| i as u8));
        p
    }

    #[test]
    fn inner_ipv6_over_an_ipv6_underlay_is_routed_sealed_and_source_checked() {
        if StdSocket::bind("[::1]:0").is_err() {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        }
        let (a, b) = pair_on(None, IpAddr::V6(Ipv6Addr::LOCALHOST));
        let (mut a_out, mut a_in) = (a.transform.outbound(), a.transform.inbound());
        let mut b_in = b.transform.inbound();
        let from_a = a.out.local_addr().unwrap();
        let from_b = b.inbox.local_addr().unwrap();
        let pkt = v6_packet("fd00:5:1::9", "fd00:5:2::7", 700);
        // Handshake over IPv6, as over IPv4.
        assert_eq!(seal(&a, &mut a_out, &pkt), Err(DropReason::NoSession));
        let mut init = recv(&b);
        assert_eq!(open(&b, &mut b_in, from_a, &mut init), Ok(Opened::Consumed));
        let mut resp = recv_on(&a.out);
        assert_eq!(open(&a, &mut a_in, from_b, &mut resp), Ok(Opened::Consumed));
        let _ = (recv(&b), recv(&b)); // the confirming keepalive and the queued packet
        let mut d = seal(&a, &mut a_out, &pkt).unwrap();
        match open(&b, &mut b_in, from_a, &mut d) {
            Ok(Opened::Packet6 { inner }) => assert_eq!(&d[inner], &pkt[..]),
            other => panic!("{other:?}"),
        }
        // IPv4 inner packets ride the same device (one-device modes carry both families).
        let v4 = tcp_packet(1, 0x18, &[0xcd; 300], 64);
        let mut d = seal(&a, &mut a_out, &v4).unwrap();
        assert!(matches!(
            open(&b, &mut b_in, from_a, &mut d),
            Ok(Opened::Packet { .. })
        ));
        // Cryptokey routing for IPv6: a source outside A's IPv6 subnet, a destination
        // nobody holds, one outside the network, one of our own.
        let mut d = seal(&a, &mut a_out, &v6_packet("fd00:5:9::1", "fd00:5:2::7", 10)).unwrap();
        assert_eq!(
            open(&b, &mut b_in, from_a, &mut d),
            Err(DropReason::SpoofedSource)
        );
        for (dst, why) in [
            ("fd00:5:3::1", DropReason::NoRoute),
            ("fd00:6::1", DropReason::OutsideNetwork),
            ("fd00:5:1::1", DropReason::NotLocal),
        ] {
            assert_eq!(
                seal(&a, &mut a_out, &v6_packet("fd00:5:1::9", dst, 10)),
                Err(why),
                "{dst}"
            );
        }
        let peer_a = b.transform.table.load().peers[0].clone();
        assert_eq!(peer_a.drops.spoofed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_handshake_flood_gets_cookies_not_handshakes() {
        let (a, b) = pair(None);
        let mut b_in = b.transform.inbound();
        let from_a = a.out.local_addr().unwrap();
        let peer_b = a.transform.table.load().peers[0].clone();
        let mut buf = [0u8; 256];
        let (mut responses, mut cookies) = (0, 0);
        for _ in 0..120 {
            let mut init = match peer_b.tunn().format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(m) => m.to_vec(),
                other => panic!("{other:?}"),
            };
            assert_eq!(open(&b, &mut b_in, from_a, &mut init), Ok(Opened::Consumed));
            match recv_on(&a.out).first() {
                Some(&MSG_HANDSHAKE_RESP) => responses += 1,
                Some(&MSG_COOKIE_REPLY) => cookies += 1,
                other => panic!("{other:?}"),
            }
        }
        // The limiter (100 a second here) counts each initiation twice: once before the
        // initiator is looked up, once in its peer's state.
        assert!((40..=60).contains(&responses), "{responses} responses");
        assert_eq!(responses + cookies, 120);
    }
}

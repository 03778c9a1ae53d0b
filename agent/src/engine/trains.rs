//! The send planner: outgoing datagrams as UDP messages, consecutive datagrams to one peer
//! joined into segment trains that leave as one UDP GSO send, even across TUN reads (a
//! 64 KiB TCP super-packet is ~46 segments, more than one send may carry).

use std::net::SocketAddr;
use std::ops::Range;

/// The kernel's limit of segments per UDP GSO send.
pub const UDP_MAX_SEGMENTS: usize = 64;
/// The largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65507;

/// Where one piece of an outgoing datagram lies in the TX worker's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// In a TUN read slot (a payload sent without copying).
    Read { off: usize, len: usize },
    /// In the header arena (a segment's IP and TCP header).
    Header { off: usize, len: usize },
    /// In the sealed arena (a whole datagram a transform wrapped).
    Sealed { off: usize, len: usize },
}

impl Part {
    pub fn len(&self) -> usize {
        match *self {
            Part::Read { len, .. } | Part::Header { len, .. } | Part::Sealed { len, .. } => len,
        }
    }
}

/// One UDP message to send: `parts` (indices into the parts list) gathered; the kernel
/// splits it into `count` datagrams of `stride` bytes (the last one may be shorter) when it
/// carries more than one. All of them for one peer `P` of the transform's.
#[derive(Clone, Debug)]
pub struct OutMsg<P> {
    pub parts: Range<usize>,
    pub stride: usize,
    pub count: usize,
    pub bytes: usize,
    /// Whether another datagram may join: the last one added was a full `stride`.
    open: bool,
    pub dst: SocketAddr,
    pub peer: P,
}

impl<P: Copy + PartialEq> OutMsg<P> {
    /// The UDP_SEGMENT size to pass, or 0 for a plain datagram.
    pub fn segment(&self) -> u16 {
        if self.count > 1 {
            self.stride as u16
        } else {
            0
        }
    }

    /// Whether a datagram of `len` bytes to `dst` and `peer` can join this message's segment
    /// train: the kernel's UDP GSO takes equal segments (only the last may be shorter), at
    /// most 64 of them and 64 KiB in all.
    fn can_take(&self, dst: SocketAddr, peer: P, len: usize) -> bool {
        self.open
            && self.dst == dst
            && self.peer == peer
            && len <= self.stride
            && self.count < UDP_MAX_SEGMENTS
            && self.bytes + len <= MAX_UDP_PAYLOAD
    }
}

/// The messages waiting for the next sendmmsg, and the pieces they gather; `P` is the peer
/// of the transform's each message is for.
pub struct SendQueue<P> {
    parts: Vec<Part>,
    msgs: Vec<OutMsg<P>>,
    /// Whether datagrams may join segment trains (UDP GSO on).
    trains: bool,
}

impl<P: Copy + PartialEq> SendQueue<P> {
    /// A queue with room for `parts` pieces and `msgs` messages allocated up front.
    pub fn with_capacity(parts: usize, msgs: usize, trains: bool) -> SendQueue<P> {
        SendQueue {
            parts: Vec::with_capacity(parts),
            msgs: Vec::with_capacity(msgs),
            trains,
        }
    }

    /// Queues one datagram for `dst` (the transform's `peer`), gathered from `pieces`: it
    /// joins the last message's segment train when it can.
    pub fn push(&mut self, dst: SocketAddr, peer: P, pieces: impl IntoIterator<Item = Part>) {
        let parts_start = self.parts.len();
        let mut len = 0;
        for p in pieces {
            len += p.len();
            self.parts.push(p);
        }
        let parts_end = self.parts.len();
        if self.trains
            && let Some(m) = self.msgs.last_mut()
            && m.can_take(dst, peer, len)
        {
            m.parts.end = parts_end;
            m.count += 1;
            m.bytes += len;
            m.open = len == m.stride;
            return;
        }
        self.msgs.push(OutMsg {
            parts: parts_start..parts_end,
            stride: len,
            count: 1,
            bytes: len,
            open: true,
            dst,
            peer,
        });
    }

    /// The messages in sending order.
    pub fn msgs(&self) -> &[OutMsg<P>] {
        &self.msgs
    }

    /// The pieces `m` gathers.
    pub fn parts(&self, m: &OutMsg<P>) -> &[Part] {
        &self.parts[m.parts.clone()]
    }

    /// Whether datagrams still join segment trains.
    pub fn trains(&self) -> bool {
        self.trains
    }

    /// From now on every datagram is a message of its own (UDP GSO sends failed).
    pub fn stop_trains(&mut self) {
        self.trains = false;
    }

    /// The pieces of each datagram of `m`, in order: a train's parts cut at every `stride`
    /// bytes (a datagram's pieces never straddle two datagrams).
    pub fn datagrams<'a>(&'a self, m: &OutMsg<P>) -> Vec<&'a [Part]> {
        let parts = self.parts(m);
        let mut out = Vec::with_capacity(m.count);
        let (mut start, mut len) = (0, 0);
        for (i, p) in parts.iter().enumerate() {
            len += p.len();
            if len >= m.stride || i + 1 == parts.len() {
                out.push(&parts[start..=i]);
                start = i + 1;
                len = 0;
            }
        }
        out
    }

    /// Forgets everything queued (after it was sent).
    pub fn clear(&mut self) {
        self.msgs.clear();
        self.parts.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_train_splits_back_into_its_datagrams() {
        let mut q = SendQueue::with_capacity(16, 4, true);
        let h = |off| Part::Header { off, len: 52 };
        let r = |off, len| Part::Read { off, len };
        q.push(peer(2), (), [h(0), r(0, 1400)]);
        q.push(peer(2), (), [h(52), r(1400, 1400)]);
        q.push(peer(2), (), [h(104), r(2800, 300)]);
        let m = q.msgs()[0].clone();
        assert_eq!(m.count, 3);
        let d = q.datagrams(&m);
        assert_eq!(
            d,
            vec![
                &[h(0), r(0, 1400)][..],
                &[h(52), r(1400, 1400)],
                &[h(104), r(2800, 300)]
            ]
        );
    }

    fn peer(last: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(172, 31, 0, last), 8285))
    }

    /// Feeds datagrams of the given lengths (two pieces each, as a segment's header and
    /// payload) for `dst` into the queue.
    fn train(q: &mut SendQueue<()>, dst: SocketAddr, lens: &[usize]) {
        for &len in lens {
            q.push(
                dst,
                (),
                [Part::Header { off: 0, len: 0 }, Part::Read { off: 0, len }],
            );
        }
    }

    fn shape<P: Copy + PartialEq>(q: &SendQueue<P>) -> Vec<(usize, u16)> {
        q.msgs().iter().map(|m| (m.count, m.segment())).collect()
    }

    #[test]
    fn segment_trains_span_reads_and_respect_the_gso_limits() {
        // Two super-packets of 46 full segments (1472 bytes): 44 fit in one send (64 KiB),
        // the rest continue across the read boundary instead of leaving as a 2-segment send.
        let mut q = SendQueue::with_capacity(0, 0, true);
        train(&mut q, peer(12), &[1472; 92]);
        assert_eq!(shape(&q), vec![(44, 1472), (44, 1472), (4, 1472)]);
        // Parts stay contiguous and in order.
        let m = q.msgs();
        assert_eq!(m[0].parts, 0..88);
        assert_eq!(m[1].parts, 88..176);
        assert_eq!(m[2].parts, 176..184);

        // A shorter segment ends a train; a longer one starts a new one; so does a new peer.
        let mut q = SendQueue::with_capacity(0, 0, true);
        train(&mut q, peer(12), &[1472, 1472, 600, 1472]);
        train(&mut q, peer(13), &[1472]);
        train(&mut q, peer(13), &[52, 1472]);
        assert_eq!(
            shape(&q),
            vec![(3, 1472), (1, 0), (2, 1472), (1, 0)],
            "{:?}",
            q.msgs()
                .iter()
                .map(|x| (x.dst, x.count, x.bytes))
                .collect::<Vec<_>>()
        );

        // Small packets (TCP ACKs) share a send up to the kernel's 64 segments.
        let mut q = SendQueue::with_capacity(0, 0, true);
        train(&mut q, peer(12), &[52; 70]);
        assert_eq!(shape(&q), vec![(64, 52), (6, 52)]);
        assert!(q.msgs().iter().all(|x| x.bytes <= MAX_UDP_PAYLOAD));

        // Without offloads every datagram is its own message.
        let mut q = SendQueue::with_capacity(0, 0, false);
        train(&mut q, peer(12), &[1472; 3]);
        assert_eq!(shape(&q), vec![(1, 0); 3]);
        q.clear();
        assert!(q.msgs().is_empty());

        // Two of the transform's peers at one address (two nodes behind one NAT port, in
        // turn) never share a send: what the kernel takes is reported per peer.
        let mut q = SendQueue::with_capacity(0, 0, true);
        for who in [1u32, 1, 2, 2] {
            q.push(peer(12), who, [Part::Read { off: 0, len: 1472 }]);
        }
        assert_eq!(shape(&q), vec![(2, 1472), (2, 1472)]);
        assert_eq!(q.msgs().iter().map(|m| m.peer).collect::<Vec<_>>(), [1, 2]);
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
            let mut q = SendQueue::with_capacity(0, 0, true);
            let mut sent = Vec::new();
            for _ in 0..next(400) {
                let dst = peer(10 + next(3) as u8);
                let len = match next(5) {
                    0 => 52,
                    1 | 2 => 1472,
                    3 => 1400,
                    _ => 1 + next(1472) as usize,
                };
                q.push(dst, (), [Part::Read { off: 0, len }]);
                sent.push((dst, len));
            }
            let mut at = 0;
            for m in q.msgs() {
                let group = &sent[at..at + m.count];
                assert!(m.count <= UDP_MAX_SEGMENTS, "case {case}");
                assert!(m.bytes <= MAX_UDP_PAYLOAD, "case {case}");
                assert_eq!(m.bytes, group.iter().map(|g| g.1).sum::<usize>());
                assert_eq!(m.parts, at..at + m.count, "case {case}: order");
                assert_eq!(q.parts(m).len(), m.count, "case {case}");
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
}

//! Why the data path did not forward a packet.

/// Why a packet was not forwarded. Each reason has its own counter in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A datagram from an address that holds no current lease.
    UnknownPeer,
    /// The inner source is outside the sending peer's leased subnet.
    SpoofedSource,
    /// The inner destination is not in this node's subnet (received) or is (sent): never
    /// reflect a packet back out.
    NotLocal,
    /// Shorter than its headers say.
    Truncated,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// IPv6 (the overlay is IPv4 only, like Flannel's udp backend).
    Ipv6,
    /// A bad header: length fields, header checksum, a GSO header we cannot handle.
    Malformed,
    /// TUN → UDP: bigger than the TUN MTU, or than the room a transform has for it.
    /// Received packets are never dropped for their size: one over the MTU is delivered and
    /// counted in `Stats::rx_over_mtu_packets`.
    Oversize,
    /// The inner TTL ran out.
    TtlExpired,
    /// No peer holds the destination (an ICMP net unreachable went back).
    NoRoute,
    /// The destination is outside the overlay network.
    OutsideNetwork,
    /// An encrypting backend (wireguard): a datagram that failed authentication (bad tag,
    /// bad MAC, unknown session index, not a protocol message).
    Unauthenticated,
    /// An encrypting backend: a datagram whose counter was seen before or is too old.
    Replay,
    /// An encrypting backend: no session with the peer yet; the packet waits for the
    /// handshake (a few hundred per peer, dropped beyond).
    NoSession,
    /// An encrypting backend: a handshake from an address no lease names, over the budget
    /// of such handshakes (per address, or all of them together).
    HandshakeBudget,
}

impl DropReason {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [DropReason; 15] = [
        DropReason::UnknownPeer,
        DropReason::SpoofedSource,
        DropReason::NotLocal,
        DropReason::Truncated,
        DropReason::NotIp,
        DropReason::Ipv6,
        DropReason::Malformed,
        DropReason::Oversize,
        DropReason::TtlExpired,
        DropReason::NoRoute,
        DropReason::OutsideNetwork,
        DropReason::Unauthenticated,
        DropReason::Replay,
        DropReason::NoSession,
        DropReason::HandshakeBudget,
    ];

    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotLocal => "not_local",
            DropReason::Truncated => "truncated",
            DropReason::NotIp => "not_ip",
            DropReason::Ipv6 => "ipv6",
            DropReason::Malformed => "malformed",
            DropReason::Oversize => "oversize",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoRoute => "no_route",
            DropReason::OutsideNetwork => "outside_network",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Replay => "replay",
            DropReason::NoSession => "no_session",
            DropReason::HandshakeBudget => "handshake_budget",
        }
    }

    /// Index into a counter array ordered like [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_sits_at_its_own_index() {
        for (i, why) in DropReason::ALL.iter().enumerate() {
            assert_eq!(why.index(), i, "{why:?}");
        }
    }
}

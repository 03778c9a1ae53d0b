//! Where the fields of the headers the data path reads and writes lie, and big-endian field
//! access. The offsets are those of the RFCs' header diagrams, relative to the header's start.

/// IPv4 header fields (RFC 791 §3.1).
pub mod ip {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VERSION_IHL: usize = 0;
    /// Type of service (DSCP and ECN).
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const ID: usize = 4;
    /// Flags (high 3 bits: reserved, DF, MF) and fragment offset (low 13 bits).
    pub const FLAGS_FRAGMENT: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// A header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// The DF bit in the first byte of [`FLAGS_FRAGMENT`].
    pub const DONT_FRAGMENT: u8 = 0x40;
    /// The fragment offset bits of the [`FLAGS_FRAGMENT`] word.
    pub const FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
    /// MF and the fragment offset: non-zero for every fragment.
    pub const MORE_FRAGMENTS_AND_OFFSET_MASK: u16 = 0x3fff;

    pub const PROTO_ICMP: u8 = 1;
    pub const PROTO_TCP: u8 = 6;
}

/// IPv6 fixed header fields (RFC 8200 §3).
pub mod ip6 {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    pub const HEADER_LEN: usize = 40;
}

/// TCP header fields (RFC 9293 §3.1).
pub mod tcp {
    /// Source port; the destination port follows, so a u32 here holds both.
    pub const PORTS: usize = 0;
    pub const SEQ: usize = 4;
    pub const ACK_NUM: usize = 8;
    /// Data offset in 32-bit words (high nibble).
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
    /// A header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const CWR: u8 = 0x80;
}

/// ICMP header fields (RFC 792).
pub mod icmp {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    /// The type-specific word (unused in destination unreachable).
    pub const REST: usize = 4;
    pub const HEADER_LEN: usize = 8;

    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIMESTAMP: u8 = 13;
    pub const TIMESTAMP_REPLY: u8 = 14;
    /// Code of [`DEST_UNREACHABLE`]: net unreachable.
    pub const NET_UNREACHABLE: u8 = 0;
}

/// `struct virtio_net_hdr` fields (little endian, as the TUN uses them on x86 and arm64).
pub mod vnet {
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: usize = 2;
    pub const GSO_SIZE: usize = 4;
    pub const CSUM_START: usize = 6;
    pub const CSUM_OFFSET: usize = 8;
}

pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(super) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The four address bytes at `at`.
pub(super) fn addr(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

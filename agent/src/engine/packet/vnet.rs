//! virtio-net headers: what the TUN puts before each packet with IFF_VNET_HDR (how a
//! super-packet is to be segmented, which checksum is left to complete).

use super::DropReason;
use super::checksum::{fold, sum};
use super::layout::{put16, vnet};

/// Size of `struct virtio_net_hdr` in front of every TUN packet (IFF_VNET_HDR).
pub const VNET_HDR_LEN: usize = twill_netkit::tun::VNET_HDR_LEN;

/// VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum at `csum_start + csum_offset` is partial.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// VIRTIO_NET_HDR_GSO_NONE: one plain packet.
pub const GSO_NONE: u8 = 0;
/// VIRTIO_NET_HDR_GSO_TCPV4: a TCP/IPv4 super-packet.
pub const GSO_TCPV4: u8 = 1;
/// VIRTIO_NET_HDR_GSO_TCPV6: a TCP/IPv6 super-packet.
pub const GSO_TCPV6: u8 = 4;
/// VIRTIO_NET_HDR_GSO_ECN: ORed into the GSO type when the flow uses ECN.
pub const GSO_ECN: u8 = 0x80;

/// A virtio-net header of all zeros: one plain packet, checksums complete.
pub const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// `struct virtio_net_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header at the start of `b` (callers check the length).
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[vnet::FLAGS],
            gso_type: b[vnet::GSO_TYPE],
            hdr_len: le(vnet::HDR_LEN),
            gso_size: le(vnet::GSO_SIZE),
            csum_start: le(vnet::CSUM_START),
            csum_offset: le(vnet::CSUM_OFFSET),
        })
    }

    /// The header as bytes.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[vnet::FLAGS] = self.flags;
        b[vnet::GSO_TYPE] = self.gso_type;
        let mut le = |at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        le(vnet::HDR_LEN, self.hdr_len);
        le(vnet::GSO_SIZE, self.gso_size);
        le(vnet::CSUM_START, self.csum_start);
        le(vnet::CSUM_OFFSET, self.csum_offset);
        b
    }
}

/// Completes a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM on a packet
/// without GSO): the field holds the pseudo-header sum; the sum runs from `csum_start`.
pub fn complete_checksum(pkt: &mut [u8], hdr: &VnetHdr) -> Result<(), DropReason> {
    let start = hdr.csum_start as usize;
    let field = start + hdr.csum_offset as usize;
    if start >= pkt.len() || field + 2 > pkt.len() {
        return Err(DropReason::Malformed);
    }
    // A sum of 0 goes out as 0xffff (the same in one's complement), as the kernel's own
    // completion does: in UDP a 0 means "no checksum", and over IPv6 the receiver drops it.
    let c = match !fold(sum(0, &pkt[start..])) {
        0 => 0xffff,
        c => c,
    };
    put16(pkt, field, c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_checksum_of_zero_is_written_as_ffff() {
        // A UDP header whose data sums to 0xffff: the checksum works out to 0.
        let mut pkt = [0x12, 0x34, 0xed, 0xc3, 0, 8, 0, 0];
        let hdr = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            csum_start: 0,
            csum_offset: 6,
            ..Default::default()
        };
        complete_checksum(&mut pkt, &hdr).unwrap();
        assert_eq!(&pkt[6..], &[0xff, 0xff]);
    }

    #[test]
    fn header_bytes_round_trip() {
        let h = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&h.to_bytes()), Some(h));
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
    }
}

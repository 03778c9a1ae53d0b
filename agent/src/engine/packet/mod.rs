//! The data path's packet logic as pure functions over byte slices: IPv4 header checks (and
//! IPv6's fixed header), TTL decrement, ICMP "net unreachable", virtio-net headers, TCP
//! segmentation of the TUN's super-packets and coalescing of received segments back into
//! super-packets. No I/O and no allocation here, so every function can be unit-tested and
//! fuzzed on its own.

mod checksum;
mod coalesce;
mod drop_reason;
mod icmp;
mod ipv4;
mod ipv6;
pub mod layout;
mod segment;
#[cfg(test)]
pub(crate) mod test_util;
mod vnet;

pub use checksum::{checksum, fold, sum};
pub use coalesce::{Coalescer, MAX_COALESCE, TunSink};
pub use drop_reason::DropReason;
pub use icmp::{icmp_net_unreachable, icmp6_no_route};
pub use ipv4::{Ipv4Info, MAX_IP_PACKET, decrement_ttl, parse_ipv4};
pub use ipv6::{Ipv6Info, parse_ipv6};
pub use segment::{
    MAX_SEGMENT_HEADER, MAX_SEGMENTS, SegmentPlan, segment_headers, segment_headers6,
};
pub use vnet::{
    GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, PLAIN, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr,
    complete_checksum,
};

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::layout::tcp;
    use super::test_util::{Rng, coalesce, tcp_packet};
    use super::*;

    #[test]
    fn garbage_never_panics_any_packet_function() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let valids = [
            tcp_packet(7, tcp::ACK, &[5; 3000], 64),
            test_util::tcp6_packet(7, tcp::ACK, &[5; 3000], 64),
        ];
        let mut headers = vec![0u8; MAX_SEGMENTS * MAX_SEGMENT_HEADER];
        let mut icmp = [0u8; 128];
        for _ in 0..30_000 {
            // Half mutations of a valid packet, half random bytes of random length.
            let mut p = if rng.below(2) == 0 {
                let valid = &valids[rng.below(2)];
                let mut p = valid[..rng.below(valid.len() + 1)].to_vec();
                for _ in 0..1 + rng.below(4) {
                    if !p.is_empty() {
                        let i = rng.below(p.len());
                        p[i] = rng.next() as u8;
                    }
                }
                p
            } else {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            };
            let _ = parse_ipv4(&p, true);
            let _ = parse_ipv6(&p);
            let _ = icmp_net_unreachable(&p, Ipv4Addr::new(10, 0, 0, 0), &mut icmp);
            let _ = icmp6_no_route(&p, std::net::Ipv6Addr::LOCALHOST, &mut icmp);
            let _ = segment_headers(&p, rng.below(3000), &mut headers);
            let _ = segment_headers6(&p, rng.below(3000), &mut headers);
            if let Some(h) = VnetHdr::parse(&p) {
                let _ = complete_checksum(&mut p.clone(), &h);
            }
            let _ = coalesce(&[p.clone(), p.clone()]);
            let _ = decrement_ttl(&mut p);
        }
    }
}

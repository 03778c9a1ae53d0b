//! The TUN data-path engine's packet functions on arbitrary bytes: what a peer or the TUN
//! could hand over. Nothing may panic, and every segment the sender would put on the wire must carry
//! valid IPv4 and TCP checksums (IPv6: a valid TCP checksum).
//! Run: `cd agent/fuzz && cargo fuzz run -s none udp_packets`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use twill_agent::engine::packet::layout::ip;
use twill_agent::engine::packet::{self, Coalescer, VnetHdr};

fuzz_target!(|data: &[u8]| {
    let Some((&gso_lo, rest)) = data.split_first() else {
        return;
    };
    let mut pkt = rest.to_vec();
    if let Ok(ip) = packet::parse_ipv4(&pkt, true) {
        let mut c = Coalescer::new();
        let buf = [pkt.as_slice(), pkt.as_slice()].concat();
        let mut sink = |_: &[u8; packet::VNET_HDR_LEN], parts: &[&[u8]]| {
            assert!(parts.iter().map(|p| p.len()).sum::<usize>() <= packet::MAX_IP_PACKET);
        };
        c.push(&buf, 0..pkt.len(), &ip, &mut sink);
        c.push(&buf, pkt.len()..buf.len(), &ip, &mut sink);
        c.flush(&buf, &mut sink);
    }
    if packet::parse_ipv6(&pkt).is_ok() {
        let mut c = Coalescer::new();
        let buf = [pkt.as_slice(), pkt.as_slice()].concat();
        let mut sink = |_: &[u8; packet::VNET_HDR_LEN], parts: &[&[u8]]| {
            assert!(parts.iter().map(|p| p.len()).sum::<usize>() <= packet::MAX_IP_PACKET);
        };
        c.push6(&buf, 0..pkt.len(), &mut sink);
        c.push6(&buf, pkt.len()..buf.len(), &mut sink);
        c.flush(&buf, &mut sink);
    }
    let mut icmp = [0u8; 128];
    let _ = packet::icmp_net_unreachable(&pkt, Ipv4Addr::new(10, 0, 0, 0), &mut icmp);
    let gso = 64 + gso_lo as usize * 8;
    let mut headers = vec![0u8; packet::MAX_SEGMENTS * packet::MAX_SEGMENT_HEADER];
    if let Ok(plan) = packet::segment_headers(&pkt, gso, &mut headers) {
        let hl = plan.header_len;
        for i in 0..plan.count {
            let mut seg = headers[i * hl..(i + 1) * hl].to_vec();
            seg.extend_from_slice(&pkt[plan.payload(i)]);
            let ihl = ((seg[0] & 0x0f) as usize) * 4;
            assert_eq!(
                packet::checksum(&seg[..ihl]),
                0,
                "IP checksum of segment {i}"
            );
            let pseudo = packet::sum(0, &seg[ip::SRC..ip::DST + 4])
                + ip::PROTO_TCP as u64
                + (seg.len() - ihl) as u64;
            assert_eq!(
                packet::fold(packet::sum(pseudo, &seg[ihl..])),
                0xffff,
                "TCP checksum"
            );
        }
    }
    if let Ok(plan) = packet::segment_headers6(&pkt, gso, &mut headers) {
        let hl = plan.header_len;
        for i in 0..plan.count {
            let mut seg = headers[i * hl..(i + 1) * hl].to_vec();
            seg.extend_from_slice(&pkt[plan.payload(i)]);
            assert!(
                packet::parse_ipv6(&seg).is_ok(),
                "IPv6 header of segment {i}"
            );
            // The TCP header follows the extension headers segmentation repeats (hop-by-hop,
            // routing with no segments left, destination options); the checksum covers TCP
            // on, with the upper-layer length.
            let (mut next, mut at) = (seg[6], 40);
            while matches!(next, 0 | 43 | 60) {
                next = seg[at];
                at += (seg[at + 1] as usize + 1) * 8;
            }
            assert_eq!(next, ip::PROTO_TCP, "TCP behind the headers of segment {i}");
            let pseudo =
                packet::sum(0, &seg[8..40]) + ip::PROTO_TCP as u64 + (seg.len() - at) as u64;
            assert_eq!(
                packet::fold(packet::sum(pseudo, &seg[at..])),
                0xffff,
                "TCPv6 checksum"
            );
        }
    }
    if let Some(h) = VnetHdr::parse(&pkt) {
        let _ = packet::complete_checksum(&mut pkt.clone(), &h);
    }
    let _ = packet::decrement_ttl(&mut pkt);
});

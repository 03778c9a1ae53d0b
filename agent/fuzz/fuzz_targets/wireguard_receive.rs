//! The wireguard backend's receive path on arbitrary datagrams from a leased peer's address:
//! message-type dispatch, receiver-index lookups, boringtun's checks, the inner-packet checks.
//! Nothing may panic, and nothing unauthenticated may come out as a packet.
//! Run: `cd agent/fuzz && cargo fuzz run -s none wireguard_receive`.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use libfuzzer_sys::fuzz_target;
use twill_agent::backend::wireguard::aead::{Aead, AeadChoice};
use twill_agent::backend::wireguard::key::NodeKey;
use twill_agent::backend::wireguard::table::{Peer, TableCell, WgTable};
use twill_agent::backend::wireguard::transform::WgTransform;
use twill_agent::backend::wireguard::unleased::{LIMITS, UnleasedGate};
use twill_agent::engine::sys::UdpSocket;
use twill_agent::engine::{Control, Inbound, Opened, Sender, Transform};
use twill_agent::lease::Subnets;

struct Fixture {
    transform: WgTransform,
    sock: UdpSocket,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let private = StaticSecret::from([1u8; 32]);
        let me = Arc::new(NodeKey {
            public: PublicKey::from(&private),
            private,
        });
        let other = PublicKey::from(&StaticSecret::from([2u8; 32]));
        let limiter = Arc::new(RateLimiter::new(&me.public, 100));
        let tunn = Tunn::new(
            me.private.clone(),
            other,
            None,
            None,
            5,
            Some(limiter.clone()),
        );
        let peer = Peer::new(
            5,
            *other.as_bytes(),
            "127.0.0.1:9".parse().unwrap(),
            Subnets {
                v4: Some("10.5.2.0/24".parse().unwrap()),
                v6: Some("fd00:5:2::/64".parse().unwrap()),
            },
            0,
            false,
            tunn,
        );
        let table = TableCell::new();
        table.publish(WgTable::new(
            Subnets {
                v4: Some("10.5.0.0/16".parse().unwrap()),
                v6: Some("fd00:5::/32".parse().unwrap()),
            },
            Subnets {
                v4: Some("10.5.1.0/24".parse().unwrap()),
                v6: Some("fd00:5:1::/64".parse().unwrap()),
            },
            vec![Arc::new(peer)],
        ));
        Fixture {
            transform: WgTransform {
                table,
                unleased: Some(Arc::new(UnleasedGate::new(limiter.clone(), LIMITS))),
                key: me,
                limiter,
                // What twilld picks here by default (intel-ipsec-mb where it can, else ring).
                aead: Aead::select(AeadChoice::Auto).map_or(Aead::Ring, |(a, _)| a),
            },
            // Replies (cookies, handshake responses) go nowhere useful: a discard port.
            sock: UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false).unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut inbound = f.transform.inbound();
    let mut ctl = Control::new(&f.sock);
    // From the peer's leased address and from one no lease names (the cookie gate's way).
    for from in ["127.0.0.1:9", "127.0.0.2:9"] {
        let mut d = data.to_vec();
        if let Ok(mut sender) = inbound.sender(from.parse().unwrap()) {
            // Without a session nothing can authenticate: no packet may come out.
            assert!(!matches!(
                sender.open(&mut d, &mut ctl),
                Ok(Opened::Packet { .. } | Opened::Packet6 { .. })
            ));
        }
    }
    // The same bytes as one GRO receive, cut into datagrams of the size the first byte says
    // (the batch path takes receives of 8 or more data messages of one session).
    let mut d = data.to_vec();
    let seg = usize::from(data.first().copied().unwrap_or(0)) + 1;
    let ranges: Vec<std::ops::Range<usize>> = (0..d.len())
        .step_by(seg)
        .map(|s| s..(s + seg).min(d.len()))
        .collect();
    if let Ok(mut sender) = inbound.sender("127.0.0.1:9".parse().unwrap()) {
        let mut out = Vec::new();
        sender.open_batch(&mut d, &ranges, &mut out, &mut ctl);
        assert_eq!(out.len(), ranges.len());
        assert!(
            !out.iter()
                .any(|o| matches!(o, Ok(Opened::Packet { .. } | Opened::Packet6 { .. })))
        );
    }
});

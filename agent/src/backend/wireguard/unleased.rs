//! Handshakes from addresses no lease names: a node behind a NAT that rewrites its address
//! speaks from one, and WireGuard (the kernel's, Flannel's backend) answers it there. Such an
//! address must first prove it receives what is sent to it — every initiation from it is
//! answered with a cookie until it comes back with that cookie (WireGuard's own mechanism,
//! which a leased address meets only under load) — and all of them together get a few
//! handshakes a second, so no address can buy the CPU with Diffie-Hellman work.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519::PublicKey;

/// Handshakes per second, from all unleased addresses together, that get as far as the
/// Diffie-Hellman work (after their cookie). WireGuard in the kernel allows 20 a second per
/// address; a node behind a NAT needs one every two minutes.
pub const HANDSHAKES_PER_SECOND: u32 = 20;

/// What the gate says about one handshake message from an unleased address.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Its MACs hold, its cookie too, and the budget has room: go on with the handshake.
    Pass,
    /// Send this cookie reply to where it came from (no state is kept).
    Cookie(&'a [u8]),
    /// Bad MACs, not a handshake, or over the budget.
    Drop,
}

/// The cookie check and the budget of unleased handshakes, shared by a device's workers.
pub struct UnleasedGate {
    /// A limiter that is always "under load": every message needs a valid cookie MAC.
    cookies: RateLimiter,
    budget: Mutex<Budget>,
    per_second: u32,
}

struct Budget {
    window: Instant,
    used: u32,
}

impl UnleasedGate {
    pub fn new(public: &PublicKey, per_second: u32) -> UnleasedGate {
        UnleasedGate {
            cookies: RateLimiter::new(public, 0),
            budget: Mutex::new(Budget {
                window: Instant::now(),
                used: 0,
            }),
            per_second,
        }
    }

    /// Checks a handshake message (initiation or response) from `src`; a cookie reply, when
    /// one is due, is written into `scratch`.
    pub fn check<'a>(&self, src: IpAddr, msg: &[u8], scratch: &'a mut [u8]) -> Verdict<'a> {
        match self.cookies.verify_packet(Some(src), msg, scratch) {
            Ok(Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)) => {
                if self.take(Instant::now()) {
                    Verdict::Pass
                } else {
                    Verdict::Drop
                }
            }
            Err(TunnResult::WriteToNetwork(cookie)) => Verdict::Cookie(cookie),
            Ok(_) | Err(_) => Verdict::Drop,
        }
    }

    /// One handshake from the budget of the second `now` falls in.
    fn take(&self, now: Instant) -> bool {
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(b.window) >= Duration::from_secs(1) {
            b.window = now;
            b.used = 0;
        }
        if b.used >= self.per_second {
            return false;
        }
        b.used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use boringtun::noise::Tunn;
    use boringtun::x25519::StaticSecret;

    use super::*;

    fn initiation(to: &PublicKey) -> (Tunn, Vec<u8>) {
        let me = StaticSecret::from([3u8; 32]);
        let mut tunn = Tunn::new(me, *to, None, None, 7, None);
        let mut buf = vec![0u8; 2048];
        let msg = match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("no initiation: {other:?}"),
        };
        (tunn, msg)
    }

    #[test]
    fn an_unleased_initiation_needs_its_cookie_and_then_a_place_in_the_budget() {
        let responder = StaticSecret::from([9u8; 32]);
        let public = PublicKey::from(&responder);
        let gate = UnleasedGate::new(&public, 2);
        let src: IpAddr = "198.51.100.7".parse().unwrap();
        let (mut initiator, first) = initiation(&public);
        let mut scratch = vec![0u8; 2048];
        // Without a cookie: a cookie reply, every time.
        let cookie = match gate.check(src, &first, &mut scratch) {
            Verdict::Cookie(c) => c.to_vec(),
            other => panic!("expected a cookie: {other:?}"),
        };
        assert!(matches!(
            gate.check(src, &first, &mut scratch),
            Verdict::Cookie(_)
        ));
        // The initiator takes the cookie; its next initiation carries it.
        let mut out = vec![0u8; 2048];
        assert!(matches!(
            initiator.decapsulate(None, &cookie, &mut out),
            TunnResult::Done
        ));
        let second = match initiator.format_handshake_initiation(&mut out, true) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("no second initiation: {other:?}"),
        };
        assert!(matches!(
            gate.check(src, &second, &mut scratch),
            Verdict::Pass
        ));
        // The cookie is bound to the address it was sent to.
        let elsewhere: IpAddr = "198.51.100.8".parse().unwrap();
        assert!(matches!(
            gate.check(elsewhere, &second, &mut scratch),
            Verdict::Cookie(_)
        ));
        // Two a second here: the third waits for the next second.
        assert!(matches!(
            gate.check(src, &second, &mut scratch),
            Verdict::Pass
        ));
        assert!(matches!(
            gate.check(src, &second, &mut scratch),
            Verdict::Drop
        ));
        assert!(gate.take(Instant::now() + Duration::from_secs(1)));
        // Junk and a data message are no handshakes.
        assert!(matches!(
            gate.check(src, &[1, 0, 0, 0, 5], &mut scratch),
            Verdict::Drop
        ));
        let mut data = vec![0u8; 64];
        data[0] = 4;
        assert!(matches!(
            gate.check(src, &data, &mut scratch),
            Verdict::Drop
        ));
    }
}

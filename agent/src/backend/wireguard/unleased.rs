//! Handshakes from addresses no lease names: a node behind a NAT that rewrites its address
//! speaks from one, and WireGuard (the kernel's, Flannel's backend) answers it there. Such an
//! address must first prove it receives what is sent to it — every handshake from it is
//! answered with a cookie until one comes back with that cookie (WireGuard's own mechanism,
//! which a leased address meets only under load) — and then gets a few handshakes a second,
//! within a cap for all of them together, so no address buys the CPU with Diffie-Hellman
//! work or starves the others.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};

/// How many handshakes from unleased addresses may reach the Diffie-Hellman work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Per address (an IPv4 address or an IPv6 /64): a burst, then so many a second. A
    /// node behind a NAT needs one every two minutes (and a retry now and then); several
    /// nodes behind one NAT share its address.
    pub per_address_burst: f64,
    pub per_address_per_second: f64,
    /// All unleased addresses together.
    pub total_burst: f64,
    pub total_per_second: f64,
    /// Addresses tracked at most; a new one beyond is refused until idle ones are dropped.
    pub max_addresses: usize,
}

/// Per device; the kernel's WireGuard allows 20 a second per address with a burst of 5.
pub const LIMITS: Limits = Limits {
    per_address_burst: 10.0,
    per_address_per_second: 2.0,
    total_burst: 50.0,
    total_per_second: 50.0,
    max_addresses: 4096,
};

/// What the gate says about one handshake message from an unleased address.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Its MACs hold, its cookie too, and the budgets have room: go on with the handshake.
    Pass,
    /// Send this cookie reply to where it came from (no state is kept).
    Cookie(&'a [u8]),
    /// Bad MACs, or not a handshake message.
    Unauthenticated,
    /// Its address, or all unleased addresses together, used their handshakes for now.
    OverBudget,
}

/// The cookie check and the budgets of unleased handshakes, shared by a device's workers.
pub struct UnleasedGate {
    /// The device's one limiter: its cookie is the one every check of the device accepts.
    limiter: Arc<RateLimiter>,
    budget: Mutex<HandshakeBudget>,
}

impl UnleasedGate {
    pub fn new(limiter: Arc<RateLimiter>, limits: Limits) -> UnleasedGate {
        UnleasedGate {
            limiter,
            budget: Mutex::new(HandshakeBudget::new(limits, Instant::now())),
        }
    }

    /// Checks a handshake message (initiation or response) from `src`; a cookie reply, when
    /// one is due, is written into `scratch`.
    pub fn check<'a>(&self, src: IpAddr, msg: &[u8], scratch: &'a mut [u8]) -> Verdict<'a> {
        match self.limiter.verify_packet_with_cookie(src, msg, scratch) {
            Ok(Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)) => {
                let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
                if budget.allow(src, Instant::now()) {
                    Verdict::Pass
                } else {
                    Verdict::OverBudget
                }
            }
            Err(TunnResult::WriteToNetwork(cookie)) => Verdict::Cookie(cookie),
            Ok(_) | Err(_) => Verdict::Unauthenticated,
        }
    }
}

/// A token bucket: `burst` at most, refilled at `rate` a second.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, burst: f64, rate: f64) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * rate).min(burst);
        self.at = now;
    }
}

/// Handshakes per address and in total, as token buckets.
struct HandshakeBudget {
    limits: Limits,
    total: Bucket,
    per_address: HashMap<IpAddr, Bucket>,
}

impl HandshakeBudget {
    fn new(limits: Limits, now: Instant) -> HandshakeBudget {
        HandshakeBudget {
            limits,
            total: Bucket::full(limits.total_burst, now),
            per_address: HashMap::new(),
        }
    }

    /// Takes one handshake for `src` at `now`, if both its address and the total have one.
    fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        let l = self.limits;
        let key = address_key(src);
        if !self.per_address.contains_key(&key) && self.per_address.len() >= l.max_addresses {
            // Forget the addresses whose buckets have filled up again (idle for a while).
            self.per_address.retain(|_, b| {
                b.refill(now, l.per_address_burst, l.per_address_per_second);
                b.tokens < l.per_address_burst
            });
            if self.per_address.len() >= l.max_addresses {
                return false;
            }
        }
        self.total.refill(now, l.total_burst, l.total_per_second);
        let mine = self
            .per_address
            .entry(key)
            .or_insert_with(|| Bucket::full(l.per_address_burst, now));
        mine.refill(now, l.per_address_burst, l.per_address_per_second);
        if mine.tokens < 1.0 || self.total.tokens < 1.0 {
            return false;
        }
        mine.tokens -= 1.0;
        self.total.tokens -= 1.0;
        true
    }
}

/// An IPv4 address, or the /64 of an IPv6 one (one host may hold a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & (u128::MAX << 64))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use boringtun::noise::Tunn;
    use boringtun::x25519::{PublicKey, StaticSecret};

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
    fn an_unleased_initiation_needs_its_cookie_which_also_passes_the_device_limiter() {
        let responder = StaticSecret::from([9u8; 32]);
        let public = PublicKey::from(&responder);
        // The device's limiter, here under load from the start (limit 0).
        let limiter = Arc::new(RateLimiter::new(&public, 0));
        let gate = UnleasedGate::new(
            limiter.clone(),
            Limits {
                per_address_burst: 2.0,
                ..LIMITS
            },
        );
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
        // One cookie for the whole device: the limiter under load takes it too (two
        // secrets would answer each other's cookies forever).
        assert!(matches!(
            limiter.verify_packet(Some(src), &second, &mut scratch),
            Ok(Packet::HandshakeInit(_))
        ));
        // The cookie is bound to the address it was sent to.
        let elsewhere: IpAddr = "198.51.100.8".parse().unwrap();
        assert!(matches!(
            gate.check(elsewhere, &second, &mut scratch),
            Verdict::Cookie(_)
        ));
        // Two per address here: the third waits.
        assert!(matches!(
            gate.check(src, &second, &mut scratch),
            Verdict::Pass
        ));
        assert!(matches!(
            gate.check(src, &second, &mut scratch),
            Verdict::OverBudget
        ));
        // Junk and a data message are no handshakes.
        assert!(matches!(
            gate.check(src, &[1, 0, 0, 0, 5], &mut scratch),
            Verdict::Unauthenticated
        ));
        let mut data = vec![0u8; 64];
        data[0] = 4;
        assert!(matches!(
            gate.check(src, &data, &mut scratch),
            Verdict::Unauthenticated
        ));
        let mut bad_mac = second.clone();
        bad_mac[20] ^= 1;
        assert!(matches!(
            gate.check(src, &bad_mac, &mut scratch),
            Verdict::Unauthenticated
        ));
    }

    #[test]
    fn the_budget_holds_per_address_and_in_total_and_refills() {
        let t0 = Instant::now();
        let limits = Limits {
            per_address_burst: 2.0,
            per_address_per_second: 1.0,
            total_burst: 5.0,
            total_per_second: 5.0,
            max_addresses: 3,
        };
        let mut b = HandshakeBudget::new(limits, t0);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // One address: its burst, then nothing until it refills.
        assert!(b.allow(ip("198.51.100.1"), t0));
        assert!(b.allow(ip("198.51.100.1"), t0));
        assert!(!b.allow(ip("198.51.100.1"), t0));
        // Another address is not starved by it; nor are v4-mapped and plain apart.
        assert!(b.allow(ip("::ffff:198.51.100.2"), t0));
        assert!(b.allow(ip("198.51.100.2"), t0));
        assert!(!b.allow(ip("198.51.100.2"), t0));
        // A whole IPv6 /64 is one address.
        assert!(b.allow(ip("2001:db8::1"), t0));
        // The total (5) is used up: a fourth address would wait, but the table is full too.
        assert!(!b.allow(ip("2001:db8::2"), t0));
        assert!(!b.allow(ip("198.51.100.9"), t0));
        // A second later: one more each, the total has refilled.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.allow(ip("198.51.100.1"), t1));
        assert!(!b.allow(ip("198.51.100.1"), t1));
        // Much later the idle addresses are forgotten, and a new one gets room.
        let t2 = t0 + Duration::from_secs(60);
        assert!(b.allow(ip("198.51.100.9"), t2));
        assert!(b.per_address.len() <= 3);
    }
}

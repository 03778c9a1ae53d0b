//! The rate limit on the ICMP errors a worker writes back into the TUN.

use std::time::{Duration, Instant};

/// ICMP errors one worker writes per second at most, like the kernel's
/// `net.ipv4.icmp_msgs_per_sec` (1000): a container scanning addresses nobody holds gets
/// answers, not one for every probe.
pub const ICMP_PER_SECOND: u32 = 1000;

/// The ICMP errors left in the current one-second window.
pub struct IcmpBudget {
    window: Instant,
    used: u32,
}

impl IcmpBudget {
    pub fn new(now: Instant) -> IcmpBudget {
        IcmpBudget {
            window: now,
            used: 0,
        }
    }

    /// Whether one more ICMP error may go out at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        if self.used < ICMP_PER_SECOND {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_errors_are_limited_per_second() {
        let t0 = Instant::now();
        let mut b = IcmpBudget::new(t0);
        let sent = (0..5000).filter(|_| b.take(t0)).count();
        assert_eq!(sent, ICMP_PER_SECOND as usize);
        let later = t0 + Duration::from_millis(999);
        assert!(!b.take(later), "same window");
        let next = t0 + Duration::from_secs(1);
        assert!(b.take(next), "a new window");
    }
}

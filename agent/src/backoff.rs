//! Exponential backoff for retries against the store (each wait twice the last, up to a cap),
//! and for accept loops whose failures return at once.

use std::time::Duration;

/// The next wait of a retry loop.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits of `first`, `2 × first`, … up to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// The wait to use now; the one after it doubles.
    pub fn next_wait(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// Sleeps for the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }

    /// Back to the first wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Waits between failed accepts. Some failures (out of file descriptors: EMFILE, ENFILE)
/// come back at once for as long as they last, and a loop that retries at once spins a CPU
/// the data path needs.
#[derive(Debug)]
pub struct AcceptRetry {
    backoff: crate::backoff::Backoff,
    failing: bool,
}

impl AcceptRetry {
    pub fn new() -> AcceptRetry {
        AcceptRetry {
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            failing: false,
        }
    }

    /// After a connection was accepted.
    pub fn accepted(&mut self) {
        if self.failing {
            tracing::info!("accepting connections again");
        }
        self.failing = false;
        self.backoff.reset();
    }

    /// After a failed accept on the socket serving `what`: logs the first failure of a run
    /// and returns how long to wait before the next try.
    pub fn failed(&mut self, e: &std::io::Error, what: &str) -> Duration {
        if !self.failing {
            tracing::warn!(error = %e, "accepting a connection for {what} (retrying with backoff)");
        }
        self.failing = true;
        self.backoff.next_wait()
    }
}

impl Default for AcceptRetry {
    fn default() -> AcceptRetry {
        AcceptRetry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(500));
    }
}

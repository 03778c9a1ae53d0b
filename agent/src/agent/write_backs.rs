//! How often twilld writes its own lease value back after finding it changed: at once the
//! first few times, then with growing pauses while someone keeps rewriting it. Two nodes
//! configured with the same public IP both take the key for theirs; without pauses they
//! would overwrite each other as fast as etcd answers.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// Write-backs within [`WINDOW`] that go out at once.
const FREE: usize = 3;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(super) struct WriteBacks {
    recent: VecDeque<Instant>,
    pause: Backoff,
    next: Option<Instant>,
}

impl WriteBacks {
    pub(super) fn new() -> WriteBacks {
        WriteBacks {
            recent: VecDeque::new(),
            pause: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            next: None,
        }
    }

    /// Whether a write-back may go out now (else it waits for the next event or reconcile).
    pub(super) fn may_write(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() < FREE {
            self.pause.reset();
            self.next = None;
            return true;
        }
        self.next.is_none_or(|t| now >= t)
    }

    /// Records a write-back at `now`; returns how many went out within the window when that
    /// is more than the free ones (someone keeps rewriting our key).
    pub(super) fn wrote(&mut self, now: Instant) -> Option<usize> {
        self.recent.push_back(now);
        if self.recent.len() <= FREE {
            return None;
        }
        self.next = Some(now + self.pause.next_wait());
        Some(self.recent.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn free_at_first_then_paused_with_growing_waits_then_free_again() {
        let mut w = WriteBacks::new();
        let t0 = Instant::now();
        for _ in 0..FREE {
            assert!(w.may_write(Instant::now()));
            assert_eq!(w.wrote(Instant::now()), None);
        }
        assert!(w.may_write(Instant::now()), "the first over the free ones");
        assert_eq!(w.wrote(Instant::now()), Some(FREE + 1));
        assert!(!w.may_write(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(w.may_write(Instant::now()));
        w.wrote(Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!w.may_write(Instant::now()), "the pause doubled");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(w.may_write(Instant::now()));
        tokio::time::advance(WINDOW).await;
        assert!(w.may_write(Instant::now()), "a quiet minute forgets");
        assert!(t0.elapsed() > WINDOW);
    }
}

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
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub(super) struct WriteBacks {
    recent: VecDeque<Instant>,
    pause: Backoff,
    /// The pause now in force, and when it ends.
    current: Duration,
    next: Option<Instant>,
}

impl WriteBacks {
    pub(super) fn new() -> WriteBacks {
        WriteBacks {
            recent: VecDeque::new(),
            pause: Backoff::new(FIRST_PAUSE, LONGEST_PAUSE),
            current: Duration::ZERO,
            next: None,
        }
    }

    /// Whether a write-back may go out now (else it waits for the next event or reconcile).
    pub(super) fn may_write(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// Records a write-back at `now`; returns how many went out within the window when the
    /// next one has to wait (someone keeps rewriting our key).
    pub(super) fn wrote(&mut self, now: Instant) -> Option<usize> {
        // Quiet for longer than the window and twice the last pause: whoever rewrote our key
        // has stopped, and a later edit starts afresh. A rival that keeps rewriting is
        // answered right after each pause, so it never looks quiet and the pauses keep
        // growing.
        let quiet = self
            .recent
            .back()
            .is_none_or(|last| now.duration_since(*last) > WINDOW.max(2 * self.current));
        if quiet {
            self.recent.clear();
            self.pause.reset();
            self.current = Duration::ZERO;
            self.next = None;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() < FREE && self.current.is_zero() {
            return None;
        }
        self.current = self.pause.next_wait();
        self.next = Some(now + self.current);
        Some(self.recent.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn three_at_once_then_growing_pauses_up_to_five_minutes_then_free_again() {
        let mut w = WriteBacks::new();
        for i in 0..FREE {
            assert!(w.may_write(Instant::now()), "write-back {i} goes at once");
            w.wrote(Instant::now());
        }
        assert!(!w.may_write(Instant::now()), "the fourth waits");
        tokio::time::advance(FIRST_PAUSE).await;
        assert!(w.may_write(Instant::now()));
        w.wrote(Instant::now());
        tokio::time::advance(FIRST_PAUSE).await;
        assert!(!w.may_write(Instant::now()), "the pause doubled");
        // A rival that never stops: answered right after each pause.
        let mut pauses = Vec::new();
        let mut last = Instant::now();
        for _ in 0..4000 {
            tokio::time::advance(Duration::from_millis(500)).await;
            let now = Instant::now();
            if w.may_write(now) {
                pauses.push(now.duration_since(last));
                last = now;
                w.wrote(now);
            }
        }
        assert!(
            pauses.iter().rev().take(2).all(|p| *p >= LONGEST_PAUSE),
            "the pauses reach five minutes: {pauses:?}"
        );
        // Quiet for a long time: the next edit is answered at once again.
        tokio::time::advance(3 * LONGEST_PAUSE).await;
        assert!(w.may_write(Instant::now()));
        assert_eq!(w.wrote(Instant::now()), None);
    }
}

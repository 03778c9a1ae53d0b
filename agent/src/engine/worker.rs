//! The loop of one data-path thread: both directions of one TUN queue and its UDP socket, so
//! while traffic flows one way the other way's packets (TCP ACKs) are picked up in the same
//! loop instead of waking a second thread.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::poll::{sleep_until_readable, spin_until_readable};
use super::rx::RxWorker;
use super::transform::{Inbound, Outbound};
use super::tx::TxWorker;

/// What one round of a direction found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Round {
    /// Moved this many packets (TUN reads or datagrams).
    Busy(usize),
    Idle,
    /// The TUN queue is gone: the thread ends.
    Gone,
}

/// Packets a busy period must have moved before the thread busy-polls when it runs dry:
/// bulk traffic keeps its thread awake, a trickle (pings) never makes it spin.
const BUSY_POLL_AFTER: usize = 32;

/// Busy rounds between two publications of the counters under sustained load.
const FLUSH_EVERY_BUSY_ROUNDS: u64 = 256;

/// Runs both directions until the TUN queue goes or the stop flag is set. When a busy
/// period runs dry the thread keeps polling for `busy_poll` before it sleeps.
pub(super) fn run<O: Outbound, I: Inbound>(
    mut tx: TxWorker<O>,
    mut rx: RxWorker<I>,
    busy_poll: Duration,
) {
    let mut moved = 0usize;
    let mut busy_rounds = 0u64;
    loop {
        let (t, r) = (tx.round(), rx.round());
        match (t, r) {
            (Round::Gone, _) | (_, Round::Gone) => return,
            (Round::Idle, Round::Idle) => {
                // Counters become visible as soon as a burst ends (a few atomic adds, and
                // none when nothing changed).
                publish(&mut tx, &mut rx);
                let fds = [tx.tun.as_fd(), rx.sock.as_fd()];
                if moved >= BUSY_POLL_AFTER
                    && !busy_poll.is_zero()
                    && spin_until_readable(fds, busy_poll)
                {
                    continue;
                }
                moved = 0;
                if tx.stop.load(Ordering::Relaxed) {
                    return;
                }
                sleep_until_readable(fds);
            }
            (t, r) => {
                // Under load there may never be a dry round: the stop flag is looked at
                // here too, or dropping the engine (shutdown, a rebuild) waits for the load
                // to end.
                if tx.stop.load(Ordering::Relaxed) {
                    // What this thread counted must not be lost with it.
                    publish(&mut tx, &mut rx);
                    return;
                }
                let n = |x: Round| if let Round::Busy(n) = x { n } else { 0 };
                moved = moved.saturating_add(n(t) + n(r));
                busy_rounds += 1;
                if busy_rounds.is_multiple_of(FLUSH_EVERY_BUSY_ROUNDS) {
                    // Under sustained load there is no dry round: publish now and then.
                    publish(&mut tx, &mut rx);
                }
            }
        }
    }
}

/// Publishes both directions' counters and runs the transform's timers.
fn publish<O: Outbound, I: Inbound>(tx: &mut TxWorker<O>, rx: &mut RxWorker<I>) {
    tx.local.flush(&tx.stats);
    rx.local.flush(&rx.stats);
    tx.housekeeping();
}

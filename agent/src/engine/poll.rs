//! Waiting for input the way a data-path thread does: busy polling for a while after
//! traffic, then sleeping in poll. On virtual machines a sleeping thread costs its waker an
//! IPI and a halted vCPU a VM exit, so a thread that just moved bulk traffic keeps looking
//! (yielding the CPU) for a short while before it sleeps.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::sys::{Interest, poll};

/// How long a sleeping data-path thread waits at most, so it sees its stop flag.
pub const IDLE_POLL: Duration = Duration::from_millis(200);

/// Yields the CPU until one of `fds` has input or `limit` passes; returns whether one has.
/// One look per turn costs a single poll, where trying every fd costs one call each.
pub fn spin_until_readable<const N: usize>(fds: [BorrowedFd<'_>; N], limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        std::thread::yield_now();
        if poll(fds, Interest::Readable, Duration::ZERO) {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
    }
}

/// Sleeps until one of `fds` has input or [`IDLE_POLL`] passes.
pub fn sleep_until_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) {
    poll(fds, Interest::Readable, IDLE_POLL);
}

/// Sleeps until `fd` can take more or [`IDLE_POLL`] passes.
pub fn sleep_until_writable(fd: BorrowedFd<'_>) {
    poll([fd], Interest::Writable, IDLE_POLL);
}

//! Random bytes from the kernel (`getrandom(2)`), for names and IDs that must not collide
//! (temporary interface names, container IDs, a random pick among free subnets). Not for
//! secrets: when the kernel cannot give randomness, the bytes come from the clock instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Fills `buf` with random bytes. Never fails: if `getrandom` is unavailable (an old kernel,
/// a seccomp filter), the rest of `buf` is filled from the clock, the PID and a per-process
/// counter, which keeps values distinct on one host (all twill needs them for).
pub fn fill(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, a buffer we own
        // exclusively for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            fill_from_clock(rest);
            return;
        }
    }
}

/// A random `u64` (see [`fill`] for where it comes from).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_le_bytes(b)
}

/// The fallback: splitmix64 over (time, PID, counter), so two calls in the same nanosecond
/// still differ.
fn fill_from_clock(buf: &mut [u8]) {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut state = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ CALLS.fetch_add(1, Ordering::Relaxed).rotate_left(17);
    for chunk in buf.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_buffers_of_any_length_and_values_differ() {
        for len in [0, 1, 7, 8, 9, 300] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            fill(&mut a);
            fill(&mut b);
            if len >= 8 {
                assert_ne!(a, b, "two fills of {len} bytes");
            }
        }
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn the_clock_fallback_fills_every_byte_and_differs_between_calls() {
        let mut a = [0u8; 20];
        let mut b = [0u8; 20];
        fill_from_clock(&mut a);
        fill_from_clock(&mut b);
        assert_ne!(a, b);
        assert!(
            a[16..].iter().any(|&x| x != 0),
            "the short last chunk is filled"
        );
    }
}

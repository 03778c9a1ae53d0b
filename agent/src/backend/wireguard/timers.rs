//! WireGuard's timers — handshake retries and rekeys, persistent keepalives, session expiry,
//! the rate limiter's reset — on a thread of their own: the data-path workers sleep in poll
//! while no packets move, and a keepalive must leave exactly then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use boringtun::noise::TunnResult;
use boringtun::noise::rate_limiter::RateLimiter;

use super::table::TableCell;
use crate::engine::sys::UdpSocket;

/// boringtun's device ticks its timers every 250 ms.
const TICK: Duration = Duration::from_millis(250);

/// The running timer thread; dropping it stops and joins it.
pub struct TimerThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TimerThread {
    pub fn start(
        table: Arc<TableCell>,
        limiter: Arc<RateLimiter>,
        sock: Arc<UdpSocket>,
    ) -> TimerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wg-timers".into())
            .spawn(move || run(&table, &limiter, &sock, &flag))
            .map_err(|e| tracing::error!(error = %e, "cannot start the wireguard timer thread"))
            .ok();
        TimerThread { stop, thread }
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(table: &TableCell, limiter: &RateLimiter, sock: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        limiter.reset_count();
        let t = table.load();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        for peer in &t.peers {
            let mut tunn = peer.tunn();
            // At most one message per tick and peer, as in boringtun's own device.
            if let TunnResult::WriteToNetwork(msg) = tunn.update_timers(&mut buf)
                && sock.send_to(peer.endpoint(), msg).is_ok()
            {
                peer.transfer.sent(msg.len());
            }
            // Noted every tick while the session lives: boringtun forgets it when the
            // session expires (3 minutes idle).
            peer.last_handshake(tunn.stats().0, now);
        }
        drop(t);
        std::thread::sleep(TICK);
    }
}

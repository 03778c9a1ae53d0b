//! Ctrl-C (SIGINT) and SIGTERM while twill-lab builds, measures or soaks labs. The first one
//! stops the run at its next step, so its labs come down the way they do after any error —
//! relays, forwarders and anchors stopped, twilld and etcd ended, namespaces removed —
//! instead of staying behind with their processes. A second one ends twill-lab at once
//! (whatever it built then needs `twill-lab down`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static REQUESTED: AtomicBool = AtomicBool::new(false);

const FIRST: &[u8] = b"\ntwill-lab: interrupted: stopping after this step and removing what it built (again to quit at once)\n";

extern "C" fn on_signal(sig: libc::c_int) {
    if !REQUESTED.swap(true, Ordering::SeqCst) {
        // SAFETY: errno is this thread's; signal(2) and write(2) are async-signal-safe, and
        // errno is restored for the code the signal interrupted.
        unsafe {
            let errno = *libc::__errno_location();
            // A Ctrl-C also ends a `| tee` reading our output: the clean-up must not die of
            // SIGPIPE on its next line (its writes fail instead, and it prints no more).
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::write(2, FIRST.as_ptr().cast(), FIRST.len());
            *libc::__errno_location() = errno;
        }
        return;
    }
    // SAFETY: signal(2) and raise(3) are async-signal-safe; the default disposition ends us.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Catches SIGINT and SIGTERM for the rest of the process.
pub fn install() {
    // SAFETY: the handler only touches an atomic and async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Whether `e` is the stop itself rather than something that failed on the way out.
pub fn is_interrupted(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Interrupted>().is_some()
}

/// The run stopped because it was asked to.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted (Ctrl-C or SIGTERM)")
    }
}

impl std::error::Error for Interrupted {}

/// Err once a stop was asked for: called between the steps of a run.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps `d` unless a stop is asked for first; false then.
pub fn pause(d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if requested() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
    !requested()
}

//! Helpers shared by the runtime's test files (each file uses only some of them).
#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Starts `c` with SIGALRM and SIGWINCH blocked, as an engine, a service manager or a shell
/// may hand a process a signal mask (std clears the mask in the child first, then runs this).
pub fn with_blocked_signals(c: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: sigprocmask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGALRM);
            set.add(nix::sys::signal::Signal::SIGWINCH);
            nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None)
                .map_err(std::io::Error::from)
        })
    }
}

/// The mask under `key` (`SigBlk:`, `SigIgn:`, `SigCgt:` …) of a /proc/PID/status text.
pub fn status_mask(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Whether process `pid` has a handler for `signal` (its SigCgt in /proc/PID/status).
pub fn catches(pid: u32, signal: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| status_mask(&s, "SigCgt:"))
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// Waits up to `within` for `child` to end; past that, kills and reaps it and panics with
/// `what`.
pub fn wait_or_kill(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

/// Whether process `pid` runs `argv` (its /proc/PID/cmdline; a zombie runs nothing).
pub fn runs(pid: i32, argv: &[&str]) -> bool {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
}

/// The PIDs of the processes that run `argv`.
pub fn pids_running(argv: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|pid| runs(*pid, argv))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `within` for the one process that runs `argv`; its PID. Panics if none
/// comes, or several do (the test's arguments must be unique on the machine).
pub fn wait_for_process(argv: &[&str], within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        match pids_running(argv)[..] {
            [pid] => return pid,
            [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            [] => panic!("no process runs {argv:?}"),
            ref several => panic!("several processes run {argv:?}: {several:?}"),
        }
    }
}

/// Sends SIGTERM to `child` once it catches SIGTERM (its handler in SigCgt, waited for up to
/// 5 s rather than a fixed while a loaded machine may outlast; one that never catches it is
/// signalled all the same, and dies of it).
pub fn sigterm_once_caught(child: &Child) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !catches(child.id(), libc::SIGTERM) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on the PID of our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// A pseudo-terminal a test runs a command under, as its controlling terminal in a session of
/// its own, so the test can type at it as a user would: a Ctrl-C typed there is sent by the
/// kernel to the terminal's foreground process group (si_code SI_KERNEL), which no kill(2)
/// from the test can mimic.
pub struct Terminal {
    master: std::fs::File,
    slave: Option<std::os::fd::OwnedFd>,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Terminal {
    pub fn open() -> Terminal {
        let pty = nix::pty::openpty(None, None).expect("opening a pseudo-terminal");
        Terminal {
            master: std::fs::File::from(pty.master),
            slave: Some(pty.slave),
            output: Default::default(),
        }
    }

    /// Starts `c` with the terminal as its stdin, stdout, stderr and controlling terminal,
    /// leading a new session: its process group is the terminal's foreground one. Then reads
    /// what it writes (in a thread that ends when every process holding the terminal has
    /// closed it).
    pub fn spawn(&mut self, c: &mut Command) -> Child {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        let slave = self.slave.take().expect("one command per terminal");
        c.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs before exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        // Spawned, the child holds the only copies of the slave: the command dropped ours.
        let child = c.spawn().expect("starting a command on the terminal");
        let mut master = self.master.try_clone().unwrap();
        let output = self.output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = master.read(&mut buf) {
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        child
    }

    /// Sets the window's size, as a terminal emulator does when its window is resized (the
    /// kernel then sends SIGWINCH to the terminal's foreground process group).
    pub fn set_size(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we pass, on the master we own.
        let set = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(set, 0, "setting the terminal's size");
    }

    /// Whether the terminal is in raw mode (no line editing, no signal keys), as a command
    /// that takes every key puts it.
    pub fn is_raw(&self) -> bool {
        use nix::sys::termios::LocalFlags;
        // A pty master's settings are its slave's: the terminal the command sees.
        let t =
            nix::sys::termios::tcgetattr(&self.master).expect("reading the terminal's settings");
        !t.local_flags
            .intersects(LocalFlags::ICANON | LocalFlags::ISIG)
    }

    /// Types `bytes` (b"\x03" is Ctrl-C).
    pub fn type_keys(&self, bytes: &[u8]) {
        use std::io::Write;
        (&self.master).write_all(bytes).unwrap();
    }

    /// The terminal's name (its slave's path, `/dev/pts/N`).
    pub fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int, into the one we pass, for our master.
        let got = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
        assert_eq!(got, 0, "reading the terminal's number");
        format!("/dev/pts/{n}").into()
    }

    /// What the command wrote so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits up to `within` for `text` in the output; panics with the output without it.
    pub fn wait_for(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{text:?} not written to the terminal within {within:?}: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The children of process `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits up to `within` for process `pid` to catch `signal`; panics naming `who` otherwise.
pub fn wait_until_caught(pid: u32, signal: i32, who: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !catches(pid, signal) {
        assert!(
            Instant::now() < deadline,
            "{who} (PID {pid}) never caught signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to process `pid`, which this test started (or its child, not yet reaped).
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with plain integers, on a process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

/// Stops `pids` (SIGSTOP) and waits until each is stopped: a signal sent to them meanwhile
/// waits, and their handlers run only once they are continued.
pub fn stop_all(pids: &[u32]) {
    for &pid in pids {
        signal(pid, libc::SIGSTOP);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for &pid in pids {
        // The state is the field after the command's name, which ends with the last ')'.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('T'))
        {
            assert!(Instant::now() < deadline, "{pid} never stopped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

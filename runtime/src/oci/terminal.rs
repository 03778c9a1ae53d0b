//! `run` in the foreground with `process.terminal` and no `--console-socket`, as runc's: the
//! container process makes its pty as for a console socket (`console::setup_pty`) but sends
//! the master back to `run` over a socketpair; `run` puts its own terminal in raw mode, gives
//! the pty that terminal's size (again on every SIGWINCH), and relays its stdin to the pty and
//! the pty to its stdout until the process ends, then restores its terminal.
//!
//! As runc's `initHostConsole`, "its own terminal" is the first of stderr, stdout and stdin
//! that is one, else the controlling terminal (`/dev/tty`); with none, `run` is refused.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{Result, RuntimeError};

/// How long (ms) the relay waits for the pty's last output once the process has ended, when
/// another process still holds the pty open.
const QUIET_AFTER_EXIT_MS: u8 = 100;

/// The terminal `run` was started on, in raw mode while the container runs; its settings are
/// restored when this is dropped.
pub struct HostConsole {
    fd: OwnedFd,
    saved: Option<Termios>,
}

impl HostConsole {
    /// The caller's terminal: stderr, stdout or stdin, whichever is one first, else the
    /// controlling terminal.
    pub fn find() -> Result<HostConsole> {
        // SAFETY: descriptors 0 to 2 stay open for the life of twill-oci.
        let stdio = unsafe { [2, 1, 0].map(|fd| BorrowedFd::borrow_raw(fd)) };
        for fd in stdio {
            if nix::unistd::isatty(fd).unwrap_or(false) {
                let fd = fd.try_clone_to_owned().map_err(|e| {
                    RuntimeError::io("duplicating", "the terminal on twill-oci's stdio", e)
                })?;
                return Ok(HostConsole { fd, saved: None });
            }
        }
        let tty = File::options()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|e| {
                RuntimeError::io(
                    "process.terminal: run in the foreground relays the container's terminal \
                     to its own, and its stdio is no terminal; opening",
                    "/dev/tty",
                    e,
                )
            })?;
        Ok(HostConsole {
            fd: tty.into(),
            saved: None,
        })
    }

    /// Raw mode (as runc's SetRaw): keys reach the container's pty as typed, and its line
    /// discipline, not ours, echoes and turns Ctrl-C into SIGINT.
    pub fn make_raw(&mut self) -> Result<()> {
        let saved = termios::tcgetattr(&self.fd)
            .map_err(|e| RuntimeError::nix("reading the settings of", "the terminal", e))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&self.fd, SetArg::TCSANOW, &raw)
            .map_err(|e| RuntimeError::nix("setting raw mode on", "the terminal", e))?;
        self.saved = Some(saved);
        Ok(())
    }
}

impl Drop for HostConsole {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(&self.fd, SetArg::TCSANOW, saved);
        }
    }
}

/// Gives the pty `master` the size of terminal `from` (when it has one).
fn copy_size(from: BorrowedFd, master: BorrowedFd) {
    // SAFETY: an all-zero winsize is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes the winsize we pass; TIOCSWINSZ reads it.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0
            && (ws.ws_row, ws.ws_col) != (0, 0)
        {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Receives the pty master the container process sent over `sock` (SCM_RIGHTS, with its name,
/// as to a console socket). It was sent before `create` returned: this does not wait.
pub fn receive_master(sock: &OwnedFd) -> Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(|e| RuntimeError::nix("receiving the container's pty from", "its process", e))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| RuntimeError::nix("reading the pty message of", "the container", e))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
            return Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
        }
    }
    Err(RuntimeError::Invalid(
        "the container process sent no pty with its terminal message".into(),
    ))
}

/// The relay between `run`'s stdio and the container's pty, on a thread of its own.
pub struct Relay {
    /// Written (or closed) to tell the thread the process has ended.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    winch: SigSet,
}

/// Starts relaying: `master` (see [`receive_master`]) is sized as `console` and, until
/// [`Relay::finish`], fed from stdin and copied to stdout. `console` is put in raw mode.
pub fn relay(master: OwnedFd, console: &mut HostConsole) -> Result<Relay> {
    copy_size(console.fd.as_fd(), master.as_fd());
    console.make_raw()?;
    let size_from = console
        .fd
        .try_clone()
        .map_err(|e| RuntimeError::io("duplicating", "the terminal", e))?;
    let mut winch = SigSet::empty();
    winch.add(Signal::SIGWINCH);
    // Blocked before the thread starts (it inherits the mask), so every SIGWINCH waits in
    // the signalfd instead of being ignored by whichever thread the kernel picks.
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&winch), None)
        .map_err(|e| RuntimeError::nix("blocking", "SIGWINCH", e))?;
    let unblock = || {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&winch), None);
    };
    let sfd = match SignalFd::with_flags(&winch, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => {
            unblock();
            return Err(RuntimeError::nix("opening a signalfd for", "SIGWINCH", e));
        }
    };
    let (stop_r, stop_w) = crate::process::pipe()?;
    if let Err(e) = nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    ) {
        unblock();
        return Err(RuntimeError::nix("making non-blocking", "the pty", e));
    }
    let thread = std::thread::Builder::new()
        .name("terminal".into())
        .spawn(move || copy_loop(&master, &size_from, &sfd, &stop_r))
        .map_err(|e| {
            unblock();
            RuntimeError::io("starting", "the terminal relay", e)
        })?;
    Ok(Relay {
        stop: Some(stop_w),
        thread: Some(thread),
        winch,
    })
}

impl Relay {
    /// Once the process has ended: copies what the pty still holds, stops, and unblocks
    /// SIGWINCH.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = nix::unistd::write(&stop, b"x");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&self.winch), None);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.end();
    }
}

/// Writes all of `buf` to `fd` (blocking).
fn write_all(fd: BorrowedFd, mut buf: &[u8]) -> nix::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The relay thread: stdin → master (kept for later while the pty's input queue is full, so
/// a process that reads nothing never stops its output from being copied), master → stdout,
/// SIGWINCH → the pty's size; after `stop`, what the pty still holds, then out. Ends early when
/// the pty has no slave open any more (EIO) or stdout is gone.
fn copy_loop(master: &OwnedFd, size_from: &OwnedFd, winch: &SignalFd, stop: &OwnedFd) {
    // SAFETY: descriptors 0 and 1 stay open for the life of twill-oci.
    let (stdin, stdout) = unsafe { (BorrowedFd::borrow_raw(0), BorrowedFd::borrow_raw(1)) };
    let mut stdin_open = true;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    // Copies what the master has now; false once there is no more to come.
    let drain = |buf: &mut [u8]| loop {
        match nix::unistd::read(master, buf) {
            Ok(0) => return false,
            Ok(n) => {
                if write_all(stdout, &buf[..n]).is_err() {
                    return false;
                }
            }
            Err(nix::Error::EAGAIN) => return true,
            Err(nix::Error::EINTR) => {}
            // EIO: every slave descriptor is closed.
            Err(_) => return false,
        }
    };
    loop {
        let want_stdin = stdin_open && pending.is_empty();
        let master_flags = if pending.is_empty() {
            PollFlags::POLLIN
        } else {
            PollFlags::POLLIN | PollFlags::POLLOUT
        };
        let mut fds = vec![
            PollFd::new(master.as_fd(), master_flags),
            PollFd::new(winch.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if want_stdin {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => return,
        }
        let ready = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        let (m, w, s) = (ready(0), ready(1), ready(2));
        let i = if want_stdin {
            ready(3)
        } else {
            PollFlags::empty()
        };
        if m.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            && !drain(&mut buf)
        {
            return;
        }
        if m.contains(PollFlags::POLLOUT) && !pending.is_empty() {
            match nix::unistd::write(master, &pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
                Err(_) => pending.clear(),
            }
        }
        if w.contains(PollFlags::POLLIN) {
            while let Ok(Some(_)) = winch.read_signal() {}
            copy_size(size_from.as_fd(), master.as_fd());
        }
        if !i.is_empty() {
            match nix::unistd::read(stdin, &mut buf) {
                // At the end of stdin the process gets no more input (as with runc).
                Ok(0) => stdin_open = false,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
                Err(_) => stdin_open = false,
            }
        }
        if !s.is_empty() {
            // The process has ended. What it wrote last may still be on its way through the
            // pty: copy until the pty says there is no more (no slave open), or, when another
            // process holds the slave, until it has been quiet a moment.
            loop {
                let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(QUIET_AFTER_EXIT_MS)) {
                    Ok(0) => return,
                    Ok(_) => {
                        if !drain(&mut buf) {
                            return;
                        }
                    }
                    Err(nix::Error::EINTR) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

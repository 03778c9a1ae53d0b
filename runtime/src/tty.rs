//! `-t`: the container's process gets a pty made in the container's own devpts, as runc's
//! console socket makes it (`oci::console::setup_pty`); its master comes back to twill-run
//! over a socket pair, and twill-run copies between it and the caller (the caller's input in
//! with `-i`, its terminal in raw mode meanwhile; the output out, to the caller or to the
//! container's log; the caller's window size along).

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
};
use nix::sys::termios::{self, SetArg, Termios};
use nix::unistd::Pid;

use crate::error::{Result, RuntimeError};
use crate::oci::spec::ConsoleSize;

/// The socket pair the pty's master travels over: the first end stays with twill-run, the
/// second goes to the process that makes the pty. Both close on exec.
pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| RuntimeError::nix("creating", "the socket pair for the pty", e))
}

/// Receives the master that `setup_pty` sent on the other end of `sock`; None when that end
/// closed without one (the process failed before making its pty, and said why elsewhere).
pub fn recv_master(sock: &OwnedFd) -> Result<Option<OwnedFd>> {
    let mut name = [0u8; 128];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    loop {
        let mut iov = [IoSliceMut::new(&mut name)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(RuntimeError::nix("receiving", "the pty's master", e)),
        };
        let mut master = None;
        for c in msg
            .cmsgs()
            .map_err(|e| RuntimeError::nix("receiving", "the pty's master", e))?
        {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    master.get_or_insert(owned);
                }
            }
        }
        return Ok(master);
    }
}

/// The first of the caller's stdin, stdout and stderr that is a terminal.
fn caller_terminal() -> Option<BorrowedFd<'static>> {
    [0, 1, 2].into_iter().find_map(|fd| {
        // SAFETY: the standard descriptors stay open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::unistd::isatty(fd).unwrap_or(false).then_some(fd)
    })
}

fn window_size(fd: BorrowedFd) -> Option<libc::winsize> {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ writes the one we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on a descriptor we hold.
    let ok = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some(ws)
}

/// The caller's window size (of its first standard descriptor that is a terminal), for the
/// pty to start with.
pub fn caller_size() -> Option<ConsoleSize> {
    let ws = window_size(caller_terminal()?)?;
    Some(ConsoleSize {
        height: ws.ws_row,
        width: ws.ws_col,
    })
}

/// Gives the pty the caller's window size, if the caller has a terminal.
fn copy_size(from: Option<BorrowedFd>, master: BorrowedFd) {
    if let Some(ws) = from.and_then(window_size) {
        // SAFETY: TIOCSWINSZ reads the winsize we pass, on the master we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// The caller's terminal (stdin) in raw mode, as `docker run -it` puts it, for as long as
/// this lives: every key, Ctrl-C included, goes to the container's pty, whose own line
/// discipline does what the caller's would have.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode on stdin when it is a terminal; None when it is not.
    pub fn enter() -> Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd())
            .map_err(|e| RuntimeError::nix("reading the settings of", "the terminal", e))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| RuntimeError::nix("putting in raw mode", "the terminal", e))?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSADRAIN: what was written in raw mode is shown as such first.
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Set by the SIGWINCH handler: the caller's window changed size.
static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigwinch(_: libc::c_int) {
    RESIZED.store(true, Ordering::SeqCst);
}

/// A descriptor for `pid`'s exit (pidfd_open, Linux 5.3); None where there is none.
fn pidfd(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open with plain integers; a descriptor it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: as above.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether our child `pid` has ended (it is left to be reaped).
fn ended(pid: Pid) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    !matches!(
        waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
        ),
        Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR)
    )
}

fn set_nonblocking(fd: BorrowedFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// Writes all of `bytes` to the (non-blocking) master, waiting while its input is full. An
/// error means the pty is gone (every process that had it has closed it).
fn write_master(master: BorrowedFd, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(master, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::Error::EAGAIN) => {
                let mut fds = [PollFd::new(master, PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What reading the master gave.
enum Read {
    /// Bytes (passed on), or nothing right now.
    More,
    /// Every process that had the pty has closed it.
    Closed,
}

/// Reads what the master has now, up to `limit` bytes (a process that writes without pause
/// must not keep the loop from its other work, nor a process left writing after the one
/// waited for has ended keep twill-run from ending), and writes it to `out` (given up once
/// `out` fails, as when the caller's pipe closed: the pty is still read, so the container
/// never blocks on it).
fn pass_output(master: BorrowedFd, out: &mut dyn Write, out_ok: &mut bool, limit: usize) -> Read {
    let mut buf = [0u8; 16384];
    let mut passed = 0;
    while passed < limit {
        match nix::unistd::read(master, &mut buf) {
            Ok(0) | Err(nix::Error::EIO) => return Read::Closed,
            Ok(n) => {
                passed += n;
                if *out_ok && (out.write_all(&buf[..n]).is_err() || out.flush().is_err()) {
                    *out_ok = false;
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => return Read::More,
            Err(_) => return Read::Closed,
        }
    }
    Read::More
}

/// Copies between the pty's `master` and the caller until our child `child` (the container's
/// process, or the process that waits for an exec'd one) has ended, then passes on what the
/// pty still holds: its output to `out`; with `input`, twill-run's stdin to the pty (at its
/// end, the pty's end-of-file character, as a terminal's Ctrl-D); the caller's window size
/// (at the start and at each SIGWINCH) when it has a terminal. `child` is left to be reaped.
pub fn relay(master: OwnedFd, child: Pid, input: bool, out: &mut dyn Write) -> Result<()> {
    let master_fd = master.as_fd();
    set_nonblocking(master_fd);
    let terminal = caller_terminal();
    if terminal.is_some() {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let action = SigAction::new(
            SigHandler::Handler(on_sigwinch),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        if let Err(e) = unsafe { sigaction(Signal::SIGWINCH, &action) } {
            eprintln!("twill-run: installing a handler for SIGWINCH: {e}: the pty keeps its size");
        }
    }
    copy_size(terminal, master_fd);
    // A closed caller's pipe is an error to write to, not a death: twill-run must outlive it
    // to wait for its container.
    // SAFETY: ignoring a signal installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let exit = pidfd(child);
    let stdin = std::io::stdin();
    let mut reading_stdin = input;
    let mut master_open = true;
    let mut out_ok = true;
    let mut last_in = b'\n';
    let mut buf = [0u8; 16384];
    loop {
        if RESIZED.swap(false, Ordering::SeqCst) {
            copy_size(terminal, master_fd);
        }
        let mut fds = Vec::with_capacity(3);
        if master_open {
            fds.push(PollFd::new(master_fd, PollFlags::POLLIN));
        }
        if reading_stdin {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &exit {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        // Without a pidfd, the child's end is looked for ten times a second.
        let timeout = if exit.is_some() {
            PollTimeout::NONE
        } else {
            PollTimeout::from(100u16)
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(RuntimeError::nix("waiting on", "the pty", e)),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (master_ready, stdin_ready) = (
            master_open && ready(0),
            reading_stdin && ready(usize::from(master_open)),
        );
        drop(fds);
        if master_ready
            && matches!(
                pass_output(master_fd, out, &mut out_ok, 1 << 16),
                Read::Closed
            )
        {
            master_open = false;
        }
        if stdin_ready {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) => {
                    // The caller's input ended (a pipe, not a terminal in raw mode): the pty
                    // says so as a terminal does, with its end-of-file character (twice
                    // after an unfinished line, whose first one only ends the line).
                    reading_stdin = false;
                    let eof = termios::tcgetattr(master_fd)
                        .map(|t| t.control_chars[termios::SpecialCharacterIndices::VEOF as usize])
                        .unwrap_or(4);
                    let times = if last_in == b'\n' { 1 } else { 2 };
                    let _ = write_master(master_fd, &vec![eof; times]);
                }
                Ok(n) => {
                    last_in = buf[n - 1];
                    if write_master(master_fd, &buf[..n]).is_err() {
                        reading_stdin = false;
                    }
                }
                Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                Err(_) => reading_stdin = false,
            }
        }
        if ended(child) {
            // Its last output may still be on its way through the pty: a read waits for it
            // (a pty holds far less than the limit).
            if master_open {
                let _ = pass_output(master_fd, out, &mut out_ok, 1 << 20);
            }
            return Ok(());
        }
    }
}

/// A foreground `run -t` or `exec -t`: the pty's output to stdout until our child `child`
/// has ended; with `interactive`, the caller's input to the pty, its terminal (if stdin is
/// one) in raw mode meanwhile and restored after. Failures are reported, not returned: the
/// caller still has its child to reap.
pub fn attach(master: OwnedFd, child: Pid, interactive: bool) {
    let raw = if interactive {
        RawMode::enter().unwrap_or_else(|e| {
            eprintln!("twill-run: {e}: keys keep the terminal's own meaning");
            None
        })
    } else {
        None
    };
    let relayed = relay(master, child, interactive, &mut std::io::stdout());
    drop(raw);
    if let Err(e) = relayed {
        eprintln!("twill-run: {e}: the rest of the output is lost");
    }
}

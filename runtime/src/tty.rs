//! A container process's pty relayed to its caller: twill-run's `-t` (`run`, `exec`; `-d -t`
//! into the container's log) and a foreground `twill-oci run` with `process.terminal` and no
//! `--console-socket` (as runc's). The process makes its pty in the container's own devpts,
//! as runc's console socket has it made (`oci::console::setup_pty`), and sends the master
//! back over a socket pair ([`pair`], [`recv_master`]); the caller's terminal goes into raw
//! mode meanwhile ([`RawMode`]) and a [`Relay`] copies between the two: the pty's output out,
//! the caller's input in (held back while the process reads none, never blocking the output),
//! the caller's window size along (at the start and on each SIGWINCH), until the process has
//! ended and the pty has given its last output.
//!
//! What differs between the two callers is said by parameters: which terminal is the
//! caller's ([`Terminal::among`] the standard descriptors for twill-run; [`Terminal::own`],
//! runc's rule, for twill-oci), where the output goes (stdout, or the container's log),
//! whether there is input ([`Relay::input`]), and whether the relay runs on the caller's
//! thread ([`Relay::run`]) or on one of its own ([`Relay::spawn`]).

use std::fs::File;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
};
use nix::sys::termios::{self, SetArg, Termios};
use nix::unistd::Pid;

use crate::error::{Result, RuntimeError};
use crate::oci::spec::ConsoleSize;

/// How long (ms) the relay waits for more of the pty's output once the process has ended,
/// when another process still holds the pty open.
const QUIET_AFTER_EXIT_MS: u8 = 100;

/// The most output passed on once the process has ended: a process left writing after the
/// one waited for has ended must not keep the relay from ending.
const MAX_AFTER_EXIT: usize = 1 << 20;

/// The most output passed on at a time: a process that writes without pause must not keep
/// the relay from its other work.
const MAX_AT_ONCE: usize = 1 << 16;

/// The standard descriptors twill-run looks at, in order, for the caller's terminal.
pub const STDIO: [RawFd; 3] = [0, 1, 2];

/// The socket pair the pty's master travels over: the first end stays with the caller, the
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

/// Receives the master that `setup_pty` sent on the other end of `sock` (SCM_RIGHTS, with
/// the pty's name, as to a console socket); None when that end closed without one (the
/// process failed before making its pty, and said why elsewhere).
pub fn recv_master(sock: &OwnedFd) -> Result<Option<OwnedFd>> {
    let mut name = [0u8; 128];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
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

/// A descriptor of the caller's terminal: the pty takes its window size, and it goes into
/// raw mode while the caller's keys go to the pty.
pub struct Terminal {
    fd: OwnedFd,
}

impl Terminal {
    /// The first of the standard descriptors `order` that is a terminal (twill-run:
    /// [`STDIO`]; stdin alone for the terminal whose keys are read).
    pub fn among(order: &[RawFd]) -> Option<Terminal> {
        order.iter().find_map(|&fd| {
            // SAFETY: the standard descriptors stay open for the life of the process.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            if !nix::unistd::isatty(fd).unwrap_or(false) {
                return None;
            }
            fd.try_clone_to_owned().ok().map(|fd| Terminal { fd })
        })
    }

    /// The caller's own terminal as runc's `initHostConsole` finds it: the first of stderr,
    /// stdout and stdin that is one, else the controlling terminal (`/dev/tty`); an error
    /// when there is none.
    pub fn own() -> Result<Terminal> {
        if let Some(t) = Terminal::among(&[2, 1, 0]) {
            return Ok(t);
        }
        let tty = File::options()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|e| RuntimeError::io("its stdio is no terminal; opening", "/dev/tty", e))?;
        Ok(Terminal { fd: tty.into() })
    }

    /// Its window size, when it has one.
    pub fn size(&self) -> Option<ConsoleSize> {
        let ws = window_size(self.fd.as_fd())?;
        Some(ConsoleSize {
            height: ws.ws_row,
            width: ws.ws_col,
        })
    }

    /// Puts it in raw mode until the guard is dropped: every key, Ctrl-C included, goes to
    /// the pty as typed, and the pty's own line discipline, not the caller's, echoes and
    /// turns Ctrl-C into SIGINT. `output` says what becomes of what is written to it.
    pub fn raw_mode(&self, output: RawOutput) -> Result<RawMode> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| RuntimeError::io("duplicating", "the terminal", e))?;
        let saved = termios::tcgetattr(&fd)
            .map_err(|e| RuntimeError::nix("reading the settings of", "the terminal", e))?;
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw_settings(&saved, output))
            .map_err(|e| RuntimeError::nix("putting in raw mode", "the terminal", e))?;
        Ok(RawMode { fd, saved })
    }
}

/// What a terminal in raw mode does with what is written to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawOutput {
    /// Shown as written (cfmakeraw's, as `docker run -it`): the pty's own output
    /// processing (ONLCR, on by default) has made its process's "\n" a "\r\n" already
    /// (twill-run).
    AsWritten,
    /// Still processed (output processing kept, as runc's SetRaw): a "\n" is shown as
    /// "\r\n" by this terminal, the pty's ONLCR being cleared ([`clear_onlcr`]), so what
    /// is relayed is what the process wrote, to a file as to the terminal (twill-oci).
    Processed,
}

/// `saved` made raw (cfmakeraw), with output processing kept for [`RawOutput::Processed`].
fn raw_settings(saved: &Termios, output: RawOutput) -> Termios {
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    if output == RawOutput::Processed {
        raw.output_flags |= termios::OutputFlags::OPOST;
    }
    raw
}

/// Clears ONLCR on the pty `master` (as runc's recvtty, `console.ClearONLCR`): its process's
/// "\n" comes out as written instead of as "\r\n".
pub fn clear_onlcr(master: BorrowedFd) -> Result<()> {
    let mut t = termios::tcgetattr(master)
        .map_err(|e| RuntimeError::nix("reading the settings of", "the pty", e))?;
    t.output_flags.remove(termios::OutputFlags::ONLCR);
    termios::tcsetattr(master, SetArg::TCSANOW, &t)
        .map_err(|e| RuntimeError::nix("clearing ONLCR on", "the pty", e))
}

/// A terminal in raw mode (see [`Terminal::raw_mode`]); its settings come back when this is
/// dropped.
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSADRAIN: what was written in raw mode is shown as such first. Waiting for that,
        // it fails with EINTR when a signal whose handler was installed without SA_RESTART
        // comes meanwhile (twill's signal proxies restart; a program using this library
        // may not): tried again, else the terminal would stay raw.
        let _ = restarted(|| termios::tcsetattr(&self.fd, SetArg::TCSADRAIN, &self.saved));
    }
}

/// `call`, again for as long as it fails with EINTR.
fn restarted<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(nix::Error::EINTR) => {}
            done => return done,
        }
    }
}

/// The caller's window size (of the first of its standard descriptors that is a terminal),
/// for twill-run's pty to start with.
pub fn caller_size() -> Option<ConsoleSize> {
    Terminal::among(&STDIO)?.size()
}

fn window_size(fd: BorrowedFd) -> Option<libc::winsize> {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ writes the one we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on a descriptor we hold.
    let ok = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some(ws)
}

/// Gives the pty `master` the window size of terminal `from`, when it has one.
fn copy_size(from: BorrowedFd, master: BorrowedFd) {
    if let Some(ws) = window_size(from) {
        // SAFETY: TIOCSWINSZ reads the winsize we pass, on the master we hold.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// The caller's stdout for a [`Relay`], unbuffered: what is relayed is written out (or has
/// failed) at once, and none of it stays in std's buffer for the exit to flush again, into
/// a pipe that may have closed meanwhile.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: stdout stays open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(1) };
        nix::unistd::write(fd, buf).map_err(std::io::Error::from)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A relay between a pty's master and the caller (see the module's doc): made with
/// [`Relay::new`] and the builder methods, then [`Relay::run`] or [`Relay::spawn`].
pub struct Relay {
    master: OwnedFd,
    out: Box<dyn Write + Send>,
    input: bool,
    size_from: Option<Terminal>,
}

impl Relay {
    /// The pty's output to `out` (given up once `out` fails, as when the caller's pipe
    /// closed: the pty is still read, so the process never blocks on it); no input, and the
    /// pty's window size left alone, unless set.
    pub fn new(master: OwnedFd, out: impl Write + Send + 'static) -> Relay {
        Relay {
            master,
            out: Box::new(out),
            input: false,
            size_from: None,
        }
    }

    /// Stdin copied into the pty, for as long as there is any; its end is passed on as
    /// nothing (runc's, and docker's for a terminal, whose input ends only when it hangs up:
    /// twill-run refuses `-i -t` on a stdin that is not one).
    pub fn input(mut self) -> Relay {
        self.input = true;
        self
    }

    /// The pty given `terminal`'s window size, at the start and at each SIGWINCH.
    pub fn size_from(mut self, terminal: Option<Terminal>) -> Relay {
        self.size_from = terminal;
        self
    }

    /// Relays on this thread until our child `child` (the process, or one that waits for
    /// it) has ended and the pty has given its last output. `child` is left to be reaped.
    pub fn run(self, child: Pid) -> Result<()> {
        let (_held, winch) = self.hold_winch()?;
        self.copy(child, winch.as_ref())
    }

    /// [`Relay::run`] on a thread of its own, so the caller can go on (`twill-oci run` starts
    /// the container and reaps it meanwhile). SIGWINCH stays blocked on the calling thread,
    /// as on the relay's (it goes to the relay's signalfd), until [`Running::finish`].
    pub fn spawn(self, child: Pid) -> Result<Running> {
        // Blocked before the thread starts (it inherits the mask).
        let (held, winch) = self.hold_winch()?;
        let thread = std::thread::Builder::new()
            .name("pty relay".into())
            .spawn(move || self.copy(child, winch.as_ref()))
            .map_err(|e| RuntimeError::io("starting", "the pty relay", e))?;
        Ok(Running {
            thread: Some(thread),
            _held: held,
        })
    }

    /// With a terminal to take the size of, SIGWINCH blocked on this thread and a signalfd
    /// to read it from: each one then waits there, instead of being ignored by whichever
    /// thread the kernel picks.
    fn hold_winch(&self) -> Result<(Option<HeldWinch>, Option<SignalFd>)> {
        if self.size_from.is_none() {
            return Ok((None, None));
        }
        let mut winch = SigSet::empty();
        winch.add(Signal::SIGWINCH);
        let mut before = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&winch), Some(&mut before))
            .map_err(|e| RuntimeError::nix("blocking", "SIGWINCH", e))?;
        let held = HeldWinch {
            unblock: !before.contains(Signal::SIGWINCH),
        };
        let fd = SignalFd::with_flags(&winch, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| RuntimeError::nix("opening a signalfd for", "SIGWINCH", e))?;
        Ok((Some(held), Some(fd)))
    }

    /// The copy loop: stdin into the pty (kept back while its input is full, so a process
    /// that reads nothing never stops its output from being copied), the pty's output out,
    /// SIGWINCH to the pty's size; once `child` has ended, the pty's output until it closes
    /// (no process has it open any more) or stays quiet a moment.
    fn copy(self, child: Pid, winch: Option<&SignalFd>) -> Result<()> {
        let master = self.master.as_fd();
        set_nonblocking(master)?;
        let size_from = self.size_from.as_ref().map(|t| t.fd.as_fd());
        if let Some(t) = size_from {
            copy_size(t, master);
        }
        // A closed caller's pipe is an error to write to, not a death: the caller must
        // outlive it to wait for its process. SIGPIPE blocked on this thread alone (the one
        // that writes), and the one a failed write raised taken back (see `Output::pass`),
        // rather than ignored by the whole process for good: twill-run keeps its default
        // (a later write to a closed pipe ends it quietly, where EPIPE made it panic).
        let _sigpipe = HeldSigpipe::new()?;
        let exit = pidfd(child);
        // SAFETY: stdin stays open for the life of the process.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        let mut out = Output {
            to: self.out,
            ok: true,
        };
        let mut reading = self.input;
        let mut pending: Vec<u8> = Vec::new();
        let mut master_open = true;
        let mut buf = vec![0u8; 16 * 1024];
        while !ended(child) {
            let mut fds = Vec::with_capacity(4);
            let m = master_open.then(|| {
                let flags = if pending.is_empty() {
                    PollFlags::POLLIN
                } else {
                    PollFlags::POLLIN | PollFlags::POLLOUT
                };
                watch(&mut fds, master, flags)
            });
            let i =
                (reading && pending.is_empty()).then(|| watch(&mut fds, stdin, PollFlags::POLLIN));
            let w = winch.map(|w| watch(&mut fds, w.as_fd(), PollFlags::POLLIN));
            if let Some(p) = &exit {
                watch(&mut fds, p.as_fd(), PollFlags::POLLIN);
            }
            // Without a pidfd, the child's end is looked for ten times a second.
            let timeout = if exit.is_some() {
                PollTimeout::NONE
            } else {
                PollTimeout::from(100u8)
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(RuntimeError::nix("waiting on", "the pty", e)),
            }
            let ready = |at: Option<usize>| {
                at.and_then(|at| fds[at].revents())
                    .unwrap_or(PollFlags::empty())
            };
            let (m, i, w) = (ready(m), ready(i), ready(w));
            if m.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                && matches!(out.pass(master, &mut buf, MAX_AT_ONCE), Read::Closed)
            {
                master_open = false;
                reading = false;
                pending.clear();
            }
            if m.contains(PollFlags::POLLOUT) && !push_input(master, &mut pending) {
                reading = false;
            }
            if !w.is_empty() {
                if let Some(w) = winch {
                    while let Ok(Some(_)) = w.read_signal() {}
                }
                if let Some(t) = size_from {
                    copy_size(t, master);
                }
            }
            if !i.is_empty() {
                match nix::unistd::read(stdin, &mut buf) {
                    Ok(0) => reading = false,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                    Err(_) => reading = false,
                }
                if !push_input(master, &mut pending) {
                    reading = false;
                }
            }
        }
        // What the process wrote last may still be on its way through the pty.
        let mut passed = 0;
        while master_open && passed < MAX_AFTER_EXIT {
            let mut fds = [PollFd::new(master, PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(QUIET_AFTER_EXIT_MS)) {
                Ok(0) => break,
                Ok(_) => match out.pass(master, &mut buf, MAX_AFTER_EXIT - passed) {
                    Read::More(n) => passed += n,
                    Read::Closed => break,
                },
                Err(nix::Error::EINTR) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }
}

/// A [`Relay`] on a thread of its own (see [`Relay::spawn`]).
pub struct Running {
    thread: Option<JoinHandle<Result<()>>>,
    /// Dropped after the thread is joined.
    _held: Option<HeldWinch>,
}

impl Running {
    /// Waits until the relay has ended (the process has ended and the pty given its last
    /// output), then lets SIGWINCH act on this thread as before; what the relay failed with.
    pub fn finish(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(RuntimeError::Invalid("the pty relay panicked".into())),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// SIGWINCH blocked on the thread that made this, unblocked when it is dropped unless it was
/// blocked before.
struct HeldWinch {
    unblock: bool,
}

impl Drop for HeldWinch {
    fn drop(&mut self) {
        if self.unblock {
            let mut winch = SigSet::empty();
            winch.add(Signal::SIGWINCH);
            let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&winch), None);
        }
    }
}

/// SIGPIPE blocked on the thread that made this (see `Relay::copy`), unblocked when it is
/// dropped unless it was blocked before.
struct HeldSigpipe {
    unblock: bool,
}

impl HeldSigpipe {
    fn new() -> Result<HeldSigpipe> {
        let mut before = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigpipe()), Some(&mut before))
            .map_err(|e| RuntimeError::nix("blocking", "SIGPIPE", e))?;
        Ok(HeldSigpipe {
            unblock: !before.contains(Signal::SIGPIPE),
        })
    }
}

impl Drop for HeldSigpipe {
    fn drop(&mut self) {
        if self.unblock {
            let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigpipe()), None);
        }
    }
}

fn sigpipe() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    set
}

/// Takes the SIGPIPE a write that failed with EPIPE raised for this thread, where it waits
/// blocked (see [`HeldSigpipe`]): unblocked, it would end the process.
fn take_back_sigpipe() {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: sigtimedwait reads the set and the timeout we pass; no siginfo is asked for.
    unsafe { libc::sigtimedwait(sigpipe().as_ref(), std::ptr::null_mut(), &zero) };
}

/// Adds `fd` to `fds`; its place.
fn watch<'a>(fds: &mut Vec<PollFd<'a>>, fd: BorrowedFd<'a>, flags: PollFlags) -> usize {
    fds.push(PollFd::new(fd, flags));
    fds.len() - 1
}

/// Where the pty's output goes.
struct Output {
    to: Box<dyn Write + Send>,
    /// False once writing failed: the output is still read, and dropped.
    ok: bool,
}

/// What reading the master gave.
enum Read {
    /// So many bytes (passed on), and perhaps more to come.
    More(usize),
    /// Every process that had the pty has closed it.
    Closed,
}

impl Output {
    /// Reads what the master has now, up to about `limit` bytes, and writes it out.
    fn pass(&mut self, master: BorrowedFd, buf: &mut [u8], limit: usize) -> Read {
        let mut passed = 0;
        while passed < limit {
            match nix::unistd::read(master, buf) {
                // EIO: no process has the pty open any more.
                Ok(0) | Err(nix::Error::EIO) => return Read::Closed,
                Ok(n) => {
                    passed += n;
                    if self.ok
                        && let Err(e) = self.to.write_all(&buf[..n]).and_then(|()| self.to.flush())
                    {
                        self.ok = false;
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            take_back_sigpipe();
                        }
                    }
                }
                Err(nix::Error::EINTR) => {}
                Err(nix::Error::EAGAIN) => break,
                Err(_) => return Read::Closed,
            }
        }
        Read::More(passed)
    }
}

/// Writes what the (non-blocking) master takes of `pending` now, keeping the rest; false
/// when it takes no more (the pty is gone), with `pending` cleared.
fn push_input(master: BorrowedFd, pending: &mut Vec<u8>) -> bool {
    while !pending.is_empty() {
        match nix::unistd::write(master, pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => return true,
            Err(_) => {
                pending.clear();
                return false;
            }
        }
    }
    true
}

fn set_nonblocking(fd: BorrowedFd) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL)
        .map_err(|e| RuntimeError::nix("reading the flags of", "the pty", e))?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| RuntimeError::nix("making non-blocking", "the pty", e))?;
    Ok(())
}

/// A descriptor for `pid`'s exit (pidfd_open, Linux 5.3); None where there is none.
fn pidfd(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open with plain integers; a descriptor it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: as above.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether our child `pid` has ended (it is left to be reaped; one reaped meanwhile, by
/// another thread, has ended too).
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

/// A foreground `twill-run run -t` or `exec -t`: the pty's output to stdout until our child
/// `child` has ended, the pty sized as the caller's terminal; with `interactive`, the
/// caller's input to the pty, and its terminal (stdin, which twill-run has checked is one)
/// in raw mode meanwhile, restored after. Failures are reported, not returned: the caller still
/// has its child to reap.
pub fn attach(master: OwnedFd, child: Pid, interactive: bool) {
    let raw = match interactive.then(|| Terminal::among(&[0])).flatten() {
        Some(stdin) => stdin
            .raw_mode(RawOutput::AsWritten)
            .map_err(|e| eprintln!("twill-run: {e}: keys keep the terminal's own meaning"))
            .ok(),
        None => None,
    };
    let mut relay = Relay::new(master, Stdout).size_from(Terminal::among(&STDIO));
    if interactive {
        relay = relay.input();
    }
    let relayed = relay.run(child);
    drop(raw);
    if let Err(e) = relayed {
        eprintln!("twill-run: {e}: the rest of the output is lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    #[test]
    fn raw_mode_keeps_output_processing_only_for_twill_oci_as_runc_s_set_raw() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let cooked = termios::tcgetattr(&pty.slave).unwrap();
        use termios::{LocalFlags, OutputFlags};
        assert!(
            cooked
                .output_flags
                .contains(OutputFlags::OPOST | OutputFlags::ONLCR)
        );
        let as_written = raw_settings(&cooked, RawOutput::AsWritten);
        assert!(!as_written.output_flags.contains(OutputFlags::OPOST));
        let processed = raw_settings(&cooked, RawOutput::Processed);
        assert!(
            processed
                .output_flags
                .contains(OutputFlags::OPOST | OutputFlags::ONLCR)
        );
        for raw in [as_written, processed] {
            assert!(
                !raw.local_flags
                    .intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
            );
        }
    }

    #[test]
    fn a_pty_without_onlcr_passes_a_newline_as_written() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let master = File::from(pty.master);
        let mut slave = File::from(pty.slave);
        let read = |n: usize| {
            let mut got = vec![0u8; n];
            (&master).read_exact(&mut got).unwrap();
            got
        };
        slave.write_all(b"a\n").unwrap();
        assert_eq!(read(3), b"a\r\n");
        clear_onlcr(master.as_fd()).unwrap();
        slave.write_all(b"b\n").unwrap();
        assert_eq!(read(2), b"b\n");
    }

    #[test]
    fn an_interrupted_call_is_made_again_and_any_other_outcome_kept() {
        let mut calls = 0;
        let r = restarted(|| {
            calls += 1;
            if calls < 3 {
                Err(nix::Error::EINTR)
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: nix::Result<()> = restarted(|| {
            calls += 1;
            Err(nix::Error::EIO)
        });
        assert_eq!((r, calls), (Err(nix::Error::EIO), 1));
    }

    const SIGPIPE_CHILD: &str = "TWILL_TTY_TEST_SIGPIPE_CHILD";

    #[test]
    fn a_relay_whose_output_closed_leaves_sigpipe_to_end_the_process_afterwards() {
        // Before: the relay set SIGPIPE to SIG_IGN for the whole process and left it so:
        // twill-run, which keeps the default, no longer ended quietly on a later write to a
        // closed pipe (EPIPE instead; its eprintln panicked, exit 101). Run in a child of
        // this test binary, where SIGPIPE can be set to its default without touching the
        // other tests.
        if std::env::var_os(SIGPIPE_CHILD).is_some() {
            relay_into_a_closed_pipe_then_write_to_another();
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tty::tests::a_relay_whose_output_closed_leaves_sigpipe_to_end_the_process_afterwards",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SIGPIPE_CHILD, "1")
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("relay ended"), "{said}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{:?}: {said}",
            out.status
        );
    }

    /// In the child: a relay whose output is a pipe with no reader, then a write to another
    /// such pipe, which must end the process by SIGPIPE (exit 3 if it does not).
    fn relay_into_a_closed_pipe_then_write_to_another() -> ! {
        // SAFETY: setting the default disposition installs no handler.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let pty = nix::pty::openpty(None, None).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let mut child = Command::new("sh")
            .args(["-c", "echo to-a-pipe-nobody-reads"])
            .stdout(Stdio::from(pty.slave))
            .spawn()
            .unwrap();
        Relay::new(pty.master, File::from(w))
            .run(Pid::from_raw(child.id() as i32))
            .unwrap();
        child.wait().unwrap();
        println!("relay ended");
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let _ = nix::unistd::write(&w, b"x");
        std::process::exit(3)
    }
}

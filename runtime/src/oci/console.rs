//! `process.terminal`: a pty made inside the container (its devpts), the master sent to the
//! engine's `--console-socket` (SCM_RIGHTS, as runc does), or to a foreground `run` over a
//! socketpair (see `crate::tty`), the slave made the process's controlling terminal and
//! stdio.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, connect, sendmsg, socket,
};

use crate::error::{Result, RuntimeError};

/// Connects to the engine's console socket; done by the runtime before it enters the
/// container's mount namespace, where the socket's path does not exist.
pub fn connect_socket(socket_path: &Path) -> Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| RuntimeError::nix("creating socket for", socket_path.display(), e))?;
    let addr = UnixAddr::new(socket_path)
        .map_err(|e| RuntimeError::nix("addressing", socket_path.display(), e))?;
    connect(sock.as_raw_fd(), &addr)
        .map_err(|e| RuntimeError::nix("connecting to console socket", socket_path.display(), e))?;
    Ok(sock)
}

/// Opens a pty, sends its master over `sock` (see `connect_socket`), makes the slave stdio
/// and the controlling terminal. `console`: bind the slave over /dev/console too (the
/// container's first process).
pub fn setup_pty(
    sock: &OwnedFd,
    console: bool,
    size: Option<crate::oci::spec::ConsoleSize>,
) -> Result<()> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::nix("opening", "/dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| RuntimeError::nix("grantpt", "pty", e))?;
    nix::pty::unlockpt(&master).map_err(|e| RuntimeError::nix("unlockpt", "pty", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| RuntimeError::nix("ptsname", "pty", e))?;
    let slave: OwnedFd = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RuntimeError::nix("opening", &name, e))?;
    if let Some(sz) = size {
        let ws = libc::winsize {
            ws_row: sz.height,
            ws_col: sz.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we pass, on the master we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let fds = [master.as_raw_fd()];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| RuntimeError::nix("sending the pty to", "the console socket", e))?;
    drop(master);
    if console {
        let _ = nix::mount::mount(
            Some(Path::new(&name)),
            "/dev/console",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
    }
    // A new session to take the pty as its controlling terminal; a process that leads one
    // already (the container's first, see `oci::init`, and twill-run's) keeps its own.
    let _ = nix::unistd::setsid();
    // SAFETY: TIOCSCTTY on the slave we own; dup2 onto the standard descriptors.
    unsafe {
        if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) < 0 {
            return Err(RuntimeError::io(
                "making the pty the controlling terminal",
                &name,
                std::io::Error::last_os_error(),
            ));
        }
        for fd in 0..3 {
            libc::dup2(slave.as_raw_fd(), fd);
        }
    }
    Ok(())
}

//! What twill-run's processes say to each other over pipes, and the bytes each message is.
//! Every pipe carries one direction; EOF means the writer is gone (it exited, or exec'd and
//! the close-on-exec end closed).
//!
//! - Container start (`process.rs`): one-byte [`Handshake`]s between twill-run and the
//!   container's first process, and the child's failure reason on the error pipe.
//! - `run -d` (`container.rs`): the monitor's one [`MonitorReport`] to the command that
//!   forked it.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

/// The one-byte messages of a container start, each on its own pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// twill-run → child: you are in your cgroup; go on towards exec.
    Go,
    /// child → twill-run: I have unshared my user namespace; write my uid/gid maps.
    UsernsUnshared,
    /// twill-run → child: your uid/gid maps are written.
    MapsWritten,
    /// child → twill-oci create: the container is built; I now wait for `start`.
    Ready,
    /// child → twill-oci create: my mounts are in place; run the prestart and createRuntime
    /// hooks before I pivot_root.
    HooksPlease,
    /// twill-oci create → child: the hooks ran; go on.
    HooksRan,
}

impl Handshake {
    /// The byte on the pipe: distinct per message, so one read from the wrong pipe is caught.
    pub const fn byte(self) -> u8 {
        match self {
            Handshake::Go => b'G',
            Handshake::UsernsUnshared => b'U',
            Handshake::MapsWritten => b'M',
            Handshake::Ready => b'R',
            Handshake::HooksPlease => b'P',
            Handshake::HooksRan => b'H',
        }
    }

    /// The message a byte stands for.
    pub fn from_byte(b: u8) -> Option<Handshake> {
        [
            Handshake::Go,
            Handshake::UsernsUnshared,
            Handshake::MapsWritten,
            Handshake::Ready,
            Handshake::HooksPlease,
            Handshake::HooksRan,
        ]
        .into_iter()
        .find(|h| h.byte() == b)
    }
}

/// Sends `msg` on the write end `fd`.
pub fn send(fd: impl AsFd, msg: Handshake) -> io::Result<()> {
    loop {
        match nix::unistd::write(fd.as_fd(), &[msg.byte()]) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}

/// Waits for `want` on the read end `fd`. Fails on EOF (the writer went away first), on
/// another message, or on a read error.
pub fn expect(fd: impl AsFd, want: Handshake) -> io::Result<()> {
    let mut b = [0u8; 1];
    let n = loop {
        match nix::unistd::read(fd.as_fd(), &mut b) {
            Ok(n) => break n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    };
    match (n, Handshake::from_byte(b[0])) {
        (0, _) => Err(io::ErrorKind::UnexpectedEof.into()),
        (_, Some(got)) if got == want => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected {want:?}, got byte {:#04x}", b[0]),
        )),
    }
}

/// The child's side of the error pipe: why it failed before exec, as UTF-8 text. It exits
/// right after, so the text ends at EOF.
pub fn report_failure(fd: impl AsFd, reason: &str) {
    let mut rest = reason.as_bytes();
    while !rest.is_empty() {
        match nix::unistd::write(fd.as_fd(), rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(nix::Error::EINTR) => continue,
            // Nobody to tell: the exit code still says it failed.
            Err(_) => return,
        }
    }
}

/// twill-run's side of the error pipe: reads to EOF (the child exec'd or exited). None when
/// the child exec'd without a word; else its reason.
pub fn read_failure(fd: OwnedFd) -> Option<String> {
    let mut bytes = Vec::new();
    let _ = File::from(fd).read_to_end(&mut bytes);
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// What the `run -d` monitor tells the command that forked it, once, before closing its end:
/// `ok <ID>` or `err <reason>` in UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorReport {
    /// The container runs under the monitor.
    Running { id: String },
    /// The start failed; nothing was left behind.
    Failed { reason: String },
}

impl MonitorReport {
    /// The bytes on the pipe.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            MonitorReport::Running { id } => format!("ok {id}"),
            MonitorReport::Failed { reason } => format!("err {reason}"),
        }
        .into_bytes()
    }

    /// Reads what the monitor wrote before EOF; anything else (nothing at all, when it died
    /// before writing) is a failure.
    pub fn decode(bytes: &[u8]) -> MonitorReport {
        let text = String::from_utf8_lossy(bytes);
        if let Some(id) = text.strip_prefix("ok ") {
            MonitorReport::Running { id: id.to_string() }
        } else {
            MonitorReport::Failed {
                reason: text
                    .strip_prefix("err ")
                    .unwrap_or("the monitor died")
                    .to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn handshake_bytes_are_distinct_and_read_back() {
        let all = [
            Handshake::Go,
            Handshake::UsernsUnshared,
            Handshake::MapsWritten,
            Handshake::Ready,
            Handshake::HooksPlease,
            Handshake::HooksRan,
        ];
        for h in all {
            assert_eq!(Handshake::from_byte(h.byte()), Some(h));
            assert_eq!(all.iter().filter(|o| o.byte() == h.byte()).count(), 1);
        }
        assert_eq!(Handshake::from_byte(b'1'), None);
    }

    #[test]
    fn expect_takes_the_right_message_and_refuses_eof_and_others() {
        let (r, w) = pipe();
        send(&w, Handshake::Go).unwrap();
        send(&w, Handshake::MapsWritten).unwrap();
        expect(&r, Handshake::Go).unwrap();
        let wrong = expect(&r, Handshake::UsernsUnshared).unwrap_err();
        assert_eq!(wrong.kind(), io::ErrorKind::InvalidData, "{wrong}");
        drop(w);
        let eof = expect(&r, Handshake::Go).unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_failure_reason_reads_back_and_silence_is_none() {
        let (r, w) = pipe();
        report_failure(&w, "joining netns /x: ENOENT");
        drop(w);
        assert_eq!(read_failure(r).as_deref(), Some("joining netns /x: ENOENT"));
        let (r, w) = pipe();
        drop(w);
        assert_eq!(read_failure(r), None);
    }

    #[test]
    fn monitor_reports_keep_their_wire_format() {
        let ok = MonitorReport::Running { id: "ab12".into() };
        assert_eq!(ok.encode(), b"ok ab12");
        assert_eq!(MonitorReport::decode(&ok.encode()), ok);
        let failed = MonitorReport::Failed {
            reason: "no such image: x".into(),
        };
        assert_eq!(failed.encode(), b"err no such image: x");
        assert_eq!(MonitorReport::decode(&failed.encode()), failed);
        assert_eq!(
            MonitorReport::decode(b""),
            MonitorReport::Failed {
                reason: "the monitor died".into()
            }
        );
    }
}

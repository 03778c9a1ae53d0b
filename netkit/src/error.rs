//! The one error type of netkit. Every variant names the operation, the object and the
//! network namespace it happened in, so a log line alone says what to fix.

use std::io;

/// Result alias used throughout netkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and on what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request was refused by the kernel or could not be sent.
    #[error("{op} {object} in netns {netns}: {cause}")]
    Netlink {
        op: &'static str,
        object: String,
        netns: String,
        // The cause is part of the message and deliberately not `source()`: printing the
        // chain (`{:#}`) would say it twice.
        cause: NetlinkFailure,
    },
    /// A system call or file operation failed.
    #[error("{op} {object}: {cause}")]
    Io {
        op: &'static str,
        object: String,
        /// Part of the message, not `source()` (see `Netlink`).
        cause: io::Error,
    },
    /// Something that must exist does not.
    #[error("{kind} {name} not found{}", in_netns(netns))]
    NotFound {
        kind: &'static str,
        name: String,
        /// Empty when the object is no namespace's (a namespace itself).
        netns: String,
    },
    /// The caller asked for something invalid (bad name, bad value).
    #[error("{0}")]
    Invalid(String),
    /// An external tool (nft) failed.
    #[error("{op} in netns {netns}: {detail}")]
    Tool {
        op: &'static str,
        netns: String,
        detail: String,
    },
}

/// " in netns X", or nothing for an object that lives in no namespace.
fn in_netns(netns: &str) -> String {
    if netns.is_empty() {
        String::new()
    } else {
        format!(" in netns {netns}")
    }
}

/// The kernel's answer to a netlink request, reduced to what callers need.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkFailure {
    /// The kernel answered with an errno.
    #[error("{0}")]
    Errno(io::Error),
    /// The request could not be completed for another reason.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// This error with the link `index` named `name`: messages name a link by its index
    /// (`link #5`, `dev #5`), which tells a caller who knows the link by name (a CNI runtime,
    /// by CNI_IFNAME) nothing.
    pub fn naming_link(self, index: u32, name: &str) -> Error {
        let fix = |text: String| replace_index(&text, index, name);
        match self {
            Error::Netlink {
                op,
                object,
                netns,
                cause,
            } => Error::Netlink {
                op,
                object: fix(object),
                netns,
                cause,
            },
            Error::NotFound { kind, name, netns } => Error::NotFound {
                kind,
                name: fix(name),
                netns,
            },
            Error::Invalid(msg) => Error::Invalid(fix(msg)),
            other => other,
        }
    }

    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                cause: NetlinkFailure::Errno(e),
                ..
            } => e.raw_os_error(),
            Error::Io { cause, .. } => cause.raw_os_error(),
            _ => None,
        }
    }

    /// True when the kernel said the object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the object is absent (ENOENT, ENODEV, ESRCH or our own NotFound).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
            || matches!(
                self.errno(),
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH)
            )
    }

    /// An I/O error saying what was being done (`op`) to which object.
    pub fn io(op: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op,
            object: object.into(),
            cause: source,
        }
    }

    pub(crate) fn nix(op: &'static str, object: impl Into<String>, errno: nix::Error) -> Self {
        Error::io(op, object, io::Error::from_raw_os_error(errno as i32))
    }
}

impl From<rtnetlink::Error> for NetlinkFailure {
    fn from(e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(msg) if msg.code.is_some() => {
                NetlinkFailure::Errno(msg.to_io())
            }
            other => NetlinkFailure::Other(other.to_string()),
        }
    }
}

/// `text` with every `link #<index>` / `dev #<index>` (not a longer number) naming `name`.
fn replace_index(text: &str, index: u32, name: &str) -> String {
    let needle = format!("#{index}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        let (before, after) = (&rest[..at], &rest[at + needle.len()..]);
        let is_link = before.ends_with("link ") || before.ends_with("dev ");
        let whole = !after.starts_with(|c: char| c.is_ascii_digit());
        out.push_str(before);
        out.push_str(if is_link && whole { name } else { &needle });
        rest = after;
    }
    out.push_str(rest);
    out
}

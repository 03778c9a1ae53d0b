//! The runtime's error type: what failed, on what.

/// Result alias of the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{op} {object}: {cause}")]
    Io {
        op: &'static str,
        object: String,
        /// Part of the message, not `source()`: printing the chain (`{:#}`) would say it
        /// twice.
        cause: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("no such container: {0}")]
    NoContainer(String),
    #[error(
        "no such image: {0} (load one with `twill-run load ARCHIVE` or `twill-run import TARBALL NAME`)"
    )]
    NoImage(String),
    /// Something wrong with an image archive, named down to the entry.
    #[error("{archive}: {entry}: {reason}")]
    Archive {
        archive: String,
        entry: String,
        reason: String,
    },
    #[error(transparent)]
    Netkit(#[from] twill_netkit::Error),
    #[error("network: {0}")]
    Network(String),
    /// execve of the container's command failed.
    #[error("executing {command}: {cause}")]
    Exec {
        command: String,
        cause: std::io::Error,
    },
    /// The container's command could not be started (see [`RuntimeError::exec_exit_code`]).
    #[error("{reason}")]
    Command { reason: String, exit_code: i32 },
    /// A signal ended what the runtime was waiting for (a start waiting for a CNI plugin).
    #[error("interrupted by {signal}: {what}; the start was undone")]
    Interrupted {
        what: String,
        signal: nix::sys::signal::Signal,
    },
}

impl RuntimeError {
    /// The exit code Docker and podman give a command that could not be executed, which
    /// scripts test for: 127 when it does not exist, 126 when it cannot be run. None for any
    /// other failure (twill-run's own: 125).
    pub fn exec_exit_code(&self) -> Option<i32> {
        match self {
            RuntimeError::Exec { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => {
                Some(127)
            }
            RuntimeError::Exec { .. } => Some(126),
            RuntimeError::Command { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
    /// The exit code a command line gives for this error, when not its own failure (125 for
    /// twill-run): 126/127 as [`RuntimeError::exec_exit_code`], and 128+signal for a signal
    /// that ended a start, as a shell reports a command a signal ended (so a SIGTERM to a
    /// foreground `run` gives 143 whether the container was running yet or not).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            RuntimeError::Interrupted { signal, .. } => Some(128 + *signal as i32),
            e => e.exec_exit_code(),
        }
    }
    pub(crate) fn archive(
        archive: impl std::fmt::Display,
        entry: impl std::fmt::Display,
        reason: impl std::fmt::Display,
    ) -> Self {
        RuntimeError::Archive {
            archive: archive.to_string(),
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }
    /// The message without the `network: ` prefix, to join into a message that has it once.
    pub(crate) fn network_detail(&self) -> String {
        match self {
            RuntimeError::Network(m) => m.clone(),
            e => e.to_string(),
        }
    }
    pub(crate) fn io(
        op: &'static str,
        object: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        RuntimeError::Io {
            op,
            object: object.to_string(),
            cause: source,
        }
    }
    pub(crate) fn nix(op: &'static str, object: impl std::fmt::Display, e: nix::Error) -> Self {
        RuntimeError::io(op, object, std::io::Error::from_raw_os_error(e as i32))
    }
}

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
}

impl RuntimeError {
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

//! Errors of the test bed.

/// Result alias of the test bed.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// What went wrong while building or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Netkit(#[from] twill_netkit::Error),
    #[error("{op} {object}: {cause}")]
    Io {
        op: &'static str,
        object: String,
        /// Part of the message, not `source()`: printing the chain (`{:#}`) would say it
        /// twice.
        cause: std::io::Error,
    },
    #[error("etcd {name}: {detail}")]
    Etcd { name: String, detail: String },
    /// A helper program (openssl, etcdctl) ran but failed; `detail` holds what it said.
    #[error("{command}: {detail}")]
    Command { command: String, detail: String },
    #[error("{what}: nothing after {waited:?}")]
    Timeout {
        what: String,
        waited: std::time::Duration,
    },
    #[error("{0}")]
    Invalid(String),
}

impl LabError {
    pub(crate) fn io(op: &'static str, object: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            op,
            object: object.into(),
            cause: source,
        }
    }
}

//! An exclusive `flock` on a file, held until dropped: the IPAM store and the masquerade
//! state each serialise parallel invocations with one.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{CniError, CniResult, IO_FAILURE};

/// The held lock; released when dropped (closing the file drops the flock).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Opens (creating) `path` and takes an exclusive flock on it, blocking.
pub fn lock_exclusive(path: &Path) -> CniResult<FileLock> {
    let io_err = |op: &str, e: std::io::Error| {
        CniError::new(IO_FAILURE, format!("{op} {}: {e}", path.display()))
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io_err("opening lock file", e))?;
    loop {
        // SAFETY: flock on an fd this function owns and keeps open in the returned guard.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(FileLock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io_err("locking", e));
        }
    }
}

//! Small helpers for processes and ports used by the fixtures.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_local_port() -> Result<u16> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| LabError::io("binding", "127.0.0.1:0", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| LabError::io("reading address of", "listener", e))
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a helper program to completion; its output, or an error named `what` (e.g.
/// `etcdctl get k`) that carries what it printed on stderr.
pub(crate) fn run_tool(cmd: &mut Command, what: String) -> Result<String> {
    let out = cmd.output().map_err(|e| LabError::Command {
        command: what.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

//! Small helpers for processes and ports used by the fixtures.

use std::net::TcpListener;
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

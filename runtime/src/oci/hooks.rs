//! runtime-spec hooks: each runs in the runtime's namespaces with the container's state JSON
//! on stdin; a failing prestart/createRuntime hook fails `create`, a failing poststart or
//! poststop hook is reported and ignored (as runc does).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, RuntimeError};
use crate::oci::spec::Hook;

/// Runs one hook to completion (killed after its timeout).
pub fn run(hook: &Hook, state: &serde_json::Value) -> Result<()> {
    let what = || format!("hook {}", hook.path);
    let mut cmd = Command::new(&hook.path);
    if let Some((argv0, rest)) = hook.args.split_first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for e in &hook.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| RuntimeError::io("running", what(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let deadline = hook
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(t));
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                return Err(RuntimeError::Invalid(format!("{} failed: {st}", what())));
            }
            Ok(None) => {}
            Err(e) => return Err(RuntimeError::io("waiting for", what(), e)),
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RuntimeError::Invalid(format!("{} timed out", what())));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `hooks` in order; the first failure stops them.
pub fn run_all(hooks: &[Hook], state: &serde_json::Value, stage: &str) -> Result<()> {
    for h in hooks {
        run(h, state).map_err(|e| RuntimeError::Invalid(format!("{stage} {e}")))?;
    }
    Ok(())
}

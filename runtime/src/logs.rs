//! `logs [-f]`: what a detached container wrote (its `log` file: the process writes there
//! itself, or with `-t` its monitor copies the pty there), and with `-f` what it goes on
//! writing until its main process has ended, as `docker logs -f`.

use std::fs;
use std::io::{self, Read, Write};
use std::time::Duration;

use crate::container::alive;
use crate::error::{Result, RuntimeError};
use crate::store::{Status, Store};

/// How often `-f` looks for more output and for the container's end.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// Whether container `id` may still write to its log: its monitor has not recorded its end
/// yet (a `-t` container's output reaches the log through the monitor, which records the end
/// only once it has copied everything), or, with its monitor gone, its process still runs.
fn may_write(store: &Store, id: &str) -> Result<bool> {
    let st = match store.load(id) {
        Ok(st) => st,
        // Removed (`--rm`, `rm -f`): it has ended.
        Err(RuntimeError::NoContainer(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(st.status == Status::Running
        && (st.monitor_pid.is_some_and(|m| alive(m, st.monitor_start))
            || st.pid.is_some_and(|p| alive(p, st.pid_start))))
}

/// Writes container `id`'s log to `out`; with `follow`, then what is added to it until the
/// container's main process has ended (the log is read to its end once more after that).
/// A container with no log (a foreground one) has nothing to show.
pub fn write(store: &Store, id: &str, follow: bool, out: &mut dyn Write) -> Result<()> {
    let st = store.load(id)?;
    let path = store.container_dir(&st.id).join("log");
    let mut log = None;
    let failed = |e| RuntimeError::io("writing the log of", &st.name, e);
    loop {
        // Looked at before the read: all it wrote is in the log once it has ended.
        let more = follow && may_write(store, &st.id)?;
        if log.is_none() {
            log = match fs::File::open(&path) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(RuntimeError::io("opening", path.display(), e)),
            };
        }
        if let Some(f) = &mut log {
            let mut buf = [0u8; 65536];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(RuntimeError::io("reading", path.display(), e)),
                };
                out.write_all(&buf[..n]).map_err(failed)?;
            }
            out.flush().map_err(failed)?;
        }
        if !more {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

//! What twill-oci keeps per container under `--root` (`<root>/<id>/state.json`, and the
//! `exec.fifo` the created container blocks on), and the runtime-spec state it reports.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::oci::spec::Hooks;

/// The fifo a created container's process opens for writing; `start` reads it.
pub const EXEC_FIFO: &str = "exec.fifo";

/// Saved per container.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Saved {
    pub id: String,
    pub pid: i32,
    /// The process's start time (field 22 of /proc/PID/stat): a reused PID is not ours.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The cgroup, relative to each hierarchy's root.
    pub cgroup: String,
    /// Run at `delete`.
    pub hooks: Hooks,
}

/// runtime-spec's status of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Only in the state hooks get during `create` (`status` never reports it: a container
    /// being created has no saved state yet).
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// The runtime's state directory.
pub struct Root {
    pub dir: PathBuf,
}

fn valid_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 1024
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b))
        || id.starts_with('.')
    {
        return Err(RuntimeError::Invalid(format!(
            "invalid container id {id:?}: use letters, digits and _.-+"
        )));
    }
    Ok(())
}

impl Root {
    pub fn container_dir(&self, id: &str) -> Result<PathBuf> {
        valid_id(id)?;
        Ok(self.dir.join(id))
    }

    pub fn load(&self, id: &str) -> Result<Saved> {
        let p = self.container_dir(id)?.join("state.json");
        let text = fs::read_to_string(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RuntimeError::NoContainer(id.to_string())
            } else {
                RuntimeError::io("reading", p.display(), e)
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| RuntimeError::Invalid(format!("parsing {}: {e}", p.display())))
    }

    pub fn save(&self, s: &Saved) -> Result<()> {
        let dir = self.container_dir(&s.id)?;
        let text = serde_json::to_vec_pretty(s)
            .map_err(|e| RuntimeError::Invalid(format!("encoding state of {}: {e}", s.id)))?;
        crate::store::write_atomic(&dir.join("state.json"), &text)
    }

    /// IDs of all containers.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(RuntimeError::io("reading", self.dir.display(), e)),
        };
        for e in rd.flatten() {
            if e.path().join("state.json").exists() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Field 22 (starttime) of /proc/PID/stat; None when the process is gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Saved {
    /// Whether the container's first process is still the one we started.
    pub fn alive(&self) -> bool {
        self.pid > 0 && start_time(self.pid) == Some(self.pid_start)
    }

    pub fn status(&self, dir: &Path) -> Status {
        if !self.alive() {
            Status::Stopped
        } else if dir.join(EXEC_FIFO).exists() {
            Status::Created
        } else if crate::oci::cgroups::frozen(&self.cgroup) {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// The runtime-spec state JSON.
    pub fn state_json(&self, status: Status) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ociVersion": crate::oci::SPEC_VERSION,
            "id": self.id,
            "status": status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
        });
        if status != Status::Stopped {
            v["pid"] = self.pid.into();
        } else {
            v["pid"] = 0.into();
        }
        if !self.annotations.is_empty() {
            v["annotations"] = serde_json::to_value(&self.annotations).unwrap_or_default();
        }
        v
    }
}

pub use crate::store::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_798_555_195), "2026-12-29T14:39:55Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn ids_with_slashes_or_dots_are_refused() {
        let r = Root {
            dir: PathBuf::from("/nonexistent"),
        };
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(r.container_dir(bad).is_err(), "{bad}");
        }
        assert!(r.container_dir("abc-1_2.3").is_ok());
    }
}

//! The on-disk store under `--root` (default `/var/lib/twill`):
//! `images/<name>/image.json` (a `/` in the name stored as `%2F`), `layers/<diff-id hex>/{diff/,
//! layer.json}` (shared by images), `tmp/` (imports being staged), `containers/<id>/{state.json,
//! upper/, work/, init/, rootfs/, log}`, `volumes/<id>/_data`, `pending-del/<id>.json` (CNI DELs
//! to call again, see `network::retry_pending_dels`) with its `<id>.lock`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// The store root.
#[derive(Clone, Debug)]
pub struct Store {
    pub root: PathBuf,
}

/// What `inspect` shows and what later commands need.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct State {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub status: Status,
    /// PID of the container's PID 1, as seen from the host.
    pub pid: Option<i32>,
    /// Its start time (field 22 of /proc/PID/stat): a PID reused by another process is not
    /// the container's. Absent in states written before it was recorded.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// PID of the monitor that waits for it.
    pub monitor_pid: Option<i32>,
    #[serde(default)]
    pub monitor_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub hostname: String,
    pub network_mode: String,
    pub network_name: Option<String>,
    /// Named netns holding the container's network (bridge/none).
    pub netns: Option<String>,
    pub ips: Vec<String>,
    /// The CNI result of the ADD (bridge mode), for inspect and DEL.
    pub cni_result: Option<serde_json::Value>,
    pub mounts: Vec<MountSpec>,
    pub limits: Limits,
    pub cgroup: Option<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: Option<String>,
    /// `--userns` range as `HOSTID:SIZE`.
    #[serde(default)]
    pub userns: Option<String>,
    pub ports: Vec<PortSpec>,
    /// The image's labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// What `stop` sends first (the image's StopSignal; SIGTERM when unset).
    #[serde(default)]
    pub stop_signal: Option<String>,
    pub auto_remove: bool,
    pub created_unix: u64,
}

/// Where a container is in its life. On disk and in `inspect` it is the lower-case word
/// (`"status": "running"`), as before it was an enum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its directory and state exist; PID 1 is not started yet.
    #[default]
    Created,
    /// PID 1 was started and has not been seen to end.
    Running,
    /// PID 1 has ended; `exit_code` says how.
    Exited,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        })
    }
}

/// A volume mount.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub target: String,
    pub readonly: bool,
    /// Anonymous volume (under `<root>/volumes`).
    pub anonymous: bool,
}

/// A published port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortSpec {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    /// The one host address the port is published on (`-p IP:HOST:CONTAINER`); None: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
}

/// Resource limits.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

fn ensure_dir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| RuntimeError::io("creating directory", p.display(), e))
}

impl Store {
    /// Opens (creating) the store.
    pub fn open(root: &Path) -> Result<Store> {
        for sub in ["images", "layers", "tmp", "containers", "volumes"] {
            ensure_dir(&root.join(sub))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.root.join("images").join(name)
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.root.join("volumes").join(id)
    }

    /// Saves a container's state atomically.
    pub fn save(&self, st: &State) -> Result<()> {
        let dir = self.container_dir(&st.id);
        ensure_dir(&dir)?;
        let text =
            serde_json::to_vec_pretty(st).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        write_atomic(&dir.join("state.json"), &text)
    }

    /// Loads a container by ID, unique ID prefix, or name.
    pub fn load(&self, id_or_name: &str) -> Result<State> {
        let all = self.list()?;
        if let Some(s) = all
            .iter()
            .find(|s| s.id == id_or_name || s.name == id_or_name)
        {
            return Ok(s.clone());
        }
        let matches: Vec<&State> = all
            .iter()
            .filter(|s| s.id.starts_with(id_or_name))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RuntimeError::NoContainer(id_or_name.to_string())),
            _ => Err(RuntimeError::Invalid(format!(
                "{id_or_name} matches several containers: give more of the ID"
            ))),
        }
    }

    /// Held while a new container's name is checked and its first state saved: two `run
    /// --name X` at the same time would otherwise both find X free and both take it.
    pub fn lock_names(&self) -> Result<NamesLock> {
        Ok(NamesLock {
            _lock: lock_file(&self.root.join("names.lock"))?,
        })
    }

    /// Every container's state.
    pub fn list(&self) -> Result<Vec<State>> {
        let dir = self.root.join("containers");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)
            .map_err(|e| RuntimeError::io("listing", dir.display(), e))?
            .flatten()
        {
            if let Ok(text) = fs::read(e.path().join("state.json"))
                && let Ok(st) = serde_json::from_slice::<State>(&text)
            {
                out.push(st);
            }
        }
        out.sort_by_key(|s| s.created_unix);
        Ok(out)
    }
}

/// An exclusive flock on `path` (created if missing), held until the value is dropped.
pub(crate) fn lock_file(path: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let f = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| RuntimeError::io("opening", path.display(), e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| RuntimeError::nix("locking", path.display(), e))
}

/// See [`Store::lock_names`]; released when dropped.
pub struct NamesLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// A new random container ID (64 hex digits, like Docker's).
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    twill_netkit::random::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-29T14:39:55Z`), as image configs and OCI
/// state write times.
pub fn rfc3339(unix: u64) -> String {
    // Days to a civil date (Howard Hinnant's civil_from_days), so no date crate is needed for
    // one field.
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Where [`write_atomic`] and [`write_durable`] stage `path`: `<path>.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes `bytes` to `path` through `<path>.tmp` and a rename, so readers never see half a
/// file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    fs::write(&tmp, bytes).map_err(|e| RuntimeError::io("writing", tmp.display(), e))?;
    fs::rename(&tmp, path).map_err(|e| RuntimeError::io("writing", path.display(), e))
}

/// [`write_atomic`] that also survives a crash of the machine: the data reach the disk before
/// the rename (else a crash may leave `path` renamed but empty), and the rename before this
/// returns. For records whose loss loses work nothing else would redo (a pending DEL);
/// container states do without, since a start saves its state several times and each fsync
/// would slow it. A crash before the rename leaves `<path>.tmp`, which the reader of such
/// records must handle.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = tmp_path(path);
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| RuntimeError::io("writing", tmp.display(), e))
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|e| RuntimeError::io("writing", path.display(), e))
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Written and in place: a directory that cannot be synced (a filesystem refusing fsync
    // on directories) makes it less durable, not unwritten.
    if let Err(e) = sync_dir_of(path) {
        eprintln!(
            "twill-run: warning: {e}: {} may not survive a crash",
            path.display()
        );
    }
    Ok(())
}

/// Makes a rename or creation in `path`'s directory durable.
pub fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RuntimeError::io("syncing directory", dir.display(), e))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn status_is_stored_as_the_words_state_json_always_had() {
        for (status, word) in [
            (Status::Created, "created"),
            (Status::Running, "running"),
            (Status::Exited, "exited"),
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), json!(word));
            assert_eq!(
                serde_json::from_value::<Status>(json!(word)).unwrap(),
                status
            );
            assert_eq!(status.to_string(), word);
        }
        let mut on_disk = serde_json::to_value(State::default()).unwrap();
        assert_eq!(on_disk["status"], "created");
        on_disk["status"] = json!("exited");
        let st: State = serde_json::from_value(on_disk).unwrap();
        assert_eq!(st.status, Status::Exited);
    }

    #[test]
    fn ids_are_64_hex_digits_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

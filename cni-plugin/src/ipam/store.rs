//! The on-disk IPAM store, laid out exactly like the reference host-local plugin's so
//! operators and tools that know it can read ours:
//! `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>` (IPv6 addresses in their
//! compressed lower-case form, as Go prints them), `last_reserved_ip.<N>` the round-robin
//! marker of the N-th range, and `lock` is flock()ed around every allocation and release.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::error::{CniError, CniResult, IO_FAILURE};
use crate::lockfile::{FileLock, lock_exclusive};

/// The round-robin marker of range `index`, as host-local names it.
fn last_reserved_file(index: usize) -> String {
    format!("last_reserved_ip.{index}")
}

/// One reservation read from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// The store of one network. Hold the [`StoreLock`] for any read-decide-write sequence.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

/// The exclusive lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: FileLock,
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::new(IO_FAILURE, format!("{op} {}: {e}", path.display()))
}

/// Parses a reservation file's content: `<id>\r\n<ifname>` (older host-local wrote only the id).
pub fn parse_owner(text: &str) -> (String, String) {
    let mut parts = text.splitn(2, '\n');
    let id = parts
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r')
        .trim()
        .to_string();
    let ifname = parts.next().unwrap_or_default().trim().to_string();
    (id, ifname)
}

impl Store {
    /// Opens (creating if needed) the store directory.
    pub fn open(dir: &Path) -> CniResult<Store> {
        fs::create_dir_all(dir).map_err(|e| io_err("creating IPAM directory", dir, e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive lock (blocking).
    pub fn lock(&self) -> CniResult<StoreLock> {
        Ok(StoreLock {
            _lock: lock_exclusive(&self.dir.join("lock"))?,
        })
    }

    /// Every reservation (files named by an address of either family).
    pub fn list(&self, _lock: &StoreLock) -> CniResult<Vec<Allocation>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("listing", &self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            // A file we cannot read is someone's reservation all the same.
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let (container_id, ifname) = parse_owner(&text);
            out.push(Allocation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// The reservations of an attachment (one per range), sorted.
    pub fn find(&self, lock: &StoreLock, id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
        Ok(self
            .list(lock)?
            .into_iter()
            .filter(|a| a.container_id == id && a.ifname == ifname)
            .map(|a| a.ip)
            .collect())
    }

    /// Reserves `ip` for an attachment; false if it is taken.
    pub fn reserve(
        &self,
        _lock: &StoreLock,
        ip: IpAddr,
        id: &str,
        ifname: &str,
    ) -> CniResult<bool> {
        let path = self.dir.join(ip.to_string());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                if let Err(e) = f.write_all(format!("{id}\r\n{ifname}").as_bytes()) {
                    // A file without its owner (a full disk) would hold the address for
                    // good: no DEL ever matches it.
                    drop(f);
                    let _ = fs::remove_file(&path);
                    return Err(io_err("writing", &path, e));
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("creating", &path, e)),
        }
    }

    /// The round-robin marker of range `index`.
    pub fn last_reserved(&self, _lock: &StoreLock, index: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(last_reserved_file(index)))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Moves the round-robin marker of range `index`.
    pub fn set_last_reserved(&self, _lock: &StoreLock, index: usize, ip: IpAddr) -> CniResult<()> {
        let path = self.dir.join(last_reserved_file(index));
        fs::write(&path, ip.to_string()).map_err(|e| io_err("writing", &path, e))
    }

    /// Releases every reservation of an attachment; returns the released addresses.
    pub fn release(&self, lock: &StoreLock, id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
        let mut released = Vec::new();
        for a in self.list(lock)? {
            if a.container_id == id && a.ifname == ifname {
                let path = self.dir.join(a.ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => released.push(a.ip),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing", &path, e)),
                }
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&tmp.path().join("net1")).unwrap();
        let l = s.lock().unwrap();
        let ip = IpAddr::from([10, 1, 0, 2]);
        assert!(s.reserve(&l, ip, "c1", "eth0").unwrap());
        assert!(!s.reserve(&l, ip, "c2", "eth0").unwrap(), "taken");
        s.set_last_reserved(&l, 0, ip).unwrap();
        let ip6: IpAddr = "fd00:1:0:0::2".parse().unwrap();
        assert!(s.reserve(&l, ip6, "c1", "eth0").unwrap());
        s.set_last_reserved(&l, 1, ip6).unwrap();
        assert_eq!(
            fs::read_to_string(s.dir().join("fd00:1::2")).unwrap(),
            "c1\r\neth0",
            "v6 files are named in compressed form"
        );
        assert_eq!(
            fs::read_to_string(s.dir().join("last_reserved_ip.1")).unwrap(),
            "fd00:1::2"
        );
        assert_eq!(s.last_reserved(&l, 1), Some(ip6));
        assert_eq!(
            fs::read_to_string(s.dir().join("10.1.0.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(s.dir().join("last_reserved_ip.0")).unwrap(),
            "10.1.0.2"
        );
        assert!(s.dir().join("lock").exists());
        assert_eq!(s.find(&l, "c1", "eth0").unwrap(), vec![ip, ip6]);
        assert!(s.find(&l, "c1", "eth1").unwrap().is_empty());
        assert_eq!(s.release(&l, "c1", "eth0").unwrap(), vec![ip, ip6]);
        assert!(s.release(&l, "c1", "eth0").unwrap().is_empty());
    }

    #[test]
    fn a_reservation_that_cannot_be_written_leaves_no_file() {
        // Before: on a full disk the file was created empty and stayed, an address held by
        // nobody that no DEL ever released.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: mounting a full tmpfs needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // A mount namespace for this thread alone, with a one-page tmpfs filled up.
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=4k"),
            )
            .unwrap();
            let s = Store::open(&dir.join("net1")).unwrap();
            let l = s.lock().unwrap();
            let _ = fs::write(dir.join("filler"), vec![0u8; 8192]);
            let ip = IpAddr::from([10, 1, 0, 2]);
            let e = s.reserve(&l, ip, "c1", "eth0").unwrap_err();
            assert!(e.msg.contains("10.1.0.2"), "{}", e.msg);
            assert!(
                !s.dir().join("10.1.0.2").exists(),
                "no empty reservation left"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn owner_parsing_tolerates_garbage() {
        assert_eq!(parse_owner("c1\r\neth0"), ("c1".into(), "eth0".into()));
        assert_eq!(parse_owner("c1"), ("c1".into(), String::new()));
        assert_eq!(parse_owner(""), (String::new(), String::new()));
        assert_eq!(parse_owner("\u{0}\u{ff}\n\n\n").0, "\u{0}\u{ff}");
    }
}

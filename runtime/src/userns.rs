//! User namespaces, for both front ends: root in the container is an unprivileged host ID
//! range. The process that enters the namespace unshares it and asks its parent (still host
//! root) to write its uid/gid maps ([`enter`] on one side, [`map_child`] on the other), then
//! becomes the namespace's root.
//!
//! - twill-run `--userns` ([`IdMap`], one range at container ID 0): the container process
//!   builds its rootfs as host root, then enters the user namespace right before exec. The
//!   image layers are mounted *idmapped* into the overlay (host 0 shows as the range's first
//!   ID), so the image looks root-owned inside and stays untouched on disk; the writable
//!   upper layer and anonymous volumes belong to the range.
//! - twill-oci (`linux.uidMappings`/`gidMappings`, [`IdMaps`], any ranges): the user
//!   namespace comes first and the container's other namespaces belong to it, as runc does;
//!   the engine hands over a rootfs already owned by the range (podman chowns it).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sched::{CloneFlags, unshare};
use serde::Deserialize;

use crate::error::{Result, RuntimeError};
use crate::messages::{self, Handshake};

/// The kernel's limit on lines in a uid_map or gid_map.
const MAX_RANGES: usize = 340;

/// One line of a uid or gid map: container IDs `container..container+size` are host IDs
/// `host..host+size` (runtime-spec's `linux.uidMappings` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct IdRange {
    #[serde(rename = "containerID")]
    pub container: u32,
    #[serde(rename = "hostID")]
    pub host: u32,
    pub size: u32,
}

/// The uid and gid maps of a user namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMaps {
    pub uid: Vec<IdRange>,
    pub gid: Vec<IdRange>,
}

impl IdMaps {
    /// Refuses maps the kernel would refuse (or that leave no root to build the container
    /// as), naming what is wrong.
    pub fn check(&self) -> Result<()> {
        for (what, ranges) in [("uidMappings", &self.uid), ("gidMappings", &self.gid)] {
            let bad = |why: String| Err(RuntimeError::Invalid(format!("linux.{what}: {why}")));
            if ranges.is_empty() {
                return bad("empty: a new user namespace needs both maps".into());
            }
            if ranges.len() > MAX_RANGES {
                return bad(format!(
                    "{} ranges, the kernel takes {MAX_RANGES}",
                    ranges.len()
                ));
            }
            for (i, r) in ranges.iter().enumerate() {
                if r.size == 0 {
                    return bad(format!("range {i} has size 0"));
                }
                if r.container.checked_add(r.size).is_none() || r.host.checked_add(r.size).is_none()
                {
                    return bad(format!("range {i} goes past the largest ID"));
                }
                for (j, o) in ranges[..i].iter().enumerate() {
                    let overlap = |a: u32, b: u32| a < b + o.size && b < a + r.size;
                    if overlap(r.container, o.container) || overlap(r.host, o.host) {
                        return bad(format!("ranges {j} and {i} overlap"));
                    }
                }
            }
            if to_host(ranges, 0).is_none() {
                return bad(
                    "container ID 0 is not mapped (the container is built as its root)".into(),
                );
            }
        }
        Ok(())
    }

    /// The host uid of container uid `id`, if mapped.
    pub fn uid_to_host(&self, id: u32) -> Option<u32> {
        to_host(&self.uid, id)
    }

    /// The host gid of container gid `id`, if mapped.
    pub fn gid_to_host(&self, id: u32) -> Option<u32> {
        to_host(&self.gid, id)
    }
}

fn to_host(ranges: &[IdRange], id: u32) -> Option<u32> {
    ranges
        .iter()
        .find(|r| id >= r.container && id - r.container < r.size)
        .map(|r| r.host + (id - r.container))
}

/// The text of `/proc/PID/uid_map` (or `gid_map`) for `ranges`.
fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect()
}

/// The host IDs container IDs 0..size map to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub host: u32,
    pub size: u32,
}

impl Default for IdMap {
    /// The first range /etc/subuid usually hands out.
    fn default() -> Self {
        IdMap {
            host: 100_000,
            size: 65_536,
        }
    }
}

impl IdMap {
    /// Parses `HOSTID:SIZE` (e.g. `100000:65536`).
    pub fn parse(s: &str) -> Result<IdMap> {
        let bad = |why: &str| {
            RuntimeError::Invalid(format!(
                "--userns {s:?}: {why} (expected HOSTID:SIZE, e.g. 100000:65536)"
            ))
        };
        let (h, n) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let host: u32 = h.parse().map_err(|_| bad("HOSTID is not a number"))?;
        let size: u32 = n.parse().map_err(|_| bad("SIZE is not a number"))?;
        if host == 0 {
            return Err(bad("HOSTID 0 would map root to root"));
        }
        if size == 0 {
            return Err(bad("SIZE must be at least 1"));
        }
        if host.checked_add(size).is_none() {
            return Err(bad("the range goes past the largest ID"));
        }
        Ok(IdMap { host, size })
    }

    /// The uid and gid maps: container 0.. is the range, for users and groups alike.
    pub fn maps(&self) -> IdMaps {
        let r = IdRange {
            container: 0,
            host: self.host,
            size: self.size,
        };
        IdMaps {
            uid: vec![r],
            gid: vec![r],
        }
    }

    /// The host ID of container ID `id`, if mapped.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        (id < self.size).then(|| self.host + id)
    }

    /// The container ID of host ID `id`, if it lies in the range.
    pub fn to_container(&self, id: u32) -> Option<u32> {
        (id >= self.host && id - self.host < self.size).then(|| id - self.host)
    }
}

impl std::fmt::Display for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.size)
    }
}

/// Writes the maps of the user namespace of process `pid`. The writer is host root (with
/// CAP_SETUID/CAP_SETGID over the parent namespace), so any ranges are allowed and
/// `setgroups` need not be denied (that is only required of an unprivileged writer).
pub fn write_maps(pid: i32, maps: &IdMaps) -> Result<()> {
    for (file, ranges) in [("uid_map", &maps.uid), ("gid_map", &maps.gid)] {
        let p = format!("/proc/{pid}/{file}");
        fs::write(&p, map_text(ranges)).map_err(|e| RuntimeError::io("writing", &p, e))?;
    }
    Ok(())
}

/// The pipe ends a process entering a new user namespace talks to its parent over: it sends
/// `UsernsUnshared` on `ask`, the parent answers `MapsWritten` on `done`.
pub struct MapHandshake<'a> {
    pub ask: &'a OwnedFd,
    pub done: &'a OwnedFd,
}

/// Enters a new user namespace, has the parent map it ([`map_child`]), and becomes its root.
pub fn enter(h: &MapHandshake) -> Result<()> {
    unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| RuntimeError::nix("unsharing", "user namespace", e))?;
    messages::send(h.ask, Handshake::UsernsUnshared)
        .map_err(|e| RuntimeError::io("asking for", "uid/gid maps", e))?;
    if messages::expect(h.done, Handshake::MapsWritten).is_err() {
        return Err(RuntimeError::Invalid(
            "the parent did not write the uid/gid maps".into(),
        ));
    }
    become_root()
}

/// The parent's side of [`enter`]: waits until process `pid` has unshared its user
/// namespace, writes the maps and answers. `Ok(false)`: the child went away before asking
/// (it failed earlier and says why on its error pipe).
pub fn map_child(pid: i32, maps: &IdMaps, ask: &OwnedFd, done: &OwnedFd) -> Result<bool> {
    if messages::expect(ask, Handshake::UsernsUnshared).is_err() {
        return Ok(false);
    }
    write_maps(pid, maps)?;
    let _ = messages::send(done, Handshake::MapsWritten);
    Ok(true)
}

/// setresgid/setresuid 0 (inside a freshly joined or mapped user namespace).
pub fn become_root() -> Result<()> {
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g)
        .map_err(|e| RuntimeError::nix("setresgid", 0, e))?;
    nix::unistd::setresuid(root_u, root_u, root_u).map_err(|e| RuntimeError::nix("setresuid", 0, e))
}

/// A user namespace with `map`, held open by an fd: what idmapped mounts need before the
/// container's own user namespace exists. A throwaway child creates it and exits.
pub fn helper_userns(map: &IdMap) -> Result<OwnedFd> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::nix("creating", "pipe", e))?;
    let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::nix("creating", "pipe", e))?;
    // SAFETY: twill-run is single-threaded here; the child only makes syscalls and exits.
    match unsafe { nix::unistd::fork() }
        .map_err(|e| RuntimeError::nix("forking", "userns helper", e))?
    {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let mut w = fs::File::from(ready_w);
            let _ = w.write_all(if ok { b"1" } else { b"0" });
            drop(w);
            // Stay until the parent has opened our namespace.
            let mut b = [0u8; 1];
            let _ = fs::File::from(done_r).read(&mut b);
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let mut b = [0u8; 1];
            let got = fs::File::from(ready_r).read(&mut b);
            let result = (|| -> Result<OwnedFd> {
                if !matches!(got, Ok(1)) || b[0] != b'1' {
                    return Err(RuntimeError::Invalid(
                        "creating a user namespace failed (is user.max_user_namespaces 0?)".into(),
                    ));
                }
                write_maps(child.as_raw(), &map.maps())?;
                let p = format!("/proc/{}/ns/user", child.as_raw());
                Ok(fs::File::open(&p)
                    .map_err(|e| RuntimeError::io("opening", &p, e))?
                    .into())
            })();
            drop(done_w);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub(crate) fn cstr(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| RuntimeError::Invalid(format!("path {} contains NUL", p.display())))
}

/// Mounts `src` at `target` through an idmapped clone (host IDs shown through `userns`).
/// Needs kernel ≥ 5.12 and a filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs).
pub fn idmapped_bind(src: &Path, target: &Path, userns: RawFd) -> Result<()> {
    let csrc = cstr(src)?;
    let ctarget = cstr(target)?;
    // SAFETY: open_tree with a valid path; the fd is owned right away.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            csrc.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(RuntimeError::io(
            "cloning mount of",
            src.display(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns as u64,
    };
    // SAFETY: mount_setattr on our detached tree with a properly sized attr struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(RuntimeError::io(
            "idmapping mount of",
            src.display(),
            std::io::Error::last_os_error(),
        ));
    }
    move_tree(&tree, &ctarget)
        .map_err(|e| RuntimeError::io("attaching idmapped mount at", target.display(), e))
}

/// Attaches the detached mount tree `tree` at `target` (relative to the cwd).
fn move_tree(tree: &OwnedFd, target: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: move_mount of a detached tree we own onto a directory; both strings are
    // NUL-terminated.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Binds the current directory over itself and moves the current directory onto that new
/// mount (the mount point pivot_root needs), without a path lookup: in a user namespace the
/// way to the container's root may pass directories only the host's root can search
/// (podman's storage), so the process set its cwd there before it entered the namespace.
/// Needs kernel ≥ 5.2 (open_tree, move_mount).
pub fn bind_cwd_over_itself() -> Result<()> {
    // SAFETY: open_tree on the cwd; the fd is owned right away.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c".".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(RuntimeError::io(
            "cloning mount of",
            "the container's root",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    move_tree(&tree, c".")
        .map_err(|e| RuntimeError::io("binding over itself", "the container's root", e))?;
    nix::unistd::fchdir(&tree).map_err(|e| RuntimeError::nix("entering", "the container's root", e))
}

/// Gives `path` (not its contents) to the range's root: for the empty upper layer and fresh
/// anonymous volumes.
pub fn chown_to_root_of(path: &Path, map: &IdMap) -> Result<()> {
    let id = map.host;
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(id)),
        Some(nix::unistd::Gid::from_raw(id)),
    )
    .map_err(|e| RuntimeError::nix("changing owner of", path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_map_both_ways() {
        let m = IdMap::parse("200000:1000").unwrap();
        assert_eq!(map_text(&m.maps().uid), "0 200000 1000\n");
        assert_eq!(m.to_host(0), Some(200000));
        assert_eq!(m.to_host(1000), None);
        assert_eq!(m.to_container(200999), Some(999));
        assert_eq!(m.to_container(199999), None);
        assert_eq!(IdMap::default().to_string(), "100000:65536");
        for bad in ["", "100000", "0:65536", "1:0", "x:1", "4294967295:2"] {
            let e = IdMap::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--userns"), "{bad}: {e}");
        }
    }

    #[test]
    fn oci_maps_are_checked_like_the_kernel_would() {
        let r = |container, host, size| IdRange {
            container,
            host,
            size,
        };
        let ok = IdMaps {
            uid: vec![r(0, 100000, 1000), r(1000, 1000, 1)],
            gid: vec![r(0, 100000, 65536)],
        };
        ok.check().unwrap();
        assert_eq!(map_text(&ok.uid), "0 100000 1000\n1000 1000 1\n");
        assert_eq!(ok.uid_to_host(999), Some(100999));
        assert_eq!(ok.uid_to_host(1000), Some(1000));
        assert_eq!(ok.uid_to_host(1001), None);
        assert_eq!(ok.gid_to_host(5), Some(100005));
        let parsed: IdRange =
            serde_json::from_str(r#"{"containerID": 0, "hostID": 100000, "size": 65536}"#).unwrap();
        assert_eq!(parsed, r(0, 100000, 65536));
        for (maps, says) in [
            (
                IdMaps {
                    uid: vec![],
                    ..ok.clone()
                },
                "uidMappings: empty",
            ),
            (
                IdMaps {
                    gid: vec![r(0, 1, 0)],
                    ..ok.clone()
                },
                "gidMappings: range 0 has size 0",
            ),
            (
                IdMaps {
                    uid: vec![r(1, 100000, 10)],
                    ..ok.clone()
                },
                "container ID 0 is not mapped",
            ),
            (
                IdMaps {
                    uid: vec![r(0, 100000, 10), r(5, 200000, 10)],
                    ..ok.clone()
                },
                "overlap",
            ),
            (
                IdMaps {
                    uid: vec![r(0, 100000, 10), r(10, 100005, 10)],
                    ..ok.clone()
                },
                "overlap",
            ),
            (
                IdMaps {
                    uid: vec![r(0, u32::MAX, 2)],
                    ..ok.clone()
                },
                "past the largest ID",
            ),
            (
                IdMaps {
                    uid: (0..341).map(|i| r(i, 100000 + i, 1)).collect(),
                    ..ok.clone()
                },
                "341 ranges",
            ),
        ] {
            let e = maps.check().unwrap_err().to_string();
            assert!(e.contains(says), "{maps:?}: {e}");
        }
    }
}

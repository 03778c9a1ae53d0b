//! `--userns`: root in the container is an unprivileged host ID range. The container process
//! builds its rootfs as host root, then enters a new user namespace right before exec, whose
//! uid/gid maps the parent writes. The image layers are mounted *idmapped* into the overlay
//! (host 0 shows as the range's first ID), so the image looks root-owned inside and stays
//! untouched on disk; the writable upper layer and anonymous volumes belong to the range.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::error::{Result, RuntimeError};

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

    /// The line for `/proc/PID/uid_map` and `gid_map`.
    pub fn proc_line(&self) -> String {
        format!("0 {} {}\n", self.host, self.size)
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

/// Writes the maps of the user namespace of process `pid`.
pub fn write_maps(pid: i32, map: &IdMap) -> Result<()> {
    for file in ["uid_map", "gid_map"] {
        let p = format!("/proc/{pid}/{file}");
        fs::write(&p, map.proc_line()).map_err(|e| RuntimeError::io("writing", &p, e))?;
    }
    Ok(())
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
                write_maps(child.as_raw(), map)?;
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
    // SAFETY: move_mount of our detached tree onto an existing directory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            ctarget.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(RuntimeError::io(
            "attaching idmapped mount at",
            target.display(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
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
        assert_eq!(m.proc_line(), "0 200000 1000\n");
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
}

//! Unpacks one image layer (a tar stream) into its directory, in overlayfs's form:
//! `.wh.NAME` becomes a character device 0/0 named NAME and `.wh..wh..opq` marks its
//! directory opaque (`trusted.overlay.opaque=y`), so the layers stack under overlayfs exactly
//! as the image says.
//!
//! Every path is resolved with `openat2(RESOLVE_BENEATH)` from the layer's root: an entry
//! with `..`, a parent reached through a symbolic link that leaves the layer (absolute or
//! `../` target), or a hard link to something outside the layer is refused, and the final
//! component is never followed (an existing symlink is replaced, not written through).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fchmodat, mknodat};

/// Why one entry could not be unpacked: the entry's path in the layer and the reason.
#[derive(Debug)]
pub struct EntryError {
    pub entry: String,
    pub reason: String,
}

impl EntryError {
    fn new(entry: &str, reason: impl std::fmt::Display) -> Self {
        EntryError {
            entry: entry.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The overlayfs xattr that makes a directory hide the layers below it.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The tar name of a whiteout (`.wh.NAME`) and of an opaque-directory marker.
pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The components of an entry's path inside the layer: `.` and empty parts dropped, a
/// leading `/` taken as the layer's root (as Docker does), `..` refused.
pub fn clean_path(raw: &[u8]) -> Result<Vec<&OsStr>, String> {
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("the path leaves the layer (`..`)".into()),
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Ok(out)
}

fn join(parts: &[&OsStr]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(p.as_bytes());
    }
    v
}

fn cstring(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| "the path contains a NUL byte".to_string())
}

/// Opens the directory `parts` beneath `root` (creating missing ones with mode 0755),
/// never leaving the layer.
fn open_dir(root: &OwnedFd, parts: &[&OsStr]) -> Result<OwnedFd, String> {
    if parts.is_empty() {
        return dup(root);
    }
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let full = cstring(&join(parts))?;
    match openat2(root, full.as_c_str(), how()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(open_error(&join(parts), e)),
    }
    // Some parent is missing: walk down and create what is not there.
    let mut cur = dup(root)?;
    for (i, part) in parts.iter().enumerate() {
        let name = cstring(part.as_bytes())?;
        match nix::sys::stat::mkdirat(&cur, name.as_c_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(format!(
                    "creating directory {}: {e}",
                    String::from_utf8_lossy(&join(&parts[..=i]))
                ));
            }
        }
        let sofar = cstring(&join(&parts[..=i]))?;
        cur = openat2(root, sofar.as_c_str(), how())
            .map_err(|e| open_error(&join(&parts[..=i]), e))?;
    }
    Ok(cur)
}

fn open_error(path: &[u8], e: Errno) -> String {
    let p = String::from_utf8_lossy(path);
    match e {
        Errno::EXDEV | Errno::ELOOP => {
            format!("{p} leads out of the layer through a symbolic link")
        }
        Errno::ENOTDIR => format!("{p} is not a directory"),
        e => format!("opening {p}: {e}"),
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, String> {
    fd.try_clone().map_err(|e| format!("duplicating fd: {e}"))
}

/// What is at `name` in `dir`, without following a symlink.
fn existing(dir: &OwnedFd, name: &CString) -> Option<SFlag> {
    nix::sys::stat::fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
}

/// Removes what is at `name` in `dir` (a directory with everything in it).
fn remove(dir: &OwnedFd, name: &CString) -> Result<(), String> {
    match existing(dir, name) {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => {
            // std's remove_dir_all does not follow symlinks inside the tree.
            let path = format!(
                "/proc/self/fd/{}/{}",
                dir.as_raw_fd(),
                name.to_string_lossy()
            );
            std::fs::remove_dir_all(&path).map_err(|e| format!("removing directory: {e}"))
        }
        Some(_) => nix::unistd::unlinkat(
            dir,
            name.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| format!("removing: {e}")),
    }
}

/// Makes `name` in `dir` a whiteout: a character device 0/0, what overlayfs reads as "deleted".
pub fn make_whiteout(dir: &OwnedFd, name: &CString) -> Result<(), String> {
    remove(dir, name)?;
    mknodat(dir, name.as_c_str(), SFlag::S_IFCHR, Mode::empty(), 0)
        .map_err(|e| format!("creating the whiteout: {e}"))
}

/// Marks the directory `dir` opaque.
pub fn set_opaque(dir: &OwnedFd) -> Result<(), String> {
    fset_xattr(dir, OPAQUE_XATTR, b"y").map_err(|e| format!("marking the directory opaque: {e}"))
}

pub(crate) fn fset_xattr(fd: &impl AsRawFd, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid fd, a NUL-terminated name and a buffer with its length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A directory's times are set after everything inside it exists (creating entries changes
/// them).
struct DirTime {
    path: Vec<u8>,
    mtime: u64,
}

/// Unpacks the layer tar `reader` into the empty directory `dest`. Returns the bytes of file
/// content it holds.
pub fn unpack(reader: impl Read, dest: &Path) -> Result<u64, EntryError> {
    let root: OwnedFd = File::open(dest)
        .map_err(|e| EntryError::new("/", format!("opening {}: {e}", dest.display())))?
        .into();
    let mut ar = tar::Archive::new(reader);
    let mut size = 0u64;
    let mut dir_times = Vec::new();
    // Consecutive entries mostly share a directory: keep the last one open.
    let mut cached: Option<(Vec<u8>, OwnedFd)> = None;
    let entries = ar
        .entries()
        .map_err(|e| EntryError::new("/", format!("reading the layer: {e}")))?;
    let mut last = String::from("(start of the layer)");
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            EntryError::new(
                &last,
                format!("reading the entry after it: {e} (truncated or not a tar?)"),
            )
        })?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        last = shown.clone();
        let parts = clean_path(&raw).map_err(|r| EntryError::new(&shown, r))?;
        let Some((name, parent)) = parts.split_last() else {
            continue; // the layer's root itself
        };
        let parent_key = join(parent);
        let dir = match &cached {
            Some((k, fd)) if *k == parent_key => dup(fd),
            _ => open_dir(&root, parent),
        }
        .map_err(|r| EntryError::new(&shown, r))?;
        cached = Some((
            parent_key,
            dup(&dir).map_err(|r| EntryError::new(&shown, r))?,
        ));
        let cname = cstring(name.as_bytes()).map_err(|r| EntryError::new(&shown, r))?;

        // Whiteouts.
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            set_opaque(&dir).map_err(|r| EntryError::new(&shown, r))?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(EntryError::new(&shown, "a whiteout without a name"));
            }
            let hidden = cstring(hidden).map_err(|r| EntryError::new(&shown, r))?;
            make_whiteout(&dir, &hidden).map_err(|r| EntryError::new(&shown, r))?;
            continue;
        }

        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().map_err(|e| EntryError::new(&shown, e))? & 0o7777;
        let uid = header.uid().map_err(|e| EntryError::new(&shown, e))?;
        let gid = header.gid().map_err(|e| EntryError::new(&shown, e))?;
        let mtime = header.mtime().unwrap_or(0);
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .flatten()
                .filter_map(|x| {
                    let key = x.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string();
                    // overlayfs's own xattrs (opaque, redirect, metacopy, origin) come only
                    // from whiteout translation: a layer that sets them could make the
                    // overlay show files from elsewhere.
                    if key.starts_with("trusted.overlay.") {
                        return None;
                    }
                    Some((key, x.value_bytes().to_vec()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let fail = |r: String| EntryError::new(&shown, r);
        let mut set_meta = true;
        let mut written: Option<File> = None;
        match kind {
            tar::EntryType::Directory => {
                if existing(&dir, &cname) != Some(SFlag::S_IFDIR) {
                    remove(&dir, &cname).map_err(fail)?;
                    nix::sys::stat::mkdirat(
                        &dir,
                        cname.as_c_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(|e| fail(format!("creating the directory: {e}")))?;
                }
                cached = None;
                dir_times.push(DirTime {
                    path: join(&parts),
                    mtime,
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove(&dir, &cname).map_err(fail)?;
                let fd = nix::fcntl::openat(
                    &dir,
                    cname.as_c_str(),
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| fail(format!("creating the file: {e}")))?;
                let mut f = File::from(fd);
                size += io::copy(&mut entry, &mut f)
                    .map_err(|e| fail(format!("writing the file: {e} (truncated layer?)")))?;
                // Its xattrs after owner and mode: every chown removes
                // `security.capability` (file capabilities: ping, setcap'd servers).
                written = Some(f);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail("a symbolic link without a target".into()))?
                    .into_owned();
                remove(&dir, &cname).map_err(fail)?;
                let t = cstring(&target).map_err(fail)?;
                nix::unistd::symlinkat(t.as_c_str(), &dir, cname.as_c_str())
                    .map_err(|e| fail(format!("creating the symbolic link: {e}")))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail("a hard link without a target".into()))?
                    .into_owned();
                let tparts =
                    clean_path(&target).map_err(|r| fail(format!("hard link target: {r}")))?;
                let Some((tname, tparent)) = tparts.split_last() else {
                    return Err(fail("a hard link to the layer's root".into()));
                };
                let tdir = open_dir_existing(&root, tparent).map_err(|r| {
                    fail(format!(
                        "hard link to {}: {r}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                let tcname = cstring(tname.as_bytes()).map_err(fail)?;
                remove(&dir, &cname).map_err(fail)?;
                nix::unistd::linkat(
                    &tdir,
                    tcname.as_c_str(),
                    &dir,
                    cname.as_c_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| {
                    fail(format!(
                        "hard link to {}: {e} (the target must be an earlier entry of this layer)",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                set_meta = false;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
                remove(&dir, &cname).map_err(fail)?;
                mknodat(
                    &dir,
                    cname.as_c_str(),
                    ft,
                    Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(major, minor),
                )
                .map_err(|e| fail(format!("creating the device node: {e}")))?;
            }
            other => {
                return Err(fail(format!("unsupported tar entry type {other:?}")));
            }
        }
        if set_meta {
            let is_link = kind == tar::EntryType::Symlink;
            nix::unistd::fchownat(
                &dir,
                cname.as_c_str(),
                Some(nix::unistd::Uid::from_raw(uid as u32)),
                Some(nix::unistd::Gid::from_raw(gid as u32)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| fail(format!("setting owner {uid}:{gid}: {e}")))?;
            if !is_link {
                // After chown, which clears set-uid bits.
                fchmodat(
                    &dir,
                    cname.as_c_str(),
                    Mode::from_bits_truncate(mode as libc::mode_t),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| fail(format!("setting mode {mode:o}: {e}")))?;
            }
            if kind != tar::EntryType::Directory {
                let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
                let _ = nix::sys::stat::utimensat(
                    &dir,
                    cname.as_c_str(),
                    &t,
                    &t,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                );
            } else if !xattrs.is_empty() {
                let sub = open_dir_existing(&root, &parts).map_err(fail)?;
                for (k, v) in &xattrs {
                    set_xattr_lenient(&sub, k, v).map_err(fail)?;
                }
            }
        }
        if let Some(f) = written {
            for (k, v) in &xattrs {
                set_xattr_lenient(&f, k, v).map_err(fail)?;
            }
        }
    }
    drop(cached);
    for d in dir_times.iter().rev() {
        let Ok(parts) = clean_path(&d.path) else {
            continue;
        };
        if let Ok(fd) = open_dir_existing(&root, &parts) {
            let t = nix::sys::time::TimeSpec::new(d.mtime as i64, 0);
            let _ = nix::sys::stat::futimens(fd.as_fd(), &t, &t);
        }
    }
    Ok(size)
}

/// Opens an existing directory beneath `root` (for hard-link targets: nothing is created).
fn open_dir_existing(root: &OwnedFd, parts: &[&OsStr]) -> Result<OwnedFd, String> {
    if parts.is_empty() {
        return dup(root);
    }
    let full = cstring(&join(parts))?;
    openat2(
        root,
        full.as_c_str(),
        OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
    .map_err(|e| open_error(&join(parts), e))
}

/// Sets an xattr from the layer; one the filesystem does not support is skipped (as podman
/// does with `security.selinux` on a host without SELinux).
fn set_xattr_lenient(fd: &impl AsRawFd, name: &str, value: &[u8]) -> Result<(), String> {
    match fset_xattr(fd, name, value) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(format!("setting xattr {name}: {e}")),
    }
}

/// Reads an xattr of `path` without following a symlink; None when it is not set.
pub(crate) fn lget_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer with its length.
    let n = unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match link {
                Some(l) => {
                    h.set_size(0);
                    b.append_link(&mut h, path, l).unwrap();
                }
                None => {
                    // Raw names, so tests can write `..` that the builder would refuse.
                    let name = h.as_old_mut().name.as_mut();
                    name[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_and_opaque_dirs() {
        if !is_root() {
            eprintln!("skipping: whiteouts (mknod, trusted xattrs) need root");
            return;
        }
        use tar::EntryType::*;
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            ("etc/", Directory, b"", None),
            ("etc/.wh.greeting", Regular, b"", None),
            ("etc/l2", Regular, b"layer2\n", None),
            ("var/cache/", Directory, b"", None),
            ("var/cache/.wh..wh..opq", Regular, b"", None),
            ("var/cache/kept", Regular, b"k", None),
        ]);
        let size = unpack(&tar[..], dir.path()).unwrap();
        assert_eq!(size, 8);
        // A layer cannot set overlayfs's xattrs itself.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..])])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        b.append_data(&mut h, "sneaky/", &b""[..]).unwrap();
        unpack(&b.into_inner().unwrap()[..], dir.path()).unwrap();
        assert_eq!(
            lget_xattr(&dir.path().join("sneaky"), "trusted.overlay.redirect"),
            None
        );
        let wh = std::fs::symlink_metadata(dir.path().join("etc/greeting")).unwrap();
        assert!(wh.file_type().is_char_device(), "{wh:?}");
        assert_eq!(wh.rdev(), 0);
        assert!(!dir.path().join("etc/.wh.greeting").exists());
        assert_eq!(
            lget_xattr(&dir.path().join("var/cache"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert!(!dir.path().join("var/cache/.wh..wh..opq").exists());
        assert!(dir.path().join("var/cache/kept").is_file());
        assert_eq!(lget_xattr(&dir.path().join("etc"), OPAQUE_XATTR), None);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/l2")).unwrap(),
            "layer2\n"
        );
    }

    #[test]
    fn file_capabilities_survive_the_owner_being_set() {
        if !is_root() {
            eprintln!("skipping: file capabilities and owners need root");
            return;
        }
        // VFS_CAP_REVISION_2 with the effective flag, permitted CAP_NET_RAW (ping's).
        let cap: [u8; 20] = [
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_size(4);
        b.append_data(&mut h, "ping", &b"\x7fELF"[..]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack(&b.into_inner().unwrap()[..], dir.path()).unwrap();
        let path = dir.path().join("ping");
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), 1000);
        assert_eq!(
            lget_xattr(&path, "security.capability").as_deref(),
            Some(&cap[..]),
            "the chown removed the file's capabilities"
        );
    }

    #[test]
    fn entries_that_leave_the_layer_are_refused() {
        if !is_root() {
            eprintln!("skipping: unpacking sets owners, which needs root");
            return;
        }
        use tar::EntryType::*;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                layer(&[("a/../../evil", Regular, b"x", None)]),
                "`..`",
            ),
            (
                "absolute symlink used as a parent",
                layer(&[
                    ("esc", Symlink, b"", Some("/tmp")),
                    ("esc/evil", Regular, b"x", None),
                ]),
                "symbolic link",
            ),
            (
                "relative symlink out of the layer",
                layer(&[
                    ("d/", Directory, b"", None),
                    ("d/up", Symlink, b"", Some("../..")),
                    ("d/up/evil", Regular, b"x", None),
                ]),
                "symbolic link",
            ),
            (
                "hard link out of the layer",
                layer(&[("h", Link, b"", Some("../../etc/passwd"))]),
                "`..`",
            ),
            (
                "hard link to an absent file",
                layer(&[("h", Link, b"", Some("etc/shadow"))]),
                "hard link",
            ),
        ];
        for (what, tar, want) in cases {
            let outer = tempfile::tempdir().unwrap();
            let dest = outer.path().join("layer");
            std::fs::create_dir(&dest).unwrap();
            let e = unpack(&tar[..], &dest).expect_err(what);
            assert!(e.reason.contains(want), "{what}: {e:?}");
            assert!(
                !outer.path().join("evil").exists() && !Path::new("/tmp/evil").exists(),
                "{what}: wrote outside the layer"
            );
        }
        // A symlink inside the layer may be a parent, and an existing symlink is replaced
        // rather than written through.
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("layer");
        std::fs::create_dir(&dest).unwrap();
        let tar = layer(&[
            ("usr/lib/", Directory, b"", None),
            ("lib", Symlink, b"", Some("usr/lib")),
            ("lib/x", Regular, b"x", None),
            ("out", Symlink, b"", Some("/etc/passwd")),
            ("out", Regular, b"mine", None),
            ("d/", Directory, b"", None),
            ("d/x", Regular, b"x", None),
            ("d", Regular, b"now a file", None),
            ("h", Link, b"", Some("lib/x")),
        ]);
        unpack(&tar[..], &dest).unwrap();
        assert!(dest.join("usr/lib/x").is_file());
        assert_eq!(std::fs::read_to_string(dest.join("out")).unwrap(), "mine");
        assert_eq!(
            std::fs::read_to_string(dest.join("d")).unwrap(),
            "now a file"
        );
        let (h, x) = (
            std::fs::metadata(dest.join("h")).unwrap(),
            std::fs::metadata(dest.join("usr/lib/x")).unwrap(),
        );
        assert_eq!(
            (h.ino(), h.nlink()),
            (x.ino(), 2),
            "a hard link within the layer"
        );
    }

    #[test]
    fn a_truncated_layer_is_an_error() {
        if !is_root() {
            eprintln!("skipping: unpacking sets owners, which needs root");
            return;
        }
        let big = vec![7u8; 4096];
        let tar = layer(&[("f", tar::EntryType::Regular, &big, None)]);
        let dir = tempfile::tempdir().unwrap();
        let e = unpack(&tar[..1500], dir.path()).unwrap_err();
        assert_eq!(e.entry, "f");
    }
}

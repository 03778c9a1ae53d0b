//! config.json's `mounts` inside the container's mount namespace, before pivot_root: mount
//! options to flags and data, destinations resolved inside the root (a symbolic link in the
//! image cannot send a mount outside it), bind mounts with their read-only/nosuid/nodev/
//! noexec/nosymfollow remount, the recursive options (`rro`, `rnosuid`, …, as runc) applied
//! to the mount and every mount below it with mount_setattr(2), and cgroup v1's
//! per-controller tree.

use std::fs;
use std::path::Path;

use nix::mount::MsFlags;

use crate::error::{Result, RuntimeError};
use crate::oci::spec::Mount;
pub use crate::rootfs::resolve_in_root;
use crate::rootfs::{m, mkdir, remount_bind};

/// MS_NOSYMFOLLOW (Linux 5.10), which nix's MsFlags does not name.
const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);

/// A mount's options split into flags, propagation flags, the data string and the
/// recursive attributes.
#[derive(Debug, PartialEq)]
pub struct Options {
    pub flags: MsFlags,
    /// Cleared by an option such as `rw`, `suid`, `dev`, `exec`.
    pub propagation: MsFlags,
    pub data: Vec<String>,
    /// MOUNT_ATTR_* to set on the mount and all below it (`rro`, `rnosuid`, …).
    pub rec_set: u64,
    /// MOUNT_ATTR_* to clear on the mount and all below it (`rrw`, `rsuid`, …).
    pub rec_clear: u64,
}

/// runc's recursive options: (name, MOUNT_ATTR_* flag, whether the option clears it).
const RECURSIVE: &[(&str, u64, bool)] = &[
    ("rro", libc::MOUNT_ATTR_RDONLY, false),
    ("rrw", libc::MOUNT_ATTR_RDONLY, true),
    ("rnosuid", libc::MOUNT_ATTR_NOSUID, false),
    ("rsuid", libc::MOUNT_ATTR_NOSUID, true),
    ("rnodev", libc::MOUNT_ATTR_NODEV, false),
    ("rdev", libc::MOUNT_ATTR_NODEV, true),
    ("rnoexec", libc::MOUNT_ATTR_NOEXEC, false),
    ("rexec", libc::MOUNT_ATTR_NOEXEC, true),
    ("rnodiratime", libc::MOUNT_ATTR_NODIRATIME, false),
    ("rdiratime", libc::MOUNT_ATTR_NODIRATIME, true),
    ("rrelatime", libc::MOUNT_ATTR_RELATIME, false),
    ("rnorelatime", libc::MOUNT_ATTR_RELATIME, true),
    ("rnoatime", libc::MOUNT_ATTR_NOATIME, false),
    ("ratime", libc::MOUNT_ATTR_NOATIME, true),
    ("rstrictatime", libc::MOUNT_ATTR_STRICTATIME, false),
    ("rnostrictatime", libc::MOUNT_ATTR_STRICTATIME, true),
    ("rnosymfollow", libc::MOUNT_ATTR_NOSYMFOLLOW, false),
    ("rsymfollow", libc::MOUNT_ATTR_NOSYMFOLLOW, true),
];

/// The names of the recursive options, for `features`.
pub fn recursive_option_names() -> impl Iterator<Item = &'static str> {
    RECURSIVE.iter().map(|(name, _, _)| *name)
}

/// Parses mount(8)-style options as runc does.
pub fn parse_options(options: &[String]) -> Options {
    let mut o = Options {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
        rec_set: 0,
        rec_clear: 0,
    };
    for opt in options {
        if let Some(&(_, attr, clears)) =
            RECURSIVE.iter().find(|(name, _, _)| *name == opt.as_str())
        {
            if clears {
                o.rec_clear |= attr;
                o.rec_set &= !attr;
            } else {
                // mount_setattr(2): an access-time mode is set only with the whole
                // MOUNT_ATTR__ATIME field cleared; and the last mode named wins (relatime
                // is 0, so an earlier mode's bit must go).
                if attr & libc::MOUNT_ATTR__ATIME == attr {
                    o.rec_set = (o.rec_set & !libc::MOUNT_ATTR__ATIME) | attr;
                    o.rec_clear |= libc::MOUNT_ATTR__ATIME;
                } else {
                    o.rec_set |= attr;
                    o.rec_clear &= !attr;
                }
            }
            continue;
        }
        let set = |o: &mut Options, f: MsFlags| o.flags.insert(f);
        let clear = |o: &mut Options, f: MsFlags| o.flags.remove(f);
        match opt.as_str() {
            "ro" => set(&mut o, MsFlags::MS_RDONLY),
            "rw" => clear(&mut o, MsFlags::MS_RDONLY),
            "nosuid" => set(&mut o, MsFlags::MS_NOSUID),
            "suid" => clear(&mut o, MsFlags::MS_NOSUID),
            "nodev" => set(&mut o, MsFlags::MS_NODEV),
            "dev" => clear(&mut o, MsFlags::MS_NODEV),
            "noexec" => set(&mut o, MsFlags::MS_NOEXEC),
            "exec" => clear(&mut o, MsFlags::MS_NOEXEC),
            "sync" => set(&mut o, MsFlags::MS_SYNCHRONOUS),
            "async" => clear(&mut o, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => set(&mut o, MsFlags::MS_DIRSYNC),
            "remount" => set(&mut o, MsFlags::MS_REMOUNT),
            "mand" => set(&mut o, MsFlags::MS_MANDLOCK),
            "nomand" => clear(&mut o, MsFlags::MS_MANDLOCK),
            "atime" => clear(&mut o, MsFlags::MS_NOATIME),
            "noatime" => set(&mut o, MsFlags::MS_NOATIME),
            "diratime" => clear(&mut o, MsFlags::MS_NODIRATIME),
            "nodiratime" => set(&mut o, MsFlags::MS_NODIRATIME),
            "relatime" => set(&mut o, MsFlags::MS_RELATIME),
            "norelatime" => clear(&mut o, MsFlags::MS_RELATIME),
            "strictatime" => set(&mut o, MsFlags::MS_STRICTATIME),
            "nostrictatime" => clear(&mut o, MsFlags::MS_STRICTATIME),
            "nosymfollow" => set(&mut o, MS_NOSYMFOLLOW),
            "symfollow" => clear(&mut o, MS_NOSYMFOLLOW),
            "bind" => set(&mut o, MsFlags::MS_BIND),
            "rbind" => set(&mut o, MsFlags::MS_BIND | MsFlags::MS_REC),
            "private" => o.propagation = MsFlags::MS_PRIVATE,
            "rprivate" => o.propagation = MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "shared" => o.propagation = MsFlags::MS_SHARED,
            "rshared" => o.propagation = MsFlags::MS_SHARED | MsFlags::MS_REC,
            "slave" => o.propagation = MsFlags::MS_SLAVE,
            "rslave" => o.propagation = MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "unbindable" => o.propagation = MsFlags::MS_UNBINDABLE,
            "runbindable" => o.propagation = MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            // crun's copy-up of a tmpfs over existing content; runc ignores these too.
            "tmpcopyup" | "notmpcopyup" | "copy-symlink" => {}
            other => o.data.push(other.to_string()),
        }
    }
    o
}

/// Creates `target` as a directory, or as an empty file when `like_file`.
fn make_target(target: &Path, like_file: bool) -> Result<()> {
    if like_file {
        if let Some(p) = target.parent() {
            mkdir(p)?;
        }
        crate::rootfs::mount_target(target)
    } else {
        mkdir(target)
    }
}

/// Mounts one `mounts[]` entry under `root`.
pub fn mount_one(root: &Path, mnt: &Mount) -> Result<()> {
    if !mnt.destination.starts_with('/') {
        return Err(RuntimeError::Invalid(format!(
            "mount destination {:?} is not absolute",
            mnt.destination
        )));
    }
    let target = resolve_in_root(root, &mnt.destination)?;
    let o = parse_options(&mnt.options);
    let kind = mnt.kind.as_deref().unwrap_or("none");
    let data = o.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if kind == "bind" || o.flags.contains(MsFlags::MS_BIND) {
        let src = mnt.source.as_deref().ok_or_else(|| {
            RuntimeError::Invalid(format!("bind mount on {} has no source", mnt.destination))
        })?;
        let src_is_dir = fs::metadata(src)
            .map_err(|e| RuntimeError::io("reading bind source", src, e))?
            .is_dir();
        make_target(&target, !src_is_dir)?;
        m(
            Some(src),
            &target,
            None,
            MsFlags::MS_BIND | (o.flags & MsFlags::MS_REC),
            None,
        )?;
        let extra = o.flags
            & (MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
                | MsFlags::MS_NODIRATIME
                | MsFlags::MS_RELATIME
                | MsFlags::MS_STRICTATIME
                | MS_NOSYMFOLLOW);
        if !extra.is_empty() {
            remount_bind(&target, extra)?;
        }
    } else if kind == "cgroup" || kind == "cgroup2" {
        make_target(&target, false)?;
        mount_cgroup(&target, o.flags)?;
    } else {
        make_target(&target, false)?;
        let flags = o.flags & !MsFlags::MS_REMOUNT;
        let source = mnt.source.as_deref().or(Some(kind));
        match nix::mount::mount(source, &target, Some(kind), flags, data) {
            Ok(()) => {}
            // In a user namespace whose network namespace belongs to the host (one joined by
            // path), sysfs cannot be mounted: the host's is bound instead, as runc does.
            Err(nix::Error::EPERM) if kind == "sysfs" => {
                m(
                    Some("/sys"),
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                let extra = flags
                    & (MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC
                        | MS_NOSYMFOLLOW);
                remount_bind(&target, extra)?;
            }
            Err(e) => {
                return Err(RuntimeError::nix(
                    "mounting",
                    format!("{kind} on {}", target.display()),
                    e,
                ));
            }
        }
    }
    if o.rec_set != 0 || o.rec_clear != 0 {
        set_recursive(&target, o.rec_set, o.rec_clear)?;
    }
    if !o.propagation.is_empty() {
        m(None, &target, None, o.propagation, None)?;
    }
    Ok(())
}

/// Sets and clears the MOUNT_ATTR_* `set` and `clear` on the mount at `target` and every
/// mount below it (mount_setattr(2) with AT_RECURSIVE, Linux 5.12).
fn set_recursive(target: &Path, set: u64, clear: u64) -> Result<()> {
    let path = crate::userns::cstr(target)?;
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads the NUL-terminated path and `size_of_val(&attr)` bytes of
    // the attr struct, both alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW,
            &attr as *const libc::mount_attr,
            std::mem::size_of_val(&attr),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Err(RuntimeError::Invalid(format!(
                "mount on {}: recursive mount options (rro, rnosuid, …) need mount_setattr(2), \
                 which this kernel does not have (Linux 5.12 or later)",
                target.display()
            )));
        }
        return Err(RuntimeError::io(
            "setting recursive mount options on",
            target.display(),
            e,
        ));
    }
    Ok(())
}

/// `/sys/fs/cgroup` inside the container: cgroup2 on a pure v2 host; on v1 a tmpfs with each
/// hierarchy's directory of this process's cgroup bind-mounted (as runc does without a
/// cgroup namespace), read-only when asked.
fn mount_cgroup(target: &Path, flags: MsFlags) -> Result<()> {
    let ro = flags & MsFlags::MS_RDONLY;
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if crate::cgroup::is_v2() {
        return match nix::mount::mount(
            Some("cgroup2"),
            target,
            Some("cgroup2"),
            base | ro,
            None::<&str>,
        ) {
            // In a user namespace without a cgroup namespace of its own: the container's own
            // cgroup directory, bound (runc does the same).
            Err(nix::Error::EPERM) => {
                let own = fs::read_to_string("/proc/self/cgroup")
                    .map_err(|e| RuntimeError::io("reading", "/proc/self/cgroup", e))?;
                let rel = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap_or("/")
                    .trim_start_matches('/');
                if rel.is_empty() {
                    // The root (or a cgroup namespace hiding the real path): binding it
                    // would show the container the host's whole hierarchy.
                    return Err(RuntimeError::Invalid(format!(
                        "mounting cgroup2 on {}: not permitted, and the container's own cgroup \
                         is not known to bind instead",
                        target.display()
                    )));
                }
                let src = Path::new("/sys/fs/cgroup").join(rel);
                m(
                    Some(&src.display().to_string()),
                    target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                remount_bind(target, base | ro)
            }
            other => other.map_err(|e| {
                RuntimeError::nix("mounting", format!("cgroup2 on {}", target.display()), e)
            }),
        };
    }
    m(Some("tmpfs"), target, Some("tmpfs"), base, Some("mode=755"))?;
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| RuntimeError::io("reading", "/proc/self/cgroup", e))?;
    let host = Path::new("/sys/fs/cgroup");
    let entries = fs::read_dir(host).map_err(|e| RuntimeError::io("reading", host.display(), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let inner = target.join(&name);
        if let Ok(t) = fs::read_link(&path) {
            let _ = std::os::unix::fs::symlink(t, &inner);
            continue;
        }
        // The line of /proc/self/cgroup whose controllers are this directory's.
        let rel = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, p) = (f.next()?, f.next()?, f.next()?);
            let ctrls = ctrls.strip_prefix("name=").unwrap_or(ctrls);
            let matches = ctrls == name || (name == "unified" && ctrls.is_empty());
            matches.then(|| p.trim_start_matches('/').to_string())
        });
        let Some(rel) = rel else { continue };
        let src = path.join(&rel);
        if !src.is_dir() {
            continue;
        }
        mkdir(&inner)?;
        m(
            Some(&src.display().to_string()),
            &inner,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        remount_bind(&inner, base | ro)?;
    }
    if !ro.is_empty() {
        m(
            None,
            target,
            None,
            MsFlags::MS_REMOUNT | base | MsFlags::MS_RDONLY,
            Some("mode=755"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &[&str]) -> Options {
        parse_options(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_become_flags_propagation_and_data() {
        let o = opts(&[
            "rbind",
            "ro",
            "nosuid",
            "rprivate",
            "mode=755",
            "size=65536k",
        ]);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        assert!(opts(&["ro", "rw"]).flags.is_empty());
        assert_eq!(opts(&["nosymfollow"]).flags.bits(), libc::MS_NOSYMFOLLOW);
    }

    #[test]
    fn recursive_options_become_mount_attributes() {
        let o = opts(&["rbind", "rro", "rnosuid", "rnosymfollow", "rexec"]);
        assert!(o.data.is_empty(), "{:?}", o.data);
        assert_eq!(
            o.rec_set,
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOSYMFOLLOW
        );
        assert_eq!(o.rec_clear, libc::MOUNT_ATTR_NOEXEC);
        // The last word wins, as with the plain options.
        let o = opts(&["rro", "rrw"]);
        assert_eq!((o.rec_set, o.rec_clear), (0, libc::MOUNT_ATTR_RDONLY));
        // An access-time mode clears the whole access-time field first.
        let o = opts(&["rnoatime"]);
        assert_eq!(o.rec_set, libc::MOUNT_ATTR_NOATIME);
        assert_eq!(o.rec_clear, libc::MOUNT_ATTR__ATIME);
    }

    #[test]
    fn the_last_recursive_access_time_mode_wins() {
        // Before: relatime is 0, so ["rnoatime", "rrelatime"] kept noatime.
        let o = opts(&["rnoatime", "rrelatime"]);
        assert_eq!(o.rec_set, libc::MOUNT_ATTR_RELATIME);
        assert_eq!(o.rec_clear, libc::MOUNT_ATTR__ATIME);
        let o = opts(&["rstrictatime", "rnoatime"]);
        assert_eq!(o.rec_set, libc::MOUNT_ATTR_NOATIME);
    }

    #[test]
    fn destinations_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("run/x")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/run/x", root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("etc/up")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/etc/abs/f").unwrap(),
            root.join("run/x/f")
        );
        assert_eq!(
            resolve_in_root(root, "/etc/up/evil").unwrap(),
            root.join("evil")
        );
        assert_eq!(resolve_in_root(root, "/../../x").unwrap(), root.join("x"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, "/loop").is_err());
    }
}

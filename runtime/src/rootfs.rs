//! Inside the new mount namespace: the overlay rootfs (image layers + init layer + writable
//! upper), volumes, /proc, /dev, /sys, pivot_root, and runc's default masked and read-only
//! paths. Runs in the container's first process before it execs the command.

use std::fs;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{Result, RuntimeError};
use crate::store::MountSpec;

/// What the rootfs is made of.
pub struct RootfsSpec {
    /// Lower directories, topmost first (init layer, then image layers newest first).
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub mounts: Vec<MountSpec>,
    /// `--userns`: show the lower layers through idmapped mounts.
    pub idmap: Option<Idmapping>,
}

/// Idmapped lower layers: the user namespace that carries the mapping, and an empty
/// directory where each layer's idmapped mount is attached (inside the container's private
/// mount namespace, so they vanish with it).
pub struct Idmapping {
    pub userns: std::os::fd::OwnedFd,
    pub staging: PathBuf,
}

/// mount(2) copies at most a page of options.
const MAX_MOUNT_DATA: usize = 4000;

/// Paths hidden from containers, as runc's defaults.
pub const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths made read-only, as runc's defaults.
pub const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub(crate) fn m(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        RuntimeError::nix(
            "mounting",
            format!("{} on {}", fstype.or(src).unwrap_or("?"), target.display()),
            e,
        )
    })
}

/// Remounts the bind mount at `target` with `flags` (bind and remount added). In a user
/// namespace a mount copied from the host has its ro/nosuid/nodev/noexec/atime flags locked:
/// a remount that would clear one fails with EPERM, so it is retried keeping the mount's
/// current ones (as runc does).
pub(crate) fn remount_bind(target: &Path, flags: MsFlags) -> Result<()> {
    use nix::sys::statvfs::FsFlags;
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    match mount(
        None::<&str>,
        target,
        None::<&str>,
        base | flags,
        None::<&str>,
    ) {
        Err(nix::Error::EPERM) => {}
        other => {
            return other.map_err(|e| RuntimeError::nix("remounting", target.display(), e));
        }
    }
    let now = nix::sys::statvfs::statvfs(target)
        .map_err(|e| RuntimeError::nix("reading mount flags of", target.display(), e))?
        .flags();
    let mut kept = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
    ] {
        if now.contains(st) {
            kept |= ms;
        }
    }
    kept |= if now.contains(FsFlags::ST_NOATIME) {
        MsFlags::MS_NOATIME
    } else if now.contains(FsFlags::ST_RELATIME) {
        MsFlags::MS_RELATIME
    } else {
        MsFlags::MS_STRICTATIME
    };
    let atime = MsFlags::MS_NOATIME
        | MsFlags::MS_RELATIME
        | MsFlags::MS_STRICTATIME
        | MsFlags::MS_NODIRATIME;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        base | (flags & !atime) | kept,
        None::<&str>,
    )
    .map_err(|e| RuntimeError::nix("remounting", target.display(), e))
}

pub(crate) fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| RuntimeError::io("creating", p.display(), e))
}

/// An empty file at `p` to bind a file or device over, unless something is there already.
/// Never opens what is there: opening a device node (the host's /dev/tty bound in place)
/// would act on the device (ENXIO without a controlling terminal).
pub(crate) fn mount_target(p: &Path) -> Result<()> {
    match fs::OpenOptions::new().write(true).create_new(true).open(p) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(RuntimeError::io("creating", p.display(), e)),
    }
}

/// `dest` (absolute, as seen in the container) under `root`, following symbolic links inside
/// the root as the container would: an absolute link target restarts at `root`, `..` stops
/// at `root`.
pub fn resolve_in_root(root: &Path, dest: &str) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    let mut todo: Vec<String> = Path::new(dest)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            if out != root {
                out.pop();
            }
            continue;
        }
        let next = out.join(&part);
        match fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(RuntimeError::Invalid(format!(
                        "mount destination {dest}: too many symbolic links"
                    )));
                }
                let target = fs::read_link(&next)
                    .map_err(|e| RuntimeError::io("reading link", next.display(), e))?;
                if target.is_absolute() {
                    out = root.to_path_buf();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push(n.to_string_lossy().into_owned()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => out = next,
        }
    }
    Ok(out)
}

/// Builds the rootfs at `spec.merged` and pivots into it.
pub fn setup(spec: &RootfsSpec) -> Result<()> {
    // Nothing we mount may propagate back to the host.
    m(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let mut lower: Vec<String> = spec.lower.iter().map(|p| p.display().to_string()).collect();
    if let Some(idmap) = &spec.idmap {
        use std::os::fd::AsRawFd;
        for (i, layer) in spec.lower.iter().enumerate() {
            let at = idmap.staging.join(i.to_string());
            mkdir(&at)?;
            crate::userns::idmapped_bind(layer, &at, idmap.userns.as_raw_fd())?;
            lower[i] = at.display().to_string();
        }
    }
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spec.upper.display(),
        spec.work.display()
    );
    // The mount options must fit in a page: with many layers, name each through a short
    // symlink next to the upper layer (`lower/N`) and mount from there, as Docker's overlay2
    // does with its `l/` links.
    if data.len() >= MAX_MOUNT_DATA
        && let Some(dir) = spec.upper.parent()
    {
        let links = dir.join("lower");
        mkdir(&links)?;
        for (i, l) in lower.iter_mut().enumerate() {
            let link = links.join(i.to_string());
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&*l, &link)
                .map_err(|e| RuntimeError::io("creating", link.display(), e))?;
            *l = format!("lower/{i}");
        }
        std::env::set_current_dir(dir)
            .map_err(|e| RuntimeError::io("entering", dir.display(), e))?;
        data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            spec.upper.display(),
            spec.work.display()
        );
    }
    let root = &spec.merged;
    m(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&data),
    )?;

    for v in &spec.mounts {
        // Resolved as the container would see it: an image link (`/var/run -> /run`) must
        // not carry a volume, or the files made for it, onto the host.
        let target = resolve_in_root(root, &v.target)?;
        // As Docker: a new anonymous volume starts with what the image has at its path.
        if v.anonymous
            && target.is_dir()
            && fs::read_dir(&v.source).is_ok_and(|mut d| d.next().is_none())
        {
            copy_contents(&target, &v.source)?;
        }
        if v.source.is_dir() {
            mkdir(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                mkdir(parent)?;
            }
            mount_target(&target)?;
        }
        m(
            Some(&v.source.display().to_string()),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        if v.readonly {
            m(
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )?;
        }
    }

    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = resolve_in_root(root, "/proc")?;
    mkdir(&proc_dir)?;
    m(Some("proc"), &proc_dir, Some("proc"), nosuid, None)?;

    let dev = resolve_in_root(root, "/dev")?;
    mkdir(&dev)?;
    m(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    default_devices(&dev)?;
    let pts = dev.join("pts");
    mkdir(&pts)?;
    m(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    m(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid,
        Some("mode=1777,size=65536k"),
    )?;
    let mq = dev.join("mqueue");
    mkdir(&mq)?;
    m(Some("mqueue"), &mq, Some("mqueue"), nosuid, None)?;

    let sys = resolve_in_root(root, "/sys")?;
    mkdir(&sys)?;
    m(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        nosuid | MsFlags::MS_RDONLY,
        None,
    )?;

    pivot(root)?;
    mask_paths(MASKED, READONLY);
    Ok(())
}

/// The default devices (bind-mounted from the host's, which works in any namespace) and the
/// standard links, in the container's `/dev` tmpfs, as the runtime spec lists them. A node
/// already there (one of config.json's `linux.devices`, made first) is kept.
pub fn default_devices(dev: &Path) -> Result<()> {
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let t = dev.join(node);
        if fs::symlink_metadata(&t).is_ok() {
            continue;
        }
        mount_target(&t)?;
        m(
            Some(&format!("/dev/{node}")),
            &t,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
    Ok(())
}

/// pivot_root into `root`; the old root is detached and removed.
pub fn pivot(root: &Path) -> Result<()> {
    std::env::set_current_dir(root).map_err(|e| RuntimeError::io("entering", root.display(), e))?;
    // pivot_root(".", "."): the old root ends up mounted over the new one, reachable as "."
    // until it is detached, so no directory for it is needed in the container's root (whose
    // owner may be a mapped user that root in a user namespace cannot write as).
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| RuntimeError::nix("pivot_root into", root.display(), e))?;
    // Detaching must not propagate to the host's mounts: make the old root a slave first.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| RuntimeError::nix("making slave", "the old root", e))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| RuntimeError::nix("detaching", "the old root", e))?;
    std::env::set_current_dir("/").map_err(|e| RuntimeError::io("entering", "/", e))?;
    Ok(())
}

/// Hides `masked` (a read-only tmpfs over a directory, /dev/null over a file) and makes
/// `readonly` read-only, inside the container's root. Paths that do not exist are skipped.
pub fn mask_paths(masked: &[impl AsRef<str>], readonly: &[impl AsRef<str>]) {
    for p in masked {
        let path = Path::new(p.as_ref());
        if path.is_dir() {
            let _ = mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            );
        } else if path.exists() {
            let _ = mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            );
        }
    }
    for p in readonly {
        let path = Path::new(p.as_ref());
        if path.exists()
            && mount(
                Some(path),
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .is_ok()
        {
            let _ = remount_bind(path, MsFlags::MS_RDONLY | MsFlags::MS_REC);
        }
    }
}

/// Copies the contents of `src` into `dst` keeping modes, owners and symlinks (for a new
/// anonymous volume; `src` is in the container's rootfs before pivot_root).
fn copy_contents(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |op, p: &Path, e| RuntimeError::io(op, p.display(), e);
    for e in fs::read_dir(src).map_err(|e| io("reading", src, e))? {
        let e = e.map_err(|e| io("reading", src, e))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let meta = fs::symlink_metadata(&from).map_err(|e| io("reading", &from, e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            mkdir(&to)?;
            copy_contents(&from, &to)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&from).map_err(|e| io("reading link", &from, e))?;
            std::os::unix::fs::symlink(t, &to).map_err(|e| io("creating link", &to, e))?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(|e| io("copying", &from, e))?;
        } else {
            continue; // device nodes and whiteouts do not belong in a volume
        }
        let _ = nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &to,
            Some(nix::unistd::Uid::from_raw(meta.uid())),
            Some(nix::unistd::Gid::from_raw(meta.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if !ft.is_symlink() {
            let _ = fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777));
        }
    }
    Ok(())
}

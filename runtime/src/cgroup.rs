//! cgroups behind one trait, v1 and v2 side by side (a hybrid host counts as v1, as in runc
//! and youki). Each container gets `twill/<id>` under each controller it is limited by.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};
use crate::store::Limits;

/// The CFS period twill uses (100 ms, as Docker).
const CFS_PERIOD_US: u64 = 100_000;

/// What the runtime needs from a cgroup implementation.
pub trait CgroupManager {
    /// Creates the cgroup(s) and writes the limits.
    fn create(&self, limits: &Limits) -> Result<()>;
    /// The `cgroup.procs` files a process must be written to, to join.
    fn procs_files(&self) -> Vec<PathBuf>;
    /// Removes the cgroup(s); they must be empty.
    fn remove(&self) -> Result<()>;
    /// Where it lives, for `inspect`.
    fn describe(&self) -> String;
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| {
        RuntimeError::io(
            "writing cgroup file",
            format!("{}={value}", path.display()),
            e,
        )
    })
}

/// Moves process `pid` into every cgroup of `m`.
pub fn join(m: &dyn CgroupManager, pid: i32) -> Result<()> {
    for f in m.procs_files() {
        write(&f, &pid.to_string())?;
    }
    Ok(())
}

/// Removes the cgroup directory `dir` and every cgroup below it, deepest first: a container's
/// processes may have made their own (systemd in a container does), and a cgroup with
/// children cannot be removed.
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    rmdir_retry(dir)
}

fn rmdir_retry(dir: &Path) -> Result<()> {
    // Busy for a moment after the last process exited (the kernel takes the cgroup offline
    // asynchronously): retry quickly at first — this is on the path of every `run --rm` —
    // then every 20 ms, about a second in all.
    let mut wait = std::time::Duration::from_micros(250);
    for _ in 0..60 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_millis(20));
            }
        }
    }
    fs::remove_dir(dir).map_err(|e| RuntimeError::io("removing cgroup", dir.display(), e))
}

/// cgroup v1: one directory per controller (memory, cpu, pids).
pub struct V1 {
    pub root: PathBuf,
    pub rel: String,
}

impl V1 {
    fn dir(&self, controller: &str) -> PathBuf {
        self.root.join(controller).join(&self.rel)
    }
}

impl CgroupManager for V1 {
    fn create(&self, limits: &Limits) -> Result<()> {
        for c in ["memory", "cpu", "pids"] {
            let d = self.dir(c);
            fs::create_dir_all(&d)
                .map_err(|e| RuntimeError::io("creating cgroup", d.display(), e))?;
        }
        if let Some(m) = limits.memory_bytes {
            write(
                &self.dir("memory").join("memory.limit_in_bytes"),
                &m.to_string(),
            )?;
            // Without swap accounting this file is absent: then swap is not limited.
            let sw = self.dir("memory").join("memory.memsw.limit_in_bytes");
            if sw.exists() {
                write(&sw, &m.to_string())?;
            }
        }
        if let Some(c) = limits.cpus {
            write(
                &self.dir("cpu").join("cpu.cfs_period_us"),
                &CFS_PERIOD_US.to_string(),
            )?;
            write(
                &self.dir("cpu").join("cpu.cfs_quota_us"),
                &((c * CFS_PERIOD_US as f64) as u64).to_string(),
            )?;
        }
        if let Some(p) = limits.pids {
            write(&self.dir("pids").join("pids.max"), &p.to_string())?;
        }
        Ok(())
    }
    fn procs_files(&self) -> Vec<PathBuf> {
        ["memory", "cpu", "pids"]
            .iter()
            .map(|c| self.dir(c).join("cgroup.procs"))
            .collect()
    }
    fn remove(&self) -> Result<()> {
        for c in ["memory", "cpu", "pids"] {
            remove_tree(&self.dir(c))?;
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!(
            "v1:{}/{{memory,cpu,pids}}/{}",
            self.root.display(),
            self.rel
        )
    }
}

/// cgroup v2: one directory in the unified hierarchy.
pub struct V2 {
    pub root: PathBuf,
    pub rel: String,
}

impl CgroupManager for V2 {
    fn create(&self, limits: &Limits) -> Result<()> {
        // Controllers must be enabled in every ancestor's subtree_control.
        let mut cur = self.root.clone();
        for part in Path::new(&self.rel).components() {
            let _ = fs::write(cur.join("cgroup.subtree_control"), "+memory +cpu +pids");
            cur = cur.join(part);
            fs::create_dir_all(&cur)
                .map_err(|e| RuntimeError::io("creating cgroup", cur.display(), e))?;
        }
        if let Some(m) = limits.memory_bytes {
            write(&cur.join("memory.max"), &m.to_string())?;
            let _ = fs::write(cur.join("memory.swap.max"), "0");
        }
        if let Some(c) = limits.cpus {
            write(
                &cur.join("cpu.max"),
                &format!("{} {CFS_PERIOD_US}", (c * CFS_PERIOD_US as f64) as u64),
            )?;
        }
        if let Some(p) = limits.pids {
            write(&cur.join("pids.max"), &p.to_string())?;
        }
        Ok(())
    }
    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.root.join(&self.rel).join("cgroup.procs")]
    }
    fn remove(&self) -> Result<()> {
        remove_tree(&self.root.join(&self.rel))
    }
    fn describe(&self) -> String {
        format!("v2:{}", self.root.join(&self.rel).display())
    }
}

/// Starts a forked helper that moves itself into the cgroup it is already in: a no-op, but
/// joining a cgroup takes the kernel's threadgroup lock for writing, and taking it first waits
/// for an RCU grace period unless another writer came shortly before (most of a `run`'s time
/// on cgroup v1; docs/benchmarks.md has the numbers). The helper pays that wait while `run`
/// prepares the container, so the real join right after clone finds the lock warm. Failure is
/// harmless. Returns the helper, to be reaped.
pub fn prewarm_join() -> Option<nix::unistd::Pid> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dir = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if v2 && controllers.is_empty() {
            Some(Path::new("/sys/fs/cgroup").join(rel))
        } else if !v2 && controllers.split(',').any(|c| c == "pids") {
            Some(Path::new("/sys/fs/cgroup/pids").join(rel))
        } else {
            None
        }
    })?;
    let file = crate::userns::cstr(&dir.join("cgroup.procs")).ok()?;
    // SAFETY: twill-run is single-threaded here; the child makes three syscalls and _exits.
    match unsafe { nix::unistd::fork() }.ok()? {
        // SAFETY: in the forked child only async-signal-safe calls follow (open, write, _exit)
        // on a path made before the fork.
        nix::unistd::ForkResult::Child => unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
            }
            libc::_exit(0)
        },
        nix::unistd::ForkResult::Parent { child } => Some(child),
    }
}

/// The manager for container `id` on this host.
pub fn for_container(id: &str) -> Box<dyn CgroupManager> {
    at(&format!("twill/{id}"))
}

/// Whether this host is pure cgroup v2 (a hybrid host counts as v1).
pub fn is_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The manager for the cgroup at `rel` (relative to each hierarchy's root).
pub fn at(rel: &str) -> Box<dyn CgroupManager> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let rel = rel.trim_start_matches('/').to_string();
    // Pure v2 only when the unified hierarchy is mounted at the root; hybrid counts as v1.
    if root.join("cgroup.controllers").exists() {
        Box::new(V2 { root, rel })
    } else {
        Box::new(V1 { root, rel })
    }
}

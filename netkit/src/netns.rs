//! Network namespaces: named ones under `/var/run/netns` (the layout `ip netns` uses), ones
//! opened by path or PID, and running code inside one.
//!
//! Code runs inside a namespace on a dedicated OS thread that enters it with `setns` and is
//! thrown away afterwards. That keeps every other thread (tokio workers above all) in the
//! namespace it started in; a netlink socket opened on that thread stays bound to the namespace.

use std::fs::{self, File};
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};
use crate::netlink::Netlink;

/// Where named namespaces live, as with `ip netns`.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// An open handle on a network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    label: String,
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Creates the named namespace `/var/run/netns/NAME` (like `ip netns add`) and opens it.
    /// Fails with EEXIST if it already exists.
    pub fn create(name: &str) -> Result<Netns> {
        validate_name(name)?;
        let dir = Path::new(NETNS_RUN_DIR);
        fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", NETNS_RUN_DIR, e))?;
        make_run_dir_shared(dir)?;
        let path = dir.join(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("creating netns file", path.display().to_string(), e))?;

        // unshare() on a throwaway thread: only that thread moves into the new namespace,
        // and the bind mount keeps the namespace alive after the thread ends.
        let target = path.clone();
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::nix("unsharing network namespace for", name_of(&target), e))?;
            let tid = nix::unistd::gettid();
            let own = format!("/proc/self/task/{tid}/ns/net");
            mount(
                Some(own.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::nix("bind-mounting netns onto", target.display().to_string(), e))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Invalid(format!(
                "thread creating netns {name} panicked"
            )))
        });
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        tracing::debug!(netns = name, "created network namespace");
        Netns::open(name)
    }

    /// Opens the named namespace `/var/run/netns/NAME`.
    pub fn open(name: &str) -> Result<Netns> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let mut ns = Netns::open_path(&path)?;
        ns.label = name.to_string();
        Ok(ns)
    }

    /// Opens a namespace by file path (`/var/run/netns/x`, `/proc/PID/ns/net`, a CNI_NETNS).
    pub fn open_path(path: &Path) -> Result<Netns> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // A namespace is not looked up inside another one: no "in netns" to name.
                Error::NotFound {
                    kind: "network namespace",
                    name: path.display().to_string(),
                    netns: String::new(),
                }
            } else {
                Error::io("opening network namespace", path.display().to_string(), e)
            }
        })?;
        Ok(Netns {
            label: path.display().to_string(),
            path: path.to_path_buf(),
            file,
        })
    }

    /// Opens the network namespace of process `pid`.
    pub fn open_pid(pid: u32) -> Result<Netns> {
        Netns::open_path(&PathBuf::from(format!("/proc/{pid}/ns/net")))
    }

    /// Opens the network namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        let tid = nix::unistd::gettid();
        let mut ns = Netns::open_path(&PathBuf::from(format!("/proc/self/task/{tid}/ns/net")))?;
        ns.label = "(current)".into();
        Ok(ns)
    }

    /// Deletes the named namespace (like `ip netns delete`). The kernel frees it once no
    /// process and no open handle uses it. A missing namespace is not an error.
    pub fn delete(name: &str) -> Result<()> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        if !path.exists() {
            return Ok(());
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(Error::nix(
                    "unmounting netns",
                    path.display().to_string(),
                    e,
                ));
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    "removing netns file",
                    path.display().to_string(),
                    e,
                ));
            }
        }
        tracing::debug!(netns = name, "deleted network namespace");
        Ok(())
    }

    /// True if the named namespace exists.
    pub fn exists(name: &str) -> bool {
        validate_name(name).is_ok() && Path::new(NETNS_RUN_DIR).join(name).exists()
    }

    /// Names of all named namespaces.
    pub fn list() -> Result<Vec<String>> {
        let entries = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("listing", NETNS_RUN_DIR, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// A label for messages: the name for named namespaces, else the path.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number: two handles with the same inode are the same namespace.
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file
            .metadata()
            .map(|m| m.ino())
            .map_err(|e| Error::io("reading metadata of netns", self.label.clone(), e))
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns its result.
    /// Use it for anything bound to the namespace at creation: sockets, TUN devices,
    /// `/proc/sys/net` files, child processes.
    pub fn enter<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|s| {
            let handle = s.spawn(|| -> Result<T> {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::nix("entering network namespace", self.label.clone(), e))?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs the async closure `f` inside this namespace with a netlink connection opened
    /// there, on a dedicated thread with its own single-threaded runtime. Blocks until done.
    ///
    /// The closure's error type comes back unchanged, so a caller with its own error type
    /// (the CNI plugin's coded errors) keeps it; netkit's own failures (entering the
    /// namespace, connecting) are converted with `From`.
    pub fn run<F, Fut, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: Future<Output = Result<T, E>>,
        T: Send,
        E: From<Error> + Send,
    {
        let label = self.label.clone();
        self.enter(move || -> Result<T, E> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("building runtime for netns", label.clone(), e))?;
            rt.block_on(async move {
                let nl = Netlink::connect(&label)?;
                f(nl).await
            })
        })?
    }

    /// Makes `cmd` start inside this namespace: the child enters it right after fork.
    pub fn prepare_command(&self, cmd: &mut Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let fd = self
            .file
            .try_clone()
            .map_err(|e| Error::io("duplicating handle of netns", self.label.clone(), e))?;
        // SAFETY: the closure only calls setns(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Names become file names under /var/run/netns: refuse anything that could escape it.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid network namespace name {name:?}: use letters, digits, '-', '_' and '.'"
        )))
    }
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Like `ip netns add`: make the run directory a shared mount point so that namespace mounts
/// made here show up in other mount namespaces (and the other way round).
fn make_run_dir_shared(dir: &Path) -> Result<()> {
    // Serialised: two threads both finding "not a mount point" would stack two bind mounts.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::nix("bind-mounting", dir.display().to_string(), e))?;
            mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)
                .map_err(|e| Error::nix("making mount shared", dir.display().to_string(), e))
        }
        Err(e) => Err(Error::nix(
            "making mount shared",
            dir.display().to_string(),
            e,
        )),
    }
}

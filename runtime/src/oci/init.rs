//! The container's first process, from its clone to its exec (runc's init), for `create`:
//! it is cloned into the namespaces config.json asks for (by `create`, or by a helper: see
//! [`Launch`]), joins the ones given by path, starts a session of its own, waits until
//! `create` has put it into its cgroup, builds its root (config.json's mounts, devices,
//! pivot_root, sysctls, masked and read-only paths), makes its pty when it has a terminal,
//! tells `create` it is ready (rlimits set, user and capabilities dropped:
//! `process::drop_privileges`, the first part of twill-run's last step,
//! `process::exec_final`) and blocks opening `exec.fifo` for writing until `start` opens it
//! for reading; then it execs (`process::exec_dropped`).
//!
//! With a user namespace, or a pid namespace joined by path, a forked helper comes first
//! (see [`Launch`]): it joins the namespaces given by path, enters the user namespace (whose
//! maps `create` writes, `userns::enter`/`map_child`), and clones the container process into
//! the new namespaces, which so belong to the user namespace; the container builds its root
//! as the mapped root.
//!
//! The hooks it runs, where runtime-spec puts them: createContainer in its namespaces before
//! pivot_root (after `create` ran prestart and createRuntime, while it waited);
//! startContainer after `start`, right before exec.

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::error::{Result, RuntimeError};
use crate::messages::{self, Handshake};
use crate::oci::create::{CreateOptions, FilterLoader, final_exec};
use crate::oci::spec::UserNs;
use crate::oci::spec::{self, Spec};
use crate::oci::state::{EXEC_FIFO, Saved, Status};
use crate::oci::{console, hooks};
use crate::process::{self, FinalExec};
use crate::rootfs::{self, m};
use crate::userns::{self, MapHandshake};

/// The namespaces of `spec` to create with clone.
fn clone_flags(spec: &Spec) -> CloneFlags {
    let mut f = CloneFlags::empty();
    for kind in ["pid", "mount", "uts", "ipc", "network"] {
        if spec.new_namespace(kind)
            && let Some(flag) = namespace_flag(kind)
        {
            f |= flag;
        }
    }
    f
}

/// How the container process is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Launch {
    /// `create` clones it into its new namespaces; it joins the by-path ones itself.
    Direct,
    /// A helper forked by `create` joins the by-path namespaces, enters a user namespace,
    /// and clones it with CLONE_PARENT (so it is `create`'s child). Needed when the new
    /// namespaces must belong to a user namespace (which must exist before they do), and
    /// when a pid namespace is joined by path (setns on a pid namespace takes effect only
    /// for children).
    Helper,
}

pub(super) fn launch(spec: &Spec) -> Launch {
    let pid_joined = spec
        .linux
        .namespaces
        .iter()
        .any(|n| n.kind == "pid" && n.path.is_some());
    if pid_joined || spec.user_namespace() != UserNs::Host {
        Launch::Helper
    } else {
        Launch::Direct
    }
}

/// Joins the namespaces given by path (a joined user namespace first: the others belong to
/// it), then enters a new user namespace when `new_user` says how to have it mapped (after
/// the joins, which need the host's root).
fn join_namespaces(joined: &[(String, File)], new_user: Option<&MapHandshake>) -> Result<()> {
    if let Some((_, f)) = joined.iter().find(|(kind, _)| kind == "user") {
        setns(f.as_fd(), CloneFlags::CLONE_NEWUSER)
            .map_err(|e| RuntimeError::nix("joining namespace", "user", e))?;
        userns::become_root()?;
    }
    for (kind, f) in joined.iter().filter(|(kind, _)| kind != "user") {
        setns(f.as_fd(), CloneFlags::empty())
            .map_err(|e| RuntimeError::nix("joining namespace", kind, e))?;
    }
    if let Some(h) = new_user {
        userns::enter(h)?;
    }
    Ok(())
}

/// The clone flag that names a namespace type (also what NS_GET_NSTYPE answers).
fn namespace_flag(kind: &str) -> Option<CloneFlags> {
    Some(match kind {
        "pid" => CloneFlags::CLONE_NEWPID,
        "mount" => CloneFlags::CLONE_NEWNS,
        "uts" => CloneFlags::CLONE_NEWUTS,
        "ipc" => CloneFlags::CLONE_NEWIPC,
        "network" => CloneFlags::CLONE_NEWNET,
        "user" => CloneFlags::CLONE_NEWUSER,
        "cgroup" => CloneFlags::CLONE_NEWCGROUP,
        _ => return None,
    })
}

/// Whether `f` and `other` are the same inode (namespaces compare so).
fn same_file(f: &File, other: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let a = f
        .metadata()
        .map_err(|e| RuntimeError::io("reading", "a namespace file", e))?;
    let b = fs::metadata(other).map_err(|e| RuntimeError::io("reading", other.display(), e))?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// Namespaces to join by path, opened by `create` (so a wrong path fails there), each
/// checked to be of the type its entry names: joining a network namespace given as "ipc"
/// would silently leave the container in the host's IPC namespace.
pub(super) fn open_joined(spec: &Spec) -> Result<Vec<(String, File)>> {
    // NS_GET_NSTYPE, _IO(0xb7, 0x3) in <linux/nsfs.h>.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let mut out = Vec::new();
    for ns in &spec.linux.namespaces {
        if let Some(p) = &ns.path {
            let what = || format!("{} namespace {p}", ns.kind);
            let f = File::open(p).map_err(|e| RuntimeError::io("opening", what(), e))?;
            // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd we own.
            let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
            if kind < 0 {
                return Err(RuntimeError::io(
                    "checking that it is a namespace:",
                    what(),
                    std::io::Error::last_os_error(),
                ));
            }
            if namespace_flag(&ns.kind).map(|f| f.bits()) != Some(kind) {
                return Err(RuntimeError::Invalid(format!(
                    "config.json: {} is not a {} namespace",
                    p, ns.kind
                )));
            }
            if ns.kind == "mount" && same_file(&f, Path::new("/proc/self/ns/mnt"))? {
                // pivot_root there would move the root of every process of the host.
                return Err(RuntimeError::Invalid(format!(
                    "config.json: mount namespace {p} is the runtime's own mount namespace; \
                     the container's root cannot be built there"
                )));
            }
            out.push((ns.kind.clone(), f));
        }
    }
    Ok(out)
}

/// What the child needs, prepared by `create` before the clone.
pub(super) struct Child<'a> {
    pub(super) spec: &'a Spec,
    pub(super) root: PathBuf,
    pub(super) joined: Vec<(String, File)>,
    pub(super) state_dir: OwnedFd,
    pub(super) opts: &'a CreateOptions,
    pub(super) cgroup_ns: bool,
    pub(super) seccomp: Option<FilterLoader>,
    /// Where the pty master goes when process.terminal is set: connected to
    /// `--console-socket`, or `run`'s end of a socketpair (see `crate::tty`).
    pub(super) console: Option<OwnedFd>,
    pub(super) launch: Launch,
    /// The state hooks get (the pid is filled in by whoever runs them).
    pub(super) saved: Saved,
    /// `run`: the creator stays, reads the error pipe after start and says why the process
    /// failed before exec; else only the container's stderr can.
    pub(super) creator_reports: bool,
}

/// Runs the container-side hooks of `stage` with the state as `status`, `pid` its host PID.
fn container_hooks(
    c: &Child,
    list: &[spec::Hook],
    stage: &str,
    status: Status,
    pid: i32,
) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let mut state = c.saved.state_json(status);
    state["pid"] = pid.into();
    hooks::run_all(list, &state, stage)
}

/// Builds the container's root under `root` and pivots into it; the hooks before pivot_root
/// run in between (see the module's doc). `go` and `ready` are the pipes from and to create.
fn build_root(c: &Child, go: &OwnedFd, ready: &OwnedFd, host_pid: i32) -> Result<()> {
    let spec = c.spec;
    m(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )?;
    // The root must be a mount point for pivot_root.
    let root = match c.launch {
        Launch::Direct => {
            m(
                Some(&c.root.display().to_string()),
                &c.root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            c.root.clone()
        }
        // The helper entered the root as the host's root; from here it is reached through
        // the cwd (the path to it may not be searchable by the user namespace's root).
        Launch::Helper => {
            userns::bind_cwd_over_itself()?;
            PathBuf::from("/proc/self/cwd")
        }
    };
    let root = &root;
    m(None, root, None, MsFlags::MS_PRIVATE, None)?;
    let mut dev_is_bound = false;
    for mnt in &spec.mounts {
        crate::oci::mounts::mount_one(root, mnt)?;
        if mnt.destination == "/dev" && mnt.kind.as_deref() == Some("bind") {
            dev_is_bound = true;
        }
    }
    // Resolved inside the root like every mount: an image whose /dev is a link must not
    // have the device nodes made in the host directory it names.
    let dev = rootfs::resolve_in_root(root, "/dev")?;
    if !dev_is_bound {
        rootfs::mkdir(&dev)?;
        // config.json's devices first, each made once; the defaults then fill in only what
        // it does not list (as runc). The other way round, a listed default (/dev/tty, which
        // `podman run --privileged` lists) met the host's node already bound there.
        for d in &spec.linux.devices {
            make_device(root, d)?;
        }
        rootfs::default_devices(&dev)?;
    }
    if spec.process.as_ref().is_some_and(|p| p.terminal) {
        // The console is the pty's slave, bound over /dev/console after pivot.
        let console = dev.join("console");
        rootfs::mount_target(&console)?;
    }
    // The mounts are in place: prestart and createRuntime hooks (in create), then
    // createContainer (here), all before pivot_root.
    if c.parent_hooks() {
        messages::send(ready, Handshake::HooksPlease)
            .map_err(|e| RuntimeError::io("asking for", "prestart/createRuntime hooks", e))?;
        if messages::expect(go, Handshake::HooksRan).is_err() {
            return Err(RuntimeError::Invalid(
                "twill-oci create went away while running hooks".into(),
            ));
        }
    }
    container_hooks(
        c,
        &spec.hooks.create_container,
        "createContainer",
        Status::Creating,
        host_pid,
    )?;
    if c.opts.no_pivot {
        std::env::set_current_dir(root)
            .map_err(|e| RuntimeError::io("entering", root.display(), e))?;
        m(Some("."), Path::new("/"), None, MsFlags::MS_MOVE, None)?;
        nix::unistd::chroot(".")
            .map_err(|e| RuntimeError::nix("chroot into", root.display(), e))?;
        std::env::set_current_dir("/").map_err(|e| RuntimeError::io("entering", "/", e))?;
    } else {
        rootfs::pivot(root)?;
    }
    let propagation = match spec.linux.rootfs_propagation.as_deref() {
        Some("shared") => MsFlags::MS_SHARED,
        Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("slave") => MsFlags::MS_SLAVE,
        Some("private") => MsFlags::MS_PRIVATE,
        Some("rprivate") => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Some("unbindable") => MsFlags::MS_UNBINDABLE,
        Some("runbindable") => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    m(None, Path::new("/"), None, propagation, None)?;
    for (key, value) in &spec.linux.sysctl {
        let p = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&p, value)
            .map_err(|e| RuntimeError::io("setting sysctl", format!("{key}={value}"), e))?;
    }
    rootfs::mask_paths(&spec.linux.masked_paths, &spec.linux.readonly_paths);
    if spec.root.as_ref().is_some_and(|r| r.readonly) {
        rootfs::remount_bind(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

impl Child<'_> {
    /// Whether create runs prestart/createRuntime hooks while the container waits.
    pub(super) fn parent_hooks(&self) -> bool {
        !self.spec.hooks.prestart.is_empty() || !self.spec.hooks.create_runtime.is_empty()
    }
}

/// One `linux.devices` entry: mknod, or a bind of the host's node where mknod is not
/// allowed.
fn make_device(root: &Path, d: &spec::Device) -> Result<()> {
    let target = crate::oci::mounts::resolve_in_root(root, &d.path)?;
    if let Some(p) = target.parent() {
        rootfs::mkdir(p)?;
    }
    let _ = fs::remove_file(&target);
    let kind = match d.kind.as_str() {
        "c" | "u" => nix::sys::stat::SFlag::S_IFCHR,
        "b" => nix::sys::stat::SFlag::S_IFBLK,
        "p" => nix::sys::stat::SFlag::S_IFIFO,
        other => {
            return Err(RuntimeError::Invalid(format!(
                "device {}: unknown type {other:?}",
                d.path
            )));
        }
    };
    let mode = Mode::from_bits_truncate(d.file_mode.unwrap_or(0o666));
    let dev = nix::sys::stat::makedev(d.major as u64, d.minor as u64);
    if nix::sys::stat::mknod(&target, kind, mode, dev).is_err() {
        rootfs::mount_target(&target)?;
        m(Some(&d.path), &target, None, MsFlags::MS_BIND, None)?;
    } else {
        let _ = nix::unistd::chown(
            &target,
            Some(nix::unistd::Uid::from_raw(d.uid.unwrap_or(0))),
            Some(nix::unistd::Gid::from_raw(d.gid.unwrap_or(0))),
        );
        // mknod applied our umask (0666 came out 0644: /dev/fuse, /dev/net/tun unusable
        // for a non-root user); the spec's fileMode is the node's mode.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &target,
            mode,
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| RuntimeError::nix("setting the mode of", target.display(), e))?;
    }
    Ok(())
}

/// Everything up to the wait for `start`; the final exec and our PID as the host sees it.
fn child_setup<'a>(c: &'a Child, go: &OwnedFd, ready: &OwnedFd) -> Result<(FinalExec<'a>, i32)> {
    let spec = c.spec;
    // Joined by path before anything else (podman's CNI netns comes this way); the helper
    // has joined them already.
    if c.launch == Launch::Direct {
        join_namespaces(&c.joined, None)?;
    }
    if spec.new_namespace("network") {
        process::loopback_up()?;
    }
    if let Some(h) = &spec.hostname
        && spec.new_namespace("uts")
    {
        nix::unistd::sethostname(h).map_err(|e| RuntimeError::nix("setting hostname", h, e))?;
    }
    if let Some(d) = &spec.domainname
        && spec.new_namespace("uts")
    {
        // SAFETY: setdomainname reads `len` bytes of the string we pass.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(RuntimeError::io(
                "setting domainname",
                d,
                std::io::Error::last_os_error(),
            ));
        }
    }
    // The cgroup mount shows this process's cgroup: wait until create has put us there.
    if messages::expect(go, Handshake::Go).is_err() {
        return Err(RuntimeError::Invalid("twill-oci create went away".into()));
    }
    // Our PID as the hooks' state gives it: the host's /proc is still mounted here.
    let host_pid = fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or(0);
    // The cgroup namespace makes the container's own cgroup its root. On cgroup v2 it comes
    // before the cgroup2 mount, whose root is the namespace's: mounted before, the container
    // saw (and, mounted rw, could write) the host's whole hierarchy. On v1 it comes after:
    // each hierarchy's directory is bound by its real path, which the namespace would hide.
    let unshare_cgroup_ns = || {
        unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| RuntimeError::nix("unsharing", "cgroup namespace", e))
    };
    let v2 = crate::cgroup::is_v2();
    if c.cgroup_ns && v2 {
        unshare_cgroup_ns()?;
    }
    build_root(c, go, ready, host_pid)?;
    if c.cgroup_ns && !v2 {
        unshare_cgroup_ns()?;
    }
    let process = spec
        .process
        .as_ref()
        .ok_or_else(|| RuntimeError::Invalid("config.json has no process".into()))?;
    if let Some(sock) = &c.console {
        console::setup_pty(sock, true, process.console_size)?;
    }
    let cwd = if process.cwd.is_empty() {
        "/"
    } else {
        &process.cwd
    };
    std::env::set_current_dir(cwd).map_err(|e| RuntimeError::io("entering cwd", cwd, e))?;
    // As runc: a command that is not there, or cannot be run, fails create, not start.
    look_path(&process.args[0], &process.env)?;
    if let Some(mask) = process.user.umask {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }
    let mut fin = final_exec(process, None, c.opts.preserve_fds, c.seccomp.as_deref())?;
    // As runc: set before create returns, so a limit the kernel refuses fails create with
    // the reason, instead of the started container exiting 127 with it as its output.
    for (r, &(res, soft, hard)) in process.rlimits.iter().zip(&fin.rlimits) {
        process::set_rlimit(res, soft, hard).map_err(|e| {
            RuntimeError::io(
                "setting process.rlimits",
                format!("{} to soft {soft}, hard {hard}", r.kind),
                e,
            )
        })?;
    }
    fin.rlimits.clear();
    Ok((fin, host_pid))
}

/// Checks that `cmd` can be run as runc's exec.LookPath (Go's) does, with its words, which
/// engines read: 127 for "not found" or "no such file or directory", 126 for "permission
/// denied". A path (with a `/`) is looked at itself (`exec: "/x": stat /x: no such file or
/// directory`); a name is looked for in the process's PATH (`exec: "x": executable file not
/// found in $PATH`).
fn look_path(cmd: &str, env: &[String]) -> Result<()> {
    let says = |what: String| RuntimeError::Invalid(format!("exec: {cmd:?}: {what}"));
    let runnable = |file: &str| -> std::result::Result<(), nix::Error> {
        let md = nix::sys::stat::stat(file)?;
        let dir = nix::sys::stat::SFlag::from_bits_truncate(md.st_mode)
            .contains(nix::sys::stat::SFlag::S_IFDIR);
        if dir {
            return Err(nix::Error::EACCES);
        }
        nix::unistd::access(file, nix::unistd::AccessFlags::X_OK)
    };
    if cmd.contains('/') {
        return match runnable(cmd) {
            Ok(()) => Ok(()),
            Err(nix::Error::EACCES) if nix::sys::stat::stat(cmd).is_ok() => {
                Err(says("permission denied".into()))
            }
            Err(e) => Err(says(format!("stat {cmd}: {}", go_errno(e)))),
        };
    }
    let found = process::search_path(env).split(':').any(|dir| {
        let dir = if dir.is_empty() { "." } else { dir };
        runnable(&format!("{dir}/{cmd}")).is_ok()
    });
    if found {
        Ok(())
    } else {
        Err(says("executable file not found in $PATH".into()))
    }
}

/// An errno as Go's syscall package words it (`no such file or directory`): the C
/// library's text with a lower-case first letter.
fn go_errno(e: nix::Error) -> String {
    let text = e.desc();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// With noNewPrivileges, as runc (libcontainer/standard_init_linux.go): no_new_privs and then
/// the seccomp profile once the user and capabilities are switched, before "ready" and the
/// wait for `start`, so the startContainer hooks run under both, and a profile the kernel
/// refuses fails `create`. (runc's "as late as possible" is before that wait, not after the
/// hooks; without noNewPrivileges `drop_privileges` loaded the profile already.) What is
/// left for `exec_dropped`: neither again (a profile may deny prctl).
fn no_new_privs_and_seccomp(mut fin: FinalExec<'_>) -> Result<FinalExec<'_>> {
    if !fin.no_new_privs {
        return Ok(fin);
    }
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(RuntimeError::io(
            "setting",
            "no_new_privs",
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(load) = fin.seccomp {
        load().map_err(|e| RuntimeError::Invalid(format!("loading the seccomp profile: {e}")))?;
    }
    fin.no_new_privs = false;
    fin.seccomp = None;
    Ok(fin)
}

fn child_main(c: &Child, go: &OwnedFd, ready: &OwnedFd, err: &OwnedFd) -> isize {
    let fail = |e: RuntimeError| -> isize {
        messages::report_failure(err, &e.to_string());
        127
    };
    // A session (and process group) of its own, as runc's init always has: a signal sent to
    // the whole group of `twill-oci run` (`kill -INT -PGID`, `timeout`, a terminal's Ctrl-C)
    // reaches `run`, which passes it on once, and no longer the process as well, which got it
    // twice. With a terminal, the pty becomes this session's controlling terminal
    // (`console::setup_pty`). A cloned process never leads a group: this cannot fail.
    if let Err(e) = nix::unistd::setsid() {
        return fail(RuntimeError::nix("starting", "a session of its own", e));
    }
    let (fin, host_pid) = match child_setup(c, go, ready) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    // As runc: the user and capabilities are switched before waiting for `start`, so one the
    // kernel refuses fails `create` (engines: exit 126 with the reason) instead of the
    // started container exiting 127 with the reason as its output.
    if let Err(e) = process::drop_privileges(&fin) {
        return fail(e);
    }
    let fin = match no_new_privs_and_seccomp(fin) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    if messages::send(ready, Handshake::Ready).is_err() {
        return fail(RuntimeError::Invalid("twill-oci create went away".into()));
    }
    // Blocks until `start` opens the fifo for reading.
    let fifo = match nix::fcntl::openat(
        c.state_dir.as_fd(),
        EXEC_FIFO,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(e) => {
            // create has returned: stderr is where this can still be seen, unless `run`
            // waits on the error pipe.
            let e = RuntimeError::nix("opening", EXEC_FIFO, e);
            if !c.creator_reports {
                eprintln!("twill-oci: {e}");
            }
            return fail(e);
        }
    };
    let _ = nix::unistd::write(&fifo, b"0");
    drop(fifo);
    // `start` has returned: a failure from here on is the container's, shown on its stderr,
    // or by `run`, which waits on the error pipe.
    let after_start = |e: RuntimeError| -> isize {
        if !c.creator_reports {
            eprintln!("twill-oci: {e}");
        }
        fail(e)
    };
    if let Err(e) = container_hooks(
        c,
        &c.spec.hooks.start_container,
        "startContainer",
        Status::Created,
        host_pid,
    ) {
        return after_start(e);
    }
    after_start(process::exec_dropped(&fin))
}

/// Makes the container process (see [`Launch`]) running `child_main`; its PID on the host.
/// `go`, `ready` and `err` are the container's ends of its pipes.
pub(super) fn spawn(c: &Child, go: &OwnedFd, ready: &OwnedFd, err: &OwnedFd) -> Result<Pid> {
    let mut stack = vec![0u8; 1024 * 1024];
    let flags = clone_flags(c.spec);
    if c.launch == Launch::Direct {
        // SAFETY: twill-oci is single-threaded; the child only runs child_main and execs.
        return unsafe {
            nix::sched::clone(
                Box::new(|| child_main(c, go, ready, err)),
                &mut stack,
                flags,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(|e| RuntimeError::nix("cloning", "the container process", e));
    }
    let maps = match c.spec.user_namespace() {
        UserNs::New(maps) => Some(maps),
        _ => None,
    };
    let (ask_r, ask_w) = process::pipe()?;
    let (done_r, done_w) = process::pipe()?;
    let (pid_r, pid_w) = process::pipe()?;
    // SAFETY: twill-oci is single-threaded; the helper only makes syscalls, clones and exits.
    match unsafe { nix::unistd::fork() }
        .map_err(|e| RuntimeError::nix("forking", "the namespace helper", e))?
    {
        nix::unistd::ForkResult::Child => {
            drop((ask_r, done_w, pid_r));
            let made = (|| -> Result<Pid> {
                // While still the host's root (see build_root).
                std::env::set_current_dir(&c.root)
                    .map_err(|e| RuntimeError::io("entering", c.root.display(), e))?;
                let h = maps.as_ref().map(|_| MapHandshake {
                    ask: &ask_w,
                    done: &done_r,
                });
                join_namespaces(&c.joined, h.as_ref())?;
                // SAFETY: the helper is single-threaded; the child only runs child_main and
                // execs. CLONE_PARENT: the container process is create's child, not ours.
                unsafe {
                    nix::sched::clone(
                        Box::new(|| child_main(c, go, ready, err)),
                        &mut stack,
                        flags | CloneFlags::CLONE_PARENT,
                        Some(libc::SIGCHLD),
                    )
                }
                .map_err(|e| RuntimeError::nix("cloning", "the container process", e))
            })();
            let code = match made {
                Ok(p) => {
                    let _ = nix::unistd::write(&pid_w, &p.as_raw().to_le_bytes());
                    0
                }
                Err(e) => {
                    messages::report_failure(err, &e.to_string());
                    127
                }
            };
            // SAFETY: leaving the forked helper without running create's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child: helper } => {
            drop((ask_w, done_r, pid_w));
            let mapped = match &maps {
                Some(maps) => userns::map_child(helper.as_raw(), maps, &ask_r, &done_w),
                None => Ok(true),
            };
            if mapped.is_err() {
                // Our error says why, not the helper's "no maps written".
                let _ = nix::sys::signal::kill(helper, nix::sys::signal::Signal::SIGKILL);
            }
            // Closed before waiting: a helper still waiting for its maps sees EOF and exits.
            drop((ask_r, done_w));
            let mut b = [0u8; 4];
            let got = loop {
                match nix::unistd::read(&pid_r, &mut b) {
                    Err(nix::Error::EINTR) => continue,
                    r => break r.unwrap_or(0),
                }
            };
            let _ = nix::sys::wait::waitpid(helper, None);
            mapped?;
            if got != b.len() {
                return Err(RuntimeError::Invalid(
                    "the namespace helper exited before making the container process".into(),
                ));
            }
            Ok(Pid::from_raw(i32::from_le_bytes(b)))
        }
    }
}

//! The container's first process: cloned into new pid, mount, uts and ipc (and, for
//! `--net none`, network) namespaces, it joins the network namespace, builds the rootfs,
//! waits until the parent has put it into its cgroup, enters a new cgroup namespace (and with
//! `--userns` a user namespace), drops privileges and execs the command as PID 1, in a
//! session of its own (as runc's; with `-t`, that of its pty).
//! Errors before exec travel back to the parent over a close-on-exec pipe; the messages and
//! their bytes are in `messages.rs`.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::Pid;

use crate::error::{Result, RuntimeError};
use crate::messages::{self, Handshake};
use crate::rootfs::{self, RootfsSpec};

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[caps::Capability] = {
    use caps::Capability::*;
    &[
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_FSETID,
        CAP_FOWNER,
        CAP_MKNOD,
        CAP_NET_RAW,
        CAP_SETGID,
        CAP_SETUID,
        CAP_SETFCAP,
        CAP_SETPCAP,
        CAP_NET_BIND_SERVICE,
        CAP_SYS_CHROOT,
        CAP_KILL,
        CAP_AUDIT_WRITE,
    ]
};

/// What the command runs with.
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// `user[:group]`, names or numbers, resolved in the container's /etc/passwd and
    /// /etc/group.
    pub user: Option<String>,
    /// Create the working directory if the image lacks it (`run`, as Docker; not `exec`).
    pub create_workdir: bool,
}

/// Everything the first process needs.
pub struct InitSpec {
    pub rootfs: RootfsSpec,
    pub hostname: String,
    pub net: crate::network::NetJoin,
    pub exec: ExecSpec,
    /// stdout/stderr go here when set (detached containers), else they are inherited.
    pub log: Option<File>,
    /// `run -d -i`: the read end of a pipe whose write end the monitor holds, as stdin
    /// (else /dev/null when `stdin_null`, else the caller's; a pty is stdin with `tty`).
    pub stdin_pipe: Option<OwnedFd>,
    pub stdin_null: bool,
    /// `--userns`: enter a new user namespace with this mapping right before exec.
    pub userns: Option<crate::userns::IdMap>,
    /// `-t`: stdin, stdout and stderr are a pty instead (see [`TtySpec`]).
    pub tty: Option<TtySpec>,
}

/// `-t`: the command's stdin, stdout, stderr and controlling terminal are a pty made in the
/// container's own devpts, whose master is sent back over `sock` (see `tty::recv_master`).
pub struct TtySpec {
    pub sock: OwnedFd,
    /// The size the pty starts with (the caller's window's).
    pub size: Option<crate::oci::spec::ConsoleSize>,
}

pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::nix("creating", "pipe", e))
}

/// The PATH a command is looked for in when its environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH of environment `env`, else [`DEFAULT_PATH`].
pub fn search_path(env: &[String]) -> &str {
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// Finds `cmd` on the container's PATH (from `env`, else the usual default).
pub fn resolve(cmd: &str, env: &[String]) -> String {
    if cmd.contains('/') {
        return cmd.to_string();
    }
    search_path(env)
        .split(':')
        .map(|d| format!("{d}/{cmd}"))
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| cmd.to_string())
}

/// Drops to the container user, trims capabilities to Docker's set, sets no_new_privs and
/// execs. Returns only on failure.
pub fn exec_command(spec: &ExecSpec) -> RuntimeError {
    // Who to run as, from the container's own files (we are inside its root by now).
    let user = match &spec.user {
        Some(u) => {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
            match crate::user::resolve(u, &passwd, &group) {
                Ok(r) => Some(r),
                Err(e) => return RuntimeError::Invalid(e),
            }
        }
        None => None,
    };
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = match &user {
            Some(u) => u.home.clone(),
            None => "/root".into(),
        };
        env.push(format!("HOME={home}"));
    }
    if spec.create_workdir
        && let Err(e) = std::fs::create_dir_all(&spec.workdir)
    {
        return RuntimeError::io("creating working directory", &spec.workdir, e);
    }
    if let Err(e) = std::env::set_current_dir(&spec.workdir) {
        return RuntimeError::io("entering working directory", &spec.workdir, e);
    }
    // Docker's default open-files limit, within the host's hard limit.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((1024, 1024));
    let nofile = hard.min(1_048_576);
    let keep: caps::CapsHashSet = DEFAULT_CAPS.iter().copied().collect();
    let (uid, gid, groups) = match &user {
        Some(u) => (Some(u.uid), Some(u.gid), u.groups.clone()),
        None => (None, None, Vec::new()),
    };
    // As Docker since CVE-2022-24769: nothing inheritable, and a user other than root has no
    // capabilities of its own (only the bounding set, which file capabilities may use).
    let own = if uid.is_some_and(|u| u != 0) {
        caps::CapsHashSet::new()
    } else {
        keep.clone()
    };
    exec_final(&FinalExec {
        argv: spec.argv.clone(),
        env,
        uid,
        gid,
        groups,
        caps: CapSets {
            bounding: keep,
            effective: own.clone(),
            permitted: own,
            inheritable: caps::CapsHashSet::new(),
            ambient: caps::CapsHashSet::new(),
        },
        keep_caps: false,
        rlimits: vec![(libc::RLIMIT_NOFILE as i32, nofile, nofile)],
        no_new_privs: true,
        keep_fds: 0,
        seccomp: None,
    })
}

/// The capability sets the command runs with.
#[derive(Clone, Debug, Default)]
pub struct CapSets {
    pub bounding: caps::CapsHashSet,
    pub effective: caps::CapsHashSet,
    pub permitted: caps::CapsHashSet,
    pub inheritable: caps::CapsHashSet,
    pub ambient: caps::CapsHashSet,
}

/// The last step before exec, shared by `twill-run` and `twill-oci`: who the command runs
/// as, its capabilities, rlimits and descriptors. The environment is complete here.
pub struct FinalExec<'a> {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups (set when `gid` is).
    pub groups: Vec<u32>,
    pub caps: CapSets,
    /// Keep the permitted set across a switch to a non-root uid (the OCI spec gives a
    /// non-root process the capabilities its config lists; Docker's run does not).
    pub keep_caps: bool,
    /// (RLIMIT_*, soft, hard).
    pub rlimits: Vec<(i32, u64, u64)>,
    pub no_new_privs: bool,
    /// Descriptors above stderr the command keeps (`--preserve-fds N`: 3..3+N).
    pub keep_fds: u32,
    /// Loads the seccomp filter: before the switch of user and capabilities when
    /// no_new_privs is off (loading then needs CAP_SYS_ADMIN), else right before exec.
    pub seccomp: Option<&'a dyn Fn() -> Result<()>>,
}

/// Marks every descriptor from `first` up close-on-exec, one by one: for kernels without
/// CLOSE_RANGE_CLOEXEC (before 5.11) or a seccomp profile that denies close_range.
fn cloexec_from(first: u32) -> Result<()> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| RuntimeError::io("listing", "/proc/self/fd", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number; one that closed meanwhile gives EBADF.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBADF) {
                return Err(RuntimeError::io(
                    "marking close-on-exec",
                    format!("descriptor {fd}"),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// Gives the command the signal state a freshly started program expects, whatever its
/// runtime had: nothing blocked (a foreground `twill-run run` and `twill-oci run` block the
/// signals they pass on until their proxy is in place, and an engine or service manager may
/// start either with a mask; fork, clone and execve all keep it), and SIGPIPE at its default
/// (Rust's runtime ignores it in twill-oci, and an ignored signal stays ignored across
/// execve: the command would get EPIPE where `yes | head` expects to die), and so every
/// other signal whatever its runtime's parent ignored (`nohup`'s SIGHUP, a shell's SIGQUIT):
/// a container starts as its engine's would, with every disposition at its default. Handled
/// signals need nothing: execve resets them.
pub fn reset_signals() -> Result<()> {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
    // SAFETY: setting the default disposition installs no handler.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|e| RuntimeError::nix("restoring the default disposition of", "SIGPIPE", e))?;
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            set_default_disposition(sig);
        }
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| RuntimeError::nix("clearing", "the signal mask", e))
}

/// SIG_DFL for `sig`, through the system call: the C library refuses the signals it keeps
/// for itself (32 and 33), which a parent may still have left ignored. Best effort: a
/// signal that cannot be reset keeps what it had.
fn set_default_disposition(sig: libc::c_int) {
    // The kernel's `struct sigaction` (x86-64 and arm64 layout, SA_RESTORER present).
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: libc::sighandler_t,
        mask: u64,
    }
    let act = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: `act` is a valid kernel sigaction that installs no handler; the old action
    // is not asked for; 8 is the kernel's sigset size on these architectures.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Sets rlimit `res` (an RLIMIT_* number) of the calling process.
pub fn set_rlimit(res: i32, soft: u64, hard: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass; an unknown `res` is refused (EINVAL).
    if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets rlimits, drops to the user, trims capabilities, sets no_new_privs and execs.
/// Returns only on failure.
pub fn exec_final(f: &FinalExec) -> RuntimeError {
    match drop_privileges(f) {
        Ok(()) => exec_dropped(f),
        Err(e) => e,
    }
}

/// The first part of [`exec_final`]: a clean signal state, stdio given to the user (see
/// [`give_stdio_to`]), seccomp when no_new_privs is off (loading it is privileged then),
/// rlimits, the bounding set, the user and the capability sets. twill-oci's `create` runs it
/// before waiting for `start`, as runc, so a user or capability the kernel refuses fails
/// `create` instead of the started container.
pub fn drop_privileges(f: &FinalExec) -> Result<()> {
    // First: a seccomp profile loaded below may deny rt_sigprocmask or rt_sigaction.
    reset_signals()?;
    // Read before a seccomp profile may deny prctl: asked afterwards, every capability would
    // look unsupported and none would be dropped from the bounding set.
    let supported = caps::runtime::thread_all_supported();
    // While still root, and before any seccomp profile (which may deny fchown): the
    // command's stdio becomes its user's.
    give_stdio_to(f.uid.unwrap_or(0))?;
    if !f.no_new_privs
        && let Some(load) = f.seccomp
    {
        load()?;
    }
    for &(res, soft, hard) in &f.rlimits {
        set_rlimit(res, soft, hard).map_err(|e| {
            RuntimeError::io("setting rlimit", format!("{res} to {soft}:{hard}"), e)
        })?;
    }
    // Every failure from here on is fatal, as with runc: a capability that cannot be
    // dropped (a seccomp profile denying prctl or capset, loaded above when no_new_privs is
    // off) must fail the start, never leave the container with more than it asked for.
    for c in supported {
        if !f.caps.bounding.contains(&c)
            && let Err(e) = caps::drop(None, caps::CapSet::Bounding, c)
        {
            return Err(RuntimeError::Invalid(format!(
                "dropping {c} from the bounding set: {e}"
            )));
        }
    }
    if f.keep_caps {
        // SAFETY: prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(RuntimeError::io(
                "setting",
                "PR_SET_KEEPCAPS",
                std::io::Error::last_os_error(),
            ));
        }
    }
    if let Some(gid) = f.gid {
        let groups: Vec<nix::unistd::Gid> = f
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups)
            .map_err(|e| RuntimeError::nix("setgroups for gid", gid, e))?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))
            .map_err(|e| RuntimeError::nix("setgid", gid, e))?;
    }
    if let Some(uid) = f.uid {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
            .map_err(|e| RuntimeError::nix("setuid", uid, e))?;
    }
    // Inheritable first, while the permitted set (and CAP_SETPCAP) still allow any of the
    // bounding set; then effective, which must stay within the permitted set at every step;
    // then permitted. runc sets the three at once, which the kernel judges the same way.
    for (set, want) in [
        (caps::CapSet::Inheritable, &f.caps.inheritable),
        (caps::CapSet::Effective, &f.caps.effective),
        (caps::CapSet::Permitted, &f.caps.permitted),
    ] {
        if let Err(e) = caps::set(None, set, want) {
            return Err(RuntimeError::Invalid(format!(
                "setting the {set:?} capabilities: {e}"
            )));
        }
    }
    // Ambient capabilities stay best effort, as runc only warns: one not also inheritable
    // and permitted cannot be raised, and configs often list them so.
    for c in &f.caps.ambient {
        let _ = caps::raise(None, caps::CapSet::Ambient, *c);
    }
    Ok(())
}

/// As runc's fixStdioPermissions: stdin, stdout and stderr are given to `uid`, the user the
/// command runs as (their group kept), so that it can open them again by name as their
/// owner: its pty by `tty`'s name (`/dev/pts/0`, mode 0620), a pipe or its log file as
/// `/dev/stdout` or `/proc/self/fd/1` (a pipe is its creator's alone, 0600). Left alone, as
/// by runc: one that is closed, one `uid` owns already, the null device (the container's
/// `/dev/null` may be the host's, bound), and one fchown refuses with EINVAL (its group is
/// not mapped in our user namespace), EPERM (its owner is not) or EROFS. Unlike runc, a
/// terminal that is not our controlling terminal is left alone too: that is the caller's
/// own (a `twill-run run -u 1000` without `-t` from a root shell), and giving it away would
/// let a host user with the container's uid read its keys and write to it.
fn give_stdio_to(uid: u32) -> Result<()> {
    use nix::sys::stat::{SFlag, fstat, major, minor};
    for fd in 0..3 {
        // SAFETY: a standard descriptor, used only for this loop's calls.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let st = match fstat(fd) {
            Ok(st) => st,
            Err(nix::Error::EBADF) => continue,
            Err(e) => return Err(RuntimeError::nix("reading the owner of", stdio_name(fd), e)),
        };
        let device = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let null = device == SFlag::S_IFCHR && (major(st.st_rdev), minor(st.st_rdev)) == (1, 3);
        if st.st_uid == uid || null || (nix::unistd::isatty(fd).unwrap_or(false) && !our_ctty(fd)) {
            continue;
        }
        match nix::unistd::fchown(fd, Some(nix::unistd::Uid::from_raw(uid)), None) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::EPERM | nix::Error::EROFS) => {}
            Err(e) => return Err(RuntimeError::nix("giving to its user", stdio_name(fd), e)),
        }
    }
    Ok(())
}

/// Whether terminal `fd` is the calling process's controlling terminal (TIOCGSID answers
/// ENOTTY for any other).
fn our_ctty(fd: std::os::fd::BorrowedFd) -> bool {
    let mut sid: libc::pid_t = 0;
    // SAFETY: TIOCGSID writes one pid_t, into the one we pass.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGSID, &mut sid) == 0 }
}

fn stdio_name(fd: std::os::fd::BorrowedFd) -> &'static str {
    ["stdin", "stdout", "stderr"][fd.as_raw_fd() as usize]
}

/// The rest of [`exec_final`], after [`drop_privileges`]: no_new_privs (and then seccomp),
/// descriptors, execve. Returns only on failure.
pub fn exec_dropped(f: &FinalExec) -> RuntimeError {
    if f.no_new_privs {
        // SAFETY: prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return RuntimeError::io("setting", "no_new_privs", std::io::Error::last_os_error());
        }
        if let Some(load) = f.seccomp
            && let Err(e) = load()
        {
            return e;
        }
    }
    let Some(first) = f.argv.first() else {
        return RuntimeError::Invalid("no command to run".into());
    };
    let file = resolve(first, &f.env);
    // Nothing of ours leaks into the container: every descriptor above stderr (and the
    // preserved ones) closes on exec (CLOSE_RANGE_CLOEXEC keeps the error pipe usable until
    // then).
    // SAFETY: close_range only changes descriptor flags.
    if unsafe { libc::syscall(libc::SYS_close_range, 3 + f.keep_fds, u32::MAX, 4u32) } != 0
        && let Err(e) = cloexec_from(3 + f.keep_fds)
    {
        return e;
    }
    let to_c = |s: &str| CString::new(s.replace('\0', "")).unwrap_or_default();
    let argv: Vec<CString> = f.argv.iter().map(|a| to_c(a)).collect();
    let env: Vec<CString> = f.env.iter().map(|a| to_c(a)).collect();
    match nix::unistd::execve(&to_c(&file), &argv, &env) {
        Ok(never) => match never {},
        Err(e) => RuntimeError::Exec {
            command: first.clone(),
            cause: std::io::Error::from_raw_os_error(e as i32),
        },
    }
}

/// Brings `lo` up in the current network namespace with one ioctl pair (no netlink, no
/// runtime: this runs in the cloned child).
pub fn loopback_up() -> Result<()> {
    // SAFETY: a plain datagram socket, owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(RuntimeError::io(
            "opening a socket for",
            "lo",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(RuntimeError::io(
                "reading flags of",
                "lo",
                std::io::Error::last_os_error(),
            ));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(RuntimeError::io(
                "bringing up",
                "lo",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

fn child_main(
    spec: &InitSpec,
    go: &OwnedFd,
    err: &OwnedFd,
    userns: Option<crate::userns::MapHandshake>,
) -> isize {
    // The exit code tells the parent whether the command could not be executed (126, 127),
    // which `run` passes on as Docker does.
    let fail = |e: RuntimeError| -> isize {
        messages::report_failure(err, &e.to_string());
        e.exec_exit_code().map_or(125, |c| c as isize)
    };
    // A session (and process group) of its own, as runc's container process: a signal sent
    // to twill-run's whole group (`kill -INT -PGID`, `timeout`, a terminal's Ctrl-C) reaches
    // twill-run, which passes it on once, and no longer the container as well, which got it
    // twice. A new PID namespace's first process never leads a group: this cannot fail.
    if let Err(e) = nix::unistd::setsid() {
        return fail(RuntimeError::nix("starting", "a session of its own", e));
    }
    // The rootfs is built while the parent puts us into the cgroup (on cgroup v1 that write
    // waits for an RCU grace period, see `cgroup::prewarm_join`); the command starts only
    // after both.
    if spec.net == crate::network::NetJoin::New
        && let Err(e) = loopback_up()
    {
        return fail(e);
    }
    if let crate::network::NetJoin::Path(ns) = &spec.net {
        let f = match File::open(ns) {
            Ok(f) => f,
            Err(e) => return fail(RuntimeError::io("opening netns", ns.display(), e)),
        };
        if let Err(e) = setns(f.as_fd(), CloneFlags::CLONE_NEWNET) {
            return fail(RuntimeError::nix("joining netns", ns.display(), e));
        }
    }
    if let Err(e) = nix::unistd::sethostname(&spec.hostname) {
        return fail(RuntimeError::nix("setting hostname", &spec.hostname, e));
    }
    if let Err(e) = rootfs::setup(&spec.rootfs) {
        return fail(e);
    }
    if let Some(tty) = &spec.tty {
        // In the container's root by now: its /dev/ptmx, its devpts. The pty also stands
        // for /dev/console, as with runc and docker (bound over a file made for it in the
        // container's /dev tmpfs).
        let _ = File::create("/dev/console");
        if let Err(e) = crate::oci::console::setup_pty(&tty.sock, true, tty.size) {
            return fail(e);
        }
    } else if let Some(log) = &spec.log {
        let fd = log.as_raw_fd();
        // SAFETY: dup2 onto the standard descriptors.
        unsafe {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
        }
    }
    // With a pty, that is stdin already.
    let null = (spec.stdin_null && spec.stdin_pipe.is_none())
        .then(|| File::open("/dev/null").ok())
        .flatten();
    let stdin = match (&spec.stdin_pipe, &null) {
        (Some(r), _) => Some(r.as_raw_fd()),
        (None, n) => n.as_ref().map(|f| f.as_raw_fd()),
    };
    if spec.tty.is_none()
        && let Some(fd) = stdin
    {
        // SAFETY: as above (the copy on 0 does not close on exec).
        unsafe { libc::dup2(fd, 0) };
    }
    if messages::expect(go, Handshake::Go).is_err() {
        return fail(RuntimeError::Invalid(
            "parent went away before start".into(),
        ));
    }
    // After the cgroup join, so the container's cgroup is the namespace's root.
    if let Err(e) = unshare(CloneFlags::CLONE_NEWCGROUP) {
        return fail(RuntimeError::nix("unsharing", "cgroup namespace", e));
    }
    if let Some(h) = &userns
        && let Err(e) = crate::userns::enter(h)
    {
        return fail(e);
    }
    fail(exec_command(&spec.exec))
}

/// A started container process.
pub struct Started {
    pub pid: Pid,
}

/// Clones the first process, lets `place` put it into its cgroup, then releases it and waits
/// until it has exec'd (or reports why it could not).
pub fn start(spec: &InitSpec, place: impl FnOnce(i32) -> Result<()>) -> Result<Started> {
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ask_r, ask_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    let mut stack = vec![0u8; 1024 * 1024];
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.net == crate::network::NetJoin::New {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // SAFETY: the process is single-threaded here; the child only runs child_main and execs.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| {
                let h = spec.userns.map(|_| crate::userns::MapHandshake {
                    ask: &ask_w,
                    done: &done_r,
                });
                child_main(spec, &go_r, &err_w, h)
            }),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| RuntimeError::nix("cloning", "the container process", e))?;
    drop(go_r);
    drop(err_w);
    drop(ask_w);
    drop(done_r);
    if let Err(e) = place(pid.as_raw()) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        // The child may have failed first (and so made the join fail): its reason wins.
        if let Some(msg) = messages::read_failure(err_r) {
            return Err(RuntimeError::Invalid(format!(
                "starting the container: {msg}"
            )));
        }
        return Err(e);
    }
    let _ = messages::send(&go_w, Handshake::Go);
    drop(go_w);
    if let Some(map) = &spec.userns {
        // The child asks once it has unshared its user namespace (it may fail before).
        if let Err(e) = crate::userns::map_child(pid.as_raw(), &map.maps(), &ask_r, &done_w) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
    }
    drop((ask_r, done_w));
    if let Some(msg) = messages::read_failure(err_r) {
        let reason = format!("starting the container: {msg}");
        return Err(match nix::sys::wait::waitpid(pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, exit_code @ (126 | 127))) => {
                RuntimeError::Command { reason, exit_code }
            }
            _ => RuntimeError::Invalid(reason),
        });
    }
    Ok(Started { pid })
}

/// Waits for `pid`; Docker's exit code (128+signal when killed).
pub fn wait_exit(pid: Pid) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

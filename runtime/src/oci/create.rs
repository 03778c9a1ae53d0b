//! `create`: checks the config and the flags, makes the state directory, `exec.fifo` and the
//! cgroup, then the container's first process (see [`init`](super::init), which builds the
//! container and waits for `start`), puts that process into its cgroup and records it.
//!
//! Hooks, where runtime-spec puts them: prestart and createRuntime run in `create` once the
//! container's mounts are in place but before pivot_root (the container process waits for
//! them); createContainer then run in the container process, in its namespaces, still before
//! pivot_root; startContainer run in the container process after `start`, right before exec.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::error::{Result, RuntimeError};
use crate::messages::{self, Handshake};
use crate::oci::init::{Child, Launch, launch, open_joined, spawn};
use crate::oci::spec::{self, Spec};
use crate::oci::state::{self, EXEC_FIFO, Root, Saved, Status};
use crate::oci::{cgroups, console, hooks};
use crate::process::{self, CapSets, FinalExec};

/// `create`'s flags.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
}

/// The final exec of `process` (config.json's or exec's `--process`).
pub fn final_exec<'a>(
    p: &spec::Process,
    container_caps: Option<&spec::Capabilities>,
    keep_fds: u32,
    seccomp: Option<&'a dyn Fn() -> Result<()>>,
) -> Result<FinalExec<'a>> {
    let mut rlimits = Vec::new();
    for r in &p.rlimits {
        rlimits.push((spec::rlimit_resource(&r.kind)?, r.soft, r.hard));
    }
    // No `capabilities`: none at all for the container's process, the container's own for an
    // exec'd one (as runc); never every capability.
    let caps = match p.capabilities.as_ref().or(container_caps) {
        Some(c) => CapSets {
            bounding: spec::cap_set(&c.bounding),
            effective: spec::cap_set(&c.effective),
            permitted: spec::cap_set(&c.permitted),
            inheritable: spec::cap_set(&c.inheritable),
            ambient: spec::cap_set(&c.ambient),
        },
        None => CapSets::default(),
    };
    Ok(FinalExec {
        argv: p.args.clone(),
        env: p.env.clone(),
        uid: Some(p.user.uid),
        gid: Some(p.user.gid),
        groups: p.user.additional_gids.clone(),
        caps,
        keep_caps: true,
        rlimits,
        no_new_privs: p.no_new_privileges,
        keep_fds,
        seccomp,
    })
}

/// Who makes the container, which decides where a terminal goes and who hears of failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// `create`: returns before the process runs.
    Create,
    /// `run --detach`: waits only until the process has exec'd.
    RunDetached,
    /// `run`: waits for the process, relaying its terminal when it has one.
    Run,
}

/// Runs `create`. On failure everything it made is removed (as runc's create, which has no
/// `--keep`).
pub fn create(root: &Root, id: &str, opts: &CreateOptions) -> Result<()> {
    create_container(root, id, opts, Caller::Create, false).map(|_| ())
}

/// A container `create_for_run` made, whose process is our child.
pub struct Created {
    pub pid: Pid,
    /// The read end of the container process's error pipe.
    report: OwnedFd,
    /// A foreground `run` with process.terminal: our end of the socketpair the container
    /// process sent its pty master over (see `crate::tty`).
    console: Option<OwnedFd>,
}

impl Created {
    /// The socket the pty master came over (a foreground run of a terminal), once.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Waits until the container process has exec'd (None) or failed before exec, after
    /// `start` (a startContainer hook, execve): its reason.
    pub fn failure_before_exec(self) -> Option<String> {
        messages::read_failure(self.report)
    }
}

/// `create` for `run`, which goes on to start the container and wait for it (`detach`: only
/// until it has exec'd): what fails after start is reported to it (see [`Created`]) rather
/// than on the container's stderr. In the foreground a terminal comes back to `run` (see
/// [`Created::take_console`]); detached it needs `--console-socket`, as with `create`.
/// `keep` (`run --keep`): a container whose process failed during the create stays, stopped,
/// for `state` and `delete`, as runc's (its state is there once its process is).
pub fn create_for_run(
    root: &Root,
    id: &str,
    opts: &CreateOptions,
    detach: bool,
    keep: bool,
) -> Result<Created> {
    let caller = if detach {
        Caller::RunDetached
    } else {
        Caller::Run
    };
    create_container(root, id, opts, caller, keep)
}

/// As runc's checkTerminal, for `create` and `run`: see [`check_console`].
fn check_terminal(terminal: bool, console_socket: Option<&Path>, caller: Caller) -> Result<()> {
    let (what, detach) = match caller {
        Caller::Create => ("create", true),
        Caller::RunDetached => ("run --detach", true),
        Caller::Run => ("run", false),
    };
    check_console(terminal, console_socket, what, detach)
}

/// As runc's checkTerminal (`run`, `create`, `exec`): a terminal needs `--console-socket`
/// unless the command (`what`) stays in the foreground to relay it, and `--console-socket`
/// needs a terminal and a command that detaches (an engine would wait on its socket for a
/// pty that never comes).
pub(crate) fn check_console(
    terminal: bool,
    console_socket: Option<&Path>,
    what: &str,
    detach: bool,
) -> Result<()> {
    let foreground = if what.starts_with("exec") {
        "exec"
    } else {
        "run"
    };
    match (terminal, console_socket, detach) {
        (true, None, true) => Err(RuntimeError::Invalid(format!(
            "process.terminal is true and no --console-socket is given: {what} returns while \
             the process runs, so its terminal must go to a console socket (or use \
             {foreground} in the foreground, which relays it to its own terminal)"
        ))),
        (false, Some(path), _) => Err(RuntimeError::Invalid(format!(
            "--console-socket {} is given but process.terminal is false: set \
             process.terminal or leave --console-socket out",
            path.display()
        ))),
        (true, Some(path), false) => Err(RuntimeError::Invalid(format!(
            "--console-socket {} needs --detach: {foreground} in the foreground relays the \
             terminal to its own stdio",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// As runc: every descriptor `--preserve-fds N` hands on (3 to 3+N-1) must be open. Checked
/// before anything opens a descriptor of its own, which would take the lowest free number.
pub(crate) fn check_preserved_fds(n: u32) -> Result<()> {
    for fd in 3..3u64 + u64::from(n) {
        // A number past i32 is no descriptor: F_GETFD on -1 fails as it should.
        let raw = i32::try_from(fd).unwrap_or(-1);
        // SAFETY: F_GETFD only reads the flags of a descriptor number.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(RuntimeError::Invalid(format!(
                "--preserve-fds {n}: descriptor {fd} is not open ({})",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

fn create_container(
    root: &Root,
    id: &str,
    opts: &CreateOptions,
    caller: Caller,
    keep: bool,
) -> Result<Created> {
    let creator_reports = caller != Caller::Create;
    let dir = root.container_dir(id)?;
    check_preserved_fds(opts.preserve_fds)?;
    let bundle = fs::canonicalize(&opts.bundle)
        .map_err(|e| RuntimeError::io("opening bundle", opts.bundle.display(), e))?;
    let spec = Spec::load(&bundle)?;
    spec.check()?;
    let terminal = spec.process.as_ref().is_some_and(|p| p.terminal);
    check_terminal(terminal, opts.console_socket.as_deref(), caller)?;
    fs::create_dir_all(&root.dir)
        .map_err(|e| RuntimeError::io("creating", root.dir.display(), e))?;
    match fs::create_dir(&dir) {
        // Searchable by anyone (as runc's 0711): the container process, already its
        // configured user, opens the fifo in it.
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)) {
                let _ = fs::remove_dir(&dir);
                return Err(RuntimeError::io("setting the mode of", dir.display(), e));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RuntimeError::Invalid(format!(
                "container with id {id} already exists"
            )));
        }
        Err(e) => return Err(RuntimeError::io("creating", dir.display(), e)),
    }
    let cgroup = spec
        .linux
        .cgroups_path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| format!("twill-oci/{id}"));
    if cgroup.contains(':') {
        let _ = fs::remove_dir_all(&dir);
        return Err(RuntimeError::Invalid(format!(
            "cgroupsPath {cgroup:?} is a systemd slice:prefix:name; twill-oci manages cgroupfs \
             paths only (use --cgroup-manager cgroupfs)"
        )));
    }
    let mut pid = None;
    // Once the process exists a hook may have run (prestart, createRuntime, or
    // createContainer in the container): a failed create then runs poststop, as runc's
    // destroy does, so what those hooks set up (network, devices) is taken down.
    let mut poststop_state: Option<serde_json::Value> = None;
    // What `keep` leaves once the process exists: the state of a stopped container.
    let mut kept_state: Option<Saved> = None;
    let made = (|| -> Result<Created> {
        // A foreground run's terminal: the pty master comes back over this socketpair.
        let (console_ours, console_theirs) = if terminal && caller == Caller::Run {
            let (a, b) = crate::tty::pair()?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let fifo = dir.join(EXEC_FIFO);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
            .map_err(|e| RuntimeError::nix("creating", fifo.display(), e))?;
        // 0622 whatever our umask: the container process opens it as its configured user,
        // without capabilities by then (as runc's).
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &fifo,
            Mode::from_bits_truncate(0o622),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| RuntimeError::nix("setting the mode of", fifo.display(), e))?;
        cgroups::create(
            &cgroup,
            spec.linux.resources.as_ref().unwrap_or(&Default::default()),
            &spec.linux.devices,
        )?;
        let state_dir: OwnedFd = nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RuntimeError::nix("opening", dir.display(), e))?;
        let rootfs = spec
            .root
            .as_ref()
            .map(|r| bundle.join(&r.path))
            .unwrap_or_default();
        let rootfs = fs::canonicalize(&rootfs)
            .map_err(|e| RuntimeError::io("opening root", rootfs.display(), e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut saved = Saved {
            id: id.to_string(),
            pid: 0,
            pid_start: 0,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: state::rfc3339(now),
            annotations: spec.annotations.clone(),
            cgroup: cgroup.clone(),
            hooks: spec.hooks.clone(),
        };
        let child = Child {
            spec: &spec,
            root: rootfs,
            joined: open_joined(&spec)?,
            state_dir,
            opts,
            cgroup_ns: spec.new_namespace("cgroup"),
            seccomp: seccomp_loader(&spec)?,
            // check_terminal has refused the other combinations.
            console: match (console_theirs, &opts.console_socket) {
                (Some(ours), _) => Some(ours),
                (None, Some(path)) if terminal => Some(console::connect_socket(path)?),
                (None, _) => None,
            },
            launch: launch(&spec),
            saved: saved.clone(),
            creator_reports,
        };
        let (go_r, go_w) = process::pipe()?;
        let (ready_r, ready_w) = process::pipe()?;
        let (err_r, err_w) = process::pipe()?;
        let spawned = spawn(&child, &go_r, &ready_w, &err_w);
        drop((go_r, ready_w, err_w));
        let failed = |err_r: OwnedFd, e: RuntimeError| {
            messages::read_failure(err_r)
                .map(|m| RuntimeError::Invalid(format!("creating the container: {m}")))
                .unwrap_or(e)
        };
        let p = match spawned {
            Ok(p) => p,
            Err(e) => return Err(failed(err_r, e)),
        };
        pid = Some(p);
        // The fifo belongs to the container's root (as the host sees it: a user namespace's
        // root is an unprivileged host ID), who opens it for writing.
        if launch(&spec) == Launch::Helper {
            use std::os::unix::fs::MetadataExt;
            let proc = format!("/proc/{p}");
            let md = fs::metadata(&proc).map_err(|e| RuntimeError::io("reading", &proc, e))?;
            let fifo = dir.join(EXEC_FIFO);
            nix::unistd::chown(
                &fifo,
                Some(nix::unistd::Uid::from_raw(md.uid())),
                Some(nix::unistd::Gid::from_raw(md.gid())),
            )
            .map_err(|e| RuntimeError::nix("changing owner of", fifo.display(), e))?;
        }
        // Written by create, which may lower it (the container, in a user namespace, may not).
        if let Some(adj) = spec.process.as_ref().and_then(|p| p.oom_score_adj) {
            let f = format!("/proc/{p}/oom_score_adj");
            fs::write(&f, adj.to_string()).map_err(|e| RuntimeError::io("writing", &f, e))?;
        }
        if let Err(e) = cgroups::join(&cgroup, p.as_raw()) {
            return Err(failed(err_r, e));
        }
        let _ = messages::send(&go_w, Handshake::Go);
        let gone = |err_r: OwnedFd| {
            let why = messages::read_failure(err_r)
                .unwrap_or_else(|| "the container process exited".into());
            RuntimeError::Invalid(format!("creating the container: {why}"))
        };
        saved.pid = p.as_raw();
        poststop_state = Some(saved.state_json(Status::Stopped));
        kept_state = Some(Saved {
            pid: 0,
            ..saved.clone()
        });
        if child.parent_hooks() {
            if messages::expect(&ready_r, Handshake::HooksPlease).is_err() {
                return Err(gone(err_r));
            }
            let state = saved.state_json(Status::Creating);
            hooks::run_all(&spec.hooks.prestart, &state, "prestart")?;
            hooks::run_all(&spec.hooks.create_runtime, &state, "createRuntime")?;
            let _ = messages::send(&go_w, Handshake::HooksRan);
        }
        if messages::expect(&ready_r, Handshake::Ready).is_err() {
            return Err(gone(err_r));
        }
        saved.pid_start = state::start_time(p.as_raw()).unwrap_or(0);
        root.save(&saved)?;
        if let Some(f) = &opts.pid_file {
            write_pid_file(f, p.as_raw())?;
        }
        Ok(Created {
            pid: p,
            report: err_r,
            console: console_ours,
        })
    })();
    match made {
        Ok(c) => Ok(c),
        Err(e) => {
            if let Some(p) = pid {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(p, None);
            }
            // Kept: `delete` removes the rest and runs poststop, as for a container whose
            // process ended.
            if keep
                && let Some(saved) = kept_state
                && root.save(&saved).is_ok()
            {
                return Err(e);
            }
            let _ = cgroups::remove(&cgroup);
            let _ = fs::remove_dir_all(&dir);
            if let Some(state) = poststop_state {
                for h in &spec.hooks.poststop {
                    if let Err(e) = hooks::run(h, &state) {
                        eprintln!("twill-oci: poststop {e}");
                    }
                }
            }
            Err(e)
        }
    }
}

/// Loads a compiled seccomp filter into the calling process.
pub type FilterLoader = Box<dyn Fn() -> Result<()>>;

/// The container's seccomp filter, compiled now (a bad profile fails `create` or `exec`),
/// loaded by the container process.
pub fn seccomp_loader(spec: &Spec) -> Result<Option<FilterLoader>> {
    let Some(profile) = &spec.linux.seccomp else {
        return Ok(None);
    };
    let ctx = crate::oci::seccomp::compile(profile)?;
    Ok(Some(Box::new(move || crate::oci::seccomp::load(&ctx))))
}

/// Writes `pid` to `path` atomically (engines poll for it).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    crate::store::write_atomic(path, pid.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_needs_a_console_socket_unless_run_stays_in_the_foreground() {
        // runc's checkTerminal, with "detach" = create or run --detach.
        let sock = Some(Path::new("/run/console.sock"));
        for (terminal, socket, caller, ok) in [
            (false, None, Caller::Create, true),
            (false, None, Caller::Run, true),
            (true, None, Caller::Run, true),
            (true, sock, Caller::Create, true),
            (true, sock, Caller::RunDetached, true),
            (true, None, Caller::Create, false),
            (true, None, Caller::RunDetached, false),
            (true, sock, Caller::Run, false),
            (false, sock, Caller::Create, false),
            (false, sock, Caller::RunDetached, false),
        ] {
            let r = check_terminal(terminal, socket, caller);
            assert_eq!(r.is_ok(), ok, "{terminal} {socket:?} {caller:?}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("--console-socket"), "{e}");
            }
        }
    }

    #[test]
    fn exec_takes_a_console_socket_only_detached_with_a_terminal_as_runc() {
        // runc's exec (checkTerminal): -t -d needs a socket; a socket needs -t and -d.
        // Before: twill-oci exec -t always needed one, and took one in the foreground.
        let sock = Some(Path::new("/run/console.sock"));
        for (terminal, socket, detach, ok) in [
            (true, None, false, true),
            (true, sock, true, true),
            (false, None, false, true),
            (false, None, true, true),
            (true, None, true, false),
            (true, sock, false, false),
            (false, sock, true, false),
            (false, sock, false, false),
        ] {
            let what = if detach { "exec --detach" } else { "exec" };
            let r = check_console(terminal, socket, what, detach);
            assert_eq!(r.is_ok(), ok, "{terminal} {socket:?} {detach}: {r:?}");
            if let Err(e) = r {
                let e = e.to_string();
                assert!(
                    e.contains("--console-socket") && !e.contains("use run"),
                    "{e}"
                );
            }
        }
    }
}

//! twill-oci: the OCI runtime command line (runc's) over the runtime library. `create`
//! builds the container and leaves its process blocked before exec; `start` releases it;
//! `state`, `kill`, `delete`, `exec`, `ps`, `pause`/`resume` act on what `create` recorded
//! under `--root`.

pub mod cgroups;
pub mod console;
pub mod create;
pub mod hooks;
pub mod init;
pub mod mounts;
pub mod seccomp;
pub mod spec;
pub mod state;

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};

use crate::error::{Result, RuntimeError};
use crate::messages;
use crate::process;
use crate::tty;
use state::{EXEC_FIFO, Root, Status};

/// The runtime-spec version twill-oci implements.
pub const SPEC_VERSION: &str = "1.2.0";

fn not_in(id: &str, st: Status, want: &str) -> RuntimeError {
    RuntimeError::Invalid(format!("container {id} is {}, not {want}", st.as_str()))
}

/// `start ID`: releases a created container's process.
pub fn start(root: &Root, id: &str) -> Result<()> {
    let saved = root.load(id)?;
    let dir = root.container_dir(id)?;
    let st = saved.status(&dir);
    if st != Status::Created {
        return Err(not_in(id, st, "created"));
    }
    let fifo_path = dir.join(EXEC_FIFO);
    // Non-blocking: a process that died after create must not hang start.
    let fifo = nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RuntimeError::nix("opening", fifo_path.display(), e))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut b = [0u8; 1];
        match nix::unistd::read(&fifo, &mut b) {
            Ok(1) => break,
            Ok(_) | Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {
                if !saved.alive() {
                    return Err(RuntimeError::Invalid(format!(
                        "container {id}'s process exited before start"
                    )));
                }
                if Instant::now() > deadline {
                    return Err(RuntimeError::Invalid(format!(
                        "container {id} did not take the start signal"
                    )));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(RuntimeError::nix("reading", fifo_path.display(), e)),
        }
    }
    let _ = fs::remove_file(&fifo_path);
    let state = saved.state_json(Status::Running);
    for h in &saved.hooks.poststart {
        if let Err(e) = hooks::run(h, &state) {
            eprintln!("twill-oci: poststart {e}");
        }
    }
    Ok(())
}

/// `run`'s flags beyond `create`'s.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub create: create::CreateOptions,
    /// Return once the process has exec'd, leaving it running (runc's `--detach`).
    pub detach: bool,
    /// Keep the container, stopped, after its process ends or fails to start, for `state`
    /// and `delete` (runc's `--keep`).
    pub keep: bool,
}

/// `run ID`: create, start, wait, delete (runc's); the process's exit code. As runc, a
/// container whose start fails is deleted too (unless `keep`), and the error says what
/// failed: `start` itself, or the process before its exec (a startContainer hook, execve
/// refusing the file). As runc and a foreground `twill-run run`, SIGHUP, SIGINT, SIGQUIT,
/// SIGTERM, SIGUSR1 and SIGUSR2 are passed on to the process (held from before create until it
/// has exec'd), so `kill` or `timeout` stop the container, and `run` still deletes it, instead
/// of killing `run` and leaving the container running with its state. With process.terminal
/// the process gets a pty of its own relayed to `run`'s terminal (see [`crate::tty`]).
///
/// Detached, `run` returns 0 once the process has exec'd, which it leaves running (its
/// stdio is `run`'s); unlike runc, which returns at `start`, a failure before the exec is
/// said and the container deleted, as in the foreground.
pub fn run(root: &Root, id: &str, opts: &RunOptions) -> Result<i32> {
    // First, before anything here opens a descriptor: the terminal found below is a dup
    // that takes the lowest free number from 3, which would fill a preserved one not open.
    create::check_preserved_fds(opts.create.preserve_fds)
        .map_err(|e| RuntimeError::Invalid(format!("container {id}: {e}")))?;
    // As runc: a terminal in the foreground needs one of our own, found before anything is
    // made. A config that does not load is create's to report.
    let mut host_console = None;
    if !opts.detach
        && opts.create.console_socket.is_none()
        && spec::Spec::load(&opts.create.bundle)
            .ok()
            .and_then(|s| s.process)
            .is_some_and(|p| p.terminal)
    {
        host_console = Some(
            own_terminal("run")
                .map_err(|e| RuntimeError::Invalid(format!("container {id}: {e}")))?,
        );
    }
    if !opts.detach
        && let Err(e) = crate::container::hold_signals()
    {
        eprintln!("twill-oci: {e}: a signal before the container runs may orphan it");
    }
    let existed = root.load(id).is_ok();
    let mut created = create::create_for_run(root, id, &opts.create, opts.detach, opts.keep)
        .map_err(|e| {
            // As runc's: with --keep, one whose process failed at create stays, stopped.
            let kept = if opts.keep && !existed && root.load(id).is_ok() {
                format!("; kept (--keep): `twill-oci delete {id}` removes it")
            } else {
                String::new()
            };
            RuntimeError::Invalid(format!("container {id}: {e}{kept}"))
        })?;
    let pid = created.pid;
    let failed = |why: String, deleted: Option<Result<()>>| {
        let also = match deleted {
            None => format!("; kept (--keep): `twill-oci delete {id}` removes it"),
            Some(Ok(())) => String::new(),
            Some(Err(e)) => format!("; deleting it: {e}"),
        };
        RuntimeError::Invalid(format!("container {id} failed to start: {why}{also}"))
    };
    let delete_unless_kept = || (!opts.keep).then(|| delete(root, id, true));
    // Our child, not reaped: the PID is still its own.
    let kill_and_reap = || {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    };
    // The terminal: relayed from before start, so nothing the process (or a startContainer
    // hook) writes to it waits.
    let (relay, raw) = match created.take_console() {
        None => (None, None),
        Some(sock) => {
            let relayed = (|| {
                let console = match host_console.take() {
                    Some(c) => c,
                    None => own_terminal("run")?,
                };
                // Sent before create returned: there now, or never (the process is gone).
                relay_terminal(console, &sock, pid)
            })();
            match relayed {
                Ok((relay, raw)) => (Some(relay), Some(raw)),
                Err(e) => {
                    kill_and_reap();
                    return Err(failed(e.to_string(), delete_unless_kept()));
                }
            }
        }
    };
    if let Err(e) = start(root, id) {
        // Found not waiting for start, the process is likely failing right now: a moment to
        // finish saying why before it is killed.
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let deadline = Instant::now() + Duration::from_secs(2);
        let reaped = loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(WaitStatus::StillAlive) => break false,
                Err(nix::Error::EINTR) => {}
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => break true,
                Ok(_) => {}
            }
        };
        if !reaped {
            kill_and_reap();
        }
        drop((relay, raw));
        let why = created
            .failure_before_exec()
            .unwrap_or_else(|| e.to_string());
        return Err(failed(why, delete_unless_kept()));
    }
    // Blocks until the process has exec'd (the pipe closes on exec) or failed.
    let why = created.failure_before_exec();
    if opts.detach {
        return match why {
            None => Ok(0),
            Some(why) => {
                kill_and_reap();
                Err(failed(why, delete_unless_kept()))
            }
        };
    }
    if why.is_none()
        && let Err(e) = crate::container::proxy_signals(pid)
    {
        eprintln!("twill-oci: {e}: signals to twill-oci will not reach container {id}");
    }
    let code = crate::container::reap(pid);
    // The last output copied, then the terminal as it was.
    if let Some(r) = relay
        && let Err(e) = r.finish()
    {
        eprintln!("twill-oci: container {id}'s terminal: {e}");
    }
    drop(raw);
    match why {
        Some(why) => Err(failed(why, delete_unless_kept())),
        None => match delete_unless_kept() {
            None => Ok(code),
            Some(deleted) => deleted.map(|()| code),
        },
    }
}

/// The own terminal of a foreground `run` or `exec` (`what`), for a process's to be relayed
/// to (see [`tty::Terminal::own`]).
fn own_terminal(what: &str) -> Result<tty::Terminal> {
    tty::Terminal::own().map_err(|e| {
        RuntimeError::Invalid(format!(
            "process.terminal: {what} in the foreground relays the process's terminal to its \
             own, and {e}"
        ))
    })
}

/// A foreground `run`'s or `exec`'s terminal, as runc's: the pty master that the process
/// sent over `sock` (before it exec'd) relayed to and from `console`, put in raw mode until
/// the returned guard is dropped, on a thread of its own until our child `child` has ended.
fn relay_terminal(
    console: tty::Terminal,
    sock: &std::os::fd::OwnedFd,
    child: nix::unistd::Pid,
) -> Result<(tty::Running, tty::RawMode)> {
    let master = tty::recv_master(sock)?.ok_or_else(|| {
        RuntimeError::Invalid("the process sent no pty over its terminal's socket".into())
    })?;
    // As runc's recvtty: the process's "\n" relayed as written (to a file as to the
    // terminal), and the terminal raw with its output processing kept, so it still shows a
    // "\r\n".
    tty::clear_onlcr(master.as_fd())?;
    let raw = console.raw_mode(tty::RawOutput::Processed)?;
    // As runc's: stdin to the pty for as long as there is any, and nothing at its end.
    let relay = tty::Relay::new(master, tty::Stdout)
        .input()
        .size_from(Some(console))
        .spawn(child)?;
    Ok((relay, raw))
}

/// `state ID`: the runtime-spec state JSON.
pub fn state(root: &Root, id: &str) -> Result<serde_json::Value> {
    let saved = root.load(id)?;
    let st = saved.status(&root.container_dir(id)?);
    Ok(saved.state_json(st))
}

/// A signal number by name (`TERM`, `SIGTERM`, `RTMIN+3`) or number; 0 too, which checks
/// that the process is there without signalling it (as runc's `kill ID 0`).
pub fn parse_signal(s: &str) -> Result<i32> {
    if s == "0" {
        return Ok(0);
    }
    crate::container::parse_signal(s)
}

/// `kill ID [SIGNAL] [--all]`. As runc: `--all` signals whatever is left in the cgroup (of a
/// stopped container, nothing, which is no error); a SIGKILL to a paused container thaws it
/// after, since a frozen process does not die until thawed (`state` said "paused" forever
/// and an engine's kill hung).
pub fn kill_container(root: &Root, id: &str, signal: i32, all: bool) -> Result<()> {
    let saved = root.load(id)?;
    let st = saved.status(&root.container_dir(id)?);
    if st == Status::Stopped && !all {
        return Err(not_in(id, st, "running"));
    }
    if all {
        for p in cgroups::pids(&saved.cgroup) {
            let _ = crate::container::send_signal(p, signal);
        }
    } else {
        crate::container::send_signal(saved.pid, signal)
            .map_err(|e| RuntimeError::io("signalling", format!("container {id}"), e))?;
    }
    if st == Status::Paused && signal == Signal::SIGKILL as i32 {
        cgroups::freeze(&saved.cgroup, false).map_err(|e| {
            RuntimeError::Invalid(format!(
                "container {id} was sent SIGKILL but stays paused: thawing it: {e}; try \
                 `twill-oci resume {id}`"
            ))
        })?;
    }
    Ok(())
}

/// `delete [--force] ID`.
pub fn delete(root: &Root, id: &str, force: bool) -> Result<()> {
    let dir = root.container_dir(id)?;
    let saved = match root.load(id) {
        Ok(s) => s,
        // As runc: --force on a container that is not there (or half made, create killed
        // midway) succeeds; engines clean up after a failed create this way.
        Err(RuntimeError::NoContainer(_)) if force => {
            let _ = fs::remove_dir_all(&dir);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let st = saved.status(&dir);
    if st != Status::Stopped && st != Status::Created && !force {
        return Err(RuntimeError::Invalid(format!(
            "cannot delete container {id} that is {}: stop it or use --force",
            st.as_str()
        )));
    }
    if st == Status::Paused {
        let _ = cgroups::freeze(&saved.cgroup, false);
    }
    if st != Status::Stopped {
        for p in cgroups::pids(&saved.cgroup) {
            let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = kill(nix::unistd::Pid::from_raw(saved.pid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while saved.alive() && Instant::now() < deadline {
            // Our own child when create and delete ran in one process (tests); else the
            // engine reaps it.
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(saved.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Processes of `exec --detach` may outlive PID 1 briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroups::pids(&saved.cgroup).is_empty() && Instant::now() < deadline {
        for p in cgroups::pids(&saved.cgroup) {
            let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // A cgroup that stays (a process that would not die) keeps the state too: the error
    // says what is left, and the next delete finds the container and tries again.
    cgroups::remove(&saved.cgroup)?;
    fs::remove_dir_all(&dir).map_err(|e| RuntimeError::io("removing", dir.display(), e))?;
    let state = saved.state_json(Status::Stopped);
    for h in &saved.hooks.poststop {
        if let Err(e) = hooks::run(h, &state) {
            eprintln!("twill-oci: poststop {e}");
        }
    }
    Ok(())
}

/// `list`: (id, pid, status, bundle, created) of every container.
pub fn list(root: &Root) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for id in root.ids()? {
        if let Ok(s) = root.load(&id) {
            let st = s.status(&root.container_dir(&id)?);
            out.push(s.state_json(st));
        }
    }
    Ok(out)
}

/// `ps ID`: the container's processes (host PIDs).
pub fn ps(root: &Root, id: &str) -> Result<Vec<i32>> {
    let saved = root.load(id)?;
    Ok(cgroups::pids(&saved.cgroup))
}

/// `pause ID` / `resume ID`.
pub fn pause(root: &Root, id: &str, paused: bool) -> Result<()> {
    let saved = root.load(id)?;
    let st = saved.status(&root.container_dir(id)?);
    match (paused, st) {
        (true, Status::Running) | (false, Status::Paused) => cgroups::freeze(&saved.cgroup, paused),
        (true, _) => Err(not_in(id, st, "running")),
        (false, _) => Err(not_in(id, st, "paused")),
    }
}

/// `exec`'s flags.
pub struct ExecOptions {
    pub process: spec::Process,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// `exec`: a process in the container's namespaces and cgroup. Detached: returns once it has
/// exec'd (exit 0); else waits and returns its exit code, passing on the signals `run` passes
/// on (as runc: a SIGTERM to `exec` reaches the process, and `exec` exits with its status,
/// 128+signal when it was killed). A terminal goes to `--console-socket` when detached, else
/// is relayed to and from exec's own, as a foreground `run` relays it (runc's rules).
pub fn exec(root: &Root, id: &str, opts: &ExecOptions) -> Result<i32> {
    // As `run`: before anything below opens a descriptor (the namespace files, the console
    // socket), which would take a preserved number not open and pass the check; closed on
    // exec, it would leave the process silently without it.
    create::check_preserved_fds(opts.preserve_fds)
        .map_err(|e| RuntimeError::Invalid(format!("exec in {id}: {e}")))?;
    let saved = root.load(id)?;
    let st = saved.status(&root.container_dir(id)?);
    if st != Status::Running {
        return Err(not_in(id, st, "running"));
    }
    if opts.process.args.is_empty() {
        return Err(RuntimeError::Invalid("exec needs a command".into()));
    }
    opts.process.check_cwd()?;
    let what = if opts.detach { "exec --detach" } else { "exec" };
    create::check_console(
        opts.process.terminal,
        opts.console_socket.as_deref(),
        what,
        opts.detach,
    )
    .map_err(|e| RuntimeError::Invalid(format!("exec in {id}: {e}")))?;
    // The terminal a foreground exec relays: found before anything is made, as by `run`.
    let host_console = if opts.process.terminal && !opts.detach {
        Some(
            own_terminal("exec")
                .map_err(|e| RuntimeError::Invalid(format!("exec in {id}: {e}")))?,
        )
    } else {
        None
    };
    // As runc: an exec'd process gets the container's seccomp filter.
    let container = spec::Spec::load(&saved.bundle)?;
    let loader = create::seccomp_loader(&container)?;
    let container_caps = container
        .process
        .as_ref()
        .and_then(|p| p.capabilities.as_ref());
    let fin = create::final_exec(
        &opts.process,
        container_caps,
        opts.preserve_fds,
        loader.as_deref(),
    )?;
    let mut fds = Vec::new();
    for ns in ["ipc", "uts", "net", "pid", "cgroup", "mnt"] {
        let p = format!("/proc/{}/ns/{ns}", saved.pid);
        // The same namespace as ours (e.g. no cgroup namespace) is joined as a no-op.
        fds.push((
            ns,
            File::open(&p).map_err(|e| RuntimeError::io("opening", &p, e))?,
        ));
    }
    // The container's user namespace last: joining it gives up the host's privileges, which
    // joining the others (some perhaps the host's) needs. Not when it is ours: joining one's
    // own user namespace fails.
    let userns = format!("/proc/{}/ns/user", saved.pid);
    let user = if same_file(&userns, "/proc/self/ns/user")? {
        None
    } else {
        Some(File::open(&userns).map_err(|e| RuntimeError::io("opening", &userns, e))?)
    };
    // The process's end of its terminal's socket (check_console has refused the other
    // combinations), and, in the foreground, ours.
    let (console, relay_sock) = match (&opts.console_socket, &host_console) {
        (Some(p), _) => (Some(console::connect_socket(p)?), None),
        (None, Some(_)) => {
            let (ours, theirs) = tty::pair()?;
            (Some(theirs), Some(ours))
        }
        (None, None) => (None, None),
    };
    let console_size = host_console
        .as_ref()
        .and_then(tty::Terminal::size)
        .or(opts.process.console_size);
    let cgroup = saved.cgroup.clone();
    let (pid_r, pid_w) = process::pipe()?;
    let (err_r, err_w) = process::pipe()?;
    // Held from before the fork (both forks inherit the mask) until each waiting process has
    // its proxy in place. Detached, nobody waits to pass anything on: signals act on
    // twill-oci as before.
    if !opts.detach
        && let Err(e) = crate::container::hold_signals()
    {
        eprintln!("twill-oci exec: {e}: a signal before the process runs may not reach it");
    }
    // SAFETY: twill-oci is single-threaded; the child only makes syscalls, forks and execs.
    match unsafe { nix::unistd::fork() }.map_err(|e| RuntimeError::nix("forking", "exec", e))? {
        nix::unistd::ForkResult::Child => {
            drop(pid_r);
            drop(err_r);
            let fail = |e: RuntimeError| -> ! {
                messages::report_failure(&err_w, &e.to_string());
                std::process::exit(127)
            };
            // A session of its own (the process forked below is in it too), as runc's exec:
            // a signal to the whole process group of `twill-oci exec` (`kill -INT -PGID`,
            // `timeout`, a terminal's Ctrl-C) reaches exec alone, which passes it on once.
            // In exec's group, this process and the one it forks got it directly as well, and
            // passed it on: the process got it two or three times. A forked process never
            // leads a group: this cannot fail.
            if let Err(e) = nix::unistd::setsid() {
                fail(RuntimeError::nix("starting", "a session for exec", e));
            }
            if let Err(e) = cgroups::join(&cgroup, std::process::id() as i32) {
                fail(e);
            }
            for (name, f) in &fds {
                if let Err(e) = setns(f.as_fd(), CloneFlags::empty()) {
                    fail(RuntimeError::nix("joining namespace", name, e));
                }
            }
            if let Some(f) = &user {
                if let Err(e) = setns(f.as_fd(), CloneFlags::CLONE_NEWUSER) {
                    fail(RuntimeError::nix("joining namespace", "user", e));
                }
                if let Err(e) = crate::userns::become_root() {
                    fail(e);
                }
            }
            // Joining a pid namespace takes effect for children: fork once more.
            // SAFETY: single-threaded; the grandchild only execs or exits.
            match unsafe { nix::unistd::fork() } {
                Err(e) => fail(RuntimeError::nix("forking", "exec", e)),
                Ok(nix::unistd::ForkResult::Child) => {
                    let r = (|| -> Result<()> {
                        if let Some(s) = &console {
                            console::setup_pty(s, false, console_size)?;
                        }
                        let cwd = if opts.process.cwd.is_empty() {
                            "/"
                        } else {
                            &opts.process.cwd
                        };
                        std::env::set_current_dir(cwd)
                            .map_err(|e| RuntimeError::io("entering cwd", cwd, e))
                    })();
                    if let Err(e) = r {
                        fail(e);
                    }
                    fail(process::exec_final(&fin))
                }
                Ok(nix::unistd::ForkResult::Parent { child }) => {
                    let _ = nix::unistd::write(&pid_w, &child.as_raw().to_le_bytes());
                    drop(pid_w);
                    drop(err_w);
                    if opts.detach {
                        std::process::exit(0);
                    }
                    std::process::exit(crate::container::wait_passing_signals(
                        child,
                        "twill-oci exec",
                    ));
                }
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(pid_w);
            drop(err_w);
            // The process's end is its own: a master that never comes reads as EOF.
            drop(console);
            let mut b = [0u8; 4];
            let got = nix::unistd::read(&pid_r, &mut b).unwrap_or(0);
            if let Some(why) = messages::read_failure(err_r) {
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(RuntimeError::Invalid(format!("exec in {id}: {why}")));
            }
            if got == 4
                && let Some(f) = &opts.pid_file
            {
                create::write_pid_file(f, i32::from_le_bytes(b))?;
            }
            if opts.detach {
                return Ok(process::wait_exit(child));
            }
            let terminal = match (host_console, relay_sock) {
                (Some(c), Some(sock)) => match relay_terminal(c, &sock, child) {
                    Ok(relayed) => Some(relayed),
                    Err(e) => {
                        // Nobody to read its terminal: it is stopped rather than left alone.
                        if got == 4 {
                            let p = nix::unistd::Pid::from_raw(i32::from_le_bytes(b));
                            let _ = kill(p, Signal::SIGKILL);
                        }
                        let _ = process::wait_exit(child);
                        return Err(RuntimeError::Invalid(format!("exec in {id}: {e}")));
                    }
                },
                _ => None,
            };
            let code = crate::container::wait_passing_signals(child, "twill-oci exec");
            if let Some((relay, raw)) = terminal {
                // The last output copied, then the terminal as it was.
                if let Err(e) = relay.finish() {
                    eprintln!("twill-oci: exec in {id}: its terminal: {e}");
                }
                drop(raw);
            }
            Ok(code)
        }
    }
}

/// Whether paths `a` and `b` are the same file (namespace files: the same namespace).
fn same_file(a: &str, b: &str) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let md = |p: &str| fs::metadata(p).map_err(|e| RuntimeError::io("reading", p, e));
    let (a, b) = (md(a)?, md(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// `features`: the runtime-spec features document.
pub fn features() -> serde_json::Value {
    let mut mount_options: Vec<&str> = vec![
        "ro",
        "rw",
        "nosuid",
        "suid",
        "nodev",
        "dev",
        "noexec",
        "exec",
        "sync",
        "async",
        "dirsync",
        "remount",
        "mand",
        "nomand",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "nosymfollow",
        "symfollow",
        "bind",
        "rbind",
        "private",
        "rprivate",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "unbindable",
        "runbindable",
    ];
    mount_options.extend(mounts::recursive_option_names());
    // caps::all() is a hash set: sorted, the document is the same on every call.
    let mut capabilities: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    capabilities.sort();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": SPEC_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": mount_options,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": capabilities,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": true },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        // Not runc's key: tools read org.opencontainers.runc.version as runc's version.
        "annotations": { "org.twill.version": env!("CARGO_PKG_VERSION") },
    })
}

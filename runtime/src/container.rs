//! Container lifecycle: create + start (run), wait, stop, rm, exec, commit. Every step that
//! creates something has an undo, so a container that fails to start leaves nothing behind.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cgroup;
use crate::error::{Result, RuntimeError};
use crate::image::config::{self, CommandLine};
use crate::image::{self, CommitOptions};
use crate::messages::MonitorReport;
use crate::network::{self, CniOptions, NetMode};
use crate::oci::state::start_time;
use crate::process::{self, ExecSpec, InitSpec};
use crate::rootfs::RootfsSpec;
use crate::store::{Limits, MountSpec, PortSpec, State, Status, Store, new_id, now_unix};

/// Everything `run` was asked for.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub image: String,
    /// Arguments after the image name: they replace the image's Cmd.
    pub command: Vec<String>,
    /// `--entrypoint`: replaces the image's Entrypoint (`""` clears it).
    pub entrypoint: Option<String>,
    /// `-P`: publish every port the image exposes on a free host port.
    pub publish_all: bool,
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `--userns`: the host range container root maps to.
    pub userns: Option<crate::userns::IdMap>,
    /// `HOST:CTR[:ro]` or `CTR`.
    pub volumes: Vec<String>,
    pub limits: Limits,
    pub net: NetMode,
    pub ports: Vec<PortSpec>,
    pub auto_remove: bool,
    pub interactive: bool,
    /// `-t`: the command's stdio is a pty (see `tty`).
    pub tty: bool,
}

/// A container that [`start`] started.
pub struct Running {
    pub state: State,
    /// Its first process (our child).
    pub pid: Pid,
    /// With `-t`: the master of its pty, for a `tty::Relay`.
    pub pty: Option<std::os::fd::OwnedFd>,
    /// `-d -i` without `-t`: the write end of the container's stdin, held open (never
    /// written) for as long as it runs, so a command that reads stdin waits instead of
    /// reading EOF at once (docker's `run -d -i`).
    pub stdin: Option<std::os::fd::OwnedFd>,
}

/// Files of the init layer (never committed).
pub const INIT_FILES: &[&str] = &["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];

fn parse_volumes(store: &Store, specs: &[String]) -> Result<Vec<MountSpec>> {
    let mut out = Vec::new();
    match parse_volumes_into(store, specs, &mut out) {
        Ok(()) => Ok(out),
        Err(e) => {
            // The state does not list them yet, so no later cleanup would find them.
            for m in out.iter().filter(|m| m.anonymous) {
                if let Some(dir) = m.source.parent() {
                    let _ = fs::remove_dir_all(dir);
                }
            }
            Err(e)
        }
    }
}

fn parse_volumes_into(store: &Store, specs: &[String], out: &mut Vec<MountSpec>) -> Result<()> {
    for v in specs {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, target, ro) = match parts.as_slice() {
            [t] => (None, *t, false),
            [s, t] => (Some(*s), *t, false),
            [s, t, "ro"] => (Some(*s), *t, true),
            [s, t, "rw"] => (Some(*s), *t, false),
            _ => {
                return Err(RuntimeError::Invalid(format!(
                    "invalid -v {v:?}: use HOST:CTR[:ro] or CTR"
                )));
            }
        };
        if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
            return Err(RuntimeError::Invalid(format!(
                "invalid -v {v:?}: the container path must be absolute, without '..'"
            )));
        }
        let (source, anonymous) = match src {
            Some(s) => {
                let p = PathBuf::from(s);
                if !p.exists() {
                    return Err(RuntimeError::Invalid(format!(
                        "-v {v}: host path {s} does not exist"
                    )));
                }
                (p, false)
            }
            None => {
                let d = store.volume_dir(&new_id()[..16]).join("_data");
                fs::create_dir_all(&d)
                    .map_err(|e| RuntimeError::io("creating volume", d.display(), e))?;
                (d, true)
            }
        };
        out.push(MountSpec {
            source,
            target: target.to_string(),
            readonly: ro,
            anonymous,
        });
    }
    Ok(())
}

fn write_init_layer(dir: &Path, st: &State) -> Result<()> {
    let etc = dir.join("etc");
    fs::create_dir_all(&etc).map_err(|e| RuntimeError::io("creating", etc.display(), e))?;
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for ip in &st.ips {
        hosts.push_str(&format!("{ip}\t{}\n", st.hostname));
    }
    let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for (f, text) in [
        ("hosts", hosts),
        ("hostname", format!("{}\n", st.hostname)),
        ("resolv.conf", resolv),
    ] {
        fs::write(etc.join(f), text)
            .map_err(|e| RuntimeError::io("writing", etc.join(f).display(), e))?;
    }
    Ok(())
}

/// The image's Volumes not already given with `-v`, as anonymous volume specs.
fn image_volumes(cfg: &config::RunConfig, given: &[String]) -> Vec<String> {
    let targets: Vec<&str> = given
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            match parts.as_slice() {
                [t] => *t,
                [_, t, ..] => *t,
                [] => "",
            }
        })
        .collect();
    cfg.volumes
        .iter()
        .flat_map(|m| m.keys())
        .filter(|t| !targets.contains(&t.trim_end_matches('/')) && !targets.contains(&t.as_str()))
        .cloned()
        .collect()
}

/// `-P`: each exposed port not published with `-p` gets a free host port, picked right
/// before the CNI ADD (`network::setup`; host port 0 until then).
fn publish_exposed(cfg: &config::RunConfig, given: &[PortSpec]) -> Result<Vec<PortSpec>> {
    let mut out = given.to_vec();
    let exposed = cfg.ports().map_err(RuntimeError::Invalid)?;
    for (port, proto) in exposed {
        if out
            .iter()
            .any(|p| p.container_port == port && p.protocol == proto)
        {
            continue;
        }
        out.push(PortSpec {
            host_port: 0,
            container_port: port,
            protocol: proto,
            host_ip: None,
        });
    }
    Ok(out)
}

/// Undoes everything a (possibly half-created) container holds: network, cgroup, directory.
/// Anonymous volumes are kept (volumes outlive containers). A DEL that fails is recorded to
/// be retried (see `network::teardown`), since the state goes all the same.
pub fn cleanup(store: &Store, st: &State, cni: &CniOptions) -> Result<()> {
    let mut errors = Vec::new();
    if let Err(e) = network::teardown(st, cni, Some(store)) {
        errors.push(e.to_string());
    }
    if st.cgroup.is_some()
        && let Err(e) = cgroup::for_container(&st.id).remove()
    {
        errors.push(e.to_string());
    }
    let dir = store.container_dir(&st.id);
    let merged = dir.join("rootfs");
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    if let Err(e) = fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(errors.join("; ")))
    }
}

/// Removes the anonymous volumes twill-run made for `st` (under the store's `volumes/`): at
/// `--rm`, `rm -v` and a failed start, as Docker does; named and host paths are never touched.
fn remove_anonymous_volumes(store: &Store, st: &State) {
    let Some(volumes) = store.volume_dir("x").parent().map(Path::to_path_buf) else {
        return;
    };
    for m in st.mounts.iter().filter(|m| m.anonymous) {
        let Some(dir) = m
            .source
            .parent()
            .filter(|d| d.parent() == Some(volumes.as_path()))
        else {
            continue;
        };
        if let Err(e) = fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("twill-run: removing volume {}: {e}", dir.display());
        }
    }
}

/// Docker's and podman's rule for container names: they are shown in `ps` columns and
/// given back on command lines, so no spaces, slashes or empty names.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Creates and starts a container; on failure everything is undone. `log`: where stdout and
/// stderr go (detached), else they are inherited; with `-t` they are the pty whose master
/// comes back in [`Running`] instead.
pub fn start(store: &Store, opts: &RunOptions, cni: &CniOptions, log: bool) -> Result<Running> {
    let warm = cgroup::prewarm_join();
    let started = start_inner(store, opts, cni, log);
    if let Some(h) = warm {
        let _ = nix::sys::wait::waitpid(h, None);
    }
    started
}

fn start_inner(store: &Store, opts: &RunOptions, cni: &CniOptions, log: bool) -> Result<Running> {
    let img = image::load(store, &opts.image)?;
    let cfg = img.run_config()?;
    let command = config::argv(
        &cfg,
        &CommandLine {
            entrypoint: opts.entrypoint.as_deref(),
            args: &opts.command,
        },
    )
    .ok_or_else(|| {
        RuntimeError::Invalid(format!(
            "no command: image {} has neither Entrypoint nor Cmd; give one after the image name",
            img.name
        ))
    })?;
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let mut volumes = opts.volumes.clone();
    volumes.extend(image_volumes(&cfg, &opts.volumes));
    let ports = if opts.publish_all {
        publish_exposed(&cfg, &opts.ports)?
    } else {
        opts.ports.clone()
    };
    let id = new_id();
    // `--name ""` is no name, as in Docker and podman (a script's empty variable).
    let name = non_empty(&opts.name);
    if let Some(n) = &name
        && !valid_name(n)
    {
        return Err(RuntimeError::Invalid(format!(
            "invalid container name {n:?}: names must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )));
    }
    let names = store.lock_names()?;
    if let Some(n) = &name
        && store.list()?.iter().any(|s| &s.name == n)
    {
        return Err(RuntimeError::Invalid(format!(
            "the name {n} is already in use"
        )));
    }
    let mut st = State {
        id: id.clone(),
        name: name.unwrap_or_else(|| id[..12].to_string()),
        image: img.name.clone(),
        command,
        status: Status::Created,
        hostname: opts
            .hostname
            .clone()
            .unwrap_or_else(|| id[..12].to_string()),
        network_mode: opts.net.as_string(),
        limits: opts.limits.clone(),
        workdir: non_empty(&opts.workdir)
            .or_else(|| non_empty(&cfg.working_dir))
            .unwrap_or_else(|| "/".into()),
        user: non_empty(&opts.user).or_else(|| non_empty(&cfg.user)),
        userns: opts.userns.map(|m| m.to_string()),
        ports,
        labels: cfg.labels.clone().unwrap_or_default(),
        stop_signal: non_empty(&cfg.stop_signal),
        auto_remove: opts.auto_remove,
        created_unix: now_unix(),
        ..State::default()
    };
    st.env = config::env(
        cfg.env.as_deref().unwrap_or_default(),
        &opts.env,
        &st.hostname,
    );
    let dir = store.container_dir(&id);
    for sub in ["upper", "work", "init", "rootfs"] {
        fs::create_dir_all(dir.join(sub))
            .map_err(|e| RuntimeError::io("creating", dir.join(sub).display(), e))?;
    }
    store.save(&st)?;
    // Saved: the name is taken for everyone who looks from now on.
    drop(names);
    type Started = (
        Pid,
        Option<std::os::fd::OwnedFd>,
        Option<std::os::fd::OwnedFd>,
    );
    let started = (|| -> Result<Started> {
        st.mounts = parse_volumes(store, &volumes)?;
        store.save(&st)?;
        let net = network::setup(store, &mut st, &opts.net, cni)?;
        store.save(&st)?;
        write_init_layer(&dir.join("init"), &st)?;
        let cg = cgroup::for_container(&id);
        st.cgroup = Some(cg.describe());
        store.save(&st)?;
        cg.create(&st.limits)?;
        let mut lower = vec![dir.join("init")];
        lower.extend(img.layer_dirs(store)?.into_iter().rev());
        // --userns: the upper layer and fresh anonymous volumes belong to the range's root;
        // the read-only layers are shown through an idmapped mount instead of being chowned.
        let idmap = match &opts.userns {
            Some(map) => {
                crate::userns::chown_to_root_of(&dir.join("upper"), map)?;
                for m in st.mounts.iter().filter(|m| m.anonymous) {
                    crate::userns::chown_to_root_of(&m.source, map)?;
                }
                let staging = dir.join("idmap");
                fs::create_dir_all(&staging)
                    .map_err(|e| RuntimeError::io("creating", staging.display(), e))?;
                Some(crate::rootfs::Idmapping {
                    userns: crate::userns::helper_userns(map)?,
                    staging,
                })
            }
            None => None,
        };
        let (pty_sock, tty) = if opts.tty {
            let (ours, theirs) = crate::tty::pair()?;
            let size = crate::tty::caller_size();
            (Some(ours), Some(process::TtySpec { sock: theirs, size }))
        } else {
            (None, None)
        };
        let log_file = if log {
            Some(
                fs::File::options()
                    .create(true)
                    .append(true)
                    .open(dir.join("log"))
                    .map_err(|e| RuntimeError::io("opening", dir.join("log").display(), e))?,
            )
        } else {
            None
        };
        let (stdin_pipe, stdin) = if log && opts.interactive && !opts.tty {
            let (r, w) = process::pipe()?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let spec = InitSpec {
            rootfs: RootfsSpec {
                lower,
                upper: dir.join("upper"),
                work: dir.join("work"),
                merged: dir.join("rootfs"),
                mounts: st.mounts.clone(),
                idmap,
            },
            userns: opts.userns,
            hostname: st.hostname.clone(),
            net,
            exec: ExecSpec {
                argv: st.command.clone(),
                env: config::with_term(st.env.clone(), opts.tty),
                workdir: st.workdir.clone(),
                user: st.user.clone(),
                create_workdir: true,
            },
            log: log_file,
            stdin_pipe,
            stdin_null: log || !opts.interactive,
            tty,
        };
        let s = process::start(&spec, |pid| cgroup::join(cg.as_ref(), pid))?;
        // Our copy of the process's end: without it, a master that never came reads as EOF.
        drop(spec);
        let pty = match &pty_sock {
            // Sent before the process exec'd, so it is there now.
            Some(sock) => match crate::tty::recv_master(sock) {
                Ok(Some(master)) => Some(master),
                got => {
                    let _ = kill(s.pid, Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(s.pid, None);
                    let why = match got {
                        Err(e) => e.to_string(),
                        Ok(_) => "its pty never came back".into(),
                    };
                    return Err(RuntimeError::Invalid(format!(
                        "starting container {}: {why}",
                        st.name
                    )));
                }
            },
            None => None,
        };
        Ok((s.pid, pty, stdin))
    })();
    match started {
        Ok((pid, pty, stdin)) => {
            st.pid = Some(pid.as_raw());
            st.pid_start = start_time(pid.as_raw());
            st.status = Status::Running;
            st.monitor_pid = Some(std::process::id() as i32);
            st.monitor_start = start_time(std::process::id() as i32);
            store.save(&st)?;
            Ok(Running {
                state: st,
                pid,
                pty,
                stdin,
            })
        }
        Err(e) => {
            if let Err(c) = cleanup(store, &st, cni) {
                eprintln!("twill-run: cleaning up after a failed start: {c}");
            }
            remove_anonymous_volumes(store, &st);
            Err(e)
        }
    }
}

/// The PID signals to a foreground `run` or a waiting `exec` go to (0: none, once it is
/// reaped).
static PROXY_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// What a foreground `run` and a waiting `exec` pass on: the signals a user, `timeout` or a
/// service manager sends to stop or poke them; not the ones about the runtime itself (faults,
/// job control, SIGPIPE).
const PROXIED: [Signal; 6] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Whether a signal the kernel itself sent (si_code SI_KERNEL) also reached `target`
/// directly, so passing ours on would deliver it twice. A terminal's Ctrl-C (SIGINT) and
/// Ctrl-\ (SIGQUIT) go to the whole foreground process group: a target in ours has its copy.
/// twill-run's own targets never are (the container's PID 1 and the process `exec` joins
/// the container with call setsid(), as runc's, so a group's signals, the terminal's and a
/// `kill -INT -PGID` alike, reach twill-run alone), nor are `twill-oci run`'s and `twill-oci
/// exec`'s (the container process, and the process exec joins the container with, call
/// setsid() too). A process's kill(2) (SI_USER, SI_QUEUE: a user's `kill`,
/// `timeout`, systemd) is always passed on: it cannot be told from one sent to us alone.
/// SIGHUP too, SI_KERNEL or not: a terminal's hangup goes to the session leader alone, which
/// twill-run may be. A target that moved to a group of its own (an interactive shell's job
/// control) did not get the group's copy and gets ours.
/// Called from the signal handler: getpgid and getpgrp are single system calls.
fn reached_directly(sig: libc::c_int, code: libc::c_int, target: libc::pid_t) -> bool {
    if code != libc::SI_KERNEL || !(sig == libc::SIGINT || sig == libc::SIGQUIT) {
        return false;
    }
    // SAFETY: getpgid and getpgrp take and return plain integers.
    let (theirs, ours) = unsafe { (libc::getpgid(target), libc::getpgrp()) };
    theirs == ours
}

extern "C" fn proxy_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let pid = PROXY_TO.load(std::sync::atomic::Ordering::SeqCst);
    if pid <= 0 {
        return;
    }
    let code = if info.is_null() {
        libc::SI_USER
    } else {
        // SAFETY: installed with SA_SIGINFO, so the kernel passes a valid siginfo (checked
        // for null all the same); si_code is at the same place for every signal.
        unsafe { (*info).si_code }
    };
    // The interrupted code may be between a call and its errno check: keep its errno.
    // SAFETY: errno is this thread's.
    let errno = unsafe { *libc::__errno_location() };
    if !reached_directly(sig, code, pid) {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn proxied_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for sig in PROXIED {
        set.add(sig);
    }
    set
}

/// Blocks the signals a foreground run passes on, before it makes anything (state, network,
/// the container): one that arrives while the container is being made stays pending until
/// [`proxy_signals`] has its handler in place, then goes to the container. Without this a
/// SIGTERM in that window killed twill-run and left the container running, its network and
/// cgroup held, with nobody to record its exit. The container's process inherits the mask
/// and clears it right before exec (`process::reset_signals`).
pub fn hold_signals() -> Result<()> {
    hold_signals_saving_mask().map(drop)
}

/// [`hold_signals`], returning the mask it replaced, for a process that holds them for a
/// child only (`run -d`, until its fork).
fn hold_signals_saving_mask() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    let mut previous = SigSet::empty();
    sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&proxied_set()),
        Some(&mut previous),
    )
    .map_err(|e| RuntimeError::nix("blocking", "the signals passed on to the container", e))?;
    Ok(previous)
}

/// A foreground `run` passes the signals it gets on to the container's PID 1, as podman's
/// `--sig-proxy` does. Dying of them instead left the container running with nobody to
/// record its exit or release its network and cgroup. A terminal's Ctrl-C that reached the
/// process itself is not passed on again (see [`reached_directly`]). Unblocks what
/// [`hold_signals`] blocked, so a signal held meanwhile is passed on now; on an error too
/// (the signals then act on twill-run as before rather than stay held for ever).
pub fn proxy_signals(pid: Pid) -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, sigaction};
    PROXY_TO.store(pid.as_raw(), std::sync::atomic::Ordering::SeqCst);
    // SA_RESTART: the monitor's waitpid goes on waiting after the handler. SA_SIGINFO: the
    // handler needs to know who sent the signal (see `reached_directly`).
    let action = SigAction::new(
        SigHandler::SigAction(proxy_signal),
        SaFlags::SA_RESTART | SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    let installed = PROXIED.iter().try_for_each(|&sig| {
        // SAFETY: the handler only reads an atomic and makes system calls (getpgid,
        // getpgrp, kill).
        unsafe { sigaction(sig, &action) }
            .map(drop)
            .map_err(|e| RuntimeError::nix("installing a handler for", sig, e))
    });
    pass_on_held(pid);
    let unblocked =
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&proxied_set()), None).map_err(
            |e| RuntimeError::nix("unblocking", "the signals passed on to the container", e),
        );
    installed.and(unblocked)
}

/// Passes on every signal held until now (see [`hold_signals`]), whoever sent it: the
/// process may not have existed when it came (a Ctrl-C while `exec` joins the container
/// reaches twill-run and the process that joins, not the command that process forks
/// afterwards), so [`reached_directly`] cannot be trusted for it. At worst a Ctrl-C in the
/// few moments between a fork and the proxy arrives twice, as every one did before.
fn pass_on_held(pid: Pid) {
    let set = proxied_set();
    let none = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: sigtimedwait reads the set and the zero timeout we pass and takes one
        // pending signal of the set, if any, without a siginfo.
        let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &none) };
        if sig > 0 {
            let _ = send_signal(pid.as_raw(), sig);
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // EAGAIN: nothing (more) held.
            break;
        }
    }
}

/// Ends what [`proxy_signals`] started: once the container's PID 1 is reaped its PID may be
/// reused by anything, so signals to twill-run go nowhere from now on.
pub fn stop_proxying() {
    PROXY_TO.store(0, std::sync::atomic::Ordering::SeqCst);
}

/// Waits for our child `pid` to end, stops passing signals on, and only then reaps it: until
/// it is reaped its PID cannot be taken by another process, so a signal passed on meanwhile
/// reaches it (or its zombie), never a stranger. Its exit code as [`process::wait_exit`]
/// gives it.
pub fn reap(pid: Pid) -> i32 {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    while let Err(nix::Error::EINTR) =
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
    stop_proxying();
    process::wait_exit(pid)
}

/// Waits for our child `pid`, passing on to it the signals [`hold_signals`] held and any that
/// come until it ends, as runc's `exec` and `run` do; its exit code (128+signal when a signal
/// killed it). `exec` uses it twice: the command line waits for the process that joined the
/// container, which waits for the exec'd process (a process cannot wait for its grandchild),
/// so a signal travels both hops and each hop signals only its own unreaped child.
pub fn wait_passing_signals(pid: Pid, who: &str) -> i32 {
    if let Err(e) = proxy_signals(pid) {
        eprintln!("{who}: {e}: signals to {who} will not reach its process");
    }
    reap(pid)
}

/// Waits for the container's PID 1 and records how it ended; removes it with `--rm`.
pub fn monitor(store: &Store, mut st: State, pid: Pid, cni: &CniOptions) -> Result<i32> {
    let code = reap(pid);
    // `rm -f` may have removed it meanwhile.
    if let Ok(latest) = store.load(&st.id) {
        st = latest;
    } else {
        return Ok(code);
    }
    st.status = Status::Exited;
    st.exit_code = Some(code);
    st.pid = None;
    // The processes are gone: release the network (CNI DEL, netns) and the cgroup now, as
    // Docker does at stop; rm removes the rest.
    let released = match network::teardown(&st, cni, None) {
        Ok(()) => {
            st.netns = None;
            st.network_name = None;
            true
        }
        // What failed stays recorded, so `rm` runs CNI DEL again: even with --rm, since
        // removing the state would leave the address reserved with nothing to release it.
        Err(e) => {
            eprintln!(
                "twill-run: releasing the network of {}: {e} (rm tries again)",
                st.name
            );
            false
        }
    };
    if st.auto_remove && released {
        // The command's exit code stays the answer: a removal that failed is only reported.
        if let Err(e) = cleanup(store, &st, cni) {
            eprintln!("twill-run: removing {}: {e}", st.name);
        }
        remove_anonymous_volumes(store, &st);
    } else {
        let _ = cgroup::for_container(&st.id).remove();
        store.save(&st)?;
    }
    Ok(code)
}

/// `run -d`: a monitor process (setsid) starts and waits for the container; the caller gets
/// the ID once it is running, or the start error. The monitor starts the container as a
/// foreground `run` does: SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1 and SIGUSR2 held, a
/// SIGINT or SIGTERM during a CNI ADD ending the start and undoing it, then passed on to the
/// container's PID 1 while the monitor waits for it. Unheld, one of them killed the monitor
/// in the middle of the start and left the container half made (state, netns, cgroup, the
/// plugin's reservation) for `rm -f`.
pub fn run_detached(store: &Store, opts: &RunOptions, cni: &CniOptions) -> Result<String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::nix("creating", "pipe", e))?;
    // Held from before the fork, so the monitor is never without them; the command that
    // waits for its report gets its own mask back at once.
    let previous = hold_signals_saving_mask();
    if let Err(e) = &previous {
        eprintln!("twill-run: {e}: a signal to the monitor during the start may orphan it");
    }
    // SAFETY: the process is single-threaded (netkit's helper threads are joined).
    let forked = unsafe { nix::unistd::fork() };
    if !matches!(forked, Ok(nix::unistd::ForkResult::Child))
        && let Ok(mask) = &previous
    {
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(mask),
            None,
        );
    }
    match forked.map_err(|e| RuntimeError::nix("forking", "monitor", e))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            let mut w = fs::File::from(w);
            match start(store, opts, cni, true) {
                Ok(Running {
                    state: st,
                    pid,
                    pty,
                    stdin: _held_until_it_ends,
                }) => {
                    // Before the report: the caller's stderr is still ours to warn on.
                    if let Err(e) = proxy_signals(pid) {
                        eprintln!(
                            "twill-run: {e}: signals to the monitor of {} will not reach it",
                            st.name
                        );
                    }
                    let _ = w.write_all(&MonitorReport::Running { id: st.id.clone() }.encode());
                    drop(w);
                    if let Ok(null) = fs::File::open("/dev/null") {
                        use std::os::fd::AsRawFd;
                        // SAFETY: dup2 onto the standard descriptors of the monitor.
                        unsafe {
                            libc::dup2(null.as_raw_fd(), 0);
                            libc::dup2(null.as_raw_fd(), 1);
                            libc::dup2(null.as_raw_fd(), 2);
                        }
                    }
                    // `-d -t`: the pty's output goes to the log, as the output of a
                    // container without one does (it writes there itself).
                    if let Some(master) = pty {
                        let log = store.container_dir(&st.id).join("log");
                        let out: Box<dyn Write + Send> =
                            match fs::File::options().create(true).append(true).open(&log) {
                                Ok(f) => Box::new(f),
                                // Still read, so the container never blocks writing to it.
                                Err(_) => Box::new(std::io::sink()),
                            };
                        let _ = crate::tty::Relay::new(master, out).run(pid);
                    }
                    let _ = monitor(store, st, pid, cni);
                    std::process::exit(0);
                }
                Err(e) => {
                    let report = MonitorReport::Failed {
                        reason: e.to_string(),
                    };
                    let _ = w.write_all(&report.encode());
                    // Tells the parent a command that could not be executed (126, 127).
                    std::process::exit(e.exec_exit_code().unwrap_or(1));
                }
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut bytes = Vec::new();
            let _ = fs::File::from(r).read_to_end(&mut bytes);
            match MonitorReport::decode(&bytes) {
                MonitorReport::Running { id } => Ok(id),
                MonitorReport::Failed { reason } => {
                    Err(match nix::sys::wait::waitpid(child, None) {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, exit_code @ (126 | 127))) => {
                            RuntimeError::Command { reason, exit_code }
                        }
                        _ => RuntimeError::Invalid(reason),
                    })
                }
            }
        }
    }
}

/// Whether `pid` still runs and is the process that started at `start` (when recorded): a
/// container that exited while nobody watched may have its PID reused by any host process,
/// which stop, rm -f and exec must never signal or join.
pub(crate) fn alive(pid: i32, start: Option<u64>) -> bool {
    // start_time is None for a process that is gone or a zombie.
    let now = start_time(pid);
    now.is_some() && start.is_none_or(|t| now == Some(t))
}

/// A signal number from a name (`SIGQUIT`, `QUIT`), a realtime name (`SIGRTMIN+3`, `RTMAX-1`)
/// or a number up to SIGRTMAX, as images write StopSignal and podman sends them (`kill ID
/// 37` stops a systemd container, whose StopSignal is SIGRTMIN+3).
pub fn parse_signal(s: &str) -> Result<i32> {
    let bad = || RuntimeError::Invalid(format!("unknown signal {s:?}"));
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if let Ok(n) = s.parse::<i32>() {
        return (1..=max).contains(&n).then_some(n).ok_or_else(bad);
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |rest: &str, base: i32, sign: i32| -> Option<i32> {
        let n = if rest.is_empty() {
            0
        } else {
            let (op, k) = rest.split_at(1);
            let k: i32 = k.parse().ok()?;
            match op {
                "+" if sign > 0 => k,
                "-" if sign < 0 => -k,
                _ => return None,
            }
        };
        Some(base + n).filter(|v| (min..=max).contains(v))
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        return realtime(rest, min, 1).ok_or_else(bad);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        return realtime(rest, max, -1).ok_or_else(bad);
    }
    format!("SIG{bare}")
        .parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

/// Sends signal number `sig` (realtime ones too, which nix's `Signal` cannot hold) to `pid`.
pub fn send_signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with plain integers.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `stop`: the image's StopSignal (SIGTERM when it has none), then SIGKILL after `grace`.
pub fn stop(store: &Store, id: &str, grace: Duration) -> Result<State> {
    let mut st = store.load(id)?;
    let Some(pid) = st.pid.filter(|_| st.status == Status::Running) else {
        return Ok(st);
    };
    let signal = match st.stop_signal.as_deref() {
        Some(s) => parse_signal(s)?,
        None => libc::SIGTERM,
    };
    let ours = |pid| alive(pid, st.pid_start);
    if ours(pid) {
        let _ = send_signal(pid, signal);
    }
    let deadline = std::time::Instant::now() + grace;
    while ours(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if ours(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let monitor_start = st.monitor_start;
    // Let the monitor record the exit; if there is none any more, record it ourselves.
    for _ in 0..250 {
        st = match store.load(&st.id) {
            Ok(latest) => latest,
            // The monitor of a `--rm` container removes it once PID 1 is gone: it has stopped.
            Err(RuntimeError::NoContainer(_)) => {
                st.status = Status::Exited;
                st.pid = None;
                return Ok(st);
            }
            Err(e) => return Err(e),
        };
        if st.status != Status::Running {
            return Ok(st);
        }
        if st.monitor_pid.is_none_or(|m| !alive(m, monitor_start)) {
            st.status = Status::Exited;
            st.pid = None;
            store.save(&st)?;
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(st)
}

/// `rm [-f] [-v]`: `volumes` removes its anonymous volumes too.
pub fn remove(store: &Store, id: &str, force: bool, volumes: bool, cni: &CniOptions) -> Result<()> {
    let st = store.load(id)?;
    if st.status == Status::Running && st.pid.is_some_and(|p| alive(p, st.pid_start)) {
        if !force {
            return Err(RuntimeError::Invalid(format!(
                "container {} is running: stop it first or use rm -f",
                st.name
            )));
        }
        stop(store, &st.id, Duration::ZERO)?;
    }
    let st = match store.load(&st.id) {
        Ok(latest) => latest,
        // A `--rm` container's monitor removed it (and its anonymous volumes) as it stopped;
        // cleaning up again would fail on the netns it already deleted.
        Err(RuntimeError::NoContainer(_)) => return Ok(()),
        Err(_) => st,
    };
    let cleaned = cleanup(store, &st, cni);
    // A `--rm` container kept because its network release failed goes as `--rm` would have.
    // Once its state is gone, also when its DEL failed (recorded to be retried), nothing
    // would find its volumes again.
    if (volumes || st.auto_remove) && !store.container_dir(&st.id).exists() {
        remove_anonymous_volumes(store, &st);
    }
    cleaned
}

/// `commit ID NAME`.
pub fn commit(store: &Store, id: &str, name: &str) -> Result<image::Image> {
    let st = store.load(id)?;
    let base = image::load(store, &st.image)?;
    let mut paths: Vec<String> = INIT_FILES.iter().map(|s| s.to_string()).collect();
    paths.extend(st.mounts.iter().map(|m| m.target.clone()));
    image::commit(
        store,
        &base,
        &store.container_dir(&st.id).join("upper"),
        name,
        &CommitOptions {
            paths,
            // A --userns container's files belong to its range: the image stores them as the
            // container saw them.
            unshift: st
                .userns
                .as_deref()
                .map(crate::userns::IdMap::parse)
                .transpose()?,
            argv: st.command.clone(),
            env: st.env.clone(),
            workdir: st.workdir.clone(),
            user: st.user.clone(),
            container: st.id.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_realtime_name_and_number_as_runc_does() {
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        for (text, want) in [
            ("TERM", libc::SIGTERM),
            ("SIGKILL", libc::SIGKILL),
            ("sigquit", libc::SIGQUIT),
            ("15", 15),
            ("SIGRTMIN+3", min + 3),
            ("RTMIN+3", min + 3),
            ("RTMIN", min),
            ("SIGRTMAX-1", max - 1),
            ("RTMAX", max),
            (&(min + 3).to_string(), min + 3),
            (&max.to_string(), max),
        ] {
            assert_eq!(parse_signal(text).unwrap(), want, "{text}");
        }
        for bad in [
            "0",
            "-1",
            &(max + 1).to_string(),
            "RTMIN+99",
            "RTMIN-1",
            "RTMAX+1",
            "NOPE",
            "RTMIN+x",
        ] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}

//! `exec`: a command in a running container, as `docker exec`. twill-run forks a process
//! that joins the container's cgroup and namespaces in a session of its own and forks the
//! command (joining a PID namespace takes effect for children); it runs as the container's
//! user, in its working directory, with its environment, unless `-u`, `-w` or `-e` say
//! otherwise; on a pty with `-t`. twill-run waits for it, passing signals on, or with `-d`
//! returns once it has started.

use std::fs;
use std::os::fd::OwnedFd;

use nix::unistd::{ForkResult, Pid, fork};

use crate::cgroup;
use crate::container::{alive, hold_signals, proxy_signals, reap, wait_passing_signals};
use crate::error::{Result, RuntimeError};
use crate::image::config;
use crate::messages;
use crate::process::{self, ExecSpec};
use crate::store::{State, Status, Store};
use crate::tty;

/// Everything `exec` was asked for.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    pub argv: Vec<String>,
    /// `-i`: keep stdin attached.
    pub interactive: bool,
    /// `-t`: the command's stdio is a pty.
    pub tty: bool,
    /// `-d`: start the command and return; nobody waits for it or reads its output.
    pub detach: bool,
    /// `-u`: `user[:group]` instead of the container's.
    pub user: Option<String>,
    /// `-w`: an absolute working directory instead of the container's.
    pub workdir: Option<String>,
    /// `-e`: `K=V` entries over the container's environment (`-e K` is resolved by the
    /// command line first, as `run`'s).
    pub env: Vec<String>,
}

/// What the command runs with: the container's settings, then `opts`'s over them.
fn exec_spec(st: &State, opts: &ExecOptions) -> Result<ExecSpec> {
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let workdir = match non_empty(&opts.workdir) {
        Some(w) if !w.starts_with('/') => {
            return Err(RuntimeError::Invalid(format!(
                "exec -w {w}: the working directory must be an absolute path"
            )));
        }
        Some(w) => w,
        None => st.workdir.clone(),
    };
    Ok(ExecSpec {
        argv: opts.argv.clone(),
        env: config::with_term(config::env(&st.env, &opts.env, &st.hostname), opts.tty),
        workdir,
        user: non_empty(&opts.user).or_else(|| st.user.clone()),
        create_workdir: false,
    })
}

/// The container's namespaces, opened before forking so errors are reported here. The user
/// namespace (`--userns`) comes last: joining it gives up host privileges, and the other
/// namespaces belong to the host's.
fn namespaces(st: &State, pid: i32) -> Result<Vec<(&'static str, fs::File)>> {
    let mut names = vec!["ipc", "uts", "net", "pid", "cgroup", "mnt"];
    if st.userns.is_some() {
        names.push("user");
    }
    names
        .into_iter()
        .map(|ns| {
            let p = format!("/proc/{pid}/ns/{ns}");
            fs::File::open(&p)
                .map(|f| (ns, f))
                .map_err(|e| RuntimeError::io("opening", &p, e))
        })
        .collect()
}

/// The pty's socket pair: twill-run's end (or, with `-d`, the joining process's) and the
/// command's.
type TtyPair = Option<(OwnedFd, OwnedFd)>;

/// `exec`: runs `opts.argv` in container `id`; the command's exit code (0 at once with
/// `-d`). A command that cannot be started gives 126 or 127, as with docker.
pub fn exec(store: &Store, id: &str, opts: &ExecOptions) -> Result<i32> {
    let st = store.load(id)?;
    let pid = st
        .pid
        .filter(|p| st.status == Status::Running && alive(*p, st.pid_start))
        .ok_or_else(|| RuntimeError::Invalid(format!("container {id} is not running")))?;
    if opts.argv.is_empty() {
        return Err(RuntimeError::Invalid("exec needs a command".into()));
    }
    let spec = exec_spec(&st, opts)?;
    let fds = namespaces(&st, pid)?;
    let pair = opts.tty.then(tty::pair).transpose()?;
    let size = pair.as_ref().and_then(|_| tty::caller_size());
    // The command's failure to start, told by the process that joins (or by the command
    // itself: the write end closes on its exec), for twill-run to say on its stderr. With
    // `-t` the command's own stderr is the pty, which is the output's, not the error's.
    let (report_r, report_w) = process::pipe()?;
    if !opts.detach {
        // Held from before the fork (both forks inherit the mask) until each waiting
        // process has its proxy in place: a SIGTERM meanwhile reaches the exec'd process
        // instead of killing `exec` and leaving the process running in the container.
        if let Err(e) = hold_signals() {
            eprintln!("twill-run exec: {e}: a signal before the command runs may not reach it");
        }
    }
    let joiner = Joiner {
        st: &st,
        fds,
        spec,
        opts,
        size,
    };
    // SAFETY: single-threaded; the child only makes system calls and execs or exits.
    match unsafe { fork() }.map_err(|e| RuntimeError::nix("forking", "exec", e))? {
        ForkResult::Child => {
            drop(report_r);
            let code = joiner.run(pair, report_w);
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            drop(report_w);
            // The command's end is theirs alone: a master that never comes reads as EOF.
            // With `-d` the joining process reads it.
            let ours = pair.and_then(|(ours, theirs)| {
                drop(theirs);
                (!opts.detach).then_some(ours)
            });
            // Sent before the command execs (or fails), so there by the report's end.
            let master = match ours.as_ref().map(tty::recv_master).transpose() {
                Ok(m) => m.flatten(),
                Err(e) => {
                    eprintln!("twill-run exec: {e}");
                    None
                }
            };
            drop(ours);
            started(&st, child, report_r)?;
            if opts.detach {
                // The joining process stays to reap it (and read its pty).
                return Ok(0);
            }
            Ok(attached(child, master, opts.interactive))
        }
    }
}

/// In twill-run: Ok once the command has exec'd; its failure to start otherwise, with the
/// joining process's exit code (126 or 127 as docker's, else twill-run's own 125).
fn started(st: &State, joiner: Pid, report: OwnedFd) -> Result<()> {
    let Some(reason) = messages::read_failure(report) else {
        return Ok(());
    };
    let reason = format!("exec in container {}: {reason}", st.name);
    Err(match process::wait_exit(joiner) {
        exit_code @ (126 | 127) => RuntimeError::Command { reason, exit_code },
        _ => RuntimeError::Invalid(reason),
    })
}

/// In twill-run, without `-d`, once the command runs: waits for the joining process,
/// passing signals on, and with `-t` copies between the caller and the pty meanwhile; the
/// command's exit code.
fn attached(joiner: Pid, master: Option<OwnedFd>, interactive: bool) -> i32 {
    match master {
        Some(master) => {
            if let Err(e) = proxy_signals(joiner) {
                eprintln!(
                    "twill-run exec: {e}: signals to twill-run exec will not reach its process"
                );
            }
            tty::attach(master, joiner, interactive);
            reap(joiner)
        }
        // No pty (or it was lost, and said so).
        None => wait_passing_signals(joiner, "twill-run exec"),
    }
}

/// What the process that joins the container needs.
struct Joiner<'a> {
    st: &'a State,
    fds: Vec<(&'static str, fs::File)>,
    spec: ExecSpec,
    opts: &'a ExecOptions,
    size: Option<crate::oci::spec::ConsoleSize>,
}

impl Joiner<'_> {
    /// The joining process: its exit code is the command's (126 when it fails itself).
    fn run(self, pair: TtyPair, report: OwnedFd) -> i32 {
        let mut report = Some(report);
        match self.join_and_fork(pair, &mut report) {
            Ok(code) => code,
            Err(e) => {
                if let Some(w) = &report {
                    messages::report_failure(w, &e.to_string());
                }
                126
            }
        }
    }

    /// `report`: the write end of the failure report, given up once the command is forked.
    fn join_and_fork(self, pair: TtyPair, report: &mut Option<OwnedFd>) -> Result<i32> {
        // A session of its own, as runc's: a signal to the whole process group of `twill-run
        // exec` (`kill -INT -PGID`, `timeout`, a terminal's Ctrl-C) reaches twill-run alone,
        // which passes it on once. Before, this process and the command were in that group
        // too and got it directly as well as passed on, two or three times in all.
        nix::unistd::setsid()
            .map_err(|e| RuntimeError::nix("starting", "a session for exec", e))?;
        let null = || fs::File::open("/dev/null");
        if self.opts.detach {
            // Nobody reads what it writes, as `docker exec -d`.
            if let Ok(null) = null() {
                use std::os::fd::AsRawFd;
                for fd in 0..3 {
                    // SAFETY: dup2 onto the standard descriptors.
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
        } else if !self.opts.interactive
            && !self.opts.tty
            && let Ok(null) = null()
        {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto stdin.
            unsafe { libc::dup2(null.as_raw_fd(), 0) };
        }
        for f in cgroup::for_container(&self.st.id).procs_files() {
            fs::write(&f, "0").map_err(|e| RuntimeError::io("joining cgroup", f.display(), e))?;
        }
        for (name, f) in &self.fds {
            use std::os::fd::AsFd;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::empty())
                .map_err(|e| RuntimeError::nix("joining namespace", name, e))?;
        }
        if self.st.userns.is_some() {
            crate::userns::become_root()?;
        }
        // SAFETY: this process is single-threaded (a fork of twill-run's exec path); the
        // child only makes system calls and execs or exits.
        match unsafe { fork() }.map_err(|e| RuntimeError::nix("forking", "exec", e))? {
            ForkResult::Child => {
                let e = match &pair {
                    // In the container's mount namespace: its /dev/ptmx, its devpts.
                    Some((_, theirs)) => {
                        match crate::oci::console::setup_pty(theirs, false, self.size) {
                            Ok(()) => process::exec_command(&self.spec),
                            Err(e) => e,
                        }
                    }
                    None => process::exec_command(&self.spec),
                };
                if let Some(w) = report {
                    messages::report_failure(w, &e.to_string());
                }
                std::process::exit(e.exec_exit_code().unwrap_or(126));
            }
            ForkResult::Parent { child } => {
                // twill-run reads EOF once the command has exec'd (or failed).
                drop(report.take());
                if !self.opts.detach {
                    drop(pair);
                    return Ok(wait_passing_signals(child, "twill-run exec"));
                }
                if let Some((ours, theirs)) = pair {
                    drop(theirs);
                    // Read (and dropped), so the command never blocks writing to it.
                    if let Ok(Some(master)) = tty::recv_master(&ours) {
                        drop(ours);
                        let _ = tty::Relay::new(master, std::io::sink()).run(child);
                    }
                }
                Ok(process::wait_exit(child))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_options_go_over_the_container_s_settings() {
        let st = State {
            env: vec!["PATH=/bin".into(), "KEEP=run".into(), "HOSTNAME=h".into()],
            workdir: "/srv".into(),
            user: Some("app".into()),
            hostname: "h".into(),
            ..State::default()
        };
        let spec = exec_spec(&st, &ExecOptions::default()).unwrap();
        assert_eq!(spec.env, st.env);
        assert_eq!(spec.workdir, "/srv");
        assert_eq!(spec.user.as_deref(), Some("app"));
        assert!(
            !spec.create_workdir,
            "exec never makes its working directory"
        );
        let spec = exec_spec(
            &st,
            &ExecOptions {
                env: vec!["KEEP=exec".into(), "NEW=1".into()],
                workdir: Some("/tmp".into()),
                user: Some("0:0".into()),
                ..ExecOptions::default()
            },
        )
        .unwrap();
        assert_eq!(spec.env, ["PATH=/bin", "HOSTNAME=h", "KEEP=exec", "NEW=1"]);
        // -t: TERM=xterm unless the container or -e set TERM, as docker exec -t.
        let tty = |env: &[&str]| {
            let opts = ExecOptions {
                tty: true,
                env: env.iter().map(|e| e.to_string()).collect(),
                ..ExecOptions::default()
            };
            exec_spec(&st, &opts).unwrap().env
        };
        assert_eq!(tty(&[]).last().map(String::as_str), Some("TERM=xterm"));
        assert_eq!(
            tty(&["TERM=vt100"]).last().map(String::as_str),
            Some("TERM=vt100")
        );
        assert_eq!(
            tty(&["TERM=vt100"])
                .iter()
                .filter(|e| e.starts_with("TERM="))
                .count(),
            1
        );
        assert_eq!(spec.workdir, "/tmp");
        assert_eq!(spec.user.as_deref(), Some("0:0"));
        // Empty is unset, as a script's empty variable.
        let spec = exec_spec(
            &st,
            &ExecOptions {
                workdir: Some(String::new()),
                user: Some(String::new()),
                ..ExecOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            (spec.workdir.as_str(), spec.user.as_deref()),
            ("/srv", Some("app"))
        );
        let relative = ExecOptions {
            workdir: Some("tmp".into()),
            ..ExecOptions::default()
        };
        let e = exec_spec(&st, &relative).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("exec -w tmp: the working directory must be an absolute path")
        );
    }
}

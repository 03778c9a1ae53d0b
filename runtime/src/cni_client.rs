//! A CNI client, as libcni does it: find the network's conflist in the config directory, run
//! its plugins in order for ADD (each gets the previous result as prevResult) and in reverse
//! for DEL (with the cached result), passing capability args such as `portMappings`. Every
//! plugin call is bounded by a timeout, and an ADD ends early on a held SIGINT/SIGTERM.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Result, RuntimeError};
use crate::store::PortSpec;

/// A loaded network list. Serialized into a pending DEL's record (`network::PendingDel`), so
/// that a retry calls the plugins with the configuration the attachment had.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

fn net_err(msg: String) -> RuntimeError {
    RuntimeError::Network(msg)
}

/// The network bridge mode attaches through when none is named, when the directory has one
/// of that name: `--network bridge` names docker's default network, and a user who has a CNI
/// network called `bridge` means that one, wherever it sorts.
pub const BRIDGE_NETWORK: &str = "bridge";

/// Loads network `name` from `dir`, or without a name the one named [`BRIDGE_NETWORK`] if
/// there is one, else the first in file-name order: `.conflist` files, and single-plugin
/// `.conf`/`.json` files wrapped into a list.
pub fn load(dir: &Path, name: Option<&str>) -> Result<NetworkList> {
    let missing = || {
        net_err(format!(
            "no CNI network {:?} in {}: the directory cannot be read (use --cni-conf-dir)",
            name.unwrap_or("(any)"),
            dir.display()
        ))
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|_| missing())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut first = None;
    for f in files {
        let Ok(text) = std::fs::read(&f) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        let Some(n) = v.get("name").and_then(Value::as_str) else {
            continue;
        };
        let wanted = name.unwrap_or(BRIDGE_NETWORK);
        if n != wanted {
            if name.is_none() && first.is_none() {
                first = Some(network_list(n, &v));
            }
            continue;
        }
        return Ok(network_list(n, &v));
    }
    if let Some(list) = first {
        return Ok(list);
    }
    Err(net_err(match name {
        Some(n) => format!("no CNI network {n:?} in {}", dir.display()),
        None => format!("no CNI network config in {}", dir.display()),
    }))
}

/// Network `name` from its configuration file's JSON `v`.
fn network_list(name: &str, v: &Value) -> NetworkList {
    let version = v
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0.0")
        .to_string();
    let plugins = match v.get("plugins").and_then(Value::as_array) {
        Some(p) => p.clone(),
        None => vec![v.clone()],
    };
    NetworkList {
        name: name.to_string(),
        cni_version: version,
        plugins,
    }
}

/// What every plugin call of one attachment shares.
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub cni_path: &'a [PathBuf],
    pub ports: &'a [PortSpec],
    /// How long one plugin call may take before the plugin is killed and the call fails.
    pub timeout: Duration,
}

fn plugin_conf(
    list: &NetworkList,
    plugin: &Value,
    prev: Option<&Value>,
    att: &Attachment,
) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = json!(list.name);
    conf["cniVersion"] = json!(list.cni_version);
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    let wants_ports = plugin
        .get("capabilities")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_bool)
        == Some(true);
    if wants_ports && !att.ports.is_empty() {
        let pm: Vec<Value> = att
            .ports
            .iter()
            .map(|p| {
                let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol});
                if let Some(ip) = p.host_ip {
                    m["hostIP"] = json!(ip.to_string());
                }
                m
            })
            .collect();
        conf["runtimeConfig"] = json!({"portMappings": pm});
    }
    conf
}

fn find_plugin(ty: &str, att: &Attachment) -> Result<PathBuf> {
    if ty.is_empty() || ty.contains('/') {
        return Err(net_err(format!("invalid plugin type {ty:?}")));
    }
    att.cni_path
        .iter()
        .map(|d| d.join(ty))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            net_err(format!(
                "CNI plugin {ty:?} not found in {:?} (use --cni-path)",
                att.cni_path
            ))
        })
}

/// The plugin's configuration as its stdin: an anonymous memory file rather than a pipe, so
/// writing it can neither block on a plugin that does not read (a pipe holds 64 KiB) nor
/// raise SIGPIPE on one that already exited (twill-run keeps SIGPIPE's default disposition
/// and would die of it in the middle of a start, leaving the container half made).
fn config_stdin(conf: &Value) -> std::io::Result<std::fs::File> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(c"cni-config", MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(conf.to_string().as_bytes())?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

fn spawn(bin: &Path, command: &str, conf: &Value, att: &Attachment) -> Result<Child> {
    let stdin = config_stdin(conf).map_err(|e| {
        net_err(format!(
            "passing the configuration to {}: {e}",
            bin.display()
        ))
    })?;
    Command::new(bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", att.container_id)
        .env("CNI_IFNAME", att.ifname)
        .env(
            "CNI_PATH",
            std::env::join_paths(att.cni_path).unwrap_or_default(),
        )
        .env(
            "CNI_NETNS",
            att.netns
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, which what it starts joins (an IPAM plugin it delegates to,
        // iptables): `end` can then kill them all. Side effect, welcome: a Ctrl-C at the
        // terminal reaches twill-run only, which decides (an ADD ends, a DEL runs to its end).
        .process_group(0)
        .spawn()
        .map_err(|e| net_err(format!("running {}: {e}", bin.display())))
}

fn exec(
    command: &str,
    conf: &Value,
    att: &Attachment,
    interrupts: Option<&Interrupts>,
) -> Result<Option<Value>> {
    let ty = conf.get("type").and_then(Value::as_str).unwrap_or_default();
    let bin = find_plugin(ty, att)?;
    let mut child = spawn(&bin, command, conf, att)?;
    let call = Call {
        command,
        bin: &bin,
        network: conf.get("name").and_then(Value::as_str).unwrap_or_default(),
        att,
    };
    let out = match supervise(&mut child, att.timeout, interrupts) {
        Ok(Outcome::Finished(out)) => out,
        Ok(Outcome::TimedOut) => {
            end(&mut child);
            return Err(call.timed_out());
        }
        Ok(Outcome::Interrupted(signal)) => {
            end(&mut child);
            return Err(call.interrupted(signal));
        }
        Err(e) => {
            end(&mut child);
            return Err(net_err(format!("waiting for {}: {e}", bin.display())));
        }
    };
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let msg = parsed
            .as_ref()
            .and_then(|v| v.get("msg"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        return Err(net_err(format!("CNI {command} with plugin {ty}: {msg}")));
    }
    Ok(parsed)
}

/// One plugin call, as its errors name it.
struct Call<'a> {
    command: &'a str,
    bin: &'a Path,
    network: &'a str,
    att: &'a Attachment<'a>,
}

impl Call<'_> {
    fn what(&self) -> String {
        let id = self.att.container_id;
        format!(
            "CNI {} of container {} on network {:?}: plugin {}",
            self.command,
            id.get(..12).unwrap_or(id),
            self.network,
            self.bin.display()
        )
    }

    fn timed_out(&self) -> RuntimeError {
        net_err(format!(
            "{} did not finish within {:?} and was killed; find out why it hangs (its log, or \
             run it by hand with the same CNI_* variables and configuration), or give it longer \
             with --cni-timeout or TWILL_RUN_CNI_TIMEOUT",
            self.what(),
            self.att.timeout
        ))
    }

    fn interrupted(&self, signal: Signal) -> RuntimeError {
        RuntimeError::Interrupted {
            what: format!("{} was killed", self.what()),
            signal,
        }
    }
}

/// Kills a plugin given up on (timeout, interrupt), with whatever it started that is still in
/// the process group `spawn` made for it, and reaps it. That group is ours: the plugin leads
/// it and, not reaped until here, keeps its ID from being reused, so the kill reaches no
/// stranger. Only here: a plugin that finished may leave a process running (the reference
/// `dhcp` plugin only talks to a daemon started on its own, but another plugin may start a
/// helper), and that is the plugin's to manage, as is a daemon that made its own session.
fn end(child: &mut Child) {
    let group = Pid::from_raw(child.id() as i32);
    if nix::sys::signal::killpg(group, Signal::SIGKILL).is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// SIGINT and SIGTERM, readable while a start holds them (see `container::hold_signals`: a
/// foreground `run`, and the monitor of `run -d`): a start waiting for a CNI plugin ends on
/// them instead of keeping them for a container that may never come. Elsewhere they are not
/// blocked and act as before, so nothing reads them here.
struct Interrupts(SignalFd);

impl Interrupts {
    fn new() -> Result<Interrupts> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map(Interrupts)
            .map_err(|e| RuntimeError::nix("opening a signalfd for", "SIGINT and SIGTERM", e))
    }

    /// Takes the signal that arrived, if any.
    fn take(&self) -> Option<Signal> {
        let info = self.0.read_signal().ok()??;
        Signal::try_from(info.ssi_signo as i32).ok()
    }
}

/// How a plugin call ended.
enum Outcome {
    Finished(PluginOutput),
    TimedOut,
    Interrupted(Signal),
}

struct PluginOutput {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// A plugin's output pipe, read as it fills, until end of file.
struct Drain<R> {
    pipe: Option<R>,
    got: Vec<u8>,
}

impl<R: Read + AsFd> Drain<R> {
    fn new(pipe: Option<R>) -> Self {
        Drain {
            pipe,
            got: Vec::new(),
        }
    }

    /// One read, which poll said will not block; the end (or an error) closes the pipe.
    fn read_some(&mut self) {
        let Some(p) = &mut self.pipe else { return };
        let mut buf = [0u8; 16 * 1024];
        match p.read(&mut buf) {
            Ok(0) => self.pipe = None,
            Ok(n) => self.got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.pipe = None,
        }
    }
}

/// What poll watches, in the order it is given.
#[derive(Clone, Copy)]
enum Source {
    Interrupt,
    Exit,
    Stdout,
    Stderr,
}

/// A descriptor that becomes readable when process `pid` exits: the plugin's end joins its
/// output in one poll, with no latency added to a call that takes a millisecond. Linux 5.3;
/// twill-run needs 5.6 anyway (openat2, to unpack image layers).
fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Poll's timeout for what is left until `deadline`, rounded up so a wait never ends early
/// and spins.
fn poll_timeout(deadline: Instant) -> PollTimeout {
    let left = deadline.saturating_duration_since(Instant::now());
    u32::try_from(left.as_millis() + 1)
        .ok()
        .and_then(|ms| PollTimeout::try_from(ms).ok())
        .unwrap_or(PollTimeout::MAX)
}

/// Reads the plugin's output until it has exited and closed both pipes, at most `timeout`
/// long; a signal `interrupts` holds ends the wait at once. The caller kills the plugin when
/// it is not finished.
fn supervise(
    child: &mut Child,
    timeout: Duration,
    interrupts: Option<&Interrupts>,
) -> std::io::Result<Outcome> {
    let deadline = Instant::now() + timeout;
    let exit = pidfd(child.id())?;
    let mut exited = false;
    let mut stdout = Drain::new(child.stdout.take());
    let mut stderr = Drain::new(child.stderr.take());
    loop {
        if exited && stdout.pipe.is_none() && stderr.pipe.is_none() {
            return Ok(Outcome::Finished(PluginOutput {
                status: child.wait()?,
                stdout: stdout.got,
                stderr: stderr.got,
            }));
        }
        if Instant::now() >= deadline {
            return Ok(Outcome::TimedOut);
        }
        let mut watched: Vec<(BorrowedFd<'_>, Source)> = Vec::with_capacity(4);
        if let Some(i) = interrupts {
            watched.push((i.0.as_fd(), Source::Interrupt));
        }
        if !exited {
            watched.push((exit.as_fd(), Source::Exit));
        }
        if let Some(p) = &stdout.pipe {
            watched.push((p.as_fd(), Source::Stdout));
        }
        if let Some(p) = &stderr.pipe {
            watched.push((p.as_fd(), Source::Stderr));
        }
        let mut fds: Vec<PollFd> = watched
            .iter()
            .map(|(fd, _)| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, poll_timeout(deadline)) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<Source> = fds
            .iter()
            .zip(&watched)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, (_, s))| *s)
            .collect();
        drop((fds, watched));
        for s in ready {
            match s {
                Source::Interrupt => {
                    if let Some(sig) = interrupts.and_then(Interrupts::take) {
                        return Ok(Outcome::Interrupted(sig));
                    }
                }
                Source::Exit => exited = true,
                Source::Stdout => stdout.read_some(),
                Source::Stderr => stderr.read_some(),
            }
        }
    }
}

/// ADD through the whole list. On failure nothing is undone here: the caller runs DEL over
/// the whole list, as the CNI spec asks of a runtime after a failed ADD and as containerd
/// does (`network::teardown`, from the start's cleanup): the plugin that failed or hung gets
/// its DEL too, and only once, so a plugin that hangs costs one timeout for ADD and one for
/// DEL, not more.
pub fn add(list: &NetworkList, att: &Attachment) -> Result<Value> {
    let interrupts = Interrupts::new()?;
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let conf = plugin_conf(list, plugin, prev.as_ref(), att);
        if let Some(r) = exec("ADD", &conf, att, Some(&interrupts))? {
            prev = Some(r);
        }
    }
    prev.ok_or_else(|| net_err(format!("network {} produced no result", list.name)))
}

/// DEL in reverse order with the cached result; every plugin runs, errors are collected.
pub fn del(list: &NetworkList, att: &Attachment, result: Option<&Value>) -> Result<()> {
    let mut errors = Vec::new();
    for plugin in list.plugins.iter().rev() {
        let conf = plugin_conf(list, plugin, result, att);
        // Not interruptible: DEL is how a failed or abandoned start is undone.
        if let Err(e) = exec("DEL", &conf, att, None) {
            errors.push(e.network_detail());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(net_err(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mode_takes_the_network_named_bridge_wherever_it_sorts_else_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, name: &str| {
            let conf = json!({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "x"}]});
            std::fs::write(dir.path().join(file), conf.to_string()).unwrap();
        };
        write("10-first.conflist", "first");
        assert_eq!(load(dir.path(), None).unwrap().name, "first");
        write("90-bridge.conflist", "bridge");
        // Before: "first", though `--network bridge` named the other.
        assert_eq!(load(dir.path(), None).unwrap().name, "bridge");
        assert_eq!(load(dir.path(), Some("first")).unwrap().name, "first");
        let e = load(dir.path(), Some("nope")).unwrap_err().to_string();
        assert!(e.contains("no CNI network \"nope\""), "{e}");
    }
}

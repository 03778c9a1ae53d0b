//! twilld agents in host namespaces: where a host's agent and CNI plugin keep their files,
//! starting the agent with the flags every lab gives it, and waiting for its lease.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use twill_netkit::Netns;
use twill_netkit::subnet_env::SubnetEnv;

use crate::cluster::HOST_IFACE;
use crate::error::{LabError, Result};
use crate::process::wait_for;

/// One host's files, all under `<dir>/<host>/`.
#[derive(Clone, Debug)]
pub struct HostFiles {
    /// The subnet file twilld writes and the CNI plugin reads (Flannel's subnet.env).
    pub subnet_file: PathBuf,
    /// The CNI plugin's IPAM store (`dataDir`).
    pub ipam_dir: PathBuf,
    /// twilld's output.
    pub log: PathBuf,
}

impl HostFiles {
    /// The files of host `host` (e.g. `h1`) under `dir`; creates nothing.
    pub fn under(dir: &Path, host: &str) -> HostFiles {
        let d = dir.join(host);
        HostFiles {
            subnet_file: d.join("subnet.env"),
            ipam_dir: d.join("ipam"),
            log: d.join("twilld.log"),
        }
    }
}

/// How to start one twilld in a host namespace: against `etcd_endpoints`, on the host's
/// underlay interface, writing `subnet_file`, its output appended to `log`.
#[derive(Clone, Debug)]
pub struct TwilldCommand {
    binary: PathBuf,
    etcd_endpoints: String,
    subnet_file: PathBuf,
    log: PathBuf,
    flags: Vec<OsString>,
    detached: bool,
}

impl TwilldCommand {
    /// `binary` is the twilld to run (a test's `CARGO_BIN_EXE_twilld`, or the one next to
    /// `twill-lab`).
    pub fn new(
        binary: impl Into<PathBuf>,
        etcd_endpoints: impl Into<String>,
        subnet_file: impl Into<PathBuf>,
        log: impl Into<PathBuf>,
    ) -> TwilldCommand {
        TwilldCommand {
            binary: binary.into(),
            etcd_endpoints: etcd_endpoints.into(),
            subnet_file: subnet_file.into(),
            log: log.into(),
            flags: Vec::new(),
            detached: false,
        }
    }

    /// More flags, after `--etcd-endpoints`, `--iface` and `--subnet-file` (which must not
    /// be repeated).
    pub fn args<S: AsRef<OsStr>>(mut self, flags: impl IntoIterator<Item = S>) -> TwilldCommand {
        self.flags
            .extend(flags.into_iter().map(|f| f.as_ref().to_os_string()));
        self
    }

    /// Lets the agent outlive the caller, in a session of its own (a lab that stays up). By
    /// default it is killed when the thread that started it exits (a test).
    pub fn detached(mut self) -> TwilldCommand {
        self.detached = true;
        self
    }

    /// Starts the agent inside `netns`; creates the log's and the subnet file's directories.
    pub fn spawn_in(&self, netns: &Netns) -> Result<Child> {
        for file in [&self.log, &self.subnet_file] {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| LabError::io("creating", dir.display().to_string(), e))?;
            }
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| LabError::io("opening", self.log.display().to_string(), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| LabError::io("duplicating", self.log.display().to_string(), e))?;
        let mut c = Command::new(&self.binary);
        c.args([
            "--etcd-endpoints",
            &self.etcd_endpoints,
            "--iface",
            HOST_IFACE,
        ])
        .arg("--subnet-file")
        .arg(&self.subnet_file)
        .args(&self.flags)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
        netns.prepare_command(&mut c)?;
        if self.detached {
            // SAFETY: setsid(2) is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
        } else {
            // SAFETY: prctl(2) is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        c.spawn().map_err(|e| {
            LabError::io(
                "starting",
                format!("{} in netns {}", self.binary.display(), netns.label()),
                e,
            )
        })
    }
}

/// Waits up to `timeout` for the subnet file that twilld writes once it holds a lease, and
/// returns it.
pub fn wait_for_subnet(subnet_file: &Path, timeout: Duration) -> Result<SubnetEnv> {
    let mut env = None;
    wait_for(timeout, || {
        env = SubnetEnv::read(subnet_file).ok();
        env.is_some()
    });
    env.ok_or_else(|| LabError::Timeout {
        what: format!("waiting for the subnet file {}", subnet_file.display()),
        waited: timeout,
    })
}

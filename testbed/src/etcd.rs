//! etcd fixtures: Debian's `etcd` binary with a temporary data directory, on free ports of
//! 127.0.0.1 or inside a lab namespace. Health is awaited before returning; the process is
//! killed by PID and its data removed on drop. `client` writes to a running member, `tls`
//! makes certificates for one that serves TLS.

mod client;
mod tls;

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use twill_netkit::Netns;

pub use self::client::NETWORK_CONFIG_KEY;
pub use self::tls::EtcdTls;
use crate::error::{LabError, Result};
use crate::http;
use crate::process::{free_local_port, wait_for};

/// The etcd binary; override with `TWILL_ETCD_BIN`.
fn etcd_bin() -> String {
    std::env::var("TWILL_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

/// Whether the etcd binary can be run: an error that says what to install, for callers that
/// check before building anything.
pub fn check_installed() -> std::result::Result<(), String> {
    let bin = etcd_bin();
    let found = if bin.contains('/') {
        std::path::Path::new(&bin).is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(&bin).is_file()))
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "etcd ({bin}) is not installed: apt-get install etcd-server, or set TWILL_ETCD_BIN"
        ))
    }
}

/// Where new members' data directories go (`None`: the system's temp directory).
static DATA_PARENT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Puts the data directories of the members started from now on under `dir`: a lab keeps
/// them in its state directory, so `down` removes them even after a killed `up`.
pub fn set_data_parent(dir: Option<PathBuf>) {
    *DATA_PARENT.lock().unwrap_or_else(|p| p.into_inner()) = dir;
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how one member listens.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    ip: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.peer_port)
    }
}

/// One etcd process.
#[derive(Debug)]
pub struct Etcd {
    member: Member,
    initial_cluster: String,
    netns: Option<Netns>,
    dir: TempDir,
    child: Option<Child>,
    die_with_parent: bool,
    /// More flags for etcd (`--auth-token-ttl 1`).
    extra_args: Vec<String>,
}

impl Etcd {
    /// Starts a single-member etcd on free ports of 127.0.0.1.
    pub fn start_local() -> Result<Etcd> {
        Etcd::start_local_with(&[])
    }

    /// Like [`Etcd::start_local`], with more flags for etcd.
    pub fn start_local_with(extra_args: &[&str]) -> Result<Etcd> {
        let mut last = None;
        // A free port can be taken between probing and binding by a parallel test: retry.
        for _ in 0..3 {
            let member = Member {
                name: "default".into(),
                ip: Ipv4Addr::LOCALHOST,
                client_port: free_local_port()?,
                peer_port: free_local_port()?,
                tls: None,
            };
            let initial = format!("{}={}", member.name, member.peer_url());
            let extra = extra_args.iter().map(|a| a.to_string()).collect();
            match Etcd::spawn(member, initial, None, true, extra) {
                Ok(mut e) => match e.wait_healthy() {
                    Ok(()) => return Ok(e),
                    Err(err) => last = Some(err),
                },
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| LabError::Invalid("etcd did not start".into())))
    }

    /// Starts a single-member etcd inside `netns`, listening on `ip` (which must be an
    /// address of that namespace, or 127.0.0.1) on the standard ports 2379/2380.
    /// `die_with_parent`: kill etcd when the starting thread exits (right for tests; a
    /// long-running lab sets it to false).
    pub fn start_in(netns: &Netns, ip: Ipv4Addr, die_with_parent: bool) -> Result<Etcd> {
        Etcd::start_in_with(netns, ip, die_with_parent, None)
    }

    /// Like [`Etcd::start_in`], serving clients over TLS with client-certificate auth (the
    /// client certificate of `tls` is then what [`Etcd::etcdctl`] and [`Etcd::put`] use).
    pub fn start_in_with(
        netns: &Netns,
        ip: Ipv4Addr,
        die_with_parent: bool,
        tls: Option<EtcdTls>,
    ) -> Result<Etcd> {
        let member = Member {
            name: "default".into(),
            ip,
            client_port: 2379,
            peer_port: 2380,
            tls,
        };
        let initial = format!("{}={}", member.name, member.peer_url());
        let ns = Netns::open_path(netns.path())?;
        let mut e = Etcd::spawn(member, initial, Some(ns), die_with_parent, Vec::new())?;
        e.wait_healthy()?;
        Ok(e)
    }

    fn spawn(
        member: Member,
        initial_cluster: String,
        netns: Option<Netns>,
        die_with_parent: bool,
        extra_args: Vec<String>,
    ) -> Result<Etcd> {
        let parent = DATA_PARENT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("twill-etcd-")
            .tempdir_in(&parent)
            .map_err(|e| {
                LabError::io(
                    "creating a data directory in",
                    parent.display().to_string(),
                    e,
                )
            })?;
        let mut e = Etcd {
            member,
            initial_cluster,
            netns,
            dir,
            child: None,
            die_with_parent,
            extra_args,
        };
        e.start()?;
        Ok(e)
    }

    /// Starts the process again after [`Etcd::stop`], with the same data and ports.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let m = &self.member;
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| LabError::io("opening", log_path.display().to_string(), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| LabError::io("duplicating", log_path.display().to_string(), e))?;
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("twill-test")
            .args(m.tls.iter().flat_map(|t| {
                [
                    "--cert-file".into(),
                    t.server_cert.clone().into_os_string(),
                    "--key-file".into(),
                    t.server_key.clone().into_os_string(),
                    "--trusted-ca-file".into(),
                    t.ca.clone().into_os_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Not in the caller's process group: a Ctrl-C at the terminal is for the caller,
            // which ends its etcd itself (a lab's `down`, a fixture's drop, or the parent's
            // death with `die_with_parent`).
            .process_group(0);
        if let Some(ns) = &self.netns {
            ns.prepare_command(&mut cmd)?;
        }
        if self.die_with_parent {
            // SAFETY: prctl(2) is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (install Debian's etcd-server package)"
            } else {
                ""
            };
            LabError::Etcd {
                name: m.name.clone(),
                detail: format!("starting {}: {e}{hint}", etcd_bin()),
            }
        })?;
        tracing::debug!(pid = child.id(), url = %m.client_url(), "started etcd");
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process (SIGKILL, by PID) and waits for it; data and ports are kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        self.member.client_url()
    }

    /// The PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last lines etcd logged, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// True when `/health` answers `"health":"true"`.
    pub fn is_healthy(&self) -> bool {
        let addr = SocketAddr::from((self.member.ip, self.member.client_port));
        let tls = self.member.tls.is_some();
        match &self.netns {
            Some(ns) => ns.enter(|| http_health(addr, tls)).unwrap_or(false),
            None => http_health(addr, tls),
        }
    }

    /// Waits until healthy; a process that exits early or never gets healthy is an error
    /// that carries etcd's last log lines.
    pub fn wait_healthy(&mut self) -> Result<()> {
        let mut exited = None;
        let ok = wait_for(START_TIMEOUT, || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                exited = Some(status);
                return true;
            }
            self.is_healthy()
        });
        let detail = match (ok, exited) {
            (true, None) => return Ok(()),
            (_, Some(status)) => format!("exited with {status} during start-up"),
            (false, None) => format!("not healthy after {START_TIMEOUT:?}"),
        };
        self.stop();
        Err(LabError::Etcd {
            name: self.member.name.clone(),
            detail: format!("{detail}; last log lines:\n{}", self.log_tail()),
        })
    }
}

impl Etcd {
    /// Lets the process run on after this value is dropped; returns its PID and the
    /// directory holding its data and log (the caller removes both later).
    pub fn detach(mut self) -> (Option<u32>, PathBuf) {
        let pid = self.child.take().map(|c| c.id());
        let path = self.dir.path().to_path_buf();
        // Neither kill the process nor delete its data: the caller owns both now.
        std::mem::forget(self);
        (pid, path)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_health(addr: SocketAddr, tls: bool) -> bool {
    let connect_timeout = Duration::from_millis(300);
    if tls {
        // No TLS client here: an accepting port means etcd is serving.
        return TcpStream::connect_timeout(&addr, connect_timeout).is_ok();
    }
    http::request(addr, "GET", "/health", None, connect_timeout)
        .is_ok_and(|body| body.contains("\"health\":\"true\""))
}

/// A multi-member etcd cluster, on 127.0.0.1 or inside a lab namespace, for fault tests:
/// each member can be stopped ([`Etcd::stop`]) and started again ([`Etcd::start`]) with its
/// data, so it rejoins.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `n` members on free local ports and waits until all are healthy. Retries with
    /// new ports if a parallel test grabbed one between probing and binding.
    pub fn start_local(n: usize) -> Result<EtcdCluster> {
        let mut last = None;
        for _ in 0..3 {
            match EtcdCluster::try_start_local(n) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| LabError::Invalid("etcd cluster did not start".into())))
    }

    fn try_start_local(n: usize) -> Result<EtcdCluster> {
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                ip: Ipv4Addr::LOCALHOST,
                client_port: free_local_port()?,
                peer_port: free_local_port()?,
                tls: None,
            });
        }
        EtcdCluster::spawn_all(members, None, true)
    }

    fn spawn_all(
        members: Vec<Member>,
        netns: Option<&Netns>,
        die_with_parent: bool,
    ) -> Result<EtcdCluster> {
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
        };
        // All members must run before any can become healthy (quorum), so start them all first.
        for m in members {
            // Each member's process gets its own handle on the namespace.
            let ns = netns
                .map(|n| Netns::open_path(n.path()))
                .transpose()
                .map_err(LabError::from)?;
            cluster.members.push(Etcd::spawn(
                m,
                initial.clone(),
                ns,
                die_with_parent,
                Vec::new(),
            )?);
        }
        for e in &mut cluster.members {
            e.wait_healthy()?;
        }
        Ok(cluster)
    }

    /// Starts one member per address of `ips` inside `netns` (each an address of that
    /// namespace), on the standard ports 2379/2380, and waits until all are healthy.
    /// `die_with_parent` as for [`Etcd::start_in`].
    pub fn start_in(netns: &Netns, ips: &[Ipv4Addr], die_with_parent: bool) -> Result<EtcdCluster> {
        let members: Vec<Member> = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| Member {
                name: format!("m{i}"),
                ip,
                client_port: 2379,
                peer_port: 2380,
                tls: None,
            })
            .collect();
        EtcdCluster::spawn_all(members, Some(netns), die_with_parent)
    }

    /// Comma-separated client URLs of all members.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }
}

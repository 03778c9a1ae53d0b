//! Network modes: `host` (the host's namespace), `none` (a new namespace with only `lo`),
//! `container:ID` (another container's namespace) and `bridge` (a new namespace attached
//! through the CNI network's plugins). A DEL that fails as a container's state goes is kept
//! as a record under `<root>/pending-del/` and called again later ([`retry_pending_dels`]).

use std::fs;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use twill_netkit::{Netlink, Netns};

use crate::cni_client::{self, Attachment, NetworkList};
use crate::error::{Result, RuntimeError};
use crate::store::{PortSpec, State, Status, Store, now_unix, write_durable};

/// A parsed `--net` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    Host,
    None,
    Container(String),
    Bridge,
}

impl NetMode {
    /// A `--net` or `--network` value as docker and podman read either (one is the other's
    /// alias there): a mode (`host`, `none`, `bridge`, `container:ID`), else the name of the
    /// CNI network to attach through, which is bridge mode on that network.
    pub fn parse_network(s: &str) -> Result<(NetMode, Option<String>)> {
        let mode = match s {
            "host" => NetMode::Host,
            "none" => NetMode::None,
            "bridge" => NetMode::Bridge,
            "" => {
                return Err(RuntimeError::Invalid(
                    "empty network: give host, none, bridge, container:ID or a CNI network name"
                        .into(),
                ));
            }
            _ => match s.strip_prefix("container:") {
                Some("") => {
                    return Err(RuntimeError::Invalid(format!(
                        "network {s:?} names no container: use container:ID or container:NAME"
                    )));
                }
                Some(id) => NetMode::Container(id.to_string()),
                None => return Ok((NetMode::Bridge, Some(s.to_string()))),
            },
        };
        Ok((mode, None))
    }

    /// `--net` and `--network` together: the same value twice, or `bridge` with a CNI
    /// network name (how twill-run took them before `--network` took modes too); anything
    /// else asks for two networks at once.
    pub fn from_options(
        net: Option<&str>,
        network: Option<&str>,
    ) -> Result<(NetMode, Option<String>)> {
        let (net_mode, network_mode) = (
            net.map(Self::parse_network).transpose()?,
            network.map(Self::parse_network).transpose()?,
        );
        match (net_mode, network_mode) {
            (None, None) => Ok((NetMode::Bridge, None)),
            (Some(one), None) | (None, Some(one)) => Ok(one),
            (Some(a), Some(b)) if a == b => Ok(a),
            (Some((NetMode::Bridge, None)), Some(named @ (NetMode::Bridge, Some(_))))
            | (Some(named @ (NetMode::Bridge, Some(_))), Some((NetMode::Bridge, None))) => {
                Ok(named)
            }
            _ => Err(RuntimeError::Invalid(format!(
                "--net {} and --network {}: a container has one network (--net is --network's \
                 alias): give one",
                net.unwrap_or_default(),
                network.unwrap_or_default()
            ))),
        }
    }

    /// How state.json records it.
    pub fn as_string(&self) -> String {
        match self {
            NetMode::Host => "host".into(),
            NetMode::None => "none".into(),
            NetMode::Bridge => "bridge".into(),
            NetMode::Container(id) => format!("container:{id}"),
        }
    }
}

/// A host port free now for `p`'s protocol (`tcp` or `udp`): the kernel's pick for a socket
/// bound to port 0 in twill-run's network namespace, where portmap listens, on `::` for an
/// IPv6 `hostIP` (all addresses of both families), else `0.0.0.0`. Returned with the socket,
/// which holds the port until it is dropped; free now only once it is: portmap's rules hold
/// no port, so a process may bind it before or after the rules exist (its traffic then goes
/// to the container).
fn probe_host_port(p: &PortSpec) -> std::io::Result<(u16, std::os::fd::OwnedFd)> {
    let any: std::net::IpAddr = match p.host_ip {
        Some(std::net::IpAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    if p.protocol == "udp" {
        let s = std::net::UdpSocket::bind((any, 0))?;
        Ok((s.local_addr()?.port(), s.into()))
    } else {
        let s = std::net::TcpListener::bind((any, 0))?;
        Ok((s.local_addr()?.port(), s.into()))
    }
}

/// How many ports the kernel may hand out that this start already uses before a pick gives
/// up: each is held open meanwhile, so the kernel never hands one out twice.
const PICK_ATTEMPTS: usize = 64;

/// Gives each port published without a host port (`-p 80`, `-P`: 0 until here) a free one,
/// as late as the start can: right before the ADD that maps it, so the port has the least
/// time to be taken by another process meanwhile (see [`probe_host_port`]).
fn pick_host_ports(ports: &mut [PortSpec]) -> Result<()> {
    pick_host_ports_with(ports, probe_host_port)
}

/// [`pick_host_ports`] with the probe given. Every probe's socket stays open until all ports
/// are picked (one closed at once could be handed out again for the next port), and a port
/// another of this start's ports has with the same protocol (`-p 8080:80 -P`, an explicit
/// one the kernel happens to pick) is probed again: two DNAT rules for one host port would
/// send its connections to one container port only.
fn pick_host_ports_with<S>(
    ports: &mut [PortSpec],
    mut probe: impl FnMut(&PortSpec) -> std::io::Result<(u16, S)>,
) -> Result<()> {
    let mut taken: std::collections::HashSet<(String, u16)> = ports
        .iter()
        .filter(|p| p.host_port != 0)
        .map(|p| (p.protocol.clone(), p.host_port))
        .collect();
    let mut held = Vec::new();
    for p in ports.iter_mut().filter(|p| p.host_port == 0) {
        let fail = |why: String| {
            RuntimeError::Network(format!(
                "publishing container port {}/{}: {why}; give a host port (-p HOST:{})",
                p.container_port, p.protocol, p.container_port
            ))
        };
        let mut picked = None;
        for _ in 0..PICK_ATTEMPTS {
            let (port, socket) = probe(p).map_err(|e| {
                fail(format!(
                    "binding a socket to find a free {} port: {e}",
                    p.protocol
                ))
            })?;
            held.push(socket);
            if taken.insert((p.protocol.clone(), port)) {
                picked = Some(port);
                break;
            }
        }
        p.host_port = picked.ok_or_else(|| {
            fail(format!(
                "the kernel handed out only host ports this container already publishes, \
                 {PICK_ATTEMPTS} times"
            ))
        })?;
    }
    drop(held);
    Ok(())
}

/// Where the CNI configuration lives.
#[derive(Clone, Debug)]
pub struct CniOptions {
    pub conf_dir: PathBuf,
    pub path: Vec<PathBuf>,
    pub network: Option<String>,
    /// How long one plugin call may take (`--cni-timeout`).
    pub timeout: std::time::Duration,
}

/// Which network namespace the container process ends up in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetJoin {
    /// The host's (`--net host`).
    Host,
    /// An existing one (bridge: the named netns the CNI plugins configured; container:ID).
    Path(PathBuf),
    /// A fresh one made by the container's own clone, only `lo` up (`--net none`): nothing
    /// named to create or remove, so `none` costs no more than a clone flag.
    New,
}

/// The container's interface, the one attachment a container has.
const IFNAME: &str = "eth0";

/// The named netns of a container.
pub fn netns_name(id: &str) -> String {
    format!("twr-{}", &id[..12.min(id.len())])
}

async fn lo_up(nl: Netlink) -> twill_netkit::Result<()> {
    let lo = nl.require_link("lo").await?;
    nl.set_up(lo.index).await
}

/// Sets up the network of a new container; fills `state` (netns, IPs, CNI result) and returns
/// the netns path the container must join (None for host).
pub fn setup(
    store: &Store,
    state: &mut State,
    mode: &NetMode,
    cni: &CniOptions,
) -> Result<NetJoin> {
    match mode {
        NetMode::Host => Ok(NetJoin::Host),
        NetMode::None => Ok(NetJoin::New),
        NetMode::Container(other) => {
            let o = store.load(other)?;
            // Recorded as running is not enough: after a reboot, or with its monitor killed,
            // the PID may be any host process, whose namespace would be the host's network.
            let pid = o
                .pid
                .filter(|p| o.status == Status::Running && crate::container::alive(*p, o.pid_start))
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!("container {other} is not running"))
                })?;
            state.ips = o.ips.clone();
            Ok(NetJoin::Path(PathBuf::from(format!("/proc/{pid}/ns/net"))))
        }
        NetMode::Bridge => {
            let name = netns_name(&state.id);
            let ns = Netns::create(&name)?;
            state.netns = Some(name.clone());
            ns.run(lo_up)?;
            {
                let list = cni_client::load(&cni.conf_dir, cni.network.as_deref())?;
                state.network_name = Some(list.name.clone());
                pick_host_ports(&mut state.ports)?;
                // Saved before ADD runs: if twill-run dies during it (Ctrl-C, SIGKILL, the
                // OOM killer), `rm` still knows to run DEL and remove the namespace.
                store.save(state)?;
                let att = Attachment {
                    container_id: &state.id,
                    netns: Some(ns.path()),
                    ifname: IFNAME,
                    cni_path: &cni.path,
                    ports: &state.ports,
                    timeout: cni.timeout,
                };
                let result = cni_client::add(&list, &att)?;
                state.ips = result
                    .get("ips")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| {
                                i.get("address")?
                                    .as_str()
                                    .map(|s| s.split('/').next().unwrap_or(s).to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                state.cni_result = Some(result);
            }
            Ok(NetJoin::Path(ns.path().to_path_buf()))
        }
    }
}

/// Undoes `setup`: CNI DEL (bridge) and the namespace. Safe to repeat. With `record`, the
/// caller removes the container's state next (a failed start's cleanup, `rm`), which is what
/// told a later `rm` to call DEL again: a DEL that fails, or cannot run because the network's
/// configuration is gone, is then recorded in that store for [`retry_pending_dels`] instead,
/// and the error says so. Without it (the monitor, at the container's exit) the caller keeps
/// the state.
pub fn teardown(state: &State, cni: &CniOptions, record: Option<&Store>) -> Result<()> {
    let mut errors = Vec::new();
    if state.network_mode == "bridge"
        && let Some(network_name) = &state.network_name
    {
        let netns_path = state
            .netns
            .as_ref()
            .map(|n| Path::new(twill_netkit::NETNS_RUN_DIR).join(n));
        let list = cni_client::load(&cni.conf_dir, Some(network_name));
        let deleted = list
            .as_ref()
            .map_err(RuntimeError::network_detail)
            .and_then(|list| {
                let att = Attachment {
                    container_id: &state.id,
                    netns: netns_path.as_deref().filter(|p| p.exists()),
                    ifname: IFNAME,
                    cni_path: &cni.path,
                    ports: &state.ports,
                    timeout: cni.timeout,
                };
                cni_client::del(list, &att, state.cni_result.as_ref())
                    .map_err(|e| e.network_detail())
            });
        if let Err(detail) = deleted {
            errors.push(match record {
                Some(store) => PendingDel {
                    container_id: state.id.clone(),
                    container_name: state.name.clone(),
                    network_name: network_name.clone(),
                    network: list.ok(),
                    ifname: IFNAME.to_string(),
                    result: state.cni_result.clone(),
                    ports: state.ports.clone(),
                    cni_path: cni.path.clone(),
                    error: detail,
                    since_unix: now_unix(),
                    retries: 0,
                    last_retry_unix: 0,
                }
                .keep(store),
                None => detail,
            });
        }
    }
    if let Some(n) = &state.netns
        && let Err(e) = Netns::delete(n)
    {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::Network(errors.join("; ")))
    }
}

/// When the DEL of a record is called again; errors about one say it.
const RETRIED_ON: &str = "twill-run will retry on the next `twill-run run` or `twill-run rm`";

/// A container ID as messages and `ps` show it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// An attachment whose DEL failed as its container's state went: what calling DEL again
/// takes, in `<root>/pending-del/<container ID>.json`. The CNI spec allows a DEL without the
/// netns, which is gone by then; the plugin releases what it holds by container ID and
/// interface (host-local's reservation, portmap's rules), as it does for a runtime that lost
/// a netns. Written once, removed once a DEL succeeds.
#[derive(Serialize, Deserialize)]
struct PendingDel {
    container_id: String,
    /// For messages, and so `rm NAME` finds it.
    container_name: String,
    network_name: String,
    /// The network as the DEL that failed was given it, so a retry calls the same plugins
    /// with the same configuration whatever the conf dir holds by then (as libcni caches
    /// it); None when it could not be loaded, and then loaded by name for each retry.
    network: Option<NetworkList>,
    ifname: String,
    /// The ADD's result: DEL's prevResult.
    result: Option<Value>,
    /// The capability args the ADD had (`portMappings`: portmap removes its rules by them).
    ports: Vec<PortSpec>,
    /// CNI_PATH as it was; a retry searches the current `--cni-path` after it.
    cni_path: Vec<PathBuf>,
    /// Why the DEL failed when it was recorded, for whoever reads the file.
    error: String,
    since_unix: u64,
    /// Retries that failed since (the DEL that made the record not counted): `run` waits
    /// longer after each ([`PendingDel::due`]).
    #[serde(default)]
    retries: u32,
    /// When the last of them ended; 0 before the first.
    #[serde(default)]
    last_retry_unix: u64,
}

fn pending_dir(store: &Store) -> PathBuf {
    store.root.join("pending-del")
}

impl PendingDel {
    /// Writes the record; the error for the DEL that failed, saying what happens next.
    fn keep(&self, store: &Store) -> String {
        let dir = pending_dir(store);
        let path = dir.join(format!("{}.json", self.container_id));
        let written = fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io("creating", dir.display(), e))
            .and_then(|()| {
                serde_json::to_vec_pretty(self)
                    .map_err(|e| RuntimeError::Invalid(format!("encoding {}: {e}", path.display())))
            })
            .and_then(|bytes| write_durable(&path, &bytes));
        match written {
            Ok(()) => format!(
                "DEL failed: {}; the address stays reserved; {RETRIED_ON} (or now: `twill-run \
                 rm {}`)",
                self.error,
                short(&self.container_id)
            ),
            Err(e) => format!(
                "DEL failed: {}; the address stays reserved, and recording the DEL for a retry \
                 failed too ({e}): call the plugins of network {:?} with CNI_COMMAND=DEL \
                 CNI_CONTAINERID={} CNI_IFNAME={} by hand",
                self.error, self.network_name, self.container_id, self.ifname
            ),
        }
    }

    /// How long `run` leaves the record alone after `retries` failed retries: a minute,
    /// doubling, at most an hour.
    fn backoff(retries: u32) -> u64 {
        let doublings = retries.saturating_sub(1).min(6);
        (60u64 << doublings).min(3600)
    }

    /// Whether `run` retries the record at `now`: the first time at once (the address it
    /// holds may be the one the start needs), then after each back-off; also when the clock
    /// went back past the last retry.
    fn due(&self, now: u64) -> bool {
        self.retries == 0
            || now < self.last_retry_unix
            || now >= self.last_retry_unix + Self::backoff(self.retries)
    }

    /// DEL once more, without a netns, each plugin given `timeout`; the error's detail when
    /// it fails.
    fn del_again(
        &self,
        cni: &CniOptions,
        timeout: std::time::Duration,
    ) -> std::result::Result<(), String> {
        let loaded;
        let list = match &self.network {
            Some(list) => list,
            None => {
                loaded = cni_client::load(&cni.conf_dir, Some(&self.network_name))
                    .map_err(|e| e.network_detail())?;
                &loaded
            }
        };
        let mut cni_path = self.cni_path.clone();
        cni_path.extend(
            cni.path
                .iter()
                .filter(|p| !self.cni_path.contains(p))
                .cloned(),
        );
        let att = Attachment {
            container_id: &self.container_id,
            netns: None,
            ifname: &self.ifname,
            cni_path: &cni_path,
            ports: &self.ports,
            timeout,
        };
        cni_client::del(list, &att, self.result.as_ref()).map_err(|e| e.network_detail())
    }
}

/// Who calls the recorded DELs again, which decides how hard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryBy {
    /// `run`, on its way to start another container: each record at most once per back-off
    /// ([`PendingDel::due`]), each plugin given at most [`RUN_RETRY_TIMEOUT`]. Retrying every
    /// record with the full timeout on every start made a plugin that hangs cost every later
    /// `run` a timeout per plugin per record, for ever.
    Run,
    /// `rm`, which the user asks for: every record, with the full `--cni-timeout`.
    Rm,
}

/// The most `run` gives a plugin when it calls a recorded DEL again (less when
/// `--cni-timeout` is less): a healthy plugin's DEL takes milliseconds.
pub const RUN_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How old a `<id>.json.tmp` in the records' directory must be to be taken for one a crash
/// left (a record is written in milliseconds).
const STALE_TMP_SECS: u64 = 60;

/// What one retry of a recorded DEL came to.
#[derive(Debug)]
pub struct RetriedDel {
    pub container_id: String,
    pub container_name: String,
    /// Why it failed again (the record stays); None when the DEL succeeded and the record is
    /// gone.
    pub error: Option<String>,
}

impl RetriedDel {
    /// Whether `rm ID` names it: by its container's ID, a prefix of it, or its name.
    pub fn is(&self, id_or_name: &str) -> bool {
        !id_or_name.is_empty()
            && (self.container_id.starts_with(id_or_name) || self.container_name == id_or_name)
    }
}

/// Calls DEL again for each attachment [`teardown`] recorded, and removes the record of each
/// that succeeds; a failed one counts in the record. `run` calls it before it starts a
/// container (which may need an address a record holds), for the records due
/// ([`RetryBy::Run`]), and `rm` before it removes any, for all; not `ps`, which only reads
/// and should not wait a timeout for a hung plugin. A record another twill-run is retrying
/// at the moment is skipped rather than waited for; one a crash left unrenamed is settled
/// first ([`settle_stale_tmp`]).
///
/// Not CNI GC (spec 1.1), which the runtime gives every valid attachment of a network so the
/// plugins release all others: twill-run knows only its own attachments, and a network on
/// this host may be shared with another runtime (podman, with the same bridge and host-local
/// store), whose addresses GC would release. And the reference plugins in use speak CNI 1.0.
/// A DEL of exactly the attachment whose DEL failed is what the spec asks of a runtime anyway.
pub fn retry_pending_dels(store: &Store, cni: &CniOptions, by: RetryBy) -> Vec<RetriedDel> {
    let Ok(entries) = fs::read_dir(pending_dir(store)) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name.as_deref() {
            Some(n) if n.ends_with(".json") => records.push(path),
            Some(n) if n.ends_with(".json.tmp") => {
                if let Some(adopted) = settle_stale_tmp(&path) {
                    records.push(adopted);
                }
            }
            // A lock whose record was deleted by hand (to give up): removed by whoever can
            // take it, which finds the record gone ([`lock_record`]).
            Some(n) if n.ends_with(".lock") => {
                let record = path.with_extension("json");
                if !record.exists() {
                    let _ = lock_record(&record);
                }
            }
            _ => {}
        }
    }
    records.sort();
    records.dedup();
    records.iter().filter_map(|p| retry(p, cni, by)).collect()
}

/// A `<id>.json.tmp` a crash left while a record was written (see `store::write_durable`),
/// once it is old enough not to be one being written now: a complete record with no
/// `<id>.json` beside it is renamed into place (its DEL would be lost otherwise) and its
/// path returned, if it is a first write (`retries` 0: an update of a retried record is stale
/// by definition — the record may have gone since, its DEL done); anything else (half written,
/// an update) is removed. Younger ones are left alone.
fn settle_stale_tmp(tmp: &Path) -> Option<PathBuf> {
    let age = fs::metadata(tmp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())?;
    if age.as_secs() < STALE_TMP_SECS {
        return None;
    }
    let record = tmp.with_extension("");
    let first_write = fs::read(tmp)
        .ok()
        .and_then(|b| serde_json::from_slice::<PendingDel>(&b).ok())
        .is_some_and(|r| r.retries == 0);
    if first_write && !record.exists() && fs::rename(tmp, &record).is_ok() {
        let _ = crate::store::sync_dir_of(&record);
        return Some(record);
    }
    let _ = fs::remove_file(tmp);
    None
}

/// The lock of a record: `<id>.lock` beside `<id>.json`. Not the record itself, which a
/// failed retry replaces by a rename ([`write_durable`]): a lock on the record's inode would
/// not serialise past that — a twill-run that opened the record before the rename would lock
/// the old inode afterwards and read stale content, and one that opened it after would lock
/// the new inode while the first still held the old.
fn lock_path(record: &Path) -> PathBuf {
    record.with_extension("lock")
}

/// Takes the lock of a record without waiting: None when another twill-run holds it or the
/// record is gone (its DEL succeeded meanwhile); an error, for the user, when the lock file
/// cannot be opened.
fn lock_record(record: &Path) -> std::result::Result<Option<Flock<fs::File>>, String> {
    let lock = lock_path(record);
    let file = match fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "opening {} to retry the pending DEL {}: {e}; check the permissions of {}, or \
                 delete the record once the address it records is released",
                lock.display(),
                record.display(),
                lock.parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
        }
    };
    let Ok(held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return Ok(None);
    };
    if !record.exists() {
        // Left by a retry that found the record gone, or a record deleted by hand.
        let _ = fs::remove_file(&lock);
        return Ok(None);
    }
    Ok(Some(held))
}

/// [`retry_pending_dels`] for one record; None when another twill-run has it, or when `run`
/// finds it not due yet.
fn retry(path: &Path, cni: &CniOptions, by: RetryBy) -> Option<RetriedDel> {
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _lock = match lock_record(path) {
        Ok(Some(lock)) => lock,
        Ok(None) => return None,
        Err(e) => {
            return Some(RetriedDel {
                container_id: id,
                container_name: String::new(),
                error: Some(e),
            });
        }
    };
    let record = fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_slice::<PendingDel>(&text).map_err(|e| e.to_string()));
    let mut record = match record {
        Ok(r) => r,
        Err(e) => {
            return Some(RetriedDel {
                container_id: id,
                container_name: String::new(),
                error: Some(format!(
                    "reading the pending DEL {}: {e}; delete the file once the address it \
                     records is released",
                    path.display()
                )),
            });
        }
    };
    let now = now_unix();
    if by == RetryBy::Run && !record.due(now) {
        return None;
    }
    let timeout = match by {
        RetryBy::Run => cni.timeout.min(RUN_RETRY_TIMEOUT),
        RetryBy::Rm => cni.timeout,
    };
    let error = match record.del_again(cni, timeout) {
        Ok(()) => match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Some(format!(
                "removing {} after its DEL succeeded: {e}; delete it by hand",
                path.display()
            )),
            // The record first: whoever opened the lock file before this removal and locks
            // it after finds no record and stops.
            _ => {
                let _ = fs::remove_file(lock_path(path));
                None
            }
        },
        Err(detail) => {
            record.retries = record.retries.saturating_add(1);
            record.last_retry_unix = now_unix();
            let short_id = short(&record.container_id).to_string();
            let next = PendingDel::backoff(record.retries);
            // Not fatal: the record stays as it was, and `run` retries it sooner.
            let saved = serde_json::to_vec_pretty(&record)
                .map_err(|e| RuntimeError::Invalid(format!("encoding {}: {e}", path.display())))
                .and_then(|bytes| write_durable(path, &bytes))
                .err()
                .map(|e| format!("; counting this retry failed: {e}"))
                .unwrap_or_default();
            let limit = match by {
                RetryBy::Run => format!(
                    " (`run` gives a recorded DEL {timeout:?} per plugin; `twill-run rm \
                     {short_id}` gives it --cni-timeout)"
                ),
                RetryBy::Rm => String::new(),
            };
            Some(format!(
                "network: DEL of container {short_id} on network {:?} failed again: \
                 {detail}{limit}; the address stays reserved; `twill-run run` retries it in \
                 {next} s at the earliest, `twill-run rm {short_id}` at once (recorded in {}: \
                 delete it to give up){saved}",
                record.network_name,
                path.display()
            ))
        }
    };
    Some(RetriedDel {
        container_id: record.container_id,
        container_name: record.container_name,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_tmp_becomes_the_record_only_when_it_is_a_first_write() {
        // Before: an update's temp file (a retry that failed, then a crash before its
        // rename) was taken for the record after its DEL had succeeded and the record gone:
        // the DEL ran again.
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let stale = |name: &str, retries: u32| {
            let record = PendingDel {
                container_id: name.into(),
                container_name: name.into(),
                network_name: "twnet".into(),
                network: None,
                ifname: IFNAME.into(),
                result: None,
                ports: Vec::new(),
                cni_path: Vec::new(),
                error: "DEL refused".into(),
                since_unix: 0,
                retries,
                last_retry_unix: 0,
            };
            let tmp = dir.path().join(format!("{name}.json.tmp"));
            fs::write(&tmp, serde_json::to_vec(&record).unwrap()).unwrap();
            fs::File::options()
                .write(true)
                .open(&tmp)
                .unwrap()
                .set_modified(old)
                .unwrap();
            tmp
        };
        let first = stale("first", 0);
        assert_eq!(
            settle_stale_tmp(&first),
            Some(dir.path().join("first.json"))
        );
        let update = stale("update", 2);
        assert_eq!(settle_stale_tmp(&update), None);
        assert!(!update.exists() && !dir.path().join("update.json").exists());
    }

    #[test]
    fn a_record_rewritten_by_a_failed_retry_stays_locked_for_its_holder() {
        // Before: the lock was the record's own inode, and a failed retry renames a new one
        // over it: a second twill-run locked the new inode while the first still held the
        // old, and both retried.
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("c1.json");
        write_durable(&record, b"{\"retries\": 0}").unwrap();
        let first = lock_record(&record)
            .unwrap()
            .expect("the first locker gets the record");
        write_durable(&record, b"{\"retries\": 1}").unwrap();
        assert!(
            lock_record(&record).unwrap().is_none(),
            "a second locker got a record the first still holds"
        );
        drop(first);
        let _second = lock_record(&record)
            .unwrap()
            .expect("the record is free once the first lets go");
        assert_eq!(fs::read(&record).unwrap(), b"{\"retries\": 1}");
    }

    #[test]
    fn a_lock_whose_record_is_gone_is_not_taken_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("c2.json");
        fs::write(lock_path(&record), b"").unwrap();
        assert!(lock_record(&record).unwrap().is_none());
        assert!(!lock_path(&record).exists());
    }

    fn port(host_port: u16, container_port: u16, protocol: &str) -> PortSpec {
        PortSpec {
            host_port,
            container_port,
            protocol: protocol.into(),
            host_ip: None,
        }
    }

    #[test]
    fn picked_host_ports_skip_explicit_and_already_picked_ones() {
        // Before: each pick took whatever free port the probe found, so `-p 8080:80 -P` could
        // publish an exposed port on 8080 too, and two `-p 80`s could get one port.
        let mut ports = vec![
            port(8080, 80, "tcp"),
            port(0, 81, "tcp"),
            port(0, 82, "tcp"),
            port(0, 53, "udp"),
        ];
        // The kernel's picks as a probe might see them: an explicit port, a repeat, and the
        // same number for another protocol (which does not collide).
        let mut offered = vec![8080u16, 9000, 8080, 9000, 9001, 9000].into_iter();
        let mut probed = Vec::new();
        pick_host_ports_with(&mut ports, |p| {
            let n = offered.next().expect("probed more often than needed");
            probed.push((p.protocol.clone(), n));
            Ok((n, ()))
        })
        .unwrap();
        let got: Vec<_> = ports.iter().map(|p| p.host_port).collect();
        assert_eq!(got, vec![8080, 9000, 9001, 9000]);
        assert_eq!(probed.len(), 6);
    }

    #[test]
    fn picked_host_ports_are_distinct_over_many_picks() {
        // A kernel as unhelpful as it may be: any port of a small range, repeats and
        // explicit ones included. No two ports of one protocol alike, none an explicit one.
        let mut state = 0x2545_f491_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            8000 + (state % 100) as u16
        };
        for _ in 0..200 {
            let mut ports = vec![port(next(), 80, "tcp"), port(next(), 53, "udp")];
            ports.extend((0..40).map(|i| port(0, 1000 + i, "tcp")));
            ports.extend((0..20).map(|i| port(0, 2000 + i, "udp")));
            let explicit: Vec<_> = ports[..2].iter().map(|p| p.host_port).collect();
            pick_host_ports_with(&mut ports, |_| Ok((next(), ()))).unwrap();
            for (proto, explicit) in [("tcp", explicit[0]), ("udp", explicit[1])] {
                let mut seen: Vec<u16> = ports
                    .iter()
                    .filter(|p| p.protocol == proto)
                    .map(|p| p.host_port)
                    .collect();
                let n = seen.len();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), n, "{proto}: {ports:?}");
                assert_eq!(
                    ports
                        .iter()
                        .filter(|p| p.protocol == proto && p.host_port == explicit)
                        .count(),
                    1,
                    "{proto} {explicit}: {ports:?}"
                );
            }
        }
    }

    #[test]
    fn a_pick_that_only_finds_taken_ports_fails_saying_what_to_do() {
        let mut ports = vec![port(8080, 80, "tcp"), port(0, 81, "tcp")];
        let e = pick_host_ports_with(&mut ports, |_| Ok((8080, ())))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("container port 81/tcp") && e.contains("-p HOST:81"),
            "{e}"
        );
    }

    #[test]
    fn network_takes_the_modes_net_takes_and_names_a_cni_network_otherwise() {
        // Before: `--network host` and `--network none` looked for CNI networks of those names.
        for (net, network, want) in [
            (None, Some("host"), (NetMode::Host, None)),
            (None, Some("none"), (NetMode::None, None)),
            (Some("none"), None, (NetMode::None, None)),
            (
                None,
                Some("container:web"),
                (NetMode::Container("web".into()), None),
            ),
            (None, None, (NetMode::Bridge, None)),
            (None, Some("twnet"), (NetMode::Bridge, Some("twnet".into()))),
            (Some("twnet"), None, (NetMode::Bridge, Some("twnet".into()))),
            (
                Some("bridge"),
                Some("twnet"),
                (NetMode::Bridge, Some("twnet".into())),
            ),
            (Some("host"), Some("host"), (NetMode::Host, None)),
        ] {
            assert_eq!(
                NetMode::from_options(net, network).unwrap(),
                want,
                "{net:?} {network:?}"
            );
        }
        for (net, network, says) in [
            (
                Some("host"),
                Some("none"),
                "--net host and --network none: a container has one",
            ),
            (Some("a"), Some("b"), "--net a and --network b"),
            (None, Some("container:"), "names no container"),
            (None, Some(""), "empty network"),
        ] {
            let e = NetMode::from_options(net, network).unwrap_err().to_string();
            assert!(e.contains(says), "{net:?} {network:?}: {e}");
        }
    }
}

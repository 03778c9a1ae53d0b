//! Network modes: `host` (the host's namespace), `none` (a new namespace with only `lo`),
//! `container:ID` (another container's namespace) and `bridge` (a new namespace attached
//! through the CNI network's plugins).

use std::path::{Path, PathBuf};

use twill_netkit::{Netlink, Netns};

use crate::cni_client::{self, Attachment};
use crate::error::{Result, RuntimeError};
use crate::store::{PortSpec, State, Status, Store};

/// A parsed `--net` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    Host,
    None,
    Container(String),
    Bridge,
}

impl NetMode {
    /// Parses `host`, `none`, `container:ID` or `bridge`.
    pub fn parse(s: &str) -> Result<NetMode> {
        match s {
            "host" => Ok(NetMode::Host),
            "none" => Ok(NetMode::None),
            "bridge" => Ok(NetMode::Bridge),
            _ => match s.strip_prefix("container:") {
                Some(id) if !id.is_empty() => Ok(NetMode::Container(id.to_string())),
                _ => Err(RuntimeError::Invalid(format!(
                    "invalid --net {s:?}: use host, none, bridge or container:ID"
                ))),
            },
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
                // Saved before ADD runs: if twill-run dies during it (Ctrl-C, SIGKILL, the
                // OOM killer), `rm` still knows to run DEL and remove the namespace.
                store.save(state)?;
                let att = Attachment {
                    container_id: &state.id,
                    netns: Some(ns.path()),
                    ifname: "eth0",
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

/// Undoes `setup`: CNI DEL (bridge) and the namespace. Safe to repeat.
pub fn teardown(state: &State, cni: &CniOptions) -> Result<()> {
    let mut errors = Vec::new();
    if state.network_mode == "bridge" && state.network_name.is_some() {
        let netns_path = state
            .netns
            .as_ref()
            .map(|n| Path::new(twill_netkit::NETNS_RUN_DIR).join(n));
        match cni_client::load(&cni.conf_dir, state.network_name.as_deref()) {
            Ok(list) => {
                let ports: &[PortSpec] = &state.ports;
                let att = Attachment {
                    container_id: &state.id,
                    netns: netns_path.as_deref().filter(|p| p.exists()),
                    ifname: "eth0",
                    cni_path: &cni.path,
                    ports,
                    timeout: cni.timeout,
                };
                if let Err(e) = cni_client::del(&list, &att, state.cni_result.as_ref()) {
                    errors.push(e.network_detail());
                }
            }
            Err(e) => errors.push(e.network_detail()),
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

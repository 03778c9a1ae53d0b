//! ADD, DEL, CHECK, STATUS and GC.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use twill_netkit::Netns;
use twill_netkit::subnet_env::SubnetEnv;

use crate::config::{Attachment, NetConf};
use crate::env::CniEnv;
use crate::error::{
    CniError, CniResult, INTERNAL, INVALID_CONFIG, NOT_AVAILABLE, TRY_AGAIN, UNKNOWN_CONTAINER,
    UNSUPPORTED_FIELD,
};
use crate::ipam::builtin::{self, Range};
use crate::ipam::delegate;
use crate::ipam::store::Store;
use crate::masq;
use crate::result::{AddResult, Interface, IpConfig, RouteSpec};
use crate::setup::{self, HostPlan};

/// Best-effort commands run every step and report all failures together.
fn collected(what: String, errors: Vec<String>) -> CniResult<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            INTERNAL,
            format!("{what}: {}", errors.join("; ")),
        ))
    }
}

/// Reads the subnet file; None when it does not exist.
fn subnet_env(conf: &NetConf) -> CniResult<Option<SubnetEnv>> {
    let path = conf.subnet_file();
    if !path.exists() {
        return Ok(None);
    }
    SubnetEnv::read(&path)
        .map(Some)
        .map_err(|e| CniError::new(INVALID_CONFIG, e.to_string()))
}

fn missing_subnet_file(conf: &NetConf, code: u32) -> CniError {
    CniError::new(
        code,
        format!(
            "subnet file {} does not exist yet: twilld writes it once it holds a lease (is it running on this node?), or set ipam.type",
            conf.subnet_file().display()
        ),
    )
}

fn ip_masq(conf: &NetConf, se: Option<&SubnetEnv>) -> bool {
    conf.ip_masq
        .unwrap_or_else(|| se.is_some_and(|s| !s.ipmasq))
}

fn open_netns(path: &Path) -> CniResult<Netns> {
    Netns::open_path(path).map_err(|e| {
        let code = if e.is_not_found() {
            UNKNOWN_CONTAINER
        } else {
            INTERNAL
        };
        CniError::new(code, format!("opening container netns: {e}"))
    })
}

fn current_netns() -> CniResult<Netns> {
    Netns::current().map_err(CniError::from)
}

/// Where an ADD got its address from, so a failure can give it back.
enum Lease {
    Builtin(Store),
    Delegated(String),
}

impl Lease {
    fn give_back(&self, conf: &NetConf, env: &CniEnv, stdin: &[u8]) {
        let r = match self {
            Lease::Builtin(store) => store
                .lock()
                .and_then(|l| store.release(&l, &env.container_id, &env.ifname))
                .map(|_| ()),
            Lease::Delegated(plugin) => delegate::exec(plugin, "DEL", env, stdin).map(|_| ()),
        };
        if let Err(e) = r {
            eprintln!(
                "twill: network {}: releasing address after failed ADD: {e}",
                conf.name
            );
        }
    }
}

/// ADD: address, bridge, veth, container interface; everything rolled back on failure.
pub fn add(conf: &NetConf, env: &CniEnv, stdin: &[u8], version: &str) -> CniResult<String> {
    let se = subnet_env(conf)?;
    let plugin = conf.ipam_type().map(str::to_string);
    if plugin.is_none() && se.is_none() {
        return Err(missing_subnet_file(conf, TRY_AGAIN));
    }
    let masq = ip_masq(conf, se.as_ref());
    if masq && plugin.is_some() {
        return Err(CniError::new(
            UNSUPPORTED_FIELD,
            "ipMasq=true with a delegated ipam.type is not supported: use twill's built-in IPAM or set ipMasq to false",
        ));
    }
    let netns_path = env.netns.clone().unwrap_or_default();
    let ctr = open_netns(&netns_path)?;
    let ifname = env.ifname.clone();
    ctr.run(|nl| async move {
        setup::ensure_absent(&nl, &ifname)
            .await
            .map_err(|e| twill_netkit::Error::Invalid(e.msg))
    })
    .map_err(|e| CniError::new(INTERNAL, e.to_string()))?;

    // 1. The address.
    let requested = match env.requested_ip {
        Some(ip) => Some(ip),
        None => conf.runtime_ip()?,
    };
    let (lease, ip, gateway, mut routes, dns) = match (&plugin, &se) {
        (None, Some(se)) => {
            let store = Store::open(&conf.ipam_dir())?;
            let range = Range {
                subnet: se.subnet,
                gateway: se.gateway(),
            };
            let ip = {
                let lock = store.lock()?;
                builtin::allocate(
                    &store,
                    &lock,
                    range,
                    &env.container_id,
                    &env.ifname,
                    requested,
                )?
            };
            let addr = Ipv4Net::new(ip, se.subnet.prefix_len()).unwrap_or(se.subnet);
            let routes = vec![RouteSpec {
                dst: se.network,
                gw: Some(se.gateway()),
            }];
            (
                Lease::Builtin(store),
                addr,
                Some(se.gateway()),
                routes,
                Default::default(),
            )
        }
        (Some(p), _) => {
            let out = delegate::exec(p, "ADD", env, stdin)?.ok_or_else(|| {
                CniError::new(INTERNAL, format!("IPAM plugin {p} printed no result"))
            })?;
            let r = AddResult::from_json(&out);
            let lease = Lease::Delegated(p.clone());
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    lease.give_back(conf, env, stdin);
                    return Err(e);
                }
            };
            let Some(first) = r.ips.first().cloned() else {
                lease.give_back(conf, env, stdin);
                return Err(CniError::new(
                    INTERNAL,
                    format!("IPAM plugin {p} returned no IPv4 address"),
                ));
            };
            (lease, first.address, first.gateway, r.routes, r.dns)
        }
        (None, None) => unreachable!("checked above"),
    };
    if conf.is_default_gateway()
        && let Some(gw) = gateway
        && !routes.iter().any(|r| r.dst.prefix_len() == 0)
    {
        routes.push(RouteSpec {
            dst: Ipv4Net::default(),
            gw: Some(gw),
        });
    }

    // 2. The kernel side; on failure undo it all.
    let mtu = match conf.mtu.or(se.as_ref().map(|s| s.mtu)) {
        Some(m) => m,
        None => current_netns()?
            .run(|nl| async move { Ok(setup::default_route_mtu(&nl).await) })?
            .unwrap_or(1500),
    };
    let host_veth = setup::host_veth_name(&env.container_id, &env.ifname, 0);
    let tmp_peer = format!("tw{:08x}", setup::random_u32());
    let plan = HostPlan {
        bridge: conf.bridge(),
        bridge_addr: match (conf.is_gateway(), gateway) {
            (true, Some(gw)) => Some(setup::gateway_cidr(gw, ip.trunc())),
            _ => None,
        },
        mtu,
        hairpin: conf.hairpin(),
        host_veth: host_veth.clone(),
        tmp_peer: tmp_peer.clone(),
    };
    let host_ns = current_netns()?;
    let wired = (|| -> CniResult<(twill_netkit::Link, twill_netkit::Link, twill_netkit::Link)> {
        let ctr_ref = &ctr;
        let plan_ref = &plan;
        let (bridge, veth) = host_ns.run(|nl| async move {
            setup::host_side(&nl, plan_ref, ctr_ref)
                .await
                .map_err(|e| twill_netkit::Error::Invalid(e.msg))
        })?;
        if conf.is_gateway() {
            host_ns.enter(setup::enable_forwarding)??;
        }
        let (ifname, routes_ref) = (&env.ifname, &routes);
        let c = ctr.run(|nl| async move {
            setup::container_side(&nl, &tmp_peer, ifname, ip, routes_ref)
                .await
                .map_err(|e| twill_netkit::Error::Invalid(e.msg))
        })?;
        Ok((bridge, veth, c))
    })();
    let (bridge, veth, c) = match wired {
        Ok(v) => v,
        Err(e) => {
            let hv = host_veth.clone();
            let _ = host_ns.run(|nl| async move { nl.remove_link(&hv).await });
            lease.give_back(conf, env, stdin);
            return Err(e);
        }
    };

    // 3. Masquerade for the node's subnet (a no-op once in place).
    if masq
        && let Some(se) = &se
        && let Err(e) = masq::ensure(&conf.name, se.subnet, se.network, &conf.ipam_dir(), false)
    {
        let hv = host_veth.clone();
        let _ = host_ns.run(|nl| async move { nl.remove_link(&hv).await });
        lease.give_back(conf, env, stdin);
        return Err(e);
    }

    let mac = |l: &twill_netkit::Link| twill_netkit::format_mac(&l.mac);
    let result = AddResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: mac(&bridge),
                mtu: Some(bridge.mtu),
                sandbox: None,
            },
            Interface {
                name: veth.name.clone(),
                mac: mac(&veth),
                mtu: Some(veth.mtu),
                sandbox: None,
            },
            Interface {
                name: c.name.clone(),
                mac: mac(&c),
                mtu: Some(c.mtu),
                sandbox: Some(netns_path.display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: ip,
            gateway,
            interface: Some(2),
        }],
        routes,
        dns: conf.dns.clone().unwrap_or(dns),
    };
    Ok(result.to_json(version).to_string())
}

/// DEL: idempotent and best effort; every step runs and failures are reported together.
pub fn del(conf: &NetConf, env: &CniEnv, stdin: &[u8]) -> CniResult<()> {
    let mut errors: Vec<String> = Vec::new();
    if let Some(path) = &env.netns
        && path.exists()
    {
        match Netns::open_path(path) {
            Ok(ctr) => {
                let ifname = env.ifname.clone();
                if let Err(e) = ctr.run(|nl| async move { nl.remove_link(&ifname).await }) {
                    errors.push(format!("removing {}: {e}", env.ifname));
                }
            }
            // Gone between the check and the open: nothing left to remove there.
            Err(e) if e.is_not_found() => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    let host_veth = setup::host_veth_name(&env.container_id, &env.ifname, 0);
    if let Err(e) = current_netns().and_then(|ns| {
        ns.run(|nl| async move { nl.remove_link(&host_veth).await })
            .map_err(CniError::from)
    }) {
        errors.push(e.to_string());
    }
    match conf.ipam_type() {
        Some(p) => {
            if let Err(e) = delegate::exec(p, "DEL", env, stdin) {
                errors.push(e.to_string());
            }
        }
        None => {
            let released = Store::open(&conf.ipam_dir()).and_then(|store| {
                let lock = store.lock()?;
                store
                    .release(&lock, &env.container_id, &env.ifname)
                    .map(|_| ())
            });
            if let Err(e) = released {
                errors.push(e.to_string());
            }
        }
    }
    collected(
        format!("DEL of {} {}", env.container_id, env.ifname),
        errors,
    )
}

/// CHECK: the container interface, its addresses and routes match prevResult, the bridge
/// exists, and the address is still reserved.
pub fn check(conf: &NetConf, env: &CniEnv) -> CniResult<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "CHECK needs prevResult in the network configuration",
        )
    })?;
    let prev = AddResult::from_json(prev)?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let ctr = open_netns(&netns_path)?;
    let ifname = env.ifname.clone();
    let (addrs, routes) = ctr
        .run(|nl| async move {
            let l = nl.require_link(&ifname).await?;
            Ok((
                nl.list_addresses(l.index).await?,
                nl.list_routes(None).await?,
            ))
        })
        .map_err(|e| CniError::new(INTERNAL, format!("CHECK: {e}")))?;
    let ours = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some());
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == ours)
    {
        if !addrs.contains(&ipnet::IpNet::V4(ip.address)) {
            return Err(CniError::new(
                INTERNAL,
                format!(
                    "CHECK: address {} missing on {} in {}",
                    ip.address,
                    env.ifname,
                    netns_path.display()
                ),
            ));
        }
    }
    for r in &prev.routes {
        if !routes
            .iter()
            .any(|k| k.dst == r.dst && (r.gw.is_none() || k.gateway == r.gw))
        {
            return Err(CniError::new(
                INTERNAL,
                format!(
                    "CHECK: route to {} missing in {}",
                    r.dst,
                    netns_path.display()
                ),
            ));
        }
    }
    let bridge = conf.bridge().to_string();
    current_netns()?
        .run(|nl| async move { nl.require_link(&bridge).await })
        .map_err(|e| CniError::new(INTERNAL, format!("CHECK: {e}")))?;
    let se = subnet_env(conf)?;
    if ip_masq(conf, se.as_ref())
        && let Some(se) = &se
    {
        masq::ensure(&conf.name, se.subnet, se.network, &conf.ipam_dir(), true)?;
    }
    if conf.ipam_type().is_none() {
        let store = Store::open(&conf.ipam_dir())?;
        let lock = store.lock()?;
        let held: Option<Ipv4Addr> = store.find(&lock, &env.container_id, &env.ifname)?;
        if !prev.ips.iter().any(|ip| Some(ip.address.addr()) == held) {
            return Err(CniError::new(
                INTERNAL,
                format!(
                    "CHECK: no IPAM reservation for {} {} matches prevResult",
                    env.container_id, env.ifname
                ),
            ));
        }
    }
    Ok(())
}

/// STATUS: ready when the subnet file is there (built-in IPAM) or the IPAM plugin is found.
pub fn status(conf: &NetConf, env: &CniEnv) -> CniResult<()> {
    match conf.ipam_type() {
        None => match subnet_env(conf) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(missing_subnet_file(conf, NOT_AVAILABLE)),
            Err(e) => Err(CniError::new(NOT_AVAILABLE, e.msg)),
        },
        Some(p) if !env.path.is_empty() => delegate::find(p, env)
            .map(|_| ())
            .map_err(|e| CniError::new(NOT_AVAILABLE, e.msg)),
        Some(_) => Ok(()),
    }
}

/// GC: release every allocation whose attachment is not in `cni.dev/valid-attachments`.
pub fn gc(conf: &NetConf, env: &CniEnv, stdin: &[u8]) -> CniResult<()> {
    if let Some(p) = conf.ipam_type() {
        return delegate::exec(p, "GC", env, stdin).map(|_| ());
    }
    let keep: HashSet<Attachment> = conf.gc_keep().into_iter().collect();
    let store = Store::open(&conf.ipam_dir())?;
    let lock = store.lock()?;
    let mut errors = Vec::new();
    for a in store.list(&lock)? {
        let key = Attachment {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        };
        if !keep.contains(&key)
            && let Err(e) = store.release(&lock, &a.container_id, &a.ifname)
        {
            errors.push(e.to_string());
        }
    }
    collected("GC".to_string(), errors)
}

//! ADD, DEL, CHECK, STATUS and GC.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use twill_netkit::subnet_env::SubnetEnv;
use twill_netkit::{Link, Netns, PortState, random};

use crate::config::{Attachment, Dns, NetConf};
use crate::env::CniEnv;
use crate::error::{
    CniError, CniResult, DECODE, INTERNAL, INVALID_CONFIG, INVALID_ENV, NOT_AVAILABLE, TRY_AGAIN,
    UNKNOWN_CONTAINER,
};
use crate::ipam::assignment::{self, Assignment};
use crate::ipam::builtin;
use crate::ipam::delegate;
use crate::ipam::store::Store;
use crate::masq::{Masq, MasqRule};
use crate::result::{AddResult, Interface, IpConfig, RouteSpec};
use crate::rollback::Rollback;
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

/// Reads the subnet file; None when it does not exist. What it reads as Flannel's plugin
/// does but differently from how it is written goes to stderr, the plugin's log: stdout
/// carries the result.
fn subnet_env(conf: &NetConf) -> CniResult<Option<SubnetEnv>> {
    let path = conf.subnet_file();
    if !path.exists() {
        return Ok(None);
    }
    let (se, warnings) =
        SubnetEnv::read_noting(&path).map_err(|e| CniError::new(INVALID_CONFIG, e.to_string()))?;
    for w in warnings {
        eprintln!("twill: warning: {w}");
    }
    Ok(Some(se))
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

/// The container's namespace (CNI_NETNS). env makes ADD and CHECK refuse to run without it;
/// `None` here is a caller of the library that passed none.
fn open_netns(path: Option<&Path>) -> CniResult<Netns> {
    let Some(path) = path else {
        return Err(CniError::new(
            INVALID_ENV,
            "no netns given: CNI_NETNS must name the container's network namespace",
        ));
    };
    Netns::open_path(path).map_err(|e| {
        if e.is_not_found() {
            CniError::new(
                UNKNOWN_CONTAINER,
                format!(
                    "container netns {} (CNI_NETNS) does not exist: the container is gone, or the runtime passed a wrong path",
                    path.display()
                ),
            )
        } else {
            CniError::new(
                INTERNAL,
                format!("opening container netns {}: {e}", path.display()),
            )
        }
    })
}

fn current_netns() -> CniResult<Netns> {
    Netns::current().map_err(CniError::from)
}

/// ADD, as a list of named steps. Each step that creates something records its undo on the
/// rollback guard; any failure drops the guard, which undoes those steps newest first.
pub fn add(conf: &NetConf, env: &CniEnv, stdin: &[u8], version: &str) -> CniResult<String> {
    let se = subnet_env(conf)?;
    let masq = check_add_request(conf, se.as_ref())?;
    let ctr = open_netns(env.netns.as_deref())?;
    let sandbox = ctr.path().display().to_string();
    ensure_interface_absent(&ctr, &env.ifname)?;
    let host_ns = current_netns()?;

    let mut rollback = Rollback::new(&conf.name);
    let mut assigned = lease_address(conf, env, stdin, se.as_ref(), &mut rollback)?;
    if conf.is_gateway() {
        assigned.default_gateways();
    }
    if conf.is_default_gateway() {
        assigned.add_default_routes();
    }
    let plan = host_plan(conf, env, se.as_ref(), &assigned, &host_ns)?;
    let (bridge, veth) = create_host_side(&host_ns, &plan, &ctr, &mut rollback)?;
    if conf.is_gateway() {
        let gateways = assigned.gateways();
        host_ns.enter(|| setup::enable_forwarding(&gateways))??;
    }
    let container = configure_container_side(&ctr, &plan.tmp_peer, &env.ifname, &assigned)?;
    let port = forget_stale_neighbours(&host_ns, &bridge, &veth, &assigned)?;
    // Nothing the ADD did depends on it: a failure is a warning, not a failed ADD.
    if let Err(e) = announce_addresses(port, &ctr, &veth, &container, &assigned) {
        eprintln!(
            "twill: warning: network {}: {} {}: {e}",
            conf.name, env.container_id, env.ifname
        );
    }
    if plan.hairpin {
        set_hairpin(&host_ns, &veth)?;
    }
    let state = masq_state(conf, se.as_ref())?;
    if masq {
        let rules: Vec<MasqRule> = assigned
            .ips
            .iter()
            .map(|a| masq_rule(se.as_ref(), a.ip))
            .collect();
        state.record(&env.container_id, &env.ifname, &rules, false)?;
    }
    rollback.commit();

    let result = add_result(conf, [bridge, veth], container, &sandbox, assigned);
    Ok(result.to_json(version).to_string())
}

/// Step: refuse what ADD cannot do before anything is created; answers whether to masquerade.
fn check_add_request(conf: &NetConf, se: Option<&SubnetEnv>) -> CniResult<bool> {
    if conf.ipam_type().is_none() && se.is_none() {
        return Err(missing_subnet_file(conf, TRY_AGAIN));
    }
    Ok(ip_masq(conf, se))
}

/// The masquerade rule for a container at `ip`: its subnet (from the address and prefix
/// length, whichever IPAM gave it) towards anywhere outside the overlay network of its
/// family when the subnet lies in it, else outside the subnet itself (as the reference
/// bridge plugin).
fn masq_rule(se: Option<&SubnetEnv>, ip: IpNet) -> MasqRule {
    let subnet = ip.trunc();
    let network: Option<IpNet> = match subnet {
        IpNet::V4(_) => se.and_then(|s| s.ipv4).map(|p| p.network.into()),
        IpNet::V6(_) => se.and_then(|s| s.ipv6).map(|p| p.network.into()),
    };
    let excluded = network.filter(|n| n.contains(&subnet)).unwrap_or(subnet);
    MasqRule::new(subnet, excluded)
}

/// twill's masquerade state for the network; an older twill's file in the IPAM store is
/// migrated first (its table covered the built-in store's reservations).
fn masq_state(conf: &NetConf, se: Option<&SubnetEnv>) -> CniResult<Masq> {
    let state = Masq::new(&conf.name, conf.state_dir());
    let ipam_dir = conf.ipam_dir();
    let legacy_rule = se
        .filter(|s| conf.ipam_type().is_none() && ip_masq(conf, Some(s)))
        .and_then(|s| s.ipv4)
        .map(|p| MasqRule::new(p.subnet.into(), p.network.into()));
    state.migrate_legacy(&ipam_dir, legacy_rule, || {
        let store = Store::open(&ipam_dir)?;
        let lock = store.lock()?;
        Ok(store
            .list(&lock)?
            .into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect())
    })?;
    Ok(state)
}

/// Step: CNI_IFNAME must not exist in the container yet (the spec makes that an error).
fn ensure_interface_absent(ctr: &Netns, ifname: &str) -> CniResult<()> {
    ctr.run(|nl| async move { setup::ensure_absent(&nl, ifname).await })
}

/// Step: the addresses from the built-in IPAM (over the subnet file) or the delegated
/// plugin; giving them back goes on `rollback`.
fn lease_address<'a>(
    conf: &'a NetConf,
    env: &'a CniEnv,
    stdin: &'a [u8],
    se: Option<&SubnetEnv>,
    rollback: &mut Rollback<'a>,
) -> CniResult<Assignment> {
    match (conf.ipam_type(), se) {
        (None, Some(se)) => {
            let from_args = env.requested_ips()?;
            let requested = if from_args.is_empty() {
                conf.runtime_ips()?
            } else {
                from_args
            };
            let ranges = assignment::builtin_ranges(se);
            let store = Store::open(&conf.ipam_dir())?;
            let ips = {
                let lock = store.lock()?;
                builtin::allocate(
                    &store,
                    &lock,
                    &ranges,
                    &env.container_id,
                    &env.ifname,
                    &requested,
                )?
            };
            rollback.on_failure("releasing address", move || {
                let lock = store.lock()?;
                store
                    .release(&lock, &env.container_id, &env.ifname)
                    .map(|_| ())
            });
            Ok(Assignment::from_builtin(se, &ranges, &ips))
        }
        (Some(plugin), _) => {
            let out = match delegate::exec(plugin, "ADD", env, stdin) {
                Ok(out) => out,
                // It may have reserved an address before printing what is not a result.
                Err(e) if e.code == DECODE => {
                    return Err(match delegate::exec(plugin, "DEL", env, stdin) {
                        Ok(_) => e,
                        Err(d) => CniError::new(
                            e.code,
                            format!("{}; releasing with DEL failed too: {}", e.msg, d.msg),
                        ),
                    });
                }
                Err(e) => return Err(e),
            };
            rollback.on_failure("releasing address", move || {
                delegate::exec(plugin, "DEL", env, stdin).map(|_| ())
            });
            let out = out.ok_or_else(|| {
                CniError::new(INTERNAL, format!("IPAM plugin {plugin} printed no result"))
            })?;
            let r = AddResult::from_json(&out)?;
            if r.ips.is_empty() {
                return Err(CniError::new(
                    INTERNAL,
                    format!("IPAM plugin {plugin} returned no address"),
                ));
            }
            Ok(Assignment::from_result(r))
        }
        (None, None) => Err(missing_subnet_file(conf, TRY_AGAIN)),
    }
}

/// Step: names, MTU and bridge address of the host side. The MTU is the config's, else the
/// subnet file's, else that of the host's default route.
fn host_plan<'c>(
    conf: &'c NetConf,
    env: &CniEnv,
    se: Option<&SubnetEnv>,
    assigned: &Assignment,
    host_ns: &Netns,
) -> CniResult<HostPlan<'c>> {
    let mtu = match conf.mtu().or(se.map(|s| s.mtu)) {
        Some(m) => m,
        None => host_ns
            .run(|nl| async move { Ok::<_, CniError>(setup::default_route_mtu(&nl).await) })?
            .unwrap_or(1500),
    };
    Ok(HostPlan {
        bridge: conf.bridge(),
        bridge_addrs: if conf.is_gateway() {
            assigned.bridge_addresses()
        } else {
            Vec::new()
        },
        mtu,
        hairpin: conf.hairpin(),
        host_veth: setup::host_veth_name(&env.container_id, &env.ifname, 0),
        marker: setup::host_veth_marker(&env.container_id, &env.ifname),
        tmp_peer: setup::tmp_peer_name(random::random_u64() as u32),
    })
}

/// Step: the bridge and the veth pair, the container end born in `ctr` under its temporary
/// name; removing the host end (which takes the peer with it) goes on `rollback` first, so a
/// failure half way through this step is undone too — once the name is known to be free, so
/// the undo never removes a link of someone else's.
fn create_host_side<'a>(
    host_ns: &'a Netns,
    plan: &HostPlan<'_>,
    ctr: &Netns,
    rollback: &mut Rollback<'a>,
) -> CniResult<(Link, Link)> {
    let host_veth = plan.host_veth.clone();
    let name = &plan.host_veth;
    host_ns.run(|nl| async move { setup::ensure_host_veth_free(&nl, name).await })?;
    rollback.on_failure("removing host veth", move || {
        host_ns
            .run(|nl| async move { nl.remove_link(&host_veth).await })
            .map(|_| ())
            .map_err(CniError::from)
    });
    host_ns.run(|nl| async move { setup::host_side(&nl, plan, ctr).await })
}

/// Step: the container end renamed to CNI_IFNAME, with its address and routes, up.
fn configure_container_side(
    ctr: &Netns,
    tmp_peer: &str,
    ifname: &str,
    assigned: &Assignment,
) -> CniResult<Link> {
    let addrs: Vec<IpNet> = assigned.ips.iter().map(|a| a.ip).collect();
    let gateways = assigned.gateways();
    let (addrs, gateways, routes) = (&addrs, &gateways, &assigned.routes);
    ctr.run(|nl| async move {
        setup::container_side(&nl, tmp_peer, ifname, addrs, gateways, routes).await
    })
}

/// Step: the host's neighbour entries for the container's addresses on the bridge go, once
/// the container answers for them. An address handed out again (a restart with a fixed IP)
/// would otherwise stay mapped to the old container's MAC — REACHABLE for up to ~45 s, then
/// seconds of probing — and the host, its port forwards and the traffic it routes in from
/// other nodes would go nowhere. (The container's gratuitous ARP on link up cannot fix it:
/// the bridge port is not forwarding yet when the container end comes up.)
///
/// In the same netlink session, the wait for the host veth's bridge port that
/// [`announce_addresses`] needs: its outcome, whose failure is only a warning there.
fn forget_stale_neighbours(
    host_ns: &Netns,
    bridge: &Link,
    veth: &Link,
    assigned: &Assignment,
) -> CniResult<CniResult<PortState>> {
    let addrs: Vec<IpAddr> = assigned.ips.iter().map(|a| a.ip.addr()).collect();
    let (index, port, addrs) = (bridge.index, veth.index, &addrs);
    host_ns
        .run(|nl| async move {
            for ip in addrs {
                nl.delete_neighbour(index, *ip).await?;
            }
            let state = nl.wait_port_enabled(port, PORT_ENABLED_WAIT).await;
            Ok::<_, twill_netkit::Error>(state.map_err(CniError::from))
        })
        .map_err(CniError::from)
}

/// How long ADD waits for the host veth's bridge port to leave Disabled before announcing
/// the container's addresses. Without STP it forwards as soon as the kernel has seen the
/// carrier come up (milliseconds after the container end is up).
const PORT_ENABLED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Step, once everything but hairpin is in place (a failure is only a warning): when the
/// host veth's bridge port forwards (`port`: what [`forget_stale_neighbours`] waited for),
/// the container announces its addresses from `CNI_IFNAME` (a gratuitous ARP per IPv4
/// address, an unsolicited neighbour advertisement with override per IPv6 address). Other containers on the bridge that still
/// map an address handed out again to the old container's MAC (REACHABLE for up to ~45 s)
/// take the new one at once. The kernel's own announcement at link up would be lost: the
/// bridge port is not forwarding yet then.
///
/// On a bridge with STP on the port goes Listening/Learning instead and
/// forwards only after twice the forward delay (15 s each by default): ADD stops waiting at
/// once and announces nothing (the bridge would drop it), and that is no warning. A port
/// still Disabled (or Blocking: STP found a loop) after [`PORT_ENABLED_WAIT`] gets the
/// announcement anyway, and a warning.
fn announce_addresses(
    port: CniResult<PortState>,
    ctr: &Netns,
    veth: &Link,
    container: &Link,
    assigned: &Assignment,
) -> CniResult<()> {
    let state = port?;
    let forwarding = match state {
        PortState::Forwarding => true,
        PortState::Disabled | PortState::Blocking => false,
        // STP is running on the bridge: nothing is wrong, and nothing would get through.
        _ => return Ok(()),
    };
    let mac: [u8; 6] = container.mac.as_slice().try_into().map_err(|_| {
        CniError::new(
            INTERNAL,
            format!(
                "announcing addresses: {} in netns {} has no Ethernet MAC ({:?})",
                container.name,
                ctr.label(),
                container.mac
            ),
        )
    })?;
    // The kernel announces: `arp_notify` and `ndisc_notify` are on for the interface
    // (`setup::container_side`), and setting its MAC, even to the one it has, makes it send a
    // gratuitous ARP per IPv4 address and an unsolicited neighbour advertisement per IPv6
    // address. A packet socket of our own would cost every ADD an RCU grace period at its
    // close (`packet_release`), ~15 ms.
    let cindex = container.index;
    ctr.run(|nl| async move { nl.set_mac(cindex, mac).await })
        .map_err(|e| {
            let e = e.naming_link(cindex, &container.name);
            CniError::new(INTERNAL, format!("announcing addresses: {e}"))
        })?;
    if !forwarding {
        return Err(CniError::new(
            INTERNAL,
            format!(
                "bridge port {} was still {} after {:?}: the announcement of {} may be lost, neighbours may keep an old MAC for a while",
                veth.name,
                match state {
                    PortState::Blocking => "blocking (STP)",
                    _ => "disabled (no carrier)",
                },
                PORT_ENABLED_WAIT,
                assigned
                    .ips
                    .iter()
                    .map(|a| a.ip.addr().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(())
}

/// Step: hairpin on the host veth's bridge port (traffic may leave the port it came in: a
/// container reaching itself through a service address). After the announcement, which the
/// bridge would otherwise send back to the container: the kernel logs an IPv6 neighbour
/// advertisement of its own address as "advertised our address".
fn set_hairpin(host_ns: &Netns, veth: &Link) -> CniResult<()> {
    let index = veth.index;
    host_ns
        .run(|nl| async move { nl.set_hairpin(index, true).await })
        .map_err(CniError::from)
}

/// The result: bridge, host veth and container interface, the address on the latter.
fn add_result(
    conf: &NetConf,
    host_links: [Link; 2],
    container: Link,
    sandbox: &str,
    assigned: Assignment,
) -> AddResult {
    let interface = |l: &Link, sandbox: Option<String>| Interface {
        name: l.name.clone(),
        mac: twill_netkit::format_mac(&l.mac),
        mtu: Some(l.mtu),
        sandbox,
    };
    let [bridge, veth] = host_links;
    AddResult {
        interfaces: vec![
            interface(&bridge, None),
            interface(&veth, None),
            interface(&container, Some(sandbox.to_string())),
        ],
        ips: assigned
            .ips
            .iter()
            .map(|a| IpConfig {
                address: a.ip,
                gateway: a.gateway,
                interface: Some(2),
            })
            .collect(),
        routes: assigned.routes,
        // The configuration's DNS only when it sets something, as the reference bridge:
        // `"dns": {}` must not hide what the IPAM plugin answered.
        dns: conf.dns.clone().filter(Dns::is_set).unwrap_or(assigned.dns),
    }
}

/// DEL: idempotent and best effort; every step runs and failures are reported together.
pub fn del(conf: &NetConf, env: &CniEnv, stdin: &[u8]) -> CniResult<()> {
    let mut errors: Vec<String> = Vec::new();
    let host_veth = setup::host_veth_name(&env.container_id, &env.ifname, 0);
    let marker = setup::host_veth_marker(&env.container_id, &env.ifname);
    let host_ns = match current_netns() {
        Ok(ns) => Some(ns),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    // This attachment's host end, for the pair an interrupted ADD left in the container.
    let name = &host_veth;
    let pair = host_ns.as_ref().and_then(|ns| {
        ns.run(|nl| async move { setup::host_veth_pair(&nl, name).await })
            .map_err(|e| errors.push(e.to_string()))
            .ok()
            .flatten()
    });
    if let Some(path) = &env.netns
        && path.exists()
    {
        match Netns::open_path(path) {
            Ok(ctr) => {
                let ifname = env.ifname.clone();
                if let Err(e) = ctr
                    .run(|nl| async move { setup::remove_container_side(&nl, &ifname, pair).await })
                {
                    errors.push(format!("removing {}: {e}", env.ifname));
                }
            }
            // Gone between the check and the open: nothing left to remove there.
            Err(e) if e.is_not_found() => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    // The host end, when the container side did not take it along (no look into the
    // container: a namespace still held by a process after its path went away): only when
    // it carries this attachment's marker. A veth of that name without it is someone else's.
    if let Some(ns) = &host_ns {
        let marker = &marker;
        if let Err(e) =
            ns.run(|nl| async move { setup::remove_host_veth_if_ours(&nl, name, marker).await })
        {
            errors.push(e.to_string());
        }
    }
    // A broken subnet file must not keep DEL from forgetting the attachment.
    let se = subnet_env(conf).ok().flatten();
    let forgotten = masq_state(conf, se.as_ref())
        .and_then(|state| state.forget(&env.container_id, &env.ifname));
    if let Err(e) = forgotten {
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

/// CHECK, as strict as the reference bridge's: prevResult must be this attachment's result
/// (CNI_IFNAME with CNI_NETNS as its sandbox, the configuration's bridge, this attachment's
/// host veth), and the kernel must still hold what it says: the container end a veth whose
/// peer is the host veth, a port of the bridge; every MAC prevResult gives (the bridge's only
/// where it cannot follow its ports, see [`check_host_side`]); every address of
/// the container interface on it; every main-table route (out of it where it has routes to
/// that destination, see [`check_addresses_and_routes`]). Then the addresses are
/// still reserved, and a delegated IPAM plugin checks its own.
///
/// Codes: 6 for a prevResult that is no CNI result, 7 for one that describes another
/// attachment (it is part of the configuration), 999 for a kernel that no longer matches it.
pub fn check(conf: &NetConf, env: &CniEnv, stdin: &[u8]) -> CniResult<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "CHECK needs prevResult in the network configuration",
        )
    })?;
    let prev = AddResult::from_json(prev)
        .map_err(|e| CniError::new(e.code, format!("CHECK: prevResult: {}", e.msg)))?;
    let ctr = open_netns(env.netns.as_deref())?;
    let sandbox = ctr.path().display().to_string();
    let host_veth = setup::host_veth_name(&env.container_id, &env.ifname, 0);
    let want = Described::find(&prev, conf.bridge(), &host_veth, &env.ifname, &sandbox)?;
    let ifname = env.ifname.clone();
    let found = ctr
        .run(|nl| async move {
            let Some(link) = nl.link_by_name(&ifname).await? else {
                return Ok(None);
            };
            let peer = nl.link_detail(link.index).await?.and_then(|d| d.peer_index);
            let addrs = nl.list_addresses(link.index).await?;
            let routes = nl.list_routes(None).await?;
            let names = nl
                .list_links()
                .await?
                .into_iter()
                .map(|l| (l.index, l.name))
                .collect::<HashMap<u32, String>>();
            Ok::<_, twill_netkit::Error>(Some(InContainer {
                link,
                peer,
                addrs,
                routes,
                names,
            }))
        })
        .map_err(|e| CniError::new(INTERNAL, format!("CHECK: {e}")))?
        .ok_or_else(|| {
            CniError::new(
                INTERNAL,
                format!(
                    "CHECK: {} not found in netns {sandbox}: the container lost the interface ADD made (DEL and ADD the attachment again)",
                    env.ifname
                ),
            )
        })?;
    check_container_side(&want, &found, &env.ifname, &sandbox)?;
    check_host_side(conf, env, &want, &found, &sandbox)?;
    check_addresses_and_routes(&want, &found, &env.ifname, &sandbox)?;
    let se = subnet_env(conf)?;
    if ip_masq(conf, se.as_ref()) && !want.ips.is_empty() {
        let rules: Vec<MasqRule> = want
            .ips
            .iter()
            .map(|ip| masq_rule(se.as_ref(), ip.address))
            .collect();
        masq_state(conf, se.as_ref())?.record(&env.container_id, &env.ifname, &rules, true)?;
    }
    // The spec: a plugin calls CHECK on the plugins it delegates to and passes their errors
    // on (a lost host-local or DHCP reservation).
    if let Some(plugin) = conf.ipam_type() {
        delegate::exec(plugin, "CHECK", env, stdin)?;
    }
    if conf.ipam_type().is_none() {
        let store = Store::open(&conf.ipam_dir())?;
        let lock = store.lock()?;
        let held: Vec<IpAddr> = store.find(&lock, &env.container_id, &env.ifname)?;
        let unheld: Vec<String> = want
            .ips
            .iter()
            .filter(|ip| !held.contains(&ip.address.addr()))
            .map(|ip| ip.address.to_string())
            .collect();
        if held.is_empty() || !unheld.is_empty() {
            return Err(CniError::new(
                INTERNAL,
                format!(
                    "CHECK: no IPAM reservation for {} {} matches prevResult's {}",
                    env.container_id,
                    env.ifname,
                    if unheld.is_empty() {
                        "addresses".to_string()
                    } else {
                        unheld.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// What prevResult says of this attachment: its three interfaces, the addresses of the
/// container interface, the main-table routes.
struct Described<'a> {
    container: &'a Interface,
    bridge: &'a Interface,
    host_veth: &'a Interface,
    ips: Vec<&'a IpConfig>,
    /// netkit lists the main table only: a route IPAM put into another table goes unchecked.
    routes: Vec<&'a RouteSpec>,
}

impl<'a> Described<'a> {
    /// Finds this attachment in `prev`: `ifname` with `sandbox`, `bridge` and `host_veth`
    /// without one. A prevResult without them, or with an address on another of its
    /// interfaces, is another attachment's (code 7).
    fn find(
        prev: &'a AddResult,
        bridge: &str,
        host_veth: &str,
        ifname: &str,
        sandbox: &str,
    ) -> CniResult<Described<'a>> {
        let not_ours = |what: String| {
            CniError::new(
                INVALID_CONFIG,
                format!(
                    "CHECK: {what}; prevResult lists {}: it is not the result of this attachment",
                    listed(prev)
                ),
            )
        };
        let ci = prev
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox))
            .ok_or_else(|| {
                let same_name = prev.interfaces.iter().find(|i| i.name == ifname);
                not_ours(match same_name.map(|i| i.sandbox.as_deref()) {
                    Some(Some(other)) => format!(
                        "the sandbox of prevResult's {ifname} is {other}, CNI_NETNS is {sandbox}"
                    ),
                    Some(None) => format!(
                        "prevResult's {ifname} has no sandbox (a host interface), CNI_IFNAME {ifname} is the container's in {sandbox}"
                    ),
                    None => format!(
                        "prevResult has no interface {ifname} (CNI_IFNAME) with sandbox {sandbox} (CNI_NETNS)"
                    ),
                })
            })?;
        let on_host = |name: &str| {
            prev.interfaces
                .iter()
                .find(|i| i.name == name && i.sandbox.is_none())
        };
        let bridge_if = on_host(bridge).ok_or_else(|| {
            not_ours(format!(
                "prevResult has no host interface {bridge} (the configuration's bridge)"
            ))
        })?;
        let veth_if = on_host(host_veth).ok_or_else(|| {
            not_ours(format!(
                "prevResult has no host interface {host_veth} (the host veth of this container ID and CNI_IFNAME {ifname})"
            ))
        })?;
        let mut ips = Vec::new();
        for (n, ip) in prev.ips.iter().enumerate() {
            match ip.interface {
                None => ips.push(ip),
                Some(i) if i == ci => ips.push(ip),
                Some(i) => match prev.interfaces.get(i) {
                    Some(other) => {
                        return Err(not_ours(format!(
                            "prevResult's ips[{n}] {} is on interfaces[{i}] ({}), not on {ifname}",
                            ip.address, other.name
                        )));
                    }
                    None => {
                        return Err(CniError::new(
                            DECODE,
                            format!(
                                "CHECK: prevResult: ips[{n}].interface is {i}, and there are {} interfaces",
                                prev.interfaces.len()
                            ),
                        ));
                    }
                },
            }
        }
        Ok(Described {
            container: &prev.interfaces[ci],
            bridge: bridge_if,
            host_veth: veth_if,
            ips,
            routes: prev.routes.iter().filter(|r| r.in_main_table()).collect(),
        })
    }
}

/// prevResult's interfaces for a message: `cni0, veth…, eth1 in /var/run/netns/c`.
fn listed(prev: &AddResult) -> String {
    if prev.interfaces.is_empty() {
        return "no interfaces".to_string();
    }
    prev.interfaces
        .iter()
        .map(|i| match &i.sandbox {
            Some(s) => format!("{} in {s}", i.name),
            None => i.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the container's namespace holds of the attachment.
struct InContainer {
    link: Link,
    /// The host veth's index, for a veth.
    peer: Option<u32>,
    addrs: Vec<IpNet>,
    routes: Vec<twill_netkit::Route>,
    /// Every link's name by index, to name the devices of routes in messages.
    names: HashMap<u32, String>,
}

/// A MAC prevResult gives (`""`: none) against what `link` has; `what` names the link.
fn check_mac(want: &Interface, link: &Link, what: &str) -> CniResult<()> {
    if want.mac.is_empty() {
        return Ok(());
    }
    let Some(mac) = twill_netkit::parse_mac(&want.mac) else {
        return Err(CniError::new(
            DECODE,
            format!(
                "CHECK: prevResult: the mac of {} is {:?}, not a MAC address",
                want.name, want.mac
            ),
        ));
    };
    if link.mac != mac {
        return Err(CniError::new(
            INTERNAL,
            format!(
                "CHECK: {what} has MAC {}, prevResult says {}",
                twill_netkit::format_mac(&link.mac),
                want.mac
            ),
        ));
    }
    Ok(())
}

/// The container end is the veth ADD made, with prevResult's MAC.
fn check_container_side(
    want: &Described<'_>,
    found: &InContainer,
    ifname: &str,
    sandbox: &str,
) -> CniResult<()> {
    if found.link.kind.as_deref() != Some("veth") {
        return Err(CniError::new(
            INTERNAL,
            format!(
                "CHECK: {ifname} in netns {sandbox} is a {} link, not the veth ADD made",
                found.link.kind.as_deref().unwrap_or("device")
            ),
        ));
    }
    check_mac(
        want.container,
        &found.link,
        &format!("{ifname} in netns {sandbox}"),
    )
}

/// CHECK's host half: the bridge exists, the attachment's host veth is one of its ports and
/// the container end's peer, and both have prevResult's MACs, as the reference bridge checks.
/// A bridge deleted and re-created leaves the old veths detached, and the container cut off
/// while its own side looks fine.
fn check_host_side(
    conf: &NetConf,
    env: &CniEnv,
    want: &Described<'_>,
    found: &InContainer,
    sandbox: &str,
) -> CniResult<()> {
    let bridge = conf.bridge();
    let host_veth = want.host_veth.name.as_str();
    let compare_bridge_mac = !want.bridge.mac.is_empty();
    let host = current_netns()?
        .run(|nl| async move {
            let br = nl.link_by_name(bridge).await?;
            let veth = nl.link_by_name(host_veth).await?;
            let peer = match &veth {
                Some(v) => nl.link_detail(v.index).await?.and_then(|d| d.peer_index),
                None => None,
            };
            // For messages only: what the veth is attached to instead of the bridge.
            let elsewhere = match (veth.as_ref().and_then(|v| v.controller), &br) {
                (Some(c), Some(b)) if c != b.index => nl.link_by_index(c).await?.map(|l| l.name),
                _ => None,
            };
            let ports = match &br {
                Some(b) if compare_bridge_mac => nl.ports_of(b.index).await?,
                _ => Vec::new(),
            };
            Ok::<_, twill_netkit::Error>(HostSide {
                br,
                veth,
                peer,
                elsewhere,
                ports,
            })
        })
        .map_err(|e| CniError::new(INTERNAL, format!("CHECK: {e}")))?;
    let attachment = format!("{} {}", env.container_id, env.ifname);
    let fail = |msg: String| Err(CniError::new(INTERNAL, format!("CHECK: {msg}")));
    let again = format!("DEL and ADD {attachment} again");
    let Some(br) = host.br else {
        return fail(format!(
            "bridge {bridge} not found in the runtime's netns: it was deleted since ADD, which took host veth {host_veth} off it ({again}: ADD creates the bridge)"
        ));
    };
    if br.kind.as_deref() != Some("bridge") {
        return fail(format!(
            "{bridge} is a {} link, not a bridge: the configuration's bridge name was taken by another device since ADD (remove that device or name another bridge in the configuration, then {again})",
            br.kind.as_deref().unwrap_or("device")
        ));
    }
    let Some(veth) = host.veth else {
        return fail(format!(
            "host veth {host_veth} of {attachment} not found in the runtime's netns ({again})"
        ));
    };
    if veth.controller != Some(br.index) {
        let now = match (veth.controller, host.elsewhere) {
            (None, _) => "it is no bridge's port".to_string(),
            (Some(_), Some(other)) => format!("it is a port of {other}"),
            (Some(c), None) => format!("it is a port of link index {c}"),
        };
        return fail(format!(
            "host veth {host_veth} of {attachment} is not a port of bridge {bridge}: {now} (the bridge was re-created, or the veth detached by hand): `ip link set {host_veth} master {bridge}` attaches it again, or {again}"
        ));
    }
    if veth.kind.as_deref() != Some("veth")
        || host.peer != Some(found.link.index)
        || found.peer != Some(veth.index)
    {
        let what = if veth.kind.as_deref() != Some("veth") {
            format!(
                "{host_veth} is a {} link",
                veth.kind.as_deref().unwrap_or("device")
            )
        } else {
            format!(
                "{host_veth} and {} in netns {sandbox} are two different veth pairs",
                env.ifname
            )
        };
        return fail(format!(
            "host veth {host_veth} of {attachment} is not the peer of {} in netns {sandbox}: {what} (a link of this name was made by someone else since ADD, or {} was replaced; {again})",
            env.ifname, env.ifname
        ));
    }
    // A bridge whose address was never set (one twill did not create) takes the lowest MAC
    // of its ports, and takes another when a port with a lower one joins: prevResult's MAC
    // went stale without anything being wrong. Such a bridge's MAC is always the lowest of
    // its ports', so that case is left uncompared; a set MAC is compared (one set to exactly
    // the lowest port's goes uncompared too, never failed wrongly). The kernel says whether
    // the address was set only in sysfs, and /sys shows the netns of whoever mounted it,
    // not necessarily the runtime's.
    let lowest_port = host
        .ports
        .iter()
        .map(|p| p.mac.as_slice())
        .filter(|m| m.len() == br.mac.len())
        .min();
    if lowest_port != Some(br.mac.as_slice()) {
        check_mac(want.bridge, &br, &format!("bridge {bridge}"))?;
    }
    check_mac(want.host_veth, &veth, &format!("host veth {host_veth}"))
}

/// What CHECK reads of the runtime's netns.
struct HostSide {
    br: Option<Link>,
    veth: Option<Link>,
    /// The host veth's peer index (in the container's netns).
    peer: Option<u32>,
    /// The name of the bridge the host veth is a port of, when it is not the configured one.
    elsewhere: Option<String>,
    /// The bridge's ports, when prevResult gives a bridge MAC to compare.
    ports: Vec<Link>,
}

/// Every address prevResult gives the container interface is on it; every main-table route
/// it lists is there (via its gateway, with its metric, where it names them), out of the
/// container interface when that has routes to the destination, else out of any.
fn check_addresses_and_routes(
    want: &Described<'_>,
    found: &InContainer,
    ifname: &str,
    sandbox: &str,
) -> CniResult<()> {
    for ip in &want.ips {
        if !found.addrs.contains(&ip.address) {
            let there: Vec<String> = found.addrs.iter().map(IpNet::to_string).collect();
            return Err(CniError::new(
                INTERNAL,
                format!(
                    "CHECK: address {} missing on {ifname} in netns {sandbox} (it has {})",
                    ip.address,
                    if there.is_empty() {
                        "none".to_string()
                    } else {
                        there.join(", ")
                    }
                ),
            ));
        }
    }
    let index = found.link.index;
    for r in &want.routes {
        let same_dst: Vec<&twill_netkit::Route> =
            found.routes.iter().filter(|k| k.dst == r.dst).collect();
        // prevResult has no `priority` 0: result.rs reads it as not given, as the reference
        // types do, so the kernel leaving out an IPv4 route's metric 0 never matters here.
        let fits = |k: &&twill_netkit::Route| {
            r.gw.is_none_or(|g| k.gateway == Some(g))
                && r.priority.is_none_or(|p| k.metric == Some(p))
        };
        // Out of this attachment's interface where it has routes to the destination. An
        // attachment made by a twill whose ADD gave only the first attachment of a network in
        // a netns its routes has none: another interface's route stands in then, as the
        // reference's ValidateExpectedRoute never looks at the device.
        let ours: Vec<&twill_netkit::Route> = same_dst
            .iter()
            .copied()
            .filter(|k| k.oif == Some(index))
            .collect();
        let candidates = if ours.is_empty() { &same_dst } else { &ours };
        if candidates.iter().any(fits) {
            continue;
        }
        let mut wanted = format!("route to {}", r.dst);
        if let Some(gw) = r.gw {
            wanted.push_str(&format!(" via {gw}"));
        }
        if !ours.is_empty() {
            wanted.push_str(&format!(" dev {ifname}"));
        }
        if let Some(p) = r.priority {
            wanted.push_str(&format!(" metric {p}"));
        }
        let there: Vec<String> = same_dst
            .iter()
            .map(|k| {
                let mut s = String::new();
                if let Some(gw) = k.gateway {
                    s.push_str(&format!("via {gw} "));
                }
                let dev = k.oif.map(|i| {
                    found
                        .names
                        .get(&i)
                        .cloned()
                        .unwrap_or_else(|| format!("index {i}"))
                });
                s.push_str(&format!("dev {}", dev.as_deref().unwrap_or("none")));
                if let Some(m) = k.metric {
                    s.push_str(&format!(" metric {m}"));
                }
                s
            })
            .collect();
        return Err(CniError::new(
            INTERNAL,
            format!(
                "CHECK: {wanted} missing in netns {sandbox} ({}): the route was deleted or changed since ADD (DEL and ADD the attachment again)",
                if there.is_empty() {
                    format!("no route to {} there", r.dst)
                } else {
                    format!("routes to {} there: {}", r.dst, there.join("; "))
                }
            ),
        ));
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
    let valid = conf.gc_keep();
    let se = subnet_env(conf).ok().flatten();
    // A masquerade failure (nft refusing, a damaged state file) must not keep the addresses
    // reserved: both halves run, and both failures are reported, as DEL does.
    let mut errors = Vec::new();
    if let Err(e) = masq_state(conf, se.as_ref()).and_then(|m| m.retain(&valid)) {
        errors.push(e.msg);
    }
    if let Some(p) = conf.ipam_type() {
        if let Err(e) = delegate::exec(p, "GC", env, stdin) {
            errors.push(e.msg);
        }
        return collected("GC".to_string(), errors);
    }
    let keep: HashSet<Attachment> = valid.into_iter().collect();
    if let Err(e) = gc_store(conf, &keep, &mut errors) {
        errors.push(e.msg);
    }
    collected("GC".to_string(), errors)
}

/// Releases every reservation of the built-in store that `keep` does not name; failures of
/// single releases go to `errors`.
fn gc_store(conf: &NetConf, keep: &HashSet<Attachment>, errors: &mut Vec<String>) -> CniResult<()> {
    let store = Store::open(&conf.ipam_dir())?;
    let lock = store.lock()?;
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
    Ok(())
}

#[cfg(test)]
mod gc_tests {
    use super::*;

    #[test]
    fn gc_releases_addresses_even_when_the_masquerade_state_fails() {
        // Before: a masquerade failure returned before the IPAM store was looked at, so
        // stale reservations stayed at every GC until the masquerade worked again.
        let dir = tempfile::tempdir().unwrap();
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "gcnet", "type": "twill",
            "dataDir": dir.path().join("data"), "stateDir": dir.path().join("state"),
            "subnetFile": dir.path().join("none.env"),
            "cni.dev/valid-attachments": [{"containerID": "kept", "ifname": "eth0"}]
        });
        let conf = NetConf::parse(conf.to_string().as_bytes()).unwrap();
        std::fs::create_dir_all(conf.ipam_dir()).unwrap();
        std::fs::write(conf.ipam_dir().join("10.244.7.9"), "gone\r\neth0").unwrap();
        std::fs::write(conf.ipam_dir().join("10.244.7.10"), "kept\r\neth0").unwrap();
        // The masquerade state cannot be read.
        std::fs::create_dir_all(conf.state_dir().join("masq.json")).unwrap();
        let env = CniEnv {
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            ip_arg: None,
            path: Vec::new(),
            raw_args: String::new(),
        };
        let e = gc(&conf, &env, b"").unwrap_err();
        assert!(
            e.msg.contains("masq.json"),
            "the failure is reported: {}",
            e.msg
        );
        assert!(
            !conf.ipam_dir().join("10.244.7.9").exists(),
            "the stale address was released"
        );
        assert!(
            conf.ipam_dir().join("10.244.7.10").exists(),
            "the kept one stays"
        );
    }
}

#[cfg(test)]
mod netns_tests {
    use super::*;

    #[test]
    fn a_missing_or_absent_netns_is_named() {
        // Before: "network namespace  not found in netns -" for both.
        let e = open_netns(None).unwrap_err();
        assert_eq!(e.code, INVALID_ENV);
        assert!(e.msg.contains("no netns given"), "{}", e.msg);
        let path = Path::new("/nonexistent/twill-test-netns");
        let e = open_netns(Some(path)).unwrap_err();
        assert_eq!(e.code, UNKNOWN_CONTAINER);
        assert!(
            e.msg.contains("/nonexistent/twill-test-netns") && !e.msg.contains("netns -"),
            "{}",
            e.msg
        );
    }
}

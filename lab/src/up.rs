//! `twill-lab up`: every step through the test bed (cluster, etcd, agents, CNI config), the
//! state file saved after each so `down` can clean up after a crash.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use twill_netkit::Netlink;
use twill_netkit::ipnet::{IpNet, Ipv4Net};
use twill_testbed::{
    Cluster, Etcd, EtcdCluster, HostFiles, TwilldCommand, UNDERLAY_BRIDGE, cni, wait_for_subnet,
};

use crate::backend::LabBackend;
use crate::binaries::{self, sibling, twill_run, twill_run_to_the_end};
use crate::family::{IpFamily, address_of};
use crate::image::busybox_tarball;
use crate::interrupt;
use crate::kept_logs::{kept_logs_dir, twilld_log_hint};
use crate::state::{
    ContainerState, EtcdState, HostState, LabState, claim_state_dir, name_flag, prefix,
};

/// What `up` builds.
pub struct UpOptions {
    pub name: String,
    pub hosts: usize,
    pub backend: LabBackend,
    pub containers_per_host: usize,
    pub network: String,
    pub ip_family: IpFamily,
    /// The IPv6 pod network (used with IPv6 on).
    pub network6: String,
    /// etcd members in the underlay namespace (1 to 9), at the underlay's .1, .2, …
    pub etcd_members: usize,
    /// Flags every twilld gets on top of the lab's own.
    pub twilld_flags: Vec<String>,
    /// The caller removes the lab when it fails, after keeping its logs (`bench`, `soak`):
    /// errors name the kept copies instead of `twill-lab logs`, which finds nothing then.
    pub logs_kept_on_failure: bool,
    /// `bench` builds it (recorded in its state: see [`LabState::made_by_bench`]).
    pub made_by_bench: bool,
}

/// A lab whose steps all ran; `etcd` is set when this process still owns the members
/// (`soak`, which kills and restarts them) rather than having let them run on (`up`).
pub struct BuiltLab {
    pub dir: PathBuf,
    pub state: LabState,
    pub etcd: Option<EtcdCluster>,
}

/// Where each twilld serves `/healthz` and `/metrics`, inside its host's namespace.
const HEALTHZ_FLAGS: [&str; 4] = ["--healthz-ip", "127.0.0.1", "--healthz-port", "10256"];
/// How long an agent may take to lease its subnet.
const LEASE_TIMEOUT: Duration = Duration::from_secs(30);

fn step(msg: &str) {
    crate::outln!("==> {msg}");
}

/// Builds the lab; on failure says what failed and how to look, and leaves the state file for
/// `down`.
pub fn up(o: &UpOptions) -> anyhow::Result<bool> {
    let mut lab = build(o, false)?;
    check_all_pairs(&lab.dir, &mut lab.state, o.backend, o.logs_kept_on_failure)
}

/// Every step of `up` but the connectivity check. `own_etcd`: keep the etcd members in this
/// process (they die with it) instead of letting them run on.
pub fn build(o: &UpOptions, own_etcd: bool) -> anyhow::Result<BuiltLab> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "twill-lab needs root (it creates network namespaces)"
    );
    anyhow::ensure!((1..=50).contains(&o.hosts), "--hosts must be 1 to 50");
    anyhow::ensure!(
        (1..=9).contains(&o.etcd_members),
        "etcd members must be 1 to 9"
    );
    let network: twill_netkit::ipnet::Ipv4Net = o
        .network
        .parse()
        .with_context(|| format!("--network {}: not an IPv4 CIDR", o.network))?;
    if o.ip_family.has_v6() {
        o.network6
            .parse::<twill_netkit::ipnet::Ipv6Net>()
            .with_context(|| format!("--network6 {}: not an IPv6 CIDR", o.network6))?;
    }
    check_fits(o, network)?;
    for bin in binaries::REQUIRED {
        let p = sibling(bin);
        anyhow::ensure!(
            p.is_file(),
            "{bin} not found next to twill-lab ({}): build the workspace (cargo build --release)",
            p.display()
        );
    }
    // Everything `up` needs from the system, before anything is built: a tool found missing
    // halfway left namespaces, etcd and agents running.
    twill_testbed::check_etcd_installed().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        std::path::Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    let dir = claim_state_dir(&o.name)?;
    let mut st = LabState {
        name: o.name.clone(),
        backend: o.backend,
        ip_family: o.ip_family,
        network: network.to_string(),
        network6: o.ip_family.has_v6().then(|| o.network6.clone()),
        made_by_bench: o.made_by_bench,
        cni_path: format!(
            "{}:/usr/lib/cni:/opt/cni/bin",
            sibling("twill")
                .parent()
                .unwrap_or(Path::new("."))
                .display()
        ),
        ..LabState::default()
    };
    st.save(&dir)?;

    let cluster = build_hosts(o, &dir, &mut st)?;
    interrupt::check()?;
    let etcd = start_etcd(&cluster, &dir, &mut st, network, o, own_etcd)?;
    interrupt::check()?;
    start_agents(&cluster, &dir, &mut st, o)?;
    interrupt::check()?;
    start_containers(o.containers_per_host, &dir, &mut st)?;
    interrupt::check()?;
    Ok(BuiltLab {
        dir,
        state: st,
        etcd,
    })
}

/// The hosts and containers fit the pod network as twilld will read it (its own parser, so
/// they agree): a subnet per host, an address per container in it (besides its network, its
/// gateway and its broadcast address). Found out before anything is built: a lab with more
/// containers than addresses started every one it could before the first failed.
fn check_fits(o: &UpOptions, network: Ipv4Net) -> anyhow::Result<()> {
    let config = o
        .ip_family
        .network_config(&network.to_string(), &o.network6, o.backend.as_str());
    let parsed = twill_agent::netconf::NetworkConfig::parse(&config.to_string()).map_err(|e| {
        // Each field of the config comes from one option (or two): the error names those,
        // not `--network`, which the user may not have given.
        if e.field.starts_with("Enable") {
            return anyhow::anyhow!(
                "--ip-family {} does not go with --backend {}: {}",
                o.ip_family.cli_name(),
                o.backend,
                e.why
            );
        }
        let flag = if e.field.starts_with("IPv6") {
            format!("--network6 {}", o.network6)
        } else if e.field.starts_with("Backend") {
            format!("--backend {}", o.backend)
        } else {
            format!("--network {}", o.network)
        };
        anyhow::anyhow!("{flag}: {e}")
    })?;
    if o.ip_family.has_v4() {
        let subnets = parsed.subnets().take(o.hosts).count();
        anyhow::ensure!(
            subnets >= o.hosts,
            "--network {network} has room for {subnets} hosts' /{} subnets, not {}: give a larger network",
            parsed.subnet_len,
            o.hosts
        );
        let room = (1usize << (32 - u32::from(parsed.subnet_len))).saturating_sub(3);
        anyhow::ensure!(
            o.containers_per_host <= room,
            "--containers-per-host {} does not fit a host's /{} of --network {network} ({room} addresses at most)",
            o.containers_per_host,
            parsed.subnet_len
        );
    }
    if let Some(v6) = &parsed.ipv6 {
        let subnets = v6.subnets().take(o.hosts).count();
        anyhow::ensure!(
            subnets >= o.hosts,
            "--network6 {} has room for {subnets} hosts' /{} subnets, not {}: give a larger network",
            o.network6,
            v6.subnet_len,
            o.hosts
        );
    }
    Ok(())
}

/// One namespace per host on an underlay bridge, kept after this process exits.
fn build_hosts(o: &UpOptions, dir: &Path, st: &mut LabState) -> anyhow::Result<Cluster> {
    step(&format!(
        "building {} hosts as network namespaces ({}-h1…) on an underlay bridge",
        o.hosts,
        prefix(&o.name)
    ));
    let cluster = Cluster::builder(&prefix(&o.name))
        .hosts(o.hosts)
        .build()?
        .persist();
    for (i, h) in cluster.hosts.iter().enumerate() {
        let name = format!("h{}", i + 1);
        let files = HostFiles::under(dir, &name);
        let hd = dir.join(&name);
        std::fs::create_dir_all(hd.join("net.d"))?;
        st.hosts.push(HostState {
            name,
            netns: h.name.clone(),
            underlay_ip: h.ip.to_string(),
            log: files.log,
            subnet_file: files.subnet_file,
            cni_conf_dir: hd.join("net.d"),
            run_root: hd.join("run"),
            ..HostState::default()
        });
    }
    st.save(dir)?;
    Ok(cluster)
}

/// etcd in the underlay namespace with the network config written: one member on the
/// bridge's address, or several on extra addresses of the bridge (.2, .3, …). Left running
/// unless `own`, then returned.
fn start_etcd(
    cluster: &Cluster,
    dir: &Path,
    st: &mut LabState,
    network: Ipv4Net,
    o: &UpOptions,
    own: bool,
) -> anyhow::Result<Option<EtcdCluster>> {
    let first = u32::from(cluster.underlay_ip());
    let ips: Vec<std::net::Ipv4Addr> = (0..o.etcd_members as u32)
        .map(|i| std::net::Ipv4Addr::from(first + i))
        .collect();
    step(&format!(
        "starting etcd in the underlay namespace at {}",
        ips.iter()
            .map(|ip| format!("{ip}:2379"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // Its data in the lab's state directory: `down` removes them even after a killed `up`.
    twill_testbed::set_etcd_data_parent(Some(dir.to_path_buf()));
    let etcd = if ips.len() == 1 {
        EtcdCluster {
            members: vec![Etcd::start_in(&cluster.underlay, ips[0], own)?],
        }
    } else {
        add_bridge_addresses(cluster, &ips[1..])?;
        EtcdCluster::start_in(&cluster.underlay, &ips, own)?
    };
    let config = o
        .ip_family
        .network_config(&network.to_string(), &o.network6, o.backend.as_str());
    etcd.members[0]
        .put_network_config(&config.to_string())
        .context("writing the network config")?;
    st.etcd_endpoint = etcd.endpoints();
    st.etcd = etcd
        .members
        .iter()
        .map(|m| EtcdState {
            pid: m.pid(),
            dir: None,
        })
        .collect();
    st.save(dir)?;
    if own {
        return Ok(Some(etcd));
    }
    st.etcd = etcd
        .members
        .into_iter()
        .map(|m| {
            let (pid, dir) = m.detach();
            EtcdState {
                pid,
                dir: Some(dir),
            }
        })
        .collect();
    st.save(dir)?;
    Ok(None)
}

/// More addresses on the underlay bridge, for more lab services (etcd members): one entry
/// into the namespace and one bridge lookup for all of them.
fn add_bridge_addresses(cluster: &Cluster, ips: &[std::net::Ipv4Addr]) -> anyhow::Result<()> {
    let prefix_len = cluster.underlay_net().prefix_len();
    let addrs = ips
        .iter()
        .map(|&ip| Ipv4Net::new(ip, prefix_len).map(IpNet::V4))
        .collect::<Result<Vec<_>, _>>()?;
    cluster
        .underlay
        .run(move |nl: Netlink| async move {
            let br = nl.require_link(UNDERLAY_BRIDGE).await?;
            for addr in addrs {
                nl.ensure_address(br.index, addr).await?;
            }
            Ok::<_, twill_netkit::Error>(())
        })
        .with_context(|| format!("adding {ips:?} to the underlay bridge"))
}

/// A twilld per host (in a session of its own, so it outlives `up`); once each has leased a
/// subnet, its host's conflist.
fn start_agents(
    cluster: &Cluster,
    dir: &Path,
    st: &mut LabState,
    o: &UpOptions,
) -> anyhow::Result<()> {
    step("starting twilld on every host");
    for (i, h) in cluster.hosts.iter().enumerate() {
        let child = twilld_command(st, i, &o.twilld_flags)
            .spawn_in(&h.netns)
            .context("starting twilld")?;
        st.hosts[i].twilld_pid = Some(child.id());
        st.save(dir)?;
    }
    for hs in &mut st.hosts {
        twill_testbed::wait_for(LEASE_TIMEOUT, || {
            interrupt::requested() || hs.subnet_file.exists()
        });
        interrupt::check()?;
        let env = wait_for_subnet(&hs.subnet_file, LEASE_TIMEOUT).with_context(|| {
            format!(
                "twilld on {} wrote no subnet file: {}",
                hs.name,
                twilld_log_hint(&st.name, &hs.name, o.logs_kept_on_failure)
            )
        })?;
        hs.subnet = env
            .ipv4
            .map(|p| p.subnet.to_string())
            .or_else(|| env.ipv6.map(|p| p.subnet.to_string()));
        let ipam_dir: PathBuf = HostFiles::under(dir, &hs.name).ipam_dir;
        cni::write_conflist(&hs.cni_conf_dir, &hs.subnet_file, &ipam_dir)?;
    }
    st.save(dir)?;
    Ok(())
}

/// twilld for host `h` as the lab runs it: in a session of its own, with the lab's flags and
/// `flags`.
pub fn twilld_command(st: &LabState, h: usize, flags: &[String]) -> TwilldCommand {
    let hs = &st.hosts[h];
    TwilldCommand::new(
        sibling("twilld"),
        st.etcd_endpoint.clone(),
        &hs.subnet_file,
        &hs.log,
    )
    .args(HEALTHZ_FLAGS)
    .args(
        st.backend
            .host_flags(hs.subnet_file.parent().unwrap_or(Path::new("."))),
    )
    .args(flags)
    .detached()
}

/// A busybox image in each host's twill-run store, and `per_host` containers from it.
fn start_containers(per_host: usize, dir: &Path, st: &mut LabState) -> anyhow::Result<()> {
    step(&format!(
        "starting {per_host} busybox containers per host with twill-run"
    ));
    let tarball = dir.join("busybox.tar");
    busybox_tarball(&tarball)?;
    for i in 0..st.hosts.len() {
        interrupt::check()?;
        let out = twill_run_to_the_end(st, i)?
            .args(["import"])
            .arg(&tarball)
            .arg("busybox")
            .output()
            .with_context(|| format!("running twill-run import on {}", st.hosts[i].name))?;
        anyhow::ensure!(
            out.status.success(),
            "importing busybox on {}: {}",
            st.hosts[i].name,
            String::from_utf8_lossy(&out.stderr)
        );
        for k in 1..=per_host {
            interrupt::check()?;
            let name = format!("{}c{k}", st.hosts[i].name);
            let ips = run_container(st, i, &name)?;
            let dual = st.ip_family == IpFamily::Dual;
            st.hosts[i].containers.push(ContainerState {
                name,
                ip: ips.first().cloned().unwrap_or_else(|| "-".into()),
                ip6: address_of(&ips, true).filter(|_| dual),
                reachable: None,
            });
            st.save(dir)?;
        }
    }
    Ok(())
}

/// Starts a busybox container `name` on host `h` that sleeps forever; its addresses (IPv4
/// first).
pub fn run_container(st: &LabState, h: usize, name: &str) -> anyhow::Result<Vec<String>> {
    let out = twill_run_to_the_end(st, h)?
        .args([
            "run",
            "-d",
            "--name",
            name,
            "busybox",
            "sleep",
            "1000000000",
        ])
        .output()
        .with_context(|| format!("running twill-run to start {name}"))?;
    anyhow::ensure!(
        out.status.success(),
        "starting {name}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let inspect = twill_run_to_the_end(st, h)?
        .args(["inspect", name])
        .output()
        .with_context(|| format!("running twill-run to inspect {name}"))?;
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_default();
    let mut ips: Vec<String> = v["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ips.sort_by_key(|ip| ip.contains(':'));
    Ok(ips)
}

/// Pings every container from every other one, at each of its addresses (both families in a
/// dual-stack lab), records who is reachable and prints the table; true when all are.
/// `logs_kept`: the caller removes the lab when not, keeping its logs.
pub fn check_all_pairs(
    dir: &Path,
    st: &mut LabState,
    backend: LabBackend,
    logs_kept: bool,
) -> anyhow::Result<bool> {
    if st.hosts.iter().any(|h| !h.containers.is_empty()) {
        step("checking that every container reaches every other one");
    }
    // (host, container, addresses to reach it at)
    let all: Vec<(usize, String, Vec<String>)> = st
        .hosts
        .iter()
        .enumerate()
        .flat_map(|(i, h)| {
            h.containers.iter().map(move |c| {
                let mut ips = vec![c.ip.clone()];
                ips.extend(c.ip6.clone());
                (i, c.name.clone(), ips)
            })
        })
        .collect();
    let ping = |from_host: usize, from: &str, ip: &str| -> bool {
        for _ in 0..10 {
            if interrupt::requested() {
                return false;
            }
            if twill_run(st, from_host)
                .ok()
                .and_then(|mut c| {
                    c.args(["exec", from, "ping", "-c1", "-W1", ip])
                        .output()
                        .ok()
                })
                .is_some_and(|o| o.status.success())
            {
                return true;
            }
        }
        false
    };
    let mut reach = vec![true; all.len()];
    let mut failed_v4 = 0;
    let mut failed_v6 = 0;
    for (a, (ha, na, _)) in all.iter().enumerate() {
        for (b, (_, _, ips)) in all.iter().enumerate() {
            if a == b {
                continue;
            }
            for ip in ips {
                if !ping(*ha, na, ip) {
                    reach[b] = false;
                    if ip.contains(':') {
                        failed_v6 += 1;
                    } else {
                        failed_v4 += 1;
                    }
                }
            }
        }
    }
    interrupt::check()?;
    let mut k = 0;
    for h in &mut st.hosts {
        for c in &mut h.containers {
            c.reachable = Some(reach[k]);
            k += 1;
        }
    }
    st.save(dir)?;
    crate::outln!();
    st.print_table(None);
    let ok = reach.iter().all(|r| *r);
    crate::outln!();
    let families = match st.ip_family {
        IpFamily::Ipv4 => "",
        IpFamily::Ipv6 => " (IPv6)",
        IpFamily::Dual => " in both families",
    };
    let flag = name_flag(&st.name);
    if ok && all.is_empty() {
        crate::outln!(
            "no containers (--containers-per-host 0). Try: twill-lab exec{flag} h1 ip route; twill-lab down{flag}"
        );
    } else if ok {
        // From the first container to the last one's last address (its own when it is alone).
        let (first, last) = (&all[0], &all[all.len() - 1]);
        crate::outln!(
            "all {} containers reach each other over {backend}{families}. Try: twill-lab exec{flag} {}/{} ping {}; twill-lab down{flag}",
            all.len(),
            st.hosts[first.0].name,
            first.1,
            last.2.last().map(String::as_str).unwrap_or("")
        );
    } else {
        crate::outln!("unreachable pairs: {failed_v4} over IPv4, {failed_v6} over IPv6");
        if logs_kept {
            crate::outln!(
                "some containers are unreachable: the agents' logs will be kept in {}",
                kept_logs_dir(&st.name).display()
            );
        } else {
            crate::outln!(
                "some containers are unreachable: look at `twill-lab logs{flag} HOST` and `twill-lab exec{flag} HOST ip route`"
            );
        }
    }
    Ok(ok)
}

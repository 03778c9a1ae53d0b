//! `twill-lab up`: every step through the test bed (cluster, etcd, agents, CNI config), the
//! state file saved after each so `down` can clean up after a crash.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use twill_testbed::{Cluster, Etcd, HostFiles, TwilldCommand, cni, wait_for_subnet};

use crate::backend::LabBackend;
use crate::binaries::{self, sibling, twill_run};
use crate::image::busybox_tarball;
use crate::state::{ContainerState, HostState, LabState, prefix, state_dir};

/// What `up` builds.
pub struct UpOptions {
    pub name: String,
    pub hosts: usize,
    pub backend: LabBackend,
    pub containers_per_host: usize,
    pub network: String,
}

/// Where each twilld serves `/healthz` and `/metrics`, inside its host's namespace.
const HEALTHZ_FLAGS: [&str; 4] = ["--healthz-ip", "127.0.0.1", "--healthz-port", "10256"];
/// How long an agent may take to lease its subnet.
const LEASE_TIMEOUT: Duration = Duration::from_secs(30);

fn step(msg: &str) {
    println!("==> {msg}");
}

/// Builds the lab; on failure says what failed and how to look, and leaves the state file for
/// `down`.
pub fn up(o: &UpOptions) -> anyhow::Result<bool> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "twill-lab needs root (it creates network namespaces)"
    );
    anyhow::ensure!((1..=50).contains(&o.hosts), "--hosts must be 1 to 50");
    let network: twill_netkit::ipnet::Ipv4Net = o
        .network
        .parse()
        .with_context(|| format!("--network {}: not an IPv4 CIDR", o.network))?;
    for bin in binaries::REQUIRED {
        let p = sibling(bin);
        anyhow::ensure!(
            p.is_file(),
            "{bin} not found next to twill-lab ({}): build the workspace (cargo build --release)",
            p.display()
        );
    }
    let dir = state_dir(&o.name);
    if dir.join("state.json").exists() {
        bail!(
            "lab {} exists: run `twill-lab down --name {}` first",
            o.name,
            o.name
        );
    }
    std::fs::create_dir_all(&dir)?;
    let mut st = LabState {
        name: o.name.clone(),
        backend: o.backend,
        network: network.to_string(),
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
    start_etcd(&cluster, &dir, &mut st, network, o.backend)?;
    start_agents(&cluster, &dir, &mut st)?;
    start_containers(o.containers_per_host, &dir, &mut st)?;
    check_all_pairs(&dir, &mut st, o.backend)
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

/// etcd in the underlay namespace, left running, with the network config written.
fn start_etcd(
    cluster: &Cluster,
    dir: &Path,
    st: &mut LabState,
    network: twill_netkit::ipnet::Ipv4Net,
    backend: LabBackend,
) -> anyhow::Result<()> {
    step(&format!(
        "starting etcd in the underlay namespace at {}:2379",
        cluster.underlay_ip()
    ));
    let etcd = Etcd::start_in(&cluster.underlay, cluster.underlay_ip(), false)?;
    let config =
        serde_json::json!({"Network": network.to_string(), "Backend": {"Type": backend.as_str()}});
    etcd.put_network_config(&config.to_string())
        .context("writing the network config")?;
    st.etcd_endpoint = etcd.endpoint();
    let (pid, etcd_dir) = etcd.detach();
    st.etcd_pid = pid;
    st.etcd_dir = Some(etcd_dir);
    st.save(dir)?;
    Ok(())
}

/// A twilld per host (in a session of its own, so it outlives `up`); once each has leased a
/// subnet, its host's conflist.
fn start_agents(cluster: &Cluster, dir: &Path, st: &mut LabState) -> anyhow::Result<()> {
    step("starting twilld on every host");
    for (i, h) in cluster.hosts.iter().enumerate() {
        let hs = &st.hosts[i];
        let child = TwilldCommand::new(
            sibling("twilld"),
            st.etcd_endpoint.clone(),
            &hs.subnet_file,
            &hs.log,
        )
        .args(HEALTHZ_FLAGS)
        .detached()
        .spawn_in(&h.netns)
        .context("starting twilld")?;
        st.hosts[i].twilld_pid = Some(child.id());
        st.save(dir)?;
    }
    for hs in &mut st.hosts {
        let env = wait_for_subnet(&hs.subnet_file, LEASE_TIMEOUT).with_context(|| {
            format!(
                "twilld on {} wrote no subnet file: look at `twill-lab logs {} --name {}`",
                hs.name, hs.name, st.name
            )
        })?;
        hs.subnet = Some(env.subnet.to_string());
        let ipam_dir: PathBuf = HostFiles::under(dir, &hs.name).ipam_dir;
        cni::write_conflist(&hs.cni_conf_dir, &hs.subnet_file, &ipam_dir)?;
    }
    st.save(dir)?;
    Ok(())
}

/// A busybox image in each host's twill-run store, and `per_host` containers from it.
fn start_containers(per_host: usize, dir: &Path, st: &mut LabState) -> anyhow::Result<()> {
    step(&format!(
        "starting {per_host} busybox containers per host with twill-run"
    ));
    let tarball = dir.join("busybox.tar");
    busybox_tarball(&tarball)?;
    for i in 0..st.hosts.len() {
        let out = twill_run(st, i)?
            .args(["import"])
            .arg(&tarball)
            .arg("busybox")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "importing busybox on {}: {}",
            st.hosts[i].name,
            String::from_utf8_lossy(&out.stderr)
        );
        for k in 1..=per_host {
            let name = format!("{}c{k}", st.hosts[i].name);
            let out = twill_run(st, i)?
                .args([
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "busybox",
                    "sleep",
                    "1000000000",
                ])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "starting {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let inspect = twill_run(st, i)?.args(["inspect", &name]).output()?;
            let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_default();
            let ip = v["ips"][0].as_str().unwrap_or("-").to_string();
            st.hosts[i].containers.push(ContainerState {
                name,
                ip,
                reachable: None,
            });
            st.save(dir)?;
        }
    }
    Ok(())
}

/// Pings every container from every other one, records who is reachable and prints the
/// table; true when all are.
fn check_all_pairs(dir: &Path, st: &mut LabState, backend: LabBackend) -> anyhow::Result<bool> {
    step("checking that every container reaches every other one");
    let all: Vec<(usize, String, String)> = st
        .hosts
        .iter()
        .enumerate()
        .flat_map(|(i, h)| {
            h.containers
                .iter()
                .map(move |c| (i, c.name.clone(), c.ip.clone()))
        })
        .collect();
    let ping = |from_host: usize, from: &str, ip: &str| -> bool {
        for _ in 0..10 {
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
    for (a, (ha, na, _)) in all.iter().enumerate() {
        for (b, (_, _, ip)) in all.iter().enumerate() {
            if a != b && !ping(*ha, na, ip) {
                reach[b] = false;
            }
        }
    }
    let mut k = 0;
    for h in &mut st.hosts {
        for c in &mut h.containers {
            c.reachable = Some(reach[k]);
            k += 1;
        }
    }
    st.save(dir)?;
    println!();
    st.print_table();
    let ok = reach.iter().all(|r| *r);
    println!();
    if ok {
        println!(
            "all {} containers reach each other over {backend}. Try: twill-lab exec h1/h1c1 ping {}; twill-lab down",
            all.len(),
            all.last().map(|c| c.2.as_str()).unwrap_or("")
        );
    } else {
        println!(
            "some containers are unreachable: look at `twill-lab logs HOST` and `twill-lab exec HOST ip route`"
        );
    }
    Ok(ok)
}

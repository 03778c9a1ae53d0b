//! `twill-lab up`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use twill_netkit::Netns;
use twill_netkit::subnet_env::SubnetEnv;

use super::state::{ContainerState, HostState, LabState};
use super::{prefix, sibling, state_dir, twill_run};
use crate::testbed::{Cluster, Etcd, wait_for};

/// What `up` builds.
pub struct UpOptions {
    pub name: String,
    pub hosts: usize,
    pub backend: String,
    pub containers_per_host: usize,
    pub network: String,
}

fn step(msg: &str) {
    println!("==> {msg}");
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Puts `key`=`value` through etcd's HTTP gateway (from inside `ns`).
fn etcd_put(ns: &Netns, addr: SocketAddr, key: &str, value: &str) -> anyhow::Result<()> {
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64(key.as_bytes()),
        base64(value.as_bytes())
    );
    let resp = ns.enter(|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        write!(s, "POST /v3/kv/put HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r)
    })??;
    anyhow::ensure!(
        resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
        "etcd refused the network config: {resp}"
    );
    Ok(())
}

/// Builds the lab; on failure says what failed and how to look, and leaves the state file for
/// `down`.
pub fn up(o: &UpOptions) -> anyhow::Result<bool> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "twill-lab needs root (it creates network namespaces)"
    );
    anyhow::ensure!((1..=50).contains(&o.hosts), "--hosts must be 1 to 50");
    anyhow::ensure!(
        ["vxlan", "host-gw", "udp"].contains(&o.backend.as_str()),
        "--backend {} is not available: use vxlan, host-gw or udp",
        o.backend
    );
    let network: twill_netkit::ipnet::Ipv4Net = o
        .network
        .parse()
        .with_context(|| format!("--network {}: not an IPv4 CIDR", o.network))?;
    for bin in ["twilld", "twill", "twill-run"] {
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
        backend: o.backend.clone(),
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
        let hd = dir.join(format!("h{}", i + 1));
        std::fs::create_dir_all(hd.join("net.d"))?;
        st.hosts.push(HostState {
            name: format!("h{}", i + 1),
            netns: h.name.clone(),
            underlay_ip: h.ip.to_string(),
            log: hd.join("twilld.log"),
            subnet_file: hd.join("subnet.env"),
            cni_conf_dir: hd.join("net.d"),
            run_root: hd.join("run"),
            ..HostState::default()
        });
    }
    st.save(&dir)?;

    step(&format!(
        "starting etcd in the underlay namespace at {}:2379",
        cluster.underlay_ip()
    ));
    let etcd = Etcd::start_in(&cluster.underlay, cluster.underlay_ip(), false)?;
    st.etcd_endpoint = etcd.endpoint();
    let (pid, etcd_dir) = etcd.detach();
    st.etcd_pid = pid;
    st.etcd_dir = Some(etcd_dir);
    st.save(&dir)?;
    let config = format!(
        r#"{{"Network":"{network}","Backend":{{"Type":"{}"}}}}"#,
        o.backend
    );
    etcd_put(
        &cluster.underlay,
        SocketAddr::from((cluster.underlay_ip(), 2379)),
        "/coreos.com/network/config",
        &config,
    )?;

    step("starting twilld on every host");
    for (i, h) in cluster.hosts.iter().enumerate() {
        let hs = &st.hosts[i];
        let log = std::fs::File::create(&hs.log)?;
        let mut c = Command::new(sibling("twilld"));
        c.args(["--etcd-endpoints", &st.etcd_endpoint, "--iface", "eth0"])
            .args(["--healthz-ip", "127.0.0.1", "--healthz-port", "10256"])
            .arg("--subnet-file")
            .arg(&hs.subnet_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        h.netns.prepare_command(&mut c)?;
        // SAFETY: setsid is async-signal-safe; the agent outlives this command.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = c.spawn().context("starting twilld")?;
        st.hosts[i].twilld_pid = Some(child.id());
        st.save(&dir)?;
    }
    for i in 0..st.hosts.len() {
        let f = st.hosts[i].subnet_file.clone();
        if !wait_for(Duration::from_secs(30), || SubnetEnv::read(&f).is_ok()) {
            bail!(
                "twilld on {} wrote no subnet file within 30 s: look at `twill-lab logs {} --name {}`",
                st.hosts[i].name,
                st.hosts[i].name,
                o.name
            );
        }
        st.hosts[i].subnet = Some(SubnetEnv::read(&f)?.subnet.to_string());
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "name": "twill",
            "plugins": [
                {"type": "twill", "subnetFile": f, "dataDir": dir.join(format!("h{}", i + 1)).join("ipam")},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(
            st.hosts[i].cni_conf_dir.join("10-twill.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
    }
    st.save(&dir)?;

    step(&format!(
        "starting {} busybox containers per host with twill-run",
        o.containers_per_host
    ));
    let tarball = dir.join("busybox.tar");
    super::busybox_tarball(&tarball)?;
    for i in 0..st.hosts.len() {
        let out = twill_run(&st, i)?
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
        for k in 1..=o.containers_per_host {
            let name = format!("{}c{k}", st.hosts[i].name);
            let out = twill_run(&st, i)?
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
            let inspect = twill_run(&st, i)?.args(["inspect", &name]).output()?;
            let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_default();
            let ip = v["ips"][0].as_str().unwrap_or("-").to_string();
            st.hosts[i].containers.push(ContainerState {
                name,
                ip,
                reachable: None,
            });
            st.save(&dir)?;
        }
    }

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
            if twill_run(&st, from_host)
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
    st.save(&dir)?;
    println!();
    st.print_table();
    let ok = reach.iter().all(|r| *r);
    println!();
    if ok {
        println!(
            "all {} containers reach each other over {}. Try: twill-lab exec h1/h1c1 ping {}; twill-lab down",
            all.len(),
            o.backend,
            all.last().map(|c| c.2.as_str()).unwrap_or("")
        );
    } else {
        println!(
            "some containers are unreachable: look at `twill-lab logs HOST` and `twill-lab exec HOST ip route`"
        );
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(
            super::base64(b"/coreos.com/network/config"),
            "L2NvcmVvcy5jb20vbmV0d29yay9jb25maWc="
        );
    }
}

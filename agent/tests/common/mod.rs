//! A cluster of hosts (namespaces) with etcd in the underlay namespace, a real `twilld` per
//! host and containers attached with the twill CNI plugin (run in-process inside the host's
//! namespace: the same code the `twill` binary runs).

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use twill_netkit::Netns;
use twill_netkit::subnet_env::SubnetEnv;
use twill_testbed::{
    Cluster, Etcd, EtcdTls, HostFiles, TwilldCommand, cni, http, wait_for, wait_for_subnet,
};

pub const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

/// `etcdctl` (API v3) against `endpoint` from this namespace: asserts it succeeded and returns
/// what it printed.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("running etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An address on the lab's underlay subnet that no host holds: what `--public-ip` names in
/// the tests of a node behind a NAT (its outside address), never a target of traffic.
pub const NAT_OUTSIDE: &str = "172.31.0.201";

pub struct Container {
    pub host: usize,
    pub name: String,
    pub netns: Netns,
    pub ip: String,
    /// Its IPv6 address on a dual-stack or IPv6-only network.
    pub ip6: Option<String>,
}

pub struct AgentLab {
    pub cluster: Cluster,
    pub etcd: Etcd,
    pub dir: TempDir,
    pub agents: Vec<Option<Child>>,
    pub containers: Vec<Container>,
    pub extra_args: Vec<Vec<String>>,
    /// twilld's client certificate flags when etcd runs with TLS.
    pub tls_args: Vec<String>,
}

impl AgentLab {
    /// `hosts` hosts, etcd in the underlay, `config` written to /coreos.com/network/config.
    pub fn new(prefix: &str, hosts: usize, config: &str) -> AgentLab {
        AgentLab::build(prefix, hosts, config, false)
    }

    /// Like `new`, with etcd serving TLS and requiring client certificates.
    pub fn new_tls(prefix: &str, hosts: usize, config: &str) -> AgentLab {
        AgentLab::build(prefix, hosts, config, true)
    }

    fn build(prefix: &str, hosts: usize, config: &str, tls: bool) -> AgentLab {
        let cluster = Cluster::builder(prefix)
            .hosts(hosts)
            .build()
            .expect("building the cluster");
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls.then(|| {
            EtcdTls::generate(dir.path(), cluster.underlay_ip()).expect("making certificates")
        });
        let tls_args = tls.iter().flat_map(EtcdTls::twilld_flags).collect();
        let etcd = Etcd::start_in_with(&cluster.underlay, cluster.underlay_ip(), true, tls)
            .expect("starting etcd");
        let lab = AgentLab {
            cluster,
            etcd,
            dir,
            agents: (0..hosts).map(|_| None).collect(),
            containers: Vec::new(),
            extra_args: vec![Vec::new(); hosts],
            tls_args,
        };
        // With TLS the fixture only knows the port accepts; retry until etcd answers.
        let ok = wait_for(Duration::from_secs(20), || {
            lab.etcd
                .put_network_config(config)
                .inspect_err(|e| eprintln!("{e}"))
                .is_ok()
        });
        assert!(
            ok,
            "etcd never accepted the network config; etcd log:\n{}",
            lab.etcd.log_tail()
        );
        lab
    }

    pub fn endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    /// etcdctl run inside the underlay namespace.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        match self.try_etcdctl(args) {
            Some(out) => out,
            None => panic!("etcdctl {args:?} failed"),
        }
    }

    /// etcdctl, None on failure (the error is printed).
    pub fn try_etcdctl(&self, args: &[&str]) -> Option<String> {
        self.etcd
            .etcdctl(args)
            .inspect_err(|e| eprintln!("{e}"))
            .ok()
    }

    /// Host `h`'s files (subnet file, IPAM store, twilld's log).
    pub fn files(&self, h: usize) -> HostFiles {
        HostFiles::under(self.dir.path(), &format!("h{h}"))
    }

    pub fn subnet_file(&self, h: usize) -> PathBuf {
        self.files(h).subnet_file
    }

    pub fn log_path(&self, h: usize) -> PathBuf {
        self.files(h).log
    }

    pub fn log(&self, h: usize) -> String {
        std::fs::read_to_string(self.log_path(h)).unwrap_or_default()
    }

    /// `twilld status` in host `h`'s namespace, against the lab's etcd and the host's subnet
    /// file, with `extra` flags: asserts it succeeded and returns what it printed.
    pub fn twilld_status(&self, h: usize, extra: &[&str]) -> String {
        let mut c = Command::new(TWILLD);
        c.args(["--etcd-endpoints", &self.endpoint(), "--subnet-file"])
            .arg(self.subnet_file(h))
            .args(extra)
            .arg("status");
        self.cluster.host(h).netns.prepare_command(&mut c).unwrap();
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Starts twilld on host `h` (1-based) with `--iface eth0`, a 1 s reconcile interval and
    /// the host's own subnet file, plus `extra` flags.
    pub fn start_agent(&mut self, h: usize, extra: &[&str]) {
        self.start_agent_via(h, Path::new(TWILLD), extra);
    }

    /// [`AgentLab::start_agent`] through `binary`: twilld itself, or a wrapper that ends by
    /// exec'ing it with the arguments it was given.
    pub fn start_agent_via(&mut self, h: usize, binary: &Path, extra: &[&str]) {
        let files = self.files(h);
        let agent = TwilldCommand::new(binary, self.endpoint(), files.subnet_file, files.log)
            .args([
                "--reconcile-interval",
                "1",
                "--log-level",
                "info,twill_agent=debug",
            ])
            .args(&self.tls_args)
            .args(extra)
            .spawn_in(&self.cluster.host(h).netns)
            .expect("starting twilld");
        self.extra_args[h - 1] = extra.iter().map(|s| s.to_string()).collect();
        self.agents[h - 1] = Some(agent);
    }

    /// Whether host `h`'s agent exits (by itself) within `timeout`.
    pub fn agent_exits_within(&mut self, h: usize, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.agents[h - 1]
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
        })
    }

    /// SIGKILLs host `h`'s agent (by PID) and reaps it.
    pub fn kill_agent(&mut self, h: usize) {
        if let Some(mut c) = self.agents[h - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs host `h`'s agent and waits for a clean exit.
    pub fn stop_agent(&mut self, h: usize) -> std::process::ExitStatus {
        let mut c = self.agents[h - 1].take().expect("agent running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().unwrap()
    }

    /// Whether a UDP socket of host `h` is bound to `addr` (`ip:port`).
    pub fn udp_bound(&self, h: usize, addr: &str) -> bool {
        let name = &self.cluster.host(h).name;
        twill_tests::run("ip", &["netns", "exec", name, "ss", "-ulnH"])
            .split_whitespace()
            .any(|w| w == addr)
    }

    /// Asserts that a lease in etcd advertises `ip` as its `PublicIP`.
    pub fn assert_advertised(&self, ip: &str) {
        let leases = self.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
        assert!(
            leases.contains(&format!(r#""PublicIP":"{ip}""#)),
            "no lease advertises {ip}: {leases}"
        );
    }

    /// Waits for host `h`'s subnet file.
    pub fn wait_subnet(&self, h: usize) -> SubnetEnv {
        wait_for_subnet(&self.subnet_file(h), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("host {h}: {e}; log:\n{}", self.log(h)))
    }

    /// Waits until `check` holds, or fails with every agent's log.
    pub fn eventually(&self, what: &str, secs: u64, check: impl FnMut() -> bool) {
        if !wait_for(Duration::from_secs(secs), check) {
            let logs: String = (1..=self.agents.len())
                .map(|h| format!("--- h{h}:\n{}\n", self.log(h)))
                .collect();
            panic!("{what} did not happen within {secs}s\n{logs}");
        }
    }

    /// Attaches a container to host `h` with the twill CNI plugin; returns its IP.
    pub fn add_container(&mut self, h: usize) -> String {
        let n = self.containers.len();
        let suffix = format!("h{h}c{n}");
        let netns = self.cluster.extra_netns(&suffix).expect("container netns");
        let files = self.files(h);
        let conf = cni::plugin_config(&files.subnet_file, &files.ipam_dir).to_string();
        let netns_path = netns.path().display().to_string();
        let id = format!("ctr{n}");
        let get = |k: &str| -> Option<String> {
            match k {
                "CNI_COMMAND" => Some("ADD".into()),
                "CNI_CONTAINERID" => Some(id.clone()),
                "CNI_NETNS" => Some(netns_path.clone()),
                "CNI_IFNAME" => Some("eth0".into()),
                "CNI_PATH" => Some("/usr/lib/cni".into()),
                _ => None,
            }
        };
        let out = self
            .cluster
            .host(h)
            .netns
            .enter(|| twill_cni::run(&get, conf.as_bytes()))
            .unwrap();
        assert_eq!(out.exit_code, 0, "CNI ADD on h{h}: {}", out.stdout);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let addrs: Vec<String> = v["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let cidr = a["address"].as_str().unwrap();
                cidr.split('/').next().unwrap().to_string()
            })
            .collect();
        let ip = addrs[0].clone();
        let ip6 = addrs.iter().find(|a| a.contains(':')).cloned();
        self.containers.push(Container {
            host: h,
            name: self.cluster.prefix().to_string() + "-" + &suffix,
            netns,
            ip: ip.clone(),
            ip6,
        });
        ip
    }

    /// Whether `from` (a container index) reaches `ip` with one ping.
    pub fn ping(&self, from: usize, ip: &str) -> bool {
        let mut c = Command::new("ping");
        c.args(["-c1", "-W1", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.containers[from].netns.prepare_command(&mut c).unwrap();
        c.status().map(|s| s.success()).unwrap_or(false)
    }

    /// Pairs (from, to) of containers that cannot reach each other.
    pub fn unreachable_pairs(&self) -> Vec<(usize, usize)> {
        let mut bad = Vec::new();
        for a in 0..self.containers.len() {
            for b in 0..self.containers.len() {
                if a != b && !self.ping(a, &self.containers[b].ip) {
                    bad.push((a, b));
                }
            }
        }
        bad
    }

    /// An HTTP/1.0 GET of `path` on 127.0.0.1:`port` inside host `h` (empty when refused).
    pub fn http_get(&self, h: usize, port: u16, path: &str) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.cluster
            .host(h)
            .netns
            .enter(|| http::get(addr, path))
            .unwrap_or_default()
    }

    /// `ip -j route show proto 116` on host `h`.
    pub fn twill_routes(&self, h: usize) -> Vec<serde_json::Value> {
        twill_tests::ip_json(
            &self.cluster.host(h).name,
            &["route", "show", "proto", "116"],
        )
        .as_array()
        .cloned()
        .unwrap_or_default()
    }
}

impl Drop for AgentLab {
    fn drop(&mut self) {
        for h in 1..=self.agents.len() {
            self.kill_agent(h);
        }
    }
}

/// Runs `script` with `sh` in a private mount namespace whose /run is a fresh tmpfs with
/// `/run/wireguard` bound to `dir` (how `wg` and wireguard-go find UAPI sockets), inside
/// network namespace `netns` if given. Returns (success, stdout + stderr).
pub fn in_wg_dir(netns: Option<&str>, dir: &Path, script: &str) -> (bool, String) {
    let setup = format!(
        "mount -t tmpfs none /run && mkdir -p /run/wireguard && mount --bind {} /run/wireguard && {script}",
        dir.display()
    );
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "unshare", "-m", "sh", "-c", &setup]);
            c
        }
        None => {
            let mut c = Command::new("unshare");
            c.args(["-m", "sh", "-c", &setup]);
            c
        }
    };
    let out = c.stdin(Stdio::null()).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Recomputes the IPv4 header checksum (a 20-byte header).
pub fn set_header_checksum(p: &mut [u8]) {
    p[10..12].copy_from_slice(&[0, 0]);
    let c = twill_agent::engine::packet::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// An IPv4 header (20 bytes) for `payload_len` bytes of protocol `proto`.
pub fn ipv4_header(
    from: Ipv4Addr,
    to: Ipv4Addr,
    proto: u8,
    payload_len: usize,
    id: u16,
) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&to.octets());
    set_header_checksum(&mut ip);
    ip
}

/// A UDP datagram `port` → `port` carrying `payload` (checksum 0: none, allowed over IPv4).
pub fn udp_datagram(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    udp
}

/// Sends whole IPv4 packets (headers written by the caller, any source) to `to` through a raw
/// socket in `netns`.
pub fn send_ip(netns: &twill_netkit::Netns, to: Ipv4Addr, packets: &[Vec<u8>]) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let fd = netns
        .enter(|| {
            // SAFETY: plain socket(2); owned right away. IPPROTO_RAW implies IP_HDRINCL.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd is fresh and ours.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .unwrap();
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    for ip in packets {
        // SAFETY: sends our buffer to a valid sockaddr_in.
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                ip.as_ptr() as *const libc::c_void,
                ip.len(),
                0,
                &dst as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            ip.len() as isize,
            "raw send: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Deterministic test data (xorshift).
pub fn test_data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Listens on `bind` in container `to`: the thread returned accepts one connection and
/// returns all it read from it.
pub fn tcp_receiver(lab: &AgentLab, to: usize, bind: &str) -> std::thread::JoinHandle<Vec<u8>> {
    use std::io::Read;
    let listener = lab.containers[to]
        .netns
        .enter(|| std::net::TcpListener::bind(bind))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    })
}

/// Sends `payload` over TCP from container `from` to container `to` at `dst_ip` (either
/// family); returns what arrived.
pub fn tcp_transfer_to(
    lab: &AgentLab,
    from: usize,
    to: usize,
    dst_ip: &str,
    payload: &[u8],
) -> Vec<u8> {
    use std::io::Write;
    use std::net::TcpStream;
    let any = if dst_ip.contains(':') {
        "[::]:5001"
    } else {
        "0.0.0.0:5001"
    };
    let receiver = tcp_receiver(lab, to, any);
    let dst = SocketAddr::new(dst_ip.parse().unwrap(), 5001);
    let mut s = lab.containers[from]
        .netns
        .enter(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    s.write_all(payload).unwrap();
    drop(s);
    receiver.join().unwrap()
}

/// Sends `payload` over TCP from container `from` to container `to`'s IPv4 address.
pub fn tcp_transfer(lab: &AgentLab, from: usize, to: usize, payload: &[u8]) -> Vec<u8> {
    let ip = lab.containers[to].ip.clone();
    tcp_transfer_to(lab, from, to, &ip, payload)
}

/// Sends `payload` from container `from` to `to` and fails unless it arrives byte for byte.
pub fn assert_transfer_intact(lab: &AgentLab, from: usize, to: usize, payload: &[u8], what: &str) {
    assert!(
        tcp_transfer(lab, from, to, payload) == payload,
        "{what} corrupted"
    );
}

impl AgentLab {
    /// Host `h`'s wireguard key file (each twilld on this machine has its own).
    pub fn wg_key_file(&self, h: usize) -> PathBuf {
        self.dir.path().join(format!("h{h}-wgkey"))
    }

    /// Host `h`'s UAPI socket directory.
    pub fn wg_socket_dir(&self, h: usize) -> PathBuf {
        self.dir.path().join(format!("h{h}-wg"))
    }

    /// Starts host `h`'s twilld with its own key file, socket directory and metrics port.
    pub fn start_wireguard_agent(&mut self, h: usize, metrics_port: u16) {
        self.start_wireguard_agent_with(h, metrics_port, &[]);
    }

    /// [`AgentLab::start_wireguard_agent`] with more flags.
    pub fn start_wireguard_agent_with(&mut self, h: usize, metrics_port: u16, extra: &[&str]) {
        self.start_wireguard_agent_via(h, Path::new(TWILLD), metrics_port, extra);
    }

    /// [`AgentLab::start_wireguard_agent_with`] through `binary` (see `start_agent_via`).
    pub fn start_wireguard_agent_via(
        &mut self,
        h: usize,
        binary: &Path,
        metrics_port: u16,
        extra: &[&str],
    ) {
        let port = metrics_port.to_string();
        let key = self.wg_key_file(h).display().to_string();
        let sock = self.wg_socket_dir(h).display().to_string();
        let mut args = vec![
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            &port,
            "--wireguard-key-file",
            &key,
            "--wireguard-socket-dir",
            &sock,
        ];
        args.extend_from_slice(extra);
        self.start_agent_via(h, binary, &args);
    }
}

/// The public key (base64) of the wireguard private key in `file`.
pub fn wg_public_of(file: &Path) -> String {
    use base64::Engine as _;
    let text = std::fs::read_to_string(file).unwrap();
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap()
        .try_into()
        .unwrap();
    let secret = boringtun::x25519::StaticSecret::from(bytes);
    base64::engine::general_purpose::STANDARD
        .encode(boringtun::x25519::PublicKey::from(&secret).as_bytes())
}

/// Checks Flannel's layout of a TUN backend's device on host `h`: `dev` with MTU `mtu` (also
/// subnet.env's) and the subnet's `.0` as a /32. Returns subnet.env.
pub fn assert_flannel_tun_device(lab: &AgentLab, h: usize, dev: &str, mtu: u32) -> SubnetEnv {
    let env = lab.wait_subnet(h);
    assert_eq!(env.mtu, mtu);
    let host = lab.cluster.host(h).name.clone();
    let link = twill_tests::ip_link(&host, dev);
    assert_eq!(link["mtu"], mtu);
    let addrs = twill_tests::ip_json(&host, &["-4", "addr", "show", "dev", dev]);
    let a = &addrs[0]["addr_info"][0];
    let subnet = env.ipv4.as_ref().unwrap().subnet.network().to_string();
    assert_eq!(
        (a["local"].as_str(), a["prefixlen"].as_u64()),
        (Some(subnet.as_str()), Some(32)),
        "{addrs}"
    );
    env
}

/// A TUN backend's device `dev` on host `h`, carrying the overlay `network`, set down by hand
/// and then stripped of its address: twilld sets it up again with its route (down, the
/// kernel drops the route to the network and refuses a new one via the device) and puts the
/// address back (host-to-pod traffic would leave from another address), and the pods reach
/// each other again. The udp and wireguard backends repair their devices the same way.
pub fn assert_tun_device_repaired(lab: &AgentLab, h: usize, dev: &str, network: &str) {
    let host = lab.cluster.host(h).name.clone();
    let own = lab
        .wait_subnet(h)
        .ipv4
        .unwrap()
        .subnet
        .network()
        .to_string();
    let state = || {
        let link = twill_tests::ip_link(&host, dev);
        let addrs = twill_tests::ip_json(&host, &["-4", "addr", "show", "dev", dev]);
        let routes = twill_tests::ip_json(&host, &["route", "show", network, "dev", dev]);
        (
            link["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            addrs.to_string().contains(&format!("\"{own}\"")),
            routes.as_array().map_or(0, Vec::len),
        )
    };
    assert_eq!(state(), (true, true, 1), "{dev} before");

    twill_tests::run("ip", &["-n", &host, "link", "set", dev, "down"]);
    lab.eventually(
        &format!("{dev} set down is set up again, its route back"),
        10,
        || state() == (true, true, 1),
    );
    lab.eventually("pods reachable again", 15, || {
        lab.unreachable_pairs().is_empty()
    });

    twill_tests::run("ip", &["-n", &host, "addr", "flush", "dev", dev]);
    lab.eventually(&format!("{dev}'s address is restored"), 10, || {
        state() == (true, true, 1)
    });
    assert!(lab.unreachable_pairs().is_empty());
}

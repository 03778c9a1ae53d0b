//! The user-space WireGuard anchors of `twill-lab bench` (`wireguard-go`, `boringtun`): a
//! wireguard lab whose twilld are replaced by wireguard-go (Debian's, or the newer one
//! `$TWILL_LAB_WIREGUARD_GO` names) or by boringtun-cli, set up the way Flannel sets up its
//! wireguard device and peers (`wg set` with the same private key, listen port, peer = the
//! other host's public key, endpoint and subnet; `<subnet>.0/32`, MTU − 80, the network routed
//! to the device), so the containers see the same network and twilld's wireguard is measured
//! against the user-space WireGuards people use where the kernel has no module. Each anchor
//! runs in a private mount namespace with a tmpfs on /run, since its UAPI socket path
//! (/var/run/wireguard/flannel-wg.sock) is not separated by network namespaces.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use twill_netkit::Netns;
use twill_testbed::wait_for;

use crate::backend::LabBackend;
use crate::relay::{take_over_host, wait_link};
use crate::state::LabState;

const DEVICE: &str = "flannel-wg";
const PORT: u16 = 51820;
/// Flannel's wireguard overhead: the device MTU is the underlay's less this.
const OVERHEAD: u32 = 80;
/// boringtun-cli's worker threads: one moved the most on a 2-vCPU machine of this kind (its
/// default of 4 moved less); `$TWILL_LAB_BORINGTUN_THREADS` overrides.
const BORINGTUN_THREADS: u32 = 1;

/// A user-space WireGuard that twilld's wireguard is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    WireguardGo,
    Boringtun,
}

impl Anchor {
    /// The anchor's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Anchor::WireguardGo => "wireguard-go",
            Anchor::Boringtun => "boringtun",
        }
    }

    /// The variable naming another binary (say, bookworm-backports' wireguard-go with TUN
    /// offloads unpacked beside Debian's, or a boringtun-cli `cargo install`ed elsewhere).
    fn env(self) -> &'static str {
        match self {
            Anchor::WireguardGo => "TWILL_LAB_WIREGUARD_GO",
            Anchor::Boringtun => "TWILL_LAB_BORINGTUN",
        }
    }

    /// The binary to run: the variable's, else the one on PATH.
    pub fn binary(self) -> String {
        std::env::var(self.env())
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| match self {
                Anchor::WireguardGo => "wireguard-go".to_string(),
                Anchor::Boringtun => "boringtun-cli".to_string(),
            })
    }

    fn boringtun_threads() -> u32 {
        std::env::var("TWILL_LAB_BORINGTUN_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(BORINGTUN_THREADS)
    }

    /// The anchor as reports name it: its version line (`wireguard-go v0.0.20230223`,
    /// `boringtun 0.7.1, 1 thread`).
    pub fn version(self) -> String {
        let line = Command::new(self.binary())
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("{} (version unknown)", self.name()));
        match self {
            Anchor::WireguardGo => line,
            Anchor::Boringtun => {
                let threads = Anchor::boringtun_threads();
                let s = if threads == 1 { "" } else { "s" };
                format!("{line}, {threads} thread{s}")
            }
        }
    }

    /// Whether the anchor and the tools to set it up are installed (it is measured only then).
    pub fn available(self) -> bool {
        let bin = self.binary();
        [bin.as_str(), "wg", "nsenter", "unshare"].iter().all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// The shell command (run in the host's netns and a private mount namespace) that starts
    /// the anchor in the foreground with the device `DEVICE`.
    fn exec_line(self) -> String {
        match self {
            Anchor::WireguardGo => format!("exec {} -f {DEVICE}", self.binary()),
            // Its log goes to the private /run; privileges stay (root in a lab anyway).
            Anchor::Boringtun => format!(
                "exec {} -f --disable-drop-privileges --threads {} -l /run/boringtun.log {DEVICE}",
                self.binary(),
                Anchor::boringtun_threads()
            ),
        }
    }
}

/// The running anchor processes; dropping it kills them (by PID).
pub struct Running {
    children: Vec<Child>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &mut Command, what: &str, stdin: Option<&str>) -> anyhow::Result<String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("{what}: starting"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Replaces the twilld of hosts 0 and 1 of the wireguard lab `st` with `anchor`.
pub fn start(anchor: Anchor, st: &mut LabState, dir: &Path) -> anyhow::Result<Running> {
    let name = anchor.name();
    if st.backend != LabBackend::Wireguard || st.hosts.len() < 2 {
        bail!("the {name} anchor replaces the agents of a wireguard lab with two hosts");
    }
    let mut keys = Vec::new();
    for h in &st.hosts[..2] {
        let host_dir = h.subnet_file.parent().context("host directory")?;
        let private = std::fs::read_to_string(host_dir.join("wgkey"))
            .with_context(|| format!("reading the wireguard key of {}", h.name))?;
        let public = run(
            Command::new("wg").arg("pubkey"),
            "wg pubkey",
            Some(&private),
        )?;
        keys.push((private.trim().to_string(), public));
    }
    let mut wg = Running {
        children: Vec::new(),
    };
    for i in 0..2 {
        let host = st.hosts[i].clone();
        let other = st.hosts[1 - i].clone();
        let subnet = host.subnet.clone().context("no subnet")?;
        let other_subnet = other.subnet.clone().context("no subnet")?;
        let address = subnet.split('/').next().unwrap_or_default().to_string();
        let ns = Netns::open(&host.netns)?;
        take_over_host(st, dir, i, &ns, DEVICE)?;
        let mtu = ns
            .run(|nl| async move { nl.require_link("eth0").await })?
            .mtu
            .saturating_sub(OVERHEAD);
        // `ip netns exec`, `unshare` and `sh` all exec: the child's PID is the anchor's.
        let child = Command::new("ip")
            .args(["netns", "exec", &host.netns, "unshare", "-m", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs none /run && mkdir -p /run/wireguard && {}",
                anchor.exec_line()
            ))
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().to_string();
        wg.children.push(child);
        if !wait_link(&ns, DEVICE, true) {
            bail!("{name} made no {DEVICE} in {}", host.name);
        }
        let script = format!(
            "wg set {DEVICE} private-key /dev/stdin listen-port {PORT} && \
             wg set {DEVICE} peer {peer} endpoint {ip}:{PORT} allowed-ips {other_subnet} && \
             ip addr add {address}/32 dev {DEVICE} && ip link set {DEVICE} mtu {mtu} up && \
             ip route replace {network} dev {DEVICE} scope link",
            peer = keys[1 - i].1,
            ip = other.underlay_ip,
            network = st.network,
        );
        let _ = wait_for(Duration::from_secs(5), || {
            run(
                Command::new("nsenter")
                    .args(["-t", &pid, "-m", "-n", "test", "-S"])
                    .arg(format!("/run/wireguard/{DEVICE}.sock")),
                "socket",
                None,
            )
            .is_ok()
        });
        run(
            Command::new("nsenter").args(["-t", &pid, "-m", "-n", "sh", "-c", &script]),
            &format!("configuring {name} on {} like Flannel", host.name),
            Some(&keys[i].0),
        )?;
    }
    Ok(wg)
}

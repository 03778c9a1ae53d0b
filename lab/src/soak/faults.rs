//! The faults the soak injects, one at a time: an etcd member, a twilld or a container is
//! killed and, after a random down time, started again. Each records its window (kill to
//! end of the settle time after it), which losses are charged to.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use twill_netkit::{Netlink, Netns, format_mac};
use twill_testbed::{EtcdCluster, http, wait_for};

use crate::binaries::{twill_run, twill_run_to_the_end};
use crate::commands::kill_pid;
use crate::state::LabState;
use crate::up::{run_container, twilld_command};

/// What a fault kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` of one etcd member (the quorum stays), then started again on its data.
    EtcdMember,
    /// `kill -9` of one host's twilld, then started again with the same flags.
    Twilld,
    /// A host's churn container removed (`twill-run rm -f`) and run again.
    Container,
}

impl FaultKind {
    pub const ALL: [FaultKind; 3] = [
        FaultKind::EtcdMember,
        FaultKind::Twilld,
        FaultKind::Container,
    ];
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::EtcdMember => "etcd member kill -9 + restart",
            FaultKind::Twilld => "twilld kill -9 + restart",
            FaultKind::Container => "container rm -f + run",
        })
    }
}

/// One injected fault; times are Unix seconds, like ping's timestamps.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    /// Which member, host or container.
    pub target: String,
    pub start: f64,
    /// Seconds it was down.
    pub down: f64,
    /// Seconds from the restart until it served again (etcd healthy, twilld's /healthz,
    /// the container reachable from every other host); None: it never did.
    pub recovered: Option<f64>,
    /// End of the window: the settle time after the restart.
    pub end: f64,
    /// What else the fault changed that can cost pings (the CNI bridge's MAC).
    pub note: Option<String>,
}

/// What one injection did.
pub struct Injected {
    pub target: String,
    pub recovered: Option<f64>,
    pub note: Option<String>,
}

/// A small seeded generator (xorshift64*): the same seed gives the same fault schedule.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.range(0, i as u64) as usize);
        }
    }
}

/// Where each twilld serves /healthz inside its host (see `up`).
const HEALTHZ: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 10256);
/// How long a restarted piece may take to serve again before the soak says it did not.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The lab as the fault injector sees it: its state (PIDs and IPs change with each restart)
/// and the etcd members this process owns.
pub struct Target<'a> {
    pub dir: &'a std::path::Path,
    pub st: &'a mut LabState,
    pub etcd: &'a mut EtcdCluster,
    pub twilld_flags: &'a [String],
    /// The container on each host that faults hit (the others keep pinging).
    pub churn: &'a str,
}

impl Target<'_> {
    /// Kills what `kind` names on a random member or host, waits `down`, starts it again and
    /// waits until it serves; returns the target's name and the recovery time.
    pub fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut Rng,
        down: Duration,
    ) -> anyhow::Result<Injected> {
        match kind {
            FaultKind::EtcdMember => {
                let m = rng.range(0, self.etcd.members.len() as u64 - 1) as usize;
                self.etcd.members[m].stop();
                std::thread::sleep(down);
                let restarted = Instant::now();
                self.etcd.members[m].start()?;
                self.st.etcd[m].pid = self.etcd.members[m].pid();
                self.st.save(self.dir)?;
                let ok = self.etcd.members[m].wait_healthy().is_ok();
                Ok(Injected {
                    target: format!("etcd m{m}"),
                    recovered: ok.then(|| restarted.elapsed().as_secs_f64()),
                    note: None,
                })
            }
            FaultKind::Twilld => {
                let h = rng.range(0, self.st.hosts.len() as u64 - 1) as usize;
                if let Some(pid) = self.st.hosts[h].twilld_pid.take() {
                    kill_pid(pid);
                    // This process started it: reap it so no zombie stays behind.
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
                }
                std::thread::sleep(down);
                let restarted = Instant::now();
                let netns = Netns::open(&self.st.hosts[h].netns)?;
                let child = twilld_command(self.st, h, self.twilld_flags)
                    .spawn_in(&netns)
                    .context("restarting twilld")?;
                self.st.hosts[h].twilld_pid = Some(child.id());
                self.st.save(self.dir)?;
                let ok = wait_for(RECOVERY_TIMEOUT, || {
                    netns
                        .enter(|| {
                            http::request(
                                HEALTHZ,
                                "GET",
                                "/healthz",
                                None,
                                Duration::from_millis(300),
                            )
                        })
                        .is_ok_and(|r| r.as_ref().is_ok_and(|body| http::is_ok(body)))
                });
                Ok(Injected {
                    target: self.st.hosts[h].name.clone(),
                    recovered: ok.then(|| restarted.elapsed().as_secs_f64()),
                    note: None,
                })
            }
            FaultKind::Container => {
                let h = rng.range(0, self.st.hosts.len() as u64 - 1) as usize;
                let name = format!("{}{}", self.st.hosts[h].name, self.churn);
                let mac_before = bridge_mac(&self.st.hosts[h].netns);
                let out = twill_run_to_the_end(self.st, h)?
                    .args(["rm", "-f", &name])
                    .output()
                    .with_context(|| format!("running twill-run rm -f {name}"))?;
                anyhow::ensure!(
                    out.status.success(),
                    "removing {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                std::thread::sleep(down);
                let restarted = Instant::now();
                let ip = run_container(self.st, h, &name)?
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                if let Some(c) = self.st.hosts[h]
                    .containers
                    .iter_mut()
                    .find(|c| c.name == name)
                {
                    c.ip = ip.clone();
                }
                self.st.save(self.dir)?;
                let ok = self.reachable_from_all(h, &ip);
                let mac_after = bridge_mac(&self.st.hosts[h].netns);
                let note = (mac_before != mac_after).then(|| {
                    format!(
                        "{} bridge {CNI_BRIDGE} changed its MAC {} → {}",
                        self.st.hosts[h].name,
                        mac_before.as_deref().unwrap_or("?"),
                        mac_after.as_deref().unwrap_or("?")
                    )
                });
                Ok(Injected {
                    target: name,
                    recovered: ok.then(|| restarted.elapsed().as_secs_f64()),
                    note,
                })
            }
        }
    }

    /// True once `ip` (a container on host `h`) answers a ping from the first container of
    /// every other host.
    fn reachable_from_all(&self, h: usize, ip: &str) -> bool {
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        (0..self.st.hosts.len()).filter(|&o| o != h).all(|o| {
            let Some(from) = self.st.hosts[o].containers.first() else {
                return true;
            };
            while Instant::now() < deadline {
                let answered = twill_run(self.st, o)
                    .ok()
                    .and_then(|mut c| {
                        c.args(["exec", &from.name, "ping", "-c1", "-W1", ip])
                            .output()
                            .ok()
                    })
                    .is_some_and(|o| o.status.success());
                if answered {
                    return true;
                }
            }
            false
        })
    }
}

/// The bridge the twill CNI plugin attaches containers to (its default).
const CNI_BRIDGE: &str = "cni0";

/// The MAC of a host's CNI bridge. The kernel gives a bridge whose address nobody set the
/// lowest MAC of its ports, so a container leaving or joining can change it under the ARP
/// caches of the other containers (their gateway's MAC).
fn bridge_mac(netns: &str) -> Option<String> {
    let ns = Netns::open(netns).ok()?;
    let link = ns
        .run(|nl: Netlink| async move { nl.link_by_name(CNI_BRIDGE).await })
        .ok()??;
    Some(format_mac(&link.mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..20).map(|_| r.range(3, 12)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(7).iter().all(|d| (3..=12).contains(d)));
    }
}

//! A simulated cluster: an underlay namespace holding a bridge, and N host namespaces, each
//! joined to the bridge by a veth pair (the kernel here has no `dummy` links) with its own
//! underlay addresses on `eth0`: one IPv4 and one IPv6 (added without DAD, so both are
//! usable at once), so dual-stack and IPv6-only networks run on the same cluster.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

use twill_netkit::ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_netkit::{Netlink, Netns};

use super::error::{LabError, Result};
use super::sweep::sweep;

/// Name of the bridge inside the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// Name of each host's underlay interface.
pub const HOST_IFACE: &str = "eth0";

/// One simulated host.
#[derive(Debug)]
pub struct Host {
    /// Namespace name, `<prefix>-h<N>`.
    pub name: String,
    pub netns: Netns,
    /// Underlay address of `eth0`.
    pub ip: Ipv4Addr,
    /// Underlay IPv6 address of `eth0`.
    pub ip6: Ipv6Addr,
    pub iface: &'static str,
}

/// Builds a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    prefix: String,
    hosts: usize,
    underlay: Ipv4Net,
    underlay6: Ipv6Net,
    mtu: u32,
}

impl ClusterBuilder {
    /// The IPv6 underlay subnet (default fd31::/64); the bridge gets ::1, host N gets ::(10+N).
    pub fn underlay6(mut self, net: Ipv6Net) -> Self {
        self.underlay6 = net;
        self
    }

    /// Number of hosts (default 2).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// The underlay subnet (default 172.31.0.0/24); the bridge gets .1, host N gets .(10+N).
    pub fn underlay(mut self, net: Ipv4Net) -> Self {
        self.underlay = net;
        self
    }

    /// MTU of the underlay links (default 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Creates everything, after sweeping leftovers of an earlier run with the same prefix.
    /// On failure, what was created is removed again.
    pub fn build(self) -> Result<Cluster> {
        if self.hosts == 0 || self.hosts as u32 + 10 >= (1u32 << (32 - self.underlay.prefix_len()))
        {
            return Err(LabError::Invalid(format!(
                "{} hosts do not fit the underlay {}",
                self.hosts, self.underlay
            )));
        }
        if self.underlay6.prefix_len() > 120 {
            return Err(LabError::Invalid(format!(
                "the IPv6 underlay {} is too small (longer than /120)",
                self.underlay6
            )));
        }
        let swept = sweep(&self.prefix)?;
        if !swept.is_empty() {
            tracing::warn!(prefix = %self.prefix, ?swept, "removed leftovers of an earlier run");
        }
        let underlay_name = format!("{}-ul", self.prefix);
        let underlay = Netns::create(&underlay_name)?;
        // From here on the guard in Cluster cleans up whatever happens.
        let mut cluster = Cluster {
            prefix: self.prefix.clone(),
            underlay_net: self.underlay,
            underlay_net6: self.underlay6,
            underlay,
            hosts: Vec::new(),
            keep: false,
        };
        let mtu = self.mtu;
        // The bridge itself gets .1, so services of the lab (etcd) can live in the underlay.
        let bridge_addr = IpNet::V4(
            Ipv4Net::new(cluster.underlay_ip(), self.underlay.prefix_len())
                .map_err(|e| LabError::Invalid(e.to_string()))?,
        );
        let bridge_addr6 = IpNet::V6(
            Ipv6Net::new(cluster.underlay_ip6(), self.underlay6.prefix_len())
                .map_err(|e| LabError::Invalid(e.to_string()))?,
        );
        let bridge = cluster.underlay.run(move |nl: Netlink| async move {
            lo_up(&nl).await?;
            let br = nl.ensure_bridge(UNDERLAY_BRIDGE, Some(mtu)).await?;
            nl.ensure_address(br.index, bridge_addr).await?;
            nl.ensure_address(br.index, bridge_addr6).await?;
            Ok::<_, twill_netkit::Error>(br)
        })?;
        for i in 1..=self.hosts {
            let name = format!("{}-h{i}", self.prefix);
            let netns = Netns::create(&name)?;
            let ip = Ipv4Addr::from(u32::from(self.underlay.network()) + 10 + i as u32);
            let ip6 = Ipv6Addr::from(u128::from(self.underlay6.network()) + 10 + i as u128);
            let peer_ns = &netns;
            cluster.underlay.run(move |nl: Netlink| async move {
                let port = format!("h{i}");
                let v = nl
                    .create_veth(&port, HOST_IFACE, peer_ns, Some(mtu))
                    .await?;
                nl.set_controller(v.index, bridge.index).await?;
                nl.set_up(v.index).await
            })?;
            let addr = IpNet::V4(
                Ipv4Net::new(ip, self.underlay.prefix_len())
                    .map_err(|e| LabError::Invalid(e.to_string()))?,
            );
            let addr6 = IpNet::V6(
                Ipv6Net::new(ip6, self.underlay6.prefix_len())
                    .map_err(|e| LabError::Invalid(e.to_string()))?,
            );
            netns.run(move |nl: Netlink| async move {
                lo_up(&nl).await?;
                let eth = nl.require_link(HOST_IFACE).await?;
                nl.ensure_address(eth.index, addr).await?;
                nl.ensure_address(eth.index, addr6).await?;
                nl.set_up(eth.index).await
            })?;
            cluster.hosts.push(Host {
                name,
                netns,
                ip,
                ip6,
                iface: HOST_IFACE,
            });
        }
        Ok(cluster)
    }
}

async fn lo_up(nl: &Netlink) -> twill_netkit::Result<()> {
    let lo = nl.require_link("lo").await?;
    nl.set_up(lo.index).await
}

/// A running simulated cluster. Dropping it removes every namespace under its prefix and
/// kills the processes left inside them.
#[derive(Debug)]
pub struct Cluster {
    prefix: String,
    underlay_net: Ipv4Net,
    underlay_net6: Ipv6Net,
    /// The namespace holding the underlay bridge.
    pub underlay: Netns,
    pub hosts: Vec<Host>,
    /// When set, dropping the value leaves the namespaces in place (a long-lived lab).
    keep: bool,
}

impl Cluster {
    /// Starts building a cluster whose namespaces are called `<prefix>-…`. Use a prefix that
    /// is unique per test (tests run in parallel) and stable across runs (so a crashed run's
    /// leftovers are swept).
    pub fn builder(prefix: &str) -> ClusterBuilder {
        ClusterBuilder {
            prefix: prefix.to_string(),
            hosts: 2,
            underlay: Ipv4Net::new(Ipv4Addr::new(172, 31, 0, 0), 24).unwrap_or_default(),
            underlay6: Ipv6Net::new(Ipv6Addr::new(0xfd31, 0, 0, 0, 0, 0, 0, 0), 64)
                .unwrap_or_default(),
            mtu: 1500,
        }
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlay subnet.
    pub fn underlay_net(&self) -> Ipv4Net {
        self.underlay_net
    }

    /// The underlay bridge's own address (`.1`), reachable from every host: where lab
    /// services such as etcd listen.
    pub fn underlay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.underlay_net.network()) + 1)
    }

    /// The IPv6 underlay subnet.
    pub fn underlay_net6(&self) -> Ipv6Net {
        self.underlay_net6
    }

    /// The underlay bridge's own IPv6 address (`::1`).
    pub fn underlay_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.underlay_net6.network()) + 1)
    }

    /// Host number `n` (1-based, as in its name).
    pub fn host(&self, n: usize) -> &Host {
        &self.hosts[n - 1]
    }

    /// Keeps the namespaces after this value is dropped (for `twill-lab up`, whose `down`
    /// removes them later with [`crate::sweep`]).
    pub fn persist(mut self) -> Cluster {
        self.keep = true;
        self
    }

    /// Creates an extra namespace `<prefix>-<suffix>` (a "container"), removed with the cluster.
    pub fn extra_netns(&self, suffix: &str) -> Result<Netns> {
        let ns = Netns::create(&format!("{}-{suffix}", self.prefix))?;
        ns.run(|nl: Netlink| async move { lo_up(&nl).await })?;
        Ok(ns)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = sweep(&self.prefix) {
            say_cleanup_failed(&self.prefix, &e);
        }
    }
}

/// Says on stderr that removing the namespaces of `prefix` failed, when stderr takes it: a
/// drop must not panic, and `eprintln!` does when stderr is a closed pipe (`twill-lab up 2>&1
/// | head -1`; a panic in a drop during unwinding aborts).
fn say_cleanup_failed(prefix: &str, e: &dyn std::fmt::Display) {
    tracing::error!(prefix = %prefix, error = %e, "cleaning up lab namespaces");
    let _ = writeln!(
        std::io::stderr(),
        "twill-lab: cleaning up namespaces {prefix}-*: {e}"
    );
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    const CHILD: &str = "TWILL_TESTBED_CLOSED_STDERR_CHILD";

    /// Waits until nobody reads this process's stderr any more (a pipe's writing end polls
    /// POLLERR once its reader is gone).
    fn wait_for_closed_stderr() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut fd = libc::pollfd {
                fd: libc::STDERR_FILENO,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd, its count 1, for the duration of the call.
            let n = unsafe { libc::poll(&mut fd, 1, 100) };
            if n > 0 && fd.revents & libc::POLLERR != 0 {
                return;
            }
            assert!(Instant::now() < deadline, "stderr never closed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Before, the message was an `eprintln!`, which panics on a closed stderr: this test's
    /// own binary, run again with stderr a pipe nobody reads, ended with a panic.
    #[test]
    fn a_failed_cleanup_is_said_without_panicking_on_a_closed_stderr() {
        let me = "cluster::tests::a_failed_cleanup_is_said_without_panicking_on_a_closed_stderr";
        if std::env::var_os(CHILD).is_some() {
            wait_for_closed_stderr();
            say_cleanup_failed("twtb-gone", &"no such namespace");
            return;
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([me, "--exact", "--nocapture"])
            .env(CHILD, "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert!(status.success(), "saying it on a closed stderr: {status}");
    }
}

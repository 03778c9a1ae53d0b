//! What the agent does to its node, behind one small trait so the lease state machine can be
//! tested without a kernel: take a subnet (subnet file, backend, firewall), make the kernel
//! match the peers, refresh the firewall, and say "ready". `HostNode` is the real node.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use ipnet::{Ipv4Net, Ipv6Net};
use twill_netkit::Netlink;
use twill_netkit::subnet_env::{SubnetEnv, SubnetPair};

use crate::backend::{AnyBackend, Backend, Peers};
use crate::lease::Subnets;
use crate::masq::{self, FirewallBackend};
use crate::metrics::Metrics;
use crate::netconf::NetworkConfig;

/// The node side of the agent. Used on the agent's one task, so futures need no `Send`.
#[allow(async_fn_in_trait)]
pub trait Node {
    /// This node now holds `subnet` (first lease, or a new one after losing the old).
    async fn set_subnet(&mut self, subnet: Subnets) -> anyhow::Result<()>;
    /// Makes the kernel match `peers` (level-triggered; failures are logged, not returned).
    async fn apply(&mut self, peers: &Peers);
    /// Re-installs what others may have removed behind our back (firewall rules).
    fn refresh(&mut self);
    /// The first lease is held and the first apply done.
    fn ready(&mut self);
}

/// Where and how the node publishes its subnet.
#[derive(Clone, Debug)]
pub struct HostSettings {
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    pub firewall: FirewallBackend,
    /// The underlay interface's name (its IPv6 router advertisements must survive forwarding).
    pub underlay_iface: String,
}

/// The real node: netlink, the backend, the subnet file and the firewall.
pub struct HostNode {
    nl: Netlink,
    backend: AnyBackend,
    /// The IPv4 network (`None` in an IPv6-only network) and the IPv6 one (`None` when off).
    network: Option<Ipv4Net>,
    network6: Option<Ipv6Net>,
    settings: HostSettings,
    metrics: Arc<Metrics>,
    subnet: Option<Subnets>,
    /// This node's lease value (its public addresses tell its own keys from peers').
    own: crate::lease::LeaseRecord,
}

impl HostNode {
    /// A node whose `backend` is already initialised.
    pub fn new(
        nl: Netlink,
        backend: AnyBackend,
        config: &NetworkConfig,
        settings: HostSettings,
        metrics: Arc<Metrics>,
    ) -> HostNode {
        if let Some(stats) = backend.data_path_stats() {
            let _ = metrics.data_path.set(stats);
        }
        HostNode {
            nl,
            own: backend.record(),
            backend,
            network: config.enable_ipv4.then_some(config.network),
            network6: config.ipv6.map(|c| c.network),
            settings,
            metrics,
            subnet: None,
        }
    }

    fn nets(&self, subnet: Subnets) -> masq::Nets {
        masq::Nets {
            v4: self.network.zip(subnet.v4),
            v6: self.network6.zip(subnet.v6),
        }
    }

    /// A netlink connection ends for good when one socket operation fails (netlink-proto
    /// drops it); without a new one every later reconcile would fail until a restart.
    fn reopen_netlink(&mut self) {
        match self.nl.reopen_if_closed() {
            Ok(true) => tracing::warn!("the netlink connection had ended: opened a new one"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "reopening the netlink connection"),
        }
    }

    fn install_firewall(&self, subnet: Subnets) -> Result<(), String> {
        masq::apply(
            self.settings.firewall,
            self.nets(subnet),
            self.settings.ip_masq,
        )
    }
}

/// With forwarding on, the kernel ignores router advertisements on interfaces whose
/// `accept_ra` is 1 (the default): a node whose IPv6 default route or address comes from RAs
/// (SLAAC, most clouds) would lose it when its lifetime runs out, and with it its peers.
/// `accept_ra` 2 takes them while forwarding; 0 (off) is the operator's choice and stays.
fn keep_router_advertisements(iface: &str) {
    let key = format!("net/ipv6/conf/{iface}/accept_ra");
    match twill_netkit::sysctl::read(&key) {
        Ok(v) if v.trim() == "1" => match twill_netkit::sysctl::ensure(&key, "2") {
            Ok(_) => tracing::info!(
                iface,
                "accept_ra set to 2: router advertisements keep working with IPv6 forwarding on"
            ),
            Err(e) => {
                tracing::warn!(iface, error = %e, "setting accept_ra to 2 (router advertisements stop with forwarding on)")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::debug!(iface, error = %e, "reading accept_ra"),
    }
}

impl Node for HostNode {
    async fn set_subnet(&mut self, subnet: Subnets) -> anyhow::Result<()> {
        self.reopen_netlink();
        let nets = self.nets(subnet);
        let env = SubnetEnv {
            ipv4: nets
                .v4
                .map(|(network, subnet)| SubnetPair { network, subnet }),
            ipv6: nets
                .v6
                .map(|(network, subnet)| SubnetPair { network, subnet }),
            mtu: self.backend.mtu(),
            ipmasq: self.settings.ip_masq,
        };
        let file = &self.settings.subnet_file;
        env.write(file)
            .with_context(|| format!("writing {}", file.display()))?;
        self.backend
            .set_local_subnet(&self.nl, subnet)
            .await
            .context("configuring the local subnet")?;
        if nets.v6.is_some() {
            // Routing IPv6 between pods and nodes needs forwarding in the node's namespace
            // (the kernel's default is off, unlike what most IPv4 hosts have by now).
            keep_router_advertisements(&self.settings.underlay_iface);
            if let Err(e) = twill_netkit::sysctl::ensure("net/ipv6/conf/all/forwarding", "1") {
                tracing::warn!(error = %e, "enabling IPv6 forwarding");
            }
        }
        if self.subnet.is_none() {
            if self.settings.firewall != masq::FirewallBackend::Iptables {
                masq::remove_legacy_table();
            }
            masq::remove_stale(self.settings.firewall, nets);
        }
        if let Err(e) = self.install_firewall(subnet) {
            tracing::warn!(error = %e, "installing firewall rules (is nftables or iptables installed?)");
        }
        if let Ok(mut l) = self.metrics.lease.lock() {
            *l = subnet.v4.map(|s| s.to_string()).unwrap_or_default();
        }
        if let Ok(mut l) = self.metrics.lease6.lock() {
            *l = subnet.v6.map(|s| s.to_string()).unwrap_or_default();
        }
        self.subnet = Some(subnet);
        Ok(())
    }

    async fn apply(&mut self, peers: &Peers) {
        self.reopen_netlink();
        let start = Instant::now();
        let errors = self.backend.apply(&self.nl, peers).await;
        let m = &self.metrics;
        m.reconcile_runs.fetch_add(1, Ordering::Relaxed);
        m.reconcile_micros_last
            .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        let routed = crate::backend::routed_peers(
            peers,
            self.network,
            self.network6,
            self.subnet.unwrap_or_default(),
            &self.own,
        );
        m.peers.store(routed as u64, Ordering::Relaxed);
        if !errors.is_empty() {
            m.reconcile_errors.fetch_add(1, Ordering::Relaxed);
            for e in errors.0 {
                tracing::warn!(error = %e, "reconcile");
            }
        }
    }

    fn refresh(&mut self) {
        if let Some(subnet) = self.subnet
            && let Err(e) = self.install_firewall(subnet)
        {
            tracing::warn!(error = %e, "re-applying firewall rules");
        }
    }

    fn ready(&mut self) {
        sd_notify("READY=1");
    }
}

/// Tells systemd about our state when run as a Type=notify unit (no-op otherwise).
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let p = path.to_string_lossy();
    let sent = if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &*p)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify");
    }
}

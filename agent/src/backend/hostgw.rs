//! host-gw: a route to each peer's subnet via the peer's public IP on the underlay link.
//! Needs L2 adjacency: a peer on another subnet is reported, not routed (Flannel's rule).

use ipnet::Ipv4Net;
use twill_netkit::{Netlink, Route};

use super::{ApplyErrors, Backend, Peers, Underlay, routes};
use crate::lease::LeaseRecord;
use crate::netconf::{BackendType, NetworkConfig};

/// The host-gw backend.
pub struct HostGw {
    underlay: Underlay,
    network: Ipv4Net,
    mtu_override: Option<u32>,
    local: Option<Ipv4Net>,
}

impl HostGw {
    pub fn new(config: &NetworkConfig, underlay: Underlay) -> HostGw {
        HostGw {
            underlay,
            network: config.network,
            mtu_override: config.backend.mtu,
            local: None,
        }
    }
}

/// The host-gw route to a peer, or why there can be none.
pub fn direct_route(
    underlay: &Underlay,
    subnet: Ipv4Net,
    peer: &LeaseRecord,
) -> Result<Route, String> {
    if !underlay.on_link(peer.public_ip) {
        return Err(format!(
            "peer {subnet} at {} is not on this node's L2 subnet {} ({}): host-gw needs direct reachability",
            peer.public_ip,
            underlay.net.trunc(),
            underlay.link.name
        ));
    }
    Ok(Route::new(subnet)
        .via(peer.public_ip)
        .dev(underlay.link.index))
}

impl Backend for HostGw {
    fn kind(&self) -> BackendType {
        BackendType::HostGw
    }
    fn mtu(&self) -> u32 {
        self.mtu_override.unwrap_or(self.underlay.link.mtu)
    }
    fn record(&self) -> LeaseRecord {
        LeaseRecord {
            public_ip: self.underlay.public_ip,
            backend: BackendType::HostGw,
            vtep_mac: None,
            vni: None,
            wireguard: None,
        }
    }
    async fn init(&mut self, _nl: &Netlink) -> twill_netkit::Result<()> {
        Ok(())
    }
    async fn set_local_subnet(
        &mut self,
        _nl: &Netlink,
        subnet: Ipv4Net,
    ) -> twill_netkit::Result<()> {
        self.local = Some(subnet);
        Ok(())
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        let mut errors = ApplyErrors::default();
        let mut desired = Vec::new();
        for (subnet, rec) in peers {
            if Some(*subnet) == self.local || rec.backend != BackendType::HostGw {
                continue;
            }
            match direct_route(&self.underlay, *subnet, rec) {
                Ok(r) => desired.push(r),
                Err(e) => errors.push(e),
            }
        }
        routes::reconcile(nl, self.network, &desired, &mut errors).await;
        errors
    }
}

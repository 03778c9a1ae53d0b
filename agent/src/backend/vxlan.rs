//! vxlan: device `flannel.<VNI>` (learning off, local = public IP, port 8472, MTU − 50), the
//! local VtepMAC published in the lease. Per peer, in this order: a permanent neighbour for
//! the peer's VTEP address (`<subnet>.0`), an FDB entry VtepMAC → public IP, then an onlink
//! route to the peer's subnet via that address (route last, so the kernel never ARPs).
//! `DirectRouting`: peers on the same L2 subnet get a host-gw route instead.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use twill_netkit::{FdbEntry, FdbMode, Link, Neighbour, Netlink, Route, VxlanSpec};

use super::{ApplyErrors, Backend, Peers, Underlay, hostgw, routes};
use crate::lease::LeaseRecord;
use crate::netconf::{BackendType, NetworkConfig};

/// VXLAN adds 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The VTEP MAC of a node: locally administered, derived from its public IP, so it stays the
/// same across restarts and reboots without being stored anywhere (Flannel's #1795).
pub fn vtep_mac(public_ip: Ipv4Addr) -> [u8; 6] {
    let o = public_ip.octets();
    [0x0e, 0x74, o[0], o[1], o[2], o[3]]
}

/// The vxlan backend.
pub struct Vxlan {
    underlay: Underlay,
    network: Ipv4Net,
    vni: u32,
    port: u16,
    direct_routing: bool,
    mtu_override: Option<u32>,
    mac: [u8; 6],
    device: Option<Link>,
    local: Option<Ipv4Net>,
}

impl Vxlan {
    pub fn new(config: &NetworkConfig, underlay: Underlay) -> Vxlan {
        Vxlan {
            mac: vtep_mac(underlay.public_ip),
            underlay,
            network: config.network,
            vni: config.backend.vni,
            port: config.backend.port,
            direct_routing: config.backend.direct_routing,
            mtu_override: config.backend.mtu,
            device: None,
            local: None,
        }
    }

    fn name(&self) -> String {
        format!("flannel.{}", self.vni)
    }
}

impl Backend for Vxlan {
    fn kind(&self) -> BackendType {
        BackendType::Vxlan
    }
    fn mtu(&self) -> u32 {
        self.mtu_override
            .unwrap_or(self.underlay.link.mtu.saturating_sub(VXLAN_OVERHEAD))
    }
    fn record(&self) -> LeaseRecord {
        LeaseRecord {
            public_ip: self.underlay.public_ip,
            backend: BackendType::Vxlan,
            vtep_mac: Some(self.mac),
            vni: Some(self.vni),
            wireguard: None,
        }
    }
    async fn init(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        let mut spec = VxlanSpec::new(&self.name(), self.vni);
        spec.port = self.port;
        spec.local = Some(self.underlay.public_ip);
        spec.underlay = Some(self.underlay.link.index);
        spec.mtu = Some(self.mtu());
        spec.mac = Some(self.mac);
        self.device = Some(nl.ensure_vxlan(&spec).await?);
        Ok(())
    }
    async fn set_local_subnet(
        &mut self,
        nl: &Netlink,
        subnet: Ipv4Net,
    ) -> twill_netkit::Result<()> {
        let dev = self
            .device
            .as_ref()
            .ok_or_else(|| twill_netkit::Error::Invalid("vxlan device not initialised".into()))?;
        super::set_subnet_address(nl, dev.index, subnet).await?;
        self.local = Some(subnet);
        Ok(())
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        let mut errors = ApplyErrors::default();
        let Some(dev) = self.device.clone() else {
            errors.push("vxlan device not initialised");
            return errors;
        };
        // The device may have been deleted by hand: re-create it (level-triggered).
        if !matches!(nl.link_by_index(dev.index).await, Ok(Some(ref l)) if l.name == dev.name) {
            tracing::warn!(device = %dev.name, "vxlan device missing: re-creating it");
            if let Err(e) = self.init(nl).await {
                errors.push(e);
                return errors;
            }
            if let Some(local) = self.local
                && let Err(e) = self.set_local_subnet(nl, local).await
            {
                errors.push(e);
            }
        }
        let Some(dev) = self.device.clone() else {
            return errors;
        };
        // Read the kernel's state once, then write only what differs: an event for one peer
        // costs a few dumps and a few writes, not one write per peer.
        let neighbours = match nl.list_neighbours(dev.index).await {
            Ok(l) => l,
            Err(e) => {
                errors.push(e);
                return errors;
            }
        };
        let fdb = match nl.list_fdb(dev.index).await {
            Ok(l) => l,
            Err(e) => {
                errors.push(e);
                return errors;
            }
        };
        let have_neigh: BTreeSet<(Ipv4Addr, [u8; 6])> =
            neighbours.iter().map(|n| (n.ip, n.mac)).collect();
        let have_fdb: BTreeSet<([u8; 6], IpAddr)> = fdb
            .iter()
            .filter_map(|f| f.dst.map(|d| (f.mac, d)))
            .collect();
        let mut want_neigh = BTreeSet::new();
        let mut want_fdb = BTreeSet::new();
        let mut desired_routes = Vec::new();
        for (subnet, rec) in peers {
            if Some(*subnet) == self.local || rec.backend != BackendType::Vxlan {
                continue;
            }
            if self.direct_routing && self.underlay.on_link(rec.public_ip) {
                match hostgw::direct_route(&self.underlay, *subnet, rec) {
                    Ok(r) => desired_routes.push(r),
                    Err(e) => errors.push(e),
                }
                continue;
            }
            let Some(mac) = rec.vtep_mac else { continue };
            let vtep = subnet.network();
            let dst = IpAddr::V4(rec.public_ip);
            // Neighbour, FDB, then route.
            if !have_neigh.contains(&(vtep, mac))
                && let Err(e) = nl
                    .replace_neighbour(&Neighbour {
                        ifindex: dev.index,
                        ip: vtep,
                        mac,
                    })
                    .await
            {
                errors.push(e);
                continue;
            }
            if !have_fdb.contains(&(mac, dst)) {
                let entry = FdbEntry {
                    ifindex: dev.index,
                    mac,
                    dst: Some(dst),
                    permanent: true,
                };
                if let Err(e) = nl.add_fdb(&entry, FdbMode::Replace).await {
                    errors.push(e);
                    continue;
                }
            }
            want_neigh.insert(vtep);
            want_fdb.insert((mac, rec.public_ip));
            desired_routes.push(Route::new(*subnet).via(vtep).dev(dev.index).onlink());
        }
        routes::reconcile(nl, self.network, &desired_routes, &mut errors).await;
        // Stale entries go after their routes.
        for n in neighbours.iter().filter(|n| !want_neigh.contains(&n.ip)) {
            if let Err(e) = nl.delete_neighbour(dev.index, n.ip).await {
                errors.push(e);
            }
        }
        for f in fdb {
            let keep = matches!(f.dst, Some(IpAddr::V4(d)) if want_fdb.contains(&(f.mac, d)));
            if !keep && let Err(e) = nl.delete_fdb(&f).await {
                errors.push(e);
            }
        }
        errors
    }
}

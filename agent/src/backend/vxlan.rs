//! vxlan: device `flannel.<VNI>` (learning off, local = the link's IPv4, port 8472, MTU − 50)
//! and, with IPv6, `flannel-v6.<VNI>` (local = the link's IPv6, MTU − 70), each with its own VtepMAC
//! published in the lease (`BackendData`, `BackendV6Data`). Per peer and family, in this
//! order: a permanent neighbour for the peer's VTEP address (`<subnet>.0`, `<v6 subnet>::`),
//! an FDB entry VtepMAC → public IP, then an onlink route to the peer's subnet via that address
//! (route last, so the kernel never resolves anything). `DirectRouting`: peers on the same L2
//! subnet get a host-gw route instead.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_netkit::{FdbEntry, FdbMode, Link, Neighbour, Netlink, Route, VxlanSpec};

use super::{ApplyErrors, Backend, Peers, Underlay, hostgw, routes};
use crate::lease::{LeaseRecord, Subnets};
use crate::netconf::{BackendType, NetworkConfig};

/// VXLAN adds 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Over IPv6 it adds 70 (outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN6_OVERHEAD: u32 = 70;

/// The VTEP MAC of a node: locally administered, derived from its public IP, so it stays the
/// same across restarts and reboots without being stored anywhere (Flannel's #1795).
pub fn vtep_mac(public_ip: Ipv4Addr) -> [u8; 6] {
    let o = public_ip.octets();
    [0x0e, 0x74, o[0], o[1], o[2], o[3]]
}

/// The MAC of `flannel-v6.<VNI>`, derived from the public IPv6 address the same way (its 16
/// bytes folded into 4 with FNV-1a: nodes usually differ in the low bytes, but not always).
pub fn vtep_mac6(public_ip: Ipv6Addr) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in public_ip.octets() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let o = h.to_be_bytes();
    [0x0e, 0x76, o[0], o[1], o[2], o[3]]
}

/// The VNI as Flannel writes it in `BackendData`: a uint16 (`uint16(cfg.VNI)`). A Flannel
/// node cannot decode a bigger number there and skips the whole lease, so with a VNI above
/// 65535 it would never reach this node. Nobody programs anything by this field.
fn lease_vni(vni: u32) -> u32 {
    vni & 0xffff
}

/// One VTEP device (one family).
struct Vtep {
    name: String,
    local: IpAddr,
    mac: [u8; 6],
    mtu: u32,
    /// Flannel's `GBP` and `Learning`, as it sets them on its device.
    gbp: bool,
    learning: bool,
    device: Option<Link>,
    /// The local subnet whose base address the device holds.
    subnet: Option<IpNet>,
}

impl Vtep {
    async fn init(
        &mut self,
        nl: &Netlink,
        vni: u32,
        port: u16,
        underlay: u32,
    ) -> twill_netkit::Result<()> {
        let mut spec = VxlanSpec::new(&self.name, vni);
        spec.port = port;
        spec.local = Some(self.local);
        spec.underlay = Some(underlay);
        spec.mtu = Some(self.mtu);
        spec.mac = Some(self.mac);
        spec.gbp = self.gbp;
        spec.learning = self.learning;
        self.device = Some(nl.ensure_vxlan(&spec).await?);
        Ok(())
    }

    async fn set_subnet(&mut self, nl: &Netlink, subnet: IpNet) -> twill_netkit::Result<()> {
        let dev = self.device.as_ref().ok_or_else(|| {
            twill_netkit::Error::Invalid(format!("vxlan device {} not initialised", self.name))
        })?;
        match subnet {
            IpNet::V4(s) => super::set_subnet_address(nl, dev.index, s).await?,
            IpNet::V6(s) => super::set_subnet_address6(nl, dev.index, s).await?,
        }
        self.subnet = Some(subnet);
        Ok(())
    }
}

/// What one peer of one family needs on a VTEP.
struct Tunnel {
    subnet: IpNet,
    /// The peer VTEP's address (its subnet's base).
    vtep: IpAddr,
    mac: [u8; 6],
    /// The peer's public address (the outer destination).
    dst: IpAddr,
}

/// The vxlan backend.
pub struct Vxlan {
    underlay: Underlay,
    network: Ipv4Net,
    network6: Option<Ipv6Net>,
    vni: u32,
    port: u16,
    direct_routing: bool,
    mtu_override: Option<u32>,
    v4: Option<Vtep>,
    v6: Option<Vtep>,
    local: Subnets,
}

impl Vxlan {
    pub fn new(config: &NetworkConfig, underlay: Underlay) -> Vxlan {
        let vni = config.backend.vni;
        let link_mtu = underlay.link.mtu;
        let mtu = |overhead: u32| {
            config
                .backend
                .mtu
                .unwrap_or(link_mtu.saturating_sub(overhead))
        };
        // The VTEP sends from the link's own address, as Flannel's: `--public-ip` may name a
        // NAT's outside address, which is only what peers send to.
        let v4 = config.enable_ipv4.then(|| Vtep {
            name: format!("flannel.{vni}"),
            local: IpAddr::V4(underlay.bind_ip()),
            mac: vtep_mac(underlay.public_ip),
            mtu: mtu(VXLAN_OVERHEAD),
            gbp: config.backend.gbp,
            learning: config.backend.learning,
            device: None,
            subnet: None,
        });
        // Without an IPv6 public address `init` refuses to start (agent::run checks first).
        let v6 = config.ipv6.and(underlay.public_ipv6).map(|ip| Vtep {
            name: format!("flannel-v6.{vni}"),
            local: IpAddr::V6(underlay.bind_ipv6().unwrap_or(ip)),
            mac: vtep_mac6(ip),
            mtu: mtu(VXLAN6_OVERHEAD),
            gbp: config.backend.gbp,
            learning: config.backend.learning,
            device: None,
            subnet: None,
        });
        Vxlan {
            network: config.network,
            network6: config.ipv6.map(|c| c.network),
            vni,
            port: config.backend.port,
            direct_routing: config.backend.direct_routing,
            mtu_override: config.backend.mtu,
            underlay,
            v4,
            v6,
            local: Subnets::default(),
        }
    }

    /// The names of the devices this backend makes (one per family on).
    pub fn device_names(&self) -> Vec<String> {
        self.v4
            .iter()
            .chain(self.v6.iter())
            .map(|v| v.name.clone())
            .collect()
    }

    fn vteps(&mut self) -> impl Iterator<Item = &mut Vtep> {
        self.v4.iter_mut().chain(self.v6.iter_mut())
    }

    /// The tunnels and direct routes the peers need, per family.
    fn plan(
        &self,
        peers: &Peers,
        on_link: &hostgw::OnLink,
        errors: &mut ApplyErrors,
    ) -> (Vec<Tunnel>, Vec<Tunnel>, Vec<Route>) {
        let (mut t4, mut t6, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        if self.v4.is_some() {
            for (subnet, rec) in super::by_v4(peers, self.network, self.local.v4) {
                if rec.backend != BackendType::Vxlan {
                    continue;
                }
                if self.direct_routing && on_link.contains(IpAddr::V4(rec.public_ip)) {
                    match hostgw::direct_route(&self.underlay, on_link, subnet, rec) {
                        Ok(r) => direct.push(r),
                        Err(e) => errors.push(e),
                    }
                    continue;
                }
                let Some(mac) = rec.vtep_mac else {
                    errors.push(format!("peer {subnet} has no BackendData.VtepMAC"));
                    continue;
                };
                t4.push(Tunnel {
                    subnet: IpNet::V4(subnet),
                    vtep: IpAddr::V4(subnet.network()),
                    mac,
                    dst: IpAddr::V4(rec.public_ip),
                });
            }
        }
        if self.v6.is_some() {
            for (subnet, rec) in super::by_v6(peers, self.network6, self.local.v6) {
                let Some(dst) = rec
                    .public_ipv6
                    .filter(|_| rec.backend == BackendType::Vxlan)
                else {
                    continue;
                };
                if self.direct_routing && on_link.contains(IpAddr::V6(dst)) {
                    match hostgw::direct_route6(&self.underlay, on_link, subnet, rec) {
                        Ok(r) => direct.push(r),
                        Err(e) => errors.push(e),
                    }
                    continue;
                }
                let Some(mac) = rec.vtep_mac6 else {
                    errors.push(format!("peer {subnet} has no BackendV6Data.VtepMAC"));
                    continue;
                };
                t6.push(Tunnel {
                    subnet: IpNet::V6(subnet),
                    vtep: IpAddr::V6(subnet.network()),
                    mac,
                    dst: IpAddr::V6(dst),
                });
            }
        }
        (t4, t6, direct)
    }
}

/// Makes `vtep`'s device exist (re-created if deleted by hand: level-triggered), up, with its
/// MTU and its subnet address. A VTEP set down loses its routes and neighbours, and the kernel
/// refuses to route via a down device ("Nexthop device is not up"): left down, every later
/// round would fail and the node would stay cut off until restarted. Down and up again, an
/// IPv6 VTEP also loses its address (no `keep_addr_on_down`).
async fn ensure_present(
    nl: &Netlink,
    vtep: &mut Vtep,
    vni: u32,
    port: u16,
    underlay: u32,
    errors: &mut ApplyErrors,
) -> Option<Link> {
    let current = match &vtep.device {
        Some(dev) => match nl.link_by_index(dev.index).await {
            Ok(Some(l)) if l.name == dev.name => Some(l),
            _ => None,
        },
        None => None,
    };
    let Some(link) = current else {
        tracing::warn!(device = %vtep.name, "vxlan device missing: re-creating it");
        if let Err(e) = vtep.init(nl, vni, port, underlay).await {
            errors.push(e);
            return None;
        }
        if let Some(subnet) = vtep.subnet
            && let Err(e) = vtep.set_subnet(nl, subnet).await
        {
            errors.push(e);
        }
        return vtep.device.clone();
    };
    if link.mtu != vtep.mtu {
        tracing::warn!(device = %vtep.name, mtu = link.mtu, want = vtep.mtu, "vxlan device MTU changed: setting it back");
        if let Err(e) = nl.set_mtu(link.index, vtep.mtu).await {
            errors.push(format!(
                "setting the MTU of {} back to {}: {e}",
                vtep.name, vtep.mtu
            ));
        }
    }
    // Peers address frames to the MAC in our lease: under any other, the device drops them.
    if link.mac != vtep.mac {
        tracing::warn!(device = %vtep.name, "vxlan device MAC changed: setting back the lease's VtepMAC");
        if let Err(e) = nl.set_mac(link.index, vtep.mac).await {
            errors.push(format!(
                "setting the MAC of {} back to {}: {e}",
                vtep.name,
                twill_netkit::format_mac(&vtep.mac)
            ));
        }
    }
    if !link.up {
        tracing::warn!(device = %vtep.name, "vxlan device is down: setting it up");
        if let Err(e) = nl.set_up(link.index).await {
            errors.push(format!("setting {} up: {e}", vtep.name));
        }
    }
    if let Some(subnet) = vtep.subnet
        && let Err(e) = vtep.set_subnet(nl, subnet).await
    {
        errors.push(e);
    }
    vtep.device.clone()
}

/// Neighbour and FDB entries for `tunnels` on `dev`, adding what is missing; returns the
/// routes to install and what to keep (the rest is removed after the routes).
async fn program(
    nl: &Netlink,
    dev: &Link,
    tunnels: &[Tunnel],
    routes: &mut Vec<Route>,
    errors: &mut ApplyErrors,
) -> Option<Stale> {
    // Read the kernel's state once, then write only what differs: an event for one peer
    // costs a few dumps and a few writes, not one write per peer.
    let neighbours = match nl.list_neighbours(dev.index).await {
        Ok(l) => l,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let fdb = match nl.list_fdb(dev.index).await {
        Ok(l) => l,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let have_neigh: BTreeSet<(IpAddr, [u8; 6])> =
        neighbours.iter().map(|n| (n.ip, n.mac)).collect();
    let have_fdb: BTreeSet<([u8; 6], IpAddr)> = fdb
        .iter()
        .filter_map(|f| f.dst.map(|d| (f.mac, d)))
        .collect();
    let mut want_neigh = BTreeSet::new();
    let mut want_fdb = BTreeSet::new();
    for t in tunnels {
        // Neighbour, FDB, then route.
        if !have_neigh.contains(&(t.vtep, t.mac))
            && let Err(e) = nl
                .replace_neighbour(&Neighbour {
                    ifindex: dev.index,
                    ip: t.vtep,
                    mac: t.mac,
                })
                .await
        {
            errors.push(e);
            continue;
        }
        if !have_fdb.contains(&(t.mac, t.dst)) {
            let entry = FdbEntry {
                ifindex: dev.index,
                mac: t.mac,
                dst: Some(t.dst),
                permanent: true,
            };
            if let Err(e) = nl.add_fdb(&entry, FdbMode::Replace).await {
                errors.push(e);
                continue;
            }
        }
        want_neigh.insert(t.vtep);
        want_fdb.insert((t.mac, t.dst));
        routes.push(Route::new(t.subnet).via(t.vtep).dev(dev.index).onlink());
    }
    Some(Stale {
        ifindex: dev.index,
        neighbours: neighbours
            .into_iter()
            .filter(|n| !want_neigh.contains(&n.ip))
            .map(|n| n.ip)
            .collect(),
        // Only permanent entries are ours (and Flannel's); with `Learning` the kernel adds
        // entries of its own, which are not stale for being unknown to the leases.
        fdb: fdb
            .into_iter()
            .filter(|f| f.permanent && !f.dst.is_some_and(|d| want_fdb.contains(&(f.mac, d))))
            .collect(),
    })
}

/// The networks whose routes this round may reconcile: not those of a family whose device
/// could not be read (`unprogrammed`: `true` for IPv4). Its tunnels' routes are missing from
/// the desired set only because the dump failed, not because the peers left; removing them
/// would cut every pod of that family until the next round. They are left for it.
fn reconcilable(nets: Vec<IpNet>, unprogrammed: &[bool]) -> Vec<IpNet> {
    nets.into_iter()
        .filter(|n| !unprogrammed.contains(&matches!(n, IpNet::V4(_))))
        .collect()
}

/// Entries of peers that are gone, removed after their routes.
struct Stale {
    ifindex: u32,
    neighbours: Vec<IpAddr>,
    fdb: Vec<FdbEntry>,
}

impl Stale {
    async fn remove(self, nl: &Netlink, errors: &mut ApplyErrors) {
        for ip in self.neighbours {
            // IPv6 link-local neighbours are the kernel's own; only permanent ones are ours,
            // and the dump lists only those we made plus what the kernel learnt: skip fe80::/10.
            if let IpAddr::V6(v6) = ip
                && (v6.segments()[0] & 0xffc0) == 0xfe80
            {
                continue;
            }
            if let Err(e) = nl.delete_neighbour(self.ifindex, ip).await {
                errors.push(e);
            }
        }
        for f in self.fdb {
            if let Err(e) = nl.delete_fdb(&f).await {
                errors.push(e);
            }
        }
    }
}

impl Backend for Vxlan {
    fn kind(&self) -> BackendType {
        BackendType::Vxlan
    }
    fn mtu(&self) -> u32 {
        // One FLANNEL_MTU for both families: the smaller device's, so pod packets fit either
        // (Flannel writes underlay − 50 and lets IPv6 packets exceed flannel-v6 by 20 bytes).
        self.v4
            .iter()
            .chain(self.v6.iter())
            .map(|v| v.mtu)
            .min()
            .unwrap_or_else(|| {
                self.mtu_override
                    .unwrap_or(self.underlay.link.mtu.saturating_sub(VXLAN_OVERHEAD))
            })
    }
    fn record(&self) -> LeaseRecord {
        let public_ip = if self.v4.is_some() {
            self.underlay.public_ip
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        LeaseRecord {
            public_ip,
            backend: BackendType::Vxlan,
            vtep_mac: self.v4.as_ref().map(|v| v.mac),
            vni: self.v4.as_ref().map(|_| lease_vni(self.vni)),
            public_ipv6: self.v6.as_ref().and(self.underlay.public_ipv6),
            vtep_mac6: self.v6.as_ref().map(|v| v.mac),
            vni6: self.v6.as_ref().map(|_| lease_vni(self.vni)),
            wireguard: None,
            wireguard6: None,
        }
    }

    async fn init(&mut self, nl: &Netlink) -> twill_netkit::Result<()> {
        if self.network6.is_some() && self.v6.is_none() {
            return Err(twill_netkit::Error::Invalid(format!(
                "EnableIPv6 is set but {} has no IPv6 address: pass --public-ipv6",
                self.underlay.link.name
            )));
        }
        let (vni, port, underlay) = (self.vni, self.port, self.underlay.link.index);
        for v in self.vteps() {
            v.init(nl, vni, port, underlay).await?;
            if matches!(v.local, IpAddr::V6(_)) {
                // The kernel brings IPv6 up on a device with DAD; the VTEP's address is ours.
                let key = twill_netkit::sysctl::conf_key("ipv6", &v.name, "accept_ra");
                let _ = twill_netkit::sysctl::ensure(&key, "0");
            }
        }
        Ok(())
    }
    async fn set_local_subnet(
        &mut self,
        nl: &Netlink,
        subnet: Subnets,
    ) -> twill_netkit::Result<()> {
        if let (Some(v), Some(s)) = (self.v4.as_mut(), subnet.v4) {
            v.set_subnet(nl, IpNet::V4(s)).await?;
        }
        if let (Some(v), Some(s)) = (self.v6.as_mut(), subnet.v6) {
            v.set_subnet(nl, IpNet::V6(s)).await?;
        }
        self.local = subnet;
        Ok(())
    }
    async fn apply(&mut self, nl: &Netlink, peers: &Peers) -> ApplyErrors {
        let mut errors = ApplyErrors::default();
        let (vni, port, underlay) = (self.vni, self.port, self.underlay.link.index);
        // Only DirectRouting needs to know what the underlay reaches directly. Without the
        // kernel's routes, the address prefixes alone: a peer missed then gets a tunnel,
        // which reaches it as well.
        let on_link = if self.direct_routing {
            match hostgw::OnLink::read(nl, &self.underlay).await {
                Ok(o) => o,
                Err(e) => {
                    errors.push(e);
                    hostgw::OnLink::of(&self.underlay, &[])
                }
            }
        } else {
            hostgw::OnLink::default()
        };
        let (t4, t6, mut desired_routes) = self.plan(peers, &on_link, &mut errors);
        let mut stale = Vec::new();
        let mut unprogrammed = Vec::new();
        for (is_v4, vtep, tunnels) in [(true, self.v4.as_mut(), t4), (false, self.v6.as_mut(), t6)]
        {
            let Some(vtep) = vtep else { continue };
            let Some(dev) = ensure_present(nl, vtep, vni, port, underlay, &mut errors).await else {
                unprogrammed.push(is_v4);
                continue;
            };
            match program(nl, &dev, &tunnels, &mut desired_routes, &mut errors).await {
                Some(s) => stale.push(s),
                None => unprogrammed.push(is_v4),
            }
        }
        let nets = hostgw::networks(self.network, self.v4.is_some(), self.network6);
        let nets = reconcilable(nets, &unprogrammed);
        routes::reconcile_all(nl, &nets, &desired_routes, &mut errors).await;
        // Stale entries go after their routes.
        for s in stale {
            s.remove(nl, &mut errors).await;
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay() -> Underlay {
        Underlay::for_tests(24, 64)
    }

    #[test]
    fn the_lease_carries_the_vni_as_flannel_writes_it() {
        for (vni, want) in [(1, 1), (4096, 4096), (65535, 65535), (70000, 70000 - 65536)] {
            let config = NetworkConfig::parse(&format!(
                r#"{{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{{"Type":"vxlan","VNI":{vni}}}}}"#
            ))
            .unwrap();
            let r = Vxlan::new(&config, underlay()).record();
            assert_eq!((r.vni, r.vni6), (Some(want), Some(want)), "VNI {vni}");
        }
    }

    #[test]
    fn a_family_whose_device_could_not_be_read_keeps_its_routes() {
        let nets: Vec<IpNet> = vec![
            "10.1.0.0/16".parse().unwrap(),
            "fd00:1::/48".parse().unwrap(),
        ];
        assert_eq!(reconcilable(nets.clone(), &[]), nets);
        assert_eq!(reconcilable(nets.clone(), &[false]), nets[..1].to_vec());
        assert_eq!(reconcilable(nets.clone(), &[true]), nets[1..].to_vec());
        assert!(reconcilable(nets, &[true, false]).is_empty());
    }
}

//! The overlay TUN: the device a TUN-based backend reads its node's outgoing overlay traffic
//! from and writes the received traffic into, created and configured in one place for twilld
//! and for the lab's TUN relay, which stands in for twilld on the same device.

use super::Engine;
use ipnet::{IpNet, Ipv4Net};
use twill_netkit::tun::offload::{CSUM, TSO4, TSO6};
use twill_netkit::tun::{Tun, TunOptions};
use twill_netkit::{Link, Netlink, Route, Scope};

/// How to make the overlay TUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunSpec {
    /// The device name.
    pub name: String,
    /// Queues, one per data-path worker.
    pub queues: usize,
    /// TCP segmentation and checksum offloads (off: one plain packet per read).
    pub offloads: bool,
    /// The largest inner packet: the underlay's MTU less what the backend adds.
    pub mtu: u32,
    /// The overlay network, routed to the device.
    pub network: Ipv4Net,
    /// The device carries IPv6 inner packets (wireguard with IPv6 on): IPv6 stays enabled on
    /// it (router advertisements refused).
    pub ipv6: bool,
}

impl TunSpec {
    /// The offload sets to try, best first. TCP segmentation only: the engine segments TCP
    /// itself and would have to drop UDP GSO (USO) super-packets.
    fn offload_candidates(&self) -> Vec<u32> {
        if self.offloads {
            vec![CSUM | TSO4 | TSO6, CSUM | TSO4, CSUM, 0]
        } else {
            vec![0]
        }
    }
}

/// Creates the overlay TUN in the namespace of the calling thread (virtio-net headers, the
/// offloads the kernel accepts), sets its MTU and sysctls and brings it up; with `subnet`
/// known also gives it its address and routes the network to it. Returns the device and its
/// link; the device goes away when every queue of the [`Tun`] is closed.
pub async fn create(
    nl: &Netlink,
    spec: &TunSpec,
    subnet: Option<Ipv4Net>,
) -> twill_netkit::Result<(Tun, Link)> {
    let mut opts = TunOptions::offloaded(&spec.name, spec.queues);
    opts.offload_candidates = spec.offload_candidates();
    let tun = Tun::create(&opts)?;
    let link = nl.require_link(tun.name()).await?;
    nl.set_mtu(link.index, spec.mtu).await?;
    // The data path cuts a super-packet into at most MAX_SEGMENTS; one with more (an MSS
    // below 128: `TCP_MAXSEG`, a peer announcing a tiny MSS) was dropped whole. With the cap
    // on the device the kernel segments those itself before the TUN.
    nl.set_gso_max_segs(link.index, crate::engine::packet::MAX_SEGMENTS as u32)
        .await?;
    // The ICMP errors the data path writes back come from the device's own address, which
    // the kernel would drop as a martian source without this. Not fatal: in a container
    // with a read-only /proc/sys only those replies are lost.
    let key = format!("net/ipv4/conf/{}/accept_local", link.name);
    if let Err(e) = twill_netkit::sysctl::ensure(&key, "1") {
        tracing::warn!(error = %e, "cannot set {key}=1: ICMP net unreachable replies for unknown destinations will be dropped by the kernel");
    }
    // An IPv4-only overlay: without this the kernel sends router solicitations and MLD
    // reports into the TUN, which the data path can only drop. An IPv6-carrying one keeps
    // IPv6 and only refuses router advertisements.
    if spec.ipv6 {
        let _ =
            twill_netkit::sysctl::ensure(&format!("net/ipv6/conf/{}/disable_ipv6", link.name), "0");
        let _ =
            twill_netkit::sysctl::ensure(&format!("net/ipv6/conf/{}/accept_ra", link.name), "0");
    } else {
        let _ =
            twill_netkit::sysctl::ensure(&format!("net/ipv6/conf/{}/disable_ipv6", link.name), "1");
    }
    nl.set_up(link.index).await?;
    if let Some(subnet) = subnet {
        crate::backend::set_subnet_address(nl, link.index, subnet).await?;
        nl.replace_route(&network_route(IpNet::V4(spec.network), &link))
            .await?;
    }
    Ok((tun, link))
}

/// The route of the whole overlay network to the TUN (link scope: no gateway, every
/// destination is handed to the device), for either family.
pub fn network_route(network: IpNet, link: &Link) -> Route {
    let route = Route::new(network).dev(link.index);
    match network {
        IpNet::V4(_) => route.scope(Scope::Link),
        // IPv6 routes have no scope of their own (the kernel keeps them universe).
        IpNet::V6(_) => route,
    }
}

/// Sets a TUN backend's device up if it was set down by hand (or by a network manager): the
/// kernel then drops the route to the network and refuses a new one ("Network is down"), and
/// the node would stay cut off while the data path looks alive. `what` names the backend.
pub async fn set_up_if_down(nl: &Netlink, dev: &Link, what: &str) -> Result<(), String> {
    match nl.link_by_index(dev.index).await {
        Ok(Some(l)) if !l.up => {
            tracing::warn!(device = %dev.name, "{what} TUN device is down: setting it up");
            nl.set_up(dev.index)
                .await
                .map_err(|e| format!("setting {} up: {e}", dev.name))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a TUN backend's data path is whole: its device still exists under its name and every
/// engine thread runs. Level-triggered `apply` rebuilds both when this is false.
pub async fn data_path_alive(nl: &Netlink, device: Option<&Link>, engine: Option<&Engine>) -> bool {
    let present = match device {
        Some(d) => matches!(nl.link_by_index(d.index).await, Ok(Some(ref l)) if l.name == d.name),
        None => false,
    };
    present && engine.is_some_and(Engine::healthy)
}

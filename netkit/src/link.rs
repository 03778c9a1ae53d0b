//! Links: look-up, veth pairs (peer born in another namespace), bridges, vxlan, and the
//! per-link settings (up/down, MTU, controller, name, namespace, hairpin).

use std::net::IpAddr;

use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};
use std::os::fd::{AsFd, AsRawFd};

use crate::error::Result;
use crate::netlink::{Netlink, collect_dump, has_errno};
use crate::netns::Netns;

/// Linux limits interface names to 15 bytes plus NUL.
pub const IFNAMSIZ_MAX: usize = 15;

/// What netkit reports about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, `vxlan`, `tun`, … (None for physical devices and loopback).
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Vec<u8>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Index of the bridge this link is attached to.
    pub controller: Option<u32>,
    /// Set for vxlan links.
    pub vxlan: Option<VxlanInfo>,
}

/// What netkit reads about a link besides [`Link`]: the attributes only some callers need
/// (kept apart so that `Link` stays as it is for everyone who builds one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkDetail {
    /// The link's alias (IFLA_IFALIAS, `ip link set … alias`).
    pub alias: Option<String>,
    /// IFLA_LINK: for a veth, its peer's index, in the peer's namespace.
    pub peer_index: Option<u32>,
    /// The STP state of the link as a bridge port (None when it is no bridge's port).
    pub port_state: Option<PortState>,
}

/// A bridge port's STP state (IFLA_BRPORT_STATE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    Disabled,
    Listening,
    Learning,
    Forwarding,
    Blocking,
    Other(u8),
}

impl From<BridgePortState> for PortState {
    fn from(s: BridgePortState) -> Self {
        match s {
            BridgePortState::Disabled => PortState::Disabled,
            BridgePortState::Listening => PortState::Listening,
            BridgePortState::Learning => PortState::Learning,
            BridgePortState::Forwarding => PortState::Forwarding,
            BridgePortState::Blocking => PortState::Blocking,
            BridgePortState::Other(v) => PortState::Other(v),
            // The enum is non-exhaustive: a state a newer crate knows is "not forwarding".
            other => PortState::Other(u8::from(other)),
        }
    }
}

/// The vxlan settings twill cares about, read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub underlay: Option<u32>,
    pub learning: bool,
    /// The Group Based Policy extension (IFLA_VXLAN_GBP).
    pub gbp: bool,
}

/// How to create a vxlan device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port (8472 for Flannel, 4789 for IANA).
    pub port: u16,
    /// The local tunnel address; its family is the underlay's (a `flannel-v6.N` device has
    /// an IPv6 one).
    pub local: Option<IpAddr>,
    /// Index of the underlay device.
    pub underlay: Option<u32>,
    pub learning: bool,
    /// The Group Based Policy extension: a device with it and one without drop each other's
    /// packets that carry a policy mark.
    pub gbp: bool,
    pub mtu: Option<u32>,
    /// A fixed MAC address, so peers' FDB entries survive a re-creation.
    pub mac: Option<[u8; 6]>,
}

impl VxlanSpec {
    /// Flannel's defaults: port 8472, learning off.
    pub fn new(name: &str, vni: u32) -> VxlanSpec {
        VxlanSpec {
            name: name.to_string(),
            vni,
            port: 8472,
            local: None,
            underlay: None,
            learning: false,
            gbp: false,
            mtu: None,
            mac: None,
        }
    }

    fn matches(&self, info: &VxlanInfo) -> bool {
        info.vni == self.vni
            && info.port == self.port
            && info.local == self.local
            && (self.underlay.is_none() || info.underlay == self.underlay)
            && info.learning == self.learning
            && info.gbp == self.gbp
    }
}

/// Formats a MAC address the way `ip` prints it: lower-case, colon separated.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub(crate) fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAMSIZ_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(crate::Error::Invalid(format!(
            "invalid interface name {name:?}: 1 to {IFNAMSIZ_MAX} bytes, no '/', ':' or spaces"
        )))
    }
}

fn parse_link(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        mac: Vec::new(),
        up: msg.header.flags.contains(LinkFlags::Up),
        controller: None,
        vxlan: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Address(a) => link.mac = a,
            LinkAttribute::Controller(c) => link.controller = Some(c),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(parse_vxlan(&v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_detail(msg: LinkMessage) -> LinkDetail {
    let mut d = LinkDetail::default();
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfAlias(a) if !a.is_empty() => d.alias = Some(a),
            LinkAttribute::Link(i) => d.peer_index = Some(i),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::PortData(InfoPortData::BridgePort(port)) = info {
                        for p in port {
                            if let InfoBridgePort::State(s) = p {
                                d.port_state = Some(s.into());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    d
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo::default();
    for a in attrs {
        match a {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(i) if *i != 0 => info.underlay = Some(*i),
            InfoVxlan::Learning(l) => info.learning = *l,
            InfoVxlan::Gbp => info.gbp = true,
            _ => {}
        }
    }
    info
}

impl Netlink {
    /// Every link in the namespace.
    pub async fn list_links(&self) -> Result<Vec<Link>> {
        let msgs = collect_dump(self.handle.link().get().execute())
            .await
            .map_err(|e| self.err("listing", "links", e))?;
        Ok(msgs.into_iter().map(parse_link).collect())
    }

    /// The link called `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        validate_ifname(name)?;
        let msgs = collect_dump(
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute(),
        )
        .await
        .map_err(|e| self.err("looking up link", name, e))?;
        Ok(msgs.into_iter().next().map(parse_link))
    }

    /// The link with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let msgs = collect_dump(self.handle.link().get().match_index(index).execute())
            .await
            .map_err(|e| self.err("looking up link", format!("#{index}"), e))?;
        Ok(msgs.into_iter().next().map(parse_link))
    }

    /// The links whose controller (bridge) is link `index`. The kernel filters the dump by
    /// IFLA_MASTER, so a host with thousands of links answers with the ports alone; the
    /// filter here too keeps the answer right on a kernel that ignores the attribute.
    pub async fn ports_of(&self, index: u32) -> Result<Vec<Link>> {
        let mut req = self.handle.link().get();
        req.message_mut()
            .attributes
            .push(LinkAttribute::Controller(index));
        let msgs = collect_dump(req.execute())
            .await
            .map_err(|e| self.err("listing ports of", format!("link #{index}"), e))?;
        Ok(msgs
            .into_iter()
            .map(parse_link)
            .filter(|l| l.controller == Some(index))
            .collect())
    }

    /// Alias, veth peer index and bridge port state of the link with index `index`, if
    /// there is one.
    pub async fn link_detail(&self, index: u32) -> Result<Option<LinkDetail>> {
        let msgs = collect_dump(self.handle.link().get().match_index(index).execute())
            .await
            .map_err(|e| self.err("looking up link", format!("#{index}"), e))?;
        Ok(msgs.into_iter().next().map(parse_detail))
    }

    /// Waits up to `timeout` for bridge port `index` to leave [`PortState::Disabled`] and
    /// [`PortState::Blocking`], and returns the state it is in then (the last one seen when
    /// the timeout passed). A port is Disabled until the kernel has seen its carrier come up;
    /// then, without STP, it forwards at once (passing through Blocking for an instant a read
    /// may catch), while with STP on it goes Listening and Learning first and forwards only
    /// after twice the bridge's forward delay (15 s each by default), which this does not sit
    /// out: Listening or Learning end the wait too. A link that is gone or no bridge's port is
    /// an error naming it.
    pub async fn wait_port_enabled(
        &self,
        index: u32,
        timeout: std::time::Duration,
    ) -> Result<PortState> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let detail = self
                .link_detail(index)
                .await?
                .ok_or_else(|| self.not_found("link", format!("#{index}")))?;
            let state = match detail.port_state {
                Some(s @ (PortState::Disabled | PortState::Blocking)) => s,
                Some(state) => return Ok(state),
                None => {
                    return Err(crate::Error::Invalid(format!(
                        "link #{index} in netns {} is not a bridge port",
                        self.netns
                    )));
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Ok(state);
            }
            // tokio's timer has millisecond steps.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Sets a link's alias (IFLA_IFALIAS, at most 255 bytes).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        if alias.len() > 255 || alias.contains('\0') {
            return Err(crate::Error::Invalid(format!(
                "invalid alias {alias:?} for link #{index}: at most 255 bytes, no NUL"
            )));
        }
        let msg = LinkUnspec::new_with_index(index).alias(alias).build();
        self.set_link("setting alias of", index, msg).await
    }

    /// The link called `name`, or a NotFound error naming it.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| self.not_found("link", name))
    }

    /// Makes sure a bridge called `name` exists and is up; sets its MTU when given.
    /// Tolerates a concurrent creator (EEXIST) and never touches an existing bridge's
    /// addresses. Fails if `name` exists but is not a bridge.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        self.ensure_bridge_with_mac(name, mtu, None).await
    }

    /// Like [`Netlink::ensure_bridge`], giving a bridge it creates the MAC `mac` in the same
    /// request (a bridge whose address was never set follows its lowest port's MAC). An
    /// existing bridge keeps its address.
    pub async fn ensure_bridge_with_mac(
        &self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<Link> {
        validate_ifname(name)?;
        let link = match self.link_by_name(name).await? {
            Some(l) => l,
            None => {
                let mut b = LinkBridge::new(name);
                if let Some(m) = mtu {
                    b = b.mtu(m);
                }
                if let Some(mac) = mac {
                    b = b.address(mac.to_vec());
                }
                match self.handle.link().add(b.build()).execute().await {
                    Ok(()) => tracing::debug!(bridge = name, netns = %self.netns, "created bridge"),
                    Err(e) if has_errno(&e, libc::EEXIST) => {}
                    Err(e) => return Err(self.err("creating bridge", name, e)),
                }
                self.require_link(name).await?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(crate::Error::Invalid(format!(
                "link {name} in netns {} exists but is a {} device, not a bridge",
                self.netns,
                link.kind.as_deref().unwrap_or("physical")
            )));
        }
        if let Some(m) = mtu
            && link.mtu != m
        {
            self.set_mtu(link.index, m).await?;
        }
        if !link.up {
            self.set_up(link.index).await?;
        }
        self.require_link(name).await
    }

    /// Creates a veth pair: `name` here, `peer_name` born directly inside `peer_ns` (so it
    /// never collides with names in this namespace). Both ends get `mtu` when given.
    /// Returns the local end. Fails with EEXIST if `name` exists.
    pub async fn create_veth(
        &self,
        name: &str,
        peer_name: &str,
        peer_ns: &Netns,
        mtu: Option<u32>,
    ) -> Result<Link> {
        validate_ifname(name)?;
        validate_ifname(peer_name)?;
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name.to_string())
            .setns_by_fd(peer_ns.as_fd().as_raw_fd());
        let mut local = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string());
        if let Some(m) = mtu {
            peer = peer.mtu(m);
            local = local.mtu(m);
        }
        let msg = local
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            self.err(
                "creating veth",
                format!("{name} (peer {peer_name} in netns {})", peer_ns.label()),
                e,
            )
        })?;
        tracing::debug!(veth = name, peer = peer_name, peer_netns = peer_ns.label(), netns = %self.netns, "created veth pair");
        self.require_link(name).await
    }

    /// Makes sure the vxlan device described by `spec` exists and is up. An existing device
    /// with the same VNI, port, local address, learning and GBP flags is kept as it is (so a
    /// restart does not disturb traffic); an incompatible one is replaced.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Link> {
        validate_ifname(&spec.name)?;
        if let Some(existing) = self.link_by_name(&spec.name).await? {
            let compatible = existing.kind.as_deref() == Some("vxlan")
                && existing.vxlan.as_ref().is_some_and(|v| spec.matches(v))
                && spec.mac.is_none_or(|m| existing.mac == m);
            if compatible {
                if let Some(m) = spec.mtu
                    && existing.mtu != m
                {
                    self.set_mtu(existing.index, m).await?;
                }
                if !existing.up {
                    self.set_up(existing.index).await?;
                }
                return self.require_link(&spec.name).await;
            }
            tracing::info!(link = %spec.name, netns = %self.netns, "replacing incompatible vxlan device");
            self.delete_link(existing.index).await?;
        }
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(spec.learning);
        if spec.gbp {
            b = b.gbp();
        }
        match spec.local {
            Some(IpAddr::V4(l)) => b = b.local(l),
            Some(IpAddr::V6(l)) => b = b.local6(l),
            None => {}
        }
        if let Some(d) = spec.underlay {
            b = b.dev(d);
        }
        if let Some(m) = spec.mtu {
            b = b.mtu(m);
        }
        if let Some(mac) = spec.mac {
            b = b.address(mac.to_vec());
        }
        self.handle
            .link()
            .add(b.up().build())
            .execute()
            .await
            .map_err(|e| self.err("creating vxlan", &spec.name, e))?;
        tracing::debug!(link = %spec.name, vni = spec.vni, netns = %self.netns, "created vxlan device");
        self.require_link(&spec.name).await
    }

    async fn set_link(&self, op: &'static str, index: u32, msg: LinkMessage) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.err(op, self.describe(index), e))
    }

    fn describe(&self, index: u32) -> String {
        format!("link #{index}")
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set_link(
            "setting up",
            index,
            LinkUnspec::new_with_index(index).up().build(),
        )
        .await
    }

    /// Sets a link administratively down.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.set_link(
            "setting down",
            index,
            LinkUnspec::new_with_index(index).down().build(),
        )
        .await
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set_link(
            "setting MTU of",
            index,
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
        .await
    }

    /// Caps the segments of one GSO packet the link takes; the kernel segments bigger ones
    /// before handing them over (`ip link set … gso_max_segs`).
    pub async fn set_gso_max_segs(&self, index: u32, segs: u32) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes.push(LinkAttribute::GsoMaxSegs(segs));
        self.set_link("setting gso_max_segs of", index, msg).await
    }

    /// Sets a link's MAC address.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set_link("setting MAC of", index, msg).await
    }

    /// Attaches a link to a bridge (its "controller", formerly "master").
    pub async fn set_controller(&self, index: u32, bridge_index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .controller(bridge_index)
            .build();
        self.set_link("attaching to bridge", index, msg).await
    }

    /// Detaches a link from its bridge.
    pub async fn set_nocontroller(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).nocontroller().build();
        self.set_link("detaching from bridge", index, msg).await
    }

    /// Renames a link. The link must be down.
    pub async fn rename(&self, index: u32, new_name: &str) -> Result<()> {
        validate_ifname(new_name)?;
        let msg = LinkUnspec::new_with_index(index)
            .name(new_name.to_string())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.err("renaming", format!("link #{index} to {new_name}"), e))
    }

    /// Moves a link into another namespace.
    pub async fn move_to_netns(&self, index: u32, target: &Netns) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(target.as_fd().as_raw_fd())
            .build();
        self.handle.link().set(msg).execute().await.map_err(|e| {
            self.err(
                "moving",
                format!("link #{index} to netns {}", target.label()),
                e,
            )
        })
    }

    /// Turns hairpin mode on or off for a bridge port (traffic may leave the port it came in).
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| self.err("setting hairpin on", self.describe(index), e))
    }

    /// Deletes a link by index.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| self.err("deleting", self.describe(index), e))
    }

    /// Deletes the link called `name` if it exists. Returns whether it existed.
    pub async fn remove_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if has_errno(&e, libc::ENODEV) => Ok(false),
            Err(e) => Err(self.err("deleting link", name, e)),
        }
    }
}

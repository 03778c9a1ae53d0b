//! IPv4 and IPv6 routes: replace (idempotent), delete, list; every route twill installs
//! carries [`RTPROT_TWILL`] so its own routes can be told apart from everyone else's and
//! reconciled.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHopFlags, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::RouteMessageBuilder;

use crate::error::{Error, Result};
use crate::netlink::{Netlink, collect_dump, has_errno};

/// The route protocol number twill marks its routes with (`ip route show proto 116`).
/// Unassigned in iproute2's rt_protos; chosen as ASCII 't'.
pub const RTPROT_TWILL: u8 = 116;

/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;

/// Route scope, as `ip route` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Universe,
    Link,
    Host,
    /// Any other scope by number (`site` is 200), as an IPAM plugin's route may carry.
    Other(u8),
}

/// A unicast route, IPv4 or IPv6 (the family is the destination's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    pub onlink: bool,
    pub scope: Scope,
    /// Route protocol number; [`RTPROT_TWILL`] by default.
    pub protocol: u8,
    pub table: u32,
    pub src: Option<IpAddr>,
    pub metric: Option<u32>,
    /// An `unreachable` route (no device, no gateway): packets to it are refused, never
    /// sent anywhere. Listing returns unicast routes only.
    pub unreachable: bool,
}

impl Route {
    /// A twill route to `dst` with no gateway or device yet.
    pub fn new(dst: impl Into<IpNet>) -> Route {
        Route {
            dst: dst.into(),
            gateway: None,
            oif: None,
            onlink: false,
            scope: Scope::Universe,
            protocol: RTPROT_TWILL,
            table: RT_TABLE_MAIN,
            src: None,
            metric: None,
            unreachable: false,
        }
    }

    /// Makes it an `unreachable` route.
    pub fn unreachable(mut self) -> Route {
        self.unreachable = true;
        self
    }

    /// Sets the metric (the kernel's route priority: lower wins).
    pub fn metric(mut self, metric: u32) -> Route {
        self.metric = Some(metric);
        self
    }

    /// Sets the gateway.
    pub fn via(mut self, gw: impl Into<IpAddr>) -> Route {
        self.gateway = Some(gw.into());
        self
    }

    /// Sets the output device.
    pub fn dev(mut self, index: u32) -> Route {
        self.oif = Some(index);
        self
    }

    /// Marks the gateway as directly reachable on the device even without a covering prefix.
    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    /// Sets the scope.
    pub fn scope(mut self, scope: Scope) -> Route {
        self.scope = scope;
        self
    }

    /// Overrides the protocol number.
    pub fn protocol(mut self, protocol: u8) -> Route {
        self.protocol = protocol;
        self
    }

    fn describe(&self) -> String {
        let mut s = if self.unreachable {
            format!("unreachable {}", self.dst)
        } else {
            self.dst.to_string()
        };
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev #{oif}"));
        }
        s
    }

    /// The netlink message; a gateway or source of the other family than the destination is
    /// refused here rather than by the kernel's less telling EINVAL.
    fn to_message(&self) -> Result<RouteMessage> {
        let invalid = |why: String| Error::Invalid(format!("route {}: {why}", self.describe()));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix_len())
            .map_err(|e| invalid(e.to_string()))?
            .protocol(RouteProtocol::from(self.protocol))
            .scope(match self.scope {
                Scope::Universe => RouteScope::Universe,
                Scope::Link => RouteScope::Link,
                Scope::Host => RouteScope::Host,
                Scope::Other(s) => RouteScope::from(s),
            })
            .kind(if self.unreachable {
                RouteType::Unreachable
            } else {
                RouteType::Unicast
            })
            .table_id(self.table);
        if let Some(gw) = self.gateway {
            if gw.is_ipv4() != self.dst.addr().is_ipv4() {
                return Err(invalid(format!(
                    "gateway {gw} is not of the destination's family"
                )));
            }
            b = b.gateway(gw).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.onlink {
            b = b.onlink();
        }
        if let Some(src) = self.src {
            b = b.pref_source(src).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(m) = self.metric {
            b = b.priority(m);
        }
        Ok(b.build())
    }
}

/// What the kernel answers for a packet to one address, as `ip route get ADDRESS` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteGet {
    /// It leaves through a device: the route with the gateway, the device (`oif`) and the
    /// source address the kernel would send it from (`src`, when it has one).
    Out(Route),
    /// It is one of this namespace's own addresses (`local … dev lo`), or an IPv6 anycast
    /// address it answers itself (a local prefix's subnet-router anycast address with
    /// forwarding on: `anycast … dev lo`): it never leaves.
    Local,
    /// Nothing sends it anywhere; why, in words that follow "the kernel has": no route at
    /// all, an `unreachable`, `prohibit` or `blackhole` route, or a lookup refused otherwise.
    Refused(&'static str),
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    let unreachable = match msg.header.kind {
        RouteType::Unicast => false,
        RouteType::Unreachable => true,
        _ => return None,
    };
    let mut dst: IpAddr = match msg.header.address_family {
        AddressFamily::Inet => Ipv4Addr::UNSPECIFIED.into(),
        AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
        _ => return None,
    };
    let mut route = Route::new(IpNet::new(dst, 0).ok()?);
    route.protocol = u8::from(msg.header.protocol);
    route.table = u32::from(msg.header.table);
    route.onlink = msg.header.flags.contains(RouteFlags::Onlink);
    route.scope = match msg.header.scope {
        RouteScope::Link => Scope::Link,
        RouteScope::Host => Scope::Host,
        RouteScope::Universe => Scope::Universe,
        other => Scope::Other(u8::from(other)),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = ip_of(a)?,
            RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
            RouteAttribute::PrefSource(a) => route.src = ip_of(a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            _ => {}
        }
    }
    route.dst = IpNet::new(dst, msg.header.destination_prefix_length).ok()?;
    route.unreachable = unreachable;
    Some(route)
}

/// The routes in `msg`: one, or one per next hop of a multipath route (`ip route` shows
/// those as `nexthop via … dev …` lines under one destination; IPv6 makes one of two routes
/// with a gateway to the same destination and metric). Each carries the next hop's gateway and
/// device, so a reader looking for "`dst` via `gw` dev `oif`" finds every path.
fn parse_routes(msg: &RouteMessage) -> Vec<Route> {
    let Some(route) = parse_route(msg) else {
        return Vec::new();
    };
    let hops = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::MultiPath(hops) => Some(hops),
        _ => None,
    });
    let Some(hops) = hops.filter(|h| !h.is_empty()) else {
        return vec![route];
    };
    hops.iter()
        .map(|hop| {
            let mut r = route.clone();
            r.oif = Some(hop.interface_index);
            r.onlink = hop.flags.contains(RouteNextHopFlags::Onlink);
            r.gateway = hop.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => ip_of(g),
                _ => None,
            });
            r
        })
        .collect()
}

impl Netlink {
    /// Installs `route`, replacing any route to the same destination (same table, metric).
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        self.handle
            .route()
            .add(route.to_message()?)
            .replace()
            .execute()
            .await
            .map_err(|e| self.err("replacing route", route.describe(), e))
    }

    /// Adds `route` next to the routes to the same destination, table and metric that are
    /// there already: `NLM_F_CREATE` without `NLM_F_EXCL`, as the CNI reference plugins add
    /// a container's routes (`RouteAddEcmp`), so a second attachment of a network in one
    /// namespace gets its routes too and keeps them when the first goes. The kernel puts a
    /// new IPv4 route first among its equals (it takes the traffic) and joins IPv6 routes
    /// with a gateway into one multipath route. Returns false when the very same route (same
    /// next hop) is there already.
    pub async fn add_route_ecmp(&self, route: &Route) -> Result<bool> {
        let sent = self
            .request_acked(
                RouteNetlinkMessage::NewRoute(route.to_message()?),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            )
            .await;
        match sent {
            Ok(()) => Ok(true),
            Err(e) if has_errno(&e, libc::EEXIST) => Ok(false),
            Err(e) => Err(self.err("adding route", route.describe(), e)),
        }
    }

    /// Deletes `route`; a missing route is fine. Returns whether it existed.
    pub async fn delete_route(&self, route: &Route) -> Result<bool> {
        match self.handle.route().del(route.to_message()?).execute().await {
            Ok(()) => Ok(true),
            Err(e) if has_errno(&e, libc::ESRCH) => Ok(false),
            Err(e) => Err(self.err("deleting route", route.describe(), e)),
        }
    }

    /// What the kernel would do for a packet to `ip` (`ip route get`): the gateway and device
    /// of the matching route, or None when nothing routes it.
    pub async fn lookup_route(&self, ip: impl Into<IpAddr>) -> Result<Option<Route>> {
        let ip = ip.into();
        let query = route_get_request(ip)?;
        match collect_dump(self.handle.route().get(query).execute()).await {
            Ok(msgs) => Ok(msgs.iter().flat_map(parse_routes).next()),
            Err(e) if has_errno(&e, libc::ENETUNREACH) || has_errno(&e, libc::EHOSTUNREACH) => {
                Ok(None)
            }
            Err(e) => Err(self.err("looking up route to", ip.to_string(), e)),
        }
    }

    /// What the kernel does with a packet to `ip` (RTM_GETROUTE for that one address, as
    /// `ip route get` asks): out of which device, via which gateway and from which source;
    /// one of our own addresses; or refused, and why.
    pub async fn route_get(&self, ip: impl Into<IpAddr>) -> Result<RouteGet> {
        let ip = ip.into();
        let query = route_get_request(ip)?;
        let msgs = match collect_dump(self.handle.route().get(query).execute()).await {
            Ok(msgs) => msgs,
            // The kernel's answers for each refusal (IPv4 and IPv6 alike). A `prohibit` rule
            // (`ip rule add … prohibit`) answers as a `prohibit` route does.
            Err(e) if has_errno(&e, libc::ENETUNREACH) => {
                return Ok(RouteGet::Refused("no route"));
            }
            Err(e) if has_errno(&e, libc::EHOSTUNREACH) => {
                return Ok(RouteGet::Refused("an unreachable route"));
            }
            Err(e) if has_errno(&e, libc::EACCES) => {
                return Ok(RouteGet::Refused("a prohibit route or rule"));
            }
            // A `blackhole` route answers EINVAL, but so do a `blackhole` rule and a request
            // the kernel rejects: "blackhole route" only when one covers the address.
            Err(e) if has_errno(&e, libc::EINVAL) => {
                return Ok(RouteGet::Refused(if self.blackhole_covers(ip).await? {
                    "a blackhole route"
                } else {
                    "no route it will use (the lookup fails with EINVAL, as for a blackhole rule)"
                }));
            }
            Err(e) => return Err(self.err("looking up route to", ip.to_string(), e)),
        };
        let Some(msg) = msgs.first() else {
            return Ok(RouteGet::Refused("no route"));
        };
        Ok(match msg.header.kind {
            RouteType::Local | RouteType::Anycast => RouteGet::Local,
            RouteType::Unreachable => RouteGet::Refused("an unreachable route"),
            RouteType::Prohibit => RouteGet::Refused("a prohibit route or rule"),
            RouteType::BlackHole => RouteGet::Refused("a blackhole route"),
            // Unicast, and a subnet's broadcast address, which still leaves by a device.
            _ => {
                let mut unicast = msg.clone();
                unicast.header.kind = RouteType::Unicast;
                match parse_routes(&unicast).into_iter().next() {
                    // Whatever the kernel calls it, a packet that goes to loopback stays here.
                    Some(Route { oif: Some(oif), .. }) if self.is_loopback(oif).await? => {
                        RouteGet::Local
                    }
                    Some(r) if r.oif.is_some() => RouteGet::Out(r),
                    _ => RouteGet::Refused("no route out of a device"),
                }
            }
        })
    }

    /// Whether a `blackhole` route of any table covers `ip` (the one answer to an
    /// RTM_GETROUTE that the kernel's EINVAL can be told apart by).
    async fn blackhole_covers(&self, ip: IpAddr) -> Result<bool> {
        let query = match ip {
            IpAddr::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpAddr::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let msgs = collect_dump(self.handle.route().get(query).execute())
            .await
            .map_err(|e| self.err("listing", "routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.kind == RouteType::BlackHole)
            .any(|m| {
                let dst = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(a) => ip_of(a),
                    _ => None,
                });
                // No RTA_DST: a default route (`blackhole default`).
                let dst = dst.unwrap_or(match ip {
                    IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                    IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
                });
                IpNet::new(dst, m.header.destination_prefix_length).is_ok_and(|n| n.contains(&ip))
            }))
    }

    /// Whether link `index` is a loopback device (IFF_LOOPBACK).
    async fn is_loopback(&self, index: u32) -> Result<bool> {
        let msgs = collect_dump(self.handle.link().get().match_index(index).execute())
            .await
            .map_err(|e| self.err("looking up link", format!("#{index}"), e))?;
        Ok(msgs
            .first()
            .is_some_and(|m| m.header.flags.contains(LinkFlags::Loopback)))
    }

    /// Unicast routes of both families in the main table, optionally only those with
    /// `protocol`. IPv6 routes the kernel makes for every link (`fe80::/64`, multicast,
    /// local) are not unicast-main with a twill protocol, so a filter on [`RTPROT_TWILL`]
    /// never sees them.
    /// The unicast routes of the main table (of `protocol`, when given).
    pub async fn list_routes(&self, protocol: Option<u8>) -> Result<Vec<Route>> {
        Ok(self
            .main_routes(protocol)
            .await?
            .into_iter()
            .filter(|r| !r.unreachable)
            .collect())
    }

    /// The `unreachable` routes of the main table (of `protocol`, when given).
    pub async fn list_unreachable_routes(&self, protocol: Option<u8>) -> Result<Vec<Route>> {
        Ok(self
            .main_routes(protocol)
            .await?
            .into_iter()
            .filter(|r| r.unreachable)
            .collect())
    }

    async fn main_routes(&self, protocol: Option<u8>) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let msgs = collect_dump(self.handle.route().get(query).execute())
                .await
                .map_err(|e| self.err("listing", "routes", e))?;
            routes.extend(
                msgs.iter()
                    .flat_map(parse_routes)
                    .filter(|r| r.table == RT_TABLE_MAIN)
                    .filter(|r| protocol.is_none_or(|p| r.protocol == p)),
            );
        }
        Ok(routes)
    }
}

/// The RTM_GETROUTE request for one address (`ip route get IP`).
fn route_get_request(ip: IpAddr) -> Result<RouteMessage> {
    let host_len = if ip.is_ipv4() { 32 } else { 128 };
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, host_len)
        .map_err(|e| Error::Invalid(format!("route lookup of {ip}: {e}")))?
        .build())
}

//! twill-netkit: every kernel-networking operation twill needs, never by running `ip`.
//! Namespaces, links, addresses, routes, neighbours and FDB entries through netlink; sysctl
//! through `/proc/sys`; TUN devices by ioctl; nftables tables as one `nft -f` batch. Also the
//! two small things every crate shares: the `subnet.env` file format and random bytes for
//! names and IDs. No policy lives here: callers decide what should exist, netkit makes it so
//! idempotently and names the object and namespace in every error.

mod addr;
mod error;
pub mod firewall;
mod link;
mod neigh;
mod netlink;
mod netns;
pub mod random;
mod route;
pub mod subnet_env;
pub mod sysctl;
pub mod tun;

pub use error::{Error, NetlinkFailure, Result};
pub use link::{
    IFNAMSIZ_MAX, Link, LinkDetail, PortState, VxlanInfo, VxlanSpec, format_mac, parse_mac,
};
pub use neigh::{FdbEntry, FdbMode, Neighbour};
pub use netlink::Netlink;
pub use netns::{NETNS_RUN_DIR, Netns};
pub use route::{RT_TABLE_MAIN, RTPROT_TWILL, Route, RouteGet, Scope};

pub use ipnet;

//! twill-agent: `twilld`, the per-node agent. Leases this node's subnet from etcd in
//! Flannel's v3 layout, writes the subnet file, and keeps the backend matching every other
//! node's lease: routes (host-gw), the VXLAN VTEP's neighbours, FDB entries and routes
//! (vxlan), the TUN `flannel0` and its userspace UDP data path (udp), or the TUN devices
//! `flannel-wg`/`flannel-wg-v6` and their userspace WireGuard data path (wireguard).

pub mod agent;
pub mod backend;
pub mod backoff;
pub mod cli;
pub mod engine;
pub mod etcd_members;
pub mod etcd_store;
pub mod lease;
pub mod lease_mgr;
pub mod lease_store;
pub mod masq;
pub mod metrics;
pub mod netconf;
pub mod node;
pub mod quote;
pub mod status;
pub mod underlay;

#[cfg(test)]
mod test_log;

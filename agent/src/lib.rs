//! twill-agent: `twilld`, the per-node agent. Leases this node's subnet from etcd in
//! Flannel's v3 layout, writes the subnet file, and keeps routes (host-gw) or the VXLAN VTEP's
//! neighbours, FDB entries and routes matching every other node's lease.

pub mod agent;
pub mod backend;
pub mod cli;
pub mod engine;
pub mod lease;
pub mod lease_mgr;
pub mod masq;
pub mod metrics;
pub mod netconf;
pub mod status;
pub mod store;
pub mod underlay;

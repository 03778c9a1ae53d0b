//! The twill test bed, what every integration test and the `twill-lab` CLI build on: a
//! [`Cluster`] of host namespaces on an underlay bridge, [`Etcd`] fixtures that can also be
//! written to ([`Etcd::put`], [`Etcd::etcdctl`]), twilld agents started inside host namespaces
//! ([`TwilldCommand`]) and the twill CNI network config ([`cni`]). Everything is named under a
//! caller-chosen prefix, removed by drop guards (also after a panic), and swept before reuse
//! in case an earlier run was killed.

mod agents;
mod cluster;
pub mod cni;
mod error;
mod etcd;
pub mod http;
mod process;
mod sweep;

pub use agents::{HostFiles, TwilldCommand, wait_for_subnet};
pub use cluster::{Cluster, ClusterBuilder, Host, UNDERLAY_BRIDGE};
pub use error::{LabError, Result};
pub use etcd::{
    Etcd, EtcdCluster, EtcdTls, NETWORK_CONFIG_KEY, check_installed as check_etcd_installed,
    set_data_parent as set_etcd_data_parent,
};
pub use process::{free_local_port, wait_for};
pub use sweep::{exited, namespaces_with_prefix, pids_in_netns, sweep};

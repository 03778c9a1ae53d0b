//! The test bed: a [`Cluster`] of host namespaces on an underlay bridge, and [`Etcd`]
//! fixtures. Everything is named under a caller-chosen prefix, removed by drop guards (also
//! after a panic), and swept before reuse in case an earlier run was killed.

mod cluster;
mod error;
mod etcd;
mod process;
mod sweep;

pub use cluster::{Cluster, ClusterBuilder, Host};
pub use error::{LabError, Result};
pub use etcd::{Etcd, EtcdCluster, EtcdTls};
pub use process::{free_local_port, wait_for};
pub use sweep::{namespaces_with_prefix, pids_in_netns, sweep};

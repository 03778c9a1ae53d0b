//! twill-lab: a twill cluster on one machine. The `testbed` module is what every integration
//! test builds on (hosts as network namespaces on a shared underlay, real etcd processes);
//! `labctl` is the `twill-lab` command (up, down, status, exec, logs).

pub mod labctl;
pub mod testbed;

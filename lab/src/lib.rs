//! twill-lab: a whole twill cluster on one machine, built on the test bed (`twill_testbed`).
//! `up` builds hosts as namespaces on an underlay, starts etcd and a twilld per host, installs
//! the CNI conflist, starts busybox containers with twill-run and checks all-pairs
//! connectivity; `down` removes everything from the state file (also after a crashed `up`);
//! `bench` measures the backends side by side, with `relay` as the TUN ceiling.

pub mod backend;
pub mod bench;
pub mod binaries;
pub mod commands;
pub mod family;
pub mod image;
pub mod interrupt;
pub mod kept_logs;
pub mod output;
pub mod relay;
pub mod soak;
pub mod state;
pub mod up;

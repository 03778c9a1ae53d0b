//! twill-lab: a twill cluster on one machine. Today this crate is the test bed that every
//! integration test builds on: hosts as network namespaces on a shared underlay, and real
//! etcd processes. The `twill-lab` command (up/down/bench) comes with its own issue.

pub mod testbed;

//! Address management: twill's built-in host-local-style allocator over the subnet file, or a
//! delegated IPAM plugin run exactly as the CNI spec says; either answer becomes an
//! `assignment::Assignment` of both families.

pub mod assignment;
pub mod builtin;
pub mod delegate;
pub mod store;

//! twill-runtime: `twill-run`, a minimal container runtime. Namespaces (pid, mnt, uts, ipc,
//! net, cgroup, and with `--userns` a user namespace over idmapped layers), an overlay rootfs
//! of imported image layers + init layer + writable upper (committed back as a new image),
//! cgroup limits (v1 and v2), exec via setns, volumes, and network modes host / none /
//! container:ID / bridge (a CNI client calling `twill`).

pub mod cgroup;
pub mod cni_client;
pub mod container;
pub mod error;
pub mod exec;
pub mod image;
pub mod logs;
pub mod messages;
pub mod network;
pub mod oci;
pub mod process;
pub mod rootfs;
pub mod store;
pub mod tty;
pub mod user;
pub mod userns;

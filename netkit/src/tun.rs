//! TUN devices by raw ioctl: IFF_TUN|IFF_NO_PI, optionally multi-queue (one fd per queue) and
//! IFF_VNET_HDR with TUNSETOFFLOAD. The device is created in the network namespace of the
//! calling thread, so call [`Tun::create`] inside [`crate::Netns::enter`].

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};
use crate::link::validate_ifname;

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// TUNSETOFFLOAD flags.
pub mod offload {
    pub const CSUM: u32 = 0x01;
    pub const TSO4: u32 = 0x02;
    pub const TSO6: u32 = 0x04;
    pub const TSO_ECN: u32 = 0x08;
    pub const USO4: u32 = 0x20;
    pub const USO6: u32 = 0x40;
}

/// Size of `struct virtio_net_hdr` (without num_buffers), the header before each packet
/// when IFF_VNET_HDR is on.
pub const VNET_HDR_LEN: usize = 10;

/// How to create a TUN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunOptions {
    pub name: String,
    /// Number of queues (fds); more than one needs multi-queue.
    pub queues: usize,
    pub multi_queue: bool,
    pub vnet_hdr: bool,
    /// Offloads to try, most capable first; the first set the kernel accepts wins.
    /// Ignored without `vnet_hdr`.
    pub offload_candidates: Vec<u32>,
}

impl TunOptions {
    /// A plain single-queue TUN, as Flannel's udp backend uses.
    pub fn plain(name: &str) -> TunOptions {
        TunOptions {
            name: name.to_string(),
            queues: 1,
            multi_queue: false,
            vnet_hdr: false,
            offload_candidates: Vec::new(),
        }
    }

    /// A multi-queue TUN with virtio-net headers and the best TCP/UDP offloads available.
    pub fn offloaded(name: &str, queues: usize) -> TunOptions {
        use offload::*;
        TunOptions {
            name: name.to_string(),
            queues: queues.max(1),
            multi_queue: true,
            vnet_hdr: true,
            // The kernel rejects USO without CSUM and USO4 alone, so try whole sets.
            offload_candidates: vec![
                CSUM | TSO4 | TSO6 | USO4 | USO6,
                CSUM | TSO4 | TSO6,
                CSUM,
                0,
            ],
        }
    }
}

/// An open TUN device. The device disappears when every queue is closed.
#[derive(Debug)]
pub struct Tun {
    name: String,
    queues: Vec<File>,
    offloads: u32,
    vnet_hdr: bool,
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates (or attaches to) the TUN device described by `opts`.
    pub fn create(opts: &TunOptions) -> Result<Tun> {
        validate_ifname(&opts.name)?;
        if opts.queues > 1 && !opts.multi_queue {
            return Err(Error::Invalid(format!(
                "TUN {}: {} queues need multi_queue",
                opts.name, opts.queues
            )));
        }
        let mut flags = IFF_TUN | IFF_NO_PI;
        if opts.multi_queue {
            flags |= IFF_MULTI_QUEUE;
        }
        if opts.vnet_hdr {
            flags |= IFF_VNET_HDR;
        }
        let mut queues = Vec::with_capacity(opts.queues);
        let mut name = opts.name.clone();
        for _ in 0..opts.queues.max(1) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .map_err(|e| Error::io("opening", "/dev/net/tun", e))?;
            let mut req = IfReqFlags {
                name: [0; libc::IFNAMSIZ],
                flags,
                _pad: [0; 22],
            };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReqFlags lays out.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if queues.is_empty() && device_exists(&name) {
                    return Err(Error::Invalid(format!(
                        "creating TUN device {}: a device of that name exists and is not a \
                         TUN device one can attach to ({err}); pick another name or delete it",
                        opts.name
                    )));
                }
                return Err(Error::io("creating TUN device", opts.name.clone(), err));
            }
            let end = req
                .name
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(req.name.len());
            name = String::from_utf8_lossy(&req.name[..end]).into_owned();
            if opts.vnet_hdr {
                let len: libc::c_int = VNET_HDR_LEN as libc::c_int;
                // SAFETY: TUNSETVNETHDRSZ reads one int.
                let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &len) };
                if rc < 0 {
                    return Err(Error::io(
                        "setting vnet header size on TUN",
                        name.clone(),
                        std::io::Error::last_os_error(),
                    ));
                }
            }
            queues.push(file);
        }
        let mut offloads = 0;
        if opts.vnet_hdr
            && let Some(first) = queues.first()
        {
            offloads = probe_offloads(first, &opts.offload_candidates);
        }
        tracing::debug!(tun = %name, queues = queues.len(), offloads, "created TUN device");
        Ok(Tun {
            name,
            queues,
            offloads,
            vnet_hdr: opts.vnet_hdr,
        })
    }

    /// The device name the kernel gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offload flags in effect (0 without vnet headers).
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// Whether each packet carries a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The queue fds, one per worker thread.
    pub fn queues(&self) -> &[File] {
        &self.queues
    }

    /// Takes the queue fds out (for handing them to data-path threads).
    pub fn into_queues(self) -> Vec<File> {
        self.queues
    }
}

fn probe_offloads(file: &File, candidates: &[u32]) -> u32 {
    for &flags in candidates {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if rc == 0 {
            return flags;
        }
    }
    0
}

/// Whether a network device called `name` exists in this thread's network namespace.
fn device_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

//! The TUN data-path engine every TUN-based backend runs on: per worker one plain OS thread
//! that carries both directions (TUN → UDP and UDP → TUN) over its own TUN queue and
//! SO_REUSEPORT socket, with non-blocking fds (poll only when idle). TUN reads carry
//! virtio-net headers, so the kernel hands over 64 KiB TCP super-packets (IPv4, and IPv6 for
//! a backend that carries it); their segments leave with one sendmmsg and UDP GSO; received
//! datagrams come in with UDP GRO and their TCP segments are coalesced into few gather writes
//! to the TUN. The UDP sockets are IPv4 or IPv6 (dual-stack on `::`). All buffers are
//! allocated at start; the packets never touch the async runtime.
//!
//! What a backend does to each packet (udp: check and pass through; an encrypting backend:
//! seal and open) is its [`Transform`], over which the engine is generic.
//!
//! - `device.rs`: creates and configures the overlay TUN (for twilld and the lab's relay).
//! - `transform.rs`: the traits a backend implements.
//! - `tx.rs`, `rx.rs`: the two directions; `worker.rs`: the thread loop that runs both;
//!   `poll.rs`: busy polling and sleeping.
//! - `trains.rs`: the send planner (segment trains for UDP GSO); `icmp_budget.rs`: the rate
//!   limit of ICMP errors.
//! - `packet/`: pure packet functions (checks, segmentation, coalescing), fuzzed.
//! - `sys.rs`: the system calls, behind safe wrappers (the engine's only `unsafe`).
//! - `stats.rs`: the counters.

pub mod device;
mod icmp_budget;
pub mod packet;
pub mod poll;
mod rx;
pub mod stats;
pub mod sys;
mod trains;
pub mod transform;
mod tx;
mod worker;

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub use stats::Stats;
pub use transform::{
    Control, Destination, Inbound, Opened, Outbound, Refusal, SealJob, Sender, Transform,
};

/// What the engine needs to know besides the transform.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// The UDP address to bind (public IP and port; `[::]:port` for both families).
    pub bind: SocketAddr,
    /// The TUN MTU: the largest inner packet.
    pub mtu: usize,
    /// UDP GSO segment trains, UDP GRO and TCP coalescing (the TUN's offloads are set by
    /// whoever opened it).
    pub offloads: bool,
    /// How long a worker keeps polling after bulk traffic stops before it sleeps.
    pub busy_poll: Duration,
    /// The backend's name: worker threads are called `<name>-<queue>`.
    pub name: &'static str,
    /// Each worker runs in a rayon pool of its own with one helper thread, which a transform
    /// that splits its batches (wireguard's crypto) hands half of a batch to: one flow's
    /// crypto on two cores.
    pub crypto_helper: bool,
}

/// Running data-path threads; dropping it stops and joins them.
pub struct Engine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The first worker's socket, for a backend's own sends outside the workers (timers).
    control: Option<Arc<sys::UdpSocket>>,
}

impl Engine {
    /// Starts one worker thread (both directions) per TUN queue, each with its own socket
    /// on `cfg.bind` and its own halves of `transform`.
    pub fn start<T: Transform>(
        queues: Vec<File>,
        cfg: EngineConfig,
        transform: &T,
        stats: &Arc<Stats>,
    ) -> io::Result<Engine> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut engine = Engine {
            stop: stop.clone(),
            threads: Vec::new(),
            control: None,
        };
        for (i, tun) in queues.into_iter().enumerate() {
            sys::set_nonblocking(tun.as_fd())?;
            let sock = Arc::new(sys::UdpSocket::bind(cfg.bind, cfg.offloads).map_err(|e| {
                let hint = if e.kind() == io::ErrorKind::AddrInUse {
                    " (is another flanneld or twilld running on this node? Backend.Port sets the port)"
                } else {
                    ""
                };
                io::Error::new(
                    e.kind(),
                    format!("binding UDP socket {}: {e}{hint}", cfg.bind),
                )
            })?);
            if engine.control.is_none() {
                engine.control = Some(sock.clone());
            }
            let tun_rx = tun.try_clone()?;
            let tx = tx::TxWorker::new(
                tun,
                sock.clone(),
                transform.outbound(),
                stats.clone(),
                stop.clone(),
                cfg,
            );
            let rx = rx::RxWorker::new(tun_rx, sock, transform.inbound(), stats.clone(), cfg);
            let name = format!("{}-{i}", cfg.name);
            let pool = if cfg.crypto_helper {
                Some(crypto_pool(&name)?)
            } else {
                None
            };
            engine
                .threads
                .push(
                    std::thread::Builder::new()
                        .name(name)
                        .spawn(move || match pool {
                            // The loop runs on a pool thread, so a split batch's other half goes
                            // to the helper's deque, or back to the worker when nobody steals it.
                            Some(pool) => pool.install(|| worker::run(tx, rx, cfg.busy_poll)),
                            None => worker::run(tx, rx, cfg.busy_poll),
                        })?,
                );
        }
        Ok(engine)
    }

    /// A socket bound to the engine's address that a backend may send its own datagrams
    /// from (keepalives, handshake retries from a timer thread). Sending only: it is one of
    /// the workers' sockets, so it never takes datagrams away from them.
    pub fn control_socket(&self) -> Option<Arc<sys::UdpSocket>> {
        self.control.clone()
    }

    /// Whether every thread is still running (a thread ends when its TUN queue dies).
    pub fn healthy(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.threads.iter().all(|t| !t.is_finished())
    }
}

/// A worker's own rayon pool: the thread that runs its loop and one helper that steals half
/// of a split batch.
fn crypto_pool(name: &str) -> io::Result<rayon::ThreadPool> {
    let prefix = name.to_string();
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .thread_name(move |j| format!("{prefix}.{j}"))
        .build()
        .map_err(|e| io::Error::other(format!("starting the crypto helper of {name}: {e}")))
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;

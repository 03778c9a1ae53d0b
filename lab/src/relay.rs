//! The ceiling of any user-space data path over TUN on this machine, the `tun-relay` path of
//! `twill-lab bench`: the two hosts of a udp lab get their `flannel0` from a relay in this process
//! instead of from twilld, and one thread moves every packet from one host's TUN straight
//! into the other's, virtio-net (GSO) header and all. No UDP, no segmentation, no checks:
//! what is left is the TUN reads and writes that every TUN-based backend pays for, so
//! `udp / relay` shows what the UDP leg and twilld's own work cost, and `relay / vxlan`
//! how much room this machine leaves a user-space backend at all.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use twill_agent::backend::udp::{DEFAULT_DEVICE as DEVICE, UDP_OVERHEAD};
use twill_agent::engine::device::{self, TunSpec};
use twill_agent::engine::poll::{sleep_until_readable, spin_until_readable};
use twill_agent::engine::sys::{set_nonblocking, would_block};
use twill_netkit::Netns;
use twill_netkit::ipnet::Ipv4Net;

use super::state::LabState;
use twill_testbed::wait_for;

/// How long the relay keeps polling after traffic before it sleeps: the ceiling is measured
/// with the faster of its two designs (busy polling beat blocking threads, 5.81 vs 5.10
/// Gbit/s, docs/benchmarks.md).
const RELAY_BUSY_POLL: Duration = Duration::from_micros(300);

/// A running relay between hosts 0 and 1 of a lab; dropping it stops the thread and closes
/// both TUNs (so the devices and their routes go away).
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Replaces the twilld of hosts 0 and 1 of the udp lab `st` (state file in `dir`) with a
/// relay: each agent is stopped (by its PID, which then leaves the state file so `down` never
/// signals a PID the system may have reused), and its `flannel0` rebuilt by us with the same
/// address, MTU and route, so the containers see the same network.
pub fn start(st: &mut LabState, dir: &Path) -> anyhow::Result<Relay> {
    if st.backend != crate::backend::LabBackend::Udp || st.hosts.len() < 2 {
        bail!(
            "the TUN relay replaces the agents of a udp lab with two hosts (lab {} runs {} on {} hosts)",
            st.name,
            st.backend,
            st.hosts.len()
        );
    }
    let network: Ipv4Net = st
        .network
        .parse()
        .with_context(|| format!("lab {}: network {:?}", st.name, st.network))?;
    let mut tuns = Vec::new();
    for h in 0..2 {
        let host = st.hosts[h].clone();
        let subnet: Ipv4Net = host
            .subnet
            .as_deref()
            .with_context(|| format!("host {} has no subnet lease", host.name))?
            .parse()
            .with_context(|| format!("host {}: subnet", host.name))?;
        let ns = Netns::open(&host.netns)?;
        take_over_host(st, dir, h, &ns, DEVICE)?;
        tuns.push(open_device(&ns, network, subnet)?);
    }
    let [a, b]: [File; 2] = tuns
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected two TUN devices"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("tun-relay".into())
        .spawn(move || relay(a, b, &flag))
        .context("starting the relay thread")?;
    Ok(Relay {
        stop,
        thread: Some(thread),
    })
}

/// Stops the twilld of host `h` of the lab `st` (by its recorded PID) and waits until its
/// device `device` in `ns` is gone, so that another data path can take the host over.
pub(crate) fn take_over_host(
    st: &mut LabState,
    dir: &Path,
    h: usize,
    ns: &Netns,
    device: &str,
) -> anyhow::Result<()> {
    let name = st.hosts[h].name.clone();
    if let Some(pid) = st.hosts[h].twilld_pid {
        stop_agent(pid).with_context(|| format!("stopping twilld of {name}"))?;
        st.hosts[h].twilld_pid = None;
        st.save(dir)?;
    }
    if !wait_link(ns, device, false) {
        bail!("{device} of {name} did not go away with its agent");
    }
    Ok(())
}

/// Waits up to 10 s until the link `device` in `ns` exists (`present`) or is gone; whether
/// it came to that.
pub(crate) fn wait_link(ns: &Netns, device: &str, present: bool) -> bool {
    wait_for(Duration::from_secs(10), || {
        let name = device.to_string();
        ns.run(move |nl| async move { nl.link_by_name(&name).await })
            .map(|l| l.is_some() == present)
            .unwrap_or(false)
    })
}

/// SIGTERM, then waits for the process to be gone (twilld closes its TUN on the way out).
pub(crate) fn stop_agent(pid: u32) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => return Ok(()),
        Err(e) => return Err(e).context("sending SIGTERM"),
    }
    let gone = wait_for(Duration::from_secs(10), || {
        // Reaps it when it is our child (the bench started it); a zombie's TUN is closed.
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        twill_testbed::exited(pid.as_raw())
    });
    if !gone {
        bail!("process {pid} is still running 10 s after SIGTERM");
    }
    Ok(())
}

/// Creates `flannel0` in `ns` with twilld's own function (virtio-net headers, TCP offloads,
/// sysctls, `<subnet>.0/32`, MTU of eth0 − 28, the network routed to it); one queue.
fn open_device(ns: &Netns, network: Ipv4Net, subnet: Ipv4Net) -> anyhow::Result<File> {
    let tun = ns
        .run(|nl| async move {
            let underlay = nl.require_link("eth0").await?;
            let spec = TunSpec {
                name: DEVICE.to_string(),
                queues: 1,
                offloads: true,
                mtu: underlay.mtu.saturating_sub(UDP_OVERHEAD),
                network,
                ipv6: false,
            };
            let (tun, _) = device::create(&nl, &spec, Some(subnet)).await?;
            Ok::<_, twill_netkit::Error>(tun)
        })
        .with_context(|| format!("creating {DEVICE} in {}", ns.label()))?;
    let queue = tun
        .into_queues()
        .into_iter()
        .next()
        .context("the TUN device has no queue")?;
    // Non-blocking, or the relay thread could sit in a read and never see its stop flag.
    set_nonblocking(queue.as_fd())
        .with_context(|| format!("making {DEVICE} in {} non-blocking", ns.label()))?;
    Ok(queue)
}

/// Moves packets both ways until `stop`: non-blocking reads, each packet written to the
/// other device at once; polls for twilld's default busy-poll time when traffic stops, then
/// sleeps in poll.
fn relay(a: File, b: File, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536 + 64];
    while !stop.load(Ordering::Relaxed) {
        let mut moved = 0;
        for _ in 0..64 {
            let mut any = false;
            for (mut from, mut to) in [(&a, &b), (&b, &a)] {
                match from.read(&mut buf) {
                    Ok(n) => {
                        // A full queue on the other side drops the packet, as a NIC would.
                        let _ = to.write(&buf[..n]);
                        any = true;
                        moved += 1;
                    }
                    Err(e) if would_block(&e) => {}
                    // The device is gone (lab torn down under us): nothing left to relay.
                    Err(_) => return,
                }
            }
            if !any {
                break;
            }
        }
        if moved > 0 {
            continue;
        }
        let fds = [a.as_fd(), b.as_fd()];
        if !spin_until_readable(fds, RELAY_BUSY_POLL) {
            sleep_until_readable(fds);
        }
    }
}

//! `twill-lab bench`: one 2-host lab per backend, all up at the same time; iperf3 TCP (1 and
//! 4 streams) and ping RTT between containers on two hosts for each backend, plus two
//! containers on the same host (the bridge path: the physical baseline). Runs are
//! interleaved (every path once per round, `--runs` rounds) so a noisy machine treats every
//! path alike; each cell is the median. Also the CPU time the hosts' processes spent per GB
//! moved: twilld's on udp and wireguard, the forwarder's or the WireGuard anchor's where one
//! took over (the kernel backends' agents only watch etcd). iperf3 and ping run from the
//! host's filesystem inside the containers' network namespaces.
//! `bench cni` and `bench runtime` run the CNI and runtime benchmarks of the source tree.

mod delegated;
mod forwarder;
mod machine;
mod measure;
pub mod path;
pub mod report;
mod wg_anchor;

use std::path::PathBuf;

use anyhow::{Context, bail};

pub use self::delegated::bench_other;
use self::measure::{container_netns, data_path_cpu_seconds, iperf, median, rtt};
use self::path::{BenchPath, RowPath};
use self::report::{Row, report, svg_chart};
use crate::commands::down;
use crate::family::IpFamily;
use crate::kept_logs::kept_logs_dir;
use crate::state::{LabState, state_dir};
use crate::up::{UpOptions, up};

/// One path to measure: server and client containers of one lab.
struct Probe {
    path: RowPath,
    lab: String,
    server: (usize, &'static str),
    client: (usize, &'static str),
    /// Measure towards the server's IPv6 address (in a dual-stack lab; in an IPv6-only lab
    /// its only address is IPv6 anyway).
    v6: bool,
}

#[derive(Default)]
struct Samples {
    one: Vec<f64>,
    four: Vec<f64>,
    rtt: Vec<f64>,
    cpu_s: f64,
    bytes: f64,
}

fn measure_once(p: &Probe, secs: u64, acc: &mut Samples) -> anyhow::Result<()> {
    let st = LabState::load(&state_dir(&p.lab))?;
    let sns = container_netns(&st, p.server.0, p.server.1)?;
    let cns = container_netns(&st, p.client.0, p.client.1)?;
    let ip = st.hosts[p.server.0]
        .containers
        .iter()
        .find(|x| x.name == p.server.1)
        .map(|x| match (&x.ip6, p.v6) {
            (Some(ip6), true) => ip6.clone(),
            _ => x.ip.clone(),
        })
        .context("server ip")?;
    for (streams, out) in [(1, &mut acc.one), (4, &mut acc.four)] {
        crate::interrupt::check()?;
        let cpu0 = data_path_cpu_seconds(&st);
        let (gbps, bytes) = iperf(&sns, &ip, &cns, secs, streams)?;
        acc.cpu_s += data_path_cpu_seconds(&st) - cpu0;
        acc.bytes += bytes;
        out.push(gbps);
    }
    acc.rtt.push(rtt(&cns, &ip)?);
    Ok(())
}

/// What `twill-lab bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// Throughput and RTT per backend against the same-host path.
    Network,
    /// CNI ADD/DEL latency against the reference plugins (`cargo bench` in the source tree).
    Cni,
    /// Container start and exec latency against runc/crun (scripts/bench-runtime).
    Runtime,
}

/// Output options of the network benchmark.
#[derive(Clone, Debug, Default)]
pub struct BenchOutput {
    pub markdown: Option<PathBuf>,
    pub svg: Option<PathBuf>,
}

/// Adds the `forwarder` path when a forwarder command is given, and refuses the path without
/// one.
pub fn with_forwarder(
    mut backends: Vec<BenchPath>,
    forwarder: Option<&str>,
) -> anyhow::Result<Vec<BenchPath>> {
    let listed = backends.contains(&BenchPath::Forwarder);
    match (forwarder, listed) {
        (None, true) => bail!(
            "--backends forwarder needs --forwarder CMD (e.g. ../shared/reference/udp-gso/swap-into-lab.sh)"
        ),
        (Some(_), false) => backends.push(BenchPath::Forwarder),
        _ => {}
    }
    Ok(backends)
}

/// Runs the network benchmark for `backends` in labs `bench0`, `bench1`… (`<name>0`,
/// `<name>1`… with `--name`, so two benchmarks on one machine do not take each other's labs
/// down); prints the table, optionally writes Markdown and an SVG chart.
pub fn bench(
    name: &str,
    backends: &[BenchPath],
    secs: u64,
    runs: usize,
    forwarder: Option<&str>,
    family: IpFamily,
    out: &BenchOutput,
) -> anyhow::Result<()> {
    // Before the labs load it.
    let machine = machine::describe();
    // The user-space WireGuard anchors only where they are installed.
    let backends: Vec<BenchPath> = backends
        .iter()
        .copied()
        .filter(|&b| {
            let Some(a) = b.anchor() else {
                return true;
            };
            if !a.available() {
                crate::errln!(
                    "==> skipping the {} anchor: {} or wg is not installed",
                    a.name(),
                    a.binary()
                );
                return false;
            }
            crate::errln!("==> the {} anchor is {}", a.name(), a.version());
            true
        })
        .collect();
    let backends = &backends[..];
    let prefix = if name == crate::state::DEFAULT_NAME {
        "bench"
    } else {
        name
    };
    let names: Vec<String> = (0..backends.len())
        .map(|i| format!("{prefix}{i}"))
        .collect();
    // Each of them is torn down first (a crashed bench's leftover) and at the end: never a
    // lab of the user's that happens to have one of these names.
    for name in &names {
        refuse_a_lab_not_made_by_bench(name)?;
    }
    let mut relays = Vec::new();
    let mut forwarders = Vec::new();
    let mut anchors = Vec::new();
    let result = (|| -> anyhow::Result<Vec<Row>> {
        let mut probes = Vec::new();
        for (&b, name) in backends.iter().zip(&names) {
            crate::interrupt::check()?;
            let _ = down(name);
            let ok = up(&UpOptions {
                name: name.clone(),
                hosts: 2,
                backend: b.lab_backend(),
                containers_per_host: 2,
                network: "10.244.0.0/16".into(),
                ip_family: family,
                network6: crate::family::DEFAULT_NETWORK6.into(),
                etcd_members: 1,
                twilld_flags: Vec::new(),
                logs_kept_on_failure: true,
                made_by_bench: true,
            })?;
            if !ok {
                return Err(not_connected(b, name));
            }
            // The baseline comes from the first lab, whatever it runs (the bridge path needs
            // no agent, so a relay lab serves too).
            if probes.is_empty() {
                probes.push(Probe {
                    path: RowPath::SameHost,
                    lab: name.clone(),
                    server: (0, "h1c2"),
                    client: (0, "h1c1"),
                    v6: false,
                });
            }
            if b == BenchPath::TunRelay {
                let dir = state_dir(name);
                let mut st = LabState::load(&dir)?;
                relays.push(
                    crate::relay::start(&mut st, &dir)
                        .context("replacing twilld with the TUN relay")?,
                );
            }
            if b == BenchPath::Forwarder {
                let cmd = forwarder.context("the forwarder path needs --forwarder CMD")?;
                forwarders.push(forwarder::swap_in(cmd, name)?);
            }
            if let Some(a) = b.anchor() {
                let dir = state_dir(name);
                let mut st = LabState::load(&dir)?;
                anchors.push(wg_anchor::start(a, &mut st, &dir).with_context(|| {
                    format!("replacing twilld with {} configured like Flannel", a.name())
                })?);
            }
            if family.has_v4() {
                probes.push(Probe {
                    path: RowPath::TwoHosts(b),
                    lab: name.clone(),
                    server: (1, "h2c1"),
                    client: (0, "h1c1"),
                    v6: false,
                });
            }
            if family.has_v6() {
                probes.push(Probe {
                    path: RowPath::TwoHostsV6(b),
                    lab: name.clone(),
                    server: (1, "h2c1"),
                    client: (0, "h1c1"),
                    v6: true,
                });
            }
        }
        let mut samples: Vec<Samples> = probes.iter().map(|_| Samples::default()).collect();
        for round in 0..runs.max(1) {
            for (p, acc) in probes.iter().zip(samples.iter_mut()) {
                crate::interrupt::check()?;
                crate::errln!(
                    "==> round {}/{}: {}",
                    round + 1,
                    runs.max(1),
                    p.path.label()
                );
                measure_once(p, secs, acc)?;
            }
        }
        Ok(probes
            .iter()
            .zip(samples)
            .map(|(p, s)| Row {
                path: p.path,
                cpu_s_per_gb: p
                    .path
                    .cpu_counted()
                    .then(|| s.cpu_s / (s.bytes / 1e9).max(1e-9)),
                rounds: s.one.iter().copied().zip(s.four.iter().copied()).collect(),
                gbps_1: median(s.one),
                gbps_4: median(s.four),
                rtt_ms: median(s.rtt),
            })
            .collect())
    })();
    drop(relays);
    drop(forwarders);
    drop(anchors);
    let rows = conclude(result, &names, crate::kept_logs::keep, down)?;
    let text = report(&rows);
    crate::out!("\n{}", text.table);
    crate::outln!("machine: {machine}");
    if let Some(p) = &out.markdown {
        let md = format!("{}\nMachine: {machine}.\n", text.markdown);
        std::fs::write(p, md).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &out.svg {
        std::fs::write(p, svg_chart(&rows)).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// A lab of the bench whose containers do not all reach each other.
fn not_connected(b: BenchPath, name: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the {b} lab {name} is not fully connected: its agents' logs are kept in {}",
        kept_logs_dir(name).display()
    )
}

/// Ends a bench whose run gave `result`: the logs of its labs are kept when the run failed
/// (not when it was stopped, whatever the stop made fail on its way: iperf3 or ping killed by
/// the Ctrl-C), then every lab is torn down, whatever fails on the way. The rows, or every
/// error in one.
fn conclude<T>(
    result: anyhow::Result<T>,
    names: &[String],
    keep: impl Fn(&str),
    down: impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<T> {
    if result
        .as_ref()
        .is_err_and(|e| !crate::interrupt::is_interrupted(e))
        && !crate::interrupt::requested()
    {
        for name in names {
            keep(name);
        }
    }
    let teardown = down_all(names, down);
    match (result, teardown) {
        (Ok(rows), Ok(())) => Ok(rows),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(t)) => Err(t),
        // A stop is said by the caller ("interrupted"): what failed on the way out is news.
        (Err(e), Err(t)) if crate::interrupt::is_interrupted(&e) => Err(t),
        (Err(e), Err(t)) => Err(anyhow::anyhow!("{e:#}; then {t:#}")),
    }
}

/// Fails when lab `name` is up and `bench` did not build it: the bench would remove it.
fn refuse_a_lab_not_made_by_bench(name: &str) -> anyhow::Result<()> {
    let dir = state_dir(name);
    if !dir.exists() {
        return Ok(());
    }
    if LabState::load(&dir).is_ok_and(|st| st.made_by_bench) {
        return Ok(());
    }
    anyhow::bail!(
        "lab {name} is up and was not built by bench, which tears down and rebuilds the labs it \
         measures in ({name} among them): give bench another --name, or take the lab down with \
         `twill-lab down --name {name}`"
    )
}

/// Tears every lab in `names` down, also after one failed: a lab left for the first failure
/// stranded all the labs after it, with their agents and etcd running.
fn down_all(names: &[String], down: impl Fn(&str) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let failed: Vec<String> = names
        .iter()
        .filter_map(|name| {
            down(name)
                .err()
                .map(|e| format!("tearing down lab {name}: {e:#}"))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{}", failed.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LabBackend;
    use crate::kept_logs::testing::FakeLab;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_lab_is_torn_down_when_one_fails_to_and_all_failures_are_said() {
        let downed = std::cell::RefCell::new(Vec::new());
        let down = |name: &str| {
            downed.borrow_mut().push(name.to_string());
            if name == "b0" || name == "b2" {
                anyhow::bail!("{name} would not go");
            }
            Ok(())
        };
        let err = conclude(Ok(7), &names(&["b0", "b1", "b2", "b3"]), |_| {}, down).unwrap_err();
        assert_eq!(*downed.borrow(), names(&["b0", "b1", "b2", "b3"]));
        let msg = format!("{err:#}");
        assert!(msg.contains("b0 would not go"), "{msg}");
        assert!(msg.contains("b2 would not go"), "{msg}");

        // A failed run and a failed teardown: both are said.
        downed.borrow_mut().clear();
        let err = conclude::<()>(
            Err(anyhow::anyhow!("iperf3 failed")),
            &names(&["b0", "b1"]),
            |_| {},
            down,
        )
        .unwrap_err();
        assert_eq!(*downed.borrow(), names(&["b0", "b1"]));
        let msg = format!("{err:#}");
        assert!(
            msg.contains("iperf3 failed") && msg.contains("b0 would not go"),
            "{msg}"
        );
    }

    #[test]
    fn logs_are_kept_before_the_teardown_only_when_the_run_failed() {
        let log = std::cell::RefCell::new(Vec::new());
        let keep = |n: &str| log.borrow_mut().push(format!("keep {n}"));
        let down = |n: &str| {
            log.borrow_mut().push(format!("down {n}"));
            Ok(())
        };
        let labs = names(&["b0", "b1"]);
        assert_eq!(conclude(Ok(1), &labs, keep, down).unwrap(), 1);
        assert_eq!(*log.borrow(), ["down b0", "down b1"]);
        log.borrow_mut().clear();
        let stopped = conclude::<()>(Err(crate::interrupt::Interrupted.into()), &labs, keep, down);
        assert!(crate::interrupt::is_interrupted(&stopped.unwrap_err()));
        assert_eq!(*log.borrow(), ["down b0", "down b1"]);
        log.borrow_mut().clear();
        let _ = conclude::<()>(Err(anyhow::anyhow!("failed")), &labs, keep, down);
        assert_eq!(*log.borrow(), ["keep b0", "keep b1", "down b0", "down b1"]);
    }

    #[test]
    fn a_failed_bench_names_logs_that_its_teardown_left_in_place() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root (/run/twill-lab)");
            return;
        }
        let name = "utbenchlogs0";
        let _lab = FakeLab::new(name);
        let path = BenchPath::Backend(LabBackend::Udp);
        let err = conclude::<()>(
            Err(not_connected(path, name)),
            &names(&[name]),
            crate::kept_logs::keep,
            down,
        )
        .unwrap_err();
        assert!(!state_dir(name).exists(), "the lab was not torn down");
        let msg = format!("{err:#}");
        assert!(!msg.contains("twill-lab logs"), "names what is gone: {msg}");
        let kept = kept_logs_dir(name);
        assert!(msg.contains(&kept.display().to_string()), "{msg}");
        assert_eq!(
            std::fs::read_to_string(kept.join("h1-twilld.log")).unwrap_or_default(),
            "twilld: no lease\n",
            "{msg}"
        );
    }

    #[test]
    fn a_forwarder_command_adds_its_path_and_the_path_needs_one() {
        let udp = BenchPath::Backend(LabBackend::Udp);
        assert_eq!(
            with_forwarder(vec![udp], Some("swap.sh")).unwrap(),
            vec![udp, BenchPath::Forwarder]
        );
        assert_eq!(
            with_forwarder(vec![BenchPath::Forwarder], Some("swap.sh")).unwrap(),
            vec![BenchPath::Forwarder]
        );
        assert_eq!(with_forwarder(vec![udp], None).unwrap(), vec![udp]);
        let err = with_forwarder(vec![BenchPath::Forwarder], None).unwrap_err();
        assert!(err.to_string().contains("needs --forwarder CMD"), "{err}");
    }
}

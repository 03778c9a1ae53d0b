//! `twill-lab soak`: a lab with three etcd members and short lease TTLs, pings between the
//! first container of every pair of hosts, and faults injected one at a time at random
//! (bounded per kind) — etcd members, twilld agents and containers killed and restarted.
//! Reports pings lost per fault kind and leases lost, against the goal of none of either.
//! Everything is torn down at the end, on failure and on Ctrl-C.

mod faults;
mod leases;
mod pings;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::backend::LabBackend;
use crate::binaries::twill_run;
use crate::commands::down;
use crate::interrupt;
use crate::state::{LabExists, LabState, state_dir};
use crate::up::{self, UpOptions};
use faults::{Fault, FaultKind, Rng, Target};
use pings::Pinger;

/// What `soak` runs.
pub struct SoakOptions {
    pub name: String,
    pub hosts: usize,
    pub backend: LabBackend,
    pub duration: Duration,
    pub seed: u64,
    /// Faults of each kind at most.
    pub max_faults: usize,
    /// twilld's `--subnet-lease-ttl` (seconds); it renews every third of it.
    pub lease_ttl: u64,
    pub markdown: Option<PathBuf>,
}

/// The container each host keeps pinging with, and the one faults remove and run again.
const STEADY: &str = "c1";
const CHURN: &str = "c2";
/// etcd members (one may die: the quorum stays).
const ETCD_MEMBERS: usize = 3;

/// Unix time in seconds, the clock ping's `-D` stamps use.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Removes the lab however the soak ends; keeps its logs first when `keep_logs` (the soak
/// failed: the error may name them).
struct Teardown {
    name: String,
    keep_logs: bool,
    /// Off when the lab was never this soak's (its name was taken).
    armed: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.keep_logs {
            crate::kept_logs::keep(&self.name);
        }
        if let Err(e) = down(&self.name) {
            crate::errln!("twill-lab: tearing down lab {}: {e:#}", self.name);
        }
    }
}

/// Runs the soak; true when the goal was met (no lease lost; no ping lost, except on udp and
/// wireguard those to or from a host while its twilld, the data path, was down; every
/// restarted piece served again).
pub fn soak(o: &SoakOptions) -> anyhow::Result<bool> {
    anyhow::ensure!(
        o.hosts >= 2,
        "--hosts must be at least 2 (pings go between hosts)"
    );
    anyhow::ensure!(o.lease_ttl >= 6, "--lease-ttl must be at least 6 seconds");
    // Found out here rather than as a panic once the lab is built.
    anyhow::ensure!(
        Instant::now().checked_add(o.duration).is_some(),
        "a soak that long ends beyond what the clock can count: give fewer --minutes or --seconds"
    );
    if state_dir(&o.name).join("state.json").exists() {
        return Err(LabExists(o.name.clone()).into());
    }
    let mut teardown = Teardown {
        name: o.name.clone(),
        keep_logs: false,
        armed: true,
    };
    let result = run(o);
    // Another run took the name first: the lab is its, not this soak's to remove.
    teardown.armed = !result
        .as_ref()
        .is_err_and(|e| e.downcast_ref::<LabExists>().is_some());
    // Not after a stop, whatever it made fail on its way.
    teardown.keep_logs = result
        .as_ref()
        .is_err_and(|e| !interrupt::is_interrupted(e))
        && !interrupt::requested();
    result
}

/// The soak of a lab that [`soak`] removes at the end.
fn run(o: &SoakOptions) -> anyhow::Result<bool> {
    let twilld_flags: Vec<String> = [
        "--subnet-lease-ttl",
        &o.lease_ttl.to_string(),
        // With a TTL under two margins twilld renews every third of the TTL.
        "--subnet-lease-renew-margin",
        "1",
    ]
    .map(str::to_string)
    .to_vec();
    let mut lab = up::build(
        &UpOptions {
            ip_family: crate::family::IpFamily::Ipv4,
            network6: crate::family::DEFAULT_NETWORK6.into(),
            name: o.name.clone(),
            hosts: o.hosts,
            backend: o.backend,
            containers_per_host: 2,
            network: "10.244.0.0/16".into(),
            etcd_members: ETCD_MEMBERS,
            twilld_flags: twilld_flags.clone(),
            logs_kept_on_failure: true,
            made_by_bench: false,
        },
        true,
    )?;
    anyhow::ensure!(
        up::check_all_pairs(&lab.dir, &mut lab.state, o.backend, true)?,
        "the lab is not fully connected before any fault: its agents' logs are kept in {}",
        crate::kept_logs::kept_logs_dir(&o.name).display()
    );
    let mut etcd = lab.etcd.take().context("the soak owns its etcd members")?;

    crate::outln!(
        "==> soaking for {}s: pings between {} pairs every {}s, faults at random (seed {})",
        o.duration.as_secs(),
        o.hosts * (o.hosts - 1),
        pings::INTERVAL,
        o.seed
    );
    let pingers = start_pingers(&lab.state)?;
    let logs: Vec<PathBuf> = lab.state.hosts.iter().map(|h| h.log.clone()).collect();
    let start = leases::Start::take(&etcd.members[0], &logs)?;
    let began = now();
    let deadline = Instant::now().checked_add(o.duration).context(
        "the soak's end is beyond what the clock can count: give fewer --minutes or --seconds",
    )?;
    let short = o.duration < Duration::from_secs(120);
    let mut faults = Vec::new();
    let mut rng = Rng::new(o.seed);
    let mut target = Target {
        dir: &lab.dir,
        st: &mut lab.state,
        etcd: &mut etcd,
        twilld_flags: &twilld_flags,
        churn: CHURN,
    };
    if interrupt::pause(Duration::from_secs(if short { 2 } else { 5 })) {
        inject_until(
            &mut target,
            &mut rng,
            o,
            (began, deadline),
            short,
            &mut faults,
        )?;
    }
    let _ = interrupt::pause(deadline.saturating_duration_since(Instant::now()));
    let interrupted = interrupt::requested();

    crate::outln!("==> stopping the pings, replaying etcd's history of the lease keys");
    let echoes: Vec<(String, Vec<pings::Echo>)> = pingers
        .into_iter()
        .map(|p| (format!("{}→{}", p.from, p.to), p.finish()))
        .collect();
    let live = etcd
        .members
        .iter()
        .find(|m| m.is_healthy())
        .context("no etcd member answers at the end of the soak")?;
    let lease_report = start.report(live)?;
    let rep = report::Report {
        options: o,
        began,
        faults: &faults,
        echoes: &echoes,
        leases: &lease_report,
        subnets: lab
            .state
            .hosts
            .iter()
            .map(|h| (h.name.clone(), h.subnet.clone().unwrap_or_default()))
            .collect(),
        interrupted,
    };
    let text = rep.markdown();
    crate::outln!("\n{text}");
    if let Some(path) = &o.markdown {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rep.goal_met())
}

/// Injects faults one at a time until the next one would not end before `deadline`: each
/// round every kind that has budget left, in random order.
fn inject_until(
    target: &mut Target,
    rng: &mut Rng,
    o: &SoakOptions,
    (began, deadline): (f64, Instant),
    short: bool,
    faults: &mut Vec<Fault>,
) -> anyhow::Result<()> {
    let mut round: Vec<FaultKind> = Vec::new();
    loop {
        if round.is_empty() {
            round = FaultKind::ALL
                .into_iter()
                .filter(|k| faults.iter().filter(|f| f.kind == *k).count() < o.max_faults)
                .collect();
            if round.is_empty() {
                return Ok(());
            }
            rng.shuffle(&mut round);
        }
        let Some(kind) = round.pop() else {
            return Ok(());
        };
        // Down times stay well inside the lease TTL, so only a bug can cost a lease.
        let (down, settle) = match (kind, short) {
            (_, true) => (rng.range(1, 3), rng.range(2, 4)),
            (FaultKind::Container, false) => (rng.range(1, 5), rng.range(5, 12)),
            (_, false) => (rng.range(3, 12), rng.range(5, 12)),
        };
        // Time for the restart and the recovery checks too.
        let needed = Duration::from_secs(down + settle + 3);
        if Instant::now() + needed > deadline || interrupt::requested() {
            return Ok(());
        }
        let start = now();
        let done = target.inject(kind, rng, Duration::from_secs(down))?;
        crate::outln!(
            "    +{:>4.0}s  {kind}: {}, down {down}s, {}{}",
            start - began,
            done.target,
            match done.recovered {
                Some(s) => format!("serving again after {s:.1}s"),
                None => "NOT serving again".into(),
            },
            done.note
                .as_deref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default()
        );
        let keep_going = interrupt::pause(Duration::from_secs(settle));
        faults.push(Fault {
            kind,
            target: done.target,
            start,
            down: down as f64,
            recovered: done.recovered,
            end: now(),
            note: done.note,
        });
        if !keep_going {
            return Ok(());
        }
    }
}

/// One ping per ordered pair of hosts, between their steady containers.
fn start_pingers(st: &LabState) -> anyhow::Result<Vec<Pinger>> {
    let mut out = Vec::new();
    for (i, a) in st.hosts.iter().enumerate() {
        let from = format!("{}{STEADY}", a.name);
        let netns = container_netns(st, i, &from)?;
        for b in st.hosts.iter().filter(|b| b.name != a.name) {
            let to = format!("{}{STEADY}", b.name);
            let ip = b
                .containers
                .iter()
                .find(|c| c.name == to)
                .map(|c| c.ip.clone())
                .with_context(|| format!("no container {to}"))?;
            out.push(Pinger::start(&netns, &from, &to, &ip)?);
        }
    }
    Ok(out)
}

/// The named namespace twill-run made for container `name` on host `h`.
fn container_netns(st: &LabState, h: usize, name: &str) -> anyhow::Result<String> {
    let out = twill_run(st, h)?.args(["inspect", name]).output()?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("twill-run inspect {name}"))?;
    v["netns"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("container {name} has no network namespace"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kept_logs::kept_twilld_log;
    use crate::kept_logs::testing::FakeLab;

    #[test]
    fn a_failed_soak_keeps_its_logs_before_its_teardown_and_a_finished_one_does_not() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root (/run/twill-lab)");
            return;
        }
        let name = "utsoaklogs0";
        let _lab = FakeLab::new(name);
        drop(Teardown {
            name: name.into(),
            keep_logs: true,
            armed: true,
        });
        assert!(!state_dir(name).exists(), "the lab was not torn down");
        assert_eq!(
            std::fs::read_to_string(kept_twilld_log(name, "h1")).unwrap_or_default(),
            "twilld: no lease\n"
        );

        let _lab = FakeLab::new(name);
        drop(Teardown {
            name: name.into(),
            keep_logs: false,
            armed: true,
        });
        assert!(!state_dir(name).exists(), "the lab was not torn down");
        assert!(!kept_twilld_log(name, "h1").exists());
    }
}

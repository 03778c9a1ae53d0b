//! The soak's result as Markdown (what `--markdown` writes and docs/benchmarks.md quotes):
//! pings lost per fault kind, the faults that cost pings, leases lost, and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::SoakOptions;
use super::faults::{Fault, FaultKind};
use super::leases::{LOG_SIGNS, LeaseReport};
use super::pings::{Echo, INTERVAL};
use crate::backend::LabBackend;

/// Everything the soak measured.
pub struct Report<'a> {
    pub options: &'a SoakOptions,
    /// Unix time the pings started.
    pub began: f64,
    pub faults: &'a [Fault],
    /// Per ordered pair (`h1c1→h2c1`), every echo it sent.
    pub echoes: &'a [(String, Vec<Echo>)],
    pub leases: &'a LeaseReport,
    /// Host name and the subnet it leased when the lab came up.
    pub subnets: Vec<(String, String)>,
    pub interrupted: bool,
}

/// Echoes sent and lost, and by which pair.
#[derive(Default)]
struct Tally {
    sent: usize,
    lost: usize,
    by_pair: BTreeMap<String, usize>,
}

impl Report<'_> {
    /// Which fault's window an echo falls in (None: between faults).
    fn window(&self, at: f64) -> Option<usize> {
        self.faults
            .iter()
            .position(|f| f.start <= at && at <= f.end)
    }

    /// Per fault (by index) and between faults (None).
    fn tallies(&self) -> BTreeMap<Option<usize>, Tally> {
        let mut t: BTreeMap<Option<usize>, Tally> = BTreeMap::new();
        for (pair, echoes) in self.echoes {
            for e in echoes {
                let w = t.entry(self.window(e.at)).or_default();
                w.sent += 1;
                if e.lost {
                    w.lost += 1;
                    *w.by_pair.entry(pair.clone()).or_default() += 1;
                }
            }
        }
        t
    }

    /// Lease-key changes beyond one per twilld restart of the key's owner.
    fn unexplained_lease_changes(&self) -> usize {
        self.leases
            .lease_changes
            .iter()
            .map(|(key, n)| {
                let owner = self
                    .subnets
                    .iter()
                    .find(|(_, s)| key.ends_with(&s.replace('/', "-")))
                    .map(|(h, _)| h.as_str());
                let restarts = self
                    .faults
                    .iter()
                    .filter(|f| f.kind == FaultKind::Twilld && Some(f.target.as_str()) == owner)
                    .count();
                n.saturating_sub(restarts)
            })
            .sum()
    }

    /// Leases lost as etcd's history and the agents' logs count them (each on its own sees
    /// every loss; together they would count one loss twice): the larger of the two.
    fn leases_lost(&self) -> usize {
        let l = self.leases;
        let in_etcd = l.deleted.len() + l.new_keys.len() + self.unexplained_lease_changes();
        let in_logs = ["re-acquiring", "the old subnet was taken"]
            .iter()
            .map(|k| l.log.get(k).map_or(0, Vec::len))
            .sum();
        in_etcd.max(in_logs)
    }

    fn pings_lost(&self) -> usize {
        self.tallies().values().map(|t| t.lost).sum()
    }

    fn all_recovered(&self) -> bool {
        self.faults.iter().all(|f| f.recovered.is_some())
    }

    /// No lease lost, every restarted piece served again, and on the kernel backends (whose
    /// data path lives outside twilld) no ping lost. A udp node's data path is its twilld, so
    /// killing twilld costs pings there by design.
    pub fn goal_met(&self) -> bool {
        let pings_ok = self.options.backend == LabBackend::Udp || self.pings_lost() == 0;
        !self.interrupted && self.leases_lost() == 0 && self.all_recovered() && pings_ok
    }

    pub fn markdown(&self) -> String {
        let o = self.options;
        let mut s = String::new();
        let pairs = self.echoes.len();
        let _ = writeln!(
            s,
            "#### soak: {}, {} hosts, {} s, seed {}{}\n",
            o.backend,
            o.hosts,
            o.duration.as_secs(),
            o.seed,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "3 etcd members in the underlay; twilld `--subnet-lease-ttl {} --subnet-lease-renew-margin 1` \
             (renews every {} s); pings every {INTERVAL} s between the first container of each of \
             the {pairs} ordered host pairs; at most {} faults per kind, one at a time. A fault's \
             window runs from the kill to the end of the settle time after the restart.\n",
            o.lease_ttl,
            o.lease_ttl / 3,
            o.max_faults
        );
        let tallies = self.tallies();
        let _ = writeln!(
            s,
            "| fault | injected | down (s) | serving again after (s, max) | echoes in windows | pings lost |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for kind in FaultKind::ALL {
            let of_kind: Vec<(usize, &Fault)> = self
                .faults
                .iter()
                .enumerate()
                .filter(|(_, f)| f.kind == kind)
                .collect();
            let (sent, lost) = of_kind.iter().fold((0, 0), |(s, l), (i, _)| {
                tallies
                    .get(&Some(*i))
                    .map_or((s, l), |t| (s + t.sent, l + t.lost))
            });
            let down = min_max(of_kind.iter().map(|(_, f)| f.down));
            let never = of_kind
                .iter()
                .filter(|(_, f)| f.recovered.is_none())
                .count();
            let recovered = of_kind
                .iter()
                .filter_map(|(_, f)| f.recovered)
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
            let recovered = match (recovered, never) {
                (_, n) if n > 0 => format!("{n} never"),
                (Some(r), _) => format!("{r:.1}"),
                (None, _) => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {kind} | {} | {down} | {recovered} | {sent} | {lost} |",
                of_kind.len()
            );
        }
        let quiet = tallies.get(&None);
        let _ = writeln!(
            s,
            "| none (between faults) | - | - | - | {} | {} |",
            quiet.map_or(0, |t| t.sent),
            quiet.map_or(0, |t| t.lost)
        );
        let lossy: Vec<String> = tallies
            .iter()
            .filter(|(_, t)| t.lost > 0)
            .map(|(w, t)| {
                let when = match w {
                    Some(i) => {
                        let f = &self.faults[*i];
                        format!(
                            "fault {} at +{:.0} s ({}: {}{})",
                            i + 1,
                            f.start - self.began,
                            f.kind,
                            f.target,
                            f.note
                                .as_deref()
                                .map(|n| format!("; {n}"))
                                .unwrap_or_default()
                        )
                    }
                    None => "between faults".into(),
                };
                let pairs: Vec<String> =
                    t.by_pair.iter().map(|(p, n)| format!("{p} {n}")).collect();
                format!("- {when}: {} lost ({})", t.lost, pairs.join(", "))
            })
            .collect();
        if !lossy.is_empty() {
            let _ = writeln!(s, "\nWhere pings were lost:\n\n{}", lossy.join("\n"));
        }
        let l = self.leases;
        let _ = writeln!(s, "\n| leases | count |\n|---|---:|");
        let _ = writeln!(s, "| lease keys deleted in etcd | {} |", l.deleted.len());
        let _ = writeln!(
            s,
            "| new lease keys (a node took another subnet) | {} |",
            l.new_keys.len()
        );
        let _ = writeln!(
            s,
            "| lease id changes not explained by a twilld restart (all changes: {}) | {} |",
            l.lease_changes.values().sum::<usize>(),
            self.unexplained_lease_changes()
        );
        for (sign, meaning) in LOG_SIGNS {
            let n = l.log.get(sign).map_or(0, Vec::len);
            let _ = writeln!(s, "| twilld log: {meaning} (\"{sign}\") | {n} |");
        }
        let quoted: Vec<String> = l
            .deleted
            .iter()
            .map(|(k, rev)| format!("- deleted {k} at revision {rev}"))
            .chain(l.new_keys.iter().map(|k| format!("- new key {k}")))
            .chain(
                ["re-acquiring", "the old subnet was taken"]
                    .iter()
                    .flat_map(|k| l.log.get(k).into_iter().flatten().take(5))
                    .map(|line| format!("- `{}`", line.chars().take(300).collect::<String>())),
            )
            .collect();
        if !quoted.is_empty() {
            let _ = writeln!(s, "\n{}", quoted.join("\n"));
        }
        let _ = writeln!(
            s,
            "\n**Verdict: {}** — {} leases lost, {} pings lost{}.",
            if self.goal_met() {
                "goal met"
            } else {
                "goal NOT met"
            },
            self.leases_lost(),
            self.pings_lost(),
            if self.all_recovered() {
                ""
            } else {
                ", some restarted pieces never served again"
            }
        );
        s
    }
}

fn min_max(v: impl Iterator<Item = f64>) -> String {
    let v: Vec<f64> = v.collect();
    match (
        v.iter().copied().reduce(f64::min),
        v.iter().copied().reduce(f64::max),
    ) {
        (Some(a), Some(b)) if a == b => format!("{a:.0}"),
        (Some(a), Some(b)) => format!("{a:.0}–{b:.0}"),
        _ => "-".into(),
    }
}

//! The soak's result as Markdown (what `--markdown` writes and docs/benchmarks.md quotes):
//! pings lost per fault kind, the faults that cost pings, leases lost, and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::SoakOptions;
use super::faults::{Fault, FaultKind};
use super::leases::{LOG_SIGNS, LeaseReport};
use super::pings::{Echo, INTERVAL};

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

/// Seconds after a restarted twilld serves again in which its data path may still be coming
/// up (the first packets to each peer start a WireGuard handshake); a ping lost later is
/// not excused.
const DATA_PATH_GRACE: f64 = 2.0;

/// Echoes sent and lost, and by which pair.
#[derive(Default)]
struct Tally {
    sent: usize,
    lost: usize,
    /// Of `lost`, those sent to or from a host whose twilld carries its data path (udp,
    /// wireguard) while that twilld was down: lost by design.
    while_down: usize,
    by_pair: BTreeMap<String, usize>,
}

/// Whether container `container` (`h1c1`) runs on host `host` (`h1`, not `h10`).
fn on_host(container: &str, host: &str) -> bool {
    container
        .strip_prefix(host)
        .is_some_and(|rest| rest.starts_with('c'))
}

impl Report<'_> {
    /// Which fault's window an echo falls in (None: between faults).
    fn window(&self, at: f64) -> Option<usize> {
        self.faults
            .iter()
            .position(|f| f.start <= at && at <= f.end)
    }

    /// Whether an echo of `pair` (`h1c1→h2c1`) sent at `at` was lost by design: on udp and
    /// wireguard a host's twilld is its data path, so from its kill until it serves again
    /// (and a short grace for the handshakes) its containers cannot reach other hosts.
    fn lost_by_design(&self, pair: &str, at: f64) -> bool {
        if !self.options.backend.data_path_in_twilld() {
            return false;
        }
        let (from, to) = pair.split_once('→').unwrap_or((pair, ""));
        self.faults.iter().any(|f| {
            let serving = f.start + f.down + f.recovered.unwrap_or(f64::INFINITY);
            f.kind == FaultKind::Twilld
                && (on_host(from, &f.target) || on_host(to, &f.target))
                && f.start <= at
                && at <= serving + DATA_PATH_GRACE
        })
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
                    if self.lost_by_design(pair, e.at) {
                        w.while_down += 1;
                    }
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

    /// Pings lost while a udp or wireguard host's twilld (its data path) was down.
    fn pings_lost_by_design(&self) -> usize {
        self.tallies().values().map(|t| t.while_down).sum()
    }

    fn all_recovered(&self) -> bool {
        self.faults.iter().all(|f| f.recovered.is_some())
    }

    /// No lease lost, every restarted piece served again, and no ping lost — except, on udp
    /// and wireguard (whose data path is twilld), pings to or from a host while its twilld
    /// was down: killing it costs those by design, and nothing more.
    pub fn goal_met(&self) -> bool {
        let pings_ok = self.pings_lost() == self.pings_lost_by_design();
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
            "| fault | injected | down (s) | serving again after (s, max) | echoes in windows | pings lost | of them while the host's twilld (data path) was down |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for kind in FaultKind::ALL {
            let of_kind: Vec<(usize, &Fault)> = self
                .faults
                .iter()
                .enumerate()
                .filter(|(_, f)| f.kind == kind)
                .collect();
            let (sent, lost, down_lost) = of_kind.iter().fold((0, 0, 0), |(s, l, d), (i, _)| {
                tallies
                    .get(&Some(*i))
                    .map_or((s, l, d), |t| (s + t.sent, l + t.lost, d + t.while_down))
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
                "| {kind} | {} | {down} | {recovered} | {sent} | {lost} | {down_lost} |",
                of_kind.len()
            );
        }
        let quiet = tallies.get(&None);
        let _ = writeln!(
            s,
            "| none (between faults) | - | - | - | {} | {} | {} |",
            quiet.map_or(0, |t| t.sent),
            quiet.map_or(0, |t| t.lost),
            quiet.map_or(0, |t| t.while_down)
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
            "\n**Verdict: {}** — {} leases lost, {} pings lost{}{}.",
            if self.goal_met() {
                "goal met"
            } else {
                "goal NOT met"
            },
            self.leases_lost(),
            self.pings_lost(),
            match self.pings_lost_by_design() {
                0 => String::new(),
                n => format!(
                    " ({n} of them while the {} data path of their host, its twilld, was down: \
                     by design; {} otherwise)",
                    self.options.backend,
                    self.pings_lost() - n
                ),
            },
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::LabBackend;

    fn options(backend: LabBackend) -> SoakOptions {
        SoakOptions {
            name: "t".into(),
            hosts: 2,
            backend,
            duration: Duration::from_secs(60),
            seed: 1,
            max_faults: 1,
            lease_ttl: 60,
            markdown: None,
        }
    }

    /// h1's twilld killed at 100 s, down 5 s, serving again 1 s after its restart; the
    /// window ends at 116 s.
    fn twilld_kill() -> Fault {
        Fault {
            kind: FaultKind::Twilld,
            target: "h1".into(),
            start: 100.0,
            down: 5.0,
            recovered: Some(1.0),
            end: 116.0,
            note: None,
        }
    }

    fn echoes(lost_at: &[f64]) -> Vec<Echo> {
        (0..100)
            .map(|i| {
                let at = 90.0 + i as f64 * 0.2;
                let lost = lost_at.iter().any(|l| (l - at).abs() < 1e-6);
                Echo { at, lost }
            })
            .collect()
    }

    fn verdict(backend: LabBackend, pairs: Vec<(String, Vec<Echo>)>) -> (bool, String) {
        let o = options(backend);
        let faults = [twilld_kill()];
        let leases = LeaseReport::default();
        let r = Report {
            options: &o,
            began: 90.0,
            faults: &faults,
            echoes: &pairs,
            leases: &leases,
            subnets: Vec::new(),
            interrupted: false,
        };
        (r.goal_met(), r.markdown())
    }

    #[test]
    fn pings_lost_while_a_userspace_data_path_is_down_are_by_design_and_nothing_else() {
        // Lost from the kill until 2 s after it served again (108 s): by design on udp and
        // wireguard, for pairs with h1 at either end.
        let down = echoes(&[100.0, 104.0, 107.8]);
        for backend in [LabBackend::Udp, LabBackend::Wireguard] {
            let (ok, text) = verdict(
                backend,
                vec![
                    ("h1c1→h2c1".into(), down.clone()),
                    ("h2c1→h1c1".into(), down.clone()),
                ],
            );
            assert!(ok, "{text}");
            assert!(text.contains("6 pings lost (6 of them while the"), "{text}");
            assert!(text.contains("| 6 | 6 |"), "{text}");
        }
        // The same losses on a kernel backend: twilld is not its data path.
        let (ok, text) = verdict(LabBackend::Vxlan, vec![("h1c1→h2c1".into(), down.clone())]);
        assert!(!ok, "{text}");
        assert!(text.contains("| 3 | 0 |"), "{text}");
    }

    #[test]
    fn pings_lost_after_the_grace_between_faults_or_between_other_hosts_are_not_excused() {
        for (pair, lost_at) in [
            // After the grace (108 s), still inside the fault's window.
            ("h1c1→h2c1", 109.0),
            // Between faults.
            ("h1c1→h2c1", 95.0),
            // During h1's fault, but between h2 and h10 (not h1).
            ("h2c1→h10c1", 102.0),
        ] {
            let (ok, text) = verdict(LabBackend::Udp, vec![(pair.into(), echoes(&[lost_at]))]);
            assert!(!ok, "{pair} at {lost_at}: {text}");
            assert!(text.contains("goal NOT met"), "{text}");
        }
    }

    #[test]
    fn a_container_is_on_its_host_and_not_on_a_prefix_of_it() {
        assert!(on_host("h1c1", "h1"));
        assert!(on_host("h10c2", "h10"));
        assert!(!on_host("h10c1", "h1"));
        assert!(!on_host("h2c1", "h1"));
    }
}

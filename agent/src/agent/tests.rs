//! The lease state machine over the in-memory store, on tokio's paused clock: hours of lease
//! life in milliseconds. The real-etcd versions of the important cases are in
//! `agent/tests/cluster.rs`.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::time::{Instant, sleep};

use super::*;
use crate::lease_store::memory::MemStore;
use crate::netconf::BackendType;
use crate::test_log::{capture_logs, logs};

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;

/// Our subnet in [`Case::pinned`]: no case writes another node's lease on it.
const OURS: &str = "10.5.1.0/24";

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn record(ip: [u8; 4]) -> LeaseRecord {
    LeaseRecord::new(Ipv4Addr::from(ip), BackendType::HostGw)
}

fn foreign(ip: &str) -> String {
    format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#)
}

/// What the agent did to its node.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Did {
    SetSubnet(Ipv4Net),
    /// The peer subnets applied.
    Apply(Vec<Ipv4Net>),
    Ready,
}

#[derive(Clone, Default)]
struct FakeNode(Arc<Mutex<Vec<Did>>>);

impl FakeNode {
    fn log(&self) -> Vec<Did> {
        self.0.lock().unwrap().clone()
    }
    fn subnets_set(&self) -> Vec<Ipv4Net> {
        self.log()
            .into_iter()
            .filter_map(|d| match d {
                Did::SetSubnet(s) => Some(s),
                _ => None,
            })
            .collect()
    }
    fn applies(&self) -> usize {
        self.log()
            .iter()
            .filter(|d| matches!(d, Did::Apply(_)))
            .count()
    }
    fn last_apply(&self) -> Vec<Ipv4Net> {
        self.log()
            .into_iter()
            .rev()
            .find_map(|d| match d {
                Did::Apply(p) => Some(p),
                _ => None,
            })
            .unwrap_or_default()
    }
}

impl Node for FakeNode {
    async fn set_subnet(&mut self, subnet: Subnets) -> anyhow::Result<()> {
        let v4 = subnet.v4.expect("these cases lease IPv4");
        self.0.lock().unwrap().push(Did::SetSubnet(v4));
        Ok(())
    }
    async fn apply(&mut self, peers: &Peers) {
        self.0.lock().unwrap().push(Did::Apply(
            // What a backend programs: one entry per IPv4 subnet any key names.
            crate::backend::by_v4(peers, net("10.5.0.0/16"), None)
                .into_keys()
                .collect(),
        ));
    }
    fn refresh(&mut self) {}
    fn ready(&mut self) {
        self.0.lock().unwrap().push(Did::Ready);
    }
}

struct Case {
    store: MemStore,
    node: FakeNode,
    timing: Timing,
    hint: Option<Ipv4Net>,
    ip: [u8; 4],
    metrics: Arc<Metrics>,
}

impl Case {
    fn new(ttl: i64, margin: i64) -> Case {
        Case {
            store: MemStore::with_config(CONFIG),
            node: FakeNode::default(),
            timing: Timing {
                ttl,
                renew_margin: margin,
                reconcile_every: Duration::from_secs(10),
            },
            hint: None,
            ip: [192, 168, 1, 1],
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// A case whose own subnet is pinned to [`OURS`] (as a subnet file pins it), for the cases
    /// that write other nodes' leases on fixed subnets while the agent runs: a random pick
    /// lands on one of them 1 time in 255, and the agent then rightly leases again (a CI run
    /// failed that way).
    fn pinned(ttl: i64, margin: i64) -> Case {
        let mut c = Case::new(ttl, margin);
        c.hint = Some(net(OURS));
        c
    }

    /// Runs the agent while `script` runs; returns what the agent returned, if it ended.
    async fn run(&self, script: impl Future<Output = ()>) -> Option<anyhow::Result<()>> {
        let config = NetworkConfig::parse(CONFIG).unwrap();
        let want = Wanted {
            config,
            config_text: Some(CONFIG.to_string()),
            record: record(self.ip),
            timing: self.timing,
            hint: self.hint.map(Subnets::from).unwrap_or_default(),
        };
        let mut agent = Agent::new(
            self.store.clone(),
            self.node.clone(),
            want,
            self.metrics.clone(),
        );
        tokio::select! {
            r = agent.run_loop() => Some(r),
            () = script => None,
        }
    }

    /// When keepalives were sent, in whole seconds after `start`.
    fn reachable(&self) -> bool {
        self.metrics.etcd_reachable.load(Ordering::Relaxed)
    }

    /// `twilld_etcd_operation_errors_total{op}`.
    fn op_errors(&self, op: &str) -> u64 {
        let ops = self.metrics.etcd_op_errors.lock().unwrap();
        ops.get(op).copied().unwrap_or(0)
    }

    /// Samples `twilld_etcd_reachable` every 100 ms for `d`; whether it was 0 at any sample.
    async fn ever_unreachable_within(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        let mut down = false;
        while Instant::now() < end {
            down |= !self.reachable();
            sleep(Duration::from_millis(100)).await;
        }
        down
    }

    fn renewals_since(&self, start: Instant) -> Vec<u64> {
        self.store
            .calls("keep_alive")
            .iter()
            .map(|t| t.duration_since(start).as_secs())
            .collect()
    }

    /// Our key: the one bound to a lease whose value names our IP.
    fn own(&self) -> Option<(Ipv4Net, crate::lease_store::memory::Kv)> {
        let ip = Ipv4Addr::from(self.ip).to_string();
        self.store
            .keys()
            .into_iter()
            .find(|(_, kv)| kv.value.contains(&format!("\"{ip}\"")))
            .and_then(|(s, kv)| Some((s.v4?, kv)))
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn leases_once_renews_at_the_margin_and_keeps_the_lease_for_hours() {
    let c = Case::new(150, 60);
    let start = Instant::now();
    // Ends between two renewals (at 3600 s and 3690 s), so the count is exact.
    let ended = c.run(sleep(secs(3645))).await;
    assert!(ended.is_none(), "the agent stopped: {ended:?}");
    let (subnet, kv) = c.own().expect("a lease");
    assert_eq!(c.node.subnets_set(), [subnet], "one subnet, set once");
    assert_eq!(c.node.log().iter().filter(|d| **d == Did::Ready).count(), 1);
    // TTL 150 s, margin 60 s: every 90 s, never later.
    let renewals = c.renewals_since(start);
    assert_eq!(renewals.len(), 3600 / 90, "{renewals:?}");
    assert!(
        renewals
            .iter()
            .enumerate()
            .all(|(i, t)| *t == 90 * (i as u64 + 1)),
        "{renewals:?}"
    );
    assert_eq!(c.store.calls("grant").len(), 1, "never re-leased");
    assert_ne!(kv.lease, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_is_retried_within_seconds_and_the_lease_survives_a_35s_outage() {
    // The bug found from outside: TTL 150 s, margin 60 s (renewal at 90 s); the store gone
    // from 80 s to 115 s. The retry used to come at the next tick (180 s), after expiry.
    let c = Case::new(150, 60);
    let store = c.store.clone();
    let start = Instant::now();
    let ended = c
        .run(async {
            sleep(secs(80)).await;
            store.set_down(true);
            sleep(secs(35)).await;
            store.set_down(false);
            sleep(secs(400)).await;
        })
        .await;
    assert!(ended.is_none(), "the agent stopped: {ended:?}");
    let (subnet, kv) = c.own().expect("the lease survived");
    assert_eq!(c.node.subnets_set(), [subnet], "never re-acquired");
    assert_eq!(c.store.calls("grant").len(), 1, "never re-leased");
    let renewals = c.renewals_since(start);
    let first_after_outage = renewals.iter().find(|t| **t >= 115).copied();
    assert!(
        first_after_outage.is_some_and(|t| t < 130),
        "renewed within seconds of the store's return, well before expiry at 150 s: {renewals:?}"
    );
    assert!(
        renewals.iter().filter(|t| (90..115).contains(*t)).count() >= 3,
        "retried during the outage: {renewals:?}"
    );
    assert_eq!(c.store.get(subnet).map(|k| k.lease), Some(kv.lease));
}

#[tokio::test(start_paused = true)]
async fn retries_never_wait_past_the_lease_even_with_a_long_backoff() {
    // Default-like proportions scaled down: TTL 3600 s, margin 600 s; the store is down for
    // most of the margin. Retries must keep coming while the lease lasts.
    let c = Case::new(3600, 600);
    let store = c.store.clone();
    let start = Instant::now();
    c.run(async {
        sleep(secs(2990)).await;
        store.set_down(true);
        sleep(secs(560)).await; // back 50 s before expiry at 3600 s
        store.set_down(false);
        sleep(secs(100)).await;
    })
    .await;
    let renewals = c.renewals_since(start);
    assert!(
        renewals.iter().any(|t| (3550..3600).contains(t)),
        "a retry landed in the 50 s between the store's return and expiry: {renewals:?}"
    );
    assert_eq!(
        c.store.calls("grant").len(),
        1,
        "the lease was kept: {renewals:?}"
    );
    assert!(
        renewals.windows(2).all(|w| w[1] - w[0] <= 30),
        "{renewals:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn renewals_past_the_expiry_back_off_instead_of_retrying_every_second() {
    // etcd away for an hour: past the lease's expiry (150 s) every retry came 1 s after the
    // last, each with a warning: 3,400 lines and calls for one outage.
    let c = Case::new(150, 60);
    let store = c.store.clone();
    let start = Instant::now();
    c.run(async {
        sleep(secs(80)).await;
        store.set_down(true);
        sleep(secs(3600)).await;
        store.set_down(false);
        sleep(secs(120)).await;
    })
    .await;
    let renewals = c.renewals_since(start);
    let during: Vec<u64> = renewals
        .iter()
        .copied()
        .filter(|t| (150..3680).contains(t))
        .collect();
    assert!(during.len() < 200, "{} retries: {during:?}", during.len());
    assert!(
        during.windows(2).all(|w| w[1] - w[0] <= 50),
        "still three tries per TTL: {during:?}"
    );
    let (subnet, _) = c.own().expect("leased again once the store is back");
    assert_eq!(c.node.subnets_set()[0], subnet, "the same subnet");
}

#[tokio::test(start_paused = true)]
async fn a_deleted_key_is_leased_again_with_the_same_subnet() {
    let c = Case::new(3600, 600);
    let store = c.store.clone();
    let node = c.node.clone();
    c.run(async {
        sleep(secs(5)).await;
        let s = node.subnets_set()[0];
        store.delete(s);
        sleep(secs(5)).await;
    })
    .await;
    let (subnet, _) = c.own().expect("leased again");
    assert_eq!(
        c.node.subnets_set(),
        [subnet, subnet],
        "same subnet, told twice"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_noticed_at_renewal_and_leased_again() {
    let c = Case::new(150, 60);
    let store = c.store.clone();
    let node = c.node.clone();
    c.run(async {
        sleep(secs(5)).await;
        let s = node.subnets_set()[0];
        let lease = store.get(s).unwrap().lease;
        // The store lost the lease (e.g. restored from an old backup) without a watch event.
        store.set_down(true);
        store.revoke(lease);
        store.set_down(false);
        sleep(secs(100)).await;
    })
    .await;
    let (subnet, kv) = c.own().expect("leased again");
    assert_eq!(c.node.subnets_set(), [subnet, subnet]);
    assert_eq!(c.store.calls("grant").len(), 2);
    assert_ne!(kv.lease, 0);
}

#[tokio::test(start_paused = true)]
async fn a_lost_race_moves_on_to_another_subnet() {
    let c = Case::new(3600, 600);
    c.store.lose_next_race();
    c.run(sleep(secs(5))).await;
    let (subnet, _) = c.own().expect("a lease");
    assert_eq!(c.node.subnets_set(), [subnet]);
    assert_eq!(c.store.keys().len(), 2, "the winner's and ours");
    assert_eq!(c.store.calls("create_lease").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_subnet_file_hint_is_honoured_and_a_taken_hint_is_not_stolen() {
    let mut c = Case::new(3600, 600);
    c.hint = Some(net("10.5.77.0/24"));
    c.run(sleep(secs(1))).await;
    assert_eq!(c.node.subnets_set(), [net("10.5.77.0/24")]);

    let mut c = Case::new(3600, 600);
    c.store
        .put_foreign(net("10.5.77.0/24"), &foreign("192.168.1.2"), 3600);
    c.hint = Some(net("10.5.77.0/24"));
    c.run(sleep(secs(1))).await;
    let (subnet, _) = c.own().expect("a lease");
    assert_ne!(subnet, net("10.5.77.0/24"));
}

#[tokio::test(start_paused = true)]
async fn a_new_subnet_never_overlaps_another_nodes_lease_of_another_length() {
    // Others hold /20s (an older SubnetLen, or wide reservations) over all but one /20 of the
    // network: a /24 inside one of them is not free, nor is a hint inside one.
    for hint in [None, Some(net("10.5.3.0/24"))] {
        let mut c = Case::new(3600, 600);
        for i in 0..16u8 {
            if i == 8 {
                continue;
            }
            c.store.put_foreign(
                net(&format!("10.5.{}.0/20", i * 16)),
                &foreign(&format!("192.168.3.{i}")),
                if i % 2 == 0 { 3600 } else { 0 },
            );
        }
        c.hint = hint;
        c.run(sleep(secs(1))).await;
        let (subnet, _) = c.own().expect("a lease");
        assert!(
            net("10.5.128.0/20").contains(&subnet),
            "{subnet} overlaps another node's /20 (hint {hint:?})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn our_lease_that_no_longer_fits_the_config_is_removed() {
    // A /26 of ours from before SubnetLen became 24: useless now, and it would hold its
    // range for its TTL and make this node a peer of itself.
    let c = Case::new(3600, 600);
    let old = net("10.5.9.64/26");
    c.store
        .put_foreign(old, &foreign(&Ipv4Addr::from(c.ip).to_string()), 3600);
    c.run(sleep(secs(1))).await;
    let (subnet, _) = c.own().expect("a lease");
    assert_eq!(subnet.prefix_len(), 24);
    let keys = c.store.keys();
    assert!(
        !keys.keys().any(|s| s.v4 == Some(old)),
        "the old key is gone: {keys:?}"
    );
    assert!(!c.node.last_apply().contains(&old), "not our own peer");
}

#[tokio::test(start_paused = true)]
async fn a_full_network_is_retried_until_a_subnet_frees() {
    let c = Case::new(3600, 600);
    let config = NetworkConfig::parse(CONFIG).unwrap();
    let mut last = 0;
    for (i, s) in config.subnets().enumerate() {
        last = c
            .store
            .put_foreign(s, &foreign(&format!("192.168.2.{}", i % 250)), 3600);
    }
    let store = c.store.clone();
    c.run(async {
        sleep(secs(30)).await;
        store.revoke(last);
        sleep(secs(30)).await;
    })
    .await;
    assert!(c.store.calls("snapshot").len() > 3, "kept trying");
    let (subnet, _) = c.own().expect("leased the freed subnet");
    assert_eq!(subnet, config.subnets().last().unwrap());
    // Before: every retry granted a store lease and left it bound to nothing for its TTL.
    assert_eq!(
        c.store.live_leases(),
        config.subnets().count(),
        "the other nodes' leases and ours, no unused one ({} grants)",
        c.store.calls("grant").len()
    );
}

#[tokio::test(start_paused = true)]
async fn peers_are_not_removed_while_the_first_listing_fails() {
    // A restart: the lease is resumed, then etcd stops answering before the peers are
    // listed. The routes the earlier run installed must stay: a reconcile against the empty
    // peer set of a node that never listed them would remove every one of them.
    let c = Case::pinned(3600, 600);
    c.store
        .put_foreign(net("10.5.9.0/24"), &foreign("192.168.1.9"), 3600);
    // The acquire's snapshot works; every later one fails until healed.
    c.store.fail_after("snapshot", 1);
    let store = c.store.clone();
    c.run(async {
        sleep(secs(60)).await;
        store.heal();
        sleep(secs(30)).await;
    })
    .await;
    let log = c.node.log();
    let first = log.iter().find_map(|d| match d {
        Did::Apply(p) => Some(p),
        _ => None,
    });
    assert!(
        first.is_some_and(|p| p.contains(&net("10.5.9.0/24"))),
        "{log:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_compacted_watch_is_re_listed_and_later_peers_are_seen() {
    let c = Case::pinned(3600, 600);
    let store = c.store.clone();
    c.run(async {
        sleep(secs(2)).await;
        store.put_foreign(net("10.5.9.0/24"), &foreign("192.168.1.9"), 3600);
        sleep(secs(1)).await;
        store.compact();
        sleep(secs(1)).await;
        store.put_foreign(net("10.5.10.0/24"), &foreign("192.168.1.10"), 3600);
        sleep(secs(1)).await;
    })
    .await;
    let seen = c.node.last_apply();
    assert!(seen.contains(&net("10.5.9.0/24")), "{seen:?}");
    assert!(seen.contains(&net("10.5.10.0/24")), "{seen:?}");
    assert!(c.store.calls("watch").len() >= 2, "watched again");
}

#[tokio::test(start_paused = true)]
async fn a_watch_cancelled_for_another_reason_than_compaction_is_said_and_retried_with_backoff() {
    // etcd cancels a watch it refuses (permission denied after a role change) with a reason
    // and no compact revision. It was logged as a compaction and set up again at once, in a
    // loop as fast as etcd answered for as long as the refusal lasted.
    let (buf, _guard) = capture_logs();
    let c = Case::pinned(3600, 600);
    let store = c.store.clone();
    let cancelled_at = Arc::new(Mutex::new(None));
    let at = cancelled_at.clone();
    let flapped = Arc::new(Mutex::new(None));
    let was_down = flapped.clone();
    c.run(async {
        sleep(secs(2)).await;
        assert!(c.reachable());
        *at.lock().unwrap() = Some(Instant::now());
        store.cancel_watches("etcdserver: permission denied", 4);
        *was_down.lock().unwrap() = Some(c.ever_unreachable_within(secs(40)).await);
        store.put_foreign(net("10.5.12.0/24"), &foreign("192.168.1.12"), 3600);
        sleep(secs(1)).await;
    })
    .await;
    // etcd answered every time: the refusals are counted, but etcd is not said unreachable
    // (the gauge went 0 at each cancel and 1 at the next snapshot, an alert firing and
    // clearing with every retry).
    assert_eq!(
        *flapped.lock().unwrap(),
        Some(false),
        "twilld_etcd_reachable stays 1 through the refusals"
    );
    assert_eq!(
        c.op_errors("watch"),
        5,
        "each cancel (the running watch's, then 4 refused) is counted"
    );
    assert_eq!(c.metrics.etcd_errors.load(Ordering::Relaxed), 5);
    let log = logs(&buf);
    assert!(
        log.contains("etcdserver: permission denied")
            && !log.contains("compacted")
            && !log.contains("(compaction)"),
        "the reason is said, not a compaction:\n{log}"
    );
    let start = cancelled_at.lock().unwrap().expect("cancelled");
    let watches: Vec<Duration> = c
        .store
        .calls("watch")
        .into_iter()
        .filter(|t| *t >= start)
        .map(|t| t - start)
        .collect();
    assert_eq!(
        watches.len(),
        5,
        "4 refused, then one that works: {watches:?}"
    );
    let gaps: Vec<u128> = std::iter::once(Duration::ZERO)
        .chain(watches.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [500, 1000, 2000, 4000, 8000], "backoff: {watches:?}");
    assert!(
        c.node.last_apply().contains(&net("10.5.12.0/24")),
        "watching again after the refusals"
    );
    assert_eq!(c.node.subnets_set().len(), 1, "the lease was never lost");
}

#[tokio::test(start_paused = true)]
async fn a_call_etcd_answers_with_an_error_is_counted_without_saying_etcd_is_unreachable() {
    // A renewal etcd refuses (a denied permission) is a failed call, but etcd answered:
    // `twilld_etcd_reachable` stays 1. One it cannot be reached for makes it 0.
    let c = Case::new(150, 60);
    let store = c.store.clone();
    let flapped = Arc::new(Mutex::new((None, None)));
    let seen = flapped.clone();
    c.run(async {
        sleep(secs(2)).await;
        assert!(c.reachable());
        store.refuse_after("keep_alive", 0);
        // The renewal is due at 90 s and retried within seconds.
        let refused = c.ever_unreachable_within(secs(100)).await;
        let refused_errors = c.op_errors("renew");
        store.heal();
        sleep(secs(10)).await;
        // The next renewal, due 90 s after the last, reaches no etcd.
        store.fail_after("keep_alive", 0);
        let failed = c.ever_unreachable_within(secs(90)).await;
        store.heal();
        *seen.lock().unwrap() = (Some((refused, refused_errors)), Some(failed));
        sleep(secs(10)).await;
    })
    .await;
    let (refused, failed) = *flapped.lock().unwrap();
    let (refused_down, refused_errors) = refused.expect("the script ran");
    assert!(refused_errors >= 1, "the refused renewals are counted");
    assert!(
        !refused_down,
        "etcd answered the refused renewals: still reachable"
    );
    assert_eq!(failed, Some(true), "a renewal that reaches no etcd says so");
    assert!(c.reachable(), "reachable again once renewals work");
    assert_eq!(c.node.subnets_set().len(), 1, "the lease was never lost");
}

#[tokio::test(start_paused = true)]
async fn a_compacted_watch_is_re_listed_at_once_and_said_as_a_compaction() {
    let (buf, _guard) = capture_logs();
    let c = Case::pinned(3600, 600);
    let store = c.store.clone();
    c.run(async {
        sleep(secs(2)).await;
        store.compact();
        sleep(secs(1)).await;
    })
    .await;
    let log = logs(&buf);
    assert!(log.contains("compacted"), "{log}");
    let watches = c.store.calls("watch");
    assert_eq!(watches.len(), 2, "{watches:?}");
    assert_eq!(
        watches[1] - watches[0],
        secs(2),
        "re-listed and watched again at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_watch_is_re_established_after_the_store_returns() {
    let c = Case::pinned(3600, 600);
    let store = c.store.clone();
    c.run(async {
        sleep(secs(2)).await;
        store.set_down(true);
        sleep(secs(20)).await;
        store.set_down(false);
        sleep(secs(15)).await;
        store.put_foreign(net("10.5.11.0/24"), &foreign("192.168.1.11"), 3600);
        sleep(secs(1)).await;
    })
    .await;
    assert!(c.node.last_apply().contains(&net("10.5.11.0/24")));
    assert_eq!(c.node.subnets_set().len(), 1, "the lease was never lost");
}

#[tokio::test(start_paused = true)]
async fn a_reservation_is_used_never_renewed_and_never_converted() {
    let c = Case::new(150, 60);
    let value = foreign("192.168.1.1");
    c.store.put_foreign(net("10.5.42.0/24"), &value, 0);
    c.run(sleep(secs(600))).await;
    assert_eq!(c.node.subnets_set(), [net("10.5.42.0/24")]);
    assert!(c.store.calls("keep_alive").is_empty());
    assert_eq!(c.store.get(net("10.5.42.0/24")).unwrap().lease, 0);
}

#[tokio::test(start_paused = true)]
async fn our_existing_lease_is_resumed_after_a_restart() {
    let c = Case::new(3600, 600);
    let id = c
        .store
        .put_foreign(net("10.5.50.0/24"), &foreign("192.168.1.1"), 3600);
    c.run(sleep(secs(1))).await;
    assert_eq!(c.node.subnets_set(), [net("10.5.50.0/24")]);
    assert_eq!(c.store.get(net("10.5.50.0/24")).unwrap().lease, id);
    assert!(c.store.calls("grant").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lease_of_an_earlier_run_with_another_ttl_moves_to_one_of_todays_ttl() {
    // An earlier run with --subnet-lease-ttl 60; this one runs with a day and renews an hour
    // before expiry. Resumed as it was, the 60 s lease expired long before the first renewal:
    // the key was deleted (every peer dropped its routes to this node) and leased again.
    let c = Case::new(86400, 3600);
    let short = c
        .store
        .put_foreign(net("10.5.50.0/24"), &foreign("192.168.1.1"), 60);
    c.run(sleep(secs(600))).await;
    assert_eq!(c.node.subnets_set(), [net("10.5.50.0/24")]);
    let kv = c.store.get(net("10.5.50.0/24"));
    assert!(
        kv.as_ref().is_some_and(|kv| kv.lease != short),
        "the key must be bound to a lease of today's TTL: {kv:?}"
    );
    // The other way round: a day-long lease of an earlier run would keep a dead node's subnet
    // for a day although this run asks for 60 s.
    let c = Case::new(60, 10);
    let long = c
        .store
        .put_foreign(net("10.5.51.0/24"), &foreign("192.168.1.1"), 86400);
    c.run(sleep(secs(1))).await;
    sleep(secs(120)).await;
    assert!(
        c.store.get(net("10.5.51.0/24")).is_none(),
        "the agent stopped 2 min ago with a 60 s TTL (day-long lease {long:x} kept?)"
    );
}

#[tokio::test(start_paused = true)]
async fn the_store_lease_a_ttl_move_leaves_is_revoked_unless_another_key_uses_it() {
    // The key moved to a lease of today's TTL; the old lease, bound to nothing, ran on for
    // its TTL (a day, with an earlier run's default).
    let c = Case::new(3600, 600);
    let old = c
        .store
        .put_foreign(net("10.5.52.0/24"), &foreign("192.168.1.1"), 86400);
    c.run(sleep(secs(1))).await;
    let kv = c.store.get(net("10.5.52.0/24")).expect("our key");
    assert_ne!(kv.lease, old, "moved");
    assert!(
        !c.store.lease_alive(old),
        "the old lease {old:x} was revoked"
    );
    assert_eq!(c.store.live_leases(), 1, "only the new lease runs");

    // Another node's key bound to the same lease (an operator's `etcdctl put --lease`): a
    // revoke would delete it, so the old lease stays.
    let c = Case::new(3600, 600);
    let shared = c
        .store
        .put_foreign(net("10.5.53.0/24"), &foreign("192.168.1.1"), 86400);
    c.store
        .put_bound(net("10.5.54.0/24"), &foreign("192.168.1.54"), shared);
    c.run(sleep(secs(1))).await;
    assert_ne!(c.store.get(net("10.5.53.0/24")).unwrap().lease, shared);
    assert!(c.store.lease_alive(shared), "not revoked");
    assert!(
        c.store.get(net("10.5.54.0/24")).is_some(),
        "the other node's key is still there"
    );
}

#[tokio::test(start_paused = true)]
async fn our_corrupt_value_taken_back_moves_to_a_lease_of_todays_ttl() {
    // The subnet file's key with an unreadable value was taken back on its live lease,
    // whatever that lease's TTL: a 60 s lease of an earlier run expired long before this
    // run's first renewal (an hour before a day), and the key went with it.
    let mut c = Case::new(86400, 3600);
    let short = c.store.put_foreign(net("10.5.96.0/24"), "garbage", 60);
    c.hint = Some(net("10.5.96.0/24"));
    c.run(sleep(secs(600))).await;
    assert_eq!(
        c.node.subnets_set(),
        [net("10.5.96.0/24")],
        "kept, never lost"
    );
    let kv = c
        .store
        .get(net("10.5.96.0/24"))
        .expect("our key (not expired with the old 60 s lease)");
    assert!(kv.value.contains("192.168.1.1"), "{}", kv.value);
    assert_ne!(kv.lease, short, "bound to a lease of today's TTL");
    assert!(!c.store.lease_alive(short), "the old lease was revoked");
}

#[tokio::test(start_paused = true)]
async fn a_live_peer_whose_value_turns_corrupt_keeps_its_last_good_value() {
    let c = Case::pinned(3600, 600);
    let store = c.store.clone();
    let node = c.node.clone();
    c.run(async {
        sleep(secs(1)).await;
        let id = store.put_foreign(net("10.5.70.0/24"), &foreign("192.168.1.70"), 3600);
        sleep(secs(1)).await;
        assert!(node.last_apply().contains(&net("10.5.70.0/24")));
        // Garbage written over the live peer's value, bound to its lease as before.
        store.put_bound(net("10.5.70.0/24"), "garbage", id);
        sleep(secs(30)).await;
        assert!(
            node.last_apply().contains(&net("10.5.70.0/24")),
            "kept on watch events"
        );
        // A re-list (after compaction) keeps it too.
        store.compact();
        sleep(secs(30)).await;
    })
    .await;
    assert!(c.node.last_apply().contains(&net("10.5.70.0/24")));
}

#[tokio::test(start_paused = true)]
async fn our_own_value_corrupted_or_edited_is_written_back() {
    let c = Case::new(3600, 600);
    let store = c.store.clone();
    let node = c.node.clone();
    c.run(async {
        sleep(secs(1)).await;
        let s = node.subnets_set()[0];
        let id = store.get(s).unwrap().lease;
        store.put_bound(s, "garbage", id);
        sleep(secs(1)).await;
        // Edited, still naming us (another PublicIP would mean another node took the subnet).
        let edited = foreign("192.168.1.1").replace("host-gw", "udp");
        store.put_bound(s, &edited, id);
        sleep(secs(1)).await;
        // A plain `etcdctl put` detaches the key from our lease.
        store.put_bound(s, "garbage", 0);
        sleep(secs(1)).await;
    })
    .await;
    let (subnet, kv) = c.own().expect("our value is back");
    assert_eq!(kv.value, record([192, 168, 1, 1]).to_json());
    assert_ne!(kv.lease, 0, "bound to our lease again");
    assert_eq!(c.node.subnets_set(), [subnet], "never moved");
    assert_eq!(c.store.calls("update_lease").len(), 3);
}

#[tokio::test(start_paused = true)]
async fn our_lease_made_a_reservation_by_the_operator_stays_one() {
    // Flannel's documented way to reserve a node's subnet: put the lease's value again
    // without an etcd lease. Before, twilld "repaired" it by binding it to its lease again:
    // the reservation was gone, and the subnet with the node's next long outage.
    let c = Case::new(3600, 600);
    let store = c.store.clone();
    let node = c.node.clone();
    c.run(async {
        sleep(secs(1)).await;
        let s = node.subnets_set()[0];
        let value = store.get(s).unwrap().value;
        store.put_bound(s, &value, 0);
        sleep(secs(1)).await;
        // An edit of the reservation's value is written back, as a reservation.
        let edited = foreign("192.168.1.1").replace("host-gw", "udp");
        store.put_bound(s, &edited, 0);
        // Three TTLs: a reservation needs no renewal.
        sleep(secs(3 * 3600)).await;
    })
    .await;
    let (subnet, kv) = c.own().expect("our key is still there");
    assert_eq!(kv.lease, 0, "still a reservation");
    assert_eq!(kv.value, record([192, 168, 1, 1]).to_json());
    assert_eq!(c.node.subnets_set(), [subnet], "never moved");
    assert_eq!(
        c.store.live_leases(),
        0,
        "the unused store lease was revoked"
    );
}

#[tokio::test(start_paused = true)]
async fn our_key_taken_by_a_node_whose_value_twill_cannot_read_is_left_to_it() {
    let c = Case::new(3600, 600);
    let store = c.store.clone();
    let node = c.node.clone();
    let theirs = r#"{"PublicIP":"192.168.1.9","PublicIPv6":null,"BackendType":"ipip"}"#;
    let first = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = first.clone();
    c.run(async {
        sleep(secs(1)).await;
        let s = node.subnets_set()[0];
        *seen.lock().unwrap() = Some(s);
        let id = store.put_foreign(net("10.5.200.0/24"), "{}", 3600);
        store.put_bound(s, theirs, id);
        sleep(secs(2)).await;
    })
    .await;
    let first = first.lock().unwrap().unwrap();
    let set = c.node.subnets_set();
    assert_eq!(set.len(), 2, "leased again: {set:?}");
    assert_ne!(set[1], first);
    assert_eq!(
        c.store.get(first).unwrap().value,
        theirs,
        "never written over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rival_writer_of_our_key_gets_paused_write_backs_not_a_write_storm() {
    // Before: two writers that both take the key for theirs (two nodes given the same public
    // IP) overwrote each other as fast as the store answered.
    let c = Case::new(3600, 600);
    let store = c.store.clone();
    let node = c.node.clone();
    let ours = record([192, 168, 1, 1]).to_json();
    let rival = foreign("192.168.1.1").replace("host-gw", "udp");
    c.run(async {
        sleep(secs(1)).await;
        let s = node.subnets_set()[0];
        let id = store.get(s).unwrap().lease;
        for _ in 0..6000 {
            if store.get(s).is_some_and(|kv| kv.value == ours) {
                store.put_bound(s, &rival, id);
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let writes = c.store.calls("update_lease").len();
    assert!(
        (4..=20).contains(&writes),
        "{writes} write-backs in a minute of a rival rewriting our key"
    );
    assert_eq!(c.node.subnets_set().len(), 1, "never moved");
}

#[tokio::test(start_paused = true)]
async fn reconciles_missed_while_leasing_again_are_not_replayed_at_once() {
    // Before: the reconcile interval replayed every tick missed while the agent waited ten
    // minutes for a free subnet: 60 reconciles (netlink dumps, firewall runs) back to back.
    let c = Case::pinned(3600, 600);
    let config = NetworkConfig::parse(CONFIG).unwrap();
    let store = c.store.clone();
    let node = c.node.clone();
    let applies_after = Arc::new(Mutex::new((0, 0)));
    let seen = applies_after.clone();
    c.run(async {
        sleep(secs(1)).await;
        // Every subnet taken by other nodes, ours included: we must lease again, and wait.
        let mut last = 0;
        for (i, s) in config.subnets().enumerate() {
            let ip = format!("192.168.3.{}", i % 250);
            if s == net(OURS) {
                let id = store.get(s).unwrap().lease;
                store.put_bound(s, &foreign(&ip), id);
            } else {
                last = store.put_foreign(s, &foreign(&ip), 3600);
            }
        }
        sleep(secs(600)).await;
        // The agent waits inside its acquire (no reconcile runs): count from here.
        let waiting = node.applies();
        store.revoke(last);
        while node.subnets_set().len() < 2 {
            sleep(secs(1)).await;
        }
        sleep(secs(2)).await;
        *seen.lock().unwrap() = (waiting, node.applies());
    })
    .await;
    assert_eq!(c.node.subnets_set().len(), 2, "leased again");
    let (before, after) = *applies_after.lock().unwrap();
    assert!(
        after - before <= 2,
        "{} reconciles within 3 s of leasing again",
        after - before
    );
}

#[tokio::test(start_paused = true)]
async fn another_node_holding_our_subnet_makes_us_lease_again() {
    let c = Case::new(3600, 600);
    let store = c.store.clone();
    let node = c.node.clone();
    c.run(async {
        sleep(secs(1)).await;
        let s = node.subnets_set()[0];
        let id = store.get(s).unwrap().lease;
        store.put_bound(s, &foreign("192.168.1.2"), id);
        sleep(secs(1)).await;
    })
    .await;
    let set = c.node.subnets_set();
    assert_eq!(set.len(), 2, "{set:?}");
    assert_ne!(set[0], set[1], "moved to a free subnet: {set:?}");
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_our_own_value_corrupt_keeps_the_subnet() {
    let mut c = Case::new(3600, 600);
    let id = c.store.put_foreign(net("10.5.99.0/24"), "garbage", 3600);
    c.hint = Some(net("10.5.99.0/24"));
    c.run(sleep(secs(1))).await;
    assert_eq!(c.node.subnets_set(), [net("10.5.99.0/24")]);
    let kv = c.store.get(net("10.5.99.0/24")).unwrap();
    assert!(kv.value.contains("192.168.1.1"), "{}", kv.value);
    assert_eq!(kv.lease, id, "the live lease was resumed");

    // Detached from any lease by a plain `etcdctl put`: taken back bound to a new lease.
    let mut c = Case::new(3600, 600);
    c.store.put_foreign(net("10.5.98.0/24"), "garbage", 0);
    c.hint = Some(net("10.5.98.0/24"));
    c.run(sleep(secs(1))).await;
    assert_eq!(c.node.subnets_set(), [net("10.5.98.0/24")]);
    assert_ne!(
        c.store.get(net("10.5.98.0/24")).unwrap().lease,
        0,
        "not a reservation"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hinted_subnet_another_node_holds_in_a_value_twill_cannot_read_is_not_taken() {
    // Our lease expired during a partition; a Flannel node with a backend twill does not
    // know leased the subnet. Its value names it: the subnet is its, not ours to take back.
    let mut c = Case::new(3600, 600);
    let theirs = r#"{"PublicIP":"192.168.1.9","PublicIPv6":null,"BackendType":"ipip"}"#;
    c.store.put_foreign(net("10.5.97.0/24"), theirs, 3600);
    c.hint = Some(net("10.5.97.0/24"));
    c.run(sleep(secs(1))).await;
    let set = c.node.subnets_set();
    assert_eq!(set.len(), 1);
    assert_ne!(set[0], net("10.5.97.0/24"), "not stolen");
    assert_eq!(
        c.store.get(net("10.5.97.0/24")).unwrap().value,
        theirs,
        "their value untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn corrupt_peer_values_are_skipped_and_good_peers_applied() {
    let c = Case::pinned(3600, 600);
    let store = c.store.clone();
    c.run(async {
        sleep(secs(1)).await;
        store.put_foreign(net("10.5.60.0/24"), "garbage", 3600);
        store.put_foreign(net("10.5.61.0/24"), &foreign("192.168.1.61"), 3600);
        sleep(secs(1)).await;
    })
    .await;
    let seen = c.node.last_apply();
    assert!(!seen.contains(&net("10.5.60.0/24")));
    assert!(seen.contains(&net("10.5.61.0/24")));
}

#[tokio::test(start_paused = true)]
async fn config_changes_at_runtime_are_noticed_and_the_agent_keeps_running() {
    let c = Case::new(3600, 600);
    let store = c.store.clone();
    let ended = c
        .run(async {
            sleep(secs(1)).await;
            store.set_config(Some(r#"{"Network":"10.6.0.0/16"}"#));
            store.set_config(Some("garbage"));
            store.set_config(None);
            store.set_config(Some(CONFIG));
            sleep(secs(1)).await;
        })
        .await;
    assert!(ended.is_none());
    assert_eq!(c.node.subnets_set().len(), 1);
}

#[test]
fn config_changes_name_the_fields() {
    let running = NetworkConfig::parse(CONFIG).unwrap();
    assert_eq!(config_change(&running, Some(CONFIG)), ConfigChange::Same);
    assert_eq!(
        config_change(
            &running,
            Some(r#"{"Network": "10.5.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}"#)
        ),
        ConfigChange::Same,
        "only the spacing differs"
    );
    assert_eq!(config_change(&running, None), ConfigChange::Deleted);
    let ConfigChange::Changed(fields) = config_change(
        &running,
        Some(r#"{"Network":"10.6.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#),
    ) else {
        panic!("a change");
    };
    assert!(
        fields.contains(&"Network 10.5.0.0/16 → 10.6.0.0/16".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"Backend.Type host-gw → vxlan".to_string()),
        "{fields:?}"
    );
    let ConfigChange::Invalid(why) = config_change(&running, Some(r#"{"Network":"10.5.0.0/30"}"#))
    else {
        panic!("invalid");
    };
    assert!(why.contains("Network"), "{why}");
    let line = config_change(&running, Some(r#"{"Network":"10.6.0.0/16"}"#))
        .describe("/coreos.com/network/config");
    assert!(line.contains("restart twilld"), "{line}");
}

#[test]
fn renewal_interval_follows_the_margin() {
    let t = |ttl, margin| Timing {
        ttl,
        renew_margin: margin,
        reconcile_every: secs(10),
    };
    assert_eq!(t(86400, 3600).renew_interval(), secs(82800));
    assert_eq!(t(150, 60).renew_interval(), secs(90));
    assert_eq!(
        t(100, 60).renew_interval(),
        secs(33),
        "short TTL: three times per TTL"
    );
    assert_eq!(t(2, 60).renew_interval(), secs(1));
}

#[tokio::test(start_paused = true)]
async fn ready_counts_only_routed_peers_and_a_lease_outside_the_network_is_said_once() {
    // Before: `ready … peers=4` here (every key but one), and nothing said about the leases
    // outside the Network, which are never routed.
    let (buf, _guard) = capture_logs();
    let c = Case::pinned(3600, 600);
    let store = c.store.clone();
    store.put_foreign(net("10.5.2.0/24"), &foreign("192.168.1.2"), 3600);
    // Outside the Network 10.5.0.0/16 (an earlier Network's, or another cluster's).
    store.put_foreign(net("10.99.3.0/24"), &foreign("192.168.1.3"), 3600);
    // Reservations for this node's own public IP, outside and inside the network: the node
    // takes its subnet file's subnet, so neither is a peer.
    store.put_foreign(net("10.98.0.0/24"), &foreign("192.168.1.1"), 0);
    store.put_foreign(net("10.5.7.0/24"), &foreign("192.168.1.1"), 0);
    c.run(async {
        sleep(secs(2)).await;
        // Arriving by the watch, and written again: said once.
        store.put_foreign(net("10.99.4.0/24"), &foreign("192.168.1.4"), 3600);
        sleep(secs(1)).await;
        store.put_foreign(net("10.99.4.0/24"), &foreign("192.168.1.44"), 3600);
        sleep(secs(1)).await;
    })
    .await;
    assert_eq!(c.own().map(|o| o.0), Some(net(OURS)));
    let log = logs(&buf);
    let ready: Vec<&str> = log.lines().filter(|l| l.contains(" ready ")).collect();
    assert!(
        ready.len() == 1 && ready[0].contains("peers=1"),
        "one routed peer (10.5.2.0/24):\n{log}"
    );
    for (subnet, said) in [
        ("10.99.3.0/24", 1),
        ("10.99.4.0/24", 1),
        ("10.98.0.0/24", 1),
        ("10.5.2.0/24", 0),
        ("10.5.7.0/24", 0),
    ] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("is not routed") && l.contains(&format!("{subnet} is outside")))
            .collect();
        assert_eq!(lines.len(), said, "{subnet}:\n{log}");
        if said == 1 {
            assert!(
                lines[0].contains("outside the Network 10.5.0.0/16")
                    && lines[0].contains(&format!(
                        "etcdctl del /coreos.com/network/subnets/{}",
                        subnet.replace('/', "-")
                    )),
                "{}",
                lines[0]
            );
        }
    }
}

#[test]
fn the_subnet_file_keeps_its_subnets_as_flannel_reads_them() {
    // Before: a file without FLANNEL_MTU (or with any other line broken) did not parse as a
    // whole, so the node leased other subnets. Flannel reads FLANNEL_SUBNET and
    // FLANNEL_IPV6_SUBNET alone for that.
    let (buf, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subnet.env");
    let hint = |text: &str| {
        std::fs::write(&file, text).unwrap();
        subnet_file_hint(&file)
    };
    assert_eq!(
        hint("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"),
        Subnets::from(net("10.5.72.0/24"))
    );
    assert_eq!(
        hint(
            "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_SUBNET=fd00:5:0:48::1/64\nFLANNEL_MTU=banana\n"
        ),
        Subnets {
            v4: Some(net("10.5.72.0/24")),
            v6: Some("fd00:5:0:48::/64".parse().unwrap()),
        }
    );
    assert_eq!(
        hint("export FLANNEL_SUBNET=\"10.5.9.1/24\"\n# FLANNEL_SUBNET=10.5.1.1/24\n"),
        Subnets::from(net("10.5.9.0/24"))
    );
    assert!(!logs(&buf).contains("WARN"), "{}", logs(&buf));
    // One family that does not read keeps the other; none at all is said.
    assert_eq!(
        hint("FLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_IPV6_SUBNET=nonsense\n"),
        Subnets::from(net("10.5.9.0/24"))
    );
    assert_eq!(hint("FLANNEL_MTU=1450\n"), Subnets::default());
    let log = logs(&buf);
    assert!(
        log.contains("FLANNEL_IPV6_SUBNET=\"nonsense\" is not an IPv6 subnet")
            && log.contains("it has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET"),
        "{log}"
    );
    // No file: nothing to keep, nothing to say.
    assert_eq!(
        subnet_file_hint(&dir.path().join("none.env")),
        Subnets::default()
    );
}

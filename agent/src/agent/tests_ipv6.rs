//! The lease state machine with IPv6 on: dual-stack and IPv6-only leases over the in-memory
//! store, one key per node for both families, and leases told apart by their key.

use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use tokio::time::sleep;

use super::*;
use crate::backend::{by_v4, by_v6};
use crate::lease_store::memory::MemStore;
use crate::netconf::BackendType;

const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}"#;
const V6ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}"#;

fn v4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

/// What the node was told and what a backend would program after each apply.
#[derive(Clone, Default)]
struct Recorder {
    set: Arc<Mutex<Vec<Subnets>>>,
    /// The IPv4 and IPv6 subnets of the last apply, as `by_v4`/`by_v6` give them.
    programmed: Arc<Mutex<(Vec<Ipv4Net>, Vec<Ipv6Net>)>>,
}

impl Node for Recorder {
    async fn set_subnet(&mut self, subnet: Subnets) -> anyhow::Result<()> {
        self.set.lock().unwrap().push(subnet);
        Ok(())
    }
    async fn apply(&mut self, peers: &Peers) {
        let local = self.set.lock().unwrap().last().copied().unwrap_or_default();
        let four = by_v4(peers, v4("10.5.0.0/16"), local.v4)
            .into_keys()
            .collect();
        let six = by_v6(peers, Some(v6("fd00:5::/48")), local.v6)
            .into_keys()
            .collect();
        *self.programmed.lock().unwrap() = (four, six);
    }
    fn refresh(&mut self) {}
    fn ready(&mut self) {}
}

fn record(config: &NetworkConfig, last: u8) -> LeaseRecord {
    let public_ip = if config.enable_ipv4 {
        std::net::Ipv4Addr::new(192, 168, 1, last)
    } else {
        std::net::Ipv4Addr::UNSPECIFIED
    };
    LeaseRecord {
        public_ipv6: Some(Ipv6Addr::new(0xfd31, 0, 0, 0, 0, 0, 0, u16::from(last))),
        ..LeaseRecord::new(public_ip, BackendType::HostGw)
    }
}

/// Runs node `last` on `store` with `text` while `script` runs.
async fn run_node(
    store: &MemStore,
    text: &str,
    last: u8,
    hint: Subnets,
    node: Recorder,
    script: impl Future<Output = ()>,
) {
    let config = NetworkConfig::parse(text).unwrap();
    let want = Wanted {
        record: record(&config, last),
        config,
        config_text: Some(text.to_string()),
        timing: Timing {
            ttl: 3600,
            renew_margin: 600,
            reconcile_every: Duration::from_secs(10),
        },
        hint,
    };
    let mut agent = Agent::new(store.clone(), node, want, Arc::new(Metrics::default()));
    tokio::select! {
        r = agent.run_loop() => panic!("the agent ended: {r:?}"),
        () = script => {}
    }
}

/// Runs node 1 (`node`) on `store` with the dual-stack config for a second, from `hint`.
async fn run_dual_for_a_second(store: &MemStore, hint: Subnets, node: &Recorder) {
    run_node(
        store,
        DUAL,
        1,
        hint,
        node.clone(),
        sleep(Duration::from_secs(1)),
    )
    .await;
}

/// Runs node 1 (`a`) on `store` with `text`; a second in, node 2 (`b`) for a second; then
/// node 1 a second more.
async fn run_two_nodes(store: &MemStore, text: &str, a: Recorder, b: Recorder) {
    let s2 = store.clone();
    run_node(store, text, 1, Subnets::default(), a, async {
        sleep(Duration::from_secs(1)).await;
        run_node(
            &s2,
            text,
            2,
            Subnets::default(),
            b,
            sleep(Duration::from_secs(1)),
        )
        .await;
        sleep(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dual_stack_nodes_lease_one_key_with_both_families() {
    let store = MemStore::with_config(DUAL);
    let (a, b) = (Recorder::default(), Recorder::default());
    run_two_nodes(&store, DUAL, a.clone(), b.clone()).await;
    let keys = store.keys();
    assert_eq!(keys.len(), 2, "one key per node: {keys:?}");
    for (s, kv) in &keys {
        assert!(s.v4.is_some() && s.v6.is_some(), "{s}");
        assert!(kv.value.contains(r#""PublicIPv6":"fd31::"#), "{}", kv.value);
    }
    let own_a = a.set.lock().unwrap()[0];
    let own_b = b.set.lock().unwrap()[0];
    assert_ne!(own_a.v4, own_b.v4);
    assert_ne!(own_a.v6, own_b.v6);
    let (four, six) = a.programmed.lock().unwrap().clone();
    assert_eq!(
        (four, six),
        (vec![own_b.v4.unwrap()], vec![own_b.v6.unwrap()])
    );
}

#[tokio::test(start_paused = true)]
async fn ipv6_only_nodes_never_share_a_lease() {
    // Flannel gives every IPv6-only node PublicIP 0.0.0.0 and the key 0.0.0.0-0&<v6>, so the
    // second node finds the first one's lease "by its IP" and takes it over.
    let store = MemStore::with_config(V6ONLY);
    let (a, b) = (Recorder::default(), Recorder::default());
    run_two_nodes(&store, V6ONLY, a.clone(), b.clone()).await;
    let keys = store.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for (s, kv) in &keys {
        assert_eq!(s.v4, None, "{s}");
        assert!(
            !s.key().contains('&') && !s.key().contains('.'),
            "{}",
            s.key()
        );
        assert!(
            kv.value
                .starts_with(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd31::"#),
            "{}",
            kv.value
        );
    }
    assert_eq!(
        a.set.lock().unwrap().len(),
        1,
        "node 1 never lost its lease"
    );
    let own_b = b.set.lock().unwrap()[0];
    assert_eq!(a.programmed.lock().unwrap().1, vec![own_b.v6.unwrap()]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_both_subnets_by_public_ip_or_subnet_file() {
    let store = MemStore::with_config(DUAL);
    let first = Recorder::default();
    run_dual_for_a_second(&store, Subnets::default(), &first).await;
    let held = first.set.lock().unwrap()[0];
    // By public IP (the subnet file is gone).
    let again = Recorder::default();
    run_dual_for_a_second(&store, Subnets::default(), &again).await;
    assert_eq!(again.set.lock().unwrap()[0], held);
    // By the subnet file after the key expired.
    store.delete(held);
    let hint = held;
    let third = Recorder::default();
    run_dual_for_a_second(&store, hint, &third).await;
    assert_eq!(third.set.lock().unwrap()[0], held);
    assert_eq!(store.keys().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn moving_to_dual_stack_keeps_the_ipv4_subnet() {
    let store = MemStore::with_config(DUAL);
    let cfg = NetworkConfig::parse(DUAL).unwrap();
    // Our lease from before the network went dual-stack, still alive.
    let old = LeaseRecord::new(record(&cfg, 1).public_ip, BackendType::HostGw);
    store.put_foreign(v4("10.5.14.0/24"), &old.to_json(), 3600);
    let node = Recorder::default();
    run_dual_for_a_second(&store, Subnets::default(), &node).await;
    let held = node.set.lock().unwrap()[0];
    assert_eq!(
        held.v4,
        Some(v4("10.5.14.0/24")),
        "same IPv4 subnet, new key"
    );
    assert!(held.v6.is_some());
    assert_eq!(
        store.keys().len(),
        1,
        "the old key, which the config no longer fits, is removed as Flannel does"
    );
}

#[tokio::test(start_paused = true)]
async fn two_keys_naming_one_subnet_keep_it_until_both_are_gone() {
    // A node moving to dual stack: `10.5.14.0-24` and `10.5.14.0-24&fd00:5:0:e::-64` are two
    // leases; deleting either must leave the subnet programmed (the bug: they were one peer,
    // and the first delete removed the route the other key still held).
    let store = MemStore::with_config(DUAL);
    let cfg = NetworkConfig::parse(DUAL).unwrap();
    let peer = record(&cfg, 9);
    let old_key = Subnets::from(v4("10.5.14.0/24"));
    let new_key = Subnets {
        v4: Some(v4("10.5.14.0/24")),
        v6: Some(v6("fd00:5:0:e::/64")),
    };
    store.put_foreign(
        old_key,
        &LeaseRecord::new(peer.public_ip, BackendType::HostGw).to_json(),
        3600,
    );
    store.put_foreign(new_key, &peer.to_json(), 3600);
    let node = Recorder::default();
    let programmed = node.programmed.clone();
    let s = store.clone();
    run_node(&store, DUAL, 1, Subnets::default(), node, async {
        sleep(Duration::from_secs(1)).await;
        assert_eq!(programmed.lock().unwrap().0, vec![v4("10.5.14.0/24")]);
        s.delete(old_key);
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *programmed.lock().unwrap(),
            (vec![v4("10.5.14.0/24")], vec![v6("fd00:5:0:e::/64")]),
            "the dual-stack key still holds both"
        );
        s.put_foreign(
            old_key,
            &LeaseRecord::new(peer.public_ip, BackendType::HostGw).to_json(),
            3600,
        );
        sleep(Duration::from_secs(1)).await;
        s.delete(new_key);
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *programmed.lock().unwrap(),
            (vec![v4("10.5.14.0/24")], vec![]),
            "the IPv4-only key still holds the IPv4 subnet; the IPv6 one is gone"
        );
        s.delete(old_key);
        sleep(Duration::from_secs(1)).await;
        assert_eq!(*programmed.lock().unwrap(), (vec![], vec![]));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn flannel_dual_stack_and_v4_only_peers_are_programmed_for_what_they_hold() {
    let store = MemStore::with_config(DUAL);
    let flannel = r#"{"PublicIP":"192.168.1.7","PublicIPv6":"fd31::7","BackendType":"host-gw"}"#;
    store.put_foreign(
        Subnets {
            v4: Some(v4("10.5.7.0/24")),
            v6: Some(v6("fd00:5:0:7::/64")),
        },
        flannel,
        3600,
    );
    // An IPv4-only node (an older twill or Flannel without EnableIPv6).
    store.put_foreign(
        v4("10.5.8.0/24"),
        r#"{"PublicIP":"192.168.1.8","PublicIPv6":null,"BackendType":"host-gw"}"#,
        3600,
    );
    // An IPv6-only twill node (PublicIP 0.0.0.0): no IPv4 route for it.
    store.put_foreign(
        Subnets {
            v4: None,
            v6: Some(v6("fd00:5:0:9::/64")),
        },
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd31::9","BackendType":"host-gw"}"#,
        3600,
    );
    let node = Recorder::default();
    run_dual_for_a_second(&store, Subnets::default(), &node).await;
    assert_eq!(
        *node.programmed.lock().unwrap(),
        (
            vec![v4("10.5.7.0/24"), v4("10.5.8.0/24")],
            vec![v6("fd00:5:0:7::/64"), v6("fd00:5:0:9::/64")]
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_that_takes_our_ipv6_subnet_under_another_key_meanwhile_makes_us_pick_again() {
    // Create-if-absent on our key cannot see another key with the same IPv6 subnet; the
    // create is guarded by "no key created since our snapshot" instead.
    let store = MemStore::with_config(DUAL);
    let hint = Subnets {
        v4: Some(v4("10.5.20.0/24")),
        v6: Some(v6("fd00:5:0:20::/64")),
    };
    let theirs = Subnets {
        v4: Some(v4("10.5.21.0/24")),
        v6: Some(v6("fd00:5:0:20::/64")),
    };
    let cfg = NetworkConfig::parse(DUAL).unwrap();
    store.create_before_next(theirs, &record(&cfg, 7).to_json());
    let node = Recorder::default();
    run_dual_for_a_second(&store, hint, &node).await;
    let held = node.set.lock().unwrap()[0];
    assert_eq!(held.v4, hint.v4, "the IPv4 half of the hint is still free");
    assert_ne!(held.v6, hint.v6, "the IPv6 subnet went to the other node");
    assert_eq!(store.keys().len(), 2);
}

//! The etcd store and the lease manager against a real etcd on 127.0.0.1: watches etcd
//! cancels (a compaction, a refusal) told apart, and the etcd lease a key leaves when it moves
//! to one of today's TTL revoked, unless another key is bound to it.

mod common;

use std::time::Duration;

use common::etcdctl;
use twill_agent::etcd_store::{EtcdOptions, EtcdStore};
use twill_agent::lease::{LeaseRecord, Subnets};
use twill_agent::lease_mgr;
use twill_agent::lease_store::{LeaseStore, LeaseWatch, WatchBatch};
use twill_agent::netconf::{BackendType, NetworkConfig};
use twill_testbed::Etcd;
use twill_tests::preconditions;

const PREFIX: &str = "/coreos.com/network";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn options(endpoint: &str) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![endpoint.to_string()],
        prefix: PREFIX.into(),
        ..EtcdOptions::default()
    }
}

/// The next batch of `w`, within 10 s.
async fn next_batch(w: &mut impl LeaseWatch) -> WatchBatch {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an answer on the watch within 10 s")
        .expect("no error on the watch")
        .expect("the watch still open")
}

/// The first batch of `w` that is not the empty "created" answer.
async fn first_news(w: &mut impl LeaseWatch) -> WatchBatch {
    loop {
        match next_batch(w).await {
            WatchBatch::Events(ev) if ev.is_empty() => continue,
            b => return b,
        }
    }
}

#[test]
fn a_watch_etcd_refuses_is_cancelled_with_its_reason_not_as_a_compaction() {
    if !preconditions(
        "a_watch_etcd_refuses_is_cancelled_with_its_reason_not_as_a_compaction",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let etcd = Etcd::start_local().expect("etcd");
    let ep = etcd.endpoint();
    for i in 0..3 {
        etcdctl(&ep, &["put", &format!("{PREFIX}/subnets/x{i}"), "v"]);
    }
    let rev = {
        let out = etcdctl(&ep, &["get", "/", "--prefix", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl's JSON");
        v["header"]["revision"].as_i64().expect("a revision")
    };
    etcdctl(&ep, &["compact", &rev.to_string()]);
    // A user that may read elsewhere but not the network's prefix.
    etcdctl(
        &ep,
        &["user", "add", "root", "--new-user-password=twill-test"],
    );
    etcdctl(&ep, &["user", "grant-role", "root", "root"]);
    etcdctl(&ep, &["role", "add", "elsewhere"]);
    etcdctl(
        &ep,
        &[
            "role",
            "grant-permission",
            "elsewhere",
            "read",
            "/elsewhere",
        ],
    );
    etcdctl(
        &ep,
        &["user", "add", "outsider", "--new-user-password=twill-test"],
    );
    etcdctl(&ep, &["user", "grant-role", "outsider", "elsewhere"]);
    etcdctl(&ep, &["auth", "enable"]);
    runtime().block_on(async {
        let as_user = |user: &str| EtcdOptions {
            username: Some(user.into()),
            password: Some("twill-test".into()),
            ..options(&ep)
        };

        // Refused: not a compaction, and etcd's reason is kept.
        let outsider = EtcdStore::connect(&as_user("outsider"))
            .await
            .expect("outsider");
        let mut w = outsider
            .watch(rev + 1)
            .await
            .expect("etcd sets the watch up, then cancels it");
        let batch = first_news(&mut w).await;
        let said = format!("{batch:?}");
        assert!(
            said.contains("permission denied") && !said.contains("Compacted"),
            "{said}"
        );

        // From a compacted revision: a compaction, with the revision it reached.
        let root = EtcdStore::connect(&as_user("root")).await.expect("root");
        let mut w = root.watch(1).await.expect("a watch from revision 1");
        let batch = first_news(&mut w).await;
        let said = format!("{batch:?}");
        assert!(
            said.contains("Compacted") && said.contains(&format!("compact_revision: {rev}")),
            "{said}"
        );
    });
}

fn config() -> NetworkConfig {
    NetworkConfig::parse(r#"{"Network":"10.16.0.0/16","Backend":{"Type":"host-gw"}}"#)
        .expect("the network config")
}

fn our_record() -> LeaseRecord {
    LeaseRecord::new("192.0.2.1".parse().expect("an IP"), BackendType::HostGw)
}

/// The etcd leases `etcdctl lease list` shows (`found N leases`, then one hex id a line).
fn lease_list(ep: &str) -> Vec<i64> {
    etcdctl(ep, &["lease", "list"])
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            u64::from_str_radix(l.trim(), 16).unwrap_or_else(|e| panic!("a lease id in {l:?}: {e}"))
                as i64
        })
        .collect()
}

#[test]
fn a_lease_moved_to_todays_ttl_revokes_the_old_etcd_lease_unless_another_key_uses_it() {
    if !preconditions(
        "a_lease_moved_to_todays_ttl_revokes_the_old_etcd_lease_unless_another_key_uses_it",
        &["etcd", "etcdctl"],
    ) {
        return;
    }
    let etcd = Etcd::start_local().expect("etcd");
    let ep = etcd.endpoint();
    let config = config();
    let record = our_record();
    runtime().block_on(async {
        let store = EtcdStore::connect(&options(&ep)).await.expect("connecting");
        // Our key of an earlier run with --subnet-lease-ttl 60.
        let ours: ipnet::Ipv4Net = "10.16.5.0/24".parse().expect("a subnet");
        let old = store.grant(60).await.expect("grant");
        assert!(
            store
                .create_lease(ours.into(), &record, old, i64::MAX - 1)
                .await
                .expect("create")
        );
        let held = lease_mgr::acquire(&store, &config, &record, Subnets::default(), 120)
            .await
            .expect("acquire");
        assert_eq!(held.subnets, Subnets::from(ours), "our key kept");
        assert_ne!(held.lease_id, old, "moved to a lease of today's TTL");
        let leases = lease_list(&ep);
        assert!(
            !leases.contains(&old),
            "the old lease {old:x} is revoked: {leases:?}"
        );
        assert!(leases.contains(&held.lease_id), "{leases:?}");
        let snap = store.snapshot().await.expect("snapshot");
        assert_eq!(snap.leases.len(), 1, "{:?}", snap.leases);

        // The same with another node's key bound to the old lease too (`etcdctl put --lease`):
        // revoking it would delete that key.
        let ours2: ipnet::Ipv4Net = "10.16.6.0/24".parse().expect("a subnet");
        let record2 = LeaseRecord::new("192.0.2.2".parse().expect("an IP"), BackendType::HostGw);
        let shared = store.grant(60).await.expect("grant");
        assert!(
            store
                .create_lease(ours2.into(), &record2, shared, i64::MAX - 1)
                .await
                .expect("create")
        );
        let theirs = format!("{PREFIX}/subnets/10.16.7.0-24");
        etcdctl(
            &ep,
            &[
                "put",
                &format!("--lease={shared:x}"),
                &theirs,
                r#"{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"host-gw"}"#,
            ],
        );
        let held2 = lease_mgr::acquire(&store, &config, &record2, Subnets::default(), 120)
            .await
            .expect("acquire");
        assert_eq!(held2.subnets, Subnets::from(ours2));
        assert_ne!(held2.lease_id, shared);
        let leases = lease_list(&ep);
        assert!(
            leases.contains(&shared),
            "a lease another key uses is kept: {leases:?}"
        );
        let got = etcdctl(&ep, &["get", &theirs, "--print-value-only"]);
        assert!(
            got.contains("192.0.2.7"),
            "the other key is still there: {got}"
        );
    });
}

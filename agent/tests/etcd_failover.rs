//! The etcd store against a real 3-member cluster with one member killed: no request may fail
//! because of the dead member while the quorum stands (etcd's Go client routes around it; so
//! must twilld).

use std::time::Duration;

use twill_agent::etcd_store::{EtcdOptions, EtcdStore};
use twill_agent::lease::LeaseRecord;
use twill_agent::lease_store::{LeaseStore, LeaseWatch};
use twill_agent::netconf::BackendType;
use twill_testbed::EtcdCluster;
use twill_tests::preconditions;

fn record() -> LeaseRecord {
    LeaseRecord::new("192.0.2.1".parse().unwrap(), BackendType::HostGw)
}

#[test]
fn a_dead_member_of_three_never_fails_a_request() {
    if !preconditions("a_dead_member_of_three_never_fails_a_request", &["etcd"]) {
        return;
    }
    let mut cluster = EtcdCluster::start_local(3).expect("a 3-member etcd cluster");
    let endpoints: Vec<String> = cluster.endpoints().split(',').map(str::to_string).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EtcdStore::connect(&EtcdOptions {
            endpoints,
            prefix: "/coreos.com/network".into(),
            ..EtcdOptions::default()
        })
        .await
        .expect("connecting");
        let lease = store.grant(60).await.expect("grant");
        let subnet: ipnet::Ipv4Net = "10.16.1.0/24".parse().unwrap();
        let subnet = subnet.into();
        assert!(
            store
                .create_lease(subnet, &record(), lease, 0)
                .await
                .unwrap()
        );

        // An unused lease an acquire releases is gone at once, not after its TTL.
        let unused = store.grant(60).await.expect("grant");
        store.release(unused).await.expect("release");
        assert_eq!(store.keep_alive(unused).await.unwrap_or(0), 0);

        // The first endpoint is the one requests go to: kill it (SIGKILL, by PID).
        cluster.members[0].stop();
        let mut failures = Vec::new();
        for i in 0..30 {
            // A stream the dying member closed without an answer once counted as TTL 0,
            // "expired", for a live lease: the node would have leased again for nothing.
            match store.keep_alive(lease).await {
                Ok(0) => failures.push(format!("renewal {i}: a live lease answered as expired")),
                Ok(_) => {}
                Err(e) => failures.push(format!("renewal {i}: {e}")),
            }
            if let Err(e) = store.snapshot().await {
                failures.push(format!("read {i}: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            failures.is_empty(),
            "{} failed: {failures:#?}",
            failures.len()
        );
        let snap = store.snapshot().await.unwrap();
        assert_eq!(snap.leases.len(), 1);
        let mut w = store
            .watch(snap.revision + 1)
            .await
            .expect("a watch on a live member");
        store.update_lease(subnet, &record(), lease).await.unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("the watch delivers");
        assert!(batch.is_ok(), "{batch:?}");

        // Two of three dead: no quorum, so requests fail, and the error names the members.
        cluster.members[1].stop();
        // Until the election timeout passes, the last member still thinks it has a leader.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let e = store.keep_alive(lease).await.expect_err("no quorum");
        let text = e.to_string();
        assert!(text.contains("renewing lease"), "{text}");
    });
}

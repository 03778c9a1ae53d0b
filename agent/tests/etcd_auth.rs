//! The etcd store against a real etcd with authentication on (`--etcd-username`,
//! `--etcd-password`), whose tokens expire: twilld talks to etcd rarely (a watch, a renewal a
//! day), so its token is usually stale by the next call and must be renewed, not fail every
//! later request as "invalid auth token".

mod common;

use std::time::Duration;

use common::etcdctl;
use twill_agent::etcd_store::{EtcdOptions, EtcdStore};
use twill_agent::lease::LeaseRecord;
use twill_agent::lease_store::LeaseStore;
use twill_agent::netconf::BackendType;
use twill_testbed::Etcd;
use twill_tests::preconditions;

/// Longer than the token's life (`--auth-token-ttl 1`; etcd checks once a second).
const EXPIRED: Duration = Duration::from_millis(2500);

#[test]
fn an_expired_auth_token_is_renewed() {
    if !preconditions("an_expired_auth_token_is_renewed", &["etcd", "etcdctl"]) {
        return;
    }
    let etcd = Etcd::start_local_with(&["--auth-token-ttl", "1"]).expect("etcd");
    let ep = etcd.endpoint();
    etcdctl(
        &ep,
        &["user", "add", "root", "--new-user-password=twill-test"],
    );
    etcdctl(&ep, &["user", "grant-role", "root", "root"]);
    etcdctl(&ep, &["auth", "enable"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = EtcdOptions {
            endpoints: vec![ep.clone()],
            prefix: "/coreos.com/network".into(),
            username: Some("root".into()),
            password: Some("twill-test".into()),
            ..EtcdOptions::default()
        };
        let store = EtcdStore::connect(&opts).await.expect("connecting");
        store.snapshot().await.expect("a read with a fresh token");
        let wrong = EtcdOptions {
            password: Some("wrong".into()),
            ..opts.clone()
        };
        assert!(
            EtcdStore::connect(&wrong).await.is_err(),
            "a wrong password is refused"
        );
        for round in 0..1 {
            // etcd drops a simple token after --auth-token-ttl seconds unused: each call
            // below comes after that.
            tokio::time::sleep(EXPIRED).await;
            let since = store
                .snapshot()
                .await
                .unwrap_or_else(|e| panic!("a read after the token expired ({round}): {e}"))
                .revision;
            tokio::time::sleep(EXPIRED).await;
            let lease = store
                .grant(60)
                .await
                .unwrap_or_else(|e| panic!("grant after the token expired ({round}): {e}"));
            let subnet: ipnet::Ipv4Net = format!("10.16.{round}.0/24").parse().unwrap();
            let record = LeaseRecord::new("192.0.2.1".parse().unwrap(), BackendType::HostGw);
            assert!(
                store
                    .create_lease(subnet.into(), &record, lease, since)
                    .await
                    .unwrap()
            );
            tokio::time::sleep(EXPIRED).await;
            assert!(store.keep_alive(lease).await.expect("renewal") > 0);
            tokio::time::sleep(EXPIRED).await;
            let snap = store.snapshot().await.expect("a read");
            assert_eq!(snap.leases.len(), round + 1);
            tokio::time::sleep(EXPIRED).await;
            store
                .watch(snap.revision + 1)
                .await
                .expect("a watch after the token expired");
        }
    });
}

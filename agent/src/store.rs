//! etcd access in Flannel's v3 layout: the network config, leases created in a transaction
//! (create-if-absent) bound to an etcd lease, keepalive, and a watch on all leases.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use ipnet::Ipv4Net;

use crate::lease::{BadLease, LeaseRecord, parse_subnet_key, subnet_key};

/// An etcd failure, with what we were doing.
#[derive(Debug, thiserror::Error)]
#[error("etcd: {op}: {cause}")]
pub struct StoreError {
    pub op: String,
    /// Part of the message, not `source()`: printing the chain (`{:#}`) would say it twice.
    pub cause: etcd_client::Error,
}

type Result<T> = std::result::Result<T, StoreError>;

fn ctx(op: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> StoreError {
    let op = op.into();
    move |cause| StoreError { op, cause }
}

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// One lease found in etcd.
#[derive(Clone, Debug)]
pub struct LeaseEntry {
    pub subnet: Ipv4Net,
    pub key: String,
    /// Parsed value, or why it was skipped.
    pub record: std::result::Result<LeaseRecord, BadLease>,
    /// The etcd lease the key is bound to; 0 for a reservation (never expires).
    pub lease_id: i64,
    /// The key's last modification, for compare-and-swap take-overs.
    pub mod_revision: i64,
}

/// A change seen by the watch.
#[derive(Clone, Debug)]
pub enum LeaseEvent {
    Put(LeaseEntry),
    Delete(Ipv4Net),
}

/// The etcd store of one network.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
}

impl EtcdStore {
    /// Connects (with TLS and auth when configured).
    pub async fn connect(opts: &EtcdOptions) -> std::result::Result<EtcdStore, anyhow::Error> {
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            co = co.with_user(u.clone(), p.clone());
        }
        if opts.ca_file.is_some() || opts.cert_file.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &opts.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("reading --etcd-cafile {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let (Some(c), Some(k)) = (&opts.cert_file, &opts.key_file) {
                let cert = std::fs::read(c)
                    .map_err(|e| anyhow::anyhow!("reading --etcd-certfile {}: {e}", c.display()))?;
                let key = std::fs::read(k)
                    .map_err(|e| anyhow::anyhow!("reading --etcd-keyfile {}: {e}", k.display()))?;
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            co = co.with_tls(tls);
        }
        let client = Client::connect(&opts.endpoints, Some(co))
            .await
            .map_err(|e| {
                anyhow::anyhow!("connecting to etcd at {}: {e}", opts.endpoints.join(","))
            })?;
        Ok(EtcdStore {
            client,
            prefix: opts.prefix.trim_end_matches('/').to_string(),
        })
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The key of a subnet's lease.
    pub fn lease_key(&self, subnet: Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    /// The raw network config, if set.
    pub async fn get_config(&self) -> Result<Option<String>> {
        let key = format!("{}/config", self.prefix);
        let resp = self
            .client
            .clone()
            .get(key.clone(), None)
            .await
            .map_err(ctx(format!("reading {key}")))?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    fn entry(&self, kv: &etcd_client::KeyValue) -> Option<LeaseEntry> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let subnet = parse_subnet_key(&key)?;
        Some(LeaseEntry {
            subnet,
            key,
            record: LeaseRecord::parse(kv.value()),
            lease_id: kv.lease(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// All leases and the revision they were read at. Keys that are not subnet keys are
    /// logged and skipped.
    pub async fn list_leases(&self) -> Result<(Vec<LeaseEntry>, i64)> {
        let p = self.subnets_prefix();
        let resp = self
            .client
            .clone()
            .get(p.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(ctx(format!("listing {p}")))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut out = Vec::new();
        for kv in resp.kvs() {
            match self.entry(kv) {
                Some(e) => out.push(e),
                None => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "skipping a key under subnets/ that is not a subnet lease")
                }
            }
        }
        Ok((out, rev))
    }

    /// Creates the lease for `subnet` if nobody holds it; false when someone does.
    pub async fn create_lease(
        &self,
        subnet: Ipv4Net,
        record: &LeaseRecord,
        lease_id: i64,
    ) -> Result<bool> {
        let key = self.lease_key(subnet);
        let cond = Compare::version(key.clone(), CompareOp::Equal, 0);
        self.put_if(cond, key, record, lease_id, "creating").await
    }

    /// Puts `record` at `key`, bound to `lease_id`, in one transaction guarded by `cond`.
    async fn put_if(
        &self,
        cond: Compare,
        key: String,
        record: &LeaseRecord,
        lease_id: i64,
        op: &str,
    ) -> Result<bool> {
        let put = TxnOp::put(
            key.clone(),
            record.to_json(),
            Some(PutOptions::new().with_lease(lease_id)),
        );
        let txn = Txn::new().when([cond]).and_then([put]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(ctx(format!("{op} {key}")))?;
        Ok(resp.succeeded())
    }

    /// Re-binds a key we held before (e.g. its etcd lease expired) to `lease_id`, only if
    /// nobody changed it since `mod_revision`.
    pub async fn take_over(
        &self,
        subnet: Ipv4Net,
        record: &LeaseRecord,
        lease_id: i64,
        mod_revision: i64,
    ) -> Result<bool> {
        let key = self.lease_key(subnet);
        let cond = Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision);
        self.put_if(cond, key, record, lease_id, "taking over")
            .await
    }

    /// Rewrites our own lease value (keeping its etcd lease).
    pub async fn update_lease(
        &self,
        subnet: Ipv4Net,
        record: &LeaseRecord,
        lease_id: i64,
    ) -> Result<()> {
        let key = self.lease_key(subnet);
        let opts = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        self.client
            .clone()
            .put(key.clone(), record.to_json(), opts)
            .await
            .map_err(ctx(format!("updating {key}")))?;
        Ok(())
    }

    /// Grants an etcd lease of `ttl` seconds.
    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        Ok(self
            .client
            .clone()
            .lease_grant(ttl, None)
            .await
            .map_err(ctx("granting a lease"))?
            .id())
    }

    /// Sends one keepalive; returns the TTL etcd reports (0: the lease is gone).
    pub async fn keep_alive(&self, lease_id: i64) -> Result<i64> {
        let op = format!("renewing lease {lease_id:x}");
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(lease_id)
            .await
            .map_err(ctx(op.clone()))?;
        keeper.keep_alive().await.map_err(ctx(op.clone()))?;
        match stream.message().await.map_err(ctx(op))? {
            Some(resp) => Ok(resp.ttl()),
            None => Ok(0),
        }
    }

    /// Starts watching all leases from `revision` (inclusive).
    pub async fn watch(&self, revision: i64) -> Result<WatchStream> {
        let p = self.subnets_prefix();
        self.client
            .clone()
            .watch(
                p.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision)
                        .with_prev_key(),
                ),
            )
            .await
            .map_err(ctx(format!("watching {p}")))
    }

    /// Turns a watch response into events; `Err(compact_revision)` when the watch was
    /// cancelled (compaction or server side), which calls for a re-list.
    pub fn events(
        &self,
        resp: &etcd_client::WatchResponse,
    ) -> std::result::Result<(Vec<LeaseEvent>, i64), i64> {
        if resp.canceled() {
            return Err(resp.compact_revision());
        }
        let mut out = Vec::new();
        let mut last_rev = 0;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            last_rev = last_rev.max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => match self.entry(kv) {
                    Some(e) => out.push(LeaseEvent::Put(e)),
                    None => {
                        tracing::warn!(key = %key, "skipping a key under subnets/ that is not a subnet lease")
                    }
                },
                EventType::Delete => {
                    if let Some(s) = parse_subnet_key(&key) {
                        out.push(LeaseEvent::Delete(s));
                    }
                }
            }
        }
        Ok((out, last_rev))
    }
}

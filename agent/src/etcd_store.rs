//! The lease store on etcd, in Flannel's v3 layout: `<prefix>/config` and
//! `<prefix>/subnets/<a.b.c.d-NN>`, leases created in a transaction (create-if-absent) bound to
//! an etcd lease, keepalive, and one watch on the whole prefix (config and leases).

use std::time::Duration;

use std::sync::Arc;

use etcd_client::{
    Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions,
    Txn, TxnOp, WatchOptions, WatchStream,
};

use crate::etcd_members::Members;
use crate::lease::{LeaseRecord, Subnets};
use crate::lease_store::{
    Cancelled, LeaseEntry, LeaseEvent, LeaseStore, LeaseWatch, Snapshot, StoreError, WatchBatch,
};

type Result<T> = std::result::Result<T, StoreError>;

fn ctx(op: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> StoreError {
    let op = op.into();
    move |cause| {
        if crate::etcd_members::answered(&cause) {
            // etcd answered (a watch stream ended with a denied permission): reachable.
            StoreError::answer(op, cause)
        } else {
            StoreError::new(op, cause)
        }
    }
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

/// Whether `ep` looks like an etcd client URL (`http://HOST:PORT`, `https://HOST:PORT`, or
/// `HOST:PORT`).
fn check_endpoint(ep: &str, tls: bool) -> anyhow::Result<()> {
    let bad = || {
        anyhow::anyhow!(
            "--etcd-endpoints {}: expected http://HOST:PORT or https://HOST:PORT",
            crate::quote::quote(ep)
        )
    };
    let rest = ep
        .strip_prefix("http://")
        .or_else(|| ep.strip_prefix("https://"))
        .unwrap_or(ep);
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    if tls && ep.starts_with("http://") {
        anyhow::bail!(
            "--etcd-endpoints {ep}: TLS files are given (--etcd-cafile/--etcd-certfile) but the endpoint is http://; use https://"
        );
    }
    Ok(())
}

impl EtcdOptions {
    /// The client options, checking everything that needs no etcd: the endpoints' form and
    /// the TLS files (read now, so a missing file is said at once, not retried).
    pub fn client_options(&self) -> anyhow::Result<ConnectOptions> {
        if self.endpoints.is_empty() {
            anyhow::bail!("no etcd endpoints given (--etcd-endpoints)");
        }
        let tls_wanted = self.ca_file.is_some() || self.cert_file.is_some();
        for ep in &self.endpoints {
            check_endpoint(ep, tls_wanted)?;
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member cut off from the others answers Unavailable instead of stale data, so
            // requests move on to a member of the quorum.
            .with_require_leader(true);
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            // etcd's tokens expire (the simple ones after --auth-token-ttl unused, 300 s by
            // default) and twilld calls etcd rarely: renew an expired token and retry, as
            // etcd's Go client (Flannel's) does, instead of failing every later request.
            co = co
                .with_user(u.clone(), p.clone())
                .with_auto_token_refresh(true);
        }
        if tls_wanted {
            let read = |flag: &str, path: &std::path::Path| {
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("reading {flag} {}: {e}", path.display()))
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                let pem = read("--etcd-cafile", ca)?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let (Some(c), Some(k)) = (&self.cert_file, &self.key_file) {
                let cert = read("--etcd-certfile", c)?;
                let key = read("--etcd-keyfile", k)?;
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            co = co.with_tls(tls);
        }
        Ok(co)
    }
}

/// The etcd store of one network.
#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Members>,
    keys: Keys,
}

/// The key layout under one prefix.
#[derive(Clone, Debug)]
struct Keys {
    /// The prefix with one trailing `/`.
    root: String,
}

/// What a key under the prefix is.
enum KeyKind {
    Config,
    Lease(Subnets),
    /// Under `subnets/` but not a subnet key.
    BadLease,
    Other,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{}/", prefix.trim_end_matches('/')),
        }
    }
    fn config(&self) -> String {
        format!("{}config", self.root)
    }
    fn subnets(&self) -> String {
        format!("{}subnets/", self.root)
    }
    fn lease(&self, subnets: Subnets) -> String {
        format!("{}{}", self.subnets(), subnets.key())
    }
    fn kind(&self, key: &str) -> KeyKind {
        let Some(rest) = key.strip_prefix(&self.root) else {
            return KeyKind::Other;
        };
        if rest == "config" {
            return KeyKind::Config;
        }
        match rest.strip_prefix("subnets/") {
            Some(_) => Subnets::parse_key(key).map_or(KeyKind::BadLease, KeyKind::Lease),
            None => KeyKind::Other,
        }
    }
}

fn entry(subnets: Subnets, kv: &etcd_client::KeyValue) -> LeaseEntry {
    let record = LeaseRecord::parse(kv.value());
    LeaseEntry {
        subnets,
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        claim: crate::lease::Claim::for_value(kv.value(), &record),
        record,
        lease_id: kv.lease(),
        mod_revision: kv.mod_revision(),
    }
}

/// The TTL a keep-alive answered. A stream that closed without an answer (its member went
/// away, a leader change) is a member gone, to try the next one for, not a TTL of 0: that
/// would mean "expired" and make the node lease again for nothing.
fn renewed_ttl(answer: Option<i64>) -> std::result::Result<i64, etcd_client::Error> {
    // As an I/O error, so the call goes on to the next member as for any member gone.
    answer.ok_or_else(|| {
        etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the keep-alive stream closed without an answer",
        ))
    })
}

fn skip_bad_key(key: &str) {
    tracing::warn!(key = %key, "skipping a key under subnets/ that is not a subnet lease");
}

impl EtcdStore {
    /// Connects (with TLS and auth when configured); local problems and unreachable etcd
    /// alike are errors here.
    pub async fn connect(opts: &EtcdOptions) -> std::result::Result<EtcdStore, anyhow::Error> {
        let co = opts.client_options()?;
        EtcdStore::connect_with(opts, co).await
    }

    /// Connects with options already checked by [`EtcdOptions::client_options`]: what fails
    /// here is etcd's side, worth retrying.
    pub async fn connect_with(
        opts: &EtcdOptions,
        co: ConnectOptions,
    ) -> std::result::Result<EtcdStore, anyhow::Error> {
        let members = Members::connect(&opts.endpoints, co).await?;
        Ok(EtcdStore {
            members: Arc::new(members),
            keys: Keys::new(&opts.prefix),
        })
    }

    /// The key of a lease.
    pub fn lease_key(&self, subnets: impl Into<Subnets>) -> String {
        self.keys.lease(subnets.into())
    }

    /// Puts `record` at `key`, bound to `lease_id`, in one transaction guarded by `conds`.
    async fn put_if(
        &self,
        conds: Vec<Compare>,
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
        let txn = Txn::new().when(conds).and_then([put]);
        let resp = self
            .members
            .call(&format!("{op} {key}"), |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }
}

impl LeaseStore for EtcdStore {
    type Watch = EtcdWatch;

    fn config_key(&self) -> String {
        self.keys.config()
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let root = self.keys.root.clone();
        let resp = self
            .members
            .call(&format!("reading {root}"), |mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut snap = Snapshot {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            ..Snapshot::default()
        };
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            match self.keys.kind(&key) {
                KeyKind::Config => {
                    snap.config = Some(String::from_utf8_lossy(kv.value()).into_owned())
                }
                KeyKind::Lease(subnet) => snap.leases.push(entry(subnet, kv)),
                KeyKind::BadLease => skip_bad_key(&key),
                KeyKind::Other => {}
            }
        }
        Ok(snap)
    }

    async fn create_lease(
        &self,
        subnets: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
        since: i64,
    ) -> Result<bool> {
        let key = self.lease_key(subnets);
        // A compare on a range holds when every key in it satisfies it (an empty range
        // compares as one absent key, create revision 0).
        let conds = vec![
            Compare::version(key.clone(), CompareOp::Equal, 0),
            Compare::create_revision(self.keys.subnets(), CompareOp::Less, since + 1).with_prefix(),
        ];
        self.put_if(conds, key, record, lease_id, "creating").await
    }

    async fn take_over(
        &self,
        subnets: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
        mod_revision: i64,
    ) -> Result<bool> {
        let key = self.lease_key(subnets);
        let cond = Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision);
        self.put_if(vec![cond], key, record, lease_id, "taking over")
            .await
    }

    async fn update_lease(
        &self,
        subnets: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
    ) -> Result<()> {
        let key = self.lease_key(subnets);
        let value = record.to_json();
        self.members
            .call(&format!("updating {key}"), |mut c| {
                let (key, value) = (key.clone(), value.clone());
                let opts = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
                async move { c.put(key, value, opts).await }
            })
            .await?;
        Ok(())
    }

    async fn grant(&self, ttl: i64) -> Result<i64> {
        let resp = self
            .members
            .call("granting a lease", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        Ok(resp.id())
    }

    async fn release(&self, lease_id: i64) -> Result<()> {
        self.members
            .call(
                &format!("revoking lease {lease_id:x}"),
                |mut c| async move { c.lease_revoke(lease_id).await },
            )
            .await?;
        Ok(())
    }

    async fn lease_keys(&self, lease_id: i64) -> Result<Option<Vec<String>>> {
        let resp = self
            .members
            .call(
                &format!("listing the keys of lease {lease_id:x}"),
                |mut c| {
                    let opts = LeaseTimeToLiveOptions::new().with_keys();
                    async move { c.lease_time_to_live(lease_id, Some(opts)).await }
                },
            )
            .await?;
        // etcd answers TTL -1 for a lease it does not know (expired or revoked).
        if resp.ttl() < 0 {
            return Ok(None);
        }
        Ok(Some(
            resp.keys()
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect(),
        ))
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<i64> {
        let op = format!("renewing lease {lease_id:x}");
        self.members
            .call(&op, |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease_id).await?;
                keeper.keep_alive().await?;
                renewed_ttl(stream.message().await?.map(|resp| resp.ttl()))
            })
            .await
    }

    async fn watch(&self, revision: i64) -> Result<EtcdWatch> {
        let root = self.keys.root.clone();
        let stream = self
            .members
            .call(&format!("watching {root}"), |mut c| {
                let root = root.clone();
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision);
                async move { c.watch(root, Some(opts)).await }
            })
            .await?;
        Ok(EtcdWatch {
            stream,
            keys: self.keys.clone(),
        })
    }
}

/// A watch on `<prefix>/`: the config key and the leases.
pub struct EtcdWatch {
    stream: WatchStream,
    keys: Keys,
}

impl EtcdWatch {
    fn batch(&self, resp: &etcd_client::WatchResponse) -> WatchBatch {
        if resp.canceled() {
            return WatchBatch::Cancelled(Cancelled::classify(
                resp.compact_revision(),
                resp.cancel_reason(),
            ));
        }
        let mut out = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let put = ev.event_type() == EventType::Put;
            match (self.keys.kind(&key), put) {
                (KeyKind::Config, true) => out.push(LeaseEvent::Config(Some(
                    String::from_utf8_lossy(kv.value()).into_owned(),
                ))),
                (KeyKind::Config, false) => out.push(LeaseEvent::Config(None)),
                (KeyKind::Lease(s), true) => out.push(LeaseEvent::Put(entry(s, kv))),
                (KeyKind::Lease(s), false) => out.push(LeaseEvent::Delete(key.into_owned(), s)),
                (KeyKind::BadLease, true) => skip_bad_key(&key),
                (KeyKind::BadLease, false) | (KeyKind::Other, _) => {}
            }
        }
        WatchBatch::Events(out)
    }
}

impl LeaseWatch for EtcdWatch {
    async fn next(&mut self) -> Result<Option<WatchBatch>> {
        let root = self.keys.root.clone();
        let resp = self
            .stream
            .message()
            .await
            .map_err(ctx(format!("watching {root}")))?;
        Ok(resp.map(|r| self.batch(&r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keep_alive_without_an_answer_is_a_failure_not_an_expired_lease() {
        assert_eq!(renewed_ttl(Some(86400)).unwrap(), 86400);
        assert_eq!(
            renewed_ttl(Some(0)).unwrap(),
            0,
            "etcd's own answer for an expired lease"
        );
        assert!(renewed_ttl(None).is_err());
    }

    #[test]
    fn a_cancelled_watch_is_a_compaction_only_with_a_compact_revision() {
        assert_eq!(
            Cancelled::classify(42, ""),
            Cancelled::Compacted {
                compact_revision: 42
            }
        );
        let refused = Cancelled::classify(
            0,
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
        );
        assert!(
            matches!(&refused, Cancelled::Other { reason } if reason.ends_with("permission denied")),
            "{refused:?}"
        );
        assert_eq!(
            Cancelled::classify(0, " ").to_string(),
            "no reason given",
            "a cancel without a reason is still not a compaction"
        );
        assert!(
            Cancelled::classify(7, "")
                .to_string()
                .contains("compacted up to revision 7")
        );
    }

    #[test]
    fn endpoints_are_checked_before_connecting() {
        for ok in [
            "http://127.0.0.1:2379",
            "https://etcd.example:2379/",
            "10.0.0.1:2379",
        ] {
            assert!(check_endpoint(ok, false).is_ok(), "{ok}");
        }
        for bad in ["http://127.0.0.1", "etcd", "http://:2379", "http://h:port"] {
            let e = check_endpoint(bad, false).unwrap_err().to_string();
            assert!(e.contains("expected http://HOST:PORT"), "{bad}: {e}");
        }
        let e = check_endpoint("http://127.0.0.1:2379", true).unwrap_err();
        assert!(e.to_string().contains("use https://"), "{e}");
        let missing = EtcdOptions {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..EtcdOptions::default()
        };
        let e = missing.client_options().unwrap_err().to_string();
        assert!(
            e.starts_with("reading --etcd-cafile /nonexistent/ca.crt"),
            "{e}"
        );
    }

    #[test]
    fn keys_under_the_prefix_are_told_apart() {
        let k = Keys::new("/coreos.com/network/");
        assert_eq!(k.config(), "/coreos.com/network/config");
        assert!(matches!(
            k.kind("/coreos.com/network/config"),
            KeyKind::Config
        ));
        assert!(matches!(
            k.kind("/coreos.com/network/subnets/10.5.34.0-24"),
            KeyKind::Lease(_)
        ));
        assert!(matches!(
            k.kind("/coreos.com/network/subnets/10.5.34.0-24&fd00:5::-64"),
            KeyKind::Lease(Subnets {
                v4: Some(_),
                v6: Some(_)
            })
        ));
        assert!(matches!(
            k.kind("/coreos.com/network/subnets/fd00:5::-64"),
            KeyKind::Lease(Subnets {
                v4: None,
                v6: Some(_)
            })
        ));
        assert!(matches!(
            k.kind("/coreos.com/network/subnets/junk"),
            KeyKind::BadLease
        ));
        assert!(matches!(
            k.kind("/coreos.com/network/configx"),
            KeyKind::Other
        ));
        assert!(matches!(
            k.kind("/coreos.com/networkx/config"),
            KeyKind::Other
        ));
    }
}

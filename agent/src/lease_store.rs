//! Where leases live, as the agent sees it: a store of the network config and subnet leases
//! bound to expiring store leases (Flannel's `subnet.Manager`), and a watch that turns every
//! later change into events (Flannel's `WatchLeases`). `EtcdStore` is the real one; the unit
//! tests drive the agent over an in-memory one.

use std::future::Future;

use crate::lease::{BadLease, LeaseRecord, Subnets};

/// A store failure, with what we were doing.
#[derive(Debug, thiserror::Error)]
#[error("etcd: {op}: {cause}")]
pub struct StoreError {
    pub op: String,
    /// Part of the message, not `source()`: printing the chain (`{:#}`) would say it twice.
    pub cause: Box<dyn std::error::Error + Send + Sync>,
    /// etcd answered, with an error (a denied permission, a bad request): it is reachable,
    /// the call failed anyway. False when no member could be reached.
    pub answered: bool,
}

impl StoreError {
    /// An error of `op` caused by `cause`: etcd could not be reached.
    pub fn new(
        op: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError {
            op: op.into(),
            cause: cause.into(),
            answered: false,
        }
    }

    /// An error of `op` that etcd answered with (`cause`): etcd is reachable.
    pub fn answer(
        op: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError {
            answered: true,
            ..StoreError::new(op, cause)
        }
    }
}

/// One lease found in the store.
#[derive(Clone, Debug)]
pub struct LeaseEntry {
    /// The subnets the key names (one key per node holds both families).
    pub subnets: Subnets,
    /// The full key: leases are told apart by it, never by one subnet (two keys may name the
    /// same IPv4 subnet while a node moves to dual stack).
    pub key: String,
    /// Parsed value, or why it was skipped.
    pub record: Result<LeaseRecord, BadLease>,
    /// Whose node the value names, also when it does not parse.
    pub claim: crate::lease::Claim,
    /// The store lease the key is bound to; 0 for a reservation (never expires).
    pub lease_id: i64,
    /// The key's last modification, for compare-and-swap take-overs.
    pub mod_revision: i64,
}

/// The network config and every lease, read at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The raw text of `<prefix>/config`, if set.
    pub config: Option<String>,
    pub leases: Vec<LeaseEntry>,
    /// The store revision the snapshot was read at; a watch from `revision + 1` misses nothing.
    pub revision: i64,
}

/// A change seen by the watch.
#[derive(Clone, Debug)]
pub enum LeaseEvent {
    Put(LeaseEntry),
    /// The key that was deleted, and its subnets.
    Delete(String, Subnets),
    /// `<prefix>/config` was written (`Some`) or deleted (`None`).
    Config(Option<String>),
}

/// What one wait on a watch brings.
#[derive(Clone, Debug)]
pub enum WatchBatch {
    /// Changes, in store order.
    Events(Vec<LeaseEvent>),
    /// The store cancelled the watch; nothing more comes on it.
    Cancelled(Cancelled),
}

/// Why the store cancelled a watch. Only a compaction says the watch missed history; etcd
/// also cancels a watch it refuses (permission denied) or cannot serve, with a reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// The revision the watch started from (or had reached) was compacted away: the watcher
    /// must re-read a snapshot, at a fresh revision, and watch from just after it.
    Compacted { compact_revision: i64 },
    /// Any other cancellation, with etcd's reason: the watch is set up again after a pause
    /// (at once it would most likely be refused again).
    Other { reason: String },
}

impl Cancelled {
    /// What a watch response that cancelled a watch means: etcd sets `compact_revision` only
    /// for a compaction (0 otherwise), and `cancel_reason` for the rest.
    pub fn classify(compact_revision: i64, cancel_reason: &str) -> Cancelled {
        if compact_revision > 0 {
            return Cancelled::Compacted { compact_revision };
        }
        let reason = cancel_reason.trim();
        Cancelled::Other {
            reason: if reason.is_empty() {
                "no reason given".into()
            } else {
                reason.into()
            },
        }
    }
}

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cancelled::Compacted { compact_revision } => write!(
                f,
                "the revision it started from was compacted away (compacted up to revision {compact_revision})"
            ),
            Cancelled::Other { reason } => f.write_str(reason),
        }
    }
}

/// A running watch on the config and the leases.
pub trait LeaseWatch: Send {
    /// The next batch; `Ok(None)` when the store closed the watch.
    fn next(&mut self) -> impl Future<Output = Result<Option<WatchBatch>, StoreError>> + Send;
}

/// The network's config and leases.
pub trait LeaseStore: Send + Sync {
    /// The watch this store hands out.
    type Watch: LeaseWatch;

    /// Where the config lives, for messages (`/coreos.com/network/config`).
    fn config_key(&self) -> String;
    /// The config and all leases at one revision.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;
    /// Creates the lease for `subnets` (one key), bound to store lease `lease_id`, if nobody
    /// holds the key and no key under `subnets/` was created after store revision `since`
    /// (the snapshot the subnets were picked from); false otherwise. The second condition
    /// makes allocation exact although one key names two subnets: a node that picked the same
    /// IPv6 subnet under another IPv4 subnet at the same time makes us pick again.
    fn create_lease(
        &self,
        subnets: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
        since: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Re-binds a key to `lease_id`, only if nobody changed it since `mod_revision`.
    fn take_over(
        &self,
        subnets: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Rewrites our own lease value, keeping its store lease (0: a reservation stays one).
    fn update_lease(
        &self,
        subnets: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Grants a store lease of `ttl` seconds.
    fn grant(&self, ttl: i64) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Revokes a store lease no key uses (one an acquire granted and then could not use).
    /// Revoking deletes every key still bound to it: see [`LeaseStore::lease_keys`].
    fn release(&self, lease_id: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The keys bound to store lease `lease_id`; `None` when the lease is gone (expired or
    /// revoked).
    fn lease_keys(
        &self,
        lease_id: i64,
    ) -> impl Future<Output = Result<Option<Vec<String>>, StoreError>> + Send;
    /// Renews a store lease once; the TTL left afterwards (0: the lease is gone).
    fn keep_alive(&self, lease_id: i64) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Watches the config and all leases from `revision` (inclusive).
    fn watch(&self, revision: i64) -> impl Future<Output = Result<Self::Watch, StoreError>> + Send;
}

#[cfg(test)]
pub mod memory;

//! Acquiring this node's subnets (one key for both families, as Flannel): prefer the subnets
//! in an existing subnet file, then an existing lease with our public IP (the IPv4 one; the
//! IPv6 one in an IPv6-only network), then a random free subnet among the first 100 of each
//! family, picked independently. Creation is one transaction: the key is absent and no key
//! under `subnets/` was created since the snapshot the subnets were picked from (one key names
//! two subnets, so the key alone cannot keep two nodes off one IPv6 subnet); a refused create
//! reads the leases again. Keys without an etcd lease are reservations: honoured, never
//! converted. A subnet held only by keys with our own public IP
//! (an older key of ours, e.g. from before the network went dual-stack) is ours to reuse.

use std::collections::HashSet;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::lease::{LeaseRecord, Subnets};
use crate::lease_store::{LeaseEntry, LeaseStore, StoreError};
use crate::netconf::NetworkConfig;

/// The subnet we hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub subnets: Subnets,
    /// The etcd lease kept alive; 0 for a reservation.
    pub lease_id: i64,
}

/// Why acquiring failed.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(
        "no free {family} subnet in {range} ({held} held): add room to the network config or remove stale leases"
    )]
    Full {
        family: &'static str,
        /// `<network> between <min> and <max>`.
        range: String,
        held: usize,
    },
    #[error(
        "other nodes kept creating leases while this one picked its subnets ({0} attempts): retrying"
    )]
    Busy(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn random_index(n: usize) -> usize {
    (twill_netkit::random::random_u64() % n.max(1) as u64) as usize
}

/// The TTL of store lease `lease_id` if it still runs (renewed by this call).
async fn live_ttl<S: LeaseStore>(store: &S, lease_id: i64) -> Option<i64> {
    if lease_id == 0 {
        return None;
    }
    Some(store.keep_alive(lease_id).await.unwrap_or(0)).filter(|ttl| *ttl > 0)
}

async fn reuse<S: LeaseStore>(
    store: &S,
    e: &LeaseEntry,
    record: &LeaseRecord,
    ttl: i64,
    granted: &mut Option<i64>,
) -> Result<Option<Held>, StoreError> {
    let same_value = e.record.as_ref().is_ok_and(|r| r == record);
    if e.lease_id == 0 {
        // A reservation: keep it one (a put without a lease keeps lease 0).
        if !same_value {
            store.update_lease(e.subnets, record, 0).await?;
        }
        tracing::info!(subnets = %e.subnets, "using the reservation for this node's public IP");
        return Ok(Some(Held {
            subnets: e.subnets,
            lease_id: 0,
        }));
    }
    // A lease granted by a run with another --subnet-lease-ttl keeps its own TTL for good
    // (a renewal restores the TTL it was granted with): a shorter one would expire between
    // the renewals this run schedules, and a longer one would keep the subnet of a dead node
    // for longer than configured. Such a key moves to a lease of today's TTL instead.
    let live = live_ttl(store, e.lease_id).await;
    if let Some(other) = live.filter(|t| *t != ttl) {
        tracing::info!(subnets = %e.subnets, lease = format!("{:x}", e.lease_id), "our existing lease has a TTL of {other}s, not --subnet-lease-ttl {ttl}s: moving the key to a new lease");
    }
    if live == Some(ttl) {
        if !same_value {
            store.update_lease(e.subnets, record, e.lease_id).await?;
        }
        tracing::info!(subnets = %e.subnets, lease = format!("{:x}", e.lease_id), "resumed our existing lease");
        return Ok(Some(Held {
            subnets: e.subnets,
            lease_id: e.lease_id,
        }));
    }
    let id = grant_once(store, granted, ttl).await?;
    if store
        .take_over(e.subnets, record, id, e.mod_revision)
        .await?
    {
        tracing::info!(subnets = %e.subnets, "took over our previous lease");
        if live.is_some() {
            revoke_left_behind(store, e).await;
        }
        return Ok(Some(Held {
            subnets: e.subnets,
            lease_id: id,
        }));
    }
    Ok(None)
}

/// What [`revoke_unused`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// Revoked.
    Yes,
    /// The lease had expired or was revoked already.
    Gone,
    /// Not revoked: these keys (none of them `ours`) are still bound to it.
    InUse(Vec<String>),
}

/// Revokes store lease `lease_id` if no key but `ours` is bound to it. A revoke deletes every
/// key bound to the lease: twill and Flannel bind one key to a lease, but an operator's
/// `etcdctl put --lease` can bind more, and another node's key is never ours to delete.
pub(crate) async fn revoke_unused<S: LeaseStore>(
    store: &S,
    lease_id: i64,
    ours: &[&str],
) -> Result<Revoked, StoreError> {
    if lease_id == 0 {
        return Ok(Revoked::Gone);
    }
    let Some(keys) = store.lease_keys(lease_id).await? else {
        return Ok(Revoked::Gone);
    };
    let others: Vec<String> = keys
        .into_iter()
        .filter(|k| !ours.contains(&k.as_str()))
        .collect();
    if !others.is_empty() {
        return Ok(Revoked::InUse(others));
    }
    store.release(lease_id).await?;
    Ok(Revoked::Yes)
}

/// After our key `e` moved to a new store lease: revokes the one it left (still live, and
/// bound to nothing if only our key used it) instead of leaving it to run out its TTL.
async fn revoke_left_behind<S: LeaseStore>(store: &S, e: &LeaseEntry) {
    let old = format!("{:x}", e.lease_id);
    match revoke_unused(store, e.lease_id, &[]).await {
        Ok(Revoked::Yes) => {
            tracing::info!(key = %e.key, lease = old, "revoked the store lease our key left")
        }
        Ok(Revoked::Gone) => {}
        Ok(Revoked::InUse(keys)) => {
            tracing::warn!(key = %e.key, lease = old, others = ?keys, "the store lease our key left is not revoked: other keys are bound to it")
        }
        Err(err) => {
            tracing::warn!(key = %e.key, lease = old, error = %err, "revoking the store lease our key left (it expires with its TTL)")
        }
    }
}

/// Whether `subnets` names exactly the families the config leases, each inside its range.
pub fn compatible(config: &NetworkConfig, subnets: Subnets) -> bool {
    let v4 = match subnets.v4 {
        Some(s) => config.fits(s),
        None => !config.enable_ipv4,
    };
    let v6 = match (subnets.v6, &config.ipv6) {
        (Some(s), Some(c)) => c.fits(s),
        (None, None) => true,
        _ => false,
    };
    v4 && v6
}

/// Whether a lease value names this node: by the IPv4 public IP, or in an IPv6-only network
/// by the IPv6 one (every IPv6-only lease has PublicIP 0.0.0.0, which names nobody).
pub fn same_node(config: &NetworkConfig, ours: &LeaseRecord, theirs: &LeaseRecord) -> bool {
    if config.enable_ipv4 {
        theirs.public_ip == ours.public_ip && !ours.public_ip.is_unspecified()
    } else {
        theirs.public_ipv6.is_some() && theirs.public_ipv6 == ours.public_ipv6
    }
}

/// How often one acquire re-reads the leases after other nodes created keys under its feet.
const SNAPSHOT_ATTEMPTS: usize = 10;

/// Acquires our subnets. `hint`: the subnet file's subnets (either may be missing, e.g. when
/// the network just turned dual-stack).
pub async fn acquire<S: LeaseStore>(
    store: &S,
    config: &NetworkConfig,
    record: &LeaseRecord,
    hint: Subnets,
    ttl: i64,
) -> Result<Held, AcquireError> {
    let mut granted = None;
    let mut result = Err(AcquireError::Busy(SNAPSHOT_ATTEMPTS));
    for _ in 0..SNAPSHOT_ATTEMPTS {
        match acquire_once(store, config, record, hint, ttl, &mut granted).await {
            Ok(None) => continue,
            Ok(Some(held)) => result = Ok(held),
            Err(e) => result = Err(e),
        }
        break;
    }
    // A lease granted for a key this acquire did not get would live out its TTL (a day by
    // default) bound to nothing, one per retry while the network is full.
    if let Some(id) = granted
        && result.as_ref().map_or(true, |held| held.lease_id != id)
        && let Err(e) = store.release(id).await
    {
        tracing::warn!(lease = format!("{id:x}"), error = %e, "revoking an unused store lease (it expires with its TTL)");
    }
    result
}

/// A store lease for a new key: granted once per acquire, reused by its retries.
async fn grant_once<S: LeaseStore>(
    store: &S,
    granted: &mut Option<i64>,
    ttl: i64,
) -> Result<i64, StoreError> {
    if let Some(id) = *granted {
        return Ok(id);
    }
    let id = store.grant(ttl).await?;
    *granted = Some(id);
    Ok(id)
}

/// One pass over one snapshot; `None` when other nodes created keys meanwhile (read again).
async fn acquire_once<S: LeaseStore>(
    store: &S,
    config: &NetworkConfig,
    record: &LeaseRecord,
    hint: Subnets,
    ttl: i64,
    granted: &mut Option<i64>,
) -> Result<Option<Held>, AcquireError> {
    let snapshot = store.snapshot().await?;
    let (leases, since) = (snapshot.leases, snapshot.revision);
    let is_ours = |e: &LeaseEntry| {
        e.record
            .as_ref()
            .is_ok_and(|r| same_node(config, record, r))
    };
    let mine = |e: &&LeaseEntry| is_ours(e) && compatible(config, e.subnets);

    // 1. The subnets in the existing subnet file, as one key.
    if compatible(config, hint) {
        let h = hint;
        match leases.iter().find(|e| e.subnets == h) {
            None => {
                if !held_by_others(&leases, &is_ours, h) {
                    let id = grant_once(store, granted, ttl).await?;
                    if store.create_lease(h, record, id, since).await? {
                        tracing::info!(subnets = %h, "leased the subnets from the existing subnet file");
                        return Ok(Some(Held {
                            subnets: h,
                            lease_id: id,
                        }));
                    }
                }
            }
            Some(e) if mine(&e) => {
                if let Some(held) = reuse(store, e, record, ttl, granted).await? {
                    return Ok(Some(held));
                }
            }
            // Our subnet file names it and nobody can read the value: it is ours (a corrupt
            // value must never move a node away from its running containers).
            // Bound to its live lease if it has one, else to a new one (a plain `etcdctl put`
            // detaches a key from its lease; that must not make it a reservation).
            // Unless the value names another node: a Flannel node whose backend or format
            // twill does not read leased it while ours had expired.
            // A live lease of another TTL moves to one of today's TTL, as in `reuse`.
            Some(e) if e.record.is_err() && !claimed_by_another(config, record, e) => {
                tracing::warn!(key = %e.key, "the subnet file's subnets have an unreadable lease value: taking them back");
                let live = live_ttl(store, e.lease_id).await;
                let id = if live == Some(ttl) {
                    e.lease_id
                } else {
                    grant_once(store, granted, ttl).await?
                };
                if store.take_over(h, record, id, e.mod_revision).await? {
                    if id != e.lease_id && live.is_some() {
                        revoke_left_behind(store, e).await;
                    }
                    return Ok(Some(Held {
                        subnets: h,
                        lease_id: id,
                    }));
                }
            }
            Some(_) => {
                tracing::warn!(subnets = %h, "the subnet file's subnets are held by another node: leasing new ones")
            }
        }
    }
    // 2. An existing lease with our public IP.
    for e in leases.iter().filter(mine) {
        if let Some(held) = reuse(store, e, record, ttl, granted).await? {
            return Ok(Some(held));
        }
    }
    // Our keys today's config cannot use (a changed SubnetLen, SubnetMin/Max or Network, a
    // family turned on or off) would block their subnets for their TTL, a day by default, and
    // make this node a peer of itself. Flannel deletes them; revoking the store lease does,
    // and a reservation (no lease) stays the operator's to remove.
    for e in leases
        .iter()
        .filter(|e| is_ours(e) && !compatible(config, e.subnets))
    {
        if e.lease_id == 0 {
            tracing::warn!(key = %e.key, "a reservation for this node's public IP does not fit the network config: not used; remove it");
            continue;
        }
        match revoke_unused(store, e.lease_id, &[e.key.as_str()]).await {
            Ok(Revoked::Yes | Revoked::Gone) => {
                tracing::info!(key = %e.key, "removed our lease that does not fit the network config")
            }
            Ok(Revoked::InUse(keys)) => {
                tracing::warn!(key = %e.key, lease = format!("{:x}", e.lease_id), others = ?keys, "our lease that does not fit the network config is left to expire: its store lease also binds other keys")
            }
            Err(err) => {
                tracing::warn!(key = %e.key, error = %err, "removing our lease that does not fit the network config")
            }
        }
    }
    // 3. New subnets, each family on its own: the subnet file's or one of an older key of
    // ours if still free, else a random free one among the first 100.
    // Others' keys may be of another length (a changed SubnetLen, a wider reservation): a
    // candidate is taken when it overlaps any of them, not only when it equals one.
    let taken4 = Taken::new(
        leases
            .iter()
            .filter(|e| !is_ours(e))
            .filter_map(|e| e.subnets.v4),
        config.subnet_len,
    );
    let taken6 = Taken::new(
        leases
            .iter()
            .filter(|e| !is_ours(e))
            .filter_map(|e| e.subnets.v6),
        config.ipv6.map_or(0, |c| c.subnet_len),
    );
    let keys: HashSet<Subnets> = leases.iter().map(|e| e.subnets).collect();
    let own_old = leases.iter().filter(|e| is_ours(e)).map(|e| e.subnets);
    let prefer4 = std::iter::once(hint.v4)
        .chain(own_old.clone().map(|s| s.v4))
        .flatten()
        .find(|s| config.fits(*s) && !taken4.overlaps(s));
    let prefer6 = std::iter::once(hint.v6)
        .chain(own_old.map(|s| s.v6))
        .flatten()
        .find(|s| config.ipv6.is_some_and(|c| c.fits(*s)) && !taken6.overlaps(s));
    let mut free4: Vec<Ipv4Net> = config
        .subnets()
        .filter(|s| !taken4.overlaps(s) && Some(*s) != prefer4)
        .take(100)
        .collect();
    let mut free6: Vec<Ipv6Net> = match &config.ipv6 {
        Some(c) => c
            .subnets()
            .filter(|s| !taken6.overlaps(s) && Some(*s) != prefer6)
            .take(100)
            .collect(),
        None => Vec::new(),
    };
    let (mut prefer4, mut prefer6) = (prefer4, prefer6);
    let id = grant_once(store, granted, ttl).await?;
    loop {
        let v4 = match config.enable_ipv4 {
            false => None,
            true => match prefer4.take() {
                Some(s) => Some(s),
                None if free4.is_empty() => {
                    return Err(AcquireError::Full {
                        family: "IPv4",
                        range: format!(
                            "{} between {} and {}",
                            config.network, config.subnet_min, config.subnet_max
                        ),
                        held: taken4.len(),
                    });
                }
                None => Some(free4.swap_remove(random_index(free4.len()))),
            },
        };
        let v6 = match &config.ipv6 {
            None => None,
            Some(c) => match prefer6.take() {
                Some(s) => Some(s),
                None if free6.is_empty() => {
                    return Err(AcquireError::Full {
                        family: "IPv6",
                        range: format!(
                            "{} between {} and {}",
                            c.network, c.subnet_min, c.subnet_max
                        ),
                        held: taken6.len(),
                    });
                }
                None => Some(free6.swap_remove(random_index(free6.len()))),
            },
        };
        let s = Subnets { v4, v6 };
        if keys.contains(&s) {
            continue;
        }
        if store.create_lease(s, record, id, since).await? {
            tracing::info!(subnets = %s, "leased new subnets");
            return Ok(Some(Held {
                subnets: s,
                lease_id: id,
            }));
        }
        tracing::info!(subnets = %s, "another node leased meanwhile: reading the leases again");
        return Ok(None);
    }
}

/// Whether an unreadable value still names a node, and not this one.
pub(crate) fn claimed_by_another(
    config: &NetworkConfig,
    ours: &LeaseRecord,
    e: &LeaseEntry,
) -> bool {
    if config.enable_ipv4 {
        e.claim.public_ip.is_some_and(|ip| ip != ours.public_ip)
    } else {
        e.claim.public_ipv6.is_some() && e.claim.public_ipv6 != ours.public_ipv6
    }
}

/// Whether a key other than ours holds either subnet of `want`.
fn held_by_others(
    leases: &[LeaseEntry],
    is_ours: &impl Fn(&LeaseEntry) -> bool,
    want: Subnets,
) -> bool {
    fn overlap<N: Prefix>(a: Option<N>, b: Option<N>) -> bool {
        matches!((a, b), (Some(a), Some(b)) if a.overlaps(&b))
    }
    leases
        .iter()
        .filter(|e| !is_ours(e))
        .any(|e| overlap(want.v4, e.subnets.v4) || overlap(want.v6, e.subnets.v6))
}

/// An IPv4 or IPv6 prefix: two overlap when one contains the other.
trait Prefix: Copy + Eq + std::hash::Hash {
    fn prefix_len(&self) -> u8;
    fn overlaps(&self, other: &Self) -> bool;
}

impl Prefix for Ipv4Net {
    fn prefix_len(&self) -> u8 {
        Ipv4Net::prefix_len(self)
    }
    fn overlaps(&self, other: &Self) -> bool {
        self.contains(other) || other.contains(self)
    }
}

impl Prefix for Ipv6Net {
    fn prefix_len(&self) -> u8 {
        Ipv6Net::prefix_len(self)
    }
    fn overlaps(&self, other: &Self) -> bool {
        self.contains(other) || other.contains(self)
    }
}

/// Others' subnets of one family: those of the configured length in a set (two of one
/// length overlap only when equal), the rest in a list checked for overlap.
struct Taken<N> {
    len: u8,
    same_len: HashSet<N>,
    other_len: Vec<N>,
}

impl<N: Prefix> Taken<N> {
    fn new(subnets: impl Iterator<Item = N>, len: u8) -> Taken<N> {
        let (same, other): (Vec<N>, Vec<N>) = subnets.partition(|s| s.prefix_len() == len);
        Taken {
            len,
            same_len: same.into_iter().collect(),
            other_len: other,
        }
    }

    fn overlaps(&self, s: &N) -> bool {
        if s.prefix_len() == self.len {
            self.same_len.contains(s) || self.other_len.iter().any(|t| t.overlaps(s))
        } else {
            self.same_len
                .iter()
                .chain(&self.other_len)
                .any(|t| t.overlaps(s))
        }
    }

    fn len(&self) -> usize {
        self.same_len.len() + self.other_len.len()
    }
}

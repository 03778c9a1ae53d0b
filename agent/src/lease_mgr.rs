//! Acquiring this node's subnet: prefer the subnet in an existing subnet file, then an
//! existing lease with our public IP, then a random free subnet among the first 100. Creation
//! is a create-if-absent transaction, so two nodes never hold one subnet; losing the race
//! just moves on to another subnet. Keys without an etcd lease are reservations: honoured,
//! never converted.

use ipnet::Ipv4Net;

use crate::lease::LeaseRecord;
use crate::lease_store::{LeaseEntry, LeaseStore, StoreError};
use crate::netconf::NetworkConfig;

/// The subnet we hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub subnet: Ipv4Net,
    /// The etcd lease kept alive; 0 for a reservation.
    pub lease_id: i64,
}

/// Why acquiring failed.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(
        "no free subnet in {network} between {min} and {max} ({held} held): add room to the network config or remove stale leases"
    )]
    Full {
        network: Ipv4Net,
        min: std::net::Ipv4Addr,
        max: std::net::Ipv4Addr,
        held: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn random_index(n: usize) -> usize {
    (twill_netkit::random::random_u64() % n.max(1) as u64) as usize
}

/// Whether store lease `lease_id` still runs (a renewal works); 0 (no lease) never does.
async fn is_live<S: LeaseStore>(store: &S, lease_id: i64) -> bool {
    lease_id != 0 && store.keep_alive(lease_id).await.unwrap_or(0) > 0
}

async fn reuse<S: LeaseStore>(
    store: &S,
    e: &LeaseEntry,
    record: &LeaseRecord,
    ttl: i64,
) -> Result<Option<Held>, StoreError> {
    let same_value = e.record.as_ref().is_ok_and(|r| r == record);
    if e.lease_id == 0 {
        // A reservation: keep it one (a put without a lease keeps lease 0).
        if !same_value {
            store.update_lease(e.subnet, record, 0).await?;
        }
        tracing::info!(subnet = %e.subnet, "using the reservation for this node's public IP");
        return Ok(Some(Held {
            subnet: e.subnet,
            lease_id: 0,
        }));
    }
    if is_live(store, e.lease_id).await {
        if !same_value {
            store.update_lease(e.subnet, record, e.lease_id).await?;
        }
        tracing::info!(subnet = %e.subnet, lease = format!("{:x}", e.lease_id), "resumed our existing lease");
        return Ok(Some(Held {
            subnet: e.subnet,
            lease_id: e.lease_id,
        }));
    }
    let id = store.grant(ttl).await?;
    if store
        .take_over(e.subnet, record, id, e.mod_revision)
        .await?
    {
        tracing::info!(subnet = %e.subnet, "took over our previous lease");
        return Ok(Some(Held {
            subnet: e.subnet,
            lease_id: id,
        }));
    }
    Ok(None)
}

/// One attempt to acquire a subnet.
pub async fn acquire<S: LeaseStore>(
    store: &S,
    config: &NetworkConfig,
    record: &LeaseRecord,
    hint: Option<Ipv4Net>,
    ttl: i64,
) -> Result<Held, AcquireError> {
    let leases = store.snapshot().await?.leases;
    let mine = |e: &&LeaseEntry| {
        e.record
            .as_ref()
            .is_ok_and(|r| r.public_ip == record.public_ip)
            && config.fits(e.subnet)
    };

    // 1. The subnet in the existing subnet file.
    if let Some(h) = hint.filter(|h| config.fits(*h)) {
        match leases.iter().find(|e| e.subnet == h) {
            None => {
                let id = store.grant(ttl).await?;
                if store.create_lease(h, record, id).await? {
                    tracing::info!(subnet = %h, "leased the subnet from the existing subnet file");
                    return Ok(Held {
                        subnet: h,
                        lease_id: id,
                    });
                }
            }
            Some(e) if mine(&e) => {
                if let Some(held) = reuse(store, e, record, ttl).await? {
                    return Ok(held);
                }
            }
            // Our subnet file names it and nobody can read the value: it is ours (a corrupt
            // value must never move a node away from its running containers).
            // Bound to its live lease if it has one, else to a new one (a plain `etcdctl put`
            // detaches a key from its lease; that must not make it a reservation).
            Some(e) if e.record.is_err() => {
                tracing::warn!(key = %e.key, "the subnet file's subnet has an unreadable lease value: taking it back");
                let id = if is_live(store, e.lease_id).await {
                    e.lease_id
                } else {
                    store.grant(ttl).await?
                };
                if store.take_over(h, record, id, e.mod_revision).await? {
                    return Ok(Held {
                        subnet: h,
                        lease_id: id,
                    });
                }
            }
            Some(_) => {
                tracing::warn!(subnet = %h, "the subnet file's subnet is held by another node: leasing a new one")
            }
        }
    }
    // 2. An existing lease with our public IP.
    for e in leases.iter().filter(mine) {
        if let Some(held) = reuse(store, e, record, ttl).await? {
            return Ok(held);
        }
    }
    // 3. A random free subnet among the first 100; a lost race tries the next.
    let taken: std::collections::HashSet<Ipv4Net> = leases.iter().map(|e| e.subnet).collect();
    let mut free: Vec<Ipv4Net> = config
        .subnets()
        .filter(|s| !taken.contains(s))
        .take(100)
        .collect();
    let id = store.grant(ttl).await?;
    while !free.is_empty() {
        let s = free.swap_remove(random_index(free.len()));
        if store.create_lease(s, record, id).await? {
            tracing::info!(subnet = %s, "leased a new subnet");
            return Ok(Held {
                subnet: s,
                lease_id: id,
            });
        }
        tracing::info!(subnet = %s, "another node won the race for this subnet: trying another");
    }
    Err(AcquireError::Full {
        network: config.network,
        min: config.subnet_min,
        max: config.subnet_max,
        held: taken.len(),
    })
}

//! An in-memory lease store for the agent's unit tests: etcd's semantics that the agent relies
//! on (revisions, create-if-absent, compare-and-swap, leases that expire on the tokio clock,
//! watches from a revision, compaction), plus the faults a test provokes: the store going
//! away, a lost race, a compaction that cancels watches, watches refused with a reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    Cancelled, LeaseEntry, LeaseEvent, LeaseStore, LeaseWatch, Snapshot, StoreError, WatchBatch,
};
use crate::lease::{LeaseRecord, Subnets};

const PREFIX: &str = "/coreos.com/network";

/// One key's value.
#[derive(Clone, Debug)]
pub struct Kv {
    pub value: String,
    pub lease: i64,
    pub mod_revision: i64,
    pub create_revision: i64,
}

type WatchItem = Result<WatchBatch, String>;

#[derive(Default)]
struct State {
    revision: i64,
    config: Option<String>,
    keys: BTreeMap<Subnets, Kv>,
    /// Store lease → when it expires and its TTL.
    leases: HashMap<i64, (Instant, i64)>,
    next_lease: i64,
    /// Every change with its revision, for watches that start in the past.
    history: Vec<(i64, LeaseEvent)>,
    compacted: i64,
    watchers: Vec<mpsc::UnboundedSender<WatchItem>>,
    down: bool,
    /// The next create of any subnet loses the race: another node creates it first.
    lose_next_race: bool,
    /// Just before the next create, another node creates this key (with this value).
    create_before_next: Option<(Subnets, String)>,
    /// Calls by operation name, for assertions.
    calls: Vec<(&'static str, Instant)>,
    /// Calls of this operation fail once this many more have worked (the store breaking
    /// between two calls of the agent that no script can come between); answered by the
    /// store (a denied permission) when the flag is set, else unreachable.
    fail_op: Option<(&'static str, usize, bool)>,
    /// The next this many watches are cancelled at once with this reason (as etcd cancels a
    /// watch it refuses: permission denied).
    refuse_watches: Option<(usize, String)>,
}

impl State {
    fn bump(&mut self, ev: LeaseEvent) {
        self.revision += 1;
        let rev = self.revision;
        self.history.push((rev, ev.clone()));
        self.watchers
            .retain(|w| w.send(Ok(WatchBatch::Events(vec![ev.clone()]))).is_ok());
    }

    fn put(&mut self, subnet: Subnets, value: String, lease: i64) {
        let create_revision = self
            .keys
            .get(&subnet)
            .map_or(self.revision + 1, |kv| kv.create_revision);
        let kv = Kv {
            value,
            lease,
            mod_revision: self.revision + 1,
            create_revision,
        };
        let entry = entry(subnet, &kv);
        self.keys.insert(subnet, kv);
        self.bump(LeaseEvent::Put(entry));
    }

    fn delete(&mut self, subnet: Subnets) {
        if self.keys.remove(&subnet).is_some() {
            self.bump(LeaseEvent::Delete(full_key(subnet), subnet));
        }
    }

    /// Lets leases whose time is up expire, deleting their keys as etcd does.
    fn expire(&mut self) {
        let now = Instant::now();
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.leases.remove(&id);
            let keys: Vec<Subnets> = self
                .keys
                .iter()
                .filter(|(_, kv)| kv.lease == id)
                .map(|(s, _)| *s)
                .collect();
            for s in keys {
                self.delete(s);
            }
        }
    }
}

fn full_key(subnets: Subnets) -> String {
    format!("{PREFIX}/subnets/{}", subnets.key())
}

fn entry(subnets: Subnets, kv: &Kv) -> LeaseEntry {
    let record = LeaseRecord::parse(kv.value.as_bytes());
    LeaseEntry {
        subnets,
        key: full_key(subnets),
        claim: crate::lease::Claim::for_value(kv.value.as_bytes(), &record),
        record,
        lease_id: kv.lease,
        mod_revision: kv.mod_revision,
    }
}

/// A shared handle: clones see the same store.
#[derive(Clone, Default)]
pub struct MemStore(Arc<Mutex<State>>);

impl MemStore {
    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock fails anyway; keep going with its state.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call and fails it while the store is down; expires due leases first.
    fn call(&self, op: &'static str) -> Result<MutexGuard<'_, State>, StoreError> {
        let mut st = self.state();
        st.calls.push((op, Instant::now()));
        if st.down {
            return Err(StoreError::new(op, "connection refused"));
        }
        if let Some((failing, ok_left, answered)) = st.fail_op.as_mut()
            && *failing == op
        {
            if *ok_left == 0 {
                return Err(if *answered {
                    StoreError::answer(op, "etcdserver: permission denied")
                } else {
                    StoreError::new(op, "connection refused")
                });
            }
            *ok_left -= 1;
        }
        st.expire();
        Ok(st)
    }

    /// A store holding `config`.
    pub fn with_config(config: &str) -> MemStore {
        let s = MemStore::default();
        s.set_config(Some(config));
        s
    }

    /// Writes or deletes the config key.
    pub fn set_config(&self, text: Option<&str>) {
        let mut st = self.state();
        st.config = text.map(str::to_string);
        let ev = LeaseEvent::Config(st.config.clone());
        st.bump(ev);
    }

    /// Makes every call fail (and ends every watch) until `false`.
    pub fn set_down(&self, down: bool) {
        let mut st = self.state();
        st.down = down;
        if down {
            for w in st.watchers.drain(..) {
                let _ = w.send(Err("connection lost".into()));
            }
        }
    }

    /// Makes calls of `op` fail after `ok` more of them worked, until [`MemStore::heal`].
    pub fn fail_after(&self, op: &'static str, ok: usize) {
        self.state().fail_op = Some((op, ok, false));
    }

    /// Like [`MemStore::fail_after`], but the store answers the calls with an error (a denied
    /// permission) rather than being unreachable.
    pub fn refuse_after(&self, op: &'static str, ok: usize) {
        self.state().fail_op = Some((op, ok, true));
    }

    /// Ends [`MemStore::fail_after`].
    pub fn heal(&self) {
        self.state().fail_op = None;
    }

    /// Another node's lease on `subnet` with `value`, bound to a fresh store lease of `ttl`
    /// seconds (0: a reservation, bound to none).
    pub fn put_foreign(&self, subnet: impl Into<Subnets>, value: &str, ttl: i64) -> i64 {
        let subnet = subnet.into();
        let mut st = self.state();
        let id = if ttl > 0 {
            st.next_lease += 1;
            let id = st.next_lease;
            st.leases
                .insert(id, (Instant::now() + Duration::from_secs(ttl as u64), ttl));
            id
        } else {
            0
        };
        st.put(subnet, value.to_string(), id);
        id
    }

    /// Writes `value` at `subnet`'s key bound to store lease `lease` (0: none), as an operator
    /// with etcdctl would.
    pub fn put_bound(&self, subnet: impl Into<Subnets>, value: &str, lease: i64) {
        self.state().put(subnet.into(), value.to_string(), lease);
    }

    /// Deletes a key, as an operator would.
    pub fn delete(&self, subnet: impl Into<Subnets>) {
        self.state().delete(subnet.into());
    }

    /// Revokes a store lease at once (its keys go).
    pub fn revoke(&self, lease: i64) {
        let mut st = self.state();
        if let Some(l) = st.leases.get_mut(&lease) {
            l.0 = Instant::now();
        }
        st.expire();
    }

    /// Compacts the history up to now: watches from before it are cancelled, as etcd does.
    pub fn compact(&self) {
        let mut st = self.state();
        st.compacted = st.revision;
        st.history.clear();
        let rev = st.revision;
        for w in st.watchers.drain(..) {
            let _ = w.send(Ok(WatchBatch::Cancelled(Cancelled::Compacted {
                compact_revision: rev,
            })));
        }
    }

    /// Cancels every watch with `reason` and no compaction, and the next `more` watches as
    /// soon as they are set up (a watch etcd refuses, or cancels for a reason of its own).
    pub fn cancel_watches(&self, reason: &str, more: usize) {
        let mut st = self.state();
        for w in st.watchers.drain(..) {
            let _ = w.send(Ok(WatchBatch::Cancelled(Cancelled::Other {
                reason: reason.to_string(),
            })));
        }
        st.refuse_watches = (more > 0).then(|| (more, reason.to_string()));
    }

    /// The next create-if-absent loses to another node that takes the same subnet.
    pub fn lose_next_race(&self) {
        self.state().lose_next_race = true;
    }

    /// Just before the next create, another node creates `other` with `value` (e.g. the same
    /// IPv6 subnet under another IPv4 subnet: a key that create-if-absent alone cannot see).
    pub fn create_before_next(&self, other: Subnets, value: &str) {
        self.state().create_before_next = Some((other, value.to_string()));
    }

    /// The key of `subnet`, if any (after expiring due leases).
    pub fn get(&self, subnet: impl Into<Subnets>) -> Option<Kv> {
        let mut st = self.state();
        st.expire();
        st.keys.get(&subnet.into()).cloned()
    }

    /// Every key (after expiring due leases).
    pub fn keys(&self) -> BTreeMap<Subnets, Kv> {
        let mut st = self.state();
        st.expire();
        st.keys.clone()
    }

    /// How many store leases are alive (granted, not yet expired or revoked).
    pub fn live_leases(&self) -> usize {
        let mut st = self.state();
        st.expire();
        st.leases.len()
    }

    /// Whether store lease `lease` is alive (granted, not yet expired or revoked).
    pub fn lease_alive(&self, lease: i64) -> bool {
        let mut st = self.state();
        st.expire();
        st.leases.contains_key(&lease)
    }

    /// When calls of `op` were made.
    pub fn calls(&self, op: &str) -> Vec<Instant> {
        let st = self.state();
        st.calls
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, t)| *t)
            .collect()
    }
}

impl LeaseStore for MemStore {
    type Watch = MemWatch;

    fn config_key(&self) -> String {
        format!("{PREFIX}/config")
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let st = self.call("snapshot")?;
        Ok(Snapshot {
            config: st.config.clone(),
            leases: st.keys.iter().map(|(s, kv)| entry(*s, kv)).collect(),
            revision: st.revision,
        })
    }

    async fn create_lease(
        &self,
        subnet: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
        since: i64,
    ) -> Result<bool, StoreError> {
        let mut st = self.call("create_lease")?;
        if let Some((other, value)) = st.create_before_next.take() {
            st.put(other, value, 0);
        }
        if std::mem::take(&mut st.lose_next_race) && !st.keys.contains_key(&subnet) {
            st.put(
                subnet,
                r#"{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"host-gw"}"#.into(),
                0,
            );
        }
        if st.keys.contains_key(&subnet) || st.keys.values().any(|kv| kv.create_revision > since) {
            return Ok(false);
        }
        st.put(subnet, record.to_json(), lease_id);
        Ok(true)
    }

    async fn take_over(
        &self,
        subnet: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
        mod_revision: i64,
    ) -> Result<bool, StoreError> {
        let mut st = self.call("take_over")?;
        // etcd compares a missing key's mod_revision as 0.
        let current = st.keys.get(&subnet).map_or(0, |kv| kv.mod_revision);
        if current != mod_revision {
            return Ok(false);
        }
        st.put(subnet, record.to_json(), lease_id);
        Ok(true)
    }

    async fn update_lease(
        &self,
        subnet: Subnets,
        record: &LeaseRecord,
        lease_id: i64,
    ) -> Result<(), StoreError> {
        let mut st = self.call("update_lease")?;
        st.put(subnet, record.to_json(), lease_id);
        Ok(())
    }

    async fn grant(&self, ttl: i64) -> Result<i64, StoreError> {
        let mut st = self.call("grant")?;
        st.next_lease += 1;
        let id = st.next_lease;
        st.leases
            .insert(id, (Instant::now() + Duration::from_secs(ttl as u64), ttl));
        Ok(id)
    }

    async fn release(&self, lease_id: i64) -> Result<(), StoreError> {
        let mut st = self.call("release")?;
        if let Some(l) = st.leases.get_mut(&lease_id) {
            l.0 = Instant::now();
        }
        st.expire();
        Ok(())
    }

    async fn lease_keys(&self, lease_id: i64) -> Result<Option<Vec<String>>, StoreError> {
        let st = self.call("lease_keys")?;
        if !st.leases.contains_key(&lease_id) {
            return Ok(None);
        }
        Ok(Some(
            st.keys
                .iter()
                .filter(|(_, kv)| kv.lease == lease_id)
                .map(|(s, _)| full_key(*s))
                .collect(),
        ))
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<i64, StoreError> {
        let mut st = self.call("keep_alive")?;
        match st.leases.get_mut(&lease_id) {
            Some((at, ttl)) => {
                *at = Instant::now() + Duration::from_secs(*ttl as u64);
                Ok(*ttl)
            }
            None => Ok(0),
        }
    }

    async fn watch(&self, revision: i64) -> Result<MemWatch, StoreError> {
        let mut st = self.call("watch")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let refused = match st.refuse_watches.as_mut() {
            Some((left, reason)) => {
                *left -= 1;
                let reason = reason.clone();
                if *left == 0 {
                    st.refuse_watches = None;
                }
                Some(reason)
            }
            None => None,
        };
        if let Some(reason) = refused {
            let _ = tx.send(Ok(WatchBatch::Cancelled(Cancelled::Other { reason })));
        } else if revision <= st.compacted {
            let _ = tx.send(Ok(WatchBatch::Cancelled(Cancelled::Compacted {
                compact_revision: st.compacted,
            })));
        } else {
            // etcd's first answer on a watch says it was created, without events.
            let _ = tx.send(Ok(WatchBatch::Events(Vec::new())));
            let past: Vec<LeaseEvent> = st
                .history
                .iter()
                .filter(|(r, _)| *r >= revision)
                .map(|(_, e)| e.clone())
                .collect();
            if !past.is_empty() {
                let _ = tx.send(Ok(WatchBatch::Events(past)));
            }
            st.watchers.push(tx);
        }
        Ok(MemWatch(rx))
    }
}

/// A watch on the in-memory store.
pub struct MemWatch(mpsc::UnboundedReceiver<WatchItem>);

impl LeaseWatch for MemWatch {
    async fn next(&mut self) -> Result<Option<WatchBatch>, StoreError> {
        match self.0.recv().await {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(StoreError::new("watching", e)),
            None => Ok(None),
        }
    }
}

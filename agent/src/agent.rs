//! The agent: lease a subnet, keep it, and keep the node matching every other node's lease.
//!
//! `Agent` is the lease state machine over a [`LeaseStore`] and a [`Node`]: acquire (retrying
//! with backoff) → tell the node → read a snapshot at revision R, apply, watch from R+1. Then
//! it reacts to watch events (apply on change; our own key deleted → re-acquire; the config
//! changed → say what and that it takes a restart), a reconcile timer (apply + refresh), and
//! its renewal deadline (keepalive; a failure is retried within seconds, never later than
//! the lease allows; expired → re-acquire). Store trouble never touches the data plane: routes
//! stay, the agent retries and reconciles when the store is back. `run` wires it to etcd and
//! the host.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use twill_netkit::Netlink;

use crate::backend::{self, Backend, Peer, Peers};
use crate::backoff::Backoff;
use crate::cli::Cli;
use crate::etcd_store::{EtcdOptions, EtcdStore};
use crate::lease::{LeaseRecord, Subnets};
use crate::lease_mgr::{self, AcquireError, Held};
use crate::lease_store::{Cancelled, LeaseEntry, LeaseEvent, LeaseStore, LeaseWatch, WatchBatch};
use crate::metrics::{self, Metrics};
use crate::netconf::{BackendType, NetworkConfig};
use crate::node::{self, HostNode, HostSettings, Node};
use crate::underlay;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ipv6;
mod write_backs;

/// etcd options from the flags.
pub fn etcd_options(cli: &Cli) -> EtcdOptions {
    EtcdOptions {
        endpoints: cli.etcd_endpoints.clone(),
        prefix: cli.etcd_prefix.clone(),
        ca_file: cli.etcd_cafile.clone(),
        cert_file: cli.etcd_certfile.clone(),
        key_file: cli.etcd_keyfile.clone(),
        username: cli.etcd_username.clone(),
        password: cli.etcd_password.clone(),
    }
}

/// How long leases live and how the agent paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Lease TTL in seconds.
    pub ttl: i64,
    /// Renew this many seconds before the lease expires.
    pub renew_margin: i64,
    /// Level-triggered reconcile of the kernel state.
    pub reconcile_every: Duration,
}

impl Timing {
    /// Renew `renew_margin` seconds before expiry; with a TTL shorter than twice the margin,
    /// three times per TTL so one lost keepalive does not lose the lease.
    pub fn renew_interval(&self) -> Duration {
        let secs = if self.ttl > self.renew_margin * 2 {
            self.ttl - self.renew_margin
        } else {
            (self.ttl / 3).max(1)
        };
        Duration::from_secs(secs as u64)
    }
}

/// Retries of store calls: quick at first, never slower than every 10 s.
fn store_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
}

/// When the held lease must be renewed, and when it runs out.
#[derive(Debug)]
struct Renewal {
    due: Instant,
    expires: Instant,
    /// The lease's TTL.
    ttl: Duration,
    /// Waits after failed renewals.
    retry: Backoff,
}

impl Renewal {
    fn fresh(timing: &Timing, ttl_left: i64) -> Renewal {
        let now = Instant::now();
        Renewal {
            due: now + timing.renew_interval(),
            expires: now + Duration::from_secs(ttl_left.max(0) as u64),
            ttl: Duration::from_secs(timing.ttl.max(1) as u64),
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }

    /// After a failed renewal: try again within seconds, and at least three more times before
    /// the lease runs out, so one failed call never costs the lease if the store comes back
    /// in time. Past the expiry the lease may well live on (an etcd that elects a leader
    /// again gives every lease a whole TTL), so retries go on, three times per TTL at least,
    /// but with the backoff: not every second for as long as etcd is away, each a log line.
    /// Returns the wait and the time left.
    fn failed(&mut self) -> (Duration, Duration) {
        let left = self.expires.saturating_duration_since(Instant::now());
        let budget = if left.is_zero() { self.ttl } else { left };
        let wait = self
            .retry
            .next_wait()
            .min(budget / 3)
            .max(Duration::from_secs(1));
        self.due = Instant::now() + wait;
        (wait, left)
    }
}

/// What the agent leases, and how.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// The config the agent runs with.
    pub config: NetworkConfig,
    /// The store's text of it.
    pub config_text: Option<String>,
    /// This node's lease value.
    pub record: LeaseRecord,
    pub timing: Timing,
    /// The subnets to try first (the existing subnet file's).
    pub hint: Subnets,
}

/// The agent of one node.
pub struct Agent<S: LeaseStore, N: Node> {
    store: S,
    node: N,
    /// The config the agent runs with (changes take a restart, as with Flannel).
    config: NetworkConfig,
    /// The config text last seen in the store, so each change is reported once.
    config_text: Option<String>,
    record: LeaseRecord,
    timing: Timing,
    metrics: Arc<Metrics>,
    /// Where to look first for our subnets (the existing subnet file's).
    hint: Subnets,
    held: Option<(Held, Renewal)>,
    peers: Peers,
    watch: Option<S::Watch>,
    resync_at: Instant,
    resync_retry: Backoff,
    ready: bool,
    /// Whether `peers` was ever read from the store. Until then it is empty for want of a
    /// listing, not because the network is: a reconcile would remove every route an earlier
    /// run installed.
    peers_listed: bool,
    /// Our key's value is not the one we wrote: write it back.
    own_value_wrong: bool,
    /// The store lease our key was bound to before an operator made it a reservation.
    unused_lease: Option<i64>,
    write_backs: write_backs::WriteBacks,
    /// Since when store calls fail, and how many did.
    outage: Option<(Instant, u64)>,
    /// The keys of leases outside the network already said (once each: never routed).
    said_outside: std::collections::HashSet<String>,
}

/// What the loop does after an event.
enum Next {
    Continue,
    /// Our lease is gone: lease again.
    Reacquire(&'static str),
}

impl<S: LeaseStore, N: Node> Agent<S, N> {
    /// An agent that leases a subnet as `want` says.
    pub fn new(store: S, node: N, want: Wanted, metrics: Arc<Metrics>) -> Agent<S, N> {
        Agent {
            store,
            node,
            config: want.config,
            config_text: want.config_text,
            record: want.record,
            timing: want.timing,
            metrics,
            hint: want.hint,
            held: None,
            peers: Peers::new(),
            watch: None,
            resync_at: Instant::now(),
            resync_retry: store_backoff(),
            ready: false,
            peers_listed: false,
            own_value_wrong: false,
            unused_lease: None,
            write_backs: write_backs::WriteBacks::new(),
            outage: None,
            said_outside: std::collections::HashSet::new(),
        }
    }

    /// Runs until `shutdown` completes; an error only when the node cannot take its subnet.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            r = self.run_loop() => r,
            () = shutdown => Ok(()),
        }
    }

    async fn run_loop(&mut self) -> anyhow::Result<()> {
        self.acquire().await?;
        let mut reconcile = tokio::time::interval(self.timing.reconcile_every);
        // Ticks missed while the loop waited (leasing again in a full network, an etcd
        // outage) are not made up: one reconcile after the wait, not one per missed tick.
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconcile.tick().await;
        loop {
            if self.watch.is_none()
                && Instant::now() >= self.resync_at
                && let Next::Reacquire(why) = self.resync().await
            {
                self.reacquire(why).await?;
                continue;
            }
            let renew_due = self
                .held
                .as_ref()
                .filter(|(h, _)| h.lease_id != 0)
                .map(|(_, r)| r.due);
            let watching = self.watch.is_some();
            let next = tokio::select! {
                batch = next_batch(&mut self.watch) => self.on_watch(batch).await,
                () = tokio::time::sleep_until(self.resync_at), if !watching => Next::Continue,
                _ = reconcile.tick() => {
                    self.restore_own_value().await;
                    if self.peers_listed {
                        self.node.apply(&self.peers).await;
                    }
                    self.node.refresh();
                    Next::Continue
                }
                () = sleep_until_some(renew_due) => self.renew().await,
            };
            if let Next::Reacquire(why) = next {
                self.reacquire(why).await?;
            }
        }
    }

    /// A failed store call of `op` (a metrics label): counted, logged, and the start of an
    /// outage if it is the first. Unless etcd `answered` (a denied permission): then it is
    /// reachable, no outage, and `twilld_etcd_reachable` is not set to 0.
    fn store_error(
        &mut self,
        op: &'static str,
        what: &str,
        e: &dyn std::fmt::Display,
        answered: bool,
    ) {
        if answered {
            self.store_ok();
            self.metrics.etcd_refused(op);
        } else {
            self.metrics.etcd_failed(op);
            let outage = self.outage.get_or_insert((Instant::now(), 0));
            outage.1 += 1;
        }
        tracing::warn!(error = %e, "{what}");
    }

    /// A store call worked: if calls failed before, say that etcd is back and after how long.
    fn store_ok(&mut self) {
        self.metrics.etcd_answered();
        if let Some((since, failures)) = self.outage.take() {
            tracing::info!(
                "etcd answers again after {}s ({failures} failed calls)",
                since.elapsed().as_secs()
            );
        }
    }

    /// Leases a subnet, retrying until it works, and hands it to the node.
    async fn acquire(&mut self) -> anyhow::Result<()> {
        let mut retry = store_backoff();
        let held = loop {
            let ttl = self.timing.ttl;
            match lease_mgr::acquire(&self.store, &self.config, &self.record, self.hint, ttl).await
            {
                Ok(h) => break h,
                Err(AcquireError::Store(e)) => {
                    self.store_error("acquire", "cannot lease a subnet; retrying", &e, e.answered)
                }
                Err(e) => tracing::error!(error = %e, "cannot lease a subnet; retrying"),
            }
            retry.wait().await;
        };
        if let Some(old) = self.held_subnet()
            && old != held.subnets
        {
            tracing::warn!(old = %old, new = %held.subnets, "the old subnets were taken: containers on this node must be restarted");
        }
        self.store_ok();
        self.node.set_subnet(held.subnets).await?;
        self.hint = held.subnets;
        self.held = Some((held, Renewal::fresh(&self.timing, self.timing.ttl)));
        Ok(())
    }

    /// Leases again after losing our lease; then re-reads everything.
    async fn reacquire(&mut self, why: &str) -> anyhow::Result<()> {
        let subnets = self.held.as_ref().map(|(h, _)| h.subnets);
        tracing::warn!(subnets = ?subnets, "{why}: re-acquiring (data plane untouched)");
        self.acquire().await?;
        self.watch = None;
        self.resync_at = Instant::now();
        Ok(())
    }

    /// Re-lists after the next backoff wait; returns the wait.
    fn resync_later(&mut self) -> Duration {
        let wait = self.resync_retry.next_wait();
        self.resync_at = Instant::now() + wait;
        wait
    }

    fn held_subnet(&self) -> Option<Subnets> {
        self.held.as_ref().map(|(h, _)| h.subnets)
    }

    /// Reads a snapshot, applies it, and watches from just after it.
    async fn resync(&mut self) -> Next {
        let snap = match self.store.snapshot().await {
            Ok(s) => {
                self.store_ok();
                s
            }
            Err(e) => {
                self.store_error(
                    "snapshot",
                    "listing leases failed; the data plane stays as it is",
                    &e,
                    e.answered,
                );
                self.resync_later();
                return Next::Continue;
            }
        };
        self.on_config(snap.config);
        let own = self.held.as_ref().map(|(h, _)| *h);
        let own_entry = own.and_then(|h| {
            snap.leases
                .iter()
                .find(|e| is_key_of(e, h.subnets))
                .cloned()
        });
        self.peers = merge_peers(&self.peers, snap.leases);
        self.peers_listed = true;
        self.say_leases_outside();
        match self.store.watch(snap.revision + 1).await {
            Ok(w) => {
                // The backoff is reset by the watch's first answer, not here: etcd sets up a
                // watch it then cancels (permission denied) without an error.
                self.watch = Some(w);
                self.store_ok();
            }
            Err(e) => {
                self.store_error("watch", "watching leases failed; retrying", &e, e.answered);
                self.resync_later();
            }
        }
        if let Some(held) = own {
            match own_entry {
                None => return Next::Reacquire("our lease is gone from etcd"),
                Some(e) => {
                    if let Next::Reacquire(why) = self.check_own(held, &e) {
                        return Next::Reacquire(why);
                    }
                }
            }
        }
        self.restore_own_value().await;
        self.node.apply(&self.peers).await;
        if !self.ready {
            self.ready = true;
            self.metrics.ready.store(true, Ordering::Relaxed);
            self.node.ready();
            tracing::info!(subnet = ?self.held_subnet(), peers = self.routed_peers(), "ready");
        }
        Next::Continue
    }

    async fn on_watch(
        &mut self,
        batch: Result<Option<WatchBatch>, crate::lease_store::StoreError>,
    ) -> Next {
        let events = match batch {
            Ok(Some(WatchBatch::Events(events))) => {
                // The watch works (etcd's first answer says it was created): a later loss
                // starts over with short waits.
                self.resync_retry.reset();
                events
            }
            Ok(Some(WatchBatch::Cancelled(why @ Cancelled::Compacted { .. }))) => {
                // Events were missed: a fresh snapshot, and a watch from just after it, at once.
                tracing::warn!("etcd cancelled the watch on the leases: {why}; re-listing them");
                self.watch = None;
                return Next::Continue;
            }
            Ok(Some(WatchBatch::Cancelled(why @ Cancelled::Other { .. }))) => {
                // Not a compaction: a watch set up again at once would most likely be refused
                // again, so after the backoff (and from a fresh snapshot, as after any loss).
                self.watch = None;
                let wait = self.resync_later();
                let what = format!(
                    "etcd cancelled the watch on the leases (not a compaction): re-listing and watching again in {:.1}s",
                    wait.as_secs_f32()
                );
                // A failed call (counted), but not an outage: etcd answers, so
                // `twilld_etcd_reachable` stays as it is (it flapped 0/1 with every retry).
                self.metrics.etcd_refused("watch");
                tracing::warn!(error = %why, "{what}");
                return Next::Continue;
            }
            lost => {
                let (why, answered): (&dyn std::fmt::Display, bool) = match &lost {
                    Err(e) => (e, e.answered),
                    _ => (&"closed by etcd", false),
                };
                self.store_error(
                    "watch",
                    "lost the etcd watch: re-listing and re-watching",
                    why,
                    answered,
                );
                self.watch = None;
                self.resync_later();
                return Next::Continue;
            }
        };
        let own = self.held.as_ref().map(|(h, _)| *h);
        let mut changed = false;
        for ev in events {
            match ev {
                LeaseEvent::Put(e) => {
                    if let Some(held) = own.filter(|h| is_key_of(&e, h.subnets))
                        && let Next::Reacquire(why) = self.check_own(held, &e)
                    {
                        return Next::Reacquire(why);
                    }
                    changed |= learn(&mut self.peers, e);
                }
                LeaseEvent::Delete(key, s) => {
                    if own.is_some_and(|h| h.subnets == s && key_suffix(&key) == h.subnets.key()) {
                        return Next::Reacquire("our lease was deleted");
                    }
                    // Only this key's peer goes: another key naming the same subnet (a node
                    // moving to dual stack has both for a while) keeps its kernel entries.
                    changed |= self.peers.remove(&key).is_some();
                }
                LeaseEvent::Config(text) => self.on_config(text),
            }
        }
        self.restore_own_value().await;
        if changed {
            self.say_leases_outside();
            self.node.apply(&self.peers).await;
        }
        Next::Continue
    }

    /// The networks of the families that are on.
    fn networks(&self) -> (Option<ipnet::Ipv4Net>, Option<ipnet::Ipv6Net>) {
        let c = &self.config;
        (
            c.enable_ipv4.then_some(c.network),
            c.ipv6.map(|v6| v6.network),
        )
    }

    /// The other nodes the backend routes to (see [`backend::routed_peers`]).
    fn routed_peers(&self) -> usize {
        let (v4, v6) = self.networks();
        let local = self.held_subnet().unwrap_or_default();
        backend::routed_peers(&self.peers, v4, v6, local, &self.record)
    }

    /// Says once per key that a lease lies outside the network: it is never routed, and is
    /// most likely left from an earlier Network (or another cluster's, under the same prefix).
    fn say_leases_outside(&mut self) {
        let (v4, v6) = self.networks();
        let peers = &self.peers;
        self.said_outside.retain(|k| peers.contains_key(k));
        for (key, p) in peers {
            if self.said_outside.contains(key) {
                continue;
            }
            if let Some(why) = backend::outside_network(p.subnets, v4, v6) {
                tracing::warn!(
                    key = %key,
                    "a lease in etcd is not routed: {why} (left from an earlier network config? remove it with etcdctl del {key})"
                );
                self.said_outside.insert(key.clone());
            }
        }
    }

    /// Looks at our own key as the store has it: another node's valid value means it holds
    /// our subnet now; our value put again without an etcd lease makes it a reservation;
    /// anything else that is not exactly what we wrote (a corrupt or edited value, a corrupt
    /// value detached from our etcd lease by a plain `etcdctl put`) is written back.
    fn check_own(&mut self, held: Held, e: &LeaseEntry) -> Next {
        match &e.record {
            Ok(r) if !lease_mgr::same_node(&self.config, &self.record, r) => {
                return Next::Reacquire("another node's lease holds our subnet");
            }
            Err(_) if lease_mgr::claimed_by_another(&self.config, &self.record, e) => {
                return Next::Reacquire(
                    "another node's lease, in a value twill cannot read, holds our subnet",
                );
            }
            // Flannel's documented way to reserve a node's subnet is to put its lease value
            // again without an etcd lease. Binding it back to our lease would undo the
            // reservation without a word, and the subnet would again go with the lease.
            Ok(r) if e.lease_id == 0 && held.lease_id != 0 => {
                tracing::info!(key = %e.key, lease = format!("{:x}", held.lease_id), "our lease was made a reservation (a key without an etcd lease): keeping it as one, no longer renewed");
                if let Some((h, _)) = self.held.as_mut() {
                    h.lease_id = 0;
                }
                self.unused_lease = Some(held.lease_id);
                if *r == self.record {
                    return Next::Continue;
                }
                tracing::warn!(key = %e.key, "our reservation's value was changed by someone else: writing ours back")
            }
            Ok(r) if *r == self.record && e.lease_id == held.lease_id => return Next::Continue,
            Ok(_) => {
                tracing::warn!(key = %e.key, "our lease was changed by someone else: writing ours back")
            }
            Err(why) => {
                tracing::warn!(key = %e.key, reason = %why, "our lease value is corrupt: writing ours back")
            }
        }
        self.own_value_wrong = true;
        Next::Continue
    }

    /// Writes our lease value back if it was found wrong; on failure, tries again at the next
    /// reconcile.
    async fn restore_own_value(&mut self) {
        // The store lease our key left for a reservation binds nothing now; revoked rather
        // than left to run out its TTL.
        // Unless another key is bound to it too: a revoke would delete that key.
        if let Some(id) = self.unused_lease.take() {
            match lease_mgr::revoke_unused(&self.store, id, &[]).await {
                Ok(lease_mgr::Revoked::InUse(keys)) => {
                    self.store_ok();
                    tracing::info!(lease = format!("{id:x}"), others = ?keys, "the store lease our reservation left is not revoked: other keys are bound to it")
                }
                Ok(_) => self.store_ok(),
                Err(e) => {
                    tracing::debug!(lease = format!("{id:x}"), error = %e, "revoking the store lease our reservation left (it expires with its TTL)")
                }
            }
        }
        let Some((held, _)) = self.held.as_ref().filter(|_| self.own_value_wrong) else {
            return;
        };
        let held = *held;
        let now = Instant::now();
        if !self.write_backs.may_write(now) {
            return;
        }
        match self
            .store
            .update_lease(held.subnets, &self.record, held.lease_id)
            .await
        {
            Ok(()) => {
                self.own_value_wrong = false;
                self.store_ok();
                match self.write_backs.wrote(now) {
                    None => tracing::info!(subnets = %held.subnets, "wrote our lease value back"),
                    Some(n) => tracing::warn!(
                        subnets = %held.subnets,
                        public_ip = %self.record.public_ip,
                        "wrote our lease value back, {n} times within a minute: does another node use this public IP? Writing back with growing pauses"
                    ),
                }
            }
            Err(e) => self.store_error(
                "write",
                "writing our lease value back failed; retrying",
                &e,
                e.answered,
            ),
        }
    }

    /// Reports a config that differs from the one the agent runs with (once per change).
    fn on_config(&mut self, text: Option<String>) {
        if text == self.config_text {
            return;
        }
        let key = self.store.config_key();
        match config_change(&self.config, text.as_deref()) {
            ConfigChange::Same => {
                tracing::info!(
                    "the network config at {key} was rewritten; it is the one twilld runs with"
                )
            }
            change => tracing::warn!(
                "{}; twilld keeps running with the config it started with",
                change.describe(&key)
            ),
        }
        self.config_text = text;
    }

    async fn renew(&mut self) -> Next {
        let Some((held, renewal)) = self.held.as_mut() else {
            return Next::Continue;
        };
        let subnet = held.subnets;
        match self.store.keep_alive(held.lease_id).await {
            Ok(ttl) if ttl > 0 => {
                *renewal = Renewal::fresh(&self.timing, ttl);
                self.store_ok();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.metrics.last_renew_unix.store(now, Ordering::Relaxed);
                tracing::debug!(subnet = %subnet, ttl, "renewed lease");
                Next::Continue
            }
            Ok(_) => Next::Reacquire("our lease expired"),
            Err(e) => {
                let (wait, left) = renewal.failed();
                let what = format!(
                    "renewing the lease of {subnet} failed; retrying in {}s (the lease has {}s left)",
                    wait.as_secs(),
                    left.as_secs()
                );
                self.store_error("renew", &what, &e, e.answered);
                Next::Continue
            }
        }
    }
}

async fn next_batch<W: LeaseWatch>(
    watch: &mut Option<W>,
) -> Result<Option<WatchBatch>, crate::lease_store::StoreError> {
    match watch.as_mut() {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The last path segment of a key: what follows `subnets/`.
fn key_suffix(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Whether `e` is the key twill writes for `subnets` (Flannel's IPv6-only form
/// `0.0.0.0-0&<v6>` names the same subnets under another key).
fn is_key_of(e: &LeaseEntry, subnets: Subnets) -> bool {
    e.subnets == subnets && key_suffix(&e.key) == subnets.key()
}

/// Takes a lease into `peers` (keyed by its etcd key); true if that changed them. A value that
/// does not parse keeps the last good one for its key (a corrupt write must not cut a live
/// node off).
fn learn(peers: &mut Peers, e: LeaseEntry) -> bool {
    match e.record {
        Ok(record) => {
            let peer = Peer {
                subnets: e.subnets,
                record,
                mod_revision: e.mod_revision,
            };
            peers
                .insert(e.key, peer.clone())
                .is_none_or(|old| old.subnets != peer.subnets || old.record != peer.record)
        }
        Err(why) if peers.contains_key(&e.key) => {
            tracing::warn!(key = %e.key, reason = %why, "a lease value does not parse: keeping the last good value for its subnet");
            false
        }
        Err(why) => {
            tracing::warn!(key = %e.key, reason = %why, "skipping a corrupt or foreign lease value");
            false
        }
    }
}

/// The peers of a fresh snapshot: its leases, with the last good value of `before` kept for
/// keys whose value does not parse.
fn merge_peers(before: &Peers, entries: Vec<LeaseEntry>) -> Peers {
    let mut peers = Peers::new();
    for e in entries {
        if let Some(old) = before.get(&e.key) {
            peers.insert(e.key.clone(), old.clone());
        }
        learn(&mut peers, e);
    }
    peers
}

/// How the store's config compares with the one the agent runs with.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// Same settings (perhaps written differently).
    Same,
    Deleted,
    Invalid(String),
    /// The settings that differ, each as `Field old → new`.
    Changed(Vec<String>),
}

impl ConfigChange {
    /// A log line for the change of the config at `key`.
    pub fn describe(&self, key: &str) -> String {
        match self {
            ConfigChange::Same => format!("the network config at {key} is unchanged"),
            ConfigChange::Deleted => format!("the network config at {key} was deleted"),
            ConfigChange::Invalid(e) => {
                format!("the network config at {key} was changed to an invalid one ({e})")
            }
            ConfigChange::Changed(fields) => format!(
                "the network config at {key} changed ({}): restart twilld to apply it, as with Flannel",
                fields.join(", ")
            ),
        }
    }
}

/// Compares the store's config text with the running config.
pub fn config_change(running: &NetworkConfig, text: Option<&str>) -> ConfigChange {
    let Some(text) = text else {
        return ConfigChange::Deleted;
    };
    match NetworkConfig::parse(text) {
        Err(e) => ConfigChange::Invalid(e.to_string()),
        Ok(new) => {
            let fields = running.differences(&new);
            if fields.is_empty() {
                ConfigChange::Same
            } else {
                ConfigChange::Changed(fields)
            }
        }
    }
}

/// Connects to etcd, retrying while etcd's side fails (local problems were checked before).
async fn connect(opts: &EtcdOptions, co: etcd_client::ConnectOptions) -> EtcdStore {
    let mut retry = store_backoff();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match EtcdStore::connect_with(opts, co.clone()).await {
            Ok(s) => return s,
            // Attempts 1, 2, 4, 8…: the outage is visible without a line every few seconds.
            Err(e) if attempt.is_power_of_two() => {
                tracing::warn!("cannot reach etcd: {e}; retrying (attempt {attempt})")
            }
            Err(e) => tracing::debug!("cannot reach etcd: {e}; retrying (attempt {attempt})"),
        }
        retry.wait().await;
    }
}

/// Everything twilld can check before talking to etcd; an error here is fatal (exit 1), so an
/// operator learns at once about a mistyped flag instead of after etcd answers.
fn check_subnet_file_dir(path: &std::path::Path) -> anyhow::Result<()> {
    check_subnet_file_is_a_file(path)?;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating {} for --subnet-file {}",
            dir.display(),
            path.display()
        )
    })?;
    let probe = dir.join(format!(".twilld-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "--subnet-file {}: cannot write in {}",
            path.display(),
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Refuses a subnet file path that exists as something the file cannot be renamed over, or
/// should not be: a directory (a Kubernetes hostPath volume of a file that does not exist yet
/// is created as one), a FIFO, a socket, a device. Found only when the file was written,
/// twilld had taken a lease in etcd and exited. A symbolic link is replaced by the file (a
/// rename, as Flannel writes it), so it is let be.
fn check_subnet_file_is_a_file(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = match std::fs::symlink_metadata(path) {
        Ok(m) => m.file_type(),
        // Not there (written at the lease) or not readable (the directory probe says why).
        Err(_) => return Ok(()),
    };
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        return Ok(());
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if kind.is_dir() {
        anyhow::bail!(
            "--subnet-file {} is a directory, not a file: remove the directory, or point --subnet-file at a file (in Kubernetes, a hostPath volume of a file that does not exist is created as a directory: mount the directory {} instead, as Flannel's manifest does)",
            path.display(),
            dir.display()
        );
    }
    anyhow::bail!(
        "--subnet-file {} is {what}, not a file: remove it, or point --subnet-file at a file",
        path.display()
    )
}

/// Waits until the store holds a valid config; returns it and its text.
async fn wait_for_config<S: LeaseStore>(store: &S) -> (NetworkConfig, String) {
    let key = store.config_key();
    let mut said = String::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let msg = match store.snapshot().await {
            Ok(snap) => match snap.config {
                Some(text) => match NetworkConfig::parse(&text) {
                    Ok(c) => {
                        if attempt > 1 {
                            tracing::info!("found a valid network config at {key}");
                        }
                        return (c, text);
                    }
                    Err(e) => {
                        format!("invalid network config at {key}: {e}; waiting for it to be fixed")
                    }
                },
                None => format!("waiting for the network config at {key}"),
            },
            Err(e) => format!("reading the network config: {e}"),
        };
        // Each new message, and the same one again at attempts 2, 4, 8…
        if msg != said || attempt.is_power_of_two() {
            tracing::warn!("{msg}; checking every 2s (attempt {attempt})");
            said = msg;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The subnets of the subnet file an earlier run wrote, which this node should keep (its
/// containers have addresses there). A file that is there but names none is said: without
/// them the node may lease other subnets, and the operator should know why.
fn subnet_file_hint(path: &std::path::Path) -> Subnets {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Subnets::default(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the subnet file of an earlier run does not read: its subnets are not kept (a new lease may move this node's containers' subnet)");
            return Subnets::default();
        }
    };
    let (hint, problems) = subnet_file_subnets(&text);
    for why in problems {
        tracing::warn!(file = %path.display(), "the subnet file of an earlier run does not read: {why}: not kept (a new lease may move this node's containers' subnet)");
    }
    hint
}

/// The subnets a subnet file names, read as Flannel reads them to keep a node's subnet
/// (netkit's `SubnetEnv::parse_subnets`, whose module says how lines and quotes are read):
/// `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET` alone, each on its own. A file without
/// `FLANNEL_MTU`, or with another line broken, still names them (the whole file's parse, which
/// the CNI plugin needs, refused it and the node moved). What does not read is returned as
/// problems.
pub(crate) fn subnet_file_subnets(text: &str) -> (Subnets, Vec<String>) {
    let named = twill_netkit::subnet_env::SubnetEnv::parse_subnets(text);
    let mut problems = Vec::new();
    let none_named = named.ipv4.is_none() && named.ipv6.is_none();
    let not_a_subnet = |key: &str, value: &str, family: &str| {
        format!(
            "{key}={} is not an {family} subnet",
            crate::quote::quote(value)
        )
    };
    let v4 = match named.ipv4 {
        Some(Ok(n)) => Some(n),
        Some(Err(v)) => {
            problems.push(not_a_subnet("FLANNEL_SUBNET", &v, "IPv4"));
            None
        }
        None => None,
    };
    let v6 = match named.ipv6 {
        Some(Ok(n)) => Some(n),
        Some(Err(v)) => {
            problems.push(not_a_subnet("FLANNEL_IPV6_SUBNET", &v, "IPv6"));
            None
        }
        None => None,
    };
    if none_named {
        problems.push("it has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET".to_string());
    }
    (Subnets { v4, v6 }, problems)
}

/// Runs the agent until SIGTERM/SIGINT. The data plane is left in place on exit.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    for warning in cli.ignored_flannel_flags() {
        tracing::warn!("{warning}");
    }
    let nl = Netlink::connect("(host)").context("opening netlink")?;
    let metrics = Arc::new(Metrics::default());
    start_http(&cli, metrics.clone()).await?;
    // Local problems first, each fatal: the underlay, the subnet file's directory, the etcd
    // flags and TLS files. Only etcd being unreachable is worth waiting for.
    let (underlay, chosen_by) = underlay::find(
        &nl,
        &cli.iface,
        &cli.iface_regex,
        cli.iface_can_reach,
        cli.public_ip,
        cli.public_ipv6,
    )
    .await?;
    check_subnet_file_dir(&cli.subnet_file)?;
    crate::masq::warn_without_iptables();
    let opts = etcd_options(&cli);
    let co = opts.client_options()?;
    tracing::info!(iface = %underlay.link.name, public_ip = %underlay.public_ip, public_ipv6 = ?underlay.public_ipv6, bind_ip = %underlay.bind_ip(), bind_ipv6 = ?underlay.bind_ipv6(), "using underlay interface");
    let store = connect(&opts, co).await;
    let (config, config_text) = wait_for_config(&store).await;
    underlay::check_families(&underlay, &config, chosen_by)?;
    if config.backend_defaulted {
        tracing::warn!(
            "the network config has no Backend: using udp like Flannel does; set \"Backend\": {{\"Type\": \"vxlan\"}} explicitly"
        );
    }
    let udp = backend::UdpOptions {
        device: cli.udp_device.clone(),
        workers: cli.udp_workers as usize,
        busy_poll: cli.busy_poll(backend::udp::DEFAULT_BUSY_POLL),
        offloads: cli.udp_offloads,
        crypto_helper: false,
    };
    let wg = backend::WireguardOptions {
        key_file: cli.wireguard_key_file.clone(),
        socket_dir: cli.wireguard_socket_dir.clone(),
        roam_unleased: cli.wireguard_roaming == crate::cli::Roaming::Any,
        aead: wireguard_aead(&cli, config.backend.kind)?,
        engine: backend::UdpOptions {
            busy_poll: cli.busy_poll(backend::wireguard::DEFAULT_BUSY_POLL),
            crypto_helper: cli.wireguard_crypto_helper(),
            ..udp.clone()
        },
        public_ipv6_given: cli.public_ipv6.is_some(),
    };
    let underlay_iface = underlay.link.name.clone();
    let mut backend = backend::create(&config, underlay, udp, wg);
    backend::remove_earlier_setup(&nl, &config, &backend).await;
    backend
        .init(&nl)
        .await
        .with_context(|| format!("preparing the {} backend", config.backend.kind.as_str()))?;
    let record = backend.record();
    let settings = HostSettings {
        subnet_file: cli.subnet_file.clone(),
        ip_masq: cli.ip_masq,
        firewall: cli.firewall_backend,
        underlay_iface,
    };
    let node = HostNode::new(nl, backend, &config, settings, metrics.clone());
    let timing = Timing {
        ttl: cli.subnet_lease_ttl as i64,
        renew_margin: cli.subnet_lease_renew_margin as i64 * 60,
        reconcile_every: Duration::from_secs(cli.reconcile_interval),
    };
    let want = Wanted {
        config,
        config_text: Some(config_text),
        record,
        timing,
        hint: subnet_file_hint(&cli.subnet_file),
    };
    let mut agent = Agent::new(store, node, want, metrics);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting, data plane left in place"),
            _ = sigterm.recv() => tracing::info!("SIGTERM: exiting, data plane left in place"),
        }
    };
    agent.run(shutdown).await?;
    node::sd_notify("STOPPING=1");
    Ok(())
}

async fn start_http(cli: &Cli, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let mut ports: Vec<(u16, bool, bool)> = Vec::new();
    if cli.healthz_port != 0 {
        ports.push((
            cli.healthz_port,
            true,
            cli.metrics_port == 0 || cli.metrics_port == cli.healthz_port,
        ));
    }
    if cli.metrics_port != 0 && cli.metrics_port != cli.healthz_port {
        ports.push((cli.metrics_port, false, true));
    }
    for (port, healthz, m) in ports {
        let addr = (cli.healthz_ip, port);
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "listening on {}:{port} for /healthz and /metrics",
                cli.healthz_ip
            )
        })?;
        tokio::spawn(metrics::serve(l, metrics.clone(), healthz, m));
    }
    Ok(())
}

/// The AEAD `--wireguard-aead` asks for (logged; only looked for with the wireguard backend).
fn wireguard_aead(cli: &Cli, kind: BackendType) -> anyhow::Result<backend::wireguard::aead::Aead> {
    use backend::wireguard::aead::Aead;
    if kind != BackendType::Wireguard {
        return Ok(Aead::Ring);
    }
    let (aead, why_not_faster) = Aead::select(cli.wireguard_aead)
        .context("--wireguard-aead ipsec-mb: intel-ipsec-mb cannot be used")?;
    match why_not_faster {
        Some(why) => {
            tracing::info!(aead = %aead.describe(), why = %why, "wireguard transport AEAD")
        }
        None => tracing::info!(aead = %aead.describe(), "wireguard transport AEAD"),
    }
    Ok(aead)
}

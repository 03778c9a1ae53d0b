//! The udp data path's view of the peers: which public IP owns an inner destination and
//! which subnets a sending public IP may use as inner sources. The control plane builds a
//! new immutable table on every change and publishes it; data-path threads pick it up with
//! one atomic load per batch, so the packet path never takes a lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;

/// A hasher for u32 keys (addresses): one multiply instead of SipHash. Keys come from etcd
/// (the control plane), not from packets, so there is nothing to flood.
#[derive(Default)]
pub struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16;
    }
}

type U32Map<V> = HashMap<u32, V, BuildHasherDefault<U32Hasher>>;

/// One immutable snapshot of the peers.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// The overlay network (inner destinations outside it are not ours to carry).
    pub network: Option<Ipv4Net>,
    /// This node's subnet.
    pub local: Option<Ipv4Net>,
    /// Peer subnet (network address, per prefix length) → public IP.
    by_subnet: U32Map<Ipv4Addr>,
    /// The distinct subnet prefix lengths, longest first (normally exactly one).
    prefix_lens: Vec<u8>,
    /// Public IP → the subnets it leases.
    by_public: U32Map<Vec<Ipv4Net>>,
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl PeerTable {
    /// A table for `network` with this node's subnet `local` and `peers` (subnet → public IP).
    /// A peer claiming the local subnet is ignored.
    pub fn new(
        network: Ipv4Net,
        local: Option<Ipv4Net>,
        peers: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>,
    ) -> PeerTable {
        let mut t = PeerTable {
            network: Some(network),
            local,
            ..PeerTable::default()
        };
        for (subnet, public) in peers {
            if Some(subnet) == local {
                continue;
            }
            let subnet = subnet.trunc();
            t.by_subnet.insert(u32::from(subnet.network()), public);
            if !t.prefix_lens.contains(&subnet.prefix_len()) {
                t.prefix_lens.push(subnet.prefix_len());
            }
            t.by_public
                .entry(u32::from(public))
                .or_default()
                .push(subnet);
        }
        t.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        t
    }

    /// The public IP of the peer whose subnet holds `dst`.
    pub fn peer_for(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let d = u32::from(dst);
        self.prefix_lens
            .iter()
            .find_map(|&l| self.by_subnet.get(&(d & mask(l))).copied())
    }

    /// The subnets `public` holds a lease for (empty: not a peer).
    pub fn subnets_of(&self, public: Ipv4Addr) -> &[Ipv4Net] {
        self.by_public
            .get(&u32::from(public))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether `dst` is inside this node's subnet.
    pub fn is_local(&self, dst: Ipv4Addr) -> bool {
        self.local.is_some_and(|l| l.contains(&dst))
    }

    /// Whether `dst` is inside the overlay network.
    pub fn in_network(&self, dst: Ipv4Addr) -> bool {
        self.network.is_some_and(|n| n.contains(&dst))
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_subnet.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_subnet.is_empty()
    }
}

/// Where the control plane publishes tables.
#[derive(Debug, Default)]
pub struct TableCell {
    generation: AtomicU64,
    current: Mutex<Arc<PeerTable>>,
}

impl TableCell {
    pub fn new(table: PeerTable) -> Arc<TableCell> {
        Arc::new(TableCell {
            generation: AtomicU64::new(1),
            current: Mutex::new(Arc::new(table)),
        })
    }

    /// Replaces the table; readers see it at their next batch.
    pub fn publish(&self, table: PeerTable) {
        if let Ok(mut cur) = self.current.lock() {
            *cur = Arc::new(table);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// The current table (control-plane side).
    pub fn load(&self) -> Arc<PeerTable> {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// A reader for one data-path thread.
    pub fn reader(self: &Arc<TableCell>) -> TableReader {
        TableReader {
            cell: self.clone(),
            generation: 0,
            table: Arc::new(PeerTable::default()),
        }
    }
}

/// A data-path thread's cached table: refreshed only when the generation moved, which is one
/// atomic load per batch in the steady state.
pub struct TableReader {
    cell: Arc<TableCell>,
    generation: u64,
    table: Arc<PeerTable>,
}

impl TableReader {
    pub fn get(&mut self) -> &PeerTable {
        let g = self.cell.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.table = self.cell.load();
            self.generation = g;
        }
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn lookups_by_destination_and_by_sender() {
        let t = PeerTable::new(
            net("10.5.0.0/16"),
            Some(net("10.5.1.0/24")),
            [
                (net("10.5.1.0/24"), Ipv4Addr::new(172, 31, 0, 11)),
                (net("10.5.2.0/24"), Ipv4Addr::new(172, 31, 0, 12)),
                (net("10.5.3.0/24"), Ipv4Addr::new(172, 31, 0, 13)),
                (net("10.5.128.0/20"), Ipv4Addr::new(172, 31, 0, 14)),
            ],
        );
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.peer_for("10.5.2.9".parse().unwrap()),
            Some(Ipv4Addr::new(172, 31, 0, 12))
        );
        assert_eq!(
            t.peer_for("10.5.140.1".parse().unwrap()),
            Some(Ipv4Addr::new(172, 31, 0, 14))
        );
        assert_eq!(
            t.peer_for("10.5.1.5".parse().unwrap()),
            None,
            "local is no peer"
        );
        assert_eq!(t.peer_for("10.5.9.5".parse().unwrap()), None);
        assert_eq!(
            t.subnets_of(Ipv4Addr::new(172, 31, 0, 13)),
            &[net("10.5.3.0/24")]
        );
        assert!(t.subnets_of(Ipv4Addr::new(172, 31, 0, 11)).is_empty());
        assert!(t.is_local("10.5.1.200".parse().unwrap()));
        assert!(!t.in_network("10.6.0.1".parse().unwrap()));
    }

    #[test]
    fn readers_see_a_published_table() {
        let cell = TableCell::new(PeerTable::default());
        let mut r = cell.reader();
        assert!(r.get().is_empty());
        cell.publish(PeerTable::new(
            net("10.5.0.0/16"),
            None,
            [(net("10.5.2.0/24"), Ipv4Addr::new(1, 2, 3, 4))],
        ));
        assert_eq!(r.get().len(), 1);
    }
}

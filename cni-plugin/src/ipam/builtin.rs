//! The built-in allocator: one range per address family of the subnet file (IPv4 first, as
//! Flannel's own CNI plugin hands host-local its ranges), the subnet's first address the
//! gateway; allocation continues round-robin after the last reserved address of the range
//! (`last_reserved_ip.<range index>`) so a released IP is not handed out again at once.

use std::net::IpAddr;

use ipnet::IpNet;

use super::store::{Store, StoreLock};
use crate::error::{CniError, CniResult, INTERNAL, INVALID_CONFIG};

/// An allocation range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub gateway: IpAddr,
    /// The range's position in the range list: names its round-robin marker.
    pub index: usize,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Range {
    fn is_v4(&self) -> bool {
        self.subnet.addr().is_ipv4()
    }

    fn addr_at(&self, v: u128) -> IpAddr {
        if self.is_v4() {
            IpAddr::from((v as u32).to_be_bytes())
        } else {
            IpAddr::from(v.to_be_bytes())
        }
    }

    /// The first address after the network address.
    fn first(&self) -> u128 {
        to_u128(self.subnet.network()) + 1
    }

    /// The last address, but the broadcast address in IPv4 (as host-local).
    fn last(&self) -> u128 {
        let end = to_u128(self.subnet.broadcast());
        if self.is_v4() { end - 1 } else { end }
    }

    /// Whether `ip` may be handed to a container.
    pub fn usable(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.is_v4() {
            return false;
        }
        let v = to_u128(ip);
        v >= self.first() && v <= self.last() && ip != self.gateway
    }

    /// Reserves an address in this range: `requested`, or the next free one after the
    /// range's round-robin marker.
    fn allocate_one(
        &self,
        store: &Store,
        lock: &StoreLock,
        id: &str,
        ifname: &str,
        requested: Option<IpAddr>,
    ) -> CniResult<IpAddr> {
        if let Some(ip) = requested {
            if !self.usable(ip) {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    format!(
                        "requested IP {ip} is not usable in range {} (gateway {})",
                        self.subnet, self.gateway
                    ),
                ));
            }
            if !store.reserve(lock, ip, id, ifname)? {
                return Err(CniError::new(
                    INTERNAL,
                    format!(
                        "requested IP {ip} is already allocated in {}",
                        store.dir().display()
                    ),
                ));
            }
            return Ok(ip);
        }
        let (first, last) = (self.first(), self.last());
        if first > last {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!("range {} has no usable addresses", self.subnet),
            ));
        }
        let size = last - first + 1;
        // Start right after the last reservation (round robin), or at the beginning.
        let start = match store.last_reserved(lock, self.index) {
            Some(ip) if ip.is_ipv4() == self.is_v4() && (first..=last).contains(&to_u128(ip)) => {
                to_u128(ip) - first + 1
            }
            _ => 0,
        };
        let mut step: u128 = 0;
        while step < size {
            let ip = self.addr_at(first + (start + step) % size);
            step += 1;
            if ip == self.gateway {
                continue;
            }
            if store.reserve(lock, ip, id, ifname)? {
                store.set_last_reserved(lock, self.index, ip)?;
                return Ok(ip);
            }
        }
        Err(CniError::new(
            INTERNAL,
            format!(
                "no IP addresses available in range {} ({})",
                self.subnet,
                store.dir().display()
            ),
        ))
    }
}

/// Allocates one address per range for (`id`, `ifname`), in range order. An attachment that
/// already holds one is an error, never a second address. `requested` holds at most one
/// address per family; each must lie in the range of its family. Either every range gets
/// its address or none keeps one.
pub fn allocate(
    store: &Store,
    lock: &StoreLock,
    ranges: &[Range],
    id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> CniResult<Vec<IpAddr>> {
    let existing = store.find(lock, id, ifname)?;
    if !existing.is_empty() {
        let held: Vec<String> = existing.iter().map(IpAddr::to_string).collect();
        return Err(CniError::new(
            INTERNAL,
            format!(
                "duplicate allocation is not allowed: container {id} interface {ifname} already has {} in {}",
                held.join(", "),
                store.dir().display()
            ),
        ));
    }
    if let Some(ip) = requested
        .iter()
        .find(|ip| !ranges.iter().any(|r| r.is_v4() == ip.is_ipv4()))
    {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(CniError::new(
            INVALID_CONFIG,
            format!("requested IP {ip} cannot be given: the network has no {family} range"),
        ));
    }
    let mut got = Vec::with_capacity(ranges.len());
    for range in ranges {
        let wanted = requested
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == range.is_v4());
        match range.allocate_one(store, lock, id, ifname, wanted) {
            Ok(ip) => got.push(ip),
            Err(e) => {
                // The attachment held nothing before this call: give back what it got,
                // also a reservation of the failing range itself (made before its marker
                // could not be written).
                if let Err(undo) = store.release(lock, id, ifname) {
                    return Err(e.details(format!("releasing {got:?} failed too: {undo}")));
                }
                return Err(e);
            }
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Range {
        Range {
            subnet: "10.1.0.0/29".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            index: 0,
        }
    }

    fn v6() -> Range {
        Range {
            subnet: "fd00:1::/125".parse().unwrap(),
            gateway: "fd00:1::1".parse().unwrap(),
            index: 1,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_failed_marker_write_gives_the_address_back() {
        // Before: the reservation stayed when the round-robin marker could not be written
        // (the first range's: nothing was "got" yet), and a retried ADD met "duplicate
        // allocation".
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let l = s.lock().unwrap();
        std::fs::create_dir(s.dir().join("last_reserved_ip.0")).unwrap();
        assert!(allocate(&s, &l, &[v4()], "c1", "eth0", &[]).is_err());
        assert!(s.list(&l).unwrap().is_empty(), "nothing left reserved");
    }

    #[test]
    fn round_robin_skips_gateway_and_does_not_reuse_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let l = s.lock().unwrap();
        let a = allocate(&s, &l, &[v4()], "c1", "eth0", &[]).unwrap();
        let b = allocate(&s, &l, &[v4()], "c2", "eth0", &[]).unwrap();
        assert_eq!((a, b), (vec![ip("10.1.0.2")], vec![ip("10.1.0.3")]));
        s.release(&l, "c1", "eth0").unwrap();
        let c = allocate(&s, &l, &[v4()], "c3", "eth0", &[]).unwrap();
        assert_eq!(c, vec![ip("10.1.0.4")], "released .2 is not reused at once");
        // Two attachments of one container.
        let d = allocate(&s, &l, &[v4()], "c3", "eth1", &[]).unwrap();
        assert_ne!(c, d);
        let err = allocate(&s, &l, &[v4()], "c3", "eth1", &[]).unwrap_err();
        assert!(err.msg.contains("duplicate allocation"), "{}", err.msg);
    }

    #[test]
    fn exhaustion_and_requested_ips() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let l = s.lock().unwrap();
        // /29: .1 gateway, .2–.6 usable.
        for i in 0..5 {
            allocate(&s, &l, &[v4()], &format!("c{i}"), "eth0", &[]).unwrap();
        }
        let err = allocate(&s, &l, &[v4()], "c9", "eth0", &[]).unwrap_err();
        assert!(err.msg.contains("no IP addresses available"), "{}", err.msg);
        let tmp2 = tempfile::tempdir().unwrap();
        let s2 = Store::open(tmp2.path()).unwrap();
        let l2 = s2.lock().unwrap();
        let want = ip("10.1.0.5");
        assert_eq!(
            allocate(&s2, &l2, &[v4()], "c1", "eth0", &[want]).unwrap(),
            vec![want]
        );
        assert!(
            allocate(&s2, &l2, &[v4()], "c2", "eth0", &[want])
                .unwrap_err()
                .msg
                .contains("already allocated")
        );
        for bad in ["10.1.0.1", "10.1.0.0", "10.1.0.7", "10.9.0.2"] {
            let err = allocate(&s2, &l2, &[v4()], "c3", "eth0", &[ip(bad)]).unwrap_err();
            assert!(err.msg.contains("not usable"), "{bad}: {}", err.msg);
        }
    }

    #[test]
    fn dual_stack_gets_one_address_per_range_with_its_own_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let l = s.lock().unwrap();
        let both = [v4(), v6()];
        let a = allocate(&s, &l, &both, "c1", "eth0", &[]).unwrap();
        assert_eq!(a, vec![ip("10.1.0.2"), ip("fd00:1::2")]);
        assert_eq!(s.last_reserved(&l, 0), Some(ip("10.1.0.2")));
        assert_eq!(s.last_reserved(&l, 1), Some(ip("fd00:1::2")));
        // IPv6 has no broadcast: the range's last address is usable.
        let b = allocate(&s, &l, &both, "c2", "eth0", &[ip("fd00:1::7")]).unwrap();
        assert_eq!(b, vec![ip("10.1.0.3"), ip("fd00:1::7")]);
        let c = allocate(&s, &l, &both, "c3", "eth0", &[]).unwrap();
        assert_eq!(
            c[1],
            ip("fd00:1::3"),
            "a requested address does not move the marker"
        );
        // A v6 address outside the range: nothing is kept of the v4 one either.
        let err = allocate(&s, &l, &both, "c4", "eth0", &[ip("fd00:2::5")]).unwrap_err();
        assert_eq!(err.code, INVALID_CONFIG);
        assert!(
            err.msg.contains("fd00:2::5") && err.msg.contains("fd00:1::/125"),
            "{}",
            err.msg
        );
        assert!(s.find(&l, "c4", "eth0").unwrap().is_empty());
        // A v6 request on a v4-only network.
        let err = allocate(&s, &l, &[v4()], "c5", "eth0", &[ip("fd00:1::3")]).unwrap_err();
        assert!(err.msg.contains("no IPv6 range"), "{}", err.msg);
        // The v6 range full (/125: ::2–::7 usable): the v4 address is given back.
        for i in 0..3 {
            allocate(&s, &l, &[v6()], &format!("f{i}"), "eth0", &[]).unwrap();
        }
        let err = allocate(&s, &l, &both, "c6", "eth0", &[]).unwrap_err();
        assert!(err.msg.contains("no IP addresses available"), "{}", err.msg);
        assert!(s.find(&l, "c6", "eth0").unwrap().is_empty());
    }
}

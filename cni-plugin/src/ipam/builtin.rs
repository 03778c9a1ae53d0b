//! The built-in allocator: the node's subnet from the subnet file is the range, its first
//! address the gateway; allocation continues round-robin after the last reserved address so
//! a released IP is not handed out again at once.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::store::{Store, StoreLock};
use crate::error::{CniError, CniResult, INTERNAL, INVALID_CONFIG};

/// An allocation range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Range {
    fn first(&self) -> u32 {
        u32::from(self.subnet.network()) + 1
    }
    fn last(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - 1
    }

    /// Whether `ip` may be handed to a container.
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.first() && v <= self.last() && ip != self.gateway
    }
}

/// Allocates an address for (`id`, `ifname`). An attachment that already holds one is an
/// error, never a second address.
pub fn allocate(
    store: &Store,
    lock: &StoreLock,
    range: Range,
    id: &str,
    ifname: &str,
    requested: Option<Ipv4Addr>,
) -> CniResult<Ipv4Addr> {
    if let Some(existing) = store.find(lock, id, ifname)? {
        return Err(CniError::new(
            INTERNAL,
            format!(
                "duplicate allocation is not allowed: container {id} interface {ifname} already has {existing} in {}",
                store.dir().display()
            ),
        ));
    }
    if let Some(ip) = requested {
        if !range.usable(ip) {
            return Err(CniError::new(
                INVALID_CONFIG,
                format!(
                    "requested IP {ip} is not usable in range {} (gateway {})",
                    range.subnet, range.gateway
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
    let (first, last) = (range.first(), range.last());
    if first > last {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!("range {} has no usable addresses", range.subnet),
        ));
    }
    let size = last - first + 1;
    // Start right after the last reservation (round robin), or at the beginning.
    let start = match store.last_reserved(lock) {
        Some(ip) if (first..=last).contains(&u32::from(ip)) => u32::from(ip) - first + 1,
        _ => 0,
    };
    for step in 0..size {
        let ip = Ipv4Addr::from(first + (start + step) % size);
        if ip == range.gateway {
            continue;
        }
        if store.reserve(lock, ip, id, ifname)? {
            store.set_last_reserved(lock, ip)?;
            return Ok(ip);
        }
    }
    Err(CniError::new(
        INTERNAL,
        format!(
            "no IP addresses available in range {} ({})",
            range.subnet,
            store.dir().display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Range {
        Range {
            subnet: "10.1.0.0/29".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 1, 0, 1),
        }
    }

    #[test]
    fn round_robin_skips_gateway_and_does_not_reuse_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let l = s.lock().unwrap();
        let a = allocate(&s, &l, range(), "c1", "eth0", None).unwrap();
        let b = allocate(&s, &l, range(), "c2", "eth0", None).unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 0, 3))
        );
        s.release(&l, "c1", "eth0").unwrap();
        let c = allocate(&s, &l, range(), "c3", "eth0", None).unwrap();
        assert_eq!(
            c,
            Ipv4Addr::new(10, 1, 0, 4),
            "released .2 is not reused at once"
        );
        // Two attachments of one container.
        let d = allocate(&s, &l, range(), "c3", "eth1", None).unwrap();
        assert_ne!(c, d);
        let err = allocate(&s, &l, range(), "c3", "eth1", None).unwrap_err();
        assert!(err.msg.contains("duplicate allocation"), "{}", err.msg);
    }

    #[test]
    fn exhaustion_and_requested_ips() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let l = s.lock().unwrap();
        // /29: .1 gateway, .2–.6 usable.
        for i in 0..5 {
            allocate(&s, &l, range(), &format!("c{i}"), "eth0", None).unwrap();
        }
        let err = allocate(&s, &l, range(), "c9", "eth0", None).unwrap_err();
        assert!(err.msg.contains("no IP addresses available"), "{}", err.msg);
        let tmp2 = tempfile::tempdir().unwrap();
        let s2 = Store::open(tmp2.path()).unwrap();
        let l2 = s2.lock().unwrap();
        let want = Ipv4Addr::new(10, 1, 0, 5);
        assert_eq!(
            allocate(&s2, &l2, range(), "c1", "eth0", Some(want)).unwrap(),
            want
        );
        assert!(
            allocate(&s2, &l2, range(), "c2", "eth0", Some(want))
                .unwrap_err()
                .msg
                .contains("already allocated")
        );
        for bad in ["10.1.0.1", "10.1.0.0", "10.1.0.7", "10.9.0.2"] {
            let err =
                allocate(&s2, &l2, range(), "c3", "eth0", Some(bad.parse().unwrap())).unwrap_err();
            assert!(err.msg.contains("not usable"), "{bad}: {}", err.msg);
        }
    }
}

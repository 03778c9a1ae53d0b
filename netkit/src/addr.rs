//! Interface addresses: ensure (add, tolerate "exists"), replace, delete, list, flush.
//!
//! IPv6 addresses are added with `nodad`: twill's IPAM and leases already make them unique,
//! and duplicate address detection would leave a new address tentative (unusable) for about
//! a second after it is added — a container must be reachable as soon as ADD returns.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};

use crate::error::Result;
use crate::netlink::{Netlink, collect_dump, has_errno};

fn parse_address(msg: &AddressMessage) -> Option<IpNet> {
    // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
    // point-to-point links); for IPv6 only IFA_ADDRESS is set.
    let mut address = None;
    let mut local = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip: IpAddr = local.or(address)?;
    IpNet::new(ip, msg.header.prefix_len).ok()
}

/// Marks an IPv6 address `nodad` (see the module comment); IPv4 has no DAD.
fn without_dad(msg: &mut AddressMessage, addr: IpNet) {
    if addr.addr().is_ipv6() {
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
}

impl Netlink {
    async fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>> {
        let msgs = collect_dump(
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute(),
        )
        .await
        .map_err(|e| self.err("listing addresses of", format!("link #{index}"), e))?;
        // The kernel ignores the index filter without strict checking: filter here too.
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index)
            .collect())
    }

    /// The addresses on link `index`.
    pub async fn list_addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        Ok(self
            .address_messages(index)
            .await?
            .iter()
            .filter_map(parse_address)
            .collect())
    }

    /// Adds `addr` to link `index`; an identical existing address is fine. The same IPv6
    /// address with another prefix length is an EEXIST error naming the one present.
    pub async fn ensure_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        without_dad(req.message_mut(), addr);
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if has_errno(&e, libc::EEXIST) => {
                // IPv6 keys an address by the address alone: EEXIST also comes back when it
                // is there with another prefix length, which routes a different subnet.
                let present = self.list_addresses(index).await?;
                if present.contains(&addr) {
                    return Ok(());
                }
                let held: Vec<String> = present
                    .iter()
                    .filter(|p| p.addr() == addr.addr())
                    .map(|p| p.to_string())
                    .collect();
                Err(self.err(
                    "adding address",
                    format!("{addr} to link #{index} (present as {})", held.join(", ")),
                    e,
                ))
            }
            Err(e) => Err(self.err("adding address", format!("{addr} to link #{index}"), e)),
        }
    }

    /// Adds or replaces `addr` on link `index` (NLM_F_REPLACE).
    pub async fn replace_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .replace();
        without_dad(req.message_mut(), addr);
        req.execute()
            .await
            .map_err(|e| self.err("replacing address", format!("{addr} on link #{index}"), e))
    }

    /// Removes `addr` from link `index`; a missing address is fine.
    pub async fn delete_address(&self, index: u32, addr: IpNet) -> Result<()> {
        for msg in self.address_messages(index).await? {
            if parse_address(&msg) == Some(addr) {
                match self.handle.address().del(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if has_errno(&e, libc::EADDRNOTAVAIL) => {}
                    Err(e) => {
                        return Err(self.err(
                            "deleting address",
                            format!("{addr} from link #{index}"),
                            e,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every address from link `index`.
    pub async fn flush_addresses(&self, index: u32) -> Result<()> {
        for msg in self.address_messages(index).await? {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if has_errno(&e, libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(self.err("flushing addresses of", format!("link #{index}"), e));
                }
            }
        }
        Ok(())
    }
}

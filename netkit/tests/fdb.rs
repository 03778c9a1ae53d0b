//! FDB entries on a vxlan device in a namespace of the test's own.

mod common;

use common::{TestNs, root_or_skip};
use twill_netkit::{FdbEntry, FdbMode, VxlanSpec};

#[test]
fn a_dynamic_fdb_entry_is_written_and_read_back_as_not_permanent() {
    if !root_or_skip("a_dynamic_fdb_entry_is_written_and_read_back_as_not_permanent") {
        return;
    }
    let t = TestNs::new("fdbdyn");
    let dst = "192.0.2.7".parse().expect("test address");
    let (added, listed) =
        t.ns.run(|nl| async move {
            let vx = nl.ensure_vxlan(&VxlanSpec::new("vx0", 42)).await?;
            let entry = FdbEntry {
                ifindex: vx.index,
                mac: [0x02, 0, 0, 0, 0, 0x07],
                dst: Some(dst),
                permanent: false,
            };
            let added = nl.add_fdb(&entry, FdbMode::Replace).await;
            let listed = nl.list_fdb(vx.index).await?;
            Ok::<_, twill_netkit::Error>((added.map(|()| entry), listed))
        })
        .expect("creating the vxlan device");
    let entry = added.expect("adding a non-permanent fdb entry");
    assert_eq!(listed, vec![entry]);
}

#[test]
fn deleting_entries_of_a_link_that_is_gone_finds_nothing_to_delete() {
    if !root_or_skip("deleting_entries_of_a_link_that_is_gone_finds_nothing_to_delete") {
        return;
    }
    let t = TestNs::new("fdbgone");
    let ip: std::net::IpAddr = "192.0.2.9".parse().expect("test address");
    let (neigh, fdb) =
        t.ns.run(|nl| async move {
            let vx = nl.ensure_vxlan(&VxlanSpec::new("vx0", 43)).await?;
            let mac = [0x02, 0, 0, 0, 0, 0x09];
            nl.replace_neighbour(&twill_netkit::Neighbour {
                ifindex: vx.index,
                ip,
                mac,
            })
            .await?;
            let entry = FdbEntry {
                ifindex: vx.index,
                mac,
                dst: Some(ip),
                permanent: true,
            };
            nl.add_fdb(&entry, FdbMode::Replace).await?;
            // The peer's entries are being removed while the device goes away (a backend
            // restart): the device took them with it.
            nl.delete_link(vx.index).await?;
            let neigh = nl.delete_neighbour(vx.index, ip).await;
            let fdb = nl.delete_fdb(&entry).await;
            Ok::<_, twill_netkit::Error>((neigh, fdb))
        })
        .expect("setting up the vxlan device");
    assert!(!neigh.expect("deleting the neighbour"));
    assert!(!fdb.expect("deleting the fdb entry"));
}

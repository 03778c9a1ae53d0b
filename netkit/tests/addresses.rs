//! Interface addresses in a namespace of the test's own.

mod common;

use common::{TestNs, root_or_skip};
use ipnet::IpNet;

fn net(s: &str) -> IpNet {
    s.parse().expect("test address")
}

#[test]
fn ensure_address_refuses_an_ipv6_address_present_with_another_prefix() {
    if !root_or_skip("ensure_address_refuses_an_ipv6_address_present_with_another_prefix") {
        return;
    }
    let a = TestNs::new("addr6a");
    let b = TestNs::new("addr6b");
    let peer_ns = &b.ns;
    let (second, again, listed) =
        a.ns.run(|nl| async move {
            let v = nl.create_veth("v0", "p0", peer_ns, None).await?;
            nl.ensure_address(v.index, net("2001:db8::1/128")).await?;
            let second = nl.ensure_address(v.index, net("2001:db8::1/64")).await;
            let again = nl.ensure_address(v.index, net("2001:db8::1/128")).await;
            let listed = nl.list_addresses(v.index).await?;
            Ok::<_, twill_netkit::Error>((second, again, listed))
        })
        .expect("setting up the link");
    let err = second.expect_err("a /64 was reported present while the link holds a /128");
    assert!(err.is_exists(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("2001:db8::1/64") && msg.contains("2001:db8::1/128"),
        "{msg}"
    );
    again.expect("the identical address is fine");
    assert!(listed.contains(&net("2001:db8::1/128")), "{listed:?}");
}

//! netkit: route look-ups (`ip route get`).

use std::net::Ipv4Addr;

use twill_netkit::{Error, Netlink, Route};
use twill_tests::{NsScope, preconditions};

#[test]
fn lookup_route_finds_the_gateway_or_nothing() {
    if !preconditions("lookup_route_finds_the_gateway_or_nothing", &[]) {
        return;
    }
    let scope = NsScope::new("lku");
    let ns = scope.create("a");
    let (hit, miss) = ns
        .run(|nl: Netlink| async move {
            let br = nl.ensure_bridge("d0", None).await?;
            nl.set_up(br.index).await?;
            nl.ensure_address(br.index, "172.16.0.5/16".parse().unwrap())
                .await?;
            nl.replace_route(
                &Route::new("10.1.2.0/24".parse::<twill_netkit::ipnet::IpNet>().unwrap())
                    .via(Ipv4Addr::new(172, 16, 0, 9))
                    .dev(br.index),
            )
            .await?;
            Ok::<_, Error>((
                nl.lookup_route(Ipv4Addr::new(10, 1, 2, 7)).await?,
                nl.lookup_route(Ipv4Addr::new(10, 9, 9, 9)).await?,
            ))
        })
        .unwrap();
    assert_eq!(
        hit.and_then(|r| r.gateway),
        Some(Ipv4Addr::new(172, 16, 0, 9).into())
    );
    assert!(miss.is_none(), "{miss:?}");
}

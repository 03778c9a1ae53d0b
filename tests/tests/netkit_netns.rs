//! netkit: namespaces, running code inside them, sysctl.

use twill_netkit::{Error, Netns, sysctl};
use twill_tests::{NsScope, ip_json, netns_exists, preconditions, run};

#[test]
fn create_open_list_delete() {
    if !preconditions("create_open_list_delete", &["ip"]) {
        return;
    }
    let scope = NsScope::new("ns1");
    let name = scope.name("a");
    let ns = Netns::create(&name).unwrap();
    assert_eq!(ns.label(), name);
    assert!(netns_exists(&name));
    assert!(Netns::list().unwrap().contains(&name));
    // `ip netns` sees it in the same layout.
    assert!(run("ip", &["netns", "list"]).contains(&name));

    // Opening by name, by path and by a PID inside gives the same namespace.
    let again = Netns::open(&name).unwrap();
    assert_eq!(again.inode().unwrap(), ns.inode().unwrap());
    let by_path = Netns::open_path(ns.path()).unwrap();
    assert_eq!(by_path.inode().unwrap(), ns.inode().unwrap());
    assert_ne!(
        ns.inode().unwrap(),
        Netns::current().unwrap().inode().unwrap()
    );
    let me = Netns::open_pid(std::process::id()).unwrap();
    assert_eq!(
        me.inode().unwrap(),
        Netns::current().unwrap().inode().unwrap()
    );

    // Creating it twice is an error that names it.
    let err = Netns::create(&name).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.to_string().contains(&name), "{err}");

    Netns::delete(&name).unwrap();
    assert!(!netns_exists(&name));
    // Deleting again is fine.
    Netns::delete(&name).unwrap();
}

#[test]
fn missing_and_invalid_namespaces_give_clear_errors() {
    if !preconditions("missing_and_invalid_namespaces_give_clear_errors", &[]) {
        return;
    }
    let err = Netns::open("twt-does-not-exist").unwrap_err();
    assert!(err.is_not_found());
    let msg = err.to_string();
    assert!(msg.contains("/var/run/netns/twt-does-not-exist"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");

    for bad in ["", "..", "a/b", "x y", "../etc"] {
        let err = Netns::create(bad).unwrap_err().to_string();
        assert!(
            err.contains("invalid network namespace name"),
            "{bad:?}: {err}"
        );
    }
    let err = Netns::open_pid(u32::MAX).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("/proc/{}/ns/net", u32::MAX))
    );
}

#[test]
fn enter_runs_inside_and_sysctl_is_per_namespace() {
    if !preconditions("enter_runs_inside_and_sysctl_is_per_namespace", &["ip"]) {
        return;
    }
    let scope = NsScope::new("ns2");
    let ns = scope.create("a");
    let inode = ns.inode().unwrap();
    let seen = ns
        .enter(|| Netns::current().unwrap().inode().unwrap())
        .unwrap();
    assert_eq!(seen, inode);
    // The caller's thread did not move.
    assert_ne!(Netns::current().unwrap().inode().unwrap(), inode);

    let root_forward = sysctl::read("net.ipv4.ip_forward").unwrap();
    ns.enter(|| {
        assert_eq!(sysctl::read("net.ipv4.ip_forward").unwrap(), "0");
        assert!(sysctl::ensure("net.ipv4.ip_forward", "1").unwrap());
        assert!(
            !sysctl::ensure("net.ipv4.ip_forward", "1").unwrap(),
            "second ensure writes nothing"
        );
        sysctl::write("net.ipv4.conf.all.rp_filter", "0").unwrap();
    })
    .unwrap();
    assert_eq!(
        run(
            "ip",
            &[
                "netns",
                "exec",
                &scope.name("a"),
                "cat",
                "/proc/sys/net/ipv4/ip_forward"
            ]
        )
        .trim(),
        "1"
    );
    assert_eq!(
        sysctl::read("net.ipv4.ip_forward").unwrap(),
        root_forward,
        "root namespace untouched"
    );

    let err = sysctl::read("net/../../etc/passwd")
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid sysctl key"), "{err}");
    let err = ns
        .enter(|| sysctl::read("net.ipv4.no_such_key"))
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("net.ipv4.no_such_key"), "{err}");

    // The namespace really is empty but for lo.
    let links = ip_json(&scope.name("a"), &["link", "show"]);
    assert_eq!(links.as_array().unwrap().len(), 1);
}

#[test]
fn run_gives_a_netlink_connection_inside_the_namespace() {
    if !preconditions("run_gives_a_netlink_connection_inside_the_namespace", &[]) {
        return;
    }
    let scope = NsScope::new("ns3");
    let ns = scope.create("a");
    let names = ns
        .run(|nl| async move {
            Ok::<_, Error>(
                nl.list_links()
                    .await?
                    .into_iter()
                    .map(|l| l.name)
                    .collect::<Vec<_>>(),
            )
        })
        .unwrap();
    assert_eq!(names, vec!["lo".to_string()]);
}

/// A caller's own error type comes back from `run` as the closure returned it; netkit's
/// errors convert into it.
#[test]
fn run_returns_the_callers_error_type_intact() {
    if !preconditions("run_returns_the_callers_error_type_intact", &[]) {
        return;
    }
    #[derive(Debug, PartialEq)]
    enum Coded {
        Code(u32),
        Netkit(String),
    }
    impl From<Error> for Coded {
        fn from(e: Error) -> Self {
            Coded::Netkit(e.to_string())
        }
    }
    let scope = NsScope::new("ns4");
    let ns = scope.create("a");
    let err = ns
        .run(|nl| async move {
            nl.require_link("lo").await?;
            Err::<(), _>(Coded::Code(7))
        })
        .unwrap_err();
    assert_eq!(err, Coded::Code(7));
    let err = ns
        .run(|nl| async move {
            nl.require_link("nope0").await?;
            Ok::<_, Coded>(())
        })
        .unwrap_err();
    assert!(
        matches!(&err, Coded::Netkit(m) if m.contains("nope0")),
        "{err:?}"
    );
}

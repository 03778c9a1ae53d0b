//! twilld's first minute, wrong on purpose: every local mistake is said at once, as the first
//! line of stderr, with exit code 1, before etcd is contacted (the endpoint here never
//! answers). Each run happens in a namespace of the test's own.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twill_tests::{NsScope, preconditions};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

/// Runs twilld in `ns` with `args`; its exit code and first stderr line. Fails if it is
/// still running after 10 s (it would be waiting for etcd).
fn twilld(ns: &twill_netkit::Netns, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = dir.path().join("subnet.env");
    let mut c = Command::new(TWILLD);
    if !args.contains(&"--subnet-file") {
        c.arg("--subnet-file").arg(&subnet_file);
    }
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    ns.prepare_command(&mut c).unwrap();
    let mut child = c.spawn().expect("starting twilld");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "twilld {args:?} still ran after 10s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().next().unwrap_or("").to_string(),
    )
}

/// Starts twilld in `ns` on `lo` against an etcd that never answers, so it stays waiting.
fn waiting_twilld(
    ns: &twill_netkit::Netns,
    dir: &std::path::Path,
    extra: &[&str],
    stderr: Stdio,
) -> std::process::Child {
    let mut c = Command::new(TWILLD);
    c.arg("--subnet-file")
        .arg(dir.join("subnet.env"))
        .args(["--etcd-endpoints", "http://127.0.0.1:1", "--iface", "lo"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr);
    ns.prepare_command(&mut c).unwrap();
    c.spawn().expect("starting twilld")
}

#[test]
fn local_mistakes_are_fatal_and_said_first() {
    if !preconditions("local_mistakes_are_fatal_and_said_first", &[]) {
        return;
    }
    let scope = NsScope::new("se");
    let ns = scope.create("h");
    let dead = "http://127.0.0.1:1";
    let cases: &[(&[&str], &str)] = &[
        (
            &["--etcd-endpoints", dead, "--iface", "nonexist"],
            "twilld: none of --iface nonexist exists with an IPv4 or global IPv6 address in this network namespace",
        ),
        (
            &["--etcd-endpoints", "etcd", "--iface", "lo"],
            "twilld: --etcd-endpoints \"etcd\": expected http://HOST:PORT or https://HOST:PORT",
        ),
        // Go's single-dash spelling, as flanneld's packaged units write it.
        (
            &["-etcd-endpoints=etcd", "-iface", "lo", "-ip-masq"],
            "twilld: --etcd-endpoints \"etcd\": expected http://HOST:PORT or https://HOST:PORT",
        ),
        (
            &[
                "--etcd-endpoints",
                "https://127.0.0.1:1",
                "--iface",
                "lo",
                "--etcd-cafile",
                "/nonexistent/ca.crt",
            ],
            "twilld: reading --etcd-cafile /nonexistent/ca.crt: No such file or directory (os error 2)",
        ),
        (
            &[
                "--etcd-endpoints",
                dead,
                "--iface",
                "lo",
                "--etcd-cafile",
                "/nonexistent/ca.crt",
            ],
            "twilld: --etcd-endpoints http://127.0.0.1:1: TLS files are given (--etcd-cafile/--etcd-certfile) but the endpoint is http://; use https://",
        ),
        (
            &[
                "--etcd-endpoints",
                dead,
                "--iface",
                "lo",
                "--subnet-file",
                "/proc/twill-nonexistent/subnet.env",
            ],
            "twilld: creating /proc/twill-nonexistent for --subnet-file /proc/twill-nonexistent/subnet.env: No such file or directory (os error 2)",
        ),
    ];
    for (args, want) in cases {
        let (code, first) = twilld(&ns, args);
        assert_eq!(code, Some(1), "twilld {args:?}: {first}");
        assert_eq!(&first, want, "twilld {args:?}");
    }
}

#[test]
fn a_taken_healthz_port_is_fatal() {
    if !preconditions("a_taken_healthz_port_is_fatal", &[]) {
        return;
    }
    let scope = NsScope::new("se2");
    let ns = scope.create("h");
    let dir = tempfile::tempdir().unwrap();
    // The first twilld holds the port while it waits for etcd.
    let mut first = waiting_twilld(
        &ns,
        dir.path(),
        &["--healthz-ip", "127.0.0.1", "--healthz-port", "10299"],
        Stdio::null(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (code, line) = twilld(
        &ns,
        &[
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--iface",
            "lo",
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            "10299",
        ],
    );
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(code, Some(1), "{line}");
    assert_eq!(
        line,
        "twilld: listening on 127.0.0.1:10299 for /healthz and /metrics: Address already in use (os error 98)"
    );
}

#[test]
fn an_unreachable_etcd_is_waited_for_and_said_in_one_line() {
    if !preconditions(
        "an_unreachable_etcd_is_waited_for_and_said_in_one_line",
        &[],
    ) {
        return;
    }
    let scope = NsScope::new("se1");
    let ns = scope.create("h");
    let dir = tempfile::tempdir().unwrap();
    let child = waiting_twilld(&ns, dir.path(), &[], Stdio::piped());
    std::thread::sleep(Duration::from_secs(3));
    // Still waiting: SIGTERM (by PID) ends it cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "reading the network config: etcd: reading /coreos.com/network/: http://127.0.0.1:1: connection refused; checking every 2s (attempt 1)"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("tonic"),
        "no client-library internals: {stderr}"
    );
}

#[test]
fn iface_regex_picks_by_address_then_name_and_says_when_none_matches() {
    if !preconditions(
        "iface_regex_picks_by_address_then_name_and_says_when_none_matches",
        &["ip"],
    ) {
        return;
    }
    let scope = NsScope::new("se2");
    let ns = scope.create("h");
    let name = scope.name("h");
    for args in [
        &["link", "add", "dm0", "type", "veth", "peer", "name", "dn1"][..],
        &["addr", "add", "10.99.0.5/24", "dev", "dm0"],
        &["link", "set", "dm0", "up"],
    ] {
        let mut full = vec!["-n", name.as_str()];
        full.extend_from_slice(args);
        twill_tests::run("ip", &full);
    }
    let dead = "http://127.0.0.1:1";
    let (code, first) = twilld(
        &ns,
        &["--etcd-endpoints", dead, "--iface-regex", "^nomatch$"],
    );
    assert_eq!(code, Some(1), "{first}");
    assert_eq!(
        first,
        "twilld: no interface with an IPv4 or global IPv6 address matches --iface-regex ^nomatch$ in this network namespace"
    );
    let (code, first) = twilld(&ns, &["--iface-regex", "("]);
    assert_eq!(code, Some(2), "{first}");
    assert!(first.contains("--iface-regex"), "{first}");
    // By address first (10.99.0.5 is dm0's), else by name; lo also has an address.
    for (regex, want) in [
        (r"^10\.99\.", "iface=dm0"),
        ("^dm", "iface=dm0"),
        ("^lo$", "iface=lo"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new(TWILLD);
        c.arg("--subnet-file")
            .arg(dir.path().join("subnet.env"))
            .args(["--etcd-endpoints", dead, "--iface-regex", regex])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        ns.prepare_command(&mut c).unwrap();
        let child = c.spawn().expect("starting twilld");
        std::thread::sleep(Duration::from_millis(1500));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("using underlay interface") && stderr.contains(want),
            "{regex}: {stderr}"
        );
    }
}

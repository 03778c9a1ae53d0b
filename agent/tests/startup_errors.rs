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
    twilld_env(ns, args, &[])
}

/// The test's own environment without twilld's and flanneld's variables, plus `env`.
fn with_env(c: &mut Command, env: &[(&str, &str)]) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if ["TWILLD_", "FLANNELD_", "WIREGUARD_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            c.env_remove(&*k);
        }
    }
    c.envs(env.iter().copied());
}

/// [`twilld`] with the variables `env` set.
fn twilld_env(
    ns: &twill_netkit::Netns,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = dir.path().join("subnet.env");
    let mut c = Command::new(TWILLD);
    if !args.contains(&"--subnet-file") {
        c.arg("--subnet-file").arg(&subnet_file);
    }
    with_env(&mut c, env);
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

/// The stderr of twilld run in `ns` with `args` and `env` for `secs` seconds, then SIGTERM'd
/// (it waits for an etcd that is not there).
fn waiting_stderr(
    ns: &twill_netkit::Netns,
    args: &[&str],
    env: &[(&str, &str)],
    secs: u64,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(TWILLD);
    with_env(&mut c, env);
    if !args.contains(&"--subnet-file") {
        c.arg("--subnet-file").arg(dir.path().join("subnet.env"));
    }
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    ns.prepare_command(&mut c).unwrap();
    let mut child = c.spawn().expect("starting twilld");
    std::thread::sleep(Duration::from_secs(secs));
    let exited = child.try_wait().unwrap();
    if exited.is_none() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        exited.is_none(),
        "twilld {args:?} with {env:?} exited ({exited:?}) instead of waiting for etcd: {stderr}"
    );
    stderr
}

#[test]
fn empty_variables_mean_the_default_as_with_flanneld() {
    if !preconditions("empty_variables_mean_the_default_as_with_flanneld", &[]) {
        return;
    }
    // A Kubernetes ConfigMap key set to "" gives an empty variable: flanneld's flagsFromEnv
    // skips it (`if val != ""`), so the default applies. Before, twilld refused to start
    // (`invalid value '' for '--ip-masq'`) or ran with an empty --etcd-prefix.
    let scope = NsScope::new("se3");
    let ns = scope.create("h");
    let empty: Vec<(&str, &str)> = [
        "FLANNELD_IP_MASQ",
        "FLANNELD_HEALTHZ_PORT",
        "FLANNELD_HEALTHZ_IP",
        "FLANNELD_PUBLIC_IP",
        "FLANNELD_PUBLIC_IPV6",
        "FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
        "FLANNELD_ETCD_CAFILE",
        "FLANNELD_ETCD_CERTFILE",
        "FLANNELD_ETCD_KEYFILE",
        "FLANNELD_ETCD_ENDPOINTS",
        "FLANNELD_ETCD_PREFIX",
        "FLANNELD_IFACE_REGEX",
        "TWILLD_ETCD_CAFILE",
        "TWILLD_ETCD_PREFIX",
        "TWILLD_IP_MASQ",
        "TWILLD_UDP_WORKERS",
        "TWILLD_UDP_OFFLOADS",
        "TWILLD_WIREGUARD_ROAMING",
        "TWILLD_METRICS_PORT",
        "WIREGUARD_KEY_FILE",
    ]
    .iter()
    .map(|k| (*k, ""))
    .collect();
    // No --etcd-endpoints: the default endpoint, which nothing serves in this namespace.
    let stderr = waiting_stderr(&ns, &["--iface", "lo"], &empty, 3);
    assert!(
        stderr.contains(
            "reading the network config: etcd: reading /coreos.com/network/: http://127.0.0.1:2379: connection refused"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("public_ip=127.0.0.1"), "{stderr}");
    // An empty TWILLD_X does not hide FLANNELD_X.
    let stderr = waiting_stderr(
        &ns,
        &["--iface", "lo"],
        &[
            ("TWILLD_ETCD_PREFIX", ""),
            ("FLANNELD_ETCD_PREFIX", "/flannel-net"),
            ("FLANNELD_ETCD_ENDPOINTS", "http://127.0.0.1:1"),
        ],
        3,
    );
    assert!(
        stderr.contains("etcd: reading /flannel-net/: http://127.0.0.1:1: connection refused"),
        "{stderr}"
    );
}

#[test]
fn a_refused_value_from_the_environment_names_its_variable() {
    if !preconditions(
        "a_refused_value_from_the_environment_names_its_variable",
        &[],
    ) {
        return;
    }
    let scope = NsScope::new("se4");
    let ns = scope.create("h");
    let dead = "http://127.0.0.1:1";
    // (arguments, environment, exit code, first line of stderr)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], i32, &'a str);
    let cases: &[Case] = &[
        (
            &[],
            &[("FLANNELD_HEALTHZ_PORT", "abc")],
            2,
            "error: environment variable FLANNELD_HEALTHZ_PORT: invalid value 'abc' for '--healthz-port <HEALTHZ_PORT>': invalid digit found in string; fix it, or unset it or set it empty for the default",
        ),
        (
            &[],
            &[
                ("TWILLD_HEALTHZ_PORT", ""),
                ("FLANNELD_HEALTHZ_PORT", "abc"),
            ],
            2,
            "error: environment variable FLANNELD_HEALTHZ_PORT: invalid value 'abc' for '--healthz-port <HEALTHZ_PORT>': invalid digit found in string; fix it, or unset it or set it empty for the default",
        ),
        (
            &[],
            &[("FLANNELD_IP_MASQ", "yes")],
            2,
            "error: environment variable FLANNELD_IP_MASQ: invalid value 'yes' for '--ip-masq[=<IP_MASQ>]': \"yes\" is not a boolean: use true or false; fix it, or unset it or set it empty for the default",
        ),
        (
            &["status"],
            &[
                ("TWILLD_SUBNET_LEASE_RENEW_MARGIN", "2000"),
                ("TWILLD_METRICS_PORT", "x"),
            ],
            2,
            "error: environment variable TWILLD_METRICS_PORT: invalid value 'x' for '--metrics-port <METRICS_PORT>': invalid digit found in string; fix it, or unset it or set it empty for the default",
        ),
        // From the command line: the flag alone, as before.
        (
            &["--healthz-port", "abc"],
            &[("FLANNELD_HEALTHZ_PORT", "10256")],
            2,
            "error: invalid value 'abc' for '--healthz-port <HEALTHZ_PORT>': invalid digit found in string",
        ),
        // Refused after clap, by twilld's own checks: the variable is named too.
        (
            &["--iface", "lo"],
            &[("FLANNELD_ETCD_ENDPOINTS", "etcd")],
            1,
            "twilld: --etcd-endpoints \"etcd\": expected http://HOST:PORT or https://HOST:PORT (--etcd-endpoints came from the environment variable FLANNELD_ETCD_ENDPOINTS)",
        ),
        (
            &["--etcd-endpoints", dead],
            &[("FLANNELD_IFACE", "nonexist")],
            1,
            "twilld: none of --iface nonexist exists with an IPv4 or global IPv6 address in this network namespace (--iface came from the environment variable FLANNELD_IFACE)",
        ),
    ];
    for (args, env, code, want) in cases {
        let (got, first) = twilld_env(&ns, args, env);
        assert_eq!(got, Some(*code), "twilld {args:?} {env:?}: {first}");
        assert_eq!(&first, want, "twilld {args:?} {env:?}");
    }
}

#[test]
fn a_subnet_file_that_is_not_a_file_is_refused_before_etcd() {
    if !preconditions(
        "a_subnet_file_that_is_not_a_file_is_refused_before_etcd",
        &[],
    ) {
        return;
    }
    // Before: the check probed only the directory, so twilld took a lease in etcd and then
    // failed `renaming into place …: Is a directory` (here: still waiting for etcd after 10s).
    let scope = NsScope::new("se5");
    let ns = scope.create("h");
    let dir = tempfile::tempdir().unwrap();
    let as_dir = dir.path().join("subnet.env");
    std::fs::create_dir(&as_dir).unwrap();
    let fifo = dir.path().join("fifo.env");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A symbolic link is replaced by the file when it is written: not refused.
    let link = dir.path().join("link.env");
    std::os::unix::fs::symlink(dir.path().join("elsewhere.env"), &link).unwrap();
    let dead = "http://127.0.0.1:1";
    let cases = [
        (
            as_dir.clone(),
            format!(
                "twilld: --subnet-file {} is a directory, not a file: remove the directory, or point --subnet-file at a file (in Kubernetes, a hostPath volume of a file that does not exist is created as a directory: mount the directory {} instead, as Flannel's manifest does)",
                as_dir.display(),
                dir.path().display()
            ),
        ),
        (
            fifo.clone(),
            format!(
                "twilld: --subnet-file {} is a FIFO, not a file: remove it, or point --subnet-file at a file",
                fifo.display()
            ),
        ),
    ];
    for (path, want) in &cases {
        let path = path.to_str().unwrap();
        let (code, first) = twilld(
            &ns,
            &[
                "--etcd-endpoints",
                dead,
                "--iface",
                "lo",
                "--subnet-file",
                path,
            ],
        );
        assert_eq!(code, Some(1), "{path}: {first}");
        assert_eq!(&first, want);
    }
    let stderr = waiting_stderr(
        &ns,
        &[
            "--etcd-endpoints",
            dead,
            "--iface",
            "lo",
            "--subnet-file",
            link.to_str().unwrap(),
        ],
        &[],
        2,
    );
    assert!(stderr.contains("connection refused"), "{stderr}");
}

#[test]
fn a_taken_healthz_port_is_fatal() {
    if !preconditions("a_taken_healthz_port_is_fatal", &[]) {
        return;
    }
    // Its own tag: with iface_regex_…'s "se2", each test's sweep deleted the other's namespace
    // when they ran at once.
    let scope = NsScope::new("se6");
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

/// One twilld run: its arguments and the variables set for it.
type Run<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// The "using underlay interface" line of each twilld run in `ns` with its args and
/// environment, all started at once against an etcd that never answers and SIGTERM'd as soon
/// as that line is out (or after 10 s, when the line is the run's stderr so far).
fn underlay_lines(ns: &twill_netkit::Netns, runs: &[Run]) -> Vec<String> {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for (i, (args, env)) in runs.iter().enumerate() {
        let mut c = Command::new(TWILLD);
        with_env(&mut c, env);
        c.arg("--subnet-file")
            .arg(dir.path().join(format!("subnet{i}.env")))
            .args(["--etcd-endpoints", "http://127.0.0.1:1"])
            .args(*args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        ns.prepare_command(&mut c).unwrap();
        let mut child = twill_tests::KillOnDrop(c.spawn().expect("starting twilld"));
        let stderr = child.0.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("using underlay interface") {
                    let _ = tx.send(line);
                    return;
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            let _ = tx.send(seen);
        });
        children.push((child, rx));
    }
    children
        .into_iter()
        .map(|(child, rx)| {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| "no underlay line within 10s".to_string());
            drop(child);
            line
        })
        .collect()
}

#[test]
fn iface_can_reach_picks_the_interface_of_the_route_and_its_source() {
    if !preconditions(
        "iface_can_reach_picks_the_interface_of_the_route_and_its_source",
        &["ip"],
    ) {
        return;
    }
    // Before: --iface-can-reach was refused whatever its value (exit 2).
    let scope = NsScope::new("secr");
    let ns = scope.create("h");
    let name = scope.name("h");
    // Two links, each a veth whose peer stays in the namespace (so both have a carrier), and
    // no default route. Only ul1 has routes to 10.77.0.0/16 and fd77::/64, via gateways on
    // one of its two subnets, so the kernel sends from the address there, not ul1's first.
    for args in [
        &["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"][..],
        &["link", "add", "ul1", "type", "veth", "peer", "name", "ul1p"],
        &["addr", "add", "10.98.0.5/24", "dev", "ul0"],
        &["addr", "add", "fd98::5/64", "dev", "ul0", "nodad"],
        &["addr", "add", "10.99.0.5/24", "dev", "ul1"],
        &["addr", "add", "10.99.1.5/24", "dev", "ul1"],
        &["addr", "add", "fd99::5/64", "dev", "ul1", "nodad"],
        &["addr", "add", "fd99:1::5/64", "dev", "ul1", "nodad"],
        &["link", "set", "ul0p", "up"],
        &["link", "set", "ul1p", "up"],
        &["link", "set", "ul0", "up"],
        &["link", "set", "ul1", "up"],
        &[
            "route",
            "add",
            "10.77.0.0/16",
            "via",
            "10.99.1.1",
            "dev",
            "ul1",
        ],
        // IPv6 lists the newest address first (fd99:1::5): the route's source is the other.
        &[
            "route",
            "add",
            "fd77::/64",
            "via",
            "fd99::1",
            "dev",
            "ul1",
            "src",
            "fd99::5",
        ],
        // A route out of ul1 whose source is ul0's address: the kernel sends from it.
        &[
            "route",
            "add",
            "10.88.0.0/16",
            "dev",
            "ul1",
            "src",
            "10.98.0.5",
        ],
        &[
            "-6",
            "route",
            "add",
            "fd88::/64",
            "dev",
            "ul1",
            "src",
            "fd98::5",
        ],
        &["route", "add", "unreachable", "10.66.0.0/16"],
    ] {
        let mut full = vec!["-n", name.as_str()];
        full.extend_from_slice(args);
        twill_tests::run("ip", &full);
    }
    let none: &[(&str, &str)] = &[];
    let lines = underlay_lines(
        &ns,
        &[
            // The route's interface, and its source as the public IP (not ul1's first).
            (&["--iface-can-reach", "10.77.0.1"], none),
            // A directly connected address: the link of that subnet.
            (&["--iface-can-reach", "10.98.0.9"], none),
            // The source need not be the interface's own address.
            (&["--iface-can-reach", "10.88.0.1"], none),
            // IPv6: the route's source is the public IPv6; the public IPv4 is ul1's first.
            (&["--iface-can-reach", "fd77::1"], none),
            // --public-ip wins over the route's source; the interface stays the route's.
            (
                &[
                    "--iface-can-reach",
                    "10.77.0.1",
                    "--public-ip",
                    "203.0.113.7",
                ],
                none,
            ),
            // flanneld's order: --iface, then --iface-regex, then --iface-can-reach.
            (&["--iface", "ul0", "--iface-can-reach", "10.77.0.1"], none),
            (
                &["--iface-regex", "^ul0$", "--iface-can-reach", "10.77.0.1"],
                none,
            ),
            (
                &["--iface", "nonexist", "--iface-can-reach", "10.77.0.1"],
                none,
            ),
            (
                &[
                    "--iface-regex",
                    "^nomatch$",
                    "--iface-can-reach",
                    "10.77.0.1",
                ],
                none,
            ),
            // From flanneld's variable.
            (&[], &[("FLANNELD_IFACE_CAN_REACH", "10.77.0.1")]),
            // --iface-regex after an --iface that is not there (before: refused).
            (&["--iface", "nonexist", "--iface-regex", "^ul0$"], none),
            // The route's source on another link is bound, as flanneld's IfaceAddr (before:
            // ul1's first address).
            (&["--iface-can-reach", "fd88::1"], none),
            // With --public-ipv6 elsewhere the route's source is still bound (before: the
            // link's first).
            (
                &[
                    "--iface-can-reach",
                    "fd77::1",
                    "--public-ipv6",
                    "2001:db8::7",
                ],
                none,
            ),
            // A --public-ip on the link is bound, before the route's source.
            (
                &["--iface-can-reach", "10.77.0.1", "--public-ip", "10.99.0.5"],
                none,
            ),
        ],
    );
    let want: [&[&str]; 14] = [
        &["iface=ul1", "public_ip=10.99.1.5", "bind_ip=10.99.1.5"],
        &["iface=ul0", "public_ip=10.98.0.5", "bind_ip=10.98.0.5"],
        &["iface=ul1", "public_ip=10.98.0.5", "bind_ip=10.98.0.5"],
        &[
            "iface=ul1",
            "public_ip=10.99.0.5",
            "public_ipv6=Some(fd99::5)",
            "bind_ipv6=Some(fd99::5)",
        ],
        &["iface=ul1", "public_ip=203.0.113.7", "bind_ip=10.99.1.5"],
        &["iface=ul0", "public_ip=10.98.0.5"],
        &["iface=ul0", "public_ip=10.98.0.5"],
        &["iface=ul1", "public_ip=10.99.1.5"],
        &["iface=ul1", "public_ip=10.99.1.5"],
        &["iface=ul1", "public_ip=10.99.1.5"],
        &["iface=ul0", "public_ip=10.98.0.5"],
        &[
            "iface=ul1",
            "public_ipv6=Some(fd98::5)",
            "bind_ipv6=Some(fd98::5)",
        ],
        &[
            "iface=ul1",
            "public_ipv6=Some(2001:db8::7)",
            "bind_ipv6=Some(fd99::5)",
        ],
        &["iface=ul1", "public_ip=10.99.0.5", "bind_ip=10.99.0.5"],
    ];
    assert_eq!(lines.len(), want.len());
    for (i, (line, want)) in lines.iter().zip(want).enumerate() {
        for w in want {
            assert!(line.contains(w), "run {i}: {w} missing in: {line}");
        }
    }
    // With forwarding on the kernel answers the subnet-router anycast address of its own
    // prefixes itself (`anycast fd99:: dev lo`; before: a route out of lo).
    ns.enter(|| twill_netkit::sysctl::ensure("net/ipv6/conf/all/forwarding", "1"))
        .expect("entering the namespace")
        .expect("IPv6 forwarding on");
    // Nothing leads there: exit 1 at once, naming the address and why.
    let dead = "http://127.0.0.1:1";
    for (args, want) in [
        (
            &["--iface-can-reach", "10.55.0.1"][..],
            "twilld: --iface-can-reach 10.55.0.1: the kernel has no route to 10.55.0.1 in this network namespace (`ip route get 10.55.0.1` says the same)",
        ),
        (
            &["--iface-can-reach", "10.66.0.1"],
            "twilld: --iface-can-reach 10.66.0.1: the kernel has an unreachable route to 10.66.0.1 in this network namespace (`ip route get 10.66.0.1` says the same)",
        ),
        (
            &["--iface-can-reach", "10.99.0.5"],
            "twilld: --iface-can-reach 10.99.0.5: 10.99.0.5 is an address of this node, so no interface leads to it: give the address of a peer or gateway",
        ),
        (
            &["--iface-can-reach", "fd99::"],
            "twilld: --iface-can-reach fd99::: fd99:: is an address of this node, so no interface leads to it: give the address of a peer or gateway",
        ),
        (
            &["--iface-can-reach", "fd55::1"],
            "twilld: --iface-can-reach fd55::1: the kernel has no route to fd55::1 in this network namespace (`ip route get fd55::1` says the same)",
        ),
        (
            &["--iface", "nonexist", "--iface-can-reach", "10.55.0.1"],
            "twilld: no underlay interface: none of --iface nonexist exists with an IPv4 or global IPv6 address in this network namespace; --iface-can-reach 10.55.0.1: the kernel has no route to 10.55.0.1 in this network namespace (`ip route get 10.55.0.1` says the same) (tried in that order, as flanneld does)",
        ),
    ] {
        let mut full = vec!["--etcd-endpoints", dead];
        full.extend_from_slice(args);
        let (code, first) = twilld(&ns, &full);
        assert_eq!(code, Some(1), "{args:?}: {first}");
        assert_eq!(first, want, "{args:?}");
    }
    let (code, first) = twilld_env(
        &ns,
        &["--etcd-endpoints", dead],
        &[("FLANNELD_IFACE_CAN_REACH", "10.55.0.1")],
    );
    assert_eq!(code, Some(1), "{first}");
    assert!(
        first.ends_with(
            "(--iface-can-reach came from the environment variable FLANNELD_IFACE_CAN_REACH)"
        ),
        "{first}"
    );
    iface_can_reach_of_ipv6_on_an_ipv4_network(&ns);
}

/// On a network that leases IPv4 only, an IPv6 --iface-can-reach address is refused when it
/// is what chose the interface, and not looked at when --iface chose (flanneld only reads it
/// when nothing else chose; before, twilld refused it whatever chose). Runs against an etcd
/// of the namespace's own, on its 127.0.0.1.
fn iface_can_reach_of_ipv6_on_an_ipv4_network(ns: &twill_netkit::Netns) {
    let etcd =
        twill_testbed::Etcd::start_in(ns, std::net::Ipv4Addr::LOCALHOST, true).expect("etcd");
    etcd.put_network_config(r#"{"Network": "10.50.0.0/16", "Backend": {"Type": "host-gw"}}"#)
        .expect("the network config");
    let endpoint = etcd.endpoint();
    // Refused once the config is read, so after the lines logged before.
    let mut c = Command::new(TWILLD);
    with_env(&mut c, &[]);
    let dir = tempfile::tempdir().unwrap();
    c.arg("--subnet-file")
        .arg(dir.path().join("refused.env"))
        .args([
            "--etcd-endpoints",
            &endpoint,
            "--iface-can-reach",
            "fd77::1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    ns.prepare_command(&mut c).unwrap();
    let mut child = twill_tests::KillOnDrop(c.spawn().expect("starting twilld"));
    let start = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "twilld --iface-can-reach fd77::1 still ran after 20s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let code = child.0.wait().unwrap().code();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut said).unwrap();
    let fatal = said
        .lines()
        .find(|l| l.starts_with("twilld: "))
        .unwrap_or("");
    assert_eq!(code, Some(1), "{said}");
    assert!(
        fatal.starts_with("twilld: --iface-can-reach fd77::1 is an IPv6 address")
            && fatal.contains("IPv4 subnets only"),
        "{said}"
    );
    // --iface chose: twilld leases a subnet.
    let subnet_file = dir.path().join("subnet.env");
    let mut c = Command::new(TWILLD);
    with_env(&mut c, &[]);
    c.arg("--subnet-file")
        .arg(&subnet_file)
        .args(["--etcd-endpoints", &endpoint])
        .args(["--iface", "ul0", "--iface-can-reach", "fd77::1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    ns.prepare_command(&mut c).unwrap();
    let mut child = twill_tests::KillOnDrop(c.spawn().expect("starting twilld"));
    let start = Instant::now();
    while !subnet_file.exists() {
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut said = String::new();
            use std::io::Read;
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut said)
                .unwrap();
            panic!("twilld --iface ul0 --iface-can-reach fd77::1 ended ({status}): {said}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no subnet file within 20s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let env = std::fs::read_to_string(&subnet_file).unwrap();
    assert!(env.contains("FLANNEL_NETWORK=10.50.0.0/16"), "{env}");
}

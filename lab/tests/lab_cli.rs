//! `twill-lab up/down` as a newcomer runs it, with the real binaries of this build.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LAB: &str = env!("CARGO_BIN_EXE_twill-lab");

fn ready() -> bool {
    let dir = Path::new(LAB).parent().unwrap();
    let missing: Vec<&str> = ["twilld", "twill", "twill-run"]
        .into_iter()
        .filter(|b| !dir.join(b).exists())
        .collect();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !nix::unistd::geteuid().is_root()
        || !missing.is_empty()
        || !Path::new("/bin/busybox").exists()
    {
        let why = format!(
            "needs root, /bin/busybox and the binaries {missing:?} (cargo test --workspace builds them)"
        );
        assert!(!ci, "{why}");
        eprintln!("skipping: {why}");
        return false;
    }
    true
}

fn lab(args: &[&str]) -> (bool, String) {
    let out = Command::new(LAB).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `twill-lab up` of a lab with `hosts` × `per_host` containers on `backend`.
fn up(name: &str, hosts: u32, per_host: u32, backend: &str) -> (bool, String) {
    let (hosts, per_host) = (hosts.to_string(), per_host.to_string());
    lab(&[
        "up",
        "--name",
        name,
        "--hosts",
        &hosts,
        "--containers-per-host",
        &per_host,
        "--backend",
        backend,
    ])
}

fn gone(name: &str) {
    let prefix = format!("tl-{name}-");
    assert!(
        !twill_netkit::Netns::list()
            .unwrap()
            .iter()
            .any(|n| n.starts_with(&prefix)),
        "namespaces of {name} left"
    );
    assert!(
        !Path::new("/run/twill-lab").join(name).exists(),
        "state of {name} left"
    );
}

#[test]
fn three_labs_side_by_side_one_per_backend() {
    if !ready() {
        return;
    }
    let _ = lab(&["down", "--name", "tv"]);
    let _ = lab(&["down", "--name", "th"]);
    let _ = lab(&["down", "--name", "tu"]);
    let (ok, out) = up("tv", 3, 2, "vxlan");
    let (ok2, out2) = up("th", 2, 1, "host-gw");
    let (ok3, out3) = up("tu", 2, 1, "udp");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read("/run/twill-lab/tv/state.json").unwrap_or_default())
            .unwrap_or_default();
    let (s_ok, status) = lab(&["status", "--name", "th"]);
    let (e_ok, exec) = lab(&["exec", "--name", "tv", "h1/h1c1", "hostname"]);
    let _ = lab(&["down", "--name", "tv"]);
    let _ = lab(&["down", "--name", "th"]);
    let _ = lab(&["down", "--name", "tu"]);
    assert!(ok, "{out}");
    assert!(ok2, "{out2}");
    assert!(ok3, "{out3}");
    assert_eq!(out3.matches('✔').count(), 2, "{out3}");
    assert_eq!(out.matches('✔').count(), 6, "{out}");
    assert_eq!(out2.matches('✔').count(), 2, "{out2}");
    assert!(s_ok && status.contains("host-gw"), "{status}");
    assert!(e_ok && !exec.trim().is_empty(), "{exec}");
    // etcd's data live in the lab's state directory, which `down` removes even after a
    // killed `up` (in /tmp they were left behind).
    let etcd_dir = state["etcd"][0]["dir"].as_str().unwrap_or_default();
    assert!(etcd_dir.starts_with("/run/twill-lab/tv/"), "{etcd_dir}");
    assert!(!Path::new(etcd_dir).exists(), "left after down: {etcd_dir}");
    for h in state["hosts"].as_array().unwrap() {
        let pid = h["twilld_pid"].as_u64().unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z "),
            "twilld {pid} left running"
        );
    }
    gone("tv");
    gone("th");
    gone("tu");
}

#[test]
fn down_after_a_killed_up_leaves_nothing() {
    if !ready() {
        return;
    }
    let _ = lab(&["down", "--name", "tk"]);
    let mut child = Command::new(LAB)
        .args([
            "up",
            "--name",
            "tk",
            "--hosts",
            "2",
            "--containers-per-host",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the agents run (the state file lists them).
    let _ = twill_testbed::wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string("/run/twill-lab/tk/state.json").is_ok_and(|s| {
            s.matches("twilld_pid\": ").count() >= 2 && !s.contains("twilld_pid\": null")
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let (ok, out) = lab(&["down", "--name", "tk"]);
    assert!(ok, "{out}");
    gone("tk");
    let (ok, out) = lab(&["down", "--name", "tk"]);
    assert!(ok, "down is idempotent: {out}");
}

#[test]
fn down_never_signals_a_recorded_pid_that_is_not_the_labs_any_more() {
    if !ready() {
        return;
    }
    // An agent that died (or that `bench --forwarder` stopped) leaves its PID in the state;
    // another process may hold it when `down` runs.
    let _ = lab(&["down", "--name", "tp"]);
    let mut bystander = Command::new("sleep").arg("100").spawn().unwrap();
    // The state of a lab whose one agent died: its PID now names the bystander.
    let st = serde_json::json!({
        "name": "tp", "backend": "host-gw", "network": "10.244.0.0/16",
        "etcd_endpoint": "http://172.31.0.1:2379",
        "etcd": [{"pid": bystander.id(), "dir": null}],
        "cni_path": "/nonexistent",
        "hosts": [{
            "name": "h1", "netns": "tl-tp-h1", "underlay_ip": "172.31.0.11", "subnet": null,
            "twilld_pid": bystander.id(), "log": "/nonexistent/h1.log",
            "subnet_file": "/nonexistent/subnet.env", "cni_conf_dir": "/nonexistent",
            "run_root": "/nonexistent", "containers": [],
        }],
    });
    std::fs::create_dir_all("/run/twill-lab/tp").unwrap();
    std::fs::write("/run/twill-lab/tp/state.json", st.to_string()).unwrap();
    let (ok, out) = lab(&["down", "--name", "tp"]);
    let alive = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(ok, "{out}");
    gone("tp");
    assert!(alive, "down killed a process outside the lab");
}

/// The PIDs of the twilld and etcd processes lab `name`'s state file lists.
fn lab_pids(name: &str) -> Vec<u64> {
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("/run/twill-lab/{name}/state.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let hosts = state["hosts"].as_array().into_iter().flatten();
    let etcd = state["etcd"].as_array().into_iter().flatten();
    hosts
        .filter_map(|h| h["twilld_pid"].as_u64())
        .chain(etcd.filter_map(|m| m["pid"].as_u64()))
        .collect()
}

fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Runs twill-lab with `args` in a process group of its own, sends one SIGINT once
/// `ready(stderr so far)` holds — to the whole group as a terminal's Ctrl-C does (iperf3,
/// ping and the like die with it), or to twill-lab alone (the step it is in finishes) — and
/// returns its exit code and output.
fn interrupt_when(
    args: &[&str],
    whole_group: bool,
    ready: impl Fn(&str) -> bool,
) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt as _;
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(LAB)
        .args(args)
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(err.path()).unwrap_or_default();
    // Building a lab with debug binaries takes a minute or two here.
    let started = twill_testbed::wait_for(Duration::from_secs(300), || ready(&stderr()));
    let pid = child.id() as i32;
    let target = nix::unistd::Pid::from_raw(if whole_group { -pid } else { pid });
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGINT);
    let ended = twill_testbed::wait_for(Duration::from_secs(90), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let code = child.wait().ok().and_then(|s| s.code());
    assert!(started, "never got ready: {}", stderr());
    assert!(ended, "still running 90 s after SIGINT: {}", stderr());
    (code, stderr())
}

#[test]
fn an_interrupted_bench_or_up_removes_what_it_built() {
    if !ready() {
        return;
    }
    for n in ["tint0", "tintu"] {
        let _ = lab(&["down", "--name", n]);
    }
    // Where a failed bench keeps its labs' logs; a stopped one has nothing to look into.
    let kept = std::path::Path::new("/run/twill-lab/kept-logs/tint0");
    let _ = std::fs::remove_dir_all(kept);
    // A bench is stopped in its first round by a Ctrl-C at the terminal.
    let pids = std::cell::RefCell::new(Vec::new());
    let (code, err) = interrupt_when(
        &[
            "bench",
            "--name",
            "tint",
            "--backends",
            "udp",
            "--seconds",
            "2",
            "--runs",
            "5",
        ],
        true,
        |err| {
            let measuring = err.contains("==> round 1/");
            if measuring {
                *pids.borrow_mut() = lab_pids("tint0");
            }
            measuring
        },
    );
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("twill-lab: interrupted"), "{err}");
    assert!(!err.contains("round 5/"), "it went on measuring: {err}");
    let pids = pids.into_inner();
    assert!(pids.len() >= 3, "the lab's twilld and etcd: {pids:?}");
    assert!(
        pids.iter().all(|&p| !running(p)),
        "processes of the labs left running: {pids:?}"
    );
    gone("tint0");
    let kept_any = kept.exists();
    let _ = std::fs::remove_dir_all(kept);
    assert!(!kept_any, "a stopped bench kept logs in {}", kept.display());

    // An `up` stopped by a SIGTERM-like signal to it alone once its agents run removes its
    // half-built lab itself.
    let pids = std::cell::RefCell::new(Vec::new());
    let (code, err) = interrupt_when(
        &[
            "up",
            "--name",
            "tintu",
            "--hosts",
            "2",
            "--containers-per-host",
            "1",
        ],
        false,
        |_| {
            *pids.borrow_mut() = lab_pids("tintu");
            pids.borrow().len() >= 3
        },
    );
    assert_eq!(code, Some(130), "{err}");
    let pids = pids.into_inner();
    assert!(
        pids.iter().all(|&p| !running(p)),
        "processes of the lab left running: {pids:?}"
    );
    gone("tintu");
}

/// The IDs of the containers in host `host`'s twill-run store of lab `name`.
fn store_ids(name: &str, host: &str) -> Vec<String> {
    let dir = format!("/run/twill-lab/{name}/{host}/run/containers");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What container `id` left outside its lab's namespaces: its named network namespace (with
/// its process in it) and its cgroups.
fn container_leftovers(id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let ns = format!("twr-{}", &id[..12.min(id.len())]);
    if Path::new("/run/netns").join(&ns).exists() {
        left.push(ns);
    }
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for h in std::iter::once(Path::new("/sys/fs/cgroup").to_path_buf()).chain(hierarchies) {
        let cg = h.join("twill").join(id);
        if cg.is_dir() {
            left.push(cg.display().to_string());
        }
    }
    left
}

/// Removes what containers of a failed test left: the processes in their namespaces, the
/// namespaces, their cgroups; then the lab.
struct Leftovers {
    lab: &'static str,
    ids: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for id in &self.ids {
            let ns = format!("twr-{}", &id[..12.min(id.len())]);
            // The container's process, which this test's lab started.
            let pids = twill_testbed::pids_in_netns(&ns);
            for &pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = twill_testbed::wait_for(Duration::from_secs(5), || {
                pids.iter()
                    .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            });
            if Path::new("/run/netns").join(&ns).exists() {
                let _ = twill_netkit::Netns::delete(&ns);
            }
            for cg in container_leftovers(id)
                .iter()
                .filter(|p| p.starts_with('/'))
            {
                let _ = std::fs::remove_dir(cg);
            }
        }
        let _ = lab(&["down", "--name", self.lab]);
    }
}

/// Waits until the container's start ended, either way (its monitor records the PID).
fn started(name: &str, host: &str, id: &str) -> bool {
    twill_testbed::wait_for(Duration::from_secs(30), || {
        let state = format!("/run/twill-lab/{name}/{host}/run/containers/{id}/state.json");
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).unwrap_or_default()).unwrap_or_default();
        st["pid"].is_number() || !Path::new(&state).exists()
    })
}

#[test]
fn a_ctrl_c_or_a_kill_while_a_container_starts_leaves_no_container_behind() {
    if !ready() {
        return;
    }
    let up_args = |name| {
        [
            "up",
            "--name",
            name,
            "--hosts",
            "1",
            "--containers-per-host",
            "2",
        ]
    };
    // A Ctrl-C at the terminal (the whole process group) while `twill-run run` starts the
    // first container: the interrupted `up` removes its lab, that container included.
    let _ = lab(&["down", "--name", "tcs1"]);
    let ids = std::cell::RefCell::new(Vec::new());
    let (code, err) = interrupt_when(&up_args("tcs1"), true, |_| {
        *ids.borrow_mut() = store_ids("tcs1", "h1");
        !ids.borrow().is_empty()
    });
    let guard = Leftovers {
        lab: "tcs1",
        ids: ids.into_inner(),
    };
    assert_eq!(code, Some(130), "{err}");
    assert!(!guard.ids.is_empty(), "no container was being started");
    for id in &guard.ids {
        let left = container_leftovers(id);
        assert!(left.is_empty(), "container {id} left {left:?}: {err}");
    }
    gone("tcs1");
    drop(guard);

    // twill-lab killed while `twill-run run` starts the first container: the container
    // starts anyway, unrecorded, and a later `down` removes it all the same.
    let _ = lab(&["down", "--name", "tcs2"]);
    let mut child = Command::new(LAB)
        .args(up_args("tcs2"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = twill_testbed::wait_for(Duration::from_secs(300), || {
        !store_ids("tcs2", "h1").is_empty()
    });
    let _ = child.kill();
    let _ = child.wait();
    let guard = Leftovers {
        lab: "tcs2",
        ids: store_ids("tcs2", "h1"),
    };
    assert!(
        seen && !guard.ids.is_empty(),
        "no container was being started"
    );
    // `down` is not meant to race a start still under way.
    assert!(guard.ids.iter().all(|id| started("tcs2", "h1", id)));
    let (ok, out) = lab(&["down", "--name", "tcs2"]);
    assert!(ok, "{out}");
    for id in &guard.ids {
        let left = container_leftovers(id);
        assert!(left.is_empty(), "container {id} left {left:?}: {out}");
    }
    gone("tcs2");
}

#[test]
fn bench_smoke_measures_and_writes_markdown_and_svg() {
    if !ready() {
        return;
    }
    if !Path::new("/usr/bin/iperf3").exists() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "CI must install iperf3");
        eprintln!("skipping: needs iperf3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("bench.md");
    let svg = dir.path().join("bench.svg");
    let (ok, out) = lab(&[
        "bench",
        "--backends",
        "tun-relay,udp",
        "--seconds",
        "1",
        "--markdown",
        md.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("same host (bridge)") && out.contains("two hosts, udp"),
        "{out}"
    );
    // The relay really carried traffic between the hosts in place of twilld.
    let relay_gbps: f64 = out
        .lines()
        .find(|l| l.starts_with("two hosts, TUN relay"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|g| g.trim_end_matches("Gb").parse().ok())
        .unwrap_or_else(|| panic!("no TUN relay row: {out}"));
    assert!(relay_gbps > 0.0, "{out}");
    assert!(out.contains("udp / TUN relay: "), "{out}");
    // Every result says which machine it came from.
    assert!(out.contains("\nmachine: ") && out.contains(" CPU"), "{out}");
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(table.contains("| two hosts, udp |"), "{table}");
    assert!(table.contains("\nMachine: "), "{table}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("two hosts, udp"),
        "{chart}"
    );
    gone("bench0");
    gone("bench1");
}

#[test]
fn bench_names_the_paths_it_knows_when_given_another() {
    if !ready() {
        return;
    }
    let (ok, out) = lab(&["bench", "--backends", "vxlan,ipip", "--seconds", "1"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("unknown path \"ipip\": pick from host-gw, vxlan, udp, tun-relay"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
    // Nothing is left to clean up, so no hint says there is; and no lab was touched (a
    // bench running next to it keeps its labs).
    assert!(!out.contains("clean up with"), "{out}");
    assert!(!out.contains("down"), "{out}");
}

#[test]
fn up_without_etcd_says_so_before_building_anything() {
    if !ready() {
        return;
    }
    let _ = lab(&["down", "--name", "te"]);
    let out = Command::new(LAB)
        .args([
            "up",
            "--name",
            "te",
            "--hosts",
            "1",
            "--containers-per-host",
            "0",
        ])
        .env("TWILL_ETCD_BIN", "/nonexistent/etcd")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let left = twill_netkit::Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("tl-te-"))
        .count();
    let _ = lab(&["down", "--name", "te"]);
    assert!(!out.status.success());
    assert!(
        err.contains("etcd (/nonexistent/etcd) is not installed"),
        "{err}"
    );
    assert_eq!(left, 0, "namespaces built before the check: {err}");
}

#[test]
fn bench_refuses_zero_rounds() {
    if !ready() {
        return;
    }
    // Before: `--runs 0` ran one round without a word.
    let out = Command::new(LAB)
        .args(["bench", "--runs", "0", "--name", "tz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be at least 1"));
}

#[test]
fn a_lab_name_with_a_dash_is_refused_so_no_lab_prefixes_another() {
    if !ready() {
        return;
    }
    // `down --name lab` swept every namespace starting with `tl-lab-`, `lab-udp`'s too.
    // `up` last: before the fix it built the lab.
    for cmd in ["status", "down", "up"] {
        let out = Command::new(LAB)
            .args([cmd, "--name", "lab-udp"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no '-'"),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Whether host `h` of lab `name` has a `flannel0` right now.
fn has_flannel0(name: &str, h: usize) -> bool {
    twill_netkit::Netns::open(&format!("tl-{name}-h{h}"))
        .and_then(|ns| ns.run(|nl| async move { nl.link_by_name("flannel0").await }))
        .is_ok_and(|l| l.is_some_and(|l| l.kind.as_deref() == Some("tun")))
}

#[test]
fn tun_relay_takes_over_a_udp_lab_and_goes_away_with_its_devices() {
    use twill_lab::{relay, state::LabState};
    if !ready() {
        return;
    }
    let _ = lab(&["down", "--name", "tr"]);
    let (ok, out) = up("tr", 2, 1, "udp");
    let dir = Path::new("/run/twill-lab/tr");
    let checks = (|| -> Result<(), String> {
        if !ok {
            return Err(out);
        }
        let mut st = LabState::load(dir).map_err(|e| format!("{e:#}"))?;
        let agents: Vec<u32> = st.hosts.iter().filter_map(|h| h.twilld_pid).collect();
        let peer_ip = st.hosts[1].containers[0].ip.clone();
        let r = relay::start(&mut st, dir).map_err(|e| format!("{e:#}"))?;
        // The agents are gone and out of the state file, so `down` never signals their PIDs.
        let saved = LabState::load(dir).map_err(|e| format!("{e:#}"))?;
        if saved.hosts.iter().any(|h| h.twilld_pid.is_some()) {
            return Err(format!("agent PIDs still in the state: {:?}", saved.hosts));
        }
        for pid in agents {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if !stat.is_empty() && !stat.contains(") Z ") {
                return Err(format!("twilld {pid} still running"));
            }
        }
        // The containers reach each other through the relay's devices.
        let (pinged, ping) = lab(&[
            "exec", "--name", "tr", "h1/h1c1", "ping", "-c", "2", "-W", "2", &peer_ip,
        ]);
        if !pinged {
            return Err(format!("ping through the relay: {ping}"));
        }
        if !has_flannel0("tr", 1) || !has_flannel0("tr", 2) {
            return Err("the relay's flannel0 devices are missing".into());
        }
        drop(r);
        let removed = twill_testbed::wait_for(Duration::from_secs(5), || {
            !has_flannel0("tr", 1) && !has_flannel0("tr", 2)
        });
        if !removed {
            return Err("flannel0 left after the relay stopped".into());
        }
        Ok(())
    })();
    let (down_ok, down) = lab(&["down", "--name", "tr"]);
    if let Err(e) = checks {
        panic!("{e}");
    }
    assert!(down_ok, "{down}");
    gone("tr");
}

#[test]
fn up_as_a_user_is_refused_without_a_clean_up_hint() {
    if !ready() {
        return;
    }
    use std::os::unix::process::CommandExt;
    // As nobody: refused before anything is created, so no "clean up with" line.
    let out = Command::new(LAB)
        .args(["up", "--name", "tnr"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "twill-lab: twill-lab needs root (it creates network namespaces)"
    );
    assert!(!Path::new("/run/twill-lab/tnr").exists());
}

/// A short soak (3 hosts, 35 s: every fault kind at least once) runs through, reports, and leaves
/// nothing behind. Whether it met the goal is for the full soak to say (docs/benchmarks.md):
/// this only keeps the machinery working.
#[test]
fn a_short_soak_reports_and_cleans_up() {
    if !ready() {
        return;
    }
    let _ = lab(&["down", "--name", "tsoak"]);
    let md = tempfile::NamedTempFile::new().unwrap();
    let (_, out) = lab(&[
        "soak",
        "--name",
        "tsoak",
        "--hosts",
        "3",
        "--seconds",
        "35",
        "--seed",
        "3",
        "--markdown",
        md.path().to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(md.path()).unwrap();
    assert!(report.contains("**Verdict: goal"), "{out}");
    for kind in ["etcd member kill -9", "twilld kill -9", "container rm -f"] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {kind}")))
            .unwrap_or_else(|| panic!("no row for {kind}: {report}"));
        let injected: usize = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(injected >= 1, "at least one fault of each kind: {row}");
    }
    assert!(
        report.contains("| lease keys deleted in etcd |"),
        "{report}"
    );
    gone("tsoak");
}

#[test]
fn dual_stack_and_ipv6_only_labs_connect_in_each_family() {
    if !ready() {
        return;
    }
    for (name, family, backend) in [("t6d", "dual", "vxlan"), ("t6o", "ipv6", "host-gw")] {
        let _ = lab(&["down", "--name", name]);
        let (ok, out) = lab(&[
            "up",
            "--name",
            name,
            "--hosts",
            "2",
            "--containers-per-host",
            "1",
            "--backend",
            backend,
            "--ip-family",
            family,
        ]);
        let (down_ok, down_out) = lab(&["down", "--name", name]);
        assert!(ok, "{family} lab over {backend}:\n{out}");
        assert!(down_ok, "{down_out}");
        gone(name);
        match family {
            "dual" => {
                assert!(out.contains("IPV6") && out.contains("fd42:244:"), "{out}");
                assert!(out.contains("in both families"), "{out}");
            }
            _ => assert!(out.contains("(IPv6)") && out.contains("fd42:244:"), "{out}"),
        }
    }
}

/// Takes lab `name` down when dropped, also when the test panics.
struct Down(&'static str);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&["down", "--name", self.0]);
    }
}

/// Runs twill-lab with `args` (in a process group of its own); one still running after
/// `secs` gets a SIGINT to it alone (it removes what it built) and is killed 90 s later.
/// Its exit code and output.
fn lab_within(args: &[&str], secs: u64) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt as _;
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(LAB)
        .args(args)
        .process_group(0)
        .stdout(out.reopen().unwrap())
        .stderr(out.reopen().unwrap())
        .spawn()
        .unwrap();
    let ended = |child: &mut std::process::Child, secs| {
        twill_testbed::wait_for(Duration::from_secs(secs), || {
            child.try_wait().ok().flatten().is_some()
        })
    };
    if !ended(&mut child, secs) {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        if !ended(&mut child, 90) {
            let _ = child.kill();
        }
    }
    let code = child.wait().ok().and_then(|s| s.code());
    (
        code,
        std::fs::read_to_string(out.path()).unwrap_or_default(),
    )
}

/// A lab's state file alone, as `down` and the other commands read it: host h1 (with
/// container h1c1) and h2 (with h2c1), whose namespaces do not exist.
fn fake_lab(name: &str) {
    let host = |h: &str, c: &str, ip: &str| {
        serde_json::json!({
            "name": h, "netns": format!("tl-{name}-{h}"), "underlay_ip": ip, "subnet": null,
            "twilld_pid": null, "log": format!("/nonexistent/{h}.log"),
            "subnet_file": "/nonexistent/subnet.env", "cni_conf_dir": "/nonexistent",
            "run_root": "/nonexistent",
            "containers": [{"name": c, "ip": "10.244.9.2", "reachable": true}],
        })
    };
    let st = serde_json::json!({
        "name": name, "backend": "host-gw", "network": "10.244.0.0/16",
        "etcd_endpoint": "http://172.31.0.1:2379", "etcd": [], "cni_path": "/nonexistent",
        "hosts": [host("h1", "h1c1", "172.31.0.11"), host("h2", "h2c1", "172.31.0.12")],
    });
    let dir = Path::new("/run/twill-lab").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state.json"), st.to_string()).unwrap();
}

#[test]
fn bench_refuses_zero_seconds_instead_of_measuring_forever() {
    if !ready() {
        return;
    }
    // Before: iperf3 -t 0 (never ends) in a lab the bench built; stopped here after 30 s.
    let _lab = Down("tbzs0");
    let (code, out) = lab_within(
        &[
            "bench",
            "--name",
            "tbzs",
            "--backends",
            "udp",
            "--seconds",
            "0",
        ],
        30,
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("'--seconds <SECONDS>': must be at least 1"),
        "{out}"
    );
    gone("tbzs0");
}

#[test]
fn soak_refuses_out_of_range_numbers_before_building_anything() {
    if !ready() {
        return;
    }
    // Before: `--minutes 0` and `--seconds 0` built a lab, checked it and tore it down without
    // a fault; `--max-faults 0` soaked ten minutes without one (stopped here after 30 s).
    // `--hosts` and `--lease-ttl` out of range were refused after parsing, with exit code 1.
    let _lab = Down("tsz");
    for (flag, value, want) in [
        (
            "--minutes",
            "0",
            "'--minutes <MINUTES>': must be at least 1",
        ),
        (
            "--seconds",
            "0",
            "'--seconds <SECONDS>': must be at least 1",
        ),
        (
            "--max-faults",
            "0",
            "'--max-faults <MAX_FAULTS>': must be at least 1",
        ),
        ("--hosts", "1", "'--hosts <HOSTS>': must be 2 to 50"),
        ("--hosts", "51", "'--hosts <HOSTS>': must be 2 to 50"),
        (
            "--lease-ttl",
            "5",
            "'--lease-ttl <LEASE_TTL>': must be at least 6",
        ),
    ] {
        let (code, out) = lab_within(&["soak", "--name", "tsz", flag, value], 30);
        assert_eq!(code, Some(2), "{flag} {value}: {out}");
        assert!(out.contains(want), "{flag} {value}: {out}");
        assert!(
            !out.contains("==> building"),
            "built before refusing: {out}"
        );
        gone("tsz");
    }
}

#[test]
fn bench_leaves_a_lab_of_the_users_alone() {
    if !ready() {
        return;
    }
    // Before: `bench --name tbo` tore down lab tbo0 (of the user's) as a leftover of its own,
    // and built its lab under that name.
    let _lab = Down("tbo0");
    fake_lab("tbo0");
    let (code, out) = lab_within(
        &[
            "bench",
            "--name",
            "tbo",
            "--backends",
            "host-gw",
            "--runs",
            "1",
            "--seconds",
            "1",
        ],
        120,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("lab tbo0 is up and was not built by bench"),
        "{out}"
    );
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read("/run/twill-lab/tbo0/state.json").unwrap()).unwrap();
    assert_eq!(
        st["backend"], "host-gw",
        "the user's lab is untouched: {out}"
    );
    assert_eq!(st["hosts"][0]["netns"], "tl-tbo0-h1", "{out}");
}

#[test]
fn up_hints_name_the_lab_they_are_about() {
    if !ready() {
        return;
    }
    // Before: "Try: twill-lab exec h1/h1c1 ping …; twill-lab down", both about lab `lab`.
    let _lab = Down("tnh");
    let (ok, out) = up("tnh", 1, 2, "host-gw");
    assert!(ok, "{out}");
    assert!(
        out.contains("Try: twill-lab exec --name tnh h1/h1c1 ping 10.244."),
        "{out}"
    );
    assert!(out.contains("; twill-lab down --name tnh\n"), "{out}");
    // A command that is not there is named, with the host.
    let (ok, exec) = lab(&["exec", "--name", "tnh", "h1", "/nonexistent/tool"]);
    assert!(!ok, "{exec}");
    assert!(exec.contains("running /nonexistent/tool on h1: "), "{exec}");
    status_says_what_is_down_now("tnh");
    drop(_lab);
    gone("tnh");
    // No containers: no ping with nothing to ping.
    let _lab = Down("tnh0");
    let (ok, out) = up("tnh0", 1, 0, "host-gw");
    assert!(ok, "{out}");
    assert!(!out.contains("ping ;"), "{out}");
    assert!(out.contains("twill-lab exec --name tnh0 h1 "), "{out}");
    // Before: "checking that every container reaches every other one" with none, and a table
    // of its header alone, without the host, its underlay IP or its subnet.
    assert!(!out.contains("checking that every container"), "{out}");
    let (ok, status) = lab(&["status", "--name", "tnh0"]);
    assert!(ok, "{status}");
    for table in [&out, &status] {
        let row = table.lines().find(|l| l.starts_with("h1 ")).unwrap_or("");
        assert!(
            row.contains(" 172.") && row.contains(" 10.244."),
            "no row of h1 with its underlay IP and subnet: {table}"
        );
    }
    drop(_lab);
    gone("tnh0");
}

/// `status` of lab `name` (one host, two containers, all up) checks what runs now: all of it
/// at first, then a container killed, then its twilld stopped (each part of the lab this
/// test built, signalled by the PID its state records).
fn status_says_what_is_down_now(name: &str) {
    let (ok, status) = lab(&["status", "--name", name, "--ping"]);
    assert!(ok, "{status}");
    assert!(
        status.contains("all 2 containers reach each other"),
        "{status}"
    );
    let run_root = format!("/run/twill-lab/{name}/h1/run");
    let twill_run = Path::new(LAB).parent().unwrap().join("twill-run");
    let inspect = Command::new(&twill_run)
        .args(["--root", &run_root, "inspect", "h1c2"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_default();
    let pid = v["pid"].as_i64().expect("h1c2's PID") as i32;
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let ended = twill_testbed::wait_for(Duration::from_secs(10), || {
        twill_testbed::exited(pid.as_raw())
    });
    assert!(ended, "h1c2 still runs after SIGKILL");
    // Before: ✔ everywhere and exit 0, from the table `up` saved.
    let (ok, status) = lab(&["status", "--name", name]);
    assert!(!ok, "{status}");
    assert!(status.contains("down: container h1/h1c2: "), "{status}");
    assert!(!status.contains("h1/h1c1"), "{status}");
    assert!(!status.contains("down: twilld"), "{status}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("/run/twill-lab/{name}/state.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let twilld = state["hosts"][0]["twilld_pid"]
        .as_i64()
        .expect("twilld's PID") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(twilld),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let ended = twill_testbed::wait_for(Duration::from_secs(10), || twill_testbed::exited(twilld));
    assert!(ended, "twilld {twilld} still runs 10 s after SIGTERM");
    let (ok, status) = lab(&["status", "--name", name]);
    assert!(!ok, "{status}");
    assert!(
        status.contains(&format!("down: twilld on h1: PID {twilld} has exited")),
        "{status}"
    );
}

#[test]
fn up_of_a_lab_that_exists_neither_offers_nor_does_its_removal() {
    if !ready() {
        return;
    }
    let _lab = Down("tux");
    fake_lab("tux");
    let (code, out) = lab_within(
        &[
            "up",
            "--name",
            "tux",
            "--hosts",
            "1",
            "--containers-per-host",
            "0",
        ],
        60,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("lab tux exists"), "{out}");
    // Before: "(clean up with: twill-lab down --name tux)", of a lab this run never built.
    assert!(!out.contains("clean up"), "{out}");
    assert!(Path::new("/run/twill-lab/tux/state.json").exists(), "{out}");
}

#[test]
fn up_refuses_what_the_pod_network_cannot_hold_before_building() {
    if !ready() {
        return;
    }
    // Before: 253 containers started on h1, then the 254th found no address (stopped here
    // after 30 s); and a /29 made every twilld fail to lease, seen 30 s later.
    let _lab = Down("tfit");
    for (flags, want) in [
        (
            &["--containers-per-host", "300", "--network", "10.244.0.0/16"][..],
            "--containers-per-host 300 does not fit a host's /24 of --network 10.244.0.0/16 (253 addresses at most)",
        ),
        (
            &["--containers-per-host", "1", "--network", "10.244.0.0/29"],
            "--network 10.244.0.0/29: network config: Network: 10.244.0.0/29 is too small",
        ),
        // Before: "--network 10.244.0.0/16: network config: EnableIPv6: …", of an option
        // not given.
        (
            &["--backend", "udp", "--ip-family", "dual"],
            "--ip-family dual does not go with --backend udp: the udp backend carries IPv4 only",
        ),
    ] {
        let mut args = vec!["up", "--name", "tfit", "--hosts", "1"];
        args.extend(flags);
        let (code, out) = lab_within(&args, 30);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(want), "{out}");
        if !flags.contains(&"--network") {
            assert!(
                !out.contains("--network"),
                "blames --network, not given: {out}"
            );
        }
        assert!(
            !out.contains("==> building"),
            "built before refusing: {out}"
        );
        gone("tfit");
    }
}

#[test]
fn status_exec_and_logs_say_which_lab_host_container_or_log_there_is() {
    if !ready() {
        return;
    }
    let _lab = Down("tslfake");
    fake_lab("tslfake");
    // Before: the saved table, ✔ for every container, and exit 0, of a lab with no namespace,
    // no twilld and no container running.
    let (ok, out) = lab(&["status", "--name", "tslfake"]);
    assert!(!ok, "{out}");
    assert!(!out.contains('✔'), "{out}");
    for want in [
        "down: twilld on h1: none recorded",
        "down: twilld on h2: none recorded",
        "down: container h1/h1c1: ",
        "down: container h2/h2c1: ",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // Before: "no lab tslnone (run twill-lab up): reading …" with a lab up under another name.
    for cmd in [&["status"][..], &["logs", "h1"], &["exec", "h1", "true"]] {
        let mut args = cmd.to_vec();
        args.extend(["--name", "tslnone"]);
        let (ok, out) = lab(&args);
        assert!(!ok, "{out}");
        let labs = out
            .split_once("the labs up are ")
            .map(|(_, l)| l.split(" (").next().unwrap_or_default().to_string())
            .unwrap_or_default();
        assert!(labs.split(", ").any(|l| l == "tslfake"), "{cmd:?}: {out}");
    }
    // Before: twill-run's "no such container: h2c1" (exit 125) or the namespace's raw error.
    let (ok, out) = lab(&["exec", "--name", "tslfake", "h1/h2c1", "true"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("no container h2c1 on h1: it runs on h2 (exec h2/h2c1)"),
        "{out}"
    );
    let (ok, out) = lab(&["exec", "--name", "tslfake", "h1/nope", "true"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("no container nope on h1 (its containers: h1c1)"),
        "{out}"
    );
    // Before: nothing at all, and success, for a log that is not there.
    let (ok, out) = lab(&["logs", "--name", "tslfake", "h2"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("no twilld log of h2 in lab tslfake (/nonexistent/h2.log)"),
        "{out}"
    );
}

/// The options and arguments of `twill-lab CMD -h` that say nothing but their name (and
/// default or possible values).
fn undescribed(cmd: &str) -> Vec<String> {
    let out = Command::new(LAB).args([cmd, "-h"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = help.lines().collect();
    let mut bare = Vec::new();
    let mut in_args = false;
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') {
            in_args = matches!(line.trim(), "Arguments:" | "Options:");
            continue;
        }
        if !in_args || indent(line) > 6 || line.trim().is_empty() {
            continue;
        }
        // The entry: the rest of its line after the name, then its more indented lines.
        let t = line.trim();
        let (spec, rest) = t.split_once("  ").unwrap_or((t, ""));
        let mut text = rest.to_string();
        for l in lines[i + 1..].iter().take_while(|l| indent(l) > 6) {
            text.push(' ');
            text.push_str(l.trim());
        }
        // Without the bracketed defaults and possible values.
        let mut words = String::new();
        let mut depth = 0;
        for c in text.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                c if depth == 0 => words.push(c),
                _ => {}
            }
        }
        if !words.chars().any(char::is_alphabetic) {
            bare.push(format!("{cmd} {spec}"));
        }
    }
    bare
}

#[test]
fn every_option_and_argument_says_what_it_is() {
    // Before: --hosts, --containers-per-host, --network, exec's TARGET and CMD, logs' HOST,
    // bench's --seconds, soak's --hosts, --backend and --minutes said nothing.
    let bare: Vec<String> = ["up", "down", "status", "exec", "logs", "bench", "soak"]
        .into_iter()
        .flat_map(undescribed)
        .collect();
    assert!(bare.is_empty(), "without a description: {bare:?}");
}

/// Runs twill-lab with `args` and its stdout a pipe whose reader takes the first line and
/// closes it, as `twill-lab … | head -1` does; how it ended (killed after 180 s) and its
/// stderr.
fn lab_read_by_head(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::BufRead as _;
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(LAB)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe has no reader any more.
    assert!(first.starts_with("==> "), "first line: {first:?}");
    if !twill_testbed::wait_for(Duration::from_secs(180), || {
        child.try_wait().ok().flatten().is_some()
    }) {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    (
        status,
        std::fs::read_to_string(err.path()).unwrap_or_default(),
    )
}

#[test]
fn up_whose_reader_goes_away_still_builds_the_whole_lab() {
    use std::os::unix::process::ExitStatusExt as _;
    if !ready() {
        return;
    }
    // Before: the next line after `head` left killed it (SIGPIPE) between two steps, with a
    // half-built lab that `status` found down.
    let _down = Down("tpipeu");
    let _ = lab(&["down", "--name", "tpipeu"]);
    let (status, stderr) = lab_read_by_head(&[
        "up",
        "--name",
        "tpipeu",
        "--hosts",
        "1",
        "--containers-per-host",
        "1",
        "--backend",
        "host-gw",
    ]);
    assert_eq!(
        (status.code(), status.signal()),
        (Some(0), None),
        "{stderr}"
    );
    let (ok, out) = lab(&["status", "--name", "tpipeu"]);
    assert!(ok && out.contains("h1c1"), "{out}");
    let (ok, out) = lab(&["down", "--name", "tpipeu"]);
    assert!(ok, "{out}");
    gone("tpipeu");
}

#[test]
fn soak_whose_reader_goes_away_still_tears_its_lab_down() {
    use std::os::unix::process::ExitStatusExt as _;
    if !ready() {
        return;
    }
    // Before: killed by SIGPIPE at its next line, the soak never reached its teardown and left
    // its namespaces, etcd members, agents and containers behind.
    let _down = Down("tpipes");
    let _ = lab(&["down", "--name", "tpipes"]);
    let (status, stderr) = lab_read_by_head(&[
        "soak",
        "--name",
        "tpipes",
        "--hosts",
        "2",
        "--seconds",
        "1",
        "--max-faults",
        "1",
    ]);
    assert_eq!(status.signal(), None, "{stderr}");
    assert!(matches!(status.code(), Some(0 | 1)), "{status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    gone("tpipes");
}

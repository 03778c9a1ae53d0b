//! The small commands: `down`, `status`, `logs` and `exec`, all working from the lab's state
//! file.

use std::io::Write as _;
use std::process::Command;

use anyhow::Context;
use twill_netkit::Netns;

use crate::binaries::{containers_in_store, twill_run, twill_run_to_the_end};
use crate::state::{HostHealth, HostState, LabState, load_lab, name_flag, prefix, state_dir};
use crate::up::check_all_pairs;

pub(crate) fn kill_pid(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// `down`: containers removed with twill-run (cgroups, CNI), the lab's namespaces swept with
/// every process in them (its agents and etcd), state removed. Idempotent; works from a
/// half-written state file. The PIDs the state records are not signalled by number: an agent
/// that died (or that `bench --forwarder` stopped) leaves a PID any process may hold now.
///
/// Every container in a host's twill-run store goes, recorded in the state or not (an `up`
/// killed while `twill-run run` ran never recorded it). One that twill-run could not remove
/// keeps the whole lab, namespaces and state: its process, namespace and cgroup live outside
/// the lab's namespaces, and only the store and the host's namespace let `down` try again.
pub fn down(name: &str) -> anyhow::Result<()> {
    let dir = state_dir(name);
    if let Ok(st) = LabState::load(&dir) {
        let left = remove_containers(&st);
        if !left.is_empty() {
            anyhow::bail!(
                "lab {name} kept (run `twill-lab down --name {name}` again once fixed): {}",
                left.join("; ")
            );
        }
        for member in &st.etcd {
            if let Some(d) = &member.dir {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let swept = twill_testbed::sweep(&prefix(name)).context("removing the lab's namespaces")?;
    let _ = std::fs::remove_dir_all(&dir);
    // A failed write (the reader of a pipe gone with Ctrl-C) must not stop the next lab's.
    let _ = writeln!(
        std::io::stdout(),
        "twill-lab {name}: down ({} namespaces removed)",
        swept.len()
    );
    Ok(())
}

/// `twill-run rm -f` of every container of every host; what could not be removed, each said
/// with why.
fn remove_containers(st: &LabState) -> Vec<String> {
    let short = |id: &str| id.chars().take(12).collect::<String>();
    let mut left = Vec::new();
    for (h, host) in st.hosts.iter().enumerate() {
        let mut why = Vec::new();
        for id in containers_in_store(&host.run_root) {
            let out = twill_run_to_the_end(st, h)
                .and_then(|mut cmd| Ok(cmd.args(["rm", "-f", &id]).output()?));
            match out {
                Ok(o) if !o.status.success() => why.push(format!(
                    "{}: {}",
                    short(&id),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => why.push(format!("{}: {e:#}", short(&id))),
                Ok(_) => {}
            }
        }
        // The store is the test, not what twill-run said: an `rm` that could not release a
        // container's network still removed the container.
        let remaining: Vec<String> = containers_in_store(&host.run_root)
            .iter()
            .map(|id| short(id))
            .collect();
        if !remaining.is_empty() {
            left.push(format!(
                "twill-run could not remove the containers {} of {} (store {}): {}",
                remaining.join(", "),
                host.name,
                host.run_root.display(),
                if why.is_empty() {
                    "it reported no error".to_string()
                } else {
                    why.join("; ")
                }
            ));
        }
    }
    left
}

/// `status`: whether each host's twilld and each container runs now (not what `up` saved),
/// each one down said with why; true when all run. Cheap: no pings unless `ping`, which then
/// checks every pair as `up` does.
pub fn status(name: &str, ping: bool) -> anyhow::Result<bool> {
    let mut st = load_lab(name)?;
    println!(
        "lab {name}: backend {}, network {}, etcd {}",
        st.backend, st.network, st.etcd_endpoint
    );
    let health: Vec<HostHealth> = (0..st.hosts.len())
        .map(|h| HostHealth {
            twilld: twilld_down(&st.hosts[h]),
            containers: st.hosts[h]
                .containers
                .iter()
                .map(|c| container_down(&st, h, &c.name))
                .collect(),
        })
        .collect();
    st.print_table(Some(&health));
    let flag = name_flag(name);
    let mut down = Vec::new();
    for (host, hh) in st.hosts.iter().zip(&health) {
        if let Some(why) = &hh.twilld {
            down.push(format!(
                "twilld on {}: {why} (its log: `twill-lab logs{flag} {}`)",
                host.name, host.name
            ));
        }
        for (c, why) in host.containers.iter().zip(&hh.containers) {
            if let Some(why) = why {
                down.push(format!("container {}/{}: {why}", host.name, c.name));
            }
        }
    }
    if !down.is_empty() {
        println!();
        for d in &down {
            println!("down: {d}");
        }
        println!("(a lab with parts down: `twill-lab down{flag}` and `twill-lab up{flag}` again)");
        return Ok(false);
    }
    if ping && st.hosts.iter().any(|h| !h.containers.is_empty()) {
        println!();
        let dir = state_dir(name);
        let backend = st.backend;
        return check_all_pairs(&dir, &mut st, backend, false);
    }
    Ok(true)
}

/// Why host's twilld is not running, or `None` when it is: the recorded PID is checked to
/// be a live process inside the host's namespace, so a PID reused by another process after
/// twilld died is not taken for it.
fn twilld_down(host: &HostState) -> Option<String> {
    let Some(pid) = host.twilld_pid else {
        return Some("none recorded (it never started, or something replaced it)".into());
    };
    if let Err(e) = Netns::open(&host.netns) {
        return Some(format!("the host's namespace {} is gone ({e})", host.netns));
    }
    let Ok(pid) = i32::try_from(pid) else {
        return Some(format!(
            "the recorded PID {pid} is no process ID (a damaged lab state?)"
        ));
    };
    if twill_testbed::exited(pid) || !twill_testbed::pids_in_netns(&host.netns).contains(&pid) {
        return Some(format!("PID {pid} has exited"));
    }
    None
}

/// Why container `name` of host `h` is not running, or `None` when it is, as twill-run
/// records it (`inspect`) and its process: a container whose process died without its monitor
/// (SIGKILL of both) stays "running" in its state.
fn container_down(st: &LabState, h: usize, name: &str) -> Option<String> {
    let out = match twill_run(st, h).and_then(|mut c| Ok(c.args(["inspect", name]).output()?)) {
        Ok(o) => o,
        Err(e) => return Some(format!("running twill-run inspect: {e:#}")),
    };
    if !out.status.success() {
        return Some(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => return Some(format!("twill-run inspect printed no container state: {e}")),
    };
    let status = v["status"].as_str().unwrap_or("unknown");
    if status != "running" {
        return Some(match v["exit_code"].as_i64() {
            Some(code) => format!("{status} (exit code {code})"),
            None => status.to_string(),
        });
    }
    let pid = v["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
    let alive = pid.is_some_and(|p| {
        start_time(p).is_some_and(|t| v["pid_start"].as_u64().is_none_or(|want| want == t))
    });
    if !alive {
        return Some(format!(
            "its process {} is gone though twill-run records it running",
            pid.map_or("-".to_string(), |p| p.to_string())
        ));
    }
    None
}

/// When process `pid` started (field 22 of `/proc/PID/stat`, as twill-run records it in
/// `pid_start`), `None` for one gone or a zombie: with the PID alone, another process that
/// got the number later would pass for the container's.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')',
    // the state first (a zombie's or a dead one's: gone), the start time 20 fields later.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// `logs HOST`.
pub fn logs(name: &str, host: &str) -> anyhow::Result<()> {
    let st = load_lab(name)?;
    let h = st.host_index(host)?;
    let log = &st.hosts[h].log;
    let text = std::fs::read(log).with_context(|| {
        format!(
            "no twilld log of {host} in lab {name} ({}): did its twilld start? (`twill-lab status{}`)",
            log.display(),
            name_flag(name)
        )
    })?;
    // A log is bytes: an agent killed mid-line must not make it unreadable.
    print!("{}", String::from_utf8_lossy(&text));
    Ok(())
}

/// `exec HOST[/CONTAINER] CMD...`.
pub fn exec(name: &str, target: &str, cmd: &[String]) -> anyhow::Result<i32> {
    let st = load_lab(name)?;
    let (host, ctr) = match target.split_once('/') {
        Some((h, c)) => (h, Some(c)),
        None => (target, None),
    };
    let h = st.host_index(host)?;
    let program = cmd.first().context("exec needs a command")?;
    let mut c = match ctr {
        Some(c) => {
            check_container(&st, h, c)?;
            let mut c2 = twill_run(&st, h)?;
            c2.args(["exec", c]);
            c2.args(cmd);
            c2
        }
        None => {
            let mut c2 = Command::new(program);
            c2.args(&cmd[1..]);
            Netns::open(&st.hosts[h].netns)
                .and_then(|ns| ns.prepare_command(&mut c2))
                .with_context(|| {
                    format!(
                        "entering {host}'s namespace {} (is the lab up? `twill-lab status{}`)",
                        st.hosts[h].netns,
                        name_flag(name)
                    )
                })?;
            c2
        }
    };
    let status = c.status().with_context(|| match ctr {
        Some(_) => "running twill-run".to_string(),
        None => format!("running {program} on {host}"),
    })?;
    Ok(status.code().unwrap_or(1))
}

/// Container `c` is one of host `h`'s, else an error that says where it is, or which there are.
fn check_container(st: &LabState, h: usize, c: &str) -> anyhow::Result<()> {
    let host = &st.hosts[h];
    if host.containers.iter().any(|k| k.name == c) {
        return Ok(());
    }
    if let Some(other) = st
        .hosts
        .iter()
        .find(|o| o.containers.iter().any(|k| k.name == c))
    {
        anyhow::bail!(
            "no container {c} on {}: it runs on {} (exec {}/{c})",
            host.name,
            other.name,
            other.name
        );
    }
    let names: Vec<&str> = host.containers.iter().map(|k| k.name.as_str()).collect();
    if names.is_empty() {
        anyhow::bail!("no container {c} on {}: it has none", host.name);
    }
    anyhow::bail!(
        "no container {c} on {} (its containers: {})",
        host.name,
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::HostState;

    #[test]
    fn a_start_time_is_read_for_a_running_process_and_none_for_a_zombie() {
        let me = std::process::id() as i32;
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let want: u64 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(start_time(me), Some(want));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        while !twill_testbed::exited(pid) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(start_time(pid), None, "a zombie");
        child.wait().unwrap();
    }

    #[test]
    fn a_recorded_twilld_pid_that_is_no_pid_is_said_down() {
        if !nix::unistd::geteuid().is_root() {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!ci, "CI must run the tests as root");
            eprintln!("skipping: needs root (a network namespace)");
            return;
        }
        // Before: a PID beyond i32 (a damaged state file) read as "running".
        struct Gone(&'static str);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = Netns::delete(self.0);
            }
        }
        let netns = "tl-utpid-h1";
        let _ = Netns::delete(netns);
        Netns::create(netns).unwrap();
        let _gone = Gone(netns);
        let host = HostState {
            netns: netns.to_string(),
            twilld_pid: Some(u32::MAX),
            ..HostState::default()
        };
        let why = twilld_down(&host);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("no process ID")),
            "{why:?}"
        );
    }

    #[test]
    fn down_keeps_a_lab_with_a_container_it_could_not_remove_recorded_or_not() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root (/run/twill-lab)");
            return;
        }
        let name = "utdownkeep0";
        struct Cleanup(&'static str);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(state_dir(self.0));
            }
        }
        let _cleanup = Cleanup(name);
        let dir = state_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        // A container in h1's store that the state does not list (an `up` killed while
        // `twill-run run` started it), on a host whose namespace is gone, so twill-run
        // cannot remove it.
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let run_root = dir.join("h1").join("run");
        let ctr = run_root.join("containers").join(id);
        std::fs::create_dir_all(&ctr).unwrap();
        std::fs::write(ctr.join("state.json"), "{}").unwrap();
        let st = LabState {
            name: name.into(),
            hosts: vec![HostState {
                name: "h1".into(),
                netns: format!("{}-h1", prefix(name)),
                run_root,
                ..HostState::default()
            }],
            ..LabState::default()
        };
        st.save(&dir).unwrap();
        let err = down(name).map(|_| ()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("0123456789ab") && msg.contains("h1"), "{msg}");
        assert!(
            ctr.join("state.json").exists() && dir.join("state.json").exists(),
            "the only record of a container left running was removed: {msg}"
        );
    }
}

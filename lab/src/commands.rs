//! The small commands: `down`, `status`, `logs` and `exec`, all working from the lab's state
//! file.

use std::io::Write as _;
use std::process::Command;

use anyhow::Context;
use twill_netkit::Netns;

use crate::binaries::{containers_in_store, twill_run, twill_run_to_the_end};
use crate::state::{LabState, load_lab, name_flag, prefix, state_dir};

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

/// `status`.
pub fn status(name: &str) -> anyhow::Result<()> {
    let st = load_lab(name)?;
    println!(
        "lab {name}: backend {}, network {}, etcd {}",
        st.backend, st.network, st.etcd_endpoint
    );
    st.print_table();
    Ok(())
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

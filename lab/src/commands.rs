//! The small commands: `down`, `status`, `logs` and `exec`, all working from the lab's state
//! file.

use std::io::Write as _;
use std::process::Command;

use anyhow::Context;
use twill_netkit::Netns;

use crate::binaries::twill_run;
use crate::state::{LabState, prefix, state_dir};

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
pub fn down(name: &str) -> anyhow::Result<()> {
    let dir = state_dir(name);
    if let Ok(st) = LabState::load(&dir) {
        for h in 0..st.hosts.len() {
            for c in &st.hosts[h].containers {
                if let Ok(mut cmd) = twill_run(&st, h) {
                    let _ = cmd.args(["rm", "-f", &c.name]).output();
                }
            }
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

/// `status`.
pub fn status(name: &str) -> anyhow::Result<()> {
    let st = LabState::load(&state_dir(name))
        .with_context(|| format!("no lab {name} (run twill-lab up)"))?;
    println!(
        "lab {name}: backend {}, network {}, etcd {}",
        st.backend, st.network, st.etcd_endpoint
    );
    st.print_table();
    Ok(())
}

/// `logs HOST`.
pub fn logs(name: &str, host: &str) -> anyhow::Result<()> {
    let st = LabState::load(&state_dir(name)).with_context(|| format!("no lab {name}"))?;
    let h = st.host_index(host)?;
    print!(
        "{}",
        std::fs::read_to_string(&st.hosts[h].log).unwrap_or_default()
    );
    Ok(())
}

/// `exec HOST[/CONTAINER] CMD...`.
pub fn exec(name: &str, target: &str, cmd: &[String]) -> anyhow::Result<i32> {
    let st = LabState::load(&state_dir(name)).with_context(|| format!("no lab {name}"))?;
    let (host, ctr) = match target.split_once('/') {
        Some((h, c)) => (h, Some(c)),
        None => (target, None),
    };
    let h = st.host_index(host)?;
    let mut c = match ctr {
        Some(c) => {
            let mut c2 = twill_run(&st, h)?;
            c2.args(["exec", c]);
            c2.args(cmd);
            c2
        }
        None => {
            let mut c2 = Command::new(cmd.first().context("exec needs a command")?);
            c2.args(&cmd[1..]);
            Netns::open(&st.hosts[h].netns)?.prepare_command(&mut c2)?;
            c2
        }
    };
    Ok(c.status()?.code().unwrap_or(1))
}

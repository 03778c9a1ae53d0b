//! `twill-lab`: a whole twill cluster on one machine. `up` builds hosts as namespaces on an
//! underlay, starts etcd and a twilld per host, installs the CNI conflist, starts busybox
//! containers with twill-run and checks all-pairs connectivity; `down` removes everything
//! from the state file (also after a crashed `up`).

pub mod bench;
pub mod relay;
pub mod state;
pub mod up;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use state::LabState;
use twill_netkit::Netns;

/// Where lab state lives.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from("/run/twill-lab").join(name)
}

/// Namespace prefix of lab `name`.
pub fn prefix(name: &str) -> String {
    format!("tl-{name}")
}

/// A binary shipped next to `twill-lab` (same build), else on PATH.
pub fn sibling(bin: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(bin)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(bin))
}

/// twill-run for host `h`, inside the host's namespace.
pub fn twill_run(st: &LabState, h: usize) -> anyhow::Result<Command> {
    let host = &st.hosts[h];
    let mut c = Command::new(sibling("twill-run"));
    c.arg("--root")
        .arg(&host.run_root)
        .arg("--cni-conf-dir")
        .arg(&host.cni_conf_dir)
        .arg("--cni-path")
        .arg(&st.cni_path);
    Netns::open(&host.netns)?.prepare_command(&mut c)?;
    Ok(c)
}

fn kill_pid(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// `down`: containers removed with twill-run (cgroups, CNI), agents and etcd killed by PID,
/// namespaces swept, state removed. Idempotent; works from a half-written state file.
pub fn down(name: &str) -> anyhow::Result<()> {
    let dir = state_dir(name);
    if let Ok(st) = LabState::load(&dir) {
        for h in 0..st.hosts.len() {
            for c in &st.hosts[h].containers {
                if let Ok(mut cmd) = twill_run(&st, h) {
                    let _ = cmd.args(["rm", "-f", &c.name]).output();
                }
            }
            if let Some(p) = st.hosts[h].twilld_pid {
                kill_pid(p);
            }
        }
        if let Some(p) = st.etcd_pid {
            kill_pid(p);
        }
        if let Some(d) = &st.etcd_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    let swept = crate::testbed::sweep(&prefix(name)).context("removing the lab's namespaces")?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
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

/// Writes a busybox rootfs tarball (from Debian's busybox-static) to `path`.
pub fn busybox_tarball(path: &Path) -> anyhow::Result<()> {
    let bb = Path::new("/bin/busybox");
    anyhow::ensure!(
        bb.exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    let tmp = path.with_extension("d");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(tmp.join(d))?;
    }
    std::fs::copy(bb, tmp.join("bin/busybox"))?;
    let out = Command::new(bb).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", tmp.join("bin").join(applet));
    }
    let f = std::fs::File::create(path)?;
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", &tmp)?;
    b.finish()?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

//! The binaries of this build that the lab runs: found next to `twill-lab` (one
//! `cargo build` makes them all), else on PATH.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use twill_netkit::Netns;

use crate::state::LabState;

/// The binaries `up` needs next to `twill-lab`.
pub const REQUIRED: [&str; 3] = ["twilld", "twill", "twill-run"];

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

/// twill-run for host `h` in a process group of its own, for the steps that change its store
/// (import, run, rm): a Ctrl-C at the terminal then reaches twill-lab alone, which lets the
/// step end before it stops. A `run` killed halfway left a container that started anyway
/// (its monitor runs in a session of its own) but that the lab never recorded.
pub fn twill_run_to_the_end(st: &LabState, h: usize) -> anyhow::Result<Command> {
    let mut c = twill_run(st, h)?;
    c.process_group(0);
    Ok(c)
}

/// The IDs of the containers in a twill-run store (`--root`), recorded by the lab or not:
/// those with a state file, which is written before anything else of a container exists.
pub fn containers_in_store(run_root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run_root.join("containers")) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join("state.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids
}

//! The binaries of this build that the lab runs: found next to `twill-lab` (one
//! `cargo build` makes them all), else on PATH.

use std::path::PathBuf;
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

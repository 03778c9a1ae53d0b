//! An external udp forwarder swapped into a udp lab (`twill-lab bench --forwarder CMD`), so a
//! measuring stick with the udp backend's wire format runs on the same kind of lab, in the same
//! run, beside twilld. The contract is that of the reference forwarder's `swap-into-lab.sh`:
//! `CMD LAB` stops the lab's agents and starts the forwarder in every host, `CMD LAB stop`
//! stops it again (then the lab is taken down as usual). CMD may carry its own arguments.

use std::process::Command;

use anyhow::{Context, bail};

/// A forwarder running in a lab; dropping it runs `CMD LAB stop`.
pub struct SwappedForwarder {
    cmd: String,
    lab: String,
}

fn run(cmd: &str, lab: &str, extra: Option<&str>) -> anyhow::Result<std::process::ExitStatus> {
    // `sh -c 'CMD "$@"' sh LAB [stop]`: CMD is split by the shell, LAB is passed verbatim.
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("{cmd} \"$@\"")).arg("sh").arg(lab);
    if let Some(e) = extra {
        c.arg(e);
    }
    c.status()
        .with_context(|| format!("running the forwarder command {cmd:?}"))
}

/// Replaces the agents of udp lab `lab` by the forwarder.
pub fn swap_in(cmd: &str, lab: &str) -> anyhow::Result<SwappedForwarder> {
    let status = run(cmd, lab, None)?;
    let swapped = SwappedForwarder {
        cmd: cmd.to_string(),
        lab: lab.to_string(),
    };
    if !status.success() {
        // It may have started forwarders before it failed (or before a Ctrl-C ended it):
        // dropping `swapped` stops them, as the contract says, wherever they run.
        drop(swapped);
        bail!("the forwarder command `{cmd} {lab}` failed ({status}); its output is above");
    }
    Ok(swapped)
}

impl Drop for SwappedForwarder {
    fn drop(&mut self) {
        match run(&self.cmd, &self.lab, Some("stop")) {
            Ok(s) if s.success() => {}
            Ok(s) => crate::errln!(
                "stopping the forwarder (`{} {} stop`): {s}",
                self.cmd,
                self.lab
            ),
            Err(e) => crate::errln!("stopping the forwarder: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarder_command_that_fails_halfway_is_stopped_too() {
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        let script = dir.path().join("fwd.sh");
        // Starts nothing real; records how it is called and fails unless asked to stop.
        std::fs::write(
            &script,
            format!("echo \"$*\" >> '{}'\n[ \"$2\" = stop ]\n", calls.display()),
        )
        .unwrap();
        let cmd = format!("sh '{}'", script.display());
        let err = swap_in(&cmd, "lab7").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
        let calls = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(calls, "lab7\nlab7 stop\n");
    }
}

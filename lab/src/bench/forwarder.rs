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
    if !status.success() {
        bail!("the forwarder command `{cmd} {lab}` failed ({status}); its output is above");
    }
    Ok(SwappedForwarder {
        cmd: cmd.to_string(),
        lab: lab.to_string(),
    })
}

impl Drop for SwappedForwarder {
    fn drop(&mut self) {
        match run(&self.cmd, &self.lab, Some("stop")) {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!(
                "stopping the forwarder (`{} {} stop`): {s}",
                self.cmd, self.lab
            ),
            Err(e) => eprintln!("stopping the forwarder: {e:#}"),
        }
    }
}

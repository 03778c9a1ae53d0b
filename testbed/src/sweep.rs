//! Removing what a lab left behind: its namespaces and the processes running inside them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use twill_netkit::{NETNS_RUN_DIR, Netns};

use super::error::Result;

/// Named namespaces belonging to `prefix` (`<prefix>-…`).
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let want = format!("{prefix}-");
    Ok(Netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&want))
        .collect())
}

/// PIDs of processes whose network namespace is the named namespace `name`.
pub fn pids_in_netns(name: &str) -> Vec<i32> {
    let Ok(meta) = fs::metadata(Path::new(NETNS_RUN_DIR).join(name)) else {
        return Vec::new();
    };
    let want = format!("net:[{}]", meta.ino());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/net"))
                .map(|l| l.to_string_lossy() == want)
                .unwrap_or(false)
        })
        .collect()
}

/// Whether `pid` has ended: gone, or a zombie. A zombie has left its namespaces and closed
/// its files already; only its parent's reaping is missing, which may come late (an init
/// that reaps slowly made every sweep wait its whole second per namespace).
pub fn exited(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => true,
    }
}

/// Removes every namespace of `prefix`, first killing (by PID) the processes the lab started
/// inside them. Safe to call when nothing is left. Returns what it removed.
pub fn sweep(prefix: &str) -> Result<Vec<String>> {
    let names = namespaces_with_prefix(prefix)?;
    for name in &names {
        let pids = pids_in_netns(name);
        for &pid in &pids {
            tracing::debug!(pid, netns = %name, "killing leftover process");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Give the kernel a moment to end them so the namespace really goes away.
        for _ in 0..50 {
            if pids.iter().all(|&p| exited(p)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Netns::delete(name)?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_has_exited_a_running_process_has_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(!exited(pid), "running");
        child.kill().unwrap();
        // Killed but not reaped: a zombie until `wait`, which the sweep's wait must not need.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") Z")
        {
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(exited(pid), "a zombie has exited");
        child.wait().unwrap();
        assert!(exited(pid), "reaped");
    }
}

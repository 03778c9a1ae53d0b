//! The logs of a lab that `bench` or `soak` built and removes when it fails: copied out of the
//! lab's state directory first, since `twill-lab logs` finds nothing once the lab is down and
//! the error that says what failed has to name something that still exists.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::state::{LabState, state_dir};

/// Where the logs of lab `name` are kept after `bench` or `soak` removed it on a failure:
/// beside the labs' state (root's, under /run), never in a world-writable directory, where
/// another user could put a link in the way of what twill-lab writes as root. (`kept-logs`
/// cannot be a lab's name: those are letters and digits.)
pub fn kept_logs_dir(name: &str) -> PathBuf {
    kept_logs_root().join(name)
}

fn kept_logs_root() -> PathBuf {
    state_dir("kept-logs")
}

/// The kept copy of host `host`'s twilld log in lab `name`.
pub fn kept_twilld_log(name: &str, host: &str) -> PathBuf {
    kept_logs_dir(name).join(format!("{host}-twilld.log"))
}

/// Where to look for host `host`'s twilld log of lab `name`: `twill-lab logs` while the lab
/// stays, the kept copy when the caller removes the lab on failure (`kept`).
pub fn twilld_log_hint(name: &str, host: &str, kept: bool) -> String {
    if kept {
        format!(
            "its log is kept in {}",
            kept_twilld_log(name, host).display()
        )
    } else {
        format!("look at `twill-lab logs {host} --name {name}`")
    }
}

/// Copies the twilld log of every host and the log of every etcd member the lab recorded into
/// `to` (what an earlier run kept there goes first): `<host>-twilld.log`, `etcd<i>.log`.
/// Returns the files written.
pub fn copy_logs(st: &LabState, to: &Path) -> anyhow::Result<Vec<PathBuf>> {
    match std::fs::remove_dir_all(to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", to.display())),
    }
    // Logs hold addresses and keys' public halves: for root's eyes only.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(to)
            .with_context(|| format!("creating {}", to.display()))?;
    }
    let twilld = st
        .hosts
        .iter()
        .map(|h| (h.log.clone(), format!("{}-twilld.log", h.name)));
    let etcd = st
        .etcd
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((m.dir.as_ref()?.join("etcd.log"), format!("etcd{i}.log"))));
    let mut copied = Vec::new();
    for (from, name) in twilld.chain(etcd) {
        if !from.is_file() {
            continue;
        }
        let dest = to.join(name);
        std::fs::copy(&from, &dest)
            .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
        copied.push(dest);
    }
    Ok(copied)
}

/// Keeps the logs of lab `name` (if it has a state file) in [`kept_logs_dir`] before the
/// caller removes it; says where on stderr. A failure to copy is said too, and is no reason
/// to keep the lab.
pub fn keep(name: &str) {
    let Ok(st) = LabState::load(&state_dir(name)) else {
        return;
    };
    let to = kept_logs_dir(name);
    match copy_logs(&st, &to) {
        Ok(files) if !files.is_empty() => {
            crate::errln!(
                "twill-lab: the logs of lab {name} are kept in {}",
                to.display()
            );
        }
        Ok(_) => {}
        Err(e) => crate::errln!("twill-lab: keeping the logs of lab {name}: {e:#}"),
    }
}

/// A lab on disk for tests of what happens to it on failure.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::state::{HostState, prefix};

    /// A lab as `up` leaves it on disk, without namespaces or processes: its state file and
    /// its host's twilld log, in the real state directory. Dropping it removes the lab and
    /// its kept logs, whatever the test left.
    pub struct FakeLab(pub &'static str);

    impl FakeLab {
        pub fn new(name: &'static str) -> FakeLab {
            let lab = FakeLab(name);
            let _ = std::fs::remove_dir_all(kept_logs_dir(name));
            let dir = state_dir(name);
            let log = dir.join("h1").join("twilld.log");
            std::fs::create_dir_all(log.parent().unwrap()).unwrap();
            std::fs::write(&log, "twilld: no lease\n").unwrap();
            let st = LabState {
                name: name.into(),
                hosts: vec![HostState {
                    name: "h1".into(),
                    netns: format!("{}-h1", prefix(name)),
                    log,
                    run_root: dir.join("h1").join("run"),
                    ..HostState::default()
                }],
                ..LabState::default()
            };
            st.save(&dir).unwrap();
            lab
        }
    }

    impl Drop for FakeLab {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(state_dir(self.0));
            let _ = std::fs::remove_dir_all(kept_logs_dir(self.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{EtcdState, HostState};

    #[test]
    fn the_logs_are_copied_where_the_hint_says_and_an_old_copy_is_replaced() {
        let lab = tempfile::tempdir().unwrap();
        let kept = tempfile::tempdir().unwrap();
        let to = kept.path().join("b0");
        let etcd_dir = lab.path().join("etcd-0");
        std::fs::create_dir_all(&etcd_dir).unwrap();
        std::fs::write(etcd_dir.join("etcd.log"), "etcd says").unwrap();
        std::fs::write(lab.path().join("h1.log"), "twilld on h1").unwrap();
        let st = LabState {
            name: "b0".into(),
            hosts: vec![
                HostState {
                    name: "h1".into(),
                    log: lab.path().join("h1.log"),
                    ..HostState::default()
                },
                // An agent that never started wrote no log: nothing to copy, no error.
                HostState {
                    name: "h2".into(),
                    log: lab.path().join("h2.log"),
                    ..HostState::default()
                },
            ],
            etcd: vec![
                EtcdState {
                    pid: None,
                    dir: Some(etcd_dir),
                },
                EtcdState {
                    pid: None,
                    dir: None,
                },
            ],
            ..LabState::default()
        };
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join("h9-twilld.log"), "an earlier run").unwrap();
        let files = copy_logs(&st, &to).unwrap();
        assert_eq!(files, vec![to.join("h1-twilld.log"), to.join("etcd0.log")]);
        assert_eq!(
            std::fs::read_to_string(to.join("h1-twilld.log")).unwrap(),
            "twilld on h1"
        );
        assert_eq!(
            std::fs::read_to_string(to.join("etcd0.log")).unwrap(),
            "etcd says"
        );
        assert!(!to.join("h9-twilld.log").exists());
        // The hint of a lab that its caller removes names the kept copy's path.
        let hint = twilld_log_hint("b0", "h1", true);
        assert!(
            hint.contains(&kept_twilld_log("b0", "h1").display().to_string()),
            "{hint}"
        );
        assert!(!hint.contains("twill-lab logs"), "{hint}");
        assert!(twilld_log_hint("b0", "h1", false).contains("twill-lab logs h1 --name b0"));
    }
}

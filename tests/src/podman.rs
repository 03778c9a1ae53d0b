//! podman with a private store: every path it writes (images, containers, libpod's run and
//! tmp state) lives under a directory the test owns, so the machine's podman state is never
//! touched and removing the directory removes everything.

use std::path::Path;
use std::process::Command;

/// `podman` on the store under `store` (vfs: no overlay mounts to leave behind; cgroupfs and
/// file events: no systemd needed).
pub fn podman(store: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(store.join("runroot"))
        .arg("--tmpdir")
        .arg(store.join("tmp"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    c
}

/// Runs `c` and returns its stdout; panics with both outputs when it fails.
pub fn output_ok(c: &mut Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

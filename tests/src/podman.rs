//! podman with a private store: every path it writes (images, containers, libpod's run and
//! tmp state) lives under a directory the test owns, so the machine's podman state is never
//! touched and removing the directory removes everything.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// podman refuses a `--runroot` longer than this ("the specified runroot is longer than 50
/// characters"): libpod's socket paths under it must fit in `sun_path`.
const RUNROOT_MAX: usize = 50;

/// Where podman keeps run state for `store`: `store/runroot` when that path is short enough
/// for podman, else a directory in /tmp named by a hash of the store path (the same store always
/// gets the same one). Clean clones live at arbitrary depths (CI's is deeper than ours), so a
/// store under the target directory can cross the limit.
pub fn runroot(store: &Path) -> PathBuf {
    let inside = store.join("runroot");
    if inside.as_os_str().len() <= RUNROOT_MAX {
        return inside;
    }
    let mut h = DefaultHasher::new();
    store.hash(&mut h);
    std::env::temp_dir().join(format!("twill-rr-{:016x}", h.finish()))
}

/// `podman` on the store under `store` (vfs: no overlay mounts to leave behind; cgroupfs and
/// file events: no systemd needed).
pub fn podman(store: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(runroot(store))
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

/// The ulimits `podman run` needs on this machine and CI's (raising podman's defaults is
/// refused there).
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The busybox applets [`build_busybox_image`] links.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "echo", "id", "pwd", "sleep", "true", "head", "tail", "grep", "ps", "hostname",
    "unshare", "ping", "nc", "ip", "wget",
];

/// Writes a build context at `ctx` for an image made from the machine's /bin/busybox (no
/// registry here): `root/` with busybox and `applets` under /bin, an /etc/passwd with `root`
/// and `app` (1000), an /etc/group with `staff` (50) holding `app`; and a Containerfile that
/// copies `root/` into an empty image. Returns `ctx/root` for more files.
pub fn busybox_context(ctx: &Path, applets: &[&str]) -> PathBuf {
    let root = ctx.join("root");
    for d in ["bin", "etc", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )
    .unwrap();
    std::fs::write(ctx.join("Containerfile"), "FROM scratch\nCOPY root/ /\n").unwrap();
    root
}

/// Builds `tag` in the podman store `store` from [`busybox_context`] with
/// [`BUSYBOX_APPLETS`]; `ctx` is the build context, created here.
pub fn build_busybox_image(store: &Path, ctx: &Path, tag: &str) {
    busybox_context(ctx, BUSYBOX_APPLETS);
    output_ok(
        podman(store)
            .args(["build", "--isolation", "chroot", "-q", "-t", tag])
            .arg(ctx),
        "podman build",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runroot_stays_within_podmans_limit_for_deep_stores() {
        let shallow = Path::new("/tmp/x/store");
        assert_eq!(runroot(shallow), shallow.join("runroot"));
        // CI's clean clone: /check/work/main/target/tmp/oci-podman/store/runroot is 52.
        let deep = Path::new("/check/work/main/target/tmp/oci-podman/store");
        let rr = runroot(deep);
        assert!(rr.as_os_str().len() <= RUNROOT_MAX, "{}", rr.display());
        assert_eq!(rr, runroot(deep), "stable per store");
        assert_ne!(
            rr,
            runroot(Path::new("/check/work/main/target/tmp/oci-podman/store2"))
        );
    }
}

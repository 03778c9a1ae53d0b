//! The container image of a lab: a busybox rootfs.

use std::path::Path;
use std::process::Command;

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

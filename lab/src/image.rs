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
    // The applets as the symlinks they are: followed (the tar crate's default), each was a
    // copy of busybox, a 530 MB tarball that every host hashed and unpacked (35 s each with
    // a debug twill-run).
    b.follow_symlinks(false);
    b.append_dir_all(".", &tmp)?;
    b.finish()?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_applets_are_symlinks_to_busybox_not_copies_of_it() {
        if !Path::new("/bin/busybox").exists() {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!ci, "CI must install busybox-static (/bin/busybox)");
            eprintln!("skipping: needs /bin/busybox");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busybox.tar");
        busybox_tarball(&path).unwrap();
        // Before: 269 copies of busybox, 530 MB.
        let size = std::fs::metadata(&path).unwrap().len();
        let busybox = std::fs::metadata("/bin/busybox").unwrap().len();
        assert!(
            size < 2 * busybox,
            "{size} bytes for a {busybox}-byte busybox"
        );
        let mut ar = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let sh = ar
            .entries()
            .unwrap()
            .flatten()
            .find(|e| e.path().is_ok_and(|p| p.ends_with("bin/sh")))
            .expect("bin/sh in the tarball");
        assert!(sh.header().entry_type().is_symlink());
        assert_eq!(
            sh.link_name().unwrap().as_deref(),
            Some(Path::new("busybox"))
        );
    }
}

//! The node's WireGuard private key: `/run/flannel/wgkey` (env `WIREGUARD_KEY_FILE`), base64
//! without a newline, mode 0400, created once and reused so the public key in the lease
//! survives restarts — Flannel's file, so a node moving between flanneld and twilld keeps
//! its key. The key itself is never logged: errors name the file, never its contents.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use boringtun::x25519::{PublicKey, StaticSecret};
use ring::rand::{SecureRandom, SystemRandom};

use super::config::{format_key, parse_key};

/// Why the key file could not be used; names the file.
#[derive(Debug, thiserror::Error)]
#[error("wireguard key file {}: {why}", path.display())]
pub struct KeyError {
    pub path: PathBuf,
    pub why: String,
}

/// The node's key pair.
#[derive(Clone)]
pub struct NodeKey {
    pub private: StaticSecret,
    pub public: PublicKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey(public {})", format_key(self.public.as_bytes()))
    }
}

impl NodeKey {
    fn from_private(bytes: [u8; 32]) -> NodeKey {
        let private = StaticSecret::from(bytes);
        let public = PublicKey::from(&private);
        NodeKey { private, public }
    }
}

/// Reads the key at `path`, or creates it (with its directory) when there is none.
pub fn load_or_create(path: &Path) -> Result<NodeKey, KeyError> {
    let fail = |why: String| KeyError {
        path: path.to_path_buf(),
        why,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let bytes =
                parse_key(&text).map_err(|why| fail(format!("not a WireGuard key: {why}")))?;
            // WireGuard (the kernel's, wireguard-go, `wg`) reads an all-zero private key as
            // none at all; used as a key it is one everybody knows, and anyone could speak
            // as this node. A placeholder left in a Secret or a template looks like this.
            if bytes == [0u8; 32] {
                return Err(fail(
                    "not a WireGuard key: all zeros, which WireGuard reads as no key (a placeholder?): remove the file to have one created, or put a key from `wg genkey` there".into(),
                ));
            }
            // Never readable by others, also when someone else created the file. Only
            // tightened where it can be: a read-only volume (a Kubernetes Secret, 0644 by
            // default, keeps the key across reboots) is its owner's to protect, and refusing
            // the key would hide nothing that is not already readable. flanneld uses it as is.
            if let Ok(meta) = fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                match fs::set_permissions(path, fs::Permissions::from_mode(0o400)) {
                    Ok(()) => {
                        tracing::warn!(file = %path.display(), "wireguard key file was readable by others: set mode 0400")
                    }
                    // Only a read-only file system is its owner's to protect; any other
                    // failure (a file of someone else's, an immutable one) stays an error.
                    Err(e) if e.raw_os_error() == Some(libc::EROFS) => tracing::warn!(
                        file = %path.display(),
                        mode = format!("{:o}", meta.permissions().mode() & 0o777),
                        "wireguard key file is readable by others on a read-only file system: using it as it is"
                    ),
                    Err(e) => return Err(fail(format!("setting mode 0400: {e}"))),
                }
            }
            Ok(NodeKey::from_private(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path).map_err(fail),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(fail("not a WireGuard key: not text".into()))
        }
        Err(e) => Err(fail(format!("reading: {e}"))),
    }
}

fn create(path: &Path) -> Result<NodeKey, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no random numbers from the kernel to make a key".to_string())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("creating its directory: {e}"))?;
    }
    // create_new: two starting agents never overwrite each other's key; mode 0400 from the
    // start, so the key is never readable by others, not even for a moment.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(|e| format!("creating: {e}"))?;
    f.write_all(format_key(&bytes).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("writing: {e}"))?;
    tracing::info!(file = %path.display(), "created a new wireguard key");
    Ok(NodeKey::from_private(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0400_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let a = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.ends_with('\n'), "Flannel's format: no newline");
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public, b.public, "the public key survives a restart");
        assert!(
            !format!("{a:?}").contains(&text),
            "the private key is never printed"
        );
    }

    /// Runs `f` on a thread of its own mount namespace in which `dir` is read-only (as a
    /// Kubernetes Secret volume is); the namespace goes with the thread. `None` without the
    /// privilege to make one.
    fn with_read_only<T: Send>(dir: &Path, f: impl FnOnce() -> T + Send) -> Option<T> {
        use std::ffi::CString;
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: plain syscalls on this thread's own (unshared) mount namespace,
                // with NUL-terminated paths that outlive the calls.
                unsafe {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return None;
                    }
                    let root = CString::new("/").unwrap();
                    let none = std::ptr::null();
                    assert_eq!(
                        libc::mount(
                            none,
                            root.as_ptr(),
                            none,
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null()
                        ),
                        0,
                        "making mounts private"
                    );
                    assert_eq!(
                        libc::mount(
                            c.as_ptr(),
                            c.as_ptr(),
                            none,
                            libc::MS_BIND,
                            std::ptr::null()
                        ),
                        0,
                        "bind mount"
                    );
                    assert_eq!(
                        libc::mount(
                            none,
                            c.as_ptr(),
                            none,
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null()
                        ),
                        0,
                        "read-only remount"
                    );
                }
                Some(f())
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn a_key_on_a_read_only_volume_readable_by_others_is_used() {
        // Before: the mode 0400 it could not set stopped twilld, where flanneld runs — a key
        // kept in a Kubernetes Secret (mode 0644 by default, read-only) so that it survives
        // reboots, unlike /run.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        fs::write(&path, format_key(&[5u8; 32])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let Some(got) = with_read_only(dir.path(), || {
            assert!(
                fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).is_err(),
                "the volume is read-only"
            );
            load_or_create(&path).map(|k| k.public)
        }) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no privilege to make a mount namespace (CI runs as root)"
            );
            eprintln!("skipped: no privilege to make a mount namespace");
            return;
        };
        assert_eq!(
            got.unwrap(),
            PublicKey::from(&StaticSecret::from([5u8; 32]))
        );
    }

    #[test]
    fn an_all_zero_key_is_refused_and_kept_for_its_owner() {
        // Before: taken as the node's key — one everybody knows — where WireGuard reads it
        // as no key at all.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        let zeros = format_key(&[0u8; 32]);
        fs::write(&path, &zeros).unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("all zeros"),
            "{e}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), zeros, "not overwritten");
    }

    #[test]
    fn a_bad_file_names_the_file_and_not_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        fs::write(&path, "c2VjcmV0LWJ1dC1zaG9ydA==").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("not a WireGuard key"),
            "{e}"
        );
        assert!(!e.contains("c2VjcmV0"), "{e}");
        // A trailing newline (wg genkey > file) is fine, as in Flannel.
        fs::write(&path, format!("{}\n", format_key(&[9u8; 32]))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400, "tightened");
    }
}

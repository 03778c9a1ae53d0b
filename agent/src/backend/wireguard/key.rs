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
            // Never readable by others, also when someone else created the file.
            if let Ok(meta) = fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(file = %path.display(), "wireguard key file was readable by others: setting mode 0400");
                fs::set_permissions(path, fs::Permissions::from_mode(0o400))
                    .map_err(|e| fail(format!("setting mode 0400: {e}")))?;
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

//! Images: a rootfs tarball imported as a read-only layer (`import`), listed (`images`), and
//! new layers from a container's upper directory (`commit`). An image is a list of layers,
//! lowest first; each layer is a directory.

use std::fs::{self, File};
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::store::Store;

/// An image's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// Layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    /// Default command (Docker's CMD) when `run` gets none.
    pub cmd: Vec<String>,
    pub created_unix: u64,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "invalid image name {name:?}: letters, digits, '.', '_', '-', ':'"
        )))
    }
}

/// Loads an image by name.
pub fn load(store: &Store, name: &str) -> Result<Image> {
    check_name(name)?;
    let path = store.image_dir(name).join("image.json");
    let text = fs::read(&path).map_err(|_| RuntimeError::NoImage(name.to_string()))?;
    serde_json::from_slice(&text)
        .map_err(|e| RuntimeError::Invalid(format!("{}: {e}", path.display())))
}

fn save(store: &Store, img: &Image) -> Result<()> {
    let path = store.image_dir(&img.name).join("image.json");
    let text = serde_json::to_vec_pretty(img).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    fs::write(&path, text).map_err(|e| RuntimeError::io("writing", path.display(), e))
}

/// Every image.
pub fn list(store: &Store) -> Result<Vec<Image>> {
    let dir = store.root.join("images");
    let mut out: Vec<Image> = fs::read_dir(&dir)
        .map_err(|e| RuntimeError::io("listing", dir.display(), e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| load(store, n).ok()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Unpacks a (optionally gzip-compressed) tarball into `dest`.
pub fn unpack(tarball: &Path, dest: &Path) -> Result<()> {
    let mut f =
        File::open(tarball).map_err(|e| RuntimeError::io("opening", tarball.display(), e))?;
    let mut magic = [0u8; 2];
    let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    f.rewind()
        .map_err(|e| RuntimeError::io("reading", tarball.display(), e))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(false);
    ar.unpack(dest)
        .map_err(|e| RuntimeError::io("unpacking", tarball.display(), e))
}

/// `import TARBALL NAME`: the tarball becomes the image's only layer.
pub fn import(store: &Store, tarball: &Path, name: &str) -> Result<Image> {
    check_name(name)?;
    let dir = store.image_dir(name);
    if dir.join("image.json").exists() {
        return Err(RuntimeError::Invalid(format!(
            "image {name} already exists"
        )));
    }
    let layer = dir.join("layer0");
    fs::create_dir_all(&layer).map_err(|e| RuntimeError::io("creating", layer.display(), e))?;
    if let Err(e) = unpack(tarball, &layer) {
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    let img = Image {
        name: name.to_string(),
        layers: vec![layer],
        cmd: vec!["/bin/sh".into()],
        created_unix: crate::store::now_unix(),
    };
    save(store, &img)?;
    Ok(img)
}

/// How the upper layer becomes an image layer.
pub struct CommitOptions {
    /// Files of the init layer and volume mount points that must not end up in the layer.
    pub paths: Vec<String>,
    /// Owners inside this host range are shifted back to container IDs (`--userns`).
    pub unshift: Option<crate::userns::IdMap>,
}

/// `commit`: a new image = the old image's layers + a copy of the container's upper dir,
/// without the init layer's files and without volume contents.
pub fn commit(
    store: &Store,
    base: &Image,
    upper: &Path,
    name: &str,
    opts: &CommitOptions,
) -> Result<Image> {
    check_name(name)?;
    let dir = store.image_dir(name);
    if dir.join("image.json").exists() {
        return Err(RuntimeError::Invalid(format!(
            "image {name} already exists"
        )));
    }
    let layer = dir.join(format!("layer{}", base.layers.len()));
    fs::create_dir_all(&layer).map_err(|e| RuntimeError::io("creating", layer.display(), e))?;
    copy_tree(upper, &layer, Path::new("/"), opts)?;
    let mut layers = base.layers.clone();
    layers.push(layer);
    let img = Image {
        name: name.to_string(),
        layers,
        cmd: base.cmd.clone(),
        created_unix: crate::store::now_unix(),
    };
    save(store, &img)?;
    Ok(img)
}

/// Copies a directory tree keeping modes, owners, symlinks and overlay whiteouts (char 0:0).
fn copy_tree(src: &Path, dst: &Path, rel: &Path, opts: &CommitOptions) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for e in fs::read_dir(src)
        .map_err(|e| RuntimeError::io("reading", src.display(), e))?
        .flatten()
    {
        let rel_path = rel.join(e.file_name());
        let rel_str = rel_path.to_string_lossy().to_string();
        if opts.paths.contains(&rel_str) {
            continue;
        }
        let from = e.path();
        let to = dst.join(e.file_name());
        let meta = fs::symlink_metadata(&from)
            .map_err(|e| RuntimeError::io("reading", from.display(), e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&to).map_err(|e| RuntimeError::io("creating", to.display(), e))?;
            copy_tree(&from, &to, &rel_path, opts)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from)
                .map_err(|e| RuntimeError::io("reading link", from.display(), e))?;
            std::os::unix::fs::symlink(target, &to)
                .map_err(|e| RuntimeError::io("creating link", to.display(), e))?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(|e| RuntimeError::io("copying", from.display(), e))?;
        } else {
            // Whiteouts and device nodes: recreate the node.
            let dev = meta.rdev();
            nix::sys::stat::mknod(
                &to,
                nix::sys::stat::SFlag::from_bits_truncate(meta.mode()),
                nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                dev,
            )
            .map_err(|e| RuntimeError::nix("recreating node", to.display(), e))?;
        }
        if !ft.is_symlink() {
            let _ = fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777));
        }
        let shift = |id: u32| opts.unshift.and_then(|m| m.to_container(id)).unwrap_or(id);
        let _ = nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &to,
            Some(nix::unistd::Uid::from_raw(shift(meta.uid()))),
            Some(nix::unistd::Gid::from_raw(shift(meta.gid()))),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
    Ok(())
}

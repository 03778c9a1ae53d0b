//! Images: layers kept as layers, each unpacked once into `layers/<diff-id hex>/diff`
//! (overlayfs form) and shared by every image that has it; an image is a name, its config
//! (the OCI/Docker config JSON as imported) and its layers' diff IDs, lowest first.
//!
//! - `import`/`load` read archives by content (`archive.rs`): docker-archive, oci-archive,
//!   an OCI layout directory, gzip/zstd layers, or (only `import`) a plain rootfs tarball.
//!   Everything is staged under `tmp/` and renamed into place once every digest checked, so
//!   a failed import leaves nothing behind.
//! - `commit` adds the container's upper directory as a new layer; `save` writes images back
//!   as docker-archive or oci-archive (`save.rs`).
//! - `rmi` removes a name; layers no image uses any more go with it.
//!
//! Store changes hold `images.lock` (flock), so concurrent imports, commits and removals
//! see each other whole.

pub mod archive;
pub mod config;
pub mod digest;
pub mod pack;
pub mod save;
pub mod unpack;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::store::Store;
use archive::{Archive, Kind};
use config::RunConfig;
use digest::Digest;

/// An image's record (`images/<name>/image.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// The digest of the config blob it was imported with (or made with).
    pub id: String,
    /// Diff IDs (`sha256:…`), lowest first.
    pub layers: Vec<String>,
    /// The image config JSON (`architecture`, `os`, `config`, `rootfs`, `history`, …).
    pub config: serde_json::Value,
    pub created_unix: u64,
}

impl Image {
    /// The parts of the config `run` honours.
    pub fn run_config(&self) -> Result<RunConfig> {
        RunConfig::of(&self.config)
            .map_err(|e| RuntimeError::Invalid(format!("image {}: {e}", self.name)))
    }

    /// The layers' directories, lowest first.
    pub fn layer_dirs(&self, store: &Store) -> Result<Vec<PathBuf>> {
        self.layers
            .iter()
            .map(|d| {
                let d = Digest::parse(d)
                    .map_err(|e| RuntimeError::Invalid(format!("image {}: {e}", self.name)))?;
                Ok(layer_dir(store, &d))
            })
            .collect()
    }

    /// Bytes of file content in its layers.
    pub fn size(&self, store: &Store) -> u64 {
        self.layers
            .iter()
            .filter_map(|d| Digest::parse(d).ok())
            .filter_map(|d| layer_info(store, &d))
            .map(|l| l.size)
            .sum()
    }
}

/// A layer's record (`layers/<hex>/layer.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    pub diff_id: String,
    /// Bytes of file content.
    pub size: u64,
}

/// Where a layer's files are.
pub fn layer_dir(store: &Store, diff_id: &Digest) -> PathBuf {
    store.root.join("layers").join(diff_id.hex()).join("diff")
}

fn layer_info(store: &Store, diff_id: &Digest) -> Option<LayerInfo> {
    let p = store
        .root
        .join("layers")
        .join(diff_id.hex())
        .join("layer.json");
    serde_json::from_slice(&fs::read(p).ok()?).ok()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b))
        && !name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "invalid image name {name:?}: letters, digits, '.', '_', '-', ':', '@' and '/' between parts"
        )))
    }
}

/// The directory of an image record: `/` in names (`localhost/two:latest`) is kept out of
/// the path.
fn image_dir(store: &Store, name: &str) -> PathBuf {
    store.image_dir(&name.replace('/', "%2F"))
}

/// Loads an image by name. A name without a tag also finds `NAME:latest`, and one without a
/// registry `localhost/NAME[:latest]` (podman's names for local images).
pub fn load(store: &Store, name: &str) -> Result<Image> {
    check_name(name)?;
    let untagged = !name.rsplit('/').next().unwrap_or(name).contains(':');
    let mut candidates = vec![name.to_string()];
    if untagged {
        candidates.push(format!("{name}:latest"));
    }
    if !name.contains('/') {
        candidates.push(format!("localhost/{name}"));
        if untagged {
            candidates.push(format!("localhost/{name}:latest"));
        }
    }
    for c in &candidates {
        let path = image_dir(store, c).join("image.json");
        if let Ok(text) = fs::read(&path) {
            return serde_json::from_slice(&text).map_err(|e| {
                RuntimeError::Invalid(format!(
                    "{}: {e} (an image from an older twill-run? import it again)",
                    path.display()
                ))
            });
        }
    }
    Err(RuntimeError::NoImage(name.to_string()))
}

fn write_record(store: &Store, img: &Image) -> Result<()> {
    let dir = image_dir(store, &img.name);
    fs::create_dir_all(&dir).map_err(|e| RuntimeError::io("creating", dir.display(), e))?;
    let text = serde_json::to_vec_pretty(img).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    crate::store::write_atomic(&dir.join("image.json"), &text)
}

/// Every image.
pub fn list(store: &Store) -> Result<Vec<Image>> {
    let dir = store.root.join("images");
    let mut out: Vec<Image> = fs::read_dir(&dir)
        .map_err(|e| RuntimeError::io("listing", dir.display(), e))?
        .flatten()
        .filter_map(|e| {
            let text = fs::read(e.path().join("image.json")).ok()?;
            serde_json::from_slice(&text).ok()
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The store's lock for changes to images and layers. Once it is held, staging directories
/// left by a killed twill-run are removed.
pub(crate) struct StoreLock {
    _lock: nix::fcntl::Flock<File>,
}

pub(crate) fn lock(store: &Store) -> Result<StoreLock> {
    let lock = crate::store::lock_file(&store.root.join("images.lock"))?;
    let tmp = store.root.join("tmp");
    if let Ok(rd) = fs::read_dir(&tmp) {
        for e in rd.flatten() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    Ok(StoreLock { _lock: lock })
}

/// A directory under `tmp/`, removed when dropped: where an import or commit is assembled.
pub(crate) struct Staging {
    pub dir: PathBuf,
}

impl Staging {
    pub(crate) fn new(store: &Store, _lock: &StoreLock) -> Result<Staging> {
        let dir = store.root.join("tmp").join(&crate::store::new_id()[..16]);
        fs::create_dir_all(&dir).map_err(|e| RuntimeError::io("creating", dir.display(), e))?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Unpacks one layer blob into `staging/layers/<hex>/diff` and checks its digests.
fn stage_layer(
    staging: &Staging,
    label: &str,
    entry: &str,
    blob: Box<dyn Read>,
    blob_digest: Option<&Digest>,
    want_diff: Option<&Digest>,
) -> Result<Digest> {
    // Unpacked under a temporary name: a plain tarball's diff ID is known only at the end.
    let tmp = staging
        .dir
        .join("layers")
        .join(format!("unpacking-{}", &crate::store::new_id()[..16]));
    let diff = tmp.join("diff");
    fs::create_dir_all(&diff).map_err(|e| RuntimeError::io("creating", diff.display(), e))?;
    let (unpacked, got_blob, got_diff) = archive::with_layer(blob, |r| unpack::unpack(r, &diff))
        .map_err(|e| {
            RuntimeError::archive(
                label,
                entry,
                format!("reading the layer: {e} (truncated or corrupt?)"),
            )
        })?;
    let size = unpacked
        .map_err(|e| RuntimeError::archive(label, format!("{entry}: {}", e.entry), e.reason))?;
    if let Some(want) = blob_digest
        && *want != got_blob
    {
        return Err(RuntimeError::archive(
            label,
            entry,
            format!("digest mismatch: expected {want}, got {got_blob}"),
        ));
    }
    if let Some(want) = want_diff
        && *want != got_diff
    {
        return Err(RuntimeError::archive(
            label,
            entry,
            format!("digest mismatch: the config says the layer's tar is {want}, it is {got_diff}"),
        ));
    }
    let info = LayerInfo {
        diff_id: got_diff.to_string(),
        size,
    };
    let info_path = tmp.join("layer.json");
    fs::write(
        &info_path,
        serde_json::to_vec(&info).map_err(|e| RuntimeError::Invalid(e.to_string()))?,
    )
    .map_err(|e| RuntimeError::io("writing", info_path.display(), e))?;
    let dest = staging.dir.join("layers").join(got_diff.hex());
    if !dest.exists() {
        fs::rename(&tmp, &dest).map_err(|e| RuntimeError::io("renaming", tmp.display(), e))?;
    }
    Ok(got_diff)
}

/// Moves staged layers into the store (a layer that is there already stays as it is).
fn publish_layers(store: &Store, staging: &Staging) -> Result<()> {
    let dir = staging.dir.join("layers");
    let Ok(rd) = fs::read_dir(&dir) else {
        return Ok(());
    };
    let layers = store.root.join("layers");
    for e in rd.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("unpacking-") {
            continue;
        }
        let dest = layers.join(&name);
        if dest.exists() {
            continue;
        }
        fs::rename(e.path(), &dest)
            .map_err(|e| RuntimeError::io("storing layer", dest.display(), e))?;
    }
    Ok(())
}

fn has_layer(store: &Store, d: &Digest) -> bool {
    store
        .root
        .join("layers")
        .join(d.hex())
        .join("layer.json")
        .exists()
}

/// What the command line asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// `import`: image archives are recognised, anything else is a rootfs tarball.
    Import,
    /// `load`: only image archives.
    Load,
}

/// `import`/`load PATH [NAME]`: returns the images stored.
pub fn import(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    mode: ImportMode,
) -> Result<Vec<Image>> {
    import_as(store, path, &path.display().to_string(), name, mode)
}

/// `import` of `path`, called `label` in errors (`stdin` for an archive piped in).
pub fn import_as(
    store: &Store,
    path: &Path,
    label: &str,
    name: Option<&str>,
    mode: ImportMode,
) -> Result<Vec<Image>> {
    if let Some(n) = name {
        check_name(n)?;
    }
    let label = label.to_string();
    if !path.exists() {
        return Err(RuntimeError::Invalid(format!(
            "{label}: no such archive: the file does not exist"
        )));
    }
    let lock = lock(store)?;
    let staging = Staging::new(store, &lock)?;
    // A compressed archive (`docker save | gzip`) is decompressed once, so its entries can
    // be read in any order.
    let plain = if path.is_file() {
        decompress_to(path, &staging.dir.join("archive.tar"), &label)?
    } else {
        path.to_path_buf()
    };
    let ar = Archive::open(&plain, &label)?;
    if ar.kind == Kind::Rootfs {
        if mode == ImportMode::Load {
            return Err(RuntimeError::archive(
                &label,
                "/",
                "not an image archive (no manifest.json, no index.json + oci-layout); \
                 a root filesystem tarball is imported with `twill-run import TARBALL NAME`",
            ));
        }
        let name = name.ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "{label} is a root filesystem tarball: give the image a name (`twill-run import TARBALL NAME`)"
            ))
        })?;
        if image_dir(store, name).join("image.json").exists() {
            return Err(RuntimeError::Invalid(format!(
                "image {name} already exists"
            )));
        }
        return import_rootfs(store, &staging, path, &label, name).map(|i| vec![i]);
    }
    let found = ar.images()?;
    if name.is_some() && found.len() != 1 {
        return Err(RuntimeError::Invalid(format!(
            "{label} holds {} images: load it without a name (each keeps its own)",
            found.len()
        )));
    }
    let mut staged: HashSet<Digest> = HashSet::new();
    for img in &found {
        for l in &img.layers {
            if has_layer(store, &l.diff_id) || staged.contains(&l.diff_id) {
                continue;
            }
            let (blob, _) = ar
                .blobs
                .open(&l.entry)
                .map_err(|r| RuntimeError::archive(&label, &l.entry, r))?;
            stage_layer(
                &staging,
                &label,
                &l.entry,
                blob,
                l.blob_digest.as_ref(),
                Some(&l.diff_id),
            )?;
            staged.insert(l.diff_id.clone());
        }
    }
    let mut records = Vec::new();
    for img in &found {
        let config: serde_json::Value = serde_json::from_slice(&img.config).map_err(|e| {
            RuntimeError::archive(
                &label,
                img.config_digest.to_string(),
                format!("bad JSON: {e}"),
            )
        })?;
        RunConfig::of(&config)
            .map_err(|e| RuntimeError::archive(&label, img.config_digest.to_string(), e))?;
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None if img.names.is_empty() => vec![img.config_digest.short().to_string()],
            None => img.names.clone(),
        };
        for n in names {
            check_name(&n).map_err(|e| RuntimeError::archive(&label, "image name", e))?;
            records.push(Image {
                name: n,
                id: img.config_digest.to_string(),
                layers: img.layers.iter().map(|l| l.diff_id.to_string()).collect(),
                config: config.clone(),
                created_unix: crate::store::now_unix(),
            });
        }
    }
    publish_layers(store, &staging)?;
    for r in &records {
        write_record(store, r)?;
    }
    Ok(records)
}

/// Copies `path` to `dest` decompressed when it is gzip or zstd; else returns `path`.
fn decompress_to(path: &Path, dest: &Path, label: &str) -> Result<PathBuf> {
    let mut f = File::open(path).map_err(|e| RuntimeError::io("opening", label, e))?;
    let mut head = [0u8; 4];
    let n = f
        .read(&mut head)
        .map_err(|e| RuntimeError::io("reading", label, e))?;
    if archive::Compression::sniff(&head[..n]) == archive::Compression::None {
        return Ok(path.to_path_buf());
    }
    let f = File::open(path).map_err(|e| RuntimeError::io("opening", label, e))?;
    let mut r =
        archive::decompressed(f).map_err(|e| RuntimeError::io("decompressing", label, e))?;
    let mut out =
        File::create(dest).map_err(|e| RuntimeError::io("creating", dest.display(), e))?;
    std::io::copy(&mut r, &mut out).map_err(|e| {
        RuntimeError::archive(label, "/", format!("decompressing: {e} (truncated?)"))
    })?;
    Ok(dest.to_path_buf())
}

fn import_rootfs(
    store: &Store,
    staging: &Staging,
    path: &Path,
    label: &str,
    name: &str,
) -> Result<Image> {
    let f = File::open(path).map_err(|e| RuntimeError::io("opening", label, e))?;
    let diff = stage_layer(staging, label, "/", Box::new(f), None, None)?;
    let config = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        // Imported root filesystems have no metadata; a shell is what Docker users expect.
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]},
        "history": [{"created_by": format!("twill-run import {}", path.display())}],
    });
    let img = Image {
        name: name.to_string(),
        id: config_id(&config),
        layers: vec![diff.to_string()],
        config,
        created_unix: crate::store::now_unix(),
    };
    publish_layers(store, staging)?;
    write_record(store, &img)?;
    Ok(img)
}

pub(crate) use crate::store::rfc3339;

/// This machine's architecture as image configs name it.
pub(crate) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The digest of a config as serialised.
pub(crate) fn config_id(config: &serde_json::Value) -> String {
    Digest::of(&serde_json::to_vec(config).unwrap_or_default()).to_string()
}

/// `rmi NAME`: removes the name; layers no image uses any more are removed too. An image a
/// container was made from stays until the container is removed.
pub fn remove(store: &Store, name: &str) -> Result<Image> {
    let img = load(store, name)?;
    let lock = lock(store)?;
    if let Some(c) = store
        .list()?
        .iter()
        .find(|c| c.image == img.name || c.image == name)
    {
        return Err(RuntimeError::Invalid(format!(
            "image {} is used by container {} ({}): remove the container first",
            img.name,
            c.name,
            &c.id[..12]
        )));
    }
    let dir = image_dir(store, &img.name);
    fs::remove_dir_all(&dir).map_err(|e| RuntimeError::io("removing", dir.display(), e))?;
    gc_layers(store, &lock)?;
    Ok(img)
}

/// Removes layers no image lists.
fn gc_layers(store: &Store, _lock: &StoreLock) -> Result<()> {
    let used: HashSet<String> = list(store)?
        .iter()
        .flat_map(|i| i.layers.iter())
        .filter_map(|d| Digest::parse(d).ok())
        .map(|d| d.hex().to_string())
        .collect();
    let dir = store.root.join("layers");
    for e in fs::read_dir(&dir)
        .map_err(|e| RuntimeError::io("listing", dir.display(), e))?
        .flatten()
    {
        if !used.contains(e.file_name().to_string_lossy().as_ref()) {
            fs::remove_dir_all(e.path())
                .map_err(|err| RuntimeError::io("removing layer", e.path().display(), err))?;
        }
    }
    Ok(())
}

/// What `commit` records besides the new layer.
pub struct CommitOptions {
    /// Files of the init layer and volume mount points that must not end up in the layer.
    pub paths: Vec<String>,
    /// Owners inside this host range are shifted back to container IDs (`--userns`).
    pub unshift: Option<crate::userns::IdMap>,
    /// The container's command, environment, working directory and user: the new config's.
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: Option<String>,
    /// Which container: its ID.
    pub container: String,
}

/// `commit`: a new image = the base image's layers + the container's upper directory as one
/// more layer (written as a layer tar, hashed, and unpacked like an imported one), with a
/// config whose Cmd is the container's command and a history entry saying so.
pub fn commit(
    store: &Store,
    base: &Image,
    upper: &Path,
    name: &str,
    opts: &CommitOptions,
) -> Result<Image> {
    check_name(name)?;
    let lock = lock(store)?;
    let staging = Staging::new(store, &lock)?;
    let tar_path = staging.dir.join("layer.tar");
    {
        let f = File::create(&tar_path)
            .map_err(|e| RuntimeError::io("creating", tar_path.display(), e))?;
        let mut w = std::io::BufWriter::new(f);
        pack::pack(
            upper,
            &mut w,
            &pack::PackOptions {
                exclude: &opts.paths,
                unshift: opts.unshift,
            },
        )?;
        std::io::Write::flush(&mut w)
            .map_err(|e| RuntimeError::io("writing", tar_path.display(), e))?;
    }
    let f =
        File::open(&tar_path).map_err(|e| RuntimeError::io("opening", tar_path.display(), e))?;
    let label = format!(
        "the upper layer of container {}",
        &opts.container[..12.min(opts.container.len())]
    );
    let diff = stage_layer(&staging, &label, "layer.tar", Box::new(f), None, None)?;
    let mut config = base.config.clone();
    let mut run = base.run_config()?;
    // As Docker's commit: the container's command becomes the image's (its Entrypoint is
    // part of argv already, so the new image has none).
    run.entrypoint = None;
    run.cmd = Some(opts.argv.clone());
    run.env = Some(
        opts.env
            .iter()
            .filter(|e| !e.starts_with("HOSTNAME="))
            .cloned()
            .collect(),
    );
    run.working_dir = Some(opts.workdir.clone());
    run.user = opts.user.clone();
    let obj = config.as_object_mut().ok_or_else(|| {
        RuntimeError::Invalid(format!("image {}: the config is not an object", base.name))
    })?;
    obj.insert(
        "config".into(),
        serde_json::to_value(&run).map_err(|e| RuntimeError::Invalid(e.to_string()))?,
    );
    let mut layers = base.layers.clone();
    layers.push(diff.to_string());
    obj.insert(
        "rootfs".into(),
        serde_json::json!({"type": "layers", "diff_ids": layers}),
    );
    let mut history = obj
        .get("history")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default();
    history.push(serde_json::json!({
        "created": rfc3339(crate::store::now_unix()),
        "created_by": format!("twill-run commit {}: {}", opts.container, opts.argv.join(" ")),
        "comment": "twill-run commit",
    }));
    obj.insert("history".into(), serde_json::Value::Array(history));
    obj.insert("created".into(), rfc3339(crate::store::now_unix()).into());
    let img = Image {
        name: name.to_string(),
        id: config_id(&config),
        layers,
        config,
        created_unix: crate::store::now_unix(),
    };
    publish_layers(store, &staging)?;
    write_record(store, &img)?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_names() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_959_876), "2026-11-29T13:44:36Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for ok in [
            "busybox",
            "localhost/two:latest",
            "a.b/c_d-e:1.0",
            "x@sha256",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", "a//b", "a/../b", "a/./b", "/abs", "a b", "a/"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}

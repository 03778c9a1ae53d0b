//! `save`: images back out as a docker-archive (`manifest.json`, `<digest>.tar` layers,
//! `<digest>.json` config) or an oci-archive (an OCI image layout in a tar), which
//! `podman load` / `docker load` accept. Layers are written from their directories
//! (`pack.rs`), so the config's `rootfs.diff_ids` are those of the tars written.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::digest::{Digest, HashingWriter};
use super::{Image, Staging, lock, pack};
use crate::error::{Result, RuntimeError};
use crate::store::Store;

/// The archive formats `save` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    DockerArchive,
    OciArchive,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "docker-archive" => Ok(Format::DockerArchive),
            "oci-archive" => Ok(Format::OciArchive),
            _ => Err(RuntimeError::Invalid(format!(
                "--format {s:?}: docker-archive or oci-archive"
            ))),
        }
    }
}

struct Packed {
    path: PathBuf,
    digest: Digest,
    size: u64,
}

/// Names as other tools expect them: with a tag.
fn tagged(name: &str) -> String {
    if name.rsplit('/').next().unwrap_or(name).contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// Writes `images` to `out` (a file path, or stdout when None).
pub fn save(store: &Store, images: &[Image], format: Format, out: Option<&Path>) -> Result<()> {
    let lock = lock(store)?;
    let staging = Staging::new(store, &lock)?;
    let mut packed: HashMap<String, Packed> = HashMap::new();
    for img in images {
        for (diff, dir) in img.layers.iter().zip(img.layer_dirs(store)?) {
            if packed.contains_key(diff) {
                continue;
            }
            let path = staging.dir.join(format!("layer{}.tar", packed.len()));
            let f =
                File::create(&path).map_err(|e| RuntimeError::io("creating", path.display(), e))?;
            let mut w = HashingWriter::new(BufWriter::new(f));
            pack::pack(&dir, &mut w, &pack::PackOptions::default())?;
            let (digest, size, mut inner) = w.finish();
            inner
                .flush()
                .map_err(|e| RuntimeError::io("writing", path.display(), e))?;
            packed.insert(diff.clone(), Packed { path, digest, size });
        }
    }
    let target = out.map(|p| p.with_extension("partial"));
    let sink: Box<dyn Write> = match &target {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).map_err(|e| RuntimeError::io("creating", p.display(), e))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut ar = tar::Builder::new(sink);
    let written = match format {
        Format::DockerArchive => write_docker(&mut ar, images, &packed),
        Format::OciArchive => write_oci(&mut ar, images, &packed),
    }
    .and_then(|()| {
        ar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|e| RuntimeError::io("writing", "the archive", e))
    });
    match (written, &target, out) {
        (Ok(()), Some(t), Some(o)) => {
            fs::rename(t, o).map_err(|e| RuntimeError::io("writing", o.display(), e))
        }
        (Ok(()), _, _) => Ok(()),
        (Err(e), t, _) => {
            if let Some(t) = t {
                let _ = fs::remove_file(t);
            }
            Err(e)
        }
    }
}

/// The config with the diff IDs of the tars written.
fn config_for(img: &Image, packed: &HashMap<String, Packed>) -> Result<Vec<u8>> {
    let mut config = img.config.clone();
    let diff_ids: Vec<String> = img
        .layers
        .iter()
        .map(|d| packed[d].digest.to_string())
        .collect();
    let obj = config.as_object_mut().ok_or_else(|| {
        RuntimeError::Invalid(format!("image {}: the config is not an object", img.name))
    })?;
    obj.insert(
        "rootfs".into(),
        serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
    );
    obj.entry("os").or_insert_with(|| "linux".into());
    obj.entry("architecture")
        .or_insert_with(|| super::go_arch().into());
    serde_json::to_vec(&config).map_err(|e| RuntimeError::Invalid(e.to_string()))
}

fn add_bytes<W: Write>(ar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    ar.append_data(&mut h, name, bytes)
        .map_err(|e| RuntimeError::io("writing", name, e))
}

fn add_file<W: Write>(ar: &mut tar::Builder<W>, name: &str, p: &Packed) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(p.size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    let f = File::open(&p.path).map_err(|e| RuntimeError::io("opening", p.path.display(), e))?;
    ar.append_data(&mut h, name, f)
        .map_err(|e| RuntimeError::io("writing", name, e))
}

fn write_docker<W: Write>(
    ar: &mut tar::Builder<W>,
    images: &[Image],
    packed: &HashMap<String, Packed>,
) -> Result<()> {
    let mut done = std::collections::HashSet::new();
    let mut manifest = Vec::new();
    for img in images {
        let mut layers = Vec::new();
        for d in &img.layers {
            let p = &packed[d];
            let name = format!("{}.tar", p.digest.hex());
            if done.insert(name.clone()) {
                add_file(ar, &name, p)?;
            }
            layers.push(name);
        }
        let config = config_for(img, packed)?;
        let config_name = format!("{}.json", Digest::of(&config).hex());
        if done.insert(config_name.clone()) {
            add_bytes(ar, &config_name, &config)?;
        }
        manifest.push(serde_json::json!({
            "Config": config_name,
            "RepoTags": [tagged(&img.name)],
            "Layers": layers,
        }));
    }
    let text = serde_json::to_vec(&manifest).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    add_bytes(ar, "manifest.json", &text)
}

fn write_oci<W: Write>(
    ar: &mut tar::Builder<W>,
    images: &[Image],
    packed: &HashMap<String, Packed>,
) -> Result<()> {
    add_bytes(ar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut done = std::collections::HashSet::new();
    let mut index = Vec::new();
    for img in images {
        let mut layers = Vec::new();
        for d in &img.layers {
            let p = &packed[d];
            let name = format!("blobs/sha256/{}", p.digest.hex());
            if done.insert(name.clone()) {
                add_file(ar, &name, p)?;
            }
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": p.digest.to_string(),
                "size": p.size,
            }));
        }
        let config = config_for(img, packed)?;
        let config_digest = Digest::of(&config);
        let name = format!("blobs/sha256/{}", config_digest.hex());
        if done.insert(name.clone()) {
            add_bytes(ar, &name, &config)?;
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layers,
        }))
        .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let manifest_digest = Digest::of(&manifest);
        let name = format!("blobs/sha256/{}", manifest_digest.hex());
        if done.insert(name.clone()) {
            add_bytes(ar, &name, &manifest)?;
        }
        index.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tagged(&img.name)},
        }));
    }
    let text = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": index}))
        .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    add_bytes(ar, "index.json", &text)
}

//! Reading image archives as they come from the container ecosystem, recognised by content:
//! a docker-archive (`docker save`, `podman save --format docker-archive`: `manifest.json`
//! listing configs, `RepoTags` and layer tars; several images in one archive), an
//! oci-archive (a tar of an OCI image layout) and an OCI image layout directory (`skopeo copy
//! … oci:DIR:tag`). What comes out is, per image, its names, its config blob and its layers
//! with the digests to verify. Layer contents are streamed later by `import`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::{Digest, HashingReader};
use crate::error::{Result, RuntimeError};

/// JSON files of an archive (manifests, configs) are small; a bigger one is refused instead
/// of read into memory.
const MAX_JSON: u64 = 16 << 20;

/// Where the blobs of an archive are.
pub enum Blobs {
    /// Entries of an uncompressed tar file, by their normalised name.
    Tar {
        path: PathBuf,
        entries: HashMap<String, TarEntry>,
    },
    /// Files under a directory (an OCI image layout).
    Dir(PathBuf),
}

/// One entry of an archive tar.
#[derive(Clone, Debug)]
pub struct TarEntry {
    offset: u64,
    size: u64,
    /// A symbolic link's target (docker-archive's `<id>/layer.tar` links to `<digest>.tar`).
    link: Option<String>,
}

/// Normalises an entry name inside an archive: `./` and empty parts dropped; `..` or an
/// absolute name refused.
fn normalise(name: &str) -> std::result::Result<String, String> {
    if name.starts_with('/') {
        return Err(format!("{name:?} is an absolute path"));
    }
    let mut parts = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(format!("{name:?} leaves the archive (`..`)")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("{name:?} names no file"));
    }
    Ok(parts.join("/"))
}

impl Blobs {
    /// Indexes the entries of the tar file `path` (seeking over the data).
    pub fn index_tar(path: &Path) -> Result<Blobs> {
        let label = path.display().to_string();
        let f = File::open(path).map_err(|e| RuntimeError::io("opening", &label, e))?;
        let len = f
            .metadata()
            .map_err(|e| RuntimeError::io("reading", &label, e))?
            .len();
        let mut ar = tar::Archive::new(BufReader::new(f));
        let mut entries = HashMap::new();
        let mut last = String::from("(start of the archive)");
        let iter = ar
            .entries_with_seek()
            .map_err(|e| RuntimeError::archive(&label, &last, e))?;
        for e in iter {
            let e = e.map_err(|e| {
                RuntimeError::archive(&label, &last, format!("reading the next entry: {e}"))
            })?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            last = name.clone();
            let offset = e.raw_file_position();
            let size = e.size();
            if offset + size > len {
                return Err(RuntimeError::archive(
                    &label,
                    &name,
                    format!(
                        "truncated: the entry needs {size} bytes at offset {offset}, the archive has {len}"
                    ),
                ));
            }
            let link = match e.header().entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => e
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                tar::EntryType::Directory => continue,
                _ => None,
            };
            let Ok(key) = normalise(&name) else { continue };
            entries.insert(key, TarEntry { offset, size, link });
        }
        Ok(Blobs::Tar {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Whether the archive has a file `name`.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Blobs::Tar { entries, .. } => normalise(name).is_ok_and(|n| entries.contains_key(&n)),
            Blobs::Dir(d) => normalise(name).is_ok_and(|n| d.join(n).is_file()),
        }
    }

    /// Resolves a tar entry through symbolic and hard links (relative to the link's folder).
    fn tar_entry<'a>(
        entries: &'a HashMap<String, TarEntry>,
        name: &str,
    ) -> std::result::Result<&'a TarEntry, String> {
        let mut key = normalise(name)?;
        for _ in 0..8 {
            let e = entries
                .get(&key)
                .ok_or_else(|| "missing from the archive".to_string())?;
            let Some(target) = &e.link else {
                return Ok(e);
            };
            let base = match key.rsplit_once('/') {
                Some((dir, _)) if !target.starts_with('/') => format!("{dir}/"),
                _ => String::new(),
            };
            // Resolve `..` against the link's folder.
            let joined = format!("{base}{target}");
            let mut parts: Vec<&str> = Vec::new();
            for p in joined.split('/') {
                match p {
                    "" | "." => {}
                    ".." => {
                        parts
                            .pop()
                            .ok_or_else(|| format!("the link to {target:?} leaves the archive"))?;
                    }
                    p => parts.push(p),
                }
            }
            key = parts.join("/");
        }
        Err("too many levels of links".into())
    }

    /// Opens the file `name` for streaming.
    pub fn open(&self, name: &str) -> std::result::Result<(Box<dyn Read>, u64), String> {
        match self {
            Blobs::Tar { path, entries } => {
                let e = Self::tar_entry(entries, name)?;
                let mut f = File::open(path).map_err(|e| format!("reopening the archive: {e}"))?;
                f.seek(SeekFrom::Start(e.offset))
                    .map_err(|e| format!("seeking: {e}"))?;
                Ok((
                    Box::new(BufReader::with_capacity(1 << 20, f).take(e.size)),
                    e.size,
                ))
            }
            Blobs::Dir(d) => {
                let p = d.join(normalise(name)?);
                let f = File::open(&p).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => "missing from the layout".to_string(),
                    _ => format!("opening {}: {e}", p.display()),
                })?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                Ok((Box::new(BufReader::with_capacity(1 << 20, f)), size))
            }
        }
    }

    /// Reads a small (JSON) file whole.
    pub fn read(&self, name: &str) -> std::result::Result<Vec<u8>, String> {
        let (r, size) = self.open(name)?;
        if size > MAX_JSON {
            return Err(format!("{size} bytes is too big for a JSON document"));
        }
        let mut v = Vec::with_capacity(size as usize);
        r.take(MAX_JSON)
            .read_to_end(&mut v)
            .map_err(|e| format!("reading: {e}"))?;
        Ok(v)
    }
}

/// What kind of input a path holds, by content.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    DockerArchive,
    OciArchive,
    OciLayout,
    /// A tar without image metadata: a root filesystem (Docker's `import`).
    Rootfs,
}

/// One layer of an image to import.
#[derive(Clone, Debug)]
pub struct LayerRef {
    /// The file in the archive.
    pub entry: String,
    /// The blob's own digest (OCI descriptors; docker-archive layers have only the diff ID).
    pub blob_digest: Option<Digest>,
    /// The digest of the uncompressed tar (the config's `rootfs.diff_ids`): the layer's key.
    pub diff_id: Digest,
}

/// One image found in an archive.
#[derive(Clone, Debug)]
pub struct FoundImage {
    /// Names from the archive (`RepoTags`, `org.opencontainers.image.ref.name`).
    pub names: Vec<String>,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub layers: Vec<LayerRef>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigRootFs {
    rootfs: RootFs,
}

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Layer media types: the compression itself is recognised from the bytes.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// An opened archive: its kind, where its files are, and a label for errors.
pub struct Archive {
    pub label: String,
    pub kind: Kind,
    pub blobs: Blobs,
}

impl Archive {
    /// Recognises `path`: a directory is an OCI layout; a tar with `manifest.json` a
    /// docker-archive, with `index.json` and `oci-layout` an oci-archive, else a rootfs.
    /// `path` must be an uncompressed tar (the caller decompresses).
    pub fn open(path: &Path, label: &str) -> Result<Archive> {
        if path.is_dir() {
            let blobs = Blobs::Dir(path.to_path_buf());
            // An extracted docker-archive reads like the archive.
            let kind = if blobs.has("manifest.json") {
                Kind::DockerArchive
            } else if blobs.has("index.json") {
                Kind::OciLayout
            } else {
                return Err(RuntimeError::archive(
                    label,
                    "index.json",
                    "missing: a directory must be an OCI image layout (or an extracted docker-archive)",
                ));
            };
            return Ok(Archive {
                label: label.to_string(),
                kind,
                blobs,
            });
        }
        let blobs = Blobs::index_tar(path).map_err(|e| match e {
            RuntimeError::Archive { entry, reason, .. } => {
                RuntimeError::archive(label, entry, reason)
            }
            e => e,
        })?;
        let kind = if blobs.has("manifest.json") {
            Kind::DockerArchive
        } else if blobs.has("index.json") && blobs.has("oci-layout") {
            Kind::OciArchive
        } else {
            Kind::Rootfs
        };
        Ok(Archive {
            label: label.to_string(),
            kind,
            blobs,
        })
    }

    fn err(&self, entry: impl std::fmt::Display, reason: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::archive(&self.label, entry, reason)
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<(T, Vec<u8>)> {
        let bytes = self.blobs.read(name).map_err(|r| self.err(name, r))?;
        let v =
            serde_json::from_slice(&bytes).map_err(|e| self.err(name, format!("bad JSON: {e}")))?;
        Ok((v, bytes))
    }

    /// Every image in the archive.
    pub fn images(&self) -> Result<Vec<FoundImage>> {
        match self.kind {
            Kind::DockerArchive => self.docker_images(),
            Kind::OciArchive | Kind::OciLayout => self.oci_images(),
            Kind::Rootfs => Ok(Vec::new()),
        }
    }

    fn diff_ids(&self, entry: &str, config: &[u8], layers: usize) -> Result<Vec<Digest>> {
        let c: ConfigRootFs = serde_json::from_slice(config)
            .map_err(|e| self.err(entry, format!("not an image config: {e}")))?;
        if c.rootfs.diff_ids.len() != layers {
            return Err(self.err(
                entry,
                format!(
                    "the config lists {} layers (rootfs.diff_ids), the manifest {layers}",
                    c.rootfs.diff_ids.len()
                ),
            ));
        }
        c.rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d).map_err(|r| self.err(entry, r)))
            .collect()
    }

    fn docker_images(&self) -> Result<Vec<FoundImage>> {
        let (entries, _) = self.read_json::<Vec<DockerManifestEntry>>("manifest.json")?;
        if entries.is_empty() {
            return Err(self.err("manifest.json", "lists no image"));
        }
        let mut out = Vec::new();
        for m in entries {
            let config = self
                .blobs
                .read(&m.config)
                .map_err(|r| self.err(&m.config, r))?;
            let diff_ids = self.diff_ids(&m.config, &config, m.layers.len())?;
            // docker-archive names configs `<hex>.json` (or `blobs/sha256/<hex>`): when it
            // does, that is the config's digest.
            let config_digest = Digest::of(&config);
            let stem = m
                .config
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".json");
            if stem.len() == 64
                && stem.bytes().all(|b| b.is_ascii_hexdigit())
                && stem != config_digest.hex()
            {
                return Err(self.err(
                    &m.config,
                    format!("digest mismatch: the file hashes to {config_digest}"),
                ));
            }
            let layers =
                m.layers
                    .iter()
                    .zip(diff_ids)
                    .map(|(entry, diff_id)| {
                        if !self.blobs.has(entry) {
                            return Err(self
                                .err(entry, "missing from the archive (named by manifest.json)"));
                        }
                        Ok(LayerRef {
                            entry: entry.clone(),
                            blob_digest: None,
                            diff_id,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
            out.push(FoundImage {
                names: m.repo_tags.unwrap_or_default(),
                config,
                config_digest,
                layers,
            });
        }
        Ok(out)
    }

    fn blob_name(&self, d: &Descriptor, from: &str) -> Result<(String, Digest)> {
        let digest = Digest::parse(&d.digest).map_err(|r| self.err(from, r))?;
        Ok((format!("blobs/sha256/{}", digest.hex()), digest))
    }

    /// Reads a blob and checks its digest.
    fn verified_blob(&self, d: &Descriptor, from: &str) -> Result<(String, Vec<u8>)> {
        let (name, digest) = self.blob_name(d, from)?;
        let bytes = self
            .blobs
            .read(&name)
            .map_err(|r| self.err(&name, format!("{r} (named by {from})")))?;
        let got = Digest::of(&bytes);
        if got != digest {
            return Err(self.err(
                &name,
                format!("digest mismatch: expected {digest}, got {got}"),
            ));
        }
        Ok((name, bytes))
    }

    fn oci_images(&self) -> Result<Vec<FoundImage>> {
        let (index, _) = self.read_json::<Index>("index.json")?;
        let mut out = Vec::new();
        for d in &index.manifests {
            let name = d
                .annotations
                .get("org.opencontainers.image.ref.name")
                .or_else(|| d.annotations.get("io.containerd.image.name"))
                .cloned();
            out.push(self.oci_image(d, "index.json", name, 0)?);
        }
        if out.is_empty() {
            return Err(self.err("index.json", "lists no image"));
        }
        Ok(out)
    }

    fn oci_image(
        &self,
        d: &Descriptor,
        from: &str,
        name: Option<String>,
        depth: u32,
    ) -> Result<FoundImage> {
        let (entry, bytes) = self.verified_blob(d, from)?;
        let is_index = INDEX_TYPES.contains(&d.media_type.as_str());
        if is_index {
            if depth > 4 {
                return Err(self.err(&entry, "indexes nested too deeply"));
            }
            let idx: Index = serde_json::from_slice(&bytes)
                .map_err(|e| self.err(&entry, format!("bad index: {e}")))?;
            let pick = idx
                .manifests
                .iter()
                .find(|m| {
                    m.platform.as_ref().is_none_or(|p| {
                        p.os == "linux"
                            && p.architecture
                                == std::env::consts::ARCH
                                    .replace("x86_64", "amd64")
                                    .replace("aarch64", "arm64")
                    })
                })
                .ok_or_else(|| self.err(&entry, "no manifest for this platform"))?;
            return self.oci_image(pick, &entry, name, depth + 1);
        }
        if !d.media_type.is_empty() && !MANIFEST_TYPES.contains(&d.media_type.as_str()) {
            return Err(self.err(
                &entry,
                format!("unknown media type {:?} (named by {from})", d.media_type),
            ));
        }
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| self.err(&entry, format!("bad manifest: {e}")))?;
        if !m.media_type.is_empty() && !MANIFEST_TYPES.contains(&m.media_type.as_str()) {
            return Err(self.err(&entry, format!("unknown media type {:?}", m.media_type)));
        }
        if !CONFIG_TYPES.contains(&m.config.media_type.as_str()) {
            return Err(self.err(
                &entry,
                format!("unknown config media type {:?}", m.config.media_type),
            ));
        }
        let (config_entry, config) = self.verified_blob(&m.config, &entry)?;
        let diff_ids = self.diff_ids(&config_entry, &config, m.layers.len())?;
        let mut layers = Vec::new();
        for (l, diff_id) in m.layers.iter().zip(diff_ids) {
            if !LAYER_TYPES.contains(&l.media_type.as_str()) {
                return Err(self.err(
                    &entry,
                    format!("unknown layer media type {:?} ({})", l.media_type, l.digest),
                ));
            }
            let (name, digest) = self.blob_name(l, &entry)?;
            if !self.blobs.has(&name) {
                return Err(self.err(
                    &name,
                    format!("missing from the archive (named by {entry})"),
                ));
            }
            layers.push(LayerRef {
                entry: name,
                blob_digest: Some(digest),
                diff_id,
            });
        }
        Ok(FoundImage {
            names: name.into_iter().collect(),
            config_digest: Digest::of(&config),
            config,
            layers,
        })
    }
}

/// The compression of a stream, from its first bytes.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A reader that decompresses `r` as its first bytes say.
pub fn decompressed<'a>(r: impl Read + 'a) -> std::io::Result<Box<dyn Read + 'a>> {
    use std::io::BufRead;
    let mut b = BufReader::with_capacity(1 << 20, r);
    let kind = Compression::sniff(b.fill_buf()?);
    Ok(match kind {
        Compression::None => Box::new(b),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(b)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(b)?),
    })
}

/// Streams a layer blob: hashes the blob as stored and the tar inside it.
pub fn with_layer<T>(
    blob: Box<dyn Read>,
    f: impl FnOnce(&mut dyn Read) -> T,
) -> std::io::Result<(T, Digest, Digest)> {
    let mut raw = HashingReader::new(blob);
    let (out, diff) = {
        let dec = decompressed(&mut raw)?;
        let mut tar = HashingReader::new(dec);
        let out = f(&mut tar);
        let (diff, _) = tar.finish()?;
        (out, diff)
    };
    let (blob_digest, _) = raw.finish()?;
    Ok((out, blob_digest, diff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_stay_inside() {
        assert_eq!(normalise("./a//b").unwrap(), "a/b");
        assert!(normalise("../x").is_err());
        assert!(normalise("/etc/passwd").is_err());
        let mut entries = HashMap::new();
        entries.insert(
            "t.tar".to_string(),
            TarEntry {
                offset: 0,
                size: 1,
                link: None,
            },
        );
        entries.insert(
            "id/layer.tar".to_string(),
            TarEntry {
                offset: 0,
                size: 0,
                link: Some("../t.tar".into()),
            },
        );
        entries.insert(
            "bad".to_string(),
            TarEntry {
                offset: 0,
                size: 0,
                link: Some("../../etc".into()),
            },
        );
        assert_eq!(Blobs::tar_entry(&entries, "id/layer.tar").unwrap().size, 1);
        assert!(Blobs::tar_entry(&entries, "bad").is_err());
    }

    #[test]
    fn compression_is_recognised_from_the_bytes() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello").unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&b"hello"[..], 1).unwrap();
        for (bytes, kind) in [
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
            (b"hello".to_vec(), Compression::None),
        ] {
            assert_eq!(Compression::sniff(&bytes), kind);
            let mut out = String::new();
            decompressed(&bytes[..])
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert_eq!(out, "hello");
        }
    }
}

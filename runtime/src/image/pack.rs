//! Writes a layer directory (overlayfs form) as a layer tar (image form): a character device
//! 0/0 becomes `.wh.NAME`, an opaque directory gets `.wh..wh..opq`. Entries are sorted and
//! carry the files' own times, so the same directory always gives the same tar (and digest).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::unpack::{OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX, lget_xattr};
use crate::error::{Result, RuntimeError};
use crate::userns::IdMap;

/// What to leave out and how to map owners.
#[derive(Default)]
pub struct PackOptions<'a> {
    /// Absolute container paths not to write (the init layer's files, volume mount points).
    pub exclude: &'a [String],
    /// Owners inside this host range are written as container IDs (`--userns` containers).
    pub unshift: Option<IdMap>,
}

/// xattrs worth carrying in a layer (file capabilities, e.g. ping's).
const KEPT_XATTRS: &[&str] = &["security.capability"];

/// Writes `dir` as a tar to `out`.
pub fn pack(dir: &Path, out: impl Write, opts: &PackOptions) -> Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links = HashMap::new();
    walk(&mut b, dir, "", opts, &mut links)?;
    b.into_inner()
        .map_err(|e| RuntimeError::io("finishing layer tar of", dir.display(), e))?;
    Ok(())
}

fn header(meta: &fs::Metadata, kind: tar::EntryType, opts: &PackOptions) -> tar::Header {
    let shift = |id: u32| opts.unshift.and_then(|m| m.to_container(id)).unwrap_or(id);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(shift(meta.uid()) as u64);
    h.set_gid(shift(meta.gid()) as u64);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    h
}

fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &str,
    opts: &PackOptions,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<()> {
    let io = |op, p: &Path, e| RuntimeError::io(op, p.display(), e);
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io("reading", dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| io("reading", dir, e))?;
    names.sort();
    for name in names {
        let name_s = name.to_string_lossy();
        let path_in = if rel.is_empty() {
            name_s.to_string()
        } else {
            format!("{rel}/{name_s}")
        };
        if opts
            .exclude
            .iter()
            .any(|x| x.trim_start_matches('/') == path_in)
        {
            continue;
        }
        let full = dir.join(&name);
        let meta = fs::symlink_metadata(&full).map_err(|e| io("reading", &full, e))?;
        let ft = meta.file_type();
        let add = |b: &mut tar::Builder<W>,
                   h: &mut tar::Header,
                   p: &str,
                   data: &mut dyn std::io::Read| {
            b.append_data(h, p, data)
                .map_err(|e| RuntimeError::io("writing layer entry", p, e))
        };
        if ft.is_char_device() && meta.rdev() == 0 {
            let wh = match path_in.rsplit_once('/') {
                Some((parent, n)) => format!("{parent}/{WHITEOUT_PREFIX}{n}"),
                None => format!("{WHITEOUT_PREFIX}{path_in}"),
            };
            let mut h = header(&meta, tar::EntryType::Regular, opts);
            h.set_mode(0o600);
            add(b, &mut h, &wh, &mut std::io::empty())?;
        } else if ft.is_dir() {
            let mut h = header(&meta, tar::EntryType::Directory, opts);
            add(b, &mut h, &format!("{path_in}/"), &mut std::io::empty())?;
            if lget_xattr(&full, OPAQUE_XATTR).as_deref() == Some(b"y") {
                let mut h = header(&meta, tar::EntryType::Regular, opts);
                h.set_mode(0o600);
                add(
                    b,
                    &mut h,
                    &format!("{path_in}/{OPAQUE_MARKER}"),
                    &mut std::io::empty(),
                )?;
            }
            walk(b, &full, &path_in, opts, links)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(|e| io("reading link", &full, e))?;
            let mut h = header(&meta, tar::EntryType::Symlink, opts);
            b.append_link(&mut h, &path_in, &target)
                .map_err(|e| RuntimeError::io("writing layer entry", &path_in, e))?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    let mut h = header(&meta, tar::EntryType::Link, opts);
                    b.append_link(&mut h, &path_in, first)
                        .map_err(|e| RuntimeError::io("writing layer entry", &path_in, e))?;
                    continue;
                }
                links.insert(key, path_in.clone());
            }
            let xattrs: Vec<(String, Vec<u8>)> = KEPT_XATTRS
                .iter()
                .filter_map(|k| lget_xattr(&full, k).map(|v| (format!("SCHILY.xattr.{k}"), v)))
                .collect();
            if !xattrs.is_empty() {
                b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    .map_err(|e| RuntimeError::io("writing layer entry", &path_in, e))?;
            }
            let mut h = header(&meta, tar::EntryType::Regular, opts);
            h.set_size(meta.len());
            let mut f = fs::File::open(&full).map_err(|e| io("opening", &full, e))?;
            add(b, &mut h, &path_in, &mut f)?;
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else if ft.is_fifo() {
                tar::EntryType::Fifo
            } else {
                continue; // sockets are not kept in images
            };
            let mut h = header(&meta, kind, opts);
            let dev = meta.rdev();
            let _ = h.set_device_major(nix::sys::stat::major(dev) as u32);
            let _ = h.set_device_minor(nix::sys::stat::minor(dev) as u32);
            add(b, &mut h, &path_in, &mut std::io::empty())?;
        }
    }
    Ok(())
}

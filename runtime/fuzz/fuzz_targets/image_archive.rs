//! What `twill-run image load` reads: a docker-archive, an oci-archive or a plain root
//! filesystem tar, on arbitrary bytes (the tar itself, its manifest or index, the image
//! configs and the layers inside, possibly compressed). Nothing may panic.
//! Run: `cd runtime/fuzz && cargo +nightly fuzz run -s none image_archive`.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use twill_runtime::image::archive::{Archive, with_layer};
use twill_runtime::image::config::RunConfig;

/// The most of a layer read per input: a compressed bomb must not stall the fuzzer.
const LAYER_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    let Ok(archive) = Archive::open(file.path(), "fuzz") else {
        return;
    };
    let Ok(images) = archive.images() else {
        return;
    };
    for img in images {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&img.config)
            && let Ok(cfg) = RunConfig::of(&v)
        {
            let _ = cfg.ports();
        }
        for layer in &img.layers {
            if let Ok((blob, _)) = archive.blobs.open(&layer.entry) {
                let _ = with_layer(blob, |r| {
                    std::io::copy(&mut r.take(LAYER_BYTES), &mut std::io::sink())
                });
            }
        }
    }
});

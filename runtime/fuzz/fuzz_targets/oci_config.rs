//! What twill-oci and twill-run read from their callers: an OCI bundle's config.json (with
//! its mounts, cgroup resources and seccomp profile), mount destinations resolved inside the
//! container's root, ID maps, network modes, signals and digests. Nothing may panic, and a
//! mount destination never resolves outside the root, whatever symbolic links the root holds.
//! Run: `cd runtime/fuzz && cargo +nightly fuzz run -s none oci_config`.
#![no_main]

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use twill_runtime::image::digest::Digest;
use twill_runtime::network::NetMode;
use twill_runtime::oci::spec::Spec;
use twill_runtime::oci::{cgroups, mounts, parse_signal, seccomp};
use twill_runtime::userns::IdMap;

/// A container root whose links point everywhere a malicious image would point them.
fn root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc/sub")).expect("directories in the temporary root");
        for (link, target) in [
            ("abs", "/"),
            ("up", "../../.."),
            ("etc/sub/up", "../../../../etc"),
            ("loop", "loop"),
            ("a", "b"),
            ("b", "a/../up/x"),
            ("proc", "/proc/self/root"),
        ] {
            symlink(target, r.join(link)).expect("links in the temporary root");
        }
        dir
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<Spec>(data) {
        let _ = spec.check();
        let _ = spec.user_namespace();
        for kind in ["pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"] {
            let _ = spec.new_namespace(kind);
        }
        for m in &spec.mounts {
            let _ = mounts::parse_options(&m.options);
        }
        if let Some(r) = &spec.linux.resources {
            let _ = cgroups::limits(r);
            let _ = r.unsupported();
        }
        if let Some(p) = &spec.linux.seccomp {
            let _ = seccomp::compile(p);
        }
    }
    let text = String::from_utf8_lossy(data);
    let root = root();
    if let Ok(p) = mounts::resolve_in_root(root, &text) {
        assert!(p.starts_with(root), "{text:?} resolved to {}", p.display());
    }
    let _ = IdMap::parse(&text);
    let _ = NetMode::parse(&text);
    let _ = parse_signal(&text);
    let _ = Digest::parse(&text);
});

//! Builds the C shim against intel-ipsec-mb's header when the header is there (Debian:
//! `libipsec-mb-dev`). Without it the crate builds anyway and reports the library as absent at
//! run time: twilld then seals with ring. The library itself is opened at run time (dlopen),
//! so no build links it and no binary depends on it.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(twill_imb)");
    println!("cargo::rerun-if-changed=csrc/shim.c");
    println!("cargo::rerun-if-env-changed=IPSEC_MB_INCLUDE_DIR");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        return;
    }
    let include = std::env::var_os("IPSEC_MB_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let header = include.join("intel-ipsec-mb.h");
    println!("cargo::rerun-if-changed={}", header.display());
    if !header.exists() {
        println!(
            "cargo::warning=intel-ipsec-mb.h not found in {} (Debian: apt install libipsec-mb-dev; \
             or set IPSEC_MB_INCLUDE_DIR): twilld's wireguard backend will use ring's \
             ChaCha20-Poly1305 only",
            include.display()
        );
        return;
    }
    cc::Build::new()
        .file("csrc/shim.c")
        .include(&include)
        .warnings(true)
        .compile("twill_imb_shim");
    println!("cargo::rustc-link-lib=dylib=dl");
    println!("cargo::rustc-cfg=twill_imb");
}

//! `bench cni` and `bench runtime`: the benchmarks that live in the source tree (`cargo bench`
//! of the CNI plugin, `scripts/bench-runtime`), run from there with their output passed
//! through.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::BenchKind;

/// The source tree this binary was built in (`<repo>/target/<profile>/twill-lab`), for the
/// benchmarks that live there.
fn source_tree() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating twill-lab")?;
    exe.ancestors()
        .nth(3)
        .filter(|d| d.join("Cargo.toml").exists() && d.join("cni-plugin").is_dir())
        .map(Path::to_path_buf)
        .context("`bench cni` and `bench runtime` run benchmarks from the source tree: run the twill-lab built in a git checkout (target/release/twill-lab)")
}

/// Runs the CNI or runtime benchmark of the source tree, passing its output through.
pub fn bench_other(kind: BenchKind, runs: Option<usize>) -> anyhow::Result<bool> {
    let root = source_tree()?;
    let mut c = match kind {
        BenchKind::Cni => {
            let mut c = Command::new("cargo");
            c.args([
                "bench",
                "--locked",
                "-p",
                "twill-cni",
                "--bench",
                "cni_add_del",
                "--",
            ]);
            if let Some(n) = runs {
                c.args(["--seq", &n.max(1).to_string()]);
            }
            c
        }
        BenchKind::Runtime => {
            let mut c = Command::new(root.join("scripts/bench-runtime"));
            if let Some(n) = runs {
                c.arg(n.max(1).to_string());
            }
            c
        }
        BenchKind::Network => bail!("the network benchmark is not delegated"),
    };
    c.current_dir(&root).stdin(Stdio::null());
    let status = c
        .status()
        .with_context(|| format!("running the {kind:?} benchmark in {}", root.display()))?;
    Ok(status.success())
}

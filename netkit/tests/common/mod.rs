//! Shared by netkit's own namespace tests: each test's namespaces carry a unique prefix and
//! are deleted when the guard drops, also when the test panics.

#![allow(dead_code)]

use twill_netkit::Netns;

/// True when the test can touch the kernel (root); otherwise says why it is skipped. Under
/// CI (`CI=true`) a missing precondition is a failure, not a skip.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: needs root (CI=true: preconditions must hold)");
    eprintln!("skipping {test}: needs root");
    false
}

/// One named namespace `twnk-<tag>-<pid>`, with `lo` up, deleted on drop.
pub struct TestNs {
    pub ns: Netns,
    name: String,
}

impl TestNs {
    pub fn new(tag: &str) -> TestNs {
        let name = format!("twnk-{tag}-{}", std::process::id());
        // A leftover of an earlier run with the same PID would make create fail with EEXIST.
        let _ = Netns::delete(&name);
        let ns = Netns::create(&name).expect("creating test netns");
        let guard = TestNs { ns, name };
        guard
            .ns
            .run(|nl| async move {
                let lo = nl.require_link("lo").await?;
                nl.set_up(lo.index).await
            })
            .expect("setting lo up in test netns");
        guard
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if let Err(e) = Netns::delete(&self.name) {
            eprintln!("deleting test netns {}: {e}", self.name);
        }
    }
}

//! CNI versions: what twill speaks, and picking the version of a request.

use crate::error::{CniError, CniResult, INCOMPATIBLE_VERSION};

/// Every version twill can answer in.
pub const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest version.
pub const LATEST: &str = "1.1.0";

/// Whether results in `v` carry `ips[].version` (0.3.0 to 0.4.0; removed in 1.0.0).
pub fn has_ip_version_field(v: &str) -> bool {
    v.starts_with("0.") && !has_ip4_ip6_objects(v)
}

/// Whether results in `v` are the old shape with one `ip4` and one `ip6` object and no
/// interfaces (0.1.0 and 0.2.0).
pub fn has_ip4_ip6_objects(v: &str) -> bool {
    v == "0.1.0" || v == "0.2.0"
}

/// Whether `v` is 1.1.0 or newer (interface MTU, STATUS, GC).
pub fn at_least_1_1(v: &str) -> bool {
    v == "1.1.0"
}

/// The version to answer in: the request's `cniVersion`, which the spec makes the result's.
/// A `cniVersions` list (1.1, a key of the network configuration list) is the runtime's to
/// choose from before it calls the plugin; answering in another version than the one asked
/// breaks runtimes that cannot read it (libcni up to 1.1: "unsupported CNI result version").
pub fn negotiate(cni_version: &str) -> CniResult<String> {
    let known = SUPPORTED.iter().find(|s| **s == cni_version);
    known.map(|v| v.to_string()).ok_or_else(|| {
        CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version {cni_version:?}: twill supports {}",
                SUPPORTED.join(", ")
            ),
        )
    })
}

/// Refuses a command the request's version does not have (CHECK came in 0.4.0, STATUS and
/// GC in 1.1.0), as the reference plugins' `skel` does.
pub fn allows(cni_version: &str, command: &str) -> CniResult<()> {
    let since = match command {
        "CHECK" => "0.4.0",
        "STATUS" | "GC" => "1.1.0",
        _ => return Ok(()),
    };
    let pos = |v: &str| SUPPORTED.iter().position(|s| *s == v);
    if pos(cni_version) < pos(since) {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("config version {cni_version} does not allow {command} (it came in {since})"),
        ));
    }
    Ok(())
}

/// The VERSION answer. Reads nothing but `cniVersion` from stdin, and tolerates even that
/// being absent: runtimes probe with dummy environments and drop networks whose plugin fails.
pub fn version_answer(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        })
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string());
    serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED}).to_string()
}

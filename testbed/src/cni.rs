//! The twill CNI network of a lab host: the plugin's config as a runtime hands it over on
//! stdin, and the conflist a runtime (twill-run, podman) finds in its config directory.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{LabError, Result};

/// The network's name.
pub const NETWORK_NAME: &str = "twill";
/// The CNI version the configs declare.
pub const CNI_VERSION: &str = "1.0.0";

/// The twill plugin's entry: where twilld's subnet file and the IPAM store are.
fn twill_plugin(subnet_file: &Path, ipam_dir: &Path) -> Value {
    json!({"type": "twill", "subnetFile": subnet_file, "dataDir": ipam_dir})
}

/// The single-plugin network config of twill alone, as the plugin reads it from stdin.
pub fn plugin_config(subnet_file: &Path, ipam_dir: &Path) -> Value {
    let mut conf = twill_plugin(subnet_file, ipam_dir);
    conf["cniVersion"] = CNI_VERSION.into();
    conf["name"] = NETWORK_NAME.into();
    conf
}

/// The conflist: twill, then portmap (for `-p`).
pub fn conflist(subnet_file: &Path, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION, "name": NETWORK_NAME,
        "plugins": [
            twill_plugin(subnet_file, ipam_dir),
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// Writes [`conflist`] to `<conf_dir>/10-twill.conflist` and returns that path.
pub fn write_conflist(conf_dir: &Path, subnet_file: &Path, ipam_dir: &Path) -> Result<PathBuf> {
    let path = conf_dir.join(format!("10-{NETWORK_NAME}.conflist"));
    let text = serde_json::to_vec_pretty(&conflist(subnet_file, ipam_dir))
        .map_err(|e| LabError::Invalid(format!("serializing the conflist: {e}")))?;
    std::fs::write(&path, text)
        .map_err(|e| LabError::io("writing", path.display().to_string(), e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_chains_the_plugin_config_with_portmap() {
        let (subnet, ipam) = (Path::new("/run/h1/subnet.env"), Path::new("/run/h1/ipam"));
        let single = plugin_config(subnet, ipam);
        assert_eq!(single["type"], "twill");
        assert_eq!(single["name"], NETWORK_NAME);
        assert_eq!(single["subnetFile"], "/run/h1/subnet.env");
        let list = conflist(subnet, ipam);
        assert_eq!(list["plugins"][0]["dataDir"], "/run/h1/ipam");
        assert_eq!(list["plugins"][1]["type"], "portmap");
        let dir = tempfile::tempdir().unwrap();
        let path = write_conflist(dir.path(), subnet, ipam).unwrap();
        assert_eq!(path.file_name().unwrap(), "10-twill.conflist");
        let back: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, list);
    }
}

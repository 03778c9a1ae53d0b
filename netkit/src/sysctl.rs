//! Reading and writing `/proc/sys` keys. `/proc/sys/net` shows the network namespace of the
//! calling thread, so call these inside [`crate::Netns::enter`] to reach another namespace.

use std::fs;
use std::path::PathBuf;

use crate::error::{Error, Result};

fn key_path(key: &str) -> Result<PathBuf> {
    let ok = !key.is_empty()
        && !key.starts_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !ok {
        return Err(Error::Invalid(format!(
            "invalid sysctl key {key:?}: expected a dotted name like net.ipv4.ip_forward"
        )));
    }
    // Dotted form (net.ipv4.conf.eth0.forwarding); interface names with dots must use '/'.
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Reads a sysctl value, trimmed.
pub fn read(key: &str) -> Result<String> {
    let path = key_path(key)?;
    fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io("reading sysctl", key, e))
}

/// Writes a sysctl value.
pub fn write(key: &str, value: &str) -> Result<()> {
    let path = key_path(key)?;
    fs::write(&path, value).map_err(|e| Error::io("writing sysctl", format!("{key}={value}"), e))
}

/// Writes `value` only when the current value differs (a read-only /proc/sys that already
/// holds the right value is then not an error). Returns whether it wrote.
pub fn ensure(key: &str, value: &str) -> Result<bool> {
    if read(key)? == value {
        return Ok(false);
    }
    write(key, value)?;
    Ok(true)
}

/// The per-interface key `net/<family>/conf/<ifname>/<name>` in the '/' form, which keeps
/// interface names with dots (`flannel-v6.1`) intact. `family` is `ipv4` or `ipv6`.
pub fn conf_key(family: &str, ifname: &str, name: &str) -> String {
    format!("net/{family}/conf/{ifname}/{name}")
}

//! Reading and writing `/proc/sys` keys. `/proc/sys/net` shows the network namespace of the
//! calling thread, so call these inside [`crate::Netns::enter`] to reach another namespace.

use std::fs;
use std::path::PathBuf;

use crate::error::{Error, Result};

fn key_path(key: &str) -> Result<PathBuf> {
    let rel = relative_path(key);
    // Checked on the path, not the key: in the dotted form "//" becomes a ".." component.
    let ok = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return Err(Error::Invalid(format!(
            "invalid sysctl key {key:?}: expected a dotted name like net.ipv4.ip_forward"
        )));
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// The key as a path under /proc/sys, with sysctl(8)'s rule: the first separator decides the
/// form. A key whose first separator is '/' (`net/ipv4/conf/eth0.100/forwarding`) is a path
/// already; in the dotted form '.' separates and '/' stands for a dot inside a component, so
/// `net.ipv4.conf.eth0/100.forwarding` is the VLAN device `eth0.100`'s key.
fn relative_path(key: &str) -> String {
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'.' => key
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                other => other,
            })
            .collect(),
        _ => key.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_map_slashes_to_dots_of_interface_names() {
        let p = |k: &str| key_path(k).map(|p| p.display().to_string());
        assert_eq!(
            p("net.ipv4.conf.eth0/100.forwarding").ok().as_deref(),
            Some("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        assert_eq!(
            p("net.ipv4.ip_forward").ok().as_deref(),
            Some("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            p("net/ipv6/conf/flannel-v6.1/accept_ra").ok().as_deref(),
            Some("/proc/sys/net/ipv6/conf/flannel-v6.1/accept_ra")
        );
        assert_eq!(
            p(&conf_key("ipv4", "eth0.100", "rp_filter"))
                .ok()
                .as_deref(),
            Some("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn keys_never_leave_proc_sys() {
        for bad in [
            "/etc/passwd",
            "net/../../etc/passwd",
            "net.ipv4.conf.eth0/../x",
            "net.ipv4.conf.//.x",
            "",
        ] {
            assert!(key_path(bad).is_err(), "{bad:?} was accepted");
        }
    }
}

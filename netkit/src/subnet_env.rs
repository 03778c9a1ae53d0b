//! `/run/flannel/subnet.env`, the file twilld (like flanneld) writes and the CNI plugin reads.
//! One parser and one writer for the whole project, byte-compatible with Flannel's.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};

/// The default location, as Flannel's.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// The contents of a subnet file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the whole pod network.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET`: this node's subnet, written as its first address (`10.5.72.1/24`).
    pub subnet: Ipv4Net,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether the agent masquerades (then the CNI plugin need not).
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The node subnet's first usable address: the gateway on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    /// Parses the file's text. Unknown variables (e.g. the IPv6 pair) are ignored.
    pub fn parse(text: &str) -> Result<SubnetEnv> {
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        let mut ipmasq = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(bad(n, line, "expected KEY=VALUE"));
            };
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "FLANNEL_NETWORK" => {
                    network = Some(
                        value
                            .parse::<Ipv4Net>()
                            .map_err(|_| bad(n, line, "not an IPv4 CIDR"))?
                            .trunc(),
                    )
                }
                "FLANNEL_SUBNET" => {
                    subnet = Some(
                        value
                            .parse::<Ipv4Net>()
                            .map_err(|_| bad(n, line, "not an IPv4 CIDR"))?,
                    )
                }
                "FLANNEL_MTU" => {
                    let m: u32 = value.parse().map_err(|_| bad(n, line, "not a number"))?;
                    if !(68..=65535).contains(&m) {
                        return Err(bad(n, line, "MTU must be between 68 and 65535"));
                    }
                    mtu = Some(m)
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(n, line, "expected true or false")),
                    })
                }
                _ => {}
            }
        }
        let missing = |k: &str| Error::Invalid(format!("subnet file: {k} is missing"));
        let subnet = subnet.ok_or_else(|| missing("FLANNEL_SUBNET"))?;
        if subnet.prefix_len() > 30 {
            return Err(Error::Invalid(format!(
                "subnet file: FLANNEL_SUBNET={subnet} is too small for a gateway and containers"
            )));
        }
        Ok(SubnetEnv {
            network: network.ok_or_else(|| missing("FLANNEL_NETWORK"))?,
            subnet: subnet.trunc(),
            mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
            ipmasq: ipmasq.unwrap_or(false),
        })
    }

    /// Reads and parses a subnet file.
    pub fn read(path: &Path) -> Result<SubnetEnv> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("reading subnet file", path.display().to_string(), e))?;
        SubnetEnv::parse(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// The file's text exactly as Flannel writes it.
    pub fn render(&self) -> String {
        let sub = Ipv4Net::new(self.gateway(), self.subnet.prefix_len()).unwrap_or(self.subnet);
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network, sub, self.mtu, self.ipmasq
        )
    }

    /// Writes the file atomically (temp file + rename), mode 0644, creating the directory.
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("creating directory", dir.display().to_string(), e))?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| Error::io("creating", tmp.display().to_string(), e))?;
        f.write_all(self.render().as_bytes())
            .and_then(|_| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("writing", tmp.display().to_string(), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::io("renaming into place", path.display().to_string(), e))
    }
}

fn bad(line_no: usize, line: &str, why: &str) -> Error {
    Error::Invalid(format!("subnet file line {}: {line:?}: {why}", line_no + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn round_trips_flannels_format_byte_for_byte() {
        let env = SubnetEnv::parse(FLANNEL).unwrap();
        assert_eq!(env.subnet.to_string(), "10.5.72.0/24");
        assert_eq!(env.gateway(), Ipv4Addr::new(10, 5, 72, 1));
        assert_eq!(env.render(), FLANNEL);
    }

    #[test]
    fn accepts_ipv6_lines_and_export_and_quotes() {
        let text = "export FLANNEL_NETWORK=\"10.5.0.0/16\"\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let env = SubnetEnv::parse(text).unwrap();
        assert!(env.ipmasq);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            (
                "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\n",
                "FLANNEL_NETWORK is missing",
            ),
            (
                "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=banana\nFLANNEL_MTU=1\n",
                "not an IPv4 CIDR",
            ),
            (
                "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_MTU=12\n",
                "MTU must be",
            ),
            ("garbage\n", "expected KEY=VALUE"),
            (
                "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/32\nFLANNEL_MTU=1450\n",
                "too small",
            ),
            ("FLANNEL_IPMASQ=yes\n", "expected true or false"),
        ];
        for (text, want) in cases {
            let err = SubnetEnv::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}

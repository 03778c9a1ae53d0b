//! `/run/flannel/subnet.env`, the file twilld (like flanneld) writes and the CNI plugin reads.
//! One parser and one writer for the whole project, byte-compatible with Flannel's: the IPv4
//! pair when IPv4 is on, the IPv6 pair when IPv6 is on, then MTU and IPMASQ.
//!
//! Both readers, the whole file's ([`SubnetEnv::parse_noting`]: the CNI plugin, `twilld
//! status`) and this node's subnets alone ([`SubnetEnv::parse_subnets`]: twilld keeping its
//! subnet), take its lines by one rule:
//! - a line is `KEY=VALUE`, after an optional `export `, with the spaces around key and value
//!   dropped; blank lines and lines starting with `#` are comments;
//! - a value in a pair of double or single quotes is read without them, as flanneld reads the
//!   file back to keep its subnet (godotenv) and a shell sourcing it would. A lone or
//!   unbalanced quote stays, and the value is then no CIDR. (Flannel's CNI plugin takes a
//!   value as written: a quoted one is an error there.)
//! - unknown variables are ignored, and so is a line without `=`, with a warning (a known
//!   variable without a value is an error to the whole file's reader): Flannel's CNI plugin
//!   skips such a line;
//! - a variable given twice counts with its last value.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::error::{Error, Result};

/// The default location, as Flannel's.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// One family's pair of lines: the whole pod network and this node's subnet of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetPair<N> {
    /// `FLANNEL_NETWORK` / `FLANNEL_IPV6_NETWORK`.
    pub network: N,
    /// `FLANNEL_SUBNET` / `FLANNEL_IPV6_SUBNET`, written as its first address
    /// (`10.5.72.1/24`, `fd00:5:48::1/64`), held truncated (`10.5.72.0/24`).
    pub subnet: N,
}

/// The contents of a subnet file. At least one family is present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    pub ipv4: Option<SubnetPair<Ipv4Net>>,
    pub ipv6: Option<SubnetPair<Ipv6Net>>,
    /// `FLANNEL_MTU` (one for both families, as Flannel's).
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether the agent masquerades (then the CNI plugin need not).
    pub ipmasq: bool,
}

/// The first address after a subnet's network address: the gateway on the bridge.
pub fn first_v4(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// [`first_v4`] for IPv6.
pub fn first_v6(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(1))
}

/// The variables the file is made of.
const KEYS: [&str; 6] = [
    "FLANNEL_NETWORK",
    "FLANNEL_SUBNET",
    "FLANNEL_IPV6_NETWORK",
    "FLANNEL_IPV6_SUBNET",
    "FLANNEL_MTU",
    "FLANNEL_IPMASQ",
];

fn cidr<N: std::str::FromStr>(n: usize, line: &str, value: &str, family: &str) -> Result<N> {
    value
        .parse::<N>()
        .map_err(|_| bad(n, line, &format!("not an {family} CIDR")))
}

impl SubnetEnv {
    /// The node's IPv4 gateway (the IPv4 subnet's first address), when IPv4 is on.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.ipv4.map(|p| first_v4(p.subnet))
    }

    /// The node's IPv6 gateway, when IPv6 is on.
    pub fn gateway_v6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|p| first_v6(p.subnet))
    }

    /// Parses the file's text by the rules of the module comment; a family is present when
    /// its subnet line is. What [`SubnetEnv::parse_noting`] would warn of is dropped.
    pub fn parse(text: &str) -> Result<SubnetEnv> {
        SubnetEnv::parse_noting(text).map(|(env, _)| env)
    }

    /// Parses the file's text as Flannel's CNI plugin reads it where that is harmless, and
    /// says what it read differently from how it was written: `FLANNEL_IPMASQ` is true only
    /// when it says `true` (`True` is false to Flannel too), and a line without `=` is
    /// skipped. Each such reading is one warning, for the operator (the CNI plugin prints
    /// them on stderr). Anything that would configure containers wrongly stays an error.
    pub fn parse_noting(text: &str) -> Result<(SubnetEnv, Vec<String>)> {
        let mut warnings = Vec::new();
        let mut network = None;
        let mut subnet = None;
        let mut network6 = None;
        let mut subnet6 = None;
        let mut mtu = None;
        let mut ipmasq = None;
        for (n, line, assignment) in assignments(text) {
            let Some((key, value)) = assignment else {
                if KEYS.contains(&line) {
                    return Err(bad(n, line, "has no value: expected KEY=VALUE"));
                }
                warnings.push(format!(
                    "subnet file line {}: {line:?} is not KEY=VALUE: skipped, as Flannel's CNI plugin skips it",
                    n + 1
                ));
                continue;
            };
            match key {
                "FLANNEL_NETWORK" => {
                    network = Some(cidr::<Ipv4Net>(n, line, value, "IPv4")?.trunc())
                }
                "FLANNEL_SUBNET" => subnet = Some(cidr::<Ipv4Net>(n, line, value, "IPv4")?),
                "FLANNEL_IPV6_NETWORK" => {
                    network6 = Some(cidr::<Ipv6Net>(n, line, value, "IPv6")?.trunc())
                }
                "FLANNEL_IPV6_SUBNET" => subnet6 = Some(cidr::<Ipv6Net>(n, line, value, "IPv6")?),
                "FLANNEL_MTU" => {
                    let m: u32 = value.parse().map_err(|_| bad(n, line, "not a number"))?;
                    if !(68..=65535).contains(&m) {
                        return Err(bad(n, line, "MTU must be between 68 and 65535"));
                    }
                    mtu = Some(m)
                }
                "FLANNEL_IPMASQ" => {
                    // Flannel's CNI plugin: `parts[1] == "true"`. An ADD failing on every
                    // node for `True` helps nobody; reading it as Flannel does, and saying so,
                    // keeps the nodes working and the operator told.
                    ipmasq = Some(value == "true");
                    if value != "true" && value != "false" {
                        warnings.push(format!(
                            "subnet file line {}: {line:?}: read as false, as Flannel's CNI plugin reads anything but \"true\" (write true or false)",
                            n + 1
                        ));
                    }
                }
                _ => {}
            }
        }
        let missing = |k: &str| Error::Invalid(format!("subnet file: {k} is missing"));
        let too_small = |k: &str, v: String| {
            Error::Invalid(format!(
                "subnet file: {k}={v} is too small for a gateway and containers"
            ))
        };
        if subnet.is_none() && subnet6.is_none() {
            return Err(missing("FLANNEL_SUBNET"));
        }
        let ipv4 = match subnet {
            None => None,
            Some(s) if s.prefix_len() > 30 => {
                return Err(too_small("FLANNEL_SUBNET", s.to_string()));
            }
            Some(s) => Some(SubnetPair {
                network: network.ok_or_else(|| missing("FLANNEL_NETWORK"))?,
                subnet: s.trunc(),
            }),
        };
        let ipv6 = match subnet6 {
            None => None,
            Some(s) if s.prefix_len() > 126 => {
                return Err(too_small("FLANNEL_IPV6_SUBNET", s.to_string()));
            }
            Some(s) => Some(SubnetPair {
                network: network6.ok_or_else(|| missing("FLANNEL_IPV6_NETWORK"))?,
                subnet: s.trunc(),
            }),
        };
        let env = SubnetEnv {
            ipv4,
            ipv6,
            mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
            ipmasq: ipmasq.unwrap_or(false),
        };
        Ok((env, warnings))
    }

    /// This node's subnets as the file names them, `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET`
    /// each read on its own, as flanneld reads them to keep its subnet
    /// (`ReadCIDRFromSubnetFile`): a file without `FLANNEL_MTU`, or with any other line
    /// broken, still names them. Never fails: what a family's line says when it is no CIDR
    /// is handed back for the caller to report.
    pub fn parse_subnets(text: &str) -> NamedSubnets {
        let mut named = NamedSubnets::default();
        for (_, _, assignment) in assignments(text) {
            match assignment {
                Some(("FLANNEL_SUBNET", v)) => {
                    named.ipv4 = Some(
                        v.parse::<Ipv4Net>()
                            .map(|n| n.trunc())
                            .map_err(|_| v.to_string()),
                    )
                }
                Some(("FLANNEL_IPV6_SUBNET", v)) => {
                    named.ipv6 = Some(
                        v.parse::<Ipv6Net>()
                            .map(|n| n.trunc())
                            .map_err(|_| v.to_string()),
                    )
                }
                _ => {}
            }
        }
        named
    }

    /// Reads and parses a subnet file.
    pub fn read(path: &Path) -> Result<SubnetEnv> {
        SubnetEnv::read_noting(path).map(|(env, _)| env)
    }

    /// [`SubnetEnv::parse_noting`] of a file; the warnings name it.
    pub fn read_noting(path: &Path) -> Result<(SubnetEnv, Vec<String>)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("reading subnet file", path.display().to_string(), e))?;
        let (env, warnings) = SubnetEnv::parse_noting(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let warnings = warnings
            .into_iter()
            .map(|w| format!("{}: {w}", path.display()))
            .collect();
        Ok((env, warnings))
    }

    /// The file's text exactly as Flannel writes it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(p) = self.ipv4 {
            let first = Ipv4Net::new(first_v4(p.subnet), p.subnet.prefix_len()).unwrap_or(p.subnet);
            out.push_str(&format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={first}\n",
                p.network
            ));
        }
        if let Some(p) = self.ipv6 {
            let first = Ipv6Net::new(first_v6(p.subnet), p.subnet.prefix_len()).unwrap_or(p.subnet);
            out.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={first}\n",
                p.network
            ));
        }
        out.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        out
    }

    /// Writes the file atomically (temp file + rename), mode 0644, creating the directory;
    /// nothing when it holds this content already (a restart, a lease taken again), so the
    /// CNI plugin never reads a file being replaced without need.
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let text = self.render();
        if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("creating directory", dir.display().to_string(), e))?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let mut f = match std::fs::File::create(&tmp) {
            Ok(f) => f,
            // A file mounted into a read-only directory (a container's read-only root with
            // the file's hostPath): no temp file beside it, but the file itself is writable.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES))
                    && path.is_file() =>
            {
                return write_in_place(path, &text);
            }
            Err(e) => return Err(Error::io("creating", tmp.display().to_string(), e)),
        };
        f.write_all(text.as_bytes())
            .and_then(|_| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("writing", tmp.display().to_string(), e))?;
        match std::fs::rename(&tmp, path) {
            // The path is a mount point: a container's hostPath volume of the file itself
            // (`type: FileOrCreate`) is a bind mount, and nothing can be renamed over one.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let _ = std::fs::remove_file(&tmp);
                write_in_place(path, &text)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(Error::io(
                    "renaming into place",
                    path.display().to_string(),
                    e,
                ))
            }
            Ok(()) => Ok(()),
        }
    }
}

/// Writes `text` over the file at `path` where it cannot be replaced by a rename (a mount
/// point, a read-only directory): one write after the truncation, so a reader may see a
/// short file for a moment, which the rename spares it where it can be done.
fn write_in_place(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| {
            Error::io(
                "writing in place (a mount point or a file in a read-only directory, which \
                 cannot be renamed over)",
                path.display().to_string(),
                e,
            )
        })
}

/// What [`SubnetEnv::parse_subnets`] finds: each family's subnet line, truncated, or its
/// value (unquoted) when that is no CIDR of the family; `None` when the file has no such line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedSubnets {
    /// `FLANNEL_SUBNET`.
    pub ipv4: Option<std::result::Result<Ipv4Net, String>>,
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6: Option<std::result::Result<Ipv6Net, String>>,
}

/// The file's lines that are no comment, by the rule of the module comment: the line's index,
/// the line (trimmed, without `export `), and its key and value (unquoted), or `None` for a
/// line without `=`.
fn assignments(text: &str) -> impl Iterator<Item = (usize, &str, Option<(&str, &str)>)> {
    text.lines().enumerate().filter_map(|(n, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let assignment = line
            .split_once('=')
            .map(|(key, value)| (key.trim(), unquote(value.trim())));
        Some((n, line, assignment))
    })
}

/// `value` without one pair of enclosing double or single quotes.
fn unquote(value: &str) -> &str {
    ['"', '\'']
        .iter()
        .find_map(|&q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
        .unwrap_or(value)
}

fn bad(line_no: usize, line: &str, why: &str) -> Error {
    Error::Invalid(format!("subnet file line {}: {line:?}: {why}", line_no + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    // Flannel's documentation example of a dual-stack node.
    const DUAL: &str = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    const V6_ONLY: &str = "FLANNEL_IPV6_NETWORK=fd00:5::/48\nFLANNEL_IPV6_SUBNET=fd00:5:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn round_trips_flannels_format_byte_for_byte() {
        let env = SubnetEnv::parse(FLANNEL).unwrap();
        let v4 = env.ipv4.unwrap();
        assert_eq!(v4.subnet.to_string(), "10.5.72.0/24");
        assert_eq!(env.gateway(), Some(Ipv4Addr::new(10, 5, 72, 1)));
        assert_eq!(env.ipv6, None);
        assert_eq!(env.render(), FLANNEL);
    }

    #[test]
    fn the_same_content_is_not_written_again_other_content_is() {
        // Before: every start and every lease taken again replaced the file (a new inode),
        // and where it is a bind-mounted file, rewrote it in place: a CNI ADD at that moment
        // could read it short.
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let env = SubnetEnv::parse(FLANNEL).unwrap();
        env.write(&path).unwrap();
        let first = std::fs::metadata(&path).unwrap().ino();
        env.write(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), first, "rewritten");
        let other = SubnetEnv::parse(DUAL).unwrap();
        other.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), DUAL);
        assert_ne!(
            std::fs::metadata(&path).unwrap().ino(),
            first,
            "renamed over"
        );
        assert!(!dir.path().join(".subnet.env.tmp").exists());
    }

    #[test]
    fn dual_stack_and_ipv6_only_round_trip() {
        let env = SubnetEnv::parse(DUAL).unwrap();
        let v6 = env.ipv6.unwrap();
        assert_eq!(v6.subnet.to_string(), "2001:cafe:42::/64");
        assert_eq!(v6.network.to_string(), "2001:cafe:42::/56");
        assert_eq!(env.gateway_v6(), Some("2001:cafe:42::1".parse().unwrap()));
        assert_eq!(env.render(), DUAL);
        let env = SubnetEnv::parse(V6_ONLY).unwrap();
        assert_eq!(env.ipv4, None);
        assert_eq!(env.gateway(), None);
        assert_eq!(env.render(), V6_ONLY);
    }

    #[test]
    fn accepts_export_and_quotes() {
        let text = "export FLANNEL_NETWORK=\"10.5.0.0/16\"\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
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
            (
                "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET\nFLANNEL_MTU=1450\n",
                "FLANNEL_SUBNET\": has no value",
            ),
            (
                "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/32\nFLANNEL_MTU=1450\n",
                "too small",
            ),
            ("FLANNEL_MTU=1450\n", "FLANNEL_SUBNET is missing"),
            (
                "FLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n",
                "FLANNEL_IPV6_NETWORK is missing",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=10.0.0.1/24\nFLANNEL_MTU=1450\n",
                "not an IPv6 CIDR",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00::1/127\nFLANNEL_MTU=1450\n",
                "too small",
            ),
        ];
        for (text, want) in cases {
            let err = SubnetEnv::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn ipmasq_is_read_as_flannels_plugin_reads_it_and_odd_values_are_noted() {
        // Before: `FLANNEL_IPMASQ=True` was an error, and every ADD on the node failed with
        // code 7. Flannel's CNI plugin reads `parts[1] == "true"`.
        let file =
            |v: &str| FLANNEL.replace("FLANNEL_IPMASQ=false", &format!("FLANNEL_IPMASQ={v}"));
        for (value, want, noted) in [
            ("true", true, false),
            ("false", false, false),
            ("True", false, true),
            ("TRUE", false, true),
            ("1", false, true),
            ("", false, true),
        ] {
            let (env, warnings) = SubnetEnv::parse_noting(&file(value)).unwrap();
            assert_eq!(env.ipmasq, want, "{value:?}");
            assert_eq!(
                warnings.len(),
                usize::from(noted),
                "{value:?}: {warnings:?}"
            );
            if noted {
                assert!(
                    warnings[0].contains(&format!("FLANNEL_IPMASQ={value}"))
                        && warnings[0].contains("read as false"),
                    "{warnings:?}"
                );
            }
        }
        assert!(!SubnetEnv::parse(&file("True")).unwrap().ipmasq);
    }

    #[test]
    fn a_line_that_is_no_assignment_is_skipped_as_flannel_skips_it() {
        let text = format!("# written by hand\nsome note\n{FLANNEL}");
        let (env, warnings) = SubnetEnv::parse_noting(&text).unwrap();
        assert_eq!(env, SubnetEnv::parse(FLANNEL).unwrap());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("line 2"), "{warnings:?}");
    }

    #[test]
    fn both_readers_take_quotes_by_one_rule() {
        // Before: the whole file's reader stripped any number of `"` from either end and no
        // `'`, twilld's own reader of its kept subnet both kinds: `'10.5.72.1/24'` was kept
        // by twilld and refused by the CNI plugin, and `"10.5.0.0/16` taken by the plugin.
        for quoted in ["\"10.5.72.1/24\"", "'10.5.72.1/24'", " '10.5.72.1/24' "] {
            let text = FLANNEL.replace("10.5.72.1/24", quoted);
            let env = SubnetEnv::parse(&text).unwrap_or_else(|e| panic!("{quoted}: {e}"));
            assert_eq!(env, SubnetEnv::parse(FLANNEL).unwrap(), "{quoted}");
            let named = SubnetEnv::parse_subnets(&text);
            assert_eq!(
                named.ipv4,
                Some(Ok("10.5.72.0/24".parse().unwrap())),
                "{quoted}"
            );
        }
        for unbalanced in [
            "\"10.5.72.1/24",
            "10.5.72.1/24'",
            "\"10.5.72.1/24'",
            "\"",
            "''10.5.72.1/24''",
        ] {
            let text = FLANNEL.replace("10.5.72.1/24", unbalanced);
            let err = SubnetEnv::parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("line 2") && err.contains("not an IPv4 CIDR"),
                "{unbalanced}: {err}"
            );
            assert!(
                matches!(SubnetEnv::parse_subnets(&text).ipv4, Some(Err(_))),
                "{unbalanced}"
            );
        }
    }

    #[test]
    fn parse_subnets_reads_each_family_on_its_own() {
        let named = SubnetEnv::parse_subnets(
            "# a comment\nexport FLANNEL_SUBNET = 10.5.9.1/24\nFLANNEL_MTU=banana\nnot an assignment\nFLANNEL_IPV6_SUBNET=nonsense\n",
        );
        assert_eq!(named.ipv4, Some(Ok("10.5.9.0/24".parse().unwrap())));
        assert_eq!(named.ipv6, Some(Err("nonsense".to_string())));
        let named = SubnetEnv::parse_subnets(DUAL);
        assert_eq!(named.ipv6, Some(Ok("2001:cafe:42::/64".parse().unwrap())));
        assert_eq!(
            SubnetEnv::parse_subnets("FLANNEL_MTU=1450\n# FLANNEL_SUBNET=10.5.1.1/24\n"),
            NamedSubnets::default()
        );
        // The last of two lines counts, as in the whole file's reader.
        let twice = "FLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_SUBNET=10.5.2.1/24\n";
        assert_eq!(
            SubnetEnv::parse_subnets(twice).ipv4,
            Some(Ok("10.5.2.0/24".parse().unwrap()))
        );
    }

    #[test]
    fn read_noting_names_the_file() {
        let dir = std::env::temp_dir().join(format!("twill-subnet-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("subnet.env");
        std::fs::write(&path, FLANNEL.replace("IPMASQ=false", "IPMASQ=yes")).unwrap();
        let got = SubnetEnv::read_noting(&path);
        let _ = std::fs::remove_dir_all(&dir);
        let (env, warnings) = got.unwrap();
        assert!(!env.ipmasq);
        assert!(
            warnings[0].starts_with(&path.display().to_string()),
            "{warnings:?}"
        );
    }
}

//! The CNI_* environment: parsed once, validated for the command at hand. Container IDs and
//! interface names become file and link names, so anything that could escape is refused.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{CniError, CniResult, INVALID_ENV};

/// The CNI command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The validated environment of one invocation.
#[derive(Clone, Debug, Default)]
pub struct CniEnv {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `IP=` from CNI_ARGS (podman's `--ip`), as given: read by the built-in IPAM
    /// ([`CniEnv::requested_ips`]); a delegated IPAM plugin reads it its own way (the static
    /// plugin takes several addresses of a family).
    pub ip_arg: Option<String>,
    pub path: Vec<PathBuf>,
    /// The raw CNI_ARGS, passed to delegated plugins.
    pub raw_args: String,
}

/// Reads CNI_COMMAND.
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> CniResult<Command> {
    match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some("STATUS") => Ok(Command::Status),
        Some("GC") => Ok(Command::Gc),
        Some(other) => Err(CniError::new(
            INVALID_ENV,
            format!(
                "unknown CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, VERSION, STATUS or GC"
            ),
        )),
        None => Err(CniError::new(
            INVALID_ENV,
            "CNI_COMMAND is not set: twill is a CNI plugin and is run by a container runtime",
        )),
    }
}

fn valid_container_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= twill_netkit::IFNAMSIZ_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Parses `IP=`'s value: addresses separated by ',' (a `/prefix` is tolerated, as podman
/// may pass one), at most one per family.
fn parse_requested_ips(value: &str) -> CniResult<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for part in value.split(',').map(str::trim) {
        let ip = crate::config::parse_ip_or_cidr(part).ok_or_else(|| {
            CniError::new(
                INVALID_ENV,
                format!(
                    "invalid IP={value:?} in CNI_ARGS: {part:?} is not an IPv4 or IPv6 address"
                ),
            )
        })?;
        if ips.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(CniError::new(
                INVALID_ENV,
                format!("invalid IP={value:?} in CNI_ARGS: more than one address of a family"),
            ));
        }
        ips.push(ip);
    }
    Ok(ips)
}

impl CniEnv {
    /// `IP=` as the built-in IPAM reads it: one address per family, comma-separated as
    /// host-local reads it (`IP=10.244.7.9,fd00:244:7::9`); none without `IP=` or with an
    /// empty `IP=`, which host-local's parser takes as no address.
    pub fn requested_ips(&self) -> CniResult<Vec<IpAddr>> {
        match self.ip_arg.as_deref() {
            None | Some("") => Ok(Vec::new()),
            Some(value) => parse_requested_ips(value),
        }
    }
}

/// Parses and validates the environment for `cmd`.
pub fn parse(cmd: Command, get: &dyn Fn(&str) -> Option<String>) -> CniResult<CniEnv> {
    let need = |key: &str| -> CniResult<String> {
        get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            CniError::new(
                INVALID_ENV,
                format!("required environment variable {key} is not set"),
            )
        })
    };
    let mut env = CniEnv {
        path: get("CNI_PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .filter(|d| !d.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        raw_args: get("CNI_ARGS").unwrap_or_default(),
        ..CniEnv::default()
    };
    if matches!(cmd, Command::Add | Command::Del | Command::Check) {
        env.container_id = need("CNI_CONTAINERID")?;
        if !valid_container_id(&env.container_id) {
            return Err(CniError::new(
                INVALID_ENV,
                format!(
                    "invalid CNI_CONTAINERID {:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]* and be at most 255 bytes",
                    env.container_id
                ),
            ));
        }
        env.ifname = need("CNI_IFNAME")?;
        if !valid_ifname(&env.ifname) {
            return Err(CniError::new(
                INVALID_ENV,
                format!(
                    "invalid CNI_IFNAME {:?}: 1 to {} bytes, no '/', ':' or spaces",
                    env.ifname,
                    twill_netkit::IFNAMSIZ_MAX
                ),
            ));
        }
        env.netns = match cmd {
            // CNI_NETNS is optional for DEL.
            Command::Del => get("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            _ => Some(PathBuf::from(need("CNI_NETNS")?)),
        };
    }
    if cmd == Command::Gc && env.path.is_empty() {
        // GC needs CNI_PATH only to delegate; twill's own IPAM does not, so be lenient.
    }
    for pair in env.raw_args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                INVALID_ENV,
                format!(
                    "invalid CNI_ARGS entry {pair:?}: expected KEY=VALUE pairs separated by ';'"
                ),
            ));
        };
        if k == "IP" {
            env.ip_arg = Some(v.to_string());
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn rejects_names_that_could_escape() {
        for (id, ifname, want) in [
            ("../etc", "eth0", "CNI_CONTAINERID"),
            ("a/b", "eth0", "CNI_CONTAINERID"),
            ("", "eth0", "CNI_CONTAINERID is not set"),
            ("abc", "../x", "CNI_IFNAME"),
            ("abc", "a/b", "CNI_IFNAME"),
            ("abc", "averyveryverylongname", "CNI_IFNAME"),
            ("abc", "..", "CNI_IFNAME"),
        ] {
            let get = env_of(&[
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", "/x"),
            ]);
            let err = parse(Command::Add, &get).unwrap_err();
            assert_eq!(err.code, INVALID_ENV);
            assert!(err.msg.contains(want), "{id} {ifname}: {}", err.msg);
        }
        let long = "a".repeat(256);
        let get = env_of(&[
            ("CNI_CONTAINERID", &long),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ]);
        assert!(parse(Command::Add, &get).is_err());
    }

    #[test]
    fn netns_is_optional_only_for_del_and_args_are_parsed() {
        let get = env_of(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.1.2.3;K8S_POD_NAME=x"),
        ]);
        let e = parse(Command::Del, &get).unwrap();
        assert!(e.netns.is_none());
        assert_eq!(
            e.requested_ips().unwrap(),
            vec![IpAddr::from([10, 1, 2, 3])]
        );
        let err = parse(Command::Add, &get).unwrap_err();
        assert!(err.msg.contains("CNI_NETNS"), "{}", err.msg);
        let bad = env_of(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IP=banana"),
        ]);
        assert!(
            parse(Command::Del, &bad)
                .unwrap()
                .requested_ips()
                .unwrap_err()
                .msg
                .contains("IP=\"banana\"")
        );
        let both = env_of(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IP=10.1.2.3,fd00:1::3/64"),
        ]);
        assert_eq!(
            parse(Command::Del, &both).unwrap().requested_ips().unwrap(),
            vec![
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00:1::3".parse().unwrap()
            ]
        );
        for (bad_ip, want) in [
            ("fd00::zz", "\"fd00::zz\" is not an IPv4 or IPv6"),
            ("fd00::1,fd00::2", "more than one address of a family"),
            ("10.1.2.3,", "\"\" is not"),
        ] {
            let args = format!("IP={bad_ip}");
            let get = env_of(&[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ]);
            let err = parse(Command::Del, &get)
                .unwrap()
                .requested_ips()
                .unwrap_err();
            assert_eq!(err.code, INVALID_ENV);
            assert!(err.msg.contains(want), "{bad_ip}: {}", err.msg);
        }
        let empty = env_of(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP="),
        ]);
        assert_eq!(
            parse(Command::Del, &empty)
                .unwrap()
                .requested_ips()
                .unwrap(),
            Vec::<IpAddr>::new()
        );
        assert!(
            command(&env_of(&[("CNI_COMMAND", "FOO")]))
                .unwrap_err()
                .msg
                .contains("FOO")
        );
    }
}

//! The part of an image config (`config` in the OCI/Docker config blob) that `run` honours,
//! and Docker's rules for turning Entrypoint + Cmd + the command line into argv.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the image says about how to run it. Fields the runtime does not use are kept in
/// `other`, so `save` and `commit` write them back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl RunConfig {
    /// The `config` object of a config blob (absent or null: nothing configured).
    pub fn of(blob: &serde_json::Value) -> Result<RunConfig, String> {
        match blob.get("config") {
            None | Some(serde_json::Value::Null) => Ok(RunConfig::default()),
            Some(c) => serde_json::from_value(c.clone())
                .map_err(|e| format!("the image config's \"config\" object: {e}")),
        }
    }

    /// Exposed ports as (port, protocol), e.g. `80/tcp` → (80, "tcp").
    pub fn ports(&self) -> Result<Vec<(u16, String)>, String> {
        let mut out = Vec::new();
        for key in self.exposed_ports.iter().flat_map(|m| m.keys()) {
            let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
            let port: u16 = port
                .parse()
                .map_err(|_| format!("ExposedPorts {key:?}: not a port number"))?;
            if proto != "tcp" && proto != "udp" {
                return Err(format!("ExposedPorts {key:?}: protocol must be tcp or udp"));
            }
            out.push((port, proto.to_string()));
        }
        Ok(out)
    }
}

/// What the command line said about the command: `--entrypoint` (Some("") clears the image's)
/// and the arguments after the image name.
#[derive(Clone, Debug, Default)]
pub struct CommandLine<'a> {
    pub entrypoint: Option<&'a str>,
    pub args: &'a [String],
}

/// Docker's rules: arguments replace Cmd; `--entrypoint` replaces Entrypoint and drops the
/// image's Cmd; the result is Entrypoint followed by Cmd. None when there is nothing to run.
pub fn argv(cfg: &RunConfig, cli: &CommandLine) -> Option<Vec<String>> {
    let entrypoint: Vec<String> = match cli.entrypoint {
        Some("") => Vec::new(),
        Some(e) => vec![e.to_string()],
        None => cfg.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !cli.args.is_empty() {
        cli.args.to_vec()
    } else if cli.entrypoint.is_some() {
        Vec::new()
    } else {
        cfg.cmd.clone().unwrap_or_default()
    };
    let all: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    (!all.is_empty()).then_some(all)
}

/// `-e` entries as docker reads them: `K=V` as given, `K` alone with K's value in the
/// caller's environment (`lookup`), left out when K is unset there. One without a name
/// (`=V`, or empty) is refused, as by docker and podman (podman's wording).
pub fn env_from_caller(
    cli: &[String],
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for e in cli {
        if e.split('=').next().is_none_or(str::is_empty) {
            return Err(format!("invalid environment variable: {e:?}"));
        }
        if e.contains('=') {
            out.push(e.clone());
        } else if let Some(v) = lookup(e) {
            let v = v.into_string().map_err(|_| {
                format!(
                    "-e {e}: its value in twill-run's environment is not UTF-8: give -e {e}=VALUE"
                )
            })?;
            out.push(format!("{e}={v}"));
        }
    }
    Ok(out)
}

/// `env` with `TERM=xterm` added for a process on a pty (`-t`) when nothing set TERM, as
/// docker does for `run -t` and `exec -t` (never kept in the container's own environment:
/// an `exec` without `-t` does not get it).
pub fn with_term(mut env: Vec<String>, tty: bool) -> Vec<String> {
    if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    env
}

/// The environment: the image's, then the command line's (`-e K=V` replaces K; an entry
/// without `=` is dropped: [`env_from_caller`] resolves those first), then PATH and HOSTNAME
/// if nobody set them.
pub fn env(image: &[String], cli: &[String], hostname: &str) -> Vec<String> {
    let key = |e: &str| e.split('=').next().unwrap_or_default().to_string();
    let mut out: Vec<String> = Vec::new();
    for e in image.iter().chain(cli).filter(|e| e.contains('=')) {
        let k = key(e);
        out.retain(|x| key(x) != k);
        out.push(e.clone());
    }
    if !out.iter().any(|e| key(e) == "PATH") {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    if !out.iter().any(|e| key(e) == "HOSTNAME") {
        out.push(format!("HOSTNAME={hostname}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_follow_dockers_rules() {
        let both = RunConfig {
            entrypoint: Some(s(&["/bin/echo", "ep"])),
            cmd: Some(s(&["default"])),
            ..Default::default()
        };
        let cmd_only = RunConfig {
            cmd: Some(s(&["cat", "/etc/l2"])),
            ..Default::default()
        };
        let args = s(&["given", "x"]);
        let none: &[String] = &[];
        let nothing = RunConfig::default();
        /// (image config, --entrypoint, arguments, argv).
        type Case<'a> = (
            &'a RunConfig,
            Option<&'a str>,
            &'a [String],
            Option<Vec<String>>,
        );
        let cases: Vec<Case> = vec![
            // Entrypoint + Cmd.
            (&both, None, none, Some(s(&["/bin/echo", "ep", "default"]))),
            // Arguments replace Cmd, Entrypoint stays.
            (
                &both,
                None,
                &args,
                Some(s(&["/bin/echo", "ep", "given", "x"])),
            ),
            // --entrypoint replaces Entrypoint and drops the image's Cmd.
            (&both, Some("/bin/ls"), none, Some(s(&["/bin/ls"]))),
            (
                &both,
                Some("/bin/ls"),
                &args,
                Some(s(&["/bin/ls", "given", "x"])),
            ),
            // --entrypoint "" clears it.
            (&both, Some(""), &args, Some(s(&["given", "x"]))),
            (&both, Some(""), none, None),
            // Cmd only.
            (&cmd_only, None, none, Some(s(&["cat", "/etc/l2"]))),
            (&cmd_only, None, &args, Some(args.clone())),
            // Nothing at all.
            (&nothing, None, none, None),
        ];
        for (cfg, ep, a, want) in cases {
            let got = argv(
                cfg,
                &CommandLine {
                    entrypoint: ep,
                    args: a,
                },
            );
            assert_eq!(got, want, "{cfg:?} --entrypoint {ep:?} args {a:?}");
        }
    }

    #[test]
    fn env_merges_image_and_command_line() {
        let e = env(
            &s(&["PATH=/img/bin", "FOO=bar", "KEEP=1"]),
            &s(&["FOO=baz", "NEW=2", "NOVALUE"]),
            "h1",
        );
        assert_eq!(
            e,
            s(&["PATH=/img/bin", "KEEP=1", "FOO=baz", "NEW=2", "HOSTNAME=h1"])
        );
        let e = env(&[], &[], "h");
        assert!(e[0].starts_with("PATH=/usr/local/sbin"));
    }

    #[test]
    fn env_without_a_value_takes_the_callers_and_is_left_out_when_unset() {
        // Before: `FOO=x twill-run run -e FOO` dropped FOO.
        let caller = |k: &str| (k == "FOO").then(|| std::ffi::OsString::from("x"));
        let e = env_from_caller(&s(&["FOO", "UNSET", "A=1", "EMPTY="]), caller).unwrap();
        assert_eq!(e, s(&["FOO=x", "A=1", "EMPTY="]));
        let bad = |_: &str| {
            use std::os::unix::ffi::OsStringExt;
            Some(std::ffi::OsString::from_vec(vec![0xff]))
        };
        // Before: `=bad` went into the environment as it was, and an empty one was dropped.
        for nameless in ["=bad", "", "="] {
            let err = env_from_caller(&s(&["A=1", nameless]), caller).unwrap_err();
            assert_eq!(err, format!("invalid environment variable: {nameless:?}"));
        }
        let err = env_from_caller(&s(&["BIN"]), bad).unwrap_err();
        assert!(
            err.contains("-e BIN: ") && err.contains("-e BIN=VALUE"),
            "{err}"
        );
    }

    #[test]
    fn a_pty_gets_term_xterm_unless_term_is_set() {
        // Before: `run -t` and `exec -t` left TERM unset (docker and podman: xterm).
        let base = s(&["PATH=/bin"]);
        assert_eq!(
            with_term(base.clone(), true),
            s(&["PATH=/bin", "TERM=xterm"])
        );
        assert_eq!(with_term(base.clone(), false), base);
        let set = s(&["TERM=vt100", "PATH=/bin"]);
        assert_eq!(with_term(set.clone(), true), set);
        let empty = s(&["TERM="]);
        assert_eq!(with_term(empty.clone(), true), empty);
    }

    #[test]
    fn config_keeps_fields_it_does_not_use() {
        let blob = serde_json::json!({"config": {
            "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Healthcheck": {"Test": ["NONE"]}, "Entrypoint": null
        }});
        let c = RunConfig::of(&blob).unwrap();
        assert_eq!(c.entrypoint, None);
        assert_eq!(
            c.ports().unwrap(),
            vec![(53, "udp".to_string()), (80, "tcp".to_string())]
        );
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["Healthcheck"]["Test"][0], "NONE");
        assert_eq!(
            RunConfig::of(&serde_json::json!({})).unwrap(),
            RunConfig::default()
        );
    }
}

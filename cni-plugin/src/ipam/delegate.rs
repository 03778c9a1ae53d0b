//! Delegating to an IPAM plugin (`ipam.type`): exec it from CNI_PATH with the same
//! environment and the whole network config on stdin, as the spec says.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::env::CniEnv;
use crate::error::{CniError, CniResult, DECODE, INCOMPATIBLE_VERSION, INTERNAL, INVALID_CONFIG};
use crate::version;

/// Finds `plugin` in CNI_PATH.
pub fn find(plugin: &str, env: &CniEnv) -> CniResult<PathBuf> {
    env.path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                INVALID_CONFIG,
                format!(
                    "IPAM plugin {plugin:?} not found in CNI_PATH {:?}",
                    std::env::join_paths(&env.path).unwrap_or_default()
                ),
            )
        })
}

/// Runs the IPAM plugin with CNI_COMMAND=`command`; returns its parsed stdout (None when it
/// printed nothing, as DEL may). A failing plugin's CNI error is passed on with its code.
///
/// The runtime negotiated the request's version with twill, not with the IPAM plugin: an
/// IPAM plugin that refuses it (code 1; host-local before 1.5 stops at 1.0.0 while a 1.1
/// conflist's `cniVersions` lets the runtime pick 1.1.0) gets the request again in the
/// highest version both speak, and GC is not sent to one that predates it (1.1.0).
pub fn exec(plugin: &str, command: &str, env: &CniEnv, stdin: &[u8]) -> CniResult<Option<Value>> {
    if command == "GC"
        && !common_version(plugin, env, stdin)?.is_some_and(|v| version::at_least_1_1(&v))
    {
        return Ok(None);
    }
    match exec_once(plugin, command, env, stdin) {
        Err(e) if e.code == INCOMPATIBLE_VERSION => {
            let Some(older) = common_version(plugin, env, stdin)? else {
                return Err(e);
            };
            let mut conf: Value = serde_json::from_slice(stdin)
                .map_err(|d| CniError::new(DECODE, format!("decoding the network config: {d}")))?;
            conf["cniVersion"] = Value::from(older);
            exec_once(plugin, command, env, conf.to_string().as_bytes())
        }
        other => other,
    }
}

/// The highest version both twill and the IPAM plugin speak that is not newer than the
/// request's, from the plugin's VERSION answer.
fn common_version(plugin: &str, env: &CniEnv, stdin: &[u8]) -> CniResult<Option<String>> {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let probe = serde_json::json!({"cniVersion": asked}).to_string();
    let answer = exec_once(plugin, "VERSION", env, probe.as_bytes())?.unwrap_or_default();
    let theirs: Vec<&str> = answer["supportedVersions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Ok(highest_common(&asked, &theirs))
}

/// The highest version twill supports that is not above `asked` and that the other plugin
/// lists in `theirs`; none when `asked` is not one twill knows.
fn highest_common(asked: &str, theirs: &[&str]) -> Option<String> {
    let limit = version::SUPPORTED.iter().position(|v| *v == asked)?;
    version::SUPPORTED[..=limit]
        .iter()
        .rev()
        .find(|v| theirs.contains(v))
        .map(|v| v.to_string())
}

fn exec_once(plugin: &str, command: &str, env: &CniEnv, stdin: &[u8]) -> CniResult<Option<Value>> {
    let path = find(plugin, env)?;
    let mut cmd = Command::new(&path);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.raw_args)
        .env(
            "CNI_PATH",
            std::env::join_paths(&env.path).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match &env.netns {
        Some(n) => cmd.env("CNI_NETNS", n),
        None => cmd.env_remove("CNI_NETNS"),
    };
    let mut child = cmd.spawn().map_err(|e| {
        CniError::new(
            INTERNAL,
            format!("running IPAM plugin {}: {e}", path.display()),
        )
    })?;
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            INTERNAL,
            format!("waiting for IPAM plugin {}: {e}", path.display()),
        )
    })?;
    let parsed: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(&out.stdout).map_err(|e| {
            CniError::new(
                DECODE,
                format!("decoding output of IPAM plugin {plugin}: {e}"),
            )
        })?)
    };
    if !out.status.success() {
        let (code, msg) = parsed
            .as_ref()
            .map(|v| {
                (
                    v.get("code")
                        .and_then(Value::as_u64)
                        .unwrap_or(INTERNAL as u64) as u32,
                    v.get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or("failed")
                        .to_string(),
                )
            })
            .unwrap_or((INTERNAL, format!("exited with {}", out.status)));
        return Err(CniError::new(
            code,
            format!("IPAM plugin {plugin} {command}: {msg}"),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_version_both_speak_not_above_the_asked_one() {
        // host-local 1.1.1 stops at 1.0.0; a runtime asked for 1.1.0.
        let host_local = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
        assert_eq!(
            highest_common("1.1.0", &host_local).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(
            highest_common("0.4.0", &host_local).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(
            highest_common("1.1.0", &["1.1.0"]).as_deref(),
            Some("1.1.0")
        );
        assert_eq!(
            highest_common("1.1.0", &[]),
            None,
            "a plugin that lists nothing"
        );
        assert_eq!(
            highest_common("9.9.9", &host_local),
            None,
            "unknown asked version"
        );
    }
}

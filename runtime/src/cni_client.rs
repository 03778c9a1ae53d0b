//! A CNI client, as libcni does it: find the network's conflist in the config directory, run
//! its plugins in order for ADD (each gets the previous result as prevResult) and in reverse
//! for DEL (with the cached result), passing capability args such as `portMappings`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::error::{Result, RuntimeError};
use crate::store::PortSpec;

/// A loaded network list.
#[derive(Clone, Debug)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

fn net_err(msg: String) -> RuntimeError {
    RuntimeError::Network(msg)
}

/// Loads network `name` (or, without a name, the first one in file-name order) from `dir`:
/// `.conflist` files, and single-plugin `.conf`/`.json` files wrapped into a list.
pub fn load(dir: &Path, name: Option<&str>) -> Result<NetworkList> {
    let missing = || {
        net_err(format!(
            "no CNI network {:?} in {}: the directory cannot be read (use --cni-conf-dir)",
            name.unwrap_or("(any)"),
            dir.display()
        ))
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|_| missing())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read(&f) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        let Some(n) = v.get("name").and_then(Value::as_str) else {
            continue;
        };
        if name.is_some_and(|want| want != n) {
            continue;
        }
        let version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("1.0.0")
            .to_string();
        let plugins = match v.get("plugins").and_then(Value::as_array) {
            Some(p) => p.clone(),
            None => vec![v.clone()],
        };
        return Ok(NetworkList {
            name: n.to_string(),
            cni_version: version,
            plugins,
        });
    }
    Err(net_err(match name {
        Some(n) => format!("no CNI network {n:?} in {}", dir.display()),
        None => format!("no CNI network config in {}", dir.display()),
    }))
}

/// What every plugin call of one attachment shares.
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub cni_path: &'a [PathBuf],
    pub ports: &'a [PortSpec],
}

fn plugin_conf(
    list: &NetworkList,
    plugin: &Value,
    prev: Option<&Value>,
    att: &Attachment,
) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = json!(list.name);
    conf["cniVersion"] = json!(list.cni_version);
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    let wants_ports = plugin
        .get("capabilities")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_bool)
        == Some(true);
    if wants_ports && !att.ports.is_empty() {
        let pm: Vec<Value> = att
            .ports
            .iter()
            .map(|p| json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol}))
            .collect();
        conf["runtimeConfig"] = json!({"portMappings": pm});
    }
    conf
}

fn exec(command: &str, conf: &Value, att: &Attachment) -> Result<Option<Value>> {
    let ty = conf.get("type").and_then(Value::as_str).unwrap_or_default();
    if ty.is_empty() || ty.contains('/') {
        return Err(net_err(format!("invalid plugin type {ty:?}")));
    }
    let bin = att
        .cni_path
        .iter()
        .map(|d| d.join(ty))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            net_err(format!(
                "CNI plugin {ty:?} not found in {:?} (use --cni-path)",
                att.cni_path
            ))
        })?;
    let mut c = Command::new(&bin);
    c.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", att.container_id)
        .env("CNI_IFNAME", att.ifname)
        .env(
            "CNI_PATH",
            std::env::join_paths(att.cni_path).unwrap_or_default(),
        )
        .env(
            "CNI_NETNS",
            att.netns
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| net_err(format!("running {}: {e}", bin.display())))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(conf.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| net_err(format!("waiting for {}: {e}", bin.display())))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let msg = parsed
            .as_ref()
            .and_then(|v| v.get("msg"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        return Err(net_err(format!("CNI {command} with plugin {ty}: {msg}")));
    }
    Ok(parsed)
}

/// ADD through the whole list; on failure the plugins that succeeded get a DEL.
pub fn add(list: &NetworkList, att: &Attachment) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for (i, plugin) in list.plugins.iter().enumerate() {
        let conf = plugin_conf(list, plugin, prev.as_ref(), att);
        match exec("ADD", &conf, att) {
            Ok(Some(r)) => prev = Some(r),
            Ok(None) => {}
            Err(e) => {
                let done = NetworkList {
                    plugins: list.plugins[..i].to_vec(),
                    ..list.clone()
                };
                let _ = del(&done, att, prev.as_ref());
                return Err(e);
            }
        }
    }
    prev.ok_or_else(|| net_err(format!("network {} produced no result", list.name)))
}

/// DEL in reverse order with the cached result; every plugin runs, errors are collected.
pub fn del(list: &NetworkList, att: &Attachment, result: Option<&Value>) -> Result<()> {
    let mut errors = Vec::new();
    for plugin in list.plugins.iter().rev() {
        let conf = plugin_conf(list, plugin, result, att);
        if let Err(e) = exec("DEL", &conf, att) {
            errors.push(e.network_detail());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(net_err(errors.join("; ")))
    }
}

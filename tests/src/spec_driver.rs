//! A runtime that follows the CNI spec to the letter for a network of one plugin: it asks the
//! plugin's VERSION first and speaks the highest version both the conflist (`cniVersion`
//! and `cniVersions`) and the plugin support, builds each request from the plugin object plus
//! `name`, `cniVersion` and `prevResult` (CHECK, DEL), sets exactly the variables the spec
//! requires per command, and sends GC with `cni.dev/valid-attachments` (and the 1.1.0 tag's
//! `cni.dev/attachments`, as libcni does).

use serde_json::{Map, Value, json};
use twill_netkit::Netns;

use crate::cni::{PluginOutput, exec_plugin};

/// One network (a conflist with one plugin) and the binary its `type` names.
pub struct SpecDriver<'a> {
    /// The plugin executable.
    pub binary: String,
    /// The namespace the runtime (and so the plugin) runs in.
    pub host: &'a Netns,
    /// `CNI_PATH`: where delegated plugins (IPAM) are found.
    pub cni_path: String,
    /// The network configuration list.
    pub network: Value,
}

/// The container side of one attachment.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'s> {
    pub container_id: &'s str,
    /// `CNI_NETNS`; `None` leaves the variable out.
    pub netns: Option<&'s str>,
    pub ifname: &'s str,
}

impl SpecDriver<'_> {
    /// The version the driver speaks with this plugin: the highest of the conflist's
    /// `cniVersion` and `cniVersions` that the plugin's VERSION lists, if any.
    pub fn negotiate(&self) -> Option<String> {
        let probe = json!({"cniVersion": self.network["cniVersion"]});
        let out = exec_plugin(
            &self.binary,
            Some(self.host),
            &[("CNI_COMMAND", "VERSION")],
            &probe.to_string(),
        );
        assert!(out.ok, "VERSION failed: {out:?}");
        let supported: Vec<String> = out.json()["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("VERSION without supportedVersions: {out:?}"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let mut wanted: Vec<&str> = self.network["cniVersions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        wanted.extend(self.network["cniVersion"].as_str());
        wanted
            .into_iter()
            .filter(|v| supported.iter().any(|s| s == v))
            .max_by_key(|v| version_key(v))
            .map(str::to_string)
    }

    /// The request config for the plugin: its object, `name` (when the network has one),
    /// `cniVersion`, and `prevResult` when given.
    pub fn request(&self, version: &str, prev: Option<&Value>) -> Value {
        let mut conf: Map<String, Value> = self.network["plugins"][0]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some(name) = self.network.get("name") {
            conf.insert("name".into(), name.clone());
        }
        conf.insert("cniVersion".into(), Value::from(version));
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        Value::Object(conf)
    }

    /// Runs `command` for an attachment with the variables the spec requires for it.
    pub fn exec(&self, command: &str, at: Attachment, conf: &Value) -> PluginOutput {
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", at.container_id),
            ("CNI_IFNAME", at.ifname),
            ("CNI_PATH", self.cni_path.as_str()),
        ];
        if let Some(netns) = at.netns {
            env.push(("CNI_NETNS", netns));
        }
        exec_plugin(&self.binary, Some(self.host), &env, &conf.to_string())
    }

    pub fn add(&self, version: &str, at: Attachment) -> PluginOutput {
        self.exec("ADD", at, &self.request(version, None))
    }

    /// CHECK with the ADD result injected as `prevResult`.
    pub fn check(&self, version: &str, at: Attachment, prev: &Value) -> PluginOutput {
        self.exec("CHECK", at, &self.request(version, Some(prev)))
    }

    /// DEL with the cached ADD result as `prevResult` when the runtime still has it.
    pub fn del(&self, version: &str, at: Attachment, prev: Option<&Value>) -> PluginOutput {
        self.exec("DEL", at, &self.request(version, prev))
    }

    /// STATUS (1.1.0): config on stdin, `CNI_COMMAND` and `CNI_PATH` only.
    pub fn status(&self, version: &str) -> PluginOutput {
        let env = [
            ("CNI_COMMAND", "STATUS"),
            ("CNI_PATH", self.cni_path.as_str()),
        ];
        exec_plugin(
            &self.binary,
            Some(self.host),
            &env,
            &self.request(version, None).to_string(),
        )
    }

    /// GC (1.1.0) keeping only `valid` (container ID, ifname) attachments.
    pub fn gc(&self, version: &str, valid: &[(&str, &str)]) -> PluginOutput {
        let list: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
            .collect();
        let mut conf = self.request(version, None);
        conf["cni.dev/valid-attachments"] = Value::from(list.clone());
        conf["cni.dev/attachments"] = Value::from(list);
        let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", self.cni_path.as_str())];
        exec_plugin(&self.binary, Some(self.host), &env, &conf.to_string())
    }
}

/// Orders "1.10.0" after "1.9.0".
fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

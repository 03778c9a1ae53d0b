//! Writing to and asking an etcd fixture: puts through etcd's JSON gateway (no client binary
//! needed), everything else through `etcdctl`, both from inside the member's namespace.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::Etcd;
use crate::error::{LabError, Result};
use crate::http;
use crate::process::run_tool;

/// Where Flannel and twilld read the network config (the default `--etcd-prefix` + `/config`).
pub const NETWORK_CONFIG_KEY: &str = "/coreos.com/network/config";

impl Etcd {
    /// Writes `key` = `value`. Plain members are written through the JSON gateway
    /// (`/v3/kv/put`); TLS members through etcdctl with the client certificate.
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        if self.member.tls.is_some() {
            return self.etcdctl(&["put", key, value]).map(drop);
        }
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            BASE64.encode(key),
            BASE64.encode(value)
        );
        let addr = SocketAddr::from((self.member.ip, self.member.client_port));
        let send = || {
            http::request(
                addr,
                "POST",
                "/v3/kv/put",
                Some(&body),
                Duration::from_secs(3),
            )
        };
        let response = match &self.netns {
            Some(ns) => ns.enter(send)?,
            None => send(),
        }
        .map_err(|e| self.error(format!("putting {key}: {e}")))?;
        if !http::is_ok(&response) {
            return Err(self.error(format!("putting {key}: the gateway answered {response}")));
        }
        Ok(())
    }

    /// Writes the network config (Flannel's JSON) to [`NETWORK_CONFIG_KEY`].
    pub fn put_network_config(&self, config: &str) -> Result<()> {
        self.put(NETWORK_CONFIG_KEY, config)
    }

    /// Runs `etcdctl` (API v3) with `args` against this member, inside its namespace and with
    /// the client certificate when it serves TLS; returns what it printed.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut c = self.etcdctl_command(args)?;
        run_tool(&mut c, format!("etcdctl {}", args.join(" ")))
    }

    /// The `etcdctl` command [`Etcd::etcdctl`] runs, to spawn one that does not end by itself
    /// (`watch`); the caller ends it by PID.
    pub fn etcdctl_command(&self, args: &[&str]) -> Result<Command> {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(self.member.tls.iter().flat_map(|t| t.etcdctl_flags()))
            .args(args);
        if let Some(ns) = &self.netns {
            ns.prepare_command(&mut c)?;
        }
        Ok(c)
    }

    fn error(&self, detail: String) -> LabError {
        LabError::Etcd {
            name: self.member.name.clone(),
            detail,
        }
    }
}

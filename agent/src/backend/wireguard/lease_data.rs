//! The wireguard part of a lease, as Flannel writes it: `"BackendData":{"PublicKey":
//! "<base64>","Port":<ListenPort>}` (Go's `wireguardLeaseAttrs`, no JSON tags). A lease from
//! a Flannel older than PR #2200 has no `Port`: the peer listens on our own port then. With
//! IPv6 the same object sits in `BackendV6Data` (same key, `ListenPortV6` in separate mode).

use serde_json::Value;

use super::config::{format_key, parse_key};
use crate::lease::BadLease;
use crate::quote::quote;

/// What a wireguard lease tells about its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireguardLease {
    pub public_key: [u8; 32],
    /// The peer's listen port; `None` when the lease has none (use our own).
    pub port: Option<u16>,
}

impl WireguardLease {
    /// Reads `BackendData` (or `BackendV6Data`: `field`) of a wireguard lease.
    pub fn parse(data: Option<&Value>, field: &str) -> Result<WireguardLease, BadLease> {
        let key = data
            .and_then(|d| d.get("PublicKey"))
            .and_then(Value::as_str)
            .ok_or_else(|| BadLease(format!("wireguard lease without {field}.PublicKey")))?;
        let public_key = parse_key(key)
            .map_err(|why| BadLease(format!("{field}.PublicKey {}: {why}", quote(key))))?;
        let port = match data.and_then(|d| d.get("Port")) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(0) => None,
                Some(p) if p <= 65535 => Some(p as u16),
                _ => {
                    return Err(BadLease(format!(
                        "{field}.Port {} is not a port",
                        crate::quote::json(v)
                    )));
                }
            },
        };
        Ok(WireguardLease { public_key, port })
    }

    /// The `BackendData` value, in Flannel's field order.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"PublicKey":"{}","Port":{}}}"#,
            format_key(&self.public_key),
            self.port.unwrap_or(0)
        )
    }
}

//! The wireguard fields of the network config's `Backend` object, as Flannel reads them
//! (pkg/backend/wireguard/wireguard.go): `ListenPort` (51820), `ListenPortV6` (51821), `MTU`
//! (the outer MTU: the device gets 80 less), `PSK` (base64, 32 bytes), `PersistentKeepalive
//! Interval` (integer seconds, 0 = off) and `Mode` (`separate` by default). Keys match
//! case-insensitively, as Go's encoding/json does.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::netconf::{ConfigError, get, get_str, get_u64};

/// What WireGuard adds to each inner packet at most: outer IPv6 40 (Flannel counts the larger
/// family) + UDP 8 + message type 4 + receiver index 4 + counter 8 + tag 16.
pub const OVERHEAD: u32 = 80;

/// `ListenPort` unless configured.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// `ListenPortV6` unless configured.
pub const DEFAULT_LISTEN_PORT_V6: u16 = 51821;

/// `Backend.Mode`: which devices carry which family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One device per family (`flannel-wg`, `flannel-wg-v6`), Flannel's default.
    Separate,
    /// One device for both families, endpoints chosen per peer.
    Auto,
    /// One device for both families over IPv4 endpoints.
    Ipv4,
    /// One device for both families over IPv6 endpoints.
    Ipv6,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Separate => "separate",
            Mode::Auto => "auto",
            Mode::Ipv4 => "ipv4",
            Mode::Ipv6 => "ipv6",
        }
    }
}

/// The wireguard backend's settings from the network config.
#[derive(Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// The pre-shared key mixed into every handshake, if any.
    pub psk: Option<[u8; 32]>,
    /// Seconds between keepalives when nothing else is sent; 0 = off.
    pub persistent_keepalive: u16,
    pub mode: Mode,
}

// The PSK is a secret: it never appears in logs, not even in a debug print.
impl std::fmt::Debug for WireguardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireguardConfig")
            .field("listen_port", &self.listen_port)
            .field("listen_port_v6", &self.listen_port_v6)
            .field("psk", &self.psk.map(|_| "(set)"))
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("mode", &self.mode)
            .finish()
    }
}

impl WireguardConfig {
    /// One line for the log of config changes (the PSK only as set or not).
    pub fn summary(&self) -> String {
        format!(
            "ListenPort {}, ListenPortV6 {}, PSK {}, PersistentKeepaliveInterval {}, Mode {}",
            self.listen_port,
            self.listen_port_v6,
            if self.psk.is_some() { "set" } else { "unset" },
            self.persistent_keepalive,
            self.mode.as_str()
        )
    }
}

fn err(field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        why: why.into(),
    }
}

fn port(
    b: &Map<String, Value>,
    key: &'static str,
    field: &'static str,
    default: u16,
) -> Result<u16, ConfigError> {
    match get_u64(b, key).map_err(|e| err(field, e.why))? {
        None | Some(0) => Ok(default),
        Some(p) if p <= 65535 => Ok(p as u16),
        Some(p) => Err(err(field, format!("{p} is not a port (1 to 65535)"))),
    }
}

/// Parses the wireguard fields of `Backend` (`b`).
pub fn parse(b: &Map<String, Value>) -> Result<WireguardConfig, ConfigError> {
    let listen_port = port(b, "ListenPort", "Backend.ListenPort", DEFAULT_LISTEN_PORT)?;
    let listen_port_v6 = port(
        b,
        "ListenPortV6",
        "Backend.ListenPortV6",
        DEFAULT_LISTEN_PORT_V6,
    )?;
    let psk = match get_str(b, "PSK").map_err(|e| err("Backend.PSK", e.why))? {
        None | Some("") => None,
        Some(text) => Some(parse_key(text).map_err(|why| err("Backend.PSK", why))?),
    };
    let persistent_keepalive = match get(b, "PersistentKeepaliveInterval") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|s| s <= 65535) => {
            n.as_u64().unwrap_or(0) as u16
        }
        Some(other) => {
            return Err(err(
                "Backend.PersistentKeepaliveInterval",
                format!(
                    "expected whole seconds from 0 to 65535 (a JSON integer, as Flannel reads it), got {}",
                    crate::quote::json(other)
                ),
            ));
        }
    };
    let mode = match get_str(b, "Mode").map_err(|e| err("Backend.Mode", e.why))? {
        None | Some("") | Some("separate") => Mode::Separate,
        Some("auto") => Mode::Auto,
        Some("ipv4") => Mode::Ipv4,
        Some("ipv6") => Mode::Ipv6,
        Some(other) => {
            return Err(err(
                "Backend.Mode",
                format!(
                    "{} is not a mode: use separate, auto, ipv4 or ipv6",
                    crate::quote::quote(other)
                ),
            ));
        }
    };
    if let Some(m) = get_u64(b, "MTU").map_err(|e| err("Backend.MTU", e.why))?
        && m != 0
        && m < u64::from(OVERHEAD) + 68
    {
        return Err(err(
            "Backend.MTU",
            format!(
                "{m} leaves no room for IPv4 after WireGuard's {OVERHEAD} bytes (at least {})",
                OVERHEAD + 68
            ),
        ));
    }
    Ok(WireguardConfig {
        listen_port,
        listen_port_v6,
        psk,
        persistent_keepalive,
        mode,
    })
}

/// A WireGuard key (private, public or pre-shared): 32 bytes in standard base64, as `wg
/// genkey`/`wg genpsk` print them.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "not base64 (expected a key as `wg genpsk` prints it)".to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, a key has 32", bytes.len()))
}

/// A key in standard base64.
pub fn format_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(backend: &str) -> Result<WireguardConfig, ConfigError> {
        let b: Value = serde_json::from_str(backend).unwrap();
        parse(b.as_object().unwrap())
    }

    #[test]
    fn flannel_defaults_and_fields() {
        let c = parse_text(r#"{"Type":"wireguard"}"#).unwrap();
        assert_eq!(
            (
                c.listen_port,
                c.listen_port_v6,
                c.psk,
                c.persistent_keepalive,
                c.mode
            ),
            (51820, 51821, None, 0, Mode::Separate)
        );
        let psk = format_key(&[7u8; 32]);
        let c = parse_text(&format!(
            r#"{{"type":"wireguard","listenPort":5000,"PSK":"{psk}","PersistentKeepaliveInterval":25,"Mode":"ipv4"}}"#
        ))
        .unwrap();
        assert_eq!(
            (c.listen_port, c.psk, c.persistent_keepalive, c.mode),
            (5000, Some([7u8; 32]), 25, Mode::Ipv4)
        );
        assert!(!format!("{c:?}").contains(&psk), "the PSK is never printed");
        assert!(!c.summary().contains(&psk));
    }

    #[test]
    fn bad_fields_are_named() {
        let short = format_key(&[1u8; 32])[..20].to_string();
        for (text, field) in [
            (r#"{"ListenPort":70000}"#.to_string(), "Backend.ListenPort"),
            (
                r#"{"ListenPort":"51820"}"#.to_string(),
                "Backend.ListenPort",
            ),
            (r#"{"ListenPortV6":-1}"#.to_string(), "Backend.ListenPortV6"),
            (r#"{"PSK":"not base64!"}"#.to_string(), "Backend.PSK"),
            (format!(r#"{{"PSK":"{short}"}}"#), "Backend.PSK"),
            (r#"{"PSK":"AAAA"}"#.to_string(), "Backend.PSK"),
            (
                r#"{"PersistentKeepaliveInterval":"25s"}"#.to_string(),
                "Backend.PersistentKeepaliveInterval",
            ),
            (
                r#"{"PersistentKeepaliveInterval":2.5}"#.to_string(),
                "Backend.PersistentKeepaliveInterval",
            ),
            (r#"{"Mode":"both"}"#.to_string(), "Backend.Mode"),
            (r#"{"Mode":"IPv6"}"#.to_string(), "Backend.Mode"),
            (r#"{"Mode":1}"#.to_string(), "Backend.Mode"),
            (r#"{"MTU":100}"#.to_string(), "Backend.MTU"),
        ] {
            let e = parse_text(&text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn every_flannel_mode_is_taken() {
        for (text, mode) in [
            ("separate", Mode::Separate),
            ("auto", Mode::Auto),
            ("ipv4", Mode::Ipv4),
            ("ipv6", Mode::Ipv6),
        ] {
            let c = parse_text(&format!(r#"{{"Mode":"{text}","ListenPortV6":5001}}"#)).unwrap();
            assert_eq!((c.mode, c.listen_port_v6), (mode, 5001));
            assert_eq!(c.mode.as_str(), text);
        }
    }
}

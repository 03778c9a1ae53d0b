//! Quoting values that come from outside (etcd keys' values, config fields) into messages:
//! at most a few dozen characters, so a megabyte of garbage never becomes a megabyte log line.

/// Characters of an outside value shown in a message.
const MAX_CHARS: usize = 64;

/// `text` as a Rust-style quoted string, cut to 64 characters with the full size said.
pub fn quote(text: &str) -> String {
    let mut chars = text.char_indices();
    match chars.nth(MAX_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}

/// A JSON value as text, cut like [`quote`] (strings keep their JSON quotes).
pub fn json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        None => text,
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_their_size_said() {
        assert_eq!(quote("short"), "\"short\"");
        let big = "x".repeat(1 << 20);
        let q = quote(&big);
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("… (1048576 bytes)"), "{q}");
        let multi = "é".repeat(100);
        assert!(quote(&multi).contains("(200 bytes)"));
        let v = serde_json::Value::String(big);
        assert!(json(&v).len() < 100);
        assert_eq!(json(&serde_json::json!(5)), "5");
    }
}

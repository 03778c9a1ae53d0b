//! nftables: twill owns whole tables and replaces each one in a single atomic batch
//! (`nft -f -`). It never reads rules back to diff them — nft 1.0.6's JSON output does not
//! parse reliably, and a whole-table swap is both simpler and race-free.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// nftables address family of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
}

impl Family {
    fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }
}

/// What a base chain is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// `prerouting`, `input`, `forward`, `output`, `postrouting`.
    pub hook: &'static str,
    pub priority: i32,
    /// `accept` or `drop`.
    pub policy: &'static str,
}

impl Hook {
    /// A NAT chain on postrouting (priority 100, srcnat), for masquerade rules.
    pub fn nat_postrouting() -> Hook {
        Hook {
            kind: "nat",
            hook: "postrouting",
            priority: 100,
            policy: "accept",
        }
    }

    /// A filter chain on forward (priority 0, policy accept).
    pub fn filter_forward() -> Hook {
        Hook {
            kind: "filter",
            hook: "forward",
            priority: 0,
            policy: "accept",
        }
    }
}

/// One rule: an nft expression and an optional comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub expr: String,
    pub comment: Option<String>,
}

impl Rule {
    /// A rule with a comment (shown by `nft list`).
    pub fn new(expr: impl Into<String>, comment: impl Into<String>) -> Rule {
        Rule {
            expr: expr.into(),
            comment: Some(comment.into()),
        }
    }
}

/// A chain; base chains have a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// A whole table as twill wants it to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub chains: Vec<Chain>,
}

fn check_ident(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        && s.as_bytes()[0].is_ascii_alphabetic();
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid nftables {what} name {s:?}: letters, digits, '-' and '_', starting with a letter"
        )))
    }
}

/// Whether `expr` stays within its own rule line: no line break, and outside quoted strings
/// no statement separator, block brace or comment sign. A quote left open would swallow the
/// rule's `comment "…"` and turn the comment's text into statements of the script.
fn is_one_expression(expr: &str) -> bool {
    let mut quoted = false;
    for ch in expr.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_control() => return false,
            ';' | '{' | '}' | '#' if !quoted => return false,
            _ => {}
        }
    }
    !quoted
}

impl Table {
    /// An empty table.
    pub fn new(family: Family, name: &str) -> Table {
        Table {
            family,
            name: name.to_string(),
            chains: Vec::new(),
        }
    }

    /// The nft script that atomically replaces this table: the leading empty `table`
    /// statement makes the `delete` succeed whether or not the table existed.
    pub fn render(&self) -> Result<String> {
        check_ident("table", &self.name)?;
        let fam = self.family.as_str();
        let mut s = format!(
            "table {fam} {n}\ndelete table {fam} {n}\ntable {fam} {n} {{\n",
            n = self.name
        );
        for chain in &self.chains {
            check_ident("chain", &chain.name)?;
            s.push_str(&format!("  chain {} {{\n", chain.name));
            if let Some(h) = &chain.hook {
                s.push_str(&format!(
                    "    type {} hook {} priority {}; policy {};\n",
                    h.kind, h.hook, h.priority, h.policy
                ));
            }
            for rule in &chain.rules {
                if !is_one_expression(&rule.expr) {
                    return Err(Error::Invalid(format!(
                        "nftables rule in chain {} must be one expression: {:?}",
                        chain.name, rule.expr
                    )));
                }
                s.push_str("    ");
                s.push_str(&rule.expr);
                if let Some(c) = &rule.comment {
                    let clean: String = c
                        .chars()
                        .filter(|ch| *ch != '"' && !ch.is_control())
                        .collect();
                    s.push_str(&format!(" comment \"{clean}\""));
                }
                s.push('\n');
            }
            s.push_str("  }\n");
        }
        s.push_str("}\n");
        Ok(s)
    }

    /// Replaces the table in the calling thread's namespace.
    pub fn apply(&self) -> Result<()> {
        run_nft(&self.render()?, "(current)")
    }

    /// Replaces the table inside `ns`.
    pub fn apply_in(&self, ns: &Netns) -> Result<()> {
        let script = self.render()?;
        ns.enter(|| run_nft(&script, ns.label()))?
    }
}

/// Removes table `name` of `family` in the calling thread's namespace; absent is fine.
pub fn remove_table(family: Family, name: &str) -> Result<()> {
    check_ident("table", name)?;
    let fam = family.as_str();
    run_nft(
        &format!("table {fam} {name}\ndelete table {fam} {name}\n"),
        "(current)",
    )
}

/// `nft list table` output, for diagnostics and tests (never parsed by twill itself).
pub fn list_table(family: Family, name: &str) -> Result<String> {
    check_ident("table", name)?;
    let out = Command::new("nft")
        .args(["list", "table", family.as_str(), name])
        .output()
        .map_err(|e| nft_spawn_error(e, "(current)"))?;
    if !out.status.success() {
        return Err(Error::Tool {
            op: "listing nftables table",
            netns: "(current)".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft_spawn_error(e: std::io::Error, netns: &str) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::Tool {
            op: "running nft",
            netns: netns.to_string(),
            detail: "nft not found in PATH: install the nftables package".into(),
        }
    } else {
        Error::io("running", "nft", e)
    }
}

fn run_nft(script: &str, netns: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| nft_spawn_error(e, netns))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::io("writing script to", "nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for", "nft", e))?;
    if !out.status.success() {
        return Err(Error::Tool {
            op: "applying nftables batch",
            netns: netns.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_whole_table_replacement() {
        let t = Table {
            family: Family::Inet,
            name: "twill".into(),
            chains: vec![Chain {
                name: "postrouting".into(),
                hook: Some(Hook::nat_postrouting()),
                rules: vec![Rule::new("ip saddr 10.0.0.0/8 masquerade", "x\"y")],
            }],
        };
        let s = t.render().unwrap();
        assert!(s.starts_with("table inet twill\ndelete table inet twill\ntable inet twill {\n"));
        assert!(s.contains("type nat hook postrouting priority 100; policy accept;"));
        assert!(s.contains("masquerade comment \"xy\""));
    }

    #[test]
    fn rejects_bad_names_and_injected_rules() {
        let mut t = Table::new(Family::Ip, "bad name");
        assert!(t.render().is_err());
        t.name = "ok".into();
        t.chains.push(Chain {
            name: "c".into(),
            hook: None,
            rules: vec![Rule::new("accept; flush ruleset", "")],
        });
        let err = t.render().unwrap_err().to_string();
        assert!(err.contains("one expression"), "{err}");
    }

    #[test]
    fn an_open_quote_cannot_turn_the_comment_into_statements() {
        let mut t = Table::new(Family::Inet, "twill");
        t.chains.push(Chain {
            name: "c".into(),
            hook: None,
            rules: vec![Rule::new(
                "counter comment \"",
                "; } ; } ; delete table ip victim ; table ip x { chain y { #",
            )],
        });
        let err = t.render().unwrap_err().to_string();
        assert!(err.contains("one expression"), "{err}");
        for bad in ["accept # x", "accept\r", "iifname \"a\" \""] {
            t.chains[0].rules = vec![Rule::new(bad, "c")];
            assert!(t.render().is_err(), "{bad:?} was accepted");
        }
        // Inside a quoted string those characters are data, and a comment is one string.
        t.chains[0].rules = vec![Rule::new(
            "iifname \"x{1};#\" accept",
            "a \"b\"; } { # \r\n",
        )];
        let s = t.render().unwrap();
        assert!(
            s.contains("    iifname \"x{1};#\" accept comment \"a b; } { # \"\n"),
            "{s}"
        );
    }
}

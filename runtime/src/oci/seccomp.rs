//! `linux.seccomp`: the profile compiled with libseccomp (as runc and crun do) in `create`, so
//! a bad profile fails there, and loaded by the container process right before exec. Syscall
//! names this libseccomp does not know are skipped, as runc skips them; everything else the
//! profile says is applied or refused.

use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::Deserialize;

use crate::error::{Result, RuntimeError};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    pub listener_path: Option<String>,
    #[serde(default)]
    pub syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub names: Vec<String>,
    pub action: String,
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<Arg>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

fn bad(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Invalid(format!("linux.seccomp: {what}"))
}

fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction> {
    let val = match name {
        // EPERM unless the profile says otherwise, as runc.
        "SCMP_ACT_ERRNO" => Some(errno.unwrap_or(libc::EPERM as u32) as i32),
        "SCMP_ACT_TRACE" => Some(errno.unwrap_or(libc::EPERM as u32) as i32),
        _ => None,
    };
    if name == "SCMP_ACT_NOTIFY" {
        return Err(bad("SCMP_ACT_NOTIFY (a seccomp listener) is not supported"));
    }
    ScmpAction::from_str(name, val).map_err(|e| bad(format!("action {name}: {e}")))
}

fn compare(a: &Arg) -> Result<ScmpArgCompare> {
    let op = match a.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // The OCI profile's value is the mask, valueTwo the datum.
        "SCMP_CMP_MASKED_EQ" => {
            return Ok(ScmpArgCompare::new(
                a.index,
                ScmpCompareOp::MaskedEqual(a.value),
                a.value_two,
            ));
        }
        other => return Err(bad(format!("unknown operator {other}"))),
    };
    Ok(ScmpArgCompare::new(a.index, op, a.value))
}

/// Compiles `profile` (config.json's `linux.seccomp`) into a filter ready to load.
pub fn compile(profile: &serde_json::Value) -> Result<ScmpFilterContext> {
    let p: Profile =
        serde_json::from_value(profile.clone()).map_err(|e| bad(format!("parsing: {e}")))?;
    if p.listener_path.is_some() {
        return Err(bad("listenerPath (a seccomp agent) is not supported"));
    }
    let default = action(&p.default_action, p.default_errno_ret)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(bad)?;
    // no_new_privs is the config's process.noNewPrivileges, not libseccomp's choice.
    ctx.set_ctl_nnp(false).map_err(bad)?;
    for f in &p.flags {
        // As runc: each flag is a libseccomp attribute, which fails here when this
        // libseccomp or kernel cannot apply it (a filter loaded without it would be silently
        // weaker or quieter than the profile asked).
        let set = match f.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => ctx.set_ctl_tsync(true),
            "SECCOMP_FILTER_FLAG_LOG" => ctx.set_ctl_log(true),
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => ctx.set_ctl_ssb(true),
            // Only meaningful with a listener (SCMP_ACT_NOTIFY), refused above and below;
            // and libseccomp 2.5 has no attribute for it.
            "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" => {
                return Err(bad(format!(
                    "flag {f} is not supported (it needs a seccomp listener, which twill-oci \
                     does not support)"
                )));
            }
            _ => return Err(bad(format!("flag {f} is not supported"))),
        };
        set.map_err(|e| bad(format!("flag {f}: {e}")))?;
    }
    for a in &p.architectures {
        let arch = ScmpArch::from_str(a).map_err(|e| bad(format!("architecture {a}: {e}")))?;
        if arch != ScmpArch::native() {
            ctx.add_arch(arch)
                .map_err(|e| bad(format!("architecture {a}: {e}")))?;
        }
    }
    for rule in &p.syscalls {
        let act = action(&rule.action, rule.errno_ret)?;
        if act == default {
            continue;
        }
        let conds: Vec<ScmpArgCompare> = rule.args.iter().map(compare).collect::<Result<_>>()?;
        let mut indexes: Vec<u32> = rule.args.iter().map(|a| a.index).collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in &rule.names {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let added = if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else if repeated {
                // libseccomp takes one condition per argument in a rule: one rule each.
                conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, sc, &[*c]).map(|_| ()))
                    .map(|_| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
            };
            added.map_err(|e| bad(format!("rule for {name}: {e}")))?;
        }
    }
    Ok(ctx)
}

/// Loads a compiled filter into the calling process.
pub fn load(ctx: &ScmpFilterContext) -> Result<()> {
    ctx.load()
        .map_err(|e| bad(format!("loading the filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_compiles_and_bad_ones_are_refused() {
        let ok = serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "no_such_syscall_here"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        });
        compile(&ok).unwrap();
        for (bad, want) in [
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_NOPE"}),
                "SCMP_ACT_NOPE",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x"}),
                "listenerPath",
            ),
            (
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                     "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_WHAT"}]}]}),
                "SCMP_CMP_WHAT",
            ),
            (serde_json::json!({"syscalls": []}), "parsing"),
        ] {
            let e = compile(&bad).unwrap_err().to_string();
            assert!(e.contains("linux.seccomp") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn filter_flags_are_set_on_the_filter() {
        // Before: SPEC_ALLOW and LOG were accepted and dropped.
        let ctx = compile(&serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_LOG"}]
        }))
        .unwrap();
        assert!(ctx.get_ctl_ssb().unwrap(), "SPEC_ALLOW");
        assert!(ctx.get_ctl_log().unwrap(), "LOG");
        let ctx = compile(&serde_json::json!({"defaultAction": "SCMP_ACT_LOG"})).unwrap();
        assert!(!ctx.get_ctl_ssb().unwrap() && !ctx.get_ctl_log().unwrap());
        assert_eq!(ctx.get_act_default().unwrap(), ScmpAction::Log);
        let ctx = compile(&serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_TSYNC"]
        }))
        .unwrap();
        assert!(ctx.get_ctl_tsync().unwrap(), "TSYNC");
        let e = compile(&serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"), "{e}");
    }
}

//! twill-cni: the `twill` CNI plugin (spec 1.1, answering 0.3.0 to 1.1.0). Per container: a
//! veth pair with the host end on a bridge (`cni0`) and the container end as CNI_IFNAME, an
//! address from twill's host-local-style IPAM over the subnet file (or a delegated IPAM
//! plugin), routes and MTU; with ipMasq, one masquerade table per network with one rule per
//! container subnet. ADD, DEL, CHECK,
//! STATUS and GC; a failed ADD is rolled back step by step.

pub mod commands;
pub mod config;
pub mod env;
pub mod error;
pub mod ipam;
pub mod lockfile;
pub mod masq;
pub mod result;
pub mod rollback;
pub mod setup;
pub mod version;

use config::NetConf;
use env::Command;
use error::CniError;

/// What the plugin prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one CNI invocation: `get` reads the environment, `stdin` is the network config.
/// Never panics on bad input; errors become the spec's JSON on stdout and exit code 1.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let cmd = match env::command(get) {
        Ok(c) => c,
        Err(e) => return failure(&e, version::LATEST),
    };
    if cmd == Command::Version {
        return Outcome {
            stdout: version::version_answer(stdin),
            exit_code: 0,
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => {
            let v = serde_json::from_slice::<serde_json::Value>(stdin)
                .ok()
                .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
                .unwrap_or_else(|| version::LATEST.to_string());
            return failure(&e, &v);
        }
    };
    let version = match version::negotiate(&conf.cni_version) {
        Ok(v) => v,
        Err(e) => return failure(&e, &conf.cni_version),
    };
    let gate = match cmd {
        Command::Check => version::allows(&version, "CHECK"),
        Command::Status => version::allows(&version, "STATUS"),
        Command::Gc => version::allows(&version, "GC"),
        _ => Ok(()),
    };
    if let Err(e) = gate {
        return failure(&e, &version);
    }
    let env = match env::parse(cmd, get) {
        Ok(e) => e,
        Err(e) => return failure(&e, &version),
    };
    let done = match cmd {
        Command::Add => commands::add(&conf, &env, stdin, &version),
        Command::Del => commands::del(&conf, &env, stdin).map(|_| String::new()),
        Command::Check => commands::check(&conf, &env, stdin).map(|_| String::new()),
        Command::Status => commands::status(&conf, &env).map(|_| String::new()),
        Command::Gc => commands::gc(&conf, &env, stdin).map(|_| String::new()),
        Command::Version => unreachable!("answered above"),
    };
    match done {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => failure(&e, &version),
    }
}

fn failure(e: &CniError, version: &str) -> Outcome {
    eprintln!("twill: {e}");
    Outcome {
        stdout: e.to_json(version),
        exit_code: 1,
    }
}

//! `twill`: the CNI plugin binary. All logic is in the library; this reads stdin and the
//! environment and prints the outcome.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("twill: reading stdin: {e}");
    }
    let get = |k: &str| std::env::var(k).ok();
    let out = twill_cni::run(&get, &stdin);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.stdout.as_bytes());
    let _ = stdout.flush();
    std::process::exit(out.exit_code);
}

//! `twilld`: parses flags (Flannel's names, TWILLD_*/FLANNELD_* env vars) and runs the agent.

use std::io::IsTerminal;

use clap::Parser;
use twill_agent::cli::{Cli, Command, flannel_env_fallbacks, go_style_args};

fn main() {
    // Before any thread exists: FLANNELD_X fills in for an unset TWILLD_X.
    for (k, v) in flannel_env_fallbacks(|k| std::env::var(k).ok()) {
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var(k, v) };
    }
    let cli = Cli::parse_from(go_style_args(std::env::args_os()));
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level).unwrap_or_else(|e| {
        eprintln!("twilld: invalid --log-level {:?}: {e}", cli.log_level);
        std::process::exit(2);
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file, the journal or `kubectl logs` get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twilld: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Some(Command::Status) => twill_agent::status::run(&cli).await,
            None => twill_agent::agent::run(cli).await,
        }
    });
    if let Err(e) = result {
        eprintln!("twilld: {e:#}");
        std::process::exit(1);
    }
}

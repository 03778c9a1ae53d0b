//! `twilld`: parses flags (Flannel's names, TWILLD_*/FLANNELD_* env vars) and runs the agent.

use std::io::IsTerminal;

use twill_agent::cli::Command;

fn main() {
    let cli = twill_agent::cli::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level).unwrap_or_else(|e| {
        let msg = format!("invalid --log-level {:?}: {e}", cli.log_level);
        eprintln!("twilld: {}", cli.from_env.explain(&msg));
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
    let from_env = cli.from_env.clone();
    let result = rt.block_on(async {
        match cli.command {
            Some(Command::Status) => twill_agent::status::run(&cli).await,
            None => twill_agent::agent::run(cli).await,
        }
    });
    if let Err(e) = result {
        eprintln!("twilld: {}", from_env.explain(&format!("{e:#}")));
        std::process::exit(1);
    }
}

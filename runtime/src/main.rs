//! `twill-run`: a thin CLI over the twill-runtime library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use twill_runtime::container::{self, RunOptions};
use twill_runtime::image;
use twill_runtime::network::{CniOptions, NetMode};
use twill_runtime::store::{Limits, PortSpec, Status, Store};

/// twill-run: run containers on a twill network. Needs root.
#[derive(Parser)]
#[command(name = "twill-run", version, about)]
struct Cli {
    /// State and image store.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/twill",
        env = "TWILL_RUN_ROOT"
    )]
    root: PathBuf,
    /// CNI network configuration directory.
    #[arg(long, global = true, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// CNI plugin directories (colon separated).
    #[arg(long, global = true, default_value = "/opt/cni/bin:/usr/lib/cni")]
    cni_path: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import a rootfs tarball (.tar or .tar.gz) as image NAME.
    Import { tarball: PathBuf, name: String },
    /// List images.
    Images,
    /// Run a container.
    Run(Box<RunArgs>),
    /// Run a command in a running container.
    Exec {
        /// Keep stdin attached.
        #[arg(short, long)]
        interactive: bool,
        id: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// List containers.
    Ps,
    /// Print a container's state as JSON.
    Inspect { id: String },
    /// Print a detached container's output.
    Logs { id: String },
    /// Stop a container: SIGTERM, then SIGKILL after the grace period.
    Stop {
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        id: String,
    },
    /// Remove a container (-f: also a running one).
    Rm {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Save a container's changes as a new image.
    Commit { id: String, name: String },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Environment variable K=V (repeatable).
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    /// UID[:GID]
    #[arg(short, long)]
    user: Option<String>,
    /// HOST:CTR[:ro] or CTR (anonymous volume); repeatable.
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// Memory limit, e.g. 64m, 1g.
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit, e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids_limit: Option<u64>,
    /// host, none, bridge or container:ID.
    #[arg(long, default_value = "bridge")]
    net: String,
    /// CNI network name (default: the first in --cni-conf-dir).
    #[arg(long)]
    network: Option<String>,
    /// HOSTPORT:CTRPORT[/tcp|udp]; repeatable.
    #[arg(short, long = "publish")]
    publish: Vec<String>,
    /// Map root in the container to an unprivileged host range: `--userns` (100000:65536)
    /// or `--userns=HOSTID:SIZE`. The image layers are mounted idmapped, so they look root-owned inside.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "100000:65536", value_name = "HOSTID:SIZE")]
    userns: Option<String>,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the ID.
    #[arg(short, long)]
    detach: bool,
    /// Keep stdin attached.
    #[arg(short, long)]
    interactive: bool,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        Some('b') => (&s[..s.len() - 1], 1),
        _ => (&s[..], 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("--memory {s:?}: expected a size like 64m"))?;
    Ok(n * mult)
}

fn parse_port(s: &str) -> anyhow::Result<PortSpec> {
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    if proto != "tcp" && proto != "udp" {
        bail!("-p {s}: protocol must be tcp or udp");
    }
    let (h, c) = ports
        .split_once(':')
        .with_context(|| format!("-p {s}: expected HOSTPORT:CTRPORT"))?;
    Ok(PortSpec {
        host_port: h
            .parse()
            .with_context(|| format!("-p {s}: bad host port"))?,
        container_port: c
            .parse()
            .with_context(|| format!("-p {s}: bad container port"))?,
        protocol: proto.to_string(),
    })
}

fn main() {
    // Die quietly on a closed pipe (`| head`), like other command-line tools.
    // SAFETY: restoring the default disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("twill-run: {e:#}");
            std::process::exit(125);
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<i32> {
    // Said first and plainly, instead of a "Permission denied" on the store's directory.
    if !nix::unistd::geteuid().is_root() {
        bail!("twill-run needs root (it creates namespaces, mounts and cgroups); run it with sudo");
    }
    let store = Store::open(&cli.root)?;
    let cni = CniOptions {
        conf_dir: cli.cni_conf_dir.clone(),
        path: std::env::split_paths(&cli.cni_path).collect(),
        network: None,
    };
    match cli.cmd {
        Cmd::Import { tarball, name } => {
            let img = image::import(&store, &tarball, &name)?;
            println!("{}", img.name);
        }
        Cmd::Images => {
            println!("{:<24} {:>7}", "NAME", "LAYERS");
            for i in image::list(&store)? {
                println!("{:<24} {:>7}", i.name, i.layers.len());
            }
        }
        Cmd::Run(a) => {
            let limits = Limits {
                memory_bytes: a.memory.as_deref().map(parse_size).transpose()?,
                cpus: a.cpus,
                pids: a.pids_limit,
            };
            if a.cpus.is_some_and(|c| c <= 0.0) {
                bail!("--cpus must be positive");
            }
            let opts = RunOptions {
                image: a.image,
                command: a.cmd,
                name: a.name,
                hostname: a.hostname,
                env: a.env,
                workdir: a.workdir,
                user: a.user,
                userns: a
                    .userns
                    .as_deref()
                    .map(twill_runtime::userns::IdMap::parse)
                    .transpose()?,
                volumes: a.volume,
                limits,
                net: NetMode::parse(&a.net)?,
                ports: a
                    .publish
                    .iter()
                    .map(|p| parse_port(p))
                    .collect::<anyhow::Result<_>>()?,
                auto_remove: a.rm,
                interactive: a.interactive,
            };
            let cni = CniOptions {
                network: a.network,
                ..cni
            };
            if a.detach {
                println!("{}", container::run_detached(&store, &opts, &cni)?);
                return Ok(0);
            }
            let (st, pid) = container::start(&store, &opts, &cni, false)?;
            return Ok(container::monitor(&store, st, pid, &cni)?);
        }
        Cmd::Exec {
            interactive,
            id,
            cmd,
        } => return Ok(container::exec(&store, &id, &cmd, interactive)?),
        Cmd::Ps => {
            println!(
                "{:<13} {:<16} {:<12} {:<12} IPS",
                "ID", "NAME", "IMAGE", "STATUS"
            );
            for s in store.list()? {
                let status = match s.exit_code {
                    Some(c) if s.status == Status::Exited => format!("{}({c})", s.status),
                    _ => s.status.to_string(),
                };
                println!(
                    "{:<13} {:<16} {:<12} {:<12} {}",
                    &s.id[..12],
                    s.name,
                    s.image,
                    status,
                    s.ips.join(",")
                );
            }
        }
        Cmd::Inspect { id } => println!("{}", serde_json::to_string_pretty(&store.load(&id)?)?),
        Cmd::Logs { id } => {
            let st = store.load(&id)?;
            let log = store.container_dir(&st.id).join("log");
            print!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        Cmd::Stop { time, id } => {
            let st = container::stop(&store, &id, Duration::from_secs(time))?;
            println!("{}", st.name);
        }
        Cmd::Rm { force, id } => {
            container::remove(&store, &id, force, &cni)?;
            println!("{id}");
        }
        Cmd::Commit { id, name } => println!("{}", container::commit(&store, &id, &name)?.name),
    }
    Ok(0)
}

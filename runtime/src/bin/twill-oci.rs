//! `twill-oci`: the OCI runtime command line (as runc's) over the twill-runtime library, so
//! engines such as podman can run containers with twill: `podman --runtime $(which twill-oci)`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use twill_runtime::oci::{self, create::CreateOptions, spec, state::Root};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// twill-oci: an OCI runtime (runc's command line). Needs root.
#[derive(Parser)]
#[command(name = "twill-oci", disable_version_flag = true)]
struct Cli {
    /// Where container state lives.
    #[arg(long, global = true, default_value = "/run/twill-oci")]
    root: PathBuf,
    /// Errors are appended here too (engines read them back).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Refused: twill-oci manages cgroupfs paths only.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Log each command to --log.
    #[arg(long, global = true)]
    debug: bool,
    /// Print the version and the runtime-spec version.
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container from a bundle; its process waits for `start`.
    Create {
        /// The bundle: config.json and the root filesystem it names.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write the container process's PID here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// With process.terminal (which needs it here): the AF_UNIX socket the pty's master
        /// is sent to.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Enter the root with MS_MOVE and chroot instead of pivot_root (a root on a
        /// ramdisk).
        #[arg(long)]
        no_pivot: bool,
        /// Accepted for runc compatibility: twill-oci never creates a session keyring.
        #[arg(long)]
        no_new_keyring: bool,
        /// Pass on descriptors 3 to 3+N-1 (each must be open) to the process.
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    /// Start a created container's process.
    Start { id: String },
    /// create + start, then wait for the process and delete the container (runc's run);
    /// exits with the process's code. With process.terminal and no --detach the process
    /// gets a pty relayed to and from this terminal.
    Run {
        /// The bundle: config.json and the root filesystem it names.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write the container process's PID here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Return once the process has exec'd and leave it running, with this command's
        /// stdio (a failure before its exec is reported, the container deleted unless
        /// --keep).
        #[arg(short, long)]
        detach: bool,
        /// With --detach and process.terminal (which needs it then): the AF_UNIX socket the
        /// pty's master is sent to.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Do not delete the container when its process ends (or fails to start): it stays,
        /// stopped, for `state` and `delete`.
        #[arg(long)]
        keep: bool,
        /// Enter the root with MS_MOVE and chroot instead of pivot_root (a root on a
        /// ramdisk).
        #[arg(long)]
        no_pivot: bool,
        /// Accepted for runc compatibility: twill-oci never creates a session keyring.
        #[arg(long)]
        no_new_keyring: bool,
        /// Accepted for runc compatibility: twill-oci run never becomes a child subreaper
        /// (orphans of a container without a pid namespace go to init, as with this flag).
        #[arg(long)]
        no_subreaper: bool,
        /// Pass on descriptors 3 to 3+N-1 (each must be open) to the process.
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    /// Print the runtime-spec state of a container.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's process, or with --all to all.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Remove a stopped (with --force: any) container.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// The processes of a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
    },
    /// Run a process in a running container.
    Exec {
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(short, long)]
        tty: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        cwd: Option<String>,
        #[arg(short, long)]
        env: Vec<String>,
        /// UID[:GID]
        #[arg(short, long)]
        user: Option<String>,
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Freeze a container's processes.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// The runtime-spec features JSON.
    Features,
}

fn version() -> String {
    format!(
        "twill-oci version {}\nspec: {}\n",
        env!("CARGO_PKG_VERSION"),
        oci::SPEC_VERSION
    )
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `exec`'s command-line form of the process (without `--process`).
struct ExecCommandLine {
    cwd: Option<String>,
    env: Vec<String>,
    user: Option<String>,
    args: Vec<String>,
    tty: bool,
}

fn exec_process(
    root: &Root,
    id: &str,
    file: Option<&PathBuf>,
    cl: ExecCommandLine,
) -> anyhow::Result<spec::Process> {
    let ExecCommandLine {
        cwd,
        env,
        user,
        args,
        tty,
    } = cl;
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()));
    }
    if args.is_empty() {
        bail!("exec needs --process FILE or a command");
    }
    // As runc: the container's own process settings, with the command line's overrides.
    let saved = root.load(id)?;
    let mut p = spec::Spec::load(&saved.bundle)?.process.unwrap_or_default();
    p.args = args;
    p.terminal = tty;
    spec::override_env(&mut p.env, env)?;
    if let Some(c) = cwd {
        p.cwd = c;
    }
    if let Some(u) = user {
        let (uid, gid) = u.split_once(':').unwrap_or((&u, "0"));
        p.user.uid = uid
            .parse()
            .with_context(|| format!("--user {u}: not a number"))?;
        p.user.gid = gid
            .parse()
            .with_context(|| format!("--user {u}: not a number"))?;
        p.user.additional_gids.clear();
    }
    Ok(p)
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    if cli.version {
        print!("{}", version());
        return Ok(0);
    }
    if cli.systemd_cgroup {
        bail!(
            "--systemd-cgroup is not supported: twill-oci manages cgroupfs paths only (podman: \
             --cgroup-manager cgroupfs)"
        );
    }
    let root = Root {
        dir: cli.root.clone(),
    };
    let Some(cmd) = cli.cmd else {
        bail!("no command given (see --help)");
    };
    match cmd {
        Cmd::Create {
            bundle,
            pid_file,
            console_socket,
            no_pivot,
            no_new_keyring: _,
            preserve_fds,
            id,
        } => {
            oci::create::create(
                &root,
                &id,
                &CreateOptions {
                    bundle,
                    pid_file,
                    console_socket,
                    no_pivot,
                    preserve_fds,
                },
            )?;
        }
        Cmd::Start { id } => oci::start(&root, &id)?,
        Cmd::Run {
            bundle,
            pid_file,
            detach,
            console_socket,
            keep,
            no_pivot,
            no_new_keyring: _,
            no_subreaper: _,
            preserve_fds,
            id,
        } => {
            let code = oci::run(
                &root,
                &id,
                &oci::RunOptions {
                    create: CreateOptions {
                        bundle,
                        pid_file,
                        console_socket,
                        no_pivot,
                        preserve_fds,
                    },
                    detach,
                    keep,
                },
            )?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::State { id } => print_json(&oci::state(&root, &id)?)?,
        Cmd::Kill { all, id, signal } => {
            let sig = oci::parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            oci::kill_container(&root, &id, sig, all)?;
        }
        Cmd::Delete { force, id } => oci::delete(&root, &id, force)?,
        Cmd::List { format, quiet } => {
            let all = oci::list(&root)?;
            if format == "json" {
                print_json(&all)?;
            } else if quiet {
                for c in &all {
                    println!("{}", c["id"].as_str().unwrap_or_default());
                }
            } else {
                println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED");
                for c in &all {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        c["id"].as_str().unwrap_or_default(),
                        c["pid"],
                        c["status"].as_str().unwrap_or_default(),
                        c["bundle"].as_str().unwrap_or_default(),
                        c["created"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        Cmd::Ps { format, id } => {
            let pids = oci::ps(&root, &id)?;
            if format == "json" {
                print_json(&pids)?;
            } else {
                println!("PID\tCMD");
                for p in pids {
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    println!("{p}\t{}", cmd.trim_end());
                }
            }
        }
        Cmd::Exec {
            process,
            detach,
            pid_file,
            tty,
            console_socket,
            cwd,
            env,
            user,
            preserve_fds,
            id,
            args,
        } => {
            let p = exec_process(
                &root,
                &id,
                process.as_ref(),
                ExecCommandLine {
                    cwd,
                    env,
                    user,
                    args,
                    tty,
                },
            )?;
            let code = oci::exec(
                &root,
                &id,
                &oci::ExecOptions {
                    process: p,
                    detach,
                    pid_file,
                    console_socket,
                    preserve_fds,
                },
            )?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::Pause { id } => oci::pause(&root, &id, true)?,
        Cmd::Resume { id } => oci::pause(&root, &id, false)?,
        Cmd::Features => print_json(&oci::features())?,
    }
    Ok(0)
}

/// Appends one log line to `--log` as runc writes it (engines show the last error).
fn log_line(path: &PathBuf, format: LogFormat, level: &str, msg: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let time = oci::state::rfc3339(now);
    let line = match format {
        LogFormat::Json => {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        }
        LogFormat::Text => format!("time=\"{time}\" level={level} msg={msg:?}"),
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (log, format, debug) = (cli.log.clone(), cli.log_format, cli.debug);
    if debug && let Some(l) = &log {
        let args: Vec<String> = std::env::args().collect();
        log_line(l, format, "debug", &args.join(" "));
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            if let Some(l) = &log {
                log_line(l, format, "error", &msg);
            }
            eprintln!("twill-oci: {msg}");
            ExitCode::from(1)
        }
    }
}

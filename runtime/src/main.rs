//! `twill-run`: a thin CLI over the twill-runtime library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use twill_runtime::container::{self, RunOptions};
use twill_runtime::exec::{self, ExecOptions};
use twill_runtime::network::{self, CniOptions, NetMode, RetriedDel, RetryBy};
use twill_runtime::store::{Limits, PortSpec, Status, Store};
use twill_runtime::{image, logs, tty};

/// A healthy plugin answers in milliseconds (twill's ADD) to seconds (the `dhcp` IPAM plugin,
/// whose daemon gives up on an unanswered DHCP request after 10 s by default). containerd and
/// podman set no limit of their own: they rely on their caller's, and kubelet gives a whole
/// sandbox start 4 minutes (twice its 2-minute runtime request timeout). twill-run is mostly
/// run by a person or a script with nothing above it to give up, so it sets its own: a
/// minute is far beyond any healthy call, and short enough that a hung plugin is noticed.
const DEFAULT_CNI_TIMEOUT: &str = "60s";

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
    /// How long one CNI plugin call (ADD, DEL) may take: 90s, 2m, 1.5s, 500ms (a bare number
    /// is seconds). A plugin past it is killed; a start then fails and is undone (DEL, same
    /// limit).
    #[arg(
        long,
        global = true,
        default_value = DEFAULT_CNI_TIMEOUT,
        env = "TWILL_RUN_CNI_TIMEOUT",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    cni_timeout: Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import a root filesystem tarball (.tar, .tar.gz, .tar.zst) as image NAME, as Docker's
    /// `import`: one layer, no metadata, Cmd /bin/sh.
    ///
    /// An image archive given here (recognised by content, not by file name) is loaded as
    /// `load` does instead, keeping its layers and config; NAME then replaces its own name.
    #[command(
        after_help = "import = a root filesystem tarball → a one-layer image (Docker's `import`).\n\
                      load   = an image archive (docker save / podman save / skopeo copy) → its images, layers and config (Docker's `load`)."
    )]
    Import {
        /// The tarball, or `-` to read it from stdin.
        tarball: PathBuf,
        name: Option<String>,
    },
    /// Load image archives (a file, a directory, or stdin): docker-archive (`docker save`, `podman save`; several images
    /// and their RepoTags), oci-archive, or an OCI image layout directory (`skopeo copy …
    /// oci:DIR`); layers gzip, zstd or plain. Recognised by content.
    ///
    /// Names come from the archive (RepoTags, org.opencontainers.image.ref.name) unless
    /// --name is given. A plain root filesystem tarball is refused: that is `import`.
    #[command(
        after_help = "load   = an image archive (docker save / podman save / skopeo copy) → its images, layers and config (Docker's `load`).\n\
                      import = a root filesystem tarball → a one-layer image (Docker's `import`)."
    )]
    Load {
        /// The archive (or OCI layout directory).
        #[arg(short = 'i', long = "input", value_name = "ARCHIVE")]
        input: Option<PathBuf>,
        #[arg(value_name = "ARCHIVE", conflicts_with = "input")]
        archive: Option<PathBuf>,
        /// Name for the image (only for an archive with one image).
        #[arg(long)]
        name: Option<String>,
    },
    /// Write images to an archive that `podman load` / `docker load` accept.
    Save {
        /// docker-archive or oci-archive.
        #[arg(long, default_value = "docker-archive")]
        format: String,
        /// Output file (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// List images.
    Images,
    /// Remove images; layers other images still use are kept.
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Run a container.
    Run(Box<RunArgs>),
    /// Run a command in a running container, as the container's user, in its working
    /// directory, with its environment (unless -u, -w, -e say otherwise).
    Exec(ExecArgs),
    /// List running containers (-a: all), as `docker ps`.
    Ps {
        #[arg(short, long)]
        all: bool,
        /// Print only the (short) IDs, e.g. for `rm -f $(twill-run ps -aq)`.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a container's state, or an image's record and config, as JSON.
    Inspect { id: String },
    /// Print a detached container's output (its main process's, or its pty's with -t).
    Logs {
        /// Keep printing what it writes until its main process ends (Ctrl-C stops sooner).
        #[arg(short, long)]
        follow: bool,
        /// The container (ID, short ID or name).
        id: String,
    },
    /// Stop a container: the image's StopSignal (default SIGTERM), then SIGKILL after the
    /// grace period.
    Stop {
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove a container (-f: also a running one).
    ///
    /// Also calls CNI DEL again for containers removed earlier whose DEL failed (as `run`
    /// does, which only retries each now and then, with at most 5 s per plugin; `rm` retries
    /// all, with --cni-timeout); `rm ID` of such a container fails unless its DEL worked this
    /// time.
    Rm {
        #[arg(short, long)]
        force: bool,
        /// Remove its anonymous volumes too (as docker rm -v).
        #[arg(short, long)]
        volumes: bool,
        #[arg(required = true)]
        ids: Vec<String>,
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
    /// Environment variable K=V, or K alone for K's value here (left out when unset), as
    /// docker; repeatable.
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    /// user[:group], names or numbers (resolved in the image's /etc/passwd, /etc/group).
    #[arg(short, long)]
    user: Option<String>,
    /// Replace the image's Entrypoint ("" clears it); the image's Cmd is dropped too.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Publish every port the image exposes on a free host port.
    #[arg(short = 'P', long)]
    publish_all: bool,
    /// HOST:CTR[:ro] or CTR (anonymous volume); repeatable.
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// Memory limit, e.g. 64m, 1g.
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit, e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Most processes the container may have; -1 (or 0) for no limit, as Docker and podman.
    #[arg(long, allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    /// The network, as --network (its alias, as in docker).
    #[arg(long, value_name = "NETWORK")]
    net: Option<String>,
    /// host (the host's), none (only lo), container:ID (another container's), bridge (the
    /// default: the CNI network named bridge in --cni-conf-dir if there is one, else the first
    /// there) or a CNI network's name.
    #[arg(long)]
    network: Option<String>,
    /// [IP:][HOSTPORT:]CTRPORT[/tcp|udp] (no HOSTPORT: a free one, picked right before the
    /// CNI ADD); repeatable.
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
    /// Keep stdin attached (with -d: an open pipe nobody writes to, so a command that reads
    /// it waits, as with docker's -d -i).
    #[arg(short, long)]
    interactive: bool,
    /// Give the container's process a pseudo-terminal (its output copied to the caller, or to
    /// the log with -d; TERM=xterm unless set). With -i stdin must be a terminal: it is put
    /// in raw mode and keys, Ctrl-C included, go to the container.
    #[arg(short, long)]
    tty: bool,
    /// IMAGE [COMMAND [ARG...]]: options end at the image name, as in Docker (`run img -u`
    /// passes `-u` to the command).
    #[arg(
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND [ARG...]]"
    )]
    image_and_cmd: Vec<String>,
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Keep stdin attached.
    #[arg(short, long)]
    interactive: bool,
    /// Give the process a pseudo-terminal (TERM=xterm unless set). With -i stdin must be a
    /// terminal: it is put in raw mode and keys, Ctrl-C included, go to the process.
    #[arg(short, long)]
    tty: bool,
    /// Start the command and return at once, printing nothing; its output is dropped (one
    /// that cannot start still fails, 126 or 127).
    #[arg(short, long)]
    detach: bool,
    /// user[:group], names or numbers (resolved in the container's /etc/passwd, /etc/group);
    /// default: the container's user.
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory (absolute); default: the container's.
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Environment variable K=V, or K alone for K's value here (left out when unset), over
    /// the container's; repeatable.
    #[arg(short, long = "env", value_name = "K[=V]")]
    env: Vec<String>,
    /// The container (ID, short ID or name).
    id: String,
    /// The command and its arguments: options end at the container, as in Docker (`exec ID
    /// ls -l` passes -l to ls).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND [ARG...]"
    )]
    cmd: Vec<String>,
}

/// A `--memory` size as Docker and podman read it: a number (fractions allowed) and an
/// optional binary unit, any case, with an optional `i`/`b` (`64m`, `64mb`, `64MiB`, `1.5g`).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("--memory {s:?}: expected a size like 64m, 512MiB or 1.5g");
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * (1u64 << shift) as f64;
    // Cgroups take a signed 64-bit byte count.
    if bytes >= i64::MAX as f64 {
        bail!("--memory {s:?}: too large");
    }
    Ok(bytes as u64)
}

/// A `-p` value as docker reads it: `[IP:][HOST:]CONTAINER[/tcp|udp]`, an IPv6 address in
/// brackets; without HOST (`-p 80`, `-p IP::80`) the host port is 0, for the start to pick a
/// free one right before the CNI ADD, as `-P` does. Errors say which part is wrong.
fn parse_port(s: &str) -> anyhow::Result<PortSpec> {
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    if proto != "tcp" && proto != "udp" {
        bail!("-p {s}: protocol {proto:?} must be tcp or udp");
    }
    // The host IP first: an IPv6 one holds colons of its own.
    let (ip, rest) = match ports.strip_prefix('[') {
        Some(v6) => {
            let (ip, rest) = v6
                .split_once("]:")
                .with_context(|| format!("-p {s}: expected [IPV6]:HOST:CONTAINER"))?;
            (Some(ip), rest)
        }
        None => match ports.matches(':').count() {
            0 | 1 => (None, ports),
            2 => ports
                .split_once(':')
                .map(|(ip, rest)| (Some(ip), rest))
                .unwrap_or((None, ports)),
            _ => bail!("-p {s}: expected [IP:]HOST:CONTAINER (an IPv6 host IP goes in brackets)"),
        },
    };
    let host_ip = match ip {
        Some(ip) => {
            let addr: std::net::IpAddr = ip
                .parse()
                .with_context(|| format!("-p {s}: host IP {ip:?} is not an IP address"))?;
            // Portmap without a hostIP maps the port on every address of the host, which is
            // what 0.0.0.0 and :: ask for.
            Some(addr).filter(|a| !a.is_unspecified())
        }
        None => None,
    };
    let (host, container) = rest.rsplit_once(':').unwrap_or(("", rest));
    let port = |what: &str, p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n != 0)
            .with_context(|| format!("-p {s}: {what} port {p:?} is not a port number (1-65535)"))
    };
    let container_port = port("container", container)?;
    let host_port = if host.is_empty() {
        0
    } else {
        port("host", host)?
    };
    Ok(PortSpec {
        host_port,
        container_port,
        protocol: proto.to_string(),
        host_ip,
    })
}

/// A duration as `--cni-timeout` takes it: a positive number (fractions allowed) and a unit
/// `ms`, `s`, `m` or `h`; without a unit, seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow::anyhow!("{s:?}: expected a positive duration like 60s, 2m or 500ms");
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim_start() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(n * scale)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)
}

/// `load` without an archive, or `import -`, reads one from stdin (`podman save … |
/// twill-run load`): it is kept in a file next to the store first, since archives are read
/// in any order. `usage` says how to give one when stdin is a terminal.
fn stdin_to_file(store: &Store, cmd: &str, usage: &str) -> anyhow::Result<PathBuf> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("{cmd}: give the archive ({usage})");
    }
    let path = store.root.join(format!(
        "stdin-{}.tar",
        &twill_runtime::store::new_id()[..16]
    ));
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if let Err(e) = std::io::copy(&mut std::io::stdin().lock(), &mut f) {
        let _ = std::fs::remove_file(&path);
        return Err(e).with_context(|| format!("{cmd}: reading the archive from stdin"));
    }
    Ok(path)
}

/// `import` or `load` of `path`, or of stdin when None (the copy removed afterwards).
fn import_from(
    store: &Store,
    path: Option<PathBuf>,
    name: Option<&str>,
    mode: image::ImportMode,
) -> anyhow::Result<Vec<image::Image>> {
    let Some(path) = path else {
        let tmp = match mode {
            image::ImportMode::Import => stdin_to_file(
                store,
                "import",
                "`twill-run import TARBALL NAME`, or `-` with it on stdin",
            )?,
            image::ImportMode::Load => stdin_to_file(
                store,
                "load",
                "`twill-run load ARCHIVE`, `-i ARCHIVE`, or on stdin",
            )?,
        };
        let imported = image::import_as(store, &tmp, "stdin", name, mode);
        let _ = std::fs::remove_file(&tmp);
        return Ok(imported?);
    };
    Ok(image::import(store, &path, name, mode)?)
}

/// Sizes as `images` shows them.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
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
            // As `docker run`: 126/127 when the container's command could not be executed,
            // 125 when twill-run itself failed; 128+signal when a signal ended a start.
            let code = e
                .downcast_ref::<twill_runtime::error::RuntimeError>()
                .and_then(|e| e.exit_code())
                .unwrap_or(125);
            std::process::exit(code);
        }
    }
}

/// A seam for tests only (runtime/tests/run.rs): with `TWILL_RUN_TEST_PAUSE_BEFORE_PROXY`
/// set to a path, a foreground `run` whose container is running waits (at most a minute)
/// for that path to exist before it installs its signal proxy, so a test can signal it
/// inside that window. Not a feature: only debug builds (what `cargo test` runs) read it.
#[cfg(debug_assertions)]
fn test_pause_before_proxy() {
    let Some(path) = std::env::var_os("TWILL_RUN_TEST_PAUSE_BEFORE_PROXY") else {
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(&path).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(not(debug_assertions))]
fn test_pause_before_proxy() {}

/// The recorded DEL that `rm ID` removes, for each ID (see `network::retry_pending_dels`):
/// one that ID alone names, when no container is ID. A container may have taken the name of
/// one since: `rm` then removes that container, and the record's failure is reported apart
/// instead of being taken for that `rm`'s.
fn records_removed_by(store: &Store, ids: &[String], retried: &[RetriedDel]) -> Vec<Option<usize>> {
    ids.iter()
        .map(|id| {
            if !matches!(
                store.load(id),
                Err(twill_runtime::error::RuntimeError::NoContainer(_))
            ) {
                return None;
            }
            match retried
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is(id))
                .collect::<Vec<_>>()[..]
            {
                [(i, _)] => Some(i),
                _ => None,
            }
        })
        .collect()
}

/// As docker's CheckTty: a foreground `-i -t` relays the caller's keys from its terminal, so
/// stdin must be one. From a pipe or a file it is refused (docker: exit 1), where it used to
/// hang: what was read before the shell took the pty raw was echoed and edited by the pty's
/// line discipline, and the end-of-file character sent at the end then read as a plain key.
/// `-t` alone (output only) needs no terminal.
fn input_is_a_tty(interactive: bool, tty: bool, detach: bool) -> Result<(), i32> {
    if interactive && tty && !detach && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("twill-run: the input device is not a TTY (-i -t needs a terminal on stdin)");
        return Err(1);
    }
    Ok(())
}

/// Runs `f` on every ID; 0 when all succeeded, else 125 once each failure is printed.
fn each(ids: &[String], mut f: impl FnMut(&str) -> anyhow::Result<()>) -> i32 {
    let mut code = 0;
    for id in ids {
        if let Err(e) = f(id) {
            eprintln!("twill-run: {e:#}");
            code = 125;
        }
    }
    code
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
        timeout: cli.cni_timeout,
    };
    match cli.cmd {
        Cmd::Import { tarball, name } => {
            let path = (tarball != std::path::Path::new("-")).then_some(tarball);
            for img in import_from(&store, path, name.as_deref(), image::ImportMode::Import)? {
                println!("{}", img.name);
            }
        }
        Cmd::Load {
            input,
            archive,
            name,
        } => {
            for img in import_from(
                &store,
                input.or(archive),
                name.as_deref(),
                image::ImportMode::Load,
            )? {
                println!("Loaded image: {}", img.name);
            }
        }
        Cmd::Save {
            format,
            output,
            images,
        } => {
            let format = image::save::Format::parse(&format)?;
            if output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!("save: refusing to write an archive to a terminal: use -o FILE or a pipe");
            }
            let imgs = images
                .iter()
                .map(|n| image::load(&store, n))
                .collect::<Result<Vec<_>, _>>()?;
            image::save::save(&store, &imgs, format, output.as_deref())?;
        }
        Cmd::Images => {
            println!("{:<36} {:<12} {:>6} {:>10}", "NAME", "ID", "LAYERS", "SIZE");
            for i in image::list(&store)? {
                let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
                println!(
                    "{:<36} {:<12} {:>6} {:>10}",
                    i.name,
                    &id[..12.min(id.len())],
                    i.layers.len(),
                    human_size(i.size(&store))
                );
            }
        }
        Cmd::Rmi { images } => {
            for n in images {
                println!("Untagged: {}", image::remove(&store, &n)?.name);
            }
        }
        Cmd::Run(a) => {
            if let Err(code) = input_is_a_tty(a.interactive, a.tty, a.detach) {
                return Ok(code);
            }
            let mut words = a.image_and_cmd.into_iter();
            let image_name = words.next().context("run: no image given")?;
            if image_name.starts_with('-') {
                bail!("run: unknown option {image_name} (options go before the image name)");
            }
            let command: Vec<String> = words.collect();
            let (net, network) = NetMode::from_options(a.net.as_deref(), a.network.as_deref())?;
            let limits = Limits {
                memory_bytes: a.memory.as_deref().map(parse_size).transpose()?,
                cpus: a.cpus,
                pids: a
                    .pids_limit
                    .and_then(|n| u64::try_from(n).ok())
                    .filter(|n| *n > 0),
            };
            if a.cpus.is_some_and(|c| c <= 0.0) {
                bail!("--cpus must be positive");
            }
            let opts = RunOptions {
                image: image_name,
                command,
                entrypoint: a.entrypoint,
                publish_all: a.publish_all,
                name: a.name,
                hostname: a.hostname,
                env: image::config::env_from_caller(&a.env, |k| std::env::var_os(k))
                    .map_err(anyhow::Error::msg)?,
                workdir: a.workdir,
                user: a.user,
                userns: a
                    .userns
                    .as_deref()
                    .map(twill_runtime::userns::IdMap::parse)
                    .transpose()?,
                volumes: a.volume,
                limits,
                net,
                ports: a
                    .publish
                    .iter()
                    .map(|p| parse_port(p))
                    .collect::<anyhow::Result<_>>()?,
                auto_remove: a.rm,
                interactive: a.interactive,
                tty: a.tty,
            };
            // Before the start: an address a failed DEL still holds may be the one it needs.
            for r in network::retry_pending_dels(&store, &cni, RetryBy::Run) {
                if let Some(e) = r.error {
                    eprintln!("twill-run: {e}");
                }
            }
            let cni = CniOptions { network, ..cni };
            if a.detach {
                println!("{}", container::run_detached(&store, &opts, &cni)?);
                return Ok(0);
            }
            // Held from before anything is made until the proxy is in place: a SIGTERM
            // meanwhile is passed on, not fatal to twill-run (see `hold_signals`).
            if let Err(e) = container::hold_signals() {
                eprintln!("twill-run: {e}: a signal before the container runs may orphan it");
            }
            let running = container::start(&store, &opts, &cni, false)?;
            let pid = running.pid;
            test_pause_before_proxy();
            if let Err(e) = container::proxy_signals(pid) {
                eprintln!("twill-run: {e}: signals to twill-run will not reach the container");
            }
            if let Some(master) = running.pty {
                tty::attach(master, pid, a.interactive);
            }
            return Ok(container::monitor(&store, running.state, pid, &cni)?);
        }
        Cmd::Exec(a) => {
            if let Err(code) = input_is_a_tty(a.interactive, a.tty, a.detach) {
                return Ok(code);
            }
            let opts = ExecOptions {
                argv: a.cmd,
                interactive: a.interactive,
                tty: a.tty,
                detach: a.detach,
                user: a.user,
                workdir: a.workdir,
                env: image::config::env_from_caller(&a.env, |k| std::env::var_os(k))
                    .map_err(anyhow::Error::msg)?,
            };
            return Ok(exec::exec(&store, &a.id, &opts)?);
        }
        Cmd::Ps { all, quiet } => {
            let shown = store
                .list()?
                .into_iter()
                .filter(|s| all || s.status == Status::Running);
            if quiet {
                for s in shown {
                    println!("{}", &s.id[..12.min(s.id.len())]);
                }
                return Ok(0);
            }
            println!(
                "{:<13} {:<16} {:<12} {:<12} IPS",
                "ID", "NAME", "IMAGE", "STATUS"
            );
            for s in shown {
                let status = match s.exit_code {
                    Some(c) if s.status == Status::Exited => format!("{}({c})", s.status),
                    _ => s.status.to_string(),
                };
                // A container in another's network has that one's addresses for as long as it
                // runs, not the copy its state took at the start (for its /etc/hosts), which
                // goes stale when the other stops: the mode says where they are.
                let ips = if s.network_mode.starts_with("container:") {
                    s.network_mode.clone()
                } else {
                    s.ips.join(",")
                };
                println!(
                    "{:<13} {:<16} {:<12} {:<12} {ips}",
                    &s.id[..12],
                    s.name,
                    s.image,
                    status,
                );
            }
        }
        Cmd::Inspect { id } => match store.load(&id) {
            Ok(st) => println!("{}", serde_json::to_string_pretty(&st)?),
            Err(twill_runtime::error::RuntimeError::NoContainer(_)) => {
                let img = image::load(&store, &id)
                    .with_context(|| format!("no container or image named {id}"))?;
                println!("{}", serde_json::to_string_pretty(&img)?);
            }
            Err(e) => return Err(e.into()),
        },
        Cmd::Logs { follow, id } => logs::write(&store, &id, follow, &mut std::io::stdout())?,
        // Several containers, as docker and podman: each one's failure is reported and the
        // rest still handled; the exit code says something failed.
        Cmd::Stop { time, ids } => {
            return Ok(each(&ids, |id| {
                let st = container::stop(&store, id, Duration::from_secs(time))?;
                println!("{}", st.name);
                Ok(())
            }));
        }
        Cmd::Rm {
            force,
            volumes,
            ids,
        } => {
            let retried = network::retry_pending_dels(&store, &cni, RetryBy::Rm);
            let removes = records_removed_by(&store, &ids, &retried);
            for (i, r) in retried.iter().enumerate() {
                if let Some(e) = &r.error
                    && !removes.contains(&Some(i))
                {
                    eprintln!("twill-run: {e}");
                }
            }
            let mut removes = removes.into_iter();
            return Ok(each(&ids, |id| {
                match removes.next().flatten() {
                    // Only a DEL left of it: `rm` of it is that DEL, just retried.
                    Some(i) => {
                        if let Some(e) = &retried[i].error {
                            bail!("{e}");
                        }
                    }
                    None => container::remove(&store, id, force, volumes, &cni)?,
                }
                println!("{id}");
                Ok(())
            }));
        }
        Cmd::Commit { id, name } => println!("{}", container::commit(&store, &id, &name)?.name),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_as_docker_reads_them_and_errors_name_the_wrong_part() {
        let p = |s: &str| parse_port(s).map(|p| (p.host_port, p.container_port, p.protocol));
        for (text, want) in [
            ("8083:80", (8083, 80, "tcp")),
            ("8083:80/udp", (8083, 80, "udp")),
            // Before: "bad host port: invalid digit found in string".
            ("0.0.0.0:8083:80", (8083, 80, "tcp")),
            ("[::]:8083:80/udp", (8083, 80, "udp")),
        ] {
            let (h, c, pr) = want;
            assert_eq!(p(text).unwrap(), (h, c, pr.to_string()), "{text}");
        }
        // One host address: portmap's hostIP (before: refused); all of them: none.
        let ip = |s: &str| parse_port(s).map(|p| p.host_ip.map(|a| a.to_string()));
        assert_eq!(
            ip("127.0.0.1:8083:80").unwrap().as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(ip("[fd00::1]:8083:80").unwrap().as_deref(), Some("fd00::1"));
        assert_eq!(ip("0.0.0.0:8083:80").unwrap(), None);
        assert_eq!(ip("8083:80").unwrap(), None);
        // Before: "expected HOSTPORT:CTRPORT"; now a free host port, as docker, picked by
        // the start (0 until then).
        for text in ["80", "0.0.0.0::80", "80/udp"] {
            let (h, c, _) = p(text).unwrap();
            assert!(h == 0 && c == 80, "{text}: {h}");
        }
        for (text, says) in [
            ("x:80", "-p x:80: host port \"x\" is not a port number"),
            ("80:y", "-p 80:y: container port \"y\" is not a port number"),
            ("80:0", "container port \"0\""),
            ("70000:80", "host port \"70000\""),
            ("80:80/sctp", "protocol \"sctp\" must be tcp or udp"),
            (
                "localhost:80:80",
                "host IP \"localhost\" is not an IP address",
            ),
            ("1:2:3:4", "an IPv6 host IP goes in brackets"),
        ] {
            let e = format!("{:#}", parse_port(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn cni_timeouts_read_as_durations_with_seconds_by_default() {
        for (text, want) in [
            ("60s", Duration::from_secs(60)),
            ("60", Duration::from_secs(60)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("500ms", Duration::from_millis(500)),
            (" 3 s ", Duration::from_secs(3)),
        ] {
            assert_eq!(parse_duration(text).unwrap(), want, "{text}");
        }
        for bad in [
            "",
            "0",
            "0s",
            "-1s",
            "s",
            "10x",
            "1e3",
            "inf",
            "1.2.3s",
            "99999999999999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("positive duration"), "{bad}: {e}");
        }
    }
}

//! `twill-lab`: a twill cluster on one machine (a thin CLI over the `twill_lab` library).

use clap::{Parser, Subcommand};
use twill_lab::backend::LabBackend;
use twill_lab::bench::path::BenchSelection;
use twill_lab::bench::{self, BenchKind, BenchOutput};
use twill_lab::family::IpFamily;
use twill_lab::soak::{self, SoakOptions};
use twill_lab::{commands, interrupt, state, up};

/// A count of 1 or more (`--runs 0` ran one round without a word).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration of 1 s or more (`bench --seconds 0` is iperf3's `-t 0`, which never ends).
fn at_least_one_second(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// twill-lab: hosts as network namespaces, real etcd, real twilld agents and twill-run
/// containers, all on this machine. Needs root. Nothing is added to the root namespace.
#[derive(Parser)]
#[command(name = "twill-lab", version, about)]
struct Cli {
    /// Lab name, 1-20 letters or digits (several labs can run side by side).
    #[arg(long, global = true, default_value = state::DEFAULT_NAME)]
    name: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the cluster, start everything, check all-pairs connectivity, print a table.
    Up {
        /// Hosts (network namespaces h1, h2, …), 1 to 50.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// The backend every twilld runs.
        #[arg(long, value_enum, default_value_t = LabBackend::Vxlan)]
        backend: LabBackend,
        /// busybox containers on each host (h1c1, h1c2, …; 0 for none).
        #[arg(long, default_value_t = 2)]
        containers_per_host: usize,
        /// The IPv4 pod network (Flannel's `Network`): a /24 of it per host.
        #[arg(long, default_value = "10.244.0.0/16")]
        network: String,
        /// The pod network's families: ipv4, ipv6 (EnableIPv4 false) or dual (every
        /// container gets both; reachability is checked in each family).
        #[arg(long, value_enum, default_value_t = IpFamily::Ipv4)]
        ip_family: IpFamily,
        /// The IPv6 pod network (with --ip-family ipv6 or dual).
        #[arg(long, default_value = twill_lab::family::DEFAULT_NETWORK6)]
        network6: String,
    },
    /// A lab with 3 etcd members and short lease TTLs, pings between every pair of hosts, and
    /// etcd members, twilld agents and containers killed and restarted at random: pings lost
    /// per fault kind and leases lost (goal: none). Tears the lab down at the end.
    Soak {
        /// Hosts, 2 to 50 (pings go between every pair).
        #[arg(long, default_value_t = 5)]
        hosts: usize,
        /// The backend every twilld runs.
        #[arg(long, value_enum, default_value_t = LabBackend::Vxlan)]
        backend: LabBackend,
        /// How long to inject faults.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Run this many seconds instead of --minutes (short smoke runs).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seed of the fault schedule (same seed, same schedule).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Faults of each kind at most.
        #[arg(long, default_value_t = 10)]
        max_faults: usize,
        /// twilld's --subnet-lease-ttl in seconds (it renews every third of it).
        #[arg(long, default_value_t = 60)]
        lease_ttl: u64,
        /// Also write the report here.
        #[arg(long)]
        markdown: Option<std::path::PathBuf>,
    },
    /// Tear everything down (idempotent; also after a crashed up).
    Down,
    /// Print the lab's table.
    Status,
    /// Run a command on a host (HOST) or in a container (HOST/CONTAINER).
    Exec {
        /// A host (h1) or a container on it (h1/h1c1), as `status` lists them.
        target: String,
        /// The command and its arguments (its exit status is twill-lab's).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Print a host's twilld log.
    Logs {
        /// The host (h1, h2, …) whose twilld log to print.
        host: String,
    },
    /// iperf3 (1 and 4 streams), ping RTT and data-path CPU per GB for each backend against the
    /// same-host path, measured side by side; or the CNI / runtime benchmarks (`bench cni`,
    /// `bench runtime`, from the source tree).
    Bench {
        /// network, cni or runtime.
        #[arg(value_enum, default_value = "network")]
        what: BenchKind,
        /// Comma separated from host-gw, vxlan, udp, tun-relay, wireguard, wireguard-go and
        /// boringtun, or "all" (every one). tun-relay is a udp lab whose agents a TUN→TUN relay replaces: no
        /// UDP, no checks, the most any TUN-based data path can move on this machine.
        /// wireguard-go is a wireguard lab whose agents Debian's wireguard-go replaces, set up
        /// like Flannel's device (skipped when it is not installed; $TWILL_LAB_WIREGUARD_GO
        /// names another binary, e.g. bookworm-backports' with TUN offloads); boringtun the
        /// same with boringtun-cli (`cargo install boringtun-cli`; $TWILL_LAB_BORINGTUN names
        /// the binary, $TWILL_LAB_BORINGTUN_THREADS its threads, default 1).
        /// forwarder (not in "all") is a udp lab run by the external forwarder `--forwarder`
        /// names.
        #[arg(long, default_value = "all")]
        backends: BenchSelection,
        /// Seconds each iperf3 measurement runs (1 or more).
        #[arg(long, default_value_t = 10, value_parser = at_least_one_second)]
        seconds: u64,
        /// Rounds (every path measured once per round; default 1); each cell shows the
        /// median. For cni and runtime: runs per measurement (default: theirs).
        #[arg(long, value_parser = at_least_one)]
        runs: Option<usize>,
        /// Also write the table as Markdown here.
        #[arg(long)]
        markdown: Option<std::path::PathBuf>,
        /// Also write a bar chart as SVG here.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
        /// An external udp forwarder to measure beside twilld on a udp lab of its own (path
        /// "forwarder"): `CMD LAB` must replace the lab's agents by the forwarder and
        /// `CMD LAB stop` stop it, as ../shared/reference/udp-gso/swap-into-lab.sh does.
        #[arg(long, value_name = "CMD")]
        forwarder: Option<String>,
        /// The labs' families: with dual every two-host path is measured over IPv4 and over
        /// IPv6 (side by side), with ipv6 over IPv6 only.
        #[arg(long, value_enum, default_value_t = IpFamily::Ipv4)]
        ip_family: IpFamily,
    },
}

fn main() {
    // Die quietly on a closed pipe (`| head`), like other command-line tools.
    // SAFETY: restoring the default disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    // What builds labs stops cleanly on Ctrl-C; exec, logs and the rest end as usual.
    if matches!(
        cli.cmd,
        Cmd::Up { .. }
            | Cmd::Soak { .. }
            | Cmd::Bench {
                what: BenchKind::Network,
                ..
            }
    ) {
        interrupt::install();
    }
    // No '-': a lab's namespaces are `tl-<name>-…`, and `down lab` would otherwise also take
    // down `lab-udp`'s (its names start with `tl-lab-` too).
    let valid = !cli.name.is_empty()
        && cli.name.len() <= 20
        && cli.name.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid {
        eprintln!(
            "twill-lab: --name must be 1-20 letters or digits (no '-': one lab's name would prefix another's namespaces)"
        );
        std::process::exit(2);
    }
    // Only a failed `up` leaves a half-built lab (bench tears its labs down itself), and only
    // once it wrote its state: a refused `up` (not root, bad flags) created nothing.
    let is_up = matches!(cli.cmd, Cmd::Up { .. });
    // Whether the run built the lab: not when it was refused because the name was taken, and
    // then the lab there (someone else's) is neither removed nor to be "cleaned up".
    let built = |e: &anyhow::Error| {
        is_up
            && e.downcast_ref::<state::LabExists>().is_none()
            && state::state_dir(&cli.name).exists()
    };
    let r = match cli.cmd {
        Cmd::Up {
            hosts,
            backend,
            containers_per_host,
            network,
            ip_family,
            network6,
        } => up::up(&up::UpOptions {
            name: cli.name.clone(),
            hosts,
            backend,
            containers_per_host,
            network,
            ip_family,
            network6,
            etcd_members: 1,
            twilld_flags: Vec::new(),
            logs_kept_on_failure: false,
            made_by_bench: false,
        })
        .map(|ok| if ok { 0 } else { 1 }),
        Cmd::Soak {
            hosts,
            backend,
            minutes,
            seconds,
            seed,
            max_faults,
            lease_ttl,
            markdown,
        } => soak::soak(&SoakOptions {
            name: cli.name.clone(),
            hosts,
            backend,
            duration: std::time::Duration::from_secs(seconds.unwrap_or(minutes * 60)),
            seed,
            max_faults,
            lease_ttl,
            markdown,
        })
        .map(|ok| if ok { 0 } else { 1 }),
        Cmd::Down => commands::down(&cli.name).map(|_| 0),
        Cmd::Status => commands::status(&cli.name).map(|_| 0),
        Cmd::Exec { target, cmd } => commands::exec(&cli.name, &target, &cmd),
        Cmd::Logs { host } => commands::logs(&cli.name, &host).map(|_| 0),
        Cmd::Bench {
            what: BenchKind::Network,
            backends,
            seconds,
            runs,
            markdown,
            svg,
            forwarder,
            ip_family,
        } => {
            let out = BenchOutput { markdown, svg };
            bench::with_forwarder(backends.0, forwarder.as_deref()).and_then(|paths| {
                bench::bench(
                    &cli.name,
                    &paths,
                    seconds,
                    runs.unwrap_or(1),
                    forwarder.as_deref(),
                    ip_family,
                    &out,
                )
                .map(|_| 0)
            })
        }
        Cmd::Bench { what, runs, .. } => {
            bench::bench_other(what, runs).map(|ok| if ok { 0 } else { 1 })
        }
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) if interrupt::requested() => {
            if !interrupt::is_interrupted(&e) {
                eprintln!("twill-lab: while stopping: {e:#}");
            }
            // An interrupted `up` leaves nothing half-built (bench and soak remove theirs).
            if built(&e)
                && let Err(e) = commands::down(&cli.name)
            {
                eprintln!(
                    "twill-lab: removing the interrupted lab {}: {e:#}",
                    cli.name
                );
            }
            eprintln!("twill-lab: interrupted");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("twill-lab: {e:#}");
            if built(&e) {
                eprintln!("(clean up with: twill-lab down --name {})", cli.name);
            }
            std::process::exit(1);
        }
    }
}

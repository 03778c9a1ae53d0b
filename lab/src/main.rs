//! `twill-lab`: a twill cluster on one machine (a thin CLI over the `twill_lab` library).

use clap::{Parser, Subcommand};
use twill_lab::backend::LabBackend;
use twill_lab::bench::path::BenchSelection;
use twill_lab::bench::{self, BenchKind, BenchOutput};
use twill_lab::family::IpFamily;
use twill_lab::soak::{self, SoakOptions};
use twill_lab::{commands, errln, interrupt, state, up};

/// A number from `min` to `max` (no upper limit with `None`), refused when the arguments are
/// parsed, before anything is built, with what to give instead. The values it keeps out
/// were taken without a word: `bench --seconds 0` is iperf3's `-t 0`, which never ends,
/// `--runs 0` ran one round, and `soak --minutes 0` or `--max-faults 0` built a lab to
/// inject no fault.
fn bounded<T>(min: T, max: Option<T>) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    move |s| {
        let n = s.parse::<T>().map_err(|e| e.to_string())?;
        match max {
            Some(max) if n < min || n > max => Err(format!("must be {min} to {max}")),
            None if n < min => Err(format!("must be at least {min}")),
            _ => Ok(n),
        }
    }
}

/// A number of `min` or more (see [`bounded`]).
fn at_least<T>(min: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    bounded(min, None)
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
        #[arg(long, default_value_t = 5, value_parser = bounded(2usize, Some(50)))]
        hosts: usize,
        /// The backend every twilld runs.
        #[arg(long, value_enum, default_value_t = LabBackend::Vxlan)]
        backend: LabBackend,
        /// How long to inject faults (1 or more; --seconds for shorter runs).
        #[arg(long, default_value_t = 10, value_parser = at_least(1u64), conflicts_with = "seconds")]
        minutes: u64,
        /// Run this many seconds instead of --minutes (short smoke runs; 1 or more).
        #[arg(long, value_parser = at_least(1u64))]
        seconds: Option<u64>,
        /// Seed of the fault schedule (same seed, same schedule).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Faults of each kind at most (1 or more).
        #[arg(long, default_value_t = 10, value_parser = at_least(1usize))]
        max_faults: usize,
        /// twilld's --subnet-lease-ttl in seconds, 6 or more (it renews every third of it).
        #[arg(long, default_value_t = 60, value_parser = at_least(6u64))]
        lease_ttl: u64,
        /// Also write the report here.
        #[arg(long)]
        markdown: Option<std::path::PathBuf>,
    },
    /// Tear everything down (idempotent; also after a crashed up).
    Down,
    /// Whether each host's twilld and each container runs now, with the lab's table; exits 1
    /// and says what is down when something is.
    Status {
        /// Also ping every container from every other one (as `up` does; slower); the table's
        /// reachability column keeps this check's result as the last one.
        #[arg(long)]
        ping: bool,
    },
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
        #[arg(long, default_value_t = 10, value_parser = at_least(1u64))]
        seconds: u64,
        /// Rounds (every path measured once per round; default 1); each cell shows the
        /// median. For cni and runtime: runs per measurement (default: theirs).
        #[arg(long, value_parser = at_least(1usize))]
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
    // What builds labs stops cleanly on Ctrl-C, and lives on when its reader goes away
    // (`twill-lab up | head -1`): a SIGPIPE there killed it between two steps, leaving a
    // half-built lab, or before a soak's teardown. Exec, logs and the rest end as usual.
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
        twill_lab::output::survive_closed_pipes();
    }
    // No '-': a lab's namespaces are `tl-<name>-…`, and `down lab` would otherwise also take
    // down `lab-udp`'s (its names start with `tl-lab-` too).
    let valid = !cli.name.is_empty()
        && cli.name.len() <= 20
        && cli.name.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid {
        errln!(
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
            // Saturated: the soak refuses a duration too long for the clock before it builds.
            duration: std::time::Duration::from_secs(seconds.unwrap_or(minutes.saturating_mul(60))),
            seed,
            max_faults,
            lease_ttl,
            markdown,
        })
        .map(|ok| if ok { 0 } else { 1 }),
        Cmd::Down => commands::down(&cli.name).map(|_| 0),
        Cmd::Status { ping } => commands::status(&cli.name, ping).map(|ok| if ok { 0 } else { 1 }),
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
                errln!("twill-lab: while stopping: {e:#}");
            }
            // An interrupted `up` leaves nothing half-built (bench and soak remove theirs).
            if built(&e)
                && let Err(e) = commands::down(&cli.name)
            {
                errln!(
                    "twill-lab: removing the interrupted lab {}: {e:#}",
                    cli.name
                );
            }
            errln!("twill-lab: interrupted");
            std::process::exit(130);
        }
        Err(e) => {
            errln!("twill-lab: {e:#}");
            if built(&e) {
                errln!("(clean up with: twill-lab down --name {})", cli.name);
            }
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bounded option parses to its field's type: clap panics on one that does not, and
    /// a refusal does not show it (`bounded(2, …)` made an i32 of a usize `--hosts`).
    #[test]
    fn the_bounded_options_take_their_bounds_and_defaults() {
        let soak =
            |args: &[&str]| match Cli::try_parse_from(["twill-lab", "soak"].iter().chain(args)) {
                Ok(Cli {
                    cmd:
                        Cmd::Soak {
                            hosts,
                            minutes,
                            seconds,
                            max_faults,
                            lease_ttl,
                            ..
                        },
                    ..
                }) => (hosts, minutes, seconds, max_faults, lease_ttl),
                Ok(_) => panic!("not a soak: {args:?}"),
                Err(e) => panic!("{args:?}: {e}"),
            };
        assert_eq!(soak(&[]), (5, 10, None, 10, 60));
        let least = [
            "--hosts",
            "2",
            "--seconds",
            "1",
            "--max-faults",
            "1",
            "--lease-ttl",
            "6",
        ];
        assert_eq!(soak(&least), (2, 10, Some(1), 1, 6));
        assert_eq!(soak(&["--hosts", "50", "--minutes", "1"]).0, 50);
        let bench =
            |args: &[&str]| match Cli::try_parse_from(["twill-lab", "bench"].iter().chain(args)) {
                Ok(Cli {
                    cmd: Cmd::Bench { seconds, runs, .. },
                    ..
                }) => (seconds, runs),
                Ok(_) => panic!("not a bench: {args:?}"),
                Err(e) => panic!("{args:?}: {e}"),
            };
        assert_eq!(bench(&[]), (10, None));
        assert_eq!(bench(&["--seconds", "1", "--runs", "1"]), (1, Some(1)));
    }

    #[test]
    fn soak_refuses_minutes_and_seconds_together() {
        // Both given, --seconds won without a word: a 10-minute soak asked for ran seconds.
        let both = ["twill-lab", "soak", "--minutes", "10", "--seconds", "30"];
        let err = Cli::try_parse_from(both).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("--minutes") && e.contains("--seconds")),
            "{err:?}"
        );
    }
}

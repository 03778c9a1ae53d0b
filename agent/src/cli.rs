//! twilld's command line: Flannel's flag names, each also readable from `TWILLD_<NAME>` and
//! from Flannel's `FLANNELD_<NAME>` (so an existing DaemonSet's environment keeps working).

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::backend::wireguard::aead::AeadChoice;

/// twilld: the twill node agent. Leases this node's pod subnet from etcd (Flannel's key
/// layout), writes the subnet file for the CNI plugin, and carries traffic to every other
/// node's subnet with the configured backend (host-gw, vxlan, udp, wireguard).
#[derive(Debug, Parser)]
#[command(name = "twilld", version, about, long_about = None)]
pub struct Cli {
    /// etcd endpoints, comma separated.
    #[arg(
        long,
        global = true,
        env = "TWILLD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix holding `config` and `subnets/`.
    #[arg(
        long,
        global = true,
        env = "TWILLD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
    /// CA certificate for etcd over TLS.
    #[arg(long, global = true, env = "TWILLD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd (needs --etcd-keyfile).
    #[arg(
        long,
        global = true,
        env = "TWILLD_ETCD_CERTFILE",
        requires = "etcd_keyfile"
    )]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for etcd (needs --etcd-certfile).
    #[arg(
        long,
        global = true,
        env = "TWILLD_ETCD_KEYFILE",
        requires = "etcd_certfile"
    )]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user name (needs --etcd-password).
    #[arg(
        long,
        global = true,
        env = "TWILLD_ETCD_USERNAME",
        requires = "etcd_password"
    )]
    pub etcd_username: Option<String>,
    /// etcd password.
    #[arg(
        long,
        global = true,
        env = "TWILLD_ETCD_PASSWORD",
        requires = "etcd_username",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// Interface (name, IPv4 or IPv6 address) that carries inter-node traffic; repeatable, the
    /// first that exists wins. Default: the interface of the default route. With IPv6 on, the
    /// interface's first global IPv6 address is the public IPv6 unless --public-ipv6 is given.
    #[arg(long, env = "TWILLD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regular expression matched against each interface's addresses, then names, when no
    /// --iface is given or none exists (Flannel's flag and order); repeatable, the first that
    /// matches wins.
    #[arg(long, env = "TWILLD_IFACE_REGEX", value_parser = parse_regex)]
    pub iface_regex: Vec<regex::Regex>,
    /// An IP address: the interface carrying inter-node traffic is the one the kernel's route
    /// to it goes out of (`ip route get IP`), and the route's source address is the one sent
    /// from and, unless --public-ip/--public-ipv6 is given, the public IP of its family
    /// (Flannel's flag). Tried after --iface and --iface-regex found nothing, as flanneld
    /// does; when it is the flag that chose, an IPv6 address needs a network with IPv6 on.
    #[arg(long, env = "TWILLD_IFACE_CAN_REACH", value_parser = parse_can_reach)]
    pub iface_can_reach: Option<std::net::IpAddr>,
    /// IP other nodes reach this one at (default: the interface's first IPv4 address).
    #[arg(long, env = "TWILLD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address other nodes reach this one at, for dual-stack and IPv6-only networks
    /// (default: the interface's first global IPv6 address).
    #[arg(long, env = "TWILLD_PUBLIC_IPV6")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// Where to write FLANNEL_NETWORK/SUBNET/MTU/IPMASQ for the CNI plugin.
    #[arg(
        long,
        global = true,
        env = "TWILLD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Masquerade pod traffic that leaves the overlay network (`--ip-masq`, or
    /// `--ip-masq=true|false|1|0|t|f` as Flannel's Go flags take it).
    #[arg(
        long,
        env = "TWILLD_IP_MASQ",
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = parse_go_bool,
        action = clap::ArgAction::Set
    )]
    pub ip_masq: bool,
    /// Which tool programs masquerade/forward rules: nftables (table `inet twill`, both families), iptables
    /// (chains TWILL-POSTRTG, TWILL-FWD), or auto (nftables when `nft` exists).
    #[arg(
        long,
        env = "TWILLD_FIREWALL_BACKEND",
        value_enum,
        default_value = "auto"
    )]
    pub firewall_backend: crate::masq::FirewallBackend,
    /// Minutes before the lease expires at which it is renewed (1 to 1439).
    #[arg(long, env = "TWILLD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1439))]
    pub subnet_lease_renew_margin: u32,
    /// Lease TTL in seconds (Flannel: 86400). Short values are for tests.
    #[arg(long, env = "TWILLD_SUBNET_LEASE_TTL", default_value_t = 86400, value_parser = clap::value_parser!(u64).range(2..=86400 * 30))]
    pub subnet_lease_ttl: u64,
    /// Seconds between level-triggered reconciles of the kernel state.
    #[arg(long, env = "TWILLD_RECONCILE_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reconcile_interval: u64,
    /// udp backend: name of the TUN device (Flannel's name by default).
    #[arg(long, env = "TWILLD_UDP_DEVICE", default_value = crate::backend::udp::DEFAULT_DEVICE)]
    pub udp_device: String,
    /// udp backend: data-path workers, each one thread with its own TUN queue and socket
    /// (0: one per two CPUs, 1 to 4).
    #[arg(long, env = "TWILLD_UDP_WORKERS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub udp_workers: u64,
    /// udp and wireguard backends: microseconds a worker keeps polling after bulk traffic
    /// stops, before it sleeps (default 0: sleep at once; polling moved no more on the
    /// machines measured and cost CPU). May save wake-ups on VMs where a sleep/wake is
    /// costly; a trickle of packets never spins.
    #[arg(long, env = "TWILLD_UDP_BUSY_POLL_US", value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub udp_busy_poll_us: Option<u64>,
    /// udp backend: TUN offloads with UDP GSO/GRO and TCP coalescing (false: one packet per
    /// TUN read and write and one datagram per message, still batched — for kernels or NICs
    /// whose UDP GSO/GRO misbehaves, and the benchmarks' reference point).
    #[arg(long, env = "TWILLD_UDP_OFFLOADS", default_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set)]
    pub udp_offloads: bool,
    /// wireguard backend: the private key file (created once, mode 0400; Flannel's file, and
    /// Flannel's variable `WIREGUARD_KEY_FILE` when `TWILLD_WIREGUARD_KEY_FILE` is unset). The
    /// TUN engine flags `--udp-workers`, `--udp-busy-poll-us` and `--udp-offloads` apply to
    /// wireguard's data path too.
    #[arg(long, env = "TWILLD_WIREGUARD_KEY_FILE", default_value = crate::backend::wireguard::DEFAULT_KEY_FILE)]
    pub wireguard_key_file: std::path::PathBuf,
    /// wireguard backend: threads one flow's encryption and decryption run on (1: the data-path
    /// worker alone; 2: the worker and a helper, which takes half of every batch of messages;
    /// 0: 2 on machines with 4 CPUs or more, else 1 — on 2 CPUs the helper costs more than it
    /// gives).
    #[arg(long, env = "TWILLD_WIREGUARD_CRYPTO_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=2))]
    pub wireguard_crypto_threads: u64,
    /// wireguard backend: directory of the UAPI socket `flannel-wg.sock` that `wg show`
    /// reads (give each twilld on one machine its own).
    #[arg(long, global = true, env = "TWILLD_WIREGUARD_SOCKET_DIR", default_value = crate::backend::wireguard::DEFAULT_SOCKET_DIR)]
    pub wireguard_socket_dir: std::path::PathBuf,
    /// wireguard backend: where a peer's endpoint may move when its authenticated messages
    /// come from elsewhere. `any`: as kernel WireGuard (Flannel's backend) does, to any
    /// address but another node's — so a node behind a NAT is answered where its messages
    /// come from; a handshake from an address no lease names must first return a cookie
    /// (proving it receives there), and such handshakes are budgeted (per address 10, then 2
    /// a second; 50 a second for all of them, per device). `lease`: only
    /// other ports of the addresses its lease names; datagrams from anywhere else are
    /// dropped before any crypto.
    #[arg(long, env = "TWILLD_WIREGUARD_ROAMING", value_enum, default_value_t = Roaming::Any)]
    pub wireguard_roaming: Roaming,
    /// wireguard backend: the ChaCha20-Poly1305 that seals and opens transport data. `auto`:
    /// Intel's intel-ipsec-mb (`libIPSec_MB.so.1`, Debian's libipsec-mb1) where it is
    /// installed and picks its AVX-512 code — 1.5–1.9× ring's speed — and ring otherwise;
    /// `ring`: always ring; `ipsec-mb`: intel-ipsec-mb or refuse to start. The wire is the
    /// same either way (peers need not agree); the log says which one runs.
    #[arg(long, env = "TWILLD_WIREGUARD_AEAD", value_enum, default_value_t = AeadChoice::Auto)]
    pub wireguard_aead: AeadChoice,
    /// Address for /healthz, /livez and /metrics.
    #[arg(
        long,
        global = true,
        env = "TWILLD_HEALTHZ_IP",
        default_value = "0.0.0.0"
    )]
    pub healthz_ip: std::net::IpAddr,
    /// Port for /healthz (readiness: 200 once the lease is held) and /livez (liveness: 200
    /// while twilld runs, whatever etcd does); 0: off.
    #[arg(long, global = true, env = "TWILLD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Port for /metrics (0: served on the healthz port when that is on).
    #[arg(long, global = true, env = "TWILLD_METRICS_PORT", default_value_t = 0)]
    pub metrics_port: u16,
    /// error, warn, info, debug or trace (or a tracing filter).
    #[arg(long, global = true, env = "TWILLD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Flannel's `--iptables-forward-rules`: twilld always accepts the pod network in the
    /// FORWARD path (its nftables table, and `TWILL-FWD` where iptables' FORWARD may drop), as
    /// flanneld does by default; `false` is refused, twill has no mode without them.
    #[arg(long, env = "TWILLD_IPTABLES_FORWARD_RULES", num_args = 0..=1, require_equals = true,
        default_missing_value = "true", value_parser = parse_forward_rules,
        action = clap::ArgAction::Set, help_heading = FLANNEL_HEADING)]
    pub iptables_forward_rules: Option<bool>,
    /// Flannel's `--iptables-resync` (seconds): accepted and ignored, with a warning. twilld
    /// checks its rules at every reconcile (`--reconcile-interval`) and when the nftables
    /// ruleset changes.
    #[arg(long, env = "TWILLD_IPTABLES_RESYNC", help_heading = FLANNEL_HEADING)]
    pub iptables_resync: Option<i64>,
    /// Flannel's `--kube-subnet-mgr`: only `false` is accepted; twilld leases from etcd.
    #[arg(long, env = "TWILLD_KUBE_SUBNET_MGR", num_args = 0..=1, require_equals = true,
        default_missing_value = "true", value_parser = parse_kube_subnet_mgr,
        action = clap::ArgAction::Set, help_heading = FLANNEL_HEADING)]
    pub kube_subnet_mgr: Option<bool>,
    /// Flannel's `--kube-api-url` (Kubernetes subnet manager only): ignored, with a warning.
    #[arg(long, env = "TWILLD_KUBE_API_URL", help_heading = FLANNEL_HEADING)]
    pub kube_api_url: Option<String>,
    /// Flannel's `--kubeconfig-file` (Kubernetes subnet manager only): ignored, with a warning.
    #[arg(long, env = "TWILLD_KUBECONFIG_FILE", help_heading = FLANNEL_HEADING)]
    pub kubeconfig_file: Option<String>,
    /// Flannel's `--kube-annotation-prefix` (Kubernetes subnet manager only): ignored, with a
    /// warning.
    #[arg(long, env = "TWILLD_KUBE_ANNOTATION_PREFIX", help_heading = FLANNEL_HEADING)]
    pub kube_annotation_prefix: Option<String>,
    /// Flannel's `--net-config-path` (Kubernetes subnet manager only; twilld reads the network
    /// config from etcd): ignored, with a warning.
    #[arg(long, env = "TWILLD_NET_CONFIG_PATH", help_heading = FLANNEL_HEADING)]
    pub net_config_path: Option<String>,
    /// Flannel's `--set-node-network-unavailable` (Kubernetes subnet manager only): ignored,
    /// with a warning.
    #[arg(long, env = "TWILLD_SET_NODE_NETWORK_UNAVAILABLE", num_args = 0..=1,
        require_equals = true, default_missing_value = "true", value_parser = parse_go_bool,
        action = clap::ArgAction::Set, help_heading = FLANNEL_HEADING)]
    pub set_node_network_unavailable: Option<bool>,
    /// klog's `--v` (flanneld's verbosity): ignored, with a warning; use `--log-level`.
    #[arg(long = "v", env = "TWILLD_V", help_heading = FLANNEL_HEADING)]
    pub v: Option<i32>,
    /// klog's `--vmodule`: ignored, with a warning; `--log-level` takes per-module filters.
    #[arg(long, env = "TWILLD_VMODULE", help_heading = FLANNEL_HEADING)]
    pub vmodule: Option<String>,
    /// klog's `--log_backtrace_at`: ignored, with a warning.
    #[arg(long = "log_backtrace_at", env = "TWILLD_LOG_BACKTRACE_AT", help_heading = FLANNEL_HEADING)]
    pub log_backtrace_at: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The flags whose values came from the environment, with their variables (`--iface`,
    /// `FLANNELD_IFACE`), so that an error about such a value names the variable too.
    #[arg(skip)]
    pub from_env: FromEnv,
}

/// Flags set from the environment, each with its variable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FromEnv(pub Vec<(String, String)>);

impl FromEnv {
    /// `message` with a note naming the variable of each flag it names that came from the
    /// environment: `--etcd-endpoints "etcd": expected …` alone sends an operator looking at a
    /// command line that does not have it.
    pub fn explain(&self, message: &str) -> String {
        let notes: Vec<String> = self
            .0
            .iter()
            .filter(|(flag, _)| names_flag(message, flag))
            .map(|(flag, var)| format!("{flag} came from the environment variable {var}"))
            .collect();
        if notes.is_empty() {
            message.to_owned()
        } else {
            format!("{message} ({})", notes.join("; "))
        }
    }
}

/// Whether `message` names `flag` (`--iface`, not `--iface-regex`).
fn names_flag(message: &str, flag: &str) -> bool {
    message
        .match_indices(flag)
        .any(|(i, _)| ends_flag(&message[i + flag.len()..]))
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print this node's lease, the backend and every peer as a table, then exit.
    Status,
}

/// The help's heading for flanneld's flags that twilld takes for compatibility only.
const FLANNEL_HEADING: &str = "flanneld's flags, accepted for compatibility";

impl Cli {
    /// One warning for each flanneld flag given that has no effect in twilld, saying why
    /// (logged once at start: the command line parses before logging is set up).
    pub fn ignored_flannel_flags(&self) -> Vec<String> {
        let kube = "it configures flanneld's Kubernetes subnet manager (--kube-subnet-mgr), and twilld leases subnets from etcd only, as flanneld does without --kube-subnet-mgr";
        let klog = "it sets klog's (flanneld's logger's) verbosity; use --log-level (debug, or a filter such as info,twill_agent=debug)";
        let given = [
            (
                "--iptables-resync",
                self.iptables_resync.is_some(),
                "twilld checks its firewall rules at every reconcile (--reconcile-interval) and as soon as the nftables ruleset changes",
            ),
            ("--kube-api-url", self.kube_api_url.is_some(), kube),
            ("--kubeconfig-file", self.kubeconfig_file.is_some(), kube),
            (
                "--kube-annotation-prefix",
                self.kube_annotation_prefix.is_some(),
                kube,
            ),
            (
                "--net-config-path",
                self.net_config_path.is_some(),
                "twilld reads the network config from etcd (<etcd-prefix>/config), as flanneld does without --kube-subnet-mgr",
            ),
            (
                "--set-node-network-unavailable",
                self.set_node_network_unavailable.is_some(),
                kube,
            ),
            ("--v", self.v.is_some(), klog),
            ("--vmodule", self.vmodule.is_some(), klog),
            (
                "--log_backtrace_at",
                self.log_backtrace_at.is_some(),
                "twilld logs no klog backtraces",
            ),
        ];
        given
            .into_iter()
            .filter(|(_, set, _)| *set)
            .map(|(flag, _, why)| {
                self.from_env.explain(&format!(
                    "{flag} (a flanneld flag) is accepted and has no effect in twill: {why}"
                ))
            })
            .collect()
    }
}

/// `--iptables-forward-rules`: `true` is what twilld always does.
fn parse_forward_rules(s: &str) -> Result<bool, String> {
    match parse_go_bool(s)? {
        true => Ok(true),
        false => Err("twilld always accepts the pod network in the FORWARD path (its nftables table, and the TWILL-FWD chain where iptables' FORWARD chain may drop) and has no mode without those rules: remove the flag".to_string()),
    }
}

/// `--kube-subnet-mgr`: `false` is what twilld does.
fn parse_kube_subnet_mgr(s: &str) -> Result<bool, String> {
    match parse_go_bool(s)? {
        false => Ok(false),
        true => Err("twilld leases subnets from etcd only (flanneld's etcd mode) and has no Kubernetes subnet manager: remove the flag and give --etcd-endpoints".to_string()),
    }
}

/// `--iface-can-reach`: a unicast address a route can lead to (a link-local IPv6 address
/// is on every link, so its route names none in particular).
fn parse_can_reach(s: &str) -> Result<std::net::IpAddr, String> {
    use std::net::IpAddr;
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))?;
    let refused = match ip {
        IpAddr::V4(a) if a.is_unspecified() || a.is_multicast() || a.is_broadcast() => {
            Some("not a unicast address")
        }
        IpAddr::V6(a) if a.is_unspecified() || a.is_multicast() => Some("not a unicast address"),
        IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 => {
            Some("link-local: every link has a route to fe80::/64, so it picks no interface")
        }
        _ => None,
    };
    match refused {
        Some(why) => Err(format!(
            "{ip} is {why}: give the address of a peer or gateway that the underlay interface reaches"
        )),
        None => Ok(ip),
    }
}

/// Flannel's flags that twilld reads from `FLANNELD_*` too (whole names: clap keeps the
/// names of the variables it reads as `&'static str`).
const FLANNELD_ENVS: &[&str] = &[
    "FLANNELD_ETCD_ENDPOINTS",
    "FLANNELD_ETCD_PREFIX",
    "FLANNELD_ETCD_CAFILE",
    "FLANNELD_ETCD_CERTFILE",
    "FLANNELD_ETCD_KEYFILE",
    "FLANNELD_ETCD_USERNAME",
    "FLANNELD_ETCD_PASSWORD",
    "FLANNELD_IFACE",
    "FLANNELD_IFACE_REGEX",
    "FLANNELD_PUBLIC_IP",
    "FLANNELD_PUBLIC_IPV6",
    "FLANNELD_SUBNET_FILE",
    "FLANNELD_IP_MASQ",
    "FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
    "FLANNELD_HEALTHZ_IP",
    "FLANNELD_HEALTHZ_PORT",
    "FLANNELD_IPTABLES_FORWARD_RULES",
    "FLANNELD_IPTABLES_RESYNC",
    "FLANNELD_IFACE_CAN_REACH",
    "FLANNELD_KUBE_SUBNET_MGR",
    "FLANNELD_KUBE_API_URL",
    "FLANNELD_KUBECONFIG_FILE",
    "FLANNELD_KUBE_ANNOTATION_PREFIX",
    "FLANNELD_NET_CONFIG_PATH",
    "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE",
    "FLANNELD_V",
    "FLANNELD_VMODULE",
    "FLANNELD_LOG_BACKTRACE_AT",
];

/// Flannel's variables for twilld's flags that are no `FLANNELD_*` one: read when twilld's
/// own is unset or empty (twilld's wins, as over `FLANNELD_*`).
const FLANNEL_OTHER_ENVS: &[(&str, &str)] = &[("TWILLD_WIREGUARD_KEY_FILE", "WIREGUARD_KEY_FILE")];

/// `--wireguard-roaming`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Roaming {
    /// To any address but another node's (kernel WireGuard's behaviour).
    Any,
    /// Only to other ports of the peer's leased addresses.
    Lease,
}

impl Cli {
    /// The busy poll a backend's workers use: `--udp-busy-poll-us` when given, else the
    /// backend's own default.
    pub fn busy_poll(&self, backend_default: std::time::Duration) -> std::time::Duration {
        self.udp_busy_poll_us
            .map_or(backend_default, std::time::Duration::from_micros)
    }
}

impl Cli {
    /// Whether wireguard's workers get a crypto helper: `--wireguard-crypto-threads`, with 0
    /// decided by the machine's CPUs.
    pub fn wireguard_crypto_helper(&self) -> bool {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        crypto_helper(self.wireguard_crypto_threads, cpus)
    }
}

/// A helper thread for one flow's crypto when asked for (2), or by default (0) with CPUs to
/// spare: on 2 vCPUs the helper lost throughput (it competes with the traffic's own
/// processes and softirq for the same two cores; numbers in docs/benchmarks.md).
fn crypto_helper(threads: u64, cpus: usize) -> bool {
    match threads {
        0 => cpus >= 4,
        n => n >= 2,
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it (Flannel's flags and `FLANNELD_*`).
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean: use true or false")),
    }
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("{s:?} is not a regular expression: {e}"))
}

/// The arguments with Go's single-dash spelling of long flags (`-etcd-endpoints=…`,
/// `-ip-masq`), which flanneld takes as well as `--…` and which packaged flanneld units use,
/// rewritten with two dashes for clap. Only twilld's own long flag names are rewritten, and
/// nothing after `--`: any other word stays as it was, for clap to take or refuse.
pub fn go_style_args<I: IntoIterator<Item = std::ffi::OsString>>(
    args: I,
) -> Vec<std::ffi::OsString> {
    let cmd = Cli::command();
    let arg = |name: &str| cmd.get_arguments().find(|a| a.get_long() == Some(name));
    // Whether `--name` (no `=`) takes the next word as its value, as Go's non-boolean flags do.
    let takes_next = |name: &str| {
        arg(name).is_some_and(|a| a.get_action().takes_values() && !a.is_require_equals_set())
    };
    let mut out = Vec::new();
    let mut flags_end = false;
    let mut value_next = false;
    for (i, word) in args.into_iter().enumerate() {
        let is_value = std::mem::take(&mut value_next);
        flags_end |= word == "--";
        let flag = match word.to_str() {
            Some(s) if i > 0 && !flags_end && !is_value => s
                .strip_prefix("--")
                .map(|name| (name, false))
                .or_else(|| s.strip_prefix('-').map(|name| (name, true))),
            _ => None,
        };
        let Some((name, single_dash)) = flag else {
            out.push(word);
            continue;
        };
        let (name, has_value) = match name.split_once('=') {
            Some((n, _)) => (n, true),
            None => (name, false),
        };
        let known = matches!(name, "help" | "version") || arg(name).is_some();
        value_next = known && !has_value && takes_next(name);
        if known && single_dash {
            let mut long = std::ffi::OsString::from("-");
            long.push(&word);
            out.push(long);
        } else {
            out.push(word);
        }
    }
    out
}

/// Parses twilld's command line (Go's single-dash spelling too) and environment: `TWILLD_X`,
/// else for Flannel's flags `FLANNELD_X`, for every flag not on the command line.
///
/// A variable set to the empty string counts as unset, as in flanneld's `flagsFromEnv`
/// (`if val != ""`): a Kubernetes ConfigMap key left empty means "the default", not "the
/// empty value". clap's `env` takes an empty variable as given, and reads the process
/// environment itself when an `Arg` is built, so there is no way to hand it values. Rather
/// than mutating the environment (unsound once threads exist, and `unsafe`), each argument
/// is pointed at the one variable it should read (`TWILLD_X`, else `FLANNELD_X`) or at none
/// when that is empty; clap then parses and validates the value as before. A value from the
/// environment that clap refuses is said with its variable's name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let args = go_style_args(args);
    let mut cmd = command_with_env(|k| std::env::var_os(k));
    let m = match cmd.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => return Err(name_the_variable(e, &cmd, &args)),
    };
    let mut cli = Cli::from_arg_matches(&m).map_err(|e| e.format(&mut cmd))?;
    cli.from_env = FromEnv(
        cmd.get_arguments()
            .filter(|a| {
                m.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::EnvVariable)
            })
            .filter_map(|a| {
                let var = a.get_env()?.to_string_lossy().into_owned();
                Some((format!("--{}", a.get_long()?), var))
            })
            .collect(),
    );
    Ok(cli)
}

/// twilld's command with each argument reading the variable [`env_var`] picks in `get`'s
/// environment.
pub fn command_with_env(get: impl Fn(&str) -> Option<OsString>) -> clap::Command {
    Cli::command().mut_args(|a| {
        let Some(own) = a.get_env().and_then(|n| n.to_str()).map(str::to_owned) else {
            return a;
        };
        match env_var(&own, &get) {
            EnvVar::Own => a,
            EnvVar::Flannel(var) => a.env(var),
            EnvVar::Empty => a.env(None),
        }
    })
}

/// The variable an argument reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvVar {
    /// Its own (`TWILLD_X`): set and not empty, or unset (then `--help` still names it).
    Own,
    /// Flannel's (`FLANNELD_X`, or `WIREGUARD_KEY_FILE`), set and not empty while its own is
    /// empty or unset.
    Flannel(&'static str),
    /// None: the only variables set are empty, so the default applies.
    Empty,
}

/// The variable an argument whose own variable is `own` reads in `get`'s environment.
pub fn env_var(own: &str, get: impl Fn(&str) -> Option<OsString>) -> EnvVar {
    let given = |k: &str| get(k).is_some_and(|v| !v.is_empty());
    if given(own) {
        return EnvVar::Own;
    }
    if let Some(name) = own.strip_prefix("TWILLD_")
        && let Some(flannel) = FLANNELD_ENVS
            .iter()
            .find(|f| f.strip_prefix("FLANNELD_") == Some(name))
        && given(flannel)
    {
        return EnvVar::Flannel(flannel);
    }
    if let Some((_, flannel)) = FLANNEL_OTHER_ENVS.iter().find(|(o, _)| *o == own)
        && given(flannel)
    {
        return EnvVar::Flannel(flannel);
    }
    match get(own) {
        Some(_) => EnvVar::Empty,
        None => EnvVar::Own,
    }
}

/// `e` (clap's error for `args`), naming the environment variable the refused value came from
/// when it came from one: `--healthz-port` alone sends an operator looking at a command line
/// that does not have it.
fn name_the_variable(e: clap::Error, cmd: &clap::Command, args: &[OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return e;
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let Some(arg) = cmd
        .get_arguments()
        .find(|a| a.get_long().is_some_and(|l| shows_flag(shown, l)))
    else {
        return e;
    };
    let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
        return e;
    };
    // clap reads a variable only for a flag the command line lacks: if the same value fails
    // without the variable, it came from the command line.
    let without = cmd
        .clone()
        .mut_arg(arg.get_id(), |a| a.env(None))
        .try_get_matches_from(args);
    if let Err(e2) = &without
        && e2.kind() == e.kind()
        && e2.get(ContextKind::InvalidArg) == e.get(ContextKind::InvalidArg)
    {
        return e;
    }
    let said = e.to_string();
    let first = said.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let mut cmd = cmd.clone();
    clap::Error::raw(
        e.kind(),
        format!(
            "environment variable {var}: {first}; fix it, or unset it or set it empty for the default"
        ),
    )
    .format(&mut cmd)
}

/// Whether clap's display of an argument (`--healthz-port <HEALTHZ_PORT>`,
/// `--ip-masq[=<IP_MASQ>]`) is the one of long flag `long`.
fn shows_flag(shown: &str, long: &str) -> bool {
    shown
        .strip_prefix("--")
        .and_then(|r| r.strip_prefix(long))
        .is_some_and(ends_flag)
}

/// Whether `rest`, the text after a flag's name, ends that name (`--iface`, not `--iface-regex`).
fn ends_flag(rest: &str) -> bool {
    rest.chars()
        .next()
        .is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_addresses_parse_as_flannels_flags_do() {
        for (args, want) in [
            (&["twilld"][..], false),
            (&["twilld", "--ip-masq"], true),
            (&["twilld", "--ip-masq=true"], true),
            (&["twilld", "--ip-masq=1"], true),
            (&["twilld", "--ip-masq=False"], false),
            (&["twilld", "--ip-masq=0"], false),
        ] {
            assert_eq!(Cli::try_parse_from(args).unwrap().ip_masq, want, "{args:?}");
        }
        // A bare boolean flag never takes the next word (Go's flags do not either).
        let c = Cli::try_parse_from(["twilld", "--ip-masq", "status"]).unwrap();
        assert!(c.ip_masq && matches!(c.command, Some(Command::Status)));
        let e = Cli::try_parse_from(["twilld", "--ip-masq=yes"]).unwrap_err();
        assert!(e.to_string().contains("not a boolean"), "{e}");
        let c = Cli::try_parse_from(["twilld", "--healthz-ip", "::"]).unwrap();
        assert_eq!(c.healthz_ip, "::".parse::<std::net::IpAddr>().unwrap());
        let c = Cli::try_parse_from(["twilld", "--iface-regex", "^eth", "--iface-regex", "^ens"])
            .unwrap();
        assert_eq!(c.iface_regex.len(), 2);
    }

    #[test]
    fn flags_parse_and_conflicts_fail() {
        let c = Cli::try_parse_from([
            "twilld",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--iface",
            "eth0",
            "--iface",
            "10.0.0.1",
            "--ip-masq",
        ])
        .unwrap();
        assert_eq!(c.etcd_endpoints.len(), 2);
        assert_eq!(c.iface, vec!["eth0", "10.0.0.1"]);
        assert!(c.ip_masq);
        assert_eq!(c.subnet_lease_renew_margin, 60);
        let e = Cli::try_parse_from(["twilld", "--etcd-certfile", "/c"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--etcd-keyfile"), "{e}");
        let e = Cli::try_parse_from(["twilld", "--subnet-lease-renew-margin", "2000"]).unwrap_err();
        assert!(e.to_string().contains("--subnet-lease-renew-margin"), "{e}");
        let e = Cli::try_parse_from(["twilld", "--public-ip", "nope"]).unwrap_err();
        assert!(e.to_string().contains("--public-ip"), "{e}");
        let c = Cli::try_parse_from(["twilld", "--public-ipv6", "fd00::5"]).unwrap();
        assert_eq!(c.public_ipv6, Some("fd00::5".parse().unwrap()));
        let e = Cli::try_parse_from(["twilld", "--public-ipv6", "10.0.0.1"]).unwrap_err();
        assert!(e.to_string().contains("--public-ipv6"), "{e}");
    }

    #[test]
    fn go_style_single_dash_flags_work_as_with_flanneld() {
        // flanneld (Go's flag package) takes `-flag` like `--flag`, and Fedora's and RHEL's
        // flanneld units start it as `flanneld -etcd-endpoints=… -etcd-prefix=…`.
        let args = |a: &[&str]| go_style_args(a.iter().map(std::ffi::OsString::from));
        let c = Cli::try_parse_from(args(&[
            "twilld",
            "-etcd-endpoints=http://a:2379,http://b:2379",
            "-etcd-prefix",
            "/x/network",
            "-ip-masq",
            "-iface=eth0",
            "-subnet-lease-renew-margin=30",
        ]))
        .unwrap();
        assert_eq!(c.etcd_endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(c.etcd_prefix, "/x/network");
        assert!(c.ip_masq);
        assert_eq!(c.iface, ["eth0"]);
        assert_eq!(c.subnet_lease_renew_margin, 30);
        // A flag's value is never rewritten, even one that looks like a flag; unknown words
        // are clap's to refuse.
        assert_eq!(args(&["twilld", "--public-ip", "-iface"])[2], "-iface");
        assert_eq!(
            args(&["twilld", "-iface", "-iface"])[1..],
            ["--iface", "-iface"]
        );
        assert_eq!(args(&["twilld", "-ip-masq", "-iface", "x"])[2], "--iface");
        assert!(Cli::try_parse_from(args(&["twilld", "-no-such-flag"])).is_err());
        assert_eq!(args(&["twilld", "--", "-iface"])[2], "-iface");
    }

    #[test]
    fn crypto_helper_by_default_only_with_cpus_to_spare() {
        assert!(!crypto_helper(0, 2));
        assert!(crypto_helper(0, 4));
        assert!(!crypto_helper(1, 64));
        assert!(crypto_helper(2, 2));
        let c = Cli::try_parse_from(["twilld", "--wireguard-crypto-threads", "2"]).unwrap();
        assert!(c.wireguard_crypto_helper());
        let err = Cli::try_parse_from(["twilld", "--wireguard-crypto-threads", "3"]).unwrap_err();
        assert!(err.to_string().contains("3"), "{err}");
    }

    #[test]
    fn wireguard_aead_is_auto_unless_asked_and_a_bad_name_lists_the_choices() {
        let c = Cli::try_parse_from(["twilld"]).unwrap();
        assert_eq!(c.wireguard_aead, AeadChoice::Auto);
        let c = Cli::try_parse_from(["twilld", "--wireguard-aead", "ipsec-mb"]).unwrap();
        assert_eq!(c.wireguard_aead, AeadChoice::IpsecMb);
        let c = Cli::try_parse_from(["twilld", "--wireguard-aead", "ring"]).unwrap();
        assert_eq!(c.wireguard_aead, AeadChoice::Ring);
        let e = Cli::try_parse_from(["twilld", "--wireguard-aead", "openssl"]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("--wireguard-aead") && e.contains("ipsec-mb") && e.contains("ring"),
            "{e}"
        );
    }

    #[test]
    fn wireguard_roaming_is_any_unless_lease_is_asked_for() {
        let c = Cli::try_parse_from(["twilld"]).unwrap();
        assert_eq!(c.wireguard_roaming, Roaming::Any);
        let c = Cli::try_parse_from(["twilld", "--wireguard-roaming", "lease"]).unwrap();
        assert_eq!(c.wireguard_roaming, Roaming::Lease);
        let e = Cli::try_parse_from(["twilld", "--wireguard-roaming", "nat"]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("--wireguard-roaming") && e.contains("lease"),
            "{e}"
        );
    }

    #[test]
    fn busy_poll_is_the_backends_default_unless_given() {
        use std::time::Duration;
        let c = Cli::try_parse_from(["twilld"]).unwrap();
        assert_eq!(
            c.busy_poll(crate::backend::udp::DEFAULT_BUSY_POLL),
            Duration::ZERO
        );
        assert_eq!(
            c.busy_poll(crate::backend::wireguard::DEFAULT_BUSY_POLL),
            Duration::ZERO
        );
        let c = Cli::try_parse_from(["twilld", "--udp-busy-poll-us", "50"]).unwrap();
        assert_eq!(
            c.busy_poll(crate::backend::wireguard::DEFAULT_BUSY_POLL),
            Duration::from_micros(50)
        );
        let e = Cli::try_parse_from(["twilld", "--udp-busy-poll-us", "200000"]).unwrap_err();
        assert!(e.to_string().contains("--udp-busy-poll-us"), "{e}");
    }

    #[test]
    fn flanneld_environment_is_honoured_but_twilld_wins_and_empty_means_unset() {
        let env = |k: &str| -> Option<OsString> {
            match k {
                "FLANNELD_IFACE" => Some("ens3".into()),
                "FLANNELD_ETCD_PREFIX" => Some("/flannel".into()),
                "TWILLD_ETCD_PREFIX" => Some("/twill".into()),
                // A ConfigMap key left empty: the default, as flanneld's flagsFromEnv does.
                "FLANNELD_IP_MASQ" | "TWILLD_ETCD_CAFILE" | "FLANNELD_ETCD_CAFILE" => {
                    Some("".into())
                }
                // An empty TWILLD_X does not hide a FLANNELD_X that says something.
                "TWILLD_HEALTHZ_PORT" => Some("".into()),
                "FLANNELD_HEALTHZ_PORT" => Some("10256".into()),
                // Not one of Flannel's flags: FLANNELD_ is not read for it.
                "FLANNELD_RECONCILE_INTERVAL" => Some("5".into()),
                _ => None,
            }
        };
        assert_eq!(
            env_var("TWILLD_IFACE", env),
            EnvVar::Flannel("FLANNELD_IFACE")
        );
        assert_eq!(env_var("TWILLD_ETCD_PREFIX", env), EnvVar::Own);
        // Unset itself and an empty FLANNELD_IP_MASQ: clap finds nothing in TWILLD_IP_MASQ.
        assert_eq!(env_var("TWILLD_IP_MASQ", env), EnvVar::Own);
        assert_eq!(env_var("TWILLD_ETCD_CAFILE", env), EnvVar::Empty);
        assert_eq!(
            env_var("TWILLD_HEALTHZ_PORT", env),
            EnvVar::Flannel("FLANNELD_HEALTHZ_PORT")
        );
        assert_eq!(env_var("TWILLD_RECONCILE_INTERVAL", env), EnvVar::Own);
        assert_eq!(env_var("TWILLD_PUBLIC_IP", env), EnvVar::Own);

        // The command reads those variables: an empty one none (clap would take "" as given).
        let cmd = command_with_env(env);
        let reads = |id: &str| {
            let a = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
            a.get_env().map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(reads("iface").as_deref(), Some("FLANNELD_IFACE"));
        assert_eq!(reads("etcd_prefix").as_deref(), Some("TWILLD_ETCD_PREFIX"));
        assert_eq!(reads("ip_masq").as_deref(), Some("TWILLD_IP_MASQ"));
        assert_eq!(reads("etcd_cafile"), None);
        assert_eq!(
            reads("healthz_port").as_deref(),
            Some("FLANNELD_HEALTHZ_PORT")
        );
        assert_eq!(
            reads("wireguard_key_file").as_deref(),
            Some("TWILLD_WIREGUARD_KEY_FILE")
        );
        // The subcommand's copies of the global flags read the same.
        let mut built = cmd.clone();
        built.build();
        let status = built.find_subcommand("status").unwrap();
        let a = status
            .get_arguments()
            .find(|a| a.get_id() == "healthz_port")
            .unwrap();
        assert_eq!(a.get_env().unwrap(), "FLANNELD_HEALTHZ_PORT");
    }

    #[test]
    fn wireguard_key_file_reads_twillds_variable_then_flannels() {
        // Before: only WIREGUARD_KEY_FILE was read, though every flag takes TWILLD_<FLAG>.
        // (clap reads the process environment itself: what is checked is which variable the
        // flag is pointed at.)
        let reads = |vars: &'static [(&'static str, &'static str)]| {
            let get = |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            };
            let cmd = command_with_env(get);
            let a = cmd
                .get_arguments()
                .find(|a| a.get_id() == "wireguard_key_file")
                .unwrap();
            a.get_env().map(|v| v.to_string_lossy().into_owned())
        };
        let own = Some("TWILLD_WIREGUARD_KEY_FILE".to_string());
        let flannel = Some("WIREGUARD_KEY_FILE".to_string());
        assert_eq!(reads(&[("TWILLD_WIREGUARD_KEY_FILE", "/t/key")]), own);
        assert_eq!(reads(&[("WIREGUARD_KEY_FILE", "/f/key")]), flannel);
        // twilld's own wins, as over FLANNELD_*; an empty one hides nothing.
        assert_eq!(
            reads(&[
                ("TWILLD_WIREGUARD_KEY_FILE", "/t/key"),
                ("WIREGUARD_KEY_FILE", "/f/key")
            ]),
            own
        );
        assert_eq!(
            reads(&[
                ("TWILLD_WIREGUARD_KEY_FILE", ""),
                ("WIREGUARD_KEY_FILE", "/f/key")
            ]),
            flannel
        );
        assert_eq!(reads(&[]), own, "--help names twilld's own");
    }

    #[test]
    fn udp_offloads_takes_go_booleans_as_ip_masq_does() {
        // Before: `--udp-offloads=0` and TWILLD_UDP_OFFLOADS=0 exited 2.
        for (arg, want) in [
            ("--udp-offloads=0", false),
            ("--udp-offloads=f", false),
            ("--udp-offloads=False", false),
            ("--udp-offloads=1", true),
            ("--udp-offloads=T", true),
            ("--udp-offloads=true", true),
        ] {
            let c = Cli::try_parse_from(["twilld", arg]).unwrap();
            assert_eq!(c.udp_offloads, want, "{arg}");
        }
        let c = Cli::try_parse_from(["twilld", "--udp-offloads", "0"]).unwrap();
        assert!(!c.udp_offloads);
        assert!(Cli::try_parse_from(["twilld"]).unwrap().udp_offloads);
        let e = Cli::try_parse_from(["twilld", "--udp-offloads=no"]).unwrap_err();
        assert!(e.to_string().contains("not a boolean"), "{e}");
        // TWILLD_UDP_OFFLOADS goes through the same parser (clap reads it for the flag).
        let cmd = Cli::command();
        let a = cmd
            .get_arguments()
            .find(|a| a.get_id() == "udp_offloads")
            .unwrap();
        assert_eq!(a.get_env().unwrap(), "TWILLD_UDP_OFFLOADS");
    }

    #[test]
    fn flanneld_flags_are_taken_ignored_with_a_reason_or_refused_with_one() {
        // Before: each of these exited 2 "unexpected argument".
        let args = |a: &[&str]| go_style_args(a.iter().map(OsString::from));
        let c = Cli::try_parse_from(args(&[
            "twilld",
            "-iptables-forward-rules=true",
            "--iptables-resync=5",
            "-v=2",
            "--vmodule=a=1",
            "--log_backtrace_at=x.go:1",
            "--kube-subnet-mgr=false",
            "--kube-api-url=https://k:6443",
            "--kubeconfig-file=/k",
            "--kube-annotation-prefix=x.io",
            "--net-config-path=/etc/kube-flannel/net-conf.json",
            "--set-node-network-unavailable=false",
        ]))
        .unwrap();
        assert_eq!(c.iptables_forward_rules, Some(true));
        let ignored = c.ignored_flannel_flags();
        for flag in [
            "--iptables-resync",
            "--v ",
            "--vmodule",
            "--log_backtrace_at",
            "--kube-api-url",
            "--kubeconfig-file",
            "--kube-annotation-prefix",
            "--net-config-path",
            "--set-node-network-unavailable",
        ] {
            let n = ignored.iter().filter(|w| w.starts_with(flag)).count();
            assert_eq!(n, 1, "one warning for {flag}: {ignored:#?}");
        }
        assert_eq!(ignored.len(), 9, "{ignored:#?}");
        assert!(
            ignored
                .iter()
                .all(|w| w.contains("has no effect in twill: "))
        );
        // What twilld does anyway, and nothing given: no warning.
        for arg in ["--iptables-forward-rules", "--iptables-forward-rules=1"] {
            let c = Cli::try_parse_from(["twilld", arg]).unwrap();
            assert_eq!(c.iptables_forward_rules, Some(true));
            assert!(c.ignored_flannel_flags().is_empty());
        }
        assert!(
            Cli::try_parse_from(["twilld"])
                .unwrap()
                .ignored_flannel_flags()
                .is_empty()
        );
        // Behaviour twill cannot give: refused, naming the flag and what to do instead.
        for (arg, want) in [
            (
                "--iptables-forward-rules=false",
                "has no mode without those rules",
            ),
            ("--kube-subnet-mgr", "leases subnets from etcd only"),
            ("--kube-subnet-mgr=true", "--etcd-endpoints"),
        ] {
            let e = Cli::try_parse_from(["twilld", arg]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{arg}");
            let flag = arg.split('=').next().unwrap();
            let said = e.to_string();
            assert!(said.contains(flag) && said.contains(want), "{arg}: {said}");
        }
        // From FLANNELD_* as flanneld reads them.
        for (id, var) in [
            ("iptables_resync", "FLANNELD_IPTABLES_RESYNC"),
            ("iptables_forward_rules", "FLANNELD_IPTABLES_FORWARD_RULES"),
            ("v", "FLANNELD_V"),
        ] {
            let cmd = command_with_env(|k| (k == var).then(|| OsString::from("1")));
            let a = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
            assert_eq!(a.get_env().unwrap(), var);
        }
    }

    #[test]
    fn iface_can_reach_takes_a_unicast_address_from_the_flag_or_flannels_variable() {
        // Before: refused whatever its value (exit 2).
        let args = |a: &[&str]| go_style_args(a.iter().map(OsString::from));
        for (arg, want) in [
            ("--iface-can-reach=10.0.0.1", "10.0.0.1"),
            ("-iface-can-reach=fd00::1", "fd00::1"),
        ] {
            let c = Cli::try_parse_from(args(&["twilld", arg])).unwrap();
            assert_eq!(c.iface_can_reach, Some(want.parse().unwrap()), "{arg}");
        }
        assert_eq!(
            Cli::try_parse_from(["twilld"]).unwrap().iface_can_reach,
            None
        );
        for (value, want) in [
            ("eth0", "not an IPv4 or IPv6 address"),
            ("0.0.0.0", "not a unicast address"),
            ("224.0.0.1", "not a unicast address"),
            ("ff02::1", "not a unicast address"),
            ("fe80::1", "link-local"),
        ] {
            let e = Cli::try_parse_from(["twilld", "--iface-can-reach", value]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{value}");
            let said = e.to_string();
            assert!(
                said.contains("--iface-can-reach") && said.contains(value) && said.contains(want),
                "{value}: {said}"
            );
        }
        // FLANNELD_IFACE_CAN_REACH when TWILLD_IFACE_CAN_REACH is unset, as flanneld reads it.
        let cmd = command_with_env(|k| {
            (k == "FLANNELD_IFACE_CAN_REACH").then(|| OsString::from("10.0.0.1"))
        });
        let a = cmd
            .get_arguments()
            .find(|a| a.get_id() == "iface_can_reach")
            .unwrap();
        assert_eq!(a.get_env().unwrap(), "FLANNELD_IFACE_CAN_REACH");
    }

    #[test]
    fn the_help_names_every_backend() {
        let help = Cli::command().render_help().to_string();
        let about = help.lines().next().unwrap_or_default();
        for backend in ["host-gw", "vxlan", "udp", "wireguard"] {
            assert!(about.contains(backend), "{backend} missing in: {about}");
        }
    }

    #[test]
    fn an_argument_is_told_by_its_display_in_clap_errors() {
        assert!(shows_flag("--healthz-port <HEALTHZ_PORT>", "healthz-port"));
        assert!(shows_flag("--ip-masq[=<IP_MASQ>]", "ip-masq"));
        assert!(shows_flag("--ip-masq", "ip-masq"));
        assert!(!shows_flag("--healthz-port <HEALTHZ_PORT>", "healthz"));
        assert!(!shows_flag("--iface-regex <IFACE_REGEX>", "iface"));
        assert!(!shows_flag("<IFACE>", "iface"));
    }

    #[test]
    fn status_takes_the_flags_it_reads_after_the_subcommand_and_lists_them() {
        let args = |a: &[&str]| go_style_args(a.iter().map(OsString::from));
        let c = Cli::try_parse_from(args(&[
            "twilld",
            "status",
            "--healthz-port",
            "10256",
            "--metrics-port=9100",
            "--healthz-ip",
            "10.0.0.5",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--etcd-prefix",
            "/x/network",
            "--etcd-cafile",
            "/ca",
            "--etcd-certfile",
            "/c",
            "--etcd-keyfile",
            "/k",
            "--etcd-username",
            "u",
            "--etcd-password",
            "p",
            "--subnet-file",
            "/s.env",
            "--wireguard-socket-dir",
            "/w",
            "--log-level",
            "debug",
        ]))
        .unwrap();
        assert!(matches!(c.command, Some(Command::Status)));
        assert_eq!((c.healthz_port, c.metrics_port), (10256, 9100));
        assert_eq!(c.healthz_ip.to_string(), "10.0.0.5");
        assert_eq!(c.etcd_endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(c.etcd_prefix, "/x/network");
        assert_eq!(c.etcd_cafile.as_deref(), Some(std::path::Path::new("/ca")));
        assert_eq!(c.etcd_keyfile.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(c.etcd_password.as_deref(), Some("p"));
        assert_eq!(c.subnet_file, std::path::Path::new("/s.env"));
        assert_eq!(c.wireguard_socket_dir, std::path::Path::new("/w"));
        assert_eq!(c.log_level, "debug");
        // Go's single-dash spelling after the subcommand too; before it as before.
        let c = Cli::try_parse_from(args(&[
            "twilld",
            "-etcd-prefix=/y",
            "status",
            "-healthz-port",
            "10257",
        ]))
        .unwrap();
        assert_eq!((c.etcd_prefix.as_str(), c.healthz_port), ("/y", 10257));
        // Still checked there: a keyfile without its certfile.
        let e = Cli::try_parse_from(["twilld", "status", "--etcd-keyfile", "/k"]).unwrap_err();
        assert!(e.to_string().contains("--etcd-certfile"), "{e}");
        // Flags status does not read stay the daemon's.
        assert!(Cli::try_parse_from(["twilld", "status", "--iface", "eth0"]).is_err());
        let help = Cli::try_parse_from(["twilld", "status", "--help"])
            .unwrap_err()
            .to_string();
        for flag in [
            "--etcd-endpoints",
            "--etcd-prefix",
            "--etcd-cafile",
            "--etcd-certfile",
            "--etcd-keyfile",
            "--etcd-username",
            "--etcd-password",
            "--subnet-file",
            "--wireguard-socket-dir",
            "--healthz-ip",
            "--healthz-port",
            "--metrics-port",
            "--log-level",
        ] {
            assert!(help.contains(flag), "{flag} missing in:\n{help}");
        }
        assert!(!help.contains("--udp-workers"), "{help}");
    }
}

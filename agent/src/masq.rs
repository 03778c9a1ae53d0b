//! The agent's nftables table `inet twill` (one table for both families): forwarding of the
//! pod networks accepted, and with `--ip-masq`, Flannel's masquerade rules for each family
//! leased. Replaced whole on every reconcile.

use ipnet::{Ipv4Net, Ipv6Net};
use twill_netkit::firewall::{Chain, Family, Hook, Rule, Table};

/// The table twilld owns.
pub const TABLE: &str = "twill";

/// The pod network and this node's subnet of it, per family (`None`: family off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Nets {
    pub v4: Option<(Ipv4Net, Ipv4Net)>,
    pub v6: Option<(Ipv6Net, Ipv6Net)>,
}

impl Nets {
    /// Per family: the nft address keyword, network, subnet and multicast range, as text.
    fn families(&self) -> Vec<(&'static str, String, String, &'static str)> {
        let mut out = Vec::new();
        if let Some((n, s)) = self.v4 {
            out.push(("ip", n.to_string(), s.to_string(), "224.0.0.0/4"));
        }
        if let Some((n, s)) = self.v6 {
            out.push(("ip6", n.to_string(), s.to_string(), "ff00::/8"));
        }
        out
    }
}

/// The desired table for `nets`.
pub fn table(nets: Nets, ip_masq: bool) -> Table {
    let mut post = Vec::new();
    let mut forward = Vec::new();
    for (ip, network, subnet, multicast) in nets.families() {
        if ip_masq {
            if post.is_empty() {
                post.push(Rule::new(
                    "meta mark & 0x4000 == 0x4000 return",
                    "twilld: kube-proxy marked, it masquerades",
                ));
            }
            post.extend([
                Rule::new(
                    format!("{ip} saddr {network} {ip} daddr {network} return"),
                    "twilld: inside the overlay",
                ),
                Rule::new(
                    format!(
                        "{ip} saddr {network} {ip} daddr != {multicast} masquerade fully-random"
                    ),
                    "twilld: pods to the outside",
                ),
                Rule::new(
                    format!("{ip} saddr != {network} {ip} daddr {subnet} return"),
                    "twilld: outside to local pods",
                ),
                Rule::new(
                    format!("{ip} saddr != {network} {ip} daddr {network} masquerade fully-random"),
                    "twilld: outside to remote pods",
                ),
            ]);
        }
        forward.extend([
            Rule::new(format!("{ip} saddr {network} accept"), "twilld forward"),
            Rule::new(format!("{ip} daddr {network} accept"), "twilld forward"),
        ]);
    }
    Table {
        family: Family::Inet,
        name: TABLE.into(),
        chains: vec![
            Chain {
                name: "postrouting".into(),
                hook: Some(Hook::nat_postrouting()),
                rules: post,
            },
            Chain {
                name: "forward".into(),
                hook: Some(Hook::filter_forward()),
                rules: forward,
            },
        ],
    }
}

/// Removes the IPv4-only `ip twill` table of earlier versions (its rules are in `inet twill`
/// now); absent is fine.
pub fn remove_legacy_table() {
    let _ = twill_netkit::firewall::remove_table(Family::Ip, TABLE);
}

/// Which firewall tool programs the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FirewallBackend {
    /// nftables when `nft` is installed, else iptables.
    Auto,
    Nftables,
    Iptables,
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Says once, at start, when this machine has neither `iptables` nor `ip6tables` (each with
/// its `-restore`): twilld then cannot see a DROP in iptables' `FORWARD` chain (Docker, ufw,
/// firewalld) nor add its `TWILL-FWD` accepts there, and pod traffic between nodes is
/// dropped on such a node without any other sign. Per reconcile it stays silent.
pub fn warn_without_iptables() {
    warn_without_iptables_where(have);
}

/// [`warn_without_iptables`] with `have` telling which tools exist.
fn warn_without_iptables_where(have: impl Fn(&str) -> bool) {
    let usable = |tool: &str| have(tool) && have(&format!("{tool}-restore"));
    if usable("iptables") || usable("ip6tables") {
        return;
    }
    tracing::warn!(
        "neither iptables nor ip6tables (with iptables-restore) is installed: twilld cannot check \
         iptables' FORWARD chain, and where its policy is DROP (Docker, ufw, firewalld) pod \
         traffic between nodes is dropped there without twilld's TWILL-FWD accepts; install \
         iptables (Debian and Ubuntu: apt-get install iptables; its nf_tables variant, as \
         twill's image carries) or make sure the FORWARD policy is ACCEPT"
    );
}

/// Whether `backend` programs nftables (else iptables).
fn uses_nft(backend: FirewallBackend) -> bool {
    match backend {
        FirewallBackend::Nftables => true,
        FirewallBackend::Iptables => false,
        FirewallBackend::Auto => have("nft") || !have("iptables-restore"),
    }
}

/// Removes the masquerade rules an earlier run left where this one does not rewrite them:
/// those of the other firewall tool (`--firewall-backend` changed, or `auto` choosing
/// otherwise since `nft` was installed), and with iptables those of a family the network no
/// longer leases. Left in place they would go on masquerading, also with `--ip-masq` now off,
/// and for a network that is no longer the one configured. Failures are logged only.
pub fn remove_stale(backend: FirewallBackend, nets: Nets) {
    if uses_nft(backend) {
        for tool in ["iptables", "ip6tables"] {
            iptables::remove_nat(tool);
        }
        return;
    }
    if have("nft")
        && let Err(e) = twill_netkit::firewall::remove_table(Family::Inet, TABLE)
    {
        tracing::warn!(error = %e, "removing the nftables table inet {TABLE} of an earlier run");
    }
    if nets.v4.is_none() {
        iptables::remove_nat("iptables");
    }
    if nets.v6.is_none() {
        iptables::remove_nat("ip6tables");
    }
}

/// Applies the desired rules with the chosen backend.
pub fn apply(backend: FirewallBackend, nets: Nets, ip_masq: bool) -> Result<(), String> {
    if uses_nft(backend) {
        apply_nft(nets, ip_masq)
    } else {
        if let Some((network, subnet)) = nets.v4 {
            iptables::apply(
                "iptables",
                &network.to_string(),
                &subnet.to_string(),
                ip_masq,
            )?;
        }
        if let Some((network, subnet)) = nets.v6 {
            iptables::apply(
                "ip6tables",
                &network.to_string(),
                &subnet.to_string(),
                ip_masq,
            )?;
        }
        Ok(())
    }
}

/// What an nftables-mode apply left in one network namespace: valid for as long as nothing
/// else changes the ruleset there (its generation stays the one read after the apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NftApplied {
    /// The namespace's inode.
    netns: u64,
    nets: Nets,
    ip_masq: bool,
    /// Whether legacy (x_tables) filter tables exist, IPv4 and IPv6.
    legacy_filter: [bool; 2],
    generation: u32,
}

static NFT_APPLIED: std::sync::Mutex<Option<NftApplied>> = std::sync::Mutex::new(None);

/// The nftables-mode apply, once per change: replacing the table and asking iptables whether
/// its `FORWARD` chain drops take a process each, and the reconcile calls this every few
/// seconds. The nftables generation of the namespace grows with every committed change of its
/// ruleset, whoever makes it (nft, iptables-nft, firewalld, Docker) and not with listings: while
/// it stays what it was after our last apply, our table and iptables-nft's `FORWARD` chain
/// are as we left them. What it cannot see, legacy iptables (x_tables), is checked every time
/// where a legacy filter table exists.
fn apply_nft(nets: Nets, ip_masq: bool) -> Result<(), String> {
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let legacy_filter = [
        legacy_filter_table("ip_tables_names"),
        legacy_filter_table("ip6_tables_names"),
    ];
    let applied = |generation| {
        netns.map(|netns| NftApplied {
            netns,
            nets,
            ip_masq,
            legacy_filter,
            generation,
        })
    };
    let mut last = NFT_APPLIED.lock().unwrap_or_else(|p| p.into_inner());
    let before = match nftgen::generation() {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::debug!(error = %e, "reading the nftables generation (applying every time)");
            None
        }
    };
    if let Some(g) = before
        && last.is_some()
        && *last == applied(g)
    {
        return Ok(());
    }
    *last = None;
    table(nets, ip_masq).apply().map_err(|e| e.to_string())?;
    let settled = accept_past_iptables_drop(nets, legacy_filter)?;
    // Our table's replacement is one commit: one more means someone else changed the ruleset
    // meanwhile, and what we read may be stale already.
    let after = nftgen::generation().ok();
    if settled
        && before
            .zip(after)
            .is_some_and(|(b, a)| a == b.wrapping_add(1))
    {
        *last = after.and_then(applied);
    }
    Ok(())
}

/// Says, once per family and process, that the node's firewall has a legacy (x_tables)
/// filter table this twilld's nf_tables iptables cannot see: a DROP there (Docker, ufw,
/// firewalld on legacy iptables) would drop pod traffic without a word otherwise.
fn warn_legacy_unseen(tool: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
    if WARNED[usize::from(tool == "ip6tables")].swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::warn!(
        "a legacy (x_tables) {tool} filter table exists on this node, but this twilld's {tool} \
         is the nf_tables one: a DROP policy or rule there (Docker, ufw or firewalld on legacy \
         iptables) is not seen, and pod traffic between nodes may be dropped; run twilld \
         where {tool} is the legacy one (on the host), or move the node's firewall to \
         nf_tables"
    );
}

/// Whether the legacy (x_tables) filter table exists in the calling thread's namespace
/// (`names`: `ip_tables_names` or `ip6_tables_names`). Reading the list loads no module and
/// creates no table.
fn legacy_filter_table(names: &str) -> bool {
    std::fs::read_to_string(format!("/proc/thread-self/net/{names}"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "filter"))
}

/// An accept in our nftables table does not override a drop in another table's chain on the
/// same hook: every base chain sees the packet. Docker sets iptables' `FORWARD` policy to DROP
/// (ufw and firewalld drop there too), which would drop pod traffic between nodes although our
/// table accepts it. So where iptables' filter `FORWARD` chain may drop (a DROP policy, or any
/// rule of someone else's), our forward accepts go there too, in `TWILL-FWD`, as Flannel's
/// iptables rules do. Where the iptables tools are not installed there is no such chain, and
/// neither with legacy iptables while no legacy filter table exists (`legacy_filter`, IPv4 and
/// IPv6; asking would create one).
///
/// Returns whether the result holds until the nftables generation changes: nothing was
/// written (a write is checked again next time) and no legacy table was read.
fn accept_past_iptables_drop(nets: Nets, legacy_filter: [bool; 2]) -> Result<bool, String> {
    let per_family = [
        (
            "iptables",
            legacy_filter[0],
            nets.v4.map(|(n, _)| n.to_string()),
        ),
        (
            "ip6tables",
            legacy_filter[1],
            nets.v6.map(|(n, _)| n.to_string()),
        ),
    ];
    let mut settled = true;
    for (tool, legacy_table, network) in per_family {
        let Some(network) = network else { continue };
        if !have(tool) || !have(&format!("{tool}-restore")) {
            continue;
        }
        let legacy = iptables::is_legacy(tool);
        if !legacy && legacy_table {
            warn_legacy_unseen(tool);
        }
        if legacy {
            if !legacy_table {
                continue;
            }
            settled = false;
        }
        if !iptables::forward_may_drop(tool)? {
            continue;
        }
        if legacy {
            // Checked on every refresh anyway: rewritten as it always was.
            iptables::apply_forward(tool, &network)?;
        } else if iptables::ensure_forward(tool, &network)? {
            settled = false;
        }
    }
    Ok(settled)
}

/// The nftables ruleset generation (`NFT_MSG_GETGEN`) of the calling thread's network
/// namespace, over netlink: no process, no listing of the ruleset.
mod nftgen {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETGEN: u16 = 16;
    /// The kernel's answer to `NFT_MSG_GETGEN`.
    const NFT_MSG_NEWGEN: u16 = 15;
    const NFTA_GEN_ID: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_HDRLEN: usize = 16;
    /// `struct nfgenmsg`: family, version, resource id.
    const NFGENMSG_LEN: usize = 4;

    /// The request: `nlmsghdr` and an empty `nfgenmsg` (AF_UNSPEC, NFNETLINK_V0).
    fn request(seq: u32) -> [u8; NLMSG_HDRLEN + NFGENMSG_LEN] {
        let mut req = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN).to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        req
    }

    fn bad(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("nftables generation: {what}"),
        )
    }

    /// The generation in the kernel's answer to request `seq`.
    pub(super) fn parse(msg: &[u8], seq: u32) -> io::Result<u32> {
        let u16_at = |i: usize| msg.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let u32_at = |i: usize| {
            msg.get(i..i + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let len = u32_at(0).ok_or_else(|| bad("short answer"))? as usize;
        let len = len.min(msg.len());
        let (Some(kind), Some(got_seq)) = (u16_at(4), u32_at(8)) else {
            return Err(bad("short answer"));
        };
        if got_seq != seq {
            return Err(bad(&format!(
                "an answer to request {got_seq}, not to ours ({seq})"
            )));
        }
        if kind == NLMSG_ERROR {
            let errno = u32_at(NLMSG_HDRLEN).ok_or_else(|| bad("short error"))? as i32;
            if errno == 0 {
                return Err(bad("an acknowledgement, not the generation"));
            }
            // Read from the answer: wrapping, as `-i32::MIN` overflows (a panic in debug
            // builds); the kernel sends a negative errno, anything else is said as it is.
            return Err(io::Error::from_raw_os_error(errno.wrapping_neg()));
        }
        if kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN {
            return Err(bad(&format!(
                "message type {kind:#06x}, expected NFT_MSG_NEWGEN"
            )));
        }
        let mut at = NLMSG_HDRLEN + NFGENMSG_LEN;
        while at + 4 <= len {
            let (Some(alen), Some(kind)) = (u16_at(at), u16_at(at + 2)) else {
                break;
            };
            let alen = alen as usize;
            if alen < 4 || at + alen > len {
                break;
            }
            // NLA_TYPE_MASK: the nested and byte-order flags off.
            if kind & 0x3fff == NFTA_GEN_ID && alen >= 8 {
                let b = &msg[at + 4..at + 8];
                return Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            }
            at += (alen + 3) & !3;
        }
        Err(bad("no generation id in the answer"))
    }

    pub(super) fn generation() -> io::Result<u32> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: `timeout` lives across the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_nl is plain integers, for which all zeroes is valid.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        const SEQ: u32 = 1;
        let req = request(SEQ);
        // SAFETY: `req` and `kernel` live across the call and their sizes are passed.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is valid for writes of its length.
        let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        parse(&buf[..got as usize], SEQ)
    }
}

/// The same rules for hosts without nftables: chains of our own (`TWILL-POSTRTG` in nat,
/// `TWILL-FWD` in filter) rewritten whole with `iptables-restore --noflush` (and
/// `ip6tables-restore` for IPv6), and one jump to each from the built-in chain.
pub mod iptables {
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Our nat chain.
    pub const POSTRTG: &str = "TWILL-POSTRTG";
    /// Our filter chain.
    pub const FWD: &str = "TWILL-FWD";

    /// `iptables-restore --noflush` input that replaces the contents of our two chains
    /// (IPv6 networks get ip6tables' multicast range). `random_fully`: whether this iptables
    /// knows `--random-fully` (1.6.2 and later; without it the whole restore fails).
    pub fn render(network: &str, subnet: &str, ip_masq: bool, random_fully: bool) -> String {
        let masquerade = if random_fully {
            "MASQUERADE --random-fully"
        } else {
            "MASQUERADE"
        };
        let multicast = if network.contains(':') {
            "ff00::/8"
        } else {
            "224.0.0.0/4"
        };
        let mut s = format!("*nat\n:{POSTRTG} - [0:0]\n-F {POSTRTG}\n");
        if ip_masq {
            let c = |why: &str| format!("-m comment --comment \"twilld: {why}\"");
            s.push_str(&format!(
                "-A {POSTRTG} -m mark --mark 0x4000/0x4000 -j RETURN {}\n",
                c("kube-proxy marked")
            ));
            s.push_str(&format!(
                "-A {POSTRTG} -s {network} -d {network} -j RETURN {}\n",
                c("inside the overlay")
            ));
            s.push_str(&format!(
                "-A {POSTRTG} -s {network} ! -d {multicast} -j {masquerade} {}\n",
                c("pods to the outside")
            ));
            s.push_str(&format!(
                "-A {POSTRTG} ! -s {network} -d {subnet} -j RETURN {}\n",
                c("outside to local pods")
            ));
            s.push_str(&format!(
                "-A {POSTRTG} ! -s {network} -d {network} -j {masquerade} {}\n",
                c("outside to remote pods")
            ));
        }
        s.push_str("COMMIT\n");
        s.push_str(&render_forward(network));
        s
    }

    /// The filter part of [`render`]: `TWILL-FWD` accepting the pod network both ways.
    pub fn render_forward(network: &str) -> String {
        let mut s = format!("*filter\n:{FWD} - [0:0]\n-F {FWD}\n");
        s.push_str(&format!(
            "-A {FWD} -s {network} -j ACCEPT -m comment --comment \"twilld forward\"\n"
        ));
        s.push_str(&format!(
            "-A {FWD} -d {network} -j ACCEPT -m comment --comment \"twilld forward\"\n"
        ));
        s.push_str("COMMIT\n");
        s
    }

    /// Makes sure `from` jumps to `to`; whether it had to insert the jump.
    fn ensure_jump(tool: &str, table: &str, from: &str, to: &str) -> Result<bool, String> {
        if holds(tool, table, from, &["-j", to])? {
            return Ok(false);
        }
        let out = Command::new(tool)
            .args(["-w", "5", "-t", table, "-I", from, "1", "-j", to])
            .output()
            .map_err(|e| format!("running {tool}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} -t {table} -I {from} -j {to}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(true)
    }

    /// Whether `chain` of `table` holds the rule `rule` (`-C`: a listing, nothing written).
    fn holds(tool: &str, table: &str, chain: &str, rule: &[&str]) -> Result<bool, String> {
        let check = Command::new(tool)
            .args(["-w", "5", "-t", table, "-C", chain])
            .args(rule)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running {tool}: {e}"))?;
        Ok(check.success())
    }

    /// Whether `tool`'s filter `FORWARD` chain (`-S` output in `rules`) may drop a packet:
    /// its policy is DROP, or it holds rules other than our jump.
    pub fn forward_rules_may_drop(rules: &str) -> bool {
        rules.lines().map(str::trim).any(|l| {
            l == "-P FORWARD DROP"
                || (l.starts_with("-A FORWARD ") && l != format!("-A FORWARD -j {FWD}"))
        })
    }

    /// Reads `tool`'s filter `FORWARD` chain and tells whether it may drop (see
    /// [`forward_rules_may_drop`]). Listing creates no table.
    pub fn forward_may_drop(tool: &str) -> Result<bool, String> {
        let out = Command::new(tool)
            .args(["-w", "5", "-t", "filter", "-S", "FORWARD"])
            .output()
            .map_err(|e| format!("running {tool}: {e}"))?;
        if !out.status.success() {
            // No filter table in this kernel (module absent): nothing there drops.
            tracing::debug!(
                tool,
                error = %String::from_utf8_lossy(&out.stderr).trim(),
                "listing the filter FORWARD chain"
            );
            return Ok(false);
        }
        Ok(forward_rules_may_drop(&String::from_utf8_lossy(
            &out.stdout,
        )))
    }

    /// Rewrites `TWILL-FWD` alone (no nat rules: nftables holds those) and makes sure
    /// `FORWARD` jumps to it.
    pub fn apply_forward(tool: &str, network: &str) -> Result<(), String> {
        restore(tool, &render_forward(network))?;
        ensure_jump(tool, "filter", "FORWARD", FWD)?;
        Ok(())
    }

    /// Makes `TWILL-FWD` hold exactly [`render_forward`]'s two accepts (no nat rules:
    /// nftables holds those), and `FORWARD` jump to it. Only listings while both are right;
    /// returns whether it had to write.
    pub fn ensure_forward(tool: &str, network: &str) -> Result<bool, String> {
        let listed = Command::new(tool)
            .args(["-w", "5", "-t", "filter", "-S", FWD])
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("running {tool}: {e}"))?;
        let rules = String::from_utf8_lossy(&listed.stdout);
        let comment = ["-m", "comment", "--comment", "twilld forward"];
        let accept = |dir: &str| {
            let mut rule = vec![dir, network, "-j", "ACCEPT"];
            rule.extend(comment);
            holds(tool, "filter", FWD, &rule)
        };
        let right = listed.status.success()
            && rules
                .lines()
                .filter(|l| l.starts_with(&format!("-A {FWD} ")))
                .count()
                == 2
            && accept("-s")?
            && accept("-d")?;
        if !right {
            restore(tool, &render_forward(network))?;
        }
        Ok(ensure_jump(tool, "filter", "FORWARD", FWD)? || !right)
    }

    /// Whether `tool` is the legacy iptables (x_tables), asked once per tool: its rules are
    /// not in nftables, and listing them creates its filter table. iptables 1.8 says
    /// `(nf_tables)` or `(legacy)` in its version; older ones are all legacy.
    pub fn is_legacy(tool: &str) -> bool {
        static KNOWN: std::sync::Mutex<Vec<(String, bool)>> = std::sync::Mutex::new(Vec::new());
        let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, legacy)) = known.iter().find(|(t, _)| t == tool) {
            return *legacy;
        }
        let legacy = match Command::new(tool).arg("--version").output() {
            Ok(o) => !String::from_utf8_lossy(&o.stdout).contains("nf_tables"),
            // Not known now: asked again next time.
            Err(_) => return true,
        };
        known.push((tool.to_string(), legacy));
        legacy
    }

    /// Rewrites our chains with `tool` (`iptables` or `ip6tables`) and makes sure the
    /// built-in chains jump to them.
    pub fn apply(tool: &str, network: &str, subnet: &str, ip_masq: bool) -> Result<(), String> {
        let random_fully = ip_masq && knows_random_fully(tool);
        restore(tool, &render(network, subnet, ip_masq, random_fully))?;
        ensure_jump(tool, "nat", "POSTROUTING", POSTRTG)?;
        ensure_jump(tool, "filter", "FORWARD", FWD)?;
        Ok(())
    }

    /// Whether `tool`'s MASQUERADE target takes `--random-fully` (asked once per tool), as
    /// Flannel checks before using it.
    fn knows_random_fully(tool: &str) -> bool {
        static KNOWN: std::sync::Mutex<Vec<(String, bool)>> = std::sync::Mutex::new(Vec::new());
        let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, k)) = known.iter().find(|(t, _)| t == tool) {
            return *k;
        }
        let k = Command::new(tool)
            .args(["-j", "MASQUERADE", "--help"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--random-fully"));
        if !k {
            tracing::warn!(
                tool,
                "this iptables has no MASQUERADE --random-fully: masquerading without it"
            );
        }
        known.push((tool.to_string(), k));
        k
    }

    /// Removes our nat chain and the jump to it from `tool` (`iptables` or `ip6tables`), if
    /// there; absent tools and chains are fine.
    pub fn remove_nat(tool: &str) {
        if !super::have(tool) {
            return;
        }
        let run = |args: &[&str]| {
            Command::new(tool)
                .args(["-w", "5", "-t", "nat"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !run(&["-S", POSTRTG]) {
            return;
        }
        // One jump per run at most, but a few in case something copied it.
        for _ in 0..8 {
            if !run(&["-D", "POSTROUTING", "-j", POSTRTG]) {
                break;
            }
        }
        if run(&["-F", POSTRTG]) && run(&["-X", POSTRTG]) {
            tracing::info!(tool, "removed the nat chain {POSTRTG} of an earlier run");
        } else {
            tracing::warn!(
                tool,
                "removing the nat chain {POSTRTG} of an earlier run failed"
            );
        }
    }

    /// Feeds `input` to `tool`-restore without flushing other chains.
    fn restore(tool: &str, input: &str) -> Result<(), String> {
        let restore = format!("{tool}-restore");
        let mut child = Command::new(&restore)
            .args(["-w", "5", "--noflush"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {restore} (install iptables or nftables): {e}"))?;
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {restore}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{restore}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_at_start_when_no_iptables_is_installed() {
        // Before: TWILL-FWD was skipped without a word where iptables is missing (twill's
        // image had none), and Docker's FORWARD DROP cut pod traffic silently.
        let (buf, _guard) = crate::test_log::capture_logs();
        warn_without_iptables_where(|_| false);
        let out = crate::test_log::logs(&buf);
        assert_eq!(out.lines().count(), 1, "{out}");
        for want in [
            "WARN",
            "neither iptables nor ip6tables",
            "FORWARD",
            "DROP",
            "install",
        ] {
            assert!(out.contains(want), "{want} missing in: {out}");
        }
        // Either family's tools are enough to check and work around its FORWARD chain; a
        // tool without its -restore is no use (rules are written with it).
        for have in [
            &["iptables", "iptables-restore"][..],
            &["ip6tables", "ip6tables-restore"],
        ] {
            let (buf, _guard) = crate::test_log::capture_logs();
            warn_without_iptables_where(|t| have.contains(&t));
            let out = crate::test_log::logs(&buf);
            assert!(out.is_empty(), "{have:?}: {out}");
        }
        let (buf, _guard) = crate::test_log::capture_logs();
        warn_without_iptables_where(|t| t == "iptables");
        assert_eq!(crate::test_log::logs(&buf).lines().count(), 1);
    }

    fn nets(v4: bool, v6: bool) -> Nets {
        Nets {
            v4: v4.then(|| {
                (
                    "10.5.0.0/16".parse().unwrap(),
                    "10.5.3.0/24".parse().unwrap(),
                )
            }),
            v6: v6.then(|| {
                (
                    "fd00:5::/48".parse().unwrap(),
                    "fd00:5:0:3::/64".parse().unwrap(),
                )
            }),
        }
    }

    #[test]
    fn one_inet_table_holds_the_rules_of_each_family_leased() {
        let t = table(nets(true, true), true).render().unwrap();
        assert!(t.starts_with("table inet twill\n"), "{t}");
        for rule in [
            "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip6 saddr fd00:5::/48 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr != fd00:5::/48 ip6 daddr fd00:5:0:3::/64 return",
            "ip6 daddr fd00:5::/48 accept",
        ] {
            assert!(t.contains(rule), "{rule}\n{t}");
        }
        assert_eq!(t.matches("kube-proxy marked").count(), 1, "{t}");
        let v6only = table(nets(false, true), true).render().unwrap();
        assert!(
            !v6only.contains("ip saddr") && v6only.contains("ip6 saddr"),
            "{v6only}"
        );
        let off = table(nets(true, true), false).render().unwrap();
        assert!(
            !off.contains("masquerade") && off.contains("accept"),
            "{off}"
        );
    }

    #[test]
    fn an_iptables_forward_chain_may_drop_with_a_drop_policy_or_rules_of_others() {
        use iptables::forward_rules_may_drop as drops;
        assert!(!drops("-P FORWARD ACCEPT\n"));
        assert!(!drops("-P FORWARD ACCEPT\n-A FORWARD -j TWILL-FWD\n"));
        assert!(drops("-P FORWARD DROP\n"));
        assert!(drops("-P FORWARD DROP\n-A FORWARD -j TWILL-FWD\n"));
        assert!(drops("-P FORWARD ACCEPT\n-A FORWARD -j DOCKER-USER\n"));
        assert!(drops("-P FORWARD ACCEPT\n-A FORWARD -j REJECT\n"));
        assert!(!drops(""));
    }

    #[test]
    fn the_nftables_generation_is_read_from_the_kernels_answer() {
        // NFT_MSG_NEWGEN: nlmsghdr, nfgenmsg (res_id: the generation's low 16 bits, big
        // endian), NFTA_GEN_ID (big endian) and NFTA_GEN_PROC_PID.
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&((10u16 << 8) | 15).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[0, 0, 0x01, 0x02]);
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&2u16.to_ne_bytes());
        msg.extend_from_slice(&7u32.to_be_bytes());
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&1u16.to_ne_bytes());
        msg.extend_from_slice(&0x0001_0102u32.to_be_bytes());
        assert_eq!(nftgen::parse(&msg, 1).unwrap(), 0x0001_0102);
        // An error answer (EPERM) and a truncated one are errors, not a generation.
        let e = nftgen::parse(&error_answer(-1), 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        assert!(nftgen::parse(&msg[..30], 1).is_err());
        assert!(nftgen::parse(&[], 1).is_err());
    }

    /// An `NLMSG_ERROR` answer to request 1 with `errno` (negative, as the kernel sends it).
    fn error_answer(errno: i32) -> Vec<u8> {
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&2u16.to_ne_bytes());
        err.extend_from_slice(&0u16.to_ne_bytes());
        err.extend_from_slice(&1u32.to_ne_bytes());
        err.extend_from_slice(&0u32.to_ne_bytes());
        err.extend_from_slice(&errno.to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        err
    }

    /// An `NFT_MSG_NEWGEN` answer of generation 0x0001_0102, with message type `kind` and
    /// sequence number `seq`.
    fn newgen_answer(kind: u16, seq: u32) -> Vec<u8> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&28u32.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[0, 0, 0x01, 0x02]);
        msg.extend_from_slice(&8u16.to_ne_bytes());
        msg.extend_from_slice(&1u16.to_ne_bytes());
        msg.extend_from_slice(&0x0001_0102u32.to_be_bytes());
        msg
    }

    #[test]
    fn an_error_answer_with_any_errno_is_an_error_not_a_panic() {
        // -errno of i32::MIN overflowed: a panic in debug builds, on a value the answer gave.
        let e = nftgen::parse(&error_answer(i32::MIN), 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(i32::MIN), "{e}");
        // errno 0 is an acknowledgement: no generation in it.
        assert!(nftgen::parse(&error_answer(0), 1).is_err());
    }

    #[test]
    fn only_a_newgen_answer_to_our_request_gives_the_generation() {
        const NEWGEN: u16 = (10 << 8) | 15;
        assert_eq!(
            nftgen::parse(&newgen_answer(NEWGEN, 1), 1).unwrap(),
            0x0001_0102
        );
        // Another message type with the same attribute layout (NFT_MSG_NEWTABLE's
        // NFTA_TABLE_NAME is attribute 1 too) is not a generation.
        let e = nftgen::parse(&newgen_answer(10 << 8, 1), 1).unwrap_err();
        assert!(e.to_string().contains("NFT_MSG_NEWGEN"), "{e}");
        // An answer to another request (another sequence number) is not ours.
        let e = nftgen::parse(&newgen_answer(NEWGEN, 7), 1).unwrap_err();
        assert!(e.to_string().contains("request 7"), "{e}");
        let e = nftgen::parse(&error_answer(-1), 2).unwrap_err();
        assert_eq!(e.raw_os_error(), None, "an error for another request: {e}");
    }

    #[test]
    fn ip6tables_gets_the_ipv6_multicast_range() {
        let r = iptables::render("fd00:5::/48", "fd00:5:0:3::/64", true, true);
        assert!(
            r.contains("-s fd00:5::/48 ! -d ff00::/8 -j MASQUERADE"),
            "{r}"
        );
        let r = iptables::render("10.5.0.0/16", "10.5.3.0/24", true, true);
        assert!(r.contains("! -d 224.0.0.0/4"), "{r}");
        // An iptables older than 1.6.2 refuses the whole restore over --random-fully.
        let r = iptables::render("10.5.0.0/16", "10.5.3.0/24", true, false);
        assert!(
            r.contains("-j MASQUERADE -m comment") && !r.contains("random-fully"),
            "{r}"
        );
    }
}

//! One measurement between two network namespaces: iperf3 throughput, ping RTT, and the CPU
//! time twilld spent meanwhile (from `/proc`). iperf3 and ping run from the host's filesystem
//! inside the containers' namespaces.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use twill_netkit::Netns;

use crate::binaries::twill_run;
use crate::state::LabState;

/// The network namespace of container `name` on host `h`.
pub(super) fn container_netns(st: &LabState, h: usize, name: &str) -> anyhow::Result<String> {
    let out = twill_run(st, h)?.args(["inspect", name]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("inspect")?;
    v["netns"]
        .as_str()
        .map(str::to_string)
        .context("container has no netns")
}

fn in_ns(ns: &str, prog: &str, args: &[&str]) -> anyhow::Result<Command> {
    let mut c = Command::new(prog);
    c.args(args);
    Netns::open(ns)?.prepare_command(&mut c)?;
    Ok(c)
}

pub(super) fn iperf(
    server_ns: &str,
    server_ip: &str,
    client_ns: &str,
    secs: u64,
    streams: u32,
) -> anyhow::Result<(f64, f64)> {
    // The server ends itself if no client comes (twill-lab killed between the two): it must
    // not outlive the lab waiting forever in a removed namespace.
    let server = in_ns(
        server_ns,
        "iperf3",
        &["-s", "-1", "-p", "5201", "--idle-timeout", "30"],
    )?
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .context("running iperf3 (apt-get install iperf3)")?;
    let out = with_server(server, || {
        std::thread::sleep(Duration::from_millis(300));
        in_ns(
            client_ns,
            "iperf3",
            &[
                "-c",
                server_ip,
                "-p",
                "5201",
                "-J",
                "-t",
                &secs.to_string(),
                "-P",
                &streams.to_string(),
            ],
        )?
        .output()
        .context("running the iperf3 client")
    })?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let sum = &v["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) => Ok((bps / 1e9, bytes)),
        _ => bail!("iperf3 failed: {}", v["error"]),
    }
}

/// Runs `client` while `server` runs, then ends the server (by its PID) and reaps it, however
/// the client ended: a client that could not start left the server waiting for its idle
/// timeout, in a namespace the lab's teardown removes under it.
fn with_server<T>(
    mut server: std::process::Child,
    client: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let r = client();
    let _ = server.kill();
    let _ = server.wait();
    r
}

/// CPU seconds (user + system) used so far by every process in the lab's host namespaces:
/// twilld, or whatever took its data path over (the external forwarder, wireguard-go,
/// boringtun), so each path's forwarding cost is read the same way. A process that ends
/// between two readings takes its time with it (a reconcile's short `nft` runs), one that
/// starts counts from its start.
pub(super) fn data_path_cpu_seconds(st: &LabState) -> f64 {
    let hosts: Vec<u64> = st
        .hosts
        .iter()
        .filter_map(|h| Netns::open(&h.netns).and_then(|n| n.inode()).ok())
        .collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    procs
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_link(e.path().join("ns/net"))
                .ok()
                .and_then(|l| netns_inode(&l.to_string_lossy()))
                .is_some_and(|ino| hosts.contains(&ino))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .map(|stat| cpu_seconds(&stat))
        .sum()
}

/// The inode in a `/proc/PID/ns/net` link (`net:[4026532281]`).
fn netns_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// utime + stime of a `/proc/PID/stat` line, in seconds.
fn cpu_seconds(stat: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // Fields after the ")" that ends the command name: utime and stime are 12 and 13.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / hz
}

pub(super) fn rtt(client_ns: &str, ip: &str) -> anyhow::Result<f64> {
    let out = in_ns(client_ns, "ping", &["-q", "-c", "20", "-i", "0.05", ip])?.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // rtt min/avg/max/mdev = 0.030/0.045/0.080/0.010 ms
    let avg = text
        .lines()
        .find(|l| l.contains("min/avg"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|a| a.parse().ok());
    avg.with_context(|| format!("ping {ip} failed: {text}"))
}

/// The median: the middle value, or the mean of the two middle ones for an even count (the
/// upper one alone made every cell of a 2-round run its best throughput and worst RTT).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_ended_and_reaped_when_the_client_fails() {
        let server = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = server.id();
        let r: anyhow::Result<()> = with_server(server, || anyhow::bail!("no client"));
        assert!(r.is_err());
        // Reaped, not a zombie: no child of ours has that PID any more. (Once reaped the PID
        // may belong to any other process: only our own child is ever signalled.)
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1.to_string();
                after.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        let left = parent == Some(std::process::id());
        if left {
            crate::commands::kill_pid(pid);
        }
        assert!(!left, "the server {pid} outlived its client");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 2.0]), 3.0);
        assert_eq!(median(vec![1.0, 4.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn a_process_netns_link_gives_its_inode_and_nothing_else_does() {
        assert_eq!(netns_inode("net:[4026532281]"), Some(4026532281));
        assert_eq!(netns_inode("mnt:[4026532281]"), None);
        assert_eq!(netns_inode("net:[x]"), None);
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name_even_with_spaces_and_parentheses() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let stat = "42 (wg (x) 1) S 1 42 42 0 -1 4194560 10 0 0 0 300 200 0 0 20 0 3 0";
        assert_eq!(cpu_seconds(stat), 500.0 / hz);
        assert_eq!(cpu_seconds("garbage"), 0.0);
    }
}

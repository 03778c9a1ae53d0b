//! Continuous pings between containers: one iputils `ping -D` per ordered pair, run inside
//! the source container's namespace, its replies timestamped so every lost echo can be placed
//! in time (and so in a fault's window).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use twill_netkit::Netns;

/// Seconds between echoes of one pair.
pub const INTERVAL: f64 = 0.2;
/// Echoes sent this long before the pings stop may still be in flight: not counted.
const IN_FLIGHT: f64 = 2.0;

/// What one ping process printed so far.
#[derive(Debug, Default)]
struct Replies {
    /// (icmp_seq, unix time of the reply).
    received: Vec<(u32, f64)>,
    transmitted: Option<u32>,
}

/// One running `ping` from container `from` to `to`.
pub struct Pinger {
    pub from: String,
    pub to: String,
    child: Child,
    replies: Arc<Mutex<Replies>>,
    reader: Option<JoinHandle<()>>,
}

/// One echo: when it was sent (about) and whether it came back.
#[derive(Clone, Copy, Debug)]
pub struct Echo {
    pub at: f64,
    pub lost: bool,
}

impl Pinger {
    /// Starts pinging `ip` every [`INTERVAL`] from inside the named namespace `netns`.
    pub fn start(netns: &str, from: &str, to: &str, ip: &str) -> anyhow::Result<Pinger> {
        let mut cmd = Command::new("ping");
        // In a process group of its own: a Ctrl-C at the terminal stops the soak, which
        // still reports on every ping sent until then.
        cmd.args(["-D", "-n", "-i", &INTERVAL.to_string(), ip])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Netns::open(netns)
            .with_context(|| format!("opening the namespace {netns} of {from}"))?
            .prepare_command(&mut cmd)?;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting ping from {from} to {to}"))?;
        let stdout = child.stdout.take().context("ping's stdout")?;
        let replies = Arc::new(Mutex::new(Replies::default()));
        let sink = Arc::clone(&replies);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut r = sink.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(reply) = parse_reply(&line) {
                    r.received.push(reply);
                } else if let Some(n) = parse_transmitted(&line) {
                    r.transmitted = Some(n);
                }
            }
        });
        Ok(Pinger {
            from: from.to_string(),
            to: to.to_string(),
            child,
            replies,
            reader: Some(reader),
        })
    }

    /// Stops the ping (SIGINT, by PID, so it prints its totals) and returns every echo it
    /// sent, lost or not, except the last ones that may still be in flight.
    pub fn finish(mut self) -> Vec<Echo> {
        let stopped_at = super::now();
        self.interrupt();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let r = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        echoes(&r.received, r.transmitted, stopped_at - IN_FLIGHT)
    }

    fn interrupt(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        // Only when `finish` did not run (an error or Ctrl-C on the way).
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `[1712345678.123456] 64 bytes from 10.244.1.2: icmp_seq=7 ttl=62 time=0.08 ms` → (7, t).
/// Error lines (`From … icmp_seq=7 Destination Host Unreachable`) are not replies.
fn parse_reply(line: &str) -> Option<(u32, f64)> {
    if !line.contains(" bytes from ") {
        return None;
    }
    let t = line.strip_prefix('[')?.split_once(']')?.0.parse().ok()?;
    let seq = line.split_once("icmp_seq=")?.1;
    let seq = seq
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((seq, t))
}

/// `25 packets transmitted, 25 received, 0% packet loss, time 4800ms` → 25.
fn parse_transmitted(line: &str) -> Option<u32> {
    line.split_once(" packets transmitted")?
        .0
        .trim()
        .parse()
        .ok()
}

/// Every echo 1..=transmitted with its time: a reply's own, a lost one's interpolated
/// between the replies around it (stepping [`INTERVAL`] where there is none on a side).
/// Echoes after `until` are dropped.
fn echoes(received: &[(u32, f64)], transmitted: Option<u32>, until: f64) -> Vec<Echo> {
    let mut got: Vec<(u32, f64)> = received.to_vec();
    got.sort_by_key(|r| r.0);
    got.dedup_by_key(|r| r.0);
    let seen: BTreeSet<u32> = got.iter().map(|r| r.0).collect();
    let last = transmitted.or_else(|| got.last().map(|r| r.0)).unwrap_or(0);
    let mut out = Vec::with_capacity(last as usize);
    for seq in 1..=last {
        let at = if seen.contains(&seq) {
            got[got.partition_point(|r| r.0 < seq)].1
        } else {
            estimate(&got, seq)
        };
        if at <= until {
            out.push(Echo {
                at,
                lost: !seen.contains(&seq),
            });
        }
    }
    out
}

fn estimate(got: &[(u32, f64)], seq: u32) -> f64 {
    let i = got.partition_point(|r| r.0 < seq);
    let before = i.checked_sub(1).map(|k| got[k]);
    let after = got.get(i).copied();
    match (before, after) {
        (Some((a, ta)), Some((b, tb))) => ta + (tb - ta) * f64::from(seq - a) / f64::from(b - a),
        (Some((a, ta)), None) => ta + INTERVAL * f64::from(seq - a),
        (None, Some((b, tb))) => tb - INTERVAL * f64::from(b - seq),
        // Nothing came back at all: place them from the start of the soak, unknown.
        (None, None) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_totals_are_read_error_lines_are_not() {
        assert_eq!(
            parse_reply(
                "[1712345678.250000] 64 bytes from 10.244.1.2: icmp_seq=7 ttl=62 time=0.082 ms"
            ),
            Some((7, 1712345678.25))
        );
        assert_eq!(
            parse_reply(
                "[1712345678.250000] From 10.244.1.1 icmp_seq=8 Destination Host Unreachable"
            ),
            None
        );
        assert_eq!(
            parse_transmitted("25 packets transmitted, 23 received, 8% packet loss, time 4800ms"),
            Some(25)
        );
    }

    #[test]
    fn lost_echoes_are_placed_between_the_replies_around_them() {
        let got = [(1, 100.0), (2, 100.2), (5, 100.8), (6, 101.0)];
        let e = echoes(&got, Some(7), 1000.0);
        let lost: Vec<f64> = e.iter().filter(|e| e.lost).map(|e| e.at).collect();
        assert_eq!(e.len(), 7);
        assert_eq!(lost.len(), 3);
        assert!((lost[0] - 100.4).abs() < 1e-9 && (lost[1] - 100.6).abs() < 1e-9);
        assert!(
            (lost[2] - 101.2).abs() < 1e-9,
            "after the last reply: {lost:?}"
        );
        // The in-flight tail is not counted.
        assert_eq!(echoes(&got, Some(7), 101.0).len(), 6);
    }
}

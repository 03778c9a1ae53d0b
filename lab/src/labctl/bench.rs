//! `twill-lab bench`: one 2-host lab per backend, all up at the same time; iperf3 TCP (1 and
//! 4 streams) and ping RTT between containers on two hosts for each backend, plus two
//! containers on the same host (the bridge path: the physical baseline). Runs are
//! interleaved (every path once per round, `--runs` rounds) so a noisy machine treats every
//! path alike; each cell is the median. Also the CPU time twilld spent per GB moved (the
//! udp backend's cost; the kernel backends' agents only watch etcd). iperf3 and ping run from
//! the host's filesystem inside the containers' network namespaces.
//! `bench cni` and `bench runtime` run the CNI and runtime benchmarks of the source tree.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use twill_netkit::Netns;

use super::state::LabState;
use super::up::{UpOptions, up};
use super::{down, state_dir, twill_run};

/// One measured path.
#[derive(Clone, Debug)]
pub struct Row {
    pub path: String,
    pub gbps_1: f64,
    pub gbps_4: f64,
    pub rtt_ms: f64,
    /// twilld CPU seconds (both hosts) per GB received; `None` for the same-host path.
    pub cpu_s_per_gb: Option<f64>,
}

fn container_netns(st: &LabState, h: usize, name: &str) -> anyhow::Result<String> {
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

fn iperf(
    server_ns: &str,
    server_ip: &str,
    client_ns: &str,
    secs: u64,
    streams: u32,
) -> anyhow::Result<(f64, f64)> {
    let mut server = in_ns(server_ns, "iperf3", &["-s", "-1", "-p", "5201"])?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running iperf3 (apt-get install iperf3)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = in_ns(
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
    .output()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let sum = &v["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) => Ok((bps / 1e9, bytes)),
        _ => bail!("iperf3 failed: {}", v["error"]),
    }
}

/// CPU seconds (user + system) used so far by the twilld processes of a lab.
fn twilld_cpu_seconds(st: &LabState) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    st.hosts
        .iter()
        .filter_map(|h| h.twilld_pid)
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the ")" that ends the command name: utime and stime are 12 and 13.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (t(11) + t(12)) / hz
        })
        .sum()
}

fn rtt(client_ns: &str, ip: &str) -> anyhow::Result<f64> {
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One path to measure: server and client containers of one lab.
struct BenchPath {
    label: String,
    lab: String,
    server: (usize, &'static str),
    client: (usize, &'static str),
    /// Whether twilld carries this path's packets (count its CPU time).
    overlay: bool,
}

#[derive(Default)]
struct Samples {
    one: Vec<f64>,
    four: Vec<f64>,
    rtt: Vec<f64>,
    cpu_s: f64,
    bytes: f64,
}

fn measure_once(p: &BenchPath, secs: u64, acc: &mut Samples) -> anyhow::Result<()> {
    let st = LabState::load(&state_dir(&p.lab))?;
    let sns = container_netns(&st, p.server.0, p.server.1)?;
    let cns = container_netns(&st, p.client.0, p.client.1)?;
    let ip = st.hosts[p.server.0]
        .containers
        .iter()
        .find(|x| x.name == p.server.1)
        .map(|x| x.ip.clone())
        .context("server ip")?;
    for (streams, out) in [(1, &mut acc.one), (4, &mut acc.four)] {
        let cpu0 = twilld_cpu_seconds(&st);
        let (gbps, bytes) = iperf(&sns, &ip, &cns, secs, streams)?;
        acc.cpu_s += twilld_cpu_seconds(&st) - cpu0;
        acc.bytes += bytes;
        out.push(gbps);
    }
    acc.rtt.push(rtt(&cns, &ip)?);
    Ok(())
}

/// The `--backends` name of the ceiling path: a udp lab whose agents are replaced by a
/// TUN→TUN relay (see `relay`).
pub const TUN_RELAY: &str = "tun-relay";
const RELAY_LABEL: &str = "two hosts, TUN relay";

/// What `twill-lab bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKind {
    /// Throughput and RTT per backend against the same-host path.
    Network,
    /// CNI ADD/DEL latency against the reference plugins (`cargo bench` in the source tree).
    Cni,
    /// Container start and exec latency against runc/crun (scripts/bench-runtime).
    Runtime,
}

/// Output options of the network benchmark.
#[derive(Clone, Debug, Default)]
pub struct BenchOutput {
    pub markdown: Option<PathBuf>,
    pub svg: Option<PathBuf>,
}

/// Runs the network benchmark for `backends`; prints the table, optionally writes Markdown
/// and an SVG chart.
pub fn bench(backends: &[String], secs: u64, runs: usize, out: &BenchOutput) -> anyhow::Result<()> {
    // Before any lab is touched: a typo must not tear down a bench that is running.
    for b in backends {
        if ![TUN_RELAY, "host-gw", "vxlan", "udp"].contains(&b.as_str()) {
            bail!("unknown path {b:?}: pick from host-gw, vxlan, udp, {TUN_RELAY}");
        }
    }
    let names: Vec<String> = (0..backends.len()).map(|i| format!("bench{i}")).collect();
    let mut relays = Vec::new();
    let result = (|| -> anyhow::Result<Vec<Row>> {
        let mut paths = Vec::new();
        for (b, name) in backends.iter().zip(&names) {
            let _ = down(name);
            let relay = b == TUN_RELAY;
            let ok = up(&UpOptions {
                name: name.clone(),
                hosts: 2,
                backend: if relay { "udp".into() } else { b.clone() },
                containers_per_host: 2,
                network: "10.244.0.0/16".into(),
            })?;
            if !ok {
                bail!("the {b} lab is not fully connected: see `twill-lab logs h1 --name {name}`");
            }
            // The baseline comes from the first lab, whatever it runs (the bridge path needs
            // no agent, so a relay lab serves too).
            if paths.is_empty() {
                paths.push(BenchPath {
                    label: "same host (bridge)".into(),
                    lab: name.clone(),
                    server: (0, "h1c2"),
                    client: (0, "h1c1"),
                    overlay: false,
                });
            }
            if relay {
                let dir = state_dir(name);
                let mut st = LabState::load(&dir)?;
                relays.push(
                    super::relay::start(&mut st, &dir)
                        .context("replacing twilld with the TUN relay")?,
                );
            }
            paths.push(BenchPath {
                label: if relay {
                    RELAY_LABEL.into()
                } else {
                    format!("two hosts, {b}")
                },
                lab: name.clone(),
                server: (1, "h2c1"),
                client: (0, "h1c1"),
                // The relay runs in this process: no twilld CPU time to count.
                overlay: !relay,
            });
        }
        let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
        for round in 0..runs.max(1) {
            for (p, acc) in paths.iter().zip(samples.iter_mut()) {
                eprintln!("==> round {}/{}: {}", round + 1, runs.max(1), p.label);
                measure_once(p, secs, acc)?;
            }
        }
        Ok(paths
            .iter()
            .zip(samples)
            .map(|(p, s)| Row {
                path: p.label.clone(),
                cpu_s_per_gb: p.overlay.then(|| s.cpu_s / (s.bytes / 1e9).max(1e-9)),
                gbps_1: median(s.one),
                gbps_4: median(s.four),
                rtt_ms: median(s.rtt),
            })
            .collect())
    })();
    drop(relays);
    for name in &names {
        down(name)?;
    }
    let rows = result?;
    let text = report(&rows);
    print!("\n{}", text.table);
    if let Some(p) = &out.markdown {
        std::fs::write(p, &text.markdown).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &out.svg {
        std::fs::write(p, svg_chart(&rows)).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The table for the terminal and as Markdown.
pub struct Report {
    pub table: String,
    pub markdown: String,
}

/// Formats rows: ratios to the first row (the baseline), and udp against vxlan when both ran.
pub fn report(rows: &[Row]) -> Report {
    let mut table = String::new();
    let mut md = String::from(
        "| path | 1 stream Gbit/s | 4 streams Gbit/s | RTT ms | 1 stream vs same host | 4 streams vs same host | twilld CPU s/GB |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let Some(base) = rows.first() else {
        return Report {
            table: "nothing measured\n".into(),
            markdown: md,
        };
    };
    let _ = writeln!(
        table,
        "{:<24} {:>10} {:>10} {:>8} {:>9} {:>9} {:>12}",
        "PATH", "1 STREAM", "4 STREAMS", "RTT ms", "RATIO 1", "RATIO 4", "CPU s/GB"
    );
    for r in rows {
        let (r1, r4) = (r.gbps_1 / base.gbps_1, r.gbps_4 / base.gbps_4);
        let cpu = r
            .cpu_s_per_gb
            .map(|c| format!("{c:.2}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            table,
            "{:<24} {:>8.2}Gb {:>8.2}Gb {:>8.3} {:>8.2}x {:>8.2}x {:>12}",
            r.path, r.gbps_1, r.gbps_4, r.rtt_ms, r1, r4, cpu
        );
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.3} | {:.2}× | {:.2}× | {cpu} |",
            r.path, r.gbps_1, r.gbps_4, r.rtt_ms, r1, r4
        );
    }
    let find = |b: &str| rows.iter().find(|r| r.path == format!("two hosts, {b}"));
    let relay = rows.iter().find(|r| r.path == RELAY_LABEL);
    let mut lines = Vec::new();
    if let (Some(u), Some(v)) = (find("udp"), find("vxlan")) {
        lines.push(format!(
            "udp / vxlan: {:.2}x with 1 stream (goal 0.9), {:.2}x with 4 streams (goal 0.5)",
            u.gbps_1 / v.gbps_1,
            u.gbps_4 / v.gbps_4
        ));
    }
    if let (Some(r), Some(v)) = (relay, find("vxlan")) {
        lines.push(format!(
            "TUN relay / vxlan: {:.2}x with 1 stream, {:.2}x with 4 streams (a TUN-to-TUN relay without UDP: the single-stream ceiling of any TUN data path; one thread relays for both hosts)",
            r.gbps_1 / v.gbps_1,
            r.gbps_4 / v.gbps_4
        ));
    }
    if let (Some(u), Some(r)) = (find("udp"), relay) {
        lines.push(format!(
            "udp / TUN relay: {:.2}x with 1 stream, {:.2}x with 4 streams (what the UDP leg and twilld's checks cost)",
            u.gbps_1 / r.gbps_1,
            u.gbps_4 / r.gbps_4
        ));
    }
    if !lines.is_empty() {
        let _ = writeln!(table);
        let _ = writeln!(md);
    }
    for line in lines {
        let _ = writeln!(table, "{line}");
        let _ = writeln!(md, "{line}  ");
    }
    Report {
        table,
        markdown: md,
    }
}

/// A horizontal bar chart of the rows (1 and 4 streams per path), as a standalone SVG.
pub fn svg_chart(rows: &[Row]) -> String {
    let max = rows
        .iter()
        .flat_map(|r| [r.gbps_1, r.gbps_4])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    let (label_w, bar_w, row_h) = (190.0, 460.0, 44.0);
    let height = 50.0 + row_h * rows.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-weight=\"bold\">TCP throughput between containers (Gbit/s, iperf3)</text>\n\
         <rect x=\"{label_w}\" y=\"28\" width=\"12\" height=\"10\" fill=\"#4878a8\"/><text x=\"{}\" y=\"37\">1 stream</text>\n\
         <rect x=\"{}\" y=\"28\" width=\"12\" height=\"10\" fill=\"#e0913a\"/><text x=\"{}\" y=\"37\">4 streams</text>\n",
        label_w + 16.0,
        label_w + 100.0,
        label_w + 116.0
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 48.0 + row_h * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\">{}</text>",
            y + 22.0,
            r.path.replace('&', "&amp;").replace('<', "&lt;")
        );
        for (j, (v, color)) in [(r.gbps_1, "#4878a8"), (r.gbps_4, "#e0913a")]
            .into_iter()
            .enumerate()
        {
            let v = if v.is_finite() { v } else { 0.0 };
            let w = bar_w * v / max;
            let by = y + 4.0 + 18.0 * j as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{label_w}\" y=\"{by}\" width=\"{w:.1}\" height=\"16\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\">{v:.2}</text>",
                label_w + w + 4.0,
                by + 13.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The source tree this binary was built in (`<repo>/target/<profile>/twill-lab`), for the
/// benchmarks that live there.
fn source_tree() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating twill-lab")?;
    exe.ancestors()
        .nth(3)
        .filter(|d| d.join("Cargo.toml").exists() && d.join("cni-plugin").is_dir())
        .map(Path::to_path_buf)
        .context("`bench cni` and `bench runtime` run benchmarks from the source tree: run the twill-lab built in a git checkout (target/release/twill-lab)")
}

/// Runs the CNI or runtime benchmark of the source tree, passing its output through.
pub fn bench_other(kind: BenchKind, runs: Option<usize>) -> anyhow::Result<bool> {
    let root = source_tree()?;
    let mut c = match kind {
        BenchKind::Cni => {
            let mut c = Command::new("cargo");
            c.args([
                "bench",
                "--locked",
                "-p",
                "twill-cni",
                "--bench",
                "cni_add_del",
                "--",
            ]);
            if let Some(n) = runs {
                c.args(["--seq", &n.max(1).to_string()]);
            }
            c
        }
        BenchKind::Runtime => {
            let mut c = Command::new(root.join("scripts/bench-runtime"));
            if let Some(n) = runs {
                c.arg(n.max(1).to_string());
            }
            c
        }
        BenchKind::Network => bail!("the network benchmark is not delegated"),
    };
    c.current_dir(&root).stdin(Stdio::null());
    let status = c
        .status()
        .with_context(|| format!("running the {kind:?} benchmark in {}", root.display()))?;
    Ok(status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, one: f64, four: f64, cpu: Option<f64>) -> Row {
        Row {
            path: path.into(),
            gbps_1: one,
            gbps_4: four,
            rtt_ms: 0.1,
            cpu_s_per_gb: cpu,
        }
    }

    #[test]
    fn report_has_ratios_udp_against_vxlan_and_a_chart() {
        let rows = [
            row("same host (bridge)", 10.0, 20.0, None),
            row("two hosts, vxlan", 6.0, 9.0, Some(0.01)),
            row("two hosts, udp", 4.5, 5.0, Some(1.5)),
        ];
        let r = report(&rows);
        assert!(r.table.contains("0.60x"), "{}", r.table);
        assert!(
            r.table.contains("udp / vxlan: 0.75x with 1 stream"),
            "{}",
            r.table
        );
        assert!(
            r.markdown
                .contains("| two hosts, udp | 4.50 | 5.00 | 0.100 | 0.45× | 0.25× | 1.50 |"),
            "{}",
            r.markdown
        );
        let svg = svg_chart(&rows);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=\"190\" y=").count(), 6 + 1, "{svg}");
        assert!(report(&[]).table.contains("nothing measured"));
    }

    #[test]
    fn report_puts_udp_and_vxlan_against_the_tun_relay_ceiling() {
        let rows = [
            row("same host (bridge)", 10.0, 20.0, None),
            row("two hosts, vxlan", 6.0, 9.0, Some(0.01)),
            row("two hosts, udp", 4.5, 5.0, Some(1.5)),
            row(RELAY_LABEL, 6.0, 7.5, None),
        ];
        let r = report(&rows);
        for text in [&r.table, &r.markdown] {
            assert!(
                text.contains("TUN relay / vxlan: 1.00x with 1 stream, 0.83x with 4 streams"),
                "{text}"
            );
            assert!(
                text.contains("udp / TUN relay: 0.75x with 1 stream, 0.67x with 4 streams"),
                "{text}"
            );
        }
        // Without udp or vxlan there is nothing to compare the relay with.
        let alone = report(&[
            row("same host (bridge)", 10.0, 20.0, None),
            row(RELAY_LABEL, 6.0, 7.5, None),
        ]);
        assert!(!alone.table.contains(" / "), "{}", alone.table);
    }
}

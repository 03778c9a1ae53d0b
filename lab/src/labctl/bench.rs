//! `twill-lab bench`: for each backend a fresh 2-host lab; iperf3 TCP (1 and 4 streams) and
//! ping RTT between containers on two hosts, plus two containers on the same host (the bridge
//! path: the physical baseline), all in one run; a table with ratios to the baseline.
//! iperf3 and ping run from the host's filesystem inside the containers' network namespaces;
//! with `--runs N` every cell is the median of N measurements.

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
) -> anyhow::Result<f64> {
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
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("iperf3 failed: {}", v["error"]))
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
    v[v.len() / 2]
}

fn measure(
    st: &LabState,
    label: &str,
    (hs, s): (usize, &str),
    (hc, c): (usize, &str),
    secs: u64,
    runs: usize,
) -> anyhow::Result<Row> {
    let sns = container_netns(st, hs, s)?;
    let cns = container_netns(st, hc, c)?;
    let ip = st.hosts[hs]
        .containers
        .iter()
        .find(|x| x.name == s)
        .map(|x| x.ip.clone())
        .context("server ip")?;
    let (mut one, mut four, mut rtts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        one.push(iperf(&sns, &ip, &cns, secs, 1)?);
        four.push(iperf(&sns, &ip, &cns, secs, 4)?);
        rtts.push(rtt(&cns, &ip)?);
    }
    Ok(Row {
        path: label.to_string(),
        gbps_1: median(one),
        gbps_4: median(four),
        rtt_ms: median(rtts),
    })
}

/// Runs the benchmark for `backends`; prints the table, optionally writes Markdown.
pub fn bench(
    backends: &[String],
    secs: u64,
    runs: usize,
    markdown: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let name = format!("bench{i}");
        let _ = down(&name);
        let ok = up(&UpOptions {
            name: name.clone(),
            hosts: 2,
            backend: b.clone(),
            containers_per_host: 2,
            network: "10.244.0.0/16".into(),
        });
        let result = (|| -> anyhow::Result<()> {
            if !ok? {
                bail!("the {b} lab is not fully connected");
            }
            let st = LabState::load(&state_dir(&name))?;
            if i == 0 {
                rows.push(measure(
                    &st,
                    "same host (bridge)",
                    (0, "h1c2"),
                    (0, "h1c1"),
                    secs,
                    runs,
                )?);
            }
            rows.push(measure(
                &st,
                &format!("two hosts, {b}"),
                (1, "h2c1"),
                (0, "h1c1"),
                secs,
                runs,
            )?);
            Ok(())
        })();
        down(&name)?;
        result?;
    }
    let base = rows.first().cloned().context("nothing measured")?;
    let mut md = String::from(
        "| path | 1 stream Gbit/s | 4 streams Gbit/s | RTT ms | 1 stream vs same host | 4 streams vs same host |\n|---|---:|---:|---:|---:|---:|\n",
    );
    println!(
        "\n{:<24} {:>10} {:>10} {:>8} {:>9} {:>9}",
        "PATH", "1 STREAM", "4 STREAMS", "RTT ms", "RATIO 1", "RATIO 4"
    );
    for r in &rows {
        let (r1, r4) = (r.gbps_1 / base.gbps_1, r.gbps_4 / base.gbps_4);
        println!(
            "{:<24} {:>8.2}Gb {:>8.2}Gb {:>8.3} {:>8.2}x {:>8.2}x",
            r.path, r.gbps_1, r.gbps_4, r.rtt_ms, r1, r4
        );
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.3} | {:.2}× | {:.2}× |\n",
            r.path, r.gbps_1, r.gbps_4, r.rtt_ms, r1, r4
        ));
    }
    if let Some(p) = markdown {
        std::fs::write(p, md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

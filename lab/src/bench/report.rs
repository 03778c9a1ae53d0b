//! The network benchmark's results: a table for the terminal, Markdown, and an SVG chart.

use std::fmt::Write as _;

use super::path::{BenchPath, RowPath};
use crate::backend::LabBackend;

/// One measured path.
#[derive(Clone, Debug)]
pub struct Row {
    pub path: RowPath,
    pub gbps_1: f64,
    pub gbps_4: f64,
    pub rtt_ms: f64,
    /// CPU seconds of the processes in both hosts' namespaces (twilld, or the forwarder or
    /// WireGuard that replaced it) per GB received; `None` where nothing there forwards.
    pub cpu_s_per_gb: Option<f64>,
    /// Gbit/s of every round in order (1 stream, 4 streams): every path is measured once per
    /// round, one after the other, so two paths' ratios can be taken round by round.
    pub rounds: Vec<(f64, f64)>,
}

/// One line of ratios under the table: `a / b` with 1 and 4 streams.
struct Comparison {
    a: RowPath,
    b: RowPath,
    name: String,
    goal_1: Option<&'static str>,
    goal_4: Option<&'static str>,
    /// What the comparison means, after the figures.
    note: Option<&'static str>,
}

/// The ratio of two paths' medians, and how far the same ratio taken round by round spread
/// (the noise this machine adds: a goal inside the spread is not settled by one run).
fn ratio_text(a: &Row, b: &Row, streams: usize, goal: Option<&str>) -> String {
    let pick = |r: &Row| if streams == 1 { r.gbps_1 } else { r.gbps_4 };
    let round = |x: &(f64, f64)| if streams == 1 { x.0 } else { x.1 };
    let per_round: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .map(|(x, y)| round(x) / round(y))
        .filter(|r| r.is_finite())
        .collect();
    let mut extra: Vec<String> = goal.map(|g| format!("goal {g}")).into_iter().collect();
    if per_round.len() >= 2 {
        let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let high = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        extra.push(format!("rounds {low:.2}–{high:.2}"));
    }
    let plural = if streams == 1 { "" } else { "s" };
    let mut text = format!("{:.2}x with {streams} stream{plural}", pick(a) / pick(b));
    if !extra.is_empty() {
        let _ = write!(text, " ({})", extra.join("; "));
    }
    text
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
        "| path | 1 stream Gbit/s | 4 streams Gbit/s | RTT ms | 1 stream vs same host | 4 streams vs same host | data path CPU s/GB |\n|---|---:|---:|---:|---:|---:|---:|\n",
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
        let label = r.path.label();
        let (r1, r4) = (r.gbps_1 / base.gbps_1, r.gbps_4 / base.gbps_4);
        let cpu = r
            .cpu_s_per_gb
            .map(|c| format!("{c:.2}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            table,
            "{:<24} {:>8.2}Gb {:>8.2}Gb {:>8.3} {:>8.2}x {:>8.2}x {:>12}",
            label, r.gbps_1, r.gbps_4, r.rtt_ms, r1, r4, cpu
        );
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.3} | {:.2}× | {:.2}× | {cpu} |",
            label, r.gbps_1, r.gbps_4, r.rtt_ms, r1, r4
        );
    }
    let two = |p: BenchPath| RowPath::TwoHosts(p);
    let backend = |b: LabBackend| two(BenchPath::Backend(b));
    let (udp, vxlan, wg) = (
        backend(LabBackend::Udp),
        backend(LabBackend::Vxlan),
        backend(LabBackend::Wireguard),
    );
    let (relay, external) = (two(BenchPath::TunRelay), two(BenchPath::Forwarder));
    let cmp = |a, b, name: &str, goal_1, goal_4, note| Comparison {
        a,
        b,
        name: name.to_string(),
        goal_1,
        goal_4,
        note,
    };
    let mut comparisons = vec![
        cmp(udp, vxlan, "udp / vxlan", Some("0.9"), Some("0.5"), None),
        cmp(
            relay,
            vxlan,
            "TUN relay / vxlan",
            None,
            None,
            Some(
                "a TUN-to-TUN relay without UDP: the single-stream ceiling of any TUN data path; one thread relays for both hosts",
            ),
        ),
        cmp(
            udp,
            relay,
            "udp / TUN relay",
            None,
            None,
            Some("what the UDP leg and twilld's checks cost"),
        ),
        cmp(
            udp,
            external,
            "udp / forwarder",
            Some("1.0"),
            None,
            Some("twilld against the external forwarder on the same kind of lab"),
        ),
        cmp(external, vxlan, "forwarder / vxlan", None, None, None),
    ];
    for b in LabBackend::ALL {
        let v4 = RowPath::TwoHosts(BenchPath::Backend(b));
        let v6 = RowPath::TwoHostsV6(BenchPath::Backend(b));
        let name = format!("{b} IPv6 / IPv4");
        comparisons.push(cmp(
            v6,
            v4,
            &name,
            Some("within 10%"),
            Some("within 10%"),
            None,
        ));
    }
    comparisons.extend([
        cmp(wg, vxlan, "wireguard / vxlan", Some("0.5"), None, None),
        cmp(
            wg,
            two(BenchPath::WireguardGo),
            "wireguard / wireguard-go",
            Some("about 2 with the newest"),
            None,
            None,
        ),
        cmp(
            wg,
            two(BenchPath::Boringtun),
            "wireguard / boringtun",
            Some("about 7"),
            None,
            None,
        ),
    ]);
    let find = |p: RowPath| rows.iter().find(|r| r.path == p);
    let lines: Vec<String> = comparisons
        .iter()
        .filter_map(|c| {
            let (a, b) = (find(c.a)?, find(c.b)?);
            let note = c.note.map(|n| format!(" ({n})")).unwrap_or_default();
            Some(format!(
                "{}: {}, {}{note}",
                c.name,
                ratio_text(a, b, 1, c.goal_1),
                ratio_text(a, b, 4, c.goal_4)
            ))
        })
        .collect();
    if !lines.is_empty() {
        let _ = writeln!(table);
        let _ = writeln!(md);
    }
    for line in &lines {
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
            r.path.label().replace('&', "&amp;").replace('<', "&lt;")
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

#[cfg(test)]
mod tests {
    use super::*;

    const SAME_HOST: RowPath = RowPath::SameHost;
    const VXLAN: RowPath = RowPath::TwoHosts(BenchPath::Backend(LabBackend::Vxlan));
    const UDP: RowPath = RowPath::TwoHosts(BenchPath::Backend(LabBackend::Udp));
    const RELAY: RowPath = RowPath::TwoHosts(BenchPath::TunRelay);

    fn row(path: RowPath, one: f64, four: f64, cpu: Option<f64>) -> Row {
        Row {
            path,
            gbps_1: one,
            gbps_4: four,
            rtt_ms: 0.1,
            cpu_s_per_gb: cpu,
            rounds: Vec::new(),
        }
    }

    #[test]
    fn report_has_ratios_udp_against_vxlan_and_a_chart() {
        let rows = [
            row(SAME_HOST, 10.0, 20.0, None),
            row(VXLAN, 6.0, 9.0, Some(0.01)),
            row(UDP, 4.5, 5.0, Some(1.5)),
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
    fn ratios_show_their_spread_round_by_round() {
        let mut vxlan = row(VXLAN, 8.0, 10.0, Some(0.01));
        vxlan.rounds = vec![(8.0, 10.0), (10.0, 12.0), (6.0, 8.0)];
        let mut udp = row(UDP, 6.0, 5.0, Some(1.5));
        // Paired by round: 0.70, 0.90, 0.80 with 1 stream; 0.50, 0.50, 0.50 with 4.
        udp.rounds = vec![(5.6, 5.0), (9.0, 6.0), (4.8, 4.0)];
        let r = report(&[row(SAME_HOST, 10.0, 20.0, None), vxlan, udp]);
        assert!(
            r.table.contains(
                "udp / vxlan: 0.75x with 1 stream (goal 0.9; rounds 0.70–0.90), \
                 0.50x with 4 streams (goal 0.5; rounds 0.50–0.50)"
            ),
            "{}",
            r.table
        );
        // A round that measured nothing (0 Gbit/s) has no ratio; one round has no spread.
        let mut vxlan = row(VXLAN, 8.0, 10.0, None);
        vxlan.rounds = vec![(8.0, 0.0), (8.0, 10.0)];
        let mut udp = row(UDP, 6.0, 5.0, None);
        udp.rounds = vec![(6.0, 5.0), (6.0, 5.0)];
        let r = report(&[row(SAME_HOST, 10.0, 20.0, None), vxlan, udp]);
        assert!(
            r.table.contains(
                "udp / vxlan: 0.75x with 1 stream (goal 0.9; rounds 0.75–0.75), \
                 0.50x with 4 streams (goal 0.5)"
            ),
            "{}",
            r.table
        );
    }

    #[test]
    fn report_puts_udp_and_vxlan_against_the_tun_relay_ceiling() {
        let rows = [
            row(SAME_HOST, 10.0, 20.0, None),
            row(VXLAN, 6.0, 9.0, Some(0.01)),
            row(UDP, 4.5, 5.0, Some(1.5)),
            row(RELAY, 6.0, 7.5, None),
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
        let alone = report(&[row(SAME_HOST, 10.0, 20.0, None), row(RELAY, 6.0, 7.5, None)]);
        assert!(!alone.table.contains(" / "), "{}", alone.table);
    }
}

//! Health and metrics: `/healthz` (readiness: 200 once the lease is held and the first
//! reconcile is done), `/livez` (liveness: 200 while the process serves, whatever etcd does)
//! and `/metrics` (OpenMetrics text). A few gauges and counters written by hand: no client
//! library needed for this little.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the agent reports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    pub peers: AtomicU64,
    pub reconcile_runs: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub reconcile_micros_last: AtomicU64,
    pub etcd_errors: AtomicU64,
    /// Whether etcd answered the last call (an error answer, such as a denied permission,
    /// still says it is reachable).
    pub etcd_reachable: AtomicBool,
    /// Failed etcd calls by operation (`acquire`, `snapshot`, `watch`, `renew`, `write`).
    pub etcd_op_errors: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    pub last_renew_unix: AtomicU64,
    /// The IPv4 subnet held (empty in an IPv6-only network).
    pub lease: Mutex<String>,
    /// The IPv6 subnet held (empty when IPv6 is off).
    pub lease6: Mutex<String>,
    /// The user-space data path's counters, when the backend has one.
    pub data_path: OnceLock<Arc<crate::engine::Stats>>,
}

impl Metrics {
    /// Counts a failed etcd call of `op` and marks etcd unreachable.
    pub fn etcd_failed(&self, op: &'static str) {
        self.etcd_refused(op);
        self.etcd_reachable.store(false, Ordering::Relaxed);
    }

    /// Counts a failed etcd call of `op` that etcd answered (a refused watch, a denied
    /// permission): etcd is reachable, so `etcd_reachable` is left as it is. Marking it 0 made
    /// the gauge flap with every retry of a lasting refusal.
    pub fn etcd_refused(&self, op: &'static str) {
        self.etcd_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut ops) = self.etcd_op_errors.lock() {
            *ops.entry(op).or_default() += 1;
        }
    }

    /// Marks etcd reachable after a call worked.
    pub fn etcd_answered(&self) {
        self.etcd_reachable.store(true, Ordering::Relaxed);
    }

    /// OpenMetrics exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let suffix = if kind == "counter" { "_total" } else { "" };
            let _ = writeln!(s, "{name}{suffix} {v}");
        };
        let lease = self.lease.lock().map(|l| l.clone()).unwrap_or_default();
        // An info family is named without `_info`, its one sample with it: a family named
        // `twilld_lease_info` clashes with its own sample (`twilld_lease_info_info` expected).
        let _ = writeln!(
            s,
            "# HELP twilld_lease The subnets this node holds (subnet: IPv4, ipv6_subnet: IPv6).\n# TYPE twilld_lease info"
        );
        let lease6 = self.lease6.lock().map(|l| l.clone()).unwrap_or_default();
        let (lease, lease6) = (label_value(&lease), label_value(&lease6));
        if lease6.is_empty() {
            let _ = writeln!(s, "twilld_lease_info{{subnet=\"{lease}\"}} 1");
        } else {
            let _ = writeln!(
                s,
                "twilld_lease_info{{subnet=\"{lease}\",ipv6_subnet=\"{lease6}\"}} 1"
            );
        }
        g(
            &mut s,
            "twilld_ready",
            "1 once the lease is held and the first reconcile ran.",
            "gauge",
            self.ready.load(Ordering::Relaxed) as u64,
        );
        g(
            &mut s,
            "twilld_peers",
            "Peers in the desired state.",
            "gauge",
            self.peers.load(Ordering::Relaxed),
        );
        g(
            &mut s,
            "twilld_reconcile_runs",
            "Reconcile passes.",
            "counter",
            self.reconcile_runs.load(Ordering::Relaxed),
        );
        g(
            &mut s,
            "twilld_reconcile_errors",
            "Reconcile passes with errors.",
            "counter",
            self.reconcile_errors.load(Ordering::Relaxed),
        );
        g(
            &mut s,
            "twilld_reconcile_last_duration_microseconds",
            "Duration of the last reconcile.",
            "gauge",
            self.reconcile_micros_last.load(Ordering::Relaxed),
        );
        g(
            &mut s,
            "twilld_etcd_errors",
            "Failed etcd operations.",
            "counter",
            self.etcd_errors.load(Ordering::Relaxed),
        );
        g(
            &mut s,
            "twilld_etcd_reachable",
            "1 while etcd answers, 0 from a failed call until one works again.",
            "gauge",
            self.etcd_reachable.load(Ordering::Relaxed) as u64,
        );
        let _ = writeln!(
            s,
            "# HELP twilld_etcd_operation_errors Failed etcd calls by operation.\n# TYPE twilld_etcd_operation_errors counter"
        );
        if let Ok(ops) = self.etcd_op_errors.lock() {
            for (op, n) in ops.iter() {
                let _ = writeln!(s, "twilld_etcd_operation_errors_total{{op=\"{op}\"}} {n}");
            }
        }
        let _ = writeln!(s, "# UNIT twilld_last_renew_timestamp_seconds seconds");
        g(
            &mut s,
            "twilld_last_renew_timestamp_seconds",
            "When the lease was last renewed.",
            "gauge",
            self.last_renew_unix.load(Ordering::Relaxed),
        );
        if let Some(stats) = self.data_path.get() {
            stats.render(&mut s);
        }
        s.push_str("# EOF\n");
        s
    }
}

/// `value` escaped for a label value in the text format (`\\`, `\"` and `\n`).
pub fn label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Reads a request head: until the blank line, EOF or 4 KiB. A client may send its request
/// in several pieces, so one read is not enough.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> String {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while buf.len() < 4096 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The path of a request line (`GET /metrics HTTP/1.1`), without its query (a Prometheus
/// scrape config's `params:`, `/healthz?verbose`): `/` when there is none.
fn request_path(head: &str) -> &str {
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    target.split_once('?').map_or(target, |(path, _)| path)
}

/// Serves `/healthz` and `/livez` and/or `/metrics` on `listener` forever.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, healthz: bool, metrics_on: bool) {
    let mut retry = crate::backoff::AcceptRetry::new();
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(conn) => {
                retry.accepted();
                conn
            }
            Err(e) => {
                tokio::time::sleep(retry.failed(&e, "/healthz and /metrics")).await;
                continue;
            }
        };
        let m = metrics.clone();
        tokio::spawn(async move { serve_one(&mut sock, &m, healthz, metrics_on).await });
    }
}

/// How long one client may take in all, reading its request and its answer: one that never
/// reads the answer must not hold a task and a descriptor forever.
const CLIENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers one request on `sock`, within [`CLIENT_DEADLINE`].
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    m: &Metrics,
    healthz: bool,
    metrics_on: bool,
) {
    let _ = tokio::time::timeout(CLIENT_DEADLINE, async {
        let head = read_head(sock).await;
        let (status, ctype, body) = match request_path(&head) {
            "/healthz" if healthz => {
                if m.ready.load(Ordering::Relaxed) {
                    ("200 OK", "text/plain", "ok\n".to_string())
                } else {
                    (
                        "503 Service Unavailable",
                        "text/plain",
                        "not ready: no lease or no reconcile yet\n".to_string(),
                    )
                }
            }
            // Liveness apart from readiness: a liveness probe on /healthz restarts twilld for as
            // long as etcd is unreachable at start, and every restart of the udp or wireguard
            // backend stops their data path. Answering at all is what proves twilld alive.
            "/livez" if healthz => ("200 OK", "text/plain", "ok\n".to_string()),
            "/metrics" if metrics_on => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                m.render(),
            ),
            _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = sock.write_all(resp.as_bytes()).await;
    })
    .await;
}

/// Checks `text` against the OpenMetrics 1.0 text format, strictly, as a parser that keeps
/// families apart by name does (Prometheus' and prometheus_client's): `# EOF` last; each
/// family's HELP, TYPE and UNIT before its samples, its lines together and the family once;
/// sample names as its type makes them (a counter's `_total`, an info's `_info`, a gauge's
/// own name); no name a family reserves used by another; a UNIT that ends the family's name;
/// escapes in HELP and label values; no label twice and no series twice; counters not
/// negative, infos 1. twilld's own rule too: every family has a HELP and a TYPE.
#[cfg(test)]
pub(crate) fn check_openmetrics(text: &str) -> Result<(), String> {
    use std::collections::HashSet;

    #[derive(Default)]
    struct Family {
        name: String,
        kind: Option<String>,
        help: bool,
        unit: bool,
        samples: usize,
        series: HashSet<String>,
    }
    fn is_name(name: &str, colons: bool) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
    }
    fn escapes_ok(text: &str) -> bool {
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\n' || (c == '\\' && !matches!(chars.next(), Some('\\' | 'n' | '"'))) {
                return false;
            }
        }
        true
    }
    /// The labels of `{…}` (without the braces) in a canonical order, or why not.
    fn labels(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (name, after) = rest
                .split_once("=\"")
                .ok_or_else(|| format!("label {rest:?} is not name=\"value\""))?;
            if !is_name(name, false) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err(format!("label {name}: unterminated value")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("label {name}: bad escape {other:?}")),
                    },
                    Some((_, '\n')) => return Err(format!("label {name}: raw newline")),
                    Some((_, c)) => value.push(c),
                }
            };
            if out.iter().any(|(n, _)| n == name) {
                return Err(format!("label {name} twice"));
            }
            out.push((name.to_string(), value));
            rest = &after[end + 1..];
            if let Some(next) = rest.strip_prefix(',') {
                if next.is_empty() {
                    return Err("a comma after the last label".into());
                }
                rest = next;
            } else if !rest.is_empty() {
                return Err(format!("{rest:?} after a label value"));
            }
        }
        out.sort();
        Ok(out)
    }
    fn number(v: &str) -> Result<f64, String> {
        let plain = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
        match v {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ if plain => v.parse().map_err(|_| format!("{v:?} is not a number")),
            _ => Err(format!("{v:?} is not a number")),
        }
    }
    /// A finished family: its TYPE and HELP there, its names reserved.
    fn finish(f: Option<Family>, reserved: &mut HashSet<String>) -> Result<(), String> {
        let Some(f) = f else { return Ok(()) };
        let kind = f
            .kind
            .as_deref()
            .ok_or_else(|| format!("family {} has no TYPE", f.name))?;
        if !f.help {
            return Err(format!("family {} has no HELP", f.name));
        }
        let suffixes: &[&str] = match kind {
            "counter" => &["", "_total", "_created"],
            "info" => &["", "_info"],
            "summary" => &["", "_count", "_sum", "_created"],
            "histogram" => &["", "_count", "_sum", "_bucket", "_created"],
            "gaugehistogram" => &["", "_gcount", "_gsum", "_bucket"],
            _ => &[""],
        };
        for suffix in suffixes {
            if !reserved.insert(format!("{}{suffix}", f.name)) {
                return Err(format!("clashing name: {}{suffix}", f.name));
            }
        }
        Ok(())
    }

    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition does not end with \"# EOF\\n\"")?;
    if !body.is_empty() && !body.ends_with('\n') {
        return Err("the line before # EOF does not end".into());
    }
    let mut reserved = HashSet::new();
    let mut families = HashSet::new();
    let mut cur: Option<Family> = None;
    for (n, line) in body.lines().enumerate() {
        let at = |why: String| format!("line {}: {line:?}: {why}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let (keyword, rest) = rest
                .split_once(' ')
                .ok_or_else(|| at("a comment that is not HELP, TYPE or UNIT".into()))?;
            let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            if !is_name(name, true) {
                return Err(at(format!("bad family name {name:?}")));
            }
            if cur.as_ref().is_none_or(|f| f.name != name) {
                finish(cur.take(), &mut reserved).map_err(at)?;
                if !families.insert(name.to_string()) {
                    return Err(at(format!(
                        "family {name} again: its lines must be together"
                    )));
                }
                cur = Some(Family {
                    name: name.to_string(),
                    ..Family::default()
                });
            }
            let f = cur.as_mut().ok_or_else(|| at("no family".into()))?;
            if f.samples > 0 {
                return Err(at(format!("{keyword} after the family's samples")));
            }
            match keyword {
                "HELP" if f.help => return Err(at("a second HELP".into())),
                "HELP" if !escapes_ok(arg) => return Err(at("bad escape in HELP".into())),
                "HELP" => f.help = true,
                "TYPE" if f.kind.is_some() => return Err(at("a second TYPE".into())),
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "info",
                        "stateset",
                        "unknown",
                        "histogram",
                        "gaugehistogram",
                        "summary",
                    ];
                    if !known.contains(&arg) {
                        return Err(at(format!("unknown type {arg:?}")));
                    }
                    f.kind = Some(arg.to_string());
                }
                "UNIT" if f.unit => return Err(at("a second UNIT".into())),
                "UNIT" if arg.is_empty() || !name.ends_with(&format!("_{arg}")) => {
                    return Err(at(format!("the name does not end with its unit {arg:?}")));
                }
                "UNIT" => f.unit = true,
                _ => return Err(at(format!("unknown comment {keyword:?}"))),
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(at("not a sample, HELP, TYPE or UNIT line".into()));
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| at("a sample without a value".into()))?;
        let (name, label_text) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .ok_or_else(|| at("labels without their }".into()))?,
            ),
            None => (series, ""),
        };
        if series.contains(' ') && !series.contains('{') {
            return Err(at(
                "more than a name and a value (no timestamps here)".into()
            ));
        }
        let f = cur
            .as_mut()
            .ok_or_else(|| at("a sample before any family".into()))?;
        let kind = f
            .kind
            .clone()
            .ok_or_else(|| at(format!("a sample of family {} before its TYPE", f.name)))?;
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "info" => &["_info"],
            "gauge" | "unknown" | "stateset" => &[""],
            other => return Err(at(format!("type {other} is not checked here"))),
        };
        if !allowed.iter().any(|s| format!("{}{s}", f.name) == name) {
            return Err(at(format!(
                "sample {name} is not one of family {} ({kind}): expected {}",
                f.name,
                allowed
                    .iter()
                    .map(|s| format!("{}{s}", f.name))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        let labels = labels(label_text).map_err(at)?;
        if !f.series.insert(format!("{name}{labels:?}")) {
            return Err(at("the same series twice".into()));
        }
        let v = number(value).map_err(at)?;
        if kind == "counter" && (v.is_nan() || v < 0.0) {
            return Err(at("a counter below 0 or NaN".into()));
        }
        if kind == "info" && v != 1.0 {
            return Err(at("an info's value is 1".into()));
        }
        f.samples += 1;
    }
    finish(cur, &mut reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openmetrics_check_refuses_what_a_strict_parser_refuses() {
        let ok = "# HELP a_b A.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n# HELP c C.\n# TYPE c info\nc_info{y=\"a\\\\b\\\"c\\nd\"} 1\n# EOF\n";
        assert_eq!(check_openmetrics(ok), Ok(()));
        for (text, why) in [
            // The bug: an info family named with its sample's suffix.
            (
                "# HELP x_info X.\n# TYPE x_info info\nx_info{a=\"1\"} 1\n# EOF\n",
                "is not one of family x_info",
            ),
            (
                "# HELP a A.\n# TYPE a counter\na 1\n# EOF\n",
                "expected a_total",
            ),
            ("# HELP a A.\n# TYPE a gauge\na 1\n", "# EOF"),
            (
                "# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\n# HELP a A.\n# EOF\n",
                "its lines must be together",
            ),
            (
                "# HELP a A.\n# TYPE a counter\na_total 1\n# HELP a_total T.\n# TYPE a_total gauge\na_total 1\n# EOF\n",
                "clashing name: a_total",
            ),
            (
                "# HELP a A.\n# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n# EOF\n",
                "twice",
            ),
            (
                "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n# EOF\n",
                "same series",
            ),
            (
                "# HELP a A.\n# TYPE a gauge\na{x=\"\\q\"} 1\n# EOF\n",
                "bad escape",
            ),
            (
                "# HELP a A.\n# TYPE a counter\na_total -1\n# EOF\n",
                "below 0",
            ),
            (
                "# HELP a_bytes A.\n# TYPE a_bytes gauge\n# UNIT a_bytes seconds\na_bytes 1\n# EOF\n",
                "unit",
            ),
            ("# TYPE a gauge\na 1\n# EOF\n", "no HELP"),
            (
                "# HELP a A.\n# TYPE a gauge\na 1\n# TYPE a gauge\n# EOF\n",
                "after the family's samples",
            ),
            (
                "# HELP a A.\n# TYPE a gauge\n\na 1\n# EOF\n",
                "not a sample",
            ),
            (
                "# HELP a A.\n# TYPE a info\na_info 2\n# EOF\n",
                "value is 1",
            ),
        ] {
            let e = check_openmetrics(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_exposition_is_valid_openmetrics_with_a_data_paths_counters() {
        // Before: `# TYPE twilld_lease_info info` with the sample `twilld_lease_info{…} 1`, which
        // prometheus_client's parser refuses (`Clashing name: twilld_lease_info`).
        let m = Metrics::default();
        assert_eq!(check_openmetrics(&m.render()), Ok(()), "{}", m.render());
        *m.lease.lock().unwrap() = "10.5.1.0/24".into();
        *m.lease6.lock().unwrap() = "fd00:5:0:1::/64".into();
        m.etcd_failed("renew");
        m.etcd_refused("watch");
        m.ready.store(true, Ordering::Relaxed);
        let stats = Arc::new(crate::engine::Stats::new("udp"));
        let mut local = crate::engine::stats::LocalCounts {
            tx_packets: 3,
            tx_bytes: 4500,
            ..Default::default()
        };
        local.count_drop(crate::engine::packet::DropReason::NoRoute, 2);
        local.flush(&stats);
        let _ = m.data_path.set(stats);
        let text = m.render();
        assert_eq!(check_openmetrics(&text), Ok(()), "{text}");
        // Dashboards keep their sample names.
        for sample in [
            "twilld_lease_info{subnet=\"10.5.1.0/24\",ipv6_subnet=\"fd00:5:0:1::/64\"} 1",
            "twilld_ready 1",
            "twilld_etcd_errors_total 2",
            "twilld_etcd_operation_errors_total{op=\"renew\"} 1",
            "twilld_reconcile_runs_total 0",
            "twilld_udp_tx_packets_total 3",
            "twilld_udp_tx_bytes_total 4500",
            "twilld_udp_dropped_packets_total{reason=\"no_route\"} 2",
            "twilld_last_renew_timestamp_seconds 0",
        ] {
            assert!(
                text.lines().any(|l| l == sample),
                "{sample} missing in:\n{text}"
            );
        }
        assert!(text.contains("# TYPE twilld_lease info\n"), "{text}");
        assert!(
            text.contains("# UNIT twilld_udp_tx_bytes bytes\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("10.5.1.0/24"), "10.5.1.0/24");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_its_answer_is_let_go() {
        // Before: the answer's write waited forever once the socket buffer was full, holding
        // a task and a descriptor per such client.
        let (mut client, mut server) = tokio::io::duplex(64);
        client
            .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let m = Metrics::default();
        let done = tokio::time::timeout(
            CLIENT_DEADLINE + std::time::Duration::from_secs(1),
            serve_one(&mut server, &m, true, true),
        )
        .await;
        assert!(done.is_ok(), "still writing to a client that does not read");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_sends_is_let_go() {
        let (_client, mut server) = tokio::io::duplex(64);
        let m = Metrics::default();
        let done = tokio::time::timeout(
            CLIENT_DEADLINE + std::time::Duration::from_secs(1),
            serve_one(&mut server, &m, true, true),
        )
        .await;
        assert!(done.is_ok());
    }

    /// The status line of the answer to `request`.
    async fn answer_to(request: &str, m: &Metrics) -> String {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(request.as_bytes()).await.unwrap();
        serve_one(&mut server, m, true, true).await;
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn a_query_string_does_not_hide_the_path() {
        // Before: `/healthz?x=1` and a scrape with `params:` were answered 404.
        let m = Metrics::default();
        m.ready.store(true, Ordering::Relaxed);
        for (request, want) in [
            ("GET /healthz?x=1 HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK"),
            (
                "GET /metrics?module=twilld&x= HTTP/1.1\r\n\r\n",
                "HTTP/1.1 200 OK",
            ),
            ("GET /metrics? HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK"),
            (
                "GET /metricsx?a=b HTTP/1.0\r\n\r\n",
                "HTTP/1.1 404 Not Found",
            ),
            ("GET /?healthz HTTP/1.0\r\n\r\n", "HTTP/1.1 404 Not Found"),
        ] {
            assert_eq!(answer_to(request, &m).await, want, "{request:?}");
        }
        assert_eq!(request_path("GET /healthz?x=1 HTTP/1.1"), "/healthz");
    }

    #[tokio::test]
    async fn livez_is_ok_without_a_lease_while_healthz_is_not() {
        // Before: /livez was 404, so a liveness probe could only use /healthz, which is 503
        // until a lease is held (an etcd outage at start crash-looped twilld).
        let m = Metrics::default();
        assert_eq!(
            answer_to("GET /livez HTTP/1.1\r\n\r\n", &m).await,
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            answer_to("GET /healthz HTTP/1.1\r\n\r\n", &m).await,
            "HTTP/1.1 503 Service Unavailable"
        );
        m.ready.store(true, Ordering::Relaxed);
        assert_eq!(
            answer_to("GET /livez?x HTTP/1.1\r\n\r\n", &m).await,
            "HTTP/1.1 200 OK"
        );
        // Only with the health endpoints on, as /healthz: a metrics-only port has neither.
        let (mut client, mut server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET /livez HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        serve_one(&mut server, &m, false, true).await;
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }

    #[tokio::test]
    async fn a_request_split_over_several_writes_is_read_whole() {
        // The bug: one read() saw only "GET " and the path came out as "/" (404).
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for part in ["GET ", "/metrics", " HTTP/1.0\r\n", "\r\n"] {
                client.write_all(part.as_bytes()).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let head = read_head(&mut server).await;
        assert_eq!(request_path(&head), "/metrics");
        drop(writer.await);
        assert_eq!(request_path(""), "/");
    }
}

//! Health and metrics: `/healthz` (200 once the lease is held and the first reconcile is done)
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
        let _ = writeln!(
            s,
            "# HELP twilld_lease_info The subnets this node holds (subnet: IPv4, ipv6_subnet: IPv6).\n# TYPE twilld_lease_info info"
        );
        let lease6 = self.lease6.lock().map(|l| l.clone()).unwrap_or_default();
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

/// The path of a request line (`GET /metrics HTTP/1.1`); `/` when there is none.
fn request_path(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("/")
}

/// Serves `/healthz` and/or `/metrics` on `listener` forever.
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

#[cfg(test)]
mod tests {
    use super::*;

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

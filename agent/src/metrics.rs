//! Health and metrics: `/healthz` (200 once the lease is held and the first reconcile is done)
//! and `/metrics` (OpenMetrics text). A few gauges and counters written by hand: no client
//! library needed for this little.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    pub last_renew_unix: AtomicU64,
    pub lease: Mutex<String>,
}

impl Metrics {
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
            "# HELP twilld_lease_info The subnet this node holds.\n# TYPE twilld_lease_info info"
        );
        let _ = writeln!(s, "twilld_lease_info{{subnet=\"{lease}\"}} 1");
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
            "twilld_last_renew_timestamp_seconds",
            "When the lease was last renewed.",
            "gauge",
            self.last_renew_unix.load(Ordering::Relaxed),
        );
        s.push_str("# EOF\n");
        s
    }
}

/// Serves `/healthz` and/or `/metrics` on `listener` forever.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    healthz: bool,
    metrics_on: bool,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
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
        });
    }
}

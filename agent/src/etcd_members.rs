//! The members of an etcd cluster as twilld uses them: one client per endpoint, requests go to
//! the member that answered last, and a request that fails because its member is unreachable
//! is retried on the next member at once. A member that failed sits out for a while (it is
//! tried again only when no other member answers, or after the pause), so one dead member of
//! three never costs a renewal. etcd's Go client does the same; the balanced channel of the
//! Rust client kept sending a third of the requests to a killed member.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::lease_store::StoreError;

/// How long a member that failed is skipped while others answer.
const SIT_OUT: Duration = Duration::from_secs(30);

/// One endpoint and its client (connected lazily when the first connect failed).
struct Member {
    endpoint: String,
    client: tokio::sync::Mutex<Option<Client>>,
    /// Skipped until then, unless no other member answers.
    failed_until: Mutex<Option<Instant>>,
}

/// The cluster's members.
pub struct Members {
    members: Vec<Member>,
    options: ConnectOptions,
    /// The member to try first: the one that answered last.
    current: AtomicUsize,
}

/// Whether an error means "this member cannot be reached" (worth trying another), as opposed
/// to an answer (a missing lease, a denied permission) that another member would repeat.
fn unreachable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        // Cancelled: a member killed mid-call resets the HTTP/2 stream ("operation was
        // canceled"); twilld never cancels a call whose answer it then reads.
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// Whether etcd itself answered with `e` (a denied permission, a missing key, a bad request):
/// it is reachable. Errors of the client's own (an invalid argument it caught, a watch it
/// could not set up) are not answers.
pub(crate) fn answered(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(_)) && !unreachable(e)
}

/// The phrase for a member that stopped answering on an open connection.
const NO_ANSWER: &str = "no answer (the connection's keepalive timed out)";

/// One short phrase for what went wrong with a call, for an operator's log line: "connection
/// refused", "connect timed out", "TLS: invalid peer certificate: UnknownIssuer",
/// "authentication failed: …". The whole chain stays available at debug level.
pub fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    use std::io::ErrorKind;
    let mut io_kind = None;
    let mut innermost = e.to_string();
    let mut tls = false;
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        let text = s.to_string();
        tls |= text.contains("certificate") || text.to_ascii_lowercase().contains("tls");
        innermost = text;
        src = s.source();
    }
    // Not every layer (tonic, hyper) exposes its cause through source(); their Debug form
    // names it, so look there too.
    let debug = format!("{e:?}");
    let says = |kind: &str| debug.contains(kind);
    let kind = io_kind.or_else(|| {
        [
            ("ConnectionRefused", ErrorKind::ConnectionRefused),
            ("ConnectionReset", ErrorKind::ConnectionReset),
            ("HostUnreachable", ErrorKind::HostUnreachable),
            ("NetworkUnreachable", ErrorKind::NetworkUnreachable),
            ("TimedOut", ErrorKind::TimedOut),
            ("Elapsed", ErrorKind::TimedOut),
        ]
        .into_iter()
        .find(|(name, _)| says(name))
        .map(|(_, k)| k)
    });
    match kind {
        Some(ErrorKind::ConnectionRefused) => return "connection refused".into(),
        Some(ErrorKind::TimedOut) if says("KeepAliveTimedOut") => {
            return NO_ANSWER.into();
        }
        Some(ErrorKind::TimedOut) => return "connect timed out".into(),
        Some(ErrorKind::ConnectionReset) => return "connection reset".into(),
        Some(ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable) => {
            return "no route to the member".into();
        }
        _ => {}
    }
    if says("KeepAliveTimedOut") {
        return NO_ANSWER.into();
    }
    let lower = debug.to_ascii_lowercase();
    if tls || lower.contains("certificate") || lower.contains("handshake") {
        if let etcd_client::Error::GRpcStatus(st) = e
            && !st.message().is_empty()
        {
            innermost = st.message().to_string();
        }
        return format!(
            "TLS: {innermost} (check --etcd-cafile, --etcd-certfile and --etcd-keyfile against the member's certificate)"
        );
    }
    match e {
        etcd_client::Error::GRpcStatus(st) => {
            let what = match st.code() {
                tonic::Code::Unauthenticated => "authentication failed",
                tonic::Code::PermissionDenied => "permission denied",
                tonic::Code::DeadlineExceeded => "request timed out",
                tonic::Code::Unavailable if st.message().contains("http2") => NO_ANSWER,
                tonic::Code::Unavailable => "unavailable",
                _ => return st.message().to_string(),
            };
            if st.message().is_empty() || what == "request timed out" {
                what.to_string()
            } else {
                format!("{what}: {}", st.message())
            }
        }
        _ => innermost,
    }
}

impl Members {
    /// Clients for every endpoint. A member that cannot be connected now is connected on
    /// first use; an error only when no endpoint is usable at all (a bad URL, TLS setup).
    pub async fn connect(endpoints: &[String], options: ConnectOptions) -> anyhow::Result<Members> {
        if endpoints.is_empty() {
            anyhow::bail!("no etcd endpoints given (--etcd-endpoints)");
        }
        let mut members = Vec::with_capacity(endpoints.len());
        let mut errors = Vec::new();
        for ep in endpoints {
            let client = match Client::connect([ep], Some(options.clone())).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!(endpoint = %ep, error = ?e, "connecting");
                    errors.push(format!("{ep}: {}", describe(&e)));
                    None
                }
            };
            members.push(Member {
                endpoint: ep.clone(),
                client: tokio::sync::Mutex::new(client),
                failed_until: Mutex::new(None),
            });
        }
        if errors.len() == endpoints.len() {
            anyhow::bail!("connecting to etcd: {}", errors.join("; "));
        }
        Ok(Members {
            members,
            options,
            current: AtomicUsize::new(0),
        })
    }

    async fn client(&self, m: &Member) -> Result<Client, etcd_client::Error> {
        let mut slot = m.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect([&m.endpoint], Some(self.options.clone())).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn sitting_out(m: &Member) -> bool {
        let until = m.failed_until.lock().map(|g| *g).unwrap_or(None);
        until.is_some_and(|t| Instant::now() < t)
    }

    fn mark(m: &Member, failed: bool) {
        if let Ok(mut g) = m.failed_until.lock() {
            *g = failed.then(|| Instant::now() + SIT_OUT);
        }
    }

    /// The members in the order to try them: the current one, the others, and those sitting
    /// out last.
    fn order(&self) -> Vec<usize> {
        let n = self.members.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let (mut ready, mut out): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .partition(|&i| !Self::sitting_out(&self.members[i]));
        ready.append(&mut out);
        ready
    }

    /// Runs `f` on a member's client, moving on to the next member while members are
    /// unreachable. The error names every member tried.
    pub async fn call<T, F, Fut>(&self, op: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut failures = Vec::new();
        for i in self.order() {
            let m = &self.members[i];
            let result = match self.client(m).await {
                Ok(c) => f(c).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => {
                    Self::mark(m, false);
                    if self.current.swap(i, Ordering::Relaxed) != i && !failures.is_empty() {
                        tracing::info!(endpoint = %m.endpoint, "{op}: using etcd member {}", m.endpoint);
                    }
                    return Ok(v);
                }
                Err(e) if unreachable(&e) => {
                    Self::mark(m, true);
                    tracing::debug!(endpoint = %m.endpoint, error = ?e, "{op}: member unreachable, trying the next");
                    failures.push(format!("{}: {}", m.endpoint, describe(&e)));
                }
                Err(e) => {
                    tracing::debug!(endpoint = %m.endpoint, error = ?e, "{op} failed");
                    let cause = format!("{}: {}", m.endpoint, describe(&e));
                    return Err(if answered(&e) {
                        StoreError::answer(op, cause)
                    } else {
                        StoreError::new(op, cause)
                    });
                }
            }
        }
        Err(StoreError::new(op, failures.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_a_dying_member_cancelled_moves_to_the_next_member() {
        // Before: a renewal against a member killed mid-call failed with "operation was
        // canceled" instead of going to the next member (seen in CI).
        let cancelled =
            etcd_client::Error::GRpcStatus(tonic::Status::cancelled("operation was canceled"));
        assert!(unreachable(&cancelled));
        let denied =
            etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("no, says etcd"));
        assert!(!unreachable(&denied));
        assert!(answered(&denied), "etcd said no: it is reachable");
        assert!(!answered(&cancelled));
        assert!(
            !answered(&etcd_client::Error::InvalidArgs("bad".into())),
            "the client's own error is no answer from etcd"
        );
    }
}

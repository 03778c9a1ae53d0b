//! WireGuard's cross-platform userspace API (wireguard.com/xplatform): a Unix socket
//! `<dir>/flannel-wg.sock` answering `get=1` with the device and its peers, as wireguard-go
//! and boringtun serve it, so `wg show flannel-wg` works against twilld. Peers come from
//! leases: `set=1` is refused. The directory is a flag, so several twilld on one machine
//! (the lab) each have their own.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::key::NodeKey;
use super::table::TableCell;

/// What `get` reports.
pub struct DeviceState {
    pub key: Option<Arc<NodeKey>>,
    pub listen_port: u16,
    pub table: Arc<TableCell>,
}

/// A UAPI server thread; dropping it removes the socket and stops the thread.
pub struct UapiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The listening socket, shut down to stop the thread.
    waker: UnixListener,
    thread: Option<JoinHandle<()>>,
}

/// Lowercase hex, as UAPI writes keys.
fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The answer to `get=1`.
pub fn render_get(state: &DeviceState) -> String {
    let mut s = String::new();
    if let Some(k) = &state.key {
        let _ = writeln!(s, "private_key={}", hex(&k.private.to_bytes()));
    }
    let _ = writeln!(s, "listen_port={}", state.listen_port);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    for p in &state.table.load().peers {
        let _ = writeln!(s, "public_key={}", hex(&p.public_key));
        if p.psk {
            // The key itself stays in twilld: `wg show` only says a PSK is set.
            let _ = writeln!(s, "preshared_key={}", hex(&[0xffu8; 32]));
        }
        // Per peer, as wireguard-go writes it: wgctrl gives a trailing one to the last peer
        // only, and every other peer then reports protocol version 0.
        s.push_str("protocol_version=1\n");
        let _ = writeln!(s, "endpoint={}", p.endpoint());
        let _ = writeln!(s, "persistent_keepalive_interval={}", p.keepalive);
        let since = p.tunn().stats().0;
        let (tx, rx) = p.transfer.get();
        let at = p.last_handshake(since, now).unwrap_or(Duration::ZERO);
        let _ = writeln!(s, "last_handshake_time_sec={}", at.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", at.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={tx}");
        let _ = writeln!(s, "rx_bytes={rx}");
        if let Some(n) = p.allowed.v4 {
            let _ = writeln!(s, "allowed_ip={n}");
        }
        if let Some(n) = p.allowed.v6 {
            let _ = writeln!(s, "allowed_ip={n}");
        }
    }
    s.push_str("errno=0\n\n");
    s
}

/// How long one client may keep the socket in all. Clients are served one at a time, so a
/// slow or stuck one (or one that never reads its answers) must neither hold the others off
/// nor twilld's shutdown for longer. `wg show` takes milliseconds.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// The longest request line read: `get=1` is 6 bytes, a `set` line with a key under 100.
const MAX_LINE: u64 = 4096;

/// A client's stream that refuses to wait past the client's deadline, however slowly the
/// bytes drip in.
struct Deadlined {
    stream: UnixStream,
    deadline: Instant,
}

impl Deadlined {
    /// The time the client has left; an error once it has none.
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("client still connected after {CLIENT_DEADLINE:?}"),
            ));
        }
        Ok(left)
    }

    /// Writes `answer`, each write waiting no longer than the time left.
    fn answer(&self, answer: &str) -> std::io::Result<()> {
        let mut rest = answer.as_bytes();
        while !rest.is_empty() {
            self.stream.set_write_timeout(Some(self.left()?))?;
            match (&self.stream).write(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `Ok(0)` at the end of the stream.
fn read_line(reader: &mut BufReader<Deadlined>, line: &mut String) -> std::io::Result<usize> {
    line.clear();
    let n = reader.by_ref().take(MAX_LINE).read_line(line)?;
    if n as u64 == MAX_LINE && !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("request line longer than {MAX_LINE} bytes"),
        ));
    }
    Ok(n)
}

fn serve_one(stream: UnixStream, state: &DeviceState) -> std::io::Result<()> {
    // No second descriptor (try_clone): answers go out through the reader's own stream.
    let mut reader = BufReader::new(Deadlined {
        stream,
        deadline: Instant::now() + CLIENT_DEADLINE,
    });
    let mut op = String::new();
    let mut line = String::new();
    loop {
        // One operation: its first line, then lines up to a blank one.
        if read_line(&mut reader, &mut op)? == 0 {
            return Ok(());
        }
        let first = op.trim_end();
        while !first.is_empty() {
            if read_line(&mut reader, &mut line)? == 0 || line.trim_end().is_empty() {
                break;
            }
        }
        let answer = match first {
            "get=1" => render_get(state),
            "" => continue,
            // EPERM: peers are what the leases say, not what an operator sets.
            _ => "errno=1\n\n".to_string(),
        };
        // Requests already buffered are not reads: the deadline is checked per answer too.
        reader.get_ref().answer(&answer)?;
    }
}

impl UapiServer {
    /// Serves `<dir>/<device>.sock` (directory 0755, socket 0600, a stale socket replaced).
    pub fn start(dir: &Path, device: &str, state: DeviceState) -> std::io::Result<UapiServer> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{device}.sock"));
        if UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another process", path.display()),
            ));
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        // Drop shuts this down to wake the accept: connecting to the path fails once the
        // file is gone (or when out of descriptors).
        let waker = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wg-uapi".into())
            .spawn(move || {
                let mut retry = crate::backoff::AcceptRetry::new();
                for stream in listener.incoming() {
                    if flag.load(Ordering::Relaxed) {
                        return;
                    }
                    match stream {
                        Ok(s) => {
                            retry.accepted();
                            if let Err(e) = serve_one(s, &state) {
                                tracing::debug!(error = %e, "wireguard UAPI client");
                            }
                        }
                        Err(_) if flag.load(Ordering::Relaxed) => return,
                        Err(e) => std::thread::sleep(retry.failed(&e, "the wireguard UAPI")),
                    }
                }
            })?;
        Ok(UapiServer {
            path,
            stop,
            waker,
            thread: Some(thread),
        })
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept (it fails with EINVAL).
        // SAFETY: shutdown(2) on a descriptor this struct owns, open until it is dropped.
        let _ = unsafe { libc::shutdown(self.waker.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = std::fs::remove_file(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One peer as `get` reports it (for `twilld status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerReport {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ip: String,
    /// Unix seconds of the last handshake; 0 = none.
    pub last_handshake: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// Parses a `get` answer into its peers (keys in base64).
pub fn parse_get(text: &str) -> Vec<PeerReport> {
    use base64::Engine as _;
    let mut peers: Vec<PeerReport> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k == "public_key" {
            let bytes: Vec<u8> = (0..v.len() / 2)
                .filter_map(|i| u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            peers.push(PeerReport {
                public_key: base64::engine::general_purpose::STANDARD.encode(bytes),
                ..PeerReport::default()
            });
            continue;
        }
        let Some(p) = peers.last_mut() else { continue };
        match k {
            "endpoint" => p.endpoint = v.to_string(),
            "allowed_ip" if p.allowed_ip.is_empty() => p.allowed_ip = v.to_string(),
            "allowed_ip" => {
                p.allowed_ip.push(',');
                p.allowed_ip.push_str(v);
            }
            "last_handshake_time_sec" => p.last_handshake = v.parse().unwrap_or(0),
            "tx_bytes" => p.tx_bytes = v.parse().unwrap_or(0),
            "rx_bytes" => p.rx_bytes = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    peers
}

/// Asks the UAPI socket `<dir>/<device>.sock` for `get` (what `wg show` does).
pub fn query(dir: &Path, device: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(dir.join(format!("{device}.sock")))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"get=1\n\n")?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer ends with a blank line after `errno=`.
    while !out.ends_with(b"\n\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::wireguard::table::TableCell;

    fn server(dir: &Path) -> UapiServer {
        let state = DeviceState {
            key: None,
            listen_port: 51820,
            table: TableCell::new(),
        };
        UapiServer::start(dir, "flannel-wg", state).unwrap()
    }

    /// `get=1` with a patient client: the answer, and how long it took.
    fn patient_get(dir: &Path) -> (String, Duration) {
        let t = Instant::now();
        let mut s = UnixStream::connect(dir.join("flannel-wg.sock")).unwrap();
        s.set_read_timeout(Some(3 * CLIENT_DEADLINE)).unwrap();
        s.write_all(b"get=1\n\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"\n\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
    }

    #[test]
    fn an_endless_line_is_cut_off_and_the_next_client_served() {
        // Before: the line was read into memory for as long as the client sent it.
        let dir = tempfile::tempdir().unwrap();
        let _srv = server(dir.path());
        let mut a = UnixStream::connect(dir.path().join("flannel-wg.sock")).unwrap();
        let _ = a.write_all(&vec![b'x'; 64 * 1024]);
        a.set_read_timeout(Some(CLIENT_DEADLINE / 2)).unwrap();
        let mut buf = [0u8; 64];
        match a.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an over-long line must end the connection at once: {other:?}"),
        }
        let (answer, _) = patient_get(dir.path());
        assert!(answer.ends_with("errno=0\n\n"), "{answer:?}");
    }

    #[test]
    fn shutdown_returns_when_the_socket_file_is_gone() {
        // Before: Drop woke the accept by connecting to the path; with the file removed
        // (someone cleaned /var/run/wireguard) the join waited forever.
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path());
        std::fs::remove_file(dir.path().join("flannel-wg.sock")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(srv);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(2 * CLIENT_DEADLINE).is_ok(),
            "shutdown hung with the socket file removed"
        );
    }

    #[test]
    fn pipelined_requests_drained_slowly_are_cut_at_the_deadline() {
        // Before: requests already buffered were answered without looking at the deadline,
        // so a client that sent thousands and read slowly held the socket for minutes.
        let dir = tempfile::tempdir().unwrap();
        let _srv = server(dir.path());
        let mut a = UnixStream::connect(dir.path().join("flannel-wg.sock")).unwrap();
        // 5,000 requests: their 230 KB of answers outgrow any socket buffer, so the server
        // must wait on this client's reading.
        let requests = "get=1\n\n".repeat(5000);
        let mut w = a.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(requests.as_bytes());
        });
        // A slow reader, 1.3 KB/s, until the server lets go.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while matches!(a.read(&mut buf), Ok(n) if n > 0) {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        // Another client is served once the first one's deadline has passed, however much
        // the first one still has to read.
        let (answer, took) = patient_get(dir.path());
        assert!(answer.ends_with("errno=0\n\n"), "{answer:?}");
        assert!(took < 2 * CLIENT_DEADLINE, "served after {took:?}");
        let _ = writer.join();
        drop(reader);
    }

    #[test]
    fn a_dripping_client_holds_neither_the_socket_nor_shutdown() {
        // Before: a client sending a byte every half second kept the one serving thread
        // (and twilld's shutdown, which joins it) forever.
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path());
        let mut a = UnixStream::connect(dir.path().join("flannel-wg.sock")).unwrap();
        let drip = std::thread::spawn(move || {
            for _ in 0..40 {
                if a.write_all(b"g").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let (answer, took) = patient_get(dir.path());
        assert!(answer.ends_with("errno=0\n\n"), "{answer:?}");
        assert!(took < 2 * CLIENT_DEADLINE, "served after {took:?}");
        let mut b = UnixStream::connect(dir.path().join("flannel-wg.sock")).unwrap();
        let _ = b.write_all(b"g");
        let t = Instant::now();
        drop(srv);
        assert!(
            t.elapsed() < 2 * CLIENT_DEADLINE,
            "shutdown took {:?}",
            t.elapsed()
        );
        drip.join().unwrap();
    }

    #[test]
    fn get_answers_parse_back_per_peer() {
        let text = "private_key=00\nlisten_port=51820\npublic_key=0102\nendpoint=1.2.3.4:51820\nlast_handshake_time_sec=17\ntx_bytes=5\nrx_bytes=6\nallowed_ip=10.5.2.0/24\nallowed_ip=fd00:5:2::/64\nprotocol_version=1\nerrno=0\n\n";
        assert_eq!(
            parse_get(text),
            [PeerReport {
                public_key: "AQI=".into(),
                endpoint: "1.2.3.4:51820".into(),
                allowed_ip: "10.5.2.0/24,fd00:5:2::/64".into(),
                last_handshake: 17,
                tx_bytes: 5,
                rx_bytes: 6,
            }]
        );
    }
}

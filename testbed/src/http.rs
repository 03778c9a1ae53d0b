//! The smallest HTTP/1.0 client that the test bed needs: etcd's `/health` and its JSON
//! gateway, twilld's `/healthz` and `/metrics`. One request per connection, the whole response
//! read until the server closes it; no TLS.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a response may take once connected.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request (`body`, if any, as JSON) and returns the raw response: status line,
/// headers and body. Run it inside [`twill_netkit::Netns::enter`] to reach a namespace's
/// addresses.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    connect_timeout: Duration,
) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, connect_timeout)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes())?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response)
}

/// A GET of `path`; the response, or an empty string when the connection failed.
pub fn get(addr: SocketAddr, path: &str) -> String {
    request(addr, "GET", path, None, Duration::from_secs(1)).unwrap_or_default()
}

/// Whether a response's status line says 200.
pub fn is_ok(response: &str) -> bool {
    response
        .lines()
        .next()
        .is_some_and(|status| status.starts_with("HTTP/1.") && status.contains(" 200 "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn posts_json_and_reads_the_whole_response() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\n{}").unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let resp = request(
            addr,
            "POST",
            "/v3/kv/put",
            Some("{}"),
            Duration::from_secs(1),
        )
        .unwrap();
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /v3/kv/put HTTP/1.0\r\n"), "{req}");
        assert!(req.ends_with("Content-Length: 2\r\n\r\n{}"), "{req}");
        assert!(is_ok(&resp), "{resp}");
        assert!(!is_ok("HTTP/1.0 404 Not Found\r\n\r\n 200 "));
    }
}

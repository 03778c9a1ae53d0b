//! twilld's servers when the process is out of file descriptors. The `/healthz`+`/metrics`
//! accept loop failed at once for as long as that lasted and retried at once: it spun a CPU
//! (the data path's). The wireguard UAPI server's accept had reserved its descriptor before it
//! waited, but then needed a second one (a dup) per client and dropped the client without one.
//! Its own test binary, because it lowers the whole process's file limit. Needs no root.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_agent::backend::wireguard::table::TableCell;
use twill_agent::backend::wireguard::uapi::{DeviceState, UapiServer};
use twill_agent::metrics::{Metrics, serve};

/// CPU time this process has used.
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn nofile() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r
}

fn set_nofile(r: libc::rlimit) {
    // SAFETY: plain system call on a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
}

/// The highest file descriptor open now, plus one.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1
}

#[test]
fn accept_loops_do_not_spin_when_out_of_file_descriptors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let http = listener.local_addr().unwrap();
    rt.spawn(serve(listener, Arc::new(Metrics::default()), true, true));
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState {
        key: None,
        listen_port: 51820,
        table: TableCell::new(),
    };
    let uapi = UapiServer::start(dir.path(), "flannel-wg", state).unwrap();
    let sock = dir.path().join("flannel-wg.sock");

    // No descriptor left for anyone but the two clients: below the new limit every free
    // number is taken, then two are given back for the clients.
    let saved = nofile();
    set_nofile(libc::rlimit {
        rlim_cur: open_fds() + 2,
        rlim_max: saved.rlim_max,
    });
    let mut fill = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fill.push(f);
    }
    assert!(fill.len() >= 2, "no room for the clients");
    fill.truncate(fill.len() - 2);
    // The UAPI client first: once the web client's connection is queued, the /metrics
    // server's accept may take the last free number before a later connect could (a
    // flake seen in CI); the UAPI server accepts into a number it reserved.
    let mut wg = UnixStream::connect(&sock).unwrap();
    let mut web = std::net::TcpStream::connect(http).unwrap();

    // The /metrics server now fails every accept with EMFILE (the spin this measures). The
    // UAPI server's accept was already waiting, and had reserved its descriptor before: it
    // takes `wg` at once and needs no second descriptor to serve it.
    std::thread::sleep(Duration::from_millis(200));
    let (cpu, wall) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time() - cpu;
    let elapsed = wall.elapsed();
    set_nofile(saved);
    drop(fill);
    assert!(
        used < elapsed / 4,
        "the accept loops used {used:?} of CPU in {elapsed:?} while out of descriptors"
    );

    // With descriptors back, both serve the clients that waited.
    web.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    web.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    web.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wg.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    wg.write_all(b"get=1\n\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\n\n") {
        let n = wg.read(&mut buf).unwrap();
        assert!(n > 0, "UAPI closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).ends_with("errno=0\n\n"));
    drop(wg);
    drop(uapi);
}

//! One flow's WireGuard crypto on one thread against the worker plus its helper
//! (`--wireguard-crypto-threads 1` vs `2`), in one run, with nothing else competing for the
//! cores: what the helper gives where the machine has cores to spare (the lab cannot show it:
//! there both hosts, both iperf3 and softirq share the same CPUs). Batches as the engine makes
//! them: the 46 segments of one 64 KiB super-packet, sealed in place by boringtun's sessions
//! (twill's patch), split by `spread::for_each_span` as the data path splits them.
//!
//! `cargo bench -p twill-agent --bench crypto_spread [-- --seconds 3]`

use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use twill_agent::backend::wireguard::spread::for_each_span;
use twill_tests::bench_arg as arg;

const SEGMENTS: usize = 46;
const INNER: usize = 1420;
const MSG: usize = 16 + INNER + 16;

/// Two ends with a session, the handshake done in memory.
fn session_pair() -> (Tunn, Tunn) {
    let (sa, sb) = (StaticSecret::from([1; 32]), StaticSecret::from([2; 32]));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let mut a = Tunn::new(sa, pb, None, None, 1 << 8, None);
    let mut b = Tunn::new(sb, pa, None, None, 2 << 8, None);
    let (mut x, mut y) = (vec![0u8; 2048], vec![0u8; 2048]);
    let init = match a.format_handshake_initiation(&mut x, false) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        _ => panic!("no handshake initiation"),
    };
    let resp = match b.decapsulate(None, &init, &mut y) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        _ => panic!("no handshake response"),
    };
    let keepalive = match a.decapsulate(None, &resp, &mut x) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        _ => panic!("no keepalive"),
    };
    assert!(matches!(
        b.decapsulate(None, &keepalive, &mut y),
        TunnResult::Done
    ));
    (a, b)
}

fn spans(msgs: &mut [(usize, Result<usize, ()>)]) {
    for (i, m) in msgs.iter_mut().enumerate() {
        *m = (i * MSG, Err(()));
    }
}

/// Seals and opens batches for `secs`; returns plaintext GB/s of sealing and of opening.
fn run(a: &Tunn, b: &Tunn, secs: f64) -> (f64, f64) {
    let mut arena = vec![7u8; SEGMENTS * MSG];
    let mut jobs = vec![(0usize, Err(())); SEGMENTS];
    let (mut seal_t, mut open_t, mut batches) = (Duration::ZERO, Duration::ZERO, 0u64);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        spans(&mut jobs);
        let t = Instant::now();
        let sealer = a.data_sealer(SEGMENTS, None).expect("a session");
        for_each_span(
            &mut arena,
            &mut jobs,
            &|j: &(usize, Result<usize, ()>)| j.0..j.0 + MSG,
            &|i, j, msg| j.1 = sealer.seal(i, msg, INNER).ok_or(()),
        );
        seal_t += t.elapsed();
        assert!(jobs.iter().all(|j| j.1 == Ok(MSG)));
        let t = Instant::now();
        let opener = b.data_opener(None);
        for_each_span(
            &mut arena,
            &mut jobs,
            &|j: &(usize, Result<usize, ()>)| j.0..j.0 + MSG,
            &|_, j, msg| j.1 = opener.open(msg).map(|(_, p)| p.len()).map_err(|_| ()),
        );
        open_t += t.elapsed();
        assert!(jobs.iter().all(|j| j.1 == Ok(INNER)), "every message opens");
        batches += 1;
    }
    let bytes = (batches as usize * SEGMENTS * INNER) as f64;
    (
        bytes / seal_t.as_secs_f64() / 1e9,
        bytes / open_t.as_secs_f64() / 1e9,
    )
}

fn main() {
    let secs: f64 = arg("--seconds", "3").parse().unwrap_or(3.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (a, b) = session_pair();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a pool of two threads");
    // Alternate, so that a slow moment of the machine hits both.
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        one.push(run(&a, &b, secs / 3.0));
        two.push(pool.install(|| run(&a, &b, secs / 3.0)));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let (s1, o1) = (
        median(&mut one.iter().map(|r| r.0).collect()),
        median(&mut one.iter().map(|r| r.1).collect()),
    );
    let (s2, o2) = (
        median(&mut two.iter().map(|r| r.0).collect()),
        median(&mut two.iter().map(|r| r.1).collect()),
    );
    println!(
        "one flow's WireGuard crypto, {SEGMENTS} x {INNER}-byte messages per batch, {cpus} CPUs"
    );
    println!("  crypto threads 1: seal {s1:.2} GB/s, open {o1:.2} GB/s");
    println!("  crypto threads 2: seal {s2:.2} GB/s, open {o2:.2} GB/s");
    println!(
        "  worker + helper / worker alone: seal {:.2}x, open {:.2}x",
        s2 / s1,
        o2 / o1
    );
}

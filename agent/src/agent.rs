//! The agent's main loop: connect, wait for the network config, lease a subnet, write the
//! subnet file, then keep the kernel matching the peer set from the etcd watch — on every
//! change and on a timer (level-triggered) — while renewing the lease. etcd trouble never
//! touches the data plane: routes stay, the agent retries and reconciles when etcd is back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::Ipv4Net;
use twill_netkit::Netlink;
use twill_netkit::subnet_env::SubnetEnv;

use crate::backend::{self, AnyBackend, Backend, Peers};
use crate::cli::Cli;
use crate::lease::LeaseRecord;
use crate::lease_mgr::{self, AcquireError, Held};
use crate::masq;
use crate::metrics::{self, Metrics};
use crate::netconf::NetworkConfig;
use crate::store::{EtcdOptions, EtcdStore, LeaseEntry, LeaseEvent};
use crate::underlay;

/// etcd options from the flags.
pub fn etcd_options(cli: &Cli) -> EtcdOptions {
    EtcdOptions {
        endpoints: cli.etcd_endpoints.clone(),
        prefix: cli.etcd_prefix.clone(),
        ca_file: cli.etcd_cafile.clone(),
        cert_file: cli.etcd_certfile.clone(),
        key_file: cli.etcd_keyfile.clone(),
        username: cli.etcd_username.clone(),
        password: cli.etcd_password.clone(),
    }
}

struct Backoff(Duration);
impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(500))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
    }
}

async fn connect(opts: &EtcdOptions) -> EtcdStore {
    let mut b = Backoff::new();
    loop {
        match EtcdStore::connect(opts).await {
            Ok(s) => return s,
            Err(e) => tracing::warn!(error = %e, "cannot reach etcd yet; retrying"),
        }
        b.wait().await;
    }
}

async fn wait_for_config(store: &EtcdStore, prefix: &str) -> NetworkConfig {
    let mut said = String::new();
    loop {
        let msg = match store.get_config().await {
            Ok(Some(text)) => match NetworkConfig::parse(&text) {
                Ok(c) => return c,
                Err(e) => format!(
                    "invalid network config at {prefix}/config: {e}; waiting for it to be fixed"
                ),
            },
            Ok(None) => format!("waiting for the network config at {prefix}/config"),
            Err(e) => format!("reading the network config: {e}"),
        };
        if msg != said {
            tracing::warn!("{msg}");
            said = msg;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn peers_from(entries: Vec<LeaseEntry>) -> Peers {
    let mut peers = Peers::new();
    for e in entries {
        match e.record {
            Ok(r) => {
                peers.insert(e.subnet, r);
            }
            Err(why) => {
                tracing::warn!(key = %e.key, reason = %why, "skipping a corrupt or foreign lease value")
            }
        }
    }
    peers
}

/// Runs the agent until SIGTERM/SIGINT. The data plane is left in place on exit.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let nl = Netlink::connect("(host)").context("opening netlink")?;
    let metrics = Arc::new(Metrics::default());
    start_http(&cli, metrics.clone()).await?;
    let opts = etcd_options(&cli);
    let store = connect(&opts).await;
    let config = wait_for_config(&store, &cli.etcd_prefix).await;
    if config.backend_defaulted {
        tracing::warn!(
            "the network config has no Backend: using udp like Flannel does; set \"Backend\": {{\"Type\": \"vxlan\"}} explicitly"
        );
    }
    let underlay = underlay::find(&nl, &cli.iface, cli.public_ip).await?;
    let udp = backend::UdpOptions {
        device: cli.udp_device.clone(),
        workers: cli.udp_workers as usize,
        busy_poll: Duration::from_micros(cli.udp_busy_poll_us),
        offloads: cli.udp_offloads,
    };
    let mut backend = backend::create(&config, underlay, udp);
    if let AnyBackend::Udp(u) = &backend {
        let _ = metrics.udp.set(u.stats());
    }
    backend
        .init(&nl)
        .await
        .with_context(|| format!("preparing the {} backend", config.backend.kind.as_str()))?;
    let record = backend.record();
    let ttl = cli.subnet_lease_ttl as i64;

    let hint = SubnetEnv::read(&cli.subnet_file).ok().map(|s| s.subnet);
    let mut held = acquire_until_done(&store, &config, &record, hint, ttl, &metrics).await;
    on_new_subnet(&cli, &nl, &mut backend, &config, held, &metrics).await?;

    let renew_every = renew_interval(ttl, cli.subnet_lease_renew_margin as i64 * 60);
    let mut renew = tokio::time::interval(renew_every);
    renew.tick().await;
    let mut reconcile = tokio::time::interval(Duration::from_secs(cli.reconcile_interval));
    reconcile.tick().await;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let mut peers = Peers::new();
    let mut watch: Option<etcd_client::WatchStream> = None;
    let mut resync_at = Instant::now();
    let mut resync_backoff = Backoff::new();
    let mut first = true;
    loop {
        // (Re)list and (re)watch when the watch is gone.
        if watch.is_none() && Instant::now() >= resync_at {
            match store.list_leases().await {
                Ok((entries, rev)) => {
                    peers = peers_from(entries);
                    match store.watch(rev + 1).await {
                        Ok(w) => {
                            watch = Some(w);
                            resync_backoff = Backoff::new();
                        }
                        Err(e) => {
                            metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "watching leases failed; retrying");
                        }
                    }
                    if !peers.contains_key(&held.subnet) {
                        tracing::warn!(subnet = %held.subnet, "our lease is gone from etcd: re-acquiring");
                        held = reacquire(
                            &cli,
                            &store,
                            &config,
                            &record,
                            held,
                            ttl,
                            &nl,
                            &mut backend,
                            &metrics,
                        )
                        .await?;
                        continue;
                    }
                    apply(&nl, &mut backend, &peers, &metrics).await;
                    if first {
                        first = false;
                        metrics.ready.store(true, Ordering::Relaxed);
                        sd_notify("READY=1");
                        tracing::info!(subnet = %held.subnet, peers = peers.len().saturating_sub(1), "ready");
                    }
                }
                Err(e) => {
                    metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "listing leases failed; the data plane stays as it is");
                    let wait = resync_backoff.0;
                    resync_backoff.0 = (resync_backoff.0 * 2).min(Duration::from_secs(10));
                    resync_at = Instant::now() + wait;
                }
            }
        }
        let next_resync = tokio::time::Instant::from_std(
            resync_at.max(Instant::now() + Duration::from_millis(10)),
        );
        tokio::select! {
            msg = async {
                match watch.as_mut() {
                    Some(w) => w.message().await,
                    None => std::future::pending().await,
                }
            } => {
                match msg {
                    Ok(Some(resp)) => match store.events(&resp) {
                        Ok((events, _)) if !events.is_empty() => {
                            let mut lost = false;
                            for ev in events {
                                match ev {
                                    LeaseEvent::Put(e) => match e.record {
                                        Ok(r) => { peers.insert(e.subnet, r); }
                                        Err(why) => {
                                            tracing::warn!(key = %e.key, reason = %why, "skipping a corrupt or foreign lease value");
                                            peers.remove(&e.subnet);
                                        }
                                    },
                                    LeaseEvent::Delete(s) => {
                                        peers.remove(&s);
                                        if s == held.subnet {
                                            lost = true;
                                        }
                                    }
                                }
                            }
                            if lost {
                                tracing::warn!(subnet = %held.subnet, "our lease was deleted: re-acquiring (data plane untouched)");
                                held = reacquire(&cli, &store, &config, &record, held, ttl, &nl, &mut backend, &metrics).await?;
                                watch = None;
                                continue;
                            }
                            apply(&nl, &mut backend, &peers, &metrics).await;
                        }
                        Ok(_) => {}
                        Err(compacted) => {
                            tracing::warn!(compact_revision = compacted, "watch cancelled (compaction): re-listing");
                            watch = None;
                        }
                    },
                    Ok(None) | Err(_) => {
                        metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("lost the etcd watch: re-listing and re-watching");
                        watch = None;
                        resync_at = Instant::now() + resync_backoff.0;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_resync), if watch.is_none() => {}
            _ = reconcile.tick() => {
                apply(&nl, &mut backend, &peers, &metrics).await;
                if let Err(e) = masq::apply(cli.firewall_backend, config.network, held.subnet, cli.ip_masq) {
                    tracing::warn!(error = %e, "re-applying firewall rules");
                }
            }
            _ = renew.tick(), if held.lease_id != 0 => {
                match store.keep_alive(held.lease_id).await {
                    Ok(t) if t > 0 => {
                        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                        metrics.last_renew_unix.store(now, Ordering::Relaxed);
                        tracing::debug!(subnet = %held.subnet, ttl = t, "renewed lease");
                    }
                    Ok(_) => {
                        tracing::warn!(subnet = %held.subnet, "our lease expired: re-acquiring (data plane untouched)");
                        held = reacquire(&cli, &store, &config, &record, held, ttl, &nl, &mut backend, &metrics).await?;
                        watch = None;
                    }
                    Err(e) => {
                        metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "renewing the lease failed; will retry");
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: exiting, data plane left in place"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: exiting, data plane left in place"); break; }
        }
    }
    sd_notify("STOPPING=1");
    Ok(())
}

/// Renew `margin` seconds before expiry; with a TTL shorter than the margin, three times per
/// TTL so one lost keepalive does not lose the lease.
pub fn renew_interval(ttl: i64, margin: i64) -> Duration {
    let secs = if ttl > margin * 2 {
        ttl - margin
    } else {
        (ttl / 3).max(1)
    };
    Duration::from_secs(secs as u64)
}

async fn acquire_until_done(
    store: &EtcdStore,
    config: &NetworkConfig,
    record: &LeaseRecord,
    hint: Option<Ipv4Net>,
    ttl: i64,
    metrics: &Metrics,
) -> Held {
    let mut b = Backoff::new();
    loop {
        match lease_mgr::acquire(store, config, record, hint, ttl).await {
            Ok(h) => return h,
            Err(e) => {
                if matches!(e, AcquireError::Etcd(_)) {
                    metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!(error = %e, "cannot lease a subnet; retrying");
            }
        }
        b.0 = b.0.min(Duration::from_secs(5));
        b.wait().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn reacquire(
    cli: &Cli,
    store: &EtcdStore,
    config: &NetworkConfig,
    record: &LeaseRecord,
    old: Held,
    ttl: i64,
    nl: &Netlink,
    backend: &mut AnyBackend,
    metrics: &Metrics,
) -> anyhow::Result<Held> {
    let held = acquire_until_done(store, config, record, Some(old.subnet), ttl, metrics).await;
    if held.subnet != old.subnet {
        tracing::warn!(old = %old.subnet, new = %held.subnet, "the old subnet was taken: containers on this node must be restarted");
    }
    on_new_subnet(cli, nl, backend, config, held, metrics).await?;
    Ok(held)
}

async fn on_new_subnet(
    cli: &Cli,
    nl: &Netlink,
    backend: &mut AnyBackend,
    config: &NetworkConfig,
    held: Held,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let env = SubnetEnv {
        network: config.network,
        subnet: held.subnet,
        mtu: backend.mtu(),
        ipmasq: cli.ip_masq,
    };
    env.write(&cli.subnet_file)
        .with_context(|| format!("writing {}", cli.subnet_file.display()))?;
    backend
        .set_local_subnet(nl, held.subnet)
        .await
        .context("configuring the local subnet")?;
    if let Err(e) = masq::apply(
        cli.firewall_backend,
        config.network,
        held.subnet,
        cli.ip_masq,
    ) {
        tracing::warn!(error = %e, "installing firewall rules (is nftables or iptables installed?)");
    }
    if let Ok(mut l) = metrics.lease.lock() {
        *l = held.subnet.to_string();
    }
    Ok(())
}

async fn apply(nl: &Netlink, backend: &mut AnyBackend, peers: &Peers, metrics: &Metrics) {
    let start = Instant::now();
    let errors = backend.apply(nl, peers).await;
    metrics.reconcile_runs.fetch_add(1, Ordering::Relaxed);
    metrics
        .reconcile_micros_last
        .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    metrics
        .peers
        .store(peers.len().saturating_sub(1) as u64, Ordering::Relaxed);
    if !errors.is_empty() {
        metrics.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        for e in errors.0 {
            tracing::warn!(error = %e, "reconcile");
        }
    }
}

async fn start_http(cli: &Cli, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let mut ports: Vec<(u16, bool, bool)> = Vec::new();
    if cli.healthz_port != 0 {
        ports.push((
            cli.healthz_port,
            true,
            cli.metrics_port == 0 || cli.metrics_port == cli.healthz_port,
        ));
    }
    if cli.metrics_port != 0 && cli.metrics_port != cli.healthz_port {
        ports.push((cli.metrics_port, false, true));
    }
    for (port, healthz, m) in ports {
        let addr = (cli.healthz_ip, port);
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "listening on {}:{port} for /healthz and /metrics",
                cli.healthz_ip
            )
        })?;
        tokio::spawn(metrics::serve(l, metrics.clone(), healthz, m));
    }
    Ok(())
}

/// Tells systemd about our state when run as a Type=notify unit (no-op otherwise).
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let p = path.to_string_lossy();
    let sent = if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &*p)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify");
    }
}

//! `podnetd`, the node agent: start-up order and the main loop.
//!
//! Start-up: flags → etcd → network config (waits until it exists) → external interface →
//! backend prepared (its identity goes into the lease) → lease acquired → own devices set up →
//! watch started → first complete peer list programmed → `subnet.env` written → ready.
//!
//! Then, until SIGTERM/SIGINT: peer events go to the data plane one by one; a timer re-runs the
//! full pass; the lease is renewed before it expires. An etcd outage is waited out without
//! touching the data path. A lost lease is taken back if the subnet is still free, otherwise the
//! process exits non-zero. Shutdown leaves routes, devices and the lease in place, so a restart
//! does not drop a packet.

pub mod dataplane;
pub mod firewall;
pub mod flags;
pub mod http;
pub mod iface;
pub mod memory;
pub mod metrics;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{self, BackendError};
use crate::config::{ConfigError, NetworkConfig};
use crate::firewall::foreign::Probe;
use crate::firewall::{FirewallSpec, Guard};
use crate::kernel::KernelError;
use crate::kernel::netlink::Netlink;
use crate::lease::etcd::{EtcdOptions, EtcdStore, LeaseError, Renewal, WatchUpdate};
use crate::lease::{AcquireRequest, Lease, LeaseAttrs, LeaseEvent, PeerSet, SubnetKey};
use crate::subnet_env::{self, SubnetEnv};
use dataplane::Dataplane;
use flags::Flags;
use http::Shared;
use metrics::label;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Flags(String),
    #[error("network config at {key}: {source}")]
    Config { key: String, source: ConfigError },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("external interface: {0}")]
    Iface(String),
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    #[error("write {path}: {msg}")]
    SubnetFile { path: String, msg: String },
    #[error("firewall: {0}")]
    Firewall(KernelError),
}

/// Runs podnetd; returns the process exit code.
pub fn main() -> i32 {
    memory::limit_arenas();
    let flags = Flags::from_env();
    crate::logging::init(flags.verbosity);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "podnetd starting");
    if let Err(e) = flags.validate() {
        tracing::error!("{e}");
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("start async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(flags)) {
        Ok(()) => {
            tracing::info!("stopped; routes, devices and the lease stay in place");
            0
        }
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

fn etcd_options(f: &Flags) -> EtcdOptions {
    EtcdOptions {
        endpoints: f.etcd_endpoints.clone(),
        prefix: f.etcd_prefix.clone(),
        ca_file: f.etcd_cafile.clone(),
        cert_file: f.etcd_certfile.clone(),
        key_file: f.etcd_keyfile.clone(),
        username: f.etcd_username.clone(),
        password: f.etcd_password.clone(),
    }
}

/// Waits for a signal that asks us to stop.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Retries `f` until it succeeds, logging failures without flooding the log.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut delay = Duration::from_millis(200);
    let mut last_log: Option<Instant> = None;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::error!("{what}: {e} (retrying)");
                    last_log = Some(Instant::now());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run(flags: Flags) -> Result<(), DaemonError> {
    let shared = Shared::new(&flags.subnet_file);
    let tcp = (flags.healthz_port != 0)
        .then(|| std::net::SocketAddr::new(flags.healthz_ip, flags.healthz_port));
    http::serve(shared.clone(), tcp, &flags.status_socket)
        .await
        .map_err(DaemonError::Flags)?;
    tokio::select! {
        r = run_until_error(flags, shared) => r,
        _ = shutdown_signal() => Ok(()),
    }
}

async fn run_until_error(flags: Flags, shared: std::sync::Arc<Shared>) -> Result<(), DaemonError> {
    let metrics = shared.metrics.clone();
    shared.phase("connecting to etcd");
    let opts = etcd_options(&flags);
    // A wrong flag combination will not fix itself: fail at once.
    if let Err(LeaseError::Config(msg)) = EtcdStore::connect(&EtcdOptions {
        endpoints: vec![],
        ..opts.clone()
    })
    .await
        && !msg.starts_with("--etcd-endpoints: no endpoint")
    {
        return Err(DaemonError::Flags(msg));
    }
    let store = retry("connect to etcd", || async {
        match EtcdStore::connect(&opts).await {
            Ok(s) => Ok(s),
            Err(LeaseError::Config(m)) => Err(m),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    tracing::info!(endpoints = store.endpoints(), "connected to etcd");
    shared.phase("waiting for the network config in etcd");

    let config_key = store.config_key();
    let cfg_text = retry("read the network config", || async {
        match store.get_config().await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(format!(
                "{config_key} does not exist yet; create it with `podnetctl config set`"
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let cfg = NetworkConfig::parse(&cfg_text).map_err(|source| DaemonError::Config {
        key: config_key.clone(),
        source,
    })?;
    tracing::info!(config = %cfg.to_json(), "network config");

    let sel = iface::Selection {
        ifaces: flags.iface.clone(),
        regexes: flags.iface_regex.clone(),
        can_reach: flags.iface_can_reach,
        public_ip: flags.public_ip,
        public_ipv6: flags.public_ipv6,
        need_v4: cfg.enable_ipv4,
        need_v6: cfg.enable_ipv6,
    };
    let ext = {
        let mut nl = Netlink::open().map_err(|e| DaemonError::Iface(e.to_string()))?;
        iface::select(&mut nl, &sel).map_err(DaemonError::Iface)?
    };
    tracing::info!(
        iface = %ext.name,
        public_ip = ?ext.ext_addr,
        public_ipv6 = ?ext.ext_addr6,
        mtu = ext.mtu,
        "external interface"
    );

    {
        let mut st = shared.state.lock().expect("state lock");
        st.iface = Some(ext.name.clone());
        st.public_ip = ext.ext_addr.map(|a| a.to_string());
        st.backend = Some(cfg.backend.type_name().to_string());
    }
    shared.phase("preparing the backend");
    // This node's lease as etcd has it (same public IP), so the backend keeps its identity.
    let previous_lease = store.list().await.ok().and_then(|(leases, _)| {
        leases
            .into_iter()
            .find(|l| Some(l.attrs.public_ip) == ext.ext_addr && l.key.fits(&cfg))
    });
    let dp = Dataplane::start(
        backend::new(&cfg, &ext, previous_lease.as_ref(), metrics.udp.clone())?,
        metrics.clone(),
    )?;
    *shared.dataplane.lock().expect("dataplane lock") = Some(dp.clone());
    let reg = dp.prepare().await?;
    shared.state.lock().expect("state lock").mtu = Some(reg.mtu);

    let previous = match SubnetEnv::read(&flags.subnet_file) {
        Ok(Some(env)) => {
            let (v4, v6) = env.subnets();
            (v4.is_some() || v6.is_some()).then_some(SubnetKey { v4, v6 })
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("ignoring the previous subnet file: {e}");
            None
        }
    };
    let attrs = LeaseAttrs {
        public_ip: if cfg.enable_ipv4 {
            ext.ext_addr.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            std::net::Ipv4Addr::UNSPECIFIED
        },
        public_ipv6: if cfg.enable_ipv6 { ext.ext_addr6 } else { None },
        backend_type: reg.backend_type.to_string(),
        backend_data: reg.backend_data.as_ref().map(|d| {
            serde_json::value::RawValue::from_string(d.clone()).expect("backend data is JSON")
        }),
        backend_v6_data: None,
    };
    let req = AcquireRequest {
        attrs,
        previous,
        ttl: flags.subnet_lease_ttl,
    };
    shared.phase("acquiring a lease");
    let mut own = retry_acquire(&store, &cfg, &req).await?;
    shared.state.lock().expect("state lock").lease = Some(own.clone());
    tracing::info!(
        subnet = %own.key,
        reservation = own.is_reservation(),
        "this node's lease"
    );
    dp.set_own(own.clone()).await?;

    // Follow the other leases; the first update is always a complete list.
    shared.phase("programming peers");
    let (wtx, mut wrx) = mpsc::channel::<WatchUpdate>(1024);
    tokio::spawn(store.clone().watch(wtx));
    let mut peers = PeerSet::new(own.key);
    loop {
        match wrx.recv().await {
            Some(WatchUpdate::Snapshot(list)) => {
                peers.reset(list);
                break;
            }
            Some(WatchUpdate::Disconnected(e)) => tracing::warn!("lease watch: {e}"),
            Some(_) => {}
            None => return Err(DaemonError::Flags("lease watch ended".into())),
        }
    }
    let fw_spec = FirewallSpec {
        network: cfg
            .v4
            .as_ref()
            .map(|f| f.network)
            .expect("backends require IPv4"),
        pod_subnet: own.key.v4.expect("backends require IPv4"),
        masquerade: flags.ip_masq,
        fully_random: !flags.ip_masq_fully_random_disable,
        forward: flags.iptables_forward_rules,
        guard: if flags.tunnel_guard {
            reg.tunnel_port.map(|port| Guard { port })
        } else {
            None
        },
    };
    let probes = probes(&fw_spec, &ext.name, reg.tunnel_device.as_deref());
    let mut peer_ips: std::collections::HashMap<SubnetKey, std::net::Ipv4Addr> =
        peers.peers().map(|l| (l.key, l.attrs.public_ip)).collect();
    // The firewall and the peer routes are independent kernel state: program both at once.
    let fw_start = {
        let peer_list: Vec<std::net::Ipv4Addr> = peer_ips.values().copied().collect();
        let resync = Duration::from_secs(flags.iptables_resync);
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || {
            firewall::Firewall::start(fw_spec, probes, &peer_list, resync, metrics)
        })
    };
    let report = dp.full(peers.peers().cloned().collect()).await?;
    tracing::info!(
        peers = peers.len(),
        changes = report.applied,
        took_ms = report.duration.as_millis() as u64,
        "peers programmed"
    );

    let fw = fw_start
        .await
        .map_err(|e| DaemonError::Flags(format!("firewall start-up task: {e}")))?
        .map_err(DaemonError::Firewall)?;
    *shared.firewall.lock().expect("firewall lock") = Some(fw.clone());

    let env = SubnetEnv::for_lease(
        cfg.v4.as_ref().map(|f| f.network),
        own.key.v4,
        cfg.v6.as_ref().map(|f| f.network),
        own.key.v6,
        reg.mtu,
        flags.ip_masq,
    );
    subnet_env::write_atomic(&flags.subnet_file, &env.render()).map_err(|e| {
        DaemonError::SubnetFile {
            path: flags.subnet_file.display().to_string(),
            msg: e.to_string(),
        }
    })?;
    let margin = flags.subnet_lease_renew_margin;
    let mut next_renew = renew_deadline(&store, &own, flags.subnet_lease_ttl, margin).await;
    let set_expiry = |next: Option<Instant>| {
        shared.state.lock().expect("state lock").lease_expiry = next.map(|t| {
            std::time::SystemTime::now() + t.saturating_duration_since(Instant::now()) + margin
        });
    };
    set_expiry(next_renew);
    tracing::info!(path = %flags.subnet_file.display(), "ready: subnet file written");
    shared.set_ready();
    http::notify_ready();
    let mut renew_backoff = Duration::from_secs(1);
    let mut resync = tokio::time::interval(flags.resync_period);
    resync.tick().await;
    let mut disconnected_logged = false;
    loop {
        tokio::select! {
            update = wrx.recv() => {
                let Some(update) = update else {
                    return Err(DaemonError::Flags("lease watch ended".into()));
                };
                if !matches!(update, WatchUpdate::Disconnected(_)) && disconnected_logged {
                    tracing::info!("lease watch reconnected");
                    disconnected_logged = false;
                }
                let events = match update {
                    WatchUpdate::Snapshot(list) => {
                        if !list.iter().any(|l| l.key == own.key) {
                            own = reclaim(&store, &own, flags.subnet_lease_ttl, "not in the lease list").await?;
                        }
                        peers.reset(list)
                    }
                    WatchUpdate::Put(l) if l.key == own.key => {
                        if l.attrs.public_ip != own.attrs.public_ip {
                            return Err(LeaseError::Lost { key: own.key.to_string(), holder: l.attrs.public_ip.to_string() }.into());
                        }
                        own = l;
                        Vec::new()
                    }
                    WatchUpdate::Put(l) => peers.put(l).into_iter().collect(),
                    WatchUpdate::Delete(k) if k == own.key => {
                        own = reclaim(&store, &own, flags.subnet_lease_ttl, "deleted or expired").await?;
                        Vec::new()
                    }
                    WatchUpdate::Delete(k) => peers.delete(&k).into_iter().collect(),
                    WatchUpdate::Disconnected(e) => {
                        metrics.etcd_errors.get_or_create(&label("op", "watch")).inc();
                        shared.state.lock().expect("state lock").last_etcd_error = Some(e.clone());
                        if !disconnected_logged {
                            tracing::warn!("lease watch lost etcd: {e}; the data path stays as it is while reconnecting");
                            disconnected_logged = true;
                        }
                        Vec::new()
                    }
                };
                shared.state.lock().expect("state lock").lease = Some(own.clone());
                for ev in events {
                    match ev {
                        LeaseEvent::Added(l) => {
                            metrics.lease_events.get_or_create(&label("type", "added")).inc();
                            tracing::info!(peer = %l.key, public_ip = %l.attrs.public_ip, "peer added");
                            // Let its tunnel packets in before its routes exist.
                            if let Some(old) = peer_ips.insert(l.key, l.attrs.public_ip) {
                                fw.remove_peer(old);
                            }
                            fw.add_peer(l.attrs.public_ip);
                            dp.add(l);
                        }
                        LeaseEvent::Removed(l) => {
                            metrics.lease_events.get_or_create(&label("type", "removed")).inc();
                            tracing::info!(peer = %l.key, public_ip = %l.attrs.public_ip, "peer removed");
                            dp.remove(l.key);
                            if let Some(old) = peer_ips.remove(&l.key) {
                                fw.remove_peer(old);
                            }
                        }
                    }
                }
            }
            _ = sleep_until_opt(next_renew) => {
                match store.renew(&own).await {
                    Ok(Renewal::Renewed(ttl)) => {
                        tracing::debug!(ttl, "lease renewed");
                        metrics.lease_renewals.inc();
                        renew_backoff = Duration::from_secs(1);
                        next_renew = Some(Instant::now() + Duration::from_secs(ttl as u64).saturating_sub(margin).max(Duration::from_secs(1)));
                        set_expiry(next_renew);
                    }
                    Ok(Renewal::Reservation) => next_renew = None,
                    Ok(Renewal::Gone) => {
                        own = reclaim(&store, &own, flags.subnet_lease_ttl, "gone at renewal").await?;
                        next_renew = renew_deadline(&store, &own, flags.subnet_lease_ttl, margin).await;
                    }
                    Err(e) => {
                        metrics.etcd_errors.get_or_create(&label("op", "renew")).inc();
                        shared.state.lock().expect("state lock").last_etcd_error = Some(e.to_string());
                        tracing::warn!("renewing the lease failed: {e}; retrying in {renew_backoff:?}");
                        next_renew = Some(Instant::now() + renew_backoff);
                        renew_backoff = (renew_backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            _ = resync.tick() => dp.resync(),
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// When to renew: `margin` before the lease runs out; never for a reservation.
async fn renew_deadline(
    store: &EtcdStore,
    own: &Lease,
    ttl: Duration,
    margin: Duration,
) -> Option<Instant> {
    let id = own.etcd_lease?;
    let left = match store.time_left(id).await {
        Ok(Some(s)) => Duration::from_secs(s as u64),
        _ => ttl,
    };
    Some(Instant::now() + left.saturating_sub(margin).max(Duration::from_secs(1)))
}

/// Acquires, waiting out etcd outages; out-of-subnets and similar are final.
async fn retry_acquire(
    store: &EtcdStore,
    cfg: &NetworkConfig,
    req: &AcquireRequest,
) -> Result<Lease, DaemonError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.acquire(cfg, req).await {
            Ok(l) => return Ok(l),
            Err(e @ LeaseError::Etcd { .. }) => {
                tracing::error!("acquire a lease: {e} (retrying)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Our lease vanished: take the same subnet back, or fail if another node has it. etcd errors
/// are waited out (the data path is left alone meanwhile).
async fn reclaim(
    store: &EtcdStore,
    own: &Lease,
    ttl: Duration,
    why: &str,
) -> Result<Lease, DaemonError> {
    tracing::warn!(subnet = %own.key, "own lease {why}; taking the subnet back");
    let mut delay = Duration::from_millis(200);
    loop {
        match store.reclaim(own, ttl).await {
            Ok(l) => {
                tracing::info!(subnet = %l.key, "lease taken back");
                return Ok(l);
            }
            Err(e @ LeaseError::Etcd { .. }) => {
                tracing::warn!("taking the lease back: {e} (retrying)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Packets to test foreign masquerade rules with: a local pod talking to a pod elsewhere in the
/// cluster network, leaving through each interface that carries pod traffic.
fn probes(spec: &FirewallSpec, ext: &str, tunnel: Option<&str>) -> Vec<Probe> {
    let src = std::net::Ipv4Addr::from(u32::from(spec.pod_subnet.network()) + 2);
    let first = u32::from(spec.network.network()) + 2;
    let dst = if spec.pod_subnet.contains(&std::net::Ipv4Addr::from(first)) {
        std::net::Ipv4Addr::from(u32::from(spec.network.broadcast()) - 1)
    } else {
        std::net::Ipv4Addr::from(first)
    };
    std::iter::once(ext)
        .chain(tunnel)
        .map(|oif| Probe {
            src,
            dst,
            iif: "cni0".into(),
            oif: oif.into(),
            mark: 0,
        })
        .collect()
}

//! Start-up: from a connected lease store to a running node.
//!
//! Order: network config (waits until it exists) → external interface → backend prepared (its
//! identity goes into the lease) → lease acquired → own devices set up → watch started → first
//! complete peer list programmed, the firewall alongside → `subnet.env` written → ready → the
//! store told (`complete`, in a task of its own that retries until the store accepts). Every
//! step that waits on the store retries with backoff; a wrong config or a lost race for the last
//! subnet is final.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::dataplane::Dataplane;
use super::event_loop::{EventLoop, Kernel};
use super::firewall::Firewall;
use super::flags::Flags;
use super::http::{self, Shared};
use super::iface::{self, Selection};
use super::lease_keeper::LeaseKeeper;
use super::{DaemonError, probes};
use crate::backend::{self, ExternalInterface, Registration};
use crate::config::NetworkConfig;
use crate::firewall::{FirewallSpec, Guard, Nets};
use crate::kernel::netlink::Netlink;
use crate::lease::manager::{SubnetManager, WatchUpdate};
use crate::lease::validate::{Checker, own_identities};
use crate::lease::{AcquireRequest, Lease, LeaseAttrs, PeerSet, SubnetKey};
use crate::subnet_env::{self, SubnetEnv};
use crate::util::backoff::{self, Attempt, Backoff};

/// Brings the node up on `store` and returns its main loop, ready to run.
pub async fn start<M: SubnetManager>(
    flags: &Flags,
    shared: &Arc<Shared>,
    store: M,
) -> Result<EventLoop<M, Kernel>, DaemonError> {
    let cfg = network_config(&store, shared).await?;
    let stored = stored_public_ip(&store, shared).await?;
    let ext = external_interface(flags, &cfg, stored, shared)?;
    shared.phase("preparing the backend");
    let s = store.clone();
    shared.set_rejections(Box::new(move || s.rejected()));
    let mut attrs = lease_attrs(&cfg, &ext);
    let previous = store.previous_lease(&cfg, &attrs).await;
    let local = backend::Local {
        udp_stats: shared.metrics.udp.clone(),
        wireguard_stats: shared.metrics.wireguard.clone(),
        wireguard_key_file: flags.wireguard_key_file.clone(),
        wireguard_engine: flags.wireguard_engine,
    };
    let be = backend::new(&cfg, &ext, previous.as_ref(), local)?;
    let dataplane = Dataplane::start(be, shared.metrics.clone(), ext.index, flags.kernel_events)?;
    *shared.dataplane.lock().expect("dataplane lock") = Some(dataplane.clone());
    let reg = dataplane.prepare().await?;
    let engine = dataplane.tunnel().await.map(|t| t.engine);
    if let Some(e) = engine {
        shared
            .metrics
            .wireguard_engine
            .get_or_create(&super::metrics::label("engine", e))
            .set(1);
    }
    shared.update(|s| {
        s.node.engine = engine.map(String::from);
        s.node.mtu = Some(reg.mtu);
        s.node.tunnel_device = reg.tunnel_device.clone();
        s.node.encap_overhead = Some(reg.overhead);
    });
    attrs.backend_type = reg.backend_type.to_string();
    let raw = |d: &String| {
        serde_json::value::RawValue::from_string(d.clone()).expect("backend data is JSON")
    };
    attrs.backend_data = reg.backend_data.as_ref().map(raw);
    attrs.backend_v6_data = reg.backend_v6_data.as_ref().map(raw);

    shared.phase("acquiring a lease");
    let own = acquire(&store, &cfg, flags, attrs, shared).await?;
    shared.update(|s| s.lease = Some(own.clone()));
    tracing::info!(subnet = %own.key, reservation = own.is_reservation(), "this node's lease");
    dataplane.set_own(own.clone()).await?;

    // Follow the other leases; the first update is always a complete list.
    shared.phase("programming peers");
    let (tx, mut updates) = mpsc::channel::<WatchUpdate>(1024);
    tokio::spawn(store.watch(tx));
    let checker = Checker {
        cfg: cfg.clone(),
        exact_length: store.subnet_len_from_config(),
        own: own.key,
        local: local_networks()?,
        own_ids: own_identities(&own, &cfg),
    };
    let mut peers = first_snapshot(&mut updates, checker).await?;
    if let Some(refused) = peers.refused_update() {
        shared.update(|s| s.refused_leases = refused);
    }
    let firewall = program(flags, &cfg, &ext, &reg, &own, &peers, &dataplane, shared).await?;

    let env = SubnetEnv::for_lease(
        cfg.v4.as_ref().map(|f| f.network),
        own.key.v4,
        cfg.v6.as_ref().map(|f| f.network),
        own.key.v6,
        reg.mtu,
        flags.ip_masq,
    );
    subnet_env::write(&flags.subnet_file, &env).map_err(|e| DaemonError::SubnetFile {
        path: flags.subnet_file.display().to_string(),
        msg: e.to_string(),
    })?;
    let engine = super::policy_sources::start(flags, &cfg, &own)
        .await
        .map_err(DaemonError::Flags)?;
    *shared.policy.lock().expect("policy lock") = engine;
    let margin = flags.subnet_lease_renew_margin;
    let ttl = flags.subnet_lease_ttl;
    let keeper = LeaseKeeper::new(&store, own.clone(), ttl, margin, shared.clone()).await;
    tracing::info!(path = %flags.subnet_file.display(), "ready: subnet file written");
    shared.set_ready();
    http::notify_ready();
    tokio::spawn(complete(
        store.clone(),
        own.clone(),
        shared.clone(),
        COMPLETE_RETRY,
    ));
    Ok(EventLoop {
        store,
        updates,
        peers,
        keeper,
        sink: Kernel {
            dataplane,
            firewall,
        },
        shared: shared.clone(),
        resync_period: flags.resync_period,
        disconnected: false,
    })
}

/// How `complete` is retried: a refusal (RBAC) or an outage may last; the fix is picked up within
/// half a minute of it.
const COMPLETE_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// Tells the store the data path is up (the Kubernetes API: the NetworkUnavailable condition),
/// retrying until it succeeds, whatever the error: a ClusterRole fixed later, or an API server
/// back, takes effect without a restart. Every failure is counted; the first is logged as an
/// error, then one every five minutes (or when the error changes).
async fn complete<M: SubnetManager>(store: M, own: Lease, shared: Arc<Shared>, mut wait: Backoff) {
    let mut logged: Option<(String, tokio::time::Instant)> = None;
    loop {
        match store.complete(&own).await {
            Ok(()) => {
                if logged.is_some() {
                    tracing::info!("the store accepted that the data path is up, after retries");
                }
                return;
            }
            Err(e) => {
                let msg = e.to_string();
                let quiet = logged
                    .as_ref()
                    .is_some_and(|(m, t)| *m == msg && t.elapsed() < Duration::from_secs(300));
                if !quiet {
                    tracing::error!("{msg} (retrying)");
                    logged = Some((msg.clone(), tokio::time::Instant::now()));
                }
                shared.store_error("complete", msg);
                wait.wait().await;
            }
        }
    }
}

/// Waits until the store has a network config, and parses it.
async fn network_config<M: SubnetManager>(
    store: &M,
    shared: &Shared,
) -> Result<NetworkConfig, DaemonError> {
    let source = store.config_source();
    shared.phase(&format!(
        "waiting for the network config in {}",
        store.kind()
    ));
    let text = backoff::retry("read the network config", backoff::DEFAULT, || async {
        match store.network_config().await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(Attempt::Retry(store.config_missing())),
            Err(e) if e.is_transient() => Err(Attempt::Retry(e.to_string())),
            Err(e) => Err(Attempt::Fail(e.to_string())),
        }
    })
    .await
    .map_err(DaemonError::Flags)?;
    let cfg = NetworkConfig::parse(&text).map_err(|source_err| DaemonError::Config {
        key: source.clone(),
        source: source_err,
    })?;
    tracing::info!(config = %cfg.to_json(), "network config");
    Ok(cfg)
}

/// The public addresses stored for this node in the store (flanneld's `GetStoredPublicIP`),
/// waiting out outages; a malformed one is final.
async fn stored_public_ip<M: SubnetManager>(
    store: &M,
    shared: &Shared,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), DaemonError> {
    let stored = backoff::retry(
        "read the node's stored public address",
        backoff::DEFAULT,
        || async {
            store
                .stored_public_ip()
                .await
                .map_err(|e| shared.retry_if_transient("stored_public_ip", e))
        },
    )
    .await?;
    if stored != (None, None) {
        tracing::info!(public_ip = ?stored.0, public_ipv6 = ?stored.1, "public address stored on the node; it replaces --public-ip(v6)");
    }
    Ok(stored)
}

fn external_interface(
    flags: &Flags,
    cfg: &NetworkConfig,
    stored: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    shared: &Shared,
) -> Result<ExternalInterface, DaemonError> {
    let sel = Selection {
        ifaces: flags.iface.clone(),
        regexes: flags.iface_regex.clone(),
        can_reach: flags.iface_can_reach,
        public_ip: stored.0.or(flags.public_ip),
        public_ipv6: stored.1.or(flags.public_ipv6),
        need_v4: cfg.enable_ipv4,
        need_v6: cfg.enable_ipv6,
    };
    let mut nl = Netlink::open().map_err(|e| DaemonError::Iface(e.to_string()))?;
    let ext = iface::select(&mut nl, &sel).map_err(DaemonError::Iface)?;
    tracing::info!(
        iface = %ext.name,
        public_ip = ?ext.ext_addr,
        public_ipv6 = ?ext.ext_addr6,
        mtu = ext.mtu,
        "external interface"
    );
    shared.update(|s| {
        s.node.iface = Some(ext.name.clone());
        s.node.public_ip = ext.ext_addr.map(|a| a.to_string());
        s.node.backend = Some(cfg.backend.type_name().to_string());
    });
    Ok(ext)
}

/// This node's public addresses, as its lease will carry them (the backend fills in the rest).
fn lease_attrs(cfg: &NetworkConfig, ext: &ExternalInterface) -> LeaseAttrs {
    let public_ip = match (cfg.enable_ipv4, ext.ext_addr) {
        (true, Some(a)) => a,
        _ => Ipv4Addr::UNSPECIFIED,
    };
    LeaseAttrs {
        public_ip,
        public_ipv6: if cfg.enable_ipv6 { ext.ext_addr6 } else { None },
        backend_type: String::new(),
        backend_data: None,
        backend_v6_data: None,
    }
}

/// Acquires, waiting out store outages; out-of-subnets and similar are final.
async fn acquire<M: SubnetManager>(
    store: &M,
    cfg: &NetworkConfig,
    flags: &Flags,
    attrs: LeaseAttrs,
    shared: &Shared,
) -> Result<Lease, DaemonError> {
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
    let req = AcquireRequest {
        attrs,
        previous,
        ttl: flags.subnet_lease_ttl,
    };
    // Waiting for something another component does (a podCIDR): look again within a second
    // (the Kubernetes store waits on a watch of its Node between looks).
    let patience = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
    let lease = backoff::retry("acquire a lease", patience, || async {
        store.acquire(cfg, &req).await.map_err(|e| {
            if e.is_transient() {
                // Say why on /readyz and in `podnetctl status` while waiting.
                shared.phase(&format!("acquiring a lease: {e}"));
            }
            shared.retry_if_transient("acquire", e)
        })
    })
    .await?;
    Ok(lease)
}

/// This node's addresses with their networks: no peer lease may cover them.
fn local_networks() -> Result<Vec<ipnet::IpNet>, DaemonError> {
    let mut nl = Netlink::open().map_err(|e| DaemonError::Iface(e.to_string()))?;
    let addrs = nl.addrs().map_err(|e| DaemonError::Iface(e.to_string()))?;
    Ok(addrs.into_iter().map(|a| a.net).collect())
}

/// Waits for the watch's first complete list of leases.
async fn first_snapshot(
    updates: &mut mpsc::Receiver<WatchUpdate>,
    checker: Checker,
) -> Result<PeerSet, DaemonError> {
    let mut peers = PeerSet::checked(checker);
    loop {
        match updates.recv().await {
            Some(WatchUpdate::Snapshot(list)) => {
                peers.reset(list);
                return Ok(peers);
            }
            Some(WatchUpdate::Disconnected(e)) => tracing::warn!("lease watch: {e}"),
            Some(_) => {}
            None => return Err(DaemonError::WatchEnded),
        }
    }
}

/// Programs the first complete peer list and the firewall at once (they are independent kernel
/// state); returns the running firewall.
#[allow(clippy::too_many_arguments)]
async fn program(
    flags: &Flags,
    cfg: &NetworkConfig,
    ext: &ExternalInterface,
    reg: &Registration,
    own: &Lease,
    peers: &PeerSet,
    dataplane: &Dataplane,
    shared: &Arc<Shared>,
) -> Result<Firewall, DaemonError> {
    let spec = FirewallSpec {
        v4: cfg.v4.as_ref().zip(own.key.v4).map(|(f, pod)| Nets {
            network: f.network,
            pod_subnet: pod,
        }),
        v6: cfg.v6.as_ref().zip(own.key.v6).map(|(f, pod)| Nets {
            network: f.network,
            pod_subnet: pod,
        }),
        masquerade: flags.ip_masq,
        fully_random: !flags.ip_masq_fully_random_disable,
        forward: flags.iptables_forward_rules,
        guard: reg
            .tunnel_port
            .filter(|_| flags.tunnel_guard)
            .map(|port| Guard { port }),
    };
    let probes = probes(&spec, &ext.name, reg.tunnel_device.as_deref());
    let endpoints: Vec<(SubnetKey, Ipv4Addr, Option<Ipv6Addr>)> = peers
        .peers()
        .map(|l| (l.key, l.attrs.public_ip, l.attrs.public_ipv6))
        .collect();
    let resync = Duration::from_secs(flags.iptables_resync);
    let metrics = shared.metrics.clone();
    let events = flags.kernel_events;
    let fw_start = tokio::task::spawn_blocking(move || {
        Firewall::start(spec, probes, &endpoints, resync, events, metrics)
    });
    let report = dataplane.full(peers.peers().cloned().collect()).await?;
    tracing::info!(
        peers = peers.len(),
        changes = report.applied,
        took_ms = report.duration.as_millis() as u64,
        "peers programmed"
    );
    let firewall = fw_start
        .await
        .map_err(|e| DaemonError::Flags(format!("firewall start-up task: {e}")))?
        .map_err(DaemonError::Firewall)?;
    *shared.firewall.lock().expect("firewall lock") = Some(firewall.clone());
    Ok(firewall)
}

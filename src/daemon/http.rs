//! podnetd's HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `/status` (JSON, read by
//! `podnetctl status`) and `/policy`. All are served on the root-only local socket
//! `--status-socket`; on `--healthz-ip:--healthz-port`, when a port is given, only the first
//! three, with `/metrics` from a cache at most a second old. Connections are limited and timed
//! out (`serve`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::dataplane::Dataplane;
use super::firewall::Firewall;
use super::metrics::{Metrics, label, store_op};
use super::policy::PolicyEngine;
use crate::backend::PeerPath;
use crate::lease::{Lease, LeaseError};
use crate::status::{
    ContestedInfo, DataplaneInfo, DriftInfo, FirewallInfo, LeaseInfo, NodeInfo, PathKind, PeerInfo,
    Status,
};
use crate::util::backoff::Attempt;
use crate::util::contest::Contested;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What the node is doing and has, for `/readyz` and `/status`.
#[derive(Debug, Default)]
pub struct NodeState {
    pub phase: String,
    pub ready: bool,
    pub node: NodeInfo,
    /// "etcd" or "kubernetes".
    pub lease_store: String,
    pub lease: Option<Lease>,
    /// When the lease runs out (`None` for a reservation, a lease that does not expire, or
    /// before there is one).
    pub lease_expiry: Option<SystemTime>,
    pub last_store_error: Option<String>,
    /// Peer leases this node refuses to program, as `lease <subnet>: why`.
    pub refused_leases: Vec<String>,
}

/// Peers the lease store skipped, with why (asked when they are shown).
type Rejections = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// Everything the endpoints read.
pub struct Shared {
    pub state: Mutex<NodeState>,
    rejections: Mutex<Option<Rejections>>,
    pub metrics: Arc<Metrics>,
    pub dataplane: Mutex<Option<Dataplane>>,
    pub firewall: Mutex<Option<Firewall>>,
    pub policy: Mutex<Option<PolicyEngine>>,
    /// The public listener's `/metrics`, shared by everyone who asks within a second.
    public_cache: super::serve::Cached,
}

impl Shared {
    pub fn new(subnet_file: &Path) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(NodeState {
                phase: "starting".into(),
                node: NodeInfo {
                    subnet_file: subnet_file.display().to_string(),
                    ..Default::default()
                },
                ..Default::default()
            }),
            rejections: Mutex::new(None),
            metrics: Arc::new(Metrics::new()),
            dataplane: Mutex::new(None),
            firewall: Mutex::new(None),
            policy: Mutex::new(None),
            public_cache: super::serve::Cached::default(),
        })
    }

    pub fn phase(&self, phase: &str) {
        tracing::debug!("phase: {phase}");
        self.state.lock().expect("state lock").phase = phase.to_string();
    }

    pub fn set_ready(&self) {
        let mut s = self.state.lock().expect("state lock");
        s.ready = true;
        s.phase = "ready".into();
        self.metrics.ready.set(1);
    }

    pub fn set_rejections(&self, f: Rejections) {
        *self.rejections.lock().expect("rejections lock") = Some(f);
    }

    /// Peers the lease store skipped, then leases this node refuses to program.
    pub fn rejections(&self) -> Vec<String> {
        let mut all = match self.rejections.lock().expect("rejections lock").as_ref() {
            Some(f) => f(),
            None => Vec::new(),
        };
        all.extend(
            self.state
                .lock()
                .expect("state lock")
                .refused_leases
                .clone(),
        );
        all
    }

    /// Changes the node's state (one lock, one place).
    pub fn update(&self, f: impl FnOnce(&mut NodeState)) {
        f(&mut self.state.lock().expect("state lock"));
    }

    /// A lease store failure: counted, remembered for `/status`.
    pub fn store_error(&self, op: &str, msg: String) {
        let mut s = self.state.lock().expect("state lock");
        let store = s.lease_store.clone();
        self.metrics
            .store_errors
            .get_or_create(&store_op(&store, op))
            .inc();
        s.last_store_error = Some(msg);
    }

    /// A failed store request: transient ones are counted and retried, others are final.
    pub fn retry_if_transient(&self, op: &str, e: LeaseError) -> Attempt<LeaseError> {
        if e.is_transient() {
            self.store_error(op, e.to_string());
            Attempt::Retry(e)
        } else {
            Attempt::Fail(e)
        }
    }

    fn seconds_left(&self) -> Option<f64> {
        let s = self.state.lock().expect("state lock");
        match (&s.lease, s.lease_expiry) {
            (_, Some(t)) => Some(
                t.duration_since(SystemTime::now())
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            ),
            // A reservation, or a store whose leases do not expire.
            (Some(_), None) => Some(f64::INFINITY),
            (None, None) => None,
        }
    }
}

async fn healthz() -> &'static str {
    "podnetd is running\n"
}

async fn readyz(State(sh): State<Arc<Shared>>) -> Response {
    let s = sh.state.lock().expect("state lock");
    if s.ready {
        (StatusCode::OK, "podnetd is ready\n".to_string()).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("podnetd is not ready yet: {}\n", s.phase),
        )
            .into_response()
    }
}

fn refresh_gauges(sh: &Shared) {
    sh.metrics.leases_rejected.set(sh.rejections().len() as i64);
    if let Some(left) = sh.seconds_left() {
        sh.metrics.lease_seconds_remaining.set(left);
    }
    if let Some(dp) = sh.dataplane.lock().expect("dataplane lock").as_ref() {
        let paths = dp.stats().lock().expect("stats lock").paths.clone();
        for (name, n) in [
            ("direct", paths.direct),
            ("tunnel", paths.tunnel),
            ("skipped", paths.skipped),
            ("other_backend", paths.other_backend),
        ] {
            sh.metrics
                .peers
                .get_or_create(&label("path", name))
                .set(n as i64);
        }
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics_text(sh: &Shared) -> String {
    refresh_gauges(sh);
    let mut text = sh.metrics.render();
    let dp = sh.dataplane.lock().expect("dataplane lock").clone();
    if let Some(t) = match &dp {
        Some(d) => d.tunnel().await,
        None => None,
    } {
        let body = text.strip_suffix("# EOF\n").unwrap_or(&text).to_string();
        text = body + &super::metrics::wireguard_text(&t.peers) + "# EOF\n";
    }
    let engine = sh.policy.lock().expect("policy lock").clone();
    if let Some(p) = engine {
        let body = text.strip_suffix("# EOF\n").unwrap_or(&text).to_string();
        text = body + &policy_metrics(&p.counters().await) + "# EOF\n";
    }
    text
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    let text = metrics_text(&sh).await;
    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
}

/// The policy table's counters as OpenMetrics counter families.
fn policy_metrics(c: &super::policy::Counters) -> String {
    let mut s = String::new();
    for (name, help, pick) in [
        (
            "packets",
            "Packets network policy let through (those opening a connection: the rest passes uncounted as established) or dropped",
            0,
        ),
        (
            "bytes",
            "Bytes network policy let through (of the packets opening a connection) or dropped",
            1,
        ),
    ] {
        s += &format!("# HELP podnet_policy_{name} {help}, by policy, direction and verdict.\n");
        s += &format!("# TYPE podnet_policy_{name} counter\n");
        for ((policy, dir, verdict), v) in c {
            let n = if pick == 0 { v.0 } else { v.1 };
            let policy = policy.replace('\\', "\\\\").replace('"', "\\\"");
            s += &format!(
                "podnet_policy_{name}_total{{policy=\"{policy}\",direction=\"{dir}\",verdict=\"{verdict}\"}} {n}\n"
            );
        }
    }
    s
}

async fn policy_explain(
    State(sh): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some((ns, name)) = q.get("pod").and_then(|p| p.split_once('/')) else {
        return (StatusCode::BAD_REQUEST, "ask for ?pod=NAMESPACE/NAME\n").into_response();
    };
    let engine = sh.policy.lock().expect("policy lock").clone();
    let Some(p) = engine else {
        return (
            StatusCode::NOT_FOUND,
            "network policy is not enabled on this node\n",
        )
            .into_response();
    };
    match p.explain(crate::policy::model::Key::new(ns, name)).await {
        Some(e) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&e).expect("serializes"),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the policy engine stopped\n",
        )
            .into_response(),
    }
}

/// The status document `podnetctl status` shows.
pub async fn status(sh: &Shared) -> Status {
    let dp = sh.dataplane.lock().expect("dataplane lock").clone();
    let fw = sh.firewall.lock().expect("firewall lock").clone();
    let mut st = Status::default();
    if let Some(d) = &dp {
        st.peers = d.peers().await.iter().map(peer_info).collect();
        if let Some(t) = d.tunnel().await {
            attach_tunnels(&mut st.peers, &t);
        }
        let stats = d.stats().lock().expect("stats lock").clone();
        st.dataplane = Some(DataplaneInfo {
            full_passes: stats.full_passes,
            incremental: stats.incremental,
            errors: stats.errors,
            last_error: stats.last_error,
            kernel_events: stats.kernel_events,
            repairs: stats.repairs,
            verifications: stats.verifications,
            events_lost: stats.events_lost,
            contested: d.contested().await.iter().map(contested_info).collect(),
        });
        st.drift = Some(match d.drift().await {
            Ok(dr) => DriftInfo {
                missing: dr.missing,
                unexpected: dr.unexpected,
                error: None,
            },
            Err(e) => DriftInfo {
                error: Some(e.to_string()),
                ..Default::default()
            },
        });
    }
    if let Some(f) = &fw {
        let stats = f.check_now().await;
        st.firewall = Some(FirewallInfo {
            foreign_masquerade: stats.foreign.iter().map(|r| r.to_string()).collect(),
            restores: stats.restored,
            tunnel_guard_peers: stats.guard_peers,
            last_error: stats.last_error,
            contested: stats.contested.iter().map(contested_info).collect(),
        });
    }
    st.rejected_leases = sh.rejections();
    st.policy = sh
        .policy
        .lock()
        .expect("policy lock")
        .as_ref()
        .map(|p| p.info());
    let left = sh.seconds_left();
    let s = sh.state.lock().expect("state lock");
    st.ready = s.ready;
    st.phase = s.phase.clone();
    st.node = s.node.clone();
    st.lease = s.lease.as_ref().map(|l| LeaseInfo {
        key: l.key.to_string(),
        subnet: l.key.v4.map(|n| n.to_string()),
        ipv6_subnet: l.key.v6.map(|n| n.to_string()),
        reservation: l.is_reservation(),
        seconds_left: left.filter(|x| x.is_finite()).map(|x| x as u64),
    });
    st.lease_store = s.lease_store.clone();
    st.last_store_error = s.last_store_error.clone();
    st
}

/// Each peer's WireGuard counters, next to how it is reached.
fn attach_tunnels(peers: &mut [PeerInfo], t: &crate::backend::TunnelReport) {
    for p in peers.iter_mut() {
        let Some(s) = t.peers.iter().find(|s| s.lease.to_string() == p.key) else {
            continue;
        };
        p.wireguard = Some(crate::status::WireguardPeer {
            public_key: crate::backend::wireguard::key::b64(&s.public_key),
            endpoint: s.endpoint.to_string(),
            handshakes: s.handshakes,
            last_handshake_seconds: s.last_handshake.map(|d| d.as_secs()),
            rx_bytes: s.rx_bytes,
            tx_bytes: s.tx_bytes,
            handshake_failures: s.failures,
            problem: s.problem.clone(),
        });
    }
}

pub fn contested_info(c: &Contested) -> ContestedInfo {
    ContestedInfo {
        object: c.object.clone(),
        undone: c.undone,
        repairs: c.repairs,
        for_seconds: c.since.as_secs(),
        next_repair_seconds: c.next.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
    }
}

fn peer_info((l, p): &(Arc<Lease>, PeerPath)) -> PeerInfo {
    let (path, reason) = match p {
        PeerPath::Direct => (PathKind::Direct, None),
        PeerPath::Tunnel => (PathKind::Tunnel, None),
        PeerPath::Skipped(r) => (PathKind::Skipped, Some(r.clone())),
    };
    PeerInfo {
        subnet: l.key.v4.map(|n| n.to_string()),
        key: l.key.to_string(),
        public_ip: l.attrs.public_ip.to_string(),
        path,
        reason,
        ipv6_subnet: l.key.v6.map(|n| n.to_string()),
        public_ipv6: l.attrs.public_ipv6.map(|a| a.to_string()),
        wireguard: None,
    }
}

async fn status_endpoint(State(sh): State<Arc<Shared>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        status(&sh).await.to_json(),
    )
        .into_response()
}

/// Everything, for the local socket: only root on this node reaches it.
fn local_router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_endpoint))
        .route("/policy", get(policy_explain))
        .with_state(sh)
}

/// What the network may ask (`--healthz-port`, which every pod can reach): health, and
/// metrics from a cache at most a second old, so a flood of requests costs one collection a
/// second. `/status` (peers, addresses, errors) and `/policy` (pod names, labels, policies)
/// are local only.
fn public_router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(cached_metrics))
        .with_state(sh)
}

async fn cached_metrics(State(sh): State<Arc<Shared>>) -> Response {
    let s = sh.clone();
    let body = sh
        .public_cache
        .get(|| async move { metrics_text(&s).await })
        .await;
    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
}

/// Starts the listeners; errors binding them are returned (a port in use is a config error).
pub async fn serve(sh: Arc<Shared>, tcp: Option<SocketAddr>, socket: &Path) -> Result<(), String> {
    if let Some(addr) = tcp {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--healthz-ip/--healthz-port {addr}: {e}"))?;
        tokio::spawn(super::serve::run(l, public_router(sh.clone())));
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("--status-socket {}: {e}", socket.display()))?;
    }
    // A socket file left by an earlier run would make bind fail.
    let _ = std::fs::remove_file(socket);
    let l = tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("--status-socket {}: {e}", socket.display()))?;
    // Root only, whatever the umask: connecting needs write permission on the socket.
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("--status-socket {}: {e}", socket.display()))?;
    tokio::spawn(super::serve::run(l, local_router(sh.clone())));
    Ok(())
}

/// Tells systemd we are ready, if it asked (`NOTIFY_SOCKET`).
pub fn notify_ready() {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let result = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = result {
        tracing::warn!("notify systemd ({path}): {e}");
    }
}

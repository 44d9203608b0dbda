//! podnetd's HTTP endpoints: `/healthz`, `/readyz`, `/metrics` and `/status` (JSON, read by
//! `podnetctl status`). Served on `--healthz-ip:--healthz-port` when a port is given, and always
//! on the local socket `--status-socket`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::dataplane::Dataplane;
use super::firewall::Firewall;
use super::metrics::{Metrics, label};
use crate::lease::Lease;

/// What the node is doing and has, for `/readyz` and `/status`.
#[derive(Debug, Default)]
pub struct NodeState {
    pub phase: String,
    pub ready: bool,
    pub iface: Option<String>,
    pub public_ip: Option<String>,
    pub backend: Option<String>,
    pub mtu: Option<u32>,
    pub subnet_file: String,
    pub lease: Option<Lease>,
    /// When the lease runs out (`None` for a reservation or before there is one).
    pub lease_expiry: Option<SystemTime>,
    pub last_etcd_error: Option<String>,
}

/// Everything the endpoints read.
pub struct Shared {
    pub state: Mutex<NodeState>,
    pub metrics: Arc<Metrics>,
    pub dataplane: Mutex<Option<Dataplane>>,
    pub firewall: Mutex<Option<Firewall>>,
}

impl Shared {
    pub fn new(subnet_file: &Path) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(NodeState {
                phase: "starting".into(),
                subnet_file: subnet_file.display().to_string(),
                ..Default::default()
            }),
            metrics: Arc::new(Metrics::new()),
            dataplane: Mutex::new(None),
            firewall: Mutex::new(None),
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

    fn seconds_left(&self) -> Option<f64> {
        let s = self.state.lock().expect("state lock");
        match (&s.lease, s.lease_expiry) {
            (Some(l), _) if l.is_reservation() => Some(f64::INFINITY),
            (_, Some(t)) => Some(
                t.duration_since(SystemTime::now())
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            ),
            _ => None,
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

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    refresh_gauges(&sh);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        sh.metrics.render(),
    )
        .into_response()
}

/// The status document `podnetctl status` shows.
pub async fn status_json(sh: &Shared) -> Value {
    let dp = sh.dataplane.lock().expect("dataplane lock").clone();
    let (peers, dp_info) = match &dp {
        Some(d) => {
            let st = d.stats().lock().expect("stats lock").clone();
            let peers: Vec<Value> = d
                .peers()
                .await
                .iter()
                .map(|(l, p)| {
                    json!({
                        "subnet": l.key.v4.map(|n| n.to_string()),
                        "key": l.key.to_string(),
                        "publicIP": l.attrs.public_ip.to_string(),
                        "path": p.label(),
                        "reason": match p { crate::backend::PeerPath::Skipped(r) => Some(r.clone()), _ => None },
                    })
                })
                .collect();
            (
                peers,
                json!({"fullPasses": st.full_passes, "incremental": st.incremental, "errors": st.errors, "lastError": st.last_error}),
            )
        }
        None => (Vec::new(), Value::Null),
    };
    let drift = match &dp {
        Some(d) => match d.drift().await {
            Ok(dr) => json!({"missing": dr.missing, "unexpected": dr.unexpected}),
            Err(e) => json!({"error": e.to_string()}),
        },
        None => Value::Null,
    };
    let fw = sh.firewall.lock().expect("firewall lock").clone();
    let firewall = match &fw {
        Some(f) => {
            let st = f.stats().lock().expect("stats lock").clone();
            json!({
                "foreignMasquerade": st.foreign.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                "restores": st.restored,
                "tunnelGuardPeers": st.guard_peers,
                "lastError": st.last_error,
            })
        }
        None => Value::Null,
    };
    let left = sh.seconds_left();
    let s = sh.state.lock().expect("state lock");
    let lease = s.lease.as_ref().map(|l| {
        json!({
            "key": l.key.to_string(),
            "subnet": l.key.v4.map(|n| n.to_string()),
            "ipv6Subnet": l.key.v6.map(|n| n.to_string()),
            "reservation": l.is_reservation(),
            "secondsLeft": left.filter(|x| x.is_finite()).map(|x| x as u64),
        })
    });
    json!({
        "ready": s.ready,
        "phase": s.phase,
        "node": {
            "iface": s.iface,
            "publicIP": s.public_ip,
            "backend": s.backend,
            "mtu": s.mtu,
            "subnetFile": s.subnet_file,
        },
        "lease": lease,
        "peers": peers,
        "drift": drift,
        "firewall": firewall,
        "dataplane": dp_info,
        "lastEtcdError": s.last_etcd_error,
    })
}

async fn status(State(sh): State<Arc<Shared>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        status_json(&sh).await.to_string(),
    )
        .into_response()
}

fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(sh)
}

/// Starts the listeners; errors binding them are returned (a port in use is a config error).
pub async fn serve(sh: Arc<Shared>, tcp: Option<SocketAddr>, socket: &Path) -> Result<(), String> {
    if let Some(addr) = tcp {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--healthz-ip/--healthz-port {addr}: {e}"))?;
        let app = router(sh.clone());
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("--status-socket {}: {e}", socket.display()))?;
    }
    // A socket file left by an earlier run would make bind fail.
    let _ = std::fs::remove_file(socket);
    let l = tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("--status-socket {}: {e}", socket.display()))?;
    let app = router(sh.clone());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let _ = &sh.metrics.etcd_errors.get_or_create(&label("op", "watch"));
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

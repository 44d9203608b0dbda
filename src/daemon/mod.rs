//! `podnetd`, the node agent.
//!
//! `main` parses the flags and runs the node on a current-thread runtime until SIGTERM/SIGINT:
//! connect to the lease store, `startup::start` brings the node up (see there for the order),
//! then `event_loop` runs it — peer events to the data plane, the lease kept alive by
//! `lease_keeper`. A store outage is waited out without touching the data path; a lost lease is
//! taken back if the subnet is still free, otherwise the process exits non-zero. Shutdown leaves
//! routes, devices and the lease in place, so a restart does not drop a packet.
//!
//! Blocking kernel work runs on OS threads (`dataplane`, `firewall`); the async side does the
//! lease store and HTTP.

pub mod crash;
pub mod dataplane;
pub mod event_loop;
pub mod firewall;
pub mod flags;
pub mod http;
pub mod iface;
pub mod lease_keeper;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod policy_sources;
pub mod serve;
pub mod startup;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::BackendError;
use crate::config::ConfigError;
use crate::firewall::FirewallSpec;
use crate::firewall::foreign::Probe;
use crate::kernel::KernelError;
use crate::kubeapi::{self, KubeError, KubeOptions};
use crate::lease::LeaseError;
use crate::lease::etcd::{EtcdOptions, EtcdStore};
use crate::lease::kube::{Annotations, KubeManager};
use crate::lease::manager::SubnetManager;
use crate::util::backoff::{self, Attempt};
use crate::util::files::Lock;
use flags::Flags;
use http::Shared;

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
    #[error("the lease watch ended")]
    WatchEnded,
}

/// Runs podnetd; returns the process exit code.
pub fn main() -> i32 {
    memory::limit_arenas();
    let flags = Flags::from_env();
    crate::logging::init(flags.verbosity);
    crash::exit_on_panic();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "podnetd starting");
    match crate::kernel::image::discard_relocations() {
        Ok(bytes) => tracing::debug!(bytes, "relocation table's pages given back"),
        Err(e) => tracing::warn!("{e}"),
    }
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

/// How long a second podnetd waits for the first to exit (a restart overlapping a shutdown).
const INSTANCE_WAIT: Duration = Duration::from_secs(5);

/// One podnetd per node: two would fight over the same devices, routes and lease. The lock
/// sits beside the status socket (lab nodes each have their own); it goes with the process.
fn instance_lock(socket: &Path) -> Result<Lock, DaemonError> {
    let mut path = socket.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            DaemonError::Flags(format!("--status-socket {}: {e}", socket.display()))
        })?;
    }
    Lock::acquire(&path, 0o600, Some(INSTANCE_WAIT))
        .map_err(|e| DaemonError::Flags(format!("another podnetd is running on this node: {e}")))
}

async fn run(flags: Flags) -> Result<(), DaemonError> {
    let _instance = instance_lock(&flags.status_socket)?;
    let shared = Shared::new(&flags.subnet_file);
    let tcp = (flags.healthz_port != 0)
        .then(|| std::net::SocketAddr::new(flags.healthz_ip, flags.healthz_port));
    http::serve(shared.clone(), tcp, &flags.status_socket)
        .await
        .map_err(DaemonError::Flags)?;
    let node = async {
        if flags.kube_subnet_mgr {
            run_on_kube(&flags, shared).await
        } else {
            run_on_etcd(&flags, shared).await
        }
    };
    tokio::select! {
        r = node => r,
        _ = shutdown_signal() => Ok(()),
    }
}

/// Connects to etcd (waiting until it answers) and runs the node on it.
async fn run_on_etcd(flags: &Flags, shared: Arc<Shared>) -> Result<(), DaemonError> {
    shared.update(|s| s.lease_store = "etcd".into());
    shared.phase("connecting to etcd");
    let opts = etcd_options(flags);
    let store = backoff::retry("connect to etcd", backoff::DEFAULT, || async {
        EtcdStore::connect(&opts).await.map_err(|e| match e {
            LeaseError::Config(_) => Attempt::Fail(e),
            e => Attempt::Retry(e),
        })
    })
    .await?;
    tracing::info!(endpoints = store.endpoints(), "connected to etcd");
    run_node(flags, &shared, store).await
}

/// Builds the Kubernetes client, finds this node's name (waiting while the API is
/// unreachable) and runs the node on the Node objects.
async fn run_on_kube(flags: &Flags, shared: Arc<Shared>) -> Result<(), DaemonError> {
    shared.update(|s| s.lease_store = "kubernetes".into());
    shared.phase("connecting to the Kubernetes API");
    let opts = KubeOptions {
        api_url: flags.kube_api_url.clone(),
        kubeconfig: flags.kubeconfig_file.clone(),
        serviceaccount_dir: flags.kube_serviceaccount_dir.clone(),
    };
    let fail = |e: KubeError| DaemonError::Flags(e.to_string());
    let client = kubeapi::client(&opts).await.map_err(fail)?;
    let env = |k: &str| std::env::var(k).ok();
    let node = backoff::retry("find this node's name", backoff::DEFAULT, || async {
        kubeapi::node_name(&client, &env)
            .await
            .map_err(|e| match e {
                KubeError::Config(_) => Attempt::Fail(e),
                e => Attempt::Retry(e),
            })
    })
    .await
    .map_err(fail)?;
    let ann = Annotations::new(&flags.kube_annotation_prefix).map_err(DaemonError::Flags)?;
    tracing::info!(node = %node, "this node in the Kubernetes API");
    let store = KubeManager::new(
        client,
        node,
        ann,
        flags.net_config_path.clone(),
        flags.set_node_network_unavailable,
    );
    run_node(flags, &shared, store).await
}

/// Runs a node on any lease store: start-up, then the main loop until it fails.
async fn run_node<M: SubnetManager>(
    flags: &Flags,
    shared: &Arc<Shared>,
    store: M,
) -> Result<(), DaemonError> {
    startup::start(flags, shared, store).await?.run().await
}

/// Packets to test foreign masquerade rules with: a local pod talking to a pod elsewhere in the
/// cluster network, leaving through each interface that carries pod traffic.
fn probes(spec: &FirewallSpec, ext: &str, tunnel: Option<&str>) -> Vec<Probe> {
    // IPv4 probes only (an IPv6-only network has none yet).
    let Some(nets) = spec.v4 else {
        return Vec::new();
    };
    let src = std::net::Ipv4Addr::from(u32::from(nets.pod_subnet.network()) + 2);
    let first = u32::from(nets.network.network()) + 2;
    let dst = if nets.pod_subnet.contains(&std::net::Ipv4Addr::from(first)) {
        std::net::Ipv4Addr::from(u32::from(nets.network.broadcast()) - 1)
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

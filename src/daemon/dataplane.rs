//! The data-plane thread: owns the backend and its netlink socket, and applies peer changes.
//!
//! Netlink calls block, so they run here on a dedicated OS thread and never on the async
//! runtime. The thread keeps its own copy of the peer set, so a resync (timer or a deleted
//! device seen by the link watcher) needs no input from the async side.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::oneshot;

use super::metrics::{Metrics, label};
use crate::backend::reconcile::{Drift, PathCounts, Reconciler, Report};
use crate::backend::{Backend, BackendError, PeerPath, Registration, TunnelReport};
use crate::kernel::netlink::{LinkEvent, LinkEvents, Netlink};
use crate::lease::{Lease, SubnetKey};

/// Counters the daemon exposes (read by the metrics and status endpoints).
#[derive(Debug, Clone, Default)]
pub struct DataplaneStats {
    pub full_passes: u64,
    pub incremental: u64,
    pub objects_applied: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub paths: PathCounts,
}

enum Cmd {
    Prepare(oneshot::Sender<Result<Registration, BackendError>>),
    SetOwn(Lease, oneshot::Sender<Result<(), BackendError>>),
    Full(Vec<Lease>, oneshot::Sender<Result<Report, BackendError>>),
    Add(Lease),
    Remove(SubnetKey),
    Peers(oneshot::Sender<Vec<(Lease, PeerPath)>>),
    Resync(&'static str),
    Drift(oneshot::Sender<Result<Drift, BackendError>>),
    Tunnel(oneshot::Sender<Option<TunnelReport>>),
}

/// Handle to the data-plane thread.
#[derive(Clone)]
pub struct Dataplane {
    tx: mpsc::Sender<Cmd>,
    stats: Arc<Mutex<DataplaneStats>>,
}

fn gone() -> BackendError {
    BackendError::Invalid("the data-plane thread stopped".into())
}

impl Dataplane {
    /// Starts the thread with its own netlink socket (in the daemon's namespace).
    pub fn start(
        backend: Box<dyn Backend>,
        metrics: Arc<Metrics>,
    ) -> Result<Dataplane, BackendError> {
        let nl = Netlink::open()?;
        let devices = backend.device_names();
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(DataplaneStats::default()));
        let s2 = stats.clone();
        thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || run(Reconciler::new(backend, nl), rx, s2, metrics))
            .map_err(|e| BackendError::Invalid(format!("start data-plane thread: {e}")))?;
        if !devices.is_empty() {
            let tx2 = tx.clone();
            let mut events = LinkEvents::subscribe()?;
            thread::Builder::new()
                .name("link-watch".into())
                .spawn(move || {
                    loop {
                        match events.recv() {
                            Ok(evs) => {
                                for e in evs {
                                    if let LinkEvent::Deleted(l) = e
                                        && devices.contains(&l.name)
                                    {
                                        tracing::warn!(device = %l.name, "device deleted; recreating it with all peers");
                                        if tx2.send(Cmd::Resync("device deleted")).is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                            // Missed notifications: a full pass covers whatever happened.
                            Err(_) => {
                                if tx2.send(Cmd::Resync("link events overflowed")).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                })
                .map_err(|e| BackendError::Invalid(format!("start link watcher: {e}")))?;
        }
        Ok(Dataplane { tx, stats })
    }

    pub async fn prepare(&self) -> Result<Registration, BackendError> {
        let (t, r) = oneshot::channel();
        self.tx.send(Cmd::Prepare(t)).map_err(|_| gone())?;
        r.await.map_err(|_| gone())?
    }

    pub async fn set_own(&self, own: Lease) -> Result<(), BackendError> {
        let (t, r) = oneshot::channel();
        self.tx.send(Cmd::SetOwn(own, t)).map_err(|_| gone())?;
        r.await.map_err(|_| gone())?
    }

    /// A full pass over this peer set; returns when it is applied.
    pub async fn full(&self, peers: Vec<Lease>) -> Result<Report, BackendError> {
        let (t, r) = oneshot::channel();
        self.tx.send(Cmd::Full(peers, t)).map_err(|_| gone())?;
        r.await.map_err(|_| gone())?
    }

    pub fn add(&self, peer: Lease) {
        let _ = self.tx.send(Cmd::Add(peer));
    }

    pub fn remove(&self, key: SubnetKey) {
        let _ = self.tx.send(Cmd::Remove(key));
    }

    pub fn resync(&self) {
        let _ = self.tx.send(Cmd::Resync("timer"));
    }

    /// Every programmed peer with how it is reached (for status).
    pub async fn peers(&self) -> Vec<(Lease, PeerPath)> {
        let (t, r) = oneshot::channel();
        if self.tx.send(Cmd::Peers(t)).is_err() {
            return Vec::new();
        }
        r.await.unwrap_or_default()
    }

    /// The encrypting backend's engine and per-peer counters (`None` for other backends).
    pub async fn tunnel(&self) -> Option<TunnelReport> {
        let (t, r) = oneshot::channel();
        self.tx.send(Cmd::Tunnel(t)).ok()?;
        r.await.ok().flatten()
    }

    pub async fn drift(&self) -> Result<Drift, BackendError> {
        let (t, r) = oneshot::channel();
        self.tx.send(Cmd::Drift(t)).map_err(|_| gone())?;
        r.await.map_err(|_| gone())?
    }

    pub fn stats(&self) -> Arc<Mutex<DataplaneStats>> {
        self.stats.clone()
    }
}

fn record(stats: &Mutex<DataplaneStats>, rec: &Reconciler, report: &Report, m: &Metrics) {
    m.reconcile_runs
        .get_or_create(&label(
            "kind",
            if report.full { "full" } else { "incremental" },
        ))
        .inc();
    m.reconcile_duration.observe(report.duration.as_secs_f64());
    m.kernel_changes.inc_by(report.applied as u64);
    m.reconcile_errors.inc_by(report.errors.len() as u64);
    let mut s = stats.lock().expect("stats lock");
    if report.full {
        s.full_passes += 1;
    } else {
        s.incremental += 1;
    }
    s.objects_applied += report.applied as u64;
    s.errors += report.errors.len() as u64;
    if let Some(e) = report.errors.first() {
        s.last_error = Some(e.clone());
    }
    s.paths = rec.paths();
}

fn log_report(what: &str, report: &Report) {
    if !report.errors.is_empty() {
        tracing::warn!(
            errors = report.errors.len(),
            first = %report.errors[0],
            "{what}: some kernel changes failed; the next pass retries them"
        );
    } else if report.applied > 0 {
        tracing::info!(
            changes = report.applied,
            took_ms = report.duration.as_millis() as u64,
            "{what}: kernel updated"
        );
    }
}

fn run(
    mut rec: Reconciler,
    rx: mpsc::Receiver<Cmd>,
    stats: Arc<Mutex<DataplaneStats>>,
    metrics: Arc<Metrics>,
) {
    let mut ready = false;
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Prepare(reply) => {
                let _ = reply.send(rec.prepare());
            }
            Cmd::SetOwn(own, reply) => {
                let _ = reply.send(rec.set_own(own));
            }
            Cmd::Full(list, reply) => {
                let r = rec.full(list);
                if let Ok(report) = &r {
                    record(&stats, &rec, report, &metrics);
                    log_report("full pass", report);
                }
                ready = true;
                super::memory::release_free();
                let _ = reply.send(r);
            }
            Cmd::Add(l) => {
                super::crash::test_point("dataplane");
                if ready {
                    let report = rec.add(&l);
                    record(&stats, &rec, &report, &metrics);
                    log_report(&format!("peer {} ({})", l.key, l.attrs.public_ip), &report);
                } else {
                    rec.remember(l);
                }
            }
            Cmd::Remove(k) => {
                if ready {
                    let report = rec.remove(&k);
                    record(&stats, &rec, &report, &metrics);
                    log_report(&format!("peer {k} removed"), &report);
                } else {
                    rec.forget(&k);
                }
            }
            Cmd::Peers(reply) => {
                let _ = reply.send(rec.peer_paths());
            }
            Cmd::Resync(why) => {
                // Never before the first full list of peers: it would delete what is still wanted.
                if !ready {
                    continue;
                }
                match rec.resync() {
                    Ok(report) => {
                        record(&stats, &rec, &report, &metrics);
                        log_report(&format!("resync ({why})"), &report);
                        super::memory::release_free();
                    }
                    Err(e) => {
                        metrics.reconcile_errors.inc();
                        let mut s = stats.lock().expect("stats lock");
                        s.errors += 1;
                        s.last_error = Some(e.to_string());
                        tracing::warn!("resync ({why}) failed: {e}");
                    }
                }
            }
            Cmd::Drift(reply) => {
                let _ = reply.send(rec.drift());
            }
            Cmd::Tunnel(reply) => {
                let _ = reply.send(rec.tunnel_report());
            }
        }
    }
}

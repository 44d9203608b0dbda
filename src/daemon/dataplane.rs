//! The data-plane thread: owns the backend and its netlink socket, applies peer changes, and
//! repairs what the kernel reports changed behind podnet's back.
//!
//! Netlink calls block, so they run here on a dedicated OS thread and never on the async
//! runtime. The thread holds the peers it programs (the same `Arc`s as the event loop's peer
//! set), so a repair or a check needs no input from the async side.
//!
//! Once the first full pass is done, a second thread, `kernel-events`, reads the kernel's
//! notifications about links, addresses, routes, neighbours and FDB entries (leaving out those
//! of this thread's own changes) and hands them over; the reconciler repairs exactly the
//! objects they name, or later when something keeps undoing them (it says when: the thread
//! sleeps until then). Right after subscribing, one safety-net check covers what changed
//! between the pass and the subscription. Notifications lost (ENOBUFS) bring one full pass. The
//! safety-net check itself is asked for by the event loop's timer (`--resync-period`); with
//! `--kernel-events=false` there is no reader and those checks are the only repairs.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use tokio::sync::oneshot;

use super::metrics::{Metrics, label};
use crate::backend::reconcile::{Drift, PassKind, PathCounts, Reconciler, Report};
use crate::backend::{Backend, BackendError, PeerPath, Registration, TunnelReport};
use crate::kernel::netlink::{KernelEvent, KernelEvents, Netlink};
use crate::lease::{Lease, SubnetKey};
use crate::util::backoff;
use crate::util::contest::Contested;

/// Counters the daemon exposes (read by the metrics and status endpoints).
#[derive(Debug, Clone, Default)]
pub struct DataplaneStats {
    pub full_passes: u64,
    pub incremental: u64,
    pub objects_applied: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub paths: PathCounts,
    /// Objects put back (or removed) after the kernel reported them changed.
    pub repairs: u64,
    /// Safety-net checks that found the kernel as wanted.
    pub verifications: u64,
    /// Times the kernel's notifications overflowed and a full pass stood in for them.
    pub events_lost: u64,
    /// Whether drift is repaired as the kernel reports it.
    pub kernel_events: bool,
}

enum Cmd {
    Prepare(oneshot::Sender<Result<Registration, BackendError>>),
    SetOwn(Lease, oneshot::Sender<Result<(), BackendError>>),
    Full(
        Vec<Arc<Lease>>,
        oneshot::Sender<Result<Report, BackendError>>,
    ),
    Add(Arc<Lease>),
    Remove(SubnetKey),
    Peers(oneshot::Sender<Vec<(Arc<Lease>, PeerPath)>>),
    /// The safety-net check.
    Verify,
    Kernel(Vec<KernelEvent>),
    /// The kernel dropped notifications.
    EventsLost,
    Drift(oneshot::Sender<Result<Drift, BackendError>>),
    Tunnel(oneshot::Sender<Option<TunnelReport>>),
    Contested(oneshot::Sender<Vec<Contested>>),
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
    /// Starts the thread with its own netlink socket (in the daemon's namespace). `ext` is the
    /// external interface's index; `kernel_events` turns on repairs as the kernel reports drift.
    pub fn start(
        backend: Box<dyn Backend>,
        metrics: Arc<Metrics>,
        ext: u32,
        kernel_events: bool,
    ) -> Result<Dataplane, BackendError> {
        let nl = Netlink::open()?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(DataplaneStats {
            kernel_events,
            ..Default::default()
        }));
        let st = State {
            rec: Reconciler::new(backend, nl, ext),
            stats: stats.clone(),
            metrics,
            ready: false,
            events: kernel_events.then(|| tx.clone()),
        };
        thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || st.run(rx))
            .map_err(|e| BackendError::Invalid(format!("start data-plane thread: {e}")))?;
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
    pub async fn full(&self, peers: Vec<Arc<Lease>>) -> Result<Report, BackendError> {
        let (t, r) = oneshot::channel();
        self.tx.send(Cmd::Full(peers, t)).map_err(|_| gone())?;
        r.await.map_err(|_| gone())?
    }

    pub fn add(&self, peer: Arc<Lease>) {
        let _ = self.tx.send(Cmd::Add(peer));
    }

    pub fn remove(&self, key: SubnetKey) {
        let _ = self.tx.send(Cmd::Remove(key));
    }

    /// The safety-net check: the kernel compared with what the peers need, repaired if not.
    pub fn resync(&self) {
        let _ = self.tx.send(Cmd::Verify);
    }

    /// Every programmed peer with how it is reached (for status).
    pub async fn peers(&self) -> Vec<(Arc<Lease>, PeerPath)> {
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

    /// Objects something else keeps undoing (for status).
    pub async fn contested(&self) -> Vec<Contested> {
        let (t, r) = oneshot::channel();
        if self.tx.send(Cmd::Contested(t)).is_err() {
            return Vec::new();
        }
        r.await.unwrap_or_default()
    }

    pub fn stats(&self) -> Arc<Mutex<DataplaneStats>> {
        self.stats.clone()
    }
}

/// The thread's state.
struct State {
    rec: Reconciler,
    stats: Arc<Mutex<DataplaneStats>>,
    metrics: Arc<Metrics>,
    /// The first full pass is done.
    ready: bool,
    /// Where the event reader sends, until it is started (after the first full pass).
    events: Option<mpsc::Sender<Cmd>>,
}

impl State {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            let due = self.rec.next_due().filter(|_| self.ready);
            let cmd = match due {
                Some(t) => match rx.recv_timeout(t.saturating_duration_since(Instant::now())) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                },
            };
            if let Some(c) = cmd {
                self.handle(c);
            }
            if self.ready && self.rec.next_due().is_some_and(|t| t <= Instant::now()) {
                let report = self.rec.run_due(Instant::now());
                self.record(&report, "repair");
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Prepare(reply) => {
                let _ = reply.send(self.rec.prepare());
            }
            Cmd::SetOwn(own, reply) => {
                let _ = reply.send(self.rec.set_own(own));
            }
            Cmd::Full(list, reply) => {
                let r = self.rec.full(list);
                if let Ok(report) = &r {
                    self.record(report, "full pass");
                }
                self.ready = true;
                super::memory::release_free();
                let _ = reply.send(r);
                self.watch_kernel();
            }
            Cmd::Add(l) => {
                super::crash::test_point("dataplane");
                if self.ready {
                    let report = self.rec.add(&l);
                    self.record(&report, &format!("peer {} ({})", l.key, l.attrs.public_ip));
                } else {
                    self.rec.remember(l);
                }
            }
            Cmd::Remove(k) => {
                if self.ready {
                    let report = self.rec.remove(&k);
                    self.record(&report, &format!("peer {k} removed"));
                } else {
                    self.rec.forget(&k);
                }
            }
            Cmd::Peers(reply) => {
                let _ = reply.send(self.rec.peer_paths());
            }
            // Never before the first full list of peers: it would delete what is still wanted.
            Cmd::Verify if self.ready => self.verify(),
            Cmd::Kernel(events) if self.ready => {
                tracing::trace!(?events, "kernel notifications");
                let report = self.rec.on_events(&events, Instant::now());
                self.record(&report, "repair");
            }
            Cmd::EventsLost if self.ready => {
                tracing::warn!(
                    "the kernel's notifications overflowed; comparing everything with a full pass"
                );
                self.metrics.kernel_events_lost.inc();
                self.stats.lock().expect("stats lock").events_lost += 1;
                let report = self.rec.events_lost(Instant::now());
                self.record(&report, "full pass after lost notifications");
            }
            Cmd::Verify | Cmd::Kernel(_) | Cmd::EventsLost => {}
            Cmd::Drift(reply) => {
                let _ = reply.send(self.rec.drift());
            }
            Cmd::Contested(reply) => {
                let _ = reply.send(self.rec.contested(Instant::now()));
            }
            Cmd::Tunnel(reply) => {
                let _ = reply.send(self.rec.tunnel_report());
            }
        }
    }

    /// The safety-net check.
    fn verify(&mut self) {
        match self.rec.verify() {
            Ok(report) => self.record(&report, "safety-net check"),
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                let mut s = self.stats.lock().expect("stats lock");
                s.errors += 1;
                s.last_error = Some(e.to_string());
                tracing::warn!("safety-net check failed: {e}");
            }
        }
    }

    /// Starts the event reader, once, and checks what changed before it listened.
    fn watch_kernel(&mut self) {
        let Some(tx) = self.events.take() else {
            return;
        };
        let started = KernelEvents::subscribe(Some(self.rec.port_id())).and_then(|events| {
            thread::Builder::new()
                .name("kernel-events".into())
                .spawn(move || read_events(events, tx))
                .map_err(|e| crate::kernel::KernelError::Other(format!("start it: {e}")))
        });
        match started {
            Ok(_) => self.verify(),
            Err(e) => tracing::warn!(
                "cannot follow the kernel's notifications ({e}); drift is repaired by the \
                 periodic checks only (--resync-period)"
            ),
        }
    }

    /// Counts and logs what a report did. Repairs that found nothing to do leave no trace.
    fn record(&mut self, report: &Report, what: &str) {
        let quiet = report.applied == 0 && report.errors.is_empty() && report.repaired.is_empty();
        if report.kind == PassKind::Repair && quiet {
            self.refresh_gauges();
            return;
        }
        let m = &self.metrics;
        m.reconcile_runs
            .get_or_create(&label("kind", report.kind.label()))
            .inc();
        m.reconcile_duration.observe(report.duration.as_secs_f64());
        m.kernel_changes.inc_by(report.applied as u64);
        m.reconcile_errors.inc_by(report.errors.len() as u64);
        for kind in &report.repaired {
            m.drift_repairs.get_or_create(&label("object", kind)).inc();
        }
        {
            let mut s = self.stats.lock().expect("stats lock");
            match report.kind {
                PassKind::Full => s.full_passes += 1,
                PassKind::Incremental => s.incremental += 1,
                PassKind::Verify => s.verifications += 1,
                PassKind::Repair => {}
            }
            s.repairs += report.repaired.len() as u64;
            s.objects_applied += report.applied as u64;
            s.errors += report.errors.len() as u64;
            if let Some(e) = report.errors.first() {
                s.last_error = Some(e.clone());
            }
            s.paths = self.rec.paths();
        }
        if report.kind == PassKind::Full {
            super::memory::release_free();
        }
        self.refresh_gauges();
        log_report(what, report);
    }

    fn refresh_gauges(&self) {
        let n = self.rec.contested_count(Instant::now());
        let g = self
            .metrics
            .contested
            .get_or_create(&label("component", "dataplane"));
        g.set(n as i64);
    }
}

/// The `kernel-events` thread: notifications in, commands out, until the data plane goes.
fn read_events(mut events: KernelEvents, tx: mpsc::Sender<Cmd>) {
    let mut backoff = backoff::NOTIFICATIONS;
    loop {
        let sent = match events.recv() {
            Ok(batch) => {
                backoff.reset();
                let events_ok =
                    batch.events.is_empty() || tx.send(Cmd::Kernel(batch.events)).is_ok();
                events_ok && (!batch.overflowed || tx.send(Cmd::EventsLost).is_ok())
            }
            Err(e) => {
                // Not an overflow: something is wrong with the socket. Say so, wait, and have
                // everything compared, without spinning.
                tracing::warn!("reading the kernel's notifications: {e}");
                thread::sleep(backoff.next_delay());
                tx.send(Cmd::EventsLost).is_ok()
            }
        };
        if !sent {
            return;
        }
    }
}

fn log_report(what: &str, report: &Report) {
    if !report.errors.is_empty() {
        tracing::warn!(
            errors = report.errors.len(),
            first = %report.errors[0],
            "{what}: some kernel changes failed; trying again shortly"
        );
    } else if report.applied > 0 {
        tracing::info!(
            changes = report.applied,
            took_ms = report.duration.as_millis() as u64,
            "{what}: kernel updated"
        );
    }
}

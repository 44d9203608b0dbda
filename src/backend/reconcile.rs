//! The reconciler: keeps the kernel in line with what the peers need.
//!
//! A backend turns one peer lease into the kernel objects that make its subnet reachable
//! (`Backend::plan_peer`). The reconciler holds the union of those plans as the desired state,
//! reads what podnet owns in the kernel (see `crate::owned`: routes with protocol 86, permanent
//! neighbour and FDB entries on the backend's own devices) and applies only the difference. One
//! diff serves every path: a full pass diffs everything against the kernel; a single peer's
//! change diffs its new plan against its old one; drift is the full diff, not applied.
//!
//! Drift is found three ways, cheapest first:
//! - a notification from the kernel (`on_events`) names one object; `drift::classify` says
//!   whether it is podnet's and wrong, and that object alone is put back (or removed) — at once,
//!   or with growing delays when something keeps undoing it (`util::contest`);
//! - the safety net (`verify`, every `--resync-period`): the devices are checked, then a digest
//!   of what podnet owns in the kernel is compared with the desired one (`drift::Digest`), one
//!   dump per kind with nothing allocated per object;
//! - a full pass (`resync`): every peer re-planned and everything diffed — at start, when the
//!   digests differ, after lost notifications or a change of the underlay, and to retry after
//!   kernel changes failed.
//!
//! Invariants:
//! - nothing outside `owned` is ever changed or deleted;
//! - installs go in dependency order (neighbour and FDB before the route, so the kernel never
//!   resolves a gateway itself), removals after installs;
//! - a full pass runs only once the complete peer list is known (a restart must not delete
//!   what is still wanted); before that, single events are remembered, not applied;
//! - the desired digest is always that of the programmed plans (`Desired` keeps it);
//! - a peer's route goes to its subnet and its neighbour is its subnet's address, which is how
//!   a notification finds the plan it belongs to (IPv4 through the plans' order, IPv6 through
//!   `Desired::v6`, kept with every insert and removal).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};

use super::drift::{self, Action, Devices, Digest, Object, Wanted};
use super::{Backend, BackendError, PeerObjects, PeerPath, PeerPlan, Registration};
use crate::kernel::netlink::{Change, Fdb, KernelEvent, Neighbour, Netlink, Route};
use crate::kernel::{KernelError, Mac};
use crate::lease::{Lease, SubnetKey};
use crate::owned::RTPROT_PODNET;
use crate::util::contest::{self, Contest, Contested};

/// What kind of work a report describes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PassKind {
    /// One peer's change.
    #[default]
    Incremental,
    /// Every peer re-planned and everything diffed.
    Full,
    /// Objects put back after notifications.
    Repair,
    /// The safety net found the kernel as wanted.
    Verify,
}

impl PassKind {
    pub fn label(self) -> &'static str {
        match self {
            PassKind::Incremental => "incremental",
            PassKind::Full => "full",
            PassKind::Repair => "repair",
            PassKind::Verify => "verify",
        }
    }
}

/// What one pass changed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub kind: PassKind,
    pub applied: usize,
    pub errors: Vec<String>,
    pub duration: Duration,
    /// Objects put back or removed after notifications, by kind (`drift::Object::kind`).
    pub repaired: Vec<&'static str>,
}

impl Report {
    fn merge(&mut self, other: Report) {
        if other.kind == PassKind::Full {
            self.kind = PassKind::Full;
        }
        self.applied += other.applied;
        self.errors.extend(other.errors);
        self.repaired.extend(other.repaired);
    }
}

/// Peers by how they are reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathCounts {
    pub direct: usize,
    pub tunnel: usize,
    pub skipped: usize,
    pub other_backend: usize,
}

/// Differences between what should be in the kernel and what is, one line per object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// The first and the longest wait before trying again after kernel changes failed.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
const DIGEST_RETRIES: usize = 8;
/// More changes to podnet's objects than this in one batch of notifications are compared all
/// at once rather than repaired one by one (someone flushed a table, a device went).
const STORM: usize = 256;

/// The desired state: each programmed peer's plan, and the digest of all their objects.
#[derive(Default)]
struct Desired {
    plans: BTreeMap<SubnetKey, PeerPlan>,
    /// The keys of the plans by the start of their IPv6 subnet (the plans are ordered by the
    /// IPv4 half).
    v6: HashMap<Ipv6Addr, SubnetKey>,
    digest: Digest,
}

impl Desired {
    /// The desired state of a full pass, built at once: a `BTreeMap` collected from sorted
    /// entries fills its nodes, where inserting in key order one by one leaves them half empty.
    fn from_plans(plans: Vec<(SubnetKey, PeerPlan)>) -> Desired {
        let mut d = Desired::default();
        for (key, plan) in &plans {
            d.digest.add(&plan.objects);
            if let Some(n) = key.v6 {
                d.v6.insert(n.network(), *key);
            }
        }
        d.plans = plans
            .into_iter()
            .map(|(k, mut p)| {
                p.objects.shrink_to_fit();
                (k, p)
            })
            .collect();
        d
    }

    /// Invariant: a stored plan has no spare capacity (`PeerObjects::shrink_to_fit`); it lives
    /// as long as its peer.
    fn insert(&mut self, key: SubnetKey, mut plan: PeerPlan) {
        plan.objects.shrink_to_fit();
        self.digest.add(&plan.objects);
        if let Some(n) = key.v6 {
            self.v6.insert(n.network(), key);
        }
        if let Some(old) = self.plans.insert(key, plan) {
            self.digest.sub(&old.objects);
        }
    }

    fn remove(&mut self, key: &SubnetKey) -> Option<PeerPlan> {
        let old = self.plans.remove(key)?;
        if let Some(n) = key.v6
            && self.v6.get(&n.network()) == Some(key)
        {
            self.v6.remove(&n.network());
        }
        self.digest.sub(&old.objects);
        Some(old)
    }

    fn clear(&mut self) {
        self.plans.clear();
        self.v6.clear();
        self.digest = Digest::default();
    }

    /// The plans whose subnet (of the address's family) starts at `addr`.
    fn at_ip(&self, addr: IpAddr) -> Box<dyn Iterator<Item = &PeerPlan> + '_> {
        match addr {
            IpAddr::V4(a) => Box::new(self.at(a)),
            IpAddr::V6(a) => Box::new(self.v6.get(&a).and_then(|k| self.plans.get(k)).into_iter()),
        }
    }

    /// The plans of the peers whose subnet starts at `addr`.
    fn at(&self, addr: Ipv4Addr) -> impl Iterator<Item = &PeerPlan> {
        let start = SubnetKey {
            v4: Ipv4Net::new(addr, 0).ok(),
            v6: None,
        };
        self.plans
            .range(start..)
            .take_while(move |(k, _)| k.v4.is_some_and(|n| n.addr() == addr))
            .map(|(_, p)| p)
    }

    /// Every object of every plan, as one set (for a full pass and for status).
    fn union(&self) -> PeerObjects {
        let mut d = PeerObjects::default();
        for plan in self.plans.values() {
            d.neighbours.extend(plan.objects.neighbours.iter().cloned());
            d.fdb.extend(plan.objects.fdb.iter().cloned());
            d.routes.extend(plan.objects.routes.iter().cloned());
        }
        d
    }
}

impl Wanted for Desired {
    fn route(&self, table: u32, dst: IpNet) -> Option<&Route> {
        self.at_ip(dst.addr())
            .flat_map(|p| &p.objects.routes)
            .find(|r| r.table == table && r.dst == dst)
    }

    fn neighbour(&self, index: u32, ip: IpAddr) -> Option<&Neighbour> {
        self.at_ip(ip)
            .flat_map(|p| &p.objects.neighbours)
            .find(|n| n.index == index && n.ip == ip)
    }

    fn fdb(&self, index: u32, mac: Mac) -> Option<&Fdb> {
        // No index by address: a scan, only ever for a notification about our own device.
        self.plans
            .values()
            .flat_map(|p| &p.objects.fdb)
            .find(|f| f.index == index && f.mac == mac)
    }
}

/// Keeps the kernel in line with the backend's view of the peers.
pub struct Reconciler {
    backend: Box<dyn Backend>,
    nl: Netlink,
    own: Option<Lease>,
    /// Every peer lease known (other backends' too), shared with the event loop's peer set.
    leases: BTreeMap<SubnetKey, Arc<Lease>>,
    /// Plans of the peers of our backend, as last programmed.
    desired: Desired,
    other_backend: usize,
    /// Skip reasons already logged, so a steady state does not log on every pass.
    logged_skips: HashMap<SubnetKey, String>,
    /// What the objects stand on, for classifying notifications.
    devices: Devices,
    /// Objects found undone, and when to repair them.
    contest: Contest<Object>,
    /// Removals waiting for their time: objects with podnet's mark that nobody wants.
    removals: HashMap<Object, Change>,
    /// The underlay changed (or notifications were lost): the next check re-plans every peer.
    replan: bool,
    /// After kernel changes failed: when to try again, and the wait after that.
    retry: Option<Instant>,
    retry_delay: Duration,
}

fn route_key(r: &Route) -> (u32, IpNet, Option<u32>) {
    (r.table, r.dst, r.metric)
}

fn neigh_key(n: &Neighbour) -> (u32, IpAddr) {
    (n.index, n.ip)
}

fn fdb_key(f: &Fdb) -> (u32, Mac) {
    (f.index, f.mac)
}

/// The changes that turn `actual` into `desired`: installs in dependency order (neighbours, FDB,
/// routes), then removals (routes first, so no route is left pointing at a removed neighbour).
fn diff(desired: &PeerObjects, actual: &PeerObjects) -> Vec<Change> {
    let a_n: HashMap<_, _> = actual
        .neighbours
        .iter()
        .map(|n| (neigh_key(n), n))
        .collect();
    let a_f: HashMap<_, _> = actual.fdb.iter().map(|f| (fdb_key(f), f)).collect();
    let a_r: HashMap<_, _> = actual.routes.iter().map(|r| (route_key(r), r)).collect();
    let mut changes = Vec::new();
    for n in &desired.neighbours {
        if a_n.get(&neigh_key(n)).is_none_or(|a| a.mac != n.mac) {
            changes.push(Change::ReplaceNeighbour(n.clone()));
        }
    }
    for f in &desired.fdb {
        if a_f.get(&fdb_key(f)).is_none_or(|a| a.dst != f.dst) {
            changes.push(Change::ReplaceFdb(f.clone()));
        }
    }
    for r in &desired.routes {
        if a_r
            .get(&route_key(r))
            .is_none_or(|a| !drift::same_route(a, r))
        {
            changes.push(Change::ReplaceRoute(r.clone()));
        }
    }
    let d_r: HashSet<_> = desired.routes.iter().map(route_key).collect();
    let d_f: HashSet<_> = desired.fdb.iter().map(fdb_key).collect();
    let d_n: HashSet<_> = desired.neighbours.iter().map(neigh_key).collect();
    let stale_routes = actual
        .routes
        .iter()
        .filter(|r| !d_r.contains(&route_key(r)));
    let stale_fdb = actual.fdb.iter().filter(|f| !d_f.contains(&fdb_key(f)));
    let stale_neigh = actual
        .neighbours
        .iter()
        .filter(|n| !d_n.contains(&neigh_key(n)));
    changes.extend(stale_routes.cloned().map(Change::DelRoute));
    changes.extend(stale_fdb.cloned().map(Change::DelFdb));
    changes.extend(stale_neigh.cloned().map(Change::DelNeighbour));
    changes
}

/// Installs before removals; neighbours and FDB entries before the routes that use them, and
/// routes removed before what they use.
fn rank(c: &Change) -> u8 {
    match c {
        Change::LinkUp(_) | Change::AddAddr(_) => 0,
        Change::ReplaceNeighbour(_) => 1,
        Change::ReplaceFdb(_) => 2,
        Change::ReplaceRoute(_) => 3,
        Change::DelRoute(_) => 4,
        Change::DelFdb(_) => 5,
        Change::DelNeighbour(_) => 6,
    }
}

impl Reconciler {
    /// `ext` is the external interface's index: its changes can flush routes without a
    /// notification per route.
    pub fn new(backend: Box<dyn Backend>, nl: Netlink, ext: u32) -> Reconciler {
        Reconciler {
            devices: Devices {
                names: backend.device_names(),
                ext,
                ..Default::default()
            },
            backend,
            nl,
            own: None,
            leases: BTreeMap::new(),
            desired: Desired::default(),
            other_backend: 0,
            logged_skips: HashMap::new(),
            contest: Contest::new(contest::DEFAULT),
            removals: HashMap::new(),
            replan: false,
            retry: None,
            retry_delay: RETRY_MIN,
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The port id of the reconciler's netlink socket: notifications of its own changes carry
    /// it, so the event reader can leave them out.
    pub fn port_id(&self) -> u32 {
        self.nl.port_id()
    }

    pub fn prepare(&mut self) -> Result<Registration, BackendError> {
        let r = self.backend.prepare(&mut self.nl);
        self.refresh_devices();
        r
    }

    pub fn set_own(&mut self, own: Lease) -> Result<(), BackendError> {
        self.backend.ensure_local(&mut self.nl, &own)?;
        self.refresh_devices();
        self.own = Some(own);
        Ok(())
    }

    fn refresh_devices(&mut self) {
        self.devices.indexes = self.backend.devices();
        self.devices.owned = self.backend.owned_links();
    }

    /// The peer's plan, or `None` for a lease of another backend; skips are logged once.
    fn plan(&mut self, peer: &Lease) -> Option<PeerPlan> {
        if !self.backend.accepts(peer) {
            self.log_skip(
                peer,
                "backend",
                format_args!(
                    "skipping a peer whose lease is for another backend ({:?}, ours is {})",
                    peer.attrs.backend_type,
                    self.backend.type_name()
                ),
            );
            return None;
        }
        let plan = self.backend.plan_peer(&mut self.nl, peer);
        match &plan.path {
            PeerPath::Skipped(reason) => {
                let reason = reason.clone();
                self.log_skip(peer, &reason, format_args!("peer not programmed: {reason}"));
            }
            _ => {
                self.logged_skips.remove(&peer.key);
            }
        }
        Some(plan)
    }

    fn log_skip(&mut self, peer: &Lease, why: &str, msg: std::fmt::Arguments<'_>) {
        if self.logged_skips.get(&peer.key).map(String::as_str) != Some(why) {
            tracing::warn!(peer = %peer.key, public_ip = %peer.attrs.public_ip, "{msg}");
            self.logged_skips.insert(peer.key, why.to_string());
        }
    }

    /// What podnet owns in the kernel now.
    fn actual(&mut self) -> Result<PeerObjects, BackendError> {
        let owned = self.backend.owned_links();
        let routes: Vec<Route> = self
            .nl
            .routes()?
            .into_iter()
            .filter(|r| r.protocol == RTPROT_PODNET)
            .collect();
        let mut objects = PeerObjects {
            routes,
            ..Default::default()
        };
        if !owned.is_empty() {
            objects.neighbours = self
                .nl
                .neighbours(None)?
                .into_iter()
                .filter(|n| n.permanent && owned.contains(&n.index))
                .collect();
            objects.fdb = self
                .nl
                .fdb(None)?
                .into_iter()
                .filter(|f| f.permanent && f.own && owned.contains(&f.index))
                .collect();
        }
        Ok(objects)
    }

    /// The digest of what podnet owns in the kernel now: one dump per kind, nothing kept.
    fn actual_digest(&mut self) -> Result<Digest, BackendError> {
        let owned = self.backend.owned_links();
        for _ in 0..DIGEST_RETRIES {
            let mut d = Digest::default();
            let mut complete = self.nl.visit_routes(&mut |r| {
                if r.protocol == RTPROT_PODNET {
                    d.routes.add(drift::route_hash(r));
                }
            })?;
            if complete && !owned.is_empty() {
                complete = self.nl.visit_neighbours(&mut |n| {
                    if n.permanent && owned.contains(&n.index) {
                        d.neighbours.add(drift::neighbour_hash(n));
                    }
                })?;
            }
            if complete && !owned.is_empty() {
                complete = self.nl.visit_fdb(&mut |f| {
                    if f.permanent && f.own && owned.contains(&f.index) {
                        d.fdb.add(drift::fdb_hash(f));
                    }
                })?;
            }
            if complete {
                return Ok(d);
            }
        }
        Err(KernelError::netlink("dump podnet's objects (changing too fast)", libc::EINTR).into())
    }

    fn apply(&mut self, mut changes: Vec<Change>, start: Instant, kind: PassKind) -> Report {
        let mut report = Report {
            kind,
            ..Default::default()
        };
        changes.sort_by_key(rank);
        for (change, result) in changes.iter().zip(self.nl.apply(&changes)) {
            match result {
                Ok(()) => report.applied += 1,
                // Already gone is what a removal wants.
                Err(e) if change.is_removal() && e.is_not_found() => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        report.duration = start.elapsed();
        report
    }

    /// A full pass over this set of peers.
    pub fn full(&mut self, peers: Vec<Arc<Lease>>) -> Result<Report, BackendError> {
        let own = self.own.as_ref().map(|o| o.key);
        self.leases = peers
            .into_iter()
            .filter(|l| Some(l.key) != own)
            .map(|l| (l.key, l))
            .collect();
        self.resync()
    }

    /// Peers known before the first full pass (which replaces them all).
    pub fn remember(&mut self, peer: Arc<Lease>) {
        self.leases.insert(peer.key, peer);
    }

    pub fn forget(&mut self, key: &SubnetKey) {
        self.leases.remove(key);
    }

    /// Re-plans every known peer.
    fn replan_all(&mut self) {
        self.desired.clear();
        self.other_backend = 0;
        let leases = std::mem::take(&mut self.leases);
        let mut plans = Vec::with_capacity(leases.len());
        for p in leases.values() {
            match self.plan(p) {
                Some(plan) => plans.push((p.key, plan)),
                None => self.other_backend += 1,
            }
        }
        self.desired = Desired::from_plans(plans);
        self.leases = leases;
        let reachable: Vec<&Lease> = self
            .desired
            .plans
            .iter()
            .filter(|(_, plan)| !matches!(plan.path, PeerPath::Skipped(_)))
            .filter_map(|(k, _)| self.leases.get(k).map(|l| l.as_ref()))
            .collect();
        self.backend.peers_reset(&reachable);
    }

    /// A full pass over the peers known now: every peer re-planned, everything diffed.
    pub fn resync(&mut self) -> Result<Report, BackendError> {
        let r = self.full_pass();
        let failed = r.as_ref().map_or(true, |r| !r.errors.is_empty());
        if failed {
            self.retry_later();
        } else {
            self.retry = None;
            self.retry_delay = RETRY_MIN;
        }
        r
    }

    fn full_pass(&mut self) -> Result<Report, BackendError> {
        let start = Instant::now();
        let own = self
            .own
            .as_ref()
            .ok_or_else(|| BackendError::Invalid("full pass before the own lease is set".into()))?;
        self.backend.ensure_local(&mut self.nl, own)?;
        self.refresh_devices();
        self.replan_all();
        self.replan = false;
        let changes = diff(&self.desired.union(), &self.actual()?);
        Ok(self.apply(changes, start, PassKind::Full))
    }

    fn retry_later(&mut self) {
        self.retry = Some(Instant::now() + self.retry_delay);
        self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
    }

    /// The safety net: the devices, then the digest of what podnet owns in the kernel against
    /// the desired one. A full pass only when they differ, the underlay changed, or earlier
    /// changes failed; otherwise nothing is allocated per object and nothing is written.
    pub fn verify(&mut self) -> Result<Report, BackendError> {
        let start = Instant::now();
        let own = self
            .own
            .as_ref()
            .ok_or_else(|| BackendError::Invalid("check before the own lease is set".into()))?;
        self.backend.ensure_local(&mut self.nl, own)?;
        self.refresh_devices();
        if !self.replan && self.retry.is_none() {
            if self.actual_digest()? == self.desired.digest {
                return Ok(Report {
                    kind: PassKind::Verify,
                    duration: start.elapsed(),
                    ..Default::default()
                });
            }
            tracing::info!("the kernel differs from what the peers need; making a full pass");
        }
        self.resync()
    }

    /// Notifications from the kernel: each is classified (`drift::classify`); what is
    /// podnet's and wrong is scheduled for repair, at once unless something keeps undoing it,
    /// and whatever is due is done. Two cases take one repair instead of one per object: the
    /// objects' device is gone, down or rebuilt (its repair covers them), and a storm of changes
    /// to podnet's objects (more than `STORM`: everything is compared).
    pub fn on_events(&mut self, events: &[KernelEvent], now: Instant) -> Report {
        let ours = events.iter().filter(|e| self.on_our_objects(e)).count();
        let covered = if ours > 0 && !self.devices_ok() {
            self.contest.undone(Object::Devices, now);
            true
        } else if ours > STORM {
            tracing::info!(changes = ours, "many of podnet's objects changed at once");
            self.contest.undone(Object::Everything, now);
            true
        } else {
            false
        };
        for ev in events {
            if covered && self.on_our_objects(ev) {
                continue;
            }
            match drift::classify(ev, &self.desired, &self.devices) {
                Action::Ignore => {}
                Action::Settled(key) => self.contest.settled(&key),
                Action::Repair(key) => {
                    self.removals.remove(&key);
                    self.contest.undone(key, now);
                }
                Action::Remove(key, change) => {
                    self.removals.insert(key, change);
                    self.contest.undone(key, now);
                }
                Action::CheckDevice => {
                    if !self.devices_ok() {
                        self.contest.undone(Object::Devices, now);
                    }
                }
                Action::Underlay => self.replan = true,
            }
        }
        self.run_due(now)
    }

    /// Whether a notification is about one of podnet's routes, neighbours or FDB entries (or
    /// a route through its devices).
    fn on_our_objects(&self, e: &KernelEvent) -> bool {
        let d = &self.devices;
        match e {
            KernelEvent::Route { route, .. } => {
                route.protocol == RTPROT_PODNET || route.oif.is_some_and(|o| d.indexes.contains(&o))
            }
            KernelEvent::Neighbour { neighbour, .. } => d.owned.contains(&neighbour.index),
            KernelEvent::Fdb { fdb, .. } => d.owned.contains(&fdb.index),
            KernelEvent::Link { .. } | KernelEvent::Addr { .. } => false,
        }
    }

    /// Whether the backend's devices are as they should be (one look at the kernel).
    fn devices_ok(&mut self) -> bool {
        self.backend.device_ok(&mut self.nl).unwrap_or_else(|e| {
            tracing::warn!("check the backend's devices: {e}");
            false
        })
    }

    /// Notifications were lost: every peer is re-planned and everything compared.
    pub fn events_lost(&mut self, now: Instant) -> Report {
        self.replan = true;
        self.contest.undone(Object::Lost, now);
        self.run_due(now)
    }

    /// When the next waiting repair or retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.contest.next_due(), self.retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The change that puts an object back as wanted, or removes it if nobody wants it.
    fn fix(&mut self, key: &Object) -> Option<Change> {
        let wanted = match *key {
            Object::Route { table, dst } => self
                .desired
                .route(table, dst)
                .cloned()
                .map(Change::ReplaceRoute),
            Object::Neighbour { index, ip } => self
                .desired
                .neighbour(index, ip)
                .cloned()
                .map(Change::ReplaceNeighbour),
            Object::Fdb { index, mac } => self
                .desired
                .fdb(index, mac)
                .cloned()
                .map(Change::ReplaceFdb),
            Object::Devices | Object::Everything | Object::Lost => None,
        };
        let removal = self.removals.remove(key);
        wanted.or(removal)
    }

    /// Runs the repairs (and a retry after failures) due by `now`.
    pub fn run_due(&mut self, now: Instant) -> Report {
        let start = Instant::now();
        self.contest.expire(now);
        let mut everything = self.retry.is_some_and(|t| t <= now);
        let mut changes = Vec::new();
        let mut repaired = Vec::new();
        // One pass, however many reasons were due for it.
        let mut pass = None;
        for key in self.contest.take_due(now) {
            match key {
                Object::Everything | Object::Lost => {
                    everything = true;
                    pass = Some(key.kind());
                }
                Object::Devices => {
                    everything = true;
                    repaired.push(key.kind());
                }
                _ => match self.fix(&key) {
                    Some(c) => {
                        changes.push(c);
                        repaired.push(key.kind());
                    }
                    None => continue,
                },
            }
            self.contest.repaired(&key);
            self.log_repair(&key);
        }
        repaired.extend(pass);
        let mut report = self.apply(changes, start, PassKind::Repair);
        report.repaired = repaired;
        if !report.errors.is_empty() {
            self.retry_later();
        }
        if everything {
            match self.verify() {
                Ok(r) => report.merge(r),
                Err(e) => {
                    report.errors.push(e.to_string());
                    self.retry_later();
                }
            }
        }
        report.duration = start.elapsed();
        report
    }

    fn log_repair(&self, key: &Object) {
        // Not a change seen to one of podnet's objects: a reason to look at all of them.
        match key {
            Object::Lost => {
                tracing::info!(
                    "comparing every peer's objects with the kernel (notifications were lost)"
                );
                return;
            }
            Object::Everything => {
                tracing::info!(
                    "comparing every peer's objects with the kernel (the node's interface or \
                     its addresses changed, or many objects changed at once)"
                );
                return;
            }
            _ => {}
        }
        let what = self.describe(key);
        match self.contest.record(key) {
            Some(r) if r.undone > 1 => tracing::warn!(
                undone = r.undone,
                repairs = r.repairs,
                for_s = r.last.duration_since(r.first).as_secs(),
                "{what} keeps being changed behind podnet's back; putting it back"
            ),
            _ => tracing::warn!("{what} was changed behind podnet's back; putting it back"),
        }
    }

    /// An object as status shows it: the wanted object in full when there is one.
    fn describe(&self, key: &Object) -> String {
        let full = match *key {
            Object::Route { table, dst } => {
                self.desired.route(table, dst).map(|r| format!("route {r}"))
            }
            Object::Neighbour { index, ip } => self
                .desired
                .neighbour(index, ip)
                .map(|n| format!("neighbour {n} on #{index}")),
            Object::Fdb { index, mac } => self
                .desired
                .fdb(index, mac)
                .map(|f| format!("fdb {f} on #{index}")),
            Object::Devices | Object::Everything | Object::Lost => None,
        };
        full.unwrap_or_else(|| key.to_string())
    }

    /// Objects something else keeps undoing (lost notifications are nobody's doing).
    pub fn contested(&self, now: Instant) -> Vec<Contested> {
        self.contest
            .report(now, |k| *k != Object::Lost, |k| self.describe(k))
    }

    pub fn contested_count(&self, now: Instant) -> usize {
        self.contest
            .contested(now)
            .filter(|(k, _)| **k != Object::Lost)
            .count()
    }

    /// A peer appeared or changed: its new plan is diffed against what was programmed for it.
    pub fn add(&mut self, peer: &Arc<Lease>) -> Report {
        let start = Instant::now();
        if self.own.as_ref().is_some_and(|o| o.key == peer.key) {
            return Report::default();
        }
        self.leases.insert(peer.key, peer.clone());
        let Some(plan) = self.plan(peer) else {
            // The lease is now for another backend: what we programmed for it goes.
            return self.unprogram(&peer.key, start);
        };
        let old = self
            .desired
            .remove(&peer.key)
            .map(|p| p.objects)
            .unwrap_or_default();
        let changes = diff(&plan.objects, &old);
        if matches!(plan.path, PeerPath::Skipped(_)) {
            self.backend.peer_down(&peer.key);
        } else {
            self.backend.peer_up(peer);
        }
        self.desired.insert(peer.key, plan);
        self.apply(changes, start, PassKind::Incremental)
    }

    /// A peer went away.
    pub fn remove(&mut self, key: &SubnetKey) -> Report {
        self.logged_skips.remove(key);
        self.leases.remove(key);
        self.unprogram(key, Instant::now())
    }

    fn unprogram(&mut self, key: &SubnetKey, start: Instant) -> Report {
        self.backend.peer_down(key);
        let old = self
            .desired
            .remove(key)
            .map(|p| p.objects)
            .unwrap_or_default();
        let changes = diff(&PeerObjects::default(), &old);
        self.apply(changes, start, PassKind::Incremental)
    }

    /// Peers by how they are reached, as last programmed.
    pub fn paths(&self) -> PathCounts {
        let mut c = PathCounts {
            other_backend: self.other_backend,
            ..Default::default()
        };
        for plan in self.desired.plans.values() {
            match plan.path {
                PeerPath::Direct => c.direct += 1,
                PeerPath::Tunnel => c.tunnel += 1,
                PeerPath::Skipped(_) => c.skipped += 1,
            }
        }
        c
    }

    /// Every programmed peer with its path.
    pub fn peer_paths(&self) -> Vec<(Arc<Lease>, PeerPath)> {
        self.desired
            .plans
            .iter()
            .filter_map(|(k, p)| Some((self.leases.get(k)?.clone(), p.path.clone())))
            .collect()
    }

    /// The backend's tunnel engine and per-peer counters, if it encrypts.
    pub fn tunnel_report(&mut self) -> Option<super::TunnelReport> {
        self.backend.tunnel_report()
    }

    /// Compares the kernel with the desired state without changing anything.
    pub fn drift(&mut self) -> Result<Drift, BackendError> {
        let mut drift = Drift::default();
        for c in diff(&self.desired.union(), &self.actual()?) {
            if c.is_removal() {
                drift.unexpected.push(c.subject());
            } else {
                drift.missing.push(c.subject());
            }
        }
        Ok(drift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::{RTN_UNICAST, SCOPE_UNIVERSE, TABLE_MAIN};

    fn route(dst: &str, gw: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            table: TABLE_MAIN,
            protocol: RTPROT_PODNET,
            scope: SCOPE_UNIVERSE,
            kind: RTN_UNICAST,
            onlink: true,
            metric: None,
            prefsrc: None,
        }
    }

    #[test]
    fn diff_installs_missing_fixes_changed_removes_stale() {
        let mac: Mac = "02:00:00:00:00:01".parse().unwrap();
        let desired = PeerObjects {
            neighbours: vec![Neighbour {
                index: 5,
                ip: "10.244.2.0".parse().unwrap(),
                mac: Some(mac),
                permanent: true,
            }],
            fdb: vec![Fdb {
                index: 5,
                mac,
                dst: Some("198.18.0.12".parse().unwrap()),
                permanent: true,
                own: true,
            }],
            routes: vec![
                route("10.244.2.0/24", "10.244.2.0", 5),
                route("10.244.3.0/24", "10.244.3.0", 5),
            ],
        };
        let actual = PeerObjects {
            routes: vec![
                route("10.244.3.0/24", "10.244.9.0", 5),
                route("10.244.4.0/24", "10.244.4.0", 5),
            ],
            neighbours: vec![Neighbour {
                index: 5,
                ip: "10.244.2.0".parse().unwrap(),
                mac: Some(mac),
                permanent: true,
            }],
            fdb: vec![],
        };
        let changes = diff(&desired, &actual);
        assert_eq!(
            changes,
            vec![
                Change::ReplaceFdb(desired.fdb[0].clone()),
                Change::ReplaceRoute(desired.routes[0].clone()),
                Change::ReplaceRoute(desired.routes[1].clone()),
                Change::DelRoute(route("10.244.4.0/24", "10.244.4.0", 5)),
            ]
        );
        // In sync: nothing to do.
        let synced = desired.clone();
        assert!(diff(&desired, &synced).is_empty());
    }

    #[test]
    fn one_peers_change_is_the_same_diff_and_drift_reads_as_objects() {
        let old = PeerObjects {
            routes: vec![route("10.244.2.0/24", "10.244.2.0", 5)],
            ..Default::default()
        };
        let new = PeerObjects {
            routes: vec![route("10.244.2.0/24", "198.18.0.12", 2)],
            ..Default::default()
        };
        let c = diff(&new, &old);
        assert_eq!(c, vec![Change::ReplaceRoute(new.routes[0].clone())]);
        assert_eq!(
            c[0].to_string(),
            "replace route 10.244.2.0/24 via 198.18.0.12 dev #2 onlink"
        );
        let gone = diff(&PeerObjects::default(), &old);
        assert_eq!(gone, vec![Change::DelRoute(old.routes[0].clone())]);
        assert!(gone[0].is_removal());
        assert_eq!(
            gone[0].subject(),
            "route 10.244.2.0/24 via 10.244.2.0 dev #5 onlink"
        );
    }
}

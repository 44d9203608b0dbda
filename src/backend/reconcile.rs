//! The reconciler: keeps the kernel in line with what the peers need.
//!
//! A backend turns one peer lease into the kernel objects that make its subnet reachable
//! (`Backend::plan_peer`). The reconciler holds the union of those plans as the desired state,
//! reads what podnet owns in the kernel (see `crate::owned`: routes with protocol 86, permanent
//! neighbour and FDB entries on the backend's own devices) and applies only the difference. One
//! diff serves every path: a full pass diffs everything against the kernel; a single peer's
//! change diffs its new plan against its old one; drift is the full diff, not applied.
//!
//! Invariants:
//! - nothing outside `owned` is ever changed or deleted;
//! - installs go in dependency order (neighbour and FDB before the route, so the kernel never
//!   resolves a gateway itself), removals after installs;
//! - a full pass runs only once the complete peer list is known (a restart must not delete
//!   what is still wanted); before that, single events are remembered, not applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{Backend, BackendError, PeerObjects, PeerPath, PeerPlan, Registration};
use crate::kernel::Mac;
use crate::kernel::netlink::{Change, Fdb, Neighbour, Netlink, Route};
use crate::lease::{Lease, SubnetKey};
use crate::owned::RTPROT_PODNET;

/// What one pass changed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub full: bool,
    pub applied: usize,
    pub errors: Vec<String>,
    pub duration: Duration,
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

/// Keeps the kernel in line with the backend's view of the peers.
pub struct Reconciler {
    backend: Box<dyn Backend>,
    nl: Netlink,
    own: Option<Lease>,
    /// Every peer lease known (other backends' too): the data path's one copy of them.
    leases: BTreeMap<SubnetKey, Lease>,
    /// Plans of the peers of our backend, as last programmed.
    programmed: BTreeMap<SubnetKey, PeerPlan>,
    other_backend: usize,
    /// Skip reasons already logged, so a steady state does not log on every pass.
    logged_skips: HashMap<SubnetKey, String>,
}

fn route_key(r: &Route) -> (u32, String) {
    (r.table, r.dst.to_string())
}

fn same_route(a: &Route, b: &Route) -> bool {
    a.dst == b.dst
        && a.gateway == b.gateway
        && a.oif == b.oif
        && a.onlink == b.onlink
        && a.table == b.table
        && a.kind == b.kind
        && a.scope == b.scope
}

fn neigh_key(n: &Neighbour) -> (u32, std::net::IpAddr) {
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
        if a_r.get(&route_key(r)).is_none_or(|a| !same_route(a, r)) {
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

impl Reconciler {
    pub fn new(backend: Box<dyn Backend>, nl: Netlink) -> Reconciler {
        Reconciler {
            backend,
            nl,
            own: None,
            leases: BTreeMap::new(),
            programmed: BTreeMap::new(),
            other_backend: 0,
            logged_skips: HashMap::new(),
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn prepare(&mut self) -> Result<Registration, BackendError> {
        self.backend.prepare(&mut self.nl)
    }

    pub fn set_own(&mut self, own: Lease) -> Result<(), BackendError> {
        self.backend.ensure_local(&mut self.nl, &own)?;
        self.own = Some(own);
        Ok(())
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

    fn desired(&self) -> PeerObjects {
        let mut d = PeerObjects::default();
        for plan in self.programmed.values() {
            d.neighbours.extend(plan.objects.neighbours.iter().cloned());
            d.fdb.extend(plan.objects.fdb.iter().cloned());
            d.routes.extend(plan.objects.routes.iter().cloned());
        }
        d
    }

    fn apply(&mut self, changes: Vec<Change>, start: Instant, full: bool) -> Report {
        let mut report = Report {
            full,
            ..Default::default()
        };
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
    pub fn full(&mut self, peers: Vec<Lease>) -> Result<Report, BackendError> {
        let own = self.own.as_ref().map(|o| o.key);
        self.leases = peers
            .into_iter()
            .filter(|l| Some(l.key) != own)
            .map(|l| (l.key, l))
            .collect();
        self.resync()
    }

    /// Peers known before the first full pass (which replaces them all).
    pub fn remember(&mut self, peer: Lease) {
        self.leases.insert(peer.key, peer);
    }

    pub fn forget(&mut self, key: &SubnetKey) {
        self.leases.remove(key);
    }

    /// Re-plans every known peer.
    fn replan(&mut self) {
        self.programmed.clear();
        self.other_backend = 0;
        let leases = std::mem::take(&mut self.leases);
        for p in leases.values() {
            match self.plan(p) {
                Some(plan) => {
                    self.programmed.insert(p.key, plan);
                }
                None => self.other_backend += 1,
            }
        }
        self.leases = leases;
        let reachable: Vec<&Lease> = self
            .programmed
            .iter()
            .filter(|(_, plan)| !matches!(plan.path, PeerPath::Skipped(_)))
            .filter_map(|(k, _)| self.leases.get(k))
            .collect();
        self.backend.peers_reset(&reachable);
    }

    /// A full pass over the peers known now.
    pub fn resync(&mut self) -> Result<Report, BackendError> {
        let start = Instant::now();
        let own = self
            .own
            .clone()
            .ok_or_else(|| BackendError::Invalid("full pass before the own lease is set".into()))?;
        self.backend.ensure_local(&mut self.nl, &own)?;
        self.replan();
        let changes = diff(&self.desired(), &self.actual()?);
        Ok(self.apply(changes, start, true))
    }

    /// A peer appeared or changed: its new plan is diffed against what was programmed for it.
    pub fn add(&mut self, peer: &Lease) -> Report {
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
            .programmed
            .remove(&peer.key)
            .map(|p| p.objects)
            .unwrap_or_default();
        let changes = diff(&plan.objects, &old);
        if matches!(plan.path, PeerPath::Skipped(_)) {
            self.backend.peer_down(&peer.key);
        } else {
            self.backend.peer_up(peer);
        }
        self.programmed.insert(peer.key, plan);
        self.apply(changes, start, false)
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
            .programmed
            .remove(key)
            .map(|p| p.objects)
            .unwrap_or_default();
        let changes = diff(&PeerObjects::default(), &old);
        self.apply(changes, start, false)
    }

    /// Peers by how they are reached, as last programmed.
    pub fn paths(&self) -> PathCounts {
        let mut c = PathCounts {
            other_backend: self.other_backend,
            ..Default::default()
        };
        for plan in self.programmed.values() {
            match plan.path {
                PeerPath::Direct => c.direct += 1,
                PeerPath::Tunnel => c.tunnel += 1,
                PeerPath::Skipped(_) => c.skipped += 1,
            }
        }
        c
    }

    /// Every programmed peer with its path.
    pub fn peer_paths(&self) -> Vec<(Lease, PeerPath)> {
        self.programmed
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
        for c in diff(&self.desired(), &self.actual()?) {
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

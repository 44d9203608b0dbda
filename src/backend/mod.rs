//! Backends: how this node reaches the other nodes' pod subnets.
//!
//! Reconcile, don't react. A backend turns one peer lease into the kernel objects that make its
//! subnet reachable (`plan_peer`); the `Reconciler` holds the union of those for all peers as the
//! desired state, reads what podnet owns in the kernel, and applies only the difference. What
//! podnet owns: routes with protocol `RTPROT_PODNET`, and the permanent neighbour and FDB entries
//! on devices the backend owns outright (`flannel.<VNI>`). Nothing else is ever deleted.
//!
//! A full pass runs at start (after the first complete list of peers, never before, so a restart
//! removes nothing that is still wanted), on every resync tick, and when an owned device
//! disappears. Between passes a peer that comes or goes costs only its own few messages.

pub mod host_gw;
pub mod udp;
pub mod vxlan;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};

use crate::config::{BackendConfig, NetworkConfig};
use crate::kernel::KernelError;
use crate::kernel::netlink::{Change, Fdb, LinkChange, Neighbour, Netlink, Route};
use crate::lease::{Lease, SubnetKey};

/// Route protocol number marking podnet's routes (`ip route show proto 86`).
pub const RTPROT_PODNET: u8 = 86;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    Invalid(String),
}

/// The interface that carries traffic to other nodes, and the addresses this node publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's own IPv4 address.
    pub iface_addr: Option<Ipv4Addr>,
    /// The address peers use to reach us (`--public-ip`, else `iface_addr`).
    pub ext_addr: Option<Ipv4Addr>,
    pub iface_addr6: Option<Ipv6Addr>,
    pub ext_addr6: Option<Ipv6Addr>,
}

/// What a prepared backend publishes in the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub backend_type: &'static str,
    /// Compact JSON for `BackendData`.
    pub backend_data: Option<String>,
    /// MTU for pods (written to `subnet.env`).
    pub mtu: u32,
    /// The UDP port tunnel packets arrive on (guarded by the firewall), if the backend tunnels.
    pub tunnel_port: Option<u16>,
    /// The device tunnelled traffic leaves through.
    pub tunnel_device: Option<String>,
}

/// How a peer is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPath {
    /// A route via the peer's address on the shared L2.
    Direct,
    /// Through the tunnel device.
    Tunnel,
    /// Not programmed, with the reason (logged and counted).
    Skipped(String),
}

impl PeerPath {
    pub fn label(&self) -> &'static str {
        match self {
            PeerPath::Direct => "direct",
            PeerPath::Tunnel => "tunnel",
            PeerPath::Skipped(_) => "skipped",
        }
    }
}

/// The kernel objects for one peer, in the order they must be installed (neighbour and FDB
/// before the route, so the kernel never has to resolve the gateway itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerObjects {
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<Fdb>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub path: PeerPath,
    pub objects: PeerObjects,
}

/// A data path.
pub trait Backend: Send {
    fn type_name(&self) -> &'static str;

    /// Whether a peer's lease is for this backend (others are skipped with a warning).
    fn accepts(&self, lease: &Lease) -> bool {
        lease.attrs.backend_type == self.type_name()
    }

    /// Runs before the lease exists: adopts or creates whatever the lease must describe (the
    /// VXLAN device's MAC) and computes the MTU.
    fn prepare(&mut self, nl: &mut Netlink) -> Result<Registration, BackendError>;

    /// Makes this node's own devices and addresses right for its lease; creates what is missing.
    fn ensure_local(&mut self, nl: &mut Netlink, own: &Lease) -> Result<(), BackendError>;

    /// The objects that make one peer reachable.
    fn plan_peer(&mut self, nl: &mut Netlink, peer: &Lease) -> PeerPlan;

    /// A userspace data path keeps its own table of peers; these keep it in step with what the
    /// reconciler programmed. Kernel backends have nothing to do.
    fn peer_up(&mut self, _peer: &Lease) {}
    fn peer_down(&mut self, _key: &SubnetKey) {}
    /// After a full pass: exactly these peers.
    fn peers_reset(&mut self, _peers: &[&Lease]) {}

    /// Links whose permanent neighbour and FDB entries are all podnet's.
    fn owned_links(&self) -> Vec<u32>;

    /// Devices whose deletion calls for an immediate full pass.
    fn device_names(&self) -> Vec<String>;
}

/// Builds the backend the config asks for. `previous` is this node's lease as etcd still has it
/// (from before a restart or a reboot, or written by flanneld on a node being migrated): the
/// identity it published is kept. `udp_stats` are the counters the udp data path reports to.
pub fn new(
    cfg: &NetworkConfig,
    ext: &ExternalInterface,
    previous: Option<&Lease>,
    udp_stats: std::sync::Arc<udp::Stats>,
) -> Result<Box<dyn Backend>, BackendError> {
    if cfg.v4.is_none() || cfg.v6.is_some() {
        return Err(BackendError::Invalid(
            "EnableIPv6: podnet's data paths carry IPv4 pod traffic only; IPv6 and dual-stack networks are \
             not supported yet (leases in etcd already use flannel's dual-stack format)"
                .into(),
        ));
    }
    match &cfg.backend {
        BackendConfig::Vxlan(o) => Ok(Box::new(vxlan::Vxlan::new(
            o.clone(),
            ext.clone(),
            previous,
        )?)),
        BackendConfig::HostGw => Ok(Box::new(host_gw::HostGw::new(ext.clone())?)),
        BackendConfig::Udp(o) => Ok(Box::new(udp::Udp::new(
            o.clone(),
            cfg.v4.as_ref().expect("checked above").network,
            ext.clone(),
            udp_stats,
        )?)),
    }
}

/// Makes `<subnet>/32` of this node's lease the only IPv4 address of a backend's device (as
/// flannel does: a source address for node-to-pod traffic, no broadcast routes) and brings the
/// device up, with `mtu` when given.
fn own_address_up(
    nl: &mut Netlink,
    device: &str,
    index: u32,
    subnet: Ipv4Net,
    mtu: Option<u32>,
) -> Result<(), BackendError> {
    let want = IpNet::V4(Ipv4Net::new(subnet.network(), 32).expect("/32 is valid"));
    for a in nl
        .addrs_v(true)?
        .into_iter()
        .filter(|a| a.index == index && a.net != want)
    {
        tracing::info!(device, address = %a.net, "removing a stale address");
        nl.del_addr(index, a.net)?;
    }
    nl.add_addr(index, want)?;
    nl.set_link(
        index,
        &LinkChange {
            up: Some(true),
            mtu,
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Decides whether `ip` is on the same L2 as `ext`: the kernel reaches it through `ext` with no
/// gateway (flannel's DirectRouting test).
pub fn on_link(nl: &mut Netlink, ext: &ExternalInterface, ip: IpAddr) -> Result<bool, String> {
    match nl.route_get(ip) {
        Ok(r) => Ok(r.gateway.is_none() && r.oif == Some(ext.index)),
        Err(e) => Err(e.to_string()),
    }
}

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

/// Differences between what should be in the kernel and what is.
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

fn neigh_key(n: &Neighbour) -> (u32, IpAddr) {
    (n.index, n.ip)
}

fn fdb_key(f: &Fdb) -> (u32, crate::kernel::Mac) {
    (f.index, f.mac)
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

    fn plan(&mut self, peer: &Lease) -> Option<PeerPlan> {
        if !self.backend.accepts(peer) {
            if self.logged_skips.get(&peer.key).map(String::as_str) != Some("backend") {
                tracing::warn!(
                    peer = %peer.key,
                    public_ip = %peer.attrs.public_ip,
                    their_backend = %peer.attrs.backend_type,
                    our_backend = self.backend.type_name(),
                    "skipping a peer whose lease is for another backend"
                );
                self.logged_skips.insert(peer.key, "backend".into());
            }
            return None;
        }
        let plan = self.backend.plan_peer(&mut self.nl, peer);
        match &plan.path {
            PeerPath::Skipped(reason) => {
                if self.logged_skips.get(&peer.key) != Some(reason) {
                    tracing::warn!(peer = %peer.key, public_ip = %peer.attrs.public_ip, "peer not programmed: {reason}");
                    self.logged_skips.insert(peer.key, reason.clone());
                }
            }
            _ => {
                self.logged_skips.remove(&peer.key);
            }
        }
        Some(plan)
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
        let mut neighbours = Vec::new();
        let mut fdb = Vec::new();
        if !owned.is_empty() {
            neighbours = self
                .nl
                .neighbours(None)?
                .into_iter()
                .filter(|n| n.permanent && owned.contains(&n.index))
                .collect();
            fdb = self
                .nl
                .fdb(None)?
                .into_iter()
                .filter(|f| f.permanent && f.own && owned.contains(&f.index))
                .collect();
        }
        Ok(PeerObjects {
            neighbours,
            fdb,
            routes,
        })
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

    /// The changes that turn `actual` into `desired`: installs in dependency order, then removals.
    fn diff(desired: &PeerObjects, actual: &PeerObjects) -> Vec<Change> {
        let (a_routes, a_neigh, a_fdb) = (&actual.routes, &actual.neighbours, &actual.fdb);
        let mut changes = Vec::new();
        let a_n: HashMap<_, _> = a_neigh.iter().map(|n| (neigh_key(n), n)).collect();
        let a_f: HashMap<_, _> = a_fdb.iter().map(|f| (fdb_key(f), f)).collect();
        let a_r: HashMap<_, _> = a_routes.iter().map(|r| (route_key(r), r)).collect();
        for n in &desired.neighbours {
            if a_n.get(&neigh_key(n)).map(|a| a.mac != n.mac) != Some(false) {
                changes.push(Change::ReplaceNeighbour(n.clone()));
            }
        }
        for f in &desired.fdb {
            if a_f.get(&fdb_key(f)).map(|a| a.dst != f.dst) != Some(false) {
                changes.push(Change::ReplaceFdb(f.clone()));
            }
        }
        for r in &desired.routes {
            if a_r.get(&route_key(r)).map(|a| !same_route(a, r)) != Some(false) {
                changes.push(Change::ReplaceRoute(r.clone()));
            }
        }
        let d_r: std::collections::HashSet<_> = desired.routes.iter().map(route_key).collect();
        let d_f: std::collections::HashSet<_> = desired.fdb.iter().map(fdb_key).collect();
        let d_n: std::collections::HashSet<_> = desired.neighbours.iter().map(neigh_key).collect();
        changes.extend(
            a_routes
                .iter()
                .filter(|r| !d_r.contains(&route_key(r)))
                .cloned()
                .map(Change::DelRoute),
        );
        changes.extend(
            a_fdb
                .iter()
                .filter(|f| !d_f.contains(&fdb_key(f)))
                .cloned()
                .map(Change::DelFdb),
        );
        changes.extend(
            a_neigh
                .iter()
                .filter(|n| !d_n.contains(&neigh_key(n)))
                .cloned()
                .map(Change::DelNeighbour),
        );
        changes
    }

    fn apply(&mut self, changes: Vec<Change>, report: &mut Report) {
        for (change, result) in changes.iter().zip(self.nl.apply(&changes)) {
            match result {
                Ok(()) => report.applied += 1,
                // Already gone is what a removal wants.
                Err(e)
                    if matches!(
                        change,
                        Change::DelRoute(_) | Change::DelFdb(_) | Change::DelNeighbour(_)
                    ) && matches!(
                        e.errno(),
                        Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::ENODEV)
                    ) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
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

    /// A full pass over the peers known now.
    pub fn resync(&mut self) -> Result<Report, BackendError> {
        let start = Instant::now();
        let mut report = Report {
            full: true,
            ..Default::default()
        };
        let own = self
            .own
            .clone()
            .ok_or_else(|| BackendError::Invalid("full pass before the own lease is set".into()))?;
        self.backend.ensure_local(&mut self.nl, &own)?;
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
        let desired = self.desired();
        let actual = self.actual()?;
        let changes = Reconciler::diff(&desired, &actual);
        self.apply(changes, &mut report);
        report.duration = start.elapsed();
        Ok(report)
    }

    /// A peer appeared or changed.
    pub fn add(&mut self, peer: &Lease) -> Report {
        let start = Instant::now();
        let mut report = Report::default();
        if self.own.as_ref().is_some_and(|o| o.key == peer.key) {
            return report;
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
        let new = &plan.objects;
        let mut changes: Vec<Change> = Vec::new();
        changes.extend(
            new.neighbours
                .iter()
                .filter(|n| !old.neighbours.contains(n))
                .cloned()
                .map(Change::ReplaceNeighbour),
        );
        changes.extend(
            new.fdb
                .iter()
                .filter(|f| !old.fdb.contains(f))
                .cloned()
                .map(Change::ReplaceFdb),
        );
        changes.extend(
            new.routes
                .iter()
                .filter(|r| !old.routes.contains(r))
                .cloned()
                .map(Change::ReplaceRoute),
        );
        let keep_r: Vec<_> = new.routes.iter().map(route_key).collect();
        let keep_f: Vec<_> = new.fdb.iter().map(fdb_key).collect();
        let keep_n: Vec<_> = new.neighbours.iter().map(neigh_key).collect();
        changes.extend(
            old.routes
                .iter()
                .filter(|r| !keep_r.contains(&route_key(r)))
                .cloned()
                .map(Change::DelRoute),
        );
        changes.extend(
            old.fdb
                .iter()
                .filter(|f| !keep_f.contains(&fdb_key(f)))
                .cloned()
                .map(Change::DelFdb),
        );
        changes.extend(
            old.neighbours
                .iter()
                .filter(|n| !keep_n.contains(&neigh_key(n)))
                .cloned()
                .map(Change::DelNeighbour),
        );
        if matches!(plan.path, PeerPath::Skipped(_)) {
            self.backend.peer_down(&peer.key);
        } else {
            self.backend.peer_up(peer);
        }
        self.programmed.insert(peer.key, plan);
        self.apply(changes, &mut report);
        report.duration = start.elapsed();
        report
    }

    /// A peer went away.
    pub fn remove(&mut self, key: &SubnetKey) -> Report {
        self.logged_skips.remove(key);
        self.leases.remove(key);
        self.unprogram(key, Instant::now())
    }

    fn unprogram(&mut self, key: &SubnetKey, start: Instant) -> Report {
        let mut report = Report::default();
        self.backend.peer_down(key);
        let Some(plan) = self.programmed.remove(key) else {
            return report;
        };
        let o = plan.objects;
        let mut changes: Vec<Change> = o.routes.into_iter().map(Change::DelRoute).collect();
        changes.extend(o.fdb.into_iter().map(Change::DelFdb));
        changes.extend(o.neighbours.into_iter().map(Change::DelNeighbour));
        self.apply(changes, &mut report);
        report.duration = start.elapsed();
        report
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

    /// Compares the kernel with the desired state without changing anything.
    pub fn drift(&mut self) -> Result<Drift, BackendError> {
        let desired = self.desired();
        let actual = self.actual()?;
        let mut drift = Drift::default();
        for c in Reconciler::diff(&desired, &actual) {
            match c {
                Change::ReplaceRoute(r) => {
                    drift.missing.push(format!("route {}", describe_route(&r)))
                }
                Change::ReplaceNeighbour(n) => {
                    drift
                        .missing
                        .push(format!("neighbour {} lladdr {}", n.ip, show(n.mac)))
                }
                Change::ReplaceFdb(f) => {
                    drift
                        .missing
                        .push(format!("fdb {} dst {}", f.mac, show(f.dst)))
                }
                Change::DelRoute(r) => drift
                    .unexpected
                    .push(format!("route {}", describe_route(&r))),
                Change::DelNeighbour(n) => {
                    drift
                        .unexpected
                        .push(format!("neighbour {} lladdr {}", n.ip, show(n.mac)))
                }
                Change::LinkUp(_) | Change::AddAddr(_) => {}
                Change::DelFdb(f) => {
                    drift
                        .unexpected
                        .push(format!("fdb {} dst {}", f.mac, show(f.dst)))
                }
            }
        }
        Ok(drift)
    }
}

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

fn describe_route(r: &Route) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        s += &format!(" dev #{oif}");
    }
    if r.onlink {
        s += " onlink";
    }
    s
}

/// The first address of a subnet (`.0`), which flannel's VXLAN uses as the peer's gateway.
pub fn subnet_base(sn: &Ipv4Net) -> Ipv4Addr {
    sn.network()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Mac;
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
        let changes = Reconciler::diff(&desired, &actual);
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
        assert!(Reconciler::diff(&desired, &synced).is_empty());
    }
}

//! Drift as the kernel reports it: which of podnet's objects a notification is about, and what
//! it calls for. Pure: the reconciler feeds it events and its desired state, and acts.
//!
//! A notification names one kernel object. If the object is one podnet wants (a peer's route,
//! neighbour or FDB entry) and the kernel now has it exactly as wanted, nothing is to be done
//! (someone put it back); if it is gone, or in the same slot but different, that one object is
//! repaired. An object podnet owns (`crate::owned`: protocol 86, permanent entries on its
//! devices) that it does not want is removed. Anything else is someone else's and ignored,
//! except what podnet's objects stand on: its devices (checked, and rebuilt when wrong) and the
//! external interface (its changes can flush routes without a notification per route, so they
//! ask for a check of everything).
//!
//! The check of everything compares a `Digest` of the objects podnet owns in the kernel with
//! one of what it wants, kept up to date as plans change: a count and a sum of hashes per kind,
//! so a node whose kernel matches costs one dump per kind and no allocation.
//!
//! Notifications of podnet's own changes are dropped before they get here (they carry the port
//! id of its socket); any that are not (the kernel does not say who changed an FDB entry) match
//! what is wanted and settle.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::kernel::Mac;
use crate::kernel::netlink::{
    Change, Fdb, KernelEvent, Neighbour, RTPROT_KERNEL, Route, TABLE_MAIN,
};
use crate::owned::RTPROT_PODNET;

/// One of podnet's objects, as repairs (and their backoff) name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Object {
    Route {
        table: u32,
        dst: IpNet,
    },
    Neighbour {
        index: u32,
        ip: IpAddr,
    },
    Fdb {
        index: u32,
        mac: Mac,
    },
    /// The backend's devices, their addresses and local routes (`Backend::ensure_local`), and
    /// then everything on them.
    Devices,
    /// Everything: compare the digests, and make a full pass if they differ.
    Everything,
    /// Everything, because notifications were lost: the same pass (with the same backoff, so
    /// a socket that keeps overflowing cannot make a loop of passes), but nobody's doing, so
    /// never reported as contested.
    Lost,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Route { table, dst } if *table == TABLE_MAIN => {
                write!(f, "route {dst}")
            }
            Object::Route { table, dst } => write!(f, "route {dst} table {table}"),
            Object::Neighbour { index, ip } => write!(f, "neighbour {ip} on #{index}"),
            Object::Fdb { index, mac } => write!(f, "fdb {mac} on #{index}"),
            Object::Devices => write!(f, "the backend's devices"),
            Object::Everything => write!(f, "every peer's objects"),
            Object::Lost => write!(f, "every peer's objects, after lost notifications"),
        }
    }
}

impl Object {
    /// The metric label for repairs of this kind of object.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Route { .. } => "route",
            Object::Neighbour { .. } => "neighbour",
            Object::Fdb { .. } => "fdb",
            Object::Devices => "device",
            Object::Everything | Object::Lost => "pass",
        }
    }
}

/// What one notification calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Not podnet's business.
    Ignore,
    /// The object is as wanted again: a repair waiting for it is no longer needed.
    Settled(Object),
    /// Put the object back as wanted.
    Repair(Object),
    /// Remove an object podnet owns but does not want.
    Remove(Object, Change),
    /// One of the backend's devices changed: compare it with what it should be.
    CheckDevice,
    /// The underlay changed in a way that may change peers' plans (which peers are on the
    /// link): re-plan at the next full pass.
    Underlay,
}

/// What podnet wants in the kernel, looked up by the kernel's own keys.
pub trait Wanted {
    fn route(&self, table: u32, dst: IpNet) -> Option<&Route>;
    fn neighbour(&self, index: u32, ip: IpAddr) -> Option<&Neighbour>;
    fn fdb(&self, index: u32, mac: Mac) -> Option<&Fdb>;
}

/// The devices podnet's objects stand on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    /// Indexes of the backend's devices.
    pub indexes: Vec<u32>,
    /// Those whose permanent neighbour and FDB entries are all podnet's (`Backend::owned_links`).
    pub owned: Vec<u32>,
    /// Their names (a device recreated by someone else has a new index).
    pub names: Vec<String>,
    /// The external interface.
    pub ext: u32,
}

/// Whether a dumped or notified route is podnet's and exactly the wanted one.
pub fn route_is(actual: &Route, wanted: &Route) -> bool {
    actual.protocol == RTPROT_PODNET && same_route(actual, wanted)
}

/// Two routes are the same object with the same content: what the reconciler compares (the
/// protocol and preferred source are not part of it).
pub fn same_route(a: &Route, b: &Route) -> bool {
    a.dst == b.dst
        && a.gateway == b.gateway
        && a.oif == b.oif
        && a.onlink == b.onlink
        && a.table == b.table
        && a.kind == b.kind
        && a.scope == b.scope
        && a.metric == b.metric
}

/// What a notification calls for.
pub fn classify(ev: &KernelEvent, wanted: &impl Wanted, dev: &Devices) -> Action {
    match ev {
        KernelEvent::Route { gone, route } => classify_route(*gone, route, wanted, dev),
        KernelEvent::Neighbour { gone, neighbour: n } => {
            if !dev.owned.contains(&n.index) {
                return Action::Ignore;
            }
            let key = Object::Neighbour {
                index: n.index,
                ip: n.ip,
            };
            match wanted.neighbour(n.index, n.ip) {
                Some(w) if !gone && n.permanent && n.mac == w.mac => Action::Settled(key),
                Some(_) => Action::Repair(key),
                None if !gone && n.permanent => {
                    Action::Remove(key, Change::DelNeighbour(n.clone()))
                }
                None => Action::Ignore,
            }
        }
        KernelEvent::Fdb { gone, fdb: f } => {
            if !dev.owned.contains(&f.index) {
                return Action::Ignore;
            }
            let key = Object::Fdb {
                index: f.index,
                mac: f.mac,
            };
            match wanted.fdb(f.index, f.mac) {
                Some(w) if !gone && f.permanent && f.own && f.dst == w.dst => Action::Settled(key),
                // Another remote of the same address went away; ours is untouched.
                Some(w) if *gone && f.dst != w.dst => Action::Ignore,
                Some(_) => Action::Repair(key),
                None if !gone && f.permanent && f.own => {
                    Action::Remove(key, Change::DelFdb(f.clone()))
                }
                None => Action::Ignore,
            }
        }
        KernelEvent::Link { gone, link } => {
            if dev.indexes.contains(&link.index) || dev.names.contains(&link.name) {
                if *gone {
                    Action::Repair(Object::Devices)
                } else {
                    Action::CheckDevice
                }
            } else if link.index == dev.ext && !gone {
                // Taking an interface down flushes its IPv4 routes without a word per route.
                Action::Repair(Object::Everything)
            } else {
                Action::Ignore
            }
        }
        KernelEvent::Addr { addr, .. } => {
            if dev.indexes.contains(&addr.index) {
                Action::Repair(Object::Devices)
            } else if addr.index == dev.ext {
                Action::Repair(Object::Everything)
            } else {
                Action::Ignore
            }
        }
    }
}

fn classify_route(gone: bool, r: &Route, wanted: &impl Wanted, dev: &Devices) -> Action {
    let key = Object::Route {
        table: r.table,
        dst: r.dst,
    };
    match wanted.route(r.table, r.dst) {
        Some(w) => {
            let ours = route_is(r, w);
            // The kernel keeps one route per (table, destination, metric): a route there that
            // is not ours replaced ours; one with another metric merely sits beside it.
            let same_slot = r.metric == w.metric;
            if ours && !gone {
                Action::Settled(key)
            } else if same_slot {
                Action::Repair(key)
            } else {
                Action::Ignore
            }
        }
        None if r.protocol == RTPROT_PODNET && !gone => {
            Action::Remove(key, Change::DelRoute(r.clone()))
        }
        None if r.protocol == RTPROT_PODNET => Action::Ignore,
        None if gone && is_backends_own(r, dev) => Action::Repair(Object::Devices),
        None if r.oif == Some(dev.ext) => Action::Underlay,
        None => Action::Ignore,
    }
}

/// A route the backend itself keeps through its device (the udp backend's route to the
/// network): IPv4, in the main table, not one the kernel makes for an address.
fn is_backends_own(r: &Route, dev: &Devices) -> bool {
    r.oif.is_some_and(|o| dev.indexes.contains(&o))
        && r.dst.addr().is_ipv4()
        && r.table == TABLE_MAIN
        && r.protocol != RTPROT_KERNEL
}

/// How many objects of a kind, and the sum of their hashes: equal tallies mean equal sets (a
/// collision would need a sum of 64-bit hashes to cancel out exactly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub sum: u64,
}

impl Tally {
    pub fn add(&mut self, h: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(h);
    }

    pub fn sub(&mut self, h: u64) {
        self.count -= 1;
        self.sum = self.sum.wrapping_sub(h);
    }
}

/// A set of podnet's objects, summed up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    pub routes: Tally,
    pub neighbours: Tally,
    pub fdb: Tally,
}

fn hash(v: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The hash of what `same_route` compares.
pub fn route_hash(r: &Route) -> u64 {
    hash((
        r.dst, r.gateway, r.oif, r.onlink, r.table, r.kind, r.scope, r.metric,
    ))
}

/// The hash of what the reconciler compares of a neighbour (key and address).
pub fn neighbour_hash(n: &Neighbour) -> u64 {
    hash((n.index, n.ip, n.mac))
}

/// The hash of what the reconciler compares of an FDB entry (key and remote).
pub fn fdb_hash(f: &Fdb) -> u64 {
    hash((f.index, f.mac, f.dst))
}

impl Digest {
    pub fn add(&mut self, objects: &super::PeerObjects) {
        objects
            .routes
            .iter()
            .for_each(|r| self.routes.add(route_hash(r)));
        objects
            .neighbours
            .iter()
            .for_each(|n| self.neighbours.add(neighbour_hash(n)));
        objects.fdb.iter().for_each(|f| self.fdb.add(fdb_hash(f)));
    }

    pub fn sub(&mut self, objects: &super::PeerObjects) {
        objects
            .routes
            .iter()
            .for_each(|r| self.routes.sub(route_hash(r)));
        objects
            .neighbours
            .iter()
            .for_each(|n| self.neighbours.sub(neighbour_hash(n)));
        objects.fdb.iter().for_each(|f| self.fdb.sub(fdb_hash(f)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PeerObjects;
    use crate::kernel::netlink::{
        Addr, Link, RTN_UNICAST, RTPROT_BOOT, SCOPE_UNIVERSE, TABLE_MAIN,
    };

    const DEV: u32 = 5;
    const EXT: u32 = 2;

    fn mac(last: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, last])
    }

    fn route(dst: &str, gw: &str) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(DEV),
            table: TABLE_MAIN,
            protocol: RTPROT_PODNET,
            scope: SCOPE_UNIVERSE,
            kind: RTN_UNICAST,
            onlink: true,
            metric: None,
            prefsrc: None,
        }
    }

    fn peer() -> PeerObjects {
        PeerObjects {
            neighbours: vec![Neighbour {
                index: DEV,
                ip: "10.244.2.0".parse().unwrap(),
                mac: Some(mac(1)),
                permanent: true,
            }],
            fdb: vec![Fdb {
                index: DEV,
                mac: mac(1),
                dst: Some("198.18.0.12".parse().unwrap()),
                permanent: true,
                own: true,
            }],
            routes: vec![route("10.244.2.0/24", "10.244.2.0")],
        }
    }

    impl Wanted for PeerObjects {
        fn route(&self, table: u32, dst: IpNet) -> Option<&Route> {
            self.routes
                .iter()
                .find(|r| r.table == table && r.dst == dst)
        }
        fn neighbour(&self, index: u32, ip: IpAddr) -> Option<&Neighbour> {
            self.neighbours
                .iter()
                .find(|n| n.index == index && n.ip == ip)
        }
        fn fdb(&self, index: u32, mac: Mac) -> Option<&Fdb> {
            self.fdb.iter().find(|f| f.index == index && f.mac == mac)
        }
    }

    fn devices() -> Devices {
        Devices {
            indexes: vec![DEV],
            owned: vec![DEV],
            names: vec!["flannel.1".into()],
            ext: EXT,
        }
    }

    fn route_ev(gone: bool, route: Route) -> Action {
        classify(&KernelEvent::Route { gone, route }, &peer(), &devices())
    }

    #[test]
    fn routes_deleted_replaced_or_foreign() {
        let ours = route("10.244.2.0/24", "10.244.2.0");
        let key = Object::Route {
            table: TABLE_MAIN,
            dst: ours.dst,
        };
        assert_eq!(route_ev(false, ours.clone()), Action::Settled(key));
        assert_eq!(route_ev(true, ours.clone()), Action::Repair(key));
        // Replaced by someone else's route to the same place.
        let mut other = ours.clone();
        other.protocol = RTPROT_BOOT;
        other.gateway = Some("198.18.0.1".parse().unwrap());
        other.oif = Some(EXT);
        assert_eq!(route_ev(false, other.clone()), Action::Repair(key));
        // Beside ours, with another metric: not ours to touch.
        other.metric = Some(100);
        assert_eq!(route_ev(false, other.clone()), Action::Ignore);
        assert_eq!(route_ev(true, other), Action::Ignore);
        // Ours, changed by hand.
        let mut changed = ours.clone();
        changed.gateway = Some("10.244.9.0".parse().unwrap());
        assert_eq!(route_ev(false, changed), Action::Repair(key));
        // A route with our mark that no peer wants goes.
        let stale = route("10.244.7.0/24", "10.244.7.0");
        assert_eq!(
            route_ev(false, stale.clone()),
            Action::Remove(
                Object::Route {
                    table: TABLE_MAIN,
                    dst: stale.dst
                },
                Change::DelRoute(stale.clone())
            )
        );
        assert_eq!(route_ev(true, stale), Action::Ignore);
        // The backend's own route through its device went: the devices are checked.
        let mut local = route("10.244.0.0/16", "0.0.0.0");
        local.gateway = None;
        local.protocol = RTPROT_BOOT;
        assert_eq!(
            route_ev(true, local.clone()),
            Action::Repair(Object::Devices)
        );
        assert_eq!(route_ev(false, local), Action::Ignore);
        // Underlay routes may change which peers are on the link.
        let mut under = route("198.19.0.0/16", "198.18.0.1");
        under.protocol = RTPROT_BOOT;
        under.oif = Some(EXT);
        assert_eq!(route_ev(false, under), Action::Underlay);
    }

    #[test]
    fn neighbours_and_fdb_entries_on_our_device_only() {
        let p = peer();
        let d = devices();
        let n = p.neighbours[0].clone();
        let nkey = Object::Neighbour {
            index: DEV,
            ip: n.ip,
        };
        let ev = |gone, neighbour| classify(&KernelEvent::Neighbour { gone, neighbour }, &p, &d);
        assert_eq!(ev(false, n.clone()), Action::Settled(nkey));
        assert_eq!(ev(true, n.clone()), Action::Repair(nkey));
        let mut learnt = n.clone();
        learnt.permanent = false;
        assert_eq!(ev(false, learnt.clone()), Action::Repair(nkey));
        learnt.ip = "10.244.3.0".parse().unwrap();
        assert_eq!(ev(false, learnt), Action::Ignore);
        let mut elsewhere = n.clone();
        elsewhere.index = 9;
        assert_eq!(ev(true, elsewhere), Action::Ignore);

        let f = p.fdb[0].clone();
        let fkey = Object::Fdb {
            index: DEV,
            mac: f.mac,
        };
        let ev = |gone, fdb| classify(&KernelEvent::Fdb { gone, fdb }, &p, &d);
        assert_eq!(ev(false, f.clone()), Action::Settled(fkey));
        assert_eq!(ev(true, f.clone()), Action::Repair(fkey));
        let mut moved = f.clone();
        moved.dst = Some("198.18.0.99".parse().unwrap());
        assert_eq!(ev(false, moved.clone()), Action::Repair(fkey));
        assert_eq!(ev(true, moved), Action::Ignore, "another remote went");
        let mut stranger = f.clone();
        stranger.mac = mac(9);
        assert_eq!(
            ev(false, stranger.clone()),
            Action::Remove(
                Object::Fdb {
                    index: DEV,
                    mac: mac(9)
                },
                Change::DelFdb(stranger)
            )
        );
    }

    fn link(index: u32, name: &str) -> Link {
        Link {
            name: name.into(),
            mtu: 1450,
            ..Link::blank(index, true, true)
        }
    }

    #[test]
    fn devices_and_the_underlay() {
        let (p, d) = (peer(), devices());
        let ev = |e: KernelEvent| classify(&e, &p, &d);
        let gone = |link| KernelEvent::Link { gone: true, link };
        let new = |link| KernelEvent::Link { gone: false, link };
        assert_eq!(
            ev(gone(link(DEV, "flannel.1"))),
            Action::Repair(Object::Devices)
        );
        // Recreated by someone else: a new index, the same name.
        assert_eq!(ev(new(link(77, "flannel.1"))), Action::CheckDevice);
        assert_eq!(
            ev(new(link(EXT, "eth0"))),
            Action::Repair(Object::Everything)
        );
        assert_eq!(ev(new(link(8, "veth1"))), Action::Ignore);
        let addr = |index| KernelEvent::Addr {
            gone: true,
            addr: Addr {
                index,
                net: "10.244.1.0/32".parse().unwrap(),
            },
        };
        assert_eq!(ev(addr(DEV)), Action::Repair(Object::Devices));
        assert_eq!(ev(addr(EXT)), Action::Repair(Object::Everything));
        assert_eq!(ev(addr(8)), Action::Ignore);
    }

    #[test]
    fn digests_follow_plans_and_differ_on_any_compared_field() {
        let mut d = Digest::default();
        d.add(&peer());
        let mut twin = Digest::default();
        twin.add(&peer());
        assert_eq!(d, twin);
        let mut other = peer();
        other.routes[0].onlink = false;
        let mut d2 = Digest::default();
        d2.add(&other);
        assert_ne!(d.routes, d2.routes);
        assert_eq!(d.fdb, d2.fdb);
        // The protocol and preferred source are not compared.
        other.routes[0].onlink = true;
        other.routes[0].prefsrc = Some("10.244.1.0".parse().unwrap());
        assert_eq!(route_hash(&other.routes[0]), route_hash(&peer().routes[0]));
        d.sub(&peer());
        assert_eq!(d, Digest::default());
    }
}

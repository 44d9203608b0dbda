//! Peer leases are untrusted input. Any node (or anyone with its etcd credentials, or with
//! `nodes/status` patch rights) can write a lease, and every other node programs routes from
//! it. Before a lease reaches a backend it must pass these checks; one that fails is skipped
//! (logged once, counted, shown in `podnetctl status` and `doctor`), and a lease that turns
//! invalid is removed from the kernel at once.
//!
//! A lease is refused when:
//! - its subnet has host bits set, lies outside the network, has another prefix length than
//!   the config's `SubnetLen`/`IPv6SubnetLen` (etcd: flannel's allocator never makes one; in
//!   Kubernetes mode the controller manager decides the length, so only "inside" is checked),
//!   or overlaps this node's subnet or a network this node is attached to (the underlay) —
//!   a `0.0.0.0-1` lease would otherwise replace the default route;
//! - its public address is unspecified, loopback, multicast, link-local, broadcast, or one of
//!   this node's own;
//! - it claims this node's own VtepMAC, WireGuard public key or endpoint (the node's own lease
//!   is no peer, so the index of accepted leases does not hold them);
//! - it has an IPv6 subnet but no `PublicIPv6`;
//! - its backend data does not parse for its backend (vxlan: a unicast, non-zero `VtepMAC` in
//!   `BackendData` for the IPv4 half and in `BackendV6Data` for the IPv6 half;
//!   wireguard: a 32-byte base64 `PublicKey` that is not all zeros, and a `Port` from 0 to
//!   65535 if there is one — flanneld writes none, 0 or none meaning this node's `ListenPort`);
//! - it overlaps another valid lease, or reuses another's identity — a VtepMAC, a WireGuard
//!   public key, or a WireGuard endpoint (public address and port, a missing port resolved to
//!   this node's `ListenPort` as the backend dials it): the older lease (by creation) wins, so a
//!   newcomer cannot take over a subnet, a VTEP or a tunnel.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddrV4};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::wireguard::WireguardData;
use super::{Lease, SubnetKey};
use crate::config::{BackendConfig, DEFAULT_WG_PORT, NetworkConfig};
use crate::kernel::Mac;

/// What a peer lease is checked against.
#[derive(Debug, Clone)]
pub struct Checker {
    pub cfg: NetworkConfig,
    /// Whether prefix lengths must equal the config's (etcd mode: yes; Kubernetes: no).
    pub exact_length: bool,
    /// This node's subnets.
    pub own: SubnetKey,
    /// This node's addresses with their networks (the underlay among them).
    pub local: Vec<IpNet>,
    /// What this node's own lease claims (its VtepMACs, WireGuard key and endpoint): no peer
    /// may claim it too (`own_identities`).
    pub own_ids: Vec<Identity>,
}

/// What `own` (this node's lease) claims, for `Checker::own_ids`.
pub fn own_identities(own: &Lease, cfg: &NetworkConfig) -> Vec<Identity> {
    identities(own, listen_port(cfg))
}

/// This node's WireGuard `ListenPort` (flannel's default for other backends): where a peer
/// whose wireguard lease names no port is reached.
fn listen_port(cfg: &NetworkConfig) -> u16 {
    match &cfg.backend {
        BackendConfig::Wireguard(o) => o.listen_port,
        _ => DEFAULT_WG_PORT,
    }
}

fn v4_overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn v6_overlaps(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps(a: &SubnetKey, b: &SubnetKey) -> bool {
    let v4 = matches!((a.v4, b.v4), (Some(x), Some(y)) if v4_overlaps(&x, &y));
    let v6 = matches!((a.v6, b.v6), (Some(x), Some(y)) if v6_overlaps(&x, &y));
    v4 || v6
}

/// The VtepMAC a vxlan lease publishes (`None` for other backends).
fn vtep(l: &Lease) -> Result<Vec<Mac>, String> {
    if l.attrs.backend_type != "vxlan" {
        return Ok(Vec::new());
    }
    let mut macs = Vec::new();
    // Each half of the lease names its own device's MAC (IPv6-only leases have no BackendData).
    if l.key.v4.is_some() || l.key.v6.is_none() {
        macs.push(vtep_mac("BackendData", l.attrs.backend_data.as_deref())?);
    }
    if l.key.v6.is_some() {
        macs.push(vtep_mac(
            "BackendV6Data",
            l.attrs.backend_v6_data.as_deref(),
        )?);
    }
    Ok(macs)
}

fn vtep_mac(field: &str, raw: Option<&serde_json::value::RawValue>) -> Result<Mac, String> {
    let raw = raw.ok_or_else(|| format!("vxlan lease without {field}"))?;
    let v: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|_| format!("{field} {} is not JSON", raw.get()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{field} {} is not an object", raw.get()))?;
    let mac: Mac = crate::util::json::get_ci(obj, "VtepMAC")
        .and_then(|m| m.as_str())
        .ok_or_else(|| format!("{field} {} has no VtepMAC", raw.get()))?
        .parse()?;
    if mac.0 == [0; 6] || mac.0[0] & 1 == 1 {
        return Err(format!("VtepMAC {mac} is not a unicast address"));
    }
    Ok(mac)
}

/// What one lease may claim and no other may: the older lease keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Identity {
    VtepMac(Mac),
    WgKey([u8; 32]),
    WgEndpoint(SocketAddrV4),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::VtepMac(m) => write!(f, "VtepMAC {m}"),
            Identity::WgKey(k) => {
                let d = WireguardData {
                    public_key: *k,
                    port: None,
                };
                write!(f, "WireGuard public key {}", d.key_text())
            }
            Identity::WgEndpoint(e) => write!(f, "WireGuard endpoint {e}"),
        }
    }
}

/// The identities a lease claims (none for a lease whose backend data does not parse: such a
/// lease never passes `check`); `wg_port` is where a wireguard lease without a port is reached.
fn identities(l: &Lease, wg_port: u16) -> Vec<Identity> {
    let mut ids = Vec::new();
    if let Ok(macs) = vtep(l) {
        ids.extend(macs.into_iter().map(Identity::VtepMac));
        ids.dedup();
    }
    if let Ok(Some(wg)) = WireguardData::of(l) {
        ids.push(Identity::WgKey(wg.public_key));
        ids.push(Identity::WgEndpoint(
            wg.endpoint(l.attrs.public_ip, wg_port),
        ));
    }
    ids
}

/// One family of the config as `Checker::subnet` needs it.
struct FamilyView {
    network: IpNet,
    len: u8,
    /// The config keys naming the subnet length and the network (for errors).
    keys: [&'static str; 2],
    own: Option<IpNet>,
}

impl Checker {
    /// This node's WireGuard `ListenPort`: where a peer whose wireguard lease names no port is
    /// reached.
    pub fn wg_port(&self) -> u16 {
        listen_port(&self.cfg)
    }

    /// The config's side of `n`'s family, and this node's own subnet of that family.
    fn family(&self, n: IpNet) -> Result<FamilyView, String> {
        let missing = |family| format!("subnet {n}: {family} is not enabled");
        Ok(match n {
            IpNet::V4(_) => {
                let f = self.cfg.v4.as_ref().ok_or_else(|| missing("IPv4"))?;
                FamilyView {
                    network: f.network.into(),
                    len: f.subnet_len,
                    keys: ["SubnetLen", "Network"],
                    own: self.own.v4.map(IpNet::V4),
                }
            }
            IpNet::V6(_) => {
                let f = self.cfg.v6.as_ref().ok_or_else(|| missing("IPv6"))?;
                FamilyView {
                    network: f.network.into(),
                    len: f.subnet_len,
                    keys: ["IPv6SubnetLen", "IPv6Network"],
                    own: self.own.v6.map(IpNet::V6),
                }
            }
        })
    }

    /// One half of a lease's subnet, either family.
    fn subnet(&self, n: IpNet) -> Result<(), String> {
        let FamilyView {
            network,
            len,
            keys: [len_key, net_key],
            own,
        } = self.family(n)?;
        if n != n.trunc() {
            return Err(format!("subnet {n} has host bits set"));
        }
        if self.exact_length && n.prefix_len() != len {
            return Err(format!("subnet {n}: prefix length is not {len_key} {len}"));
        }
        if !network.contains(&n) {
            return Err(format!("subnet {n} is outside {net_key} {network}"));
        }
        // This node's pod addresses (cni0, flannel.1) are the own-subnet check's business;
        // every other attached network of the family must not be covered (`contains` is false
        // across families).
        let attached = self.local.iter().find(|l| {
            let l = l.trunc();
            !own.is_some_and(|o| o.contains(&l))
                && (l.contains(&n.network()) || n.contains(&l.network()))
        });
        match attached {
            Some(l) => Err(format!(
                "subnet {n} overlaps this node's network {}",
                l.trunc()
            )),
            None => Ok(()),
        }
    }

    fn public(&self, ip: IpAddr) -> Result<(), String> {
        public_kind(ip)?;
        if self.local.iter().any(|l| l.addr() == ip) {
            return Err(format!("public address {ip} is this node's own"));
        }
        Ok(())
    }

    /// The checks that need only the lease itself.
    pub fn check(&self, l: &Lease) -> Result<(), String> {
        if l.key.v4.is_none() && l.key.v6.is_none() {
            return Err("no subnet".into());
        }
        if overlaps(&l.key, &self.own) {
            return Err(format!(
                "subnet {} overlaps this node's {}",
                l.key, self.own
            ));
        }
        for n in l
            .key
            .v4
            .map(IpNet::V4)
            .into_iter()
            .chain(l.key.v6.map(IpNet::V6))
        {
            self.subnet(n)?;
        }
        if self.cfg.enable_ipv4 && l.key.v4.is_some() {
            self.public(IpAddr::V4(l.attrs.public_ip))?;
        }
        match (l.attrs.public_ipv6, l.key.v6) {
            (Some(ip), Some(_)) => self.public(IpAddr::V6(ip))?,
            (None, Some(n)) => return Err(format!("IPv6 subnet {n} without a PublicIPv6")),
            _ => {}
        }
        vtep(l)?;
        WireguardData::of(l)?;
        if let Some(id) = identities(l, self.wg_port())
            .iter()
            .find(|id| self.own_ids.contains(id))
        {
            return Err(format!("{id} is this node's own"));
        }
        Ok(())
    }

    /// Splits leases into the accepted and the refused (with why). Among leases that each pass
    /// `check`, one overlapping an older lease, or reusing its VtepMAC, WireGuard key or
    /// endpoint, is refused; between two
    /// as old (creation times in seconds tie), the `incumbent` one, already programmed, stays.
    pub fn select<'a>(
        &self,
        leases: impl Iterator<Item = &'a Lease>,
        incumbent: impl Fn(&SubnetKey) -> bool,
    ) -> Selection<'a> {
        let mut sel = Selection {
            index: Index::new(self.wg_port()),
            ..Selection::default()
        };
        let mut valid: Vec<&Lease> = Vec::new();
        for l in leases {
            match self.check(l) {
                Ok(()) => valid.push(l),
                Err(why) => sel.refused.push((l, why)),
            }
        }
        // Oldest first, so a later lease is the one that yields.
        valid.sort_by_key(|l| (l.created, !incumbent(&l.key), l.key));
        for l in valid {
            match sel.index.collision(l) {
                None => {
                    sel.index.insert(l);
                    sel.accepted.push(l);
                }
                Some((older, why)) => {
                    sel.displaced.insert(l.key, older);
                    sel.refused.push((l, why));
                }
            }
        }
        sel.index.compact();
        sel
    }
}

/// The accepted leases' subnets and identities (VtepMACs, WireGuard keys and endpoints):
/// whether another lease collides with one costs a few lookups.
#[derive(Debug)]
pub struct Index {
    taken: Taken,
    claimed: BTreeMap<Identity, SubnetKey>,
    /// This node's WireGuard `ListenPort`: the endpoint of a lease that names no port.
    wg_port: u16,
}

impl Default for Index {
    fn default() -> Index {
        Index::new(DEFAULT_WG_PORT)
    }
}

impl Index {
    pub fn new(wg_port: u16) -> Index {
        Index {
            taken: Taken::default(),
            claimed: BTreeMap::new(),
            wg_port,
        }
    }

    /// Whether `l` fits beside the accepted leases (its own earlier version aside).
    pub fn admits(&self, l: &Lease) -> Result<(), String> {
        match self.collision(l) {
            None => Ok(()),
            Some((_, why)) => Err(why),
        }
    }

    /// An accepted lease `l` collides with (its own earlier version aside), and why.
    pub fn collision(&self, l: &Lease) -> Option<(SubnetKey, String)> {
        if let Some(older) = self.taken.overlapping(&l.key).filter(|k| *k != l.key) {
            let why = format!("subnet {} overlaps the older lease {older}", l.key);
            return Some((older, why));
        }
        for id in identities(l, self.wg_port) {
            if let Some(other) = self.claimed.get(&id).filter(|k| **k != l.key) {
                return Some((*other, format!("{id} is already the older lease {other}'s")));
            }
        }
        None
    }

    /// Rebuilds the maps from their sorted entries, which fills every node: built one insert
    /// at a time (as `select` does, in age order) they keep a third or more of their room
    /// empty, for as long as the peers live.
    pub fn compact(&mut self) {
        fn dense<K: Ord, V>(m: &mut BTreeMap<K, V>) {
            *m = std::mem::take(m).into_iter().collect();
        }
        dense(&mut self.taken.v4);
        dense(&mut self.taken.v6);
        dense(&mut self.claimed);
    }

    pub fn insert(&mut self, l: &Lease) {
        self.taken.insert(l.key);
        for id in identities(l, self.wg_port) {
            self.claimed.insert(id, l.key);
        }
    }

    pub fn remove(&mut self, l: &Lease) {
        self.taken.remove(&l.key);
        for id in identities(l, self.wg_port) {
            if self.claimed.get(&id) == Some(&l.key) {
                self.claimed.remove(&id);
            }
        }
    }
}

/// Leases by verdict, and the index of the accepted.
#[derive(Debug, Default)]
pub struct Selection<'a> {
    pub accepted: Vec<&'a Lease>,
    pub refused: Vec<(&'a Lease, String)>,
    /// The refused that passed `check` but collide with an older accepted lease: which one.
    pub displaced: BTreeMap<SubnetKey, SubnetKey>,
    pub index: Index,
}

/// Disjoint subnets, by where they start: whether a new one overlaps any costs two lookups.
#[derive(Debug, Default)]
struct Taken {
    v4: BTreeMap<u32, (Ipv4Net, SubnetKey)>,
    v6: BTreeMap<u128, (Ipv6Net, SubnetKey)>,
}

impl Taken {
    /// The lease among these that `key` overlaps, if any.
    fn overlapping(&self, key: &SubnetKey) -> Option<SubnetKey> {
        if let Some(n) = key.v4 {
            let start = u32::from(n.network());
            let before = self.v4.range(..=start).next_back();
            let after = self.v4.range(start..).next();
            for (net, k) in before.into_iter().chain(after).map(|(_, v)| v) {
                if v4_overlaps(net, &n) {
                    return Some(*k);
                }
            }
        }
        if let Some(n) = key.v6 {
            let start = u128::from(n.network());
            let before = self.v6.range(..=start).next_back();
            let after = self.v6.range(start..).next();
            for (net, k) in before.into_iter().chain(after).map(|(_, v)| v) {
                if v6_overlaps(net, &n) {
                    return Some(*k);
                }
            }
        }
        None
    }

    fn insert(&mut self, key: SubnetKey) {
        if let Some(n) = key.v4 {
            self.v4.insert(u32::from(n.network()), (n, key));
        }
        if let Some(n) = key.v6 {
            self.v6.insert(u128::from(n.network()), (n, key));
        }
    }

    fn remove(&mut self, key: &SubnetKey) {
        if let Some(n) = key.v4 {
            self.v4.remove(&u32::from(n.network()));
        }
        if let Some(n) = key.v6 {
            self.v6.remove(&u128::from(n.network()));
        }
    }
}

/// Whether an address can be a node's public address at all: not unspecified, loopback,
/// multicast, link-local or broadcast. For peers' leases and for the public address this
/// node's own annotations name (anyone allowed to annotate Nodes can write them).
pub fn public_kind(ip: IpAddr) -> Result<(), String> {
    let bad = match ip {
        IpAddr::V4(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_link_local()
                || a.is_broadcast()
        }
        IpAddr::V6(a) => {
            a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_unicast_link_local()
        }
    };
    if bad {
        return Err(format!("public address {ip} cannot be a node's"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each lease is refused by `c` with a reason containing its text.
    #[track_caller]
    fn assert_refused<const N: usize>(c: &Checker, cases: [(Lease, &str); N]) {
        for (l, why) in cases {
            let err = c.check(&l).unwrap_err();
            assert!(
                err.contains(why),
                "{} {}: {err:?} lacks {why:?}",
                l.key,
                l.attrs.to_json()
            );
        }
    }
    use crate::lease::{Keepalive, LeaseAttrs};
    use serde_json::value::RawValue;

    fn checker() -> Checker {
        Checker {
            cfg: NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap(),
            exact_length: true,
            own: SubnetKey::parse("10.244.1.0-24").unwrap(),
            local: vec![
                "198.18.0.11/17".parse().unwrap(),
                "10.244.1.0/32".parse().unwrap(),
            ],
            own_ids: Vec::new(),
        }
    }

    fn lease(key: &str, ip: &str, mac: &str, created: i64) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: Some(
                    RawValue::from_string(format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)).unwrap(),
                ),
                backend_v6_data: None,
            },
            keepalive: Keepalive::Etcd(1),
            revision: created,
            created,
        }
    }

    #[test]
    fn each_hostile_lease_is_refused_with_why() {
        let c = checker();
        let ok = lease("10.244.2.0-24", "198.18.0.12", "02:00:00:00:00:02", 1);
        assert_eq!(c.check(&ok), Ok(()));
        let cases = [
            (
                lease("0.0.0.0-1", "198.18.0.12", "02:00:00:00:00:02", 1),
                "overlaps this node's 10.244.1.0-24",
            ),
            (
                lease("128.0.0.0-1", "198.18.0.12", "02:00:00:00:00:02", 1),
                "prefix length is not SubnetLen",
            ),
            (
                lease("10.0.0.0-8", "198.18.0.12", "02:00:00:00:00:02", 1),
                "overlaps this node's",
            ),
            (
                lease("10.244.128.0-17", "198.18.0.12", "02:00:00:00:00:02", 1),
                "prefix length is not SubnetLen 24",
            ),
            (
                lease("10.244.2.5-24", "198.18.0.12", "02:00:00:00:00:02", 1),
                "host bits set",
            ),
            (
                lease("10.244.1.0-24", "198.18.0.12", "02:00:00:00:00:02", 1),
                "overlaps this node's 10.244.1.0-24",
            ),
            (
                lease("10.244.2.0-24", "0.0.0.0", "02:00:00:00:00:02", 1),
                "public address 0.0.0.0",
            ),
            (
                lease("10.244.2.0-24", "127.0.0.1", "02:00:00:00:00:02", 1),
                "public address 127.0.0.1",
            ),
            (
                lease("10.244.2.0-24", "224.0.0.5", "02:00:00:00:00:02", 1),
                "public address 224.0.0.5",
            ),
            (
                lease("10.244.2.0-24", "169.254.1.1", "02:00:00:00:00:02", 1),
                "public address 169.254.1.1",
            ),
            (
                lease("10.244.2.0-24", "198.18.0.11", "02:00:00:00:00:02", 1),
                "198.18.0.11 is this node's own",
            ),
            (
                lease("10.244.2.0-24", "198.18.0.12", "00:00:00:00:00:00", 1),
                "not a unicast",
            ),
            (
                lease("10.244.2.0-24", "198.18.0.12", "01:00:5e:00:00:01", 1),
                "not a unicast",
            ),
        ];
        assert_refused(&c, cases);
        let mut bad = ok.clone();
        bad.attrs.backend_data = Some(RawValue::from_string("{\"VNI\":1}".into()).unwrap());
        assert!(c.check(&bad).unwrap_err().contains("has no VtepMAC"));
        // An underlay subnet.
        let mut k = checker();
        k.cfg = NetworkConfig::parse(r#"{"Network":"198.0.0.0/8"}"#).unwrap();
        k.own = SubnetKey::parse("198.200.0.0-24").unwrap();
        let under = lease("198.18.0.0-24", "198.18.0.12", "02:00:00:00:00:02", 1);
        assert!(
            k.check(&under)
                .unwrap_err()
                .contains("overlaps this node's network 198.18.0.0/17")
        );
    }

    /// The IPv6 half of a lease is checked as strictly as the IPv4 one. One case after another
    /// over one checker (a table would name the same fields twice): long, but a list.
    #[test]
    fn the_ipv6_half_is_untrusted_too() {
        let dual = |own: &str| Checker {
            cfg: NetworkConfig::parse(
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56"}"#,
            )
            .unwrap(),
            exact_length: true,
            own: SubnetKey::parse(own).unwrap(),
            local: vec![
                "198.18.0.11/17".parse().unwrap(),
                "2001:2::b/64".parse().unwrap(),
            ],
            own_ids: Vec::new(),
        };
        let c = dual("10.244.1.0-24&fd10:244:0:1::-64");
        let v6 = |key: &str, ip6: &str, mac6: Option<&str>| {
            let mut l = lease(key, "198.18.0.12", "02:00:00:00:00:02", 1);
            l.attrs.public_ipv6 = Some(ip6.parse().unwrap());
            l.attrs.backend_v6_data = mac6
                .map(|m| RawValue::from_string(format!(r#"{{"VNI":1,"VtepMAC":"{m}"}}"#)).unwrap());
            l
        };
        let good = v6(
            "10.244.2.0-24&fd10:244:0:2::-64",
            "2001:2::c",
            Some("02:00:00:00:00:06"),
        );
        assert_eq!(c.check(&good), Ok(()));
        let cases = [
            (
                v6(
                    "10.244.2.0-24&fd10:244:0:20::-60",
                    "2001:2::c",
                    Some("02:00:00:00:00:06"),
                ),
                "prefix length is not IPv6SubnetLen 64",
            ),
            (
                v6(
                    "10.244.2.0-24&fd10:245::-64",
                    "2001:2::c",
                    Some("02:00:00:00:00:06"),
                ),
                "outside IPv6Network",
            ),
            (
                v6(
                    "10.244.2.0-24&fd10:244:0:1::-64",
                    "2001:2::c",
                    Some("02:00:00:00:00:06"),
                ),
                "overlaps this node's",
            ),
            (
                v6(
                    "10.244.2.0-24&fd10:244:0:2::-64",
                    "ff02::1",
                    Some("02:00:00:00:00:06"),
                ),
                "public address ff02::1",
            ),
            (
                v6(
                    "10.244.2.0-24&fd10:244:0:2::-64",
                    "fe80::1",
                    Some("02:00:00:00:00:06"),
                ),
                "public address fe80::1",
            ),
            (
                v6(
                    "10.244.2.0-24&fd10:244:0:2::-64",
                    "2001:2::b",
                    Some("02:00:00:00:00:06"),
                ),
                "2001:2::b is this node's own",
            ),
            (
                v6("10.244.2.0-24&fd10:244:0:2::-64", "2001:2::c", None),
                "vxlan lease without BackendV6Data",
            ),
            (
                v6(
                    "10.244.2.0-24&fd10:244:0:2::-64",
                    "2001:2::c",
                    Some("33:33:00:00:00:01"),
                ),
                "not a unicast",
            ),
        ];
        assert_refused(&c, cases);
        let mut no_public = good.clone();
        no_public.attrs.public_ipv6 = None;
        assert!(
            c.check(&no_public)
                .unwrap_err()
                .contains("without a PublicIPv6")
        );
        // Two leases whose IPv6 halves overlap: the older keeps it; an IPv6 VtepMAC is an
        // identity like an IPv4 one.
        let mut late = v6(
            "10.244.3.0-24&fd10:244:0:2::-64",
            "2001:2::d",
            Some("02:00:00:00:00:07"),
        );
        late.created = 2;
        let mut thief = v6(
            "10.244.4.0-24&fd10:244:0:4::-64",
            "2001:2::e",
            Some("02:00:00:00:00:06"),
        );
        thief.created = 3;
        let sel = c.select([&good, &late, &thief].into_iter(), |_| false);
        assert_eq!(sel.accepted.len(), 1);
        assert!(
            sel.refused
                .iter()
                .any(|(l, why)| l.key == late.key && why.contains("overlaps"))
        );
        assert!(
            sel.refused
                .iter()
                .any(|(l, why)| l.key == thief.key && why.contains("VtepMAC"))
        );
        // IPv6-only: no BackendData needed, the IPv4 public address is not looked at.
        let mut only = dual("0.0.0.0-0&fd10:244:0:1::-64");
        only.cfg = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56"}"#,
        )
        .unwrap();
        let mut l = v6(
            "0.0.0.0-0&fd10:244:0:2::-64",
            "2001:2::c",
            Some("02:00:00:00:00:06"),
        );
        l.attrs.public_ip = std::net::Ipv4Addr::UNSPECIFIED;
        l.attrs.backend_data = None;
        assert_eq!(only.check(&l), Ok(()));
    }

    #[test]
    fn the_older_lease_keeps_its_subnet_and_its_mac() {
        let c = checker();
        let old = lease("10.244.2.0-24", "198.18.0.12", "02:00:00:00:00:02", 5);
        let thief = lease("10.244.3.0-24", "198.18.0.13", "02:00:00:00:00:02", 9);
        let other = lease("10.244.4.0-24", "198.18.0.14", "02:00:00:00:00:04", 7);
        let all = [thief.clone(), old.clone(), other.clone()];
        let sel = c.select(all.iter(), |_| false);
        let accepted: Vec<String> = sel.accepted.iter().map(|l| l.key.to_string()).collect();
        assert_eq!(accepted, ["10.244.2.0-24", "10.244.4.0-24"]);
        assert_eq!(sel.refused.len(), 1);
        assert!(
            sel.refused[0]
                .1
                .contains("is already the older lease 10.244.2.0-24's")
        );
        // In Kubernetes mode the length is the controller manager's.
        let k = Checker {
            exact_length: false,
            ..checker()
        };
        assert_eq!(
            k.check(&lease(
                "10.244.64.0-18",
                "198.18.0.15",
                "02:00:00:00:00:05",
                1
            )),
            Ok(())
        );
        let default_route = lease("128.0.0.0-1", "198.18.0.15", "02:00:00:00:00:05", 1);
        assert!(
            k.check(&default_route)
                .unwrap_err()
                .contains("outside Network")
        );
    }

    fn wg_lease(key: &str, ip: &str, data: &str, created: i64) -> Lease {
        let mut l = lease(key, ip, "02:00:00:00:00:02", created);
        l.attrs.backend_type = "wireguard".into();
        l.attrs.backend_data = Some(RawValue::from_string(data.into()).unwrap());
        l
    }

    const KEY_A: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn wireguard_leases_are_checked_and_keep_their_key_and_endpoint() {
        let c = checker();
        let data = |k: &str, port: u16| format!(r#"{{"PublicKey":"{k}","Port":{port}}}"#);
        let a = wg_lease("10.244.2.0-24", "198.18.0.12", &data(KEY_A, 51820), 5);
        assert_eq!(c.check(&a), Ok(()));
        let bad = wg_lease(
            "10.244.2.0-24",
            "198.18.0.12",
            r#"{"PublicKey":"x","Port":1}"#,
            5,
        );
        assert!(c.check(&bad).unwrap_err().contains("not a WireGuard key"));
        // Port 0 is flanneld's "no port" (this node's ListenPort), not an error.
        let zero = wg_lease("10.244.2.0-24", "198.18.0.12", &data(KEY_A, 0), 5);
        assert_eq!(c.check(&zero), Ok(()));
        // A newer lease claiming a's key, from another address: refused.
        let thief = wg_lease("10.244.3.0-24", "198.18.0.13", &data(KEY_A, 51820), 9);
        // A newer lease claiming a's endpoint with its own key: refused too.
        let squatter = wg_lease("10.244.4.0-24", "198.18.0.12", &data(KEY_B, 51820), 8);
        // Same address, another port, another key: a second tunnel, accepted.
        let other = wg_lease("10.244.5.0-24", "198.18.0.12", &data(KEY_B, 51821), 7);
        let all = [thief.clone(), squatter.clone(), a.clone(), other.clone()];
        let sel = c.select(all.iter(), |_| false);
        let accepted: Vec<String> = sel.accepted.iter().map(|l| l.key.to_string()).collect();
        assert_eq!(accepted, ["10.244.2.0-24", "10.244.5.0-24"]);
        let why: BTreeMap<String, String> = sel
            .refused
            .iter()
            .map(|(l, w)| (l.key.to_string(), w.clone()))
            .collect();
        assert_eq!(
            why["10.244.3.0-24"],
            format!("WireGuard public key {KEY_A} is already the older lease 10.244.2.0-24's")
        );
        assert!(
            why["10.244.4.0-24"].contains("WireGuard public key")
                || why["10.244.4.0-24"].contains("endpoint"),
            "{why:?}"
        );
        // A key rotation rewrites the lease itself: its own earlier version is no collision.
        let mut index = sel.index;
        let rotated = wg_lease(
            "10.244.2.0-24",
            "198.18.0.12",
            &data(KEY_A.replace('H', "J").as_str(), 51820),
            5,
        );
        assert_eq!(index.admits(&rotated), Ok(()));
        index.remove(&a);
        index.insert(&rotated);
        assert_eq!(index.admits(&thief), Ok(()), "the old key is free again");
    }

    /// This node's own lease is no peer, so only the checker knows its identities: a forged
    /// lease reusing its VtepMAC (or WireGuard key) would take over its traffic.
    #[test]
    fn a_lease_claiming_this_nodes_vtep_or_wireguard_key_is_refused() {
        let own = lease("10.244.1.0-24", "198.18.0.11", "02:00:00:00:00:01", 1);
        let c = Checker {
            own_ids: own_identities(&own, &checker().cfg),
            ..checker()
        };
        let thief = lease("10.244.2.0-24", "198.18.0.12", "02:00:00:00:00:01", 2);
        assert_refused(
            &c,
            [(thief, "VtepMAC 02:00:00:00:00:01 is this node's own")],
        );
        let data = |k: &str| format!(r#"{{"PublicKey":"{k}","Port":51820}}"#);
        let own = wg_lease("10.244.1.0-24", "198.18.0.11", &data(KEY_A), 1);
        let c = Checker {
            own_ids: own_identities(&own, &checker().cfg),
            ..checker()
        };
        let thief = wg_lease("10.244.2.0-24", "198.18.0.12", &data(KEY_A), 2);
        let why = format!("WireGuard public key {KEY_A} is this node's own");
        assert_refused(&c, [(thief, why.as_str())]);
        let other = wg_lease("10.244.2.0-24", "198.18.0.12", &data(KEY_B), 2);
        assert_eq!(c.check(&other), Ok(()));
    }

    #[test]
    fn a_flanneld_lease_without_a_port_is_reached_on_our_listen_port() {
        // flanneld writes {"PublicKey":"…"} only: accepted, and its endpoint is
        // <PublicIP>:<our ListenPort> when it comes to collisions.
        let flanneld = |key: &str, port_field: &str| {
            wg_lease(
                key,
                "198.18.0.12",
                &format!(r#"{{"PublicKey":"{KEY_B}"{port_field}}}"#),
                9,
            )
        };
        let podnet = wg_lease(
            "10.244.2.0-24",
            "198.18.0.12",
            &format!(r#"{{"PublicKey":"{KEY_A}","Port":51900}}"#),
            5,
        );
        let ours = |port: u16| {
            Checker {
            cfg: NetworkConfig::parse(&format!(
                r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard","ListenPort":{port}}}}}"#
            ))
            .unwrap(),
            ..checker()
        }
        };
        for port_field in ["", r#","Port":0"#] {
            let f = flanneld("10.244.3.0-24", port_field);
            assert_eq!(ours(51900).check(&f), Ok(()), "{port_field:?}");
            // We listen on 51900: the flanneld node is dialled at .12:51900, podnet's lease's
            // endpoint: the newer one is refused.
            let both = [podnet.clone(), f.clone()];
            let sel = ours(51900).select(both.iter(), |_| false);
            assert_eq!(sel.accepted.len(), 1);
            assert_eq!(
                sel.refused[0].1,
                "WireGuard endpoint 198.18.0.12:51900 is already the older lease 10.244.2.0-24's"
            );
            // We listen on 51820: two endpoints, both accepted.
            let sel = ours(51820).select(both.iter(), |_| false);
            assert_eq!(sel.accepted.len(), 2, "{:?}", sel.refused);
            // The index a PeerSet starts with resolves the same way.
            let mut index = Index::new(51900);
            index.insert(&podnet);
            assert!(index.admits(&f).is_err());
        }
    }

    #[test]
    fn a_peer_set_programs_only_accepted_leases_and_reacts_to_changes() {
        use crate::lease::{LeaseEvent, PeerSet};
        let mut ps = PeerSet::checked(checker());
        let old = lease("10.244.2.0-24", "198.18.0.12", "02:00:00:00:00:02", 5);
        let thief = lease("10.244.3.0-24", "198.18.0.13", "02:00:00:00:00:02", 9);
        let route = lease("0.0.0.0-1", "198.18.0.14", "02:00:00:00:00:04", 1);
        let ev = ps.reset(vec![old.clone(), thief.clone(), route.clone()]);
        assert_eq!(ev, vec![LeaseEvent::Added(old.clone().into())]);
        let refused: Vec<String> = ps.refused().map(|(k, _)| k.to_string()).collect();
        assert_eq!(refused, ["0.0.0.0-1", "10.244.3.0-24"]);
        // The holder of the MAC leaves: the newcomer is accepted now.
        let ev = ps.delete(&old.key);
        assert_eq!(
            ev,
            vec![
                LeaseEvent::Removed(old.clone().into()),
                LeaseEvent::Added(thief.clone().into())
            ]
        );
        // A valid lease turns hostile: it is withdrawn at once.
        let mut hostile = thief.clone();
        hostile.attrs.public_ip = "127.0.0.1".parse().unwrap();
        assert_eq!(
            ps.put(hostile),
            vec![LeaseEvent::Removed(thief.clone().into())]
        );
        assert_eq!(ps.len(), 0);
        // And comes back.
        assert_eq!(
            ps.put(thief.clone()),
            vec![LeaseEvent::Added(thief.clone().into())]
        );
        ps.delete(&route.key);
        assert_eq!(ps.refused().count(), 0);
        // The fast path: a fresh, valid lease; a renewal; a change of address; a delete.
        let b = lease("10.244.4.0-24", "198.18.0.14", "02:00:00:00:00:04", 11);
        assert_eq!(ps.put(b.clone()), vec![LeaseEvent::Added(b.clone().into())]);
        assert_eq!(ps.put(b.clone()), vec![]);
        let mut b2 = b.clone();
        b2.attrs.public_ip = "198.18.0.15".parse().unwrap();
        assert_eq!(
            ps.put(b2.clone()),
            vec![LeaseEvent::Added(b2.clone().into())]
        );
        assert_eq!(ps.delete(&b2.key), vec![LeaseEvent::Removed(b2.into())]);
        assert_eq!(ps.len(), 1);
        // Kubernetes mode: lengths vary, so two leases can overlap; the older keeps it.
        let mut kps = PeerSet::checked(Checker {
            exact_length: false,
            ..checker()
        });
        let small = lease("10.244.8.0-24", "198.18.0.17", "02:00:00:00:00:07", 3);
        let big = lease("10.244.8.0-22", "198.18.0.18", "02:00:00:00:00:08", 4);
        assert_eq!(
            kps.put(small.clone()),
            vec![LeaseEvent::Added(small.clone().into())]
        );
        assert_eq!(kps.put(big.clone()), vec![]);
        assert!(
            kps.refused()
                .next()
                .unwrap()
                .1
                .contains("overlaps the older lease 10.244.8.0-24")
        );
        assert_eq!(
            kps.delete(&small.key),
            vec![
                LeaseEvent::Removed(small.into()),
                LeaseEvent::Added(big.clone().into())
            ]
        );
        // Created in the same second (Node times are in seconds), with a lower subnet and the
        // same VTEP: the lease already programmed stays.
        let twin = lease("10.244.4.0-24", "198.18.0.19", "02:00:00:00:00:08", 4);
        assert_eq!(kps.put(twin.clone()), vec![]);
        let (key, why) = kps.refused().next().unwrap();
        assert_eq!(*key, twin.key);
        assert!(
            why.contains("is already the older lease 10.244.8.0-22's"),
            "{why}"
        );
    }

    /// With refused leases about (a bad one, a VTEP thief), the common events stay
    /// incremental: a new valid peer, a renewal, a change of address, a delete.
    #[test]
    fn the_common_events_stay_incremental_beside_refused_leases() {
        use crate::lease::{LeaseEvent, PeerSet};
        let mut ps = PeerSet::checked(checker());
        let a = lease("10.244.2.0-24", "198.18.0.12", "02:00:00:00:00:02", 1);
        let thief = lease("10.244.3.0-24", "198.18.0.13", "02:00:00:00:00:02", 2);
        let bad = lease("10.244.4.0-24", "127.0.0.1", "02:00:00:00:00:04", 3);
        ps.reset(vec![a.clone(), thief.clone(), bad.clone()]);
        assert_eq!(ps.refused().count(), 2);
        let full = ps.recomputes();
        let b = lease("10.244.5.0-24", "198.18.0.15", "02:00:00:00:00:05", 4);
        assert_eq!(ps.put(b.clone()), vec![LeaseEvent::Added(b.clone().into())]);
        assert_eq!(ps.put(b.clone()), vec![]);
        let mut b2 = b.clone();
        b2.attrs.public_ip = "198.18.0.25".parse().unwrap();
        assert_eq!(
            ps.put(b2.clone()),
            vec![LeaseEvent::Added(b2.clone().into())]
        );
        assert_eq!(ps.delete(&b2.key), vec![LeaseEvent::Removed(b2.into())]);
        // The thief and the bad lease written again unchanged (a Node's heartbeat): nothing.
        assert_eq!(ps.put(thief.clone()), vec![]);
        assert_eq!(ps.put(bad.clone()), vec![]);
        // A refused lease goes, another bad one comes: no peer changes.
        assert_eq!(ps.delete(&bad.key), vec![]);
        assert_eq!(ps.put(bad.clone()), vec![]);
        assert_eq!(ps.recomputes(), full, "no full pass");
        // The thief's victim leaves: that takes a pass, and the thief is accepted.
        assert_eq!(
            ps.delete(&a.key),
            vec![
                LeaseEvent::Removed(a.into()),
                LeaseEvent::Added(thief.into())
            ]
        );
        assert_eq!(ps.recomputes(), full + 1);
    }

    /// Random puts and deletes of leases that collide, turn bad and come back: after each,
    /// the peers and the refused are what a full pass over the same leases decides.
    #[test]
    fn incremental_events_decide_as_a_full_pass_does() {
        use crate::lease::PeerSet;
        use rand::{RngExt, SeedableRng};
        let keys = [
            "10.244.2.0-24",
            "10.244.3.0-24",
            "10.244.4.0-24",
            "10.244.5.0-24",
            "10.244.4.0-23",
            "10.244.1.0-24",
            "10.244.6.0-24",
        ];
        let ips = ["198.18.0.12", "198.18.0.13", "198.18.0.14", "127.0.0.1"];
        let macs = [
            "02:00:00:00:00:02",
            "02:00:00:00:00:03",
            "02:00:00:00:00:04",
            "00:00:00:00:00:00",
        ];
        for seed in 0..40 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            // Kubernetes mode: lengths vary, so subnets collide as well as identities.
            let c = Checker {
                exact_length: seed % 2 == 0,
                ..checker()
            };
            let mut ps = PeerSet::checked(c.clone());
            let mut store: BTreeMap<SubnetKey, Lease> = BTreeMap::new();
            let mut clock = 0;
            for _ in 0..200 {
                let key = SubnetKey::parse(keys[rng.random_range(0..keys.len())]).unwrap();
                if rng.random_range(0..4) == 0 {
                    store.remove(&key);
                    ps.delete(&key);
                } else {
                    clock += 1;
                    let created = store.get(&key).map_or(clock, |l| l.created);
                    let ip = ips[rng.random_range(0..ips.len())];
                    let mac = macs[rng.random_range(0..macs.len())];
                    let l = lease(&key.to_string(), ip, mac, created);
                    store.insert(key, l.clone());
                    ps.put(l);
                }
                let mut fresh = PeerSet::checked(c.clone());
                fresh.reset(store.values().cloned().collect());
                let peers = |p: &PeerSet| -> Vec<(SubnetKey, String)> {
                    p.peers().map(|l| (l.key, l.attrs.to_json())).collect()
                };
                let refused =
                    |p: &PeerSet| -> Vec<SubnetKey> { p.refused().map(|(k, _)| *k).collect() };
                assert_eq!(peers(&ps), peers(&fresh), "seed {seed}");
                assert_eq!(refused(&ps), refused(&fresh), "seed {seed}");
            }
        }
    }
}

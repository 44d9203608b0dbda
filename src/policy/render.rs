//! The renderer: from what one node enforces (`compile::Compiled`) to nftables, as podnet's
//! table `inet podnet-policy`, and from one state to the next as a single transaction.
//!
//! ```text
//! table inet podnet-policy {
//!     set pn-<hash>-4 { type ipv4_addr; flags interval; elements = { ... } }   one per AddressSet
//!     map ingress-4   { type ipv4_addr : verdict; elements = { <pod ip> : jump in-<hash> } }
//!     map egress-4    { ... jump eg-<hash> }
//!     chain in-<hash> { <allow rules> accept; counter drop }      one per distinct rule list
//!     chain eg-<hash> { <allow rules> return; counter drop }
//!     chain forward   { type filter hook forward priority filter - 5; policy accept;
//!         ct state established,related accept
//!         icmpv6 type 135-136 accept                  neighbour discovery, if IPv6
//!         iifname "cni0" ip saddr vmap @egress-4      the source's egress, if isolated
//!         oifname "cni0" ip daddr vmap @ingress-4 }   the destination's ingress, if isolated
//! }
//! ```
//!
//! The table is data first (`Ruleset`: sets, maps, chains of typed `Rule`s), which an update
//! diffs. The kernel is written over nfnetlink: `full_batch` (the whole table) and
//! `update_batch` (from one `Ruleset` to the next) are one transaction each, the messages nft
//! 1.0.6 sends for the same table (byte-golden in the tests), so `nft list` shows exactly what
//! nft's own text would have made. That text (`full`, `update`; a `Rule` displays as its line)
//! stays as the readable form: the tests and the benchmark feed it to `nft -f` as the oracle.
//! A change to one form is a change to both.
//!
//! Invariants:
//! - Replies of allowed connections pass (`ct state established,related`) before any policy.
//! - IPv6 neighbour solicitations and advertisements (ICMPv6 135, 136) pass before any policy:
//!   they are address resolution, which NetworkPolicy does not govern, and conntrack never
//!   marks them established, so an isolated pod's chain would drop them and with them every
//!   allowed IPv6 connection to a pod on the same bridge (which br_netfilter brings through
//!   this hook). Router solicitations and advertisements and redirects (133, 134, 137) stay
//!   under the policy: pods' router is their node, whose messages go through input and output,
//!   never forward, so on this hook only a pod playing router would send them.
//! - A pod no policy isolates costs one map lookup per packet it sends or receives through the
//!   pods' bridge (its address is in no map; none for other traffic): a packet that is not a
//!   reply looks its source up in the egress map if it came from the bridge and its
//!   destination in the ingress map if it leaves through it, so between two pods of one node
//!   it takes two lookups, one per end.
//! - Chains are named by a hash of their rules' text, so a chain's content never changes: an
//!   update adds chains, points map elements at them and deletes chains nothing points at any
//!   more. Sets are named by their definition and change by elements (each CIDR its own
//!   range, never merged with a neighbour, so it can be deleted alone). A pod joining or
//!   leaving a selector is a set element; a new pod under an existing policy is a map element.
//! - An update is one transaction, ordered so every reference exists when it is made: new
//!   sets, set element deletes then adds, new chains, map element deletes then adds, old
//!   chains, old sets. Nothing allowed is ever dropped in between; a transaction that fails
//!   changes nothing (nftables commits all of it or none).
//! - Traffic between a pod and its own node never reaches the forward hook (it is input or
//!   output), so it is never filtered.
//!
//! Counters: every allow rule and every default drop has a counter and a comment naming the
//! policy and direction (`x/allow-a ingress rule 0`, `ingress isolated by x/deny-all`), which
//! `counters` sums for `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;

use super::compile::{Compiled, CompiledRule, Peers, PodRules, PortRange, Ports};
use super::model::{Direction, Protocol};
use crate::kernel::nft::{self, Expr, SetRef, Verdict};
use crate::owned::{NFT_FAMILY, NFT_POLICY_TABLE};

/// What the rendering needs besides the compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The bridge local pods hang off (`cni0`).
    pub bridge: String,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Log dropped packets to this NFLOG group.
    pub log_group: Option<u16>,
}

/// The table's contents as data: what a transaction diffs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Set name (with its family suffix) → elements (sorted, disjoint).
    pub sets: BTreeMap<String, Vec<IpNet>>,
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Map name (`ingress-4`, ...) → pod address → chain.
    pub maps: BTreeMap<&'static str, BTreeMap<IpAddr, String>>,
}

/// One rule of a pod's chain. It displays as nft's text for it; `exprs` are the expressions
/// nft makes of that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The peer's addresses: `ip saddr @set` and the like.
    pub peer: Option<SetMatch>,
    /// The destination protocol and ports (`meta l4proto tcp th dport 80`).
    pub port: Option<PortRange>,
    /// NFLOG group (a logged drop).
    pub log_group: Option<u16>,
    pub action: Action,
    /// Names the policy and direction, for the counters.
    pub comment: String,
}

/// `ip saddr @set` (source, IPv4), `ip6 daddr @set` (destination, IPv6), ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetMatch {
    pub v4: bool,
    pub source: bool,
    pub set: String,
}

/// What a rule of a pod's chain decides: ingress allows accept, egress allows return (to the
/// forward chain, where the destination's ingress is still to come), the default drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Return,
    Drop,
}

/// The prefix of NFLOG messages of dropped packets.
const LOG_PREFIX: &str = "podnet-policy-drop ";
/// The base chain.
const FORWARD: &str = "forward";

fn l4proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => nft::IPPROTO_TCP,
        Protocol::Udp => nft::IPPROTO_UDP,
        Protocol::Sctp => nft::IPPROTO_SCTP,
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = &self.peer {
            let fam = if m.v4 { "ip" } else { "ip6" };
            let dir = if m.source { "saddr" } else { "daddr" };
            write!(f, "{fam} {dir} @{} ", m.set)?;
        }
        if let Some(p) = &self.port {
            let proto = p.protocol.as_str().to_ascii_lowercase();
            match (p.first, p.last) {
                (0, 65535) => write!(f, "meta l4proto {proto} ")?,
                (a, b) if a == b => write!(f, "meta l4proto {proto} th dport {a} ")?,
                (a, b) => write!(f, "meta l4proto {proto} th dport {a}-{b} ")?,
            }
        }
        if let Some(g) = self.log_group {
            write!(f, "log prefix \"{LOG_PREFIX}\" group {g} ")?;
        }
        let verdict = match self.action {
            Action::Accept => "accept",
            Action::Return => "return",
            Action::Drop => "drop",
        };
        write!(f, "counter {verdict} comment \"{}\"", self.comment)
    }
}

impl Rule {
    /// The expressions, in nft's order; sets made in the same transaction are named with
    /// their ids from `made`.
    pub fn exprs(&self, made: &BTreeMap<String, SetRef>) -> Vec<Expr> {
        let mut v = Vec::new();
        if let Some(m) = &self.peer {
            let fam = if m.v4 {
                nft::NFPROTO_IPV4
            } else {
                nft::NFPROTO_IPV6
            };
            v.extend(Expr::nfproto(fam));
            v.push(if m.v4 {
                Expr::ipv4_addr(m.source)
            } else {
                Expr::ipv6_addr(m.source)
            });
            v.push(Expr::Lookup {
                set: set_ref(made, &m.set),
                invert: false,
            });
        }
        if let Some(p) = &self.port {
            v.extend(Expr::l4proto(l4proto(p.protocol)));
            match (p.first, p.last) {
                (0, 65535) => {}
                (a, b) if a == b => v.extend(Expr::dport(a)),
                (a, b) => v.extend(Expr::dport_range(a, b)),
            }
        }
        if let Some(group) = self.log_group {
            v.push(Expr::Log {
                prefix: Some(LOG_PREFIX.into()),
                group,
            });
        }
        v.push(Expr::Counter);
        v.push(Expr::Verdict(match self.action {
            Action::Accept => Verdict::Accept,
            Action::Return => Verdict::Return,
            Action::Drop => Verdict::Drop,
        }));
        v
    }
}

/// A set made in this transaction (with its id), or one that exists (by name).
fn set_ref(made: &BTreeMap<String, SetRef>, name: &str) -> SetRef {
    made.get(name)
        .cloned()
        .unwrap_or_else(|| SetRef::named(name))
}

fn hash(rules: &[Rule]) -> String {
    let lines: Vec<String> = rules.iter().map(Rule::to_string).collect();
    let mut h = DefaultHasher::new();
    lines.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn map_name(direction: Direction, v4: bool) -> &'static str {
    match (direction, v4) {
        (Direction::Ingress, true) => "ingress-4",
        (Direction::Ingress, false) => "ingress-6",
        (Direction::Egress, true) => "egress-4",
        (Direction::Egress, false) => "egress-6",
    }
}

fn set_name(set: &str, v4: bool) -> String {
    format!("{set}-{}", if v4 { 4 } else { 6 })
}

/// The rules of one allow rule, per family where the peer is a set.
fn allow_rules(r: &CompiledRule, direction: Direction, opts: &Options, out: &mut Vec<Rule>) {
    let (source, action) = match direction {
        Direction::Ingress => (true, Action::Accept),
        Direction::Egress => (false, Action::Return),
    };
    let peers: Vec<Option<SetMatch>> = match &r.peers {
        Peers::Any => vec![None],
        Peers::Set(name) => [(true, opts.ipv4), (false, opts.ipv6)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(v4, _)| {
                Some(SetMatch {
                    v4,
                    source,
                    set: set_name(name, v4),
                })
            })
            .collect(),
    };
    let ports: Vec<Option<PortRange>> = match &r.ports {
        Ports::Any => vec![None],
        Ports::Only(ranges) => ranges.iter().copied().map(Some).collect(),
    };
    let comment = format!("{} {} rule {}", r.policy, direction_name(direction), r.rule);
    for peer in &peers {
        for port in &ports {
            out.push(Rule {
                peer: peer.clone(),
                port: *port,
                log_group: None,
                action,
                comment: comment.clone(),
            });
        }
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// A pod's chain for one direction: its allow rules, then the default drop.
fn chain(pod: &PodRules, direction: Direction, opts: &Options) -> Option<(String, Vec<Rule>)> {
    let allows = pod.rules(direction)?;
    let mut rules = Vec::new();
    for r in allows {
        allow_rules(r, direction, opts, &mut rules);
    }
    let by: BTreeSet<String> = pod
        .isolated_by(direction)
        .iter()
        .map(|k| k.to_string())
        .collect();
    let by = if by.is_empty() {
        "policy".to_string()
    } else {
        by.into_iter().collect::<Vec<_>>().join(",")
    };
    let dir = direction_name(direction);
    rules.push(Rule {
        peer: None,
        port: None,
        log_group: opts.log_group,
        action: Action::Drop,
        comment: format!("{dir} isolated by {by}"),
    });
    let prefix = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    Some((format!("{prefix}-{}", hash(&rules)), rules))
}

/// The ruleset that enforces `compiled`.
pub fn ruleset(compiled: &Compiled, opts: &Options) -> Ruleset {
    let mut rs = Ruleset::default();
    for name in ["ingress-4", "ingress-6", "egress-4", "egress-6"] {
        rs.maps.insert(name, BTreeMap::new());
    }
    for set in compiled.sets.values() {
        if opts.ipv4 {
            let v4: Vec<IpNet> = set.v4().map(IpNet::V4).collect();
            rs.sets.insert(set_name(&set.name, true), v4);
        }
        if opts.ipv6 {
            let v6: Vec<IpNet> = set.v6().map(IpNet::V6).collect();
            rs.sets.insert(set_name(&set.name, false), v6);
        }
    }
    for pod in compiled.pods.values() {
        for direction in [Direction::Ingress, Direction::Egress] {
            let Some((name, rules)) = chain(pod, direction, opts) else {
                continue;
            };
            for ip in &pod.ips {
                let v4 = ip.is_ipv4();
                if (v4 && opts.ipv4) || (!v4 && opts.ipv6) {
                    let map = rs.maps.get_mut(map_name(direction, v4)).expect("declared");
                    map.insert(*ip, name.clone());
                }
            }
            rs.chains.insert(name, rules);
        }
    }
    rs
}

fn elements(cidrs: &[IpNet]) -> String {
    let list: Vec<String> = cidrs.iter().map(|n| n.to_string()).collect();
    list.join(", ")
}

/// A set's or map's key: the family by the name's suffix (`-4`, `-6`).
fn is_v6(name: &str) -> bool {
    name.ends_with("-6")
}

fn set_type(name: &str) -> &'static str {
    if is_v6(name) {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    }
}

fn set_spec(name: &str) -> nft::SetSpec<'_> {
    let (key_type, key_len) = if is_v6(name) {
        (nft::TYPE_IPV6_ADDR, 16)
    } else {
        (nft::TYPE_IPV4_ADDR, 4)
    };
    nft::SetSpec {
        name,
        key_type,
        key_len,
    }
}

/// The families in use: (IPv4?, nft's name for its header).
fn families(opts: &Options) -> impl Iterator<Item = (bool, &'static str)> {
    [(true, "ip", opts.ipv4), (false, "ip6", opts.ipv6)]
        .into_iter()
        .filter(|f| f.2)
        .map(|(v4, name, _)| (v4, name))
}

/// IPv6 neighbour solicitation and advertisement: the ICMPv6 types the base chain accepts
/// before any policy (see the invariants above).
const ND_TYPES: (u8, u8) = (135, 136);

/// The forward hook: replies first, IPv6 neighbour discovery, then the maps of the families
/// in use.
fn base_chain(opts: &Options) -> Vec<String> {
    let br = &opts.bridge;
    let mut v = vec!["ct state established,related accept".to_string()];
    if opts.ipv6 {
        let (first, last) = ND_TYPES;
        v.push(format!("icmpv6 type {first}-{last} accept"));
    }
    for (v4, fam) in families(opts) {
        let eg = map_name(Direction::Egress, v4);
        v.push(format!("iifname \"{br}\" {fam} saddr vmap @{eg}"));
    }
    for (v4, fam) in families(opts) {
        let ing = map_name(Direction::Ingress, v4);
        v.push(format!("oifname \"{br}\" {fam} daddr vmap @{ing}"));
    }
    v
}

/// `base_chain` as expressions: replies, neighbour discovery, the source's egress map for
/// packets from the bridge, the destination's ingress map for packets to it.
fn base_rules(opts: &Options, made: &BTreeMap<String, SetRef>) -> Vec<Vec<Expr>> {
    let est = nft::CT_STATE_ESTABLISHED | nft::CT_STATE_RELATED;
    let mut rules = vec![Expr::ct_state_any(est).to_vec()];
    rules[0].push(Expr::Verdict(Verdict::Accept));
    if opts.ipv6 {
        let (first, last) = ND_TYPES;
        let mut nd = Expr::icmpv6_type_range(first, last);
        nd.push(Expr::Verdict(Verdict::Accept));
        rules.push(nd);
    }
    for input in [true, false] {
        for (v4, _) in families(opts) {
            let direction = if input {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let fam = if v4 {
                nft::NFPROTO_IPV4
            } else {
                nft::NFPROTO_IPV6
            };
            let mut r = Expr::ifname(input, &opts.bridge).to_vec();
            r.extend(Expr::nfproto(fam));
            r.push(if v4 {
                Expr::ipv4_addr(input)
            } else {
                Expr::ipv6_addr(input)
            });
            r.push(Expr::Vmap(set_ref(made, map_name(direction, v4))));
            rules.push(r);
        }
    }
    rules
}

/// The whole table, created from nothing (nft's text: the oracle and a readable dump).
pub fn full(rs: &Ruleset, opts: &Options) -> String {
    let t = format!("{NFT_FAMILY} {NFT_POLICY_TABLE}");
    let mut s = format!("table {t}\ndelete table {t}\ntable {t} {{\n");
    for (name, cidrs) in &rs.sets {
        let _ = write!(
            s,
            "\tset {name} {{\n\t\ttype {}\n\t\tflags interval\n",
            set_type(name)
        );
        if !cidrs.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", elements(cidrs));
        }
        s.push_str("\t}\n");
    }
    for (name, elems) in &rs.maps {
        let _ = write!(
            s,
            "\tmap {name} {{\n\t\ttype {} : verdict\n",
            set_type(name)
        );
        if !elems.is_empty() {
            let e: Vec<String> = elems
                .iter()
                .map(|(ip, c)| format!("{ip} : jump {c}"))
                .collect();
            let _ = writeln!(s, "\t\telements = {{ {} }}", e.join(", "));
        }
        s.push_str("\t}\n");
    }
    for (name, rules) in &rs.chains {
        let _ = writeln!(s, "\tchain {name} {{");
        for r in rules {
            let _ = writeln!(s, "\t\t{r}");
        }
        s.push_str("\t}\n");
    }
    s.push_str(
        "\tchain forward {\n\t\ttype filter hook forward priority filter - 5; policy accept;\n",
    );
    for l in base_chain(opts) {
        let _ = writeln!(s, "\t\t{l}");
    }
    s.push_str("\t}\n}\n");
    s
}

fn policy_batch() -> nft::Batch {
    nft::Batch::new(nft::NFPROTO_INET, NFT_POLICY_TABLE)
}

/// The whole table as one nfnetlink transaction: the table deleted if it exists and made
/// anew (what `full`'s text does), in nft's order: chains, sets and maps with their
/// elements, rules.
pub fn full_batch(rs: &Ruleset, opts: &Options) -> nft::Transaction {
    let mut b = policy_batch();
    b.add_table();
    b.delete_table();
    b.add_table();
    for name in rs.chains.keys() {
        b.add_chain(name, None);
    }
    let base = nft::BaseChain {
        kind: "filter",
        hook: nft::Hook::Forward,
        priority: -5,
    };
    b.add_chain(FORWARD, Some(base));
    let mut made = BTreeMap::new();
    for (name, cidrs) in &rs.sets {
        let set = b.add_interval_set(&set_spec(name));
        b.add_ranges(&set, cidrs, true);
        made.insert(name.clone(), set);
    }
    for (name, elems) in &rs.maps {
        let map = b.add_verdict_map(&set_spec(name));
        add_jumps(&mut b, &map, elems.iter());
        made.insert(name.to_string(), map);
    }
    for (name, rules) in &rs.chains {
        for r in rules {
            b.add_rule(name, &r.exprs(&made), Some(&r.comment));
        }
    }
    for r in base_rules(opts, &made) {
        b.add_rule(FORWARD, &r, None);
    }
    b.finish()
}

/// `address : jump chain` elements of a verdict map (nothing when there are none).
fn add_jumps<'a>(
    b: &mut nft::Batch,
    map: &SetRef,
    elems: impl Iterator<Item = (&'a IpAddr, &'a String)>,
) {
    let keys: Vec<(Vec<u8>, Verdict)> = elems
        .map(|(ip, chain)| (key(*ip), Verdict::Jump(chain.clone())))
        .collect();
    if !keys.is_empty() {
        let keys: Vec<(&[u8], Verdict)> = keys
            .iter()
            .map(|(k, v)| (k.as_slice(), v.clone()))
            .collect();
        b.add_verdicts(map, &keys);
    }
}

/// An address as a key (network byte order).
fn key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// What changes from `old` to `new`, in the order a transaction makes the changes (see the
/// invariants above). Both renderings of an update walk it.
struct Diff<'a> {
    new_sets: Vec<&'a str>,
    elements: Vec<SetChange<'a>>,
    new_chains: Vec<(&'a str, &'a [Rule])>,
    map_elements: Vec<MapChange<'a>>,
    old_chains: Vec<&'a str>,
    old_sets: Vec<&'a str>,
}

/// A set's elements that go and come.
struct SetChange<'a> {
    set: &'a str,
    gone: Vec<IpNet>,
    came: Vec<IpNet>,
    /// The set had no element before.
    first: bool,
}

/// A map's keys whose element goes (or changes), and the elements that come.
struct MapChange<'a> {
    map: &'a str,
    gone: Vec<IpAddr>,
    came: Vec<(&'a IpAddr, &'a String)>,
}

fn diff<'a>(old: &'a Ruleset, new: &'a Ruleset) -> Diff<'a> {
    let mut d = Diff {
        new_sets: new
            .sets
            .keys()
            .filter(|n| !old.sets.contains_key(*n))
            .map(String::as_str)
            .collect(),
        elements: Vec::new(),
        new_chains: new
            .chains
            .iter()
            .filter(|(n, _)| !old.chains.contains_key(*n))
            .map(|(n, r)| (n.as_str(), r.as_slice()))
            .collect(),
        map_elements: Vec::new(),
        old_chains: old
            .chains
            .keys()
            .filter(|n| !new.chains.contains_key(*n))
            .map(String::as_str)
            .collect(),
        old_sets: old
            .sets
            .keys()
            .filter(|n| !new.sets.contains_key(*n))
            .map(String::as_str)
            .collect(),
    };
    for (name, cidrs) in &new.sets {
        let before: &[IpNet] = old.sets.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let gone: Vec<IpNet> = before
            .iter()
            .filter(|c| !cidrs.contains(c))
            .copied()
            .collect();
        let came: Vec<IpNet> = cidrs
            .iter()
            .filter(|c| !before.contains(c))
            .copied()
            .collect();
        if !gone.is_empty() || !came.is_empty() {
            d.elements.push(SetChange {
                set: name,
                gone,
                came,
                first: before.is_empty(),
            });
        }
    }
    let empty = BTreeMap::new();
    for (map, elems) in &new.maps {
        let before = old.maps.get(map).unwrap_or(&empty);
        let changed = |ip: &IpAddr| before.get(ip) != elems.get(ip);
        let gone: Vec<IpAddr> = before.keys().filter(|ip| changed(ip)).copied().collect();
        let came: Vec<(&IpAddr, &String)> = elems.iter().filter(|(ip, _)| changed(ip)).collect();
        if !gone.is_empty() || !came.is_empty() {
            d.map_elements.push(MapChange { map, gone, came });
        }
    }
    d
}

/// One transaction from `old` to `new` as nft's text; empty when nothing changed.
pub fn update(old: &Ruleset, new: &Ruleset) -> String {
    let t = format!("{NFT_FAMILY} {NFT_POLICY_TABLE}");
    let d = diff(old, new);
    let mut s = String::new();
    for name in &d.new_sets {
        let _ = writeln!(
            s,
            "add set {t} {name} {{ type {}; flags interval; }}",
            set_type(name)
        );
    }
    for c in &d.elements {
        let name = c.set;
        if !c.gone.is_empty() {
            let _ = writeln!(s, "delete element {t} {name} {{ {} }}", elements(&c.gone));
        }
        if !c.came.is_empty() {
            let _ = writeln!(s, "add element {t} {name} {{ {} }}", elements(&c.came));
        }
    }
    for (name, rules) in &d.new_chains {
        let _ = writeln!(s, "add chain {t} {name}");
        for r in *rules {
            let _ = writeln!(s, "add rule {t} {name} {r}");
        }
    }
    for MapChange { map, gone, came } in &d.map_elements {
        if !gone.is_empty() {
            let g: Vec<String> = gone.iter().map(IpAddr::to_string).collect();
            let _ = writeln!(s, "delete element {t} {map} {{ {} }}", g.join(", "));
        }
        if !came.is_empty() {
            let c: Vec<String> = came
                .iter()
                .map(|(ip, c)| format!("{ip} : jump {c}"))
                .collect();
            let _ = writeln!(s, "add element {t} {map} {{ {} }}", c.join(", "));
        }
    }
    for name in &d.old_chains {
        let _ = writeln!(s, "delete chain {t} {name}");
    }
    for name in &d.old_sets {
        let _ = writeln!(s, "delete set {t} {name}");
    }
    s
}

/// One nfnetlink transaction from `old` to `new` (what `update`'s text does); without
/// operations (`ops` empty) when nothing changed.
pub fn update_batch(old: &Ruleset, new: &Ruleset) -> nft::Transaction {
    let d = diff(old, new);
    let mut b = policy_batch();
    let mut made = BTreeMap::new();
    for name in &d.new_sets {
        made.insert(name.to_string(), b.add_interval_set(&set_spec(name)));
    }
    for c in &d.elements {
        let set = set_ref(&made, c.set);
        b.delete_ranges(&set, &c.gone);
        b.add_ranges(&set, &c.came, c.first);
    }
    for (name, rules) in &d.new_chains {
        b.add_chain(name, None);
        for r in *rules {
            b.add_rule(name, &r.exprs(&made), Some(&r.comment));
        }
    }
    for MapChange { map, gone, came } in &d.map_elements {
        let map = SetRef::named(map);
        let keys: Vec<Vec<u8>> = gone.iter().map(|ip| key(*ip)).collect();
        if !keys.is_empty() {
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            b.delete_elements(&map, &keys);
        }
        add_jumps(&mut b, &map, came.iter().copied());
    }
    for name in &d.old_chains {
        b.delete_chain(name);
    }
    for name in &d.old_sets {
        b.delete_set(name);
    }
    b.finish()
}

/// Packets and bytes per (policy, direction, verdict), summed from the table's counters (the
/// JSON `nft -j list table` prints). Drops name every policy that isolates the pod.
pub fn counters(listing: &serde_json::Value) -> BTreeMap<(String, String, String), (u64, u64)> {
    let mut out: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
    let items = listing.get("nftables").and_then(|v| v.as_array());
    for item in items.into_iter().flatten() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let Some(comment) = rule.get("comment").and_then(|c| c.as_str()) else {
            continue;
        };
        let exprs = rule.get("expr").and_then(|e| e.as_array());
        let counter = exprs
            .into_iter()
            .flatten()
            .find_map(|e| e.get("counter"))
            .map(|c| {
                let n = |k: &str| c.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                (n("packets"), n("bytes"))
            });
        let Some((packets, bytes)) = counter else {
            continue;
        };
        let Some(key) = counter_key(comment) else {
            continue;
        };
        let e = out.entry(key).or_default();
        e.0 += packets;
        e.1 += bytes;
    }
    out
}

/// (policy, direction, verdict) from a rule's comment.
pub fn counter_key(comment: &str) -> Option<(String, String, String)> {
    if let Some((dir, by)) = comment.split_once(" isolated by ") {
        return Some((by.to_string(), dir.to_string(), "dropped".into()));
    }
    let mut parts = comment.split(' ');
    let (policy, dir) = (parts.next()?, parts.next()?);
    (parts.next() == Some("rule")).then(|| (policy.to_string(), dir.to_string(), "allowed".into()))
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::compile;
    use crate::policy::manifest;
    use crate::policy::model::Cluster;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node1, containers: [{name: c, ports: [{name: serve-80, containerPort: 80}]}]}
status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node2, containers: [{name: c}]}
status: {podIP: 10.244.2.2, podIPs: [{ip: 10.244.2.2}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}, {protocol: UDP, port: 81, endPort: 82}]
"#;

    fn opts() -> Options {
        Options {
            bridge: "cni0".into(),
            ipv4: true,
            ipv6: false,
            log_group: None,
        }
    }

    fn cluster(text: &str) -> Cluster {
        let mut c = Cluster::new();
        let (_, errors) = manifest::load_into(&mut c, text);
        assert!(errors.is_empty(), "{errors:?}");
        c
    }

    #[test]
    fn a_policy_renders_as_set_map_and_chain() {
        let rs = ruleset(&compile(&cluster(MANIFEST), "node1"), &opts());
        assert_eq!(rs.sets.len(), 1);
        let (set, elems) = rs.sets.iter().next().unwrap();
        assert_eq!(elems, &["10.244.2.2/32".parse::<IpNet>().unwrap()]);
        let chain = &rs.maps["ingress-4"][&"10.244.1.2".parse::<IpAddr>().unwrap()];
        assert!(chain.starts_with("in-"));
        assert!(rs.maps["egress-4"].is_empty(), "not isolated for egress");
        let lines: Vec<String> = rs.chains[chain].iter().map(Rule::to_string).collect();
        assert_eq!(
            lines,
            [
                format!(
                    "ip saddr @{set} meta l4proto tcp th dport 80 counter accept comment \"x/allow-b ingress rule 0\""
                ),
                format!(
                    "ip saddr @{set} meta l4proto udp th dport 81-82 counter accept comment \"x/allow-b ingress rule 0\""
                ),
                "counter drop comment \"ingress isolated by x/allow-b\"".to_string(),
            ]
        );
        let text = full(&rs, &opts());
        assert!(text.contains("\t\ttype filter hook forward priority filter - 5; policy accept;\n\t\tct state established,related accept\n\t\tiifname \"cni0\" ip saddr vmap @egress-4\n\t\toifname \"cni0\" ip daddr vmap @ingress-4\n"), "{text}");
    }

    #[test]
    fn updates_touch_only_what_changed_in_a_safe_order() {
        let mut c = cluster(MANIFEST);
        let before = ruleset(&compile(&c, "node1"), &opts());
        assert_eq!(
            update(&before, &before),
            "",
            "nothing changed: no transaction"
        );
        // A second pod matching the peer selector: one set element, nothing else.
        let more = MANIFEST
            .replace("name: b,", "name: b2,")
            .replace("10.244.2.2", "10.244.2.3");
        let (_, errors) = manifest::load_into(&mut c, &more);
        assert!(errors.is_empty());
        let after = ruleset(&compile(&c, "node1"), &opts());
        let set = before.sets.keys().next().unwrap();
        assert_eq!(
            update(&before, &after),
            format!("add element inet podnet-policy {set} {{ 10.244.2.3/32 }}\n")
        );
        // The policy goes: the pod leaves the map before its chain and the set are deleted.
        let none = Ruleset {
            maps: before.maps.keys().map(|k| (*k, BTreeMap::new())).collect(),
            ..Default::default()
        };
        let t = update(&after, &none);
        let map = t
            .find("delete element inet podnet-policy ingress-4")
            .unwrap();
        let chain = t.find("delete chain inet podnet-policy in-").unwrap();
        let set_del = t.find("delete set").unwrap();
        assert!(map < chain && chain < set_del, "{t}");
    }

    #[test]
    #[ignore = "prints a rendering for `nft -c -f`"]
    fn print_full() {
        let rs = ruleset(&compile(&cluster(MANIFEST), "node1"), &opts());
        print!("{}", full(&rs, &opts()));
    }

    #[test]
    fn counters_sum_by_policy_direction_and_verdict() {
        let listing = serde_json::json!({"nftables": [
            {"metainfo": {}},
            {"rule": {"comment": "x/allow-b ingress rule 0", "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"accept": null}]}},
            {"rule": {"comment": "x/allow-b ingress rule 0", "expr": [{"counter": {"packets": 1, "bytes": 60}}, {"accept": null}]}},
            {"rule": {"comment": "ingress isolated by x/allow-b", "expr": [{"counter": {"packets": 2, "bytes": 120}}, {"drop": null}]}},
        ]});
        let c = counters(&listing);
        let key = |v: &str| {
            (
                "x/allow-b".to_string(),
                "ingress".to_string(),
                v.to_string(),
            )
        };
        assert_eq!(c[&key("allowed")], (4, 240));
        assert_eq!(c[&key("dropped")], (2, 120));
    }
}

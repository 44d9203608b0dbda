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
//!         iifname "cni0" ip saddr vmap @egress-4      the source's egress, if isolated
//!         oifname "cni0" ip daddr vmap @ingress-4 }   the destination's ingress, if isolated
//! }
//! ```
//!
//! Invariants:
//! - Replies of allowed connections pass (`ct state established,related`) before any policy.
//! - A pod no policy isolates costs one map lookup per packet (none for traffic that does not
//!   enter or leave through the pods' bridge); its address is in no map.
//! - Chains are named by a hash of their rules, so a chain's content never changes: an update
//!   adds chains, points map elements at them and deletes chains nothing points at any more.
//!   Sets are named by their definition and change by elements. A pod joining or leaving a
//!   selector is a set element; a new pod under an existing policy is a map element.
//! - An update is one transaction, ordered so every reference exists when it is made: new
//!   sets, set element deletes then adds, new chains, map element deletes then adds, old
//!   chains, old sets. Nothing allowed is ever dropped in between.
//! - Traffic between a pod and its own node never reaches the forward hook (it is input or
//!   output), so it is never filtered.
//!
//! Counters: every allow rule and every default drop has a counter and a comment naming the
//! policy and direction (`x/allow-a ingress rule 0`, `ingress isolated by x/deny-all`), which
//! `counters` sums for `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;

use super::compile::{Compiled, CompiledRule, Peers, PodRules, PortRange, Ports};
use super::model::Direction;
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
    /// Set name (with its family suffix) → elements.
    pub sets: BTreeMap<String, Vec<IpNet>>,
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Map name (`ingress-4`, ...) → pod address → chain.
    pub maps: BTreeMap<&'static str, BTreeMap<IpAddr, String>>,
}

fn hash(lines: &[String]) -> String {
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

/// `meta l4proto tcp th dport 80-81 ` (empty for the whole range: `meta l4proto tcp `).
fn port_match(p: &PortRange) -> String {
    let proto = p.protocol.as_str().to_ascii_lowercase();
    match (p.first, p.last) {
        (0, 65535) => format!("meta l4proto {proto} "),
        (a, b) if a == b => format!("meta l4proto {proto} th dport {a} "),
        (a, b) => format!("meta l4proto {proto} th dport {a}-{b} "),
    }
}

/// The rules of one allow rule, per family where the peer is a set.
fn rule_lines(r: &CompiledRule, direction: Direction, opts: &Options, out: &mut Vec<String>) {
    let (addr, verdict) = match direction {
        Direction::Ingress => ("saddr", "accept"),
        Direction::Egress => ("daddr", "return"),
    };
    let peers: Vec<String> = match &r.peers {
        Peers::Any => vec![String::new()],
        Peers::Set(name) => {
            let mut v = Vec::new();
            if opts.ipv4 {
                v.push(format!("ip {addr} @{} ", set_name(name, true)));
            }
            if opts.ipv6 {
                v.push(format!("ip6 {addr} @{} ", set_name(name, false)));
            }
            v
        }
    };
    let ports: Vec<String> = match &r.ports {
        Ports::Any => vec![String::new()],
        Ports::Only(ranges) => ranges.iter().map(port_match).collect(),
    };
    let comment = format!("{} {} rule {}", r.policy, direction_name(direction), r.rule);
    for p in &peers {
        for port in &ports {
            out.push(format!("{p}{port}counter {verdict} comment \"{comment}\""));
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
fn chain(pod: &PodRules, direction: Direction, opts: &Options) -> Option<(String, Vec<String>)> {
    let rules = pod.rules(direction)?;
    let mut lines = Vec::new();
    for r in rules {
        rule_lines(r, direction, opts, &mut lines);
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
    let log = match opts.log_group {
        Some(g) => format!("log prefix \"podnet-policy-drop \" group {g} "),
        None => String::new(),
    };
    let dir = direction_name(direction);
    lines.push(format!(
        "{log}counter drop comment \"{dir} isolated by {by}\""
    ));
    let prefix = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    Some((format!("{prefix}-{}", hash(&lines)), lines))
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
            let Some((name, lines)) = chain(pod, direction, opts) else {
                continue;
            };
            for ip in &pod.ips {
                let v4 = ip.is_ipv4();
                if (v4 && opts.ipv4) || (!v4 && opts.ipv6) {
                    let map = rs.maps.get_mut(map_name(direction, v4)).expect("declared");
                    map.insert(*ip, name.clone());
                }
            }
            rs.chains.insert(name, lines);
        }
    }
    rs
}

fn elements(cidrs: &[IpNet]) -> String {
    let list: Vec<String> = cidrs.iter().map(|n| n.to_string()).collect();
    list.join(", ")
}

fn set_type(name: &str) -> &'static str {
    if name.ends_with("-6") {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    }
}

/// The forward hook: replies first, then the maps of the families in use.
fn base_chain(opts: &Options) -> Vec<String> {
    let br = &opts.bridge;
    let mut v = vec!["ct state established,related accept".to_string()];
    for (fam, v4, on) in [("ip", true, opts.ipv4), ("ip6", false, opts.ipv6)] {
        if on {
            let eg = map_name(Direction::Egress, v4);
            v.push(format!("iifname \"{br}\" {fam} saddr vmap @{eg}"));
        }
    }
    for (fam, v4, on) in [("ip", true, opts.ipv4), ("ip6", false, opts.ipv6)] {
        if on {
            let ing = map_name(Direction::Ingress, v4);
            v.push(format!("oifname \"{br}\" {fam} daddr vmap @{ing}"));
        }
    }
    v
}

/// The whole table, created from nothing.
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
        let ty = if name.ends_with("-4") {
            "ipv4_addr"
        } else {
            "ipv6_addr"
        };
        let _ = write!(s, "\tmap {name} {{\n\t\ttype {ty} : verdict\n");
        if !elems.is_empty() {
            let e: Vec<String> = elems
                .iter()
                .map(|(ip, c)| format!("{ip} : jump {c}"))
                .collect();
            let _ = writeln!(s, "\t\telements = {{ {} }}", e.join(", "));
        }
        s.push_str("\t}\n");
    }
    for (name, lines) in &rs.chains {
        let _ = writeln!(s, "\tchain {name} {{");
        for l in lines {
            let _ = writeln!(s, "\t\t{l}");
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

/// One transaction from `old` to `new`; empty when nothing changed.
pub fn update(old: &Ruleset, new: &Ruleset) -> String {
    let t = format!("{NFT_FAMILY} {NFT_POLICY_TABLE}");
    let mut s = String::new();
    for (name, _) in new.sets.iter().filter(|(n, _)| !old.sets.contains_key(*n)) {
        let _ = writeln!(
            s,
            "add set {t} {name} {{ type {}; flags interval; }}",
            set_type(name)
        );
    }
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
        if !gone.is_empty() {
            let _ = writeln!(s, "delete element {t} {name} {{ {} }}", elements(&gone));
        }
        if !came.is_empty() {
            let _ = writeln!(s, "add element {t} {name} {{ {} }}", elements(&came));
        }
    }
    for (name, lines) in new
        .chains
        .iter()
        .filter(|(n, _)| !old.chains.contains_key(*n))
    {
        let _ = writeln!(s, "add chain {t} {name}");
        for l in lines {
            let _ = writeln!(s, "add rule {t} {name} {l}");
        }
    }
    for (map, elems) in &new.maps {
        let empty = BTreeMap::new();
        let before = old.maps.get(map).unwrap_or(&empty);
        let changed = |ip: &IpAddr| before.get(ip) != elems.get(ip);
        let gone: Vec<String> = before
            .keys()
            .filter(|ip| changed(ip))
            .map(|ip| ip.to_string())
            .collect();
        let came: Vec<String> = elems
            .iter()
            .filter(|(ip, _)| changed(ip))
            .map(|(ip, c)| format!("{ip} : jump {c}"))
            .collect();
        if !gone.is_empty() {
            let _ = writeln!(s, "delete element {t} {map} {{ {} }}", gone.join(", "));
        }
        if !came.is_empty() {
            let _ = writeln!(s, "add element {t} {map} {{ {} }}", came.join(", "));
        }
    }
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        let _ = writeln!(s, "delete chain {t} {name}");
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(s, "delete set {t} {name}");
    }
    s
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
        assert_eq!(
            rs.chains[chain],
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

//! Finding other software's masquerade rules that would rewrite pod-to-pod traffic — the
//! Docker-style `-s <pod subnet> ! -o docker0 -j MASQUERADE` that makes a pod on another node
//! see the node's address instead of the pod's.
//!
//! nftables runs every NAT chain at a hook until one sets up a mapping, so podnet's own "keep the
//! source" rules cannot overrule such a rule; the only cure is removing it, and the job here is to
//! find it. A probe packet (a pod of ours talking to a pod on another node, leaving through the
//! interface that carries it) is walked through every NAT postrouting chain outside podnet's
//! table, following jumps. A rule is reported when every one of its matches is understood and
//! true for the probe and it masquerades or SNATs; anything not understood makes the rule
//! "unknown" and it is not reported, so there are no false alarms.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

/// The packet asked about.
#[derive(Debug, Clone)]
pub struct Probe {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub iif: String,
    pub oif: String,
    pub mark: u32,
}

/// A rule that would rewrite the probe's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    /// A readable rendering of the rule's matches and action.
    pub summary: String,
}

impl std::fmt::Display for ForeignRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {} {} chain {} handle {}: {}",
            self.family, self.table, self.chain, self.handle, self.summary
        )
    }
}

/// Tri-state truth for matches we may not understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    Yes,
    No,
    Unknown,
}

struct Ruleset<'a> {
    items: Vec<&'a Value>,
}

impl<'a> Ruleset<'a> {
    fn new(v: &'a Value) -> Ruleset<'a> {
        let items = v["nftables"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        Ruleset { items }
    }

    fn chains(&self) -> impl Iterator<Item = &'a Value> + '_ {
        self.items.iter().filter_map(|i| i.get("chain"))
    }

    fn rules(&self, family: &str, table: &str, chain: &str) -> Vec<&'a Value> {
        self.items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["family"] == family && r["table"] == table && r["chain"] == chain)
            .collect()
    }

    fn set_elements(&self, family: &str, table: &str, name: &str) -> Option<&'a Value> {
        self.items
            .iter()
            .filter_map(|i| i.get("set"))
            .find(|s| s["family"] == family && s["table"] == table && s["name"] == name)
            .map(|s| &s["elem"])
    }
}

/// Which of the probe's fields a match's left-hand side reads.
enum Field {
    Saddr,
    Daddr,
    Iif,
    Oif,
    Mark,
    /// `meta mark & MASK`
    MarkMasked(u64),
    Nfproto,
}

fn field(left: &Value) -> Option<Field> {
    if let Some(p) = left.get("payload") {
        if p["protocol"] == "ip" {
            return match p["field"].as_str()? {
                "saddr" => Some(Field::Saddr),
                "daddr" => Some(Field::Daddr),
                _ => None,
            };
        }
        return None;
    }
    if let Some(m) = left.get("meta") {
        return match m["key"].as_str()? {
            "oifname" => Some(Field::Oif),
            "iifname" => Some(Field::Iif),
            "mark" => Some(Field::Mark),
            "nfproto" => Some(Field::Nfproto),
            _ => None,
        };
    }
    if let Some(and) = left.get("&").and_then(|a| a.as_array())
        && and.len() == 2
        && and[0].get("meta").is_some_and(|m| m["key"] == "mark")
    {
        return and[1].as_u64().map(Field::MarkMasked);
    }
    None
}

/// Whether an address value (`"10.0.0.1"`, a prefix, a range, a set) contains `ip`.
fn addr_in(rs: &Ruleset<'_>, family: &str, table: &str, right: &Value, ip: Ipv4Addr) -> T {
    match right {
        Value::String(s) if s.starts_with('@') => match rs.set_elements(family, table, &s[1..]) {
            Some(Value::Array(elems)) => {
                any(elems.iter().map(|e| addr_in(rs, family, table, e, ip)))
            }
            Some(v) if !v.is_null() => addr_in(rs, family, table, v, ip),
            _ => T::No,
        },
        Value::String(s) => match s.parse::<Ipv4Addr>() {
            Ok(a) => bool_t(a == ip),
            Err(_) => T::Unknown,
        },
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let net = p["addr"].as_str().and_then(|a| a.parse::<Ipv4Addr>().ok());
                let len = p["len"].as_u64();
                match (net, len) {
                    (Some(a), Some(l)) => match Ipv4Net::new(a, l as u8) {
                        Ok(n) => bool_t(n.contains(&ip)),
                        Err(_) => T::Unknown,
                    },
                    _ => T::Unknown,
                }
            } else if let Some(r) = o.get("range").and_then(|r| r.as_array()) {
                let lo = r
                    .first()
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse::<Ipv4Addr>().ok());
                let hi = r
                    .get(1)
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse::<Ipv4Addr>().ok());
                match (lo, hi) {
                    (Some(lo), Some(hi)) => bool_t(lo <= ip && ip <= hi),
                    _ => T::Unknown,
                }
            } else if let Some(set) = o.get("set").and_then(|s| s.as_array()) {
                any(set.iter().map(|e| addr_in(rs, family, table, e, ip)))
            } else if let Some(e) = o.get("elem") {
                addr_in(rs, family, table, &e["val"], ip)
            } else {
                T::Unknown
            }
        }
        Value::Array(a) => any(a.iter().map(|e| addr_in(rs, family, table, e, ip))),
        _ => T::Unknown,
    }
}

fn name_in(right: &Value, name: &str) -> T {
    match right {
        // nft writes interface wildcards as "eth*".
        Value::String(s) => match s.strip_suffix('*') {
            Some(prefix) => bool_t(name.starts_with(prefix)),
            None => bool_t(s == name),
        },
        Value::Object(o) if o.contains_key("set") => any(o["set"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| name_in(e, name))),
        _ => T::Unknown,
    }
}

fn num_in(right: &Value, n: u64) -> T {
    match right.as_u64() {
        Some(v) => bool_t(v == n),
        None => T::Unknown,
    }
}

fn bool_t(b: bool) -> T {
    if b { T::Yes } else { T::No }
}

fn any(it: impl Iterator<Item = T>) -> T {
    let mut unknown = false;
    for t in it {
        match t {
            T::Yes => return T::Yes,
            T::Unknown => unknown = true,
            T::No => {}
        }
    }
    if unknown { T::Unknown } else { T::No }
}

fn eval_match(rs: &Ruleset<'_>, family: &str, table: &str, m: &Value, p: &Probe) -> T {
    let Some(f) = field(&m["left"]) else {
        return T::Unknown;
    };
    let right = &m["right"];
    let t = match f {
        Field::Saddr => addr_in(rs, family, table, right, p.src),
        Field::Daddr => addr_in(rs, family, table, right, p.dst),
        Field::Oif => name_in(right, &p.oif),
        Field::Iif => name_in(right, &p.iif),
        Field::Mark => num_in(right, p.mark as u64),
        Field::MarkMasked(mask) => num_in(right, p.mark as u64 & mask),
        Field::Nfproto => match right.as_str() {
            Some(s) => bool_t(s == "ipv4"),
            None => T::Unknown,
        },
    };
    match (m["op"].as_str().unwrap_or("=="), t) {
        (_, T::Unknown) => T::Unknown,
        ("==" | "in", t) => t,
        ("!=", T::Yes) => T::No,
        ("!=", T::No) => T::Yes,
        _ => T::Unknown,
    }
}

enum Outcome {
    /// The chain ended (fell through or returned) without rewriting the source.
    Continue,
    /// Accepted/dropped: later rules of the hook chain do not see it.
    Stop,
    Rewrites(ForeignRule),
}

fn summary(expr: &[Value]) -> String {
    let parts: Vec<String> = expr
        .iter()
        .filter(|e| e.get("counter").is_none())
        .map(|e| {
            if let Some(m) = e.get("match") {
                format!(
                    "{} {} {}",
                    compact(&m["left"]),
                    m["op"].as_str().unwrap_or("=="),
                    compact(&m["right"])
                )
            } else {
                compact(e)
            }
        })
        .collect();
    parts.join(" ")
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("payload") => {
            format!("ip {}", o["payload"]["field"].as_str().unwrap_or("?"))
        }
        Value::Object(o) if o.contains_key("meta") => {
            format!("meta {}", o["meta"]["key"].as_str().unwrap_or("?"))
        }
        Value::Object(o) if o.contains_key("prefix") => {
            format!(
                "{}/{}",
                o["prefix"]["addr"].as_str().unwrap_or("?"),
                o["prefix"]["len"]
            )
        }
        Value::Object(o) if o.len() == 1 => {
            let (k, val) = o.iter().next().expect("one entry");
            if val.is_null() {
                k.clone()
            } else {
                format!("{k} {}", val)
            }
        }
        other => other.to_string(),
    }
}

fn walk(
    rs: &Ruleset<'_>,
    family: &str,
    table: &str,
    chain: &str,
    p: &Probe,
    depth: usize,
) -> Outcome {
    if depth > 16 {
        return Outcome::Continue;
    }
    'rules: for rule in rs.rules(family, table, chain) {
        let Some(expr) = rule["expr"].as_array() else {
            continue;
        };
        for e in expr {
            if let Some(m) = e.get("match") {
                match eval_match(rs, family, table, m, p) {
                    T::Yes => continue,
                    // Not matching, or not understood: this rule says nothing about the probe.
                    T::No | T::Unknown => continue 'rules,
                }
            }
            if e.get("masquerade").is_some() || e.get("snat").is_some() {
                return Outcome::Rewrites(ForeignRule {
                    family: family.into(),
                    table: table.into(),
                    chain: chain.into(),
                    handle: rule["handle"].as_u64().unwrap_or(0),
                    summary: summary(expr),
                });
            }
            if e.get("accept").is_some() || e.get("drop").is_some() {
                return Outcome::Stop;
            }
            if e.get("return").is_some() {
                return Outcome::Continue;
            }
            if let Some(target) = e.get("jump").and_then(|j| j["target"].as_str()) {
                match walk(rs, family, table, target, p, depth + 1) {
                    Outcome::Continue => continue 'rules,
                    other => return other,
                }
            }
            if let Some(target) = e.get("goto").and_then(|j| j["target"].as_str()) {
                return walk(rs, family, table, target, p, depth + 1);
            }
            // Counters, logs, marks and the like: keep reading the rule.
        }
    }
    Outcome::Continue
}

/// Rules outside `(own_family, own_table)` that would masquerade or SNAT the probe.
pub fn find(ruleset: &Value, probe: &Probe, own_family: &str, own_table: &str) -> Vec<ForeignRule> {
    let rs = Ruleset::new(ruleset);
    let mut found = Vec::new();
    for c in rs.chains() {
        let (family, table, name) = (
            c["family"].as_str().unwrap_or(""),
            c["table"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or(""),
        );
        if (family == own_family && table == own_table)
            || c["type"] != "nat"
            || c["hook"] != "postrouting"
        {
            continue;
        }
        if family != "ip" && family != "inet" {
            continue;
        }
        if let Outcome::Rewrites(r) = walk(&rs, family, table, name, probe, 0) {
            found.push(r);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe() -> Probe {
        Probe {
            src: "10.244.3.5".parse().unwrap(),
            dst: "10.244.7.9".parse().unwrap(),
            iif: "cni0".into(),
            oif: "flannel.1".into(),
            mark: 0,
        }
    }

    fn chain(table: &str, name: &str, base: bool) -> Value {
        if base {
            json!({"chain": {"family": "ip", "table": table, "name": name, "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}})
        } else {
            json!({"chain": {"family": "ip", "table": table, "name": name, "handle": 2}})
        }
    }

    fn rule(table: &str, chain: &str, handle: u64, expr: Value) -> Value {
        json!({"rule": {"family": "ip", "table": table, "chain": chain, "handle": handle, "expr": expr}})
    }

    fn saddr(op: &str, addr: &str, len: u8) -> Value {
        json!({"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": addr, "len": len}}}})
    }

    fn daddr(op: &str, addr: &str, len: u8) -> Value {
        json!({"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": addr, "len": len}}}})
    }

    fn oif(op: &str, name: &str) -> Value {
        json!({"match": {"op": op, "left": {"meta": {"key": "oifname"}}, "right": name}})
    }

    fn ruleset(items: Vec<Value>) -> Value {
        json!({"nftables": items})
    }

    #[test]
    fn the_docker_rule_is_found() {
        // iptables-nft's rendering of: -A POSTROUTING -s 10.244.3.0/24 ! -o docker0 -j MASQUERADE
        let rs = ruleset(vec![
            chain("nat", "POSTROUTING", true),
            rule(
                "nat",
                "POSTROUTING",
                7,
                json!([saddr("==", "10.244.3.0", 24), oif("!=", "docker0"), {"counter": {"packets": 0, "bytes": 0}}, {"masquerade": null}]),
            ),
        ]);
        let found = find(&rs, &probe(), "inet", "podnet");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].handle, 7);
        assert_eq!(
            found[0].summary,
            "ip saddr == 10.244.3.0/24 meta oifname != docker0 masquerade"
        );
    }

    #[test]
    fn the_fixed_rule_and_kube_proxy_are_not() {
        let rs = ruleset(vec![
            chain("nat", "POSTROUTING", true),
            chain("nat", "KUBE-POSTROUTING", false),
            // The seed document's fix: exclude the cluster network.
            rule(
                "nat",
                "POSTROUTING",
                3,
                json!([saddr("==", "10.244.3.0", 24), daddr("!=", "10.244.0.0", 16), oif("!=", "docker0"), {"masquerade": null}]),
            ),
            // kube-proxy: masquerade only what it marked.
            rule(
                "nat",
                "POSTROUTING",
                4,
                json!([{"jump": {"target": "KUBE-POSTROUTING"}}]),
            ),
            rule(
                "nat",
                "KUBE-POSTROUTING",
                5,
                json!([{"match": {"op": "!=", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 16384}}, {"return": null}]),
            ),
            rule(
                "nat",
                "KUBE-POSTROUTING",
                6,
                json!([{"masquerade": {"flags": ["fully-random"]}}]),
            ),
            // Our own table is not foreign.
            json!({"chain": {"family": "inet", "table": "podnet", "name": "postrouting", "type": "nat", "hook": "postrouting"}}),
            json!({"rule": {"family": "inet", "table": "podnet", "chain": "postrouting", "handle": 9, "expr": [{"masquerade": null}]}}),
        ]);
        assert!(find(&rs, &probe(), "inet", "podnet").is_empty());
        // A marked packet would be masqueraded by kube-proxy: that is by design and found.
        let marked = Probe {
            mark: 0x4000,
            ..probe()
        };
        assert_eq!(find(&rs, &marked, "inet", "podnet").len(), 1);
    }

    #[test]
    fn jumps_sets_and_unknowns() {
        let rs = ruleset(vec![
            chain("nat", "POSTROUTING", true),
            chain("nat", "CUSTOM", false),
            json!({"set": {"family": "ip", "table": "nat", "name": "pods", "type": "ipv4_addr", "flags": ["interval"], "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}}]}}),
            rule(
                "nat",
                "POSTROUTING",
                1,
                json!([{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"masquerade": null}]),
            ),
            rule(
                "nat",
                "POSTROUTING",
                2,
                json!([{"goto": {"target": "CUSTOM"}}]),
            ),
            rule(
                "nat",
                "CUSTOM",
                3,
                json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@pods"}}, {"snat": {"addr": "198.18.0.11"}}]),
            ),
        ]);
        let found = find(&rs, &probe(), "inet", "podnet");
        // Rule 1 reads something we do not model: not reported. Rule 3, reached by goto: reported.
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].chain.as_str(), found[0].handle), ("CUSTOM", 3));
    }
}

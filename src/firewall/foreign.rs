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
//!
//! The rules are read as the kernel holds them (`kernel::nft::dump`): expressions that load
//! parts of the packet into registers, then compare or look them up. The walk runs them on the
//! probe with registers that know a byte or not: the probe knows its addresses (an IPv4
//! header whose other bytes are unknown), interface names, mark and family; any other load,
//! and any expression not modelled, leaves unknown bytes, and a comparison or lookup that
//! reads an unknown byte is "unknown". A comparison or lookup that is false ends the rule, as
//! in the kernel.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::kernel::nft::dump::{self, Data, Expr, Rule, Ruleset, Set};
use crate::kernel::nft::{NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6};

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

fn bool_t(b: bool) -> T {
    if b { T::Yes } else { T::No }
}

/// `NFT_META_*` keys the probe knows.
const META_MARK: u32 = 3;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_NFPROTO: u32 = 15;
/// `NFT_PAYLOAD_NETWORK_HEADER`, `NFT_PAYLOAD_TRANSPORT_HEADER`.
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
/// `IFNAMSIZ`: interface names are loaded as 16 bytes, zero-padded.
const IFNAMSIZ: usize = 16;
/// The register file: `NFT_REG32_NUM` 32-bit registers, the first four the verdict.
const REG_BYTES: usize = 20 * 4;

/// Registers holding known or unknown bytes.
struct Regs([Option<u8>; REG_BYTES]);

/// Where a register starts (`NFT_REG_1`..`NFT_REG_4` are 16 bytes wide, `NFT_REG32_00`..
/// `NFT_REG32_15` 4 bytes), as the kernel maps them.
fn reg_offset(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some(reg as usize * 16),
        8..=23 => Some((reg as usize - 8 + 4) * 4),
        _ => None,
    }
}

impl Regs {
    fn new() -> Regs {
        Regs([None; REG_BYTES])
    }

    /// Stores bytes (the last 32-bit word zero-padded, as the kernel does); out of range, every
    /// register becomes unknown.
    fn store(&mut self, reg: u32, bytes: &[Option<u8>]) {
        let padded = bytes.len().next_multiple_of(4);
        match reg_offset(reg).filter(|o| o + padded <= REG_BYTES) {
            Some(o) => {
                self.0[o..o + padded].fill(Some(0));
                self.0[o..o + bytes.len()].copy_from_slice(bytes);
            }
            None => self.forget(),
        }
    }

    fn unknown(&mut self, reg: u32, len: usize) {
        self.store(reg, &vec![None; len]);
    }

    fn load(&self, reg: u32, len: usize) -> Option<Vec<u8>> {
        let o = reg_offset(reg).filter(|o| o + len <= REG_BYTES)?;
        self.0[o..o + len].iter().copied().collect()
    }

    fn forget(&mut self) {
        self.0 = [None; REG_BYTES];
    }
}

fn known(b: &[u8]) -> Vec<Option<u8>> {
    b.iter().map(|b| Some(*b)).collect()
}

/// A meta key's value for the probe (`None`: not modelled).
fn meta(key: u32, p: &Probe) -> Option<Vec<u8>> {
    let name = |n: &str| {
        let mut v = n.as_bytes().to_vec();
        v.resize(IFNAMSIZ.max(v.len() + 1), 0);
        v
    };
    match key {
        META_MARK => Some(p.mark.to_ne_bytes().to_vec()),
        META_IIFNAME => Some(name(&p.iif)),
        META_OIFNAME => Some(name(&p.oif)),
        META_NFPROTO => Some(vec![NFPROTO_IPV4]),
        _ => None,
    }
}

/// Bytes of the probe's network header: the addresses known, the rest not.
fn network_header(p: &Probe, offset: usize, len: usize) -> Vec<Option<u8>> {
    let mut h = [None; 20];
    for (i, b) in p.src.octets().into_iter().enumerate() {
        h[12 + i] = Some(b);
    }
    for (i, b) in p.dst.octets().into_iter().enumerate() {
        h[16 + i] = Some(b);
    }
    (offset..offset + len)
        .map(|i| h.get(i).copied().flatten())
        .collect()
}

fn cmp(op: u32, have: &[u8], want: &[u8]) -> T {
    use std::cmp::Ordering::*;
    let ord = have.cmp(want);
    match op {
        dump::CMP_EQ => bool_t(ord == Equal),
        dump::CMP_NEQ => bool_t(ord != Equal),
        dump::CMP_LT => bool_t(ord == Less),
        dump::CMP_LTE => bool_t(ord != Greater),
        dump::CMP_GT => bool_t(ord == Greater),
        dump::CMP_GTE => bool_t(ord != Less),
        _ => T::Unknown,
    }
}

/// Whether a set holds a key: a range set (elements from a start to the next end, or from a
/// key to its key end) or a plain one.
fn contains(set: &Set, key: &[u8]) -> bool {
    if set
        .elements
        .iter()
        .any(|e| e.flags & dump::ELEM_CATCHALL != 0)
    {
        return true;
    }
    if set.flags & dump::SET_INTERVAL == 0 {
        return set.elements.iter().any(|e| e.key == key);
    }
    if set.elements.iter().any(|e| e.key_end.is_some()) {
        return set.elements.iter().any(|e| {
            e.key.as_slice() <= key && e.key_end.as_deref().is_some_and(|end| key <= end)
        });
    }
    set.elements
        .iter()
        .filter(|e| e.key.as_slice() <= key)
        .max_by(|a, b| a.key.cmp(&b.key))
        .is_some_and(|e| e.flags & dump::ELEM_INTERVAL_END == 0)
}

enum Outcome {
    /// The chain ended (fell through or returned) without rewriting the source.
    Continue,
    /// Accepted/dropped: later rules of the hook chain do not see it.
    Stop,
    Rewrites(ForeignRule),
}

/// What one expression did to the rule's evaluation.
enum Step {
    /// Go on with the next expression.
    Next,
    /// The rule says nothing more about the probe (a match false or not understood, `break`).
    EndRule,
    Verdict(i32, Option<String>),
    Rewrites,
}

fn step(rs: &Ruleset, rule: &Rule, e: &Expr, regs: &mut Regs, p: &Probe) -> Step {
    match e {
        Expr::Meta {
            key,
            dreg: Some(dreg),
            ..
        } => match meta(*key, p) {
            Some(v) => regs.store(*dreg, &known(&v)),
            None => regs.unknown(*dreg, IFNAMSIZ),
        },
        Expr::Payload {
            dreg,
            base,
            offset,
            len,
        } => {
            let (o, l) = (*offset as usize, (*len as usize).min(REG_BYTES));
            match *base {
                BASE_NETWORK => regs.store(*dreg, &network_header(p, o, l)),
                _ => regs.unknown(*dreg, l),
            }
        }
        Expr::Cmp { sreg, op, data } => {
            let t = match regs.load(*sreg, data.len()) {
                Some(have) => cmp(*op, &have, data),
                None => T::Unknown,
            };
            if t != T::Yes {
                return Step::EndRule;
            }
        }
        Expr::Bitwise {
            sreg,
            dreg,
            len,
            op,
            mask,
            xor,
        } => {
            let l = (*len as usize).min(REG_BYTES);
            let v = regs.load(*sreg, l).filter(|_| *op == 0);
            match v.filter(|v| mask.len() == v.len() && xor.len() == v.len()) {
                Some(v) => {
                    let out: Vec<u8> = (0..l).map(|i| (v[i] & mask[i]) ^ xor[i]).collect();
                    regs.store(*dreg, &known(&out));
                }
                None => regs.unknown(*dreg, l),
            }
        }
        Expr::Lookup {
            set,
            sreg,
            dreg: None,
            flags,
            ..
        } => {
            let t = match rs.set(rule.family, &rule.table, set, None) {
                None => T::No,
                Some(s) => match regs.load(*sreg, s.key_len as usize) {
                    Some(key) => bool_t(contains(s, &key) != (flags & dump::LOOKUP_INVERT != 0)),
                    None => T::Unknown,
                },
            };
            if t != T::Yes {
                return Step::EndRule;
            }
        }
        // Maps and verdict maps: not modelled.
        Expr::Lookup { .. } => return Step::EndRule,
        Expr::Immediate {
            dreg: dump::REG_VERDICT,
            data: Data::Verdict(code, chain),
        } => return Step::Verdict(*code, chain.clone()),
        Expr::Immediate {
            dreg,
            data: Data::Value(v),
        } => regs.store(*dreg, &known(v)),
        Expr::Masq { .. } => return Step::Rewrites,
        Expr::Nat { kind, .. } if *kind == dump::NAT_SNAT => return Step::Rewrites,
        Expr::Counter { .. } => {}
        // Logs, limits, marks and the like: keep reading the rule, but what they may have
        // loaded is not known.
        _ => regs.forget(),
    }
    Step::Next
}

fn family_name(f: u8) -> &'static str {
    match f {
        NFPROTO_INET => "inet",
        NFPROTO_IPV4 => "ip",
        NFPROTO_IPV6 => "ip6",
        _ => "?",
    }
}

/// How many rules one walk from a base chain visits at most: jumps can make the walk
/// exponential in the depth on a ruleset built for it; what is past the budget is not
/// reported (like a rule not understood).
const WALK_BUDGET: usize = 100_000;

/// Where a walk is: its table and how deep in jumps.
#[derive(Clone, Copy)]
struct At<'a> {
    family: u8,
    table: &'a str,
    depth: usize,
}

/// The rules of each chain, indexed once per `find` (a walk enters chains many times).
type ChainRules<'a> = HashMap<(u8, &'a str, &'a str), Vec<&'a Rule>>;

fn chain_rules(rs: &Ruleset) -> ChainRules<'_> {
    let mut idx: ChainRules<'_> = HashMap::new();
    for r in &rs.rules {
        idx.entry((r.family, r.table.as_str(), r.chain.as_str()))
            .or_default()
            .push(r);
    }
    idx
}

/// The rule set and its index, for a walk.
struct Rules<'a> {
    rs: &'a Ruleset,
    chains: ChainRules<'a>,
}

fn walk(r: &Rules<'_>, at: &At<'_>, chain: &str, p: &Probe, budget: &mut usize) -> Outcome {
    let (rs, family, table) = (r.rs, at.family, at.table);
    // Entering a chain costs as much as a rule, so an empty chain jumped to again and again
    // uses the budget up too.
    if at.depth > 16 || *budget == 0 {
        return Outcome::Continue;
    }
    *budget -= 1;
    let no_rules = Vec::new();
    let rules = r.chains.get(&(family, table, chain)).unwrap_or(&no_rules);
    let deeper = At {
        depth: at.depth + 1,
        ..*at
    };
    'rules: for &rule in rules {
        if *budget == 0 {
            return Outcome::Continue;
        }
        *budget -= 1;
        let mut regs = Regs::new();
        for e in &rule.exprs {
            let (code, target) = match step(rs, rule, e, &mut regs, p) {
                Step::Next => continue,
                Step::EndRule => continue 'rules,
                Step::Rewrites => {
                    return Outcome::Rewrites(ForeignRule {
                        family: family_name(family).into(),
                        table: table.into(),
                        chain: chain.into(),
                        handle: rule.handle,
                        summary: summary(rs, rule),
                    });
                }
                Step::Verdict(code, target) => (code, target),
            };
            match (code, target) {
                (dump::VERDICT_ACCEPT | dump::VERDICT_DROP, _) => return Outcome::Stop,
                (dump::VERDICT_RETURN, _) => return Outcome::Continue,
                (dump::VERDICT_JUMP, Some(t)) => match walk(r, &deeper, &t, p, budget) {
                    Outcome::Continue => continue 'rules,
                    other => return other,
                },
                (dump::VERDICT_GOTO, Some(t)) => return walk(r, &deeper, &t, p, budget),
                (dump::VERDICT_CONTINUE, _) => continue,
                _ => continue 'rules,
            }
        }
    }
    Outcome::Continue
}

/// Rules outside `(own_family, own_table)` that would masquerade or SNAT the probe.
pub fn find(ruleset: &Ruleset, probe: &Probe, own_family: u8, own_table: &str) -> Vec<ForeignRule> {
    let mut found = Vec::new();
    let rules = Rules {
        rs: ruleset,
        chains: chain_rules(ruleset),
    };
    for c in &ruleset.chains {
        if (c.family == own_family && c.table == own_table)
            || !matches!(c.family, NFPROTO_IPV4 | NFPROTO_INET)
        {
            continue;
        }
        // A NAT chain at `NF_INET_POST_ROUTING`.
        if !c
            .base
            .as_ref()
            .is_some_and(|h| h.kind == "nat" && h.hook == 4)
        {
            continue;
        }
        let at = At {
            family: c.family,
            table: &c.table,
            depth: 0,
        };
        if let Outcome::Rewrites(r) = walk(&rules, &at, &c.name, probe, &mut { WALK_BUDGET }) {
            found.push(r);
        }
    }
    found
}

/// What a register holds, for the summary.
#[derive(Clone)]
enum Load {
    /// An IPv4 or IPv6 address field; the mask a bitwise applied to it.
    Addr(&'static str, Option<Vec<u8>>),
    Name(&'static str),
    Num(&'static str),
    /// `meta nfproto`: the dependency nft adds itself, not shown.
    Family,
    Other(String),
}

fn load_of(e: &Expr) -> Option<(u32, Load)> {
    match e {
        Expr::Meta {
            key, dreg: Some(d), ..
        } => Some((
            *d,
            match *key {
                META_IIFNAME => Load::Name("meta iifname"),
                META_OIFNAME => Load::Name("meta oifname"),
                META_MARK => Load::Num("meta mark"),
                META_NFPROTO => Load::Family,
                16 => Load::Num("meta l4proto"),
                k => Load::Other(format!("meta {k}")),
            },
        )),
        Expr::Payload {
            dreg,
            base,
            offset,
            len,
        } => Some((
            *dreg,
            match (*base, *offset, *len) {
                (BASE_NETWORK, 12, 1..=4) => Load::Addr("ip saddr", None),
                (BASE_NETWORK, 16, 1..=4) => Load::Addr("ip daddr", None),
                (BASE_NETWORK, 8, 5..=16) => Load::Addr("ip6 saddr", None),
                (BASE_NETWORK, 24, 5..=16) => Load::Addr("ip6 daddr", None),
                (BASE_TRANSPORT, 0, 2) => Load::Num("th sport"),
                (BASE_TRANSPORT, 2, 2) => Load::Num("th dport"),
                (b, o, l) => Load::Other(format!("payload {b},{o},{l}")),
            },
        )),
        _ => None,
    }
}

/// An address value (a prefix of its bytes, or the whole address under a mask) as `a/len`.
fn addr_text(data: &[u8], mask: Option<&[u8]>) -> String {
    let width = if data.len() > 4 { 16 } else { 4 };
    let mut full = data.to_vec();
    full.resize(width, 0);
    let prefix = match mask {
        Some(m) => m.iter().map(|b| b.count_ones()).sum::<u32>() as usize,
        None => data.len() * 8,
    };
    let addr = match width {
        4 => Ipv4Addr::from(<[u8; 4]>::try_from(&full[..]).expect("4 bytes")).to_string(),
        _ => {
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&full[..]).expect("16 bytes")).to_string()
        }
    };
    if prefix == width * 8 {
        addr
    } else {
        format!("{addr}/{prefix}")
    }
}

fn value_text(load: &Load, data: &[u8]) -> String {
    match load {
        Load::Addr(_, mask) => addr_text(data, mask.as_deref()),
        Load::Name(_) => match data.iter().position(|b| *b == 0) {
            Some(end) => String::from_utf8_lossy(&data[..end]).into_owned(),
            None => format!("{}*", String::from_utf8_lossy(data)),
        },
        Load::Num(_) => match data.len() {
            1 => data[0].to_string(),
            2 => u16::from_be_bytes([data[0], data[1]]).to_string(),
            4 => u32::from_ne_bytes(data.try_into().expect("4 bytes")).to_string(),
            _ => hex(data),
        },
        Load::Family | Load::Other(_) => hex(data),
    }
}

fn hex(data: &[u8]) -> String {
    let h: String = data.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{h}")
}

fn load_name(l: &Load) -> String {
    match l {
        Load::Addr(n, _) | Load::Name(n) | Load::Num(n) => n.to_string(),
        Load::Family => "meta nfproto".into(),
        Load::Other(s) => s.clone(),
    }
}

const OPS: [&str; 6] = ["==", "!=", "<", "<=", ">", ">="];

fn verdict_text(code: i32, chain: &Option<String>) -> String {
    let target = chain.as_deref().unwrap_or("?");
    match code {
        dump::VERDICT_ACCEPT => "accept".into(),
        dump::VERDICT_DROP => "drop".into(),
        dump::VERDICT_RETURN => "return".into(),
        dump::VERDICT_JUMP => format!("jump {target}"),
        dump::VERDICT_GOTO => format!("goto {target}"),
        dump::VERDICT_CONTINUE => "continue".into(),
        _ => format!("verdict {code}"),
    }
}

/// A readable rendering of a rule's matches and action, in nft's words where they are known
/// (`ip saddr == 10.244.3.0/24 meta oifname != docker0 masquerade`); counters left out.
fn summary(rs: &Ruleset, rule: &Rule) -> String {
    let mut regs: HashMap<u32, Load> = HashMap::new();
    let mut parts = Vec::new();
    for e in &rule.exprs {
        if let Some((reg, load)) = load_of(e) {
            regs.insert(reg, load);
            continue;
        }
        match e {
            Expr::Bitwise {
                sreg, dreg, mask, ..
            } => {
                let l = match regs.get(sreg) {
                    Some(Load::Addr(n, _)) => Load::Addr(n, Some(mask.clone())),
                    Some(other) => Load::Other(format!("{} & {}", load_name(other), hex(mask))),
                    None => Load::Other("?".into()),
                };
                regs.insert(*dreg, l);
            }
            Expr::Cmp { sreg, op, data } => {
                let load = regs.get(sreg).cloned().unwrap_or(Load::Other("?".into()));
                if !matches!(load, Load::Family) {
                    let op = OPS.get(*op as usize).copied().unwrap_or("?");
                    let value = value_text(&load, data);
                    parts.push(format!("{} {op} {value}", load_name(&load)));
                }
            }
            Expr::Lookup {
                set, sreg, flags, ..
            } => {
                let load = regs.get(sreg).map(load_name).unwrap_or("?".into());
                let op = if flags & dump::LOOKUP_INVERT != 0 {
                    "!="
                } else {
                    "=="
                };
                let anonymous = rs
                    .set(rule.family, &rule.table, set, None)
                    .is_some_and(|s| s.flags & dump::SET_ANONYMOUS != 0);
                let set = if anonymous {
                    "{ ... }".to_string()
                } else {
                    format!("@{set}")
                };
                parts.push(format!("{load} {op} {set}"));
            }
            Expr::Counter { .. } => {}
            Expr::Masq { flags } => parts.push(match flags & 0x10 {
                0 => "masquerade".into(),
                _ => "masquerade fully-random".into(),
            }),
            Expr::Nat { kind, .. } if *kind == dump::NAT_SNAT => parts.push("snat".into()),
            Expr::Immediate {
                dreg: dump::REG_VERDICT,
                data: Data::Verdict(code, chain),
            } => parts.push(verdict_text(*code, chain)),
            Expr::Immediate { .. } => {}
            Expr::Other { name, .. } => parts.push(name.clone()),
            other => parts.push(format!("{other:?}")),
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's dump of a ruleset with Docker's rule (`ip nat`), kube-proxy's and the
    /// fixed Docker rule (`ip kube`), a goto to an SNAT of a named set's addresses, a rule
    /// reading the protocol and one with an anonymous set (`inet custom`), and podnet's table:
    /// `FOREIGN_SCRIPT` in the integration tests, captured from the kernel.
    fn ruleset() -> Ruleset {
        dump::captured_ruleset()
    }

    fn probe() -> Probe {
        Probe {
            src: "10.244.3.5".parse().unwrap(),
            dst: "10.244.7.9".parse().unwrap(),
            iif: "cni0".into(),
            oif: "flannel.1".into(),
            mark: 0,
        }
    }

    fn found(p: &Probe) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = find(&ruleset(), p, NFPROTO_INET, "podnet")
            .into_iter()
            .map(|r| (r.table, r.chain, r.summary))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_docker_rule_is_found() {
        let rs = ruleset();
        let all = find(&rs, &probe(), NFPROTO_INET, "podnet");
        let docker = all.iter().find(|r| r.table == "nat").unwrap();
        assert_eq!(docker.family, "ip");
        assert_eq!(docker.chain, "POSTROUTING");
        assert_eq!(
            docker.summary,
            "ip saddr == 10.244.3.0/24 meta oifname != docker0 masquerade"
        );
        let handle = rs
            .rules_of(NFPROTO_IPV4, "nat", "POSTROUTING")
            .next()
            .unwrap()
            .handle;
        assert_eq!(docker.handle, handle);
        assert!(
            docker
                .to_string()
                .starts_with("table ip nat chain POSTROUTING handle ")
        );
    }

    #[test]
    fn the_fixed_rule_and_kube_proxy_are_not_a_goto_to_an_snat_is() {
        // ip kube: the fixed Docker rule excludes the cluster network, and kube-proxy's chain
        // returns what it did not mark. inet custom: `meta l4proto` is not modelled (the rule
        // is not reported), the anonymous set holds no pod, and the goto for `flann*` reaches
        // an SNAT of the named set's addresses.
        assert_eq!(
            found(&probe()),
            [
                (
                    "custom".to_string(),
                    "CUSTOM".to_string(),
                    "ip saddr == @pods snat".to_string()
                ),
                (
                    "nat".to_string(),
                    "POSTROUTING".to_string(),
                    "ip saddr == 10.244.3.0/24 meta oifname != docker0 masquerade".to_string()
                ),
            ]
        );
        // A marked packet would be masqueraded by kube-proxy: that is by design and found.
        let marked = Probe {
            mark: 0x4000,
            ..probe()
        };
        let kube: Vec<_> = found(&marked)
            .into_iter()
            .filter(|r| r.0 == "kube")
            .collect();
        assert_eq!(
            kube,
            [(
                "kube".to_string(),
                "KUBE-POSTROUTING".to_string(),
                "masquerade fully-random".to_string()
            )]
        );
    }

    #[test]
    fn what_the_probe_leaves_through_and_where_it_goes_decide() {
        // Out through docker0: Docker's rule does not apply; not through flann*: no goto.
        let docker0 = Probe {
            oif: "docker0".into(),
            ..probe()
        };
        assert!(found(&docker0).is_empty(), "{:?}", found(&docker0));
        // To the outside: the fixed rule masquerades, as it should (reported all the same: the
        // probe asks about pod-to-pod traffic only in the daemon).
        let outside = Probe {
            dst: "192.0.2.7".parse().unwrap(),
            oif: "eth0".into(),
            ..probe()
        };
        let tables: Vec<String> = found(&outside).into_iter().map(|r| r.0).collect();
        assert_eq!(tables, ["custom", "kube", "nat"]);
        // From a pod outside the named set: the SNAT does not apply.
        let stranger = Probe {
            src: "10.245.0.1".parse().unwrap(),
            ..probe()
        };
        assert!(found(&stranger).iter().all(|r| r.0 != "custom"));
    }

    #[test]
    fn registers_that_nothing_known_loaded_are_unknown() {
        let rule = |exprs: Vec<Expr>| Rule {
            family: NFPROTO_IPV4,
            table: "t".into(),
            chain: "c".into(),
            handle: 1,
            exprs,
            userdata: None,
        };
        let rs = |exprs: Vec<Expr>| Ruleset {
            chains: vec![dump::Chain {
                family: NFPROTO_IPV4,
                table: "t".into(),
                name: "c".into(),
                handle: 1,
                base: Some(dump::ChainHook {
                    kind: "nat".into(),
                    hook: 4,
                    priority: 100,
                    policy: 1,
                }),
            }],
            rules: vec![rule(exprs)],
            ..Default::default()
        };
        let cmp = |data: Vec<u8>| Expr::Cmp {
            sreg: 1,
            op: dump::CMP_EQ,
            data,
        };
        let saddr = Expr::Payload {
            dreg: 1,
            base: 1,
            offset: 12,
            len: 4,
        };
        // A load the walk knows, then one it does not (`ct`) into the same register: unknown.
        let unknown = rs(vec![
            saddr.clone(),
            Expr::Other {
                name: "ct".into(),
                data: vec![],
            },
            cmp(vec![10, 244, 3, 5]),
            Expr::Masq { flags: 0 },
        ]);
        assert!(find(&unknown, &probe(), NFPROTO_INET, "podnet").is_empty());
        let known = rs(vec![
            saddr,
            cmp(vec![10, 244, 3, 5]),
            Expr::Masq { flags: 0 },
        ]);
        assert_eq!(find(&known, &probe(), NFPROTO_INET, "podnet").len(), 1);
        // Our own table is not foreign.
        assert!(find(&known, &probe(), NFPROTO_IPV4, "t").is_empty());
        // A comparison of a register nothing loaded: unknown.
        let empty = rs(vec![cmp(vec![0, 0, 0, 0]), Expr::Masq { flags: 0 }]);
        assert!(find(&empty, &probe(), NFPROTO_INET, "podnet").is_empty());
        // A chain of ten rules that each jump to it again: 10^16 paths, walked within the
        // budget (without it this test does not end).
        let jump = Expr::Immediate {
            dreg: dump::REG_VERDICT,
            data: Data::Verdict(dump::VERDICT_JUMP, Some("c".into())),
        };
        let mut fan = rs(vec![jump.clone()]);
        for _ in 0..9 {
            fan.rules.push(rule(vec![jump.clone()]));
        }
        fan.rules.push(rule(vec![Expr::Masq { flags: 0 }]));
        let found = find(&fan, &probe(), NFPROTO_INET, "podnet");
        assert!(found.len() <= 1, "{found:?}");
    }

    /// A set with a catch-all element holds every key, interval set or not.
    #[test]
    fn a_catch_all_element_holds_every_key() {
        let elem = |key: Vec<u8>, flags| dump::Element {
            key,
            key_end: None,
            flags,
            data: None,
        };
        let mut set = Set {
            family: NFPROTO_INET,
            table: "t".into(),
            name: "s".into(),
            flags: 0,
            key_type: 7,
            key_len: 4,
            data_type: None,
            data_len: None,
            userdata: None,
            id: None,
            elements: vec![elem(vec![10, 0, 0, 1], 0)],
        };
        assert!(!contains(&set, &[10, 0, 0, 2]));
        set.elements.push(elem(Vec::new(), dump::ELEM_CATCHALL));
        assert!(contains(&set, &[10, 0, 0, 2]));
        set.flags = dump::SET_INTERVAL;
        assert!(contains(&set, &[192, 0, 2, 1]));
    }
}

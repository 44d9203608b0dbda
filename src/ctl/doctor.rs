//! `podnetctl doctor`: the misconfigurations flannel users hit most, checked on this node, each
//! with a verdict and what to do about it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::Args;
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use crate::kernel::netlink::{Link, Netlink};
use crate::kernel::{ethtool, sysctl};
use crate::owned;
use crate::status::{ContestedInfo, DEFAULT_SOCKET, PathKind, Status};
use crate::subnet_env::SubnetEnv;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The node's subnet.env.
    #[arg(long, default_value = crate::subnet_env::DEFAULT_PATH)]
    pub subnet_file: PathBuf,
    /// The pods' bridge.
    #[arg(long, default_value = "cni0")]
    pub bridge: String,
    /// The local agent's socket, for the lease and the peers.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

fn check(
    name: &'static str,
    verdict: Verdict,
    detail: impl Into<String>,
    fix: Option<&str>,
) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
        fix: fix.map(String::from),
    }
}

/// What the checks look at, gathered once.
struct Node {
    env: Result<SubnetEnv, String>,
    /// The agent's status, with the firewall checked as it was asked (`None`: not reachable).
    status: Option<Status>,
    links: Vec<Link>,
    nl: Netlink,
}

impl Node {
    fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// podnet's VXLAN devices on this node.
    fn tunnels(&self) -> Vec<&Link> {
        self.links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("vxlan"))
            .filter(|l| owned::is_podnet_device(&l.name, l.kind.as_deref()))
            .collect()
    }

    fn ext_iface(&self) -> Option<&Link> {
        let name = self.status.as_ref()?.node.iface.as_deref()?;
        self.link(name)
    }
}

/// The sysctls a check needs per family this node serves: IPv4 when subnet.env has an IPv4
/// subnet or cannot be read, IPv6 when it has an IPv6 one.
fn per_family<'a>(node: &Node, v4: &'a str, v6: &'a str) -> Vec<&'a str> {
    let (has4, has6) = match &node.env {
        Ok(e) => (e.subnet.is_some(), e.ipv6_subnet.is_some()),
        Err(_) => (true, false),
    };
    [(has4, v4), (has6, v6)]
        .into_iter()
        .filter_map(|(on, key)| on.then_some(key))
        .collect()
}

fn ip_forward(node: &Node) -> Check {
    let mut on = Vec::new();
    for key in per_family(node, "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding") {
        match sysctl::get(key) {
            Ok(Some(v)) if v == "1" => on.push(format!("{key} = 1")),
            Ok(v) => {
                return check(
                    "ip-forward",
                    Verdict::Fail,
                    format!(
                        "{key} = {}: the node drops every packet between pods and the network",
                        v.unwrap_or_default()
                    ),
                    Some(&format!(
                        "sysctl -w {key}=1, and persist it in /etc/sysctl.d/"
                    )),
                );
            }
            Err(e) => return check("ip-forward", Verdict::Skip, e.to_string(), None),
        }
    }
    check("ip-forward", Verdict::Pass, on.join(", "), None)
}

fn br_netfilter(node: &Node) -> Check {
    let mut on = Vec::new();
    for key in per_family(
        node,
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ) {
        let short = key.trim_start_matches("net.bridge.");
        match sysctl::get(key) {
            Ok(Some(v)) if v == "1" => on.push(format!("{short} = 1")),
            Ok(Some(v)) => {
                return check(
                    "br-netfilter",
                    Verdict::Fail,
                    format!(
                        "{key} = {v}: traffic between pods on one node skips kube-proxy and network policy, so Services and DNS fail and policies do not isolate pods from pods of their node"
                    ),
                    Some(&format!(
                        "sysctl -w {key}=1, and persist it in /etc/sysctl.d/"
                    )),
                );
            }
            Ok(None) => {
                return check(
                    "br-netfilter",
                    Verdict::Fail,
                    "br_netfilter is not loaded: traffic between pods on one node skips kube-proxy and network policy, so Services and DNS fail and policies do not isolate pods from pods of their node",
                    Some(
                        "modprobe br_netfilter; echo br_netfilter > /etc/modules-load.d/br_netfilter.conf",
                    ),
                );
            }
            Err(e) => return check("br-netfilter", Verdict::Skip, e.to_string(), None),
        }
    }
    check(
        "br-netfilter",
        Verdict::Pass,
        format!(
            "bridged pod traffic passes the firewall ({})",
            on.join(", ")
        ),
        None,
    )
}

fn rp_filter(node: &mut Node, bridge: &str) -> Check {
    let all = sysctl::get("net.ipv4.conf.all.rp_filter")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    let mut names: Vec<String> = node.tunnels().iter().map(|l| l.name.clone()).collect();
    names.push(bridge.to_string());
    if let Some(e) = node.ext_iface() {
        names.push(e.name.clone());
    }
    let strict: Vec<String> = names
        .into_iter()
        .filter(|n| {
            let own = sysctl::get_conf(n, "rp_filter")
                .ok()
                .flatten()
                .and_then(|v| v.parse::<u32>().ok());
            own.is_some() && own.unwrap_or(0).max(all) == 1
        })
        .collect();
    if strict.is_empty() {
        return check(
            "rp-filter",
            Verdict::Pass,
            "reverse-path filtering is loose or off on the pod interfaces",
            None,
        );
    }
    let Some(status) = node.status.clone() else {
        return check(
            "rp-filter",
            Verdict::Warn,
            format!(
                "strict reverse-path filtering on {} and podnetd is not reachable to check paths",
                strict.join(", ")
            ),
            Some("sysctl -w net.ipv4.conf.all.rp_filter=2 (loose)"),
        );
    };
    // A peer's packets arrive on the tunnel (or, direct, on the external interface); strict mode
    // drops them unless the route back to their source leaves by that same interface.
    let tunnel = node.tunnels().first().map(|l| (l.index, l.name.clone()));
    let ext = node.ext_iface().map(|l| (l.index, l.name.clone()));
    let mut asymmetric = Vec::new();
    for p in &status.peers {
        let Some(subnet) = p.subnet.as_deref().and_then(|s| s.parse::<Ipv4Net>().ok()) else {
            continue;
        };
        let arrives = match p.path {
            PathKind::Tunnel => tunnel.clone(),
            PathKind::Direct => ext.clone(),
            PathKind::Skipped => None,
        };
        let Some((idx, name)) = arrives else { continue };
        if !strict.contains(&name) {
            continue;
        }
        let probe = IpAddr::V4(Ipv4Addr::from(u32::from(subnet.network()) + 1));
        if let Ok(r) = node.nl.route_get(probe)
            && r.oif != Some(idx)
        {
            let back = r
                .oif
                .and_then(|i| node.links.iter().find(|l| l.index == i))
                .map(|l| l.name.clone())
                .unwrap_or_default();
            asymmetric.push(format!(
                "{subnet} arrives on {name} but its route back leaves by {back}"
            ));
        }
    }
    if asymmetric.is_empty() {
        check(
            "rp-filter",
            Verdict::Pass,
            format!(
                "strict on {}, but every peer's reply path matches the interface its packets arrive on",
                strict.join(", ")
            ),
            None,
        )
    } else {
        check(
            "rp-filter",
            Verdict::Fail,
            format!(
                "strict reverse-path filtering drops traffic: {}",
                asymmetric.join("; ")
            ),
            Some(
                "sysctl -w net.ipv4.conf.all.rp_filter=2 (loose), or remove the route that sends replies elsewhere",
            ),
        )
    }
}

fn mtu(node: &Node, bridge: &str) -> Check {
    let env = match &node.env {
        Ok(e) => e,
        Err(e) => return check("mtu", Verdict::Skip, e.clone(), None),
    };
    let Some(want) = env.mtu else {
        return check(
            "mtu",
            Verdict::Fail,
            "subnet.env has no FLANNEL_MTU",
            Some("restart the node agent to rewrite subnet.env"),
        );
    };
    let tunnels: Vec<(&str, u32)> = node
        .tunnels()
        .iter()
        .map(|t| (t.name.as_str(), t.mtu))
        .collect();
    let mut wrong = tunnel_mtu_problems(&tunnels, want);
    if let Some(br) = node.link(bridge) {
        for port in node.links.iter().filter(|l| l.master == Some(br.index)) {
            if port.mtu != want {
                wrong.push(format!(
                    "pod link {} on {bridge} has MTU {} but subnet.env says {want}",
                    port.name, port.mtu
                ));
            }
        }
    }
    let agent = node.status.as_ref().map(|s| &s.node);
    let backend = agent.and_then(|n| n.backend.as_deref());
    let overhead = agent.and_then(|n| n.encap_overhead);
    if let (Some(ext), Some(backend), Some(overhead)) = (node.ext_iface(), backend, overhead)
        && want + overhead > ext.mtu
    {
        wrong.push(format!("{backend} needs {overhead} bytes on {} (MTU {}), so pods must use at most {}, not {want}", ext.name, ext.mtu, ext.mtu - overhead));
    }
    if wrong.is_empty() {
        check(
            "mtu",
            Verdict::Pass,
            format!("subnet.env, the tunnel and the pod links agree on {want}"),
            None,
        )
    } else {
        check(
            "mtu",
            Verdict::Fail,
            wrong.join("; "),
            Some(
                "restart the node agent (it sets the tunnel MTU and rewrites subnet.env); pods created with another MTU need recreating",
            ),
        )
    }
}

/// What is wrong with the tunnels' MTUs (name, MTU) when pods use `want`: the tunnel sets it;
/// in dual-stack the IPv6 device sets it and the IPv4 one, over an underlay 20 bytes cheaper,
/// is at most that much larger.
fn tunnel_mtu_problems(tunnels: &[(&str, u32)], want: u32) -> Vec<String> {
    let slack = if tunnels.len() > 1 { 20 } else { 0 };
    let mut off: Vec<&(&str, u32)> = tunnels
        .iter()
        .filter(|(_, mtu)| *mtu < want || *mtu > want + slack)
        .collect();
    if off.is_empty() && !tunnels.iter().any(|(_, mtu)| *mtu == want) {
        off = tunnels.iter().collect();
    }
    off.iter()
        .map(|(name, mtu)| format!("{name} has MTU {mtu} but subnet.env says {want}"))
        .collect()
}

fn bridge_address(node: &mut Node, bridge: &str) -> Check {
    let env = match &node.env {
        Ok(e) => e,
        Err(e) => return check("bridge-address", Verdict::Skip, e.clone(), None),
    };
    let Some(br) = node.link(bridge).cloned() else {
        return check(
            "bridge-address",
            Verdict::Pass,
            format!("{bridge} does not exist yet (the first pod creates it)"),
            None,
        );
    };
    let (v4, v6) = (
        env.subnet.map(|s| s.trunc()),
        env.ipv6_subnet.map(|s| s.trunc()),
    );
    let subnet = match (v4, v6) {
        (Some(a), Some(b)) => format!("{a} and {b}"),
        (Some(a), None) => a.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) => {
            return check(
                "bridge-address",
                Verdict::Skip,
                "subnet.env has no subnet",
                None,
            );
        }
    };
    // The kernel gives every IPv6 interface a link-local address: not the node's business.
    let inside = |a: &IpNet| match a.addr() {
        IpAddr::V4(x) => v4.is_none_or(|n| n.contains(&x)),
        IpAddr::V6(x) => x.is_unicast_link_local() || v6.is_none_or(|n| n.contains(&x)),
    };
    let outside: Vec<String> = node
        .nl
        .addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.index == br.index && !inside(&a.net))
        .map(|a| a.net.to_string())
        .collect();
    if outside.is_empty() {
        check(
            "bridge-address",
            Verdict::Pass,
            format!("{bridge}'s addresses are inside this node's subnet {subnet}"),
            None,
        )
    } else {
        check(
            "bridge-address",
            Verdict::Fail,
            format!(
                "{bridge} has {} outside this node's subnet {subnet} (\"{bridge} already has an IP address different from ...\"): new pods cannot be wired",
                outside.join(", ")
            ),
            Some(&format!(
                "drain the node, then: ip link delete {bridge}; new pods recreate it with the right address"
            )),
        )
    }
}

/// The agent checks every other table's rules against packets a pod would send to a pod on
/// another node (it knows the interfaces and addresses); it does so afresh when asked for its
/// status.
fn foreign_masquerade(node: &Node) -> Check {
    let name = "foreign-masquerade";
    let Some(status) = &node.status else {
        return check(
            name,
            Verdict::Skip,
            "podnetd is not reachable on this node",
            None,
        );
    };
    let Some(fw) = &status.firewall else {
        return check(
            name,
            Verdict::Skip,
            "podnetd has not set up its firewall yet",
            None,
        );
    };
    if fw.foreign_masquerade.is_empty() {
        return check(
            name,
            Verdict::Pass,
            "no rule outside podnet rewrites pod-to-pod traffic",
            None,
        );
    }
    let network = node
        .env
        .as_ref()
        .ok()
        .and_then(|e| e.networks.first().map(|n| n.to_string()))
        .unwrap_or_else(|| "<cluster network>".into());
    check(
        name,
        Verdict::Fail,
        format!(
            "pods on other nodes see this node's address instead of the pod's because of: {}",
            fw.foreign_masquerade.join("; ")
        ),
        Some(&format!(
            "delete the rule, or exclude the cluster network from it (ip daddr != {network})"
        )),
    )
}

fn lease_agreement(node: &Node) -> Check {
    let env = match &node.env {
        Ok(e) => e,
        Err(e) => return check("lease", Verdict::Skip, e.clone(), None),
    };
    let Some(status) = &node.status else {
        return check(
            "lease",
            Verdict::Skip,
            "podnetd is not reachable on this node",
            None,
        );
    };
    let lease = status
        .lease
        .as_ref()
        .and_then(|l| l.subnet.as_deref())
        .and_then(|s| s.parse::<Ipv4Net>().ok());
    let file = env.subnet.map(|s| s.trunc());
    match (lease, file) {
        (Some(l), Some(f)) if l == f => check(
            "lease",
            Verdict::Pass,
            format!("subnet.env and the lease agree on {l}"),
            None,
        ),
        (Some(l), f) => check(
            "lease",
            Verdict::Fail,
            format!(
                "subnet.env says {} but this node's lease is {l}: new pods get addresses routed to another node",
                f.map(|x| x.to_string()).unwrap_or_else(|| "nothing".into())
            ),
            Some(
                "restart the node agent so it rewrites subnet.env, then recreate pods created since",
            ),
        ),
        (None, _) => check("lease", Verdict::Skip, "the agent holds no lease yet", None),
    }
}

/// Peer leases the agent will not program (only when there are some).
fn refused_leases(node: &Node) -> Option<Check> {
    let refused = &node.status.as_ref()?.rejected_leases;
    if refused.is_empty() {
        return None;
    }
    Some(check(
        "peer-leases",
        Verdict::Warn,
        format!(
            "{} peer lease(s) not programmed: {}",
            refused.len(),
            refused.join("; ")
        ),
        Some(
            "these nodes' pods are unreachable from here: fix or delete the named leases (a node that rewrites them is misconfigured or hostile)",
        ),
    ))
}

/// A WireGuard tunnel is down when a handshake failed since the last good one, or when the
/// last one is older than WireGuard's 180 s session limit (none at all: not yet).
const WG_STALE_SECONDS: u64 = 180;

/// The wireguard backend's tunnels, from the agent's status (`None` for other backends).
fn wireguard_tunnels(status: &Status) -> Option<Check> {
    let engine = status.node.engine.as_deref()?;
    let mut bad = Vec::new();
    let mut up = 0;
    for p in &status.peers {
        let Some(wg) = &p.wireguard else { continue };
        let who = format!("{} ({})", p.key, wg.endpoint);
        if let Some(problem) = &wg.problem {
            bad.push(format!("{who}: {problem}"));
        } else {
            match wg.last_handshake_seconds {
                Some(s) if s <= WG_STALE_SECONDS => up += 1,
                Some(s) => bad.push(format!("{who}: last handshake {s} s ago")),
                None => bad.push(format!("{who}: no handshake yet")),
            }
        }
    }
    Some(if bad.is_empty() {
        check(
            "wireguard",
            Verdict::Pass,
            format!("{up} tunnel(s) up ({engine} engine)"),
            None,
        )
    } else {
        check(
            "wireguard",
            Verdict::Warn,
            format!(
                "{} of {} tunnel(s) not up ({engine} engine): {}",
                bad.len(),
                bad.len() + up,
                bad.join("; ")
            ),
            Some(
                "a tunnel without traffic has no handshake, which is fine; otherwise check that the peer runs, that UDP to its \
                 ListenPort passes, and that every node has the same PSK (restart all after changing it)",
            ),
        )
    })
}

fn vxlan_checksum(node: &Node) -> Check {
    let tunnels = node.tunnels();
    if tunnels.is_empty() {
        return check("vxlan-checksum", Verdict::Pass, "no VXLAN device", None);
    }
    let local: Vec<IpAddr> = node.nl_addrs();
    let mut bad = Vec::new();
    let mut fixes = Vec::new();
    for t in tunnels {
        let nat = t
            .vxlan
            .as_ref()
            .and_then(|v| v.local)
            .is_some_and(|ip| !local.contains(&ip));
        if !ethtool::vxlan_checksum_offload_unsafe(nat) {
            continue;
        }
        if let Ok(Some(true)) = ethtool::feature(&t.name, "tx-checksum-ip-generic") {
            let why = if nat {
                "its public address is NAT'ed"
            } else {
                "this kernel predates the 5.7 fix"
            };
            bad.push(format!("{} has tx-checksum-ip-generic on and {why}: VXLAN packets reach peers with bad UDP checksums", t.name));
            fixes.push(format!("ethtool -K {} tx-checksum-ip-generic off", t.name));
        }
    }
    if bad.is_empty() {
        check(
            "vxlan-checksum",
            Verdict::Pass,
            "checksum offload is safe here (kernel 5.7+, public address not NAT'ed) or already off",
            None,
        )
    } else {
        check(
            "vxlan-checksum",
            Verdict::Fail,
            bad.join("; "),
            Some(&format!(
                "{} (podnetd does this itself when it creates the device)",
                fixes.join("; ")
            )),
        )
    }
}

impl Node {
    fn nl_addrs(&self) -> Vec<IpAddr> {
        // A fresh socket: the borrow checker would not let the checks share `self.nl` here.
        Netlink::open()
            .and_then(|mut nl| nl.addrs())
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.net.addr())
            .collect()
    }
}

fn contested_line(c: &ContestedInfo) -> String {
    let next = match c.next_repair_seconds {
        Some(s) => format!(", next repair in {s:.1} s"),
        None => String::new(),
    };
    format!(
        "{} undone {} times in {} s (put back {} times{next})",
        c.object, c.undone, c.for_seconds, c.repairs
    )
}

/// Another agent fighting podnetd over its routes, neighbours, FDB entries, devices or rules:
/// podnetd puts them back with growing delays, so traffic to the peer fails in between.
fn contested(node: &Node) -> Check {
    let Some(status) = &node.status else {
        return check(
            "contested",
            Verdict::Skip,
            "podnetd is not reachable to say",
            None,
        );
    };
    let mut fights: Vec<String> = Vec::new();
    if let Some(d) = &status.dataplane {
        fights.extend(d.contested.iter().map(contested_line));
    }
    if let Some(f) = &status.firewall {
        fights.extend(f.contested.iter().map(contested_line));
    }
    if fights.is_empty() {
        return check(
            "contested",
            Verdict::Pass,
            "nothing keeps undoing podnet's routes, neighbours, FDB entries, devices or rules",
            None,
        );
    }
    check(
        "contested",
        Verdict::Fail,
        format!(
            "another agent keeps undoing what podnetd sets up: {}",
            fights.join("; ")
        ),
        Some(
            "find it (`ip monitor route neigh link` or `nft monitor` on this node shows the changes) and \
             stop it, or keep it off protocol 86 routes, the flannel devices and table inet podnet",
        ),
    )
}

/// Runs every check on this node.
pub fn checks(args: &DoctorArgs) -> anyhow::Result<Vec<Check>> {
    let env = match SubnetEnv::read(&args.subnet_file) {
        Ok(Some(e)) => Ok(e),
        Ok(None) => Err(format!(
            "{} does not exist (the node agent writes it when ready)",
            args.subnet_file.display()
        )),
        Err(e) => Err(e.to_string()),
    };
    let status = super::status::fetch_local(&args.socket).ok();
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let mut node = Node {
        env,
        status,
        links,
        nl,
    };
    let mut out = vec![ip_forward(&node), br_netfilter(&node)];
    out.push(rp_filter(&mut node, &args.bridge));
    out.push(mtu(&node, &args.bridge));
    out.push(bridge_address(&mut node, &args.bridge));
    out.push(foreign_masquerade(&node));
    out.push(lease_agreement(&node));
    out.push(vxlan_checksum(&node));
    out.push(contested(&node));
    if let Some(c) = refused_leases(&node) {
        out.push(c);
    }
    if let Some(c) = node.status.as_ref().and_then(wireguard_tunnels) {
        out.push(c);
    }
    if node.status.as_ref().is_some_and(|s| s.policy.is_some()) {
        out.push(policy_shadow());
    }
    Ok(out)
}

/// Rules of other software that would undo network policy (only when policy is enabled).
fn policy_shadow() -> Check {
    let name = "policy-shadow";
    let ruleset = match crate::kernel::nft::ruleset_json() {
        Ok(r) => r,
        Err(e) => return check(name, Verdict::Skip, e.to_string(), None),
    };
    let own = [
        owned::NFT_TABLE,
        owned::NFT_POLICY_TABLE,
        owned::NFT_POD_MASQ_TABLE,
    ];
    let found = crate::policy::shadow::find(&ruleset, &own);
    if found.is_empty() {
        return check(
            name,
            Verdict::Pass,
            "no other rule undoes network policy (no notrack, no forward drop, no second engine)",
            None,
        );
    }
    check(
        name,
        Verdict::Warn,
        found.join("; "),
        Some("remove the rule or the other engine, or make it accept the cluster network"),
    )
}

/// One check as `doctor --json` prints it.
#[derive(Serialize)]
struct CheckJson<'a> {
    check: &'a str,
    verdict: String,
    detail: &'a str,
    fix: Option<&'a str>,
}

impl<'a> From<&'a Check> for CheckJson<'a> {
    fn from(c: &'a Check) -> CheckJson<'a> {
        CheckJson {
            check: c.name,
            verdict: c.verdict.label().to_lowercase(),
            detail: &c.detail,
            fix: c.fix.as_deref(),
        }
    }
}

pub fn run(args: DoctorArgs) -> anyhow::Result<i32> {
    let results = checks(&args)?;
    if args.json {
        let v: Vec<CheckJson> = results.iter().map(CheckJson::from).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for c in &results {
            println!("{:<19} {:<5} {}", c.name, c.verdict.label(), c.detail);
            if let (Some(fix), Verdict::Fail | Verdict::Warn) = (&c.fix, c.verdict) {
                println!("{:<25} fix: {fix}", "");
            }
        }
    }
    Ok(if results.iter().any(|c| c.verdict == Verdict::Fail) {
        1
    } else {
        0
    })
}

#[cfg(test)]
mod wireguard_tests {
    #[test]
    fn tunnel_mtus_agree_with_subnet_env() {
        let p = |t: &[(&str, u32)], want| super::tunnel_mtu_problems(t, want);
        assert!(p(&[("flannel.1", 1450)], 1450).is_empty());
        assert_eq!(
            p(&[("flannel.1", 1400)], 1450),
            ["flannel.1 has MTU 1400 but subnet.env says 1450"]
        );
        assert_eq!(
            p(&[("flannel.1", 1500)], 1450).len(),
            1,
            "larger is wrong too"
        );
        // Dual-stack: the IPv6 device sets FLANNEL_MTU, the IPv4 one is up to 20 larger.
        let dual = |v4, v6| p(&[("flannel.1", v4), ("flannel-v6.1", v6)], 1430);
        assert!(dual(1450, 1430).is_empty());
        assert!(dual(1430, 1430).is_empty());
        assert_eq!(
            dual(1420, 1430),
            ["flannel.1 has MTU 1420 but subnet.env says 1430"]
        );
        assert_eq!(
            dual(9000, 1430),
            ["flannel.1 has MTU 9000 but subnet.env says 1430"]
        );
        assert_eq!(dual(1450, 1440).len(), 2, "neither sets FLANNEL_MTU");
        assert!(p(&[], 1450).is_empty(), "host-gw has no tunnel");
    }

    use super::*;
    use crate::status::{PathKind, PeerInfo, WireguardPeer};

    fn peer(key: &str, last: Option<u64>, problem: Option<&str>) -> PeerInfo {
        PeerInfo {
            subnet: None,
            key: key.into(),
            public_ip: "198.18.0.12".into(),
            path: PathKind::Tunnel,
            reason: None,
            ipv6_subnet: None,
            public_ipv6: None,
            wireguard: Some(WireguardPeer {
                endpoint: "198.18.0.12:51820".into(),
                last_handshake_seconds: last,
                problem: problem.map(String::from),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn tunnels_up_pass_and_down_ones_are_named() {
        let mut st = Status::default();
        assert!(wireguard_tunnels(&st).is_none(), "not a wireguard node");
        st.node.engine = Some("userspace".into());
        st.peers = vec![peer("10.244.2.0-24", Some(5), None)];
        let c = wireguard_tunnels(&st).unwrap();
        assert_eq!(c.verdict, Verdict::Pass);
        assert_eq!(c.detail, "1 tunnel(s) up (userspace engine)");
        st.peers.push(peer("10.244.3.0-24", Some(900), None));
        st.peers.push(peer(
            "10.244.4.0-24",
            None,
            Some("the pre-shared keys (PSK) differ"),
        ));
        let c = wireguard_tunnels(&st).unwrap();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(
            c.detail.starts_with("2 of 3 tunnel(s) not up"),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("10.244.3.0-24 (198.18.0.12:51820): last handshake 900 s ago")
        );
        assert!(
            c.detail
                .contains("10.244.4.0-24 (198.18.0.12:51820): the pre-shared keys (PSK) differ")
        );
    }
}

//! The lab's layout as plain data: which namespaces exist, which segment each node is on, and
//! which addresses everything gets. Pure, so it is unit-tested without root.
//!
//! Underlay: 198.18.0.0/15 (RFC 2544 benchmarking space, never routed on real networks), cut into
//! /17 segments: segment 0 is 198.18.0.0/17, segment 1 is 198.18.128.0/17. On every segment the
//! router is `.0.1`; etcd members sit on segment 0 at 198.18.0.2-4; node `i` (1-based) gets
//! segment base + 10 + i, so node1 is 198.18.0.11. A /17 leaves room for thousands of fake peers
//! on one L2 (benchmarks program host-gw routes via such addresses).
//!
//! IPv6 underlay (`LabSpec::ipv6`, for dual-stack and IPv6-only clusters): 2001:2::/48 (RFC 5180
//! benchmarking space), segment k is 2001:2:0:k::/64 and every host has the same offset as in
//! IPv4 (router `::1`, etcd `::2`-`::4`, node i `::(10 + i)` in hex); the router routes IPv6
//! between the segments as well. Without it the lab has no IPv6 beyond link-local.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::LabError;

/// Every namespace of every lab starts with this, which is what the stale-object sweep looks for.
pub const NS_PREFIX: &str = "pnl-";
/// The lab's underlay range.
pub const UNDERLAY: &str = "198.18.0.0/15";
/// The lab's IPv6 underlay range.
pub const UNDERLAY6: &str = "2001:2::/48";
/// Pod ranges used by the lab's clusters (the README demo and the tests).
pub const POD_RANGES: [&str; 2] = ["10.244.0.0/16", "fd10:244::/56"];
const SEGMENT_PREFIX: u8 = 17;
pub const MAX_SEGMENTS: usize = 2;
pub const MAX_NODES: usize = 250;
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    pub name: String,
    pub nodes: usize,
    pub segments: usize,
    pub etcd_members: usize,
    /// IPv6 underlay addresses (and routing) beside the IPv4 ones.
    pub ipv6: bool,
}

impl LabSpec {
    pub fn new(name: impl Into<String>, nodes: usize) -> LabSpec {
        LabSpec {
            name: name.into(),
            nodes,
            segments: 1,
            etcd_members: 1,
            ipv6: false,
        }
    }

    pub fn ipv6(mut self, on: bool) -> LabSpec {
        self.ipv6 = on;
        self
    }

    pub fn segments(mut self, n: usize) -> LabSpec {
        self.segments = n;
        self
    }

    pub fn etcd_members(mut self, n: usize) -> LabSpec {
        self.etcd_members = n;
        self
    }
}

/// One L2 segment: a bridge in the switch namespace and its subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub index: usize,
    /// Bridge name inside the switch namespace.
    pub bridge: String,
    pub net: Ipv4Net,
    /// The router's address on this segment; every host on it routes through it.
    pub router: Ipv4Addr,
    /// The segment's IPv6 subnet, in a lab with an IPv6 underlay.
    #[serde(default)]
    pub net6: Option<Ipv6Net>,
    #[serde(default)]
    pub router6: Option<Ipv6Addr>,
}

/// A host attached to the underlay: a node, an etcd member, or the router's leg on a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// `node1`, `etcd1`, ...
    pub name: String,
    pub netns: String,
    pub segment: usize,
    /// Address with the segment's prefix length.
    pub addr: Ipv4Net,
    /// Name of the switch-side veth end (at most 15 bytes).
    pub port: String,
    /// IPv6 address with the segment's prefix length, in a lab with an IPv6 underlay.
    #[serde(default)]
    pub addr6: Option<Ipv6Net>,
}

impl Host {
    pub fn ip(&self) -> Ipv4Addr {
        self.addr.addr()
    }

    pub fn ip6(&self) -> Option<Ipv6Addr> {
        self.addr6.map(|a| a.addr())
    }
}

/// The whole layout of one lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub switch_ns: String,
    pub router_ns: String,
    pub segments: Vec<Segment>,
    pub etcd: Vec<Host>,
    pub nodes: Vec<Host>,
}

impl Plan {
    /// Every namespace the lab creates before any pod, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out = vec![self.switch_ns.clone(), self.router_ns.clone()];
        out.extend(self.etcd.iter().map(|h| h.netns.clone()));
        out.extend(self.nodes.iter().map(|h| h.netns.clone()));
        out
    }

    /// etcd client URLs, comma-separated, as `--etcd-endpoints` and `etcdctl --endpoints` take them.
    pub fn etcd_endpoints(&self) -> String {
        self.etcd
            .iter()
            .map(|h| format!("http://{}:{ETCD_CLIENT_PORT}", h.ip()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `--initial-cluster` for etcd.
    pub fn etcd_initial_cluster(&self) -> String {
        self.etcd
            .iter()
            .map(|h| format!("{}=http://{}:{ETCD_PEER_PORT}", h.name, h.ip()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The namespace of a pod on a node.
    pub fn pod_netns(&self, node: &str, pod: &str) -> String {
        format!("{NS_PREFIX}{}-{node}-{pod}", self.name)
    }

    /// Any host by name (`node1`, `etcd2`).
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.nodes
            .iter()
            .chain(self.etcd.iter())
            .find(|h| h.name == name)
    }
}

/// Checks a lab name: lowercase letters, digits and dashes, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "lab name {name:?}: use 1-24 characters from a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

/// Checks a pod name (same alphabet as lab names, up to 32 characters).
pub fn validate_pod_name(pod: &str) -> Result<(), LabError> {
    let ok = !pod.is_empty()
        && pod.len() <= 32
        && pod
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !pod.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "pod name {pod:?}: use 1-32 characters from a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

fn segment_net(index: usize) -> Ipv4Net {
    let base: Ipv4Net = UNDERLAY.parse().expect("constant");
    let start = u32::from(base.network()) + (index as u32) * (1u32 << (32 - SEGMENT_PREFIX));
    Ipv4Net::new(Ipv4Addr::from(start), SEGMENT_PREFIX).expect("valid prefix")
}

fn segment_net6(index: usize) -> Ipv6Net {
    let base: Ipv6Net = UNDERLAY6.parse().expect("constant");
    let start = u128::from(base.network()) + ((index as u128) << 64);
    Ipv6Net::new(Ipv6Addr::from(start), 64).expect("valid prefix")
}

fn host_addr6(seg: &Ipv6Net, offset: u32) -> Ipv6Net {
    Ipv6Net::new(
        Ipv6Addr::from(u128::from(seg.network()) + offset as u128),
        64,
    )
    .expect("valid prefix")
}

fn host_addr(seg: &Ipv4Net, offset: u32) -> Ipv4Net {
    Ipv4Net::new(
        Ipv4Addr::from(u32::from(seg.network()) + offset),
        seg.prefix_len(),
    )
    .expect("valid prefix")
}

/// The segment of node `i` (0-based) when `n` nodes are split into `segments` halves.
fn segment_of(i: usize, n: usize, segments: usize) -> usize {
    i * segments / n
}

/// Lays out a lab. Rejects sizes the lab does not support, with the field and value.
pub fn plan(spec: &LabSpec) -> Result<Plan, LabError> {
    validate_name(&spec.name)?;
    if spec.nodes == 0 || spec.nodes > MAX_NODES {
        return Err(LabError::Invalid(format!(
            "--nodes {}: must be between 1 and {MAX_NODES}",
            spec.nodes
        )));
    }
    if spec.segments == 0 || spec.segments > MAX_SEGMENTS {
        return Err(LabError::Invalid(format!(
            "--segments {}: must be 1 or 2",
            spec.segments
        )));
    }
    if spec.segments > spec.nodes {
        return Err(LabError::Invalid(format!(
            "--segments {}: needs at least as many nodes (got --nodes {})",
            spec.segments, spec.nodes
        )));
    }
    if spec.etcd_members != 1 && spec.etcd_members != 3 {
        return Err(LabError::Invalid(format!(
            "--etcd-members {}: must be 1 or 3",
            spec.etcd_members
        )));
    }
    let ns = |what: &str| format!("{NS_PREFIX}{}-{what}", spec.name);
    let segments: Vec<Segment> = (0..spec.segments)
        .map(|i| {
            let net = segment_net(i);
            let net6 = spec.ipv6.then(|| segment_net6(i));
            Segment {
                index: i,
                bridge: format!("seg{i}"),
                net,
                router: host_addr(&net, 1).addr(),
                net6,
                router6: net6.map(|n| host_addr6(&n, 1).addr()),
            }
        })
        .collect();
    let etcd = (1..=spec.etcd_members)
        .map(|i| Host {
            name: format!("etcd{i}"),
            netns: ns(&format!("etcd{i}")),
            segment: 0,
            addr: host_addr(&segments[0].net, 1 + i as u32),
            port: format!("e{i}"),
            addr6: segments[0].net6.map(|n| host_addr6(&n, 1 + i as u32)),
        })
        .collect();
    let nodes = (0..spec.nodes)
        .map(|i| {
            let seg = segment_of(i, spec.nodes, spec.segments);
            Host {
                name: format!("node{}", i + 1),
                netns: ns(&format!("node{}", i + 1)),
                segment: seg,
                addr: host_addr(&segments[seg].net, 11 + i as u32),
                port: format!("n{}", i + 1),
                addr6: segments[seg].net6.map(|n| host_addr6(&n, 11 + i as u32)),
            }
        })
        .collect();
    Ok(Plan {
        name: spec.name.clone(),
        switch_ns: ns("sw"),
        router_ns: ns("rt"),
        segments,
        etcd,
        nodes,
    })
}

/// The ranges the lab uses that must not collide with anything the host has.
pub fn lab_ranges() -> Vec<IpNet> {
    [UNDERLAY, UNDERLAY6]
        .into_iter()
        .chain(POD_RANGES)
        .map(|s| s.parse().expect("constant"))
        .collect()
}

/// Host networks that overlap one of `ours`, as `(host network, our range)` pairs. Two prefixes
/// overlap when either contains the other; a host address is taken with its prefix, so
/// 10.0.0.5/8 on the host collides with 10.244.0.0/16.
pub fn overlaps(host: &[IpNet], ours: &[IpNet]) -> Vec<(IpNet, IpNet)> {
    let mut out = Vec::new();
    for h in host {
        let hnet = h.trunc();
        for o in ours {
            let same_family = matches!(
                (hnet.addr(), o.addr()),
                (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
            );
            if same_family && (hnet.contains(&o.network()) || o.contains(&hnet.network())) {
                out.push((*h, *o));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn overlap_detects_containment_both_ways() {
        let ours = lab_ranges();
        // This machine's own addresses: no overlap.
        assert!(
            overlaps(
                &nets(&["127.0.0.1/8", "192.0.2.2/24", "fd00::2/64", "::1/128"]),
                &ours
            )
            .is_empty()
        );
        // A host address inside our underlay.
        let o = overlaps(&nets(&["198.19.4.4/24"]), &ours);
        assert_eq!(
            o,
            vec![(
                "198.19.4.4/24".parse().unwrap(),
                "198.18.0.0/15".parse().unwrap()
            )]
        );
        // A host network that contains our pod range.
        let o = overlaps(&nets(&["10.0.0.5/8"]), &ours);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].1, "10.244.0.0/16".parse::<IpNet>().unwrap());
        // IPv6 inside the v6 pod range.
        assert_eq!(overlaps(&nets(&["fd10:244:0:10::1/64"]), &ours).len(), 1);
        // Adjacent but disjoint.
        assert!(
            overlaps(
                &nets(&["198.20.0.1/16", "10.245.0.1/16", "fd10:245::1/64"]),
                &ours
            )
            .is_empty()
        );
        // A /32 host route exactly at the edge.
        assert_eq!(overlaps(&nets(&["198.19.255.255/32"]), &ours).len(), 1);
    }

    #[test]
    fn plan_one_segment() {
        let p = plan(&LabSpec::new("t1", 3)).unwrap();
        assert_eq!(p.switch_ns, "pnl-t1-sw");
        assert_eq!(p.router_ns, "pnl-t1-rt");
        assert_eq!(p.segments.len(), 1);
        assert_eq!(p.segments[0].net.to_string(), "198.18.0.0/17");
        assert_eq!(p.segments[0].router.to_string(), "198.18.0.1");
        let addrs: Vec<String> = p.nodes.iter().map(|n| n.addr.to_string()).collect();
        assert_eq!(
            addrs,
            ["198.18.0.11/17", "198.18.0.12/17", "198.18.0.13/17"]
        );
        assert_eq!(p.nodes[2].netns, "pnl-t1-node3");
        assert_eq!(p.nodes[2].port, "n3");
        assert_eq!(p.etcd.len(), 1);
        assert_eq!(p.etcd[0].addr.to_string(), "198.18.0.2/17");
        assert_eq!(p.etcd_endpoints(), "http://198.18.0.2:2379");
        assert_eq!(
            p.namespaces(),
            [
                "pnl-t1-sw",
                "pnl-t1-rt",
                "pnl-t1-etcd1",
                "pnl-t1-node1",
                "pnl-t1-node2",
                "pnl-t1-node3"
            ]
        );
    }

    #[test]
    fn plan_two_segments_splits_halves() {
        let p = plan(&LabSpec::new("t2", 4).segments(2).etcd_members(3)).unwrap();
        let segs: Vec<usize> = p.nodes.iter().map(|n| n.segment).collect();
        assert_eq!(segs, [0, 0, 1, 1]);
        assert_eq!(p.segments[1].net.to_string(), "198.18.128.0/17");
        assert_eq!(p.segments[1].router.to_string(), "198.18.128.1");
        assert_eq!(p.nodes[2].addr.to_string(), "198.18.128.13/17");
        assert_eq!(p.nodes[1].addr.to_string(), "198.18.0.12/17");
        assert_eq!(
            p.etcd_endpoints(),
            "http://198.18.0.2:2379,http://198.18.0.3:2379,http://198.18.0.4:2379"
        );
        assert_eq!(
            p.etcd_initial_cluster(),
            "etcd1=http://198.18.0.2:2380,etcd2=http://198.18.0.3:2380,etcd3=http://198.18.0.4:2380"
        );
        // Odd node counts: the first segment gets the smaller half.
        let p = plan(&LabSpec::new("t3", 5).segments(2)).unwrap();
        let segs: Vec<usize> = p.nodes.iter().map(|n| n.segment).collect();
        assert_eq!(segs, [0, 0, 0, 1, 1]);
    }

    #[test]
    fn every_address_is_in_the_underlay_and_unique() {
        let p = plan(&LabSpec::new("big", MAX_NODES).segments(2).etcd_members(3)).unwrap();
        let underlay: Ipv4Net = UNDERLAY.parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for h in p.nodes.iter().chain(p.etcd.iter()) {
            assert!(underlay.contains(&h.ip()), "{} outside underlay", h.addr);
            assert!(p.segments[h.segment].net.contains(&h.ip()));
            assert!(seen.insert(h.ip()), "duplicate {}", h.ip());
            assert!(h.port.len() <= 15);
        }
        for s in &p.segments {
            assert!(seen.insert(s.router));
        }
    }

    #[test]
    fn ipv6_underlay_mirrors_the_ipv4_offsets() {
        let p = plan(&LabSpec::new("t6", 3).segments(2).ipv6(true)).unwrap();
        assert_eq!(p.segments[1].net6.unwrap().to_string(), "2001:2:0:1::/64");
        assert_eq!(p.segments[0].router6.unwrap().to_string(), "2001:2::1");
        let a: Vec<String> = p
            .nodes
            .iter()
            .map(|n| n.addr6.unwrap().to_string())
            .collect();
        assert_eq!(a, ["2001:2::b/64", "2001:2::c/64", "2001:2:0:1::d/64"]);
        assert_eq!(p.etcd[0].ip6().unwrap().to_string(), "2001:2::2");
        let under: Ipv6Net = UNDERLAY6.parse().unwrap();
        assert!(p.nodes.iter().all(|n| under.contains(&n.ip6().unwrap())));
        // Off by default: the IPv4-only lab is unchanged.
        let p = plan(&LabSpec::new("t4", 2)).unwrap();
        assert!(p.segments[0].net6.is_none() && p.nodes[0].addr6.is_none());
        // The host must not use the IPv6 underlay either.
        assert_eq!(
            overlaps(&nets(&["2001:2:0:5::1/64"]), &lab_ranges()).len(),
            1
        );
    }

    #[test]
    fn plan_rejects_bad_specs_naming_the_field() {
        let err = |s: LabSpec| plan(&s).unwrap_err().to_string();
        assert!(err(LabSpec::new("x", 0)).contains("--nodes 0"));
        assert!(err(LabSpec::new("x", 251)).contains("--nodes 251"));
        assert!(err(LabSpec::new("x", 3).segments(3)).contains("--segments 3"));
        assert!(err(LabSpec::new("x", 1).segments(2)).contains("--segments 2"));
        assert!(err(LabSpec::new("x", 3).etcd_members(2)).contains("--etcd-members 2"));
        assert!(err(LabSpec::new("Bad_Name", 3)).contains("lab name \"Bad_Name\""));
        assert!(err(LabSpec::new("-x", 3)).contains("lab name"));
        assert!(validate_pod_name("web-1").is_ok());
        assert!(validate_pod_name("web/1").is_err());
    }
}

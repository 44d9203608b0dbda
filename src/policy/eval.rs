//! The evaluator: may this source reach this destination on this protocol and port, and why.
//! It reads the model directly, with no precomputation, and is the oracle the compiled IR and
//! the kernel are checked against.
//!
//! A connection needs both ends to agree: the source's egress (when a policy isolates the
//! source for egress) and the destination's ingress (likewise). Per end and direction:
//! - a pod is isolated when any policy of its namespace selects it and has that direction in
//!   its effective `policyTypes`; a pod no policy isolates allows everything;
//! - an isolated pod allows what any rule of any isolating policy allows (union, no order);
//! - a rule matches when the other end matches one of its peers (or it has none) and the
//!   protocol/port matches one of its ports (or it has none). Pod and namespace selectors match
//!   pods; `ipBlock` matches addresses, pods' included (the e2e suite expects pod IPs to match);
//! - named ports resolve against the destination's container ports (on ingress the isolated
//!   pod itself, on egress the destination, so one rule can mean different numbers per
//!   destination; a destination that is not a pod matches no named port).
//!
//! Choices where upstream leaves room, written down here:
//! - traffic between a pod and its own node (any address of `Node::ips`) is always allowed,
//!   in both directions (the documentation's rule);
//! - loopback (a pod to itself, by any of its addresses) is always allowed: the documentation
//!   says a pod cannot block access to itself, the e2e suite ignores loopback
//!   (kubernetes#95879), and in the data path such traffic never leaves the pod;
//! - host-network pods are not pods here: never isolated, never selected by pod or namespace
//!   selectors; their traffic is their node's address (`ipBlock` may match it);
//! - replies of allowed connections are the kernel's business (conntrack), not a question asked
//!   here: a "connection" is its first packet, from source to destination;
//! - a pod named by key is seen at its first address (`status.podIPs[0]`), which is what the
//!   e2e probes use; ask with `Endpoint::Ip` for another one.

use std::fmt;
use std::net::IpAddr;

use super::model::{Cluster, Direction, Key, Peer, Pod, Policy, Protocol, Rule};

/// One end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod by namespace/name, at its first address.
    Pod(Key),
    /// An address; a pod's address means that pod.
    Ip(IpAddr),
}

impl Endpoint {
    pub fn pod(namespace: &str, name: &str) -> Endpoint {
        Endpoint::Pod(Key::new(namespace, name))
    }
}

/// The question named a pod the model does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no pod {0} in the model")]
pub struct UnknownPod(pub Key);

/// Which rule let the connection through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: Key,
    pub direction: Direction,
    /// Index into the policy's rules of that direction (`spec.ingress[index]`).
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// The decision for one end in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// This end is not a pod policy applies to (an outside address, a node, a host-network
    /// pod): nothing to check.
    NotAPod,
    /// The pod talks to itself.
    Loopback,
    /// The other end is this pod's own node.
    OwnNode,
    /// No policy isolates this pod in this direction.
    NotIsolated,
    /// Isolated by `isolated_by`, and `rule` allows the connection.
    Allowed {
        isolated_by: Vec<Key>,
        rule: RuleRef,
    },
    /// Isolated by `isolated_by`, and no rule of theirs allows it.
    Denied { isolated_by: Vec<Key> },
}

impl Side {
    pub fn allows(&self) -> bool {
        !matches!(self, Side::Denied { .. })
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = |k: &[Key]| k.iter().map(Key::to_string).collect::<Vec<_>>().join(", ");
        match self {
            Side::NotAPod => f.write_str("not a pod"),
            Side::Loopback => f.write_str("loopback, always allowed"),
            Side::OwnNode => f.write_str("own node, always allowed"),
            Side::NotIsolated => f.write_str("not isolated"),
            Side::Allowed { isolated_by, rule } => {
                write!(f, "allowed by {rule} (isolated by {})", keys(isolated_by))
            }
            Side::Denied { isolated_by } => {
                write!(
                    f,
                    "denied: no rule matches (isolated by {})",
                    keys(isolated_by)
                )
            }
        }
    }
}

/// The answer and its reasons: the source's egress side and the destination's ingress side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub egress: Side,
    pub ingress: Side,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.allowed { "allowed" } else { "denied" };
        write!(
            f,
            "{word}; source egress: {}; destination ingress: {}",
            self.egress, self.ingress
        )
    }
}

/// One resolved end: the pod policy applies to (if any) and the address the traffic carries.
#[derive(Debug, Clone, Copy)]
struct End<'a> {
    pod: Option<&'a Pod>,
    ip: Option<IpAddr>,
}

fn resolve<'a>(cluster: &'a Cluster, e: &Endpoint) -> Result<End<'a>, UnknownPod> {
    match e {
        Endpoint::Pod(key) => {
            let pod = cluster.pod(key).ok_or_else(|| UnknownPod(key.clone()))?;
            let ip = pod.ips.first().copied();
            let pod = (!pod.host_network).then_some(pod);
            Ok(End { pod, ip })
        }
        Endpoint::Ip(ip) => Ok(End {
            pod: cluster.pod_by_ip(*ip),
            ip: Some(*ip),
        }),
    }
}

/// May `src` open a connection to `dst` on `protocol`/`port`?
pub fn allowed(
    cluster: &Cluster,
    src: &Endpoint,
    dst: &Endpoint,
    protocol: Protocol,
    port: u16,
) -> Result<Verdict, UnknownPod> {
    let s = resolve(cluster, src)?;
    let d = resolve(cluster, dst)?;
    let same_pod = matches!((s.pod, d.pod), (Some(a), Some(b)) if a.key() == b.key());
    if same_pod {
        return Ok(Verdict {
            allowed: true,
            egress: Side::Loopback,
            ingress: Side::Loopback,
        });
    }
    let traffic = Traffic { protocol, port };
    let egress = side(cluster, Direction::Egress, s, d, traffic);
    let ingress = side(cluster, Direction::Ingress, d, s, traffic);
    Ok(Verdict {
        allowed: egress.allows() && ingress.allows(),
        egress,
        ingress,
    })
}

#[derive(Debug, Clone, Copy)]
struct Traffic {
    protocol: Protocol,
    port: u16,
}

/// The decision at `subject` (the source for egress, the destination for ingress) about
/// traffic with `other`.
fn side(cluster: &Cluster, dir: Direction, subject: End, other: End, t: Traffic) -> Side {
    let Some(pod) = subject.pod else {
        return Side::NotAPod;
    };
    if is_own_node(cluster, pod, other.ip) {
        return Side::OwnNode;
    }
    let isolating: Vec<&Policy> = isolating(cluster, pod, dir).collect();
    if isolating.is_empty() {
        return Side::NotIsolated;
    }
    let isolated_by: Vec<Key> = isolating.iter().map(|p| p.key()).collect();
    // On ingress the subject is the destination; on egress the other end is.
    let dst = match dir {
        Direction::Ingress => subject.pod,
        Direction::Egress => other.pod,
    };
    for policy in isolating {
        let rules = policy.rules(dir).unwrap_or_default();
        for (index, rule) in rules.iter().enumerate() {
            if rule_matches(cluster, &policy.namespace, rule, other, dst, t) {
                let rule = RuleRef {
                    policy: policy.key(),
                    direction: dir,
                    index,
                };
                return Side::Allowed { isolated_by, rule };
            }
        }
    }
    Side::Denied { isolated_by }
}

fn is_own_node(cluster: &Cluster, pod: &Pod, ip: Option<IpAddr>) -> bool {
    let node = ip.and_then(|ip| cluster.node_by_ip(ip));
    node.is_some_and(|n| pod.node.as_deref() == Some(n.name.as_str()))
}

/// The policies that isolate `pod` in `dir`.
pub fn isolating<'a>(
    cluster: &'a Cluster,
    pod: &'a Pod,
    dir: Direction,
) -> impl Iterator<Item = &'a Policy> + 'a {
    cluster
        .policies_in(&pod.namespace)
        .filter(move |p| p.rules(dir).is_some() && p.selects(pod))
}

fn rule_matches(
    cluster: &Cluster,
    namespace: &str,
    rule: &Rule,
    other: End,
    dst: Option<&Pod>,
    t: Traffic,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(cluster, namespace, p, other));
    let port_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|p| p.matches(t.protocol, t.port, dst));
    peer_ok && port_ok
}

fn peer_matches(cluster: &Cluster, namespace: &str, peer: &Peer, end: End) -> bool {
    match peer {
        Peer::IpBlock(block) => end.ip.is_some_and(|ip| block.contains(ip)),
        _ => end
            .pod
            .is_some_and(|pod| cluster.peer_selects_pod(namespace, peer, pod)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cases::{self, Truth};
    use crate::policy::model::{Namespace, Node, Policy};

    /// The evaluator's table for one probe.
    fn table(cluster: &Cluster, protocol: Protocol, port: u16) -> Truth {
        let pods = cases::pods();
        let mut t = Truth::all(false);
        for (i, from) in pods.iter().enumerate() {
            for (j, to) in pods.iter().enumerate() {
                let src = Endpoint::Pod(from.clone());
                let dst = Endpoint::Pod(to.clone());
                t.cells[i][j] = allowed(cluster, &src, &dst, protocol, port)
                    .unwrap()
                    .allowed;
            }
        }
        t
    }

    #[test]
    fn reproduces_every_case() {
        let mut failures = Vec::new();
        let mut probes = 0;
        for case in cases::all() {
            case.run(|cluster, probe| {
                probes += 1;
                let got = table(cluster, probe.protocol, probe.port);
                if !probe.expect.differences(&got).is_empty() {
                    failures.push(format!(
                        "{} / {} ({} {}):\nexpected\n{}\ngot\n{}",
                        case.context, case.name, probe.protocol, probe.port, probe.expect, got
                    ));
                }
            })
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        assert!(probes >= 60, "only {probes} probes");
    }

    fn deny_all_x() -> Cluster {
        let mut c = cases::fixture();
        c.upsert_policy(Policy {
            namespace: "x".into(),
            name: "deny-all".into(),
            pod_selector: crate::policy::model::LabelSelector::everything(),
            ingress: Some(vec![]),
            egress: Some(vec![]),
        });
        c
    }

    #[test]
    fn own_node_is_always_allowed_other_nodes_are_not() {
        let c = deny_all_x();
        let xa = Endpoint::pod("x", "a"); // on node-1
        for ip in cases::node_ips(1) {
            let v = allowed(&c, &Endpoint::Ip(ip), &xa, Protocol::Tcp, 80).unwrap();
            assert!(v.allowed, "{v}");
            assert_eq!(v.ingress, Side::OwnNode);
            let v = allowed(&c, &xa, &Endpoint::Ip(ip), Protocol::Udp, 53).unwrap();
            assert!(v.allowed, "{v}");
            assert_eq!(v.egress, Side::OwnNode);
        }
        for ip in cases::node_ips(2) {
            let v = allowed(&c, &Endpoint::Ip(ip), &xa, Protocol::Tcp, 80).unwrap();
            assert!(!v.allowed, "{v}");
        }
    }

    #[test]
    fn loopback_is_allowed_even_when_isolated() {
        let c = deny_all_x();
        let xa = Endpoint::pod("x", "a");
        let v = allowed(&c, &xa, &xa, Protocol::Tcp, 80).unwrap();
        assert!(v.allowed);
        assert_eq!(v.ingress, Side::Loopback);
        let by_ip = Endpoint::Ip(cases::pod_ip("x", "a"));
        assert!(allowed(&c, &by_ip, &xa, Protocol::Tcp, 80).unwrap().allowed);
    }

    #[test]
    fn outside_addresses_are_not_pods() {
        let c = cases::fixture();
        let out = Endpoint::Ip(cases::OUTSIDE);
        let v = allowed(&c, &out, &Endpoint::pod("y", "a"), Protocol::Tcp, 80).unwrap();
        assert!(v.allowed);
        assert_eq!(v.egress, Side::NotAPod);
        assert_eq!(v.ingress, Side::NotIsolated);
        let c = deny_all_x();
        let v = allowed(&c, &Endpoint::pod("x", "b"), &out, Protocol::Tcp, 443).unwrap();
        assert!(!v.allowed);
        assert!(matches!(v.egress, Side::Denied { .. }));
    }

    #[test]
    fn host_network_pods_are_their_nodes_traffic() {
        let mut c = deny_all_x();
        let node_ip = cases::node_ips(1)[0];
        c.upsert_pod(Pod {
            namespace: "x".into(),
            name: "host".into(),
            labels: cases::labels(&[("pod", "host")]),
            ips: vec![node_ip],
            node: Some("node-1".into()),
            ports: vec![],
            host_network: true,
        });
        let host = Endpoint::pod("x", "host");
        // Not isolated itself, even though deny-all selects every pod of x.
        let v = allowed(&c, &host, &Endpoint::Ip(cases::OUTSIDE), Protocol::Tcp, 80).unwrap();
        assert!(v.allowed);
        assert_eq!(v.egress, Side::NotAPod);
        // To x/a on the same node: node traffic.
        let v = allowed(&c, &host, &Endpoint::pod("x", "a"), Protocol::Tcp, 80).unwrap();
        assert_eq!(v.ingress, Side::OwnNode);
        // By address the node IP is the node, not the pod.
        assert!(c.pod_by_ip(node_ip).is_none());
    }

    #[test]
    fn verdict_names_isolating_policies_and_the_rule() {
        let mut c = cases::fixture();
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81}]
  - from: [{podSelector: {matchLabels: {pod: b}}}]
"#;
        let (_, errors) = crate::policy::manifest::load_into(&mut c, text);
        assert!(errors.is_empty(), "{errors:?}");
        let v = allowed(
            &c,
            &Endpoint::pod("x", "b"),
            &Endpoint::pod("x", "a"),
            Protocol::Tcp,
            80,
        )
        .unwrap();
        let Side::Allowed { isolated_by, rule } = &v.ingress else {
            panic!("{v}");
        };
        assert_eq!(
            isolated_by,
            &vec![Key::new("x", "allow-b"), Key::new("x", "deny")]
        );
        assert_eq!(rule.to_string(), "x/allow-b ingress[1]");
        let v = allowed(
            &c,
            &Endpoint::pod("x", "c"),
            &Endpoint::pod("x", "a"),
            Protocol::Tcp,
            80,
        )
        .unwrap();
        assert!(!v.allowed);
        assert!(
            v.to_string().contains("isolated by x/allow-b, x/deny"),
            "{v}"
        );
    }

    #[test]
    fn unknown_pod_is_an_error() {
        let c = cases::fixture();
        let e = allowed(
            &c,
            &Endpoint::pod("x", "nope"),
            &Endpoint::pod("x", "a"),
            Protocol::Tcp,
            80,
        );
        assert_eq!(e, Err(UnknownPod(Key::new("x", "nope"))));
    }

    #[test]
    fn undeclared_namespace_still_has_its_name_label() {
        let mut c = Cluster::new();
        c.upsert_node(Node {
            name: "n".into(),
            ips: vec![],
        });
        c.upsert_namespace(Namespace::new("x", Default::default()));
        let pod = |ns: &str, ip: &str| Pod {
            namespace: ns.into(),
            name: "p".into(),
            labels: Default::default(),
            ips: vec![ip.parse().unwrap()],
            node: Some("n".into()),
            ports: vec![],
            host_network: false,
        };
        c.upsert_pod(pod("x", "10.0.0.1"));
        c.upsert_pod(pod("ghost", "10.0.0.2"));
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-ghost, namespace: x}
spec:
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ghost}}}]
"#;
        let (_, errors) = crate::policy::manifest::load_into(&mut c, text);
        assert!(errors.is_empty(), "{errors:?}");
        let v = allowed(
            &c,
            &Endpoint::pod("ghost", "p"),
            &Endpoint::pod("x", "p"),
            Protocol::Tcp,
            1,
        )
        .unwrap();
        assert!(v.allowed, "{v}");
    }
}

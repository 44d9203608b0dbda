//! The upstream NetworkPolicy e2e cases as data, for tests that need no cluster (the evaluator
//! and the compiled IR here; the kernel in lab tests later).
//!
//! Source: `kubernetes/kubernetes` `test/e2e/network/netpol/network_policy.go` (the version that
//! runs every case on the full 3×3 model; newer versions create only the pods a case needs,
//! with the same expectations on those). Each case carries the `It(...)` text it transcribes
//! and the `Describe` context ("... using UDP", "... using SCTP"), its policies as manifest text
//! exactly as the Go helpers build them (`SetSpecIngressRules` sets `policyTypes: [Ingress]`,
//! and so on), its label changes, and for each probed protocol/port the expected truth table,
//! built with the same operations as upstream's `Reachability` (`expect_peer`,
//! `expect_all_ingress`, ...). Loopback cells are not compared (upstream ignores them).
//!
//! The fixture (`fixture`) is upstream's model: namespaces x, y, z labelled `ns: <name>`; pods
//! a, b, c in each labelled `pod: <name>`, each serving ports 80 and 81 on TCP and UDP (named
//! `serve-80-tcp`, ...) and on SCTP (marked separately: upstream only runs SCTP under
//! `[Feature:SCTPConnectivity]`). Upstream gives each pod only the protocols a case probes;
//! giving all of them changes no table here. Addresses are fixed so `ipBlock` cases can name
//! them: pods alternate between two nodes, `node-1` (10.244.1.0/24) and `node-2`
//! (10.244.2.0/24).
//!
//! Cases marked `Origin::Podnet` are podnet's own, in the same form, for what the upstream
//! suite does not exercise on the data path: `endPort` (KEP-2079; upstream tests only its API
//! validation, a data-path test was proposed in kubernetes PR #100291 and not merged), the
//! `Exists`/`DoesNotExist` operators, and a named port that resolves to different numbers on
//! different destinations.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::manifest;
use super::model::{Cluster, Key, Labels, NamedPort, Namespace, Node, Pod, Protocol};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
pub const NODES: [&str; 2] = ["node-1", "node-2"];

/// The nine pods in upstream's order: x/a, x/b, x/c, y/a, ..., z/c.
pub fn pods() -> Vec<Key> {
    NAMESPACES
        .iter()
        .flat_map(|ns| POD_NAMES.iter().map(move |p| Key::new(*ns, *p)))
        .collect()
}

fn index(ns: &str, pod: &str) -> usize {
    let n = NAMESPACES
        .iter()
        .position(|x| *x == ns)
        .expect("namespace x, y or z");
    let p = POD_NAMES
        .iter()
        .position(|x| *x == pod)
        .expect("pod a, b or c");
    n * 3 + p
}

/// The node (1-based) a fixture pod runs on: pods alternate.
fn node_number(ns: &str, pod: &str) -> u8 {
    1 + (index(ns, pod) % 2) as u8
}

/// A fixture pod's address: 10.244.<node>.<10 + index>.
pub fn pod_ip(ns: &str, pod: &str) -> IpAddr {
    let i = index(ns, pod) as u8;
    IpAddr::V4(Ipv4Addr::new(10, 244, node_number(ns, pod), 10 + i))
}

/// A node's addresses: its InternalIP (172.18.0.1<n>) and its bridge gateway (10.244.<n>.1).
pub fn node_ips(n: u8) -> Vec<IpAddr> {
    vec![
        IpAddr::V4(Ipv4Addr::new(172, 18, 0, 10 + n)),
        IpAddr::V4(Ipv4Addr::new(10, 244, n, 1)),
    ]
}

/// An address outside the cluster.
pub const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

/// The container ports every fixture pod serves.
pub fn serving_ports() -> Vec<NamedPort> {
    let mut out = Vec::new();
    for port in PORTS {
        for protocol in Protocol::ALL {
            let name = format!("serve-{port}-{}", protocol.as_str().to_ascii_lowercase());
            out.push(NamedPort {
                name,
                protocol,
                port,
            });
        }
    }
    out
}

/// Upstream's model: 3 namespaces × 3 pods, on two nodes.
pub fn fixture() -> Cluster {
    let mut c = Cluster::new();
    for n in 1..=2u8 {
        c.upsert_node(Node {
            name: format!("node-{n}"),
            ips: node_ips(n),
        });
    }
    for ns in NAMESPACES {
        c.upsert_namespace(Namespace::new(ns, labels(&[("ns", ns)])));
        for name in POD_NAMES {
            c.upsert_pod(Pod {
                namespace: ns.to_string(),
                name: name.to_string(),
                labels: labels(&[("pod", name)]),
                ips: vec![pod_ip(ns, name)],
                node: Some(format!("node-{}", node_number(ns, name))),
                ports: serving_ports(),
                host_network: false,
            });
        }
    }
    c
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Where a case comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `network_policy.go`, `Describe` context and `It` text as upstream has them.
    Upstream,
    /// podnet's own case; the string says what upstream material it follows.
    Podnet(&'static str),
}

/// One transcribed test.
#[derive(Debug, Clone)]
pub struct Case {
    pub context: &'static str,
    pub name: &'static str,
    pub origin: Origin,
    /// Run in order on a fresh `fixture()`: each step's changes, then its probes.
    pub steps: Vec<Step>,
}

impl Case {
    /// Upstream runs these only with `[Feature:SCTPConnectivity]`.
    /// Plays the case on a fresh `fixture()`: each step's changes, then `check` for each of
    /// its probes with the cluster as it then is.
    pub fn run(&self, mut check: impl FnMut(&Cluster, &Probe)) -> Result<(), ChangeError> {
        let mut cluster = fixture();
        for step in &self.steps {
            for change in &step.changes {
                change.apply(&mut cluster)?;
            }
            for probe in &step.probes {
                check(&cluster, probe);
            }
        }
        Ok(())
    }

    pub fn needs_sctp(&self) -> bool {
        self.steps
            .iter()
            .flat_map(|s| &s.probes)
            .any(|p| p.protocol == Protocol::Sctp)
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub changes: Vec<Change>,
    pub probes: Vec<Probe>,
}

/// A change to the cluster between probes.
#[derive(Debug, Clone)]
pub enum Change {
    /// Create or replace the objects of a manifest (policies, pods).
    Apply(String),
    /// Delete every NetworkPolicy (upstream's `cleanNetworkPolicies`).
    DeleteAllPolicies,
    /// Replace a pod's labels.
    PodLabels(Key, Labels),
    /// Replace a namespace's labels (the name label stays).
    NamespaceLabels(String, Labels),
}

/// A change that could not be applied (a case's own manifest is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChangeError(pub String);

impl Change {
    pub fn apply(&self, cluster: &mut Cluster) -> Result<(), ChangeError> {
        match self {
            Change::Apply(text) => {
                let (_, errors) = manifest::load_into(cluster, text);
                if let Some(e) = errors.first() {
                    return Err(ChangeError(e.to_string()));
                }
            }
            Change::DeleteAllPolicies => {
                let keys: Vec<Key> = cluster.policies().map(|p| p.key()).collect();
                for k in keys {
                    cluster.remove_policy(&k);
                }
            }
            Change::PodLabels(key, l) => {
                if !cluster.set_pod_labels(key, l.clone()) {
                    return Err(ChangeError(format!("no pod {key}")));
                }
            }
            Change::NamespaceLabels(ns, l) => cluster.set_namespace_labels(ns, l.clone()),
        }
        Ok(())
    }
}

/// One probe: every pod to every pod on one protocol/port, and what to expect.
#[derive(Debug, Clone)]
pub struct Probe {
    pub protocol: Protocol,
    pub port: u16,
    pub expect: Truth,
}

/// Selects pods the way upstream's `Peer{Namespace, Pod}` does: an empty field matches all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sel {
    pub namespace: Option<&'static str>,
    pub pod: Option<&'static str>,
}

pub const ANY: Sel = Sel {
    namespace: None,
    pod: None,
};

pub fn ns(namespace: &'static str) -> Sel {
    Sel {
        namespace: Some(namespace),
        pod: None,
    }
}

pub fn pod(namespace: &'static str, name: &'static str) -> Sel {
    Sel {
        namespace: Some(namespace),
        pod: Some(name),
    }
}

impl Sel {
    fn matches(&self, k: &Key) -> bool {
        self.namespace.is_none_or(|n| n == k.namespace) && self.pod.is_none_or(|p| p == k.name)
    }
}

/// A 9×9 truth table, from (row) × to (column), in `pods()` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truth {
    pub cells: [[bool; 9]; 9],
}

impl Truth {
    /// Every connection as `value` (upstream's `NewReachability(pods, true)`).
    pub fn all(value: bool) -> Truth {
        Truth {
            cells: [[value; 9]; 9],
        }
    }

    /// Sets every cell whose source matches `from` and destination matches `to`.
    pub fn expect_peer(mut self, from: Sel, to: Sel, value: bool) -> Truth {
        let pods = pods();
        for (i, f) in pods.iter().enumerate() {
            for (j, t) in pods.iter().enumerate() {
                if from.matches(f) && to.matches(t) {
                    self.cells[i][j] = value;
                }
            }
        }
        self
    }

    pub fn expect(self, from: Sel, to: Sel, value: bool) -> Truth {
        self.expect_peer(from, to, value)
    }

    /// Everything into `to`.
    pub fn expect_all_ingress(self, to: Sel, value: bool) -> Truth {
        self.expect_peer(ANY, to, value)
    }

    /// Everything out of `from`.
    pub fn expect_all_egress(self, from: Sel, value: bool) -> Truth {
        self.expect_peer(from, ANY, value)
    }

    /// Cells that differ from `other`, loopback excluded, as (from, to, expected here).
    pub fn differences(&self, other: &Truth) -> Vec<(Key, Key, bool)> {
        let pods = pods();
        let mut out = Vec::new();
        for i in 0..9 {
            for j in 0..9 {
                if i != j && self.cells[i][j] != other.cells[i][j] {
                    out.push((pods[i].clone(), pods[j].clone(), self.cells[i][j]));
                }
            }
        }
        out
    }
}

impl fmt::Display for Truth {
    /// Upstream's layout: `.` allowed, `X` denied.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pods = pods();
        write!(f, "-")?;
        for p in &pods {
            write!(f, "\t{p}")?;
        }
        for (i, p) in pods.iter().enumerate() {
            write!(f, "\n{p}")?;
            for cell in self.cells[i] {
                write!(f, "\t{}", if cell { "." } else { "X" })?;
            }
        }
        Ok(())
    }
}

/// A NetworkPolicy manifest: `spec` is the YAML of the spec, indented by the caller freely.
pub fn policy(namespace: &str, name: &str, spec: &str) -> Change {
    let spec: String = spec
        .trim_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    Change::Apply(format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
    ))
}

fn probe(protocol: Protocol, port: u16, expect: Truth) -> Probe {
    Probe {
        protocol,
        port,
        expect,
    }
}

fn tcp(port: u16, expect: Truth) -> Probe {
    probe(Protocol::Tcp, port, expect)
}

fn step(changes: Vec<Change>, probes: Vec<Probe>) -> Step {
    Step { changes, probes }
}

const TCP_CONTEXT: &str = "NetworkPolicy between server and client";
const UDP_CONTEXT: &str = "NetworkPolicy between server and client using UDP";
const SCTP_CONTEXT: &str = "NetworkPolicy between server and client using SCTP";

fn upstream(name: &'static str, steps: Vec<Step>) -> Case {
    Case {
        context: TCP_CONTEXT,
        name,
        origin: Origin::Upstream,
        steps,
    }
}

/// Every case: upstream's, then podnet's own.
pub fn all() -> Vec<Case> {
    let mut v = ingress_cases();
    v.extend(port_cases());
    v.extend(update_cases());
    v.extend(egress_cases());
    v.extend(ip_block_cases());
    v.extend(protocol_cases());
    v.extend(podnet_cases());
    v
}

/// A data table, one entry per case in upstream's order: longer than a screen on purpose, so
/// it reads side by side with `network_policy.go`.
fn ingress_cases() -> Vec<Case> {
    let t = || Truth::all(true);
    vec![
        upstream(
            "should support a 'default-deny-ingress' policy",
            vec![step(
                vec![policy(
                    "x",
                    "deny-ingress",
                    "podSelector: {}\npolicyTypes: [Ingress]\ningress: []",
                )],
                vec![tcp(80, t().expect_peer(ANY, ns("x"), false))],
            )],
        ),
        upstream(
            "should support a 'default-deny-all' policy",
            vec![step(
                vec![policy(
                    "x",
                    "deny-all",
                    "podSelector: {}\npolicyTypes: [Ingress, Egress]\ningress: []\negress: []",
                )],
                vec![tcp(
                    80,
                    t().expect_peer(ANY, ns("x"), false)
                        .expect_peer(ns("x"), ANY, false),
                )],
            )],
        ),
        upstream(
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            vec![step(
                vec![policy(
                    "x",
                    "x-a-allows-x-b",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}"#,
                )],
                vec![tcp(
                    80,
                    t().expect_all_ingress(pod("x", "a"), false).expect(
                        pod("x", "b"),
                        pod("x", "a"),
                        true,
                    ),
                )],
            )],
        ),
        upstream(
            "should enforce policy to allow ingress traffic for a target",
            vec![step(
                vec![
                    policy(
                        "x",
                        "deny-all",
                        "podSelector: {}\npolicyTypes: [Ingress]\ningress: []",
                    ),
                    policy(
                        "x",
                        "allow-all-to-a",
                        r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {}
    namespaceSelector: {}"#,
                    ),
                ],
                vec![tcp(
                    80,
                    t().expect_all_ingress(pod("x", "a"), true)
                        .expect_all_ingress(pod("x", "b"), false)
                        .expect_all_ingress(pod("x", "c"), false),
                )],
            )],
        ),
        upstream(
            "should enforce policy to allow ingress traffic from pods in all namespaces",
            vec![step(
                vec![policy(
                    "x",
                    "allow-from-another-ns",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {}}"#,
                )],
                vec![tcp(80, t())],
            )],
        ),
        upstream(
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            vec![step(
                vec![policy(
                    "x",
                    "allow-client-a-via-ns-selector",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}"#,
                )],
                vec![tcp(
                    80,
                    t().expect_peer(ns("x"), pod("x", "a"), false).expect_peer(
                        ns("z"),
                        pod("x", "a"),
                        false,
                    ),
                )],
            )],
        ),
        upstream(
            "should enforce policy based on PodSelector with MatchExpressions",
            vec![step(
                vec![policy(
                    "x",
                    "x-a-allows-x-b",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector:
      matchExpressions: [{key: pod, operator: In, values: [b]}]"#,
                )],
                vec![tcp(
                    80,
                    t().expect_all_ingress(pod("x", "a"), false).expect(
                        pod("x", "b"),
                        pod("x", "a"),
                        true,
                    ),
                )],
            )],
        ),
        upstream(
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            vec![step(
                vec![policy(
                    "x",
                    "allow-ns-y-match-selector",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]"#,
                )],
                vec![tcp(
                    80,
                    t().expect_peer(ns("x"), pod("x", "a"), false).expect_peer(
                        ns("z"),
                        pod("x", "a"),
                        false,
                    ),
                )],
            )],
        ),
        upstream(
            "should enforce policy based on PodSelector or NamespaceSelector",
            vec![step(
                vec![policy(
                    "x",
                    "allow-ns-y-match-selector",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
  - podSelector: {matchLabels: {pod: b}}"#,
                )],
                vec![tcp(
                    80,
                    t().expect(pod("x", "a"), pod("x", "a"), false).expect(
                        pod("x", "c"),
                        pod("x", "a"),
                        false,
                    ),
                )],
            )],
        ),
        upstream(
            "should enforce policy based on PodSelector and NamespaceSelector",
            vec![step(
                vec![policy(
                    "x",
                    "allow-ns-y-podselector-and-nsselector",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    podSelector: {matchLabels: {pod: b}}"#,
                )],
                vec![tcp(
                    80,
                    t().expect_all_ingress(pod("x", "a"), false)
                        .expect(pod("y", "b"), pod("x", "a"), true)
                        .expect(pod("z", "b"), pod("x", "a"), true),
                )],
            )],
        ),
        upstream(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            vec![step(
                vec![policy(
                    "x",
                    "allow-ns-y-z-pod-b-c",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    podSelector:
      matchExpressions: [{key: pod, operator: In, values: [b, c]}]"#,
                )],
                vec![tcp(
                    80,
                    t().expect_peer(ns("x"), pod("x", "a"), false)
                        .expect(pod("y", "a"), pod("x", "a"), false)
                        .expect(pod("z", "a"), pod("x", "a"), false),
                )],
            )],
        ),
        upstream(
            "should enforce policy based on any PodSelectors",
            vec![step(
                vec![policy(
                    "x",
                    "allow-ns-x-pod-b-c",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
  - podSelector: {matchLabels: {pod: c}}"#,
                )],
                vec![tcp(
                    80,
                    t().expect_all_ingress(pod("x", "a"), false)
                        .expect(pod("x", "b"), pod("x", "a"), true)
                        .expect(pod("x", "c"), pod("x", "a"), true),
                )],
            )],
        ),
        upstream(
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            vec![step(
                vec![ns_y_pod_a_policy()],
                vec![tcp(
                    80,
                    t().expect_all_ingress(pod("x", "a"), false).expect(
                        pod("y", "a"),
                        pod("x", "a"),
                        true,
                    ),
                )],
            )],
        ),
        upstream(
            "should deny ingress from pods on other namespaces",
            vec![step(
                vec![policy(
                    "x",
                    "deny-empty-policy",
                    "podSelector: {}\npolicyTypes: [Ingress]\ningress:\n- from:\n  - podSelector: {matchLabels: {}}",
                )],
                vec![tcp(
                    80,
                    t().expect_peer(ns("y"), ns("x"), false)
                        .expect_peer(ns("z"), ns("x"), false),
                )],
            )],
        ),
        upstream(
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            vec![step(
                vec![policy(
                    "x",
                    "allow-client-a-via-ns-selector-for-immutable-ns-label",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}"#,
                )],
                vec![tcp(
                    80,
                    t().expect_peer(ns("x"), pod("x", "a"), false).expect_peer(
                        ns("z"),
                        pod("x", "a"),
                        false,
                    ),
                )],
            )],
        ),
    ]
}

/// Upstream's "allow-ns-y-pod-a-via-namespace-pod-selector", used over TCP, UDP and SCTP.
fn ns_y_pod_a_policy() -> Change {
    policy(
        "x",
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}"#,
    )
}

/// Upstream's port-81-from-namespace-y policy, over a given protocol.
fn port_81_policy(name: &str, protocol: &str) -> Change {
    policy(
        "x",
        name,
        &format!(
            r#"
podSelector: {{matchLabels: {{pod: a}}}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}
  ports:
  - {{port: 81, protocol: {protocol}}}"#
        ),
    )
}

/// A data table, one entry per case in upstream's order: longer than a screen on purpose, so
/// it reads side by side with `network_policy.go`.
fn port_cases() -> Vec<Case> {
    let t = || Truth::all(true);
    let allow_y_to_xa = || {
        t().expect_peer(ns("x"), pod("x", "a"), false)
            .expect_peer(ns("y"), pod("x", "a"), true)
            .expect_peer(ns("z"), pod("x", "a"), false)
    };
    vec![
        upstream(
            "should enforce policy based on Ports",
            vec![step(
                vec![port_81_policy("allow-client-a-via-ns-selector", "TCP")],
                vec![tcp(81, allow_y_to_xa())],
            )],
        ),
        upstream(
            "should enforce multiple, stacked policies with overlapping podSelectors",
            vec![
                step(
                    vec![port_81_policy("allow-client-a-via-ns-selector", "TCP")],
                    vec![
                        tcp(81, allow_y_to_xa()),
                        tcp(80, t().expect_all_ingress(pod("x", "a"), false)),
                    ],
                ),
                step(
                    vec![policy(
                        "x",
                        "allow-client-a-via-ns-selector-80",
                        r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: 80, protocol: TCP}"#,
                    )],
                    vec![tcp(80, allow_y_to_xa())],
                ),
            ],
        ),
        upstream(
            "should support allow-all policy",
            vec![step(
                vec![policy(
                    "x",
                    "allow-all",
                    "podSelector: {matchLabels: {}}\npolicyTypes: [Ingress]\ningress:\n- {}",
                )],
                vec![tcp(80, t()), tcp(81, t())],
            )],
        ),
        upstream(
            "should allow ingress access on one named port",
            vec![step(
                vec![policy(
                    "x",
                    "allow-all",
                    "podSelector: {matchLabels: {}}\npolicyTypes: [Ingress]\ningress:\n- ports:\n  - port: serve-81-tcp",
                )],
                vec![tcp(81, t()), tcp(80, t().expect_peer(ANY, ns("x"), false))],
            )],
        ),
        upstream(
            "should allow ingress access from namespace on one named port",
            vec![step(
                vec![policy(
                    "x",
                    "allow-client-a-via-ns-selector-80",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: serve-80-tcp, protocol: TCP}"#,
                )],
                vec![
                    tcp(
                        80,
                        t().expect_peer(ns("x"), pod("x", "a"), false).expect_peer(
                            ns("z"),
                            pod("x", "a"),
                            false,
                        ),
                    ),
                    tcp(81, t().expect_all_ingress(pod("x", "a"), false)),
                ],
            )],
        ),
        upstream(
            "should allow egress access on one named port",
            vec![step(
                vec![policy(
                    "x",
                    "allow-egress",
                    "podSelector: {matchLabels: {}}\npolicyTypes: [Egress]\negress:\n- ports:\n  - port: serve-80-tcp",
                )],
                vec![tcp(80, t()), tcp(81, t().expect_peer(ns("x"), ANY, false))],
            )],
        ),
        upstream(
            "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            vec![
                step(
                    vec![policy(
                        "x",
                        "allow-ingress-port-80",
                        "podSelector: {matchLabels: {}}\npolicyTypes: [Ingress]\ningress:\n- ports:\n  - port: 80",
                    )],
                    vec![tcp(81, t().expect_peer(ANY, ns("x"), false))],
                ),
                step(
                    vec![policy(
                        "x",
                        "allow-ingress",
                        "podSelector: {matchLabels: {}}\npolicyTypes: [Ingress]\ningress:\n- {}",
                    )],
                    vec![tcp(81, t())],
                ),
            ],
        ),
        upstream(
            "should enforce multiple egress policies with egress allow-all policy taking precedence",
            vec![
                step(
                    vec![policy(
                        "x",
                        "allow-egress-port-80",
                        "podSelector: {matchLabels: {}}\npolicyTypes: [Egress]\negress:\n- ports:\n  - port: 80",
                    )],
                    vec![tcp(81, t().expect_peer(ns("x"), ANY, false))],
                ),
                step(
                    vec![policy(
                        "x",
                        "allow-egress",
                        "podSelector: {matchLabels: {}}\npolicyTypes: [Egress]\negress:\n- {}",
                    )],
                    vec![tcp(81, t())],
                ),
            ],
        ),
    ]
}

/// A data table, one entry per case in upstream's order: longer than a screen on purpose, so
/// it reads side by side with `network_policy.go`.
fn update_cases() -> Vec<Case> {
    let t = || Truth::all(true);
    vec![
        upstream(
            "should enforce updated policy",
            vec![
                step(
                    vec![policy(
                        "x",
                        "allow-all-mutate-to-deny-all",
                        "podSelector: {matchLabels: {}}\npolicyTypes: [Ingress]\ningress:\n- {}",
                    )],
                    vec![tcp(81, t())],
                ),
                step(
                    vec![policy(
                        "x",
                        "allow-all-mutate-to-deny-all",
                        "podSelector: {matchLabels: {}}\npolicyTypes: [Ingress]\ningress: []",
                    )],
                    vec![tcp(81, t().expect_peer(ANY, ns("x"), false))],
                ),
            ],
        ),
        upstream(
            "should allow ingress access from updated namespace",
            vec![
                step(
                    vec![policy(
                        "x",
                        "allow-client-a-via-ns-selector",
                        r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns2: updated}}"#,
                    )],
                    vec![tcp(80, t().expect_all_ingress(pod("x", "a"), false))],
                ),
                step(
                    vec![Change::NamespaceLabels(
                        "y".into(),
                        labels(&[("ns", "y"), ("ns2", "updated")]),
                    )],
                    vec![tcp(
                        80,
                        t().expect_all_ingress(pod("x", "a"), false).expect_peer(
                            ns("y"),
                            ANY,
                            true,
                        ),
                    )],
                ),
            ],
        ),
        upstream(
            "should allow ingress access from updated pod",
            vec![
                step(
                    vec![policy(
                        "x",
                        "allow-client-a-via-pod-selector",
                        r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b, pod2: updated}}"#,
                    )],
                    vec![tcp(80, t().expect_all_ingress(pod("x", "a"), false))],
                ),
                step(
                    vec![Change::PodLabels(
                        Key::new("x", "b"),
                        labels(&[("pod", "b"), ("pod2", "updated")]),
                    )],
                    vec![tcp(
                        80,
                        t().expect_all_ingress(pod("x", "a"), false).expect(
                            pod("x", "b"),
                            pod("x", "a"),
                            true,
                        ),
                    )],
                ),
            ],
        ),
        upstream(
            "should deny ingress access to updated pod",
            vec![
                step(
                    vec![policy(
                        "x",
                        "deny-ingress-via-label-selector",
                        "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]\ningress: []",
                    )],
                    vec![tcp(80, t())],
                ),
                step(
                    vec![Change::PodLabels(
                        Key::new("x", "a"),
                        labels(&[("pod", "a"), ("target", "isolated")]),
                    )],
                    vec![tcp(80, t().expect_all_ingress(pod("x", "a"), false))],
                ),
            ],
        ),
        upstream(
            "should stop enforcing policies after they are deleted",
            vec![
                step(
                    vec![policy(
                        "x",
                        "deny-all",
                        "podSelector: {}\npolicyTypes: [Ingress, Egress]\ningress: []\negress: []",
                    )],
                    vec![tcp(
                        80,
                        t().expect_peer(ns("x"), ANY, false)
                            .expect_peer(ANY, ns("x"), false),
                    )],
                ),
                step(vec![Change::DeleteAllPolicies], vec![tcp(80, t())]),
            ],
        ),
        upstream(
            "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            vec![
                step(
                    vec![policy(
                        "x",
                        "allow-egress-for-target",
                        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- {}",
                    )],
                    vec![tcp(80, t())],
                ),
                step(
                    vec![policy(
                        "x",
                        "deny-ingress-via-label-selector",
                        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress: []",
                    )],
                    vec![tcp(80, t().expect_all_ingress(pod("x", "a"), false))],
                ),
            ],
        ),
    ]
}

/// A data table, one entry per case in upstream's order: longer than a screen on purpose, so
/// it reads side by side with `network_policy.go`.
fn egress_cases() -> Vec<Case> {
    let t = || Truth::all(true);
    vec![
        upstream(
            "should deny egress from pods based on PodSelector",
            vec![step(
                vec![policy(
                    "x",
                    "deny-egress-pod-a",
                    "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: []",
                )],
                vec![tcp(80, t().expect_all_egress(pod("x", "a"), false))],
            )],
        ),
        upstream(
            "should deny egress from all pods in a namespace",
            vec![step(
                vec![policy(
                    "x",
                    "deny-egress-ns-x",
                    "podSelector: {}\npolicyTypes: [Egress]\negress: []",
                )],
                vec![tcp(80, t().expect_peer(ns("x"), ANY, false))],
            )],
        ),
        upstream(
            "should work with Ingress, Egress specified together",
            vec![step(
                vec![policy(
                    "x",
                    "allow-client-a-via-pod-selector",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress, Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
egress:
- ports:
  - port: 80"#,
                )],
                vec![
                    tcp(
                        80,
                        t().expect_all_ingress(pod("x", "a"), false).expect(
                            pod("x", "b"),
                            pod("x", "a"),
                            true,
                        ),
                    ),
                    tcp(
                        81,
                        t().expect_all_ingress(pod("x", "a"), false)
                            .expect_all_egress(pod("x", "a"), false)
                            .expect(pod("x", "b"), pod("x", "a"), true),
                    ),
                ],
            )],
        ),
        upstream(
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            vec![step(
                vec![
                    policy(
                        "x",
                        "allow-to-ns-y-pod-a",
                        r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}"#,
                    ),
                    from_xa_policy("allow-from-xa-on-ya-match-selector", "a"),
                    from_xa_policy("allow-from-xa-on-yb-match-selector", "b"),
                ],
                vec![tcp(
                    80,
                    t().expect_peer(pod("x", "a"), ANY, false)
                        .expect_peer(ANY, pod("y", "a"), false)
                        .expect_peer(pod("x", "a"), pod("y", "a"), true)
                        .expect_peer(ANY, pod("y", "b"), false),
                )],
            )],
        ),
        upstream(
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            vec![step(
                vec![policy(
                    "x",
                    "allow-to-ns-y-pod-a",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}"#,
                )],
                vec![tcp(
                    80,
                    t().expect_all_egress(pod("x", "a"), false).expect(
                        pod("x", "a"),
                        pod("y", "a"),
                        true,
                    ),
                )],
            )],
        ),
        upstream(
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            vec![step(
                vec![policy(
                    "x",
                    "allow-ns-y-match-selector-for-immutable-ns-label",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]"#,
                )],
                vec![tcp(80, t().expect_peer(pod("x", "a"), ns("y"), false))],
            )],
        ),
    ]
}

fn from_xa_policy(name: &str, target: &str) -> Change {
    policy(
        "y",
        name,
        &format!(
            r#"
podSelector: {{matchLabels: {{pod: {target}}}}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: x}}}}
    podSelector: {{matchLabels: {{pod: a}}}}"#
        ),
    )
}

/// Egress from x/a to an ipBlock: the /4 around x/b (upstream's `makeLargeCIDRForIP`) minus
/// x/b itself, or just x/b.
fn cidr_policy(block: &str) -> Change {
    policy(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        &format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock: {block}"
        ),
    )
}

fn ip_block_cases() -> Vec<Case> {
    let t = || Truth::all(true);
    let xb = pod_ip("x", "b");
    let large_except_xb = format!("{{cidr: 0.0.0.0/4, except: [{xb}/32]}}");
    vec![
        upstream(
            "should allow egress access to server in CIDR block",
            vec![step(
                vec![cidr_policy(&format!("{{cidr: {}/32}}", pod_ip("y", "b")))],
                vec![tcp(
                    80,
                    t().expect_all_egress(pod("x", "a"), false).expect(
                        pod("x", "a"),
                        pod("y", "b"),
                        true,
                    ),
                )],
            )],
        ),
        upstream(
            "should enforce except clause while egress access to server in CIDR block",
            vec![step(
                vec![cidr_policy(&large_except_xb)],
                vec![tcp(80, t().expect(pod("x", "a"), pod("x", "b"), false))],
            )],
        ),
        upstream(
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            vec![
                step(
                    vec![cidr_policy(&large_except_xb)],
                    vec![tcp(80, t().expect(pod("x", "a"), pod("x", "b"), false))],
                ),
                step(
                    vec![cidr_policy(&format!("{{cidr: {xb}/32}}"))],
                    vec![tcp(
                        80,
                        t().expect_all_egress(pod("x", "a"), false).expect(
                            pod("x", "a"),
                            pod("x", "b"),
                            true,
                        ),
                    )],
                ),
            ],
        ),
    ]
}

/// A data table, one entry per case in upstream's order: longer than a screen on purpose, so
/// it reads side by side with `network_policy.go`.
fn protocol_cases() -> Vec<Case> {
    let t = || Truth::all(true);
    let sctp = |port, expect| probe(Protocol::Sctp, port, expect);
    let udp = |port, expect| probe(Protocol::Udp, port, expect);
    let in_context = |context, name, steps| Case {
        context,
        name,
        origin: Origin::Upstream,
        steps,
    };
    let deny_all = || {
        policy(
            "x",
            "deny-all",
            "podSelector: {}\npolicyTypes: [Ingress]\ningress: []",
        )
    };
    let y_only = || {
        t().expect_peer(ns("x"), pod("x", "a"), false)
            .expect_peer(ns("z"), pod("x", "a"), false)
    };
    let ya_only = || {
        t().expect_all_ingress(pod("x", "a"), false)
            .expect(pod("y", "a"), pod("x", "a"), true)
    };
    vec![
        upstream(
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            vec![step(
                vec![policy(
                    "x",
                    "allow-ingress-by-proto",
                    "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress:\n- ports:\n  - protocol: TCP",
                )],
                vec![
                    tcp(80, t()),
                    udp(80, t().expect_peer(ANY, pod("x", "a"), false)),
                ],
            )],
        ),
        upstream(
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            vec![step(
                vec![
                    policy(
                        "x",
                        "deny-ingress",
                        "podSelector: {}\npolicyTypes: [Ingress]\ningress: []",
                    ),
                    policy(
                        "x",
                        "allow-only-sctp-ingress-on-port-81",
                        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress:\n- ports:\n  - {port: 81, protocol: SCTP}",
                    ),
                ],
                vec![tcp(81, t().expect_peer(ANY, ns("x"), false))],
            )],
        ),
        upstream(
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            vec![step(
                vec![policy(
                    "x",
                    "allow-only-sctp-ingress-on-port-80",
                    "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress:\n- ports:\n  - {port: 80, protocol: SCTP}",
                )],
                vec![tcp(81, t().expect_all_ingress(pod("x", "a"), false))],
            )],
        ),
        upstream(
            "should not allow access by TCP when a policy specifies only UDP",
            vec![step(
                vec![policy(
                    "x",
                    "allow-only-udp-ingress-on-port-81",
                    "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress:\n- ports:\n  - {port: 81, protocol: UDP}",
                )],
                vec![tcp(81, t().expect_all_ingress(pod("x", "a"), false))],
            )],
        ),
        in_context(
            UDP_CONTEXT,
            "should support a 'default-deny-ingress' policy",
            vec![step(
                vec![deny_all()],
                vec![udp(80, t().expect_peer(ANY, ns("x"), false))],
            )],
        ),
        in_context(
            UDP_CONTEXT,
            "should enforce policy based on Ports",
            vec![step(
                vec![port_81_policy("allow-ingress-on-port-81-ns-x", "UDP")],
                vec![udp(81, y_only())],
            )],
        ),
        in_context(
            UDP_CONTEXT,
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            vec![step(vec![ns_y_pod_a_policy()], vec![udp(80, ya_only())])],
        ),
        in_context(
            SCTP_CONTEXT,
            "should support a 'default-deny-ingress' policy",
            vec![step(
                vec![deny_all()],
                vec![sctp(80, t().expect_peer(ANY, ns("x"), false))],
            )],
        ),
        in_context(
            SCTP_CONTEXT,
            "should enforce policy based on Ports",
            vec![step(
                vec![port_81_policy("allow-ingress-on-port-81-ns-x", "SCTP")],
                vec![sctp(81, y_only())],
            )],
        ),
        in_context(
            SCTP_CONTEXT,
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            vec![step(vec![ns_y_pod_a_policy()], vec![sctp(80, ya_only())])],
        ),
    ]
}

fn podnet(name: &'static str, related: &'static str, steps: Vec<Step>) -> Case {
    Case {
        context: TCP_CONTEXT,
        name,
        origin: Origin::Podnet(related),
        steps,
    }
}

/// A data table, one entry per case in upstream's order: longer than a screen on purpose, so
/// it reads side by side with `network_policy.go`.
fn podnet_cases() -> Vec<Case> {
    let t = || Truth::all(true);
    let y_only = || {
        t().expect_peer(ns("x"), pod("x", "a"), false)
            .expect_peer(ns("z"), pod("x", "a"), false)
    };
    vec![
        podnet(
            "should enforce ingress policy on a port range (endPort)",
            "KEP-2079; the data-path test proposed in kubernetes PR #100291",
            vec![step(
                vec![policy(
                    "x",
                    "allow-80-81-from-y",
                    r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
  ports:
  - {protocol: TCP, port: 80, endPort: 81}
  - {protocol: UDP, port: 81, endPort: 81}"#,
                )],
                vec![
                    tcp(80, y_only()),
                    tcp(81, y_only()),
                    tcp(82, t().expect_all_ingress(pod("x", "a"), false)),
                    tcp(79, t().expect_all_ingress(pod("x", "a"), false)),
                    probe(
                        Protocol::Udp,
                        80,
                        t().expect_all_ingress(pod("x", "a"), false),
                    ),
                    probe(Protocol::Udp, 81, y_only()),
                ],
            )],
        ),
        podnet(
            "should enforce egress policy on a port range (endPort)",
            "KEP-2079",
            vec![step(
                vec![policy(
                    "x",
                    "allow-egress-79-80",
                    "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports:\n  - {port: 79, endPort: 80}",
                )],
                vec![tcp(80, t()), tcp(81, t().expect_peer(ns("x"), ANY, false))],
            )],
        ),
        podnet(
            "should enforce policy based on matchExpressions with Exists, DoesNotExist and NotIn",
            "the In/NotIn MatchExpressions cases of network_policy.go",
            vec![
                step(
                    vec![policy(
                        "x",
                        "allow-labelled",
                        r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions:
      - {key: ns, operator: Exists}
      - {key: team, operator: DoesNotExist}
    podSelector:
      matchExpressions: [{key: pod, operator: NotIn, values: [a]}]"#,
                    )],
                    vec![tcp(
                        80,
                        t().expect_all_ingress(pod("x", "a"), false)
                            .expect_peer(ns("x"), pod("x", "a"), true)
                            .expect_peer(ns("y"), pod("x", "a"), true)
                            .expect_peer(ns("z"), pod("x", "a"), true)
                            .expect(pod("y", "a"), pod("x", "a"), false)
                            .expect(pod("z", "a"), pod("x", "a"), false),
                    )],
                ),
                step(
                    vec![
                        Change::NamespaceLabels(
                            "z".into(),
                            labels(&[("ns", "z"), ("team", "blue")]),
                        ),
                        // NotIn matches pods without the key too.
                        Change::PodLabels(Key::new("y", "a"), labels(&[("app", "a")])),
                    ],
                    vec![tcp(
                        80,
                        t().expect_all_ingress(pod("x", "a"), false)
                            .expect_peer(ns("x"), pod("x", "a"), true)
                            .expect_peer(ns("y"), pod("x", "a"), true),
                    )],
                ),
            ],
        ),
        podnet(
            "should resolve an egress named port per destination pod",
            "should allow egress access on one named port",
            vec![step(
                vec![
                    policy(
                        "x",
                        "allow-egress-named",
                        "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports:\n  - port: serve-80-tcp",
                    ),
                    Change::Apply(moved_port_pod()),
                ],
                vec![
                    tcp(80, t().expect_peer(ns("x"), pod("y", "b"), false)),
                    tcp(
                        8080,
                        t().expect_peer(ns("x"), ANY, false).expect_peer(
                            ns("x"),
                            pod("y", "b"),
                            true,
                        ),
                    ),
                ],
            )],
        ),
    ]
}

/// y/b again, but serving `serve-80-tcp` on 8080.
fn moved_port_pod() -> String {
    let ip = pod_ip("y", "b");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: b, namespace: y, labels: {{pod: b}}}}
spec:
  nodeName: node-{}
  containers:
  - name: cont-80-tcp
    image: agnhost
    ports:
    - {{name: serve-80-tcp, containerPort: 8080, protocol: TCP}}
    - {{name: serve-81-tcp, containerPort: 81}}
status:
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
"#,
        node_number("y", "b")
    )
}

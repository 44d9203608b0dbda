//! The policy model: namespaces, pods, nodes and NetworkPolicies as plain values, already
//! validated and defaulted (see `convert`), plus `Cluster`, which holds them with the lookups
//! the evaluator and the compiler need (pods by namespace, by address; nodes by address).
//!
//! Defaults are applied before values get here: a policy's directions are those of its
//! effective `policyTypes`, a port's protocol is set, a namespace always carries
//! `kubernetes.io/metadata.name`. Absent and empty lists mean the same thing in the API (Go
//! decodes both to a zero-length slice), so rules hold plain vectors; where absent and empty
//! *selectors* differ (a peer's `podSelector`/`namespaceSelector`) the difference is in the
//! shape of `Peer`, not in `LabelSelector`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// The label the API server puts on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespaced object's identity (pods and policies).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The layer-4 protocols a NetworkPolicy port can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ();

    /// Exactly `TCP`, `UDP` or `SCTP`, as the API server accepts them (case matters).
    fn from_str(s: &str) -> Result<Protocol, ()> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(()),
        }
    }
}

/// A namespace and its labels (always including `kubernetes.io/metadata.name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with `labels` plus the automatic name label (which wins over a given one,
    /// as the API server overwrites it).
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Namespace {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        Namespace { name, labels }
    }
}

/// A node and the addresses traffic from it to its pods can carry (its InternalIP/ExternalIP
/// addresses, the bridge gateway, ...). Traffic between a pod and its own node is always
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// A container port with a name, what a named policy port resolves against.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIPs` (one per family); empty while the pod has none.
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName`, once scheduled.
    pub node: Option<String>,
    /// Named container ports (unnamed ones cannot be referred to by policy).
    pub ports: Vec<NamedPort>,
    /// `spec.hostNetwork`: the pod shares its node's addresses and network namespace, so
    /// policy neither isolates it nor selects it; its traffic is its node's.
    pub host_network: bool,
}

impl Pod {
    pub fn key(&self) -> Key {
        Key::new(&self.namespace, &self.name)
    }

    /// Container port numbers that `name` resolves to for `protocol` (empty when none).
    pub fn resolve_port(&self, name: &str, protocol: Protocol) -> impl Iterator<Item = u16> + '_ {
        let name = name.to_string();
        self.ports
            .iter()
            .filter(move |p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl FromStr for Operator {
    type Err = ();

    fn from_str(s: &str) -> Result<Operator, ()> {
        match s {
            "In" => Ok(Operator::In),
            "NotIn" => Ok(Operator::NotIn),
            "Exists" => Ok(Operator::Exists),
            "DoesNotExist" => Ok(Operator::DoesNotExist),
            _ => Err(()),
        }
    }
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Non-empty for In/NotIn, empty for Exists/DoesNotExist (validated by `convert`).
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // NotIn also matches objects without the key, as in Kubernetes.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A present label selector: every `matchLabels` pair and every expression must hold. The
/// empty selector matches everything. An *absent* selector ("nil", which in Kubernetes
/// selects nothing) has no value of this type: where the API distinguishes the two, `Peer`
/// encodes which selectors were given, and a policy's `spec.podSelector`, a non-pointer Go
/// struct, is empty when omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    /// Kept sorted and free of duplicates (see `new`), so equal selectors compare equal.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// A selector with its expressions in canonical order.
    pub fn new(match_labels: Labels, mut match_expressions: Vec<Requirement>) -> LabelSelector {
        match_expressions.sort();
        match_expressions.dedup();
        LabelSelector {
            match_labels,
            match_expressions,
        }
    }

    /// `{}`: matches every object.
    pub fn everything() -> LabelSelector {
        LabelSelector::default()
    }

    /// `matchLabels` only.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
        let labels = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LabelSelector::new(labels, Vec::new())
    }

    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    /// The label-query form (`a=b,c in (d),!e`); `{}` for the empty selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_everything() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            let values = r.values.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r.operator {
                Operator::In => format!("{} in ({values})", r.key),
                Operator::NotIn => format!("{} notin ({values})", r.key),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// `ipBlock`: a CIDR minus `except` CIDRs (each a strict subset of it, validated).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }

    /// The exact set of CIDRs covering `cidr` minus the excepts.
    pub fn to_cidrs(&self) -> Vec<IpNet> {
        super::cidr::subtract(self.cidr, &self.except)
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        for e in &self.except {
            write!(f, " except {e}")?;
        }
        Ok(())
    }
}

/// One entry of a rule's `from`/`to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// `podSelector` alone: matching pods in the policy's own namespace.
    Pods(LabelSelector),
    /// `namespaceSelector` alone: every pod in the matching namespaces.
    Namespaces(LabelSelector),
    /// Both in one peer: matching pods in matching namespaces (AND).
    PodsInNamespaces {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
    /// `ipBlock`: addresses, pods' included.
    IpBlock(IpBlock),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods(s) => write!(f, "pods {s}"),
            Peer::Namespaces(s) => write!(f, "namespaces {s}"),
            Peer::PodsInNamespaces { namespaces, pods } => {
                write!(f, "pods {pods} in namespaces {namespaces}")
            }
            Peer::IpBlock(b) => write!(f, "ipBlock {b}"),
        }
    }
}

/// Which ports of a protocol a `ports` entry allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    All,
    /// `port` (and `endPort`): an inclusive range; a single port has `first == last`.
    Range { first: u16, last: u16 },
    /// A named port, resolved against the destination pod's container ports.
    Named(String),
}

/// One `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

impl PortSpec {
    /// Whether traffic on `protocol`/`port` to `dst` (the destination pod, if the destination
    /// is a pod) matches. A named port never matches a destination that is not a pod.
    pub fn matches(&self, protocol: Protocol, port: u16, dst: Option<&Pod>) -> bool {
        if protocol != self.protocol {
            return false;
        }
        match &self.port {
            PortMatch::All => true,
            PortMatch::Range { first, last } => (*first..=*last).contains(&port),
            PortMatch::Named(name) => {
                dst.is_some_and(|pod| pod.resolve_port(name, protocol).any(|p| p == port))
            }
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::All => write!(f, "{}", self.protocol),
            PortMatch::Range { first, last } if first == last => {
                write!(f, "{}/{first}", self.protocol)
            }
            PortMatch::Range { first, last } => write!(f, "{}/{first}-{last}", self.protocol),
            PortMatch::Named(n) => write!(f, "{}/{n}", self.protocol),
        }
    }
}

/// One ingress or egress rule: traffic matches when it matches any peer (or `peers` is empty)
/// and any port entry (or `ports` is empty, which also admits protocols other than TCP, UDP
/// and SCTP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

/// Traffic direction, seen from the pod a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A NetworkPolicy after `policyTypes` defaulting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// Which pods of `namespace` the policy applies to.
    pub pod_selector: LabelSelector,
    /// `Some` when the effective policyTypes include Ingress: the selected pods are isolated
    /// for ingress and these rules (possibly none) are what the policy allows.
    pub ingress: Option<Vec<Rule>>,
    /// Likewise for Egress.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn key(&self) -> Key {
        Key::new(&self.namespace, &self.name)
    }

    /// The rules for `direction`, `None` when the policy does not isolate that direction.
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether the policy applies to `pod` (host-network pods are never selected).
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace
            && !pod.host_network
            && self.pod_selector.matches(&pod.labels)
    }
}

/// Everything policy decisions depend on, with lookups.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    namespaces: BTreeMap<String, Namespace>,
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<Key, Pod>,
    policies: BTreeMap<Key, Policy>,
    pod_ips: HashMap<IpAddr, Key>,
    node_ips: HashMap<IpAddr, String>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::default()
    }

    pub fn upsert_namespace(&mut self, ns: Namespace) -> Option<Namespace> {
        self.namespaces.insert(ns.name.clone(), ns)
    }

    /// Replaces a namespace's labels (the automatic name label stays).
    pub fn set_namespace_labels(&mut self, name: &str, labels: Labels) {
        self.upsert_namespace(Namespace::new(name, labels));
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// A namespace's labels; one not (yet) known has only its automatic name label, so pods
    /// loaded before their namespace still match `kubernetes.io/metadata.name` selectors.
    pub fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => Cow::Borrowed(&ns.labels),
            None => Cow::Owned(Namespace::new(name, Labels::new()).labels),
        }
    }

    pub fn upsert_node(&mut self, node: Node) -> Option<Node> {
        let old = self.remove_node(&node.name);
        for ip in &node.ips {
            self.node_ips.insert(*ip, node.name.clone());
        }
        self.nodes.insert(node.name.clone(), node);
        old
    }

    pub fn remove_node(&mut self, name: &str) -> Option<Node> {
        let old = self.nodes.remove(name)?;
        for ip in &old.ips {
            if self.node_ips.get(ip).is_some_and(|n| n == name) {
                self.node_ips.remove(ip);
            }
        }
        Some(old)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The node an address belongs to.
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.node_ips.get(&ip).and_then(|n| self.nodes.get(n))
    }

    pub fn upsert_pod(&mut self, pod: Pod) -> Option<Pod> {
        let key = pod.key();
        let old = self.remove_pod(&key);
        if !pod.host_network {
            for ip in &pod.ips {
                self.pod_ips.insert(*ip, key.clone());
            }
        }
        self.pods.insert(key, pod);
        old
    }

    pub fn remove_pod(&mut self, key: &Key) -> Option<Pod> {
        let old = self.pods.remove(key)?;
        for ip in &old.ips {
            if self.pod_ips.get(ip) == Some(key) {
                self.pod_ips.remove(ip);
            }
        }
        Some(old)
    }

    /// Replaces a pod's labels; false when there is no such pod.
    pub fn set_pod_labels(&mut self, key: &Key, labels: Labels) -> bool {
        match self.pods.get_mut(key) {
            Some(pod) => {
                pod.labels = labels;
                true
            }
            None => false,
        }
    }

    pub fn pod(&self, key: &Key) -> Option<&Pod> {
        self.pods.get(key)
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// The pods of one namespace.
    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        let ns = namespace.to_string();
        self.pods
            .range(Key::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == ns)
            .map(|(_, p)| p)
    }

    /// The (non-host-network) pod that has an address.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pod_ips.get(&ip).and_then(|k| self.pods.get(k))
    }

    pub fn upsert_policy(&mut self, policy: Policy) -> Option<Policy> {
        self.policies.insert(policy.key(), policy)
    }

    pub fn remove_policy(&mut self, key: &Key) -> Option<Policy> {
        self.policies.remove(key)
    }

    pub fn policy(&self, key: &Key) -> Option<&Policy> {
        self.policies.get(key)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// The policies of one namespace (the only ones that can select its pods).
    pub fn policies_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Policy> + 'a {
        let ns = namespace.to_string();
        self.policies
            .range(Key::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == ns)
            .map(|(_, p)| p)
    }

    /// Whether `pod` matches `peer` of a policy in `policy_namespace` by identity (selectors
    /// only; `ipBlock` peers match addresses, see `eval`).
    pub fn peer_selects_pod(&self, policy_namespace: &str, peer: &Peer, pod: &Pod) -> bool {
        if pod.host_network {
            return false;
        }
        match peer {
            Peer::Pods(sel) => pod.namespace == policy_namespace && sel.matches(&pod.labels),
            Peer::Namespaces(ns) => ns.matches(&self.namespace_labels(&pod.namespace)),
            Peer::PodsInNamespaces { namespaces, pods } => {
                pods.matches(&pod.labels)
                    && namespaces.matches(&self.namespace_labels(&pod.namespace))
            }
            Peer::IpBlock(_) => false,
        }
    }
}

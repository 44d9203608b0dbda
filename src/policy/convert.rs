//! From Kubernetes API objects (k8s-openapi's `Namespace`, `Pod`, `Node`, `NetworkPolicy`) to
//! the model, validating as the API server does (`pkg/apis/networking/validation` and the
//! label-selector rules of apimachinery) and applying its defaults (`policyTypes`, protocol
//! TCP). Objects from a live API server are already valid; objects from a manifest directory
//! are not, and a bad one is refused whole with an error naming the object, the field path and
//! the value, so an operator can find it.
//!
//! Deliberate leniencies, each matching what `kubectl apply` + the API server end up storing:
//! a missing `metadata.namespace` means `default`; a missing `spec` or `spec.podSelector` is the
//! empty one (Go's zero value); a CIDR with host bits set (`10.0.0.1/8`) is accepted as its
//! network, as the API server's legacy CIDR check does.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::{
    IpBlock, LabelSelector, Labels, NamedPort, Namespace, Node, Operator, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Requirement, Rule,
};

/// The namespace `kubectl apply` uses for an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An object the API server would refuse: which object, which field, which value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field} = {value}: {reason}")]
pub struct ConvertError {
    /// `networkpolicy x/deny-all`, `pod x/a`, `namespace x`, `node n1`.
    pub object: String,
    /// The field path as the API server writes it (`spec.ingress[0].ports[1].endPort`).
    pub field: String,
    /// The offending value as written (`(missing)` for an absent required field).
    pub value: String,
    pub reason: Reason,
}

/// Why a value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("required")]
    Required,
    #[error("not a valid name: {0}")]
    InvalidName(&'static str),
    #[error("not a valid label key: {0}")]
    InvalidLabelKey(&'static str),
    #[error("not a valid label value: {0}")]
    InvalidLabelValue(&'static str),
    #[error("unknown operator (In, NotIn, Exists, DoesNotExist)")]
    UnknownOperator,
    #[error("values must be given for In and NotIn")]
    ValuesRequired,
    #[error("values may not be given for Exists and DoesNotExist")]
    ValuesForbidden,
    #[error("unknown protocol (TCP, UDP, SCTP)")]
    UnknownProtocol,
    #[error("not a port number (1-65535)")]
    InvalidPortNumber,
    #[error("not a valid port name (IANA service name: 1-15 of a-z, 0-9, '-', with a letter)")]
    InvalidPortName,
    #[error("must be greater than or equal to port ({port})")]
    EndPortBelowPort { port: u16 },
    #[error("may not be given with a named port")]
    EndPortWithNamedPort,
    #[error("may not be given without port")]
    EndPortWithoutPort,
    #[error("a peer needs podSelector, namespaceSelector or ipBlock")]
    EmptyPeer,
    #[error("ipBlock may not be combined with podSelector or namespaceSelector")]
    IpBlockWithSelector,
    #[error("not a CIDR")]
    InvalidCidr,
    #[error("must be a strict subset of cidr ({cidr})")]
    ExceptOutsideCidr { cidr: String },
    #[error("unknown policy type (Ingress, Egress)")]
    UnknownPolicyType,
    #[error("at most two policy types")]
    TooManyPolicyTypes,
    #[error("not an IP address")]
    InvalidIp,
}

/// Builds errors for one object.
struct Ctx {
    object: String,
}

impl Ctx {
    fn new(kind: &str, namespace: Option<&str>, name: Option<&str>) -> Ctx {
        let name = name.filter(|n| !n.is_empty()).unwrap_or("(no name)");
        let object = match namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        };
        Ctx { object }
    }

    fn err(
        &self,
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: Reason,
    ) -> ConvertError {
        ConvertError {
            object: self.object.clone(),
            field: field.into(),
            value: value.to_string(),
            reason,
        }
    }

    fn missing(&self, field: impl Into<String>) -> ConvertError {
        self.err(field, "(missing)", Reason::Required)
    }
}

type Result<T> = std::result::Result<T, ConvertError>;

/// A namespace, with the automatic `kubernetes.io/metadata.name` label.
pub fn namespace(ns: &core::Namespace) -> Result<Namespace> {
    let ctx = Ctx::new("namespace", None, ns.metadata.name.as_deref());
    let name = required_name(&ctx, ns.metadata.name.as_deref(), dns_label)?;
    let labels = labels(&ctx, "metadata.labels", ns.metadata.labels.as_ref())?;
    Ok(Namespace::new(name, labels))
}

/// A node and its InternalIP/ExternalIP addresses (hostname entries are not addresses).
pub fn node(node: &core::Node) -> Result<Node> {
    let ctx = Ctx::new("node", None, node.metadata.name.as_deref());
    let name = required_name(&ctx, node.metadata.name.as_deref(), dns_subdomain)?;
    let mut ips = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
            let field = format!("status.addresses[{i}].address");
            ips.push(ip(&ctx, &field, &a.address)?);
        }
    }
    Ok(Node { name, ips })
}

/// A pod: labels, `status.podIPs` (else `status.podIP`), node, named container ports.
pub fn pod(pod: &core::Pod) -> Result<Pod> {
    let (ctx, namespace) = namespaced("pod", &pod.metadata);
    let name = required_name(&ctx, pod.metadata.name.as_deref(), dns_subdomain)?;
    let labels = labels(&ctx, "metadata.labels", pod.metadata.labels.as_ref())?;
    let spec = pod.spec.as_ref();
    Ok(Pod {
        namespace,
        name,
        labels,
        ips: pod_ips(&ctx, pod.status.as_ref())?,
        node: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        ports: container_ports(&ctx, spec)?,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    })
}

fn pod_ips(ctx: &Ctx, status: Option<&core::PodStatus>) -> Result<Vec<IpAddr>> {
    let Some(status) = status else {
        return Ok(Vec::new());
    };
    match status.pod_ips.as_deref() {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, p)| ip(ctx, &format!("status.podIPs[{i}].ip"), &p.ip))
            .collect(),
        _ => match status.pod_ip.as_deref() {
            Some(s) if !s.is_empty() => Ok(vec![ip(ctx, "status.podIP", s)?]),
            _ => Ok(Vec::new()),
        },
    }
}

fn container_ports(ctx: &Ctx, spec: Option<&core::PodSpec>) -> Result<Vec<NamedPort>> {
    let mut out = Vec::new();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    for (c, container) in containers.iter().enumerate() {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let path = format!("spec.containers[{c}].ports[{p}]");
            let number = port_number(ctx, &format!("{path}.containerPort"), port.container_port)?;
            let protocol = protocol(ctx, &format!("{path}.protocol"), port.protocol.as_deref())?;
            let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            if !is_port_name(name) {
                return Err(ctx.err(format!("{path}.name"), name, Reason::InvalidPortName));
            }
            out.push(NamedPort {
                name: name.to_string(),
                protocol,
                port: number,
            });
        }
    }
    Ok(out)
}

/// A NetworkPolicy with its effective directions.
pub fn network_policy(np: &net::NetworkPolicy) -> Result<Policy> {
    let (ctx, namespace) = namespaced("networkpolicy", &np.metadata);
    let name = required_name(&ctx, np.metadata.name.as_deref(), dns_subdomain)?;
    let default_spec = net::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(&ctx, "spec.podSelector", s)?,
        None => LabelSelector::everything(),
    };
    let (isolate_ingress, isolate_egress) = policy_types(&ctx, spec)?;
    let ingress = spec.ingress.iter().flatten().enumerate().map(|(i, r)| {
        let path = format!("spec.ingress[{i}]");
        rule(&ctx, &path, "from", r.from.as_deref(), r.ports.as_deref())
    });
    let ingress = ingress.collect::<Result<Vec<Rule>>>()?;
    let egress = spec.egress.iter().flatten().enumerate().map(|(i, r)| {
        let path = format!("spec.egress[{i}]");
        rule(&ctx, &path, "to", r.to.as_deref(), r.ports.as_deref())
    });
    let egress = egress.collect::<Result<Vec<Rule>>>()?;
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        ingress: isolate_ingress.then_some(ingress),
        egress: isolate_egress.then_some(egress),
    })
}

/// Effective (ingress, egress) isolation: the listed `policyTypes`, or when none are listed
/// Ingress always and Egress when there are egress rules (the API server's defaulting).
fn policy_types(ctx: &Ctx, spec: &net::NetworkPolicySpec) -> Result<(bool, bool)> {
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.is_empty() {
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        return Ok((true, has_egress));
    }
    if types.len() > 2 {
        let value = format!("{types:?}");
        return Err(ctx.err("spec.policyTypes", value, Reason::TooManyPolicyTypes));
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            _ => {
                let field = format!("spec.policyTypes[{i}]");
                return Err(ctx.err(field, t, Reason::UnknownPolicyType));
            }
        }
    }
    Ok((ingress, egress))
}

fn rule(
    ctx: &Ctx,
    path: &str,
    peers_field: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
) -> Result<Rule> {
    let ports = ports.unwrap_or_default().iter().enumerate();
    let ports = ports.map(|(i, p)| port_spec(ctx, &format!("{path}.ports[{i}]"), p));
    let peers = peers.unwrap_or_default().iter().enumerate();
    let peers = peers.map(|(i, p)| peer(ctx, &format!("{path}.{peers_field}[{i}]"), p));
    Ok(Rule {
        ports: ports.collect::<Result<_>>()?,
        peers: peers.collect::<Result<_>>()?,
    })
}

fn peer(ctx: &Ctx, path: &str, p: &net::NetworkPolicyPeer) -> Result<Peer> {
    let pods = p.pod_selector.as_ref();
    let namespaces = p.namespace_selector.as_ref();
    if let Some(block) = &p.ip_block {
        if pods.is_some() || namespaces.is_some() {
            return Err(ctx.err(path, "ipBlock with a selector", Reason::IpBlockWithSelector));
        }
        return Ok(Peer::IpBlock(ip_block(
            ctx,
            &format!("{path}.ipBlock"),
            block,
        )?));
    }
    let pods = pods
        .map(|s| selector(ctx, &format!("{path}.podSelector"), s))
        .transpose()?;
    let namespaces = namespaces
        .map(|s| selector(ctx, &format!("{path}.namespaceSelector"), s))
        .transpose()?;
    match (pods, namespaces) {
        (Some(pods), Some(namespaces)) => Ok(Peer::PodsInNamespaces { namespaces, pods }),
        (Some(pods), None) => Ok(Peer::Pods(pods)),
        (None, Some(namespaces)) => Ok(Peer::Namespaces(namespaces)),
        (None, None) => Err(ctx.err(path, "{}", Reason::EmptyPeer)),
    }
}

fn ip_block(ctx: &Ctx, path: &str, b: &net::IPBlock) -> Result<IpBlock> {
    let field = format!("{path}.cidr");
    if b.cidr.is_empty() {
        return Err(ctx.missing(field));
    }
    let cidr = parse_cidr(&b.cidr).ok_or_else(|| ctx.err(&field, &b.cidr, Reason::InvalidCidr))?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let field = format!("{path}.except[{i}]");
        let net = parse_cidr(e).ok_or_else(|| ctx.err(&field, e, Reason::InvalidCidr))?;
        // Strict subset: same family, inside, and a longer prefix.
        if !cidr.contains(&net.network()) || net.prefix_len() <= cidr.prefix_len() {
            let reason = Reason::ExceptOutsideCidr {
                cidr: b.cidr.clone(),
            };
            return Err(ctx.err(field, e, reason));
        }
        except.push(net);
    }
    Ok(IpBlock { cidr, except })
}

/// A CIDR, host bits cleared. Addresses must be in canonical dotted or colon form (no
/// leading zeros), which is what Rust's parser accepts.
fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

fn port_spec(ctx: &Ctx, path: &str, p: &net::NetworkPolicyPort) -> Result<PortSpec> {
    let protocol = protocol(ctx, &format!("{path}.protocol"), p.protocol.as_deref())?;
    let end_field = format!("{path}.endPort");
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::All,
        (None, Some(end)) => return Err(ctx.err(end_field, end, Reason::EndPortWithoutPort)),
        (Some(IntOrString::String(name)), end) => {
            if let Some(end) = end {
                return Err(ctx.err(end_field, end, Reason::EndPortWithNamedPort));
            }
            if !is_port_name(name) {
                return Err(ctx.err(format!("{path}.port"), name, Reason::InvalidPortName));
            }
            PortMatch::Named(name.clone())
        }
        (Some(IntOrString::Int(n)), end) => {
            let first = port_number(ctx, &format!("{path}.port"), *n)?;
            let last = match end {
                None => first,
                Some(e) => port_number(ctx, &end_field, e)?,
            };
            if last < first {
                return Err(ctx.err(end_field, last, Reason::EndPortBelowPort { port: first }));
            }
            PortMatch::Range { first, last }
        }
    };
    Ok(PortSpec { protocol, port })
}

fn protocol(ctx: &Ctx, field: &str, p: Option<&str>) -> Result<Protocol> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => s
            .parse()
            .map_err(|()| ctx.err(field, s, Reason::UnknownProtocol)),
    }
}

fn port_number(ctx: &Ctx, field: &str, n: i32) -> Result<u16> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ctx.err(field, n, Reason::InvalidPortNumber))
}

fn ip(ctx: &Ctx, field: &str, s: &str) -> Result<IpAddr> {
    s.parse().map_err(|_| ctx.err(field, s, Reason::InvalidIp))
}

fn selector(ctx: &Ctx, path: &str, s: &meta::LabelSelector) -> Result<LabelSelector> {
    let match_labels = labels(ctx, &format!("{path}.matchLabels"), s.match_labels.as_ref())?;
    let mut exprs = Vec::new();
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        exprs.push(requirement(
            ctx,
            &format!("{path}.matchExpressions[{i}]"),
            r,
        )?);
    }
    Ok(LabelSelector::new(match_labels, exprs))
}

fn requirement(ctx: &Ctx, path: &str, r: &meta::LabelSelectorRequirement) -> Result<Requirement> {
    label_key(ctx, &format!("{path}.key"), &r.key)?;
    let operator: Operator = r.operator.parse().map_err(|()| {
        ctx.err(
            format!("{path}.operator"),
            &r.operator,
            Reason::UnknownOperator,
        )
    })?;
    let values = r.values.clone().unwrap_or_default();
    let field = format!("{path}.values");
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => {
            return Err(ctx.err(field, "[]", Reason::ValuesRequired));
        }
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            return Err(ctx.err(field, format!("{values:?}"), Reason::ValuesForbidden));
        }
        _ => {}
    }
    for (i, v) in values.iter().enumerate() {
        label_value(ctx, &format!("{field}[{i}]"), v)?;
    }
    Ok(Requirement {
        key: r.key.clone(),
        operator,
        values: values.into_iter().collect::<BTreeSet<_>>(),
    })
}

fn labels(ctx: &Ctx, path: &str, labels: Option<&Labels>) -> Result<Labels> {
    let Some(labels) = labels else {
        return Ok(Labels::new());
    };
    for (k, v) in labels {
        label_key(ctx, path, k)?;
        label_value(ctx, &format!("{path}.{k}"), v)?;
    }
    Ok(labels.clone())
}

fn namespaced(kind: &str, m: &meta::ObjectMeta) -> (Ctx, String) {
    let namespace = m
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    (
        Ctx::new(kind, Some(&namespace), m.name.as_deref()),
        namespace,
    )
}

fn required_name(
    ctx: &Ctx,
    name: Option<&str>,
    check: fn(&str) -> std::result::Result<(), &'static str>,
) -> Result<String> {
    match name {
        None | Some("") => Err(ctx.missing("metadata.name")),
        Some(n) => check(n)
            .map(|()| n.to_string())
            .map_err(|why| ctx.err("metadata.name", n, Reason::InvalidName(why))),
    }
}

fn label_key(ctx: &Ctx, field: &str, key: &str) -> Result<()> {
    qualified_name(key).map_err(|why| ctx.err(field, key, Reason::InvalidLabelKey(why)))
}

fn label_value(ctx: &Ctx, field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    name_part(value).map_err(|why| ctx.err(field, value, Reason::InvalidLabelValue(why)))
}

/// `[prefix/]name`: a DNS-subdomain prefix and a name part (apimachinery's qualified name).
fn qualified_name(s: &str) -> std::result::Result<(), &'static str> {
    match s.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err("empty prefix");
            }
            dns_subdomain(prefix).map_err(|_| "prefix must be a DNS subdomain")?;
            name_part(name)
        }
        None => name_part(s),
    }
}

/// At most 63 of `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
fn name_part(s: &str) -> std::result::Result<(), &'static str> {
    if s.is_empty() || s.len() > 63 {
        return Err("1-63 characters");
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !s.chars().all(ok) {
        return Err("only letters, digits, '-', '_' and '.'");
    }
    if !starts_and_ends_alphanumeric(s) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// RFC 1123 label: at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
fn dns_label(s: &str) -> std::result::Result<(), &'static str> {
    if s.is_empty() || s.len() > 63 {
        return Err("1-63 characters");
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !s.chars().all(ok) || !starts_and_ends_alphanumeric(s) {
        return Err("lower-case letters, digits and '-', alphanumeric at both ends");
    }
    Ok(())
}

/// RFC 1123 subdomain: at most 253 characters of dot-separated labels.
fn dns_subdomain(s: &str) -> std::result::Result<(), &'static str> {
    if s.is_empty() || s.len() > 253 {
        return Err("1-253 characters");
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.');
    if !s.chars().all(ok) || !starts_and_ends_alphanumeric(s) {
        return Err("lower-case letters, digits, '-' and '.', alphanumeric at both ends");
    }
    Ok(())
}

fn starts_and_ends_alphanumeric(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    alnum(s.chars().next()) && alnum(s.chars().last())
}

/// IANA service name: 1-15 of `[a-z0-9-]`, with a letter, no leading, trailing or double '-'.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests;

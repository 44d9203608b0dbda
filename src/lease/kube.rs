//! The lease store in the Kubernetes API, as flanneld's `--kube-subnet-mgr` keeps it.
//!
//! A node's subnet is its Node's `spec.podCIDRs` (or `spec.podCIDR`), assigned by
//! kube-controller-manager; nothing is allocated here. What a lease in etcd carries in its value
//! is published as annotations on the Node (`<prefix>/backend-type`, `backend-data`,
//! `backend-v6-data`, `public-ip`, `public-ipv6`, `kube-subnet-manager: "true"`), written through
//! the `nodes/status` subresource with flanneld's rules and values, byte for byte, so flanneld
//! and podnetd read each other's nodes. Peers are the other Nodes with a podCIDR and
//! `kube-subnet-manager: "true"`; a node whose annotations do not make a lease is skipped and
//! reported (`rejected`). A deleted Node is a deleted lease.
//!
//! Differences from flanneld: a node without a podCIDR waits (and says why) instead of
//! crash-looping; annotations are patched only when a value really changes; a lost watch is
//! resumed, and after `410 Gone` the nodes are listed again and diffed, so nothing is missed and
//! nothing reprogrammed without need.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::manager::{Renewal, SubnetManager, WatchUpdate};
use super::refusals::Refusals;
use super::{AcquireRequest, Keepalive, Lease, LeaseAttrs, LeaseError, SubnetKey};
use crate::config::NetworkConfig;
use crate::kubeapi::KubeError;
use crate::kubeapi::watch::{self, Target, Update};

/// flanneld's default annotation prefix.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// The condition flanneld sets once the node's network is up.
const CONDITION_REASON: &str = "FlannelIsUp";
const CONDITION_MESSAGE: &str = "Flannel is running on this node";

/// flannel's annotation names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    pub kube_subnet_manager: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub backend_type: String,
    pub public_ip: String,
    pub public_ipv6: String,
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
    pub node_public_ip: String,
    pub node_public_ipv6: String,
}

impl Annotations {
    /// flanneld's rules for `--kube-annotation-prefix`: at most one `/`; without one, `/` is
    /// appended; after a non-trailing one, `-`; the result must look like `fqdn/[name-]`.
    pub fn new(prefix: &str) -> Result<Annotations, String> {
        let mut p = prefix.to_string();
        match p.matches('/').count() {
            0 => p.push('/'),
            1 => {}
            _ => {
                return Err(format!(
                    "--kube-annotation-prefix {prefix:?}: at most one '/' is allowed"
                ));
            }
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        let re = regex::Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
            .expect("constant regex");
        if !re.is_match(&p) {
            return Err(format!(
                "--kube-annotation-prefix {prefix:?}: must be a domain, optionally followed by /name (e.g. flannel.alpha.coreos.com)"
            ));
        }
        let name = |n: &str| format!("{p}{n}");
        Ok(Annotations {
            kube_subnet_manager: name("kube-subnet-manager"),
            backend_data: name("backend-data"),
            backend_v6_data: name("backend-v6-data"),
            backend_type: name("backend-type"),
            public_ip: name("public-ip"),
            public_ipv6: name("public-ipv6"),
            public_ip_overwrite: name("public-ip-overwrite"),
            public_ipv6_overwrite: name("public-ipv6-overwrite"),
            node_public_ip: name("node-public-ip"),
            node_public_ipv6: name("node-public-ipv6"),
        })
    }
}

/// The node's pod subnets: `spec.podCIDRs` (one per family), else `spec.podCIDR`.
pub fn pod_cidrs(node: &Node) -> Result<Option<SubnetKey>, String> {
    let spec = node.spec.as_ref();
    let mut list: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if list.is_empty()
        && let Some(c) = spec
            .and_then(|s| s.pod_cidr.clone())
            .filter(|c| !c.is_empty())
    {
        list.push(c);
    }
    if list.is_empty() {
        return Ok(None);
    }
    if list.len() > 2 {
        return Err(format!("spec.podCIDRs {list:?}: at most one per family"));
    }
    let mut key = SubnetKey { v4: None, v6: None };
    for c in &list {
        match c.parse::<IpNet>() {
            Ok(IpNet::V4(n)) if key.v4.is_none() => key.v4 = Some(n.trunc()),
            Ok(IpNet::V6(n)) if key.v6.is_none() => key.v6 = Some(n.trunc()),
            Ok(_) => return Err(format!("spec.podCIDRs {list:?}: two of one family")),
            Err(_) => return Err(format!("spec.podCIDRs: {c:?} is not a CIDR")),
        }
    }
    Ok(Some(key))
}

fn annotation<'a>(node: &'a Node, name: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(name))
        .map(String::as_str)
}

fn raw_json(field: &str, text: Option<&str>) -> Result<Option<Box<RawValue>>, String> {
    match text {
        None | Some("") | Some("null") => Ok(None),
        Some(t) => RawValue::from_string(t.to_string())
            .map(Some)
            .map_err(|_| format!("{field} {t:?} is not JSON")),
    }
}

/// The lease a Node describes: `Ok(None)` when the node is not (yet) managed by a flannel
/// subnet manager or has no podCIDR; an error naming the annotation when it is managed but its
/// values do not make a lease.
pub fn node_lease(
    node: &Node,
    ann: &Annotations,
    v4: bool,
    v6: bool,
) -> Result<Option<Lease>, String> {
    if annotation(node, &ann.kube_subnet_manager) != Some("true") {
        return Ok(None);
    }
    let Some(mut key) = pod_cidrs(node)? else {
        return Ok(None);
    };
    if !v4 {
        key.v4 = None;
    }
    if !v6 {
        key.v6 = None;
    }
    if key.v4.is_none() && key.v6.is_none() {
        return Err("spec.podCIDRs: no subnet of the network's address families".into());
    }
    let public_ip = match annotation(node, &ann.public_ip) {
        Some(s) if v4 => s
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{} {s:?} is not an IPv4 address", ann.public_ip))?,
        None if v4 => return Err(format!("{} is missing", ann.public_ip)),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let public_ipv6 = match annotation(node, &ann.public_ipv6) {
        Some(s) if v6 => Some(
            s.parse::<Ipv6Addr>()
                .map_err(|_| format!("{} {s:?} is not an IPv6 address", ann.public_ipv6))?,
        ),
        None if v6 => return Err(format!("{} is missing", ann.public_ipv6)),
        _ => None,
    };
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type: annotation(node, &ann.backend_type)
            .unwrap_or("")
            .to_string(),
        backend_data: raw_json(&ann.backend_data, annotation(node, &ann.backend_data))?,
        backend_v6_data: raw_json(&ann.backend_v6_data, annotation(node, &ann.backend_v6_data))?,
    };
    Ok(Some(Lease {
        key,
        attrs,
        keepalive: Keepalive::Node,
        revision: 0,
        created: node
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0),
    }))
}

/// The public addresses the operator stored on this node (`<prefix>/node-public-ip` and
/// `node-public-ipv6`): flanneld reads them at start, and they replace `--public-ip` and
/// `--public-ipv6` (so they also choose the interface, see `daemon::iface`). An empty value is
/// no value; anything else must be an address of its family.
pub fn stored_public_ips(
    node: &Node,
    ann: &Annotations,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), String> {
    let v4 = public_annotation::<Ipv4Addr>(node, &ann.node_public_ip, "IPv4")?;
    let v6 = public_annotation::<Ipv6Addr>(node, &ann.node_public_ipv6, "IPv6")?;
    Ok((v4, v6))
}

/// A public address annotation: absent or empty is `None`; one that is no address of the
/// family, or no address a node can have (loopback, link-local, ...), is an error naming it.
fn public_annotation<T>(node: &Node, name: &str, family: &str) -> Result<Option<T>, String>
where
    T: std::str::FromStr + Copy + Into<std::net::IpAddr>,
{
    let Some(s) = annotation(node, name).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let ip = s
        .parse::<T>()
        .map_err(|_| format!("{name} {s:?} is not an {family} address"))?;
    super::validate::public_kind(ip.into()).map_err(|e| format!("{name}: {e}"))?;
    Ok(Some(ip))
}

/// The annotations this node must change so they say what `attrs` says, by flanneld's rules
/// (`AcquireLease` in its kube subnet manager): only values that differ, so an unchanged node
/// is never patched. A `public-ip-overwrite` annotation (set by the operator) wins over the
/// detected address.
pub fn annotation_changes(
    current: &BTreeMap<String, String>,
    attrs: &LeaseAttrs,
    ann: &Annotations,
) -> BTreeMap<String, String> {
    let get = |k: &str| current.get(k).map(String::as_str).unwrap_or("");
    let raw = |r: &Option<Box<RawValue>>| r.as_ref().map(|v| v.get()).unwrap_or("null").to_string();
    let (bd, v6bd) = (raw(&attrs.backend_data), raw(&attrs.backend_v6_data));
    let ty = attrs.backend_type.as_str();
    let ip = attrs.public_ip.to_string();
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    want.insert(ann.backend_type.clone(), ty.to_string());
    // flanneld: vxlan writes its data only once it has some; every other backend always.
    if ty != "vxlan" || bd != "null" {
        want.insert(ann.backend_data.clone(), bd);
        let overwrite = get(&ann.public_ip_overwrite);
        let public = if overwrite.is_empty() {
            ip
        } else {
            overwrite.to_string()
        };
        want.insert(ann.public_ip.clone(), public);
    }
    if let Some(ip6) = attrs.public_ipv6 {
        let tunnels = ty == "vxlan" || ty == "wireguard";
        let v6_wanted = (tunnels && v6bd != "null") || ty == "host-gw";
        if v6_wanted {
            want.insert(ann.backend_v6_data.clone(), v6bd);
            let overwrite = get(&ann.public_ipv6_overwrite);
            let public = if overwrite.is_empty() {
                ip6.to_string()
            } else {
                overwrite.to_string()
            };
            want.insert(ann.public_ipv6.clone(), public);
        }
    }
    want.insert(ann.kube_subnet_manager.clone(), "true".into());
    want.retain(|k, v| get(k) != v);
    want
}

/// The lease store. Cheap to clone.
#[derive(Clone)]
pub struct KubeManager {
    nodes: Api<Node>,
    /// The same Nodes as the lease watch reads them (`LeaseNode`).
    lease_nodes: Api<LeaseNode>,
    node_name: String,
    ann: Annotations,
    net_conf_path: std::path::PathBuf,
    set_network_unavailable: bool,
    /// The network config, known once acquisition started.
    cfg: Arc<OnceLock<NetworkConfig>>,
    /// Nodes whose annotations make no lease, with why.
    rejected: Refusals<String>,
    /// The resource version at which this Node was last seen without a podCIDR: the next
    /// acquisition watches it from there instead of looking again.
    waiting_since: Arc<Mutex<Option<String>>>,
}

impl KubeManager {
    pub fn new(
        client: Client,
        node_name: String,
        ann: Annotations,
        net_conf_path: std::path::PathBuf,
        set_network_unavailable: bool,
    ) -> KubeManager {
        KubeManager {
            nodes: Api::all(client.clone()),
            lease_nodes: Api::all(client),
            node_name,
            ann,
            net_conf_path,
            set_network_unavailable,
            cfg: Arc::new(OnceLock::new()),
            rejected: Refusals::new(log_refused),
            waiting_since: Arc::default(),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    fn families(&self) -> (bool, bool) {
        self.cfg
            .get()
            .map(|c| (c.enable_ipv4, c.enable_ipv6))
            .unwrap_or((true, false))
    }

    async fn own_node(&self) -> Result<Node, LeaseError> {
        match self.nodes.get(&self.node_name).await {
            Ok(n) => Ok(n),
            Err(e) => match KubeError::of("get", &format!("nodes/{}", self.node_name), e) {
                e if e.is_not_found() => Err(LeaseError::NotYet(format!(
                    "node {:?} is not registered in the Kubernetes API yet",
                    self.node_name
                ))),
                e => Err(e.into()),
            },
        }
    }

    /// This node's lease key from its podCIDRs, checked against the network.
    fn own_key(&self, node: &Node, cfg: &NetworkConfig) -> Result<SubnetKey, LeaseError> {
        let name = &self.node_name;
        let key = pod_cidrs(node)
            .map_err(|e| LeaseError::Config(format!("node {name:?}: {e}")))?
            .ok_or_else(|| {
                LeaseError::NotYet(format!(
                    "node {name:?}: podCIDR not assigned: is kube-controller-manager running with --allocate-node-cidrs?"
                ))
            })?;
        own_key_in_network(name, key, cfg)
    }

    /// Writes the annotations that differ, through `nodes/<name>/status` as flanneld does;
    /// whether there were any.
    async fn annotate(&self, node: &Node, attrs: &LeaseAttrs) -> Result<bool, LeaseError> {
        let current: BTreeMap<String, String> =
            node.metadata.annotations.clone().unwrap_or_default();
        let changes = annotation_changes(&current, attrs, &self.ann);
        if changes.is_empty() {
            return Ok(false);
        }
        tracing::info!(node = %self.node_name, annotations = ?changes.keys().collect::<Vec<_>>(), "publishing this node's lease");
        let patch = serde_json::json!({"metadata": {"annotations": changes}});
        self.nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .map_err(|e| KubeError::of("patch", "nodes/status", e))?;
        Ok(true)
    }

    /// The lease the node has now, re-published if its annotations drifted.
    async fn take(&self, cfg: &NetworkConfig, attrs: &LeaseAttrs) -> Result<Lease, LeaseError> {
        let node = self.own_node().await?;
        let key = match self.own_key(&node, cfg) {
            Err(e @ LeaseError::NotYet(_)) => {
                *self.waiting_since.lock().expect("waiting lock") =
                    node.metadata.resource_version.clone();
                return Err(e);
            }
            r => r?,
        };
        self.annotate(&node, attrs).await?;
        // What peers read: the operator's overwrites (as `node_lease` reads this Node).
        let mut attrs = attrs.clone();
        if let Some(ip) = annotation(&node, &self.ann.public_ip_overwrite)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        {
            attrs.public_ip = ip;
        }
        if let Some(ip) = annotation(&node, &self.ann.public_ipv6_overwrite)
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .filter(|_| attrs.public_ipv6.is_some())
        {
            attrs.public_ipv6 = Some(ip);
        }
        Ok(Lease {
            key,
            attrs,
            keepalive: Keepalive::Node,
            revision: 0,
            created: 0,
        })
    }

    /// Waits until this Node has a podCIDR, watching it from `rv`: kube-controller-manager's
    /// assignment is seen at once, where looking again every second would add up to a second
    /// and load the API server with a GET a second from every waiting node. Returns when the
    /// podCIDR is there, when the server ends the watch, and on any trouble: the caller then
    /// looks at the Node again (and says why it still waits).
    async fn wait_for_pod_cidr(&self, mut rv: String) {
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={}", self.node_name))
            .timeout(60);
        let events = match self.nodes.watch(&wp, &rv).await {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!("watching node {:?}: {e}", self.node_name);
                return;
            }
        };
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Added(n) | WatchEvent::Modified(n)) => {
                    if !matches!(pod_cidrs(&n), Ok(None)) {
                        return;
                    }
                    rv = n.metadata.resource_version.unwrap_or(rv);
                }
                Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                Ok(WatchEvent::Deleted(_) | WatchEvent::Error(_)) | Err(_) => return,
            }
        }
    }

    /// Nodes skipped because their annotations make no lease, as `name: why`.
    pub fn rejected(&self) -> Vec<String> {
        self.rejected.describe("node")
    }
}

/// The podCIDR must lie in the network of its family (flanneld's check).
fn own_key_in_network(
    name: &str,
    mut key: SubnetKey,
    cfg: &NetworkConfig,
) -> Result<SubnetKey, LeaseError> {
    let inside4 = |n: &Ipv4Net| cfg.v4.as_ref().is_some_and(|f| f.network.contains(n));
    let inside6 = |n: &Ipv6Net| cfg.v6.as_ref().is_some_and(|f| f.network.contains(n));
    if !cfg.enable_ipv4 {
        key.v4 = None;
    }
    if !cfg.enable_ipv6 {
        key.v6 = None;
    }
    match (key.v4, key.v6) {
        (Some(n), _) if !inside4(&n) => Err(LeaseError::Config(format!(
            "node {name:?}: podCIDR {n} is not inside the network config's Network {}",
            cfg.v4
                .as_ref()
                .map(|f| f.network.to_string())
                .unwrap_or_default()
        ))),
        (_, Some(n)) if !inside6(&n) => Err(LeaseError::Config(format!(
            "node {name:?}: podCIDR {n} is not inside the network config's IPv6Network"
        ))),
        (None, None) => Err(LeaseError::NotYet(format!(
            "node {name:?}: no podCIDR of the network's address families"
        ))),
        _ => Ok(key),
    }
}

/// A Node as the lease watch reads it: name, version, annotations, creation time and pod
/// CIDRs, what `node_lease` looks at. The rest of a Node — its status (addresses, conditions, capacity,
/// the images it holds: most of the ~6 KB of JSON of a real node) and most of its metadata
/// (labels, managed fields) — is skipped by the parser instead of being built and dropped, for
/// every Node of the cluster at start and on every change after.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LeaseNode {
    #[serde(deserialize_with = "lease_node_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<LeaseNodeSpec>,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseNodeSpec {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
}

/// The metadata fields `LeaseNode` keeps.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseNodeMeta {
    name: Option<String>,
    resource_version: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

fn lease_node_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = <LeaseNodeMeta as serde::Deserialize>::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        resource_version: m.resource_version,
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        ..ObjectMeta::default()
    })
}

impl LeaseNode {
    /// The Node with what was read (nothing else set).
    pub fn into_node(self) -> Node {
        Node {
            metadata: self.metadata,
            spec: self.spec.map(|s| NodeSpec {
                pod_cidr: s.pod_cidr,
                pod_cidrs: s.pod_cidrs,
                ..NodeSpec::default()
            }),
            status: None,
        }
    }
}

impl kube::Resource for LeaseNode {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A Node as the watch keeps it: its name and what it says.
struct Seen {
    name: String,
    lease: Result<Option<Lease>, String>,
}

/// Turns node updates into lease updates, remembering which key each node had.
struct Translator {
    keys: BTreeMap<String, SubnetKey>,
    rejected: Refusals<String>,
}

impl Translator {
    fn note(&mut self, seen: &Seen) {
        self.rejected
            .note(seen.name.clone(), seen.lease.as_ref().err().cloned());
    }

    /// A whole list (at start, and again after `410 Gone`): a node refused before for the same
    /// reason is not logged again; nodes gone from the list are forgotten.
    fn snapshot(&mut self, nodes: Vec<Seen>) -> WatchUpdate {
        self.keys.clear();
        let mut refused = Vec::new();
        let mut leases = Vec::new();
        for seen in nodes {
            match seen.lease {
                Ok(Some(l)) => {
                    self.keys.insert(seen.name, l.key);
                    leases.push(l);
                }
                Err(why) => refused.push((seen.name, why)),
                Ok(None) => {}
            }
        }
        self.rejected.relist(refused);
        WatchUpdate::Snapshot(leases)
    }

    fn applied(&mut self, seen: Seen) -> Vec<WatchUpdate> {
        self.note(&seen);
        let old = self.keys.get(&seen.name).copied();
        let mut out = Vec::new();
        match seen.lease {
            Ok(Some(l)) => {
                if let Some(k) = old.filter(|k| *k != l.key) {
                    out.push(WatchUpdate::Delete(k));
                }
                self.keys.insert(seen.name, l.key);
                out.push(WatchUpdate::Put(l));
            }
            _ => {
                if let Some(k) = self.keys.remove(&seen.name) {
                    out.push(WatchUpdate::Delete(k));
                }
            }
        }
        out
    }

    fn deleted(&mut self, seen: Seen) -> Vec<WatchUpdate> {
        self.rejected.note(seen.name.clone(), None);
        self.keys
            .remove(&seen.name)
            .map(WatchUpdate::Delete)
            .into_iter()
            .collect()
    }
}

fn log_refused(node: &String, why: &str) {
    tracing::warn!(
        node,
        "skipping a node whose annotations make no lease: {why}"
    );
}

impl From<KubeError> for LeaseError {
    fn from(e: KubeError) -> LeaseError {
        match e {
            KubeError::Config(m) => LeaseError::Config(m),
            e => LeaseError::Kube(e),
        }
    }
}

impl SubnetManager for KubeManager {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn name(&self) -> &'static str {
        "the Kubernetes API"
    }

    fn config_source(&self) -> String {
        self.net_conf_path.display().to_string()
    }

    fn subnet_len_from_config(&self) -> bool {
        false
    }

    fn config_missing(&self) -> String {
        format!(
            "{} does not exist yet (the DaemonSet mounts it from the ConfigMap kube-flannel-cfg, key net-conf.json)",
            self.net_conf_path.display()
        )
    }

    async fn network_config(&self) -> Result<Option<String>, LeaseError> {
        match std::fs::read_to_string(&self.net_conf_path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LeaseError::Config(format!(
                "--net-config-path {}: {e}",
                self.net_conf_path.display()
            ))),
        }
    }

    async fn stored_public_ip(&self) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), LeaseError> {
        let node = match self.own_node().await {
            Ok(n) => n,
            // Not registered yet: nobody can have annotated it (flanneld goes on too).
            Err(LeaseError::NotYet(why)) => {
                tracing::warn!("no stored public address: {why}");
                return Ok((None, None));
            }
            Err(e) => return Err(e),
        };
        stored_public_ips(&node, &self.ann)
            .map_err(|e| LeaseError::Config(format!("node {:?}: {e}", self.node_name)))
    }

    async fn previous_lease(&self, cfg: &NetworkConfig, _attrs: &LeaseAttrs) -> Option<Lease> {
        let node = self.nodes.get(&self.node_name).await.ok()?;
        node_lease(&node, &self.ann, cfg.enable_ipv4, cfg.enable_ipv6).ok()?
    }

    async fn acquire(
        &self,
        cfg: &NetworkConfig,
        req: &AcquireRequest,
    ) -> Result<Lease, LeaseError> {
        let _ = self.cfg.set(cfg.clone());
        // The last look found the Node without a podCIDR (and the caller said so): wait for
        // it to change rather than look again.
        let since = self.waiting_since.lock().expect("waiting lock").take();
        if let Some(rv) = since {
            self.wait_for_pod_cidr(rv).await;
        }
        self.take(cfg, &req.attrs).await
    }

    async fn renew(&self, _own: &Lease) -> Result<Renewal, LeaseError> {
        // A Node's podCIDR is held as long as the Node exists: nothing to renew.
        Ok(Renewal::Reservation)
    }

    async fn reclaim(&self, own: &Lease, _ttl: Duration) -> Result<Lease, LeaseError> {
        let cfg = self.cfg.get().cloned().ok_or_else(|| {
            LeaseError::Config("the lease was lost before it was acquired".into())
        })?;
        let lease = match self.take(&cfg, &own.attrs).await {
            Err(LeaseError::NotYet(why)) => {
                return Err(LeaseError::Lost {
                    key: own.key.to_string(),
                    holder: format!("nobody: {why}"),
                });
            }
            r => r?,
        };
        if lease.key != own.key {
            return Err(LeaseError::Lost {
                key: own.key.to_string(),
                holder: format!(
                    "nobody: node {:?} now has podCIDR {}",
                    self.node_name, lease.key
                ),
            });
        }
        Ok(lease)
    }

    async fn time_left(&self, _own: &Lease) -> Result<Option<Duration>, LeaseError> {
        Ok(None)
    }

    fn held_by_name(&self) -> bool {
        true
    }

    /// Our Node's annotations were changed: the ones that differ are published again (as at
    /// start); `false` when none differ (nothing written). The Node's version is not
    /// compared: the annotations are ours alone.
    async fn restore(&self, own: &Lease, _revision: i64) -> Result<bool, LeaseError> {
        let node = self.own_node().await?;
        self.annotate(&node, &own.attrs).await
    }

    fn watch(&self, tx: mpsc::Sender<WatchUpdate>) -> impl Future<Output = ()> + Send + 'static {
        let (v4, v6) = self.families();
        let ann = self.ann.clone();
        let target = Target {
            api: self.lease_nodes.clone(),
            resource: "nodes",
            label_selector: None,
            field_selector: None,
        };
        let mut tr = Translator {
            keys: BTreeMap::new(),
            rejected: self.rejected.clone(),
        };
        async move {
            let (ntx, mut nrx) = mpsc::channel::<Update<Seen>>(1024);
            let convert = move |n: LeaseNode| {
                let n = n.into_node();
                Seen {
                    lease: node_lease(&n, &ann, v4, v6),
                    name: n.metadata.name.unwrap_or_default(),
                }
            };
            tokio::spawn(watch::list_watch(target, ntx, convert));
            while let Some(u) = nrx.recv().await {
                let updates = match u {
                    Update::Snapshot(nodes) => vec![tr.snapshot(nodes)],
                    Update::Applied(n) => tr.applied(n),
                    Update::Deleted(n) => tr.deleted(n),
                    Update::Disconnected(e) => vec![WatchUpdate::Disconnected(e)],
                    Update::Connected => vec![WatchUpdate::Connected],
                };
                for up in updates {
                    if tx.send(up).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn complete(&self, _own: &Lease) -> Result<(), LeaseError> {
        if !self.set_network_unavailable {
            return Ok(());
        }
        let now = chrono_now();
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "reason": CONDITION_REASON,
            "message": CONDITION_MESSAGE,
        }]}});
        self.nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .map_err(|e| KubeError::of("patch", "nodes/status", e))?;
        tracing::info!(node = %self.node_name, "set the node's NetworkUnavailable condition to False");
        Ok(())
    }

    fn rejected(&self) -> Vec<String> {
        KubeManager::rejected(self)
    }
}

/// Every Node with the lease it carries (families from its podCIDRs), or why it carries none;
/// for `podnetctl leases`.
pub async fn list_leases(
    client: Client,
    ann: &Annotations,
) -> Result<Vec<(String, Result<Lease, String>)>, KubeError> {
    let nodes: Api<LeaseNode> = Api::all(client);
    let list = nodes
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| KubeError::of("list", "nodes", e))?;
    let mut out = Vec::new();
    for n in list.items.into_iter().map(LeaseNode::into_node) {
        let name = n.metadata.name.clone().unwrap_or_default();
        let key = pod_cidrs(&n).ok().flatten();
        let (v4, v6) = key
            .map(|k| (k.v4.is_some(), k.v6.is_some()))
            .unwrap_or((true, false));
        match node_lease(&n, ann, v4, v6) {
            Ok(Some(l)) => out.push((name, Ok(l))),
            Ok(None) => {}
            Err(why) => out.push((name, Err(why))),
        }
    }
    Ok(out)
}

/// Now as RFC 3339 in UTC with seconds (`metav1.Time`'s JSON).
fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_lease_node_reads_what_node_lease_needs_and_nothing_else() {
        let ann = Annotations::new(DEFAULT_PREFIX).unwrap();
        let mut cases: Vec<(&str, serde_json::Value)> =
            ["node-worker-flannel", "node-dualstack", "node-worker"]
                .into_iter()
                .map(|n| (n, podnet_test_apiserver::fixtures::fixture(n).unwrap()))
                .collect();
        // A Node with `spec.podCIDR` alone (clusters before dual-stack).
        let mut single = cases[0].1.clone();
        single["spec"].as_object_mut().unwrap().remove("podCIDRs");
        assert!(single["spec"]["podCIDR"].is_string());
        cases.push(("podCIDR only", single));
        for (name, json) in cases {
            let full: Node = serde_json::from_value(json.clone()).unwrap();
            let lean: LeaseNode = serde_json::from_value(json).unwrap();
            let lean = lean.into_node();
            assert_eq!(lean.metadata.name, full.metadata.name, "{name}");
            assert_eq!(
                lean.metadata.resource_version,
                full.metadata.resource_version
            );
            assert_eq!(lean.metadata.annotations, full.metadata.annotations);
            assert_eq!(
                lean.metadata.creation_timestamp,
                full.metadata.creation_timestamp
            );
            assert_eq!(pod_cidrs(&lean), pod_cidrs(&full), "{name}");
            for (v4, v6) in [(true, false), (false, true), (true, true)] {
                assert_eq!(
                    node_lease(&lean, &ann, v4, v6),
                    node_lease(&full, &ann, v4, v6),
                    "{name}"
                );
            }
            // The status and the labels are not read at all.
            assert!(lean.status.is_none() && lean.metadata.labels.is_none());
            assert!(full.status.is_some());
        }
    }

    #[test]
    fn annotation_prefixes_follow_flanneld() {
        let a = Annotations::new(DEFAULT_PREFIX).unwrap();
        assert_eq!(a.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            a.kube_subnet_manager,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
        let b = Annotations::new("example.com/podnet").unwrap();
        assert_eq!(b.public_ip, "example.com/podnet-public-ip");
        let c = Annotations::new("example.com/").unwrap();
        assert_eq!(c.backend_type, "example.com/backend-type");
        for bad in ["a/b/c", "UPPER.case", "nodot", "example.com/Bad"] {
            assert!(Annotations::new(bad).is_err(), "{bad}");
        }
    }

    fn fixture(name: &str) -> Node {
        node(podnet_test_apiserver::fixtures::fixture(name).unwrap())
    }

    fn annotations_of(n: &Node) -> BTreeMap<String, String> {
        n.metadata.annotations.clone().unwrap_or_default()
    }

    fn ann() -> Annotations {
        Annotations::new(DEFAULT_PREFIX).unwrap()
    }

    fn attrs(ip: &str, ty: &str, data: Option<&str>) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: ty.into(),
            backend_data: data.map(|d| RawValue::from_string(d.into()).unwrap()),
            backend_v6_data: None,
        }
    }

    #[test]
    fn a_node_flanneld_annotated_reads_as_its_lease_and_needs_no_rewrite() {
        let n = fixture("node-worker-flannel");
        let l = node_lease(&n, &ann(), true, false).unwrap().unwrap();
        assert_eq!(l.key.to_string(), "10.244.3.0-24");
        assert_eq!(
            l.attrs.to_json(),
            r#"{"PublicIP":"10.210.40.175","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"46:57:f7:c6:05:51"}}"#
        );
        assert_eq!(l.keepalive, Keepalive::Node);
        // podnetd taking this node over from flanneld publishes exactly the same values.
        assert!(annotation_changes(&annotations_of(&n), &l.attrs, &ann()).is_empty());
    }

    #[test]
    fn a_fresh_node_gets_flannelds_annotations_byte_for_byte() {
        let n = fixture("node-worker");
        assert_eq!(
            node_lease(&n, &ann(), true, false).unwrap(),
            None,
            "not managed yet"
        );
        let a = attrs(
            "198.18.0.11",
            "vxlan",
            Some(r#"{"VNI":1,"VtepMAC":"0a:58:c6:12:00:0b"}"#),
        );
        let changes = annotation_changes(&annotations_of(&n), &a, &ann());
        let want: BTreeMap<String, String> = [
            (
                "flannel.alpha.coreos.com/backend-data",
                r#"{"VNI":1,"VtepMAC":"0a:58:c6:12:00:0b"}"#,
            ),
            ("flannel.alpha.coreos.com/backend-type", "vxlan"),
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/public-ip", "198.18.0.11"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(changes, want);
        // host-gw has no backend data: flanneld writes the JSON null, as the k3s node shows.
        let h = annotation_changes(
            &annotations_of(&n),
            &attrs("198.18.0.11", "host-gw", None),
            &ann(),
        );
        assert_eq!(h["flannel.alpha.coreos.com/backend-data"], "null");
        let ds = fixture("node-dualstack");
        assert_eq!(
            annotations_of(&ds)["flannel.alpha.coreos.com/backend-data"],
            "null"
        );
    }

    #[test]
    fn only_changed_values_are_written_and_an_overwrite_wins() {
        let mut current = annotations_of(&fixture("node-worker-flannel"));
        let mut a = node_lease(&fixture("node-worker-flannel"), &ann(), true, false)
            .unwrap()
            .unwrap()
            .attrs;
        a.public_ip = "10.210.40.176".parse().unwrap();
        let c = annotation_changes(&current, &a, &ann());
        assert_eq!(c.len(), 1);
        assert_eq!(c["flannel.alpha.coreos.com/public-ip"], "10.210.40.176");
        current.insert(
            "flannel.alpha.coreos.com/public-ip-overwrite".into(),
            "203.0.113.7".into(),
        );
        let c = annotation_changes(&current, &a, &ann());
        assert_eq!(c["flannel.alpha.coreos.com/public-ip"], "203.0.113.7");
    }

    #[test]
    fn node_public_ip_annotations_are_read_and_checked() {
        let mut v = podnet_test_apiserver::fixtures::fixture("node-worker-flannel").unwrap();
        assert_eq!(
            stored_public_ips(&node(v.clone()), &ann()),
            Ok((None, None))
        );
        let a = &mut v["metadata"]["annotations"];
        a["flannel.alpha.coreos.com/node-public-ip"] = "198.18.0.111".into();
        a["flannel.alpha.coreos.com/node-public-ipv6"] = "".into();
        assert_eq!(
            stored_public_ips(&node(v.clone()), &ann()),
            Ok((Some("198.18.0.111".parse().unwrap()), None))
        );
        v["metadata"]["annotations"]["flannel.alpha.coreos.com/node-public-ipv6"] =
            "198.18.0.111".into();
        assert_eq!(
            stored_public_ips(&node(v.clone()), &ann()).unwrap_err(),
            "flannel.alpha.coreos.com/node-public-ipv6 \"198.18.0.111\" is not an IPv6 address"
        );
        // Anyone allowed to annotate Nodes can write these: no address a node cannot have.
        for (name, bad) in [
            ("node-public-ip", "127.0.0.1"),
            ("node-public-ip", "169.254.1.1"),
            ("node-public-ipv6", "fe80::1"),
            ("node-public-ipv6", "ff02::1"),
        ] {
            let mut w = v.clone();
            w["metadata"]["annotations"]["flannel.alpha.coreos.com/node-public-ipv6"] = "".into();
            w["metadata"]["annotations"][format!("flannel.alpha.coreos.com/{name}")] = bad.into();
            assert_eq!(
                stored_public_ips(&node(w), &ann()).unwrap_err(),
                format!("flannel.alpha.coreos.com/{name}: public address {bad} cannot be a node's")
            );
        }
        // Under another prefix, the names follow it.
        let other = Annotations::new("example.com/podnet").unwrap();
        assert_eq!(other.node_public_ip, "example.com/podnet-node-public-ip");
        assert_eq!(stored_public_ips(&node(v), &other), Ok((None, None)));
    }

    #[test]
    fn bad_annotations_are_rejected_naming_the_annotation() {
        let mut v = podnet_test_apiserver::fixtures::fixture("node-worker-flannel").unwrap();
        v["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"] = "not-an-ip".into();
        let err = node_lease(&node(v.clone()), &ann(), true, false).unwrap_err();
        assert_eq!(
            err,
            "flannel.alpha.coreos.com/public-ip \"not-an-ip\" is not an IPv4 address"
        );
        v["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"] = "10.0.0.1".into();
        v["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"] = "{oops".into();
        let err = node_lease(&node(v.clone()), &ann(), true, false).unwrap_err();
        assert!(
            err.starts_with("flannel.alpha.coreos.com/backend-data"),
            "{err}"
        );
        v["spec"]["podCIDRs"] = serde_json::json!(["10.244.3.0/24", "10.244.4.0/24"]);
        let err = node_lease(&node(v), &ann(), true, false).unwrap_err();
        assert!(err.contains("two of one family"), "{err}");
    }

    fn seen(name: &str, key: &str) -> Seen {
        let mut l = Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: attrs("198.18.0.12", "vxlan", None),
            keepalive: Keepalive::Node,
            revision: 0,
            created: 0,
        };
        l.attrs.public_ip = "198.18.0.12".parse().unwrap();
        Seen {
            name: name.into(),
            lease: Ok(Some(l)),
        }
    }

    #[test]
    fn node_events_become_lease_events() {
        let mut t = Translator {
            keys: BTreeMap::new(),
            rejected: Refusals::new(log_refused),
        };
        let snap = t.snapshot(vec![
            seen("node1", "10.244.1.0-24"),
            seen("node2", "10.244.2.0-24"),
        ]);
        assert!(
            matches!(snap, WatchUpdate::Snapshot(ref l) if l.len() == 2),
            "own lease included"
        );
        // Our own node changing goes out like any lease (the event loop hands it to the lease
        // keeper, which writes back annotations someone else changed).
        let own = t.applied(seen("node1", "10.244.1.0-24"));
        assert!(
            matches!(own[..], [WatchUpdate::Put(ref l)] if l.key.to_string() == "10.244.1.0-24")
        );
        // A peer whose podCIDR changed: the old subnet goes, the new one comes.
        let ups = t.applied(seen("node2", "10.244.9.0-24"));
        assert!(matches!(ups[0], WatchUpdate::Delete(k) if k.to_string() == "10.244.2.0-24"));
        assert!(matches!(ups[1], WatchUpdate::Put(ref l) if l.key.to_string() == "10.244.9.0-24"));
        // A peer whose annotations went bad: its lease goes and it is reported.
        let bad = Seen {
            name: "node2".into(),
            lease: Err("broken".into()),
        };
        assert!(matches!(t.applied(bad)[0], WatchUpdate::Delete(_)));
        assert_eq!(t.rejected.get(&"node2".into()).unwrap(), "broken");
        // A deleted node: its lease goes (if it had one).
        assert!(matches!(
            t.deleted(seen("node1", "10.244.1.0-24"))[0],
            WatchUpdate::Delete(_)
        ));
        assert!(t.deleted(seen("node2", "10.244.9.0-24")).is_empty());
        assert!(t.rejected.is_empty());
    }

    #[test]
    fn a_new_list_keeps_what_is_still_refused_and_forgets_the_rest() {
        let mut t = Translator {
            keys: BTreeMap::new(),
            rejected: Refusals::new(log_refused),
        };
        let bad = |name: &str, why: &str| Seen {
            name: name.into(),
            lease: Err(why.into()),
        };
        t.snapshot(vec![bad("a", "broken"), bad("b", "broken")]);
        // After 410 Gone: "a" still refused, "b" fixed, "c" new (which of them are logged
        // again is `Refusals::relist`'s, tested there).
        let snap = t.snapshot(vec![
            bad("a", "broken"),
            seen("b", "10.244.2.0-24"),
            bad("c", "other"),
        ]);
        assert!(matches!(snap, WatchUpdate::Snapshot(ref l) if l.len() == 1));
        assert_eq!(
            t.rejected.describe("node"),
            ["node a: broken", "node c: other"]
        );
        t.snapshot(vec![seen("b", "10.244.2.0-24")]);
        assert!(t.rejected.is_empty());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}

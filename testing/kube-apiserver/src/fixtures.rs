//! Real objects to start tests from (see `fixtures/README.md` for where each comes from), and
//! helpers that stamp out renamed, re-addressed copies (node1..nodeN from one fixture).

use crate::util::metadata_mut;
use serde_json::{Value, json};
use std::net::IpAddr;

/// kubeadm control-plane node, annotated by flanneld.
pub const NODE_CONTROL_PLANE: &str = "node-controlplane";
/// kubeadm worker node without pod-network annotations.
pub const NODE_WORKER: &str = "node-worker";
/// kubeadm worker node with flanneld's annotations (vxlan).
pub const NODE_WORKER_FLANNEL: &str = "node-worker-flannel";
/// Dual-stack node (IPv4 + IPv6 podCIDRs and addresses).
pub const NODE_DUAL_STACK: &str = "node-dualstack";
/// A Namespace (`kube-system`).
pub const NAMESPACE: &str = "namespace";
/// A Pod (CoreDNS) with named container ports and podIPs.
pub const POD: &str = "pod";
/// A NetworkPolicy (the documentation's `test-network-policy`).
pub const NETWORK_POLICY: &str = "networkpolicy";

/// Every fixture name.
pub const ALL: [&str; 7] = [
    NODE_CONTROL_PLANE,
    NODE_WORKER,
    NODE_WORKER_FLANNEL,
    NODE_DUAL_STACK,
    NAMESPACE,
    POD,
    NETWORK_POLICY,
];

fn text(name: &str) -> Option<&'static str> {
    Some(match name {
        NODE_CONTROL_PLANE => include_str!("../fixtures/node-controlplane.json"),
        NODE_WORKER => include_str!("../fixtures/node-worker.json"),
        NODE_WORKER_FLANNEL => include_str!("../fixtures/node-worker-flannel.json"),
        NODE_DUAL_STACK => include_str!("../fixtures/node-dualstack.json"),
        NAMESPACE => include_str!("../fixtures/namespace.json"),
        POD => include_str!("../fixtures/pod.json"),
        NETWORK_POLICY => include_str!("../fixtures/networkpolicy.json"),
        _ => return None,
    })
}

/// A fixture by name (one of [`ALL`]), exactly as stored; `None` for an unknown name.
pub fn fixture(name: &str) -> Option<Value> {
    text(name).and_then(|t| serde_json::from_str(t).ok())
}

/// A copy without what the server assigns (uid, resourceVersion, creationTimestamp,
/// generation, managedFields), renamed to `name`.
pub fn renamed(template: &Value, name: &str) -> Value {
    let mut obj = template.clone();
    let meta = metadata_mut(&mut obj);
    for gone in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
        "generateName",
    ] {
        meta.remove(gone);
    }
    meta.insert("name".into(), name.into());
    obj
}

/// A node from `template` named `name`, with one InternalIP per address (plus Hostname),
/// `spec.podCIDR(s)` set to `pod_cidrs`, the `kubernetes.io/hostname` label, and flannel's
/// `public-ip` / `public-ipv6` annotations (if the template has flannel annotations) following
/// the first IPv4 / IPv6 address.
pub fn node(template: &Value, name: &str, addresses: &[IpAddr], pod_cidrs: &[&str]) -> Value {
    let mut node = renamed(template, name);
    let meta = metadata_mut(&mut node);
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    labels["kubernetes.io/hostname"] = name.into();
    if let Some(Value::Object(ann)) = meta.get_mut("annotations")
        && ann
            .keys()
            .any(|k| k.starts_with("flannel.alpha.coreos.com/"))
    {
        let v4 = addresses.iter().find(|a| a.is_ipv4());
        let v6 = addresses.iter().find(|a| a.is_ipv6());
        for (key, addr) in [
            ("flannel.alpha.coreos.com/public-ip", v4),
            ("flannel.alpha.coreos.com/public-ipv6", v6),
        ] {
            match addr {
                Some(a) => ann.insert(key.into(), a.to_string().into()),
                None => ann.remove(key),
            };
        }
    }
    let mut addrs: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"address": a.to_string(), "type": "InternalIP"}))
        .collect();
    addrs.push(json!({"address": name, "type": "Hostname"}));
    node["status"]["addresses"] = Value::Array(addrs);
    let spec = crate::util::object_field(&mut node, "spec");
    match pod_cidrs.first() {
        Some(first) => {
            spec.insert("podCIDR".into(), (*first).into());
            spec.insert("podCIDRs".into(), json!(pod_cidrs));
        }
        None => {
            spec.remove("podCIDR");
            spec.remove("podCIDRs");
        }
    }
    node
}

/// A pod from `template` named `ns/name`, scheduled on `node_name`, with `status.podIP(s)` set
/// to `ips` (both removed when `ips` is empty, as before the CNI plugin ran).
pub fn pod(template: &Value, ns: &str, name: &str, node_name: &str, ips: &[IpAddr]) -> Value {
    let mut pod = renamed(template, name);
    metadata_mut(&mut pod).insert("namespace".into(), ns.into());
    pod["spec"]["nodeName"] = node_name.into();
    let status = crate::util::object_field(&mut pod, "status");
    match ips.first() {
        Some(first) => {
            status.insert("podIP".into(), first.to_string().into());
            let list: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
            status.insert("podIPs".into(), Value::Array(list));
        }
        None => {
            status.remove("podIP");
            status.remove("podIPs");
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixture_parses_and_has_type_and_name() {
        for name in ALL {
            let v = fixture(name).unwrap_or_else(|| panic!("fixture {name} does not parse"));
            assert!(
                v["apiVersion"].is_string() && v["kind"].is_string(),
                "{name}"
            );
            assert!(v["metadata"]["name"].is_string(), "{name}");
        }
        assert!(fixture("nope").is_none());
    }

    #[test]
    fn stamps_nodes() {
        let t = fixture(NODE_WORKER_FLANNEL).unwrap();
        let ips: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let n = node(&t, "node2", &ips, &["10.244.2.0/24", "fd00:10:244:2::/64"]);
        assert_eq!(n["metadata"]["name"], "node2");
        assert!(n["metadata"].get("uid").is_none());
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "node2");
        assert_eq!(
            n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"],
            "10.0.0.2"
        );
        assert_eq!(
            n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ipv6"],
            "fd00::2"
        );
        assert_eq!(n["spec"]["podCIDR"], "10.244.2.0/24");
        assert_eq!(
            n["status"]["addresses"],
            json!([
            {"address": "10.0.0.2", "type": "InternalIP"},
            {"address": "fd00::2", "type": "InternalIP"},
            {"address": "node2", "type": "Hostname"}])
        );
    }
}

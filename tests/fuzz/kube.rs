//! Nodes as the Kubernetes API serves them: annotations any node (or flanneld) may have written,
//! podCIDRs.

use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Node;
use podnet::lease::LeaseAttrs;
use podnet::lease::kube::{Annotations, DEFAULT_PREFIX, annotation_changes, node_lease};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use crate::support::{config, ipv4, ipv6, json, nasty_string, prefix};

/// `good` most of the time, else a value of any other kind.
fn or_other(good: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => good,
        1 => select(vec!["true", "", "null", "{\"VNI\":1}", " {} ", "{oops"]).prop_map(String::from),
        1 => json().prop_map(|v| v.to_string()),
        1 => nasty_string(),
    ]
}

/// A podCIDR: a network of either family (host bits and odd lengths included), or junk.
fn pod_cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (ipv4(), prefix(32)).prop_map(|(a, l)| format!("{a}/{l}")),
        2 => (ipv6(), prefix(128)).prop_map(|(a, l)| format!("{a}/{l}")),
        1 => nasty_string(),
    ]
}

/// The names under flanneld's prefix (built once: `Annotations::new` compiles a regex).
fn default_names() -> Annotations {
    static NAMES: OnceLock<Annotations> = OnceLock::new();
    NAMES
        .get_or_init(|| Annotations::new(DEFAULT_PREFIX).expect("default prefix"))
        .clone()
}

/// The annotation names, under the default prefix or another (valid or not: an invalid one
/// falls back to the default).
fn annotations() -> impl Strategy<Value = Annotations> {
    let other = prop_oneof![
        1 => select(vec!["example.com/podnet", "example.com/", "a.b"]).prop_map(String::from),
        1 => nasty_string(),
    ];
    prop_oneof![
        4 => Just(()).prop_map(|_| default_names()),
        1 => other.prop_map(|p| Annotations::new(&p).unwrap_or_else(|_| default_names())),
    ]
}

/// Values for flannel's annotations, each present nine times in ten and usually plausible.
fn annotation_values() -> BoxedStrategy<Vec<Option<String>>> {
    let data = || json().prop_map(|v| v.to_string()).boxed();
    let some = |s: BoxedStrategy<String>| prop::option::weighted(0.9, or_other(s));
    (
        some(Just("true".to_string()).boxed()),
        some(ipv4().prop_map(|a| a.to_string()).boxed()),
        some(ipv6().prop_map(|a| a.to_string()).boxed()),
        some(
            select(vec!["vxlan", "host-gw", "udp", ""])
                .prop_map(String::from)
                .boxed(),
        ),
        some(data()),
        some(data()),
        some(ipv4().prop_map(|a| a.to_string()).boxed()),
    )
        .prop_map(|(m, ip, ip6, ty, d, d6, over)| vec![m, ip, ip6, ty, d, d6, over])
        .boxed()
}

/// A Node's JSON with flannel's annotations under `ann`'s names, a few others, a podCIDR
/// and podCIDRs.
fn node_json(ann: Annotations) -> impl Strategy<Value = Value> {
    let others = prop::collection::btree_map(nasty_string(), nasty_string(), 0..3);
    let cidrs = prop::option::weighted(0.7, prop::collection::vec(pod_cidr(), 0..3));
    let cidr = prop::option::weighted(0.7, pod_cidr());
    (annotation_values(), others, cidr, cidrs).prop_map(move |(values, mut a, cidr, cidrs)| {
        let names = [
            &ann.kube_subnet_manager,
            &ann.public_ip,
            &ann.public_ipv6,
            &ann.backend_type,
            &ann.backend_data,
            &ann.backend_v6_data,
            &ann.public_ip_overwrite,
        ];
        for (name, v) in names.into_iter().zip(values) {
            if let Some(v) = v {
                a.insert(name.clone(), v);
            }
        }
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n", "annotations": a},
            "spec": {"podCIDR": cidr, "podCIDRs": cidrs},
        })
    })
}

fn node_and_names() -> impl Strategy<Value = (Value, Annotations)> {
    annotations().prop_flat_map(|ann| (node_json(ann.clone()), Just(ann)))
}

proptest! {
    #![proptest_config(config())]

    /// Any annotations and podCIDRs: no lease, a lease, or an error; a lease has a subnet of
    /// each requested family only, a value that round-trips, and the annotations it would
    /// publish can be worked out.
    #[test]
    fn kube_node_lease_never_panics(
        (node, ann) in node_and_names(),
        v4 in prop::bool::weighted(0.8),
        v6 in prop::bool::weighted(0.4),
    ) {
        let node: Node = serde_json::from_value(node).expect("a Node");
        if let Ok(Some(l)) = node_lease(&node, &ann, v4, v6) {
            prop_assert!(l.key.v4.is_none() || v4);
            prop_assert!(l.key.v6.is_none() || v6);
            prop_assert!(l.key.v4.is_some() || l.key.v6.is_some());
            prop_assert_eq!(LeaseAttrs::from_json(&l.attrs.to_json()), Ok(l.attrs.clone()));
            let current = node.metadata.annotations.clone().unwrap_or_default();
            annotation_changes(&current, &l.attrs, &ann);
        }
    }
}

//! Policy manifests: YAML or JSON text with Namespaces, Pods, Nodes, NetworkPolicies and lists
//! of them, as a manifest directory (or `kubectl get -o yaml`) holds them.

use podnet::policy::manifest::{load_into, parse};
use podnet::policy::model::Cluster;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Value, json};

use crate::support::{config, deep, mutate, mutations, nasty_string};

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["app", "x", "kubernetes.io/metadata.name", "a/b/c", ""]).prop_map(String::from),
        1 => nasty_string(),
    ]
}

fn selector() -> impl Strategy<Value = Value> {
    let expr = (
        label(),
        select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Frob"]),
        prop::collection::vec(label(), 0..3),
    )
        .prop_map(|(k, op, v)| json!({"key": k, "operator": op, "values": v}));
    (
        prop::collection::btree_map(label(), label(), 0..3),
        prop::collection::vec(expr, 0..2),
    )
        .prop_map(|(m, e)| json!({"matchLabels": m, "matchExpressions": e}))
}

/// A NetworkPolicy peer: ipBlock with random CIDRs, or pod/namespace selectors.
fn peer() -> impl Strategy<Value = Value> {
    let cidr = crate::support::ipv4().prop_map(|a| a.to_string());
    prop_oneof![
        (cidr, any::<u8>(), prop::collection::vec(nasty_string(), 0..2))
            .prop_map(|(a, l, except)| json!({"ipBlock": {"cidr": format!("{a}/{}", l % 40), "except": except}})),
        (selector(), selector()).prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
    ]
}

fn rule() -> impl Strategy<Value = Value> {
    let port = prop_oneof![
        any::<i32>().prop_map(Value::from),
        label().prop_map(Value::from)
    ];
    let ports = prop::collection::vec(
        (
            port,
            any::<i32>(),
            select(vec!["TCP", "UDP", "SCTP", "ICMP"]),
        )
            .prop_map(|(p, e, proto)| json!({"port": p, "endPort": e, "protocol": proto})),
        0..3,
    );
    (prop::collection::vec(peer(), 0..3), ports)
        .prop_map(|(peers, ports)| json!({"from": peers, "to": peers, "ports": ports}))
}

/// One object of a kind policy reads (or not), near valid.
fn object() -> impl Strategy<Value = Value> {
    let kind = select(vec![
        ("v1", "Namespace"),
        ("v1", "Pod"),
        ("v1", "Node"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("v1", "ConfigMap"),
        ("v2", "Pod"),
    ]);
    let types = prop::collection::vec(select(vec!["Ingress", "Egress", "Sideways"]), 0..3);
    (kind, label(), label(), selector(), prop::collection::vec(rule(), 0..3), types).prop_map(
        |((api, kind), name, ns, sel, rules, types)| {
            json!({
                "apiVersion": api, "kind": kind,
                "metadata": {"name": name, "namespace": ns, "labels": {"app": "x"}},
                "spec": {"podSelector": sel, "ingress": rules, "egress": rules,
                         "policyTypes": types, "nodeName": name, "podCIDR": "10.244.1.0/24",
                         "containers": [{"name": "c"}]},
                "status": {"podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}], "phase": "Running"},
            })
        },
    )
}

/// A document: an object, or a list of them (typed or `List`), then mutated.
fn document() -> impl Strategy<Value = Value> {
    let list_kind = select(vec!["List", "PodList", "NetworkPolicyList", "XList"]);
    let doc = prop_oneof![
        3 => object(),
        1 => (list_kind, prop::collection::vec(object(), 0..3))
            .prop_map(|(k, items)| json!({"apiVersion": "v1", "kind": k, "items": items})),
    ];
    (doc, mutations()).prop_map(|(d, m)| mutate(d, &m))
}

/// A manifest text: documents as YAML (`---` between them) or JSON (concatenated or an
/// array), sometimes cut short or with a marker line dropped in.
fn manifest_text() -> impl Strategy<Value = String> {
    let docs = prop::collection::vec(document(), 0..4);
    let text = (docs, 0u8..4).prop_map(|(docs, how)| match how {
        0 => docs
            .iter()
            .map(|d| serde_yaml::to_string(d).expect("yaml"))
            .collect::<Vec<_>>()
            .join("---\n"),
        1 => docs
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        2 => json!(docs).to_string(),
        _ => serde_json::to_string_pretty(&json!(docs)).expect("json"),
    });
    let marker = select(vec![
        "---\n",
        "--- x: [\n",
        "...\n",
        "--- \u{a0}\n",
        "- a\n",
        "{",
    ]);
    let damage = prop_oneof![
        3 => Just(None),
        1 => (any::<Index>(), prop::option::of(marker)).prop_map(Some),
    ];
    (text, damage).prop_map(|(t, damage)| match damage {
        None => t,
        Some((at, marker)) => {
            let at = (0..=at.index(t.len() + 1))
                .rev()
                .find(|&i| t.is_char_boundary(i));
            let (head, tail) = t.split_at(at.unwrap_or(0));
            match marker {
                None => head.to_string(),
                Some(m) => format!("{head}{m}{tail}"),
            }
        }
    })
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => deep(),
        1 => "[-:{}\\[\\],&*!|> a-z0-9\n.]{0,80}",
        1 => nasty_string(),
        6 => manifest_text(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any text: objects, notes and errors, never a panic; loading the objects into a cluster
    /// model (validation, conversion) does not panic either.
    #[test]
    fn policy_manifest_parse_never_panics(text in any_text()) {
        let m = parse(&text);
        prop_assert!(m.errors.iter().all(|e| !e.place.is_empty()));
        load_into(&mut Cluster::default(), &text);
    }
}

//! Converter and manifest tests: API-server validation, defaulting, selectors, formats.

use super::*;
use crate::policy::manifest::{self, LoadError};
use crate::policy::model::{Cluster, Key, NAMESPACE_NAME_LABEL};

fn load(text: &str) -> (Cluster, Vec<String>, Vec<LoadError>) {
    let mut c = Cluster::new();
    let (notes, errors) = manifest::load_into(&mut c, text);
    (c, notes, errors)
}

fn invalid(errors: &[LoadError], object: &str) -> ConvertError {
    let found = errors.iter().find_map(|e| match e {
        LoadError::Invalid(c) if c.object == object => Some(c.clone()),
        _ => None,
    });
    found.unwrap_or_else(|| panic!("no error for {object} in {errors:#?}"))
}

fn np(name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n{spec}"
    )
}

/// One manifest, many bad objects: each its own error naming object, field and value. Long on
/// purpose: every refusal sits in one manifest, which also shows the valid objects still load.
#[test]
fn each_invalid_object_is_its_own_error_and_the_rest_load() {
    let mut text =
        String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n");
    let bad: &[(&str, &str)] = &[
        (
            "deny-all",
            "podSelector: {}\ningress:\n- ports:\n  - port: 80\n  - {port: 80, endPort: 79}",
        ),
        (
            "bad-cidr",
            "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.0/33}}]",
        ),
        (
            "except-out",
            "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]",
        ),
        (
            "except-same",
            "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]",
        ),
        ("end-named", "egress:\n- ports: [{port: http, endPort: 90}]"),
        ("end-alone", "egress:\n- ports: [{endPort: 90}]"),
        ("icmp", "ingress:\n- ports: [{protocol: ICMP}]"),
        (
            "lower-tcp",
            "ingress:\n- ports: [{protocol: tcp, port: 80}]",
        ),
        ("port-zero", "ingress:\n- ports: [{port: 0}]"),
        ("port-big", "ingress:\n- ports: [{port: 70000}]"),
        ("bad-name-port", "ingress:\n- ports: [{port: Serve_80}]"),
        (
            "bad-op",
            "podSelector:\n  matchExpressions: [{key: a, operator: Equals, values: [b]}]",
        ),
        (
            "in-empty",
            "podSelector:\n  matchExpressions: [{key: a, operator: In}]",
        ),
        (
            "exists-values",
            "ingress:\n- from:\n  - namespaceSelector:\n      matchExpressions: [{key: a, operator: Exists, values: [b]}]",
        ),
        ("bad-key", "podSelector: {matchLabels: {'-a': b}}"),
        ("bad-value", "podSelector: {matchLabels: {a: 'b c'}}"),
        ("empty-peer", "ingress:\n- from: [{}]"),
        (
            "block-and-pods",
            "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]",
        ),
        ("bad-type", "policyTypes: [Both]"),
        ("three-types", "policyTypes: [Ingress, Egress, Ingress]"),
    ];
    for (name, spec) in bad {
        text += &np(name, spec);
    }
    text += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\nspec: {}\n";
    text += "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nstatus: {podIP: 10.0.0.300}\n";
    text += &np("good", "podSelector: {}\ningress: []");
    text += "---\napiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: x}\nstatus: {podIP: 10.0.0.3}\n";

    let (c, _, errors) = load(&text);
    // The valid ones loaded.
    assert_eq!(c.namespace("x").unwrap().labels["team"], "a");
    assert!(c.policy(&Key::new("x", "good")).is_some());
    assert!(c.pod(&Key::new("x", "q")).is_some());
    assert_eq!(c.policies().count(), 1);
    assert_eq!(errors.len(), bad.len() + 2, "{errors:#?}");

    let e = invalid(&errors, "networkpolicy x/deny-all");
    assert_eq!(
        e.to_string(),
        "networkpolicy x/deny-all: spec.ingress[0].ports[1].endPort = 79: must be greater than or equal to port (80)"
    );
    let expect = |name: &str, field: &str, value: &str, reason: Reason| {
        let e = invalid(&errors, &format!("networkpolicy x/{name}"));
        assert_eq!(
            (e.field.as_str(), e.value.as_str(), &e.reason),
            (field, value, &reason),
            "{e}"
        );
    };
    let from0 = "spec.ingress[0].from[0]";
    expect(
        "bad-cidr",
        &format!("{from0}.ipBlock.cidr"),
        "10.0.0.0/33",
        Reason::InvalidCidr,
    );
    let outside = Reason::ExceptOutsideCidr {
        cidr: "10.0.0.0/16".into(),
    };
    expect(
        "except-out",
        &format!("{from0}.ipBlock.except[0]"),
        "10.1.0.0/24",
        outside.clone(),
    );
    expect(
        "except-same",
        &format!("{from0}.ipBlock.except[0]"),
        "10.0.0.0/16",
        outside,
    );
    expect(
        "end-named",
        "spec.egress[0].ports[0].endPort",
        "90",
        Reason::EndPortWithNamedPort,
    );
    expect(
        "end-alone",
        "spec.egress[0].ports[0].endPort",
        "90",
        Reason::EndPortWithoutPort,
    );
    expect(
        "icmp",
        "spec.ingress[0].ports[0].protocol",
        "ICMP",
        Reason::UnknownProtocol,
    );
    expect(
        "lower-tcp",
        "spec.ingress[0].ports[0].protocol",
        "tcp",
        Reason::UnknownProtocol,
    );
    expect(
        "port-zero",
        "spec.ingress[0].ports[0].port",
        "0",
        Reason::InvalidPortNumber,
    );
    expect(
        "port-big",
        "spec.ingress[0].ports[0].port",
        "70000",
        Reason::InvalidPortNumber,
    );
    expect(
        "bad-name-port",
        "spec.ingress[0].ports[0].port",
        "Serve_80",
        Reason::InvalidPortName,
    );
    let expr0 = "spec.podSelector.matchExpressions[0]";
    expect(
        "bad-op",
        &format!("{expr0}.operator"),
        "Equals",
        Reason::UnknownOperator,
    );
    expect(
        "in-empty",
        &format!("{expr0}.values"),
        "[]",
        Reason::ValuesRequired,
    );
    let ns_expr = format!("{from0}.namespaceSelector.matchExpressions[0].values");
    expect(
        "exists-values",
        &ns_expr,
        "[\"b\"]",
        Reason::ValuesForbidden,
    );
    let e = invalid(&errors, "networkpolicy x/bad-key");
    assert!(matches!(e.reason, Reason::InvalidLabelKey(_)), "{e}");
    assert_eq!(e.value, "-a");
    let e = invalid(&errors, "networkpolicy x/bad-value");
    assert_eq!(
        (e.field.as_str(), e.value.as_str()),
        ("spec.podSelector.matchLabels.a", "b c")
    );
    expect("empty-peer", from0, "{}", Reason::EmptyPeer);
    let e = invalid(&errors, "networkpolicy x/block-and-pods");
    assert_eq!(e.reason, Reason::IpBlockWithSelector);
    expect(
        "bad-type",
        "spec.policyTypes[0]",
        "Both",
        Reason::UnknownPolicyType,
    );
    let e = invalid(&errors, "networkpolicy x/three-types");
    assert_eq!(e.reason, Reason::TooManyPolicyTypes);
    let e = invalid(&errors, "networkpolicy x/(no name)");
    assert_eq!(
        (e.field.as_str(), &e.reason),
        ("metadata.name", &Reason::Required)
    );
    let e = invalid(&errors, "pod x/p");
    assert_eq!(
        (e.field.as_str(), e.value.as_str()),
        ("status.podIP", "10.0.0.300")
    );
}

fn policy(spec: &str) -> Policy {
    let (c, _, errors) = load(&np("p", spec));
    assert!(errors.is_empty(), "{errors:#?}");
    c.policy(&Key::new("x", "p")).unwrap().clone()
}

#[test]
fn policy_types_default_as_the_api_server_does() {
    let p = policy("podSelector: {}");
    assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
    let p = policy("egress:\n- {}");
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, Some(vec![Rule::default()]));
    let p = policy("egress: []");
    assert_eq!(
        p.egress, None,
        "an empty egress list does not default to Egress"
    );
    let p = policy("policyTypes: []\ningress:\n- {}");
    assert_eq!((p.ingress.unwrap().len(), p.egress), (1, None));
    let p = policy("policyTypes: [Egress]\ningress:\n- {}");
    assert_eq!(
        (p.ingress, p.egress),
        (None, Some(vec![])),
        "rules of an unlisted direction are ignored"
    );
}

#[test]
fn missing_spec_and_pod_selector_select_everything() {
    let p = policy("ingress: []");
    assert!(p.pod_selector.is_everything());
    let (c, _, errors) =
        load("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n");
    assert!(errors.is_empty());
    let p = c.policy(&Key::new(DEFAULT_NAMESPACE, "p")).unwrap();
    assert!(p.pod_selector.is_everything());
    assert_eq!(
        (p.ingress.as_ref(), p.egress.as_ref()),
        (Some(&vec![]), None)
    );
}

#[test]
fn peers_keep_which_selectors_were_given() {
    let p = policy(
        r#"ingress:
- from:
  - podSelector: {}
  - namespaceSelector: {}
  - podSelector: {matchLabels: {a: b}}
    namespaceSelector: {}
  - ipBlock: {cidr: 10.1.2.3/8, except: [10.9.0.0/16]}"#,
    );
    let peers = &p.ingress.unwrap()[0].peers;
    let all = LabelSelector::everything();
    assert_eq!(peers[0], Peer::Pods(all.clone()));
    assert_eq!(peers[1], Peer::Namespaces(all.clone()));
    assert_eq!(
        peers[2],
        Peer::PodsInNamespaces {
            namespaces: all,
            pods: LabelSelector::labels([("a", "b")])
        }
    );
    let Peer::IpBlock(block) = &peers[3] else {
        panic!("{:?}", peers[3]);
    };
    assert_eq!(block.cidr.to_string(), "10.0.0.0/8", "host bits cleared");
    assert_eq!(block.except[0].to_string(), "10.9.0.0/16");
}

#[test]
fn ports_default_to_tcp_and_keep_ranges_and_names() {
    let p = policy(
        "ingress:\n- ports:\n  - {}\n  - {port: 53, protocol: UDP}\n  - {port: 8000, endPort: 8080, protocol: SCTP}\n  - {port: serve-80-tcp}",
    );
    let ports = &p.ingress.unwrap()[0].ports;
    assert_eq!(
        ports[0],
        PortSpec {
            protocol: Protocol::Tcp,
            port: PortMatch::All
        }
    );
    let udp53 = PortMatch::Range {
        first: 53,
        last: 53,
    };
    assert_eq!(
        ports[1],
        PortSpec {
            protocol: Protocol::Udp,
            port: udp53
        }
    );
    let range = PortMatch::Range {
        first: 8000,
        last: 8080,
    };
    assert_eq!(
        ports[2],
        PortSpec {
            protocol: Protocol::Sctp,
            port: range
        }
    );
    let named = PortMatch::Named("serve-80-tcp".into());
    assert_eq!(
        ports[3],
        PortSpec {
            protocol: Protocol::Tcp,
            port: named
        }
    );
}

#[test]
fn selector_operators_and_empty_selector() {
    let l = |pairs: &[(&str, &str)]| crate::policy::cases::labels(pairs);
    let req = |key: &str, operator, values: &[&str]| Requirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let with = l(&[("tier", "web")]);
    let other = l(&[("tier", "db")]);
    let without = l(&[]);
    let cases = [
        (
            req("tier", Operator::In, &["web", "api"]),
            [true, false, false],
        ),
        (req("tier", Operator::NotIn, &["web"]), [false, true, true]),
        (req("tier", Operator::Exists, &[]), [true, true, false]),
        (
            req("tier", Operator::DoesNotExist, &[]),
            [false, false, true],
        ),
    ];
    for (r, expect) in cases {
        let got = [r.matches(&with), r.matches(&other), r.matches(&without)];
        assert_eq!(got, expect, "{r:?}");
    }
    assert!(LabelSelector::everything().matches(&without));
    // matchLabels and expressions are ANDed; the label query form reads back.
    let s = LabelSelector::new(
        l(&[("app", "x")]),
        vec![req("tier", Operator::NotIn, &["db"])],
    );
    assert!(s.matches(&l(&[("app", "x")])));
    assert!(!s.matches(&l(&[("app", "x"), ("tier", "db")])));
    assert!(!s.matches(&with));
    assert_eq!(s.to_string(), "app=x,tier notin (db)");
    // Expression order does not make two selectors different.
    let a = LabelSelector::new(
        l(&[]),
        vec![
            req("a", Operator::Exists, &[]),
            req("b", Operator::Exists, &[]),
        ],
    );
    let b = LabelSelector::new(
        l(&[]),
        vec![
            req("b", Operator::Exists, &[]),
            req("a", Operator::Exists, &[]),
        ],
    );
    assert_eq!(a, b);
}

#[test]
fn namespaces_always_carry_their_name_label() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {kubernetes.io/metadata.name: spoofed, ns: x}\n";
    let (c, _, errors) = load(text);
    assert!(errors.is_empty());
    let ns = c.namespace("x").unwrap();
    assert_eq!(ns.labels[NAMESPACE_NAME_LABEL], "x");
    assert_eq!(ns.labels["ns"], "x");
    let (_, _, errors) = load("apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n");
    assert!(
        matches!(&errors[0], LoadError::Invalid(e) if matches!(e.reason, Reason::InvalidName(_)))
    );
}

#[test]
fn pods_take_pod_ips_then_pod_ip_and_named_ports() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: dual, namespace: x, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: a
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 9090}
  - name: b
    ports: [{name: dns, containerPort: 53, protocol: UDP}]
status:
  podIP: 10.0.0.9
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
---
apiVersion: v1
kind: Pod
metadata: {name: old}
spec: {containers: [], hostNetwork: true}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: pending}
"#;
    let (c, _, errors) = load(text);
    assert!(errors.is_empty(), "{errors:#?}");
    let dual = c.pod(&Key::new("x", "dual")).unwrap();
    assert_eq!(
        dual.ips,
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert_eq!(dual.node.as_deref(), Some("n1"));
    let ports: Vec<_> = dual
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.protocol, p.port))
        .collect();
    assert_eq!(
        ports,
        vec![("http", Protocol::Tcp, 8080), ("dns", Protocol::Udp, 53)]
    );
    let old = c.pod(&Key::new("default", "old")).unwrap();
    assert_eq!(old.ips, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    assert!(old.host_network);
    assert!(
        c.pod_by_ip("10.0.0.2".parse().unwrap()).is_none(),
        "host-network addresses are not pods'"
    );
    assert!(
        c.pod(&Key::new("default", "pending"))
            .unwrap()
            .ips
            .is_empty()
    );
}

#[test]
fn nodes_take_internal_and_external_addresses() {
    let text = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
status:
  addresses:
  - {type: Hostname, address: n1}
  - {type: InternalIP, address: 172.18.0.2}
  - {type: ExternalIP, address: "2001:db8::2"}
"#;
    let (c, _, errors) = load(text);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(c.node("n1").unwrap().ips.len(), 2);
    assert_eq!(
        c.node_by_ip("172.18.0.2".parse().unwrap()).unwrap().name,
        "n1"
    );
}

#[test]
fn manifest_formats() {
    // JSON: an object, then a v1 List; a typed list whose items omit kind; an array.
    let json = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}
{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"b"}}]}"#;
    let (c, notes, errors) = load(json);
    assert!(
        errors.is_empty() && notes.is_empty(),
        "{errors:#?} {notes:?}"
    );
    assert_eq!(c.namespaces().count(), 2);
    let array = r#"[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"c"}}]"#;
    assert_eq!(load(array).0.namespaces().count(), 1);

    let yaml = r#"# leading comment
apiVersion: v1
kind: PodList
items:
- metadata: {name: a, namespace: x}
- metadata: {name: b, namespace: x}
--- # a document marker with a comment
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: x}
---
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: 5}
---
this: [is not: valid yaml
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicyList
items:
- metadata: {name: q, namespace: x}
  spec: {podSelector: {}}
...
"#;
    let (c, notes, errors) = load(yaml);
    assert_eq!(c.pods_in("x").count(), 2);
    assert!(c.policy(&Key::new("x", "q")).is_some());
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("apps/v1 deployment x/web"), "{notes:?}");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        msgs[0].starts_with("document 4: networkpolicy x/p: "),
        "{msgs:?}"
    );
    assert!(msgs[1].starts_with("document 5: document: "), "{msgs:?}");
}

#[test]
fn ipv6_blocks_and_family_mismatch() {
    let p = policy("egress:\n- to: [{ipBlock: {cidr: 'fd00::/64', except: ['fd00::/80']}}]");
    let Peer::IpBlock(b) = &p.egress.unwrap()[0].peers[0] else {
        panic!()
    };
    assert!(b.contains("fd00:0:0:0:1::1".parse().unwrap()));
    assert!(!b.contains("fd00::1".parse().unwrap()));
    assert!(!b.contains("10.0.0.1".parse().unwrap()));
    let (_, _, errors) = load(&np(
        "mixed",
        "egress:\n- to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]",
    ));
    assert!(
        matches!(&errors[0], LoadError::Invalid(e) if matches!(e.reason, Reason::ExceptOutsideCidr { .. }))
    );
}

#[test]
fn an_unreadable_object_is_named_when_it_can_be() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: 80}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {labels: [a]}\n---\n{unclosed\n";
    let m = manifest::parse(text);
    assert!(m.objects.is_empty());
    let ids: Vec<Option<manifest::ObjectId>> = m.errors.iter().map(|e| e.object.clone()).collect();
    assert_eq!(
        ids,
        [
            Some(manifest::ObjectId {
                kind: "NetworkPolicy".into(),
                namespace: "x".into(),
                name: "deny-all".into(),
            }),
            None, // no name
            None, // not even YAML
        ],
        "{:#?}",
        m.errors
    );
}

//! Compiler tests: the IR against the evaluator on every case, set contents, named ports,
//! diffs, and the cost at benchmark scale.

use std::time::{Duration, Instant};

use super::*;
use crate::policy::cases::{self, Origin};
use crate::policy::cidr;
use crate::policy::eval::{self, Endpoint};
use crate::policy::manifest;
use crate::policy::model::{LabelSelector, NamedPort, Namespace, Node, Pod, Policy, PortSpec};

/// Every address the comparison uses: the pods, both nodes, an outside host.
fn addresses() -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = cases::pods()
        .iter()
        .map(|k| cases::pod_ip(&k.namespace, &k.name))
        .collect();
    v.extend(cases::node_ips(1));
    v.extend(cases::node_ips(2));
    v.push(cases::OUTSIDE);
    v
}

/// What the two nodes together let through: the source's node checks its egress, the
/// destination's node its ingress (each `allows` is true for what is not local to it).
fn kernel(nodes: &[Compiled], src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> bool {
    nodes.iter().all(|c| c.allows(src, dst, protocol, port))
}

fn disagreements(cluster: &Cluster) -> Vec<String> {
    let nodes: Vec<Compiled> = cases::NODES.iter().map(|n| compile(cluster, n)).collect();
    let mut out = Vec::new();
    let addrs = addresses();
    for &src in &addrs {
        for &dst in &addrs {
            for protocol in Protocol::ALL {
                for port in [79, 80, 81, 82, 8080] {
                    let (s, d) = (Endpoint::Ip(src), Endpoint::Ip(dst));
                    let want = eval::allowed(cluster, &s, &d, protocol, port).unwrap();
                    let got = kernel(&nodes, src, dst, protocol, port);
                    if got != want.allowed {
                        out.push(format!(
                            "{src} -> {dst} {protocol}/{port}: IR {got}, evaluator {want}"
                        ));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn ir_agrees_with_the_evaluator_on_every_case() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases::all() {
        case.run(|cluster, _probe| {
            checked += 1;
            for d in disagreements(cluster) {
                failures.push(format!("{}: {d}", case.name));
            }
        })
        .unwrap();
    }
    assert!(checked > 60);
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
}

fn run_case(name: &str) -> Cluster {
    let case = cases::all()
        .into_iter()
        .find(|c| c.name == name)
        .expect(name);
    let mut cluster = cases::fixture();
    for step in &case.steps {
        for change in &step.changes {
            change.apply(&mut cluster).unwrap();
        }
    }
    cluster
}

#[test]
fn ip_block_except_becomes_the_exact_cover() {
    let cluster =
        run_case("should enforce except clause while egress access to server in CIDR block");
    let xa = cases::pod_ip("x", "a");
    let node = compile(
        &cluster,
        cluster.pod_by_ip(xa).unwrap().node.as_deref().unwrap(),
    );
    let rules = node.pod_by_ip(xa).unwrap().egress.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    let Peers::Set(name) = &rules[0].peers else {
        panic!("{rules:?}")
    };
    let set = &node.sets[name];
    let xb = cases::pod_ip("x", "b");
    let expected = cidr::subtract("0.0.0.0/4".parse().unwrap(), &[IpNet::from(xb)]);
    assert_eq!(set.cidrs, expected);
    assert_eq!(set.cidrs.len(), 28, "a /4 minus one /32");
    assert!(!set.contains(xb));
    assert!(set.contains(cases::pod_ip("x", "c")));
    assert_eq!(set.v4().count(), 28);
    assert_eq!(set.v6().count(), 0);
    assert!(
        matches!(&set.source, SetSource::Peer { namespace, peer: Peer::IpBlock(_) } if namespace.is_empty())
    );
}

#[test]
fn sets_are_shared_by_definition() {
    let mut cluster = cases::fixture();
    let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: one, namespace: x}
spec:
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: y}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 81}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: three, namespace: y}
spec:
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: y}}}]}]
"#;
    let (_, errors) = manifest::load_into(&mut cluster, text);
    assert!(errors.is_empty(), "{errors:?}");
    let mut all_sets = BTreeSet::new();
    for n in cases::NODES {
        all_sets.extend(
            compile(&cluster, n)
                .sets
                .into_values()
                .map(|s| (s.name, s.source, s.cidrs)),
        );
    }
    // pod=b in x, pod=b in y (a bare podSelector is per namespace), ns=y (one for both).
    assert_eq!(all_sets.len(), 3, "{all_sets:#?}");
    let ns_y = all_sets
        .iter()
        .find(|(_, s, _)| {
            matches!(
                s,
                SetSource::Peer {
                    peer: Peer::Namespaces(_),
                    ..
                }
            )
        })
        .unwrap();
    let y_ips: BTreeSet<IpNet> = ["a", "b", "c"]
        .iter()
        .map(|p| cases::pod_ip("y", p).into())
        .collect();
    assert_eq!(ns_y.2.iter().copied().collect::<BTreeSet<_>>(), y_ips);
    // Names are stable: the same source always hashes to the same name.
    let again = compile(&cluster, "node-1");
    assert!(
        again
            .sets
            .keys()
            .all(|k| all_sets.iter().any(|(n, _, _)| n == k))
    );
}

#[test]
fn ingress_named_port_the_pod_lacks_isolates_without_rules() {
    let mut cluster = cases::fixture();
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: nope}, {port: serve-81-udp, protocol: UDP}]}]\n";
    let (_, errors) = manifest::load_into(&mut cluster, text);
    assert!(errors.is_empty());
    let c = compile(&cluster, "node-1");
    let xa = c.pods.get(&Key::new("x", "a")).unwrap();
    let rules = xa.ingress.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    let udp81 = PortRange {
        protocol: Protocol::Udp,
        first: 81,
        last: 81,
    };
    assert_eq!(rules[0].ports, Ports::Only(vec![udp81]));
    assert_eq!(rules[0].peers, Peers::Any);
    assert_eq!((rules[0].policy.name.as_str(), rules[0].rule), ("p", 0));
    assert_eq!(xa.egress, None);

    cluster.upsert_policy(Policy {
        namespace: "x".into(),
        name: "p".into(),
        pod_selector: LabelSelector::labels([("pod", "a")]),
        ingress: Some(vec![Rule {
            peers: vec![],
            ports: vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortMatch::Named("nope".into()),
            }],
        }]),
        egress: None,
    });
    let c = compile(&cluster, "node-1");
    assert_eq!(
        c.pods[&Key::new("x", "a")].ingress,
        Some(vec![]),
        "isolated, nothing allowed"
    );
}

#[test]
fn egress_named_port_splits_destinations_by_number() {
    let cluster = run_case("should resolve an egress named port per destination pod");
    let c = compile(&cluster, "node-1");
    let rules = c.pods[&Key::new("x", "a")].egress.as_ref().unwrap();
    let mut by_port = BTreeMap::new();
    for r in rules {
        let (Peers::Set(name), Ports::Only(ports)) = (&r.peers, &r.ports) else {
            panic!("{r:?}")
        };
        assert_eq!(ports.len(), 1);
        by_port.insert(ports[0].first, c.sets[name].cidrs.clone());
    }
    assert_eq!(by_port.keys().copied().collect::<Vec<_>>(), vec![80, 8080]);
    assert_eq!(by_port[&8080], vec![IpNet::from(cases::pod_ip("y", "b"))]);
    assert_eq!(by_port[&80].len(), 8);
    assert!(!by_port[&80].contains(&IpNet::from(cases::pod_ip("y", "b"))));
}

#[test]
fn diff_reports_set_elements_and_pods() {
    let mut cluster = cases::fixture();
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]\n";
    manifest::load_into(&mut cluster, text);
    let before = compile(&cluster, "node-1");
    assert!(compile(&cluster, "node-1").diff(&before).is_empty());

    cluster.set_pod_labels(
        &Key::new("x", "c"),
        cases::labels(&[("pod", "c"), ("role", "client")]),
    );
    let after = compile(&cluster, "node-1");
    let d = after.diff(&before);
    assert!(d.sets_added.is_empty() && d.sets_removed.is_empty() && d.pods_changed.is_empty());
    assert_eq!(d.sets_changed.len(), 1);
    assert_eq!(
        d.sets_changed[0].added,
        vec![IpNet::from(cases::pod_ip("x", "c"))]
    );
    assert!(d.sets_changed[0].removed.is_empty());

    cluster.remove_pod(&Key::new("x", "a"));
    let d = compile(&cluster, "node-1").diff(&after);
    assert_eq!(d.pods_removed, vec![Key::new("x", "a")]);
    cluster.remove_policy(&Key::new("x", "p"));
    let d = compile(&cluster, "node-1").diff(&after);
    assert_eq!(d.sets_removed.len(), 1);
    assert!(
        !d.pods_changed.is_empty(),
        "pods of x are no longer isolated"
    );
}

#[test]
fn node_traffic_and_loopback_are_always_allowed() {
    let cluster = run_case("should stop enforcing policies after they are deleted");
    // Before the deletion step: build the deny-all state again.
    let mut cluster = cluster;
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\nspec: {policyTypes: [Ingress, Egress]}\n";
    manifest::load_into(&mut cluster, text);
    let c = compile(&cluster, "node-1");
    let xa = cases::pod_ip("x", "a");
    assert!(c.node_ips.contains(&cases::node_ips(1)[0]));
    for ip in cases::node_ips(1) {
        assert!(c.allows(ip, xa, Protocol::Tcp, 10250));
        assert!(c.allows(xa, ip, Protocol::Udp, 53));
    }
    assert!(!c.allows(cases::node_ips(2)[0], xa, Protocol::Tcp, 80));
    assert!(!c.allows(xa, cases::OUTSIDE, Protocol::Tcp, 443));
    assert!(c.allows(xa, xa, Protocol::Tcp, 80));
}

/// Benchmark scale: 1 000 pods in 10 namespaces, 200 policies of every kind, all pods local
/// (the worst case for one node).
fn benchmark_cluster() -> Cluster {
    let mut c = Cluster::new();
    c.upsert_node(Node {
        name: "n".into(),
        ips: vec!["172.18.0.2".parse().unwrap()],
    });
    for n in 0..10 {
        let ns = format!("ns{n}");
        c.upsert_namespace(Namespace::new(
            &ns,
            cases::labels(&[("team", &format!("t{}", n % 3))]),
        ));
        for p in 0..100 {
            let i = n * 100 + p;
            let tier = ["web", "db", "cache"][p % 3];
            c.upsert_pod(Pod {
                namespace: ns.clone(),
                name: format!("p{p}"),
                labels: cases::labels(&[("app", &format!("a{}", p % 10)), ("tier", tier)]),
                ips: vec![IpAddr::from([
                    10,
                    244,
                    (i / 250) as u8,
                    (i % 250) as u8 + 2,
                ])],
                node: Some("n".into()),
                ports: vec![NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080 + (p % 2) as u16,
                }],
                host_network: false,
            });
        }
        let mut text = String::new();
        for k in 0..20 {
            let spec = match k % 5 {
                0 => format!("podSelector: {{matchLabels: {{app: a{k}}}}}\ningress: [{{from: [{{podSelector: {{matchLabels: {{tier: web}}}}}}]}}]"),
                1 => format!("podSelector: {{matchLabels: {{tier: db}}}}\ningress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: a{k}}}}}}}], ports: [{{port: 5432}}]}}]", k % 3),
                2 => "podSelector: {}\npolicyTypes: [Egress]\negress: [{to: [{podSelector: {matchLabels: {tier: db}}}], ports: [{port: http}]}, {to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.244.0.0/16]}}]}]".to_string(),
                3 => format!("podSelector: {{matchLabels: {{tier: cache}}}}\ningress: [{{from: [{{namespaceSelector: {{matchExpressions: [{{key: team, operator: NotIn, values: [t{}]}}]}}}}], ports: [{{port: 6379, endPort: 6390}}, {{port: http}}]}}]", k % 3),
                _ => "podSelector: {matchLabels: {tier: web}}\ningress: [{}]".to_string(),
            };
            let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
            text += &format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: {ns}}}\nspec:\n{spec}"
            );
        }
        let (_, errors) = manifest::load_into(&mut c, &text);
        assert!(errors.is_empty(), "{errors:?}");
    }
    c
}

#[test]
fn benchmark_scale_compiles_quickly() {
    let cluster = benchmark_cluster();
    assert_eq!(
        (cluster.pods().count(), cluster.policies().count()),
        (1000, 200)
    );
    let start = Instant::now();
    let c = compile(&cluster, "n");
    let took = start.elapsed();
    let rules: usize = c
        .pods
        .values()
        .map(|p| {
            p.ingress
                .iter()
                .chain(&p.egress)
                .map(Vec::len)
                .sum::<usize>()
        })
        .sum();
    eprintln!(
        "compile: {} pods, {} sets, {rules} rules in {took:?}",
        c.pods.len(),
        c.sets.len()
    );
    assert_eq!(c.pods.len(), 1000);
    // Well under 100 ms optimised; a debug build (what `cargo test` runs) gets more room.
    let limit = if cfg!(debug_assertions) { 1000 } else { 100 };
    assert!(took < Duration::from_millis(limit), "{took:?}");
    // Spot-check the IR against the evaluator on a sample of pairs.
    let ips: Vec<IpAddr> = cluster
        .pods()
        .step_by(37)
        .flat_map(|p| p.ips.clone())
        .collect();
    for &s in &ips {
        for &d in &ips {
            for port in [80, 5432, 6380, 8080, 8081] {
                let want = eval::allowed(
                    &cluster,
                    &Endpoint::Ip(s),
                    &Endpoint::Ip(d),
                    Protocol::Tcp,
                    port,
                )
                .unwrap();
                assert_eq!(
                    c.allows(s, d, Protocol::Tcp, port),
                    want.allowed,
                    "{s} -> {d} {port}: {want}"
                );
            }
        }
    }
}

#[test]
fn every_case_origin_is_cited() {
    for case in cases::all() {
        assert!(
            !case.name.is_empty() && case.name.starts_with("should"),
            "{}",
            case.name
        );
        if let Origin::Podnet(related) = case.origin {
            assert!(!related.is_empty());
        }
    }
}

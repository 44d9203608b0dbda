use super::*;

/// The dump of a scratch namespace's ruleset (podnetd's table and `FOREIGN_SCRIPT` of the
/// integration tests' `firewall` module), one message a line, as the kernel (6.18) sent it.
pub(crate) const RULESET: &str = include_str!("testdata/ruleset.hex");

fn ruleset() -> Ruleset {
    captured_ruleset()
}

const IP: u8 = 2;
const INET: u8 = 1;

#[test]
fn tables_chains_and_hooks() {
    let rs = ruleset();
    let mut tables: Vec<(u8, &str)> = rs
        .tables
        .iter()
        .map(|t| (t.family, t.name.as_str()))
        .collect();
    tables.sort();
    assert_eq!(
        tables,
        [
            (INET, "custom"),
            (INET, "podnet"),
            (IP, "kube"),
            (IP, "nat")
        ]
    );
    let post = rs.chain(IP, "nat", "POSTROUTING").unwrap();
    assert_eq!(
        post.base,
        Some(ChainHook {
            kind: "nat".into(),
            hook: 4,
            priority: 100,
            policy: VERDICT_ACCEPT,
        })
    );
    assert_eq!(
        rs.chain(IP, "kube", "POSTROUTING")
            .unwrap()
            .base
            .as_ref()
            .unwrap()
            .priority,
        101
    );
    assert_eq!(rs.chain(IP, "kube", "KUBE-POSTROUTING").unwrap().base, None);
    let guard = rs.chain(INET, "podnet", "tunnel-guard").unwrap();
    assert_eq!(
        guard.base.as_ref().map(|b| (b.hook, b.priority)),
        Some((1, -10))
    );
}

#[test]
fn a_rule_is_its_expressions_at_the_kernels_level() {
    let rs = ruleset();
    let docker: Vec<&Rule> = rs.rules_of(IP, "nat", "POSTROUTING").collect();
    assert_eq!(docker.len(), 1);
    let e = &docker[0].exprs;
    assert_eq!(
        e[..2],
        [
            Expr::Payload {
                dreg: 1,
                base: 1,
                offset: 12,
                len: 3
            },
            Expr::Cmp {
                sreg: 1,
                op: CMP_EQ,
                data: vec![10, 244, 3]
            },
        ]
    );
    assert!(matches!(
        e[2],
        Expr::Meta {
            key: 7,
            dreg: Some(1),
            sreg: None
        }
    ));
    match &e[3] {
        Expr::Cmp {
            op: CMP_NEQ, data, ..
        } => assert!(data.starts_with(b"docker0\0")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(e[4], Expr::Counter { .. }));
    assert_eq!(e[5], Expr::Masq { flags: 0 });
    assert!(docker[0].handle > 0);
    // A jump, and kube-proxy's mark test.
    let kube: Vec<&Rule> = rs.rules_of(IP, "kube", "POSTROUTING").collect();
    assert_eq!(
        kube[1].exprs,
        [Expr::Immediate {
            dreg: REG_VERDICT,
            data: Data::Verdict(VERDICT_JUMP, Some("KUBE-POSTROUTING".into()))
        }]
    );
    let mark = rs.rules_of(IP, "kube", "KUBE-POSTROUTING").next().unwrap();
    assert!(
        mark.exprs
            .iter()
            .any(|e| matches!(e, Expr::Bitwise { mask, .. } if *mask == 0x4000u32.to_ne_bytes()))
    );
    // SNAT to an address loaded by an immediate.
    let snat = rs.rules_of(INET, "custom", "CUSTOM").next().unwrap();
    assert!(
        snat.exprs
            .iter()
            .any(|e| matches!(e, Expr::Nat { kind: NAT_SNAT, .. }))
    );
    assert!(snat.exprs.iter().any(
        |e| matches!(e, Expr::Immediate { data: Data::Value(v), .. } if *v == [198, 18, 0, 11])
    ));
}

#[test]
fn sets_come_with_their_elements_anonymous_ones_too() {
    let rs = ruleset();
    let pods = rs.set(INET, "custom", "pods", None).unwrap();
    assert_eq!((pods.key_type, pods.key_len), (7, 4));
    assert_ne!(pods.flags & SET_INTERVAL, 0);
    let mut keys: Vec<(Vec<u8>, bool)> = pods
        .elements
        .iter()
        .map(|e| (e.key.clone(), e.flags & ELEM_INTERVAL_END != 0))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            (vec![0, 0, 0, 0], true),
            (vec![10, 244, 0, 0], false),
            (vec![10, 245, 0, 0], true)
        ]
    );
    let lookup = rs
        .rules_of(INET, "custom", "POSTROUTING")
        .flat_map(|r| &r.exprs)
        .find_map(|e| match e {
            Expr::Lookup { set, .. } => Some(set.clone()),
            _ => None,
        })
        .unwrap();
    let anonymous = rs.set(INET, "custom", &lookup, None).unwrap();
    assert_ne!(anonymous.flags & SET_ANONYMOUS, 0);
    assert!(anonymous.elements.iter().any(|e| e.key == [10, 96, 0, 0]));
    // The guard's peers.
    let guard = rs.set(INET, "podnet", "tunnel-peers", None).unwrap();
    let mut peers: Vec<&[u8]> = guard.elements.iter().map(|e| e.key.as_slice()).collect();
    peers.sort();
    assert_eq!(peers, [[198, 18, 0, 12], [198, 18, 0, 13]]);
}

#[test]
fn comments_and_counters() {
    let rs = ruleset();
    let guard = rs.rules_of(INET, "podnet", "tunnel-guard").next().unwrap();
    assert_eq!(
        guard.comment().as_deref(),
        Some("tunnel packets from a non-peer")
    );
    assert_eq!(guard.counter(), Some((0, 0)));
    let sums = counters_by_comment(&rs.rules);
    let (packets, bytes) = sums["x/allow-b egress rule 0"];
    assert!(packets >= 12 && bytes >= packets * 84, "{sums:?}");
    // Two rules, one comment: the sum of both.
    let each: Vec<(u64, u64)> = rs
        .rules_of(INET, "custom", "out")
        .map(|r| r.counter().unwrap())
        .collect();
    assert_eq!(each.len(), 2);
    assert_eq!(packets, each[0].0 + each[1].0);
    // Comments of other rules: as many as there are commented rules.
    assert!(!sums.contains_key("pod to cluster: keep the pod address"));
}

#[test]
fn a_transaction_reads_as_the_objects_it_makes() {
    let mut b = super::super::Batch::new(INET, "t");
    b.add_table();
    b.add_chain(
        "c",
        Some(super::super::BaseChain {
            kind: "nat",
            hook: super::super::Hook::Postrouting,
            priority: 100,
        }),
    );
    let nets: [ipnet::IpNet; 1] = ["10.0.0.0/8".parse().unwrap()];
    let set = b.anonymous_prefixes(&nets);
    let rule = [
        super::super::Expr::ipv4_addr(false),
        super::super::Expr::Lookup { set, invert: true },
        super::super::Expr::Counter,
        super::super::Expr::Masquerade { fully_random: true },
    ];
    b.add_rule("c", &rule, Some("hi"));
    let rs = Ruleset::from_datagram(&b.finish().bytes).unwrap();
    assert_eq!(rs.tables.len(), 1);
    assert_eq!(rs.sets.len(), 1);
    assert_eq!(rs.sets[0].elements.len(), 3);
    let r = &rs.rules[0];
    assert_eq!(r.comment().as_deref(), Some("hi"));
    assert!(
        matches!(&r.exprs[1], Expr::Lookup { set, set_id: Some(_), flags: LOOKUP_INVERT, .. } if set == "__set%d")
    );
    assert_eq!(r.exprs[3], Expr::Masq { flags: 0x10 });
    let shape = rs.shape(INET, "t").unwrap();
    let (_, rules) = &shape.chains["c"];
    assert_eq!(rules[0].exprs[1].1.as_ref().unwrap().elements.len(), 3);
}

#[test]
fn broken_messages_are_errors_never_panics() {
    let msgs = hex_lines(RULESET);
    for m in &msgs {
        for cut in 0..m.len() {
            let mut short = m[..cut].to_vec();
            // Keep the header's length right, so the cut reaches the attributes.
            if cut >= 4 {
                short[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            let _ = parse_messages(&[short]);
        }
        for at in 16..m.len() {
            let mut flipped = m.clone();
            flipped[at] ^= 0xff;
            let _ = parse_messages(&[flipped]);
        }
    }
    // A rule without its table names what is missing.
    let mut b = Vec::new();
    b.extend_from_slice(&24u32.to_ne_bytes());
    b.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE).to_ne_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&[INET, 0, 0, 0]);
    b.extend_from_slice(&[8, 0, 2, 0, b'c', 0, 0, 0]);
    let err = parse_messages(&[b]).unwrap_err().to_string();
    assert!(err.contains("no rule table"), "{err}");
}

#[test]
fn a_dump_request_names_what_it_narrows_to() {
    let r = request(NFT_MSG_GETSETELEM, INET, 7, &[(1, "podnet"), (2, "s")]);
    assert_eq!(
        u32::from_ne_bytes(r[..4].try_into().unwrap()) as usize,
        r.len()
    );
    assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0a0d);
    assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301);
    let attrs: Vec<(u16, String)> = raw::attributes(&r[20..])
        .map(|(k, v)| (k, string(v)))
        .collect();
    assert_eq!(attrs, [(1, "podnet".to_string()), (2, "s".to_string())]);
}

/// Every element of a list reads back, whatever the list's attribute types: podnet numbers
/// them 1, 2, 3 as nft does, the kernel's dumps type each one NFTA_LIST_ELEM (the parser once
/// kept only the latter, and read one key of a transaction's many).
#[test]
fn every_element_of_a_transactions_list_reads_back() {
    let mut b = super::super::Batch::new(INET, "t");
    b.add_table();
    let set = b.add_set(&super::super::SetSpec {
        name: "s",
        key_type: 7,
        key_len: 4,
    });
    let keys: [&[u8]; 3] = [&[198, 18, 0, 1], &[198, 18, 0, 2], &[198, 18, 0, 3]];
    b.add_elements(&set, &keys);
    let rs = Ruleset::from_datagram(&b.finish().bytes).unwrap();
    let read: Vec<&[u8]> = rs.sets[0]
        .elements
        .iter()
        .map(|e| e.key.as_slice())
        .collect();
    assert_eq!(read, keys);
}

/// A catch-all element (`*`: flags only, no key), as another program's set may hold, parses;
/// an element with neither key nor catch-all flag is an error that names the key.
#[test]
fn a_catch_all_element_has_no_key() {
    let catch_all = [8, 0, 3, 0, 0, 0, 0, 2];
    let e = element(&catch_all).unwrap();
    assert!(e.key.is_empty());
    assert_eq!(e.flags, ELEM_CATCHALL);
    let err = element(&[8, 0, 3, 0, 0, 0, 0, 0]).unwrap_err().to_string();
    assert!(err.contains("element key"), "{err}");
}

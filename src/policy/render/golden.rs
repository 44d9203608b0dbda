//! The policy table's transactions against the bytes nft 1.0.6 sends for the same text
//! (`testdata/policy-*.nft`, captured with `strace -e trace=sendmsg -e write=all nft -f
//! FILE`, one message a line in `*.nft-1.0.6.hex`).

use super::*;
use crate::kernel::nft::dump::hex_lines;
use crate::policy::compile::PortRange;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nets(v: &[&str]) -> Vec<IpNet> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn opts() -> Options {
    Options {
        bridge: "cni0".into(),
        ipv4: true,
        ipv6: true,
        log_group: Some(5),
    }
}

fn allow(peer: Option<(bool, bool, &str)>, port: Option<(Protocol, u16, u16)>, c: &str) -> Rule {
    Rule {
        peer: peer.map(|(v4, source, set)| SetMatch {
            v4,
            source,
            set: set.into(),
        }),
        port: port.map(|(protocol, first, last)| PortRange {
            protocol,
            first,
            last,
        }),
        log_group: None,
        action: if c.contains("egress") {
            Action::Return
        } else {
            Action::Accept
        },
        comment: c.into(),
    }
}

fn drop(log_group: Option<u16>, c: &str) -> Rule {
    Rule {
        peer: None,
        port: None,
        log_group,
        action: Action::Drop,
        comment: c.into(),
    }
}

/// Every kind of object and match the renderer writes: interval sets of both families (one
/// empty, neighbours not merged), verdict maps (one empty), allow rules with and without a
/// peer set, single ports, a range, a whole protocol, a logged and a silent drop.
pub(super) fn before() -> Ruleset {
    let mut rs = Ruleset::default();
    rs.sets.insert(
        "pn-a-4".into(),
        nets(&["10.0.0.0/24", "10.244.2.2/32", "10.244.2.3/32"]),
    );
    rs.sets.insert(
        "pn-a-6".into(),
        nets(&["fd10:244::2/128", "fd10:244:0:100::/56"]),
    );
    rs.sets.insert("pn-e-4".into(), vec![]);
    let jump = |v: &[(&str, &str)]| -> BTreeMap<IpAddr, String> {
        v.iter().map(|(a, c)| (ip(a), c.to_string())).collect()
    };
    rs.maps.insert(
        "ingress-4",
        jump(&[("10.244.1.2", "in-1"), ("10.244.1.3", "in-1")]),
    );
    rs.maps
        .insert("ingress-6", jump(&[("fd10:244:0:1::2", "in-1")]));
    rs.maps.insert("egress-4", jump(&[("10.244.1.2", "eg-1")]));
    rs.maps.insert("egress-6", BTreeMap::new());
    rs.chains.insert(
        "in-1".into(),
        vec![
            allow(
                Some((true, true, "pn-a-4")),
                Some((Protocol::Tcp, 80, 80)),
                "x/a ingress rule 0",
            ),
            allow(
                Some((false, true, "pn-a-6")),
                Some((Protocol::Udp, 81, 82)),
                "x/a ingress rule 0",
            ),
            allow(None, Some((Protocol::Tcp, 0, 65535)), "x/b ingress rule 1"),
            drop(Some(5), "ingress isolated by x/a,x/b"),
        ],
    );
    rs.chains.insert(
        "eg-1".into(),
        vec![
            allow(
                Some((true, false, "pn-e-4")),
                Some((Protocol::Sctp, 0, 65535)),
                "x/c egress rule 0",
            ),
            allow(None, None, "x/c egress rule 1"),
            drop(None, "egress isolated by x/c"),
        ],
    );
    rs
}

/// `before` after a policy went (in-1, eg-1, pn-a-6) and another came (in-2, pn-n-4), and
/// set elements changed both ways (pn-e-4 empty before).
pub(super) fn after() -> Ruleset {
    let mut rs = before();
    rs.sets.insert(
        "pn-a-4".into(),
        nets(&["10.244.2.3/32", "10.244.2.9/32", "10.244.3.0/24"]),
    );
    rs.sets.remove("pn-a-6");
    rs.sets.insert("pn-e-4".into(), nets(&["10.244.7.0/24"]));
    rs.sets.insert("pn-n-4".into(), nets(&["10.244.5.5/32"]));
    rs.chains.clear();
    rs.chains.insert(
        "in-2".into(),
        vec![
            allow(
                Some((true, true, "pn-n-4")),
                Some((Protocol::Tcp, 8080, 8080)),
                "y/n ingress rule 0",
            ),
            drop(Some(5), "ingress isolated by y/n"),
        ],
    );
    for m in rs.maps.values_mut() {
        m.clear();
    }
    let m = rs.maps.get_mut("ingress-4").unwrap();
    m.insert(ip("10.244.1.2"), "in-2".into());
    m.insert(ip("10.244.1.4"), "in-2".into());
    rs
}

/// The messages of a datagram, split at their lengths; the acknowledgement podnet asks for
/// on the last object message cleared (nft asks for none).
fn split(t: &nft::Transaction) -> Vec<Vec<u8>> {
    let b = &t.bytes;
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        out.push(b[at..at + len].to_vec());
        at += len.next_multiple_of(4);
    }
    let last = out.len() - 2;
    out[last][6] &= !4; // NLM_F_ACK
    out
}

#[test]
fn the_text_is_the_golden_script() {
    assert_eq!(
        full(&before(), &opts()),
        include_str!("../testdata/policy-full.nft")
    );
    assert_eq!(
        update(&before(), &after()),
        include_str!("../testdata/policy-update.nft")
    );
}

/// The whole table: every message as nft sends it for `policy-full.nft`, byte for byte.
#[test]
fn the_full_table_is_what_nft_sends() {
    let t = full_batch(&before(), &opts());
    let want = hex_lines(include_str!("../testdata/policy-full.nft-1.0.6.hex"));
    let have = split(&t);
    assert_eq!(have.len(), want.len(), "{:#?}", t.ops);
    for (i, (h, w)) in have.iter().zip(&want).enumerate() {
        let what = t.ops.get(i.wrapping_sub(1)).map_or("", |s| s);
        assert_eq!(hex(h), hex(w), "message {i}: {what}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// nft's message without `NFTA_SET_ELEM_LIST_SET_ID` (nft names a set that already exists by
/// the id its cache gave it as well as by name; podnet by name, which the kernel looks up
/// first), its sequence number set to `seq`.
fn without_set_id(msg: &[u8], seq: u32) -> Vec<u8> {
    let mut out = msg[..20].to_vec();
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    let mut at = 20;
    while at < msg.len() {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
        let next = (at + len.next_multiple_of(4)).min(msg.len());
        if kind != 4 {
            out.extend_from_slice(&msg[at..next]);
        }
        at = next;
    }
    let n = out.len() as u32;
    out[..4].copy_from_slice(&n.to_ne_bytes());
    out
}

/// An update: each message as nft sends it for `policy-update.nft` on top of the full table.
/// Two differences, both nft's cache at work: it names existing sets by id too (compared
/// without it), and it writes a new set's elements twice, right after the set (with the
/// zero-address end it writes into an empty interval set) and again where the script adds
/// them; podnet writes them once, where the script adds them, as nft's first message.
#[test]
fn an_update_is_what_nft_sends() {
    let t = update_batch(&before(), &after());
    let nft = hex_lines(include_str!("../testdata/policy-update.nft-1.0.6.hex"));
    let have = split(&t);
    // podnet's message i is nft's message MATCH[i], compared without its set id when `true`
    // (and with podnet's sequence number).
    const MATCH: [(usize, bool); 17] = [
        (0, false),  // batch begin
        (1, false),  // add set pn-n-4
        (3, false),  // delete ranges of pn-a-4
        (4, true),   // add ranges to pn-a-4
        (5, true),   // add ranges to pn-e-4 (empty before: with the zero end)
        (2, false),  // add ranges to pn-n-4 (new: with the zero end)
        (7, false),  // add chain in-2
        (8, false),  // its rules
        (9, false),  //
        (10, false), // delete egress-4 10.244.1.2
        (11, false), // delete ingress-4 elements
        (12, true),  // add ingress-4 elements
        (13, false), // delete ingress-6 element
        (14, false), // delete chain eg-1
        (15, false), // delete chain in-1
        (16, false), // delete set pn-a-6
        (17, false), // batch end
    ];
    assert_eq!(have.len(), MATCH.len(), "{:#?}", t.ops);
    assert_eq!(nft.len(), 18, "nft's capture");
    for (i, h) in have.iter().enumerate() {
        let (j, strip) = MATCH[i];
        let seq = u32::from_ne_bytes(h[8..12].try_into().unwrap());
        let w = nft_message(&nft[j], seq, strip);
        let what = t.ops.get(i.wrapping_sub(1)).map_or("", |s| s);
        assert_eq!(hex(h), hex(&w), "message {i}: {what}");
    }
}

/// nft's message with podnet's sequence number, without its set id if `strip`.
fn nft_message(msg: &[u8], seq: u32, strip: bool) -> Vec<u8> {
    if strip {
        return without_set_id(msg, seq);
    }
    let mut out = msg.to_vec();
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    out
}

#[test]
#[ignore = "prints the golden scripts: `cargo test --lib golden::print -- --ignored`"]
fn print() {
    std::fs::write("/tmp/policy-full.nft", full(&before(), &opts())).unwrap();
    std::fs::write("/tmp/policy-update.nft", update(&before(), &after())).unwrap();
}

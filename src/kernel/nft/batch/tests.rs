use super::*;

fn hex(s: &str) -> Vec<u8> {
    crate::kernel::nft::dump::hex_lines(s).concat()
}

/// The messages of a datagram, split at their lengths.
fn split(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        out.push(&b[at..at + len]);
        at += len.next_multiple_of(4);
    }
    out
}

/// The plugin's masquerade transaction, in the order nft sends it for the equivalent script.
fn pod_masq() -> Transaction {
    let mut b = Batch::new(NFPROTO_INET, "podnet-cni");
    b.add_table();
    let pods = b.add_set(&SetSpec {
        name: "masq-pods",
        key_type: TYPE_IPV4_ADDR,
        key_len: 4,
    });
    let base = BaseChain {
        kind: "nat",
        hook: Hook::Postrouting,
        priority: 101,
    };
    b.add_chain("postrouting", Some(base));
    b.flush_chain("postrouting");
    let nets: [Ipv4Net; 2] = [
        "10.244.0.0/16".parse().unwrap(),
        "224.0.0.0/4".parse().unwrap(),
    ];
    let excluded = b.anonymous_prefixes(&nets);
    let mut rule = Expr::nfproto_ipv4().to_vec();
    rule.push(Expr::ipv4_addr(true));
    rule.push(Expr::Lookup {
        set: pods.clone(),
        invert: false,
    });
    rule.push(Expr::ipv4_addr(false));
    rule.push(Expr::Lookup {
        set: excluded,
        invert: true,
    });
    rule.push(Expr::Masquerade {
        fully_random: false,
    });
    b.add_rule("postrouting", &rule, Some("pod ipMasq"));
    b.add_elements(&pods, &[&[10, 244, 1, 5]]);
    b.finish()
}

/// What nft 1.0.6 sends for
///
/// ```text
/// add table inet podnet-cni
/// add set inet podnet-cni masq-pods { type ipv4_addr; }
/// add chain inet podnet-cni postrouting { type nat hook postrouting priority srcnat + 1; policy accept; }
/// flush chain inet podnet-cni postrouting
/// add rule inet podnet-cni postrouting ip saddr @masq-pods ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade comment "pod ipMasq"
/// add element inet podnet-cni masq-pods { 10.244.1.5 }
/// ```
///
/// (captured with `strace -e write=3`), but for one difference: podnet asks for an
/// acknowledgement of the last message. The anonymous set (seq 5) is compared apart: nft adds
/// its own expression metadata to the set's user data.
const NFT_SENDS: [&str; 7] = [
    // seq 1
    "2c000000000a01000100000000000000010000000f000100706f646e65742d636e6900000800020000000000",
    // seq 2
    concat!(
        "60000000090a01040200000000000000010000000f000100706f646e65742d636e6900000e0002006d6173712d706f64",
        "7300000008000300000000000800040000000007080005000000000408000a00000000010a000d000004020000000000",
    ),
    // seq 3
    concat!(
        "58000000030a01040300000000000000010000000f000100706f646e65742d636e69000010000300706f7374726f7574",
        "696e6700080007006e61740008000500000000011400048008000100000000040800020000000065",
    ),
    // seq 4
    concat!(
        "34000000080a01000400000000000000010000000f000100706f646e65742d636e69000010000200706f7374726f7574",
        "696e6700",
    ),
    // seq 6
    concat!(
        "a40000000c0a01040600000000000000010000000f000100706f646e65742d636e6900000c0002005f5f736574256400",
        "08000400000000026c0003801800018008000300000000010c0001800800010000000000100002800c00018008000100",
        "0af400001800038008000300000000010c000180080001000af50000100004800c00018008000100e000000018000580",
        "08000300000000010c00018008000100f0000000",
    ),
    // seq 7
    concat!(
        "84010000060a010c0700000000000000010000000f000100706f646e65742d636e69000010000200706f7374726f7574",
        "696e67003c01048024000180090001006d6574610000000014000280080002000000000f08000100000000012c000180",
        "08000100636d700020000280080001000000000108000200000000000c0003800500010002000000340001800c000100",
        "7061796c6f6164002400028008000100000000010800020000000001080003000000000c080004000000000434000180",
        "0b0001006c6f6f6b757000002400028008000200000000010e0001006d6173712d706f64730000000800040000000001",
        "340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000001008000400",
        "00000004380001800b0001006c6f6f6b757000002800028008000200000000010c0001005f5f73657425640008000400",
        "00000002080005000000000114000180090001006d617371000000000400028011000700000b706f642069704d617371",
        "00000000",
    ),
    // seq 8
    concat!(
        "500000000c0a05040800000000000000010000000f000100706f646e65742d636e6900000e0002006d6173712d706f64",
        "73000000080004000000000114000380100001800c000180080001000af40105",
    ),
];

#[test]
fn the_plugin_masquerade_transaction_is_what_nft_sends() {
    let t = pod_masq();
    let msgs = split(&t.bytes);
    assert_eq!(msgs.len(), 10, "begin, eight messages, end");
    assert_eq!(msgs[0], hex("140000001000010000000000000000000000000a"));
    assert_eq!(msgs[9], hex("140000001100010009000000000000000000000a"));
    for (i, want) in [1, 2, 3, 4, 6, 7, 8].iter().zip(NFT_SENDS) {
        assert_eq!(hex(want), msgs[*i], "message {i}");
    }
    let anon = msgs[5];
    let want_head = hex(concat!(
        "090a01040500000000000000010000000f000100706f646e65742d636e6900000c0002005f5f73657425640008000300",
        "000000070800040000000007080005000000000408000a00000000020c0009800800010000000005",
    ));
    assert_eq!(&anon[4..4 + want_head.len()], &want_head[..]);
    assert_eq!(t.ops.len(), 8);
    assert_eq!(
        t.ops[5],
        "add elements of set __set%d (table inet podnet-cni)"
    );
}

#[test]
fn intervals_are_encoded_as_nft_does() {
    let p = |v: &[&str]| -> Vec<Ipv4Net> { v.iter().map(|s| s.parse().unwrap()).collect() };
    let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
    assert_eq!(
        interval_elements(&p(&["224.0.0.0/4", "10.244.0.0/16"])),
        vec![
            (ip("0.0.0.0"), true),
            (ip("10.244.0.0"), false),
            (ip("10.245.0.0"), true),
            (ip("224.0.0.0"), false),
            (ip("240.0.0.0"), true),
        ]
    );
    // From zero, to the end, overlapping and adjacent ranges merged, host bits ignored.
    assert_eq!(
        interval_elements(&p(&[
            "0.0.0.0/8",
            "240.0.0.0/4",
            "10.0.0.0/9",
            "10.128.0.1/9"
        ])),
        vec![
            (ip("0.0.0.0"), false),
            (ip("1.0.0.0"), true),
            (ip("10.0.0.0"), false),
            (ip("11.0.0.0"), true),
            (ip("240.0.0.0"), false),
        ]
    );
    assert_eq!(
        interval_elements(&p(&["0.0.0.0/0"])),
        vec![(ip("0.0.0.0"), false)]
    );
    assert!(interval_elements(&[]).is_empty());
}

#[test]
fn marks_counters_verdicts_and_random_masquerade_are_what_nft_sends() {
    let mut b = Batch::new(NFPROTO_INET, "t");
    b.add_table();
    let base = BaseChain {
        kind: "nat",
        hook: Hook::Postrouting,
        priority: 100,
    };
    b.add_chain("c", Some(base));
    let mark = 0x4000u32.to_ne_bytes().to_vec();
    b.add_rule(
        "c",
        &[
            Expr::Meta(META_MARK),
            Expr::Bitwise {
                mask: mark.clone(),
                xor: vec![0; 4],
            },
            Expr::Cmp(CmpOp::Eq, mark),
            Expr::Counter,
            Expr::Verdict(Verdict::Return),
        ],
        None,
    );
    b.add_rule("c", &[Expr::Masquerade { fully_random: true }], None);
    b.add_rule("c", &[Expr::Verdict(Verdict::Drop)], None);
    let t = b.finish();
    let msgs = split(&t.bytes);
    // nft 1.0.6 for: add table inet t; add chain inet t c { type nat hook postrouting priority
    // srcnat; policy accept; }; add rule inet t c meta mark & 0x00004000 == 0x00004000 counter
    // return; add rule inet t c masquerade fully-random; add rule inet t c drop (the last
    // message with the acknowledgement podnet asks for).
    let want = [
        "24000000000a010001000000000000000100000006000100740000000800020000000000",
        concat!(
            "48000000030a010402000000000000000100000006000100740000000600030063000000080007006e617400",
            "08000500000000011400048008000100000000040800020000000064",
        ),
        concat!(
            "08010000060a010c03000000000000000100000006000100740000000600020063000000e400048024000180",
            "090001006d6574610000000014000280080002000000000308000100000000014c0001800c00010062697477",
            "697365003c00028008000100000000010800020000000001080006000000000008000300000000040c000480",
            "08000100004000000c00058008000100000000002c00018008000100636d7000200002800800010000000001",
            "08000200000000000c0003800800010000400000140001800c000100636f756e7465720004000280300001800e",
            "000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100fffffffb",
        ),
        concat!(
            "44000000060a010c04000000000000000100000006000100740000000600020063000000200004801c000180",
            "090001006d617371000000000c0002800800010000000010",
        ),
        concat!(
            "58000000060a010c0500000000000000010000000600010074000000060002006300000034000480300001800e",
            "000100696d6d6564696174650000001c0002800800010000000000100002800c0002800800010000000000",
        ),
    ];
    assert_eq!(msgs.len(), 7);
    for (i, w) in want.iter().enumerate() {
        let mut w = hex(w);
        if i == want.len() - 1 {
            w[6] |= NLM_F_ACK as u8;
        }
        assert_eq!(msgs[i + 1], &w[..], "message {}", i + 1);
    }
}

#[test]
fn element_deletion_names_the_existing_set() {
    let mut b = Batch::new(NFPROTO_INET, "podnet");
    b.delete_elements(&SetRef::named("tunnel-peers"), &[&[198, 18, 0, 9]]);
    let t = b.finish();
    let msgs = split(&t.bytes);
    let d = msgs[1];
    assert_eq!(u16::from_ne_bytes([d[4], d[5]]), 0x0a0e, "DELSETELEM");
    assert_eq!(u16::from_ne_bytes([d[6], d[7]]), 0x0005, "REQUEST|ACK");
    assert!(
        d.windows(8).any(|w| w == hex("08000100c6120009")),
        "the key, as a data value"
    );
    assert_eq!(
        t.ops,
        ["delete elements of set tunnel-peers (table inet podnet)"]
    );
}

/// Prefix matches as nft 1.0.6 writes them (`nft --debug=netlink`): byte-aligned prefixes load
/// only their bytes; others, and `/0`, load the whole address and mask it.
#[test]
fn prefixes_are_matched_as_nft_does() {
    let p = |s: &str| -> IpNet { s.parse().unwrap() };
    let load = |offset, len| Expr::Payload {
        base: Base::Network,
        offset,
        len,
    };
    assert_eq!(
        Expr::prefix(p("10.244.3.0/24"), true, CmpOp::Eq),
        [load(12, 3), Expr::Cmp(CmpOp::Eq, vec![10, 244, 3])]
    );
    assert_eq!(
        Expr::prefix(p("224.0.0.0/4"), false, CmpOp::Neq),
        [
            load(16, 4),
            Expr::Mask(vec![0xf0, 0, 0, 0]),
            Expr::Cmp(CmpOp::Neq, vec![224, 0, 0, 0])
        ]
    );
    assert_eq!(
        Expr::prefix(p("0.0.0.0/0"), true, CmpOp::Eq),
        [
            load(12, 4),
            Expr::Mask(vec![0; 4]),
            Expr::Cmp(CmpOp::Eq, vec![0; 4])
        ]
    );
    // Host bits are dropped, as nft does.
    assert_eq!(
        Expr::prefix(p("fd10:244::1/56"), false, CmpOp::Eq),
        [
            load(24, 7),
            Expr::Cmp(CmpOp::Eq, vec![0xfd, 0x10, 0x02, 0x44, 0, 0, 0])
        ]
    );
    let mut mask = vec![0xff; 15];
    mask.push(0xfe);
    let mut net = vec![0x20, 0x01, 0, 0x02];
    net.resize(16, 0);
    assert_eq!(
        Expr::prefix(p("2001:2::/127"), true, CmpOp::Eq),
        [load(8, 16), Expr::Mask(mask), Expr::Cmp(CmpOp::Eq, net)]
    );
}

#[test]
fn a_table_is_asked_for_by_family_and_name() {
    // nlmsghdr (len 32, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE, NLM_F_REQUEST, seq 7),
    // nfgenmsg (inet), NFTA_TABLE_NAME "podnet".
    assert_eq!(
        get_table(NFPROTO_INET, "podnet", 7),
        hex("20000000010a01000700000000000000010000000b000100706f646e65740000")
    );
}

#[test]
fn ipv6_intervals_merge_and_reach_the_last_address() {
    let p = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    assert_eq!(
        intervals(&p(&["ff00::/8", "fd10:244::/56"])),
        vec![
            (ip("::"), true),
            (ip("fd10:244::"), false),
            (ip("fd10:244:0:100::"), true),
            (ip("ff00::"), false),
        ]
    );
    assert_eq!(
        intervals(&p(&["::/1", "8000::/1"])),
        vec![(ip("::"), false)]
    );
    // An anonymous set of IPv6 prefixes: ipv6_addr keys of 16 bytes.
    let mut b = Batch::new(NFPROTO_INET, "t");
    b.add_table();
    let set = b.anonymous_prefixes(&p(&["fd10:244::/56", "ff00::/8"]));
    assert_eq!(set.name, "__set%d");
    let t = b.finish();
    let bytes = &t.bytes;
    let key = [0xfd, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(bytes.windows(16).any(|w| w == key), "the prefix's start");
    assert!(
        bytes.windows(8).any(|w| w == [8, 0, 4, 0, 0, 0, 0, 8]),
        "key type ipv6_addr (8)"
    );
}

/// A big set's elements go in as many messages as their 16-bit list lengths need, each
/// range (start and end) in one message, and nothing lost.
#[test]
fn long_element_lists_are_cut_between_ranges() {
    let prefixes: Vec<IpNet> = (0..5000u32)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0af4_0000 + 2 * i), 32).unwrap()))
        .collect();
    let mut b = Batch::new(NFPROTO_INET, "t");
    b.add_ranges(&SetRef::named("s"), &prefixes, true);
    let t = b.finish();
    let msgs = split(&t.bytes);
    let elems = &msgs[1..msgs.len() - 1];
    assert!(elems.len() > 1, "one message cannot hold 10 001 elements");
    let mut count = 0;
    for (i, m) in elems.iter().enumerate() {
        // The list attribute follows the table and set names: find it by type.
        let mut at = 20;
        let list = loop {
            let len = u16::from_ne_bytes([m[at], m[at + 1]]) as usize;
            let kind = u16::from_ne_bytes([m[at + 2], m[at + 3]]) & 0x7fff;
            if kind == NFTA_SET_ELEM_LIST_ELEMENTS {
                break &m[at + 4..at + len];
            }
            at += len.next_multiple_of(4);
        };
        assert_eq!(
            list.len() + 4,
            u16::from_ne_bytes([m[at], m[at + 1]]) as usize
        );
        let mut n = 0;
        let mut last_is_end = false;
        let mut e = 0;
        while e < list.len() {
            let len = u16::from_ne_bytes([list[e], list[e + 1]]) as usize;
            last_is_end = list[e + 4..e + len]
                .windows(8)
                .any(|w| w == [8, 0, 3, 0, 0, 0, 0, 1]);
            n += 1;
            e += len.next_multiple_of(4);
        }
        assert!(last_is_end, "message {i} ends with a range's end");
        count += n;
    }
    assert_eq!(
        count,
        1 + 2 * 5000,
        "the zero end, then a start and an end each"
    );
    assert_eq!(t.ops.len(), elems.len());
    assert!(
        t.ops
            .iter()
            .all(|o| o == "add ranges of set s (table inet t)")
    );
}

/// Named interval sets: each prefix its own range, neighbours kept apart (an end and the next
/// start on the same address), sorted; the zero end only into an empty set and only when no
/// range starts at zero; no end after the family's last address.
#[test]
fn named_set_ranges_keep_each_prefix_apart() {
    let p = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
    let show = |prefixes: &[IpNet], first: bool| -> Vec<String> {
        ranges(prefixes, first)
            .iter()
            .map(|e| {
                let ip = match e.key.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(&e.key[..]).unwrap()),
                    _ => IpAddr::from(<[u8; 16]>::try_from(&e.key[..]).unwrap()),
                };
                format!("{ip}{}", if e.end { " end" } else { "" })
            })
            .collect()
    };
    assert_eq!(
        show(&p(&["10.244.2.3/32", "10.244.2.2/32"]), true),
        [
            "0.0.0.0 end",
            "10.244.2.2",
            "10.244.2.3 end",
            "10.244.2.3",
            "10.244.2.4 end"
        ]
    );
    assert_eq!(
        show(&p(&["10.244.2.2/32"]), false),
        ["10.244.2.2", "10.244.2.3 end"]
    );
    assert_eq!(
        show(&p(&["0.0.0.0/8", "255.255.255.255/32"]), true),
        ["0.0.0.0", "1.0.0.0 end", "255.255.255.255"]
    );
    assert_eq!(
        show(&p(&["fd10:244::1/128", "ffff::/16"]), true),
        [":: end", "fd10:244::1", "fd10:244::2 end", "ffff::"]
    );
    assert!(show(&[], true).is_empty());
}

/// Walks the attributes of a message (after the netlink and nfgen headers) and returns the
/// lengths of the element lists (NFTA_SET_ELEM_LIST_ELEMENTS, 3); every length must add up to
/// the message, as the kernel reads it.
fn element_lists(msg: &[u8]) -> Vec<usize> {
    let mut at = 16 + 4;
    let mut lists = Vec::new();
    while at < msg.len() {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]) & !NLA_F_NESTED;
        assert!(
            len >= 4 && at + len <= msg.len(),
            "attribute at {at} overruns"
        );
        if kind == 3 {
            lists.push(len);
        }
        at += len.next_multiple_of(4);
    }
    assert_eq!(at, msg.len(), "the attributes fill the message");
    lists
}

/// A tunnel guard of 5 001 peers: one element list would need 80 016 bytes, more than an
/// attribute's 16-bit length says; the keys go in messages the kernel can read whole.
#[test]
fn long_element_lists_are_split_into_messages_of_readable_length() {
    let keys: Vec<[u8; 4]> = (0..5001u32)
        .map(|i| (0xc612_0000 + i).to_be_bytes())
        .collect();
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    for delete in [false, true] {
        let mut b = Batch::new(NFPROTO_INET, "podnet");
        if delete {
            b.delete_elements(&SetRef::named("tunnel-peers"), &keys);
        } else {
            b.add_elements(&SetRef::named("tunnel-peers"), &keys);
        }
        let t = b.finish();
        let msgs = split(&t.bytes);
        // Batch begin and end around more than one message.
        assert!(msgs.len() > 2 + 1, "{} messages", msgs.len());
        let mut elements = 0;
        for m in &msgs[1..msgs.len() - 1] {
            let lists = element_lists(m);
            assert_eq!(lists.len(), 1);
            elements += (lists[0] - 4) / 16;
        }
        assert_eq!(elements, 5001, "every key sent once");
        assert_eq!(t.ops.len(), msgs.len() - 2);
    }
}

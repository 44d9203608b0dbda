//! Lease keys (`10.244.3.0-24&fd10:244:0:3::-64`) and values (flannel's lease JSON), as any
//! etcd client may have written them; and whole leases through the peer checks (`Checker`,
//! where `BackendData` is parsed per backend) and the `PeerSet` that follows them.

use ipnet::{Ipv4Net, Ipv6Net};
use podnet::config::NetworkConfig;
use podnet::lease::validate::{Checker, own_identities};
use podnet::lease::{Keepalive, Lease, LeaseAttrs, PeerSet, SubnetKey};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::Value;

use crate::support::{config, deep, ipv4, ipv6, json, nasty_string, prefix};

/// An octet as written: usually a number 0..=255, sometimes a spelling a parser may trip on.
fn octet() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<u8>().prop_map(|o| o.to_string()),
        1 => select(vec!["", "00", "010", "+1", "-0", "256", "999", "1a", " 1", "0x1"])
            .prop_map(String::from),
    ]
}

/// A prefix length as written, for `bits`-bit addresses.
fn len_text(bits: u8) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prefix(bits).prop_map(|l| l.to_string()),
        1 => select(vec!["", "024", "+24", "-1", "256", "4294967296", " 24", "24 ", "2_4"])
            .prop_map(String::from),
    ]
}

/// The IPv4 half: four octets and a length, or a well-formed network (so keys are accepted
/// often enough for the round trip to be exercised).
fn v4_part() -> impl Strategy<Value = String> {
    prop_oneof![
        (octet(), octet(), octet(), octet(), len_text(32))
            .prop_map(|(a, b, c, d, l)| format!("{a}.{b}.{c}.{d}-{l}")),
        (ipv4(), prefix(32)).prop_map(|(a, l)| {
            let n = Ipv4Net::new(a, l.min(32)).expect("prefix").trunc();
            format!("{}-{}", n.network(), n.prefix_len())
        }),
        Just("0.0.0.0-0".to_string()),
    ]
}

/// The IPv6 half: a network in canonical, upper-case or fully written form, or an address
/// with host bits, with any length.
fn v6_part() -> impl Strategy<Value = String> {
    (ipv6(), len_text(128), 0u8..4).prop_map(|(a, l, form)| {
        let addr = match form {
            0 => a.to_string(),
            1 => a.to_string().to_uppercase(),
            2 => a
                .segments()
                .iter()
                .map(|s| format!("{s:x}"))
                .collect::<Vec<_>>()
                .join(":"),
            _ => match l.parse::<u8>().ok().and_then(|l| Ipv6Net::new(a, l).ok()) {
                Some(n) => n.trunc().network().to_string(),
                None => a.to_string(),
            },
        };
        format!("{addr}-{l}")
    })
}

/// Anything a lease key's last path element could be.
fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[0-9a-fA-F.:&/ +-]{0,48}",
        1 => nasty_string(),
        2 => v4_part(),
        3 => (v4_part(), v6_part()).prop_map(|(a, b)| format!("{a}&{b}")),
        1 => (v4_part(), v6_part(), v6_part()).prop_map(|(a, b, c)| format!("{a}&{b}&{c}")),
        1 => v6_part().prop_map(|b| format!("0.0.0.0-0&{b}")),
    ]
}

/// A key as podnet or flanneld writes one: networks without host bits, at least one family.
/// No IPv4 /0: the format spells "no IPv4" as `0.0.0.0-0`.
fn subnet_key() -> impl Strategy<Value = SubnetKey> {
    let v4 = || (ipv4(), 1u8..=32).prop_map(|(a, l)| Ipv4Net::new(a, l).expect("prefix").trunc());
    let v6 = || (ipv6(), 0u8..=128).prop_map(|(a, l)| Ipv6Net::new(a, l).expect("prefix").trunc());
    prop_oneof![
        v4().prop_map(|n| (Some(n), None)),
        v6().prop_map(|n| (None, Some(n))),
        (v4(), v6()).prop_map(|(a, b)| (Some(a), Some(b))),
    ]
    .prop_map(|(v4, v6)| SubnetKey { v4, v6 })
}

/// JSON for one lease field: `good` most of the time, else something else.
fn or_junk(good: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => good,
        1 => select(vec!["null", "\"\"", "1", "{}", "[1, 2]", "\"vxlan\""]).prop_map(String::from),
        1 => json().prop_map(|v| v.to_string()),
    ]
}

/// Backend data as other writers space it: compact, pretty, or odd.
fn backend_data() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("null".to_string()),
        1 => Just(" { \"VNI\" : 1 ,\n \"VtepMAC\":\"aa:bb:cc:dd:ee:ff\"}".to_string()),
        2 => json().prop_map(|v| v.to_string()),
        1 => json().prop_map(|v| serde_json::to_string_pretty(&v).expect("json")),
    ]
}

/// A lease value: flannel's fields (each may be missing or wrong) in a random order, with now
/// and then a near-miss or duplicate name; written by hand so that spacing and duplicates
/// reach the parser as they are.
fn lease_object() -> impl Strategy<Value = String> {
    let quoted = |s: String| Value::from(s).to_string();
    let fields = (
        or_junk(ipv4().prop_map(move |a| quoted(a.to_string()))),
        or_junk(prop_oneof![
            Just("null".to_string()),
            ipv6().prop_map(move |a| quoted(a.to_string()))
        ]),
        or_junk(select(vec!["\"vxlan\"", "\"host-gw\"", "\"udp\"", "\"\""]).prop_map(String::from)),
        or_junk(backend_data()),
        or_junk(backend_data()),
    );
    let names = [
        "PublicIP",
        "PublicIPv6",
        "BackendType",
        "BackendData",
        "BackendV6Data",
    ];
    let extra = select(vec![
        "publicip",
        "PUBLICIPV6",
        "Other",
        "",
        "PublicIP",
        "BackendData",
    ]);
    let extras = prop::collection::vec((extra, backend_data(), any::<Index>()), 0..2);
    let present = prop::collection::vec(prop::bool::weighted(0.9), 5);
    (fields, present, extras).prop_map(move |((ip, ip6, ty, data, data6), present, extras)| {
        let mut members: Vec<String> = names
            .iter()
            .zip([ip, ip6, ty, data, data6])
            .zip(present)
            .filter(|(_, p)| *p)
            .map(|((k, v), _)| format!("\"{k}\":{v}"))
            .collect();
        for (k, v, at) in extras {
            let at = at.index(members.len() + 1);
            members.insert(at, format!("{}:{v}", Value::from(k)));
        }
        format!("{{{}}}", members.join(","))
    })
}

fn lease_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => prop::collection::vec(any::<u8>(), 0..128)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => json().prop_map(|v| v.to_string()),
        1 => nasty_string(),
        1 => deep(),
        6 => lease_object(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever parses is canonical: it prints back as the very string read (so the key podnet
    /// deletes or renews is the key that exists), and that string parses to the same key.
    #[test]
    fn lease_key_parse_accepts_only_what_it_prints(s in key_text()) {
        if let Some(k) = SubnetKey::parse(&s) {
            prop_assert!(k.v4.is_some() || k.v6.is_some());
            prop_assert_eq!(k.to_string(), s.clone());
            prop_assert_eq!(SubnetKey::parse(&k.to_string()), Some(k));
        }
    }

    /// Every key podnet writes reads back as itself.
    #[test]
    fn lease_key_written_keys_parse_back(k in subnet_key()) {
        prop_assert_eq!(SubnetKey::parse(&k.to_string()), Some(k));
    }

    /// Any text: an error or a value; a value writes as JSON that reads back to the same value
    /// and writes the same bytes again.
    #[test]
    fn lease_value_round_trips(s in lease_text()) {
        if let Ok(a) = LeaseAttrs::from_json(&s) {
            let written = a.to_json();
            let again = LeaseAttrs::from_json(&written);
            prop_assert_eq!(again.as_ref(), Ok(&a), "written: {}", written);
            prop_assert_eq!(again.map(|b| b.to_json()), Ok(written));
        }
    }
}

/// A subnet near the lab's network: inside it, around it, of any length, host bits or not.
fn near_key() -> impl Strategy<Value = SubnetKey> {
    let v4 = (
        0u8..=255,
        0u8..=255,
        0u8..=255,
        0u8..=32,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(b, c, d, l, inside, trunc)| {
            let a = if inside {
                [10, 244, c, d]
            } else {
                [b, c, d, 0]
            };
            let n = Ipv4Net::new(a.into(), l).expect("prefix");
            if trunc { n.trunc() } else { n }
        });
    let v6 = (any::<u16>(), 40u8..=72).prop_map(|(s, l)| {
        let a = std::net::Ipv6Addr::new(0xfd10, 0x244, 0, s, 0, 0, 0, 0);
        Ipv6Net::new(a, l).expect("prefix").trunc()
    });
    prop_oneof![
        3 => v4.clone().prop_map(|n| SubnetKey { v4: Some(n), v6: None }),
        1 => v6.clone().prop_map(|n| SubnetKey { v4: None, v6: Some(n) }),
        2 => (v4, v6).prop_map(|(a, b)| SubnetKey { v4: Some(a), v6: Some(b) }),
    ]
}

/// Backend data for the backend named: near-valid vxlan or WireGuard data, or any JSON.
fn typed_backend_data() -> impl Strategy<Value = String> {
    let mac = prop_oneof![
        2 => prop::array::uniform6(any::<u8>()).prop_map(|m| {
            m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
        }),
        1 => select(vec!["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "02:00:00:00:00:01", "zz", ""])
            .prop_map(String::from),
    ];
    let key = prop_oneof![
        2 => prop::array::uniform32(any::<u8>()).prop_map(|k| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(k)
        }),
        1 => select(vec!["", "AAAA", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "!!"])
            .prop_map(String::from),
    ];
    prop_oneof![
        3 => (mac, 0u32..3).prop_map(|(m, vni)| format!(r#"{{"VNI":{vni},"VtepMAC":"{m}"}}"#)),
        3 => (key.clone(), any::<u16>()).prop_map(|(k, p)| format!(r#"{{"PublicKey":"{k}","Port":{p}}}"#)),
        // flanneld's forms: no Port (older), Port 0 (newer).
        1 => (key, any::<bool>()).prop_map(|(k, zero)| if zero {
            format!(r#"{{"PublicKey":"{k}","Port":0}}"#)
        } else {
            format!(r#"{{"PublicKey":"{k}"}}"#)
        }),
        1 => backend_data(),
    ]
}

/// A lease value whose fields are mostly right, so that the checks past the parser run.
fn checked_lease_value() -> impl Strategy<Value = LeaseAttrs> {
    let ip4 = prop_oneof![
        3 => (0u8..=255).prop_map(|d| format!("198.18.0.{d}")),
        1 => ipv4().prop_map(|a| a.to_string()),
    ];
    let ip6 = prop_oneof![
        1 => Just("null".to_string()),
        2 => (any::<u16>()).prop_map(|s| format!("\"2001:2::{s:x}\"")),
        1 => ipv6().prop_map(|a| format!("\"{a}\"")),
    ];
    let ty = select(vec!["vxlan", "wireguard", "host-gw", "udp", "", "VXLAN"]);
    let data = prop::option::of(typed_backend_data());
    let data6 = prop::option::of(typed_backend_data());
    (ip4, ip6, ty, data, data6, lease_object()).prop_map(|(ip, ip6, ty, d, d6, other)| {
        let mut members = vec![
            format!(r#""PublicIP":"{ip}""#),
            format!(r#""PublicIPv6":{ip6}"#),
            format!(r#""BackendType":"{ty}""#),
        ];
        members.extend(d.map(|d| format!(r#""BackendData":{d}"#)));
        members.extend(d6.map(|d| format!(r#""BackendV6Data":{d}"#)));
        let text = format!("{{{}}}", members.join(","));
        LeaseAttrs::from_json(&text)
            .or_else(|_| LeaseAttrs::from_json(&other))
            .unwrap_or_else(|_| LeaseAttrs::from_json(r#"{"PublicIP":"198.18.0.9"}"#).unwrap())
    })
}

fn checked_lease() -> impl Strategy<Value = Lease> {
    let key = prop_oneof![1 => subnet_key(), 3 => near_key()];
    (key, checked_lease_value(), 0i64..8, 0i64..8).prop_map(|(key, attrs, created, rev)| Lease {
        key,
        attrs,
        keepalive: Keepalive::Etcd(1),
        revision: rev,
        created,
    })
}

/// The config a checker runs with: IPv4, dual-stack or IPv6 only, each with its backend.
fn checker_config() -> impl Strategy<Value = NetworkConfig> {
    let backend = select(vec!["vxlan", "wireguard", "host-gw", "udp"]);
    let families = select(vec![
        r#""Network":"10.244.0.0/16""#,
        r#""Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56""#,
        r#""EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56""#,
    ]);
    (families, backend).prop_map(|(f, b)| {
        NetworkConfig::parse(&format!(r#"{{{f},"Backend":{{"Type":"{b}"}}}}"#)).expect("config")
    })
}

proptest! {
    #![proptest_config(config())]

    /// Any leases, any config: checking, selecting and following them never panics, and what
    /// is accepted passes `check` and overlaps no other accepted lease.
    #[test]
    fn peer_leases_through_the_checker(
        cfg in checker_config(),
        own in checked_lease(),
        exact in any::<bool>(),
        leases in prop::collection::vec(checked_lease(), 0..12),
        deletes in prop::collection::vec(any::<Index>(), 0..4),
    ) {
        let c = Checker {
            own_ids: own_identities(&own, &cfg),
            cfg,
            exact_length: exact,
            own: own.key,
            local: vec!["198.18.0.11/17".parse().unwrap(), "2001:2::b/64".parse().unwrap()],
        };
        for l in &leases {
            let _ = c.check(l);
        }
        let sel = c.select(leases.iter(), |_| false);
        for (i, a) in sel.accepted.iter().enumerate() {
            prop_assert_eq!(c.check(a), Ok(()));
            for b in &sel.accepted[i + 1..] {
                prop_assert!(a.key == b.key || !overlap(&a.key, &b.key), "{} and {}", a.key, b.key);
            }
        }
        let mut ps = PeerSet::checked(c);
        for l in leases.iter().cloned() {
            ps.put(l);
        }
        for d in deletes {
            if !leases.is_empty() {
                ps.delete(&leases[d.index(leases.len())].key);
            }
        }
        prop_assert!(ps.len() <= leases.len());
    }
}

fn overlap(a: &SubnetKey, b: &SubnetKey) -> bool {
    let v4 = matches!((a.v4, b.v4), (Some(x), Some(y)) if x.contains(&y.network()) || y.contains(&x.network()));
    let v6 = matches!((a.v6, b.v6), (Some(x), Some(y)) if x.contains(&y.network()) || y.contains(&x.network()));
    v4 || v6
}

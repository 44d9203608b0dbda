//! The network config (etcd `<prefix>/config` or `net-conf.json`).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use podnet::config::{Family4, Family6, NetworkConfig};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use crate::support::{config, deep, json, mutate, mutations, nasty_string, prefix};

/// How many subnets are checked at each end of the allocatable range.
const WINDOW: usize = 64;

/// How a config gives the subnet length: absent, from the network's prefix + 2 up to the
/// family's limit (the valid range, when there is one), or anything from 0 to 255.
#[derive(Debug, Clone, Copy)]
enum Len {
    Absent,
    Fitting(u8),
    Any(u64),
}

fn subnet_len() -> impl Strategy<Value = Len> {
    prop_oneof![
        2 => Just(Len::Absent),
        6 => any::<u8>().prop_map(Len::Fitting),
        1 => (0u64..=255).prop_map(Len::Any),
    ]
}

/// The length `len` stands for with a network prefix of `plen` (`bits`-bit addresses,
/// subnets at most `/(bits - 2)`, flannel's default `default` where the network allows it),
/// and the value the config carries.
fn resolve(len: Len, plen: u8, bits: u8, default: u8) -> (u8, Option<u64>) {
    match len {
        Len::Absent => ((plen + 2).max(default).min(bits), None),
        Len::Fitting(r) => {
            let lo = (plen + 2).min(bits - 2);
            let l = lo + r % (bits - 2 - lo + 1);
            (l, Some(u64::from(l)))
        }
        Len::Any(l) => (l.min(u64::from(bits)) as u8, Some(l)),
    }
}

/// A network's prefix length: mostly one that leaves room for four subnets, sometimes any
/// (the edges included).
fn net_prefix(bits: u8) -> impl Strategy<Value = u8> {
    prop_oneof![3 => 0..=bits - 4, 1 => prefix(bits)]
}

/// Which subnet, counted from an end of the network: often near it, sometimes anywhere
/// (and so outside the network).
fn index() -> impl Strategy<Value = u128> {
    prop_oneof![
        6 => 0u128..8,
        1 => any::<u128>(),
        1 => Just(u128::MAX),
    ]
}

/// The IPv4 members, consistent with each other more often than chance would make them:
/// SubnetMin counted up from the network's start, SubnetMax down from its end.
fn family4() -> impl Strategy<Value = Value> {
    let host_bits = prop::bool::weighted(0.2);
    (
        any::<u32>(),
        net_prefix(32),
        subnet_len(),
        index(),
        index(),
        host_bits,
    )
        .prop_map(|(addr, plen, len, kmin, kmax, host_bits)| {
            let plen = plen.min(32);
            let net = Ipv4Net::new(addr.into(), plen).expect("prefix").trunc();
            let (len, slen) = resolve(len, plen, 32, 24);
            let size = 1u64.checked_shl(32 - u32::from(len)).unwrap_or(0) as u128;
            let first = u128::from(u32::from(net.network()));
            let end = u128::from(u32::from(net.broadcast())) + 1;
            let at = |a: u128| Ipv4Addr::from(a as u32).to_string();
            let shown = if host_bits {
                Ipv4Addr::from(addr)
            } else {
                net.network()
            };
            json!({
                "Network": format!("{shown}/{plen}"),
                "SubnetLen": slen,
                "SubnetMin": at(first.wrapping_add(size.wrapping_mul(kmin))),
                "SubnetMax": at(end.wrapping_sub(size.wrapping_mul(kmax.wrapping_add(1)))),
            })
        })
}

/// The IPv6 members, built the same way.
fn family6() -> impl Strategy<Value = Value> {
    (
        any::<u128>(),
        net_prefix(128),
        subnet_len(),
        index(),
        index(),
    )
        .prop_map(|(addr, plen, len, kmin, kmax)| {
            let plen = plen.min(128);
            let net = Ipv6Net::new(addr.into(), plen).expect("prefix").trunc();
            let (len, slen) = resolve(len, plen, 128, 64);
            let size = 1u128.checked_shl(128 - u32::from(len)).unwrap_or(0);
            let first = u128::from(net.network());
            let end = u128::from(net.broadcast()).wrapping_add(1);
            let at = |a: u128| Ipv6Addr::from(a).to_string();
            json!({
                "IPv6Network": format!("{net}"),
                "IPv6SubnetLen": slen,
                "IPv6SubnetMin": at(first.wrapping_add(size.wrapping_mul(kmin))),
                "IPv6SubnetMax": at(end.wrapping_sub(size.wrapping_mul(kmax.wrapping_add(1)))),
            })
        })
}

/// A number for a backend option: usually in its range, sometimes anything.
fn option_number(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..=max,
        1 => select(vec![0, max, max + 1, u64::MAX]),
        1 => any::<u64>(),
    ]
}

fn backend() -> impl Strategy<Value = Value> {
    let ty = prop_oneof![
        4 => select(vec!["vxlan", "VXLAN", "host-gw", "udp", "Udp"]),
        1 => select(vec!["ipip", "wireguard", "", "alloc", "frob"]),
    ];
    let mtu = prop_oneof![138u64..=65_535, option_number(65_535)];
    let nums = (option_number(16_777_215), option_number(65_535), mtu);
    (ty, nums, any::<[bool; 3]>()).prop_map(|(ty, (vni, port, mtu), [gbp, learning, direct])| {
        json!({
            "Type": ty, "VNI": vni, "Port": port, "MTU": mtu,
            "GBP": gbp, "Learning": learning, "DirectRouting": direct,
        })
    })
}

/// A near-valid config: both families' members, the flags, a backend, then mutated.
fn config_doc() -> impl Strategy<Value = Value> {
    let flag = |p| prop::option::of(prop::bool::weighted(p));
    let flags = (flag(0.9), flag(0.7));
    (family4(), family6(), flags, backend(), mutations()).prop_map(
        |(v4, v6, (e4, e6), backend, muts)| {
            let mut doc = v4.as_object().expect("object").clone();
            doc.extend(v6.as_object().expect("object").clone());
            doc.insert("EnableIPv4".into(), json!(e4));
            doc.insert("EnableIPv6".into(), json!(e6));
            doc.insert("Backend".into(), backend);
            doc.retain(|_, v| !v.is_null());
            mutate(Value::Object(doc), &muts)
        },
    )
}

fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => nasty_string(),
        1 => deep(),
        1 => json().prop_map(|v| v.to_string()),
        8 => config_doc().prop_map(|v| v.to_string()),
    ]
}

/// The first `WINDOW + 1` items of an iterator (one more than a window, to see it end).
fn head<T>(it: impl Iterator<Item = T>) -> Vec<T> {
    it.take(WINDOW + 1).collect()
}

fn check_family4(f: &Family4) -> Result<(), TestCaseError> {
    let (net, len) = (f.network, f.subnet_len);
    prop_assert_eq!(net, net.trunc());
    prop_assert!(
        len >= net.prefix_len() + 2 && len <= 30,
        "SubnetLen {}",
        len
    );
    prop_assert!(f.subnet_min <= f.subnet_max);
    let size = 1u64 << (32 - len);
    let (min, max) = (u32::from(f.subnet_min), u32::from(f.subnet_max));
    for a in [min, max] {
        prop_assert!(net.contains(&Ipv4Addr::from(a)));
        prop_assert_eq!(u64::from(a) % size, 0, "{} not aligned", Ipv4Addr::from(a));
    }
    let (min, max) = (u64::from(min), u64::from(max));
    // Both ends of the range: from SubnetMin, and from a few subnets below SubnetMax.
    let tail_min = max.saturating_sub(size * (WINDOW as u64 - 1)).max(min);
    let tail = Family4 {
        subnet_min: Ipv4Addr::from(tail_min as u32),
        ..f.clone()
    };
    for (fam, first) in [(f, min), (&tail, tail_min)] {
        let got = head(fam.subnets());
        let want = (max - first) / size + 1;
        prop_assert_eq!(got.len() as u64, want.min(WINDOW as u64 + 1));
        for (i, sn) in got.iter().enumerate() {
            prop_assert_eq!(u64::from(u32::from(sn.network())), first + i as u64 * size);
            prop_assert!(net.contains(sn) && f.fits(sn), "{} outside {}", sn, net);
        }
    }
    Ok(())
}

fn check_family6(f: &Family6) -> Result<(), TestCaseError> {
    let (net, len) = (f.network, f.subnet_len);
    prop_assert_eq!(net, net.trunc());
    prop_assert!(
        len >= net.prefix_len() + 2 && len <= 126,
        "IPv6SubnetLen {}",
        len
    );
    prop_assert!(f.subnet_min <= f.subnet_max);
    let size = 1u128 << (128 - len);
    let (min, max) = (u128::from(f.subnet_min), u128::from(f.subnet_max));
    for a in [min, max] {
        prop_assert!(net.contains(&Ipv6Addr::from(a)));
        prop_assert_eq!(a % size, 0, "{} not aligned", Ipv6Addr::from(a));
    }
    let tail_min = max
        .saturating_sub(size.saturating_mul(WINDOW as u128 - 1))
        .max(min);
    let tail = Family6 {
        subnet_min: Ipv6Addr::from(tail_min),
        ..f.clone()
    };
    for (fam, first) in [(f, min), (&tail, tail_min)] {
        let got = head(fam.subnets());
        let want = (max - first) / size + 1;
        prop_assert_eq!(got.len() as u128, want.min(WINDOW as u128 + 1));
        for (i, sn) in got.iter().enumerate() {
            prop_assert_eq!(u128::from(sn.network()), first + i as u128 * size);
            prop_assert!(net.contains(sn) && f.fits(sn), "{} outside {}", sn, net);
        }
    }
    Ok(())
}

fn check_config(c: &NetworkConfig) -> Result<(), TestCaseError> {
    prop_assert!(c.enable_ipv4 || c.enable_ipv6);
    prop_assert_eq!(c.v4.is_some(), c.enable_ipv4);
    prop_assert_eq!(c.v6.is_some(), c.enable_ipv6);
    if let Some(f) = &c.v4 {
        check_family4(f)?;
    }
    if let Some(f) = &c.v6 {
        check_family6(f)?;
    }
    let shown = c.to_json().to_string();
    let again = NetworkConfig::parse(&shown);
    prop_assert_eq!(again.as_ref(), Ok(c), "shown: {}", shown);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any text: an error, or a config whose ranges hold (SubnetLen from the network's prefix
    /// + 2 to 30 (126), SubnetMin ≤ SubnetMax, both aligned inside the network), whose subnets
    /// are all inside the network, and that reads back from its canonical JSON.
    #[test]
    fn network_config_parse_keeps_invariants(s in config_text()) {
        if let Ok(c) = NetworkConfig::parse(&s) {
            check_config(&c)?;
        }
    }
}

/// Found by CI: subnets of 2^124 addresses, where the test's own window arithmetic overflowed.
#[test]
fn huge_ipv6_subnets_keep_invariants() {
    let s = r#"{"Backend":{"Type":"vxlan"},"EnableIPv6":true,"IPv6Network":"::/1","IPv6SubnetLen":4,"IPv6SubnetMax":"7000::","IPv6SubnetMin":"::","Network":"0.0.0.0/0","SubnetMax":"255.255.255.0","SubnetMin":"0.0.0.0"}"#;
    let c = NetworkConfig::parse(s).expect("a valid config");
    check_config(&c).unwrap();
}

//! Strategies shared by the properties: the run's config, nasty strings, random JSON, and the
//! mutation of near-valid documents. The common ones are boxed: unboxed, the value trees of
//! the larger documents outgrow a test thread's stack in a debug build.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm};
use serde_json::{Map, Value};

/// Cases per property: 512, or `PROPTEST_CASES` for a longer hunt. No regression files: a
/// failure found here becomes a named unit test next to the code it fixes. XorShift rather
/// than ChaCha: unoptimised, ChaCha took a fifth of the time.
pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    }
}

/// Strings that break naive parsers: empty, blanks, path tricks, control characters,
/// separators, numbers out of range, non-ASCII.
const NASTY: &[&str] = &[
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\0",
    "\u{7f}",
    "\u{1b}[0m",
    ".",
    "..",
    "/",
    "../../etc/passwd",
    "a/b",
    "-",
    "--",
    "=",
    ";",
    ";;=;=",
    "&",
    "&&",
    ":",
    "::",
    ":::",
    "null",
    "true",
    "0",
    "-1",
    "+1",
    "1e9",
    "4294967296",
    "18446744073709551616",
    "NaN",
    "é",
    "\u{202e}",
    "\u{feff}",
    "\u{a0}",
    "💥",
    "{",
    "}",
    "[]",
    "{}",
    "\"",
    "\\",
    "%s%n",
];

/// Addresses and CIDRs of both families, valid and almost valid.
const ADDRESSES: &[&str] = &[
    "0.0.0.0",
    "0.0.0.0/0",
    "10.244.0.0/16",
    "10.244.3.0/24",
    "10.244.3.1/24",
    "10.244.3.7",
    "10.244.0.0/31",
    "10.244.0.1/32",
    "10.244.0.0/33",
    "10.244.0.0/-1",
    "10.244.0.0/",
    "10.244.0/16",
    "010.244.0.0/16",
    "10.244.0.256",
    "255.255.255.255",
    "255.255.255.0/24",
    "192.168.64.3",
    "::",
    "::/0",
    "::1",
    "fd10:244::/56",
    "fd10:244:0:3::/64",
    "fd10:244:0:3::1/64",
    "FD10:244::1",
    "fd10:0:0:0:0:0:0:1",
    "::ffff:10.0.0.1",
    "fe80::1%eth0",
    "fd00::/129",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
];

/// A string that is usually trouble: a nasty one, an address, arbitrary Unicode, printable
/// ASCII, a long run of one character.
pub fn nasty_string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(NASTY).prop_map(String::from),
        3 => select(ADDRESSES).prop_map(String::from),
        2 => "\\PC{0,12}",
        2 => "[ -~]{0,24}",
        1 => any::<String>(),
        1 => (any::<char>(), 0usize..5000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

/// Nesting up to a thousand levels deep (parsers stop at 128), in JSON or YAML syntax.
pub fn deep() -> impl Strategy<Value = String> {
    let open = select(vec![
        "[", "{\"a\":", "[{\"a\":", "{a: ", "- ", "a:\n  ", "[{a: ",
    ]);
    (open, 1usize..1000).prop_map(|(o, n)| o.repeat(n))
}

/// A random IPv4 address, sometimes one of the special ones.
pub fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        3 => any::<u32>().prop_map(Ipv4Addr::from),
        1 => select(vec![Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, Ipv4Addr::LOCALHOST]),
    ]
}

/// A random IPv6 address, often with trailing zero bits (as network addresses have).
pub fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    (any::<u128>(), 0u32..=128).prop_map(|(a, zeros)| {
        Ipv6Addr::from(
            a.checked_shr(zeros)
                .unwrap_or(0)
                .checked_shl(zeros)
                .unwrap_or(0),
        )
    })
}

/// A prefix length for `bits`-bit addresses, often at the edges (0, 1, bits-1, bits) and now
/// and then just past them.
pub fn prefix(bits: u8) -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => 0..=bits,
        1 => select(vec![0, 1, bits - 1, bits, bits + 1]),
    ]
}

/// `good` fifteen times in sixteen, else a nasty string.
pub fn mostly(good: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![15 => good, 1 => nasty_string()]
}

/// An address of either family as text, mostly.
pub fn addr_text() -> impl Strategy<Value = String> {
    mostly(prop_oneof![
        2 => ipv4().prop_map(|a| a.to_string()),
        1 => ipv6().prop_map(|a| a.to_string()),
    ])
}

/// A CIDR of either family as text (any prefix, host bits and all), mostly.
pub fn cidr_text() -> impl Strategy<Value = String> {
    mostly(prop_oneof![
        2 => (ipv4(), prefix(32)).prop_map(|(a, l)| format!("{a}/{l}")),
        1 => (ipv6(), prefix(128)).prop_map(|(a, l)| format!("{a}/{l}")),
    ])
}

/// Random JSON: scalars of every type (strings from `nasty_string`), arrays and objects up to
/// three levels deep.
pub fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        select(vec![0.5, -1.0, 1e300, -0.0]).prop_map(Value::from),
        nasty_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((nasty_string(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// One change `mutate` may make at a node of a document.
#[derive(Debug, Clone)]
pub struct Mutation {
    op: u8,
    junk: Value,
}

/// None at all a third of the time; else mostly "keep", now and then "replace by junk",
/// "drop" or "re-case the key".
pub fn mutations() -> BoxedStrategy<Vec<Mutation>> {
    let keep = Mutation {
        op: u8::MAX,
        junk: Value::Null,
    };
    let one = (0u8..64, json()).prop_map(|(op, junk)| Mutation { op, junk });
    prop_oneof![
        1 => Just(vec![keep]),
        2 => prop::collection::vec(one, 1..12),
    ]
    .boxed()
}

/// `name` in one of four spellings: as is, lower case, upper case, alternating.
pub fn recase(name: &str, how: u8) -> String {
    match how % 4 {
        0 => name.to_string(),
        1 => name.to_ascii_lowercase(),
        2 => name.to_ascii_uppercase(),
        _ => name
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect(),
    }
}

/// Walks `doc` depth first and applies the mutations in turn (cycling), one per object member
/// or array element: op 0 replaces the value by junk, op 1 drops the member, ops 2 to 5
/// re-case the member's key, anything else keeps it.
pub fn mutate(doc: Value, muts: &[Mutation]) -> Value {
    let mut next = 0;
    walk(doc, muts, &mut next)
}

fn walk(v: Value, muts: &[Mutation], next: &mut usize) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, child) in m {
                let mu = &muts[*next % muts.len()];
                *next += 1;
                match mu.op {
                    0 => drop(out.insert(k, mu.junk.clone())),
                    1 => {}
                    2..=5 => drop(out.insert(recase(&k, mu.op), walk(child, muts, next))),
                    _ => drop(out.insert(k, walk(child, muts, next))),
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => items
            .into_iter()
            .map(|child| {
                let mu = &muts[*next % muts.len()];
                *next += 1;
                if mu.op == 0 {
                    mu.junk.clone()
                } else {
                    walk(child, muts, next)
                }
            })
            .collect(),
        other => other,
    }
}

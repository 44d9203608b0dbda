//! `subnet.env`, which the CNI plugin reads and any process on the node may have written.

use podnet::subnet_env::SubnetEnv;
use proptest::prelude::*;
use proptest::sample::select;

use crate::support::{config, ipv4, ipv6, nasty_string, prefix};

/// A value for one of the file's keys: the right kind, the other family, a list, or junk.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (ipv4(), prefix(32)).prop_map(|(a, l)| format!("{a}/{l}")),
        2 => (ipv6(), prefix(128)).prop_map(|(a, l)| format!("{a}/{l}")),
        1 => prop::collection::vec((ipv4(), prefix(32)), 0..4).prop_map(|l| {
            l.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>().join(",")
        }),
        1 => (0u64..70_000).prop_map(|m| m.to_string()),
        1 => select(vec!["true", "false", "TRUE", "1", "\"true\"", " 1450 ", "1450\r"])
            .prop_map(String::from),
        2 => nasty_string(),
    ]
}

/// One line: a known key (or a near miss) with a value, a comment, a blank, or junk.
fn line() -> impl Strategy<Value = String> {
    let key = select(vec![
        "FLANNEL_NETWORK",
        "FLANNEL_SUBNET",
        "FLANNEL_IPV6_NETWORK",
        "FLANNEL_IPV6_SUBNET",
        "FLANNEL_MTU",
        "FLANNEL_IPMASQ",
        "flannel_mtu",
        " FLANNEL_SUBNET ",
        "export FLANNEL_MTU",
        "OTHER",
        "",
    ]);
    prop_oneof![
        8 => (key, value(), select(vec!["=", " = ", "=="]))
            .prop_map(|(k, v, eq)| format!("{k}{eq}{v}")),
        1 => select(vec!["", "# comment", "   ", "=", "garbage"]).prop_map(String::from),
        1 => nasty_string(),
    ]
}

fn env_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[A-Z_=0-9./:,#\n a-f]{0,80}",
        6 => (prop::collection::vec(line(), 0..8), select(vec!["\n", "\r\n", "\n\n"]))
            .prop_map(|(lines, sep)| lines.join(sep)),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any text: an error or a value; a value renders to flannel's lines, which parse to the
    /// same value and render the same text.
    #[test]
    fn subnet_env_round_trips(s in env_text()) {
        if let Ok(env) = SubnetEnv::parse(&s) {
            let rendered = env.render();
            let again = SubnetEnv::parse(&rendered);
            prop_assert_eq!(again.as_ref(), Ok(&env), "rendered: {:?}", rendered);
            prop_assert_eq!(again.map(|e| e.render()), Ok(rendered));
        }
    }
}

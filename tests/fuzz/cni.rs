//! What the container runtime hands the CNI plugin: the network config on stdin and the
//! `CNI_*` environment.

use std::collections::HashMap;

use podnet::cni::conf::{Args, Command, NetConf};
use podnet::cni::spec::{CniError, SUPPORTED_VERSIONS, code};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use crate::support::{addr_text, cidr_text, config, deep, json, mutate, mutations, nasty_string};

fn version() -> impl Strategy<Value = String> {
    prop_oneof![
        15 => select(SUPPORTED_VERSIONS.to_vec()),
        1 => select(vec!["", "0.2.0", "9.9.9", "1.0", "1.0.0.0", "v1.0.0"]),
    ]
    .prop_map(String::from)
}

/// One of `good` fifteen times in sixteen, else one of `bad`.
fn pick(good: &[&'static str], bad: &[&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![15 => select(good.to_vec()), 1 => select(bad.to_vec())].prop_map(String::from)
}

/// `ipam`: host-local's ranges and routes with random strings.
fn ipam() -> impl Strategy<Value = Value> {
    let range = (cidr_text(), addr_text(), addr_text(), addr_text()).prop_map(
        |(s, a, b, g)| json!({"subnet": s, "rangeStart": a, "rangeEnd": b, "gateway": g}),
    );
    let ranges = prop::collection::vec(prop::collection::vec(range, 0..3), 0..3);
    let route = (cidr_text(), addr_text()).prop_map(|(d, g)| json!({"dst": d, "gw": g}));
    let ty = pick(&["host-local"], &["dhcp", ""]);
    let dir = pick(&["/var/lib/cni/networks"], &["../..", "", "rel/dir"]);
    (ranges, prop::collection::vec(route, 0..3), ty, dir).prop_map(|(ranges, routes, t, d)| {
        json!({"type": t, "dataDir": d, "ranges": ranges, "routes": routes})
    })
}

/// `runtimeConfig` in containerd's or podman's spelling.
fn runtime() -> impl Strategy<Value = Value> {
    let ips = prop::collection::vec(prop_oneof![addr_text(), cidr_text()], 0..3);
    let servers = prop::collection::vec(addr_text(), 0..3);
    (ips, servers, any::<bool>()).prop_map(|(ips, servers, upper)| {
        let dns = if upper { "Dns" } else { "dns" };
        json!({"ips": ips, dns: {"Servers": servers, "searches": ["svc"], "Domain": "x"},
               "portMappings": [{"hostPort": 80, "containerPort": 8080}]})
    })
}

/// A `prevResult` of any version.
fn prev_result() -> impl Strategy<Value = Value> {
    let iface = (nasty_string(), nasty_string(), any::<u64>()).prop_map(
        |(n, s, m)| json!({"name": n, "mac": "aa:bb:cc:dd:ee:ff", "sandbox": s, "mtu": m}),
    );
    let ip = (cidr_text(), addr_text(), any::<u64>())
        .prop_map(|(a, g, i)| json!({"address": a, "gateway": g, "interface": i, "version": "4"}));
    let route = (cidr_text(), addr_text()).prop_map(|(d, g)| json!({"dst": d, "gw": g}));
    let parts = (
        prop::collection::vec(iface, 0..3),
        prop::collection::vec(ip, 0..3),
        prop::collection::vec(route, 0..3),
    );
    (version(), parts, json()).prop_map(|(v, (i, ips, r), dns)| {
        json!({"cniVersion": v, "interfaces": i, "ips": ips, "routes": r, "dns": dns})
    })
}

fn delegate() -> impl Strategy<Value = Value> {
    let ty = pick(&["bridge"], &["macvlan", ""]);
    (ty, bridge(), any::<[bool; 4]>()).prop_map(|(t, b, [g, dg, h, m])| {
        json!({"type": t, "bridge": b, "isGateway": g, "isDefaultGateway": dg,
               "hairpinMode": h, "ipMasq": m})
    })
}

fn bridge() -> impl Strategy<Value = String> {
    pick(
        &["cni0", "br-pods", "0123456789abcde"],
        &["", "0123456789abcdef", "br/0", "..", "a b", "b:1", "é"],
    )
}

/// A near-valid plugin config, then mutated.
fn netconf_doc() -> impl Strategy<Value = Value> {
    let name = pick(&["cbr0", "n", "a.b_c-d"], &["", "-x", "a b", "../x"]);
    let mtu = prop_oneof![
        4 => (68u64..=65_535).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => json(),
    ];
    let attachments = prop::collection::vec((nasty_string(), nasty_string()), 0..3).prop_map(|l| {
        let list: Vec<Value> = l
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        json!(list)
    });
    let top = (
        version(),
        name,
        bridge(),
        mtu,
        nasty_string(),
        nasty_string(),
    );
    let nested = (delegate(), ipam(), runtime(), prev_result(), attachments);
    (top, nested, mutations()).prop_map(
        |((v, n, b, mtu, subnet_file, data_dir), (d, ipam, rt, prev, att), muts)| {
            let doc = json!({
                "cniVersion": v, "name": n, "type": "flannel", "bridge": b, "mtu": mtu,
                "subnetFile": subnet_file, "dataDir": data_dir, "delegate": d, "ipam": ipam,
                "runtimeConfig": rt, "prevResult": prev, "cni.dev/valid-attachments": att,
            });
            mutate(doc, &muts)
        },
    )
}

fn netconf_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => nasty_string().prop_map(String::into_bytes),
        1 => deep().prop_map(String::into_bytes),
        1 => json().prop_map(|v| v.to_string().into_bytes()),
        8 => netconf_doc().prop_map(|v| v.to_string().into_bytes()),
    ]
}

/// An error reported to the runtime: one of the config codes, a message, and JSON that
/// carries them.
fn check_config_error(e: &CniError) -> Result<(), TestCaseError> {
    let codes = [
        code::INCOMPATIBLE_VERSION,
        code::UNSUPPORTED_FIELD,
        code::DECODE,
        code::INVALID_CONFIG,
    ];
    prop_assert!(codes.contains(&e.code), "code {} for {:?}", e.code, e.msg);
    prop_assert!(!e.msg.is_empty());
    let out: Value = serde_json::from_str(&e.to_json("1.0.0")).expect("error JSON");
    prop_assert_eq!(&out["code"], &json!(e.code));
    Ok(())
}

/// Linux's rule for interface names (`dev_valid_name`).
fn linux_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
}

/// The spec's container ID rule, `[a-zA-Z0-9][a-zA-Z0-9_.\-]*`.
fn spec_container_id(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && c.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A `CNI_*` value: plausible, or the things a hostile or broken runtime might send.
fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,70}",
        1 => "[a-z0-9.:/ -]{0,18}",
        1 => "[;=a-zA-Z_0-9]{0,40}",
        1 => "[\\x00-\\x1f/.]{0,8}",
        3 => nasty_string(),
    ]
}

/// `CNI_ARGS`: KEY=VALUE pairs with known and unknown keys, and `;`/`=` soup.
fn cni_args() -> impl Strategy<Value = String> {
    let key = pick(
        &[
            "IgnoreUnknown",
            "IP",
            "K8S_POD_NAMESPACE",
            "K8S_POD_NAME",
            "K8S_POD_UID",
        ],
        &["K8S_POD_INFRA_CONTAINER_ID", "FOO", "", "ignoreunknown"],
    );
    let value = prop_oneof![pick(&["1", "true", "TRUE"], &["0", "", "a=b"]), env_value()];
    let sep = pick(&[";"], &[";;", "=", ""]);
    prop_oneof![
        3 => prop::collection::vec((key, value, sep), 0..5).prop_map(|pairs| {
            pairs.iter().map(|(k, v, s)| format!("{k}={v}{s}")).collect::<String>()
        }),
        1 => env_value(),
    ]
}

/// `CNI_*` variables, each mostly plausible, sometimes missing or anything.
fn environment() -> impl Strategy<Value = HashMap<String, String>> {
    let command = pick(
        &["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"],
        &["add", "", "ADD ", "ADD\n", "FROB"],
    );
    let or_any =
        |good: &'static str| prop::option::weighted(0.9, prop_oneof![3 => good, 1 => env_value()]);
    let vars = (
        prop::option::weighted(0.95, command),
        or_any("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,70}"),
        or_any("/run/netns/[a-z0-9-]{1,20}"),
        or_any("[a-z][a-z0-9.:_-]{0,15}"),
        prop::option::weighted(0.7, cni_args()),
        or_any("/opt/cni/bin"),
    );
    vars.prop_map(|(cmd, id, netns, ifname, args, path)| {
        let names = [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ];
        names
            .iter()
            .zip([cmd, id, netns, ifname, args, path])
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect()
    })
}

/// What an accepted environment promises the rest of the plugin.
fn check_args(a: &Args) -> Result<(), TestCaseError> {
    if matches!(a.command, Command::Add | Command::Del | Command::Check) {
        prop_assert!(spec_container_id(&a.container_id), "{:?}", a.container_id);
        prop_assert!(linux_ifname(&a.ifname), "CNI_IFNAME {:?}", a.ifname);
        prop_assert!(a.command == Command::Del || a.netns.is_some());
    }
    // Unknown keys only when some IgnoreUnknown says so (any of them, as podnet reads it).
    let ignore = a
        .args
        .iter()
        .any(|(k, v)| k == "IgnoreUnknown" && (v == "1" || v.eq_ignore_ascii_case("true")));
    let known = [
        "IgnoreUnknown",
        "IP",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
    ];
    prop_assert!(ignore || a.args.iter().all(|(k, _)| known.contains(&k.as_str())));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes on stdin: a config, or an error with one of the spec's config codes.
    #[test]
    fn cni_netconf_parse_never_panics(b in netconf_bytes()) {
        match NetConf::parse(&b) {
            Err(e) => check_config_error(&e)?,
            Ok(c) => {
                prop_assert!(SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()));
                prop_assert!(spec_container_id(&c.name), "name {:?}", c.name);
                prop_assert!(linux_ifname(&c.bridge), "bridge {:?}", c.bridge);
                prop_assert!(c.mtu.is_none_or(|m| (68..=65535).contains(&m)));
            }
        }
    }

    /// Any environment: arguments that keep the spec's rules, or an "invalid environment"
    /// error.
    #[test]
    fn cni_args_from_env_never_panics(env in environment()) {
        match Args::from_env(&|k: &str| env.get(k).cloned()) {
            Err(e) => {
                prop_assert_eq!(e.code, code::INVALID_ENV, "{}", e.msg);
                prop_assert!(!e.msg.is_empty());
            }
            Ok(a) => check_args(&a)?,
        }
    }
}

//! The policy engine's table as podnetd writes it over nfnetlink (`render::full_batch`,
//! `render::update_batch`), read back with `nft -j`, against the same rulesets applied as
//! nft's own text (`render::full`, `render::update`) with `nft -f`: the kernel holds the same
//! table either way, for every ruleset the upstream cases compile to and every update between
//! them. A transaction that fails changes nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use podnet::kernel::netns::NetNs;
use podnet::kernel::nft;
use podnet::policy::cases;
use podnet::policy::compile::compile;
use podnet::policy::render::{self, Options, Ruleset};

use crate::support::{ScratchNs, nft_f};

fn opts() -> Options {
    Options {
        bridge: "cni0".into(),
        ipv4: true,
        ipv6: true,
        log_group: Some(3),
    }
}

/// The policy table as `nft -j list` shows it, by object: `chain NAME` → its rules in order,
/// `set NAME` / `map NAME` → the object with its elements sorted (a hash map lists them in
/// its own order), handles left out. Creation order (which a listing follows) is not compared:
/// an updated table made its chains in another order than a table written whole.
fn listing(ns: &NetNs) -> BTreeMap<String, Vec<String>> {
    let out = ns
        .command("nft")
        .unwrap()
        .args(["-j", "list", "table", "inet", "podnet-policy"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in v["nftables"].as_array().unwrap() {
        let (kind, body) = item.as_object().unwrap().iter().next().unwrap();
        let mut body = body.clone();
        let o = body.as_object_mut().unwrap();
        o.remove("handle");
        if let Some(serde_json::Value::Array(elems)) = o.get_mut("elem") {
            elems.sort_by_key(|e| e.to_string());
        }
        let key = match kind.as_str() {
            "metainfo" => continue,
            "rule" => format!("chain {}", o["chain"].as_str().unwrap()),
            k => format!("{k} {}", o["name"].as_str().unwrap()),
        };
        by.entry(key).or_default().push(body.to_string());
    }
    by
}

/// Every ruleset the upstream cases compile to on node-1, step by step, case after case,
/// each one different from the one before.
fn rulesets() -> Vec<Ruleset> {
    let mut out = vec![render::ruleset(
        &compile(&cases::fixture(), "node-1"),
        &opts(),
    )];
    for case in cases::all() {
        let mut model = cases::fixture();
        for step in &case.steps {
            for change in &step.changes {
                change.apply(&mut model).unwrap();
            }
            let rs = render::ruleset(&compile(&model, "node-1"), &opts());
            if out.last() != Some(&rs) {
                out.push(rs);
            }
        }
    }
    out
}

#[test]
fn the_policy_table_over_netlink_lists_as_nft_makes_its_text() {
    let all = rulesets();
    assert!(
        all.len() > 20,
        "the cases compile to {} rulesets",
        all.len()
    );
    let (text, netlink, whole) = (ScratchNs::new(), ScratchNs::new(), ScratchNs::new());
    let socket = |ns: &NetNs| ns.run(|| nft::NftSocket::open().unwrap()).unwrap();
    let (updates, writes) = (socket(&netlink.ns), socket(&whole.ns));
    nft_f(&text.ns, &render::full(&all[0], &opts()));
    updates
        .commit(&render::full_batch(&all[0], &opts()))
        .unwrap();
    let mut seen_rules = 0;
    for (i, rs) in all.iter().enumerate() {
        if i > 0 {
            nft_f(&text.ns, &render::update(&all[i - 1], rs));
            updates
                .commit(&render::update_batch(&all[i - 1], rs))
                .unwrap();
        }
        writes.commit(&render::full_batch(rs, &opts())).unwrap();
        let want = listing(&text.ns);
        assert_eq!(listing(&netlink.ns), want, "ruleset {i}, updated");
        assert_eq!(listing(&whole.ns), want, "ruleset {i}, written whole");
        seen_rules = seen_rules.max(want.keys().filter(|k| k.starts_with("chain in-")).count());
    }
    assert!(seen_rules > 0, "some case isolates a pod on node-1");
}

/// A transaction built on a wrong idea of the table (an element that is not there) fails
/// whole: the sets and chains it would have added before are not there either, and the error
/// names the operation. The full rewrite that follows (podnetd's fallback) succeeds.
#[test]
fn a_failed_policy_update_changes_nothing() {
    let all = rulesets();
    let busy = all.iter().max_by_key(|rs| rs.chains.len()).unwrap().clone();
    let scratch = ScratchNs::new();
    let ns = &scratch.ns;
    let socket = ns.run(|| nft::NftSocket::open().unwrap()).unwrap();
    socket
        .commit(&render::full_batch(&all[0], &opts()))
        .unwrap();
    let before = listing(ns);
    // The engine believes a pod is in the ingress map that is not.
    let mut believed = all[0].clone();
    let ghost: IpAddr = "10.244.1.250".parse().unwrap();
    let (chain, rules) = busy
        .chains
        .iter()
        .find(|(name, _)| name.starts_with("in-"))
        .unwrap();
    believed.chains.insert(chain.clone(), rules.clone());
    believed
        .maps
        .get_mut("ingress-4")
        .unwrap()
        .insert(ghost, chain.clone());
    let t = render::update_batch(&believed, &busy);
    let err = socket.commit(&t).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(
        err.to_string()
            .contains("delete elements of set ingress-4 (table inet podnet-policy)"),
        "{err}"
    );
    assert_eq!(listing(ns), before, "nothing of the transaction is left");
    socket.commit(&render::full_batch(&busy, &opts())).unwrap();
    let text = ScratchNs::new();
    nft_f(&text.ns, &render::full(&busy, &opts()));
    assert_eq!(listing(ns), listing(&text.ns));
}

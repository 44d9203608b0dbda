//! Other software's nftables rules that would undo podnet's network policy, found in the
//! ruleset as `nft -j list ruleset` prints it (for `podnetctl doctor`):
//!
//! - `notrack` rules: packets without connection tracking never count as replies of an
//!   allowed connection, so an isolated pod's replies would be dropped;
//! - forward base chains whose policy is `drop`: they drop forwarded pod traffic that policy
//!   allows (a Docker-style FORWARD policy);
//! - another network policy engine (Calico, Cilium, kube-router, kube-network-policies): two
//!   engines each enforce their own idea, and a connection needs both.
//!
//! Reading only; the verdict is the operator's.

use serde_json::Value;

/// One finding, readable.
pub fn find(ruleset: &Value, own_tables: &[&str]) -> Vec<String> {
    let items = ruleset.get("nftables").and_then(Value::as_array);
    let mut out = Vec::new();
    for item in items.into_iter().flatten() {
        if let Some(chain) = item.get("chain") {
            if own_tables.contains(&field(chain, "table").as_str()) {
                continue;
            }
            let (family, table, name) = (
                field(chain, "family"),
                field(chain, "table"),
                field(chain, "name"),
            );
            if field(chain, "hook") == "forward" && field(chain, "policy") == "drop" {
                out.push(format!(
                    "table {family} {table} chain {name} drops forwarded traffic by default: pod traffic that network policy allows is dropped there unless a rule accepts it"
                ));
            }
            if engine(&table) || engine(&name) {
                out.push(format!(
                    "table {family} {table} chain {name} looks like another network policy engine: a connection needs the approval of both"
                ));
            }
        }
        if let Some(rule) = item.get("rule") {
            if own_tables.contains(&field(rule, "table").as_str()) {
                continue;
            }
            let notrack = rule
                .get("expr")
                .and_then(Value::as_array)
                .is_some_and(|e| e.iter().any(|x| x.get("notrack").is_some()));
            if notrack {
                out.push(format!(
                    "table {} {} chain {} handle {} disables connection tracking: replies of allowed connections to isolated pods are dropped",
                    field(rule, "family"),
                    field(rule, "table"),
                    field(rule, "chain"),
                    rule.get("handle").and_then(Value::as_u64).unwrap_or(0)
                ));
            }
        }
    }
    out.dedup();
    out
}

fn field(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn engine(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "kube-network-policies",
        "kube-nwplcy",
        "cali-",
        "cilium",
        "kube-router",
    ]
    .iter()
    .any(|p| n.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_notrack_drop_policies_and_other_engines() {
        let rs = serde_json::json!({"nftables": [
            {"chain": {"family": "inet", "table": "podnet-policy", "name": "forward", "hook": "forward", "policy": "accept"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "kube-network-policies", "name": "filter-forward", "hook": "forward", "policy": "accept"}},
            {"rule": {"family": "ip", "table": "raw", "chain": "prerouting", "handle": 4, "expr": [{"notrack": null}]}},
            {"rule": {"family": "inet", "table": "podnet-policy", "chain": "x", "handle": 5, "expr": [{"notrack": null}]}},
        ]});
        let f = find(&rs, &["podnet", "podnet-policy"]);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(f[0].starts_with("table ip filter chain FORWARD drops forwarded traffic"));
        assert!(f[1].contains("another network policy engine"));
        assert!(
            f[2].starts_with("table ip raw chain prerouting handle 4 disables connection tracking")
        );
    }
}

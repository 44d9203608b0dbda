//! Go's `encoding/json` matches object keys to struct fields case-insensitively. flannel's
//! network config and CNI network configs are read by Go programs, so podnet reads them the same
//! way: one lookup with one tie-break rule for both.

use serde_json::{Map, Value};

/// The value of `key` in `map`, matched case-insensitively, with `null` treated as absent (Go
/// leaves the field unset for `null`). When several keys match, the exact spelling wins; among
/// other spellings the last in the map's order does (Go keeps the last one it decodes).
pub fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let found = match map.get(key) {
        Some(v) => Some(v),
        None => map
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v),
    };
    found.filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn exact_wins_then_any_spelling_and_null_is_absent() {
        let m = obj(r#"{"network":"a","Network":"b","NETWORK":"c"}"#);
        assert_eq!(get_ci(&m, "Network"), Some(&Value::from("b")));
        assert_eq!(get_ci(&m, "nEtWoRk").and_then(Value::as_str), Some("a"));
        let m = obj(r#"{"subnetlen":24}"#);
        assert_eq!(get_ci(&m, "SubnetLen"), Some(&Value::from(24)));
        let m = obj(r#"{"SubnetLen":null}"#);
        assert_eq!(get_ci(&m, "SubnetLen"), None);
        assert_eq!(get_ci(&m, "Other"), None);
    }
}

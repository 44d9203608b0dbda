//! Go's `encoding/json` matches object keys to struct fields case-insensitively. flannel's
//! network config and CNI network configs are read by Go programs, so podnet reads them the same
//! way: one lookup with one tie-break rule for both.

use serde_json::{Map, Value};

/// The value of `key` in `map`, matched case-insensitively, with `null` treated as absent (Go
/// leaves the field unset for `null`). When several spellings of one key are present, the exact
/// spelling wins, and among the others the last in the map's (alphabetical) order. Go differs
/// here: it decodes every spelling in document order and keeps the last, which this map cannot
/// see (serde_json without `preserve_order`). Only a document that spells one key twice is read
/// differently, and none that flannel or a runtime writes does.
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

//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch and JSON patch (RFC 6902).
//!
//! Strategic merge follows k8s.io/apimachinery/pkg/util/strategicpatch for what clients send:
//! maps merge recursively, `null` deletes a key, lists with a merge key merge element by
//! element (`{"$patch": "delete"}` in an element removes it), scalar lists tagged `merge` are
//! unions, every other list is replaced. `$patch: replace|delete` on maps and
//! `$deleteFromPrimitiveList/<k>` are applied; `$setElementOrder/<k>` only orders elements and is
//! accepted and ignored; `$retainKeys` is refused with 400.

use crate::resource::{ListMerge, ResourceDef};
use serde_json::{Map, Value};

/// The PATCH flavours, by request content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    StrategicMerge,
    /// `application/json-patch+json`
    Json,
}

impl PatchType {
    /// The content types this server applies, as the 415 message lists them.
    pub const ACCEPTED: [&'static str; 3] = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ];

    /// The patch type for a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/json-patch+json" => Some(PatchType::Json),
            _ => None,
        }
    }
}

/// Applies `patch` to `target`; errors are messages for a 400 (or 422 for a failed `test`).
pub fn apply(
    kind: PatchType,
    target: &mut Value,
    patch: &Value,
    def: &ResourceDef,
) -> Result<(), String> {
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err("patch body must be a JSON object".into());
            }
            merge_patch(target, patch);
            Ok(())
        }
        PatchType::StrategicMerge => {
            let Value::Object(p) = patch else {
                return Err("patch body must be a JSON object".into());
            };
            let t = ensure_object(target);
            strategic_map(t, p, "", def)
        }
        PatchType::Json => json_patch(target, patch),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    let t = ensure_object(target);
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut().expect("just made an object")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn strategic_map(
    t: &mut Map<String, Value>,
    p: &Map<String, Value>,
    path: &str,
    def: &ResourceDef,
) -> Result<(), String> {
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *t = strip_directives(p);
            return Ok(());
        }
        Some("delete") => {
            t.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other} in map: {p:?}")),
    }
    for (k, v) in p {
        if k == "$patch" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if k == "$retainKeys" {
            return Err("$retainKeys directives are not supported by this server".into());
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            delete_from_list(t, field, v);
            continue;
        }
        strategic_field(t, k, v, &join(path, k), def)?;
    }
    Ok(())
}

fn strategic_field(
    t: &mut Map<String, Value>,
    k: &str,
    v: &Value,
    path: &str,
    def: &ResourceDef,
) -> Result<(), String> {
    match v {
        Value::Null => {
            t.remove(k);
        }
        Value::Object(pm) => {
            if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                t.remove(k);
                return Ok(());
            }
            let entry = t.entry(k.to_string()).or_insert(Value::Null);
            strategic_map(ensure_object(entry), pm, path, def)?;
        }
        Value::Array(items) => {
            let merged = match def.list_merge(path) {
                Some(ListMerge::ByKey(key)) => {
                    let current = take_list(t.remove(k));
                    merge_by_key(current, items, key, path, def)?
                }
                Some(ListMerge::Set) => {
                    let mut current = take_list(t.remove(k));
                    for item in items {
                        if !current.contains(item) {
                            current.push(item.clone());
                        }
                    }
                    current
                }
                None => items.clone(),
            };
            t.insert(k.to_string(), Value::Array(merged));
        }
        scalar => {
            t.insert(k.to_string(), scalar.clone());
        }
    }
    Ok(())
}

fn take_list(v: Option<Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

fn merge_by_key(
    mut current: Vec<Value>,
    items: &[Value],
    key: &str,
    path: &str,
    def: &ResourceDef,
) -> Result<Vec<Value>, String> {
    if items.iter().any(|i| is_directive(i, "replace")) {
        return Ok(items
            .iter()
            .filter(|i| !is_directive(i, "replace"))
            .cloned()
            .collect());
    }
    for item in items {
        let Value::Object(pm) = item else {
            return Err(format!(
                "list {path} with merge key {key} holds a non-object"
            ));
        };
        let Some(id) = pm.get(key) else {
            return Err(format!(
                "map: {item} does not contain declared merge key: {key}"
            ));
        };
        let pos = current.iter().position(|c| c.get(key) == Some(id));
        if is_directive(item, "delete") {
            current.retain(|c| c.get(key) != Some(id));
            continue;
        }
        match pos {
            Some(i) => strategic_map(ensure_object(&mut current[i]), pm, path, def)?,
            None => {
                let mut fresh = Map::new();
                strategic_map(&mut fresh, pm, path, def)?;
                current.push(Value::Object(fresh));
            }
        }
    }
    Ok(current)
}

fn is_directive(v: &Value, which: &str) -> bool {
    v.get("$patch").and_then(Value::as_str) == Some(which)
}

fn strip_directives(p: &Map<String, Value>) -> Map<String, Value> {
    p.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn delete_from_list(t: &mut Map<String, Value>, field: &str, remove: &Value) {
    let (Some(Value::Array(list)), Value::Array(gone)) = (t.get_mut(field), remove) else {
        return;
    };
    list.retain(|v| !gone.contains(v));
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let Value::Array(ops) = ops else {
        return Err("json patch must be an array of operations".into());
    };
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("json patch operation without a path")?;
        let value = || op.get("value").cloned().ok_or("missing value");
        let from = || op.get("from").and_then(Value::as_str).ok_or("missing from");
        match name {
            "add" => pointer_add(target, path, value()?)?,
            "remove" => drop(pointer_remove(target, path)?),
            "replace" => {
                pointer_remove(target, path)?;
                pointer_add(target, path, value()?)?;
            }
            "move" => {
                let v = pointer_remove(target, from()?)?;
                pointer_add(target, path, v)?;
            }
            "copy" => {
                let v = target
                    .pointer(from()?)
                    .cloned()
                    .ok_or("copy from missing path")?;
                pointer_add(target, path, v)?;
            }
            "test" => {
                if target.pointer(path) != Some(&value()?) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unexpected kind: {other:?}")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    Ok((parent.to_string(), last))
}

fn pointer_add(target: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = v;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, v);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                index(&last, a.len() + 1)?
            };
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        )),
    }
}

fn pointer_remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("remove operation does not apply: doc is missing path: {path:?}");
    match target.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(missing),
        Some(Value::Array(a)) => {
            let i = index(&last, a.len())?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

fn index(s: &str, len: usize) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(i) if i < len => Ok(i),
        _ => Err(format!("invalid array index {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        let mut t = target;
        apply(
            PatchType::StrategicMerge,
            &mut t,
            &patch,
            &ResourceDef::nodes(),
        )
        .unwrap();
        t
    }

    #[test]
    fn merge_patch_rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [{"b": "c"}]});
        merge_patch(&mut t, &json!({"a": [1]}));
        assert_eq!(t, json!({"a": [1]}));
    }

    #[test]
    fn strategic_merges_conditions_by_type() {
        let node = json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"},
            {"type": "Ready", "status": "True"}]}});
        let out = smp(
            node,
            json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "PodnetIsUp"},
            {"type": "Custom", "status": "True"}]}}),
        );
        assert_eq!(
            out,
            json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "PodnetIsUp"},
            {"type": "Ready", "status": "True"},
            {"type": "Custom", "status": "True"}]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let node = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"taints": [{"key": "x"}], "podCIDRs": ["10.0.0.0/24"]},
            "status": {"conditions": [{"type": "A"}, {"type": "B"}]}});
        let out = smp(
            node,
            json!({
            "$setElementOrder/status.conditions": [],
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"taints": [{"key": "y"}], "podCIDRs": ["fd00::/64"]},
            "status": {"conditions": [{"type": "A", "$patch": "delete"}]}}),
        );
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"taints": [{"key": "y"}], "podCIDRs": ["10.0.0.0/24", "fd00::/64"]},
            "status": {"conditions": [{"type": "B"}]}})
        );
        let mut t = json!({});
        let err = apply(
            PatchType::StrategicMerge,
            &mut t,
            &json!({"status": {"conditions": [{"status": "x"}]}}),
            &ResourceDef::nodes(),
        );
        assert!(
            err.unwrap_err()
                .contains("does not contain declared merge key: type")
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut t = json!({"metadata": {"labels": {"a": "1"}}, "l": [1, 2]});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "3"},
                {"op": "add", "path": "/l/-", "value": 3},
                {"op": "remove", "path": "/l/0"},
                {"op": "test", "path": "/l/0", "value": 2},
            ]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"a": "3", "b/c": "2"}}, "l": [2, 3]})
        );
        assert!(json_patch(&mut t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}

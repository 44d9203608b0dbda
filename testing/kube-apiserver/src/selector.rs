//! Label and field selectors as list/watch query parameters carry them.
//!
//! Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k`
//! (does not exist), comma-separated (k8s.io/apimachinery/pkg/labels). Fields: `k=v`, `k==v`,
//! `k!=v`, comma-separated, over `metadata.name`, `metadata.namespace` and the labels the
//! resource declares; other labels get the real 400 `field label not supported: <k>`.

use crate::resource::ResourceDef;
use crate::status::ApiError;
use crate::util::get_path;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum LabelOp {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<(String, LabelOp)>);

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl LabelSelector {
    /// Parses the `labelSelector` query value.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part).ok_or_else(|| {
                ApiError::bad_request(format!("unable to parse requirement: {part:?}"))
            })?);
        }
        Ok(LabelSelector(reqs))
    }

    /// True when the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        self.0.iter().all(|(key, op)| {
            let val = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
            match (op, val) {
                (LabelOp::Eq(v), Some(x)) => x == v,
                (LabelOp::Eq(_), None) => false,
                (LabelOp::NotEq(v), x) => x != Some(v.as_str()),
                (LabelOp::In(vs), Some(x)) => vs.iter().any(|v| v == x),
                (LabelOp::In(_), None) => false,
                (LabelOp::NotIn(vs), x) => x.is_none_or(|x| !vs.iter().any(|v| v == x)),
                (LabelOp::Exists, x) => x.is_some(),
                (LabelOp::NotExists, x) => x.is_none(),
            }
        })
    }

    /// No requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_requirement(part: &str) -> Option<(String, LabelOp)> {
    if let Some(key) = part.strip_prefix('!') {
        return valid_key(key.trim()).then(|| (key.trim().into(), LabelOp::NotExists));
    }
    for (sep, ctor) in [
        ("!=", LabelOp::NotEq as fn(String) -> LabelOp),
        ("==", LabelOp::Eq),
        ("=", LabelOp::Eq),
    ] {
        if let Some((k, v)) = part.split_once(sep) {
            let (k, v) = (k.trim(), v.trim());
            return valid_key(k).then(|| (k.into(), ctor(v.into())));
        }
    }
    for (word, set) in [(" notin ", false), (" in ", true)] {
        if let Some((k, vals)) = part.split_once(word) {
            let vals = vals.trim().strip_prefix('(')?.strip_suffix(')')?;
            let vals: Vec<String> = vals.split(',').map(|v| v.trim().to_string()).collect();
            let op = if set {
                LabelOp::In(vals)
            } else {
                LabelOp::NotIn(vals)
            };
            return valid_key(k.trim()).then(|| (k.trim().into(), op));
        }
    }
    valid_key(part).then(|| (part.into(), LabelOp::Exists))
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl FieldSelector {
    /// Parses the `fieldSelector` query value, refusing labels the resource does not support.
    pub fn parse(s: &str, def: &ResourceDef) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, eq, val) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let key = key.trim();
            let supported = key == "metadata.name"
                || (key == "metadata.namespace" && def.namespaced)
                || def.field_labels.iter().any(|l| l == key);
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key}"
                )));
            }
            reqs.push((key.to_string(), eq, val.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// A selector for one name (`metadata.name=<name>`).
    pub fn name(name: &str) -> Self {
        FieldSelector(vec![("metadata.name".into(), true, name.into())])
    }

    /// True when every field requirement holds (absent fields read as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(key, eq, want)| {
            let got = match get_path(obj, key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (got == *want) == *eq
        })
    }

    /// No requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1", "hostNetwork": true}})
    }

    #[test]
    fn label_selectors() {
        let p = pod(json!({"app": "web", "tier": "fe"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=fe", true),
            ("app!=web", false),
            ("app in (db, web)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app in (web),tier notin (be)", true),
            ("missing!=x", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&p),
                want,
                "{sel}"
            );
        }
        assert_eq!(LabelSelector::parse("a b").unwrap_err().code, 400);
    }

    #[test]
    fn field_selectors() {
        let def = ResourceDef::pods();
        let p = pod(json!({}));
        let sel = FieldSelector::parse("spec.nodeName=n1,metadata.namespace==ns", &def).unwrap();
        assert!(sel.matches(&p));
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1", &def)
                .unwrap()
                .matches(&p)
        );
        assert!(
            FieldSelector::parse("spec.hostNetwork=true", &def)
                .unwrap()
                .matches(&p)
        );
        let err = FieldSelector::parse("spec.foo=bar", &def).unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.foo");
    }
}

//! Manifest text to API objects: what a directory of manifests (or `kubectl get -o yaml`
//! output) holds, read without a cluster.
//!
//! Accepted: YAML with one or several documents (`---`), JSON (one object, several
//! concatenated, or an array), and lists (`kind: List`, or `PodList` etc.) with `items`. Kinds
//! that policy needs (`v1` Namespace, Pod, Node; `networking.k8s.io/v1` NetworkPolicy) become
//! typed k8s-openapi objects; any other kind is skipped with a note. A document or item that
//! cannot be read is its own error and the rest still load. YAML documents are split on
//! their `---` lines before parsing, so even a syntax error stays within its document.
//!
//! `load` goes one step further, through `convert`, into a `Cluster`.

use serde_json::Value;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;

use super::convert::{self, ConvertError};
use super::model::Cluster;

/// An object policy needs, as the API defines it.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Box<core::Namespace>),
    Pod(Box<core::Pod>),
    Node(Box<core::Node>),
    NetworkPolicy(Box<net::NetworkPolicy>),
}

/// A document or list item that is not a readable object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {what}: {message}")]
pub struct ManifestError {
    /// `document 3` or `document 3, items[4]` (documents count from 1).
    pub place: String,
    /// The object when it could be told (`networkpolicy x/bad`), else `document`.
    pub what: String,
    pub message: String,
    /// Which object could not be read, when it is a kind policy needs and has a name: a
    /// source may keep that object's last readable version.
    pub object: Option<ObjectId>,
}

/// An object's identity: its kind as the API names it (`NetworkPolicy`), namespace (empty for
/// cluster-wide kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// What a manifest text held.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub objects: Vec<Object>,
    /// Skipped objects (other kinds), one line each.
    pub notes: Vec<String>,
    pub errors: Vec<ManifestError>,
}

/// Reads every document of `text`.
pub fn parse(text: &str) -> Manifest {
    let mut out = Manifest::default();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        parse_json(text, &mut out);
    } else {
        for (i, doc) in yaml_documents(text).into_iter().enumerate() {
            let place = format!("document {}", i + 1);
            match serde_norway::from_str::<Value>(doc) {
                Ok(Value::Null) => {}
                Ok(v) => take_value(v, &place, &mut out),
                Err(e) => out.errors.push(doc_error(&place, e.to_string())),
            }
        }
    }
    out
}

fn parse_json(text: &str, out: &mut Manifest) {
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, v) in stream.enumerate() {
        let place = format!("document {}", i + 1);
        match v {
            Ok(Value::Array(items)) => take_items(items, &place, None, out),
            Ok(v) => take_value(v, &place, out),
            Err(e) => {
                // A JSON syntax error leaves the stream unreadable past it.
                out.errors.push(doc_error(&place, e.to_string()));
                return;
            }
        }
    }
}

/// The documents of a YAML stream: text between lines that start with `---` (a document
/// may open on the marker line itself, `--- {a: 1}`), up to an optional `...` end line.
fn yaml_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        let marker = bare == "---" || bare.starts_with("--- ") || bare == "...";
        if marker {
            docs.push(&text[start..offset]);
            start = offset + if bare == "..." { line.len() } else { 3 };
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

fn doc_error(place: &str, message: String) -> ManifestError {
    ManifestError {
        place: place.to_string(),
        what: "document".to_string(),
        message,
        object: None,
    }
}

/// One top-level value: an object or a list of them.
fn take_value(v: Value, place: &str, out: &mut Manifest) {
    let kind = str_field(&v, "kind").unwrap_or_default().to_string();
    if kind.ends_with("List") && v.get("items").is_some() {
        let api_version = str_field(&v, "apiVersion").unwrap_or("v1").to_string();
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        let default = item_kind.map(|k| (api_version, k.to_string()));
        match v {
            Value::Object(mut m) => match m.remove("items") {
                Some(Value::Array(items)) => take_items(items, place, default, out),
                Some(Value::Null) => {}
                _ => out
                    .errors
                    .push(doc_error(place, "items is not a list".into())),
            },
            _ => unreachable!("a value with fields is an object"),
        }
        return;
    }
    take_object(v, place, out);
}

/// List items; typed lists (`PodList`) may leave apiVersion/kind out of their items.
fn take_items(
    items: Vec<Value>,
    place: &str,
    default: Option<(String, String)>,
    out: &mut Manifest,
) {
    for (i, mut item) in items.into_iter().enumerate() {
        if let (Some((api_version, kind)), Value::Object(m)) = (&default, &mut item) {
            m.entry("apiVersion")
                .or_insert_with(|| api_version.clone().into());
            m.entry("kind").or_insert_with(|| kind.clone().into());
        }
        take_object(item, &format!("{place}, items[{i}]"), out);
    }
}

fn take_object(v: Value, place: &str, out: &mut Manifest) {
    if !v.is_object() {
        out.errors.push(doc_error(place, "not an object".into()));
        return;
    }
    let api_version = str_field(&v, "apiVersion").unwrap_or_default().to_string();
    let kind = str_field(&v, "kind").unwrap_or_default().to_string();
    let what = describe(&v, &kind);
    let meta = v.get("metadata").cloned();
    let typed = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => serde_json::from_value(v).map(|o| Object::Namespace(Box::new(o))),
        ("v1", "Pod") => serde_json::from_value(v).map(|o| Object::Pod(Box::new(o))),
        ("v1", "Node") => serde_json::from_value(v).map(|o| Object::Node(Box::new(o))),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            serde_json::from_value(v).map(|o| Object::NetworkPolicy(Box::new(o)))
        }
        _ => {
            let shown = if kind.is_empty() {
                "an object without kind"
            } else {
                &what
            };
            let version = if api_version.is_empty() {
                ""
            } else {
                &api_version
            };
            out.notes.push(format!(
                "{place}: skipped {version} {shown}: not used by policy"
            ));
            return;
        }
    };
    match typed {
        Ok(o) => out.objects.push(o),
        Err(e) => out.errors.push(ManifestError {
            place: place.to_string(),
            what,
            message: e.to_string(),
            object: identity(meta.as_ref(), &kind),
        }),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `networkpolicy x/name` from whatever metadata there is.
fn describe(v: &Value, kind: &str) -> String {
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| str_field(m, "name"))
        .unwrap_or("(no name)");
    let kind = kind.to_ascii_lowercase();
    match meta.and_then(|m| str_field(m, "namespace")) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The identity of an object from its metadata, when it has a name.
fn identity(meta: Option<&Value>, kind: &str) -> Option<ObjectId> {
    let meta = meta?;
    Some(ObjectId {
        kind: kind.to_string(),
        namespace: str_field(meta, "namespace").unwrap_or_default().to_string(),
        name: str_field(meta, "name")?.to_string(),
    })
}

/// Any reason an object did not make it into the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Invalid(#[from] ConvertError),
}

/// A manifest's objects added to `cluster` (later objects replace earlier ones of the same
/// name); returns the notes and the errors, one per refused document or object.
pub fn load_into(cluster: &mut Cluster, text: &str) -> (Vec<String>, Vec<LoadError>) {
    let manifest = parse(text);
    let mut errors: Vec<LoadError> = manifest.errors.into_iter().map(Into::into).collect();
    for object in &manifest.objects {
        if let Err(e) = add(cluster, object) {
            errors.push(e.into());
        }
    }
    (manifest.notes, errors)
}

/// Converts one object and puts it into `cluster`.
pub fn add(cluster: &mut Cluster, object: &Object) -> Result<(), ConvertError> {
    match object {
        Object::Namespace(o) => drop(cluster.upsert_namespace(convert::namespace(o)?)),
        Object::Pod(o) => drop(cluster.upsert_pod(convert::pod(o)?)),
        Object::Node(o) => drop(cluster.upsert_node(convert::node(o)?)),
        Object::NetworkPolicy(o) => drop(cluster.upsert_policy(convert::network_policy(o)?)),
    }
    Ok(())
}

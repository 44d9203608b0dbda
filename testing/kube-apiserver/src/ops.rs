//! What each verb does to the store: the registry "strategy" rules of the real server.
//!
//! - create: uid, creationTimestamp, resourceVersion; `generation: 1` where the strategy sets
//!   it (pods, networkpolicies); namespaces get the `kubernetes.io/metadata.name` label, the
//!   `kubernetes` finalizer and `status.phase: Active`; a pod created over HTTP has its status
//!   reset to `{phase: Pending, qosClass}` (pkg/registry/core/pod/strategy.go PrepareForCreate).
//! - update/patch of the main resource keeps `status` (when there is a status subresource);
//!   of `status` keeps `spec` (nodeStatusStrategy / podStatusStrategy PrepareForUpdate);
//!   metadata (labels, annotations) changes through both. uid, name, namespace and
//!   creationTimestamp never change; `generation` goes up when `spec` changes.
//! - a write that changes nothing commits nothing (no new resourceVersion, no event).
//! - delete is immediate (no graceful deletion, no finalizers); deleting a namespace deletes
//!   the namespaced objects in it first.

use crate::patch::{self, PatchType};
use crate::resource::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{ObjKey, State, Store};
use crate::util::{meta_str, metadata_mut, name_suffix, new_uid, now_rfc3339, object_field};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::sync::Arc;

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource: metadata and spec (status kept if there is a status subresource).
    Main,
    /// The `status` subresource: metadata and status (spec kept).
    Status,
    /// Everything (direct store access from tests).
    Whole,
}

/// DELETE preconditions (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

fn key(def: &ResourceDef, ns: &str, name: &str) -> ObjKey {
    ObjKey {
        plural: def.plural.clone(),
        ns: if def.namespaced {
            ns.into()
        } else {
            String::new()
        },
        name: name.into(),
    }
}

fn check_type(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let Value::Object(map) = obj else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let api_version = def.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {}
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {}
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
    }
    map.insert("apiVersion".into(), api_version.into());
    map.insert("kind".into(), def.kind.clone().into());
    Ok(())
}

fn check_namespace(def: &ResourceDef, obj: &mut Value, ns: &str) -> Result<(), ApiError> {
    let meta = metadata_mut(obj);
    if !def.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
    if !body_ns.is_empty() && body_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if ns.is_empty() {
        return Err(ApiError::bad_request(
            "a namespaced object needs metadata.namespace",
        ));
    }
    meta.insert("namespace".into(), ns.into());
    Ok(())
}

/// Server-side defaults for a new object; returns its name.
fn prepare_create(
    def: &ResourceDef,
    ns: &str,
    obj: &mut Value,
    http: bool,
) -> Result<String, ApiError> {
    check_type(def, obj)?;
    check_namespace(def, obj, ns)?;
    let meta = metadata_mut(obj);
    if http
        && meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let mut name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => name = format!("{prefix}{}", name_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        }
    }
    meta.insert("name".into(), name.clone().into());
    meta.insert("uid".into(), new_uid().into());
    meta.insert("creationTimestamp".into(), now_rfc3339().into());
    for gone in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(gone);
    }
    if def.sets_generation {
        meta.insert("generation".into(), 1.into());
    } else {
        meta.remove("generation");
    }
    kind_defaults_on_create(def, obj, &name, http);
    Ok(name)
}

fn kind_defaults_on_create(def: &ResourceDef, obj: &mut Value, name: &str, http: bool) {
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Namespace") => {
            namespace_label(obj, name);
            let spec = object_field(obj, "spec");
            let fins = spec.entry("finalizers").or_insert_with(|| json!([]));
            if let Value::Array(list) = fins
                && !list.iter().any(|f| f == "kubernetes")
            {
                list.push("kubernetes".into());
            }
            if http || obj.get("status").and_then(|s| s.get("phase")).is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        ("", "Pod") if http => {
            let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        _ => {}
    }
}

/// The namespace strategy keeps `kubernetes.io/metadata.name: <name>` on every write.
fn namespace_label(obj: &mut Value, name: &str) {
    let meta = metadata_mut(obj);
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels["kubernetes.io/metadata.name"] = name.into();
}

/// The pod's QoS class (pkg/apis/core/helper/qos): BestEffort without any cpu/memory
/// request or limit, Guaranteed when every container limits both and requests equal limits.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let res = |c: &Value, kind: &str, r: &str| {
        c.get("resources")
            .and_then(|x| x.get(kind))
            .and_then(|x| x.get(r))
            .cloned()
    };
    let any = containers.iter().any(|c| {
        ["cpu", "memory"]
            .iter()
            .any(|r| res(c, "requests", r).is_some() || res(c, "limits", r).is_some())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = res(c, "limits", r);
            limit.is_some() && res(c, "requests", r).is_none_or(|q| Some(q) == limit)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Creates an object; `http` applies the create-time resets a client request gets.
pub(crate) fn create(
    store: &Store,
    def: &ResourceDef,
    ns: &str,
    mut obj: Value,
    http: bool,
) -> Result<Value, ApiError> {
    let name = prepare_create(def, ns, &mut obj, http)?;
    let k = key(def, ns, &name);
    store.with_state(|st| {
        if st.objects.contains_key(&k) {
            return Err(ApiError::already_exists(def.group_resource(), &name));
        }
        committed(st.commit(k, Some(obj)))
    })
}

fn committed(v: Option<Arc<Value>>) -> Result<Value, ApiError> {
    v.map(|a| (*a).clone())
        .ok_or_else(|| ApiError::internal("commit of a missing object"))
}

/// Carries what a write may not change over from `old` into `new`.
fn prepare_update(def: &ResourceDef, old: &Value, mut new: Value, scope: Scope) -> Value {
    for field in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "deletionTimestamp",
        "generation",
    ] {
        match old.get("metadata").and_then(|m| m.get(field)) {
            Some(v) => metadata_mut(&mut new).insert(field.into(), v.clone()),
            None => metadata_mut(&mut new).remove(field),
        };
    }
    let keep = match scope {
        Scope::Main if def.status_subresource => Some("status"),
        Scope::Status => Some("spec"),
        _ => None,
    };
    if let (Some(part), Value::Object(map)) = (keep, &mut new) {
        match old.get(part) {
            Some(v) => map.insert(part.into(), v.clone()),
            None => map.remove(part),
        };
    }
    if def.sets_generation && old.get("spec") != new.get("spec") {
        let generation = old
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64);
        metadata_mut(&mut new).insert("generation".into(), (generation.unwrap_or(0) + 1).into());
    }
    if def.group.is_empty() && def.kind == "Namespace" {
        let name = meta_str(old, "name").to_string();
        namespace_label(&mut new, &name);
    }
    new
}

fn same_except_rv(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        metadata_mut(&mut v).remove("resourceVersion");
        v
    };
    strip(a) == strip(b)
}

/// Stores `new` for `k` unless it equals `old`; returns the stored object.
fn commit_update(st: &mut State, k: ObjKey, old: &Value, new: Value) -> Result<Value, ApiError> {
    if same_except_rv(old, &new) {
        return Ok(old.clone());
    }
    committed(st.commit(k, Some(new)))
}

/// PUT: replaces an object (409 on a stale `metadata.resourceVersion`, unless `Scope::Whole`).
pub(crate) fn update(
    store: &Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    mut new: Value,
    scope: Scope,
) -> Result<Value, ApiError> {
    check_type(def, &mut new)?;
    let body_name = meta_str(&new, "name").to_string();
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    check_namespace(def, &mut new, ns)?;
    let k = key(def, ns, name);
    store.with_state(|st| {
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(def.group_resource(), name))?;
        let rv = meta_str(&new, "resourceVersion");
        if scope != Scope::Whole && !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(def.group_resource(), name));
        }
        let merged = prepare_update(def, &old, new, scope);
        commit_update(st, k, &old, merged)
    })
}

/// PATCH: applies a patch to the stored object, then the same rules as an update.
pub(crate) fn patch(
    store: &Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    kind: PatchType,
    body: &Value,
    scope: Scope,
) -> Result<Value, ApiError> {
    let k = key(def, ns, name);
    store.with_state(|st| {
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(def.group_resource(), name))?;
        let mut target = (*old).clone();
        patch::apply(kind, &mut target, body, def).map_err(ApiError::bad_request)?;
        check_type(def, &mut target)?;
        let rv = meta_str(&target, "resourceVersion");
        if !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(def.group_resource(), name));
        }
        let merged = prepare_update(def, &old, target, scope);
        commit_update(st, k, &old, merged)
    })
}

/// DELETE: removes the object (and, for a namespace, everything in it) and returns its last state.
pub(crate) fn delete(
    store: &Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    pre: Option<&Preconditions>,
) -> Result<Value, ApiError> {
    let k = key(def, ns, name);
    store.with_state(|st| {
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(def.group_resource(), name))?;
        check_preconditions(def, name, &old, pre)?;
        if def.group.is_empty() && def.kind == "Namespace" {
            let inside: Vec<ObjKey> = st
                .objects
                .keys()
                .filter(|o| o.ns == name && st.def_for(&o.plural).is_some_and(|d| d.namespaced))
                .cloned()
                .collect();
            for o in inside {
                st.commit(o, None);
            }
        }
        committed(st.commit(k, None))
    })
}

fn check_preconditions(
    def: &ResourceDef,
    name: &str,
    old: &Value,
    pre: Option<&Preconditions>,
) -> Result<(), ApiError> {
    let Some(pre) = pre else { return Ok(()) };
    let gr = def.group_resource();
    let conflict = |why: String| {
        let mut e = ApiError::conflict(gr, name);
        e.message = format!(
            "Operation cannot be fulfilled on {} {name:?}: {why}",
            gr.qualified()
        );
        e
    };
    if let Some(uid) = &pre.uid
        && uid != meta_str(old, "uid")
    {
        return Err(conflict(format!(
            "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
            meta_str(old, "uid")
        )));
    }
    if let Some(rv) = &pre.resource_version
        && rv != meta_str(old, "resourceVersion")
    {
        return Err(conflict(format!(
            "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
            meta_str(old, "resourceVersion")
        )));
    }
    Ok(())
}

/// LIST query parameters.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListOpts {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// One page of a list.
pub(crate) struct ListPage {
    pub resource_version: u64,
    pub items: Vec<Arc<Value>>,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// Parses a resourceVersion parameter ("" counts as unset).
pub(crate) fn parse_rv(rv: Option<&str>) -> Result<Option<u64>, ApiError> {
    match rv {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {s:?}: invalid resource version"
            ))
        }),
    }
}

fn encode_continue(rv: u64, last: &ObjKey) -> String {
    let start = if last.ns.is_empty() {
        format!("{}\u{0}", last.name)
    } else {
        format!("{}/{}\u{0}", last.ns, last.name)
    };
    B64.encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: invalid continue token");
    let raw = B64.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    let start = start.strip_suffix('\u{0}').ok_or_else(bad)?;
    let (ns, name) = start.split_once('/').unwrap_or(("", start));
    Ok((rv, ns.to_string(), name.to_string()))
}

/// Which resourceVersion a list is served at, and where a continued list resumes.
fn list_point(st: &State, o: &ListOpts) -> Result<(u64, Option<(String, String)>), ApiError> {
    let rv = parse_rv(o.resource_version.as_deref())?;
    if let Some(token) = &o.continue_token {
        if rv.is_some_and(|r| r != 0) {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (at, ns, name) = decode_continue(token)?;
        if at < st.compacted {
            return Err(ApiError::expired(CONTINUE_EXPIRED.into()));
        }
        return Ok((at, Some((ns, name))));
    }
    let exact = match (rv, o.resource_version_match.as_deref()) {
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        (None | Some(0), _) => return Ok((st.rv, None)),
        (Some(_), Some("Exact")) => true,
        (Some(_), Some("NotOlderThan")) => false,
        (Some(_), None) => o.limit.is_some(),
        (Some(_), Some(other)) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}"
            )));
        }
    };
    let n = rv.unwrap_or(0);
    if n > st.rv {
        return Err(ApiError::too_large_resource_version(n, st.rv));
    }
    Ok((if exact { n } else { st.rv }, None))
}

/// LIST: a consistent page of `def` objects (in `ns`, or all namespaces with `None`).
pub(crate) fn list(
    store: &Store,
    def: &ResourceDef,
    ns: Option<&str>,
    o: &ListOpts,
) -> Result<ListPage, ApiError> {
    let st = store.state();
    let (at, start) = list_point(&st, o)?;
    let snapshot = st.snapshot(&def.plural, at)?;
    drop(st);
    let after = |k: &ObjKey| {
        start
            .as_ref()
            .is_none_or(|(sns, sname)| (&k.ns, &k.name) > (sns, sname))
    };
    let mut matching = snapshot.into_iter().filter(|(k, v)| {
        ns.is_none_or(|n| k.ns == n) && after(k) && o.labels.matches(v) && o.fields.matches(v)
    });
    let limit = o.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut last = None;
    for (k, v) in matching.by_ref().take(limit) {
        items.push(v);
        last = Some(k);
    }
    let rest = matching.count();
    let (continue_token, remaining) = match (rest, last) {
        (0, _) | (_, None) => (None, None),
        (n, Some(k)) => {
            let counted = o.labels.is_empty() && o.fields.is_empty();
            (Some(encode_continue(at, &k)), counted.then_some(n))
        }
    };
    Ok(ListPage {
        resource_version: at,
        items,
        continue_token,
        remaining,
    })
}

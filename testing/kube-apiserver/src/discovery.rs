//! Discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`), generated from
//! the registered resources. Typed `kube::Api<K>` calls none of them; `kube::Discovery` does.

use crate::status::ApiError;
use crate::store::Store;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// `/api`.
pub(crate) fn api_versions(addr: SocketAddr) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}]})
}

/// `/apis`: every non-core group with its versions.
pub(crate) fn api_groups(store: &Store) -> Value {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in store.resources().iter().filter(|d| !d.group.is_empty()) {
        let versions = groups.entry(d.group.clone()).or_default();
        if !versions.contains(&d.version) {
            versions.push(d.version.clone());
        }
    }
    let groups: Vec<Value> = groups
        .iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/{group}/{version}`: the resources and subresources served there.
pub(crate) fn resource_list(store: &Store, group: &str, version: &str) -> Result<Value, ApiError> {
    let defs: Vec<_> = store
        .resources()
        .into_iter()
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if defs.is_empty() {
        return Err(ApiError::no_route());
    }
    let verbs = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let mut resources = Vec::new();
    for d in &defs {
        resources.push(json!({"name": d.plural, "singularName": d.kind.to_lowercase(), "namespaced": d.namespaced, "kind": d.kind, "verbs": verbs}));
        if d.status_subresource {
            resources.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = defs[0].api_version();
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

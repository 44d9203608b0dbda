//! Resource definitions: what the server serves, and how each resource behaves.
//!
//! A [`ResourceDef`] names a resource (group, version, plural, kind), its scope, whether it
//! has a `status` subresource, which field selectors it accepts, how strategic merge patch
//! merges its lists (the `patchStrategy`/`patchMergeKey` tags of the Go types), and the few
//! per-resource strategy quirks this server reproduces.

use crate::status::GroupResource;

/// How strategic merge patch treats a list at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListMerge {
    /// `patchStrategy:"merge" patchMergeKey:"<key>"`: elements are merged by this key.
    ByKey(String),
    /// `patchStrategy:"merge"` on a list of scalars: union, existing order kept.
    Set,
}

/// One resource the server serves. Build with [`ResourceDef::new`] and the `with_*` methods.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group, "" for core.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Plural resource name used in paths, e.g. `nodes`.
    pub plural: String,
    /// Kind, e.g. `Node`.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `status` subresource (then the main resource ignores `status` on writes).
    pub status_subresource: bool,
    /// Field selector labels besides `metadata.name` and `metadata.namespace`.
    pub field_labels: Vec<String>,
    /// Strategic-merge list strategies by dotted path (list indices are not part of paths).
    pub list_merges: Vec<(String, ListMerge)>,
    /// Create sets `metadata.generation: 1`; a `spec` change increments it.
    pub sets_generation: bool,
    /// DELETE answers with the deleted object (pods, namespaces) instead of a `Status`.
    pub returns_deleted_object: bool,
}

impl ResourceDef {
    /// A resource with no status subresource, no extra field labels and no list merge keys.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        let mut def = ResourceDef {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            field_labels: Vec::new(),
            list_merges: Vec::new(),
            sets_generation: false,
            returns_deleted_object: false,
        };
        // ObjectMeta tags, common to every kind.
        def = def.with_merge_key("metadata.ownerReferences", "uid");
        def.with_merge_set("metadata.finalizers")
    }

    /// Serves `.../{name}/status`.
    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// Accepts these field selector labels.
    pub fn with_field_labels(mut self, labels: &[&str]) -> Self {
        self.field_labels
            .extend(labels.iter().map(|l| l.to_string()));
        self
    }

    /// The list at `path` merges by `key` in strategic merge patches.
    pub fn with_merge_key(mut self, path: &str, key: &str) -> Self {
        self.list_merges
            .push((path.into(), ListMerge::ByKey(key.into())));
        self
    }

    /// The scalar list at `path` merges as a set in strategic merge patches.
    pub fn with_merge_set(mut self, path: &str) -> Self {
        self.list_merges.push((path.into(), ListMerge::Set));
        self
    }

    /// Create sets `metadata.generation`, spec changes bump it.
    pub fn with_generation(mut self) -> Self {
        self.sets_generation = true;
        self
    }

    /// DELETE returns the deleted object.
    pub fn with_deleted_object_returned(mut self) -> Self {
        self.returns_deleted_object = true;
        self
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Group and resource, for error messages.
    pub fn group_resource(&self) -> GroupResource<'_> {
        GroupResource {
            group: &self.group,
            resource: &self.plural,
        }
    }

    /// The list merge strategy at a dotted path, if any.
    pub fn list_merge(&self, path: &str) -> Option<&ListMerge> {
        self.list_merges
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, m)| m)
    }

    /// Core v1 `nodes` (cluster-scoped, status subresource; merge keys from k8s.io/api/core/v1).
    pub fn nodes() -> Self {
        Self::new("", "v1", "nodes", "Node", false)
            .with_status()
            .with_field_labels(&["spec.unschedulable"])
            .with_merge_key("status.conditions", "type")
            .with_merge_key("status.addresses", "type")
            .with_merge_key("status.volumesAttached", "name")
            .with_merge_set("spec.podCIDRs")
    }

    /// Core v1 `pods` (namespaced, status subresource, generation, DELETE returns the pod).
    pub fn pods() -> Self {
        Self::new("", "v1", "pods", "Pod", true)
            .with_status()
            .with_generation()
            .with_deleted_object_returned()
            .with_field_labels(&[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ])
            .with_merge_key("spec.containers", "name")
            .with_merge_key("spec.initContainers", "name")
            .with_merge_key("spec.containers.ports", "containerPort")
            .with_merge_key("spec.containers.env", "name")
            .with_merge_key("spec.containers.volumeMounts", "mountPath")
            .with_merge_key("spec.volumes", "name")
            .with_merge_key("spec.imagePullSecrets", "name")
            .with_merge_key("status.conditions", "type")
            .with_merge_key("status.podIPs", "ip")
            .with_merge_key("status.hostIPs", "ip")
    }

    /// Core v1 `namespaces` (cluster-scoped, status subresource, DELETE returns the namespace).
    pub fn namespaces() -> Self {
        Self::new("", "v1", "namespaces", "Namespace", false)
            .with_status()
            .with_deleted_object_returned()
            .with_field_labels(&["status.phase"])
            .with_merge_key("status.conditions", "type")
    }

    /// `networking.k8s.io/v1` `networkpolicies` (namespaced, generation).
    pub fn network_policies() -> Self {
        Self::new(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
        )
        .with_generation()
    }

    /// The resources registered by default.
    pub fn builtins() -> Vec<ResourceDef> {
        vec![
            Self::nodes(),
            Self::pods(),
            Self::namespaces(),
            Self::network_policies(),
        ]
    }
}

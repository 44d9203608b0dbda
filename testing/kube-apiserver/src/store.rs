//! The object store: every object, one global resourceVersion counter and the event history
//! that watches and consistent paginated lists are served from.
//!
//! [`Store`] is a cheap, thread-safe handle. Tests use it directly to arrange and inspect
//! state; the HTTP server uses the same handle, so a `Store` taken from a stopped server and
//! given to a new one is an "API server restart" that keeps objects and resourceVersions.

use crate::auth::{Control, ForbiddenRule, RequestRecord};
use crate::ops::{self, Scope};
use crate::patch::PatchType;
use crate::resource::ResourceDef;
use crate::status::ApiError;
use crate::util::{meta_str, metadata_mut};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// How many events the history keeps before the oldest are forgotten (as etcd compacts).
pub const DEFAULT_HISTORY: usize = 100_000;

/// Where an object lives: resource, namespace ("" when cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjKey {
    pub plural: String,
    pub ns: String,
    pub name: String,
}

/// A change as watches report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change. `object` is the new state (for a delete: the last state, carrying
/// the delete's resourceVersion); `prev` is the state before.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: ObjKey,
    pub kind: EventKind,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

pub(crate) struct State {
    pub rv: u64,
    pub defs: Vec<Arc<ResourceDef>>,
    pub objects: BTreeMap<ObjKey, Arc<Value>>,
    pub events: VecDeque<Event>,
    /// Events up to and including this resourceVersion are forgotten.
    pub compacted: u64,
    pub history_limit: usize,
}

struct Inner {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    breaks: watch::Sender<u64>,
    control: Mutex<Control>,
}

/// Handle to the objects and the server's runtime controls (tokens, rules, request log).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// An empty store with the built-in resources (nodes, pods, namespaces, networkpolicies).
    pub fn new() -> Self {
        let state = State {
            rv: 0,
            defs: ResourceDef::builtins().into_iter().map(Arc::new).collect(),
            objects: BTreeMap::new(),
            events: VecDeque::new(),
            compacted: 0,
            history_limit: DEFAULT_HISTORY,
        };
        Store {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                changes: watch::channel(0).0,
                breaks: watch::channel(0).0,
                control: Mutex::new(Control::default()),
            }),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        lock(&self.inner.control)
    }

    pub(crate) fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub(crate) fn subscribe_breaks(&self) -> watch::Receiver<u64> {
        self.inner.breaks.subscribe()
    }

    /// Serves another resource (replacing one with the same group and plural).
    pub fn register(&self, def: ResourceDef) {
        let mut st = self.state();
        st.defs
            .retain(|d| !(d.group == def.group && d.plural == def.plural));
        st.defs.push(Arc::new(def));
    }

    /// The definition for a plural resource name (e.g. `nodes`).
    pub fn resource(&self, plural: &str) -> Option<Arc<ResourceDef>> {
        self.state()
            .defs
            .iter()
            .find(|d| d.plural == plural)
            .cloned()
    }

    pub(crate) fn resource_by_path(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceDef>> {
        self.state()
            .defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    pub(crate) fn resources(&self) -> Vec<Arc<ResourceDef>> {
        self.state().defs.clone()
    }

    fn resource_for(&self, obj: &Value) -> Result<Arc<ResourceDef>, ApiError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.state()
            .defs
            .iter()
            .find(|d| d.api_version() == api_version && d.kind == kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no resource is registered for apiVersion {api_version:?} kind {kind:?}"
                ))
            })
    }

    fn def(&self, plural: &str) -> Result<Arc<ResourceDef>, ApiError> {
        self.resource(plural)
            .ok_or_else(|| ApiError::bad_request(format!("unknown resource {plural:?}")))
    }

    /// The current (last committed) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// Creates an object as a controller or kubelet would, but keeping everything given,
    /// `status` included (the server still sets uid, creationTimestamp, resourceVersion,
    /// generation and the namespace name label). The resource is found from apiVersion/kind.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let def = self.resource_for(&obj)?;
        let ns = meta_str(&obj, "namespace").to_string();
        ops::create(self, &def, &ns, obj, false)
    }

    /// Replaces an object unconditionally (no resourceVersion check), status included.
    pub fn replace(&self, obj: Value) -> Result<Value, ApiError> {
        let def = self.resource_for(&obj)?;
        let ns = meta_str(&obj, "namespace").to_string();
        let name = meta_str(&obj, "name").to_string();
        let mut obj = obj;
        metadata_mut(&mut obj).remove("resourceVersion");
        ops::update(self, &def, &ns, &name, obj, Scope::Whole)
    }

    /// Patches a whole object (spec, status and metadata alike). `ns` is "" for cluster scope.
    pub fn patch(
        &self,
        plural: &str,
        ns: &str,
        name: &str,
        kind: PatchType,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let def = self.def(plural)?;
        ops::patch(self, &def, ns, name, kind, patch, Scope::Whole)
    }

    /// Deletes an object and returns its last state. `ns` is "" for cluster scope.
    pub fn delete(&self, plural: &str, ns: &str, name: &str) -> Result<Value, ApiError> {
        let def = self.def(plural)?;
        ops::delete(self, &def, ns, name, None)
    }

    /// One object, as GET returns it. `ns` is "" for cluster scope.
    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let key = ObjKey {
            plural: plural.into(),
            ns: ns.into(),
            name: name.into(),
        };
        self.state().objects.get(&key).map(|v| (**v).clone())
    }

    /// All objects of a resource, in one namespace or (with `None`) all, in key order.
    pub fn list(&self, plural: &str, ns: Option<&str>) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|(k, _)| k.plural == plural && ns.is_none_or(|n| k.ns == n))
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    /// Forgets the event history, as etcd compaction does: watches and continue tokens from
    /// any resourceVersion older than the current one now get 410 Gone.
    pub fn compact(&self) {
        let mut st = self.state();
        st.events.clear();
        st.compacted = st.rv;
    }

    /// Keeps at most `events` events of history (older ones are compacted away).
    pub fn set_history_limit(&self, events: usize) {
        let mut st = self.state();
        st.history_limit = events.max(1);
        st.trim_history();
    }

    /// Ends every open watch stream abruptly (the connection drops mid-stream).
    pub fn break_watches(&self) {
        self.inner.breaks.send_modify(|n| *n += 1);
    }

    /// The requests served so far (oldest first).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.control().log.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.control().log.clear();
    }

    /// Accepts `token` as bearer token for `user` (replacing what it mapped to before).
    pub fn set_token(&self, token: &str, user: &str) {
        self.control().tokens.insert(token.into(), user.into());
    }

    /// Stops accepting `token`: requests with it get 401.
    pub fn revoke_token(&self, token: &str) {
        self.control().tokens.remove(token);
    }

    /// Whether requests without credentials are served (as `system:anonymous`).
    pub fn set_anonymous(&self, allowed: bool) {
        self.control().anonymous = allowed;
    }

    /// Adds a rule that makes matching requests fail with 403.
    pub fn forbid(&self, rule: ForbiddenRule) {
        self.control().forbidden.push(rule);
    }

    /// Removes a rule added with [`Store::forbid`] or configured at start.
    pub fn allow(&self, rule: &ForbiddenRule) {
        self.control().forbidden.retain(|r| r != rule);
    }

    /// Removes every forbidden rule.
    pub fn clear_forbidden(&self) {
        self.control().forbidden.clear();
    }

    /// Runs `f` on the state and, if it committed anything, wakes the watches.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, before, after) = {
            let mut st = self.state();
            let before = st.rv;
            let r = f(&mut st);
            (r, before, st.rv)
        };
        if after != before {
            self.inner.changes.send_replace(after);
        }
        r
    }
}

impl State {
    pub(crate) fn def_for(&self, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs.iter().find(|d| d.plural == plural).cloned()
    }

    /// Commits a new state for `key` (`None` deletes) under the next resourceVersion.
    pub(crate) fn commit(&mut self, key: ObjKey, new: Option<Value>) -> Option<Arc<Value>> {
        let rv = self.rv + 1;
        let set_rv = |v: &mut Value| {
            metadata_mut(v).insert("resourceVersion".into(), rv.to_string().into());
        };
        let event = match new {
            Some(mut v) => {
                set_rv(&mut v);
                let object = Arc::new(v);
                let prev = self.objects.insert(key.clone(), object.clone());
                let kind = if prev.is_some() {
                    EventKind::Modified
                } else {
                    EventKind::Added
                };
                Event {
                    rv,
                    key,
                    kind,
                    object,
                    prev,
                }
            }
            None => {
                let prev = self.objects.remove(&key)?;
                let mut last = (*prev).clone();
                set_rv(&mut last);
                Event {
                    rv,
                    key,
                    kind: EventKind::Deleted,
                    object: Arc::new(last),
                    prev: Some(prev),
                }
            }
        };
        self.rv = rv;
        let object = event.object.clone();
        self.events.push_back(event);
        self.trim_history();
        Some(object)
    }

    fn trim_history(&mut self) {
        while self.events.len() > self.history_limit {
            if let Some(e) = self.events.pop_front() {
                self.compacted = e.rv;
            }
        }
    }

    /// Objects of `plural` as they were at resourceVersion `at` (410 if history is gone).
    pub(crate) fn snapshot(
        &self,
        plural: &str,
        at: u64,
    ) -> Result<BTreeMap<ObjKey, Arc<Value>>, ApiError> {
        let mut objs: BTreeMap<ObjKey, Arc<Value>> = self
            .objects
            .iter()
            .filter(|(k, _)| k.plural == plural)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if at >= self.rv {
            return Ok(objs);
        }
        if at < self.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {at} ({})",
                self.compacted
            )));
        }
        for e in self.events.iter().rev().take_while(|e| e.rv > at) {
            if e.key.plural != plural {
                continue;
            }
            match &e.prev {
                Some(p) => objs.insert(e.key.clone(), p.clone()),
                None => objs.remove(&e.key),
            };
        }
        Ok(objs)
    }
}

//! `ApiError` and the `Status` objects the real API server returns for failures.
//!
//! Message and detail shapes follow k8s.io/apimachinery/pkg/api/errors (NewNotFound,
//! NewAlreadyExists, NewConflict, NewForbidden, NewResourceExpired, NewInvalid, ...):
//! `details.kind` is the *resource* (plural) for resource errors and the *Kind* for
//! `Invalid`, and a group-qualified resource prints as `plural.group`.

use serde_json::{Map, Value, json};
use std::fmt;

/// A failed API call: the HTTP status code and the `Status` body that goes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code (`Status.code`).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`.
    pub reason: String,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the real server sets it.
    pub details: Option<Value>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A group and resource (plural), as error messages name them.
#[derive(Debug, Clone, Copy)]
pub struct GroupResource<'a> {
    pub group: &'a str,
    pub resource: &'a str,
}

impl GroupResource<'_> {
    /// `nodes` for the core group, `networkpolicies.networking.k8s.io` otherwise.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn details(&self, name: &str) -> Value {
        details(name, self.group, self.resource)
    }
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), name.into());
    }
    if !group.is_empty() {
        d.insert("group".into(), group.into());
    }
    if !kind.is_empty() {
        d.insert("kind".into(), kind.into());
    }
    Value::Object(d)
}

impl ApiError {
    fn new(code: u16, reason: &str, message: String, details: Option<Value>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message,
            details,
        }
    }

    /// 404 `nodes "x" not found`.
    pub fn not_found(gr: GroupResource, name: &str) -> Self {
        let msg = format!("{} {:?} not found", gr.qualified(), name);
        Self::new(404, "NotFound", msg, Some(gr.details(name)))
    }

    /// 409 `nodes "x" already exists`.
    pub fn already_exists(gr: GroupResource, name: &str) -> Self {
        let msg = format!("{} {:?} already exists", gr.qualified(), name);
        Self::new(409, "AlreadyExists", msg, Some(gr.details(name)))
    }

    /// 409 Conflict for a stale `resourceVersion` (the storage layer's optimistic-lock message).
    pub fn conflict(gr: GroupResource, name: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} {:?}: the object has been modified; \
             please apply your changes to the latest version and try again",
            gr.qualified(),
            name
        );
        Self::new(409, "Conflict", msg, Some(gr.details(name)))
    }

    /// 403 with the authorizer's message (responsewriters.forbiddenMessage + NewForbidden).
    pub fn forbidden(gr: GroupResource, name: &str, reason: &str) -> Self {
        let msg = if name.is_empty() {
            format!("{} is forbidden: {reason}", gr.qualified())
        } else {
            format!("{} {:?} is forbidden: {reason}", gr.qualified(), name)
        };
        Self::new(403, "Forbidden", msg, Some(gr.details(name)))
    }

    /// 401 as the authentication filter writes it.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    /// 410 Expired, e.g. `too old resource version: 5 (17)`.
    pub fn expired(message: String) -> Self {
        Self::new(410, "Expired", message, None)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), None)
    }

    /// 404 for a path that names no resource (the mux's plain 404, as a Status).
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    /// 405 for a verb the resource does not serve.
    pub fn method_not_supported(gr: GroupResource, action: &str) -> Self {
        let msg = format!(
            "{action} is not supported on resources of kind {:?}",
            gr.qualified()
        );
        Self::new(405, "MethodNotAllowed", msg, Some(gr.details("")))
    }

    /// 415 for a PATCH content type this server does not apply.
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        let msg = format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        );
        Self::new(415, "UnsupportedMediaType", msg, None)
    }

    /// 422 Invalid for one field error; `kind` is the Kind (qualified with its group).
    pub fn invalid(kind: &str, group: &str, name: &str, field: &str, detail: &str) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let msg = format!("{qualified} {name:?} is invalid: {field}: {detail}");
        let mut d = details(name, group, kind);
        d["causes"] = json!([{"reason": "FieldValueRequired", "message": detail, "field": field}]);
        Self::new(422, "Invalid", msg, Some(d))
    }

    /// 504 for a resourceVersion newer than the store has (apiserver's "Too large resource version").
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let msg = format!("Timeout: Too large resource version: {requested}, current: {current}");
        let d = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1});
        Self::new(504, "Timeout", msg, Some(d))
    }

    /// 413 for a request body over the limit (or one that could not be read).
    pub fn too_large(limit: usize) -> Self {
        let msg = format!("Request entity too large: limit is {limit}");
        Self::new(413, "RequestEntityTooLarge", msg, None)
    }

    /// 500 for a bug in this server (never expected; kept instead of a panic).
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        let d = json!({"causes": [{"message": message}]});
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
            Some(d),
        )
    }

    /// The `Status` object as JSON (field order as metav1.Status declares it).
    pub fn to_status(&self) -> Value {
        let mut s = Map::new();
        s.insert("kind".into(), "Status".into());
        s.insert("apiVersion".into(), "v1".into());
        s.insert("metadata".into(), json!({}));
        s.insert("status".into(), "Failure".into());
        s.insert("message".into(), self.message.clone().into());
        s.insert("reason".into(), self.reason.clone().into());
        if let Some(d) = &self.details {
            s.insert("details".into(), d.clone());
        }
        s.insert("code".into(), self.code.into());
        Value::Object(s)
    }
}

/// The `Status` a successful DELETE returns for resources that do not return the object.
pub fn delete_success(gr: GroupResource, name: &str, uid: &str) -> Value {
    let mut d = gr.details(name);
    if !uid.is_empty() {
        d["uid"] = uid.into();
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

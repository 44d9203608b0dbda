//! Authentication (bearer tokens, client certificates, anonymous), "forbidden" rules standing
//! in for RBAC, and the request log.
//!
//! As kube-apiserver's union authenticator does: a verified client certificate wins (CN is the
//! user, O the groups); otherwise a bearer token must be known (an unknown or revoked one is
//! 401 even when anonymous requests are allowed); without credentials the request is
//! `system:anonymous` if anonymous access is on, 401 otherwise. Authorization allows
//! everything except what a [`ForbiddenRule`] matches.

use std::collections::BTreeMap;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name (token's user, certificate CN, or `system:anonymous`).
    pub name: String,
    /// Groups (certificate O values; `system:unauthenticated` for anonymous).
    pub groups: Vec<String>,
}

impl User {
    /// The anonymous user.
    pub fn anonymous() -> Self {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// Makes matching requests fail with 403 Forbidden. `None` fields match anything; `verb`
/// and `resource` accept `*`. `resource` names a subresource as `nodes/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForbiddenRule {
    /// Only this user (None: everyone).
    pub user: Option<String>,
    /// get, list, watch, create, update, patch, delete, or `*`.
    pub verb: String,
    /// `nodes`, `nodes/status`, `pods`, ... or `*`.
    pub resource: String,
    /// Only in this namespace.
    pub namespace: Option<String>,
    /// Only this object name.
    pub name: Option<String>,
}

impl ForbiddenRule {
    /// Forbids `verb` on `resource` for everyone.
    pub fn new(verb: &str, resource: &str) -> Self {
        ForbiddenRule {
            user: None,
            verb: verb.into(),
            resource: resource.into(),
            namespace: None,
            name: None,
        }
    }

    /// Restricts the rule to one user.
    pub fn for_user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Restricts the rule to one namespace.
    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Restricts the rule to one object name.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn matches(
        &self,
        user: &str,
        verb: &str,
        resource: &str,
        ns: &str,
        name: &str,
    ) -> bool {
        let opt = |rule: &Option<String>, v: &str| rule.as_deref().is_none_or(|r| r == v);
        (self.verb == "*" || self.verb == verb)
            && (self.resource == "*" || self.resource == resource)
            && opt(&self.user, user)
            && opt(&self.namespace, ns)
            && opt(&self.name, name)
    }
}

/// One served request, as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string ("" if none).
    pub query: String,
    /// `Content-Type` header, if sent.
    pub content_type: Option<String>,
    /// Authenticated user, if authentication succeeded.
    pub user: Option<String>,
    /// HTTP status code of the response.
    pub status: u16,
    /// Request body for writes (PUT, POST, PATCH, DELETE), as text.
    pub body: Option<String>,
}

/// Runtime controls kept in the [`crate::Store`].
#[derive(Debug, Clone)]
pub(crate) struct Control {
    pub tokens: BTreeMap<String, String>,
    pub anonymous: bool,
    pub forbidden: Vec<ForbiddenRule>,
    pub log: Vec<RequestRecord>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            tokens: BTreeMap::new(),
            anonymous: true,
            forbidden: Vec::new(),
            log: Vec::new(),
        }
    }
}

impl Control {
    /// Who the request is, or `None` for 401.
    pub fn authenticate(&self, cert_user: Option<&User>, bearer: Option<&str>) -> Option<User> {
        if let Some(u) = cert_user {
            return Some(u.clone());
        }
        match bearer {
            Some(token) => self.tokens.get(token).map(|name| User {
                name: name.clone(),
                groups: vec!["system:authenticated".into()],
            }),
            None => self.anonymous.then(User::anonymous),
        }
    }

    /// True if a forbidden rule matches.
    pub fn is_forbidden(
        &self,
        user: &str,
        verb: &str,
        resource: &str,
        ns: &str,
        name: &str,
    ) -> bool {
        self.forbidden
            .iter()
            .any(|r| r.matches(user, verb, resource, ns, name))
    }
}

/// The authorizer's denial text (k8s.io/apiserver responsewriters.forbiddenMessage).
pub fn forbidden_reason(user: &str, verb: &str, resource: &str, group: &str, ns: &str) -> String {
    if ns.is_empty() {
        format!(
            "User {user:?} cannot {verb} resource {resource:?} in API group {group:?} at the cluster scope"
        )
    } else {
        format!(
            "User {user:?} cannot {verb} resource {resource:?} in API group {group:?} in the namespace {ns:?}"
        )
    }
}

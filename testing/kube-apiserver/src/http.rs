//! Request handling: authentication, routing of API paths, authorization, the verbs, the
//! request log. Every failure is answered with a real `Status` body; nothing here panics on
//! client input.

use crate::auth::{RequestRecord, User, forbidden_reason};
use crate::ops::{self, ListOpts, Preconditions, Scope};
use crate::patch::PatchType;
use crate::resource::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Body;
use crate::status::{ApiError, delete_success};
use crate::watch::{self, WatchOpts};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (kube-apiserver's default is 3 MiB for most objects).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// What every request handler needs.
pub(crate) struct Ctx {
    pub store: crate::Store,
    pub bookmark_interval: Option<Duration>,
    pub page_size_cap: Option<usize>,
    pub addr: SocketAddr,
}

/// The parts of a request the handlers use.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// A resource request after routing.
struct Target {
    def: Arc<ResourceDef>,
    /// Namespace from the path ("" when cluster-scoped or across all namespaces).
    ns: String,
    name: Option<String>,
    sub: Option<String>,
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Full(Some(Bytes::from(body))))
        .unwrap_or_else(|_| Response::new(Body::Full(None)))
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn parse_query(q: &str) -> HashMap<String, String> {
    form_urlencoded_pairs(q).into_iter().collect()
}

/// `a=b&c=d` with %XX and `+` decoding; malformed escapes are kept as text.
fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bearer(req: &Request<hyper::body::Incoming>) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Entry point for every HTTP request.
pub(crate) async fn handle(
    req: Request<hyper::body::Incoming>,
    ctx: Arc<Ctx>,
    cert_user: Option<User>,
) -> Result<Response<Body>, Infallible> {
    let token = bearer(&req);
    let (parts, body) = req.into_parts();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut record = RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: raw_query.clone(),
        content_type: content_type.clone(),
        user: None,
        status: 0,
        body: None,
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            // The rest of the body is unread: close the connection so no client reuses it.
            let mut resp = error_response(&ApiError::too_large(MAX_BODY));
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return Ok(logged(&ctx, record, resp));
        }
    };
    if matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && !body.is_empty()
    {
        record.body = Some(String::from_utf8_lossy(&body).into_owned());
    }
    let user = ctx
        .store
        .control()
        .authenticate(cert_user.as_ref(), token.as_deref());
    let Some(user) = user else {
        return Ok(logged(
            &ctx,
            record,
            error_response(&ApiError::unauthorized()),
        ));
    };
    record.user = Some(user.name.clone());
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parse_query(&raw_query),
        content_type,
        body,
    };
    let resp = route(&ctx, &req, &user).unwrap_or_else(|e| error_response(&e));
    Ok(logged(&ctx, record, resp))
}

fn logged(ctx: &Ctx, mut record: RequestRecord, resp: Response<Body>) -> Response<Body> {
    record.status = resp.status().as_u16();
    ctx.store.control().log.push(record);
    resp
}

fn route(ctx: &Ctx, req: &Req, user: &User) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Ok(json_response(200, &version())),
        ["healthz"] | ["livez"] | ["readyz"] => Ok(text_ok()),
        ["api"] => Ok(json_response(
            200,
            &crate::discovery::api_versions(ctx.addr),
        )),
        ["apis"] => Ok(json_response(
            200,
            &crate::discovery::api_groups(&ctx.store),
        )),
        ["api", "v1"] => Ok(json_response(
            200,
            &crate::discovery::resource_list(&ctx.store, "", "v1")?,
        )),
        ["apis", g, v] => Ok(json_response(
            200,
            &crate::discovery::resource_list(&ctx.store, g, v)?,
        )),
        ["api", "v1", rest @ ..] => resource_request(ctx, req, user, "", "v1", rest),
        ["apis", g, v, rest @ ..] => resource_request(ctx, req, user, g, v, rest),
        _ => Err(ApiError::no_route()),
    }
}

fn text_ok() -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::Full(Some(Bytes::from_static(b"ok"))))
        .unwrap_or_else(|_| Response::new(Body::Full(None)))
}

/// What `/version` reports (the fields of k8s.io/apimachinery/pkg/version.Info).
fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn find(ctx: &Ctx, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
    ctx.store.resource_by_path(group, version, plural)
}

/// Resolves the path after `/api/v1` or `/apis/{group}/{version}`.
fn resolve(ctx: &Ctx, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let target =
        |def: Option<Arc<ResourceDef>>, ns: &str, name: Option<&&str>, sub: Option<&&str>| {
            let def = def.ok_or_else(ApiError::no_route)?;
            Ok(Target {
                def,
                ns: ns.into(),
                name: name.map(|n| n.to_string()),
                sub: sub.map(|s| s.to_string()),
            })
        };
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(def) = find(ctx, group, version, plural).filter(|d| d.namespaced)
    {
        if tail.len() > 2 {
            return Err(ApiError::no_route());
        }
        return target(Some(def), ns, tail.first(), tail.get(1));
    }
    match rest {
        [plural, tail @ ..] if tail.len() <= 2 => {
            let def = find(ctx, group, version, plural);
            // A namespaced resource by name needs its namespace in the path.
            if def.as_ref().is_some_and(|d| d.namespaced) && !tail.is_empty() {
                return Err(ApiError::no_route());
            }
            target(def, "", tail.first(), tail.get(1))
        }
        _ => Err(ApiError::no_route()),
    }
}

fn is_watch(req: &Req) -> bool {
    matches!(
        req.query.get("watch").map(String::as_str),
        Some("true" | "1")
    )
}

/// The authorizer's verb for a request (k8s.io/apiserver request info).
fn verb(req: &Req, t: &Target) -> &'static str {
    match (&req.method, t.name.is_some()) {
        (&Method::GET, _) if is_watch(req) => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

fn authorize(ctx: &Ctx, user: &User, verb: &str, t: &Target) -> Result<(), ApiError> {
    let resource = match &t.sub {
        Some(s) => format!("{}/{s}", t.def.plural),
        None => t.def.plural.clone(),
    };
    let name = t.name.as_deref().unwrap_or("");
    if ctx
        .store
        .control()
        .is_forbidden(&user.name, verb, &resource, &t.ns, name)
    {
        let why = forbidden_reason(&user.name, verb, &resource, &t.def.group, &t.ns);
        return Err(ApiError::forbidden(t.def.group_resource(), name, &why));
    }
    Ok(())
}

fn resource_request(
    ctx: &Ctx,
    req: &Req,
    user: &User,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    let t = resolve(ctx, group, version, rest)?;
    let verb = verb(req, &t);
    authorize(ctx, user, verb, &t)?;
    if req.query.contains_key("dryRun") {
        return Err(ApiError::bad_request(
            "dryRun is not supported by this test API server",
        ));
    }
    let scope = match t.sub.as_deref() {
        None => Scope::Main,
        Some("status") if t.def.status_subresource => Scope::Status,
        Some(_) => return Err(ApiError::no_route()),
    };
    let gr = t.def.group_resource();
    match (verb, scope) {
        ("watch", _) => watch_request(ctx, req, &t),
        ("list", Scope::Main) => list(ctx, req, &t),
        ("get", _) => get(ctx, &t),
        ("create", Scope::Main) if t.name.is_none() => create(ctx, req, &t),
        ("update", _) => update(ctx, req, &t, scope),
        ("patch", _) => patch(ctx, req, &t, scope),
        ("delete", Scope::Main) => delete(ctx, req, &t),
        ("deletecollection", _) => Err(ApiError::method_not_supported(gr, "deletecollection")),
        _ => Err(ApiError::method_not_supported(gr, verb)),
    }
}

fn name_of(t: &Target) -> &str {
    t.name.as_deref().unwrap_or("")
}

fn get(ctx: &Ctx, t: &Target) -> Result<Response<Body>, ApiError> {
    ctx.store
        .get(&t.def.plural, &t.ns, name_of(t))
        .map(|v| json_response(200, &v))
        .ok_or_else(|| ApiError::not_found(t.def.group_resource(), name_of(t)))
}

fn selectors(req: &Req, def: &ResourceDef) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(req.query.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(
        req.query.get("fieldSelector").map_or("", String::as_str),
        def,
    )?;
    Ok((labels, fields))
}

fn list(ctx: &Ctx, req: &Req, t: &Target) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(req, &t.def)?;
    let limit = match req.query.get("limit").map(String::as_str) {
        None | Some("") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit: Invalid value: {l:?}")))?,
        ),
    };
    let limit = match (limit.filter(|l| *l > 0), ctx.page_size_cap) {
        (Some(l), Some(cap)) => Some(l.min(cap)),
        (l, cap) => l.or(cap),
    };
    let opts = ListOpts {
        labels,
        fields,
        limit,
        continue_token: req.query.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: req.query.get("resourceVersion").cloned(),
        resource_version_match: req
            .query
            .get("resourceVersionMatch")
            .filter(|m| !m.is_empty())
            .cloned(),
    };
    let ns = (!t.ns.is_empty()).then_some(t.ns.as_str());
    let page = ops::list(&ctx.store, &t.def, ns, &opts)?;
    let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(c) = page.continue_token {
        meta["continue"] = c.into();
    }
    if let Some(n) = page.remaining {
        meta["remainingItemCount"] = n.into();
    }
    // The real server leaves kind/apiVersion off list items (kubernetes/kubernetes#3030).
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|v| {
            let mut v = (**v).clone();
            if let Value::Object(m) = &mut v {
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        })
        .collect();
    let body = json!({"kind": format!("{}List", t.def.kind), "apiVersion": t.def.api_version(), "metadata": meta, "items": items});
    Ok(json_response(200, &body))
}

fn parse_body(req: &Req) -> Result<Value, ApiError> {
    let ct = req.content_type.as_deref().unwrap_or("application/json");
    if ct.split(';').next().unwrap_or("").trim() != "application/json" {
        return Err(ApiError::unsupported_media_type(&["application/json"]));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

fn create(ctx: &Ctx, req: &Req, t: &Target) -> Result<Response<Body>, ApiError> {
    let obj = parse_body(req)?;
    let created = ops::create(&ctx.store, &t.def, &t.ns, obj, true)?;
    Ok(json_response(201, &created))
}

fn update(ctx: &Ctx, req: &Req, t: &Target, scope: Scope) -> Result<Response<Body>, ApiError> {
    let obj = parse_body(req)?;
    let updated = ops::update(&ctx.store, &t.def, &t.ns, name_of(t), obj, scope)?;
    Ok(json_response(200, &updated))
}

fn patch(ctx: &Ctx, req: &Req, t: &Target, scope: Scope) -> Result<Response<Body>, ApiError> {
    let kind = req
        .content_type
        .as_deref()
        .and_then(PatchType::from_content_type)
        .ok_or_else(|| ApiError::unsupported_media_type(&PatchType::ACCEPTED))?;
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let patched = ops::patch(&ctx.store, &t.def, &t.ns, name_of(t), kind, &body, scope)?;
    Ok(json_response(200, &patched))
}

fn delete(ctx: &Ctx, req: &Req, t: &Target) -> Result<Response<Body>, ApiError> {
    let pre = if req.body.is_empty() {
        None
    } else {
        let opts: Value = serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?;
        opts.get("preconditions").map(|p| Preconditions {
            uid: p.get("uid").and_then(Value::as_str).map(str::to_string),
            resource_version: p
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    };
    let gone = ops::delete(&ctx.store, &t.def, &t.ns, name_of(t), pre.as_ref())?;
    if t.def.returns_deleted_object {
        return Ok(json_response(200, &gone));
    }
    let uid = crate::util::meta_str(&gone, "uid");
    Ok(json_response(
        200,
        &delete_success(t.def.group_resource(), name_of(t), uid),
    ))
}

fn watch_request(ctx: &Ctx, req: &Req, t: &Target) -> Result<Response<Body>, ApiError> {
    let (labels, mut fields) = selectors(req, &t.def)?;
    if let Some(name) = &t.name {
        // The deprecated per-object watch path is a watch with a name field selector.
        fields = FieldSelector::name(name);
    }
    let flag = |k: &str| matches!(req.query.get(k).map(String::as_str), Some("true" | "1"));
    let timeout = match req.query.get("timeoutSeconds").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(Duration::from_secs(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("timeoutSeconds: Invalid value: {s:?}"))
        })?)),
    };
    let opts = WatchOpts {
        resource_version: ops::parse_rv(req.query.get("resourceVersion").map(String::as_str))?,
        resource_version_match: req
            .query
            .get("resourceVersionMatch")
            .filter(|m| !m.is_empty())
            .cloned(),
        allow_bookmarks: flag("allowWatchBookmarks"),
        send_initial_events: flag("sendInitialEvents"),
        timeout,
        labels,
        fields,
        ns: (!t.ns.is_empty()).then(|| t.ns.clone()),
    };
    watch::start(&ctx.store, t.def.clone(), opts, ctx.bookmark_interval)
}

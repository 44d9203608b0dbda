//! WATCH: a chunked stream of newline-delimited `{"type": ..., "object": ...}` events.
//!
//! Semantics follow the apiserver watch cache (staging/src/k8s.io/apiserver/pkg/storage/cacher):
//! - `resourceVersion` unset or "0": synthetic ADDED events for the current objects, then
//!   every later change; "N": every change after N, no synthetic events; N older than the
//!   retained history: one ERROR event carrying a 410 `Expired` Status
//!   (`too old resource version: N (M)`), then the stream ends.
//! - `sendInitialEvents=true` (needs `resourceVersionMatch=NotOlderThan`): the initial ADDED
//!   events, then a BOOKMARK annotated `k8s.io/initial-events-end: "true"` when bookmarks are
//!   allowed.
//! - With selectors, an object that starts matching arrives as ADDED, one that stops matching
//!   as DELETED carrying its previous content with the event's resourceVersion
//!   (cacheWatcher.convertToWatchEvent). DELETED carries the object's last state.
//! - BOOKMARKs (`allowWatchBookmarks=true`) carry only kind, apiVersion and
//!   metadata.resourceVersion, at the server's configured interval.
//! - `timeoutSeconds` ends the stream cleanly; [`crate::Store::break_watches`] and server stop
//!   end it abruptly.

use crate::resource::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Body;
use crate::status::ApiError;
use crate::store::{EventKind, Store};
use crate::util::metadata_mut;
use bytes::Bytes;
use http::{Response, header};
use serde_json::{Value, json};
use std::future::pending;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Watch query parameters.
pub(crate) struct WatchOpts {
    pub resource_version: Option<u64>,
    pub resource_version_match: Option<String>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub ns: Option<String>,
}

impl WatchOpts {
    fn matches(&self, ns: &str, obj: &Value) -> bool {
        self.ns.as_deref().is_none_or(|n| n == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

fn line(kind: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta}),
    )
}

fn expired(rv: u64, compacted: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {rv} ({compacted})"))
}

fn validate(o: &WatchOpts) -> Result<(), ApiError> {
    match (o.send_initial_events, o.resource_version_match.as_deref()) {
        (true, Some("NotOlderThan")) | (false, None) => Ok(()),
        (true, _) => Err(ApiError::bad_request(
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        )),
        (false, Some(_)) => Err(ApiError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        )),
    }
}

/// Starts a watch: answers 200 at once and streams from a task of its own.
pub(crate) fn start(
    store: &Store,
    def: Arc<ResourceDef>,
    o: WatchOpts,
    bookmarks: Option<Duration>,
) -> Result<Response<Body>, ApiError> {
    validate(&o)?;
    let mut changes = store.subscribe_changes();
    let mut breaks = store.subscribe_breaks();
    changes.borrow_and_update();
    breaks.borrow_and_update();
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(256);
    let (initial, cursor) = {
        let st = store.state();
        match o.resource_version {
            Some(n) if n != 0 && !o.send_initial_events => {
                if n < st.compacted {
                    let err = expired(n, st.compacted);
                    let _ = tx.try_send(Ok(line("ERROR", &err.to_status())));
                    drop(tx);
                    return Ok(stream_response(rx));
                }
                (Vec::new(), n)
            }
            _ => {
                let now: Vec<Bytes> = st
                    .objects
                    .iter()
                    .filter(|(k, v)| k.plural == def.plural && o.matches(&k.ns, v))
                    .map(|(_, v)| line("ADDED", v))
                    .collect();
                (now, st.rv)
            }
        }
    };
    let store = store.clone();
    tokio::spawn(async move {
        for l in initial {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        if o.send_initial_events
            && o.allow_bookmarks
            && tx.send(Ok(bookmark(&def, cursor, true))).await.is_err()
        {
            return;
        }
        let every = bookmarks.filter(|_| o.allow_bookmarks);
        stream(store, def, o, cursor, every, tx, &mut changes, &mut breaks).await;
    });
    Ok(stream_response(rx))
}

fn stream_response(rx: mpsc::Receiver<Result<Bytes, io::Error>>) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Stream(rx))
        .unwrap_or_else(|_| Response::new(Body::Full(None)))
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    store: Store,
    def: Arc<ResourceDef>,
    o: WatchOpts,
    mut cursor: u64,
    every: Option<Duration>,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    breaks: &mut tokio::sync::watch::Receiver<u64>,
) {
    let deadline = o.timeout.map(|t| Instant::now() + t);
    let mut ticker = every.map(|iv| tokio::time::interval_at(Instant::now() + iv, iv));
    loop {
        match collect(&store, &def, &o, cursor) {
            Ok((lines, next)) => {
                cursor = next;
                for l in lines {
                    if tx.send(Ok(l)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Ok(line("ERROR", &e.to_status()))).await;
                return;
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = breaks.changed() => {
                let _ = tx.send(Err(io::Error::other("watch broken by the test"))).await;
                return;
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => pending().await } } => return,
            _ = async { match ticker.as_mut() { Some(t) => { t.tick().await; } None => pending().await } } => {
                if tx.send(Ok(bookmark(&def, cursor, false))).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

/// The event lines after `cursor` that this watch reports, and the new cursor.
fn collect(
    store: &Store,
    def: &ResourceDef,
    o: &WatchOpts,
    cursor: u64,
) -> Result<(Vec<Bytes>, u64), ApiError> {
    let st = store.state();
    if cursor < st.compacted {
        return Err(expired(cursor, st.compacted));
    }
    let first = st.events.partition_point(|e| e.rv <= cursor);
    let mut out = Vec::new();
    for e in st
        .events
        .range(first..)
        .filter(|e| e.key.plural == def.plural)
    {
        let now = e.kind != EventKind::Deleted && o.matches(&e.key.ns, &e.object);
        let before = e.prev.as_ref().is_some_and(|p| o.matches(&e.key.ns, p));
        match (now, before) {
            (true, false) => out.push(line("ADDED", &e.object)),
            (true, true) => out.push(line("MODIFIED", &e.object)),
            (false, true) if e.kind == EventKind::Deleted => out.push(line("DELETED", &e.object)),
            (false, true) => {
                let mut last = e.prev.as_deref().cloned().unwrap_or(Value::Null);
                metadata_mut(&mut last).insert("resourceVersion".into(), e.rv.to_string().into());
                out.push(line("DELETED", &last));
            }
            (false, false) => {}
        }
    }
    Ok((out, st.rv.max(cursor)))
}

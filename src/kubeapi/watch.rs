//! List, then watch, and never miss a change.
//!
//! The list is read in pages (500 objects) and sent as one `Snapshot`; the watch then starts
//! at the list's resourceVersion with bookmarks, so the version to resume from stays fresh even
//! when nothing changes. A stream that ends (the server's timeout) is resumed from the last
//! version seen, without telling anyone; one that breaks is resumed too, after a
//! `Disconnected` and a backoff, and `Connected` is sent once the server has taken the watch
//! again (so the consumer knows before the next change comes). When the server no longer has that version (`410 Gone`, or an
//! ERROR event with code 410) the whole list is read again and sent as a new `Snapshot`: the
//! consumer diffs it against what it had, so nothing is missed or doubled.
//!
//! Objects are converted as they arrive (`convert`), so only what the consumer keeps stays in
//! memory, not the API objects.

use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::KubeError;
use crate::util::backoff::Backoff;

/// What the list-watch reports, objects already converted.
#[derive(Debug, Clone, PartialEq)]
pub enum Update<T> {
    /// Every object (at start, and whenever the watch had to start over).
    Snapshot(Vec<T>),
    /// Added or changed.
    Applied(T),
    /// Deleted, with its last state.
    Deleted(T),
    /// The watch lost the server and is reconnecting.
    Disconnected(String),
    /// After `Disconnected`: the watch is back (a resumed stream; after a new list, the
    /// `Snapshot` says so instead).
    Connected,
}

/// Page size of lists.
const PAGE: u32 = 500;
/// The server ends a watch after this long; it is then resumed.
const WATCH_SECONDS: u32 = 290;
const BACKOFF: Backoff = Backoff::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(5),
);

/// What to follow: the objects of `api` matching the selectors.
pub struct Target<K> {
    pub api: Api<K>,
    /// The resource for messages (`nodes`, `pods`).
    pub resource: &'static str,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

impl<K> Target<K> {
    fn list_params(&self) -> ListParams {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(l) = &self.label_selector {
            lp = lp.labels(l);
        }
        if let Some(f) = &self.field_selector {
            lp = lp.fields(f);
        }
        lp
    }

    fn watch_params(&self) -> WatchParams {
        // Bookmarks are on by default.
        let mut wp = WatchParams::default().timeout(WATCH_SECONDS);
        if let Some(l) = &self.label_selector {
            wp = wp.labels(l);
        }
        if let Some(f) = &self.field_selector {
            wp = wp.fields(f);
        }
        wp
    }
}

/// The state of the connection to the server across streams.
struct Link {
    backoff: Backoff,
    /// A `Disconnected` was sent and nothing has come through since.
    lost: bool,
}

/// How one watch stream ended.
enum Ended {
    /// Resume from this version.
    At(String),
    /// The version is gone: list again.
    Gone,
    ReceiverGone,
}

/// Follows `target` until `tx` is dropped.
pub async fn list_watch<K, T, F>(target: Target<K>, tx: mpsc::Sender<Update<T>>, convert: F)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(K) -> T,
{
    let mut version: Option<String> = None;
    let mut link = Link {
        backoff: BACKOFF,
        lost: false,
    };
    while !tx.is_closed() {
        let from = match version.take() {
            Some(v) => v,
            None => match list(&target, &convert).await {
                Ok((items, v)) => {
                    link.lost = false;
                    if tx.send(Update::Snapshot(items)).await.is_err() {
                        return;
                    }
                    v
                }
                Err(e) => {
                    disconnected(&tx, &mut link, e.to_string()).await;
                    continue;
                }
            },
        };
        match follow(&target, &from, &tx, &convert, &mut link).await {
            Ended::At(v) => version = Some(v),
            Ended::Gone => {
                tracing::info!(
                    resource = target.resource,
                    "watch fell behind the API server's history (410 Gone); listing again"
                );
            }
            Ended::ReceiverGone => return,
        }
    }
}

/// Every object, page by page; with the resourceVersion to watch from.
async fn list<K, T, F>(target: &Target<K>, convert: &F) -> Result<(Vec<T>, String), KubeError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    F: Fn(K) -> T,
{
    let mut lp = target.list_params();
    let mut items = Vec::new();
    loop {
        let page = target
            .api
            .list(&lp)
            .await
            .map_err(|e| KubeError::of("list", target.resource, e))?;
        let version = page.metadata.resource_version.clone().unwrap_or_default();
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        items.extend(page.items.into_iter().map(convert));
        match next {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok((items, version)),
        }
    }
}

/// One watch stream from `from`, until it ends.
async fn follow<K, T, F>(
    target: &Target<K>,
    from: &str,
    tx: &mpsc::Sender<Update<T>>,
    convert: &F,
    link: &mut Link,
) -> Ended
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(K) -> T,
{
    let mut version = from.to_string();
    let stream = match target.api.watch(&target.watch_params(), from).await {
        Ok(s) => s,
        Err(e) => {
            let e = KubeError::of("watch", target.resource, e);
            if matches!(e, KubeError::Gone { .. }) {
                return Ended::Gone;
            }
            disconnected(tx, link, e.to_string()).await;
            return Ended::At(version);
        }
    };
    // The server answered the watch: back.
    if std::mem::take(&mut link.lost) && tx.send(Update::Connected).await.is_err() {
        return Ended::ReceiverGone;
    }
    let mut stream = stream.boxed();
    loop {
        let event = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            // The server's timeout: resume quietly.
            Ok(None) => return Ended::At(version),
            Err(e) => {
                let e = KubeError::of("watch", target.resource, e);
                disconnected(tx, link, e.to_string()).await;
                return Ended::At(version);
            }
        };
        link.backoff.reset();
        let update = match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                version = o.resource_version().unwrap_or(version);
                Update::Applied(convert(o))
            }
            WatchEvent::Deleted(o) => {
                version = o.resource_version().unwrap_or(version);
                Update::Deleted(convert(o))
            }
            WatchEvent::Bookmark(b) => {
                version = b.metadata.resource_version;
                continue;
            }
            WatchEvent::Error(s) if s.code == 410 => return Ended::Gone,
            WatchEvent::Error(s) => {
                let msg = format!(
                    "{} watch: {} {}: {}",
                    target.resource, s.code, s.reason, s.message
                );
                disconnected(tx, link, msg).await;
                return Ended::At(version);
            }
        };
        if tx.send(update).await.is_err() {
            return Ended::ReceiverGone;
        }
    }
}

async fn disconnected<T>(tx: &mpsc::Sender<Update<T>>, link: &mut Link, why: String) {
    link.lost = true;
    let _ = tx.send(Update::Disconnected(why)).await;
    link.backoff.wait().await;
}

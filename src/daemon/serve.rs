//! Serving HTTP to clients that may be hostile: the health port is reachable from the network.
//!
//! Each listener holds at most `MAX_CONNECTIONS` connections; more are closed as they are
//! accepted (and counted in the log once a minute at most). A client gets `HEADER_TIMEOUT` to
//! send its request headers and `CONNECTION_TIMEOUT` for its whole connection, so idle or
//! trickling connections cannot pile up. Only HTTP/1 is spoken.
//!
//! The kubelet's liveness probe must get through whatever pods do, or a flood of idle
//! connections would have the node agent restarted. So the node itself (a connection from
//! loopback, from the very address it was made to — how the kernel picks the source when the
//! kubelet probes the node's address —, or over the unix socket) may use every slot, while
//! anyone else shares `MAX_CONNECTIONS - RESERVED` of them, at most `PER_SOURCE` per address.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use tokio::time::Instant;

/// Connections one listener serves at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Slots only the node itself may take (its kubelet's probes).
pub const RESERVED: usize = 4;
/// Connections one remote address may hold at once.
pub const PER_SOURCE: usize = 8;
/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open, keep-alive included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cached answer is served.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// Where a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The node itself: loopback, its own address, or the unix socket.
    Node,
    Remote(IpAddr),
}

/// A connection that can say where it comes from.
pub trait Peer {
    fn origin(&self) -> Origin;
}

impl Peer for tokio::net::TcpStream {
    fn origin(&self) -> Origin {
        match (self.peer_addr(), self.local_addr()) {
            (Ok(p), Ok(l)) if p.ip().to_canonical().is_loopback() || p.ip() == l.ip() => {
                Origin::Node
            }
            (Ok(p), _) => Origin::Remote(p.ip().to_canonical()),
            // Already gone: it will fail at the first read; count it as a stranger.
            (Err(_), _) => Origin::Remote(IpAddr::from([0, 0, 0, 0])),
        }
    }
}

impl Peer for tokio::net::UnixStream {
    fn origin(&self) -> Origin {
        Origin::Node
    }
}

/// Who gets a slot: the bookkeeping of the limits above, without sockets.
#[derive(Clone, Default)]
pub struct Admission {
    inner: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A connection's place; given back when dropped.
pub struct Slot {
    admission: Admission,
    origin: Origin,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.inner.lock().expect("admission lock");
        c.total -= 1;
        if let Origin::Remote(ip) = self.origin
            && let Some(n) = c.by_source.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&ip);
            }
        }
    }
}

impl Admission {
    /// A slot for a connection from `origin`, or `None` when its share is used up.
    pub fn admit(&self, origin: Origin) -> Option<Slot> {
        let mut c = self.inner.lock().expect("admission lock");
        match origin {
            Origin::Node if c.total < MAX_CONNECTIONS => {}
            Origin::Remote(ip)
                if c.total < MAX_CONNECTIONS - RESERVED
                    && c.by_source.get(&ip).copied().unwrap_or(0) < PER_SOURCE =>
            {
                *c.by_source.entry(ip).or_default() += 1;
            }
            _ => return None,
        }
        c.total += 1;
        Some(Slot {
            admission: self.clone(),
            origin,
        })
    }
}

/// Accepts connections on `l` forever, each served by `app` within the limits above.
pub async fn run<L>(mut l: L, app: Router)
where
    L: Listener,
    L::Io: Unpin + Peer,
{
    let admission = Admission::default();
    let mut refused: u64 = 0;
    let mut last_report: Option<Instant> = None;
    loop {
        let (io, _) = l.accept().await;
        let Some(slot) = admission.admit(io.origin()) else {
            refused += 1;
            if last_report.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    refused,
                    "HTTP connection limit reached ({MAX_CONNECTIONS} in all, {PER_SOURCE} per address, {RESERVED} kept for the node itself); closing new connections"
                );
                last_report = Some(Instant::now());
            }
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

/// One answer, computed by whoever asks first and shared for `CACHE_FOR`; callers arriving
/// while it is computed wait for it instead of computing their own.
#[derive(Default)]
pub struct Cached(tokio::sync::Mutex<Option<(Instant, String)>>);

impl Cached {
    pub async fn get<F, Fut>(&self, compute: F) -> String
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = String>,
    {
        let mut slot = self.0.lock().await;
        if let Some((at, body)) = slot.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return body.clone();
        }
        let body = compute().await;
        *slot = Some((Instant::now(), body.clone()));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn strangers_share_some_slots_and_the_node_keeps_its_own() {
        let a = Admission::default();
        let pod = |i: u8| Origin::Remote(IpAddr::from([10, 244, 1, i]));
        // One address holds at most PER_SOURCE.
        let mut held: Vec<Slot> = (0..PER_SOURCE).map(|_| a.admit(pod(2)).unwrap()).collect();
        assert!(a.admit(pod(2)).is_none());
        // Strangers together hold at most MAX_CONNECTIONS - RESERVED.
        let mut i = 0;
        while let Some(s) = a.admit(pod(100 + (i / PER_SOURCE) as u8)) {
            held.push(s);
            i += 1;
        }
        assert_eq!(held.len(), MAX_CONNECTIONS - RESERVED);
        // The node itself still gets in, up to the whole limit.
        let node: Vec<Slot> = (0..RESERVED)
            .map(|_| a.admit(Origin::Node).unwrap())
            .collect();
        assert!(a.admit(Origin::Node).is_none());
        // Slots come back when connections end.
        drop(node);
        held.truncate(PER_SOURCE - 1);
        assert!(a.admit(pod(2)).is_some());
        assert!(a.admit(pod(99)).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_answer_is_computed_once_a_second() {
        let c = Cached::default();
        let n = AtomicUsize::new(0);
        let compute = || async {
            n.fetch_add(1, Ordering::SeqCst);
            format!("answer {}", n.load(Ordering::SeqCst))
        };
        assert_eq!(c.get(compute).await, "answer 1");
        assert_eq!(c.get(compute).await, "answer 1");
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(c.get(compute).await, "answer 2");
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}

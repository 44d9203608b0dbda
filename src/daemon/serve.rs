//! Serving HTTP to clients that may be hostile: the health port is reachable from the network.
//!
//! Each listener holds at most `MAX_CONNECTIONS` connections; more are closed as they are
//! accepted (and counted in the log once a minute at most). A client gets `HEADER_TIMEOUT` to
//! send its request headers and `CONNECTION_TIMEOUT` for its whole connection, so idle or
//! trickling connections cannot pile up. Only HTTP/1 is spoken.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Connections one listener serves at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open, keep-alive included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cached answer is served.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// Accepts connections on `l` forever, each served by `app` within the limits above.
pub async fn run<L>(mut l: L, app: Router)
where
    L: Listener,
    L::Io: Unpin,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused: u64 = 0;
    let mut last_report: Option<Instant> = None;
    loop {
        let (io, _) = l.accept().await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if last_report.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    refused,
                    "HTTP connection limit ({MAX_CONNECTIONS}) reached; closing new connections"
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

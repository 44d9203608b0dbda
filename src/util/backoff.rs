//! Retry with exponential backoff: the one helper every retry loop in podnet uses (connecting
//! to the lease store, reading the config, acquiring, renewing and reclaiming the lease, and
//! reconnecting watches). Failures are logged without flooding the log.

use std::time::Duration;

use tokio::time::Instant;

/// Delays that double from `min` up to `max`; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay for the next attempt; each call doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// What the retry loops use unless they say otherwise: 200 ms doubling to 5 s.
pub const DEFAULT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// For a thread whose notification socket failed: 200 ms doubling to 6.4 s.
pub const NOTIFICATIONS: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_millis(6400));

/// Whether a failure should be tried again.
pub enum Attempt<E> {
    /// Transient: log and retry.
    Retry(E),
    /// Final: give up with this error.
    Fail(E),
}

/// Runs `f` until it succeeds or fails for good, waiting `backoff` between attempts. Transient
/// failures are logged as `what: error (retrying)`, at most every ten seconds.
pub async fn retry<T, E, F, Fut>(what: &str, mut backoff: Backoff, mut f: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Attempt<E>>>,
{
    let mut last_log: Option<Instant> = None;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(Attempt::Fail(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("{what}: {e} (retrying)");
                    last_log = Some(Instant::now());
                }
                backoff.wait().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_on_success_or_a_final_error() {
        let mut n = 0;
        let r: Result<u32, String> = retry("t", DEFAULT, || {
            n += 1;
            let k = n;
            async move {
                if k < 3 {
                    Err(Attempt::Retry(format!("try {k}")))
                } else {
                    Ok(k)
                }
            }
        })
        .await;
        assert_eq!(r, Ok(3));
        let r: Result<u32, String> = retry("t", DEFAULT, || async {
            Err(Attempt::Fail("no".to_string()))
        })
        .await;
        assert_eq!(r, Err("no".to_string()));
    }
}

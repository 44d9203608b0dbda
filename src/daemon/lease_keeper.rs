//! The lease keeper: keeps this node's lease alive and takes it back when it vanishes.
//!
//! Renewal runs `margin` before the lease would run out (never for a reservation or a store
//! whose leases do not expire). A failed renewal is retried with backoff, the data path left as
//! it is. A lease that vanished (deleted, expired, missing from a snapshot) is taken back if the
//! subnet is still free; if another node holds it now, that is an error and podnetd exits
//! non-zero rather than keep routing an address range another node owns. A write to our own key
//! by someone else with another public address is the same loss; one with our address but other
//! attributes, or bytes that are no lease at all, is written back (a Node's annotations, held
//! by name: any other attributes), at most `REPAIR_BURST` times a minute, so that two writers
//! fighting over the key never loop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::DaemonError;
use super::http::Shared;
use crate::lease::manager::{Renewal, SubnetManager};
use crate::lease::{Lease, LeaseError};
use crate::util::backoff::{self, Backoff};

/// A failed renewal is tried again after 1 s, doubling to 30 s.
const RENEW_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// Write-backs of our lease allowed per `REPAIR_WINDOW`; beyond that someone is fighting us.
const REPAIR_BURST: usize = 5;
const REPAIR_WINDOW: Duration = Duration::from_secs(60);

pub struct LeaseKeeper {
    own: Lease,
    ttl: Duration,
    margin: Duration,
    /// When to renew next; `None` when the lease does not expire.
    next: Option<Instant>,
    backoff: Backoff,
    shared: Arc<Shared>,
    /// When our lease was last written back (within `REPAIR_WINDOW`).
    repairs: std::collections::VecDeque<Instant>,
}

impl LeaseKeeper {
    /// Keeps `own`, asking the store how long it has left.
    pub async fn new<M: SubnetManager>(
        store: &M,
        own: Lease,
        ttl: Duration,
        margin: Duration,
        shared: Arc<Shared>,
    ) -> LeaseKeeper {
        let mut k = LeaseKeeper {
            own,
            ttl,
            margin,
            next: None,
            backoff: RENEW_BACKOFF,
            shared,
            repairs: Default::default(),
        };
        k.schedule(store).await;
        k
    }

    pub fn own(&self) -> &Lease {
        &self.own
    }

    /// When the next renewal is due (`None`: never).
    pub fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Plans the next renewal from the time the store says is left, and publishes the expiry.
    async fn schedule<M: SubnetManager>(&mut self, store: &M) {
        let left = match store.time_left(&self.own).await {
            Ok(left) => left,
            Err(_) => Some(self.ttl),
        };
        self.set_left(left);
    }

    fn set_left(&mut self, left: Option<Duration>) {
        let renew_in = left.map(|l| l.saturating_sub(self.margin).max(Duration::from_secs(1)));
        self.next = renew_in.map(|d| Instant::now() + d);
        let own = self.own.clone();
        self.shared.update(|s| {
            s.lease = Some(own);
            s.lease_expiry = left.map(|l| SystemTime::now() + l);
        });
    }

    /// Renews now; a failure is retried later, a vanished lease taken back.
    pub async fn renew<M: SubnetManager>(&mut self, store: &M) -> Result<(), DaemonError> {
        match store.renew(&self.own).await {
            Ok(Renewal::Renewed(ttl)) => {
                tracing::debug!(ttl, "lease renewed");
                self.shared.metrics.lease_renewals.inc();
                self.backoff.reset();
                self.set_left(Some(Duration::from_secs(ttl.max(0) as u64)));
            }
            Ok(Renewal::Reservation) => self.set_left(None),
            Ok(Renewal::Gone) => self.reclaim(store, "gone at renewal").await?,
            Err(e) => {
                self.shared.store_error("renew", e.to_string());
                let delay = self.backoff.next_delay();
                tracing::warn!("renewing the lease failed: {e}; retrying in {delay:?}");
                self.next = Some(Instant::now() + delay);
            }
        }
        Ok(())
    }

    /// Our lease vanished: take the same subnet back, or fail if another node has it. Store
    /// outages are waited out (the data path is left alone meanwhile).
    pub async fn reclaim<M: SubnetManager>(
        &mut self,
        store: &M,
        why: &str,
    ) -> Result<(), DaemonError> {
        tracing::warn!(subnet = %self.own.key, "own lease {why}; taking the subnet back");
        let (own, ttl, shared) = (&self.own, self.ttl, &self.shared);
        let lease = backoff::retry("taking the lease back", backoff::DEFAULT, || async move {
            store
                .reclaim(own, ttl)
                .await
                .map_err(|e| shared.retry_if_transient("reclaim", e))
        })
        .await?;
        tracing::info!(subnet = %lease.key, "lease taken back");
        self.own = lease;
        self.schedule(store).await;
        Ok(())
    }

    /// Someone wrote our key: a renewal or our own write is adopted; another holder is a loss;
    /// our address with other attributes (another VtepMAC, say) is written back, since peers
    /// would otherwise send our traffic wherever the writer chose. Where the lease is bound to
    /// the node's name (a Node's annotations), any other attributes are written back.
    pub async fn rewritten<M: SubnetManager>(
        &mut self,
        store: &M,
        lease: Lease,
    ) -> Result<(), DaemonError> {
        if lease.attrs.public_ip != self.own.attrs.public_ip && !store.held_by_name() {
            return Err(LeaseError::Lost {
                key: self.own.key.to_string(),
                holder: lease.attrs.public_ip.to_string(),
            }
            .into());
        }
        if lease.attrs != self.own.attrs {
            self.write_back(store, lease.revision, &lease.attrs.to_json())
                .await;
            return Ok(());
        }
        self.own = lease;
        let own = self.own.clone();
        self.shared.update(|s| s.lease = Some(own));
        Ok(())
    }

    /// Someone wrote bytes that are no lease to our key (at `revision`): peers refuse it, so it
    /// is written back like any other rewrite.
    pub async fn unreadable<M: SubnetManager>(&mut self, store: &M, revision: i64) {
        self.write_back(store, revision, "a value that is no lease")
            .await;
    }

    /// Writes our lease back over someone else's write (`written`, at `revision`), unless that
    /// has happened `REPAIR_BURST` times within `REPAIR_WINDOW` already.
    async fn write_back<M: SubnetManager>(&mut self, store: &M, revision: i64, written: &str) {
        let now = Instant::now();
        while self
            .repairs
            .front()
            .is_some_and(|t| now.duration_since(*t) > REPAIR_WINDOW)
        {
            self.repairs.pop_front();
        }
        if self.repairs.len() >= REPAIR_BURST {
            tracing::debug!(subnet = %self.own.key, "our lease was rewritten again; written back too often this minute, leaving it");
            return;
        }
        match store.restore(&self.own, revision).await {
            Ok(true) => {
                tracing::warn!(
                    subnet = %self.own.key,
                    written,
                    "someone else rewrote this node's lease; wrote it back"
                );
                self.shared.metrics.lease_repairs.inc();
                self.repairs.push_back(now);
                if self.repairs.len() == REPAIR_BURST {
                    tracing::warn!(subnet = %self.own.key, "this node's lease keeps being rewritten: another agent is fighting over it; not writing it back again for a minute");
                }
            }
            // Changed again in between, or nothing differs in the store: nothing written.
            Ok(false) => {}
            // The next renewal finds it (not ours: taken back) or the next write retries.
            Err(e) => self.shared.store_error("restore", e.to_string()),
        }
    }
}

//! The main loop of a running node: lease updates in, kernel work out.
//!
//! Three things wake it: an update from the lease store's watch, the lease keeper's renewal
//! deadline, and the safety-net timer (`--resync-period`; drift itself is repaired by the data
//! plane as the kernel reports it). A watch update is turned into peer events by the `PeerSet`
//! (a snapshot is diffed against what was known, so a watch that had to start over reprograms
//! only what changed); `apply` is the one place where a peer event becomes kernel work, through a
//! `PeerSink` — the data plane and the firewall in podnetd, a recorder in unit tests. Updates
//! about this node's own lease go to the lease keeper instead. A key whose value is no lease
//! is a peer withdrawn (the store lists why), or, for our own key, a rewrite to repair.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::DaemonError;
use super::dataplane::Dataplane;
use super::firewall::Firewall;
use super::http::Shared;
use super::lease_keeper::LeaseKeeper;
use super::metrics::label;
use crate::lease::manager::{SubnetManager, WatchUpdate};
use crate::lease::{Lease, LeaseEvent, PeerSet};

/// Where peer changes go.
pub trait PeerSink {
    /// A peer appeared, or its lease changed.
    fn peer_up(&mut self, lease: &Arc<Lease>);
    fn peer_down(&mut self, lease: &Lease);
    /// Time for the safety-net check (repairs whatever drifted unnoticed).
    fn resync(&mut self);
}

/// podnetd's sink: the tunnel guard learns a peer before its routes exist, and forgets it after
/// they are gone.
pub struct Kernel {
    pub dataplane: Dataplane,
    pub firewall: Firewall,
}

impl PeerSink for Kernel {
    fn peer_up(&mut self, lease: &Arc<Lease>) {
        self.firewall
            .put_peer(lease.key, lease.attrs.public_ip, lease.attrs.public_ipv6);
        self.dataplane.add(lease.clone());
    }

    fn peer_down(&mut self, lease: &Lease) {
        self.dataplane.remove(lease.key);
        self.firewall.remove_peer(lease.key);
    }

    fn resync(&mut self) {
        self.dataplane.resync();
    }
}

pub struct EventLoop<M: SubnetManager, S: PeerSink> {
    pub store: M,
    pub updates: mpsc::Receiver<WatchUpdate>,
    pub peers: PeerSet,
    pub keeper: LeaseKeeper,
    pub sink: S,
    pub shared: Arc<Shared>,
    pub resync_period: Duration,
    /// The watch is disconnected (logged once until it comes back).
    pub disconnected: bool,
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl<M: SubnetManager, S: PeerSink> EventLoop<M, S> {
    /// Runs until the lease is lost for good or the watch ends (both errors).
    pub async fn run(mut self) -> Result<(), DaemonError> {
        let mut resync = tokio::time::interval(self.resync_period);
        resync.tick().await;
        loop {
            let renew_at = self.keeper.deadline();
            tokio::select! {
                update = self.updates.recv() => {
                    let update = update.ok_or(DaemonError::WatchEnded)?;
                    self.on_update(update).await?;
                }
                _ = sleep_until_opt(renew_at) => self.keeper.renew(&self.store).await?,
                _ = resync.tick() => self.sink.resync(),
            }
        }
    }

    /// One update from the watch.
    pub async fn on_update(&mut self, update: WatchUpdate) -> Result<(), DaemonError> {
        let own = self.keeper.own().key;
        if !matches!(update, WatchUpdate::Disconnected(_)) && self.disconnected {
            tracing::info!("lease watch reconnected");
            self.disconnected = false;
        }
        let events = match update {
            WatchUpdate::Snapshot(list) => {
                // Our own lease as listed: gone, or written by someone while we were not
                // watching, is the keeper's business as it would have been as an event.
                match list.iter().find(|l| l.key == own) {
                    None => {
                        self.keeper
                            .reclaim(&self.store, "not in the lease list")
                            .await?
                    }
                    Some(l) => self.keeper.rewritten(&self.store, l.clone()).await?,
                }
                self.peers.reset(list)
            }
            WatchUpdate::Put(l) if l.key == own => {
                self.keeper.rewritten(&self.store, l).await?;
                Vec::new()
            }
            WatchUpdate::Put(l) => self.peers.put(l),
            WatchUpdate::Delete(k) if k == own => {
                self.keeper
                    .reclaim(&self.store, "deleted or expired")
                    .await?;
                Vec::new()
            }
            WatchUpdate::Delete(k) => self.peers.delete(&k),
            WatchUpdate::Unreadable { key, revision } if key == own => {
                self.keeper.unreadable(&self.store, revision).await;
                Vec::new()
            }
            // The store shows why; what the lease said before is withdrawn at once.
            WatchUpdate::Unreadable { key, .. } => self.peers.delete(&key),
            WatchUpdate::Disconnected(e) => {
                if !self.disconnected {
                    tracing::warn!(
                        "lease watch lost {}: {e}; the data path stays as it is while reconnecting",
                        self.store.name()
                    );
                    self.disconnected = true;
                }
                self.shared.store_error("watch", e);
                Vec::new()
            }
            // Logged above.
            WatchUpdate::Connected => Vec::new(),
        };
        for ev in events {
            self.apply(ev);
        }
        if let Some(refused) = self.peers.refused_update() {
            self.shared.update(|s| s.refused_leases = refused);
        }
        Ok(())
    }

    /// A peer event becomes kernel work: here and nowhere else.
    fn apply(&mut self, ev: LeaseEvent) {
        let m = &self.shared.metrics;
        match ev {
            LeaseEvent::Added(l) => {
                m.lease_events.get_or_create(&label("type", "added")).inc();
                tracing::info!(peer = %l.key, public_ip = %l.attrs.public_ip, "peer added");
                self.sink.peer_up(&l);
            }
            LeaseEvent::Removed(l) => {
                m.lease_events
                    .get_or_create(&label("type", "removed"))
                    .inc();
                tracing::info!(peer = %l.key, public_ip = %l.attrs.public_ip, "peer removed");
                self.sink.peer_down(&l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;
    use crate::lease::memory::MemoryStore;
    use crate::lease::{AcquireRequest, LeaseAttrs, SubnetKey};

    const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

    /// Writes down what the loop asks of the kernel.
    #[derive(Clone, Default)]
    struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);

    impl PeerSink for Recorder {
        fn peer_up(&mut self, l: &Arc<Lease>) {
            let line = format!("up {} {}", l.key, l.attrs.public_ip);
            self.0.lock().unwrap().push(line);
        }
        fn peer_down(&mut self, l: &Lease) {
            self.0.lock().unwrap().push(format!("down {}", l.key));
        }
        fn resync(&mut self) {}
    }

    impl Recorder {
        /// Lets the loop run until it has recorded `n` lines; returns them and starts afresh.
        async fn take(&self, n: usize) -> Vec<String> {
            for _ in 0..1000 {
                if self.0.lock().unwrap().len() >= n {
                    break;
                }
                tokio::task::yield_now().await;
            }
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    fn peer(key: &str, ip: &str) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: attrs(ip),
            keepalive: crate::lease::Keepalive::Etcd(7),
            revision: 0,
            created: 0,
        }
    }

    /// A node on the memory store with two peers, its loop running.
    async fn node(
        store: &MemoryStore,
    ) -> (
        Lease,
        Recorder,
        tokio::task::JoinHandle<Result<(), DaemonError>>,
    ) {
        let (own, rec, lp) = node_loop(store).await;
        (own, rec, tokio::spawn(lp.run()))
    }

    /// A node on the memory store with two peers, its loop not started.
    async fn node_loop(store: &MemoryStore) -> (Lease, Recorder, EventLoop<MemoryStore, Recorder>) {
        store.put(peer("10.244.2.0-24", "198.18.0.12"));
        store.put(peer("10.244.3.0-24", "198.18.0.13"));
        let cfg = NetworkConfig::parse(CONFIG).unwrap();
        let req = AcquireRequest {
            attrs: attrs("198.18.0.11"),
            previous: Some(SubnetKey::parse("10.244.1.0-24").unwrap()),
            ttl: Duration::from_secs(86400),
        };
        let own = store.acquire(&cfg, &req).await.unwrap();
        let (tx, mut updates) = mpsc::channel(64);
        tokio::spawn(store.watch(tx));
        let mut peers = PeerSet::new(own.key);
        let Some(WatchUpdate::Snapshot(first)) = updates.recv().await else {
            panic!("the first update is a snapshot")
        };
        assert_eq!(peers.reset(first).len(), 2);
        let shared = Shared::new(std::path::Path::new("/nonexistent/subnet.env"));
        let day = Duration::from_secs(86400);
        let keeper = LeaseKeeper::new(
            store,
            own.clone(),
            day,
            Duration::from_secs(60),
            shared.clone(),
        )
        .await;
        let rec = Recorder::default();
        let lp = EventLoop {
            store: store.clone(),
            updates,
            peers,
            keeper,
            sink: rec.clone(),
            shared,
            resync_period: Duration::from_secs(3600),
            disconnected: false,
        };
        (own, rec, lp)
    }

    #[tokio::test]
    async fn a_watch_that_comes_back_is_known_to_be_back_before_the_next_change() {
        let store = MemoryStore::new(CONFIG);
        let (_own, rec, mut lp) = node_loop(&store).await;
        lp.on_update(WatchUpdate::Disconnected("outage".into()))
            .await
            .unwrap();
        assert!(lp.disconnected);
        lp.on_update(WatchUpdate::Connected).await.unwrap();
        assert!(!lp.disconnected, "reconnected without waiting for a change");
        assert!(rec.take(0).await.is_empty(), "no kernel work");
    }

    #[tokio::test]
    async fn peer_events_reach_the_sink_in_order_and_renewals_do_not() {
        let store = MemoryStore::new(CONFIG);
        let (_own, rec, _task) = node(&store).await;
        store.put(peer("10.244.4.0-24", "198.18.0.14"));
        // The same value again (a renewal): nothing to do.
        store.put(peer("10.244.4.0-24", "198.18.0.14"));
        // A changed value: the peer is programmed again.
        store.put(peer("10.244.4.0-24", "198.18.0.24"));
        store.delete(&SubnetKey::parse("10.244.2.0-24").unwrap());
        assert_eq!(
            rec.take(3).await,
            [
                "up 10.244.4.0-24 198.18.0.14",
                "up 10.244.4.0-24 198.18.0.24",
                "down 10.244.2.0-24"
            ]
        );
    }

    #[tokio::test]
    async fn after_a_gap_only_what_changed_is_reprogrammed() {
        let store = MemoryStore::new(CONFIG);
        let (_own, rec, _task) = node(&store).await;
        // While the watch is away: one peer leaves, one comes, one is unchanged.
        store.silently(|leases| {
            leases.remove(&SubnetKey::parse("10.244.2.0-24").unwrap());
            let d = peer("10.244.5.0-24", "198.18.0.15");
            leases.insert(d.key, d);
        });
        store.gap();
        assert_eq!(
            rec.take(2).await,
            ["down 10.244.2.0-24", "up 10.244.5.0-24 198.18.0.15"]
        );
        // The peer at .13 was not touched, and nothing more comes.
        assert!(rec.take(1).await.is_empty());
    }

    #[tokio::test]
    async fn a_deleted_lease_is_taken_back_and_a_stolen_one_stops_the_node() {
        let store = MemoryStore::new(CONFIG);
        let (own, rec, task) = node(&store).await;
        store.delete(&own.key);
        for _ in 0..1000 {
            if store.get(&own.key).is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let back = store.get(&own.key).expect("the node took its subnet back");
        assert_eq!(back.attrs.public_ip, own.attrs.public_ip);
        // The same happens when a snapshot after a gap lacks our lease.
        store.silently(|leases| {
            leases.remove(&own.key);
        });
        store.gap();
        for _ in 0..1000 {
            if store.get(&own.key).is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(store.get(&own.key).is_some(), "taken back after the gap");
        // Another node writes our key: the loop ends with an error naming the holder.
        let mut thief = own.clone();
        thief.attrs.public_ip = "198.18.0.99".parse().unwrap();
        store.put(thief);
        let err = task.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("now held by 198.18.0.99"), "{err}");
        assert!(rec.take(0).await.is_empty(), "peers were never touched");
    }

    /// Waits (yielding to the loop) until the store holds our own attributes again.
    async fn written_back(store: &MemoryStore, own: &Lease) -> bool {
        for _ in 0..1000 {
            if store.get(&own.key).is_some_and(|l| l.attrs == own.attrs) {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    fn rewritten_by_someone(own: &Lease, tag: u8) -> Lease {
        let mut l = own.clone();
        l.attrs.backend_type = format!("forged-{tag}");
        l
    }

    #[tokio::test]
    async fn a_rewritten_lease_is_written_back_five_times_a_minute_then_left() {
        let store = MemoryStore::new(CONFIG);
        let (own, _rec, _task) = node(&store).await;
        for i in 0..5 {
            store.put(rewritten_by_someone(&own, i));
            assert!(written_back(&store, &own).await, "write-back {i}");
        }
        // A sixth rewrite within the minute: someone is fighting; it is left alone.
        store.put(rewritten_by_someone(&own, 9));
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        let now = store.get(&own.key).unwrap();
        assert_eq!(now.attrs.backend_type, "forged-9");
    }

    #[tokio::test]
    async fn a_lease_rewritten_while_not_watching_is_written_back_from_the_listing() {
        let store = MemoryStore::new(CONFIG);
        let (own, _rec, _task) = node(&store).await;
        store.silently(|leases| {
            leases.insert(own.key, rewritten_by_someone(&own, 1));
        });
        store.gap();
        assert!(written_back(&store, &own).await);
    }

    #[tokio::test]
    async fn a_garbled_peer_is_withdrawn_and_our_garbled_lease_written_back() {
        let store = MemoryStore::new(CONFIG);
        let (own, rec, _task) = node(&store).await;
        // Bytes that are no lease over a programmed peer: withdrawn at once.
        store.garble(&SubnetKey::parse("10.244.2.0-24").unwrap());
        assert_eq!(rec.take(1).await, ["down 10.244.2.0-24"]);
        // Over our own key: written back, as a rewrite would be.
        store.garble(&own.key);
        assert!(written_back(&store, &own).await);
        assert!(rec.take(0).await.is_empty(), "no peer touched");
    }
}

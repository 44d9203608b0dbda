//! A lease store in memory, for unit tests of the daemon's loop (compiled for tests only).
//!
//! It keeps leases by key and hands every watcher a snapshot, then each change. Tests play the
//! other nodes (`put`, `delete`), the store's failures (`gap`: the watch loses its history and
//! starts over with a snapshot, as after an etcd compaction or a `410 Gone`), and a thief
//! (`put` of our key with another public IP).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::manager::{Renewal, SubnetManager, WatchUpdate};
use super::{AcquireRequest, Choice, Keepalive, Lease, LeaseAttrs, LeaseError, SubnetKey};
use crate::config::NetworkConfig;

#[derive(Default)]
struct Inner {
    config: Option<String>,
    leases: BTreeMap<SubnetKey, Lease>,
    /// Keys whose value is no lease, with the revision that wrote it.
    garbled: BTreeMap<SubnetKey, i64>,
    revision: i64,
    watchers: Vec<mpsc::Sender<WatchUpdate>>,
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new(config: &str) -> MemoryStore {
        let s = MemoryStore::default();
        s.inner.lock().unwrap().config = Some(config.to_string());
        s
    }

    fn notify(inner: &mut Inner, update: WatchUpdate) {
        inner
            .watchers
            .retain(|w| w.try_send(update.clone()).is_ok());
    }

    /// Another node writes its lease (or steals ours).
    pub fn put(&self, mut lease: Lease) {
        let mut inner = self.inner.lock().unwrap();
        inner.revision += 1;
        lease.revision = inner.revision;
        if lease.created == 0 {
            lease.created = inner.revision;
        }
        inner.garbled.remove(&lease.key);
        inner.leases.insert(lease.key, lease.clone());
        MemoryStore::notify(&mut inner, WatchUpdate::Put(lease));
    }

    /// Someone writes bytes that are no lease to a key.
    pub fn garble(&self, key: &SubnetKey) {
        let mut inner = self.inner.lock().unwrap();
        inner.revision += 1;
        let revision = inner.revision;
        inner.leases.remove(key);
        inner.garbled.insert(*key, revision);
        let update = WatchUpdate::Unreadable {
            key: *key,
            revision,
        };
        MemoryStore::notify(&mut inner, update);
    }

    /// A lease is deleted or expires.
    pub fn delete(&self, key: &SubnetKey) {
        let mut inner = self.inner.lock().unwrap();
        inner.revision += 1;
        inner.leases.remove(key);
        inner.garbled.remove(key);
        MemoryStore::notify(&mut inner, WatchUpdate::Delete(*key));
    }

    /// Changes the store without telling the watchers (what happens during an outage).
    pub fn silently(&self, f: impl FnOnce(&mut BTreeMap<SubnetKey, Lease>)) {
        f(&mut self.inner.lock().unwrap().leases);
    }

    /// The watchers lose the store and come back with a snapshot of what is there now.
    pub fn gap(&self) {
        let mut inner = self.inner.lock().unwrap();
        let snapshot: Vec<Lease> = inner.leases.values().cloned().collect();
        MemoryStore::notify(&mut inner, WatchUpdate::Disconnected("test outage".into()));
        MemoryStore::notify(&mut inner, WatchUpdate::Snapshot(snapshot));
    }

    pub fn get(&self, key: &SubnetKey) -> Option<Lease> {
        self.inner.lock().unwrap().leases.get(key).cloned()
    }
}

impl SubnetManager for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn config_source(&self) -> String {
        "memory".into()
    }

    async fn network_config(&self) -> Result<Option<String>, LeaseError> {
        Ok(self.inner.lock().unwrap().config.clone())
    }

    async fn previous_lease(&self, cfg: &NetworkConfig, attrs: &LeaseAttrs) -> Option<Lease> {
        let inner = self.inner.lock().unwrap();
        let mut leases = inner.leases.values();
        leases.find(|l| super::is_ours(cfg, l, attrs)).cloned()
    }

    async fn acquire(
        &self,
        cfg: &NetworkConfig,
        req: &AcquireRequest,
    ) -> Result<Lease, LeaseError> {
        let leases: Vec<Lease> = self
            .inner
            .lock()
            .unwrap()
            .leases
            .values()
            .cloned()
            .collect();
        match super::choose(cfg, &leases, req, &[], &mut rand::rng()) {
            Choice::Reuse(l) => Ok(l),
            Choice::Create(key) => {
                let lease = Lease {
                    key,
                    attrs: req.attrs.clone(),
                    keepalive: Keepalive::Etcd(1),
                    revision: 0,
                    created: 0,
                };
                self.put(lease);
                Ok(self.get(&key).expect("just written"))
            }
            Choice::OutOfSubnets => Err(LeaseError::OutOfSubnets {
                min: String::new(),
                max: String::new(),
                held: leases.len(),
            }),
        }
    }

    async fn renew(&self, own: &Lease) -> Result<Renewal, LeaseError> {
        Ok(match self.get(&own.key) {
            Some(l) if l.attrs.public_ip == own.attrs.public_ip => Renewal::Renewed(86400),
            _ => Renewal::Gone,
        })
    }

    async fn restore(&self, own: &Lease, revision: i64) -> Result<bool, LeaseError> {
        let current = {
            let inner = self.inner.lock().unwrap();
            match inner.leases.get(&own.key) {
                Some(l) => l.revision,
                None => inner.garbled.get(&own.key).copied().unwrap_or(-1),
            }
        };
        if current != revision {
            return Ok(false);
        }
        self.put(own.clone());
        Ok(true)
    }

    async fn reclaim(&self, own: &Lease, _ttl: Duration) -> Result<Lease, LeaseError> {
        match self.get(&own.key) {
            Some(l) if l.attrs.public_ip != own.attrs.public_ip => Err(LeaseError::Lost {
                key: own.key.to_string(),
                holder: l.attrs.public_ip.to_string(),
            }),
            Some(l) => Ok(l),
            None => {
                self.put(own.clone());
                Ok(self.get(&own.key).expect("just written"))
            }
        }
    }

    async fn time_left(&self, _own: &Lease) -> Result<Option<Duration>, LeaseError> {
        Ok(Some(Duration::from_secs(86400)))
    }

    fn watch(&self, tx: mpsc::Sender<WatchUpdate>) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            {
                let mut inner = inner.lock().unwrap();
                let snapshot = inner.leases.values().cloned().collect();
                let _ = tx.try_send(WatchUpdate::Snapshot(snapshot));
                inner.watchers.push(tx.clone());
            }
            tx.closed().await;
        }
    }
}

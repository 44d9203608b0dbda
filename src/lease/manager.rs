//! What podnetd needs of a lease store, whichever it is: etcd (`lease::etcd`, flannel's key
//! layout) or the Kubernetes API (Node objects and flannel's annotations). The daemon's
//! start-up, event loop and lease keeper are written against this trait only, so a store is
//! added without touching them.
//!
//! Contract of `watch`: the first update is always a complete `Snapshot`; after that, `Put` and
//! `Delete` in the store's order. When the store's history no longer reaches back to where the
//! watch was (a compaction, `410 Gone`, a long outage) the watch sends a new `Snapshot` and
//! carries on; the consumer diffs it against what it had (`PeerSet::reset`), so nothing is
//! missed or doubled. `Disconnected` reports that the watch lost the store and is retrying; the
//! data path is left as it is meanwhile; `Connected` that it is back. The watch ends only when
//! the receiver is dropped.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{AcquireRequest, Lease, LeaseAttrs, LeaseError, SubnetKey};
use crate::config::NetworkConfig;

/// Changes to the set of leases, as a watch sees them.
#[derive(Debug, Clone)]
pub enum WatchUpdate {
    /// A full listing (at start, and whenever the watch had to start over).
    Snapshot(Vec<Lease>),
    Put(Lease),
    Delete(SubnetKey),
    /// A lease key was written with a value that is no lease (the store says why in
    /// `rejected`): a peer's is withdrawn as if deleted; this node's own is written back over
    /// that `revision`.
    Unreadable {
        key: SubnetKey,
        revision: i64,
    },
    /// The watch lost the store and is reconnecting (for health and metrics).
    Disconnected(String),
    /// After `Disconnected`: the watch is back and nothing was missed (a resumed watch; a
    /// watch that had to start over sends a `Snapshot` instead). Optional: any update other
    /// than `Disconnected` also says the watch is back.
    Connected,
}

/// Result of one renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Kept alive; this many seconds left.
    Renewed(i64),
    /// Nothing to renew: a reservation, or a store whose leases do not expire.
    Reservation,
    /// The lease is gone from the store.
    Gone,
}

/// A lease store.
pub trait SubnetManager: Clone + Send + Sync + 'static {
    /// "etcd" or "kubernetes", for status and metrics.
    fn kind(&self) -> &'static str;

    /// The store as log messages name it ("etcd", "the Kubernetes API").
    fn name(&self) -> &'static str {
        self.kind()
    }

    /// Where the network config lives, for messages (`/coreos.com/network/config`).
    fn config_source(&self) -> String;

    /// What to tell the operator while the network config does not exist.
    fn config_missing(&self) -> String {
        format!("{} does not exist yet", self.config_source())
    }

    /// Whether this node's lease is bound to the node's own name (a Node's annotations) rather
    /// than to whoever writes the key: then a write with another public address is someone
    /// rewriting ours, to be restored, not another node that took the subnet.
    fn held_by_name(&self) -> bool {
        false
    }

    /// Whether every lease's prefix length is the config's SubnetLen (etcd: flannel's
    /// allocator makes no other); in Kubernetes the controller manager chooses.
    fn subnet_len_from_config(&self) -> bool {
        true
    }

    /// The network config document; `None` while it does not exist yet.
    fn network_config(&self) -> impl Future<Output = Result<Option<String>, LeaseError>> + Send;

    /// Public addresses the operator stored for this node in the store (Kubernetes: the
    /// `node-public-ip` and `node-public-ipv6` annotations), which replace `--public-ip` and
    /// `--public-ipv6`. Stores without any say none.
    fn stored_public_ip(
        &self,
    ) -> impl Future<Output = Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), LeaseError>> + Send {
        std::future::ready(Ok((None, None)))
    }

    /// This node's lease as the store still holds it from before (a restart, a reboot, or
    /// flanneld on a node being migrated), so the backend keeps the identity it published.
    /// `attrs` carries this node's public addresses.
    fn previous_lease(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
    ) -> impl Future<Output = Option<Lease>> + Send;

    /// Acquires (or re-takes) this node's lease.
    fn acquire(
        &self,
        cfg: &NetworkConfig,
        req: &AcquireRequest,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;

    /// Keeps the lease alive, checking that it is still ours.
    fn renew(&self, own: &Lease) -> impl Future<Output = Result<Renewal, LeaseError>> + Send;

    /// Takes the subnet back after the lease vanished; `LeaseError::Lost` if another node holds
    /// it now.
    fn reclaim(
        &self,
        own: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;

    /// Someone rewrote our key (at `revision`) with other attributes or bytes that are no
    /// lease: writes `own` back over exactly that version. `Ok(false)` when the key changed
    /// again in between or the store has nothing to restore.
    fn restore(
        &self,
        _own: &Lease,
        _revision: i64,
    ) -> impl Future<Output = Result<bool, LeaseError>> + Send {
        std::future::ready(Ok(false))
    }

    /// Time left on the lease (`None`: it does not expire, or the store cannot tell).
    fn time_left(
        &self,
        own: &Lease,
    ) -> impl Future<Output = Result<Option<Duration>, LeaseError>> + Send;

    /// Follows every lease (see the module comment); runs until `tx` is dropped.
    fn watch(&self, tx: mpsc::Sender<WatchUpdate>) -> impl Future<Output = ()> + Send + 'static;

    /// The data path is up: tell the store (the Kubernetes API marks the node's network
    /// available). Stores with nothing to say do nothing.
    fn complete(&self, _own: &Lease) -> impl Future<Output = Result<(), LeaseError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Peers the store skipped because what they published makes no lease, as
    /// `lease <key>: why` (etcd) or `node <name>: why` (Kubernetes).
    fn rejected(&self) -> Vec<String> {
        Vec::new()
    }
}

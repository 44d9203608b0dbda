//! Prometheus metrics: what an operator wants to graph and alert on. Shared by the async side,
//! the data-plane thread and the firewall thread (every metric is atomic).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub ready: Gauge,
    pub lease_seconds_remaining: Gauge<f64, AtomicU64>,
    pub lease_renewals: Counter,
    pub lease_events: Family<Labels, Counter>,
    pub peers: Family<Labels, Gauge>,
    pub reconcile_runs: Family<Labels, Counter>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Counter,
    pub kernel_changes: Counter,
    pub etcd_errors: Family<Labels, Counter>,
    pub firewall_restores: Counter,
    pub firewall_errors: Counter,
    pub foreign_masquerade_rules: Gauge,
    pub tunnel_guard_peers: Gauge,
    /// The udp backend's packet counters, handed to its workers.
    pub udp: std::sync::Arc<crate::backend::udp::Stats>,
}

pub fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("podnet");
        let m = Metrics {
            ready: Gauge::default(),
            lease_seconds_remaining: Gauge::default(),
            lease_renewals: Counter::default(),
            lease_events: Family::default(),
            peers: Family::default(),
            reconcile_runs: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            reconcile_errors: Counter::default(),
            kernel_changes: Counter::default(),
            etcd_errors: Family::default(),
            firewall_restores: Counter::default(),
            firewall_errors: Counter::default(),
            foreign_masquerade_rules: Gauge::default(),
            tunnel_guard_peers: Gauge::default(),
            udp: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ready",
            "1 once the lease, data path, rules and subnet.env are in place",
            m.ready.clone(),
        );
        registry.register(
            "lease_seconds_remaining",
            "Seconds until this node's lease expires in etcd (+Inf for a reservation)",
            m.lease_seconds_remaining.clone(),
        );
        registry.register(
            "lease_renewals",
            "Lease renewals that succeeded",
            m.lease_renewals.clone(),
        );
        registry.register(
            "lease_events",
            "Peer lease events received, by type (added, removed)",
            m.lease_events.clone(),
        );
        registry.register(
            "peers",
            "Peers by how they are reached (direct, tunnel, skipped, other_backend)",
            m.peers.clone(),
        );
        registry.register(
            "reconcile_runs",
            "Data-plane passes, by kind (full, incremental)",
            m.reconcile_runs.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one data-plane pass took",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Kernel changes that failed (retried by the next full pass)",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "kernel_changes",
            "Routes, neighbours and FDB entries programmed or removed",
            m.kernel_changes.clone(),
        );
        registry.register(
            "etcd_errors",
            "etcd failures, by operation (watch, renew, reclaim)",
            m.etcd_errors.clone(),
        );
        registry.register(
            "firewall_restores",
            "Times podnet's nftables table was found changed and restored",
            m.firewall_restores.clone(),
        );
        registry.register(
            "firewall_errors",
            "nftables operations that failed",
            m.firewall_errors.clone(),
        );
        registry.register(
            "foreign_masquerade_rules",
            "Masquerade rules outside podnet that rewrite pod-to-pod traffic",
            m.foreign_masquerade_rules.clone(),
        );
        registry.register(
            "tunnel_guard_peers",
            "Addresses the tunnel guard admits",
            m.tunnel_guard_peers.clone(),
        );
        let udp_packets = Family::<Labels, Counter>::default();
        let udp_dropped = Family::<Labels, Counter>::default();
        let udp_errors = Counter::default();
        // A family's guard holds its lock while it lives: take each counter in its own call.
        let counter = |f: &Family<Labels, Counter>, k: &str, v: &str| -> Counter {
            f.get_or_create(&label(k, v)).clone()
        };
        let udp = std::sync::Arc::new(crate::backend::udp::Stats {
            encapsulated: counter(&udp_packets, "direction", "out"),
            decapsulated: counter(&udp_packets, "direction", "in"),
            no_route: counter(&udp_dropped, "reason", "no_route"),
            ttl_expired: counter(&udp_dropped, "reason", "ttl_expired"),
            malformed: counter(&udp_dropped, "reason", "malformed"),
            errors: udp_errors.clone(),
        });
        registry.register(
            "udp_packets",
            "Packets the udp backend carried, by direction (out: to a peer, in: from a peer)",
            udp_packets,
        );
        registry.register(
            "udp_dropped",
            "Packets the udp backend dropped, by reason (no_route answers with ICMP net unreachable)",
            udp_dropped,
        );
        registry.register(
            "udp_errors",
            "System calls of the udp data path that failed",
            udp_errors,
        );
        Metrics { registry, udp, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

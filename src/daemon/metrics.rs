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
    pub lease_repairs: Counter,
    pub lease_events: Family<Labels, Counter>,
    pub leases_rejected: Gauge,
    pub peers: Family<Labels, Gauge>,
    pub reconcile_runs: Family<Labels, Counter>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Counter,
    pub kernel_changes: Counter,
    /// Objects put back or removed after the kernel reported them changed, by `object`.
    pub drift_repairs: Family<Labels, Counter>,
    pub kernel_events_lost: Counter,
    /// Objects another agent keeps undoing, by `component` (dataplane, firewall).
    pub contested: Family<Labels, Gauge>,
    /// Lease store failures by `store` and `op` (watch, renew, reclaim, acquire, patch).
    pub store_errors: Family<Labels, Counter>,
    pub firewall_restores: Counter,
    pub firewall_errors: Counter,
    pub foreign_masquerade_rules: Gauge,
    pub tunnel_guard_peers: Gauge,
    /// The udp backend's packet counters, handed to its workers.
    pub udp: std::sync::Arc<crate::backend::udp::Stats>,
    /// The wireguard userspace engine's packet counters, handed to its workers.
    pub wireguard: std::sync::Arc<crate::backend::udp::Stats>,
    /// 1 for the wireguard engine that runs (`engine` = kernel or userspace).
    pub wireguard_engine: Family<Labels, Gauge>,
    /// The allocator's heap by `state` (in_use, free), read when the metrics are rendered.
    pub heap_bytes: Family<Labels, Gauge>,
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
            lease_repairs: Counter::default(),
            lease_events: Family::default(),
            leases_rejected: Gauge::default(),
            peers: Family::default(),
            reconcile_runs: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            reconcile_errors: Counter::default(),
            kernel_changes: Counter::default(),
            drift_repairs: Family::default(),
            kernel_events_lost: Counter::default(),
            contested: Family::default(),
            store_errors: Family::default(),
            firewall_restores: Counter::default(),
            firewall_errors: Counter::default(),
            foreign_masquerade_rules: Gauge::default(),
            tunnel_guard_peers: Gauge::default(),
            udp: packet_stats(&mut registry, "udp"),
            wireguard: packet_stats(&mut registry, "wireguard"),
            wireguard_engine: Family::default(),
            heap_bytes: Family::default(),
            registry: Registry::default(),
        };
        m.register_lease(&mut registry);
        m.register_dataplane(&mut registry);
        m.register_firewall(&mut registry);
        registry.register(
            "wireguard_engine_info",
            "The wireguard backend's engine (label engine: kernel or userspace)",
            m.wireguard_engine.clone(),
        );
        registry.register(
            "heap_bytes",
            "Bytes of the allocator's heap (label state: in_use, free — free is mapped but unused)",
            m.heap_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    fn register_lease(&self, r: &mut Registry) {
        let ready = "1 once the lease, data path, rules and subnet.env are in place";
        r.register("ready", ready, self.ready.clone());
        let left = "Seconds until this node's lease expires (+Inf when it does not expire)";
        let secs = self.lease_seconds_remaining.clone();
        r.register("lease_seconds_remaining", left, secs);
        let renewals = self.lease_renewals.clone();
        r.register("lease_renewals", "Lease renewals that succeeded", renewals);
        let repairs = self.lease_repairs.clone();
        let what = "Times someone else rewrote this node's lease and podnetd wrote it back";
        r.register("lease_repairs", what, repairs);
        let events = "Peer lease events received, by type (added, removed)";
        r.register("lease_events", events, self.lease_events.clone());
        let rejected = "Peers skipped because what they published makes no lease";
        r.register("leases_rejected", rejected, self.leases_rejected.clone());
        let errors =
            "Failures talking to the lease store, by store (etcd, kubernetes) and operation";
        r.register("lease_store_errors", errors, self.store_errors.clone());
    }

    fn register_dataplane(&self, r: &mut Registry) {
        let peers = "Peers by how they are reached (direct, tunnel, skipped, other_backend)";
        r.register("peers", peers, self.peers.clone());
        let runs = "Data-plane passes, by kind (full, incremental, repair, verify)";
        r.register("reconcile_runs", runs, self.reconcile_runs.clone());
        let took = self.reconcile_duration.clone();
        r.register(
            "reconcile_duration_seconds",
            "Time one data-plane pass took",
            took,
        );
        let errors = "Kernel changes that failed (retried by a full pass, 1 s to 60 s later)";
        r.register("reconcile_errors", errors, self.reconcile_errors.clone());
        let changes = "Routes, neighbours and FDB entries programmed or removed";
        r.register("kernel_changes", changes, self.kernel_changes.clone());
        let repairs = "Objects put back or removed after the kernel reported them changed behind podnet's back, by object (route, neighbour, fdb, device, pass)";
        r.register("drift_repairs", repairs, self.drift_repairs.clone());
        let lost = "Times the kernel's notifications overflowed and a full pass stood in for them";
        r.register("kernel_events_lost", lost, self.kernel_events_lost.clone());
        let contested = "Objects another agent keeps undoing, repaired with growing delays, by component (dataplane, firewall)";
        r.register("contested_objects", contested, self.contested.clone());
    }

    fn register_firewall(&self, r: &mut Registry) {
        let restores = "Times podnet's nftables table was found changed and restored";
        r.register(
            "firewall_restores",
            restores,
            self.firewall_restores.clone(),
        );
        let errors = self.firewall_errors.clone();
        r.register("firewall_errors", "nftables operations that failed", errors);
        let foreign = "Masquerade rules outside podnet that rewrite pod-to-pod traffic";
        r.register(
            "foreign_masquerade_rules",
            foreign,
            self.foreign_masquerade_rules.clone(),
        );
        let guard = self.tunnel_guard_peers.clone();
        r.register(
            "tunnel_guard_peers",
            "Addresses the tunnel guard admits",
            guard,
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(h) = super::memory::heap() {
            let set = |state, v: usize| {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                self.heap_bytes.get_or_create(&label("state", state)).set(v);
            };
            set("in_use", h.in_use);
            set("free", h.free);
        }
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

/// A userspace data path's packet counters (`udp`, or the wireguard userspace engine),
/// registered under its name; its workers hold the handles.
fn packet_stats(r: &mut Registry, name: &str) -> std::sync::Arc<crate::backend::udp::Stats> {
    let packets = Family::<Labels, Counter>::default();
    let dropped = Family::<Labels, Counter>::default();
    let errors = Counter::default();
    // A family's guard holds its lock while it lives: take each counter in its own call.
    let counter = |f: &Family<Labels, Counter>, k: &str, v: &str| -> Counter {
        f.get_or_create(&label(k, v)).clone()
    };
    let stats = std::sync::Arc::new(crate::backend::udp::Stats {
        encapsulated: counter(&packets, "direction", "out"),
        decapsulated: counter(&packets, "direction", "in"),
        no_route: counter(&dropped, "reason", "no_route"),
        ttl_expired: counter(&dropped, "reason", "ttl_expired"),
        malformed: counter(&dropped, "reason", "malformed"),
        spoofed: counter(&dropped, "reason", "spoofed"),
        errors: errors.clone(),
    });
    let help = format!(
        "Packets the {name} backend carried in userspace, by direction (out: to a peer, in: from a peer)"
    );
    r.register(format!("{name}_packets"), help, packets);
    let help = format!(
        "Packets the {name} backend dropped in userspace, by reason (no_route answers with ICMP net unreachable; \
         spoofed: a peer's packet from outside its subnet, or a key no lease carries; malformed: \
         not a packet, or one that does not decrypt)"
    );
    r.register(format!("{name}_dropped"), help, dropped);
    r.register(
        format!("{name}_errors"),
        format!("System calls of the {name} data path that failed"),
        errors,
    );
    stats
}

/// The wireguard backend's per-peer counters as OpenMetrics families (the peers come and go
/// with leases, so they are rendered from the engine's report at each scrape).
pub fn wireguard_text(peers: &[crate::backend::wireguard::PeerStats]) -> String {
    let mut s = String::new();
    let families: [(&str, &str, &str); 4] = [
        (
            "wireguard_peer_handshakes",
            "counter",
            "Handshakes completed with the peer",
        ),
        (
            "wireguard_peer_handshake_failures",
            "counter",
            "Handshakes with the peer that failed (a key or PSK mismatch)",
        ),
        (
            "wireguard_peer_bytes",
            "counter",
            "Bytes carried to (out) and from (in) the peer",
        ),
        (
            "wireguard_peer_last_handshake_seconds",
            "gauge",
            "Seconds since the last handshake with the peer",
        ),
    ];
    for (name, kind, help) in families {
        s += &format!("# HELP podnet_{name} {help}.\n# TYPE podnet_{name} {kind}\n");
        for p in peers {
            let peer = p.lease.to_string();
            let total = if kind == "counter" { "_total" } else { "" };
            let line =
                |labels: String, v: String| format!("podnet_{name}{total}{{{labels}}} {v}\n");
            let l = format!("peer=\"{peer}\"");
            s += &match name {
                "wireguard_peer_handshakes" => line(l, p.handshakes.to_string()),
                "wireguard_peer_handshake_failures" => line(l, p.failures.to_string()),
                "wireguard_peer_bytes" => {
                    line(format!("{l},direction=\"in\""), p.rx_bytes.to_string())
                        + &line(format!("{l},direction=\"out\""), p.tx_bytes.to_string())
                }
                _ => match p.last_handshake {
                    Some(d) => line(l, format!("{:.3}", d.as_secs_f64())),
                    None => String::new(),
                },
            };
        }
    }
    s
}

/// Labels for a lease store failure.
pub fn store_op(store: &str, op: &str) -> Labels {
    vec![("store".into(), store.into()), ("op".into(), op.into())]
}

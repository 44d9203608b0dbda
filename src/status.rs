//! The status contract between `podnetd` and `podnetctl`: what `/status` on the agent's local
//! socket returns, as serde types that both sides share. The daemon fills them in; `podnetctl
//! status`, `doctor` and the lab demo read them. Field names are the JSON's (camelCase).

use serde::{Deserialize, Serialize};

/// Where podnetd serves `/status` by default (`--status-socket`).
pub const DEFAULT_SOCKET: &str = "/run/podnet/podnetd.sock";

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub ready: bool,
    /// What start-up is doing, or why it waits ("waiting for the network config in etcd").
    pub phase: String,
    pub node: NodeInfo,
    /// This node's lease, once it has one.
    pub lease: Option<LeaseInfo>,
    #[serde(default)]
    pub peers: Vec<PeerInfo>,
    /// Differences between the kernel and what the peers need (`None` before the data path runs).
    pub drift: Option<DriftInfo>,
    pub firewall: Option<FirewallInfo>,
    pub dataplane: Option<DataplaneInfo>,
    /// Peers skipped because what they published makes no lease, with why.
    #[serde(default)]
    pub rejected_leases: Vec<String>,
    /// Network policy, when it is enabled.
    #[serde(default)]
    pub policy: Option<PolicyInfo>,
    /// Where leases come from: "etcd" or "kubernetes".
    #[serde(default)]
    pub lease_store: String,
    /// The last error talking to the lease store (the data path stays meanwhile).
    pub last_store_error: Option<String>,
}

/// This node as the agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The interface that carries traffic between nodes.
    pub iface: Option<String>,
    #[serde(rename = "publicIP")]
    pub public_ip: Option<String>,
    pub backend: Option<String>,
    /// The pods' MTU (`FLANNEL_MTU`).
    pub mtu: Option<u32>,
    pub subnet_file: String,
    /// The device tunnelled traffic leaves by (`flannel.1`, `flannel0`), if the backend tunnels.
    #[serde(default)]
    pub tunnel_device: Option<String>,
    /// Bytes the backend adds to every packet on the external interface.
    #[serde(default)]
    pub encap_overhead: Option<u32>,
    /// The wireguard backend's engine: `kernel` or `userspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseInfo {
    /// The lease key (`10.244.3.0-24`).
    pub key: String,
    pub subnet: Option<String>,
    pub ipv6_subnet: Option<String>,
    /// A reservation never expires.
    pub reservation: bool,
    pub seconds_left: Option<u64>,
}

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// A route via the peer's address on the shared L2.
    Direct,
    /// Through the tunnel device.
    Tunnel,
    /// Not programmed (the reason says why).
    Skipped,
}

impl PathKind {
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Tunnel => "tunnel",
            PathKind::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub subnet: Option<String>,
    pub key: String,
    #[serde(rename = "publicIP")]
    pub public_ip: String,
    pub path: PathKind,
    pub reason: Option<String>,
    /// The peer's IPv6 subnet and public address (dual-stack and IPv6-only networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<String>,
    #[serde(
        rename = "publicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<String>,
    /// The peer's WireGuard tunnel (wireguard backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardPeer>,
}

/// One peer's WireGuard tunnel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireguardPeer {
    pub public_key: String,
    pub endpoint: String,
    /// Handshakes completed since podnetd started.
    pub handshakes: u64,
    /// Seconds since the last handshake (`None`: none yet).
    pub last_handshake_seconds: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Handshakes that failed (a key or PSK mismatch), and why, while it lasts.
    #[serde(default)]
    pub handshake_failures: u64,
    #[serde(default)]
    pub problem: Option<String>,
}

/// Kernel objects missing or unexpected, each as one line (`route 10.244.2.0/24 via ...`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftInfo {
    #[serde(default)]
    pub missing: Vec<String>,
    #[serde(default)]
    pub unexpected: Vec<String>,
    /// Set when the kernel could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An object another agent keeps undoing; podnetd puts it back with growing delays.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContestedInfo {
    /// The object as wanted (`route 10.244.2.0/24 via 10.244.2.0 dev #5 onlink`,
    /// `nftables table inet podnet`).
    pub object: String,
    /// Times it was found undone, and put back, since this run of undoings began.
    pub undone: u64,
    pub repairs: u64,
    /// How long ago this run of undoings began.
    pub for_seconds: u64,
    /// When the next repair is due, if one waits.
    pub next_repair_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallInfo {
    /// Rules of other software that masquerade pod-to-pod traffic, as checked when this
    /// document was made.
    #[serde(default)]
    pub foreign_masquerade: Vec<String>,
    /// Times podnet's table was found changed and restored.
    pub restores: u64,
    pub tunnel_guard_peers: usize,
    pub last_error: Option<String>,
    /// The table, when another agent keeps changing it.
    #[serde(default)]
    pub contested: Vec<ContestedInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneInfo {
    pub full_passes: u64,
    pub incremental: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Whether drift is repaired as the kernel reports it (`--kernel-events`).
    #[serde(default)]
    pub kernel_events: bool,
    /// Objects put back (or removed) after the kernel reported them changed.
    #[serde(default)]
    pub repairs: u64,
    /// Safety-net checks that found the kernel as wanted.
    #[serde(default)]
    pub verifications: u64,
    /// Times notifications were lost and a full pass stood in for them.
    #[serde(default)]
    pub events_lost: u64,
    /// Routes, neighbours, FDB entries and devices another agent keeps undoing.
    #[serde(default)]
    pub contested: Vec<ContestedInfo>,
}

/// The network policy engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInfo {
    /// Where objects come from (`manifests in /etc/podnet/policy`, `the Kubernetes API`).
    pub sources: Vec<String>,
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    /// This node's pods, and how many of them some policy isolates.
    pub local_pods: usize,
    pub isolated_pods: usize,
    /// Transactions applied, and failed (each failure is followed by a full rewrite).
    pub applies: u64,
    pub failures: u64,
    pub last_apply_ms: Option<f64>,
    /// Objects refused, each naming the object and the field.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// What policy does to one pod (`podnetctl policy POD`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyExplain {
    /// `namespace/name`.
    pub pod: String,
    /// Whether the pod is in the model at all.
    pub known: bool,
    pub ips: Vec<String>,
    /// Whether it runs on this node (its rules are in this node's kernel).
    pub local: bool,
    pub ingress: DirectionExplain,
    pub egress: DirectionExplain,
}

/// One direction of a pod's policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionExplain {
    /// The policies that isolate it (empty: everything is allowed).
    pub isolated_by: Vec<String>,
    /// What they allow, one rule a line (`x/allow-b ingress[0]: from pods pod=b on TCP/80`).
    pub allows: Vec<String>,
}

impl Status {
    /// Reads a status document (what `podnetctl` gets from `/status`).
    pub fn from_json(text: &str) -> Result<Status, String> {
        serde_json::from_str(text).map_err(|e| format!("podnetd's status is not readable: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("status serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_the_documented_names() {
        let s = Status {
            ready: true,
            phase: "ready".into(),
            node: NodeInfo {
                iface: Some("eth0".into()),
                public_ip: Some("198.18.0.11".into()),
                backend: Some("vxlan".into()),
                mtu: Some(1450),
                subnet_file: "/run/flannel/subnet.env".into(),
                tunnel_device: Some("flannel.1".into()),
                encap_overhead: Some(50),
                engine: None,
            },
            peers: vec![PeerInfo {
                subnet: Some("10.244.2.0/24".into()),
                key: "10.244.2.0-24".into(),
                public_ip: "198.18.0.12".into(),
                path: PathKind::Tunnel,
                reason: None,
                ipv6_subnet: None,
                public_ipv6: None,
                wireguard: None,
            }],
            lease_store: "etcd".into(),
            dataplane: Some(DataplaneInfo {
                kernel_events: true,
                contested: vec![ContestedInfo {
                    object: "route 10.244.2.0/24 via 10.244.2.0 dev #5 onlink".into(),
                    undone: 9,
                    repairs: 9,
                    for_seconds: 12,
                    next_repair_seconds: Some(4.0),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = s.to_json();
        for name in [
            "\"publicIP\":\"198.18.0.11\"",
            "\"subnetFile\"",
            "\"path\":\"tunnel\"",
            "\"leaseStore\":\"etcd\"",
            "\"lastStoreError\":null",
            "\"kernelEvents\":true",
            "\"nextRepairSeconds\":4.0",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
        assert_eq!(Status::from_json(&text).unwrap(), s);
        assert!(
            Status::from_json("{}")
                .unwrap_err()
                .contains("not readable")
        );
    }
}

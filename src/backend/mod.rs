//! Backends: how this node reaches the other nodes' pod subnets.
//!
//! Reconcile, don't react. A backend turns one peer lease into the kernel objects that make its
//! subnet reachable (`plan_peer`); the `Reconciler` holds the union of those for all peers as the
//! desired state, reads what podnet owns in the kernel, and applies only the difference. What
//! podnet owns: routes with protocol `RTPROT_PODNET`, and the permanent neighbour and FDB entries
//! on devices the backend owns outright (`flannel.<VNI>`, `flannel-v6.<VNI>`). Nothing else is
//! ever deleted.
//!
//! A full pass runs at start (after the first complete list of peers, never before, so a restart
//! removes nothing that is still wanted), and afterwards only when something calls for one: a
//! device recreated, notifications lost, the underlay changed, the safety net finding the
//! kernel different. Between passes a peer that comes or goes costs only its own few messages,
//! and an object changed behind podnet's back only its own repair (`drift`).

pub mod drift;
pub mod host_gw;
pub mod reconcile;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::config::{BackendConfig, NetworkConfig};
use crate::kernel::KernelError;
use crate::kernel::netlink::{Fdb, LinkChange, Neighbour, Netlink, Route};
use crate::lease::{Lease, SubnetKey};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    Invalid(String),
}

/// The interface that carries traffic to other nodes, and the addresses this node publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's own IPv4 address.
    pub iface_addr: Option<Ipv4Addr>,
    /// The address peers use to reach us (`--public-ip`, else `iface_addr`).
    pub ext_addr: Option<Ipv4Addr>,
    pub iface_addr6: Option<Ipv6Addr>,
    pub ext_addr6: Option<Ipv6Addr>,
}

/// What a prepared backend publishes in the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub backend_type: &'static str,
    /// Compact JSON for `BackendData`.
    pub backend_data: Option<String>,
    /// Compact JSON for `BackendV6Data` (the IPv6 half of a dual-stack or IPv6-only lease).
    pub backend_v6_data: Option<String>,
    /// MTU for pods (written to `subnet.env`).
    pub mtu: u32,
    /// The UDP port tunnel packets arrive on (guarded by the firewall), if the backend tunnels.
    pub tunnel_port: Option<u16>,
    /// Bytes the backend adds to each packet on the external interface.
    pub overhead: u32,
    /// The device tunnelled traffic leaves through.
    pub tunnel_device: Option<String>,
}

/// How a peer is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPath {
    /// A route via the peer's address on the shared L2.
    Direct,
    /// Through the tunnel device.
    Tunnel,
    /// Not programmed, with the reason (logged and counted).
    Skipped(String),
}

impl PeerPath {
    pub fn label(&self) -> &'static str {
        match self {
            PeerPath::Direct => "direct",
            PeerPath::Tunnel => "tunnel",
            PeerPath::Skipped(_) => "skipped",
        }
    }
}

/// The kernel objects for one peer, in the order they must be installed (neighbour and FDB
/// before the route, so the kernel never has to resolve the gateway itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerObjects {
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<Fdb>,
    pub routes: Vec<Route>,
}

impl PeerObjects {
    /// Gives back the spare capacity of each list. A plan is built by pushing (a `Vec` grows to
    /// four elements at its first push) and then kept for as long as the peer lives: 76-byte
    /// routes in room for four were a third of podnetd's heap at 5 000 peers.
    pub fn shrink_to_fit(&mut self) {
        self.neighbours.shrink_to_fit();
        self.fdb.shrink_to_fit();
        self.routes.shrink_to_fit();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub path: PeerPath,
    pub objects: PeerObjects,
}

/// An encrypted tunnel's engine and its peers (the wireguard backend).
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelReport {
    /// `kernel` or `userspace`.
    pub engine: &'static str,
    pub peers: Vec<wireguard::PeerStats>,
}

/// What the daemon hands every backend: where counters go, and the wireguard backend's
/// node-local settings.
pub struct Local {
    pub udp_stats: std::sync::Arc<udp::Stats>,
    pub wireguard_stats: std::sync::Arc<udp::Stats>,
    pub wireguard_key_file: std::path::PathBuf,
    pub wireguard_engine: Option<crate::config::WgEngine>,
}

/// A data path.
pub trait Backend: Send {
    fn type_name(&self) -> &'static str;

    /// Whether a peer's lease is for this backend (others are skipped with a warning).
    fn accepts(&self, lease: &Lease) -> bool {
        lease.attrs.backend_type == self.type_name()
    }

    /// Runs before the lease exists: adopts or creates whatever the lease must describe (the
    /// VXLAN device's MAC) and computes the MTU.
    fn prepare(&mut self, nl: &mut Netlink) -> Result<Registration, BackendError>;

    /// Makes this node's own devices and addresses right for its lease; creates what is missing.
    fn ensure_local(&mut self, nl: &mut Netlink, own: &Lease) -> Result<(), BackendError>;

    /// The objects that make one peer reachable.
    fn plan_peer(&mut self, nl: &mut Netlink, peer: &Lease) -> PeerPlan;

    /// A userspace data path keeps its own table of peers; these keep it in step with what the
    /// reconciler programmed. Kernel backends have nothing to do.
    fn peer_up(&mut self, _peer: &Lease) {}
    fn peer_down(&mut self, _key: &SubnetKey) {}
    /// After a full pass: exactly these peers.
    fn peers_reset(&mut self, _peers: &[&Lease]) {}

    /// Links whose permanent neighbour and FDB entries are all podnet's.
    fn owned_links(&self) -> Vec<u32>;

    /// The backend's devices by name: one deleted or changed is rebuilt at once.
    fn device_names(&self) -> Vec<String>;

    /// An encrypting backend's engine and per-peer counters.
    fn tunnel_report(&mut self) -> Option<TunnelReport> {
        None
    }

    /// The indexes of the backend's devices now (routes through them that go are its own).
    fn devices(&self) -> Vec<u32> {
        self.owned_links()
    }

    /// Whether the devices are as `ensure_local` leaves them (exists, up, MTU, MAC,
    /// attributes): a cheap look after a notification about one of them.
    fn device_ok(&mut self, _nl: &mut Netlink) -> Result<bool, BackendError> {
        Ok(true)
    }
}

/// Builds the backend the config asks for. `previous` is this node's lease as etcd still has it
/// (from before a restart or a reboot, or written by flanneld on a node being migrated): the
/// identity it published is kept. `local` says where userspace data paths count packets and
/// where the wireguard key lives.
pub fn new(
    cfg: &NetworkConfig,
    ext: &ExternalInterface,
    previous: Option<&Lease>,
    local: Local,
) -> Result<Box<dyn Backend>, BackendError> {
    let fam = Families {
        v4: cfg.v4.is_some(),
        v6: cfg.v6.is_some(),
    };
    if fam.v6 && !matches!(cfg.backend, BackendConfig::Vxlan(_) | BackendConfig::HostGw) {
        return Err(BackendError::Invalid(format!(
            "EnableIPv6: the {} backend carries IPv4 pod traffic only (as flannel's udp); use vxlan or \
             host-gw for IPv6 and dual-stack networks",
            cfg.backend.type_name()
        )));
    }
    match &cfg.backend {
        BackendConfig::Vxlan(o) => Ok(Box::new(vxlan::Vxlan::new(
            o.clone(),
            fam,
            ext.clone(),
            previous,
        )?)),
        BackendConfig::HostGw => Ok(Box::new(host_gw::HostGw::new(fam, ext.clone())?)),
        BackendConfig::Udp(o) => Ok(Box::new(udp::Udp::new(
            o.clone(),
            ipv4_network(cfg)?,
            ext.clone(),
            local.udp_stats,
        )?)),
        BackendConfig::Wireguard(o) => Ok(Box::new(wireguard::Wireguard::new(
            o.clone(),
            ipv4_network(cfg)?,
            ext.clone(),
            wireguard::Local {
                key_file: local.wireguard_key_file,
                engine: local.wireguard_engine,
                stats: local.wireguard_stats,
            },
        )?)),
    }
}

/// The address families the network config enables: which halves of a lease a backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    /// A peer's subnets of the families this node serves, each with the peer's public address
    /// of that family (`None` when the lease lacks it).
    pub fn of_peer(self, peer: &Lease) -> Vec<(IpNet, Option<IpAddr>)> {
        let mut out = Vec::new();
        if let (true, Some(n)) = (self.v4, peer.key.v4) {
            let ip = Some(peer.attrs.public_ip).filter(|a| !a.is_unspecified());
            out.push((IpNet::V4(n), ip.map(IpAddr::V4)));
        }
        if let (true, Some(n)) = (self.v6, peer.key.v6) {
            out.push((IpNet::V6(n), peer.attrs.public_ipv6.map(IpAddr::V6)));
        }
        out
    }

    /// A peer planned family by family with `plan` (subnet, public address of that family):
    /// the objects of every family that can be served; `Skipped` with the reasons when one
    /// cannot (the other family's objects stay), else `Tunnel` if a family goes through one,
    /// else `Direct`.
    pub fn plan_peer(
        self,
        peer: &Lease,
        mut plan: impl FnMut(IpNet, Option<IpAddr>) -> Result<(PeerPath, PeerObjects), String>,
    ) -> PeerPlan {
        let families = self.of_peer(peer);
        if families.is_empty() {
            return PeerPlan {
                path: PeerPath::Skipped("lease has no subnet of a family this node serves".into()),
                objects: PeerObjects::default(),
            };
        }
        let mut objects = PeerObjects::default();
        let mut skipped = Vec::new();
        let mut tunnel = false;
        for (subnet, public) in families {
            match plan(subnet, public) {
                Ok((path, o)) => {
                    tunnel |= path == PeerPath::Tunnel;
                    append(&mut objects.neighbours, o.neighbours);
                    append(&mut objects.fdb, o.fdb);
                    append(&mut objects.routes, o.routes);
                }
                Err(e) => skipped.push(e),
            }
        }
        let path = match (skipped.is_empty(), tunnel) {
            (false, _) => PeerPath::Skipped(skipped.join("; ")),
            (true, true) => PeerPath::Tunnel,
            (true, false) => PeerPath::Direct,
        };
        PeerPlan { path, objects }
    }
}

/// `dst` followed by `src`; the first family's list is moved, not copied, so a plan is
/// allocated at its size (an empty `Vec` extended makes room for four) and never reallocated
/// to shrink, which would leave holes between long-lived allocations.
fn append<T>(dst: &mut Vec<T>, src: Vec<T>) {
    if dst.is_empty() {
        *dst = src;
    } else {
        dst.extend(src);
    }
}

/// The IPv4 network of a config, for backends that carry IPv4 only.
fn ipv4_network(cfg: &NetworkConfig) -> Result<Ipv4Net, BackendError> {
    cfg.v4.as_ref().map(|f| f.network).ok_or_else(|| {
        BackendError::Invalid(format!(
            "EnableIPv4 false: the {} backend needs an IPv4 Network",
            cfg.backend.type_name()
        ))
    })
}

/// Whether an address is IPv6 link-local (fe80::/10): the kernel's own on every device.
pub fn is_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Makes the network address of `subnet` (`/32`, or `/128` for IPv6) the only address of its
/// family on a backend's device (as flannel does: a source address for node-to-pod traffic, no
/// broadcast routes; IPv6 link-local addresses are left to the kernel) and brings the device
/// up, with `mtu` when given.
fn own_address_up(
    nl: &mut Netlink,
    device: &str,
    index: u32,
    subnet: IpNet,
    mtu: Option<u32>,
) -> Result<(), BackendError> {
    let want = IpNet::new(subnet.network(), subnet.max_prefix_len()).expect("host prefix is valid");
    for a in nl
        .addrs_v(subnet.addr().is_ipv4())?
        .into_iter()
        .filter(|a| a.index == index && a.net != want && !is_link_local(a.net.addr()))
    {
        tracing::info!(device, address = %a.net, "removing a stale address");
        nl.del_addr(index, a.net)?;
    }
    nl.add_addr(index, want)?;
    nl.set_link(
        index,
        &LinkChange {
            up: Some(true),
            mtu,
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Decides whether `ip` is on the same L2 as `ext`: the kernel reaches it through `ext` with no
/// gateway (flannel's DirectRouting test).
pub fn on_link(nl: &mut Netlink, ext: &ExternalInterface, ip: IpAddr) -> Result<bool, String> {
    match nl.route_get(ip) {
        Ok(r) => Ok(r.gateway.is_none() && r.oif == Some(ext.index)),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Keepalive, LeaseAttrs};

    fn peer(key: &str) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: LeaseAttrs {
                public_ip: "198.18.0.12".parse().unwrap(),
                public_ipv6: Some("2001:2::12".parse().unwrap()),
                backend_type: "host-gw".into(),
                backend_data: None,
                backend_v6_data: None,
            },
            keepalive: Keepalive::Etcd(1),
            revision: 1,
            created: 1,
        }
    }

    fn one_route(subnet: IpNet, _: Option<IpAddr>) -> Result<(PeerPath, PeerObjects), String> {
        Ok((
            PeerPath::Direct,
            PeerObjects {
                routes: vec![Route::unicast(subnet, 86)],
                ..Default::default()
            },
        ))
    }

    /// A plan lives as long as its peer: its lists hold no spare room (an empty `Vec` extended
    /// by one makes room for four, 304 bytes for one 76-byte route), with one family or two.
    #[test]
    fn plans_are_allocated_at_their_size() {
        let one = Families {
            v4: true,
            v6: false,
        };
        let p = one.plan_peer(&peer("10.244.7.0-24"), one_route);
        assert_eq!(p.path, PeerPath::Direct);
        assert_eq!(
            (p.objects.routes.len(), p.objects.routes.capacity()),
            (1, 1)
        );
        let both = Families { v4: true, v6: true };
        let mut p = both.plan_peer(&peer("10.244.7.0-24&fd10:244:0:7::-64"), one_route);
        p.objects.shrink_to_fit();
        assert_eq!(
            (p.objects.routes.len(), p.objects.routes.capacity()),
            (2, 2)
        );
        assert_eq!(p.objects.neighbours.capacity(), 0);
    }
}

//! wireguard: pod traffic between nodes encrypted with WireGuard, compatible with flannel's
//! wireguard backend — the same config keys, the same lease (`BackendType` "wireguard",
//! `BackendData` `{"PublicKey":"…","Port":51820}`; flanneld's `{"PublicKey":"…"}` without a
//! port is read as flannel reads it: the peer listens on our `ListenPort`), the same device
//! name and the standard protocol on the wire — so a flannel wireguard cluster can move to
//! podnet node by node.
//!
//! Two engines behind one backend (`Engine`): the kernel's WireGuard, configured over generic
//! netlink (`kernel`), and a userspace one (`userspace`: boringtun's Noise state machine in
//! podnet's own batched TUN/UDP loop) for kernels without the module. `Engine: auto` (the
//! default) takes the kernel's when `ip link add type wireguard` works; the config's
//! `Backend.Engine` or podnetd's `--wireguard-engine` forces either. The choice is logged,
//! exported (`podnet_wireguard_engine_info`) and shown in `/status`.
//!
//! Kernel objects (both engines):
//! - device `flannel-wg` (kind `wireguard`, or a persistent multi-queue TUN for the userspace
//!   engine), address `<lease IP>/32`, MTU = (`Backend.MTU` or the underlay's) − 80, as flannel;
//!   listening on `ListenPort` (51820) with this node's private key;
//! - one route for the whole cluster network `dev flannel-wg scope link` (protocol boot; scope
//!   link as flannel's; this node's own subnet has the more specific route via the pod bridge);
//! - per peer, nothing in the routing tables: a WireGuard peer with the lease's public key,
//!   endpoint `<PublicIP>:<Port>` and allowed IPs = the lease's subnet (cryptokey routing: a
//!   packet from a peer is accepted only with a source inside its subnet); a lease without a
//!   `Port` gets our `ListenPort` (`PeerSpec::of`, and the same in the lease checks' endpoint
//!   identities). Every `Mode` but `ipv6` (refused) means this one IPv4 device while pod
//!   networks are IPv4 only.
//!
//! Invariants: the device's peers are exactly the accepted wireguard leases — the full pass at
//! start removes any other (flannel keeps stale peers after a restart, k3s#5216), a lease whose
//! key or endpoint changes replaces its peer, and every later `ensure` (the reconciler's
//! periodic check and its repair of a deleted device) puts back what the device lost: the
//! kernel engine compares the device's peers, read back, with the wanted ones (the routes'
//! digest cannot see peers); the userspace engine's peers live in podnetd and outlive its TUN
//! device. The private key is the key file's (`key`); its public key is in our lease. Unlike
//! flannel, podnetd leaves the device in place when it stops: the kernel engine keeps carrying
//! traffic, and the userspace engine's device drops it — pod traffic never falls back to the
//! default route in clear.

pub mod kernel;
pub mod key;
pub mod tunnels;
pub mod userspace;
mod worker;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};

use super::{
    Backend, BackendError, ExternalInterface, PeerObjects, PeerPath, PeerPlan, Registration,
};
use crate::config::{WG_OVERHEAD, WgEngine, WgMode, WireguardOptions};
use crate::kernel::netlink::{Netlink, RTPROT_BOOT, Route, SCOPE_LINK};
use crate::kernel::sysctl;
use crate::lease::wireguard::WireguardData;
use crate::lease::{Lease, SubnetKey};
pub use tunnels::PeerStats;

/// flannel's device name (IPv4; `flannel-wg-v6` would be the IPv6 one).
pub use crate::owned::WG_DEVICE as DEVICE;

/// One peer as the engines configure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub lease: SubnetKey,
    pub subnet: Ipv4Net,
    pub public_key: [u8; 32],
    pub endpoint: SocketAddrV4,
}

impl PeerSpec {
    /// The peer a lease describes, or why it cannot be one. `listen_port` is this node's: where
    /// a peer whose lease names no port (flanneld's form) listens, as flannel assumes.
    pub fn of(l: &Lease, listen_port: u16) -> Result<PeerSpec, String> {
        let subnet = l.key.v4.ok_or("lease has no IPv4 subnet")?;
        let data = WireguardData::of(l)?.ok_or("not a wireguard lease")?;
        Ok(PeerSpec {
            lease: l.key,
            subnet,
            public_key: data.public_key,
            endpoint: data.endpoint(l.attrs.public_ip, listen_port),
        })
    }
}

/// The route that sends the whole cluster network into the device: `<Network> dev flannel-wg
/// scope link`, as flannel adds it (no gateway: WireGuard picks the peer by destination).
pub fn network_route(network: Ipv4Net, index: u32) -> Route {
    let mut r = Route::unicast(IpNet::V4(network), RTPROT_BOOT);
    r.oif = Some(index);
    r.scope = SCOPE_LINK;
    r
}

/// A WireGuard implementation: the device and its peers.
pub trait Engine: Send {
    fn name(&self) -> &'static str;
    /// Makes the device exist with our key and port (recreating it when gone) and, once
    /// `reset` has said which peers are wanted, with exactly those peers; its index. `own` is
    /// this node's address on the device, once there is a lease.
    fn ensure(&mut self, nl: &mut Netlink, own: Option<Ipv4Addr>) -> Result<u32, BackendError>;
    /// A peer added or changed.
    fn put(&mut self, spec: PeerSpec);
    fn remove(&mut self, lease: &SubnetKey);
    /// Exactly these peers.
    fn reset(&mut self, peers: Vec<PeerSpec>);
    fn stats(&mut self) -> Vec<PeerStats>;
}

/// What the backend's host gives it.
pub struct Local {
    pub key_file: PathBuf,
    /// `--wireguard-engine`, which overrides the config's `Engine`.
    pub engine: Option<WgEngine>,
    /// The userspace engine's packet counters.
    pub stats: Arc<crate::backend::udp::Stats>,
}

pub struct Wireguard {
    opts: WireguardOptions,
    network: Ipv4Net,
    ext: ExternalInterface,
    keys: key::KeyPair,
    choice: WgEngine,
    stats: Arc<crate::backend::udp::Stats>,
    mtu: u32,
    engine: Option<Box<dyn Engine>>,
    /// The device's index as `ensure_local` last left it.
    index: Option<u32>,
}

impl Wireguard {
    pub fn new(
        opts: WireguardOptions,
        network: Ipv4Net,
        ext: ExternalInterface,
        local: Local,
    ) -> Result<Wireguard, BackendError> {
        if opts.mode == WgMode::Ipv6 {
            return Err(BackendError::Invalid(
                "Backend.Mode \"ipv6\": WireGuard endpoints over an IPv6 underlay are not supported yet \
                 (use \"separate\", \"auto\" or \"ipv4\")"
                    .into(),
            ));
        }
        let underlay = opts.mtu.unwrap_or(ext.mtu);
        let mtu = underlay
            .checked_sub(WG_OVERHEAD)
            .filter(|m| *m >= 576)
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "underlay MTU {underlay} is too small for WireGuard (pods would get less than 576)"
                ))
            })?;
        let (keys, created) = key::load_or_create(&local.key_file)?;
        tracing::info!(
            key_file = %local.key_file.display(),
            public_key = %key::b64(&keys.public),
            created,
            "WireGuard key"
        );
        Ok(Wireguard {
            choice: local.engine.unwrap_or(opts.engine),
            opts,
            network,
            ext,
            keys,
            stats: local.stats,
            mtu,
            engine: None,
            index: None,
        })
    }

    /// Picks the engine: the one asked for, or the kernel's where it works.
    fn select(&mut self, nl: &mut Netlink) -> Result<Box<dyn Engine>, BackendError> {
        let existing = nl.link(DEVICE)?.and_then(|l| l.kind);
        let mut kernel_ok = || existing.as_deref() == Some("wireguard") || kernel::available(nl);
        let (use_kernel, why) = match self.choice {
            WgEngine::Kernel => (true, "forced"),
            WgEngine::Userspace => (false, "forced"),
            WgEngine::Auto if kernel_ok() => (true, "the kernel has WireGuard"),
            WgEngine::Auto => (false, "the kernel has no WireGuard"),
        };
        let o = &self.opts;
        let engine: Box<dyn Engine> = if use_kernel {
            Box::new(kernel::KernelEngine::new(
                &self.keys,
                o.listen_port,
                o.psk,
                o.persistent_keepalive,
            ))
        } else {
            let bind = self.ext.iface_addr.ok_or_else(|| {
                BackendError::Invalid(format!(
                    "wireguard needs an IPv4 address on {} to listen on",
                    self.ext.name
                ))
            })?;
            Box::new(userspace::Userspace::new(
                bind,
                o.listen_port,
                self.mtu,
                &self.keys,
                o.psk,
                o.persistent_keepalive,
                self.stats.clone(),
            ))
        };
        tracing::info!(engine = engine.name(), why, "wireguard engine");
        Ok(engine)
    }

    fn engine(&mut self) -> Result<&mut Box<dyn Engine>, BackendError> {
        self.engine
            .as_mut()
            .ok_or_else(|| BackendError::Invalid("wireguard: no engine before prepare".into()))
    }
}

impl Backend for Wireguard {
    fn type_name(&self) -> &'static str {
        "wireguard"
    }

    fn prepare(&mut self, nl: &mut Netlink) -> Result<Registration, BackendError> {
        let mut engine = self.select(nl)?;
        // Device and socket now, so that a port in use fails before a lease is taken.
        engine.ensure(nl, None).map_err(|e| match (self.choice, &e) {
            (WgEngine::Kernel, BackendError::Kernel(k)) if k.is_not_supported() => {
                BackendError::Invalid(format!(
                    "wireguard engine \"kernel\" was asked for, but this kernel makes no WireGuard devices ({e}); \
                     use \"auto\" or \"userspace\""
                ))
            }
            _ => e,
        })?;
        self.engine = Some(engine);
        let data = WireguardData {
            public_key: self.keys.public,
            port: Some(self.opts.listen_port),
        };
        Ok(Registration {
            backend_type: "wireguard",
            backend_data: Some(data.to_json()),
            backend_v6_data: None,
            mtu: self.mtu,
            overhead: WG_OVERHEAD,
            tunnel_port: Some(self.opts.listen_port),
            tunnel_device: Some(DEVICE.into()),
        })
    }

    fn ensure_local(&mut self, nl: &mut Netlink, own: &Lease) -> Result<(), BackendError> {
        let subnet = own
            .key
            .v4
            .ok_or_else(|| BackendError::Invalid("wireguard needs an IPv4 lease".into()))?;
        let mtu = self.mtu;
        let userspace = self.engine()?.name() == "userspace";
        let index = self.engine()?.ensure(nl, Some(subnet.network()))?;
        super::own_address_up(nl, DEVICE, index, subnet.into(), Some(mtu))?;
        if userspace {
            // Our ICMP errors come out of the device from this node's own address.
            sysctl::set_conf(DEVICE, "accept_local", "1")?;
        }
        nl.replace_route(&network_route(self.network, index))?;
        self.index = Some(index);
        Ok(())
    }

    fn plan_peer(&mut self, _nl: &mut Netlink, peer: &Lease) -> PeerPlan {
        let path = match PeerSpec::of(peer, self.opts.listen_port) {
            Ok(_) => PeerPath::Tunnel,
            Err(why) => PeerPath::Skipped(why),
        };
        PeerPlan {
            path,
            objects: PeerObjects::default(),
        }
    }

    fn peer_up(&mut self, peer: &Lease) {
        let port = self.opts.listen_port;
        if let (Ok(spec), Ok(e)) = (PeerSpec::of(peer, port), self.engine()) {
            e.put(spec);
        }
    }

    fn peer_down(&mut self, key: &SubnetKey) {
        if let Ok(e) = self.engine() {
            e.remove(key);
        }
    }

    fn peers_reset(&mut self, peers: &[&Lease]) {
        let port = self.opts.listen_port;
        let specs = peers
            .iter()
            .filter_map(|l| PeerSpec::of(l, port).ok())
            .collect();
        if let Ok(e) = self.engine() {
            e.reset(specs);
        }
    }

    fn owned_links(&self) -> Vec<u32> {
        Vec::new()
    }

    fn device_names(&self) -> Vec<String> {
        vec![DEVICE.into()]
    }

    fn devices(&self) -> Vec<u32> {
        self.index.into_iter().collect()
    }

    fn device_ok(&mut self, nl: &mut Netlink) -> Result<bool, BackendError> {
        let Some(l) = nl.link(DEVICE)? else {
            return Ok(false);
        };
        Ok(Some(l.index) == self.index && l.up && l.mtu == self.mtu)
    }

    fn tunnel_report(&mut self) -> Option<super::TunnelReport> {
        let engine = self.engine.as_mut()?;
        Some(super::TunnelReport {
            engine: engine.name(),
            peers: engine.stats(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Keepalive, LeaseAttrs};
    use serde_json::value::RawValue;

    #[test]
    fn a_lease_makes_a_peer_or_says_why_not() {
        let mut l = Lease {
            key: SubnetKey::parse("10.244.2.0-24").unwrap(),
            attrs: LeaseAttrs {
                public_ip: "198.18.0.12".parse().unwrap(),
                public_ipv6: None,
                backend_type: "wireguard".into(),
                backend_data: Some(
                    RawValue::from_string(
                        r#"{"PublicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","Port":51820}"#
                            .into(),
                    )
                    .unwrap(),
                ),
                backend_v6_data: None,
            },
            keepalive: Keepalive::Etcd(1),
            revision: 1,
            created: 1,
        };
        let spec = PeerSpec::of(&l, 51900).unwrap();
        assert_eq!(spec.endpoint.to_string(), "198.18.0.12:51820");
        assert_eq!(spec.subnet.to_string(), "10.244.2.0/24");
        // flanneld's lease names no port: the peer is dialled on our ListenPort.
        l.attrs.backend_data = Some(
            RawValue::from_string(
                r#"{"PublicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="}"#.into(),
            )
            .unwrap(),
        );
        let spec = PeerSpec::of(&l, 51900).unwrap();
        assert_eq!(spec.endpoint.to_string(), "198.18.0.12:51900");
        l.attrs.backend_type = "vxlan".into();
        assert_eq!(
            PeerSpec::of(&l, 51900).unwrap_err(),
            "not a wireguard lease"
        );
    }

    #[test]
    fn the_network_route_is_flannels_scope_link_route_into_the_device() {
        let r = network_route("10.244.0.0/16".parse().unwrap(), 7);
        assert_eq!(r.dst.to_string(), "10.244.0.0/16");
        assert_eq!((r.scope, r.oif, r.gateway), (SCOPE_LINK, Some(7), None));
        assert_eq!(r.protocol, RTPROT_BOOT);
    }
}

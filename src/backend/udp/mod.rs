//! udp: a userspace tunnel, wire-compatible with flannel's udp backend, for where the kernel has
//! no VXLAN.
//!
//! Kernel objects: TUN `flannel0` (persistent, multi-queue, with virtio-net offloads where the
//! kernel has them), address `<lease IP>/32`, MTU = underlay MTU − 28, and one route for the
//! whole cluster network `dev flannel0` (protocol boot, as flannel adds it; this node's own
//! subnet has the more specific route via the pod bridge). Nothing per peer in the kernel: the
//! peers live in a table in this process, updated as leases come and go.
//!
//! Wire format, flannel's: a UDP datagram from `<our address>:<Port>` to `<peer public
//! IP>:<Port>` whose payload is the inner IPv4 packet and nothing else. Every node uses the same
//! port (a lease carries none); flannel writes no `BackendType` for udp, so neither do we, and
//! leases with none or `udp` are accepted. The TTL is decremented on the way in and on the way
//! out, as flannel does, so a loop dies. A packet for a subnet nobody leases gets ICMP
//! "destination net unreachable" back through the device (rate-limited; never in answer to an
//! ICMP error or a later fragment, per RFC 1122 — flannel answers no ICMP at all).
//!
//! Workers: one per TUN queue (at most 4, never more than the CPUs), each with its own socket
//! on the shared port; see `worker`. A deleted device stops them; the kernel's notification
//! (the reconciler listens) has the device, its address and route recreated at once and the
//! workers restarted. Its address or its route deleted, or the device taken down, are put back
//! the same way (`device_ok`, `ensure_local`).
//! While podnetd is stopped the persistent device keeps its route and drops what it is sent.

pub mod packet;
pub(crate) mod peers;
mod worker;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use ipnet::{IpNet, Ipv4Net};

use super::{
    Backend, BackendError, ExternalInterface, PeerObjects, PeerPath, PeerPlan, Registration,
};
use crate::config::UdpOptions;
use crate::kernel::netlink::{Netlink, RTPROT_BOOT, Route};
use crate::kernel::sysctl;
use crate::kernel::tun::{self, TunSpec};
use crate::kernel::udp::UdpPort;
use crate::lease::{Lease, SubnetKey};
pub use peers::PeerTable;
pub use worker::Stats;

/// flannel names its device `flannel%d`; the first is `flannel0`.
use crate::owned::UDP_DEVICE as DEVICE;
/// Outer IPv4 header (20) + UDP header (8).
pub const OVERHEAD: u32 = 28;
const MAX_WORKERS: usize = 4;

/// A userspace data path's device and threads (the udp backend's, WireGuard's userspace
/// engine's): `stop` tells the threads to end, `dead` is set by one that failed.
pub(crate) struct Running {
    pub index: u32,
    pub stop: Arc<AtomicBool>,
    pub dead: Arc<AtomicBool>,
    pub threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Tells every thread to stop and waits for them.
    pub fn end(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub struct Udp {
    opts: UdpOptions,
    bind: Ipv4Addr,
    network: Ipv4Net,
    mtu: u32,
    workers: usize,
    peers: Arc<RwLock<PeerTable>>,
    local: Arc<AtomicU32>,
    stats: Arc<Stats>,
    running: Option<Running>,
}

impl Udp {
    pub fn new(
        opts: UdpOptions,
        network: Ipv4Net,
        ext: ExternalInterface,
        stats: Arc<Stats>,
    ) -> Result<Udp, BackendError> {
        let bind = ext.iface_addr.ok_or_else(|| {
            BackendError::Invalid(format!(
                "udp needs an IPv4 address on {} to listen on",
                ext.name
            ))
        })?;
        let mtu = ext
            .mtu
            .checked_sub(OVERHEAD)
            .filter(|m| *m >= 576)
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "{} has MTU {}: too small to carry pod packets over UDP",
                    ext.name, ext.mtu
                ))
            })?;
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(MAX_WORKERS);
        Ok(Udp {
            opts,
            bind,
            network,
            mtu,
            workers,
            peers: Arc::new(RwLock::new(PeerTable::default())),
            local: Arc::new(AtomicU32::new(0)),
            stats,
            running: None,
        })
    }

    fn open_device(&self, nl: &mut Netlink) -> Result<Vec<tun::TunQueue>, BackendError> {
        let spec = TunSpec {
            name: DEVICE,
            queues: self.workers,
            offload: true,
        };
        Ok(tun::open_replacing(nl, &spec)?)
    }

    fn start(&mut self, nl: &mut Netlink) -> Result<(), BackendError> {
        self.stop();
        let queues = self.open_device(nl)?;
        let addr = SocketAddrV4::new(self.bind, self.opts.port);
        let mut ports = Vec::with_capacity(queues.len());
        for _ in &queues {
            ports.push(UdpPort::bind_shared(addr)?);
        }
        let index = nl.require_link(DEVICE)?.index;
        let offload = queues.first().is_some_and(|q| q.offload());
        let stop = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, (tun, udp)) in queues.into_iter().zip(ports).enumerate() {
            let spec = worker::WorkerSpec {
                tun,
                udp,
                peers: self.peers.clone(),
                local: self.local.clone(),
                mtu: self.mtu as usize,
                stop: stop.clone(),
                dead: dead.clone(),
                stats: self.stats.clone(),
            };
            let t = std::thread::Builder::new()
                .name(format!("udp-{i}"))
                .spawn(move || worker::run(spec))
                .map_err(|e| BackendError::Invalid(format!("start a udp worker: {e}")))?;
            threads.push(t);
        }
        tracing::info!(
            device = DEVICE,
            listen = %addr,
            workers = threads.len(),
            offload,
            mtu = self.mtu,
            "udp data path running"
        );
        self.running = Some(Running {
            index,
            stop,
            dead,
            threads,
        });
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.end();
        }
    }
}

impl Drop for Udp {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Backend for Udp {
    fn type_name(&self) -> &'static str {
        "udp"
    }

    fn accepts(&self, lease: &Lease) -> bool {
        matches!(lease.attrs.backend_type.as_str(), "" | "udp")
    }

    fn prepare(&mut self, nl: &mut Netlink) -> Result<Registration, BackendError> {
        // Device and sockets now, so that a port in use fails before a lease is taken.
        self.start(nl)?;
        Ok(Registration {
            backend_type: "",
            backend_data: None,
            backend_v6_data: None,
            mtu: self.mtu,
            overhead: OVERHEAD,
            tunnel_port: Some(self.opts.port),
            tunnel_device: Some(DEVICE.into()),
        })
    }

    fn ensure_local(&mut self, nl: &mut Netlink, own: &Lease) -> Result<(), BackendError> {
        let subnet = own
            .key
            .v4
            .ok_or_else(|| BackendError::Invalid("udp needs an IPv4 lease".into()))?;
        let link = nl.link(DEVICE)?;
        let healthy = match (&self.running, &link) {
            (Some(r), Some(l)) => r.index == l.index && !r.dead.load(Ordering::Relaxed),
            _ => false,
        };
        if !healthy {
            if self.running.is_some() {
                tracing::warn!(device = DEVICE, "TUN device gone; recreating it");
            }
            self.start(nl)?;
        }
        let index = self.running.as_ref().expect("started above").index;
        self.local
            .store(u32::from(subnet.network()), Ordering::Relaxed);
        super::own_address_up(nl, DEVICE, index, subnet.into(), Some(self.mtu))?;
        // Our ICMP errors come out of the device from this node's own address, and the kernel
        // drops a packet that arrives with a local source address as a martian unless told not to.
        sysctl::set_conf(DEVICE, "accept_local", "1")?;
        let mut r = Route::unicast(IpNet::V4(self.network), RTPROT_BOOT);
        r.oif = Some(index);
        nl.replace_route(&r)?;
        Ok(())
    }

    fn plan_peer(&mut self, _nl: &mut Netlink, peer: &Lease) -> PeerPlan {
        let path = if peer.key.v4.is_some() {
            PeerPath::Tunnel
        } else {
            PeerPath::Skipped("lease has no IPv4 subnet".into())
        };
        PeerPlan {
            path,
            objects: PeerObjects::default(),
        }
    }

    fn peer_up(&mut self, peer: &Lease) {
        if let Some(subnet) = peer.key.v4 {
            let to = SocketAddrV4::new(peer.attrs.public_ip, self.opts.port);
            self.peers
                .write()
                .expect("peer table lock")
                .insert(subnet, to);
        }
    }

    fn peer_down(&mut self, key: &SubnetKey) {
        if let Some(subnet) = key.v4 {
            self.peers.write().expect("peer table lock").remove(subnet);
        }
    }

    fn peers_reset(&mut self, peers: &[&Lease]) {
        let mut t: PeerTable = PeerTable::default();
        for p in peers {
            if let Some(subnet) = p.key.v4 {
                t.insert(subnet, SocketAddrV4::new(p.attrs.public_ip, self.opts.port));
            }
        }
        // One swap: packets in flight never see a half-built table.
        *self.peers.write().expect("peer table lock") = t;
    }

    fn owned_links(&self) -> Vec<u32> {
        Vec::new()
    }

    fn device_names(&self) -> Vec<String> {
        vec![DEVICE.into()]
    }

    fn devices(&self) -> Vec<u32> {
        self.running.iter().map(|r| r.index).collect()
    }

    fn device_ok(&mut self, nl: &mut Netlink) -> Result<bool, BackendError> {
        let Some(l) = nl.link(DEVICE)? else {
            return Ok(false);
        };
        Ok(self.running.as_ref().is_some_and(|r| {
            r.index == l.index && !r.dead.load(Ordering::Relaxed) && l.up && l.mtu == self.mtu
        }))
    }
}

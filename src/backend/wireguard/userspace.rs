//! The userspace engine: WireGuard in podnetd, on a TUN device, for kernels without the module.
//!
//! The device is the udp backend's kind: persistent, multi-queue, with virtio-net offloads. One
//! worker per queue (at most 4, never more than the CPUs), each with its own socket on the
//! listen port (SO_REUSEPORT), and one timer thread that drives every tunnel's timers (rekey,
//! keepalives, retransmitted initiations) every 100 ms and sends the handshakes new peers are
//! due. A deleted device stops the workers; the next pass recreates it and restarts them.
//!
//! Restarts: the sessions live in this process, so a restarted podnetd has none. The TUN device
//! and its route stay while podnetd is stopped (pod packets to other nodes are dropped, never
//! sent in clear); at start every peer is sent a handshake initiation, and a data message for a
//! session we no longer have triggers one too, so established pod connections see one round
//! trip of loss (TCP retransmits) rather than a reset.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::PublicKey;

use super::key::KeyPair;
use super::tunnels::{Factory, PeerStats, Tunnels};
use super::worker::{self, Identity, WorkerSpec};
use super::{DEVICE, Engine, PeerSpec};
use crate::backend::BackendError;
use crate::backend::udp::{Running, Stats};
use crate::kernel::netlink::Netlink;
use crate::kernel::tun::{self, TunSpec};
use crate::kernel::udp::UdpPort;
use crate::lease::SubnetKey;

const MAX_WORKERS: usize = 4;
const TICK: Duration = Duration::from_millis(100);
/// Handshake messages per second before the limiter asks for cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;

pub struct Userspace {
    bind: Ipv4Addr,
    port: u16,
    mtu: u32,
    workers: usize,
    factory: Factory,
    identity: Arc<Identity>,
    tunnels: Arc<RwLock<Tunnels>>,
    local: Arc<AtomicU32>,
    stats: Arc<Stats>,
    running: Option<Running>,
}

impl Userspace {
    pub fn new(
        bind: Ipv4Addr,
        port: u16,
        mtu: u32,
        keys: &KeyPair,
        psk: Option<[u8; 32]>,
        keepalive: u16,
        stats: Arc<Stats>,
    ) -> Userspace {
        let public = PublicKey::from(keys.public);
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(MAX_WORKERS);
        Userspace {
            bind,
            port,
            mtu,
            workers,
            factory: Factory::new(keys.private, psk, keepalive),
            identity: Arc::new(Identity {
                secret: keys.secret(),
                public,
                limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            }),
            tunnels: Arc::new(RwLock::new(Tunnels::default())),
            local: Arc::new(AtomicU32::new(0)),
            stats,
            running: None,
        }
    }

    fn tunnels(&self) -> std::sync::RwLockWriteGuard<'_, Tunnels> {
        self.tunnels.write().unwrap_or_else(|e| e.into_inner())
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
        let addr = SocketAddrV4::new(self.bind, self.port);
        let mut ports = Vec::with_capacity(queues.len());
        for _ in &queues {
            ports.push(Arc::new(UdpPort::bind_shared(addr)?));
        }
        let index = nl.require_link(DEVICE)?.index;
        let offload = queues.first().is_some_and(|q| q.offload());
        let stop = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let timer_port = ports[0].clone();
        for (i, (tun, udp)) in queues.into_iter().zip(ports).enumerate() {
            let spec = WorkerSpec {
                tun,
                udp,
                tunnels: self.tunnels.clone(),
                identity: self.identity.clone(),
                local: self.local.clone(),
                mtu: self.mtu as usize,
                stop: stop.clone(),
                dead: dead.clone(),
                stats: self.stats.clone(),
            };
            threads.push(spawn(format!("wg-{i}"), move || worker::run(spec))?);
        }
        let (tunnels, identity, stop2) =
            (self.tunnels.clone(), self.identity.clone(), stop.clone());
        threads.push(spawn("wg-timers".into(), move || {
            timers(&tunnels, &identity, &timer_port, &stop2)
        })?);
        // Every peer gets a fresh handshake from the new threads.
        for p in self.tunnels().peers() {
            p.kick.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            device = DEVICE,
            listen = %addr,
            workers = threads.len() - 1,
            offload,
            mtu = self.mtu,
            "wireguard userspace data path running"
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

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, BackendError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| BackendError::Invalid(format!("start thread {name}: {e}")))
}

/// Drives every tunnel's timers and sends the handshakes that are due.
fn timers(tunnels: &RwLock<Tunnels>, identity: &Identity, port: &UdpPort, stop: &AtomicBool) {
    let mut buf = vec![0u8; 2048];
    let mut second = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if second.elapsed() >= Duration::from_secs(1) {
            identity.limiter.reset_count();
            second = Instant::now();
        }
        let t = tunnels.read().unwrap_or_else(|e| e.into_inner());
        for p in t.peers() {
            let mut tunn = p.tunn();
            if p.kick.swap(false, Ordering::Relaxed)
                && let TunnResult::WriteToNetwork(m) =
                    tunn.format_handshake_initiation(&mut buf, false)
            {
                let _ = port.send(p.spec.endpoint, m, None);
            }
            if let TunnResult::WriteToNetwork(m) = tunn.update_timers(&mut buf) {
                let _ = port.send(p.spec.endpoint, m, None);
            }
        }
    }
}

impl Drop for Userspace {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Engine for Userspace {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn ensure(&mut self, nl: &mut Netlink, own: Option<Ipv4Addr>) -> Result<u32, BackendError> {
        if let Some(a) = own {
            self.local.store(u32::from(a), Ordering::Relaxed);
        }
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
        Ok(self.running.as_ref().expect("started above").index)
    }

    fn put(&mut self, spec: PeerSpec) {
        let mut t = self.tunnels.write().unwrap_or_else(|e| e.into_inner());
        let p = self.factory.reuse_or_new(t.lease(&spec.lease), spec);
        t.insert(p);
    }

    fn remove(&mut self, lease: &SubnetKey) {
        self.tunnels().remove(lease);
    }

    fn reset(&mut self, peers: Vec<PeerSpec>) {
        let mut t = self.tunnels.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Tunnels::default();
        for spec in peers {
            next.insert(self.factory.reuse_or_new(t.lease(&spec.lease), spec));
        }
        // One swap: packets in flight never see a half-built table.
        *t = next;
    }

    fn stats(&mut self) -> Vec<PeerStats> {
        let t = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        t.peers().map(|p| p.stats()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: &str) -> PeerSpec {
        PeerSpec {
            lease: SubnetKey::parse("10.244.2.0-24").unwrap(),
            subnet: "10.244.2.0/24".parse().unwrap(),
            public_key: [9; 32],
            endpoint: endpoint.parse().unwrap(),
        }
    }

    #[test]
    fn a_peer_whose_endpoint_changes_gets_a_new_tunnel_and_an_unchanged_one_keeps_its_own() {
        let keys = KeyPair::from_private([1; 32]);
        let mut e = Userspace::new(
            Ipv4Addr::new(198, 18, 0, 11),
            51820,
            1420,
            &keys,
            None,
            0,
            Arc::new(Stats::default()),
        );
        let lease = spec("198.18.0.12:51820").lease;
        let tunnel = |e: &Userspace| e.tunnels.read().unwrap().lease(&lease).unwrap().clone();
        e.put(spec("198.18.0.12:51820"));
        let first = tunnel(&e);
        // The same lease again (a renewal, a full pass): the tunnel and its sessions stay.
        e.put(spec("198.18.0.12:51820"));
        e.reset(vec![spec("198.18.0.12:51820")]);
        assert!(Arc::ptr_eq(&tunnel(&e), &first));
        // The peer moved: a new tunnel towards the new endpoint, in both update paths.
        e.put(spec("198.18.128.12:51820"));
        let moved = tunnel(&e);
        assert!(!Arc::ptr_eq(&moved, &first));
        assert_eq!(moved.spec.endpoint.to_string(), "198.18.128.12:51820");
        e.reset(vec![spec("198.18.128.12:51900")]);
        let again = tunnel(&e);
        assert!(!Arc::ptr_eq(&again, &moved));
        let stats = e.stats();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].endpoint.to_string(), "198.18.128.12:51900");
    }
}

//! The userspace engine's peers: one WireGuard tunnel (boringtun's `Tunn`, the Noise state
//! machine) per peer, and the tables that find it — by destination subnet for packets from the
//! TUN device, by session index for data from the network, by public key for a handshake
//! initiation, by address for a message that names no session we have.
//!
//! Counting handshakes: a session counts once confirmed — as initiator when the peer's response
//! authenticates, as responder when the first data (or keepalive) arrives on it. Failures are
//! counted and described (`Failure`): a response that does not authenticate (the pre-shared
//! keys differ, or the peer knows us by another key), an initiation we cannot decrypt (the peer
//! has an old public key of ours), and a peer that keeps re-initiating without ever using our
//! answers (it cannot authenticate them). A failure more recent than the last confirmed
//! handshake is the peer's `problem`, shown in status and logged.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;

use super::PeerSpec;
use crate::backend::udp::PeerTable;
use crate::lease::SubnetKey;

/// Why a handshake with a peer failed, as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ResponseRejected,
    InitiationUndecryptable,
    AnswersUnused,
}

impl Failure {
    pub fn describe(self) -> &'static str {
        match self {
            Failure::ResponseRejected => {
                "the peer's handshake response does not authenticate: the pre-shared keys (PSK) differ, or the peer knows this node by another public key"
            }
            Failure::InitiationUndecryptable => {
                "the peer's handshake initiation is not for this node's key: it has an old public key of ours (it follows the lease within a resync period)"
            }
            Failure::AnswersUnused => {
                "the peer keeps starting handshakes and never uses our answers: it cannot authenticate them (the pre-shared keys (PSK) differ?)"
            }
        }
    }
}

/// One peer's counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub handshakes: AtomicU64,
    pub failures: AtomicU64,
    /// Initiations answered since data last arrived.
    answered_unused: AtomicU32,
    /// The session data last arrived on.
    rx_session: AtomicU32,
    /// Sessions already counted (the last few).
    counted: Mutex<[u32; 4]>,
    last_confirmed: Mutex<Option<Instant>>,
    last_failure: Mutex<Option<(Instant, Failure)>>,
    /// When a failure was last logged (they come every few seconds while it lasts).
    last_logged: Mutex<Option<Instant>>,
}

/// A peer and its tunnel.
pub struct Peer {
    pub spec: PeerSpec,
    /// This peer's 24-bit index: session indices are `index << 8 | n`.
    pub index: u32,
    pub tunn: Mutex<Tunn>,
    pub counters: Counters,
    /// Start a handshake at the next timer tick (a new peer: its tunnel is up before the first
    /// packet needs it, and a key or PSK mismatch shows at once).
    pub kick: AtomicBool,
}

/// What one peer's tunnel reports.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub lease: SubnetKey,
    pub public_key: [u8; 32],
    pub endpoint: SocketAddrV4,
    pub handshakes: u64,
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub failures: u64,
    pub problem: Option<String>,
}

impl Peer {
    pub fn new(spec: PeerSpec, index: u32, tunn: Tunn) -> Peer {
        Peer {
            spec,
            index,
            tunn: Mutex::new(tunn),
            counters: Counters::default(),
            kick: AtomicBool::new(true),
        }
    }

    /// The tunnel, even if a thread panicked holding it (podnetd exits then anyway).
    pub fn tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn confirm(&self, session: u32) {
        let c = &self.counters;
        let mut counted = c.counted.lock().unwrap_or_else(|e| e.into_inner());
        if counted.contains(&session) {
            return;
        }
        counted.rotate_right(1);
        counted[0] = session;
        c.handshakes.fetch_add(1, Ordering::Relaxed);
        *c.last_confirmed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Our response to its initiation authenticated: a session as initiator.
    pub fn response_accepted(&self, our_session: u32) {
        self.confirm(our_session);
    }

    /// Data (or a keepalive) arrived on `session`.
    pub fn data_received(&self, session: u32) {
        let c = &self.counters;
        if c.rx_session.swap(session, Ordering::Relaxed) != session {
            c.answered_unused.store(0, Ordering::Relaxed);
            self.confirm(session);
        }
    }

    /// We answered one of its initiations.
    pub fn initiation_answered(&self) {
        let n = self
            .counters
            .answered_unused
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        // One unused answer is a handshake in flight; three in a row are a pattern.
        if n >= 3 {
            self.failed(Failure::AnswersUnused);
        }
    }

    /// A handshake failed; returns true when it should be logged (once a minute at most).
    pub fn failed(&self, why: Failure) -> bool {
        let c = &self.counters;
        c.failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        *c.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, why));
        let mut logged = c.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
            *logged = Some(now);
            return true;
        }
        false
    }

    /// A failure since the last confirmed handshake, described.
    pub fn problem(&self) -> Option<String> {
        let c = &self.counters;
        let (when, why) = (*c.last_failure.lock().unwrap_or_else(|e| e.into_inner()))?;
        let confirmed = *c.last_confirmed.lock().unwrap_or_else(|e| e.into_inner());
        if confirmed.is_some_and(|t| t > when) {
            return None;
        }
        Some(why.describe().to_string())
    }

    pub fn stats(&self) -> PeerStats {
        let (last, tx, rx, _, _) = self.tunn().stats();
        let c = &self.counters;
        PeerStats {
            lease: self.spec.lease,
            public_key: self.spec.public_key,
            endpoint: self.spec.endpoint,
            handshakes: c.handshakes.load(Ordering::Relaxed),
            last_handshake: last,
            rx_bytes: rx as u64,
            tx_bytes: tx as u64,
            failures: c.failures.load(Ordering::Relaxed),
            problem: self.problem(),
        }
    }
}

/// Every peer, found four ways. Replaced whole by a full pass, edited in place by single lease
/// events; a peer whose key, endpoint and subnet stay the same keeps its tunnel (and sessions).
#[derive(Default)]
pub struct Tunnels {
    routes: PeerTable<Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    by_addr: HashMap<Ipv4Addr, Arc<Peer>>,
    by_lease: HashMap<SubnetKey, Arc<Peer>>,
}

impl Tunnels {
    /// The peer whose subnet holds `dst`.
    pub fn route(&self, dst: Ipv4Addr) -> Option<&Arc<Peer>> {
        self.routes.get(dst)
    }

    /// The peer a session index (a data message's receiver) belongs to.
    pub fn session(&self, receiver: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&(receiver >> 8))
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    /// The peer whose endpoint is at this address.
    pub fn by_addr(&self, ip: Ipv4Addr) -> Option<&Arc<Peer>> {
        self.by_addr.get(&ip)
    }

    pub fn lease(&self, key: &SubnetKey) -> Option<&Arc<Peer>> {
        self.by_lease.get(key)
    }

    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_lease.values()
    }

    pub fn len(&self) -> usize {
        self.by_lease.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_lease.is_empty()
    }

    pub fn insert(&mut self, p: Arc<Peer>) {
        self.remove(&p.spec.lease);
        self.routes.insert(p.spec.subnet, p.clone());
        self.by_index.insert(p.index, p.clone());
        self.by_key.insert(p.spec.public_key, p.clone());
        self.by_addr.insert(*p.spec.endpoint.ip(), p.clone());
        self.by_lease.insert(p.spec.lease, p);
    }

    pub fn remove(&mut self, lease: &SubnetKey) -> Option<Arc<Peer>> {
        let p = self.by_lease.remove(lease)?;
        let same = |q: &Arc<Peer>| Arc::ptr_eq(q, &p);
        self.routes.remove(p.spec.subnet);
        if self.by_index.get(&p.index).is_some_and(same) {
            self.by_index.remove(&p.index);
        }
        if self.by_key.get(&p.spec.public_key).is_some_and(same) {
            self.by_key.remove(&p.spec.public_key);
        }
        if self.by_addr.get(p.spec.endpoint.ip()).is_some_and(same) {
            self.by_addr.remove(p.spec.endpoint.ip());
        }
        Some(p)
    }
}

/// Makes tunnels: knows our key, the PSK and keepalive, and hands out peer indices.
pub struct Factory {
    pub secret: boringtun::x25519::StaticSecret,
    pub psk: Option<[u8; 32]>,
    pub keepalive: u16,
    next_index: u32,
}

impl Factory {
    pub fn new(private: [u8; 32], psk: Option<[u8; 32]>, keepalive: u16) -> Factory {
        let mut start = [0u8; 4];
        rand::fill(&mut start);
        Factory {
            secret: boringtun::x25519::StaticSecret::from(private),
            psk,
            keepalive,
            next_index: u32::from_le_bytes(start) & 0x00ff_ffff,
        }
    }

    fn index(&mut self) -> u32 {
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        self.next_index
    }

    pub fn peer(&mut self, spec: PeerSpec) -> Arc<Peer> {
        let index = self.index();
        let tunn = Tunn::new(
            self.secret.clone(),
            boringtun::x25519::PublicKey::from(spec.public_key),
            self.psk,
            (self.keepalive > 0).then_some(self.keepalive),
            index,
            None,
        );
        Arc::new(Peer::new(spec, index, tunn))
    }

    /// The peer for `spec`: the existing one when nothing that matters changed.
    pub fn reuse_or_new(&mut self, old: Option<&Arc<Peer>>, spec: PeerSpec) -> Arc<Peer> {
        match old {
            Some(p) if p.spec == spec => p.clone(),
            _ => self.peer(spec),
        }
    }
}

/// Whether `src` may appear as the source of a packet from `peer` (its allowed IPs: its subnet).
pub fn allowed(peer: &Peer, src: Ipv4Addr) -> bool {
    peer.spec.subnet.contains(&src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::TunnResult;

    fn spec(i: u8, key: [u8; 32]) -> PeerSpec {
        PeerSpec {
            lease: SubnetKey::parse(&format!("10.244.{i}.0-24")).unwrap(),
            subnet: format!("10.244.{i}.0/24").parse().unwrap(),
            public_key: key,
            endpoint: SocketAddrV4::new([198, 18, 0, i].into(), 51820),
        }
    }

    fn public(private: [u8; 32]) -> [u8; 32] {
        super::super::key::KeyPair::from_private(private).public
    }

    /// Sends what `from` writes to the network into `to` until both are quiet; returns what
    /// came out towards the tunnel devices.
    fn exchange(a: &Peer, b: &Peer, first: Vec<u8>) -> Vec<Vec<u8>> {
        let mut delivered = Vec::new();
        let mut wire = vec![(first, true)];
        let mut buf = vec![0u8; 2048];
        while let Some((msg, to_b)) = wire.pop() {
            let (dst, other) = if to_b { (b, a) } else { (a, b) };
            let _ = other;
            let mut t = dst.tunn();
            let mut r = t.decapsulate(None, &msg, &mut buf);
            loop {
                match r {
                    TunnResult::WriteToNetwork(out) => {
                        wire.push((out.to_vec(), !to_b));
                        r = t.decapsulate(None, &[], &mut buf);
                    }
                    TunnResult::WriteToTunnelV4(p, _) => {
                        delivered.push(p.to_vec());
                        break;
                    }
                    _ => break,
                }
            }
        }
        delivered
    }

    #[test]
    fn two_tunnels_handshake_and_carry_a_packet_and_a_psk_mismatch_fails() {
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let mut fa = Factory::new(ka, None, 0);
        let mut fb = Factory::new(kb, None, 0);
        let a_to_b = fa.peer(spec(2, public(kb)));
        let b_to_a = fb.peer(spec(1, public(ka)));
        let mut pkt = vec![0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
        pkt.extend_from_slice(&[10, 244, 1, 5, 10, 244, 2, 7]);
        let mut out = vec![0u8; 2048];
        let init = match a_to_b.tunn().encapsulate(&pkt, &mut out) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(init[0], 1, "a handshake initiation first; the packet waits");
        let delivered = exchange(&a_to_b, &b_to_a, init);
        assert_eq!(delivered, vec![pkt.clone()], "the queued packet arrives");
        assert!(allowed(&b_to_a, Ipv4Addr::new(10, 244, 1, 5)));
        assert!(!allowed(&b_to_a, Ipv4Addr::new(10, 244, 3, 5)));

        // With different PSKs the initiator's check of the response fails.
        let mut fa = Factory::new(ka, Some([7; 32]), 0);
        let mut fb = Factory::new(kb, Some([8; 32]), 0);
        let a_to_b = fa.peer(spec(2, public(kb)));
        let b_to_a = fb.peer(spec(1, public(ka)));
        let init = match a_to_b.tunn().encapsulate(&pkt, &mut out) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        let resp = match b_to_a.tunn().decapsulate(None, &init, &mut out) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(resp[0], 2);
        assert!(matches!(
            a_to_b.tunn().decapsulate(None, &resp, &mut out),
            TunnResult::Err(_)
        ));
    }

    #[test]
    fn counting_and_problems() {
        let mut f = Factory::new([1; 32], None, 0);
        let p = f.peer(spec(2, [9; 32]));
        assert_eq!(p.problem(), None);
        assert!(
            p.failed(Failure::ResponseRejected),
            "first failure is logged"
        );
        assert!(
            !p.failed(Failure::ResponseRejected),
            "the next within a minute is not"
        );
        assert!(p.problem().unwrap().contains("PSK"));
        p.data_received(0x100);
        p.data_received(0x100);
        assert_eq!(p.counters.handshakes.load(Ordering::Relaxed), 1);
        assert_eq!(p.problem(), None, "a handshake since clears it");
        p.response_accepted(0x201);
        p.data_received(0x201);
        assert_eq!(p.counters.handshakes.load(Ordering::Relaxed), 2);
        for _ in 0..3 {
            p.initiation_answered();
        }
        assert!(p.problem().unwrap().contains("never uses our answers"));
        assert_eq!(p.counters.failures.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn tables_find_peers_and_keep_unchanged_ones() {
        let mut f = Factory::new([1; 32], None, 0);
        let mut t = Tunnels::default();
        let a = f.peer(spec(2, [9; 32]));
        t.insert(a.clone());
        t.insert(f.peer(spec(3, [8; 32])));
        assert_eq!(t.len(), 2);
        let found = t.route(Ipv4Addr::new(10, 244, 2, 77)).unwrap();
        assert!(Arc::ptr_eq(found, &a));
        assert!(Arc::ptr_eq(t.session(a.index << 8 | 3).unwrap(), &a));
        assert!(Arc::ptr_eq(t.by_key(&[9; 32]).unwrap(), &a));
        assert!(Arc::ptr_eq(
            t.by_addr(Ipv4Addr::new(198, 18, 0, 2)).unwrap(),
            &a
        ));
        assert!(t.route(Ipv4Addr::new(10, 244, 4, 1)).is_none());
        // Same spec: same tunnel; a new key: a new one.
        assert!(Arc::ptr_eq(&f.reuse_or_new(Some(&a), a.spec.clone()), &a));
        let mut rotated = a.spec.clone();
        rotated.public_key = [7; 32];
        let b = f.reuse_or_new(Some(&a), rotated);
        assert!(!Arc::ptr_eq(&b, &a));
        t.insert(b.clone());
        assert!(t.by_key(&[9; 32]).is_none(), "the old key is gone");
        assert!(Arc::ptr_eq(t.by_key(&[7; 32]).unwrap(), &b));
        assert!(t.session(a.index << 8).is_none());
        t.remove(&b.spec.lease);
        assert_eq!(t.len(), 1);
        assert!(t.route(Ipv4Addr::new(10, 244, 2, 1)).is_none());
    }

    #[test]
    fn a_new_endpoint_makes_a_new_tunnel_there() {
        let mut f = Factory::new([1; 32], None, 0);
        let mut t = Tunnels::default();
        let a = f.peer(spec(2, [9; 32]));
        t.insert(a.clone());
        // The peer moved to another address (same key, same subnet): a fresh tunnel, whose
        // handshakes and data go to the new endpoint, and the old address no longer finds it.
        let mut moved = a.spec.clone();
        moved.endpoint = SocketAddrV4::new([198, 18, 128, 2].into(), 51820);
        let b = f.reuse_or_new(t.lease(&a.spec.lease), moved.clone());
        assert!(!Arc::ptr_eq(&b, &a), "a new tunnel");
        assert_ne!(b.index, a.index, "with a session index of its own");
        assert_eq!(b.spec.endpoint, moved.endpoint);
        t.insert(b.clone());
        assert_eq!(t.len(), 1);
        assert!(t.by_addr(Ipv4Addr::new(198, 18, 0, 2)).is_none());
        assert!(Arc::ptr_eq(
            t.by_addr(Ipv4Addr::new(198, 18, 128, 2)).unwrap(),
            &b
        ));
        assert!(
            t.session(a.index << 8).is_none(),
            "the old sessions are gone"
        );
        assert!(Arc::ptr_eq(t.by_key(&[9; 32]).unwrap(), &b));
        // Only the port changed (a lease rewritten with another Port): a new tunnel too.
        let mut port = moved;
        port.endpoint.set_port(51900);
        let c = f.reuse_or_new(t.lease(&b.spec.lease), port);
        assert!(!Arc::ptr_eq(&c, &b));
        assert_eq!(c.spec.endpoint.to_string(), "198.18.128.2:51900");
    }
}

//! The kernel engine: the kernel's WireGuard device, configured over generic netlink
//! (`crate::kernel::wireguard`). Nothing runs in podnetd's data path; sessions live in the
//! kernel, so a restarted podnetd with the same key changes nothing and drops no packet.
//!
//! Peers are reconciled, not appended: a full pass reads the device's peers back and removes
//! every one no lease asks for (flannel keeps them, k3s#5216), updates those whose endpoint,
//! allowed IPs, keepalive or PSK (by value) differ, and adds the missing. The same comparison
//! runs on every `ensure` once the first full pass has said which peers are wanted — that is
//! the reconciler's periodic check (`verify`, every resync period) and its repair of a deleted
//! device — so a device recreated empty gets its peers back, and peers removed or changed with
//! `wg` behind podnet's back are put back (the routes' digest cannot see peers). Before the
//! first full pass `ensure` leaves the peers alone: a restart must not drop sessions the
//! leases still want. Handshakes are counted as changes of a peer's last handshake time seen
//! between two reads (the kernel keeps no count).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::SystemTime;

use super::key::KeyPair;
use super::tunnels::PeerStats;
use super::{DEVICE, Engine, PeerSpec};
use crate::backend::BackendError;
use crate::kernel::KernelError;
use crate::kernel::netlink::{Netlink, NewLink, NewLinkKind};
use crate::kernel::wireguard::{self as wg, DeviceState, PeerConfig, PeerState, WgSocket};
use crate::lease::SubnetKey;
use netlink_packet_wireguard::WireguardMessage;

/// What the engine asks of the kernel's WireGuard: `WgSocket` (a fake in unit tests).
pub trait WgDevice: Send {
    fn get(&mut self, ifname: &str) -> Result<DeviceState, KernelError>;
    fn set(&mut self, msgs: Vec<WireguardMessage>) -> Result<(), KernelError>;
}

impl WgDevice for WgSocket {
    fn get(&mut self, ifname: &str) -> Result<DeviceState, KernelError> {
        WgSocket::get(self, ifname)
    }

    fn set(&mut self, msgs: Vec<WireguardMessage>) -> Result<(), KernelError> {
        WgSocket::set(self, msgs)
    }
}

pub struct KernelEngine {
    keys: KeyPair,
    port: u16,
    psk: Option<[u8; 32]>,
    keepalive: u16,
    sock: Option<Box<dyn WgDevice>>,
    /// What each lease asks for.
    wanted: BTreeMap<SubnetKey, PeerSpec>,
    /// A full pass has set `wanted` (`reset`): from then on the device's peers are kept equal
    /// to it on every `ensure`.
    synced: bool,
    /// Last handshake seen and handshakes counted, by public key.
    seen: HashMap<[u8; 32], (Option<SystemTime>, u64)>,
}

/// Whether this kernel makes WireGuard devices: creates and deletes a probe device.
pub fn available(nl: &mut Netlink) -> bool {
    const PROBE: &str = "podnet-wgprobe";
    let made = nl.add_link(&NewLink {
        name: PROBE,
        kind: NewLinkKind::Wireguard,
        mtu: None,
        mac: None,
        master: None,
        up: false,
    });
    match made {
        Ok(()) => {
            let _ = nl.del_link_named(PROBE);
            true
        }
        Err(e) => {
            tracing::debug!("no kernel WireGuard: {e}");
            false
        }
    }
}

impl KernelEngine {
    pub fn new(keys: &KeyPair, port: u16, psk: Option<[u8; 32]>, keepalive: u16) -> KernelEngine {
        KernelEngine {
            keys: keys.clone(),
            port,
            psk,
            keepalive,
            sock: None,
            wanted: BTreeMap::new(),
            synced: false,
            seen: HashMap::new(),
        }
    }

    fn config(&self, p: &PeerSpec) -> PeerConfig {
        PeerConfig {
            public_key: p.public_key,
            endpoint: p.endpoint,
            allowed: vec![p.subnet],
            psk: self.psk,
            keepalive: self.keepalive,
        }
    }

    fn sock(&mut self) -> Result<&mut Box<dyn WgDevice>, BackendError> {
        if self.sock.is_none() {
            self.sock = Some(Box::new(WgSocket::open()?));
        }
        Ok(self.sock.as_mut().expect("opened above"))
    }

    /// The device's key and port, then (after the first full pass) its peers.
    fn configure(&mut self) -> Result<(), BackendError> {
        let (private, port) = (self.keys.private, self.port);
        let state = self.sock()?.get(DEVICE)?;
        if state.public_key != Some(self.keys.public) || state.listen_port != port {
            self.sock()?
                .set(wg::set_device(DEVICE, Some(&private), Some(port), &[]))?;
        }
        if self.synced {
            self.converge(&state.peers, false);
        }
        Ok(())
    }

    /// Makes the device's peers (`have`) the wanted ones. `full_pass`: the leases were just
    /// listed (differences are expected); otherwise a difference means the device was
    /// recreated or its peers changed behind podnet's back, which is worth a warning.
    fn converge(&mut self, have: &[PeerState], full_pass: bool) {
        let want: Vec<PeerConfig> = self.wanted.values().map(|p| self.config(p)).collect();
        // Between full passes an endpoint is the kernel's: WireGuard follows a peer to wherever
        // its authenticated packets come from (NAT, a node sending from another address), and
        // putting the lease's address back every check would fight that. A lease's new
        // endpoint reaches the device through `peer_up`, and each full pass sets them all.
        let (stale, update) = plan(have, &want, full_pass);
        if stale.is_empty() && update.is_empty() {
            return;
        }
        if full_pass {
            tracing::info!(
                remove = stale.len(),
                set = update.len(),
                "reconciling the WireGuard peers with the leases (peers no lease asks for go)"
            );
        } else {
            tracing::warn!(
                device = DEVICE,
                remove = stale.len(),
                set = update.len(),
                "the device's WireGuard peers differ from the leases (device recreated, or peers \
                 changed behind podnet's back); putting them back"
            );
        }
        if !stale.is_empty() {
            self.apply("remove stale peers", wg::remove_peers(DEVICE, &stale));
        }
        if !update.is_empty() {
            self.apply("set peers", wg::set_device(DEVICE, None, None, &update));
        }
    }

    fn apply(&mut self, what: &str, msgs: Vec<WireguardMessage>) {
        let r = self
            .sock()
            .and_then(|s| s.set(msgs).map_err(BackendError::from));
        if let Err(e) = r {
            tracing::warn!("wireguard: {what}: {e}; the next check retries");
        }
    }
}

/// Whether the kernel's peer matches what we would configure (the PSK by value: after the
/// config's `PSK` changes, a restarted podnetd must replace the one the kernel kept; the
/// endpoint only if `endpoints`, see `converge`).
fn in_sync(have: &PeerState, want: &PeerConfig, endpoints: bool) -> bool {
    (!endpoints || have.endpoint == Some(std::net::SocketAddr::V4(want.endpoint)))
        && have.allowed == want.allowed
        && have.keepalive == want.keepalive
        && have.psk == want.psk
}

/// What turns the device's peers (`have`) into `want`: the keys to remove (peers no lease asks
/// for) and the peers to add or update, in key order; a peer elsewhere than its lease's
/// endpoint is updated only if `endpoints`.
pub fn plan(
    have: &[PeerState],
    want: &[PeerConfig],
    endpoints: bool,
) -> (Vec<[u8; 32]>, Vec<PeerConfig>) {
    let wanted: HashMap<[u8; 32], &PeerConfig> = want.iter().map(|w| (w.public_key, w)).collect();
    let mut stale: Vec<[u8; 32]> = have
        .iter()
        .filter(|h| !wanted.contains_key(&h.public_key))
        .map(|h| h.public_key)
        .collect();
    let had: HashMap<[u8; 32], &PeerState> = have.iter().map(|h| (h.public_key, h)).collect();
    let mut update: Vec<PeerConfig> = want
        .iter()
        .filter(|w| {
            had.get(&w.public_key)
                .is_none_or(|h| !in_sync(h, w, endpoints))
        })
        .cloned()
        .collect();
    stale.sort();
    update.sort_by_key(|p| p.public_key);
    (stale, update)
}

impl Engine for KernelEngine {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn ensure(&mut self, nl: &mut Netlink, _own: Option<Ipv4Addr>) -> Result<u32, BackendError> {
        let link = nl.link(DEVICE)?;
        if let Some(l) = &link
            && l.kind.as_deref() != Some("wireguard")
        {
            tracing::info!(device = DEVICE, kind = ?l.kind, "replacing a device of another kind");
            nl.del_link(l.index)?;
        }
        if link
            .as_ref()
            .is_none_or(|l| l.kind.as_deref() != Some("wireguard"))
        {
            nl.add_link(&NewLink {
                name: DEVICE,
                kind: NewLinkKind::Wireguard,
                mtu: None,
                mac: None,
                master: None,
                up: false,
            })?;
            tracing::info!(device = DEVICE, "created kernel WireGuard device");
        }
        let index = nl.require_link(DEVICE)?.index;
        self.configure()?;
        Ok(index)
    }

    fn put(&mut self, spec: PeerSpec) {
        let mut msgs = Vec::new();
        if let Some(old) = self.wanted.get(&spec.lease)
            && old.public_key != spec.public_key
        {
            msgs.extend(wg::remove_peers(DEVICE, &[old.public_key]));
        }
        msgs.extend(wg::set_device(DEVICE, None, None, &[self.config(&spec)]));
        self.wanted.insert(spec.lease, spec);
        self.apply("add a peer", msgs);
    }

    fn remove(&mut self, lease: &SubnetKey) {
        if let Some(old) = self.wanted.remove(lease) {
            self.apply("remove a peer", wg::remove_peers(DEVICE, &[old.public_key]));
        }
    }

    fn reset(&mut self, peers: Vec<PeerSpec>) {
        self.wanted = peers.into_iter().map(|p| (p.lease, p)).collect();
        self.synced = true;
        let have = match self
            .sock()
            .and_then(|s| s.get(DEVICE).map_err(BackendError::from))
        {
            Ok(d) => d.peers,
            Err(e) => {
                tracing::warn!("wireguard: read the device's peers: {e}");
                return;
            }
        };
        self.converge(&have, true);
    }

    fn stats(&mut self) -> Vec<PeerStats> {
        let have = match self
            .sock()
            .and_then(|s| s.get(DEVICE).map_err(BackendError::from))
        {
            Ok(d) => d.peers,
            Err(_) => return Vec::new(),
        };
        let by_key: HashMap<[u8; 32], &PeerSpec> =
            self.wanted.values().map(|p| (p.public_key, p)).collect();
        let now = SystemTime::now();
        let mut out = Vec::new();
        for h in have {
            let Some(spec) = by_key.get(&h.public_key) else {
                continue;
            };
            let seen = self.seen.entry(h.public_key).or_insert((None, 0));
            if h.last_handshake.is_some() && h.last_handshake != seen.0 {
                seen.1 += 1;
                seen.0 = h.last_handshake;
            }
            out.push(PeerStats {
                lease: spec.lease,
                public_key: h.public_key,
                endpoint: spec.endpoint,
                handshakes: seen.1,
                last_handshake: h.last_handshake.and_then(|t| now.duration_since(t).ok()),
                rx_bytes: h.rx_bytes,
                tx_bytes: h.tx_bytes,
                failures: 0,
                problem: None,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(k: u8, ip: u8) -> PeerConfig {
        PeerConfig {
            public_key: [k; 32],
            endpoint: std::net::SocketAddrV4::new([198, 18, 0, ip].into(), 51820),
            allowed: vec![format!("10.244.{k}.0/24").parse().unwrap()],
            psk: None,
            keepalive: 0,
        }
    }

    fn state(c: &PeerConfig) -> PeerState {
        PeerState {
            public_key: c.public_key,
            endpoint: Some(std::net::SocketAddr::V4(c.endpoint)),
            allowed: c.allowed.clone(),
            keepalive: c.keepalive,
            psk: c.psk,
            ..Default::default()
        }
    }

    #[test]
    fn a_full_pass_removes_stale_peers_fixes_changed_ones_and_adds_the_missing() {
        // After a restart the device still has peers 1 (unchanged), 2 (moved to another
        // address) and 9 (its lease is gone); 3 is new.
        let want = [config(1, 11), config(2, 22), config(3, 13)];
        let have = [
            state(&config(1, 11)),
            state(&config(2, 12)),
            state(&config(9, 19)),
        ];
        let (stale, update) = plan(&have, &want, true);
        assert_eq!(stale, vec![[9; 32]]);
        assert_eq!(update, vec![config(2, 22), config(3, 13)]);
        // In sync: nothing to send.
        let have: Vec<PeerState> = want.iter().map(state).collect();
        assert_eq!(plan(&have, &want, true), (vec![], vec![]));
        // A PSK configured since: every peer is rewritten.
        let with_psk: Vec<PeerConfig> = want
            .iter()
            .map(|c| PeerConfig {
                psk: Some([5; 32]),
                ..c.clone()
            })
            .collect();
        assert_eq!(plan(&have, &with_psk, true).1.len(), 3);
        // The PSK changed (config edited, podnetd restarted): the kernel still has the old
        // one, so every peer is rewritten with the new value; once it has it, nothing.
        let old_psk: Vec<PeerState> = with_psk
            .iter()
            .map(|c| PeerState {
                psk: Some([6; 32]),
                ..state(c)
            })
            .collect();
        assert_eq!(plan(&old_psk, &with_psk, true).1, with_psk.to_vec());
        let new_psk: Vec<PeerState> = with_psk.iter().map(state).collect();
        assert_eq!(plan(&new_psk, &with_psk, true), (vec![], vec![]));
        // A PSK removed from the config: cleared on the device.
        assert_eq!(plan(&new_psk, &want, true).1.len(), 3);
        // No leases: every peer goes.
        assert_eq!(plan(&have, &[], true).0.len(), 3);
    }

    /// The kernel's WireGuard device as far as the engine can tell: SET_DEVICE messages
    /// applied to a `DeviceState`, GET_DEVICE answered from it.
    #[derive(Clone, Default)]
    struct FakeDevice {
        state: std::sync::Arc<std::sync::Mutex<DeviceState>>,
        sets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl WgDevice for FakeDevice {
        fn get(&mut self, _: &str) -> Result<DeviceState, KernelError> {
            Ok(self.state.lock().unwrap().clone())
        }

        fn set(&mut self, msgs: Vec<WireguardMessage>) -> Result<(), KernelError> {
            use netlink_packet_wireguard::{
                WireguardAttribute as A, WireguardPeerAttribute as P, WireguardPeerFlags,
            };
            let mut d = self.state.lock().unwrap();
            for m in msgs {
                self.sets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for a in &m.attributes {
                    match a {
                        A::PrivateKey(k) => d.public_key = Some(KeyPair::from_private(*k).public),
                        A::ListenPort(p) => d.listen_port = *p,
                        A::Peers(list) => {
                            for p in list {
                                let one = WireguardMessage {
                                    attributes: vec![A::Peers(vec![p.clone()])],
                                    ..m.clone()
                                };
                                let parsed = wg::parse_device(&[one]).peers.remove(0);
                                d.peers.retain(|h| h.public_key != parsed.public_key);
                                if !p.0.contains(&P::Flags(WireguardPeerFlags::RemoveMe)) {
                                    d.peers.push(parsed);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
    }

    fn spec(k: u8) -> PeerSpec {
        let c = config(k, k + 10);
        PeerSpec {
            lease: SubnetKey::parse(&format!("10.244.{k}.0-24")).unwrap(),
            subnet: c.allowed[0],
            public_key: c.public_key,
            endpoint: c.endpoint,
        }
    }

    /// The device's peers as (key, endpoint, PSK), in key order.
    fn peers(f: &FakeDevice) -> Vec<([u8; 32], String, Option<[u8; 32]>)> {
        let mut p: Vec<_> = f
            .state
            .lock()
            .unwrap()
            .peers
            .iter()
            .map(|h| (h.public_key, h.endpoint.unwrap().to_string(), h.psk))
            .collect();
        p.sort();
        p
    }

    #[test]
    fn the_periodic_check_restores_a_recreated_device_and_peers_changed_behind_our_back() {
        let keys = KeyPair::from_private([3; 32]);
        let psk = Some([5; 32]);
        let mut e = KernelEngine::new(&keys, 51820, psk, 0);
        let fake = FakeDevice::default();
        e.sock = Some(Box::new(fake.clone()));
        // After a restart: the device has our key, and a peer from before (lease 1, still
        // wanted) and one whose lease is gone (9).
        {
            let mut d = fake.state.lock().unwrap();
            d.public_key = Some(keys.public);
            d.listen_port = 51820;
            for k in [1, 9] {
                d.peers.push(state(&PeerConfig {
                    psk,
                    ..config(k, k + 10)
                }));
            }
        }
        // Before the first full pass nothing is known to be unwanted: the peers stay.
        e.configure().unwrap();
        assert_eq!(peers(&fake).len(), 2);
        assert_eq!(fake.sets.load(std::sync::atomic::Ordering::Relaxed), 0);
        // The full pass: exactly the leases' peers.
        e.reset(vec![spec(1), spec(2)]);
        let wanted = vec![
            ([1; 32], "198.18.0.11:51820".to_string(), psk),
            ([2; 32], "198.18.0.12:51820".to_string(), psk),
        ];
        assert_eq!(peers(&fake), wanted);
        // In sync: the check sends nothing.
        let sent = fake.sets.load(std::sync::atomic::Ordering::Relaxed);
        e.configure().unwrap();
        assert_eq!(fake.sets.load(std::sync::atomic::Ordering::Relaxed), sent);
        // The device deleted and recreated (empty, no key): key, port and peers come back.
        *fake.state.lock().unwrap() = DeviceState::default();
        e.configure().unwrap();
        let d = fake.state.lock().unwrap().clone();
        assert_eq!((d.public_key, d.listen_port), (Some(keys.public), 51820));
        assert_eq!(peers(&fake), wanted);
        // `wg set flannel-wg peer … remove`, and another peer's PSK changed: the next check
        // puts both back.
        {
            let mut d = fake.state.lock().unwrap();
            d.peers.retain(|h| h.public_key != [2; 32]);
            d.peers[0].psk = Some([6; 32]);
        }
        e.configure().unwrap();
        assert_eq!(peers(&fake), wanted);
        // A peer that roamed (the kernel follows its authenticated packets): the check leaves
        // the endpoint alone and sends nothing; the next full pass sets the lease's again.
        fake.state.lock().unwrap().peers[0].endpoint = Some("198.18.0.99:51820".parse().unwrap());
        let sent = fake.sets.load(std::sync::atomic::Ordering::Relaxed);
        e.configure().unwrap();
        assert_eq!(fake.sets.load(std::sync::atomic::Ordering::Relaxed), sent);
        assert_eq!(peers(&fake)[0].1, "198.18.0.99:51820");
        e.reset(vec![spec(1), spec(2)]);
        assert_eq!(peers(&fake), wanted);
        // A peer added by hand goes too.
        fake.state.lock().unwrap().peers.push(state(&config(8, 18)));
        e.configure().unwrap();
        assert_eq!(peers(&fake), wanted);
    }
}

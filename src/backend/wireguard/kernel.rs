//! The kernel engine: the kernel's WireGuard device, configured over generic netlink
//! (`crate::kernel::wireguard`). Nothing runs in podnetd's data path; sessions live in the
//! kernel, so a restarted podnetd with the same key changes nothing and drops no packet.
//!
//! Peers are reconciled, not appended: a full pass reads the device's peers back and removes
//! every one no lease asks for (flannel keeps them, k3s#5216), updates those whose endpoint or
//! allowed IPs differ, and adds the missing. Handshakes are counted as changes of a peer's last
//! handshake time seen between two reads (the kernel keeps no count).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::SystemTime;

use super::key::KeyPair;
use super::tunnels::PeerStats;
use super::{DEVICE, Engine, PeerSpec};
use crate::backend::BackendError;
use crate::kernel::netlink::{Netlink, NewLink, NewLinkKind};
use crate::kernel::wireguard::{self as wg, PeerConfig, PeerState, WgSocket};
use crate::lease::SubnetKey;

pub struct KernelEngine {
    keys: KeyPair,
    port: u16,
    psk: Option<[u8; 32]>,
    keepalive: u16,
    sock: Option<WgSocket>,
    /// What each lease asks for.
    wanted: BTreeMap<SubnetKey, PeerSpec>,
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

    fn sock(&mut self) -> Result<&mut WgSocket, BackendError> {
        if self.sock.is_none() {
            self.sock = Some(WgSocket::open()?);
        }
        Ok(self.sock.as_mut().expect("opened above"))
    }

    fn apply(&mut self, what: &str, msgs: Vec<netlink_packet_wireguard::WireguardMessage>) {
        let r = self
            .sock()
            .and_then(|s| s.set(msgs).map_err(BackendError::from));
        if let Err(e) = r {
            tracing::warn!("wireguard: {what}: {e}; the next full pass retries");
        }
    }

    /// Whether the kernel's peer matches what we would configure.
    fn in_sync(&self, have: &PeerState, want: &PeerConfig) -> bool {
        have.endpoint == Some(std::net::SocketAddr::V4(want.endpoint))
            && have.allowed == want.allowed
            && have.keepalive == want.keepalive
            && have.has_psk == want.psk.is_some()
    }
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
        let (private, port) = (self.keys.private, self.port);
        let state = self.sock()?.get(DEVICE)?;
        if state.public_key != Some(self.keys.public) || state.listen_port != port {
            self.sock()?
                .set(wg::set_device(DEVICE, Some(&private), Some(port), &[]))?;
        }
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
        let want: HashMap<[u8; 32], PeerConfig> = self
            .wanted
            .values()
            .map(|p| (p.public_key, self.config(p)))
            .collect();
        let stale: Vec<[u8; 32]> = have
            .iter()
            .filter(|h| !want.contains_key(&h.public_key))
            .map(|h| h.public_key)
            .collect();
        let have: HashMap<[u8; 32], &PeerState> = have.iter().map(|h| (h.public_key, h)).collect();
        let update: Vec<PeerConfig> = want
            .values()
            .filter(|w| have.get(&w.public_key).is_none_or(|h| !self.in_sync(h, w)))
            .cloned()
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                peers = stale.len(),
                "removing WireGuard peers no lease asks for"
            );
            self.apply("remove stale peers", wg::remove_peers(DEVICE, &stale));
        }
        if !update.is_empty() {
            self.apply("set peers", wg::set_device(DEVICE, None, None, &update));
        }
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

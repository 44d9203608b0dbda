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
}

/// Whether the kernel's peer matches what we would configure (the PSK by value: after the
/// config's `PSK` changes, a restarted podnetd must replace the one the kernel kept).
fn in_sync(have: &PeerState, want: &PeerConfig) -> bool {
    have.endpoint == Some(std::net::SocketAddr::V4(want.endpoint))
        && have.allowed == want.allowed
        && have.keepalive == want.keepalive
        && have.psk == want.psk
}

/// What turns the device's peers (`have`) into `want`: the keys to remove (peers no lease asks
/// for) and the peers to add or update, in key order.
pub fn plan(have: &[PeerState], want: &[PeerConfig]) -> (Vec<[u8; 32]>, Vec<PeerConfig>) {
    let wanted: HashMap<[u8; 32], &PeerConfig> = want.iter().map(|w| (w.public_key, w)).collect();
    let mut stale: Vec<[u8; 32]> = have
        .iter()
        .filter(|h| !wanted.contains_key(&h.public_key))
        .map(|h| h.public_key)
        .collect();
    let had: HashMap<[u8; 32], &PeerState> = have.iter().map(|h| (h.public_key, h)).collect();
    let mut update: Vec<PeerConfig> = want
        .iter()
        .filter(|w| had.get(&w.public_key).is_none_or(|h| !in_sync(h, w)))
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
        let want: Vec<PeerConfig> = self.wanted.values().map(|p| self.config(p)).collect();
        let (stale, update) = plan(&have, &want);
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
        let (stale, update) = plan(&have, &want);
        assert_eq!(stale, vec![[9; 32]]);
        assert_eq!(update, vec![config(2, 22), config(3, 13)]);
        // In sync: nothing to send.
        let have: Vec<PeerState> = want.iter().map(state).collect();
        assert_eq!(plan(&have, &want), (vec![], vec![]));
        // A PSK configured since: every peer is rewritten.
        let with_psk: Vec<PeerConfig> = want
            .iter()
            .map(|c| PeerConfig {
                psk: Some([5; 32]),
                ..c.clone()
            })
            .collect();
        assert_eq!(plan(&have, &with_psk).1.len(), 3);
        // The PSK changed (config edited, podnetd restarted): the kernel still has the old
        // one, so every peer is rewritten with the new value; once it has it, nothing.
        let old_psk: Vec<PeerState> = with_psk
            .iter()
            .map(|c| PeerState {
                psk: Some([6; 32]),
                ..state(c)
            })
            .collect();
        assert_eq!(plan(&old_psk, &with_psk).1, with_psk.to_vec());
        let new_psk: Vec<PeerState> = with_psk.iter().map(state).collect();
        assert_eq!(plan(&new_psk, &with_psk), (vec![], vec![]));
        // A PSK removed from the config: cleared on the device.
        assert_eq!(plan(&new_psk, &want).1.len(), 3);
        // No leases: every peer goes.
        assert_eq!(plan(&have, &[]).0.len(), 3);
    }
}

//! Kernel WireGuard, configured over generic netlink (family `wireguard`): `WG_CMD_SET_DEVICE`
//! to set the private key, listen port and peers, `WG_CMD_GET_DEVICE` (a dump) to read them
//! back with their handshake times and byte counts. The device itself (`ip link add type
//! wireguard`) is made over rtnetlink (`netlink::NewLinkKind::Wireguard`).
//!
//! The messages are built by pure functions (`set_device`, `remove_peers`, `get_device`) so
//! that their bytes are unit-tested on machines without the module; `WgSocket` only sends them.
//! Peers go `PEERS_PER_MESSAGE` to a message, as `wg setconf` does, so any number fits.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlMessage};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_GENERIC};

use super::KernelError;

/// Peers per `WG_CMD_SET_DEVICE` message.
pub const PEERS_PER_MESSAGE: usize = 64;

/// One peer as podnet configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: [u8; 32],
    pub endpoint: SocketAddrV4,
    pub allowed: Vec<Ipv4Net>,
    pub psk: Option<[u8; 32]>,
    /// Seconds; 0 turns keepalives off.
    pub keepalive: u16,
}

/// One peer as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerState {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub allowed: Vec<Ipv4Net>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub keepalive: u16,
    /// The pre-shared key (the kernel returns it to CAP_NET_ADMIN, which every WireGuard
    /// command needs anyway); `None` for none (all zeros).
    pub psk: Option<[u8; 32]>,
}

/// The device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    pub public_key: Option<[u8; 32]>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

fn allowed_ip(net: &Ipv4Net) -> WireguardAllowedIp {
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
        WireguardAllowedIpAttr::IpAddr(net.network().into()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

fn peer_attrs(p: &PeerConfig) -> WireguardPeer {
    let mut a = vec![
        WireguardPeerAttribute::PublicKey(p.public_key),
        // The allowed IPs given are the peer's whole list, not additions.
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        WireguardPeerAttribute::Endpoint(SocketAddr::V4(p.endpoint)),
        WireguardPeerAttribute::PersistentKeepalive(p.keepalive),
    ];
    // A zero key clears a PSK the peer had.
    a.push(WireguardPeerAttribute::PresharedKey(
        p.psk.unwrap_or([0; 32]),
    ));
    a.push(WireguardPeerAttribute::AllowedIps(
        p.allowed.iter().map(allowed_ip).collect(),
    ));
    WireguardPeer(a)
}

/// `WG_CMD_SET_DEVICE` messages that set the key and port (when given) and add or update
/// `peers`, leaving other peers alone.
pub fn set_device(
    ifname: &str,
    private_key: Option<&[u8; 32]>,
    listen_port: Option<u16>,
    peers: &[PeerConfig],
) -> Vec<WireguardMessage> {
    let mut first = vec![WireguardAttribute::IfName(ifname.to_string())];
    if let Some(k) = private_key {
        first.push(WireguardAttribute::PrivateKey(*k));
    }
    if let Some(p) = listen_port {
        first.push(WireguardAttribute::ListenPort(p));
    }
    let mut msgs = Vec::new();
    let mut chunks = peers.chunks(PEERS_PER_MESSAGE);
    let mut attrs = first;
    loop {
        let chunk = chunks.next();
        if let Some(c) = chunk {
            attrs.push(WireguardAttribute::Peers(
                c.iter().map(peer_attrs).collect(),
            ));
        }
        if chunk.is_some() || msgs.is_empty() {
            msgs.push(WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes: attrs,
            });
        }
        if chunk.is_none() {
            return msgs;
        }
        attrs = vec![WireguardAttribute::IfName(ifname.to_string())];
    }
}

/// `WG_CMD_SET_DEVICE` messages that remove these peers.
pub fn remove_peers(ifname: &str, keys: &[[u8; 32]]) -> Vec<WireguardMessage> {
    keys.chunks(PEERS_PER_MESSAGE)
        .map(|c| WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes: vec![
                WireguardAttribute::IfName(ifname.to_string()),
                WireguardAttribute::Peers(
                    c.iter()
                        .map(|k| {
                            WireguardPeer(vec![
                                WireguardPeerAttribute::PublicKey(*k),
                                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
                            ])
                        })
                        .collect(),
                ),
            ],
        })
        .collect()
}

/// The `WG_CMD_GET_DEVICE` request (sent as a dump).
pub fn get_device(ifname: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(ifname.to_string())],
    }
}

fn parse_peer(p: &WireguardPeer) -> PeerState {
    let mut s = PeerState::default();
    for a in &p.0 {
        match a {
            WireguardPeerAttribute::PublicKey(k) => s.public_key = *k,
            WireguardPeerAttribute::PresharedKey(k) => s.psk = Some(*k).filter(|k| *k != [0; 32]),
            WireguardPeerAttribute::Endpoint(e) => s.endpoint = Some(*e),
            WireguardPeerAttribute::PersistentKeepalive(k) => s.keepalive = *k,
            WireguardPeerAttribute::LastHandshake(t) => {
                let since = Duration::new(t.seconds.max(0) as u64, t.nano_seconds.max(0) as u32);
                if !since.is_zero() {
                    s.last_handshake = Some(SystemTime::UNIX_EPOCH + since);
                }
            }
            WireguardPeerAttribute::RxBytes(b) => s.rx_bytes = *b,
            WireguardPeerAttribute::TxBytes(b) => s.tx_bytes = *b,
            WireguardPeerAttribute::AllowedIps(list) => {
                for ip in list {
                    let (mut addr, mut cidr) = (None, None);
                    for x in &ip.0 {
                        match x {
                            WireguardAllowedIpAttr::IpAddr(std::net::IpAddr::V4(a)) => {
                                addr = Some(*a)
                            }
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
                            _ => {}
                        }
                    }
                    if let (Some(a), Some(c)) = (addr, cidr)
                        && let Ok(n) = Ipv4Net::new(a, c)
                    {
                        s.allowed.push(n);
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Folds the messages of a `WG_CMD_GET_DEVICE` dump into one device (a peer may continue from
/// one message into the next: its allowed IPs are then spread over both).
pub fn parse_device(msgs: &[WireguardMessage]) -> DeviceState {
    let mut d = DeviceState::default();
    for m in msgs {
        for a in &m.attributes {
            match a {
                WireguardAttribute::PublicKey(k) => d.public_key = Some(*k),
                WireguardAttribute::ListenPort(p) => d.listen_port = *p,
                WireguardAttribute::Peers(peers) => {
                    for p in peers.iter().map(parse_peer) {
                        match d.peers.last_mut() {
                            Some(last) if last.public_key == p.public_key => {
                                last.allowed.extend(p.allowed)
                            }
                            _ => d.peers.push(p),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    d
}

/// Serializes a generic netlink message as it goes on the wire.
pub fn encode(msg: WireguardMessage, family: u16, flags: u16, seq: u32) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(msg);
    genl.set_resolved_family_id(family);
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
    nl.finalize();
    let mut out = vec![0; nl.buffer_len()];
    nl.serialize(&mut out);
    out
}

/// A generic netlink socket speaking to the kernel's WireGuard.
pub struct WgSocket {
    socket: Socket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl WgSocket {
    /// Opens a socket and resolves the family; fails when the module is not loaded.
    pub fn open() -> Result<WgSocket, KernelError> {
        let mut socket = Socket::new(NETLINK_GENERIC)
            .map_err(|e| KernelError::io("open generic netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| KernelError::io("bind generic netlink socket", e))?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(|e| KernelError::io("connect generic netlink socket", e))?;
        let mut s = WgSocket {
            socket,
            family: 0,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        };
        s.family = s.resolve()?;
        Ok(s)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn resolve(&mut self) -> Result<u16, KernelError> {
        let op = "find the wireguard generic netlink family";
        let req = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(
                WireguardMessage::family_name().into(),
            )],
        };
        let mut genl = GenlMessage::from_payload(req);
        genl.finalize();
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
        nl.finalize();
        let mut out = vec![0; nl.buffer_len()];
        nl.serialize(&mut out);
        self.send(op, &out)?;
        let mut family = None;
        self.collect::<GenlCtrl>(op, seq, |m| {
            for a in m.nlas {
                if let GenlCtrlAttrs::FamilyId(id) = a {
                    family = Some(id);
                }
            }
        })?;
        family.ok_or_else(|| KernelError::netlink(op, libc::ENOENT))
    }

    fn send(&self, op: &str, data: &[u8]) -> Result<(), KernelError> {
        self.socket
            .send(data, 0)
            .map_err(|e| KernelError::io(format!("{op}: send"), e))?;
        Ok(())
    }

    /// Reads replies to `seq` until its ack (or the end of a dump), handing each message on.
    fn collect<F>(&mut self, op: &str, seq: u32, mut each: impl FnMut(F)) -> Result<(), KernelError>
    where
        F: netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
            + std::fmt::Debug
            + GenlFamily
            + netlink_packet_core::Emitable,
    {
        loop {
            self.buf.clear();
            self.socket
                .recv(&mut self.buf, 0)
                .map_err(|e| KernelError::io(format!("{op}: receive"), e))?;
            let mut offset = 0;
            while offset + 16 <= self.buf.len() {
                let len = u32::from_ne_bytes(self.buf[offset..offset + 4].try_into().expect("4"))
                    as usize;
                if len < 16 || offset + len > self.buf.len() {
                    return Err(KernelError::decode(op, "broken netlink framing"));
                }
                let m =
                    NetlinkMessage::<GenlMessage<F>>::deserialize(&self.buf[offset..offset + len])
                        .map_err(|e| KernelError::decode(op, e.to_string()))?;
                offset += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                let multipart = m.header.flags & NLM_F_MULTIPART != 0;
                match m.payload {
                    NetlinkPayload::InnerMessage(g) => each(g.payload),
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(KernelError::netlink(op, -code.get())),
                        };
                    }
                    _ => {}
                }
                if !multipart && offset >= self.buf.len() {
                    // A single reply without an ack requested after it.
                }
            }
        }
    }

    /// Sends SET_DEVICE messages, each acknowledged before the next.
    pub fn set(&mut self, msgs: Vec<WireguardMessage>) -> Result<(), KernelError> {
        for m in msgs {
            let op = "configure WireGuard device";
            let seq = self.next_seq();
            let data = encode(m, self.family, NLM_F_REQUEST | NLM_F_ACK, seq);
            self.send(op, &data)?;
            self.collect::<WireguardMessage>(op, seq, |_| {})?;
        }
        Ok(())
    }

    /// Reads a device's key, port and peers.
    pub fn get(&mut self, ifname: &str) -> Result<DeviceState, KernelError> {
        let op = format!("read WireGuard device {ifname}");
        let seq = self.next_seq();
        let data = encode(
            get_device(ifname),
            self.family,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
        );
        self.send(&op, &data)?;
        let mut msgs = Vec::new();
        self.collect::<WireguardMessage>(&op, seq, |m| msgs.push(m))?;
        Ok(parse_device(&msgs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILY: u16 = 0x1d;

    fn peer(last: u8) -> PeerConfig {
        PeerConfig {
            public_key: [last; 32],
            endpoint: SocketAddrV4::new([198, 18, 0, last].into(), 51820),
            allowed: vec![format!("10.244.{last}.0/24").parse().unwrap()],
            psk: None,
            keepalive: 25,
        }
    }

    /// The attributes of a message, as (type, payload) pairs, nested ones left as bytes.
    fn nlas(buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + 4 <= buf.len() {
            let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
            let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
            out.push((kind, buf[off + 4..off + len].to_vec()));
            off += (len + 3) & !3;
        }
        out
    }

    #[test]
    fn set_device_bytes_follow_the_wireguard_uapi() {
        let key = [7u8; 32];
        let msgs = set_device("flannel-wg", Some(&key), Some(51820), &[peer(12)]);
        assert_eq!(msgs.len(), 1);
        let bytes = encode(msgs[0].clone(), FAMILY, NLM_F_REQUEST | NLM_F_ACK, 9);
        // nlmsghdr: length, type = the resolved family, flags, sequence.
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), FAMILY);
        assert_eq!(
            u16::from_ne_bytes([bytes[6], bytes[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        // genlmsghdr: WG_CMD_SET_DEVICE (1), version 1.
        assert_eq!((bytes[16], bytes[17]), (1, 1));
        let top = nlas(&bytes[20..]);
        let kinds: Vec<u16> = top.iter().map(|(k, _)| *k).collect();
        // WGDEVICE_A_IFNAME 2, PRIVATE_KEY 3, LISTEN_PORT 6, PEERS 8.
        assert_eq!(kinds, [2, 3, 6, 8]);
        assert_eq!(top[0].1, b"flannel-wg\0");
        assert_eq!(top[1].1, key);
        assert_eq!(top[2].1, 51820u16.to_ne_bytes());
        let peers = nlas(&top[3].1);
        assert_eq!(peers.len(), 1);
        let p = nlas(&peers[0].1);
        let kinds: Vec<u16> = p.iter().map(|(k, _)| *k).collect();
        // WGPEER_A_PUBLIC_KEY 1, FLAGS 3, ENDPOINT 4, PERSISTENT_KEEPALIVE_INTERVAL 5,
        // PRESHARED_KEY 2, ALLOWEDIPS 9.
        assert_eq!(kinds, [1, 3, 4, 5, 2, 9]);
        assert_eq!(p[0].1, [12u8; 32]);
        assert_eq!(p[1].1, 2u32.to_ne_bytes(), "WGPEER_F_REPLACE_ALLOWEDIPS");
        // struct sockaddr_in: AF_INET, port big-endian, address.
        assert_eq!(&p[2].1[..8], &[2, 0, 0xca, 0x6c, 198, 18, 0, 12]);
        assert_eq!(p[3].1, 25u16.to_ne_bytes());
        assert_eq!(p[4].1, [0u8; 32], "no PSK clears one");
        let ips = nlas(&p[5].1);
        let ip = nlas(&ips[0].1);
        // WGALLOWEDIP_A_FAMILY 1 (AF_INET), IPADDR 2, CIDR_MASK 3.
        assert_eq!(ip[0], (1, 2u16.to_ne_bytes().to_vec()));
        assert_eq!(ip[1], (2, vec![10, 244, 12, 0]));
        assert_eq!(ip[2], (3, vec![24]));
    }

    #[test]
    fn many_peers_are_split_and_removal_sets_remove_me() {
        let peers: Vec<PeerConfig> = (0..150).map(|i| peer(i as u8)).collect();
        let msgs = set_device("flannel-wg", None, None, &peers);
        assert_eq!(msgs.len(), 3);
        let counts: Vec<usize> = msgs
            .iter()
            .map(|m| {
                m.attributes
                    .iter()
                    .map(|a| match a {
                        WireguardAttribute::Peers(p) => p.len(),
                        _ => 0,
                    })
                    .sum()
            })
            .collect();
        assert_eq!(counts, [64, 64, 22]);
        assert!(
            msgs.iter()
                .all(|m| m.attributes[0] == WireguardAttribute::IfName("flannel-wg".into()))
        );
        // Nothing but the device: one message that changes nothing.
        assert_eq!(set_device("flannel-wg", None, Some(1), &[]).len(), 1);
        let rm = remove_peers("flannel-wg", &[[3; 32]]);
        let bytes = encode(rm[0].clone(), FAMILY, NLM_F_REQUEST | NLM_F_ACK, 1);
        let top = nlas(&bytes[20..]);
        let p = nlas(&nlas(&top[1].1)[0].1);
        assert_eq!(p[0], (1, vec![3; 32]));
        assert_eq!(p[1], (3, 1u32.to_ne_bytes().to_vec()), "WGPEER_F_REMOVE_ME");
        assert!(remove_peers("flannel-wg", &[]).is_empty());
    }

    #[test]
    fn a_dump_folds_into_one_device() {
        // What the kernel sends: the device, then a peer whose allowed IPs continue in a
        // second message.
        let first = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::PublicKey([9; 32]),
                WireguardAttribute::Peers(vec![peer_attrs(&peer(12))]),
            ],
        };
        let mut more = peer(12);
        more.allowed = vec!["10.244.99.0/24".parse().unwrap()];
        let second = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![
                peer_attrs(&more),
                peer_attrs(&PeerConfig {
                    psk: Some([4; 32]),
                    ..peer(13)
                }),
            ])],
        };
        // Through the wire format and back, as the socket would read them.
        let round = |m: WireguardMessage| {
            let bytes = encode(m, FAMILY, 0, 1);
            NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(&bytes)
                .map(|n| match n.payload {
                    NetlinkPayload::InnerMessage(g) => g.payload,
                    other => panic!("{other:?}"),
                })
                .unwrap()
        };
        let d = parse_device(&[round(first), round(second)]);
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.public_key, Some([9; 32]));
        assert_eq!(d.peers.len(), 2);
        assert_eq!(d.peers[0].allowed.len(), 2);
        assert_eq!(
            d.peers[0].endpoint,
            Some("198.18.0.12:51820".parse().unwrap())
        );
        assert_eq!(d.peers[0].keepalive, 25);
        assert_eq!(d.peers[0].psk, None, "all zeros is no PSK");
        assert_eq!(d.peers[1].public_key, [13; 32]);
        assert_eq!(
            d.peers[1].psk,
            Some([4; 32]),
            "the PSK's value is read back"
        );
        assert_eq!(d.peers[1].last_handshake, None);
    }
}

//! One userspace worker: one TUN queue and one UDP socket, served by one thread, in batches —
//! the udp backend's loop (`backend::udp::worker`) with WireGuard in the middle.
//!
//! TUN → UDP: a read gives a batch of packets (many, when the kernel passed a TCP
//! super-packet); each is encrypted straight into a send buffer, right after the previous one,
//! so consecutive data messages for one peer of one size leave as a single GSO send. A packet
//! for a peer without a session waits in its tunnel while the handshake initiation goes out.
//! UDP → TUN: `recvmmsg` (GRO packs equal-sized datagrams into one buffer); each data message is
//! decrypted straight into a TUN write buffer, its inner source checked against the sender's
//! subnet (cryptokey routing), and the batch written with the TCP segments coalesced again.
//! Handshake messages pass a MAC check (and, under load, a cookie) before any Diffie-Hellman.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::tunnels::{self, Failure, Peer, Tunnels};
use crate::backend::udp::Stats;
use crate::backend::udp::packet;
use crate::kernel::tun::{self, GROTable, IDEAL_BATCH_SIZE, TunQueue, VIRTIO_NET_HDR_LEN};
use crate::kernel::udp::{RECV_BATCH, RecvMeta, UdpPort};

/// WireGuard's data message: type, receiver, counter (16 bytes) and the tag (16).
pub const DATA_OVERHEAD: usize = 32;
const GSO_MAX_BYTES: usize = 65_000;
const RX_BUF: usize = 65_536;
const TX_TUN_BATCH: usize = IDEAL_BATCH_SIZE;
const ROUNDS: usize = 8;
const ICMP_PER_SECOND: u32 = 1000;

/// This node's identity, for handshake initiations that name no session.
pub struct Identity {
    pub secret: StaticSecret,
    pub public: PublicKey,
    /// Checks MACs and hands out cookies under load, shared by all workers.
    pub limiter: Arc<RateLimiter>,
}

pub struct WorkerSpec {
    pub tun: TunQueue,
    pub udp: Arc<UdpPort>,
    pub tunnels: Arc<RwLock<Tunnels>>,
    pub identity: Arc<Identity>,
    /// The TUN device's address (ICMP errors come from it).
    pub local: Arc<AtomicU32>,
    pub mtu: usize,
    pub stop: Arc<AtomicBool>,
    pub dead: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
}

struct Buffers {
    scratch: Vec<u8>,
    from_tun: Vec<u8>,
    stride: usize,
    sizes: Vec<usize>,
    /// Encrypted messages, back to back.
    out: Vec<u8>,
    rx: [Vec<u8>; RECV_BATCH],
    meta: Vec<RecvMeta>,
    to_tun: Vec<Vec<u8>>,
    ctrl: Vec<u8>,
    icmp: Vec<u8>,
    gro: GROTable,
}

impl Buffers {
    fn new(mtu: usize) -> Buffers {
        Buffers {
            scratch: vec![0; VIRTIO_NET_HDR_LEN + 65_535],
            from_tun: vec![0; IDEAL_BATCH_SIZE * mtu],
            stride: mtu,
            sizes: vec![0; IDEAL_BATCH_SIZE],
            // Room for every packet of a batch, and one handshake initiation after them.
            out: vec![0; IDEAL_BATCH_SIZE * (mtu + DATA_OVERHEAD) + 256],
            rx: std::array::from_fn(|_| vec![0; RX_BUF]),
            meta: vec![RecvMeta::default(); RECV_BATCH],
            to_tun: (0..TX_TUN_BATCH)
                .map(|_| Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65_535))
                .collect(),
            ctrl: vec![0; mtu + 256],
            icmp: Vec::with_capacity(VIRTIO_NET_HDR_LEN + packet::ICMP_MAX),
            gro: GROTable::new(),
        }
    }
}

struct Ctx<'a> {
    w: &'a WorkerSpec,
    last_error: Option<Instant>,
    icmp_window: Instant,
    icmp_sent: u32,
}

impl Ctx<'_> {
    fn report(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.w.stats.errors.inc();
        if self
            .last_error
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            tracing::warn!("wireguard backend: {what}: {e}");
            self.last_error = Some(Instant::now());
        }
    }

    fn icmp_budget(&mut self) -> bool {
        if self.icmp_window.elapsed() >= Duration::from_secs(1) {
            self.icmp_window = Instant::now();
            self.icmp_sent = 0;
        }
        self.icmp_sent += 1;
        self.icmp_sent <= ICMP_PER_SECOND
    }

    fn send(&mut self, to: SocketAddrV4, data: &[u8], segment: Option<usize>) -> bool {
        match self.w.udp.send(to, data, segment) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => {
                self.report(&format!("send to {to}"), &e);
                false
            }
        }
    }
}

pub fn run(w: WorkerSpec) {
    let mut b = Buffers::new(w.mtu);
    let mut cx = Ctx {
        w: &w,
        last_error: None,
        icmp_window: Instant::now(),
        icmp_sent: 0,
    };
    while !w.stop.load(Ordering::Relaxed) {
        let mut busy = false;
        for _ in 0..ROUNDS {
            let read = {
                let mut chunks = b.from_tun.chunks_mut(b.stride);
                let mut bufs: [&mut [u8]; IDEAL_BATCH_SIZE] =
                    std::array::from_fn(|_| chunks.next().expect("sized for a batch"));
                w.tun.read_batch(&mut b.scratch, &mut bufs, &mut b.sizes)
            };
            match read {
                Ok(n) => {
                    busy = true;
                    encrypt(&mut cx, &mut b, n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if tun::device_gone(&e) => {
                    tracing::warn!(
                        "wireguard backend: TUN queue closed ({e}); waiting to be restarted"
                    );
                    w.dead.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    cx.report("read from the TUN device", &e);
                    break;
                }
            }
        }
        for _ in 0..ROUNDS {
            let n = {
                let mut iov: [IoSliceMut<'_>; RECV_BATCH] =
                    b.rx.each_mut().map(|v| IoSliceMut::new(v.as_mut_slice()));
                match w.udp.recv_batch(&mut iov, &mut b.meta) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        cx.report("receive from the UDP socket", &e);
                        break;
                    }
                }
            };
            busy = true;
            decrypt(&mut cx, &mut b, n);
        }
        if !busy {
            crate::kernel::wait_readable(&[w.tun.fd(), w.udp.fd()], 200);
        }
    }
}

/// Consecutive data messages for one peer, back to back in `out`: one GSO send.
struct Run {
    to: SocketAddrV4,
    start: usize,
    end: usize,
    segment: usize,
    count: usize,
    closed: bool,
}

fn flush(cx: &mut Ctx<'_>, out: &[u8], r: &Run) -> usize {
    let segment = (r.count > 1).then_some(r.segment);
    if cx.send(r.to, &out[r.start..r.end], segment) {
        r.count
    } else {
        0
    }
}

fn encrypt(cx: &mut Ctx<'_>, b: &mut Buffers, n: usize) {
    let w = cx.w;
    let tunnels = w.tunnels.read().unwrap_or_else(|e| e.into_inner());
    let max_segments = w.udp.max_segments();
    let mut run: Option<Run> = None;
    let mut cached: Option<(Ipv4Addr, Option<&Arc<Peer>>)> = None;
    let mut pos = 0;
    let mut sent = 0;
    for i in 0..n {
        let (off, len) = (i * b.stride, b.sizes[i]);
        let pkt = &b.from_tun[off..off + len];
        let Some(dst) = packet::ipv4_dst(pkt) else {
            w.stats.malformed.inc();
            continue;
        };
        let peer = match cached {
            Some((d, p)) if d == dst => p,
            _ => {
                let p = tunnels.route(dst);
                cached = Some((dst, p));
                p
            }
        };
        let Some(peer) = peer else {
            w.stats.no_route.inc();
            if cx.icmp_budget() {
                unreachable(cx, pkt, &mut b.icmp, &mut b.gro);
            }
            continue;
        };
        let to = peer.spec.endpoint;
        let written = match peer.tunn().encapsulate(pkt, &mut b.out[pos..]) {
            TunnResult::WriteToNetwork(m) => Some((m[0], m.len())),
            TunnResult::Err(e) => {
                cx.report("encrypt", &format_args!("{e:?}"));
                None
            }
            _ => None,
        };
        let Some((kind, mlen)) = written else {
            continue;
        };
        if kind != 4 {
            // A handshake initiation: the packet waits in the tunnel for the session.
            let msg = b.out[pos..pos + mlen].to_vec();
            cx.send(to, &msg, None);
            continue;
        }
        let extends = run.as_ref().is_some_and(|r| {
            r.to == to
                && !r.closed
                && r.end == pos
                && mlen <= r.segment
                && r.count < max_segments
                && r.end + mlen - r.start <= GSO_MAX_BYTES
        });
        if !extends {
            if let Some(r) = run.take() {
                sent += flush(cx, &b.out, &r);
            }
            run = Some(Run {
                to,
                start: pos,
                end: pos,
                segment: mlen,
                count: 0,
                closed: false,
            });
        }
        let r = run.as_mut().expect("a run was just started");
        r.end = pos + mlen;
        r.count += 1;
        r.closed = mlen != r.segment;
        pos += mlen;
    }
    if let Some(r) = run {
        sent += flush(cx, &b.out, &r);
    }
    w.stats.encapsulated.inc_by(sent as u64);
}

fn unreachable(cx: &mut Ctx<'_>, offender: &[u8], buf: &mut Vec<u8>, gro: &mut GROTable) {
    let mut icmp = [0u8; packet::ICMP_MAX];
    let from = Ipv4Addr::from(cx.w.local.load(Ordering::Relaxed));
    let Some(len) = packet::net_unreachable(offender, from, &mut icmp) else {
        return;
    };
    buf.clear();
    buf.resize(VIRTIO_NET_HDR_LEN, 0);
    buf.extend_from_slice(&icmp[..len]);
    if let Err(e) = cx.w.tun.write_batch(gro, std::slice::from_mut(buf)) {
        cx.report("write ICMP net unreachable to the TUN device", &e);
    }
}

fn sender_v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

fn decrypt(cx: &mut Ctx<'_>, b: &mut Buffers, n: usize) {
    let w = cx.w;
    let tunnels = w.tunnels.read().unwrap_or_else(|e| e.into_inner());
    let mut out = 0;
    let mut written = 0;
    for m in 0..n {
        let meta = b.meta[m];
        let Some(sender) = sender_v4(meta.addr) else {
            continue;
        };
        let stride = if meta.stride == 0 {
            meta.len
        } else {
            meta.stride
        };
        if stride == 0 {
            continue;
        }
        for dgram in b.rx[m][..meta.len].chunks(stride) {
            if dgram.len() < 4 || dgram[1..4] != [0, 0, 0] {
                w.stats.malformed.inc();
                continue;
            }
            if dgram[0] != 4 {
                handshake(cx, &tunnels, sender, dgram, &mut b.ctrl);
                continue;
            }
            if dgram.len() < DATA_OVERHEAD {
                w.stats.malformed.inc();
                continue;
            }
            let receiver = u32::from_le_bytes(dgram[4..8].try_into().expect("4 bytes"));
            let Some(peer) = tunnels.session(receiver) else {
                unknown_session(cx, &tunnels, sender, &mut b.ctrl);
                continue;
            };
            if out == b.to_tun.len() {
                written += write_tun(cx, &mut b.gro, &mut b.to_tun[..out]);
                out = 0;
            }
            let buf = &mut b.to_tun[out];
            buf.clear();
            buf.resize(VIRTIO_NET_HDR_LEN + dgram.len(), 0);
            let res = peer.tunn().decapsulate(
                Some(IpAddr::V4(*sender.ip())),
                dgram,
                &mut buf[VIRTIO_NET_HDR_LEN..],
            );
            match res {
                TunnResult::WriteToTunnelV4(p, src) => {
                    let len = p.len();
                    peer.data_received(receiver);
                    if !tunnels::allowed(peer, src) {
                        w.stats.spoofed.inc();
                        continue;
                    }
                    buf.truncate(VIRTIO_NET_HDR_LEN + len);
                    out += 1;
                }
                // A keepalive.
                TunnResult::Done => peer.data_received(receiver),
                TunnResult::Err(WireGuardError::NoCurrentSession)
                | TunnResult::Err(WireGuardError::WrongIndex) => {
                    unknown_session(cx, &tunnels, sender, &mut b.ctrl)
                }
                // Replays, late duplicates, forgeries: dropped.
                _ => {
                    w.stats.malformed.inc();
                }
            }
        }
    }
    if out > 0 {
        written += write_tun(cx, &mut b.gro, &mut b.to_tun[..out]);
    }
    w.stats.decapsulated.inc_by(written as u64);
}

fn write_tun(cx: &mut Ctx<'_>, gro: &mut GROTable, bufs: &mut [Vec<u8>]) -> usize {
    match cx.w.tun.write_batch(gro, bufs) {
        Ok(_) => bufs.len(),
        Err(e) => {
            cx.report("write to the TUN device", &e);
            0
        }
    }
}

/// Data for a session we do not have (we restarted, or it expired): start a new one with the
/// peer at that address, so its traffic flows again after one round trip.
fn unknown_session(cx: &mut Ctx<'_>, tunnels: &Tunnels, sender: SocketAddrV4, ctrl: &mut [u8]) {
    let Some(peer) = tunnels.by_addr(*sender.ip()) else {
        cx.w.stats.malformed.inc();
        return;
    };
    let msg = match peer.tunn().format_handshake_initiation(ctrl, false) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        _ => return,
    };
    cx.send(peer.spec.endpoint, &msg, None);
}

fn log_failure(peer: &Peer, why: Failure) {
    if peer.failed(why) {
        tracing::warn!(
            peer = %peer.spec.lease,
            endpoint = %peer.spec.endpoint,
            "WireGuard handshake failed: {}",
            why.describe()
        );
    }
}

/// A handshake message (types 1 to 3).
fn handshake(
    cx: &mut Ctx<'_>,
    tunnels: &Tunnels,
    sender: SocketAddrV4,
    dgram: &[u8],
    ctrl: &mut [u8],
) {
    let id = &cx.w.identity;
    let ip = IpAddr::V4(*sender.ip());
    let packet = match id.limiter.verify_packet(Some(ip), dgram, ctrl) {
        Ok(p) => p,
        Err(TunnResult::WriteToNetwork(cookie)) => {
            let cookie = cookie.to_vec();
            cx.send(sender, &cookie, None);
            return;
        }
        Err(_) => {
            // A bad MAC on an initiation: made for another key of ours.
            if dgram[0] == 1
                && let Some(p) = tunnels.by_addr(*sender.ip())
            {
                log_failure(p, Failure::InitiationUndecryptable);
            }
            cx.w.stats.malformed.inc();
            return;
        }
    };
    let (peer, response_to) = match &packet {
        Packet::HandshakeInit(p) => match parse_handshake_anon(&id.secret, &id.public, p) {
            Ok(half) => (tunnels.by_key(&half.peer_static_public), None),
            Err(_) => {
                if let Some(p) = tunnels.by_addr(*sender.ip()) {
                    log_failure(p, Failure::InitiationUndecryptable);
                }
                return;
            }
        },
        Packet::HandshakeResponse(p) => (tunnels.session(p.receiver_idx), Some(p.receiver_idx)),
        Packet::PacketCookieReply(p) => (tunnels.session(p.receiver_idx), None),
        Packet::PacketData(_) => return,
    };
    let Some(peer) = peer else {
        // A key no lease carries.
        cx.w.stats.spoofed.inc();
        return;
    };
    let mut tunn = peer.tunn();
    let mut r = tunn.decapsulate(Some(ip), dgram, ctrl);
    let mut first = true;
    loop {
        match r {
            TunnResult::WriteToNetwork(m) => {
                if first {
                    match response_to {
                        Some(idx) => peer.response_accepted(idx),
                        None if dgram[0] == 1 => peer.initiation_answered(),
                        None => {}
                    }
                }
                let m = m.to_vec();
                cx.send(peer.spec.endpoint, &m, None);
            }
            TunnResult::Err(_) if first && response_to.is_some() => {
                drop(tunn);
                log_failure(peer, Failure::ResponseRejected);
                return;
            }
            _ => return,
        }
        first = false;
        // Packets that waited for the session go out now.
        r = tunn.decapsulate(None, &[], ctrl);
    }
}

//! One worker: one TUN queue and one UDP socket, served by one thread, in batches.
//!
//! TUN → UDP: a read gives a batch of packets (many, when the kernel passed a TCP super-packet);
//! consecutive packets for one peer of one size leave as a single GSO send. UDP → TUN: a
//! `recvmmsg` gives many datagrams (GRO packs equal-sized ones into one buffer); they are
//! written back with the TCP ones coalesced. Every buffer is allocated once, when the worker
//! starts.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::packet;
use super::peers::PeerTable;
use crate::kernel::tun::{self, GROTable, IDEAL_BATCH_SIZE, TunQueue, VIRTIO_NET_HDR_LEN};
use crate::kernel::udp::{RECV_BATCH, RecvMeta, UdpPort};

/// The largest UDP payload one GSO send may carry.
const GSO_MAX_BYTES: usize = 65_000;
/// Receive buffers: with GRO each holds up to 64 KiB of equal-sized datagrams.
const RX_BUF: usize = 65_536;
/// Packets written to the TUN device per call.
const TX_TUN_BATCH: usize = IDEAL_BATCH_SIZE;
/// Reads of each kind before the other kind gets its turn.
const ROUNDS: usize = 8;
/// ICMP errors per worker and second, like the kernel's own rate limit.
const ICMP_PER_SECOND: u32 = 1000;

/// Counters shared by all workers: Prometheus counters (atomics), exported as they are.
#[derive(Debug, Default)]
pub struct Stats {
    pub encapsulated: Counter,
    pub decapsulated: Counter,
    pub no_route: Counter,
    pub ttl_expired: Counter,
    pub malformed: Counter,
    /// From a peer, but with an inner source outside that peer's subnet.
    pub spoofed: Counter,
    pub errors: Counter,
}

/// What a worker needs; the table and the address are shared with the backend, which updates
/// them as leases change.
pub struct WorkerSpec {
    pub tun: TunQueue,
    pub udp: UdpPort,
    pub peers: Arc<RwLock<PeerTable>>,
    /// Source of ICMP errors: the TUN device's address (this node's lease).
    pub local: Arc<AtomicU32>,
    pub mtu: usize,
    pub stop: Arc<AtomicBool>,
    /// Set when the worker gave up (its device went away).
    pub dead: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
}

struct Buffers {
    scratch: Vec<u8>,
    /// Packets read from the TUN device, one per `stride` bytes: full-sized ones lie back to
    /// back, exactly as a GSO send wants them, so they leave without another copy.
    from_tun: Vec<u8>,
    stride: usize,
    sizes: Vec<usize>,
    rx: [Vec<u8>; RECV_BATCH],
    meta: Vec<RecvMeta>,
    to_tun: Vec<Vec<u8>>,
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
            rx: std::array::from_fn(|_| vec![0; RX_BUF]),
            meta: vec![RecvMeta::default(); RECV_BATCH],
            // Room for a whole coalesced super-packet: the writer coalesces into the buffer of
            // a flow's first segment and will not grow it.
            to_tun: (0..TX_TUN_BATCH)
                .map(|_| Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65_535))
                .collect(),
            icmp: Vec::with_capacity(VIRTIO_NET_HDR_LEN + packet::ICMP_MAX),
            gro: GROTable::new(),
        }
    }
}

struct IcmpBudget {
    window: Instant,
    sent: u32,
}

impl IcmpBudget {
    fn take(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.sent = 0;
        }
        self.sent += 1;
        self.sent <= ICMP_PER_SECOND
    }
}

pub fn run(w: WorkerSpec) {
    let mut b = Buffers::new(w.mtu);
    let mut budget = IcmpBudget {
        window: Instant::now(),
        sent: 0,
    };
    let mut last_error: Option<Instant> = None;
    let mut report = |what: &str, e: &std::io::Error| {
        w.stats.errors.inc();
        if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            tracing::warn!("udp backend: {what}: {e}");
            last_error = Some(Instant::now());
        }
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
                    encapsulate(&w, &mut b, n, &mut budget, &mut report);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if tun::device_gone(&e) => {
                    tracing::warn!("udp backend: TUN queue closed ({e}); waiting to be restarted");
                    w.dead.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    report("read from the TUN device", &e);
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
                        report("receive from the UDP socket", &e);
                        break;
                    }
                }
            };
            busy = true;
            decapsulate(&w, &mut b, n, &mut report);
        }
        if !busy {
            wait(&w);
        }
    }
}

fn wait(w: &WorkerSpec) {
    // The timeout bounds how long a stop request waits.
    crate::kernel::wait_readable(&[w.tun.fd(), w.udp.fd()], 200);
}

/// Consecutive packets for one peer, back to back in `from_tun`: one GSO send.
struct Run {
    to: SocketAddrV4,
    start: usize,
    end: usize,
    count: usize,
    /// A packet shorter than the stride ended it: a GSO send's last segment may be short.
    closed: bool,
}

fn encapsulate(
    w: &WorkerSpec,
    b: &mut Buffers,
    n: usize,
    budget: &mut IcmpBudget,
    report: &mut impl FnMut(&str, &std::io::Error),
) {
    let peers = w.peers.read().expect("peer table lock");
    let max_segments = w.udp.max_segments();
    let stride = b.stride;
    let mut run: Option<Run> = None;
    let mut cached: Option<(Ipv4Addr, Option<SocketAddrV4>)> = None;
    let mut sent = 0;
    for i in 0..n {
        let (off, len) = (i * stride, b.sizes[i]);
        let pkt = &mut b.from_tun[off..off + len];
        let Some(dst) = packet::ipv4_dst(pkt) else {
            w.stats.malformed.inc();
            continue;
        };
        let to = match cached {
            Some((d, to)) if d == dst => to,
            _ => {
                let to = peers.lookup(dst);
                cached = Some((dst, to));
                to
            }
        };
        let Some(to) = to else {
            w.stats.no_route.inc();
            if budget.take() {
                answer_unreachable(w, pkt, &mut b.icmp, &mut b.gro, report);
            }
            continue;
        };
        if !packet::decrement_ttl(pkt) {
            w.stats.ttl_expired.inc();
            continue;
        }
        let extends = run.as_ref().is_some_and(|r| {
            r.to == to
                && !r.closed
                && r.end == off
                && r.count < max_segments
                && r.end + len - r.start <= GSO_MAX_BYTES
        });
        if !extends {
            if let Some(r) = run.take() {
                sent += flush(w, &b.from_tun, &r, stride, report);
            }
            run = Some(Run {
                to,
                start: off,
                end: off,
                count: 0,
                closed: false,
            });
        }
        let r = run.as_mut().expect("a run was just started");
        r.end = off + len;
        r.count += 1;
        r.closed = len != stride;
    }
    if let Some(r) = run {
        sent += flush(w, &b.from_tun, &r, stride, report);
    }
    w.stats.encapsulated.inc_by(sent as u64);
}

fn flush(
    w: &WorkerSpec,
    from_tun: &[u8],
    r: &Run,
    stride: usize,
    report: &mut impl FnMut(&str, &std::io::Error),
) -> usize {
    let segment = (r.count > 1).then_some(stride);
    match w.udp.send(r.to, &from_tun[r.start..r.end], segment) {
        Ok(()) => r.count,
        // A full socket buffer drops the batch, as a full device queue would.
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        Err(e) => {
            report(&format!("send to {}", r.to), &e);
            0
        }
    }
}

fn answer_unreachable(
    w: &WorkerSpec,
    offender: &[u8],
    buf: &mut Vec<u8>,
    gro: &mut GROTable,
    report: &mut impl FnMut(&str, &std::io::Error),
) {
    let mut icmp = [0u8; packet::ICMP_MAX];
    let from = Ipv4Addr::from(w.local.load(Ordering::Relaxed));
    let Some(len) = packet::net_unreachable(offender, from, &mut icmp) else {
        return;
    };
    buf.clear();
    buf.resize(VIRTIO_NET_HDR_LEN, 0);
    buf.extend_from_slice(&icmp[..len]);
    if let Err(e) = w.tun.write_batch(gro, std::slice::from_mut(buf)) {
        report("write ICMP net unreachable to the TUN device", &e);
    }
}

fn decapsulate(
    w: &WorkerSpec,
    b: &mut Buffers,
    n: usize,
    report: &mut impl FnMut(&str, &std::io::Error),
) {
    let mut out = 0;
    let mut written = 0;
    let peers = w.peers.read().expect("peer table lock");
    for m in 0..n {
        let meta = b.meta[m];
        let sender = match meta.addr {
            std::net::SocketAddr::V4(a) => Some(*a.ip()),
            std::net::SocketAddr::V6(a) => a.ip().to_ipv4_mapped(),
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
            if packet::ipv4_dst(dgram).is_none() {
                w.stats.malformed.inc();
                continue;
            }
            // Anti-spoofing: a peer speaks only for its own subnet.
            let owner = peers.lookup(packet::ipv4_src(dgram)).map(|a| *a.ip());
            if owner.is_none() || owner != sender {
                w.stats.spoofed.inc();
                continue;
            }
            if out == b.to_tun.len() {
                written += write_tun(w, &mut b.gro, &mut b.to_tun[..out], report);
                out = 0;
            }
            let buf = &mut b.to_tun[out];
            buf.clear();
            buf.resize(VIRTIO_NET_HDR_LEN, 0);
            buf.extend_from_slice(dgram);
            if !packet::decrement_ttl(&mut buf[VIRTIO_NET_HDR_LEN..]) {
                w.stats.ttl_expired.inc();
                continue;
            }
            out += 1;
        }
    }
    if out > 0 {
        written += write_tun(w, &mut b.gro, &mut b.to_tun[..out], report);
    }
    w.stats.decapsulated.inc_by(written as u64);
}

fn write_tun(
    w: &WorkerSpec,
    gro: &mut GROTable,
    bufs: &mut [Vec<u8>],
    report: &mut impl FnMut(&str, &std::io::Error),
) -> usize {
    match w.tun.write_batch(gro, bufs) {
        Ok(_) => bufs.len(),
        Err(e) => {
            report("write to the TUN device", &e);
            0
        }
    }
}

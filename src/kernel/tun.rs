//! TUN devices for a userspace data path.
//!
//! One device, several queues (IFF_MULTI_QUEUE): the kernel spreads flows over the queues, and
//! each queue is served by its own thread. With virtio-net offloads (IFF_VNET_HDR +
//! TUNSETOFFLOAD) the kernel hands over whole TCP super-packets, which are split here into
//! MTU-sized packets with their checksums done, and takes back coalesced ones, so the stacks on
//! both sides see few large packets instead of many small ones. Without offload support every
//! read and write is one packet; the calls below behave the same either way.
//!
//! The device is persistent: when podnetd stops, `flannel0` keeps its address and routes and
//! drops what is sent to it, instead of vanishing and letting pod traffic follow the default
//! route until the next start.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::KernelError;
use super::netlink::Netlink;

/// One queue of a multi-queue TUN device, non-blocking.
pub struct TunQueue {
    dev: tun_rs::SyncDevice,
}

/// What to open.
#[derive(Debug, Clone)]
pub struct TunSpec<'a> {
    pub name: &'a str,
    pub queues: usize,
    /// Ask for virtio-net offloads; silently without them where the kernel refuses.
    pub offload: bool,
}

fn build(spec: &TunSpec<'_>, offload: bool) -> io::Result<tun_rs::SyncDevice> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(spec.name)
        .multi_queue(true)
        .offload(offload)
        .build_sync()?;
    dev.persist()?;
    Ok(dev)
}

/// Whether a queue's read or write failed because the device was deleted under it (EBADFD, or
/// ENODEV/EIO when the queue was detached): the data path must rebuild, not retry.
pub fn device_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::EIO)
    )
}

/// Opens the device as `open` does, first replacing a device of that name that is not a TUN
/// device, or a TUN device made with other flags (flanneld's single-queue `flannel0`, a plain
/// one) that refuses our queues.
pub fn open_replacing(nl: &mut Netlink, spec: &TunSpec<'_>) -> Result<Vec<TunQueue>, KernelError> {
    if let Some(l) = nl.link(spec.name)?
        && l.kind.as_deref() != Some("tun")
    {
        tracing::info!(device = spec.name, kind = ?l.kind, "replacing a device of another kind");
        nl.del_link(l.index)?;
    }
    match open(spec) {
        Ok(q) => Ok(q),
        Err(e) => {
            let Some(link) = nl.link(spec.name)? else {
                return Err(e);
            };
            tracing::info!(
                device = spec.name,
                "replacing a TUN device we cannot attach to: {e}"
            );
            nl.del_link(link.index)?;
            open(spec)
        }
    }
}

/// Opens (creating if needed) the device and attaches `spec.queues` queues.
pub fn open(spec: &TunSpec<'_>) -> Result<Vec<TunQueue>, KernelError> {
    let op = || format!("open TUN device {}", spec.name);
    let first = match build(spec, spec.offload) {
        Ok(d) => d,
        Err(e) if spec.offload => {
            tracing::info!(
                device = spec.name,
                "TUN offloads unavailable ({e}); one packet per read and write"
            );
            build(spec, false).map_err(|e| KernelError::io(op(), e))?
        }
        Err(e) => return Err(KernelError::io(op(), e)),
    };
    let mut queues = Vec::with_capacity(spec.queues.max(1));
    for _ in 1..spec.queues.max(1) {
        let q = first
            .try_clone()
            .map_err(|e| KernelError::io(format!("attach a queue to {}", spec.name), e))?;
        queues.push(q);
    }
    queues.insert(0, first);
    queues
        .into_iter()
        .map(|dev| {
            dev.set_nonblocking(true)
                .map_err(|e| KernelError::io(format!("make {} non-blocking", spec.name), e))?;
            Ok(TunQueue { dev })
        })
        .collect()
}

impl TunQueue {
    pub fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    /// Whether the kernel passes TCP super-packets (offloads on).
    pub fn offload(&self) -> bool {
        self.dev.tcp_gso()
    }

    /// Reads what one read returns, split into packets: packet `i` is `bufs[i][..sizes[i]]`.
    /// `scratch` holds the raw read and must take `VIRTIO_NET_HDR_LEN + 65535` bytes. Returns
    /// the number of packets; `WouldBlock` when nothing is waiting.
    pub fn read_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        scratch: &mut [u8],
        bufs: &mut [B],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        self.dev.recv_multiple(scratch, bufs, sizes, 0)
    }

    /// Writes packets, each starting `VIRTIO_NET_HDR_LEN` bytes into its buffer (the room the
    /// virtio-net header needs), coalescing TCP segments of one flow where offloads are on.
    pub fn write_batch(&self, gro: &mut GROTable, bufs: &mut [Vec<u8>]) -> io::Result<usize> {
        self.dev.send_multiple(gro, bufs, VIRTIO_NET_HDR_LEN)
    }
}

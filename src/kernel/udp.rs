//! UDP sockets for a userspace data path, with batched system calls: `recvmmsg` (and UDP GRO,
//! several datagrams of one size in one buffer) on receive, UDP GSO (one `sendmsg` that the
//! kernel cuts into datagrams of one size) on send.
//!
//! Several sockets share one port (SO_REUSEPORT), one per worker thread; the kernel hashes
//! each sender onto one of them.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, bind, setsockopt, socket,
    sockopt::ReusePort,
};
pub use quinn_udp::{BATCH_SIZE as RECV_BATCH, RecvMeta};
use quinn_udp::{Transmit, UdpSocketState};

use super::KernelError;

/// Kernel socket buffers: enough for a few batches of 64 KiB at line rate.
const SOCKET_BUFFER: usize = 4 << 20;

pub struct UdpPort {
    sock: UdpSocket,
    state: UdpSocketState,
}

impl UdpPort {
    /// A non-blocking socket bound to `addr`, sharing the port with podnet's other workers.
    pub fn bind_shared(addr: SocketAddrV4) -> Result<UdpPort, KernelError> {
        let op = format!("bind UDP {addr}");
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::Udp,
        )
        .map_err(|e| KernelError::io(&op, e.into()))?;
        setsockopt(&fd, ReusePort, &true).map_err(|e| KernelError::io(&op, e.into()))?;
        bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).map_err(|e| {
            let hint = if e == nix::errno::Errno::EADDRINUSE {
                " (another program holds this port: is flanneld still running?)"
            } else {
                ""
            };
            KernelError::Other(format!("{op}: {e}{hint}"))
        })?;
        let sock = UdpSocket::from(fd);
        let state = UdpSocketState::new((&sock).into()).map_err(|e| KernelError::io(&op, e))?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size((&sock).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&sock).into(), SOCKET_BUFFER);
        Ok(UdpPort { sock, state })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Datagrams one GSO send may carry (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Receives up to `bufs.len()` buffers; `meta[i].len` bytes of `bufs[i]` arrived, as
    /// datagrams of `meta[i].stride` bytes each (the last may be shorter). `WouldBlock` when
    /// nothing is waiting.
    pub fn recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.state.recv((&self.sock).into(), bufs, meta)
    }

    /// Sends `contents` to `to` as datagrams of `segment` bytes (the last may be shorter), or as
    /// one datagram when `segment` is `None`.
    pub fn send(
        &self,
        to: SocketAddrV4,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let t = Transmit {
            destination: SocketAddr::V4(to),
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        self.state.try_send((&self.sock).into(), &t)
    }
}

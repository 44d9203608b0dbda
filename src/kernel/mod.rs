//! The only code that talks to the kernel: namespaces, rtnetlink, nftables, sysctls, and the
//! TUN device and UDP sockets of the userspace data path.
//!
//! Everything else in podnet works on plain values (routes, links, rulesets) and hands them to
//! this module to read or apply.

pub mod alarm;
pub mod ethtool;
pub mod image;
pub mod inotify;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod process;
pub mod sysctl;
pub mod tun;
pub mod udp;
pub mod wireguard;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

/// Errors from kernel interfaces, each naming the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    #[error("{op}: {}", io::Error::from_raw_os_error(*.errno))]
    Netlink { op: String, errno: i32 },
    #[error("{op}: cannot decode kernel reply: {msg}")]
    Decode { op: String, msg: String },
    #[error("{} is not a network namespace", .0.display())]
    NotANamespace(PathBuf),
    #[error("invalid network namespace name {0:?}")]
    InvalidName(String),
    #[error("{0}")]
    Thread(&'static str),
    #[error("{0}")]
    Other(String),
}

impl KernelError {
    pub fn io(op: impl Into<String>, source: io::Error) -> KernelError {
        KernelError::Io {
            op: op.into(),
            source,
        }
    }

    pub fn netlink(op: impl Into<String>, errno: i32) -> KernelError {
        KernelError::Netlink {
            op: op.into(),
            errno,
        }
    }

    pub fn decode(op: impl Into<String>, msg: impl Into<String>) -> KernelError {
        KernelError::Decode {
            op: op.into(),
            msg: msg.into(),
        }
    }

    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink { errno, .. } => Some(*errno),
            KernelError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object the request named does not exist (a link, address, route, neighbour or
    /// file): ENOENT, ESRCH, ENODEV or EADDRNOTAVAIL, depending on which the kernel uses.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL)
        )
    }

    /// The kernel lacks what the request needs (a link kind without its module, a generic
    /// netlink family that is not registered).
    pub fn is_not_supported(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::EOPNOTSUPP | libc::ENOENT | libc::EPROTONOSUPPORT)
        )
    }

    /// The object the request would create exists already (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// An Ethernet address, written the way `ip` and flannel's `VtepMAC` write it (`c6:d2:32:6f:8f:44`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }

    /// A random locally administered unicast address (`random_bytes`).
    pub fn random() -> Mac {
        let mut b: [u8; 6] = random_bytes();
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }
}

/// Random bytes from `getrandom(2)` directly: `rand`'s thread generator would be seeded first
/// (in the static plugin through `/dev/random` and `/dev/urandom`, five system calls) and
/// detect CPU features, on every pod event.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: the kernel writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if usize::try_from(n).ok() != Some(b.len()) {
        // A kernel without getrandom(2), or a signal before any byte: rand's way.
        rand::fill(&mut b[..]);
    }
    b
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "invalid MAC address {s:?}: expected six hex bytes separated by ':'"
            ));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!(
                    "invalid MAC address {s:?}: byte {p:?} is not two hex digits"
                ));
            }
            b[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("invalid MAC address {s:?}: byte {p:?} is not hex"))?;
        }
        Ok(Mac(b))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Waits until one of `fds` is readable, or `timeout_ms` passes.
pub fn wait_readable(fds: &[std::os::fd::RawFd], timeout_ms: u16) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::BorrowedFd;
    // SAFETY: the caller owns the descriptors for the duration of the call.
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(unsafe { BorrowedFd::borrow_raw(*fd) }, PollFlags::POLLIN))
        .collect();
    let _ = poll(&mut pfds, PollTimeout::from(timeout_ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: Mac = "c6:d2:32:6f:8f:44".parse().unwrap();
        assert_eq!(m.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"c6:d2:32:6f:8f:44\"");
        assert!("c6:d2:32:6f:8f".parse::<Mac>().is_err());
        assert!("c6:d2:32:6f:8f:4g".parse::<Mac>().is_err());
        assert!("c6:d2:32:6f:8f:444".parse::<Mac>().is_err());
    }

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..100 {
            let m = Mac::random();
            assert_eq!(m.0[0] & 0x01, 0, "unicast");
            assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
        }
    }
}

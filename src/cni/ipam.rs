//! Pod addresses on disk in host-local's layout, so a node that ran flannel with host-local
//! keeps its allocations and can go back: `/var/lib/cni/networks/<network>/<ip>` holds
//! `<container ID>\r\n<interface>`, `last_reserved_ip.<range set>` the last address handed out,
//! and `lock` is flock'ed around every change. Allocation continues after the last reserved
//! address and wraps, skipping the gateway, as host-local does.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::spec::{CniError, code};
use crate::util::files::{Lock, LockError};

const LAST_RESERVED: &str = "last_reserved_ip.";
const LOCK: &str = "lock";
/// host-local writes this between the container ID and the interface name on every OS.
const LINE_BREAK: &str = "\r\n";

/// The addresses one range set hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

impl Range {
    /// host-local's defaults for a subnet: from the first host to the last (IPv4 leaves out the
    /// broadcast address), gateway at the first host.
    pub fn for_subnet(subnet: IpNet, gateway: Option<IpAddr>) -> Range {
        let net = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        let end = if subnet.addr().is_ipv4() {
            last - 1
        } else {
            last
        };
        Range {
            subnet,
            start: from_u128(net + 1, subnet.addr()),
            end: from_u128(end, subnet.addr()),
            gateway,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let v = to_u128(ip);
        ip.is_ipv4() == self.start.is_ipv4() && to_u128(self.start) <= v && v <= to_u128(self.end)
    }

    fn size(&self) -> u128 {
        to_u128(self.end) - to_u128(self.start) + 1
    }
}

/// The allocation directory of one network, locked while this value lives.
pub struct Store {
    dir: PathBuf,
    _lock: Lock,
}

/// How long an ADD or DEL waits for another one on the same network.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

fn io_err(what: String, e: std::io::Error) -> CniError {
    CniError::new(code::IO, what).with_details(e.to_string())
}

impl Store {
    /// Opens and locks a network's allocation directory. The directory is root's alone (0700,
    /// the lock file 0600): allocations are not other users' business.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        let dir = data_dir.join(network);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_err(format!("create {}", dir.display()), e))?;
        let lock =
            Lock::acquire(&dir.join(LOCK), 0o600, Some(LOCK_TIMEOUT)).map_err(|e| match e {
                LockError::Timeout { .. } => CniError::new(code::TRY_AGAIN_LATER, e.to_string()),
                e => CniError::new(code::IO, e.to_string()),
            })?;
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
        std::fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{range_id}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Claims `ip` for the attachment; `Ok(false)` if it is taken.
    fn reserve(
        &self,
        ip: IpAddr,
        id: &str,
        ifname: &str,
        range_id: usize,
    ) -> Result<bool, CniError> {
        let path = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(format!("create {}", path.display()), e)),
        };
        if let Err(e) = f.write_all(format!("{}{LINE_BREAK}{ifname}", id.trim()).as_bytes()) {
            let _ = std::fs::remove_file(&path);
            return Err(io_err(format!("write {}", path.display()), e));
        }
        let last = self.dir.join(format!("{LAST_RESERVED}{range_id}"));
        std::fs::write(&last, ip.to_string())
            .map_err(|e| io_err(format!("write {}", last.display()), e))?;
        Ok(true)
    }

    /// Allocates an address: `requested` if given, else the next free one after the last reserved.
    pub fn allocate(
        &self,
        id: &str,
        ifname: &str,
        range: &Range,
        range_id: usize,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr, CniError> {
        if let Some(ip) = requested {
            if !range.contains(ip) || Some(ip) == range.gateway {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "requested IP {ip} is not allocatable in {}-{}",
                        range.start, range.end
                    ),
                ));
            }
            if !self.reserve(ip, id, ifname, range_id)? {
                let owner =
                    std::fs::read_to_string(self.dir.join(ip.to_string())).unwrap_or_default();
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "requested IP {ip} is already allocated to {}",
                        owner.split(LINE_BREAK).next().unwrap_or("?")
                    ),
                ));
            }
            return Ok(ip);
        }
        let start = to_u128(range.start);
        let size = range.size();
        let first = match self.last_reserved(range_id) {
            Some(last) if range.contains(last) => (to_u128(last) - start + 1) % size,
            _ => 0,
        };
        for i in 0..size.min(1 << 24) {
            let ip = from_u128(start + (first + i) % size, range.start);
            if Some(ip) == range.gateway {
                continue;
            }
            if self.reserve(ip, id, ifname, range_id)? {
                return Ok(ip);
            }
        }
        Err(CniError::new(
            code::ADDRESSES_EXHAUSTED,
            format!(
                "no free address in {}-{}: every address of the node's pod subnet is allocated",
                range.start, range.end
            ),
        ))
    }

    /// Every allocation: (address, container ID, interface). Legacy files without an interface
    /// report an empty one.
    pub fn allocations(&self) -> Vec<(IpAddr, String, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let Ok(content) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let content = content.trim();
            let (id, ifname) = content
                .split_once(LINE_BREAK)
                .or_else(|| content.split_once('\n'))
                .unwrap_or((content, ""));
            out.push((ip, id.trim().to_string(), ifname.trim().to_string()));
        }
        out
    }

    fn matches(id: &str, ifname: &str, a_id: &str, a_if: &str) -> bool {
        // Files from host-local versions before interface names count for any interface.
        a_id == id.trim() && (a_if == ifname || a_if.is_empty())
    }

    /// Addresses held by an attachment.
    pub fn find(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.allocations()
            .into_iter()
            .filter(|(_, a, i)| Store::matches(id, ifname, a, i))
            .map(|(ip, _, _)| ip)
            .collect()
    }

    /// Releases one address if it belongs to the attachment; returns whether it did.
    pub fn release_ip(&self, ip: IpAddr, id: &str, ifname: &str) -> bool {
        let path = self.dir.join(ip.to_string());
        let Ok(content) = std::fs::read_to_string(&path) else {
            return false;
        };
        let content = content.trim();
        let (a_id, a_if) = content
            .split_once(LINE_BREAK)
            .or_else(|| content.split_once('\n'))
            .unwrap_or((content, ""));
        Store::matches(id, ifname, a_id.trim(), a_if.trim()) && std::fs::remove_file(&path).is_ok()
    }

    /// Releases everything the attachment holds; returns what it released.
    pub fn release(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.find(id, ifname)
            .into_iter()
            .filter(|ip| std::fs::remove_file(self.dir.join(ip.to_string())).is_ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("podnet-ipam-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn range() -> Range {
        Range::for_subnet(
            "10.244.3.0/29".parse().unwrap(),
            Some("10.244.3.1".parse().unwrap()),
        )
    }

    #[test]
    fn host_local_layout_and_order() {
        let d = tmp();
        let s = Store::open(&d, "cbr0").unwrap();
        let r = range();
        assert_eq!(
            (r.start.to_string(), r.end.to_string()),
            ("10.244.3.1".into(), "10.244.3.6".into())
        );
        let a = s.allocate("ctr-a", "eth0", &r, 0, None).unwrap();
        assert_eq!(a.to_string(), "10.244.3.2", "the gateway is skipped");
        assert_eq!(
            std::fs::read_to_string(d.join("cbr0/10.244.3.2")).unwrap(),
            "ctr-a\r\neth0"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("cbr0/last_reserved_ip.0")).unwrap(),
            "10.244.3.2"
        );
        assert!(d.join("cbr0/lock").exists());
        let b = s.allocate("ctr-b", "eth0", &r, 0, None).unwrap();
        assert_eq!(b.to_string(), "10.244.3.3");
        // Release and allocate again: continues after the last reserved, not back at the start.
        assert_eq!(s.release("ctr-a", "eth0"), vec![a]);
        let c = s.allocate("ctr-c", "eth0", &r, 0, None).unwrap();
        assert_eq!(c.to_string(), "10.244.3.4");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn exhaustion_wraparound_and_requests() {
        let d = tmp();
        let s = Store::open(&d, "n").unwrap();
        let r = range();
        let got: Vec<String> = (0..5)
            .map(|i| {
                s.allocate(&format!("c{i}"), "eth0", &r, 0, None)
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            got,
            [
                "10.244.3.2",
                "10.244.3.3",
                "10.244.3.4",
                "10.244.3.5",
                "10.244.3.6"
            ]
        );
        let e = s.allocate("c9", "eth0", &r, 0, None).unwrap_err();
        assert_eq!(e.code, 101);
        assert_eq!(
            e.msg,
            "no free address in 10.244.3.1-10.244.3.6: every address of the node's pod subnet is allocated"
        );
        // Freed in the middle: found by wrapping around.
        s.release("c1", "eth0");
        assert_eq!(
            s.allocate("c9", "eth0", &r, 0, None).unwrap().to_string(),
            "10.244.3.3"
        );
        let e = s
            .allocate("c10", "eth0", &r, 0, Some("10.244.3.5".parse().unwrap()))
            .unwrap_err();
        assert!(e.msg.contains("already allocated to c3"), "{}", e.msg);
        assert_eq!(
            s.allocate("c10", "eth0", &r, 0, Some("10.244.3.1".parse().unwrap()))
                .unwrap_err()
                .code,
            7
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn legacy_and_interface_matching() {
        let d = tmp();
        let s = Store::open(&d, "n").unwrap();
        std::fs::write(d.join("n/10.244.3.5"), "old-ctr").unwrap();
        std::fs::write(d.join("n/10.244.3.6"), "ctr\neth1").unwrap();
        assert_eq!(s.find("old-ctr", "eth0").len(), 1);
        assert!(s.find("ctr", "eth0").is_empty());
        assert!(!s.release_ip("10.244.3.6".parse().unwrap(), "ctr", "eth0"));
        assert!(s.release_ip("10.244.3.6".parse().unwrap(), "ctr", "eth1"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

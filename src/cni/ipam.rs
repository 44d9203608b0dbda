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

/// The addresses one range set hands out: host addresses of `subnet` from `start` to `end`,
/// never the network address (nor IPv4's broadcast address). Built only by the checked
/// constructors below, so `start <= end` inside the subnet always holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    subnet: IpNet,
    start: IpAddr,
    end: IpAddr,
    gateway: Option<IpAddr>,
}

/// Why a subnet, gateway or range cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error(
        "{subnet} is too small for a gateway and a pod (an {} subnet needs a /{} or larger)",
        family(.subnet),
        if .subnet.addr().is_ipv4() { 30 } else { 126 }
    )]
    TooSmall { subnet: IpNet },
    #[error("{ip} is not an {} address, as {subnet} is", family(.subnet))]
    Family { ip: IpAddr, subnet: IpNet },
    #[error("{ip} is not a host address of {subnet} ({first}-{last})")]
    Outside {
        ip: IpAddr,
        subnet: IpNet,
        first: IpAddr,
        last: IpAddr,
    },
    #[error("the range {start}-{end} ends before it starts")]
    Reversed { start: IpAddr, end: IpAddr },
}

fn family(net: &IpNet) -> &'static str {
    if net.addr().is_ipv4() { "IPv4" } else { "IPv6" }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address `v` in the family of `like`; `None` if it does not fit.
fn from_u128(v: u128, like: IpAddr) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => u32::try_from(v).ok().map(|a| IpAddr::V4(a.into())),
        IpAddr::V6(_) => Some(IpAddr::V6(v.into())),
    }
}

/// The first and last host address of a subnet, if it has room for a gateway and a pod.
fn host_bounds(subnet: IpNet) -> Result<(IpAddr, IpAddr), RangeError> {
    let net = subnet.network();
    let tail = u128::from(net.is_ipv4()); // IPv4's broadcast address
    let first = to_u128(net).checked_add(1);
    let last = to_u128(subnet.broadcast()).checked_sub(tail);
    match (first, last) {
        (Some(f), Some(l)) if l > f => match (from_u128(f, net), from_u128(l, net)) {
            (Some(f), Some(l)) => Ok((f, l)),
            _ => Err(RangeError::TooSmall { subnet }),
        },
        _ => Err(RangeError::TooSmall { subnet }),
    }
}

impl Range {
    /// host-local's defaults for a subnet: from the first host to the last, gateway (when
    /// given) one of them. Subnets without room for a gateway and a pod (IPv4 /31 and /32,
    /// IPv6 /127 and /128) are refused.
    pub fn for_subnet(subnet: IpNet, gateway: Option<IpAddr>) -> Result<Range, RangeError> {
        let subnet = subnet.trunc();
        let (start, end) = host_bounds(subnet)?;
        let range = Range {
            subnet,
            start,
            end,
            gateway: None,
        };
        if let Some(gw) = gateway {
            range.check_host(gw)?;
        }
        Ok(Range { gateway, ..range })
    }

    /// Whether `ip` is a host address of the subnet (an error saying why not).
    pub fn check_host(&self, ip: IpAddr) -> Result<(), RangeError> {
        let subnet = self.subnet;
        if ip.is_ipv4() != subnet.addr().is_ipv4() {
            return Err(RangeError::Family { ip, subnet });
        }
        let (first, last) = host_bounds(subnet)?;
        if !(to_u128(first)..=to_u128(last)).contains(&to_u128(ip)) {
            return Err(RangeError::Outside {
                ip,
                subnet,
                first,
                last,
            });
        }
        Ok(())
    }

    /// Narrowed to host-local's `rangeStart`/`rangeEnd`, each a host address of the subnet.
    pub fn with_bounds(
        self,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
    ) -> Result<Range, RangeError> {
        for ip in start.iter().chain(end.iter()) {
            self.check_host(*ip)?;
        }
        let (start, end) = (start.unwrap_or(self.start), end.unwrap_or(self.end));
        if to_u128(start) > to_u128(end) {
            return Err(RangeError::Reversed { start, end });
        }
        Ok(Range { start, end, ..self })
    }

    pub fn start(&self) -> IpAddr {
        self.start
    }

    pub fn end(&self) -> IpAddr {
        self.end
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let v = to_u128(ip);
        ip.is_ipv4() == self.start.is_ipv4() && to_u128(self.start) <= v && v <= to_u128(self.end)
    }

    /// How many addresses the range holds (at least one; `end - start + 1`).
    fn size(&self) -> u128 {
        to_u128(self.end)
            .checked_sub(to_u128(self.start))
            .and_then(|d| d.checked_add(1))
            .unwrap_or(1)
    }

    /// The address `offset` places after the start, if inside the range.
    fn nth(&self, offset: u128) -> Option<IpAddr> {
        let v = to_u128(self.start).checked_add(offset)?;
        (v <= to_u128(self.end))
            .then(|| from_u128(v, self.start))
            .flatten()
    }

    /// Where allocation resumes: the offset after `last`, wrapping to the start.
    fn resume_offset(&self, last: Option<IpAddr>) -> u128 {
        match last {
            Some(l) if self.contains(l) => to_u128(l)
                .checked_sub(to_u128(self.start))
                .and_then(|d| d.checked_add(1))
                .map_or(0, |n| n % self.size()),
            _ => 0,
        }
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

/// Gives `path` exactly `mode`: a directory host-local made (0755, its lock file 0750) is
/// closed the first time podnet opens it.
fn restrict(path: &Path, mode: u32) -> Result<(), CniError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| io_err(format!("stat {}", path.display()), e))?;
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(format!("chmod {mode:o} {}", path.display()), e))
}

/// Replaces a small file's content by writing over it, truncating only when the new content is
/// shorter. host-local truncates to zero and writes (no fsync either); on ext4 that costs a
/// journal transaction and, for a file truncated to zero and written again, a flush when it is
/// closed (`auto_da_alloc`). Crash safety is no weaker: where host-local can leave the file
/// empty, this leaves the old or the new address (a hint for where to resume, either way).
fn write_in_place(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    f.write_all_at(content, 0)?;
    let len = content.len() as u64;
    if f.metadata()?.len() > len {
        f.set_len(len)?;
    }
    Ok(())
}

impl Store {
    /// Opens and locks a network's allocation directory. The directory is root's alone (0700,
    /// the lock file 0600): allocations are not other users' business.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        Store::open_with_timeout(data_dir, network, LOCK_TIMEOUT)
    }

    /// `open`, waiting at most `timeout` for the lock (code 11 naming the holder after that).
    pub fn open_with_timeout(
        data_dir: &Path,
        network: &str,
        timeout: Duration,
    ) -> Result<Store, CniError> {
        let dir = data_dir.join(network);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_err(format!("create {}", dir.display()), e))?;
        restrict(&dir, 0o700)?;
        let lock = Lock::acquire(&dir.join(LOCK), 0o600, Some(timeout)).map_err(|e| match e {
            LockError::Timeout { .. } => CniError::new(code::TRY_AGAIN_LATER, e.to_string()),
            e => CniError::new(code::IO, e.to_string()),
        })?;
        restrict(lock.path(), 0o600)?;
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
        write_in_place(&last, ip.to_string().as_bytes())
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
        let size = range.size();
        let first = range.resume_offset(self.last_reserved(range_id));
        for i in 0..size.min(1 << 24) {
            // (first + i) % size without overflow: first < size, i < size.
            let offset = match size - first {
                room if i < room => first + i,
                room => i - room,
            };
            let Some(ip) = range.nth(offset) else {
                break;
            };
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
        let mut buf = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let Some(ip) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            // DEL reads every allocation (as host-local does), so each read is kept to an open,
            // reads and a close: no size asked first, no `String` for the file's bytes.
            if read_small(&e.path(), &mut buf).is_err() {
                continue;
            }
            let Ok(content) = std::str::from_utf8(&buf) else {
                continue;
            };
            let (id, ifname) = owner(content);
            out.push((ip, id.to_string(), ifname.to_string()));
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
        let mut buf = Vec::new();
        if read_small(&path, &mut buf).is_err() {
            return false;
        }
        let Ok(content) = std::str::from_utf8(&buf) else {
            return false;
        };
        let (a_id, a_if) = owner(content);
        Store::matches(id, ifname, a_id, a_if) && std::fs::remove_file(&path).is_ok()
    }

    /// Releases everything the attachment holds; returns what it released.
    pub fn release(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.find(id, ifname)
            .into_iter()
            .filter(|ip| std::fs::remove_file(self.dir.join(ip.to_string())).is_ok())
            .collect()
    }
}

/// An allocation file's owner: (container ID, interface), the interface empty in files from
/// host-local versions before interface names.
fn owner(content: &str) -> (&str, &str) {
    let content = content.trim();
    let (id, ifname) = content
        .split_once(LINE_BREAK)
        .or_else(|| content.split_once('\n'))
        .unwrap_or((content, ""));
    (id.trim(), ifname.trim())
}

/// An allocation file's bytes (a container ID and an interface name, ~80 bytes); at most 4 KiB
/// are read, which no valid allocation reaches. `Take` reads without asking the file's size.
fn read_small(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    buf.clear();
    std::fs::File::open(path)?.take(4096).read_to_end(buf)?;
    Ok(())
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
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn bounds(subnet: &str) -> Result<(String, String), String> {
        Range::for_subnet(subnet.parse().unwrap(), None)
            .map(|r| (r.start().to_string(), r.end().to_string()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn range_maths_at_the_edges() {
        let ok = |a: &str, b: &str| Ok((a.to_string(), b.to_string()));
        assert_eq!(bounds("10.0.0.0/30"), ok("10.0.0.1", "10.0.0.2"));
        assert_eq!(bounds("10.244.3.7/24"), ok("10.244.3.1", "10.244.3.254"));
        assert_eq!(bounds("0.0.0.0/0"), ok("0.0.0.1", "255.255.255.254"));
        assert_eq!(
            bounds("255.255.255.252/30"),
            ok("255.255.255.253", "255.255.255.254")
        );
        assert_eq!(bounds("fd00::/126"), ok("fd00::1", "fd00::3"));
        let top = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126";
        assert_eq!(
            bounds(top),
            ok(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            )
        );
        assert_eq!(
            bounds("::/0"),
            ok("::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        // Before: /31, /32 and /128 panicked (subtraction overflow), 255.255.255.255/32 gave
        // 0.0.0.0-255.255.255.254, and a /127 a range holding only its gateway.
        for tiny in [
            "10.0.0.0/31",
            "10.0.0.0/32",
            "255.255.255.255/32",
            "fd00::/127",
            "fd00::/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        ] {
            let e = bounds(tiny).unwrap_err();
            assert!(
                e.contains("is too small for a gateway and a pod"),
                "{tiny}: {e}"
            );
        }
        assert_eq!(
            bounds("10.0.0.0/31").unwrap_err(),
            "10.0.0.0/31 is too small for a gateway and a pod (an IPv4 subnet needs a /30 or larger)"
        );
        assert!(
            bounds("fd00::/127")
                .unwrap_err()
                .contains("IPv6 subnet needs a /126")
        );
    }

    #[test]
    fn gateways_and_bounds_must_be_host_addresses() {
        let net: IpNet = "10.244.3.0/24".parse().unwrap();
        let err = |gw: &str| {
            Range::for_subnet(net, Some(ip(gw)))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("fd00::1"),
            "fd00::1 is not an IPv4 address, as 10.244.3.0/24 is"
        );
        let outside = "is not a host address of 10.244.3.0/24 (10.244.3.1-10.244.3.254)";
        for gw in ["10.244.4.1", "10.244.3.0", "10.244.3.255"] {
            assert_eq!(err(gw), format!("{gw} {outside}"));
        }
        let v6: IpNet = "fd00:1::/64".parse().unwrap();
        let e = Range::for_subnet(v6, Some(ip("10.0.0.1"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "10.0.0.1 is not an IPv6 address, as fd00:1::/64 is"
        );
        let r = Range::for_subnet(net, Some(ip("10.244.3.1"))).unwrap();
        let narrowed = r
            .clone()
            .with_bounds(Some(ip("10.244.3.10")), Some(ip("10.244.3.20")))
            .unwrap();
        assert_eq!(
            (narrowed.start(), narrowed.end()),
            (ip("10.244.3.10"), ip("10.244.3.20"))
        );
        assert_eq!(narrowed.gateway(), Some(ip("10.244.3.1")));
        let e = r
            .clone()
            .with_bounds(Some(ip("10.244.3.20")), Some(ip("10.244.3.10")));
        assert_eq!(
            e.unwrap_err().to_string(),
            "the range 10.244.3.20-10.244.3.10 ends before it starts"
        );
        let e = r
            .clone()
            .with_bounds(None, Some(ip("fd00::9")))
            .unwrap_err();
        assert!(matches!(e, RangeError::Family { .. }), "{e}");
        let e = r.with_bounds(Some(ip("10.244.3.0")), None).unwrap_err();
        assert!(matches!(e, RangeError::Outside { .. }), "{e}");
    }

    #[test]
    fn allocation_at_the_top_of_the_address_space_stays_inside() {
        let d = tmp();
        let s = Store::open(&d, "top").unwrap();
        let top: IpNet = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126"
            .parse()
            .unwrap();
        let r =
            Range::for_subnet(top, Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd"))).unwrap();
        let got: Vec<IpAddr> = (0..2)
            .map(|i| s.allocate(&format!("c{i}"), "eth0", &r, 0, None).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"),
                ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
            ]
        );
        assert_eq!(s.allocate("c9", "eth0", &r, 0, None).unwrap_err().code, 101);
        // A last-reserved file naming an address outside the range starts over at the start.
        std::fs::write(d.join("top/last_reserved_ip.0"), "10.0.0.1").unwrap();
        s.release("c0", "eth0");
        assert_eq!(s.allocate("c3", "eth0", &r, 0, None).unwrap(), got[0]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn host_local_layout_and_order() {
        let d = tmp();
        let s = Store::open(&d, "cbr0").unwrap();
        let r = range();
        assert_eq!(
            (r.start().to_string(), r.end().to_string()),
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
    fn last_reserved_is_written_in_place_with_host_locals_bytes() {
        let d = tmp();
        let s = Store::open(&d, "n").unwrap();
        let r = Range::for_subnet("10.244.3.0/24".parse().unwrap(), None).unwrap();
        let want = |ip: &str| s.allocate("c", "eth0", &r, 0, Some(ip.parse().unwrap()));
        let last = d.join("n/last_reserved_ip.0");
        want("10.244.3.200").unwrap();
        assert_eq!(std::fs::read(&last).unwrap(), b"10.244.3.200");
        // Shorter than what is there: no tail of the old address may remain.
        want("10.244.3.9").unwrap();
        assert_eq!(std::fs::read(&last).unwrap(), b"10.244.3.9");
        want("10.244.3.10").unwrap();
        assert_eq!(std::fs::read(&last).unwrap(), b"10.244.3.10");
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_store_is_roots_alone_and_a_held_lock_names_its_holder() {
        assert_eq!(LOCK_TIMEOUT, Duration::from_secs(60), "the product default");
        let d = tmp();
        let held = Store::open(&d, "n").unwrap();
        assert_eq!(mode(&d.join("n")), 0o700);
        assert_eq!(mode(&d.join("n/lock")), 0o600);
        // flock belongs to the open file description: a second open in this process contends.
        let e = Store::open_with_timeout(&d, "n", Duration::from_millis(50))
            .err()
            .unwrap();
        assert_eq!(e.code, 11, "{e}");
        assert!(e.msg.contains("is still held after 50ms"), "{}", e.msg);
        let holder = format!("by process {}", std::process::id());
        assert!(e.msg.contains(&holder), "{}", e.msg);
        drop(held);
        assert!(Store::open_with_timeout(&d, "n", Duration::from_millis(50)).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_left_open_by_host_local_is_closed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        // host-local 1.1.1 creates its directory 0755 and its lock file 0750.
        std::fs::create_dir_all(d.join("n")).unwrap();
        std::fs::set_permissions(d.join("n"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(d.join("n/lock"), "").unwrap();
        std::fs::set_permissions(d.join("n/lock"), std::fs::Permissions::from_mode(0o750)).unwrap();
        let _s = Store::open(&d, "n").unwrap();
        assert_eq!(mode(&d.join("n")), 0o700);
        assert_eq!(mode(&d.join("n/lock")), 0o600);
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

//! Pod addresses on disk in host-local's layout, so a node that ran flannel with host-local
//! keeps its allocations and can go back: `/var/lib/cni/networks/<network>/<ip>` holds
//! `<container ID>\r\n<interface>`, `last_reserved_ip.<range set>` the last address handed out,
//! and `lock` is flock'ed around every change. Allocation continues after the last reserved
//! address and wraps, skipping the gateway, as host-local does.
//!
//! A released address's file is not deleted but moved into `.spare/` (under a random name),
//! and the next reservation writes its owner over a spare's old one and moves it into place,
//! instead of making a file. Making a file allocates an inode, and deleting one frees it; on
//! ext4 without a journal the allocator then skips every inode freed in the last seconds,
//! reading each one's deletion time, so with pods coming and going each new file cost 0.15–0.3
//! ms, most of an ADD's file work (`find_inode_bit` → `recently_deleted` in `perf`). A move
//! changes two directory entries and frees nothing. There are never more spares than addresses
//! were ever held at once: a reservation makes a file only when no spare is left (and a spare
//! that cannot be moved is removed). A node can still go back to host-local: it makes and
//! reserves files named by address only. Its walks of the directory read the spares too, and
//! one whose old owner matches a container ID can be removed by its release of that container
//! (which costs a spare) or counted by its CHECK of it; the container is one podnet released,
//! gone by then.

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
/// Released allocation files, for the next reservations to take.
const SPARES: &str = ".spare";
/// How many spares a reservation tries before it makes a file (one taken by no one else
/// holding the store's lock never fails; a spare removed behind our back is skipped).
const SPARE_TRIES: usize = 4;
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

/// Writes `content` over a file's old content: in place, then cut to its length.
fn overwrite(f: &std::fs::File, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.write_all_at(content, 0)?;
    f.set_len(content.len() as u64)
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

    /// Claims `ip` for the attachment; `Ok(false)` if it is taken. The file is a spare, given
    /// the owner and moved into place, when there is one, else a new one; either way it
    /// appears with its owner written, and its creation (or the move) fails when the
    /// address's file exists, as host-local's `O_EXCL` does.
    fn reserve(
        &self,
        ip: IpAddr,
        id: &str,
        ifname: &str,
        range_id: usize,
    ) -> Result<bool, CniError> {
        let path = self.dir.join(ip.to_string());
        // Taken: every writer holds the store's lock, so it stays so (the exclusive creation
        // and move below would say the same, at the cost of a spare's work).
        if std::fs::symlink_metadata(&path).is_ok() {
            return Ok(false);
        }
        let owner = format!("{}{LINE_BREAK}{ifname}", id.trim());
        let made = match self.take_spare(&path, owner.as_bytes()) {
            Ok(true) => Ok(()),
            Ok(false) => match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => f.write_all(owner.as_bytes()).inspect_err(|_| {
                    let _ = std::fs::remove_file(&path);
                }),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(format!("write {}", path.display()), e)),
        }
        let last = self.dir.join(format!("{LAST_RESERVED}{range_id}"));
        write_in_place(&last, ip.to_string().as_bytes())
            .map_err(|e| io_err(format!("write {}", last.display()), e))?;
        Ok(true)
    }

    /// Gives a spare the owner `content` and moves it to `path`: `Ok(true)` when one was
    /// moved, `Ok(false)` when there is none to take, `AlreadyExists` when `path` is there
    /// (the address is taken). A spare that cannot be written or moved (a file system without
    /// `RENAME_NOREPLACE`, say) is removed, so spares never pile up unused.
    fn take_spare(&self, path: &Path, content: &[u8]) -> std::io::Result<bool> {
        let Ok(spares) = std::fs::read_dir(self.dir.join(SPARES)) else {
            return Ok(false);
        };
        let files = spares
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()));
        for spare in files.take(SPARE_TRIES) {
            let spare = spare.path();
            let moved = OpenOptions::new()
                .write(true)
                .open(&spare)
                .and_then(|f| overwrite(&f, content))
                .and_then(|()| crate::util::files::rename_noreplace(&spare, path));
            match moved {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(e),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    let _ = std::fs::remove_file(&spare);
                }
            }
        }
        Ok(false)
    }

    /// Gives up the allocation file of `ip`: moved among the spares or, where it cannot be,
    /// removed as host-local does. Whether the address is free now.
    fn give_up(&self, ip: IpAddr) -> bool {
        let path = self.dir.join(ip.to_string());
        let spares = self.dir.join(SPARES);
        let name = u64::from_ne_bytes(crate::kernel::random_bytes());
        let spare = spares.join(format!("free-{name:016x}"));
        let moved = std::fs::rename(&path, &spare).or_else(|e| {
            if e.kind() != std::io::ErrorKind::NotFound || spares.is_dir() {
                return Err(e);
            }
            std::fs::DirBuilder::new().mode(0o700).create(&spares)?;
            std::fs::rename(&path, &spare)
        });
        moved.is_ok() || std::fs::remove_file(&path).is_ok()
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
        Store::matches(id, ifname, a_id, a_if) && self.give_up(ip)
    }

    /// Releases everything the attachment holds; returns what it released.
    pub fn release(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        self.find(id, ifname)
            .into_iter()
            .filter(|ip| self.give_up(*ip))
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

    fn inode(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    /// The spares' inodes, sorted; directories among them as `None`.
    fn spares(d: &Path) -> Vec<Option<u64>> {
        use std::os::unix::fs::MetadataExt;
        let mut v: Vec<Option<u64>> = std::fs::read_dir(d.join("cbr0/.spare"))
            .map(|r| {
                r.map(|e| e.unwrap().metadata().unwrap())
                    .map(|m| m.is_file().then(|| m.ino()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn a_released_file_is_kept_and_taken_by_the_next_reservation() {
        let d = tmp();
        let s = Store::open(&d, "cbr0").unwrap();
        let r = range();
        let a = s.allocate("ctr-a", "eth0", &r, 0, None).unwrap();
        let b = s.allocate("ctr-b", "eth0", &r, 0, None).unwrap();
        let a_file = d.join(format!("cbr0/{a}"));
        let a_inode = inode(&a_file);
        // Another attachment's release leaves it alone.
        assert!(!s.release_ip(a, "ctr-b", "eth0"));
        assert!(s.release_ip(a, "ctr-a", "eth0"));
        assert!(!a_file.exists());
        assert_eq!(spares(&d), vec![Some(a_inode)]);
        // Spares are no allocations.
        let held: Vec<IpAddr> = s.allocations().into_iter().map(|x| x.0).collect();
        assert_eq!(held, vec![b]);
        // The next address reserved is the spare, moved: same inode, the new owner's bytes
        // alone, though the old owner's were longer.
        let c = s.allocate("ctr-c", "eth1", &r, 0, None).unwrap();
        let c_file = d.join(format!("cbr0/{c}"));
        assert_eq!(inode(&c_file), a_inode);
        assert_eq!(std::fs::read_to_string(&c_file).unwrap(), "ctr-c\r\neth1");
        assert_eq!(spares(&d), vec![]);
        // An address in use stays refused with a spare at hand, and the spare stays.
        let b_inode = inode(&d.join(format!("cbr0/{b}")));
        assert_eq!(s.release("ctr-b", "eth0"), vec![b]);
        let e = s.allocate("ctr-d", "eth0", &r, 0, Some(c)).unwrap_err();
        assert!(e.msg.contains("already allocated to ctr-c"), "{}", e.msg);
        assert_eq!(spares(&d), vec![Some(b_inode)]);
        // A directory among the spares is skipped; the file is taken.
        std::fs::create_dir(d.join("cbr0/.spare/not-a-file")).unwrap();
        let f = s
            .allocate("a-much-longer-container-id", "eth0", &r, 0, None)
            .unwrap();
        let f_file = d.join(format!("cbr0/{f}"));
        assert_eq!(inode(&f_file), b_inode);
        assert_eq!(
            std::fs::read_to_string(&f_file).unwrap(),
            "a-much-longer-container-id\r\neth0"
        );
        assert_eq!(spares(&d), vec![None]);
        // With no spare left, a reservation makes a file.
        let g = s.allocate("ctr-g", "eth0", &r, 0, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join(format!("cbr0/{g}"))).unwrap(),
            "ctr-g\r\neth0"
        );
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

//! Routes, neighbours and FDB entries read straight from the kernel's bytes.
//!
//! The safety-net pass and the event stream see every one of podnet's objects; decoding them
//! through `netlink-packet-route` would allocate a vector of attributes per object. These few
//! fixed layouts (`struct rtmsg`, `struct ndmsg`, then `struct rtattr`s) are read in place
//! instead, into the same `Route`, `Neighbour` and `Fdb` values the rest of podnet uses, with
//! nothing allocated. What is read matches `parse_route`, `parse_neighbour` and `parse_fdb`
//! field for field (a unit test holds them together).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{Fdb, Link, Neighbour, Route};
use crate::kernel::Mac;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_DELNEIGH: u16 = 29;

pub const AF_INET: u8 = libc::AF_INET as u8;
pub const AF_INET6: u8 = libc::AF_INET6 as u8;
pub const AF_BRIDGE: u8 = libc::AF_BRIDGE as u8;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RTNH_F_ONLINK: u32 = 4;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_PERMANENT: u16 = 0x80;
const NTF_SELF: u8 = 0x02;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_GROUP: u16 = 27;
const IFLA_INFO_KIND: u16 = 1;
const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;
/// `nla_type` without the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One netlink message in a datagram: its header fields and payload.
pub struct RawMessage<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
    pub payload: &'a [u8],
    /// The whole message, header included.
    pub bytes: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The messages packed in one datagram; stops at the first whose framing is broken.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = RawMessage<'_>> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let b = buf.get(offset..)?;
        let len = u32_at(b, 0)? as usize;
        if len < 16 || len > b.len() {
            return None;
        }
        offset += (len + 3) & !3;
        Some(RawMessage {
            kind: u16_at(b, 4)?,
            flags: u16_at(b, 6)?,
            seq: u32_at(b, 8)?,
            port: u32_at(b, 12)?,
            payload: &b[16..len],
            bytes: &b[..len],
        })
    })
}

/// The error code of an `NLMSG_ERROR` message's payload: 0 for an acknowledgement, a negative
/// errno otherwise (0 also for a payload too short to hold one).
pub fn error_code(p: &[u8]) -> i32 {
    p.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .unwrap_or(0)
}

/// The attributes after a fixed header, as (type, value).
pub fn attributes(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let a = b.get(offset..)?;
        let len = u16_at(a, 0)? as usize;
        if len < 4 || len > a.len() {
            return None;
        }
        offset += (len + 3) & !3;
        Some((u16_at(a, 2)? & NLA_TYPE_MASK, &a[4..len]))
    })
}

fn ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

/// A NUL-terminated string attribute.
fn text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).ok().map(str::to_string)
}

/// A link message's payload (`struct ifinfomsg` and attributes), for the one link the kernel
/// echoes when it creates it (`RTM_NEWLINK` with `NLM_F_ECHO`): that message carries every
/// counter and per-family table of the new device (~1.5 KB), all of which `parse_link` would
/// decode first. Read here: what `parse_link` reads except the VXLAN and bridge-port data
/// (`vxlan`, `hairpin` stay `None`), which no echo of a new link needs.
pub fn link(p: &[u8]) -> Option<Link> {
    let flags = u32_at(p, 8)?;
    let mut link = Link::blank(
        u32_at(p, 4)?,
        flags & IFF_UP != 0,
        flags & IFF_LOWER_UP != 0,
    );
    for (kind, v) in attributes(p.get(16..)?) {
        match kind {
            IFLA_IFNAME => link.name = text(v)?,
            IFLA_MTU => link.mtu = u32_at(v, 0)?,
            IFLA_ADDRESS => link.mac = Mac::from_slice(v),
            IFLA_MASTER => link.master = u32_at(v, 0),
            IFLA_LINK => link.parent = u32_at(v, 0),
            IFLA_GROUP => link.group = u32_at(v, 0)?,
            IFLA_IFALIAS => link.alias = text(v).filter(|a| !a.is_empty()),
            IFLA_AF_SPEC => link.ipv6 = attributes(v).any(|(f, _)| f == u16::from(AF_INET6)),
            IFLA_LINKINFO => {
                link.kind = attributes(v)
                    .find(|(k, _)| *k == IFLA_INFO_KIND)
                    .and_then(|(_, k)| text(k));
            }
            _ => {}
        }
    }
    Some(link)
}

/// A route message's payload (`struct rtmsg` and attributes).
pub fn route(p: &[u8]) -> Option<Route> {
    if p.len() < 12 {
        return None;
    }
    let unspecified = match p[0] {
        AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut r = Route {
        dst: IpNet::new(unspecified, 0).ok()?,
        gateway: None,
        oif: None,
        table: u32::from(p[4]),
        protocol: p[5],
        scope: p[6],
        kind: p[7],
        onlink: u32_at(p, 8)? & RTNH_F_ONLINK != 0,
        metric: None,
        prefsrc: None,
    };
    let mut dst = unspecified;
    for (kind, v) in attributes(&p[12..]) {
        match kind {
            RTA_DST => dst = ip(v)?,
            RTA_GATEWAY => r.gateway = ip(v),
            RTA_OIF => r.oif = u32_at(v, 0),
            RTA_PRIORITY => r.metric = u32_at(v, 0),
            RTA_PREFSRC => r.prefsrc = ip(v),
            RTA_TABLE => r.table = u32_at(v, 0)?,
            _ => {}
        }
    }
    r.dst = IpNet::new(dst, p[1]).ok()?;
    Some(r)
}

/// What a neighbour message (`struct ndmsg` and attributes) describes: an ARP/NDP entry, or for
/// `AF_BRIDGE` a forwarding-database entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeighbourEntry {
    Neighbour(Neighbour),
    Fdb(Fdb),
}

pub fn neighbour(p: &[u8]) -> Option<NeighbourEntry> {
    if p.len() < 12 {
        return None;
    }
    let index = u32_at(p, 4)?;
    let permanent = u16_at(p, 8)? == NUD_PERMANENT;
    let mut dst = None;
    let mut mac = None;
    for (kind, v) in attributes(&p[12..]) {
        match kind {
            NDA_DST => dst = ip(v),
            NDA_LLADDR => mac = Mac::from_slice(v),
            _ => {}
        }
    }
    match p[0] {
        AF_INET | AF_INET6 => Some(NeighbourEntry::Neighbour(Neighbour {
            index,
            ip: dst?,
            mac,
            permanent,
        })),
        AF_BRIDGE => Some(NeighbourEntry::Fdb(Fdb {
            index,
            mac: mac?,
            dst,
            permanent,
            own: p[10] & NTF_SELF != 0,
        })),
        _ => None,
    }
}

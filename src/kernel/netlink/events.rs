//! The kernel's notifications about links, addresses, routes, neighbours and FDB entries, for
//! finding drift as it happens (`ip monitor link address route neigh`).
//!
//! One socket joins every group; a batch is everything queued when the first notification
//! wakes the reader. Route, neighbour and FDB notifications are decoded in place (`raw`), so a
//! storm of them costs no allocation per object. Notifications caused by one of our own sockets
//! carry its port id and can be left out (`ignore_port`): podnet's own changes echo back
//! otherwise. A receive buffer that overflowed (ENOBUFS) means notifications were lost; the
//! batch says so and the caller reads the kernel afresh.

use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::RouteNetlinkMessage;

use super::raw::{self, NeighbourEntry};
use super::{Addr, Fdb, Link, Neighbour, Route, Subscription};
use crate::kernel::KernelError;

/// Multicast groups (`RTNLGRP_*`).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// Something in the kernel appeared or changed (`gone: false`), or disappeared (`gone: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Link { gone: bool, link: Link },
    Addr { gone: bool, addr: Addr },
    Route { gone: bool, route: Route },
    Neighbour { gone: bool, neighbour: Neighbour },
    Fdb { gone: bool, fdb: Fdb },
}

/// A batch of notifications.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<KernelEvent>,
    /// The kernel dropped notifications (ENOBUFS): the events are not the whole story.
    pub overflowed: bool,
}

/// Notifications about links, addresses and routes (both families), neighbours and FDB entries
/// of the namespace the subscription was made in.
pub struct KernelEvents {
    sub: Subscription,
    ignore_port: Option<u32>,
}

impl KernelEvents {
    /// Subscribes in the calling thread's namespace; notifications of changes made through the
    /// socket with port id `ignore_port` are left out.
    pub fn subscribe(ignore_port: Option<u32>) -> Result<KernelEvents, KernelError> {
        let groups = [
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            // The IPv6 address of flannel-v6.<VNI>, and the external interface's.
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV6_ROUTE,
        ];
        let sub = Subscription::open(&groups, "kernel events")?;
        Ok(KernelEvents { sub, ignore_port })
    }

    /// Blocks until a notification arrives, then takes every one already queued.
    pub fn recv(&mut self) -> Result<Batch, KernelError> {
        let mut batch = Batch::default();
        let mut wait = true;
        loop {
            match self.sub.recv_raw(wait) {
                Ok(true) => {}
                Ok(false) => return Ok(batch),
                Err(e) if e.errno() == Some(libc::ENOBUFS) => {
                    batch.overflowed = true;
                    return Ok(batch);
                }
                Err(e) => return Err(e),
            }
            wait = false;
            for m in raw::messages(&self.sub.buf) {
                if self.ignore_port.is_some_and(|p| p == m.port) {
                    continue;
                }
                if let Some(e) = decode(&m) {
                    batch.events.push(e);
                }
            }
        }
    }
}

fn decode(m: &raw::RawMessage<'_>) -> Option<KernelEvent> {
    match m.kind {
        raw::RTM_NEWROUTE | raw::RTM_DELROUTE => Some(KernelEvent::Route {
            gone: m.kind == raw::RTM_DELROUTE,
            route: raw::route(m.payload)?,
        }),
        raw::RTM_NEWNEIGH | raw::RTM_DELNEIGH => {
            let gone = m.kind == raw::RTM_DELNEIGH;
            Some(match raw::neighbour(m.payload)? {
                NeighbourEntry::Neighbour(neighbour) => KernelEvent::Neighbour { gone, neighbour },
                NeighbourEntry::Fdb(fdb) => KernelEvent::Fdb { gone, fdb },
            })
        }
        raw::RTM_NEWLINK | raw::RTM_DELLINK | raw::RTM_NEWADDR | raw::RTM_DELADDR => decode_rare(m),
        _ => None,
    }
}

/// Links and addresses: few, and with nested attributes, so decoded the ordinary way.
fn decode_rare(m: &raw::RawMessage<'_>) -> Option<KernelEvent> {
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(m.bytes).ok()?;
    let netlink_packet_core::NetlinkPayload::InnerMessage(inner) = msg.payload else {
        return None;
    };
    match inner {
        RouteNetlinkMessage::NewLink(l) => Some(KernelEvent::Link {
            gone: false,
            link: super::parse_link(&l),
        }),
        RouteNetlinkMessage::DelLink(l) => Some(KernelEvent::Link {
            gone: true,
            link: super::parse_link(&l),
        }),
        RouteNetlinkMessage::NewAddress(a) => Some(KernelEvent::Addr {
            gone: false,
            addr: super::parse_addr(&a)?,
        }),
        RouteNetlinkMessage::DelAddress(a) => Some(KernelEvent::Addr {
            gone: true,
            addr: super::parse_addr(&a)?,
        }),
        _ => None,
    }
}

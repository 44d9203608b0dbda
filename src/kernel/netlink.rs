//! rtnetlink: links, addresses, routes, neighbours and FDB entries.
//!
//! A `Netlink` is a plain blocking socket bound to the namespace it was opened in
//! (`Netlink::open_in` opens it inside another namespace with `NetNs::socket_in`: the calling
//! thread enters that namespace for the one `socket` call and comes back). Messages are
//! built with `netlink-packet-route`; this file is the only one that knows its types, so a
//! version bump touches nothing else.
//!
//! `apply` pipelines many changes: requests are packed several to a `send`, the kernel handles
//! them in order and answers each with an ack, and a failure of one does not stop the others. That
//! is what lets a node program thousands of peers in a fraction of what one `ip` call per object
//! costs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_ECHO, NLM_F_EXCL, NLM_F_MULTIPART,
    NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::netns::NetNs;
use super::{KernelError, Mac};

mod events;
pub(in crate::kernel) mod raw;

pub use events::{Batch, KernelEvent, KernelEvents};

/// Main routing table.
pub const TABLE_MAIN: u32 = 254;
/// Route scopes (rtm_scope).
pub const SCOPE_UNIVERSE: u8 = 0;
pub const SCOPE_LINK: u8 = 253;
pub const SCOPE_HOST: u8 = 254;
/// Route types (rtm_type).
pub const RTN_UNICAST: u8 = 1;
pub const RTN_LOCAL: u8 = 2;
pub const RTN_BLACKHOLE: u8 = 6;
/// Route protocols (rtm_protocol) that mean "not ours".
pub const RTPROT_KERNEL: u8 = 2;
pub const RTPROT_BOOT: u8 = 3;
pub const RTPROT_STATIC: u8 = 4;

/// Multicast group for link notifications (RTNLGRP_LINK).
const RTNLGRP_LINK: u32 = 1;

/// Requests packed into one `send`; also bounds the acks queued in the receive buffer.
const BATCH_MESSAGES: usize = 256;
const BATCH_BYTES: usize = 64 * 1024;
/// The kernel fills dump replies up to the size of the buffer we receive into, so this bounds
/// the memory a big dump touches; single messages are far smaller.
const RECV_BUF: usize = 256 * 1024;
const SOCKET_RCVBUF: usize = 8 << 20;
const DUMP_RETRIES: usize = 8;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `vxlan`, `tun`, ...); `None` for plain devices.
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Option<Mac>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Lower layer up (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// Index of the bridge this link is a port of.
    pub master: Option<u32>,
    /// Index of the parent link (for veth: the peer's index, which may be in another namespace).
    pub parent: Option<u32>,
    pub vxlan: Option<Vxlan>,
    /// Bridge port option, when this link is a bridge port.
    pub hairpin: Option<bool>,
    /// Link group (`ip link set ... group N`).
    pub group: u32,
    /// `IFLA_IFALIAS` (`ip link set ... alias TEXT`); `None` when unset or empty.
    pub alias: Option<String>,
    /// The link has IPv6 (the kernel reports its IPv6 settings); a node booted without IPv6,
    /// or a link with an MTU under 1280, has none.
    pub ipv6: bool,
}

impl Link {
    /// A link's header alone, before its attributes are read (`parse_link`, `raw::link`).
    pub(crate) fn blank(index: u32, up: bool, lower_up: bool) -> Link {
        Link {
            index,
            name: String::new(),
            kind: None,
            mtu: 0,
            mac: None,
            up,
            lower_up,
            master: None,
            parent: None,
            vxlan: None,
            hairpin: None,
            group: 0,
            alias: None,
            ipv6: false,
        }
    }
}

/// The VXLAN attributes podnet cares about, both for creating a device and for comparing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// UDP destination port; 0 lets the kernel pick its default (8472).
    pub port: u16,
    pub local: Option<IpAddr>,
    /// Index of the underlay device.
    pub dev: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
}

/// What kind of link to create.
#[derive(Debug)]
pub enum NewLinkKind<'a> {
    Bridge,
    /// A veth pair; the peer is created directly in `peer_ns` when given. `queues` sets both
    /// ends' transmit and receive queue counts (`IFLA_NUM_TX_QUEUES`/`IFLA_NUM_RX_QUEUES`);
    /// `None` leaves the kernel's default, one of each per possible CPU.
    Veth {
        peer: &'a str,
        peer_ns: Option<&'a NetNs>,
        peer_mac: Option<Mac>,
        queues: Option<u32>,
    },
    Vxlan(Vxlan),
    /// A kernel WireGuard device (configured afterwards over generic netlink).
    Wireguard,
}

/// Parameters of a new link.
#[derive(Debug)]
pub struct NewLink<'a> {
    pub name: &'a str,
    pub kind: NewLinkKind<'a>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub master: Option<u32>,
    pub up: bool,
}

/// Changes to an existing link; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct LinkChange<'a> {
    pub up: Option<bool>,
    pub mtu: Option<u32>,
    /// `Some(0)` removes the link from its bridge.
    pub master: Option<u32>,
    pub name: Option<&'a str>,
    pub mac: Option<Mac>,
    /// Move the link into this namespace.
    pub netns: Option<&'a NetNs>,
    /// Bridge port option (only for links that are bridge ports).
    pub hairpin: Option<bool>,
    pub group: Option<u32>,
    /// `IFLA_IFALIAS`, at most 254 bytes (the kernel's 255 with the NUL sent after it). Only a
    /// change sets it: the kernel ignores it in a request that creates a link.
    pub alias: Option<&'a str>,
    /// Whether the link makes itself an IPv6 link-local address when it comes up
    /// (`IFLA_INET6_ADDR_GEN_MODE`: EUI-64 or none). Only for a link with IPv6 (`Link::ipv6`):
    /// the kernel refuses the whole request for one without.
    pub link_local6: Option<bool>,
}

/// An interface address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Addr {
    pub index: u32,
    /// Address with its prefix length (e.g. 10.244.1.1/24).
    pub net: IpNet,
}

/// A route. The same struct describes what to install and what was dumped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
    pub onlink: bool,
    pub metric: Option<u32>,
    pub prefsrc: Option<IpAddr>,
}

/// The first of `n` consecutive sequence numbers after `current`: never 0 (the kernel's own
/// messages carry 0), never wrapping past `u32::MAX` in between.
fn seq_block_start(current: u32, n: usize) -> u32 {
    let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    match current.checked_add(n) {
        Some(_) => current + 1,
        None => 1,
    }
}

impl Route {
    /// A unicast route in the main table with universe scope.
    pub fn unicast(dst: IpNet, protocol: u8) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            table: TABLE_MAIN,
            protocol,
            scope: SCOPE_UNIVERSE,
            kind: RTN_UNICAST,
            onlink: false,
            metric: None,
            prefsrc: None,
        }
    }
}

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

/// A forwarding-database entry of a bridge or VXLAN device (`bridge fdb`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fdb {
    pub index: u32,
    pub mac: Mac,
    /// Remote VTEP address (VXLAN).
    pub dst: Option<IpAddr>,
    pub permanent: bool,
    /// Entry of the device itself (`self`) rather than of a bridge master.
    pub own: bool,
}

/// One change for `Netlink::apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Bring a link up.
    LinkUp(u32),
    /// Add an address (one already there is replaced, which counts as done).
    AddAddr(Addr),
    ReplaceRoute(Route),
    DelRoute(Route),
    ReplaceNeighbour(Neighbour),
    DelNeighbour(Neighbour),
    ReplaceFdb(Fdb),
    DelFdb(Fdb),
}

fn show<T: fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

impl fmt::Display for Route {
    /// As `ip route` would say it, with the device by index: `10.244.2.0/24 via 10.244.2.0 dev #5 onlink`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} lladdr {}", self.ip, show(self.mac))
    }
}

impl fmt::Display for Fdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dst {}", self.mac, show(self.dst))
    }
}

impl fmt::Display for Change {
    /// What the change does, for errors and logs: `replace route 10.244.2.0/24 via ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self {
            Change::LinkUp(_) => "bring up",
            Change::AddAddr(_) => "add",
            Change::ReplaceRoute(_) | Change::ReplaceNeighbour(_) | Change::ReplaceFdb(_) => {
                "replace"
            }
            Change::DelRoute(_) | Change::DelNeighbour(_) | Change::DelFdb(_) => "delete",
        };
        write!(f, "{verb} {}", self.subject())
    }
}

impl Change {
    /// The object the change is about: `route 10.244.2.0/24 via ...`, `neighbour ...`, `fdb ...`.
    pub fn subject(&self) -> String {
        match self {
            Change::LinkUp(i) => format!("link #{i}"),
            Change::AddAddr(a) => format!("address {}", a.net),
            Change::ReplaceRoute(r) | Change::DelRoute(r) => format!("route {r}"),
            Change::ReplaceNeighbour(n) | Change::DelNeighbour(n) => format!("neighbour {n}"),
            Change::ReplaceFdb(x) | Change::DelFdb(x) => format!("fdb {x}"),
        }
    }

    /// Whether the change removes its object (else it installs or brings it up).
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Change::DelRoute(_) | Change::DelNeighbour(_) | Change::DelFdb(_)
        )
    }

    fn message(&self) -> (RouteNetlinkMessage, u16) {
        const REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;
        match self {
            Change::LinkUp(i) => {
                let mut msg = LinkMessage::default();
                msg.header.index = *i;
                msg.header.flags = LinkFlags::Up;
                msg.header.change_mask = LinkFlags::Up;
                (RouteNetlinkMessage::NewLink(msg), 0)
            }
            Change::AddAddr(a) => (
                RouteNetlinkMessage::NewAddress(addr_message(a.index, a.net)),
                REPLACE,
            ),
            Change::ReplaceRoute(r) => (RouteNetlinkMessage::NewRoute(route_message(r)), REPLACE),
            Change::DelRoute(r) => (RouteNetlinkMessage::DelRoute(route_message(r)), 0),
            Change::ReplaceNeighbour(n) => (
                RouteNetlinkMessage::NewNeighbour(neighbour_message(n)),
                REPLACE,
            ),
            Change::DelNeighbour(n) => (RouteNetlinkMessage::DelNeighbour(neighbour_message(n)), 0),
            Change::ReplaceFdb(f) => (RouteNetlinkMessage::NewNeighbour(fdb_message(f)), REPLACE),
            Change::DelFdb(f) => (RouteNetlinkMessage::DelNeighbour(fdb_message(f)), 0),
        }
    }
}

/// A blocking rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    port: u32,
}

impl Netlink {
    /// A socket in the calling thread's namespace.
    pub fn open() -> Result<Netlink, KernelError> {
        let socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| KernelError::io("open netlink socket", e))?;
        Netlink::with_socket(socket)
    }

    fn with_socket(mut socket: Socket) -> Result<Netlink, KernelError> {
        let port = socket
            .bind_auto()
            .map_err(|e| KernelError::io("bind netlink socket", e))?
            .port_number();
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| KernelError::io("connect netlink socket", e))?;
        // Extended acks make the kernel explain rejected requests; older kernels may refuse.
        let _ = socket.set_ext_ack(true);
        set_rcvbuf(socket.as_raw_fd(), SOCKET_RCVBUF);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            port,
        })
    }

    /// The socket's port id: the kernel's notifications of changes made through this socket
    /// carry it.
    pub fn port_id(&self) -> u32 {
        self.port
    }

    /// A socket bound to another namespace (`NetNs::socket_in`: the calling thread is back in
    /// its own before this returns).
    pub fn open_in(ns: &NetNs) -> Result<Netlink, KernelError> {
        let fd = ns.socket_in(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM,
            NETLINK_ROUTE as libc::c_int,
        )?;
        // SAFETY: a fresh netlink socket, owned by nothing else from here on.
        let socket = unsafe { Socket::from_raw_fd(fd.into_raw_fd()) };
        Netlink::with_socket(socket)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Makes the next `n` sequence numbers consecutive (`apply` finds a reply's change by its
    /// distance from the first): near the top of the range, starts again from 1.
    fn reserve_seqs(&mut self, n: usize) -> u32 {
        self.seq = seq_block_start(self.seq, n) - 1;
        self.seq + 1
    }

    fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let start = out.len();
        out.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut out[start..]);
    }

    fn send_buf(&self, op: &str, data: &[u8]) -> Result<(), KernelError> {
        self.socket
            .send(data, 0)
            .map_err(|e| KernelError::io(format!("{op}: send netlink request"), e))?;
        Ok(())
    }

    /// Receives one datagram and returns the messages in it.
    fn recv_messages(
        &mut self,
        op: &str,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, KernelError> {
        recv_datagram(&self.socket, &mut self.buf, op)?;
        split_messages(&self.buf)
            .map(|m| m.map_err(|e| KernelError::decode(op, e)))
            .collect()
    }

    /// Sends one request and waits for its acknowledgement.
    fn exec(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), KernelError> {
        let seq = self.submit(op, msg, flags)?;
        self.wait_ack(op, seq)
    }

    /// Sends one request asking for an acknowledgement, and returns its sequence number.
    fn submit(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<u32, KernelError> {
        let seq = self.next_seq();
        let mut data = Vec::with_capacity(256);
        Netlink::encode(msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq, &mut data);
        self.send_buf(op, &data)?;
        Ok(seq)
    }

    /// Waits for the acknowledgement of request `seq` (replies to others are skipped).
    fn wait_ack(&mut self, op: &str, seq: u32) -> Result<(), KernelError> {
        self.raw_replies(op, seq, &mut |_| {})
    }

    /// Hands each reply to request `seq` to `visit`, read in place, until its acknowledgement
    /// (replies to other requests are skipped); the acknowledgement's error, if any.
    fn raw_replies(
        &mut self,
        op: &str,
        seq: u32,
        visit: &mut dyn FnMut(&raw::RawMessage<'_>),
    ) -> Result<(), KernelError> {
        loop {
            recv_datagram(&self.socket, &mut self.buf, op)?;
            for m in raw::messages(&self.buf).filter(|m| m.seq == seq) {
                if m.kind == raw::NLMSG_ERROR {
                    return match raw::error_code(m.payload) {
                        0 => Ok(()),
                        c => Err(KernelError::netlink(op, -c)),
                    };
                }
                visit(&m);
            }
        }
    }

    /// Sends a request that answers with data (not a dump) and returns the reply messages.
    fn query(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, KernelError> {
        let seq = self.next_seq();
        let mut data = Vec::with_capacity(256);
        Netlink::encode(msg, NLM_F_REQUEST | NLM_F_ACK, seq, &mut data);
        self.send_buf(op, &data)?;
        let mut replies = Vec::new();
        loop {
            for m in self.recv_messages(op)? {
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(KernelError::netlink(op, -code.get())),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// Dumps a table; restarts when the kernel reports the dump was interrupted by a change.
    fn dump(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, KernelError> {
        for _ in 0..DUMP_RETRIES {
            let seq = self.next_seq();
            let mut data = Vec::with_capacity(256);
            Netlink::encode(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP, seq, &mut data);
            self.send_buf(op, &data)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                for m in self.recv_messages(op)? {
                    if m.header.sequence_number != seq {
                        continue;
                    }
                    if m.header.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.payload {
                        NetlinkPayload::InnerMessage(inner) => out.push(inner),
                        NetlinkPayload::Done(_) => break 'recv,
                        NetlinkPayload::Error(e) => match e.code {
                            None => break 'recv,
                            Some(code) => return Err(KernelError::netlink(op, -code.get())),
                        },
                        _ => {}
                    }
                    if m.header.flags & NLM_F_MULTIPART == 0 {
                        break 'recv;
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(KernelError::netlink(op, libc::EINTR))
    }

    /// Dumps a table and hands the payload of each message of the answer to `visit`, without
    /// collecting them. `Ok(false)` when the kernel says a change interrupted the dump: what
    /// was visited is then a mix of before and after, and the caller starts again.
    fn visit_dump(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        visit: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, KernelError> {
        let seq = self.next_seq();
        let mut data = Vec::with_capacity(64);
        Netlink::encode(msg, NLM_F_REQUEST | NLM_F_DUMP, seq, &mut data);
        self.send_buf(op, &data)?;
        let mut interrupted = false;
        loop {
            recv_datagram(&self.socket, &mut self.buf, op)?;
            for m in raw::messages(&self.buf) {
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.kind {
                    raw::NLMSG_DONE => return Ok(!interrupted),
                    raw::NLMSG_ERROR => {
                        return match raw::error_code(m.payload) {
                            0 => Ok(!interrupted),
                            c => Err(KernelError::netlink(op, -c)),
                        };
                    }
                    _ => visit(m.payload),
                }
                if m.flags & NLM_F_MULTIPART == 0 {
                    return Ok(!interrupted);
                }
            }
        }
    }

    /// Visits every route of both families in all tables, allocating nothing per route;
    /// `Ok(false)` when a change interrupted the dump (start again).
    pub fn visit_routes(&mut self, f: &mut dyn FnMut(&Route)) -> Result<bool, KernelError> {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let mut visit = |p: &[u8]| {
                if let Some(r) = raw::route(p) {
                    f(&r)
                }
            };
            if !self.visit_dump(
                "dump routes",
                RouteNetlinkMessage::GetRoute(msg),
                &mut visit,
            )? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Visits every neighbour entry (ARP and NDP) and, for `AF_BRIDGE`, every FDB entry, as
    /// `visit_routes` does.
    fn visit_neigh_families(
        &mut self,
        families: &[AddressFamily],
        f: &mut dyn FnMut(raw::NeighbourEntry),
    ) -> Result<bool, KernelError> {
        for family in families {
            let mut msg = NeighbourMessage::default();
            msg.header.family = *family;
            let mut visit = |p: &[u8]| {
                if let Some(n) = raw::neighbour(p) {
                    f(n)
                }
            };
            let get = RouteNetlinkMessage::GetNeighbour(msg);
            if !self.visit_dump("dump neighbours", get, &mut visit)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Visits every neighbour entry (ARP and NDP), as `visit_routes` does.
    pub fn visit_neighbours(&mut self, f: &mut dyn FnMut(&Neighbour)) -> Result<bool, KernelError> {
        let families = [AddressFamily::Inet, AddressFamily::Inet6];
        self.visit_neigh_families(&families, &mut |e| {
            if let raw::NeighbourEntry::Neighbour(n) = e {
                f(&n)
            }
        })
    }

    /// Visits every FDB entry, as `visit_routes` does.
    pub fn visit_fdb(&mut self, f: &mut dyn FnMut(&Fdb)) -> Result<bool, KernelError> {
        self.visit_neigh_families(&[AddressFamily::Bridge], &mut |e| {
            if let raw::NeighbourEntry::Fdb(x) = e {
                f(&x)
            }
        })
    }

    /// Applies many changes, pipelined, in order. Returns one result per change.
    pub fn apply(&mut self, changes: &[Change]) -> Vec<Result<(), KernelError>> {
        let mut results: Vec<Result<(), KernelError>> = Vec::with_capacity(changes.len());
        let mut data = Vec::with_capacity(BATCH_BYTES + 4096);
        for chunk in changes.chunks(BATCH_MESSAGES) {
            data.clear();
            let first_seq = self.reserve_seqs(chunk.len());
            let mut seqs = Vec::with_capacity(chunk.len());
            let mut sends: Vec<(usize, usize)> = Vec::new();
            let mut start = 0;
            for change in chunk {
                let (msg, flags) = change.message();
                let seq = self.next_seq();
                seqs.push(seq);
                Netlink::encode(msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq, &mut data);
                if data.len() - start >= BATCH_BYTES {
                    sends.push((start, data.len()));
                    start = data.len();
                }
            }
            if start < data.len() {
                sends.push((start, data.len()));
            }
            let mut chunk_results: Vec<Option<Result<(), KernelError>>> =
                (0..chunk.len()).map(|_| None).collect();
            let mut pending = chunk.len();
            let mut failed_send = None;
            for (a, b) in sends {
                if let Err(e) = self.send_buf("apply", &data[a..b]) {
                    failed_send = Some(e);
                    break;
                }
            }
            if let Some(e) = failed_send {
                // Nothing reliable can be said about this chunk: report every change as failed.
                let msg = e.to_string();
                for change in chunk {
                    results.push(Err(KernelError::Other(format!("{}: {msg}", change))));
                }
                continue;
            }
            while pending > 0 {
                let messages = match self.recv_messages("apply") {
                    Ok(m) => m,
                    Err(e) => {
                        let msg = e.to_string();
                        for (slot, change) in chunk_results.iter_mut().zip(chunk) {
                            if slot.is_none() {
                                *slot = Some(Err(KernelError::Other(format!("{}: {msg}", change))));
                            }
                        }
                        break;
                    }
                };
                for m in messages {
                    let seq = m.header.sequence_number;
                    let Some(i) = seq
                        .checked_sub(first_seq)
                        .map(|d| d as usize)
                        .filter(|&i| i < chunk.len())
                    else {
                        continue;
                    };
                    if seqs[i] != seq || chunk_results[i].is_some() {
                        continue;
                    }
                    if let NetlinkPayload::Error(e) = m.payload {
                        chunk_results[i] = Some(match e.code {
                            None => Ok(()),
                            Some(code) => {
                                Err(KernelError::netlink(chunk[i].to_string(), -code.get()))
                            }
                        });
                        pending -= 1;
                    }
                }
            }
            results.extend(
                chunk_results
                    .into_iter()
                    .map(|r| r.expect("every change answered")),
            );
        }
        results
    }

    // ---- links ----

    /// All links of this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, KernelError> {
        let msgs = self.dump("dump links", RouteNetlinkMessage::GetLink(link_query()))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link with this name, if any.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, KernelError> {
        let mut msg = link_query();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.query(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link with this name; an error naming it when absent.
    pub fn require_link(&mut self, name: &str) -> Result<Link, KernelError> {
        self.link(name)?
            .ok_or_else(|| KernelError::netlink(format!("find link {name}"), libc::ENODEV))
    }

    /// Creates a link (fails with EEXIST if the name is taken).
    pub fn add_link(&mut self, spec: &NewLink<'_>) -> Result<(), KernelError> {
        self.exec(
            &format!("create link {}", spec.name),
            RouteNetlinkMessage::NewLink(new_link_message(spec)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a link and returns it as the kernel announced it on creation (`NLM_F_ECHO`):
    /// its index, and for a veth the peer's index in the peer's namespace (`parent`), with no
    /// lookup afterwards. The announcement comes before the link joins its master, so `master`
    /// is not in it. `None` from a kernel that does not echo (before 6.1).
    pub fn add_link_echo(&mut self, spec: &NewLink<'_>) -> Result<Option<Link>, KernelError> {
        let op = format!("create link {}", spec.name);
        let seq = self.submit(
            &op,
            RouteNetlinkMessage::NewLink(new_link_message(spec)),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        )?;
        // Read in place (`raw::link`): the echo is mostly counters nobody here reads.
        let mut made = None;
        self.raw_replies(&op, seq, &mut |m| {
            if m.kind == raw::RTM_NEWLINK && made.is_none() {
                made = raw::link(m.payload).filter(|l| l.name == spec.name);
            }
        })?;
        Ok(made)
    }

    /// Changes attributes of a link.
    pub fn set_link(&mut self, index: u32, change: &LinkChange<'_>) -> Result<(), KernelError> {
        let seq = self.set_link_start(index, change)?;
        self.set_link_finish(index, seq)
    }

    /// Sends a link change without waiting for its answer, so that work on another socket
    /// (another namespace) can go on meanwhile; `set_link_finish` collects the answer. No other
    /// request may be made on this socket in between.
    pub fn set_link_start(
        &mut self,
        index: u32,
        change: &LinkChange<'_>,
    ) -> Result<u32, KernelError> {
        self.submit(
            &format!("change link #{index}"),
            RouteNetlinkMessage::NewLink(link_change_message(index, change)),
            0,
        )
    }

    /// The answer to `set_link_start`'s request `seq`.
    pub fn set_link_finish(&mut self, index: u32, seq: u32) -> Result<(), KernelError> {
        self.wait_ack(&format!("change link #{index}"), seq)
    }
}

/// The `RTM_NEWLINK` request that creates `spec`.
fn new_link_message(spec: &NewLink<'_>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(spec.name.to_string()));
    if let Some(mtu) = spec.mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = spec.mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    if let Some(master) = spec.master {
        msg.attributes.push(LinkAttribute::Controller(master));
    }
    if spec.up {
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
    }
    let info = match &spec.kind {
        NewLinkKind::Bridge => vec![LinkInfo::Kind(InfoKind::Bridge)],
        NewLinkKind::Veth {
            peer,
            peer_ns,
            peer_mac,
            queues,
        } => {
            let mut peer_msg = LinkMessage::default();
            peer_msg
                .attributes
                .push(LinkAttribute::IfName(peer.to_string()));
            if let Some(n) = *queues {
                for m in [&mut msg, &mut peer_msg] {
                    m.attributes.push(LinkAttribute::NumTxQueues(n));
                    m.attributes.push(LinkAttribute::NumRxQueues(n));
                }
            }
            if let Some(mac) = peer_mac {
                peer_msg
                    .attributes
                    .push(LinkAttribute::Address(mac.0.to_vec()));
            }
            if let Some(mtu) = spec.mtu {
                peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
            }
            if let Some(ns) = peer_ns {
                peer_msg
                    .attributes
                    .push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
            }
            vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]
        }
        NewLinkKind::Vxlan(v) => {
            let mut data = vec![InfoVxlan::Id(v.vni), InfoVxlan::Learning(v.learning)];
            if v.port != 0 {
                data.push(InfoVxlan::Port(v.port));
            }
            match v.local {
                Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
                Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
                None => {}
            }
            if let Some(dev) = v.dev {
                data.push(InfoVxlan::Link(dev));
            }
            if v.gbp {
                data.push(InfoVxlan::Gbp);
            }
            vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(data)),
            ]
        }
        NewLinkKind::Wireguard => vec![LinkInfo::Kind(InfoKind::Wireguard)],
    };
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    msg
}

/// The `RTM_NEWLINK` request that applies `change` to link `index`.
fn link_change_message(index: u32, change: &LinkChange<'_>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    if let Some(up) = change.up {
        msg.header.change_mask = LinkFlags::Up;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
    }
    if let Some(mtu) = change.mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(master) = change.master {
        msg.attributes.push(LinkAttribute::Controller(master));
    }
    if let Some(name) = change.name {
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    }
    if let Some(mac) = change.mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    if let Some(ns) = change.netns {
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    }
    if let Some(g) = change.group {
        msg.attributes.push(LinkAttribute::Group(g));
    }
    if let Some(alias) = change.alias {
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
    }
    if let Some(on) = change.link_local6 {
        let mode = if on {
            In6AddrGenMode::Eui64
        } else {
            In6AddrGenMode::None
        };
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(mode)],
            )]));
    }
    if let Some(hairpin) = change.hairpin {
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                hairpin,
            )])),
        ]));
    }
    msg
}

impl Netlink {
    /// Deletes a link; a link that is already gone is not an error.
    pub fn del_link(&mut self, index: u32) -> Result<(), KernelError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.exec(
            &format!("delete link #{index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    /// Deletes every link in a group with one request: the kernel unregisters them as a batch
    /// and waits for one RCU grace period instead of one per link. `false` when the group had
    /// no link (the kernel's `ENODEV`; nothing was done).
    pub fn del_link_group(&mut self, group: u32) -> Result<bool, KernelError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(group));
        match self.exec(
            &format!("delete link group {group}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Err(e) if e.is_not_found() => Ok(false),
            r => r.map(|()| true),
        }
    }

    /// Deletes a link by name; absent is not an error.
    pub fn del_link_named(&mut self, name: &str) -> Result<(), KernelError> {
        match self.link(name)? {
            Some(l) => self.del_link(l.index),
            None => Ok(()),
        }
    }

    // ---- addresses ----

    /// All addresses of this namespace.
    pub fn addrs(&mut self) -> Result<Vec<Addr>, KernelError> {
        let msgs = self.dump(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_addr(&a),
                _ => None,
            })
            .collect())
    }

    /// Addresses of one family (a smaller dump than `addrs` when a host has many links).
    pub fn addrs_v(&mut self, v4: bool) -> Result<Vec<Addr>, KernelError> {
        let mut msg = AddressMessage::default();
        msg.header.family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let msgs = self.dump("dump addresses", RouteNetlinkMessage::GetAddress(msg))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_addr(&a),
                _ => None,
            })
            .collect())
    }

    /// Adds an address; one that is already there is not an error.
    pub fn add_addr(&mut self, index: u32, net: IpNet) -> Result<(), KernelError> {
        self.add_addr_new(index, net).map(|_| ())
    }

    /// Adds an address; `false` when it was there already (nothing changed).
    pub fn add_addr_new(&mut self, index: u32, net: IpNet) -> Result<bool, KernelError> {
        let msg = addr_message(index, net);
        match self.exec(
            &format!("add address {net}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes an address; one that is not there is not an error.
    pub fn del_addr(&mut self, index: u32, net: IpNet) -> Result<(), KernelError> {
        let msg = addr_message(index, net);
        match self.exec(
            &format!("delete address {net}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    // ---- routes ----

    /// All routes of both families in all tables.
    pub fn routes(&mut self) -> Result<Vec<Route>, KernelError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let msgs = self.dump("dump routes", RouteNetlinkMessage::GetRoute(msg))?;
            out.extend(msgs.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(&r),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// Installs or replaces a route.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), KernelError> {
        self.exec(
            &format!("replace route {}", route.dst),
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes a route; one that is not there is not an error.
    pub fn del_route(&mut self, route: &Route) -> Result<(), KernelError> {
        match self.exec(
            &format!("delete route {}", route.dst),
            RouteNetlinkMessage::DelRoute(route_message(route)),
            0,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    /// The route the kernel would use to reach `ip` (`ip route get`).
    pub fn route_get(&mut self, ip: IpAddr) -> Result<Route, KernelError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(ip);
        msg.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(route_address(ip)));
        let replies = self.query(
            &format!("route get {ip}"),
            RouteNetlinkMessage::GetRoute(msg),
        )?;
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(&r),
                _ => None,
            })
            .ok_or_else(|| KernelError::netlink(format!("route get {ip}"), libc::ENETUNREACH))
    }

    // ---- neighbours and fdb ----

    /// Neighbour entries (ARP and NDP) of one link, or of all links.
    pub fn neighbours(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>, KernelError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = NeighbourMessage::default();
            msg.header.family = family;
            let msgs = self.dump("dump neighbours", RouteNetlinkMessage::GetNeighbour(msg))?;
            out.extend(msgs.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_neighbour(&n),
                _ => None,
            }));
        }
        if let Some(i) = index {
            out.retain(|n| n.index == i);
        }
        Ok(out)
    }

    /// FDB entries of one link, or of all links.
    pub fn fdb(&mut self, index: Option<u32>) -> Result<Vec<Fdb>, KernelError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        let msgs = self.dump("dump fdb", RouteNetlinkMessage::GetNeighbour(msg))?;
        let mut out: Vec<Fdb> = msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_fdb(&n),
                _ => None,
            })
            .collect();
        if let Some(i) = index {
            out.retain(|f| f.index == i);
        }
        Ok(out)
    }
}

/// Receives one datagram into `buf` (replacing what it held), retrying when interrupted.
fn recv_datagram(socket: &Socket, buf: &mut Vec<u8>, op: &str) -> Result<(), KernelError> {
    buf.clear();
    loop {
        match socket.recv(buf, 0) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(KernelError::io(format!("{op}: receive from netlink"), e)),
        }
    }
}

/// The netlink messages packed in one datagram, in order; an error for one that does not
/// decode, and a last one when the framing is broken.
fn split_messages(
    buf: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<RouteNetlinkMessage>, String>> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || offset + len > buf.len() {
            let msg = format!(
                "netlink message of length {len} in a {}-byte datagram",
                buf.len()
            );
            offset = buf.len();
            return Some(Err(msg));
        }
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..offset + len])
            .map_err(|e| e.to_string());
        offset += (len + 3) & !3;
        Some(m)
    })
}

/// A socket joined to rtnetlink multicast groups.
struct Subscription {
    socket: Socket,
    buf: Vec<u8>,
    what: &'static str,
}

impl Subscription {
    /// Subscribes in the calling thread's namespace.
    fn open(groups: &[u32], what: &'static str) -> Result<Subscription, KernelError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| KernelError::io("open netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| KernelError::io("bind netlink socket", e))?;
        for &group in groups {
            socket
                .add_membership(group)
                .map_err(|e| KernelError::io(format!("join netlink {what} group {group}"), e))?;
        }
        set_rcvbuf(socket.as_raw_fd(), SOCKET_RCVBUF);
        Ok(Subscription {
            socket,
            buf: Vec::with_capacity(RECV_BUF),
            what,
        })
    }

    /// Blocks until the next batch of notifications; ones that do not decode are skipped. An
    /// overrun (ENOBUFS) is an error, so the caller can fall back to a full resync.
    fn recv(&mut self) -> Result<Vec<RouteNetlinkMessage>, KernelError> {
        recv_datagram(&self.socket, &mut self.buf, self.what)?;
        Ok(split_messages(&self.buf)
            .filter_map(|m| match m.ok()?.payload {
                NetlinkPayload::InnerMessage(inner) => Some(inner),
                _ => None,
            })
            .collect())
    }

    /// Receives one datagram into `buf`, waiting for it when `wait`; `false` when none was
    /// queued. An overrun (ENOBUFS) is an error.
    fn recv_raw(&mut self, wait: bool) -> Result<bool, KernelError> {
        self.buf.clear();
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            match self.socket.recv(&mut self.buf, flags) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    return Err(KernelError::io(
                        format!("{}: receive from netlink", self.what),
                        e,
                    ));
                }
            }
        }
    }
}

/// Link notifications (`ip monitor link`), for noticing a device deleted behind our back.
pub struct LinkEvents(Subscription);

/// A link appeared, changed or disappeared.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    New(Link),
    Deleted(Link),
}

impl LinkEvents {
    /// Subscribes in the calling thread's namespace.
    pub fn subscribe() -> Result<LinkEvents, KernelError> {
        Subscription::open(&[RTNLGRP_LINK], "link events").map(LinkEvents)
    }

    /// Blocks until the next batch of events. An overrun (ENOBUFS) is reported as an error so
    /// the caller can fall back to a full resync.
    pub fn recv(&mut self) -> Result<Vec<LinkEvent>, KernelError> {
        Ok(self
            .0
            .recv()?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(LinkEvent::New(parse_link(&l))),
                RouteNetlinkMessage::DelLink(l) => Some(LinkEvent::Deleted(parse_link(&l))),
                _ => None,
            })
            .collect())
    }
}

/// A route was added or removed.
#[derive(Debug, Clone)]
pub enum RouteEvent {
    New(Route),
    Deleted(Route),
}

/// IPv4 route notifications (`ip monitor route`), for timing how fast routes appear.
pub struct RouteEvents(Subscription);

/// Multicast group for IPv4 route notifications (RTNLGRP_IPV4_ROUTE).
const RTNLGRP_IPV4_ROUTE: u32 = 7;

impl RouteEvents {
    /// Subscribes in the calling thread's namespace.
    pub fn subscribe() -> Result<RouteEvents, KernelError> {
        Subscription::open(&[RTNLGRP_IPV4_ROUTE], "route events").map(RouteEvents)
    }

    /// Blocks until the next batch of events.
    pub fn recv(&mut self) -> Result<Vec<RouteEvent>, KernelError> {
        Ok(self
            .0
            .recv()?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(&r).map(RouteEvent::New),
                RouteNetlinkMessage::DelRoute(r) => parse_route(&r).map(RouteEvent::Deleted),
                _ => None,
            })
            .collect())
    }
}

pub(in crate::kernel) fn set_rcvbuf(fd: RawFd, size: usize) {
    let size = size as libc::c_int;
    // SO_RCVBUFFORCE exceeds rmem_max when we have CAP_NET_ADMIN; fall back silently otherwise.
    // SAFETY: plain setsockopt on a socket we own, with a pointer to a local int.
    unsafe {
        let p = &size as *const libc::c_int as *const libc::c_void;
        let n = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, p, n) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, p, n);
        }
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn from_route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A link request whose answer leaves out the counters (`RTEXT_FILTER_SKIP_STATS`): nothing
/// here reads them, and they are most of every link's message (two copies, ~300 bytes) for the
/// kernel to fill and for us to parse.
fn link_query() -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    msg
}

fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link::blank(
        l.header.index,
        l.header.flags.contains(LinkFlags::Up),
        l.header.flags.contains(LinkFlags::LowerUp),
    );
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(b) => link.mac = Mac::from_slice(b),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Link(p) => link.parent = Some(*p),
            LinkAttribute::Group(g) => link.group = *g,
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
            LinkAttribute::AfSpecUnspec(families) => {
                link.ipv6 = families.iter().any(|f| matches!(f, AfSpecUnspec::Inet6(_)));
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(parse_vxlan(data))
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            for p in port {
                                if let InfoBridgePort::HairpinMode(h) = p {
                                    link.hairpin = Some(*h);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(data: &[InfoVxlan]) -> Vxlan {
    let mut v = Vxlan {
        vni: 0,
        port: 0,
        local: None,
        dev: None,
        learning: true,
        gbp: false,
    };
    for d in data {
        match d {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Local(a) => v.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) => v.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Link(l) => v.dev = Some(*l),
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::Gbp => v.gbp = true,
            _ => {}
        }
    }
    v
}

fn addr_message(index: u32, net: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(net.addr());
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    if net.addr().is_ipv6() {
        // Addresses podnet assigns are unique by construction; duplicate detection would only
        // leave them unusable ("tentative") for a second.
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    if let IpNet::V4(n) = net
        && n.prefix_len() < 31
    {
        msg.attributes
            .push(AddressAttribute::Broadcast(n.broadcast()));
    }
    msg
}

fn parse_addr(a: &AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    IpNet::new(ip, a.header.prefix_len).ok().map(|net| Addr {
        index: a.header.index,
        net,
    })
}

fn route_message(r: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let mut h = RouteHeader {
        address_family: family_of(r.dst.addr()),
        destination_prefix_length: r.dst.prefix_len(),
        table: if r.table < 256 { r.table as u8 } else { 252 },
        protocol: RouteProtocol::from(r.protocol),
        scope: RouteScope::from(r.scope),
        kind: RouteType::from(r.kind),
        ..Default::default()
    };
    if r.onlink {
        h.flags = RouteFlags::Onlink;
    }
    msg.header = h;
    msg.attributes
        .push(RouteAttribute::Destination(route_address(r.dst.network())));
    if r.table >= 256 {
        msg.attributes.push(RouteAttribute::Table(r.table));
    }
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    if let Some(src) = r.prefsrc {
        msg.attributes
            .push(RouteAttribute::PrefSource(route_address(src)));
    }
    msg
}

fn parse_route(m: &RouteMessage) -> Option<Route> {
    let h = &m.header;
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut table = h.table as u32;
    let mut metric = None;
    let mut prefsrc = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = from_route_address(d),
            RouteAttribute::Gateway(g) => gateway = from_route_address(g),
            RouteAttribute::Oif(o) => oif = Some(*o),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::PrefSource(s) => prefsrc = from_route_address(s),
            _ => {}
        }
    }
    let dst = match (dst, h.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(Route {
        dst: IpNet::new(dst, h.destination_prefix_length).ok()?,
        gateway,
        oif,
        table,
        protocol: u8::from(h.protocol),
        scope: u8::from(h.scope),
        kind: u8::from(h.kind),
        onlink: h.flags.contains(RouteFlags::Onlink),
        metric,
        prefsrc,
    })
}

fn neighbour_message(n: &Neighbour) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(n.ip);
    msg.header.ifindex = n.index;
    msg.header.state = if n.permanent {
        NeighbourState::Permanent
    } else {
        NeighbourState::Reachable
    };
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(NeighbourAttribute::Destination(match n.ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    if let Some(mac) = n.mac {
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    }
    msg
}

fn parse_neighbour(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_slice(b),
            _ => {}
        }
    }
    Some(Neighbour {
        index: m.header.ifindex,
        ip: ip?,
        mac,
        permanent: m.header.state == NeighbourState::Permanent,
    })
}

fn fdb_message(f: &Fdb) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = f.index;
    msg.header.state = if f.permanent {
        NeighbourState::Permanent
    } else {
        NeighbourState::Reachable
    };
    if f.own {
        msg.header.flags = NeighbourFlags::Own;
    }
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    match f.dst {
        Some(IpAddr::V4(a)) => msg
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(a))),
        Some(IpAddr::V6(a)) => msg
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(a))),
        None => {}
    }
    msg
}

fn parse_fdb(m: &NeighbourMessage) -> Option<Fdb> {
    let mut mac = None;
    let mut dst = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = Mac::from_slice(b),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                dst = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                dst = Some(IpAddr::V6(*a))
            }
            // AF_BRIDGE entries do not say which family the VTEP address is: its length does.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => dst = ip_from_bytes(b),
            _ => {}
        }
    }
    Some(Fdb {
        index: m.header.ifindex,
        mac: mac?,
        dst,
        permanent: m.header.state == NeighbourState::Permanent,
        own: m.header.flags.contains(NeighbourFlags::Own),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(msg: RouteNetlinkMessage) -> Vec<u8> {
        let mut buf = Vec::new();
        Netlink::encode(msg, 0, 1, &mut buf);
        buf
    }

    #[test]
    fn raw_reading_agrees_with_the_decoder() {
        let mut plain = Route::unicast("10.244.2.0/24".parse().unwrap(), 86);
        plain.gateway = Some("10.244.2.0".parse().unwrap());
        plain.oif = Some(5);
        plain.onlink = true;
        let mut big = plain.clone();
        big.table = 1000;
        big.metric = Some(7);
        big.prefsrc = Some("10.244.1.0".parse().unwrap());
        big.onlink = false;
        let mut v6 = Route::unicast("fd00:1::/64".parse().unwrap(), 86);
        v6.gateway = Some("fe80::1".parse().unwrap());
        for route in [plain, big, v6] {
            let msg = route_message(&route);
            let buf = encoded(RouteNetlinkMessage::NewRoute(msg.clone()));
            let m = raw::messages(&buf).next().expect("one message");
            assert_eq!(m.kind, raw::RTM_NEWROUTE);
            assert_eq!(raw::route(m.payload), parse_route(&msg));
            assert_eq!(raw::route(m.payload), Some(route));
        }
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let neighbours = [
            Neighbour {
                index: 5,
                ip: "10.244.2.0".parse().unwrap(),
                mac: Some(mac),
                permanent: true,
            },
            Neighbour {
                index: 6,
                ip: "fd00::2".parse().unwrap(),
                mac: None,
                permanent: false,
            },
        ];
        for n in neighbours {
            let msg = neighbour_message(&n);
            let buf = encoded(RouteNetlinkMessage::NewNeighbour(msg.clone()));
            let m = raw::messages(&buf).next().expect("one message");
            let want = parse_neighbour(&msg).map(raw::NeighbourEntry::Neighbour);
            assert_eq!(raw::neighbour(m.payload), want);
            assert_eq!(want, Some(raw::NeighbourEntry::Neighbour(n)));
        }
        for dst in [Some("198.18.0.12".parse().unwrap()), None] {
            let f = Fdb {
                index: 5,
                mac,
                dst,
                permanent: true,
                own: true,
            };
            let msg = fdb_message(&f);
            let buf = encoded(RouteNetlinkMessage::NewNeighbour(msg.clone()));
            let m = raw::messages(&buf).next().expect("one message");
            assert_eq!(raw::neighbour(m.payload), Some(raw::NeighbourEntry::Fdb(f)));
        }
    }

    #[test]
    fn raw_link_reading_agrees_with_the_decoder() {
        let mut msg = LinkMessage::default();
        msg.header.index = 41;
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        msg.attributes = vec![
            LinkAttribute::IfName("veth1a2b3c4d".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![0xfe, 1, 2, 3, 4, 5]),
            LinkAttribute::Controller(3),
            LinkAttribute::Link(2),
            LinkAttribute::Group(7),
            LinkAttribute::IfAlias("ctr/eth0".into()),
            LinkAttribute::NumTxQueues(1),
            LinkAttribute::AfSpecUnspec(vec![
                AfSpecUnspec::Inet(vec![]),
                AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::Eui64)]),
            ]),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let buf = encoded(RouteNetlinkMessage::NewLink(msg.clone()));
        let m = raw::messages(&buf).next().expect("one message");
        assert_eq!(m.kind, raw::RTM_NEWLINK);
        let link = raw::link(m.payload).expect("a link");
        assert_eq!(link, parse_link(&msg));
        assert_eq!(
            (link.index, link.parent, link.master, link.kind.as_deref()),
            (41, Some(2), Some(3), Some("veth"))
        );
        assert!(link.up && link.lower_up && link.ipv6);
        // IPv4 settings only (a node booted without IPv6): no IPv6.
        let mut v4 = msg.clone();
        v4.attributes
            .retain(|a| !matches!(a, LinkAttribute::AfSpecUnspec(_)));
        v4.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(
                vec![],
            )]));
        let buf = encoded(RouteNetlinkMessage::NewLink(v4.clone()));
        let m = raw::messages(&buf).next().expect("one message");
        let link = raw::link(m.payload).expect("a link");
        assert_eq!(link, parse_link(&v4));
        assert!(!link.ipv6);
        // Down, no alias, no kind: nothing invented.
        let mut bare = LinkMessage::default();
        bare.header.index = 7;
        bare.attributes = vec![LinkAttribute::IfName("eth0".into())];
        let buf = encoded(RouteNetlinkMessage::NewLink(bare.clone()));
        let m = raw::messages(&buf).next().expect("one message");
        assert_eq!(raw::link(m.payload), Some(parse_link(&bare)));
        // Truncated: no link rather than a wrong one.
        assert_eq!(raw::link(&m.payload[..8]), None);
    }

    #[test]
    fn link_local_addressing_is_set_as_the_kernel_reads_it() {
        // IFLA_AF_SPEC > AF_INET6 > IFLA_INET6_ADDR_GEN_MODE (8): 1 none, 0 EUI-64.
        let mode = |on: Option<bool>| {
            let change = LinkChange {
                link_local6: on,
                ..Default::default()
            };
            let buf = encoded(RouteNetlinkMessage::NewLink(link_change_message(
                5, &change,
            )));
            let m = raw::messages(&buf).next().expect("one message");
            raw::attributes(&m.payload[16..])
                .filter(|(k, _)| *k == 26)
                .flat_map(|(_, v)| raw::attributes(v))
                .filter(|(k, _)| *k == u16::from(raw::AF_INET6))
                .flat_map(|(_, v)| raw::attributes(v))
                .find(|(k, _)| *k == 8)
                .map(|(_, v)| v.to_vec())
        };
        assert_eq!(mode(Some(false)), Some(vec![1]));
        assert_eq!(mode(Some(true)), Some(vec![0]));
        assert_eq!(mode(None), None, "left alone unless asked");
    }

    #[test]
    fn sequence_numbers_wrap_without_splitting_a_batch() {
        assert_eq!(seq_block_start(0, 5), 1);
        assert_eq!(seq_block_start(41, 5), 42);
        assert_eq!(seq_block_start(u32::MAX - 5, 5), u32::MAX - 4);
        // Would wrap inside the batch: start again at 1.
        assert_eq!(seq_block_start(u32::MAX - 2, 5), 1);
        assert_eq!(seq_block_start(u32::MAX, 1), 1);
        // A batch at the very top: every number from the first is consecutive and non-zero.
        for current in [u32::MAX - 300, u32::MAX - 256, u32::MAX - 255, u32::MAX] {
            let first = seq_block_start(current, BATCH_MESSAGES);
            let last = first.checked_add(BATCH_MESSAGES as u32 - 1).unwrap();
            assert!(first > 0 && last >= first, "{current}: {first}..{last}");
        }
    }
}

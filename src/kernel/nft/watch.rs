//! nftables notifications and the ruleset generation, over nfnetlink (`nft monitor`).
//!
//! Every nftables transaction that commits is announced to the `NFNLGRP_NFTABLES` group: one
//! message per object it changed (each names its table) and then `NFT_MSG_NEWGEN` with the new
//! generation and the process that committed. `NftEvents` turns that into one `Commit` per
//! transaction. `generation` asks for the current generation: one small request, the cheapest
//! way to learn whether anything changed since a given moment.
//!
//! Messages are read in place (`struct nfgenmsg`, then attributes); nothing here depends on a
//! netfilter crate.

use std::os::fd::AsRawFd;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use crate::kernel::KernelError;
use crate::kernel::netlink::raw;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
/// Attribute 1 of every object message (table, chain, rule, set, element list, object,
/// flowtable) is the name of its table.
const NFTA_TABLE: u16 = 1;
const RCVBUF: usize = 4 << 20;
/// The sequence number of a generation request (transactions number their messages from 1 up).
const GETGEN_SEQ: u32 = u32::MAX;
const RECV_BUF: usize = 64 * 1024;

/// One committed transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// The generation it made.
    pub generation: u32,
    /// The process that committed it (kernels since 4.17 say), as the initial pid namespace
    /// numbers it: the thread's id.
    pub pid: Option<u32>,
    /// The netlink port id of the socket it was committed through (`NftSocket::port`).
    pub port: u32,
    /// The tables it changed, as (nfproto family, name); `inet` is 1, `ip` 2, `ip6` 10.
    pub tables: Vec<(u8, String)>,
}

/// What `NftEvents::recv` returns.
#[derive(Debug, Default)]
pub struct Commits {
    pub commits: Vec<Commit>,
    /// Notifications were lost (ENOBUFS): anything may have changed.
    pub overflowed: bool,
}

/// Subscription to nftables notifications in the calling thread's namespace.
pub struct NftEvents {
    socket: Socket,
    buf: Vec<u8>,
    open: Commit,
}

fn socket() -> Result<Socket, KernelError> {
    let mut s =
        Socket::new(NETLINK_NETFILTER).map_err(|e| KernelError::io("open nfnetlink socket", e))?;
    s.bind_auto()
        .map_err(|e| KernelError::io("bind nfnetlink socket", e))?;
    Ok(s)
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

impl NftEvents {
    pub fn subscribe() -> Result<NftEvents, KernelError> {
        let s = socket()?;
        s.add_membership(NFNLGRP_NFTABLES)
            .map_err(|e| KernelError::io("join the nftables notification group", e))?;
        crate::kernel::netlink::set_rcvbuf(s.as_raw_fd(), RCVBUF);
        Ok(NftEvents {
            socket: s,
            buf: Vec::with_capacity(RECV_BUF),
            open: Commit::default(),
        })
    }

    /// Blocks until a notification arrives, then takes every one already queued; transactions
    /// are returned once their generation message has been seen.
    pub fn recv(&mut self) -> Result<Commits, KernelError> {
        let mut out = Commits::default();
        let mut flags = 0;
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, flags) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.open = Commit::default();
                    out.overflowed = true;
                    return Ok(out);
                }
                Err(e) => return Err(KernelError::io("receive nftables notifications", e)),
            }
            flags = libc::MSG_DONTWAIT;
            for m in raw::messages(&self.buf) {
                if let Some(done) = take(&mut self.open, &m) {
                    out.commits.push(done);
                }
            }
        }
    }
}

/// Adds one message to the open transaction; the transaction when this message closes it.
fn take(open: &mut Commit, m: &raw::RawMessage<'_>) -> Option<Commit> {
    if m.kind >> 8 != NFNL_SUBSYS_NFTABLES || m.payload.len() < 4 {
        return None;
    }
    let family = m.payload[0];
    let attrs = raw::attributes(&m.payload[4..]);
    if m.kind & 0xff == NFT_MSG_NEWGEN {
        let mut done = std::mem::take(open);
        // The kernel sends the generation message with the committing socket's port id.
        done.port = m.port;
        for (kind, v) in attrs {
            match kind {
                NFTA_GEN_ID => done.generation = be32(v).unwrap_or(0),
                NFTA_GEN_PROC_PID => done.pid = be32(v),
                _ => {}
            }
        }
        return Some(done);
    }
    let name = attrs
        .filter(|(kind, _)| *kind == NFTA_TABLE)
        .find_map(|(_, v)| std::str::from_utf8(v.split(|b| *b == 0).next()?).ok())?;
    if !open.tables.iter().any(|(f, n)| *f == family && n == name) {
        open.tables.push((family, name.to_string()));
    }
    None
}

/// The ruleset's current generation: it changes with every committed transaction.
pub fn generation() -> Result<u32, KernelError> {
    generation_on(&socket()?)
}

/// `generation`, asked on a bound socket that has nothing else waiting to be read.
pub(super) fn generation_on(s: &Socket) -> Result<u32, KernelError> {
    let op = "read the nftables generation";
    let mut req = [0u8; 20];
    req[0..4].copy_from_slice(&20u32.to_ne_bytes());
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
    req[4..6].copy_from_slice(&kind.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&GETGEN_SEQ.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id 0.
    super::ask(s, &req, GETGEN_SEQ, op, |m| {
        (m.kind & 0xff == NFT_MSG_NEWGEN && m.payload.len() >= 4).then(|| {
            raw::attributes(&m.payload[4..])
                .find(|(k, _)| *k == NFTA_GEN_ID)
                .and_then(|(_, v)| be32(v))
                .ok_or_else(|| KernelError::decode(op, "no generation in the answer"))
        })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_transaction_is_its_tables_then_its_generation() {
        let mut open = Commit::default();
        let mut buf = msg(8, 1, &[(1, b"podnet\0"), (2, b"forward\0")]);
        buf.extend(msg(12, 1, &[(1, b"podnet\0")]));
        buf.extend(msg(6, 2, &[(1, b"nat\0")]));
        let mut generation = msg(
            15,
            0,
            &[(1, &7u32.to_be_bytes()), (2, &4242u32.to_be_bytes())],
        );
        // nlmsg_pid: the committing socket's port id.
        generation[12..16].copy_from_slice(&77u32.to_ne_bytes());
        buf.extend(generation);
        let done: Vec<Commit> = raw::messages(&buf)
            .filter_map(|m| take(&mut open, &m))
            .collect();
        assert_eq!(
            done,
            [Commit {
                generation: 7,
                pid: Some(4242),
                port: 77,
                tables: vec![(1, "podnet".into()), (2, "nat".into())],
            }]
        );
    }
}

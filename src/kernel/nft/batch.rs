//! nftables transactions as nfnetlink messages, built byte by byte (pure: no socket here).
//!
//! A transaction is one datagram: `NFNL_MSG_BATCH_BEGIN`, the object messages, then
//! `NFNL_MSG_BATCH_END`; the kernel applies all of it or none. Every object message is a
//! `struct nlmsghdr`, a `struct nfgenmsg` (family, version 0, resource id 0) and attributes
//! (`struct nlattr`, values padded to 4 bytes, integers big-endian as nf_tables wants them).
//!
//! The messages are those `nft` sends for the same commands (checked against `nft
//! --debug=netlink` and read back with `nft list`), so what podnet writes is listed exactly as
//! the equivalent nft script would be: `meta nfproto` before the first `ip` match of a rule in
//! an `inet` table, anonymous interval sets for `{ a/b, c/d }`, comments as rule user data.
//!
//! Invariant: the message with sequence number `n` (from 1) is `ops[n - 1]`, so a kernel error
//! names the operation that failed. The batch header has sequence number 0 (commit errors).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

// Attributes (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
const NFT_BITWISE_BOOL: u32 = 0;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_MASQ_FLAGS: u16 = 1;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_LOG_GROUP: u16 = 1;
const NFTA_LOG_PREFIX: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_SET_CONSTANT: u32 = 0x2;
// The flags a dump reads back are defined once, where they are read.
use super::dump::{
    ELEM_INTERVAL_END as NFT_SET_ELEM_INTERVAL_END, LOOKUP_INVERT as NFT_LOOKUP_F_INV,
    SET_ANONYMOUS as NFT_SET_ANONYMOUS, SET_INTERVAL as NFT_SET_INTERVAL, SET_MAP as NFT_SET_MAP,
};
/// `NFT_DATA_VERDICT`: a map's data type when its values are verdicts.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
/// nft's `ipv4_addr` data type (what `nft list` shows for a set's `type`).
pub const TYPE_IPV4_ADDR: u32 = 7;
/// nft's `ipv6_addr` data type.
pub const TYPE_IPV6_ADDR: u32 = 8;
/// `IPPROTO_TCP`, for `meta l4proto`.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`, for `meta l4proto`.
pub const IPPROTO_UDP: u8 = 17;
/// `IPPROTO_SCTP`, for `meta l4proto`.
pub const IPPROTO_SCTP: u8 = 132;
/// `IPPROTO_ICMPV6`, for `meta l4proto`.
pub const IPPROTO_ICMPV6: u8 = 58;
/// `NFTNL_UDATA_SET_KEYBYTEORDER` with `BYTEORDER_BIG_ENDIAN`, as nft tags address sets.
const SET_UDATA_BIG_ENDIAN_KEY: [u8; 6] = [0, 4, 2, 0, 0, 0];
/// A verdict map's user data as nft 1.0.6 writes it: the key's byte order (big endian),
/// the data's (`NFTNL_UDATA_SET_DATABYTEORDER`, invalid: a verdict has none) and
/// `NFTNL_UDATA_SET_DATA_INTERVAL` false.
const MAP_UDATA_VERDICT: [u8; 18] = [0, 4, 2, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0];
/// `NFTNL_UDATA_RULE_COMMENT`.
const RULE_UDATA_COMMENT: u8 = 0;
/// Anonymous sets are named by the kernel from this pattern.
const ANONYMOUS_SET_NAME: &str = "__set%d";

/// Netfilter hooks (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// What makes a chain a base chain: its type, hook and priority; the policy is accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// "filter", "nat" or "route".
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

/// A set created in this transaction: lookups and element messages name it, and carry its
/// transaction id so the kernel finds it before the batch commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRef {
    pub name: String,
    pub id: Option<u32>,
}

impl SetRef {
    /// A set that already exists (or is created in the same batch without an id).
    pub fn named(name: &str) -> SetRef {
        SetRef {
            name: name.to_string(),
            id: None,
        }
    }
}

/// `enum nft_cmp_ops`: how a comparison tests register 1 against its data (bytes compared in
/// order, so big-endian values such as ports compare as numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Lt = 2,
    Lte = 3,
    Gt = 4,
    Gte = 5,
}

/// What a rule (or a verdict map's element) decides. `Jump` comes back to the rule after it
/// when the chain it names returns; `Goto` does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> u32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            // NFT_JUMP = -3, NFT_GOTO = -4, NFT_RETURN = -5
            Verdict::Jump(_) => (-3i32) as u32,
            Verdict::Goto(_) => (-4i32) as u32,
            Verdict::Return => (-5i32) as u32,
        }
    }

    /// The chain a jump or goto names.
    fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// Packet header bases for `payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Network = 1,
    Transport = 2,
}

/// One expression of a rule. Loads go to register 1, and comparisons and lookups read it:
/// the rules podnet writes are sequences of load-then-test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta` key (`NFT_META_*`) into register 1.
    Meta(u32),
    Cmp(CmpOp, Vec<u8>),
    Payload {
        base: Base,
        offset: u32,
        len: u32,
    },
    /// Register 1 = (register 1 & mask) ^ xor.
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Register 1 &= mask: a bitwise expression as nft writes it for a prefix (xor zero, and no
    /// operation attribute, the kernel's default being the same boolean one).
    Mask(Vec<u8>),
    Lookup {
        set: SetRef,
        invert: bool,
    },
    /// Register 1 looked up in a verdict map, the element's verdict taken (`vmap @map`).
    Vmap(SetRef),
    /// A conntrack key (`NFT_CT_*`) into register 1.
    Ct(u32),
    Counter,
    /// NFLOG to `group`, with an optional prefix.
    Log {
        prefix: Option<String>,
        group: u16,
    },
    Masquerade {
        fully_random: bool,
    },
    Verdict(Verdict),
}

/// `NFT_META_NFPROTO`.
pub const META_NFPROTO: u32 = 15;
/// `NFT_META_L4PROTO`.
pub const META_L4PROTO: u32 = 16;
/// `NFT_META_MARK`.
pub const META_MARK: u32 = 3;
/// `NFT_META_IIFNAME`: the input interface's name.
pub const META_IIFNAME: u32 = 6;
/// `NFT_META_OIFNAME`: the output interface's name.
pub const META_OIFNAME: u32 = 7;
/// `NFT_CT_STATE`.
pub const CT_STATE: u32 = 0;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED)`, a bit of `ct state` (host byte order).
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
/// `NF_CT_STATE_BIT(IP_CT_RELATED)`.
pub const CT_STATE_RELATED: u32 = 1 << 2;
/// `IFNAMSIZ`: interface names are compared as this many bytes, NUL-padded.
const IFNAMSIZ: usize = 16;

impl Expr {
    /// `meta nfproto ipv4`, which nft puts before the first IPv4 match of a rule in an `inet`
    /// table.
    pub fn nfproto_ipv4() -> [Expr; 2] {
        Expr::nfproto(NFPROTO_IPV4)
    }

    /// The IPv4 source (`saddr`) or destination address, loaded.
    pub fn ipv4_addr(source: bool) -> Expr {
        Expr::Payload {
            base: Base::Network,
            offset: if source { 12 } else { 16 },
            len: 4,
        }
    }

    /// The IPv6 source (`saddr`) or destination address, loaded.
    pub fn ipv6_addr(source: bool) -> Expr {
        Expr::Payload {
            base: Base::Network,
            offset: if source { 8 } else { 24 },
            len: 16,
        }
    }

    /// The source or destination address of `ip`'s family, loaded.
    pub fn addr(ip: IpAddr, source: bool) -> Expr {
        match ip {
            IpAddr::V4(_) => Expr::ipv4_addr(source),
            IpAddr::V6(_) => Expr::ipv6_addr(source),
        }
    }

    /// `meta nfproto` equal to `family` (`NFPROTO_IPV4`, `NFPROTO_IPV6`): what nft puts before
    /// the first network header match of a rule in an `inet` table.
    pub fn nfproto(family: u8) -> [Expr; 2] {
        [Expr::Meta(META_NFPROTO), Expr::Cmp(CmpOp::Eq, vec![family])]
    }

    /// `meta l4proto` equal to `proto`: what nft puts before a transport header match (`udp
    /// dport`) in an `inet` table.
    pub fn l4proto(proto: u8) -> [Expr; 2] {
        [Expr::Meta(META_L4PROTO), Expr::Cmp(CmpOp::Eq, vec![proto])]
    }

    /// The transport header's destination port (UDP and TCP alike) equal to `port`.
    pub fn dport(port: u16) -> [Expr; 2] {
        [
            Expr::Payload {
                base: Base::Transport,
                offset: 2,
                len: 2,
            },
            Expr::Cmp(CmpOp::Eq, port.to_be_bytes().to_vec()),
        ]
    }

    /// `ip saddr 10.244.0.0/16` and the like (`ip6` for an IPv6 prefix; `!=` with `CmpOp::Neq`),
    /// as nft writes it: a prefix ending on a byte boundary loads and compares only its bytes;
    /// any other (and `/0`) loads the whole address and masks it first.
    pub fn prefix(net: IpNet, source: bool, op: CmpOp) -> Vec<Expr> {
        let net = net.trunc();
        let bytes = match net.network() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let full = Expr::addr(net.network(), source);
        let len = usize::from(net.prefix_len());
        if len > 0 && len % 8 == 0 {
            let Expr::Payload { base, offset, .. } = full else {
                unreachable!("addr loads a payload")
            };
            let n = len / 8;
            return vec![
                Expr::Payload {
                    base,
                    offset,
                    len: n as u32,
                },
                Expr::Cmp(op, bytes[..n].to_vec()),
            ];
        }
        let mask = match net.netmask() {
            IpAddr::V4(m) => m.octets().to_vec(),
            IpAddr::V6(m) => m.octets().to_vec(),
        };
        vec![full, Expr::Mask(mask), Expr::Cmp(op, bytes)]
    }

    /// The transport header's destination port in `first..=last`, as nft 1.0.6 writes
    /// `th dport 81-82`: two comparisons, never a `range` expression.
    pub fn dport_range(first: u16, last: u16) -> [Expr; 3] {
        [
            Expr::Payload {
                base: Base::Transport,
                offset: 2,
                len: 2,
            },
            Expr::Cmp(CmpOp::Gte, first.to_be_bytes().to_vec()),
            Expr::Cmp(CmpOp::Lte, last.to_be_bytes().to_vec()),
        ]
    }

    /// `icmpv6 type first-last` in an `inet` table, as nft 1.0.6 writes it: IPv6, ICMPv6, the
    /// type (the transport header's first byte) within two comparisons.
    pub fn icmpv6_type_range(first: u8, last: u8) -> Vec<Expr> {
        let mut v = Expr::nfproto(NFPROTO_IPV6).to_vec();
        v.extend(Expr::l4proto(IPPROTO_ICMPV6));
        v.push(Expr::Payload {
            base: Base::Transport,
            offset: 0,
            len: 1,
        });
        v.push(Expr::Cmp(CmpOp::Gte, vec![first]));
        v.push(Expr::Cmp(CmpOp::Lte, vec![last]));
        v
    }

    /// `iifname "name"` (`input`) or `oifname "name"`: the name NUL-padded to `IFNAMSIZ`
    /// (a longer name is cut, as the kernel would never match it anyway).
    pub fn ifname(input: bool, name: &str) -> [Expr; 2] {
        let mut data: Vec<u8> = name.bytes().take(IFNAMSIZ - 1).collect();
        data.resize(IFNAMSIZ, 0);
        let key = if input { META_IIFNAME } else { META_OIFNAME };
        [Expr::Meta(key), Expr::Cmp(CmpOp::Eq, data)]
    }

    /// `ct state` with any of `bits` (`CT_STATE_*`, e.g. `established,related`).
    pub fn ct_state_any(bits: u32) -> [Expr; 3] {
        [
            Expr::Ct(CT_STATE),
            Expr::Mask(bits.to_ne_bytes().to_vec()),
            Expr::Cmp(CmpOp::Neq, vec![0; 4]),
        ]
    }

    /// `meta mark & bits == bits` (the mark is in host byte order).
    pub fn mark_has(bits: u32) -> [Expr; 3] {
        let b = bits.to_ne_bytes().to_vec();
        [
            Expr::Meta(META_MARK),
            Expr::Bitwise {
                mask: b.clone(),
                xor: vec![0; 4],
            },
            Expr::Cmp(CmpOp::Eq, b),
        ]
    }
}

/// A set to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec<'a> {
    pub name: &'a str,
    /// nft data type of the key (`TYPE_IPV4_ADDR`).
    pub key_type: u32,
    pub key_len: u32,
}

/// Attribute writer over a message buffer.
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn put(&mut self, kind: u16, value: &[u8]) {
        let b = &mut *self.0;
        b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(value);
        b.resize(b.len().next_multiple_of(4), 0);
    }

    fn str(&mut self, kind: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(kind, &v);
    }

    fn be32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs)) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(&mut Attrs(self.0));
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One transaction under construction, on one table.
#[derive(Debug, Clone)]
pub struct Batch {
    family: u8,
    table: String,
    buf: Vec<u8>,
    ops: Vec<String>,
    next_set_id: u32,
}

/// A finished transaction: the datagram and, per sequence number from 1, what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub bytes: Vec<u8>,
    pub ops: Vec<String>,
}

fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    at
}

fn close(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

impl Batch {
    /// A transaction on `table` of `family` (`NFPROTO_*`).
    pub fn new(family: u8, table: &str) -> Batch {
        let mut buf = Vec::with_capacity(1024);
        let at = header(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        close(&mut buf, at);
        Batch {
            family,
            table: table.to_string(),
            buf,
            ops: Vec::new(),
            next_set_id: 1,
        }
    }

    fn family_name(&self) -> &'static str {
        match self.family {
            NFPROTO_INET => "inet",
            NFPROTO_IPV4 => "ip",
            NFPROTO_IPV6 => "ip6",
            _ => "?",
        }
    }

    /// Appends one object message; `what` describes it for errors.
    fn msg(&mut self, kind: u16, flags: u16, what: String, body: impl FnOnce(&mut Attrs)) {
        let seq = self.ops.len() as u32 + 1;
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        let flags = NLM_F_REQUEST | flags;
        let at = header(&mut self.buf, kind, flags, seq, self.family, 0);
        body(&mut Attrs(&mut self.buf));
        close(&mut self.buf, at);
        self.ops.push(format!(
            "{what} (table {} {})",
            self.family_name(),
            self.table
        ));
    }

    /// Creates the table, or leaves it as it is.
    pub fn add_table(&mut self) {
        let t = self.table.clone();
        self.msg(NFT_MSG_NEWTABLE, 0, "add table".into(), |a| {
            a.str(NFTA_TABLE_NAME, &t);
            a.be32(NFTA_TABLE_FLAGS, 0);
        });
    }

    /// Deletes the table and all in it (an error if it does not exist: add it first).
    pub fn delete_table(&mut self) {
        let t = self.table.clone();
        self.msg(NFT_MSG_DELTABLE, 0, "delete table".into(), |a| {
            a.str(NFTA_TABLE_NAME, &t);
        });
    }

    /// Creates a chain, or leaves it as it is; a base chain's policy is accept.
    pub fn add_chain(&mut self, chain: &str, base: Option<BaseChain>) {
        let t = self.table.clone();
        self.msg(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            format!("add chain {chain}"),
            |a| {
                a.str(NFTA_CHAIN_TABLE, &t);
                a.str(NFTA_CHAIN_NAME, chain);
                if let Some(b) = base {
                    a.str(NFTA_CHAIN_TYPE, b.kind);
                    a.be32(NFTA_CHAIN_POLICY, Verdict::Accept.code());
                    a.nest(NFTA_CHAIN_HOOK, |h| {
                        h.be32(NFTA_HOOK_HOOKNUM, b.hook as u32);
                        h.be32(NFTA_HOOK_PRIORITY, b.priority as u32);
                    });
                }
            },
        );
    }

    /// Deletes every rule of a chain.
    pub fn flush_chain(&mut self, chain: &str) {
        let t = self.table.clone();
        self.msg(NFT_MSG_DELRULE, 0, format!("flush chain {chain}"), |a| {
            a.str(NFTA_RULE_TABLE, &t);
            a.str(NFTA_RULE_CHAIN, chain);
        });
    }

    fn set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    /// Creates a named set, or leaves it as it is (elements kept).
    pub fn add_set(&mut self, spec: &SetSpec) -> SetRef {
        self.new_set(spec, 0, "add set")
    }

    /// Creates a named set of address ranges (`flags interval`), or leaves it as it is. Its
    /// elements are written with `add_ranges`.
    pub fn add_interval_set(&mut self, spec: &SetSpec) -> SetRef {
        self.new_set(spec, NFT_SET_INTERVAL, "add interval set")
    }

    /// Creates a named verdict map (`type ipv4_addr : verdict`), or leaves it as it is. Its
    /// elements are written with `add_verdicts`.
    pub fn add_verdict_map(&mut self, spec: &SetSpec) -> SetRef {
        self.new_set(spec, NFT_SET_MAP, "add verdict map")
    }

    /// `NFT_MSG_NEWSET` for a named set, in nft 1.0.6's attribute order.
    fn new_set(&mut self, spec: &SetSpec, flags: u32, what: &str) -> SetRef {
        let id = self.set_id();
        let t = self.table.clone();
        let what = format!("{what} {}", spec.name);
        let map = flags & NFT_SET_MAP != 0;
        self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, what, |a| {
            a.str(NFTA_SET_TABLE, &t);
            a.str(NFTA_SET_NAME, spec.name);
            a.be32(NFTA_SET_FLAGS, flags);
            a.be32(NFTA_SET_KEY_TYPE, spec.key_type);
            a.be32(NFTA_SET_KEY_LEN, spec.key_len);
            if map {
                a.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                a.be32(NFTA_SET_DATA_LEN, 0);
            }
            a.be32(NFTA_SET_ID, id);
            if map {
                a.put(NFTA_SET_USERDATA, &MAP_UDATA_VERDICT);
            } else {
                a.put(NFTA_SET_USERDATA, &SET_UDATA_BIG_ENDIAN_KEY);
            }
        });
        SetRef {
            name: spec.name.to_string(),
            id: Some(id),
        }
    }

    /// Deletes a named set or map (an error, EBUSY, while a rule still refers to it).
    pub fn delete_set(&mut self, name: &str) {
        let t = self.table.clone();
        self.msg(NFT_MSG_DELSET, 0, format!("delete set {name}"), |a| {
            a.str(NFTA_SET_TABLE, &t);
            a.str(NFTA_SET_NAME, name);
        });
    }

    /// Deletes a chain without rules (an error, EBUSY, while anything jumps to it).
    pub fn delete_chain(&mut self, chain: &str) {
        let t = self.table.clone();
        self.msg(NFT_MSG_DELCHAIN, 0, format!("delete chain {chain}"), |a| {
            a.str(NFTA_CHAIN_TABLE, &t);
            a.str(NFTA_CHAIN_NAME, chain);
        });
    }

    /// A constant anonymous set of prefixes of one family (what nft makes of `{ 10.0.0.0/8,
    /// ... }` or `{ fd10:244::/56, ff00::/8 }`), for a lookup in a rule of the same batch.
    pub fn anonymous_prefixes<N: Copy + Into<IpNet>>(&mut self, prefixes: &[N]) -> SetRef {
        let prefixes: Vec<IpNet> = prefixes.iter().map(|&p| p.into()).collect();
        let v6 = prefixes.first().is_some_and(|p| matches!(p, IpNet::V6(_)));
        let (key_type, key_len) = if v6 {
            (TYPE_IPV6_ADDR, 16)
        } else {
            (TYPE_IPV4_ADDR, 4)
        };
        let elements = intervals(&prefixes);
        let id = self.set_id();
        let t = self.table.clone();
        let flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL;
        self.msg(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            "add anonymous set".into(),
            |a| {
                a.str(NFTA_SET_TABLE, &t);
                a.str(NFTA_SET_NAME, ANONYMOUS_SET_NAME);
                a.be32(NFTA_SET_FLAGS, flags);
                a.be32(NFTA_SET_KEY_TYPE, key_type);
                a.be32(NFTA_SET_KEY_LEN, key_len);
                a.be32(NFTA_SET_ID, id);
                a.nest(NFTA_SET_DESC, |d| {
                    d.be32(NFTA_SET_DESC_SIZE, elements.len() as u32)
                });
                a.put(NFTA_SET_USERDATA, &SET_UDATA_BIG_ENDIAN_KEY);
            },
        );
        let set = SetRef {
            name: ANONYMOUS_SET_NAME.to_string(),
            id: Some(id),
        };
        let elems: Vec<Element> = elements
            .into_iter()
            .map(|(ip, end)| Element::bound(ip, end))
            .collect();
        self.elements(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            "add elements",
            &set,
            &elems,
        );
        set
    }

    /// Element messages: as many as it takes for each element list to fit its attribute
    /// (lengths are 16 bits), cut only before a range's start so a range stays in one
    /// message. nft numbers the elements of a list 1, 2, 3…; so does this.
    fn elements(&mut self, kind: u16, flags: u16, what: &str, set: &SetRef, elems: &[Element]) {
        /// Room for the list in one attribute, with margin for the largest element.
        const LIST_ROOM: usize = 60_000;
        let mut rest = elems;
        while !rest.is_empty() {
            let mut size = 0;
            let mut cut = rest.len();
            for (i, e) in rest.iter().enumerate() {
                if size > LIST_ROOM && !e.end {
                    cut = i;
                    break;
                }
                size += e.size();
            }
            let (chunk, after) = rest.split_at(cut);
            self.element_message(kind, flags, what, set, chunk);
            rest = after;
        }
    }

    fn element_message(
        &mut self,
        kind: u16,
        flags: u16,
        what: &str,
        set: &SetRef,
        elems: &[Element],
    ) {
        let t = self.table.clone();
        let what = format!("{what} of set {}", set.name);
        self.msg(kind, flags, what, |a| {
            a.str(NFTA_SET_ELEM_LIST_TABLE, &t);
            a.str(NFTA_SET_ELEM_LIST_SET, &set.name);
            if let Some(id) = set.id {
                a.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
            }
            a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                for (i, e) in elems.iter().enumerate() {
                    l.nest((i % 0x7fff) as u16 + 1, |x| e.write(x));
                }
            });
        });
    }

    /// Adds keys (network byte order) to a set; keys already there are fine.
    /// Long lists go in several messages (see `elements`).
    pub fn add_elements(&mut self, set: &SetRef, keys: &[&[u8]]) {
        let elems: Vec<Element> = keys.iter().map(|k| Element::key(k)).collect();
        self.elements(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            "add elements",
            set,
            &elems,
        );
    }

    /// Removes keys from a set or map (an error, ENOENT, if one is not there).
    pub fn delete_elements(&mut self, set: &SetRef, keys: &[&[u8]]) {
        let elems: Vec<Element> = keys.iter().map(|k| Element::key(k)).collect();
        self.elements(NFT_MSG_DELSETELEM, 0, "delete elements", set, &elems);
    }

    /// Adds prefixes of one family to an interval set, as nft 1.0.6 does for `add element`:
    /// each prefix its own range (start, and the address after it flagged as an end; none
    /// after the family's last address), neighbours not merged, so each can be deleted alone
    /// later. `first` (the set had no element yet) adds the end at the family's zero address
    /// that nft writes before the first range, unless a range starts there. The prefixes
    /// must not overlap each other or the set's (the kernel refuses that, EEXIST).
    pub fn add_ranges(&mut self, set: &SetRef, prefixes: &[IpNet], first: bool) {
        let elems = ranges(prefixes, first);
        if !elems.is_empty() {
            self.elements(NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add ranges", set, &elems);
        }
    }

    /// Removes prefixes that `add_ranges` added (both ends of each).
    pub fn delete_ranges(&mut self, set: &SetRef, prefixes: &[IpNet]) {
        let elems = ranges(prefixes, false);
        if !elems.is_empty() {
            self.elements(NFT_MSG_DELSETELEM, 0, "delete ranges", set, &elems);
        }
    }

    /// Adds `key → verdict` elements (keys in network byte order) to a verdict map; a key
    /// already there with another verdict is an error (EEXIST): delete it first.
    pub fn add_verdicts(&mut self, map: &SetRef, elements: &[(&[u8], Verdict)]) {
        let elems: Vec<Element> = elements
            .iter()
            .map(|(k, v)| Element {
                verdict: Some(v.clone()),
                ..Element::key(k)
            })
            .collect();
        self.elements(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            "add elements",
            map,
            &elems,
        );
    }

    /// Appends a rule to a chain, with an optional comment.
    pub fn add_rule(&mut self, chain: &str, exprs: &[Expr], comment: Option<&str>) {
        let t = self.table.clone();
        let what = format!("add rule to chain {chain}");
        self.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, what, |a| {
            a.str(NFTA_RULE_TABLE, &t);
            a.str(NFTA_RULE_CHAIN, chain);
            a.nest(NFTA_RULE_EXPRESSIONS, |l| {
                for e in exprs {
                    l.nest(NFTA_LIST_ELEM, |x| expr(x, e));
                }
            });
            if let Some(c) = comment {
                a.put(NFTA_RULE_USERDATA, &comment_udata(c));
            }
        });
    }

    /// Closes the batch. Every message asks for no acknowledgement but the last, which the
    /// kernel answers after the commit: one reply on success, errors before it otherwise.
    pub fn finish(mut self) -> Transaction {
        if let Some(last) = last_message(&self.buf) {
            let flags = u16::from_ne_bytes([self.buf[last + 6], self.buf[last + 7]]) | NLM_F_ACK;
            self.buf[last + 6..last + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        let seq = self.ops.len() as u32 + 1;
        let at = header(
            &mut self.buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        close(&mut self.buf, at);
        Transaction {
            bytes: self.buf,
            ops: self.ops,
        }
    }

    /// Whether the batch holds no object message.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A request for one table (`NFT_MSG_GETTABLE`, outside any batch): the kernel answers with the
/// table (`NFT_MSG_NEWTABLE`) or an error, ENOENT when there is none.
pub fn get_table(family: u8, table: &str, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(40);
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
    let at = header(&mut buf, kind, NLM_F_REQUEST, seq, family, 0);
    Attrs(&mut buf).str(NFTA_TABLE_NAME, table);
    close(&mut buf, at);
    buf
}

/// Offset of the last message after the batch header, if any.
fn last_message(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut last = None;
    while at + 4 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?) as usize;
        if at > 0 {
            last = Some(at);
        }
        at += len.next_multiple_of(4).max(16);
    }
    last
}

fn expr(x: &mut Attrs, e: &Expr) {
    let name = match e {
        Expr::Meta(_) => "meta",
        Expr::Cmp(..) => "cmp",
        Expr::Payload { .. } => "payload",
        Expr::Bitwise { .. } | Expr::Mask(_) => "bitwise",
        Expr::Lookup { .. } | Expr::Vmap(_) => "lookup",
        Expr::Ct(_) => "ct",
        Expr::Counter => "counter",
        Expr::Log { .. } => "log",
        Expr::Masquerade { .. } => "masq",
        Expr::Verdict(_) => "immediate",
    };
    x.str(NFTA_EXPR_NAME, name);
    x.nest(NFTA_EXPR_DATA, |d| match e {
        Expr::Meta(key) => {
            d.be32(NFTA_META_KEY, *key);
            d.be32(NFTA_META_DREG, NFT_REG_1);
        }
        Expr::Cmp(op, data) => {
            d.be32(NFTA_CMP_SREG, NFT_REG_1);
            d.be32(NFTA_CMP_OP, *op as u32);
            d.nest(NFTA_CMP_DATA, |v| v.put(NFTA_DATA_VALUE, data));
        }
        Expr::Payload { base, offset, len } => {
            d.be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            d.be32(NFTA_PAYLOAD_BASE, *base as u32);
            d.be32(NFTA_PAYLOAD_OFFSET, *offset);
            d.be32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::Bitwise { mask, xor } => {
            d.be32(NFTA_BITWISE_SREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_DREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_OP, NFT_BITWISE_BOOL);
            d.be32(NFTA_BITWISE_LEN, mask.len() as u32);
            d.nest(NFTA_BITWISE_MASK, |v| v.put(NFTA_DATA_VALUE, mask));
            d.nest(NFTA_BITWISE_XOR, |v| v.put(NFTA_DATA_VALUE, xor));
        }
        Expr::Mask(mask) => {
            d.be32(NFTA_BITWISE_SREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_DREG, NFT_REG_1);
            d.be32(NFTA_BITWISE_LEN, mask.len() as u32);
            d.nest(NFTA_BITWISE_MASK, |v| v.put(NFTA_DATA_VALUE, mask));
            let xor = vec![0; mask.len()];
            d.nest(NFTA_BITWISE_XOR, |v| v.put(NFTA_DATA_VALUE, &xor));
        }
        Expr::Lookup { set, invert } => {
            d.be32(NFTA_LOOKUP_SREG, NFT_REG_1);
            d.str(NFTA_LOOKUP_SET, &set.name);
            if let Some(id) = set.id {
                d.be32(NFTA_LOOKUP_SET_ID, id);
            }
            if *invert {
                d.be32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        }
        Expr::Vmap(set) => {
            d.be32(NFTA_LOOKUP_SREG, NFT_REG_1);
            d.be32(NFTA_LOOKUP_DREG, NFT_REG_VERDICT);
            d.str(NFTA_LOOKUP_SET, &set.name);
            if let Some(id) = set.id {
                d.be32(NFTA_LOOKUP_SET_ID, id);
            }
        }
        Expr::Ct(key) => {
            d.be32(NFTA_CT_KEY, *key);
            d.be32(NFTA_CT_DREG, NFT_REG_1);
        }
        // A new counter starts at zero.
        Expr::Counter => {}
        Expr::Log { prefix, group } => {
            if let Some(p) = prefix {
                d.str(NFTA_LOG_PREFIX, p);
            }
            d.put(NFTA_LOG_GROUP, &group.to_be_bytes());
        }
        Expr::Masquerade { fully_random } => {
            if *fully_random {
                d.be32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY);
            }
        }
        Expr::Verdict(v) => {
            d.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            d.nest(NFTA_IMMEDIATE_DATA, |data| verdict(data, v));
        }
    });
}

/// `NFTA_DATA_VERDICT`: the code, and the chain of a jump or goto.
fn verdict(data: &mut Attrs, v: &Verdict) {
    data.nest(NFTA_DATA_VERDICT, |vd| {
        vd.be32(NFTA_VERDICT_CODE, v.code());
        if let Some(chain) = v.chain() {
            vd.str(NFTA_VERDICT_CHAIN, chain);
        }
    });
}

/// A rule comment as nft stores it: a `NFTNL_UDATA_RULE_COMMENT` TLV, NUL-terminated. nft
/// limits comments to 128 bytes; longer ones are cut (podnet's are constants, well below).
fn comment_udata(c: &str) -> Vec<u8> {
    let mut text: Vec<u8> = c.as_bytes().iter().copied().take(127).collect();
    text.push(0);
    let mut v = vec![RULE_UDATA_COMMENT, text.len() as u8];
    v.extend_from_slice(&text);
    v
}

/// One set element: its key, flags (`NFT_SET_ELEM_INTERVAL_END`) and, in a verdict map,
/// its verdict.
struct Element {
    key: Vec<u8>,
    end: bool,
    verdict: Option<Verdict>,
}

impl Element {
    fn key(key: &[u8]) -> Element {
        Element {
            key: key.to_vec(),
            end: false,
            verdict: None,
        }
    }

    /// A range's start, or (`end`) the first address after it.
    fn bound(ip: IpAddr, end: bool) -> Element {
        let key = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        Element {
            key,
            end,
            verdict: None,
        }
    }

    /// About what `write` takes (for cutting lists).
    fn size(&self) -> usize {
        28 + self.key.len()
            + self
                .verdict
                .as_ref()
                .and_then(|v| v.chain())
                .map_or(0, |c| 20 + c.len())
    }

    fn write(&self, e: &mut Attrs) {
        if self.end {
            e.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        e.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &self.key));
        if let Some(v) = &self.verdict {
            e.nest(NFTA_SET_ELEM_DATA, |d| verdict(d, v));
        }
    }
}

/// A named interval set's elements for `prefixes` (see `Batch::add_ranges`), in address order.
fn ranges(prefixes: &[IpNet], first: bool) -> Vec<Element> {
    let mut sorted: Vec<IpNet> = prefixes.iter().map(|p| p.trunc()).collect();
    sorted.sort_unstable_by_key(|p| (p.network(), p.prefix_len()));
    let mut out = Vec::with_capacity(sorted.len() * 2 + 1);
    let zero = |p: &IpNet| match p {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    if let Some(p) = sorted.first().filter(|p| first && p.network() != zero(p)) {
        out.push(Element::bound(zero(p), true));
    }
    for p in &sorted {
        out.push(Element::bound(p.network(), false));
        if let Some(after) = successor(p.broadcast()) {
            out.push(Element::bound(after, true));
        }
    }
    out
}

/// The address after `ip`, if there is one.
fn successor(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// The elements nft writes for an interval set of prefixes: the ranges sorted and merged where
/// they touch or overlap, each as its first address and the address after its last marked
/// as an interval end; a leading end at 0.0.0.0 when the first range does not start there; no
/// end after a range that reaches 255.255.255.255.
pub fn interval_elements(prefixes: &[Ipv4Net]) -> Vec<(Ipv4Addr, bool)> {
    let prefixes: Vec<IpNet> = prefixes.iter().map(|&p| p.into()).collect();
    intervals(&prefixes)
        .into_iter()
        .filter_map(|(ip, end)| match ip {
            IpAddr::V4(a) => Some((a, end)),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// `interval_elements` for prefixes of one family, either: each range's start, and the first
/// address after it flagged as an end, merged where they overlap or touch; a leading end at
/// the family's zero address when the first range starts later, no end after the last address.
pub fn intervals(prefixes: &[IpNet]) -> Vec<(IpAddr, bool)> {
    let v6 = prefixes.first().is_some_and(|p| matches!(p, IpNet::V6(_)));
    debug_assert!(
        prefixes.iter().all(|p| matches!(p, IpNet::V6(_)) == v6),
        "one family per set: {prefixes:?}"
    );
    let addr = |x: u128| -> IpAddr {
        if v6 {
            IpAddr::V6(x.into())
        } else {
            IpAddr::V4((x as u32).into())
        }
    };
    let num = |a: IpAddr| -> u128 {
        match a {
            IpAddr::V4(a) => u32::from(a).into(),
            IpAddr::V6(a) => a.into(),
        }
    };
    // Inclusive ranges: the last address of ::/0 has no successor to name.
    let mut ranges: Vec<(u128, u128)> = prefixes
        .iter()
        .map(|p| (num(p.network()), num(p.broadcast())))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(m) if first <= m.1.saturating_add(1) => m.1 = m.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    let max = if v6 { u128::MAX } else { u32::MAX.into() };
    let mut out = Vec::new();
    if merged.first().is_some_and(|(first, _)| *first != 0) {
        out.push((addr(0), true));
    }
    for (first, last) in merged {
        out.push((addr(first), false));
        if last < max {
            out.push((addr(last + 1), true));
        }
    }
    out
}

#[cfg(test)]
mod tests;

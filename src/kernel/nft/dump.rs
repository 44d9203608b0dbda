//! nftables read over nfnetlink: dumps of tables, chains, sets with their elements and rules
//! with their expressions, parsed into typed objects (no `nft` program).
//!
//! A dump is one `NFT_MSG_GET*` request with `NLM_F_DUMP`; the kernel answers with one
//! `NFT_MSG_NEW*` message per object, in as many datagrams as it takes, then `NLMSG_DONE`. Set
//! elements are dumped set by set (the kernel wants the table and set named). The objects of a
//! ruleset come from several dumps, so the ruleset's generation is read before and after and
//! everything is read again when it moved in between (or a dump was marked interrupted,
//! `NLM_F_DUMP_INTR`): a `Ruleset` is always one generation's.
//!
//! The parser is pure and reads the same messages whether the kernel dumped them or `batch`
//! built them for a transaction (`Ruleset::from_messages`): what podnet wrote and what the kernel
//! holds compare in one representation. Expressions are kept at the kernel's level (registers,
//! loads, comparisons), the level both sides speak; attributes a request may leave out and the
//! kernel fills in (a lookup's flags, bitwise's operation) have the kernel's default.
//!
//! Invariant: parsing never panics on any bytes (a message is data from whoever wrote the
//! ruleset); a message that lacks what names its object is an error naming the attribute,
//! unknown attributes are skipped, unknown expressions kept as `Expr::Other` with their bytes.

use std::collections::BTreeMap;

use netlink_sys::Socket;

use super::super::KernelError;
use super::super::netlink::raw;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;

// Attributes (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_HANDLE: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_HANDLE: u16 = 2;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_PAYLOAD_SREG: u16 = 5;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_MASQ_FLAGS: u16 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_FLAGS: u16 = 7;

/// `NFT_SET_ANONYMOUS`: a set made for one rule (`{ a, b }` written inline).
pub const SET_ANONYMOUS: u32 = 0x1;
/// `NFT_SET_INTERVAL`: elements are ranges, each start followed by an end element.
pub const SET_INTERVAL: u32 = 0x4;
/// `NFT_SET_MAP`: elements carry data (a map or verdict map).
pub const SET_MAP: u32 = 0x8;
/// `NFT_SET_ELEM_INTERVAL_END`.
pub const ELEM_INTERVAL_END: u32 = 0x1;
/// `NFT_SET_ELEM_CATCHALL`: the element matches every key (it has none).
pub const ELEM_CATCHALL: u32 = 0x2;
/// `NFT_LOOKUP_F_INV`: the lookup matches when the key is not in the set.
pub const LOOKUP_INVERT: u32 = 0x1;
/// `NFT_NAT_SNAT`.
pub const NAT_SNAT: u32 = 0;
/// `NFT_REG_VERDICT`.
pub const REG_VERDICT: u32 = 0;

/// Verdict codes (`NF_DROP`, `NF_ACCEPT`, `NFT_*`).
pub const VERDICT_DROP: i32 = 0;
pub const VERDICT_ACCEPT: i32 = 1;
pub const VERDICT_CONTINUE: i32 = -1;
pub const VERDICT_BREAK: i32 = -2;
pub const VERDICT_JUMP: i32 = -3;
pub const VERDICT_GOTO: i32 = -4;
pub const VERDICT_RETURN: i32 = -5;

/// `enum nft_cmp_ops`.
pub const CMP_EQ: u32 = 0;
pub const CMP_NEQ: u32 = 1;
pub const CMP_LT: u32 = 2;
pub const CMP_LTE: u32 = 3;
pub const CMP_GT: u32 = 4;
pub const CMP_GTE: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `NFPROTO_*`.
    pub family: u8,
    pub name: String,
    pub flags: u32,
    pub handle: u64,
}

/// What makes a chain a base chain: its type, hook (`enum nf_inet_hooks`), priority and
/// policy (a verdict code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHook {
    pub kind: String,
    pub hook: u32,
    pub priority: i32,
    pub policy: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub family: u8,
    pub table: String,
    pub name: String,
    pub handle: u64,
    pub base: Option<ChainHook>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Data {
    Value(Vec<u8>),
    /// A verdict code and, for jump and goto, the chain.
    Verdict(i32, Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    pub key: Vec<u8>,
    /// The last key of a range (sets of concatenations with intervals).
    pub key_end: Option<Vec<u8>>,
    pub flags: u32,
    /// A map's value.
    pub data: Option<Data>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub family: u8,
    pub table: String,
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub data_type: Option<u32>,
    pub data_len: Option<u32>,
    pub userdata: Option<Vec<u8>>,
    /// The id a transaction gave it (requests only: the kernel does not dump it).
    pub id: Option<u32>,
    pub elements: Vec<Element>,
}

/// One expression of a rule, at the kernel's level: registers are numbers as the kernel has
/// them (`NFT_REG_1`.. or `NFT_REG32_00`..; 0 is the verdict register).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load `key` (`NFT_META_*`) into `dreg`; with `sreg` instead, set it.
    Meta {
        key: u32,
        dreg: Option<u32>,
        sreg: Option<u32>,
    },
    /// Load `len` bytes at `offset` of header `base` (1 network, 2 transport).
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor` when `op` is 0 (boolean); shifts otherwise.
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        op: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Lookup {
        set: String,
        /// The set's id in a transaction (requests only).
        set_id: Option<u32>,
        sreg: u32,
        dreg: Option<u32>,
        flags: u32,
    },
    Counter {
        packets: u64,
        bytes: u64,
    },
    Immediate {
        dreg: u32,
        data: Data,
    },
    Masq {
        flags: u32,
    },
    Nat {
        kind: u32,
        family: u32,
        addr_min: Option<u32>,
        flags: u32,
    },
    /// An expression this parser does not model: its name and its data attributes' bytes.
    Other {
        name: String,
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<Expr>,
    pub userdata: Option<Vec<u8>>,
}

impl Rule {
    /// The comment nft keeps in the rule's user data (`NFTNL_UDATA_RULE_COMMENT`, type 0).
    pub fn comment(&self) -> Option<String> {
        let mut u = self.userdata.as_deref()?;
        while u.len() >= 2 {
            let (kind, len) = (u[0], usize::from(u[1]));
            let value = u.get(2..2 + len)?;
            if kind == 0 {
                let text = value.split(|b| *b == 0).next().unwrap_or(value);
                return Some(String::from_utf8_lossy(text).into_owned());
            }
            u = &u[2 + len..];
        }
        None
    }

    /// The rule's counter (the first), as (packets, bytes).
    pub fn counter(&self) -> Option<(u64, u64)> {
        self.exprs.iter().find_map(|e| match e {
            Expr::Counter { packets, bytes } => Some((*packets, *bytes)),
            _ => None,
        })
    }
}

/// Tables, chains, sets (with elements) and rules, in the order the kernel listed them (rules:
/// in their chain's order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
    pub chains: Vec<Chain>,
    pub sets: Vec<Set>,
    pub rules: Vec<Rule>,
}

fn bad(what: impl std::fmt::Display) -> KernelError {
    KernelError::decode("read nftables", what.to_string())
}

fn be32(v: &[u8], field: &str) -> Result<u32, KernelError> {
    let b: [u8; 4] = v
        .try_into()
        .map_err(|_| bad(format_args!("{field}: {} bytes, not 4", v.len())))?;
    Ok(u32::from_be_bytes(b))
}

fn be64(v: &[u8], field: &str) -> Result<u64, KernelError> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| bad(format_args!("{field}: {} bytes, not 8", v.len())))?;
    Ok(u64::from_be_bytes(b))
}

fn string(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()
}

fn need<T>(v: Option<T>, field: &str) -> Result<T, KernelError> {
    v.ok_or_else(|| bad(format_args!("no {field}")))
}

fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> + '_ {
    raw::attributes(b)
}

fn table(family: u8, a: &[u8]) -> Result<Table, KernelError> {
    let (mut name, mut flags, mut handle) = (None, 0, 0);
    for (k, v) in attrs(a) {
        match k {
            NFTA_TABLE_NAME => name = Some(string(v)),
            NFTA_TABLE_FLAGS => flags = be32(v, "table flags")?,
            NFTA_TABLE_HANDLE => handle = be64(v, "table handle")?,
            _ => {}
        }
    }
    let name = need(name, "table name")?;
    Ok(Table {
        family,
        name,
        flags,
        handle,
    })
}

fn chain(family: u8, a: &[u8]) -> Result<Chain, KernelError> {
    let (mut table, mut name, mut handle) = (None, None, 0);
    let (mut kind, mut hook, mut priority, mut policy) = (None, None, 0, VERDICT_ACCEPT);
    for (k, v) in attrs(a) {
        match k {
            NFTA_CHAIN_TABLE => table = Some(string(v)),
            NFTA_CHAIN_NAME => name = Some(string(v)),
            NFTA_CHAIN_HANDLE => handle = be64(v, "chain handle")?,
            NFTA_CHAIN_TYPE => kind = Some(string(v)),
            NFTA_CHAIN_POLICY => policy = be32(v, "chain policy")? as i32,
            NFTA_CHAIN_HOOK => {
                for (k, v) in attrs(v) {
                    match k {
                        NFTA_HOOK_HOOKNUM => hook = Some(be32(v, "chain hook number")?),
                        NFTA_HOOK_PRIORITY => priority = be32(v, "chain priority")? as i32,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let table = need(table, "chain table")?;
    let name = need(name, "chain name")?;
    let base = hook.map(|hook| ChainHook {
        kind: kind.unwrap_or_else(|| "filter".into()),
        hook,
        priority,
        policy,
    });
    Ok(Chain {
        family,
        table,
        name,
        handle,
        base,
    })
}

fn set(family: u8, a: &[u8]) -> Result<Set, KernelError> {
    let mut s = Set {
        family,
        table: String::new(),
        name: String::new(),
        flags: 0,
        key_type: 0,
        key_len: 0,
        data_type: None,
        data_len: None,
        userdata: None,
        id: None,
        elements: Vec::new(),
    };
    let (mut table, mut name) = (None, None);
    for (k, v) in attrs(a) {
        match k {
            NFTA_SET_TABLE => table = Some(string(v)),
            NFTA_SET_NAME => name = Some(string(v)),
            NFTA_SET_FLAGS => s.flags = be32(v, "set flags")?,
            NFTA_SET_KEY_TYPE => s.key_type = be32(v, "set key type")?,
            NFTA_SET_KEY_LEN => s.key_len = be32(v, "set key length")?,
            NFTA_SET_DATA_TYPE => s.data_type = Some(be32(v, "set data type")?),
            NFTA_SET_DATA_LEN => s.data_len = Some(be32(v, "set data length")?),
            NFTA_SET_USERDATA => s.userdata = Some(v.to_vec()),
            NFTA_SET_ID => s.id = Some(be32(v, "set id")?),
            _ => {}
        }
    }
    s.table = need(table, "set table")?;
    s.name = need(name, "set name")?;
    Ok(s)
}

/// `struct nft_data`'s attributes: a value, or a verdict.
fn data(a: &[u8], field: &str) -> Result<Data, KernelError> {
    for (k, v) in attrs(a) {
        match k {
            NFTA_DATA_VALUE => return Ok(Data::Value(v.to_vec())),
            NFTA_DATA_VERDICT => {
                let (mut code, mut chain) = (None, None);
                for (k, v) in attrs(v) {
                    match k {
                        NFTA_VERDICT_CODE => code = Some(be32(v, field)? as i32),
                        NFTA_VERDICT_CHAIN => chain = Some(string(v)),
                        _ => {}
                    }
                }
                return Ok(Data::Verdict(need(code, field)?, chain));
            }
            _ => {}
        }
    }
    Err(bad(format_args!("{field}: neither a value nor a verdict")))
}

fn value(a: &[u8], field: &str) -> Result<Vec<u8>, KernelError> {
    match data(a, field)? {
        Data::Value(v) => Ok(v),
        Data::Verdict(..) => Err(bad(format_args!("{field}: a verdict, not a value"))),
    }
}

/// Elements of one `NFT_MSG_NEWSETELEM` message, and the set they belong to.
struct Elements {
    table: String,
    set: String,
    set_id: Option<u32>,
    elements: Vec<Element>,
}

fn elements(a: &[u8]) -> Result<Elements, KernelError> {
    let (mut table, mut set, mut set_id, mut out) = (None, None, None, Vec::new());
    for (k, v) in attrs(a) {
        match k {
            NFTA_SET_ELEM_LIST_TABLE => table = Some(string(v)),
            NFTA_SET_ELEM_LIST_SET => set = Some(string(v)),
            NFTA_SET_ELEM_LIST_SET_ID => set_id = Some(be32(v, "element list set id")?),
            NFTA_SET_ELEM_LIST_ELEMENTS => {
                // Any attribute type, as the kernel reads the list: its dumps number every
                // element NFTA_LIST_ELEM, nft's transactions (and podnet's) 1, 2, 3, ...
                for (_, e) in attrs(v) {
                    out.push(element(e)?);
                }
            }
            _ => {}
        }
    }
    Ok(Elements {
        table: need(table, "element list table")?,
        set: need(set, "element list set")?,
        set_id,
        elements: out,
    })
}

fn element(a: &[u8]) -> Result<Element, KernelError> {
    let mut e = Element {
        key: Vec::new(),
        key_end: None,
        flags: 0,
        data: None,
    };
    let mut key = None;
    for (k, v) in attrs(a) {
        match k {
            NFTA_SET_ELEM_KEY => key = Some(value(v, "element key")?),
            NFTA_SET_ELEM_KEY_END => e.key_end = Some(value(v, "element key end")?),
            NFTA_SET_ELEM_FLAGS => e.flags = be32(v, "element flags")?,
            NFTA_SET_ELEM_DATA => e.data = Some(data(v, "element data")?),
            _ => {}
        }
    }
    // A catch-all element (`*`, Linux 5.13+) has no key: another program's set may hold one.
    e.key = match key {
        Some(key) => key,
        None if e.flags & ELEM_CATCHALL != 0 => Vec::new(),
        None => return Err(bad(format_args!("no element key"))),
    };
    Ok(e)
}

fn rule(family: u8, a: &[u8]) -> Result<Rule, KernelError> {
    let (mut table, mut chain) = (None, None);
    let mut r = Rule {
        family,
        table: String::new(),
        chain: String::new(),
        handle: 0,
        exprs: Vec::new(),
        userdata: None,
    };
    for (k, v) in attrs(a) {
        match k {
            NFTA_RULE_TABLE => table = Some(string(v)),
            NFTA_RULE_CHAIN => chain = Some(string(v)),
            NFTA_RULE_HANDLE => r.handle = be64(v, "rule handle")?,
            NFTA_RULE_USERDATA => r.userdata = Some(v.to_vec()),
            NFTA_RULE_EXPRESSIONS => {
                // Any attribute type, as the kernel reads the list.
                for (_, e) in attrs(v) {
                    r.exprs.push(expr(e)?);
                }
            }
            _ => {}
        }
    }
    r.table = need(table, "rule table")?;
    r.chain = need(chain, "rule chain")?;
    Ok(r)
}

fn expr(a: &[u8]) -> Result<Expr, KernelError> {
    let (mut name, mut body) = (None, &[][..]);
    for (k, v) in attrs(a) {
        match k {
            NFTA_EXPR_NAME => name = Some(string(v)),
            NFTA_EXPR_DATA => body = v,
            _ => {}
        }
    }
    let name = need(name, "expression name")?;
    let field = |k: u16| attrs(body).find(|(t, _)| *t == k).map(|(_, v)| v);
    let u32_of = |k: u16, what: &str| field(k).map(|v| be32(v, what)).transpose();
    let u64_of = |k: u16, what: &str| field(k).map(|v| be64(v, what)).transpose();
    let value_of = |k: u16, what: &str| field(k).map(|v| value(v, what)).transpose();
    let e = match name.as_str() {
        "meta" => Expr::Meta {
            key: need(u32_of(NFTA_META_KEY, "meta key")?, "meta key")?,
            dreg: u32_of(NFTA_META_DREG, "meta dreg")?,
            sreg: u32_of(NFTA_META_SREG, "meta sreg")?,
        },
        "payload" if field(NFTA_PAYLOAD_SREG).is_none() => Expr::Payload {
            dreg: need(u32_of(NFTA_PAYLOAD_DREG, "payload dreg")?, "payload dreg")?,
            base: need(u32_of(NFTA_PAYLOAD_BASE, "payload base")?, "payload base")?,
            offset: need(u32_of(NFTA_PAYLOAD_OFFSET, "payload offset")?, "offset")?,
            len: need(u32_of(NFTA_PAYLOAD_LEN, "payload len")?, "payload len")?,
        },
        "cmp" => Expr::Cmp {
            sreg: need(u32_of(NFTA_CMP_SREG, "cmp sreg")?, "cmp sreg")?,
            op: need(u32_of(NFTA_CMP_OP, "cmp op")?, "cmp op")?,
            data: need(value_of(NFTA_CMP_DATA, "cmp data")?, "cmp data")?,
        },
        "bitwise" => Expr::Bitwise {
            sreg: need(u32_of(NFTA_BITWISE_SREG, "bitwise sreg")?, "bitwise sreg")?,
            dreg: need(u32_of(NFTA_BITWISE_DREG, "bitwise dreg")?, "bitwise dreg")?,
            len: need(u32_of(NFTA_BITWISE_LEN, "bitwise len")?, "bitwise len")?,
            op: u32_of(NFTA_BITWISE_OP, "bitwise op")?.unwrap_or(0),
            mask: value_of(NFTA_BITWISE_MASK, "bitwise mask")?.unwrap_or_default(),
            xor: value_of(NFTA_BITWISE_XOR, "bitwise xor")?.unwrap_or_default(),
        },
        "lookup" => Expr::Lookup {
            set: need(field(NFTA_LOOKUP_SET).map(string), "lookup set")?,
            set_id: u32_of(NFTA_LOOKUP_SET_ID, "lookup set id")?,
            sreg: need(u32_of(NFTA_LOOKUP_SREG, "lookup sreg")?, "lookup sreg")?,
            dreg: u32_of(NFTA_LOOKUP_DREG, "lookup dreg")?,
            flags: u32_of(NFTA_LOOKUP_FLAGS, "lookup flags")?.unwrap_or(0),
        },
        "counter" => Expr::Counter {
            packets: u64_of(NFTA_COUNTER_PACKETS, "counter packets")?.unwrap_or(0),
            bytes: u64_of(NFTA_COUNTER_BYTES, "counter bytes")?.unwrap_or(0),
        },
        "immediate" => Expr::Immediate {
            dreg: need(u32_of(NFTA_IMMEDIATE_DREG, "immediate dreg")?, "dreg")?,
            data: data(
                need(field(NFTA_IMMEDIATE_DATA), "immediate data")?,
                "immediate data",
            )?,
        },
        "masq" => Expr::Masq {
            flags: u32_of(NFTA_MASQ_FLAGS, "masq flags")?.unwrap_or(0),
        },
        "nat" => Expr::Nat {
            kind: need(u32_of(NFTA_NAT_TYPE, "nat type")?, "nat type")?,
            family: u32_of(NFTA_NAT_FAMILY, "nat family")?.unwrap_or(0),
            addr_min: u32_of(NFTA_NAT_REG_ADDR_MIN, "nat address register")?,
            flags: u32_of(NFTA_NAT_FLAGS, "nat flags")?.unwrap_or(0),
        },
        _ => Expr::Other {
            name,
            data: body.to_vec(),
        },
    };
    Ok(e)
}

impl Ruleset {
    /// The objects of nftables messages, given as (message type without the subsystem,
    /// nfgenmsg family, attributes): a dump's answers or a transaction's requests alike.
    /// Other messages (batch begin and end, deletions) are skipped.
    pub fn from_messages<'a>(
        msgs: impl IntoIterator<Item = (u16, u8, &'a [u8])>,
    ) -> Result<Ruleset, KernelError> {
        let mut rs = Ruleset::default();
        let mut elems: Vec<(u8, Elements)> = Vec::new();
        for (kind, family, a) in msgs {
            match kind {
                NFT_MSG_NEWTABLE => rs.tables.push(table(family, a)?),
                NFT_MSG_NEWCHAIN => rs.chains.push(chain(family, a)?),
                NFT_MSG_NEWSET => rs.sets.push(set(family, a)?),
                NFT_MSG_NEWRULE => rs.rules.push(rule(family, a)?),
                NFT_MSG_NEWSETELEM => {
                    elems.push((family, elements(a)?));
                }
                _ => {}
            }
        }
        for (family, e) in elems {
            if let Some(set) = rs.set_mut(family, &e.table, &e.set, e.set_id) {
                set.elements.extend(e.elements);
            }
        }
        Ok(rs)
    }

    /// The objects of a datagram of nftables messages (a transaction's bytes).
    pub fn from_datagram(bytes: &[u8]) -> Result<Ruleset, KernelError> {
        let msgs: Vec<(u16, u8, &[u8])> = raw::messages(bytes)
            .filter(|m| m.kind >> 8 == NFNL_SUBSYS_NFTABLES && m.payload.len() >= 4)
            .map(|m| (m.kind & 0xff, m.payload[0], &m.payload[4..]))
            .collect();
        Ruleset::from_messages(msgs)
    }

    /// The set a lookup or an element list names: by its transaction id when it has one (a
    /// transaction names all its anonymous sets `__set%d`), else by name.
    pub fn set(&self, family: u8, table: &str, name: &str, id: Option<u32>) -> Option<&Set> {
        self.sets.iter().find(|s| {
            s.family == family
                && s.table == table
                && match id {
                    Some(id) => s.id == Some(id),
                    None => s.name == name,
                }
        })
    }

    fn set_mut(
        &mut self,
        family: u8,
        table: &str,
        name: &str,
        id: Option<u32>,
    ) -> Option<&mut Set> {
        self.sets.iter_mut().find(|s| {
            s.family == family
                && s.table == table
                && match id {
                    Some(id) => s.id == Some(id),
                    None => s.name == name,
                }
        })
    }

    pub fn chain(&self, family: u8, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }

    /// A chain's rules, in order.
    pub fn rules_of<'a>(
        &'a self,
        family: u8,
        table: &'a str,
        chain: &'a str,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.family == family && r.table == table && r.chain == chain)
    }

    /// The rules of one table.
    pub fn only_rules_of(self, family: u8, table: &str) -> Vec<Rule> {
        self.rules
            .into_iter()
            .filter(|r| r.family == family && r.table == table)
            .collect()
    }

    /// Only the objects of one table.
    pub fn only_table(mut self, family: u8, name: &str) -> Ruleset {
        self.tables.retain(|t| t.family == family && t.name == name);
        self.chains
            .retain(|t| t.family == family && t.table == name);
        self.sets.retain(|t| t.family == family && t.table == name);
        self.rules.retain(|t| t.family == family && t.table == name);
        self
    }
}

/// A dump request: `kind` (`NFT_MSG_GET*`) for `family` (0: every family), with string
/// attributes narrowing it.
fn request(kind: u16, family: u8, seq: u32, attrs: &[(u16, &str)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, 0, 0, 0]);
    for (k, s) in attrs {
        let len = 4 + s.len() + 1;
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&k.to_ne_bytes());
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        b.resize(b.len().next_multiple_of(4), 0);
    }
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b
}

/// Sequence numbers of dump requests (distinct from `generation`'s and `table_exists`').
const DUMP_SEQ: u32 = 0x7000_0000;
/// How many times a ruleset is read again when it changed while being read.
const DUMP_TRIES: usize = 8;

/// One dump's answers as whole messages (header included); `Ok(None)` when the kernel marked
/// the dump interrupted by a change.
pub(super) fn dump_on(
    s: &Socket,
    kind: u16,
    family: u8,
    attrs: &[(u16, &str)],
) -> Result<Option<Vec<Vec<u8>>>, KernelError> {
    let op = format!("dump nftables objects (message type {kind})");
    let seq = DUMP_SEQ + u32::from(kind);
    let req = request(kind, family, seq, attrs);
    let (mut out, mut interrupted) = (Vec::new(), false);
    super::ask(s, &req, seq, &op, |m| {
        interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
        if m.kind == raw::NLMSG_DONE {
            return Some(!interrupted);
        }
        out.push(m.bytes.to_vec());
        None
    })
    .map(|whole| whole.then_some(out))
}

/// One table's rules (one dump, narrowed to the table by the kernel); none when the table
/// does not exist.
pub(super) fn rules_on(s: &Socket, family: u8, table: &str) -> Result<Vec<Rule>, KernelError> {
    for _ in 0..DUMP_TRIES {
        match dump_on(s, NFT_MSG_GETRULE, family, &[(NFTA_RULE_TABLE, table)]) {
            Ok(Some(msgs)) => return Ok(parse_messages(&msgs)?.only_rules_of(family, table)),
            Ok(None) => continue,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
    Err(KernelError::Other(format!(
        "read nftables table {table}: it changed during each of {DUMP_TRIES} reads"
    )))
}

/// The objects of whole messages.
pub fn parse_messages(msgs: &[Vec<u8>]) -> Result<Ruleset, KernelError> {
    let mut parts = Vec::with_capacity(msgs.len());
    for m in msgs {
        if let Some(m) = raw::messages(m).next()
            && m.kind >> 8 == NFNL_SUBSYS_NFTABLES
            && m.payload.len() >= 4
        {
            parts.push((m.kind & 0xff, m.payload[0], &m.payload[4..]));
        }
    }
    Ruleset::from_messages(parts)
}

/// What to read: every table of every family, or one table.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Table(u8, &'a str),
}

/// The raw answers of the dumps that make up a ruleset (tables, chains, sets, elements set by
/// set, rules), all of one generation: read again when the generation moved meanwhile.
pub(super) fn read_messages(
    s: &Socket,
    scope: Scope<'_>,
    generation: impl Fn() -> Result<u32, KernelError>,
) -> Result<Vec<Vec<u8>>, KernelError> {
    for _ in 0..DUMP_TRIES {
        let before = generation()?;
        if let Some(msgs) = read_once(s, scope)?
            && generation()? == before
        {
            return Ok(msgs);
        }
    }
    Err(KernelError::Other(format!(
        "read nftables: the ruleset changed during each of {DUMP_TRIES} reads"
    )))
}

fn read_once(s: &Socket, scope: Scope<'_>) -> Result<Option<Vec<Vec<u8>>>, KernelError> {
    let (family, table) = match scope {
        Scope::All => (0, None),
        Scope::Table(f, t) => (f, Some(t)),
    };
    let filter: Vec<(u16, &str)> = table.map(|t| (NFTA_RULE_TABLE, t)).into_iter().collect();
    let mut msgs = Vec::new();
    for kind in [
        NFT_MSG_GETTABLE,
        NFT_MSG_GETCHAIN,
        NFT_MSG_GETSET,
        NFT_MSG_GETRULE,
    ] {
        // The kernel narrows set and rule dumps to a table (NFTA_SET_TABLE and NFTA_RULE_TABLE
        // are both 1), not table and chain dumps: the caller keeps only the table's objects.
        let narrow = if matches!(kind, NFT_MSG_GETSET | NFT_MSG_GETRULE) {
            &filter[..]
        } else {
            &[]
        };
        match dump_on(s, kind, family, narrow) {
            Ok(Some(got)) => msgs.extend(got),
            Ok(None) => return Ok(None),
            // A dump narrowed to a table that does not exist.
            Err(e) if table.is_some() && e.errno() == Some(libc::ENOENT) => {
                return Ok(Some(Vec::new()));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(t) = table {
        let rs = parse_messages(&msgs)?.only_table(family, t);
        if rs.tables.is_empty() {
            return Ok(Some(Vec::new()));
        }
    }
    let sets = parse_messages(&msgs)?.sets;
    for set in sets.iter().filter(|s| table.is_none_or(|t| s.table == t)) {
        let attrs = [
            (NFTA_SET_ELEM_LIST_TABLE, set.table.as_str()),
            (NFTA_SET_ELEM_LIST_SET, set.name.as_str()),
        ];
        match dump_on(s, NFT_MSG_GETSETELEM, set.family, &attrs) {
            Ok(Some(got)) => msgs.extend(got),
            Ok(None) => return Ok(None),
            // Gone since the set dump: the generation check reads everything again.
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(msgs))
}

/// A set as it is compared: everything but its name, handle and transaction id, its elements
/// sorted (the kernel lists them in its own order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetShape {
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub data_type: Option<u32>,
    pub data_len: Option<u32>,
    pub userdata: Option<Vec<u8>>,
    pub elements: Vec<Element>,
}

impl SetShape {
    fn of(s: &Set) -> SetShape {
        let mut elements = s.elements.clone();
        elements.sort();
        SetShape {
            flags: s.flags,
            key_type: s.key_type,
            key_len: s.key_len,
            data_type: s.data_type,
            data_len: s.data_len,
            userdata: s.userdata.clone(),
            elements,
        }
    }
}

/// A rule as it is compared: its expressions with counters at zero and, for a lookup in an
/// anonymous set, the set's shape in place of its name (the kernel names them by number, a
/// transaction by pattern); and its user data (the comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleShape {
    pub exprs: Vec<(Expr, Option<SetShape>)>,
    pub userdata: Option<Vec<u8>>,
}

/// A table as it is compared: what it holds, without handles, counter values, set ids or the
/// names of anonymous sets. Two tables with the same shape filter and rewrite alike; the same
/// for a table as a transaction writes it and as the kernel dumps it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub flags: u32,
    /// Per chain: its hook (base chains) and its rules in order.
    pub chains: BTreeMap<String, (Option<ChainHook>, Vec<RuleShape>)>,
    /// Named sets.
    pub sets: BTreeMap<String, SetShape>,
}

impl Ruleset {
    /// The shape of one table of this ruleset; `None` when it has no such table.
    pub fn shape(&self, family: u8, table: &str) -> Option<TableShape> {
        let t = self
            .tables
            .iter()
            .find(|t| t.family == family && t.name == table)?;
        let mut chains = BTreeMap::new();
        for c in self
            .chains
            .iter()
            .filter(|c| c.family == family && c.table == table)
        {
            let rules = self
                .rules_of(family, table, &c.name)
                .map(|r| self.rule_shape(r))
                .collect();
            chains.insert(c.name.clone(), (c.base.clone(), rules));
        }
        let sets = self
            .sets
            .iter()
            .filter(|s| s.family == family && s.table == table && s.flags & SET_ANONYMOUS == 0)
            .map(|s| (s.name.clone(), SetShape::of(s)))
            .collect();
        Some(TableShape {
            flags: t.flags,
            chains,
            sets,
        })
    }

    fn rule_shape(&self, r: &Rule) -> RuleShape {
        let exprs = r
            .exprs
            .iter()
            .map(|e| match e {
                Expr::Counter { .. } => (
                    Expr::Counter {
                        packets: 0,
                        bytes: 0,
                    },
                    None,
                ),
                Expr::Lookup {
                    set,
                    set_id,
                    sreg,
                    dreg,
                    flags,
                } => {
                    let found = self.set(r.family, &r.table, set, *set_id);
                    let anonymous = found.filter(|s| s.flags & SET_ANONYMOUS != 0);
                    let name = match anonymous {
                        Some(_) => String::new(),
                        None => set.clone(),
                    };
                    let e = Expr::Lookup {
                        set: name,
                        set_id: None,
                        sreg: *sreg,
                        dreg: *dreg,
                        flags: *flags,
                    };
                    (e, anonymous.map(SetShape::of))
                }
                other => (other.clone(), None),
            })
            .collect();
        RuleShape {
            exprs,
            userdata: r.userdata.clone(),
        }
    }
}

/// Counter values summed by rule comment, for the rules that have both.
pub fn counters_by_comment(rules: &[Rule]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in rules {
        if let (Some(c), Some((p, b))) = (r.comment(), r.counter()) {
            let e = out.entry(c).or_default();
            e.0 += p;
            e.1 += b;
        }
    }
    out
}

/// Netlink messages kept as hex, one a line (the tests' captures of what the kernel or nft
/// sent).
#[cfg(test)]
pub(crate) fn hex_lines(hex: &str) -> Vec<Vec<u8>> {
    hex.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

/// The captured kernel dump the unit tests read (podnetd's table and other software's
/// tables), parsed.
#[cfg(test)]
pub(crate) fn captured_ruleset() -> Ruleset {
    parse_messages(&hex_lines(tests::RULESET)).expect("the captured dump parses")
}

#[cfg(test)]
mod tests;

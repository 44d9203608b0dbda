//! nftables, in the calling process's namespace, two ways:
//! - over nfnetlink from the process itself: a `Batch` built in `batch` is one atomic
//!   transaction, sent in one datagram on a `NETLINK_NETFILTER` socket; no program is started.
//!   The CNI plugin writes its masquerade rules so (an `NftSocket` per call, closed by a
//!   grandchild: `close_detached`), podnetd its own table and the policy table (`NftSocket`,
//!   one socket kept open per owner thread, whose port id the notifications of its
//!   transactions carry), and `delete_table` (teardown) deletes so.
//! - read over nfnetlink too (`dump`, on an `NftSocket`): tables, chains, sets with their
//!   elements and rules with their expressions as typed objects, for the daemon's drift check,
//!   its search for foreign masquerade rules, the policy counters and the plugin's check that
//!   its table is in place before it adds a pod's element alone.
//! - through the `nft` tool: the ruleset as JSON for `doctor`, and scripts applied as one
//!   transaction (`apply`: the oracle of tests and benchmarks).

use std::io::Write;
use std::process::{Command, Stdio};

use super::KernelError;

mod batch;
pub mod dump;
mod watch;

pub use batch::{
    Base, BaseChain, Batch, CT_STATE_ESTABLISHED, CT_STATE_RELATED, CmpOp, Expr, Hook,
    IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, META_L4PROTO, META_MARK, META_NFPROTO,
    NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6, SetRef, SetSpec, TYPE_IPV4_ADDR, TYPE_IPV6_ADDR,
    Transaction, Verdict, interval_elements,
};
pub use watch::{Commit, Commits, NftEvents, generation};

use std::os::fd::AsRawFd;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::netlink::raw;

/// `NLM_F_ACK_TLVS`: the error message carries extended-ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's text for an error.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// How long to wait for the kernel's answer (it is queued before `send` returns; this only
/// bounds a kernel that never answers).
const ANSWER_TIMEOUT_SECS: i32 = 10;

/// The `nfproto` number of an nft family name (`inet`, `ip`, `ip6`).
pub fn family_code(name: &str) -> Option<u8> {
    match name {
        "inet" => Some(NFPROTO_INET),
        "ip" => Some(NFPROTO_IPV4),
        "ip6" => Some(NFPROTO_IPV6),
        _ => None,
    }
}

/// Sends one transaction and waits for its outcome: all of it committed, or none of it and the
/// error of the first operation that failed (named as in `Transaction::ops`).
pub fn commit(t: &Transaction) -> Result<(), KernelError> {
    if t.ops.is_empty() {
        return Ok(());
    }
    let s = open()?;
    exchange(&s, t)
}

/// `commit`, without waiting for the kernel's cleanup. When the last nfnetlink socket of a
/// process is closed after a commit, the kernel first finishes that commit's deferred release,
/// which waits for an RCU grace period: 4–16 ms here, more than everything else in a CNI ADD
/// (the `nft` program pays it too, when it exits). So the socket is closed by a grandchild
/// instead (two forks, no exec; the child exits at once and is reaped here, the grandchild
/// keeps nothing but the socket, closes it and exits), and the caller goes on.
pub fn commit_detached(t: &Transaction) -> Result<(), KernelError> {
    if t.ops.is_empty() {
        return Ok(());
    }
    let s = NftSocket::open()?;
    let outcome = s.commit(t);
    s.close_detached();
    outcome
}

fn open() -> Result<Socket, KernelError> {
    open_bound().map(|(s, _)| s)
}

/// A socket and the port id the kernel bound it to.
fn open_bound() -> Result<(Socket, u32), KernelError> {
    let op = "open an nfnetlink socket";
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(|e| KernelError::io(op, e))?;
    let addr = s.bind_auto().map_err(|e| KernelError::io(op, e))?;
    // Errors echo only the failed message's header, and carry the kernel's text when it has one.
    let _ = s.set_cap_ack(true);
    let _ = s.set_ext_ack(true);
    Ok((s, addr.port_number()))
}

/// An nfnetlink socket kept open for one owner's transactions, in the namespace it was opened
/// in (whatever thread uses it later).
///
/// nftables announces every transaction with the netlink port id of the socket that committed
/// it (`Commit::port`); a port id is unique in a namespace while its socket is open, so the
/// owner tells its own transactions from everyone else's by `port`, whichever thread, process
/// or pid namespace it runs in. Keeping the socket also spares every commit the close that
/// waits for the kernel's cleanup (see `commit_detached`).
///
/// Invariant: between two calls nothing is left unread on the socket (each call reads up to
/// the answer it waits for, and drops anything older first), so an answer is never taken for
/// a later request's.
pub struct NftSocket {
    socket: Socket,
    port: u32,
}

impl NftSocket {
    pub fn open() -> Result<NftSocket, KernelError> {
        let (socket, port) = open_bound()?;
        // The bound on every wait for an answer, from the first request on.
        socket_options(socket.as_raw_fd(), 0);
        Ok(NftSocket { socket, port })
    }

    /// The port id its transactions are announced with.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Sends one transaction and waits for its outcome (see `commit`).
    pub fn commit(&self, t: &Transaction) -> Result<(), KernelError> {
        if t.ops.is_empty() {
            return Ok(());
        }
        self.drain();
        exchange(&self.socket, t)
    }

    /// The ruleset's current generation (see `generation`), asked on this socket.
    pub fn generation(&self) -> Result<u32, KernelError> {
        self.drain();
        watch::generation_on(&self.socket)
    }

    /// Whether a table exists: one request, no listing.
    pub fn table_exists(&self, family: u8, table: &str) -> Result<bool, KernelError> {
        const SEQ: u32 = u32::MAX - 1;
        self.drain();
        let req = batch::get_table(family, table, SEQ);
        let op = format!("look for nftables table {table}");
        match ask(&self.socket, &req, SEQ, &op, |_| Some(true)) {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            other => other,
        }
    }

    /// Every table of every family with its chains, sets (and their elements) and rules, all
    /// of one generation (see `dump`).
    pub fn ruleset(&self) -> Result<dump::Ruleset, KernelError> {
        dump::parse_messages(&self.dump_messages(dump::Scope::All)?)
    }

    /// One table with its chains, sets and rules (of one generation); `None` if there is none.
    pub fn table(&self, family: u8, table: &str) -> Result<Option<dump::Ruleset>, KernelError> {
        let msgs = self.dump_messages(dump::Scope::Table(family, table))?;
        let rs = dump::parse_messages(&msgs)?.only_table(family, table);
        Ok((!rs.tables.is_empty()).then_some(rs))
    }

    /// One table's rules alone (one dump: no sets, no elements), e.g. for their counters;
    /// empty when there is no such table.
    pub fn rules(&self, family: u8, table: &str) -> Result<Vec<dump::Rule>, KernelError> {
        self.drain();
        dump::rules_on(&self.socket, family, table)
    }

    /// The dumps' answers as they came (whole messages): what `ruleset` and `table` parse.
    pub fn dump_messages(&self, scope: dump::Scope<'_>) -> Result<Vec<Vec<u8>>, KernelError> {
        self.drain();
        dump::read_messages(&self.socket, scope, || watch::generation_on(&self.socket))
    }

    /// Closes the socket without waiting for the kernel's cleanup of its commits (see
    /// `commit_detached`).
    pub fn close_detached(self) {
        close_elsewhere(self.socket);
    }

    /// Drops whatever an earlier exchange left (an answer that came after a timeout).
    fn drain(&self) {
        let mut buf = Vec::with_capacity(4096);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Leaves the final close of `s` to a grandchild (see `commit_detached`); closes it here if
/// forking fails. The grandchild closes its copy only once this process has closed its own
/// (end of file on a pipe), so that its close is the last one, the one that waits.
fn close_elsewhere(s: Socket) {
    let fd = s.as_raw_fd();
    let mut pipe = [-1; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let [rd, wr] = pipe;
    // SAFETY: between fork and _exit the children make only async-signal-safe system calls
    // (fork, close_range, read, close, _exit), as required after fork in a threaded process.
    // The parent only waits for the first child, which exits at once.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            if libc::fork() == 0 {
                // Nothing but the socket and the pipe's read end: not the runtime's pipes, not
                // a lock file.
                let (lo, hi) = (fd.min(rd) as u32, fd.max(rd) as u32);
                if lo > 0 {
                    libc::syscall(libc::SYS_close_range, 0u32, lo - 1, 0u32);
                }
                if hi > lo + 1 {
                    libc::syscall(libc::SYS_close_range, lo + 1, hi - 1, 0u32);
                }
                libc::syscall(libc::SYS_close_range, hi + 1, u32::MAX, 0u32);
                let mut b = 0u8;
                while libc::read(rd, (&mut b as *mut u8).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::close(fd);
            }
            libc::_exit(0);
        }
        if child > 0 {
            let mut status = 0;
            while libc::waitpid(child, &mut status, 0) < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
        }
    }
    drop(s);
    // SAFETY: closing the pipe's two ends, ours.
    unsafe {
        libc::close(wr);
        libc::close(rd);
    }
}

/// Sends the batch on `s` and reads the outcome.
fn exchange(s: &Socket, t: &Transaction) -> Result<(), KernelError> {
    let op = "nftables transaction";
    socket_options(s.as_raw_fd(), t.bytes.len());
    s.send_to(&t.bytes, &SocketAddr::new(0, 0), 0)
        .map_err(|e| KernelError::io(op, e))?;
    let last = t.ops.len() as u32;
    let mut failed: Option<(u32, i32, Option<String>)> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        match s.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(KernelError::io(format!("{op}: wait for the answer"), e)),
        }
        let mut done = false;
        for m in raw::messages(&buf) {
            let Some((code, text)) = ack(&m) else {
                continue;
            };
            if code != 0 && failed.is_none() {
                failed = Some((m.seq, code, text));
            }
            // The last message's answer comes after every other; an error on the batch header
            // (the commit itself, or no room for the answers) is the only one there is.
            done |= m.seq == last || (m.seq == 0 && code != 0);
        }
        if done {
            break;
        }
    }
    match failed {
        None => Ok(()),
        Some((seq, errno, text)) => {
            let what = match seq {
                0 => "commit".to_string(),
                n => t
                    .ops
                    .get(n as usize - 1)
                    .cloned()
                    .unwrap_or_else(|| format!("message {n}")),
            };
            let what = match text {
                Some(text) => format!("nftables: {what} ({text})"),
                None => format!("nftables: {what}"),
            };
            Err(KernelError::netlink(what, errno))
        }
    }
}

/// An acknowledgement: its errno (0 for success) and the kernel's text.
fn ack(m: &raw::RawMessage<'_>) -> Option<(i32, Option<String>)> {
    if m.kind != raw::NLMSG_ERROR {
        return None;
    }
    let code = raw::error_code(m.payload.get(..4)?);
    let text = if m.flags & NLM_F_ACK_TLVS != 0 {
        // struct nlmsgerr: error, then the request's header (payload capped), then attributes.
        m.payload.get(20..).and_then(|tlvs| {
            raw::attributes(tlvs)
                .find(|(k, _)| *k == NLMSGERR_ATTR_MSG)
                .map(|(_, v)| {
                    String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()
                })
        })
    } else {
        None
    };
    Some((-code, text))
}

/// Sends one request and reads the answers that carry its sequence number until `visit`
/// returns a value: an error answer ends the exchange as that error (`errno` names it), an
/// ack (code 0) is passed over, every other message goes to `visit`.
fn ask<R>(
    s: &Socket,
    req: &[u8],
    seq: u32,
    op: &str,
    mut visit: impl FnMut(&raw::RawMessage<'_>) -> Option<R>,
) -> Result<R, KernelError> {
    s.send_to(req, &SocketAddr::new(0, 0), 0)
        .map_err(|e| KernelError::io(op.to_string(), e))?;
    // The kernel fills a dump's datagrams up to 32 KiB at most: they fit whole.
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        match s.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(KernelError::io(op.to_string(), e)),
        }
        for m in raw::messages(&buf).filter(|m| m.seq == seq) {
            match ack(&m) {
                Some((0, _)) => {}
                Some((errno, _)) => return Err(KernelError::netlink(op.to_string(), errno)),
                None => {
                    if let Some(r) = visit(&m) {
                        return Ok(r);
                    }
                }
            }
        }
    }
}

/// A send buffer for the whole datagram (the kernel refuses a datagram larger than it), and a
/// bound on the wait for the answer.
fn socket_options(fd: std::os::fd::RawFd, len: usize) {
    let size = (len + 4096).max(64 * 1024) as libc::c_int;
    let tv = libc::timeval {
        tv_sec: ANSWER_TIMEOUT_SECS.into(),
        tv_usec: 0,
    };
    // SAFETY: setsockopt on a socket we own, with pointers to locals of the declared sizes.
    unsafe {
        let p = &size as *const libc::c_int as *const libc::c_void;
        let n = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, p, n) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, p, n);
        }
        let p = &tv as *const libc::timeval as *const libc::c_void;
        let n = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, p, n);
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
    let op = format!("nft {}", args.join(" "));
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KernelError::Other(format!(
                "{op}: the nft tool is not installed (Debian package nftables)"
            ))
        } else {
            KernelError::io(op.clone(), e)
        }
    })?;
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("piped stdin");
        si.write_all(input.as_bytes())
            .map_err(|e| KernelError::io(op.clone(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| KernelError::io(op.clone(), e))?;
    if !out.status.success() {
        return Err(KernelError::Other(format!(
            "{op}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies a script as one transaction.
pub fn apply(script: &str) -> Result<(), KernelError> {
    nft(&["-f", "-"], Some(script)).map(|_| ())
}

/// The whole ruleset as nft's JSON (`podnetctl doctor`; the daemon reads it over netlink,
/// `NftSocket::ruleset`).
pub fn ruleset_json() -> Result<serde_json::Value, KernelError> {
    let s = nft(&["-j", "list", "ruleset"], None)?;
    if s.trim().is_empty() {
        return Ok(serde_json::json!({"nftables": []}));
    }
    serde_json::from_str(&s).map_err(|e| KernelError::decode("nft -j list ruleset", e.to_string()))
}

/// Deletes a table (over nfnetlink); returns whether it existed.
pub fn delete_table(family: &str, table: &str) -> Result<bool, KernelError> {
    let code = family_code(family).ok_or_else(|| {
        KernelError::Other(format!("nftables family {family:?}: not inet, ip or ip6"))
    })?;
    let mut b = Batch::new(code, table);
    b.delete_table();
    match commit(&b.finish()) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

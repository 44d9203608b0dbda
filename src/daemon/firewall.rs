//! The firewall thread: applies podnet's table, keeps the tunnel guard's peer set current one
//! element at a time, and keeps the table intact.
//!
//! The table is written over nfnetlink (`FirewallSpec::table_batch`, the guard's elements one
//! transaction each) through one socket kept for the thread's lifetime (`kernel::nft::NftSocket`),
//! and read back over the same socket when it has to be compared (`kernel::nft::dump`): the
//! kernel's objects against the objects of the transaction that would write the table now
//! (`table_batch`, read by the same parser), both as a `TableShape`. No `nft` program runs.
//! Other software's masquerade rules are looked for in the whole ruleset, dumped the same way.
//!
//! nftables announces every committed transaction with the tables it changed and the netlink
//! port id of the socket that committed it (`kernel::nft::NftEvents`, read by the `nft-events`
//! thread). A transaction of someone else's that touched `inet podnet` has the table compared
//! with what it should be at once and restored if it differs; the thread's own (committed
//! through its socket, whose port id no other socket in the namespace has while it is open) are
//! not looked at. Another agent rewriting the table over and over is backed off from
//! with growing delays, counted and reported (`util::contest`). Every `--iptables-resync`
//! seconds (flannel's flag and meaning: the longest a changed rule stays changed) the table is
//! checked as well, but a check costs one netlink request when the ruleset's generation has
//! not moved since the last look. Rules of other software that would masquerade pod traffic
//! are looked for when another program changed the ruleset, at most once a period.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::{Metrics, label};
use crate::firewall::foreign::{self, ForeignRule, Probe};
use crate::firewall::{self, FirewallSpec};
use crate::kernel::KernelError;
use crate::kernel::nft::dump::{Ruleset, TableShape};
use crate::kernel::nft::{self, Commit, Commits, NftEvents};
use crate::lease::SubnetKey;
use crate::owned;
use crate::util::backoff;
use crate::util::contest::{self, Contest, Contested};

#[derive(Debug, Clone, Default)]
pub struct FirewallStats {
    pub applied: u64,
    /// Times the table was found changed and restored.
    pub restored: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub foreign: Vec<ForeignRule>,
    pub guard_peers: usize,
    /// The table, when another agent keeps changing it (filled in by `check_now`).
    pub contested: Vec<Contested>,
}

/// The tunnel endpoints of a peer with these public addresses: one per family the network has.
/// A peer's tunnel endpoints, at most one per family, kept inline (no allocation per peer).
type Endpoints = [Option<IpAddr>; 2];

fn endpoints_of(spec: &FirewallSpec, ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> Endpoints {
    let v4 = (spec.v4.is_some() || spec.v6.is_none()).then_some(IpAddr::V4(ip));
    let v6 = ip6.filter(|_| spec.v6.is_some()).map(IpAddr::V6);
    [v4, v6]
}

enum Cmd {
    /// A peer's public addresses (new, or changed): its tunnel endpoints.
    Put(SubnetKey, Ipv4Addr, Option<Ipv6Addr>),
    Remove(SubnetKey),
    /// Check the table and foreign rules now and report.
    Check(oneshot::Sender<FirewallStats>),
    /// Transactions nftables reported.
    Nft(Commits),
}

#[derive(Clone)]
pub struct Firewall {
    tx: mpsc::Sender<Cmd>,
    stats: Arc<Mutex<FirewallStats>>,
}

/// The one object the thread keeps: podnet's table.
const TABLE: &str = "nftables table inet podnet";
/// nftables' family number for `inet` tables.
const NFPROTO_INET: u8 = 1;

/// Splits an `nft -s list` listing into the table without the guard's elements, and the
/// elements sorted (nft orders and wraps them its own way): for comparing listings in tests
/// and tools (the daemon compares dumped objects, not text).
pub fn normalize(listing: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut elems = Vec::new();
    let mut in_elems = false;
    for line in listing.lines() {
        let t = line.trim();
        let body = if in_elems {
            Some(t)
        } else if let Some(rest) = t.strip_prefix("elements = {") {
            in_elems = true;
            Some(rest)
        } else {
            None
        };
        match body {
            Some(b) => {
                let (b, done) = match b.strip_suffix('}') {
                    Some(x) => (x, true),
                    None => (b, false),
                };
                elems.extend(
                    b.split(',')
                        .map(|e| e.trim().to_string())
                        .filter(|e| !e.is_empty()),
                );
                if done {
                    in_elems = false;
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    elems.sort();
    (out, elems)
}

#[derive(Debug, PartialEq, Eq)]
enum Ensured {
    AsWanted,
    Created,
    Replaced,
}

struct State {
    spec: FirewallSpec,
    probes: Vec<Probe>,
    /// Each peer's tunnel endpoints (one per family the network has); the guard admits their
    /// union. Empty without a guard (nothing in the table depends on them).
    peers: BTreeMap<SubnetKey, Endpoints>,
    /// How many peers use each endpoint (two leases may share one during a move).
    endpoints: BTreeMap<IpAddr, usize>,
    stats: Arc<Mutex<FirewallStats>>,
    metrics: Arc<Metrics>,
    resync: Duration,
    /// Every transaction of the thread's goes through it; its port id marks them.
    socket: nft::NftSocket,
    /// The ruleset generation when the table was last known to be as wanted.
    generation: Option<u32>,
    /// Restores of the table, and their backoff.
    contest: Contest<&'static str>,
    /// Another program changed the ruleset since foreign rules were last looked for.
    foreign_dirty: bool,
    /// Not before then (once a period).
    foreign_at: Instant,
}

impl State {
    fn peer_list(&self) -> Vec<IpAddr> {
        self.endpoints.keys().copied().collect()
    }

    /// Counts an endpoint in; the guard learns it when it is the first user.
    fn endpoint_in(&mut self, ip: IpAddr) {
        let n = self.endpoints.entry(ip).or_default();
        *n += 1;
        if *n == 1 {
            self.guard_change(&firewall::guard_add(ip));
        }
    }

    /// Counts an endpoint out; the guard forgets it with its last user.
    fn endpoint_out(&mut self, ip: IpAddr) {
        if let Some(n) = self.endpoints.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.endpoints.remove(&ip);
                self.guard_change(&firewall::guard_remove(ip));
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            // Without a guard (host-gw) peers' endpoints are nowhere in the table: none kept.
            Cmd::Put(..) | Cmd::Remove(_) if self.spec.guard.is_none() => {}
            Cmd::Put(key, ip, ip6) => {
                let new = endpoints_of(&self.spec, ip, ip6);
                match self.peers.insert(key, new) {
                    Some(old) if old == new => {}
                    old => {
                        // The new endpoints are let in before the old ones go.
                        new.into_iter()
                            .flatten()
                            .for_each(|ip| self.endpoint_in(ip));
                        old.into_iter()
                            .flatten()
                            .flatten()
                            .for_each(|ip| self.endpoint_out(ip));
                    }
                }
            }
            Cmd::Remove(key) => {
                if let Some(old) = self.peers.remove(&key) {
                    old.into_iter()
                        .flatten()
                        .for_each(|ip| self.endpoint_out(ip));
                }
            }
            Cmd::Check(reply) => {
                self.restore();
                self.find_foreign();
                let mut stats = self.stats.lock().expect("stats lock").clone();
                stats.contested = self
                    .contest
                    .report(Instant::now(), |_| true, |k| k.to_string());
                let _ = reply.send(stats);
            }
            Cmd::Nft(commits) => self.on_commits(commits, Instant::now()),
        }
    }

    fn fail(&self, what: &str, e: KernelError) {
        tracing::warn!("{what}: {e}");
        self.metrics.firewall_errors.inc();
        let mut s = self.stats.lock().expect("stats lock");
        s.errors += 1;
        s.last_error = Some(format!("{what}: {e}"));
    }

    /// The table as it should be (`None`: no table at all): the objects the transaction that
    /// creates it would send, read back by the parser the kernel's dump goes through.
    fn wanted(&self) -> Result<Option<TableShape>, KernelError> {
        if self.spec.is_empty() {
            return Ok(None);
        }
        let t = self.spec.table_batch(&self.peer_list(), false);
        Ok(Ruleset::from_datagram(&t.bytes)?.shape(NFPROTO_INET, owned::NFT_TABLE))
    }

    /// The table as the kernel has it; `None` when there is none (one request when it is
    /// missing, a new node's start-up; a few dumps when it exists).
    fn listing(&self) -> Result<Option<TableShape>, KernelError> {
        if !self.socket.table_exists(NFPROTO_INET, owned::NFT_TABLE)? {
            return Ok(None);
        }
        let table = self.socket.table(NFPROTO_INET, owned::NFT_TABLE)?;
        Ok(table.and_then(|rs| rs.shape(NFPROTO_INET, owned::NFT_TABLE)))
    }

    /// Whether the table is as it should be.
    fn as_wanted(&self) -> Result<bool, KernelError> {
        Ok(self.listing()? == self.wanted()?)
    }

    /// Commits one of this thread's own transactions (through its socket, so its notification
    /// is not taken for drift); the known generation moves with it when nothing else committed
    /// in between.
    fn own_apply(&mut self, t: &nft::Transaction) -> Result<(), KernelError> {
        let before = self.socket.generation().ok();
        self.socket.commit(t)?;
        let after = self.socket.generation().ok();
        let only_ours = before.is_some() && after == before.map(|g| g.wrapping_add(1));
        if only_ours && self.generation == before {
            self.generation = after;
        }
        Ok(())
    }

    /// Makes the table what it should be with as few transactions as possible. Replacing the
    /// table is the slow path (the kernel waits for a grace period when it unhooks chains), so an
    /// unchanged table is left alone and an absent one is created without the replace.
    fn ensure(&mut self) -> Result<Ensured, KernelError> {
        let peers = self.peer_list();
        let generation = self.socket.generation().ok();
        let have = self.listing()?;
        let done = if have == self.wanted()? {
            self.generation = generation;
            Ensured::AsWanted
        } else if have.is_none() {
            self.own_apply(&self.spec.table_batch(&peers, false))?;
            Ensured::Created
        } else {
            self.own_apply(&self.spec.table_batch(&peers, true))?;
            Ensured::Replaced
        };
        let mut s = self.stats.lock().expect("stats lock");
        if done != Ensured::AsWanted {
            s.applied += 1;
        }
        s.guard_peers = self.endpoints.len();
        self.metrics
            .tunnel_guard_peers
            .set(self.endpoints.len() as i64);
        Ok(done)
    }

    fn guard_change(&mut self, t: &nft::Transaction) {
        if self.spec.guard.is_none() {
            return;
        }
        if let Err(e) = self.own_apply(t) {
            // The set may have been removed with the table: the next check restores everything.
            self.fail("update the tunnel guard", e);
        }
        self.stats.lock().expect("stats lock").guard_peers = self.endpoints.len();
        self.metrics
            .tunnel_guard_peers
            .set(self.endpoints.len() as i64);
    }

    /// Restores the table if it is not as it should be.
    fn restore(&mut self) {
        match self.ensure() {
            Ok(Ensured::AsWanted) => {}
            Ok(_) => {
                tracing::warn!("podnet's nftables rules were changed or removed; restored them");
                self.stats.lock().expect("stats lock").restored += 1;
                self.metrics.firewall_restores.inc();
            }
            Err(e) => self.fail("restore podnet's nftables rules", e),
        }
    }

    /// The table may have changed: compared now, restored when due (at once, unless someone
    /// keeps changing it). Nothing is read while a restore already waits.
    fn suspect(&mut self, now: Instant) {
        if self.contest.record(&TABLE).is_some_and(|r| r.due.is_some()) {
            return;
        }
        match self.as_wanted() {
            Ok(true) => self.contest.settled(&TABLE),
            Ok(false) => {
                self.contest.undone(TABLE, now);
            }
            Err(e) => self.fail("read podnet's nftables table", e),
        }
    }

    /// Transactions nftables reported: others' that touched the table make it suspect, others'
    /// elsewhere call for a look at foreign rules.
    fn on_commits(&mut self, commits: Commits, now: Instant) {
        if commits.overflowed {
            self.generation = None;
            self.foreign_dirty = true;
            self.suspect(now);
        }
        for c in &commits.commits {
            let own = c.port == self.socket.port();
            let ours = touches(c, owned::NFT_TABLE);
            let elsewhere = c.tables.iter().any(|(f, t)| !is_podnets(*f, t));
            if !ours && self.generation == Some(c.generation.wrapping_sub(1)) {
                self.generation = Some(c.generation);
            }
            if own {
                continue;
            }
            self.foreign_dirty |= elsewhere;
            if ours {
                self.suspect(now);
            }
        }
    }

    /// The periodic check: nothing but one netlink request unless the ruleset changed since the
    /// table was last known to be right.
    fn tick(&mut self, now: Instant) {
        match self.socket.generation() {
            Ok(g) if Some(g) == self.generation => {}
            Ok(_) => {
                self.foreign_dirty = true;
                self.suspect(now);
                if self.contest.record(&TABLE).is_none_or(|r| r.due.is_none()) {
                    self.generation = self.socket.generation().ok();
                }
            }
            Err(e) => {
                self.fail("read the nftables generation", e);
                self.suspect(now);
            }
        }
    }

    /// Restores and looks that are due.
    fn run_due(&mut self, now: Instant) {
        self.contest.expire(now);
        for key in self.contest.take_due(now) {
            self.restore();
            self.contest.repaired(&key);
            if let Some(r) = self.contest.record(&key).filter(|r| r.undone > 1) {
                tracing::warn!(
                    undone = r.undone,
                    for_s = r.last.duration_since(r.first).as_secs(),
                    "podnet's nftables table keeps being changed behind its back"
                );
            }
        }
        if self.foreign_dirty && now >= self.foreign_at {
            self.find_foreign();
        }
        let n = self.contest.contested(now).count();
        let g = self
            .metrics
            .contested
            .get_or_create(&label("component", "firewall"));
        g.set(n as i64);
    }

    fn next_due(&self, tick: Instant) -> Instant {
        let foreign = self.foreign_dirty.then_some(self.foreign_at);
        [Some(tick), self.contest.next_due(), foreign]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(tick)
    }

    /// Looks for other software's rules that would masquerade pod-to-pod traffic.
    fn find_foreign(&mut self) {
        self.foreign_dirty = false;
        self.foreign_at = Instant::now() + self.resync;
        let ruleset = match self.socket.ruleset() {
            Ok(r) => r,
            Err(e) => return self.fail("read the nftables ruleset", e),
        };
        let mut found: Vec<ForeignRule> = Vec::new();
        for p in &self.probes {
            for r in foreign::find(&ruleset, p, NFPROTO_INET, owned::NFT_TABLE) {
                if !found.contains(&r) {
                    found.push(r);
                }
            }
        }
        let mut s = self.stats.lock().expect("stats lock");
        for r in found.iter().filter(|r| !s.foreign.contains(r)) {
            tracing::warn!(
                "a masquerade rule outside podnet rewrites pod-to-pod traffic, so pods on other nodes see this \
                 node's address instead of the pod's: {r}; remove it or exclude the cluster network from it"
            );
        }
        if found.is_empty() && !s.foreign.is_empty() {
            tracing::info!(
                "the foreign masquerade rule is gone; pod addresses are preserved again"
            );
        }
        self.metrics
            .foreign_masquerade_rules
            .set(found.len() as i64);
        s.foreign = found;
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        // The first look for foreign rules runs here rather than before start-up returns: it
        // costs a dump of the whole ruleset that start-up does not need to wait for.
        self.find_foreign();
        let mut tick = Instant::now() + self.resync;
        loop {
            let wait = self
                .next_due(tick)
                .saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            if now >= tick {
                self.tick(now);
                tick = now + self.resync;
            }
            self.run_due(now);
        }
    }
}

/// Whether a transaction changed table `name` of family `inet`.
fn touches(c: &Commit, name: &str) -> bool {
    c.tables
        .iter()
        .any(|(f, t)| *f == NFPROTO_INET && t == name)
}

/// Whether a table is one of podnet's own (podnetd's, the policy engine's, the plugin's).
fn is_podnets(family: u8, name: &str) -> bool {
    family == NFPROTO_INET
        && [
            owned::NFT_TABLE,
            owned::NFT_POLICY_TABLE,
            owned::NFT_POD_MASQ_TABLE,
        ]
        .contains(&name)
}

/// The `nft-events` thread: nftables' transactions in, commands out.
fn read_commits(mut events: NftEvents, tx: mpsc::Sender<Cmd>) {
    let mut backoff = backoff::NOTIFICATIONS;
    loop {
        let commits = match events.recv() {
            Ok(c) => {
                backoff.reset();
                c
            }
            Err(e) => {
                tracing::warn!("reading nftables notifications: {e}");
                std::thread::sleep(backoff.next_delay());
                Commits {
                    overflowed: true,
                    ..Default::default()
                }
            }
        };
        if (commits.overflowed || !commits.commits.is_empty())
            && tx.send(Cmd::Nft(commits)).is_err()
        {
            return;
        }
    }
}

impl Firewall {
    /// Applies the table now (start-up waits for it) and starts the thread, and with
    /// `kernel_events` the reader of nftables' notifications.
    pub fn start(
        spec: FirewallSpec,
        probes: Vec<Probe>,
        peers: &[(SubnetKey, Ipv4Addr, Option<Ipv6Addr>)],
        resync: Duration,
        kernel_events: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Firewall, KernelError> {
        spec.validate().map_err(KernelError::Other)?;
        let stats = Arc::new(Mutex::new(FirewallStats::default()));
        let mut st = State {
            spec,
            probes,
            peers: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            stats: stats.clone(),
            metrics,
            resync,
            socket: nft::NftSocket::open()?,
            generation: None,
            contest: Contest::new(contest::DEFAULT),
            foreign_dirty: false,
            foreign_at: Instant::now(),
        };
        // Collected, not inserted one by one: a map built at once has full nodes.
        let guarded = if st.spec.guard.is_some() { peers } else { &[] };
        st.peers = guarded
            .iter()
            .map(|(key, ip, ip6)| (*key, endpoints_of(&st.spec, *ip, *ip6)))
            .collect();
        let mut endpoints: Vec<(IpAddr, usize)> = st
            .peers
            .values()
            .flatten()
            .flatten()
            .map(|ip| (*ip, 1))
            .collect();
        endpoints.sort_unstable();
        endpoints.dedup_by(|b, a| {
            let same = a.0 == b.0;
            if same {
                a.1 += b.1;
            }
            same
        });
        st.endpoints = endpoints.into_iter().collect();
        let (tx, rx) = mpsc::channel();
        // Listening before the table is made: a change right after is not missed.
        if kernel_events {
            match NftEvents::subscribe() {
                Ok(events) => {
                    let tx = tx.clone();
                    std::thread::Builder::new()
                        .name("nft-events".into())
                        .spawn(move || read_commits(events, tx))
                        .map_err(|e| KernelError::Other(format!("start nft-events thread: {e}")))?;
                }
                Err(e) => tracing::warn!(
                    "cannot follow nftables' notifications ({e}); the table is checked every \
                     --iptables-resync seconds only"
                ),
            }
        }
        let done = st.ensure()?;
        tracing::debug!(?done, "podnet's nftables table");
        std::thread::Builder::new()
            .name("firewall".into())
            .spawn(move || st.run(rx))
            .map_err(|e| KernelError::Other(format!("start firewall thread: {e}")))?;
        Ok(Firewall { tx, stats })
    }

    /// A peer's public addresses, new or changed: its tunnel packets are let in (from the
    /// address of each family the network has).
    pub fn put_peer(&self, key: SubnetKey, ip: Ipv4Addr, ip6: Option<Ipv6Addr>) {
        let _ = self.tx.send(Cmd::Put(key, ip, ip6));
    }

    pub fn remove_peer(&self, key: SubnetKey) {
        let _ = self.tx.send(Cmd::Remove(key));
    }

    /// Checks the table and looks for foreign rules now; the counters after the check.
    pub async fn check_now(&self) -> FirewallStats {
        let (t, r) = oneshot::channel();
        if self.tx.send(Cmd::Check(t)).is_err() {
            return self.stats.lock().expect("stats lock").clone();
        }
        match r.await {
            Ok(s) => s,
            Err(_) => self.stats.lock().expect("stats lock").clone(),
        }
    }

    pub fn stats(&self) -> Arc<Mutex<FirewallStats>> {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::tests::spec;
    use crate::kernel::nft::dump;

    /// The kernel's dump of a namespace where podnetd's transaction for `spec()` with two peers
    /// was committed (and other software's tables).
    fn dumped() -> Ruleset {
        dump::captured_ruleset()
    }

    fn wanted(spec: &FirewallSpec, peers: &[&str]) -> Option<TableShape> {
        let peers: Vec<IpAddr> = peers.iter().map(|p| p.parse().unwrap()).collect();
        let t = spec.table_batch(&peers, false);
        Ruleset::from_datagram(&t.bytes)
            .unwrap()
            .shape(NFPROTO_INET, owned::NFT_TABLE)
    }

    #[test]
    fn the_table_as_the_kernel_holds_it_has_the_shape_of_its_transaction() {
        let have = dumped().shape(NFPROTO_INET, owned::NFT_TABLE);
        assert!(have.is_some());
        assert_eq!(have, wanted(&spec(), &["198.18.0.13", "198.18.0.12"]));
        // Another peer set, another option, another network: another table.
        assert_ne!(have, wanted(&spec(), &["198.18.0.12"]));
        let plain = FirewallSpec {
            fully_random: false,
            ..spec()
        };
        assert_ne!(have, wanted(&plain, &["198.18.0.12", "198.18.0.13"]));
        let mut other = spec();
        other.v4.as_mut().unwrap().network = "10.244.0.0/17".parse().unwrap();
        assert_ne!(have, wanted(&other, &["198.18.0.12", "198.18.0.13"]));
    }

    #[test]
    fn counters_do_not_change_the_shape_a_hand_made_change_does() {
        let base = dumped();
        let want = base.shape(NFPROTO_INET, owned::NFT_TABLE);
        let changed = |f: &dyn Fn(&mut Ruleset)| {
            let mut rs = base.clone();
            f(&mut rs);
            rs.shape(NFPROTO_INET, owned::NFT_TABLE)
        };
        let podnets = |r: &dump::Rule| r.table == owned::NFT_TABLE;
        assert_eq!(
            changed(&|rs| {
                for r in rs.rules.iter_mut().filter(|r| podnets(r)) {
                    for e in &mut r.exprs {
                        if let dump::Expr::Counter { packets, bytes } = e {
                            (*packets, *bytes) = (7, 700);
                        }
                    }
                }
            }),
            want
        );
        // A rule gone, a priority changed, a peer removed, a verdict changed: not as wanted.
        let forward = |r: &dump::Rule| podnets(r) && r.chain == "forward";
        let gone = changed(&|rs| {
            let at = rs.rules.iter().position(forward).unwrap();
            rs.rules.remove(at);
        });
        assert_ne!(gone, want);
        let priority = changed(&|rs| {
            let c = rs
                .chains
                .iter_mut()
                .find(|c| c.table == owned::NFT_TABLE)
                .unwrap();
            c.base.as_mut().unwrap().priority += 1;
        });
        assert_ne!(priority, want);
        let peer = changed(&|rs| {
            let s = rs
                .sets
                .iter_mut()
                .find(|s| s.name == "tunnel-peers")
                .unwrap();
            s.elements.pop();
        });
        assert_ne!(peer, want);
        let verdict = changed(&|rs| {
            let r = rs.rules.iter_mut().find(|r| forward(r)).unwrap();
            *r.exprs.last_mut().unwrap() = dump::Expr::Immediate {
                dreg: 0,
                data: dump::Data::Verdict(dump::VERDICT_DROP, None),
            };
        });
        assert_ne!(verdict, want);
        // Other tables' objects are not the table's.
        assert_eq!(changed(&|rs| rs.rules.retain(|r| podnets(r))), want);
    }

    #[test]
    fn normalize_ignores_element_order_and_wrapping() {
        let a = "table inet podnet {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.2, 10.0.0.1,\n\t\t\t     10.0.0.3 }\n\t}\n}\n";
        let b = "table inet podnet {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1, 10.0.0.3, 10.0.0.2 }\n\t}\n}\n";
        assert_eq!(normalize(a), normalize(b));
        assert_eq!(normalize(a).1, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(
            normalize(a).0,
            "table inet podnet {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n}\n"
        );
    }
}

//! The firewall thread: applies podnet's table, keeps the tunnel guard's peer set current one
//! element at a time, and every `--iptables-resync` seconds checks that the table is intact
//! (restoring it if not) and looks for foreign masquerade rules.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::firewall::foreign::{self, ForeignRule, Probe};
use crate::firewall::{self, FirewallSpec};
use crate::kernel::{KernelError, nft};
use crate::lease::SubnetKey;
use crate::owned;

#[derive(Debug, Clone, Default)]
pub struct FirewallStats {
    pub applied: u64,
    /// Times the table was found changed and restored.
    pub restored: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub foreign: Vec<ForeignRule>,
    pub guard_peers: usize,
}

enum Cmd {
    /// A peer's tunnel endpoint (new, or changed address).
    Put(SubnetKey, Ipv4Addr),
    Remove(SubnetKey),
    /// Check the table and foreign rules now and report.
    Check(oneshot::Sender<FirewallStats>),
}

#[derive(Clone)]
pub struct Firewall {
    tx: mpsc::Sender<Cmd>,
    stats: Arc<Mutex<FirewallStats>>,
}

/// Splits a listing into the table without the guard's elements, and the elements sorted
/// (nft orders and wraps them its own way).
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
    /// Each peer's tunnel endpoint; the guard admits their union.
    peers: BTreeMap<SubnetKey, Ipv4Addr>,
    /// How many peers use each endpoint (two leases may share one during a move).
    endpoints: BTreeMap<Ipv4Addr, usize>,
    stats: Arc<Mutex<FirewallStats>>,
    metrics: Arc<Metrics>,
}

impl State {
    fn peer_list(&self) -> Vec<Ipv4Addr> {
        self.endpoints.keys().copied().collect()
    }

    /// Counts an endpoint in; the guard learns it when it is the first user.
    fn endpoint_in(&mut self, ip: Ipv4Addr) {
        let n = self.endpoints.entry(ip).or_default();
        *n += 1;
        if *n == 1 {
            self.guard_change(firewall::guard_add(ip));
        }
    }

    /// Counts an endpoint out; the guard forgets it with its last user.
    fn endpoint_out(&mut self, ip: Ipv4Addr) {
        if let Some(n) = self.endpoints.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.endpoints.remove(&ip);
                self.guard_change(firewall::guard_remove(ip));
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Put(key, ip) => match self.peers.insert(key, ip) {
                Some(old) if old == ip => {}
                old => {
                    // The new endpoint is let in before the old one goes.
                    self.endpoint_in(ip);
                    if let Some(old) = old {
                        self.endpoint_out(old);
                    }
                }
            },
            Cmd::Remove(key) => {
                if let Some(old) = self.peers.remove(&key) {
                    self.endpoint_out(old);
                }
            }
            Cmd::Check(reply) => {
                self.check();
                let _ = reply.send(self.stats.lock().expect("stats lock").clone());
            }
        }
    }

    fn fail(&self, what: &str, e: KernelError) {
        tracing::warn!("{what}: {e}");
        self.metrics.firewall_errors.inc();
        let mut s = self.stats.lock().expect("stats lock");
        s.errors += 1;
        s.last_error = Some(format!("{what}: {e}"));
    }

    /// Makes the table what it should be with as few transactions as possible. Replacing the
    /// table is the slow path (the kernel waits for a grace period when it unhooks chains), so an
    /// unchanged table is left alone and an absent one is created without the replace.
    fn ensure(&self) -> Result<Ensured, KernelError> {
        let peers = self.peer_list();
        let want = if self.spec.is_empty() {
            None
        } else {
            let mut elems: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
            elems.sort();
            Some((normalize(&self.spec.render_table(&[])).0, elems))
        };
        let have = nft::list_table(owned::NFT_FAMILY, owned::NFT_TABLE)?.map(|l| normalize(&l));
        let done = if have == want {
            Ensured::AsWanted
        } else if have.is_none() {
            nft::apply(&self.spec.render_table(&peers))?;
            Ensured::Created
        } else {
            nft::apply(&self.spec.render_apply(&peers))?;
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

    fn guard_change(&self, script: String) {
        if self.spec.guard.is_none() {
            return;
        }
        if let Err(e) = nft::apply(&script) {
            // The set may have been removed with the table: the next check restores everything.
            self.fail("update the tunnel guard", e);
        }
        self.stats.lock().expect("stats lock").guard_peers = self.endpoints.len();
        self.metrics
            .tunnel_guard_peers
            .set(self.endpoints.len() as i64);
    }

    fn check(&self) {
        match self.ensure() {
            Ok(Ensured::AsWanted) => {}
            Ok(_) => {
                tracing::warn!("podnet's nftables rules were changed or removed; restored them");
                self.stats.lock().expect("stats lock").restored += 1;
                self.metrics.firewall_restores.inc();
            }
            Err(e) => return self.fail("restore podnet's nftables rules", e),
        }
        let ruleset = match nft::ruleset_json() {
            Ok(r) => r,
            Err(e) => return self.fail("read the nftables ruleset", e),
        };
        let mut found: Vec<ForeignRule> = Vec::new();
        for p in &self.probes {
            for r in foreign::find(&ruleset, p, owned::NFT_FAMILY, owned::NFT_TABLE) {
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
}

impl Firewall {
    /// Applies the table now (start-up waits for it) and starts the thread.
    pub fn start(
        spec: FirewallSpec,
        probes: Vec<Probe>,
        peers: &[(SubnetKey, Ipv4Addr)],
        resync: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Firewall, KernelError> {
        let stats = Arc::new(Mutex::new(FirewallStats::default()));
        let mut st = State {
            spec,
            probes,
            peers: peers.iter().copied().collect(),
            endpoints: BTreeMap::new(),
            stats: stats.clone(),
            metrics,
        };
        for ip in st.peers.values() {
            *st.endpoints.entry(*ip).or_default() += 1;
        }
        let done = st.ensure()?;
        tracing::debug!(?done, "podnet's nftables table");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("firewall".into())
            .spawn(move || {
                // The first integrity check runs here rather than before returning: it costs
                // two nft round trips that start-up does not need to wait for.
                st.check();
                loop {
                    match rx.recv_timeout(resync) {
                        Ok(cmd) => st.handle(cmd),
                        Err(RecvTimeoutError::Timeout) => st.check(),
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| KernelError::Other(format!("start firewall thread: {e}")))?;
        Ok(Firewall { tx, stats })
    }

    /// A peer's tunnel endpoint, new or changed: its tunnel packets are let in.
    pub fn put_peer(&self, key: SubnetKey, ip: Ipv4Addr) {
        let _ = self.tx.send(Cmd::Put(key, ip));
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

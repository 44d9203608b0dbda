//! The network policy engine: one thread that owns the policy model and `inet podnet-policy`.
//!
//! Sources (`policy_sources`) send what they know as messages: the objects one source holds
//! (replacing what it said before), single objects added, changed or deleted, and this node's
//! pod records from the CNI plugin. The thread takes every message waiting, rebuilds the model
//! (converting each object; an invalid one is refused alone, with an error naming it and the
//! field, and one that was valid before keeps that version in force, as the API server keeps an
//! object whose update it refuses; `add_objects`), compiles what this node enforces, renders
//! it, and applies the difference to the kernel as one nfnetlink transaction
//! (`policy::render::update_batch`), on a socket the thread keeps open — a new pod is a map or
//! set element, not a new ruleset. A transaction that fails (someone changed the table)
//! changes nothing and is followed by a full rewrite (`render::full_batch`, the table deleted
//! and made anew in one transaction). Locality is decided by address: a pod whose address is
//! in this node's pod subnet is local, whatever the source says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::oneshot;

use crate::cni::records::PodRecord;
use crate::kernel::{KernelError, nft};
use crate::owned::NFT_POLICY_TABLE;
use crate::policy::compile::{self, Compiled};
use crate::policy::eval;
use crate::policy::manifest::{self, Object};
use crate::policy::model::{Cluster, Direction, Key, Pod};
use crate::policy::render::{self, Options, Ruleset};
use crate::status::{DirectionExplain, PolicyExplain, PolicyInfo};

/// The name the model gives this node (pods are local by address, not by name).
const LOCAL: &str = "<this node>";

/// Which kind of object, for removals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    Node,
    NetworkPolicy,
}

impl Kind {
    fn of(o: &Object) -> Kind {
        match o {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Node(_) => Kind::Node,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// The kind the API calls `kind` (`NetworkPolicy`), if policy uses it.
    pub fn of_api(kind: &str) -> Option<Kind> {
        match kind {
            "Namespace" => Some(Kind::Namespace),
            "Pod" => Some(Kind::Pod),
            "Node" => Some(Kind::Node),
            "NetworkPolicy" => Some(Kind::NetworkPolicy),
            _ => None,
        }
    }
}

/// Where an object is kept: source, kind, namespace, name.
type Slot = (&'static str, Kind, String, String);

fn slot(source: &'static str, o: &Object) -> Slot {
    let meta = match o {
        Object::Namespace(x) => &x.metadata,
        Object::Pod(x) => &x.metadata,
        Object::Node(x) => &x.metadata,
        Object::NetworkPolicy(x) => &x.metadata,
    };
    let ns = meta.namespace.clone().unwrap_or_default();
    (
        source,
        Kind::of(o),
        ns,
        meta.name.clone().unwrap_or_default(),
    )
}

/// Every object into `cluster`. One refused, or held by a source that could not read its new
/// version (`unreadable`), has its last valid version (from `last`) put in instead when there
/// is one, and its error says so. Returns what went in: the next call's `last`.
fn add_objects(
    objects: &BTreeMap<Slot, Object>,
    unreadable: &BTreeSet<Slot>,
    last: &BTreeMap<Slot, Object>,
    cluster: &mut Cluster,
    errors: &mut Vec<String>,
) -> BTreeMap<Slot, Object> {
    let mut accepted = BTreeMap::new();
    let mut keep_last = |slot: &Slot, cluster: &mut Cluster| {
        let Some(o) = last.get(slot) else {
            return false;
        };
        // It went in before, so it goes in again.
        let _ = manifest::add(cluster, o);
        accepted.insert(slot.clone(), o.clone());
        true
    };
    let mut taken = Vec::new();
    for (slot, o) in objects {
        match manifest::add(cluster, o) {
            Ok(()) => taken.push((slot, o)),
            Err(e) if keep_last(slot, cluster) => {
                errors.push(format!("{e} (its last valid version stays in force)"));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    for slot in unreadable.iter().filter(|s| !objects.contains_key(*s)) {
        if keep_last(slot, cluster) {
            let (_, kind, ns, name) = slot;
            let name = if ns.is_empty() {
                name.clone()
            } else {
                format!("{ns}/{name}")
            };
            let kind = format!("{kind:?}").to_ascii_lowercase();
            errors.push(format!(
                "{kind} {name}: unreadable; its last valid version stays in force"
            ));
        }
    }
    accepted.extend(taken.into_iter().map(|(s, o)| (s.clone(), o.clone())));
    accepted
}

/// What sources tell the engine.
pub enum Msg {
    /// Everything `source` holds of these kinds now (what it said before of them is dropped),
    /// the errors it met reading them, and the objects it could not read (whose last valid
    /// version stays in force).
    Replace {
        source: &'static str,
        kinds: Vec<Kind>,
        objects: Vec<Object>,
        errors: Vec<String>,
        unreadable: Vec<(Kind, Key)>,
    },
    Upsert(&'static str, Object),
    Remove(&'static str, Kind, Key),
    /// This node's pod records (replacing the previous list).
    Records(Vec<PodRecord>),
    Explain(Key, oneshot::Sender<PolicyExplain>),
    Counters(oneshot::Sender<Counters>),
}

/// Packets and bytes by (policy, direction, verdict).
pub type Counters = BTreeMap<(String, String, String), (u64, u64)>;

/// Handle to the engine thread.
#[derive(Clone)]
pub struct PolicyEngine {
    tx: mpsc::Sender<Msg>,
    info: Arc<Mutex<PolicyInfo>>,
}

struct Engine {
    opts: Options,
    /// This node's pod subnets.
    local: Vec<IpNet>,
    objects: BTreeMap<Slot, Object>,
    source_errors: BTreeMap<&'static str, Vec<String>>,
    /// Objects a source holds but could not read (a document that does not parse).
    unreadable: BTreeSet<Slot>,
    /// The last version of each object the model took. An object whose new version is refused
    /// (or unreadable) keeps this one in force, as the API server keeps an object whose
    /// update it refuses: an edit gone wrong never lifts isolation. Holds only objects the
    /// sources still hold.
    accepted: BTreeMap<Slot, Object>,
    records: Vec<PodRecord>,
    cluster: Cluster,
    compiled: Compiled,
    /// What the kernel holds, as far as we know (`None`: write it whole next time).
    applied: Option<Ruleset>,
    /// The socket every transaction goes through, opened in podnetd's namespace.
    socket: nft::NftSocket,
    info: Arc<Mutex<PolicyInfo>>,
    logged_errors: BTreeSet<String>,
}

impl PolicyEngine {
    /// Starts the engine with an empty policy (nothing isolated) already in the kernel.
    pub fn start(
        opts: Options,
        local: Vec<IpNet>,
        sources: Vec<String>,
    ) -> Result<(PolicyEngine, mpsc::Sender<Msg>), KernelError> {
        let info = Arc::new(Mutex::new(PolicyInfo {
            sources,
            ..Default::default()
        }));
        let mut engine = Engine {
            opts,
            local,
            objects: BTreeMap::new(),
            source_errors: BTreeMap::new(),
            unreadable: BTreeSet::new(),
            accepted: BTreeMap::new(),
            records: Vec::new(),
            cluster: Cluster::new(),
            compiled: Compiled::default(),
            applied: None,
            socket: nft::NftSocket::open()?,
            info: info.clone(),
            logged_errors: BTreeSet::new(),
        };
        engine.program()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("policy".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| KernelError::Other(format!("start the policy thread: {e}")))?;
        Ok((
            PolicyEngine {
                tx: tx.clone(),
                info,
            },
            tx,
        ))
    }

    pub fn info(&self) -> PolicyInfo {
        self.info.lock().expect("policy info lock").clone()
    }

    pub async fn explain(&self, pod: Key) -> Option<PolicyExplain> {
        let (t, r) = oneshot::channel();
        self.tx.send(Msg::Explain(pod, t)).ok()?;
        r.await.ok()
    }

    pub async fn counters(&self) -> Counters {
        let (t, r) = oneshot::channel();
        if self.tx.send(Msg::Counters(t)).is_err() {
            return Counters::new();
        }
        r.await.unwrap_or_default()
    }
}

impl Engine {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    self.check();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut changed = self.take(first);
            // Everything else already waiting goes into the same transaction.
            while let Ok(m) = rx.try_recv() {
                changed |= self.take(m);
            }
            if changed {
                self.rebuild();
                if let Err(e) = self.program() {
                    tracing::warn!("applying network policy: {e}");
                }
            }
        }
    }

    /// Takes one message; `true` when the model may have changed.
    fn take(&mut self, m: Msg) -> bool {
        match m {
            Msg::Replace {
                source,
                kinds,
                objects,
                errors,
                unreadable,
            } => {
                let theirs = |(s, k, _, _): &Slot| *s == source && kinds.contains(k);
                self.objects.retain(|slot, _| !theirs(slot));
                for o in objects {
                    self.objects.insert(slot(source, &o), o);
                }
                self.source_errors.insert(source, errors);
                self.unreadable.retain(|slot| !theirs(slot));
                self.unreadable.extend(
                    unreadable
                        .into_iter()
                        .map(|(kind, k)| (source, kind, k.namespace, k.name)),
                );
            }
            Msg::Upsert(source, o) => {
                self.objects.insert(slot(source, &o), o);
            }
            Msg::Remove(source, kind, key) => {
                self.objects
                    .remove(&(source, kind, key.namespace, key.name));
            }
            Msg::Records(r) => self.records = r,
            Msg::Explain(key, reply) => {
                let _ = reply.send(self.explain(&key));
                return false;
            }
            Msg::Counters(reply) => {
                let _ = reply.send(self.counters());
                return false;
            }
        }
        true
    }

    fn is_local(&self, ip: &IpAddr) -> bool {
        self.local.iter().any(|n| n.contains(ip))
    }

    /// The model from every object and record; refused objects are logged once and listed.
    fn rebuild(&mut self) {
        let mut cluster = Cluster::new();
        let mut errors: Vec<String> = self.source_errors.values().flatten().cloned().collect();
        self.accepted = add_objects(
            &self.objects,
            &self.unreadable,
            &self.accepted,
            &mut cluster,
            &mut errors,
        );
        for r in &self.records {
            let key = Key::new(&r.namespace, &r.name);
            let mut pod = cluster.pod(&key).cloned().unwrap_or_else(|| Pod {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                ..Default::default()
            });
            // The plugin knows the addresses first: the API reports them later, if at all.
            if pod.ips.is_empty() {
                pod.ips = r.ips.clone();
            }
            cluster.upsert_pod(pod);
        }
        let pods: Vec<Pod> = cluster.pods().cloned().collect();
        for mut pod in pods {
            let local = pod.ips.iter().any(|ip| self.is_local(ip));
            let node = if local { Some(LOCAL.to_string()) } else { None };
            if pod.node != node {
                pod.node = node;
                cluster.upsert_pod(pod);
            }
        }
        for e in errors.iter().filter(|e| !self.logged_errors.contains(*e)) {
            tracing::warn!("network policy: refused: {e}");
        }
        self.logged_errors = errors.iter().cloned().collect();
        self.cluster = cluster;
        self.compiled = compile::compile(&self.cluster, LOCAL);
        let mut info = self.info.lock().expect("policy info lock");
        info.namespaces = self.cluster.namespaces().count();
        info.pods = self.cluster.pods().count();
        info.policies = self.cluster.policies().count();
        info.local_pods = self.compiled.pods.len();
        info.isolated_pods = self
            .compiled
            .pods
            .values()
            .filter(|p| p.ingress.is_some() || p.egress.is_some())
            .count();
        info.errors = errors;
    }

    /// Brings the kernel to the compiled state: the difference when the table is as we left
    /// it, the whole table otherwise.
    fn program(&mut self) -> Result<(), KernelError> {
        let start = Instant::now();
        let want = render::ruleset(&self.compiled, &self.opts);
        let whole = |opts: &Options| render::full_batch(&want, opts);
        let result = match &self.applied {
            Some(have) => {
                let update = render::update_batch(have, &want);
                if update.ops.is_empty() {
                    return Ok(());
                }
                self.socket.commit(&update).or_else(|e| {
                    tracing::warn!("network policy update failed ({e}); rewriting the table");
                    self.info.lock().expect("policy info lock").failures += 1;
                    self.socket.commit(&whole(&self.opts))
                })
            }
            None => self.socket.commit(&whole(&self.opts)),
        };
        match result {
            Ok(()) => {
                self.applied = Some(want);
                let mut info = self.info.lock().expect("policy info lock");
                info.applies += 1;
                info.last_apply_ms = Some(start.elapsed().as_secs_f64() * 1e3);
                Ok(())
            }
            Err(e) => {
                self.applied = None;
                self.info.lock().expect("policy info lock").failures += 1;
                Err(e)
            }
        }
    }

    /// Puts the table back if it is gone (someone deleted it, or `podnetctl teardown`).
    fn check(&mut self) {
        let exists = nft::NftSocket::open()
            .and_then(|s| s.table_exists(nft::NFPROTO_INET, NFT_POLICY_TABLE));
        if matches!(exists, Ok(false)) {
            tracing::warn!("podnet's network policy table was removed; restoring it");
            self.applied = None;
            if let Err(e) = self.program() {
                tracing::warn!("restoring network policy: {e}");
            }
        }
    }

    /// The rules' counters summed by what their comments name (over netlink: no `nft`).
    fn counters(&self) -> Counters {
        let rules = nft::NftSocket::open()
            .and_then(|s| s.rules(nft::NFPROTO_INET, NFT_POLICY_TABLE))
            .unwrap_or_default();
        let mut out = Counters::new();
        for (comment, (packets, bytes)) in nft::dump::counters_by_comment(&rules) {
            if let Some(key) = render::counter_key(&comment) {
                let e = out.entry(key).or_default();
                e.0 += packets;
                e.1 += bytes;
            }
        }
        out
    }

    fn explain(&self, key: &Key) -> PolicyExplain {
        let mut out = PolicyExplain {
            pod: key.to_string(),
            ..Default::default()
        };
        let Some(pod) = self.cluster.pod(key) else {
            return out;
        };
        out.known = true;
        out.ips = pod.ips.iter().map(|i| i.to_string()).collect();
        out.local = pod.node.as_deref() == Some(LOCAL);
        out.ingress = self.explain_direction(pod, Direction::Ingress);
        out.egress = self.explain_direction(pod, Direction::Egress);
        out
    }

    fn explain_direction(&self, pod: &Pod, dir: Direction) -> DirectionExplain {
        let mut d = DirectionExplain::default();
        let word = match dir {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        for p in eval::isolating(&self.cluster, pod, dir) {
            d.isolated_by.push(p.key().to_string());
            for (i, r) in p.rules(dir).unwrap_or(&[]).iter().enumerate() {
                let peers = if r.peers.is_empty() {
                    "anyone".to_string()
                } else {
                    let v: Vec<String> = r.peers.iter().map(|x| x.to_string()).collect();
                    v.join(" or ")
                };
                let ports = if r.ports.is_empty() {
                    "any port".to_string()
                } else {
                    let v: Vec<String> = r.ports.iter().map(|x| x.to_string()).collect();
                    v.join(", ")
                };
                d.allows
                    .push(format!("{} {dir}[{i}]: {word} {peers} on {ports}", p.key()));
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(text: &str) -> BTreeMap<Slot, Object> {
        let m = manifest::parse(text);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        m.objects
            .into_iter()
            .map(|o| (slot("manifests", &o), o))
            .collect()
    }

    fn policy(spec: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-all, namespace: x}}\nspec:\n{spec}"
        )
    }

    /// One round: the model's policies (with their ingress rule counts) and the errors.
    fn round(
        objs: &BTreeMap<Slot, Object>,
        unreadable: &BTreeSet<Slot>,
        last: &mut BTreeMap<Slot, Object>,
    ) -> (Vec<(String, usize)>, Vec<String>) {
        let (mut cluster, mut errors) = (Cluster::new(), Vec::new());
        *last = add_objects(objs, unreadable, last, &mut cluster, &mut errors);
        let policies = cluster
            .policies()
            .map(|p| (p.name.clone(), p.ingress.as_ref().map_or(0, Vec::len)))
            .collect();
        (policies, errors)
    }

    #[test]
    fn an_edit_gone_wrong_keeps_the_last_valid_version_until_the_object_goes() {
        let valid = objects(&policy("  podSelector: {}\n  ingress: []\n"));
        let none = BTreeSet::new();
        let mut last = BTreeMap::new();
        // Refused with no valid version before: nothing in force.
        let bad = objects(&policy(
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
        ));
        let (p, e) = round(&bad, &none, &mut last);
        assert!(p.is_empty(), "{p:?}");
        assert!(
            e[0].contains("10.0.0.0/33") && !e[0].contains("stays"),
            "{e:?}"
        );
        // Valid, then edited with a bad CIDR: the valid version stays, the error says so.
        assert_eq!(
            round(&valid, &none, &mut last),
            (vec![("deny-all".into(), 0)], vec![])
        );
        let (p, e) = round(&bad, &none, &mut last);
        assert_eq!(p, [("deny-all".to_string(), 0)]);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("networkpolicy x/deny-all: spec.ingress[0].from[0].ipBlock.cidr")
                && e[0].ends_with("(its last valid version stays in force)"),
            "{e:?}"
        );
        // Unreadable (its source could not parse it): still the valid version.
        let unreadable: BTreeSet<Slot> = valid.keys().cloned().collect();
        let (p, e) = round(&BTreeMap::new(), &unreadable, &mut last);
        assert_eq!(p, [("deny-all".to_string(), 0)]);
        assert_eq!(
            e,
            ["networkpolicy x/deny-all: unreadable; its last valid version stays in force"]
        );
        // A new valid version replaces it; deleted, it goes.
        let edited = objects(&policy("  podSelector: {}\n  ingress: [{}]\n"));
        assert_eq!(
            round(&edited, &none, &mut last).0,
            [("deny-all".to_string(), 1)]
        );
        assert_eq!(round(&BTreeMap::new(), &none, &mut last), (vec![], vec![]));
        assert!(last.is_empty());
        let (p, _) = round(&bad, &none, &mut last);
        assert!(p.is_empty(), "deleted, its history went with it: {p:?}");
    }
}

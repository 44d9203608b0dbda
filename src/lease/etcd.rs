//! The lease store in etcd (v3 API), in flannel's layout.
//!
//! Differences from flanneld, each fixing a defect it has: a node that loses the creation race
//! tries another subnet instead of exiting; renewal keeps the one etcd lease alive instead of
//! granting a new one each time (no leak); a lost lease is reclaimed if the subnet is still free
//! and is an error otherwise, never a clean exit.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use super::manager::{Renewal, SubnetManager, WatchUpdate};
use super::refusals::Refusals;
use super::{AcquireRequest, Choice, Keepalive, Lease, LeaseAttrs, LeaseError, SubnetKey};
use crate::config::NetworkConfig;
use crate::util::backoff::Backoff;

/// flannel's default key prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// How often acquisition retries after losing a race before giving up. Losing is normal when
/// many nodes boot at once into a nearly full network, so this is generous and jittered.
const RACE_RETRIES: usize = 100;
/// Reconnecting watches: flannel's 100 ms doubling to 5 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// How to reach etcd (flannel's `--etcd-*` flags).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A connected lease store.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    endpoints: String,
    /// Lease keys whose value is no lease, with why (`rejected`).
    rejected: Refusals<SubnetKey>,
}

/// "op: message" with the whole chain of causes, so TLS and connection failures say what happened.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

fn etcd_msg(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(st) => {
            let mut m = format!("{:?}: {}", st.code(), st.message());
            if let Some(src) = std::error::Error::source(st) {
                m.push_str(": ");
                m.push_str(&chain(src));
            }
            m
        }
        etcd_client::Error::TransportError(t) => chain(t),
        other => chain(other),
    }
}

impl EtcdOptions {
    fn https(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Checks the options as data, naming the flag at fault: a wrong combination will not fix
    /// itself, so podnetd refuses to start instead of retrying.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("--etcd-endpoints: no endpoint given".into());
        }
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty()) {
                return Err(format!(
                    "--etcd-endpoints {e:?}: expected http://HOST:PORT or https://HOST:PORT"
                ));
            }
        }
        let tls_files =
            self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if tls_files && !self.https() {
            return Err(format!(
                "--etcd-cafile/--etcd-certfile/--etcd-keyfile are set but --etcd-endpoints {} use http://; use https:// endpoints",
                self.endpoints.join(",")
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("--etcd-certfile and --etcd-keyfile must be given together".into());
        }
        if self.username.is_some() != self.password.is_some() {
            return Err("--etcd-username and --etcd-password must be given together".into());
        }
        Ok(())
    }

    /// The client's options, with the TLS material read from disk.
    fn connect_options(&self) -> Result<ConnectOptions, LeaseError> {
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| LeaseError::Config(format!("{flag} {}: {e}", p.display())))
        };
        if self.https() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read("--etcd-cafile", ca)?));
            }
            if let (Some(c), Some(k)) = (&self.cert_file, &self.key_file) {
                let cert = read("--etcd-certfile", c)?;
                tls = tls.identity(Identity::from_pem(cert, read("--etcd-keyfile", k)?));
            }
            co = co.with_tls(tls);
        }
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            co = co.with_user(u, p);
        }
        Ok(co)
    }
}

/// The message of a failed request, with a hint where TLS 1.3 hides the real cause: a server
/// that wants a client certificate says so only after the client thinks the handshake is done,
/// and the client sees a closed connection or, if the server's alert arrives first, a
/// "bad certificate" or "certificate required" alert.
fn explain(e: etcd_client::Error, no_identity: bool) -> String {
    with_certificate_hint(etcd_msg(&e), no_identity)
}

fn with_certificate_hint(mut msg: String, no_identity: bool) -> String {
    let refused = [
        "connection closed",
        "reset",
        "broken pipe",
        "BadCertificate",
        "CertificateRequired",
        "bad certificate",
        "certificate required",
    ];
    if no_identity && refused.iter().any(|c| msg.contains(c)) {
        msg.push_str(
            " (the server ended the TLS session; etcd does that when it requires a client certificate \
             (--client-cert-auth): pass --etcd-certfile and --etcd-keyfile)",
        );
    }
    msg
}

impl EtcdStore {
    /// Connects and checks the connection with one request, so a wrong address, CA or client
    /// certificate is reported here and not at the first real use.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdStore, LeaseError> {
        opts.validate().map_err(LeaseError::Config)?;
        let endpoints = opts.endpoints.join(",");
        let no_identity = opts.https() && opts.cert_file.is_none();
        let fail = |op: &str, e| LeaseError::Etcd {
            endpoints: endpoints.clone(),
            op: op.into(),
            msg: explain(e, no_identity),
        };
        let mut client = Client::connect(&opts.endpoints, Some(opts.connect_options()?))
            .await
            .map_err(|e| fail("connect", e))?;
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        let first = Some(GetOptions::new().with_count_only());
        client
            .get(format!("{prefix}/config"), first)
            .await
            .map_err(|e| fail("first request", e))?;
        Ok(EtcdStore {
            client,
            prefix,
            endpoints,
            rejected: Refusals::new(log_refused),
        })
    }

    fn err(&self, op: impl Into<String>, e: etcd_client::Error) -> LeaseError {
        LeaseError::Etcd {
            endpoints: self.endpoints.clone(),
            op: op.into(),
            msg: etcd_msg(&e),
        }
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    /// The raw network config, if present.
    pub async fn get_config(&self) -> Result<Option<String>, LeaseError> {
        let mut c = self.client.clone();
        let resp = c
            .get(self.config_key(), None)
            .await
            .map_err(|e| self.err("read config", e))?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    pub async fn put_config(&self, text: &str) -> Result<(), LeaseError> {
        let mut c = self.client.clone();
        c.put(self.config_key(), text, None)
            .await
            .map_err(|e| self.err("write config", e))?;
        Ok(())
    }

    /// What one key holds.
    fn entry(&self, kv: &KeyValue) -> Entry {
        let Some(rest) = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(&self.subnets_prefix()))
        else {
            return Entry::Other;
        };
        let Some(key) = SubnetKey::parse(rest) else {
            tracing::warn!(
                key = rest,
                "ignoring a key that is not a lease key as flannel writes them"
            );
            return Entry::Other;
        };
        match lease_value(kv.value()) {
            Err(why) => Entry::Unreadable(key, why),
            Ok(attrs) => Entry::Lease(Lease {
                key,
                attrs,
                keepalive: match kv.lease() {
                    0 => Keepalive::Reservation,
                    id => Keepalive::Etcd(id),
                },
                revision: kv.mod_revision(),
                created: kv.create_revision(),
            }),
        }
    }

    fn parse_kv(&self, kv: &KeyValue) -> Option<Lease> {
        match self.entry(kv) {
            Entry::Lease(l) => Some(l),
            _ => None,
        }
    }

    /// All leases and the revision they were read at.
    pub async fn list(&self) -> Result<(Vec<Lease>, i64), LeaseError> {
        let listing = self.list_all().await?;
        Ok((listing.leases, listing.revision))
    }

    /// All lease keys: the leases, and those whose value is no lease, with why.
    async fn list_all(&self) -> Result<Listing, LeaseError> {
        let mut c = self.client.clone();
        let resp = c
            .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err("list leases", e))?;
        let mut listing = Listing {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            ..Listing::default()
        };
        for kv in resp.kvs() {
            match self.entry(kv) {
                Entry::Lease(l) => listing.leases.push(l),
                Entry::Unreadable(k, why) => listing.unreadable.push((k, why)),
                Entry::Other => {}
            }
        }
        Ok(listing)
    }

    /// Seconds left on an etcd lease (`None` if it no longer exists).
    pub async fn lease_ttl(&self, etcd_lease: i64) -> Result<Option<i64>, LeaseError> {
        let mut c = self.client.clone();
        let r = c
            .lease_time_to_live(etcd_lease, None)
            .await
            .map_err(|e| self.err("lease time-to-live", e))?;
        Ok((r.ttl() > 0).then_some(r.ttl()))
    }

    async fn keep_alive_once(&self, id: i64) -> Result<i64, LeaseError> {
        let mut c = self.client.clone();
        let (mut keeper, mut stream) = c
            .lease_keep_alive(id)
            .await
            .map_err(|e| self.err("renew lease", e))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| self.err("renew lease", e))?;
        match stream
            .message()
            .await
            .map_err(|e| self.err("renew lease", e))?
        {
            Some(r) => Ok(r.ttl()),
            None => Ok(0),
        }
    }

    /// Creates `key` if absent, bound to a new etcd lease. `Ok(None)` when someone else has it.
    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        let mut c = self.client.clone();
        let grant = c
            .lease_grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(|e| self.err("grant lease", e))?;
        let id = grant.id();
        let k = self.lease_key(key);
        let txn = Txn::new()
            .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                k,
                attrs.to_json(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let resp = match c.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                let _ = c.lease_revoke(id).await;
                return Err(self.err(format!("create lease {key}"), e));
            }
        };
        if !resp.succeeded() {
            // Lost the race: do not leave the unused etcd lease behind.
            let _ = c.lease_revoke(id).await;
            return Ok(None);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Some(Lease {
            key: *key,
            attrs: attrs.clone(),
            keepalive: Keepalive::Etcd(id),
            revision,
            created: revision,
        }))
    }

    /// Rewrites our value on an existing key, keeping its etcd lease (or none, for a reservation).
    /// `Ok(None)` if the key changed in the meantime.
    async fn update(
        &self,
        existing: &Lease,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, LeaseError> {
        if existing.attrs == *attrs {
            return Ok(Some(existing.clone()));
        }
        let mut c = self.client.clone();
        let k = self.lease_key(&existing.key);
        let opts = existing
            .keepalive
            .etcd_id()
            .map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                existing.revision,
            )])
            .and_then([TxnOp::put(k, attrs.to_json(), opts)]);
        let resp = c
            .txn(txn)
            .await
            .map_err(|e| self.err(format!("update lease {}", existing.key), e))?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let revision = resp
            .header()
            .map(|h| h.revision())
            .unwrap_or(existing.revision);
        Ok(Some(Lease {
            attrs: attrs.clone(),
            revision,
            ..existing.clone()
        }))
    }

    /// Acquires this node's lease (see `super::choose` for the order of preference).
    async fn acquire_lease(
        &self,
        cfg: &NetworkConfig,
        req: &AcquireRequest,
    ) -> Result<Lease, LeaseError> {
        let mut lost: Vec<SubnetKey> = Vec::new();
        for _ in 0..RACE_RETRIES {
            let (leases, _) = self.list().await?;
            for stale in super::stale_own(cfg, &leases, &req.attrs) {
                tracing::info!(lease = %stale.key, "deleting our old lease: it does not fit the current network config");
                let mut c = self.client.clone();
                c.delete(self.lease_key(&stale.key), None)
                    .await
                    .map_err(|e| self.err(format!("delete stale lease {}", stale.key), e))?;
            }
            let choice = super::choose(cfg, &leases, req, &lost, &mut rand::rng());
            match choice {
                Choice::Reuse(existing) => {
                    // Left behind by a start that died between creating it and checking it.
                    if let Some(older) = dual_etcd(&existing)
                        .then(|| super::displaced_by(&existing, &leases, cfg))
                        .flatten()
                    {
                        tracing::warn!(lease = %existing.key, older = %older.key, "our lease shares a subnet with an older one; giving it back");
                        self.give_back(&existing).await?;
                        continue;
                    }
                    if let Some(id) = existing.keepalive.etcd_id()
                        && self.keep_alive_once(id).await? <= 0
                    {
                        // Expired between listing and now; etcd deletes the key: start over.
                        continue;
                    }
                    if let Some(l) = self.update(&existing, &req.attrs).await? {
                        tracing::info!(lease = %l.key, reservation = l.is_reservation(), "reusing our existing lease");
                        return Ok(l);
                    }
                }
                Choice::Create(key) => {
                    match self.create(&key, &req.attrs, req.ttl).await? {
                        Some(l) if !self.shares_with_older(&l, cfg).await? => {
                            tracing::info!(lease = %l.key, "acquired a new lease");
                            return Ok(l);
                        }
                        // Given back: the next listing shows the older lease holding the
                        // shared half, and the other half stays free to choose.
                        Some(_) => {}
                        None => {
                            tracing::info!(lease = %key, "another node took this subnet first; trying another");
                            lost.push(key);
                        }
                    }
                    let jitter: u64 = rand::random_range(0..20);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Choice::OutOfSubnets => {
                    let (min, max) = match (&cfg.v4, &cfg.v6) {
                        (Some(f), _) => (f.subnet_min.to_string(), f.subnet_max.to_string()),
                        (None, Some(f)) => (f.subnet_min.to_string(), f.subnet_max.to_string()),
                        _ => (String::new(), String::new()),
                    };
                    return Err(LeaseError::OutOfSubnets {
                        min,
                        max,
                        held: leases.len(),
                    });
                }
            }
        }
        Err(LeaseError::TooManyRaces(RACE_RETRIES))
    }

    /// Whether a lease just created shares a subnet with an older one (two dual-stack nodes
    /// that chose the same subnet of one family, see `super::displaced_by`); if so, or if that
    /// cannot be told, it is given back. A single-family key is its subnet, which the create
    /// already made exclusive.
    async fn shares_with_older(
        &self,
        ours: &Lease,
        cfg: &NetworkConfig,
    ) -> Result<bool, LeaseError> {
        if !dual_etcd(ours) {
            return Ok(false);
        }
        let leases = match self.list().await {
            Ok((leases, _)) => leases,
            Err(e) => {
                // Unchecked, it must not stay: best effort, the error is what matters.
                let _ = self.give_back(ours).await;
                return Err(e);
            }
        };
        let Some(older) = super::displaced_by(ours, &leases, cfg) else {
            return Ok(false);
        };
        tracing::info!(lease = %ours.key, older = %older.key, "an older lease holds one of our subnets; giving ours back");
        self.give_back(ours).await?;
        Ok(true)
    }

    /// Revokes a lease's etcd lease, which deletes its key.
    async fn give_back(&self, lease: &Lease) -> Result<(), LeaseError> {
        let Some(id) = lease.keepalive.etcd_id() else {
            return Ok(());
        };
        let mut c = self.client.clone();
        c.lease_revoke(id)
            .await
            .map_err(|e| self.err(format!("give back lease {}", lease.key), e))?;
        Ok(())
    }

    /// Keeps our lease alive, and checks that the key is still ours.
    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal, LeaseError> {
        let mut c = self.client.clone();
        let resp = c
            .get(self.lease_key(&lease.key), None)
            .await
            .map_err(|e| self.err("read own lease", e))?;
        let current = resp.kvs().first().and_then(|kv| self.parse_kv(kv));
        match current {
            Some(cur)
                if cur.attrs.public_ip == lease.attrs.public_ip
                    && cur.attrs.public_ipv6 == lease.attrs.public_ipv6 =>
            {
                match cur.keepalive.etcd_id() {
                    None => Ok(Renewal::Reservation),
                    Some(id) => {
                        let ttl = self.keep_alive_once(id).await?;
                        Ok(if ttl > 0 {
                            Renewal::Renewed(ttl)
                        } else {
                            Renewal::Gone
                        })
                    }
                }
            }
            _ => Ok(Renewal::Gone),
        }
    }

    /// Takes our subnet back after the lease vanished; an error if another node holds it now.
    /// A key that holds no lease (someone wrote bytes over ours) is written back.
    async fn reclaim_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LeaseError> {
        if let Some(l) = self.create(&lease.key, &lease.attrs, ttl).await? {
            return Ok(l);
        }
        let mut c = self.client.clone();
        let resp = c
            .get(self.lease_key(&lease.key), None)
            .await
            .map_err(|e| self.err("read own lease", e))?;
        let lost = |holder: String| LeaseError::Lost {
            key: lease.key.to_string(),
            holder,
        };
        let Some(kv) = resp.kvs().first() else {
            return Err(lost("nobody (it keeps vanishing)".into()));
        };
        match self.entry(kv) {
            Entry::Lease(cur) if cur.attrs.public_ip == lease.attrs.public_ip => Ok(cur),
            Entry::Lease(cur) => Err(lost(cur.attrs.public_ip.to_string())),
            Entry::Unreadable(_, why) => {
                tracing::warn!(lease = %lease.key, "this node's lease key holds no lease ({why}); writing it back");
                match self.put_over(lease, kv.mod_revision()).await? {
                    Some(revision) => Ok(Lease {
                        revision,
                        created: kv.create_revision(),
                        ..lease.clone()
                    }),
                    None => Err(lost("nobody (it keeps changing)".into())),
                }
            }
            Entry::Other => Err(lost("nobody (it keeps vanishing)".into())),
        }
    }

    /// Writes `own` over its key if the key is still at `revision`; the new revision, or
    /// `None` when the key changed in between.
    async fn put_over(&self, own: &Lease, revision: i64) -> Result<Option<i64>, LeaseError> {
        let k = self.lease_key(&own.key);
        let opts = own
            .keepalive
            .etcd_id()
            .map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([Compare::mod_revision(k.clone(), CompareOp::Equal, revision)])
            .and_then([TxnOp::put(k, own.attrs.to_json(), opts)]);
        let mut c = self.client.clone();
        let resp = c
            .txn(txn)
            .await
            .map_err(|e| self.err(format!("restore lease {}", own.key), e))?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(revision)))
    }

    /// Follows all leases: a snapshot, then changes from the next revision on; reconnects with
    /// backoff, resumes where it left off, and starts over with a snapshot after a compaction.
    /// Ends when the receiver is dropped.
    async fn watch_leases(self, tx: mpsc::Sender<WatchUpdate>) {
        let mut next_rev: Option<i64> = None;
        let mut backoff = BACKOFF;
        while !tx.is_closed() {
            let rev = match next_rev {
                Some(r) => r,
                None => match self.list_all().await {
                    Ok(listing) => {
                        self.rejected.relist(listing.unreadable);
                        let snapshot = WatchUpdate::Snapshot(listing.leases);
                        if tx.send(snapshot).await.is_err() {
                            return;
                        }
                        backoff.reset();
                        listing.revision + 1
                    }
                    Err(e) => {
                        disconnected(&tx, &mut backoff, e.to_string()).await;
                        continue;
                    }
                },
            };
            match self.follow(rev, &tx, &mut backoff).await {
                Followed::From(r) => next_rev = Some(r),
                Followed::Compacted => next_rev = None,
                Followed::ReceiverGone => return,
            }
        }
    }

    /// One watch stream from revision `rev`, until it breaks.
    async fn follow(
        &self,
        rev: i64,
        tx: &mpsc::Sender<WatchUpdate>,
        backoff: &mut Backoff,
    ) -> Followed {
        let mut c = self.client.clone();
        let opts = WatchOptions::new().with_prefix().with_start_revision(rev);
        let mut stream = match c.watch(self.subnets_prefix(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                disconnected(tx, backoff, self.err("watch", e).to_string()).await;
                return Followed::From(rev);
            }
        };
        let mut next = rev;
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    disconnected(tx, backoff, "watch stream closed".into()).await;
                    return Followed::From(next);
                }
                Err(e) => {
                    disconnected(tx, backoff, self.err("watch", e).to_string()).await;
                    return Followed::From(next);
                }
            };
            if resp.compact_revision() > 0 {
                tracing::info!(
                    compacted = resp.compact_revision(),
                    wanted = next,
                    "lease watch fell behind a compaction; re-listing"
                );
                return Followed::Compacted;
            }
            if resp.canceled() {
                let why = format!("watch canceled: {}", resp.cancel_reason());
                disconnected(tx, backoff, why).await;
                return Followed::From(next);
            }
            backoff.reset();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                next = kv.mod_revision() + 1;
                if let Some(update) = self.update_of(ev.event_type(), kv)
                    && tx.send(update).await.is_err()
                {
                    return Followed::ReceiverGone;
                }
            }
        }
    }

    /// A watch event as a lease change; `None` for keys that are not leases. A lease key
    /// written with a value that is no lease is remembered (`rejected`) and reported, so what
    /// it held before is withdrawn (or, ours, written back).
    fn update_of(&self, kind: EventType, kv: &KeyValue) -> Option<WatchUpdate> {
        match kind {
            EventType::Put => match self.entry(kv) {
                Entry::Lease(l) => {
                    self.rejected.note(l.key, None);
                    Some(WatchUpdate::Put(l))
                }
                Entry::Unreadable(key, why) => {
                    self.rejected.note(key, Some(why));
                    let revision = kv.mod_revision();
                    Some(WatchUpdate::Unreadable { key, revision })
                }
                Entry::Other => None,
            },
            EventType::Delete => {
                let key = std::str::from_utf8(kv.key())
                    .ok()
                    .and_then(|k| k.strip_prefix(&self.subnets_prefix()))
                    .and_then(SubnetKey::parse)?;
                self.rejected.note(key, None);
                Some(WatchUpdate::Delete(key))
            }
        }
    }

    /// Deletes a lease key (operator action).
    pub async fn delete(&self, key: &SubnetKey) -> Result<bool, LeaseError> {
        let mut c = self.client.clone();
        let r = c
            .delete(self.lease_key(key), None)
            .await
            .map_err(|e| self.err(format!("delete lease {key}"), e))?;
        Ok(r.deleted() > 0)
    }

    /// Writes a reservation: the key with no etcd lease, so it never expires.
    pub async fn reserve(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<(), LeaseError> {
        let mut c = self.client.clone();
        c.put(self.lease_key(key), attrs.to_json(), None)
            .await
            .map_err(|e| self.err(format!("reserve {key}"), e))?;
        Ok(())
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }
}
/// A dual-stack lease kept alive by an etcd lease: the kind acquisition may have to give back
/// (reservations are the operator's).
fn dual_etcd(l: &Lease) -> bool {
    l.key.v4.is_some() && l.key.v6.is_some() && l.keepalive.etcd_id().is_some()
}

/// What one key under the subnets prefix holds.
enum Entry {
    /// Not a lease key as flannel writes them.
    Other,
    /// A lease key whose value is no lease, with why.
    Unreadable(SubnetKey, String),
    Lease(Lease),
}

/// A listing of the lease keys.
#[derive(Default)]
struct Listing {
    leases: Vec<Lease>,
    unreadable: Vec<(SubnetKey, String)>,
    revision: i64,
}

/// The longest stretch of a bad value an error quotes.
const QUOTED: usize = 64;

/// A lease value as flannel writes it, or why it is not one, quoting (the start of) the value.
fn lease_value(value: &[u8]) -> Result<LeaseAttrs, String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| format!("value of {} bytes is not UTF-8 text", value.len()))?;
    LeaseAttrs::from_json(text).map_err(|e| {
        let quoted: String = text.chars().take(QUOTED).collect();
        let more = if quoted.len() < text.len() { "..." } else { "" };
        format!("value {quoted:?}{more} is not flannel's lease JSON: {e}")
    })
}

/// How one watch stream ended.
enum Followed {
    /// Broken: resume from this revision.
    From(i64),
    /// History is gone: start over with a snapshot.
    Compacted,
    ReceiverGone,
}

/// Reports a broken watch and waits before the next attempt, longer each time.
async fn disconnected(tx: &mpsc::Sender<WatchUpdate>, backoff: &mut Backoff, why: String) {
    let _ = tx.send(WatchUpdate::Disconnected(why)).await;
    backoff.wait().await;
}

impl SubnetManager for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn config_source(&self) -> String {
        self.config_key()
    }

    fn config_missing(&self) -> String {
        format!(
            "{} does not exist yet; create it with `podnetctl config set`",
            self.config_key()
        )
    }

    async fn network_config(&self) -> Result<Option<String>, LeaseError> {
        self.get_config().await
    }

    async fn previous_lease(&self, cfg: &NetworkConfig, attrs: &LeaseAttrs) -> Option<Lease> {
        let (leases, _) = self.list().await.ok()?;
        leases
            .into_iter()
            .find(|l| super::is_ours(cfg, l, attrs) && l.key.fits(cfg))
    }

    async fn acquire(
        &self,
        cfg: &NetworkConfig,
        req: &AcquireRequest,
    ) -> Result<Lease, LeaseError> {
        self.acquire_lease(cfg, req).await
    }

    async fn renew(&self, own: &Lease) -> Result<Renewal, LeaseError> {
        self.renew_lease(own).await
    }

    async fn reclaim(&self, own: &Lease, ttl: Duration) -> Result<Lease, LeaseError> {
        self.reclaim_lease(own, ttl).await
    }

    async fn restore(&self, own: &Lease, revision: i64) -> Result<bool, LeaseError> {
        Ok(self.put_over(own, revision).await?.is_some())
    }

    async fn time_left(&self, own: &Lease) -> Result<Option<Duration>, LeaseError> {
        let Some(id) = own.keepalive.etcd_id() else {
            return Ok(None);
        };
        // An etcd lease that no longer exists has no time left: renew (and find it gone) now.
        let left = self.lease_ttl(id).await?.unwrap_or(0);
        Ok(Some(Duration::from_secs(left.max(0) as u64)))
    }

    fn watch(&self, tx: mpsc::Sender<WatchUpdate>) -> impl Future<Output = ()> + Send + 'static {
        self.clone().watch_leases(tx)
    }

    fn rejected(&self) -> Vec<String> {
        self.rejected.describe("lease")
    }
}

fn log_refused(key: &SubnetKey, why: &str) {
    tracing::warn!(lease = %key, "refusing a lease key whose value is no lease: {why}");
}

#[cfg(test)]
mod tests {
    use super::{lease_value, with_certificate_hint};

    /// A value that is no lease is refused naming the value (its start, when long).
    #[test]
    fn a_value_that_is_no_lease_is_named() {
        let err = lease_value(b"{not json").unwrap_err();
        assert!(
            err.starts_with("value \"{not json\" is not flannel's lease JSON: "),
            "{err}"
        );
        let err = lease_value(&[0xff, 0xfe]).unwrap_err();
        assert_eq!(err, "value of 2 bytes is not UTF-8 text");
        let long = format!("[{}]", "1,".repeat(100));
        let err = lease_value(long.as_bytes()).unwrap_err();
        assert!(err.contains(",1\"...") && err.len() < 200, "{err}");
        let ok = br#"{"PublicIP":"198.18.0.12","BackendType":"vxlan"}"#;
        assert_eq!(
            lease_value(ok).unwrap().public_ip.to_string(),
            "198.18.0.12"
        );
    }

    #[test]
    fn a_refused_handshake_without_a_client_certificate_is_explained() {
        let hinted = |m: &str, no_identity| {
            with_certificate_hint(m.to_string(), no_identity)
                .contains("requires a client certificate")
        };
        // However the refusal reaches the client: a closed connection or the server's alert.
        for m in [
            "transport error: connection closed before message completed",
            "transport error: connection error: received fatal alert: BadCertificate",
            "received fatal alert: CertificateRequired",
        ] {
            assert!(hinted(m, true), "{m}");
            assert!(
                !hinted(m, false),
                "with a certificate it is another problem: {m}"
            );
        }
        assert!(!hinted("invalid peer certificate: UnknownIssuer", true));
    }
}

//! The lease store in etcd (v3 API), in flannel's layout.
//!
//! Differences from flanneld, each fixing a defect it has: a node that loses the creation race
//! tries another subnet instead of exiting; renewal keeps the one etcd lease alive instead of
//! granting a new one each time (no leak); a lost lease is reclaimed if the subnet is still free
//! and is an error otherwise, never a clean exit.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use super::{AcquireRequest, Choice, Lease, LeaseAttrs, SubnetKey};
use crate::config::NetworkConfig;

/// flannel's default key prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// How often acquisition retries after losing a race before giving up. Losing is normal when
/// many nodes boot at once into a nearly full network, so this is generous and jittered.
const RACE_RETRIES: usize = 100;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{0}")]
    Config(String),
    #[error("etcd ({endpoints}): {op}: {msg}")]
    Etcd {
        endpoints: String,
        op: String,
        msg: String,
    },
    #[error(
        "out of subnets: every subnet between {min} and {max} is leased ({held} leases); \
         free one, or widen Network or SubnetMin/SubnetMax"
    )]
    OutOfSubnets {
        min: String,
        max: String,
        held: usize,
    },
    #[error("gave up acquiring a subnet after losing {0} races against other nodes")]
    TooManyRaces(usize),
    #[error(
        "lease for {key} was lost and the subnet is now held by {holder}; refusing to continue with an address range another node owns"
    )]
    Lost { key: String, holder: String },
}

/// Changes to the set of leases, as the watch sees them.
#[derive(Debug, Clone)]
pub enum WatchUpdate {
    /// A full listing (at start, and after the watch fell behind a compaction).
    Snapshot(Vec<Lease>),
    Put(Lease),
    Delete(SubnetKey),
    /// The watch lost etcd and is reconnecting (for health and metrics).
    Disconnected(String),
}

/// Result of one renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Kept alive; this many seconds left.
    Renewed(i64),
    /// A reservation: nothing to renew.
    Reservation,
    /// The key or its etcd lease is gone.
    Gone,
}

/// A connected lease store.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    endpoints: String,
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

impl EtcdStore {
    /// Connects and checks the connection with one request, so a wrong address, CA or client
    /// certificate is reported here and not at the first real use.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdStore, LeaseError> {
        let endpoints = opts.endpoints.join(",");
        if opts.endpoints.is_empty() {
            return Err(LeaseError::Config(
                "--etcd-endpoints: no endpoint given".into(),
            ));
        }
        for e in &opts.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(LeaseError::Config(format!(
                    "--etcd-endpoints {e:?}: expected http://HOST:PORT or https://HOST:PORT"
                )));
            }
        }
        let tls_wanted =
            opts.ca_file.is_some() || opts.cert_file.is_some() || opts.key_file.is_some();
        let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
        if tls_wanted && !https {
            return Err(LeaseError::Config(format!(
                "--etcd-cafile/--etcd-certfile/--etcd-keyfile are set but --etcd-endpoints {endpoints} use http://; use https:// endpoints"
            )));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if https {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    LeaseError::Config(format!("--etcd-cafile {}: {e}", ca.display()))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            match (&opts.cert_file, &opts.key_file) {
                (Some(c), Some(k)) => {
                    let cert = std::fs::read(c).map_err(|e| {
                        LeaseError::Config(format!("--etcd-certfile {}: {e}", c.display()))
                    })?;
                    let key = std::fs::read(k).map_err(|e| {
                        LeaseError::Config(format!("--etcd-keyfile {}: {e}", k.display()))
                    })?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => {
                    return Err(LeaseError::Config(
                        "--etcd-certfile and --etcd-keyfile must be given together".into(),
                    ));
                }
            }
            co = co.with_tls(tls);
        }
        match (&opts.username, &opts.password) {
            (Some(u), Some(p)) => co = co.with_user(u, p),
            (Some(_), None) | (None, Some(_)) => {
                return Err(LeaseError::Config(
                    "--etcd-username and --etcd-password must be given together".into(),
                ));
            }
            _ => {}
        }
        let no_identity = https && opts.cert_file.is_none();
        // With TLS 1.3 a server that wants a client certificate says so only after the client
        // thinks the handshake is done, and the client sees nothing but a closed connection.
        let explain = |e: etcd_client::Error| {
            let mut msg = etcd_msg(&e);
            if no_identity
                && (msg.contains("connection closed")
                    || msg.contains("reset")
                    || msg.contains("broken pipe"))
            {
                msg.push_str(
                    " (the server ended the TLS session; etcd does that when it requires a client certificate \
                     (--client-cert-auth): pass --etcd-certfile and --etcd-keyfile)",
                );
            }
            msg
        };
        let mut client = Client::connect(&opts.endpoints, Some(co))
            .await
            .map_err(|e| LeaseError::Etcd {
                endpoints: endpoints.clone(),
                op: "connect".into(),
                msg: explain(e),
            })?;
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        client
            .get(
                format!("{prefix}/config"),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(|e| LeaseError::Etcd {
                endpoints: endpoints.clone(),
                op: "first request".into(),
                msg: explain(e),
            })?;
        Ok(EtcdStore {
            client,
            prefix,
            endpoints,
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

    fn parse_kv(&self, kv: &KeyValue) -> Option<Lease> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        let sk = SubnetKey::parse(key.strip_prefix(&self.subnets_prefix())?)?;
        let attrs = match std::str::from_utf8(kv.value())
            .ok()
            .map(LeaseAttrs::from_json)
        {
            Some(Ok(a)) => a,
            _ => {
                tracing::warn!(
                    key,
                    "ignoring a lease whose value is not flannel's lease JSON"
                );
                return None;
            }
        };
        Some(Lease {
            key: sk,
            attrs,
            etcd_lease: (kv.lease() != 0).then_some(kv.lease()),
            revision: kv.mod_revision(),
        })
    }

    /// All leases and the revision they were read at.
    pub async fn list(&self) -> Result<(Vec<Lease>, i64), LeaseError> {
        let mut c = self.client.clone();
        let resp = c
            .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err("list leases", e))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((
            resp.kvs()
                .iter()
                .filter_map(|kv| self.parse_kv(kv))
                .collect(),
            rev,
        ))
    }

    /// Seconds left on an etcd lease (`None` if it no longer exists).
    pub async fn time_left(&self, etcd_lease: i64) -> Result<Option<i64>, LeaseError> {
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
            etcd_lease: Some(id),
            revision,
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
            .etcd_lease
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
    pub async fn acquire(
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
                    if let Some(id) = existing.etcd_lease
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
                    if let Some(l) = self.create(&key, &req.attrs, req.ttl).await? {
                        tracing::info!(lease = %l.key, "acquired a new lease");
                        return Ok(l);
                    }
                    tracing::info!(lease = %key, "another node took this subnet first; trying another");
                    lost.push(key);
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

    /// Keeps our lease alive, and checks that the key is still ours.
    pub async fn renew(&self, lease: &Lease) -> Result<Renewal, LeaseError> {
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
                match cur.etcd_lease {
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
    pub async fn reclaim(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LeaseError> {
        if let Some(l) = self.create(&lease.key, &lease.attrs, ttl).await? {
            return Ok(l);
        }
        let mut c = self.client.clone();
        let resp = c
            .get(self.lease_key(&lease.key), None)
            .await
            .map_err(|e| self.err("read own lease", e))?;
        match resp.kvs().first().and_then(|kv| self.parse_kv(kv)) {
            Some(cur) if cur.attrs.public_ip == lease.attrs.public_ip => Ok(cur),
            Some(cur) => Err(LeaseError::Lost {
                key: lease.key.to_string(),
                holder: cur.attrs.public_ip.to_string(),
            }),
            None => Err(LeaseError::Lost {
                key: lease.key.to_string(),
                holder: "nobody (it keeps vanishing)".into(),
            }),
        }
    }

    /// Follows all leases: a snapshot, then changes from the next revision on; reconnects with
    /// backoff, resumes where it left off, and starts over with a snapshot after a compaction.
    /// Ends when the receiver is dropped.
    pub async fn watch(self, tx: mpsc::Sender<WatchUpdate>) {
        let mut next_rev: Option<i64> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            if tx.is_closed() {
                return;
            }
            let rev = match next_rev {
                Some(r) => r,
                None => match self.list().await {
                    Ok((leases, rev)) => {
                        if tx.send(WatchUpdate::Snapshot(leases)).await.is_err() {
                            return;
                        }
                        backoff = BACKOFF_MIN;
                        next_rev = Some(rev + 1);
                        rev + 1
                    }
                    Err(e) => {
                        disconnected(&tx, &mut backoff, e.to_string()).await;
                        continue;
                    }
                },
            };
            let mut c = self.client.clone();
            let opts = WatchOptions::new().with_prefix().with_start_revision(rev);
            let mut stream = match c.watch(self.subnets_prefix(), Some(opts)).await {
                Ok(s) => s,
                Err(e) => {
                    disconnected(&tx, &mut backoff, self.err("watch", e).to_string()).await;
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            tracing::info!(
                                compacted = resp.compact_revision(),
                                wanted = rev,
                                "lease watch fell behind a compaction; re-listing"
                            );
                            next_rev = None;
                            break;
                        }
                        if resp.canceled() {
                            disconnected(
                                &tx,
                                &mut backoff,
                                format!("watch canceled: {}", resp.cancel_reason()),
                            )
                            .await;
                            break;
                        }
                        backoff = BACKOFF_MIN;
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            next_rev = Some(kv.mod_revision() + 1);
                            let update = match ev.event_type() {
                                EventType::Put => match self.parse_kv(kv) {
                                    Some(l) => WatchUpdate::Put(l),
                                    None => continue,
                                },
                                EventType::Delete => {
                                    let key = std::str::from_utf8(kv.key()).ok();
                                    match key
                                        .and_then(|k| k.strip_prefix(&self.subnets_prefix()))
                                        .and_then(SubnetKey::parse)
                                    {
                                        Some(k) => WatchUpdate::Delete(k),
                                        None => continue,
                                    }
                                }
                            };
                            if tx.send(update).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        disconnected(&tx, &mut backoff, "watch stream closed".into()).await;
                        break;
                    }
                    Err(e) => {
                        disconnected(&tx, &mut backoff, self.err("watch", e).to_string()).await;
                        break;
                    }
                }
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
/// Reports a broken watch and waits before the next attempt, longer each time.
async fn disconnected(tx: &mpsc::Sender<WatchUpdate>, backoff: &mut Duration, why: String) {
    let _ = tx.send(WatchUpdate::Disconnected(why)).await;
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

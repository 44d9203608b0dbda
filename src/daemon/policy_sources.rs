//! Where network policy objects come from, each feeding the engine (`policy`):
//!
//! - a directory of manifests (`--policy-dir`): every `*.yaml`, `*.yml` and `*.json` in it,
//!   re-read whenever a file in it changes (inotify, and a look every few seconds anyway);
//! - the Kubernetes API (`--network-policy`): Namespaces, Pods and NetworkPolicies, each
//!   listed and watched (`kubeapi::watch`);
//! - the CNI plugin's pod records (`--pod-records-dir`): this node's pods and their
//!   addresses, the moment the plugin has wired them.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Api, Client};
use tokio::sync::mpsc;

use ipnet::IpNet;

use super::policy::{Kind, Msg, PolicyEngine};
use crate::cni::records;
use crate::kernel::inotify::DirWatch;
use crate::kubeapi::watch::{self, Target, Update};
use crate::policy::manifest::{self, Object};
use crate::policy::model::Key;
use crate::policy::render::Options;

/// Starts network policy when a flag asks for it: the engine (with nothing isolated yet) and
/// its sources. Pods in this node's lease are the local ones.
pub async fn start(
    flags: &super::flags::Flags,
    cfg: &crate::config::NetworkConfig,
    own: &crate::lease::Lease,
) -> Result<Option<PolicyEngine>, String> {
    if flags.policy_dir.is_none() && !flags.network_policy {
        return Ok(None);
    }
    let opts = Options {
        bridge: flags.policy_bridge.clone(),
        ipv4: cfg.enable_ipv4,
        ipv6: cfg.enable_ipv6,
        log_group: flags.policy_log_group,
    };
    let local: Vec<IpNet> = [own.key.v4.map(IpNet::V4), own.key.v6.map(IpNet::V6)]
        .into_iter()
        .flatten()
        .collect();
    let mut sources = Vec::new();
    if let Some(d) = &flags.policy_dir {
        sources.push(format!("manifests in {}", d.display()));
    }
    if flags.network_policy {
        sources.push("the Kubernetes API".into());
    }
    sources.push(format!(
        "pod records in {}",
        flags.pod_records_dir.display()
    ));
    let (engine, tx) =
        tokio::task::spawn_blocking(move || PolicyEngine::start(opts, local, sources))
            .await
            .map_err(|e| format!("network policy start-up: {e}"))?
            .map_err(|e| format!("network policy: {e}"))?;
    let io = |what: &str, e: std::io::Error| format!("network policy: {what}: {e}");
    if let Some(d) = &flags.policy_dir {
        manifest_dir(d.clone(), tx.clone()).map_err(|e| io("watch the manifests", e))?;
    }
    warn_old_flag(flags);
    pod_records(flags.pod_records_dir.clone(), tx.clone())
        .map_err(|e| io("watch pod records", e))?;
    if flags.network_policy {
        let opts = crate::kubeapi::KubeOptions {
            api_url: flags.kube_api_url.clone(),
            kubeconfig: flags.kubeconfig_file.clone(),
            serviceaccount_dir: flags.kube_serviceaccount_dir.clone(),
        };
        let client = crate::kubeapi::client(&opts)
            .await
            .map_err(|e| format!("network policy: {e}"))?;
        kubernetes(client, tx);
    }
    tracing::info!("network policy enforced in nftables table inet podnet-policy");
    Ok(Some(engine))
}

/// How often a directory is looked at even without a change event.
const LOOK_AGAIN: Duration = Duration::from_secs(5);

/// What a directory's files are now (names, sizes, times): a change means read again.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| (e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    out.sort();
    out
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// What the directory's manifests hold: the objects, the errors (each naming its file), and
/// the objects named in a document that could not be read.
#[derive(Default)]
struct Read {
    objects: Vec<Object>,
    errors: Vec<String>,
    unreadable: Vec<(Kind, Key)>,
}

fn read_manifests(dir: &Path) -> Read {
    let mut r = Read::default();
    for (path, _, _) in fingerprint(dir)
        .into_iter()
        .filter(|(p, _, _)| is_manifest(p))
    {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let m = manifest::parse(&text);
                r.objects.extend(m.objects);
                for e in &m.errors {
                    r.errors.push(format!("{}: {e}", path.display()));
                    let id = e.object.as_ref();
                    if let Some((id, kind)) = id.and_then(|id| Some((id, Kind::of_api(&id.kind)?)))
                    {
                        r.unreadable.push((kind, Key::new(&id.namespace, &id.name)));
                    }
                }
            }
            Err(e) => r.errors.push(format!("{}: {e}", path.display())),
        }
    }
    r
}

const ALL_KINDS: [Kind; 4] = [Kind::Namespace, Kind::Pod, Kind::Node, Kind::NetworkPolicy];

/// Follows a manifest directory on its own thread.
pub fn manifest_dir(dir: PathBuf, tx: Sender<Msg>) -> std::io::Result<()> {
    let mut watch = DirWatch::new(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    std::thread::Builder::new()
        .name("policy-dir".into())
        .spawn(move || {
            let mut seen = None;
            loop {
                let now = fingerprint(&dir);
                if seen.as_ref() != Some(&now) {
                    let read = read_manifests(&dir);
                    let msg = Msg::Replace {
                        source: "manifests",
                        kinds: ALL_KINDS.to_vec(),
                        objects: read.objects,
                        errors: read.errors,
                        unreadable: read.unreadable,
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                    seen = Some(now);
                }
                watch.wait(LOOK_AGAIN);
            }
        })?;
    Ok(())
}

/// `--cni-data-dir` no longer says where the records are: a warning for whoever still passes it.
fn warn_old_flag(flags: &super::flags::Flags) {
    if let Some(d) = &flags.cni_data_dir {
        tracing::warn!(
            "--cni-data-dir={} is deprecated and ignored: pod records are read from --pod-records-dir ({}), where the plugin writes them (its podRecordsDir)",
            d.display(),
            flags.pod_records_dir.display()
        );
    }
}

/// Follows the CNI plugin's pod records on its own thread.
pub fn pod_records(dir: PathBuf, tx: Sender<Msg>) -> std::io::Result<()> {
    let mut watch = DirWatch::new(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    std::thread::Builder::new()
        .name("policy-records".into())
        .spawn(move || {
            let mut seen = None;
            loop {
                let now = records::read_all(&dir);
                if seen.as_ref() != Some(&now) {
                    let list = now.iter().map(|(_, r)| r.clone()).collect();
                    if tx.send(Msg::Records(list)).is_err() {
                        return;
                    }
                    seen = Some(now);
                }
                watch.wait(LOOK_AGAIN);
            }
        })?;
    Ok(())
}

/// Follows Namespaces, Pods and NetworkPolicies in the Kubernetes API (tokio tasks).
pub fn kubernetes(client: Client, tx: Sender<Msg>) {
    let ns: Api<Namespace> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let pols: Api<NetworkPolicy> = Api::all(client);
    follow(ns, "namespaces", Kind::Namespace, tx.clone(), |o| {
        Object::Namespace(Box::new(o))
    });
    follow(pods, "pods", Kind::Pod, tx.clone(), |o| {
        Object::Pod(Box::new(o))
    });
    follow(pols, "networkpolicies", Kind::NetworkPolicy, tx, |o| {
        Object::NetworkPolicy(Box::new(o))
    });
}

fn key_of(o: &Object) -> Key {
    let meta = match o {
        Object::Namespace(x) => &x.metadata,
        Object::Pod(x) => &x.metadata,
        Object::Node(x) => &x.metadata,
        Object::NetworkPolicy(x) => &x.metadata,
    };
    Key::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn follow<K>(
    api: Api<K>,
    resource: &'static str,
    kind: Kind,
    tx: Sender<Msg>,
    wrap: fn(K) -> Object,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (utx, mut urx) = mpsc::channel::<Update<Object>>(1024);
    let target = Target {
        api,
        resource,
        label_selector: None,
        field_selector: None,
    };
    tokio::spawn(watch::list_watch(target, utx, wrap));
    tokio::spawn(async move {
        let mut down = false;
        while let Some(u) = urx.recv().await {
            let msg = match u {
                Update::Snapshot(objects) => Msg::Replace {
                    source: "kubernetes",
                    kinds: vec![kind],
                    objects,
                    errors: Vec::new(),
                    unreadable: Vec::new(),
                },
                Update::Applied(o) => Msg::Upsert("kubernetes", o),
                Update::Deleted(o) => Msg::Remove("kubernetes", kind, key_of(&o)),
                Update::Disconnected(e) => {
                    if !down {
                        tracing::warn!("network policy: {e}; enforcing what is known meanwhile");
                    }
                    down = true;
                    continue;
                }
                Update::Connected => {
                    down = false;
                    continue;
                }
            };
            down = false;
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
}

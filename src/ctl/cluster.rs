//! `podnetctl config ...` and `podnetctl leases`: the network config and the lease table in etcd.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use serde::Serialize;

use crate::config::NetworkConfig;
use crate::kubeapi::KubeOptions;
use crate::lease::Lease;
use crate::lease::etcd::{EtcdOptions, EtcdStore};
use crate::lease::kube::Annotations;

/// How to reach etcd (same flags and defaults as podnetd).
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    #[arg(
        long,
        value_delimiter = ',',
        env = "PODNET_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    #[arg(long, env = "PODNET_ETCD_PREFIX", default_value = crate::lease::etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    #[arg(long, env = "PODNET_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    #[arg(long, env = "PODNET_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    #[arg(long, env = "PODNET_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    #[arg(long, env = "PODNET_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    #[arg(long, env = "PODNET_ETCD_PASSWORD")]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    pub fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a network config (file or '-' for stdin) and write it to etcd.
    Set {
        file: String,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Print the network config stored in etcd.
    Get {
        /// Print it with every default filled in.
        #[arg(long)]
        effective: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Validate a network config without writing it.
    Check { file: String },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("read {file}: {e}"))
    }
}

pub fn config(cmd: ConfigCmd) -> anyhow::Result<i32> {
    match cmd {
        ConfigCmd::Check { file } => {
            let text = read_input(&file)?;
            let cfg = NetworkConfig::parse(&text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            println!("{}", serde_json::to_string_pretty(&cfg.to_json())?);
            Ok(0)
        }
        ConfigCmd::Set { file, etcd } => {
            let text = read_input(&file)?;
            // Never store a config podnetd would refuse.
            NetworkConfig::parse(&text)
                .map_err(|e| anyhow::anyhow!("{file}: {e}; nothing written"))?;
            runtime()?.block_on(async {
                let store = EtcdStore::connect(&etcd.options()).await?;
                store.put_config(text.trim()).await?;
                eprintln!("wrote {}", store.config_key());
                Ok::<_, anyhow::Error>(0)
            })
        }
        ConfigCmd::Get { effective, etcd } => runtime()?.block_on(async {
            let store = EtcdStore::connect(&etcd.options()).await?;
            match store.get_config().await? {
                None => anyhow::bail!(
                    "{} does not exist; create it with `podnetctl config set`",
                    store.config_key()
                ),
                Some(text) if effective => {
                    let cfg = NetworkConfig::parse(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", store.config_key()))?;
                    println!("{}", serde_json::to_string_pretty(&cfg.to_json())?);
                    Ok(0)
                }
                Some(text) => {
                    println!("{text}");
                    Ok(0)
                }
            }
        }),
    }
}

#[derive(Debug, Args)]
pub struct LeasesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// How to reach the Kubernetes API (podnetd's flags) when leases live there.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Read the leases from the Nodes in the Kubernetes API instead of etcd.
    #[arg(long)]
    pub kube_subnet_mgr: bool,
    #[arg(long)]
    pub kube_api_url: Option<String>,
    /// kubeconfig file (default: in-cluster configuration).
    #[arg(long)]
    pub kubeconfig_file: Option<PathBuf>,
    #[arg(long, default_value = crate::lease::kube::DEFAULT_PREFIX)]
    pub kube_annotation_prefix: String,
}

/// One lease as `podnetctl leases --json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LeaseRow {
    /// The Node it comes from (Kubernetes mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    subnet: Option<String>,
    ipv6_subnet: Option<String>,
    #[serde(rename = "publicIP")]
    public_ip: String,
    #[serde(rename = "publicIPv6")]
    public_ipv6: Option<String>,
    backend: String,
    reserved: bool,
    /// `None`: expired, or a lease that does not expire.
    seconds_left: Option<i64>,
    /// Why the node's annotations make no lease (Kubernetes mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<String>,
}

impl LeaseRow {
    fn of(l: &Lease, seconds_left: Option<i64>) -> LeaseRow {
        LeaseRow {
            node: None,
            subnet: l.key.v4.map(|n| n.to_string()),
            ipv6_subnet: l.key.v6.map(|n| n.to_string()),
            public_ip: l.attrs.public_ip.to_string(),
            public_ipv6: l.attrs.public_ipv6.map(|a| a.to_string()),
            backend: l.attrs.backend_type.clone(),
            reserved: l.is_reservation(),
            seconds_left,
            rejected: None,
        }
    }

    fn time_left(&self, node: bool) -> String {
        match (self.reserved, node, self.seconds_left) {
            (true, _, _) => "never".into(),
            (_, true, _) => "-".into(),
            (_, _, Some(s)) => human(Duration::from_secs(s as u64)),
            (_, _, None) => "expired".into(),
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The leases in etcd, with the time each has left.
async fn etcd_rows(etcd: &EtcdArgs) -> anyhow::Result<Vec<LeaseRow>> {
    let store = EtcdStore::connect(&etcd.options()).await?;
    let (mut leases, _) = store.list().await?;
    leases.sort_by_key(|l| l.key);
    let mut rows = Vec::new();
    for l in &leases {
        let left = match l.keepalive.etcd_id() {
            None => None,
            Some(id) => store.lease_ttl(id).await?,
        };
        rows.push(LeaseRow::of(l, left));
    }
    Ok(rows)
}

/// The leases the Nodes carry, and the nodes whose annotations make none.
async fn kube_rows(k: &KubeArgs) -> anyhow::Result<Vec<LeaseRow>> {
    let opts = KubeOptions {
        api_url: k.kube_api_url.clone(),
        kubeconfig: k.kubeconfig_file.clone(),
        serviceaccount_dir: crate::kubeapi::SERVICEACCOUNT_DIR.into(),
    };
    let client = crate::kubeapi::client(&opts).await?;
    let ann = Annotations::new(&k.kube_annotation_prefix).map_err(anyhow::Error::msg)?;
    let mut rows = Vec::new();
    for (name, lease) in crate::lease::kube::list_leases(client, &ann).await? {
        let row = match lease {
            Ok(l) => LeaseRow::of(&l, None),
            Err(why) => LeaseRow {
                node: None,
                subnet: None,
                ipv6_subnet: None,
                public_ip: String::new(),
                public_ipv6: None,
                backend: String::new(),
                reserved: false,
                seconds_left: None,
                rejected: Some(why),
            },
        };
        rows.push(LeaseRow {
            node: Some(name),
            ..row
        });
    }
    Ok(rows)
}

fn print_table(rows: &[LeaseRow], kube: bool) {
    let first = if kube { "NODE" } else { "" };
    println!(
        "{first:<w$}{:<36} {:<16} {:<8} {:<10} RESERVED",
        "SUBNET",
        "PUBLIC IP",
        "BACKEND",
        "TIME LEFT",
        w = if kube { 16 } else { 0 }
    );
    for r in rows {
        let node = r
            .node
            .as_deref()
            .map(|n| format!("{n:<15} "))
            .unwrap_or_default();
        if let Some(why) = &r.rejected {
            println!("{node}rejected: {why}");
            continue;
        }
        let subnet = [r.subnet.clone(), r.ipv6_subnet.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(",");
        let backend = if r.backend.is_empty() {
            "-"
        } else {
            &r.backend
        };
        println!(
            "{node}{:<36} {:<16} {:<8} {:<10} {}",
            subnet,
            r.public_ip,
            backend,
            r.time_left(kube),
            if r.reserved { "yes" } else { "no" }
        );
    }
}

pub fn leases(args: LeasesArgs) -> anyhow::Result<i32> {
    runtime()?.block_on(async {
        let kube = args.kube.kube_subnet_mgr;
        let rows = if kube {
            kube_rows(&args.kube).await?
        } else {
            etcd_rows(&args.etcd).await?
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print_table(&rows, kube);
        }
        Ok(0)
    })
}

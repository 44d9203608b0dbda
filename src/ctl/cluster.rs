//! `podnetctl config ...` and `podnetctl leases`: the network config and the lease table in etcd.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::NetworkConfig;
use crate::lease::etcd::{EtcdOptions, EtcdStore};

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
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn leases(args: LeasesArgs) -> anyhow::Result<i32> {
    runtime()?.block_on(async {
        let store = EtcdStore::connect(&args.etcd.options()).await?;
        let (mut leases, _) = store.list().await?;
        leases.sort_by_key(|l| l.key);
        let mut rows = Vec::new();
        for l in &leases {
            let left = match l.keepalive.etcd_id() {
                None => None,
                Some(id) => store.lease_ttl(id).await?,
            };
            rows.push((l, left));
        }
        if args.json {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(l, left)| {
                    serde_json::json!({
                        "subnet": l.key.v4.map(|n| n.to_string()),
                        "ipv6Subnet": l.key.v6.map(|n| n.to_string()),
                        "publicIP": l.attrs.public_ip.to_string(),
                        "publicIPv6": l.attrs.public_ipv6.map(|a| a.to_string()),
                        "backend": l.attrs.backend_type,
                        "reserved": l.is_reservation(),
                        "secondsLeft": left,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(0);
        }
        println!(
            "{:<36} {:<16} {:<8} {:<10} RESERVED",
            "SUBNET", "PUBLIC IP", "BACKEND", "TIME LEFT"
        );
        for (l, left) in rows {
            let subnet = match (l.key.v4, l.key.v6) {
                (Some(a), Some(b)) => format!("{a},{b}"),
                (Some(a), None) => a.to_string(),
                (None, Some(b)) => b.to_string(),
                (None, None) => String::new(),
            };
            let time_left = match (l.is_reservation(), left) {
                (true, _) => "never".to_string(),
                (false, Some(s)) => human(Duration::from_secs(s as u64)),
                (false, None) => "expired".to_string(),
            };
            println!(
                "{:<36} {:<16} {:<8} {:<10} {}",
                subnet,
                l.attrs.public_ip,
                if l.attrs.backend_type.is_empty() {
                    "-"
                } else {
                    &l.attrs.backend_type
                },
                time_left,
                if l.is_reservation() { "yes" } else { "no" }
            );
        }
        Ok(0)
    })
}

//! Node-level operator commands: removing podnet's data path, and installing the CNI plugin
//! and its config (what the DaemonSet's init container runs).

use std::path::{Path, PathBuf};

use clap::Args;

use crate::kernel::netlink::Netlink;
use crate::kernel::nft;
use crate::owned;
use crate::util::files::copy_atomic;

#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// Also remove the pods' masquerade table (only when no pods are left on the node).
    #[arg(long)]
    pub pod_masquerade: bool,
}

/// Removes what podnetd put in the kernel: its nftables table, its routes, its devices (see
/// `owned`). Pods, the bridge, the lease and subnet.env are left alone; podnetd should be
/// stopped first, or it puts everything back.
pub fn teardown(args: TeardownArgs) -> anyhow::Result<i32> {
    let mut removed = Vec::new();
    let mut tables = vec![owned::NFT_TABLE];
    if args.pod_masquerade {
        tables.push(owned::NFT_POD_MASQ_TABLE);
    }
    for table in tables {
        if nft::delete_table(owned::NFT_FAMILY, table)? {
            removed.push(format!("nftables table {} {table}", owned::NFT_FAMILY));
        }
    }
    let mut nl = Netlink::open()?;
    for r in nl
        .routes()?
        .into_iter()
        .filter(|r| r.protocol == owned::RTPROT_PODNET)
    {
        nl.del_route(&r)?;
        removed.push(format!("route {}", r.dst));
    }
    for l in nl
        .links()?
        .into_iter()
        .filter(|l| owned::is_podnet_device(&l.name, l.kind.as_deref()))
    {
        nl.del_link(l.index)?;
        removed.push(format!("device {}", l.name));
    }
    if removed.is_empty() {
        println!("nothing of podnet's was left on this node");
    }
    for r in removed {
        println!("removed {r}");
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// The plugin binary to install.
    #[arg(long)]
    pub plugin: PathBuf,
    /// Where runtimes look for plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The name to install it under (kube-flannel's conflist uses "flannel").
    #[arg(long, default_value = "flannel")]
    pub name: String,
    /// The network config list to install.
    #[arg(long)]
    pub conf: PathBuf,
    /// Where runtimes read network configs.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    #[arg(long, default_value = "10-flannel.conflist")]
    pub conf_name: String,
}

/// Copies `src` to `dir/name` atomically, so a runtime never execs or reads a half-written file.
fn install(src: &Path, dir: &Path, name: &str, mode: u32) -> anyhow::Result<PathBuf> {
    let dst = dir.join(name);
    copy_atomic(src, &dst, mode)
        .map_err(|e| anyhow::anyhow!("install {} as {}: {e}", src.display(), dst.display()))?;
    Ok(dst)
}

/// What a runtime needs of a network config list before it will use it.
#[derive(serde::Deserialize)]
struct ConfList {
    name: Option<String>,
    #[serde(default)]
    plugins: Vec<serde_json::Value>,
}

pub fn install_cni(args: InstallCniArgs) -> anyhow::Result<i32> {
    // Refuse a config the runtime would reject, before replacing a working one.
    let text = std::fs::read_to_string(&args.conf)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", args.conf.display()))?;
    let list: ConfList = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a network config list: {e}", args.conf.display()))?;
    if list.plugins.is_empty() || list.name.is_none() {
        anyhow::bail!(
            "{}: a network config list needs \"name\" and a non-empty \"plugins\" list",
            args.conf.display()
        );
    }
    let p = install(&args.plugin, &args.bin_dir, &args.name, 0o755)?;
    let c = install(&args.conf, &args.conf_dir, &args.conf_name, 0o644)?;
    println!("installed {} and {}", p.display(), c.display());
    Ok(0)
}

//! Node-level operator commands: removing podnet's data path, and installing the CNI plugin
//! and its config (what the DaemonSet's init container runs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::backend::RTPROT_PODNET;
use crate::firewall;
use crate::kernel::netlink::Netlink;
use crate::kernel::nft;

#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// Also remove the pods' masquerade table (only when no pods are left on the node).
    #[arg(long)]
    pub pod_masquerade: bool,
}

/// Removes what podnetd put in the kernel: its nftables table, its routes, its VXLAN devices.
/// Pods, the bridge, the lease and subnet.env are left alone; podnetd should be stopped first,
/// or it puts everything back.
pub fn teardown(args: TeardownArgs) -> anyhow::Result<i32> {
    let mut removed = Vec::new();
    if nft::delete_table(firewall::FAMILY, firewall::TABLE)? {
        removed.push(format!(
            "nftables table {} {}",
            firewall::FAMILY,
            firewall::TABLE
        ));
    }
    if args.pod_masquerade && nft::delete_table(firewall::FAMILY, firewall::POD_MASQ_TABLE)? {
        removed.push(format!(
            "nftables table {} {}",
            firewall::FAMILY,
            firewall::POD_MASQ_TABLE
        ));
    }
    let mut nl = Netlink::open()?;
    for r in nl
        .routes()?
        .into_iter()
        .filter(|r| r.protocol == RTPROT_PODNET)
    {
        nl.del_route(&r)?;
        removed.push(format!("route {}", r.dst));
    }
    for l in nl.links()?.into_iter().filter(|l| {
        (l.kind.as_deref() == Some("vxlan") && l.name.starts_with("flannel."))
            || (l.kind.as_deref() == Some("tun") && l.name == crate::backend::udp::DEVICE)
    }) {
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

/// Copies `src` to `dir/name` through a temporary file and a rename, so a runtime never execs
/// or reads a half-written file.
fn install(src: &Path, dir: &Path, name: &str, mode: u32) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
    let dst = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::copy(src, &tmp)
        .map_err(|e| anyhow::anyhow!("copy {} to {}: {e}", src.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &dst).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("rename to {}: {e}", dst.display())
    })?;
    Ok(dst)
}

pub fn install_cni(args: InstallCniArgs) -> anyhow::Result<i32> {
    // Refuse a config the runtime would reject, before replacing a working one.
    let text = std::fs::read_to_string(&args.conf)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", args.conf.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", args.conf.display()))?;
    if v["plugins"].as_array().is_none_or(|p| p.is_empty()) || v["name"].as_str().is_none() {
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

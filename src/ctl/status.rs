//! `podnetctl status`: one node's lease, backend, peers and how each is reached, and any drift
//! between what should be in the kernel and what is. Read from the node agent's `/status` on its
//! root-only local socket (the TCP port, which pods can reach, does not serve it).

use std::path::PathBuf;

use clap::Args;

use crate::httpget;
use crate::status::{ContestedInfo, DEFAULT_SOCKET, PathKind, Status};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The local agent's socket (podnetd --status-socket).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the raw status document.
    #[arg(long)]
    pub json: bool,
}

/// Fetches the status document from the agent's local socket.
pub fn fetch_local(socket: &std::path::Path) -> anyhow::Result<Status> {
    let (code, body) = httpget::unix(socket, "/status").map_err(|e| {
        anyhow::anyhow!(
            "cannot reach podnetd at {}: {e} (is it running on this node?)",
            socket.display()
        )
    })?;
    parse(code, &body)
}

fn parse(code: u16, body: &str) -> anyhow::Result<Status> {
    if code != 200 {
        anyhow::bail!("podnetd answered {code}: {body}");
    }
    Status::from_json(body).map_err(anyhow::Error::msg)
}

fn s<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

fn duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// The human rendering of a status document.
pub fn render(v: &Status) -> String {
    let mut out = String::new();
    let state = if v.ready {
        "ready".to_string()
    } else {
        format!("not ready ({})", v.phase)
    };
    out += &format!(
        "node      {} on {}  {state}\n",
        s(&v.node.public_ip),
        s(&v.node.iface)
    );
    out += &render_lease(v);
    let engine = v
        .node
        .engine
        .as_ref()
        .map(|e| format!(" ({e} engine)"))
        .unwrap_or_default();
    out += &format!(
        "backend   {}{engine}, pod MTU {}\n",
        s(&v.node.backend),
        s(&v.node.mtu)
    );
    out += &render_peers(v);
    for r in &v.rejected_leases {
        out += &format!("rejected  {r}\n");
    }
    out += &render_drift(v);
    out += &render_repairs(v);
    if let Some(fw) = &v.firewall {
        if fw.foreign_masquerade.is_empty() {
            out += &format!("firewall  ok (restored {} times)\n", fw.restores);
        } else {
            out += "firewall  FOREIGN MASQUERADE rewrites pod-to-pod traffic:\n";
            for f in &fw.foreign_masquerade {
                out += &format!("  {f}\n");
            }
        }
        out += &render_contested(&fw.contested);
    }
    if let Some(p) = &v.policy {
        out += &format!(
            "policy    {} policies, {} of {} local pods isolated, {} applied ({} failed), from {}\n",
            p.policies,
            p.isolated_pods,
            p.local_pods,
            p.applies,
            p.failures,
            p.sources.join(", ")
        );
        for e in &p.errors {
            out += &format!("  refused   {e}\n");
        }
    }
    if let Some(e) = &v.last_store_error {
        out += &format!("{:<9} last error: {e}\n", v.lease_store);
    }
    out
}

fn render_lease(v: &Status) -> String {
    let Some(lease) = &v.lease else {
        return "lease     none yet\n".into();
    };
    let left = if lease.reservation {
        "reserved, never expires".to_string()
    } else {
        match lease.seconds_left {
            Some(x) => format!("{} left", duration(x)),
            None if v.lease_store == "kubernetes" => "the node's podCIDR, never expires".into(),
            None => "time left unknown".into(),
        }
    };
    let v6 = lease
        .ipv6_subnet
        .as_ref()
        .map(|n| format!(", {n}"))
        .unwrap_or_default();
    format!("lease     {}{v6} ({left})\n", s(&lease.subnet))
}

fn render_peers(v: &Status) -> String {
    let count = |p: PathKind| v.peers.iter().filter(|x| x.path == p).count();
    let mut out = format!(
        "peers     {} ({} direct, {} tunnel, {} skipped)\n",
        v.peers.len(),
        count(PathKind::Direct),
        count(PathKind::Tunnel),
        count(PathKind::Skipped)
    );
    for p in &v.peers {
        let reason = p
            .reason
            .as_ref()
            .map(|r| format!("  {r}"))
            .unwrap_or_default();
        out += &format!(
            "  {:<20} {:<16} {}{reason}\n",
            s(&p.subnet),
            p.public_ip,
            p.path.label()
        );
        if let Some(n) = &p.ipv6_subnet {
            let ip6 = p.public_ipv6.as_deref().unwrap_or("-");
            out += &format!("  {n:<20} {ip6}\n");
        }
        if let Some(wg) = &p.wireguard {
            out += &render_wireguard(wg);
        }
    }
    out
}

fn bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n} B"),
        10_000..=9_999_999 => format!("{:.1} kB", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}

fn render_wireguard(wg: &crate::status::WireguardPeer) -> String {
    let last = match wg.last_handshake_seconds {
        Some(x) => format!("handshake {} ago", duration(x)),
        None => "no handshake yet".into(),
    };
    let mut out = format!(
        "    wireguard {} key {}  {last} ({} in all, {} failed)  in {}  out {}\n",
        wg.endpoint,
        wg.public_key,
        wg.handshakes,
        wg.handshake_failures,
        bytes(wg.rx_bytes),
        bytes(wg.tx_bytes)
    );
    if let Some(p) = &wg.problem {
        out += &format!("    PROBLEM   {p}\n");
    }
    out
}

fn render_drift(v: &Status) -> String {
    let Some(drift) = &v.drift else {
        return String::new();
    };
    if let Some(e) = &drift.error {
        return format!("drift     cannot tell: {e}\n");
    }
    if drift.missing.is_empty() && drift.unexpected.is_empty() {
        return "drift     none: the kernel matches\n".into();
    }
    let mut out = format!(
        "drift     {} missing, {} unexpected (podnetd is repairing it)\n",
        drift.missing.len(),
        drift.unexpected.len()
    );
    for m in &drift.missing {
        out += &format!("  missing     {m}\n");
    }
    for u in &drift.unexpected {
        out += &format!("  unexpected  {u}\n");
    }
    out
}

fn render_repairs(v: &Status) -> String {
    let Some(d) = &v.dataplane else {
        return String::new();
    };
    let how = if d.kernel_events {
        "as the kernel reported them"
    } else {
        "by periodic checks only (--kernel-events=false)"
    };
    let mut out = format!(
        "repairs   {} put back {how}; {} full {}, {} quiet {}\n",
        count(d.repairs, "object"),
        d.full_passes,
        plural(d.full_passes, "pass", "passes"),
        d.verifications,
        plural(d.verifications, "check", "checks"),
    );
    out += &render_contested(&d.contested);
    out
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn render_contested(list: &[ContestedInfo]) -> String {
    let mut out = String::new();
    for c in list {
        let next = match c.next_repair_seconds {
            Some(s) => format!(", next repair in {s:.1}s"),
            None => String::new(),
        };
        out += &format!(
            "contested {}: undone {} times in {}{next} (another agent manages it too)\n",
            c.object,
            c.undone,
            duration(c.for_seconds)
        );
    }
    out
}

pub fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let v = fetch_local(&args.socket)?;
    if args.json {
        let value: serde_json::Value = serde_json::from_str(&v.to_json())?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(0)
}

//! `podnetctl status`: one node's lease, backend, peers and how each is reached, and any drift
//! between what should be in the kernel and what is. Read from the node agent's `/status`.

use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use crate::httpget;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The local agent's socket (podnetd --status-socket).
    #[arg(long, default_value = "/run/podnet/podnetd.sock")]
    pub socket: PathBuf,
    /// Ask another node's agent instead, at HOST:PORT (its --healthz-port).
    #[arg(long)]
    pub node: Option<String>,
    /// Print the raw status document.
    #[arg(long)]
    pub json: bool,
}

/// Fetches the status document.
pub fn fetch(args: &StatusArgs) -> anyhow::Result<Value> {
    let (code, body) = match &args.node {
        Some(node) => {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(node)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "--node {node}: {e} (expected HOST:PORT, the agent's --healthz-port)"
                    )
                })?
                .next()
                .ok_or_else(|| anyhow::anyhow!("--node {node}: no address"))?;
            httpget::tcp(addr, "/status")
                .map_err(|e| anyhow::anyhow!("cannot reach podnetd at {addr}: {e}"))?
        }
        None => httpget::unix(&args.socket, "/status").map_err(|e| {
            anyhow::anyhow!(
                "cannot reach podnetd at {}: {e} (is it running on this node?)",
                args.socket.display()
            )
        })?,
    };
    if code != 200 {
        anyhow::bail!("podnetd answered {code}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// The human rendering of a status document.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let node = &v["node"];
    let state = if v["ready"] == true {
        "ready".to_string()
    } else {
        format!("not ready ({})", s(&v["phase"]))
    };
    out += &format!(
        "node      {} on {}  {state}\n",
        s(&node["publicIP"]),
        s(&node["iface"])
    );
    let lease = &v["lease"];
    if lease.is_null() {
        out += "lease     none yet\n";
    } else {
        let left = if lease["reservation"] == true {
            "reserved, never expires".to_string()
        } else {
            lease["secondsLeft"]
                .as_u64()
                .map(|x| format!("{} left", duration(x)))
                .unwrap_or_else(|| "time left unknown".into())
        };
        out += &format!("lease     {} ({left})\n", s(&lease["subnet"]));
    }
    out += &format!(
        "backend   {}, pod MTU {}\n",
        s(&node["backend"]),
        s(&node["mtu"])
    );
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let count = |p: &str| peers.iter().filter(|x| x["path"] == p).count();
    out += &format!(
        "peers     {} ({} direct, {} tunnel, {} skipped)\n",
        peers.len(),
        count("direct"),
        count("tunnel"),
        count("skipped")
    );
    for p in &peers {
        let reason = p["reason"]
            .as_str()
            .map(|r| format!("  {r}"))
            .unwrap_or_default();
        out += &format!(
            "  {:<20} {:<16} {}{reason}\n",
            s(&p["subnet"]),
            s(&p["publicIP"]),
            s(&p["path"])
        );
    }
    let drift = &v["drift"];
    let missing = drift["missing"].as_array().cloned().unwrap_or_default();
    let unexpected = drift["unexpected"].as_array().cloned().unwrap_or_default();
    if let Some(e) = drift["error"].as_str() {
        out += &format!("drift     cannot tell: {e}\n");
    } else if missing.is_empty() && unexpected.is_empty() {
        out += "drift     none: the kernel matches\n";
    } else {
        out += &format!(
            "drift     {} missing, {} unexpected (the next resync repairs it)\n",
            missing.len(),
            unexpected.len()
        );
        for m in &missing {
            out += &format!("  missing     {}\n", s(m));
        }
        for u in &unexpected {
            out += &format!("  unexpected  {}\n", s(u));
        }
    }
    let fw = &v["firewall"];
    if !fw.is_null() {
        let foreign = fw["foreignMasquerade"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if foreign.is_empty() {
            out += &format!("firewall  ok (restored {} times)\n", s(&fw["restores"]));
        } else {
            out += "firewall  FOREIGN MASQUERADE rewrites pod-to-pod traffic:\n";
            for f in foreign {
                out += &format!("  {}\n", s(&f));
            }
        }
    }
    if let Some(e) = v["lastEtcdError"].as_str() {
        out += &format!("etcd      last error: {e}\n");
    }
    out
}

pub fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let v = fetch(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(0)
}

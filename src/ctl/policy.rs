//! `podnetctl policy NAMESPACE/POD`: which network policies isolate a pod and what they allow,
//! as the node agent's policy engine sees it.

use std::path::PathBuf;

use clap::Args;

use crate::httpget;
use crate::status::{DEFAULT_SOCKET, DirectionExplain, PolicyExplain};

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The pod, as NAMESPACE/NAME.
    pub pod: String,
    /// The local agent's socket (podnetd --status-socket).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn direction(out: &mut String, name: &str, d: &DirectionExplain) {
    if d.isolated_by.is_empty() {
        out.push_str(&format!("{name:<8} not isolated: everything is allowed\n"));
        return;
    }
    out.push_str(&format!(
        "{name:<8} isolated by {}\n",
        d.isolated_by.join(", ")
    ));
    if d.allows.is_empty() {
        out.push_str("         allows nothing\n");
    }
    for a in &d.allows {
        out.push_str(&format!("         allows {a}\n"));
    }
}

/// The human rendering.
pub fn render(e: &PolicyExplain) -> String {
    if !e.known {
        return format!("{}: no such pod in the policy model\n", e.pod);
    }
    let place = if e.local {
        "on this node"
    } else {
        "on another node"
    };
    let mut out = format!("pod      {} ({}) {place}\n", e.pod, e.ips.join(", "));
    direction(&mut out, "ingress", &e.ingress);
    direction(&mut out, "egress", &e.egress);
    out
}

pub fn run(args: PolicyArgs) -> anyhow::Result<i32> {
    if args
        .pod
        .split_once('/')
        .is_none_or(|(n, p)| n.is_empty() || p.is_empty())
    {
        anyhow::bail!("{:?}: name the pod as NAMESPACE/NAME", args.pod);
    }
    let path = format!("/policy?pod={}", args.pod);
    let (code, body) = httpget::unix(&args.socket, &path).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach podnetd at {}: {e} (is it running on this node?)",
            args.socket.display()
        )
    })?;
    if code != 200 {
        anyhow::bail!("podnetd answered {code}: {}", body.trim());
    }
    let e: PolicyExplain = serde_json::from_str(&body)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", render(&e));
    }
    Ok(if e.known { 0 } else { 1 })
}

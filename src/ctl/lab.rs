//! `podnetctl lab ...`: a cluster of network namespaces on this machine.

use clap::{Args, Subcommand};

use crate::lab::{self, Lab, LabError, LabSpec};

#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Create a lab: a switch, N nodes on 1 or 2 L2 segments, a router, and a real etcd.
    Up(UpArgs),
    /// Remove a lab and everything it started.
    Down {
        /// Lab name.
        name: String,
    },
    /// Show a lab's nodes, addresses, etcd endpoints, processes and pods.
    Status {
        name: String,
        /// Print the lab's state file as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List labs on this machine.
    List,
    /// Run a command in a node (or etcdN, router, NODE/POD) and wait for it.
    Exec {
        name: String,
        /// node1..nodeN, etcd1..etcdN, router, or NODE/POD.
        target: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Start a background process in a node; `lab down` stops it.
    Spawn {
        name: String,
        target: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop a process the lab started.
    Kill { name: String, pid: u32 },
    /// Create or remove an empty pod network namespace on a node.
    #[command(subcommand)]
    Pod(PodCmd),
    /// Put Kubernetes manifests (Namespaces, Pods, NetworkPolicies; YAML or JSON) where the
    /// lab's podnetd reads network policy (the demo's agents do), or remove them.
    Policy {
        name: String,
        files: Vec<std::path::PathBuf>,
        /// Remove every manifest first.
        #[arg(long)]
        clear: bool,
    },
    /// Remove labs whose owning process died and lab namespaces no lab claims.
    Sweep,
    /// A whole podnet cluster: lab, etcd, podnetd on every node, two pods per node, and a
    /// reachability matrix.
    Demo(super::demo::DemoArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Lab name (a-z, 0-9, '-').
    pub name: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// L2 segments (2: the halves of the nodes reach each other only through the router).
    #[arg(long, default_value_t = 1)]
    pub segments: usize,
    /// etcd members (1 or 3).
    #[arg(long, default_value_t = 1)]
    pub etcd_members: usize,
    /// IPv6 underlay addresses from 2001:2::/48 beside the IPv4 ones (dual-stack clusters).
    #[arg(long)]
    pub ipv6: bool,
}

#[derive(Debug, Subcommand)]
pub enum PodCmd {
    /// Create an empty pod namespace.
    Add {
        name: String,
        node: String,
        pod: String,
    },
    /// Remove a pod namespace.
    Del {
        name: String,
        node: String,
        pod: String,
    },
}

pub fn run(cmd: LabCmd) -> Result<i32, LabError> {
    match cmd {
        LabCmd::Up(a) => up(a),
        LabCmd::Down { name } => {
            let lab = Lab::open(&name)?;
            lab.down()?;
            eprintln!("lab {name} removed");
            Ok(0)
        }
        LabCmd::Status { name, json } => {
            let lab = Lab::open(&name)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(lab.state()).expect("state serializes")
                );
            } else {
                print_status(&lab);
            }
            Ok(0)
        }
        LabCmd::List => list(),
        LabCmd::Exec { name, target, cmd } => {
            let lab = Lab::open(&name)?;
            let status = lab
                .command(&target, &cmd)?
                .status()
                .map_err(|e| LabError::io(format!("run {} on {target}", cmd[0]), e))?;
            Ok(status.code().unwrap_or(128 + 9))
        }
        LabCmd::Spawn { name, target, cmd } => {
            let mut lab = Lab::open(&name)?;
            let rec = lab.spawn(&target, &cmd, &[])?;
            println!("{}", rec.id.pid);
            eprintln!(
                "started {} on {target} as process {}; log: {}",
                cmd[0],
                rec.id.pid,
                rec.log.display()
            );
            Ok(0)
        }
        LabCmd::Kill { name, pid } => {
            Lab::open(&name)?.stop(pid)?;
            Ok(0)
        }
        LabCmd::Pod(PodCmd::Add { name, node, pod }) => {
            let ns = Lab::open(&name)?.pod_add(&node, &pod)?;
            println!("/run/netns/{ns}");
            Ok(0)
        }
        LabCmd::Pod(PodCmd::Del { name, node, pod }) => {
            Lab::open(&name)?.pod_del(&node, &pod)?;
            Ok(0)
        }
        LabCmd::Demo(_) => unreachable!("dispatched by ctl::main"),
        LabCmd::Policy { name, files, clear } => policy(&name, files, clear),
        LabCmd::Sweep => {
            for r in lab::sweep()? {
                println!("removed {r}");
            }
            Ok(0)
        }
    }
}

fn up(a: UpArgs) -> Result<i32, LabError> {
    let spec = LabSpec {
        name: a.name.clone(),
        nodes: a.nodes,
        segments: a.segments,
        etcd_members: a.etcd_members,
        ipv6: a.ipv6,
    };
    eprintln!(
        "creating lab {} ({} nodes, {} segment(s), {} etcd member(s))...",
        spec.name, spec.nodes, spec.segments, spec.etcd_members
    );
    let lab = Lab::up(&spec)?;
    print_status(&lab);
    lab.persist()?;
    eprintln!(
        "\nlab {0} is up. Try: podnetctl lab exec {0} node1 -- ping -c1 {1}\nRemove it with: podnetctl lab down {0}",
        a.name,
        Lab::open(&a.name)?
            .plan()
            .nodes
            .last()
            .map(|n| n.ip().to_string())
            .unwrap_or_default()
    );
    Ok(0)
}

fn list() -> Result<i32, LabError> {
    for name in lab::state::list()? {
        match lab::state::load(&name) {
            Ok(Some(st)) => {
                let kind = match st.owner {
                    None => "persistent".to_string(),
                    Some(o) if o.alive() => format!("owned by process {}", o.pid),
                    Some(o) => format!(
                        "orphaned (process {} is gone; `lab sweep` removes it)",
                        o.pid
                    ),
                };
                println!("{name}\t{} nodes\t{kind}", st.plan.nodes.len());
            }
            Ok(None) => {}
            Err(e) => println!("{name}\tunreadable: {e}"),
        }
    }
    Ok(0)
}

/// Installs manifests in the lab's policy directory (after emptying it with `clear`).
fn policy(name: &str, files: Vec<std::path::PathBuf>, clear: bool) -> Result<i32, LabError> {
    let lab = Lab::open(name)?;
    let dir = lab.policy_dir()?;
    if clear {
        for e in std::fs::read_dir(&dir).map_err(|e| LabError::io("read the policy dir", e))? {
            let p = e
                .map_err(|e| LabError::io("read the policy dir", e))?
                .path();
            std::fs::remove_file(&p)
                .map_err(|e| LabError::io(format!("remove {}", p.display()), e))?;
        }
    }
    for f in files {
        install_manifest(&dir, &f)?;
    }
    Ok(0)
}

/// Copies one manifest file into the policy directory, refusing one that does not read.
fn install_manifest(dir: &std::path::Path, file: &std::path::Path) -> Result<(), LabError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| LabError::io(format!("read {}", file.display()), e))?;
    let m = crate::policy::manifest::parse(&text);
    if let Some(e) = m.errors.first() {
        return Err(LabError::Invalid(format!(
            "{}: {e}; nothing copied",
            file.display()
        )));
    }
    let name = file
        .file_name()
        .ok_or_else(|| LabError::Invalid(format!("{}: not a file", file.display())))?;
    let dst = dir.join(name);
    crate::util::files::write_atomic(&dst, text.as_bytes(), Some(0o644))
        .map_err(|e| LabError::io(format!("write {}", dst.display()), e))?;
    eprintln!(
        "{} objects from {} now in {}",
        m.objects.len(),
        file.display(),
        dst.display()
    );
    Ok(())
}

fn print_status(lab: &Lab) {
    let st = lab.state();
    let plan = lab.plan();
    println!("lab {}  workdir {}", plan.name, st.workdir.display());
    println!("etcd endpoints: {}", plan.etcd_endpoints());
    for s in &plan.segments {
        println!("segment {}: {} (router {})", s.index, s.net, s.router);
    }
    println!("\n{:<8} {:<16} {:<8} NETNS", "HOST", "ADDRESS", "SEGMENT");
    for h in plan.etcd.iter().chain(plan.nodes.iter()) {
        println!("{:<8} {:<16} {:<8} {}", h.name, h.ip(), h.segment, h.netns);
    }
    if !st.pods.is_empty() {
        println!("\n{:<8} {:<16} NETNS", "NODE", "POD");
        for p in &st.pods {
            println!("{:<8} {:<16} /run/netns/{}", p.node, p.pod, p.netns);
        }
    }
    if !st.procs.is_empty() {
        println!("\n{:<8} {:<8} {:<8} COMMAND", "PID", "HOST", "STATE");
        for p in &st.procs {
            let state = if p.id.alive() { "running" } else { "exited" };
            println!(
                "{:<8} {:<8} {:<8} {}",
                p.id.pid,
                p.host,
                state,
                p.argv.join(" ")
            );
        }
    }
}

//! `podnetctl lab demo`: a whole podnet cluster on this machine in a few seconds — a lab with
//! its etcd, the network config, podnetd on every node, two pods per node wired by the CNI
//! plugin — then every pod pings every other, and each node's status is shown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use crate::lab::LabSpec;
use crate::lab::cluster::{Binaries, Cluster, Pod};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data path: vxlan (nodes on two L2 segments joined by a router) or host-gw (one segment).
    #[arg(long, default_value = "vxlan")]
    pub backend: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Leave the cluster running (remove it later with `podnetctl lab down NAME`).
    #[arg(long)]
    pub keep: bool,
    /// Lab name.
    #[arg(long, default_value = "demo")]
    pub name: String,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted; removing the lab");
    }
    Ok(())
}

fn step(n: usize, what: &str) {
    eprintln!("[{n}/6] {what}");
}

/// Ctrl-C (or SIGTERM) ends the demo through its normal clean-up.
fn catch_interrupts() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let _ = sigaction(Signal::SIGINT, &action);
        let _ = sigaction(Signal::SIGTERM, &action);
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let config = match args.backend.as_str() {
        "vxlan" => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
        "host-gw" => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
        other => anyhow::bail!("--backend {other:?}: the demo runs vxlan or host-gw"),
    };
    let bins = Binaries::beside_this_program()?;
    catch_interrupts();
    let segments = if args.backend == "vxlan" && args.nodes >= 2 {
        2
    } else {
        1
    };
    let started = Instant::now();
    step(
        1,
        &format!(
            "creating lab {:?}: {} nodes on {segments} L2 segment(s), a router, a real etcd",
            args.name, args.nodes
        ),
    );
    let spec = LabSpec::new(args.name.clone(), args.nodes).segments(segments);
    let mut c = Cluster::up(&spec, bins)?;
    c.interruptible(&INTERRUPTED);
    step(2, &format!("writing the network config: {config}"));
    c.put_config(config)?;
    let nodes: Vec<String> = c.lab.plan().nodes.iter().map(|n| n.name.clone()).collect();
    start_nodes(&mut c, &nodes)?;
    step(4, "adding two pods per node through the CNI plugin");
    let mut pods: Vec<Pod> = Vec::new();
    for node in &nodes {
        for name in ["a", "b"] {
            check_interrupt()?;
            let pod = c.add_pod(node, name, "1.0.0")?;
            eprintln!("      {node}/{name:<3} {}", pod.ip);
            pods.push(pod);
        }
    }
    step(5, "every pod pings every other pod");
    let failed = ping_matrix(&c, &pods)?;
    step(6, "node status");
    for node in &nodes {
        match super::status::fetch_local(&c.socket_path(node)?) {
            Ok(v) => {
                println!("--- {node}");
                print!("{}", super::status::render(&v));
            }
            Err(e) => println!("--- {node}: status unavailable: {e}"),
        }
    }
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
    finish(c, args.keep, &pods, &nodes[0])?;
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Starts podnetd on every node and waits for each to get its lease.
fn start_nodes(c: &mut Cluster, nodes: &[String]) -> anyhow::Result<()> {
    step(3, &format!("starting podnetd on {} nodes", nodes.len()));
    for node in nodes {
        c.start(node, &["--ip-masq"])?;
    }
    for node in nodes {
        let env = c.wait_ready(node, Duration::from_secs(30))?;
        let ip = c.lab.plan().host(node).map(|h| h.ip().to_string());
        eprintln!(
            "      {node:<7} {:<14} subnet {}  MTU {}",
            ip.unwrap_or_default(),
            env.subnet
                .map(|s| s.trunc().to_string())
                .unwrap_or_default(),
            env.mtu.unwrap_or_default()
        );
    }
    Ok(())
}

/// Prints who reaches whom; returns how many pairs failed.
fn ping_matrix(c: &Cluster, pods: &[Pod]) -> anyhow::Result<usize> {
    let (mut ok, mut failed) = (0, 0);
    let width = pods.iter().map(|p| p.target().len()).max().unwrap_or(8) + 2;
    print!("{:width$}", "from \\ to");
    for p in pods {
        print!("{:>width$}", p.target());
    }
    println!();
    for a in pods {
        check_interrupt()?;
        print!("{:width$}", a.target());
        for b in pods {
            let cell = if a.target() == b.target() {
                "-"
            } else if c
                .lab
                .exec(&a.target(), &["ping", "-c1", "-W2", &b.ip.to_string()])?
                .status
                .success()
            {
                ok += 1;
                "ok"
            } else {
                failed += 1;
                "FAIL"
            };
            print!("{cell:>width$}");
        }
        println!();
    }
    println!("{ok} of {} pod pairs reach each other", ok + failed);
    Ok(failed)
}

/// Leaves the cluster running with `--keep` (saying how to use it), else removes it.
fn finish(c: Cluster, keep: bool, pods: &[Pod], first: &str) -> anyhow::Result<()> {
    if !keep {
        eprintln!("removing the lab (run with --keep to leave it running)");
        drop(c);
        return Ok(());
    }
    let name = c.lab.name().to_string();
    let sock = c.socket_path(first)?;
    let env = c.env_path(first)?;
    c.lab.persist()?;
    eprintln!(
        "\nthe cluster keeps running. Try:\n  podnetctl lab exec {name} {first}/a -- ping -c3 {}\n  podnetctl lab exec {name} {first} -- podnetctl status --socket {}\n  podnetctl lab exec {name} {first} -- podnetctl doctor --subnet-file {} --socket {}\nremove it with: podnetctl lab down {name}",
        pods.last().map(|p| p.ip.to_string()).unwrap_or_default(),
        sock.display(),
        env.display(),
        sock.display(),
    );
    Ok(())
}

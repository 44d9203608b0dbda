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
    /// Data path: vxlan or wireguard (nodes on two L2 segments joined by a router), or host-gw
    /// (one segment).
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
    /// Also show network policy: isolate one pod so only the first node's other pod may
    /// reach it, and show the matrix again.
    #[arg(long)]
    pub policy: bool,
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
    eprintln!("[{n}] {what}");
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
        "wireguard" => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
        other => anyhow::bail!("--backend {other:?}: the demo runs vxlan, wireguard or host-gw"),
    };
    let bins = Binaries::beside_this_program()?;
    catch_interrupts();
    let segments = if args.backend != "host-gw" && args.nodes >= 2 {
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
    wait_meshed(&c, &nodes, args.backend == "vxlan")?;
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
    let mut failed = ping_matrix(&c, &pods, None)?;
    if args.policy {
        step(5, "network policy: only node1/b may reach node1/a");
        failed += isolate(&c, &pods)?;
    }
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
    let policy_dir = format!("--policy-dir={}", c.lab.policy_dir()?.display());
    for node in nodes {
        c.start(node, &["--ip-masq", &policy_dir])?;
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

/// Waits until every node has every other as a peer in the kernel (no drift) and, with a
/// tunnel guard, admits its tunnel packets: a node is ready once it has its own lease, which
/// can be before it has heard of the others, and a ping sent then would be lost.
fn wait_meshed(c: &Cluster, nodes: &[String], guarded: bool) -> anyhow::Result<()> {
    let others = nodes.len().saturating_sub(1);
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    for node in nodes {
        let socket = c.socket_path(node)?;
        loop {
            check_interrupt()?;
            let meshed = super::status::fetch_local(&socket).is_ok_and(|s| {
                s.peers.len() == others
                    && s.drift.as_ref().is_some_and(|d| d.missing.is_empty())
                    && (!guarded || s.firewall.is_some_and(|f| f.tunnel_guard_peers == others))
            });
            if meshed {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{node} did not program its {others} peers within 30 s (podnetctl status on it says why)"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Labels every demo pod (`app: NODE-POD`) and lets only node1/b into node1/a; prints the
/// matrix until it shows that; removes the policy again. Returns how many cells were wrong.
fn isolate(c: &Cluster, pods: &[Pod]) -> anyhow::Result<usize> {
    let mut text = String::new();
    for p in pods {
        let name = format!("{}-{}", p.node, p.name);
        text += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\nstatus: {{podIPs: [{{ip: {}}}]}}\n",
            p.ip
        );
    }
    text += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-b-to-a, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: node1-a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: node1-b}}}]}]\n";
    let file = c.lab.policy_dir()?.join("demo.yaml");
    crate::util::files::write_atomic(&file, text.as_bytes(), None)?;
    eprintln!("      wrote {}", file.display());
    let allowed = |from: &Pod, to: &Pod| to.target() != "node1/a" || from.target() == "node1/b";
    let deadline = Instant::now() + Duration::from_secs(10);
    let wrong = loop {
        let wrong = ping_matrix(c, pods, Some(&allowed))?;
        if wrong == 0 || Instant::now() > deadline {
            break wrong;
        }
        eprintln!("      not enforced everywhere yet; again");
    };
    std::fs::remove_file(&file)?;
    Ok(wrong)
}

/// Whether a pod should reach another.
type Expectation = dyn Fn(&Pod, &Pod) -> bool;

/// Prints who reaches whom; returns how many pairs did not do what `expect` says (default:
/// everyone reaches everyone).
fn ping_matrix(c: &Cluster, pods: &[Pod], expect: Option<&Expectation>) -> anyhow::Result<usize> {
    let (mut ok, mut failed, mut wrong) = (0, 0, 0);
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
            } else {
                let reached = c
                    .lab
                    .exec(&a.target(), &["ping", "-c1", "-W1", &b.ip.to_string()])?
                    .status
                    .success();
                if reached != expect.is_none_or(|f| f(a, b)) {
                    wrong += 1;
                }
                if reached {
                    ok += 1;
                    "ok"
                } else {
                    failed += 1;
                    if expect.is_some() { "denied" } else { "FAIL" }
                }
            };
            print!("{cell:>width$}");
        }
        println!();
    }
    println!("{ok} of {} pod pairs reach each other", ok + failed);
    Ok(wrong)
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

//! `podnetctl lab demo`: a whole podnet cluster on this machine in a few seconds — a lab with
//! its etcd, the network config, podnetd on every node, two pods per node wired by the CNI
//! plugin — then every pod pings every other, and each node's status is shown.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use crate::lab::{Lab, LabSpec};
use crate::lease::etcd::{EtcdOptions, EtcdStore};
use crate::subnet_env::SubnetEnv;

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

/// The other binaries, next to this one.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name));
    if !p.exists() {
        anyhow::bail!(
            "{} not found next to podnetctl; build every binary first: cargo build --release",
            p.display()
        );
    }
    Ok(p)
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct DemoPod {
    target: String,
    ip: String,
}

pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let config = match args.backend.as_str() {
        "vxlan" => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
        "host-gw" => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
        other => anyhow::bail!("--backend {other:?}: the demo runs vxlan or host-gw"),
    };
    let podnetd = sibling("podnetd")?;
    let plugin = sibling("podnet")?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_interrupt),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        let _ = nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGINT, &action);
        let _ = nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGTERM, &action);
    }
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
    let mut lab = Lab::up(&LabSpec::new(args.name.clone(), args.nodes).segments(segments))?;
    let eps = lab.etcd_endpoints();

    step(2, &format!("writing the network config: {config}"));
    let opts = EtcdOptions {
        endpoints: vec![eps.clone()],
        prefix: crate::lease::etcd::DEFAULT_PREFIX.into(),
        ..Default::default()
    };
    lab.netns("node1")?.run(|| -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let store = EtcdStore::connect(&opts).await?;
            store.put_config(config).await?;
            Ok(())
        })
    })??;

    step(3, &format!("starting podnetd on {} nodes", args.nodes));
    let nodes: Vec<(String, String)> = lab
        .plan()
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.ip().to_string()))
        .collect();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (node, _) in &nodes {
        let dir = lab.node_dir(node)?;
        let argv: Vec<String> = vec![
            podnetd.display().to_string(),
            format!("--etcd-endpoints={eps}"),
            format!("--subnet-file={}", dir.join("subnet.env").display()),
            format!("--status-socket={}", dir.join("podnetd.sock").display()),
            "--ip-masq".into(),
        ];
        lab.spawn(node, &argv, &[])?;
        dirs.push(dir);
    }
    for ((node, ip), dir) in nodes.iter().zip(&dirs) {
        let env = wait_for(
            &format!("{node} to get its lease"),
            Duration::from_secs(30),
            || SubnetEnv::read(&dir.join("subnet.env")).ok().flatten(),
        )?;
        eprintln!(
            "      {node:<7} {ip:<14} subnet {}  MTU {}",
            env.subnet
                .map(|s| s.trunc().to_string())
                .unwrap_or_default(),
            env.mtu.unwrap_or_default()
        );
    }

    step(4, "adding two pods per node through the CNI plugin");
    let mut pods: Vec<DemoPod> = Vec::new();
    for ((node, _), dir) in nodes.iter().zip(&dirs) {
        for pod in ["a", "b"] {
            check_interrupt()?;
            let netns = format!("/run/netns/{}", lab.pod_add(node, pod)?);
            let ip = cni_add(
                &lab,
                node,
                dir,
                &plugin,
                &format!("demo-{node}-{pod}"),
                &netns,
            )?;
            eprintln!("      {node}/{pod:<3} {ip}");
            pods.push(DemoPod {
                target: format!("{node}/{pod}"),
                ip,
            });
        }
    }

    step(5, "every pod pings every other pod");
    let mut ok = 0;
    let mut failed = 0;
    let width = pods.iter().map(|p| p.target.len()).max().unwrap_or(8) + 2;
    print!("{:width$}", "from \\ to");
    for p in &pods {
        print!("{:>width$}", p.target);
    }
    println!();
    for a in &pods {
        check_interrupt()?;
        print!("{:width$}", a.target);
        for b in &pods {
            let cell = if a.target == b.target {
                "-"
            } else if lab
                .exec(&a.target, &["ping", "-c1", "-W2", &b.ip])?
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

    step(6, "node status");
    for ((node, _), dir) in nodes.iter().zip(&dirs) {
        match crate::httpget::unix(&dir.join("podnetd.sock"), "/status") {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body)?;
                println!("--- {node}");
                print!("{}", super::status::render(&v));
            }
            other => println!("--- {node}: status unavailable: {other:?}"),
        }
    }
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
    if args.keep {
        let name = lab.name().to_string();
        lab.persist()?;
        eprintln!(
            "\nthe cluster keeps running. Try:\n  podnetctl lab exec {name} node1/a -- ping -c3 {}\n  podnetctl lab exec {name} node1 -- podnetctl status --socket {}\n  podnetctl lab exec {name} node1 -- podnetctl doctor --subnet-file {} --socket {}\nremove it with: podnetctl lab down {name}",
            pods.last().map(|p| p.ip.as_str()).unwrap_or(""),
            dirs[0].join("podnetd.sock").display(),
            dirs[0].join("subnet.env").display(),
            dirs[0].join("podnetd.sock").display(),
        );
    } else {
        eprintln!("removing the lab (run with --keep to leave it running)");
        drop(lab);
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Runs the CNI plugin for one pod the way a runtime does; returns the pod's address.
fn cni_add(
    lab: &Lab,
    node: &str,
    dir: &Path,
    plugin: &Path,
    container: &str,
    netns: &str,
) -> anyhow::Result<String> {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": dir.join("subnet.env"),
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        "ipam": {"dataDir": dir.join("ipam")},
    });
    let cni_path = plugin
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", &cni_path),
    ];
    let out = lab.cni(node, &plugin.display().to_string(), &env, &conf.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!("CNI ADD for {node}: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string())
}

//! What a programmed node costs while nothing happens, and how fast it repairs.
//!
//! N fake peer leases in etcd, one lab node per contender, all programming the same peers and
//! then idling side by side, so the machine's noise falls on all of them alike:
//! - `podnetd`: this build as shipped (drift repaired from the kernel's notifications, a
//!   safety-net check every 5 minutes);
//! - `polling`: this build the way podnetd ran before (`--kernel-events=false
//!   --resync-period=10s`), cheaper passes included;
//! - `before`: a podnetd built from an earlier commit (`BENCH_BASELINE_PODNETD=path`), with
//!   its own defaults (a full dump-and-diff pass every 10 s, `nft` listings every 5 s).
//!
//! CPU is the process's user and system time, threads and waited-for children (`nft`) included,
//! over `BENCH_IDLE_SECONDS` (60); RSS is read at the end. Then, on the first node, objects are
//! deleted with the kernel's own interface and the time until the kernel announces them back is
//! measured: a route, a neighbour, an FDB entry, a rule of the nftables table, the whole VXLAN
//! device (until every route is back).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use podnet::kernel::netlink::{Change, KernelEvent, KernelEvents, Netlink};
use podnet::kernel::netns::NetNs;
use podnet::kernel::nft::NftEvents;
use podnet::lab::LabSpec;
use podnet::lab::cluster::Cluster;

use super::common::{Summary, binaries, summarize, unique};
use super::{Source, now, public, rss_mb, subnet, wait_log};

/// A podnetd to compare.
pub struct Contender {
    pub name: String,
    pub binary: PathBuf,
    pub args: Vec<&'static str>,
}

/// This build as shipped, this build polling (unless `BENCH_IDLE_POLLING=0`), and the
/// earlier builds given (`BENCH_BASELINE_PODNETD=path[,path...]`: the first is `before`, the
/// others are named by their file).
pub fn contenders() -> Vec<Contender> {
    let this = binaries().podnetd;
    let mut v = vec![Contender {
        name: "podnetd".into(),
        binary: this.clone(),
        args: vec![],
    }];
    if std::env::var("BENCH_IDLE_POLLING").as_deref() != Ok("0") {
        v.push(Contender {
            name: "polling".into(),
            binary: this,
            args: vec!["--kernel-events=false", "--resync-period=10s"],
        });
    }
    let baselines = std::env::var("BENCH_BASELINE_PODNETD").unwrap_or_default();
    for (i, b) in baselines.split(',').filter(|b| !b.is_empty()).enumerate() {
        let path = PathBuf::from(b);
        let name = match i {
            0 => "before".to_string(),
            _ => path
                .file_name()
                .map_or(b.into(), |f| f.to_string_lossy().into()),
        };
        v.push(Contender {
            name,
            binary: path,
            args: vec![],
        });
    }
    v
}

pub struct IdleRow {
    pub backend: &'static str,
    pub n: usize,
    pub name: String,
    pub cpu_percent: f64,
    pub rss: f64,
    /// Of the RSS: pages mapped from files (the binary's code and data, libc) and anonymous
    /// ones (heap, stacks), MB.
    pub rss_file: f64,
    pub rss_anon: f64,
    /// The heap in use as podnetd's allocator counts it (`podnet_heap_bytes`), MB.
    pub heap: Option<f64>,
}

pub struct RepairRow {
    pub backend: &'static str,
    pub n: usize,
    pub object: &'static str,
    pub after: Summary,
}

/// User + system time of a process, its threads and its waited-for children, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ticks: u64 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse::<u64>().unwrap())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

fn idle_seconds() -> u64 {
    std::env::var("BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// Every contender on its own node with the same N peers; idle CPU and RSS, then repairs.
pub fn run(backend: &'static str, n: usize) -> (Vec<IdleRow>, Vec<RepairRow>) {
    let cs = contenders();
    let mut c = Cluster::up(&LabSpec::new(unique("bid"), cs.len()), binaries()).unwrap();
    let config = format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":29,"SubnetMin":"10.244.200.0","Backend":{{"Type":"{backend}"}}}}"#
    );
    c.put_config(&config).unwrap();
    Source::Etcd { refused: false }.populate(&c, backend, n);
    let mut pids = Vec::new();
    for (i, k) in cs.iter().enumerate() {
        let node = format!("node{}", i + 1);
        let mut argv = c.podnetd_args(&node, &k.args).unwrap();
        argv[0] = k.binary.display().to_string();
        let rec = c.lab.spawn(&node, &argv, &[]).unwrap();
        pids.push((rec.id.pid, rec.log));
    }
    for (_, log) in &pids {
        wait_log(log, "ready: subnet file written", Duration::from_secs(300));
    }
    // Start-up's own work (first checks, freed memory going back) out of the way.
    std::thread::sleep(Duration::from_secs(10));
    let secs = idle_seconds();
    let before: Vec<f64> = pids.iter().map(|(p, _)| cpu_seconds(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let wall = t0.elapsed().as_secs_f64();
    let rows = cs
        .iter()
        .zip(&pids)
        .zip(before)
        .enumerate()
        .map(|(i, ((k, (pid, _)), cpu0))| IdleRow {
            backend,
            n,
            name: k.name.clone(),
            cpu_percent: (cpu_seconds(*pid) - cpu0) / wall * 100.0,
            rss: rss_mb(*pid),
            rss_file: status_mb(*pid, "RssFile:"),
            rss_anon: status_mb(*pid, "RssAnon:"),
            heap: heap_mb(&c, &format!("node{}", i + 1)),
        })
        .collect();
    // `BENCH_IDLE_REPAIRS=0`: memory and CPU only.
    let repairs = if std::env::var("BENCH_IDLE_REPAIRS").as_deref() == Ok("0") {
        Vec::new()
    } else {
        repairs(&c, backend, n, cs.len() - 1, &pids[0].1)
    };
    for (pid, _) in pids {
        c.lab.stop(pid).unwrap();
    }
    (rows, repairs)
}

/// A `kB` line of `/proc/PID/status`, in MB.
fn status_mb(pid: u32, key: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `podnet_heap_bytes{state="in_use"}` from a node's podnetd, in MB (none from a build
/// without the metric).
fn heap_mb(c: &Cluster, node: &str) -> Option<f64> {
    let sock = c.socket_path(node).ok()?;
    let (_, text) = podnet::httpget::unix(&sock, "/metrics").ok()?;
    text.lines()
        .find(|l| l.starts_with("podnet_heap_bytes") && l.contains("in_use"))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|b| b / 1e6)
}

/// The kernel's notifications on a node, timestamped as they arrive.
fn listen(ns: &NetNs) -> mpsc::Receiver<(f64, KernelEvent)> {
    let (tx, rx) = mpsc::channel();
    let mut events = ns.run(|| KernelEvents::subscribe(None)).unwrap().unwrap();
    std::thread::spawn(move || {
        loop {
            let Ok(batch) = events.recv() else { continue };
            let t = now();
            for e in batch.events {
                if tx.send((t, e)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Deletes with `change` and returns how long until `back` matches a notification.
fn repaired(
    nl: &mut Netlink,
    rx: &mpsc::Receiver<(f64, KernelEvent)>,
    change: Change,
    back: impl Fn(&KernelEvent) -> bool,
) -> f64 {
    while rx.try_recv().is_ok() {}
    let r = nl.apply(std::slice::from_ref(&change));
    let t0 = now();
    assert!(r[0].is_ok(), "{change}: {:?}", r[0]);
    loop {
        let (t, e) = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{change} was not repaired"));
        if back(&e) {
            return t - t0;
        }
    }
}

fn repairs(
    c: &Cluster,
    backend: &'static str,
    n: usize,
    others: usize,
    log: &std::path::Path,
) -> Vec<RepairRow> {
    let ns = c.lab.netns("node1").unwrap();
    let mut nl = ns.run(Netlink::open).unwrap().unwrap();
    let rx = listen(&ns);
    let mut rows = Vec::new();
    let mut row = |object, samples: Vec<f64>| {
        rows.push(RepairRow {
            backend,
            n,
            object,
            after: summarize(&samples),
        })
    };
    // Five different peers each time: one object undone again and again is backed off from.
    let peers: Vec<usize> = (0..5).map(|k| k * n / 5 + 1).collect();
    let routes = nl.routes().unwrap();
    let mut route_times = Vec::new();
    for &i in &peers {
        let dst: ipnet::IpNet = format!("{}/29", subnet(i)).parse().unwrap();
        let r = routes.iter().find(|r| r.dst == dst).unwrap().clone();
        route_times.push(repaired(&mut nl, &rx, Change::DelRoute(r), |e| {
            matches!(e, KernelEvent::Route { gone: false, route } if route.dst == dst && route.protocol == 86)
        }));
    }
    row("route", route_times);
    if backend == "vxlan" {
        let neighbours = nl.neighbours(None).unwrap();
        let fdb = nl.fdb(None).unwrap();
        let (mut nt, mut ft) = (Vec::new(), Vec::new());
        for &i in &peers {
            let ip = std::net::IpAddr::V4(subnet(i));
            let nb = neighbours
                .iter()
                .find(|x| x.ip == ip && x.permanent)
                .unwrap();
            nt.push(repaired(&mut nl, &rx, Change::DelNeighbour(nb.clone()), |e| {
                matches!(e, KernelEvent::Neighbour { gone: false, neighbour } if neighbour.ip == ip && neighbour.permanent)
            }));
            let mac = podnet::backend::vxlan::derived_mac(public(i).into(), 1);
            let f = fdb.iter().find(|x| x.mac == mac && x.permanent).unwrap();
            ft.push(repaired(&mut nl, &rx, Change::DelFdb(f.clone()), |e| {
                matches!(e, KernelEvent::Fdb { gone: false, fdb } if fdb.mac == mac && fdb.permanent)
            }));
        }
        row("neighbour", nt);
        row("fdb entry", ft);
    }
    row("nftables rule", nft_repairs(c, &ns, log));
    if backend == "vxlan" {
        row(
            "VXLAN device, until every route is back",
            device(&mut nl, n + others),
        );
    }
    rows
}

/// A chain of podnet's table flushed by hand, three times: from nftables announcing the flush
/// to it announcing podnetd's restore.
fn nft_repairs(c: &Cluster, ns: &NetNs, log: &std::path::Path) -> Vec<f64> {
    let mut events = ns.run(NftEvents::subscribe).unwrap().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(cs) = events.recv() {
            let t = now();
            for c in cs.commits {
                if c.tables.iter().any(|(f, t)| *f == 1 && t == "podnet") && tx.send(t).is_err() {
                    return;
                }
            }
        }
    });
    let mut times = Vec::new();
    for _ in 0..3 {
        while rx.try_recv().is_ok() {}
        let out = c
            .lab
            .exec(
                "node1",
                &["nft", "flush", "chain", "inet", "podnet", "forward"],
            )
            .unwrap();
        assert!(out.status.success());
        let t0 = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let Ok(t1) = rx.recv_timeout(Duration::from_secs(10)) else {
            // Reported, not fatal: the other figures still come out.
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("the table was not restored within 10 s; podnetd's log ends:");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
            break;
        };
        times.push(t1 - t0);
        std::thread::sleep(Duration::from_millis(200));
    }
    times
}

/// The VXLAN device deleted: until its peers' routes are all back.
fn device(nl: &mut Netlink, peers: usize) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..2 {
        let dev = nl.require_link("flannel.1").unwrap();
        nl.del_link(dev.index).unwrap();
        let t0 = now();
        loop {
            let back = nl
                .routes()
                .unwrap()
                .iter()
                .filter(|r| r.protocol == 86 && r.oif.is_some_and(|o| o != dev.index))
                .count();
            if back >= peers {
                break;
            }
            assert!(
                now() - t0 < 30.0,
                "{back} of {peers} routes back after 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(now() - t0);
        std::thread::sleep(Duration::from_secs(1));
    }
    times
}

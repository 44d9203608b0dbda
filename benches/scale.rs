//! Control plane at scale: with N fake peer leases in etcd (addresses on the node's own L2),
//! for host-gw and vxlan — podnetd start to all peers programmed, one more lease programmed
//! after its put (and its delete), resident memory, start-up to subnet.env — against the floor:
//! the same kernel objects installed by a single `ip -batch` run on a twin node, same run.
//!
//!   sudo cargo bench --bench scale          (BENCH_SIZES=100,1000,5000 by default)
//!
//! and, in `idle` (`BENCH_IDLE_SIZES`, 5000 by default), what a programmed node costs while
//! nothing happens — CPU over `BENCH_IDLE_SECONDS` and RSS, this build beside the way podnetd
//! ran before (`BENCH_BASELINE_PODNETD=path` adds an earlier build) — and how fast it repairs an
//! object deleted by hand. `BENCH_PARTS=startup,programming,idle` picks what runs (and
//! `firewall`, not run by default: one apply of podnetd's nftables table through `nft -f` against
//! nfnetlink, interleaved, `BENCH_RUNS` rounds, 50 by default), `BENCH_IDLE_BACKENDS=host-gw,vxlan`
//! the backends of `idle`. `startup` runs podnetd with the lease in etcd and in the Kubernetes
//! API (the test API server), interleaved; `BENCH_BASELINE_PODNETD=path` adds an earlier build
//! to `startup` (interleaved, etcd) and to `idle` (there `path,path` adds several); `BENCH_IDLE_POLLING=0` leaves
//! out the polling contender and `BENCH_IDLE_REPAIRS=0` the repairs (memory and CPU only).
//! `BENCH_STORES` picks the stores (`etcd,kubernetes` by default); `etcd+refused` is etcd with
//! one more lease that every node refuses (public address 127.0.0.1): its one-more-lease
//! figures beside `etcd`'s show whether an event beside a refused lease stays incremental.
//!
//! Profiling aids: BENCH_SHOW_RSS=1 prints podnetd's memory map and heap after sync,
//! BENCH_SHOW_LOG=1 the start-up logs, BENCH_WRAP="heaptrack -o /tmp/podnetd" runs podnetd under
//! a wrapper.

mod common;
#[path = "scale/idle.rs"]
mod idle;

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use podnet::backend::vxlan::derived_mac;
use podnet::kernel::netlink::{RouteEvent, RouteEvents};
use podnet::lab::cluster::Cluster;
use podnet::lab::{Lab, LabSpec};
use podnet_test_apiserver::{ApiServer, ServerConfig, fixtures};

const PREFIX: &str = "/coreos.com/network";

fn subnet(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i as u32 + 1) * 8)
}

fn public(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + i as u32)
}

fn lease_value(backend: &str, i: usize) -> String {
    if backend == "vxlan" {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            public(i),
            derived_mac(public(i).into(), 1)
        )
    } else {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
            public(i)
        )
    }
}

/// "2026-11-22T14:28:17.971205Z" at the start of a log line → seconds since the epoch.
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Runs async etcd work from inside node1's namespace.
fn etcd<T: Send>(
    lab: &Lab,
    eps: &str,
    f: impl FnOnce(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send,
) -> T {
    lab.netns("node1")
        .unwrap()
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let c = Client::connect([eps], None).await.unwrap();
                f(c).await
            })
        })
        .unwrap()
}

fn wait_log(path: &std::path::Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needle:?} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// podnetd's own view of its heap (`podnet_heap_bytes`), beside the kernel's RSS.
fn show_heap(c: &Cluster, node: &str) {
    let sock = c.socket_path(node).unwrap();
    let Ok((_, text)) = podnet::httpget::unix(&sock, "/metrics") else {
        return;
    };
    for l in text.lines().filter(|l| l.starts_with("podnet_heap_bytes")) {
        eprintln!("  {l}");
    }
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if std::env::var_os("BENCH_SHOW_RSS").is_some() {
        for l in s
            .lines()
            .filter(|l| l.starts_with("Rss") || l.starts_with("VmRSS") || l.starts_with("Threads"))
        {
            eprintln!("  {l}");
        }
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mut cur = String::new();
        for l in smaps.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 5 && f[0].contains('-') && !l.starts_with(' ') && !f[0].ends_with(':') {
                cur = format!("{} {}", f[0], f.get(5).unwrap_or(&"[anon]"));
            } else if f.first() == Some(&"Rss:") && f[1].parse::<u64>().unwrap_or(0) >= 256 {
                eprintln!("    {} kB {cur}", f[1]);
            }
        }
    }
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

struct Row {
    backend: &'static str,
    store: &'static str,
    n: usize,
    start_to_programmed: f64,
    pass: f64,
    floor: f64,
    add: common::Summary,
    add_after_event: common::Summary,
    del: common::Summary,
    rss: f64,
}

/// Where the fake peers' leases live: etcd, or Node objects in the test API server (podnetd
/// in `--kube-subnet-mgr` mode), in etcd1's namespace.
enum Source {
    /// `refused`: one more lease that every node refuses (store `etcd+refused`).
    Etcd {
        refused: bool,
    },
    Kube {
        api: ApiServer,
        args: Vec<String>,
    },
}

const API: &str = "198.18.0.2:6443";

fn peer_node(backend: &str, i: usize) -> serde_json::Value {
    let tmpl = fixtures::fixture("node-worker").unwrap();
    let cidr = format!("{}/29", subnet(i));
    let mut n = fixtures::node(&tmpl, &format!("peer{i}"), &[public(i).into()], &[&cidr]);
    let v: serde_json::Value = serde_json::from_str(&lease_value(backend, i)).unwrap();
    let data = v
        .get("BackendData")
        .map(|d| d.to_string())
        .unwrap_or("null".into());
    n["metadata"]["annotations"] = serde_json::json!({
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/backend-type": backend,
        "flannel.alpha.coreos.com/backend-data": data,
        "flannel.alpha.coreos.com/public-ip": public(i).to_string(),
    });
    n
}

impl Source {
    fn kube(c: &Cluster, config: &str) -> Source {
        let listener = c
            .lab
            .netns("etcd1")
            .unwrap()
            .run(|| std::net::TcpListener::bind(API))
            .unwrap()
            .unwrap();
        let cfg = ServerConfig::default().with_bookmark_interval(Some(Duration::from_secs(10)));
        let api = ApiServer::start(listener, cfg).unwrap();
        let dir = c.node_dir("node1").unwrap();
        let net_conf = dir.join("net-conf.json");
        std::fs::write(&net_conf, config).unwrap();
        let tmpl = fixtures::fixture("node-worker").unwrap();
        let ip = c.lab.plan().host("node1").unwrap().ip();
        let own = fixtures::node(&tmpl, "node1", &[ip.into()], &["10.244.200.0/29"]);
        api.store().create(own).unwrap();
        let args = vec![
            "--kube-subnet-mgr".to_string(),
            format!("--kube-api-url=http://{API}"),
            format!("--net-config-path={}", net_conf.display()),
        ];
        Source::Kube { api, args }
    }

    fn name(&self) -> &'static str {
        match self {
            Source::Etcd { refused: true } => "etcd+refused",
            Source::Etcd { refused: false } => "etcd",
            Source::Kube { .. } => "kubernetes",
        }
    }

    fn populate(&self, c: &Cluster, backend: &str, n: usize) {
        match self {
            Source::Etcd { refused } => {
                // N peers, written in transactions of 128 puts.
                let mut values: Vec<(String, String)> = (0..n)
                    .map(|i| (lease_key(i), lease_value(backend, i)))
                    .collect();
                if *refused {
                    // Below SubnetMin, above the peers: refused for its public address.
                    let bad = lease_value(backend, 0).replace(&public(0).to_string(), "127.0.0.1");
                    values.push((format!("{PREFIX}/subnets/10.244.199.0-29"), bad));
                }
                etcd(&c.lab, &c.eps, move |mut c| {
                    Box::pin(async move {
                        for chunk in values.chunks(128) {
                            let ops: Vec<TxnOp> = chunk
                                .iter()
                                .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None::<PutOptions>))
                                .collect();
                            c.txn(Txn::new().and_then(ops)).await.unwrap();
                        }
                    })
                });
            }
            Source::Kube { api, .. } => {
                for i in 0..n {
                    api.store().create(peer_node(backend, i)).unwrap();
                }
            }
        }
    }

    fn add(&self, c: &Cluster, backend: &str, i: usize) {
        match self {
            Source::Etcd { .. } => {
                let (k, v) = (lease_key(i), lease_value(backend, i));
                etcd(&c.lab, &c.eps, move |mut c| {
                    Box::pin(async move {
                        c.put(k, v, None).await.unwrap();
                    })
                });
            }
            Source::Kube { api, .. } => {
                api.store().create(peer_node(backend, i)).unwrap();
            }
        }
    }

    fn remove(&self, c: &Cluster, i: usize) {
        match self {
            Source::Etcd { .. } => {
                let k = lease_key(i);
                etcd(&c.lab, &c.eps, move |mut c| {
                    Box::pin(async move {
                        c.delete(k, None).await.unwrap();
                    })
                });
            }
            Source::Kube { api, .. } => {
                api.store()
                    .delete("nodes", "", &format!("peer{i}"))
                    .unwrap();
            }
        }
    }

    fn podnetd_args(&self) -> Vec<String> {
        match self {
            Source::Etcd { .. } => Vec::new(),
            Source::Kube { args, .. } => args.clone(),
        }
    }
}

fn lease_key(i: usize) -> String {
    format!("{PREFIX}/subnets/{}-29", subnet(i))
}

/// Route notifications on node1, timestamped as they arrive.
fn route_events(c: &Cluster) -> mpsc::Receiver<(f64, RouteEvent)> {
    let (tx, rx) = mpsc::channel::<(f64, RouteEvent)>();
    let mut events = c
        .lab
        .netns("node1")
        .unwrap()
        .run(RouteEvents::subscribe)
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        loop {
            // An overrun while thousands of routes go in is fine: only later events are timed.
            let Ok(batch) = events.recv() else { continue };
            let t = now();
            for e in batch {
                if tx.send((t, e)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Waits for the route to `dst` to appear (`new`) or go; when it happened.
fn route_event(rx: &mpsc::Receiver<(f64, RouteEvent)>, dst: &str, new: bool) -> f64 {
    loop {
        let (t, e) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the route event");
        match e {
            RouteEvent::New(r) if new && r.dst.to_string() == dst => return t,
            RouteEvent::Deleted(r) if !new && r.dst.to_string() == dst => return t,
            _ => {}
        }
    }
}

/// One size with one store: `etcd`, `etcd+refused` or `kubernetes`.
fn scenario(backend: &'static str, n: usize, store: &str) -> Row {
    let mut c = Cluster::up(&LabSpec::new(unique("bsc"), 2), binaries()).unwrap();
    // podnetd's own subnet comes from above the fake peers' (10.244.0.8 up to 10.244.157.0).
    let config = format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":29,"SubnetMin":"10.244.200.0","Backend":{{"Type":"{backend}"}}}}"#
    );
    let source = if store == "kubernetes" {
        Source::kube(&c, &config)
    } else {
        c.put_config(&config).unwrap();
        Source::Etcd {
            refused: store == "etcd+refused",
        }
    };
    source.populate(&c, backend, n);
    let rx = route_events(&c);
    let mut argv: Vec<String> = std::env::var("BENCH_WRAP")
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut extra = source.podnetd_args();
    extra.push("--resync-period=1h".into());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    argv.extend(c.podnetd_args("node1", &extra).unwrap());
    let env = [("NODE_NAME".to_string(), "node1".to_string())];
    let t0 = now();
    let rec = c.lab.spawn("node1", &argv, &env).unwrap();
    let programmed = wait_log(&rec.log, "peers programmed", Duration::from_secs(120));
    let start_to_programmed = log_time(&programmed).unwrap() - t0;
    let pass = field(&programmed, "took_ms") / 1e3;
    let routes = c
        .lab
        .exec("node1", &["ip", "-j", "route", "show", "proto", "86"])
        .unwrap();
    let count = serde_json::from_slice::<serde_json::Value>(&routes.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(count, n, "every peer has its route");
    wait_log(
        &rec.log,
        "ready: subnet file written",
        Duration::from_secs(30),
    );
    while rx.try_recv().is_ok() {}

    // One more lease, 20 times: from the put to its route, and from podnetd seeing it.
    let mut add = Vec::new();
    let mut add_after_event = Vec::new();
    let mut del = Vec::new();
    for j in 0..20 {
        let i = n + j;
        let dst = format!("{}/29", subnet(i));
        let t_put = now();
        source.add(&c, backend, i);
        let t_route = route_event(&rx, &dst, true);
        // Let the log catch up, then read when podnetd received the event.
        let line = wait_log(
            &rec.log,
            &format!("peer added peer={}-29", subnet(i)),
            Duration::from_secs(5),
        );
        add.push(t_route - t_put);
        add_after_event.push(t_route - log_time(&line).unwrap());
        let t_del = now();
        source.remove(&c, i);
        del.push(route_event(&rx, &dst, false) - t_del);
    }
    let rss = rss_mb(rec.id.pid);
    if std::env::var_os("BENCH_SHOW_RSS").is_some() {
        show_heap(&c, "node1");
    }
    let store = source.name();
    drop(source);
    let lab = &mut c.lab;

    // The floor: the same objects, one `ip -batch` on node2 (device made beforehand).
    let mut batch = String::new();
    let mut fdb = String::new();
    if backend == "vxlan" {
        for cmd in [
            "ip link add flannel.1 type vxlan id 1 dev eth0 local 198.18.0.12 dstport 8472 nolearning",
            "ip link set flannel.1 up",
        ] {
            let a: Vec<&str> = cmd.split(' ').collect();
            assert!(lab.exec("node2", &a).unwrap().status.success());
        }
        for i in 0..n {
            let mac = derived_mac(public(i).into(), 1);
            batch += &format!(
                "neigh replace {} lladdr {mac} dev flannel.1 nud permanent\n",
                subnet(i)
            );
            fdb += &format!(
                "fdb replace {mac} dev flannel.1 dst {} self permanent\n",
                public(i)
            );
            batch += &format!(
                "route replace {}/29 via {} dev flannel.1 onlink proto 86\n",
                subnet(i),
                subnet(i)
            );
        }
    } else {
        for i in 0..n {
            batch += &format!(
                "route replace {}/29 via {} dev eth0 proto 86\n",
                subnet(i),
                public(i)
            );
        }
    }
    let file = lab.node_dir("node2").unwrap().join("floor.batch");
    let fdb_file = lab.node_dir("node2").unwrap().join("floor.fdb");
    std::fs::write(&file, batch).unwrap();
    std::fs::write(&fdb_file, fdb).unwrap();
    let t = Instant::now();
    // FDB entries first (the `bridge` tool's), as podnet orders them before routes.
    if backend == "vxlan" {
        let out = lab
            .exec(
                "node2",
                &["bridge", "-batch", &fdb_file.display().to_string()],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = lab
        .exec("node2", &["ip", "-batch", &file.display().to_string()])
        .unwrap();
    let floor = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.stop(rec.id.pid).unwrap();
    Row {
        backend,
        store,
        n,
        start_to_programmed,
        pass,
        floor,
        add: summarize(&add),
        add_after_event: summarize(&add_after_event),
        del: summarize(&del),
        rss,
    }
}

/// Start-up figures of one contender: seconds to subnet.env for first starts and restarts, and
/// RSS (MB) once ready.
struct Startup {
    name: String,
    first: Vec<f64>,
    again: Vec<f64>,
    rss: Vec<f64>,
}

/// podnetd start to subnet.env (and /readyz 200, flipped in the same step), 0 peers, restarts:
/// first starts and restarts, with the lease in etcd and in the Kubernetes API (the test API
/// server, plain http, in etcd1's namespace: a Node with its podCIDR, `--kube-subnet-mgr`), for
/// this build and, with `BENCH_BASELINE_PODNETD=path`, an earlier one (etcd only), interleaved
/// run by run.
fn startup(runs: usize) -> Vec<Startup> {
    let config = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let mut c = Cluster::up(&LabSpec::new(unique("bst"), 1), binaries()).unwrap();
    let eps = c.eps.clone();
    c.put_config(config).unwrap();
    let dir = c.node_dir("node1").unwrap();
    let argv = c.podnetd_args("node1", &[]).unwrap();
    let kube = Source::kube(&c, config);
    let Source::Kube { api, args } = &kube else {
        unreachable!()
    };
    let own_node = api.store().get("nodes", "", "node1").unwrap();
    let kube_argv: Vec<String> = argv.iter().cloned().chain(args.iter().cloned()).collect();
    // (name, argv, Kubernetes mode)
    let mut builds = vec![
        ("this build, etcd".to_string(), argv.clone(), false),
        ("this build, Kubernetes API".to_string(), kube_argv, true),
    ];
    if let Some(b) = std::env::var_os("BENCH_BASELINE_PODNETD") {
        let mut before = argv.clone();
        before[0] = b.to_string_lossy().into_owned();
        // Builds before the WireGuard backend do not know its key file flag (vxlan here).
        before.retain(|a| !a.starts_with("--wireguard-key-file"));
        builds.push((format!("before ({}), etcd", before[0]), before, false));
    }
    let node_env = [("NODE_NAME".to_string(), "node1".to_string())];
    let lab = &mut c.lab;
    let mut out: Vec<Startup> = builds
        .iter()
        .map(|(name, _, _)| Startup {
            name: name.clone(),
            first: Vec::new(),
            again: Vec::new(),
            rss: Vec::new(),
        })
        .collect();
    for r in 0..runs {
        for (b, (_, argv, in_kube)) in builds.iter().enumerate() {
            // A first start (new lease, new device) and a restart of the same node.
            for restart in [false, true] {
                if !restart {
                    etcd(lab, &eps, |mut c| {
                        Box::pin(async move {
                            c.delete(
                                format!("{PREFIX}/subnets/"),
                                Some(etcd_client::DeleteOptions::new().with_prefix()),
                            )
                            .await
                            .unwrap();
                        })
                    });
                    // The Node as before podnet ever ran (no annotations of flannel's).
                    api.store().delete("nodes", "", "node1").unwrap();
                    api.store().create(own_node.clone()).unwrap();
                    let _ = lab.exec("node1", &["ip", "link", "del", "flannel.1"]);
                    let _ = lab.exec("node1", &["nft", "delete", "table", "inet", "podnet"]);
                    let _ = std::fs::remove_file(dir.join("subnet.env"));
                }
                let env: &[(String, String)] = if *in_kube { &node_env } else { &[] };
                let t0 = now();
                let rec = lab.spawn("node1", argv, env).unwrap();
                let line = wait_log(
                    &rec.log,
                    "ready: subnet file written",
                    Duration::from_secs(30),
                );
                let dt = log_time(&line).unwrap() - t0;
                out[b].rss.push(rss_mb(rec.id.pid));
                if std::env::var_os("BENCH_SHOW_LOG").is_some() {
                    eprintln!("{}", std::fs::read_to_string(&rec.log).unwrap_or_default());
                }
                if restart {
                    out[b].again.push(dt)
                } else {
                    out[b].first.push(dt)
                }
                lab.stop(rec.id.pid).unwrap();
            }
        }
        eprintln!("start-up run {}/{runs}", r + 1);
    }
    drop(kube);
    out
}

/// One apply of podnetd's table, the way it was (`nft -f` of its text) and the way it is (the
/// same table as one nfnetlink transaction on a socket kept open), interleaved, in a lab node's
/// namespace: the table created where there is none (start-up), replaced whole (a changed or
/// damaged table), and one tunnel-guard element added and removed (a peer coming and going);
/// and the reads: the table compared with what it should be (`nft -s list` and text against a
/// dump and objects against the transaction's), the whole ruleset read to look for foreign
/// masquerade rules (`nft -j list ruleset` parsed against a dump).
/// Seconds per call as [way][create, replace, guard element, check table, read ruleset].
fn firewall_apply(rounds: usize) -> [[Vec<f64>; 5]; 2] {
    use podnet::firewall::{FirewallSpec, Guard, Nets, guard_add, guard_remove};
    use podnet::kernel::nft;
    use std::net::IpAddr;
    let c = Cluster::up(&LabSpec::new(unique("bfw"), 1), binaries()).unwrap();
    let spec = FirewallSpec {
        v4: Some(Nets {
            network: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: "10.244.3.0/24".parse().unwrap(),
        }),
        v6: None,
        masquerade: true,
        fully_random: true,
        forward: true,
        guard: Some(Guard { port: 8472 }),
    };
    // A node with 100 peers.
    let peers: Vec<IpAddr> = (0..100).map(|i| IpAddr::V4(public(i))).collect();
    let text = spec.render_table(&peers);
    let replace_text = format!("table inet podnet\ndelete table inet podnet\n{text}");
    let create = spec.table_batch(&peers, false);
    let replace = spec.table_batch(&peers, true);
    let newcomer: IpAddr = "198.18.1.250".parse().unwrap();
    let (add_text, del_text) = (
        format!("add element inet podnet tunnel-peers {{ {newcomer} }}\n"),
        format!("delete element inet podnet tunnel-peers {{ {newcomer} }}\n"),
    );
    let (add, del) = (guard_add(newcomer), guard_remove(newcomer));
    let timed = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let nft_out = |args: &[&str]| {
        let out = std::process::Command::new("nft")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // The check as it was: listing and rendering normalized, compared.
    let check_text = || {
        use podnet::daemon::firewall::normalize;
        let have = normalize(&nft_out(&["-s", "list", "table", "inet", "podnet"]));
        assert_eq!(have, normalize(&spec.render_table(&peers)));
    };
    let read_json = || {
        let v: serde_json::Value =
            serde_json::from_str(&nft_out(&["-j", "list", "ruleset"])).unwrap();
        assert!(v["nftables"].as_array().unwrap().len() > 10);
    };
    let ns = c.lab.netns("node1").unwrap();
    ns.run(|| {
        let socket = nft::NftSocket::open().unwrap();
        // The check as it is: dumped objects against the transaction's.
        let check_dump = || {
            use nft::dump::Ruleset;
            let family = nft::NFPROTO_INET;
            let have = socket.table(family, "podnet").unwrap().unwrap();
            let want = Ruleset::from_datagram(&spec.table_batch(&peers, false).bytes).unwrap();
            assert_eq!(have.shape(family, "podnet"), want.shape(family, "podnet"));
        };
        let read_dump = || {
            assert!(socket.ruleset().unwrap().rules.len() > 5);
        };
        let gone = || {
            let _ = nft::delete_table("inet", "podnet");
        };
        let mut t: [[Vec<f64>; 5]; 2] = Default::default();
        for _ in 0..rounds {
            gone();
            t[0][0].push(timed(&|| nft::apply(&text).unwrap()));
            t[0][1].push(timed(&|| nft::apply(&replace_text).unwrap()));
            t[0][2].push(
                timed(&|| {
                    nft::apply(&add_text).unwrap();
                    nft::apply(&del_text).unwrap();
                }) / 2.0,
            );
            gone();
            t[1][0].push(timed(&|| socket.commit(&create).unwrap()));
            t[1][1].push(timed(&|| socket.commit(&replace).unwrap()));
            t[1][2].push(
                timed(&|| {
                    socket.commit(&add).unwrap();
                    socket.commit(&del).unwrap();
                }) / 2.0,
            );
            t[0][3].push(timed(&check_text));
            t[1][3].push(timed(&check_dump));
            t[0][4].push(timed(&read_json));
            t[1][4].push(timed(&read_dump));
        }
        t
    })
    .unwrap()
}

fn print_firewall(t: [[Vec<f64>; 5]; 2]) {
    println!(
        "\npodnetd's table (100 guard peers), `nft -f` against nfnetlink, interleaved, ms median (min–max):"
    );
    let steps = [
        "create",
        "replace",
        "guard element",
        "check table",
        "read ruleset",
    ];
    for (i, step) in steps.iter().enumerate() {
        let (a, b) = (summarize(&t[0][i]), summarize(&t[1][i]));
        println!(
            "  {step:<14} nft {}   netlink {}   {:.1}x",
            ms(a),
            ms(b),
            a.median / b.median
        );
    }
}

fn sizes(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// `BENCH_IDLE_BACKENDS` (host-gw,vxlan by default).
fn idle_backends() -> Vec<&'static str> {
    let want = std::env::var("BENCH_IDLE_BACKENDS").unwrap_or_else(|_| "host-gw,vxlan".into());
    ["host-gw", "vxlan"]
        .into_iter()
        .filter(|b| want.split(',').any(|w| w.trim() == *b))
        .collect()
}

fn print_startup(builds: Vec<Startup>) {
    println!(
        "\nStart-up, podnetd start to subnet.env written (and /readyz 200), no peers, vxlan, ms median (min–max), {} rounds interleaved:",
        builds.first().map_or(0, |b| b.first.len())
    );
    for b in &builds {
        println!("  {}:", b.name);
        println!(
            "    first start (new lease, new device): {}",
            ms(summarize(&b.first))
        );
        println!(
            "    restart (lease and device kept):     {}",
            ms(summarize(&b.again))
        );
        let rss = summarize(&b.rss);
        println!(
            "    RSS when ready, MB:                  {:.1} ({:.1}–{:.1})",
            rss.median, rss.min, rss.max
        );
    }
    // Round by round against the first contender (etcd, this build): the rounds ran back to
    // back, so a ratio is less disturbed by the machine's load than either figure.
    let Some((base, rest)) = builds.split_first() else {
        return;
    };
    for b in rest {
        for (what, x, y) in [
            ("first start", &b.first, &base.first),
            ("restart", &b.again, &base.again),
        ] {
            let ratios: Vec<f64> = x.iter().zip(y).map(|(a, e)| a / e).collect();
            let r = summarize(&ratios);
            println!(
                "  {} / {}, {what}, per round: {:.2} ({:.2}–{:.2})",
                b.name, base.name, r.median, r.min, r.max
            );
        }
    }
}

fn print_programming(rows: Vec<Row>) {
    println!(
        "\nControl plane at scale; times in ms; one-more-lease figures are median (min–max) of 20\n"
    );
    println!(
        "| backend | leases in | peers | start → all programmed | full pass | `ip -batch` floor | pass / floor | one more lease, from put | from podnetd seeing it | lease delete, from delete | RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {:.1} |",
            r.backend,
            r.store,
            r.n,
            r.start_to_programmed * 1e3,
            r.pass * 1e3,
            r.floor * 1e3,
            r.pass / r.floor,
            ms(r.add),
            ms(r.add_after_event),
            ms(r.del),
            r.rss
        );
    }
}

fn print_idle(rows: Vec<idle::IdleRow>, repairs: Vec<idle::RepairRow>) {
    let secs = std::env::var("BENCH_IDLE_SECONDS").unwrap_or_else(|_| "60".into());
    println!(
        "\nIdle, side by side in one lab, {secs} s after programming (CPU: user + system, threads and children)\n"
    );
    println!(
        "| backend | peers | podnetd | idle CPU, % of a core | RSS MB | of it file-backed MB | anonymous MB | heap in use MB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let heap = r.heap.map_or("–".to_string(), |h| format!("{h:.2}"));
        println!(
            "| {} | {} | {} | {:.3} | {:.1} | {:.1} | {:.1} | {heap} |",
            r.backend, r.n, r.name, r.cpu_percent, r.rss, r.rss_file, r.rss_anon
        );
    }
    println!(
        "\nRepairs: deleted with netlink (nftables: `nft flush chain`), until the kernel announces it back; ms median (min–max)\n"
    );
    println!("| backend | peers | object | repaired after |");
    println!("|---|---|---|---|");
    for r in repairs {
        println!(
            "| {} | {} | {} | {} (n={}) |",
            r.backend,
            r.n,
            r.object,
            ms(r.after),
            r.after.n
        );
    }
}

fn main() {
    require_root();
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "startup,programming,idle".into());
    let startup_figures = parts.contains("startup").then(|| startup(runs(5)));
    let mut rows = Vec::new();
    if parts.contains("programming") {
        let kube = std::env::var("BENCH_STORES").unwrap_or_else(|_| "etcd,kubernetes".into());
        for backend in ["host-gw", "vxlan"] {
            for n in sizes("BENCH_SIZES", "100,1000,5000") {
                for store in kube.split(',') {
                    assert!(
                        ["etcd", "etcd+refused", "kubernetes"].contains(&store),
                        "BENCH_STORES: {store:?} is not etcd, etcd+refused or kubernetes"
                    );
                    eprintln!("{backend} with {n} peers in {store}...");
                    rows.push(scenario(backend, n, store));
                }
            }
        }
    }
    let (mut idle_rows, mut repairs) = (Vec::new(), Vec::new());
    if parts.contains("idle") {
        for backend in idle_backends() {
            for n in sizes("BENCH_IDLE_SIZES", "5000") {
                eprintln!("{backend} idle with {n} peers...");
                let (i, r) = idle::run(backend, n);
                idle_rows.extend(i);
                repairs.extend(r);
            }
        }
    }
    let firewall_figures = parts.contains("firewall").then(|| firewall_apply(runs(50)));
    if let Some(builds) = startup_figures {
        print_startup(builds);
    }
    if let Some(t) = firewall_figures {
        print_firewall(t);
    }
    if !rows.is_empty() {
        print_programming(rows);
    }
    if !idle_rows.is_empty() {
        print_idle(idle_rows, repairs);
    }
}

//! Operating podnet: health and readiness, metrics, status and drift, doctor, the demo.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{Cluster, PODNETCTL, PREFIX};
use crate::support::{ok, poll, unique};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

pub(crate) fn get(c: &Cluster, node: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = format!("{}:9099", c.lab.plan().host(node).unwrap().ip())
        .parse()
        .unwrap();
    c.lab
        .netns(node)
        .unwrap()
        .run(|| podnet::httpget::tcp(addr, path).ok())
        .unwrap()
}

/// Prometheus text → sample name with labels → value. Fails on anything malformed.
pub(crate) fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF"
                    || line.trim().is_empty(),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let base = name.split('{').next().unwrap();
        assert!(
            base.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        out.insert(name.to_string(), v);
    }
    out
}

#[test]
fn readyz_metrics_and_no_churn() {
    let mut c = Cluster::small("ohz", 2);
    let n1 = c.start("node1", &["--healthz-port=9099"]);
    // Up but not ready: there is no network config yet.
    let (code, body) = poll("/healthz", Duration::from_secs(10), || {
        get(&c, "node1", "/healthz")
    });
    assert_eq!((code, body.as_str()), (200, "podnetd is running\n"));
    // Not ready at any moment before the config exists; it gets as far as waiting for it.
    poll(
        "/readyz to wait for the config",
        Duration::from_secs(10),
        || {
            let (code, body) = get(&c, "node1", "/readyz").unwrap();
            assert_eq!(code, 503, "{body}");
            body.contains("waiting for the network config")
                .then_some(())
        },
    );
    c.put_config(VXLAN);
    poll("/readyz to turn 200", Duration::from_secs(20), || {
        get(&c, "node1", "/readyz").filter(|(c, _)| *c == 200)
    });
    c.wait_ready("node1");
    let metrics = |c: &Cluster| parse_metrics(&get(c, "node1", "/metrics").unwrap().1);
    let m = metrics(&c);
    assert_eq!(m["podnet_ready"], 1.0);
    assert!(m["podnet_lease_seconds_remaining"] > 86000.0);
    assert!(m["podnet_reconcile_runs_total{kind=\"full\"}"] >= 1.0);
    assert!(m.contains_key("podnet_reconcile_duration_seconds_bucket{le=\"+Inf\"}"));
    // The heap as the allocator sees it: a podnetd at rest holds between 100 KB and 100 MB.
    let heap = m["podnet_heap_bytes{state=\"in_use\"}"];
    assert!((1e5..1e8).contains(&heap), "heap in use {heap}");
    assert!(m.contains_key("podnet_heap_bytes{state=\"free\"}"));
    let added = |m: &HashMap<String, f64>| {
        m.get("podnet_lease_events_total{type=\"added\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let removed = |m: &HashMap<String, f64>| {
        m.get("podnet_lease_events_total{type=\"removed\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let before = added(&m);
    // A peer comes: the event counter and the tunnel gauge move.
    c.start("node2", &[]);
    c.wait_ready("node2");
    let m = poll("the added event", Duration::from_secs(10), || {
        Some(metrics(&c)).filter(|m| added(m) > before)
    });
    poll("the tunnel gauge", Duration::from_secs(5), || {
        (metrics(&c)["podnet_peers{path=\"tunnel\"}"] == 1.0).then_some(())
    });
    assert!(
        m["podnet_kernel_changes_total"] >= 3.0,
        "neighbour, FDB entry and route"
    );
    // Steady state: safety-net checks (every second here) change nothing.
    std::thread::sleep(Duration::from_secs(2));
    let settled = metrics(&c)["podnet_kernel_changes_total"];
    std::thread::sleep(Duration::from_secs(3));
    let m = metrics(&c);
    assert_eq!(
        m["podnet_kernel_changes_total"], settled,
        "safety-net checks must not rewrite what is already right"
    );
    assert!(m["podnet_reconcile_runs_total{kind=\"verify\"}"] >= 4.0);
    // A peer goes.
    let before_removed = removed(&m);
    let n2 = c.podnetd("node2");
    c.lab.stop(n2.id.pid).unwrap();
    let key = format!(
        "{PREFIX}/subnets/{}-24",
        c.wait_ready("node2").subnet.unwrap().trunc().network()
    );
    c.etcdctl(&["del", &key]);
    poll("the removed event", Duration::from_secs(10), || {
        (removed(&metrics(&c)) > before_removed).then_some(())
    });
    poll("the tunnel gauge to drop", Duration::from_secs(5), || {
        (metrics(&c)["podnet_peers{path=\"tunnel\"}"] == 0.0).then_some(())
    });
    drop(n1);
}

pub(crate) fn socket(c: &Cluster, node: &str) -> String {
    c.lab
        .node_dir(node)
        .unwrap()
        .join("podnetd.sock")
        .display()
        .to_string()
}

pub(crate) fn start_with_socket(c: &mut Cluster, node: &str, extra: &[&str]) {
    let sock = format!("--status-socket={}", socket(c, node));
    let mut args: Vec<&str> = vec![&sock];
    args.extend_from_slice(extra);
    c.start(node, &args);
}

#[test]
fn status_shows_peers_and_drift() {
    let mut c = Cluster::small("ost", 2);
    c.put_config(VXLAN);
    // With repairs from the kernel's notifications off and the periodic check an hour away, a
    // hand-made change stays long enough to see it.
    start_with_socket(
        &mut c,
        "node1",
        &["--resync-period=1h", "--kernel-events=false"],
    );
    start_with_socket(&mut c, "node2", &[]);
    let s1 = c.wait_ready("node1").subnet.unwrap().trunc();
    let s2 = c.wait_ready("node2").subnet.unwrap().trunc();
    let status = |c: &Cluster, json: bool| {
        let sock = socket(c, "node1");
        let mut argv = vec![PODNETCTL, "status", "--socket", &sock];
        if json {
            argv.push("--json");
        }
        ok(c.lab.exec("node1", &argv).unwrap())
    };
    poll("node1 to see node2", Duration::from_secs(10), || {
        status(&c, false).contains(&s2.to_string()).then_some(())
    });
    let text = status(&c, false);
    assert!(text.contains(&format!("lease     {s1} (23h5")), "{text}");
    assert!(text.contains("backend   vxlan, pod MTU 1450"), "{text}");
    assert!(
        text.contains(&format!("  {:<20} 198.18.0.12      tunnel", s2.to_string())),
        "{text}"
    );
    assert!(
        text.contains("drift     none: the kernel matches"),
        "{text}"
    );
    ok(c.lab
        .exec("node1", &["ip", "route", "del", &s2.to_string()])
        .unwrap());
    let text = status(&c, false);
    assert!(text.contains("drift     1 missing, 0 unexpected"), "{text}");
    assert!(
        text.contains(&format!(
            "missing     route {s2} via {} dev #",
            s2.network()
        )),
        "{text}"
    );
    let v: Value = serde_json::from_str(&status(&c, true)).unwrap();
    assert_eq!(v["drift"]["missing"].as_array().unwrap().len(), 1);
    assert_eq!(v["ready"], true);
}

pub(crate) fn doctor(c: &Cluster, node: &str) -> HashMap<String, (String, String)> {
    let env = c.env_path(node).display().to_string();
    let sock = socket(c, node);
    let out = c
        .lab
        .exec(
            node,
            &[
                PODNETCTL,
                "doctor",
                "--json",
                "--subnet-file",
                &env,
                "--socket",
                &sock,
            ],
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let fails = v.as_array().unwrap().iter().any(|c| c["verdict"] == "fail");
    assert_eq!(
        out.status.code(),
        Some(if fails { 1 } else { 0 }),
        "exit code follows the verdicts"
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                (
                    c["verdict"].as_str().unwrap().to_string(),
                    c["detail"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[track_caller]
pub(crate) fn verdict(c: &Cluster, node: &str, check: &str, want: &str, detail: &str) {
    let all = doctor(c, node);
    let (v, d) = &all[check];
    assert_eq!(v, want, "{check}: {d}\nall: {all:#?}");
    assert!(d.contains(detail), "{check}: {d:?} lacks {detail:?}");
}

/// Breaks the node with `broken` (a command), expects doctor's `check` to fail saying
/// `detail`, and repairs it with `fixed`.
#[track_caller]
pub(crate) fn fails_until_fixed(c: &Cluster, broken: &str, check: &str, detail: &str, fixed: &str) {
    sh(c, "node1", broken);
    verdict(c, "node1", check, "fail", detail);
    sh(c, "node1", fixed);
}

pub(crate) fn sh(c: &Cluster, node: &str, cmd: &str) {
    let argv: Vec<&str> = cmd.split(' ').collect();
    ok(c.lab.exec(node, &argv).unwrap());
}

#[test]
fn every_doctor_check_fails_on_a_broken_node_and_passes_on_a_healthy_one() {
    let mut c = Cluster::small("odoc", 2);
    c.put_config(VXLAN);
    // Nothing repaired behind the test's back: it breaks things on purpose.
    let quiet = ["--resync-period=1h", "--kernel-events=false", "--ip-masq"];
    start_with_socket(&mut c, "node1", &quiet);
    start_with_socket(&mut c, "node2", &[]);
    let env1 = c.wait_ready("node1");
    let s2 = c.wait_ready("node2").subnet.unwrap().trunc();
    c.add_pod("node1", "a", "1.0.0");
    poll("node1 to see node2", Duration::from_secs(10), || {
        c.ip_json("node1", &["route", "show", "proto", "86"])
            .as_array()
            .unwrap()
            .len()
            .eq(&1)
            .then_some(())
    });
    // Healthy: every check passes.
    let healthy = doctor(&c, "node1");
    for (name, (v, d)) in &healthy {
        assert_eq!(v, "pass", "{name}: {d}");
    }
    assert_eq!(healthy.len(), 9);

    fails_until_fixed(
        &c,
        "sysctl -qw net.ipv4.ip_forward=0",
        "ip-forward",
        "net.ipv4.ip_forward = 0",
        "sysctl -qw net.ipv4.ip_forward=1",
    );
    fails_until_fixed(
        &c,
        "sysctl -qw net.bridge.bridge-nf-call-iptables=0",
        "br-netfilter",
        "bridge-nf-call-iptables = 0: traffic between pods on one node skips kube-proxy and network policy",
        "sysctl -qw net.bridge.bridge-nf-call-iptables=1",
    );

    // Strict rp_filter alone is fine; with replies routed elsewhere it drops traffic.
    sh(&c, "node1", "sysctl -qw net.ipv4.conf.all.rp_filter=1");
    verdict(
        &c,
        "node1",
        "rp-filter",
        "pass",
        "every peer's reply path matches",
    );
    let half = format!("{}/25", s2.network());
    sh(
        &c,
        "node1",
        &format!("ip route add {half} via 198.18.0.12 dev eth0"),
    );
    verdict(
        &c,
        "node1",
        "rp-filter",
        "fail",
        &format!("{s2} arrives on flannel.1 but its route back leaves by eth0"),
    );
    sh(&c, "node1", &format!("ip route del {half}"));
    sh(&c, "node1", "sysctl -qw net.ipv4.conf.all.rp_filter=0");

    fails_until_fixed(
        &c,
        "ip link set flannel.1 mtu 1400",
        "mtu",
        "flannel.1 has MTU 1400 but subnet.env says 1450",
        "ip link set flannel.1 mtu 1450",
    );
    fails_until_fixed(
        &c,
        "ip addr add 10.244.250.1/24 dev cni0",
        "bridge-address",
        "cni0 has 10.244.250.1/24 outside this node's subnet",
        "ip addr del 10.244.250.1/24 dev cni0",
    );

    let own = env1.subnet.unwrap().trunc().to_string();
    for rule in [
        "add table ip nat".to_string(),
        "add chain ip nat POSTROUTING { type nat hook postrouting priority srcnat; }".to_string(),
        format!("add rule ip nat POSTROUTING ip saddr {own} oifname != \"docker0\" masquerade"),
    ] {
        ok(c.lab.exec("node1", &["nft", &rule]).unwrap());
    }
    verdict(
        &c,
        "node1",
        "foreign-masquerade",
        "fail",
        "table ip nat chain POSTROUTING",
    );
    sh(&c, "node1", "nft delete table ip nat");

    let path = c.env_path("node1");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace(
            &format!("FLANNEL_SUBNET={}", env1.subnet.unwrap()),
            "FLANNEL_SUBNET=10.244.251.1/24",
        ),
    )
    .unwrap();
    verdict(
        &c,
        "node1",
        "lease",
        "fail",
        &format!("subnet.env says 10.244.251.0/24 but this node's lease is {own}"),
    );
    std::fs::write(&path, good).unwrap();

    // VXLAN checksum offload: podnetd turned it off itself on a node whose public address is NAT'ed...
    let mut n = Cluster::small("ocsum", 1);
    n.put_config(VXLAN);
    start_with_socket(&mut n, "node1", &["--public-ip=198.19.77.1"]);
    n.wait_ready("node1");
    let off = ok(n
        .lab
        .exec("node1", &["ethtool", "-k", "flannel.1"])
        .unwrap());
    assert!(off.contains("tx-checksum-ip-generic: off"), "{off}");
    verdict(&n, "node1", "vxlan-checksum", "pass", "safe here");
    // ...and someone turned it back on.
    sh(
        &n,
        "node1",
        "ethtool -K flannel.1 tx-checksum-ip-generic on",
    );
    verdict(
        &n,
        "node1",
        "vxlan-checksum",
        "fail",
        "its public address is NAT'ed",
    );

    // All healthy again on the first node.
    for (name, (v, d)) in doctor(&c, "node1") {
        assert_eq!(v, "pass", "{name}: {d}");
    }
}

#[test]
fn the_demo_runs_and_cleans_up() {
    let name = unique("demo");
    let out = std::process::Command::new(PODNETCTL)
        .args(["lab", "demo", "--nodes", "2", "--name", &name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("12 of 12 pod pairs reach each other"),
        "{stdout}"
    );
    assert!(
        stdout.contains("drift     none: the kernel matches"),
        "{stdout}"
    );
    assert_lab_gone(&name);
}

/// The lab `name` left neither its state file nor a namespace behind.
pub(crate) fn assert_lab_gone(name: &str) {
    assert!(!podnet::lab::state::state_path(name).exists());
    let left: Vec<String> = podnet::kernel::netns::NetNs::list_named()
        .unwrap()
        .into_iter()
        .filter(|n| n.contains(name))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_health_port_serves_strangers_little_and_briefly() {
    let mut c = Cluster::small("ohp", 2);
    c.put_config(VXLAN);
    let sock_flag = format!("--status-socket={}", socket(&c, "node1"));
    let n1 = c.start("node1", &[&sock_flag, "--healthz-port=9099"]);
    c.wait_ready("node1");
    poll("/healthz", Duration::from_secs(10), || {
        get(&c, "node1", "/healthz")
    });
    // A second podnetd on the node refuses to start, and leaves the first's socket alone.
    let (code, err) = c.run_podnetd("node1", &[&sock_flag], Duration::from_secs(30));
    assert_eq!(code, Some(1), "{err}");
    let holder = format!("is still held after 5s by process {}", n1.id.pid);
    assert!(
        err.contains("another podnetd is running on this node: lock ") && err.contains(&holder),
        "{err}"
    );
    let sock = std::path::PathBuf::from(socket(&c, "node1"));
    assert_eq!(podnet::httpget::unix(&sock, "/healthz").unwrap().0, 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the status socket is root's alone");
    // Peers, addresses, errors, pod names and policies stay on that socket.
    assert_eq!(get(&c, "node1", "/status").unwrap().0, 404);
    assert_eq!(get(&c, "node1", "/policy?pod=default/a").unwrap().0, 404);
    assert_eq!(podnet::httpget::unix(&sock, "/status").unwrap().0, 200);

    // Eight clients loop on /metrics while a peer arrives: it is programmed all the same, and
    // podnetd does not grow.
    let rss_before = rss_kib(n1.id.pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr: SocketAddr = "198.18.0.11:9099".parse().unwrap();
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            let ns = c.lab.netns("node1").unwrap();
            std::thread::spawn(move || {
                let mut n = 0u64;
                ns.run(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if podnet::httpget::tcp(addr, "/metrics").is_ok() {
                            n += 1;
                        }
                    }
                })
                .unwrap();
                n
            })
        })
        .collect();
    c.start("node2", &[]);
    let s2 = c.wait_ready("node2").subnet.unwrap().trunc();
    poll(
        "node1 to route node2's subnet",
        Duration::from_secs(10),
        || {
            let r = c.ip_json("node1", &["route", "show", &s2.to_string()]);
            (r.as_array().unwrap().len() == 1).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u64 = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(served > 100, "the flood was answered ({served} requests)");
    let rss_after = rss_kib(n1.id.pid);
    assert!(
        rss_after < rss_before + 4096,
        "RSS grew from {rss_before} KiB to {rss_after} KiB under {served} requests"
    );

    // A pod's clients that connect and say nothing take every slot they can...
    let pod = c.add_pod("node1", "idler", "1.0.0");
    let pod_ns = c.lab.netns(&pod.target()).unwrap();
    let idle: Vec<std::net::TcpStream> = pod_ns
        .run(|| {
            (0..podnet::daemon::serve::MAX_CONNECTIONS)
                .filter_map(|_| std::net::TcpStream::connect(addr).ok())
                .collect()
        })
        .unwrap();
    assert!(!idle.is_empty(), "the pod reaches the health port");
    let from_pod = || {
        pod_ns
            .run(|| podnet::httpget::tcp(addr, "/healthz").ok())
            .unwrap()
    };
    poll("the pod's slots to fill", Duration::from_secs(5), || {
        from_pod().is_none().then_some(())
    });
    // ...and with three more addresses of its own (eight slots each), it and they hold every
    // slot strangers may have: a fifth address is refused...
    let o = pod.ip.octets();
    let extra = |d: u8| std::net::Ipv4Addr::new(o[0], o[1], o[2], d);
    for d in 250..=253 {
        ok(c.lab
            .exec(
                &pod.target(),
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/32", extra(d)),
                    "dev",
                    "eth0",
                ],
            )
            .unwrap());
    }
    // (While strangers still have room, the fifth address is answered: its refusal below is
    // the limit's, not a broken address.)
    assert!(
        pod_ns.run(|| healthz_from(extra(253), addr)).unwrap(),
        "{} is answered before the other addresses take their slots",
        extra(253)
    );
    let more: Vec<std::net::TcpStream> = pod_ns
        .run(|| {
            (250..=252)
                .flat_map(|d| (0..podnet::daemon::serve::PER_SOURCE).map(move |_| d))
                .filter_map(|d| connect_from(extra(d), addr))
                .collect()
        })
        .unwrap();
    assert_eq!(more.len(), 3 * podnet::daemon::serve::PER_SOURCE);
    poll(
        "strangers to hold all their slots",
        Duration::from_secs(5),
        || {
            let fifth = pod_ns.run(|| healthz_from(extra(253), addr)).unwrap();
            (!fifth).then_some(())
        },
    );
    // ...but the kubelet's probe, from the node itself, is still answered (the slots kept
    // for the node),
    let (code, _) = get(&c, "node1", "/healthz").expect("/healthz answers during the flood");
    assert_eq!(code, 200);
    drop(more);
    // and so is the local socket;
    assert_eq!(podnet::httpget::unix(&sock, "/healthz").unwrap().0, 200);
    // the idle clients are shown the door after the header timeout.
    let t = std::time::Instant::now();
    poll(
        "the idle clients to be dropped",
        Duration::from_secs(15),
        || from_pod().map(|(code, _)| assert_eq!(code, 200)),
    );
    let waited = t.elapsed();
    assert!(
        waited <= podnet::daemon::serve::HEADER_TIMEOUT + Duration::from_secs(3),
        "{waited:?}"
    );
    for mut s in idle {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        // Closed by the server: end of stream, or a reset, never a hang.
        match s.read(&mut buf) {
            Ok(n) => {
                assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"))
            }
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
        }
    }
}

#[test]
fn a_panic_in_any_thread_ends_podnetd_for_its_supervisor_to_restart() {
    let mut c = Cluster::small("opn", 2);
    c.put_config(VXLAN);
    // node1's data-plane thread panics when it is first given a peer (debug builds only).
    let argv = c.podnetd_args("node1", &[]);
    let mut cmd = c.lab.command("node1", &argv).unwrap();
    cmd.env("PODNET_TEST_PANIC", "dataplane")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _guard = Kill(child.id());
    c.wait_ready("node1");
    assert!(
        child.try_wait().unwrap().is_none(),
        "up and ready before any peer"
    );
    c.start("node2", &[]);
    let status = poll("node1 to exit", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        status.code(),
        Some(podnet::daemon::crash::EXIT_CODE),
        "{err}"
    );
    assert!(
        err.contains("podnetd panicked: PODNET_TEST_PANIC=dataplane; exiting so that a restart rebuilds the node")
            && err.contains("thread=\"dataplane\""),
        "{err}"
    );
}

/// A TCP connection to `to` from the local address `from`.
fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> Option<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let SocketAddr::V4(to) = to else { return None };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor, owned by the TcpStream from here on.
    let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    let (a, b) = (sin(from, 0), sin(*to.ip(), to.port()));
    // SAFETY: valid sockaddr_in values of `len` bytes and an open descriptor.
    let bound = unsafe { libc::bind(s.as_raw_fd(), (&raw const a).cast(), len) } == 0;
    let connected =
        bound && unsafe { libc::connect(s.as_raw_fd(), (&raw const b).cast(), len) } == 0;
    connected.then_some(s)
}

/// Whether `/healthz` on `to` answers 200 to a client at `from`.
fn healthz_from(from: std::net::Ipv4Addr, to: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Some(mut s) = connect_from(from, to) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        .is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}

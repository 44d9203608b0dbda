//! Drift repaired from the kernel's notifications: every object podnet owns, deleted or changed
//! by hand, is back within a second with the periodic checks an hour away; an agent that keeps
//! undoing a route is backed off from, reported, and costs podnetd little.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use podnet::kernel::netlink::Netlink;
use serde_json::Value;

use crate::cluster::{Cluster, PODNETCTL};
use crate::support::{ok, poll};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;
const UDP: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;
/// The deadline for a repair (a poll deadline, not a timing measurement).
const SECOND: Duration = Duration::from_secs(1);
/// Periodic checks far away: only notifications can repair within the deadline.
const NO_POLLING: [&str; 2] = ["--resync-period=1h", "--iptables-resync=3600"];

fn socket(c: &Cluster, node: &str) -> String {
    let dir = c.lab.node_dir(node).unwrap();
    dir.join("podnetd.sock").display().to_string()
}

/// Starts podnetd on every node (with a status socket and `extra`); each node's subnet.
fn boot(c: &mut Cluster, config: &str, extra: &[&str]) -> Vec<String> {
    c.put_config(config);
    let names: Vec<String> = c.lab.plan().nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        let sock = format!("--status-socket={}", socket(c, n));
        let mut args = vec![sock.as_str()];
        args.extend_from_slice(extra);
        c.start(n, &args);
    }
    names
        .iter()
        .map(|n| c.wait_ready(n).subnet.unwrap().trunc().to_string())
        .collect()
}

fn status(c: &Cluster, node: &str) -> Value {
    let sock = socket(c, node);
    let out = ok(c
        .lab
        .exec(node, &[PODNETCTL, "status", "--json", "--socket", &sock])
        .unwrap());
    serde_json::from_str(&out).unwrap()
}

fn sh(c: &Cluster, node: &str, cmd: &str) {
    let argv: Vec<&str> = cmd.split(' ').collect();
    ok(c.lab.exec(node, &argv).unwrap());
}

/// A JSON array in a stable order (the kernel lists a recreated table in its own order).
fn sorted(v: Value) -> Value {
    match v {
        Value::Array(mut a) => {
            a.sort_by_key(|x| x.to_string());
            Value::Array(a)
        }
        other => other,
    }
}

/// `ip -j ...`, or null when it fails (a device that does not exist yet).
fn ip_or_null(c: &Cluster, node: &str, args: &[&str]) -> Value {
    let mut argv = vec!["ip", "-j"];
    argv.extend_from_slice(args);
    let out = c.lab.exec(node, &argv).unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// What a user would look at: `ip -j` and `bridge -j` output, as one comparable value.
fn kernel_view(c: &Cluster, node: &str, dev: &str) -> Value {
    let bridge = c
        .lab
        .exec(node, &["bridge", "-j", "fdb", "show", "dev", dev])
        .unwrap();
    serde_json::json!({
        "routes": sorted(c.ip_json(node, &["route", "show", "proto", "86"])),
        "neigh": sorted(ip_or_null(c, node, &["neigh", "show", "dev", dev, "nud", "permanent"])),
        "fdb": sorted(serde_json::from_slice::<Value>(&bridge.stdout).unwrap_or(Value::Null)),
        "link": ip_or_null(c, node, &["link", "show", dev])[0]["address"],
    })
}

fn nft_listing(c: &Cluster, node: &str) -> String {
    let out = c
        .lab
        .exec(node, &["nft", "-s", "list", "table", "inet", "podnet"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` on node1 and polls, with a one-second deadline, until `view` is `want` again.
#[track_caller]
fn undone_and_back<T: PartialEq + std::fmt::Debug>(
    c: &Cluster,
    what: &str,
    cmd: &str,
    want: &T,
    view: impl Fn(&Cluster) -> T,
) {
    sh(c, "node1", cmd);
    let deadline = Instant::now() + SECOND;
    loop {
        let now = view(c);
        if now == *want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not restored within {SECOND:?} of `{cmd}`:\n{now:#?}\nwanted:\n{want:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vxlan_objects_deleted_or_changed_by_hand_are_back_within_a_second() {
    // Three peers for node1.
    let mut c = Cluster::small("dvx", 4);
    let mut extra = NO_POLLING.to_vec();
    extra.push("--ip-masq");
    let subnets = boot(&mut c, VXLAN, &extra);
    let peer = &subnets[1];
    let base: Ipv4Addr = peer.split('/').next().unwrap().parse().unwrap();
    let converged = |c: &Cluster| {
        let v = kernel_view(c, "node1", "flannel.1");
        let n = |k: &str| v[k].as_array().map(|a| a.len());
        (n("routes") == Some(3) && n("neigh") == Some(3) && n("fdb") == Some(3)).then_some(v)
    };
    let want = poll(
        "node1 to program its three peers",
        Duration::from_secs(15),
        || converged(&c),
    );
    let view = |c: &Cluster| kernel_view(c, "node1", "flannel.1");
    let table = poll("the nftables table", Duration::from_secs(10), || {
        Some(nft_listing(&c, "node1")).filter(|l| l.contains("198.18.0.14"))
    });
    let mac = want["neigh"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["dst"] == base.to_string().as_str())
        .unwrap()["lladdr"]
        .as_str()
        .unwrap()
        .to_string();
    let fdb = format!("bridge fdb del {mac} dev flannel.1 dst 198.18.0.12");
    let cases = [
        ("the route", format!("ip route del {peer}")),
        (
            "a route changed",
            format!("ip route replace {peer} via 10.244.250.0 dev flannel.1 onlink proto 86"),
        ),
        (
            "a route replaced by someone else's",
            format!("ip route replace {peer} via 198.18.0.1 dev eth0"),
        ),
        (
            "the neighbour",
            format!("ip neigh del {base} dev flannel.1"),
        ),
        ("the FDB entry", fdb),
        (
            "a route with podnet's mark nobody wants",
            "ip route add 10.244.251.0/24 dev flannel.1 proto 86".into(),
        ),
        ("the MTU", "ip link set flannel.1 mtu 1300".into()),
        ("the device taken down", "ip link set flannel.1 down".into()),
        ("the whole device", "ip link del flannel.1".into()),
    ];
    for (what, cmd) in &cases {
        undone_and_back(&c, what, cmd, &want, view);
    }
    let mtu = c.ip_json("node1", &["link", "show", "flannel.1"])[0]["mtu"].clone();
    assert_eq!(mtu, 1450);
    // The nftables table: a chain emptied, the whole table deleted.
    let listing = |c: &Cluster| nft_listing(c, "node1");
    for (what, cmd) in [
        ("a chain", "nft flush chain inet podnet postrouting"),
        ("the table", "nft delete table inet podnet"),
    ] {
        undone_and_back(&c, what, cmd, &table, listing);
    }
    // No full pass was needed for single objects; nothing is contested.
    let s = status(&c, "node1");
    let dp = &s["dataplane"];
    assert_eq!(dp["kernelEvents"], true);
    assert!(dp["repairs"].as_u64().unwrap() >= 6, "{dp}");
    assert!(
        dp["fullPasses"].as_u64().unwrap() <= 4,
        "one at start, one per device case: {dp}"
    );
    assert_eq!(dp["contested"], serde_json::json!([]), "{dp}");
    assert!(s["firewall"]["restores"].as_u64().unwrap() >= 2, "{s}");
}

#[test]
fn host_gw_routes_come_back_after_deletion_and_after_the_interface_went_down() {
    let mut c = Cluster::small("dhg", 3);
    let subnets = boot(&mut c, HOST_GW, &NO_POLLING);
    let routes = |c: &Cluster| sorted(c.ip_json("node1", &["route", "show", "proto", "86"]));
    let want = poll(
        "node1 to program both peers",
        Duration::from_secs(15),
        || Some(routes(&c)).filter(|r| r.as_array().unwrap().len() == 2),
    );
    undone_and_back(
        &c,
        "the route",
        &format!("ip route del {}", subnets[2]),
        &want,
        routes,
    );
    // Taking the interface down flushes its routes without a notification per route; they are
    // back once it is up again.
    sh(&c, "node1", "ip link set eth0 down");
    undone_and_back(&c, "every route", "ip link set eth0 up", &want, routes);
}

#[test]
fn the_udp_device_its_address_and_route_are_back_within_a_second() {
    let mut c = Cluster::small("dud", 2);
    let subnets = boot(&mut c, UDP, &NO_POLLING);
    let own = subnets[0].split('/').next().unwrap().to_string();
    let view = |c: &Cluster| {
        let json = |args: &[&str]| ip_or_null(c, "node1", args);
        let link = json(&["addr", "show", "dev", "flannel0"]);
        let route = json(&["route", "show", "10.244.0.0/16"]);
        let v4: Vec<Value> = link[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"] == "inet")
            .cloned()
            .collect();
        serde_json::json!({
            "addr": v4,
            "up": link[0]["flags"].as_array().map(|f| f.contains(&"UP".into())),
            "route": route,
        })
    };
    let want = poll("flannel0 with its route", Duration::from_secs(10), || {
        Some(view(&c)).filter(|v| v["route"].as_array().is_some_and(|r| r.len() == 1))
    });
    for (what, cmd) in [
        (
            "the route",
            "ip route del 10.244.0.0/16 dev flannel0".to_string(),
        ),
        ("the address", format!("ip addr del {own}/32 dev flannel0")),
        ("the device taken down", "ip link set flannel0 down".into()),
        ("the device", "ip link del flannel0".into()),
    ] {
        undone_and_back(&c, what, &cmd, &want, view);
    }
}

/// podnetd's CPU time (user and system, its threads and waited-for children), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap())
        .collect();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    fields.iter().sum::<u64>() as f64 / hz
}

/// Another agent: deletes podnet's route to `dst` whenever it finds it, looking every 2 ms.
fn fight(c: &Cluster, dst: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let ns = c.lab.netns("node1").unwrap();
    let dst: ipnet::IpNet = dst.parse().unwrap();
    std::thread::spawn(move || {
        ns.run(move || {
            let mut nl = Netlink::open().unwrap();
            let mut deleted = 0;
            while !stop.load(Ordering::Relaxed) {
                let routes = nl.routes().unwrap();
                for r in routes.iter().filter(|r| r.dst == dst && r.protocol == 86) {
                    if nl.del_route(r).is_ok() {
                        deleted += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            deleted
        })
        .unwrap()
    })
}

#[test]
fn a_route_someone_keeps_deleting_is_repaired_with_backoff_reported_and_cheap() {
    let mut c = Cluster::small("dft", 2);
    let subnets = boot(&mut c, VXLAN, &NO_POLLING);
    let peer = subnets[1].clone();
    let route_there = |c: &Cluster| {
        !c.ip_json("node1", &["route", "show", &peer, "proto", "86"])
            .as_array()
            .unwrap()
            .is_empty()
    };
    poll("node1 to program node2", Duration::from_secs(15), || {
        route_there(&c).then_some(())
    });
    let pid = c.podnetd("node1").id.pid;
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let fighter = fight(&c, &peer, stop.clone());
    std::thread::sleep(Duration::from_secs(12));
    // While the fight goes on, status and doctor name the route.
    let s = status(&c, "node1");
    let contested = s["dataplane"]["contested"].as_array().unwrap().clone();
    let cpu = cpu_seconds(pid) - cpu0;
    let window = t0.elapsed().as_secs_f64();
    let sock = socket(&c, "node1");
    let env = c.env_path("node1").display().to_string();
    let doctor = c
        .lab
        .exec(
            "node1",
            &[
                PODNETCTL,
                "doctor",
                "--json",
                "--socket",
                &sock,
                "--subnet-file",
                &env,
            ],
        )
        .unwrap();
    let text = ok(c
        .lab
        .exec("node1", &[PODNETCTL, "status", "--socket", &sock])
        .unwrap());
    stop.store(true, Ordering::Relaxed);
    let deleted = fighter.join().unwrap();
    eprintln!(
        "fight: {deleted} deletions, podnetd {cpu:.3} s CPU in {window:.1} s, contested {contested:?}"
    );
    assert_eq!(contested.len(), 1, "{s}");
    let route = &contested[0];
    assert!(
        route["object"]
            .as_str()
            .unwrap()
            .starts_with(&format!("route {peer} via ")),
        "{route}"
    );
    // Three repairs at once, then 0.25 s doubling: about ten in twelve seconds, not thousands.
    let repairs = route["repairs"].as_u64().unwrap();
    assert!((4..=14).contains(&repairs), "{route}");
    assert!(deleted as u64 >= repairs, "the fighter deleted {deleted}");
    assert!(
        cpu < 0.2 * window,
        "podnetd used {cpu:.2} s of CPU in {window:.1} s of fighting"
    );
    assert!(text.contains("contested"), "{text}");
    assert_eq!(doctor.status.code(), Some(1));
    let checks: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let fightcheck = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "contested")
        .unwrap_or_else(|| panic!("{checks:#}"));
    assert_eq!(fightcheck["verdict"], "fail");
    assert!(
        fightcheck["detail"].as_str().unwrap().contains(&peer),
        "{fightcheck}"
    );
    // Left alone, the route is back by the next repair (at most 30 s away).
    poll("the route back", Duration::from_secs(35), || {
        route_there(&c).then_some(())
    });
}

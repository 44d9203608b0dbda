//! Data path: TCP throughput (iperf3, one stream) and round-trip latency (ping) between pods on
//! two nodes, per backend, against a reference on a twin pair of nodes — for the kernel
//! backends the same kernel configuration made by hand with `ip`, `bridge` and `nft`, for the
//! udp backend podnet's kernel VXLAN — and against the bare underlay between the twins;
//! interleaved round by round in one run so that machine noise hits all three alike.
//!
//!   sudo cargo bench --bench datapath       (BENCH_RUNS=5, BENCH_SECONDS=3,
//!                                            BENCH_BACKENDS=host-gw,vxlan,udp,wireguard,
//!                                            BENCH_FAMILIES=ipv4 by default)
//!
//! RTT is the mean of 5 000 ICMP echoes back to back (as `ping -f` sends them, timed by the
//! bench to the nanosecond), the path's own round trip with the CPUs awake. `BENCH_RTT=spaced`
//! measures 200 pings 2 ms apart instead, as the tables up to run 5 of 2026-12-01 did; that
//! mostly measures how fast an idle CPU wakes up.
//!
//! `BENCH_FAMILIES=ipv6` (or `ipv4,ipv6`) measures the kernel backends over IPv6 as well: a
//! dual-stack network (`EnableIPv6`) on the lab's IPv6 underlay, the pods' traffic between
//! their IPv6 addresses through `flannel-v6.1` or the IPv6 host-gw routes, against the same
//! machinery: a dual-stack hand-made twin pair (the IPv4 objects and their IPv6 twins), the
//! rulesets with their IPv6 halves (flanneld's through `ip6tables-restore`). udp and wireguard
//! are IPv4-only here and are skipped in an IPv6 run.
//!
//! Lab: nodes 1 and 2 run podnetd (`--ip-masq`, as flanneld is usually run) and get their pods
//! from podnet's CNI plugin. For the kernel backends nodes 3 and 4 are the same kernel objects
//! made by hand, measured under several firewalls loaded in turn before each measurement: none
//! at all (the reference: no hooks, no connection tracking), flanneld's rules as its iptables
//! mode installs them (Debian's iptables, i.e. iptables-nft), podnet's table as podnetd renders
//! it, and podnet's table without each of its chains in turn (`BENCH_HOOKS=0` leaves those out).
//! The udp backend is measured against podnetd with vxlan on nodes 3 and 4 under a second etcd
//! prefix; wireguard (userspace engine here) against podnet's udp backend on nodes 3 and 4 and
//! podnet's kernel VXLAN on nodes 5 and 6. All paths share the same rounds, in an order rotated
//! every round; ratios are taken round by round (each path over the reference of its round), so
//! that a slow moment of the shared machine weighs on both sides of a ratio alike.
//!
//! CPU per Gbit/s: during each throughput run, the CPU of the transfer — both iperf3 ends (as
//! iperf3 accounts them: the kernel's send and receive work in their system calls included)
//! and the path's two podnetd processes — and podnetd's share alone, each divided by the rate.
//! The whole machine's busy time is not used: other engineers' builds share it.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use podnet::firewall::{FirewallSpec, Guard, Nets};
use podnet::lab::cluster::Cluster;
use podnet::lab::{Lab, LabSpec};
use serde_json::{Value, json};

const PREFIX: &str = "/coreos.com/network";

/// The pods' address family a run measures (`BENCH_FAMILIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

use Family::{V4, V6};

/// What differs between the families, in one place.
struct Facts {
    network: &'static str,
    subnet_len: u8,
    host_len: u8,
    /// `ip` as the commands where iproute2 cannot tell the family from the arguments need it.
    ip: &'static str,
    /// Address flags: podnet's plugin adds IPv6 addresses usable at once, without a DAD wait.
    nodad: &'static str,
    multicast: &'static str,
    iptables_restore: &'static str,
    /// The VXLAN device over this family's underlay, its MTU (VXLAN costs 50 bytes over IPv4,
    /// 70 over IPv6) and the hand-made nodes' MACs on it.
    vxlan: (&'static str, u32, [&'static str; 2]),
}

const FACTS: [Facts; 2] = [
    Facts {
        network: "10.244.0.0/16",
        subnet_len: 24,
        host_len: 32,
        ip: "ip",
        nodad: "",
        multicast: "224.0.0.0/4",
        iptables_restore: "iptables-restore",
        vxlan: (
            "flannel.1",
            1450,
            ["02:70:6e:00:00:03", "02:70:6e:00:00:04"],
        ),
    },
    Facts {
        network: "fd10:244::/56",
        subnet_len: 64,
        host_len: 128,
        ip: "ip -6",
        nodad: " nodad",
        multicast: "ff00::/8",
        iptables_restore: "ip6tables-restore",
        vxlan: (
            "flannel-v6.1",
            1430,
            ["02:70:6e:00:06:03", "02:70:6e:00:06:04"],
        ),
    },
];

impl Family {
    fn facts(self) -> &'static Facts {
        &FACTS[self as usize]
    }

    /// The families a node of a run carries: an IPv6 run is dual-stack, as a cluster moving
    /// from flannel would be.
    fn present(self) -> &'static [Family] {
        match self {
            V4 => &[V4],
            V6 => &[V4, V6],
        }
    }

    /// Host `h` of the hand-made pair's node `i`'s pod subnet, the 201st and 202nd of the
    /// network (10.244.201.0/24, fd10:244:0:c9::/64, ...); host 0 is the VXLAN gateway.
    fn hand_addr(self, i: usize, h: u8) -> IpAddr {
        let sub = 201 + i as u8;
        match self {
            V4 => Ipv4Addr::new(10, 244, sub, h).into(),
            V6 => Ipv6Addr::new(0xfd10, 0x244, 0, sub.into(), 0, 0, 0, h.into()).into(),
        }
    }

    /// The hand-made node `i`'s pod subnet.
    fn hand_subnet(self, i: usize) -> String {
        format!("{}/{}", self.hand_addr(i, 0), self.facts().subnet_len)
    }

    /// The cluster network and the hand-made node `i`'s pod subnet, for its firewall.
    fn hand_nets<N: std::str::FromStr>(self, i: usize) -> Nets<N>
    where
        N::Err: std::fmt::Debug,
    {
        Nets {
            network: self.facts().network.parse().unwrap(),
            pod_subnet: self.hand_subnet(i).parse().unwrap(),
        }
    }
}

fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node's underlay address of a family.
fn node_ip(lab: &Lab, node: &str, family: Family) -> IpAddr {
    let host = lab.plan().host(node).unwrap();
    match family {
        V4 => host.ip().into(),
        V6 => host.ip6().expect("an IPv6 underlay").into(),
    }
}

/// The same objects as podnetd and the plugin create, made with `ip` and `bridge` by hand:
/// node `me` (index 0 or 1 in the hand pair) with pod subnet 10.244.20x.0/24 and, in an IPv6
/// run, fd10:244:0:c9::/64 or fd10:244:0:ca::/64 as well (both families' objects, like
/// podnet's dual-stack pair). Returns the pod's address of `family`.
fn hand_node(lab: &mut Lab, backend: &str, family: Family, me: usize) -> IpAddr {
    let node = ["node3", "node4"][me];
    let vxlan = backend == "vxlan";
    // The pods' MTU as podnet's plugin sets it: the smallest VXLAN device's.
    let families = family.present();
    let mtu = families
        .iter()
        .map(|f| if vxlan { f.facts().vxlan.1 } else { 1500 })
        .min()
        .unwrap();
    let pod_ns = lab.pod_add(node, "hand").unwrap();
    let mut cmds = vec![
        format!("ip link add cni0 mtu {mtu} type bridge"),
        "ip link set cni0 up".into(),
        format!("ip link add vethhand mtu {mtu} type veth peer name eth0 mtu {mtu} netns {pod_ns}"),
        "ip link set vethhand master cni0 up".into(),
        "ip link set vethhand type bridge_slave hairpin on".into(),
    ];
    let mut pod_cmds = vec![
        "ip link set lo up".to_string(),
        "ip link set eth0 up".into(),
    ];
    for &f in families {
        let Facts {
            ip,
            nodad,
            subnet_len: len,
            network,
            ..
        } = f.facts();
        let gw = f.hand_addr(me, 1);
        let peer_ip = node_ip(lab, ["node4", "node3"][me], f);
        cmds.push(format!("{ip} addr add {gw}/{len} dev cni0{nodad}"));
        if vxlan {
            cmds.extend(hand_vxlan(lab, f, me));
        } else {
            cmds.push(format!(
                "{ip} route add {} via {peer_ip} dev eth0",
                f.hand_subnet(1 - me)
            ));
        }
        pod_cmds.extend([
            format!("{ip} addr add {}/{len} dev eth0{nodad}", f.hand_addr(me, 2)),
            format!("{ip} route add {network} via {gw} dev eth0"),
            format!("{ip} route add default via {gw} dev eth0"),
        ]);
    }
    for (target, cmds) in [(node.to_string(), cmds), (format!("{node}/hand"), pod_cmds)] {
        for c in &cmds {
            let argv: Vec<&str> = c.split_whitespace().collect();
            run_in(lab, &target, &argv);
        }
    }
    family.hand_addr(me, 2)
}

/// The VXLAN device of family `f` on the hand-made node `me` and its one peer's neighbour,
/// FDB entry and onlink route, in podnet's (and flannel's) order.
fn hand_vxlan(lab: &Lab, f: Family, me: usize) -> Vec<String> {
    let Facts {
        vxlan: (dev, mtu, macs),
        ip,
        nodad,
        host_len,
        ..
    } = f.facts();
    let local = node_ip(lab, ["node3", "node4"][me], f);
    let peer_ip = node_ip(lab, ["node4", "node3"][me], f);
    let (own_gw, peer_gw) = (f.hand_addr(me, 0), f.hand_addr(1 - me, 0));
    let mut cmds = vec![format!(
        "ip link add {dev} address {} mtu {mtu} type vxlan id 1 local {local} dev eth0 dstport 8472 nolearning",
        macs[me]
    )];
    if f == V6 {
        // As flannel and podnet set it on their IPv6 device.
        cmds.push(format!(
            "sysctl -qw net.ipv6.conf.{}.accept_ra=0",
            dev.replace('.', "/")
        ));
    }
    cmds.extend([
        format!("{ip} addr add {own_gw}/{host_len} dev {dev}{nodad}"),
        format!("ip link set {dev} up"),
        format!(
            "{ip} neigh replace {peer_gw} lladdr {} dev {dev} nud permanent",
            macs[1 - me]
        ),
        format!(
            "bridge fdb append {} dev {dev} dst {peer_ip} self permanent",
            macs[1 - me]
        ),
        format!(
            "{ip} route add {} via {peer_gw} dev {dev} onlink",
            f.hand_subnet(1 - me)
        ),
    ]);
    cmds
}

/// The twins are twins: the hand-made pair's VXLAN devices have the attributes and MTU of
/// podnet's (all but the local address), its pod the MTU of podnet's pod, and the measured
/// traffic leaves both client nodes through the same device (`podnet` and `hand`: the server
/// pods' addresses). A difference would make the comparison one of configurations, not of who
/// made the objects.
fn assert_twins(lab: &Lab, backend: &str, family: Family, podnet: IpAddr, hand: IpAddr) {
    let dev = |node: &str, dst: IpAddr| {
        let out = run_in(lab, node, &["ip", "-j", "route", "get", &dst.to_string()]);
        serde_json::from_str::<Value>(&out).unwrap()[0]["dev"].clone()
    };
    let (via_podnet, via_hand) = (dev("node1", podnet), dev("node3", hand));
    assert_eq!(via_podnet, via_hand, "the device towards the server pod");
    if backend == "vxlan" {
        assert_eq!(via_podnet, family.facts().vxlan.0, "through the tunnel");
    }
    let link = |target: &str, dev: &str| -> (Value, Value) {
        let out = run_in(lab, target, &["ip", "-d", "-j", "link", "show", "dev", dev]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut info = v[0]["linkinfo"]["info_data"].clone();
        if let Some(o) = info.as_object_mut() {
            o.remove("local");
            o.remove("local6");
        }
        (v[0]["mtu"].clone(), info)
    };
    let mut devs = vec![("node1/pod", "node3/hand", "eth0")];
    if backend == "vxlan" {
        devs.extend(
            family
                .present()
                .iter()
                .map(|f| ("node1", "node3", f.facts().vxlan.0)),
        );
    }
    for (podnet, hand, dev) in devs {
        assert_eq!(
            link(podnet, dev),
            link(hand, dev),
            "{dev}: podnet's on {podnet} and the hand-made one on {hand} differ"
        );
    }
}

struct Path {
    name: &'static str,
    client: String,
    server_ip: IpAddr,
    /// The podnetd processes carrying this path (none for the bare underlay and the
    /// hand-made reference).
    podnetd: Vec<u32>,
    /// The hand-made pair's firewall for this path (loaded before each measurement).
    ruleset: Option<Ruleset>,
}

/// User and system jiffies of a process.
fn process_jiffies(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime is the 14th field.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

/// One iperf3 run over a path: bits per second received, and the cores busy meanwhile (the
/// transfer's: iperf3 ends and podnetd; and podnetd's alone).
fn throughput(lab: &Lab, p: &Path, seconds: u32) -> (f64, f64, f64) {
    let p0: u64 = p.podnetd.iter().map(|pid| process_jiffies(*pid)).sum();
    let start = Instant::now();
    let (bps, iperf) = common::throughput_cpu(lab, &p.client, &p.server_ip.to_string(), seconds);
    let wall = start.elapsed().as_secs_f64();
    let p1: u64 = p.podnetd.iter().map(|pid| process_jiffies(*pid)).sum();
    // Clock ticks are 100 per second on Linux.
    let podnetd = (p1 - p0) as f64 / 100.0 / wall;
    (bps, iperf + podnetd, podnetd)
}

/// How the round trip is measured (`BENCH_RTT`): echoes back to back, or 200 pings 2 ms apart
/// (`spaced`, the measure of the tables up to run 5 of 2026-12-01).
#[derive(Clone, Copy)]
enum Rtt {
    BackToBack,
    Spaced,
}

impl Rtt {
    fn from_env() -> Rtt {
        match std::env::var("BENCH_RTT").as_deref() {
            Ok("back-to-back") | Err(_) => Rtt::BackToBack,
            Ok("spaced") => Rtt::Spaced,
            Ok(other) => panic!("BENCH_RTT={other:?}: expected back-to-back or spaced"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Rtt::BackToBack => "5 000 echoes back to back",
            Rtt::Spaced => "200 pings 2 ms apart",
        }
    }
}

/// Mean round trip over a path, in seconds.
fn latency(lab: &Lab, p: &Path) -> f64 {
    match Rtt::from_env() {
        Rtt::BackToBack => common::echo_rtt(lab, &p.client, p.server_ip, 5000),
        Rtt::Spaced => common::latency(lab, &p.client, &p.server_ip.to_string()),
    }
}

struct Row {
    backend: String,
    path: &'static str,
    /// The path the others are compared with.
    reference: bool,
    gbps: Summary,
    rtt: Summary,
    /// This path's figure over the reference's of the same round: quartiles.
    gbps_ratio: [f64; 3],
    rtt_ratio: [f64; 3],
    /// Cores busy per Gbit/s: the transfer's (iperf3 ends and podnetd), and podnetd's.
    cpu_per_gbps: Summary,
    podnetd_per_gbps: Summary,
}

/// podnetd on two nodes with `backend`, under its own etcd prefix (a dual-stack network in an
/// IPv6 run), and a pod on each from the plugin; returns the pods' addresses of `family` once
/// they reach each other, and podnetd's PIDs.
fn podnet_pair(
    c: &mut Cluster,
    backend: &str,
    family: Family,
    nodes: [&str; 2],
    prefix: &str,
    podnetd: Option<&str>,
) -> ([IpAddr; 2], Vec<u32>) {
    let mut config = json!({"Network": V4.facts().network, "Backend": {"Type": backend}});
    if family == V6 {
        config["EnableIPv6"] = true.into();
        config["IPv6Network"] = V6.facts().network.into();
    }
    c.etcdctl(&["put", &format!("{prefix}/config"), &config.to_string()])
        .unwrap();
    let prefix_flag = format!("--etcd-prefix={prefix}");
    let mut pids = Vec::new();
    for node in nodes {
        let mut argv = c.podnetd_args(node, &[&prefix_flag, "--ip-masq"]).unwrap();
        if let Some(bin) = podnetd {
            argv[0] = bin.to_string();
        }
        pids.push(c.lab.spawn(node, &argv, &[]).unwrap().id.pid);
    }
    let mut pods: Vec<IpAddr> = Vec::new();
    for node in nodes {
        c.wait_ready(node, Duration::from_secs(20)).unwrap();
        let pod = c.add_pod(node, "pod", "1.0.0").unwrap();
        pods.push(match family {
            V4 => pod.ip.into(),
            V6 => pod.ip6.expect("an IPv6 address from the plugin").into(),
        });
    }
    for (node, other) in [(nodes[0], pods[1]), (nodes[1], pods[0])] {
        poll("the peer reachable", Duration::from_secs(20), || {
            let p = format!("{node}/pod");
            c.lab
                .exec(&p, &["ping", "-c1", "-W1", &other.to_string()])
                .unwrap()
                .status
                .success()
                .then_some(())
        });
    }
    ([pods[0], pods[1]], pids)
}

/// The twin pair (nodes 3 and 4) built by hand like podnet's pair, objects from `ip` and
/// `bridge`, no ruleset yet (each measurement loads its own, `Ruleset`); the pods' addresses of
/// `family`.
fn hand_pair(lab: &mut Lab, backend: &str, family: Family) -> [IpAddr; 2] {
    let hand = [
        hand_node(lab, backend, family, 0),
        hand_node(lab, backend, family, 1),
    ];
    poll("the hand-made path", Duration::from_secs(10), || {
        lab.exec("node3/hand", &["ping", "-c1", "-W1", &hand[1].to_string()])
            .unwrap()
            .status
            .success()
            .then_some(())
    });
    hand
}

/// What the hand-made pair's nodes run as firewall during one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ruleset {
    /// Nothing: no hooks, no connection tracking.
    Bare,
    /// flanneld's `--ip-masq` and forward rules, through Debian's iptables (iptables-nft),
    /// as flanneld's iptables mode installs them.
    Flanneld,
    /// podnet's table as podnetd renders it for the node, with or without each of its chains.
    Podnet {
        guard: bool,
        masquerade: bool,
        forward: bool,
    },
}

const PODNET_FULL: Ruleset = Ruleset::Podnet {
    guard: true,
    masquerade: true,
    forward: true,
};

/// flanneld's rules (reference/flannel.md §7, iptables mode; ip6tables' the same with the IPv6
/// multicast range) for a node with pod subnet `pod`.
fn flanneld_rules(f: Family, pod: &str) -> String {
    let (net, mcast) = (f.facts().network, f.facts().multicast);
    let m = "-m comment --comment \"flanneld masq\"";
    let f = "-m comment --comment \"flanneld forward\"";
    format!(
        "*nat\n:FLANNEL-POSTRTG - [0:0]\n\
         -A POSTROUTING {m} -j FLANNEL-POSTRTG\n\
         -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {pod} -d {net} {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {net} -d {pod} {m} -j RETURN\n\
         -A FLANNEL-POSTRTG ! -s {net} -d {pod} {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {net} ! -d {mcast} {m} -j MASQUERADE --random-fully\n\
         -A FLANNEL-POSTRTG ! -s {net} -d {net} {m} -j MASQUERADE --random-fully\n\
         COMMIT\n\
         *filter\n:FLANNEL-FWD - [0:0]\n\
         -A FORWARD {f} -j FLANNEL-FWD\n\
         -A FLANNEL-FWD -s {net} {f} -j ACCEPT\n\
         -A FLANNEL-FWD -d {net} {f} -j ACCEPT\n\
         COMMIT\n"
    )
}

/// Runs `argv` on a lab target with `input` on its standard input (panics on failure).
fn run_stdin(lab: &Lab, target: &str, argv: &[&str], input: &str) {
    let mut c = lab.command(target, argv).unwrap();
    c.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "{argv:?} on {target}");
}

/// Loads `rs` on both hand-made nodes (whatever was there before is flushed), for each family
/// the nodes carry (flanneld's rules through `iptables-restore` and `ip6tables-restore`,
/// podnet's one table with both halves, as podnetd renders it for a dual-stack node).
fn load_ruleset(lab: &Lab, backend: &str, family: Family, rs: Ruleset) {
    for me in 0..2 {
        let (node, peer) = (["node3", "node4"][me], ["node4", "node3"][me]);
        let families = family.present();
        run_in(lab, node, &["nft", "flush", "ruleset"]);
        match rs {
            Ruleset::Bare => {}
            Ruleset::Flanneld => {
                for &f in families {
                    run_stdin(
                        lab,
                        node,
                        &[f.facts().iptables_restore, "--noflush", "--wait"],
                        &flanneld_rules(f, &f.hand_subnet(me)),
                    );
                }
            }
            Ruleset::Podnet {
                guard,
                masquerade,
                forward,
            } => {
                let spec = FirewallSpec {
                    v4: Some(V4.hand_nets(me)),
                    v6: (family == V6).then(|| V6.hand_nets(me)),
                    masquerade,
                    fully_random: true,
                    forward,
                    guard: (guard && backend == "vxlan").then_some(Guard { port: 8472 }),
                };
                if !spec.is_empty() {
                    let peers: Vec<IpAddr> =
                        families.iter().map(|&f| node_ip(lab, peer, f)).collect();
                    let table = spec.render_table(&peers);
                    run_stdin(lab, node, &["nft", "-f", "-"], &table);
                }
            }
        }
    }
}

/// The other node of a pair (node1 ↔ node2, node3 ↔ node4, ...).
fn peer_of(node: &str) -> String {
    let n: usize = node.trim_start_matches("node").parse().unwrap();
    format!("node{}", if n % 2 == 1 { n + 1 } else { n - 1 })
}

fn bench_backend(backend: &str, family: Family, runs: usize, seconds: u32) -> Vec<Row> {
    // Another build of podnetd to compare the udp backend with (`BENCH_BASELINE=path`).
    let baseline = std::env::var("BENCH_BASELINE")
        .ok()
        .filter(|_| backend == "udp");
    let nodes = if backend == "wireguard" || baseline.is_some() {
        6
    } else {
        4
    };
    let spec = LabSpec::new(unique("bdp"), nodes).ipv6(family == V6);
    let mut c = Cluster::up(&spec, binaries()).unwrap();
    let (pods, pids) = podnet_pair(&mut c, backend, family, ["node1", "node2"], PREFIX, None);
    let mut paths = vec![Path {
        name: "podnet",
        client: "node1/pod".into(),
        server_ip: pods[1],
        podnetd: pids,
        ruleset: None,
    }];
    // Kernel backends are compared with the same kernel objects made by hand; the udp tunnel
    // with podnet's kernel VXLAN; wireguard with podnet's udp backend, VXLAN beside them.
    match backend {
        "udp" | "wireguard" => {
            let (reference, others): (&str, &[&str]) = if backend == "udp" {
                ("vxlan", &[])
            } else {
                ("udp", &["vxlan"])
            };
            for (i, b) in std::iter::once(&reference).chain(others).enumerate() {
                let pair = [["node3", "node4"], ["node5", "node6"]][i];
                let prefix = format!("/podnet-bench-{b}/network");
                let (p, pids) = podnet_pair(&mut c, b, family, pair, &prefix, None);
                paths.push(Path {
                    name: if *b == "vxlan" {
                        "podnet vxlan"
                    } else {
                        "podnet udp"
                    },
                    client: format!("{}/pod", pair[0]),
                    server_ip: p[1],
                    podnetd: pids,
                    ruleset: None,
                });
            }
            if let Some(bin) = &baseline {
                let prefix = "/podnet-bench-baseline/network";
                let pair = ["node5", "node6"];
                let (p, pids) = podnet_pair(&mut c, "udp", family, pair, prefix, Some(bin));
                paths.push(Path {
                    name: "podnet udp, baseline build",
                    client: "node5/pod".into(),
                    server_ip: p[1],
                    podnetd: pids,
                    ruleset: None,
                });
            }
        }
        _ => {
            let p = hand_pair(&mut c.lab, backend, family);
            assert_twins(&c.lab, backend, family, pods[1], p[1]);
            // The reference first, then flanneld's rules, podnet's and podnet's without each
            // of its chains in turn (host-gw has no tunnel guard).
            let mut variants = vec![
                ("by hand, no ruleset", Ruleset::Bare),
                ("by hand + flanneld's rules", Ruleset::Flanneld),
                ("by hand + podnet's rules", PODNET_FULL),
                (
                    "  without postrouting (masquerade)",
                    Ruleset::Podnet {
                        guard: true,
                        masquerade: false,
                        forward: true,
                    },
                ),
                (
                    "  without forward",
                    Ruleset::Podnet {
                        guard: true,
                        masquerade: true,
                        forward: false,
                    },
                ),
            ];
            if backend == "vxlan" {
                variants.push((
                    "  without tunnel guard (input)",
                    Ruleset::Podnet {
                        guard: false,
                        masquerade: true,
                        forward: true,
                    },
                ));
            }
            if std::env::var("BENCH_HOOKS").is_ok_and(|v| v == "0") {
                variants.truncate(3);
            }
            for (name, rs) in variants {
                paths.push(Path {
                    name,
                    client: "node3/hand".into(),
                    server_ip: p[1],
                    podnetd: Vec::new(),
                    ruleset: Some(rs),
                });
            }
        }
    }
    let bare = if backend == "wireguard" {
        ["node5", "node6"]
    } else {
        ["node3", "node4"]
    };
    let lab = &mut c.lab;
    paths.push(Path {
        name: "bare underlay",
        client: bare[0].into(),
        server_ip: node_ip(lab, bare[1], family),
        podnetd: Vec::new(),
        ruleset: (bare[0] == "node3" && backend != "udp").then_some(Ruleset::Bare),
    });
    let mut servers: Vec<String> = paths
        .iter()
        .map(|p| match p.client.split_once('/') {
            Some((node, pod)) => format!("{}/{pod}", peer_of(node)),
            None => peer_of(&p.client),
        })
        .collect();
    servers.dedup();
    for server in &servers {
        lab.spawn(server, &["iperf3".to_string(), "-s".into()], &[])
            .unwrap();
    }
    for p in &paths {
        poll("iperf3 server", Duration::from_secs(10), || {
            lab.exec(
                &p.client,
                &["iperf3", "-c", &p.server_ip.to_string(), "-t", "1"],
            )
            .unwrap()
            .status
            .success()
            .then_some(())
        });
    }
    if let Ok(out) = std::env::var("BENCH_PERF") {
        // A profile of both podnetd processes while the podnet path carries one iperf3 run.
        let pids: Vec<String> = lab
            .processes()
            .iter()
            .filter(|p| p.argv.first().is_some_and(|a| a.ends_with("podnetd")))
            .take(2)
            .map(|p| p.id.pid.to_string())
            .collect();
        let perf_args: Vec<String> = if out.starts_with("stat") {
            "stat -e syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendmsg,syscalls:sys_enter_poll,syscalls:sys_enter_ppoll --per-thread -p"
                .split(' ')
                .map(String::from)
                .chain([pids.join(","), "--".into(), "sleep".into(), "3".into()])
                .collect()
        } else {
            [
                "record",
                "-g",
                "-o",
                &out,
                "-p",
                &pids.join(","),
                "--",
                "sleep",
                "4",
            ]
            .map(String::from)
            .to_vec()
        };
        let mut perf = std::process::Command::new("perf")
            .args(&perf_args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let top = std::process::Command::new("sh")
            .args(["-c", "sleep 1; top -b -H -n 2 -d 1 | tail -n +$(( $(top -b -H -n 1 | wc -l) )) | head -25"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let gbps = throughput(lab, &paths[0], 3).0 / 1e9;
        perf.wait().unwrap();
        eprintln!(
            "== {gbps:.2} Gbit/s; top:\n{}",
            String::from_utf8_lossy(&top.wait_with_output().unwrap().stdout)
        );
        for p in lab.processes() {
            eprintln!(
                "== log of {:?}\n{}",
                p.argv.first(),
                podnet::lab::tail(&p.log, 20)
            );
        }
    }
    let label = match family {
        V4 => backend.to_string(),
        V6 => format!("{backend}, IPv6"),
    };
    let mut bps = vec![Vec::new(); paths.len()];
    let mut rtt = vec![Vec::new(); paths.len()];
    let mut cpu = vec![Vec::new(); paths.len()];
    let mut own = vec![Vec::new(); paths.len()];
    for r in 0..runs {
        // Rotate the order so that no path is always first after an idle moment.
        for k in 0..paths.len() {
            let i = (k + r) % paths.len();
            if let Some(rs) = paths[i].ruleset {
                load_ruleset(lab, backend, family, rs);
            }
            let (b, transfer, podnetd) = throughput(lab, &paths[i], seconds);
            let gbps = b / 1e9;
            bps[i].push(gbps);
            cpu[i].push(transfer / gbps);
            own[i].push(podnetd / gbps);
            rtt[i].push(latency(lab, &paths[i]));
        }
        eprintln!("{label}: round {}/{runs}", r + 1);
    }
    let rows = paths
        .iter()
        .enumerate()
        .map(|(i, p)| Row {
            backend: label.clone(),
            path: p.name,
            reference: i == 1,
            gbps: summarize(&bps[i]),
            rtt: summarize(&rtt[i]),
            gbps_ratio: quartiles(&per_round(&bps[i], &bps[1])),
            rtt_ratio: quartiles(&per_round(&rtt[i], &rtt[1])),
            cpu_per_gbps: summarize(&cpu[i]),
            podnetd_per_gbps: summarize(&own[i]),
        })
        .collect();
    c.lab.down().unwrap();
    rows
}

/// Each round's `a` over the same round's `b`.
fn per_round(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// First quartile, median and third quartile (linear interpolation).
fn quartiles(v: &[f64]) -> [f64; 3] {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let x = q * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    [at(0.25), at(0.5), at(0.75)]
}

fn main() {
    require_root();
    let runs = runs(5);
    // Checked before the labs are built; `latency` reads it again where it measures.
    let rtt = Rtt::from_env();
    let seconds: u32 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let backends =
        std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "host-gw,vxlan,udp,wireguard".into());
    let families: Vec<Family> = std::env::var("BENCH_FAMILIES")
        .unwrap_or_else(|_| "ipv4".into())
        .split(',')
        .map(|f| match f.trim() {
            "ipv4" => V4,
            "ipv6" => V6,
            other => panic!("BENCH_FAMILIES: {other:?} is not a family (ipv4, ipv6)"),
        })
        .collect();
    let mut rows = Vec::new();
    for b in backends.split(',').map(str::trim) {
        for &family in &families {
            if family == V6 && !matches!(b, "vxlan" | "host-gw") {
                eprintln!("{b}: no IPv6 rows (measured over IPv4 only)");
                continue;
            }
            rows.extend(bench_backend(b, family, runs, seconds));
        }
    }
    let pings = rtt.describe();
    println!(
        "\nData path, pod to pod across two nodes; {runs} interleaved rounds, iperf3 {seconds} s one \
         stream, {pings}; figures median (min–max); ratios to the reference of the same round, \
         median [first–third quartile]\n"
    );
    println!(
        "| backend | path | TCP Gbit/s | vs reference | RTT µs | vs reference | cores per Gbit/s | of which podnetd |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let [g1, g2, g3] = r.gbps_ratio;
        let [r1, r2, r3] = r.rtt_ratio;
        println!(
            "| {} | {} | {:.2} ({:.2}–{:.2}) | {g2:.3} [{g1:.3}–{g3:.3}] | {:.1} ({:.1}–{:.1}) | {r2:.3} [{r1:.3}–{r3:.3}] | {:.3} | {:.3} |",
            r.backend,
            if r.reference {
                format!("{} (reference)", r.path)
            } else {
                r.path.to_string()
            },
            r.gbps.median,
            r.gbps.min,
            r.gbps.max,
            r.rtt.median * 1e6,
            r.rtt.min * 1e6,
            r.rtt.max * 1e6,
            r.cpu_per_gbps.median,
            r.podnetd_per_gbps.median,
        );
    }
}
